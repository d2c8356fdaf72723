"""Checkpoints of Monte Carlo runs: per-block statistics with verified commits and a writer lease.

Format 3 (zarr v3 arrays plus small JSON files; a local path or any fsspec URL)::

    <root>/zarr.json              group attrs: dvl_checkpoint_version=3, header (method, parameters,
                                  utility_token, seed, identity, provenance, ...), data_names, n_stats,
                                  checkpoint_id (random, made when the checkpoint is created)
    <root>/header.json            a copy of the group attrs (written once; repairs the group metadata)
    <root>/stats/                 float64 (block, stat=n_stats, stream, sample): count, mean, M2, M3, M4,
                                  min, max; one uncompressed chunk per block at stats/c/<block>/0/0/0
                                  (checkpoints without ``n_stats`` hold 3 stats: they are read
                                  and resumed with M3 and M4 unknown; those with 5 are read and
                                  resumed with min and max unknown, so a player whose samples
                                  all agree keeps stderr = inf without a known range)
    <root>/evaluations/           int64 (block,): utility evaluations; one chunk per block
    <root>/commits/<i>.json       commit record i: its index, its run (checkpoint_id, utility_token,
                                  seed), the SHA-256 of record i-1 (the chain), blocks [first, stop),
                                  the SHA-256 of every chunk file of those blocks, writer and time
    <root>/head.json              the commit point: its run, n_blocks and n_commits (written last)
    <root>/lease.json             the writer's lease: identity and heartbeat

An append writes the chunks, grows the arrays' metadata, writes the commit
record and only then the head. Readers trust nothing beyond the head, and
verify every chunk of every committed block against its record, so a crash
mid-append exposes nothing, and damage (a missing, truncated or altered chunk,
a deleted record or head, unreadable metadata) raises
:class:`~dvl_dask.errors.CheckpointCorruptError` naming the first block that
cannot be trusted and the call that keeps the blocks before it
(:func:`truncate_checkpoint`). Records name their run and chain to the previous
record, so files copied in from another checkpoint (its ``stats/``,
``evaluations/``, ``commits/``, ``head.json``) or records reordered are refused
the same way, never read as this run's blocks.

The lease is advisory: a writer records its identity and refreshes a heartbeat
every ``checkpoint-lease-timeout / 4`` seconds; a second writer is refused with
:class:`~dvl_dask.errors.CheckpointInUseError` until the heartbeat is older
than the timeout (a writer that died), and then takes over. It works on any
store with atomic whole-object writes (local files via rename, S3). Readers
need no lease. File access and the lease live in :mod:`._checkpoint_files`.

Format-1 checkpoints (no checksums) can still be read by ``load_checkpoint``
after a sanity check, and format-2 ones (checksums, records not naming their
run) with their checksums verified; resuming either is refused with the advice
to start a new checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from typing import Any

import numpy as np

from ..errors import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    InvalidParameterError,
    NotAResultError,
    SchemaError,
)
from ..validation import check_mapping, check_positive_int
from ._checkpoint_files import Files, Lease, jsonable, recovery
from ._stores import INFLUENCE, VALUATION, check_location, explains_store_errors, store_kind

__all__ = ["Checkpoint", "stored_seed", "truncate_checkpoint"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 3
#: Format 2 had checksums but commit records that did not name their run: read, never resumed.
_CHECKSUMMED = (2, FORMAT_VERSION)
#: Statistics per block in new checkpoints (count, mean, M2, M3, M4, min, max); checkpoints without the
#: attr hold 3, and those of dvl_dask before min and max were recorded hold 5.
N_STATS = 7
_HEADER_KEYS = ("method", "parameters", "utility_token", "seed", "n_players", "n_streams", "identity")
#: Header keys that describe the run for people (what the utility token was made of, library versions):
#: recorded when the checkpoint is created, shown when a resume is refused, never compared.
_DESCRIPTIVE_KEYS = ("provenance",)
_ARRAYS = ("stats", "evaluations")


def _provenance_changes(stored: Any, now: Any, path: str = "", limit: int = 8) -> list[str]:
    """Dotted paths where two provenance descriptions differ (at most ``limit``), for refusal messages."""
    if isinstance(stored, dict) and isinstance(now, dict):
        found: list[str] = []
        for key in sorted(set(stored) | set(now)):
            if key == "token" or len(found) >= limit:
                continue
            found += _provenance_changes(stored.get(key), now.get(key), f"{path}{key}.", limit - len(found))
        return found
    return [] if _canonical(stored) == _canonical(now) else [f"{path[:-1]}: stored {stored!r}, now {now!r}"]


def _same(key: str, stored: Any, now: Any) -> bool:
    """Whether a stored header value matches this run's.

    The identity (see :func:`dvl_dask.keys.run_identity`) matches when the
    estimator (class, parameters, code) and the utility are the same: a resume
    after a dvl_dask upgrade is accepted when the estimator's code did not change.
    """
    if key in _DESCRIPTIVE_KEYS:
        return True
    if key == "identity" and isinstance(stored, dict) and isinstance(now, dict):
        # The estimator's token covers its code and parameters; the version and the readable
        # parameters are recorded to explain a refusal, not compared.
        def strip(d: dict[str, Any]) -> dict[str, Any]:
            out = {k: v for k, v in d.items() if k != "dvl_dask_version"}
            if isinstance(out.get("estimator"), dict):
                out["estimator"] = {k: v for k, v in out["estimator"].items() if k != "parameters"}
            return out

        return strip(stored) == strip(now)
    return bool(stored == now)


def _detail(key: str, stored: Any, now: Any) -> str:
    if key != "identity":
        return f"{key}: stored {stored!r}, now {now!r}"
    if not isinstance(stored, dict):
        return "identity: the checkpoint was written by a dvl_dask version that did not record one"
    parts = []
    old_est, new_est = stored.get("estimator") or {}, now.get("estimator") or {}
    if old_est != new_est:
        params = [k for k in set(old_est.get("parameters", {})) | set(new_est.get("parameters", {}))
                  if old_est.get("parameters", {}).get(k) != new_est.get("parameters", {}).get(k)]
        what = f"parameters {sorted(params)}" if params else "code"
        parts.append(
            f"the estimator's {what} changed (written by dvl_dask {stored.get('dvl_dask_version')}, "
            f"now {now.get('dvl_dask_version')})"
        )
    for k in sorted((set(stored) | set(now)) - {"estimator", "dvl_dask_version"}):
        if stored.get(k) != now.get(k):
            parts.append(f"{k}: stored {stored.get(k)!r}, now {now.get(k)!r}")
    return "identity: " + "; ".join(parts)


def _canonical(v: Any) -> Any:
    """Attribute values as they come back from JSON (tuples → lists, numpy → python)."""
    return json.loads(json.dumps(v, default=jsonable))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _chunk_key(array: str, block: int) -> str:
    return f"{array}/c/{block}/0/0/0" if array == "stats" else f"{array}/c/{block}"


class Checkpoint:
    """The statistics of every committed block of one run (see the module docstring for the layout)."""

    def __init__(self, files: Files, attrs: dict[str, Any], version: int, *, new: bool = False) -> None:
        check_mapping(attrs, "attrs", "Checkpoint")
        version = check_positive_int(version, "version", "Checkpoint")
        if not isinstance(files, Files):
            raise InvalidParameterError(
                f"The 'files' argument of Checkpoint must be the store's Files (use Checkpoint.open or "
                f"run_until_converged(checkpoint=url)). Got {type(files).__name__}."
            )
        self._files = files
        self._attrs = attrs
        self.version = version
        self.url = files.url
        self._lease: Lease | None = None
        self._head: dict[str, Any] = {"n_blocks": int(attrs.get("n_blocks", 0)), "n_commits": 0}
        self._last_record: str | None = None  # digest of the last commit record read or written
        if version in _CHECKSUMMED and not new:
            self._head = _read_head(files, attrs, version)

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    @explains_store_errors("run_until_converged (checkpoint)", 1)
    def open(
        cls,
        url: str | os.PathLike[str],
        *,
        header: dict[str, Any],
        data_names: np.ndarray,
        storage_options: dict[str, Any] | None = None,
    ) -> Checkpoint:
        """Open an existing checkpoint of this run for writing (verifying it), or create it; take its lease.

        Raises
        ------
        CheckpointMismatchError
            If the checkpoint was written by another method, utility, parameter set or seed.
        CheckpointCorruptError
            If it fails verification.
        CheckpointInUseError
            If another process holds its writer lease.
        """
        url = check_location(os.fspath(url), "run_until_converged (checkpoint)")
        kind = store_kind(url, storage_options)
        if kind in (VALUATION, INFLUENCE):  # never write checkpoint arrays into another result
            raise NotAResultError(
                f"{url} holds a dvl_dask {kind} result, not a checkpoint: it is left untouched. To fix, choose "
                "another checkpoint path."
            )
        files = Files(url, storage_options)
        header = {k: _canonical(header[k]) for k in header}
        attrs = _read_attrs(files)
        if attrs is None:
            attrs = {"dvl_checkpoint_version": FORMAT_VERSION, **header, "n_stats": N_STATS,
                     "data_names": [jsonable(v) for v in np.asarray(data_names).tolist()],
                     "checkpoint_id": uuid.uuid4().hex}
            store = cls(files, attrs, FORMAT_VERSION, new=True)
            store._take_lease()
            _create(files, attrs)
            store._head = _head(attrs, 0, 0)
            logger.info("Created checkpoint %s (%s, seed %s)", url, header.get("method"), header.get("seed"))
            return store
        version = attrs.get("dvl_checkpoint_version")
        if version != FORMAT_VERSION:
            what = ("carries no checksums" if version == 1 else
                    "has commit records that do not name their run, so blocks copied in from another run "
                    "cannot be told apart")
            raise CheckpointMismatchError(
                f"The checkpoint at {url} has format {version}, which {what}; this version (format "
                f"{FORMAT_VERSION}) does not resume it. dvl_dask.valuation.load_checkpoint still reads its "
                "values. To continue the run, start fresh: pass a new checkpoint URL (or delete this one) and the "
                "run starts again from block 0 with the same seed."
            )
        differing = [k for k in header if not _same(k, attrs.get(k), header[k])]
        if differing:
            detail = "; ".join(_detail(k, attrs.get(k), header[k]) for k in differing)
            changes = _provenance_changes(attrs.get("provenance"), header.get("provenance"))
            if "utility_token" in differing and attrs.get("provenance") is not None and changes:
                detail += "; the utility's provenance differs in " + "; ".join(changes)
            raise CheckpointMismatchError(
                f"The checkpoint at {url} belongs to another run ({detail}). Its statistics are never mixed "
                "into a different run. To fix, use a new checkpoint URL, or the same method, parameters, "
                "utility and seed to resume."
            )
        store = cls(files, attrs, FORMAT_VERSION)
        store._take_lease()
        logger.info("Resuming checkpoint %s: same run (method, parameters, utility, seed), %d committed blocks",
                    url, store.n_blocks)
        return store

    @classmethod
    @explains_store_errors("opening the checkpoint", 1)
    def open_existing(cls, url: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None) -> Checkpoint:
        """Open a checkpoint read-only, whatever run wrote it (no lease).

        Raises
        ------
        SchemaError
            If there is no dvl_dask checkpoint at ``url``.
        CheckpointCorruptError
            If its metadata or commit point is damaged.
        """
        url = os.fspath(url)
        files = Files(url, storage_options)
        attrs = _read_attrs(files)
        if attrs is None:
            raise SchemaError(f"There is no dvl_dask checkpoint at {url}.")
        version = attrs.get("dvl_checkpoint_version")
        if version not in (1, *_CHECKSUMMED):
            raise SchemaError(f"{url} has checkpoint format {version!r}, which this version cannot read.")
        return cls(files, attrs, int(version))

    def _take_lease(self) -> None:
        self._lease = Lease(self._files)
        self._lease.acquire()

    def close(self) -> None:
        """Release the writer lease (if held)."""
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    # -- reading ------------------------------------------------------------------------------
    @property
    def header(self) -> dict[str, Any]:
        return {k: self._attrs.get(k) for k in self._attrs if k != "dvl_checkpoint_version"}

    @property
    def n_blocks(self) -> int:
        """Number of committed blocks."""
        return int(self._head["n_blocks"])

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """Committed blocks, verified: statistics ``(block, n_stats, stream, sample)`` and evaluations ``(block,)``.

        Raises
        ------
        CheckpointCorruptError
            If a committed block is missing, truncated or altered, naming the first bad block.
        """
        if self.version == 1:
            return _read_format_1(self._files, self._attrs)
        shape = (_n_stats(self._attrs), int(self._attrs["n_streams"]), int(self._attrs["n_players"]))
        stats = np.zeros((self.n_blocks, *shape))
        evaluations = np.zeros(self.n_blocks, np.int64)
        records = _records(self._files, self._attrs, self.version, int(self._head["n_commits"]), self.n_blocks)
        self._last_record = records[-1]["_digest"] if records else None
        for record in records:
            for offset, block in enumerate(range(record["first"], record["stop"])):
                raw = {a: _verified_chunk(self._files, record, a, block) for a in _ARRAYS}
                stats[block] = np.frombuffer(raw["stats"], "<f8").reshape(shape)
                evaluations[block] = np.frombuffer(raw["evaluations"], "<i8")[0]
                if int(record["evaluations"][offset]) != evaluations[block]:
                    raise _corrupt(self.url, block, "its evaluation count disagrees with its commit record")
        return stats, evaluations

    # -- writing ------------------------------------------------------------------------------
    def append(self, stats: list[np.ndarray], evaluations: list[int]) -> None:
        """Append finished blocks (in order) and then commit them.

        Raises
        ------
        CheckpointInUseError
            If another writer has taken the lease over.
        """
        if not stats:
            return
        if self._lease is not None:
            self._lease.check()
        first = self.n_blocks
        stop = first + len(stats)
        chunks: dict[str, str] = {}
        n_stats = _n_stats(self._attrs)
        for block, (arr, ev) in enumerate(zip(stats, evaluations), start=first):
            # a checkpoint started before M3 was recorded keeps its 3-stat layout
            for array, data in (("stats", np.ascontiguousarray(arr[:n_stats], dtype="<f8").tobytes()),
                                ("evaluations", np.asarray([ev], dtype="<i8").tobytes())):
                key = _chunk_key(array, block)
                self._files.write(key, data)
                chunks[key] = _digest(data)
        _set_length(self._files, stop)
        n_commits = int(self._head["n_commits"])
        previous = self._previous_digest(n_commits)
        record = json.dumps({
            "commit": n_commits, "run": _run_of(self._attrs), "previous": previous, "first": first, "stop": stop,
            "chunks": chunks, "evaluations": [int(e) for e in evaluations],
            "writer": (self._lease.identity if self._lease is not None else None), "time": time.time(),
        }, default=jsonable).encode()
        self._files.write(f"commits/{n_commits:08d}.json", record)
        self._last_record = _digest(record)
        self._head = _head(self._attrs, stop, n_commits + 1)
        self._files.write_json("head.json", self._head)  # the commit point, written last
        logger.debug("Committed blocks %d-%d to checkpoint %s", first, stop - 1, self.url)

    def _previous_digest(self, n_commits: int) -> str | None:
        """The digest of commit record ``n_commits - 1`` (what the next record chains to)."""
        if n_commits == 0:
            return None
        if self._last_record is None:
            data = self._files.read(f"commits/{n_commits - 1:08d}.json")
            if data is None:
                raise _corrupt(self.url, self.n_blocks, f"commit record {n_commits - 1} is missing")
            self._last_record = _digest(data)
        return self._last_record


def _run_of(attrs: dict[str, Any]) -> dict[str, Any]:
    """What names a run in its commit records and head: the checkpoint's random id, utility and seed."""
    return {"checkpoint_id": attrs.get("checkpoint_id"), "utility_token": attrs.get("utility_token"),
            "seed": attrs.get("seed")}


