"""Public helpers for testing valuation code: games, assertions, laziness checks."""

from . import games
from ._dask import raise_if_dask_computes
from .assertions import assert_valid_valuation_dataset, assert_values_close, assert_within_stderr

__all__ = [
    "assert_valid_valuation_dataset",
    "assert_values_close",
    "assert_within_stderr",
    "games",
    "raise_if_dask_computes",
]
