"""pyDVL's parallelisation pages, as dvl_dask runs them: any Dask scheduler instead of ParallelConfig.

Sources: docs/getting-started/advanced-usage.md ("Parallelization") and
docs/how-to-guides/how-to-speed-up-value-with-parallel.md of pyDVL. Their code cannot run here
by design: it configures joblib (``ParallelConfig(backend="joblib")``,
``joblib.parallel_config(backend="loky", n_jobs=4)``) or Ray (``ray.init()``,
``ParallelConfig(backend="ray")``), which dvl_dask does not use (docs/migrating-from-pydvl.md,
"Parallel backends"). Each test runs the nearest equivalent of one of the page's examples --
``combinatorial_exact_shapley(u, config=config)`` under each backend, and a permutation method
stopped by ``MaxUpdates`` on a cluster -- and checks the values against brute force.
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import ThreadPoolExecutor

import dask
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dvl_dask import Dataset, Utility
from dvl_dask.valuation import MaxUpdates, exact_shapley, permutation_shapley, run_until_converged


@pytest.fixture(scope="module")
def u() -> Utility:
    """The page's ``Utility(...)``: a scaled LogisticRegression on 5 stratified iris points."""
    data = Dataset.from_sklearn(load_iris(), train_size=5 / 150, random_state=16, stratify_by_target=True)
    return Utility(make_pipeline(StandardScaler(), LogisticRegression()), data, "accuracy")


def _brute_force_shapley(u: Utility) -> np.ndarray:
    n = u.n_players
    scores = {c: u(c) for r in range(n + 1) for c in itertools.combinations(range(n), r)}
    values = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for r in range(n):
            for s in itertools.combinations(others, r):
                with_i = tuple(sorted((*s, i)))
                weight = math.factorial(r) * math.factorial(n - r - 1) / math.factorial(n)
                values[i] += weight * (scores[with_i] - scores[s])
    return values


def test_joblib_threads_become_the_threaded_scheduler(u) -> None:
    # pyDVL: config = ParallelConfig(backend="joblib")
    #        with joblib.parallel_config(backend="loky", verbose=100):
    #            combinatorial_exact_shapley(u, config=config)
    with dask.config.set(scheduler="threads", num_workers=2):
        values = exact_shapley(u).compute()
    np.testing.assert_allclose(values.value, _brute_force_shapley(u), atol=1e-12)
    assert values.attrs["n_evaluations"] == 2**5  # each coalition once (pyDVL: ~n times each)


def test_synchronous_scheduler_gives_the_same_values(u) -> None:
    # pyDVL: n_jobs=1; here the single-threaded scheduler, for debugging
    values = exact_shapley(u).compute(scheduler="synchronous")
    np.testing.assert_allclose(values.value, _brute_force_shapley(u), atol=1e-12)


@pytest.mark.distributed
def test_ray_or_loky_cluster_becomes_a_distributed_client(u, client) -> None:
    # pyDVL: ray.init(num_cpus=4); config = ParallelConfig(backend="ray")
    #        combinatorial_exact_shapley(u, config=config)
    # dvl_dask: a distributed.Client (here the suite's LocalCluster of 2 worker processes) is the
    # default scheduler once created; a remote cluster is Client("tcp://host:8786").
    values = exact_shapley(u).compute()
    np.testing.assert_allclose(values.value, _brute_force_shapley(u), atol=1e-12)


@pytest.mark.distributed
def test_valuation_fit_with_max_updates_on_a_cluster(u, client) -> None:
    # pyDVL 0.10: valuation = TMCShapleyValuation(utility, is_done=MaxUpdates(100)) (or with a
    #             PermutationSampler(seed=16)); with parallel_config(backend="dask", n_jobs=4): valuation.fit(data)
    # dvl_dask: run_until_converged on the client; the values depend on the seed only.
    on_cluster = run_until_converged(
        permutation_shapley, u, stop=MaxUpdates(12), seed=16, client=client, progress=False, items_per_block=4
    )
    with ThreadPoolExecutor(2) as pool:  # no cluster: two threads of this process
        local = run_until_converged(
            permutation_shapley, u, stop=MaxUpdates(12), seed=16, progress=False, items_per_block=4, executor=pool
        )
    assert on_cluster.attrs["stopped_by"] == ["MaxUpdates(n_updates=12)"] and int(on_cluster.counts.min()) >= 12
    np.testing.assert_array_equal(on_cluster.value, local.value)
    # an unbiased estimate: within a few standard errors of the exact values
    exact = _brute_force_shapley(u)
    assert np.all(np.abs(on_cluster.value - exact) <= 4 * on_cluster.stderr + 1e-9)