def _head(attrs: dict[str, Any], n_blocks: int, n_commits: int) -> dict[str, Any]:
    return {"format": FORMAT_VERSION, "run": _run_of(attrs), "n_blocks": n_blocks, "n_commits": n_commits}


def _n_stats(attrs: dict[str, Any]) -> int:
    return int(attrs.get("n_stats", 3))


def _corrupt(url: str, block: int, what: str) -> CheckpointCorruptError:
    return CheckpointCorruptError(f"The checkpoint at {url} is damaged at block {block}: {what}. "
                                  f"{recovery(url, block)}", block)


def _verified_chunk(files: Files, record: dict[str, Any], array: str, block: int) -> bytes:
    """The bytes of one chunk of ``block``, checked against the SHA-256 in its commit record."""
    key = _chunk_key(array, block)
    data = files.read(key)
    if data is None:
        raise _corrupt(files.url, block, f"its chunk {key} is missing")
    if _digest(data) != record.get("chunks", {}).get(key):
        raise _corrupt(files.url, block, f"its chunk {key} does not match the checksum in its commit record "
                                         f"(truncated or altered: {len(data)} bytes)")
    return data


def _group_metadata(attrs: dict[str, Any], arrays: dict[str, Any] | None = None) -> dict[str, Any]:
    """The group's zarr.json; with the arrays' metadata consolidated into it when given (so plain
    ``xr.open_zarr`` reads the checkpoint from this one document, without a warning)."""
    consolidated = (None if arrays is None else
                    {"kind": "inline", "must_understand": False, "metadata": dict(arrays)})
    return {"zarr_format": 3, "node_type": "group", "attributes": attrs, "consolidated_metadata": consolidated}


