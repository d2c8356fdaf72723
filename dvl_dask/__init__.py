"""dvl_dask: data valuation and influence functions as lazy Dask graphs.

Examples
--------
>>> import dvl_dask
>>> from dvl_dask.testing.games import AirportGame
>>> float(dvl_dask.valuation.exact_shapley(AirportGame([1.0, 3.0])).value.sum().compute())
3.0
"""

from . import (
    config,  # registers defaults in dask.config first
    errors,
    keys,
    results,
    valuation,
)
from ._version import __version__
from .data import Dataset, GroupedDataset
from .results import influence_dataarray, open_result, to_zarr
from .utility import Scorer, Utility

__all__ = [
    "Dataset",
    "GroupedDataset",
    "Scorer",
    "Utility",
    "__version__",
    "config",
    "errors",
    "influence_dataarray",
    "keys",
    "open_result",
    "results",
    "to_zarr",
    "valuation",
]
