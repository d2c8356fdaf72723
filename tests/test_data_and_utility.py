"""Dataset, GroupedDataset, Utility and Scorer: behaviour and clear errors for bad input."""

from __future__ import annotations

import subprocess
import sys

import cloudpickle
import dask.array as da
import numpy as np
import pytest
from helpers import CountingModel
from sklearn.linear_model import LogisticRegression

from dvl_dask import Dataset, GroupedDataset, Scorer, Utility
from dvl_dask.errors import (
    InvalidDataError,
    InvalidModelError,
    InvalidParameterError,
    UnknownScorerError,
    UnusableUtilityError,
    UtilityFailureWarning,
)
from dvl_dask.valuation import exact_shapley


def _xy(n=10, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), (np.arange(n) % 2)


# -- Dataset -------------------------------------------------------------------------------
def test_from_arrays_split_labels_and_fingerprint():
    x, y = _xy(20)
    data = Dataset.from_arrays(x, y, train_size=0.5, seed=1, stratify=True, data_names=[f"r{i}" for i in range(20)])
    assert data.n_players == 10 and len(data.x_test) == 10
    assert set(data.data_names) <= {f"r{i}" for i in range(20)}
    again = Dataset.from_arrays(x, y, train_size=0.5, seed=1, stratify=True, data_names=[f"r{i}" for i in range(20)])
    assert again.fingerprint == data.fingerprint
    other = Dataset.from_arrays(x + 1e-9, y, train_size=0.5, seed=1, stratify=True)
    assert other.fingerprint != data.fingerprint
    assert list(data.feature_names) == ["x0", "x1", "x2"]


def test_from_sklearn_bunch_and_loader():
    from sklearn.datasets import load_wine

    a = Dataset.from_sklearn(load_wine, train_size=0.5, seed=0)
    b = Dataset.from_sklearn(load_wine(), train_size=0.5, seed=0)
    assert a.fingerprint == b.fingerprint
    assert a.feature_names[0] == "alcohol"
    with pytest.raises(InvalidParameterError, match="sklearn Bunch"):
        Dataset.from_sklearn(object())


def test_dataset_accepts_dask_arrays_and_fingerprints_them_by_content_in_one_computation():
    from dvl_dask.testing import raise_if_dask_computes

    x, y = _xy(12)
    with raise_if_dask_computes(max_computes=1):
        data = Dataset(da.from_array(x[:8], chunks=4), da.from_array(y[:8], chunks=4), x[8:], y[8:])
    u = Utility(LogisticRegression(), data, "accuracy")
    assert 0.0 <= u(range(8)) <= 1.0
    # the same values as numpy arrays, or chunked differently: the same fingerprint
    assert data.fingerprint == Dataset(x[:8], y[:8], x[8:], y[8:]).fingerprint
    assert data.fingerprint == Dataset(da.from_array(x[:8], chunks=3), y[:8], x[8:], y[8:]).fingerprint
    with raise_if_dask_computes():  # an explicit version: the dask arrays are not read
        named = Dataset(da.from_array(x[:8], chunks=4), da.from_array(y[:8], chunks=4), x[8:], y[8:], version="v1")
    assert named.fingerprint != data.fingerprint
    with pytest.raises(InvalidParameterError, match="'version'"):
        Dataset(x[:8], y[:8], x[8:], y[8:], version=1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x_train=np.ones((3, 2)), y_train=np.ones(4)), "same number of samples"),
        (dict(x_train=np.array([[np.nan, 1.0]] * 3)), "NaN or infinite"),
        (dict(x_train=np.array([[np.inf, 1.0]] * 3)), "NaN or infinite"),
        (dict(x_train=np.ones((0, 2)), y_train=np.ones(0)), "empty"),
        (dict(x_test=np.ones((2, 5))), "same feature shape"),
        (dict(x_train=np.ones((3, 2, 1, 1, 1))), "dimension"),
        (dict(data_names=["a", "a", "b"]), "unique"),
        (dict(data_names=["a", "b"]), "length 3"),
    ],
)
def test_dataset_bad_input(kwargs, match):
    args = dict(x_train=np.ones((3, 2)), y_train=np.ones(3), x_test=np.ones((2, 2)), y_test=np.ones(2))
    args.update(kwargs)
    names = args.pop("data_names", None)
    with pytest.raises(InvalidDataError, match=match) as info:
        Dataset(**args, data_names=names)
    assert isinstance(info.value, ValueError)


def test_from_arrays_bad_train_size():
    x, y = _xy()
    with pytest.raises(InvalidParameterError, match="'train_size' parameter"):
        Dataset.from_arrays(x, y, train_size=1.5)
    with pytest.raises(InvalidParameterError, match="'seed' parameter"):
        Dataset.from_arrays(x, y, seed=np.random.default_rng(0))


def test_train_size_is_a_fraction_or_a_count_like_sklearn():
    x = np.arange(40.0).reshape(20, 2)
    y = np.arange(20) % 2
    by_count = Dataset.from_arrays(x, y, train_size=7, seed=3)
    assert by_count.n_players == 7 and len(by_count.x_test) == 13
    assert Dataset.from_arrays(x, y, train_size=np.int64(7), seed=3).fingerprint == by_count.fingerprint
    by_fraction = Dataset.from_arrays(x, y, train_size=0.37, seed=3)
    assert by_fraction.n_players == 7  # floor(0.37 * 20), as sklearn rounds
    for bad in (0, 20, -1):
        with pytest.raises(InvalidParameterError, match=r"count of training samples and must be in \[1, 19\]"):
            Dataset.from_arrays(x, y, train_size=bad)
    with pytest.raises(InvalidParameterError, match="'train_size' parameter"):
        Dataset.from_arrays(x, y, train_size=True)  # a bool is neither
    from sklearn.datasets import load_iris

    assert Dataset.from_sklearn(load_iris, train_size=30, seed=0, stratify=True).n_players == 30


