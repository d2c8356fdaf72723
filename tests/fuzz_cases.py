"""Malformed inputs for every public callable of dvl_dask (used by tests/test_fuzz_inputs.py).

``CASES`` maps the public name of each function or class (``"dvl_dask.valuation.loo"``) to cases:
an argument name, a hypothesis strategy of bad values for it, and a call ``call(value, tmp)`` that
passes one (``tmp``: an empty folder the call may be pointed at; it must stay empty). Every call
must raise a :class:`~dvl_dask.errors.DvlDaskError` whose message names the argument. ``EXEMPT``
lists the public callables that take no input a user could get wrong, with the reason.
:func:`public_callables` walks ``__all__`` of every public module; a test fails if a callable is
in neither table.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

import dvl_dask


@dataclass(frozen=True)
class Case:
    argument: str  # named in the error message (or ``named``, a regular expression, when given)
    values: st.SearchStrategy[Any]
    call: Callable[[Any, Any], Any]
    named: str | None = None


# -- strategies of bad values ---------------------------------------------------------------------------

text = st.text(alphabet="ab-_ ", min_size=1, max_size=3)
#: What validate_valuation_dataset says (it does not know the argument's name): what was expected.
NOT_A_RESULT = r"must be an xarray\.Dataset"
not_number = st.one_of(text, st.lists(st.integers(0, 2), max_size=2), st.just(object()))
bad_int = st.one_of(st.integers(-5, 0), st.sampled_from([0.5, 2.5, math.nan, math.inf, True]), not_number)
bad_int_or_none = bad_int  # None is the documented default of these
bad_non_negative_int = st.one_of(st.integers(-5, -1), st.sampled_from([0.5, math.nan, True]), not_number)
bad_positive_real = st.one_of(st.floats(max_value=0.0), st.sampled_from([math.nan, math.inf, True]), not_number)
bad_non_negative_real = st.one_of(
    st.floats(max_value=-1e-9, allow_infinity=True), st.sampled_from([math.nan, math.inf, False]), not_number
)
bad_fraction = st.one_of(st.floats(min_value=1.01), st.floats(max_value=-0.01), st.just(math.nan), not_number)
bad_bool = st.one_of(text, st.integers(2, 5), st.sampled_from([0.5, math.nan]))
bad_object = st.one_of(st.none(), st.integers(-2, 2), text, st.lists(st.integers(0, 2), max_size=3))
bad_seed = st.one_of(st.integers(max_value=-1), st.sampled_from([0.5, math.nan, "seed", True]))
bad_array = st.one_of(
    st.none(),
    text,
    st.just(np.array([[1.0, math.nan], [0.0, 1.0]])),
    st.just(np.array([[[1.0]]])),
    st.just(np.empty((0, 2))),
)
bad_callable = st.one_of(st.integers(0, 3), text, st.none())
bad_path = st.one_of(st.integers(0, 3), st.none(), st.lists(text, max_size=2))
bad_mapping = st.one_of(st.integers(0, 3), text, st.lists(st.integers(0, 2), min_size=1, max_size=2))
bad_range = st.one_of(
    st.tuples(st.floats(1.0, 2.0), st.floats(-2.0, 0.0)), st.just((0.0, math.nan)), st.just((1.0,)), text
)


# -- small valid inputs ---------------------------------------------------------------------------------

_rng = np.random.default_rng(0)
_x = _rng.normal(size=(12, 2))
_y = (_x[:, 0] > 0).astype(int)
_y_cont = _x @ np.array([1.0, -2.0])


@functools.cache
def dataset():
    return dvl_dask.Dataset(_x[:8], _y[:8], _x[8:], _y[8:])


@functools.cache
def regression_dataset():
    return dvl_dask.Dataset(_x[:8], _y_cont[:8], _x[8:], _y_cont[8:])


@functools.cache
def utility():
    from sklearn.linear_model import LogisticRegression

    return dvl_dask.Utility(LogisticRegression(), dataset(), "accuracy")


@functools.cache
def game():
    from dvl_dask.testing.games import AdditiveGame

    return AdditiveGame([1.0, 2.0, 3.0])


@functools.cache
def values():
    from dvl_dask.valuation import exact_shapley

    return exact_shapley(game()).compute()


@functools.cache
def curve():
    from dvl_dask.evaluation import point_removal_curve

    return point_removal_curve(values(), game(), fractions=[0.0, 0.5], n_random=2, seed=0).compute()


def torch_model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Linear(2, 1).double()


def torch_loss():
    import torch.nn.functional as F

    return F.mse_loss


def _mod(name: str) -> Any:
    return importlib.import_module(name)


V = "dvl_dask.valuation"
E = "dvl_dask.evaluation"
R = "dvl_dask.results"
U = "dvl_dask.utility"
T = "dvl_dask.influence.torch"
P = "dvl_dask.plot"
K = "dvl_dask.keys"
C = "dvl_dask.cache"
CH = "dvl_dask.chunks"
G = "dvl_dask.testing.games"


def fn(module: str, name: str) -> Callable[..., Any]:
    return lambda *a, **k: getattr(_mod(module), name)(*a, **k)


def _influence(cls: str, **kw: Any) -> Callable[[Any, Any], Any]:
    """``cls(model, loss, **{kw with the bad value})``: the key whose value is the placeholder ``...`` gets it."""

    def call(v: Any, tmp: Any) -> Any:
        args = {k: (v if a is ... else a) for k, a in kw.items()}
        return getattr(_mod(T), cls)(torch_model(), torch_loss(), **args)

    return call


def _kw(target: Callable[..., Any], *args: Any, **kw: Any) -> Callable[[Any, Any], Any]:
    """``target(*args, **kw)`` with the bad value in place of the ``...`` placeholder (positional or keyword)."""

    def call(v: Any, tmp: Any) -> Any:
        pos = [v if a is ... else (a() if isinstance(a, _Lazy) else a) for a in args]
        kws = {k: (v if a is ... else (a() if isinstance(a, _Lazy) else a)) for k, a in kw.items()}
        return target(*pos, **kws)

    return call


class _Lazy:
    """A valid argument built when the call runs (fixtures are not built at import)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make

    def __call__(self) -> Any:
        return self.make()


DATA, UTILITY, GAME, VALUES, CURVE = (_Lazy(f) for f in (dataset, utility, game, values, curve))


def _mc(method: str, budget: str, **extra: Any) -> list[Case]:
    """Cases of a Monte Carlo method: its utility, budget, seed and items_per_block."""
    target = fn(V, method)
    return [
        Case("utility", bad_object, _kw(target, ..., **{budget: 4}, **extra)),
        Case(budget, bad_int, _kw(target, GAME, **{budget: ...}, **extra)),
        Case("seed", bad_seed, _kw(target, GAME, **{budget: 4}, seed=..., **extra)),
        Case("items_per_block", bad_int, _kw(target, GAME, **{budget: 4}, items_per_block=..., **extra)),
    ]


def _criterion(name: str, arg: str, values: st.SearchStrategy[Any], **extra: Any) -> list[Case]:
    return [Case(arg, values, _kw(fn(V, name), **{arg: ...}, **extra))]


def _sk(name: str, module: str = "linear_model", **kw: Any) -> Any:
    return getattr(importlib.import_module(f"sklearn.{module}"), name)(**kw)


def _file(tmp: Any) -> Any:
    """A plain file where a folder is expected (made only when the case runs; removed by the test)."""
    path = tmp.parent / f"{tmp.name}-a-file"
    path.write_text("not a folder")
    return path


def _torch_dataset() -> Any:
    import torch
    from torch.utils.data import TensorDataset

    return TensorDataset(torch.zeros(4, 2), torch.zeros(4))


