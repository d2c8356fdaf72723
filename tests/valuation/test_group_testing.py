"""Group-testing Shapley against closed-form Shapley values of games: accuracy, calibration, (eps, delta)."""

from __future__ import annotations

import numpy as np
import pytest

from dvl_dask.errors import InvalidParameterError
from dvl_dask.keys import fingerprint
from dvl_dask.testing import assert_valid_valuation_dataset
from dvl_dask.testing.games import AdditiveGame, AirportGame, MinerGame, ShoesGame, SymmetricVotingGame
from dvl_dask.valuation import group_testing_sample_size, group_testing_shapley


class OffsetGame:
    """A game plus a constant: the Shapley values do not change, u(∅) = offset != 0."""

    def __init__(self, game, offset: float) -> None:
        self.game, self.offset = game, offset
        self.n_players = game.n_players
        self.data_names = game.data_names
        self.token = fingerprint("OffsetGame", game.token, offset)

    def __call__(self, indices) -> float:
        return self.game(indices) + self.offset

    def __dask_tokenize__(self):
        return self.token


@pytest.mark.parametrize(
    "game",
    [AdditiveGame([0.5, 1.0, 2.0, -1.0]), ShoesGame(2, 3), AirportGame([1.0, 2.0, 3.0, 5.0]), MinerGame(5)],
    ids=repr,
)
def test_estimates_are_unbiased_and_calibrated(game):
    ds = group_testing_shapley(game, 20_000, seed=11).compute()
    assert_valid_valuation_dataset(ds)
    z = (ds.value.values - game.shapley_values()) / ds.stderr.values
    assert np.all(np.abs(z) < 4.5)
    assert ds.value.values.sum() == pytest.approx(game(range(game.n_players)) - game([]))


def test_efficiency_uses_the_empty_coalition():
    game = OffsetGame(AdditiveGame([1.0, 2.0, 3.0]), 10.0)
    ds = group_testing_shapley(game, 20_000, seed=0).compute()
    assert ds.value.values.sum() == pytest.approx(6.0)
    assert np.all(np.abs(ds.value.values - [1.0, 2.0, 3.0]) < 5 * ds.stderr.values)


@pytest.mark.slow
def test_epsilon_delta_guarantee_holds_over_seeds():
    """With the bound's sample size, ||values - phi||_2 <= eps in at least (1 - delta) of the seeds."""
    game = SymmetricVotingGame(5)
    eps, delta = 0.5, 0.2
    errors = []
    for seed in range(30):
        ds = group_testing_shapley(game, epsilon=eps, delta=delta, utility_range=1.0, seed=seed).compute()
        errors.append(np.linalg.norm(ds.value.values - game.shapley_values()))
    assert np.mean(np.array(errors) <= eps) >= 1 - delta
    assert ds.attrs["n_evaluations"] == group_testing_sample_size(eps, delta, 5, 1.0) + 2


def test_standard_errors_match_the_spread_over_seeds():
    game = AirportGame([1.0, 2.0, 4.0])
    runs = [group_testing_shapley(game, 3_000, seed=s).compute() for s in range(40)]
    values = np.array([r.value.values for r in runs])
    reported = np.mean([r.stderr.values for r in runs], axis=0)
    ratio = values.std(axis=0, ddof=1) / reported
    assert np.all((ratio > 0.6) & (ratio < 1.5))


def test_same_seed_same_graph_and_values():
    game = MinerGame(4)
    a = group_testing_shapley(game, 1_000, seed=5, samples_per_block=100)
    b = group_testing_shapley(game, 1_000, seed=5, samples_per_block=100)
    assert a.value.data.name == b.value.data.name
    np.testing.assert_array_equal(a.value.compute(scheduler="threads"), b.value.compute(scheduler="sync"))


def test_sample_size_bound_grows_as_expected():
    assert group_testing_sample_size(0.25, 0.05, 10) > 3 * group_testing_sample_size(0.5, 0.05, 10)
    assert group_testing_sample_size(0.5, 0.01, 10) > group_testing_sample_size(0.5, 0.1, 10)
    assert group_testing_sample_size(0.5, 0.05, 10, utility_range=2.0) > group_testing_sample_size(0.5, 0.05, 10)


def test_bad_input():
    game = MinerGame(4)
    with pytest.raises(InvalidParameterError, match="exactly one"):
        group_testing_shapley(game)
    with pytest.raises(InvalidParameterError, match="exactly one"):
        group_testing_shapley(game, 100, epsilon=0.1)
    with pytest.raises(InvalidParameterError, match="at least 3"):
        group_testing_shapley(AdditiveGame([1.0, 2.0]), 100)
    with pytest.raises(InvalidParameterError, match="delta"):
        group_testing_sample_size(0.1, 1.5, 5)
