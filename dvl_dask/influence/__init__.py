"""Influence functions: the model interface and its modes.

Implementations live in :mod:`dvl_dask.influence.torch`, which is the only
place that imports torch; importing this package does not.
"""

from ._base import InfluenceFunctionModel
from ._mode import BlockMode, InfluenceMode, SecondOrderMode

__all__ = [
    "InfluenceFunctionModel",
    "InfluenceMode",
    "SecondOrderMode",
    "BlockMode",
]
