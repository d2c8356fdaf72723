"""dvl_dask.compat.pydvl: pyDVL's splits, datasets, results, scheduler translation and refusals."""

from __future__ import annotations

import dataclasses

import dask
import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris, make_classification
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier

from dvl_dask import Dataset as NativeDataset
from dvl_dask import Utility
from dvl_dask import valuation as native
from dvl_dask.compat.pydvl import utils as old
from dvl_dask.compat.pydvl import valuation as pv
from dvl_dask.compat.pydvl import value as old_value
from dvl_dask.compat.pydvl.valuation._methods import joblib_scheduler
from dvl_dask.errors import CompatNotSupportedError

X, Y = make_classification(n_samples=40, n_features=3, n_informative=2, n_redundant=0, random_state=1)


# -- splits: pyDVL 0.10 calls train_test_split(X, y, train_size=, random_state=, stratify=y or None) ----------
@pytest.mark.parametrize("train_size", [0.7, 12])
@pytest.mark.parametrize("stratify", [False, True])
def test_from_arrays_splits_as_pydvl(train_size: float, stratify: bool) -> None:
    x_tr, x_te, y_tr, y_te = train_test_split(
        X, Y, train_size=train_size, random_state=7, stratify=Y if stratify else None
    )
    train, test = pv.Dataset.from_arrays(X, Y, train_size=train_size, random_state=7, stratify_by_target=stratify)
    np.testing.assert_array_equal(train.data().x, x_tr)  # same rows, same (shuffled) order
    np.testing.assert_array_equal(train.data().y, y_tr)
    np.testing.assert_array_equal(test.data().x, x_te)
    np.testing.assert_array_equal(test.data().y, y_te)


def test_from_sklearn_splits_as_pydvl_and_keeps_names() -> None:
    iris = load_iris()
    x_tr, _, y_tr, _ = train_test_split(iris.data, iris.target, train_size=0.1, random_state=3, stratify=iris.target)
    train, test = pv.Dataset.from_sklearn(iris, train_size=0.1, random_state=3, stratify_by_target=True)
    np.testing.assert_array_equal(train.data().x, x_tr)
    np.testing.assert_array_equal(train.data().y, y_tr)
    assert train.feature_names == list(iris.feature_names) and len(test) == 135
    old_data = old.Dataset.from_sklearn(iris, train_size=0.1, random_state=3, stratify_by_target=True)
    np.testing.assert_array_equal(old_data.x_train, x_tr)  # pyDVL 0.9's one-object Dataset splits the same way


def test_grouped_dataset_indexing_and_data() -> None:
    groups = [0, 1, 0, 2, 1, 2]
    data = pv.GroupedDataset(X[:6], Y[:6], data_groups=groups, group_names=["a", "b", "c"])
    assert len(data) == 3 and data.names.tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(data.data_indices([0, 2]), [0, 2, 3, 5])
    np.testing.assert_array_equal(data.data([1]).x, X[[1, 4]])
    sliced = data[2]
    assert len(sliced) == 1 and sliced.names.tolist() == ["c"] and len(sliced.data()) == 2
    plain = pv.Dataset(X[:4], Y[:4])
    with pytest.raises(ValueError, match="read-only"):
        plain.data().x[0, 0] = 1.0
    assert plain.names.tolist() == ["0", "1", "2", "3"] and plain[1:3].data().x.shape == (2, 3)


def test_grouped_valuation_values_groups_like_native() -> None:
    """Exact Shapley of groups equals brute force over the groups, computed on dvl_dask's grouped utility."""
    train, test = pv.Dataset(X[:8], Y[:8]), pv.Dataset(X[20:], Y[20:])
    grouped = pv.GroupedDataset.from_dataset(train, data_groups=[0, 0, 1, 1, 2, 2, 3, 3])
    utility = pv.ModelUtility(GaussianNB(), pv.SupervisedScorer("accuracy", test, default=0.0))
    sampler = pv.DeterministicUniformSampler()
    with dask.config.set(scheduler="sync"):
        result = pv.ShapleyValuation(utility, sampler, pv.NoStopping(sampler)).fit(grouped).result
    u = Utility(GaussianNB(), NativeDataset(X[:8], Y[:8], X[20:], Y[20:]), "accuracy", default_score=0.0)
    rows = {0: [0, 1], 1: [2, 3], 2: [4, 5], 3: [6, 7]}

    def v(players: tuple[int, ...]) -> float:
        return u(sorted(r for p in players for r in rows[p]))

    # n = 4 groups: Shapley by the permutation formula, every permutation enumerated
    import itertools

    truth = np.zeros(4)
    perms = list(itertools.permutations(range(4)))
    for perm in perms:
        for k, p in enumerate(perm):
            truth[p] += (v(perm[: k + 1]) - v(perm[:k])) / len(perms)
    np.testing.assert_allclose(result.values, truth, atol=1e-12)
    assert result.names.tolist() == ["0", "1", "2", "3"]


