"""pyDVL 0.10's valuation classes: ``Valuation(...).fit(data)`` runs the matching dvl_dask method.

Each ``fit`` builds the dvl_dask utility of the training data and the
scorer's test data, picks the dvl_dask method and computes it:

- Monte Carlo methods with a stopping criterion run in
  :func:`dvl_dask.valuation.run_until_converged` (blocks on the active
  scheduler or the default ``distributed.Client``), seeded with the sampler's
  (or the valuation's) ``seed``;
- exact and fixed-budget methods build their lazy graph and compute it once.

Where no ``distributed.Client`` is the default and no dask scheduler was set
explicitly, ``joblib.parallel_config(n_jobs=k)`` (how pyDVL users ask for
parallelism) becomes dask's threads scheduler with ``k`` workers for the call
(``n_jobs=1``: the synchronous scheduler); global configuration is unchanged afterwards.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import xarray as xr

from .... import valuation as native
from ....data import Dataset as NativeDataset
from ....errors import InvalidParameterError, NotFittedError
from ....utility import Scorer, Utility, squashed_neg_mse
from ....validation import as_seed_sequence, check_bool, check_model, check_positive_int, check_real
from ._dataset import Dataset, native_dataset
from ._result import ValuationResult, as_result
from ._samplers import IndexSampler, LOOSampler, OwenSampler, native_truncation
from ._stopping import NoStopping, StoppingCriterion
from ._unsupported import not_supported
from ._utility import ClasswiseModelUtility, DataUtilityLearning, ModelUtility

__all__ = [
    "BanzhafValuation",
    "BetaShapleyValuation",
    "ClasswiseSampler",
    "ClasswiseShapleyValuation",
    "DataOOBValuation",
    "DeltaShapleyValuation",
    "ExactLeastCoreValuation",
    "GroupTestingShapleyValuation",
    "KNNShapleyValuation",
    "LOOValuation",
    "LeastCoreValuation",
    "MSRBanzhafValuation",
    "MonteCarloLeastCoreValuation",
    "ShapleyValuation",
    "StratifiedShapleyValuation",
    "TMCShapleyValuation",
    "Valuation",
    "joblib_scheduler",
]


# -- scheduler ----------------------------------------------------------------------------------
def _default_client() -> Any:
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        return distributed.default_client()
    except ValueError:
        return None


@contextlib.contextmanager
def joblib_scheduler() -> Iterator[None]:
    """Translate an active ``joblib.parallel_config(n_jobs=k)`` to dask's threads scheduler for the block.

    Nothing changes when a ``distributed.Client`` is the default, when a dask
    scheduler was set explicitly (``dask.config.set(scheduler=...)``), or when
    joblib has no ``n_jobs`` set: dask's own choice stands.
    """
    import dask

    n_jobs = None
    joblib = sys.modules.get("joblib")
    if joblib is not None:
        _, n_jobs = joblib.parallel.get_active_backend()
    if n_jobs is None or _default_client() is not None or dask.config.get("scheduler", None) is not None:
        yield
        return
    if n_jobs == 1:
        settings: dict[str, Any] = {"scheduler": "sync"}
    else:
        settings = {"scheduler": "threads"}
        if n_jobs > 1:
            settings["num_workers"] = int(n_jobs)
    with dask.config.set(settings):
        yield


# -- base ---------------------------------------------------------------------------------------
def _native_utility(utility: Any, data: Dataset, owner: str) -> Any:
    if isinstance(utility, (ModelUtility, DataUtilityLearning)):
        return utility.with_dataset(data).native(owner=owner)
    raise InvalidParameterError(
        f"The 'utility' argument of {owner} must be a ModelUtility or DataUtilityLearning of "
        f"dvl_dask.compat.pydvl.valuation. Got {type(utility).__name__}."
    )


def _check_utility(utility: Any, owner: str, kinds: tuple[type, ...] = (ModelUtility, DataUtilityLearning)) -> Any:
    """``utility`` if it is one of ``kinds`` (checked where the user typed it, not at ``fit``)."""
    if not isinstance(utility, kinds):
        raise InvalidParameterError(
            f"The 'utility' argument of {owner} must be a {' or '.join(k.__name__ for k in kinds)} of "
            f"dvl_dask.compat.pydvl.valuation. Got {type(utility).__name__}."
        )
    return utility


def _check_sampler(sampler: Any, name: str, owner: str) -> IndexSampler:
    if not isinstance(sampler, IndexSampler):
        raise InvalidParameterError(
            f"The '{name}' argument of {owner} must be a sampler of dvl_dask.compat.pydvl.valuation "
            f"(e.g. PermutationSampler(seed=16)). Got {type(sampler).__name__}."
        )
    return sampler


def _check_seed(seed: Any, owner: str) -> Any:
    if seed is not None:
        as_seed_sequence(seed, "seed", owner)
    return seed


def _check_stop(is_done: Any, owner: str) -> StoppingCriterion:
    if not isinstance(is_done, StoppingCriterion):
        raise InvalidParameterError(
            f"The 'is_done' argument of {owner} must be a stopping criterion of dvl_dask.compat.pydvl.valuation "
            f"(e.g. MaxUpdates(100) | MaxTime(60)). Got {type(is_done).__name__}."
        )
    return is_done


class Valuation:
    """Base of the valuations: ``fit(data)`` computes; ``result`` / ``values()`` return the :class:`ValuationResult`."""

    def __init__(self) -> None:
        self._result: ValuationResult | None = None

    def fit(self, data: Dataset, continue_from: Any = None) -> Valuation:
        """Compute the values of the players of ``data`` (a compat :class:`Dataset`); returns ``self``."""
        if continue_from is not None:
            raise not_supported("fit(continue_from=...)")
        if not isinstance(data, Dataset):
            raise InvalidParameterError(
                f"The 'data' argument of {type(self).__name__}.fit must be a dvl_dask.compat.pydvl Dataset "
                f"(e.g. from Dataset.from_arrays). Got {type(data).__name__}."
            )
        with joblib_scheduler():
            ds = self._compute(data)
        self._result = as_result(ds, data.names)
        return self

    def _compute(self, data: Dataset) -> xr.Dataset:
        raise NotImplementedError  # pragma: no cover - every valuation overrides it

    @property
    def result(self) -> ValuationResult:
        """The result of the last :meth:`fit`."""
        if self._result is None:
            raise NotFittedError(f"{type(self).__name__} has no result yet: call fit(data) first.")
        return self._result

    def values(self, sort: bool = False) -> ValuationResult:
        """The result of the last :meth:`fit` (sorted by value, ascending, with ``sort=True``)."""
        result = ValuationResult(self.result.to_dataset())
        return result.sort() if sort else result  # type: ignore[return-value]

    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has run."""
        return self._result is not None