def _write_group(files: Files, attrs: dict[str, Any]) -> None:
    """Write the group metadata with the current metadata of its arrays consolidated."""
    arrays = {a: files.read_json(f"{a}/zarr.json", f"the metadata of array {a!r}") for a in _ARRAYS}
    files.write_json("zarr.json", _group_metadata(attrs, arrays if all(arrays.values()) else None))


def _create(files: Files, attrs: dict[str, Any]) -> None:
    """A new, empty checkpoint (the group metadata last: until then it is no checkpoint)."""
    _write_arrays(files, attrs, 0)
    files.write_json("header.json", attrs)
    files.write_json("head.json", _head(attrs, 0, 0))
    _write_group(files, attrs)


#: Dimension names and CF-style attributes of the checkpoint's arrays (what xr.open_zarr shows).
_ARRAY_DESCRIPTIONS = {
    "stats": (["block", "statistic", "stream", "sample"], {
        "long_name": "per-block statistics",
        "description": "Mergeable statistics of each committed block, per stream and player: count, mean and "
                       "central moments (rows of 'statistic'). Uncommitted blocks are NaN.",
        "units": "1",
    }),
    "evaluations": (["block"], {
        "long_name": "utility evaluations", "description": "Utility evaluations of each committed block.",
        "units": "1",
    }),
}


