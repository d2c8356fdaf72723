"""Scorers: how a fitted model is scored on the test data."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np

from .._frozen import Frozen
from .._provenance import qualified_name
from ..errors import InvalidParameterError, UnknownScorerError
from ..keys import describe_parameters, object_token

__all__ = [
    "Scorer",
    "as_scorer",
    "compose_score",
    "sigmoid",
    "squashed_neg_mse",
    "squashed_r2",
    "squashed_variance",
]

# Ranges of common sklearn scorers. Utility uses the lower end as the default
# score (the worst attainable score), clips scores to the range, and passes
# the range to estimators to bound the variance of their samples.
_UNIT_SCORERS = (
    "accuracy", "balanced_accuracy", "top_k_accuracy", "average_precision", "jaccard",
    "f1", "f1_micro", "f1_macro", "f1_weighted", "f1_samples",
    "precision", "precision_micro", "precision_macro", "precision_weighted", "precision_samples",
    "recall", "recall_micro", "recall_macro", "recall_weighted", "recall_samples",
    "roc_auc", "roc_auc_ovr", "roc_auc_ovo", "roc_auc_ovr_weighted", "roc_auc_ovo_weighted",
)
_KNOWN_RANGES: dict[str, tuple[float, float]] = {
    **{name: (0.0, 1.0) for name in _UNIT_SCORERS},
    "r2": (-np.inf, 1.0),
    "explained_variance": (-np.inf, 1.0),
    "neg_max_error": (-np.inf, 0.0),
    "neg_median_absolute_error": (-np.inf, 0.0),
    "neg_mean_squared_error": (-np.inf, 0.0),
    "neg_mean_absolute_error": (-np.inf, 0.0),
    "neg_root_mean_squared_error": (-np.inf, 0.0),
    "neg_log_loss": (-np.inf, 0.0),
}

# Metric functions with values in [0, 1], recognised inside make_scorer(...) objects.
_UNIT_METRICS = (
    "accuracy_score", "balanced_accuracy_score", "top_k_accuracy_score", "average_precision_score",
    "jaccard_score", "f1_score", "precision_score", "recall_score", "roc_auc_score",
)


def _made_scorer_range(scoring: Any) -> tuple[float, float] | None:
    """Range of a ``sklearn.metrics.make_scorer`` object wrapping a [0, 1] metric (sign applied), else None."""
    func = getattr(scoring, "_score_func", None)
    sign = getattr(scoring, "_sign", None)
    if getattr(func, "__name__", None) in _UNIT_METRICS and getattr(func, "__module__", "").startswith("sklearn."):
        return (0.0, 1.0) if sign == 1 else (-1.0, 0.0) if sign == -1 else None
    return None


class Scorer(Frozen):
    """A callable ``scorer(model, x, y) -> float`` with a name and a known range; an immutable value.

    Parameters
    ----------
    scoring : str or callable
        A scikit-learn scorer name (``"accuracy"``, ``"neg_mean_squared_error"``, ...)
        or a callable ``(model, x, y) -> float``.
    range : (float, float), optional
        Values the score can take. Known for common sklearn names and for
        ``make_scorer`` objects of [0, 1] metrics (``f1_score``, ``recall_score``...),
        else unbounded. The lower end is the default score of a Utility; scores are
        clipped to the range.
    name : str, optional
        Display name; defaults to the scorer name or the callable's name.

    Notes
    -----
    A Scorer keeps its own deep copy of a callable ``scoring`` (plain
    functions are kept as they are: their code and captured state are hashed),
    and its attributes cannot be assigned after construction
    (:class:`~dvl_dask.errors.FrozenInstanceError`), so its token -- which
    enters the token of every :class:`~dvl_dask.utility.Utility` using it --
    stays true. Objects a plain function captures must not be changed.

    Examples
    --------
    >>> s = Scorer("accuracy")
    >>> s.name, s.range
    ('accuracy', (0.0, 1.0))
    """

    def __init__(
        self,
        scoring: str | Callable[[Any, Any, Any], float],
        *,
        range: tuple[float, float] | None = None,  # noqa: A002 - the natural name
        name: str | None = None,
    ) -> None:
        if isinstance(scoring, str):
            from sklearn.metrics import get_scorer, get_scorer_names

            if scoring not in get_scorer_names():
                import difflib

                close = difflib.get_close_matches(scoring, list(get_scorer_names()), n=3)
                hint = f" Did you mean one of {close}?" if close else ""
                raise UnknownScorerError(
                    f"The 'scoring' parameter must be a scikit-learn scorer name or a callable. "
                    f"Got unknown name {scoring!r}.{hint} To list names, call "
                    "sklearn.metrics.get_scorer_names()."
                )
            self._fn = get_scorer(scoring)
            self._accuracy = scoring == "accuracy"
            self.name = name or scoring
            default_range = _KNOWN_RANGES.get(scoring, (-np.inf, np.inf))
        elif callable(scoring):
            self._fn = _own_copy(scoring)
            self._accuracy = False
            func = getattr(scoring, "_score_func", None)
            self.name = name or getattr(scoring, "__name__", getattr(func, "__name__", type(scoring).__name__))
            default_range = _made_scorer_range(scoring) or (-np.inf, np.inf)
        else:
            raise InvalidParameterError(
                f"The 'scoring' parameter must be a scikit-learn scorer name or a callable "
                f"(model, x, y) -> float. Got {type(scoring).__name__}."
            )
        lo, hi = default_range if range is None else (float(range[0]), float(range[1]))
        if not lo <= hi:
            raise InvalidParameterError(f"The 'range' parameter of Scorer must satisfy low <= high. Got {range}.")
        self.range = (lo, hi)
        self._token: str | None = None

    def __call__(self, model: Any, x: Any, y: Any) -> float:
        if getattr(self, "_accuracy", False):
            score = _plain_accuracy(model, x, y)
            if score is not None:
                return score
        return float(self._fn(model, x, y))

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("_accuracy", False)
        state.setdefault("_frozen", True)
        super().__setstate__(state)

    def __dask_tokenize__(self) -> str:
        # By value: a sklearn scorer by its score function, sign, kwargs and response method
        # (make_scorer(f1_score) and make_scorer(recall_score) differ); a callable by its code
        # and captured state. Computed once, on first use (the scorer is immutable).
        if self._token is None:
            self.__dict__["_token"] = object_token("Scorer", self._fn, self.range)
        return self._token

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable description: name, range and what is scored (for provenance)."""
        fn = self._fn
        func = getattr(fn, "_score_func", None)
        described: dict[str, Any] = {
            "name": self.name,
            "range": describe_parameters(list(self.range)),
            "class": qualified_name(fn),
        }
        if func is not None:  # a scikit-learn scorer
            described["score_func"] = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', '?')}"
            described["sign"] = describe_parameters(getattr(fn, "_sign", None))
            described["kwargs"] = describe_parameters(dict(getattr(fn, "_kwargs", {}) or {}), tokens=False)
        else:
            described["callable"] = describe_parameters(fn, tokens=False)
        return described

    def __repr__(self) -> str:
        return f"Scorer({self.name!r}, range={self.range})"


