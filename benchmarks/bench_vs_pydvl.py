"""dvl_dask against pyDVL on the same cases, measured in one run.

Run:  DVL_DASK_PYDVL_PYTHON=/path/to/python-with-pydvl .venv/bin/python benchmarks/bench_vs_pydvl.py \\
          [--permutations 40] [--workers 2] [--rounds 1]

pyDVL lives in its own environment (its pins differ from dvl_dask's):
``DVL_DASK_PYDVL_PYTHON`` names a Python interpreter that can ``import pydvl``
(e.g. ``python3 -m venv /work/pydvl-venv && /work/pydvl-venv/bin/pip install
"pydvl==0.10.*"``). Without it, or if that interpreter cannot import pyDVL,
the benchmark prints why and exits with status 0.

Case: 100 training points of breast_cancer, 200 test points (the same arrays
for both libraries), StandardScaler + LogisticRegression, accuracy, on
``--workers`` processes with one BLAS thread each:

* plain permutation Monte Carlo, ``--permutations`` permutations: the first
  run on a fresh pool (pyDVL: a fresh interpreter and joblib/loky pool;
  dvl_dask: a fresh 2-worker ``LocalCluster``) and a second, steady-state run;
* TMC: the same with relative truncation ``rtol=0.01`` (pyDVL's
  ``RelativeTruncation(0.01)`` without burn-in, the rule dvl_dask applies);
* a model where warm starts pay: StandardScaler + MLPClassifier(16 hidden,
  adam) on the first ``--mlp-points`` training points, ``--mlp-permutations``
  permutations, pyDVL (cold fits: it has no warm starts) against dvl_dask
  with ``warm_start=True`` (``--mlp-permutations 0`` skips it).

The libraries run one after the other, alternating which goes first in each
round; ratios are dvl_dask / pyDVL wall time (below 1: dvl_dask faster).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_montecarlo import _utility

ENV_VAR = "DVL_DASK_PYDVL_PYTHON"

_PYDVL_SCRIPT = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np
from joblib import parallel_config
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from pydvl.valuation import (Dataset, MinUpdates, ModelUtility, PermutationSampler, RelativeTruncation,
                             ShapleyValuation, SupervisedScorer)

arrays = np.load(sys.argv[1])
n_perm, workers = int(sys.argv[2]), int(sys.argv[3])
mlp_points, mlp_perm = int(sys.argv[4]), int(sys.argv[5])
train = Dataset(arrays["x_train"], arrays["y_train"])
test = Dataset(arrays["x_test"], arrays["y_test"])

def logistic():
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))

def run(label, truncation, model=logistic, data=train, permutations=n_perm):
    utility = ModelUtility(model(), SupervisedScorer("accuracy", test, default=0.0, range=(0.0, 1.0)),
                           catch_errors=True, show_warnings=False)
    sampler = PermutationSampler(truncation=truncation, seed=0)
    # MinUpdates: every point has n_perm marginals, i.e. n_perm permutations (MaxSamples counts
    # (point, prefix) samples, 100 per permutation). Batches still in flight when it stops are discarded.
    valuation = ShapleyValuation(utility, sampler, is_done=MinUpdates(permutations), progress=False)
    start = time.perf_counter()
    with parallel_config(n_jobs=workers):
        valuation.fit(data)
    elapsed = time.perf_counter() - start
    counts = valuation.result.counts
    print(json.dumps({"case": label, "seconds": elapsed, "min_count": int(counts.min()),
                      "max_count": int(counts.max())}), flush=True)

run("plain, first run", None)
run("plain, steady state", None)
run("TMC rtol=0.01", RelativeTruncation(rtol=0.01))
if mlp_perm > 0:
    from sklearn.neural_network import MLPClassifier
    mlp = lambda: make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=500, tol=1e-4, random_state=0))
    run("MLP, warm starts", None, mlp, Dataset(arrays["x_train"][:mlp_points], arrays["y_train"][:mlp_points]),
        mlp_perm)
"""


