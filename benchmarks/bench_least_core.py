"""Least core at n=12: utility evaluations vs their ideal, and the two LP stages.

Run:  .venv/bin/python benchmarks/bench_least_core.py [--n-points 12] [--workers 2]

12 training points of wine, ``StandardScaler + LogisticRegression``, accuracy:
4,095 coalitions evaluated in block tasks on a process ``LocalCluster``, then
one task solves the linear programme (HiGHS) and the minimal-norm stage. The
ideal for the evaluations is ``2**n x one evaluation / workers``; the solve
time is reported on its own (``least_core_from_constraints`` on the same rows).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-points", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from distributed import Client, LocalCluster
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from dvl_dask import Dataset, Utility
    from dvl_dask.valuation import exact_least_core
    from dvl_dask.valuation._least_core import exact_coalitions_block, least_core_from_constraints

    n = args.n_points
    data = Dataset.from_sklearn(load_wine, train_size=n / 178, seed=0, stratify=True)
    utility = Utility(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), data, "accuracy")
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(40):
        utility(rng.choice(n, size=rng.integers(2, n + 1), replace=False))
    one = (time.perf_counter() - start) / 40
    rows = exact_coalitions_block(utility, 0, 2**n, n)
    start = time.perf_counter()
    least_core_from_constraints(rows, n)
    solve = time.perf_counter() - start
    with (
        LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0", host="127.0.0.1") as cluster,
        Client(cluster) as client,
    ):
        client.run(lambda: __import__("sklearn.linear_model"))  # warm the workers' imports
        start = time.perf_counter()
        ds = exact_least_core(utility).compute()
        wall = time.perf_counter() - start
    ideal = 2**n * one / args.workers
    print(f"n={n} coalitions={2**n - 1} one evaluation={one * 1e3:.2f} ms workers={args.workers}")
    print(f"exact_least_core on LocalCluster: {wall:6.2f} s  (evaluation ideal {ideal:6.2f} s + solve {solve:.2f} s; "
          f"efficiency {100 * (ideal + solve) / wall:5.1f}%)")
    print(f"subsidy e = {float(ds.subsidy):.4f}; sum of values {float(ds.value.sum()):.4f} = u(N)")


if __name__ == "__main__":
    main()
