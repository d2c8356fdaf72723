"""pyDVL 0.10's scorers and utilities, translated to :class:`dvl_dask.Scorer` and :class:`dvl_dask.Utility`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from ....errors import InvalidParameterError
from ....utility import Scorer, Utility, learn_utility
from ....utility import compose_score as native_compose_score
from ....utility._utility import _check_scorer_fits_model
from ....validation import as_seed_sequence, check_bool, check_model, check_positive_int, check_real
from ._dataset import Dataset, native_dataset
from ._unsupported import not_supported

__all__ = [
    "ClasswiseModelUtility",
    "ClasswiseSupervisedScorer",
    "DataUtilityLearning",
    "IndicatorUtilityModel",
    "ModelUtility",
    "SupervisedScorer",
    "compose_score",
]


def score_range(value: Any, name: str, owner: str) -> tuple[float, float]:
    """``value`` as a pair ``(low, high)`` of numbers with ``low < high`` (pyDVL's ``range`` of a score)."""
    try:
        low, high = value
    except (TypeError, ValueError):
        low = high = None
    pair = (low, high)
    if any(isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or np.isnan(v) for v in pair) or not (
        low < high  # type: ignore[operator]
    ):
        raise InvalidParameterError(
            f"The '{name}' argument of {owner} must be a pair (low, high) of numbers with low < high "
            f"(e.g. (0.0, 1.0), or (-inf, inf) for unknown). Got {value!r:.60}."
        )
    return float(low), float(high)  # type: ignore[arg-type]


class _BoundToData:
    """pyDVL's ``with_dataset``: the utility bound to training data, its native utility built on first use."""

    training_data: Dataset | None
    _native: Any

    def with_dataset(self: _Bound, data: Dataset, copy: bool = True) -> _Bound:
        """The utility on training data ``data`` (a copy unless ``copy=False``)."""
        target = self
        if copy:
            target = type(self).__new__(type(self))
            target.__dict__.update(self.__dict__)
        target.training_data = data
        target._native = None
        return target


_Bound = TypeVar("_Bound", bound=_BoundToData)


class SupervisedScorer:
    """pyDVL 0.10's ``SupervisedScorer``: a scikit-learn scorer, the test data, a default score and a range.

    Parameters
    ----------
    scoring : str or callable
        A scikit-learn scorer name or ``scorer(model, x, y) -> float``.
    test_data : Dataset
        The data the score is computed on.
    default : float
        Score of coalitions that cannot be fitted (dvl_dask's ``default_score``).
    range : (float, float)
        Range of the score; pyDVL's default ``(-inf, inf)`` lets dvl_dask take the
        range of what the scorer computes (``(0, 1)`` for accuracy).
    name : str, optional
        Display name.
    """

    def __init__(
        self,
        scoring: str | Callable[..., float] | Scorer,
        test_data: Dataset,
        default: float,
        range: tuple[float, float] = (-math.inf, math.inf),  # noqa: A002 - pyDVL's name
        name: str | None = None,
    ) -> None:
        if not isinstance(test_data, Dataset):
            raise InvalidParameterError(
                f"The 'test_data' argument of {type(self).__name__} must be a dvl_dask.compat.pydvl Dataset. "
                f"Got {type(test_data).__name__}."
            )
        self.test_data = test_data
        self.default = check_real(default, "default", type(self).__name__)
        self.range = score_range(range, "range", type(self).__name__)
        self.name = name
        declared = None if np.isinf(self.range).all() else self.range
        self.scorer = scoring if isinstance(scoring, Scorer) else Scorer(scoring, range=declared, name=name)

    def native(self) -> Scorer:
        """The :class:`dvl_dask.Scorer` this scorer stands for."""
        return self.scorer

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.scorer.name!r}, default={self.default}, range={self.range})"


def compose_score(
    scorer: SupervisedScorer,
    transformation: Callable[[float], float],
    name: str,
    range: tuple[float, float] | None = None,  # noqa: A002 - pyDVL's name
) -> SupervisedScorer:
    """pyDVL's ``compose_score``: ``transformation(scorer(...))`` with a new range, same test data and default.

    pyDVL 0.10's signature is ``(scorer, transformation, name)``, the range being the transformed ends of
    ``scorer.range``; ``range=`` (dvl_dask's addition) overrides it, e.g. when the transformation is not monotone.
    """
    if not isinstance(scorer, SupervisedScorer):
        raise InvalidParameterError(
            f"The 'scorer' argument of compose_score must be a SupervisedScorer. Got {type(scorer).__name__}."
        )
    if not callable(transformation):
        raise InvalidParameterError(
            "The 'transformation' argument of compose_score must be a function float -> float. "
            f"Got {type(transformation).__name__}."
        )

    if range is None:
        ends = (transformation(scorer.range[0]), transformation(scorer.range[1]))
        range = (min(ends), max(ends))  # noqa: A001
    composed = native_compose_score(scorer.native(), transformation, range=tuple(range), name=name)
    return SupervisedScorer(composed, scorer.test_data, default=transformation(scorer.default), range=range, name=name)


