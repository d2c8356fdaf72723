"""2D-Shapley (Liu et al., ICML 2023) against its definition, brute force over all row and feature subsets."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from dvl_dask import Dataset, Utility
from dvl_dask.errors import InvalidParameterError, TooManyPlayersError
from dvl_dask.valuation import FeatureSubsetUtility, exact_two_d_shapley, two_d_shapley

CELLS = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, 1.0], [-1.0, 2.0, 2.0], [0.5, 1.5, -0.5]])


class CellGame:
    """``u(S, F) = g(sum of the block's cells)``: additive for g = identity, with interactions otherwise."""

    def __init__(self, cells: np.ndarray, power: int = 1) -> None:
        self.cells, self.power = cells, power
        self.n_rows, self.n_features = cells.shape
        self.token = f"cell-game-{power}-{cells.tobytes().hex()}"
        self.row_names = np.array([f"r{i}" for i in range(self.n_rows)])
        self.feature_names = np.array([f"f{j}" for j in range(self.n_features)])
        self.score_range = None

    def __call__(self, rows, features) -> float:
        block = self.cells[np.ix_(np.asarray(rows, dtype=int), np.asarray(features, dtype=int))]
        return float(block.sum()) ** self.power


def brute_force_2d(u, n: int, m: int) -> np.ndarray:
    """The 2D-Shapley definition: Shapley-weighted double marginals over S ⊆ N\\{i}, F ⊆ M\\{j}."""
    cache = {}

    def value(rows, features):
        key = (frozenset(rows), frozenset(features))
        if key not in cache:
            cache[key] = u(sorted(rows), sorted(features))
        return cache[key]

    psi = np.zeros((n, m))
    for i, j in itertools.product(range(n), range(m)):
        other_rows = [r for r in range(n) if r != i]
        other_features = [f for f in range(m) if f != j]
        for s in range(n):
            for rows in itertools.combinations(other_rows, s):
                for f in range(m):
                    weight = 1.0 / (n * math.comb(n - 1, s) * m * math.comb(m - 1, f))
                    for features in itertools.combinations(other_features, f):
                        double = (value([*rows, i], [*features, j]) - value([*rows, i], features)
                                  - value(rows, [*features, j]) + value(rows, features))
                        psi[i, j] += weight * double
    return psi


def test_exact_on_an_additive_matrix_values_every_cell_as_itself():
    ds = exact_two_d_shapley(CellGame(CELLS), block_size=3)
    assert ds.value.dims == ("sample", "feature")
    assert ds.sample.values.tolist() == ["r0", "r1", "r2", "r3"] and ds.feature.values.tolist() == ["f0", "f1", "f2"]
    np.testing.assert_allclose(ds.value.values, CELLS, atol=1e-12)
    assert ds.attrs["estimate"] == "exact" and np.all(ds.stderr.values == 0)


def test_exact_matches_the_brute_force_definition_with_interactions():
    game = CellGame(CELLS, power=2)
    truth = brute_force_2d(game, 4, 3)
    ds = exact_two_d_shapley(game, block_size=5).compute(scheduler="sync")
    np.testing.assert_allclose(ds.value.values, truth, atol=1e-10)
    # 2D efficiency: the cells share u(N, M) - u(N, {}) - u({}, M) + u({}, {})
    assert ds.value.values.sum() == pytest.approx(game(range(4), range(3)))


def test_monte_carlo_is_exact_on_an_additive_matrix_and_unbiased_with_interactions():
    ds = two_d_shapley(CellGame(CELLS), n_permutations=6, seed=0).compute(scheduler="sync")
    np.testing.assert_allclose(ds.value.values, CELLS, atol=1e-12)  # every double marginal is the cell
    game = CellGame(CELLS, power=2)
    mc = two_d_shapley(game, n_permutations=400, seed=1, items_per_block=50).compute(scheduler="sync")
    truth = brute_force_2d(game, 4, 3)
    assert np.all(np.isfinite(mc.stderr.values))
    assert np.all(np.abs(mc.value.values - truth) <= 4.5 * mc.stderr.values), (mc.value.values, truth)
    assert np.all(mc.counts.values == 400)


def test_same_seed_same_values_any_layout():
    game = CellGame(CELLS, power=2)
    a = two_d_shapley(game, n_permutations=12, seed=3, items_per_block=4).compute(scheduler="sync")
    b = two_d_shapley(game, n_permutations=12, seed=3, items_per_block=4).compute(scheduler="threads")
    np.testing.assert_array_equal(a.value.values, b.value.values)


def test_feature_subset_utility_fits_on_the_selected_columns():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3))
    y = 2.0 * x[:, 0] - x[:, 2] + rng.normal(scale=0.1, size=4)
    x_test = rng.normal(size=(5, 3))
    y_test = 2.0 * x_test[:, 0] - x_test[:, 2]
    utility = FeatureSubsetUtility(
        Utility(LinearRegression(), Dataset(x, y, x_test, y_test, feature_names=["a", "b", "c"]),
                "neg_mean_squared_error", default_score=-10.0)
    )

    def by_hand(rows, features):
        if not rows or not features:
            return -10.0
        model = LinearRegression().fit(x[np.ix_(rows, features)], y[rows])
        return -float(np.mean((model.predict(x_test[:, features]) - y_test) ** 2))

    assert utility([0, 1, 3], [0, 2]) == pytest.approx(by_hand([0, 1, 3], [0, 2]))
    ds = exact_two_d_shapley(utility).compute(scheduler="sync")
    np.testing.assert_allclose(ds.value.values, brute_force_2d(by_hand, 4, 3), atol=1e-9)
    assert ds.feature.values.tolist() == ["a", "b", "c"]


