"""dvl_dask: data valuation and influence functions as lazy Dask graphs.

Examples
--------
>>> import dvl_dask
>>> from dvl_dask.testing.games import AirportGame
>>> float(dvl_dask.valuation.exact_shapley(AirportGame([1.0, 3.0])).value.sum().compute())
3.0
"""

import logging

from . import (
    chunks,  # (imports .config first, through .keys)
    config,  # registers defaults in dask.config first
    errors,
    influence,
    keys,
    models,
    results,
    valuation,
)
from ._pydvl_names import pydvl_name_hook as _pydvl_name_hook
from ._version import __version__
from .data import Dataset, GroupedDataset
from .influence import DaskInfluenceCalculator, SequentialInfluenceCalculator, influence_to_zarr
from .results import influence_dataarray, open_influence, open_result, to_zarr
from .utility import Scorer, Utility

# The library's messages (cache, checkpoint and resume decisions) go to the "dvl_dask" logger; an
# application shows them with logging.basicConfig(level=logging.INFO) or a handler of its own.
logging.getLogger("dvl_dask").addHandler(logging.NullHandler())

__all__ = [
    "DaskInfluenceCalculator",
    "Dataset",
    "GroupedDataset",
    "Scorer",
    "SequentialInfluenceCalculator",
    "Utility",
    "__version__",
    "chunks",
    "config",
    "errors",
    "influence",
    "influence_dataarray",
    "influence_to_zarr",
    "keys",
    "models",
    "open_influence",
    "open_result",
    "results",
    "to_zarr",
    "valuation",
]

# pyDVL names (ModelUtility, ShapleyValuation, ...) raise an ImportError pointing to the migration guide.
__getattr__ = _pydvl_name_hook(__name__)