CASES: dict[str, list[Case]] = {
    # -- data, utility, scorers
    "dvl_dask.Dataset": [
        Case("x_train", bad_array, _kw(dvl_dask.Dataset, ..., _y[:8], _x[8:], _y[8:])),
        Case("y_test", bad_array, _kw(dvl_dask.Dataset, _x[:8], _y[:8], _x[8:], ...)),
    ],
    "dvl_dask.GroupedDataset": [
        Case("data_groups", st.one_of(bad_array, st.just([0, 1])),
             _kw(dvl_dask.GroupedDataset, _x[:8], _y[:8], _x[8:], _y[8:], data_groups=...)),
    ],
    "dvl_dask.Utility": [
        Case("model", bad_object, _kw(dvl_dask.Utility, ..., DATA, "accuracy")),
        Case("data", bad_object, lambda v, t: dvl_dask.Utility(_sk("LogisticRegression"), v, "accuracy")),
        Case("scoring", st.one_of(st.integers(0, 3), st.just("acuracy")),
             lambda v, t: dvl_dask.Utility(_sk("LogisticRegression"), dataset(), v)),
        Case("default_score", st.sampled_from([math.nan, math.inf, "high", True]),
             lambda v, t: dvl_dask.Utility(_sk("LogisticRegression"), dataset(), "accuracy", default_score=v)),
        Case("catch_errors", bad_bool,
             lambda v, t: dvl_dask.Utility(_sk("LogisticRegression"), dataset(), "accuracy", catch_errors=v)),
    ],
    "dvl_dask.Scorer": [
        Case("scoring", st.one_of(st.integers(0, 3), st.just("acuracy"), st.none()), _kw(dvl_dask.Scorer, ...)),
        Case("range", bad_range, _kw(dvl_dask.Scorer, "accuracy", range=...)),
    ],
    f"{U}.as_scorer": [Case("scoring", st.one_of(st.integers(0, 3), st.just("r_2")), _kw(fn(U, "as_scorer"), ...))],
    f"{U}.compose_score": [
        Case("transformation", bad_callable, _kw(fn(U, "compose_score"), "r2", ..., (0.0, 1.0))),
        Case("range", bad_range, _kw(fn(U, "compose_score"), "r2", math.tanh, ...)),
    ],
    f"{U}.squashed_neg_mse": [Case("scale", bad_positive_real, _kw(fn(U, "squashed_neg_mse"), ...))],
    f"{U}.learn_utility": [
        Case("utility", bad_object, _kw(fn(U, "learn_utility"), ..., 8, seed=0)),
        Case("n_evaluations", bad_int, _kw(fn(U, "learn_utility"), GAME, ..., seed=0)),
        Case("holdout", bad_fraction, _kw(fn(U, "learn_utility"), GAME, 8, holdout=..., seed=0)),
    ],
    f"{U}.LearnedUtility": [
        Case("regressor", bad_object, _kw(fn(U, "LearnedUtility"), ..., 3, np.arange(3), "t", 0.0, 0.0, 4)),
    ],
    f"{U}.sigmoid": [Case("x", st.one_of(text, st.just(math.nan)), _kw(fn(U, "sigmoid"), ...))],
    # -- valuation
    f"{V}.exact_shapley": [
        Case("utility", bad_object, _kw(fn(V, "exact_shapley"), ...)),
        Case("block_size", bad_int, _kw(fn(V, "exact_shapley"), GAME, block_size=...)),
    ],
    f"{V}.loo": [
        Case("utility", bad_object, _kw(fn(V, "loo"), ...)),
        Case("block_size", bad_int, _kw(fn(V, "loo"), GAME, block_size=...)),
    ],
    f"{V}.exact_least_core": [
        Case("utility", bad_object, _kw(fn(V, "exact_least_core"), ...)),
        Case("non_negative_subsidy", bad_bool, _kw(fn(V, "exact_least_core"), GAME, non_negative_subsidy=...)),
        Case("block_size", bad_int, _kw(fn(V, "exact_least_core"), GAME, block_size=...)),
    ],
    f"{V}.montecarlo_least_core": [
        Case("n_samples", bad_int, _kw(fn(V, "montecarlo_least_core"), GAME, ..., seed=0)),
        Case("n_bootstrap", bad_non_negative_int, _kw(fn(V, "montecarlo_least_core"), GAME, 8, n_bootstrap=...)),
        Case("non_negative_subsidy", bad_bool,
             _kw(fn(V, "montecarlo_least_core"), GAME, 8, non_negative_subsidy=...)),
    ],
    f"{V}.permutation_shapley": [
        *_mc("permutation_shapley", "n_permutations"),
        Case("antithetic", bad_bool, _kw(fn(V, "permutation_shapley"), GAME, n_permutations=2, antithetic=...)),
        Case("warm_start", bad_bool, _kw(fn(V, "permutation_shapley"), GAME, n_permutations=2, warm_start=...)),
        Case("truncation", st.one_of(st.just(-1.0), st.just(math.nan), text),
             _kw(fn(V, "permutation_shapley"), GAME, n_permutations=2, truncation=...)),
    ],
    f"{V}.banzhaf": [*_mc("banzhaf", "n_samples"),
                     Case("sampler", st.one_of(st.integers(0, 3), st.just("unifrm")),
                          _kw(fn(V, "banzhaf"), GAME, n_samples=4, sampler=...))],
    f"{V}.msr_banzhaf": [*_mc("msr_banzhaf", "n_samples"),
                         Case("antithetic", bad_bool, _kw(fn(V, "msr_banzhaf"), GAME, n_samples=4, antithetic=...))],
    f"{V}.beta_shapley": [*_mc("beta_shapley", "n_samples", alpha=1.0, beta=1.0),
                          Case("alpha", bad_positive_real,
                               _kw(fn(V, "beta_shapley"), GAME, n_samples=4, alpha=..., beta=1.0))],
    f"{V}.owen_shapley": [*_mc("owen_shapley", "n_samples"),
                          Case("n_q", bad_int, _kw(fn(V, "owen_shapley"), GAME, n_samples=4, n_q=...))],
    f"{V}.semivalue": [
        Case("coefficient", bad_callable, _kw(fn(V, "semivalue"), GAME, ..., n_samples=4)),
        Case("n_samples", bad_int, lambda v, t: _mod(V).semivalue(game(), _mod(V).shapley_coefficient, n_samples=v)),
    ],
    f"{V}.group_testing_shapley": [
        Case("utility", bad_object, _kw(fn(V, "group_testing_shapley"), ..., 8)),
        Case("n_samples", bad_int, _kw(fn(V, "group_testing_shapley"), GAME, ...)),
        Case("delta", bad_fraction, _kw(fn(V, "group_testing_shapley"), GAME, epsilon=0.5, delta=...)),
    ],
    f"{V}.group_testing_sample_size": [
        Case("epsilon", bad_positive_real, _kw(fn(V, "group_testing_sample_size"), ..., 0.05, 4, (0.0, 1.0))),
        Case("utility_range", bad_range, _kw(fn(V, "group_testing_sample_size"), 0.5, 0.05, 4, ...)),
    ],
    f"{V}.classwise_shapley": [
        Case("utility", st.one_of(bad_object, st.just(game())), _kw(fn(V, "classwise_shapley"), ..., 4)),
        Case("n_samples", bad_int, _kw(fn(V, "classwise_shapley"), UTILITY, ...)),
    ],
    f"{V}.data_oob": [
        Case("utility", bad_object, _kw(fn(V, "data_oob"), ...)),
        Case("n_estimators", bad_int, _kw(fn(V, "data_oob"), UTILITY, n_estimators=...)),
        Case("max_samples", bad_fraction, _kw(fn(V, "data_oob"), UTILITY, max_samples=...)),
        Case("point_score", st.integers(0, 3), _kw(fn(V, "data_oob"), UTILITY, point_score=...)),
    ],
    f"{V}.knn_shapley": [
        Case("data", bad_object, lambda v, t: _mod(V).knn_shapley(v, _sk("KNeighborsClassifier", "neighbors"))),
        Case("model", st.one_of(bad_object, st.just(_sk("KNeighborsRegressor", "neighbors"))),
             _kw(fn(V, "knn_shapley"), DATA, ...)),
        Case("metric", st.sampled_from(["bogus", "precomputed"]),
             lambda v, t: _mod(V).knn_shapley(dataset(), _sk("KNeighborsClassifier", "neighbors", metric=v))),
        Case("test_chunk_size", bad_int, lambda v, t: _mod(V).knn_shapley(
            dataset(), _sk("KNeighborsClassifier", "neighbors"), test_chunk_size=v)),
    ],
    f"{V}.run_until_converged": [
        Case("method", st.one_of(st.integers(0, 3), st.just("permutation_shaply")),
             lambda v, t: _mod(V).run_until_converged(v, game(), stop=_mod(V).MaxUpdates(2), progress=False)),
        Case("stop", bad_object,
             lambda v, t: _mod(V).run_until_converged("banzhaf", game(), stop=v, progress=False)),
        Case("checkpoint", st.one_of(st.integers(0, 3), st.just("a-file")),
             lambda v, t: _mod(V).run_until_converged(
                 "banzhaf", game(), stop=_mod(V).MaxUpdates(2), progress=False,
                 checkpoint=str(_file(t)) if v == "a-file" else v)),
        Case("truncaton", st.just(None), lambda v, t: _mod(V).run_until_converged(
            "permutation_shapley", game(), stop=_mod(V).MaxUpdates(2), truncaton=v)),
    ],
    f"{V}.checkpoint_history": [Case("url", bad_path, _kw(fn(V, "checkpoint_history"), ...)),
                                Case("every", bad_int, lambda v, t: _mod(V).checkpoint_history(str(t), every=v))],
    f"{V}.load_checkpoint": [Case("url", bad_path, _kw(fn(V, "load_checkpoint"), ...))],
    f"{V}.shapley_coefficient": [Case("n", bad_int, _kw(fn(V, "shapley_coefficient"), ..., np.arange(2)))],
    f"{V}.banzhaf_coefficient": [Case("n", bad_int, _kw(fn(V, "banzhaf_coefficient"), ..., np.arange(2)))],
    f"{V}.shapley_weights": [Case("n", bad_int, _kw(fn(V, "shapley_weights"), ...))],
    f"{V}.beta_coefficient": [Case("alpha", bad_positive_real, _kw(fn(V, "beta_coefficient"), ..., 1.0))],
    f"{V}.AbsoluteStandardError": _criterion("AbsoluteStandardError", "threshold", bad_positive_real),
    f"{V}.RelativeStandardError": _criterion("RelativeStandardError", "rtol", bad_positive_real),
    f"{V}.HistoryDeviation": _criterion("HistoryDeviation", "n_steps", bad_int, rtol=0.1),
    f"{V}.MaxChecks": _criterion("MaxChecks", "n_checks", bad_int),
    f"{V}.MaxEvaluations": _criterion("MaxEvaluations", "n_evaluations", bad_int),
    f"{V}.MaxTime": _criterion("MaxTime", "seconds",
                               st.one_of(st.floats(max_value=0.0), st.just(math.nan), not_number)),
    f"{V}.MaxUpdates": _criterion("MaxUpdates", "n_updates", bad_int),
    f"{V}.MinUpdates": _criterion("MinUpdates", "n_updates", bad_int),
    f"{V}.RankCorrelation": _criterion("RankCorrelation", "rtol", bad_positive_real),
    f"{V}.ConvergenceState": [
        Case("values", st.one_of(bad_array, st.just(np.array([math.nan]))),
             lambda v, t: _mod(V).ConvergenceState(v, np.zeros(1), np.ones(1), 1, 1, 0.0)),
    ],
    f"{V}.BetaSampler": [Case("a", bad_positive_real, _kw(fn(V, "BetaSampler"), ..., 1.0))],
    f"{V}.FixedTruncation": [Case("fraction", bad_fraction, _kw(fn(V, "FixedTruncation"), ...))],
    f"{V}.RelativeTruncation": [Case("rtol", bad_positive_real, _kw(fn(V, "RelativeTruncation"), ...))],
    f"{V}.OwenSampler": [Case("n_q", bad_int, _kw(fn(V, "OwenSampler"), ...)),
                         Case("antithetic", bad_bool, _kw(fn(V, "OwenSampler"), antithetic=...))],
    f"{V}.PermutationSampler": [Case("antithetic", bad_bool, _kw(fn(V, "PermutationSampler"), antithetic=...))],
    f"{V}.StratifiedSampler": [
        Case("allocation", st.one_of(st.just("equl"), st.integers(0, 2)), _kw(fn(V, "StratifiedSampler"), ...)),
        Case("defensive", bad_fraction, _kw(fn(V, "StratifiedSampler"), defensive=...)),
    ],
    # -- evaluation
    f"{E}.point_removal_curve": [
        Case("values", bad_object, _kw(fn(E, "point_removal_curve"), ..., GAME), named=NOT_A_RESULT),
        Case("fractions", st.one_of(text, st.just([1.5]), st.just([]), st.just([[0.1]])),
             _kw(fn(E, "point_removal_curve"), VALUES, GAME,
                                                                    fractions=...)),
        Case("n_random", bad_int, _kw(fn(E, "point_removal_curve"), VALUES, GAME, n_random=...)),
        Case("orders", st.one_of(st.just(["best"]), st.just([])), _kw(fn(E, "point_removal_curve"), VALUES, GAME,
                                                                     orders=...)),
    ],
    f"{E}.point_addition_curve": [
        Case("utility", bad_object, _kw(fn(E, "point_addition_curve"), VALUES, ...)),
        Case("seed", bad_seed, _kw(fn(E, "point_addition_curve"), VALUES, GAME, seed=...)),
    ],
    f"{E}.weighted_accuracy_drop": [
        Case("curve", bad_object, _kw(fn(E, "weighted_accuracy_drop"), ...)),
        Case("order", st.one_of(st.just("best"), st.integers(0, 2)), _kw(fn(E, "weighted_accuracy_drop"), CURVE, ...)),
    ],
    f"{E}.detection_scores": [
        Case("corrupted", st.one_of(bad_array, st.just([True])), _kw(fn(E, "detection_scores"), VALUES, ...)),
        Case("k", bad_int, _kw(fn(E, "detection_scores"), VALUES, np.array([True, False, False]), k=...)),
    ],
    f"{E}.flip_labels": [
        Case("fraction", bad_fraction, _kw(fn(E, "flip_labels"), _y, ...)),
        Case("y", bad_array, _kw(fn(E, "flip_labels"), ..., 0.2)),
    ],
    f"{E}.rank_stability": [Case("k", bad_int, _kw(fn(E, "rank_stability"), VALUES, VALUES, k=...)),
                            Case("b", st.one_of(st.none(), text, st.just([1.0])), _kw(fn(E, "rank_stability"),
                                                                                    VALUES, ...))],
    f"{E}.top_k_overlap": [Case("k", bad_int, _kw(fn(E, "top_k_overlap"), VALUES, VALUES, ...))],
    # -- results
    "dvl_dask.to_zarr": [
        Case("ds", bad_object, lambda v, t: dvl_dask.to_zarr(v, str(t / "v.zarr")), named=NOT_A_RESULT),
        Case("url", bad_path, lambda v, t: dvl_dask.to_zarr(values(), v)),
        Case("overwrite", bad_bool, lambda v, t: dvl_dask.to_zarr(values(), str(t / "v.zarr"), overwrite=v)),
    ],
    "dvl_dask.open_result": [Case("url", st.one_of(bad_path, st.just("missing")),
                                  lambda v, t: dvl_dask.open_result(str(t / v) if v == "missing" else v),
                                  named=r"url|there is no")],
    "dvl_dask.open_influence": [Case("url", st.one_of(bad_path, st.just("missing")),
                                     lambda v, t: dvl_dask.open_influence(str(t / v) if v == "missing" else v),
                                     named=r"url|there is no")],
    "dvl_dask.influence_dataarray": [
        Case("values", st.one_of(st.none(), text, st.just(np.zeros(3))), _kw(fn("dvl_dask", "influence_dataarray"),
                                                                              ...)),
        Case("test_names", st.just(["a"]), _kw(fn("dvl_dask", "influence_dataarray"), np.zeros((2, 3)),
                                               test_names=...), named="test_sample labels have length 1"),
    ],
    "dvl_dask.influence_to_zarr": [
        Case("result", bad_object, lambda v, t: dvl_dask.influence_to_zarr(v, str(t / "i.zarr")),
             named="needs an array|result"),
        Case("url", bad_path, lambda v, t: dvl_dask.influence_to_zarr(np.zeros((2, 3)), v)),
        Case("repair", bad_bool, lambda v, t: dvl_dask.influence_to_zarr(np.zeros((2, 3)), str(t / "i.zarr"),
                                                                         repair=v)),
    ],
    f"{R}.self_influence_dataarray": [
        Case("values", st.one_of(st.none(), text), _kw(fn(R, "self_influence_dataarray"), ...)),
        Case("names", st.just(["a"]), _kw(fn(R, "self_influence_dataarray"), np.zeros(3), names=...),
             named="labels have length 1"),
    ],
    f"{R}.merge_results": [Case("a", bad_object, _kw(fn(R, "merge_results"), ..., VALUES)),
                           Case("b", bad_object, _kw(fn(R, "merge_results"), VALUES, ...))],
    f"{R}.validate_valuation_dataset": [Case("ds", bad_object, _kw(fn(R, "validate_valuation_dataset"), ...),
                                             named=NOT_A_RESULT)],
    f"{R}.parameters_of": [Case("ds", bad_object, _kw(fn(R, "parameters_of"), ...))],
    f"{R}.provenance_of": [Case("ds", bad_object, _kw(fn(R, "provenance_of"), ...))],
    f"{R}.effective_sample_size": [Case("reference", st.one_of(st.none(), text, st.just([-1.0, 0.0, 0.0])),
                                        _kw(fn(R, "effective_sample_size"), VALUES, ...))],
    f"{R}.truncate_checkpoint": [Case("to_block", bad_non_negative_int,
                                      lambda v, t: _mod(R).truncate_checkpoint(str(t), v))],
    f"{R}.valuation_dataset": [
        Case("value", bad_array, lambda v, t: _mod(R).valuation_dataset(v, np.zeros(2), np.ones(2),
                                                                     data_names=[0, 1], method="m")),
        Case("method", st.one_of(st.integers(0, 2), st.just("")), lambda v, t: _mod(R).valuation_dataset(
            np.zeros(2), np.zeros(2), np.ones(2), data_names=[0, 1], method=v)),
    ],
    f"{R}.ValuationResult": [Case("ds", bad_object, _kw(fn(R, "ValuationResult"), ...), named=NOT_A_RESULT)],
    f"{R}.DvlAccessor": [Case("ds", bad_object, _kw(fn(R, "DvlAccessor"), ...))],
    f"{R}.ValueItem": [Case("index", st.one_of(text, st.just(-1)),
                            _kw(fn(R, "ValueItem"), ..., "a", 0.0, 0.0, 1, 0.0))],
    f"{R}.open_block_sink": [
        Case("name", st.one_of(st.integers(0, 2), st.just("")), lambda v, t: _mod(R).open_block_sink(
            str(t / "s.zarr"), plan=_mod(CH).BlockPlan((2,)), name=v, dims=("a",), coords={}, token="t")),
    ],
    f"{R}.Checkpoint": [Case("attrs", bad_mapping, _kw(fn(R, "Checkpoint"), None, ..., 1))],
    f"{R}.ZarrBlockSink": [
        Case("plan", bad_object, lambda v, t: _mod(R).ZarrBlockSink(
            str(t / "s.zarr"), None, name="a", plan=v, token="t", write_id="w", done=None, spec=None)),
    ],
    # -- plots
    f"{P}.plot_values": [Case("top_k", bad_non_negative_int, _kw(fn(P, "plot_values"), VALUES, top_k=...)),
                         Case("n_stderr", bad_non_negative_real, _kw(fn(P, "plot_values"), VALUES, n_stderr=...))],
    f"{P}.plot_value_distribution": [Case("bins", bad_int, _kw(fn(P, "plot_value_distribution"), VALUES, bins=...)),
                                     Case("labels", st.just([1]), _kw(fn(P, "plot_value_distribution"), VALUES, ...))],
    f"{P}.plot_influence": [
        Case("test_index", st.one_of(st.integers(2, 99), st.integers(-3, -1), text),
             _kw(fn(P, "plot_influence"), np.zeros((2, 3)), test_index=...)),
        Case("top_k", bad_int, _kw(fn(P, "plot_influence"), np.zeros((2, 3)), test_index=0, top_k=...)),
    ],
    f"{P}.plot_curves": [Case("curve", bad_object, _kw(fn(P, "plot_curves"), ...)),
                         Case("band", bad_non_negative_real, _kw(fn(P, "plot_curves"), CURVE, band=...))],
    f"{P}.plot_convergence": [Case("history", bad_object, _kw(fn(P, "plot_convergence"), ...))],
    f"{P}.save_plot": [
        Case("plot", bad_object, _kw(fn(P, "save_plot"), ..., VALUES, "never-written.png")),
        Case("dpi", bad_positive_real, _kw(fn(P, "save_plot"), fn(P, "plot_values"), VALUES, "x.png", dpi=...)),
        Case("figsize", st.sampled_from([(0, 3), (1.0, math.nan), "wide", 3, (1, 2, 3)]),
             _kw(fn(P, "save_plot"), fn(P, "plot_values"), VALUES, "x.png", figsize=...)),
    ],
    # -- influence
    "dvl_dask.SequentialInfluenceCalculator": [
        Case("model", bad_object, _kw(dvl_dask.SequentialInfluenceCalculator, ...)),
    ],
    "dvl_dask.DaskInfluenceCalculator": [
        Case("model", bad_object, _kw(dvl_dask.DaskInfluenceCalculator, ..., None, None)),
    ],
    "dvl_dask.influence.LazyChunkSequence": [
        Case("blocks", bad_object, _kw(fn("dvl_dask.influence", "LazyChunkSequence"), ..., token="t", attrs={})),
    ],
    "dvl_dask.influence.NestedLazyChunkSequence": [
        Case("nested", bad_object, _kw(fn("dvl_dask.influence", "NestedLazyChunkSequence"), ..., token="t", attrs={})),
    ],
    "dvl_dask.influence.InfluenceMode": [Case("mode", st.one_of(st.just("upp"), st.integers(0, 3)),
                                              _kw(fn("dvl_dask.influence", "InfluenceMode"), ...),
                                              named="not a valid|mode")],
    "dvl_dask.influence.SecondOrderMode": [Case("second_order_mode", st.one_of(st.just("hesian"), st.integers(0, 3)),
                                                lambda v, t: _mod("dvl_dask.influence").SecondOrderMode.parse(v),
                                                named="is not a valid SecondOrderMode")],
    "dvl_dask.influence.BlockMode": [Case("block_structure", st.one_of(st.just("ful"), st.integers(0, 3)),
                                          lambda v, t: _mod("dvl_dask.influence").BlockMode.parse(v),
                                          named="is not a valid BlockMode")],
    f"{T}.DirectInfluence": [
        Case("regularization", bad_non_negative_real, _influence("DirectInfluence", regularization=...)),
        Case("second_order_mode", st.just("hesian"), _influence("DirectInfluence", second_order_mode=...),
             named="is not a valid SecondOrderMode"),
    ],
    f"{T}.CgInfluence": [Case("maxiter", bad_int, _influence("CgInfluence", maxiter=...)),
                         Case("rtol", bad_non_negative_real, _influence("CgInfluence", rtol=...))],
    f"{T}.LissaInfluence": [Case("maxiter", bad_int, _influence("LissaInfluence", maxiter=...)),
                            Case("scale", bad_positive_real, _influence("LissaInfluence", scale=...))],
    f"{T}.ArnoldiInfluence": [Case("rank", bad_int, _influence("ArnoldiInfluence", rank=...))],
    f"{T}.EkfacInfluence": [Case("eigenvalue_correction", bad_bool,
                                 _influence("EkfacInfluence", eigenvalue_correction=...))],
    f"{T}.NystroemSketchInfluence": [Case("rank", bad_int, _influence("NystroemSketchInfluence", rank=...,
                                                                       regularization=0.1))],
    f"{T}.InverseHarmonicMeanInfluence": [Case("regularization", bad_positive_real,
                                               _influence("InverseHarmonicMeanInfluence", regularization=...))],
    f"{T}.TracInInfluence": [Case("normalize", bad_bool, _influence("TracInInfluence", normalize=...))],
    f"{T}.TrakInfluence": [Case("projection_dim", bad_int, _influence("TrakInfluence", projection_dim=...))],
    f"{T}.LograInfluence": [Case("input_dim", bad_int, _influence("LograInfluence", input_dim=...))],
    f"{T}.TorchInfluenceFunctionModel": [
        Case("model", bad_object, lambda v, t: _mod(T).DirectInfluence(v, torch_loss())),
        Case("loss", bad_callable, lambda v, t: _mod(T).DirectInfluence(torch_model(), v)),
    ],
    f"{T}.JacobiPreconditioner": [Case("num_samples_estimate", bad_int, _kw(fn(T, "JacobiPreconditioner"), ...))],
    f"{T}.NystroemPreconditioner": [Case("rank", bad_int, _kw(fn(T, "NystroemPreconditioner"), ...))],
    f"{T}.TorchNumpyConverter": [Case("dtype", st.one_of(text, st.integers(0, 2)),
                                      _kw(fn(T, "TorchNumpyConverter"), dtype=...))],
    f"{T}.torch_dataset_to_dask_array": [
        Case("chunk_size", bad_int, lambda v, t: _mod(T).torch_dataset_to_dask_array(_torch_dataset(), v)),
        Case("dataset", st.one_of(st.none(), st.integers(0, 3)), _kw(fn(T, "torch_dataset_to_dask_array"), ..., 2)),
    ],
    f"{T}.load_torchscript": [Case("path", st.one_of(bad_path, st.just("missing.pt")),
                                   lambda v, t: _mod(T).load_torchscript(str(t / v) if v == "missing.pt" else v))],
    f"{T}.ScriptedModule": [Case("script", bad_object, _kw(fn(T, "ScriptedModule"), ...))],
    # -- chunks
    f"{CH}.BlockPlan": [Case("rows", st.one_of(st.just((0,)), st.just((-1, 2)), st.just((1.5,)), text),
                             _kw(fn(CH, "BlockPlan"), ...))],
    f"{CH}.regular_chunks": [Case("chunk_size", bad_int, _kw(fn(CH, "regular_chunks"), 10, ...)),
                             Case("n", bad_non_negative_int, _kw(fn(CH, "regular_chunks"), ..., 2))],
    f"{CH}.SequentialMapper": [Case("progress", bad_bool, _kw(fn(CH, "SequentialMapper"), progress=...))],
    f"{CH}.SharedObjects": [Case("objects", bad_mapping, _kw(fn(CH, "SharedObjects"), ...))],
    f"{CH}.BlockSequence": [Case("thunks", bad_callable, _kw(fn(CH, "BlockSequence"), ...))],
    f"{CH}.NestedBlockSequence": [Case("kernel", bad_callable, _kw(fn(CH, "NestedBlockSequence"), ..., None, None))],
    f"{CH}.RowExtremes": [Case("min", bad_array, _kw(fn(CH, "RowExtremes"), ..., np.zeros(1), np.zeros(1),
                                                     np.zeros(1)))],
    # -- cache
    f"{C}.DiskCacheBackend": [Case("path", st.one_of(st.integers(0, 3), st.just("a-file")), lambda v, t: _mod(
        C).DiskCacheBackend(str(_file(t)) if v == "a-file" else v))],
    f"{C}.MemcachedCacheBackend": [Case("config", st.one_of(st.integers(0, 3), text),
                                        _kw(fn(C, "MemcachedCacheBackend"), ...))],
    f"{C}.MemcachedClientConfig": [Case("timeout", bad_positive_real, _kw(fn(C, "MemcachedClientConfig"),
                                                                          timeout=...))],
    f"{C}.MemcachedConfig": [Case("time_threshold", bad_non_negative_real, _kw(fn(C, "MemcachedConfig"),
                                                                              time_threshold=...))],
    f"{C}.CachedFuncConfig": [Case("time_threshold", bad_non_negative_real, _kw(fn(C, "CachedFuncConfig"),
                                                                                time_threshold=...))],
    f"{C}.CacheStats": [Case("hits", bad_non_negative_int, _kw(fn(C, "CacheStats"), hits=...))],
    f"{C}.RunningStats": [Case("count", bad_non_negative_int, _kw(fn(C, "RunningStats"), ...))],
    f"{C}.memoize": [Case("backend", bad_object, _kw(fn(C, "memoize"), abs, ...)),
                     Case("fn", bad_callable, lambda v, t: _mod(C).memoize(v, _mod(C).InMemoryCacheBackend()))],
    f"{C}.MemoizedFunction": [Case("backend", bad_object, _kw(fn(C, "MemoizedFunction"), abs, ...))],
    f"{C}.memcached": [Case("time_threshold", bad_non_negative_real, _kw(fn(C, "memcached"), time_threshold=...))],
    f"{C}.check_key": [Case("key", st.one_of(st.integers(0, 3), st.just(""), st.just("a b")),
                            _kw(fn(C, "check_key"), ...))],
    f"{C}.resolve_hmac_key": [Case("key", st.one_of(st.integers(0, 3), st.just(b"")),
                                   _kw(fn(C, "resolve_hmac_key"), ...))],
    # -- keys
    f"{K}.KeyFunction": [Case("fn", bad_callable, _kw(fn(K, "KeyFunction"), ...))],
    f"{K}.BoundCall": [Case("name", st.one_of(st.integers(0, 3), st.just("")), _kw(fn(K, "BoundCall"), ..., {}, "t"))],
    f"{K}.bind_arguments": [Case("kwargs", st.just({"nope": 1}), _kw(fn(K, "bind_arguments"), abs, (1,), ...),
                                 named="unexpected keyword argument 'nope'")],
    f"{K}.call_key": [Case("func", bad_callable, _kw(fn(K, "call_key"), ..., (), {}))],
    f"{K}.lazy_method": [Case("seeds", st.one_of(st.integers(0, 3), st.just(["missing"])),
                              lambda v, t: _mod(K).lazy_method(lambda seed=None: None, seeds=v))],
    f"{K}.cache_key": [Case("fn", bad_callable, _kw(fn(K, "cache_key"), ..., (), {}))],
    f"{K}.canonical_indices": [Case("indices", st.one_of(text, st.just([0.5]), st.just([[0]])),
                                    _kw(fn(K, "canonical_indices"), ...))],
    f"{K}.class_token": [Case("cls", st.one_of(st.integers(0, 3), text), _kw(fn(K, "class_token"), ...))],
    f"{K}.code_fingerprint": [Case("fn", st.one_of(st.integers(0, 3), text), _kw(fn(K, "code_fingerprint"), ...))],
    f"{K}.function_token": [Case("fn", st.one_of(st.integers(0, 3), text), _kw(fn(K, "function_token"), ...))],
    f"{K}.dask_content_digest": [Case("array", bad_object, _kw(fn(K, "dask_content_digest"), ...))],
    f"{K}.estimator_token": [Case("estimator", st.one_of(st.integers(0, 3), text), _kw(fn(K, "estimator_token"), ...),
                                  named="get_params")],
    f"{K}.layer_name": [Case("verb", st.one_of(st.integers(0, 3), st.just("")), _kw(fn(K, "layer_name"), ...))],
    f"{K}.run_identity": [Case("utility_token", st.one_of(st.integers(0, 3), st.just("")),
                               _kw(fn(K, "run_identity"), utility_token=...))],
    f"{K}.package_version": [Case("module", st.one_of(st.integers(0, 3), st.just("")),
                                  _kw(fn(K, "package_version"), ...))],
    # -- config, validation
    "dvl_dask.config.get": [Case("key", st.one_of(st.integers(0, 3), st.none()),
                                 _kw(fn("dvl_dask.config", "get"), ...))],
    "dvl_dask.validation.as_seed_sequence": [Case("seed", bad_seed, _kw(fn("dvl_dask.validation",
                                                                         "as_seed_sequence"), ...))],
    "dvl_dask.validation.check_array": [Case("x", bad_array, _kw(fn("dvl_dask.validation", "check_array"), ..., "x",
                                                                 "f"))],
    "dvl_dask.validation.check_coalition": [Case("coalition", st.one_of(st.just([0.5]), st.just([9]), text),
                                                 _kw(fn("dvl_dask.validation", "check_coalition"), ..., 3))],
    "dvl_dask.validation.check_consistent_length": [
        Case("y", st.just(np.zeros(3)), lambda v, t: _mod("dvl_dask.validation").check_consistent_length(
            "f", x=np.zeros(2), y=v)),
    ],
    "dvl_dask.validation.check_bool": [Case("flag", bad_bool, _kw(fn("dvl_dask.validation", "check_bool"), ...,
                                                                  "flag", "f"))],
    "dvl_dask.validation.check_finite_score": [Case("returned", st.one_of(st.just(math.nan), text), _kw(
        fn("dvl_dask.validation", "check_finite_score"), ..., "f"))],
    "dvl_dask.validation.check_keywords": [Case("nope", st.just(["nope"]), _kw(
        fn("dvl_dask.validation", "check_keywords"), ..., ["yes"], "f"))],
    "dvl_dask.validation.check_url": [Case("url", bad_path, _kw(fn("dvl_dask.validation", "check_url"), ..., "url",
                                                                "f"))],
    "dvl_dask.validation.check_callable": [Case("fn", bad_callable, _kw(fn("dvl_dask.validation", "check_callable"),
                                                                    ..., "fn", "f"))],
    "dvl_dask.validation.check_name": [Case("name", st.one_of(st.integers(0, 3), st.none(), st.just("")),
                                            _kw(fn("dvl_dask.validation", "check_name"), ..., "name", "f"))],
    "dvl_dask.validation.check_mapping": [Case("objects", st.one_of(bad_mapping, st.just({1: 2})),
                                               _kw(fn("dvl_dask.validation", "check_mapping"), ..., "objects", "f"))],
    "dvl_dask.validation.check_model": [Case("model", bad_object, _kw(fn("dvl_dask.validation", "check_model"),
                                                                      ..., "model", "f"))],
    "dvl_dask.validation.check_positive_int": [Case("n", bad_int, _kw(fn("dvl_dask.validation",
                                                                         "check_positive_int"), ..., "n", "f"))],
    "dvl_dask.validation.check_real": [Case("x", st.one_of(st.just(math.nan), text), _kw(
        fn("dvl_dask.validation", "check_real"), ..., "x", "f"))],
    "dvl_dask.validation.keyword_aliases": [Case("missing", st.just("missing"), lambda v, t: _mod(
        "dvl_dask.validation").keyword_aliases(x=v)(lambda a: a))],
    "dvl_dask.validation.seed_entropy": [Case("seed", bad_object, _kw(fn("dvl_dask.validation", "seed_entropy"),
                                                                      ...))],
    # -- testing helpers
    f"{G}.AdditiveGame": [Case("weights", st.one_of(bad_array, st.just([])), _kw(fn(G, "AdditiveGame"), ...))],
    f"{G}.AirportGame": [Case("costs", st.one_of(bad_array, st.just([-1.0])), _kw(fn(G, "AirportGame"), ...))],
    f"{G}.Game": [Case("n_players", bad_int, _kw(fn(G, "Game"), ...))],
    f"{G}.MinerGame": [Case("n_players", bad_int, _kw(fn(G, "MinerGame"), ...))],
    f"{G}.ShoesGame": [Case("left", bad_non_negative_int, _kw(fn(G, "ShoesGame"), ..., 2))],
    f"{G}.SymmetricVotingGame": [Case("n_players", bad_int, _kw(fn(G, "SymmetricVotingGame"), ...))],
    f"{G}.WeightedVotingGame": [Case("quota", bad_int, _kw(fn(G, "WeightedVotingGame"), [1, 2], ...))],
    f"{G}.Unchecked": [Case("game", bad_object, _kw(fn(G, "Unchecked"), ...))],
    "dvl_dask.testing.assertions.assert_valid_valuation_dataset": [
        Case("ds", bad_object, _kw(fn("dvl_dask.testing", "assert_valid_valuation_dataset"), ...), named=NOT_A_RESULT)],
    "dvl_dask.testing.assertions.assert_values_close": [
        Case("ds", bad_object, _kw(fn("dvl_dask.testing", "assert_values_close"), ..., [1.0]), named=NOT_A_RESULT)],
    "dvl_dask.testing.assertions.assert_within_stderr": [
        Case("ds", bad_object, _kw(fn("dvl_dask.testing", "assert_within_stderr"), ..., np.zeros(3)),
             named=NOT_A_RESULT)],
    "dvl_dask.testing.raise_if_dask_computes": [
        Case("max_computes", bad_non_negative_int, lambda v, t: _mod("dvl_dask.testing").raise_if_dask_computes(
            v).__enter__())],
    "dvl_dask.testing.mappers.assert_mappers_agree": [
        Case("kernel", bad_callable, lambda v, t: _mod("dvl_dask.testing.mappers").assert_mappers_agree(
            v, _mod(CH).BlockPlan((2,)), [np.zeros(2)]))],
    "dvl_dask.testing.servers.start_memcached": [
        Case("memory_mb", bad_int, lambda v, t: _mod("dvl_dask.testing.servers").start_memcached(memory_mb=v))],
    "dvl_dask.testing.servers.free_port": [
        Case("host", st.one_of(st.integers(0, 3), st.just("no such host")),
             _kw(fn("dvl_dask.testing.servers", "free_port"), ...))],
    "dvl_dask.threads.limits_blas_threads": [Case("fn", bad_callable, _kw(fn("dvl_dask.threads",
                                                                            "limits_blas_threads"), ...))],
    "dvl_dask.preload.dask_setup": [Case("worker", st.integers(0, 3), _kw(fn("dvl_dask.preload", "dask_setup"), ...))],
}


