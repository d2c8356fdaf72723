"""Score ranges come from what a scorer computes, are checked against scikit-learn, and are never clipped into.

Ground truth here is scikit-learn's own metric functions and ranges derived by
hand in this file (written out per case), never dvl_dask's table itself.
"""

from __future__ import annotations

import itertools
import math
import pickle
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn import metrics
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import get_scorer_names, make_scorer

from dvl_dask import Dataset, Utility
from dvl_dask.errors import InvalidParameterError, ScoreOutOfRangeError
from dvl_dask.testing.games import (
    AdditiveGame,
    AirportGame,
    MinerGame,
    ShoesGame,
    SymmetricVotingGame,
    WeightedVotingGame,
)
from dvl_dask.utility import Scorer, sklearn_scorer_range

INF = math.inf


def _k(y_true) -> int:
    return len(np.unique(y_true))


# (metric, make_scorer keywords, kind of predictions, range on y_true) -- the range written out by hand.
LABEL_CASES = [
    (metrics.accuracy_score, {}, lambda y: (0.0, 1.0)),
    (metrics.accuracy_score, {"normalize": True}, lambda y: (0.0, 1.0)),
    (metrics.accuracy_score, {"normalize": False}, lambda y: (0.0, float(len(y)))),  # a count of correct points
    (metrics.balanced_accuracy_score, {}, lambda y: (0.0, 1.0)),
    # (mean recall - 1/k) / (1 - 1/k), every recall 0: -1/(k-1), k the classes present in y_true
    (metrics.balanced_accuracy_score, {"adjusted": True}, lambda y: (-1.0 / (_k(y) - 1), 1.0)),
    (metrics.f1_score, {"average": "macro"}, lambda y: (0.0, 1.0)),
    (metrics.f1_score, {"average": "micro", "zero_division": 1}, lambda y: (0.0, 1.0)),
    (metrics.precision_score, {"average": "weighted", "zero_division": 0}, lambda y: (0.0, 1.0)),
    (metrics.recall_score, {"average": "macro", "zero_division": 1.0}, lambda y: (0.0, 1.0)),
    (metrics.jaccard_score, {"average": "weighted", "zero_division": 0}, lambda y: (0.0, 1.0)),
    (metrics.fbeta_score, {"beta": 2.0, "average": "macro", "zero_division": 0}, lambda y: (0.0, 1.0)),
    (metrics.matthews_corrcoef, {}, lambda y: (-1.0, 1.0)),
]
BINARY_LABEL_CASES = [
    (metrics.f1_score, {}, lambda y: (0.0, 1.0)),
    (metrics.precision_score, {"pos_label": 0, "zero_division": 0}, lambda y: (0.0, 1.0)),
    (metrics.recall_score, {}, lambda y: (0.0, 1.0)),
]
SCORE_CASES = [  # binary y_true, a probability-like score per point
    (metrics.roc_auc_score, {}, lambda y: (0.0, 1.0)),
    (metrics.average_precision_score, {}, lambda y: (0.0, 1.0)),
    (metrics.top_k_accuracy_score, {"k": 1}, lambda y: (0.0, 1.0)),
    (metrics.top_k_accuracy_score, {"k": 1, "normalize": False}, lambda y: (0.0, float(len(y)))),
    (metrics.log_loss, {}, lambda y: (0.0, INF)),
]
REGRESSION_CASES = [
    (metrics.r2_score, {}, lambda y: (-INF, 1.0)),
    (metrics.explained_variance_score, {}, lambda y: (-INF, 1.0)),
    (metrics.mean_squared_error, {}, lambda y: (0.0, INF)),
    (metrics.mean_absolute_error, {}, lambda y: (0.0, INF)),
    (metrics.max_error, {}, lambda y: (0.0, INF)),
    (metrics.median_absolute_error, {}, lambda y: (0.0, INF)),
]


def _ids(cases):
    return [f"{f.__name__}-{kw}" for f, kw, _ in cases]


