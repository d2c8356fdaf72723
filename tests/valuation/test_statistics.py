"""Regression tests of issue 10: each statistical defect, pinned."""

from __future__ import annotations

import json
import math

import dask
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LinearRegression, LogisticRegression

from dvl_dask import Dataset, Scorer, Utility, config
from dvl_dask.errors import InvalidParameterError, SchemaError, ScoreOutOfRangeError
from dvl_dask.results import merge_results
from dvl_dask.testing.games import AdditiveGame, AirportGame, MinerGame, WeightedVotingGame
from dvl_dask.utility import compose_score, sigmoid, squashed_neg_mse, squashed_r2, squashed_variance
from dvl_dask.valuation import (
    ConvergenceState,
    HistoryDeviation,
    MaxChecks,
    MaxEvaluations,
    MaxUpdates,
    MinUpdates,
    RankCorrelation,
    RelativeStandardError,
    StratifiedSampler,
    banzhaf,
    exact_shapley,
    load_checkpoint,
    msr_banzhaf,
    permutation_shapley,
    run_until_converged,
    semivalue,
    shapley_coefficient,
)
from dvl_dask.valuation._stats import (
    FLOOR_FACTOR,
    JUMP_FACTOR,
    PointStats,
    add_powers,
    finalize_stats,
    guarded_stderr,
    mean_and_stderr,
    merge_all,
    merge_powers,
    power_block,
)

RARE = WeightedVotingGame([12, 11, 10, 10, 9, 9, 8, 8, 7, 6, 6, 1], quota=72)


def _state(values, counts=None, stderr=None):
    values = np.asarray(values, dtype=float)
    counts = np.full(len(values), 10) if counts is None else np.asarray(counts)
    stderr = np.zeros(len(values)) if stderr is None else np.asarray(stderr, dtype=float)
    return ConvergenceState(values, stderr, counts, 0, 0, 0.0)


# -- frozen players -----------------------------------------------------------------------------------
def test_all_equal_samples_get_the_rule_of_three_floor():
    stats = PointStats.from_samples(np.zeros((40, 2)), np.ones((40, 2), bool), 40)
    assert np.allclose(guarded_stderr(stats, 2.0), FLOOR_FACTOR * 2.0 / 40)
    # unknown range: not converged until the minimum count
    assert np.all(np.isinf(guarded_stderr(PointStats.from_samples(np.zeros((5, 1)), np.ones((5, 1), bool), 5), None)))
    one = PointStats.from_samples(np.ones((1, 1)), np.ones((1, 1), bool), 1)
    assert guarded_stderr(one, 2.0)[0, 0] == pytest.approx(1.0)  # Popoviciu: W / 2


def test_rule_of_three_guarantee_holds_for_a_rare_event():
    # p = 4/n: the chance of n equal samples is below e^-3, and if they are equal the
    # +-2 stderr interval would miss the mean; check the arithmetic of the guarantee
    n, w = 200, 1.0
    p = 4 / n
    assert (1 - p) ** n < math.exp(-3) < 0.05
    assert w * p > 2 * FLOOR_FACTOR * w / n


def test_rarely_pivotal_player_is_never_retired_at_zero():
    for seed in range(4):
        ds = run_until_converged(permutation_shapley, RARE, stop=RelativeStandardError(0.2), seed=seed,
                                 items_per_block=4, window=2, progress=False)
        last = ds.sel(sample=11)
        assert not (float(last["value"]) == 0 and float(last["stderr"]) == 0)
        assert float(last["value"]) > 0  # RSE cannot converge at exactly 0 (floor > 0)


def test_zero_variance_players_keep_a_positive_stderr():
    ds = permutation_shapley(AdditiveGame([1.0, 0.0, 2.0]), n_permutations=20, seed=0).compute(scheduler="sync")
    np.testing.assert_allclose(ds["value"].values, [1.0, 0.0, 2.0])
    assert np.all(ds["stderr"].values > 0)


# -- antithetic ---------------------------------------------------------------------------------------
def test_antithetic_pair_is_one_sample():
    ds = permutation_shapley(MinerGame(5), n_permutations=40, antithetic=True, seed=1, items_per_block=10)
    ds = ds.compute(scheduler="sync")
    assert ds["counts"].values.tolist() == [20] * 5
    assert ds.attrs["effective_sample_size"] == 20
    assert ds.attrs["sample_unit"] == "antithetic pair"
    odd = permutation_shapley(MinerGame(5), n_permutations=5, antithetic=True, seed=1, items_per_block=5)
    assert odd.compute(scheduler="sync")["counts"].values.tolist() == [3] * 5  # rounded up to whole pairs


