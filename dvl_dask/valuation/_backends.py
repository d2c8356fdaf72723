"""Where ``run_until_converged`` runs its blocks: one small backend per kind of scheduler.

A backend keeps blocks in flight and hands back each finished block as soon
as it is done, in whatever order blocks finish; the loop puts them back in
block order. Every backend runs the same task, :func:`run_block`, with the
same child seed per block, so the statistics of block *i* are identical on
every backend, window and number of workers.

* :class:`DistributedBackend`: a ``distributed.Client``. The utility enters
  the cluster as one *task* that returns it (a stable key), not as scattered
  data: when every worker holding it dies, the scheduler recomputes it on the
  next worker, and the blocks that depended on it are rescheduled. The window
  follows the cluster's size (``window-per-thread`` x total threads) as
  workers come and go; with no workers for ``no-workers-timeout`` seconds the
  backend raises :class:`~dvl_dask.errors.NoWorkersError`.
* :class:`ExecutorBackend`: any ``concurrent.futures.Executor`` (the utility
  travels with each block: an executor has no shared data).
* :class:`ThreadBackend`, :class:`ProcessBackend`, :class:`InlineBackend`:
  dask's ``threads``, ``processes`` and ``sync`` schedulers (a pool of
  ``num_workers`` threads or processes kept for the run, or the calling thread).
* :class:`WaveBackend`: any other dask scheduler (a custom ``get``): waves of
  ``num_workers`` blocks through ``dask.compute``.
"""

from __future__ import annotations

import os
import time
import uuid
from abc import ABC, abstractmethod
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import Any

import dask
import dask.local
import dask.multiprocessing
import dask.threaded
import numpy as np

from .. import config
from ..errors import InvalidParameterError, NoWorkersError
from ..keys import fingerprint
from ..typing import UtilityLike
from ._estimators import Estimator, run_block
from ._graph import utility_node
from ._samplers import child_seed
from ._stats import PointStats
from ._warmup import warm_workers

__all__ = ["Backend", "BlockSpec", "choose_backend"]


class BlockSpec:
    """Everything a block needs besides its index and active players (shared by all blocks of a run)."""

    def __init__(self, utility: UtilityLike, estimator: Estimator, seed: np.random.SeedSequence, per_block: int,
                 prefix: str) -> None:
        self.utility = utility
        self.estimator = estimator
        self.seed = seed
        self.per_block = per_block
        self.prefix = prefix

    def key(self, block: int, active: np.ndarray | None) -> str:
        suffix = "all" if active is None else fingerprint(active)[:10]
        return f"{self.prefix}-{block}-{suffix}"

    def run(self, block: int, active: np.ndarray | None, utility: UtilityLike | None = None) -> PointStats:
        return run_block(self.utility if utility is None else utility, self.estimator,
                         child_seed(self.seed, block), self.per_block, active)


class Backend(ABC):
    """Runs blocks; ``window`` of them may be in flight at once."""

    name = ""

    def __init__(self, spec: BlockSpec) -> None:
        self.spec = spec

    @property
    @abstractmethod
    def window(self) -> int:
        """How many blocks the loop should keep in flight now."""

    @abstractmethod
    def submit(self, block: int, active: np.ndarray | None) -> None:
        """Start block ``block`` on players ``active`` (None: all)."""

    @abstractmethod
    def next_done(self) -> tuple[int, PointStats]:
        """Wait for any submitted block to finish; return its index and statistics."""

    def close(self) -> None:  # noqa: B027 - most backends hold nothing
        """Cancel what is still running and release resources."""

    def describe(self) -> str:
        return self.name


def _configured_window(window: int | None) -> int | None:
    value = config.get(config.MC_WINDOW, override_with=window)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidParameterError(
            f"The 'window' parameter of run_until_converged must be a positive integer (blocks in flight) "
            f"or None (sized to the cluster). Got {value!r}."
        )
    return int(value)