def _check_case(metric, kwargs, expected, y_true, y_pred):
    lo, hi = expected(y_true)
    # the table, for this (metric, kwargs) and these test targets, says exactly the hand-derived range ...
    assert sklearn_scorer_range(make_scorer(metric, **kwargs), y_true) == (lo, hi)
    # ... and its sign: greater_is_better=False negates the metric
    assert sklearn_scorer_range(make_scorer(metric, greater_is_better=False, **kwargs), y_true) == (-hi, -lo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ill-defined precision etc. (zero_division) and "y_pred contains classes"
        score = float(metric(y_true, y_pred, **kwargs))
    assert lo <= score <= hi, (metric.__name__, kwargs, score)


labels = st.integers(2, 24).flatmap(
    lambda n: st.integers(2, 4).flatmap(
        lambda k: st.tuples(
            st.lists(st.integers(0, k - 1), min_size=n, max_size=n),
            st.lists(st.integers(0, k - 1), min_size=n, max_size=n),
        )
    )
)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize(("metric", "kwargs", "expected"), LABEL_CASES, ids=_ids(LABEL_CASES))
@FAST
@given(pair=labels)
def test_label_metric_ranges_hold_for_random_labels(metric, kwargs, expected, pair):
    y_true, y_pred = (np.asarray(v) for v in pair)
    if _k(y_true) < 2:
        y_true[0] = 1 - y_true[1] if y_true[1] < 2 else 0  # at least two classes in the test targets
    _check_case(metric, kwargs, expected, y_true, y_pred)


binary = st.integers(2, 24).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        st.lists(st.floats(0.01, 0.99), min_size=n, max_size=n),
    )
)


@pytest.mark.parametrize(
    ("metric", "kwargs", "expected"), BINARY_LABEL_CASES + SCORE_CASES, ids=_ids(BINARY_LABEL_CASES + SCORE_CASES)
)
@FAST
@given(triple=binary)
def test_binary_metric_ranges_hold_for_random_labels(metric, kwargs, expected, triple):
    y_true, y_pred, y_score = (np.asarray(v) for v in triple)
    y_true[:2] = [0, 1]  # both classes present (roc_auc needs them)
    predictions = y_score if (metric, kwargs, expected) in SCORE_CASES else y_pred
    _check_case(metric, kwargs, expected, y_true, predictions)


@pytest.mark.parametrize(("metric", "kwargs", "expected"), REGRESSION_CASES, ids=_ids(REGRESSION_CASES))
@FAST
@given(pair=st.integers(2, 24).flatmap(lambda n: st.tuples(
    st.lists(st.floats(-100, 100), min_size=n, max_size=n), st.lists(st.floats(-100, 100), min_size=n, max_size=n)
)))
def test_regression_metric_ranges_hold_for_random_targets(metric, kwargs, expected, pair):
    y_true, y_pred = (np.asarray(v) for v in pair)
    _check_case(metric, kwargs, expected, y_true, y_pred)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_adjusted_balanced_accuracy_lower_bound_is_attained(k):
    """Brute force over every prediction vector: the minimum is exactly -1/(k-1), the maximum 1."""
    y_true = np.arange(max(k, 4)) % k  # every class present; k^len(y_true) prediction vectors
    scores = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for y_pred in itertools.product(range(k), repeat=len(y_true)):
            scores.append(metrics.balanced_accuracy_score(y_true, y_pred, adjusted=True))
    assert min(scores) == pytest.approx(-1.0 / (k - 1)) and max(scores) == pytest.approx(1.0)
    assert sklearn_scorer_range(make_scorer(metrics.balanced_accuracy_score, adjusted=True), y_true) == (
        pytest.approx(-1.0 / (k - 1)), 1.0
    )


