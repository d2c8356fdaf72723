"""KNN-Shapley against brute force on the KNN utility, sklearn's predict_proba and every scheduler."""

from __future__ import annotations

import itertools
import json
import math

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

from dvl_dask import Dataset, GroupedDataset
from dvl_dask.errors import DvlDaskError, InvalidDataError, InvalidModelError
from dvl_dask.testing import assert_valid_valuation_dataset
from dvl_dask.valuation import exact_shapley, knn_shapley


def knn_utility(x_train, y_train, x_test, y_test, k, subset, metric="euclidean") -> float:
    """The KNN utility from its definition: share of the K nearest members of S with the test label."""
    subset = list(subset)
    if not subset:
        return 0.0
    from scipy.spatial.distance import cdist

    d = cdist(x_test, x_train[subset], metric=metric)
    total = 0.0
    for j in range(len(x_test)):
        nearest = np.asarray(subset)[np.argsort(d[j], kind="stable")[: min(k, len(subset))]]
        total += np.sum(y_train[nearest] == y_test[j]) / k
    return total / len(x_test)


def brute_force(x_train, y_train, x_test, y_test, k, metric="euclidean") -> np.ndarray:
    """Average marginal contribution over all permutations (independent of the library)."""
    n = len(x_train)
    phi = np.zeros(n)
    cache: dict[frozenset, float] = {}

    def u(s):
        key = frozenset(s)
        if key not in cache:
            cache[key] = knn_utility(x_train, y_train, x_test, y_test, k, sorted(key), metric)
        return cache[key]

    for perm in itertools.permutations(range(n)):
        prefix: list[int] = []
        prev = 0.0
        for i in perm:
            prefix.append(i)
            cur = u(prefix)
            phi[i] += cur - prev
            prev = cur
    return phi / math.factorial(n)


def random_data(rng, n_train, n_test, n_features=3, n_classes=2):
    x_train = rng.normal(size=(n_train, n_features))
    x_test = rng.normal(size=(n_test, n_features))
    return x_train, rng.integers(0, n_classes, n_train), x_test, rng.integers(0, n_classes, n_test)


@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_equals_brute_force_shapley(rng, k):
    x_train, y_train, x_test, y_test = random_data(rng, 6, 5, n_classes=3)
    values = knn_shapley(Dataset(x_train, y_train, x_test, y_test), KNeighborsClassifier(n_neighbors=k))
    assert_valid_valuation_dataset(values)
    np.testing.assert_allclose(values.value.compute(), brute_force(x_train, y_train, x_test, y_test, k), atol=1e-12)


@pytest.mark.parametrize(
    ("model", "metric"),
    [
        (KNeighborsClassifier(n_neighbors=2, p=1), "cityblock"),
        (KNeighborsClassifier(n_neighbors=2, metric="cosine"), "cosine"),
        (KNeighborsClassifier(n_neighbors=3, metric="chebyshev"), "chebyshev"),
    ],
)
def test_other_metrics_equal_brute_force(rng, model, metric):
    x_train, y_train, x_test, y_test = random_data(rng, 6, 4)
    values = knn_shapley(Dataset(x_train, y_train, x_test, y_test), model).value.compute()
    np.testing.assert_allclose(
        values, brute_force(x_train, y_train, x_test, y_test, model.n_neighbors, metric), atol=1e-12
    )


class KnnGame:
    """The KNN utility as a game, so the library's exact Shapley gives an independent reference."""

    def __init__(self, x_train, y_train, x_test, y_test, k):
        self.args = (x_train, y_train, x_test, y_test, k)
        self.n_players = len(x_train)
        self.data_names = np.arange(self.n_players)
        self.token = dask.base.tokenize(*self.args)

    def __call__(self, indices) -> float:
        return knn_utility(*self.args, sorted(int(i) for i in indices))

    def __dask_tokenize__(self):
        return self.token


def test_equals_exact_shapley_of_the_knn_game_n10(rng):
    x_train, y_train, x_test, y_test = random_data(rng, 10, 6, n_classes=3)
    expected = exact_shapley(KnnGame(x_train, y_train, x_test, y_test, 3)).value.compute(scheduler="sync")
    values = knn_shapley(Dataset(x_train, y_train, x_test, y_test), KNeighborsClassifier(n_neighbors=3))
    np.testing.assert_allclose(values.value.compute(), expected, atol=1e-12)