def _identity(x: float) -> float:
    return x


class ClasswiseSupervisedScorer(SupervisedScorer):
    """pyDVL 0.10's class-wise scorer, ``in_class * exp(out_of_class)`` (what :func:`classwise_shapley` scores).

    Other discount functions than pyDVL's defaults raise
    :class:`~dvl_dask.errors.CompatNotSupportedError`.
    """

    def __init__(
        self,
        scoring: str | Callable[..., float],
        test_data: Dataset,
        default: float = 0.0,
        range: tuple[float, float] = (0.0, 1.0),  # noqa: A002 - pyDVL's name
        in_class_discount_fn: Callable[[float], float] | None = None,
        out_of_class_discount_fn: Callable[[float], float] | None = None,
        rescale_scores: bool = True,
        name: str | None = None,
    ) -> None:
        for name, fn in (("in_class_discount_fn", in_class_discount_fn),
                         ("out_of_class_discount_fn", out_of_class_discount_fn)):
            if fn is not None and not callable(fn):
                raise InvalidParameterError(
                    f"The '{name}' argument of ClasswiseSupervisedScorer must be None or a function "
                    f"float -> float. Got {type(fn).__name__}."
                )
        if scoring != "accuracy" or in_class_discount_fn not in (None, _identity) or (
            out_of_class_discount_fn not in (None, np.exp)
        ):
            raise not_supported("ClasswiseSupervisedScorer with other than accuracy, identity and exp")
        super().__init__(scoring, test_data, default, range, name)
        self.rescale_scores = rescale_scores


