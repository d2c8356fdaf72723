"""Check that the sequential and Dask engines of :mod:`dvl_dask.chunks` agree on a plan."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..chunks import (
    BlockPlan,
    BlockSequence,
    DaskMapper,
    NestedNumpyCatAggregator,
    NumpyCatAggregator,
    SequentialMapper,
)

__all__ = ["assert_mappers_agree"]


def assert_mappers_agree(
    kernel: Callable[..., Any],
    plan: BlockPlan,
    rows: Sequence[np.ndarray],
    cols: Sequence[np.ndarray] | None = None,
    *,
    shared: Mapping[str, Any] | None = None,
    static: Mapping[str, Any] | None = None,
    dtype: Any = None,
    trailing_shape: Sequence[int] = (),
    scheduler: str = "sync",
) -> np.ndarray:
    """Assert that :class:`SequentialMapper` and :class:`DaskMapper` give identical arrays for ``plan``.

    ``rows`` (and ``cols``, for a pairwise map) are in-memory arrays split by
    the plan; the kernel must return numpy blocks. Without ``cols`` a row map
    is checked. The arrays must be equal bit for bit, with the same shape and
    dtype, and the Dask result must be chunked as the plan says.

    Parameters
    ----------
    kernel : callable
        A module-level kernel ``kernel(*row_blocks, [*col_blocks,] **shared, **static)``.
    plan : BlockPlan
        Chunks of the rows (and columns).
    rows, cols : sequence of arrays
        Inputs of the map, split along axis 0 by ``plan.rows`` and ``plan.cols``.
    shared, static : mapping, optional
        Keyword arguments of the kernel (see :mod:`dvl_dask.chunks`).
    dtype : dtype, optional
        Dtype the Dask result declares (default: the sequential result's).
    trailing_shape : sequence of int
        Shape of the result after the sample axes.
    scheduler : str
        Dask scheduler used to compute (default ``"sync"``).

    Returns
    -------
    numpy.ndarray
        The (common) result.

    Examples
    --------
    >>> import numpy as np
    >>> def outer(a, b):
    ...     return np.multiply.outer(a, b)
    >>> plan = BlockPlan(rows=(2, 1), cols=(1, 2))
    >>> assert_mappers_agree(outer, plan, [np.arange(3.0)], [np.arange(3.0)]).shape
    (3, 3)
    """
    import dask.array as da

    from ..errors import InvalidParameterError
    from ..validation import check_callable

    check_callable(kernel, "kernel", "assert_mappers_agree", what="a module-level kernel returning numpy blocks")
    if not isinstance(plan, BlockPlan):
        raise InvalidParameterError(
            "The 'plan' argument of assert_mappers_agree must be a dvl_dask.chunks.BlockPlan. Got "
            f"{type(plan).__name__}."
        )
    seq_mapper, dask_mapper = SequentialMapper(), DaskMapper()
    row_seq = BlockSequence.from_arrays(rows, chunks=plan.rows, name="rows")
    row_dask = [da.from_array(np.asarray(a), chunks=(plan.rows,) + (-1,) * (np.ndim(a) - 1)) for a in rows]
    if cols is None:
        expected = NumpyCatAggregator()(
            seq_mapper.map_rows(kernel, row_seq, shared=shared, static=static, plan=plan)
        )
        out_dtype = expected.dtype if dtype is None else np.dtype(dtype)
        lazy = dask_mapper.map_rows(
            kernel, row_dask, shared=shared, static=static, plan=plan, dtype=out_dtype, trailing_shape=trailing_shape
        )
        expected_chunks = (plan.rows,)
    else:
        col_seq = BlockSequence.from_arrays(cols, chunks=plan.cols, name="cols")
        col_dask = [da.from_array(np.asarray(a), chunks=(plan.cols,) + (-1,) * (np.ndim(a) - 1)) for a in cols]
        expected = NestedNumpyCatAggregator()(
            seq_mapper.map_pairwise(kernel, row_seq, col_seq, shared=shared, static=static, plan=plan)
        )
        out_dtype = expected.dtype if dtype is None else np.dtype(dtype)
        lazy = dask_mapper.map_pairwise(
            kernel, row_dask, col_dask, shared=shared, static=static, plan=plan, dtype=out_dtype,
            trailing_shape=trailing_shape,
        )
        expected_chunks = (plan.rows, plan.cols)
    if tuple(lazy.chunks[: len(expected_chunks)]) != expected_chunks:
        raise AssertionError(f"The Dask result is chunked as {lazy.chunks}; the plan says {expected_chunks}.")
    got = np.asarray(lazy.compute(scheduler=scheduler))
    if got.shape != expected.shape or got.dtype != expected.dtype:
        raise AssertionError(
            f"Sequential and Dask results differ in shape or dtype: {expected.shape} {expected.dtype} (sequential) "
            f"vs {got.shape} {got.dtype} (dask)."
        )
    mismatch = got != expected
    if np.issubdtype(got.dtype, np.inexact):
        mismatch &= ~(np.isnan(got) & np.isnan(expected))
    if mismatch.any():
        diff = np.argwhere(mismatch)
        raise AssertionError(
            f"Sequential and Dask results differ at {len(diff)} position(s), first {diff[:5].tolist()}: "
            f"{expected[tuple(diff[0])]} (sequential) vs {got[tuple(diff[0])]} (dask)."
        )
    return got
