"""The eager loop: determinism, resume, interruption, worker loss, stopping criteria, errors."""

from __future__ import annotations

import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cloudpickle
import numpy as np
import pytest

from dvl_dask.errors import CheckpointMismatchError, InvalidParameterError
from dvl_dask.testing import raise_if_dask_computes
from dvl_dask.testing.games import AirportGame, ShoesGame
from dvl_dask.valuation import (
    AbsoluteStandardError,
    FixedTruncation,
    HistoryDeviation,
    MaxEvaluations,
    MaxTime,
    MinUpdates,
    RankCorrelation,
    RelativeStandardError,
    StoppingCriterion,
    banzhaf,
    beta_shapley,
    load_checkpoint,
    msr_banzhaf,
    owen_shapley,
    permutation_shapley,
    run_until_converged,
    semivalue,
    shapley_coefficient,
)

GAME = AirportGame([1.0, 2.0, 2.5, 4.0, 5.0, 7.5])


class SlowGame(AirportGame):
    """An airport game that sleeps on every evaluation (to have time to interrupt)."""

    def __init__(self, costs, delay: float) -> None:
        self.delay = delay
        super().__init__(costs)

    def value(self, players):
        time.sleep(self.delay)
        return super().value(players)


class InterruptAfter(StoppingCriterion):
    """Raises KeyboardInterrupt after ``n`` checks (a user pressing Ctrl-C mid-run)."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def reset(self):
        self.seen = 0

    def check(self, state):
        self.seen += 1
        if self.seen > self.n:
            raise KeyboardInterrupt
        return False


def _values(ds):
    return np.asarray(ds["value"].values), np.asarray(ds["stderr"].values), np.asarray(ds["counts"].values)


# -- laziness and graph shape -------------------------------------------------------------
@pytest.mark.parametrize(
    "method",
    [
        functools.partial(permutation_shapley, n_permutations=30),
        functools.partial(banzhaf, n_samples=30),
        functools.partial(msr_banzhaf, n_samples=30),
        functools.partial(beta_shapley, alpha=4, beta=1, n_samples=30),
        functools.partial(owen_shapley, n_samples=30, n_q=5),
        functools.partial(semivalue, coefficient=shapley_coefficient, n_samples=30),
    ],
    ids=lambda p: p.func.__name__,
)
def test_methods_are_lazy_and_carry_the_utility_once(method):
    with raise_if_dask_computes():
        ds = method(GAME, seed=0, items_per_block=4)
    graph = dict(ds["value"].data.__dask_graph__())
    assert [k for k in graph if isinstance(k, str) and k.startswith("utility-")] == [f"utility-{GAME.token}"]
    blocks = [k for k in graph if isinstance(k, str) and "-block-" in k and "merge" not in k and "final" not in k]
    assert len(blocks) == ds.attrs["n_blocks"] > 1
    for key in blocks:
        assert f"utility-{GAME.token}" in graph[key].dependencies
        assert len(cloudpickle.dumps(graph[key])) < 5_000


# -- determinism ---------------------------------------------------------------------------------
@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_same_seed_same_values_on_local_schedulers(scheduler):
    ref = permutation_shapley(GAME, n_permutations=50, seed=7, items_per_block=8).compute(scheduler="sync")
    got = permutation_shapley(GAME, n_permutations=50, seed=7, items_per_block=8).compute(scheduler=scheduler)
    np.testing.assert_array_equal(_values(got)[0], _values(ref)[0])
    other = permutation_shapley(GAME, n_permutations=50, seed=8, items_per_block=8).compute(scheduler="sync")
    assert not np.array_equal(_values(other)[0], _values(ref)[0])


def test_fixed_budget_equals_loop_with_same_blocks():
    lazy = msr_banzhaf(GAME, n_samples=80, seed=3, items_per_block=10).compute()
    eager = run_until_converged(msr_banzhaf, GAME, stop=MaxEvaluations(80), seed=3, items_per_block=10,
                                progress=False)
    for a, b in zip(_values(lazy), _values(eager)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    assert eager.attrs["n_evaluations"] == 80
    # only the budget cap fired: not converged (issue 24)
    assert not eager.attrs["converged"] and eager.attrs["stopped_by"] == ["MaxEvaluations(n_evaluations=80)"]


@pytest.mark.distributed
@pytest.mark.slow
def test_same_seed_same_values_on_distributed_with_one_and_two_workers(client):
    from distributed import Client, LocalCluster

    ref_lazy = owen_shapley(GAME, n_samples=40, seed=1, items_per_block=5).compute(scheduler="sync")
    ref_loop = run_until_converged(banzhaf, GAME, stop=MaxEvaluations(300), seed=1, items_per_block=5,
                                   progress=False)
    two_lazy = owen_shapley(GAME, n_samples=40, seed=1, items_per_block=5).compute()
    two_loop = run_until_converged(banzhaf, GAME, stop=MaxEvaluations(300), seed=1, items_per_block=5,
                                   client=client, progress=False)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as one, \
            Client(one, set_as_default=False) as one_client:
        one_lazy = one_client.compute(owen_shapley(GAME, n_samples=40, seed=1, items_per_block=5)).result()
        one_loop = run_until_converged(banzhaf, GAME, stop=MaxEvaluations(300), seed=1, items_per_block=5,
                                       client=one_client, progress=False)
    for got in (two_lazy, one_lazy):
        np.testing.assert_array_equal(_values(got)[0], _values(ref_lazy)[0])
    for got in (two_loop, one_loop):
        np.testing.assert_array_equal(_values(got)[0], _values(ref_loop)[0])
        assert got.attrs["n_evaluations"] == ref_loop.attrs["n_evaluations"]


def test_executor_and_waves_agree():
    stop = MinUpdates(60)
    waves = run_until_converged(permutation_shapley, GAME, stop=stop, seed=5, items_per_block=7, progress=False)
    with ThreadPoolExecutor(2) as pool:
        pooled = run_until_converged(permutation_shapley, GAME, stop=stop, seed=5, items_per_block=7,
                                     executor=pool, progress=False)
    np.testing.assert_array_equal(_values(waves)[0], _values(pooled)[0])
    assert waves.attrs["n_blocks"] == pooled.attrs["n_blocks"] == 9


# -- checkpoints, resume, interruption ------------------------------------------------------------
def test_resumed_run_equals_uninterrupted_run(tmp_path):
    kwargs = dict(seed=21, items_per_block=6, window=3, progress=False, truncation=FixedTruncation(0.5))
    full = run_until_converged(permutation_shapley, GAME, stop=MinUpdates(120), **kwargs)
    ck = str(tmp_path / "run.zarr")
    part = run_until_converged(permutation_shapley, GAME, stop=MinUpdates(40), checkpoint=ck, **kwargs)
    assert part.attrs["n_blocks"] < full.attrs["n_blocks"]
    resumed = run_until_converged(permutation_shapley, GAME, stop=MinUpdates(120), checkpoint=ck, **kwargs)
    for a, b in zip(_values(full), _values(resumed)):
        np.testing.assert_array_equal(a, b)
    stored = load_checkpoint(ck)
    np.testing.assert_array_equal(_values(stored)[0], _values(full)[0])
    assert stored.attrs["n_evaluations"] == full.attrs["n_evaluations"]


def test_resume_without_seed_adopts_the_checkpoint_seed(tmp_path):
    ck = str(tmp_path / "s.zarr")
    first = run_until_converged(msr_banzhaf, GAME, stop=MaxEvaluations(100), checkpoint=ck, items_per_block=20,
                                progress=False)
    again = run_until_converged(msr_banzhaf, GAME, stop=MaxEvaluations(200), checkpoint=ck, items_per_block=20,
                                progress=False)
    assert again.attrs["seed"] == first.attrs["seed"]
    direct = run_until_converged(msr_banzhaf, GAME, stop=MaxEvaluations(200), seed=int(first.attrs["seed"]),
                                 items_per_block=20, progress=False)
    np.testing.assert_array_equal(_values(again)[0], _values(direct)[0])


def test_interrupted_run_commits_merged_blocks_and_resumes_identically(tmp_path):
    ck = str(tmp_path / "i.zarr")
    kwargs = dict(seed=4, items_per_block=5, window=2, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_until_converged(semivalue, GAME, coefficient=shapley_coefficient, stop=InterruptAfter(5),
                            checkpoint=ck, **kwargs)
    kept = load_checkpoint(ck).attrs["n_blocks"]
    assert kept == 5  # every block the criterion accepted was committed; the one it raised on was not
    stop = RelativeStandardError(0.2) | MaxEvaluations(3000)
    resumed = run_until_converged(semivalue, GAME, coefficient=shapley_coefficient, stop=stop, checkpoint=ck,
                                  **kwargs)
    full = run_until_converged(semivalue, GAME, coefficient=shapley_coefficient, stop=stop, **kwargs)
    for a, b in zip(_values(full), _values(resumed)):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_of_another_run_is_refused(tmp_path):
    ck = str(tmp_path / "c.zarr")
    run_until_converged(permutation_shapley, GAME, stop=MaxEvaluations(50), seed=1, checkpoint=ck, progress=False)
    with pytest.raises(CheckpointMismatchError, match="utility_token") as info:
        run_until_converged(permutation_shapley, ShoesGame(3, 3), stop=MaxEvaluations(50), seed=1, checkpoint=ck,
                            progress=False)
    assert isinstance(info.value, ValueError)
    with pytest.raises(CheckpointMismatchError, match="method"):
        run_until_converged(banzhaf, GAME, stop=MaxEvaluations(50), seed=1, checkpoint=ck, progress=False)
    with pytest.raises(CheckpointMismatchError, match="parameters"):
        run_until_converged(permutation_shapley, GAME, stop=MaxEvaluations(50), seed=1, checkpoint=ck,
                            antithetic=True, progress=False)
    with pytest.raises(CheckpointMismatchError, match="seed"):
        run_until_converged(permutation_shapley, GAME, stop=MaxEvaluations(50), seed=2, checkpoint=ck,
                            progress=False)


@pytest.mark.distributed
@pytest.mark.slow
def test_worker_killed_mid_run_gives_identical_results(client):
    import os
    import signal

    game = SlowGame([1.0, 2.0, 2.5, 4.0, 5.0, 7.5], delay=0.004)
    kwargs = dict(seed=9, items_per_block=4, window=8, progress=False)
    reference = run_until_converged(permutation_shapley, game, stop=MinUpdates(96), **kwargs)
    worker = next(iter(client.scheduler_info()["workers"]))
    pid = client.run(os.getpid, workers=[worker])[worker]

    def kill_soon():
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)  # the worker process dies without any cleanup

    killer = threading.Thread(target=kill_soon)
    killer.start()
    got = run_until_converged(permutation_shapley, game, stop=MinUpdates(96), client=client, **kwargs)
    killer.join()
    for a, b in zip(_values(reference), _values(got)):
        np.testing.assert_array_equal(a, b)
    client.wait_for_workers(2, timeout=60)
    assert worker not in client.scheduler_info()["workers"]  # it really died (and its nanny replaced it)


# -- stopping criteria ----------------------------------------------------------------------------
def _run(stop, method=permutation_shapley, **kw):
    kw.setdefault("items_per_block", 5)
    return run_until_converged(method, GAME, stop=stop, seed=kw.pop("seed", 0), progress=False, **kw)


def test_max_evaluations_and_updates():
    ds = _run(MaxEvaluations(200))
    assert 200 <= ds.attrs["n_evaluations"] < 200 + 5 * 7
    ds = _run(MinUpdates(33))
    assert ds["counts"].values.min() >= 33 and ds["counts"].values.min() < 33 + 5


def test_max_time():
    ds = run_until_converged(permutation_shapley, SlowGame([1.0, 2.0, 3.0], 0.002), stop=MaxTime(0.3), seed=0,
                             items_per_block=2, progress=False)
    assert ds.attrs["stopped_by"] == ["MaxTime(seconds=0.3)"] and ds.attrs["n_blocks"] >= 1
    assert not ds.attrs["converged"]  # a budget cap is not convergence


def test_standard_error_criteria_stop_when_met():
    ds = _run(AbsoluteStandardError(0.05))
    assert (ds["stderr"].values <= 0.05).all()
    ds = _run(RelativeStandardError(0.1))
    assert (ds["stderr"].values <= 0.1 * np.abs(ds["value"].values)).all()
    half = _run(RelativeStandardError(0.02, fraction=0.5) | MaxEvaluations(50_000))
    ok = half["stderr"].values <= 0.02 * np.abs(half["value"].values)
    assert ok.mean() >= 0.5 or half.attrs["n_evaluations"] >= 50_000


def test_per_point_convergence_stops_work_on_converged_players():
    stop = RelativeStandardError(0.05) | MaxEvaluations(60_000)
    ds = _run(stop, method=semivalue, coefficient=shapley_coefficient, sampler="stratified", items_per_block=10)
    counts = ds["counts"].values
    assert counts.max() > counts.min()  # easy players stopped earlier
    assert ds.attrs["converged"]


def test_history_deviation_and_rank_correlation():
    hd = _run(HistoryDeviation(n_steps=5, rtol=0.01) | MaxEvaluations(100_000))
    assert hd.attrs["converged"] and hd.attrs["n_evaluations"] < 100_000
    rc = _run(RankCorrelation(rtol=0.001, burn_in=5) | MaxEvaluations(100_000))
    assert rc.attrs["n_blocks"] >= 5


def test_compositions():
    assert _run(MaxEvaluations(100) | MaxEvaluations(1000)).attrs["n_evaluations"] < 150
    assert _run(MaxEvaluations(100) & MaxEvaluations(1000)).attrs["n_evaluations"] >= 1000
    # ~ negates: "not yet 300 evaluations" holds at once, so the run stops after the first block
    assert _run(~MaxEvaluations(300)).attrs["n_blocks"] == 1
    both = _run(MinUpdates(10) & AbsoluteStandardError(0.2))
    assert both["counts"].values.min() >= 10 and (both["stderr"].values <= 0.2).all()


# -- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: permutation_shapley(GAME, n_permutations=0), "'n_permutations' parameter"),
        (lambda: banzhaf(GAME, n_samples=-3), "'n_samples' parameter"),
        (lambda: beta_shapley(GAME, alpha=0, beta=1, n_samples=5), "'alpha' parameter"),
        (lambda: beta_shapley(GAME, alpha=1, beta=-2, n_samples=5), "'beta' parameter"),
        (lambda: permutation_shapley(GAME, n_permutations=5, truncation="sometimes"), "'truncation' parameter"),
        (lambda: banzhaf(GAME, n_samples=5, sampler="magic"), "'sampler' parameter"),
        (lambda: semivalue(GAME, lambda n, k: np.zeros(len(k)), n_samples=5), "sum to 1"),
        (lambda: owen_shapley(GAME, n_samples=5, n_q=0), "'n_q' parameter"),
        (lambda: permutation_shapley(GAME, n_permutations=5, seed=-1), "'seed' parameter"),
        (lambda: permutation_shapley(GAME, n_permutations=5, warm_start=True), "prefix_scores"),
        (lambda: run_until_converged(permutation_shapley, GAME, stop=10), "'stop' parameter"),
        (lambda: run_until_converged("shapley_magic", GAME, stop=MaxEvaluations(5)), "'method' parameter"),
        (lambda: run_until_converged(permutation_shapley, GAME, stop=MaxEvaluations(5), n_permutations=4),
         "budget"),
        (lambda: MaxEvaluations(0), "'n_evaluations' parameter"),
        (lambda: RelativeStandardError(-0.1), "'rtol' parameter"),
        (lambda: AbsoluteStandardError(0.1, fraction=1.5), "'fraction' parameter"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(InvalidParameterError, match=match):
        call()


def test_load_checkpoint_refuses_what_is_not_a_checkpoint(tmp_path):
    from dvl_dask.errors import SchemaError

    with pytest.raises(SchemaError, match="no dvl_dask checkpoint"):
        load_checkpoint(str(tmp_path / "missing.zarr"))
    import zarr

    zarr.open_group(str(tmp_path / "other.zarr"), mode="w", zarr_format=3)
    with pytest.raises(SchemaError, match="not a dvl_dask checkpoint"):
        load_checkpoint(str(tmp_path / "other.zarr"))


@pytest.mark.distributed
def test_repeating_a_run_back_to_back_on_a_cluster(client):
    """Runs with the same seed reuse no task keys: a repeat never meets the previous run's cancelled futures."""
    kwargs = dict(seed=5, items_per_block=2, progress=False, client=client)
    first = run_until_converged(permutation_shapley, GAME, stop=MinUpdates(24), **kwargs)
    for _ in range(4):
        again = run_until_converged(permutation_shapley, GAME, stop=MinUpdates(24), **kwargs)
        for a, b in zip(_values(first), _values(again)):
            np.testing.assert_array_equal(a, b)
