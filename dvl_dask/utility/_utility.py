"""Utility: model + data + scorer, a function from subsets of players to scores."""

from __future__ import annotations

import copy
import pickle
import warnings
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np

from .. import config
from .._provenance import library_versions, qualified_name
from ..data import Dataset
from ..errors import (
    FrozenInstanceError,
    InvalidDataError,
    InvalidModelError,
    InvalidParameterError,
    ScoreOutOfRangeError,
    UnusableUtilityError,
    UtilityFailureWarning,
)
from ..keys import describe_parameters, model_token, object_token
from ..validation import check_coalition, check_model, check_positive_int, describe_coalition, keyword_aliases
from ._scorers import Scorer, as_scorer, outside_range, scorer_task

__all__ = ["Utility"]


def resolve_default_score(
    scorer: Scorer, default_score: float | None, bounds: tuple[float, float] | None = None
) -> float:
    """The default score: the argument, else the configured value, else the scorer's worst score.

    ``bounds`` is the scorer's range on the utility's test data (default: ``scorer.range``).

    Raises
    ------
    InvalidParameterError
        If the value is not a finite number, or none is given and the scorer is unbounded below.
    """
    bounds = scorer.range if bounds is None else bounds
    chosen = config.get(config.UTILITY_DEFAULT_SCORE, override_with=default_score)
    if chosen is None:
        lo = bounds[0]
        if not np.isfinite(lo):
            raise InvalidParameterError(
                f"The scorer {scorer.name!r} has no known lowest score (range {bounds}), so Utility needs an "
                "explicit 'default_score' for coalitions a model cannot be fitted on (e.g. the empty one). "
                "To fix, pass default_score=<a finite score>, e.g. the score of a constant prediction "
                "(0.0 for r2), or declare the scorer's range: Scorer(..., range=(low, high))."
            )
        return float(lo)
    try:
        if isinstance(chosen, bool):
            raise TypeError("a bool is not a score")
        value = float(chosen)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"The 'default_score' parameter of Utility must be a finite number or None. Got {chosen!r}."
        ) from None
    if not np.isfinite(value):
        raise InvalidParameterError(
            f"The 'default_score' parameter of Utility must be a finite number or None. Got {chosen!r}."
        )
    return value


def _clone(model: Any) -> Any:
    if hasattr(model, "get_params"):
        from sklearn.base import clone

        return clone(model)
    return copy.deepcopy(model)


def _own_copy(model: Any) -> Any:
    """The Utility's own unfitted copy of ``model`` (scikit-learn's ``clone``, else ``copy.deepcopy``)."""
    try:
        return _clone(model)
    except Exception as exc:
        how = "sklearn.base.clone" if hasattr(model, "get_params") else "copy.deepcopy"
        raise InvalidModelError(
            f"The 'model' argument of Utility cannot be copied with {how} ({type(exc).__name__}: {exc}). Utility "
            "keeps its own copy, so that later changes to your object (set_params, attributes) cannot change "
            "its values behind its token. To fix, make the model clonable (get_params/set_params as in "
            "scikit-learn) or deep-copyable (e.g. define __deepcopy__)."
        ) from exc


#: Attributes that make up a Utility's identity (its token): fixed after construction.
_FIXED = frozenset(
    {"model", "_model", "data", "scorer", "default_score", "catch_errors", "token", "cache", "on_unusable",
     "_batched_option"}
)


