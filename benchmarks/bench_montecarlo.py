"""Monte Carlo valuation: throughput, accuracy per budget and scheduler overhead.

Run:  .venv/bin/python benchmarks/bench_montecarlo.py [--workers 2] [--permutations 40] [--rounds 3]

1. Throughput: permutation Shapley, LogisticRegression, 100 training points of
   breast_cancer, on a fresh process LocalCluster (nothing imported or run on
   its workers beforehand). Utility evaluations per second against the ideal
   ``cores / (one single-threaded sklearn clone+fit+score)`` measured in this
   run: the first run of a fresh cluster, then the same graph again on it
   (steady state, equal work), for ``--rounds`` fresh clusters and seeds; and
   a run with warm starts. ``--preload`` starts the workers with the preload
   ``dvl_dask.preload`` (imports at worker start instead of at the first block).
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
    from threadpoolctl import threadpool_limits

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

    with threadpool_limits(1):  # single-threaded, as a worker's evaluation
        one(np.arange(n))
        start = time.perf_counter()
        for _ in range(repeats):
            one(rng.choice(n, size=rng.integers(2, n + 1), replace=False))
        return (time.perf_counter() - start) / repeats


def _timed_run(client, utility, n_permutations: int, seed: int, warm: bool) -> tuple[float, float]:
    """Wall seconds of one valuation (graph building included: it is part of what a user waits for)."""
    from dvl_dask.valuation import permutation_shapley

    start = time.perf_counter()
    ds = permutation_shapley(utility, n_permutations=n_permutations, seed=seed, warm_start=warm)
    future = client.compute(ds)
    out = future.result()
    elapsed = time.perf_counter() - start
    del future
    time.sleep(0.5)  # let the scheduler forget the keys before the same graph is submitted again
    return elapsed, float(out["stderr"].values.mean())


def throughput(workers: int, cores: int, n_permutations: int, rounds: int, preload: bool = False) -> None:
    """First run on a fresh cluster, then the SAME graph again (steady state): equal work, comparable times."""
    from distributed import Client, LocalCluster

    from dvl_dask.valuation import permutation_shapley

    utility = _utility("breast_cancer", 100)
    t_fit = single_fit_time(utility)
    ideal = cores / t_fit
    print(f"[throughput] 100 points of breast_cancer, LogisticRegression: one single-threaded fit "
          f"{t_fit * 1e3:.2f} ms, ideal {ideal:.0f} evaluations/s on {cores} cores")
    evaluations = n_permutations * 101
    # the same kind of graph on the in-process sync scheduler: one core, no scheduler
    start = time.perf_counter()
    permutation_shapley(utility, n_permutations=n_permutations // 4, seed=1).compute(scheduler="sync")
    sync_rate = evaluations / 4 / (time.perf_counter() - start)
    print(f"[throughput] sync scheduler (1 core): {sync_rate:7.1f}/s = {sync_rate / (ideal / cores):6.1%} of one "
          f"core's ideal; x{cores} = {sync_rate * cores:7.1f}/s")

    def report(label: str, elapsed: float, stderr: float) -> None:
        rate = evaluations / elapsed
        print(f"[throughput] {label:24}: {evaluations} evaluations in {elapsed:6.2f} s = {rate:6.1f}/s = "
              f"{rate / ideal:6.1%} of the cold-fit ideal, {rate / (cores * sync_rate):6.1%} of {cores} x sync "
              f"(mean stderr {stderr:.4f})")

    ratios = []
    for seed in range(rounds):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                          preload=["dvl_dask.preload"] if preload else []) as cl, Client(cl) as client:
            first, err = _timed_run(client, utility, n_permutations, seed, False)
            report(f"seed {seed} first run", first, err)
            steady, err = _timed_run(client, utility, n_permutations, seed, False)
            report(f"seed {seed} steady state", steady, err)
            ratios.append(first / steady)
            if seed == rounds - 1:
                warm, err = _timed_run(client, utility, n_permutations, seed, True)
                report(f"seed {seed} warm starts", warm, err)
    print(f"[throughput] first run / steady state (same graph): "
          f"{', '.join(f'{r:.3f}' for r in ratios)} (target <= 1.15)")


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
    p.add_argument("--permutations", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3, help="fresh clusters for the first-run measurement")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--preload", action="store_true", help="start the workers with the preload dvl_dask.preload")
    args = p.parse_args()
    from distributed import Client, LocalCluster

    cores = min(args.workers, os.cpu_count() or 1)
    throughput(args.workers, cores, args.permutations, args.rounds, args.preload)
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cl, \
            Client(cl) as client:
        overhead(client, cores)
    if not args.skip_accuracy:
        accuracy_per_budget()


if __name__ == "__main__":
    main()
