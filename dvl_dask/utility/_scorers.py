"""Scorers: how a fitted model is scored on the test data."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .._frozen import Frozen
from .._provenance import qualified_name
from ..errors import InvalidParameterError, UnknownScorerError
from ..keys import describe_parameters, object_token
from ..validation import check_real

__all__ = [
    "RANGE_TOLERANCE",
    "Scorer",
    "as_scorer",
    "compose_score",
    "outside_range",
    "scorer_task",
    "sigmoid",
    "sklearn_scorer_range",
    "squashed_neg_mse",
    "squashed_r2",
    "squashed_variance",
]

#: Relative rounding a score may show beyond its range's ends (sums of floats in a metric)
#: before it counts as outside; such a score is kept as computed, never moved.
RANGE_TOLERANCE = 1e-9

Bounds = tuple[float, float]
# A rule gets a make_scorer object's keyword arguments and the test targets (or None when
# unknown) and returns the metric's (low, high) before the scorer's sign, or None when the
# range is not known for certain for these arguments.
_Rule = Callable[[Mapping[str, Any], Any], "Bounds | None"]


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool | np.bool_)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _anything(value: Any) -> bool:
    return True


def _is_zero_division(value: Any) -> bool:
    """The values of ``zero_division`` scikit-learn accepts: "warn", 0, 1 or NaN (NaN fails as non-finite)."""
    if isinstance(value, str):
        return value == "warn"
    return isinstance(value, int | float | np.integer | np.floating) and (value in (0, 1) or np.isnan(value))


def _is_positive(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not _is_bool(value) and value > 0


def _known_kwargs(kwargs: Mapping[str, Any], allowed: Mapping[str, Callable[[Any], bool]]) -> bool:
    """True if every keyword is one whose effect on the range is known, with a value of that kind."""
    return all(key in allowed and allowed[key](value) for key, value in kwargs.items())


def _n_test(y_test: Any) -> int | None:
    """Number of test points, or None if unknown (no targets, or a dask array of unknown length)."""
    if y_test is None:
        return None
    shape = getattr(y_test, "shape", None)
    n = shape[0] if shape else len(y_test)
    return int(n) if np.isfinite(n) else None


def _fixed(bounds: Bounds, allowed: Mapping[str, Callable[[Any], bool]]) -> _Rule:
    """The metric lies in ``bounds`` whatever the (allowed) keywords and the test data."""

    def rule(kwargs: Mapping[str, Any], y_test: Any) -> Bounds | None:
        return bounds if _known_kwargs(kwargs, allowed) else None

    return rule


def _fraction_or_count(allowed: Mapping[str, Callable[[Any], bool]]) -> _Rule:
    """Accuracy-like: a fraction of the test points in [0, 1], or with ``normalize=False`` their count.

    The count lies in ``[0, n_test]``; without the test data its upper end is unknown (None).
    """

    def rule(kwargs: Mapping[str, Any], y_test: Any) -> Bounds | None:
        if not _known_kwargs(kwargs, {**allowed, "normalize": _is_bool}):
            return None
        if kwargs.get("normalize", True):
            return (0.0, 1.0)
        n = _n_test(y_test)
        return None if n is None else (0.0, float(n))

    return rule


def _balanced_accuracy(kwargs: Mapping[str, Any], y_test: Any) -> Bounds | None:
    """Mean recall over the k classes present in ``y_test``; ``adjusted=True`` maps chance to 0.

    ``(mean_recall - 1/k) / (1 - 1/k)`` is smallest, ``-1/(k - 1)``, when every
    recall is 0; with ``k`` unknown, ``-1`` (``k = 2``) bounds every ``k >= 2``
    (``k = 1`` gives no finite score at all).
    """
    if not _known_kwargs(kwargs, {"adjusted": _is_bool}):
        return None
    if not kwargs.get("adjusted", False):
        return (0.0, 1.0)
    k = 0 if y_test is None else np.unique(np.asarray(y_test)).size
    return (-1.0 / (k - 1), 1.0) if k >= 2 else (-1.0, 1.0)


_PRF_KWARGS: dict[str, Callable[[Any], bool]] = {
    "average": _is_str,  # average=None gives one score per class (not a scorer's float)
    "pos_label": _anything,
    "labels": _anything,
    "zero_division": _is_zero_division,
}
_REGRESSION_AVERAGE = {"multioutput": lambda v: v in ("uniform_average", "variance_weighted")}
_UNIFORM_AVERAGE = {"multioutput": lambda v: v == "uniform_average"}
#: Error metrics (means, medians or maxima of non-negative terms): [0, inf).
_LOSSES = (
    "mean_squared_error", "root_mean_squared_error", "mean_absolute_error", "median_absolute_error",
    "max_error", "mean_squared_log_error", "root_mean_squared_log_error", "mean_absolute_percentage_error",
    "mean_poisson_deviance", "mean_gamma_deviance",
)


@functools.cache
def _metric_rules() -> dict[Any, _Rule]:
    """Range rules of scikit-learn metric functions (looked up by identity), built on first use.

    Only (metric, keyword) combinations whose range follows from the metric's
    definition are listed; a keyword not listed for a metric (``sample_weight``,
    ``max_fpr``, ...) makes its range unknown.
    """
    from sklearn import metrics

    unit = (0.0, 1.0)
    rules: dict[str, _Rule] = {
        "accuracy_score": _fraction_or_count({}),
        "top_k_accuracy_score": _fraction_or_count({"k": _is_positive, "labels": _anything}),
        "balanced_accuracy_score": _balanced_accuracy,
        "f1_score": _fixed(unit, _PRF_KWARGS),
        "precision_score": _fixed(unit, _PRF_KWARGS),
        "recall_score": _fixed(unit, _PRF_KWARGS),
        "jaccard_score": _fixed(unit, _PRF_KWARGS),
        "fbeta_score": _fixed(unit, {**_PRF_KWARGS, "beta": _is_positive}),
        "roc_auc_score": _fixed(unit, {"average": _is_str, "multi_class": _is_str, "labels": _anything}),
        "average_precision_score": _fixed(unit, {"average": _is_str, "pos_label": _anything}),
        "matthews_corrcoef": _fixed((-1.0, 1.0), {}),
        "r2_score": _fixed((-np.inf, 1.0), {**_REGRESSION_AVERAGE, "force_finite": _is_bool}),
        "explained_variance_score": _fixed((-np.inf, 1.0), {**_REGRESSION_AVERAGE, "force_finite": _is_bool}),
        "log_loss": _fixed((0.0, np.inf), {"labels": _anything}),
        **{name: _fixed((0.0, np.inf), _UNIFORM_AVERAGE) for name in _LOSSES},
    }
    return {getattr(metrics, name): rule for name, rule in rules.items() if hasattr(metrics, name)}


def sklearn_scorer_range(scoring: Any, y_test: Any = None) -> Bounds | None:
    """Range of a scikit-learn scorer object (``make_scorer(...)``, ``get_scorer(name)``), or None if unknown.

    The range comes from what the scorer computes: its metric function, the
    keyword arguments given to ``make_scorer`` and its sign
    (``greater_is_better=False`` negates the metric). ``y_test``, when given,
    is the test targets it will score on (their number bounds
    ``accuracy_score(normalize=False)``, their classes bound
    ``balanced_accuracy_score(adjusted=True)``). Anything not known for
    certain gives None, never a guess.

    Examples
    --------
    >>> from sklearn.metrics import accuracy_score, make_scorer
    >>> sklearn_scorer_range(make_scorer(accuracy_score))
    (0.0, 1.0)
    >>> sklearn_scorer_range(make_scorer(accuracy_score, normalize=False), y_test=[0, 1, 1])
    (0.0, 3.0)
    >>> sklearn_scorer_range(make_scorer(accuracy_score, greater_is_better=False))
    (-1.0, 0.0)
    """
    if not type(scoring).__module__.startswith("sklearn."):
        return None
    func, sign, kwargs = (getattr(scoring, a, None) for a in ("_score_func", "_sign", "_kwargs"))
    try:
        rule = _metric_rules().get(func)
    except TypeError:  # an unhashable score function: not one of the table's
        return None
    if rule is None or sign not in (1, -1) or not isinstance(kwargs, Mapping):
        return None
    bounds = rule(kwargs, y_test)
    if bounds is None:
        return None
    lo, hi = float(bounds[0]), float(bounds[1])
    return (lo, hi) if sign == 1 else (0.0 - hi, 0.0 - lo)  # 0.0 - x: no negative zero


def outside_range(score: float, bounds: Bounds) -> bool:
    """True if ``score`` lies outside ``bounds`` by more than rounding (:data:`RANGE_TOLERANCE`, relative)."""
    lo, hi = bounds
    scale = max([1.0] + [abs(b) for b in bounds if np.isfinite(b)])
    slack = RANGE_TOLERANCE * scale
    return bool(score < lo - slack or score > hi + slack)


def _check_range(range: Any, owner: str) -> Bounds:  # noqa: A002 - the natural name
    """A declared range as two floats ``low <= high`` (infinite ends allowed: no bound on that side)."""
    try:
        lo, hi = (float(range[0]), float(range[1]))
        if len(range) != 2:
            raise ValueError
    except (TypeError, ValueError, IndexError):
        raise InvalidParameterError(
            f"The 'range' parameter of {owner} must be two numbers (low, high). Got {range!r}."
        ) from None
    if np.isnan(lo) or np.isnan(hi) or not lo <= hi:
        raise InvalidParameterError(f"The 'range' parameter of {owner} must satisfy low <= high. Got {range!r}.")
    return lo, hi


class Scorer(Frozen):
    """A callable ``scorer(model, x, y) -> float`` with a name and a known range; an immutable value.

    Parameters
    ----------
    scoring : str or callable
        A scikit-learn scorer name (``"accuracy"``, ``"neg_mean_squared_error"``, ...)
        or a callable ``(model, x, y) -> float``.
    range : (float, float), optional
        Values the score can take, declared by the caller (infinite ends: no
        bound on that side). When not given, it comes from what the scorer
        computes: scikit-learn scorers (names and ``make_scorer`` objects) whose
        metric and keyword arguments have a range known for certain (see
        :func:`sklearn_scorer_range`), else ``(-inf, inf)``: unknown, never a
        guess. The lower end is the default score of a Utility. Scores are never
        clipped: a :class:`~dvl_dask.utility.Utility` raises
        :class:`~dvl_dask.errors.ScoreOutOfRangeError` for a score outside it.
    name : str, optional
        Display name; defaults to the scorer name or the callable's name.

    Attributes
    ----------
    range : (float, float)
        The range known without the test data; :meth:`range_on` can be
        narrower (e.g. ``accuracy_score(normalize=False)`` counts at most the
        number of test points, unknown here).

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
    >>> from sklearn.metrics import accuracy_score, make_scorer
    >>> counting = Scorer(make_scorer(accuracy_score, normalize=False))
    >>> counting.range, counting.range_on([0, 1, 1, 0])
    ((-inf, inf), (0.0, 4.0))
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
        elif callable(scoring):
            _refuse_metric_function(scoring)
            self._fn = _own_copy(scoring)
            self._accuracy = False
            func = getattr(scoring, "_score_func", None)
            self.name = name or getattr(scoring, "__name__", getattr(func, "__name__", type(scoring).__name__))
        else:
            raise InvalidParameterError(
                f"The 'scoring' parameter must be a scikit-learn scorer name or a callable "
                f"(model, x, y) -> float. Got {type(scoring).__name__}."
            )
        self._declared = None if range is None else _check_range(range, "Scorer")
        self.range = self.range_on(None)
        self._token: str | None = None

    @property
    def declared_range(self) -> Bounds | None:
        """The range given as ``range=`` (the caller's claim), or None if it comes from what the scorer computes."""
        return self._declared

    def range_on(self, y_test: Any) -> Bounds:
        """The range of scores on the test targets ``y_test`` (None: not known), ``(-inf, inf)`` if unknown.

        The declared range if one was given; else the range of what the scorer
        computes (:func:`sklearn_scorer_range`), which may depend on the
        number or the classes of the test targets.
        """
        if self._declared is not None:
            return self._declared
        return sklearn_scorer_range(self._fn, y_test) or (-np.inf, np.inf)

    def __call__(self, model: Any, x: Any, y: Any) -> float:
        if getattr(self, "_accuracy", False):
            score = _plain_accuracy(model, x, y)
            if score is not None:
                return score
        return float(self._fn(model, x, y))

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("_accuracy", False)
        state.setdefault("_declared", None)
        state.setdefault("_frozen", True)
        super().__setstate__(state)

    def __dask_tokenize__(self) -> str:
        # By value: a sklearn scorer by its score function, sign, kwargs and response method
        # (make_scorer(f1_score) and make_scorer(recall_score) differ); a callable by its code
        # and captured state. Computed once, on first use (the scorer is immutable).
        # A declared range is part of the identity (it decides the default score and the range check).
        if self._token is None:
            declared = () if self._declared is None else ("declared", self._declared)
            self.__dict__["_token"] = object_token("Scorer", self._fn, self.range, *declared)
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


