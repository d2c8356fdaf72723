"""Whole-file access and the writer lease of checkpoints (local disks and any fsspec store).

:class:`Files` reads and writes whole objects under a checkpoint's root
(atomically: a rename on local disks, one PUT on object stores). :class:`Lease`
is the advisory writer lock: ``lease.json`` holds the writer's identity (a
random id, host, pid and process start time) and a heartbeat refreshed by a
daemon thread every ``checkpoint-lease-timeout / 4`` seconds; another writer is
refused until the heartbeat is older than the timeout, then may take over, or
at once when the holder ran on the same host and its process is provably gone
(no such pid, or the pid now belongs to a process started at another time).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from typing import Any

import numpy as np

from .. import config
from ..errors import CheckpointCorruptError, CheckpointInUseError, NotAResultError
from ._owners import owner_is_dead, process_owner
from ._stores import is_local, local_path

__all__ = ["Files", "Lease", "jsonable", "recovery"]


def jsonable(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def recovery(url: str, block: int) -> str:
    return (f"To recover, keep the {block} blocks before it with "
            f"dvl_dask.results.truncate_checkpoint({url!r}, {block}) (pass storage_options= for remote "
            "stores) and resume the run: the blocks after it are computed again with the same seeds.")


class Files:
    """Whole-file access under a checkpoint's root, on a local disk or any fsspec filesystem."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None) -> None:
        import fsspec

        self.url = url
        self.local = is_local(url)
        if self.local:
            self.fs = fsspec.filesystem("file")
            self.root = os.path.abspath(local_path(url))
            if os.path.isfile(self.root):
                raise NotAResultError(
                    f"{url} is a file, not a dvl_dask checkpoint (a checkpoint is a folder): it is left untouched. "
                    "To fix, pass a path that does not exist yet (it is created) or a checkpoint folder."
                )
        else:
            self.fs, self.root = fsspec.core.url_to_fs(url, **(storage_options or {}))
            self.root = self.root.rstrip("/")
        self.invalidate()

    def invalidate(self) -> None:
        invalidate = getattr(self.fs, "invalidate_cache", None)
        if callable(invalidate):
            invalidate()

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def read(self, key: str) -> bytes | None:
        """The bytes of ``key``, or None if it does not exist."""
        try:
            return bytes(self.fs.cat_file(self.path(key)))
        except FileNotFoundError:
            return None

    def read_json(self, key: str, what: str, block: int | None = None) -> Any:
        """Parsed JSON of ``key`` (None if missing); unreadable JSON is corruption."""
        data = self.read(key)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            advice = recovery(self.url, block) if block is not None else (
                f"To recover, call dvl_dask.results.truncate_checkpoint({self.url!r}, <blocks to keep>): it "
                "rewrites metadata from its copy (zarr.json and header.json hold the same header) and keeps the "
                "blocks that verify."
            )
            where = "" if block is None else f" at block {block}"
            raise CheckpointCorruptError(
                f"The checkpoint at {self.url} is damaged{where}: {what} ({key}) is not valid JSON ({exc}). "
                f"{advice}",
                block,
            ) from None

    def write(self, key: str, data: bytes) -> None:
        """Write ``key`` whole (atomically: rename on local disks, one PUT on object stores)."""
        path = self.path(key)
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)

    def write_json(self, key: str, obj: Any) -> None:
        self.write(key, json.dumps(obj, default=jsonable).encode())

    def delete(self, key: str) -> None:
        try:
            self.fs.rm(self.path(key), recursive=True)
        except FileNotFoundError:
            pass

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.path(key)))

    def has_content(self) -> bool:
        """Whether anything but a lease is stored under the root."""
        try:
            if not self.fs.exists(self.root):
                return False
            names = [str(p).rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]
        except (FileNotFoundError, NotADirectoryError):
            return False
        return any(name != Lease.KEY and not name.startswith(f"{Lease.KEY}.tmp") for name in names)


class Lease:
    """The writer lease of one checkpoint, refreshed by a daemon thread while held."""

    KEY = "lease.json"

    def __init__(self, files: Files) -> None:
        self.files = files
        self.timeout = float(config.get(config.MC_CHECKPOINT_LEASE_TIMEOUT))
        self.identity = {"writer": uuid.uuid4().hex, **process_owner()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: dict[str, Any] | None = None

    def _record(self) -> dict[str, Any]:
        t = time.time()
        return {**self.identity, "heartbeat": t}

    def _holder(self) -> dict[str, Any] | None:
        try:
            return self.files.read_json(self.KEY, "the writer lease")
        except CheckpointCorruptError:
            return None  # a torn lease counts as no lease

    def _refuse(self, holder: dict[str, Any], age: float) -> CheckpointInUseError:
        return CheckpointInUseError(
            f"The checkpoint at {self.files.url} is being written by another run (host {holder.get('host')!r}, "
            f"pid {holder.get('pid')}, last heartbeat {age:.0f} s ago). Two writers would interleave their "
            "blocks. To fix, wait for that run to finish, or use another checkpoint URL. A holder on this host "
            "whose process is gone is taken over at once; one on another host once its heartbeat is older than "
            f"{self.timeout:g} s (dvl_dask.valuation.montecarlo.checkpoint-lease-timeout), or when you delete "
            "lease.json after making sure it is dead."
        )

    def acquire(self) -> None:
        holder = self._holder()
        if holder is not None and holder.get("writer") != self.identity["writer"]:
            age = time.time() - float(holder.get("heartbeat", 0.0))
            # a holder on this host whose process is gone (pid unused, or reused by a later process) is
            # dead for sure: no need to wait for its heartbeat to age
            if age < self.timeout and not owner_is_dead(holder):
                raise self._refuse(holder, age)
        self.files.write_json(self.KEY, self._record())
        time.sleep(0.05)  # a concurrent writer's lease lands in between: read back who won
        self.files.invalidate()
        holder = self._holder()
        if holder is None or holder.get("writer") != self.identity["writer"]:
            raise self._refuse(holder or {}, 0.0)
        self._thread = threading.Thread(target=self._beat, name="dvl-checkpoint-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.timeout / 4):
            try:
                self.check()
                self.files.write_json(self.KEY, self._record())
            except CheckpointInUseError:
                return
            except Exception:  # a transient storage error: try again at the next beat
                continue

    def check(self) -> None:
        """Raise :class:`CheckpointInUseError` if another writer took the lease over."""
        if self.lost is None:
            self.files.invalidate()
            holder = self._holder()
            if holder is not None and holder.get("writer") != self.identity["writer"]:
                self.lost = holder
        if self.lost is not None:
            raise CheckpointInUseError(
                f"Another run (host {self.lost.get('host')!r}, pid {self.lost.get('pid')}) took over the checkpoint "
                f"at {self.files.url} while this run held it (no heartbeat for {self.timeout:g} s?). This run stops "
                "writing to it; its blocks after the last commit are not stored."
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            holder = self._holder()
            if holder is not None and holder.get("writer") == self.identity["writer"]:
                self.files.delete(self.KEY)
        except Exception:  # releasing must never hide the run's own outcome
            pass
