"""Data-OOB throughput against the fit ideal.

Run:  .venv/bin/python benchmarks/bench_data_oob.py [--n-points 100000] [--estimators 64] [--workers 2]

Synthetic classification (``make_classification``, 20 features), ``LogisticRegression``,
bootstrap samples of 80% of the points, on a process ``LocalCluster``. The
ideal is ``n_estimators x (one fit on a bootstrap sample + one predict on the
out-of-bag points) / workers``, the single fit and predict measured in this
run with one BLAS thread (as the workers have).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def one_fit_seconds(model, x, y, repeats: int = 3) -> float:
    from sklearn.base import clone
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    n = len(y)
    times = []
    with threadpool_limits(1):
        for _ in range(repeats):
            rows = rng.integers(0, n, int(0.8 * n))
            oob = np.setdiff1d(np.arange(n), rows)
            start = time.perf_counter()
            clone(model).fit(x[rows], y[rows]).predict(x[oob])
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-points", type=int, default=100_000)
    parser.add_argument("--estimators", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from distributed import Client, LocalCluster
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    from dvl_dask import Dataset, Utility
    from dvl_dask.valuation import data_oob

    x, y = make_classification(args.n_points + 100, n_features=20, n_informative=10, random_state=0)
    data = Dataset(x[: args.n_points], y[: args.n_points], x[args.n_points :], y[args.n_points :])
    model = LogisticRegression(max_iter=200)
    utility = Utility(model, data, "accuracy")
    t_fit = one_fit_seconds(model, data.x_train, data.y_train)
    ideal = args.estimators * t_fit / args.workers
    with (
        LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0", host="127.0.0.1") as cluster,
        Client(cluster) as client,
    ):
        client.run(lambda: __import__("sklearn.linear_model"))
        values = data_oob(utility, n_estimators=args.estimators, seed=0, estimators_per_block=4)
        start = time.perf_counter()
        result = client.compute(values).result()
        wall = time.perf_counter() - start
    print(f"n_points={args.n_points:,} n_estimators={args.estimators} workers={args.workers}")
    print(f"one bootstrap fit + OOB predict: {t_fit:.3f} s (1 BLAS thread)")
    print(f"data_oob on LocalCluster: {wall:7.2f} s   ideal {ideal:7.2f} s   efficiency {100 * ideal / wall:5.1f}%")
    print(f"fits/s {args.estimators / wall:.2f}  ideal {args.estimators / ideal:.2f}; "
          f"mean OOB count {float(result.counts.mean()):.1f}")


if __name__ == "__main__":
    main()
