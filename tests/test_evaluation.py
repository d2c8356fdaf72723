"""Evaluation: removal/addition curves on flipped labels, detection metrics vs scikit-learn, stability."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score
from sklearn.neighbors import KNeighborsClassifier

from dvl_dask import Dataset, Utility
from dvl_dask.errors import InvalidParameterError
from dvl_dask.evaluation import (
    detection_scores,
    flip_labels,
    point_addition_curve,
    point_removal_curve,
    rank_stability,
    top_k_overlap,
    weighted_accuracy_drop,
)
from dvl_dask.testing import raise_if_dask_computes
from dvl_dask.testing.games import AdditiveGame
from dvl_dask.valuation import exact_shapley, knn_shapley


@pytest.fixture(scope="module")
def noisy_knn():
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    x = StandardScaler().fit_transform(x)
    rng = np.random.default_rng(0)
    rows = rng.permutation(len(y))
    train, test = rows[:150], rows[150:350]
    y_train, flipped = flip_labels(y[train], 0.15, seed=1)
    data = Dataset(x[train], y_train, x[test], y[test])
    model = KNeighborsClassifier(n_neighbors=5)
    values = knn_shapley(data, model)
    return Utility(model, data, "accuracy"), values, flipped


def test_removal_curve_separates_lowest_from_highest(noisy_knn):
    utility, values, _ = noisy_knn
    with raise_if_dask_computes():
        curve = point_removal_curve(values, utility, fractions=np.linspace(0, 0.3, 7), n_random=3, seed=0)
    assert curve.score.dims == ("order", "step") and curve.order.values.tolist() == ["highest", "lowest", "random"]
    computed = curve.compute()
    lowest, highest = computed.score.sel(order="lowest").values, computed.score.sel(order="highest").values
    assert lowest[0] == highest[0] == computed.score.sel(order="random").values[0]
    assert lowest[-1] > highest[-1]
    assert lowest[1:].mean() >= lowest[0]  # dropping mislabelled points helps
    assert weighted_accuracy_drop(computed, "highest") > weighted_accuracy_drop(computed, "lowest")
    assert computed.score_std.sel(order="random").values[1:].max() > 0
    np.testing.assert_array_equal(computed.n_points.values, np.round(np.linspace(0, 0.3, 7) * 150).astype(int))


def test_curves_are_equal_on_every_scheduler(noisy_knn, client):
    utility, values, _ = noisy_knn
    curve = point_addition_curve(values, utility, fractions=[0.2, 0.6, 1.0], n_random=2, seed=3)
    sync = curve.score.compute(scheduler="sync").values
    np.testing.assert_array_equal(curve.score.compute(scheduler="threads").values, sync)
    np.testing.assert_array_equal(client.compute(curve.score).result().values, sync)
    again = point_addition_curve(values, utility, fractions=[0.2, 0.6, 1.0], n_random=2, seed=3)
    assert again.score.data.name == curve.score.data.name


def test_addition_curve_on_a_game_is_exact():
    game = AdditiveGame([3.0, 1.0, 2.0, -1.0])
    curve = point_addition_curve(exact_shapley(game), game, fractions=[0, 0.5, 1.0], orders=["highest", "lowest"])
    np.testing.assert_allclose(curve.score.values, [[0.0, 5.0, 5.0], [0.0, 0.0, 5.0]])


def test_detection_scores_equal_sklearn():
    rng = np.random.default_rng(2)
    values = rng.normal(size=50)
    corrupted = rng.random(50) < 0.2
    values[corrupted] -= 1.0
    scores = detection_scores(values, corrupted, threshold=-0.5)
    assert scores["roc_auc"] == pytest.approx(roc_auc_score(corrupted, -values))
    assert scores["average_precision"] == pytest.approx(average_precision_score(corrupted, -values))
    assert scores["f1_threshold"] == pytest.approx(f1_score(corrupted, values < -0.5))
    k = int(corrupted.sum())
    flagged = np.argsort(values)[:k]
    assert scores["precision_at_k"] == pytest.approx(corrupted[flagged].mean())
    assert scores["recall_at_k"] == pytest.approx(corrupted[flagged].sum() / corrupted.sum())


def test_knn_values_detect_flipped_labels(noisy_knn):
    _, values, flipped = noisy_knn
    assert detection_scores(values.compute(), flipped)["roc_auc"] > 0.8


def test_flip_labels_is_reproducible_and_changes_exactly_the_mask():
    y = np.array([0, 1, 2] * 20)
    a, mask_a = flip_labels(y, 0.25, seed=4)
    b, mask_b = flip_labels(y, 0.25, seed=4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(mask_a, mask_b)
    assert mask_a.sum() == 15 and np.all(a[mask_a] != y[mask_a]) and np.all(a[~mask_a] == y[~mask_a])
    assert not np.array_equal(flip_labels(y, 0.25, seed=5)[1], mask_a)


def test_rank_stability():
    a = np.arange(20.0)
    stats = rank_stability(a, a[::-1], k=5)
    assert stats["spearman"] == pytest.approx(-1.0) and stats["kendall"] == pytest.approx(-1.0)
    assert stats["top_k_overlap"] == 0.0
    assert rank_stability(a, 2 * a)["spearman"] == pytest.approx(1.0)
    assert top_k_overlap(a, a + 0.1, 3) == 1.0


def test_bad_input(noisy_knn):
    utility, values, flipped = noisy_knn
    with pytest.raises(InvalidParameterError, match="fractions"):
        point_removal_curve(values, utility, fractions=[0.2, 1.5])
    with pytest.raises(InvalidParameterError, match="orders"):
        point_removal_curve(values, utility, orders=["best"])
    with pytest.raises(InvalidParameterError, match="data_names"):
        point_removal_curve(values.isel(sample=slice(0, 10)), utility)
    with pytest.raises(InvalidParameterError, match="corrupted"):
        detection_scores(values.compute(), flipped.astype(int))
    with pytest.raises(InvalidParameterError, match="two classes"):
        flip_labels([1, 1, 1], 0.5)
    with pytest.raises(InvalidParameterError, match="same points"):
        rank_stability([1.0, 2.0], [1.0, 2.0, 3.0])


def test_curve_steps_share_one_valuation():
    """Lazy values are computed once for the whole curve, not once per step."""
    from dvl_dask.valuation import permutation_shapley

    class Counting(AdditiveGame):
        calls = 0

        def value(self, players):
            Counting.calls += 1
            return super().value(players)

    game = Counting([1.0, 2.0, 3.0, 4.0])
    values = permutation_shapley(game, n_permutations=10, seed=0)
    values.value.compute(scheduler="sync")
    per_valuation, Counting.calls = Counting.calls, 0
    curve = point_removal_curve(values, game, fractions=[0, 0.25, 0.5], orders=["highest", "lowest"])
    curve.score.compute(scheduler="threads")
    assert Counting.calls == per_valuation + 6