def test_antithetic_stderr_matches_spread_over_seeds():
    game = MinerGame(5)
    runs = [permutation_shapley(game, n_permutations=20, antithetic=True, seed=s, items_per_block=20)
            .compute(scheduler="sync") for s in range(120)]
    values = np.array([r["value"].values for r in runs])
    reported = np.sqrt(np.mean([r["stderr"].values ** 2 for r in runs], axis=0))
    ratio = values.std(axis=0, ddof=1) / reported
    assert np.all((ratio > 0.75) & (ratio < 1.3)), ratio  # was ~1.48 when pair members counted twice


def test_antithetic_msr_is_refused():
    with pytest.raises(InvalidParameterError, match="antithetic"):
        msr_banzhaf(RARE, n_samples=10, antithetic=True)


# -- stratified ---------------------------------------------------------------------------------------
def test_stratified_sampler_allocates_equally_per_size():
    sampler = StratifiedSampler()
    rng = np.random.default_rng(0)
    masks, sizes = sampler.draw_for_player(rng, 6, 2, 14)
    assert np.all(masks.sum(axis=1) == sizes) and not masks[:, 2].any()
    per_size = np.bincount(sizes, minlength=6)
    assert set(per_size.tolist()) == {2, 3} and per_size.sum() == 14
    with pytest.raises(InvalidParameterError, match="allocation"):
        StratifiedSampler(allocation="optimal")
    with pytest.raises(InvalidParameterError, match="pilot"):
        StratifiedSampler(allocation="neyman", pilot=1)


def test_neyman_allocation_is_proportional_to_weight_times_sigma():
    sampler = StratifiedSampler("neyman", defensive=0.0)
    weights = np.array([0.25, 0.25, 0.5, 0.0])
    counts = sampler.neyman_counts(weights, np.array([1.0, 0.0, 2.0, 5.0]), 46)
    # two per weighted stratum, then 40 split as w*sigma = 0.25 : 0 : 1 ; the weight-0 stratum gets none
    assert counts.tolist() == [2 + 8, 2 + 0, 2 + 32, 0]
    assert counts.sum() == 46
    # defensive share: half of the 40 split equally over the 3 weighted strata
    half = StratifiedSampler("neyman", defensive=0.5).neyman_counts(weights, np.array([1.0, 0.0, 2.0, 5.0]), 46)
    assert half.sum() == 46 and half[1] >= 2 + 6 and half[3] == 0
    # no spread seen anywhere: equal allocation
    assert StratifiedSampler("neyman").neyman_counts(np.full(4, 0.25), np.zeros(4), 16).tolist() == [4, 4, 4, 4]


@pytest.mark.slow
def test_neyman_stratified_estimates_match_exact_values():
    # Airport game: the marginal of a player is constant within no stratum, and the spread differs by size
    game = AirportGame([1.0, 2.0, 4.0, 7.0, 7.5, 9.0])
    exact = game.shapley_values()
    reps = [semivalue(game, shapley_coefficient, n_samples=120, sampler="stratified-neyman", seed=s,
                      items_per_block=60).compute(scheduler="sync") for s in range(24)]
    values = np.array([ds["value"].values for ds in reps])
    stderr = np.array([ds["stderr"].values for ds in reps])
    # unbiased: the mean of 24 runs is within 4 standard errors (of that mean) of the exact values;
    # and the reported stderr is never smaller than the spread over runs (the per-stratum floors of
    # finalize_stats make it conservative on this game, whose marginals are constant in most strata)
    se_of_mean = values.std(axis=0, ddof=1) / math.sqrt(len(reps))
    assert np.all(np.abs(values.mean(axis=0) - exact) <= 4 * se_of_mean + 1e-12)
    ratio = values.std(axis=0, ddof=1) / stderr.mean(axis=0)
    assert np.all(ratio < 1.3), ratio
    parameters = json.loads(reps[0].attrs["parameters"])
    assert parameters["allocation"] == "neyman" and parameters["pilot"] == 2
    # the pilot (2 per stratum and block) is evaluated but not in the estimate: 120 - 2 * 2 * 6 samples
    assert np.all(reps[0]["counts"].values == 120 - 2 * 2 * 6)


