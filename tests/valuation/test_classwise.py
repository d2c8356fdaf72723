"""Class-wise Shapley against a brute-force implementation of its definition (Schoch et al. 2022)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from dvl_dask import Dataset, GroupedDataset, Utility
from dvl_dask.errors import InvalidDataError, InvalidParameterError
from dvl_dask.testing import assert_valid_valuation_dataset
from dvl_dask.testing.games import MinerGame
from dvl_dask.valuation import classwise_shapley

_MEMO: dict = {}


def cs_utility(model, x, y, x_test, y_test, rows, label) -> float:
    """a_in * exp(a_out), written from the paper's definition (memoized per problem)."""
    key = (id(model), x.tobytes(), y.tobytes(), tuple(sorted(rows)), label)
    if key not in _MEMO:
        _MEMO[key] = _cs_utility(model, x, y, x_test, y_test, rows, label)
    return _MEMO[key]


def _cs_utility(model, x, y, x_test, y_test, rows, label) -> float:
    rows = sorted(rows)
    if not rows:
        return 0.0
    if len(set(y[rows])) == 1:
        pred = np.full(len(y_test), y[rows][0])
    else:
        from sklearn.base import clone

        pred = clone(model).fit(x[rows], y[rows]).predict(x_test)
    n = len(y_test)
    a_in = sum(p == t == label for p, t in zip(pred, y_test, strict=True)) / n
    a_out = sum(p == t != label for p, t in zip(pred, y_test, strict=True)) / n
    return a_in * math.exp(a_out)


def brute_force(model, x, y, x_test, y_test) -> np.ndarray:
    values = np.zeros(len(y))
    for label in np.unique(y):
        members = list(np.flatnonzero(y == label))
        others = list(np.flatnonzero(y != label))
        m = len(members)
        contexts = [c for r in range(len(others) + 1) for c in itertools.combinations(others, r)]
        for context in contexts:
            for i in members:
                rest = [j for j in members if j != i]
                for r in range(m):
                    weight = 1.0 / (m * math.comb(m - 1, r))
                    for s in itertools.combinations(rest, r):
                        gain = cs_utility(model, x, y, x_test, y_test, [*context, *s, i], label) - cs_utility(
                            model, x, y, x_test, y_test, [*context, *s], label
                        )
                        values[i] += weight * gain / len(contexts)
    return values


def _problem(rng, n0, n1):
    x = np.r_[rng.normal(-1, 1, (n0, 2)), rng.normal(1, 1, (n1, 2))]
    y = np.array([0] * n0 + [1] * n1)
    x_test = np.r_[rng.normal(-1, 1, (6, 2)), rng.normal(1, 1, (6, 2))]
    y_test = np.array([0] * 6 + [1] * 6)
    y[n0 - 1] = 1  # a mislabelled point
    return x, y, x_test, y_test


