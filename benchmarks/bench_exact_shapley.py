"""Exact Shapley throughput: wall time vs. the ideal n_subsets * single-fit time / cores.

Run:  .venv/bin/python benchmarks/bench_exact_shapley.py [--n-points 12] [--workers 2]

The ideal is what perfect parallelism over ``cores`` gives with no scheduler
overhead: every one of the 2**n coalitions costs one clone+fit+score, measured
in this process on random coalitions of the same data.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _utility(n_points: int):
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from dvl_dask import Dataset, Utility

    data = Dataset.from_sklearn(load_wine, train_size=n_points / 178, seed=0, stratify=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    return Utility(model, data, "accuracy")


def single_evaluation_time(utility, repeats: int = 300, seed: int = 0) -> float:
    """Mean seconds of one utility evaluation on uniformly random coalitions."""
    rng = np.random.default_rng(seed)
    n = utility.n_players
    masks = rng.integers(0, 2, size=(repeats, n)).astype(bool)
    utility(range(n))  # warm up imports and data materialisation
    start = time.perf_counter()
    for m in masks:
        utility(np.flatnonzero(m))
    return (time.perf_counter() - start) / repeats


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n-points", type=int, default=12)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--block-size", type=int, default=None)
    args = p.parse_args()

    from distributed import Client, LocalCluster

    from dvl_dask.valuation import exact_shapley

    utility = _utility(args.n_points)
    n_subsets = 2**args.n_points
    t_fit = single_evaluation_time(utility)
    cores = min(args.workers, os.cpu_count() or 1)
    ideal = n_subsets * t_fit / cores
    print(f"n_points={args.n_points}  n_subsets={n_subsets}  single evaluation={t_fit * 1e3:.2f} ms  cores={cores}")

    start = time.perf_counter()
    sync = exact_shapley(utility, block_size=args.block_size).compute(scheduler="sync")
    t_sync = time.perf_counter() - start
    print(f"sync scheduler:      {t_sync:7.2f} s   ideal (1 core) {n_subsets * t_fit:7.2f} s   "
          f"efficiency {n_subsets * t_fit / t_sync:5.1%}")

    # Before any LocalCluster: starting one sets OMP/OPENBLAS_NUM_THREADS=1 in this process's
    # environment, which would hide what the block tasks' own BLAS limit does for these workers.
    start = time.perf_counter()
    procs = exact_shapley(utility, block_size=args.block_size).compute(scheduler="processes", num_workers=cores)
    t_procs = time.perf_counter() - start
    print(f"processes scheduler: {t_procs:7.2f} s   ideal ({cores} cores) {ideal:7.2f} s   "
          f"efficiency {ideal / t_procs:5.1%}  ({t_procs / ideal:.2f}x the ideal; pool start-up included)")
    assert np.allclose(sync["value"].values, procs["value"].values, atol=1e-12)

    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cl, \
            Client(cl) as client:
        client.run(lambda: __import__("sklearn.linear_model"))  # warm the workers' imports
        start = time.perf_counter()
        dist = exact_shapley(utility, block_size=args.block_size).compute()
        t_dist = time.perf_counter() - start
    print(f"LocalCluster x{args.workers}:     {t_dist:7.2f} s   ideal ({cores} cores) {ideal:7.2f} s   "
          f"efficiency {ideal / t_dist:5.1%}")
    print(f"evaluations/s: {n_subsets / t_dist:8.1f}  ideal {cores / t_fit:8.1f}")
    assert np.allclose(sync["value"].values, dist["value"].values, atol=1e-12)


if __name__ == "__main__":
    main()
