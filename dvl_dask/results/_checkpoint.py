"""Checkpoints of Monte Carlo runs: per-block statistics with verified commits and a writer lease.

Format 2 (zarr v3 arrays plus small JSON files; a local path or any fsspec URL)::

    <root>/zarr.json              group attrs: dvl_checkpoint_version=2, header (method, parameters,
                                  utility_token, seed, identity, provenance, ...), data_names, n_stats
    <root>/header.json            a copy of the group attrs (written once; repairs the group metadata)
    <root>/stats/                 float64 (block, stat=n_stats, stream, sample): count, mean, M2, M3, M4,
                                  min, max; one uncompressed chunk per block at stats/c/<block>/0/0/0
                                  (checkpoints without ``n_stats`` hold 3 stats: they are read
                                  and resumed with M3 and M4 unknown; those with 5 are read and
                                  resumed with min and max unknown, so a player whose samples
                                  all agree keeps stderr = inf without a known range)
    <root>/evaluations/           int64 (block,): utility evaluations; one chunk per block
    <root>/commits/<i>.json       commit record i: blocks [first, stop), the SHA-256 of every
                                  chunk file of those blocks, the writer and the time
    <root>/head.json              the commit point: n_blocks and n_commits (written last)
    <root>/lease.json             the writer's lease: identity and heartbeat

An append writes the chunks, grows the arrays' metadata, writes the commit
record and only then the head. Readers trust nothing beyond the head, and
verify every chunk of every committed block against its record, so a crash
mid-append exposes nothing, and damage (a missing, truncated or altered chunk,
a deleted record or head, unreadable metadata) raises
:class:`~dvl_dask.errors.CheckpointCorruptError` naming the first block that
cannot be trusted and the call that keeps the blocks before it
(:func:`truncate_checkpoint`).

The lease is advisory: a writer records its identity and refreshes a heartbeat
every ``checkpoint-lease-timeout / 4`` seconds; a second writer is refused with
:class:`~dvl_dask.errors.CheckpointInUseError` until the heartbeat is older
than the timeout (a writer that died), and then takes over. It works on any
store with atomic whole-object writes (local files via rename, S3). Readers
need no lease. File access and the lease live in :mod:`._checkpoint_files`.

Format-1 checkpoints (no checksums) can still be read by ``load_checkpoint``
after a sanity check; resuming one is refused (start a new checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Any

import numpy as np

from ..errors import CheckpointCorruptError, CheckpointMismatchError, NotAResultError, SchemaError
from ._checkpoint_files import Files, Lease, jsonable, recovery
from ._stores import INFLUENCE, VALUATION, check_location, store_kind

__all__ = ["Checkpoint", "stored_seed", "truncate_checkpoint"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
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
        self._files = files
        self._attrs = attrs
        self.version = version
        self.url = files.url
        self._lease: Lease | None = None
        self._head: dict[str, Any] = {"n_blocks": int(attrs.get("n_blocks", 0)), "n_commits": 0}
        if version == FORMAT_VERSION and not new:
            self._head = _read_head(files, attrs)

    # -- opening ------------------------------------------------------------------------------
    @classmethod
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
                     "data_names": [jsonable(v) for v in np.asarray(data_names).tolist()]}
            store = cls(files, attrs, FORMAT_VERSION, new=True)
            store._take_lease()
            _create(files, attrs)
            store._head = {"format": FORMAT_VERSION, "n_blocks": 0, "n_commits": 0}
            logger.info("Created checkpoint %s (%s, seed %s)", url, header.get("method"), header.get("seed"))
            return store
        version = attrs.get("dvl_checkpoint_version")
        if version != FORMAT_VERSION:
            raise CheckpointMismatchError(
                f"The checkpoint at {url} has format {version}, which carries no checksums and cannot be resumed "
                f"by this version (format {FORMAT_VERSION}). dvl_dask.valuation.load_checkpoint still reads its "
                "values. To continue the run, start a new checkpoint URL."
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
        if version not in (1, FORMAT_VERSION):
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
        for record in _records(self._files, int(self._head["n_commits"]), self.n_blocks):
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
        self._files.write_json(f"commits/{n_commits:08d}.json", {
            "commit": n_commits, "first": first, "stop": stop, "chunks": chunks,
            "evaluations": [int(e) for e in evaluations],
            "writer": (self._lease.identity if self._lease is not None else None), "time": time.time(),
        })
        self._head = {"format": FORMAT_VERSION, "n_blocks": stop, "n_commits": n_commits + 1}
        self._files.write_json("head.json", self._head)  # the commit point, written last
        logger.debug("Committed blocks %d-%d to checkpoint %s", first, stop - 1, self.url)


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
    """A new, empty format-2 checkpoint (the group metadata last: until then it is no checkpoint)."""
    _write_arrays(files, attrs, 0)
    files.write_json("header.json", attrs)
    files.write_json("head.json", {"format": FORMAT_VERSION, "n_blocks": 0, "n_commits": 0})
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
    """The group's attributes; None for an empty location; corruption if metadata is missing or torn."""
    meta = files.read_json("zarr.json", "the group metadata")
    if meta is None:
        if files.has_content():
            if files.exists("head.json") or files.exists("header.json") or files.exists("stats"):
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
        if files.exists("stats") or any(files.exists(k) for k in ("head.json", "header.json")):
            if files.exists("header.json"):
                raise CheckpointCorruptError(
                    f"The checkpoint at {files.url} is damaged: its group metadata lost its attributes. To recover, "
                    f"call dvl_dask.results.truncate_checkpoint({files.url!r}, <blocks to keep>)."
                )
        raise SchemaError(f"{files.url} is not a dvl_dask checkpoint.")
    return dict(attrs)


