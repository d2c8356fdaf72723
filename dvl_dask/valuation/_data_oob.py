"""Data-OOB (Kwon & Zou 2023): out-of-bag scores of a bagged model, per training point.

Fit ``n_estimators`` copies of the utility's model on bootstrap samples of the
players; a player's value is the mean, over the models whose bootstrap sample
missed it, of how well that model predicts the player's own point(s):
``1[prediction == label]`` for classifiers, ``-(prediction - target)^2`` for
regressors, or a user's ``point_score``. Points the models get wrong out of
bag (mislabelled, atypical) score low.

Graph: blocks of estimators are tasks (block *i* draws its bootstrap samples
from child *i* of the seed, so a seed gives the same values on any scheduler);
each returns per-player power sums (to 4th powers, around one of the player's own
scores, so an offset in the scores costs no precision) and counts of out-of-bag
scores, and a tree reduction merges them exactly. ``stderr`` is the Monte Carlo error of each
mean over the estimators that left the player out.

Differences from pyDVL's ``DataOOBValuation``: the bagging is done here (from
the utility's model and data, in block tasks) instead of reading a fitted
``BaggingClassifier``; a :class:`~dvl_dask.GroupedDataset` bootstraps groups,
and a group's score is the mean score of its rows.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .._provenance import describe_utility
from ..errors import InvalidModelError, InvalidParameterError, UtilityFailureWarning
from ..keys import current_call, graph_token, lazy_method
from ..results import valuation_dataset
from ..results._schema import SAMPLE_MEAN
from ..threads import limits_blas_threads
from ..validation import (
    SeedLike,
    as_seed_sequence,
    check_positive_int,
    check_real,
    describe_point,
    seed_entropy,
)
from ._graph import block_ranges, utility_node
from ._samplers import child_seed
from ._stats import POWER_ROWS, add_powers, mean_and_stderr, power_block, reduce_power_blocks

__all__ = ["data_oob", "data_oob_block"]

PointScore = Callable[[np.ndarray, np.ndarray], np.ndarray]

#: Estimators per task when not given: bagging fits are seconds at most, so 8 per
#: task keeps scheduler overhead negligible while leaving tasks for every worker.
DEFAULT_ESTIMATORS_PER_BLOCK = 8


def _accuracy_per_point(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    return (np.asarray(y_true) == np.asarray(y_pred)).astype(np.float64)


def _neg_squared_error_per_point(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    diff = np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64)
    return -(diff.reshape(len(diff), -1) ** 2).sum(axis=1)


@limits_blas_threads
def data_oob_block(
    utility: Any,
    seed: np.random.SeedSequence,
    n_estimators: int,
    sample_size: int,
    point_score: PointScore,
) -> np.ndarray:
    """Fit ``n_estimators`` bootstrap models; return ``(POWER_ROWS, n_players)`` power sums of OOB scores.

    The block format of :func:`~dvl_dask.valuation._stats.add_powers` (sums
    around a shift per player, merged with ``merge_powers``).

    A fit that fails (e.g. a bootstrap sample holding one class for a model
    that needs two) contributes nothing and raises a
    :class:`~dvl_dask.errors.UtilityFailureWarning`.
    """
    data = utility.data.materialize()
    n = data.n_players
    grouped = data.n_samples != n
    out = power_block(n)
    rng = np.random.default_rng(seed)
    bags = [rng.integers(0, n, size=sample_size) for _ in range(n_estimators)]
    # A count per player, not np.setdiff1d: the set difference hashes 10^5 indices per
    # estimator and took 40% of a block's time at 10^5 points.
    counts = np.stack([np.bincount(in_bag, minlength=n) for in_bag in bags]) if bags else np.zeros((0, n), int)
    batched = _batched_predictions(utility, counts)
    for in_bag, bag_counts, predicted in zip(bags, counts, batched, strict=True):
        out_of_bag = np.flatnonzero(bag_counts == 0)
        if out_of_bag.size == 0:
            continue
        predict = _fit_predictor(utility, data, in_bag, grouped) if predicted is None else predicted.__getitem__
        if predict is None:
            continue
        if grouped:
            for player in out_of_bag:
                player_rows = data.train_indices(np.array([player]))
                score = float(np.mean(point_score(data.y_train[player_rows], predict(player_rows))))
                _check_finite_scores(np.array([score]), np.array([player]), utility.data_names)
                add_powers(out, player, score)
        else:
            scores = np.asarray(point_score(data.y_train[out_of_bag], predict(out_of_bag)), dtype=np.float64)
            if scores.shape != (out_of_bag.size,):
                raise InvalidParameterError(
                    f"data_oob: point_score must return one score per point, shape ({out_of_bag.size},). "
                    f"Got shape {scores.shape}."
                )
            _check_finite_scores(scores, out_of_bag, utility.data_names)
            add_powers(out, out_of_bag, scores)
    return out


def _batched_predictions(utility: Any, counts: np.ndarray) -> list[np.ndarray | None]:
    """Every bootstrap model of the block fitted as one batch when the model has a batched fit (None: fit it alone).

    Whatever the utility's scorer and cache: Data-OOB neither scores nor caches these fits.
    """
    fit_predict = getattr(utility, "fit_predict_batch", None)
    if fit_predict is not None and len(counts):
        return list(fit_predict(counts))
    return [None] * len(counts)


def _fit_predictor(utility: Any, data: Any, in_bag: np.ndarray, grouped: bool) -> Callable[[np.ndarray], Any] | None:
    """Fit a fresh model on the bootstrap rows; ``rows -> predictions`` of training rows, or None (warned)."""
    rows = data.train_indices(in_bag) if grouped else in_bag
    model = utility.model  # a fresh unfitted copy on every access
    try:
        model.fit(data.x_train[rows], data.y_train[rows])
    except Exception as exc:
        warnings.warn(
            f"data_oob: a bootstrap fit failed ({type(exc).__name__}: {exc}); the estimator is skipped.",
            UtilityFailureWarning,
            stacklevel=3,
        )
        return None
    return lambda rows: model.predict(data.x_train[rows])


def _check_finite_scores(scores: np.ndarray, players: np.ndarray, names: np.ndarray) -> None:
    """Refuse a NaN or infinite out-of-bag score, naming the first point that got one."""
    bad = ~np.isfinite(scores)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        player = int(players[first])
        raise InvalidParameterError(
            f"data_oob: the out-of-bag score of {describe_point(player, names)} is {scores[first]} "
            f"({int(bad.sum())} of {scores.size} scores of this estimator are not finite); NaN or inf would make its "
            "value meaningless. To fix, make the 'point_score' callable return finite scores for every point "
            "(e.g. handle predictions it cannot score), or check the model's predictions."
        )


def _finalize(totals: np.ndarray, sample_range: float | None) -> np.ndarray:
    """``(value, stderr, counts)`` rows from summed block statistics."""
    counts = totals[4]
    if not counts.any():
        raise InvalidModelError(
            "data_oob: no bootstrap model could be fitted and scored (every fit failed, see the warnings). "
            "To fix, check that the model fits the training data, or raise max_samples."
        )
    mean, stderr = mean_and_stderr(totals, sample_range)
    return np.stack([mean, stderr, counts])


@lazy_method
def data_oob(
    utility: Any,
    *,
    n_estimators: int = 100,
    max_samples: float = 0.8,
    seed: SeedLike = None,
    point_score: PointScore | None = None,
    estimators_per_block: int | None = None,
) -> xr.Dataset:
    """Data-OOB values (Kwon & Zou 2023) of every player, as a lazy graph.

    Parameters
    ----------
    utility : Utility
        Its (unfitted) model is bagged on its training data; its test data and
        scorer are not used: Data-OOB scores each point out of bag.
    n_estimators : int
        Number of bootstrap models (the paper uses hundreds to thousands). A
        point is out of bag of a share ``(1 - 1/n)^(max_samples n)`` ≈
        ``exp(-max_samples)`` of them (45% at 0.8), so ``counts`` is about
        ``0.45 n_estimators``.
    max_samples : float in (0, 1]
        Bootstrap sample size as a fraction of the players (drawn with replacement).
    seed : int, SeedSequence or None
        Same seed, same values on any scheduler. None draws fresh entropy,
        recorded in ``attrs["seed"]``.
    point_score : callable, optional
        ``point_score(y_true, y_pred) -> scores``, one score per point (higher
        is better). Default: ``1[y_pred == y_true]`` for classifiers,
        ``-(y_pred - y_true)^2`` (summed over outputs) for regressors.
    estimators_per_block : int, optional
        Bootstrap fits per graph task (default 8).

    Returns
    -------
    xarray.Dataset
        ``value`` (mean out-of-bag score), ``stderr`` (its Monte Carlo error)
        and ``counts`` (models that left the player out), lazy. A player that
        no model left out has ``counts == 0``, a NaN value and ``stderr =
        inf``: raise ``n_estimators``. Few out-of-bag scores never give a
        small stderr by chance (:func:`~dvl_dask.valuation._stats.guarded_stderr`):
        one score gives ``W / 2`` for scores of known width ``W`` (1 for the
        default classifier score) and ``inf`` otherwise, and agreeing scores
        give ``1.5 W / counts``, never 0. The stderr is the error of
        averaging over finitely many bootstrap models for this training set,
        not the variability over training sets. Attr ``estimate`` is
        ``"sample mean"``: runs with different seeds merge with
        :func:`~dvl_dask.results.merge_results` (``n_estimators`` adds up).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.dummy import DummyClassifier
    >>> from dvl_dask import Dataset, Utility
    >>> y = np.array([0] * 9 + [1])
    >>> u = Utility(DummyClassifier(), Dataset(np.zeros((10, 1)), y, np.zeros((2, 1)), y[:2]), "accuracy")
    >>> data_oob(u, n_estimators=50, seed=0).value.compute().round(2).values.tolist()
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    """
    owner = "data_oob"
    model = getattr(utility, "model", None)
    data = getattr(utility, "data", None)
    if model is None or data is None or not callable(getattr(model, "fit", None)):
        raise InvalidParameterError(
            f"The 'utility' argument of {owner} must be a dvl_dask.Utility (model + data): Data-OOB bags its "
            f"model. Got {type(utility).__name__}."
        )
    if not callable(getattr(model, "predict", None)):
        raise InvalidModelError(f"{owner} needs a model with predict(x); {type(model).__name__} has none.")
    if not hasattr(model, "get_params"):
        raise InvalidModelError(
            f"{owner} clones the model for every bootstrap fit (sklearn.base.clone); "
            f"{type(model).__name__} has no get_params."
        )
    n_estimators = check_positive_int(n_estimators, "n_estimators", owner)
    max_samples = check_real(max_samples, "max_samples", owner, low=0.0, high=1.0, low_open=True)
    per_block = check_positive_int(
        DEFAULT_ESTIMATORS_PER_BLOCK if estimators_per_block is None else estimators_per_block,
        "estimators_per_block",
        owner,
    )
    sample_range = None  # scores of a user's point_score or squared errors: no known bound
    if point_score is None:
        from sklearn.base import is_classifier

        point_score = _accuracy_per_point if is_classifier(model) else _neg_squared_error_per_point
        sample_range = 1.0 if point_score is _accuracy_per_point else None
    elif not callable(point_score):
        raise InvalidParameterError(
            f"The 'point_score' argument of {owner} must be a callable (y_true, y_pred) -> scores. "
            f"Got {type(point_score).__name__}."
        )
    n = data.n_players
    sample_size = max(1, math.ceil(max_samples * n))
    seq = as_seed_sequence(seed, "seed", owner)
    seed_text = seed_entropy(seq)
    name = current_call().layer("data-oob-block")
    block_fn = dask.delayed(data_oob_block, pure=True)
    u = utility_node(utility)
    blocks = [
        block_fn(u, child_seed(seq, i), stop - start, sample_size, point_score, dask_key_name=f"{name}-{i}")
        for i, (start, stop) in enumerate(block_ranges(n_estimators, per_block))
    ]
    parts = [da.from_delayed(b, shape=(POWER_ROWS, n), dtype=np.float64) for b in blocks]
    totals = reduce_power_blocks(parts)
    final = totals.map_blocks(_finalize, sample_range, dtype=np.float64)
    return valuation_dataset(
        final[0],
        final[1],
        final[2].astype(np.int64),
        data_names=data.data_names,
        method="data_oob",
        parameters={
            "n_estimators": n_estimators,
            "max_samples": max_samples,
            "point_score": getattr(point_score, "__qualname__", type(point_score).__name__),
            # Its code and captured values too: two lambdas share a name but not a score, and results
            # of different scores must not merge (a score that cannot be hashed gets a per-object token).
            "point_score_code": graph_token(point_score),
            "estimators_per_block": per_block,
        },
        seed=seed_text,
        utility_token=getattr(utility, "token", ""),
        provenance=describe_utility(utility),
        n_evaluations=n_estimators,
        estimate=SAMPLE_MEAN,
    )