# -- results -------------------------------------------------------------------------------------------------
def _tmc(seed: int) -> pv.ValuationResult:
    train, test = pv.Dataset.from_arrays(X, Y, train_size=5, random_state=2)
    utility = pv.ModelUtility(GaussianNB(), pv.SupervisedScorer("accuracy", test, default=0.0))
    valuation = pv.TMCShapleyValuation(utility, is_done=pv.MaxUpdates(4), seed=seed)
    with dask.config.set({"scheduler": "sync", "dvl_dask.valuation.montecarlo.evaluations-per-block": 24}):
        return valuation.fit(train).values()


def test_result_addition_pools_counts_and_status_is_pydvls_enum() -> None:
    a, b = _tmc(1), _tmc(2)
    total = a + b
    np.testing.assert_array_equal(total.counts, a.counts + b.counts)
    # pooled mean: count-weighted mean of the two runs (written here, not the library's merge)
    np.testing.assert_allclose(total.values, (a.values * a.counts + b.values * b.counts) / (a.counts + b.counts))
    assert total.status is pv.Status.Pending and total.status == "pending"  # a budget cap is not convergence
    ordered = total.sort(reverse=True)
    assert list(ordered.values) == sorted(total.values, reverse=True)


def test_values_before_fit_raises() -> None:
    _, test = pv.Dataset.from_arrays(X, Y, train_size=5, random_state=2)
    valuation = pv.LOOValuation(pv.ModelUtility(GaussianNB(), pv.SupervisedScorer("accuracy", test, default=0.0)))
    with pytest.raises(RuntimeError, match="call fit"):
        valuation.values()


# -- scheduler: joblib's n_jobs becomes dask's threads, for the call only ------------------------------------
def test_joblib_n_jobs_becomes_threads_scheduler_for_the_call_only() -> None:
    assert dask.config.get("scheduler", None) is None
    with joblib.parallel_config(n_jobs=3), joblib_scheduler():
        assert dask.config.get("scheduler") == "threads" and dask.config.get("num_workers") == 3
    with joblib.parallel_config(n_jobs=1), joblib_scheduler():
        assert dask.config.get("scheduler") == "sync"
    with dask.config.set(scheduler="processes"), joblib.parallel_config(n_jobs=3), joblib_scheduler():
        assert dask.config.get("scheduler") == "processes"  # an explicit dask choice wins
    with joblib_scheduler():
        assert dask.config.get("scheduler", None) is None  # no joblib setting: dask's default
    assert dask.config.get("scheduler", None) is None and dask.config.get("num_workers", None) is None


def test_fit_under_joblib_parallel_config_gives_the_same_values() -> None:
    train, test = pv.Dataset.from_arrays(X, Y, train_size=5, random_state=2)
    utility = pv.ModelUtility(GaussianNB(), pv.SupervisedScorer("accuracy", test, default=0.0))
    with joblib.parallel_config(n_jobs=2):
        threaded = pv.LOOValuation(utility).fit(train).values()
    with dask.config.set(scheduler="sync"):
        synchronous = pv.LOOValuation(utility).fit(train).values()
    np.testing.assert_array_equal(threaded.values, synchronous.values)


# -- refusals name the dvl_dask way ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: pv.StratifiedPermutationSampler(pv.HarmonicSampleSize(), seed=1), r"sampler='stratified'"),
        (lambda: pv.StratifiedSampler(pv.ConstantSampleSize(lower_bound=1)).native(), "delta_shapley"),
        (lambda: pv.StratifiedSampler(pv.LinearSampleSize(1.0)), "SampleSizeStrategy"),
        (lambda: pv.RelativeTruncation(0.1, burn_in_fraction=0.2), "burn_in_fraction=0.0"),
        (lambda: pv.RankCorrelation(0.1, burn_in=5, fraction=0.5), "ranks all players"),
    ],
)
def test_unsupported_names_raise_naming_the_dvl_dask_way(build: object, match: str) -> None:
    with pytest.raises(NotImplementedError, match=match) as info:
        build()  # type: ignore[operator]
    assert isinstance(info.value, CompatNotSupportedError)