#: What the metrics of scikit-learn's modules need: their module names the task.
_TASK_OF_METRIC_MODULE = {
    "sklearn.metrics._classification": "classification",
    "sklearn.metrics._ranking": "classification",
    "sklearn.metrics._regression": "regression",
}


def scorer_task(scoring: Any) -> str | None:
    """``"classification"`` or ``"regression"``: the task a scorer's metric is defined for, or None if unknown.

    Known for scikit-learn scorers (names, ``make_scorer`` objects) by the
    module of their metric function, also inside :func:`compose_score`;
    callables of the user's are unknown (None).

    Examples
    --------
    >>> scorer_task("r2"), scorer_task(Scorer("accuracy")), scorer_task(squashed_r2())
    ('regression', 'classification', 'regression')
    >>> scorer_task(lambda model, x, y: 0.0) is None
    True
    """
    fn = as_scorer(scoring)._fn if isinstance(scoring, str | Scorer) else scoring
    while isinstance(fn, _Composed):
        fn = fn.scorer._fn
    func = getattr(fn, "_score_func", None)
    return _TASK_OF_METRIC_MODULE.get(getattr(func, "__module__", None) or "")


def _refuse_metric_function(scoring: Any) -> None:
    """A scikit-learn *metric* ``f(y_true, y_pred)`` given where a *scorer* ``f(model, x, y)`` is expected."""
    module = getattr(scoring, "__module__", None) or ""
    name = getattr(scoring, "__name__", None)
    if not (module.startswith("sklearn.metrics") and name and not hasattr(scoring, "_score_func")):
        return
    if module == "sklearn.metrics._scorer":
        return  # make_scorer and friends are not metrics, but neither are they scorers: caught by their call
    names = _scorer_names_of(scoring)
    negated = bool(names) and names[0].startswith("neg_")
    how = f"make_scorer({name}, greater_is_better=False)" if negated else f"make_scorer({name})"
    by_name = f" or its scorer name {names[0]!r}" if names else ""
    raise InvalidParameterError(
        f"The 'scoring' parameter of Scorer got the metric function {name}(y_true, y_pred), but a scorer is "
        f"called as scorer(model, x, y). To fix, pass sklearn.metrics.{how}{by_name}."
    )


def _scorer_names_of(metric: Callable[..., Any]) -> list[str]:
    """The scikit-learn scorer names whose metric is ``metric`` with its default keywords."""
    from sklearn.metrics import get_scorer, get_scorer_names

    return [
        candidate for candidate in get_scorer_names()
        if getattr(get_scorer(candidate), "_score_func", None) is metric
        and not getattr(get_scorer(candidate), "_kwargs", None)
    ]


def as_scorer(scoring: str | Callable[..., float] | Scorer) -> Scorer:
    """Return ``scoring`` as a :class:`Scorer`."""
    return scoring if isinstance(scoring, Scorer) else Scorer(scoring)


def sigmoid(x: float) -> float:
    """The logistic function ``1 / (1 + exp(-x))``, overflow-safe, with ``sigmoid(-inf) = 0``."""
    x = check_real(x, "x", "sigmoid")
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
    ``range``: scores are not clipped, and a :class:`~dvl_dask.utility.Utility`
    raises :class:`~dvl_dask.errors.ScoreOutOfRangeError` for a transformed
    score outside ``range``.

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
    scale = check_real(scale, "scale", "squashed_neg_mse", low=0.0, low_open=True, finite=True)
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