# Ranges of scikit-learn's named scorers (their default keyword arguments), derived by hand.
UNIT_NAMES = {
    "accuracy", "balanced_accuracy", "top_k_accuracy", "average_precision", "roc_auc", "roc_auc_ovo",
    "roc_auc_ovo_weighted", "roc_auc_ovr", "roc_auc_ovr_weighted",
    *(f"{m}{suffix}" for m in ("f1", "precision", "recall", "jaccard")
      for suffix in ("", "_macro", "_micro", "_samples", "_weighted")),
}
NEG_LOSS_NAMES = {
    "neg_log_loss", "neg_max_error", "neg_mean_absolute_error", "neg_mean_absolute_percentage_error",
    "neg_mean_gamma_deviance", "neg_mean_poisson_deviance", "neg_mean_squared_error", "neg_mean_squared_log_error",
    "neg_median_absolute_error", "neg_root_mean_squared_error", "neg_root_mean_squared_log_error",
}
NAMED = {
    **dict.fromkeys(UNIT_NAMES, (0.0, 1.0)),
    **dict.fromkeys(NEG_LOSS_NAMES, (-INF, 0.0)),
    "r2": (-INF, 1.0),
    "explained_variance": (-INF, 1.0),
    "matthews_corrcoef": (-1.0, 1.0),
}


@pytest.mark.parametrize("name", sorted(get_scorer_names()))
def test_named_scorers_have_their_known_range_or_none(name):
    assert Scorer(name).range == NAMED.get(name, (-INF, INF))


def test_unknown_combinations_give_no_range():
    weights = np.ones(4)
    for scorer in (
        make_scorer(metrics.accuracy_score, sample_weight=weights),  # weights of any sign: not known
        make_scorer(metrics.f1_score, average=None),  # one score per class, not a float
        make_scorer(metrics.roc_auc_score, max_fpr=0.5),  # keyword not in the table
        make_scorer(metrics.accuracy_score, normalize="yes"),  # not a bool: sklearn refuses it
        make_scorer(metrics.adjusted_rand_score),  # metric not in the table
        make_scorer(lambda y, p: float(np.mean(y == p))),  # a user's metric
        lambda model, x, y: 0.5,  # a plain callable
    ):
        assert sklearn_scorer_range(scorer) is None
        assert Scorer(scorer).range == (-INF, INF)
    # accuracy without normalisation counts points: without the test data its upper end is unknown
    counting = Scorer(make_scorer(metrics.accuracy_score, normalize=False))
    assert counting.range == (-INF, INF) and counting.range_on(np.zeros(7)) == (0.0, 7.0)
    # a declared range wins over the table and the test data
    assert Scorer(make_scorer(metrics.accuracy_score, normalize=False), range=(0, 3)).range_on(np.zeros(7)) == (0, 3)
    for bad in ((1.0, 0.0), (0.0, float("nan")), "ab", (1.0,)):
        with pytest.raises(InvalidParameterError, match="range"):
            Scorer("accuracy", range=bad)


# -- Utility: the game valued is the one scikit-learn scores -----------------------------------------


def _binary_data(flip_train: bool = False, n_train: int = 30, n_test: int = 19):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n_train + n_test, 2))
    y = (x[:, 0] + 0.3 * x[:, 1] > 0).astype(int)
    y_train = 1 - y[:n_train] if flip_train else y[:n_train]
    return x[:n_train], y_train, x[n_train:], y[n_train:]


def test_unnormalised_accuracy_is_scikit_learns_count():
    x_train, y_train, x_test, y_test = _binary_data()
    scorer = make_scorer(metrics.accuracy_score, normalize=False)
    u = Utility(LogisticRegression(), Dataset(x_train, y_train, x_test, y_test), scorer)
    model = LogisticRegression().fit(x_train, y_train)
    expected = metrics.accuracy_score(y_test, model.predict(x_test), normalize=False)
    assert expected > 1.0  # the issue: clipped to 1.0 by a range guessed from the metric's name
    assert u(range(len(y_train))) == expected
    assert u.scorer_range == (0.0, float(len(y_test))) and u.default_score == 0.0
    assert u.score_range == (0.0, float(len(y_test)))


def test_adjusted_balanced_accuracy_is_scikit_learns_negative_score():
    x_train, y_train, x_test, y_test = _binary_data(flip_train=True)  # a model worse than chance
    scorer = make_scorer(metrics.balanced_accuracy_score, adjusted=True)
    u = Utility(LogisticRegression(), Dataset(x_train, y_train, x_test, y_test), scorer)
    model = LogisticRegression().fit(x_train, y_train)
    expected = metrics.balanced_accuracy_score(y_test, model.predict(x_test), adjusted=True)
    assert expected < 0.0  # the issue: clipped to 0.0
    assert u(range(len(y_train))) == expected
    assert u.scorer_range == (-1.0, 1.0) and u.default_score == -1.0  # 2 test classes: -1/(2-1)