def test_exact_banzhaf_is_refused_at_the_point_of_difference() -> None:
    train, test = pv.Dataset.from_arrays(X, Y, train_size=5, random_state=2)
    plain = pv.ModelUtility(GaussianNB(), pv.SupervisedScorer("accuracy", test, default=0.0))
    exact = pv.BanzhafValuation(plain, pv.DeterministicUniformSampler(), pv.NoStopping())
    with pytest.raises(NotImplementedError, match=r"dvl_dask\.valuation\.banzhaf"):
        exact.fit(train)
    with pytest.raises(NotImplementedError, match="samplers each valuation accepts"):
        pv.ShapleyValuation(plain, pv.LOOSampler(), pv.NoStopping()).fit(train)
    truncated = pv.DeterministicPermutationSampler(truncation=pv.RelativeTruncation(0.1))
    with pytest.raises(ValueError, match="truncation"):
        pv.ShapleyValuation(plain, truncated, pv.NoStopping()).fit(train)
    endless = pv.ShapleyValuation(plain, pv.UniformSampler(seed=1), pv.NoStopping())
    with pytest.raises(NotImplementedError, match="MaxUpdates"):
        endless.fit(train)


def test_no_pending_methods_are_left_and_messages_name_no_issues() -> None:
    assert not hasattr(pv, "PENDING_METHODS")
    assert [way for way in pv.NOT_SUPPORTED.values() if "issue" in way] == []


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (pv.ConstantSampleSize(), "equal"),
        (pv.HarmonicSampleSize(), native.HarmonicSampleSize().parameters()),
        (pv.PowerLawSampleSize(-0.5), native.PowerLawSampleSize(-0.5).parameters()),
    ],
)
def test_sample_size_strategies_map_onto_the_native_ones(strategy: object, expected: object) -> None:
    allocation = pv.StratifiedSampler(strategy, seed=1).native().allocation
    assert (allocation if isinstance(allocation, str) else allocation.parameters()) == expected


def test_vrds_and_deviation_truncation_map_onto_the_native_ones() -> None:
    vrds = pv.VRDSSampler(n_samples_per_index=12, seed=3)
    assert isinstance(vrds.native(), native.VRDSSampler) and vrds.samples_per_index(5) == 12 and vrds.seed == 3
    assert pv.StratifiedSampler(pv.ConstantSampleSize(7)).samples_per_index(5) == 7  # finite index iteration
    endless = pv.StratifiedSampler(pv.ConstantSampleSize(7), index_iteration=pv.RandomIndexIteration)
    assert endless.samples_per_index(5) is None
    assert pv.StratifiedSampler(pv.HarmonicSampleSize()).samples_per_index(5) is None  # only relative sizes
    policy = pv.DeviationTruncation(2.0, 0.25).native()  # pyDVL 0.10's order: sigmas, burn_in_fraction
    assert isinstance(policy, native.DeviationTruncation)
    assert (policy.burn_in_fraction, policy.sigmas) == (0.25, 2.0)


def test_delta_shapley_sgd_sample_size_maps_onto_the_native_bound() -> None:
    config = pv.DeltaShapleyNCSGDConfig(max_loss=1.0, lipschitz_loss=1.0, lipschitz_grad=1.0, lr_factor=1.0,
                                        n_sgd_iter=10, n_val=10, n_train=10, eps=0.5, delta=0.1)
    sampler = pv.StratifiedSampler(pv.DeltaShapleyNCSGDSampleSize(config))
    # Theorem 7 of Watson et al., written out here: q = 1, H_k = (2 * 10)^(1/2) * 2 / max(k - 1, 1)
    h = np.sqrt(20.0) * 2 / np.maximum(np.arange(4) - 1, 1)
    m = np.ceil(2 * np.log(2 * 4 / 0.1) * (2 * h**2 + 2 * h + 4 * 0.5 / 3) / 0.5**2)
    assert sampler.samples_per_index(4) == int(m.sum())  # the strategy prescribes the budget
    with pytest.raises(NotImplementedError, match="theorem7"):
        pv.StratifiedSampler(pv.DeltaShapleyNCSGDSampleSize(dataclasses.replace(config, version="code")))


