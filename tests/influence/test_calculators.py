"""Influence calculators: both engines equal the in-memory model, factors once per test chunk, clear errors."""

from __future__ import annotations

import itertools

import dask
import dask.array as da
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from dvl_dask.errors import (  # noqa: E402
    InvalidDataError,
    InvalidModelError,
    InvalidParameterError,
    NotFittedError,
    UnalignedChunksError,
    UnknownModeError,
)
from dvl_dask.influence import (  # noqa: E402
    DaskInfluenceCalculator,
    DisableClientSingleThreadCheck,
    InfluenceFunctionModel,
    NestedMinMaxAggregator,
    SequentialInfluenceCalculator,
)
from dvl_dask.influence.torch import (  # noqa: E402
    DirectInfluence,
    NestedTorchCatAggregator,
    TorchCatAggregator,
    TorchNumpyConverter,
    torch_dataset_to_dask_array,
)
from dvl_dask.testing import raise_if_dask_computes  # noqa: E402

pytestmark = pytest.mark.torch

TEST_CHUNKS = (3, 5, 2)  # uneven on purpose
TRAIN_CHUNKS = (7, 20, 4, 19)


class CountingInfluence(InfluenceFunctionModel):
    """Delegates to a fitted model and records every call (sizes of the chunks it saw)."""

    def __init__(self, inner):
        self.inner = inner
        self.factor_calls: list[int] = []
        self.gradient_calls: list[int] = []
        self.contraction_calls: list[tuple[int, int]] = []
        self.fail_after: int | None = None  # raise on the n-th contraction (an interruption)

    n_parameters = property(lambda self: self.inner.n_parameters)
    is_fitted = property(lambda self: self.inner.is_fitted)
    input_shapes = property(lambda self: self.inner.input_shapes)
    dtype = property(lambda self: self.inner.dtype)

    def fit(self, data):
        self.inner.fit(data)
        return self

    def _influence_factors(self, x, y):
        self.factor_calls.append(len(x))
        return self.inner.influence_factors(x, y)

    def _per_sample_gradients(self, x, y):
        self.gradient_calls.append(len(x))
        return self.inner.per_sample_gradients(x, y)

    def _influences_from_factors(self, factors, x, y, mode):
        if self.fail_after is not None and len(self.contraction_calls) >= self.fail_after:
            raise RuntimeError("simulated interruption")
        self.contraction_calls.append((len(factors), len(x)))
        return self.inner.influences_from_factors(factors, x, y, mode)

    def reset(self):
        self.factor_calls.clear()
        self.gradient_calls.clear()
        self.contraction_calls.clear()


@pytest.fixture(scope="module")
def problem(mlp_regressor):
    p = mlp_regressor
    model = DirectInfluence(p.model, p.loss, regularization=0.01).fit((p.x, p.y))
    return p, model


@pytest.fixture(scope="module")
def expected(problem):
    p, model = problem
    return {
        "up": model.influences(p.x_test, p.y_test, p.x, p.y).numpy(),
        "perturbation": model.influences(p.x_test, p.y_test, p.x, p.y, mode="perturbation").numpy(),
    }


def _chunks(x, y, sizes):
    offsets = np.cumsum((0, *sizes))
    return [(x[a:b], y[a:b]) for a, b in itertools.pairwise(offsets)]


def _dask(t, chunks):
    return da.from_array(t.numpy(), chunks=(chunks,) + (-1,) * (t.ndim - 1))


def _dask_data(p):
    return (_dask(p.x_test, TEST_CHUNKS), _dask(p.y_test, TEST_CHUNKS), _dask(p.x, TRAIN_CHUNKS),
            _dask(p.y, TRAIN_CHUNKS))


# -- same values as the in-memory model ------------------------------------------------------


@pytest.mark.parametrize("mode", ["up", "perturbation"])
@pytest.mark.parametrize("train_gradients", ["store", "recompute"])
def test_sequential_equals_in_memory(problem, expected, mode, train_gradients):
    p, model = problem
    calc = SequentialInfluenceCalculator(model, train_gradients=train_gradients)
    lazy = calc.influences(_chunks(p.x_test, p.y_test, TEST_CHUNKS), _chunks(p.x, p.y, TRAIN_CHUNKS), mode=mode)
    assert lazy.plan.chunks == (TEST_CHUNKS, TRAIN_CHUNKS)
    values = lazy.compute(aggregator=NestedTorchCatAggregator())
    np.testing.assert_allclose(values.numpy(), expected[mode], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["up", "perturbation"])
