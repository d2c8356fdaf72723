"""Valuation graphs are lazy, carry the utility once, and give equal values on every scheduler."""

from __future__ import annotations

import numpy as np
import pytest

from dvl_dask import Dataset, Utility
from dvl_dask.testing import raise_if_dask_computes
from dvl_dask.valuation import exact_shapley, loo


def _counting_utility():
    from helpers import CountingModel

    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 3))
    data = Dataset(x[:6], np.arange(6.0), x[6:], np.arange(3.0))
    return Utility(CountingModel(), data, "neg_mean_squared_error", default_score=0.0), CountingModel


@pytest.mark.parametrize("method", [exact_shapley, loo])
def test_building_the_graph_fits_nothing(method):
    u, model_cls = _counting_utility()
    model_cls.fits = 0
    with raise_if_dask_computes():
        ds = method(u, block_size=4)
        assert ds["value"].chunks is not None
    assert model_cls.fits == 0
    ds.compute(scheduler="sync")
    assert model_cls.fits > 0


def test_graph_holds_the_utility_once():
    import cloudpickle
    from helpers import CountingModel

    rng = np.random.default_rng(1)
    x = rng.normal(size=(9, 2000))  # 144 kB of data: embedding it anywhere would show
    u = Utility(CountingModel(), Dataset(x[:6], np.arange(6.0), x[6:], np.arange(3.0)), "r2", default_score=0.0)
    ds = exact_shapley(u, block_size=8)
    graph = dict(ds["value"].data.__dask_graph__())
    utility_keys = [k for k in graph if isinstance(k, str) and k.startswith("utility-")]
    assert utility_keys == [f"utility-{u.token}"]
    blocks = [k for k in graph if isinstance(k, str) and k.startswith("exact-shapley-block")]
    assert len(blocks) == 2**6 // 8
    for key in blocks:
        task = graph[key]
        assert f"utility-{u.token}" in task.dependencies
        assert len(cloudpickle.dumps(task)) < 5_000


def test_graph_keys_are_deterministic():
    u, _ = _counting_utility()
    a = exact_shapley(u, block_size=8)["value"].data.name
    b = exact_shapley(u, block_size=8)["value"].data.name
    assert a == b


@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
def test_same_values_on_local_schedulers(logistic_utility_8, scheduler):
    reference = exact_shapley(logistic_utility_8, block_size=64).compute(scheduler="sync")
    got = exact_shapley(logistic_utility_8, block_size=32).compute(scheduler=scheduler)
    np.testing.assert_allclose(got["value"].values, reference["value"].values, atol=1e-12)
    got_loo = loo(logistic_utility_8, block_size=3).compute(scheduler=scheduler)
    ref_loo = loo(logistic_utility_8).compute(scheduler="sync")
    np.testing.assert_allclose(got_loo["value"].values, ref_loo["value"].values, atol=1e-12)


@pytest.mark.distributed
def test_same_values_on_distributed_cluster(logistic_utility_8, client):
    reference = exact_shapley(logistic_utility_8, block_size=64).compute(scheduler="sync")
    got = exact_shapley(logistic_utility_8, block_size=16).compute()  # default client
    np.testing.assert_allclose(got["value"].values, reference["value"].values, atol=1e-12)
    persisted = loo(logistic_utility_8).persist()
    np.testing.assert_allclose(
        persisted["value"].values, loo(logistic_utility_8).compute(scheduler="sync")["value"].values
    )
    # both workers took part in the exact computation's blocks, the utility was shipped, not recomputed
    assert len(client.scheduler_info()["workers"]) == 2