def test_stopping_translation() -> None:
    sampler = pv.UniformSampler(seed=0)
    assert pv.MaxSamples(sampler, 50).native(10).n_updates == 5  # (player, coalition) pairs: 5 per player
    assert pv.MaxSamples(pv.PermutationSampler(), 50).native(10).n_updates == 50  # permutations
    assert pv.MaxSamples(pv.StratifiedPermutationSampler(), 50).native(10).n_updates == 50
    combined = (pv.MaxUpdates(3) | pv.MaxTime(10)) & ~pv.MinUpdates(1)
    assert isinstance(combined.native(4), native.StoppingCriterion)


# -- older names: pydvl.utils / pydvl.value ------------------------------------------------------------------
def test_old_compute_shapley_values_exact_equals_brute_force() -> None:
    data = old.Dataset.from_arrays(X, Y, train_size=4, random_state=5)
    u = old.Utility(GaussianNB(), data, old.Scorer("accuracy", default=0.0))
    with dask.config.set(scheduler="sync"):
        result = old_value.compute_shapley_values(u, mode="combinatorial_exact")
    import itertools

    truth = np.zeros(4)
    perms = list(itertools.permutations(range(4)))
    for perm in perms:
        for k, p in enumerate(perm):
            truth[p] += (u(list(perm[: k + 1])) - u(list(perm[:k]))) / len(perms)
    np.testing.assert_allclose(result.values, truth, atol=1e-12)


def test_parallel_config_translation_and_ray_refusal() -> None:
    assert old.ParallelConfig(n_cpus_local=4).dask_settings(None) == {"scheduler": "threads", "num_workers": 4}
    assert old.ParallelConfig().dask_settings(1) == {"scheduler": "sync"}
    with pytest.raises(NotImplementedError, match=r"distributed\.Client"):
        old.ParallelConfig(backend="ray")


def test_model_utility_scores_coalitions_like_a_model_fitted_here() -> None:
    train, test = pv.Dataset.from_arrays(X, Y, train_size=6, random_state=2, stratify_by_target=True)
    utility = pv.ModelUtility(GaussianNB(), pv.SupervisedScorer("accuracy", test, default=0.0)).with_dataset(train)
    labels = train.data().y
    coalition = [int(np.flatnonzero(labels == 0)[0]), *np.flatnonzero(labels == 1)[:2].tolist()]
    x, y = train.data(sorted(coalition))
    expected = float(np.mean(GaussianNB().fit(x, y).predict(test.data().x) == test.data().y))
    assert utility(coalition[::-1]) == pytest.approx(expected, abs=1e-12)
    assert utility([]) == 0.0  # pyDVL's default score of the empty coalition
    assert utility(pv.Sample(None, np.array(coalition))) == utility(coalition)  # pyDVL's way to call it
    # dvl_dask's difference (docs/pydvl-names.md): a classifier is not fitted on a single class
    assert utility(np.flatnonzero(labels == 0).tolist()) == 0.0


def test_compose_score_transforms_score_default_and_range() -> None:
    train, test = pv.Dataset.from_arrays(X, Y, train_size=6, random_state=2)
    base = pv.SupervisedScorer("accuracy", test, default=0.0, range=(0.0, 1.0))
    halved = pv.compose_score(base, lambda s: s / 2, "half")  # pyDVL 0.10: the range is transformed too
    assert halved.default == 0.0 and halved.range == (0.0, 0.5) and halved.test_data is test
    full = pv.ModelUtility(GaussianNB(), base).with_dataset(train)
    half = pv.ModelUtility(GaussianNB(), halved).with_dataset(train)
    assert half(range(6)) == pytest.approx(full(range(6)) / 2, abs=1e-12)


def test_old_grouped_dataset_splits_rows_and_groups_as_pydvl() -> None:
    groups = np.arange(40) % 4
    x_tr, _, _, _, g_tr, _ = train_test_split(X, Y, groups, train_size=0.5, random_state=9)
    data = old.GroupedDataset.from_arrays(X, Y, 0.5, 9, data_groups=groups)
    np.testing.assert_array_equal(data.x_train, x_tr)
    np.testing.assert_array_equal(data.data_groups, g_tr)
    assert data.n_players == 4


