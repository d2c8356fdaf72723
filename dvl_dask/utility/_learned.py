"""Data utility learning (Wang, Yang & Jia 2021): a regressor that predicts u(S) from S.

A budget of real utility evaluations trains a regressor on coalition
indicator vectors; the fitted :class:`LearnedUtility` then answers any
coalition in microseconds and plugs into every valuation method in place of
the real utility (it has ``n_players``, ``data_names``, ``token`` and
``__call__``).

Unlike the valuation methods, :func:`learn_utility` is a *fitting step*: it
runs its training evaluations as a dask graph on the current scheduler when
called (block tasks, like every other evaluation) and returns a fitted
object, because the methods that use it need a concrete utility to build
their graphs.
"""

from __future__ import annotations

import copy
from typing import Any

import dask
import numpy as np

from .._frozen import Frozen
from .._provenance import library_versions, qualified_name
from ..errors import InvalidModelError, InvalidParameterError
from ..keys import describe_parameters, fingerprint
from ..threads import limits_blas_threads
from ..validation import (
    SeedLike,
    as_seed_sequence,
    check_coalition,
    check_model,
    check_positive_int,
    check_real,
    seed_entropy,
)

__all__ = ["LearnedUtility", "learn_utility"]

#: Coalitions evaluated per task.
COALITIONS_PER_BLOCK = 64


