"""Graph keys come from the whole bound call of a lazy method (issue 23, part B).

A dask graph computing two results whose tasks share a key silently keeps only
one of them. Before the fix, layer names were assembled from hand-picked
parameters that left the budget out: ``permutation_shapley`` with 20, 80 and
320 permutations computed together returned the 320 run three times (attrs
still said 20/80/320). These tests compute such results together and walk
every public lazy method's signature: changing any one argument must change
every key the method names, and equal calls must give equal keys.
"""

from __future__ import annotations

import inspect
import threading

import dask
import numpy as np
import pytest
import xarray as xr
from dask.base import tokenize
from dask.core import flatten
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.neighbors import KNeighborsClassifier

import dvl_dask.evaluation as evaluation
import dvl_dask.valuation as valuation
from dvl_dask import Dataset, Utility, config
from dvl_dask.errors import InvalidParameterError
from dvl_dask.testing.games import AirportGame, WeightedVotingGame
from dvl_dask.valuation import (
    PowerLawSampleSize,
    banzhaf,
    banzhaf_coefficient,
    classwise_shapley,
    data_oob,
    exact_shapley,
    group_testing_shapley,
    msr_banzhaf,
    permutation_shapley,
    shapley_coefficient,
)

GAME = AirportGame([1.0, 2.0, 2.5, 4.0, 5.0])
OTHER_GAME = AirportGame([1.0, 2.0, 2.5, 4.0, 6.0])


class NearestMeanClassifier(ClassifierMixin, BaseEstimator):
    """A very cheap classifier: predicts the class whose training mean (of feature 0) is nearest."""

    def __init__(self, shift: float = 0.0) -> None:
        self.shift = shift

    def fit(self, x, y):
        self.classes_ = np.unique(y)
        self.means_ = np.array([x[y == c, 0].mean() for c in self.classes_]) + self.shift
        return self

    def predict(self, x):
        return self.classes_[np.abs(x[:, :1] - self.means_[None, :]).argmin(axis=1)]


X = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]])
Y = np.array([0, 0, 1, 0, 1, 1])
DATA = Dataset(X, Y, X, Y)
OTHER_DATA = Dataset(X, np.array([0, 1, 1, 0, 1, 0]), X, Y)
UTILITY = Utility(NearestMeanClassifier(), DATA, "accuracy")
OTHER_UTILITY = Utility(NearestMeanClassifier(shift=0.5), DATA, "accuracy")


class BlockSum:
    """A 2D utility for 2D-Shapley: u(rows, features) = (sum of the block's cells) ** 2."""

    def __init__(self, cells) -> None:
        self.cells = np.asarray(cells, dtype=float)
        self.n_rows, self.n_features = self.cells.shape
        self.token = "block-sum-" + self.cells.tobytes().hex()

    def __call__(self, rows, features) -> float:
        return float(self.cells[np.ix_(np.asarray(rows, int), np.asarray(features, int))].sum()) ** 2


TWO_D = BlockSum([[1.0, 2.0], [3.0, -1.0], [0.5, 0.0]])
OTHER_TWO_D = BlockSum([[1.0, 2.0], [3.0, -1.0], [0.5, 1.0]])


def _keys(ds: xr.Dataset) -> dict:
    return dict(ds.__dask_graph__())


def _output_keys(ds: xr.Dataset) -> set:
    return set(flatten(ds.__dask_keys__()))


def _task_token(task) -> str | None:
    try:
        return tokenize(task, ensure_deterministic=True)
    except Exception:  # dask cannot hash it: it cannot vouch that two tasks are the same
        return None


def _assert_no_shared_computation(a: xr.Dataset, b: xr.Dataset, what: str) -> None:
    """Different calls: different output keys, and every key the two graphs share names the same task.

    Dask's own content hash of each task is the oracle: a shared key whose tasks differ is the bug
    (one of the two computations silently replaced by the other when computed together).
    """
    assert not _output_keys(a) & _output_keys(b), f"{what}: the results share output keys"
    ga, gb = _keys(a), _keys(b)
    clashes = [
        k for k in ga.keys() & gb.keys() if _task_token(ga[k]) is None or _task_token(ga[k]) != _task_token(gb[k])
    ]
    assert not clashes, f"{what}: keys {sorted(map(str, clashes))[:4]} name different tasks in the two graphs"