@pytest.mark.parametrize("train_gradients", ["store", "recompute"])
def test_dask_sync_equals_in_memory(problem, expected, mode, train_gradients):
    p, model = problem
    calc = DaskInfluenceCalculator(
        model, TorchNumpyConverter(), DisableClientSingleThreadCheck, train_gradients=train_gradients
    )
    with raise_if_dask_computes():
        values = calc.influences(*_dask_data(p), mode=mode)
    assert values.chunks[:2] == (TEST_CHUNKS, TRAIN_CHUNKS)
    assert values.shape == expected[mode].shape and values.dtype == np.float64
    np.testing.assert_allclose(values.compute(scheduler="sync"), expected[mode], rtol=1e-10, atol=1e-12)


def test_both_engines_agree_from_a_dataloader_and_dask_arrays(problem, expected):
    p, model = problem
    loader = DataLoader(TensorDataset(p.x, p.y), batch_size=16)  # chunks (16, 16, 16, 2) known without reading
    test_loader = DataLoader(TensorDataset(p.x_test, p.y_test), batch_size=4)
    seq = SequentialInfluenceCalculator(model).influences(test_loader, loader)
    assert seq.plan.chunks == ((4, 4, 2), (16, 16, 16, 2))
    x, y = torch_dataset_to_dask_array(TensorDataset(p.x, p.y), chunk_size=16)
    xt, yt = torch_dataset_to_dask_array(TensorDataset(p.x_test, p.y_test), chunk_size=4)
    lazy = DaskInfluenceCalculator(model, TorchNumpyConverter(), DisableClientSingleThreadCheck).influences(
        xt, yt, x, y
    )
    assert lazy.chunks == ((4, 4, 2), (16, 16, 16, 2))
    np.testing.assert_allclose(
        lazy.compute(scheduler="sync"), seq.compute(NestedTorchCatAggregator()).numpy(), rtol=1e-12, atol=1e-14
    )
    np.testing.assert_allclose(lazy.compute(scheduler="threads"), expected["up"], rtol=1e-10, atol=1e-12)


def test_graph_names_are_deterministic(problem):
    p, model = problem
    names = []
    for _ in range(2):
        calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), DisableClientSingleThreadCheck)
        values = calc.influences(*_dask_data(p))
        names.append((values.name, sorted(values.dask.layers)))
    assert names[0] == names[1] and names[0][0].startswith("influence-up-")
    other = DaskInfluenceCalculator(model, TorchNumpyConverter(), DisableClientSingleThreadCheck)
    assert other.influences(*_dask_data(p), mode="perturbation").name.startswith("influence-perturbation-")


def test_classifier_with_integer_labels(mlp_classifier):
    p = mlp_classifier
    model = DirectInfluence(p.model, p.loss, regularization=0.1).fit((p.x, p.y))
    expected = model.influences(p.x_test, p.y_test, p.x, p.y).numpy()
    calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), DisableClientSingleThreadCheck)
    values = calc.influences(_dask(p.x_test, (6, 4)), _dask(p.y_test, (6, 4)), _dask(p.x, (25, 25)),
                             _dask(p.y, (25, 25)))
    np.testing.assert_allclose(values.compute(scheduler="sync"), expected, rtol=1e-10, atol=1e-12)


def test_test_vs_test_and_from_factors(problem):
    p, model = problem
    expected = model.influences(p.x_test, p.y_test).numpy()
    seq = SequentialInfluenceCalculator(model)
    chunks = _chunks(p.x_test, p.y_test, TEST_CHUNKS)
    np.testing.assert_allclose(seq.influences(chunks).compute(NestedTorchCatAggregator()).numpy(), expected)
    factors = seq.influence_factors(chunks)
    assert factors.chunks == TEST_CHUNKS
    f = factors.compute(TorchCatAggregator())
    assert f.shape == (10, model.n_parameters)
    from_f = seq.influences_from_factors(factors, chunks).compute(NestedTorchCatAggregator())
    np.testing.assert_allclose(from_f.numpy(), expected)
    np.testing.assert_allclose(seq.influences_from_factors(f, chunks).compute(NestedTorchCatAggregator()), expected)

    calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), DisableClientSingleThreadCheck)
    xt, yt = _dask(p.x_test, TEST_CHUNKS), _dask(p.y_test, TEST_CHUNKS)
    np.testing.assert_allclose(calc.influences(xt, yt).compute(scheduler="sync"), expected)
    dask_factors = calc.influence_factors(xt, yt)
    assert dask_factors.chunks == (TEST_CHUNKS, (model.n_parameters,))
    np.testing.assert_allclose(dask_factors.compute(scheduler="sync"), f.numpy())
    np.testing.assert_allclose(calc.influences_from_factors(dask_factors, xt, yt).compute(scheduler="sync"), expected)