def _array_metadata(attrs: dict[str, Any], array: str, length: int) -> dict[str, Any]:
    streams, n = int(attrs["n_streams"]), int(attrs["n_players"])
    shape, chunks, dtype, fill = (
        ([length, _n_stats(attrs), streams, n], [1, _n_stats(attrs), streams, n], "float64", "NaN")
        if array == "stats"
        else ([length], [1], "int64", -1)
    )
    return {
        "zarr_format": 3, "node_type": "array", "shape": shape, "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill, "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "attributes": dict(_ARRAY_DESCRIPTIONS[array][1]), "storage_transformers": [],
        "dimension_names": list(_ARRAY_DESCRIPTIONS[array][0]),
    }


def _write_arrays(files: Files, attrs: dict[str, Any], length: int) -> None:
    for array in _ARRAYS:
        files.write_json(f"{array}/zarr.json", _array_metadata(attrs, array, length))


def _set_length(files: Files, length: int) -> None:
    arrays = {}
    for array in _ARRAYS:
        meta = files.read_json(f"{array}/zarr.json", f"the metadata of array {array!r}")
        meta["shape"][0] = length
        files.write_json(f"{array}/zarr.json", meta)
        arrays[array] = meta
    group = files.read_json("zarr.json", "the group metadata")
    if isinstance(group, dict) and group.get("consolidated_metadata") is not None:
        files.write_json("zarr.json", _group_metadata(group["attributes"], arrays))