# -- pyDVL 0.10's positional order (read with inspect.signature from pydvl 0.10.0 in its own venv) -------------
def test_positional_arguments_follow_pydvl_0_10() -> None:
    assert pv.UniformSampler(4, pv.NoIndexIteration, 7).seed == 7  # (batch_size, index_iteration, seed)
    assert pv.UniformSampler(4, pv.NoIndexIteration, 7).index_iteration is pv.NoIndexIteration
    assert pv.AntitheticSampler(4, None, 7).seed == 7
    assert pv.DeterministicUniformSampler(1, pv.NoIndexIteration).index_iteration is pv.NoIndexIteration
    assert pv.MSRSampler(1, 5).seed == 5  # (batch_size, seed)
    owen = pv.OwenSampler(pv.GridOwenStrategy(8), 2, 1, None, 9)  # (outer, n_samples_inner, batch_size, ..., seed)
    assert owen.seed == 9 and owen.n_q == 8
    truncation = pv.DeviationTruncation(2.0)  # (sigmas, burn_in_fraction=0.0)
    assert (truncation.sigmas, truncation.burn_in_fraction) == (2.0, 0.0)
    _train, test = pv.Dataset.from_arrays(X, Y, train_size=6, random_state=2)
    base = pv.SupervisedScorer("accuracy", test, default=0.0, range=(0.0, 1.0))
    negated = pv.compose_score(base, lambda s: -s, "negated")  # (scorer, transformation, name)
    assert negated.range == (-1.0, 0.0)  # the transformed ends, in order
    utility = pv.ModelUtility(GaussianNB(), base)
    assert pv.ExactLeastCoreValuation(utility, False, None, False, 1).utility is utility  # batch_size accepted
    assert pv.MonteCarloLeastCoreValuation(utility, 10, batch_size=2).n_samples == 10
    wrapped = pv.IndicatorUtilityModel(GaussianNB(), 6)
    assert pv.DataUtilityLearning(utility, 5, wrapped).model is wrapped.predictor


def test_delta_shapley_takes_its_bounds_from_pydvls_stratified_sampler() -> None:
    train, test = pv.Dataset.from_arrays(X, Y, train_size=6, random_state=2)
    utility = pv.ModelUtility(GaussianNB(), pv.SupervisedScorer("accuracy", test, default=0.0))
    bounded = pv.StratifiedSampler(pv.ConstantSampleSize(upper_bound=2), index_iteration=pv.RandomIndexIteration,
                                   seed=1)
    valuation = pv.DeltaShapleyValuation(utility, bounded, pv.MaxUpdates(2))
    valuation.fit(train)
    assert valuation.result.to_dataset().attrs["method"] == "delta_shapley"
    assert valuation._method()[1] == {"lower_bound": 0, "upper_bound": 2}  # a missing lower bound is 0
    power = pv.StratifiedSampler(pv.PowerLawSampleSize(-1.0, lower_bound=1), seed=1)
    valuation = pv.DeltaShapleyValuation(utility, power, pv.MaxUpdates(2))
    valuation._n_players = 6
    lower, upper = valuation._method()[1]["lower_bound"], valuation._method()[1]["upper_bound"]
    assert (lower, upper) == (1, 5) and isinstance(valuation._method()[1]["sample_sizes"], native.PowerLawSampleSize)
    with pytest.raises(CompatNotSupportedError, match="StratifiedSampler"):
        pv.DeltaShapleyValuation(utility, pv.PermutationSampler(seed=1), pv.MaxUpdates(2))
    with pytest.raises(CompatNotSupportedError, match="delta_shapley"):
        bounded.native()  # outside Delta-Shapley the bounds would be ignored: refused


# -- malformed arguments are refused in the constructor, naming pyDVL's argument (issue 25) --------------


def _compat_data() -> pv.Dataset:
    x, y = make_classification(n_samples=12, n_features=3, n_informative=2, n_redundant=0, random_state=0)
    return pv.Dataset(x, y)


def _compat_utility() -> pv.ModelUtility:
    from sklearn.linear_model import LogisticRegression

    return pv.ModelUtility(LogisticRegression(), pv.SupervisedScorer("accuracy", _compat_data(), 0.0))


