"""Warm starts along a permutation: when they pay.

Run:  .venv/bin/python benchmarks/bench_warm_start.py [--permutations 1] [--points 100]

``permutation_shapley(..., warm_start=True)`` fits each prefix of a
permutation starting from the previous prefix's model (sklearn
``warm_start=True``). Consecutive prefixes differ by one point, so an
iterative solver starts next to its optimum and needs fewer iterations. It
pays for models whose fit is many iterations of an optimiser (MLP, SGD,
logistic regression with lbfgs); it cannot pay for closed-form or
non-iterative models (trees, naive Bayes, least squares, KNN), which have no
``warm_start`` or ignore it.

For each model: CPU time of this thread (``time.thread_time``, so the ratios
hold on a loaded machine) of one Monte Carlo block of ``--permutations``
permutations of ``--points`` points of breast_cancer (200 test points,
accuracy), cold versus warm-started, and the mean |difference| of the
marginal contributions (warm-started fits are slightly different models).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_montecarlo import _utility


def _models():
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "LogisticRegression (lbfgs)": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        "SGDClassifier (log loss)": make_pipeline(
            StandardScaler(), SGDClassifier(loss="log_loss", max_iter=1000, tol=1e-4, random_state=0)),
        "MLPClassifier (16 hidden, adam)": make_pipeline(
            StandardScaler(), MLPClassifier((16,), max_iter=500, tol=1e-4, random_state=0)),
    }


def main() -> None:
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from dvl_dask import Utility
    from dvl_dask.valuation._estimators import PermutationEstimator, run_block
    from dvl_dask.valuation._samplers import PermutationSampler
    from dvl_dask.valuation._truncation import NoTruncation

    p = argparse.ArgumentParser()
    p.add_argument("--permutations", type=int, default=1)
    p.add_argument("--points", type=int, default=100)
    args = p.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)
    base = _utility("breast_cancer", args.points)
    seed = np.random.SeedSequence(0)
    print(f"[warm start] {args.permutations} permutation(s) of {args.points} points of breast_cancer, "
          "thread CPU time per block")
    for label, model in _models().items():
        utility = Utility(model, base.data, "accuracy")
        times, marginals = {}, {}
        for warm in (False, True):
            estimator = PermutationEstimator(PermutationSampler(), NoTruncation(), warm_start=warm)
            run_block(utility, estimator, seed, 1)  # warm the process (template, checks, imports)
            start = time.thread_time()
            stats = run_block(utility, estimator, seed, args.permutations)
            times[warm] = time.thread_time() - start
            marginals[warm] = stats.mean[0]
        diff = np.abs(marginals[True] - marginals[False]).mean()
        print(f"[warm start] {label:32} cold {times[False]:7.2f} s   warm {times[True]:7.2f} s   "
              f"speed-up {times[False] / times[True]:5.2f}x   mean |marginal difference| {diff:.4f}")


if __name__ == "__main__":
    main()
