"""Methods pyDVL 0.10 has that dvl_dask lacked (issue 28), each against a truth written here.

Truths are brute force over all permutations or all coalitions of a tiny game,
or closed forms derived in the comments; never the library's own code for the
same quantity.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from dvl_dask.errors import InvalidParameterError
from dvl_dask.testing.games import AdditiveGame, AirportGame, SymmetricVotingGame
from dvl_dask.valuation import (
    DeltaShapleySampleSize,
    DeviationTruncation,
    HarmonicSampleSize,
    MaxChecks,
    PowerLawSampleSize,
    StratifiedPermutationSampler,
    StratifiedSampler,
    VRDSSampler,
    delta_shapley,
    load_checkpoint,
    permutation_shapley,
    run_until_converged,
    semivalue,
    shapley_coefficient,
)


# -- DeviationTruncation ---------------------------------------------------------------------------
def _deviation_truth(game, burn_in_fraction: float, sigmas: float) -> np.ndarray:
    """Expected truncated marginals over all n! permutations, with pyDVL's rule written out."""
    n = game.n_players
    total = game(np.arange(n))
    out = np.zeros(n)
    perms = list(itertools.permutations(range(n)))
    for perm in perms:
        previous, scores = game([]), []
        for step in range(1, n + 1):
            score = game(list(perm[:step]))
            out[perm[step - 1]] += score - previous
            previous = score
            scores.append(score)
            std = float(np.std(scores))  # population std of the prefix scores so far
            if len(scores) >= burn_in_fraction * n and abs(score - total) < sigmas * std:
                break  # the remaining players get 0
    return out / len(perms)


def test_deviation_truncation_rule_by_hand():
    stop = DeviationTruncation(0.5, sigmas=2.0).checker(4, total=10.0)
    # scores 0 (count 1 < burn-in 2), then 9: std of (0, 9) is 4.5, |9 - 10| < 9 -> stop
    assert [stop(1, 0.0), stop(2, 9.0)] == [False, True]
    fresh = DeviationTruncation(0.5, sigmas=2.0).checker(4, total=10.0)
    assert fresh(1, 9.0) is False  # state does not leak between permutations


def test_deviation_truncation_converges_to_its_biased_expectation():
    game = AdditiveGame([4.0, 4.0, 4.0, 0.5])
    truth = _deviation_truth(game, 0.25, 0.5)
    assert not np.allclose(truth, game.shapley_values())  # the rule really truncates this game
    ds = permutation_shapley(
        game, n_permutations=600, seed=3, truncation=DeviationTruncation(0.25, sigmas=0.5)
    ).compute(scheduler="sync")
    assert np.all(np.abs(ds.value.values - truth) <= 4.5 * ds.stderr.values + 1e-12)
    assert ds.attrs["biased"] is True or ds.attrs["biased"] == 1
    assert ds.attrs["bias"].startswith("DeviationTruncation(burn_in_fraction=0.25, sigmas=0.5)")


@pytest.mark.parametrize(("kwargs", "name"), [({"burn_in_fraction": 1.5}, "burn_in_fraction"),
                                              ({"burn_in_fraction": 0.1, "sigmas": 0.0}, "sigmas")])
def test_deviation_truncation_bad_input(kwargs, name):
    with pytest.raises(InvalidParameterError, match=name):
        DeviationTruncation(**kwargs)


# -- brute-force truths ----------------------------------------------------------------------------
def _size_means(game) -> np.ndarray:
    """``means[i, k]``: average marginal of player i over all coalitions of size k of the others."""
    n = game.n_players
    means = np.zeros((n, n))
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            subsets = list(itertools.combinations(others, k))
            means[i, k] = np.mean([game([*s, i]) - game(list(s)) for s in subsets])
    return means


def _shapley_truth(game) -> np.ndarray:
    return _size_means(game).mean(axis=1)  # Shapley: each size has weight 1/n


def _delta_truth(game, lower: int, upper: int) -> np.ndarray:
    return _size_means(game)[:, lower : upper + 1].mean(axis=1)


AIRPORT = AirportGame([1.0, 2.0, 3.0, 5.0])


