"""A torch Dataset as dask arrays: one lazy array per element of its items, chunked along samples."""

from __future__ import annotations

import string
from typing import Any

import numpy as np
import torch

from ...errors import InvalidDataError, TokenizationError
from ...keys import fingerprint, layer_name
from ...validation import check_positive_int

__all__ = ["torch_dataset_to_dask_array"]


class _DatasetHandle:
    """The dataset as one graph key, hashed once."""

    def __init__(self, dataset: Any, token: str) -> None:
        self.dataset = dataset
        self.token = token

    def __dask_tokenize__(self) -> tuple[str, str]:
        return ("torch-dataset", self.token)


def _numpy_dtype(t: torch.Tensor) -> np.dtype:
    if t.dtype == torch.bfloat16:
        return np.dtype(np.float32)
    return torch.empty(0, dtype=t.dtype).numpy().dtype


def _elements(item: Any) -> tuple[torch.Tensor, ...]:
    parts = item if isinstance(item, tuple | list) else (item,)
    return tuple(torch.as_tensor(p) for p in parts)


def _load_chunk(indices: np.ndarray, handle: _DatasetHandle, dtypes: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """Read the samples of one chunk and stack each element of the items into a numpy array."""
    items = [_elements(handle.dataset[int(i)]) for i in indices]
    out = []
    for k, dtype in enumerate(dtypes):
        stacked = torch.stack([item[k] for item in items]).detach().cpu()
        if stacked.dtype == torch.bfloat16:
            stacked = stacked.float()
        out.append(stacked.numpy().astype(dtype, copy=False))
    return tuple(out)


def _pick(chunk: tuple[np.ndarray, ...], k: int) -> np.ndarray:
    return chunk[k]


def torch_dataset_to_dask_array(
    dataset: Any,
    chunk_size: int,
    total_size: int | None = None,
    dtype: Any = None,
    token: str | None = None,
) -> tuple[Any, ...]:
    """Dask arrays of a map-style torch ``Dataset``: one array per element of its items.

    Each chunk is read by one task (the dataset enters the graph once, as one
    key) and split into the elements, so ``x`` and ``y`` of a chunk come from
    one read. Shapes and dtypes are taken from ``dataset[0]``.

    Parameters
    ----------
    dataset : torch.utils.data.Dataset
        Map-style: ``len(dataset)`` and ``dataset[i]`` returning a tensor or a
        tuple of tensors (numbers are accepted as 0-d tensors).
    chunk_size : int
        Samples per chunk.
    total_size : int, optional
        Number of samples to take (default ``len(dataset)``).
    dtype : numpy dtype, optional
        Dtype of floating-point elements (e.g. ``np.float32``); integer
        elements keep theirs. Default: each element's own dtype.
    token : str, optional
        Names the dataset's content in the graph keys, for datasets dvl_dask
        cannot hash deterministically (it raises
        :class:`~dvl_dask.errors.TokenizationError` saying so); change it
        whenever the data changes. Default: the dataset hashed by value
        (tensors by content).

    Returns
    -------
    tuple of dask.array.Array
        One array per item element, e.g. ``(x, y)``, chunked ``(chunk_size, -1)``.

    Examples
    --------
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> ds = TensorDataset(torch.randn(10, 3), torch.arange(10))
    >>> x, y = torch_dataset_to_dask_array(ds, chunk_size=4)
    >>> x.chunks, y.dtype
    (((4, 4, 2), (3,)), dtype('int64'))
    >>> bool((y.compute() == torch.arange(10).numpy()).all())
    True
    """
    import dask
    import dask.array as da

    owner = "torch_dataset_to_dask_array"
    chunk_size = check_positive_int(chunk_size, "chunk_size", owner)
    try:
        n = len(dataset) if total_size is None else check_positive_int(total_size, "total_size", owner)
    except TypeError:
        raise InvalidDataError(
            f"torch_dataset_to_dask_array needs a map-style dataset with len(); got {type(dataset).__name__}. "
            "To fix, pass total_size=... or materialise the data first."
        ) from None
    if n == 0:
        raise InvalidDataError("torch_dataset_to_dask_array got an empty dataset.")
    first = _elements(dataset[0])
    dtypes = []
    for t in first:
        dt = _numpy_dtype(t)
        if dtype is not None and np.issubdtype(dt, np.floating):
            dt = np.dtype(dtype)
        dtypes.append(dt.str)
    if token is not None:
        if not isinstance(token, str) or not token:
            raise InvalidDataError(f"The 'token' argument of {owner} must be a non-empty string. Got {token!r}.")
        token = fingerprint("user-token", token, n)
    else:
        try:
            token = fingerprint(dataset, n)
        except TokenizationError as exc:
            raise TokenizationError(
                f"{owner} cannot name {type(dataset).__name__} deterministically ({exc}); graph keys and resumable "
                "writes need a stable name. To fix, give the dataset a __dask_tokenize__ method or pass "
                "token='<a string naming this data>'."
            ) from exc
    handle = dask.delayed(_DatasetHandle(dataset, token), name=layer_name("torch-dataset", token), traverse=False)
    index = da.arange(n, chunks=chunk_size)
    loaded = da.blockwise(
        _load_chunk, "i", index, "i", handle, None, dtypes=tuple(dtypes), dtype=object,
        meta=np.empty((0,), dtype=object), name=layer_name("load-torch-dataset", token, chunk_size, tuple(dtypes)),
    )
    letters = iter(c for c in string.ascii_letters if c != "i")
    arrays = []
    for k, (t, dt) in enumerate(zip(first, dtypes)):
        new = {next(letters): int(s) for s in t.shape}
        arrays.append(
            da.blockwise(
                _pick, "i" + "".join(new), loaded, "i", k=k, new_axes=new, dtype=np.dtype(dt),
                meta=np.empty((0,) * (1 + len(new)), dtype=np.dtype(dt)),
                name=layer_name("torch-dataset-element", loaded.name, k),
            )
        )
    return tuple(arrays)