def test_adjusted_balanced_accuracy_range_follows_the_test_classes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2))
    y = np.arange(40) % 3
    u = Utility(LogisticRegression(), Dataset(x[:20], y[:20], x[20:], y[20:]),
                make_scorer(metrics.balanced_accuracy_score, adjusted=True))
    assert u.scorer_range == (-0.5, 1.0) and u.default_score == -0.5


def _fraction_correct(model, x, y):
    return float(np.mean(model.predict(x) == y))


def _count_correct(model, x, y):
    return float(np.sum(model.predict(x) == y))


def test_a_score_outside_its_declared_range_raises_and_is_never_clipped():
    data = Dataset(*_binary_data())
    wrong = Utility(LogisticRegression(), data, Scorer(_count_correct, range=(0.0, 1.0)), catch_errors=True)
    with pytest.raises(ScoreOutOfRangeError, match=r"outside the range \(0.0, 1.0\) declared"):
        wrong(range(30))  # catch_errors does not turn a wrong range into a default score
    assert isinstance(ScoreOutOfRangeError("x"), ValueError)
    right = Utility(LogisticRegression(), data, Scorer(_count_correct, range=(0.0, 19.0)))
    assert right(range(30)) > 1.0


class _Rounded:
    """A scorer a few ulps above its range's end (sums of floats in a metric)."""

    def __init__(self, excess: float) -> None:
        self.excess = excess

    def __call__(self, model, x, y) -> float:
        return 1.0 + self.excess

    def __dask_tokenize__(self):
        return ("Rounded", self.excess)


def test_rounding_beyond_a_range_end_is_kept_as_computed():
    data = Dataset(*_binary_data())
    u = Utility(LogisticRegression(), data, Scorer(_Rounded(4e-16), range=(0.0, 1.0)))
    assert u(range(30)) == 1.0 + 4e-16  # within rounding: accepted, not moved
    far = Utility(LogisticRegression(), data, Scorer(_Rounded(1e-6), range=(0.0, 1.0)))
    with pytest.raises(ScoreOutOfRangeError):
        far(range(30))


def test_scorer_and_utility_keep_their_ranges_through_pickling():
    data = Dataset(*_binary_data())
    u = Utility(LogisticRegression(), data, make_scorer(metrics.accuracy_score, normalize=False))
    clone = pickle.loads(pickle.dumps(u))
    assert clone.scorer_range == u.scorer_range == (0.0, 19.0)
    assert clone(range(30)) == u(range(30))
    declared = Scorer(_fraction_correct, range=(0, 1))
    assert pickle.loads(pickle.dumps(declared)).declared_range == (0.0, 1.0)
    # a declared range is part of the scorer's identity
    assert Utility(LogisticRegression(), data, declared).token != Utility(
        LogisticRegression(), data, Scorer(_fraction_correct), default_score=0.0
    ).token


# -- Games: declared ranges are the exact bounds over all coalitions ----------------------------------


@pytest.mark.parametrize(
    "game",
    [
        AdditiveGame([0.5, -1.0, 2.0, -0.25, 3.0]),
        AdditiveGame([1.0, 2.0, 3.0]),
        SymmetricVotingGame(5),
        WeightedVotingGame([1, 2, 3, 1], quota=4),
        WeightedVotingGame([1, 1, 1], quota=5),  # unreachable quota: the game is 0 everywhere
        ShoesGame(2, 3),
        AirportGame([100.0, 200.0, 300.0, 500.0]),
        AirportGame([-3.0, -1.0, 2.0]),
        MinerGame(5),
        MinerGame(4),
    ],
    ids=repr,
)
def test_game_ranges_are_the_exact_bounds_over_all_coalitions(game):
    n = game.n_players
    values = [game(np.array(s, dtype=np.int64)) for k in range(n + 1) for s in itertools.combinations(range(n), k)]
    assert game.score_range == (min(values), max(values))
