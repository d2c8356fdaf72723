"""The Dask calculator on a distributed cluster: same values, model scattered once, thread-safety check."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

torch = pytest.importorskip("torch")
distributed = pytest.importorskip("distributed")

from dvl_dask import open_influence  # noqa: E402
from dvl_dask.errors import ThreadSafetyViolationError  # noqa: E402
from dvl_dask.influence import (  # noqa: E402
    DaskInfluenceCalculator,
    DisableClientSingleThreadCheck,
    influence_to_zarr,
)
from dvl_dask.influence.torch import CgInfluence, DirectInfluence, TorchNumpyConverter  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.distributed]


def _dask(t, chunks):
    return da.from_array(t.numpy(), chunks=(chunks,) + (-1,) * (t.ndim - 1))


@pytest.fixture(scope="module")
def fitted(mlp_regressor):
    p = mlp_regressor
    direct = DirectInfluence(p.model, p.loss, regularization=0.01).fit((p.x, p.y))
    cg = CgInfluence(p.model, p.loss, regularization=0.1, second_order_mode="gauss_newton", rtol=1e-10,
                     maxiter=200).fit((p.x, p.y))
    return p, {"direct": direct, "cg": cg}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["direct", "cg"])
def test_local_cluster_equals_in_memory_with_uneven_chunks(fitted, client, name):
    p, models = fitted
    model = models[name]
    expected = model.influences(p.x_test, p.y_test, p.x, p.y).numpy()
    calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), client)
    # The model was scattered once to every worker; graphs refer to that one key.
    shared = calc._shared
    assert type(shared).__name__ == "Future"
    assert len(client.who_has([shared])[shared.key]) == len(client.nthreads())
    values = calc.influences(_dask(p.x_test, (3, 5, 2)), _dask(p.y_test, (3, 5, 2)),
                             _dask(p.x, (7, 20, 4, 19)), _dask(p.y, (7, 20, 4, 19)))
    graph = values.__dask_graph__()
    assert not any(str(k).startswith("shared-objects-") for k in graph)  # not embedded: the future's key
    # Blocks depend on one task checking that the model is still the one the keys are named from; it reads the future.
    verified = [k for k in graph if str(k).startswith("verified-model-")]
    assert len(verified) == 1 and shared.key in graph[verified[0]].dependencies
    factor_tasks = [graph[k] for k in graph if isinstance(k, tuple) and k[0].startswith("influence-factors-")]
    assert len(factor_tasks) == 3 and all(verified[0] in t.dependencies for t in factor_tasks)
    np.testing.assert_allclose(values.compute(), expected, rtol=1e-7, atol=1e-9 * np.abs(expected).max())


@pytest.mark.slow
def test_local_cluster_writes_zarr_in_parallel(fitted, client, tmp_path):
    p, models = fitted
    model = models["direct"]
    calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), client)
    arr = calc.influences(_dask(p.x_test, 5), _dask(p.y_test, 5), _dask(p.x, 10), _dask(p.y, 10), as_xarray=True)
    url = influence_to_zarr(arr, tmp_path / "cluster.zarr")
    back = open_influence(url)
    assert back.chunks == ((5, 5), (10,) * 5)
    np.testing.assert_allclose(back.values, model.influences(p.x_test, p.y_test, p.x, p.y).numpy(), rtol=1e-10)


@pytest.fixture(scope="module")
def threaded_client():
    """An in-process cluster with one 2-threaded worker (starts in about a second)."""
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0")
    with cluster, distributed.Client(cluster, set_as_default=False) as c:
        yield c


class _WithoutReplicas(DirectInfluence):
    """A model that is neither thread-safe nor makes per-thread replicas, like a user's own model class."""

    thread_replica = None


