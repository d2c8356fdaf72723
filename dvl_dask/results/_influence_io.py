"""Influence arrays in zarr, written block by block, resumable, on local disk or object stores.

Layout (zarr v3, readable with ``xr.open_zarr(url, consolidated=False)``)::

    <root>/                 attrs: _dvl_write (header: name, token, block grid), _dvl_complete (last)
    <root>/influence        (test_sample, train_sample[, features]) values, chunked by blocks
    <root>/test_sample      labels of the test points
    <root>/train_sample     labels of the training points
    <root>/_dvl_progress/done   uint8 (block rows, block cols), one zarr chunk per block

A block is written in two steps: its values, then its ``done`` marker (its own
zarr chunk, so concurrent writers never touch the same object). Chunk writes
are atomic on local disk (zarr writes to a temporary file and renames) and on
object stores (a PUT), so an interrupted run leaves only whole chunks; a re-run
of the same computation skips the blocks marked done and rewrites the others.
The ``_dvl_complete`` attribute is written after the last block, and
:func:`open_influence` refuses a store without it. A store whose blocks are all
written but whose marker is missing (removed, or a crash between dropping the
progress markers and writing it) is verified chunk by chunk by the same write,
which keeps the blocks that verify and rewrites the others.

Every chunk carries a CRC-32C after its compression, and is written even when
it equals the fill value. :func:`open_influence` reads lazily, and each chunk
task verifies its chunk: a missing, truncated or altered chunk raises
:class:`~dvl_dask.errors.ResultCorruptError` naming the block (never NaN, never
a raw decompression error). Stores written before the checksum are verified
for presence and decoding only.

``repair=True`` repairs a store of the same computation in place: the
completion marker is removed first (so a crash leaves a store the same write
re-verifies), every chunk is verified, the blocks that verify are marked done
and only the others are recomputed and rewritten; the store is then marked
complete again.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from .._version import __version__
from ..errors import InvalidDataError, InvalidParameterError, ResultExistsError, SchemaError
from ..validation import check_bool, check_name
from ._schema import SCHEMA_VERSION, _jsonable, describe_variables
from ._stores import (
    CHECKPOINT,
    COMPLETE,
    FOREIGN,
    INFLUENCE,
    check_location,
    consolidate,
    delete_store,
    explains_store_errors,
    has_content,
    open_zarr_dataset,
    portable_labels,
    refuse_to_replace,
    restore_labels,
    store_kind,
    zarr_store,
)
from ._verify import check_chunk, chunk_codecs, chunk_slices, verified_array

__all__ = ["PROGRESS_GROUP", "WRITE_HEADER", "ZarrBlockSink", "open_block_sink", "open_influence"]

WRITE_HEADER = "_dvl_write"
PROGRESS_GROUP = "_dvl_progress"


def _open_for_writing(url: str, storage_options: dict[str, Any] | None) -> Any:
    """The store's root group for writing: its real hierarchy, never consolidated metadata (which a
    finished store carries and a resumed or completed write would otherwise read stale)."""
    import zarr

    return zarr.open_group(zarr_store(url, storage_options), mode="r+", zarr_format=3, use_consolidated=False)
_HEADER_FORMAT = 1

_HANDLES: dict[tuple[str, str], tuple[Any, Any]] = {}
_HANDLES_LOCK = threading.Lock()


class _Grid:
    """The block grid of a sink: chunk sizes per blocked axis (a picklable stand-in for BlockPlan)."""

    def __init__(self, chunks: Sequence[Sequence[int]]) -> None:
        self.chunks = tuple(tuple(int(c) for c in axis) for axis in chunks)
        self.grid = tuple(len(c) for c in self.chunks)
        self.shape = tuple(sum(c) for c in self.chunks)
        self.offsets = tuple(tuple(np.concatenate([[0], np.cumsum(c)]).tolist()) for c in self.chunks)

    def block_slices(self, index: Sequence[int]) -> tuple[slice, ...]:
        return tuple(slice(off[i], off[i + 1]) for off, i in zip(self.offsets, index))

    def block_shape(self, index: Sequence[int]) -> tuple[int, ...]:
        return tuple(c[i] for c, i in zip(self.chunks, index))


def _check_plan(plan: Any, owner: str) -> None:
    """A block grid: an object with ``chunks`` (sizes per blocked axis) and ``grid``, such as a BlockPlan."""
    chunks = getattr(plan, "chunks", None)
    if getattr(plan, "grid", None) is None or not isinstance(chunks, tuple | list) or not chunks:
        raise InvalidParameterError(
            f"The 'plan' argument of {owner} must be a block grid such as dvl_dask.chunks.BlockPlan (with "
            f"'chunks' and 'grid'). Got {type(plan).__name__} {plan!r:.60}."
        )


class ZarrBlockSink:
    """A :class:`~dvl_dask.chunks.BlockSink` writing blocks into a zarr array (picklable).

    Build it with :func:`open_block_sink`. ``plan`` is the block grid (an
    object with ``chunks`` and ``grid`` such as a
    :class:`~dvl_dask.chunks.BlockPlan`); blocks may straddle zarr chunks when
    written by one process, but writers running in parallel need blocks equal
    to zarr chunks (the :class:`~dvl_dask.chunks.DaskMapper` rechunks to it).
    """

    def __init__(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None,
        *,
        name: str,
        plan: Any,
        token: str,
        write_id: str,
        done: np.ndarray | None,
        spec: dict[str, Any] | None,
    ) -> None:
        _check_plan(plan, "ZarrBlockSink")
        check_name(name, "name", "ZarrBlockSink")
        check_name(token, "token", "ZarrBlockSink")
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.name = name
        self.plan = plan
        self.token = token
        self.write_id = write_id
        self._grid = _Grid(plan.chunks)
        self._done = done
        self._spec = spec  # set while the store is still to be created (dtype unknown)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._spec is None:
            state["_done"] = None  # workers only write; the mask matters where the graph is built
        return state

    def __repr__(self) -> str:
        return f"ZarrBlockSink({self.url!r}, {self.name!r}, {len(self.pending())} of {self._n_blocks} blocks pending)"

    @property
    def _n_blocks(self) -> int:
        return int(np.prod(self._grid.grid))

    # -- BlockSink protocol ---------------------------------------------------------------

    def done(self, index: tuple[int, ...]) -> bool:
        """Whether block ``index`` was stored by an earlier (interrupted) run."""
        return bool(self._done[tuple(index)]) if self._done is not None else False

    def pending(self) -> list[tuple[int, ...]]:
        """Blocks still to write, in row-major order."""
        return [tuple(int(v) for v in idx) for idx in np.ndindex(*self._grid.grid) if not self.done(idx)]

    def write(self, index: tuple[int, ...], block: Any) -> None:
        """Store block ``index`` (a numpy array), then mark it done."""
        block = np.asarray(block)
        if self._spec is not None:
            self._create(block.dtype, block.shape[len(self._grid.grid) :])
        expected = self._grid.block_shape(index)
        if tuple(block.shape[: len(expected)]) != expected:
            raise InvalidDataError(
                f"Block {index} written to {self.url} has shape {block.shape}; the plan expects {expected} "
                "along the sample axes."
            )
        arr, mask = self._handles()
        arr[self._grid.block_slices(index)] = block
        mask[tuple(slice(i, i + 1) for i in index)] = 1

    def finish(self) -> str:
        """Check that every block is stored, mark the store complete and drop the progress markers."""

        if self._spec is not None:
            raise SchemaError(f"No block was written to {self.url}: the computation produced no data.")
        group = _open_for_writing(self.url, self.storage_options)
        done = np.asarray(group[PROGRESS_GROUP]["done"][...]) > 0
        if not done.all():
            missing = [tuple(int(v) for v in idx) for idx in np.argwhere(~done)[:5]]
            raise SchemaError(
                f"{int((~done).sum())} of {done.size} blocks of {self.url} were not written (first: {missing}). "
                "The data produced fewer blocks than planned. Run the write again to complete it."
            )
        delete_store(f"{self.url.rstrip('/')}/{PROGRESS_GROUP}", self.storage_options)
        group.attrs[COMPLETE] = True
        consolidate(zarr_store(self.url, self.storage_options))  # the last write: the store is final
        with _HANDLES_LOCK:
            _HANDLES.pop((self.url, self.write_id), None)
        return self.url

    # -- internals ------------------------------------------------------------------------------

    def _handles(self) -> tuple[Any, Any]:
        key = (self.url, self.write_id)
        with _HANDLES_LOCK:
            found = _HANDLES.get(key)
        if found is None:

            group = _open_for_writing(self.url, self.storage_options)
            # every chunk is written, even one equal to the fill value: a missing chunk then means damage
            found = (group[self.name].with_config({"write_empty_chunks": True}), group[PROGRESS_GROUP]["done"])
            with _HANDLES_LOCK:
                if len(_HANDLES) > 32:
                    _HANDLES.clear()
                _HANDLES[key] = found
        return found

    def _create(self, dtype: Any, trailing: tuple[int, ...]) -> None:
        import dask.array as da
        import zarr

        spec = self._spec
        assert spec is not None
        dims = list(spec["dims"])
        n_axes = len(self._grid.grid)
        if len(dims) < n_axes + len(trailing):
            dims += [f"feature_{k}" for k in range(n_axes + len(trailing) - len(dims))]
        if len(dims) != n_axes + len(trailing):
            raise InvalidDataError(
                f"Blocks written to {self.url} have {len(trailing)} trailing axes, but the dims {dims} name "
                f"{len(dims) - n_axes}."
            )
        shape = self._grid.shape + tuple(trailing)
        chunks = tuple(max(c) for c in self._grid.chunks) + tuple(trailing)
        placeholder = da.empty(shape, chunks=chunks, dtype=dtype)
        var = describe_variables(
            xr.DataArray(placeholder, dims=dims, coords=spec["coords"], name=self.name, attrs=spec["attrs"])
        )
        var.encoding = {"compressors": chunk_codecs()}
        ds = portable_labels(var.to_dataset())
        ds.attrs = {WRITE_HEADER: spec["header"]}
        store = zarr_store(self.url, self.storage_options)
        ds.to_zarr(store, mode="w", compute=False, consolidated=False, zarr_format=3)
        group = zarr.open_group(store, mode="r+", zarr_format=3, use_consolidated=False)
        progress = group.create_group(PROGRESS_GROUP)
        progress.create_array("done", shape=self._grid.grid, chunks=(1,) * n_axes, dtype="u1", fill_value=0)
        self._spec = None
        self._done = np.zeros(self._grid.grid, dtype=bool)


def _header(
    name: str, token: str, plan: Any, dims: Sequence[str], identity: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "format": _HEADER_FORMAT,
        "name": name,
        "token": token,
        "identity": _canonical({"dvl_dask_version": __version__, **(identity or {})}),
        "blocks": [list(map(int, c)) for c in plan.chunks],
        "dims": list(dims)[: len(plan.chunks)],
        "id": uuid.uuid4().hex,
    }


def _canonical(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=_jsonable))


#: Recorded for people reading the store; the model token already identifies what they describe.
_DESCRIPTIVE = ("dvl_dask_version", "model_parameters")


def _same_identity(stored: Any, now: dict[str, Any]) -> bool:
    """Same model (token) and mode; another dvl_dask version is accepted when the model's token is unchanged."""
    if not isinstance(stored, dict):
        return False
    return {k: v for k, v in stored.items() if k not in _DESCRIPTIVE} == {
        k: v for k, v in now.items() if k not in _DESCRIPTIVE
    }


