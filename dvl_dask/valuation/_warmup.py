"""Warm the workers of a cluster before the first Monte Carlo block reaches them.

A fresh worker process pays, once, for the imports a block needs (dvl_dask,
the model's and the scorer's modules: scikit-learn and scipy take most of
it), and for the BLAS thread-limit controller. Without a warm-up each worker
pays this when its first block arrives; the worker whose first task also
produces the utility starts computing while the others are still importing.
``warm_workers`` asks every worker to do it now, from a daemon thread (the
request itself waits until every worker has unpickled it, i.e. imported the
model's modules: about a second on a fresh worker), so building and submitting
the graph never wait for it; a graph built ahead of ``compute`` finds the
workers warm. On a warm worker it costs an unpickle of the unfitted model
(well under a millisecond for sklearn models).

Controlled by ``dvl_dask.valuation.montecarlo.warm-workers`` (default True).
"""

from __future__ import annotations

import threading
from typing import Any

from .. import config

__all__ = ["warm_workers"]


async def _warm_worker(model: Any = None, scorer: Any = None) -> None:
    """Runs on each worker's event loop (``client.run(wait=False)`` needs a coroutine).

    The arguments were unpickled there, which imported their modules.
    """
    import_block_code()


def import_block_code() -> None:
    """Import dvl_dask's block code and build the process's BLAS thread-limit controller (~20 ms, once).

    What a worker needs before its first block besides the model's modules; shared by the
    warm-up and the worker preload :mod:`dvl_dask.preload`.
    """
    import dvl_dask.valuation._estimators  # noqa: F401 - the block functions and their imports
    from dvl_dask.threads import blas_limits

    with blas_limits():
        pass


def _warm_up_objects(utility: Any) -> tuple[Any, ...]:
    """A small stand-in for what a block unpickles: the unfitted model and the scorer, if any."""
    model = getattr(utility, "model", None)
    if model is None or not hasattr(model, "get_params"):
        return ()
    from sklearn.base import clone

    return (clone(model), getattr(utility, "scorer", None))


def warm_workers(client: Any, utility: Any) -> bool:
    """Ask every worker of ``client`` to import what blocks of ``utility`` need; do not wait.

    Returns True if the request was sent. Never raises: a failed warm-up only
    means the first blocks pay the imports themselves.
    """
    if not config.get(config.MC_WARM_WORKERS):
        return False
    try:
        objects = _warm_up_objects(utility)
    except Exception:  # an optimisation must never break a run
        return False
    # ``client.run(wait=False)`` still waits until every worker has unpickled the request, i.e.
    # imported the model's modules (about a second for scikit-learn on a fresh worker): send it
    # from a daemon thread so that building and submitting the graph does not wait for it.
    thread = threading.Thread(target=_send, args=(client, objects), name="dvl-dask-warm-workers", daemon=True)
    thread.start()
    return True


def _send(client: Any, objects: tuple[Any, ...]) -> None:
    try:
        client.run(_warm_worker, *objects, wait=False)
    except Exception:  # an optimisation must never break a run (the client may be closing)
        pass