# -- pyDVL-compatible names (dvl_dask.compat.pydvl), batched models, later valuation names -------------

CP = "dvl_dask.compat.pydvl"
CV = f"{CP}.valuation"
CU = f"{CP}.utils"
CL = f"{CP}.value"
M = "dvl_dask.models"
bad_object_not_none = st.one_of(st.integers(-2, 2), text, st.lists(st.integers(0, 2), max_size=3))
#: Not shared training rows (m, d) with 12 rows: what the batched solvers are given.
bad_rows = st.one_of(st.none(), text, st.just(np.array([[1.0, math.nan]] * 12)), st.just(np.empty((0, 2))),
                     st.just(np.zeros(12)))


@functools.cache
def cp_data():
    return _mod(CV).Dataset(_x[:8], _y[:8])


@functools.cache
def cp_test_data():
    return _mod(CV).Dataset(_x[8:], _y[8:])


@functools.cache
def cp_utility():
    scorer = _mod(CV).SupervisedScorer("accuracy", cp_test_data(), 0.0)
    return _mod(CV).ModelUtility(_sk("LogisticRegression"), scorer).with_dataset(cp_data())


def cp_sampler():
    return _mod(CV).PermutationSampler(seed=0)


def cp_stop():
    return _mod(CV).MaxUpdates(2)


