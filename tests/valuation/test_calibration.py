"""Calibration of reported standard errors over many seeds, against exact values.

For every estimator and sampler, on small games from ``dvl_dask.testing.games``
(including a weighted voting game whose weight-1 player is pivotal about 1%
of the time), over 100 seeds: the ``+-2 stderr`` interval covers the exact
value in 90-98% of (seed, player) pairs, the mean ``|z|`` is near 0.8 (its
value for a normal error), and no player ends beyond 4 stderr -- with one
documented exception (``RARE_EVENTS``): two (seed, player) pairs whose samples
are events of probability 1e-4 and 2e-3 under the exact sampling distribution.
The rare-jump guard of ``guarded_stderr`` is what keeps the rest within 4
stderr (the plain Wald stderr put 0.2-1.2% of the pairs of six cases beyond).
Estimators are called block by block (no scheduler) on games without the
per-call coalition check (``Unchecked``) to keep the suite fast.

Issue 24: the same bounds hold for utilities that declare no score range
(a custom ``UtilityLike`` without ``score_range``, a ``Utility`` whose scorer
is unbounded), where the variance floor uses the observed sample width; and
truncated estimators, which are biased, say so in their results.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.special import betaln
from sklearn.base import BaseEstimator, RegressorMixin

import dvl_dask
from dvl_dask.testing.games import AirportGame, ShoesGame, Unchecked, WeightedVotingGame
from dvl_dask.valuation import (
    AbsoluteStandardError,
    FixedTruncation,
    HistoryDeviation,
    MaxChecks,
    MaxEvaluations,
    MaxTime,
    MaxUpdates,
    MinUpdates,
    RankCorrelation,
    RelativeStandardError,
    RelativeTruncation,
    permutation_shapley,
    run_until_converged,
    shapley_coefficient,
)
from dvl_dask.valuation._graph import check_utility
from dvl_dask.valuation._montecarlo import ESTIMATOR_FACTORIES
from dvl_dask.valuation._samplers import child_seed
from dvl_dask.valuation._stats import merge_all

pytestmark = pytest.mark.slow

N_SEEDS = 100
#: A rarely pivotal player: weight 1 of 97, quota 72; its Shapley value is 0.0106.
RARE = WeightedVotingGame([12, 11, 10, 10, 9, 9, 8, 8, 7, 6, 6, 1], quota=72)
SHOES = ShoesGame(3, 4)
AIRPORT = AirportGame([1.0, 2.0, 2.5, 4.0, 5.0, 7.5, 8.0, 10.0])


def _shapley_weight(n: int, k: int) -> float:
    return 1.0 / (n * math.comb(n - 1, k))


def _banzhaf_weight(n: int, k: int) -> float:
    return 2.0 ** -(n - 1)


def _beta41_weight(n: int, k: int) -> float:
    return math.exp(betaln(k + 1, n - 1 - k + 4) - betaln(4, 1))


_EXACT: dict[tuple[str, str], np.ndarray] = {}


def exact_semivalue(game, weight) -> np.ndarray:
    """Brute force over all coalitions (independent of the library's estimators)."""
    key = (game.token, weight.__name__)
    if key not in _EXACT:
        n = game.n_players
        phi = np.zeros(n)
        for i in range(n):
            others = [j for j in range(n) if j != i]
            for k in range(n):
                w = weight(n, k)
                for s in itertools.combinations(others, k):
                    phi[i] += w * (game([*s, i]) - game(list(s)))
        _EXACT[key] = phi
    return _EXACT[key]


def estimate(method: str, game, options: dict, n_items: int, seed: int, per_block: int = 25):
    estimator = ESTIMATOR_FACTORIES[method](game, **options)
    root = np.random.SeedSequence(seed)
    blocks = []
    for b, start in enumerate(range(0, n_items, per_block)):
        blocks.append(estimator.block(game, child_seed(root, b), min(per_block, n_items - start), None))
    return estimator.finalize(merge_all(blocks))


class NoRange:
    """A custom utility written to the UtilityLike protocol, without ``score_range`` (fast: no checks)."""

    def __init__(self, game) -> None:
        self.game, self.n_players, self.data_names = game, game.n_players, game.data_names
        self.token = f"{game.token}-norange"

    def __call__(self, indices) -> float:
        return self.game.value(np.asarray(indices, dtype=np.int64))


def no_range(game):
    """The game as valuation methods see a protocol utility without a range (wrapped in CheckedUtility)."""
    utility = check_utility(NoRange(game), "calibration")
    assert getattr(utility, "score_range", None) is None
    return utility


def z_scores(method, game, options, weight, n_items, wrap=Unchecked) -> np.ndarray:
    exact = exact_semivalue(game, weight)
    zs = []
    for seed in range(N_SEEDS):
        value, stderr, _ = estimate(method, wrap(game), options, n_items, seed)
        err = value - exact
        exact_hit = np.abs(err) < 1e-9
        assert np.all((stderr > 0) | exact_hit), "a player reported 0 +- 0 away from its exact value"
        zs.append(np.where(exact_hit, 0.0, err / np.where(stderr > 0, stderr, 1.0)))
    return np.asarray(zs)


CASES = [
    ("permutation", "permutation_shapley", {}, _shapley_weight, 100),
    ("permutation-antithetic", "permutation_shapley", {"antithetic": True}, _shapley_weight, 100),
    ("banzhaf-uniform", "banzhaf", {}, _banzhaf_weight, 100),
    ("banzhaf-antithetic", "banzhaf", {"sampler": "antithetic"}, _banzhaf_weight, 100),
    ("msr", "msr_banzhaf", {}, _banzhaf_weight, 1000),
    ("owen", "owen_shapley", {}, _shapley_weight, 100),
    ("owen-grid-antithetic", "owen_shapley", {"n_q": 10, "antithetic": True}, _shapley_weight, 100),
    ("beta-4-1", "beta_shapley", {"alpha": 4, "beta": 1}, _beta41_weight, 100),
    ("shapley-stratified", "semivalue", {"coefficient": shapley_coefficient, "sampler": "stratified"},
     _shapley_weight, 240),
    ("banzhaf-stratified", "banzhaf", {"sampler": "stratified"}, _banzhaf_weight, 240),
    ("shapley-neyman", "semivalue", {"coefficient": shapley_coefficient, "sampler": "stratified-neyman"},
     _shapley_weight, 240),
    ("banzhaf-neyman", "banzhaf", {"sampler": "stratified-neyman"}, _banzhaf_weight, 240),
]


_ON_RARE = ("permutation", "permutation-antithetic", "banzhaf-uniform", "msr", "owen", "owen-grid-antithetic",
            "beta-4-1", "shapley-stratified", "shapley-neyman")
_ON_SHOES = ("permutation-antithetic", "banzhaf-antithetic", "msr", "owen", "beta-4-1", "banzhaf-stratified",
             "banzhaf-neyman")
CALIBRATION = [(RARE, *c) for c in CASES if c[0] in _ON_RARE] + [(SHOES, *c) for c in CASES if c[0] in _ON_SHOES]
#: Beta(4, 1) weights small coalitions, which never reach the quota: every player of the rare game has a
#: value of 0.002-0.019, i.e. 0.2-1.9 expected non-zero samples in 100. Below that detection limit an
#: interval that never reports 0 +- 0 covers the value in (nearly) every run, so only the upper tail is tested.
BELOW_DETECTION = {(RARE.token, "beta-4-1")}
#: The only pairs beyond 4 stderr, with their probability under the exact distribution. Antithetic
#: permutation pairs of the shoes game have pair means 0.5 or 1 (P(1) = 0.272 for a left shoe); 104
#: permutations give 52 pairs, i.e. 14.2 expected ones. Seed 58 saw 3 for player 0 (P(K <= 3) = 9e-5,
#: z = 4.8) and seed 39 saw 5 for player 1 (P(K <= 5) = 1.7e-3, z = 4.2). A symmetric stderr large enough
#: for these over-covers every other case (> 98%): these two are left as the tail they are.
RARE_EVENTS = {(SHOES.token, "permutation-antithetic"): {(58, 0), (39, 1)}}


@pytest.mark.parametrize("game, name, method, options, weight, n_items", CALIBRATION,
                         ids=[f"{'rare-voting' if c[0] is RARE else 'shoes'}-{c[1]}" for c in CALIBRATION])
def test_stderr_is_calibrated(game, name, method, options, weight, n_items):
    z = np.abs(z_scores(method, game, options, weight, n_items))
    coverage = float(np.mean(z <= 2))
    if (game.token, name) in BELOW_DETECTION:
        assert coverage >= 0.90 and float(np.mean(z)) <= 1.0, f"{name}: coverage {coverage:.3f}"
    else:
        assert 0.90 <= coverage <= 0.98, f"{name}: +-2 stderr coverage {coverage:.3f}"
        assert 0.6 <= float(np.mean(z)) <= 1.0, f"{name}: mean |z| {np.mean(z):.3f}"
    beyond = {(int(seed), int(player)) for seed, player in zip(*np.nonzero(z > 4))}
    expected = RARE_EVENTS.get((game.token, name), set())
    assert beyond <= expected, f"{name}: (seed, player) pairs beyond 4 stderr: {sorted(beyond - expected)}"
    assert float(z.max()) < 5


#: Without a declared range the floor uses the observed width: the same bounds hold (issue 24). One
#: case per code path (single stream, antithetic pairs, MSR's two streams, strata).
CALIBRATION_NO_RANGE = [(RARE, *c) for c in CASES if c[0] in ("permutation", "banzhaf-uniform", "msr",
                                                                "shapley-stratified")] + \
                       [(SHOES, *c) for c in CASES if c[0] == "permutation-antithetic"]
#: Beyond 4 stderr without a declared range, with their probability. The observed width of the voting
#: game's marginals is 1 (they are 0 or 1), half the range-based width 2 (marginals in [-1, 1]), so an
#: all-zero player's floor is half as wide. Player 7 (Banzhaf value 0.064) was never pivotal in the 100
#: coalitions of seed 28: P = (1 - 0.064)^100 = 1.3e-3; floor 1.5 / 100, z = 4.3 (2.1 with the range).
RARE_EVENTS_NO_RANGE = {**RARE_EVENTS, (RARE.token, "banzhaf-uniform"): {(28, 7)}}


@pytest.mark.parametrize("game, name, method, options, weight, n_items", CALIBRATION_NO_RANGE,
                         ids=[f"{'rare-voting' if c[0] is RARE else 'shoes'}-{c[1]}-no-range"
                              for c in CALIBRATION_NO_RANGE])
def test_stderr_is_calibrated_without_a_score_range(game, name, method, options, weight, n_items):
    z = np.abs(z_scores(method, game, options, weight, n_items, wrap=no_range))
    coverage = float(np.mean(z <= 2))
    assert 0.90 <= coverage <= 0.98, f"{name} without range: +-2 stderr coverage {coverage:.3f}"
    assert 0.6 <= float(np.mean(z)) <= 1.0, f"{name} without range: mean |z| {np.mean(z):.3f}"
    expected = RARE_EVENTS_NO_RANGE.get((game.token, name), set())
    beyond = {(int(seed), int(player)) for seed, player in zip(*np.nonzero(z > 4))}
    assert beyond <= expected, f"{name}: (seed, player) pairs beyond 4 stderr: {sorted(beyond - expected)}"
    assert float(z.max()) < 5


class _CoalitionModel(RegressorMixin, BaseEstimator):
    """Remembers the players it was fitted on (their indices are the single feature)."""

    def fit(self, x, y):
        self.players_ = np.sort(np.asarray(x)[:, 0].astype(np.int64))
        return self

    def predict(self, x):
        return np.zeros(len(x))


def _rare_score(model, x, y) -> float:
    """A callable scorer without a range: the rare voting game's value of the fitted coalition."""
    return RARE.value(model.players_)


def test_utility_with_an_unbounded_scorer_gets_the_protocol_estimates():
    # A Utility whose callable scorer has no range reports score_range None, exactly like the
    # protocol utility calibrated above: same samples, same (calibrated) values and stderr.
    x = np.arange(RARE.n_players, dtype=np.float64)[:, None]
    data = dvl_dask.Dataset(x, np.zeros(len(x)), x[:2], np.zeros(2))
    utility = dvl_dask.Utility(_CoalitionModel(), data, _rare_score, default_score=0.0)
    assert utility.score_range is None
    for seed in range(3):
        ours = estimate("permutation_shapley", utility, {}, 100, seed)
        reference = estimate("permutation_shapley", no_range(RARE), {}, 100, seed)
        for a, b in zip(ours, reference):
            np.testing.assert_array_equal(a, b)
        assert np.all(ours[1] > 0)


@pytest.mark.parametrize("truncation", [FixedTruncation(0.5), RelativeTruncation(0.1)], ids=repr)
@pytest.mark.parametrize("wrap", [Unchecked, no_range], ids=["range", "no-range"])
def test_truncated_estimates_carry_the_bias_flag(truncation, wrap):
    # Truncation is biased (coverage is not checked; see benchmarks/bench_truncation_bias.py):
    # the result must say so, by which rule.
    ds = permutation_shapley(wrap(SHOES), n_permutations=100, seed=0, truncation=truncation)
    assert ds.attrs["biased"] is True
    assert ds.attrs["bias"].startswith(type(truncation).__name__)


def test_airport_game_is_covered():
    z = np.abs(z_scores("permutation_shapley", AIRPORT, {}, _shapley_weight, 100))
    assert 0.90 <= float(np.mean(z <= 2)) <= 0.98
    # the largest of 8 players pays its cost rarely: rare jumps, guarded
    assert float(z.max()) <= 4


@pytest.mark.parametrize(
    "stop",
    [RelativeStandardError(0.1, burn_in=4), AbsoluteStandardError(0.02, burn_in=4), HistoryDeviation(5, 0.05),
     RankCorrelation(0.01, burn_in=5), MinUpdates(40), MaxUpdates(60), MaxChecks(8), MaxTime(2.0)],
    ids=["relative", "absolute", "history", "rank", "min-updates", "max-updates", "max-checks", "max-time"],
)
@pytest.mark.parametrize("method, options", [("permutation_shapley", {}), ("banzhaf", {}), ("msr_banzhaf", {})])
@pytest.mark.parametrize("wrap", [lambda g: g, NoRange], ids=["range", "no-range"])
def test_no_converged_player_is_frozen_at_zero(stop, method, options, wrap):
    # Small blocks: the rarely pivotal player often sees only zeros at first.
    truth = exact_semivalue(RARE, _shapley_weight if method == "permutation_shapley" else _banzhaf_weight)
    assert np.all(truth > 0)
    for seed in range(3):
        ds = run_until_converged(method, wrap(RARE), stop=stop | MaxEvaluations(3_000), seed=seed,
                                 items_per_block=4, window=4, progress=False, **options)
        frozen = (ds["value"].values == 0) & (ds["stderr"].values == 0)
        assert not frozen.any(), f"seed {seed}: players {np.flatnonzero(frozen)} at 0 +- 0"
        if isinstance(stop, RelativeStandardError):
            assert np.all(ds["value"].values[ds["converged"].values] != 0)