def test_stratified_estimator_combines_strata_with_weights():
    game = AirportGame([1.0, 2.0, 4.0, 7.0])
    ds = semivalue(game, shapley_coefficient, n_samples=400, sampler="stratified", seed=0)
    ds = ds.compute(scheduler="sync")
    np.testing.assert_allclose(ds["value"].values, game.shapley_values(), atol=4 * ds["stderr"].values.max())
    # per-stratum statistics: strata combine as sum_k w_k mean_k
    stats = PointStats(np.array([[2], [2]]), np.array([[1.0], [3.0]]), np.array([[0.5], [0.5]]))
    value, stderr, counts = finalize_stats(stats, {"combine": "strata", "stratum_weights": [0.25, 0.75],
                                                   "sample_range": None})
    assert value[0] == pytest.approx(2.5) and counts[0] == 4
    assert stderr[0] == pytest.approx(math.sqrt(0.25**2 * 0.25 + 0.75**2 * 0.25))


def test_u_empty_counted_once_per_block():
    calls = []

    class Counting(AirportGame):
        def value(self, players):
            calls.append(len(players))
            return super().value(players)

    game = Counting([1.0, 2.0, 3.0])
    ds = permutation_shapley(game, n_permutations=12, seed=0, items_per_block=6).compute(scheduler="sync")
    assert calls.count(0) == 2  # two blocks
    assert ds.attrs["n_evaluations"] == 2 * (6 * 3 + 1) == len(calls)


# -- default score ------------------------------------------------------------------------------------
def _regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 2))
    y = x @ [1.0, -2.0] + 5.0
    return Dataset(x[:6], y[:6], x[6:], y[6:])


def test_default_score_from_scorer_range():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 2))
    y = (x[:, 0] > 0).astype(int)
    data = Dataset(x[:8], y[:8], x[8:], y[8:])
    for scorer in ("accuracy", "f1", "roc_auc", "precision", "recall"):
        assert Utility(LogisticRegression(), data, scorer).default_score == 0.0
    regression = Dataset(x[:8], x[:8, 0], x[8:], x[8:, 0])  # scorers must fit the model's task (issue 25)
    for model, scorer_data, scorer in ((LinearRegression(), regression, "r2"),
                                       (LinearRegression(), regression, "neg_mean_squared_error"),
                                       (LogisticRegression(), data, "neg_log_loss")):
        with pytest.raises(InvalidParameterError, match="default_score"):
            Utility(model, scorer_data, scorer)
    for bad in (float("nan"), float("inf"), "x"):
        with pytest.raises(InvalidParameterError, match="finite"):
            Utility(LogisticRegression(), data, "accuracy", default_score=bad)
    with dask.config.set({config.UTILITY_DEFAULT_SCORE: -1.0}):
        assert Utility(LinearRegression(), regression, "r2").default_score == -1.0


def test_negative_mse_values_are_sane_with_explicit_default():
    data = _regression_data()
    u = Utility(LinearRegression(), data, "neg_mean_squared_error", default_score=-100.0)
    ds = exact_shapley(u).compute(scheduler="sync")
    # efficiency: values sum to u(N) - u(empty); with the best score for the empty set they did not
    assert float(ds["value"].sum()) == pytest.approx(u(range(6)) - u([]))
    assert u.score_range is None  # unbounded below: no variance floor from the range


def test_squashed_scorers_have_a_range_and_a_default_score():
    data = _regression_data()
    model = LinearRegression().fit(data.x_train, data.y_train)
    raw_r2 = float(Scorer("r2")(model, data.x_test, data.y_test))
    for make, raw in ((squashed_r2, raw_r2), (squashed_variance, None)):
        scorer = make()
        assert scorer.range == (0.0, 1.0)
        u = Utility(LinearRegression(), data, scorer)
        assert u.default_score == 0.0 and u([]) == 0.0 and u.score_range == (0.0, 1.0)
        if raw is not None:
            assert u(range(6)) == pytest.approx(1.0 / (1.0 + math.exp(-raw)))
    # a terrible fit stays inside the range, a constant prediction (r2 = 0) scores 1/2
    assert sigmoid(-1e6) == 0.0 and sigmoid(float("-inf")) == 0.0 and sigmoid(0.0) == 0.5
    assert 0.0 < sigmoid(-30.0) < 1e-12 and sigmoid(1.0) == pytest.approx(0.7310585786)
    mse = squashed_neg_mse(scale=2.0)
    perfect = float(Scorer("neg_mean_squared_error")(model, data.x_test, data.y_test))
    assert mse(model, data.x_test, data.y_test) == pytest.approx(2.0 / (1.0 + math.exp(-perfect / 2.0)))
    # composed scores outside the declared range are refused, never clipped
    wrong = Utility(LinearRegression(), data, compose_score("r2", lambda v: 5.0 + v, (0.0, 1.0), name="bad"))
    with pytest.raises(ScoreOutOfRangeError, match="'bad' returned"):
        wrong(range(6))
    for bad_range in ((0.0, float("inf")), (1.0, 0.0), "ab"):
        with pytest.raises(InvalidParameterError, match="range"):
            compose_score("r2", sigmoid, bad_range)
    with pytest.raises(InvalidParameterError, match="transformation"):
        compose_score("r2", 3.0, (0.0, 1.0))
    with pytest.raises(InvalidParameterError, match="scale"):
        squashed_neg_mse(0.0)


