"""The ``ds.dvl`` accessor: ranking, top/bottom-k and merging of valuation results."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InvalidParameterError, SchemaError
from ..validation import check_positive_int
from ._schema import SAMPLE_DIM, parameters_of, validate_valuation_dataset

__all__ = ["DvlAccessor", "merge_results"]


@xr.register_dataset_accessor("dvl")
class DvlAccessor:
    """Helpers on valuation results: ``ds.dvl.rank()``, ``ds.dvl.top_k(5)``, ``ds.dvl.merge(other)``.

    Examples
    --------
    >>> import numpy as np
    >>> from dvl_dask.results import valuation_dataset
    >>> ds = valuation_dataset(np.array([0.1, 0.5, -0.2]), np.zeros(3), np.ones(3, int),
    ...                        data_names=["a", "b", "c"], method="demo")
    >>> ds.dvl.top_k(2).sample.values.tolist()
    ['b', 'a']
    >>> ds.dvl.rank().values.tolist()
    [2, 1, 3]
    """

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    @property
    def parameters(self) -> dict[str, Any]:
        """The method parameters recorded when the result was built."""
        return parameters_of(self._ds)

    def rank(self, *, ascending: bool = False) -> xr.DataArray:
        """Rank of every player by value: 1 is the most valuable (or least, if ``ascending``)."""
        values = np.asarray(self._ds["value"].values)
        order = np.argsort(values if ascending else -values, kind="stable")
        ranks = np.empty(len(values), dtype=np.int64)
        ranks[order] = np.arange(1, len(values) + 1)
        return xr.DataArray(ranks, dims=(SAMPLE_DIM,), coords={SAMPLE_DIM: self._ds[SAMPLE_DIM]}, name="rank")

    def sort(self, *, ascending: bool = False) -> xr.Dataset:
        """The result with players ordered by value (highest first by default)."""
        values = np.asarray(self._ds["value"].values)
        order = np.argsort(values if ascending else -values, kind="stable")
        return self._ds.isel({SAMPLE_DIM: order})

    def top_k(self, k: int) -> xr.Dataset:
        """The ``k`` most valuable players, highest first."""
        k = check_positive_int(k, "k", "ds.dvl.top_k")
        return self.sort()[{SAMPLE_DIM: slice(0, k)}]

    def bottom_k(self, k: int) -> xr.Dataset:
        """The ``k`` least valuable players, lowest first."""
        k = check_positive_int(k, "k", "ds.dvl.bottom_k")
        return self.sort(ascending=True)[{SAMPLE_DIM: slice(0, k)}]

    def merge(self, other: xr.Dataset) -> xr.Dataset:
        """Count-weighted merge of two runs of the same method on the same utility."""
        return merge_results(self._ds, other)


def merge_results(a: xr.Dataset, b: xr.Dataset) -> xr.Dataset:
    """Merge two independent estimates of the same values.

    Means are weighted by ``count``. Variances combine exactly (Chan et al.'s
    parallel update of the sum of squared deviations), with the convention
    ``stderr**2 = s**2 / count`` where ``s**2`` is the sample variance of the
    marginal contributions.
    """
    validate_valuation_dataset(a)
    validate_valuation_dataset(b)
    for attr in ("method", "utility_token"):
        if a.attrs[attr] != b.attrs[attr]:
            raise SchemaError(
                f"Cannot merge results with different {attr!r}: {a.attrs[attr]!r} vs {b.attrs[attr]!r}. "
                "Merging only makes sense for runs of the same method on the same utility."
            )
    if a.attrs["parameters"] != b.attrs["parameters"]:
        raise SchemaError(
            "Cannot merge results computed with different parameters: "
            f"{a.attrs['parameters']} vs {b.attrs['parameters']}."
        )
    if a.sizes[SAMPLE_DIM] != b.sizes[SAMPLE_DIM] or not np.array_equal(a[SAMPLE_DIM].values, b[SAMPLE_DIM].values):
        raise InvalidParameterError("Cannot merge results over different samples; their 'sample' labels differ.")
    na = a["counts"].astype(np.float64)
    nb = b["counts"].astype(np.float64)
    n = na + nb
    delta = b["value"] - a["value"]
    safe_n = xr.where(n > 0, n, 1.0)
    mean = a["value"] + delta * nb / safe_n
    m2a = a["stderr"] ** 2 * na * (na - 1).clip(min=0)
    m2b = b["stderr"] ** 2 * nb * (nb - 1).clip(min=0)
    m2 = m2a + m2b + delta**2 * na * nb / safe_n
    var = xr.where(n > 1, m2 / (n - 1).clip(min=1), 0.0)
    stderr = np.sqrt(var / safe_n)
    out = a.copy()
    out["value"] = mean.astype(np.float64)
    out["stderr"] = stderr.astype(np.float64)
    out["counts"] = (na + nb).astype(np.int64)
    attrs = dict(a.attrs)
    attrs["n_evaluations"] = int(a.attrs["n_evaluations"]) + int(b.attrs["n_evaluations"])
    seeds = [s for s in (a.attrs["seed"], b.attrs["seed"]) if s]
    attrs["seed"] = json.dumps(seeds) if len(set(seeds)) > 1 else (seeds[0] if seeds else "")
    out.attrs = attrs
    return out