def _read_attrs(files: Files) -> dict[str, Any] | None:
    """The group's attributes; None for an empty location; corruption if metadata is missing or torn.

    A location is called a damaged checkpoint only when a file that only
    dvl_dask writes says so (``header.json`` or ``head.json`` of a checkpoint);
    anything else -- even a folder of the user's holding ``stats/`` -- is not a
    dvl_dask checkpoint and is left alone.
    """
    meta = files.read_json("zarr.json", "the group metadata")
    if meta is None:
        if files.has_content():
            if _written_by_dvl_dask(files):
                raise CheckpointCorruptError(
                    f"The checkpoint at {files.url} is damaged: its group metadata (zarr.json) is missing. To "
                    f"recover, call dvl_dask.results.truncate_checkpoint({files.url!r}, <blocks to keep>), which "
                    "rewrites it from header.json."
                )
            raise NotAResultError(
                f"{files.url} holds data that is not a dvl_dask checkpoint: it is left untouched. To fix, choose "
                "another checkpoint path."
            )
        return None
    attrs = meta.get("attributes", {}) if isinstance(meta, dict) else {}
    if "dvl_checkpoint_version" not in attrs:
        if _written_by_dvl_dask(files):
            raise CheckpointCorruptError(
                f"The checkpoint at {files.url} is damaged: its group metadata lost its attributes. To recover, "
                f"call dvl_dask.results.truncate_checkpoint({files.url!r}, <blocks to keep>)."
            )
        raise NotAResultError(
            f"{files.url} is not a dvl_dask checkpoint (a zarr store or folder dvl_dask did not write): it is left "
            "untouched. To fix, choose another checkpoint path."
        )
    return dict(attrs)