def _within(ds, truth, sigmas=4.5):
    value, stderr = ds.value.values, ds.stderr.values
    assert np.all(np.isfinite(stderr))
    assert np.all(np.abs(value - truth) <= sigmas * stderr + 1e-12), (value, truth, stderr)


# -- stratified permutations and VRDS --------------------------------------------------------------
@pytest.mark.parametrize("game", [SymmetricVotingGame(5), AdditiveGame([1.0, -2.0, 0.5, 3.0])], ids=repr)
def test_stratified_permutations_are_exact_when_marginals_depend_on_size_only(game):
    # Each stratum's samples are all equal to its true mean, so the stratum-weighted value is exact
    # (a plain permutation mean would still depend on how often each size was drawn).
    ds = permutation_shapley(game, n_permutations=120, seed=1, sampler="stratified").compute(scheduler="sync")
    np.testing.assert_allclose(ds.value.values, _shapley_truth(game), atol=1e-12)


def test_stratified_permutations_estimate_shapley_values():
    ds = permutation_shapley(AIRPORT, n_permutations=300, seed=2, sampler=StratifiedPermutationSampler())
    _within(ds.compute(scheduler="sync"), _shapley_truth(AIRPORT))


def test_stratified_permutations_without_every_size_report_infinite_stderr():
    ds = permutation_shapley(AIRPORT, n_permutations=3, seed=0, sampler="stratified").compute(scheduler="sync")
    assert np.all(np.isinf(ds.stderr.values))  # 3 permutations cannot give every size two samples


def test_stratified_permutations_refuse_antithetic():
    with pytest.raises(InvalidParameterError, match="antithetic"):
        permutation_shapley(AIRPORT, n_permutations=10, antithetic=True, sampler="stratified")
    with pytest.raises(InvalidParameterError, match="sampler"):
        permutation_shapley(AIRPORT, n_permutations=10, sampler="owen")


def test_vrds_estimates_shapley_values_and_is_exact_on_a_size_only_game():
    _within(semivalue(AIRPORT, shapley_coefficient, n_samples=200, seed=4, sampler=VRDSSampler()).compute(
        scheduler="sync"), _shapley_truth(AIRPORT))
    game = SymmetricVotingGame(5)
    ds = semivalue(game, shapley_coefficient, n_samples=40, seed=4, sampler="vrds").compute(scheduler="sync")
    np.testing.assert_allclose(ds.value.values, _shapley_truth(game), atol=1e-12)


def test_harmonic_allocation_by_hand():
    # 20 samples over 4 sizes: 2 each, then 12 split as 1 : 1/2 : 1/3 : 1/4 = 5.76, 2.88, 1.92, 1.44
    rng = np.random.default_rng(0)
    for _ in range(20):
        counts = HarmonicSampleSize().counts(rng, 4, np.ones(4), 20)
        assert counts.sum() == 20
        assert np.all(counts >= np.array([7, 4, 3, 3])) and np.all(counts <= np.array([8, 5, 4, 4]))
    # sizes of weight 0 (outside a Delta-Shapley range) get nothing
    assert HarmonicSampleSize().counts(rng, 4, np.array([0.0, 1.0, 1.0, 0.0]), 10)[[0, 3]].tolist() == [0, 0]


def test_power_law_and_strategy_errors():
    with pytest.raises(InvalidParameterError, match="exponent"):
        PowerLawSampleSize(float("nan"))
    with pytest.raises(InvalidParameterError, match="allocation"):
        StratifiedSampler(allocation="harmonic")


# -- Delta-Shapley ---------------------------------------------------------------------------------
def test_delta_shapley_over_all_sizes_is_the_shapley_value():
    game = SymmetricVotingGame(5)
    ds = delta_shapley(game, lower_bound=0, upper_bound=4, n_samples=20, seed=0).compute(scheduler="sync")
    np.testing.assert_allclose(ds.value.values, _shapley_truth(game), atol=1e-12)
    _within(delta_shapley(AIRPORT, lower_bound=0, upper_bound=3, n_samples=200, seed=5).compute(
        scheduler="sync"), _shapley_truth(AIRPORT))


