"""Where the time of a Monte Carlo block goes: per-evaluation costs against a bare fit.

Run:  .venv/bin/python benchmarks/bench_evaluation_overhead.py [--repeats 3]

Case: 100 training points of breast_cancer, 200 test points, StandardScaler +
LogisticRegression, accuracy (the case of bench_montecarlo.py). Every figure
is *CPU time of this thread* (``time.thread_time``), the median of
``--repeats`` interleaved rounds, and is printed as a ratio to the bare
``clone + fit + sklearn scorer`` measured in the same round, so the figures
hold on a machine shared with other jobs (absolute times there are inflated).

Parts:

1. Components of one evaluation (on the coalitions of two permutations).
2. A whole permutation block (``run_block``) per evaluation, and a TMC block
   with the cost of each truncation check.
3. First-task costs on a fresh process: imports, unpickling the utility,
   the BLAS thread-limit controller, the first fit.
"""

from __future__ import annotations

import argparse
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_montecarlo import _utility

T = time.thread_time


def _per_call(fn, items, loops: int = 1) -> float:
    fn(items[0])
    start = T()
    for _ in range(loops):
        for item in items:
            fn(item)
    return (T() - start) / (loops * len(items))


def components(repeats: int) -> None:
    import sklearn
    from sklearn.base import clone
    from sklearn.metrics import get_scorer

    from dvl_dask.validation import check_coalition

    u = _utility("breast_cancer", 100)
    d = u.data
    x, y, xt, yt = d.x_train, d.y_train, d.x_test, d.y_test
    model, scorer = u.model, get_scorer("accuracy")
    rng = np.random.default_rng(0)
    prefixes = [np.sort(p[:k]) for p in (rng.permutation(100) for _ in range(2)) for k in range(2, 101)]
    prefixes = [p for p in prefixes if np.unique(y[p]).size == 2]
    fitted = clone(model).fit(x, y)
    blob = pickle.dumps(clone(model))

    def bare(p):
        m = clone(model)
        m.fit(x[p], y[p])
        return scorer(m, xt, yt)

    def fit_checked(p):
        model_copy = pickle.loads(blob)
        with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
            model_copy.fit(x[p], y[p])

    rows = {
        "bare clone + fit + sklearn accuracy scorer": bare,
        "dvl_dask Utility call": u,
        "  sklearn.base.clone": lambda p: clone(model),
        "  unpickle the unfitted template (dvl_dask)": lambda p: pickle.loads(blob),
        "  fit (default sklearn checks)": lambda p: model.fit(x[p], y[p]),
        "  fit, checks skipped once passed (dvl_dask) + unpickle": fit_checked,
        "  sklearn accuracy scorer": lambda p: scorer(fitted, xt, yt),
        "  predict + mean(pred == y) (dvl_dask)": lambda p: u.scorer(fitted, xt, yt),
        "  check_coalition": lambda p: check_coalition(p, 100),
        "  label check np.unique(y[rows])": lambda p: np.unique(y[p]).size,
        "  slice training rows x[rows], y[rows]": lambda p: (x[p], y[p]),
        "  sklearn.config_context enter + exit": lambda p: sklearn.config_context(assume_finite=True).__enter__(),
    }
    loops = {"  check_coalition": 10, "  label check np.unique(y[rows])": 10,
             "  slice training rows x[rows], y[rows]": 10, "  sklearn.config_context enter + exit": 10}
    times: dict[str, list[float]] = {k: [] for k in rows}
    ratios: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(repeats):
        base = _per_call(bare, prefixes)
        for label, fn in rows.items():
            t = base if fn is bare else _per_call(fn, prefixes, loops.get(label, 1))
            times[label].append(t)
            ratios[label].append(t / base)
    print(f"[components] {len(prefixes)} coalitions, thread CPU time, median of {repeats} rounds")
    for label in rows:
        print(f"[components] {label:56} {np.median(times[label]) * 1e6:9.1f} us  "
              f"{np.median(ratios[label]):6.3f} x bare")


