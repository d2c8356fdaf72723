"""Batched convex models (issue 27): utility evaluations per core-second, batched vs one scikit-learn fit each.

Parts (``--parts``, default all but ``tmc``):

* ``rate``: evaluations per core-second (thread CPU time, BLAS limited to one
  thread) of the same random coalitions, batched (``Utility.evaluate_batch``,
  the median of three batches of different coalitions, and the first batch
  alone) vs one scikit-learn clone + fit + score per coalition (on the first
  ``--n-sklearn`` coalitions of the first batch). Logistic regression:
  breast_cancer, 100 training points, 200 test points, 30 features,
  ``StandardScaler`` + model, accuracy. Ridge: the same features, target the
  first feature, r2.
* ``permutation``: permutation Shapley, 40 permutations x 100 points, on a
  2-worker LocalCluster (one thread each), after a warm-up run.
* ``exact``: exact Shapley, n=14 (16,384 coalitions), sync scheduler.
* ``tmc``: TMC Shapley on ``--tmc-points`` points (20 features, logistic
  regression, ``--tmc-permutations`` permutations, relative truncation 0.01),
  2-worker LocalCluster; peak memory of the workers from their RSS.

``--device`` (default ``cpu``, numpy) sets ``dvl_dask.models.device`` for every
part: ``--device torch:cpu`` runs the torch path on the CPU, ``--device cuda``
on a GPU.

Run: ``.venv/bin/python benchmarks/bench_batched_models.py [--parts rate,permutation,exact] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.datasets import load_breast_cancer, make_classification
from sklearn.linear_model import LogisticRegression as SkLogisticRegression
from sklearn.linear_model import Ridge as SkRidge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from dvl_dask import Dataset, Utility
from dvl_dask.models import LogisticRegression, Ridge
from dvl_dask.valuation import exact_shapley, permutation_shapley


def breast_cancer(n_train: int = 100, n_test: int = 200, regression: bool = False) -> Dataset:
    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))[: n_train + n_test]
    x, y = x[order], y[order]
    if regression:
        x, y = x[:, 1:], x[:, 0]
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def cpu_seconds(fn, *args) -> tuple[float, object]:
    start = time.thread_time()
    out = fn(*args)
    return time.thread_time() - start, out


def rate(n_batched: int, n_sklearn: int) -> None:
    cases = [
        ("logistic regression", breast_cancer(), "accuracy",
         make_pipeline(StandardScaler(), LogisticRegression()), make_pipeline(StandardScaler(), SkLogisticRegression()),
         20),
        ("ridge", breast_cancer(regression=True), "r2",
         make_pipeline(StandardScaler(), Ridge(alpha=1.0)), make_pipeline(StandardScaler(), SkRidge(alpha=1.0)), 50),
    ]
    rng = np.random.default_rng(1)
    for name, data, scoring, batched_model, sk_model, target in cases:
        # Three timed batches of different random coalitions; scikit-learn fits the first n_sklearn of the first.
        batches = [rng.random((n_batched, data.n_players)) < rng.uniform(0.05, 1.0, (n_batched, 1)) for _ in range(3)]
        masks = batches[0]
        batched = Utility(batched_model, data, scoring, default_score=0.0)
        reference = Utility(sk_model, data, scoring, default_score=0.0)
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            batched.evaluate_batch(masks[:50])  # warm-up (imports, data)
            reference(masks[0])
            timed = [cpu_seconds(batched.evaluate_batch, ms) for ms in batches]
            t_ref, want = cpu_seconds(lambda u, ms: [u(m) for m in ms], reference, masks[:n_sklearn])
        got = timed[0][1]
        rates = sorted(n_batched / t for t, _ in timed)
        per_batch = rates[1]  # the median of the three batches
        per_ref = n_sklearn / t_ref
        agree = np.mean(np.abs(np.asarray(got[:n_sklearn]) - np.asarray(want)) < 1e-6)
        first = n_batched / timed[0][0]
        print(f"{name:20s} batched {per_batch:9.0f} eval/core-s (median of 3 batches of {n_batched}: "
              f"{rates[0]:.0f}-{rates[2]:.0f}; first {first:.0f})   scikit-learn {per_ref:7.0f} "
              f"eval/core-s   speed-up {per_batch / per_ref:6.1f}x (first batch {first / per_ref:.1f}x;"
              f" target >= {target}x)   same score (1e-6) on {agree:.1%} (scikit-learn default tol=1e-4)")


def _worker_cpu(client) -> float:
    return sum(client.run(time.process_time).values())


def permutation(n_permutations: int = 40, n_baseline: int = 8) -> None:
    """Wall time and the workers' CPU time (core-seconds: honest on a shared machine), batched and scikit-learn."""
    from distributed import Client, LocalCluster

    data = breast_cancer()
    batched = Utility(make_pipeline(StandardScaler(), LogisticRegression()), data, "accuracy")
    reference = Utility(make_pipeline(StandardScaler(), SkLogisticRegression()), data, "accuracy")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        for u, perms, label in ((batched, n_permutations, "batched"), (reference, n_baseline, "scikit-learn")):
            permutation_shapley(u, n_permutations=perms, seed=0).compute()  # warm-up
            walls, cpus = [], []
            for seed in (1, 2, 3):
                cpu, start = _worker_cpu(client), time.perf_counter()
                permutation_shapley(u, n_permutations=perms, seed=seed).compute()
                walls.append(time.perf_counter() - start)
                cpus.append(_worker_cpu(client) - cpu)
            print(f"permutation Shapley {perms} perms x 100 points, {label:12s} LocalCluster x2: wall "
                  f"{min(walls):.2f} s best of 3 (median {np.median(walls):.2f} s); workers' CPU "
                  f"{min(cpus):.2f} core-s = {min(cpus) / perms * 40:.2f} core-s per 40 perms (target < 1 s wall)")