def _pydvl_python() -> str | None:
    python = os.environ.get(ENV_VAR)
    if not python:
        print(f"[vs pyDVL] skipped: set {ENV_VAR} to a Python interpreter with pyDVL installed "
              f"(e.g. a venv with `pip install \"pydvl==0.10.*\"`).")
        return None
    check = subprocess.run([python, "-c", "import pydvl; print(pydvl.__version__)"], capture_output=True, text=True)
    if check.returncode != 0:
        print(f"[vs pyDVL] skipped: {python} cannot import pydvl ({check.stderr.strip().splitlines()[-1:]})")
        return None
    print(f"[vs pyDVL] pyDVL {check.stdout.strip()} from {python}")
    return python


def _run_pydvl(python: str, arrays: str, n_perm: int, workers: int, mlp: tuple[int, int]) -> dict[str, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([python, "-c", _PYDVL_SCRIPT, arrays, str(n_perm), str(workers), *map(str, mlp)],
                         capture_output=True, text=True, env=env, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {r["case"]: r for r in rows}


def _mlp_utility(n_points: int):
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from dvl_dask import Dataset, Utility

    data = _utility("breast_cancer", 100).data
    small = Dataset(data.x_train[:n_points], data.y_train[:n_points], data.x_test, data.y_test)
    model = make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=500, tol=1e-4, random_state=0))
    return Utility(model, small, "accuracy")


def _run_dvl_dask(n_perm: int, workers: int, mlp: tuple[int, int]) -> dict[str, dict]:
    from distributed import Client, LocalCluster

    from dvl_dask.valuation import permutation_shapley

    utility = _utility("breast_cancer", 100)
    cases = [("plain, first run", utility, 0, n_perm, None, False),
             ("plain, steady state", utility, 1, n_perm, None, False),
             ("TMC rtol=0.01", utility, 2, n_perm, 0.01, False)]
    if mlp[1] > 0:
        cases.append(("MLP, warm starts", _mlp_utility(mlp[0]), 3, mlp[1], None, True))
    results = {}
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        for label, u, seed, permutations, truncation, warm in cases:
            start = time.perf_counter()
            ds = permutation_shapley(u, n_permutations=permutations, seed=seed, truncation=truncation,
                                     warm_start=warm)
            out = client.compute(ds).result()
            elapsed = time.perf_counter() - start
            counts = out["counts"].values
            results[label] = {"case": label, "seconds": elapsed, "min_count": int(counts.min()),
                              "max_count": int(counts.max())}
    return results


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--permutations", type=int, default=40)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--mlp-points", type=int, default=30)
    p.add_argument("--mlp-permutations", type=int, default=6)
    args = p.parse_args()
    python = _pydvl_python()
    if python is None:
        return
    data = _utility("breast_cancer", 100).data
    with tempfile.TemporaryDirectory() as tmp:
        arrays = os.path.join(tmp, "arrays.npz")
        np.savez(arrays, x_train=data.x_train, y_train=data.y_train, x_test=data.x_test, y_test=data.y_test)
        print(f"[vs pyDVL] {args.permutations} permutations of 100 points of breast_cancer, {args.workers} workers, "
              f"load average before: {os.getloadavg()[0]:.1f}")
        for r in range(args.rounds):
            runs = {}
            order = ("pydvl", "dvl_dask") if r % 2 == 0 else ("dvl_dask", "pydvl")
            for lib in order:
                mlp = (args.mlp_points, args.mlp_permutations)
                runs[lib] = (_run_pydvl(python, arrays, args.permutations, args.workers, mlp) if lib == "pydvl"
                             else _run_dvl_dask(args.permutations, args.workers, mlp))
            for case, mine in runs["dvl_dask"].items():
                theirs = runs["pydvl"].get(case)
                if theirs is None:
                    continue
                print(f"[vs pyDVL] round {r + 1} {case:22} pyDVL {theirs['seconds']:7.2f} s   dvl_dask "
                      f"{mine['seconds']:7.2f} s   ratio {mine['seconds'] / theirs['seconds']:5.2f}   "
                      f"(samples per point: pyDVL {theirs['min_count']}-{theirs['max_count']}, "
                      f"dvl_dask {mine['min_count']}-{mine['max_count']})")
        print(f"[vs pyDVL] load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
