"""The two engines of dvl_dask.chunks: same plan, same kernels, identical arrays."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvl_dask.chunks import (
    BlockPlan,
    BlockSequence,
    DaskMapper,
    ListAggregator,
    MinMaxAggregator,
    NestedMinMaxAggregator,
    NestedNumpyCatAggregator,
    SequentialMapper,
    SharedObjects,
)
from dvl_dask.errors import InvalidDataError, UnalignedChunksError
from dvl_dask.testing import raise_if_dask_computes
from dvl_dask.testing.mappers import assert_mappers_agree

# -- module-level kernels (picklable, as the engines require) -------------------------------


def scaled_rows(x, y, *, weights, offset=0.0):
    """A row map with two inputs and a 'shared' array: (n, d) x (n,) -> (n, k)."""
    return (x @ weights) * y[:, None] + offset


def pair_kernel(a, b, *, weights):
    """A pairwise map: (n, d), (m, d) -> (n, m)."""
    return (a @ weights) @ (b @ weights).T


def pair_kernel_3d(a, b):
    """A pairwise map with a trailing axis: (n, d), (m, d) -> (n, m, d)."""
    return a[:, None, :] * b[None, :, :]


CALLS: list[int] = []


def counting_rows(x):
    CALLS.append(len(x))
    return x * 2.0


def product(f, g):
    return f @ g.T


MADE: list[np.ndarray] = []
SEEN: list[np.ndarray] = []


def remembering_rows(x):
    """Keeps the blocks it makes (3-D: two trailing axes)."""
    MADE.append(np.repeat(x[:, None, :], 2, axis=1))
    return MADE[-1]


def remembering_pairs(a, b):
    """Keeps the blocks it is given."""
    SEEN.extend([a, b])
    return a.reshape(len(a), -1) @ b.reshape(len(b), -1).T


@pytest.fixture
def data(rng):
    return {
        "x": rng.normal(size=(23, 4)),
        "y": rng.normal(size=23),
        "z": rng.normal(size=(17, 4)),
        "weights": rng.normal(size=(4, 3)),
    }


# -- agreement ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [(23,), (5, 5, 5, 8), (1, 10, 2, 7, 3)])
def test_row_maps_agree(data, rows):
    out = assert_mappers_agree(
        scaled_rows, BlockPlan(rows), [data["x"], data["y"]], shared={"weights": data["weights"]},
        static={"offset": 1.5}, trailing_shape=(3,),
    )
    np.testing.assert_allclose(out, (data["x"] @ data["weights"]) * data["y"][:, None] + 1.5)


@pytest.mark.parametrize(("rows", "cols"), [((23,), (17,)), ((7, 7, 9), (4, 4, 4, 5)), ((2, 13, 8), (16, 1))])
def test_pairwise_maps_agree(data, rows, cols):
    w = data["weights"]
    out = assert_mappers_agree(pair_kernel, BlockPlan(rows, cols), [data["x"]], [data["z"]], shared={"weights": w})
    np.testing.assert_allclose(out, (data["x"] @ w) @ (data["z"] @ w).T)


def test_pairwise_maps_with_trailing_axes_agree(data):
    out = assert_mappers_agree(
        pair_kernel_3d, BlockPlan((10, 13), (9, 8)), [data["x"]], [data["z"]], trailing_shape=(4,)
    )
    assert out.shape == (23, 17, 4)


@settings(max_examples=15, deadline=None)
@given(
    rows=st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple),
    cols=st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple),
)
def test_mappers_agree_on_random_plans(rows, cols):
    rng = np.random.default_rng(sum(rows) * 31 + sum(cols))
    x, z = rng.normal(size=(sum(rows), 3)), rng.normal(size=(sum(cols), 3))
    assert_mappers_agree(pair_kernel_3d, BlockPlan(rows, cols), [x], [z], trailing_shape=(3,))


def test_assert_mappers_agree_detects_disagreement(data):
    def shape_dependent(a, b):  # depends on the chunking, so the engines disagree if chunks differ
        return np.full((len(a), len(b)), float(len(a)))

    # Same plan in both engines: agreement even for a chunk-dependent kernel.
    assert_mappers_agree(shape_dependent, BlockPlan((10, 13), (17,)), [data["x"]], [data["z"]])
    with pytest.raises(AssertionError, match="differ"):
        noise = np.random.default_rng()
        assert_mappers_agree(lambda a: np.asarray(a) * noise.random(), BlockPlan((23,)), [data["y"]])


# -- the dask engine ---------------------------------------------------------------------------


def test_dask_maps_are_lazy_one_blockwise_layer_with_deterministic_names(data):
    x = da.from_array(data["x"], chunks=(5, 4))
    z = da.from_array(data["z"], chunks=(6, 4))
    mapper = DaskMapper()
    with raise_if_dask_computes():
        a = mapper.map_pairwise(pair_kernel, [x], [z], shared={"weights": data["weights"]}, dtype=float)
        b = mapper.map_pairwise(pair_kernel, [x], [z], shared={"weights": data["weights"]}, dtype=float)
    assert a.name == b.name and a.name.startswith("pair-kernel-")
    layers = a.dask.layers
    own = [name for name in layers if name == a.name]
    assert len(own) == 1 and type(layers[a.name]).__name__ == "Blockwise"
    # The shared objects are ONE graph key that every block task depends on.
    shared_keys = [k for k in dict(a.dask) if str(k).startswith("shared-objects-")]
    assert len(shared_keys) == 1
    c = mapper.map_pairwise(pair_kernel, [x], [z], shared={"weights": data["weights"] + 1}, dtype=float)
    assert c.name != a.name


def test_row_blocks_are_computed_once_per_chunk_in_a_pairwise_map(data):
    x = da.from_array(data["x"], chunks=(5, 4))
    z = da.from_array(data["z"], chunks=(4, 4))
    mapper = DaskMapper()
    f = mapper.map_rows(counting_rows, [x], dtype=float, trailing_shape=(4,))
    g = mapper.map_rows(counting_rows, [z], dtype=float, trailing_shape=(4,))
    out = mapper.map_pairwise(product, [f], [g], dtype=float)
    CALLS.clear()
    got = out.compute(scheduler="sync")
    np.testing.assert_allclose(got, 4 * data["x"] @ data["z"].T)
    assert sorted(CALLS) == sorted([5, 5, 5, 5, 3, 4, 4, 4, 4, 1])  # once per row chunk and per column chunk


def test_blocks_reach_the_kernel_without_a_copy_whatever_their_trailing_axes(rng):
    # da.blockwise with concatenate=True copied the one block of every dropped trailing axis into a fresh
    # array in every task (27 MB per influence product). The mapper passes the very block made upstream.
    x, z = rng.normal(size=(6, 3)), rng.normal(size=(4, 3))
    mapper = DaskMapper()
    rows = mapper.map_rows(remembering_rows, [da.from_array(x, chunks=(3, -1))], dtype=float, trailing_shape=(2, 3))
    cols = mapper.map_rows(remembering_rows, [da.from_array(z, chunks=(2, -1))], dtype=float, trailing_shape=(2, 3))
    out = mapper.map_pairwise(remembering_pairs, [rows], [cols], dtype=float)
    MADE.clear()
    SEEN.clear()
    np.testing.assert_allclose(out.compute(scheduler="sync"), 2 * x @ z.T)
    assert len(MADE) == 4 and len(SEEN) == 8
    assert all(any(b is m for m in MADE) for b in SEEN)


def test_dask_mapper_checks_inputs(data):
    mapper = DaskMapper()
    x = da.from_array(data["x"], chunks=(5, 2))
    with pytest.raises(InvalidDataError, match="must be dask arrays"):
        mapper.map_rows(scaled_rows, [data["x"]], dtype=float)
    with pytest.raises(UnalignedChunksError, match="rechunk"):
        mapper.map_rows(scaled_rows, [x, da.from_array(data["y"], chunks=7)], dtype=float)
    with pytest.raises(UnalignedChunksError, match="plan says"):
        mapper.map_rows(counting_rows, [x], dtype=float, trailing_shape=(4,), plan=BlockPlan((23,)))
    unknown = x[x[:, 0] > 0]
    with pytest.raises(InvalidDataError, match="compute_chunk_sizes"):
        mapper.map_rows(counting_rows, [unknown], dtype=float, trailing_shape=(4,))
    # Feature axes split into chunks are merged: blocks always hold whole samples.
    out = mapper.map_rows(counting_rows, [x], dtype=float, trailing_shape=(4,))
    np.testing.assert_array_equal(out.compute(scheduler="sync"), 2 * data["x"])


def test_shared_handle_passes_delayed_objects_through():
    mapper = DaskMapper()
    handle = dask.delayed(SharedObjects({"weights": 1.0}), traverse=False)
    assert mapper.shared_handle(handle) is handle
    assert mapper.shared_handle(None) is None
    one = mapper.shared_handle({"w": np.arange(3)})
    assert one.key == mapper.shared_handle(SharedObjects({"w": np.arange(3)})).key


# -- the sequential engine -----------------------------------------------------------------------


def test_sequential_maps_are_lazy_and_reiterable(data):
    CALLS.clear()
    source = BlockSequence.from_arrays([data["x"]], chunks=(10, 13))
    out = SequentialMapper().map_rows(counting_rows, source)
    assert CALLS == [] and out.chunks == (10, 13)
    first = ListAggregator()(out)
    second = ListAggregator()(out)
    assert CALLS == [10, 13, 10, 13]  # recomputed on every pass: nothing is held
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(second))


def test_cached_sequences_compute_each_block_once_within_budget(data):
    CALLS.clear()
    blocks = SequentialMapper().map_rows(counting_rows, BlockSequence.from_arrays([data["x"]], chunks=(10, 10, 3)))
    everything = blocks.cached()
    for _ in range(3):
        list(everything)
    assert CALLS == [10, 10, 3]
    CALLS.clear()
    budget = blocks.cached(max_bytes=10 * 4 * 8)  # room for one block of 10 rows
    for _ in range(3):
        list(budget)
    assert CALLS == [10, 10, 3, 10, 3, 10, 3] and budget.n_cached == 1


def test_nested_sequence_computes_row_blocks_once_and_skips_without_computing(data):
    CALLS.clear()
    mapper = SequentialMapper()
    f = mapper.map_rows(counting_rows, BlockSequence.from_arrays([data["x"]], chunks=(12, 11)))
    out = mapper.map_pairwise(product, f, BlockSequence.from_arrays([data["z"]], chunks=(5, 5, 7)))
    assert out.plan == BlockPlan((12, 11), (5, 5, 7))
    blocks = dict(out.iter_blocks(skip=lambda index: index[0] == 0 or index == (1, 2)))
    assert sorted(blocks) == [(1, 0), (1, 1)]
    assert CALLS == [11]  # row 0 entirely skipped: its row block was never computed
    np.testing.assert_allclose(blocks[(1, 1)], 2 * data["x"][12:] @ data["z"][5:10].T)


def test_sequences_from_iterables(data):
    pairs = [(data["x"][:3], data["y"][:3]), (data["x"][3:], data["y"][3:])]
    seq = BlockSequence.from_iterable(pairs)
    assert seq.chunks == (3, 20) and len(seq) == 2
    with pytest.raises(InvalidDataError, match="one-shot iterator"):
        BlockSequence.from_iterable(p for p in pairs)
    with pytest.raises(InvalidDataError, match="iterable of blocks"):
        BlockSequence.from_iterable(data["x"])

    class Unsized:  # an iterable without len(): chunks are counted with one pass
        def __iter__(self):
            return iter(pairs)

    assert BlockSequence.from_iterable(Unsized()).chunks == (3, 20)


def test_mismatching_blocks_are_reported(data):
    class Liar:
        """Claims chunks it does not yield (a DataLoader with an unusual sampler would)."""

        def __iter__(self):
            return iter([(data["x"][:4],), (data["x"][4:],)])

    seq = BlockSequence(lambda: (lambda b=b: b for b in Liar()), chunks=(5, 18), name="liar")
    with pytest.raises(InvalidDataError, match="has 4 rows, but its chunks say 5"):
        list(SequentialMapper().map_rows(counting_rows, seq))


def test_dataloader_chunks_are_known_without_reading():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    ds = TensorDataset(torch.zeros(10, 2), torch.zeros(10))
    assert BlockSequence.from_iterable(DataLoader(ds, batch_size=4)).chunks_if_known == (4, 4, 2)
    assert BlockSequence.from_iterable(DataLoader(ds, batch_size=4, drop_last=True)).chunks == (4, 4)


# -- stores --------------------------------------------------------------------------------------


class MemorySink:
    """A BlockSink holding blocks in a numpy array (picklable, usable by both engines in-process)."""

    def __init__(self, plan, shape, done=()):
        self.plan = plan
        self.values = np.full(shape, np.nan)
        self.finished = False
        self._done = set(done)
        self.written = []

    def done(self, index):
        return tuple(index) in self._done

    def write(self, index, block):
        self.values[self.plan.block_slices(index)] = block
        self.written.append(tuple(index))

    def finish(self):
        self.finished = True
        return "done"


def test_both_engines_store_only_pending_blocks(data):
    plan = BlockPlan((12, 11), (9, 8))
    expected = data["x"] @ data["z"].T
    seq_sink = MemorySink(plan, plan.shape, done={(0, 1)})
    f = BlockSequence.from_arrays([data["x"]], chunks=plan.rows)
    g = BlockSequence.from_arrays([data["z"]], chunks=plan.cols)
    assert SequentialMapper().store(SequentialMapper().map_pairwise(product, f, g), seq_sink) == "done"
    assert seq_sink.written == [(0, 0), (1, 0), (1, 1)] and seq_sink.finished
    np.testing.assert_allclose(np.nan_to_num(seq_sink.values), np.where(np.isnan(seq_sink.values), 0, expected))

    dask_sink = MemorySink(plan, plan.shape, done={(1, 1)})
    x = da.from_array(data["x"], chunks=(6, 4))  # other chunks than the sink: rechunked to its grid
    z = da.from_array(data["z"], chunks=(17, 4))
    lazy = DaskMapper().map_pairwise(product, [x], [z], dtype=float)
    delayed = DaskMapper().store(lazy, dask_sink, compute=False)
    assert dask_sink.written == []
    assert delayed.compute(scheduler="sync") == "done"
    assert sorted(dask_sink.written) == [(0, 0), (0, 1), (1, 0)]


# -- aggregators and progress ------------------------------------------------------------------------


def test_aggregators(data):
    blocks = [[data["x"][:3] @ data["z"][:5].T, data["x"][:3] @ data["z"][5:].T],
              [data["x"][3:] @ data["z"][:5].T, data["x"][3:] @ data["z"][5:].T]]
    full = NestedNumpyCatAggregator()(blocks)
    np.testing.assert_allclose(full, data["x"] @ data["z"].T)
    ext = NestedMinMaxAggregator()(blocks)
    np.testing.assert_array_equal(ext.argmax, full.argmax(axis=1))
    np.testing.assert_array_equal(ext.argmin, full.argmin(axis=1))
    np.testing.assert_allclose(ext.max, full.max(axis=1))
    assert MinMaxAggregator()(row for rows in blocks for row in rows) == (full.min(), full.max())
    with pytest.raises(InvalidDataError, match="2-D blocks"):
        NestedMinMaxAggregator()([[np.zeros((2, 2, 2))]])


@pytest.mark.parametrize("progress", [False, None])  # None: "auto", and pytest's captured stderr is no terminal
def test_sequential_progress_is_silent_when_disabled_or_redirected(data, capsys, progress):
    rows = BlockSequence.from_arrays([data["x"]], chunks=(10, 13))
    cols = BlockSequence.from_arrays([data["z"]], chunks=(9, 8))
    blocks = SequentialMapper(progress=progress).map_pairwise(product, rows, cols)
    np.testing.assert_allclose(NestedNumpyCatAggregator()(blocks), data["x"] @ data["z"].T)
    assert capsys.readouterr().err == ""


def test_sequential_progress_counts_blocks_on_one_bar(data, capsys):
    pytest.importorskip("tqdm")
    rows = BlockSequence.from_arrays([data["x"]], chunks=(10, 13))
    cols = BlockSequence.from_arrays([data["z"]], chunks=(9, 8))
    NestedNumpyCatAggregator()(SequentialMapper(progress=True).map_pairwise(product, rows, cols, name="gram"))
    err = capsys.readouterr().err
    assert "gram" in err and "4/4" in err and err.count("\n") <= 1  # one line rewritten with \r
