"""The ``ds.dvl`` accessor: ranking, top/bottom-k and merging of valuation results."""

from __future__ import annotations

import json
from typing import Any

import dask
import numpy as np
import xarray as xr

from ..errors import InvalidParameterError, SchemaError
from ..validation import check_positive_int
from ._schema import (
    CELL_DIM,
    CONVERGED,
    ESTIMATE,
    EXACT,
    FEATURE_DIM,
    SAMPLE_DIM,
    SAMPLE_MEAN,
    SAMPLED_SOLUTION,
    describe_variables,
    is_cell_result,
    parameters_of,
    provenance_of,
    validate_valuation_dataset,
)

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
    >>> ds.dvl.sort().sample.values.tolist()  # ascending, like xarray's sortby
    ['c', 'a', 'b']

    Methods that order players (``rank``, ``sort``, ``top_k``, ``bottom_k``)
    compute a lazily backed result (a graph, or an opened zarr store) once,
    keep the computed copy inside the accessor (xarray keeps one accessor per
    Dataset object) and return in-memory results: calling several of them, or
    reading several variables of what they return, never runs the graph
    again.

    2D-Shapley results (dims ``("sample", "feature")``) value cells: ``rank``
    ranks every cell (same dims as ``value``), and ``sort``, ``top_k`` and
    ``bottom_k`` order the cells along one stacked dimension ``cell`` (a
    ``(sample, feature)`` MultiIndex, as ``ds.stack(cell=("sample", "feature"))``
    gives); ``merge`` pools two runs of the same game.

    >>> cells = xr.Dataset(
    ...     {"value": (("sample", "feature"), [[0.3, -0.1], [0.2, 0.4]])},
    ...     coords={"sample": ["r0", "r1"], "feature": ["f0", "f1"]},
    ... )
    >>> cells.dvl.rank().values.tolist()
    [[2, 4], [3, 1]]
    >>> top = cells.dvl.top_k(2)
    >>> list(zip(top.sample.values.tolist(), top.feature.values.tolist()))
    [('r1', 'f1'), ('r0', 'f0')]
    """

    def __init__(self, ds: xr.Dataset) -> None:
        if not isinstance(ds, xr.Dataset):
            raise InvalidParameterError(
                f"The 'ds' argument of DvlAccessor must be an xarray.Dataset (xarray builds the accessor: use "
                f"ds.dvl). Got {type(ds).__name__}."
            )
        self._ds = ds
        self._loaded: tuple[tuple[Any, ...], xr.Dataset] | None = None

    def _computed(self) -> xr.Dataset:
        """The result with every variable in memory, computed once (the dataset itself if it already is).

        The computed copy is reused while the dataset holds the same variables
        (assigning a variable in place makes the next call compute again).
        """
        if not any(v.chunks is not None for v in self._ds.variables.values()):
            return self._ds
        held = tuple((name, id(v)) for name, v in self._ds.variables.items())
        if self._loaded is None or self._loaded[0] != held:
            self._loaded = (held, self._ds.compute())
        return self._loaded[1]

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

    def _players(self) -> tuple[xr.Dataset, str]:
        """The computed result with one entry per player along one dim, and that dim (2D cells stacked)."""
        ds = self._computed()
        if is_cell_result(ds):
            return ds.stack({CELL_DIM: (SAMPLE_DIM, FEATURE_DIM)}), CELL_DIM
        return ds, SAMPLE_DIM

    def rank(self, *, ascending: bool = False) -> xr.DataArray:
        """Rank of every player by value: 1 is the most valuable (or least, if ``ascending``).

        A 2D result's ranks are over all its cells, with the dims of ``value``.
        Computes a lazily backed result (once per accessor).
        """
        ds = self._computed()
        values = np.asarray(ds["value"].values)
        flat = values.ravel()
        order = np.argsort(flat if ascending else -flat, kind="stable")
        ranks = np.empty(flat.size, dtype=np.int64)
        ranks[order] = np.arange(1, flat.size + 1)
        dims = ds["value"].dims
        return xr.DataArray(ranks.reshape(values.shape), dims=dims, coords={d: ds[d] for d in dims}, name="rank")

    def sort(self, *, ascending: bool = True) -> xr.Dataset:
        """The result with players ordered by value: lowest first, like ``ds.sortby("value")``.

        ``ascending=False`` puts the most valuable first. Ties keep their
        order. A 2D result's cells come stacked along ``cell``. Computes a
        lazily backed result (once per accessor).
        """
        ds, dim = self._players()
        values = np.asarray(ds["value"].values)
        order = np.argsort(values if ascending else -values, kind="stable")
        return ds.isel({dim: order})

    def top_k(self, k: int) -> xr.Dataset:
        """The ``k`` most valuable players (2D: cells), highest first (computes a lazy result once per accessor)."""
        k = check_positive_int(k, "k", "ds.dvl.top_k")
        ordered = self.sort(ascending=False)
        return ordered[{_player_dim(ordered): slice(0, k)}]

    def bottom_k(self, k: int) -> xr.Dataset:
        """The ``k`` least valuable players (2D: cells), lowest first (computes a lazy result once per accessor)."""
        k = check_positive_int(k, "k", "ds.dvl.bottom_k")
        ordered = self.sort(ascending=True)
        return ordered[{_player_dim(ordered): slice(0, k)}]

    def merge(self, other: xr.Dataset) -> xr.Dataset:
        """Count-weighted merge of two independent Monte Carlo runs of the same method on the same utility.

        See :func:`merge_results` for what may be merged and what is refused.
        """
        return merge_results(self._ds, other)


def _player_dim(ds: xr.Dataset) -> str:
    return CELL_DIM if CELL_DIM in ds.dims else SAMPLE_DIM


#: Parameters that only say how much was sampled: merged results record their sum.
BUDGET_PARAMETERS = ("n_permutations", "n_samples", "n_estimators")
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
    "block_size",  # coalitions or evaluations per task (exact methods, least core)
)
#: Parameters a merge may ignore when comparing runs.
MERGEABLE_PARAMETERS = BUDGET_PARAMETERS + LAYOUT_PARAMETERS


#: What results written before the ``estimate`` attr are, by method (see :func:`_estimate_of`).
_ESTIMATE_OF_METHOD = {
    **dict.fromkeys(("exact_shapley", "loo", "knn_shapley", "exact_least_core"), EXACT),
    "montecarlo_least_core": SAMPLED_SOLUTION,
    **dict.fromkeys(
        ("permutation_shapley", "semivalue", "banzhaf", "msr_banzhaf", "beta_shapley", "owen_shapley", "data_oob",
         "classwise_shapley", "group_testing_shapley"),
        SAMPLE_MEAN,
    ),
}


def _estimate_of(ds: xr.Dataset) -> str | None:
    """What kind of number a result's ``value`` is: its ``estimate`` attr, else what its method gives."""
    recorded = ds.attrs.get(ESTIMATE)
    if recorded:
        return str(recorded)
    return _ESTIMATE_OF_METHOD.get(str(ds.attrs.get("method", "")))