# Label dtypes for which ``mean(y_pred == y)`` is exactly what sklearn's accuracy computes:
# both integer-like or both strings. Anything else (floats, objects, mixed kinds, 2-D
# labels) goes through sklearn, which validates the label types and raises on mixes.
_INT_KINDS, _STR_KINDS = frozenset("biu"), frozenset("US")


def _plain_accuracy(model: Any, x: Any, y: Any) -> float | None:
    """Accuracy of 1-D discrete labels without sklearn's per-call target checks, else None.

    ``sklearn.metrics.accuracy_score`` spends most of its time inferring the
    type of the targets (``type_of_target`` twice: about 2/3 of the scorer's
    cost on 200 test points); for 1-D integer or string labels the result is
    ``mean(y_pred == y)``, bit for bit.
    """
    if not isinstance(y, np.ndarray) or y.ndim != 1:
        return None
    kinds = _INT_KINDS if y.dtype.kind in _INT_KINDS else _STR_KINDS if y.dtype.kind in _STR_KINDS else None
    if kinds is None:
        return None
    pred = model.predict(x)
    if not isinstance(pred, np.ndarray) or pred.shape != y.shape or pred.dtype.kind not in kinds:
        return None  # sklearn decides (and e.g. refuses continuous predictions)
    return float(np.count_nonzero(pred == y) / y.size)


def _own_copy(scoring: Callable[..., Any]) -> Callable[..., Any]:
    """A deep copy of a scoring callable (plain functions stay themselves), so the caller's cannot change it."""
    try:
        return copy.deepcopy(scoring)
    except Exception as exc:
        raise InvalidParameterError(
            f"The 'scoring' callable of Scorer ({type(scoring).__name__}) cannot be deep-copied ({type(exc).__name__}: "
            f"{exc}). Scorer keeps its own copy so that later changes to yours cannot change scores behind its "
            "token. To fix, make it deep-copyable (e.g. define __deepcopy__), or pass a plain function."
        ) from exc


def as_scorer(scoring: str | Callable[..., float] | Scorer) -> Scorer:
    """Return ``scoring`` as a :class:`Scorer`."""
    return scoring if isinstance(scoring, Scorer) else Scorer(scoring)


def sigmoid(x: float) -> float:
    """The logistic function ``1 / (1 + exp(-x))``, overflow-safe, with ``sigmoid(-inf) = 0``."""
    x = float(x)
    if x >= 0:
        return float(1.0 / (1.0 + np.exp(-x)))
    e = np.exp(x)
    return float(e / (1.0 + e))


class _Composed:
    """``transformation(scorer(model, x, y))``: picklable and tokenized by both parts."""

    def __init__(self, scorer: Scorer, transformation: Callable[[float], float]) -> None:
        self.scorer = scorer
        self.transformation = transformation
        self.__name__ = f"{getattr(transformation, '__name__', 'transformed')}({scorer.name})"

    def __call__(self, model: Any, x: Any, y: Any) -> float:
        return float(self.transformation(self.scorer(model, x, y)))

    def __dask_tokenize__(self) -> str:
        return object_token("ComposedScore", self.scorer, self.transformation)


