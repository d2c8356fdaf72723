"""KNN-Shapley at scale: time and peak memory against the cost of the sorts it cannot avoid.

Run:  .venv/bin/python benchmarks/bench_knn_shapley.py [--n-train 1000000] [--n-test 1000] [--features 32]

Random float32 features (Gaussian), 10 classes, ``KNeighborsClassifier(n_neighbors=5)``,
the threaded scheduler on all cores. The ideal is the work every exact method
must do once per test point, split over the cores: one argsort of the N
distances (float32) plus the distance row itself (one matrix product, measured
as a single GEMM of all test points against all training points, chunked).
Peak memory is the process's maximum resident set size (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def ideal_seconds(x_train: np.ndarray, x_test: np.ndarray, cores: int, sample: int = 20) -> tuple[float, float]:
    """(sort seconds per test point, GEMM seconds for all test points), single-threaded measurements."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        row = x_test[:1] @ x_train.T
        start = time.perf_counter()
        for _ in range(sample):
            np.argsort(row[0])
        sort = (time.perf_counter() - start) / sample
        chunk = x_test[: min(len(x_test), 64)]
        start = time.perf_counter()
        chunk @ x_train.T
        gemm = (time.perf_counter() - start) * len(x_test) / len(chunk)
    return sort, gemm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-train", type=int, default=1_000_000)
    parser.add_argument("--n-test", type=int, default=1_000)
    parser.add_argument("--features", type=int, default=32)
    args = parser.parse_args()

    from sklearn.neighbors import KNeighborsClassifier

    from dvl_dask import Dataset
    from dvl_dask.valuation import knn_shapley

    cores = os.cpu_count() or 1
    rng = np.random.default_rng(0)
    x_train = rng.standard_normal((args.n_train, args.features), dtype=np.float32)
    y_train = rng.integers(0, 10, args.n_train)
    x_test = rng.standard_normal((args.n_test, args.features), dtype=np.float32)
    y_test = rng.integers(0, 10, args.n_test)
    start = time.perf_counter()
    data = Dataset(x_train, y_train, x_test, y_test)
    t_data = time.perf_counter() - start
    base_rss = _peak_rss_gb()

    values = knn_shapley(data, KNeighborsClassifier(n_neighbors=5))
    start = time.perf_counter()
    result = values.value.compute(scheduler="threads", num_workers=cores)
    wall = time.perf_counter() - start
    peak = _peak_rss_gb()

    sort, gemm = ideal_seconds(x_train, x_test, cores)
    ideal = (sort * args.n_test + gemm) / cores
    n_tasks = len([k for k in values.value.data.__dask_graph__() if str(k).startswith("knn-shapley-")])
    print(
        f"n_train={args.n_train:,} n_test={args.n_test:,} features={args.features} float32  "
        f"cores={cores}  tasks={n_tasks}"
    )
    print(f"Dataset construction (fingerprint):  {t_data:7.2f} s")
    print(f"knn_shapley (threads):               {wall:7.2f} s")
    print(
        f"ideal (argsort {sort * 1e3:.1f} ms x n_test + GEMM {gemm:.2f} s) / cores = {ideal:7.2f} s  "
        f"efficiency {100 * ideal / wall:5.1f}%"
    )
    print(
        f"peak RSS {peak:.2f} GB (inputs and fingerprint: {base_rss:.2f} GB; "
        f"the n_train x n_test distance matrix would be {args.n_train * args.n_test * 4 / 2**30:.1f} GB)"
    )
    print(f"sum of values {result.sum():.4f} (= u(N), the mean KNN likelihood of the true label)")


if __name__ == "__main__":
    main()
