"""Lazy, re-iterable sequences of blocks: the values the sequential engine passes around.

A :class:`BlockSequence` yields one block per row chunk (an array, or a tuple
of arrays such as ``(x, y)``). It holds *thunks* (zero-argument callables) so
that a consumer can skip blocks without computing them: this is how an
interrupted write resumes without recomputing finished blocks. A
:class:`NestedBlockSequence` is the lazy result of a pairwise map: block
``(i, j)`` = ``kernel(*row_block_i, *col_block_j, **kwargs)``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .._progress import progress_bar
from ..errors import InvalidDataError, InvalidParameterError
from ..validation import check_bool, check_callable, check_mapping, check_name
from ._plan import BlockPlan

__all__ = ["BlockSequence", "NestedBlockSequence", "as_args", "n_rows_of", "nbytes_of"]

Thunk = Callable[[], Any]


def as_args(block: Any) -> tuple[Any, ...]:
    """The kernel arguments a block stands for: a tuple/list is splatted, anything else is one argument."""
    return tuple(block) if isinstance(block, tuple | list) else (block,)


def n_rows_of(block: Any) -> int:
    """Number of samples in a block (the length of its first array along axis 0)."""
    first = as_args(block)[0]
    shape = getattr(first, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) else len(first)


def nbytes_of(block: Any) -> int:
    """Memory held by a block's arrays (``nbytes``, or ``numel * element_size`` for tensors)."""
    total = 0
    for part in as_args(block):
        n = getattr(part, "nbytes", None)
        if n is None and hasattr(part, "element_size"):
            n = part.numel() * part.element_size()
        total += int(n or 0)
    return total


def _dataloader_chunks(obj: Any) -> tuple[int, ...] | None:
    """Batch sizes of a torch-style DataLoader with a plain BatchSampler, without reading data."""
    batch_sampler = getattr(obj, "batch_sampler", None)
    batch_size = getattr(obj, "batch_size", None)
    sampler = getattr(obj, "sampler", None)
    if batch_sampler is None or batch_size is None or type(batch_sampler).__name__ != "BatchSampler":
        return None
    try:
        n = len(sampler)
    except TypeError:
        return None
    if n == 0:
        return ()
    full, rest = divmod(n, int(batch_size))
    if getattr(obj, "drop_last", False):
        rest = 0
    return (int(batch_size),) * full + ((rest,) if rest else ())


def _check_chunk_sizes(chunks: Any) -> tuple[int, ...]:
    """Rows per block: a sequence of non-negative ints."""
    ok = isinstance(chunks, Sequence) and not isinstance(chunks, str)
    if ok:
        ok = all(isinstance(c, int | np.integer) and not isinstance(c, bool) and c >= 0 for c in chunks)
    if not ok:
        raise InvalidParameterError(
            "The 'chunks' argument of BlockSequence must be None, rows per block (a sequence of ints >= 0) or a "
            f"function returning them. Got {chunks!r:.60} instead."
        )
    return tuple(int(c) for c in chunks)


