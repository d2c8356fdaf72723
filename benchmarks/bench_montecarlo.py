"""Monte Carlo valuation: throughput, accuracy per budget and scheduler overhead.

Run:  .venv/bin/python benchmarks/bench_montecarlo.py [--workers 2] [--permutations 40]

1. Throughput: permutation Shapley, LogisticRegression, 100 training points of
   breast_cancer, on a process LocalCluster. Utility evaluations per second
   against the ideal ``cores / (one clone+fit+score)`` measured in this run,
   with cold fits and with warm starts.
2. Accuracy per budget: 12 points of wine, exact Shapley as ground truth; after
   100 permutations, Spearman correlation and max |error| for plain,
   antithetic, truncated and warm-started sampling (mean over 5 seeds), and
   the largest error in units of the estimator's stderr.
3. Overhead: per-task scheduler overhead (an empty task's round trip on the
   cluster) times the number of tasks, divided by the evaluations they ran,
   as a fraction of one fit.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _utility(loader: str, n_points: int, n_test: int = 200):
    from sklearn import datasets
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from dvl_dask import Dataset, Utility

    bunch = getattr(datasets, f"load_{loader}")()
    data = Dataset.from_sklearn(bunch, train_size=n_points / len(bunch.target), seed=0, stratify=True)
    data = Dataset(data.x_train, data.y_train, data.x_test[:n_test], data.y_test[:n_test], data_names=data.data_names)
    return Utility(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), data, "accuracy")


def single_fit_time(utility, repeats: int = 60) -> float:
    """Mean seconds of one bare sklearn clone + fit + scorer on random coalitions of random size.

    The ideal is defined by plain scikit-learn (``sklearn.base.clone``, ``fit``, the sklearn
    scorer), not by dvl_dask's Utility, whose evaluation is cheaper (see
    bench_evaluation_overhead.py): efficiencies above 100% are possible.
    """
    from sklearn.base import clone
    from sklearn.metrics import get_scorer

    scorer = get_scorer("accuracy")
    d = utility.data
    rng = np.random.default_rng(1)
    n = utility.n_players

    def one(players):
        if np.unique(d.y_train[players]).size < 2:
            return
        model = clone(utility.model)
        model.fit(d.x_train[players], d.y_train[players])
        scorer(model, d.x_test, d.y_test)

    one(np.arange(n))
    start = time.perf_counter()
    for _ in range(repeats):
        one(rng.choice(n, size=rng.integers(2, n + 1), replace=False))
    return (time.perf_counter() - start) / repeats


def throughput(client, cores: int, n_permutations: int) -> None:
    from dvl_dask.valuation import permutation_shapley

    utility = _utility("breast_cancer", 100)
    t_fit = single_fit_time(utility)
    ideal = cores / t_fit
    print(f"[throughput] 100 points of breast_cancer, LogisticRegression: one fit {t_fit * 1e3:.1f} ms, "
          f"ideal {ideal:.0f} evaluations/s on {cores} cores")
    evaluations = n_permutations * 101
    # the same graph on the in-process sync scheduler: one core, no scheduler, same evaluations
    start = time.perf_counter()
    permutation_shapley(utility, n_permutations=n_permutations // 4, seed=1).compute(scheduler="sync")
    sync_rate = evaluations / 4 / (time.perf_counter() - start)
    print(f"[throughput] sync scheduler (1 core): {sync_rate:7.1f}/s = {sync_rate / (ideal / cores):6.1%} of one "
          f"core's ideal; x{cores} = {sync_rate * cores:7.1f}/s")
    for warm in (False, True):
        ds = permutation_shapley(utility, n_permutations=n_permutations, seed=0, warm_start=warm)
        start = time.perf_counter()
        out = client.compute(ds).result()
        elapsed = time.perf_counter() - start
        rate = evaluations / elapsed
        print(f"[throughput] warm_start={warm!s:5}: {evaluations} evaluations in {elapsed:6.1f} s = {rate:7.1f}/s "
              f"= {rate / ideal:6.1%} of the cold-fit ideal, {rate / (cores * sync_rate):6.1%} of {cores} x sync "
              f"(mean stderr {out['stderr'].values.mean():.4f})")


def accuracy_per_budget() -> None:
    from scipy.stats import spearmanr

    from dvl_dask.valuation import exact_shapley, permutation_shapley

    utility = _utility("wine", 12)
    exact = exact_shapley(utility).compute(scheduler="processes")["value"].values
    print("[accuracy] 12 points of wine, 100 permutations, mean over 5 seeds (vs. exact Shapley)")
    for label, kwargs in (
        ("plain", {}),
        ("antithetic", {"antithetic": True}),
        ("truncated rtol=0.01", {"truncation": 0.01}),
        ("warm start", {"warm_start": True}),
    ):
        rhos, errs, zs = [], [], []
        for seed in range(5):
            est = permutation_shapley(utility, n_permutations=100, seed=seed, **kwargs).compute(scheduler="processes")
            rhos.append(spearmanr(est["value"].values, exact).statistic)
            errs.append(np.max(np.abs(est["value"].values - exact)))
            zs.append(np.max(np.abs(est["value"].values - exact) / est["stderr"].values))
        print(f"[accuracy] {label:20}: Spearman {np.mean(rhos):.3f}   max|error| {np.mean(errs):.4f}   "
              f"max |error|/stderr {np.max(zs):.2f}   (max |exact value| {np.max(np.abs(exact)):.4f})")


def overhead(client, cores: int) -> None:
    from dvl_dask.valuation import permutation_shapley

    def empty(i: int) -> int:
        return i

    n_tasks = 200
    start = time.perf_counter()
    client.gather(client.map(empty, range(n_tasks), pure=False))
    per_task = (time.perf_counter() - start) * cores / n_tasks
    utility = _utility("breast_cancer", 100)
    t_fit = single_fit_time(utility, repeats=30)
    ds = permutation_shapley(utility, n_permutations=8, seed=0)
    per_block = ds.dvl.parameters["items_per_block"]
    evaluations_per_task = per_block * 101
    fraction = per_task / (evaluations_per_task * t_fit)
    print(f"[overhead] {per_task * 1e3:.2f} ms per task (x cores), {per_block} permutations = "
          f"{evaluations_per_task} evaluations per task, one fit {t_fit * 1e3:.1f} ms: "
          f"overhead {fraction:.3%} of the fitting time (target < 1%)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--permutations", type=int, default=60)
    args = p.parse_args()
    from distributed import Client, LocalCluster

    cores = min(args.workers, os.cpu_count() or 1)
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cl, \
            Client(cl) as client:
        client.run(lambda: __import__("sklearn.linear_model"))
        throughput(client, cores, args.permutations)
        overhead(client, cores)
    accuracy_per_budget()


if __name__ == "__main__":
    main()
