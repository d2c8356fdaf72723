"""Malformed inputs found by trying dvl_dask as a new user (issue 25): each ends in a clear DvlDaskError.

Every case names what a user did wrong; the test asserts the exception class
(a :class:`~dvl_dask.errors.DvlDaskError` subclass that also subclasses the
matching builtin) and that the message names the argument and the fix.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, make_scorer, mean_squared_error
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dvl_dask import Dataset, Utility
from dvl_dask.cli import main
from dvl_dask.errors import InvalidDataError, InvalidModelError, InvalidParameterError
from dvl_dask.utility import Scorer, compose_score, sigmoid, squashed_r2

_rng = np.random.default_rng(3)
_x = _rng.normal(size=(12, 2))
_y_class = (_x[:, 0] > 0).astype(int)
_y_cont = _x @ np.array([1.0, 2.0])
CLASSES = Dataset(_x[:8], _y_class[:8], _x[8:], _y_class[8:])
CONTINUOUS = Dataset(_x[:8], _y_cont[:8], _x[8:], _y_cont[8:])


# -- 1. scorers that do not fit the model's task ----------------------------------------------------


@pytest.mark.parametrize(
    "scorer",
    ["r2", "neg_mean_squared_error", "neg_mean_absolute_error", make_scorer(mean_squared_error), squashed_r2()],
    ids=["r2", "neg_mse", "neg_mae", "make_scorer(mse)", "squashed_r2"],
)
@pytest.mark.parametrize(
    "model", [LogisticRegression(), make_pipeline(StandardScaler(), LogisticRegression())], ids=["plain", "pipeline"]
)
def test_a_regression_scorer_on_a_classifier_is_refused(scorer, model) -> None:
    with pytest.raises(InvalidParameterError, match="regression metric") as info:
        Utility(model, CLASSES, scorer, default_score=0.0)
    message = str(info.value)
    assert "'scorer'" in message and "is a classifier" in message and "To fix" in message


@pytest.mark.parametrize("scorer", ["accuracy", "f1", "roc_auc", "neg_log_loss", make_scorer(accuracy_score)])
@pytest.mark.parametrize("model", [LinearRegression(), make_pipeline(StandardScaler(), Ridge())])
def test_a_classification_scorer_on_a_regressor_is_refused(scorer, model) -> None:
    with pytest.raises(InvalidParameterError, match=r"classification metric.*is a regressor"):
        Utility(model, CONTINUOUS, scorer, default_score=0.0)


def test_scorers_that_fit_the_task_and_unknown_callables_are_accepted() -> None:
    assert Utility(LogisticRegression(), CLASSES, "accuracy")(range(8)) > 0.5
    assert Utility(LinearRegression(), CONTINUOUS, "r2", default_score=0.0)(range(8)) > 0.9
    Utility(LinearRegression(), CONTINUOUS, compose_score("r2", sigmoid, (0.0, 1.0)))
    Utility(LogisticRegression(), CLASSES, lambda m, x, y: 0.5, default_score=0.0)  # the user's own: unknown task


def test_a_classifier_on_continuous_targets_is_refused_when_built() -> None:
    with pytest.raises(InvalidDataError, match=r"continuous.*To fix, use a regressor"):
        Utility(LogisticRegression(), CONTINUOUS, "accuracy")
    floats = Dataset(_x[:8], _y_class[:8].astype(float), _x[8:], _y_class[8:].astype(float))
    assert Utility(LogisticRegression(), floats, "accuracy")(range(8)) > 0.5  # whole floats are class labels


@pytest.mark.parametrize(
    ("argv", "fix"),
    [
        (["--dataset", "diabetes", "--model", "logistic"], "continuous target.*--model ridge"),
        (["--dataset", "diabetes", "--model", "knn"], "continuous target"),
        (["--dataset", "iris", "--model", "ridge"], "class labels.*use a classifier"),
    ],
)
@pytest.mark.parametrize("command", ["value", "evaluate"])
def test_cli_refuses_a_model_that_does_not_fit_the_dataset(command, argv, fix, tmp_path, capsys) -> None:
    out = tmp_path / "v.zarr"
    where = ["--result", str(out)] if command == "evaluate" else ["--out", str(out)]
    assert main([command, *argv, "--scheduler", "sync", *where]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --model") and "Traceback" not in err
    assert re.search(fix, err)
    assert not out.exists()


# -- 3. a model class, a metric function ------------------------------------------------------------


def test_a_model_class_instead_of_an_instance_is_named() -> None:
    fix = r"model instance.*class LogisticRegression.*LogisticRegression\("
    with pytest.raises(InvalidModelError, match=fix) as info:
        Utility(LogisticRegression, CLASSES, "accuracy")
    assert "__dask_tokenize__" not in str(info.value) and isinstance(info.value, TypeError)


@pytest.mark.parametrize(
    ("metric", "fix"),
    [
        (accuracy_score, r"make_scorer\(accuracy_score\) or its scorer name 'accuracy'"),
        (mean_squared_error, r"greater_is_better=False\) or its scorer name 'neg_mean_squared_error'"),
    ],
)
def test_a_metric_function_passed_as_a_scorer_is_told_make_scorer(metric, fix) -> None:
    model = LogisticRegression() if metric is accuracy_score else LinearRegression()
    data = CLASSES if metric is accuracy_score else CONTINUOUS
    for make in (lambda: Scorer(metric), lambda: Utility(model, data, metric, default_score=0.0)):
        with pytest.raises(InvalidParameterError, match=fix) as info:
            make()
        assert "default_score" not in str(info.value)