@pytest.mark.parametrize("sample_sizes", [None, PowerLawSampleSize(-2.0)], ids=repr)
def test_delta_shapley_on_a_size_range_matches_its_definition(sample_sizes):
    ds = delta_shapley(AIRPORT, lower_bound=1, upper_bound=2, n_samples=160, seed=6, sample_sizes=sample_sizes)
    ds = ds.compute(scheduler="sync")
    truth = _delta_truth(AIRPORT, 1, 2)
    assert not np.allclose(truth, _shapley_truth(AIRPORT))
    _within(ds, truth)
    exact = delta_shapley(AdditiveGame([1.0, 2.0, 3.0, 4.0]), lower_bound=1, upper_bound=2, n_samples=8, seed=0)
    np.testing.assert_allclose(exact.value.values, [1.0, 2.0, 3.0, 4.0], atol=1e-12)


def test_delta_shapley_sample_size_bound_by_hand():
    # q = lipschitz_grad * lr_factor = 1, so H_k = sqrt(max_loss) sqrt(2 lr L^2) sqrt(T) * 2 / max(k - 1, 1)
    rule = DeltaShapleySampleSize(max_loss=1.0, lipschitz_loss=1.0, lipschitz_grad=1.0, lr_factor=1.0,
                                  n_sgd_iter=2, eps=1.0, delta=0.05)
    h = math.sqrt(1.0) * math.sqrt(2.0) * math.sqrt(2.0) * 2 / 2  # k = 3
    expected = math.ceil(2 * math.log(2 * 4 / 0.05) * (2 * h * h + 2 * h + 4 / 3))
    assert rule.fun(4, np.array([3]))[0] == expected
    ds = delta_shapley(AIRPORT, lower_bound=2, upper_bound=3, sample_sizes=rule, seed=0)
    total = int(rule.fun(4, np.array([2, 3])).sum())
    assert int(ds.counts.values[0]) == total


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"lower_bound": -1, "upper_bound": 2}, "lower_bound"),
    ({"lower_bound": 0, "upper_bound": 4}, "upper_bound"),
    ({"lower_bound": 3, "upper_bound": 1}, "lower_bound"),
    ({"lower_bound": 0, "upper_bound": 2, "sample_sizes": "harmonic"}, "sample_sizes"),
    ({"lower_bound": 0, "upper_bound": 2, "n_samples": None}, "n_samples"),
])
def test_delta_shapley_bad_input(kwargs, name):
    with pytest.raises(InvalidParameterError, match=name):
        delta_shapley(AIRPORT, **{"n_samples": 10, **kwargs})


def test_a_strategy_that_starves_a_weighted_size_is_refused_when_the_graph_is_built():
    class SmallOnly(HarmonicSampleSize):
        def fun(self, n, k):
            return np.where(np.asarray(k) < 2, 1.0, 0.0)

    with pytest.raises(InvalidParameterError, match="every coalition size"):
        semivalue(AIRPORT, shapley_coefficient, n_samples=20, sampler=StratifiedSampler(allocation=SmallOnly()))
    # ...but is fine where the value gives the other sizes no weight
    ds = delta_shapley(AdditiveGame([1.0, 2.0, 3.0, 4.0]), lower_bound=0, upper_bound=1, n_samples=8, seed=0,
                       sample_sizes=SmallOnly())
    np.testing.assert_allclose(ds.value.values, [1.0, 2.0, 3.0, 4.0], atol=1e-12)


@pytest.mark.parametrize(("method", "options", "lazy"), [
    ("delta_shapley", {"lower_bound": 1, "upper_bound": 2},
     lambda **kw: delta_shapley(AIRPORT, lower_bound=1, upper_bound=2, **kw)),
    ("permutation_shapley", {"sampler": "stratified"},
     lambda **kw: permutation_shapley(AIRPORT, sampler="stratified", n_permutations=kw.pop("n_samples"), **kw)),
])
def test_run_until_converged_runs_the_new_methods_block_for_block(method, options, lazy, tmp_path):
    url = str(tmp_path / "run.zarr")
    run = run_until_converged(method, AIRPORT, stop=MaxChecks(4), seed=7, items_per_block=40, progress=False,
                              window=1, checkpoint=url, **options)
    same = lazy(n_samples=160, seed=7, items_per_block=40).compute(scheduler="sync")
    np.testing.assert_allclose(run.value.values, same.value.values, atol=1e-12)
    np.testing.assert_allclose(load_checkpoint(url).value.values, same.value.values, atol=1e-12)