def test_utility_is_predict_proba_of_the_true_class(rng):
    """Ties aside, the utility the closed form values is sklearn's KNN likelihood of the true label."""
    x_train, y_train, x_test, y_test = random_data(rng, 30, 20, n_classes=3)
    for subset in (range(30), range(0, 30, 2), range(5, 9)):
        subset = list(subset)
        knn = KNeighborsClassifier(n_neighbors=4).fit(x_train[subset], y_train[subset])
        proba = knn.predict_proba(x_test)
        columns = np.searchsorted(knn.classes_, y_test)
        in_classes = np.isin(y_test, knn.classes_)
        expected = np.where(in_classes, proba[np.arange(20), np.minimum(columns, len(knn.classes_) - 1)], 0.0).mean()
        assert knn_utility(x_train, y_train, x_test, y_test, 4, subset) == pytest.approx(expected)


@settings(max_examples=25, deadline=None)
@given(
    n_train=st.integers(1, 40),
    n_test=st.integers(1, 12),
    k=st.integers(1, 8),
    test_chunk=st.integers(1, 5),
    train_chunk=st.integers(1, 17),
    seed=st.integers(0, 2**32 - 1),
)
def test_efficiency_and_chunking(n_train, n_test, k, test_chunk, train_chunk, seed):
    """Values sum to u(N) (efficiency) and do not depend on chunk sizes or on numpy vs dask input."""
    rng = np.random.default_rng(seed)
    x_train, y_train, x_test, y_test = random_data(rng, n_train, n_test)
    model = KNeighborsClassifier(n_neighbors=k)
    reference = knn_shapley(Dataset(x_train, y_train, x_test, y_test), model).value.compute(scheduler="sync")
    assert reference.sum() == pytest.approx(knn_utility(x_train, y_train, x_test, y_test, k, range(n_train)))
    lazy = Dataset(
        da.from_array(x_train, chunks=(train_chunk, 3)),
        da.from_array(y_train, chunks=train_chunk),
        da.from_array(x_test, chunks=(test_chunk, 3)),
        da.from_array(y_test, chunks=test_chunk),
    )
    chunked = knn_shapley(lazy, model, test_chunk_size=test_chunk).value.compute(scheduler="threads")
    np.testing.assert_allclose(chunked, reference, atol=1e-12)


def test_float32_string_labels_and_names(rng):
    x_train, y_train, x_test, y_test = random_data(rng, 7, 4)
    labels = np.array(["cat", "dog"])
    data = Dataset(
        x_train.astype(np.float32),
        labels[y_train],
        x_test.astype(np.float32),
        labels[y_test],
        data_names=[f"p{i}" for i in range(7)],
    )
    values = knn_shapley(data, KNeighborsClassifier(n_neighbors=2))
    assert values.sample.values.tolist() == [f"p{i}" for i in range(7)]
    np.testing.assert_allclose(values.value.compute(), brute_force(x_train, y_train, x_test, y_test, 2), atol=1e-6)
    assert values.attrs["method"] == "knn_shapley"
    assert (values.counts.values == 4).all() and (values.stderr.values == 0).all()


def test_lazy_and_one_task_per_test_chunk(rng):
    x_train, y_train, x_test, y_test = random_data(rng, 50, 40)
    values = knn_shapley(Dataset(x_train, y_train, x_test, y_test), KNeighborsClassifier(), test_chunk_size=10)
    graph = dict(values.value.data.__dask_graph__())
    assert sum(1 for key in graph if str(key[0] if isinstance(key, tuple) else key).startswith("knn-shapley-")) == 4
    same = knn_shapley(Dataset(x_train, y_train, x_test, y_test), KNeighborsClassifier(), test_chunk_size=10)
    assert same.value.data.name == values.value.data.name
    other = knn_shapley(
        Dataset(x_train, y_train, x_test, y_test), KNeighborsClassifier(n_neighbors=4), test_chunk_size=10
    )
    assert other.value.data.name != values.value.data.name


@pytest.mark.distributed
def test_distributed_equals_sync(rng, client):
    x_train, y_train, x_test, y_test = random_data(rng, 200, 30)
    data = Dataset(x_train, y_train, x_test, y_test)
    values = knn_shapley(data, KNeighborsClassifier(n_neighbors=5), test_chunk_size=8)
    np.testing.assert_allclose(
        client.compute(values.value).result(), values.value.compute(scheduler="sync"), atol=1e-12
    )


@pytest.mark.parametrize(
    ("model", "error", "match"),
    [
        (KNeighborsClassifier(weights="distance"), InvalidModelError, "weights='uniform'"),
        (KNeighborsClassifier(metric="precomputed"), InvalidModelError, "precomputed"),
        (KNeighborsRegressor(weights="distance"), InvalidModelError, "weights='uniform'"),
        ("knn", InvalidModelError, "KNeighborsClassifier"),
    ],
)
def test_refuses_models_without_closed_form(rng, model, error, match):
    data = Dataset(*random_data(rng, 5, 3))
    with pytest.raises(error, match=match):
        knn_shapley(data, model)