# -- factors once per test chunk, gradients once per training chunk ----------------------------------


@pytest.fixture
def counting(problem):
    _, model = problem
    return CountingInfluence(model)


@pytest.mark.parametrize("train_gradients", ["store", "recompute"])
def test_sequential_computes_factors_once_per_test_chunk(problem, counting, train_gradients):
    p, _ = problem
    calc = SequentialInfluenceCalculator(counting, train_gradients=train_gradients)
    lazy = calc.influences(_chunks(p.x_test, p.y_test, TEST_CHUNKS), _chunks(p.x, p.y, TRAIN_CHUNKS))
    assert counting.factor_calls == []  # lazy
    lazy.compute(NestedMinMaxAggregator())
    assert counting.factor_calls == list(TEST_CHUNKS)  # once per test chunk, with 4 training chunks
    if train_gradients == "store":
        assert counting.gradient_calls == list(TRAIN_CHUNKS) and counting.contraction_calls == []
    else:
        assert counting.gradient_calls == []
        assert counting.contraction_calls == [(a, b) for a in TEST_CHUNKS for b in TRAIN_CHUNKS]


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
@pytest.mark.parametrize("train_gradients", ["store", "recompute"])
def test_dask_computes_factors_once_per_test_chunk(problem, counting, scheduler, train_gradients):
    p, _ = problem
    calc = DaskInfluenceCalculator(
        counting, TorchNumpyConverter(), DisableClientSingleThreadCheck, train_gradients=train_gradients
    )
    values = calc.influences(*_dask_data(p))
    values.compute(scheduler=scheduler)
    assert sorted(counting.factor_calls) == sorted(TEST_CHUNKS)
    if train_gradients == "store":
        assert sorted(counting.gradient_calls) == sorted(TRAIN_CHUNKS) and counting.contraction_calls == []
    else:
        assert len(counting.contraction_calls) == len(TEST_CHUNKS) * len(TRAIN_CHUNKS)
    # The graph: one task per test chunk computes factors; the model is one key.
    graph = dict(values.__dask_graph__())
    factor_keys = [k for k in graph if isinstance(k, tuple) and k[0].startswith("influence-factors-")]
    assert len(factor_keys) == len(TEST_CHUNKS)
    assert len([k for k in graph if str(k).startswith("shared-objects-")]) == 1


def test_auto_gradients_follow_the_memory_budget(problem, counting):
    p, _ = problem
    n_bytes = p.x.shape[0] * counting.n_parameters * 8
    for budget, stored in ((n_bytes, "stored"), (n_bytes - 1, "recomputed")):
        calc = DaskInfluenceCalculator(counting, TorchNumpyConverter(), DisableClientSingleThreadCheck,
                                       memory_budget=budget)
        assert calc.influences(*_dask_data(p), as_xarray=True).attrs["train_gradients"] == stored
    with dask.config.set({"dvl_dask.influence.gradient-memory-budget": "1 B"}):
        calc = DaskInfluenceCalculator(counting, TorchNumpyConverter(), DisableClientSingleThreadCheck)
        assert calc.influences(*_dask_data(p), as_xarray=True).attrs["train_gradients"] == "recomputed"
    # Sequential "auto": gradients are cached while they fit, the rest recomputed per test chunk.
    seq = SequentialInfluenceCalculator(counting, memory_budget=TRAIN_CHUNKS[0] * counting.n_parameters * 8)
    counting.reset()
    seq.influences(_chunks(p.x_test, p.y_test, TEST_CHUNKS), _chunks(p.x, p.y, TRAIN_CHUNKS)).compute()
    assert counting.gradient_calls == [7, 20, 4, 19, 20, 4, 19, 20, 4, 19]


# -- labels ----------------------------------------------------------------------------------------


