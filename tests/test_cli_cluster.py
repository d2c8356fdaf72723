"""A cluster started the way users start one: ``dask scheduler`` and ``dask worker`` processes with a
scheduler file. Runs on it (library and command line, checkpoint on S3) equal the sync scheduler's; with
every worker gone for good the run stops with NoWorkersError and resumes from its checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import dask
import numpy as np
import pytest

from dvl_dask.errors import NoWorkersError
from dvl_dask.valuation import MinUpdates, StoppingCriterion, load_checkpoint, run_until_converged

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _dask_command(*args: str) -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "dask")
    return [exe, *args] if os.path.exists(exe) else [sys.executable, "-m", "dask", *args]


class CommandLineCluster:
    """``dask scheduler`` + ``dask worker`` processes on 127.0.0.1, owned (and stopped) by the tests."""

    def __init__(self, directory) -> None:
        self.file = str(directory / "scheduler.json")
        self.log = open(directory / "cluster.log", "ab")  # closed in stop()
        self.scheduler = self._start(_dask_command("scheduler", "--host", "127.0.0.1", "--port", "0",
                                                   "--dashboard-address", ":0", "--scheduler-file", self.file))
        deadline = time.monotonic() + 60
        while not os.path.exists(self.file):
            if time.monotonic() > deadline or self.scheduler.poll() is not None:
                raise RuntimeError("dask scheduler did not write its scheduler file")
            time.sleep(0.1)
        self.workers: list[subprocess.Popen] = []

    def _start(self, command: list[str]) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        # a session of its own: the worker's nanny and worker process die together in kill_workers()
        return subprocess.Popen(command, stdout=self.log, stderr=self.log, env=env, start_new_session=True)

    def start_workers(self, n: int) -> None:
        for _ in range(n):
            self.workers.append(self._start(_dask_command(
                "worker", "--scheduler-file", self.file, "--nthreads", "1", "--host", "127.0.0.1",
                "--dashboard-address", ":0")))

    def kill_workers(self) -> None:
        for proc in self.workers:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        self.workers.clear()

    def stop(self) -> None:
        self.kill_workers()
        self.scheduler.terminate()
        try:
            self.scheduler.wait(10)
        except subprocess.TimeoutExpired:
            self.scheduler.kill()
            self.scheduler.wait()
        self.log.close()


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory):
    pytest.importorskip("distributed")
    from conftest import service_unavailable

    try:
        cluster = CommandLineCluster(tmp_path_factory.mktemp("cli-cluster"))
    except Exception as exc:  # pragma: no cover - environment dependent
        service_unavailable(f"cannot start dask scheduler: {exc}")
    cluster.start_workers(2)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def wine_utility():
    from dvl_dask import Utility
    from dvl_dask.cli import _load_dataset, _make_model

    return Utility(_make_model("tree"), _load_dataset("wine", 12, 0), "accuracy")


def _client(cluster, n_workers=2):
    from distributed import Client

    client = Client(scheduler_file=cluster.file, set_as_default=False)
    client.wait_for_workers(n_workers, timeout=120)
    return client


def test_run_with_s3_checkpoint_equals_sync(cli_cluster, s3_bucket, wine_utility):
    prefix, options = s3_bucket
    kwargs = dict(seed=0, items_per_block=10, progress=False)
    with dask.config.set(scheduler="sync"):
        reference = run_until_converged("permutation_shapley", wine_utility, stop=MinUpdates(20), **kwargs)
    with _client(cli_cluster) as client:
        got = run_until_converged("permutation_shapley", wine_utility, stop=MinUpdates(20), client=client,
                                  checkpoint=f"{prefix}/lib.zarr", storage_options=options, **kwargs)
    np.testing.assert_array_equal(got["value"].values, reference["value"].values)
    stored = load_checkpoint(f"{prefix}/lib.zarr", storage_options=options)
    np.testing.assert_array_equal(stored["value"].values, reference["value"].values)


def test_command_line_on_the_cluster_equals_sync(cli_cluster, s3_bucket, wine_utility, capsys):
    import json

    from dvl_dask.cli import main
    from dvl_dask.results import open_result

    prefix, options = s3_bucket
    code = main(["value", "--model", "tree", "--method", "permutation_shapley", "--budget", "30", "--seed", "0",
                 "--no-cache",
                 "--scheduler-file", cli_cluster.file, "--checkpoint", f"{prefix}/cli-ck.zarr",
                 "--storage-options", json.dumps(options), "--out", f"{prefix}/cli-values.zarr"])
    assert code == 0
    assert "Connected to tcp://127.0.0.1" in capsys.readouterr().out
    # --budget 30 means 30 permutations, with or without --checkpoint: the fixed-budget method's values
    # (the CLI cuts the budget into whole blocks, here 30 blocks of 1 permutation, the same both ways)
    from dvl_dask.valuation import permutation_shapley

    reference = permutation_shapley(wine_utility, n_permutations=30, seed=0, items_per_block=1).compute(
        scheduler="sync")
    got = open_result(f"{prefix}/cli-values.zarr", storage_options=options).load()
    assert (got["counts"].values == 30).all()
    # the same samples, merged in another order (a tree of merges vs one by one)
    np.testing.assert_allclose(got["value"].values, reference["value"].values, rtol=1e-12, atol=1e-15)


class AfterFirstBlock(StoppingCriterion):
    """Wraps a criterion and sets an event once the first block is merged."""

    def __init__(self, inner, event) -> None:
        self.inner, self.event = inner, event

    def check(self, state):
        self.event.set()
        return self.inner.check(state)


def test_no_workers_for_too_long_then_resume(cli_cluster, tmp_path, wine_utility):
    kwargs = dict(seed=3, items_per_block=4, progress=False)
    stop = MinUpdates(60)
    with dask.config.set(scheduler="sync"):
        reference = run_until_converged("permutation_shapley", wine_utility, stop=stop, **kwargs)
    ck = str(tmp_path / "ck.zarr")
    merged = threading.Event()

    def kill_when_running():
        merged.wait(120)
        cli_cluster.kill_workers()  # nannies included: nobody comes back

    killer = threading.Thread(target=kill_when_running)
    with _client(cli_cluster) as client, \
            dask.config.set({"dvl_dask.valuation.montecarlo.no-workers-timeout": 3,
                             "dvl_dask.valuation.montecarlo.checkpoint-interval": 0.0}):
        killer.start()
        start = time.monotonic()
        with pytest.raises(NoWorkersError, match="no workers for more than 3 s") as info:
            run_until_converged("permutation_shapley", wine_utility, stop=AfterFirstBlock(stop, merged),
                                client=client, checkpoint=ck, **kwargs)
        waited = time.monotonic() - start
        killer.join()
    assert isinstance(info.value, RuntimeError) and "call run_until_converged again" in str(info.value)
    assert waited < 60
    kept = load_checkpoint(ck).attrs["n_blocks"]
    assert kept >= 1
    cli_cluster.start_workers(2)
    with _client(cli_cluster) as client:
        resumed = run_until_converged("permutation_shapley", wine_utility, stop=stop, client=client,
                                      checkpoint=ck, **kwargs)
    np.testing.assert_array_equal(resumed["value"].values, reference["value"].values)
    np.testing.assert_array_equal(resumed["counts"].values, reference["counts"].values)
