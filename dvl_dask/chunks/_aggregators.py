"""Aggregators: reduce the blocks of a lazy sequence into one value while iterating.

A :class:`SequenceAggregator` consumes an iterable of row blocks; a
:class:`NestedSequenceAggregator` consumes an iterable of rows, each an
iterable of blocks (the result of a pairwise map). They hold no tensor library:
numpy arrays and CPU tensors both work (torch concatenation lives in
:mod:`dvl_dask.influence.torch`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from ..errors import InvalidDataError

__all__ = [
    "ListAggregator",
    "MinMaxAggregator",
    "NestedListAggregator",
    "NestedMinMaxAggregator",
    "NestedNumpyCatAggregator",
    "NestedSequenceAggregator",
    "NumpyCatAggregator",
    "RowExtremes",
    "SequenceAggregator",
]


class SequenceAggregator(ABC):
    """Reduce a sequence of blocks into one value."""

    @abstractmethod
    def __call__(self, blocks: Iterable[Any]) -> Any: ...


class NestedSequenceAggregator(ABC):
    """Reduce a sequence of rows of blocks into one value."""

    @abstractmethod
    def __call__(self, rows: Iterable[Iterable[Any]]) -> Any: ...


class ListAggregator(SequenceAggregator):
    """The blocks as a list.

    Examples
    --------
    >>> ListAggregator()(iter([1, 2]))
    [1, 2]
    """

    def __call__(self, blocks: Iterable[Any]) -> list[Any]:
        return list(blocks)


class NestedListAggregator(NestedSequenceAggregator):
    """The blocks as a list of lists (one per row)."""

    def __call__(self, rows: Iterable[Iterable[Any]]) -> list[list[Any]]:
        return [list(row) for row in rows]


class NumpyCatAggregator(SequenceAggregator):
    """Concatenate the blocks along axis 0 into one numpy array.

    Examples
    --------
    >>> import numpy as np
    >>> NumpyCatAggregator()([np.ones((1, 2)), np.zeros((2, 2))]).shape
    (3, 2)
    """

    def __call__(self, blocks: Iterable[Any]) -> np.ndarray:
        return np.concatenate([np.asarray(b) for b in blocks], axis=0)


class NestedNumpyCatAggregator(NestedSequenceAggregator):
    """Assemble the blocks into one numpy array (rows along axis 0, columns along axis 1)."""

    def __call__(self, rows: Iterable[Iterable[Any]]) -> np.ndarray:
        return np.concatenate(
            [np.concatenate([np.asarray(b) for b in row], axis=1) for row in rows], axis=0
        )


class MinMaxAggregator(SequenceAggregator):
    """Smallest and largest value over all blocks, holding one block at a time.

    Examples
    --------
    >>> import numpy as np
    >>> MinMaxAggregator()([np.array([1.0, 5.0]), np.array([-2.0])])
    (-2.0, 5.0)
    """

    def __call__(self, blocks: Iterable[Any]) -> tuple[float, float]:
        lo, hi = np.inf, -np.inf
        for b in blocks:
            arr = np.asarray(b)
            if arr.size:
                lo, hi = min(lo, float(arr.min())), max(hi, float(arr.max()))
        return lo, hi


class _RowExtremesFields(NamedTuple):
    min: np.ndarray
    argmin: np.ndarray
    max: np.ndarray
    argmax: np.ndarray


class RowExtremes(_RowExtremesFields):
    """Per row (test sample): smallest and largest value and the column (training sample) holding it.

    A named tuple ``(min, argmin, max, argmax)`` of four 1-D arrays of one length (the rows); the ``arg``
    arrays hold integer column indices.
    """

    __slots__ = ()

    def __new__(cls, min: Any, argmin: Any, max: Any, argmax: Any) -> RowExtremes:  # noqa: A002 - field names
        fields = {"min": min, "argmin": argmin, "max": max, "argmax": argmax}
        arrays = {name: _row_vector(value, name) for name, value in fields.items()}
        if len({a.shape[0] for a in arrays.values()}) > 1:
            lengths = {name: a.shape[0] for name, a in arrays.items()}
            raise InvalidDataError(f"The fields of RowExtremes must have one length (the rows). Got {lengths}.")
        for name in ("argmin", "argmax"):
            if arrays[name].size and arrays[name].dtype.kind not in "iu":
                raise InvalidDataError(
                    f"The {name!r} field of RowExtremes must hold integer column indices. Got dtype "
                    f"{arrays[name].dtype}."
                )
        return super().__new__(cls, **arrays)


def _row_vector(value: Any, name: str) -> np.ndarray:
    arr = np.asarray(value) if isinstance(value, np.ndarray | list | tuple) else None
    if arr is None or arr.ndim != 1 or arr.dtype.kind not in "iuf":
        raise InvalidDataError(
            f"The {name!r} field of RowExtremes must be a 1-D numeric array (one value per row). Got "
            f"{type(value).__name__} {value!r:.60}."
        )
    return arr


class NestedMinMaxAggregator(NestedSequenceAggregator):
    """For every row, the smallest and largest value over all columns and where they are.

    Holds one block and four vectors at a time, so it finds the most and
    least influential training point of every test point without the matrix
    in memory. Needs 2-D blocks (up-mode influences).

    Examples
    --------
    >>> import numpy as np
    >>> rows = [[np.array([[1.0, 3.0]]), np.array([[7.0]])]]
    >>> ext = NestedMinMaxAggregator()(rows)
    >>> ext.max.tolist(), ext.argmax.tolist(), ext.argmin.tolist()
    ([7.0], [2], [0])
    """

    def __call__(self, rows: Iterable[Iterable[Any]]) -> RowExtremes:
        parts: list[tuple[np.ndarray, ...]] = []
        for row in rows:
            lo = hi = lo_at = hi_at = None
            offset = 0
            for b in row:
                arr = np.asarray(b)
                if arr.ndim != 2:
                    raise InvalidDataError(
                        f"NestedMinMaxAggregator needs 2-D blocks (test x train). Got a block of shape "
                        f"{arr.shape}. To fix, reduce perturbation influences over their feature axes first."
                    )
                b_lo, b_hi = arr.min(axis=1), arr.max(axis=1)
                b_lo_at, b_hi_at = arr.argmin(axis=1) + offset, arr.argmax(axis=1) + offset
                if lo is None:
                    lo, hi, lo_at, hi_at = b_lo, b_hi, b_lo_at, b_hi_at
                else:
                    take_lo, take_hi = b_lo < lo, b_hi > hi
                    lo, lo_at = np.where(take_lo, b_lo, lo), np.where(take_lo, b_lo_at, lo_at)
                    hi, hi_at = np.where(take_hi, b_hi, hi), np.where(take_hi, b_hi_at, hi_at)
                offset += arr.shape[1]
            if lo is not None:
                parts.append((lo, lo_at, hi, hi_at))
        if not parts:
            empty = np.zeros(0)
            return RowExtremes(empty, empty.astype(np.int64), empty, empty.astype(np.int64))
        lo, lo_at, hi, hi_at = (np.concatenate(p) for p in zip(*parts))
        return RowExtremes(lo, lo_at.astype(np.int64), hi, hi_at.astype(np.int64))
