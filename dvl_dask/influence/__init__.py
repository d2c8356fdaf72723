"""Influence functions: the model interface, its modes and the calculators that map it over chunks.

Implementations of models live in :mod:`dvl_dask.influence.torch`, which is the
only place that imports torch; importing this package does not.

* :class:`SequentialInfluenceCalculator` -- lazy chunk sequences in the calling
  process, ``.compute(aggregator)`` or ``.to_zarr(url, converter)``.
* :class:`DaskInfluenceCalculator` -- dask arrays on any scheduler or cluster;
  :func:`influence_to_zarr` streams them to zarr (local or ``s3://``), resumably.
* :func:`dvl_dask.open_influence` reads a stored matrix back, labelled and lazy.
"""

from ..chunks import (
    ListAggregator,
    MinMaxAggregator,
    NestedListAggregator,
    NestedMinMaxAggregator,
    NestedNumpyCatAggregator,
    NestedSequenceAggregator,
    NumpyCatAggregator,
    RowExtremes,
    SequenceAggregator,
)
from ..results import open_influence
from ._base import InfluenceFunctionModel
from ._calculators import (
    GRADIENT_MEMORY_BUDGET,
    DaskInfluenceCalculator,
    DisableClientSingleThreadCheck,
    SequentialInfluenceCalculator,
)
from ._io import influence_to_zarr
from ._mode import BlockMode, InfluenceMode, SecondOrderMode
from ._sequences import LazyChunkSequence, NestedLazyChunkSequence

__all__ = [
    "InfluenceFunctionModel",
    "InfluenceMode",
    "SecondOrderMode",
    "BlockMode",
    "SequentialInfluenceCalculator",
    "DaskInfluenceCalculator",
    "DisableClientSingleThreadCheck",
    "GRADIENT_MEMORY_BUDGET",
    "LazyChunkSequence",
    "NestedLazyChunkSequence",
    "influence_to_zarr",
    "open_influence",
    "SequenceAggregator",
    "NestedSequenceAggregator",
    "ListAggregator",
    "NestedListAggregator",
    "NumpyCatAggregator",
    "NestedNumpyCatAggregator",
    "MinMaxAggregator",
    "NestedMinMaxAggregator",
    "RowExtremes",
]
