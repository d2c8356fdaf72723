"""BLAS/OpenMP thread limits inside block tasks, on every scheduler.

A ``distributed.LocalCluster`` starts its workers with one BLAS thread each,
but the ``threads`` and ``processes`` schedulers do not: two worker processes
each running BLAS with as many threads as there are cores oversubscribe the
machine (measured: exact Shapley on the processes scheduler at 2.4x its ideal,
1.24x with one BLAS thread). Parallelism in valuation comes from running many
blocks at once, so every block task limits the BLAS and OpenMP pools of its
process with threadpoolctl (a scikit-learn dependency) while it runs.

The limit is ``dvl_dask.compute.blas-threads`` (default 1; ``null`` leaves the
pools alone, e.g. for one large fit per task on a machine of its own). The
controller that finds the loaded libraries is built once per process (about
20 ms) and rebuilt when modules were imported since (an import such as torch
can load another BLAS or OpenMP library the old controller does not know);
entering a limit then costs about 20 µs, negligible for blocks that run for
seconds. Tasks running side by side in one process share one limit (the
first applies it, the last restores the pools), so concurrent tasks of one
process should use the same setting.

Where it applies: tasks that run in a process's main thread, i.e. the sync and
processes schedulers and ``distributed`` workers. Process workers read the
packaged default or the environment (``DASK_DVL_DASK__COMPUTE__BLAS_THREADS``),
not a ``dask.config.set`` of the parent process. On the threads scheduler the
tasks run in pool threads, where this machine's OpenBLAS (pthreads build) does
not take the limit, and a limit set there would stop later limits of the main
thread from taking: those tasks leave the pools alone. Prefer the processes
scheduler or a ``LocalCluster`` for BLAS-heavy models.

torch has its own intra-op thread pool, which threadpoolctl does not
manage: :func:`torch_threads` sets it for an influence model's fit and
products to ``dvl_dask.compute.torch-threads`` (default ``auto``: the usable
cores divided by the tasks this process runs at once -- the threads of a
``distributed`` worker, one in a process's main thread, one per core in a
pool thread of the threads scheduler -- never more than torch's own setting;
an integer sets it; ``null`` leaves torch alone). With the OpenMP build of
torch the setting belongs to the calling thread, so each thread sets and
restores its own: ``torch.get_num_threads()`` is the same before and after.

Within that budget, independent torch computations (the chunks of a dense
curvature matrix, an eigenvalue check next to an inverse) run side by side
in Python threads with one intra-op thread each (:func:`side_by_side`)
rather than one after the other on all threads: libgomp's threads spin at
the barrier that ends every parallel kernel, so when the cores are shared
(two fits at once, other jobs) a descheduled thread makes its partners burn
their time slices. Measured on 2 loaded cores: ``eigvalsh`` of a 1,761 x
1,761 matrix took 2.3 CPU s on two intra-op threads against 0.3 s on one.
Between two processes, each with its own pool, nothing here can help:
``OMP_WAIT_POLICY=PASSIVE`` in their environment (docs/deployment.md,
"Several influence jobs on one machine") makes libgomp's threads sleep
instead; dvl_dask does not set it, as it is every OpenMP library's setting.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

from . import config
from .errors import InvalidParameterError

__all__ = [
    "blas_limits",
    "intra_op_threads",
    "limits_blas_threads",
    "manages_torch_threads",
    "side_by_side",
    "torch_thread_budget",
    "torch_threads",
    "uses_torch_threads",
]

F = TypeVar("F", bound=Callable[..., Any])

# Thread limits are process-wide (they call e.g. openblas_set_num_threads), while
# the threads scheduler runs several block tasks of one process at once: the first
# task to enter applies the limit and the last to leave restores the pools, so no
# task restores them under another's feet.
_lock = threading.Lock()
_controller: Any = None
_controller_modules = -1  # len(sys.modules) when the controller was built
_active = 0
_limiter: Any = None


@contextmanager
def _shared_limit(limit: int) -> Iterator[None]:
    global _controller, _controller_modules, _active, _limiter
    with _lock:
        if _active == 0:
            try:
                if _controller is None or _controller_modules != len(sys.modules):
                    from threadpoolctl import ThreadpoolController

                    _controller = ThreadpoolController()
                    _controller_modules = len(sys.modules)
                _limiter = _controller.limit(limits=limit)
            except Exception:  # pragma: no cover - threadpoolctl missing or a library it cannot handle
                _limiter = None
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0 and _limiter is not None:
                _limiter.restore_original_limits()
                _limiter = None


def _limits_apply_here() -> bool:
    """True in a process's main thread and in a ``distributed`` worker's task threads.

    A limit set from a pool thread of the local threads scheduler does not
    take for OpenBLAS there, and afterwards the process's main thread can no
    longer change the pools either (measured with this machine's OpenBLAS:
    a later limit in the main thread reads back the old thread count). So
    tasks of the threads scheduler leave the pools alone.
    """
    if threading.current_thread() is threading.main_thread():
        return True
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


def blas_limits() -> AbstractContextManager[Any]:
    """A context that limits the BLAS/OpenMP pools to ``dvl_dask.compute.blas-threads`` (or does nothing).

    It does nothing in threads of the local threads scheduler (see :func:`_limits_apply_here`).
    """
    limit = config.get(config.COMPUTE_BLAS_THREADS)
    if limit is None or not _limits_apply_here():
        return nullcontext()
    return _shared_limit(int(limit))


def limits_blas_threads(fn: F) -> F:
    """Decorator for block-task functions: run ``fn`` inside :func:`blas_limits`."""
    _check_decorated(fn, "limits_blas_threads")

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with blas_limits():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _check_decorated(fn: Any, owner: str) -> None:
    if not callable(fn):
        raise InvalidParameterError(
            f"The 'fn' argument of {owner} must be a function (it is a decorator: @{owner}). Got "
            f"{type(fn).__name__} {fn!r:.60}."
        )


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _tasks_at_once() -> int:
    """Tasks this process runs side by side, as seen from the calling thread.

    A ``distributed`` worker runs as many as it has threads; a process's main
    thread runs one; any other thread is taken for a pool thread of the
    threads scheduler, which runs one task per core.
    """
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        worker = None
    if worker is not None:
        nthreads = getattr(getattr(worker, "state", None), "nthreads", None) or getattr(worker, "nthreads", 1)
        return max(1, int(nthreads))
    if threading.current_thread() is threading.main_thread():
        return 1
    return _usable_cores()


def torch_thread_budget() -> int | None:
    """torch intra-op threads for a computation here (``dvl_dask.compute.torch-threads``), or None.

    ``auto`` is the usable cores divided by :func:`_tasks_at_once`, at least
    one and at most ``torch.get_num_threads()`` of the calling thread (a
    user's or a ``distributed`` nanny's ``OMP_NUM_THREADS=1`` is kept).

    Raises
    ------
    InvalidParameterError
        If the option is neither ``auto``, a positive integer nor null.
    """
    setting = config.get(config.COMPUTE_TORCH_THREADS)
    if setting is None:
        return None
    if isinstance(setting, str) and setting.strip().lower() == "auto":
        import torch

        return max(1, min(torch.get_num_threads(), _usable_cores() // _tasks_at_once()))
    if isinstance(setting, str) and setting.strip().isdigit():
        setting = int(setting)  # from the environment
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise InvalidParameterError(
            f"The option {config.COMPUTE_TORCH_THREADS!r} must be 'auto', a positive integer or null. "
            f"Got {setting!r}. To fix, set it with dask.config.set({{{config.COMPUTE_TORCH_THREADS!r}: 'auto'}})."
        )
    return setting


_torch_state = threading.local()


@contextmanager
def torch_threads() -> Iterator[None]:
    """Run the body with :func:`torch_thread_budget` torch intra-op threads, then restore the caller's.

    Nested uses in one thread keep the outermost setting.
    """
    depth = getattr(_torch_state, "depth", 0)
    budget = torch_thread_budget() if depth == 0 else None
    previous = None
    if budget is not None:
        import torch

        previous = torch.get_num_threads()
        if previous != budget:
            torch.set_num_threads(budget)
        else:
            previous = None
    _torch_state.depth = depth + 1
    try:
        yield
    finally:
        _torch_state.depth = depth
        if previous is not None:
            import torch

            torch.set_num_threads(previous)


def manages_torch_threads() -> bool:
    """False when ``dvl_dask.compute.torch-threads`` is null: torch's threads are then left alone."""
    return config.get(config.COMPUTE_TORCH_THREADS) is not None


