"""Default block layout of fixed budgets (equal blocks, at least min-blocks) and worker warm-up."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import dask
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from dvl_dask import Dataset, Utility, config
from dvl_dask.testing.games import AirportGame
from dvl_dask.valuation import permutation_shapley
from dvl_dask.valuation._graph import even_ranges
from dvl_dask.valuation._warmup import _warm_worker, warm_workers

GAME = AirportGame([1.0, 2.0, 2.5, 4.0, 5.0, 7.5])


@pytest.mark.parametrize(
    ("total", "cap", "min_blocks", "granule"),
    [(40, 4, 16, 1), (60, 4, 16, 1), (1000, 4, 16, 1), (200, 133, 16, 1), (41, 4, 16, 2), (5, 5, 16, 2), (1, 4, 16, 1)],
)
def test_even_ranges_cover_the_budget_in_equal_blocks(total, cap, min_blocks, granule):
    ranges = even_ranges(total, cap, min_blocks, granule)
    sizes = np.array([b - a for a, b in ranges])
    assert ranges[0][0] == 0 and ranges[-1][1] == total
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert sizes.max() <= max(granule, cap - cap % granule)
    body = sizes[:-1] if len(sizes) > 1 else sizes  # the last block takes what is left
    assert body.max() - body.min() <= granule and sizes[-1] <= body.max()  # equal within one granule
    assert np.all(body % granule == 0)  # antithetic pairs stay whole
    floor = max(granule, cap // 8)
    expected = max(-(-total // cap), min(min_blocks, -(-total // floor)))
    assert len(ranges) == min(expected, -(-total // granule))


def test_default_layout_is_recorded_and_the_same_on_every_scheduler():
    with dask.config.set({config.MC_EVALUATIONS_PER_BLOCK: 24}):  # 4 permutations of 6 players a block
        lazy = permutation_shapley(GAME, n_permutations=40, seed=3)
        ref = lazy.compute(scheduler="sync")
        threaded = permutation_shapley(GAME, n_permutations=40, seed=3).compute(scheduler="threads")
        explicit = permutation_shapley(GAME, n_permutations=40, seed=3, items_per_block=4).compute(scheduler="sync")
    assert ref.attrs["n_blocks"] == 16 and explicit.attrs["n_blocks"] == 10
    assert ref.dvl.parameters["min_blocks"] == 16 and "min_blocks" not in explicit.dvl.parameters
    np.testing.assert_array_equal(threaded["value"].values, ref["value"].values)
    assert ref["counts"].values.tolist() == [40] * 6
    # every permutation is efficient: the values sum to u(N) - u(empty) exactly
    assert abs(ref["value"].values.sum() - 7.5) < 1e-12


def test_default_layout_keeps_antithetic_pairs_whole():
    with dask.config.set({config.MC_EVALUATIONS_PER_BLOCK: 30}):  # 5 permutations a block: capped to 4
        ds = permutation_shapley(GAME, n_permutations=40, seed=0, antithetic=True).compute(scheduler="sync")
    assert ds["counts"].values.tolist() == [20] * 6  # 40 permutations = 20 pairs, none added by rounding


class _RecordingClient:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def run(self, fn, *args, wait=True):
        self.calls.append((fn, args, wait))


def test_warm_workers_sends_the_unfitted_model_and_scorer_without_waiting():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 2))
    y = np.arange(20) % 2
    model = LogisticRegression(C=0.5).fit(x, y)  # fitted: the warm-up sends an unfitted clone
    utility = Utility(model, Dataset(x[:10], y[:10], x[10:], y[10:]), "accuracy")
    client = _RecordingClient()
    assert warm_workers(client, utility)
    _join_warm_up_threads()  # the request is sent from a daemon thread
    (fn, args, wait), = client.calls
    assert fn is _warm_worker and wait is False
    assert args[0].get_params() == model.get_params() and not hasattr(args[0], "coef_")
    assert args[1] is utility.scorer
    asyncio.run(fn(*args))  # runs as the worker would (a coroutine on its event loop)
    with dask.config.set({config.MC_WARM_WORKERS: False}):
        assert not warm_workers(client, utility)
    assert warm_workers(client, GAME)
    _join_warm_up_threads()
    assert client.calls[-1][1] == ()  # games need no model


def _join_warm_up_threads() -> None:
    for thread in threading.enumerate():
        if thread.name == "dvl-dask-warm-workers":
            thread.join(10)


class _SlowClient(_RecordingClient):
    """``client.run(wait=False)`` on fresh workers: returns once they have unpickled (imported) the request."""

    def run(self, fn, *args, wait=True):
        time.sleep(1.0)
        super().run(fn, *args, wait=wait)


@pytest.mark.serial  # timing: 0.5 s allowed against a 1 s warm-up
def test_building_a_graph_does_not_wait_for_the_warm_up():
    client = _SlowClient()
    start = time.perf_counter()
    assert warm_workers(client, GAME)
    assert time.perf_counter() - start < 0.5
    assert not client.calls
    _join_warm_up_threads()
    assert len(client.calls) == 1
