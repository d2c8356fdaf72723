"""Labelled results: the schema, the ``ds.dvl`` accessor and zarr I/O."""

from ._accessor import DvlAccessor, merge_results
from ._checkpoint import Checkpoint, truncate_checkpoint
from ._ess import effective_sample_size
from ._influence_io import ZarrBlockSink, open_block_sink, open_influence
from ._io import open_result, to_zarr
from ._schema import (
    FACTOR_DIM,
    SAMPLE_DIM,
    TEST_DIM,
    TRAIN_DIM,
    influence_dataarray,
    parameters_of,
    provenance_of,
    self_influence_dataarray,
    validate_valuation_dataset,
    valuation_dataset,
)
from ._valuation_result import ValuationResult, ValueItem

__all__ = [
    "FACTOR_DIM",
    "SAMPLE_DIM",
    "TEST_DIM",
    "TRAIN_DIM",
    "Checkpoint",
    "DvlAccessor",
    "effective_sample_size",
    "influence_dataarray",
    "merge_results",
    "open_block_sink",
    "open_influence",
    "open_result",
    "parameters_of",
    "provenance_of",
    "self_influence_dataarray",
    "to_zarr",
    "truncate_checkpoint",
    "validate_valuation_dataset",
    "ValuationResult",
    "ValueItem",
    "ZarrBlockSink",
    "valuation_dataset",
]