def test_thread_safety_check_raises_for_a_model_without_replicas(fitted, threaded_client):
    _, models = fitted
    locked = _WithoutReplicas.__new__(_WithoutReplicas)
    locked.__dict__.update(vars(models["direct"]))
    with pytest.raises(ThreadSafetyViolationError, match="threads_per_worker=1") as info:
        DaskInfluenceCalculator(locked, TorchNumpyConverter(), threaded_client)
    assert "2 threads" in str(info.value) and "DisableClientSingleThreadCheck" in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_torch_models_run_on_threaded_workers_with_one_replica_per_thread(fitted, threaded_client):
    """Issue 30: a torch model makes per-thread replicas, so a 2-thread worker is accepted with the client (the
    model scattered once, not embedded in every graph) and its threads compute side by side."""
    p, models = fitted
    model = models["direct"]
    calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), threaded_client)
    assert type(calc._shared).__name__ == "Future"
    values = calc.influences(_dask(p.x_test, 2), _dask(p.y_test, 2), _dask(p.x, 10), _dask(p.y, 10))
    assert not any(str(k).startswith("shared-objects-") for k in values.__dask_graph__())
    got = threaded_client.compute(values).result()
    np.testing.assert_allclose(got, model.influences(p.x_test, p.y_test, p.x, p.y).numpy(), rtol=1e-10, atol=1e-12)


def test_disabling_the_check_runs_correctly_on_threaded_workers(fitted, threaded_client):
    p, models = fitted
    model = models["direct"]
    calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), DisableClientSingleThreadCheck())
    values = calc.influences(_dask(p.x_test, 2), _dask(p.y_test, 2), _dask(p.x, 10), _dask(p.y, 10))
    # Tasks share one model object in the threaded worker; each thread computes with its own replica.
    got = threaded_client.compute(values).result()
    np.testing.assert_allclose(got, model.influences(p.x_test, p.y_test, p.x, p.y).numpy(), rtol=1e-10, atol=1e-12)


def test_calculators_rebuilt_for_one_model_in_a_loop_never_lose_their_model(fitted):
    """A notebook cell re-run: each new calculator for the same model scatters its own copy.

    With a content-derived scatter key, the new calculator's copy could be forgotten by the
    scheduler as the previous calculator's future was released (dask/distributed#8576): about one
    iteration in twenty failed with "lost dependencies" (or hung) here.
    """
    p, models = fitted
    x, y = _dask(p.x[:12], 6), _dask(p.y[:12], 6)
    expected = None
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0")
    with cluster, distributed.Client(cluster, set_as_default=False) as client:
        for _ in range(40):
            calc = DaskInfluenceCalculator(models["direct"], TorchNumpyConverter(), client)
            got = client.compute(calc.influences(x[:6], y[:6], x, y)).result(timeout=30)
            expected = got if expected is None else expected
            np.testing.assert_array_equal(got, expected)
            del calc


@pytest.mark.parametrize("gradients", ["store", "recompute"])
def test_a_two_thread_worker_gives_the_sequential_calculators_pairs(fitted, threaded_client, gradients):
    """Issue 30: per (test, train) pair, the Dask calculator on one 2-thread worker computes what the sequential
    calculator computes in this process (same chunks; each thread computes with its own replica)."""
    from dvl_dask.influence import SequentialInfluenceCalculator
    from dvl_dask.influence.torch import NestedTorchCatAggregator

    p, models = fitted
    model = models["direct"]
    assert p.x.dtype == torch.float64

    def chunks(x, y, size):
        return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]

    sequential = SequentialInfluenceCalculator(model, train_gradients=gradients).influences(
        chunks(p.x_test, p.y_test, 3), chunks(p.x, p.y, 10)
    ).compute(NestedTorchCatAggregator()).numpy()
    calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), threaded_client, train_gradients=gradients)
    lazy = calc.influences(_dask(p.x_test, 3), _dask(p.y_test, 3), _dask(p.x, 10), _dask(p.y, 10))
    got = threaded_client.compute(lazy).result()
    assert got.shape == sequential.shape == (len(p.x_test), len(p.x))
    np.testing.assert_allclose(got, sequential, rtol=1e-12, atol=1e-14 * np.abs(sequential).max())
