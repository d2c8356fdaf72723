"""pyDVL 0.10's ``ValuationResult`` and ``Status`` over dvl_dask's labelled result."""

from __future__ import annotations

from enum import StrEnum

import xarray as xr

from ....errors import InvalidParameterError
from ....results import ValuationResult as NativeValuationResult
from ....results import merge_results

__all__ = ["Status", "ValuationResult"]


class Status(StrEnum):
    """pyDVL's status of a result; equal to the strings ``"pending"``, ``"converged"``, ``"failed"``."""

    Pending = "pending"
    Converged = "converged"
    Failed = "failed"


class ValuationResult(NativeValuationResult):
    """pyDVL's ``ValuationResult``: dvl_dask's read-only view plus ``+`` and the :class:`Status` enum.

    ``values``, ``variances``, ``stderr``, ``counts``, ``indices``, ``names``,
    ``sort``, indexing, iteration and ``to_dataframe`` are those of
    :class:`dvl_dask.results.ValuationResult`. ``a + b`` pools two independent
    Monte Carlo runs of the same method (:func:`dvl_dask.results.merge_results`,
    which refuses results that cannot be pooled, e.g. exact ones; pyDVL averages
    anything). ``to_dataset()`` gives the xarray result (for ``dvl_dask.to_zarr``).
    """

    def __init__(self, ds: xr.Dataset) -> None:
        super().__init__(ds)
        self.status = Status(self.status)  # type: ignore[assignment]

    def __add__(self, other: object) -> ValuationResult:
        if not isinstance(other, NativeValuationResult):
            return NotImplemented
        return ValuationResult(merge_results(self.to_dataset(), other.to_dataset()))

    @property
    def result(self) -> ValuationResult:
        """This result (pyDVL's valuations and results both answer ``.result``)."""
        return self


def as_result(ds: xr.Dataset, names: object) -> ValuationResult:
    """The compat result of a computed dvl_dask result, its players labelled with pyDVL's ``names``."""
    if not isinstance(ds, xr.Dataset):
        raise InvalidParameterError(f"Expected a dvl_dask result (xarray Dataset). Got {type(ds).__name__}.")
    return ValuationResult(ds.assign_coords(sample=list(names)))  # type: ignore[call-overload]