CP_DATA, CP_UTILITY, CP_SAMPLER, CP_STOP = (_Lazy(f) for f in (cp_data, cp_utility, cp_sampler, cp_stop))
#: A stratified sampler whose strategy carries Delta-Shapley's bounds (pyDVL 0.10's way).
CP_STRATIFIED = _Lazy(lambda: _mod(CV).StratifiedSampler(_mod(CV).ConstantSampleSize(upper_bound=2), seed=1))


def _device_set(device: Any) -> Any:
    """``batch_device()`` with ``dvl_dask.models.device`` set to ``device`` (the bad value)."""
    import dask

    with dask.config.set({"dvl_dask.models.device": device}):
        return _mod(M).batch_device()


def _cv(name: str, arg: str, values: st.SearchStrategy[Any], *args: Any, **kw: Any) -> Case:
    """A case of ``dvl_dask.compat.pydvl.valuation.<name>(*args, **kw)`` (``...`` marks the bad value)."""
    return Case(arg, values, _kw(fn(CV, name), *args, **kw))


def _sampler_cases(name: str, **extra: Any) -> list[Case]:
    return [_cv(name, "batch_size", bad_int, batch_size=..., **extra)]


def _seeded_sampler_cases(name: str, **extra: Any) -> list[Case]:
    return [*_sampler_cases(name, **extra), _cv(name, "seed", bad_seed, seed=..., **extra)]