def _written_by_dvl_dask(files: Files) -> bool:
    """Whether the header copy or the commit point of a dvl_dask checkpoint is there (torn counts: ours)."""
    for key, field in (("header.json", "dvl_checkpoint_version"), ("head.json", "n_commits")):
        data = files.read(key)
        if data is None:
            continue
        try:
            parsed = json.loads(data)
        except ValueError:
            # a torn copy of ours, when the other copy confirms it (checked on its own turn)
            continue
        if isinstance(parsed, dict) and field in parsed:
            return True
    return False


def _read_head(files: Files, attrs: dict[str, Any], version: int) -> dict[str, Any]:
    try:
        head = files.read_json("head.json", "the commit point")
    except CheckpointCorruptError:
        keep = _keepable(files, attrs, version)
        raise CheckpointCorruptError(
            f"The checkpoint at {files.url} is damaged: its commit point (head.json) is not valid JSON. "
            f"{_keep_advice(files.url, keep)}", keep
        ) from None
    if head is None:
        keep = _keepable(files, attrs, version)
        raise CheckpointCorruptError(
            f"The checkpoint at {files.url} is damaged: its commit point (head.json) is missing. "
            f"{_keep_advice(files.url, keep)}", keep
        )
    if version >= 3 and (not isinstance(head, dict) or head.get("run") != _run_of(attrs)):
        keep = _keepable(files, attrs, version)
        raise CheckpointCorruptError(
            f"The checkpoint at {files.url} is damaged: its commit point (head.json) names another run "
            f"({_describe_run(head)}; this checkpoint is {_describe_run({'run': _run_of(attrs)})}): files were "
            f"copied in from another checkpoint. {_keep_advice(files.url, keep)}", keep
        )
    n = int(head.get("n_blocks", -1))
    for array in _ARRAYS:
        try:
            meta = files.read_json(f"{array}/zarr.json", f"the metadata of array {array!r}")
        except CheckpointCorruptError:
            keep = _keepable(files, attrs, version, n)
            raise CheckpointCorruptError(
                f"The checkpoint at {files.url} is damaged: the metadata of array {array!r} ({array}/zarr.json) "
                f"is not valid JSON. {_keep_advice(files.url, keep, 'rewrites the metadata and ')}", keep
            ) from None
        expected = _array_metadata(attrs, array, 0)
        if meta is None or list(meta.get("shape", [])[1:]) != expected["shape"][1:] or meta["shape"][0] < n:
            state = "missing" if meta is None else "inconsistent with the header"
            keep = _keepable(files, attrs, version, n)
            raise CheckpointCorruptError(
                f"The checkpoint at {files.url} is damaged: the metadata of array {array!r} is {state}. "
                f"{_keep_advice(files.url, keep, 'rewrites the metadata and ')}", keep
            )
    return head


def _describe_run(head: Any) -> str:
    run = head.get("run") if isinstance(head, dict) else None
    if not isinstance(run, dict):
        return "no run recorded"
    return f"checkpoint id {run.get('checkpoint_id')!r}, seed {run.get('seed')!r}"


def _keep_advice(url: str, keep: int, does: str = "") -> str:
    if keep == 0:
        return (f"No committed block verifies. To start fresh, delete it or pass a new checkpoint URL (or call "
                f"dvl_dask.results.truncate_checkpoint({url!r}, 0)); the run then starts again from block 0.")
    return (f"The first {keep} blocks verify (their commit records and chunks). To recover, keep them with "
            f"dvl_dask.results.truncate_checkpoint({url!r}, {keep}), which {does}verifies each, and resume the "
            "run: the blocks after them are computed again with the same seeds.")


def _keepable(files: Files, attrs: dict[str, Any], version: int, limit: int | None = None) -> int:
    """Blocks from block 0 on whose commit records (contiguous, chained, of this run) and chunks verify."""
    kept, previous, i = 0, None, 0
    while limit is None or kept < limit:
        try:
            record, raw = _read_record(files, i, kept)
        except CheckpointCorruptError:
            return kept
        if _record_problem(record, i, kept, previous, attrs, version) is not None:
            return kept
        for block in range(kept, int(record["stop"]) if limit is None else min(int(record["stop"]), limit)):
            try:
                for array in _ARRAYS:
                    _verified_chunk(files, record, array, block)
            except CheckpointCorruptError:
                return kept
            kept = block + 1
        previous, i = _digest(raw), i + 1
    return kept


