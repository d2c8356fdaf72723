"""Every notebook executes, and the command line runs end to end."""

from __future__ import annotations

import pathlib

import pytest

from dvl_dask.cli import main
from dvl_dask.results import open_result

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))

#: The notebooks read ``DVL_DASK_NOTEBOOK_SCALE`` (default 1) and multiply their sample budgets or
#: training-set sizes by it. At 0.1 every cell still runs (the same calls, the same checks);
#: notebook 04 took 108 s at 1 (Beta-Shapley: 600 samples x 61 evaluations).
QUICK_SCALE = "0.1"


def _execute(path: pathlib.Path, tmp_path: pathlib.Path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    return nb


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("DVL_DASK_NOTEBOOK_SCALE", QUICK_SCALE)  # the kernel inherits the environment
    _execute(path, tmp_path)


@pytest.mark.notebook
@pytest.mark.long
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes_at_full_size(path, tmp_path, monkeypatch):
    """The notebooks as a user runs them (``make test-long``); their outputs are what the docs show."""
    import nbformat

    monkeypatch.delenv("DVL_DASK_NOTEBOOK_SCALE", raising=False)
    nb = _execute(path, tmp_path)
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