# -- the issue's cases: budgets computed together ---------------------------------------------------------

BUDGETS = (20, 80, 320)
BUDGET_CASES = {
    "permutation_shapley": (lambda k: permutation_shapley(GAME, n_permutations=k, seed=0), lambda k: k),
    "banzhaf": (lambda k: banzhaf(GAME, n_samples=k, seed=0), lambda k: k),
    "msr_banzhaf": (lambda k: msr_banzhaf(GAME, n_samples=k, seed=0), lambda k: k),
    "group_testing_shapley": (lambda k: group_testing_shapley(GAME, n_samples=k, seed=0), lambda k: k),
    # each of the 2 classes gets half the permutations; each point one marginal per permutation of its class
    "classwise_shapley": (lambda k: classwise_shapley(UTILITY, k, seed=0), lambda k: k // 2),
    # a point is out of bag of some of the k models: at most k
    "data_oob": (lambda k: data_oob(UTILITY, n_estimators=k, seed=0), None),
}


@pytest.mark.parametrize("name", sorted(BUDGET_CASES))
def test_budgets_computed_together_keep_their_own_results(name):
    build, expected_count = BUDGET_CASES[name]
    together = dask.compute(*[build(k) for k in BUDGETS], scheduler="sync")
    alone = [build(k).compute(scheduler="sync") for k in BUDGETS]
    for k, joint, single in zip(BUDGETS, together, alone):
        counts = joint["counts"].values
        if expected_count is None:
            assert counts.max() <= k
        else:
            np.testing.assert_array_equal(counts, expected_count(k))
        xr.testing.assert_identical(joint, single)
    assert together[-1]["counts"].values.sum() > together[0]["counts"].values.sum()
    for (ka, a), (kb, b) in [((20, together[0]), (80, together[1])), ((80, together[1]), (320, together[2]))]:
        assert not np.array_equal(a["value"].values, b["value"].values), f"budgets {ka} and {kb} gave equal values"


def test_budgets_concatenated_in_one_compute():
    """The convergence study of the issue: ``xr.concat(...).compute()``."""
    study = xr.concat([permutation_shapley(GAME, n_permutations=k, seed=0) for k in BUDGETS], dim="budget")
    study = study.compute(scheduler="sync")
    assert study["counts"].max(dim="sample").values.tolist() == list(BUDGETS)
    for i, k in enumerate(BUDGETS):
        alone = permutation_shapley(GAME, n_permutations=k, seed=0).compute(scheduler="sync")
        np.testing.assert_array_equal(study["value"].values[i], alone["value"].values)


def test_config_options_in_effect_are_part_of_the_call():
    """``block_size=None`` resolves to an option at call time: two layouts computed together stay apart."""
    with dask.config.set({config.EXACT_SUBSETS_PER_BLOCK: 4}):
        small = exact_shapley(WeightedVotingGame([1, 2, 3, 4], quota=6))
    with dask.config.set({config.EXACT_SUBSETS_PER_BLOCK: 16}):
        large = exact_shapley(WeightedVotingGame([1, 2, 3, 4], quota=6))
    _assert_no_shared_computation(small, large, "exact_shapley under two block sizes")
    both = dask.compute(small, large, scheduler="sync")
    exact = WeightedVotingGame([1, 2, 3, 4], quota=6).shapley_values()
    for ds in both:
        np.testing.assert_allclose(ds["value"].values, exact)


# -- every public lazy method: any argument changes the keys ---------------------------------------------


def _values_of(game):
    return exact_shapley(game).compute(scheduler="sync")


VALUES = _values_of(GAME)
OTHER_VALUES = VALUES.assign(value=("sample", VALUES["value"].values[::-1] + 0.25))


def _point_score(y_true, y_pred):
    return (y_true == y_pred).astype(float)


#: Public functions that build no graph (eager, or helpers), with the reason.
NOT_LAZY = {
    "run_until_converged": "eager loop (its block keys are tested below)",
    "checkpoint_history": "eager: reads a checkpoint",
    "load_checkpoint": "eager: reads a checkpoint",
    "banzhaf_coefficient": "a coefficient function",
    "beta_coefficient": "a coefficient factory",
    "shapley_coefficient": "a coefficient function",
    "shapley_weights": "numpy weights",
    "group_testing_sample_size": "a number",
    "detection_scores": "eager metric",
    "flip_labels": "eager data corruption",
    "rank_stability": "eager metric",
    "top_k_overlap": "eager metric",
    "weighted_accuracy_drop": "eager metric",
}

#: Base calls: positional arguments and keyword arguments of a small valid call.
BASE_CALLS = {
    "permutation_shapley": ((UTILITY,), {"n_permutations": 20, "seed": 0}),
    "semivalue": ((GAME, shapley_coefficient), {"n_samples": 20, "seed": 0}),
    "banzhaf": ((GAME,), {"n_samples": 20, "seed": 0}),
    "msr_banzhaf": ((GAME,), {"n_samples": 20, "seed": 0}),
    "beta_shapley": ((GAME,), {"alpha": 1.0, "beta": 1.0, "n_samples": 20, "seed": 0}),
    "owen_shapley": ((GAME,), {"n_samples": 20, "seed": 0}),
    "delta_shapley": ((GAME,), {"lower_bound": 1, "upper_bound": 3, "n_samples": 20, "seed": 0}),
    "exact_shapley": ((GAME,), {}),
    "exact_two_d_shapley": ((TWO_D,), {}),
    "two_d_shapley": ((TWO_D,), {"n_permutations": 20, "seed": 0}),
    "loo": ((GAME,), {}),
    "knn_shapley": ((DATA, KNeighborsClassifier(n_neighbors=1)), {}),
    "data_oob": ((UTILITY,), {"n_estimators": 20, "seed": 0}),
    "classwise_shapley": ((UTILITY, 20), {"seed": 0}),
    "group_testing_shapley": ((GAME, 40), {"seed": 0}),
    "exact_least_core": ((GAME,), {}),
    "montecarlo_least_core": ((GAME, 20), {"seed": 0}),
    "point_removal_curve": ((VALUES, GAME), {"fractions": [0.0, 0.2, 0.4], "n_random": 2, "seed": 0}),
    "point_addition_curve": ((VALUES, GAME), {"fractions": [0.0, 0.6, 1.0], "n_random": 2, "seed": 0}),
}

#: Another valid value per parameter name; (method, name) entries win. A dict changes several
#: arguments at once (when one only makes sense with another); REFUSED: the value raises.
REFUSED = object()
ALTERNATIVES = {
    "utility": OTHER_GAME,
    "n_permutations": 21,
    "n_samples": 21,
    "n_estimators": 21,
    "seed": 1,
    "truncation": 0.05,
    "antithetic": True,
    "warm_start": True,
    "items_per_block": 3,
    "sampler": "antithetic",
    "coefficient": banzhaf_coefficient,
    "alpha": 4.0,
    "beta": 2.0,
    "n_q": 4,
    "block_size": 3,
    "non_negative_subsidy": True,
    "n_bootstrap": 3,
    "max_samples": 0.5,
    "point_score": _point_score,
    "estimators_per_block": 3,
    "samples_per_block": 3,
    "delta": 0.1,
    "utility_range": (-100.0, 100.0),
    "data": OTHER_DATA,
    "model": KNeighborsClassifier(n_neighbors=2),
    "test_chunk_size": 2,
    "train_chunk_size": 2,
    "max_block_bytes": 64,
    "values": OTHER_VALUES,
    "fractions": [0.0, 0.2],
    "orders": ("highest", "random"),
    "n_random": 3,
    "lower_bound": 0,
    "upper_bound": 2,
    "sample_sizes": PowerLawSampleSize(-2.0),
    "normalize_values": True,
    ("permutation_shapley", "utility"): OTHER_UTILITY,
    ("data_oob", "utility"): OTHER_UTILITY,
    ("classwise_shapley", "utility"): Utility(NearestMeanClassifier(), OTHER_DATA, "accuracy"),
    ("classwise_shapley", "n_samples"): 22,
    ("group_testing_shapley", "n_samples"): 41,
    ("group_testing_shapley", "epsilon"): {"n_samples": None, "epsilon": 3.0},
    ("beta_shapley", "sampler"): "uniform",
    ("exact_two_d_shapley", "utility"): OTHER_TWO_D,
    ("two_d_shapley", "utility"): OTHER_TWO_D,
    ("msr_banzhaf", "antithetic"): REFUSED,
}


def _public_functions():
    for module in (valuation, evaluation):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj):
                yield name, obj