class BlockSequence:
    """A lazy, re-iterable sequence of row blocks.

    Iterating yields the blocks; :meth:`thunks` yields callables that compute
    them, so blocks can be skipped without being computed. Chunk sizes are
    known without computing anything for arrays, lists of blocks and
    DataLoaders with a plain batch sampler; for other iterables they are
    counted with one pass over the data (reading it, not computing on it).

    Parameters
    ----------
    thunks : callable
        ``thunks()`` returns a fresh iterator of zero-argument callables, one per block.
    chunks : tuple of int or callable, optional
        Rows per block, or a function returning them.
    name : str
        Used in error messages.

    Examples
    --------
    >>> import numpy as np
    >>> seq = BlockSequence.from_arrays((np.arange(5),), chunks=(2, 3))
    >>> [b[0].tolist() for b in seq]
    [[0, 1], [2, 3, 4]]
    >>> seq.chunks
    (2, 3)
    """

    def __init__(
        self,
        thunks: Callable[[], Iterator[Thunk]],
        *,
        chunks: tuple[int, ...] | Callable[[], tuple[int, ...]] | None = None,
        name: str = "blocks",
    ) -> None:
        check_callable(thunks, "thunks", "BlockSequence", what="returning a fresh iterator of block thunks")
        if chunks is not None and not callable(chunks):
            chunks = _check_chunk_sizes(chunks)
        self._thunks = thunks
        self._chunks_fn = chunks if callable(chunks) else None
        self._chunks = None if callable(chunks) or chunks is None else tuple(int(c) for c in chunks)
        self.name = check_name(name, "name", "BlockSequence")

    # -- constructors -------------------------------------------------------------------

    @classmethod
    def from_iterable(cls, iterable: Iterable[Any], *, name: str = "data") -> BlockSequence:
        """Blocks of a re-iterable (a list of ``(x, y)`` pairs, a DataLoader, ...).

        Raises
        ------
        InvalidDataError
            If ``iterable`` is a one-shot iterator (e.g. a generator): the
            sequential engine reads training data once per test chunk.
        """
        if isinstance(iterable, BlockSequence):
            return iterable
        if not isinstance(iterable, Iterable) or isinstance(iterable, str | bytes | np.ndarray):
            raise InvalidDataError(
                f"The {name!r} argument must be an iterable of blocks, e.g. a list of (x, y) pairs or a "
                f"DataLoader. Got {type(iterable).__name__}."
            )
        if isinstance(iterable, Iterator):
            raise InvalidDataError(
                f"The {name!r} argument is a one-shot iterator ({type(iterable).__name__}), but it is read "
                "more than once (e.g. once per test chunk). To fix, pass a re-iterable: a list of (x, y) "
                "pairs or a torch DataLoader."
            )

        def thunks() -> Iterator[Thunk]:
            for item in iterable:
                yield lambda item=item: item

        chunks: tuple[int, ...] | Callable[[], tuple[int, ...]]
        if isinstance(iterable, Sequence):
            chunks = tuple(n_rows_of(item) for item in iterable)
        else:
            known = _dataloader_chunks(iterable)
            chunks = known if known is not None else (lambda: tuple(n_rows_of(item) for item in iterable))
        return cls(thunks, chunks=chunks, name=name)

    @classmethod
    def from_arrays(cls, arrays: Sequence[Any], *, chunks: Sequence[int], name: str = "arrays") -> BlockSequence:
        """Blocks of in-memory arrays (numpy, tensors, ...) sliced along axis 0 by ``chunks``."""
        plan = BlockPlan(tuple(chunks))
        arrays = tuple(arrays)
        for k, a in enumerate(arrays):
            if len(a) != plan.n_rows:
                raise InvalidDataError(
                    f"Array {k} of {name!r} has {len(a)} rows, but the chunks {plan.rows} cover {plan.n_rows}."
                )

        def thunks() -> Iterator[Thunk]:
            for s in plan.row_slices:
                yield lambda s=s: tuple(a[s] for a in arrays)

        return cls(thunks, chunks=plan.rows, name=name)

    # -- protocol ----------------------------------------------------------------------------

    def thunks(self) -> Iterator[Thunk]:
        """A fresh iterator of callables, one per block, each computing its block when called."""
        return self._thunks()

    def __iter__(self) -> Iterator[Any]:
        for thunk in self.thunks():
            yield thunk()

    @property
    def chunks(self) -> tuple[int, ...]:
        """Rows of every block (may read the data once, see the class docstring)."""
        if self._chunks is None:
            if self._chunks_fn is None:
                self._chunks = tuple(n_rows_of(b) for b in self)
            else:
                self._chunks = tuple(self._chunks_fn())
        return self._chunks

    @property
    def chunks_if_known(self) -> tuple[int, ...] | None:
        """Rows of every block if known without reading data, else None."""
        return self._chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __repr__(self) -> str:
        known = "unknown" if self._chunks is None else f"{len(self._chunks)} blocks, {sum(self._chunks)} rows"
        return f"BlockSequence({self.name}: {known})"

    def map(self, fn: Callable[[Any], Any], *, check_rows: bool = True, name: str | None = None) -> BlockSequence:
        """A lazy sequence of ``fn(block)``; with ``check_rows`` each result must keep the block's rows."""
        source = self

        def thunks() -> Iterator[Thunk]:
            for i, thunk in enumerate(source.thunks()):
                yield lambda i=i, thunk=thunk: _checked(fn(thunk()), source, i, check_rows)

        chunks = self._chunks if self._chunks is not None else (lambda: source.chunks)
        return BlockSequence(thunks, chunks=chunks, name=name or self.name)

    def cached(self, max_bytes: float | None = None) -> BlockSequence:
        """This sequence, each block computed at most once while the cache holds at most ``max_bytes``.

        Blocks are cached in the order they are first computed until the
        budget is spent; later blocks are recomputed on every pass. ``None``
        caches everything.
        """
        return _CachedSequence(self, max_bytes)


def _checked(block: Any, source: BlockSequence, i: int, check_rows: bool) -> Any:
    if check_rows and source.chunks_if_known is not None:
        expected = source.chunks_if_known[i]
        got = n_rows_of(block)
        if got != expected:
            raise InvalidDataError(
                f"Block {i} of {source.name!r} has {got} rows, but its chunks say {expected}. The iterable "
                "yields batches of other sizes than announced (e.g. a custom batch sampler); to fix, pass a "
                "list of (x, y) pairs or a DataLoader with a plain batch_size."
            )
    return block


