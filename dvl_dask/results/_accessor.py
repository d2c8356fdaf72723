"""The ``ds.dvl`` accessor: ranking, top/bottom-k and merging of valuation results."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InvalidParameterError, SchemaError
from ..validation import check_positive_int
from ._schema import CONVERGED, SAMPLE_DIM, parameters_of, provenance_of, validate_valuation_dataset

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

    @property
    def provenance(self) -> dict[str, Any] | None:
        """What the result's identity was made of (model, parameters, data fingerprint, versions); see
        :func:`dvl_dask.results.provenance_of`."""
        return provenance_of(self._ds)

    def to_valuation_result(self) -> Any:
        """A read-only view with pyDVL's ``ValuationResult`` interface (computes the result once).

        See :class:`dvl_dask.results.ValuationResult`.
        """
        from ._valuation_result import ValuationResult

        return ValuationResult.from_dataset(self._ds)

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


#: Parameters that only say how much was sampled: merged results record their sum.
BUDGET_PARAMETERS = ("n_permutations", "n_samples")
#: Parameters that only say how the samples were cut into tasks and scheduled: they change neither
#: the estimand nor the estimator (every sample is drawn and weighted the same way), so results
#: differing only in these (and in budgets) can merge; the merged result keeps a value both share
#: and records None where they differ.
LAYOUT_PARAMETERS = (
    "items_per_block",  # samples per graph task (Monte Carlo)
    "min_blocks",  # small budgets cut into at least this many tasks
    "active_set_lag",  # blocks in flight before a converged player stops receiving work
    "samples_per_block",  # class-wise Shapley, group testing
    "estimators_per_block",  # Data-OOB
)
#: Parameters a merge may ignore when comparing runs.
MERGEABLE_PARAMETERS = BUDGET_PARAMETERS + LAYOUT_PARAMETERS


def _sample_blocks(ds: xr.Dataset) -> list[tuple[str, float, float]]:
    """The ``(seed, first, stop)`` block ranges behind a result; unknown ranges span every block."""
    text = ds.attrs.get("sample_blocks")
    if text:
        return [(str(seed), float(a), float(b)) for seed, a, b in json.loads(text)]
    seed = ds.attrs.get("seed", "")
    if not seed:
        return []
    seeds = json.loads(seed) if seed.startswith("[") else [seed]
    return [(str(s), 0.0, np.inf) for s in seeds]


def _check_disjoint(a: xr.Dataset, b: xr.Dataset) -> None:
    for seed, start, stop in _sample_blocks(a):
        for other_seed, other_start, other_stop in _sample_blocks(b):
            if seed == other_seed and start < other_stop and other_start < stop:
                raise InvalidParameterError(
                    "Cannot merge results that share samples: both use blocks "
                    f"[{max(start, other_start):g}, {min(stop, other_stop):g}) of seed {seed!r}. Merging a result "
                    "with itself (or with a run of the same seed) would count the same samples twice and "
                    "understate the standard error. To fix, merge runs with different seeds (seed=None draws "
                    "fresh entropy)."
                )


def _merged_parameters(pa: dict[str, Any], pb: dict[str, Any]) -> dict[str, Any]:
    """Parameters of a merged result: budgets summed, a layout both share kept, a differing one None."""
    merged = dict(pa)
    for key in BUDGET_PARAMETERS:
        if key in pa and key in pb:
            merged[key] = pa[key] + pb[key]
    for key in LAYOUT_PARAMETERS:
        if key in pa or key in pb:
            merged[key] = pa.get(key) if pa.get(key) == pb.get(key) else None
    return merged


def merge_results(a: xr.Dataset, b: xr.Dataset) -> xr.Dataset:
    """Merge two independent estimates of the same values.

    The results must come from the same method, utility and parameters, i.e.
    the same estimand and estimator. What may differ: budgets
    (``n_permutations``, ``n_samples``; the merged result records their sum)
    and layout, the parameters that only say how samples were cut into tasks
    and scheduled (``items_per_block``, ``min_blocks``, ``active_set_lag``,
    ``samples_per_block``, ``estimators_per_block``; the merged result keeps a
    value both runs share and records ``None`` where they differ). Any other
    parameter (sampler, truncation, coefficient, finalize rule, ...) changes
    what is estimated or how, and a difference is refused. Their samples
    must be disjoint: results record the seed blocks they used (attr
    ``sample_blocks``), and a merge of a result with itself or with an
    overlapping run is refused.

    Each player's value is the count-weighted mean of the two estimates,
    ``(n_a v_a + n_b v_b) / (n_a + n_b)``, and, the estimates being
    independent, its standard error is ``sqrt(n_a^2 s_a^2 + n_b^2 s_b^2) / (n_a + n_b)``
    (``s`` the reported standard errors). This is exact for every estimator
    (plain means, antithetic pair means, MSR differences, stratified sums) and
    keeps the variance floor of each part.

    Raises
    ------
    SchemaError
        If method, utility or any parameter other than budget and layout differ.
    InvalidParameterError
        If the samples overlap or the players differ.
    """
    a = validate_valuation_dataset(a)
    b = validate_valuation_dataset(b)
    for attr in ("method", "utility_token"):
        if a.attrs[attr] != b.attrs[attr]:
            raise SchemaError(
                f"Cannot merge results with different {attr!r}: {a.attrs[attr]!r} vs {b.attrs[attr]!r}. "
                "Merging only makes sense for runs of the same method on the same utility."
            )
    pa, pb = parameters_of(a), parameters_of(b)
    fixed_a = {k: v for k, v in pa.items() if k not in MERGEABLE_PARAMETERS}
    fixed_b = {k: v for k, v in pb.items() if k not in MERGEABLE_PARAMETERS}
    if fixed_a != fixed_b:
        differ = sorted(k for k in set(fixed_a) | set(fixed_b) if fixed_a.get(k) != fixed_b.get(k))
        raise SchemaError(
            f"Cannot merge results computed with different parameters {differ}: "
            f"{ {k: fixed_a.get(k) for k in differ} } vs { {k: fixed_b.get(k) for k in differ} }."
        )
    if a.sizes[SAMPLE_DIM] != b.sizes[SAMPLE_DIM] or not np.array_equal(a[SAMPLE_DIM].values, b[SAMPLE_DIM].values):
        raise InvalidParameterError("Cannot merge results over different samples; their 'sample' labels differ.")
    _check_disjoint(a, b)
    na = a["counts"].values.astype(np.float64)
    nb = b["counts"].values.astype(np.float64)
    va, vb = a["value"].values.astype(np.float64), b["value"].values.astype(np.float64)
    sa, sb = a["stderr"].values.astype(np.float64), b["stderr"].values.astype(np.float64)
    n = na + nb
    safe = np.where(n > 0, n, 1.0)
    with np.errstate(invalid="ignore"):
        value = np.where(na == 0, vb, np.where(nb == 0, va, (na * va + nb * vb) / safe))
        part_a = np.where(na > 0, (na * sa) ** 2, 0.0)
        part_b = np.where(nb > 0, (nb * sb) ** 2, 0.0)
        stderr = np.where(n > 0, np.sqrt(part_a + part_b) / safe, np.where(na == 0, sb, sa))
    # Whether a run's criterion held (and which one stopped it) describes that run, not the merge.
    out = a.drop_vars(CONVERGED, errors="ignore").copy()
    out["value"] = (a["value"].dims, value)
    out["stderr"] = (a["stderr"].dims, stderr)
    out["counts"] = (a["counts"].dims, (na + nb).astype(np.int64))
    attrs = {k: v for k, v in a.attrs.items() if k not in ("converged", "stopped_by")}
    attrs["n_evaluations"] = int(a.attrs["n_evaluations"]) + int(b.attrs["n_evaluations"])
    seeds: list[str] = []
    for ds in (a, b):
        text = ds.attrs.get("seed", "")
        for s in json.loads(text) if text.startswith("[") else ([text] if text else []):
            if s not in seeds:
                seeds.append(s)
    attrs["seed"] = json.dumps(seeds) if len(seeds) > 1 else (seeds[0] if seeds else "")
    attrs["sample_blocks"] = json.dumps(
        [[s, x, y if np.isfinite(y) else None] for s, x, y in _sample_blocks(a) + _sample_blocks(b)]
    )
    attrs["parameters"] = json.dumps(_merged_parameters(pa, pb), sort_keys=True)
    for key in ("effective_sample_size", "n_blocks"):
        if key in a.attrs and key in b.attrs:
            attrs[key] = int(a.attrs[key]) + int(b.attrs[key])
    out.attrs = attrs
    return out