def test_as_xarray_labels_the_result(problem, expected):
    p, model = problem
    calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), DisableClientSingleThreadCheck)
    test_names = [f"q{i}" for i in range(10)]
    train_names = np.arange(50) * 10
    arr = calc.influences(*_dask_data(p), as_xarray=True, test_names=test_names, train_names=train_names)
    assert arr.dims == ("test_sample", "train_sample") and arr.name == "influence"
    assert arr.test_sample.values.tolist() == test_names and arr.train_sample.values.tolist() == train_names.tolist()
    assert arr.attrs["mode"] == "up" and arr.attrs["model"] == "DirectInfluence"
    assert arr.chunks == (TEST_CHUNKS, TRAIN_CHUNKS)
    best = arr.argmax("train_sample").compute(scheduler="sync")
    np.testing.assert_array_equal(best.values, expected["up"].argmax(axis=1))
    pert = calc.influences(*_dask_data(p), mode="perturbation", as_xarray=True)
    assert pert.dims == ("test_sample", "train_sample", "feature_0") and pert.shape == (10, 50, 3)
    with pytest.raises(InvalidParameterError, match="one label per sample"):
        calc.influences(*_dask_data(p), as_xarray=True, test_names=["a"])


# -- errors ------------------------------------------------------------------------------------------


def test_dask_calculator_reports_bad_input(problem):
    p, model = problem
    calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), DisableClientSingleThreadCheck)
    xt, yt, x, y = _dask_data(p)
    with pytest.raises(UnalignedChunksError, match=r"y_test = y_test.rechunk\(\{0: x_test.chunks\[0\]\}\)"):
        calc.influences(xt, yt.rechunk(5), x, y)
    with pytest.raises(UnalignedChunksError, match="same chunks along the sample axis"):
        calc.influences(xt, yt, x, y.rechunk(10))
    with pytest.raises(InvalidDataError, match=r"per-sample shape \(4,\).*fitted on per-sample shape \(3,\)"):
        calc.influences(da.concatenate([xt, xt[:, :1]], axis=1), yt, x, y)
    with pytest.raises(InvalidDataError, match=r"'y' argument .* per-sample shape"):
        calc.influences(xt, yt, x, y[:, 0])
    with pytest.raises(InvalidDataError, match="same number of samples"):
        calc.influences(xt, yt[:5], x, y)
    with pytest.raises(InvalidDataError, match="must be a dask array"):
        calc.influences(p.x_test.numpy(), yt, x, y)
    with pytest.raises(InvalidDataError, match=r"x_test = x_test.astype\(np.float64\)"):
        calc.influences(xt.astype(np.float32), yt, x, y)
    with pytest.raises(InvalidDataError, match=r"'y' argument .* dtype float32"):
        calc.influences(xt, yt, x, y.astype(np.float32))
    with pytest.raises(UnknownModeError, match="'up', 'perturbation'"):
        calc.influences(xt, yt, x, y, mode="sideways")
    with pytest.raises(InvalidParameterError, match="got x but not y"):
        calc.influences(xt, yt, x)
    with pytest.raises(InvalidDataError, match="compute_chunk_sizes"):
        calc.influences(xt[xt[:, 0] > 0], yt[xt[:, 0] > 0], x, y)
    with pytest.raises(InvalidDataError, match="n_parameters="):
        calc.influences_from_factors(x[:, :2], x, y)


def test_calculators_reject_bad_construction(problem, mlp_regressor):
    p, model = problem
    with pytest.raises(NotFittedError, match="not fitted"):
        SequentialInfluenceCalculator(DirectInfluence(p.model, p.loss))
    with pytest.raises(InvalidModelError, match="InfluenceFunctionModel"):
        SequentialInfluenceCalculator(p.model)
    with pytest.raises(InvalidParameterError, match="'train_gradients' parameter"):
        SequentialInfluenceCalculator(model, train_gradients="sometimes")
    with pytest.raises(InvalidParameterError, match="'memory_budget' parameter"):
        SequentialInfluenceCalculator(model, memory_budget="a lot")
    with pytest.raises(InvalidParameterError, match="'client' parameter"):
        DaskInfluenceCalculator(model, TorchNumpyConverter(), client="localhost:8786")
    with pytest.raises(InvalidParameterError, match="'converter' parameter"):
        DaskInfluenceCalculator(model, None, DisableClientSingleThreadCheck)


def test_sequential_calculator_reports_bad_input(problem):
    p, model = problem
    seq = SequentialInfluenceCalculator(model)
    train = _chunks(p.x, p.y, TRAIN_CHUNKS)
    with pytest.raises(UnknownModeError):
        seq.influences(train, train, mode="sideways")
    with pytest.raises(InvalidDataError, match="one-shot iterator"):
        seq.influences(train, (pair for pair in train))
    lazy = seq.influences([(p.x_test[:, :2], p.y_test)], train)  # wrong dims: reported when computed
    with pytest.raises(InvalidDataError, match="per-sample shape"):
        lazy.compute()
