"""Issue 24, part 1: no certainty without evidence.

Ground truths are written here: exact Shapley values by brute force over all
coalitions, the stderr floor in closed form. Covered: an all-equal stream never
gets stderr 0 whatever the utility (custom ``UtilityLike`` without a range, a
``Utility`` whose scorer has none); protocol utilities keep their declared
``score_range``; truncated results say they are biased and a stderr criterion
on them warns; results say which criterion stopped the run and ``converged``
is not set by a budget cap; the Monte Carlo least core reports no stderr of 0.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from sklearn.base import BaseEstimator, RegressorMixin

import dvl_dask
from dvl_dask.errors import BiasedEstimateWarning
from dvl_dask.results import open_result, to_zarr
from dvl_dask.testing.games import AirportGame, WeightedVotingGame
from dvl_dask.valuation import (
    AbsoluteStandardError,
    FixedTruncation,
    HistoryDeviation,
    MaxChecks,
    MaxEvaluations,
    MaxUpdates,
    MinUpdates,
    RelativeStandardError,
    RelativeTruncation,
    banzhaf,
    exact_least_core,
    load_checkpoint,
    montecarlo_least_core,
    permutation_shapley,
    run_until_converged,
    semivalue,
    shapley_coefficient,
)
from dvl_dask.valuation._stats import FLOOR_FACTOR, PointStats, finalize_stats, guarded_stderr, observed_width

#: Player 11 (weight 1 of 97, quota 84) is pivotal in 0.3% of permutations: its Shapley value is 0.00303
#: (brute force below), so runs of a few hundred permutations often see it at 0 every time.
RARE = WeightedVotingGame([12, 11, 10, 10, 9, 9, 8, 8, 7, 6, 6, 1], quota=84)


class NoRangeGame:
    """A custom utility written to the UtilityLike protocol, declaring no score range."""

    def __init__(self, game, token_suffix: str = "norange") -> None:
        self.game = game
        self.token = f"{game.token}-{token_suffix}"
        self.n_players = game.n_players
        self.data_names = game.data_names

    def __call__(self, indices) -> float:
        return float(self.game.value(np.asarray(list(indices), dtype=np.int64)))


class RangedGame(NoRangeGame):
    """The same, declaring ``score_range`` as the protocol allows."""

    def __init__(self, game, score_range) -> None:
        super().__init__(game, "ranged")
        self.score_range = score_range


class CoalitionModel(RegressorMixin, BaseEstimator):
    """Remembers which players it was fitted on (their indices are the single feature)."""

    def fit(self, x, y):
        self.players_ = np.sort(np.asarray(x)[:, 0].astype(np.int64))
        return self

    def predict(self, x):
        return np.zeros(len(x))


def _voting_score(model, x, y) -> float:
    """A callable scorer without a range: the weighted voting game's value of the fitted coalition."""
    weights = np.array([12, 11, 10, 10, 9, 9, 8, 8, 7, 6, 6, 1])
    return float(weights[model.players_].sum() >= 84)


def exact_shapley(game, n: int) -> np.ndarray:
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            w = 1.0 / (n * math.comb(n - 1, k))
            for s in itertools.combinations(others, k):
                phi[i] += w * (game([*s, i]) - game(list(s)))
    return phi


RARE_TRUTH = exact_shapley(lambda s: RARE.value(np.asarray(s, dtype=np.int64)), 12)


def _voting_utility() -> dvl_dask.Utility:
    x = np.arange(12, dtype=np.float64)[:, None]
    data = dvl_dask.Dataset(x, np.zeros(12), x[:2], np.zeros(2))
    return dvl_dask.Utility(CoalitionModel(), data, _voting_score, default_score=0.0)


# -- the stderr rule ------------------------------------------------------------------------------
def test_all_equal_stream_without_range_takes_the_observed_width():
    # player 0 saw 0 and 2 (width 2), player 1 saw 0 forty times: 1.5 * 2 / 40, not 0
    values = np.zeros((40, 2))
    values[::2, 0] = 2.0
    stats = PointStats.from_samples(values, np.ones_like(values, bool), 0)
    assert observed_width(stats) == 2.0
    err = guarded_stderr(stats, None)[0]
    assert err[1] == pytest.approx(FLOOR_FACTOR * 2.0 / 40)
    assert err[0] == pytest.approx(np.std(values[:, 0], ddof=1) / np.sqrt(40))