class ModelUtility(_BoundToData):
    """pyDVL 0.10's ``ModelUtility(model, scorer)``: a :class:`dvl_dask.Utility` once the training data is known.

    Parameters
    ----------
    model : sklearn estimator
        Cloned by dvl_dask's Utility (scikit-learn's convention), as pyDVL's ``clone_before_fit=True``.
    scorer : SupervisedScorer
        Scorer with the test data.
    catch_errors : bool
        Score failing fits with the scorer's default (a warning is issued).
    show_warnings : bool
        Accepted for pyDVL (dvl_dask's warnings follow Python's filters).
    cache_backend : CacheBackend, optional
        A backend of :mod:`dvl_dask.cache`.
    cached_func_options : CachedFuncConfig, optional
        Options of the cache.
    clone_before_fit : bool
        Only ``True`` is supported: dvl_dask never fits the caller's model object.
    """

    def __init__(
        self,
        model: Any,
        scorer: SupervisedScorer,
        catch_errors: bool = False,
        show_warnings: bool = False,
        cache_backend: Any = None,
        cached_func_options: Any = None,
        clone_before_fit: bool = True,
    ) -> None:
        check_model(model, "model", type(self).__name__)
        catch_errors = check_bool(catch_errors, "catch_errors", type(self).__name__)
        if not isinstance(scorer, SupervisedScorer):
            raise InvalidParameterError(
                f"The 'scorer' argument of {type(self).__name__} must be a SupervisedScorer (it holds the test "
                f"data). Got {type(scorer).__name__}."
            )
        if not clone_before_fit:
            raise not_supported("ModelUtility(clone_before_fit=False)")
        _check_scorer_fits_model(scorer.native(), model, type(self).__name__)  # refused now, not when first used
        self.model = model
        self.scorer = scorer
        self.catch_errors = catch_errors
        self.show_warnings = show_warnings
        self.cache_backend = cache_backend
        self.cached_func_options = cached_func_options
        self.training_data: Dataset | None = None
        self._native: Utility | None = None

    def native(self, data: Dataset | None = None, owner: str = "ModelUtility") -> Utility:
        """The :class:`dvl_dask.Utility` on training data ``data`` (default: the data set with ``with_dataset``)."""
        data = data if data is not None else self.training_data
        if data is None:
            raise InvalidParameterError(
                f"{owner} has no training data: call valuation.fit(data) or utility.with_dataset(data) first."
            )
        if self._native is not None and data is self.training_data:
            return self._native
        native = Utility(
            self.model, native_dataset(data, self.scorer.test_data, owner), self.scorer.native(),
            default_score=self.scorer.default, catch_errors=self.catch_errors, cache=self.cache_backend,
            cached_func_options=self.cached_func_options,
        )
        if data is self.training_data:
            self._native = native
        return native

    def __call__(self, indices: Any) -> float:
        """Utility of the coalition ``indices`` (a sequence of player indices, or pyDVL's ``Sample``)."""
        subset = getattr(indices, "subset", indices)
        return float(self.native()(np.asarray(subset, dtype=np.int64)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, {self.scorer!r})"


class ClasswiseModelUtility(ModelUtility):
    """pyDVL 0.10's ``ClasswiseModelUtility``: a classifier and a :class:`ClasswiseSupervisedScorer`."""

    def __init__(self, model: Any, scorer: ClasswiseSupervisedScorer, **kwargs: Any) -> None:
        if not isinstance(scorer, ClasswiseSupervisedScorer):
            raise InvalidParameterError(
                f"The 'scorer' argument of ClasswiseModelUtility must be a ClasswiseSupervisedScorer. "
                f"Got {type(scorer).__name__}."
            )
        super().__init__(model, scorer, **kwargs)


class IndicatorUtilityModel:
    """pyDVL 0.10's utility model: ``predictor`` regresses utilities on 0/1 indicator vectors of ``n_data`` players.

    :class:`DataUtilityLearning` unwraps it (dvl_dask's
    :func:`~dvl_dask.utility.learn_utility` uses the same encoding).
    """

    def __init__(self, predictor: Any, n_data: int) -> None:
        check_model(predictor, "predictor", "IndicatorUtilityModel")
        self.predictor = predictor
        self.n_data = check_positive_int(n_data, "n_data", "IndicatorUtilityModel")

    @property
    def model(self) -> Any:
        """The wrapped regressor."""
        return self.predictor


class DataUtilityLearning(_BoundToData):
    """pyDVL 0.10's ``DataUtilityLearning``: a regressor learns the utility from ``training_budget`` evaluations.

    Maps to :func:`dvl_dask.utility.learn_utility` (coalitions as 0/1 indicator
    vectors); a valuation given this utility runs on the learned one.

    Parameters
    ----------
    utility : ModelUtility
        The real utility.
    training_budget : int
        Real evaluations used to train the regressor.
    model : sklearn regressor
        Maps indicator vectors to utilities.
    show_warnings : bool
        Accepted for pyDVL.
    seed : int, optional
        dvl_dask's addition: seeds the sampled training coalitions. pyDVL 0.10 has no seed: it trains on the
        first ``training_budget`` coalitions the valuation asks for (with real utilities for those, predicted
        ones afterwards), so its values mix real and learned utilities and differ from dvl_dask's, which are
        those of the learned utility on every coalition.
    """

    def __init__(
        self, utility: ModelUtility, training_budget: int, model: Any, show_warnings: bool = True,
        seed: int | None = None,
    ) -> None:
        if not isinstance(utility, ModelUtility):
            raise InvalidParameterError(
                f"The 'utility' argument of DataUtilityLearning must be a ModelUtility. Got {type(utility).__name__}."
            )
        self.utility = utility
        self.training_budget = check_positive_int(training_budget, "training_budget", "DataUtilityLearning")
        self.model = getattr(model, "model", model)  # pyDVL's IndicatorUtilityModel wraps a regressor
        check_model(self.model, "model", "DataUtilityLearning", ("fit", "predict"))
        if seed is not None:
            as_seed_sequence(seed, "seed", "DataUtilityLearning")
        self.show_warnings = show_warnings
        self.seed = seed
        self.training_data: Dataset | None = None
        self._native: Any = None

    def native(self, data: Dataset | None = None, owner: str = "DataUtilityLearning") -> Any:
        """The :class:`dvl_dask.utility.LearnedUtility` trained on the real utility over ``data``."""
        data = data if data is not None else self.training_data
        if self._native is None or data is not self.training_data:
            real = self.utility.native(data, owner)
            native = learn_utility(real, self.training_budget, regressor=self.model, seed=self.seed)
            if data is not self.training_data:
                return native
            self._native = native
        return self._native

    def __call__(self, indices: Any) -> float:
        """Predicted utility of the coalition ``indices``."""
        subset = getattr(indices, "subset", indices)
        return float(self.native()(np.asarray(subset, dtype=np.int64)))