def test_grouped_dataset_players_are_groups():
    x, y = _xy(8)
    groups = ["b", "a", "b", "c", "a", "c", "b", "a"]
    g = GroupedDataset(x, y, x, y, data_groups=groups)
    assert g.n_players == 3 and list(g.data_names) == ["a", "b", "c"]
    assert g.train_indices(np.array([0])).tolist() == [1, 4, 7]
    assert g.train_indices(np.array([1, 2])).tolist() == [0, 2, 3, 5, 6]
    u = Utility(CountingModel(), g, "neg_mean_squared_error", default_score=0.0)
    ds = exact_shapley(u).compute(scheduler="sync")
    assert list(ds["sample"].values) == ["a", "b", "c"]
    assert ds["value"].sum() == pytest.approx(u(range(3)) - u([]))
    with pytest.raises(InvalidDataError, match="data_groups"):
        GroupedDataset(x, y, x, y, data_groups=["a"])
    # different grouping of the same rows is a different dataset
    assert GroupedDataset(x, y, x, y, data_groups=list("aabbccdd")).fingerprint != g.fingerprint


# -- Utility ---------------------------------------------------------------------------------
def _utility(**kw):
    x, y = _xy(12)
    data = Dataset(x[:8], y[:8], x[8:], y[8:])
    return Utility(LogisticRegression(), data, "accuracy", **kw)


def test_empty_and_single_class_subsets_get_default_score():
    u = _utility(default_score=-1.0)
    assert u([]) == -1.0
    single_class = [i for i in range(8) if u.data.y_train[i] == 0]
    assert u(single_class) == -1.0
    assert 0.0 <= u(range(8)) <= 1.0


def test_order_and_repetition_of_indices_do_not_matter():
    u = _utility()
    assert u([3, 1, 2, 5]) == u([1, 2, 3, 5, 5])


def test_out_of_range_indices():
    with pytest.raises(InvalidParameterError, match=r"\[0, 8\)"):
        _utility()([0, 8])


class _Exploding(LogisticRegression):
    def fit(self, x, y):
        raise RuntimeError("boom")


def test_catch_errors_warns_and_uses_default():
    x, y = _xy(12)
    data = Dataset(x[:8], y[:8], x[8:], y[8:])
    with pytest.raises(UnusableUtilityError, match="boom"):  # every fit fails: an error, not zeros
        Utility(_Exploding(), data, "accuracy", default_score=0.25)(range(8))
    u = Utility(_Exploding(), data, "accuracy", default_score=0.25, on_unusable="warn")
    with pytest.warns(UtilityFailureWarning, match="boom"):
        assert u(range(8)) == 0.25
    strict = Utility(_Exploding(), data, "accuracy", catch_errors=False)
    with pytest.raises(RuntimeError, match="boom"):
        strict(range(8))


def test_model_without_fit_and_bad_data():
    x, y = _xy(12)
    data = Dataset(x[:8], y[:8], x[8:], y[8:])
    with pytest.raises(InvalidModelError, match="fit") as info:
        Utility(object(), data, "accuracy")
    assert isinstance(info.value, TypeError)
    with pytest.raises(InvalidParameterError, match=r"dvl_dask\.Dataset"):
        Utility(LogisticRegression(), (x, y), "accuracy")


def test_unknown_scorer_name():
    with pytest.raises(UnknownScorerError, match="accuracy") as info:
        _utility_with_scorer("acuracy")
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidParameterError, match="callable"):
        Scorer(3)


def _utility_with_scorer(scorer):
    x, y = _xy(12)
    return Utility(LogisticRegression(), Dataset(x[:8], y[:8], x[8:], y[8:]), scorer)


def test_callable_scorer_and_range():
    def fraction_correct(model, x, y):
        return float(np.mean(model.predict(x) == y))

    u = _utility_with_scorer(Scorer(fraction_correct, range=(0, 1)))
    assert u.scorer.range == (0.0, 1.0)
    assert u(range(8)) == _utility_with_scorer("accuracy")(range(8))
    with pytest.raises(InvalidParameterError, match="low <= high"):
        Scorer(fraction_correct, range=(1, 0))


def test_utility_pickles_and_keeps_token():
    u = _utility()
    u(range(8))  # materialised data is not pickled
    clone = cloudpickle.loads(cloudpickle.dumps(u))
    assert clone.token == u.token
    assert clone(range(8)) == u(range(8))


def test_token_depends_on_data_model_and_scorer():
    u = _utility()
    assert u.token == _utility().token
    x, y = _xy(12, seed=5)
    other_data = Utility(LogisticRegression(), Dataset(x[:8], y[:8], x[8:], y[8:]), "accuracy")
    assert other_data.token != u.token
    assert Utility(LogisticRegression(C=2.0), u.data, "accuracy").token != u.token
    assert Utility(LogisticRegression(), u.data, "balanced_accuracy").token != u.token


def test_token_is_stable_across_processes():
    code = (
        "import numpy as np; from sklearn.linear_model import LogisticRegression;"
        "from dvl_dask import Dataset, Utility;"
        "rng=np.random.default_rng(0); x=rng.normal(size=(12,3)); y=np.arange(12)%2;"
        "print(Utility(LogisticRegression(), Dataset(x[:8],y[:8],x[8:],y[8:]), 'accuracy').token)"
    )
    tokens = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert len(tokens) == 1
    x, y = _xy(12)
    assert tokens == {Utility(LogisticRegression(), Dataset(x[:8], y[:8], x[8:], y[8:]), "accuracy").token}