def _differences(
    group: Any, stored: dict[str, Any], header: dict[str, Any], dtype: Any, trailing_shape: Any, n_axes: int
) -> list[str]:
    """What distinguishes an interrupted write in ``group`` from the one about to start (empty: resumable)."""
    differing = [k for k in ("name", "token", "blocks", "dims") if stored.get(k) != header[k]]
    if not _same_identity(stored.get("identity"), header["identity"]):
        differing.append("identity (the model or its mode)")
    if differing:
        return differing
    if header["name"] not in group:
        return ["stored arrays"]
    arr = group[header["name"]]
    if dtype is not None and np.dtype(arr.dtype) != np.dtype(dtype):
        differing.append("dtype")
    if trailing_shape is not None and tuple(arr.shape[n_axes:]) != tuple(trailing_shape):
        differing.append("shape")
    return differing


def _reverify(
    url: str, storage_options: Mapping[str, Any] | None, name: str, grid: _Grid, keep: np.ndarray | None = None
) -> np.ndarray:
    """Blocks of a store of the same computation whose chunks verify are marked done, the rest pending.

    ``keep``: only these blocks may count as done (the progress marks of an interrupted write); default all.
    """

    done = verify_blocks(url, storage_options, name, grid)
    if keep is not None:
        done &= keep
    group = _open_for_writing(url, storage_options)
    progress = group.require_group(PROGRESS_GROUP)
    mask = progress.create_array("done", shape=grid.grid, chunks=(1,) * len(grid.grid), dtype="u1", fill_value=0,
                                 overwrite=True)
    mask[...] = done.astype("u1")
    return done