def _semivalue_valuation(name: str, *args: Any, **kw: Any) -> list[Case]:
    """``name(utility, *args, **kw)``: a bad utility, and a bad stopping criterion (``is_done``)."""
    cases = [Case("utility", bad_object, _kw(fn(CV, name), ..., *args, **kw))]
    if "is_done" in kw:
        cases.append(Case("is_done", bad_object, _kw(fn(CV, name), CP_UTILITY, *args, **{**kw, "is_done": ...})))
    return cases


@functools.cache
def cp_old_utility():
    return _mod(CU).Utility(_sk("LogisticRegression"), dataset(), "accuracy")


CP_OLD_UTILITY = _Lazy(cp_old_utility)
#: pyDVL's n_jobs: -1 is all cores.
bad_n_jobs = st.one_of(st.integers(-5, -2), st.sampled_from([0, 0.5, math.nan, True]), not_number)


def _compute(name: str, **kw: Any) -> list[Case]:
    """``dvl_dask.compat.pydvl.value.<name>(u, **kw)``: a bad utility, n_jobs and config."""
    return [
        Case("u", bad_object, _kw(fn(CL, name), ..., **kw)),
        Case("n_jobs", bad_n_jobs, _kw(fn(CL, name), CP_OLD_UTILITY, n_jobs=..., **kw)),
        Case("config", bad_object_not_none, _kw(fn(CL, name), CP_OLD_UTILITY, config=..., **kw)),
    ]


def _sample_size(name: str, *args: Any) -> list[Case]:
    return [
        _cv(name, "n_samples", bad_int, *args, n_samples=...),
        _cv(name, "lower_bound", bad_non_negative_int, *args, lower_bound=...),
    ]


