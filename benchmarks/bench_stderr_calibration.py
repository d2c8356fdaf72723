"""Calibration of reported standard errors on real utilities, against exact Shapley values.

Run:  .venv/bin/python benchmarks/bench_stderr_calibration.py [--points 10] [--permutations 30] [--seeds 80]

For 10 points of wine and of breast_cancer (StandardScaler + LogisticRegression,
100 test points, accuracy), exact Shapley values are the truth. Permutation
Shapley with ``--permutations`` permutations is run for ``--seeds`` seeds
(block by block, no scheduler); each run's statistics are finalised twice:
with the plain Wald stderr (``JUMP_FACTOR = 0``) and with dvl_dask's rare-jump
guard (the default ``JUMP_FACTOR``). Printed per case: the share of
(seed, player) pairs whose exact value lies within +-2 stderr (ideal ~0.95),
the mean |z| (0.8 for normal errors), the largest |z| and the mean stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_montecarlo import _utility


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--points", type=int, default=10)
    p.add_argument("--permutations", type=int, default=30)
    p.add_argument("--seeds", type=int, default=80)
    args = p.parse_args()

    import dvl_dask.valuation._stats as stats_module
    from dvl_dask.valuation import exact_shapley
    from dvl_dask.valuation._montecarlo import ESTIMATOR_FACTORIES
    from dvl_dask.valuation._samplers import child_seed
    from dvl_dask.valuation._stats import merge_all

    default = stats_module.JUMP_FACTOR
    per_block = 10
    for loader in ("wine", "breast_cancer"):
        utility = _utility(loader, args.points, n_test=100)
        exact = exact_shapley(utility).compute(scheduler="sync")["value"].values
        runs = []
        for seed in range(args.seeds):
            estimator = ESTIMATOR_FACTORIES["permutation_shapley"](utility)
            root = np.random.SeedSequence(seed)
            blocks = [estimator.block(utility, child_seed(root, b), min(per_block, args.permutations - start), None)
                      for b, start in enumerate(range(0, args.permutations, per_block))]
            runs.append((estimator, merge_all(blocks)))
        for label, factor in (("Wald", 0.0), (f"guarded (JUMP_FACTOR={default:g})", default)):
            stats_module.JUMP_FACTOR = factor
            z, errs = [], []
            for estimator, stats in runs:
                value, stderr, _ = estimator.finalize(stats)
                z.append(np.abs(value - exact) / stderr)
                errs.append(stderr.mean())
            z = np.asarray(z)
            print(f"[calibration] {loader:13} {args.points} points, {args.permutations} permutations, "
                  f"{args.seeds} seeds, {label:26}: +-2 stderr coverage {np.mean(z <= 2):.3f}   "
                  f"mean |z| {z.mean():.3f}   "
                  f"max |z| {z.max():5.2f}   mean stderr {np.mean(errs):.4f}")
        stats_module.JUMP_FACTOR = default


if __name__ == "__main__":
    main()
