"""The sliding window on a 16-thread cluster: threads stay busy, values never depend on the cluster,
and losing every worker once changes nothing."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from dvl_dask.testing.games import AirportGame
from dvl_dask.valuation import MaxEvaluations, MinUpdates, permutation_shapley, run_until_converged

pytestmark = [pytest.mark.distributed]

COSTS = np.linspace(1.0, 20.0, 20)


class UnevenGame(AirportGame):
    """An airport game whose evaluations sleep (releasing the GIL): 0.5 ms, one in 40 takes 25 ms.

    Which coalitions are slow is fixed by the coalition, so the work is the same
    on every scheduler. ``delay=False`` skips the sleeps (same values, fast).
    """

    def __init__(self, costs, delay: bool = True) -> None:
        self.delay = delay
        super().__init__(costs)

    def value(self, players):
        if self.delay:
            slow = (int(players.sum()) * 2654435761 + players.size) % 40 == 0
            time.sleep(0.025 if slow else 0.0005)
        return super().value(players)


def _same(a, b):
    for name in ("value", "stderr", "counts"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert a.attrs["n_evaluations"] == b.attrs["n_evaluations"] and a.attrs["n_blocks"] == b.attrs["n_blocks"]


@pytest.fixture(scope="session")
def cluster_4x4():
    """4 worker processes x 4 threads, shared by the tests of this module."""
    distributed = pytest.importorskip("distributed")
    from conftest import service_unavailable

    try:
        cluster = distributed.LocalCluster(n_workers=4, threads_per_worker=4, processes=True,
                                           dashboard_address=":0", host="127.0.0.1")
    except Exception as exc:  # pragma: no cover - environment dependent
        service_unavailable(f"cannot start a distributed LocalCluster: {exc}")
    yield cluster
    cluster.close()


@pytest.fixture
def client16(cluster_4x4):
    from distributed import Client

    with Client(cluster_4x4, set_as_default=False) as c:
        c.wait_for_workers(4, timeout=120)
        yield c


def _busy(client, stop, **kwargs):
    """Run on ``client``; return (result, busy fraction, wall seconds, peak blocks computing at once).

    Busy is the blocks' worker-side compute time over ``threads x`` the span from
    the first block's start to the last block's end on the workers: what the window
    controls, without the client process's own start and teardown, which a
    machine loaded by other processes stretches arbitrarily.
    """
    from distributed import get_task_stream

    with get_task_stream(client) as stream:
        start = time.time()
        result = run_until_converged(permutation_shapley, UnevenGame(COSTS), stop=stop, client=client,
                                     **kwargs)
        wall = time.time() - start
    spans = [(s["start"], s["stop"]) for t in stream.data if "-block-" in t["key"]
             for s in t["startstops"] if s["action"] == "compute"]
    busy = sum(b - a for a, b in spans)
    threads = sum(client.nthreads().values())
    span = max(b for _, b in spans) - min(a for a, _ in spans)
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    print(f"busy {busy / (threads * wall):.0%} of threads x client wall {wall:.1f} s, peak {peak} blocks at once")
    return result, busy / (threads * span), span, peak


@pytest.mark.slow
def test_sixteen_threads_stay_busy_and_values_equal_sync(client16):
    kwargs = dict(seed=11, items_per_block=8, progress=False)
    stop = MaxEvaluations(40_000)
    reference = run_until_converged(permutation_shapley, UnevenGame(COSTS, delay=False), stop=stop,
                                    **kwargs, window=1)
    _busy(client16, MaxEvaluations(3_000), **kwargs)  # warm up: imports and the utility on every worker
    result, busy, wall, peak = _busy(client16, stop, **kwargs)
    _same(result, reference)
    print(f"busy {busy:.0%} of 16 threads over the {wall:.1f} s the blocks ran")
    # The old loop kept at most 8 blocks in flight, whatever the cluster. The busy fraction
    # (72-79% on a quiet machine) depends on how much CPU the client gets on 2 shared
    # cores, so the test asserts what the window controls: blocks computing at once.
    assert peak >= 14, f"at most {peak} of 16 threads computed blocks at the same time"


@pytest.mark.slow
def test_every_worker_killed_once_gives_identical_values(client16):
    kwargs = dict(seed=5, items_per_block=8, progress=False)
    stop = MaxEvaluations(20_000)
    reference = run_until_converged(permutation_shapley, UnevenGame(COSTS, delay=False), stop=stop, **kwargs)
    workers = dict(client16.run(os.getpid))
    started = threading.Event()

    def kill_all():
        started.wait(60)
        time.sleep(1.0)
        for pid in workers.values():
            os.kill(pid, signal.SIGKILL)  # every worker dies at once, without cleanup; nannies restart them

    class Watch(MaxEvaluations):
        def check(self, state):
            started.set()
            return super().check(state)

    killer = threading.Thread(target=kill_all)
    killer.start()
    got = run_until_converged(permutation_shapley, UnevenGame(COSTS), stop=Watch(20_000), client=client16, **kwargs)
    killer.join()
    _same(got, reference)
    client16.wait_for_workers(4, timeout=120)
    assert not set(workers) & set(client16.scheduler_info()["workers"])  # they really died


@pytest.mark.slow
def test_window_and_scheduler_never_change_values():
    from concurrent.futures import ThreadPoolExecutor

    import dask

    game = AirportGame([1.0, 2.0, 2.5, 4.0, 5.0, 7.5])
    kwargs = dict(seed=3, items_per_block=3, progress=False)
    stop = MinUpdates(60)
    with dask.config.set(scheduler="sync"):
        reference = run_until_converged(permutation_shapley, game, stop=stop, **kwargs)
    runs = [run_until_converged(permutation_shapley, game, stop=stop, window=w, **kwargs) for w in (1, 3, 16)]
    with ThreadPoolExecutor(4) as pool:
        runs.append(run_until_converged(permutation_shapley, game, stop=stop, executor=pool, **kwargs))
    with dask.config.set(scheduler="processes", num_workers=2):
        runs.append(run_until_converged(permutation_shapley, game, stop=stop, **kwargs))
    for got in runs:
        _same(got, reference)


@pytest.mark.parametrize("lag", [1, 4])
def test_active_players_are_decided_by_block_index(lag):
    """Per-player convergence: which players a block works on never depends on timing or the window."""
    import dask

    from dvl_dask.valuation import RelativeStandardError, semivalue, shapley_coefficient

    game = AirportGame([1.0, 2.0, 2.5, 4.0, 5.0, 7.5])
    kwargs = dict(coefficient=shapley_coefficient, sampler="stratified", seed=8, items_per_block=10,
                  progress=False)
    stop = RelativeStandardError(0.05) | MaxEvaluations(30_000)
    with dask.config.set({"dvl_dask.valuation.montecarlo.active-set-lag": lag}):
        reference = run_until_converged(semivalue, game, stop=stop, window=1, **kwargs)
        wide = run_until_converged(semivalue, game, stop=stop, window=16, **kwargs)
    _same(wide, reference)
    counts = reference["counts"].values
    assert counts.max() > counts.min()  # converged players really stopped receiving work
    from dvl_dask.results import parameters_of

    assert parameters_of(reference)["active_set_lag"] == lag  # part of the run's identity (checkpoints)


class _LostResult:
    """A finished block whose only copy died with its worker: fetching it never completes."""

    status = "lost"

    def result(self, timeout=None):
        time.sleep(timeout or 0)
        raise TimeoutError(f"timed out after {timeout} s.")


class _EmptyCluster:
    class scheduler:  # mimics client.scheduler.address
        address = "tcp://127.0.0.1:0"

    def nthreads(self):
        return {}


def test_fetching_a_lost_result_still_honours_the_no_workers_deadline():
    # CI once hung for 300 s here: the block had finished, every worker was then killed, and a bare
    # future.result() waited for a worker to recompute it.
    from dvl_dask.errors import NoWorkersError
    from dvl_dask.valuation._backends import DistributedBackend

    backend = object.__new__(DistributedBackend)
    backend.client, backend.no_workers_timeout = _EmptyCluster(), 1.0
    backend._threads, backend._checked, backend._idle_since = 0, 0.0, None
    start = time.monotonic()
    with pytest.raises(NoWorkersError, match="no workers for more than 1 s"):
        backend._fetch(_LostResult())
    assert time.monotonic() - start < 5


class _TaskTimedOut(_LostResult):
    status = "error"

    def result(self, timeout=None):
        raise TimeoutError("the scorer's own timeout")


def test_a_block_that_raised_timeouterror_is_reported_not_retried():
    from dvl_dask.valuation._backends import DistributedBackend

    backend = object.__new__(DistributedBackend)
    with pytest.raises(TimeoutError, match="scorer's own"):
        backend._fetch(_TaskTimedOut())


class _CancelledWhileWaiting(_LostResult):
    """Cancelled by the scheduler during the wait: distributed's sync surfaces it as an UnboundLocalError."""

    status = "pending"

    def result(self, timeout=None):
        self.status = "cancelled"
        raise UnboundLocalError("cannot access local variable 'result' where it is not associated with a value")


def test_a_block_cancelled_by_the_scheduler_is_fetched_as_none_then_run_again():
    from dvl_dask.errors import NoWorkersError
    from dvl_dask.valuation._backends import DistributedBackend

    backend = object.__new__(DistributedBackend)
    backend.client, backend.no_workers_timeout = _EmptyCluster(), 1.0
    assert backend._fetch(_CancelledWhileWaiting()) is None
    cancelled = _LostResult()
    cancelled.status = "cancelled"
    assert backend._fetch(cancelled) is None
    # the block is submitted again with its own players, at most _MAX_RESUBMITS times
    submitted = []
    backend._active, backend._attempts = {7: np.array([1, 3])}, {}
    backend.submit = lambda block, active: submitted.append((block, active.tolist()))
    for _ in range(DistributedBackend._MAX_RESUBMITS):
        backend._resubmit(7)
    assert submitted == [(7, [1, 3])] * DistributedBackend._MAX_RESUBMITS
    with pytest.raises(NoWorkersError, match="Block 7 was cancelled"):
        backend._resubmit(7)
