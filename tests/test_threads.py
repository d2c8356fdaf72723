"""Block tasks limit BLAS threads (dvl_dask.compute.blas-threads) on every scheduler."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from threadpoolctl import threadpool_info

from dvl_dask.keys import object_token
from dvl_dask.threads import blas_limits
from dvl_dask.valuation import exact_shapley, permutation_shapley


def _blas_threads() -> int:
    pools = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(pools) if pools else -1


class ProbeGame:
    """An additive game whose weight is the number of BLAS threads each evaluation sees.

    Its exact Shapley values equal the limit exactly when every evaluation ran
    under it, whatever process ran it.
    """

    def __init__(self, n: int) -> None:
        self.n_players = n
        self.data_names = np.arange(n)
        self.token = object_token("ProbeGame", n)

    def __call__(self, indices) -> float:
        return float(_blas_threads() * len(list(indices)))

    def __dask_tokenize__(self):
        return self.token


@pytest.mark.skipif(_blas_threads() < 1, reason="no BLAS library reported by threadpoolctl")
@pytest.mark.parametrize(
    ("limit", "scheduler"),
    # Process workers read the packaged default (or the DASK_DVL_DASK__... environment), not
    # a dask.config.set of the parent process, so only the default is checked there.
    [(1, "sync"), (2, "sync"), (1, "processes")],
)
def test_block_tasks_run_with_the_configured_blas_threads(limit, scheduler):
    """Block tasks run in a process's main thread on these schedulers (and on distributed workers)."""
    with dask.config.set({"dvl_dask.compute.blas-threads": limit}):
        game = ProbeGame(3 + limit)
        exact, mc = dask.compute(
            exact_shapley(game, block_size=4).value,
            permutation_shapley(game, n_permutations=4, seed=0).value,
            scheduler=scheduler,
        )
    np.testing.assert_allclose(exact, limit)
    np.testing.assert_allclose(mc, limit)


def test_null_leaves_the_pools_alone():
    before = _blas_threads()
    with dask.config.set({"dvl_dask.compute.blas-threads": None}), blas_limits():
        assert _blas_threads() == before
    with dask.config.set({"dvl_dask.compute.blas-threads": 1}), blas_limits():
        assert _blas_threads() in (1, -1)
    assert _blas_threads() == before


@pytest.mark.skipif(_blas_threads() < 2, reason="needs a BLAS pool of more than one thread")
def test_threads_scheduler_does_not_break_later_limits():
    """A block on the threads scheduler leaves the pools alone, so the main thread can still limit them."""
    exact_shapley(ProbeGame(3), block_size=4).value.compute(scheduler="threads")
    with dask.config.set({"dvl_dask.compute.blas-threads": 1}), blas_limits():
        assert _blas_threads() == 1
