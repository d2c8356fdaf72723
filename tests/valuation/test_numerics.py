"""Numerics and published rules (issue 24): offsets, HistoryDeviation as published, merges across layouts.

Every truth is computed here, in plain float64 numpy, never by the library's own function for
the same thing.
"""

from __future__ import annotations

import json
import math

import dask
import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier
from sklearn.tree import DecisionTreeClassifier

from dvl_dask import Dataset, Utility, config
from dvl_dask.errors import SchemaError
from dvl_dask.results import merge_results
from dvl_dask.testing.games import WeightedVotingGame
from dvl_dask.valuation import (
    ConvergenceState,
    HistoryDeviation,
    MaxEvaluations,
    _classwise,
    beta_shapley,
    classwise_shapley,
    data_oob,
    group_testing_shapley,
    knn_shapley,
    permutation_shapley,
    run_until_converged,
)
from dvl_dask.valuation._stats import add_powers, mean_and_stderr, merge_powers, power_block

GAME = WeightedVotingGame([12, 11, 10, 10, 9, 9, 8, 8, 7, 6, 6, 1], quota=72)


# -- KNN-Shapley on uncentred features ----------------------------------------------------------------
def jia_brute_force(x_train, y_train, x_test, y_test, k) -> np.ndarray:
    """Jia et al. (2019) Theorem 1, neighbours by a plain float64 argsort of squared distances."""
    x_train = np.asarray(x_train, dtype=np.float64)
    x_test = np.asarray(x_test, dtype=np.float64)
    n = len(x_train)
    phi = np.zeros(n)
    for a, label in zip(x_test, y_test, strict=True):
        order = np.argsort(((x_train - a) ** 2).sum(axis=1), kind="stable")
        match = (y_train[order] == label).astype(np.float64)
        s = np.zeros(n)
        s[n - 1] = match[n - 1] * min(k, n) / (k * n)
        for i in range(n - 2, -1, -1):  # i is the 0-based rank: rank i + 1 in the paper
            s[i] = s[i + 1] + (match[i] - match[i + 1]) * min(k, i + 1) / (k * (i + 1))
        phi[order] += s
    return phi / len(x_test)


@pytest.mark.parametrize(
    ("dtype", "offset"), [(np.float32, 1e3), (np.float32, 3e3), (np.float64, 1e8), (np.float64, 0.0)]
)
@pytest.mark.parametrize("chunks", [{}, {"test_chunk_size": 7, "train_chunk_size": 45}])
def test_knn_shapley_on_offset_features_equals_float64_brute_force(rng, dtype, offset, chunks):
    # float32 around 1e3 (uncentred pixels, sensor readings) and float64 timestamps around 1e8: the
    # |b|^2 - 2 a.b ranking in the data's own precision lost 23-84% of the values here.
    x_train = (offset + rng.normal(size=(200, 4))).astype(dtype)
    x_test = (offset + rng.normal(size=(30, 4))).astype(dtype)
    y_train, y_test = rng.integers(0, 3, 200), rng.integers(0, 3, 30)
    values = knn_shapley(Dataset(x_train, y_train, x_test, y_test), KNeighborsClassifier(n_neighbors=5), **chunks)
    truth = jia_brute_force(x_train, y_train, x_test, y_test, 5)
    np.testing.assert_allclose(values.value.compute(scheduler="sync").values, truth, rtol=0, atol=1e-12)


def test_knn_shapley_with_ties_that_do_not_matter(rng):
    # integer grid features far from 0 with duplicated training points: exact ties, but tied points
    # share their label, so any order among them gives the same values (test points sit off the
    # grid's symmetry, so distinct training points are never tied)
    base = rng.integers(0, 6, size=(40, 2)).astype(np.float64)
    labels = ((7 * base[:, 0] + 3 * base[:, 1]) % 2).astype(int)  # a function of the cell
    x_train = 1e8 + np.vstack([base, base[:20]])
    y_train = np.concatenate([labels, labels[:20]])
    x_test = 1e8 + rng.integers(0, 6, size=(15, 2)).astype(np.float64) + [0.1234, 0.3141]
    y_test = rng.integers(0, 2, 15)
    values = knn_shapley(Dataset(x_train, y_train, x_test, y_test), KNeighborsClassifier(n_neighbors=3))
    truth = jia_brute_force(x_train, y_train, x_test, y_test, 3)
    np.testing.assert_allclose(values.value.compute(scheduler="sync").values, truth, rtol=0, atol=1e-12)


