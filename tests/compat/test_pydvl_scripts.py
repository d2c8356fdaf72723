"""pyDVL 0.10 scripts run with only their imports changed, and agree with dvl_dask's API and brute force.

Each file in ``scripts/`` is written as a pyDVL 0.10 user would (``from pydvl.valuation import ...``);
the test rewrites ``from pydvl.`` to ``from dvl_dask.compat.pydvl.`` and nothing else, runs it, and
compares ``result`` with the native dvl_dask method on the same data and seed (Monte Carlo) or with a
brute-force truth written here (exact methods).
"""

from __future__ import annotations

import itertools
import math
from functools import partial
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from dvl_dask import Dataset as NativeDataset
from dvl_dask import Utility
from dvl_dask import valuation as native
from dvl_dask.utility import learn_utility

SCRIPTS = Path(__file__).parent / "scripts"
SMALL_BLOCKS = {"dvl_dask.valuation.montecarlo.evaluations-per-block": 40}


def run_script(name: str, scheduler: str | None = "sync") -> dict[str, Any]:
    """Run a pyDVL script with its imports pointed at dvl_dask.compat.pydvl (the only change).

    The synchronous scheduler keeps these tiny runs fast; values never depend on the scheduler
    (``test_fit_on_a_distributed_client_gives_the_same_values``).
    """
    source = (SCRIPTS / name).read_text()
    assert "from pydvl." in source and "dvl_dask" not in source
    namespace: dict[str, Any] = {"__name__": "__main__"}
    settings = {**SMALL_BLOCKS, **({"scheduler": scheduler} if scheduler else {})}
    with dask.config.set(settings):
        exec(compile(source.replace("from pydvl.", "from dvl_dask.compat.pydvl."), name, "exec"), namespace)
    return namespace


def native_utility(ns: dict[str, Any], model: Any = None) -> Utility:
    """dvl_dask's utility on the script's train and test parts."""
    (x, y), (xt, yt) = ns["train"].data(), ns["test"].data()
    return Utility(model if model is not None else LogisticRegression(), NativeDataset(x, y, xt, yt), "accuracy",
                   default_score=0.0)


def run_native(method: Any, utility: Any, stop: Any, seed: int, **options: Any) -> Any:
    with dask.config.set({**SMALL_BLOCKS, "scheduler": "sync"}):
        return native.run_until_converged(method, utility, stop=stop, seed=seed, progress=False, **options)


def brute_force_shapley(u: Any, n: int) -> np.ndarray:
    """phi_i = sum over S of |S|! (n - |S| - 1)! / n! (u(S + i) - u(S)), every coalition evaluated here."""
    values = {s: u(list(s)) for k in range(n + 1) for s in itertools.combinations(range(n), k)}
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
            for s in itertools.combinations(others, k):
                phi[i] += weight * (values[tuple(sorted((*s, i)))] - values[s])
    return phi


