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

from dvl_dask import Dataset, Utility, evaluation, valuation
from dvl_dask.cli import main
from dvl_dask.errors import (
    InvalidArgumentsError,
    InvalidDataError,
    InvalidModelError,
    InvalidParameterError,
    UtilityFailureWarning,
)
from dvl_dask.testing.games import AdditiveGame, Game
from dvl_dask.utility import Scorer, compose_score, sigmoid, squashed_r2

_rng = np.random.default_rng(3)
_x = _rng.normal(size=(12, 2))
_y_class = (_x[:, 0] > 0).astype(int)
_y_cont = _x @ np.array([1.0, 2.0])
CLASSES = Dataset(_x[:8], _y_class[:8], _x[8:], _y_class[8:])
CONTINUOUS = Dataset(_x[:8], _y_cont[:8], _x[8:], _y_cont[8:])
GAME = AdditiveGame([1.0, 2.0, 3.0])


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


def test_knn_shapley_refuses_a_classifier_on_continuous_targets() -> None:
    # a sibling of the Utility check: each distinct float target was read as a class of its own
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

    with pytest.raises(InvalidDataError, match=r"knn_shapley is a classifier.*continuous.*To fix, use a regressor"):
        valuation.knn_shapley(CONTINUOUS, KNeighborsClassifier(n_neighbors=2))
    floats = Dataset(_x[:8], _y_class[:8].astype(float), _x[8:], _y_class[8:].astype(float))
    exact = valuation.knn_shapley(floats, KNeighborsClassifier(n_neighbors=2)).compute()
    assert np.isfinite(exact["value"].values).all()  # whole floats are class labels
    valuation.knn_shapley(CONTINUOUS, KNeighborsRegressor(n_neighbors=2))  # the regressor is the fix


def test_pydvl_model_utility_refuses_a_scorer_of_the_other_task_when_built() -> None:
    # a sibling: pyDVL 0.10's ModelUtility built its Utility only when first used, so "r2" on a classifier passed
    from dvl_dask.compat.pydvl.valuation import Dataset as PyDVLDataset
    from dvl_dask.compat.pydvl.valuation import ModelUtility, SupervisedScorer

    test = PyDVLDataset(_x[8:], _y_class[8:])
    with pytest.raises(InvalidParameterError, match=r"'r2' of ModelUtility is a regression metric.*classifier"):
        ModelUtility(LogisticRegression(), SupervisedScorer("r2", test, 0.0))
    ModelUtility(LogisticRegression(), SupervisedScorer("accuracy", test, 0.0))


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


# -- 2. NaN and inf refused where they first appear, naming the point or coalition -------------------


class _NaNPairGame(Game):
    def value(self, players):
        return float("nan") if players.size == 2 else float(players.size)


class _UserNaNUtility:
    """A user's UtilityLike: NaN for the coalition {0, 2}."""

    token = "user-nan-utility"
    n_players = 3
    data_names = np.arange(3)

    def __call__(self, indices):
        return float("nan") if list(indices) == [0, 2] else float(len(indices))


@pytest.mark.parametrize("method", ["exact_shapley", "exact_least_core", "loo"])
def test_a_game_returning_nan_is_refused_naming_the_coalition(method) -> None:
    fn = getattr(valuation, method)
    with pytest.raises(InvalidParameterError, match=r"returned nan for the coalition \[\d, \d\]"):
        fn(_NaNPairGame(3)).compute()
    with pytest.raises(InvalidParameterError, match=r"returned nan for the coalition \[0, 2\]"):
        fn(_UserNaNUtility()).compute()


def test_the_least_core_solver_never_sees_a_non_finite_value() -> None:
    from dvl_dask.valuation._least_core import least_core_from_constraints

    rows = np.array([[1, 0, 1.0], [0, 1, np.inf], [1, 1, 3.0]])
    with pytest.raises(InvalidParameterError, match=r"returned inf for the coalition \[1\]"):
        least_core_from_constraints(rows, 2)


def test_classwise_shapley_refuses_a_regression_utility() -> None:
    u = Utility(LinearRegression(), CONTINUOUS, "r2", default_score=0.0)
    with pytest.raises(InvalidParameterError, match=r"'utility'.*classification utility.*is a regressor"):
        valuation.classwise_shapley(u, 4, seed=0)