def _sample_coalitions(seed: np.random.SeedSequence, count: int, n: int) -> np.ndarray:
    """Boolean masks: size uniform in 0..n, then a uniform subset of that size (covers every size equally)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, n + 1, size=count)
    ranks = np.argsort(rng.random((count, n)), axis=1)
    return ranks < sizes[:, None]


@limits_blas_threads
def evaluate_masks(utility: Any, masks: np.ndarray) -> np.ndarray:
    """Real utility of each coalition given as a boolean mask row (one batch when the utility fits batches)."""
    if getattr(utility, "batched", False):
        return np.asarray(utility.evaluate_batch(masks), dtype=np.float64)
    players = np.arange(masks.shape[1])
    return np.array([utility(players[row]) for row in masks], dtype=np.float64)


def _default_regressor(seed: int) -> Any:
    from sklearn.neural_network import MLPRegressor

    return MLPRegressor(hidden_layer_sizes=(64, 32), max_iter=2000, early_stopping=False, random_state=seed)


class LearnedUtility(Frozen):
    """A fitted utility model: ``u(S) ≈ regressor.predict(indicator(S))``; an immutable value.

    Parameters
    ----------
    regressor : fitted estimator
        Predicts ``u(S)`` from 0/1 indicator rows; the utility keeps its own
        deep copy (changing yours afterwards changes nothing).
    n_players : int
    data_names : array-like
        Labels of the players.
    token : str
        Identity of how it was learned (the real utility, seed, training
        evaluations), kept as ``source_token``.
    holdout_rmse, holdout_r2 : float
        Error of the regressor on the held-out real evaluations (NaN without a holdout).
    n_evaluations : int
        Real utility evaluations spent on training and holdout.

    Notes
    -----
    ``token`` (the identity in graph keys and caches) is computed, on first
    use, from the class (:func:`dvl_dask.keys.class_token`) and its whole state:
    the class, the fitted regressor by class, parameters *and* fitted
    attributes, the source token, the players and the holdout errors, so two
    learned utilities with different fitted regressors never share one.
    Attributes cannot be assigned afterwards, and ``regressor`` returns a copy.
    """

    def __init__(
        self,
        regressor: Any,
        n_players: int,
        data_names: np.ndarray,
        token: str,
        holdout_rmse: float,
        holdout_r2: float,
        n_evaluations: int,
    ) -> None:
        check_model(regressor, "regressor", "LearnedUtility", methods=("predict",))
        try:
            self._regressor = copy.deepcopy(regressor)
        except Exception as exc:
            raise InvalidModelError(
                f"The 'regressor' argument of LearnedUtility cannot be deep-copied ({type(exc).__name__}: {exc}); "
                "the learned utility keeps its own copy so that its token stays true. To fix, use a regressor "
                "that can be copied (scikit-learn estimators can)."
            ) from exc
        self._n = check_positive_int(n_players, "n_players", "LearnedUtility")
        self._names = np.asarray(data_names)
        self.source_token = str(token)
        self.holdout_rmse = float(holdout_rmse)
        self.holdout_r2 = float(holdout_r2)
        self.n_evaluations = int(n_evaluations)

    @property
    def token(self) -> str:
        """Identity: class, fitted regressor, source token, players and errors, by value (computed once)."""
        return self._cached_state_token()

    @property
    def regressor(self) -> Any:
        """A copy of the fitted regressor (changing it does not change this utility)."""
        return copy.deepcopy(self._regressor)

    def provenance(self) -> dict[str, Any]:
        """What the token was made of: regressor class and parameters, source token, holdout errors, versions."""
        model = self._regressor
        params = model.get_params(deep=False) if callable(getattr(model, "get_params", None)) else {}
        return {
            "class": qualified_name(self),
            "token": self.token,
            "source_token": self.source_token,
            "regressor": {"class": qualified_name(model), "parameters": describe_parameters(params)},
            "n_players": self._n,
            "n_evaluations": self.n_evaluations,
            "holdout_rmse": describe_parameters(self.holdout_rmse),
            "holdout_r2": describe_parameters(self.holdout_r2),
            "versions": library_versions(),
        }

    @property
    def n_players(self) -> int:
        return self._n

    @property
    def data_names(self) -> np.ndarray:
        return self._names

    def __call__(self, indices: Any) -> float:
        players = check_coalition(indices, self._n, "LearnedUtility")  # indices or a boolean mask
        mask = np.zeros((1, self._n))
        mask[0, players] = 1.0
        return float(self._regressor.predict(mask)[0])

    def __dask_tokenize__(self) -> str:
        return self.token

    def __repr__(self) -> str:
        return (
            f"LearnedUtility(n_players={self._n}, regressor={type(self._regressor).__name__}, "
            f"holdout_rmse={self.holdout_rmse:.4g}, holdout_r2={self.holdout_r2:.3f})"
        )


def learn_utility(
    utility: Any,
    n_evaluations: int,
    *,
    regressor: Any = None,
    holdout: float = 0.2,
    seed: SeedLike = None,
) -> LearnedUtility:
    """Train a :class:`LearnedUtility` on ``n_evaluations`` real evaluations of ``utility``.

    Parameters
    ----------
    utility : Utility
        The real utility (or game).
    n_evaluations : int
        Budget of real evaluations (coalitions sampled with a uniform size,
        then uniformly among subsets of that size; the empty and full
        coalitions are always included).
    regressor : sklearn regressor, optional
        Maps 0/1 indicator vectors to utilities. Default: an ``MLPRegressor``
        with hidden layers (64, 32), as in Wang et al.'s experiments with
        small networks.
    holdout : float in [0, 1)
        Share of the evaluations kept out of training to measure the
        regressor's error (``holdout_rmse``, ``holdout_r2``).
    seed : int, SeedSequence or None
        Seeds the coalitions and the default regressor.

    Examples
    --------
    >>> from sklearn.linear_model import LinearRegression
    >>> from dvl_dask.testing.games import AdditiveGame
    >>> learned = learn_utility(AdditiveGame([1.0, 2.0, 3.0]), 40, regressor=LinearRegression(), seed=0)
    >>> round(learned([0, 2]), 6), learned.holdout_rmse < 1e-9
    (4.0, True)
    """
    owner = "learn_utility"
    if not callable(utility) or not all(hasattr(utility, a) for a in ("n_players", "data_names", "token")):
        raise InvalidParameterError(
            f"The 'utility' argument of {owner} must be a dvl_dask.Utility or a game. Got {type(utility).__name__}."
        )
    n = int(utility.n_players)
    n_evaluations = check_positive_int(n_evaluations, "n_evaluations", owner)
    holdout = check_real(holdout, "holdout", owner, low=0.0, high=1.0, high_open=True)
    n_holdout = round(holdout * n_evaluations)
    if n_evaluations - n_holdout < 3:
        raise InvalidParameterError(
            f"{owner} needs at least 3 training evaluations after the holdout; n_evaluations={n_evaluations} "
            f"with holdout={holdout} leaves {n_evaluations - n_holdout}."
        )
    seq = as_seed_sequence(seed, "seed", owner)
    sampled = _sample_coalitions(seq, n_evaluations - 2, n)
    masks = np.r_[np.zeros((1, n), bool), np.ones((1, n), bool), sampled]
    # The utility (model and data) enters the graph as ONE key that every block reads, as in the
    # valuation graphs (valuation._graph.utility_node, a layer above this one), not copied into each task.
    u = dask.delayed(utility, pure=True, name=f"utility-{utility.token}")
    blocks = [
        dask.delayed(evaluate_masks, pure=True)(u, masks[i : i + COALITIONS_PER_BLOCK])
        for i in range(0, len(masks), COALITIONS_PER_BLOCK)
    ]
    values = np.concatenate(dask.compute(*blocks))
    order = np.random.default_rng(seq.spawn(1)[0]).permutation(len(masks) - 2) + 2
    # The empty and full coalitions always train; the holdout comes from the sampled ones.
    test_rows = order[:n_holdout]
    train_rows = np.r_[[0, 1], order[n_holdout:]]
    model = _default_regressor(int(seq.generate_state(1)[0])) if regressor is None else regressor
    if not callable(getattr(model, "fit", None)) or not callable(getattr(model, "predict", None)):
        raise InvalidParameterError(
            f"The 'regressor' argument of {owner} must have fit and predict. Got {type(model).__name__}."
        )
    from sklearn.base import clone

    model = clone(model).fit(masks[train_rows].astype(np.float64), values[train_rows])
    if n_holdout:
        from sklearn.metrics import mean_squared_error, r2_score

        predicted = model.predict(masks[test_rows].astype(np.float64))
        rmse = float(np.sqrt(mean_squared_error(values[test_rows], predicted)))
        r2 = float(r2_score(values[test_rows], predicted)) if n_holdout > 1 else float("nan")
    else:
        rmse = r2 = float("nan")
    # How it was learned; the LearnedUtility's own token adds the fitted regressor's whole state to it.
    source = fingerprint("LearnedUtility", utility.token, seed_entropy(seq), masks, values, holdout)
    return LearnedUtility(model, n, utility.data_names, source, rmse, r2, len(masks))
