"""Data utility learning: exact on learnable games, holdout error, plugs into every method."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from dvl_dask.errors import InvalidParameterError
from dvl_dask.testing.games import AdditiveGame, SymmetricVotingGame
from dvl_dask.utility import LearnedUtility, learn_utility
from dvl_dask.valuation import exact_shapley, permutation_shapley


def test_linear_regressor_learns_an_additive_game_exactly():
    game = AdditiveGame([0.5, -1.0, 2.0, 3.0, 0.25])
    learned = learn_utility(game, 60, regressor=LinearRegression(), seed=1)
    assert isinstance(learned, LearnedUtility)
    assert learned.holdout_rmse < 1e-9 and learned.holdout_r2 == pytest.approx(1.0)
    assert learned.n_evaluations == 60
    np.testing.assert_allclose(exact_shapley(learned).value.compute(), game.shapley_values(), atol=1e-9)
    ds = permutation_shapley(learned, n_permutations=50, seed=0).compute()
    np.testing.assert_allclose(ds.value.values, game.shapley_values(), atol=1e-9)


def test_default_mlp_reports_its_holdout_error_and_approximates_shapley():
    game = SymmetricVotingGame(6)
    learned = learn_utility(game, 64, seed=0)
    assert np.isfinite(learned.holdout_rmse) and learned.holdout_rmse < 0.35
    values = exact_shapley(learned).value.compute().values
    assert values.sum() == pytest.approx(learned(range(6)) - learned([]), abs=1e-9)
    assert np.abs(values - game.shapley_values()).max() < 0.12


def test_real_utility_and_pickling(logistic_utility_8):
    learned = learn_utility(logistic_utility_8, 40, regressor=LinearRegression(), seed=3)
    assert 0.0 <= learned.holdout_rmse < 1.0
    again = pickle.loads(pickle.dumps(learned))
    assert again.token == learned.token and again([0, 1, 2]) == learned([0, 1, 2])
    other = learn_utility(logistic_utility_8, 40, regressor=LinearRegression(), seed=4)
    assert other.token != learned.token


def test_bad_input():
    game = AdditiveGame([1.0, 2.0])
    with pytest.raises(InvalidParameterError, match="utility"):
        learn_utility("u", 10)
    with pytest.raises(InvalidParameterError, match="training evaluations"):
        learn_utility(game, 3, holdout=0.5)
    with pytest.raises(InvalidParameterError, match="holdout"):
        learn_utility(game, 10, holdout=1.0)
    with pytest.raises(InvalidParameterError, match="regressor"):
        learn_utility(game, 10, regressor="mlp")
    learned = learn_utility(game, 10, regressor=LinearRegression(), seed=0)
    with pytest.raises(InvalidParameterError, match="indices"):
        learned([5])


def test_the_utility_enters_the_evaluation_graph_once():
    from dask.callbacks import Callback

    graphs = []
    with Callback(start=lambda dsk: graphs.append(dict(dsk))):
        learn_utility(AdditiveGame([0.5, -1.0, 2.0]), 300, regressor=LinearRegression(), seed=0)
    (graph,) = graphs
    blocks = [k for k in graph if str(k).startswith("evaluate_masks")]
    assert len(blocks) > 1  # several blocks, all reading one utility key
    assert sum(str(k).startswith("utility-") for k in graph) == 1