def _produce(utility: UtilityLike) -> UtilityLike:
    """The task that brings the utility onto a worker (recomputed by the scheduler if lost)."""
    return utility


class DistributedBackend(Backend):
    """Blocks on a ``distributed.Client`` with ``as_completed``; the window follows the cluster's threads."""

    name = "distributed"

    def __init__(self, spec: BlockSpec, client: Any, window: int | None = None) -> None:
        super().__init__(spec)
        self.client = client
        self.fixed_window = _configured_window(window)
        self.per_thread = float(config.get(config.MC_WINDOW_PER_THREAD))
        self.no_workers_timeout = float(config.get(config.MC_NO_WORKERS_TIMEOUT))
        # A task producing the utility, not scattered data: the scheduler keeps its recipe and
        # recomputes it when every worker holding the result has died.
        # One key per run: cancelling it at the end never touches another run's utility.
        self.run_id = uuid.uuid4().hex[:8]
        key = f"utility-{spec.utility.token}-{self.run_id}"
        warm_workers(client, spec.utility)  # imports on every worker while the first blocks are submitted
        self.utility = client.submit(_produce, spec.utility, key=key, pure=False)
        self.futures: dict[Any, int] = {}
        self._active: dict[int, np.ndarray | None] = {}  # the players of each block in flight
        self._attempts: dict[int, int] = {}  # resubmissions of a block cancelled by the scheduler
        from distributed import as_completed

        self.as_completed = as_completed(loop=client.loop)  # a new block is .add-ed as each one finishes
        self._threads = 0
        self._checked = 0.0
        self._idle_since: float | None = None
        self._refresh(force=True)

    def _refresh(self, force: bool = False) -> None:
        """Re-read the cluster's threads (at most every half second)."""
        t = time.monotonic()
        if not force and t - self._checked < 0.5:
            return
        self._checked = t
        self._threads = sum(self.client.nthreads().values())
        if self._threads:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = t

    @property
    def window(self) -> int:
        if self.fixed_window is not None:
            return self.fixed_window
        self._refresh()
        return max(1, round(self.per_thread * self._threads))

    def submit(self, block: int, active: np.ndarray | None) -> None:
        spec = self.spec
        attempt = self._attempts.get(block, 0)
        future = self.client.submit(
            run_block, self.utility, spec.estimator, child_seed(spec.seed, block), spec.per_block, active,
            # The run's id in every key: a run that repeats an earlier one (same seed, a resume)
            # would otherwise reuse keys the scheduler may still be forgetting, and its futures
            # were cancelled ("cancelled for reason: unknown"). Values never depend on keys;
            # a resubmitted block gets a key of its own for the same reason.
            key=f"{spec.key(block, active)}-{self.run_id}" + (f"-r{attempt}" if attempt else ""), pure=False,
        )
        self.futures[future] = block
        self._active[block] = active
        self.as_completed.add(future)

    def _check_workers(self) -> None:
        self._refresh()
        if self._idle_since is not None and time.monotonic() - self._idle_since > self.no_workers_timeout:
            raise NoWorkersError(
                f"The cluster at {self.client.scheduler.address} has had no workers for more than "
                f"{self.no_workers_timeout:g} s (dvl_dask.valuation.montecarlo.no-workers-timeout)."
            )

    def next_done(self) -> tuple[int, PointStats]:
        while True:
            while not self.as_completed.has_ready():
                self._check_workers()
                time.sleep(0.02)
            future = next(self.as_completed)
            block = self.futures.pop(future)
            stats = self._fetch(future)
            if stats is not None:
                self._active.pop(block, None)
                return block, stats
            self._resubmit(block)

    def _resubmit(self, block: int) -> None:
        """Run a block again whose future the scheduler cancelled (its statistics depend only on its seed)."""
        attempt = self._attempts.get(block, 0) + 1
        if attempt > self._MAX_RESUBMITS:
            raise NoWorkersError(
                f"Block {block} was cancelled by the scheduler at {self.client.scheduler.address} "
                f"{attempt} times (workers lost while it ran or held its result)."
            )
        self._attempts[block] = attempt
        self.submit(block, self._active[block])

    _MAX_RESUBMITS = 3

    def _fetch(self, future: Any) -> PointStats | None:
        """The block's statistics (None if the scheduler cancelled it), never waiting without bound.

        A block can finish (and be handed out by ``as_completed``) and then lose its only
        copy when every worker dies before the result is fetched: the scheduler would
        recompute it once a worker joins, and a bare ``result()`` waits for that without
        bound. Fetching in short slices keeps the no-workers deadline in force. A block
        cancelled by the scheduler (every worker holding its inputs lost) is run again.
        """
        while True:
            if future.status == "cancelled":
                return None
            try:
                return future.result(timeout=self._FETCH_SLICE)
            except TimeoutError:
                if future.status == "error":
                    raise  # the task's own TimeoutError, not ours
            except Exception:
                # A future cancelled while we wait: distributed's ``sync`` only catches
                # ``Exception``, so the ``CancelledError`` surfaces as an UnboundLocalError.
                if future.status == "cancelled":
                    return None
                raise
            self._check_workers()

    _FETCH_SLICE = 0.5  # seconds per attempt to fetch a finished block's result

    def close(self) -> None:
        pending = list(self.futures)
        self.futures.clear()
        self.as_completed.clear()
        try:
            if pending:
                self.client.cancel(pending)
            self.client.cancel([self.utility])
        except Exception:  # closing must not hide the run's own error
            pass

    def describe(self) -> str:
        return f"distributed ({self._threads} threads)"