NEW_CASES: dict[str, list[Case]] = {
    # -- pydvl.utils (pyDVL <= 0.9)
    f"{CU}.Dataset": [Case("x_train", bad_array, _kw(fn(CU, "Dataset"), ..., _y[:8], _x[8:], _y[8:]))],
    f"{CU}.GroupedDataset": [
        Case("data_groups", st.one_of(bad_array, st.just([0, 1])),
             _kw(fn(CU, "GroupedDataset"), _x[:8], _y[:8], _x[8:], _y[8:], data_groups=...)),
    ],
    f"{CU}.ParallelConfig": [
        Case("backend", st.one_of(text, st.integers(0, 2)), _kw(fn(CU, "ParallelConfig"), ...)),
        Case("n_cpus_local", bad_int, _kw(fn(CU, "ParallelConfig"), n_cpus_local=...)),
    ],
    f"{CU}.Scorer": [
        Case("scoring", st.one_of(st.integers(0, 3), st.just("acuracy"), st.none()), _kw(fn(CU, "Scorer"), ...)),
        Case("default", st.one_of(text, st.just([1.0])), _kw(fn(CU, "Scorer"), "accuracy", default=...)),
        Case("range", bad_range, _kw(fn(CU, "Scorer"), "accuracy", range=...)),
    ],
    f"{CU}.Utility": [
        Case("model", bad_object, _kw(fn(CU, "Utility"), ..., DATA, "accuracy")),
        Case("data", bad_object, lambda v, t: _mod(CU).Utility(_sk("LogisticRegression"), v, "accuracy")),
        Case("score_range", bad_range,
             lambda v, t: _mod(CU).Utility(_sk("LogisticRegression"), dataset(), "accuracy", score_range=v)),
    ],
    # -- pydvl.valuation: data, utilities, scorers
    f"{CV}.Dataset": [_cv("Dataset", "x", bad_array, ..., _y[:8])],
    f"{CV}.GroupedDataset": [_cv("GroupedDataset", "data_groups", st.one_of(bad_array, st.just([0, 1])),
                                 _x[:8], _y[:8], ...)],
    f"{CV}.RawData": [_cv("RawData", "x", st.one_of(st.none(), st.integers(0, 3), st.just(_x[:3])), ..., _y[:2])],
    f"{CV}.SupervisedScorer": [
        _cv("SupervisedScorer", "scoring", st.one_of(st.integers(0, 3), st.just("acuracy")), ...,
            _Lazy(cp_test_data), 0.0),
        _cv("SupervisedScorer", "test_data", bad_object, "accuracy", ..., 0.0),
        _cv("SupervisedScorer", "default", st.one_of(text, st.just(math.nan)), "accuracy",
            _Lazy(cp_test_data), ...),
    ],
    f"{CV}.ClasswiseSupervisedScorer": [
        _cv("ClasswiseSupervisedScorer", "test_data", bad_object, "accuracy", ...),
        _cv("ClasswiseSupervisedScorer", "in_class_discount_fn", st.one_of(st.integers(0, 3), text),
            "accuracy", _Lazy(cp_test_data), in_class_discount_fn=...),
    ],
    f"{CV}.compose_score": [
        Case("scorer", bad_object, _kw(fn(CV, "compose_score"), ..., math.tanh, (0.0, 1.0), "s")),
        Case("transformation", bad_callable, lambda v, t: _mod(CV).compose_score(
            _mod(CV).SupervisedScorer("r2", cp_test_data(), 0.0), v, (0.0, 1.0), "s")),
    ],
    f"{CV}.ModelUtility": [
        _cv("ModelUtility", "model", bad_object, ..., None),
        Case("scorer", bad_object, lambda v, t: _mod(CV).ModelUtility(_sk("LogisticRegression"), v)),
        Case("catch_errors", bad_bool, lambda v, t: _mod(CV).ModelUtility(
            _sk("LogisticRegression"), _mod(CV).SupervisedScorer("accuracy", cp_test_data(), 0.0), catch_errors=v)),
    ],
    f"{CV}.ClasswiseModelUtility": [
        Case("scorer", bad_object, lambda v, t: _mod(CV).ClasswiseModelUtility(_sk("LogisticRegression"), v)),
    ],
    f"{CV}.DataUtilityLearning": [
        _cv("DataUtilityLearning", "utility", bad_object, ..., 4, _Lazy(lambda: _sk("LinearRegression"))),
        _cv("DataUtilityLearning", "training_budget", bad_int, CP_UTILITY, ...,
            _Lazy(lambda: _sk("LinearRegression"))),
        _cv("DataUtilityLearning", "model", bad_object, CP_UTILITY, 4, ...),
    ],
    # -- stopping criteria
    f"{CV}.AbsoluteStandardError": [_cv("AbsoluteStandardError", "threshold", bad_positive_real, ...),
                                    _cv("AbsoluteStandardError", "fraction", bad_fraction, 0.1, fraction=...),
                                    _cv("AbsoluteStandardError", "burn_in", bad_non_negative_int, 0.1, burn_in=...)],
    f"{CV}.HistoryDeviation": [_cv("HistoryDeviation", "n_steps", bad_int, ..., 0.1),
                               _cv("HistoryDeviation", "rtol", bad_positive_real, 5, ...)],
    f"{CV}.MaxChecks": [_cv("MaxChecks", "n_checks", bad_int, ...)],
    f"{CV}.MaxSamples": [_cv("MaxSamples", "sampler", bad_object, ..., 4),
                         _cv("MaxSamples", "n_samples", bad_int, CP_SAMPLER, ...)],
    f"{CV}.MaxTime": [_cv("MaxTime", "seconds", st.one_of(st.floats(max_value=0.0), st.just(math.nan), not_number),
                          ...)],
    f"{CV}.MaxUpdates": [_cv("MaxUpdates", "n_updates", bad_int, ...)],
    f"{CV}.MinUpdates": [_cv("MinUpdates", "n_updates", bad_int, ...)],
    f"{CV}.NoStopping": [_cv("NoStopping", "sampler", bad_object_not_none, ...)],
    f"{CV}.RankCorrelation": [_cv("RankCorrelation", "rtol", bad_positive_real, ..., 4),
                              _cv("RankCorrelation", "burn_in", bad_non_negative_int, 0.1, ...)],
    # -- truncation
    f"{CV}.DeviationTruncation": [_cv("DeviationTruncation", "sigmas", bad_positive_real, ...),
                                  _cv("DeviationTruncation", "burn_in_fraction", bad_fraction, 1.0,
                                      burn_in_fraction=...)],
    f"{CV}.FixedTruncation": [_cv("FixedTruncation", "fraction", bad_fraction, fraction=...)],
    f"{CV}.RelativeTruncation": [_cv("RelativeTruncation", "rtol", bad_positive_real, rtol=...),
                                 _cv("RelativeTruncation", "burn_in_fraction", bad_fraction, rtol=0.1,
                                     burn_in_fraction=...)],
    # -- samplers and sample-size strategies
    f"{CV}.IndexSampler": _seeded_sampler_cases("IndexSampler"),
    f"{CV}.UniformSampler": [*_seeded_sampler_cases("UniformSampler"),
                             _cv("UniformSampler", "index_iteration", bad_object_not_none, index_iteration=...)],
    f"{CV}.AntitheticSampler": _seeded_sampler_cases("AntitheticSampler"),
    f"{CV}.DeterministicUniformSampler": _sampler_cases("DeterministicUniformSampler"),
    f"{CV}.LOOSampler": [*_sampler_cases("LOOSampler"),
                         _cv("LOOSampler", "index_iteration", bad_object_not_none, index_iteration=...)],
    f"{CV}.MSRSampler": _seeded_sampler_cases("MSRSampler"),
    f"{CV}.PermutationSampler": [*_seeded_sampler_cases("PermutationSampler"),
                                 _cv("PermutationSampler", "truncation", bad_object_not_none, truncation=...)],
    f"{CV}.AntitheticPermutationSampler": [
        *_seeded_sampler_cases("AntitheticPermutationSampler"),
        _cv("AntitheticPermutationSampler", "truncation", bad_object_not_none, truncation=...)],
    f"{CV}.DeterministicPermutationSampler": [
        *_sampler_cases("DeterministicPermutationSampler"),
        _cv("DeterministicPermutationSampler", "truncation", bad_object_not_none, truncation=...)],
    f"{CV}.StratifiedPermutationSampler": [
        *_seeded_sampler_cases("StratifiedPermutationSampler"),
        _cv("StratifiedPermutationSampler", "sample_sizes", bad_object_not_none, sample_sizes=...)],
    f"{CV}.StratifiedSampler": [*_seeded_sampler_cases("StratifiedSampler"),
                                _cv("StratifiedSampler", "index_iteration", bad_object_not_none,
                                    index_iteration=...),
                                _cv("StratifiedSampler", "sample_sizes", bad_object_not_none, sample_sizes=...)],
    f"{CV}.VRDSSampler": [_cv("VRDSSampler", "n_samples_per_index", bad_int, ...),
                          *_seeded_sampler_cases("VRDSSampler", n_samples_per_index=2)],
    f"{CV}.OwenSampler": [*_seeded_sampler_cases("OwenSampler"),
                          _cv("OwenSampler", "n_samples_inner", bad_int, n_samples_inner=...),
                          _cv("OwenSampler", "outer_sampling_strategy", bad_object_not_none,
                              outer_sampling_strategy=...)],
    f"{CV}.AntitheticOwenSampler": [*_seeded_sampler_cases("AntitheticOwenSampler"),
                                    _cv("AntitheticOwenSampler", "n_samples_inner", bad_int, n_samples_inner=...)],
    f"{CV}.ClasswiseSampler": [
        _cv("ClasswiseSampler", "in_class", bad_object, ..., CP_SAMPLER),
        _cv("ClasswiseSampler", "out_of_class", bad_object, CP_SAMPLER, ...),
    ],
    f"{CV}.GridOwenStrategy": [_cv("GridOwenStrategy", "n_samples_outer", bad_int, ...)],
    f"{CV}.UniformOwenStrategy": [_cv("UniformOwenStrategy", "n_samples_outer", bad_int, ...),
                                  _cv("UniformOwenStrategy", "seed", bad_seed, 4, seed=...)],
    f"{CV}.SampleSizeStrategy": _sample_size("SampleSizeStrategy"),
    f"{CV}.ConstantSampleSize": _sample_size("ConstantSampleSize"),
    f"{CV}.HarmonicSampleSize": _sample_size("HarmonicSampleSize"),
    f"{CV}.LinearSampleSize": [*_sample_size("LinearSampleSize"),
                               _cv("LinearSampleSize", "scale", bad_positive_real, scale=...),
                               _cv("LinearSampleSize", "offset", bad_non_negative_int, offset=...)],
    f"{CV}.PowerLawSampleSize": [*_sample_size("PowerLawSampleSize", -0.5),
                                 _cv("PowerLawSampleSize", "exponent", st.one_of(st.just(math.nan), not_number),
                                     ...)],
    f"{CV}.DeltaShapleyNCSGDConfig": [
        _cv("DeltaShapleyNCSGDConfig", "max_loss", bad_positive_real, ..., 1.0, 1.0, 0.1, 10, 4, 8),
        _cv("DeltaShapleyNCSGDConfig", "n_train", bad_int, 1.0, 1.0, 1.0, 0.1, 10, 4, ...),
        _cv("DeltaShapleyNCSGDConfig", "version", st.one_of(text, st.integers(0, 2)),
            1.0, 1.0, 1.0, 0.1, 10, 4, 8, version=...),
    ],
    f"{CV}.DeltaShapleyNCSGDSampleSize": [_cv("DeltaShapleyNCSGDSampleSize", "config", bad_object, ...)],
    f"{CV}.Sample": [_cv("Sample", "idx", st.one_of(text, st.just(0.5), st.just(-1)), ..., np.arange(2)),
                     _cv("Sample", "subset", st.one_of(st.none(), text, st.just(np.array([0.5]))), 0, ...)],
    # -- valuation methods
    f"{CV}.ShapleyValuation": [*_semivalue_valuation("ShapleyValuation", sampler=CP_SAMPLER, is_done=CP_STOP),
                               _cv("ShapleyValuation", "sampler", bad_object, CP_UTILITY, sampler=...,
                                   is_done=CP_STOP)],
    f"{CV}.BanzhafValuation": [*_semivalue_valuation("BanzhafValuation", sampler=CP_SAMPLER, is_done=CP_STOP),
                               _cv("BanzhafValuation", "sampler", bad_object, CP_UTILITY, sampler=...,
                                   is_done=CP_STOP)],
    f"{CV}.BetaShapleyValuation": [
        *_semivalue_valuation("BetaShapleyValuation", sampler=CP_SAMPLER, is_done=CP_STOP, alpha=1.0, beta=1.0),
        _cv("BetaShapleyValuation", "alpha", bad_positive_real, CP_UTILITY, CP_SAMPLER, CP_STOP, ..., 1.0)],
    f"{CV}.MSRBanzhafValuation": [*_semivalue_valuation("MSRBanzhafValuation", is_done=CP_STOP),
                                  _cv("MSRBanzhafValuation", "batch_size", bad_int, CP_UTILITY, CP_STOP,
                                      batch_size=...)],
    f"{CV}.StratifiedShapleyValuation": [
        *_semivalue_valuation("StratifiedShapleyValuation", is_done=CP_STOP),
        _cv("StratifiedShapleyValuation", "seed", bad_seed, CP_UTILITY, CP_STOP, seed=...)],
    f"{CV}.TMCShapleyValuation": [
        *_semivalue_valuation("TMCShapleyValuation", is_done=CP_STOP),
        _cv("TMCShapleyValuation", "truncation", bad_object_not_none, CP_UTILITY, truncation=..., is_done=CP_STOP)],
    f"{CV}.DeltaShapleyValuation": [
        *_semivalue_valuation("DeltaShapleyValuation", CP_STRATIFIED, is_done=CP_STOP),
        _cv("DeltaShapleyValuation", "sampler", bad_object, CP_UTILITY, ..., CP_STOP)],
    f"{CV}.IndicatorUtilityModel": [
        _cv("IndicatorUtilityModel", "predictor", bad_object, ..., 4),
        _cv("IndicatorUtilityModel", "n_data", bad_int, _Lazy(lambda: _sk("LinearRegression")), ...)],
    f"{CV}.ClasswiseShapleyValuation": [
        _cv("ClasswiseShapleyValuation", "utility", bad_object, ..., None, CP_STOP),
    ],
    f"{CV}.DataOOBValuation": [
        _cv("DataOOBValuation", "model", bad_object, ...),
        _cv("DataOOBValuation", "score", st.one_of(st.integers(0, 3), text),
            _Lazy(lambda: _sk("BaggingClassifier", "ensemble", estimator=_sk("LogisticRegression"))), ...),
    ],
    f"{CV}.ExactLeastCoreValuation": [
        _cv("ExactLeastCoreValuation", "utility", bad_object, ...),
        _cv("ExactLeastCoreValuation", "non_negative_subsidy", bad_bool, CP_UTILITY, non_negative_subsidy=...),
    ],
    f"{CV}.MonteCarloLeastCoreValuation": [
        _cv("MonteCarloLeastCoreValuation", "utility", bad_object, ..., 4),
        _cv("MonteCarloLeastCoreValuation", "n_samples", bad_int, CP_UTILITY, ...),
    ],
    f"{CV}.LeastCoreValuation": [
        _cv("LeastCoreValuation", "utility", bad_object, ..., CP_SAMPLER, 4),
        _cv("LeastCoreValuation", "n_samples", bad_int, CP_UTILITY, CP_SAMPLER, ...),
    ],
    f"{CV}.GroupTestingShapleyValuation": [
        _cv("GroupTestingShapleyValuation", "utility", bad_object, ..., 4, 0.1),
        _cv("GroupTestingShapleyValuation", "n_samples", bad_int, CP_UTILITY, ..., 0.1),
        _cv("GroupTestingShapleyValuation", "epsilon", bad_positive_real, CP_UTILITY, 4, ...),
    ],
    f"{CV}.KNNShapleyValuation": [
        _cv("KNNShapleyValuation", "model", bad_object, ..., _Lazy(cp_test_data)),
        _cv("KNNShapleyValuation", "test_data", bad_object,
            _Lazy(lambda: _sk("KNeighborsClassifier", "neighbors")), ...),
    ],
    f"{CV}.LOOValuation": [_cv("LOOValuation", "utility", bad_object, ...)],
    f"{CV}.ValuationResult": [Case("ds", bad_object, _kw(fn(CV, "ValuationResult"), ...), named=NOT_A_RESULT)],
    # -- pydvl.value (pyDVL <= 0.9 functions)
    f"{CL}.compute_loo": _compute("compute_loo"),
    f"{CL}.compute_banzhaf_semivalues": [*_compute("compute_banzhaf_semivalues", done=CP_STOP),
                                         Case("done", bad_object, _kw(fn(CL, "compute_banzhaf_semivalues"),
                                                                      CP_OLD_UTILITY, done=...))],
    f"{CL}.compute_msr_banzhaf_semivalues": _compute("compute_msr_banzhaf_semivalues", done=CP_STOP),
    f"{CL}.compute_beta_shapley_semivalues": [
        *_compute("compute_beta_shapley_semivalues", done=CP_STOP),
        Case("alpha", bad_positive_real, _kw(fn(CL, "compute_beta_shapley_semivalues"), CP_OLD_UTILITY,
                                             done=CP_STOP, alpha=...))],
    f"{CL}.compute_shapley_values": [
        *_compute("compute_shapley_values", done=CP_STOP),
        Case("mode", st.one_of(text, st.integers(0, 2)), _kw(fn(CL, "compute_shapley_values"), CP_OLD_UTILITY,
                                                             done=CP_STOP, mode=...))],
    f"{CL}.compute_least_core_values": [
        *_compute("compute_least_core_values", n_iterations=4),
        Case("mode", st.one_of(text, st.integers(0, 2)), _kw(fn(CL, "compute_least_core_values"), CP_OLD_UTILITY,
                                                             mode=...))],
    # -- batched models
    f"{M}.LogisticRegression": [
        Case("C", bad_positive_real, lambda v, t: _mod(M).LogisticRegression(C=v).fit(_x, _y)),
        Case("max_iter", bad_int, lambda v, t: _mod(M).LogisticRegression(max_iter=v).fit(_x, _y)),
        Case("tol", bad_positive_real, lambda v, t: _mod(M).LogisticRegression(tol=v).fit(_x, _y)),
    ],
    f"{M}.Ridge": [Case("alpha", bad_non_negative_real, lambda v, t: _mod(M).Ridge(alpha=v).fit(_x, _y_cont)),
                   Case("fit_intercept", bad_bool, lambda v, t: _mod(M).Ridge(fit_intercept=v).fit(_x, _y_cont))],
    f"{M}.check_batchable": [Case("model", bad_object, _kw(fn(M, "check_batchable"), ...))],
    f"{M}.batch_spec": [Case("model", st.one_of(st.just(_mod(M).LogisticRegression), st.just(_mod(M).Ridge)),
                             _kw(fn(M, "batch_spec"), ...))],
    f"{M}.BatchSpec": [Case("estimator", bad_object, _kw(fn(M, "BatchSpec"), ..., False))],
    f"{M}.LinearFit": [Case("coef", st.one_of(st.none(), text), _kw(fn(M, "LinearFit"), ..., np.zeros(1),
                                                                   np.zeros((1, 3)), np.ones(1, bool), 1))],
    f"{M}.fit_logistic": [
        Case("x", bad_rows, _kw(fn(M, "fit_logistic"), ..., _y, np.ones((1, 12)), n_classes=2, C=1.0,
                                 fit_intercept=True)),
        Case("C", bad_positive_real, _kw(fn(M, "fit_logistic"), _x, _y, np.ones((1, 12)), n_classes=2, C=...,
                                         fit_intercept=True)),
    ],
    f"{M}.fit_ridge": [
        Case("x", bad_rows, _kw(fn(M, "fit_ridge"), ..., _y_cont, np.ones((1, 12)), alpha=1.0,
                                 fit_intercept=True)),
        Case("alpha", bad_non_negative_real, _kw(fn(M, "fit_ridge"), _x, _y_cont, np.ones((1, 12)), alpha=...,
                                                 fit_intercept=True)),
    ],
    f"{M}.LinearRegression": [
        Case("fit_intercept", bad_bool, lambda v, t: _mod(M).LinearRegression(fit_intercept=v).fit(_x, _y_cont)),
        Case("tol", bad_non_negative_real, lambda v, t: _mod(M).LinearRegression(tol=v).fit(_x, _y_cont)),
    ],
    f"{M}.fit_least_squares": [
        Case("x", bad_rows, _kw(fn(M, "fit_least_squares"), ..., _y_cont, np.ones((1, 12)), fit_intercept=True)),
    ],
    f"{M}.to_batched": [Case("model", bad_object, _kw(fn(M, "to_batched"), ...),
                             named=r"no batched equivalent for")],
    f"{M}.batch_device": [Case("dvl_dask.models.device", st.one_of(st.sampled_from(["cuda", "mps", ""]),
                                                                    st.integers(0, 2), st.none()),
                               lambda v, t: _device_set(v))],
    f"{M}.standardize": [Case("x", bad_rows, _kw(fn(M, "standardize"), ..., np.ones((1, 12))))],
    f"{M}.vector_metric": [Case("name", st.one_of(st.integers(0, 3), st.none()), _kw(fn(M, "vector_metric"), ...,
                                                                                     True))],
    # -- threads
    "dvl_dask.threads.uses_torch_threads": [Case("fn", bad_callable, _kw(fn("dvl_dask.threads",
                                                                            "uses_torch_threads"), ...))],
    "dvl_dask.threads.side_by_side": [
        Case("fns", bad_callable, _kw(fn("dvl_dask.threads", "side_by_side"), ...)),
        Case("threads", bad_int_or_none, _kw(fn("dvl_dask.threads", "side_by_side"), lambda: 1, threads=...)),
    ],
    "dvl_dask.threads.intra_op_threads": [Case("n", bad_int, _kw(fn("dvl_dask.threads", "intra_op_threads"), ...))],
    # -- valuation (native)
    f"{V}.delta_shapley": [
        Case("utility", bad_object, _kw(fn(V, "delta_shapley"), ..., lower_bound=1, upper_bound=2, n_samples=4)),
        Case("lower_bound", bad_non_negative_int, _kw(fn(V, "delta_shapley"), GAME, lower_bound=..., upper_bound=2,
                                                     n_samples=4)),
        Case("upper_bound", bad_int, _kw(fn(V, "delta_shapley"), GAME, lower_bound=1, upper_bound=...,
                                         n_samples=4)),
        Case("n_samples", bad_int, _kw(fn(V, "delta_shapley"), GAME, lower_bound=1, upper_bound=2, n_samples=...)),
        Case("sample_sizes", bad_object_not_none, _kw(fn(V, "delta_shapley"), GAME, lower_bound=1, upper_bound=2,
                                                      sample_sizes=...)),
    ],
    f"{V}.two_d_shapley": [
        Case("utility", bad_object, _kw(fn(V, "two_d_shapley"), ..., n_permutations=2)),
        Case("n_permutations", bad_int, _kw(fn(V, "two_d_shapley"), _Lazy(lambda: feature_utility()),
                                            n_permutations=...)),
    ],
    f"{V}.exact_two_d_shapley": [
        Case("utility", bad_object, _kw(fn(V, "exact_two_d_shapley"), ...)),
        Case("block_size", bad_int, _kw(fn(V, "exact_two_d_shapley"), _Lazy(lambda: feature_utility()),
                                        block_size=...)),
    ],
    f"{V}.FeatureSubsetUtility": [Case("utility", bad_object, _kw(fn(V, "FeatureSubsetUtility"), ...))],
    f"{V}.DeviationTruncation": [Case("burn_in_fraction", bad_fraction, _kw(fn(V, "DeviationTruncation"), ...)),
                                 Case("sigmas", bad_positive_real, _kw(fn(V, "DeviationTruncation"), 0.2,
                                                                       sigmas=...))],
    f"{V}.PowerLawSampleSize": [Case("exponent", st.one_of(st.just(math.nan), not_number),
                                     _kw(fn(V, "PowerLawSampleSize"), ...))],
    f"{V}.DeltaShapleySampleSize": [
        Case("max_loss", bad_positive_real, _kw(fn(V, "DeltaShapleySampleSize"), max_loss=..., lipschitz_loss=1.0,
                                                lipschitz_grad=1.0, lr_factor=0.1, n_sgd_iter=10)),
        Case("n_sgd_iter", bad_int, _kw(fn(V, "DeltaShapleySampleSize"), max_loss=1.0, lipschitz_loss=1.0,
                                        lipschitz_grad=1.0, lr_factor=0.1, n_sgd_iter=...)),
    ],
}


