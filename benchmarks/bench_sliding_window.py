"""The sliding window of run_until_converged: throughput against worker threads, and per-block overhead.

Run:  .venv/bin/python benchmarks/bench_sliding_window.py [--threads 1 2 4 8 16 32] [--seconds 4]

1. Throughput. A game whose every evaluation sleeps ``--sleep`` ms (the GIL
   is released, so threads scale like independent machines would) on a
   process ``LocalCluster`` of 1 to 32 threads (up to 4 workers). The ideal is
   ``threads / sleep`` evaluations per second; each run is sized to take about
   ``--seconds`` seconds at the ideal rate. Busy is the sum of the blocks'
   worker-side compute time over ``threads x wall``.
2. Per-block overhead on a real model: permutation Shapley, StandardScaler +
   LogisticRegression on 100 points of breast_cancer, 2 workers x 1 thread,
   default block size. The overhead of a block is the idle gap on its worker
   thread between the previous block's end and its start (scheduler, transfer,
   the loop's merge and submit); reported as a fraction of the blocks' compute
   time (target < 1%).
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

from dvl_dask.testing.games import AdditiveGame


class SleepGame(AdditiveGame):
    """An additive game whose evaluations sleep ``delay`` seconds."""

    def __init__(self, n: int, delay: float) -> None:
        self.delay = delay
        super().__init__(np.linspace(0.0, 1.0, n))

    def value(self, players):
        time.sleep(self.delay)
        return super().value(players)


def _block_tasks(stream):
    return [t for t in stream.data if "-block-" in t["key"]]


def _compute_spans(tasks):
    return [(t["worker"], s["start"], s["stop"]) for t in tasks for s in t["startstops"] if s["action"] == "compute"]


def throughput(threads_list: list[int], sleep_ms: float, seconds: float) -> None:
    from distributed import Client, LocalCluster, get_task_stream

    from dvl_dask.valuation import MaxEvaluations, permutation_shapley, run_until_converged

    delay = sleep_ms / 1000
    n = 20  # 21 evaluations a permutation
    print(f"[throughput] sleep-based game: {sleep_ms:g} ms an evaluation, {n} players; window = 2 x threads")
    print(f"[throughput] {'threads':>7} {'evals':>7} {'wall s':>7} {'evals/s':>9} {'ideal/s':>9} "
          f"{'efficiency':>10} {'busy':>6}")
    for threads in threads_list:
        workers = min(threads, 4)
        with LocalCluster(n_workers=workers, threads_per_worker=threads // workers, processes=True,
                          dashboard_address=":0", host="127.0.0.1") as cluster, Client(cluster) as client:
            game = SleepGame(n, delay)
            ideal = threads / delay
            # a block of ~0.5 s of one thread's work; the run takes about `seconds` at the ideal rate
            per_block = max(1, int(0.5 / (delay * (n + 1))))
            budget = int(ideal * seconds)
            run_until_converged(permutation_shapley, game, stop=MaxEvaluations(2 * threads * per_block * (n + 1)),
                                client=client, seed=1, items_per_block=per_block, progress=False)  # warm-up
            with get_task_stream(client) as stream:
                start = time.time()
                ds = run_until_converged(permutation_shapley, game, stop=MaxEvaluations(budget), client=client,
                                         seed=0, items_per_block=per_block, progress=False)
                wall = time.time() - start
            busy = sum(b - a for _, a, b in _compute_spans(_block_tasks(stream))) / (threads * wall)
            rate = ds.attrs["n_evaluations"] / wall
            print(f"[throughput] {threads:>7} {ds.attrs['n_evaluations']:>7} {wall:>7.2f} {rate:>9.0f} "
                  f"{ideal:>9.0f} {rate / ideal:>10.1%} {busy:>6.1%}")


def overhead(n_permutations: int) -> None:
    from distributed import Client, LocalCluster, get_task_stream
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from dvl_dask import Dataset, Utility
    from dvl_dask.valuation import MinUpdates, permutation_shapley, run_until_converged

    data = Dataset.from_sklearn(load_breast_cancer, train_size=100 / 569, seed=0, stratify=True)
    data = Dataset(data.x_train, data.y_train, data.x_test[:200], data.y_test[:200], data_names=data.data_names)
    utility = Utility(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), data, "accuracy")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        run_until_converged(permutation_shapley, utility, stop=MinUpdates(6), client=client, seed=1,
                            progress=False)  # warm-up: imports and the utility on both workers
        with get_task_stream(client) as stream:
            start = time.time()
            ds = run_until_converged(permutation_shapley, utility, stop=MinUpdates(n_permutations), client=client,
                                     seed=0, progress=False)
            wall = time.time() - start
    spans = _compute_spans(_block_tasks(stream))
    compute = sum(b - a for _, a, b in spans)
    gaps = []
    for worker in {w for w, _, _ in spans}:
        mine = sorted((a, b) for w, a, b in spans if w == worker)
        gaps += [max(0.0, nxt[0] - prev[1]) for prev, nxt in itertools.pairwise(mine)]
    n_blocks = ds.attrs["n_blocks"]
    per_block = compute / len(spans)
    print(f"[overhead] 100 points of breast_cancer, LogisticRegression, 2 workers x 1 thread: {n_blocks} blocks of "
          f"{ds.attrs['n_evaluations'] // n_blocks} evaluations, {per_block:.2f} s each, wall {wall:.1f} s")
    print(f"[overhead] idle gap between consecutive blocks on a worker: mean {np.mean(gaps) * 1e3:.2f} ms, "
          f"max {np.max(gaps) * 1e3:.2f} ms = {np.sum(gaps) / compute:.3%} of the compute time (target < 1%)")
    print(f"[overhead] busy {compute / (2 * wall):.1%} of 2 threads x wall (ramp-up and the last block included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--sleep", type=float, default=2.0, help="ms an evaluation sleeps")
    parser.add_argument("--seconds", type=float, default=4.0, help="ideal duration of each throughput run")
    parser.add_argument("--permutations", type=int, default=40, help="permutations of the overhead run")
    args = parser.parse_args()
    throughput(args.threads, args.sleep, args.seconds)
    overhead(args.permutations)


if __name__ == "__main__":
    main()