def test_data_oob_refuses_a_nan_point_score_naming_the_point() -> None:
    u = Utility(LinearRegression(), CONTINUOUS, "r2", default_score=0.0)

    def nan_for_point_zero_target(y_true, y_pred):
        return np.where(y_true == _y_cont[0], np.nan, -((y_true - y_pred) ** 2))

    with pytest.raises(InvalidParameterError, match=r"out-of-bag score of point 0 is nan.*'point_score'"):
        valuation.data_oob(u, n_estimators=8, seed=0, point_score=nan_for_point_zero_target).compute()


def test_removal_curves_refuse_nan_values_naming_the_point() -> None:
    u = Utility(LogisticRegression(), CLASSES, "accuracy")
    values = valuation.loo(u).compute()
    values["value"][2] = np.nan
    for curve in (evaluation.point_removal_curve, evaluation.point_addition_curve):
        with pytest.raises(InvalidDataError, match=r"'values'.*1 non-finite value.*point 2: nan"):
            curve(values, u, fractions=[0.0, 0.5])
    lazy = values.chunk()  # unknown until computed: refused in the task
    with pytest.raises(InvalidDataError, match=r"non-finite value.*point 2"):
        evaluation.point_removal_curve(lazy, u, fractions=[0.0, 0.5]).compute()


def test_utility_failure_warnings_name_the_coalition() -> None:
    from sklearn.neighbors import KNeighborsRegressor

    u = Utility(KNeighborsRegressor(n_neighbors=3), CONTINUOUS, "r2", default_score=0.0)
    with pytest.warns(UtilityFailureWarning, match=r"for the coalition \[0, 5\]"):
        u([0, 5])


# -- 3. misspelt keywords, booleans, one-player least core ------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: valuation.permutation_shapley(GAME, n_permutations=2, truncaton=None),
         r"^permutation_shapley\(\) got an unexpected keyword argument 'truncaton'\. Did you mean 'truncation'\?"),
        (lambda: valuation.run_until_converged("permutation_shapley", GAME, stop=valuation.MaxUpdates(1),
                                               truncaton=None),
         r"^run_until_converged\(method='permutation_shapley', \.\.\.\) got .* Did you mean 'truncation'"),
        (lambda: valuation.exact_shapley(GAME, blok_size=3), r"Did you mean 'block_size'\?"),
    ],
    ids=["permutation_shapley", "run_until_converged", "exact_shapley"],
)
def test_a_misspelt_keyword_names_the_public_function_and_the_close_match(call, match) -> None:
    with pytest.raises(InvalidArgumentsError, match=match) as info:
        call()
    assert "_estimator" not in str(info.value) and isinstance(info.value, TypeError)


@pytest.mark.parametrize("method", ["exact_least_core", "montecarlo_least_core"])
def test_least_core_options_and_player_counts(method) -> None:
    fn = getattr(valuation, method)
    extra = {"n_samples": 8, "seed": 0} if method == "montecarlo_least_core" else {}
    for bad in ("yes", 1, None):
        with pytest.raises(InvalidParameterError, match=r"'non_negative_subsidy'.*True or False"):
            fn(GAME, non_negative_subsidy=bad, **extra)
    with pytest.raises(InvalidParameterError, match=r"at least two players.*has 1") as info:
        fn(AdditiveGame([2.5]), **extra)
    assert "sample more" not in str(info.value)


# -- 3. CLI: no hang, no traceback, nothing written -------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["value", "--workers", "0"], "--workers must be at least 1"),
        (["value", "--top", "-3"], "--top must be at least 1. Got -3"),
        (["demo", "--n-points", "1"], "--n-points must be at least 2"),
        (["value", "--budget", "0"], "--budget must be at least 1"),
        (["evaluate", "--max-fraction", "1.5"], "--max-fraction must be at least 0 and at most 1"),
        (["evaluate", "--n-random", "0"], "--n-random must be at least 1"),
        (["influence", "--model", "m.pt", *(f"--{a}=a.npy" for a in ("x-train", "y-train", "x-test", "y-test")),
          "--chunk-size", "0"], "--chunk-size must be at least 1"),
        (["influence", "--model", "m.pt", *(f"--{a}=a.npy" for a in ("x-train", "y-train", "x-test", "y-test")),
          "--regularization", "-1"], "--regularization must be at least 0"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v[:3]),
)
def test_cli_numeric_options_are_checked_before_anything_runs(argv, message, tmp_path, capsys) -> None:
    out = tmp_path / "out.zarr"
    assert main([*argv, "--out", str(out)]) == 2  # --workers 0 used to hang for ever
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.distributed
def test_an_unreachable_scheduler_is_a_clear_error() -> None:
    import dask

    from dvl_dask._cli_options import connect_client
    from dvl_dask.errors import ClusterConnectionError

    with dask.config.set({"distributed.comm.timeouts.connect": "0.5s"}), pytest.raises(
        ClusterConnectionError, match=r"Cannot connect to the Dask scheduler at --scheduler-address tcp://127\.0\.0\.1:9"
    ) as info:
        connect_client("tcp://127.0.0.1:9")
    assert isinstance(info.value, ConnectionError) and "To fix" in str(info.value)