def test_exact_shapley_with_squashed_r2_needs_no_default_and_is_efficient():
    data = _regression_data()
    u = Utility(LinearRegression(), data, squashed_r2())
    ds = exact_shapley(u).compute(scheduler="sync")
    values = ds["value"].values
    # efficiency against the brute-force grand and empty coalition scores
    assert float(values.sum()) == pytest.approx(u(range(6)) - u([]))
    assert u([]) == 0.0 and 0.5 < u(range(6)) <= 1.0 / (1.0 + math.exp(-1.0))
    # sane: every value inside [-(hi - lo), hi - lo] = [-1, 1], unlike -22 ... +13 with neg MSE and default 0
    assert np.all(np.abs(values) <= 1.0)
    # and a different squashed scorer gives a different token (no cache collisions)
    assert Utility(LinearRegression(), data, squashed_variance()).token != u.token


# -- merge --------------------------------------------------------------------------------------------
def test_merge_any_budgets_and_refuses_overlap():
    a = permutation_shapley(RARE, n_permutations=20, seed=1).compute(scheduler="sync")
    b = permutation_shapley(RARE, n_permutations=60, seed=2).compute(scheduler="sync")
    merged = merge_results(a, b)
    assert merged["counts"].values.tolist() == [80] * 12
    assert json.loads(merged.attrs["parameters"])["n_permutations"] == 80
    with pytest.raises(InvalidParameterError, match="share samples"):
        merge_results(a, a)
    with pytest.raises(InvalidParameterError, match="share samples"):
        merge_results(merged, b)
    c = permutation_shapley(RARE, n_permutations=20, seed=1, antithetic=True).compute(scheduler="sync")
    with pytest.raises(SchemaError, match="sampler"):
        merge_results(a, c)


# -- stopping vocabulary ------------------------------------------------------------------------------
def test_max_and_min_updates_follow_pydvl():
    state = _state([1.0, 2.0], counts=[3, 10])
    assert MaxUpdates(10).check(state) and not MaxUpdates(11).check(state)
    assert not MinUpdates(10).check(state) and MinUpdates(3).check(state)
    assert MinUpdates(5).converged(state).tolist() == [False, True]


def test_max_checks():
    stop = MaxChecks(3)
    assert [stop.check(_state([1.0])) for _ in range(3)] == [False, False, True]
    stop.reset()
    assert not stop.check(_state([1.0]))


def test_history_deviation_compares_with_the_value_n_steps_updates_back():
    # the published rule is a mean over players of |v(t) - v(t - n_steps)| / |v(t)| (see test_numerics.py)
    stop = HistoryDeviation(n_steps=2, rtol=0.05)
    # player 1 moves by 20% at every update but returns every 2: no change over 2 updates
    results = [stop.check(_state([1.0, 1.0 + 0.2 * (t % 2)], counts=[t, t])) for t in range(1, 6)]
    assert results == [False, False, True, True, True]
    stop = HistoryDeviation(n_steps=2, rtol=0.05)
    results = [stop.check(_state([1.0, 2.0], counts=[t, t])) for t in range(1, 5)]
    assert results == [False, False, True, True]  # needs n_steps updates of every player


def test_rank_correlation_does_not_stop_on_nan():
    stop = RankCorrelation(rtol=0.1, burn_in=1)
    assert not any(stop.check(_state([0.0, 0.0, 0.0])) for _ in range(5))


@settings(max_examples=30, deadline=None)
@given(st.floats(min_value=0.0, max_value=1e-6, exclude_max=True))
def test_absurd_rtol_refused(rtol):
    with pytest.raises(InvalidParameterError, match="rtol"):
        RelativeStandardError(rtol)


