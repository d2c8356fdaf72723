"""Assertions for valuation results, for users' tests and ours."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ..results import validate_valuation_dataset

__all__ = ["assert_valid_valuation_dataset", "assert_values_close", "assert_within_stderr"]


def assert_valid_valuation_dataset(ds: Any) -> None:
    """Assert that ``ds`` follows dvl_dask's valuation schema."""
    validate_valuation_dataset(ds)


def assert_values_close(ds: xr.Dataset, expected: Any, *, rtol: float = 1e-7, atol: float = 1e-12) -> None:
    """Assert the computed values equal ``expected`` (array in sample order)."""
    validate_valuation_dataset(ds)
    np.testing.assert_allclose(np.asarray(ds["value"].values), np.asarray(expected), rtol=rtol, atol=atol)


def assert_within_stderr(ds: xr.Dataset, expected: Any, *, n_stderr: float = 4.0, atol: float = 1e-9) -> None:
    """Assert every value lies within ``n_stderr`` standard errors of ``expected``."""
    validate_valuation_dataset(ds)
    value = np.asarray(ds["value"].values)
    stderr = np.asarray(ds["stderr"].values)
    bad = np.abs(value - np.asarray(expected)) > n_stderr * stderr + atol
    if bad.any():
        idx = np.flatnonzero(bad)[:10]
        raise AssertionError(
            f"{bad.sum()} value(s) lie more than {n_stderr} stderr from the expected values; "
            f"first at positions {idx.tolist()}: got {value[idx]}, expected {np.asarray(expected)[idx]}, "
            f"stderr {stderr[idx]}."
        )