def _check_against_brute_force(model, x, y, x_test, y_test, n_samples):
    expected = brute_force(model, x, y, x_test, y_test)
    ds = classwise_shapley(Utility(model, Dataset(x, y, x_test, y_test), "accuracy"), n_samples, seed=1).compute()
    assert_valid_valuation_dataset(ds)
    z = (ds.value.values - expected) / np.maximum(ds.stderr.values, 1e-12)
    assert np.all(np.abs(z) < 4.5), (ds.value.values, expected)
    assert ds.label.values.tolist() == y.tolist()
    assert (ds.counts.values == n_samples // 2).all()


def test_equals_brute_force_definition_knn():
    x, y, x_test, y_test = _problem(np.random.default_rng(4), 4, 3)
    _check_against_brute_force(KNeighborsClassifier(n_neighbors=1), x, y, x_test, y_test, 800)


@pytest.mark.slow
def test_equals_brute_force_definition_logistic():
    x, y, x_test, y_test = _problem(np.random.default_rng(5), 3, 2)
    _check_against_brute_force(LogisticRegression(), x, y, x_test, y_test, 300)


def test_seeded_and_lazy():
    x = np.array([[0.0], [1.0], [3.0], [4.0]])
    y = np.array([0, 0, 1, 1])
    u = Utility(LogisticRegression(), Dataset(x, y, x, y), "accuracy")
    a = classwise_shapley(u, 10, seed=3, samples_per_block=3)
    b = classwise_shapley(u, 10, seed=3, samples_per_block=3)
    assert a.value.data.name == b.value.data.name
    np.testing.assert_array_equal(a.value.compute(scheduler="sync"), b.value.compute(scheduler="threads"))
    assert a.attrs["n_evaluations"] == 10 * 3


def test_bad_input():
    x = np.zeros((4, 1))
    with pytest.raises(InvalidParameterError, match="Utility"):
        classwise_shapley(MinerGame(4), 10)
    with pytest.raises(InvalidDataError, match="two classes"):
        one_class = Dataset(x, np.zeros(4, int), x, np.zeros(4, int))
        classwise_shapley(Utility(LogisticRegression(), one_class, "accuracy"), 4)
    grouped = GroupedDataset(x, np.array([0, 1, 0, 1]), x, np.array([0, 1, 0, 1]), data_groups=[0, 0, 1, 1])
    with pytest.raises(InvalidDataError, match="GroupedDataset"):
        classwise_shapley(Utility(LogisticRegression(), grouped, "accuracy"), 4)


def test_round_trip_through_zarr_keeps_labels(tmp_path):
    import dvl_dask

    x = np.array([[0.0], [1.0], [3.0], [4.0]])
    y = np.array([0, 0, 1, 1])
    ds = classwise_shapley(Utility(LogisticRegression(), Dataset(x, y, x, y), "accuracy"), 6, seed=0)
    dvl_dask.to_zarr(ds, tmp_path / "cs.zarr")
    back = dvl_dask.open_result(tmp_path / "cs.zarr")
    assert back.label.values.tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(back.value.values, ds.value.compute().values)


# -- normalize_values (pyDVL's ClasswiseShapleyValuation(normalize_values=True), issue 28) ---------
def _norm_data():
    x = np.array([[0.0], [0.4], [1.0], [2.6], [3.0], [3.8]])
    y = np.array([0, 0, 1, 1, 1, 0])
    x_test = np.array([[0.2], [0.8], [1.6], [2.9], [3.5], [0.1]])
    y_test = np.array([0, 0, 1, 1, 1, 1])
    return Dataset(x, y, x_test, y_test)


def test_normalized_values_sum_to_the_in_class_utility_of_each_class():
    data = _norm_data()
    model = KNeighborsClassifier(n_neighbors=1)
    u = Utility(model, data, "accuracy")
    raw = classwise_shapley(u, 12, seed=0).compute(scheduler="sync")
    ds = classwise_shapley(u, 12, seed=0, normalize_values=True).compute(scheduler="sync")
    assert ds.attrs["normalized"] in (True, 1)
    # In-class utility written out: 1-NN fitted on all six points, test points of the class it gets right / n_test.
    predictions = KNeighborsClassifier(n_neighbors=1).fit(data.x_train, data.y_train).predict(data.x_test)
    for label in (0, 1):
        members = data.y_train == label
        a_in = np.sum((predictions == data.y_test) & (data.y_test == label)) / len(data.y_test)
        total = raw.value.values[members].sum()
        assert total != 0
        np.testing.assert_allclose(ds.value.values[members].sum(), a_in, atol=1e-12)
        factor = a_in / total
        np.testing.assert_allclose(ds.value.values[members], factor * raw.value.values[members], atol=1e-12)
        # The stderr bound covers the error of the estimated class sum as well as the point's own.
        expected = abs(factor) * (raw.stderr.values[members] + np.abs(raw.value.values[members])
                                  * raw.stderr.values[members].sum() / abs(total))
        np.testing.assert_allclose(ds.stderr.values[members], expected, rtol=1e-12)
        assert np.all(ds.stderr.values[members] >= abs(factor) * raw.stderr.values[members])


def test_normalize_values_must_be_a_bool():
    u = Utility(KNeighborsClassifier(n_neighbors=1), _norm_data(), "accuracy")
    with pytest.raises(InvalidParameterError, match="normalize_values"):
        classwise_shapley(u, 4, seed=0, normalize_values="yes")


class CountingKNN(KNeighborsClassifier):
    """1-NN that counts its fits (class-wide: the method fits clones)."""

    fits = 0

    def fit(self, x, y):
        type(self).fits += 1
        return super().fit(x, y)


def test_evaluations_go_through_the_utility_cache():
    from dvl_dask.cache import InMemoryCacheBackend

    x, y, x_test, y_test = _problem(np.random.default_rng(4), 4, 3)
    data = Dataset(x, y, x_test, y_test)
    plain = classwise_shapley(Utility(CountingKNN(n_neighbors=1), data, "accuracy"), 12, seed=2).compute(
        scheduler="sync")
    cached = Utility(CountingKNN(n_neighbors=1), data, "accuracy", cache=InMemoryCacheBackend())
    CountingKNN.fits = 0
    first = classwise_shapley(cached, 12, seed=2).compute(scheduler="sync")
    fitted = CountingKNN.fits
    assert fitted > 0
    np.testing.assert_array_equal(first.value.values, plain.value.values)  # the cache changes no value
    # the same run again: every (rows, label) evaluation is a hit, no model is fitted
    again = classwise_shapley(cached, 12, seed=2).compute(scheduler="sync")
    assert CountingKNN.fits == fitted
    np.testing.assert_array_equal(again.value.values, first.value.values)
    # other samples: new coalitions, new fits
    classwise_shapley(cached, 12, seed=3).compute(scheduler="sync")
    assert CountingKNN.fits > fitted
