"""BlockPlan: chunk sizes along the two sample axes, and the blocks they define."""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidDataError, InvalidParameterError

__all__ = ["BlockPlan", "regular_chunks"]


def regular_chunks(n: int, chunk_size: int) -> tuple[int, ...]:
    """Chunk sizes that split ``n`` rows into pieces of ``chunk_size`` (the last may be smaller).

    Examples
    --------
    >>> regular_chunks(10, 4)
    (4, 4, 2)
    """
    for name, value, low in (("n", n, 1), ("chunk_size", chunk_size, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise InvalidParameterError(
                f"The {name!r} parameter of regular_chunks must be an int in the range [{low}, inf). "
                f"Got {value!r} instead."
            )
    full, rest = divmod(int(n), int(chunk_size))
    return (int(chunk_size),) * full + ((rest,) if rest else ())


def _as_chunks(value: Any, name: str) -> tuple[int, ...]:
    try:
        chunks = tuple(value)
    except TypeError:
        raise InvalidParameterError(
            f"The {name!r} field of BlockPlan must be a sequence of chunk sizes such as (100, 100, 50). "
            f"Got {value!r} instead."
        ) from None
    bad = [
        c for c in chunks
        if isinstance(c, bool) or not isinstance(c, numbers.Real) or math.isnan(c) or int(c) != c or c < 1
    ]
    if bad:
        unknown = any(isinstance(c, float) and math.isnan(c) for c in bad)
        fix = (
            " The array has unknown chunk sizes; to fix, call x.compute_chunk_sizes() first."
            if unknown
            else " To fix, drop empty chunks, e.g. with x.rechunk(...)."
        )
        raise InvalidDataError(
            f"The {name!r} chunk sizes of a BlockPlan must be positive integers. Got {chunks}.{fix}"
        )
    return tuple(int(c) for c in chunks)


def _offsets(chunks: tuple[int, ...]) -> tuple[int, ...]:
    out = [0]
    for c in chunks:
        out.append(out[-1] + c)
    return tuple(out)


@dataclass(frozen=True)
class BlockPlan:
    """How the rows (test samples) and columns (training samples) of a result are split into blocks.

    A *row map* applies a kernel to every row chunk (e.g. influence factors of
    each test chunk). A *pairwise map* applies a kernel to every pair (row
    chunk ``i``, column chunk ``j``) and produces block ``(i, j)`` of a
    ``rows × cols`` matrix. :class:`SequentialMapper` and :class:`DaskMapper`
    execute the same plan.

    Parameters
    ----------
    rows : sequence of int
        Chunk sizes along the first axis (test samples), each at least 1.
    cols : sequence of int
        Chunk sizes along the second axis (training samples); empty for a plan
        that only maps rows.

    Examples
    --------
    >>> plan = BlockPlan(rows=(2, 3), cols=(4,))
    >>> plan.shape, plan.n_blocks
    ((5, 4), 2)
    >>> [s for s in plan.row_slices]
    [slice(0, 2, None), slice(2, 5, None)]
    >>> list(plan.pairs())
    [(0, 0), (1, 0)]
    """

    rows: tuple[int, ...]
    cols: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        rows = _as_chunks(self.rows, "rows")
        if not rows:
            raise InvalidDataError("A BlockPlan needs at least one row chunk. Got rows=().")
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "cols", _as_chunks(self.cols, "cols"))

    # -- construction -----------------------------------------------------------------

    @classmethod
    def regular(cls, n_rows: int, row_chunk: int, n_cols: int = 0, col_chunk: int | None = None) -> BlockPlan:
        """A plan with equal chunks (the last one may be smaller) along each axis.

        Examples
        --------
        >>> BlockPlan.regular(5, 2, 3, 3)
        BlockPlan(rows=(2, 2, 1), cols=(3,))
        """
        cols = () if n_cols == 0 else regular_chunks(n_cols, col_chunk if col_chunk is not None else n_cols)
        return cls(regular_chunks(n_rows, row_chunk), cols)

    @classmethod
    def from_arrays(cls, rows: Any, cols: Any = None) -> BlockPlan:
        """The plan of chunked arrays (anything with dask-style ``.chunks``), split along axis 0."""
        return cls(rows.chunks[0], () if cols is None else cols.chunks[0])

    # -- sizes --------------------------------------------------------------------------

    @property
    def n_rows(self) -> int:
        return sum(self.rows)

    @property
    def n_cols(self) -> int:
        return sum(self.cols)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(n_rows, n_cols)``, or ``(n_rows,)`` for a plan without columns."""
        return (self.n_rows, self.n_cols) if self.cols else (self.n_rows,)

    @property
    def grid(self) -> tuple[int, ...]:
        """Number of chunks along each axis."""
        return (len(self.rows), len(self.cols)) if self.cols else (len(self.rows),)

    @property
    def n_blocks(self) -> int:
        return len(self.rows) * max(len(self.cols), 1)

    @property
    def row_offsets(self) -> tuple[int, ...]:
        """Start of every row chunk, then the number of rows."""
        return _offsets(self.rows)

    @property
    def col_offsets(self) -> tuple[int, ...]:
        return _offsets(self.cols)

    @property
    def row_slices(self) -> tuple[slice, ...]:
        off = self.row_offsets
        return tuple(slice(a, b) for a, b in itertools.pairwise(off))

    @property
    def col_slices(self) -> tuple[slice, ...]:
        off = self.col_offsets
        return tuple(slice(a, b) for a, b in itertools.pairwise(off))

    @property
    def chunks(self) -> tuple[tuple[int, ...], ...]:
        """Dask-style chunks of the result's sample axes."""
        return (self.rows, self.cols) if self.cols else (self.rows,)

    # -- iteration ------------------------------------------------------------------------

    def pairs(self) -> Iterator[tuple[int, int]]:
        """Block indices ``(i, j)`` in row-major order (the order of the sequential loop)."""
        for i in range(len(self.rows)):
            for j in range(len(self.cols)):
                yield i, j

    def block_slices(self, index: Sequence[int]) -> tuple[slice, ...]:
        """Slices of block ``index`` (``(i,)`` or ``(i, j)``) in the result."""
        if len(index) == 1:
            return (self.row_slices[index[0]],)
        return self.row_slices[index[0]], self.col_slices[index[1]]

    def block_shape(self, index: Sequence[int]) -> tuple[int, ...]:
        if len(index) == 1:
            return (self.rows[index[0]],)
        return self.rows[index[0]], self.cols[index[1]]

    # -- zarr compatibility --------------------------------------------------------------

    @staticmethod
    def _is_regular(chunks: tuple[int, ...]) -> bool:
        return len(set(chunks[:-1])) <= 1 and chunks[-1] <= chunks[0]

    @property
    def is_regular(self) -> bool:
        """Whether every axis has equal chunks except a smaller or equal last one (a zarr chunk grid)."""
        return all(self._is_regular(c) for c in self.chunks if c)

    def regularized(self) -> BlockPlan:
        """This plan if it is regular, else a regular plan with each axis' largest chunk size."""
        if self.is_regular:
            return self
        cols = regular_chunks(self.n_cols, max(self.cols)) if self.cols else ()
        return BlockPlan(regular_chunks(self.n_rows, max(self.rows)), cols)

    def describe(self) -> str:
        """A short text such as ``"3 x 2 blocks of (4, 4, 2) x (50, 50) samples"``."""

        def sizes(chunks: tuple[int, ...]) -> str:
            if len(chunks) <= 4:
                return str(chunks)
            return f"({chunks[0]}, {chunks[1]}, ..., {chunks[-1]})"

        if not self.cols:
            return f"{len(self.rows)} row chunks of {sizes(self.rows)} samples"
        return f"{len(self.rows)} x {len(self.cols)} blocks of {sizes(self.rows)} x {sizes(self.cols)} samples"