def intra_op_threads(n: int) -> AbstractContextManager[None]:
    """A context running its body with ``n`` torch intra-op threads in the calling thread, then restoring them.

    For the small dense algebra of a method (a Krylov basis, Ritz values) that
    runs between large products: on one thread it has no barriers to spin at
    when the cores are shared (see the module docstring). Does nothing when
    :func:`manages_torch_threads` is False.

    Raises
    ------
    InvalidParameterError
        If ``n`` is not a positive integer.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidParameterError(f"The 'n' argument of intra_op_threads must be a positive integer. Got {n!r}.")
    return _intra_op_threads(n)


@contextmanager
def _intra_op_threads(n: int) -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    if not manages_torch_threads():
        n = previous
    if previous != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if previous != n:
            torch.set_num_threads(previous)


def uses_torch_threads(fn: F) -> F:
    """Decorator: run ``fn`` inside :func:`torch_threads`."""
    if not callable(fn):
        raise InvalidParameterError(
            f"The 'fn' argument of uses_torch_threads must be a function to decorate. Got {type(fn).__name__}."
        )

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch_threads():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def side_by_side(*fns: Callable[[], Any], threads: int | None = None) -> list[Any]:
    """Run independent torch computations at once, one intra-op thread each; return their results in order.

    Up to ``threads`` run at once (default: ``torch.get_num_threads()`` of
    the calling thread, its budget, see :func:`torch_threads`), each in a
    worker thread limited to one torch intra-op thread; with a budget of one,
    or a single function, they run one after the other in the calling thread
    as they are. The caller's ``torch.get_num_threads()`` is the same
    afterwards. The first exception raised by a function is re-raised.

    Parameters
    ----------
    *fns : callable
        Functions without arguments that share no mutable state.
    threads : int, optional
        The budget, for a caller that computes on fewer intra-op threads
        than it may use (e.g. on one, between the calls).

    Returns
    -------
    list
        ``[fn() for fn in fns]``.
    """
    for i, fn in enumerate(fns):
        if not callable(fn):
            raise InvalidParameterError(
                f"The 'fns' arguments of side_by_side must be functions without arguments. Argument {i} is a "
                f"{type(fn).__name__}."
            )
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InvalidParameterError(
            f"The 'threads' parameter of side_by_side must be a positive integer or None. Got {threads!r}."
        )
    import torch

    caller = torch.get_num_threads()
    workers = min(caller if threads is None else threads, len(fns))
    if workers <= 1:
        return [fn() for fn in fns]

    def single_threaded(fn: Callable[[], Any]) -> Any:
        torch.set_num_threads(1)
        return fn()

    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="dvl_dask-torch") as pool:
            futures = [pool.submit(single_threaded, fn) for fn in fns]
            return [f.result() for f in futures]
    finally:
        torch.set_num_threads(caller)  # also torch's default for threads started later