def test_relative_standard_error_atol():
    state = _state([0.0, 1.0], stderr=[0.01, 0.01])
    assert RelativeStandardError(0.05, atol=0.02, burn_in=1).converged(state).tolist() == [True, True]
    assert RelativeStandardError(0.05, burn_in=1).converged(state).tolist() == [False, True]


# -- checkpoints use the same finalize ---------------------------------------------------------------
def test_load_checkpoint_matches_live_run(tmp_path):
    ck = str(tmp_path / "ck.zarr")
    kw = dict(seed=3, items_per_block=6, progress=False)
    live = run_until_converged(semivalue, RARE, stop=MinUpdates(24), checkpoint=ck, coefficient=shapley_coefficient,
                               sampler="stratified", **kw)
    loaded = load_checkpoint(ck)
    np.testing.assert_allclose(loaded["value"].values, live["value"].values)
    np.testing.assert_allclose(loaded["stderr"].values, live["stderr"].values)
    assert np.all(loaded["stderr"].values > 0)


def test_banzhaf_sampler_antithetic_pairs():
    ds = banzhaf(RARE, n_samples=10, sampler="antithetic", seed=0, items_per_block=10).compute(scheduler="sync")
    assert ds["counts"].values.tolist() == [5] * 12


# -- effective sample size ----------------------------------------------------------------------------
def _exact_permutation_moments(game):
    """Brute force over all permutations: per-player variance of one marginal, and of an antithetic pair mean."""
    import itertools

    n = game.n_players
    margs = []
    for perm in itertools.permutations(range(n)):
        row = np.zeros(n)
        for step, player in enumerate(perm):
            row[player] = game(list(perm[: step + 1])) - game(list(perm[:step]))
        margs.append(row)
    margs = np.array(margs)
    index = {p: j for j, p in enumerate(itertools.permutations(range(n)))}
    pair = np.array([(margs[j] + margs[index[p[::-1]]]) / 2 for p, j in index.items()])
    return margs.var(axis=0), pair.var(axis=0)


def test_effective_sample_size_against_exact_variances():
    from dvl_dask.results import effective_sample_size

    game = AirportGame([1.0, 2.0, 4.0, 7.0, 7.5])
    plain_var, pair_var = _exact_permutation_moments(game)
    # plain sampling: ESS = counts (the reference is the result itself)
    plain = permutation_shapley(game, n_permutations=600, seed=3).compute(scheduler="sync")
    np.testing.assert_allclose(effective_sample_size(plain, plain).values, plain["counts"].values)
    # antithetic: 400 pairs are worth 400 * sigma^2 / var(pair mean) plain samples (exact), and the
    # reported figure (from the estimated stderr) is within 25% of it
    anti = permutation_shapley(game, n_permutations=800, antithetic=True, seed=3).compute(scheduler="sync")
    exact_ess = 400 * plain_var / pair_var
    reported = effective_sample_size(anti, plain_var).values
    np.testing.assert_allclose(reported, exact_ess, rtol=0.25)
    assert np.all(exact_ess > 800)  # on this game a pair is worth more than two plain permutations
    # with an estimated reference (a plain run) the figure agrees within sampling noise
    np.testing.assert_allclose(effective_sample_size(anti, plain).values, exact_ess, rtol=0.4)
    with pytest.raises(InvalidParameterError, match="reference"):
        effective_sample_size(anti, np.ones(3))
    with pytest.raises(InvalidParameterError, match="reference"):
        effective_sample_size(anti, -plain_var)


# -- higher moments and the rare-jump guard ---------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=40), st.integers(1, 6), st.integers(0, 99))
def test_higher_moments_merge_exactly(values, n_groups, seed):
    x = np.asarray(values)[:, None]
    groups = np.random.default_rng(seed).integers(0, n_groups, size=len(x))
    parts = [PointStats.from_samples(x[groups == g], np.ones((int(np.sum(groups == g)), 1), bool), 0)
             for g in range(n_groups)]
    merged = merge_all(parts)
    dev = x[:, 0] - x[:, 0].mean()
    assert merged.count[0, 0] == len(x)
    assert merged.m2[0, 0] == pytest.approx(np.sum(dev**2), abs=1e-9)
    assert merged.m3[0, 0] == pytest.approx(np.sum(dev**3), abs=1e-8)
    assert merged.m4[0, 0] == pytest.approx(np.sum(dev**4), rel=1e-9, abs=1e-7)
    back = PointStats.from_array(merged.to_array(), 0)  # storage round trip keeps M3 and M4
    assert back.m3[0, 0] == pytest.approx(merged.m3[0, 0]) and back.m4[0, 0] == pytest.approx(merged.m4[0, 0])