# -- 3. knn metric, plots ---------------------------------------------------------------------------


def test_knn_shapley_refuses_an_unknown_metric_when_the_graph_is_built() -> None:
    from sklearn.neighbors import KNeighborsClassifier

    with pytest.raises(InvalidModelError, match=r"metric='bogus'.*To fix"):
        valuation.knn_shapley(CLASSES, KNeighborsClassifier(n_neighbors=1, metric="bogus"))  # no compute()
    ds = valuation.knn_shapley(CLASSES, KNeighborsClassifier(n_neighbors=1, metric="manhattan")).compute()
    assert np.isfinite(ds["value"].values).all()


@pytest.fixture
def matplotlib_agg():
    matplotlib = pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    matplotlib.use("Agg")
    yield plt
    plt.close("all")
    matplotlib.use(backend)


def test_plots_refuse_bad_arguments_before_drawing(matplotlib_agg) -> None:
    from dvl_dask import plot

    values = valuation.loo(Utility(LogisticRegression(), CLASSES, "accuracy")).compute()
    influences = np.arange(12.0).reshape(3, 4)
    cases = [
        (lambda: plot.plot_influence(influences, test_index=99), r"'test_index'.*\[0, 3\)\. Got 99"),
        (lambda: plot.plot_influence(influences, test_index=-1), r"'test_index'"),
        (lambda: plot.plot_influence(influences, top_k=0), r"'top_k'"),
        (lambda: plot.plot_value_distribution(values, bins=0), r"'bins'"),
        (lambda: plot.plot_values(values, top_k=-1), r"'top_k'"),
        (lambda: plot.plot_values(values, n_stderr=float("nan")), r"'n_stderr'"),
    ]
    for call, match in cases:
        with pytest.raises(InvalidParameterError, match=match):
            call()
    assert matplotlib_agg.get_fignums() == []  # nothing drawn
    assert plot.plot_influence(influences, test_index=2, top_k=2) is not None


# -- 3. pyDVL names, missing torch ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "name", "use"),
    [
        ("dvl_dask", "ModelUtility", "dvl_dask.Utility"),
        ("dvl_dask.valuation", "TMCShapleyValuation", "permutation_shapley"),
        ("dvl_dask.valuation", "KNNShapleyValuation", "knn_shapley"),
        ("dvl_dask.utility", "SupervisedScorer", "dvl_dask.Scorer"),
    ],
)
def test_pydvl_names_point_to_the_migration_guide(module, name, use) -> None:
    import importlib

    from dvl_dask.errors import PyDVLNameError

    with pytest.raises(ImportError, match=rf"{name} is pyDVL's name.*{use}.*migrating-from-pydvl\.md") as info:
        exec(f"from {module} import {name}", {})
    assert isinstance(info.value, PyDVLNameError)
    assert not hasattr(importlib.import_module(module), "no_such_name")  # other names: plain AttributeError


def test_torch_models_without_torch_name_the_extra(monkeypatch) -> None:
    import sys

    from dvl_dask.errors import MissingDependencyError

    for mod in [m for m in sys.modules if m == "torch" or m.startswith(("torch.", "dvl_dask.influence.torch"))]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "torch", None)  # what an environment without torch looks like to import
    with pytest.raises(MissingDependencyError, match=r"needs PyTorch.*pip install 'dvl_dask\[torch\]'") as info:
        import dvl_dask.influence.torch  # noqa: F401
    assert isinstance(info.value, ModuleNotFoundError)