def test_bad_input():
    with pytest.raises(InvalidParameterError, match="utility"):
        exact_two_d_shapley(lambda rows, features: 0.0)
    with pytest.raises(InvalidParameterError, match="n_permutations"):
        two_d_shapley(CellGame(CELLS), n_permutations=0)
    with pytest.raises(TooManyPlayersError, match="n \\+ m"):
        exact_two_d_shapley(CellGame(np.ones((12, 10))))
    x = np.arange(4.0)
    one_d = Utility(LinearRegression(), Dataset(x, x, x, x), "r2", default_score=0.0)
    with pytest.raises(InvalidParameterError, match="2-d features"):
        FeatureSubsetUtility(one_d)
    with pytest.raises(InvalidParameterError, match=r"dvl_dask\.Utility"):
        FeatureSubsetUtility(CellGame(CELLS))


def test_a_2d_utility_returning_nan_fails_clearly():
    class Broken(CellGame):
        def __call__(self, rows, features):
            return float("nan") if len(rows) == 2 else super().__call__(rows, features)

    with pytest.raises(InvalidParameterError, match="Broken"):
        exact_two_d_shapley(Broken(CELLS)).compute(scheduler="sync")
    with pytest.raises(InvalidParameterError, match="Broken"):
        two_d_shapley(Broken(CELLS), n_permutations=2, seed=0).compute(scheduler="sync")


class CountingRegression(LinearRegression):
    """LinearRegression that counts its fits (class-wide: the utility fits clones)."""

    fits = 0

    def fit(self, x, y, sample_weight=None):
        type(self).fits += 1
        return super().fit(x, y, sample_weight=sample_weight)


def test_feature_subset_utility_memoises_blocks_in_the_utility_cache():
    from dvl_dask.cache import InMemoryCacheBackend

    x = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0], [3.0, 0.0, 1.0]])
    y = 2.0 * x[:, 0] - x[:, 2]
    backend = InMemoryCacheBackend()
    utility = Utility(CountingRegression(), Dataset(x, y, x, y), "r2", default_score=0.0, cache=backend)
    two_d = FeatureSubsetUtility(utility)
    CountingRegression.fits = 0
    first = two_d([0, 1, 3], [0, 2])
    assert CountingRegression.fits == 1
    # the same block, given in another order: a hit, no fit
    assert two_d([3, 1, 0], [2, 0]) == first and CountingRegression.fits == 1
    stats = two_d.cache_stats
    assert (stats.hits, stats.misses) == (1, 1)
    # the same rows with other features, and other rows with the same features: misses, with their own values
    other = two_d([0, 1, 3], [0, 1])
    assert CountingRegression.fits == 2 and (two_d.cache_stats.hits, two_d.cache_stats.misses) == (1, 2)
    by_hand = LinearRegression().fit(x[[0, 1, 3]][:, [0, 1]], y[[0, 1, 3]]).score(x[:, [0, 1]], y)
    assert other == pytest.approx(by_hand)
    two_d([0, 1], [0, 2])
    assert CountingRegression.fits == 3
    # a block with every feature does not share the 1-d utility's entry for the same rows
    utility([0, 1, 3])
    assert CountingRegression.fits == 4
    # a copy sent to a worker (pickled) memoises again, against the same in-process entries: a hit
    import pickle

    clone = pickle.loads(pickle.dumps(two_d))
    assert clone([0, 1, 3], [0, 2]) == first and CountingRegression.fits == 4
    assert clone.cache_stats.hits == 1


