"""Persist results to zarr (local path or fsspec URL) and read them back validated.

Local writes go to a temporary sibling directory that is renamed into place,
so an interrupted write never leaves a half-written result under the target
name. Every temporary (and backup) directory holds a marker file dvl_dask
wrote (:data:`._stores.TEMPORARY_MARKER`); those of killed writes are removed
by the next write to the same path, and nothing without the marker is ever
removed, whatever its name or age. Object stores have no atomic rename; there the data is written
first and a ``_dvl_complete`` marker attribute last, and :func:`open_result`
refuses a store without the marker. ``overwrite=True`` replaces only results
dvl_dask wrote (recognised by their metadata), never other data.

Every chunk is written (even one equal to the fill value) with a checksum, and
:func:`open_result` verifies each chunk as it is read (see :mod:`._verify`): a
missing, truncated or altered chunk raises
:class:`~dvl_dask.errors.ResultCorruptError`, never NaN. Results written before
this carry no ``_dvl_verified_chunks`` attribute and are read as before.
"""

from __future__ import annotations

import datetime
import os
import uuid
from typing import Any

import xarray as xr

from .. import config
from ..errors import InvalidParameterError, NotAResultError, ResultNotFoundError, SchemaError
from ._schema import describe_variables, validate_valuation_dataset
from ._stores import (
    ABSENT,
    CHECKPOINT,
    COMPLETE,
    INFLUENCE,
    STAGED,
    VALUATION,
    check_location,
    clean_stale_temporaries,
    consolidate,
    explains_store_errors,
    fsspec_mapper,
    is_local,
    local_path,
    open_zarr_dataset,
    portable_labels,
    refuse_to_replace,
    remove_temporary,
    restore_labels,
    store_kind,
    temporary_sibling,
)

__all__ = ["open_result", "to_zarr"]


