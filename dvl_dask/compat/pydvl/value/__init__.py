"""The older ``pydvl.value`` functions (pyDVL <= 0.9) on dvl_dask: ``compute_shapley_values`` and friends.

They take a :class:`dvl_dask.Utility` (e.g. from
:func:`dvl_dask.compat.pydvl.utils.Utility`) and return the
:class:`~dvl_dask.compat.pydvl.valuation.ValuationResult` of the matching
dvl_dask method. ``n_jobs`` and ``config=ParallelConfig(...)`` choose dask's
threads scheduler with that many workers (when no ``distributed.Client`` is
the default); ``done`` is one of the stopping criteria exported here.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator
from enum import Enum
from typing import Any

import xarray as xr

from .... import valuation as native
from ....errors import InvalidParameterError
from ..utils import ParallelConfig
from ..valuation import (
    AbsoluteStandardError,
    FixedTruncation,
    HistoryDeviation,
    MaxChecks,
    MaxTime,
    MaxUpdates,
    MinUpdates,
    NoTruncation,
    RankCorrelation,
    RelativeTruncation,
    Status,
    StoppingCriterion,
    ValuationResult,
)
from ..valuation._methods import _default_client
from ..valuation._result import as_result
from ..valuation._samplers import native_truncation
from ..valuation._unsupported import not_supported

__all__ = [
    "AbsoluteStandardError",
    "FixedTruncation",
    "HistoryDeviation",
    "MaxChecks",
    "MaxTime",
    "MaxUpdates",
    "MinUpdates",
    "NoTruncation",
    "RankCorrelation",
    "RelativeTruncation",
    "ShapleyMode",
    "Status",
    "StoppingCriterion",
    "ValuationResult",
    "compute_banzhaf_semivalues",
    "compute_beta_shapley_semivalues",
    "compute_least_core_values",
    "compute_loo",
    "compute_msr_banzhaf_semivalues",
    "compute_shapley_values",
]


class ShapleyMode(str, Enum):  # noqa: UP042 - pyDVL's enum compares equal to its strings
    """pyDVL's ``ShapleyMode``: which Shapley method ``compute_shapley_values`` runs."""

    ApproShapley = "appro_shapley"
    CombinatorialExact = "combinatorial_exact"
    CombinatorialMontecarlo = "combinatorial_montecarlo"
    GroupTesting = "group_testing"
    KNN = "knn"
    Owen = "owen"
    OwenAntithetic = "owen_antithetic"
    PermutationExact = "permutation_exact"
    PermutationMontecarlo = "permutation_montecarlo"
    TruncatedMontecarlo = "truncated_montecarlo"


@contextlib.contextmanager
def _scheduler(n_jobs: int | None, config: ParallelConfig | None, owner: str) -> Iterator[None]:
    """dask's threads scheduler with ``n_jobs`` workers, unless a Client or an explicit scheduler is in use."""
    import dask

    _check_parallel(n_jobs, config, owner)
    config = config if config is not None else ParallelConfig()
    settings = config.dask_settings(n_jobs)
    if not settings or _default_client() is not None or dask.config.get("scheduler", None) is not None:
        yield
        return
    with dask.config.set(settings):
        yield


def _check_parallel(n_jobs: Any, config: Any, owner: str) -> None:
    """pyDVL's ``n_jobs`` (a positive int, -1 for all cores, or None) and ``config`` (a ParallelConfig or None)."""
    if n_jobs is not None and (
        isinstance(n_jobs, bool) or not isinstance(n_jobs, numbers.Integral) or (n_jobs < 1 and n_jobs != -1)
    ):
        raise InvalidParameterError(
            f"The 'n_jobs' argument of {owner} must be a positive int, -1 (all cores) or None. Got {n_jobs!r:.60}."
        )
    if config is not None and not isinstance(config, ParallelConfig):
        raise InvalidParameterError(
            f"The 'config' argument of {owner} must be None or a ParallelConfig. Got {type(config).__name__}."
        )