# -- HistoryDeviation as published ----------------------------------------------------------------------
def published_stop(history: np.ndarray, n_steps: int, rtol: float, check_every: int = 1) -> int | None:
    """Ghorbani & Zou: first t with mean_i |v_i^t - v_i^{t-n_steps}| / |v_i^t| < rtol.

    ``history[t - 1]`` holds the values after iteration ``t``. With checks every ``check_every``
    iterations only checked iterations are seen, and the value ``n_steps`` back is the one at the
    last check at or before ``t - n_steps``. 0/0 counts 0, x/0 counts inf.
    """
    for t in range(check_every, len(history) + 1, check_every):
        past_t = (t - n_steps) // check_every * check_every
        if past_t < 1:
            continue
        now, past = history[t - 1], history[past_t - 1]
        terms = []
        for a, b in zip(now, past, strict=True):
            if a == 0:
                terms.append(0.0 if b == 0 else math.inf)
            else:
                terms.append(abs(a - b) / abs(a))
        if sum(terms) / len(terms) < rtol:
            return t
    return None


def running_means(rng, n_iterations: int, n_players: int) -> np.ndarray:
    """Values after each iteration of a TMC-like run: running means of noisy marginals."""
    centres = rng.uniform(0.05, 1.0, n_players)
    marginals = centres + rng.normal(scale=3.0, size=(n_iterations, n_players))
    marginals[:, 0] = 0.0  # a null player: exactly 0 every time
    return np.cumsum(marginals, axis=0) / np.arange(1, n_iterations + 1)[:, None]


def criterion_stop(stop: HistoryDeviation, history: np.ndarray, check_every: int = 1) -> int | None:
    stop.reset()
    for t in range(check_every, len(history) + 1, check_every):
        state = ConvergenceState(history[t - 1], np.zeros(history.shape[1]), np.full(history.shape[1], t), 0, 0, 0.0)
        if stop.check(state):
            return t
    return None


@pytest.mark.parametrize(("n_steps", "rtol", "check_every"), [(100, 0.05, 1), (100, 0.05, 5), (30, 0.1, 1),
                                                              (30, 0.1, 7)])
def test_history_deviation_stops_where_the_published_rule_does(rng, n_steps, rtol, check_every):
    history = running_means(rng, 4000, 12)
    expected = published_stop(history, n_steps, rtol, check_every)
    assert expected is not None and expected > n_steps
    assert criterion_stop(HistoryDeviation(n_steps, rtol), history, check_every) == expected


def test_history_deviation_value_at_zero():
    # 0 -> 0 is no change; a value that moved to exactly 0 is an unbounded relative change
    stop = HistoryDeviation(n_steps=1, rtol=0.05)
    history = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    assert criterion_stop(stop, history) == 2
    assert criterion_stop(stop, np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])) == 3


def test_history_deviation_counts_updates_not_checks():
    # a player not updated between checks keeps its t: player 1 is updated every other check only
    stop = HistoryDeviation(n_steps=2, rtol=0.01)
    states = [([1.0, 5.0], [1, 1]), ([1.0, 5.0], [2, 1]), ([1.0, 5.0], [3, 2]), ([1.0, 5.0], [4, 2])]
    results = [stop.check(ConvergenceState(np.array(v), np.zeros(2), np.array(c), 0, 0, 0.0)) for v, c in states]
    assert results == [False, False, False, False]  # player 1 has only 2 updates: nothing 2 updates back
    assert stop.check(ConvergenceState(np.array([1.0, 5.0]), np.zeros(2), np.array([5, 3]), 0, 0, 0.0))


# -- merging runs that differ only in layout -----------------------------------------------------------
def _pooled(a, b):
    na, nb = a["counts"].values.astype(float), b["counts"].values.astype(float)
    value = (na * a["value"].values + nb * b["value"].values) / (na + nb)
    stderr = np.sqrt((na * a["stderr"].values) ** 2 + (nb * b["stderr"].values) ** 2) / (na + nb)
    return value, stderr, na + nb


