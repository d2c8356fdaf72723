"""Persist results to zarr (local path or fsspec URL) and read them back validated.

Local writes go to a temporary sibling directory that is renamed into place,
so an interrupted write never leaves a half-written result under the target
name. Object stores have no atomic rename; there the data is written first and
a ``_dvl_complete`` marker attribute last, and :func:`open_result` refuses a
store without the marker.
"""

from __future__ import annotations

import os
import shutil
import uuid
from typing import Any

import xarray as xr

from .. import config
from ..errors import ResultExistsError, SchemaError
from ._schema import validate_valuation_dataset
from ._stores import (
    COMPLETE,
    fsspec_mapper,
    is_local,
    local_path,
    open_zarr_dataset,
    portable_labels,
    restore_labels,
    store_exists,
)

__all__ = ["open_result", "to_zarr"]


def to_zarr(
    ds: xr.Dataset,
    url: str | os.PathLike[str],
    *,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    compute: bool = True,
) -> Any:
    """Write a valuation result to zarr at ``url`` (a path or e.g. ``s3://bucket/x.zarr``).

    Lazy results are computed chunk by chunk while writing. With
    ``compute=False`` a ``dask.delayed`` object is returned that performs the
    write (and the atomic rename, for local paths) when computed.

    Raises
    ------
    ResultExistsError
        If something exists at ``url`` and ``overwrite`` is False.
    """
    if isinstance(ds, xr.DataArray) and ds.name in ("influence", "influence_factors"):
        raise SchemaError(
            "to_zarr writes valuation results (xr.Dataset). Got an influence DataArray. To fix, write it with "
            "dvl_dask.influence_to_zarr(values, url), which streams it block by block."
        )
    validate_valuation_dataset(ds)
    url = os.fspath(url)
    fmt = int(config.get(config.RESULTS_ZARR_FORMAT))
    out = portable_labels(ds.copy())
    out.attrs = dict(ds.attrs)
    out.attrs[COMPLETE] = True
    if is_local(url):
        target = os.path.abspath(local_path(url))
        if os.path.exists(target) and not overwrite:
            raise ResultExistsError(f"{target} exists. To fix, pass overwrite=True or choose another path.")
        tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        delayed_write = out.to_zarr(tmp, mode="w", consolidated=False, zarr_format=fmt, compute=False)

        def _finish(_: Any) -> str:
            if os.path.exists(target):
                backup = f"{target}.old-{uuid.uuid4().hex[:8]}"
                os.replace(target, backup)
                os.replace(tmp, target)
                shutil.rmtree(backup, ignore_errors=True)
            else:
                os.replace(tmp, target)
            return target

        import dask

        finish = dask.delayed(_finish, pure=False)(delayed_write)
        if compute:
            try:
                return finish.compute()
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return finish
    mapper = fsspec_mapper(url, storage_options)
    if not overwrite and store_exists(mapper):
        raise ResultExistsError(f"{url} exists. To fix, pass overwrite=True or choose another URL.")
    body = out.copy()
    body.attrs = {k: v for k, v in out.attrs.items() if k != COMPLETE}
    written = body.to_zarr(mapper, mode="w", consolidated=False, zarr_format=fmt, compute=compute)

    def _mark(_: Any) -> str:
        import zarr

        group = zarr.open_group(mapper, mode="r+", zarr_format=fmt)
        group.attrs[COMPLETE] = True
        return url

    if compute:
        return _mark(written)
    import dask

    return dask.delayed(_mark, pure=False)(written)


def open_result(
    url: str | os.PathLike[str],
    *,
    storage_options: dict[str, Any] | None = None,
    chunks: Any = None,
) -> xr.Dataset:
    """Open a stored valuation result lazily and validate its schema.

    ``chunks`` is passed to :func:`xarray.open_zarr` (default: the stored chunks).

    Raises
    ------
    SchemaError
        If the store is incomplete (an interrupted write) or not a dvl_dask result.
    """
    url = os.fspath(url)
    ds = open_zarr_dataset(url, storage_options, chunks)
    if not ds.attrs.pop(COMPLETE, False):
        raise SchemaError(
            f"The result at {url} is incomplete: its write was interrupted. To fix, write it again."
        )
    return validate_valuation_dataset(restore_labels(ds))
