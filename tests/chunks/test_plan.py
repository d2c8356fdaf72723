"""BlockPlan: chunk sizes to slices and blocks, validation, property tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvl_dask.chunks import BlockPlan, regular_chunks
from dvl_dask.errors import InvalidDataError, InvalidParameterError

chunk_tuples = st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=12).map(tuple)


def _check_cover(chunks: tuple[int, ...], slices: tuple[slice, ...]) -> None:
    assert len(slices) == len(chunks)
    position = 0
    for size, s in zip(chunks, slices, strict=True):
        assert s.start == position  # in order, no gap, no overlap
        assert s.stop - s.start == size and s.step is None
        position = s.stop
    assert position == sum(chunks)  # covers exactly


@settings(max_examples=200, deadline=None)
@given(rows=chunk_tuples, cols=st.one_of(st.just(()), chunk_tuples))
def test_slices_cover_exactly_in_order_without_overlap(rows, cols):
    plan = BlockPlan(rows, cols)
    _check_cover(rows, plan.row_slices)
    _check_cover(cols, plan.col_slices)
    covered = np.zeros(plan.shape if cols else (plan.n_rows,), dtype=int)
    indices = list(plan.pairs()) if cols else [(i,) for i in range(len(rows))]
    assert indices == sorted(indices) and len(indices) == plan.n_blocks == math.prod(plan.grid)
    for index in indices:
        covered[plan.block_slices(index)] += 1
        assert covered[plan.block_slices(index)].shape == plan.block_shape(index)
    assert (covered == 1).all()  # every element in exactly one block
    assert plan.row_offsets[-1] == plan.n_rows and plan.chunks[0] == rows


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 500), size=st.integers(1, 64))
def test_regular_chunks_and_regularized_plans(n, size):
    chunks = regular_chunks(n, size)
    assert sum(chunks) == n and all(c == size for c in chunks[:-1]) and 0 < chunks[-1] <= size
    plan = BlockPlan(chunks, chunks)
    assert plan.is_regular and plan.regularized() is plan


@settings(max_examples=100, deadline=None)
@given(rows=chunk_tuples)
def test_regularized_plan_keeps_the_shape(rows):
    plan = BlockPlan(rows, rows)
    regular = plan.regularized()
    assert regular.shape == plan.shape and regular.is_regular
    assert max(regular.rows) == max(rows)


def test_plan_from_dask_arrays_and_description():
    da = pytest.importorskip("dask.array")
    plan = BlockPlan.from_arrays(da.zeros((10, 3), chunks=(4, 3)), da.zeros(7, chunks=5))
    assert plan == BlockPlan((4, 4, 2), (5, 2))
    assert plan.chunks == ((4, 4, 2), (5, 2)) and plan.grid == (3, 2)
    assert "3 x 2 blocks" in plan.describe()
    assert hash(plan) == hash(BlockPlan([4, 4, 2], [5, 2]))  # frozen, lists normalised to tuples


@pytest.mark.parametrize(
    ("rows", "match"),
    [((), "at least one row chunk"), ((3, 0), "positive integers"), ((2.5,), "positive"),
     ((float("nan"),), "compute_chunk_sizes")],
)
def test_bad_chunks_raise_clear_errors(rows, match):
    with pytest.raises(InvalidDataError, match=match):
        BlockPlan(rows)


def test_bad_regular_chunks():
    with pytest.raises(InvalidParameterError, match="'chunk_size' parameter"):
        regular_chunks(10, 0)
    with pytest.raises(InvalidParameterError, match="sequence of chunk sizes"):
        BlockPlan(5)  # type: ignore[arg-type]
