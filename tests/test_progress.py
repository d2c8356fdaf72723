"""One progress display (tqdm.auto) for long operations: shown on a terminal or in Jupyter, else silent."""

from __future__ import annotations

import os
import queue
import sys

import dask
import dask.array as da
import numpy as np
import pytest

from dvl_dask._progress import GraphProgress, progress_enabled
from dvl_dask.errors import InvalidParameterError
from dvl_dask.testing.games import AdditiveGame
from dvl_dask.valuation import MaxUpdates, permutation_shapley, run_until_converged

GAME = AdditiveGame([1.0, 2.0, 3.0])


class _Terminal:
    """A stand-in for a terminal's stderr."""

    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass


def test_argument_wins_over_the_option():
    with dask.config.set({"dvl_dask.progress.enabled": False}):
        assert progress_enabled(True) is True
    with dask.config.set({"dvl_dask.progress.enabled": True}):
        assert progress_enabled(False) is False
        assert progress_enabled(None) is True
    with dask.config.set({"dvl_dask.progress.enabled": "never"}):  # as an environment variable gives it
        assert progress_enabled(None) is False


def test_auto_shows_on_a_terminal_only(monkeypatch):
    assert progress_enabled(None) is False  # pytest captures stderr: no terminal
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert progress_enabled(None) is True


def test_bad_option_is_refused():
    with dask.config.set({"dvl_dask.progress.enabled": "sometimes"}), \
            pytest.raises(InvalidParameterError, match=r"dvl_dask\.progress\.enabled"):
        progress_enabled(None)


@pytest.mark.parametrize("option", [False, "auto"])
def test_loop_is_silent_when_disabled_or_redirected(capsys, option):
    with dask.config.set({"dvl_dask.progress.enabled": option}):
        ds = run_until_converged(permutation_shapley, GAME, stop=MaxUpdates(4), seed=0, items_per_block=2)
    np.testing.assert_allclose(ds["value"].values, [1.0, 2.0, 3.0])  # additive: every permutation is exact
    printed = capsys.readouterr()
    assert printed.err == "" and printed.out == ""


def test_loop_on_a_terminal_rewrites_one_line(monkeypatch):
    pytest.importorskip("tqdm")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    run_until_converged(permutation_shapley, GAME, stop=MaxUpdates(4), seed=0, items_per_block=1)
    assert "permutation_shapley" in terminal.text and "100%" in terminal.text
    assert "evaluations" in terminal.text
    assert terminal.text.count("\n") <= 1 and terminal.text.count("\r") >= 2  # updated in place


def test_graph_progress_counts_the_tasks(capsys):
    pytest.importorskip("tqdm")
    x = da.ones(12, chunks=3)
    with GraphProgress("sum", progress=True):
        assert int(x.sum().compute(scheduler="sync")) == 12
    err = capsys.readouterr().err
    assert "sum" in err and "100%" in err
    with GraphProgress("sum", progress=False):
        x.sum().compute(scheduler="sync")
    assert capsys.readouterr().err == ""


KERNEL_CODE = """
import dvl_dask
from dvl_dask.testing.games import AdditiveGame
from dvl_dask.valuation import MaxUpdates, permutation_shapley, run_until_converged
ds = run_until_converged(permutation_shapley, AdditiveGame([1.0, 2.0, 3.0]), stop=MaxUpdates(30), seed=0,
                         items_per_block=1)
print("value", float(ds["value"].sum()))
"""


def _run_in_kernel(code: str) -> list[dict]:
    """The iopub messages (stream, display_data, ...) of running ``code`` in a fresh IPython kernel."""
    from jupyter_client.manager import start_new_kernel

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    km, kc = start_new_kernel(kernel_name="python3", env=env)
    try:
        msg_id = kc.execute(code)
        messages = []
        while True:
            try:
                msg = kc.get_iopub_msg(timeout=60)
            except queue.Empty:
                pytest.fail("the kernel did not finish")
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return messages
            messages.append(msg)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.mark.notebook
@pytest.mark.slow
def test_kernel_run_shows_one_updating_display():
    """In Jupyter the progress is one widget, or one line of text rewritten in place: never stacked lines."""
    pytest.importorskip("tqdm")
    messages = _run_in_kernel(KERNEL_CODE)
    errors = [m["content"] for m in messages if m["msg_type"] == "error"]
    assert not errors, errors
    stdout = "".join(m["content"]["text"] for m in messages
                     if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")
    assert "value 6.0" in stdout
    widgets = [m for m in messages if m["msg_type"] == "display_data"]
    stderr = "".join(m["content"]["text"] for m in messages
                     if m["msg_type"] == "stream" and m["content"]["name"] == "stderr")
    if widgets:  # ipywidgets installed: one widget, updated through comm messages
        assert len(widgets) == 1 and "permutation_shapley" not in stderr
        return
    # Text mode: Jupyter keeps what follows the last carriage return of each line.
    shown = [line.rsplit("\r", 1)[-1] for line in stderr.split("\n") if line.rsplit("\r", 1)[-1].strip()]
    assert len(shown) == 1, shown
    assert "permutation_shapley" in shown[0] and "100%" in shown[0]
    assert stderr.count("\r") >= 2  # it was updated, not printed once at the end