def blocks(repeats: int) -> None:
    from sklearn.base import clone
    from sklearn.metrics import get_scorer

    from dvl_dask.valuation._estimators import PermutationEstimator, run_block
    from dvl_dask.valuation._samplers import PermutationSampler
    from dvl_dask.valuation._stats import PointStats
    from dvl_dask.valuation._truncation import NoTruncation, RelativeTruncation

    u = _utility("breast_cancer", 100)
    d = u.data
    scorer = get_scorer("accuracy")
    rng = np.random.default_rng(2)
    prefixes = [np.sort(rng.choice(100, size=k, replace=False)) for k in rng.integers(10, 101, size=100)]

    def bare(p):
        m = clone(u.model)
        m.fit(d.x_train[p], d.y_train[p])
        return scorer(m, d.x_test, d.y_test)

    plain = PermutationEstimator(PermutationSampler(), NoTruncation())
    tmc = PermutationEstimator(PermutationSampler(), RelativeTruncation(0.01))
    seed = np.random.SeedSequence(0)
    run_block(u, plain, seed, 1)  # warm: thread-limit controller, template, checks
    rows: dict[str, list[float]] = {"plain block": [], "TMC block": []}
    for _ in range(repeats):
        base = _per_call(bare, prefixes)
        for label, est in (("plain block", plain), ("TMC block", tmc)):
            start = T()
            stats = run_block(u, est, seed, 2)
            rows[label].append((T() - start) / stats.n_evaluations / base)
    for label, r in rows.items():
        print(f"[blocks] {label:12} (2 permutations): {np.median(r):.3f} x bare per evaluation")
    check = tmc.truncation.stop_after
    start = T()
    for step in range(1, 100_001):
        check(step % 100 + 1, 100, 0.9, 0.95)
    per_check = (T() - start) / 100_000
    print(f"[blocks] one RelativeTruncation check: {per_check * 1e9:.0f} ns = {per_check / base:.2e} x bare fit")
    marg = rng.normal(size=(4, 100))
    start = T()
    for _ in range(1000):
        PointStats.from_samples(marg, np.ones_like(marg, dtype=bool), 404).merge(PointStats.zeros(100))
    per_block = (T() - start) / 1000
    print(f"[blocks] statistics of a 4-permutation block (from_samples + merge): {per_block * 1e6:.0f} us "
          f"= {per_block / (404 * base):.2e} x its 404 bare fits")


_FIRST = r"""
import pickle, sys, time
T = time.perf_counter
t0 = T()
import dvl_dask, sklearn.linear_model, sklearn.pipeline, sklearn.preprocessing  # noqa
t1 = T()
u = pickle.loads(sys.stdin.buffer.read())
t2 = T()
from dvl_dask.threads import blas_limits
with blas_limits():
    pass
t3 = T()
import numpy as np
u(np.arange(100))
t4 = T()
u(np.arange(99))
t5 = T()
print(f"{t1-t0:.4f} {t2-t1:.4f} {t3-t2:.4f} {t4-t3:.4f} {t5-t4:.4f}")
"""


def first_task() -> None:
    u = _utility("breast_cancer", 100)
    blob = pickle.dumps(u)
    out = subprocess.run([sys.executable, "-c", _FIRST], input=blob, capture_output=True, check=True)
    imports, unpickle, limits, first, second = (float(v) for v in out.stdout.split())
    print(f"[first task] fresh process (wall clock, loaded machine): imports {imports * 1e3:.0f} ms, "
          f"unpickle utility ({len(blob) / 1e3:.0f} kB) {unpickle * 1e3:.1f} ms, BLAS limit controller "
          f"{limits * 1e3:.1f} ms, first evaluation {first * 1e3:.1f} ms, second {second * 1e3:.1f} ms")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    components(args.repeats)
    blocks(args.repeats)
    first_task()


if __name__ == "__main__":
    main()