def test_every_public_function_is_classified():
    unknown = [name for name, _ in _public_functions() if name not in BASE_CALLS and name not in NOT_LAZY]
    assert not unknown, f"new public functions {unknown}: add a base call to BASE_CALLS (or a reason to NOT_LAZY)"
    assert set(BASE_CALLS) <= {name for name, _ in _public_functions()}


def _changes(method: str, parameter: str):
    if (method, parameter) in ALTERNATIVES:
        return ALTERNATIVES[(method, parameter)]
    if parameter in ALTERNATIVES:
        return ALTERNATIVES[parameter]
    pytest.fail(f"{method}: parameter {parameter!r} has no alternative value in ALTERNATIVES; add one")


def _call(func, args, kwargs):
    """Call with every argument by keyword where possible (so any one can be replaced)."""
    return func(*args, **kwargs)


def _as_keywords(func, args, kwargs) -> dict:
    bound = inspect.signature(func).bind(*args, **kwargs)
    return dict(bound.arguments)


def _cases():
    for name, func in _public_functions():
        if name in BASE_CALLS:
            for parameter in inspect.signature(func).parameters:
                yield name, parameter


@pytest.mark.parametrize(("name", "parameter"), list(_cases()), ids=lambda v: str(v))
def test_changing_any_argument_changes_every_key(name, parameter):
    func = getattr(valuation, name, None) or getattr(evaluation, name)
    args, kwargs = BASE_CALLS[name]
    base = _as_keywords(func, args, kwargs)
    change = _changes(name, parameter)
    if change is REFUSED:
        with pytest.raises(InvalidParameterError):
            func(**{**base, parameter: True})
        return
    changed = {**base, **(change if isinstance(change, dict) else {parameter: change})}
    with dask.config.set(scheduler="sync"):
        a, again, b = func(**base), func(**base), func(**changed)
    assert set(_keys(a)) == set(_keys(again)), f"{name}: equal calls gave different keys"
    _assert_no_shared_computation(a, b, f"{name}({parameter}=...)")