def test_all_equal_run_without_range_keeps_infinite_stderr():
    # no player has shown any spread: no evidence, never 0 (it was 0 from 30 samples on)
    values = np.full((1000, 3), 0.25)
    stats = PointStats.from_samples(values, np.ones_like(values, bool), 0)
    assert np.all(np.isinf(finalize_stats(stats, {"combine": "mean", "sample_range": None})[1]))
    two = PointStats.from_samples(np.stack([values, values]), np.ones((2, 1000, 3), bool), 0)
    assert np.all(np.isinf(finalize_stats(two, {"combine": "difference", "sample_range": None})[1]))


def test_extremes_merge_exactly_and_survive_the_checkpoint_layout():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3))
    parts = [PointStats.from_samples(x[a:b], np.ones((b - a, 3), bool), 0) for a, b in ((0, 7), (7, 8), (8, 30))]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    np.testing.assert_array_equal(merged.lo[0], x.min(axis=0))
    np.testing.assert_array_equal(merged.hi[0], x.max(axis=0))
    back = PointStats.from_array(merged.to_array(), 0)
    np.testing.assert_array_equal(back.lo, merged.lo)
    np.testing.assert_array_equal(back.hi, merged.hi)
    empty = PointStats.from_array(PointStats.zeros(3).to_array(), 0)  # +-inf extremes are "known, no samples"
    assert empty.lo is not None and np.all(np.isinf(empty.lo))
    old = PointStats.from_array(merged.to_array()[:5], 0)  # a checkpoint written before min/max
    assert old.lo is None and old.hi is None and observed_width(old) is None


def test_old_five_stat_checkpoint_loads_with_a_conservative_guard(tmp_path, monkeypatch):
    import dvl_dask.results._checkpoint as checkpoint_module

    game = NoRangeGame(RARE)
    url = str(tmp_path / "old.zarr")
    monkeypatch.setattr(checkpoint_module, "N_STATS", 5)  # write the layout of the previous release
    run_until_converged(permutation_shapley, game, stop=MaxEvaluations(400), seed=3, items_per_block=4,
                        checkpoint=url, progress=False)
    monkeypatch.undo()
    old = load_checkpoint(url)
    flat = old["value"].values == 0
    assert flat.any() and np.all(np.isinf(old["stderr"].values[flat]))  # no extremes: no floor width
    # resuming appends in the old layout and stays conservative
    resumed = run_until_converged(permutation_shapley, game, stop=MaxEvaluations(800), seed=3, items_per_block=4,
                                  checkpoint=url, progress=False)
    frozen = (resumed["value"].values == 0) & np.isfinite(resumed["stderr"].values)
    assert not frozen.any()


def test_stratified_player_without_range_is_never_zero():
    game = NoRangeGame(RARE)
    ds = semivalue(game, shapley_coefficient, n_samples=48, sampler="stratified", seed=1).compute()
    assert np.all(ds["stderr"].values > 0)


# -- the rarely pivotal player, whatever the utility ----------------------------------------------
RARE_UTILITIES = {
    "protocol-without-range": lambda: NoRangeGame(RARE),
    "utility-scorer-without-range": _voting_utility,
}


@pytest.mark.parametrize("make", RARE_UTILITIES.values(), ids=RARE_UTILITIES.keys())
@pytest.mark.parametrize("criterion", [RelativeStandardError(0.1), AbsoluteStandardError(0.02)],
                         ids=["relative", "absolute"])
def test_rarely_pivotal_player_is_never_converged_at_zero_plus_minus_zero(make, criterion):
    utility = make()
    assert getattr(utility, "score_range", None) is None
    assert RARE_TRUTH[11] == pytest.approx(0.1 / 33)  # 0.00303
    # Before issue 24 (unknown range: stderr 0 from 30 equal samples on), one seed of four ended with
    # the rare player at 0 +- 0 under either criterion.
    for seed in range(4):
        ds = run_until_converged(permutation_shapley, utility, stop=criterion | MaxEvaluations(3_600), seed=seed,
                                 items_per_block=4, window=2, progress=False)
        value, stderr, done = ds["value"].values, ds["stderr"].values, ds["converged"].values
        assert np.all(stderr > 0), f"seed {seed}: stderr 0 for players {np.flatnonzero(stderr == 0)}"
        if isinstance(criterion, RelativeStandardError):
            assert not np.any(done & (value == 0)), f"seed {seed}: a player converged at 0"
        # a converged player's interval is honest about the rare player (true value 0.00303)
        z = np.abs(value - RARE_TRUTH) / stderr
        assert np.all(z[done] <= 4), f"seed {seed}: z {z[done].max():.1f}"