def _seeds(ds: xr.Dataset) -> list[str]:
    """The seeds behind a result: one, or those of the runs a merged result pooled (a JSON list of texts)."""
    text = str(ds.attrs.get("seed", ""))
    if not text:
        return []
    if text.startswith("["):
        # A merged result records a JSON list of seed texts; a SeedSequence whose entropy is a list
        # also prints as "[...]", but of numbers: that is one seed.
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and parsed and all(isinstance(s, str) for s in parsed):
            return parsed
    return [text]


def _sample_blocks(ds: xr.Dataset) -> list[tuple[str, float, float]]:
    """The ``(seed, first, stop)`` block ranges behind a result; unknown ranges span every block."""
    text = ds.attrs.get("sample_blocks")
    if text:
        return [(str(seed), float(a), float(np.inf if b is None else b)) for seed, a, b in json.loads(text)]
    return [(s, 0.0, np.inf) for s in _seeds(ds)]


def _refusal(ds: xr.Dataset, which: str) -> str | None:
    """Why ``ds`` cannot be pooled as a mean of independent samples (None if it can)."""
    method = ds.attrs.get("method", "")
    estimate = _estimate_of(ds)
    if estimate == EXACT:
        return (
            f"the {which} result ({method!r}) is exact (attr 'estimate' = 'exact'): it is computed from every "
            "term it is defined by and has no sampling error to average away. Pooling two exact results would "
            "count the same evaluations twice and shrink the standard error without new evidence. Exact results "
            "of the same utility are equal: keep one."
        )
    if estimate == SAMPLED_SOLUTION:
        return (
            f"the {which} result ({method!r}) is the solution of an optimisation over sampled constraints "
            "(attr 'estimate' = 'sampled solution'), not a mean of samples: the count-weighted mean of two "
            "solutions is not the solution over the pooled constraints, and no standard error pools them. "
            "To fix, run the method once with the combined budget."
        )
    if estimate != SAMPLE_MEAN:
        return (
            f"the {which} result ({method!r}) does not record what kind of estimate it is (attr 'estimate' is "
            f"{ds.attrs.get(ESTIMATE)!r}), so nothing shows it is a mean of independent samples. If it is one, "
            f"build it with valuation_dataset(..., estimate={SAMPLE_MEAN!r})."
        )
    if not _seeds(ds):
        return (
            f"the {which} result ({method!r}) records no seed (attr 'seed' is empty), so nothing shows that its "
            "samples are independent of the other result's: the same samples would be counted twice and the "
            "standard error understated. Only results that record their seed can be merged."
        )
    return None