class ExecutorBackend(Backend):
    """Blocks on a ``concurrent.futures.Executor``."""

    name = "executor"

    def __init__(self, spec: BlockSpec, executor: Executor, window: int | None = None) -> None:
        if not isinstance(executor, Executor) and not hasattr(executor, "submit"):
            raise InvalidParameterError(
                f"The 'executor' parameter must be a concurrent.futures.Executor. Got {type(executor).__name__}."
            )
        super().__init__(spec)
        self.executor = executor
        workers = getattr(executor, "_max_workers", None) or os.cpu_count() or 1
        self._window = _configured_window(window) or int(workers)
        self.futures: dict[Future[PointStats], int] = {}

    @property
    def window(self) -> int:
        return self._window

    def submit(self, block: int, active: np.ndarray | None) -> None:
        spec = self.spec
        future = self.executor.submit(run_block, spec.utility, spec.estimator, child_seed(spec.seed, block),
                                      spec.per_block, active)
        self.futures[future] = block

    def next_done(self) -> tuple[int, PointStats]:
        done, _ = futures_wait(list(self.futures), return_when=FIRST_COMPLETED)
        future = min(done, key=self.futures.__getitem__)  # deterministic pick among finished ones
        block = self.futures.pop(future)
        return block, future.result()

    def close(self) -> None:
        for future in self.futures:
            future.cancel()
        self.futures.clear()


class ThreadBackend(ExecutorBackend):
    """dask's ``threads`` scheduler: a pool of ``num_workers`` threads owned by the run."""

    name = "threads"

    def __init__(self, spec: BlockSpec, num_workers: int, window: int | None = None) -> None:
        self.pool = ThreadPoolExecutor(num_workers, thread_name_prefix="dvl-block")
        super().__init__(spec, self.pool, window)

    def close(self) -> None:
        super().close()
        self.pool.shutdown(wait=True, cancel_futures=True)


_POOL_UTILITY: Any = None


def _set_pool_utility(utility: UtilityLike) -> None:
    """Initializer of a process pool: each worker process receives the utility once."""
    global _POOL_UTILITY
    _POOL_UTILITY = utility


def _run_on_pool(estimator: Estimator, seed: np.random.SeedSequence, per_block: int,
                 active: np.ndarray | None) -> PointStats:
    return run_block(_POOL_UTILITY, estimator, seed, per_block, active)


