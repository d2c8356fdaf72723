"""Plots of valuation results (needs matplotlib: ``pip install dvl_dask[plot]``).

Each function draws on the ``ax`` it is given, or on a new pyplot figure
(what shows inline in Jupyter). None of them selects a backend or changes
matplotlib's settings: those belong to the caller. To write a file without
pyplot (as ``dvl-dask ... --plot`` does), :func:`save_plot` draws on a
figure of its own, rendered by the Agg canvas, outside pyplot's figures.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr

from .errors import InvalidDataError, InvalidParameterError, MissingDependencyError
from .results import validate_valuation_dataset
from .validation import check_positive_int, check_real

__all__ = [
    "plot_convergence", "plot_curves", "plot_influence", "plot_value_distribution", "plot_values", "save_plot",
]


_MISSING = (
    "dvl_dask.plot needs matplotlib, which could not be imported. To fix, install dvl_dask's plot "
    "extra: pip install 'dvl_dask[plot]'."
)


def _pyplot() -> Any:
    """pyplot, with whatever backend the caller has (never chosen here)."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(_MISSING, name="matplotlib") from exc
    return plt


def save_plot(
    plot: Callable[..., Any],
    data: Any,
    path: str | os.PathLike[str],
    *,
    figsize: tuple[float, float] | None = None,
    dpi: float = 120,
    **options: Any,
) -> str:
    """Draw ``plot(data, ax=..., **options)`` on a figure of its own and write it to ``path``.

    The figure is a :class:`matplotlib.figure.Figure` rendered by the Agg
    canvas: pyplot is not used, so the caller's backend, current figure and
    list of figures are left as they were (a script or a notebook that
    imports dvl_dask keeps its own display).

    Parameters
    ----------
    plot : callable
        One of this module's functions (any function taking ``ax=``).
    data : Dataset or DataArray
        What ``plot`` draws.
    path : str or path-like
        The file; its extension chooses the format (``.png``, ``.pdf``, ``.svg``...).
    figsize : tuple of float, optional
        Width and height in inches. Default: what ``plot`` would choose.
    dpi : float
        Resolution of raster formats.
    **options
        More keyword arguments of ``plot``.

    Returns
    -------
    str
        ``path``, as a string.

    Raises
    ------
    MissingDependencyError
        If matplotlib is not installed.
    InvalidParameterError
        If ``plot`` is not callable, ``dpi`` not a positive number or ``figsize`` not two of them.

    Examples
    --------
    >>> import os, tempfile
    >>> import matplotlib
    >>> from dvl_dask.testing.games import AdditiveGame
    >>> from dvl_dask.valuation import exact_shapley
    >>> backend = matplotlib.get_backend()
    >>> values = exact_shapley(AdditiveGame([1.0, 2.0, 3.0])).compute(scheduler="sync")
    >>> path = save_plot(plot_values, values, os.path.join(tempfile.mkdtemp(), "values.png"))
    >>> os.path.getsize(path) > 1000, matplotlib.get_backend() == backend
    (True, True)
    """
    if not callable(plot):
        raise InvalidParameterError(
            f"The 'plot' argument of save_plot must be a plotting function such as plot_values. Got {plot!r}."
        )
    dpi = check_real(dpi, "dpi", "save_plot", low=0.0, low_open=True, finite=True)
    if figsize is not None:
        if not isinstance(figsize, tuple | list) or len(figsize) != 2:
            raise InvalidParameterError(
                f"The 'figsize' parameter of save_plot must be (width, height) in inches or None. Got {figsize!r}."
            )
        figsize = (
            check_real(figsize[0], "figsize", "save_plot", low=0.0, low_open=True, finite=True),
            check_real(figsize[1], "figsize", "save_plot", low=0.0, low_open=True, finite=True),
        )
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(_MISSING, name="matplotlib") from exc
    if figsize is None:
        figsize = _default_figsize(plot, data)
    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    plot(data, ax=figure.add_subplot(), **options)
    figure.savefig(os.fspath(path), dpi=dpi)
    return os.fspath(path)


def _values_figsize(n_points: int) -> tuple[float, float]:
    """Wide enough for one labelled tick per point, within 4-16 inches."""
    return (min(16.0, max(4.0, 0.25 * n_points)), 3.5)


def _default_figsize(plot: Callable[..., Any], data: Any) -> tuple[float, float]:
    if plot is plot_values and isinstance(data, xr.Dataset) and "sample" in data.dims:
        return _values_figsize(data.sizes["sample"])
    return (6.0, 3.5) if plot in (plot_influence, plot_convergence) else (5.0, 3.5)