def assert_same(result: Any, reference: Any) -> None:
    np.testing.assert_allclose(result.values, np.asarray(reference.value), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(result.counts, np.asarray(reference.counts))


def test_exact_shapley_agrees_with_brute_force() -> None:
    ns = run_script("shapley_exact.py")
    result, u = ns["result"], native_utility(ns)
    np.testing.assert_allclose(result.values, brute_force_shapley(u, 5), atol=1e-12)
    assert result.status == "converged" and result.names.tolist() == ns["train"].names.tolist()


def test_tmc_shapley_agrees_with_native_on_the_same_seed() -> None:
    ns = run_script("tmc_shapley.py")
    reference = run_native(
        native.permutation_shapley, native_utility(ns), native.MaxUpdates(8), 16,
        truncation=native.RelativeTruncation(0.05),
    )
    assert_same(ns["result"], reference)
    assert ns["result"].to_dataset().attrs["biased"]  # truncation says so


def test_permutation_shapley_with_composed_criteria() -> None:
    ns = run_script("shapley_permutation.py")
    stop = native.HistoryDeviation(5, 1e-9) | native.MaxUpdates(8)
    assert_same(ns["result"], run_native(native.permutation_shapley, native_utility(ns), stop, 16))


@pytest.mark.parametrize(
    ("script", "method", "stop", "options"),
    [
        ("banzhaf.py", native.banzhaf, native.MaxUpdates(8), {"sampler": "uniform"}),
        ("msr_banzhaf.py", native.msr_banzhaf, native.MaxUpdates(30), {}),
        ("beta_shapley.py", native.beta_shapley, native.MaxUpdates(8), {"alpha": 16, "beta": 1, "sampler": "uniform"}),
    ],
)
def test_semivalues_agree_with_native(script: str, method: Any, stop: Any, options: dict[str, Any]) -> None:
    ns = run_script(script)
    assert_same(ns["result"], run_native(method, native_utility(ns), stop, 16, **options))


def test_stratified_shapley_agrees_with_native() -> None:
    ns = run_script("stratified_shapley.py")
    reference = run_native(
        native.semivalue, native_utility(ns), native.MaxUpdates(12), 16,
        coefficient=native.shapley_coefficient, sampler=native.StratifiedSampler(),
    )
    assert_same(ns["result"], reference)


def test_loo_agrees_with_brute_force() -> None:
    ns = run_script("loo.py")
    u = native_utility(ns)
    truth = [u(range(5)) - u([j for j in range(5) if j != i]) for i in range(5)]
    np.testing.assert_allclose(ns["result"].values, truth, atol=1e-12)


def test_knn_shapley_agrees_with_native() -> None:
    ns = run_script("knn_shapley.py")
    (x, y), (xt, yt) = ns["train"].data(), ns["test"].data()
    reference = native.knn_shapley(NativeDataset(x, y, xt, yt), KNeighborsClassifier(n_neighbors=3)).compute()
    np.testing.assert_allclose(ns["result"].values, reference.value, atol=1e-12)


def test_data_oob_agrees_with_native() -> None:
    ns = run_script("data_oob.py")
    from sklearn.tree import DecisionTreeClassifier

    (x, y) = ns["train"].data()
    u = Utility(DecisionTreeClassifier(random_state=0), NativeDataset(x, y, x, y), "accuracy")
    reference = native.data_oob(u, n_estimators=40, max_samples=0.8, seed=16).compute()
    np.testing.assert_allclose(ns["result"].values, reference.value, equal_nan=True)


def test_classwise_shapley_agrees_with_native() -> None:
    ns = run_script("classwise_shapley.py")
    reference = native.classwise_shapley(native_utility(ns), 4 * 2, seed=16).compute()
    assert_same(ns["result"], reference)


def test_group_testing_agrees_with_native() -> None:
    ns = run_script("group_testing.py")
    reference = native.group_testing_shapley(native_utility(ns), 200, seed=16).compute()
    assert_same(ns["result"], reference)


@pytest.mark.parametrize("script", ["exact_least_core.py", "least_core.py"])
def test_exact_least_core_is_efficient_and_agrees_with_native(script: str) -> None:
    ns = run_script(script)
    u = native_utility(ns)
    reference = native.exact_least_core(u, non_negative_subsidy=True).compute()
    np.testing.assert_allclose(ns["result"].values, reference.value, atol=1e-9)
    assert abs(ns["result"].values.sum() - u(range(5))) < 1e-6  # efficiency: the grand coalition is shared


def test_montecarlo_least_core_agrees_with_native() -> None:
    ns = run_script("montecarlo_least_core.py")
    reference = native.montecarlo_least_core(native_utility(ns), 40, seed=16, non_negative_subsidy=True).compute()
    np.testing.assert_allclose(ns["result"].values, reference.value, atol=1e-9)


def test_data_utility_learning_agrees_with_brute_force_on_the_learned_utility(monkeypatch: Any) -> None:
    # pyDVL 0.10's DataUtilityLearning takes no seed: fix the one of dvl_dask's sampled training coalitions.
    from dvl_dask.compat.pydvl.valuation import _utility

    def seeded(*args: Any, seed: Any = None, **kwargs: Any) -> Any:
        return learn_utility(*args, seed=16 if seed is None else seed, **kwargs)

    monkeypatch.setattr(_utility, "learn_utility", seeded)
    ns = run_script("data_utility_learning.py")
    learned = learn_utility(native_utility(ns), 20, regressor=LinearRegression(), seed=16)
    np.testing.assert_allclose(ns["result"].values, brute_force_shapley(learned, 5), atol=1e-9)


def test_delta_shapley_agrees_with_native() -> None:
    ns = run_script("delta_shapley.py")
    reference = run_native(native.delta_shapley, native_utility(ns), native.MaxUpdates(8), 16, lower_bound=1,
                           upper_bound=4)
    assert_same(ns["result"], reference)
    assert ns["result"].to_dataset().attrs["method"] == "delta_shapley"


def test_vrds_run_to_exhaustion_is_the_native_fixed_budget() -> None:
    ns = run_script("vrds.py")
    with dask.config.set({**SMALL_BLOCKS, "scheduler": "sync"}):
        reference = native.semivalue(
            native_utility(ns), native.shapley_coefficient, n_samples=20, seed=16, sampler=native.VRDSSampler()
        ).compute()
    assert_same(ns["result"], reference)
    assert np.all(ns["result"].counts == 20)  # n_samples_per_index samples of every player, then exhausted


def test_stratified_sampler_with_a_power_law_agrees_with_native() -> None:
    ns = run_script("stratified_sampler_power_law.py")
    sampler = native.StratifiedSampler(allocation=native.PowerLawSampleSize(-0.5))
    reference = run_native(native.semivalue, native_utility(ns), native.MaxUpdates(12), 16,
                           coefficient=native.shapley_coefficient, sampler=sampler)
    assert_same(ns["result"], reference)


def test_stratified_permutations_agree_with_native() -> None:
    ns = run_script("stratified_permutation.py")
    reference = run_native(native.permutation_shapley, native_utility(ns), native.MaxUpdates(12), 16,
                           sampler="stratified")
    assert_same(ns["result"], reference)


def test_deviation_truncation_agrees_with_native() -> None:
    ns = run_script("tmc_deviation_truncation.py")
    reference = run_native(native.permutation_shapley, native_utility(ns), native.MaxUpdates(8), 16,
                           truncation=native.DeviationTruncation(0.4, sigmas=1.0))
    assert_same(ns["result"], reference)
    assert "DeviationTruncation" in ns["result"].to_dataset().attrs["bias"]


def test_knn_shapley_of_a_regressor_agrees_with_brute_force() -> None:
    ns = run_script("knn_shapley_regression.py")
    (x, y), (xt, yt) = ns["train"].data(), ns["test"].data()
    k, n = 2, len(y)
    order = np.argsort(((xt[:, None, :] - x[None, :, :]) ** 2).sum(axis=2), axis=1)  # nearest first, per test point

    def u(coalition: list[int]) -> float:
        members = set(coalition)
        nearest = [[j for j in row if j in members][:k] for row in order]
        predictions = np.array([y[idx].sum() / k for idx in nearest])  # divided by K also when |S| < K
        return float(np.mean(-((predictions - yt) ** 2)))

    np.testing.assert_allclose(ns["result"].values, brute_force_shapley(u, n), rtol=1e-9, atol=1e-9)


def test_classwise_normalisation_agrees_with_native_and_sums_to_the_in_class_accuracy() -> None:
    ns = run_script("classwise_shapley_normalized.py")
    u = native_utility(ns)
    reference = native.classwise_shapley(u, 4 * 2, seed=16, normalize_values=True).compute()
    assert_same(ns["result"], reference)
    (x, y), (xt, yt) = ns["train"].data(), ns["test"].data()
    predictions = LogisticRegression().fit(x, y).predict(xt)
    for label in np.unique(y):
        in_class = np.sum((predictions == yt) & (yt == label)) / len(yt)
        assert ns["result"].values[y == label].sum() == pytest.approx(in_class, abs=1e-12)


def test_pydvl_09_compute_shapley_values_agrees_with_native() -> None:
    ns = run_script("old_compute_shapley_values.py")
    data = ns["data"]
    u = Utility(LogisticRegression(), NativeDataset(data.x_train, data.y_train, data.x_test, data.y_test), "accuracy",
                default_score=0.0)
    reference = run_native(
        native.permutation_shapley, u, native.MaxUpdates(8), 16, truncation=native.RelativeTruncation(0.05)
    )
    assert_same(ns["result"], reference)


def test_every_valuation_class_has_a_script() -> None:
    from dvl_dask.compat.pydvl import valuation as compat

    scripts = "".join(p.read_text() for p in SCRIPTS.glob("*.py"))
    classes = [name for name in compat.__all__ if name.endswith("Valuation") and name != "Valuation"]
    assert len(classes) == 15
    assert [name for name in classes if name not in scripts] == []
    assert "DataUtilityLearning" in scripts


@pytest.mark.distributed
@pytest.mark.slow  # the session cluster (its start is shared with the other distributed tests)
def test_fit_on_a_distributed_client_gives_the_same_values(client: Any) -> None:
    on_cluster = run_script("msr_banzhaf.py", scheduler=None)["result"]  # run_until_converged's blocks on the client
    assert_same(on_cluster, run_script("msr_banzhaf.py")["result"].to_dataset())


def test_partial_of_native_method_is_the_same_run() -> None:
    """The compat layer passes options to run_until_converged as a partial would (guards the mapping)."""
    ns = run_script("beta_shapley.py")
    method = partial(native.beta_shapley, alpha=16, beta=1, sampler="uniform")
    assert_same(ns["result"], run_native(method, native_utility(ns), native.MaxUpdates(8), 16))
