"""Every plot function renders to an Agg canvas and returns its Axes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import xarray as xr

from dvl_dask.errors import InvalidDataError, InvalidParameterError
from dvl_dask.evaluation import point_removal_curve
from dvl_dask.plot import (
    plot_convergence,
    plot_curves,
    plot_influence,
    plot_value_distribution,
    plot_values,
)
from dvl_dask.results import influence_dataarray, valuation_dataset
from dvl_dask.testing.games import AdditiveGame
from dvl_dask.valuation import exact_shapley, permutation_shapley


def _render(ax, tmp_path, name):
    path = tmp_path / f"{name}.png"
    ax.figure.savefig(path)
    assert path.stat().st_size > 1000
    import matplotlib.pyplot as plt

    plt.close(ax.figure)


def test_plot_values_with_intervals_and_ends(tmp_path):
    ds = permutation_shapley(AdditiveGame(np.linspace(-1, 1, 30)), n_permutations=20, seed=0).compute()
    _render(plot_values(ds, n_stderr=1.96), tmp_path, "values")
    ax = plot_values(ds, top_k=3, bottom_k=2)
    assert len(ax.get_xticklabels()) == 5
    _render(ax, tmp_path, "ends")


def test_plot_curves(tmp_path):
    game = AdditiveGame([3.0, 1.0, 2.0, -1.0, 0.5])
    curve = point_removal_curve(exact_shapley(game), game, fractions=[0, 0.2, 0.4, 0.6], n_random=3, seed=0)
    ax = plot_curves(curve)
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"highest", "lowest", "random"}
    _render(ax, tmp_path, "curves")
    with pytest.raises(InvalidParameterError):
        plot_curves(xr.Dataset())


def test_plot_value_distribution(tmp_path):
    n = 40
    values = np.random.default_rng(0).normal(size=n)
    ds = valuation_dataset(values, np.zeros(n), np.ones(n, int), data_names=range(n), method="m")
    _render(plot_value_distribution(ds, np.arange(n) % 2), tmp_path, "by_class")
    _render(plot_value_distribution(ds.assign_coords(label=("sample", np.arange(n) % 3))), tmp_path, "coord")
    with pytest.raises(InvalidDataError):
        plot_value_distribution(ds, [0, 1])


def test_plot_influence_heatmap_and_top_k(tmp_path):
    matrix = np.random.default_rng(1).normal(size=(4, 12))
    arr = influence_dataarray(matrix, train_names=[f"t{i}" for i in range(12)])
    _render(plot_influence(arr), tmp_path, "heatmap")
    ax = plot_influence(arr, test_index=2, top_k=5)
    expected = [f"t{i}" for i in np.argsort(-np.abs(matrix[2]))[:5]]
    assert [t.get_text() for t in ax.get_yticklabels()] == expected
    _render(ax, tmp_path, "top_k")
    with pytest.raises(InvalidDataError):
        plot_influence(np.zeros(3))


def test_convergence_history_and_plot(tmp_path):
    from dvl_dask.valuation import MinUpdates, checkpoint_history, load_checkpoint, run_until_converged

    game = AdditiveGame([0.5, 1.0, 2.0, 3.0])
    ck = str(tmp_path / "run.zarr")
    run_until_converged(permutation_shapley, game, stop=MinUpdates(40), seed=0, checkpoint=ck, items_per_block=4,
                        progress=False)
    history = checkpoint_history(ck)
    final = load_checkpoint(ck)
    assert history.sizes["step"] == final.attrs["n_blocks"]
    np.testing.assert_allclose(history["value"].isel(step=-1).values, final["value"].values)
    np.testing.assert_allclose(history["stderr"].isel(step=-1).values, final["stderr"].values)
    assert np.all(np.diff(history["n_evaluations"].values) > 0)
    assert checkpoint_history(ck, every=3).sizes["step"] == -(-final.attrs["n_blocks"] // 3)
    ax = plot_convergence(history, top_k=2)
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"3", "2"}
    _render(ax, tmp_path, "convergence")
    with pytest.raises(InvalidParameterError):
        plot_convergence(final)


@pytest.fixture
def svg_backend():
    """pyplot on the 'svg' backend (not Agg) with one figure open, as a caller might have it; restored after."""
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    matplotlib.use("svg")
    figure = plt.figure()
    yield plt
    plt.close(figure)
    matplotlib.use(backend)


def test_save_plot_leaves_backend_and_pyplot_alone(tmp_path, svg_backend):
    from dvl_dask.plot import save_plot

    plt = svg_backend
    figures, current = plt.get_fignums(), plt.gcf()
    ds = exact_shapley(AdditiveGame([0.5, -1.0, 2.0])).compute(scheduler="sync")
    path = save_plot(plot_values, ds, tmp_path / "values.png", n_stderr=2.0)
    assert (tmp_path / "values.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.endswith("values.png")
    assert matplotlib.get_backend() == "svg"
    assert plt.get_fignums() == figures and plt.gcf() is current  # no figure added to pyplot, none made current
    with pytest.raises(InvalidParameterError, match="'plot' argument of save_plot"):
        save_plot("plot_values", ds, tmp_path / "x.png")
