"""Labelled results: the schema, the ``ds.dvl`` accessor and zarr I/O."""

from ._accessor import DvlAccessor, merge_results
from ._checkpoint import Checkpoint
from ._io import open_result, to_zarr
from ._schema import (
    SAMPLE_DIM,
    TEST_DIM,
    TRAIN_DIM,
    influence_dataarray,
    parameters_of,
    validate_valuation_dataset,
    valuation_dataset,
)

__all__ = [
    "SAMPLE_DIM",
    "TEST_DIM",
    "TRAIN_DIM",
    "Checkpoint",
    "DvlAccessor",
    "influence_dataarray",
    "merge_results",
    "open_result",
    "parameters_of",
    "to_zarr",
    "validate_valuation_dataset",
    "valuation_dataset",
]