def compose_score(
    scorer: str | Callable[..., float] | Scorer,
    transformation: Callable[[float], float],
    range: tuple[float, float],  # noqa: A002 - the natural name
    name: str | None = None,
) -> Scorer:
    """A scorer whose score is ``transformation(scorer(model, x, y))``, with a known range.

    Use it to map a score that is unbounded below (``r2``,
    ``neg_mean_squared_error``, ...) into a bounded interval, so that a
    :class:`~dvl_dask.utility.Utility` gets a default score (the lower end of
    ``range``, the transformed worst score) and estimators get a finite
    ``score_range`` for their variance floor. The transformation should be
    increasing (better scores stay better) and map the scorer's range into
    ``range``; scores are clipped to ``range``.

    Parameters
    ----------
    scorer : str, callable or Scorer
        The underlying scorer (a scikit-learn name, a callable
        ``(model, x, y) -> float`` or a :class:`Scorer`).
    transformation : callable
        ``float -> float``, increasing, e.g. :func:`sigmoid`.
    range : (float, float)
        Finite bounds of the transformed score.
    name : str, optional
        Display name; defaults to ``"<transformation>(<scorer>)"``.

    Returns
    -------
    Scorer

    Raises
    ------
    InvalidParameterError
        If ``transformation`` is not callable or ``range`` is not two finite numbers ``low <= high``.

    Examples
    --------
    >>> s = compose_score("r2", sigmoid, (0.0, 1.0), name="squashed r2")
    >>> s.name, s.range
    ('squashed r2', (0.0, 1.0))
    """
    base = as_scorer(scorer)
    if not callable(transformation):
        raise InvalidParameterError(
            f"The 'transformation' parameter of compose_score must be a callable float -> float. "
            f"Got {type(transformation).__name__}."
        )
    try:
        lo, hi = (float(range[0]), float(range[1]))
    except (TypeError, ValueError, IndexError):
        raise InvalidParameterError(
            f"The 'range' parameter of compose_score must be two finite numbers (low, high). Got {range!r}."
        ) from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
        raise InvalidParameterError(
            f"The 'range' parameter of compose_score must be two finite numbers with low <= high. Got {range!r}."
        )
    composed = _Composed(base, transformation)
    return Scorer(composed, range=(lo, hi), name=name or composed.__name__)


def squashed_r2() -> Scorer:
    """``sigmoid(r2)``: the coefficient of determination squashed into ``(0, 1)``.

    ``r2`` lies in ``(-inf, 1]``, so the squashed score lies in
    ``(0, sigmoid(1)] = (0, 0.731]``; its range is declared ``(0, 1)``, so a
    Utility's default score is 0 (= ``sigmoid(-inf)``, the worst possible r2)
    and no explicit ``default_score`` is needed. A constant prediction of the
    test mean (``r2 = 0``) scores 0.5. The sigmoid is increasing, so the order
    of coalitions is that of r2; differences are compressed for very bad fits
    (``r2 << 0``), which keeps one terrible fit of a tiny coalition from
    dominating the values. (pyDVL offers the same idea under the same name.)
    """
    return compose_score("r2", sigmoid, (0.0, 1.0), name="squashed r2")


def squashed_variance() -> Scorer:
    """``sigmoid(explained_variance)``: explained variance squashed into ``(0, 1)`` (see :func:`squashed_r2`)."""
    return compose_score("explained_variance", sigmoid, (0.0, 1.0), name="squashed explained variance")


def squashed_neg_mse(scale: float = 1.0) -> Scorer:
    """``2 sigmoid(-MSE / scale)``: mean squared error mapped into ``(0, 1]``, 1 for a perfect fit.

    ``scale`` sets which errors stay distinguishable: an MSE of ``scale``
    scores 0.54, of ``5 scale`` 0.013 (use the variance of the test targets,
    so that a constant prediction of the mean scores about 0.54). The default
    score of a Utility is 0 (infinite error).
    """
    scale = float(scale)
    if not (np.isfinite(scale) and scale > 0):
        raise InvalidParameterError(
            f"The 'scale' parameter of squashed_neg_mse must be a finite number > 0. Got {scale!r}."
        )
    return compose_score("neg_mean_squared_error", _ScaledDoubleSigmoid(scale), (0.0, 1.0),
                         name=f"squashed neg_mean_squared_error (scale={scale:g})")


class _ScaledDoubleSigmoid:
    """``x -> 2 sigmoid(x / scale)`` (maps ``(-inf, 0]`` onto ``(0, 1]``)."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.__name__ = "double_sigmoid"

    def __call__(self, x: float) -> float:
        return 2.0 * sigmoid(float(x) / self.scale)

    def __dask_tokenize__(self) -> tuple:
        return ("double_sigmoid", self.scale)