def plot_values(
    ds: xr.Dataset,
    *,
    ax: Any = None,
    title: str | None = None,
    n_stderr: float = 1.0,
    top_k: int | None = None,
    bottom_k: int | None = None,
) -> Any:
    """Values sorted from highest to lowest, with ``n_stderr`` x stderr error bars.

    ``top_k`` / ``bottom_k`` restrict the plot to the highest / lowest points
    (both: the two ends, separated by a gap). ``n_stderr=1.96`` draws 95%
    normal confidence intervals. Returns the matplotlib ``Axes``.
    """
    validate_valuation_dataset(ds)
    owner = "plot_values"
    n_stderr = check_real(n_stderr, "n_stderr", owner, low=0.0, finite=True)
    top_k = None if top_k is None else check_positive_int(top_k, "top_k", owner, allow_zero=True)
    bottom_k = None if bottom_k is None else check_positive_int(bottom_k, "bottom_k", owner, allow_zero=True)
    plt = _pyplot()
    ordered = ds.dvl.sort(ascending=False)
    n = ordered.sizes["sample"]
    if top_k is not None or bottom_k is not None:
        keep = sorted(set(range(min(top_k or 0, n))) | set(range(n - min(bottom_k or 0, n), n)))
        ordered = ordered.isel(sample=keep)
    if ax is None:
        _, ax = plt.subplots(figsize=_values_figsize(ordered.sizes["sample"]))
    x = np.arange(ordered.sizes["sample"])
    ax.errorbar(x, ordered["value"].values, yerr=n_stderr * ordered["stderr"].values, fmt="o", capsize=2)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels([str(s) for s in ordered["sample"].values], rotation=90)
    ax.set_xlabel("training point")
    ax.set_ylabel(f"value (± {n_stderr:g} stderr)")
    ax.set_title(title or f"{ds.attrs.get('method', '')} values")
    ax.figure.tight_layout()
    return ax


def plot_curves(curve: xr.Dataset, *, ax: Any = None, title: str | None = None, band: float = 1.0) -> Any:
    """Removal or addition curves (from :mod:`dvl_dask.evaluation`) with the random baseline's band.

    The band is the random orders' mean ± ``band`` standard deviations.
    Returns the ``Axes``.
    """
    if "score" not in getattr(curve, "data_vars", {}) or "order" not in curve.dims:
        raise InvalidParameterError("plot_curves needs a curve from point_removal_curve or point_addition_curve.")
    band = check_real(band, "band", "plot_curves", low=0.0, finite=True)
    plt = _pyplot()
    curve = curve.compute()
    if ax is None:
        _, ax = plt.subplots(figsize=(5.0, 3.5))
    fraction = curve["fraction"].values
    for order in curve["order"].values:
        score = curve["score"].sel(order=order).values
        line = ax.plot(fraction, score, marker="o", markersize=3, label=str(order))[0]
        if order == "random":
            spread = band * curve["score_std"].sel(order=order).values
            ax.fill_between(fraction, score - spread, score + spread, color=line.get_color(), alpha=0.2)
    mode = curve.attrs.get("mode", "removal")
    ax.set_xlabel("fraction of points removed" if mode == "removal" else "fraction of points kept")
    ax.set_ylabel("score")
    ax.legend(title="order")
    ax.set_title(title or f"{curve.attrs.get('method', '')} {mode} curve".strip())
    ax.figure.tight_layout()
    return ax


def plot_value_distribution(
    ds: xr.Dataset, labels: Any = None, *, ax: Any = None, bins: int = 30, title: str | None = None
) -> Any:
    """Histogram of values, one per class (``labels``, or the result's ``label`` coordinate). Returns the ``Axes``."""
    validate_valuation_dataset(ds)
    bins = check_positive_int(bins, "bins", "plot_value_distribution")
    values = np.asarray(ds["value"].values)
    if labels is None and "label" in ds.coords:
        labels = ds["label"].values
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != values.shape:
            raise InvalidDataError(
                f"The 'labels' argument of plot_value_distribution must have one entry per point "
                f"({values.shape[0]}). Got shape {labels.shape}."
            )
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(5.0, 3.5))
    if labels is None:
        ax.hist(values, bins=bins, alpha=0.8)
    else:
        for label in np.unique(labels):
            ax.hist(values[labels == label], bins=bins, alpha=0.5, label=str(label))
        ax.legend(title="class")
    ax.set_xlabel("value")
    ax.set_ylabel("points")
    ax.set_title(title or f"{ds.attrs.get('method', '')} values by class")
    ax.figure.tight_layout()
    return ax


