"""Argument types shared by the ``dvl-dask`` subcommands (``cli`` and ``_influence_cli`` import it, not each other)."""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from .errors import ClusterConnectionError, InvalidParameterError

__all__ = ["check_numbers", "connect_client", "file_token", "json_object", "load_array"]


def json_object(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object given on the command line (e.g. ``--storage-options``)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def load_array(location: str, option: str, chunk_size: int, storage_options: dict[str, Any] | None) -> Any:
    """A dask array (``chunk_size`` rows per chunk) of a ``.npy`` file or a zarr array (local or fsspec URL).

    A ``.npy`` file is memory-mapped and named by its content, so the same data
    gives the same graph names.

    Raises
    ------
    InvalidParameterError
        Naming ``option`` if the location cannot be read or holds a scalar.
    """
    import dask.array as da
    import numpy as np

    if location.endswith(".npy"):
        if not os.path.exists(location):
            raise InvalidParameterError(f"{option}: no such file {location!r}.")
        values = np.load(location, mmap_mode="r")
    else:
        try:
            values = da.from_zarr(location, storage_options=storage_options)
        except Exception as exc:
            raise InvalidParameterError(
                f"{option}: cannot read {location!r} as a .npy file or a zarr array ({type(exc).__name__}: {exc})."
            ) from exc
    if values.ndim == 0:
        raise InvalidParameterError(f"{option}: {location!r} holds a scalar; expected one row per sample.")
    chunks = (chunk_size, *(-1 for _ in values.shape[1:]))
    if isinstance(values, np.ndarray):
        return da.from_array(values, chunks=chunks, name=f"{option}-{file_token(location)}")
    return values.rechunk(chunks)


def file_token(path: str) -> str:
    """Content hash of a .npy file: the same data gives the same graph names (and a resumable --out)."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_numbers(args: argparse.Namespace, bounds: Mapping[str, tuple[float, float]]) -> None:
    """Refuse options outside their bounds ``{dest: (low, high)}`` (inclusive; None values are skipped).

    Raises :class:`~dvl_dask.errors.InvalidParameterError` naming the option as typed
    (``--n-points``), the value and the accepted range, before anything runs or is written.
    """
    for dest, (low, high) in bounds.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if not (math.isfinite(value) and low <= value <= high):
            upper = "" if math.isinf(high) else f" and at most {high:g}"
            raise InvalidParameterError(
                f"--{dest.replace('_', '-')} must be at least {low:g}{upper}. Got {value!r}."
            )


def connect_client(address: str | None, scheduler_file: str | None = None, *, set_as_default: bool = True) -> Any:
    """A ``distributed.Client`` of a running scheduler, or ClusterConnectionError saying what to check."""
    from distributed import Client

    where = f"--scheduler-address {address}" if address else f"--scheduler-file {scheduler_file}"
    try:
        return Client(address, scheduler_file=scheduler_file, set_as_default=set_as_default)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterConnectionError(
            f"Cannot connect to the Dask scheduler at {where} ({type(exc).__name__}: {exc}). To fix, check that "
            "the scheduler is running and reachable from here (host, port, firewall), or run without "
            "--scheduler-address to use a local scheduler."
        ) from None