def _check_poolable(a: xr.Dataset, b: xr.Dataset) -> None:
    for ds, which in ((a, "first"), (b, "second")):
        reason = _refusal(ds, which)
        if reason is not None:
            raise InvalidParameterError(
                "Cannot merge: merging pools independent samples of the same values, and " + reason
            )


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
    """Merge two independent Monte Carlo estimates of the same values (pool their samples).

    Only results that are means of independent samples can be pooled (attr
    ``estimate`` = ``"sample mean"``: the Monte Carlo semivalues, Data-OOB,
    class-wise Shapley, group testing, Monte Carlo 2D-Shapley, whose results over
    ``(sample, feature)`` cells merge cell by cell) and each must record its seed. Refused,
    with an error that says why: exact results (``exact_shapley``, ``loo``,
    ``knn_shapley``, ``exact_least_core``: nothing to average, and pooling would
    count the same evaluations twice), least core solutions of sampled
    constraints (``montecarlo_least_core``: not a mean), results without a seed
    or that do not say what they are, and results that share samples (below).

    The results must come from the same method, utility and parameters, i.e.
    the same estimand and estimator. What may differ: budgets
    (``n_permutations``, ``n_samples``, ``n_estimators``; the merged result
    records their sum) and layout, the parameters that only say how samples
    were cut into tasks and scheduled (``items_per_block``, ``min_blocks``,
    ``active_set_lag``, ``samples_per_block``, ``estimators_per_block``,
    ``block_size``; the merged result keeps a value both runs share and
    records ``None`` where they differ). Any other
    parameter (sampler, truncation, coefficient, finalize rule, ...) changes
    what is estimated or how, and a difference is refused. Their samples
    must be disjoint: results record the seed blocks they used (attr
    ``sample_blocks``; without it, every block of the seed), and a merge of
    a result with itself, with a run of the same seed or with an overlapping
    run is refused.

    Each player's value is the count-weighted mean of the two estimates,
    ``(n_a v_a + n_b v_b) / (n_a + n_b)``, and, the estimates being
    independent, its standard error is ``sqrt(n_a^2 s_a^2 + n_b^2 s_b^2) / (n_a + n_b)``
    (``s`` the reported standard errors). This is exact for every estimator
    (plain means, antithetic pair means, MSR differences, stratified sums) and
    keeps the variance floor of each part.

    What describes one run is not carried over: the ``converged`` variable and
    attr, ``stopped_by``, ``stopping_criterion`` and ``checkpoint``. A bias
    either run records (``biased``, ``bias``: truncation) is kept, and
    ``effective_sample_size`` is that of the pooled counts.

    Raises
    ------
    InvalidParameterError
        If either result is not a mean of independent samples with a seed, the
        samples overlap or the players differ.
    SchemaError
        If method, utility or any parameter other than budget and layout differ.
    """
    # One compute for both (each variable read below would otherwise run its graph again).
    a, b = dask.compute(validate_valuation_dataset(a, cells=True), validate_valuation_dataset(b, cells=True))
    _check_poolable(a, b)
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
    if a["value"].dims != b["value"].dims:
        raise InvalidParameterError(
            f"Cannot merge a result over {a['value'].dims} with one over {b['value'].dims} (a 2D-Shapley result "
            "values cells, the others value players)."
        )
    for dim in a["value"].dims:
        if a.sizes[dim] != b.sizes[dim] or not np.array_equal(a[dim].values, b[dim].values):
            what = "samples" if dim == SAMPLE_DIM else "features"
            raise InvalidParameterError(f"Cannot merge results over different {what}; their {dim!r} labels differ.")
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
    out.attrs = _merged_attrs(a, b, n)
    return describe_variables(out)


#: Attrs that describe one run (how it stopped, where it was stored), not a merge of runs.
_RUN_ATTRS = ("converged", "stopped_by", "stopping_criterion", "checkpoint")


def _merged_attrs(a: xr.Dataset, b: xr.Dataset, counts: np.ndarray) -> dict[str, Any]:
    attrs = {k: v for k, v in a.attrs.items() if k not in _RUN_ATTRS}
    attrs[ESTIMATE] = SAMPLE_MEAN
    attrs["n_evaluations"] = int(a.attrs["n_evaluations"]) + int(b.attrs["n_evaluations"])
    seeds: list[str] = []
    for s in _seeds(a) + _seeds(b):
        if s not in seeds:
            seeds.append(s)
    attrs["seed"] = json.dumps(seeds) if len(seeds) > 1 else seeds[0]
    attrs["sample_blocks"] = json.dumps(
        [[s, x, y if np.isfinite(y) else None] for s, x, y in _sample_blocks(a) + _sample_blocks(b)]
    )
    attrs["parameters"] = json.dumps(_merged_parameters(parameters_of(a), parameters_of(b)), sort_keys=True)
    if "n_blocks" in a.attrs and "n_blocks" in b.attrs:
        attrs["n_blocks"] = int(a.attrs["n_blocks"]) + int(b.attrs["n_blocks"])
    if "effective_sample_size" in a.attrs or "effective_sample_size" in b.attrs:
        # Independent samples behind the most-sampled player: the pooled counts, not the sum of the
        # two maxima (players sampled most in each run need not be the same one).
        attrs["effective_sample_size"] = int(np.max(counts, initial=0))
    # A bias either run carries (truncation) is the merged result's too.
    biases = [str(ds.attrs.get("bias", "")) for ds in (a, b) if ds.attrs.get("biased")]
    if biases or "biased" in attrs:
        attrs["biased"] = bool(biases)
        attrs["bias"] = biases[0] if biases else ""
    return attrs
