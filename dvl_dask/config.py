"""Register dvl_dask's defaults in :mod:`dask.config`.

All options live under the ``dvl_dask`` namespace and are read at call time
with ``dask.config.get(key, override_with=argument)``, so an explicit argument
wins over ``dask.config.set`` which wins over environment variables
(``DASK_DVL_DASK__...``) which win over the packaged ``dvl_dask.yaml``.
Option names are kept as constants here so code never repeats a literal.
"""

from __future__ import annotations

import pathlib
from typing import Any

import dask.config
import yaml

__all__ = [
    "CACHE_ALLOW_REPEATED_EVALUATIONS",
    "CACHE_ATOL_STDERR",
    "CACHE_HMAC_KEY",
    "CACHE_MAX_REPETITIONS",
    "CACHE_MIN_REPETITIONS",
    "CACHE_NAMESPACE",
    "CACHE_RTOL_STDERR",
    "CACHE_TIME_THRESHOLD",
    "COMPUTE_BLAS_THREADS",
    "COMPUTE_PRELOAD_MODULES",
    "COMPUTE_TORCH_THREADS",
    "EXACT_MAX_PLAYERS",
    "EXACT_SUBSETS_PER_BLOCK",
    "INFLUENCE_GRADIENT_MEMORY_BUDGET",
    "LOO_EVALUATIONS_PER_BLOCK",
    "MC_EVALUATIONS_PER_BLOCK",
    "MODELS_DEVICE",
    "MC_BATCHED_EVALUATIONS_PER_BLOCK",
    "EXACT_BATCHED_SUBSETS_PER_BLOCK",
    "MC_ACTIVE_SET_LAG",
    "MC_CHECKPOINT_INTERVAL",
    "MC_CHECKPOINT_LEASE_TIMEOUT",
    "MC_NO_WORKERS_TIMEOUT",
    "MC_WINDOW",
    "MC_WINDOW_PER_THREAD",
    "MC_MIN_BLOCKS",
    "MC_WARM_WORKERS",
    "PROGRESS_ENABLED",
    "PROGRESS_INTERVAL",
    "RESULTS_ZARR_FORMAT",
    "UTILITY_DEFAULT_SCORE",
    "UTILITY_ON_UNUSABLE",
    "get",
]

_DEFAULTS_FILE = pathlib.Path(__file__).with_name("dvl_dask.yaml")

EXACT_MAX_PLAYERS = "dvl_dask.valuation.exact.max-players"
EXACT_SUBSETS_PER_BLOCK = "dvl_dask.valuation.exact.subsets-per-block"
LOO_EVALUATIONS_PER_BLOCK = "dvl_dask.valuation.loo.evaluations-per-block"
MC_EVALUATIONS_PER_BLOCK = "dvl_dask.valuation.montecarlo.evaluations-per-block"
MC_BATCHED_EVALUATIONS_PER_BLOCK = "dvl_dask.valuation.montecarlo.batched-evaluations-per-block"
EXACT_BATCHED_SUBSETS_PER_BLOCK = "dvl_dask.valuation.exact.batched-subsets-per-block"
MC_WINDOW = "dvl_dask.valuation.montecarlo.window"
MC_WINDOW_PER_THREAD = "dvl_dask.valuation.montecarlo.window-per-thread"
MC_MIN_BLOCKS = "dvl_dask.valuation.montecarlo.min-blocks"
MC_WARM_WORKERS = "dvl_dask.valuation.montecarlo.warm-workers"
MC_ACTIVE_SET_LAG = "dvl_dask.valuation.montecarlo.active-set-lag"
MC_NO_WORKERS_TIMEOUT = "dvl_dask.valuation.montecarlo.no-workers-timeout"
MC_CHECKPOINT_INTERVAL = "dvl_dask.valuation.montecarlo.checkpoint-interval"
MC_CHECKPOINT_LEASE_TIMEOUT = "dvl_dask.valuation.montecarlo.checkpoint-lease-timeout"
UTILITY_DEFAULT_SCORE = "dvl_dask.utility.default-score"
INFLUENCE_GRADIENT_MEMORY_BUDGET = "dvl_dask.influence.gradient-memory-budget"
PROGRESS_ENABLED = "dvl_dask.progress.enabled"
PROGRESS_INTERVAL = "dvl_dask.progress.interval"
RESULTS_ZARR_FORMAT = "dvl_dask.results.zarr-format"
COMPUTE_BLAS_THREADS = "dvl_dask.compute.blas-threads"
COMPUTE_PRELOAD_MODULES = "dvl_dask.compute.preload-modules"
COMPUTE_TORCH_THREADS = "dvl_dask.compute.torch-threads"
MODELS_DEVICE = "dvl_dask.models.device"
CACHE_NAMESPACE = "dvl_dask.cache.namespace"
CACHE_HMAC_KEY = "dvl_dask.cache.hmac-key"
CACHE_TIME_THRESHOLD = "dvl_dask.cache.time-threshold"
CACHE_ALLOW_REPEATED_EVALUATIONS = "dvl_dask.cache.allow-repeated-evaluations"
CACHE_RTOL_STDERR = "dvl_dask.cache.rtol-stderr"
CACHE_ATOL_STDERR = "dvl_dask.cache.atol-stderr"
CACHE_MIN_REPETITIONS = "dvl_dask.cache.min-repetitions"
CACHE_MAX_REPETITIONS = "dvl_dask.cache.max-repetitions"
UTILITY_ON_UNUSABLE = "dvl_dask.utility.on-unusable"


def _register_defaults() -> None:
    with _DEFAULTS_FILE.open() as f:
        defaults = yaml.safe_load(f)
    dask.config.update_defaults(defaults)


def get(key: str, override_with: Any = None) -> Any:
    """Read option ``key`` now; ``override_with`` wins when it is not None."""
    if not isinstance(key, str):
        from .errors import InvalidParameterError

        raise InvalidParameterError(
            f"The 'key' of dvl_dask.config.get must be an option name such as 'dvl_dask.cache.time-threshold'. "
            f"Got {type(key).__name__} {key!r:.40}."
        )
    return dask.config.get(key, override_with=override_with)


_register_defaults()