def exact(n: int = 14) -> None:
    data = breast_cancer(n_train=n)
    u = Utility(make_pipeline(StandardScaler(), LogisticRegression()), data, "accuracy")
    with threadpool_limits(1):
        exact_shapley(u, block_size=1024).value.compute(scheduler="sync")  # warm-up
        start, cpu = time.perf_counter(), time.process_time()
        exact_shapley(u, block_size=1024).value.compute(scheduler="sync")
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"exact Shapley n={n} ({2**n} coalitions), sync scheduler, 1 thread: wall {wall:.2f} s, CPU {cpu:.2f} core-s")


def tmc(n_points: int, n_permutations: int) -> None:
    from distributed import Client, LocalCluster

    x, y = make_classification(n_samples=n_points + 1000, n_features=20, n_informative=10, random_state=0)
    data = Dataset(x[:n_points], y[:n_points], x[n_points:], y[n_points:])
    u = Utility(make_pipeline(StandardScaler(), LogisticRegression()), data, "accuracy")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit="8GiB") as cluster, Client(cluster) as client:
        start, cpu = time.perf_counter(), _worker_cpu(client)
        ds = permutation_shapley(u, n_permutations=n_permutations, seed=0, truncation=0.01,
                                 items_per_block=max(1, n_permutations // 8)).compute()
        wall, cpu = time.perf_counter() - start, _worker_cpu(client) - cpu
        peak = client.run(lambda: __import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss)
    print(f"TMC Shapley {n_points} points, {n_permutations} perms, rtol 0.01, LocalCluster x2: wall {wall:.1f} s, "
          f"workers' CPU {cpu:.1f} core-s; "
          f"{ds.attrs.get('n_evaluations')} evaluations planned at most; peak RSS per worker "
          f"{max(peak.values()) / 1024:.0f} MiB")


def use_device(device: str) -> None:
    """Fit on ``device`` in this process and in the LocalCluster workers started after this (environment).

    A torch device gets one torch thread here, so that ``time.thread_time`` counts all the work of a fit
    (the workers' torch threads are set by the nanny's ``OMP_NUM_THREADS=1``).
    """
    import os

    import dask

    from dvl_dask.models import batch_device

    os.environ["DASK_DVL_DASK__MODELS__DEVICE"] = device
    dask.config.set({"dvl_dask.models.device": device})
    if batch_device() != "cpu":
        import torch

        torch.set_num_threads(1)
    print(f"device: {batch_device()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="rate,permutation,exact")
    parser.add_argument("--n-batched", type=int, default=2000)
    parser.add_argument("--n-sklearn", type=int, default=300)
    parser.add_argument("--tmc-points", type=int, default=10_000)
    parser.add_argument("--tmc-permutations", type=int, default=100)
    parser.add_argument("--device", default="cpu",
                        help="dvl_dask.models.device for every part ('cpu': numpy; 'torch:cpu', 'cuda', ...: torch)")
    args = parser.parse_args()
    use_device(args.device)
    parts = set(args.parts.split(","))
    if "rate" in parts:
        rate(args.n_batched, args.n_sklearn)
    if "permutation" in parts:
        permutation()
    if "exact" in parts:
        exact()
    if "tmc" in parts:
        tmc(args.tmc_points, args.tmc_permutations)


if __name__ == "__main__":
    main()