def test_feature_subset_utility_without_cache_has_no_cache_stats():
    x = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 1.0]])
    two_d = FeatureSubsetUtility(Utility(LinearRegression(), Dataset(x, x[:, 0], x, x[:, 0]), "r2", default_score=0.0))
    with pytest.raises(InvalidParameterError, match="cache"):
        two_d.cache_stats


def test_two_d_results_sort_and_rank_their_cells():
    ds = two_d_shapley(CellGame(CELLS, power=2), n_permutations=4, seed=1)  # lazy: the accessor computes it
    values = ds.value.values
    flat = [(values[i, j], f"r{i}", f"f{j}") for i in range(4) for j in range(3)]
    by_value = sorted(flat, key=lambda t: -t[0])
    top = ds.dvl.top_k(3)
    assert top.value.dims == ("cell",)
    assert list(zip(top.sample.values, top.feature.values)) == [(r, f) for _, r, f in by_value[:3]]
    np.testing.assert_array_equal(top.value.values, [v for v, _, _ in by_value[:3]])
    bottom = ds.dvl.bottom_k(2)
    assert list(zip(bottom.sample.values, bottom.feature.values)) == [(r, f) for _, r, f in by_value[::-1][:2]]
    assert ds.dvl.sort().sizes["cell"] == 12
    ranks = ds.dvl.rank()
    assert ranks.dims == ("sample", "feature")
    for position, (_, r, f) in enumerate(by_value, start=1):
        assert int(ranks.sel(sample=r, feature=f)) == position


def test_two_d_runs_of_the_same_game_merge_cell_by_cell():
    from dvl_dask.results import merge_results

    game = CellGame(CELLS, power=2)
    a = two_d_shapley(game, n_permutations=4, seed=1).compute(scheduler="sync")
    b = two_d_shapley(game, n_permutations=6, seed=2).compute(scheduler="sync")
    merged = a.dvl.merge(b)
    assert merged.value.dims == ("sample", "feature") and (merged.counts.values == 10).all()
    # the pooled mean and standard error, by hand: count-weighted, independent samples
    np.testing.assert_allclose(merged.value.values, (4 * a.value.values + 6 * b.value.values) / 10, rtol=1e-12)
    pooled = np.sqrt((4 * a.stderr.values) ** 2 + (6 * b.stderr.values) ** 2) / 10
    np.testing.assert_allclose(merged.stderr.values, pooled, rtol=1e-12)
    assert merged.dvl.parameters["n_permutations"] == 10 and merged.attrs["n_evaluations"] == 10 * 5 * 4
    with pytest.raises(InvalidParameterError, match="share samples"):
        merge_results(a, a)
    with pytest.raises(InvalidParameterError, match="exact"):
        merge_results(exact_two_d_shapley(game), exact_two_d_shapley(game))
    renamed = b.assign_coords(feature=["x", "y", "z"])
    with pytest.raises(InvalidParameterError, match="different features"):
        merge_results(a, renamed)
    one_d = b.isel(feature=0)
    with pytest.raises(InvalidParameterError, match="2D-Shapley result values cells"):
        merge_results(a, one_d)


def test_two_d_result_round_trips_through_zarr(tmp_path):
    from dvl_dask import open_result, to_zarr

    ds = two_d_shapley(CellGame(CELLS, power=2), n_permutations=3, seed=5).compute(scheduler="sync")
    to_zarr(ds, tmp_path / "cells.zarr")
    back = open_result(tmp_path / "cells.zarr")
    assert back.value.dims == ("sample", "feature")
    assert back.sample.values.tolist() == ds.sample.values.tolist()
    assert back.feature.values.tolist() == ["f0", "f1", "f2"]
    for name in ("value", "stderr", "counts"):
        np.testing.assert_array_equal(back[name].values, ds[name].values)
    assert back.attrs["provenance"] == ds.attrs["provenance"] and back.attrs["seed"] == ds.attrs["seed"]
    assert back.feature.attrs["long_name"] == "feature"


def test_functions_of_one_value_per_player_refuse_two_d_results_clearly():
    from dvl_dask.errors import SchemaError
    from dvl_dask.evaluation import detection_scores

    ds = exact_two_d_shapley(CellGame(CELLS)).compute(scheduler="sync")
    with pytest.raises(SchemaError, match=r"2D-Shapley result .* supported by ds\.dvl .* merge_results, to_zarr"):
        ds.dvl.to_valuation_result()
    with pytest.raises(SchemaError, match="2D-Shapley result"):
        detection_scores(ds, np.zeros(4, dtype=bool))
    # one feature's column of cells is a result over samples again
    assert ds.isel(feature=0).dvl.top_k(1).sample.values.tolist() == ["r1"]