def _shapley_mode(mode: Any, owner: str) -> ShapleyMode:
    try:
        return ShapleyMode(mode)
    except (TypeError, ValueError):
        choices = ", ".join(repr(m.value) for m in ShapleyMode)
        raise InvalidParameterError(
            f"The 'mode' argument of {owner} must be a ShapleyMode or one of {choices}. Got {mode!r:.60}."
        ) from None


def _check_utility(u: Any, owner: str) -> Any:
    if not hasattr(u, "data") or not hasattr(u, "n_players"):
        raise InvalidParameterError(
            f"The 'u' argument of {owner} must be a dvl_dask Utility (e.g. dvl_dask.compat.pydvl.utils.Utility"
            f"(model, data, scorer)). Got {type(u).__name__}."
        )
    return u


def _done(done: Any, u: Any, owner: str) -> Any:
    if not isinstance(done, StoppingCriterion):
        raise InvalidParameterError(
            f"The 'done' argument of {owner} must be a stopping criterion of dvl_dask.compat.pydvl.value "
            f"(e.g. MaxUpdates(100)). Got {type(done).__name__}."
        )
    return done.native(u.n_players)


def _result(ds: xr.Dataset, u: Any) -> ValuationResult:
    return as_result(ds, u.data.data_names)


def compute_shapley_values(
    u: Any,
    *,
    done: StoppingCriterion | None = None,
    mode: ShapleyMode | str = ShapleyMode.TruncatedMontecarlo,
    n_jobs: int = 1,
    seed: Any = None,
    config: ParallelConfig | None = None,
    progress: bool = False,
    **kwargs: Any,
) -> ValuationResult:
    """pyDVL's ``compute_shapley_values(u, done=..., mode=...)`` with dvl_dask's methods.

    Modes: ``combinatorial_exact`` and ``permutation_exact`` run
    :func:`~dvl_dask.valuation.exact_shapley`; ``permutation_montecarlo`` and
    ``truncated_montecarlo`` (``truncation=`` as in pyDVL)
    :func:`~dvl_dask.valuation.permutation_shapley` until ``done``;
    ``combinatorial_montecarlo`` :func:`~dvl_dask.valuation.semivalue` with the
    Shapley coefficient until ``done``; ``owen`` / ``owen_antithetic``
    :func:`~dvl_dask.valuation.owen_shapley` (``n_samples=``, ``max_q=``);
    ``group_testing`` :func:`~dvl_dask.valuation.group_testing_shapley`
    (``n_samples=``); ``knn`` :func:`~dvl_dask.valuation.knn_shapley`.
    """
    owner = "compute_shapley_values"
    u = _check_utility(u, owner)
    mode = _shapley_mode(mode, owner)
    done = done if done is not None else MaxUpdates(100)
    with _scheduler(n_jobs, config, owner):
        if mode in (ShapleyMode.CombinatorialExact, ShapleyMode.PermutationExact):
            ds = native.exact_shapley(u).compute()
        elif mode in (ShapleyMode.PermutationMontecarlo, ShapleyMode.TruncatedMontecarlo):
            truncation = native_truncation(kwargs.pop("truncation", None), owner)
            ds = native.run_until_converged(
                native.permutation_shapley, u, stop=_done(done, u, owner), seed=seed, progress=progress,
                truncation=truncation,
            )
        elif mode == ShapleyMode.CombinatorialMontecarlo:
            ds = native.run_until_converged(
                native.semivalue, u, stop=_done(done, u, owner), seed=seed, progress=progress,
                coefficient=native.shapley_coefficient,
            )
        elif mode in (ShapleyMode.Owen, ShapleyMode.OwenAntithetic):
            ds = native.owen_shapley(
                u, n_samples=kwargs["n_samples"], n_q=kwargs.get("max_q"),
                antithetic=mode == ShapleyMode.OwenAntithetic, seed=seed,
            ).compute()
        elif mode == ShapleyMode.GroupTesting:
            ds = native.group_testing_shapley(u, kwargs["n_samples"], seed=seed).compute()
        elif mode == ShapleyMode.KNN:
            ds = native.knn_shapley(u.data, u.model).compute()
        else:
            raise not_supported("this compute_shapley_values mode")
    return _result(ds, u)