def _read_record(files: Files, i: int, block: int) -> tuple[dict[str, Any] | None, bytes | None]:
    """Commit record ``i`` parsed and its raw bytes (None, None if missing); torn JSON is corruption."""
    raw = files.read(f"commits/{i:08d}.json")
    if raw is None:
        return None, None
    try:
        record = json.loads(raw)
    except ValueError:
        record = files.read_json(f"commits/{i:08d}.json", f"commit record {i}", block)  # raises, naming the block
    return (record if isinstance(record, dict) else {}), raw


def _record_problem(
    record: dict[str, Any] | None, i: int, expected: int, previous: str | None, attrs: dict[str, Any], version: int
) -> str | None:
    """Why commit record ``i`` cannot be trusted as the one after ``previous`` (None: it can)."""
    if record is None:
        return "is missing"
    try:
        first, stop = int(record.get("first", -1)), int(record.get("stop", -1))
    except (TypeError, ValueError):
        return "is malformed"
    if version >= 3:
        if record.get("run") != _run_of(attrs):
            return (f"names another run ({_describe_run(record)}; this checkpoint is "
                    f"{_describe_run({'run': _run_of(attrs)})}): it was copied in from another checkpoint")
        if record.get("commit") != i or record.get("previous") != previous:
            return "does not chain to the previous one (records reordered, replaced or copied in)"
    if first != expected or stop <= first:
        return "does not continue the previous one"
    return None


def _records(
    files: Files, attrs: dict[str, Any], version: int, n_commits: int, n_blocks: int
) -> list[dict[str, Any]]:
    """Commit records ``0..n_commits-1``: of this run, chained, covering blocks ``0..n_blocks-1`` contiguously.

    Each record is returned with its digest under ``"_digest"``.
    """
    records, expected, previous = [], 0, None
    for i in range(n_commits):
        record, raw = _read_record(files, i, expected)
        problem = _record_problem(record, i, expected, previous, attrs, version)
        if problem is not None:
            raise CheckpointCorruptError(
                f"The checkpoint at {files.url} is damaged at block {expected}: commit record {i} {problem}. "
                f"{recovery(files.url, expected)}", expected
            )
        assert record is not None and raw is not None
        previous = _digest(raw)
        records.append({**record, "_digest": previous})
        expected = int(record["stop"])
    if expected != n_blocks:
        keep = min(expected, n_blocks)
        raise CheckpointCorruptError(
            f"The checkpoint at {files.url} is damaged at block {keep}: its commit records cover {expected} "
            f"blocks but its head says {n_blocks}. {recovery(files.url, keep)}", keep,
        )
    return records