# -- protocol utilities keep their range through every wrapper -------------------------------------
def test_protocol_score_range_reaches_the_estimator():
    ranged = RangedGame(RARE, (0.0, 1.0))
    lazy = permutation_shapley(ranged, n_permutations=8, seed=0)
    assert dvl_dask.results.parameters_of(lazy)["finalize"]["sample_range"] == 2.0
    eager = run_until_converged(banzhaf, ranged, stop=MaxEvaluations(130), seed=0, progress=False)
    assert dvl_dask.results.parameters_of(eager)["finalize"]["sample_range"] == 2.0
    unranged = permutation_shapley(NoRangeGame(RARE), n_permutations=8, seed=0)
    assert dvl_dask.results.parameters_of(unranged)["finalize"]["sample_range"] is None


# -- bias is part of the result ------------------------------------------------------------------
GAME = AirportGame([1.0, 2.0, 2.5, 4.0, 5.0, 7.5])


@pytest.mark.parametrize("truncation, rule", [(FixedTruncation(0.5), "FixedTruncation(fraction=0.5)"),
                                              (RelativeTruncation(0.1), "RelativeTruncation(rtol=0.1)"),
                                              (0.1, "RelativeTruncation(rtol=0.1)")])
def test_truncated_results_say_they_are_biased(truncation, rule, tmp_path):
    lazy = permutation_shapley(GAME, n_permutations=8, seed=0, truncation=truncation)
    assert lazy.attrs["biased"] is True and lazy.attrs["bias"].startswith(rule)
    url = str(tmp_path / "tmc.zarr")
    eager = run_until_converged(permutation_shapley, GAME, stop=MaxEvaluations(60), seed=0, progress=False,
                                truncation=truncation, checkpoint=url)
    assert eager.attrs["biased"] is True and eager.attrs["bias"].startswith(rule)
    assert load_checkpoint(url).attrs["biased"] is True


def test_unbiased_results_say_so():
    ds = permutation_shapley(GAME, n_permutations=8, seed=0)
    assert ds.attrs["biased"] is False and ds.attrs["bias"] == ""
    assert banzhaf(GAME, n_samples=8, seed=0).attrs["biased"] is False


@pytest.mark.parametrize("stop", [RelativeStandardError(0.5) | MaxEvaluations(60),
                                  MaxEvaluations(60) & ~AbsoluteStandardError(1e-9)],
                         ids=["or", "and-not"])
def test_stderr_criterion_on_truncation_warns_once(stop):
    with pytest.warns(BiasedEstimateWarning, match="biased") as record:
        run_until_converged(permutation_shapley, GAME, stop=stop, seed=0, progress=False,
                            truncation=FixedTruncation(0.5))
    assert sum(issubclass(w.category, BiasedEstimateWarning) for w in record) == 1


def test_budget_only_criterion_on_truncation_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", BiasedEstimateWarning)
        run_until_converged(permutation_shapley, GAME, stop=MaxEvaluations(60) | HistoryDeviation(3, 0.01),
                            seed=0, progress=False, truncation=FixedTruncation(0.5))
        run_until_converged(permutation_shapley, GAME, stop=RelativeStandardError(0.5) | MaxEvaluations(60),
                            seed=0, progress=False)