@explains_store_errors("to_zarr", 1)
def to_zarr(
    ds: xr.Dataset,
    url: str | os.PathLike[str],
    *,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    compute: bool = True,
) -> Any:
    """Write a valuation result to zarr at ``url`` (a path or e.g. ``s3://bucket/x.zarr``).

    Lazy results are computed chunk by chunk while writing. The store is
    self-describing: consolidated metadata (plain ``xr.open_zarr(url)`` reads
    it without a warning), CF-style ``long_name``/``description``/``units`` on
    every variable, the result's attrs (method, parameters, seed, utility
    token and ``provenance``: model, scorer, data fingerprint and shapes,
    library versions) and ``date_created``. With
    ``compute=False`` a ``dask.delayed`` object is returned that performs the
    write (and the atomic rename, for local paths) when computed.

    ``overwrite=True`` replaces a valuation or influence result that dvl_dask
    wrote (recognised by its metadata), and nothing else: a file, a directory
    of other files, another tool's zarr store or a checkpoint is refused and
    left intact. Temporary directories that killed writes left next to
    ``url`` (recognised by the marker file dvl_dask writes inside them, never
    by their name) are removed.

    Raises
    ------
    ResultExistsError
        If a result exists at ``url`` and ``overwrite`` is False, or anything
        other than a dvl_dask result exists there (whatever ``overwrite``).
    InvalidParameterError
        If ``url`` is empty or the current directory.
    StoreAccessError
        If ``url``'s directory cannot be written (read-only), or an object
        store refuses the credentials.
    """
    if isinstance(ds, xr.DataArray) and ds.name in ("influence", "influence_factors"):
        raise SchemaError(
            "to_zarr writes valuation results (xr.Dataset). Got an influence DataArray. To fix, write it with "
            "dvl_dask.influence_to_zarr(values, url), which streams it block by block."
        )
    validate_valuation_dataset(ds, cells=True)
    url = check_location(url, "to_zarr")
    if not isinstance(overwrite, bool):
        raise InvalidParameterError(f"The 'overwrite' parameter of to_zarr must be a bool. Got {overwrite!r}.")
    fmt = int(config.get(config.RESULTS_ZARR_FORMAT))
    out = describe_variables(portable_labels(ds.copy()))
    out.attrs = dict(ds.attrs)
    # When the result was first stored (ISO 8601, UTC; kept when a stored result is written again).
    out.attrs.setdefault("date_created", datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    out.attrs[COMPLETE] = True
    out.attrs[VERIFIED_CHUNKS] = True
    out = _with_checksums(out, fmt)
    if is_local(url):
        target = os.path.abspath(local_path(url))
        clean_stale_temporaries(target)
        refuse_to_replace(target, store_kind(target), "to_zarr", overwrite=overwrite)
        tmp = temporary_sibling(target)
        staged = os.path.join(tmp, STAGED)
        delayed_write = out.to_zarr(staged, mode="w", consolidated=False, zarr_format=fmt, compute=False,
                                    write_empty_chunks=True)

        def _finish(_: Any) -> str:
            consolidate(staged)
            if os.path.exists(target):
                # Checked again at commit time: something may have appeared since the graph was built.
                refuse_to_replace(target, store_kind(target), "to_zarr", overwrite=overwrite)
                backup = temporary_sibling(target, "old")
                os.replace(target, os.path.join(backup, STAGED))
                os.replace(staged, target)
                remove_temporary(backup, target)
            else:
                os.replace(staged, target)
            remove_temporary(tmp, target)
            return target

        import dask

        finish = dask.delayed(_finish, pure=False)(delayed_write)
        if compute:
            try:
                return finish.compute()
            finally:
                remove_temporary(tmp, target)
        return finish
    refuse_to_replace(url, store_kind(url, storage_options), "to_zarr", overwrite=overwrite)
    mapper = fsspec_mapper(url, storage_options)
    body = out.copy()
    body.attrs = {k: v for k, v in out.attrs.items() if k != COMPLETE}
    written = body.to_zarr(mapper, mode="w", consolidated=False, zarr_format=fmt, compute=compute,
                           write_empty_chunks=True)

    def _mark(_: Any) -> str:
        import zarr

        group = zarr.open_group(mapper, mode="r+", zarr_format=fmt, use_consolidated=False)
        group.attrs[COMPLETE] = True
        consolidate(mapper)
        return url

    if compute:
        return _mark(written)
    import dask

    return dask.delayed(_mark, pure=False)(written)


#: Attribute of results whose every chunk is written (even one equal to the fill value): a missing chunk
#: is damage, and :func:`open_result` verifies each chunk as it is read.
VERIFIED_CHUNKS = "_dvl_verified_chunks"


def _with_checksums(ds: xr.Dataset, fmt: int) -> xr.Dataset:
    """Data variables stored with a checksum per chunk, so truncated or altered chunks fail to read.

    zarr v3: a CRC-32C after compression; zarr v2: a CRC-32 filter (checked after decompression).
    """
    import numcodecs

    from ._verify import chunk_codecs

    codecs = {"compressors": chunk_codecs()} if fmt == 3 else {"filters": [numcodecs.CRC32()]}
    for name in ds.data_vars:
        encoding = {k: v for k, v in ds[name].encoding.items() if k not in ("compressor", "compressors", "filters")}
        ds[name].encoding = {**encoding, **codecs}
    return ds


@explains_store_errors("open_result", 0)
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
    ResultNotFoundError
        If nothing is stored at ``url`` (also a ``FileNotFoundError``).
    NotAResultError
        If ``url`` holds something else: a file, an empty directory, another
        tool's store, an influence result (use :func:`dvl_dask.open_influence`)
        or a checkpoint (use :func:`dvl_dask.valuation.load_checkpoint`). A subclass of
        :class:`~dvl_dask.errors.SchemaError`.
    SchemaError
        If the store holds an interrupted write, or breaks the schema.
    """
    url = check_location(url, "open_result")
    kind = check_readable(url, storage_options, "open_result", VALUATION)
    if kind != VALUATION:
        raise NotAResultError(f"{url} does not hold a valuation result written by dvl_dask.")
    ds = open_zarr_dataset(url, storage_options, chunks)
    if not ds.attrs.pop(COMPLETE, False):
        raise SchemaError(
            f"The result at {url} is incomplete: its write was interrupted. To fix, write it again."
        )
    if ds.attrs.pop(VERIFIED_CHUNKS, False):
        ds = _verified(ds, url, storage_options, chunks)
    return validate_valuation_dataset(restore_labels(ds), cells=True)


def _verified(ds: xr.Dataset, url: str, storage_options: dict[str, Any] | None, chunks: Any) -> xr.Dataset:
    """``ds`` whose data variables verify every chunk as it is read (lazily, one task per chunk)."""
    from ._verify import verified_array

    write_id = uuid.uuid4().hex  # a fresh handle per open: the store may have been rewritten
    for name in list(ds.data_vars):
        data = verified_array(url, storage_options, str(name), write_id, ds[name].dims, writer="to_zarr")
        var = ds[name].copy(data=data)
        ds[name] = var.chunk(chunks) if chunks is not None else var
    return ds


def check_readable(url: str, storage_options: dict[str, Any] | None, owner: str, wanted: str) -> str:
    """The kind of store at ``url``; ResultNotFoundError or NotAResultError unless it is ``wanted``."""
    if is_local(url):
        path = os.path.abspath(local_path(url))
        if not os.path.exists(path):
            raise ResultNotFoundError(f"{owner}: there is no {wanted} at {url}: the path does not exist.")
        if os.path.isdir(path) and not os.listdir(path):
            raise NotAResultError(f"{owner}: {url} is an empty directory, not a dvl_dask {wanted}.")
    kind = store_kind(url, storage_options)
    if kind == ABSENT:
        raise ResultNotFoundError(f"{owner}: there is no {wanted} at {url}: nothing is stored there.")
    if kind == wanted:
        return kind
    hints = {
        CHECKPOINT: "it is a checkpoint of run_until_converged; read it with dvl_dask.valuation.load_checkpoint(url)",
        INFLUENCE: "it is an influence result; open it with dvl_dask.open_influence(url)",
        VALUATION: "it is a valuation result; open it with dvl_dask.open_result(url)",
    }
    hint = hints.get(kind, "it is a file, a directory of other files or another tool's zarr store")
    raise NotAResultError(f"{owner}: {url} does not hold a dvl_dask {wanted}: {hint}.")
