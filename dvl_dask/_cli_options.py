"""Argument types shared by the ``dvl-dask`` subcommands (``cli`` and ``_influence_cli`` import it, not each other)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from .errors import InvalidParameterError

__all__ = ["file_token", "json_object", "load_array"]


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