class Utility:
    """The value of a coalition of players: fit ``model`` on it, score on test data.

    ``u(indices)`` clones the (unfitted) model, fits it on the training rows of
    the given players and returns ``scorer(model, x_test, y_test)``. Empty
    subsets, single-class subsets of classifiers and (with ``catch_errors``)
    failing fits or non-finite scores return ``default_score``.

    A coalition is a sequence of player indices (order and repetition are
    ignored), or a boolean mask with one entry per player (see
    :func:`dvl_dask.validation.check_coalition`); float, 2-D or out-of-range
    indices raise :class:`~dvl_dask.errors.InvalidParameterError`.

    Parameters
    ----------
    model : estimator
        A scikit-learn style model with ``fit(x, y)``. The utility keeps its
        own unfitted copy, made here: ``sklearn.base.clone`` for models with
        ``get_params`` (scikit-learn's convention), ``copy.deepcopy`` for
        other models; changing your object afterwards (``set_params``,
        attributes) changes neither the utility's values nor its token.
        Only with ``token=`` is a model that cannot be copied kept as given
        (it must then not be changed while the utility is in use).
    data : Dataset
        Training points (the players) and test data.
    scorer : str, callable or Scorer
        How to score the fitted model, e.g. ``"accuracy"``. A scikit-learn
        scorer must fit the model's task (:func:`~dvl_dask.utility.scorer_task`,
        ``sklearn.base.is_classifier``/``is_regressor``, pipelines too): a
        regression metric (``"r2"``, ``"neg_mean_*"``) on a classifier or a
        classification metric on a regressor raises
        :class:`~dvl_dask.errors.InvalidParameterError`, and so does a metric
        function ``f(y_true, y_pred)`` given instead of a scorer (use
        ``make_scorer(f)`` or its name). A classifier on continuous float
        targets raises :class:`~dvl_dask.errors.InvalidDataError`.
    default_score : float, optional
        Score of coalitions the model cannot be fitted on (the empty one, a
        single class, a failure). ``None`` takes ``dvl_dask.utility.default-score``
        if that is set, else the worst score the scorer can give: the lower end
        of its range on the test data (:attr:`scorer_range`: 0 for accuracy,
        precision, recall, f1, roc_auc; ``-1/(k-1)`` for
        ``balanced_accuracy_score(adjusted=True)`` on ``k`` test classes).
        Scorers unbounded below or of unknown range (r2, neg_mean_squared_error,
        neg_log_loss, callables without a ``range``) need an explicit finite
        value (NaN and inf are refused): the empty coalition must not receive
        the best possible score. Scores are never clipped: a score outside
        :attr:`scorer_range` raises :class:`~dvl_dask.errors.ScoreOutOfRangeError`
        (even with ``catch_errors``), since the range is a premise of the
        default score, of variance floors and of sample-size bounds.
        ``score_range`` (the range widened to include ``default_score``) lets
        estimators bound the variance of their samples.
    catch_errors : bool
        Return ``default_score`` (with a :class:`UtilityFailureWarning`) when
        fitting or scoring raises, instead of failing the whole computation.
    on_unusable : {"raise", "warn"}, optional
        What to do when the utility cannot be evaluated at all: when a fit or
        score fails (or the score is NaN), the model is also fitted and scored
        on *every* training point, once per process; if that fails too, no
        coalition can give a meaningful value. ``"raise"`` raises
        :class:`~dvl_dask.errors.UnusableUtilityError`; ``"warn"`` warns once
        and continues with ``default_score``. Default from
        ``dvl_dask.utility.on-unusable`` (``"raise"``).
    cache : CacheBackend, optional
        Memoize evaluations in this backend (keys include the data fingerprint,
        model parameters, scorer and the sorted coalition). pyDVL's name
        ``cache_backend`` is accepted. Options (averaging of stochastic fits,
        thresholds) come from ``dvl_dask.cache.*`` in the config.
    cached_func_options : CachedFuncConfig, optional
        pyDVL's options for the cache instead of the config (only with
        ``cache``); note pyDVL's default ``time_threshold`` of 0.3 s.
    token : str, optional
        Identity of the model and the scorer, for objects dvl_dask cannot hash
        deterministically (it raises :class:`~dvl_dask.errors.TokenizationError`
        saying so). Give a different token whenever the model or the scorer
        changes; the data fingerprint, ``default_score`` and ``catch_errors``
        are still part of the utility's token.
    batched : bool, optional
        ``True``: fit coalitions in batches, converting scikit-learn's
        ``LogisticRegression`` / ``Ridge`` / ``LinearRegression`` (alone or after a default
        ``StandardScaler`` in a ``Pipeline``) to their batched equivalents in
        :mod:`dvl_dask.models` (:func:`dvl_dask.models.to_batched`): parameters
        that change the optimum are refused naming the supported ones, those
        that only steer scikit-learn's solver are dropped. The utility is then
        the one built on the converted model, with its token: its fits are
        converged far tighter than scikit-learn's defaults (logistic
        regression), so its values can differ from the scikit-learn utility's,
        and the two never share cache entries or graph keys (see
        ``docs/batched-models.md``). A cache, or a scorer without a vectorised version,
        raises. ``False``: evaluate one coalition at a time even with a
        :mod:`dvl_dask.models` model (same values and token, to the solver's
        tolerance). ``None`` (default): batches exactly when the model is a
        :mod:`dvl_dask.models` model and the scorer is vectorised.

    Attributes
    ----------
    scorer_range : (float, float)
        The scorer's range on this utility's test data
        (:meth:`Scorer.range_on`; infinite ends where no bound is known).
        Every score is checked against it.

    Notes
    -----
    The data fingerprint is computed once when the Dataset is built; the
    utility's token (``__dask_tokenize__``) combines it with the model's class
    and parameters *by value* (arrays by content, nested estimators
    recursively; the code of classes defined outside installed packages) and
    the scorer (score function, sign, keyword arguments; callables by code and
    captured state), so equal utilities share graph keys and cache entries
    across processes and machines, and different ones never do. See
    :mod:`dvl_dask.keys`.

    What the token covers cannot change afterwards: the Dataset and the
    :class:`Scorer` are immutable, the model is the utility's own copy (the
    ``model`` attribute returns a fresh unfitted copy of it on every access),
    and assigning ``data``, ``scorer``, ``default_score``, ``catch_errors``,
    ``cache``, ``on_unusable`` or ``token`` raises
    :class:`~dvl_dask.errors.FrozenInstanceError`: build a new Utility instead.
    :meth:`provenance` describes what the token was made of; valuation
    results, checkpoints and cache entries record it.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.datasets import load_iris
    >>> data = Dataset.from_sklearn(load_iris, train_size=0.3, seed=1, stratify=True)
    >>> u = Utility(LogisticRegression(max_iter=500), data, "accuracy")
    >>> u([]) == 0.0 and 0.5 < u(range(data.n_players)) <= 1.0
    True
    """

    #: Calls return finite floats only (valuation methods need not check them).
    returns_finite_scores = True

    @keyword_aliases(cache_backend="cache")
    def __init__(
        self,
        model: Any,
        data: Dataset,
        scorer: str | Callable[..., float] | Scorer,
        *,
        default_score: float | None = None,
        catch_errors: bool = True,
        cache: Any = None,
        on_unusable: str | None = None,
        token: str | None = None,
        cached_func_options: Any = None,
        batched: bool | None = None,
    ) -> None:
        check_model(model, "model", "Utility")
        if batched is not None and not isinstance(batched, bool | np.bool_):
            raise InvalidParameterError(
                f"The 'batched' parameter of Utility must be True, False or None. Got {batched!r} instead."
            )
        self._batched_option = None if batched is None else bool(batched)
        if batched:
            from ..models import to_batched

            model = to_batched(model)
        if not isinstance(data, Dataset):
            raise InvalidParameterError(
                f"The 'data' argument of Utility must be a dvl_dask.Dataset. Got {type(data).__name__}. "
                "To fix, build one with Dataset.from_arrays(x, y) or Dataset(x_train, y_train, x_test, y_test)."
            )
        try:
            self._model = _own_copy(model)
        except InvalidModelError:
            if token is None:
                model_token(model)  # cannot be hashed either? say so first: token= is the fix for both
                raise
            self._model = model  # token= given: the caller names the model and keeps it unchanged
        self.data = data
        self.scorer = as_scorer(scorer)
        _check_scorer_fits_model(self.scorer, self._model)
        _check_classifier_targets(self._model, data.y_train)
        self.scorer_range = self.scorer.range_on(data.y_test)
        self.default_score = resolve_default_score(self.scorer, default_score, self.scorer_range)
        mode = config.get(config.UTILITY_ON_UNUSABLE, override_with=on_unusable)
        if mode not in ("raise", "warn"):
            raise InvalidParameterError(
                f"The 'on_unusable' parameter of Utility must be 'raise' or 'warn'. Got {mode!r} instead."
            )
        self.on_unusable = mode
        self._usable: str | None = None  # "" once the full training set fits and scores, else the problem
        if not isinstance(catch_errors, bool | np.bool_):
            raise InvalidParameterError(
                f"The 'catch_errors' parameter of Utility must be True or False. Got {catch_errors!r} instead."
            )
        self.catch_errors = bool(catch_errors)
        self._is_classifier = _is_classifier(self._model)
        self._is_sklearn = hasattr(self._model, "get_params")
        if token is not None and not (isinstance(token, str) and token):
            raise InvalidParameterError(
                f"The 'token' argument of Utility must be a non-empty string or None. Got {token!r} instead."
            )
        # The token comes from the utility's own copy: what it will fit, whatever happens to the caller's object.
        identity = ("token", token) if token is not None else (model_token(self._model), self.scorer)
        self._given_token = token is not None
        self.token = object_token(
            "Utility", data.fingerprint, identity, self.default_score, self.catch_errors
        )
        self.cache = cache
        self._memoized: Callable[[np.ndarray], float] | None = None
        if cached_func_options is not None:
            from ..cache import CachedFuncConfig

            if not isinstance(cached_func_options, CachedFuncConfig):
                raise InvalidParameterError(
                    "The 'cached_func_options' argument of Utility must be a dvl_dask.cache.CachedFuncConfig or "
                    f"None. Got {type(cached_func_options).__name__} instead."
                )
            if cache is None:
                raise InvalidParameterError(
                    "The 'cached_func_options' argument of Utility needs a cache: pass cache=<CacheBackend> "
                    "(pyDVL: cache_backend=) too."
                )
            self._cache_options = cached_func_options.memoize_options()
        if cache is not None:
            self._memoized = _memoize_for(self, cache)
        if batched:
            self._check_batchable()
        self._materialized: Dataset | None = None
        self._reset_fast_path()
        self.__dict__["_fixed"] = True

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FIXED and self.__dict__.get("_fixed", False):
            raise FrozenInstanceError(
                f"Cannot set {name!r} of a Utility after construction: its token was computed from its model, "
                "data, scorer and options, so a change would make caches and graph keys serve stale values. "
                "To fix, build a new Utility."
            )
        object.__setattr__(self, name, value)

    def _reset_fast_path(self) -> None:
        """Per-process state of the fast evaluation path (never pickled; see :meth:`_fit_score`)."""
        self._template: bytes | bool | None = None  # pickled unfitted clone; False: not picklable
        self._validated = False  # a fit + score succeeded here, so sklearn's checks ran once
        self._finite: bool | None = None  # every array of the data is finite
        self._batch: Any = None  # BatchEvaluator once built; False: the model has no batched fit
        self._batch_model: bool | None = None  # the model is a dvl_dask.models model (it has a device)

    # -- properties --------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """An unfitted copy of the utility's model (a new one on every access: changing it changes nothing)."""
        return _clone(self._model)

    @property
    def n_players(self) -> int:
        """Number of players (training points or groups)."""
        return self.data.n_players

    @property
    def data_names(self) -> np.ndarray:
        """Labels of the players."""
        return self.data.data_names

    @property
    def score_range(self) -> tuple[float, float] | None:
        """Bounds of every value ``u(S)`` can take, or None if not known to be bounded.

        :attr:`scorer_range` (the scorer's range on the test data, enforced on
        every score) widened to include ``default_score``.
        """
        lo, hi = self.scorer_range
        lo, hi = min(lo, self.default_score), max(hi, self.default_score)
        return (lo, hi) if np.isfinite(lo) and np.isfinite(hi) else None

    # -- evaluation ----------------------------------------------------------------------
    def __call__(self, indices: Iterable[int] | np.ndarray) -> float:
        """Score of the coalition ``indices`` (indices in any order, repeats ignored, or a boolean mask)."""
        players = check_coalition(indices, self.n_players, "Utility")
        if self._memoized is not None:
            return self._memoized(players)
        return self.fit_and_score(players)

    def fit_and_score(self, players: np.ndarray) -> float:
        """Fit a fresh clone on the given (canonical) players and score it; no cache."""
        if self._batch_model is None:
            from ..models import batch_spec

            self._batch_model = batch_spec(self._model) is not None
        if self._batch_model:
            # A device setting the batched models do not support is an error of the setup, not of this
            # coalition: raise it here, where catch_errors would otherwise turn it into default scores.
            from ..models import batch_device

            batch_device()
        return self._fit_score(self._fresh_model(), players, "Fitting or scoring")

    def _fresh_model(self) -> Any:
        """An unfitted copy of the model: what ``sklearn.base.clone`` gives, about 15x cheaper.

        The first call clones the model once and pickles that unfitted template;
        every later call unpickles it (35 µs instead of 500 µs for a scaler +
        logistic regression pipeline). Unpicklable models are cloned each time.
        """
        blob = self._template
        if blob is None:
            template = _clone(self._model)
            try:
                blob = pickle.dumps(template, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:
                blob = False
            self._template = blob
            return template
        if blob is False:
            return _clone(self._model)
        return pickle.loads(blob)  # our own bytes, made in this process

    def _checks_context(self) -> AbstractContextManager[Any]:
        """scikit-learn's per-fit checks, skipped once they have passed here.

        Every clone has the same parameters, so once a fit and a score succeed
        in this process, scikit-learn's parameter validation
        (``skip_parameter_validation``) is redundant; the finiteness checks of
        the data (``assume_finite``) are skipped only if every array was found
        finite (checked once). A failing fit is therefore reported as before.
        """
        if not self._validated or not self._is_sklearn:
            return nullcontext()
        import sklearn

        return sklearn.config_context(skip_parameter_validation=True, assume_finite=bool(self._finite))

    def _fit_score(self, model: Any, players: np.ndarray, what: str) -> float:
        """Fit ``model`` on the rows of ``players`` and score it, with the default-score rules."""
        data = self._numpy_data()
        rows = data.train_indices(players)
        if rows.size == 0:
            return self.default_score
        y = data.y_train[rows]
        if self._is_classifier and np.unique(y).size < 2:
            return self.default_score
        try:
            with self._checks_context():
                model.fit(data.x_train[rows], y)
                score = self.scorer(model, data.x_test, data.y_test)
        except Exception as exc:
            if not self.catch_errors:
                raise
            return self._failed(players, what, f"{type(exc).__name__}: {exc}")
        if not np.isfinite(score):
            return self._failed(players, what, f"the scorer returned {score}")
        if not self._validated:
            self._finite = all(_all_finite(a) for a in (data.x_train, data.y_train, data.x_test, data.y_test))
            self._validated = True
        if outside_range(score, self.scorer_range):
            self._out_of_range(score, players)
        return float(score)

    def _out_of_range(self, score: float, players: np.ndarray) -> None:
        """Refuse a score outside the scorer's range: the range is wrong, and a clipped score values another game."""
        declared = self.scorer.declared_range is not None
        origin = "declared for it" if declared else "known for what it computes"
        raise ScoreOutOfRangeError(
            f"The scorer {self.scorer.name!r} returned {score!r} for a coalition of {players.size} player(s), "
            f"outside the range {self.scorer_range} {origin}. dvl_dask does not clip scores (a clipped score "
            "values a different game), and the range is a premise of the default score, of variance floors "
            "and of sample-size bounds. To fix, declare the range the scorer really has, "
            "Scorer(scoring, range=(low, high)) (infinite ends allowed), or pass the scorer without a range."
        )

    def _failed(self, players: np.ndarray, what: str, problem: str) -> float:
        """A fit or score failed: raise if the utility is unusable, else warn and use the default."""
        if self._usable is None:
            self._usable = problem if players.size == self.n_players else self._probe()
        if self._usable:
            message = (
                f"This utility cannot be evaluated: fitting {type(self._model).__name__} on all "
                f"{self.n_players} players and scoring it with {self.scorer.name!r} fails "
                f"({self._usable}), so every coalition would get default_score={self.default_score} "
                "and every value would be meaningless. Common causes: features that are not a 2-D numeric "
                "array, a model without predict(), a classifier on continuous targets, a scorer that does "
                "not suit the model (e.g. 'accuracy' for a regressor) or that returns NaN. To fix, check "
                "that model.fit(x_train, y_train) and the scorer work on the full data"
            )
            if self.on_unusable == "raise":
                raise UnusableUtilityError(message + "; or pass on_unusable='warn' to continue.")
            if not getattr(self, "_warned_unusable", False):
                self._warned_unusable = True
                warnings.warn(message + ".", UtilityFailureWarning, stacklevel=4)
            return self.default_score
        warnings.warn(
            f"{what} on {players.size} player(s) failed ({problem}) for {describe_coalition(players)}; using "
            f"default_score={self.default_score}.",
            UtilityFailureWarning,
            stacklevel=4,
        )
        return self.default_score

    def _probe(self) -> str:
        """'' if a fresh model fits on every player and scores a finite value, else the problem."""
        data = self._numpy_data()
        rows = data.train_indices(np.arange(self.n_players, dtype=np.int64))
        try:
            model = _clone(self._model)
            model.fit(data.x_train[rows], data.y_train[rows])
            score = self.scorer(model, data.x_test, data.y_test)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return "" if np.isfinite(score) else f"the scorer returned {score}"

    def prefix_scores(
        self,
        order: np.ndarray,
        *,
        warm_start: bool = False,
        stop_when: Callable[[int, float], bool] | None = None,
    ) -> np.ndarray:
        """Scores of the prefixes ``order[:0], order[:1], ...`` of a permutation of players.

        Parameters
        ----------
        order : array of int
            A permutation (or any sequence) of player indices.
        warm_start : bool
            Fit every prefix starting from the previous prefix's solution: one
            model instance with its scikit-learn ``warm_start`` parameter(s) set
            to True is refitted on each growing prefix. Consecutive prefixes
            differ by one player, so solvers converge in fewer iterations. A
            classifier restarts from a fresh model whenever a prefix adds a new
            class. The cache is bypassed (warm-started fits are not the cold
            fits it keys).
        stop_when : callable, optional
            ``stop_when(step, score)`` is called after each prefix of length
            ``step >= 1``; returning True stops (truncation).

        Returns
        -------
        numpy.ndarray
            ``len(order) + 1`` scores, or fewer if ``stop_when`` stopped early.
        """
        order = np.asarray(order, dtype=np.int64)
        scores = [self(order[:0])]
        model = self._warm_model() if warm_start else None
        fitted_labels: np.ndarray | None = None
        for step in range(1, len(order) + 1):
            if model is None:
                score = self(order[:step])
            else:
                players = np.sort(order[:step])
                if self._is_classifier:
                    # A warm start needs the same classes as the previous fit: when a
                    # prefix brings a new class, start again from a fresh model.
                    data = self._numpy_data()
                    labels = np.unique(data.y_train[data.train_indices(players)])
                    if fitted_labels is not None and not np.array_equal(labels, fitted_labels):
                        model = self._warm_model()
                    fitted_labels = labels
                score = self._fit_score(model, players, "Warm-started fit")
            scores.append(score)
            if stop_when is not None and stop_when(step, score):
                break
        return np.asarray(scores, dtype=np.float64)

    # -- batches (models with a batched fit: dvl_dask.models) ----------------------------
    def _batch_evaluator(self, scoring: bool = True) -> Any:
        """The per-process :class:`~._batched.BatchEvaluator`, or None if this utility is evaluated one at a time.

        Batches need a model with a batched fit (:func:`dvl_dask.models.batch_spec`)
        and no ``batched=False``. Scored batches (``scoring``) also need a scorer
        with a vectorised version and no cache (with a cache every coalition goes
        through it, one at a time); fits that are neither scored nor cached
        (:meth:`fit_predict_batch`) do not.
        """
        if self._batch is None:
            from ..models import batch_spec
            from ._batched import BatchEvaluator

            spec = None if self.__dict__.get("_batched_option") is False else batch_spec(self._model)
            try:
                self._batch = BatchEvaluator(self, spec) if spec is not None else False
            except (TypeError, ValueError):  # e.g. features that are not numbers: one call at a time says why
                self._batch = False
        if not self._batch or (scoring and not self.batched):
            return None
        from ..models import batch_device

        batch_device()  # read at call time; an unsupported device raises, it never falls back
        return self._batch

    @property
    def batched(self) -> bool:
        """Whether :meth:`evaluate_batch` fits whole batches at once (else it evaluates one coalition at a time).

        Decided from the model, the scorer, the cache and the ``batched``
        argument only (the data are not read).
        """
        from ..models import batch_spec
        from ._batched import has_vector_metric

        if self._memoized is not None or self.__dict__.get("_batched_option") is False:
            return False
        spec = batch_spec(self._model)
        return spec is not None and has_vector_metric(self.scorer, spec)

    def _check_batchable(self) -> None:
        """``batched=True``: refuse what would make the utility evaluate one coalition at a time anyway."""
        if self._memoized is not None:
            raise InvalidParameterError(
                "Utility(..., batched=True) cannot use a cache: with a cache every coalition is evaluated one at a "
                "time, through it. To fix, drop cache= or leave batched unset."
            )
        if not self.batched:
            from ..models import VECTOR_METRICS

            raise InvalidParameterError(
                f"Utility(..., batched=True) needs a scorer with a vectorised version; {self.scorer.name!r} has "
                f"none for this model. Supported: {', '.join(sorted(VECTOR_METRICS))} (scikit-learn's scorers of "
                "those names; classification ones for LogisticRegression, regression ones for Ridge and "
                "LinearRegression). To fix, use one of them or leave batched unset."
            )

    def evaluate_batch(self, coalitions: np.ndarray | Iterable[Any]) -> np.ndarray:
        """Scores of many coalitions: boolean masks ``(B, n_players)`` or a sequence of coalitions.

        With a batched model (:mod:`dvl_dask.models`) and a vectorised scorer
        (accuracy, balanced_accuracy, neg_log_loss, r2, neg_mean_squared_error)
        the coalitions are fitted together; otherwise, and for any coalition the
        vectorised path cannot score exactly as one call would (see
        :mod:`dvl_dask.utility._batched`), each is evaluated as ``self(c)``.
        Empty and one-class coalitions get ``default_score`` either way.
        """
        masks = self._as_masks(coalitions)
        evaluator = self._batch_evaluator()
        if evaluator is None:
            return np.array([self(mask) for mask in masks], dtype=np.float64)
        return self._complete(evaluator.scores(masks), masks)

    def fit_predict_batch(self, counts: np.ndarray) -> list[np.ndarray | None]:
        """Fit one model per row of player multiplicities and predict every training row with it, in one batch.

        For bagging (Data-OOB): ``counts[b, i]`` is how often player ``i`` is in
        bootstrap sample ``b``; fit ``b`` weighs each of the player's rows by
        it, the same objective as fitting on the duplicated rows. The model
        must have a batched fit (:func:`dvl_dask.models.batch_spec`) and the
        utility must not be ``batched=False``; the scorer and the cache do not
        matter (these fits are neither scored nor cached), unlike for
        :attr:`batched`.

        Parameters
        ----------
        counts : array of int, shape (B, n_players)
            Non-negative multiplicities.

        Returns
        -------
        list
            Per fit, the model's ``predict`` on every training row
            (``(n_rows,)``: labels or targets), or None where the model has no
            batched fit, the sample holds one class, or the fit did not
            converge or failed: fit that sample one at a time.
        """
        counts = np.asarray(counts)
        if counts.ndim != 2 or counts.shape[1] != self.n_players or not np.issubdtype(counts.dtype, np.integer) \
                or (counts < 0).any():
            raise InvalidParameterError(
                "The 'counts' argument of Utility.fit_predict_batch must be non-negative integers of shape "
                f"(B, {self.n_players}). Got {counts.dtype} of shape {counts.shape}."
            )
        evaluator = self._batch_evaluator(scoring=False)
        if evaluator is None:
            return [None] * len(counts)
        return evaluator.fit_predict(counts)

    def _as_masks(self, coalitions: np.ndarray | Iterable[Any]) -> np.ndarray:
        arr = coalitions if isinstance(coalitions, np.ndarray) else None
        if arr is not None and arr.dtype == bool and arr.ndim == 2:
            if arr.shape[1] != self.n_players:
                raise InvalidParameterError(
                    f"The masks given to Utility.evaluate_batch must have one column per player ({self.n_players}). "
                    f"Got shape {arr.shape}."
                )
            return arr
        masks = np.zeros((0, self.n_players), dtype=bool) if arr is not None and arr.size == 0 else None
        if masks is not None:
            return masks
        rows = []
        for coalition in coalitions:
            mask = np.zeros(self.n_players, dtype=bool)
            mask[check_coalition(coalition, self.n_players, "Utility.evaluate_batch")] = True
            rows.append(mask)
        return np.array(rows, dtype=bool).reshape(-1, self.n_players)

    def _complete(self, scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Evaluate one at a time where the batch gave NaN (the batch scored only what it scores exactly)."""
        for j in np.flatnonzero(np.isnan(scores)):
            scores[j] = self(masks[j])
        return scores

    def batch_prefix_scores(
        self,
        orders: np.ndarray,
        *,
        warm_start: bool = True,
        stop_when: Sequence[Callable[[int, float], bool]] | None = None,
        lanes: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Prefix scores of many permutations, evaluated in lockstep: prefix ``k`` of every permutation in one batch.

        Parameters
        ----------
        orders : array of int, shape (P, L)
            Permutations (or sequences) of players.
        warm_start : bool
            Start the fit of prefix ``k`` from prefix ``k - 1``'s optimum (same
            classes only). The fits converge to the same optimum either way (to
            the solver's tolerance), in fewer Newton steps.
        stop_when : sequence of callables, optional
            One rule per permutation: ``stop_when[p](step, score)`` True drops
            permutation ``p`` from the batch (truncation). One rule each, since
            a rule may keep state along its permutation.
        lanes : int, optional
            Most permutations fitted together. None (default): all of them
            start at once, and truncation shrinks the batch. With fewer lanes
            than permutations, a permutation that stops (truncated or
            finished) hands its lane to the next one not started yet, so the
            batch stays full and the lanes are at different prefix sizes.
            Each permutation's prefixes, warm starts and ``stop_when`` calls
            are the same either way: only the scheduling of the fits changes
            (the fits agree to the solver's tolerance, scores such as accuracy
            exactly).

        Returns
        -------
        scores : ndarray, shape (P, L + 1)
            ``scores[p, k]`` is the score of ``orders[p, :k]``; NaN after a permutation stopped.
        steps : ndarray of int, shape (P,)
            Prefixes evaluated per permutation (``L`` unless stopped).
        """
        orders = np.asarray(orders, dtype=np.int64).reshape(len(orders), -1)
        n_perms, length = orders.shape
        scores = np.full((n_perms, length + 1), np.nan)
        scores[:, 0] = self(orders[:0, 0])
        steps = np.full(n_perms, length, dtype=np.int64)
        evaluator = self._batch_evaluator()
        if lanes is not None:
            lanes = check_positive_int(lanes, "lanes", "Utility.batch_prefix_scores")
            if evaluator is not None and lanes < n_perms and length:
                self._refilled_prefixes(evaluator, orders, scores, steps, lanes, warm_start, stop_when)
                return scores, steps
        alive = np.ones(n_perms, dtype=bool)
        previous: dict[int, Any] = {}
        for step in range(1, length + 1):
            idx = np.flatnonzero(alive)
            if not idx.size:
                break
            if evaluator is None:
                found = np.array([self(orders[p, :step]) for p in idx], dtype=np.float64)
            else:
                from ._batched import prefix_chunk

                found = prefix_chunk(evaluator, orders, step, alive, previous, warm_start)
                masks = np.zeros((len(idx), self.n_players), dtype=bool)
                np.put_along_axis(masks, orders[idx, :step], True, axis=1)
                found = self._complete(found, masks)
            scores[idx, step] = found
            if stop_when is not None:
                for p, score in zip(idx, found, strict=True):
                    if stop_when[p](step, float(score)):
                        alive[p] = False
                        steps[p] = step
        return scores, steps

    def _refilled_prefixes(
        self,
        evaluator: Any,
        orders: np.ndarray,
        scores: np.ndarray,
        steps: np.ndarray,
        lanes: int,
        warm_start: bool,
        stop_when: Sequence[Callable[[int, float], bool]] | None,
    ) -> None:
        """:meth:`batch_prefix_scores` with ``lanes`` permutations at a time, a finished one replaced by the next."""
        from ._batched import lane_chunk

        length = orders.shape[1]
        running = np.arange(lanes)
        position = np.ones(lanes, dtype=np.int64)  # the prefix size each lane fits next
        waiting = lanes
        previous: dict[int, Any] = {}
        while running.size:
            found = lane_chunk(evaluator, orders, running, position, previous, warm_start)
            masks = np.zeros((len(running), self.n_players), dtype=bool)
            for j, (p, k) in enumerate(zip(running, position, strict=True)):
                masks[j, orders[p, :k]] = True
            found = self._complete(found, masks)
            scores[running, position] = found
            done = position == length
            if stop_when is not None:
                for j, (p, k) in enumerate(zip(running, position, strict=True)):
                    if stop_when[p](int(k), float(found[j])):
                        done[j] = True
                        steps[p] = k
            position += 1
            for j in np.flatnonzero(done):
                previous.pop(int(running[j]), None)
                if waiting < len(orders):  # the next permutation takes the lane, from its first prefix
                    running[j], position[j] = waiting, 1
                    waiting += 1
                else:
                    running[j] = -1
            keep = running >= 0
            running, position = running[keep], position[keep]

    def _warm_model(self) -> Any:
        params = self._model.get_params(deep=True) if hasattr(self._model, "get_params") else {}
        keys = [k for k in params if k == "warm_start" or k.endswith("__warm_start")]
        if not keys:
            raise InvalidModelError(
                f"warm_start=True needs a model with a scikit-learn 'warm_start' parameter "
                f"(e.g. LogisticRegression, SGDClassifier, MLPClassifier). {type(self._model).__name__} has none. "
                "To fix, use such a model or pass warm_start=False."
            )
        model = _clone(self._model)
        model.set_params(**{k: True for k in keys})
        return model

    def _numpy_data(self) -> Dataset:
        if self._materialized is None:
            self._materialized = self.data.materialize()
        return self._materialized

    # -- hashing, pickling, display -----------------------------------------------------
    def __dask_tokenize__(self) -> str:
        return self.token

    def provenance(self) -> dict[str, Any]:
        """What the token was made of, as a JSON-serialisable dict: the readable description beside it.

        The token decides whether two utilities are the same; this says why:
        the model's class and parameters (:func:`dvl_dask.keys.describe_parameters`),
        the scorer, ``default_score`` and ``catch_errors``, the data
        (:meth:`Dataset.provenance`: fingerprint, shapes, dtypes) and the
        versions of Python, dvl_dask, numpy, scikit-learn, dask (and torch
        when imported). Valuation results keep it in the ``provenance`` attr
        (read it with ``ds.dvl.provenance``), checkpoints in their header, and
        caches once per memoized function (``MemoizedFunction.provenance()``).

        Examples
        --------
        >>> from sklearn.linear_model import LogisticRegression
        >>> from sklearn.datasets import load_iris
        >>> data = Dataset.from_sklearn(load_iris, train_size=0.3, seed=1)
        >>> p = Utility(LogisticRegression(C=2.0), data, "accuracy").provenance()
        >>> p["model"]["class"], p["model"]["parameters"]["C"], p["data"]["fingerprint"] == data.fingerprint
        ('sklearn.linear_model._logistic.LogisticRegression', 2.0, True)
        """
        found = self.__dict__.get("_provenance")
        if found is None:
            model = self._model
            if callable(getattr(model, "get_params", None)):
                parameters = describe_parameters(model.get_params(deep=False))
            else:
                parameters = describe_parameters(dict(getattr(model, "__dict__", {})))
            found = {
                "class": qualified_name(self),
                "token": self.token,
                "token_given": bool(self.__dict__.get("_given_token", False)),
                "model": {"class": qualified_name(model), "parameters": parameters},
                "scorer": self.scorer.describe(),
                "default_score": self.default_score,
                "catch_errors": self.catch_errors,
                "data": self.data.provenance(),
                "versions": library_versions(),
            }
            self._provenance = found
        return copy.deepcopy(found)

    def describe_cache_entry(self, indices: Iterable[int] | np.ndarray) -> dict[str, Any]:
        """What the cache key of a coalition is made of: key, canonical coalition, the function's provenance.

        See :meth:`dvl_dask.cache.MemoizedFunction.describe_key`; the
        ``"function"`` entry holds the record the cache keeps beside the values
        (with this utility's :meth:`provenance` under ``"owner"``).

        Raises
        ------
        InvalidParameterError
            If the utility has no cache.
        """
        if self._memoized is None:
            raise InvalidParameterError(
                "describe_cache_entry needs a Utility built with a cache (cache=<CacheBackend>); this one has none."
            )
        players = check_coalition(indices, self.n_players, "Utility.describe_cache_entry")
        return self._memoized.describe_key(players)  # type: ignore[attr-defined]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_provenance", None)
        state["_materialized"] = None
        state["_memoized"] = None
        state.pop("_warned_unusable", None)
        for key in ("_template", "_validated", "_finite", "_batch", "_batch_model"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "model" in state and "_model" not in state:  # pickled before the utility owned a copy
            state["_model"] = state.pop("model")
        state.setdefault("on_unusable", "raise")
        state.setdefault("_usable", None)
        state.setdefault("_is_sklearn", hasattr(state.get("_model"), "get_params"))
        state.setdefault("_batched_option", None)
        state.setdefault("_fixed", True)
        if "scorer_range" not in state:  # pickled before scorer_range existed
            state["scorer_range"] = state["scorer"].range
        self.__dict__.update(state)
        self._reset_fast_path()
        if self.cache is not None:
            self._memoized = _memoize_for(self, self.cache)

    def __repr__(self) -> str:
        return (
            f"Utility(model={type(self._model).__name__}, n_players={self.n_players}, "
            f"scorer={self.scorer.name!r}, token={self.token[:8]})"
        )


def _all_finite(arr: Any) -> bool:
    """True if ``arr`` is a numpy array without NaN or inf (labels and integers always are)."""
    if not isinstance(arr, np.ndarray):
        return False
    if arr.dtype.kind in "biuUS":
        return True
    if arr.dtype.kind in "fc":
        return bool(np.isfinite(arr).all())
    return False


def _model_task(model: Any) -> str | None:
    """``"classification"``, ``"regression"`` or None: what scikit-learn says the model does (pipelines too)."""
    try:
        from sklearn.base import is_classifier, is_regressor

        if is_classifier(model):
            return "classification"
        return "regression" if is_regressor(model) else None
    except Exception:  # not a scikit-learn estimator: unknown
        return None


def _check_scorer_fits_model(scorer: Scorer, model: Any, owner: str = "Utility") -> None:
    """Refuse a regression metric on a classifier and a classification metric on a regressor (``owner``: who)."""
    wanted, task = scorer_task(scorer), _model_task(model)
    if wanted is None or task is None or wanted == task:
        return
    examples = "'accuracy', 'f1' or 'neg_log_loss'" if task == "classification" else "'r2' or 'neg_mean_squared_error'"
    other = "regressor" if task == "classification" else "classifier"
    raise InvalidParameterError(
        f"The 'scorer' {scorer.name!r} of {owner} is a {wanted} metric, but the model {type(model).__name__} is a "
        f"{'classifier' if task == 'classification' else 'regressor'}: its scores would be meaningless. To fix, "
        f"use a {task} scorer ({examples}) or a {other}."
    )


def _check_classifier_targets(model: Any, y_train: Any, owner: str = "Utility") -> None:
    """Refuse a classifier on continuous training targets (every distinct value would be a class).

    Only numpy targets are checked: those of a dask array are not known without computing them.
    """
    if not isinstance(y_train, np.ndarray) or y_train.dtype.kind != "f" or _model_task(model) != "classification":
        return
    from sklearn.utils.multiclass import type_of_target

    try:
        kind = type_of_target(y_train)
    except ValueError:  # NaN/inf targets are refused by Dataset; anything else: sklearn will say
        return
    if kind.startswith("continuous"):
        raise InvalidDataError(
            f"The model {type(model).__name__} of {owner} is a classifier, but the training targets 'y_train' are "
            f"continuous (float values such as {y_train.ravel()[:3].tolist()}): every distinct value would be a "
            "class. To fix, use a regressor (and a regression scorer such as 'r2'), or pass class labels."
        )


def _is_classifier(model: Any) -> bool:
    try:
        from sklearn.base import is_classifier

        return bool(is_classifier(model))
    except Exception:  # pragma: no cover - non-sklearn objects
        return False


def _memoize_for(utility: Utility, cache: Any) -> Callable[[np.ndarray], float]:
    """Wrap ``utility.fit_and_score`` with the cache; keys come from ``dvl_dask.cache``.

    ``fit_and_score`` receives canonical (sorted, unique) indices from
    ``__call__``, so equal coalitions share a key; the key's state part is the
    utility's token (data fingerprint, model parameters, scorer). Options such
    as ``dvl_dask.cache.allow-repeated-evaluations`` are read from the config
    when the utility is built and kept (``_cache_options``), so a copy
    unpickled on a worker memoizes the same way whatever the worker's config.
    """
    from ..cache import CacheBackend, memoize

    if not isinstance(cache, CacheBackend):
        raise InvalidParameterError(
            f"The 'cache' argument of Utility must be a dvl_dask.cache.CacheBackend or None. Got "
            f"{type(cache).__name__} instead. To fix, pass InMemoryCacheBackend(), DiskCacheBackend(path) "
            "or MemcachedCacheBackend(MemcachedClientConfig(server=(host, port)))."
        )
    options = utility.__dict__.get("_cache_options")
    if options is None or "max_repetitions" not in options:  # unresolved (or pyDVL's partial) options
        memoized = memoize(utility.fit_and_score, cache, **(options or {}))
        utility._cache_options = memoized.options  # type: ignore[attr-defined]
        return memoized
    return memoize(utility.fit_and_score, cache, **options)
