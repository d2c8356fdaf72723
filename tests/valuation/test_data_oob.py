"""Data-OOB: exact cases, noisy-label detection on real data, agreement with sklearn's bagging, schedulers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from dvl_dask import Dataset, GroupedDataset, Utility
from dvl_dask.errors import InvalidModelError, InvalidParameterError, UtilityFailureWarning
from dvl_dask.testing import assert_valid_valuation_dataset
from dvl_dask.testing.games import AirportGame
from dvl_dask.valuation import data_oob


def _utility(model, x, y, **kwargs):
    scorer = "accuracy" if y.dtype.kind in "iub" else "r2"
    return Utility(model, Dataset(x, y, x[:3], y[:3], **kwargs), scorer, default_score=0.0)


def test_majority_vote_model_is_exact():
    """A most-frequent classifier predicts the majority (class 0) of any bootstrap: values are 1 and 0."""
    y = np.array([0] * 18 + [1] * 2)
    u = _utility(DummyClassifier(strategy="most_frequent"), np.zeros((20, 1)), y)
    values = data_oob(u, n_estimators=60, seed=1)
    assert_valid_valuation_dataset(values)
    np.testing.assert_array_equal(values.value.compute(), (y == 0).astype(float))
    counts = values.counts.compute().values
    # Agreeing samples never report stderr 0: the floor 1.5 W / n with W = 1 for 0/1 scores.
    np.testing.assert_allclose(values.stderr.compute().values, 1.5 / counts)
    counts = values.counts.compute().values
    # Each point is out of bag of about exp(-0.8) = 45% of the 60 models.
    assert 10 <= counts.mean() <= 45 and counts.dtype == np.int64


def test_regression_scores_negative_squared_error():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = x @ np.array([1.0, -2.0, 0.5])
    y_noisy = y.copy()
    y_noisy[7] += 10.0
    exact = data_oob(_utility(LinearRegression(), x, y), n_estimators=40, seed=0).value.compute()
    np.testing.assert_allclose(exact, 0.0, atol=1e-18)
    noisy = data_oob(_utility(LinearRegression(), x, y_noisy), n_estimators=40, seed=0).value.compute().values
    assert noisy.argmin() == 7 and noisy[7] < -50


def test_flipped_labels_are_detected_on_breast_cancer():
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(3)
    rows = rng.choice(len(y), 200, replace=False)
    x, y = x[rows], y[rows].copy()
    flipped = rng.choice(200, 20, replace=False)
    y[flipped] = 1 - y[flipped]
    u = _utility(make_pipeline(StandardScaler(), LogisticRegression()), x, y)
    values = data_oob(u, n_estimators=100, seed=0).value.compute().values
    is_flipped = np.isin(np.arange(200), flipped)
    assert roc_auc_score(is_flipped, -values) >= 0.8


def test_agrees_with_sklearn_bagging_out_of_bag_accuracy():
    """An independent OOB estimate from sklearn's BaggingClassifier agrees within the Monte Carlo errors."""
    from sklearn.ensemble import BaggingClassifier

    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 2))
    y = (x[:, 0] + 0.7 * rng.normal(size=60) > 0).astype(int)
    tree = DecisionTreeClassifier(max_depth=2, random_state=0)
    ours = data_oob(_utility(tree, x, y), n_estimators=400, seed=2).compute()
    bag = BaggingClassifier(tree, n_estimators=400, max_samples=0.8, bootstrap=True, random_state=0).fit(x, y)
    hits, seen = np.zeros(60), np.zeros(60)
    for estimator, in_bag in zip(bag.estimators_, bag.estimators_samples_, strict=True):
        oob = np.setdiff1d(np.arange(60), in_bag)
        hits[oob] += estimator.predict(x[oob]) == y[oob]
        seen[oob] += 1
    reference = hits / seen
    ref_stderr = np.sqrt(reference * (1 - reference) / seen)
    z = (ours.value.values - reference) / np.sqrt(ours.stderr.values**2 + ref_stderr**2 + 1e-12)
    assert np.mean(np.abs(z) < 3.5) >= 0.97


def test_same_seed_same_values_on_every_scheduler(client):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 2))
    y = (x[:, 1] > 0).astype(int)
    values = data_oob(_utility(DecisionTreeClassifier(max_depth=3, random_state=0), x, y), n_estimators=30, seed=7)
    sync = values.value.compute(scheduler="sync").values
    np.testing.assert_array_equal(values.value.compute(scheduler="threads").values, sync)
    np.testing.assert_array_equal(client.compute(values.value).result().values, sync)
    other = data_oob(_utility(DecisionTreeClassifier(max_depth=3, random_state=0), x, y), n_estimators=30, seed=8)
    assert other.value.data.name != values.value.data.name
    assert values.attrs["seed"] == "7" and values.attrs["method"] == "data_oob"


def test_grouped_dataset_bootstraps_groups():
    y = np.array([0] * 16 + [1] * 4)
    data = GroupedDataset(np.zeros((20, 1)), y, np.zeros((2, 1)), y[:2], data_groups=np.arange(20) // 2)
    values = data_oob(Utility(DummyClassifier(), data, "accuracy"), n_estimators=40, seed=0).value.compute()
    assert values.sample.values.tolist() == list(range(10))
    np.testing.assert_array_equal(values.values, [1.0] * 8 + [0.0] * 2)


def test_bad_input_is_refused():
    x, y = np.zeros((10, 1)), np.array([0, 1] * 5)
    u = _utility(DummyClassifier(), x, y)
    with pytest.raises(InvalidParameterError, match="Utility"):
        data_oob(AirportGame([1.0, 2.0]))
    with pytest.raises(InvalidParameterError, match="n_estimators"):
        data_oob(u, n_estimators=0)
    with pytest.raises(InvalidParameterError, match="max_samples"):
        data_oob(u, max_samples=1.5)
    with pytest.raises(InvalidParameterError, match="point_score"):
        data_oob(u, point_score="accuracy")


def test_all_fits_failing_is_an_error_not_zeros():
    x, y = np.zeros((10, 1)), np.array([0, 1] * 5)
    u = _utility(LogisticRegression(), x, y)
    values = data_oob(u, n_estimators=4, max_samples=0.1, seed=0)  # one point per bootstrap: one class
    with pytest.warns(UtilityFailureWarning), pytest.raises(InvalidModelError, match="fit"):
        values.value.compute(scheduler="sync")