class _SemivalueValuation(Valuation):
    """A semivalue estimated with ``sampler`` until ``is_done``; subclasses say which method to run."""

    def __init__(
        self, utility: Any, sampler: IndexSampler, is_done: StoppingCriterion, skip_converged: bool = False,
        show_warnings: bool = True, progress: bool = False,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        _check_utility(utility, owner)
        _check_sampler(sampler, "sampler", owner)
        if skip_converged:
            raise not_supported("skip_converged=True")
        self.utility, self.sampler, self.is_done = utility, sampler, _check_stop(is_done, owner)
        self.show_warnings, self.progress = show_warnings, progress

    def _method(self) -> tuple[Callable[..., xr.Dataset], dict[str, Any]]:
        """The dvl_dask method and its options for ``self.sampler``."""
        raise NotImplementedError  # pragma: no cover

    def _exact(self, utility: Any) -> xr.Dataset:
        raise not_supported("exact Banzhaf values (a deterministic sampler)")

    def _compute(self, data: Dataset) -> xr.Dataset:
        utility = _native_utility(self.utility, data, type(self).__name__)
        if self.sampler.kind == "loo":
            raise not_supported("this sampler with this valuation")
        if self.sampler.deterministic:
            truncation = getattr(self.sampler, "truncation", None)
            if truncation is not None and type(truncation).__name__ != "NoTruncation":
                raise InvalidParameterError(
                    f"{type(self).__name__} with a deterministic sampler computes exact values: truncation "
                    f"{truncation!r} would change them. Pass truncation=None (or NoTruncation())."
                )
            return self._exact(utility)
        method, options = self._method()
        samples_per_index = getattr(self.sampler, "samples_per_index", None)
        cap = samples_per_index(len(data)) if samples_per_index is not None else None
        if isinstance(self.is_done, NoStopping):
            if cap is None:
                raise not_supported("NoStopping with a random sampler")
            # A finite sampler run to exhaustion: a fixed budget of ``cap`` samples per player.
            return method(utility, n_samples=cap, seed=self.sampler.seed, **options).compute()
        stop = self.is_done.native(len(data))
        if cap is not None:
            stop = stop | native.MaxUpdates(cap)  # the sampler is exhausted after cap samples per player
        return native.run_until_converged(
            method, utility, stop=stop, seed=self.sampler.seed, progress=self.progress, **options,
        )

    def _subset_sampler(self) -> Any:
        """dvl_dask's subset sampler for the powerset samplers (uniform, antithetic, Owen, stratified)."""
        kind = self.sampler.kind
        if kind in ("uniform", "antithetic"):
            return kind
        if kind == "stratified":
            return self.sampler.native()  # type: ignore[attr-defined]
        if isinstance(self.sampler, OwenSampler):
            return native.OwenSampler(n_q=self.sampler.n_q, antithetic=self.sampler.antithetic)
        raise not_supported("this sampler with this valuation")


class ShapleyValuation(_SemivalueValuation):
    """Shapley values with any of pyDVL's samplers.

    Permutation samplers run :func:`~dvl_dask.valuation.permutation_shapley`
    (with the sampler's truncation; ``StratifiedPermutationSampler`` with
    ``sampler="stratified"``), Owen samplers :func:`~dvl_dask.valuation.owen_shapley`,
    the other powerset samplers :func:`~dvl_dask.valuation.semivalue` with the
    Shapley coefficient, and the deterministic samplers
    :func:`~dvl_dask.valuation.exact_shapley` (each coalition fitted once).
    """

    def _exact(self, utility: Any) -> xr.Dataset:
        return native.exact_shapley(utility).compute()

    def _method(self) -> tuple[Callable[..., xr.Dataset], dict[str, Any]]:
        kind = self.sampler.kind
        if kind in ("permutation", "antithetic_permutation", "stratified_permutation"):
            truncation = native_truncation(getattr(self.sampler, "truncation", None), type(self).__name__)
            if kind == "stratified_permutation":
                return native.permutation_shapley, {"truncation": truncation, "sampler": "stratified"}
            return native.permutation_shapley, {
                "truncation": truncation, "antithetic": kind == "antithetic_permutation",
            }
        if isinstance(self.sampler, OwenSampler):
            return native.owen_shapley, {"n_q": self.sampler.n_q, "antithetic": self.sampler.antithetic}
        return native.semivalue, {"coefficient": native.shapley_coefficient, "sampler": self._subset_sampler()}


class TMCShapleyValuation(ShapleyValuation):
    """Truncated Monte Carlo Shapley: permutation sampling with ``truncation`` (default none)."""

    def __init__(
        self, utility: Any, truncation: Any = None, is_done: StoppingCriterion | None = None, seed: Any = None,
        skip_converged: bool = False, show_warnings: bool = True, progress: bool = False,
    ) -> None:
        from ._samplers import PermutationSampler

        if is_done is None:
            raise InvalidParameterError("TMCShapleyValuation needs 'is_done', a stopping criterion.")
        super().__init__(
            utility, PermutationSampler(truncation=truncation, seed=seed), is_done, skip_converged,
            show_warnings, progress,
        )


class BanzhafValuation(_SemivalueValuation):
    """Banzhaf values: uniform or antithetic samplers run :func:`~dvl_dask.valuation.banzhaf`.

    The MSR sampler runs :func:`~dvl_dask.valuation.msr_banzhaf`, Owen and stratified samplers
    :func:`~dvl_dask.valuation.semivalue` with the Banzhaf coefficient.
    """

    def _method(self) -> tuple[Callable[..., xr.Dataset], dict[str, Any]]:
        if self.sampler.kind == "msr":
            return native.msr_banzhaf, {}
        if self.sampler.kind in ("uniform", "antithetic"):
            return native.banzhaf, {"sampler": self.sampler.kind}
        return native.semivalue, {"coefficient": native.banzhaf_coefficient, "sampler": self._subset_sampler()}


class MSRBanzhafValuation(BanzhafValuation):
    """Banzhaf values by maximum sample reuse (:func:`~dvl_dask.valuation.msr_banzhaf`)."""

    def __init__(
        self, utility: Any, is_done: StoppingCriterion, batch_size: int = 1, seed: Any = None,
        skip_converged: bool = False, show_warnings: bool = True, progress: bool = False,
    ) -> None:
        from ._samplers import MSRSampler

        sampler = MSRSampler(seed=seed, batch_size=batch_size)
        super().__init__(utility, sampler, is_done, skip_converged, show_warnings, progress)


class BetaShapleyValuation(_SemivalueValuation):
    """Beta(alpha, beta) Shapley values (:func:`~dvl_dask.valuation.beta_shapley`) with a powerset sampler."""

    def __init__(
        self, utility: Any, sampler: IndexSampler, is_done: StoppingCriterion, alpha: float, beta: float,
        skip_converged: bool = False, show_warnings: bool = True, progress: bool = False,
    ) -> None:
        super().__init__(utility, sampler, is_done, skip_converged, show_warnings, progress)
        self.alpha = check_real(alpha, "alpha", "BetaShapleyValuation", low=0.0, low_open=True, finite=True)
        self.beta = check_real(beta, "beta", "BetaShapleyValuation", low=0.0, low_open=True, finite=True)

    def _method(self) -> tuple[Callable[..., xr.Dataset], dict[str, Any]]:
        return native.beta_shapley, {"alpha": self.alpha, "beta": self.beta, "sampler": self._subset_sampler()}


class StratifiedShapleyValuation(ShapleyValuation):
    """Stratified Shapley sampling: :func:`~dvl_dask.valuation.semivalue` with ``StratifiedSampler()``.

    dvl_dask's sampler allocates samples equally over coalition sizes.
    """

    def __init__(
        self, utility: Any, is_done: StoppingCriterion, batch_size: int = 1, seed: Any = None,
        skip_converged: bool = False, show_warnings: bool = True, progress: bool = False,
    ) -> None:
        from ._samplers import StratifiedSampler

        sampler = StratifiedSampler(seed=seed, batch_size=batch_size)
        super().__init__(utility, sampler, is_done, skip_converged, show_warnings, progress)


class DeltaShapleyValuation(_SemivalueValuation):
    """Delta-Shapley: Shapley restricted to coalition sizes within the sampler's bounds (Watson et al., 2023).

    pyDVL 0.10's signature: ``sampler`` is a :class:`StratifiedSampler` whose
    sample-size strategy carries the bounds, e.g.
    ``StratifiedSampler(ConstantSampleSize(lower_bound=1, upper_bound=4), seed=16)``
    (a bound left to None is ``0`` or ``n - 1``). Runs
    :func:`~dvl_dask.valuation.delta_shapley` with those bounds and the
    strategy's split over sizes (``ConstantSampleSize``: the same number at
    every size) until ``is_done``, seeded with the sampler's seed.
    ``StratifiedPermutationSampler`` raises
    :class:`~dvl_dask.errors.CompatNotSupportedError`.
    """

    def __init__(
        self, utility: Any, sampler: Any, is_done: StoppingCriterion, skip_converged: bool = False,
        show_warnings: bool = True, progress: bool = False,
    ) -> None:
        from ._samplers import StratifiedSampler

        if not isinstance(sampler, IndexSampler):
            raise InvalidParameterError(
                "The 'sampler' argument of DeltaShapleyValuation must be a StratifiedSampler whose sample-size "
                "strategy carries the bounds, e.g. StratifiedSampler(ConstantSampleSize(lower_bound=1, "
                f"upper_bound=4)). Got {type(sampler).__name__}."
            )
        if not isinstance(sampler, StratifiedSampler):
            raise not_supported("DeltaShapleyValuation with a sampler other than StratifiedSampler")
        super().__init__(utility, sampler, is_done, skip_converged, show_warnings, progress)
        self._n_players = 0

    def _compute(self, data: Dataset) -> xr.Dataset:
        self._n_players = len(data)
        return super()._compute(data)

    def _method(self) -> tuple[Callable[..., xr.Dataset], dict[str, Any]]:
        sizes = self.sampler.sample_sizes  # type: ignore[attr-defined]
        lower, upper = sizes.bounds(self._n_players)
        strategy = sizes._native()
        options = {"lower_bound": lower, "upper_bound": upper}
        if not isinstance(strategy, str):  # "equal" (ConstantSampleSize) is delta_shapley's default split
            options["sample_sizes"] = strategy
        return native.delta_shapley, options


class LOOValuation(Valuation):
    """Leave-one-out values (:func:`~dvl_dask.valuation.loo`)."""

    def __init__(self, utility: Any, progress: bool = False) -> None:
        super().__init__()
        self.utility, self.progress = _check_utility(utility, "LOOValuation"), progress
        self.sampler = LOOSampler()

    def _compute(self, data: Dataset) -> xr.Dataset:
        return native.loo(_native_utility(self.utility, data, "LOOValuation")).compute()


class KNNShapleyValuation(Valuation):
    """Exact KNN-Shapley of a ``KNeighborsClassifier`` or ``KNeighborsRegressor``.

    Runs :func:`~dvl_dask.valuation.knn_shapley`.

    For a regressor the utility is the negative squared error of the KNN
    prediction, averaged over the test points.
    """

    def __init__(self, model: Any, test_data: Dataset, progress: bool = False, clone_before_fit: bool = True) -> None:
        super().__init__()
        check_model(model, "model", "KNNShapleyValuation", ("fit", "kneighbors"))
        if not isinstance(test_data, Dataset):
            raise InvalidParameterError(
                "The 'test_data' argument of KNNShapleyValuation must be a Dataset of "
                f"dvl_dask.compat.pydvl.valuation. Got {type(test_data).__name__}."
            )
        self.model, self.test_data, self.progress = model, test_data, progress

    def _compute(self, data: Dataset) -> xr.Dataset:
        return native.knn_shapley(native_dataset(data, self.test_data, "KNNShapleyValuation"), self.model).compute()


def _bagging_parameters(model: Any) -> tuple[Any, int, float, Any]:
    """Base estimator, number of estimators, ``max_samples`` (a fraction) and seed of a bagging ensemble."""
    base = getattr(model, "estimator", None)
    if base is None or not hasattr(model, "n_estimators"):
        raise InvalidParameterError(
            "The 'model' argument of DataOOBValuation must be a scikit-learn bagging ensemble "
            f"(BaggingClassifier / BaggingRegressor with an estimator). Got {type(model).__name__}."
        )
    if not getattr(model, "bootstrap", True):
        raise InvalidParameterError("DataOOBValuation needs a bagging model with bootstrap=True (out-of-bag points).")
    return base, int(model.n_estimators), model.max_samples, model.random_state


class DataOOBValuation(Valuation):
    """Data-OOB values of a bagging ensemble (:func:`~dvl_dask.valuation.data_oob`).

    The ensemble's ``estimator``, ``n_estimators``, ``max_samples`` and
    ``random_state`` (the seed) are used; dvl_dask fits its own bootstrap models.
    """

    def __init__(self, model: Any, score: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> None:
        super().__init__()
        self.model, self.score = model, score
        _bagging_parameters(model)
        if score is not None and not callable(score):
            raise InvalidParameterError(
                "The 'score' argument of DataOOBValuation must be None or a function (y_true, y_pred) -> scores "
                f"per point. Got {type(score).__name__}."
            )

    def _compute(self, data: Dataset) -> xr.Dataset:
        from sklearn.base import is_classifier

        base, n_estimators, max_samples, seed = _bagging_parameters(self.model)
        if isinstance(max_samples, (int, np.integer)):
            max_samples = max_samples / len(data.data())
        x, y = data.data()
        # The test part is not used by Data-OOB (points are scored out of bag); the training part stands in.
        scorer = Scorer("accuracy") if is_classifier(base) else squashed_neg_mse  # bounded; not used by Data-OOB
        utility = Utility(base, NativeDataset(x, y, x, y), scorer)
        return native.data_oob(
            utility, n_estimators=n_estimators, max_samples=float(max_samples), seed=seed, point_score=self.score,
        ).compute()


class ClasswiseSampler:
    """pyDVL's class-wise sampler; the seed of its ``in_class`` sampler is the seed of the run."""

    def __init__(self, in_class: IndexSampler, out_of_class: IndexSampler, **kwargs: Any) -> None:
        _check_sampler(in_class, "in_class", "ClasswiseSampler")
        _check_sampler(out_of_class, "out_of_class", "ClasswiseSampler")
        self.in_class, self.out_of_class = in_class, out_of_class
        self.seed = getattr(in_class, "seed", None)


class ClasswiseShapleyValuation(Valuation):
    """Class-wise Shapley values (:func:`~dvl_dask.valuation.classwise_shapley`).

    ``is_done`` must be ``MaxUpdates(m)`` or ``MinUpdates(m)`` (a fixed budget:
    ``m`` permutations per class). ``normalize_values=True`` (pyDVL's default)
    scales the values of each class to sum to its in-class utility.
    """

    def __init__(
        self, utility: ClasswiseModelUtility, sampler: ClasswiseSampler, is_done: StoppingCriterion,
        progress: bool = False, normalize_values: bool = True,
    ) -> None:
        super().__init__()
        from ._stopping import MaxUpdates, MinUpdates

        _check_utility(utility, "ClasswiseShapleyValuation", (ClasswiseModelUtility,))
        if not isinstance(sampler, ClasswiseSampler):
            raise InvalidParameterError(
                "The 'sampler' argument of ClasswiseShapleyValuation must be a ClasswiseSampler. "
                f"Got {type(sampler).__name__}."
            )
        if not isinstance(is_done, (MaxUpdates, MinUpdates)):
            raise InvalidParameterError(
                "ClasswiseShapleyValuation in dvl_dask.compat.pydvl runs a fixed budget: pass "
                "is_done=MaxUpdates(m) (m permutations per class; dvl_dask.valuation.classwise_shapley(n_samples=...))."
            )
        self.utility, self.sampler, self.is_done, self.progress = utility, sampler, is_done, progress
        self.normalize_values = normalize_values

    def _compute(self, data: Dataset) -> xr.Dataset:
        utility = _native_utility(self.utility, data, "ClasswiseShapleyValuation")
        n_classes = len(np.unique(data.data().y))
        return native.classwise_shapley(
            utility, self.is_done.n_updates * n_classes, seed=self.sampler.seed,  # type: ignore[attr-defined]
            normalize_values=self.normalize_values,
        ).compute()


class GroupTestingShapleyValuation(Valuation):
    """Group-testing Shapley values from ``n_samples`` coalitions.

    Runs :func:`~dvl_dask.valuation.group_testing_shapley`.

    dvl_dask estimates the values from the sampled coalitions directly;
    ``epsilon`` and ``solver_options`` (pyDVL's constraint problem) are accepted and not used.
    """

    def __init__(
        self, utility: Any, n_samples: int, epsilon: float, solver_options: dict | None = None,
        progress: bool = False, seed: Any = None, batch_size: int = 1,
    ) -> None:
        super().__init__()
        owner = "GroupTestingShapleyValuation"
        self.utility, self.seed = _check_utility(utility, owner), _check_seed(seed, owner)
        self.n_samples = check_positive_int(n_samples, "n_samples", owner)
        self.epsilon = check_real(epsilon, "epsilon", owner, low=0.0, low_open=True, finite=True)

    def _compute(self, data: Dataset) -> xr.Dataset:
        utility = _native_utility(self.utility, data, type(self).__name__)
        return native.group_testing_shapley(utility, self.n_samples, seed=self.seed).compute()


class ExactLeastCoreValuation(Valuation):
    """Least core over all coalitions (:func:`~dvl_dask.valuation.exact_least_core`)."""

    def __init__(
        self, utility: Any, non_negative_subsidy: bool = False, solver_options: dict | None = None,
        progress: bool = False, batch_size: int = 1,
    ) -> None:
        super().__init__()
        owner = "ExactLeastCoreValuation"
        self.utility = _check_utility(utility, owner)
        self.non_negative_subsidy = check_bool(non_negative_subsidy, "non_negative_subsidy", owner)

    def _compute(self, data: Dataset) -> xr.Dataset:
        utility = _native_utility(self.utility, data, type(self).__name__)
        return native.exact_least_core(utility, non_negative_subsidy=self.non_negative_subsidy).compute()


class MonteCarloLeastCoreValuation(Valuation):
    """Least core over ``n_samples`` random coalitions (:func:`~dvl_dask.valuation.montecarlo_least_core`)."""

    def __init__(
        self, utility: Any, n_samples: int, non_negative_subsidy: bool = False, solver_options: dict | None = None,
        progress: bool = False, seed: Any = None, batch_size: int = 1,
    ) -> None:
        super().__init__()
        owner = "MonteCarloLeastCoreValuation"
        self.utility, self.seed = _check_utility(utility, owner), _check_seed(seed, owner)
        self.n_samples = check_positive_int(n_samples, "n_samples", owner)
        self.non_negative_subsidy = check_bool(non_negative_subsidy, "non_negative_subsidy", owner)

    def _compute(self, data: Dataset) -> xr.Dataset:
        utility = _native_utility(self.utility, data, type(self).__name__)
        return native.montecarlo_least_core(
            utility, self.n_samples, seed=self.seed, non_negative_subsidy=self.non_negative_subsidy
        ).compute()


class LeastCoreValuation(Valuation):
    """Least core with a sampler: a deterministic sampler is the exact least core, a uniform one Monte Carlo."""

    def __init__(
        self, utility: Any, sampler: IndexSampler, n_samples: int | None = None, non_negative_subsidy: bool = False,
        solver_options: dict | None = None, progress: bool = False,
    ) -> None:
        super().__init__()
        _check_utility(utility, "LeastCoreValuation")
        _check_sampler(sampler, "sampler", "LeastCoreValuation")
        if n_samples is not None:
            check_positive_int(n_samples, "n_samples", "LeastCoreValuation")
        if sampler.deterministic and sampler.kind == "exact":
            self._inner: Valuation = ExactLeastCoreValuation(utility, non_negative_subsidy)
        elif sampler.kind == "uniform" and n_samples is not None:
            self._inner = MonteCarloLeastCoreValuation(
                utility, n_samples, non_negative_subsidy, seed=sampler.seed
            )
        else:
            raise not_supported("LeastCoreValuation with this sampler")
        self.utility, self.sampler, self.n_samples = utility, sampler, n_samples

    def _compute(self, data: Dataset) -> xr.Dataset:
        return self._inner._compute(data)
