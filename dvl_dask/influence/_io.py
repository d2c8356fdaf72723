"""Stream a lazy (dask) influence result to zarr, one task per block, resumably."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..chunks import BlockPlan, DaskMapper
from ..errors import InvalidDataError, InvalidParameterError
from ..keys import fingerprint
from ..results import TEST_DIM, TRAIN_DIM, open_block_sink
from ..validation import is_dask_array
from ._sequences import labels, model_identity

__all__ = ["influence_to_zarr"]


def influence_to_zarr(
    result: Any,
    url: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    test_names: Sequence[Any] | np.ndarray | None = None,
    train_names: Sequence[Any] | np.ndarray | None = None,
    zarr_chunks: tuple[int, int] | None = None,
    overwrite: bool = False,
    resume: bool = True,
    repair: bool = False,
    compute: bool = True,
) -> Any:
    """Write an influence matrix (dask array or labelled ``xr.DataArray``) to zarr, block by block.

    Every block is computed by one task and written to its own zarr chunk,
    then marked done; memory holds a few blocks at a time whatever the size of
    the matrix. If the same computation was interrupted before, the blocks it
    finished are skipped. The store is marked complete after the last block;
    read it with :func:`dvl_dask.open_influence` or
    ``xr.open_zarr(url, consolidated=False)``.

    Parameters
    ----------
    result : dask array or xarray.DataArray
        E.g. from :meth:`DaskInfluenceCalculator.influences` (``as_xarray=True``
        keeps labels and attributes). Numpy arrays are accepted too.
    url : str or path
        Local path or fsspec URL (``s3://bucket/influences.zarr``).
    storage_options : mapping, optional
        fsspec options for remote URLs (credentials, ``endpoint_url``).
    test_names, train_names : sequence, optional
        Labels, when ``result`` is not a DataArray (default: positions).
    zarr_chunks : (int, int), optional
        Zarr chunk sizes along the test and training axes. Default: the
        result's chunks if they are regular (equal but for a smaller last
        one), else the largest chunk along each axis (the result is then
        rechunked).
    overwrite : bool
        Replace an existing result or an interrupted write of another computation.
    resume : bool
        Continue an interrupted write of the same computation (default True).
    repair : bool
        Repair a store of the same computation: every stored chunk is
        verified (its presence and checksum) and only the blocks whose chunk
        is missing, truncated or altered are recomputed and rewritten; the
        store is then marked complete again. Use it when
        :func:`~dvl_dask.open_influence` raises
        :class:`~dvl_dask.errors.ResultCorruptError`. A store of another
        computation is refused (``overwrite=True`` replaces it).
    compute : bool
        False returns a ``dask.delayed`` object that performs the write.

    Returns
    -------
    str or dask.delayed.Delayed
        The URL, once written.

    Raises
    ------
    ResultExistsError
        If a result exists at ``url`` and neither ``overwrite`` nor (for the
        same computation) ``repair`` is True.

    Examples
    --------
    Recompute the damaged chunks of a stored matrix, keeping the others:

    >>> influence_to_zarr(lazy, "influences.zarr", repair=True)  # doctest: +SKIP
    """
    import dask.array as da

    if zarr_chunks is not None:
        zarr_chunks = _check_zarr_chunks(zarr_chunks)
    attrs: dict[str, Any] = {}
    if isinstance(result, xr.DataArray):
        dims = tuple(str(d) for d in result.dims)
        name = str(result.name or "influence")
        attrs = dict(result.attrs)
        coord_names = [result[d].values if d in result.coords else None for d in dims[:2]]
        test_names = coord_names[0] if test_names is None else test_names
        train_names = coord_names[1] if train_names is None else train_names
        values = result.data
    else:
        values = result
        dims = (TEST_DIM, TRAIN_DIM)
        name = "influence"
    if not is_dask_array(values):
        values = np.asarray(values)
        values = da.from_array(values, chunks=tuple(zarr_chunks or values.shape[:2]) + (-1,) * (values.ndim - 2))
    if values.ndim < 2:
        raise InvalidDataError(
            f"influence_to_zarr needs an array with a test and a training axis. Got shape {values.shape}."
        )
    if any(len(c) > 1 for c in values.chunks[2:]):
        values = values.rechunk({d: -1 for d in range(2, values.ndim)})
    plan = BlockPlan(values.chunks[0], values.chunks[1])
    grid = plan.regularized() if zarr_chunks is None else BlockPlan.regular(plan.n_rows, zarr_chunks[0], plan.n_cols,
                                                                            zarr_chunks[1])
    owner = "influence_to_zarr"
    coords = {
        dims[0]: labels(test_names, plan.n_rows, "test_names", owner),
        dims[1]: labels(train_names, plan.n_cols, "train_names", owner),
    }
    sink = open_block_sink(
        url, plan=grid, name=name, dims=dims, coords=coords,
        # The provenance is a description (library versions, optional modules imported), not part of the identity.
        token=fingerprint(values.name, grid.chunks, coords[dims[0]], coords[dims[1]],
                          {k: v for k, v in attrs.items() if k != "provenance"}),
        attrs=attrs, dtype=values.dtype, trailing_shape=values.shape[2:], storage_options=storage_options,
        overwrite=overwrite, resume=resume, identity=model_identity(attrs), repair=repair,
    )
    return DaskMapper().store(values, sink, compute=compute)


def _check_zarr_chunks(zarr_chunks: Any) -> tuple[int, int]:
    """``zarr_chunks`` as two positive ints (test, train), else InvalidParameterError."""
    ok = isinstance(zarr_chunks, (tuple, list)) and len(zarr_chunks) == 2
    if ok:
        ok = all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c > 0 for c in zarr_chunks)
    if not ok:
        raise InvalidParameterError(
            "The 'zarr_chunks' parameter of influence_to_zarr must be None or two positive ints (rows of test "
            f"points, columns of training points per zarr chunk). Got {zarr_chunks!r} instead."
        )
    return int(zarr_chunks[0]), int(zarr_chunks[1])
