"""Inputs are frozen at construction (issue 23, part C): what a token hashed cannot change afterwards."""

from __future__ import annotations

import itertools
import math
import pickle

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import accuracy_score

from dvl_dask import Dataset, GroupedDataset, Scorer, Utility
from dvl_dask.errors import FrozenInstanceError, InvalidParameterError
from dvl_dask.testing.games import AdditiveGame, Game, Unchecked, WeightedVotingGame
from dvl_dask.utility import LearnedUtility, learn_utility
from dvl_dask.valuation import exact_shapley

ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def _arrays(n: int = 12) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 2))
    y = (x[:, 0] > 0).astype(np.int64)
    return x, y, x[: n // 2].copy(), y[: n // 2].copy()


def _brute_force_shapley(value, n: int) -> np.ndarray:
    """Average marginal contribution over all n! orders (ground truth for small games)."""
    phi = np.zeros(n)
    orders = list(itertools.permutations(range(n)))
    for order in orders:
        for k, player in enumerate(order):
            phi[player] += value(order[: k + 1]) - value(order[:k])
    return phi / len(orders)


# -- Dataset --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ARRAYS)
def test_in_place_edits_of_dataset_arrays_raise_and_leave_callers_arrays_writeable(name):
    given = dict(zip(ARRAYS, _arrays(), strict=True))
    originals = {k: v.copy() for k, v in given.items()}
    data = Dataset(**given)
    with pytest.raises(ValueError, match="read-only"):
        getattr(data, name)[:2] = 7
    with pytest.raises(ValueError, match="read-only"):
        getattr(data.materialize(), name)[0] = 7  # the numpy "getter" of a lazily usable dataset
    # The caller's arrays are theirs: still writeable, and editing them does not reach the dataset.
    assert given[name].flags.writeable
    given[name][:2] = 7
    np.testing.assert_array_equal(getattr(data, name), originals[name])


def test_dataset_labels_and_attributes_are_frozen():
    x, y, xt, yt = _arrays()
    names = np.array([f"p{i}" for i in range(len(x))])
    data = Dataset(x, y, xt, yt, data_names=names, target_names=["no", "yes"])
    for labels in (data.data_names, data.feature_names, data.target_names):
        with pytest.raises(ValueError, match="read-only"):
            labels[0] = "other"
    assert names.flags.writeable and names[0] == "p0"
    before = data.fingerprint
    for attr, value in (("y_train", 1 - y), ("fingerprint", "0" * 32), ("data_names", names[::-1])):
        with pytest.raises(FrozenInstanceError, match=attr):
            setattr(data, attr, value)
    assert isinstance(FrozenInstanceError("x"), AttributeError)
    assert data.fingerprint == before


def test_grouped_dataset_is_frozen_too():
    x, y, xt, yt = _arrays()
    groups = np.repeat(np.arange(6), 2)
    data = GroupedDataset(x, y, xt, yt, data_groups=groups)
    for arr in (data.x_train, data.data_groups, data.group_names, data.sample_names, data.data_names):
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = arr[1]
    assert groups.flags.writeable
    with pytest.raises(FrozenInstanceError):
        data.data_groups = groups[::-1]
    assert data.train_indices(np.array([2])).tolist() == [4, 5]


def test_dataset_from_read_only_arrays_keeps_them_without_copy():
    arrays = _arrays()
    frozen = []
    for arr in arrays:
        copy = arr.copy()
        copy.flags.writeable = False
        frozen.append(copy)
    data = Dataset(*frozen)
    assert all(getattr(data, name) is arr for name, arr in zip(ARRAYS, frozen, strict=True))
    assert data.fingerprint == Dataset(*arrays).fingerprint


def test_a_read_only_view_of_a_writeable_array_is_copied():
    x, y, xt, yt = _arrays()
    view = x.view()
    view.flags.writeable = False
    data = Dataset(view, y, xt, yt)
    x[0, 0] = 1e6  # the memory behind the view changes...
    assert data.x_train[0, 0] != 1e6  # ...the dataset's own copy does not


def test_frozen_after_pickling_and_materializing_dask_data():
    x, y, xt, yt = _arrays()
    data = pickle.loads(pickle.dumps(Dataset(x, y, xt, yt)))
    assert not any(getattr(data, name).flags.writeable for name in ARRAYS)
    with pytest.raises(FrozenInstanceError):
        data.x_test = xt
    lazy = Dataset(da.from_array(x, chunks=4), y, xt, yt)
    numpy_data = lazy.materialize()
    assert numpy_data.fingerprint == lazy.fingerprint == data.fingerprint
    assert not numpy_data.x_train.flags.writeable
    assert x.flags.writeable  # dask may hand back the very array it wraps: that one is never frozen


# -- Utility --------------------------------------------------------------------------------------


def _score_by_hand(model, data: Dataset) -> float:
    fitted = LogisticRegression(**model.get_params()).fit(np.array(data.x_train), np.array(data.y_train))
    return accuracy_score(data.y_test, fitted.predict(data.x_test))


def test_set_params_on_the_callers_model_changes_neither_values_nor_token():
    data = Dataset(*_arrays(40))
    model = LogisticRegression(C=1.0)
    u = Utility(model, data, "accuracy")
    token = u.token
    expected = _score_by_hand(LogisticRegression(C=1.0), data)
    model.set_params(C=1e-4)  # with C=1e-4 the model predicts one class: another score
    assert _score_by_hand(model, data) != expected
    assert u(range(data.n_players)) == pytest.approx(expected)
    assert u.token == token


def test_the_model_attribute_is_a_copy_and_identity_attributes_are_fixed():
    data = Dataset(*_arrays(40))
    u = Utility(LogisticRegression(C=1.0), data, "accuracy")
    token, expected = u.token, _score_by_hand(LogisticRegression(C=1.0), data)
    u.model.set_params(C=1e-4)
    assert u.model.get_params()["C"] == 1.0 and u.model is not u.model
    assert u(range(data.n_players)) == pytest.approx(expected) and u.token == token
    for attr, value in (("default_score", 0.5), ("data", data), ("catch_errors", False), ("token", "x"),
                        ("scorer", Scorer("accuracy")), ("model", LogisticRegression())):
        with pytest.raises(FrozenInstanceError, match=attr):
            setattr(u, attr, value)
    copy = pickle.loads(pickle.dumps(u))
    assert copy.token == token and copy(range(data.n_players)) == pytest.approx(expected)
    with pytest.raises(FrozenInstanceError):
        copy.default_score = 0.5


class _ThresholdScore:
    """A user's scoring object with public, mutable state."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def __call__(self, model, x, y) -> float:
        return float(np.mean((model.predict(x) > self.threshold) == y))


def test_scorers_keep_their_own_copy_and_are_immutable():
    data = Dataset(*_arrays(40))
    scoring = _ThresholdScore(0.5)
    u = Utility(LinearRegression(), data, scoring, default_score=0.0)
    token = u.token
    fitted = LinearRegression().fit(data.x_train, data.y_train)
    expected = float(np.mean((fitted.predict(data.x_test) > 0.5) == data.y_test))
    scoring.threshold = 10.0  # every prediction below: another score, had the utility shared the object
    assert u(range(data.n_players)) == pytest.approx(expected) and u.token == token
    with pytest.raises(FrozenInstanceError):
        u.scorer.range = (0.0, 2.0)


# -- games ----------------------------------------------------------------------------------------


class Linear(Game):
    """A user's game with extra state and no ``_params``: ``v(S) = sum of weights[S]``."""

    def __init__(self, weights) -> None:
        self.weights = np.asarray(weights, dtype=float)
        super().__init__(len(self.weights))

    def value(self, players):
        return float(self.weights[players].sum())


def test_user_games_differing_only_in_state_get_different_tokens_and_values():
    a, b = Linear([1.0, 2.0, 3.0]), Linear([3.0, 0.0, -1.0])
    assert a.token != b.token
    va, vb = dask.compute(exact_shapley(a), exact_shapley(b), scheduler="sync")
    np.testing.assert_allclose(va.value.values, [1.0, 2.0, 3.0])  # additive: Shapley values are the weights
    np.testing.assert_allclose(vb.value.values, [3.0, 0.0, -1.0])


def test_builtin_games_differing_in_one_parameter_are_computed_apart():
    low, high = WeightedVotingGame([1, 2, 3, 4], quota=3), WeightedVotingGame([1, 2, 3, 4], quota=6)
    assert low.token != high.token
    vl, vh = dask.compute(exact_shapley(low), exact_shapley(high), scheduler="sync")
    for game, values in ((low, vl), (high, vh)):
        def vote(players, game=game):
            return 1.0 if sum(game.weights[list(players)]) >= game.quota else 0.0

        np.testing.assert_allclose(values.value.values, _brute_force_shapley(vote, 4), atol=1e-12)
    assert not np.allclose(vl.value.values, vh.value.values)


def _sized():
    class Scaled(Game):
        def value(self, players):
            return float(players.size)

    return Scaled(3)


def _doubled():
    class Scaled(Game):
        def value(self, players):
            return 2.0 * players.size

    return Scaled(3)


def test_same_named_game_classes_with_different_code_do_not_collide():
    one, two = _sized(), _doubled()
    assert type(one).__name__ == type(two).__name__ == "Scaled"  # the old token: name and n_players
    assert one.token != two.token
    v1, v2 = dask.compute(exact_shapley(one), exact_shapley(two), scheduler="sync")
    np.testing.assert_allclose(v1.value.values, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(v2.value.values, [2.0, 2.0, 2.0])


def test_games_refuse_assignment_and_keep_read_only_arrays():
    weights = np.array([1.0, 2.0])
    game = AdditiveGame(weights)
    with pytest.raises(FrozenInstanceError, match="weights"):
        game.weights = np.array([5.0, 5.0])
    with pytest.raises(ValueError, match="read-only"):
        game.weights[0] = 5.0
    assert weights.flags.writeable
    weights[0] = 5.0  # the caller's array: the game kept its own copy
    assert game(np.array([0])) == 1.0
    with pytest.raises(FrozenInstanceError):
        Unchecked(game).game = AdditiveGame([0.0, 0.0])
    assert Unchecked(game).token == game.token
    assert pickle.loads(pickle.dumps(game)).token == game.token


# -- learned utilities ----------------------------------------------------------------------------


def test_learned_utilities_with_different_fitted_regressors_get_different_tokens():
    masks = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=float)
    first = LinearRegression().fit(masks, masks @ [1.0, 2.0, 3.0])
    second = LinearRegression().fit(masks, masks @ [3.0, 2.0, 1.0])
    same = dict(n_players=3, data_names=np.arange(3), token="source", holdout_rmse=0.0, holdout_r2=1.0,
                n_evaluations=5)
    a, b = LearnedUtility(first, **same), LearnedUtility(second, **same)
    assert a([0]) == pytest.approx(1.0) and b([0]) == pytest.approx(3.0)
    assert a.token != b.token
    token = a.token
    assert token == LearnedUtility(first, **same).token
    first.fit(masks, masks @ [9.0, 9.0, 9.0])  # refitting the caller's regressor changes nothing
    assert a([0]) == pytest.approx(1.0) and a.token == token
    with pytest.raises(FrozenInstanceError):
        a.holdout_rmse = math.nan


def test_learn_utility_tokens_cover_the_fitted_regressor():
    from sklearn.linear_model import Ridge

    game = AdditiveGame([1.0, 2.0, 3.0])
    plain = learn_utility(game, 30, regressor=LinearRegression(), seed=0)
    ridge = learn_utility(game, 30, regressor=Ridge(alpha=5.0), seed=0)
    assert plain.source_token == ridge.source_token  # same evaluations: the regressor makes the difference
    assert plain.token != ridge.token
    assert plain([0, 1]) != pytest.approx(ridge([0, 1]))
    plain.regressor.set_params(fit_intercept=False)  # a copy
    assert plain.regressor.get_params()["fit_intercept"] is True


def test_frozen_error_names_the_class_and_the_fix():
    with pytest.raises(FrozenInstanceError, match=r"AdditiveGame is immutable.*build a new AdditiveGame"):
        AdditiveGame([1.0]).weights = None
    with pytest.raises(InvalidParameterError, match=r"cannot be deep.copied"):
        Scorer(_Uncopyable())


class _Uncopyable:
    def __call__(self, model, x, y) -> float:
        return 0.0

    def __deepcopy__(self, memo):
        raise TypeError("no copies")
