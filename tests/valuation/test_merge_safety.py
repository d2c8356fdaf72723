"""Merging only pools independent samples of one estimand; what is not a mean of samples says so (issue 24).

Every accepted merge is checked against the pooled mean and the variance of a
weighted mean of independent estimates, written out here; every refusal is
the expectation for a combination that is not a pooling of independent samples.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.neighbors import KNeighborsClassifier

from dvl_dask import Dataset, Utility
from dvl_dask.errors import InvalidParameterError, SchemaError
from dvl_dask.evaluation import point_removal_curve
from dvl_dask.results import merge_results, valuation_dataset
from dvl_dask.testing.games import AirportGame, MinerGame, ShoesGame, WeightedVotingGame
from dvl_dask.valuation import (
    FixedTruncation,
    classwise_shapley,
    data_oob,
    exact_least_core,
    exact_shapley,
    group_testing_shapley,
    knn_shapley,
    loo,
    montecarlo_least_core,
    owen_shapley,
    permutation_shapley,
)
from dvl_dask.valuation._samplers import OwenSampler

GAME = AirportGame([1.0, 2.0, 4.0, 4.5])


def _pooled(a, b):
    """Count-weighted mean and the stderr of a weighted mean of two independent estimates."""
    na, nb = a["counts"].values.astype(float), b["counts"].values.astype(float)
    # a player without samples in one run (Data-OOB: never out of bag; value NaN) takes no weight from it
    va, vb = (np.where(n > 0, ds["value"].values, 0.0) for n, ds in ((na, a), (nb, b)))
    sa, sb = (np.where(n > 0, ds["stderr"].values, 0.0) for n, ds in ((na, a), (nb, b)))
    value = (na * va + nb * vb) / (na + nb)
    stderr = np.sqrt((na * sa) ** 2 + (nb * sb) ** 2) / (na + nb)
    return value, stderr


def _check_pooled(a, b):
    merged = merge_results(a, b)
    value, stderr = _pooled(a, b)
    np.testing.assert_allclose(merged["value"].values, value, rtol=1e-12)
    np.testing.assert_allclose(merged["stderr"].values, stderr, rtol=1e-12)
    assert merged["counts"].values.tolist() == (a["counts"].values + b["counts"].values).tolist()
    assert merged.attrs["estimate"] == "sample mean"
    return merged


def _oob_utility():
    y = np.array([0] * 8 + [1] * 2)
    return Utility(DummyClassifier(), Dataset(np.zeros((10, 1)), y, np.zeros((2, 1)), y[:2]), "accuracy")


def _classwise_utility():
    x = np.array([[0.0], [0.2], [0.4], [1.0], [1.2], [1.4]])
    y = np.array([0, 0, 0, 1, 1, 1])
    return Utility(KNeighborsClassifier(n_neighbors=1), Dataset(x, y, x + 0.05, y), "accuracy")


# -- results that are not means of samples ---------------------------------------------------------------
@pytest.mark.parametrize(
    "build, reason",
    [
        (lambda: exact_shapley(GAME), "is exact"),
        (lambda: loo(GAME), "is exact"),
        (lambda: exact_least_core(GAME), "is exact"),
        (lambda: montecarlo_least_core(GAME, 16, seed=1), "sampled constraints"),
    ],
    ids=["exact_shapley", "loo", "exact_least_core", "montecarlo_least_core"],
)
def test_merge_refuses_what_is_not_a_mean_of_samples(build, reason):
    a = build().compute(scheduler="sync")
    b = build().compute(scheduler="sync")
    with pytest.raises(InvalidParameterError, match=reason):
        merge_results(a, b)


def test_merge_refuses_two_least_core_runs_of_different_seeds_and_block_sizes():
    # not the same samples, and block_size is layout: still refused, because a solution is not a mean
    a = montecarlo_least_core(GAME, 16, seed=1, block_size=4).compute(scheduler="sync")
    b = montecarlo_least_core(GAME, 16, seed=2, block_size=8).compute(scheduler="sync")
    with pytest.raises(InvalidParameterError, match="not a mean of samples"):
        merge_results(a, b)


def test_merge_refuses_knn_shapley_and_says_its_zero_stderr_is_exact():
    x = np.array([[0.0], [1.0], [5.0]])
    y = np.array([0, 1, 1])
    ds = knn_shapley(Dataset(x, y, np.array([[0.2]]), np.array([0])), KNeighborsClassifier(n_neighbors=1)).compute()
    # brute force: with K=1 only the nearest point (0) ever decides the single test point, and it is correct
    np.testing.assert_array_equal(ds["value"].values, [1.0, 0.0, 0.0])
    assert np.all(ds["stderr"].values == 0)
    assert ds.attrs["estimate"] == "exact" and "no sampling error" in ds.attrs["stderr_note"]
    with pytest.raises(InvalidParameterError, match="is exact"):
        ds.dvl.merge(ds.copy())


def test_exact_methods_state_what_their_zero_stderr_means():
    for ds in (exact_shapley(GAME), loo(GAME), exact_least_core(GAME)):
        assert ds.attrs["estimate"] == "exact"
        assert np.all(ds["stderr"].values == 0)
    assert "no sampling error" in exact_shapley(GAME).attrs["stderr_note"]


def test_merge_refuses_results_without_seed_or_kind():
    def result(seed, **kwargs):
        return valuation_dataset(np.ones(2), np.full(2, 0.1), np.full(2, 10), data_names=["a", "b"],
                                 method="mine", seed=seed, **kwargs)

    with pytest.raises(InvalidParameterError, match="records no seed"):
        merge_results(result(None, estimate="sample mean"), result("2", estimate="sample mean"))
    with pytest.raises(InvalidParameterError, match="does not record what kind"):
        merge_results(result("1"), result("2"))
    with pytest.raises(SchemaError, match="'estimate'"):
        result("1", estimate="a mean, probably")
    merged = merge_results(result("1", estimate="sample mean"), result("2", estimate="sample mean"))
    assert merged["counts"].values.tolist() == [20, 20]
    np.testing.assert_allclose(merged["stderr"].values, np.sqrt(2 * (10 * 0.1) ** 2) / 20)


def test_results_written_before_the_estimate_attr_are_judged_by_their_method():
    exact = exact_shapley(GAME).compute(scheduler="sync")
    del exact.attrs["estimate"]
    with pytest.raises(InvalidParameterError, match="is exact"):
        merge_results(exact, exact.copy())
    a = permutation_shapley(GAME, n_permutations=10, seed=1).compute(scheduler="sync")
    b = permutation_shapley(GAME, n_permutations=10, seed=2).compute(scheduler="sync")
    del a.attrs["estimate"], b.attrs["estimate"]
    _check_pooled(a, b)


# -- the same samples twice ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "build",
    [
        lambda seed: permutation_shapley(GAME, n_permutations=12, seed=seed),
        lambda seed: owen_shapley(GAME, n_samples=12, n_q=3, seed=seed),
        lambda seed: group_testing_shapley(GAME, 40, seed=seed),
        lambda seed: data_oob(_oob_utility(), n_estimators=6, seed=seed),
        lambda seed: classwise_shapley(_classwise_utility(), 4, seed=seed),
    ],
    ids=["permutation", "owen-grid", "group-testing", "data-oob", "classwise"],
)
def test_same_seed_is_refused_other_seeds_pool(build):
    a = build(1).compute(scheduler="sync")
    with pytest.raises(InvalidParameterError, match="share samples"):
        merge_results(a, build(1).compute(scheduler="sync"))
    b = build(2).compute(scheduler="sync")
    _check_pooled(a, b)


def test_seed_whose_entropy_is_a_list_is_one_seed():
    ss = np.random.SeedSequence([1, 2])
    a = data_oob(_oob_utility(), n_estimators=6, seed=ss).compute(scheduler="sync")
    assert a.attrs["seed"] == "[1, 2]"
    b = data_oob(_oob_utility(), n_estimators=6, seed=1).compute(scheduler="sync")
    merged = _check_pooled(a, b)  # was refused: "[1, 2]" was read as the two seeds 1 and 2
    assert json.loads(merged.attrs["seed"]) == ["[1, 2]", "1"]
    with pytest.raises(InvalidParameterError, match="share samples"):
        merge_results(a, a.copy())
    with pytest.raises(InvalidParameterError, match="share samples"):
        merge_results(merged, b)


def test_merged_results_merge_again_and_remember_every_seed():
    a, b, c = (data_oob(_oob_utility(), n_estimators=n, seed=s).compute(scheduler="sync")
               for n, s in ((6, 1), (8, 2), (10, 3)))
    ab = _check_pooled(a, b)  # budgets differ: n_estimators adds up
    assert json.loads(ab.attrs["parameters"])["n_estimators"] == 14
    abc = _check_pooled(ab, c)  # the merged result's open-ended seed ranges were unreadable
    assert json.loads(abc.attrs["seed"]) == ["1", "2", "3"]
    with pytest.raises(InvalidParameterError, match="share samples"):
        merge_results(abc, b)


def test_merge_refuses_different_point_scores_with_the_same_name():
    u = _oob_utility()
    a = data_oob(u, n_estimators=6, seed=1, point_score=lambda t, p: (t == p).astype(float)).compute(scheduler="sync")
    b = data_oob(u, n_estimators=6, seed=2, point_score=lambda t, p: (t != p).astype(float)).compute(scheduler="sync")
    assert json.loads(a.attrs["parameters"])["point_score"] == json.loads(b.attrs["parameters"])["point_score"]
    with pytest.raises(SchemaError, match="point_score_code"):
        merge_results(a, b)


# -- what a merge keeps -------------------------------------------------------------------------------------
def test_merge_keeps_the_bias_of_truncated_runs():
    a = permutation_shapley(GAME, n_permutations=10, seed=1, truncation=FixedTruncation(0.5)).compute(
        scheduler="sync")
    b = permutation_shapley(GAME, n_permutations=10, seed=2, truncation=FixedTruncation(0.5)).compute(
        scheduler="sync")
    merged = _check_pooled(a, b)
    assert merged.attrs["biased"] is True and merged.attrs["bias"].startswith("FixedTruncation(fraction=0.5)")
    # a part written without the flag does not wash out the other's
    del a.attrs["biased"], a.attrs["bias"]
    merged = merge_results(a, b)
    assert merged.attrs["biased"] is True and "FixedTruncation" in merged.attrs["bias"]
    unbiased = merge_results(*(permutation_shapley(GAME, n_permutations=10, seed=s).compute(scheduler="sync")
                               for s in (1, 2)))
    assert unbiased.attrs["biased"] is False and unbiased.attrs["bias"] == ""


def test_effective_sample_size_is_that_of_the_pooled_counts():
    def result(counts, seed):
        return valuation_dataset(np.zeros(2), np.ones(2), np.array(counts), data_names=["a", "b"], method="m",
                                 seed=seed, estimate="sample mean",
                                 extra_attrs={"effective_sample_size": max(counts)})

    merged = merge_results(result([10, 2], "1"), result([2, 10], "2"))
    assert merged.attrs["effective_sample_size"] == 12  # was 20: no player has 20 samples


def test_merge_drops_what_describes_one_run():
    a = permutation_shapley(GAME, n_permutations=10, seed=1).compute(scheduler="sync")
    b = permutation_shapley(GAME, n_permutations=10, seed=2).compute(scheduler="sync")
    a.attrs.update(checkpoint="/tmp/a.zarr", stopping_criterion="MaxEvaluations(10)")
    merged = merge_results(a, b)
    assert "checkpoint" not in merged.attrs and "stopping_criterion" not in merged.attrs


# -- Owen sampling on a grid ----------------------------------------------------------------------------------
def _shapley_by_enumeration(game):
    n = game.n_players
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            for s in itertools.combinations(others, k):
                weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
                phi[i] += weight * (game([*s, i]) - game(list(s)))
    return phi


@pytest.mark.parametrize("n_q", [1, 2, 3, 7])
def test_owen_grid_estimator_is_unbiased(n_q):
    """The exact expectation over the grid and every coalition equals the Shapley value (no quadrature bias)."""
    game = WeightedVotingGame([3, 2, 2, 1, 1], quota=5)
    n = game.n_players
    sampler = OwenSampler(n_q=n_q)
    grid = (np.arange(n_q) + 0.5) / n_q
    expected = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            # the weight the estimator gives a marginal on a coalition of size k (Shapley / its proposal)
            log_weight = -math.log(n) - math.log(math.comb(n - 1, k)) - sampler.log_proposal(n, np.array([k]))[0]
            for s in itertools.combinations(others, k):
                # probability of drawing this S \ {i}: q uniform on the grid, each other player w.p. q
                prob = np.mean(grid**k * (1 - grid) ** (n - 1 - k))
                expected[i] += prob * math.exp(log_weight) * (game([*s, i]) - game(list(s)))
    np.testing.assert_allclose(expected, _shapley_by_enumeration(game), rtol=1e-12, atol=1e-12)
    # and a quadrature over the grid (equal weights, no importance correction) would be biased:
    quadrature = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            prob = np.mean(grid**k * (1 - grid) ** (n - 1 - k))
            for s in itertools.combinations(others, k):
                quadrature[i] += prob * (game([*s, i]) - game(list(s)))
    if n_q < 3:
        assert np.abs(quadrature - _shapley_by_enumeration(game)).max() > 1e-3
    ds = owen_shapley(game, n_samples=8, n_q=n_q, seed=0)
    assert ds.attrs["biased"] is False and ds.attrs["bias"] == ""


# -- evaluation curves ----------------------------------------------------------------------------------------
def test_curve_spread_is_unknown_where_there_is_one_curve():
    game = ShoesGame(2, 2)
    values = exact_shapley(game)
    curve = point_removal_curve(values, game, fractions=[0.0, 0.5], n_random=1, seed=0).compute(scheduler="sync")
    assert np.all(np.isnan(curve["score_std"].values))  # was 0: one curve shows no spread
    curve = point_removal_curve(values, game, fractions=[0.0, 0.5], n_random=4, seed=0).compute(scheduler="sync")
    assert np.all(np.isnan(curve["score_std"].sel(order=["highest", "lowest"]).values))
    random = curve["score_std"].sel(order="random").values
    assert random[0] == 0.0  # nothing removed: every random curve starts at u(N), a measured spread of 0
    assert "not the standard error of their mean" in curve.attrs["score_std_note"]


# -- least core spread --------------------------------------------------------------------------------------
def test_least_core_spread_is_infinite_when_a_resample_leaves_a_player_unconstrained():
    from dvl_dask.valuation._least_core import bootstrap_spread

    # player 2 is in one sampled proper coalition only: a resample misses it with probability
    # (1 - 1/4)^4 = 0.32, and then x_2 is unbounded below; 50 resamples all keep it with probability 4e-9
    rows = np.array([[1, 0, 0, 1.0], [0, 1, 0, 1.0], [1, 1, 0, 2.0], [1, 0, 1, 2.0], [1, 1, 1, 3.0]])
    spread = bootstrap_spread(rows, 3, 50, np.random.SeedSequence(0))
    assert np.all(np.isinf(spread))
    # every player in several coalitions of a constant-sum additive game: every resample has one solution
    rows = np.array([[1, 0, 0, 1.0], [0, 1, 0, 1.0], [0, 0, 1, 1.0]] * 4 + [[1, 1, 1, 3.0]])
    np.testing.assert_allclose(bootstrap_spread(rows, 3, 20, np.random.SeedSequence(0)), 0.0, atol=1e-7)


def test_least_core_spread_is_lazy_seeded_and_positive():
    from dvl_dask.testing import raise_if_dask_computes

    game = WeightedVotingGame([3, 2, 2, 1, 1], quota=5)
    with raise_if_dask_computes():
        lazy = montecarlo_least_core(game, 100, seed=1, n_bootstrap=20)
    a = lazy.compute(scheduler="sync")
    b = montecarlo_least_core(game, 100, seed=1, n_bootstrap=20).compute(scheduler="sync")
    c = montecarlo_least_core(game, 100, seed=2, n_bootstrap=20).compute(scheduler="sync")
    np.testing.assert_array_equal(a["stderr"].values, b["stderr"].values)
    assert not np.array_equal(a["stderr"].values, c["stderr"].values)
    assert np.all(np.isfinite(a["stderr"].values)) and np.all(a["stderr"].values > 0)
    assert a.attrs["estimate"] == "sampled solution" and "bootstrap spread" in a.attrs["stderr_note"]
    with pytest.raises(InvalidParameterError, match="n_bootstrap"):
        montecarlo_least_core(game, 100, seed=1, n_bootstrap=1)


@pytest.mark.slow
@pytest.mark.parametrize("game", ["miner", "voting"])
def test_least_core_spread_is_calibrated_against_the_exact_least_core(game):
    """Over seeds, the error of the MC least core around the exact one is of the size of the reported spread."""
    game = MinerGame(5) if game == "miner" else WeightedVotingGame([3, 2, 2, 1, 1], quota=5)
    exact = exact_least_core(game).compute(scheduler="sync")["value"].values
    errors, spreads = [], []
    for seed in range(20):
        ds = montecarlo_least_core(game, 20 * game.n_players, seed=seed, n_bootstrap=30).compute(scheduler="sync")
        errors.append(ds["value"].values - exact)
        spreads.append(ds["stderr"].values)
    errors, spreads = np.array(errors), np.array(spreads)
    assert np.all(np.isfinite(spreads))
    rmse = np.sqrt((errors**2).mean(axis=0))
    rms_spread = np.sqrt((spreads**2).mean(axis=0))
    assert np.all(rmse <= 1.5 * rms_spread)  # measured at most 1.25 (docstring of montecarlo_least_core)
    assert (np.abs(errors) <= 2 * spreads + 1e-9).mean() >= 0.75  # measured 84% to 100%
