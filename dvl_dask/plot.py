"""Plots of valuation results (needs matplotlib: ``pip install dvl_dask[plot]``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from .results import validate_valuation_dataset

__all__ = ["plot_values"]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use(matplotlib.get_backend())
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plot_values requires matplotlib, which could not be imported. "
            "Install it with `pip install dvl_dask[plot]`."
        ) from exc
    return plt


def plot_values(ds: xr.Dataset, *, ax: Any = None, title: str | None = None, n_stderr: float = 1.0) -> Any:
    """Values sorted from highest to lowest, with ``n_stderr`` error bars.

    Returns the matplotlib ``Axes``.
    """
    validate_valuation_dataset(ds)
    plt = _pyplot()
    ordered = ds.dvl.sort()
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.25 * ordered.sizes["sample"]), 3.5))
    x = np.arange(ordered.sizes["sample"])
    ax.errorbar(x, ordered["value"].values, yerr=n_stderr * ordered["stderr"].values, fmt="o", capsize=2)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels([str(s) for s in ordered["sample"].values], rotation=90)
    ax.set_xlabel("training point")
    ax.set_ylabel("value")
    ax.set_title(title or f"{ds.attrs.get('method', '')} values")
    ax.figure.tight_layout()
    return ax