# -- which criterion stopped ---------------------------------------------------------------------
def test_budget_cap_is_not_convergence(tmp_path):
    stop = RelativeStandardError(0.01) | MaxEvaluations(100)
    ds = run_until_converged(permutation_shapley, GAME, stop=stop, seed=0, progress=False, items_per_block=4)
    assert ds.attrs["converged"] is False
    assert ds.attrs["stopped_by"] == ["MaxEvaluations(n_evaluations=100)"]
    # per player: its own RelativeStandardError test, computed here from the reported numbers
    own = (ds["counts"].values >= 4) & (ds["stderr"].values <= 0.01 * np.abs(ds["value"].values))
    np.testing.assert_array_equal(ds["converged"].values, own)
    assert not own.all()
    # the record survives a zarr round trip
    to_zarr(ds, str(tmp_path / "r.zarr"))
    back = open_result(str(tmp_path / "r.zarr")).compute()
    assert back["converged"].dtype == bool and back.attrs["stopped_by"] == ds.attrs["stopped_by"]
    np.testing.assert_array_equal(back["converged"].values, own)


@pytest.mark.parametrize("cap", [MaxChecks(2), MaxUpdates(8), MaxEvaluations(50)], ids=repr)
def test_every_cap_alone_is_not_convergence(cap):
    ds = run_until_converged(permutation_shapley, GAME, stop=cap, seed=0, progress=False, items_per_block=4)
    assert ds.attrs["converged"] is False and ds.attrs["stopped_by"] == [repr(cap)]
    assert not ds["converged"].values.any()


def test_accuracy_criterion_is_convergence():
    stop = AbsoluteStandardError(0.5) | MaxEvaluations(100_000)
    ds = run_until_converged(permutation_shapley, GAME, stop=stop, seed=0, progress=False, items_per_block=4)
    assert ds.attrs["converged"] is True and ds.attrs["stopped_by"] == [repr(AbsoluteStandardError(0.5))]
    assert ds["converged"].values.all() and np.all(ds["stderr"].values <= 0.5)


def test_and_composition_records_every_part_and_min_updates_is_not_a_cap():
    stop = MinUpdates(8) & MaxEvaluations(30)
    ds = run_until_converged(permutation_shapley, GAME, stop=stop, seed=0, progress=False, items_per_block=4)
    assert ds.attrs["stopped_by"] == [repr(MinUpdates(8)), repr(MaxEvaluations(30))]
    assert ds.attrs["converged"] is True


def test_resume_records_the_criterion_that_fired_on_replay(tmp_path):
    url = str(tmp_path / "run.zarr")
    first = run_until_converged(permutation_shapley, GAME, stop=MaxEvaluations(200), seed=0, progress=False,
                                items_per_block=4, checkpoint=url)
    assert first.attrs["stopped_by"] == ["MaxEvaluations(n_evaluations=200)"] and not first.attrs["converged"]
    # the stored blocks already satisfy the accuracy criterion: replay stops the run, and says why
    again = run_until_converged(permutation_shapley, GAME, stop=AbsoluteStandardError(5.0) | MaxEvaluations(10**6),
                                seed=0, progress=False, items_per_block=4, checkpoint=url)
    assert again.attrs["converged"] is True and again.attrs["stopped_by"] == [repr(AbsoluteStandardError(5.0))]
    assert again.attrs["n_blocks"] <= first.attrs["n_blocks"]


def test_merged_runs_drop_the_stopping_record():
    a = run_until_converged(permutation_shapley, GAME, stop=MaxEvaluations(50), seed=0, progress=False)
    b = run_until_converged(permutation_shapley, GAME, stop=MaxEvaluations(50), seed=1, progress=False)
    merged = a.dvl.merge(b)
    assert "converged" not in merged.data_vars and "stopped_by" not in merged.attrs
    assert "converged" not in merged.attrs


# -- least core ---------------------------------------------------------------------------------
def test_montecarlo_least_core_reports_no_zero_stderr():
    # a bootstrap spread (see test_merge_safety.py for its calibration), or NaN when none is asked for
    ds = montecarlo_least_core(GAME, 60, seed=0, n_bootstrap=10).compute()
    assert not np.any(ds["stderr"].values == 0)
    assert ds.attrs["stderr_available"] is True and "bootstrap spread" in ds.attrs["stderr_note"]
    ds = montecarlo_least_core(GAME, 60, seed=0).compute()
    assert np.all(np.isnan(ds["stderr"].values)) and ds.attrs["stderr_available"] is False
    assert "not computed" in ds.attrs["stderr_note"]
    exact = exact_least_core(GAME).compute()  # every constraint known: 0 is the truth there
    assert np.all(exact["stderr"].values == 0) and exact.attrs["stderr_available"] is True