class _CachedSequence(BlockSequence):
    def __init__(self, source: BlockSequence, max_bytes: float | None) -> None:
        self._source = source
        self.max_bytes = max_bytes
        self._cache: dict[int, Any] = {}
        self._cached_bytes = 0
        self._lock = threading.Lock()
        chunks = source._chunks if source._chunks is not None else (lambda: source.chunks)
        super().__init__(self._make_thunks, chunks=chunks, name=source.name)

    def _make_thunks(self) -> Iterator[Thunk]:
        for i, thunk in enumerate(self._source.thunks()):
            yield lambda i=i, thunk=thunk: self._get(i, thunk)

    def _get(self, i: int, thunk: Thunk) -> Any:
        if i in self._cache:
            return self._cache[i]
        block = thunk()
        size = nbytes_of(block)
        with self._lock:
            if self.max_bytes is None or self._cached_bytes + size <= self.max_bytes:
                self._cache[i] = block
                self._cached_bytes += size
        return block

    @property
    def n_cached(self) -> int:
        """Number of blocks held in memory."""
        return len(self._cache)


class _Once:
    """A value computed on first access."""

    __slots__ = ("_set", "_thunk", "_value")

    def __init__(self, thunk: Thunk) -> None:
        self._thunk = thunk
        self._set = False
        self._value: Any = None

    def get(self) -> Any:
        if not self._set:
            self._value = self._thunk()
            self._set = True
            self._thunk = None  # type: ignore[assignment]
        return self._value


class NestedBlockSequence:
    """The lazy result of a pairwise map over row blocks and column blocks.

    Iterating yields, for every row chunk ``i``, a generator of the blocks
    ``(i, 0), (i, 1), ...``. The row block ``i`` (e.g. influence factors of a
    test chunk) is computed once, when the first block of its row is needed,
    and reused for every column chunk.

    Parameters
    ----------
    kernel : callable
        ``kernel(*row_args, *col_args, **shared, **static)`` gives block ``(i, j)``.
    rows, cols : BlockSequence
        Row and column blocks.
    shared, static : mapping, optional
        Keyword arguments of every kernel call.
    progress : bool, optional
        Show a progress bar over the blocks (``tqdm.auto``); None: as the
        ``dvl_dask.progress.enabled`` option says (default: on a terminal or in
        a Jupyter kernel).
    label : str
        Label of the progress bar.
    """

    def __init__(
        self,
        kernel: Callable[..., Any],
        rows: BlockSequence,
        cols: BlockSequence,
        *,
        shared: Mapping[str, Any] | None = None,
        static: Mapping[str, Any] | None = None,
        progress: bool | None = False,
        label: str = "blocks",
    ) -> None:
        owner = "NestedBlockSequence"
        self.kernel = check_callable(kernel, "kernel", owner, what="computing block (i, j)")
        for what, seq in (("rows", rows), ("cols", cols)):
            if not isinstance(seq, BlockSequence):
                raise InvalidParameterError(
                    f"The '{what}' argument of {owner} must be a BlockSequence (see BlockSequence.from_iterable). "
                    f"Got {type(seq).__name__}."
                )
        self.rows = rows
        self.cols = cols
        self.kwargs = {**check_mapping(shared or {}, "shared", owner), **check_mapping(static or {}, "static", owner)}
        self.progress = progress if progress is None else check_bool(progress, "progress", owner)
        self.label = check_name(label, "label", owner)

    @property
    def plan(self) -> BlockPlan:
        """The block plan (may read data once to learn chunk sizes, see :class:`BlockSequence`)."""
        return BlockPlan(self.rows.chunks, self.cols.chunks)

    def _total(self) -> int | None:
        r, c = self.rows.chunks_if_known, self.cols.chunks_if_known
        return None if r is None or c is None else len(r) * len(c)

    def iter_blocks(
        self, skip: Callable[[tuple[int, int]], bool] | None = None
    ) -> Iterator[tuple[tuple[int, int], Any]]:
        """Yield ``((i, j), block)`` in row-major order, never computing blocks for which ``skip`` is true.

        A row whose blocks are all skipped neither computes its row block nor
        reads the column data.
        """
        n_cols = len(self.cols.chunks) if skip is not None else None
        bar = progress_bar(self._total(), self.label, progress=self.progress)
        try:
            for i, row_thunk in enumerate(self.rows.thunks()):
                if n_cols is not None and all(skip((i, j)) for j in range(n_cols)):  # type: ignore[misc]
                    bar.update(n_cols)
                    continue
                row = _Once(row_thunk)
                for j, col_thunk in enumerate(self.cols.thunks()):
                    if skip is not None and skip((i, j)):
                        bar.update()
                        continue
                    block = self.kernel(*as_args(row.get()), *as_args(col_thunk()), **self.kwargs)
                    bar.update()
                    yield (i, j), block
        finally:
            bar.close()

    def __iter__(self) -> Iterator[Iterator[Any]]:
        bar = progress_bar(self._total(), self.label, progress=self.progress)
        for row_thunk in self.rows.thunks():
            yield self._row(_Once(row_thunk), bar)
        bar.close()

    def _row(self, row: _Once, bar: Any) -> Iterator[Any]:
        for col_thunk in self.cols.thunks():
            block = self.kernel(*as_args(row.get()), *as_args(col_thunk()), **self.kwargs)
            bar.update()
            yield block

    def __repr__(self) -> str:
        return f"NestedBlockSequence({getattr(self.kernel, '__name__', 'kernel')}: {self.rows!r} x {self.cols!r})"