def test_merge_runs_differing_in_min_blocks():
    with dask.config.set({config.MC_MIN_BLOCKS: 2}):
        a = permutation_shapley(GAME, n_permutations=40, seed=1).compute(scheduler="sync")
    with dask.config.set({config.MC_MIN_BLOCKS: 5}):
        b = permutation_shapley(GAME, n_permutations=60, seed=2).compute(scheduler="sync")
    assert json.loads(a.attrs["parameters"])["min_blocks"] == 2
    merged = merge_results(a, b)
    value, stderr, counts = _pooled(a, b)
    np.testing.assert_allclose(merged["value"].values, value, rtol=1e-14)
    np.testing.assert_allclose(merged["stderr"].values, stderr, rtol=1e-14)
    assert merged["counts"].values.tolist() == counts.tolist() == [100] * 12
    parameters = json.loads(merged.attrs["parameters"])
    assert parameters["n_permutations"] == 100 and parameters["min_blocks"] is None


def test_merge_runs_differing_in_active_set_lag():
    runs = []
    for seed, lag in ((1, 4), (2, 64)):
        with dask.config.set({config.MC_ACTIVE_SET_LAG: lag}):
            runs.append(run_until_converged("banzhaf", GAME, stop=MaxEvaluations(400), seed=seed,
                                            items_per_block=20, progress=False))
    a, b = runs
    assert json.loads(a.attrs["parameters"])["active_set_lag"] == 4
    merged = merge_results(a, b)
    value, stderr, counts = _pooled(a, b)
    np.testing.assert_allclose(merged["value"].values, value, rtol=1e-14)
    np.testing.assert_allclose(merged["stderr"].values, stderr, rtol=1e-14)
    assert merged["counts"].values.tolist() == counts.astype(int).tolist()
    assert json.loads(merged.attrs["parameters"])["active_set_lag"] is None


def test_merge_refuses_a_different_estimand():
    a = beta_shapley(GAME, n_samples=200, seed=1, alpha=16, beta=1).compute(scheduler="sync")
    b = beta_shapley(GAME, n_samples=200, seed=2, alpha=4, beta=1).compute(scheduler="sync")
    with pytest.raises(SchemaError, match="alpha"):
        merge_results(a, b)


# -- power sums around a shift -------------------------------------------------------------------------
@pytest.mark.parametrize("offset", [1e4, 1e8, -1e8])
def test_power_sums_keep_precision_under_an_offset(rng, offset):
    x = rng.normal(size=(60, 3))
    stats = []
    for shift in (0.0, offset):
        blocks = []
        for part in np.array_split(x + shift, 4):
            block = power_block(3)
            for row in part:
                add_powers(block, slice(None), row)
            blocks.append(block)
        totals = merge_powers(merge_powers(blocks[0], blocks[1]), merge_powers(blocks[2], blocks[3]))
        stats.append((mean_and_stderr(totals, None), totals))
    (_, err0), _ = stats[0]
    (mean1, err1), totals = stats[1]
    wald = x.std(axis=0, ddof=1) / np.sqrt(len(x))  # two-pass, in the test
    np.testing.assert_allclose(err0, wald, rtol=1e-12)
    np.testing.assert_allclose(err1, wald, rtol=1e-6)
    np.testing.assert_allclose(mean1 - offset, x.mean(axis=0), rtol=0, atol=1e-15 * abs(offset) * 4)
    # the 4th central moment behind the rare-jump guard, from the offset sums
    d = totals[0] / totals[4]
    m4 = totals[3] - 4 * d * totals[2] + 6 * d**2 * totals[1] - 3 * totals[4] * d**4
    np.testing.assert_allclose(m4, ((x - x.mean(axis=0)) ** 4).sum(axis=0), rtol=1e-6)


def _oob_data(rng):
    x = rng.normal(size=(40, 2))
    y = (x[:, 0] + 0.7 * rng.normal(size=40) > 0).astype(int)
    return Dataset(x, y, x[:10], y[:10])


class _OffsetAccuracy:
    def __init__(self, offset: float) -> None:
        self.offset = offset

    def __call__(self, y_true, y_pred):
        return (np.asarray(y_true) == np.asarray(y_pred)) * 0.375 + self.offset  # exact at 1e8


