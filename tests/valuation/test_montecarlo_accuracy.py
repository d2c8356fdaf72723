"""Monte Carlo estimators against exact values: analytic games and brute force."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest

from dvl_dask.testing import assert_within_stderr
from dvl_dask.testing.games import AirportGame, ShoesGame, WeightedVotingGame
from dvl_dask.valuation import (
    BetaSampler,
    OwenSampler,
    RelativeTruncation,
    banzhaf,
    banzhaf_coefficient,
    beta_coefficient,
    beta_shapley,
    exact_shapley,
    msr_banzhaf,
    owen_shapley,
    permutation_shapley,
    semivalue,
    shapley_coefficient,
)

GAMES = [
    AirportGame([1.0, 2.0, 2.5, 4.0, 5.0, 7.5]),
    ShoesGame(3, 4),
    WeightedVotingGame([5, 3, 2, 2, 1, 1], quota=8),
]


def brute_force_semivalue(u, n: int, weight) -> np.ndarray:
    """sum over S ⊆ N \\ {i} of weight(|S|) (u(S ∪ i) - u(S)), by enumeration (independent of the library)."""
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            for subset in itertools.combinations(others, k):
                phi[i] += weight(n, k) * (u([*subset, i]) - u(list(subset)))
    return phi


def beta_weight(alpha, beta):
    def w(n, k):
        return math.exp(math.lgamma(k + beta) + math.lgamma(n - 1 - k + alpha) - math.lgamma(n - 1 + alpha + beta)
                        + math.lgamma(alpha + beta) - math.lgamma(alpha) - math.lgamma(beta))

    return w


SHAPLEY_ESTIMATORS = {
    "permutation": functools.partial(permutation_shapley, n_permutations=600),
    "antithetic-permutation": functools.partial(permutation_shapley, n_permutations=600, antithetic=True),
    "truncated": functools.partial(permutation_shapley, n_permutations=600, truncation=RelativeTruncation(1e-9)),
    "owen": functools.partial(owen_shapley, n_samples=600),
    "owen-grid": functools.partial(owen_shapley, n_samples=600, n_q=10),
    "owen-antithetic": functools.partial(owen_shapley, n_samples=600, n_q=10, antithetic=True),
    "semivalue-stratified": functools.partial(semivalue, coefficient=shapley_coefficient, n_samples=400,
                                              sampler="stratified"),
    "semivalue-uniform": functools.partial(semivalue, coefficient=shapley_coefficient, n_samples=3000),
    "beta(1,1)": functools.partial(beta_shapley, alpha=1, beta=1, n_samples=600),
}


@pytest.mark.parametrize("name", list(SHAPLEY_ESTIMATORS))
@pytest.mark.parametrize("game", GAMES, ids=repr)
def test_shapley_estimators_within_4_stderr(game, name):
    ds = SHAPLEY_ESTIMATORS[name](game, seed=11).compute(scheduler="sync")
    assert_within_stderr(ds, game.shapley_values(), n_stderr=4)
    assert np.all(np.isfinite(ds["stderr"].values))
    # the estimate is informative, not just wide
    assert np.max(ds["stderr"].values) < 0.5 * np.max(np.abs(game.shapley_values()))


@pytest.mark.parametrize("game", GAMES, ids=repr)
def test_banzhaf_estimators_against_brute_force(game):
    n = game.n_players
    exact = brute_force_semivalue(game, n, lambda n, k: 2.0 ** -(n - 1))
    for ds in (
        msr_banzhaf(game, n_samples=4000, seed=5),
        banzhaf(game, n_samples=500, seed=5),
        banzhaf(game, n_samples=500, seed=5, sampler="antithetic"),
        banzhaf(game, n_samples=300, seed=5, sampler="stratified"),
    ):
        assert_within_stderr(ds.compute(scheduler="sync"), exact, n_stderr=4)


@pytest.mark.parametrize("alpha, beta", [(16, 1), (4, 1), (1, 4), (2, 2)])
def test_beta_shapley_against_brute_force(alpha, beta):
    game = GAMES[0]
    exact = brute_force_semivalue(game, game.n_players, beta_weight(alpha, beta))
    ds = beta_shapley(game, alpha=alpha, beta=beta, n_samples=1500, seed=2).compute(scheduler="sync")
    assert_within_stderr(ds, exact, n_stderr=4)
    # another proposal with importance weights converges to the same values
    other = beta_shapley(game, alpha=alpha, beta=beta, n_samples=1500, seed=2, sampler=OwenSampler()).compute()
    assert_within_stderr(other, exact, n_stderr=4)


def test_log_space_coefficients_do_not_overflow():
    n = 5000
    k = np.arange(n)
    for coef in (shapley_coefficient, banzhaf_coefficient, beta_coefficient(16, 1)):
        log_w = coef(n, k)
        assert np.all(np.isfinite(log_w))
    log_q = BetaSampler(1.0, 16.0).log_proposal(n, k)
    assert np.all(np.isfinite(log_q))


def test_generic_semivalue_matches_brute_force_on_real_utility():
    from sklearn.datasets import load_iris
    from sklearn.neighbors import KNeighborsClassifier

    from dvl_dask import Dataset, Utility

    data = Dataset.from_sklearn(load_iris, train_size=8 / 150, seed=4, stratify=True)
    u = Utility(KNeighborsClassifier(n_neighbors=1), data, "accuracy")
    exact = exact_shapley(u).compute(scheduler="sync")["value"].values
    ds = semivalue(u, shapley_coefficient, n_samples=60, sampler="stratified", seed=1).compute(scheduler="threads")
    assert_within_stderr(ds, exact, n_stderr=4)
    perm = permutation_shapley(u, n_permutations=150, seed=1).compute(scheduler="threads")
    assert_within_stderr(perm, exact, n_stderr=4)


@pytest.mark.slow
def test_warm_start_stays_within_stderr_of_exact():
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from dvl_dask import Dataset, Utility

    data = Dataset.from_sklearn(load_breast_cancer, train_size=7 / 569, seed=2, stratify=True)
    data = Dataset(data.x_train, data.y_train, data.x_test[:100], data.y_test[:100], data_names=data.data_names)
    u = Utility(make_pipeline(StandardScaler(), LogisticRegression(max_iter=200)), data, "accuracy")
    exact = exact_shapley(u).compute(scheduler="threads")["value"].values
    warm = permutation_shapley(u, n_permutations=80, seed=4, warm_start=True).compute(scheduler="threads")
    assert warm.dvl.parameters["warm_start"] is True
    assert_within_stderr(warm, exact, n_stderr=4)


def test_warm_start_restarts_when_a_new_class_appears():
    """Multiclass prefixes change their class set; a warm start must not fail on it."""
    import warnings

    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from dvl_dask import Dataset, Utility
    from dvl_dask.errors import UtilityFailureWarning

    data = Dataset.from_sklearn(load_wine, train_size=9 / 178, seed=0, stratify=True)
    u = Utility(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, tol=1e-8)), data, "accuracy")
    order = np.argsort(data.y_train, kind="stable")  # classes arrive one after another
    with warnings.catch_warnings():
        warnings.simplefilter("error", UtilityFailureWarning)
        warm = u.prefix_scores(order, warm_start=True)
    cold = u.prefix_scores(order)
    assert warm.shape == cold.shape == (10,)
    np.testing.assert_allclose(warm, cold, atol=0.02)  # converged warm starts reach (nearly) the same models