@functools.cache
def feature_utility():
    return _mod(V).FeatureSubsetUtility(utility())


CASES.update(NEW_CASES)


#: Public callables whose malformed inputs still end in a raw error or are accepted (issue 25, left open):
#: the coverage test lists them; their cases are skipped with the reason until they are fixed. Empty since
#: wave 5: the 42 building blocks listed here (chunks, keys, cache records, stores, testing helpers) now
#: refuse bad input with a DvlDaskError naming the argument.
KNOWN_GAPS: dict[str, str] = {}


#: Public callables without inputs a user could get wrong, and why.
EXEMPT: dict[str, str] = {
    **{f"dvl_dask.errors.{n}": "an exception or warning class" for n in _mod("dvl_dask.errors").__all__},
    f"{V}.LeastCoreError": "an exception class",
    "dvl_dask.typing.UtilityLike": "a typing Protocol (never called)",
    f"{C}.CacheBackend": "abstract base: its subclasses are covered",
    f"{C}.InMemoryCacheBackend": "takes no arguments",
    "dvl_dask.cache.conformance.CacheBackendTests": "a pytest mixin for backend authors (no arguments)",
    "dvl_dask.cache.conformance.SignedCacheBackendTests": "a pytest mixin for backend authors (no arguments)",
    "dvl_dask.cache.conformance.Unpicklable": "a test object that any tag makes (every input is valid)",
    f"{CH}.ChunkMapper": "a Protocol",
    f"{CH}.BlockSink": "a Protocol",
    f"{CH}.DaskMapper": "takes no arguments",
    "dvl_dask.models.available_devices": "takes no arguments",
    **{f"{CH}.{n}": "an aggregator: takes no arguments" for n in (
        "SequenceAggregator", "NestedSequenceAggregator", "ListAggregator", "NestedListAggregator",
        "NumpyCatAggregator", "NestedNumpyCatAggregator", "MinMaxAggregator", "NestedMinMaxAggregator")},
    f"{T}.TorchCatAggregator": "an aggregator: takes no arguments",
    f"{T}.NestedTorchCatAggregator": "an aggregator: takes no arguments",
    f"{T}.Preconditioner": "abstract base: its subclasses are covered",
    "dvl_dask.influence.InfluenceFunctionModel": "abstract base: the torch models are covered",
    "dvl_dask.influence.DisableClientSingleThreadCheck": "a marker class (no arguments)",
    f"{V}.StoppingCriterion": "abstract base: the criteria are covered",
    f"{V}.AntitheticSampler": "takes no arguments",
    f"{V}.UniformSampler": "takes no arguments",
    f"{V}.NoTruncation": "takes no arguments",
    f"{U}.squashed_r2": "takes no arguments",
    f"{U}.squashed_variance": "takes no arguments",
    f"{U}.scorer_task": "total: any object has a task or None",
    f"{U}.sklearn_scorer_range": "total: any object has a range or None",
    f"{K}.current_call": "takes no arguments",
    f"{K}.describe_parameters": "total: describes any object",
    f"{K}.fingerprint": "total: hashes any object",
    f"{K}.graph_token": "total: hashes any object",
    f"{K}.object_token": "total: hashes any object",
    f"{K}.instance_token": "total: hashes any object",
    f"{K}.model_token": "total: hashes any object (TokenizationError for what cannot be hashed: test_tokenizer.py)",
    "dvl_dask.validation.describe_coalition": "total: describes any object (for messages)",
    "dvl_dask.validation.describe_point": "total: describes any index (for messages)",
    "dvl_dask.validation.is_dask_array": "total: a predicate",
    "dvl_dask.validation.unknown_keyword_error": "builds an error (for messages)",
    "dvl_dask.testing.servers.MemcachedServer": "a record of a started server (made by start_memcached)",
    "dvl_dask.threads.blas_limits": "takes no arguments",
    "dvl_dask.preload.preload_modules": "takes no arguments",
    "dvl_dask.cli.main": "covered by the CLI fuzz test (every command)",
    **{f"dvl_dask.compat.pydvl.valuation.{n}": "a record of pyDVL's arguments: any are kept, the sampler given it "
       "decides (pyDVL's index and size iterations)" for n in (
        "SequentialIndexIteration", "RandomIndexIteration", "NoIndexIteration", "FiniteSequentialSizeIteration",
        "RandomSizeIteration", "RoundRobinSizeIteration")},
    "dvl_dask.compat.pydvl.valuation.NoTruncation": "takes no arguments",
    "dvl_dask.compat.pydvl.valuation.TruncationPolicy": "abstract base: the policies are covered",
    "dvl_dask.compat.pydvl.valuation.StoppingCriterion": "abstract base: the criteria are covered",
    "dvl_dask.compat.pydvl.valuation.Valuation": "abstract base: the valuations are covered",
    "dvl_dask.compat.pydvl.valuation.Status": "an enum of results (never built from user input)",
    "dvl_dask.compat.pydvl.value.ShapleyMode": "an enum: compute_shapley_values(mode=) refuses a bad mode (covered)",
    "dvl_dask.threads.torch_thread_budget": "takes no arguments",
    "dvl_dask.threads.torch_threads": "takes no arguments",
    "dvl_dask.threads.manages_torch_threads": "takes no arguments",
    f"{V}.ConstantSampleSize": "takes no arguments",
    f"{V}.HarmonicSampleSize": "takes no arguments",
    f"{V}.SampleSizeStrategy": "abstract base: the strategies are covered",
    f"{V}.StratifiedPermutationSampler": "takes no arguments",
    f"{V}.VRDSSampler": "takes no arguments",
}


def public_modules() -> list[str]:
    """``dvl_dask`` and every submodule without a leading underscore in its path."""
    names = ["dvl_dask"]
    for info in pkgutil.walk_packages(dvl_dask.__path__, "dvl_dask."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def public_callables() -> dict[str, list[str]]:
    """Each distinct public function or class (by identity) -> every public name it has (``module.name``)."""
    found: dict[int, list[str]] = {}
    objects: dict[int, Any] = {}
    for module_name in public_modules():
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # an optional dependency is missing: its module is not public here
            continue
        for attr in getattr(module, "__all__", ()):
            obj = getattr(module, attr, None)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                found.setdefault(id(obj), []).append(f"{module_name}.{attr}")
                objects[id(obj)] = obj
    return {names[0]: names for names in found.values()}