def test_jump_guard_widens_rare_jumps_and_leaves_bulk_samples():
    n = 100
    rare = np.zeros((n, 1))
    rare[:2] = 1.0  # 2 jumps where ~10 were expected: Wald's stderr is sqrt(2)/n
    stats = PointStats.from_samples(rare, np.ones((n, 1), bool), n)
    wald = np.sqrt(stats.variance() / n)[0, 0]
    guarded = guarded_stderr(stats, 1.0)[0, 0]
    p = 2 / n
    assert guarded == pytest.approx(JUMP_FACTOR * np.sqrt(1 - 3 * p + 3 * p * p) / n)  # sqrt(M4 / M2) ~ jump
    assert guarded > 1.7 * wald
    assert (0.1 - p) / guarded < 4 < (0.1 - p) / wald  # the player that expected 10 jumps: within 4 stderr
    # many jumps: the Wald stderr stands
    often = np.zeros((n, 1))
    often[:20] = 1.0
    stats = PointStats.from_samples(often, np.ones((n, 1), bool), n)
    assert guarded_stderr(stats, 1.0)[0, 0] == pytest.approx(np.sqrt(stats.variance() / n)[0, 0])
    # rare jumps of both signs (no skewness) are guarded too
    both = np.zeros((n, 1))
    both[0], both[1] = 1.0, -1.0
    stats = PointStats.from_samples(both, np.ones((n, 1), bool), n)
    assert guarded_stderr(stats, 2.0)[0, 0] == pytest.approx(JUMP_FACTOR / n, rel=1e-3)
    # bulk samples: no change
    bulk = np.random.default_rng(0).normal(size=(n, 1))
    stats = PointStats.from_samples(bulk, np.ones((n, 1), bool), n)
    assert guarded_stderr(stats, None)[0, 0] == pytest.approx(np.sqrt(stats.variance() / n)[0, 0])
    # unknown 4th moment (statistics rebuilt from sums): the guard is off
    blind = PointStats(stats.count, stats.mean, stats.m2)
    assert blind.m4 is None and np.isfinite(guarded_stderr(blind, None)).all()


def test_checkpoint_without_higher_moments_is_read_and_resumed(tmp_path, monkeypatch):
    import dvl_dask.results._checkpoint as checkpoint_module

    ck = str(tmp_path / "three-stats.zarr")
    kw = dict(seed=3, items_per_block=5, progress=False)
    monkeypatch.setattr(checkpoint_module, "N_STATS", 3)  # a checkpoint written before M3 and M4 were stored
    run_until_converged(permutation_shapley, RARE, stop=MaxEvaluations(600), checkpoint=ck, **kw)
    monkeypatch.undo()
    first = load_checkpoint(ck)
    resumed = run_until_converged(permutation_shapley, RARE, stop=MaxEvaluations(1_200), checkpoint=ck, **kw)
    live = run_until_converged(permutation_shapley, RARE, stop=MaxEvaluations(1_200), **kw)
    assert resumed.attrs["n_evaluations"] == live.attrs["n_evaluations"] > first.attrs["n_evaluations"]
    np.testing.assert_allclose(resumed["value"].values, live["value"].values)
    # without M4 the rare-jump guard is off: never a larger stderr than the live run's
    assert np.all(resumed["stderr"].values <= live["stderr"].values + 1e-15)
    assert np.all(resumed["stderr"].values > 0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=2, max_size=60), st.integers(1, 4))
def test_power_sum_blocks_give_the_same_guarded_stderr(values, n_blocks):
    # Data-OOB, class-wise Shapley and group testing add power-sum blocks: same stderr as PointStats
    x = np.asarray(values)
    blocks = np.array_split(x, n_blocks)
    totals = power_block(1)
    for part in blocks:
        block = power_block(1)
        for v in part:
            add_powers(block, 0, v)
        totals = merge_powers(totals, block)
    mean, stderr = mean_and_stderr(totals, 1.0)
    reference = PointStats.from_samples(x[:, None], np.ones((len(x), 1), bool), len(x))
    assert mean[0] == pytest.approx(x.mean())
    assert stderr[0] == pytest.approx(guarded_stderr(reference, 1.0)[0, 0], rel=1e-6, abs=1e-9)
