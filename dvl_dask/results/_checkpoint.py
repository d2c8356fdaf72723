"""Checkpoints of Monte Carlo runs: per-block statistics appended to a zarr group.

Layout (zarr v3, local path or fsspec URL)::

    <group>/                attrs: header (method, parameters, utility_token, seed, identity, ...),
                                   data_names, n_blocks (the commit marker)
    <group>/stats           float64 (block, stat=3, stream, sample): count, mean, M2
    <group>/evaluations     int64 (block,): utility evaluations of each block

An append resizes the arrays, writes the new rows and only then advances the
``n_blocks`` attribute. Readers use the first ``n_blocks`` rows, so a crash
mid-append never exposes a partial block, and the next append overwrites the
leftovers.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ..errors import CheckpointMismatchError, SchemaError
from ._stores import zarr_store

__all__ = ["Checkpoint", "stored_seed"]

FORMAT_VERSION = 1
_HEADER_KEYS = ("method", "parameters", "utility_token", "seed", "n_players", "n_streams", "identity")


def _open_group(url: str, storage_options: dict[str, Any] | None, mode: str) -> Any:
    import zarr

    return zarr.open_group(zarr_store(url, storage_options, read_only=mode == "r"), mode=mode, zarr_format=3)


class Checkpoint:
    """A zarr group holding the statistics of every finished block of one run."""

    def __init__(self, group: Any, url: str) -> None:
        self._group = group
        self.url = url

    @classmethod
    def open(
        cls,
        url: str | os.PathLike[str],
        *,
        header: dict[str, Any],
        data_names: np.ndarray,
        storage_options: dict[str, Any] | None = None,
    ) -> Checkpoint:
        """Open an existing checkpoint (checking it belongs to this run) or create it.

        Raises
        ------
        CheckpointMismatchError
            If the checkpoint was written by another method, utility, parameter set or seed.
        """
        url = os.fspath(url)
        group = _open_group(url, storage_options, "a")
        header = {k: _canonical(header[k]) for k in _HEADER_KEYS}
        if "dvl_checkpoint_version" not in group.attrs:
            if len(list(group.array_keys())):
                raise SchemaError(f"{url} holds a zarr group that is not a dvl_dask checkpoint.")
            n, streams = int(header["n_players"]), int(header["n_streams"])
            group.create_array("stats", shape=(0, 3, streams, n), chunks=(1, 3, streams, n), dtype="f8",
                               fill_value=np.nan)
            group.create_array("evaluations", shape=(0,), chunks=(1024,), dtype="i8", fill_value=-1)
            group.attrs.update(
                {
                    "dvl_checkpoint_version": FORMAT_VERSION,
                    **header,
                    "data_names": [_jsonable(v) for v in np.asarray(data_names).tolist()],
                    "n_blocks": 0,
                }
            )
            return cls(group, url)
        stored = {k: group.attrs.get(k) for k in _HEADER_KEYS}
        differing = [k for k in _HEADER_KEYS if not _same(k, stored[k], header[k])]
        if differing:
            detail = "; ".join(_detail(k, stored[k], header[k]) for k in differing)
            raise CheckpointMismatchError(
                f"The checkpoint at {url} belongs to another run ({detail}). Its statistics are never mixed "
                "into a different run. To fix, use a new checkpoint URL, or the same method, parameters, "
                "utility and seed to resume."
            )
        return cls(group, url)

    @classmethod
    def open_existing(cls, url: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None) -> Checkpoint:
        """Open a checkpoint read-only, whatever run wrote it.

        Raises
        ------
        SchemaError
            If there is no dvl_dask checkpoint at ``url``.
        """
        url = os.fspath(url)
        try:
            group = _open_group(url, storage_options, "r")
        except Exception as exc:
            raise SchemaError(f"There is no dvl_dask checkpoint at {url}: {exc}") from exc
        if "dvl_checkpoint_version" not in group.attrs:
            raise SchemaError(f"{url} is not a dvl_dask checkpoint.")
        return cls(group, url)

    @property
    def header(self) -> dict[str, Any]:
        return {k: self._group.attrs[k] for k in (*_HEADER_KEYS, "data_names")}

    @property
    def n_blocks(self) -> int:
        """Number of committed blocks."""
        return int(self._group.attrs["n_blocks"])

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """Committed blocks: statistics ``(block, 3, stream, sample)`` and evaluations ``(block,)``."""
        n = self.n_blocks
        stats = np.asarray(self._group["stats"][:n]) if n else np.zeros((0, *self._group["stats"].shape[1:]))
        evaluations = np.asarray(self._group["evaluations"][:n]) if n else np.zeros(0, np.int64)
        return stats, evaluations

    def append(self, stats: list[np.ndarray], evaluations: list[int]) -> None:
        """Append finished blocks (in order) and then commit them."""
        if not stats:
            return
        start = self.n_blocks
        stop = start + len(stats)
        arr, ev = self._group["stats"], self._group["evaluations"]
        arr.resize((stop, *arr.shape[1:]))
        arr[start:stop] = np.stack(stats)
        ev.resize((stop,))
        ev[start:stop] = np.asarray(evaluations, dtype=np.int64)
        self._group.attrs["n_blocks"] = stop  # the commit marker, written last


def _same(key: str, stored: Any, now: Any) -> bool:
    """Whether a stored header value matches this run's.

    The identity (see :func:`dvl_dask.keys.run_identity`) matches when the
    estimator (class, parameters, code) and the utility are the same: a resume
    after a dvl_dask upgrade is accepted when the estimator's code did not change.
    """
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


def _jsonable(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _canonical(v: Any) -> Any:
    """Attribute values as they come back from zarr's JSON (tuples → lists, numpy → python)."""
    return json.loads(json.dumps(v, default=_jsonable))


def stored_seed(url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> str | None:
    """The seed recorded in an existing checkpoint at ``url``, or None if there is none."""
    try:
        return str(Checkpoint.open_existing(url, storage_options=storage_options).header["seed"])
    except SchemaError:
        return None