def _old_utility() -> Utility:
    x, y = make_classification(n_samples=12, n_features=3, n_informative=2, n_redundant=0, random_state=0)
    return old.Utility(GaussianNB(), NativeDataset(x[:8], y[:8], x[8:], y[8:]), "accuracy")


BAD_COMPAT_ARGUMENTS = {
    "batch_size": lambda: pv.PermutationSampler(batch_size=0),
    "seed": lambda: pv.UniformSampler(seed="seed"),
    "truncation": lambda: pv.PermutationSampler(truncation=3),
    "n_samples_inner": lambda: pv.OwenSampler(n_samples_inner=0),
    "index_iteration": lambda: pv.StratifiedSampler(index_iteration=5),  # was read as "infinite"
    "n_samples_outer": lambda: pv.GridOwenStrategy(0),
    "n_samples_per_index": lambda: pv.VRDSSampler(-1),
    "n_samples": lambda: pv.ConstantSampleSize(n_samples=0.5),
    "exponent": lambda: pv.PowerLawSampleSize(float("nan")),
    "max_loss": lambda: pv.DeltaShapleyNCSGDConfig(-1.0, 1.0, 1.0, 0.1, 10, 4, 8),
    "config": lambda: pv.DeltaShapleyNCSGDSampleSize(None),
    "fraction": lambda: pv.FixedTruncation(fraction="half"),
    "rtol": lambda: pv.RelativeTruncation(rtol=-0.1),
    "burn_in_fraction": lambda: pv.DeviationTruncation(1.0, burn_in_fraction=float("nan")),
    "n_updates": lambda: pv.MaxUpdates(0),
    "seconds": lambda: pv.MaxTime(float("nan")),
    "threshold": lambda: pv.AbsoluteStandardError("small"),
    "n_steps": lambda: pv.HistoryDeviation(0, 0.1),
    "sampler": lambda: pv.NoStopping(3),
    "utility": lambda: pv.ShapleyValuation(None, pv.PermutationSampler(), pv.MaxUpdates(2)),
    "alpha": lambda: pv.BetaShapleyValuation(_compat_utility(), pv.UniformSampler(), pv.MaxUpdates(2), -1.0, 1.0),
    "non_negative_subsidy": lambda: pv.ExactLeastCoreValuation(_compat_utility(), non_negative_subsidy="yes"),
    "epsilon": lambda: pv.GroupTestingShapleyValuation(_compat_utility(), 4, 0.0),
    "in_class": lambda: pv.ClasswiseSampler(None, pv.PermutationSampler()),
    "test_data": lambda: pv.KNNShapleyValuation(KNeighborsClassifier(), None),
    "training_budget": lambda: pv.DataUtilityLearning(_compat_utility(), 0, GaussianNB()),
    "default": lambda: pv.SupervisedScorer("accuracy", _compat_data(), "high"),
    "catch_errors": lambda: pv.ModelUtility(GaussianNB(), pv.SupervisedScorer("accuracy", _compat_data(), 0.0),
                                            catch_errors="no"),
    "transformation": lambda: pv.compose_score(pv.SupervisedScorer("r2", _compat_data(), 0.0), 3, "s"),
    "idx": lambda: pv.Sample(0.5, np.arange(2)),
    "range": lambda: old.Scorer("accuracy", range="wide"),
    "n_cpus_local": lambda: old.ParallelConfig(n_cpus_local=0),
    "n_jobs": lambda: old_value.compute_loo(_old_utility(), n_jobs=0),
    "mode": lambda: old_value.compute_shapley_values(_old_utility(), mode="tmc"),
}


@pytest.mark.parametrize("argument", sorted(BAD_COMPAT_ARGUMENTS))
def test_compat_constructors_name_the_malformed_argument(argument: str) -> None:
    from dvl_dask.errors import DvlDaskError

    with pytest.raises(DvlDaskError, match=f"'{argument}'"):
        BAD_COMPAT_ARGUMENTS[argument]()


def test_compat_least_core_mode_is_checked_not_read_as_montecarlo() -> None:
    from dvl_dask.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match=r"'mode'.*'exact' or 'montecarlo'"):
        old_value.compute_least_core_values(_old_utility(), mode="exakt", n_iterations=4)
