"""Valuation methods on a batched model (dvl_dask.models) give the values of one fit per coalition."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression as SkLogisticRegression
from sklearn.preprocessing import StandardScaler

from dvl_dask import Dataset, Utility
from dvl_dask.models import LogisticRegression
from dvl_dask.valuation import banzhaf, exact_shapley, loo, msr_banzhaf, permutation_shapley, semivalue
from dvl_dask.valuation._coefficients import shapley_coefficient


def _data(n_train: int, n_test: int = 100, seed: int = 0) -> Dataset:
    x, y = load_breast_cancer(return_X_y=True)
    x = StandardScaler().fit_transform(x)
    order = np.random.default_rng(seed).permutation(len(y))[: n_train + n_test]
    x, y = x[order], y[order]
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


class OneByOne:
    """The same utility without its batch methods: every coalition is one call (one Newton fit)."""

    returns_finite_scores = True

    def __init__(self, utility: Utility) -> None:
        self.utility = utility
        self.token = "one-by-one-" + utility.token
        self.score_range = utility.score_range

    @property
    def n_players(self) -> int:
        return self.utility.n_players

    @property
    def data_names(self) -> np.ndarray:
        return self.utility.data_names

    def __call__(self, indices):
        return self.utility(indices)


def _values(ds) -> np.ndarray:
    return ds.value.compute(scheduler="sync").values


def _brute_force_shapley(u, n: int) -> np.ndarray:
    """Shapley values from the definition: every coalition evaluated once, weights by formula."""
    from math import comb

    scores = {}
    for bits in range(2**n):
        members = [i for i in range(n) if bits >> i & 1]
        scores[bits] = u(np.array(members, dtype=np.int64))
    values = np.zeros(n)
    for i in range(n):
        for bits in range(2**n):
            if not bits >> i & 1:
                size = bin(bits).count("1")
                values[i] += (scores[bits | 1 << i] - scores[bits]) / (n * comb(n - 1, size))
    return values


def _tight_sklearn_utility(data: Dataset, scoring: str, default: float) -> Utility:
    model = SkLogisticRegression(tol=1e-12, max_iter=10_000, solver="newton-cholesky")
    return Utility(model, data, scoring, default_score=default)


def test_exact_shapley_batched_equals_tight_sklearn_small():
    data = _data(6, seed=3)
    batched = Utility(LogisticRegression(), data, "neg_log_loss", default_score=-1.0)
    assert batched.batched
    got = _values(exact_shapley(batched))
    want = _brute_force_shapley(_tight_sklearn_utility(data, "neg_log_loss", -1.0), 6)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.long  # 4,096 scikit-learn fits for the ground truth (30 s in make test): make test-long runs it
def test_exact_shapley_n12_batched_equals_tight_sklearn():
    data = _data(12, seed=4)
    batched = Utility(LogisticRegression(), data, "neg_log_loss", default_score=-1.0)
    got = _values(exact_shapley(batched))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = _brute_force_shapley(_tight_sklearn_utility(data, "neg_log_loss", -1.0), 12)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("truncation", [None, 0.02])
def test_lockstep_permutations_equal_one_fit_per_coalition(truncation):
    u = Utility(LogisticRegression(), _data(20), "accuracy")
    # Same layout (a batched utility gets bigger blocks by default), so the same permutations.
    kwargs = {"n_permutations": 6, "seed": 5, "truncation": truncation, "items_per_block": 3}
    lockstep = _values(permutation_shapley(u, **kwargs))
    single = _values(permutation_shapley(OneByOne(u), **kwargs))
    np.testing.assert_allclose(lockstep, single, atol=1e-12)


def test_subset_methods_batched_equal_one_fit_per_coalition():
    u = Utility(LogisticRegression(), _data(8, n_test=50), "neg_log_loss", default_score=-1.0)
    one = OneByOne(u)
    for method, kwargs in [
        (banzhaf, {"n_samples": 4}),
        (msr_banzhaf, {"n_samples": 16}),
        (semivalue, {"coefficient": shapley_coefficient, "n_samples": 8, "sampler": "stratified"}),
    ]:
        np.testing.assert_allclose(
            _values(method(u, seed=1, items_per_block=4, **kwargs)),
            _values(method(one, seed=1, items_per_block=4, **kwargs)),
            atol=1e-9,
        )
    np.testing.assert_allclose(_values(loo(u)), _values(loo(one)), atol=1e-9)


def test_run_until_converged_with_a_batched_utility_resumes_from_its_checkpoint(tmp_path):
    from dvl_dask.valuation import MaxEvaluations, run_until_converged

    u = Utility(LogisticRegression(), _data(12, n_test=50), "accuracy")
    path = str(tmp_path / "ck.zarr")
    kwargs = {"seed": 2, "checkpoint": path, "progress": False, "items_per_block": 2, "executor": None}
    first = run_until_converged("permutation_shapley", u, stop=MaxEvaluations(60), **kwargs)
    resumed = run_until_converged("permutation_shapley", u, stop=MaxEvaluations(120), **kwargs)
    fresh = run_until_converged("permutation_shapley", OneByOne(u), stop=MaxEvaluations(120), seed=2,
                                progress=False, items_per_block=2)
    assert first.attrs["n_evaluations"] < resumed.attrs["n_evaluations"]
    np.testing.assert_allclose(resumed.value.values, fresh.value.values, atol=1e-9)


def _count_single_fits(monkeypatch) -> list[int]:
    """Count the coalitions a Utility fits one at a time (fit_and_score), to see that batches were used."""
    calls = [0]
    original = Utility.fit_and_score

    def counting(self, players):
        calls[0] += 1
        return original(self, players)

    monkeypatch.setattr(Utility, "fit_and_score", counting)
    return calls


def test_least_core_evaluates_its_coalitions_in_batches(monkeypatch):
    from dvl_dask.valuation import exact_least_core, montecarlo_least_core

    u = Utility(LogisticRegression(), _data(6, n_test=40, seed=2), "neg_log_loss", default_score=-1.0)
    one = OneByOne(u)
    want_exact = _values(exact_least_core(one))
    want_mc = _values(montecarlo_least_core(one, 20, seed=3))
    calls = _count_single_fits(monkeypatch)
    np.testing.assert_allclose(_values(exact_least_core(u)), want_exact, rtol=0, atol=1e-9)
    np.testing.assert_allclose(_values(montecarlo_least_core(u, 20, seed=3)), want_mc, rtol=0, atol=1e-9)
    assert calls[0] == 0  # every coalition was fitted in a batch


def test_learn_utility_evaluates_its_training_coalitions_in_batches(monkeypatch):
    from sklearn.linear_model import Ridge as SkRidge

    from dvl_dask.utility import learn_utility

    u = Utility(LogisticRegression(), _data(8, n_test=40, seed=6), "neg_log_loss", default_score=-1.0)
    probe = np.random.default_rng(0).random((10, 8)) < 0.5
    want = learn_utility(OneByOne(u), 40, regressor=SkRidge(alpha=1e-3), seed=1)
    calls = _count_single_fits(monkeypatch)
    got = learn_utility(u, 40, regressor=SkRidge(alpha=1e-3), seed=1)
    assert calls[0] == 0
    np.testing.assert_allclose([got(m) for m in probe], [want(m) for m in probe], rtol=0, atol=1e-8)


@pytest.mark.parametrize(("grouped", "scoring"), [(False, "accuracy"), (True, "accuracy"), (False, "f1")])
def test_data_oob_fits_its_bootstrap_models_in_batches(monkeypatch, grouped, scoring):
    # Data-OOB never scores with the utility's scorer: a scorer without a vectorised version ("f1") does
    # not stop its bootstrap fits from being batched.
    from sklearn.pipeline import make_pipeline

    from dvl_dask import GroupedDataset
    from dvl_dask.valuation import data_oob

    plain = _data(24, n_test=20, seed=7)
    parts = (plain.x_train, plain.y_train, plain.x_test, plain.y_test)
    data = GroupedDataset(*parts, data_groups=np.arange(24) // 2) if grouped else plain
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.3))
    batched = Utility(model, data, scoring)
    assert batched.batched == (scoring == "accuracy")
    one_at_a_time = Utility(model, data, scoring, batched=False)  # same token: same seeds, one fit per sample
    kwargs = {"n_estimators": 12, "seed": 4, "estimators_per_block": 6}
    want = data_oob(one_at_a_time, **kwargs).compute(scheduler="sync")
    fits = [0]
    original = LogisticRegression.fit

    def counting(self, X, y):
        fits[0] += 1
        return original(self, X, y)

    monkeypatch.setattr(LogisticRegression, "fit", counting)
    got = data_oob(batched, **kwargs).compute(scheduler="sync")
    assert fits[0] == 0  # every bootstrap model was fitted in a batch
    for name in got.data_vars:
        np.testing.assert_array_equal(got[name].values, want[name].values)


def test_bootstrap_counts_weigh_as_duplicated_rows():
    from dvl_dask.models import fit_logistic

    plain = _data(15, n_test=5, seed=8)
    x, y = np.asarray(plain.x_train), np.asarray(plain.y_train)
    counts = np.random.default_rng(1).integers(0, 3, size=15)
    counts[[np.flatnonzero(y == c)[0] for c in (0, 1)]] = 1  # both classes in the sample
    rows = np.repeat(np.arange(15), counts)
    weighted = fit_logistic(x, y, counts[None].astype(float), n_classes=2, C=1.0, fit_intercept=True, scale=True)
    duplicated = SkLogisticRegression(tol=1e-12, max_iter=10_000, solver="newton-cholesky")
    duplicated.fit(StandardScaler().fit_transform(x[rows]), y[rows])
    sd = x[rows].std(axis=0)
    np.testing.assert_allclose(weighted.coef[0, 0] * sd, duplicated.coef_[0], rtol=1e-6, atol=1e-9)