def _reopen_for_repair(url: str, storage_options: Mapping[str, Any] | None, name: str, grid: _Grid) -> np.ndarray:
    """A complete store to repair: unmark it complete first (a crash then leaves a store the same write
    re-verifies), then mark the blocks whose chunks verify as done; the others are pending."""
    group = _open_for_writing(url, storage_options)
    del group.attrs[COMPLETE]
    return _reverify(url, storage_options, name, grid)


@explains_store_errors("influence_to_zarr", 0)
def open_block_sink(
    url: str | os.PathLike[str],
    *,
    plan: Any,
    name: str,
    dims: Sequence[str],
    coords: Mapping[str, Any],
    token: str,
    attrs: Mapping[str, Any] | None = None,
    dtype: Any = None,
    trailing_shape: Sequence[int] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    resume: bool = True,
    identity: Mapping[str, Any] | None = None,
    repair: bool = False,
) -> ZarrBlockSink:
    """Create a zarr store for a blocked array, or reopen an interrupted write of the same computation.

    Parameters
    ----------
    url : str or path
        Local path or fsspec URL (``s3://bucket/x.zarr``).
    plan : BlockPlan
        The block grid along the sample axes.
    name : str
        Name of the array (``"influence"``).
    dims : sequence of str
        Dimension names; trailing axes without a name become ``feature_<k>``.
    coords : mapping
        Coordinates (labels) by dimension name.
    token : str
        Identifies the computation. An interrupted write is resumed only if
        its token and block grid are the same.
    attrs : mapping, optional
        Attributes of the array (JSON-serialisable).
    dtype, trailing_shape : optional
        Dtype and shape after the sample axes. If None, the store is created
        when the first block is written, from that block.
    storage_options : mapping, optional
        fsspec options for remote URLs (credentials, ``endpoint_url``).
    overwrite : bool
        Replace a complete result or an interrupted write of another
        computation at ``url``. Only stores dvl_dask wrote are ever replaced:
        a file, other files, another tool's store or a checkpoint are refused
        and left intact.
    resume : bool
        Continue an interrupted write of the same computation (default);
        False starts over (needs ``overwrite=True`` if one exists).
    identity : mapping, optional
        What else the write depends on, recorded in the header with the
        dvl_dask version (e.g. the model class and hyper-parameters in
        full, JSON-serialisable). A resume is refused when it differs.
    repair : bool
        Verify every stored chunk of the same computation -- a complete
        store, or the blocks an interrupted write marked done -- and rewrite
        only the blocks whose chunk is missing or fails its checksum; the
        store is then marked complete again. The other blocks are kept
        as they are (not recomputed). Needs ``resume=True``.

    Raises
    ------
    ResultExistsError
        If something is at ``url`` and may not be replaced.
    """
    import zarr

    url = check_location(url, "influence_to_zarr")
    check_name(name, "name", "open_block_sink")
    check_name(token, "token", "open_block_sink")
    _check_plan(plan, "open_block_sink")
    repair = check_bool(repair, "repair", "influence_to_zarr")
    if repair and not check_bool(resume, "resume", "influence_to_zarr"):
        raise InvalidParameterError(
            "influence_to_zarr got repair=True and resume=False: a repair keeps the blocks that verify and "
            "rewrites the others. To fix, pass repair=True alone (or overwrite=True to write everything anew)."
        )
    kind = store_kind(url, dict(storage_options or {}))
    if kind in (CHECKPOINT, FOREIGN):
        refuse_to_replace(url, kind, "influence_to_zarr", overwrite=overwrite)
    header = _header(name, token, plan, dims, identity)
    n_axes = len(plan.chunks)
    try:
        group = zarr.open_group(zarr_store(url, storage_options, read_only=True), mode="r", zarr_format=3)
    except Exception:  # zarr raises its own "not found" errors
        group = None
    done = None
    if group is not None:
        stored = group.attrs.get(WRITE_HEADER)
        complete = bool(group.attrs.get(COMPLETE, False))
        same = isinstance(stored, dict) and not _differences(group, stored, header, dtype, trailing_shape, n_axes)
        if complete and repair and same:
            done = _reopen_for_repair(url, storage_options, name, _Grid(plan.chunks))
            header = stored
        elif complete:
            if not overwrite:
                hint = "" if same else " (repair=True applies only to a store of the same computation)"
                raise ResultExistsError(
                    f"{url} holds a complete result{hint}. To fix, pass overwrite=True or choose another location; "
                    "to recompute only damaged chunks of the same computation, pass repair=True."
                )
        elif not isinstance(stored, dict):
            if not overwrite:
                raise ResultExistsError(
                    f"{url} holds data that dvl_dask did not write. To fix, pass overwrite=True or choose "
                    "another location."
                )
        else:
            differing = _differences(group, stored, header, dtype, trailing_shape, n_axes)
            if resume and not differing:
                if PROGRESS_GROUP in group:
                    done = np.asarray(group[PROGRESS_GROUP]["done"][...]) > 0
                    if repair:  # the blocks marked done are verified too; those that fail are rewritten
                        done = _reverify(url, storage_options, name, _Grid(plan.chunks), keep=done)
                else:  # every block was written but the completion marker is missing: verify, keep what holds
                    done = _reverify(url, storage_options, name, _Grid(plan.chunks))
                header = stored
            elif not overwrite:
                differing = ", ".join(differing) or "resume=False"
                raise ResultExistsError(
                    f"{url} holds an interrupted write of another computation (differs in: {differing}). To fix, "
                    "pass overwrite=True to start over, or write to another location."
                )
        if done is None:
            delete_store(url, dict(storage_options or {}))
    elif has_content(url, dict(storage_options or {})):  # pragma: no cover - refused above as FOREIGN
        refuse_to_replace(url, FOREIGN, "influence_to_zarr", overwrite=overwrite)
    base = {"dvl_dask_version": __version__, "schema_version": SCHEMA_VERSION}
    base.update({k: _jsonable(v) for k, v in (attrs or {}).items()})
    spec = None
    if done is None:
        spec = {"dims": list(dims), "coords": dict(coords), "attrs": base, "header": header}
    sink = ZarrBlockSink(
        url, storage_options, name=name, plan=plan, token=token, write_id=str(header["id"]), done=done, spec=spec
    )
    if spec is not None and dtype is not None and trailing_shape is not None:
        sink._create(np.dtype(dtype), tuple(int(s) for s in trailing_shape))
    return sink