def test_refuses_bad_data(rng):
    x_train, y_train, x_test, y_test = random_data(rng, 6, 3)
    with pytest.raises(InvalidDataError, match="GroupedDataset"):
        knn_shapley(
            GroupedDataset(x_train, y_train, x_test, y_test, data_groups=[0, 0, 1, 1, 2, 2]), KNeighborsClassifier()
        )
    with pytest.raises(InvalidDataError, match="2-d features"):
        knn_shapley(Dataset(x_train[:, 0], y_train, x_test[:, 0], y_test), KNeighborsClassifier())
    with pytest.raises(DvlDaskError, match="Dataset"):
        knn_shapley((x_train, y_train), KNeighborsClassifier())
    with pytest.raises(DvlDaskError, match="test_chunk_size"):
        knn_shapley(Dataset(x_train, y_train, x_test, y_test), KNeighborsClassifier(), test_chunk_size=0)


# -- KNN regression (issue 28) ---------------------------------------------------------------------
def knn_regression_utility(x_train, y_train, x_test, y_test, k, subset) -> float:
    """Negative squared error of the KNN regressor written out: mean of the K nearest targets (sum / K)."""
    subset = list(subset)
    total = 0.0
    for a, t in zip(x_test, y_test, strict=True):
        nearest = [subset[j] for j in np.argsort(np.linalg.norm(x_train[subset] - a, axis=1))[:k]] if subset else []
        total += -(np.sum(y_train[nearest]) / k - t) ** 2
    return total / len(x_test)


def brute_force_subsets(u, n) -> np.ndarray:
    """Shapley values from the subset formula, each coalition evaluated once."""
    values = {s: u(s) for size in range(n + 1) for s in itertools.combinations(range(n), size)}
    phi = np.zeros(n)
    for s, value in values.items():
        for i in range(n):
            if i in s:
                phi[i] += value / (n * math.comb(n - 1, len(s) - 1))
            else:
                phi[i] -= value / (n * math.comb(n - 1, len(s)))
    return phi


@pytest.mark.parametrize("k", [1, 2, 3, 8])
def test_knn_regression_matches_brute_force_over_all_subsets(rng, k):
    x_train, x_test = rng.normal(size=(7, 2)), rng.normal(size=(3, 2))
    y_train, y_test = rng.normal(size=7) * 3, rng.normal(size=3)
    truth = brute_force_subsets(
        lambda s: knn_regression_utility(x_train, y_train, x_test, y_test, k, s), 7
    )
    ds = knn_shapley(Dataset(x_train, y_train, x_test, y_test), KNeighborsRegressor(n_neighbors=k), test_chunk_size=2)
    np.testing.assert_allclose(ds.value.values, truth, atol=1e-12)
    assert json.loads(ds.attrs["parameters"])["utility"] == "negative squared error"


def test_knn_regression_utility_is_the_regressors_error(rng):
    # The written-out utility is sklearn's KNeighborsRegressor for coalitions of at least K points.
    x_train, x_test = rng.normal(size=(6, 2)), rng.normal(size=(4, 2))
    y_train, y_test = rng.normal(size=6), rng.normal(size=4)
    subset = [0, 2, 3, 5]
    model = KNeighborsRegressor(n_neighbors=3).fit(x_train[subset], y_train[subset])
    expected = -np.mean((model.predict(x_test) - y_test) ** 2)
    assert knn_regression_utility(x_train, y_train, x_test, y_test, 3, subset) == pytest.approx(expected)


def test_knn_regression_and_classification_keys_differ(rng):
    x_train, y_train, x_test, y_test = random_data(rng, 6, 3)
    data = Dataset(x_train, y_train.astype(float), x_test, y_test.astype(float))
    a = knn_shapley(data, KNeighborsRegressor(n_neighbors=2))
    b = knn_shapley(data, KNeighborsClassifier(n_neighbors=2))
    assert a.attrs["utility_token"] != b.attrs["utility_token"]
    assert not set(dict(a.__dask_graph__())) & {k for k in dict(b.__dask_graph__()) if "knn-shapley" in str(k)}


def test_knn_regression_refuses_non_numeric_targets(rng):
    x = rng.normal(size=(4, 2))
    with pytest.raises(InvalidDataError, match="numeric targets"):
        knn_shapley(Dataset(x, np.array(["a", "b", "a", "b"]), x, np.array(["a", "b", "a", "b"])),
                    KNeighborsRegressor(n_neighbors=1))
