"""Content digests of arrays: the same for numpy and dask arrays, whatever the chunks."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from ..errors import TokenizationError
from ._encode import _KEY_FORMAT, feed, feed_array

#: Rows per block of a content digest: a fixed number of bytes, so the digest does not depend on chunks.
_DIGEST_BLOCK_BYTES = 8 * 2**20


def _rows_per_block(shape: tuple[int, ...], itemsize: int) -> int:
    row = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize) if len(shape) > 1 else max(1, itemsize)
    return max(1, _DIGEST_BLOCK_BYTES // row)


def _block_digest(block: np.ndarray) -> np.ndarray:
    h = hashlib.blake2b(digest_size=16)
    feed_array(h.update, np.asarray(block))
    return np.frombuffer(h.digest(), dtype=np.uint8).reshape((1, 16))


def _combine(shape: tuple[int, ...], dtype: np.dtype, digests: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(_KEY_FORMAT + b"content")
    feed(h.update, (np.dtype(dtype).str, tuple(int(s) for s in shape)))
    h.update(np.ascontiguousarray(digests, dtype=np.uint8).tobytes())
    return h.hexdigest()


def _combine_parts(shape: tuple[int, ...], dtype: np.dtype, parts: list[np.ndarray]) -> str:
    return _combine(shape, dtype, np.concatenate(parts))


def dask_content_digest(array: Any, *, compute: bool = True) -> Any:
    """Digest of an array's *values*, the same for numpy and dask arrays and for any chunking.

    The rows are cut into blocks of about 8 MiB (a number of rows fixed by
    the shape and dtype, not by the chunks), each block is hashed
    (BLAKE2b), and the block digests are hashed in order with the dtype and
    shape. For a dask array (e.g. backed by zarr or a cloud store) the block
    digests are a dask reduction: the data is read once, in parallel, by the
    current scheduler, and never held in memory as a whole.

    Parameters
    ----------
    array : numpy or dask array
        Must not be object dtype.
    compute : bool
        For dask arrays: False returns a ``dask.delayed`` object.

    Examples
    --------
    >>> import dask.array as da
    >>> x = np.arange(12.0).reshape(6, 2)
    >>> dask_content_digest(x) == dask_content_digest(da.from_array(x, chunks=(4, 1)))
    True
    """
    from ..errors import InvalidParameterError
    from ..validation import is_dask_array

    if not (isinstance(array, np.ndarray) or is_dask_array(array)):
        raise InvalidParameterError(
            f"The 'array' argument of dask_content_digest must be a numpy or dask array. Got "
            f"{type(array).__name__} {array!r:.60} instead. To fix, convert it with np.asarray(...)."
        )
    shape = tuple(int(s) for s in array.shape)
    dtype = np.dtype(array.dtype)
    if dtype.hasobject:
        raise TokenizationError(
            f"Cannot digest an object-dtype array (shape {shape}) by content. To fix, convert it to a numeric or "
            "string dtype, or pass version=... to the Dataset."
        )
    if not shape:
        return _combine(shape, dtype, _block_digest(np.asarray(array)))
    rows = _rows_per_block(shape, dtype.itemsize)
    if not is_dask_array(array):
        arr = np.asarray(array)
        blocks = [arr[i : i + rows] for i in range(0, max(1, shape[0]), rows)]
        if len(blocks) > 2:  # hashlib releases the GIL: hash blocks on all cores
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(len(blocks), os.cpu_count() or 1)) as pool:
                digests = list(pool.map(_block_digest, blocks))
        else:
            digests = [_block_digest(b) for b in blocks]
        return _combine(shape, dtype, np.concatenate(digests))
    import dask

    blocks = array.rechunk({0: rows, **{d: -1 for d in range(1, len(shape))}})
    parts = [dask.delayed(_block_digest, pure=True)(b) for b in blocks.to_delayed().ravel()]
    combined = dask.delayed(_combine_parts, pure=True)(shape, dtype, parts)
    return combined.compute() if compute else combined