def _read_head(files: Files, attrs: dict[str, Any]) -> dict[str, Any]:
    head = files.read_json("head.json", "the commit point", 0)
    if head is None:
        survive = _surviving_blocks(files)
        raise CheckpointCorruptError(
            f"The checkpoint at {files.url} is damaged: its commit point (head.json) is missing. Commit records "
            f"survive for blocks 0 to {survive - 1} (before block {survive}). To recover, keep them with "
            f"dvl_dask.results.truncate_checkpoint({files.url!r}, {survive}), which verifies each, and resume "
            "the run.", survive
        )
    n = int(head.get("n_blocks", -1))
    for array in _ARRAYS:
        try:
            meta = files.read_json(f"{array}/zarr.json", f"the metadata of array {array!r}")
        except CheckpointCorruptError as exc:
            raise CheckpointCorruptError(
                f"{exc} The {n} committed blocks may be intact: dvl_dask.results.truncate_checkpoint("
                f"{files.url!r}, {n}) rewrites the metadata and verifies them.", n
            ) from None
        expected = _array_metadata(attrs, array, 0)
        if meta is None or list(meta.get("shape", [])[1:]) != expected["shape"][1:] or meta["shape"][0] < n:
            state = "missing" if meta is None else "inconsistent with the header"
            raise CheckpointCorruptError(
                f"The checkpoint at {files.url} is damaged: the metadata of array {array!r} is {state}. The "
                f"{n} committed blocks may be intact: dvl_dask.results.truncate_checkpoint({files.url!r}, {n}) "
                "rewrites the metadata and verifies them.", n
            )
    return head


def _surviving_blocks(files: Files) -> int:
    """Blocks covered by the contiguous, readable commit records from record 0 on."""
    expected, i = 0, 0
    while True:
        try:
            record = files.read_json(f"commits/{i:08d}.json", f"commit record {i}")
        except CheckpointCorruptError:
            return expected
        if record is None or int(record.get("first", -1)) != expected:
            return expected
        expected, i = int(record["stop"]), i + 1


def _records(files: Files, n_commits: int, n_blocks: int) -> list[dict[str, Any]]:
    """Commit records ``0..n_commits-1``, checked to cover blocks ``0..n_blocks-1`` contiguously."""
    records, expected = [], 0
    for i in range(n_commits):
        record = files.read_json(f"commits/{i:08d}.json", f"commit record {i}", expected)
        if record is None or int(record.get("first", -1)) != expected:
            what = "is missing" if record is None else "does not continue the previous one"
            raise CheckpointCorruptError(
                f"The checkpoint at {files.url} is damaged at block {expected}: commit record {i} {what}. "
                f"{recovery(files.url, expected)}", expected
            )
        records.append(record)
        expected = int(record["stop"])
    if expected != n_blocks:
        raise CheckpointCorruptError(
            f"The checkpoint at {files.url} is damaged at block {min(expected, n_blocks)}: its commit records "
            f"cover {expected} blocks but its head says {n_blocks}. {recovery(files.url, min(expected, n_blocks))}",
            min(expected, n_blocks),
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
        kept, records, i = [], 0, 0
        while len(kept) < to_block:
            record = files.read_json(f"commits/{i:08d}.json", f"commit record {i}", len(kept))
            if record is None or int(record.get("first", -1)) != len(kept):
                raise CheckpointCorruptError(
                    f"Cannot keep {to_block} blocks of {url}: the commit record of block {len(kept)} is lost. "
                    f"Call truncate_checkpoint({url!r}, {len(kept)}).", len(kept)
                )
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
        files.write_json("head.json", {"format": FORMAT_VERSION, "n_blocks": to_block, "n_commits": records})
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