def plot_influence(
    influences: Any, *, test_index: int | None = None, top_k: int = 10, ax: Any = None, title: str | None = None
) -> Any:
    """Influence heatmap (test x train), or the ``top_k`` most influential training points of one test point.

    ``influences`` is an influence ``DataArray`` (dims ``test_sample``,
    ``train_sample``; extra feature dims are summed) or a 2-d array.
    Returns the ``Axes``.
    """
    owner = "plot_influence"
    top_k = check_positive_int(top_k, "top_k", owner)
    arr = influences
    if isinstance(arr, xr.DataArray):
        extra = [d for d in arr.dims if d not in ("test_sample", "train_sample")]
        arr = arr.sum(extra) if extra else arr
        test_labels = arr["test_sample"].values if "test_sample" in arr.coords else np.arange(arr.shape[0])
        train_labels = arr["train_sample"].values if "train_sample" in arr.coords else np.arange(arr.shape[1])
        matrix = np.asarray(arr.values)
    else:
        matrix = np.asarray(arr)
        if matrix.ndim != 2:
            raise InvalidDataError(f"plot_influence needs a (test, train) matrix. Got shape {matrix.shape}.")
        test_labels, train_labels = np.arange(matrix.shape[0]), np.arange(matrix.shape[1])
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise InvalidDataError(f"{owner} needs a non-empty (test, train) matrix. Got shape {matrix.shape}.")
    if test_index is not None:
        test_index = check_positive_int(test_index, "test_index", owner, allow_zero=True)
        if test_index >= matrix.shape[0]:
            raise InvalidParameterError(
                f"The 'test_index' parameter of {owner} must be the position of a test point, in [0, "
                f"{matrix.shape[0]}). Got {test_index}. To fix, pass a position below {matrix.shape[0]} (or None for "
                "the heatmap of every test point)."
            )
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(6.0, 3.5))
    if test_index is None:
        limit = float(np.nanmax(np.abs(matrix))) or 1.0
        image = ax.imshow(matrix, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.figure.colorbar(image, ax=ax, label="influence")
        ax.set_xlabel("training point")
        ax.set_ylabel("test point")
        ax.set_title(title or "influence of training points on test points")
    else:
        row = matrix[test_index]
        k = min(top_k, row.size)
        top = np.argsort(-np.abs(row), kind="stable")[:k]
        colors = ["tab:red" if row[i] > 0 else "tab:blue" for i in top]
        ax.barh(np.arange(k)[::-1], row[top], color=colors)
        ax.set_yticks(np.arange(k)[::-1])
        ax.set_yticklabels([str(train_labels[i]) for i in top])
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_xlabel("influence")
        ax.set_ylabel("training point")
        ax.set_title(title or f"top {k} influential training points for test point {test_labels[test_index]}")
    ax.figure.tight_layout()
    return ax


def plot_convergence(
    history: xr.Dataset, *, players: Any = None, top_k: int = 5, n_stderr: float = 1.0, ax: Any = None,
    title: str | None = None,
) -> Any:
    """Values (± ``n_stderr`` stderr bands) against utility evaluations, from ``checkpoint_history``.

    ``players`` (labels) selects the lines; default: the ``top_k`` players
    with the largest final ``|value|``. Returns the ``Axes``.
    """
    if not isinstance(history, xr.Dataset) or "step" not in history.dims or "value" not in history:
        raise InvalidParameterError(
            "plot_convergence needs the history of a run: dvl_dask.valuation.checkpoint_history(checkpoint_url)."
        )
    top_k = check_positive_int(top_k, "top_k", "plot_convergence")
    n_stderr = check_real(n_stderr, "n_stderr", "plot_convergence", low=0.0, finite=True)
    plt = _pyplot()
    if players is None:
        final = np.abs(history["value"].isel(step=-1).values)
        chosen = history["sample"].values[np.argsort(-final, kind="stable")[:top_k]]
    else:
        chosen = np.asarray(players)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.0, 3.5))
    x = history["n_evaluations"].values
    for player in chosen:
        row = history.sel(sample=player)
        value, err = row["value"].values, n_stderr * row["stderr"].values
        line = ax.plot(x, value, label=str(player))[0]
        finite = np.isfinite(err)
        ax.fill_between(x[finite], (value - err)[finite], (value + err)[finite], color=line.get_color(), alpha=0.2)
    ax.set_xlabel("utility evaluations")
    ax.set_ylabel(f"value (± {n_stderr:g} stderr)")
    ax.legend(title="player", fontsize="small")
    ax.set_title(title or f"{history.attrs.get('method', '')} convergence")
    ax.figure.tight_layout()
    return ax
