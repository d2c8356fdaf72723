"""The README quickstart's compute on the threaded and the synchronous scheduler, alternating.

Usage: ``python benchmarks/bench_quickstart_scheduler.py [repeats]`` (default 5). Prints the
load average and, per scheduler, the median and every run in seconds. The result chose the
scheduler of the README quickstart (docs/deployment.md, "Choosing a scheduler").
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import dvl_dask
from dvl_dask.valuation import exact_shapley


def main(repeats: int) -> None:
    data = dvl_dask.Dataset.from_sklearn(load_wine, train_size=8, seed=0, stratify=True)
    utility = dvl_dask.Utility(make_pipeline(StandardScaler(), LogisticRegression()), data, "accuracy")
    exact_shapley(utility).compute(scheduler="sync")  # imports and first-call costs out of the timings
    times: dict[str, list[float]] = {"threads": [], "sync": []}
    for r in range(repeats):
        for scheduler in ("threads", "sync") if r % 2 == 0 else ("sync", "threads"):
            start = time.perf_counter()
            exact_shapley(utility).compute(scheduler=scheduler)
            times[scheduler].append(time.perf_counter() - start)
    print(f"load average {os.getloadavg()}")
    for scheduler, runs in times.items():
        print(f"{scheduler:>8}: median {statistics.median(runs):.2f} s; runs {[round(t, 2) for t in runs]}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
