"""THE place that knows the names of result dimensions, variables and attrs.

A valuation result is an ``xr.Dataset``::

    dims       ("sample",), or ("sample", "feature") for 2D-Shapley results (one value per cell
               of the data matrix: row x feature); see :func:`validate_valuation_dataset`
    coords     sample          labels of the players (data names or group names)
               feature         2D results: labels of the features (columns)
    data_vars  value   float64 estimated value of each player
               stderr  float64 standard error of ``value`` (0 for exact methods)
               counts  int64   number of marginal contributions behind ``value``
               converged bool  optional (results of ``run_until_converged``): whether the
                               player's own convergence criterion held when the run stopped
    attrs      method, parameters (JSON text), seed, utility_token,
               n_evaluations, dvl_dask_version, schema_version; Monte Carlo
               results add ``biased`` and ``bias`` (see
               :func:`dvl_dask.valuation._truncation.bias_attrs`), and
               ``run_until_converged`` adds ``converged`` (an accuracy
               criterion held, not only a budget cap) and ``stopped_by``
               (the criteria that fired, as a list of their reprs);
               provenance (JSON text, optional): what the utility token was made of;
               estimate (optional): what kind of number ``value`` is, one of
               :data:`ESTIMATES` (``"sample mean"``: a mean of independent
               samples drawn from the seed's blocks, the only kind
               :func:`~dvl_dask.results.merge_results` pools; ``"exact"``: no
               sampling error; ``"sampled solution"``: the solution of an
               optimisation over sampled constraints), and ``stderr_note``
               (optional): what ``stderr`` measures for that method

An influence result is an ``xr.DataArray`` named ``influence`` with dims
("test_sample", "train_sample", *feature dims) built by :func:`influence_dataarray`.
Influence factors, when stored, have dims ("test_sample", "parameter").
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from .._version import __version__
from ..errors import SchemaError

__all__ = [
    "ATTRS",
    "CONVERGED",
    "ESTIMATE",
    "ESTIMATES",
    "CELL_DIM",
    "EXACT",
    "FACTOR_DIM",
    "FEATURE_DIM",
    "SAMPLED_SOLUTION",
    "SAMPLE_DIM",
    "SAMPLE_MEAN",
    "SCHEMA_VERSION",
    "TEST_DIM",
    "TRAIN_DIM",
    "VARIABLES",
    "VARIABLE_ATTRS",
    "influence_dataarray",
    "is_cell_result",
    "parameters_of",
    "provenance_of",
    "validate_valuation_dataset",
    "self_influence_dataarray",
    "valuation_dataset",
]

#: 2: the per-player count is called ``counts`` (``count`` shadowed ``xr.Dataset.count``).
SCHEMA_VERSION = 2
SAMPLE_DIM = "sample"
TEST_DIM = "test_sample"
TRAIN_DIM = "train_sample"
FACTOR_DIM = "parameter"
#: Second dimension of 2D-Shapley results: the features (columns) of the data matrix.
FEATURE_DIM = "feature"
#: The dimension ``ds.dvl.sort`` / ``top_k`` / ``bottom_k`` stack a 2D result's cells into.
CELL_DIM = "cell"
#: What the variables of a valuation result may be laid out over: players, or cells (rows x features).
PLAYER_DIMS = ((SAMPLE_DIM,), (SAMPLE_DIM, FEATURE_DIM))
#: Where 2D (cell) results are supported, for the refusals of everything else.
CELL_SUPPORT = (
    "2D results are supported by ds.dvl (rank, sort, top_k, bottom_k, merge), merge_results, to_zarr and "
    "open_result; to use the values of one feature (a column of cells) here, select it: ds.isel(feature=j)"
)
VARIABLES = {"value": np.float64, "stderr": np.float64, "counts": np.int64}
#: Optional per-player variable of run_until_converged results: the player's own criterion held.
CONVERGED = "converged"
_SCORE_UNITS = "units of the utility's score"
#: CF-style attributes of every variable and coordinate dvl_dask writes (``long_name``,
#: ``description``, ``units``: ``"1"`` for dimensionless numbers), so a store describes itself.
VARIABLE_ATTRS: dict[str, dict[str, str]] = {
    "value": {
        "long_name": "data value",
        "description": "Value of each training point (player) under the result's method: its contribution to "
                       "the utility (the model's score on the test data). See the attrs 'method' and "
                       "'estimate' for what kind of number it is.",
        "units": _SCORE_UNITS,
    },
    "stderr": {
        "long_name": "standard error of the value",
        "description": "Standard error of 'value' (0 for exact methods, whose 'stderr_note' says why); "
                       "a Monte Carlo estimate's sampling error, never its bias (see the attrs 'biased', 'bias').",
        "units": _SCORE_UNITS,
    },
    "counts": {
        "long_name": "number of samples",
        "description": "Independent samples (permutations, subsets, bootstrap models, ...) that updated the "
                       "value of each point.",
        "units": "1",
    },
    CONVERGED: {
        "long_name": "point converged",
        "description": "Whether the point's own stopping criterion held when the run stopped.",
        "units": "1",
    },
    SAMPLE_DIM: {"long_name": "training point", "description": "Label of the training point (player)."},
    FEATURE_DIM: {"long_name": "feature", "description": "Label of the feature (column of the data matrix)."},
    TEST_DIM: {"long_name": "test point", "description": "Label of the test point."},
    TRAIN_DIM: {"long_name": "training point", "description": "Label of the training point."},
    "influence": {
        "long_name": "influence",
        "description": "Influence of each training point on the loss at each test point (attr 'mode': 'up' is "
                       "the change of the test loss when the training point is up-weighted, 'perturbation' "
                       "its gradient with respect to the training features).",
        "units": "units of the model's loss",
    },
    "influence_factors": {
        "long_name": "influence factors",
        "description": "Inverse-Hessian-vector products of the test losses' gradients, one row per test point: "
                       "the test side of the influences.",
    },
    FACTOR_DIM: {"long_name": "model parameter", "description": "Index into the model's flattened parameters."},
    "self_influence": {
        "long_name": "self-influence",
        "description": "Influence of each training point on its own loss.",
        "units": "units of the model's loss",
    },
}


def describe_variables(obj: xr.Dataset | xr.DataArray) -> xr.Dataset | xr.DataArray:
    """Add the CF-style attributes of :data:`VARIABLE_ATTRS` to ``obj``'s variables and coordinates, in place.

    Attributes already set are kept.
    """
    variables = obj.variables if isinstance(obj, xr.Dataset) else {**obj.coords, obj.name: obj}
    for name, var in variables.items():
        for key, text in VARIABLE_ATTRS.get(str(name), {}).items():
            var.attrs.setdefault(key, text)
    return obj
#: Attr naming what kind of number a result's ``value`` is (see the module docstring).
ESTIMATE = "estimate"
#: A mean of independent samples drawn from the seed's blocks (Monte Carlo methods, Data-OOB, ...).
SAMPLE_MEAN = "sample mean"
#: Computed from every term it is defined by (exact Shapley, leave-one-out, KNN-Shapley): no sampling error.
EXACT = "exact"
#: The solution of an optimisation over sampled constraints (Monte Carlo least core): not a mean.
SAMPLED_SOLUTION = "sampled solution"
ESTIMATES = (SAMPLE_MEAN, EXACT, SAMPLED_SOLUTION)
ATTRS = (
    "method",
    "parameters",
    "seed",
    "utility_token",
    "n_evaluations",
    "dvl_dask_version",
    "schema_version",
)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def valuation_dataset(
    value: Any,
    stderr: Any,
    count: Any,
    *,
    data_names: Sequence[Any] | np.ndarray,
    method: str,
    parameters: Mapping[str, Any] | None = None,
    seed: str | None = None,
    utility_token: str = "",
    n_evaluations: int = 0,
    extra_attrs: Mapping[str, Any] | None = None,
    converged: Any = None,
    provenance: Mapping[str, Any] | None = None,
    estimate: str | None = None,
) -> xr.Dataset:
    """Wrap per-player arrays (numpy or dask, kept lazy) into a valuation Dataset.

    ``provenance`` (e.g. :meth:`dvl_dask.Utility.provenance`: model class and
    parameters, scorer, data fingerprint, library versions) is stored as JSON
    text in the ``provenance`` attr, beside ``utility_token``; read it back with
    :func:`provenance_of` or ``ds.dvl.provenance``.

    ``converged`` (optional, boolean per player) becomes the variable
    ``converged``: whether each player's own convergence criterion held.

    ``estimate`` (optional, one of :data:`ESTIMATES`) is stored in the
    ``estimate`` attr: what kind of number ``value`` is, which decides whether
    :func:`~dvl_dask.results.merge_results` may pool two results.

    Examples
    --------
    >>> import numpy as np
    >>> ds = valuation_dataset(np.ones(2), np.zeros(2), np.ones(2, int), data_names=["a", "b"], method="demo")
    >>> ds.value.dims, ds.sample.values.tolist()
    (('sample',), ['a', 'b'])
    """
    from ..validation import check_name

    check_name(method, "method", "valuation_dataset")
    if estimate is not None and estimate not in ESTIMATES:
        raise SchemaError(f"The 'estimate' argument of valuation_dataset must be one of {ESTIMATES}. Got {estimate!r}.")
    names = np.asarray(data_names)
    arrays = {"value": value, "stderr": stderr, "counts": count}
    data_vars = {}
    for name, arr in arrays.items():
        if tuple(_shape(arr, name, "valuation_dataset")) != (len(names),):
            raise SchemaError(
                f"The {name!r} array must have shape ({len(names)},) to match data_names. Got {tuple(arr.shape)}."
            )
        data_vars[name] = ((SAMPLE_DIM,), arr.astype(VARIABLES[name]))
    if converged is not None:
        if tuple(converged.shape) != (len(names),):
            raise SchemaError(
                f"The {CONVERGED!r} array must have shape ({len(names)},) to match data_names. "
                f"Got {tuple(converged.shape)}."
            )
        data_vars[CONVERGED] = ((SAMPLE_DIM,), converged.astype(bool))
    attrs = {
        "method": str(method),
        "parameters": json.dumps(_jsonable(dict(parameters or {})), sort_keys=True),
        "seed": "" if seed is None else str(seed),
        "utility_token": str(utility_token),
        "n_evaluations": int(n_evaluations),
        "dvl_dask_version": __version__,
        "schema_version": SCHEMA_VERSION,
    }
    if estimate is not None:
        attrs[ESTIMATE] = estimate
    if provenance is not None:
        attrs["provenance"] = json.dumps(_jsonable(dict(provenance)), sort_keys=True)
    if extra_attrs:
        attrs.update({k: _jsonable(v) for k, v in extra_attrs.items()})
    return describe_variables(xr.Dataset(data_vars, coords={SAMPLE_DIM: names}, attrs=attrs))


def _check_has_attrs(ds: Any, owner: str) -> None:
    if not isinstance(ds, xr.Dataset | xr.DataArray):
        raise SchemaError(
            f"The 'ds' argument of {owner} must be a dvl_dask result (xarray.Dataset or DataArray). Got "
            f"{type(ds).__name__}. To fix, pass what a method or open_result/open_influence returned."
        )


def _shape(arr: Any, name: str, owner: str) -> tuple[int, ...]:
    """The shape of an array argument, or SchemaError naming it when it is not an array."""
    shape = getattr(arr, "shape", None)
    if shape is None:
        raise SchemaError(
            f"The {name!r} argument of {owner} must be a numpy or dask array. Got {type(arr).__name__} {arr!r:.40}."
        )
    return tuple(shape)


def parameters_of(ds: xr.Dataset) -> dict[str, Any]:
    """The method parameters recorded in a result, as a dict."""
    _check_has_attrs(ds, "parameters_of")
    return json.loads(ds.attrs.get("parameters", "{}"))


def provenance_of(ds: xr.Dataset | xr.DataArray) -> dict[str, Any] | None:
    """What a result's identity was made of (the ``provenance`` attr), as a dict; None if not recorded.

    For a valuation result: the utility's class and token, the model's class
    and parameters, the scorer, the data's fingerprint, shapes and dtypes, and
    the library versions of the run (see :meth:`dvl_dask.Utility.provenance`).
    Results written by dvl_dask versions that did not record it give None.

    Examples
    --------
    >>> ds = valuation_dataset(np.ones(1), np.zeros(1), np.ones(1, int), data_names=["a"], method="demo",
    ...                        provenance={"model": {"class": "Demo"}})
    >>> provenance_of(ds)["model"]["class"]
    'Demo'
    """
    _check_has_attrs(ds, "provenance_of")
    text = ds.attrs.get("provenance")
    if text is None:
        return None
    return json.loads(text) if isinstance(text, str) else dict(text)


def is_cell_result(ds: xr.Dataset) -> bool:
    """Whether ``ds`` values cells (dims ``("sample", "feature")``, 2D-Shapley) rather than players."""
    return "value" in ds.data_vars and ds["value"].dims == PLAYER_DIMS[1]


def validate_valuation_dataset(ds: Any, *, cells: bool = False) -> xr.Dataset:
    """Check that ``ds`` follows the valuation schema; return it or raise :class:`SchemaError`.

    ``cells=True`` also accepts 2D-Shapley results (every variable over
    ``("sample", "feature")``, with both coordinates); by default a 2D result
    is refused with a message that says where it is supported.
    """
    if not isinstance(ds, xr.Dataset):
        raise SchemaError(f"A valuation result must be an xarray.Dataset. Got {type(ds).__name__}.")
    if "count" in ds.data_vars and "counts" not in ds.data_vars and int(ds.attrs.get("schema_version", 0)) < 2:
        # Results written by schema version 1 named the per-player count ``count``.
        ds = ds.rename_vars({"count": "counts"}).assign_attrs(schema_version=SCHEMA_VERSION)
    missing = [v for v in VARIABLES if v not in ds.data_vars]
    if missing:
        raise SchemaError(f"The result lacks the variable(s) {missing}; it was not written by dvl_dask.")
    dims = ds["value"].dims
    if dims == PLAYER_DIMS[1] and not cells:
        raise SchemaError(
            f"This is a 2D-Shapley result (one value per cell, dims {PLAYER_DIMS[1]}); this function needs one "
            f"value per player (dims {PLAYER_DIMS[0]}). {CELL_SUPPORT}."
        )
    allowed = PLAYER_DIMS if cells else PLAYER_DIMS[:1]
    for name, dtype in VARIABLES.items():
        var = ds[name]
        if var.dims not in allowed or var.dims != dims:
            expected = " or ".join(str(d) for d in allowed)
            raise SchemaError(f"Variable {name!r} must have dims {expected}, the same as 'value'. Got {var.dims}.")
        if var.dtype != np.dtype(dtype):
            raise SchemaError(f"Variable {name!r} must have dtype {np.dtype(dtype)}. Got {var.dtype}.")
    if CONVERGED in ds.data_vars:
        var = ds[CONVERGED]
        if var.dims != dims or var.dtype != np.dtype(bool):
            raise SchemaError(
                f"Variable {CONVERGED!r} must be boolean with dims {dims}. Got {var.dtype} {var.dims}."
            )
    for dim, what in ((SAMPLE_DIM, "the data names"), (FEATURE_DIM, "the feature names")):
        if dim in dims and dim not in ds.coords:
            raise SchemaError(f"The result lacks the '{dim}' coordinate holding {what}.")
    missing_attrs = [a for a in ATTRS if a not in ds.attrs]
    if missing_attrs:
        raise SchemaError(f"The result lacks the attribute(s) {missing_attrs}.")
    if int(ds.attrs["schema_version"]) > SCHEMA_VERSION:
        raise SchemaError(
            f"The result has schema version {ds.attrs['schema_version']}, newer than this dvl_dask "
            f"understands ({SCHEMA_VERSION}). To fix, upgrade dvl_dask."
        )
    return ds


def influence_dataarray(
    values: Any,
    *,
    test_names: Sequence[Any] | np.ndarray | None = None,
    train_names: Sequence[Any] | np.ndarray | None = None,
    feature_dims: Sequence[str] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.DataArray:
    """Label a (test × train [× features]) influence array, numpy or dask, lazily.

    Examples
    --------
    >>> import numpy as np
    >>> arr = influence_dataarray(np.zeros((2, 3)), test_names=["a", "b"], attrs={"mode": "up"})
    >>> arr.dims, arr.train_sample.values.tolist(), arr.attrs["mode"]
    (('test_sample', 'train_sample'), [0, 1, 2], 'up')
    """
    shape = _shape(values, "values", "influence_dataarray")
    if len(shape) < 2:
        raise SchemaError(f"Influence values must have at least 2 dims (test, train). Got shape {shape}.")
    n_extra = len(shape) - 2
    feature_dims = list(feature_dims) if feature_dims is not None else [f"feature_{i}" for i in range(n_extra)]
    if len(feature_dims) != n_extra:
        raise SchemaError(f"Expected {n_extra} feature dim names for shape {shape}. Got {feature_dims}.")
    coords = {
        TEST_DIM: np.arange(shape[0]) if test_names is None else np.asarray(test_names),
        TRAIN_DIM: np.arange(shape[1]) if train_names is None else np.asarray(train_names),
    }
    for dim, n in zip((TEST_DIM, TRAIN_DIM), shape[:2], strict=True):
        if len(coords[dim]) != n:
            raise SchemaError(f"{dim} labels have length {len(coords[dim])}, the array has {n} along it.")
    base = {"dvl_dask_version": __version__, "schema_version": SCHEMA_VERSION}
    base.update({k: _jsonable(v) for k, v in (attrs or {}).items()})
    return describe_variables(
        xr.DataArray(values, dims=(TEST_DIM, TRAIN_DIM, *feature_dims), coords=coords, name="influence", attrs=base)
    )


def self_influence_dataarray(
    values: Any,
    *,
    names: Sequence[Any] | np.ndarray | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.DataArray:
    """Label a (train [× features]) self-influence array, numpy or dask, lazily.

    Examples
    --------
    >>> arr = self_influence_dataarray(np.zeros(3), names=["a", "b", "c"], attrs={"mode": "up"})
    >>> arr.dims, arr.name, arr.train_sample.values.tolist()
    (('train_sample',), 'self_influence', ['a', 'b', 'c'])
    """
    shape = _shape(values, "values", "self_influence_dataarray")
    if len(shape) < 1:
        raise SchemaError(f"Self-influence values must have a sample dim. Got shape {shape}.")
    coords = {TRAIN_DIM: np.arange(shape[0]) if names is None else np.asarray(names)}
    if len(coords[TRAIN_DIM]) != shape[0]:
        raise SchemaError(f"{TRAIN_DIM} labels have length {len(coords[TRAIN_DIM])}, the array has {shape[0]}.")
    base = {"dvl_dask_version": __version__, "schema_version": SCHEMA_VERSION}
    base.update({k: _jsonable(v) for k, v in (attrs or {}).items()})
    dims = (TRAIN_DIM, *(f"feature_{i}" for i in range(len(shape) - 1)))
    return describe_variables(xr.DataArray(values, dims=dims, coords=coords, name="self_influence", attrs=base))
