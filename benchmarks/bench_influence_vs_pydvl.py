"""DirectInfluence of dvl_dask against pyDVL 0.10 on the MLP of issue 30: speed alone, two at once, agreement.

Run:  DVL_DASK_PYDVL_PYTHON=/work/pydvl-venv/bin/python .venv/bin/python benchmarks/bench_influence_vs_pydvl.py \\
          [--repeats 3] [--threads 2]

pyDVL lives in its own environment (it pins numpy < 2): ``DVL_DASK_PYDVL_PYTHON``
names an interpreter that can ``import pydvl.influence.torch`` (pyDVL 0.10 with
torch and distributed installed). Without it the benchmark prints why and exits 0.

Case (issue 30): the 20-32-32-1 tanh MLP (1,761 parameters) trained by
``bench_block_cg.mlp_problem``, 2,000 training points in batches of 500, the
exact Hessian, regularization 0.01, float32, ``--threads`` torch threads. Each
library, in a fresh process: ``DirectInfluence(...).fit(loader)`` (timed), then the
up-weighting influences of 100 test points on the 2,000 training points (timed).
Both run first alone (``--repeats`` times), then as two processes at once; the
ratio two-at-once / alone is each library's behaviour under contention (the fair
share of two cores is 2x). Agreement: the influences of both libraries against a
float64 dvl_dask reference (relative Frobenius error).

The model's weights and the data are written once by this process and loaded by
both libraries, so they see identical inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ENV_VAR = "DVL_DASK_PYDVL_PYTHON"

# One script for both libraries (argv: library, inputs .pt, output .npy, threads, dtype).
_CASE = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

library, inputs, output, threads, dtype = sys.argv[1:6]
torch.set_num_threads(int(threads))
dtype = getattr(torch, dtype)
saved = torch.load(inputs)
model = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
model.load_state_dict(saved["state"])
model = model.to(dtype)
x, y, x_test, y_test = (saved[k].to(dtype) for k in ("x", "y", "x_test", "y_test"))
if library == "pydvl":
    from pydvl.influence import InfluenceMode
    from pydvl.influence.torch import DirectInfluence
else:
    from dvl_dask.influence import InfluenceMode
    from dvl_dask.influence.torch import DirectInfluence
loader = DataLoader(TensorDataset(x, y), batch_size=500)
start = time.perf_counter()
infl = DirectInfluence(model, F.mse_loss, regularization=0.01).fit(loader)
fit = time.perf_counter() - start
start = time.perf_counter()
values = infl.influences(x_test, y_test, x, y, mode=InfluenceMode.Up)
products = time.perf_counter() - start
np.save(output, values.detach().double().numpy())
print(json.dumps({"fit": fit, "products": products}))
"""


def _inputs(path: Path) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    from bench_block_cg import mlp_problem

    model, _, x, y, x_test, y_test = mlp_problem(2000, 100)
    torch.save({"state": model.state_dict(), "x": x, "y": y, "x_test": x_test, "y_test": y_test}, path)


def _launch(python: str, library: str, inputs: Path, output: Path, threads: int, dtype: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    return subprocess.Popen([python, "-c", _CASE, library, str(inputs), str(output), str(threads), dtype],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _collect(proc: subprocess.Popen) -> dict[str, float]:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"case failed ({proc.returncode}):\n{err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    pydvl_python = os.environ.get(ENV_VAR)
    if not pydvl_python:
        print(f"{ENV_VAR} is not set: no pyDVL interpreter to compare with (see the docstring).")
        return 0
    check = subprocess.run([pydvl_python, "-c", "import pydvl.influence.torch"], capture_output=True, text=True)
    if check.returncode != 0:
        print(f"{pydvl_python} cannot import pydvl.influence.torch:\n{check.stderr[-800:]}")
        return 0
    pythons = {"dvl_dask": sys.executable, "pydvl": pydvl_python}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        inputs = tmp_path / "inputs.pt"
        _inputs(inputs)
        reference = tmp_path / "reference.npy"
        _collect(_launch(sys.executable, "dvl_dask", inputs, reference, args.threads, "float64"))
        exact = np.load(reference)
        rows = {}
        for library, python in pythons.items():
            alone = [_collect(_launch(python, library, inputs, tmp_path / f"{library}.npy", args.threads,
                                      "float32")) for _ in range(args.repeats)]
            values = np.load(tmp_path / f"{library}.npy")
            pair = [_launch(python, library, inputs, tmp_path / f"{library}-{i}.npy", args.threads, "float32")
                    for i in range(2)]
            together = [_collect(proc) for proc in pair]
            rows[library] = (alone, together, float(np.linalg.norm(values - exact) / np.linalg.norm(exact)))
    print(f"DirectInfluence, 20-32-32-1 tanh MLP, 2,000 points (batches of 500), float32, {args.threads} torch "
          f"threads; fit and products (100 x 2,000 influences), median of {args.repeats} alone")
    print(f"{'library':10s} {'fit alone':>10s} {'fit 2 at once':>14s} {'ratio':>6s} {'products':>9s} "
          f"{'rel.err vs float64':>19s}")
    for library, (alone, together, err) in rows.items():
        fit_alone = statistics.median(r["fit"] for r in alone)
        fit_pair = statistics.mean(r["fit"] for r in together)
        products = statistics.median(r["products"] for r in alone)
        print(f"{library:10s} {fit_alone:9.2f}s {fit_pair:13.2f}s {fit_pair / fit_alone:5.2f}x {products:8.2f}s "
              f"{err:19.1e}")
    ours, theirs = (statistics.median(r["fit"] for r in rows[k][0]) for k in ("dvl_dask", "pydvl"))
    print(f"fit alone, dvl_dask / pyDVL: {ours / theirs:.2f} (below 1: dvl_dask faster)")
    print("recorded in benchmarks/README.md ('Influence under contention', side by side with pyDVL)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