@pytest.mark.parametrize("name", sorted(BASE_CALLS))
def test_equal_calls_spelled_differently_share_keys(name):
    """Positional or keyword, explicit default or omitted, an int seed or its SeedSequence: one key."""
    func = getattr(valuation, name, None) or getattr(evaluation, name)
    args, kwargs = BASE_CALLS[name]
    explicit = {
        p.name: p.default for p in inspect.signature(func).parameters.values() if p.default is not p.empty
    }
    spelled = {**explicit, **_as_keywords(func, args, kwargs)}
    if "seed" in spelled:
        spelled["seed"] = np.random.SeedSequence(spelled["seed"])
    assert set(_keys(func(*args, **kwargs))) == set(_keys(func(**spelled)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=st.tuples(st.integers(1, 400), st.integers(0, 2**32)),
    second=st.tuples(st.integers(1, 400), st.integers(0, 2**32)),
    method=st.sampled_from(["permutation_shapley", "banzhaf", "msr_banzhaf", "owen_shapley"]),
)
def test_budget_and_seed_keys_are_equal_exactly_when_the_calls_are(first, second, method):
    func = getattr(valuation, method)
    budget = "n_permutations" if method == "permutation_shapley" else "n_samples"
    a = func(GAME, **{budget: first[0]}, seed=first[1])
    b = func(GAME, **{budget: second[0]}, seed=second[1])
    if first == second:
        assert set(_keys(a)) == set(_keys(b))
    else:
        _assert_no_shared_computation(a, b, f"{method} {first} vs {second}")


def test_seed_none_draws_fresh_keys_and_records_the_seed_it_keyed():
    a = permutation_shapley(GAME, n_permutations=20)
    b = permutation_shapley(GAME, n_permutations=20)
    _assert_no_shared_computation(a, b, "two seed=None calls")
    # The key was made from the entropy the method used and recorded: replaying it gives the same graph.
    replay = permutation_shapley(GAME, n_permutations=20, seed=int(a.attrs["seed"]))
    assert set(_keys(replay)) == set(_keys(a))


def test_a_utility_that_cannot_be_hashed_gets_keys_of_its_own():
    class LockedGame:
        """A utility holding a lock: no deterministic hash, so no de-duplication, but never a collision."""

        returns_finite_scores = True

        def __init__(self, scale):
            self.scale, self.n_players, self.token = scale, 3, f"locked-{id(self)}"
            self.data_names = np.arange(3)
            self.lock = threading.Lock()

        def __call__(self, indices):
            return self.scale * len(indices)

    one, two = LockedGame(1.0), LockedGame(1.0)
    a, again, b = exact_shapley(one), exact_shapley(one), exact_shapley(two)
    assert set(_keys(a)) == set(_keys(again))  # the same object: its remembered token
    assert not _output_keys(a) & _output_keys(b)  # another object, though equal: keys of its own
    np.testing.assert_allclose(a["value"].compute(scheduler="sync").values, 1.0)


def test_run_until_converged_resume_refuses_other_options(tmp_path):
    """The checkpoint identity covers every option of the method (bound, defaults applied)."""
    from dvl_dask.errors import CheckpointMismatchError
    from dvl_dask.valuation import MaxUpdates, run_until_converged

    url = str(tmp_path / "run.zarr")
    run_until_converged("permutation_shapley", GAME, stop=MaxUpdates(2), seed=0, items_per_block=2,
                        checkpoint=url, progress=False)
    # Driver-only arguments and an explicit default do not change the numbers: resuming is accepted.
    resumed = run_until_converged("permutation_shapley", GAME, stop=MaxUpdates(3), seed=0, items_per_block=2,
                                  checkpoint=url, progress=False, window=1, truncation=None)
    assert resumed.attrs["n_blocks"] >= 2
    with pytest.raises(CheckpointMismatchError, match="antithetic"):
        run_until_converged("permutation_shapley", GAME, stop=MaxUpdates(3), seed=0, items_per_block=2,
                            checkpoint=url, progress=False, antithetic=True)


def test_lazy_method_contract():
    from dvl_dask.keys import call_key, current_call, lazy_method

    with pytest.raises(RuntimeError, match="lazy_method"):
        current_call()  # outside a lazy method there is no call to name tasks from
    with pytest.raises(InvalidParameterError, match="exclude"):
        lazy_method(exclude=("nope",))(lambda x: x)

    @lazy_method(exclude=("progress",))
    def method(n, *, progress=False, seed=None):
        return current_call()

    call = method(2, seed=5)
    assert call.arguments["seed"].entropy == 5 and call.arguments["n"] == 2
    assert method(2, seed=5, progress=True).token == call.token  # excluded: never changes a result
    # call_key names the same call without running it: block names end with its token
    ds = permutation_shapley(GAME, n_permutations=20, seed=0)
    token = call_key(permutation_shapley, (GAME,), {"n_permutations": 20, "seed": 0}).rsplit("-", 1)[1]
    assert any(str(k).startswith("permutation-shapley-block-" + token) for k in _keys(ds))