def compute_loo(u: Any, *, n_jobs: int = 1, config: ParallelConfig | None = None, progress: bool = False,
                **kwargs: Any) -> ValuationResult:
    """pyDVL's ``compute_loo(u)``: :func:`~dvl_dask.valuation.loo`."""
    owner = "compute_loo"
    u = _check_utility(u, owner)
    with _scheduler(n_jobs, config, owner):
        return _result(native.loo(u).compute(), u)


def _semivalues(method: Any, u: Any, done: StoppingCriterion, n_jobs: int, config: ParallelConfig | None,
                seed: Any, owner: str, **options: Any) -> ValuationResult:
    u = _check_utility(u, owner)
    with _scheduler(n_jobs, config, owner):
        ds = native.run_until_converged(method, u, stop=_done(done, u, owner), seed=seed, progress=False, **options)
    return _result(ds, u)


def compute_banzhaf_semivalues(
    u: Any, *, done: StoppingCriterion, n_jobs: int = 1, config: ParallelConfig | None = None, seed: Any = None,
    **kwargs: Any,
) -> ValuationResult:
    """pyDVL's ``compute_banzhaf_semivalues``: :func:`~dvl_dask.valuation.banzhaf` until ``done``."""
    return _semivalues(native.banzhaf, u, done, n_jobs, config, seed, "compute_banzhaf_semivalues")


def compute_msr_banzhaf_semivalues(
    u: Any, *, done: StoppingCriterion, n_jobs: int = 1, config: ParallelConfig | None = None, seed: Any = None,
    **kwargs: Any,
) -> ValuationResult:
    """pyDVL's ``compute_msr_banzhaf_semivalues``: :func:`~dvl_dask.valuation.msr_banzhaf` until ``done``."""
    return _semivalues(native.msr_banzhaf, u, done, n_jobs, config, seed, "compute_msr_banzhaf_semivalues")


def compute_beta_shapley_semivalues(
    u: Any, *, alpha: float = 1, beta: float = 1, done: StoppingCriterion, n_jobs: int = 1,
    config: ParallelConfig | None = None, seed: Any = None, **kwargs: Any,
) -> ValuationResult:
    """pyDVL's ``compute_beta_shapley_semivalues``: :func:`~dvl_dask.valuation.beta_shapley` until ``done``."""
    return _semivalues(
        native.beta_shapley, u, done, n_jobs, config, seed, "compute_beta_shapley_semivalues", alpha=alpha, beta=beta
    )


def compute_least_core_values(
    u: Any, *, n_jobs: int = 1, n_iterations: int | None = None, mode: str = "montecarlo",
    non_negative_subsidy: bool = False, config: ParallelConfig | None = None, seed: Any = None, **kwargs: Any,
) -> ValuationResult:
    """pyDVL's ``compute_least_core_values``: ``mode="exact"`` or ``"montecarlo"`` (``n_iterations`` coalitions)."""
    owner = "compute_least_core_values"
    u = _check_utility(u, owner)
    if str(getattr(mode, "value", mode)) not in ("exact", "montecarlo"):
        raise InvalidParameterError(
            f"The 'mode' argument of {owner} must be 'exact' or 'montecarlo'. Got {mode!r:.60}."
        )
    with _scheduler(n_jobs, config, owner):
        if str(getattr(mode, "value", mode)) == "exact":
            ds = native.exact_least_core(u, non_negative_subsidy=non_negative_subsidy).compute()
        elif n_iterations is None:
            raise InvalidParameterError("compute_least_core_values(mode='montecarlo') needs 'n_iterations'.")
        else:
            ds = native.montecarlo_least_core(
                u, n_iterations, seed=seed, non_negative_subsidy=non_negative_subsidy
            ).compute()
    return _result(ds, u)
