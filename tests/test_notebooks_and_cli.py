"""Every notebook executes, and the command line runs end to end."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

from dvl_dask.cli import main
from dvl_dask.results import open_result

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))

#: The notebooks read ``DVL_DASK_NOTEBOOK_SCALE`` (default 1) and multiply their sample budgets or
#: training-set sizes by it (for a quick look); the tests run them as a user does, at 1.


#: Notebooks that draw figures, and how many each shows inline at least.
FIGURES = {"02_distributed_convergence.ipynb": 1, "04_compare_methods.ipynb": 2}


def _images(nb) -> int:
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    return sum("image/png" in o.get("data", {}) for o in outputs)


def _check_outputs(nb, name: str) -> None:
    """Every code cell ran, and the figures are inline PNGs."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), f"{name}: a code cell has not been executed"
    assert any(c.get("outputs") for c in code), f"{name}: no outputs"
    assert _images(nb) >= FIGURES.get(name, 0), f"{name}: {_images(nb)} inline figures"


def _noisy(nb) -> list[str]:
    """Log or warning text in the outputs (e.g. distributed's "Worker process still alive ... killing")."""
    streams = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "stream"]
    return [o.text for o in streams if re.search(r"WARNING|Warning|still alive|killing|Traceback", o.text)]


def _execute(path: pathlib.Path, tmp_path: pathlib.Path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    return nb


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_are_documentation(path):
    """Committed executed (``make notebooks``), figures inline, no backend forced, requirements stated first."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    _check_outputs(nb, path.name)
    assert not any("matplotlib.use(" in c.source for c in nb.cells if c.cell_type == "code")
    assert nb.cells[0].cell_type == "markdown" and "**Requirements:**" in nb.cells[0].source
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert not _noisy(nb), f"{path.name}: warning text in the outputs: {_noisy(nb)}"
    # streams are coalesced (make notebooks' second pass): one progress bar is one output, not a line per update
    per_cell = [sum(o.output_type == "stream" and o.name == "stderr" for o in c.get("outputs", []))
                for c in nb.cells if c.cell_type == "code"]
    assert max(per_cell, default=0) <= 1, f"{path.name}: stderr outputs not coalesced: {per_cell}"


# One run per notebook, at full size, in ``make test-long``: the quick runs (``DVL_DASK_NOTEBOOK_SCALE=0.1``)
# that ``make test`` used to add ran the same cells a second time (58 s of its serial phase). Each notebook
# starts a process cluster whose ``close()`` has a deadline (distributed's nanny gives a worker 5 s to exit):
# beside three xdist workers and their clusters on two cores, 2 of 4 runs on 2026-12-07 missed it; on the two
# workers of ``make test-long``, at most two at once, none has.
@pytest.mark.notebook
@pytest.mark.long
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes_at_full_size(path, tmp_path, monkeypatch):
    """The notebooks as a user runs them (``make test-long``): every cell runs, the figures are inline, no
    warning text; their outputs are what the docs show."""
    import nbformat

    monkeypatch.delenv("DVL_DASK_NOTEBOOK_SCALE", raising=False)
    nb = _execute(path, tmp_path)
    _check_outputs(nb, path.name)
    assert not _noisy(nb), f"{path.name}: warning text in the outputs: {_noisy(nb)}"
    # The executed copy (gitignored build/) is what `make docs` renders, outputs included.
    executed = path.parents[1] / "build" / "notebooks"
    executed.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, executed / path.name)


def test_there_are_notebooks():
    assert any(p.name == "01_quickstart.ipynb" for p in NOTEBOOKS)


def test_cli_value_writes_result(tmp_path, capsys):
    out = tmp_path / "v.zarr"
    code = main(
        ["value", "--dataset", "iris", "--model", "knn", "--method", "exact_shapley", "--n-points", "6",
         "--scheduler", "sync", "--out", str(out), "--top", "2"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "Most valuable 2" in printed and "Least valuable 2" in printed
    ds = open_result(out)
    assert ds.sizes["sample"] == 6 and ds.attrs["method"] == "exact_shapley"


def test_cli_monte_carlo_method(tmp_path, capsys):
    out = tmp_path / "mc.zarr"
    code = main(["value", "--dataset", "iris", "--model", "knn", "--method", "permutation_shapley", "--budget", "20",
                 "--n-points", "10", "--scheduler", "threads", "--out", str(out)])
    assert code == 0
    ds = open_result(out)
    assert ds.attrs["method"] == "permutation_shapley" and ds.dvl.parameters["n_permutations"] == 20
    assert (ds["counts"].values == 20).all()


def test_cli_reports_bad_input(capsys):
    assert main(["value", "--n-points", "1", "--scheduler", "sync"]) == 2
    assert "--n-points" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["value", "--method", "nonsense"])


@pytest.mark.distributed
@pytest.mark.slow
def test_cli_demo_on_local_cluster(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--n-points", "8", "--plot", "values.png"]) == 0
    printed = capsys.readouterr().out
    assert "Sum of values" in printed
    assert open_result(tmp_path / "values.zarr").sizes["sample"] == 8
    assert (tmp_path / "values.png").stat().st_size > 1000


def test_cli_evaluate_stored_result(tmp_path, capsys):
    out = tmp_path / "loo.zarr"
    common = ["--dataset", "iris", "--model", "knn", "--n-points", "12", "--scheduler", "sync"]
    assert main(["value", *common, "--method", "loo", "--out", str(out)]) == 0
    names = open_result(out)["sample"].values.astype(str)
    capsys.readouterr()
    plot = tmp_path / "curve.png"
    code = main(["evaluate", *common, "--result", str(out), "--steps", "3", "--n-random", "2",
                 "--corrupted", f"{names[0]},{names[1]}", "--plot", str(plot)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Removal curve of loo values" in printed and "Weighted accuracy drop" in printed
    assert "roc_auc" in printed and plot.stat().st_size > 1000
    assert main(["evaluate", *common, "--result", str(out), "--corrupted", "nobody"]) == 2
    assert "not in the result" in capsys.readouterr().err


def test_cli_version_and_defaults_in_help(capsys):
    from dvl_dask import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["value", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: wine)" in text and "(default: 200)" in text and "(default: values.zarr)" in text


def test_cli_budget_means_the_same_with_and_without_checkpoint(tmp_path):
    common = ["value", "--dataset", "iris", "--model", "knn", "--method", "permutation_shapley", "--budget", "6",
              "--n-points", "5", "--seed", "4", "--scheduler", "sync", "--top", "1"]
    plain, checkpointed = tmp_path / "plain.zarr", tmp_path / "ck-values.zarr"
    assert main([*common, "--out", str(plain)]) == 0
    assert main([*common, "--out", str(checkpointed), "--checkpoint", str(tmp_path / "ck.zarr")]) == 0
    a, b = open_result(plain), open_result(checkpointed)
    assert (a["counts"].values == 6).all() and (b["counts"].values == 6).all()  # 6 permutations: 6 samples each
    # the same samples (merged in another order: a tree of merges vs one by one)
    np.testing.assert_allclose(a["value"].values, b["value"].values, rtol=1e-12, atol=1e-15)


def test_cli_value_reads_array_files_and_evaluate_needs_no_options(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 2))
    y = (x[:, 0] > 0).astype(np.int64)
    paths = {}
    for name, arr in (("x-train", x[:6]), ("y-train", y[:6]), ("x-test", x[6:]), ("y-test", y[6:])):
        paths[name] = str(tmp_path / f"{name}.npy")
        np.save(paths[name], arr)
    files = [a for name, path in paths.items() for a in (f"--{name}", path)]
    assert main(["value", *files, "--model", "knn", "--method", "loo", "--scheduler", "sync", "--top", "1"]) == 0
    stored = open_result(tmp_path / "values.zarr")
    assert stored.sizes["sample"] == 6
    # leave-one-out of 1-NN by hand: accuracy on the test set without each point
    from sklearn.neighbors import KNeighborsClassifier

    def acc(keep):
        return KNeighborsClassifier(n_neighbors=1).fit(x[:6][keep], y[:6][keep]).score(x[6:], y[6:])

    full = acc(np.arange(6))
    expected = [full - acc(np.delete(np.arange(6), i)) for i in range(6)]
    np.testing.assert_allclose(stored["value"].values, expected)
    capsys.readouterr()
    assert main(["evaluate", "--steps", "2", "--n-random", "1", "--scheduler", "sync"]) == 0  # values.zarr
    printed = capsys.readouterr()
    assert "Removal curve of loo values" in printed.out and "differs" not in printed.err
    assert main(["value", "--x-train", paths["x-train"], "--scheduler", "sync"]) == 2
    assert "--y-train, --x-test, --y-test" in capsys.readouterr().err


def test_cli_evaluate_says_what_is_missing(tmp_path, capsys):
    from dvl_dask.results import to_zarr, valuation_dataset

    out = str(tmp_path / "foreign.zarr")
    to_zarr(valuation_dataset(np.ones(3), np.zeros(3), np.ones(3, int), data_names=["a", "b", "c"], method="m"), out)
    assert main(["evaluate", "--result", out, "--scheduler", "sync"]) == 2
    err = capsys.readouterr().err
    assert "records no dvl-dask options" in err and "--dataset" in err and "--model" in err


def test_demo_prints_the_dashboard_link_only_when_it_serves(monkeypatch, capsys):
    import importlib.util

    from dvl_dask import cli

    class _Client:
        dashboard_link = "http://127.0.0.1:8787/status"

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bokeh" else real(name, *a))
    cli._print_dashboard(_Client())
    assert "needs bokeh" in capsys.readouterr().out
    monkeypatch.setattr(importlib.util, "find_spec", real)
    if real("bokeh") is not None:
        cli._print_dashboard(_Client())
        assert _Client.dashboard_link in capsys.readouterr().out


def test_cli_plots_leave_the_callers_matplotlib_state_alone(tmp_path, capsys):
    """``main`` called in a session (a notebook, a script with its own backend) writes plots outside pyplot."""
    matplotlib = pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # not Agg: a backend the caller chose
    figure = plt.figure()
    try:
        figures = plt.get_fignums()
        out, values_png, curve_png = tmp_path / "v.zarr", tmp_path / "values.png", tmp_path / "curve.png"
        common = ["--dataset", "iris", "--model", "knn", "--n-points", "6", "--scheduler", "sync"]
        assert main(["value", *common, "--method", "loo", "--out", str(out), "--plot", str(values_png)]) == 0
        assert main(["evaluate", "--result", str(out), "--steps", "2", "--n-random", "1", "--scheduler", "sync",
                     "--plot", str(curve_png)]) == 0
        for path in (values_png, curve_png):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == figures and plt.gcf() is figure
    finally:
        plt.close(figure)
        matplotlib.use(backend)
