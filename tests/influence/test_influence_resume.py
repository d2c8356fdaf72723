"""influence_to_zarr killed (SIGKILL) mid-write resumes in a fresh process and keeps the finished blocks.

The fitted torch model must have the same identity in every process (class, hyper-parameters,
module contents and fitted state, by value), or the resumed run would refuse the store
("differs in: token") and only ``overwrite=True`` -- recomputing everything -- would help.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dvl_dask import open_influence  # noqa: E402
from dvl_dask.results._stores import zarr_store  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

CHILD = Path(__file__).with_name("_resume_child.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
N_BLOCKS = 10


def _child_module():
    spec = importlib.util.spec_from_file_location("_resume_child", CHILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env(log: Path, delay: float) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update({"DVL_BLOCK_LOG": str(log), "DVL_BLOCK_DELAY": str(delay), "OMP_NUM_THREADS": "1"})
    return env


def _args(kind: str, url: str, options: dict | None) -> list[str]:
    return [sys.executable, str(CHILD), kind, url] + ([json.dumps(options)] if options else [])


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _kill_mid_write(kind: str, url: str, options: dict | None, log: Path) -> None:
    """Start a slow write and SIGKILL it once a few blocks are finished."""
    proc = subprocess.Popen(_args(kind, url, options), env=_env(log, 0.5), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while _lines(log) < 4:  # the 4th block started: the first 3 are written and marked done
            if proc.poll() is not None:
                raise AssertionError(f"the child ended before it was killed: {proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                raise AssertionError("the child wrote no blocks in time")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _done(url: str, options: dict | None) -> int:
    import zarr

    group = zarr.open_group(zarr_store(url, options, read_only=True), mode="r", zarr_format=3)
    return int((np.asarray(group["_dvl_progress"]["done"][...]) > 0).sum())


def _kill_and_resume(kind: str, url: str, options: dict | None, tmp_path: Path) -> None:
    _kill_mid_write(kind, url, options, tmp_path / "killed.log")
    done = _done(url, options)
    assert 3 <= done < N_BLOCKS
    with pytest.raises(Exception, match="incomplete"):
        open_influence(url, storage_options=options)

    resumed_log = tmp_path / "resumed.log"
    run = subprocess.run(_args(kind, url, options), env=_env(resumed_log, 0.0), capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0 and "complete" in run.stdout, run.stderr
    # Only the blocks the killed run had not finished were computed again.
    assert _lines(resumed_log) == N_BLOCKS - done

    expected = _child_module().influences(kind).compute(scheduler="sync")  # a clean computation, here
    stored = open_influence(url, storage_options=options)
    np.testing.assert_allclose(stored.values, expected.values, rtol=1e-10, atol=1e-12)
    assert stored.attrs["model"] == "Counted"


#: One kill and resume takes two fresh processes (about 14 s). ``direct`` here and ``ekfac`` on S3
#: run in every test run; every kind's model identity across processes is checked below by
#: ``test_every_kind_has_the_same_token_in_fresh_processes``; the other kinds' full runs are long.
LONG = pytest.mark.long


@pytest.mark.parametrize(
    "kind", ["direct", pytest.param("cg", marks=LONG), pytest.param("arnoldi", marks=LONG),
             pytest.param("ekfac", marks=LONG)],
)
def test_sigkill_mid_write_resumes_locally(kind, tmp_path):
    _kill_and_resume(kind, str(tmp_path / f"{kind}.zarr"), None, tmp_path)


def test_every_kind_has_the_same_token_in_fresh_processes():
    """What a resume of each kind needs: the fitted model's token does not depend on the process."""
    seeds = ("1", "2")
    procs = [subprocess.Popen([sys.executable, str(CHILD), "tokens"], env={**_env(Path(os.devnull), 0.0),
                              "PYTHONHASHSEED": seed}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in seeds]  # started together: the two interpreters start in parallel
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in outputs]
    first, second = (json.loads(out) for out, _ in outputs)
    assert first == second
    assert sorted(first) == ["arnoldi", "cg", "direct", "ekfac"]
    assert len(set(first.values())) == 4  # and each kind has its own


@pytest.mark.s3
def test_sigkill_mid_write_resumes_on_s3(s3_bucket, tmp_path):
    prefix, options = s3_bucket
    _kill_and_resume("ekfac", f"{prefix}/influences.zarr", options, tmp_path)


def test_same_fitted_model_same_token_other_fit_other_token():
    from dvl_dask.keys import object_token

    child = _child_module()
    model, (_, _, x, y) = child.problem("direct")
    again, _ = child.problem("direct")
    assert object_token(model) == object_token(again)
    refit = child.problem("direct")[0].fit((x[:20], y[:20]))  # the same hyper-parameters, other training data
    assert object_token(refit) != object_token(model)
    other = child.counted(child.DirectInfluence)(model.model, model.loss, regularization=0.5).fit((x, y))
    assert object_token(other) != object_token(model)
