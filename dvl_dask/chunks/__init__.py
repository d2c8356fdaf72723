"""The shared chunk-mapping core: one block plan, two engines, the same kernels.

* :class:`BlockPlan` -- chunk sizes along the rows (test samples) and columns
  (training samples) of a result, and the blocks they define.
* :class:`SequentialMapper` -- plain loops in the calling process over lazy
  :class:`BlockSequence` / :class:`NestedBlockSequence` values; can write each
  block to a :class:`BlockSink` (a zarr region) as it is produced.
* :class:`DaskMapper` -- one ``da.blockwise`` call per map, deterministic layer
  names, shared objects (a model) in the graph once.
* Aggregators reduce lazy sequences while iterating.

This package imports neither xarray nor torch.
"""

from ._aggregators import (
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
from ._mappers import BlockSink, ChunkMapper, DaskMapper, SequentialMapper, SharedObjects
from ._plan import BlockPlan, regular_chunks
from ._sequences import BlockSequence, NestedBlockSequence

__all__ = [
    "BlockPlan",
    "regular_chunks",
    "ChunkMapper",
    "SequentialMapper",
    "DaskMapper",
    "SharedObjects",
    "BlockSink",
    "BlockSequence",
    "NestedBlockSequence",
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