class ProcessBackend(ExecutorBackend):
    """dask's ``processes`` scheduler: a pool of ``num_workers`` processes owned by the run, which
    receive the utility once (as dask's scheduler does, with its multiprocessing context)."""

    name = "processes"

    def __init__(self, spec: BlockSpec, num_workers: int, window: int | None = None) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context(dask.config.get("multiprocessing.context", "spawn"))
        self.pool = ProcessPoolExecutor(num_workers, mp_context=context, initializer=_set_pool_utility,
                                        initargs=(spec.utility,))
        super().__init__(spec, self.pool, window)

    def submit(self, block: int, active: np.ndarray | None) -> None:
        spec = self.spec
        self.futures[self.pool.submit(_run_on_pool, spec.estimator, child_seed(spec.seed, block),
                                      spec.per_block, active)] = block

    def close(self) -> None:
        super().close()
        self.pool.shutdown(wait=True, cancel_futures=True)


class InlineBackend(Backend):
    """dask's ``sync`` scheduler: each block runs in the calling thread when asked for."""

    name = "sync"

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__(spec)
        self.queue: list[tuple[int, np.ndarray | None]] = []

    @property
    def window(self) -> int:
        return 1

    def submit(self, block: int, active: np.ndarray | None) -> None:
        self.queue.append((block, active))

    def next_done(self) -> tuple[int, PointStats]:
        block, active = self.queue.pop(0)
        return block, self.spec.run(block, active)


class WaveBackend(Backend):
    """Any other dask scheduler: blocks are computed in waves of ``window`` with ``dask.compute``."""

    name = "dask"

    def __init__(self, spec: BlockSpec, num_workers: int, window: int | None = None) -> None:
        super().__init__(spec)
        self.node = utility_node(spec.utility)
        self._window = _configured_window(window) or num_workers
        self.queue: list[tuple[int, np.ndarray | None]] = []
        self.done: list[tuple[int, PointStats]] = []

    @property
    def window(self) -> int:
        return self._window

    def submit(self, block: int, active: np.ndarray | None) -> None:
        self.queue.append((block, active))

    def next_done(self) -> tuple[int, PointStats]:
        if not self.done:
            spec, task = self.spec, dask.delayed(run_block, pure=True)
            wave, self.queue = self.queue, []
            tasks = [task(self.node, spec.estimator, child_seed(spec.seed, b), spec.per_block, active,
                          dask_key_name=spec.key(b, active)) for b, active in wave]
            self.done = list(zip([b for b, _ in wave], dask.compute(*tasks)))
        return self.done.pop(0)


def _default_client() -> Any:
    """The distributed client dask would use now, if any (without importing distributed)."""
    import sys

    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:
        return None
    scheduler = dask.base.get_scheduler()
    return client if scheduler is not None and getattr(scheduler, "__self__", None) is client else None


def choose_backend(spec: BlockSpec, client: Any, executor: Executor | None, window: int | None) -> Backend:
    """The backend for the arguments given and, without any, for dask's current scheduler."""
    if client is not None:
        if not (hasattr(client, "submit") and hasattr(client, "nthreads")):
            raise InvalidParameterError(
                f"The 'client' parameter must be a distributed.Client. Got {type(client).__name__}. "
                "To use another executor, pass it as 'executor'."
            )
        return DistributedBackend(spec, client, window)
    if executor is not None:
        return ExecutorBackend(spec, executor, window)
    default = _default_client()
    if default is not None:
        return DistributedBackend(spec, default, window)
    scheduler = dask.base.get_scheduler()
    num_workers = int(dask.config.get("num_workers", None) or os.cpu_count() or 1)
    if scheduler is None or scheduler is dask.threaded.get:
        return ThreadBackend(spec, num_workers, window)
    if scheduler is dask.local.get_sync:
        return InlineBackend(spec)
    if scheduler is dask.multiprocessing.get:
        return ProcessBackend(spec, num_workers, window)
    return WaveBackend(spec, num_workers, window)