def verify_blocks(url: str, storage_options: Mapping[str, Any] | None, name: str, grid: Any) -> np.ndarray:
    """Per block of ``grid``: whether every chunk it covers is present and verifies (reads them all)."""
    import zarr

    from ..errors import ResultCorruptError

    group = zarr.open_group(zarr_store(url, storage_options, read_only=True), mode="r", zarr_format=3)
    arr = group[name]
    _, blocks = chunk_slices(arr)
    bad_chunks = set()
    for index, slices in blocks:
        try:
            check_chunk(arr, url, storage_options, name, (), index, slices)
        except ResultCorruptError:
            bad_chunks.add(index[:2])
    ok = np.ones(grid.grid, dtype=bool)
    for idx in np.ndindex(*grid.grid):
        rows, cols = grid.block_slices(idx)
        (r, c) = arr.chunks[:2]
        covered = {(i, j) for i in range(rows.start // r, (rows.stop - 1) // r + 1)
                   for j in range(cols.start // c, (cols.stop - 1) // c + 1)}
        ok[idx] = not (covered & bad_chunks)
    return ok


@explains_store_errors("open_influence", 0)
def open_influence(
    url: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    chunks: Any = None,
) -> xr.DataArray:
    """Open a stored influence array (or factors) lazily, with its labels.

    Parameters
    ----------
    url : str or path
        Local path or fsspec URL.
    storage_options : mapping, optional
        fsspec options for remote URLs.
    chunks : optional
        Passed to :func:`xarray.open_zarr` (default: the stored chunks).

    Raises
    ------
    ResultNotFoundError
        If nothing is stored at ``url`` (also a ``FileNotFoundError``).
    NotAResultError
        If ``url`` holds something else (a file, an empty directory, another
        tool's store, a valuation result or a checkpoint).
    SchemaError
        If the store holds an interrupted write (run the write again to
        complete it).
    ResultCorruptError
        When the values are computed, if a chunk is missing, truncated or
        altered (every chunk is verified as it is read; the message names
        the block and how to recompute it: the same write with
        ``repair=True`` recomputes only the damaged blocks). A subclass of
        ``SchemaError``.
    """
    from ._io import check_readable

    url = check_location(url, "open_influence")
    check_readable(url, dict(storage_options or {}), "open_influence", INFLUENCE)
    ds = open_zarr_dataset(url, storage_options, chunks)
    header = ds.attrs.get(WRITE_HEADER)
    if not isinstance(header, dict) or header.get("name") not in ds.data_vars:
        raise SchemaError(f"{url} does not hold an influence result written by dvl_dask.")
    if not ds.attrs.get(COMPLETE, False):
        raise SchemaError(
            f"The result at {url} is incomplete: its write was interrupted. To fix, run the same write again; "
            "it resumes from the blocks already stored."
        )
    stored = ds[header["name"]]
    data = verified_array(url, storage_options, header["name"], str(header.get("id")), stored.dims)
    out = stored.copy(data=data)
    if chunks is not None:
        out = out.chunk(chunks)
    return restore_labels(out)
