"""Utility: model + data + scorer, a function from subsets of players to scores."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .. import config
from ..data import Dataset
from ..errors import InvalidModelError, InvalidParameterError, UtilityFailureWarning
from ..keys import canonical_indices, model_token, object_token
from ._scorers import Scorer, as_scorer

__all__ = ["Utility"]


def _clone(model: Any) -> Any:
    if hasattr(model, "get_params"):
        from sklearn.base import clone

        return clone(model)
    return copy.deepcopy(model)


class Utility:
    """The value of a coalition of players: fit ``model`` on it, score on test data.

    ``u(indices)`` clones the (unfitted) model, fits it on the training rows of
    the given players and returns ``scorer(model, x_test, y_test)``. Empty
    subsets, single-class subsets of classifiers and (with ``catch_errors``)
    failing fits return ``default_score``.

    Parameters
    ----------
    model : estimator
        A scikit-learn style model with ``fit(x, y)``.
    data : Dataset
        Training points (the players) and test data.
    scorer : str, callable or Scorer
        How to score the fitted model, e.g. ``"accuracy"``.
    default_score : float, optional
        Score of coalitions the model cannot be fitted on. Default from
        ``dvl_dask.utility.default-score`` (0.0).
    catch_errors : bool
        Return ``default_score`` (with a :class:`UtilityFailureWarning`) when
        fitting or scoring raises, instead of failing the whole computation.
    cache : CacheBackend, optional
        Memoize evaluations in this backend (keys include the data fingerprint,
        model parameters, scorer and the sorted coalition).
    token : str, optional
        Identity of the model and the scorer, for objects dvl_dask cannot hash
        deterministically (it raises :class:`~dvl_dask.errors.TokenizationError`
        saying so). Give a different token whenever the model or the scorer
        changes; the data fingerprint, ``default_score`` and ``catch_errors``
        are still part of the utility's token.

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

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.datasets import load_iris
    >>> data = Dataset.from_sklearn(load_iris, train_size=0.3, seed=1, stratify=True)
    >>> u = Utility(LogisticRegression(max_iter=500), data, "accuracy")
    >>> u([]) == 0.0 and 0.5 < u(range(data.n_players)) <= 1.0
    True
    """

    def __init__(
        self,
        model: Any,
        data: Dataset,
        scorer: str | Callable[..., float] | Scorer,
        *,
        default_score: float | None = None,
        catch_errors: bool = True,
        cache: Any = None,
        token: str | None = None,
    ) -> None:
        if not callable(getattr(model, "fit", None)):
            raise InvalidModelError(
                f"The 'model' argument of Utility must have a fit(x, y) method (scikit-learn API). "
                f"Got {type(model).__name__}. To fix, wrap your model in an object with fit/predict."
            )
        if not isinstance(data, Dataset):
            raise InvalidParameterError(
                f"The 'data' argument of Utility must be a dvl_dask.Dataset. Got {type(data).__name__}. "
                "To fix, build one with Dataset.from_arrays(x, y) or Dataset(x_train, y_train, x_test, y_test)."
            )
        self.model = model
        self.data = data
        self.scorer = as_scorer(scorer)
        ds = config.get(config.UTILITY_DEFAULT_SCORE, override_with=default_score)
        self.default_score = float(ds)
        self.catch_errors = bool(catch_errors)
        self._is_classifier = _is_classifier(model)
        if token is not None and not (isinstance(token, str) and token):
            raise InvalidParameterError(
                f"The 'token' argument of Utility must be a non-empty string or None. Got {token!r} instead."
            )
        identity = ("token", token) if token is not None else (model_token(model), self.scorer)
        self.token = object_token(
            "Utility", data.fingerprint, identity, self.default_score, self.catch_errors
        )
        self.cache = cache
        self._memoized: Callable[[np.ndarray], float] | None = None
        if cache is not None:
            self._memoized = _memoize_for(self, cache)
        self._materialized: Dataset | None = None

    # -- properties --------------------------------------------------------------------
    @property
    def n_players(self) -> int:
        """Number of players (training points or groups)."""
        return self.data.n_players

    @property
    def data_names(self) -> np.ndarray:
        """Labels of the players."""
        return self.data.data_names

    # -- evaluation ----------------------------------------------------------------------
    def __call__(self, indices: Iterable[int] | np.ndarray) -> float:
        """Score of the coalition ``indices`` (order and repetition are ignored)."""
        players = canonical_indices(indices)
        if players.size and (players[0] < 0 or players[-1] >= self.n_players):
            raise InvalidParameterError(
                f"Player indices must lie in [0, {self.n_players}). Got min {players[0]}, max {players[-1]}."
            )
        if self._memoized is not None:
            return self._memoized(players)
        return self.fit_and_score(players)

    def fit_and_score(self, players: np.ndarray) -> float:
        """Fit a fresh clone on the given (canonical) players and score it; no cache."""
        return self._fit_score(_clone(self.model), players, "Fitting or scoring")

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
            model.fit(data.x_train[rows], y)
            score = self.scorer(model, data.x_test, data.y_test)
        except Exception as exc:
            if not self.catch_errors:
                raise
            warnings.warn(
                f"{what} on {players.size} player(s) failed ({type(exc).__name__}: {exc}); "
                f"using default_score={self.default_score}.",
                UtilityFailureWarning,
                stacklevel=3,
            )
            return self.default_score
        return score if np.isfinite(score) else self.default_score

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

    def _warm_model(self) -> Any:
        params = self.model.get_params(deep=True) if hasattr(self.model, "get_params") else {}
        keys = [k for k in params if k == "warm_start" or k.endswith("__warm_start")]
        if not keys:
            raise InvalidModelError(
                f"warm_start=True needs a model with a scikit-learn 'warm_start' parameter "
                f"(e.g. LogisticRegression, SGDClassifier, MLPClassifier). {type(self.model).__name__} has none. "
                "To fix, use such a model or pass warm_start=False."
            )
        model = _clone(self.model)
        model.set_params(**{k: True for k in keys})
        return model

    def _numpy_data(self) -> Dataset:
        if self._materialized is None:
            self._materialized = self.data.materialize()
        return self._materialized

    # -- hashing, pickling, display -----------------------------------------------------
    def __dask_tokenize__(self) -> str:
        return self.token

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_materialized"] = None
        state["_memoized"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.cache is not None:
            self._memoized = _memoize_for(self, self.cache)

    def __repr__(self) -> str:
        return (
            f"Utility(model={type(self.model).__name__}, n_players={self.n_players}, "
            f"scorer={self.scorer.name!r}, token={self.token[:8]})"
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
    if options is None:
        memoized = memoize(utility.fit_and_score, cache)
        utility._cache_options = memoized.options  # type: ignore[attr-defined]
        return memoized
    return memoize(utility.fit_and_score, cache, **options)
