"""Store helpers shared by every result writer: URLs, fsspec/zarr stores, labels, the completion marker."""

from __future__ import annotations

import os
import shutil
from typing import Any

import numpy as np
import xarray as xr

__all__ = [
    "COMPLETE",
    "delete_store",
    "fsspec_mapper",
    "has_content",
    "is_local",
    "local_path",
    "portable_labels",
    "restore_labels",
    "store_exists",
    "zarr_store",
]

#: Attribute written last: a store without it holds an interrupted write.
COMPLETE = "_dvl_complete"


def is_local(url: str) -> bool:
    return "://" not in str(url) or str(url).startswith("file://")


def local_path(url: str) -> str:
    return str(url)[len("file://") :] if str(url).startswith("file://") else str(url)


def fsspec_mapper(url: str, storage_options: dict[str, Any] | None) -> Any:
    import fsspec

    return fsspec.get_mapper(url, **(storage_options or {}))


def zarr_store(url: str, storage_options: dict[str, Any] | None = None, *, read_only: bool = False) -> Any:
    """A zarr v3 store for ``url``: an absolute local path, or an ``FsspecStore`` for remote URLs."""
    if is_local(url):
        return os.path.abspath(local_path(url))
    from zarr.storage import FsspecStore

    store = FsspecStore.from_url(url, storage_options=dict(storage_options or {}), read_only=read_only)
    # fsspec reuses filesystem instances, listings cached by one of them go stale when another
    # (or another process) writes or deletes: start every store with fresh listings.
    invalidate = getattr(store.fs, "invalidate_cache", None)
    if callable(invalidate):
        invalidate()
    return store


def open_zarr_dataset(url: str, storage_options: dict[str, Any] | None, chunks: Any) -> xr.Dataset:
    """``xr.open_zarr`` of a stored result (lazy; default chunks: the stored ones).

    Missing stores raise ``FileNotFoundError``; anything else unreadable raises
    :class:`~dvl_dask.errors.SchemaError` naming the URL.
    """
    from ..errors import SchemaError

    store = zarr_store(url, storage_options, read_only=True)
    try:
        return xr.open_zarr(store, consolidated=False, chunks={} if chunks is None else chunks)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise SchemaError(f"Cannot read a zarr result at {url}: {exc}") from exc


def store_exists(mapper: Any) -> bool:
    return any(k in mapper for k in ("zarr.json", ".zgroup"))


def has_content(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether anything exists at ``url`` (a non-empty directory or object-store prefix, or a file)."""
    if is_local(url):
        path = os.path.abspath(local_path(url))
        return os.path.isfile(path) or (os.path.isdir(path) and bool(os.listdir(path)))
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    try:
        return bool(fs.exists(path) and (fs.isfile(path) or fs.ls(path)))
    except FileNotFoundError:
        return False


def delete_store(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Remove everything under ``url`` (a local directory or an object-store prefix)."""
    if is_local(url):
        shutil.rmtree(os.path.abspath(local_path(url)), ignore_errors=True)
        return
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if fs.exists(path):
        fs.rm(path, recursive=True)


def portable_labels(ds: xr.Dataset) -> xr.Dataset:
    """Text coordinates as variable-length strings (fixed-width numpy strings have no zarr v3 spec)."""
    for name, coord in ds.coords.items():
        if coord.dtype.kind == "U":
            ds = ds.assign_coords({name: coord.astype(object)})
    return ds


def restore_labels(ds: Any) -> Any:
    """Text coordinates read back from zarr as numpy ``str`` arrays again."""
    for name, coord in ds.coords.items():
        if coord.dtype.kind in "OT":
            ds = ds.assign_coords({name: np.array([str(v) for v in coord.values.tolist()])})
    return ds
