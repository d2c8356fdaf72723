"""Worker preload: import what valuation blocks need when a worker starts, not when its first block arrives.

A fresh Dask worker process pays, once, for the imports its first block
needs: unpickling the utility imports scikit-learn and scipy, and the block
code imports dvl_dask (about 0.7-1 s of CPU a worker on a 2-core machine,
measured in ``benchmarks/README.md``, "First run on a fresh cluster"). On a
cluster created for one valuation, that is the difference between its first
run and later runs. As a distributed *preload*, this module moves the imports
to the worker's start-up::

    from distributed import LocalCluster
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, preload=["dvl_dask.preload"])

    # or for workers started from the command line
    # dask worker tcp://scheduler:8786 --nthreads 1 --preload dvl_dask.preload

Each worker then imports dvl_dask's block code, builds its BLAS thread-limit
controller and imports the modules listed in
``dvl_dask.compute.preload-modules`` (scikit-learn's core modules by default;
add your model's package, e.g. ``xgboost``). Listed modules that are not
installed are skipped. The list is read in the worker's process: set it in a
Dask config file or the environment
(``DASK_DVL_DASK__COMPUTE__PRELOAD_MODULES='["sklearn.base", "xgboost"]'``),
not with ``dask.config.set`` in the client. Workers of a running cluster are warmed anyway when a
Monte Carlo graph is built (``dvl_dask.valuation.montecarlo.warm-workers``);
the preload only helps workers that start later or a first run that follows
the cluster's creation at once. ``dvl-dask value --scheduler local-cluster``
starts its workers with it.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import config
from .errors import InvalidParameterError

__all__ = ["dask_setup", "preload_modules"]


def preload_modules() -> list[str]:
    """Import dvl_dask's block code and the configured modules; return the names of those imported.

    A module that is missing or fails to import is skipped (the first block
    then imports it, and reports a real error if it is needed).

    Raises
    ------
    InvalidParameterError
        If ``dvl_dask.compute.preload-modules`` is not a list of module names
        (a worker started with a misconfigured preload should say so, not
        silently start cold).
    """
    from .valuation._warmup import import_block_code

    import_block_code()
    names = config.get(config.COMPUTE_PRELOAD_MODULES) or ()
    if isinstance(names, str):  # one module given as a string (e.g. from the environment)
        names = [names]
    if not isinstance(names, list | tuple) or not all(isinstance(name, str) for name in names):
        raise InvalidParameterError(
            f"The config value {config.COMPUTE_PRELOAD_MODULES!r} must be a list of module names "
            f'(e.g. ["sklearn.base", "xgboost"]). Got {names!r}.'
        )
    imported = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # a missing optional module must not stop a worker from starting
            continue
        imported.append(name)
    return imported


def dask_setup(worker: Any = None) -> None:
    """Entry point of distributed's preload mechanism (called once per worker at start-up).

    ``worker`` is what distributed passes: the worker (or nanny, or scheduler) server, which has an ``address``.
    """
    # looked up on the class: a server's ``address`` property raises until it listens
    if worker is not None and not hasattr(type(worker), "address"):
        raise InvalidParameterError(
            "The 'worker' argument of dask_setup must be the dask server distributed passes to a preload "
            f"(a Worker, Nanny or Scheduler) or None. Got {type(worker).__name__} {worker!r:.60}. To use it, "
            "start workers with --preload dvl_dask.preload."
        )
    preload_modules()