def _read_format_1(files: Files, attrs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of a format-1 checkpoint (no checksums): read through zarr and sanity-checked."""
    import zarr

    n = int(attrs.get("n_blocks", 0))
    try:
        group = zarr.open_group(files.fs.get_mapper(files.root) if not files.local else files.root, mode="r")
        stats = np.asarray(group["stats"][:n]) if n else np.zeros((0, 3, int(attrs["n_streams"]),
                                                                    int(attrs["n_players"])))
        evaluations = np.asarray(group["evaluations"][:n]) if n else np.zeros(0, np.int64)
    except Exception as exc:
        raise CheckpointCorruptError(f"The format-1 checkpoint at {files.url} cannot be read: {exc}.") from exc
    bad = ~np.isfinite(stats).all(axis=(1, 2, 3)) | (stats[:, 0] < 0).any(axis=(1, 2)) | (evaluations < 0)
    if bad.any():
        block = int(np.argmax(bad))
        raise CheckpointCorruptError(
            f"The format-1 checkpoint at {files.url} is damaged at block {block} (missing or invalid chunk); "
            "format 1 has no checksums, so only the blocks before it can be used.", block
        )
    return stats, evaluations


def stored_seed(url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> str | None:
    """The seed recorded in an existing checkpoint at ``url``, or None if there is none."""
    try:
        return str(Checkpoint.open_existing(url, storage_options=storage_options).header["seed"])
    except SchemaError:
        return None


@explains_store_errors("truncate_checkpoint", 0)
def truncate_checkpoint(
    url: str | os.PathLike[str], to_block: int, *, storage_options: dict[str, Any] | None = None
) -> int:
    """Keep the first ``to_block`` blocks of a damaged checkpoint, verified, and drop the rest.

    Rewrites missing or torn metadata (from ``header.json`` or the group's
    attributes), the commit records and the commit point. Resuming the run
    afterwards computes the dropped blocks again with the same seeds, so the
    final values equal those of an undamaged run.

    Parameters
    ----------
    url : str or path
        The checkpoint.
    to_block : int
        Number of blocks to keep (the block named by a ``CheckpointCorruptError``).
    storage_options : dict, optional
        fsspec options for remote URLs.

    Returns
    -------
    int
        The number of blocks kept.

    Raises
    ------
    CheckpointCorruptError
        If one of the blocks to keep is itself damaged (the message names it), or
        both copies of the header are lost.
    CheckpointInUseError
        If a run is writing the checkpoint.
    """
    from ..validation import check_positive_int

    if to_block != 0:
        check_positive_int(to_block, "to_block", "truncate_checkpoint")
    url = os.fspath(url)
    files = Files(url, storage_options)
    attrs = _header_copy(files)
    lease = Lease(files)
    lease.acquire()
    try:
        if files.read_json("header.json", "the header copy") is None:
            files.write_json("header.json", attrs)
        _repair_group(files, attrs)
        kept, records, i, previous = [], 0, 0, None
        while len(kept) < to_block:
            record, raw = _read_record(files, i, len(kept))
            problem = _record_problem(record, i, len(kept), previous, attrs, FORMAT_VERSION)
            if problem is not None:
                raise CheckpointCorruptError(
                    f"Cannot keep {to_block} blocks of {url}: commit record {i}, of block {len(kept)}, {problem}. "
                    f"Call truncate_checkpoint({url!r}, {len(kept)}).", len(kept)
                )
            assert record is not None and raw is not None
            previous = _digest(raw)
            stop = min(int(record["stop"]), to_block)
            for block in range(int(record["first"]), stop):
                for array in _ARRAYS:
                    _verified_chunk(files, record, array, block)
                kept.append(block)
            if stop < int(record["stop"]):
                offset = stop - int(record["first"])
                record = {**record, "stop": stop, "evaluations": record["evaluations"][:offset],
                          "chunks": {k: v for k, v in record["chunks"].items() if int(k.split("/")[2]) < stop}}
                files.write_json(f"commits/{i:08d}.json", record)
            records, i = records + 1, i + 1
        _write_arrays(files, attrs, to_block)
        _write_group(files, attrs)
        files.write_json("head.json", _head(attrs, to_block, records))
        # leftovers after the commit point are harmless (never read, overwritten by the next append)
        return to_block
    finally:
        lease.release()


def _header_copy(files: Files) -> dict[str, Any]:
    for key in ("zarr.json", "header.json"):
        try:
            meta = files.read_json(key, "metadata")
        except CheckpointCorruptError:
            continue
        attrs = (meta or {}).get("attributes", meta) if key == "zarr.json" else meta
        if isinstance(attrs, dict) and attrs.get("dvl_checkpoint_version") == FORMAT_VERSION:
            return dict(attrs)
        if isinstance(attrs, dict) and attrs.get("dvl_checkpoint_version") in (1, 2):
            raise CheckpointMismatchError(
                f"The checkpoint at {files.url} has format {attrs['dvl_checkpoint_version']}, which this version "
                "does not repair or resume. dvl_dask.valuation.load_checkpoint still reads it. To continue the "
                "run, start fresh with a new checkpoint URL."
            )
    if not _written_by_dvl_dask(files):
        raise NotAResultError(
            f"{files.url} is not a dvl_dask checkpoint: there is nothing to truncate, and it is left untouched."
        )
    raise CheckpointCorruptError(
        f"The checkpoint at {files.url} has lost both copies of its header (zarr.json and header.json): it cannot "
        "be repaired. Start a new checkpoint URL."
    )


def _repair_group(files: Files, attrs: dict[str, Any]) -> None:
    try:
        meta = files.read_json("zarr.json", "the group metadata")
    except CheckpointCorruptError:
        meta = None
    if not isinstance(meta, dict) or meta.get("attributes", {}).get("dvl_checkpoint_version") != FORMAT_VERSION:
        try:
            _write_group(files, attrs)
        except CheckpointCorruptError:  # an array's metadata is torn too: the group alone, unconsolidated
            files.write_json("zarr.json", _group_metadata(attrs))
