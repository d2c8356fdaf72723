"""The Utility's fast evaluation path gives exactly what clone + fit + sklearn scorer give."""

from __future__ import annotations

import pickle

import dask.array as da
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LinearRegression, LogisticRegression, SGDClassifier
from sklearn.metrics import accuracy_score, get_scorer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dvl_dask import Dataset, Scorer, Utility
from dvl_dask.errors import InvalidParameterError, UnusableUtilityError


def _data(labels=None, n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    y = (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(int)
    if labels is not None:
        y = np.asarray(labels)[y]
    return Dataset(x[:20], y[:20], x[20:], y[20:])


def _bare(model, data, players, scoring="accuracy"):
    fitted = clone(model).fit(data.x_train[players], data.y_train[players])
    return float(get_scorer(scoring)(fitted, data.x_test, data.y_test))


@pytest.mark.parametrize("labels", [None, ["no", "yes"], [False, True]])
def test_values_equal_clone_fit_and_sklearn_scorer(labels):
    data = _data(labels)
    model = make_pipeline(StandardScaler(), SGDClassifier(random_state=np.random.RandomState(3), max_iter=50, tol=None))
    u = Utility(model, data, "accuracy")
    rng = np.random.default_rng(1)
    for _ in range(12):
        players = np.sort(rng.choice(20, size=rng.integers(6, 21), replace=False))
        if np.unique(data.y_train[players]).size < 2:
            continue
        assert u(players) == _bare(model, data, players)  # bit for bit, on every call (template not mutated)
    # a copy shipped to a worker evaluates the same
    again = pickle.loads(pickle.dumps(u))
    assert again(np.arange(20)) == _bare(model, data, np.arange(20))


def test_plain_accuracy_matches_sklearn_and_defers_otherwise():
    data = _data()
    fitted = LogisticRegression().fit(data.x_train, data.y_train)
    scorer = Scorer("accuracy")
    assert scorer(fitted, data.x_test, data.y_test) == accuracy_score(data.y_test, fitted.predict(data.x_test))
    # continuous predictions are sklearn's to refuse, as without the fast path
    reg = LinearRegression().fit(data.x_train, data.y_train)
    with pytest.raises(ValueError, match="continuous"):
        scorer(reg, data.x_test, data.y_test)
    with pytest.raises(InvalidParameterError, match="classification metric"):  # refused when built (issue 25)
        Utility(LinearRegression(), data, "accuracy")


def test_invalid_parameters_still_fail():
    data = _data()
    with pytest.raises(UnusableUtilityError, match=r"InvalidParameterError|must be a float"):
        Utility(LogisticRegression(C=-1.0), data, "accuracy")(np.arange(20))


def test_non_finite_rows_still_fail_after_finite_fits():
    data = _data()
    x = data.x_train.copy()
    x[0, 0] = np.nan
    # numpy data with NaN is refused by Dataset; dask arrays are read only when a worker materializes them
    u = Utility(LogisticRegression(), Dataset(da.from_array(x), data.y_train, data.x_test, data.y_test), "accuracy")
    clean = np.arange(1, 20)
    assert u(clean) == _bare(LogisticRegression(), data, clean)  # checks passed once here
    with pytest.raises(UnusableUtilityError, match="Input X contains NaN"):
        u(np.arange(20))  # sklearn still sees the NaN and refuses it