@pytest.mark.parametrize("offset", [1e4, 1e8])
def test_data_oob_stderr_does_not_depend_on_a_score_offset(rng, offset):
    utility = Utility(DecisionTreeClassifier(max_depth=2, random_state=0), _oob_data(rng), "accuracy")
    plain = data_oob(utility, n_estimators=120, seed=3, point_score=_OffsetAccuracy(0.0)).compute(scheduler="sync")
    moved = data_oob(utility, n_estimators=120, seed=3, point_score=_OffsetAccuracy(offset)).compute(scheduler="sync")
    assert np.isfinite(plain["stderr"].values).sum() >= 30
    np.testing.assert_allclose(moved["stderr"].values, plain["stderr"].values, rtol=1e-9)
    np.testing.assert_allclose(moved["value"].values - offset, plain["value"].values, rtol=0, atol=1e-15 * offset)


@pytest.mark.parametrize("offset", [1e4, 1e8])
def test_classwise_stderr_does_not_depend_on_an_offset_of_the_marginals(rng, monkeypatch, offset):
    x = rng.normal(size=(10, 2))
    y = np.array([0, 1] * 5)
    utility = Utility(DecisionTreeClassifier(max_depth=1, random_state=0), Dataset(x, y, x, y), "accuracy")
    plain = classwise_shapley(utility, 24, seed=5).compute(scheduler="sync")
    original = _classwise.classwise_utility

    def offset_utility(model, data, rows, label):
        # + offset per training row: every marginal contribution grows by exactly the offset
        return original(model, data, rows, label) + offset * rows.size

    monkeypatch.setattr(_classwise, "classwise_utility", offset_utility)
    moved = classwise_shapley(utility, 24, seed=5).compute(scheduler="sync")
    np.testing.assert_allclose(moved["value"].values - offset, plain["value"].values, rtol=0, atol=1e-15 * offset * 8)
    # the marginals themselves are rounded at 1e-16 * offset: that much, and no more, may differ
    np.testing.assert_allclose(moved["stderr"].values, plain["stderr"].values, rtol=1e-15 * offset * 1e3)


class _LoggedGame:
    """``u(S) = offset + sum of weights``; remembers every coalition it is asked about."""

    returns_finite_scores = True

    def __init__(self, weights, offset: float) -> None:
        self.weights = np.asarray(weights, dtype=np.float64)
        self.offset = offset
        self.calls: list[np.ndarray] = []
        self.token = dask.base.tokenize("logged-game", self.weights, offset)

    @property
    def n_players(self) -> int:
        return len(self.weights)

    @property
    def data_names(self) -> np.ndarray:
        return np.arange(self.n_players)

    def __call__(self, indices) -> float:
        members = np.asarray(indices, dtype=np.int64)
        self.calls.append(members)
        return float(self.offset + self.weights[members].sum())

    def __dask_tokenize__(self):
        return self.token


@pytest.mark.parametrize("offset", [0.0, 1e4, 1e8])
def test_group_testing_stderr_equals_a_two_pass_stderr_of_its_samples(offset):
    # The estimator itself depends on the offset (w = Z u(S) (1[i in S] - |S|/n)): the truth is the
    # two-pass standard error of the very samples it drew, rebuilt here from the coalitions it evaluated.
    game = _LoggedGame([1.0, 2.0, 0.5, 3.0, 1.5], offset)
    n = game.n_players
    ds = group_testing_shapley(game, 3000, seed=11, samples_per_block=700).compute(scheduler="sync")
    sampled = [c for c in game.calls if 0 < c.size < n]
    assert len(sampled) == 3000
    z = 2.0 * sum(1.0 / k for k in range(1, n))
    w = np.zeros((len(sampled), n))
    for t, members in enumerate(sampled):
        inside = np.zeros(n)
        inside[members] = 1.0
        w[t] = z * (offset + game.weights[members].sum()) * (inside - members.size / n)
    wald = w.std(axis=0, ddof=1) / np.sqrt(len(w))
    np.testing.assert_allclose(ds["stderr"].values, wald, rtol=1e-9)
