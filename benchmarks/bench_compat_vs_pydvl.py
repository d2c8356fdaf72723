"""The pyDVL-0.10 script corpus under real pyDVL and under dvl_dask.compat.pydvl: values and wall time.

Run:  DVL_DASK_PYDVL_PYTHON=/work/pydvl-venv/bin/python .venv/bin/python benchmarks/bench_compat_vs_pydvl.py \\
          [--scripts tmc_shapley.py loo.py ...] [--scheduler sync]

Every script of ``tests/compat/scripts`` runs twice, each time in a fresh interpreter
(``benchmarks/compat_script_runner.py``): unchanged under ``DVL_DASK_PYDVL_PYTHON`` (an
interpreter that imports real pyDVL 0.10, installed in its own venv, e.g.
``python3 -m venv /work/pydvl-venv && /work/pydvl-venv/bin/pip install "pydvl==0.10.*"``), and
with ``from pydvl.`` rewritten to ``from dvl_dask.compat.pydvl.`` under this interpreter. The seeds
are the scripts' own, identical in both runs; which library goes first alternates per script. Wall
time is the script's body (imports excluded). pyDVL runs its jobs in-process by default (no
``joblib.parallel_config`` in the scripts); dvl_dask runs on dask's ``--scheduler`` (default
``sync``, the like-for-like setting; ``threads`` is dask's default).

``counts`` is the largest number of samples (updates) of a point, pyDVL/dvl_dask: pyDVL's
``MaxUpdates(m)`` stops as soon as one point has ``m``; dvl_dask checks its criteria between blocks of
evaluations (``dvl_dask.valuation.montecarlo.evaluations-per-block``), so it can run past ``m``.

Comparison, per script, after aligning both results by index:

* ``exact``: the method has one answer for the data (exact Shapley, LOO, KNN-Shapley, exact least
  core): the largest absolute difference must be at most 1e-8.
* ``MC``: a Monte Carlo estimate; the two libraries draw different random streams from the same
  seed, so values agree only statistically: ``z = |a - b| / sqrt(se_a^2 + se_b^2)`` with each
  library's own standard error ``sqrt(variance / count)``; the row agrees when the largest ``z`` is
  at most 3 (``Z_AGREE``). Points where both standard errors are 0 must agree to 1e-8.
* ``MC, no stderr``: a randomised method whose result carries no variances (Data-OOB's bootstrap,
  group testing, Monte Carlo least core, data utility learning): only the largest absolute
  difference is printed, next to the value range, and the row is marked ``see README``.

Without ``DVL_DASK_PYDVL_PYTHON``, or if it cannot import pyDVL, the benchmark says why and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

ENV_VAR = "DVL_DASK_PYDVL_PYTHON"
ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "tests" / "compat" / "scripts"
RUNNER = Path(__file__).resolve().parent / "compat_script_runner.py"
EXACT_ATOL = 1e-8
Z_AGREE = 3.0

EXACT = {"shapley_exact.py", "loo.py", "knn_shapley.py", "knn_shapley_regression.py", "exact_least_core.py",
         "least_core.py"}
NO_STDERR = {"data_oob.py", "group_testing.py", "montecarlo_least_core.py", "data_utility_learning.py"}


def _pydvl_python() -> str | None:
    python = os.environ.get(ENV_VAR)
    if not python:
        print(f"[compat vs pyDVL] skipped: set {ENV_VAR} to a Python interpreter with pyDVL 0.10 installed.")
        return None
    check = subprocess.run([python, "-c", "import pydvl; print(pydvl.__version__)"], capture_output=True, text=True)
    if check.returncode != 0:
        print(f"[compat vs pyDVL] skipped: {python} cannot import pydvl ({check.stderr.strip().splitlines()[-1:]})")
        return None
    print(f"[compat vs pyDVL] pyDVL {check.stdout.strip()} from {python}")
    return python


def _run(python: str, script: Path, library: str, scheduler: str) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "DASK_SCHEDULER": scheduler}
    if library == "dvl_dask":
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = subprocess.run([python, str(RUNNER), str(script), library], capture_output=True, text=True, env=env)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": last}
    return json.loads(lines[-1])


def _aligned(run: dict[str, Any]) -> tuple[np.ndarray, ...]:
    order = np.argsort(np.asarray(run["indices"]))
    arrays = [np.asarray(run[k], dtype=float)[order] for k in ("values", "variances", "counts")]
    return (np.asarray(run["indices"])[order], *arrays)


def compare(script: str, theirs: dict[str, Any], mine: dict[str, Any]) -> tuple[str, str, bool]:
    """Kind of comparison, its statistic as text, and whether the two results agree."""
    idx_a, va, var_a, n_a = _aligned(theirs)
    idx_b, vb, var_b, n_b = _aligned(mine)
    if idx_a.tolist() != idx_b.tolist():
        return "indices", "different indices", False
    diff = np.abs(va - vb)
    both_nan = np.isnan(va) & np.isnan(vb)
    diff[both_nan] = 0.0
    if script in EXACT:
        return "exact", f"max |diff| {np.nanmax(diff):.1e}", bool(np.all(diff <= EXACT_ATOL))
    if script in NO_STDERR:
        spread = np.nanmax(np.abs(np.concatenate([va, vb])))
        return "MC, no stderr", f"max |diff| {np.nanmax(diff):.3f} (max |value| {spread:.3f})", False
    se = np.sqrt(np.nan_to_num(var_a) / np.maximum(n_a, 1) + np.nan_to_num(var_b) / np.maximum(n_b, 1))
    degenerate = se == 0
    z = np.where(degenerate, 0.0, diff / np.where(degenerate, 1.0, se))
    exact_part = bool(np.all(diff[degenerate] <= EXACT_ATOL))
    worst = float(np.max(z))
    note = f"max z {worst:.2f}" + ("" if exact_part else ", zero-stderr points differ")
    return "MC", note, worst <= Z_AGREE and exact_part


def _max_count(run: dict[str, Any]) -> int:
    return int(np.nanmax(np.asarray(run["counts"], dtype=float)))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scripts", nargs="*", default=None, help="script names (default: all of tests/compat/scripts)")
    p.add_argument("--scheduler", default="sync", help="dask scheduler for dvl_dask (sync, threads, processes)")
    args = p.parse_args()
    python = _pydvl_python()
    if python is None:
        return
    scripts = sorted(SCRIPTS.glob("*.py")) if not args.scripts else [SCRIPTS / s for s in args.scripts]
    print(f"[compat vs pyDVL] {len(scripts)} scripts, dvl_dask on dask's {args.scheduler!r} scheduler, "
          f"load average before: {os.getloadavg()[0]:.1f}")
    print(f"{'script':34} {'pyDVL s':>8} {'dvl_dask s':>10} {'ratio':>6}  {'counts':>11}  {'kind':14} "
          f"{'comparison':40} agree")
    for i, script in enumerate(scripts):
        order = ("pydvl", "dvl_dask") if i % 2 == 0 else ("dvl_dask", "pydvl")
        runs = {lib: _run(python if lib == "pydvl" else sys.executable, script, lib, args.scheduler) for lib in order}
        theirs, mine = runs["pydvl"], runs["dvl_dask"]
        if "error" in theirs or "error" in mine:
            print(f"{script.name:34} pyDVL: {theirs.get('error', 'ok')} | dvl_dask: {mine.get('error', 'ok')}")
            continue
        kind, note, agree = compare(script.name, theirs, mine)
        verdict = "yes" if agree else ("see README" if kind == "MC, no stderr" else "NO")
        ratio = mine["seconds"] / theirs["seconds"]
        counts = f"{_max_count(theirs)}/{_max_count(mine)}"
        print(f"{script.name:34} {theirs['seconds']:8.2f} {mine['seconds']:10.2f} {ratio:6.2f}  {counts:>11}  "
              f"{kind:14} {note:40} {verdict}", flush=True)
    print(f"[compat vs pyDVL] load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
