"""Two engines over one plan: a plain loop and one ``da.blockwise`` per map.

Kernels are module-level functions ``kernel(*row_args, [*col_args,] **kwargs)``
returning one block. Both mappers call them with the same blocks and the same
keyword arguments, so they produce identical arrays
(:func:`dvl_dask.testing.mappers.assert_mappers_agree` checks it).

Keyword arguments come in two kinds:

``shared``
    Large objects every call needs (a fitted model). The :class:`DaskMapper`
    puts them into the graph **once**, as a single key every block task depends
    on (a ``dask.delayed`` object, or a future already scattered to a
    cluster), instead of embedding a copy in every task.
``static``
    Small values (a mode string) passed to every call as they are.
"""

from __future__ import annotations

import string
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import InvalidDataError, TokenizationError, UnalignedChunksError
from ..keys import fingerprint, layer_name
from ..validation import check_bool, check_mapping, check_name
from ._plan import BlockPlan
from ._sequences import BlockSequence, NestedBlockSequence, as_args

__all__ = ["BlockSink", "ChunkMapper", "DaskMapper", "SequentialMapper", "SharedObjects"]


class SharedObjects:
    """Keyword arguments shared by every kernel call, hashed once.

    Parameters
    ----------
    objects : mapping
        Name → object, e.g. ``{"model": fitted_model}``.
    token : str, optional
        A precomputed deterministic token of the objects. By default they are
        hashed with :func:`dvl_dask.keys.fingerprint`; objects that cannot be
        hashed get a random token (their graph names then differ between runs).

    Examples
    --------
    >>> shared = SharedObjects({"scale": 2.0})
    >>> shared.objects["scale"], shared.token == SharedObjects({"scale": 2.0}).token
    (2.0, True)
    """

    def __init__(self, objects: Mapping[str, Any], token: str | None = None) -> None:
        self.objects = check_mapping(objects, "objects", "SharedObjects")
        if token is not None:
            check_name(token, "token", "SharedObjects")
        if token is None:
            try:
                token = fingerprint(self.objects)
            except TokenizationError:
                token = uuid.uuid4().hex
        self.token = token

    def __dask_tokenize__(self) -> tuple[str, str]:
        return ("SharedObjects", self.token)

    def __repr__(self) -> str:
        return f"SharedObjects({', '.join(self.objects)}; token={self.token[:8]})"


def _objects(shared: Any) -> dict[str, Any]:
    if shared is None:
        return {}
    if isinstance(shared, SharedObjects):
        return shared.objects
    return dict(shared)


@runtime_checkable
class BlockSink(Protocol):
    """Where a mapper writes finished blocks (e.g. regions of a zarr array).

    ``plan`` is the grid of blocks the sink accepts; ``done`` tells which are
    already stored (a resumed write skips them); ``write`` stores one block;
    ``finish`` is called once after every block is stored and returns a
    description of the result (e.g. its URL). Sinks used by the
    :class:`DaskMapper` must be picklable.
    """

    plan: BlockPlan

    def done(self, index: tuple[int, ...]) -> bool: ...

    def write(self, index: tuple[int, ...], block: Any) -> None: ...

    def finish(self) -> Any: ...


@runtime_checkable
class ChunkMapper(Protocol):
    """What the calculators need of an engine: row maps, pairwise maps and storing blocks."""

    def map_rows(self, kernel: Callable[..., Any], source: Any, **options: Any) -> Any: ...

    def map_pairwise(self, kernel: Callable[..., Any], rows: Any, cols: Any, **options: Any) -> Any: ...

    def store(self, result: Any, sink: BlockSink, **options: Any) -> Any: ...


# -- sequential engine ----------------------------------------------------------------------


class SequentialMapper:
    """Plain loops in the calling process, lazily: nothing runs until the result is iterated.

    Sources are :class:`BlockSequence` objects or re-iterables of blocks (a
    list of ``(x, y)`` pairs, a DataLoader); results are a
    :class:`BlockSequence` (row maps) or a :class:`NestedBlockSequence`
    (pairwise maps), which are themselves valid sources.

    Parameters
    ----------
    progress : bool, optional
        Show a progress bar (``tqdm.auto``) over the blocks of pairwise maps;
        None: as the ``dvl_dask.progress.enabled`` option says.

    Examples
    --------
    >>> import numpy as np
    >>> rows = BlockSequence.from_arrays((np.arange(3.0),), chunks=(2, 1))
    >>> cols = BlockSequence.from_arrays((np.arange(2.0),), chunks=(2,))
    >>> out = SequentialMapper().map_pairwise(np.multiply.outer, rows, cols)
    >>> [[b.shape for b in row] for row in out]
    [[(2, 2)], [(1, 2)]]
    """

    def __init__(self, *, progress: bool | None = False) -> None:
        self.progress = progress if progress is None else check_bool(progress, "progress", "SequentialMapper")

    def map_rows(
        self,
        kernel: Callable[..., Any],
        source: Any,
        *,
        shared: Mapping[str, Any] | SharedObjects | None = None,
        static: Mapping[str, Any] | None = None,
        plan: BlockPlan | None = None,
        name: str | None = None,
        **_: Any,
    ) -> BlockSequence:
        """``kernel(*block, **shared, **static)`` for every block of ``source``, lazily.

        Extra options of :meth:`DaskMapper.map_rows` (``dtype``,
        ``trailing_shape``) are accepted and ignored.
        """
        source = BlockSequence.from_iterable(source, name=name or "source")
        _check_plan_rows(plan, source)
        kwargs = {**_objects(shared), **(static or {})}
        return source.map(lambda block: kernel(*as_args(block), **kwargs), name=name or _funcname(kernel))

    def map_pairwise(
        self,
        kernel: Callable[..., Any],
        rows: Any,
        cols: Any,
        *,
        shared: Mapping[str, Any] | SharedObjects | None = None,
        static: Mapping[str, Any] | None = None,
        plan: BlockPlan | None = None,
        name: str | None = None,
        **_: Any,
    ) -> NestedBlockSequence:
        """Block ``(i, j)`` = ``kernel(*rows[i], *cols[j], **shared, **static)``, lazily."""
        rows = BlockSequence.from_iterable(rows, name="rows")
        cols = BlockSequence.from_iterable(cols, name="cols")
        _check_plan_rows(plan, rows, cols)
        return NestedBlockSequence(
            kernel, rows, cols, shared=_objects(shared), static=static, progress=self.progress,
            label=name or _funcname(kernel),
        )

    def store(
        self,
        result: BlockSequence | NestedBlockSequence,
        sink: BlockSink,
        *,
        convert: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Write every block not yet ``sink.done`` as it is produced, then ``sink.finish()``.

        At most one block is held in memory (plus the current row block of a
        pairwise map). ``convert`` maps each block before writing (e.g. a
        tensor to numpy).
        """
        convert = convert or (lambda b: b)
        if isinstance(result, NestedBlockSequence):
            for index, block in result.iter_blocks(skip=sink.done):
                sink.write(index, convert(block))
        else:
            for i, thunk in enumerate(result.thunks()):
                if not sink.done((i,)):
                    sink.write((i,), convert(thunk()))
        return sink.finish()


def _check_plan_rows(plan: BlockPlan | None, rows: BlockSequence, cols: BlockSequence | None = None) -> None:
    if plan is None:
        return
    for what, seq, expected in (("rows", rows, plan.rows), ("cols", cols, plan.cols)):
        if seq is None:
            continue
        known = seq.chunks_if_known
        if known is not None and tuple(known) != tuple(expected):
            raise UnalignedChunksError(
                f"The {what} of {seq.name!r} are chunked as {known}, but the plan says {expected}."
            )


def _funcname(fn: Any) -> str:
    return str(getattr(fn, "__name__", type(fn).__name__)).strip("_").replace("_", "-")


# -- dask engine --------------------------------------------------------------------------------


def _apply(kernel: Callable[..., Any], shared: Any, dtype: Any, *blocks: Any, **static: Any) -> np.ndarray:
    """One block task: the kernel on its blocks, with the shared objects; output cast to ``dtype``."""
    out = np.asarray(kernel(*(_one_block(b) for b in blocks), **_objects(shared), **static))
    return out if out.dtype == dtype else out.astype(dtype)


def _one_block(blocks: Any) -> Any:
    """The block of an input whose trailing axes the output does not keep.

    ``da.blockwise`` hands such an input over as nested lists of its blocks
    along those axes, one level per axis. The mapper keeps each trailing axis
    in one chunk (:meth:`DaskMapper._arrays`), so every list holds one block:
    it is unwrapped here. (With ``concatenate=True`` dask would join the one
    block into a fresh array instead: a full copy of every input block in
    every task, e.g. 27 MB of factors and gradients per influence product,
    which cost a third of its time.)
    """
    while isinstance(blocks, list):
        (blocks,) = blocks
    return blocks


def _write_block(block: np.ndarray, sink: BlockSink, n_axes: int, block_id: tuple[int, ...] | None = None) -> Any:
    assert block_id is not None
    sink.write(tuple(block_id[:n_axes]), block)
    return np.ones((1,) * block.ndim, dtype=np.uint8)


def _finish(sink: BlockSink, _written: list[Any]) -> Any:
    return sink.finish()


_LETTERS = [c for c in string.ascii_letters if c not in "ij"]


def _is_future(obj: Any) -> bool:
    return type(obj).__name__ == "Future" and hasattr(obj, "key")


class DaskMapper:
    """One ``da.blockwise`` call per map; graph layers named ``"<verb>-<token>"`` by :func:`keys.layer_name`.

    Sources are dask arrays chunked along axis 0 only (other axes are
    rechunked to one chunk); results are dask arrays whose chunks follow the
    plan. Nothing is computed until the caller computes or stores the result.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> x = da.from_array(np.arange(3.0), chunks=2)
    >>> y = da.from_array(np.arange(2.0), chunks=2)
    >>> out = DaskMapper().map_pairwise(np.multiply.outer, [x], [y], dtype=np.float64)
    >>> out.chunks, out.compute().tolist()
    (((2, 1), (2,)), [[0.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    """

    def shared_handle(self, shared: Mapping[str, Any] | SharedObjects | Any | None) -> Any:
        """One graph key holding ``shared``: a ``dask.delayed`` object (or a future, passed through)."""
        import dask
        from dask.delayed import Delayed

        if shared is None or isinstance(shared, Delayed) or _is_future(shared):
            return shared
        if not isinstance(shared, SharedObjects):
            shared = SharedObjects(shared)
        return dask.delayed(shared, name=layer_name("shared-objects", shared.token), traverse=False)

    def _arrays(self, arrays: Any, what: str) -> list[Any]:
        import dask.array as da

        arrays = [arrays] if isinstance(arrays, da.Array) else list(arrays)
        out = []
        for k, a in enumerate(arrays):
            if not isinstance(a, da.Array):
                raise InvalidDataError(
                    f"The {what} arrays of a DaskMapper map must be dask arrays. Got {type(a).__name__} at "
                    f"position {k}. To fix, wrap it: dask.array.from_array(x, chunks=(chunk_size, -1))."
                )
            if a.ndim == 0:
                raise InvalidDataError(f"The {what} array at position {k} is 0-dimensional; it needs a sample axis.")
            if any(np.isnan(c) for c in a.chunks[0]):
                raise InvalidDataError(
                    f"The {what} array at position {k} has unknown chunk sizes. To fix, call "
                    "x.compute_chunk_sizes() first."
                )
            if any(len(c) > 1 for c in a.chunks[1:]):
                a = a.rechunk({d: -1 for d in range(1, a.ndim)})
            out.append(a)
        if len({a.chunks[0] for a in out}) > 1:
            raise UnalignedChunksError(
                f"The {what} arrays must have the same chunks along axis 0 (samples). Got "
                f"{[a.chunks[0] for a in out]}. To fix, rechunk them alike: y = y.rechunk({{0: x.chunks[0]}})."
            )
        return out

    @staticmethod
    def _indices(arrays: list[Any], lead: str, letters: Iterator[str]) -> list[tuple[Any, str]]:
        return [(a, lead + "".join(next(letters) for _ in range(a.ndim - 1))) for a in arrays]

    def _blockwise(
        self,
        kernel: Callable[..., Any],
        out_lead: str,
        args: list[tuple[Any, str]],
        *,
        shared: Any,
        static: Mapping[str, Any] | None,
        dtype: Any,
        trailing_shape: Sequence[int],
        name: str | None,
        verb: str,
        letters: Iterator[str],
    ) -> Any:
        import dask.array as da

        dtype = np.dtype(dtype)
        new = [next(letters) for _ in trailing_shape]
        out_ind = out_lead + "".join(new)
        handle = self.shared_handle(shared)
        static = dict(static or {})
        if name is None:
            inputs = [a.name for a, _ in args]
            name = layer_name(verb, kernel, handle, static, dtype.str, tuple(trailing_shape), *inputs)
        flat: list[Any] = [kernel, None, handle, None, dtype, None]
        for a, ind in args:
            flat += [a, ind]
        with warnings.catch_warnings():
            # A pairwise map multiplies the number of chunks by design; dask's warning would fire on every call.
            warnings.simplefilter("ignore", da.PerformanceWarning)
            return da.blockwise(
                _apply,
                out_ind,
                *flat,
                name=name,
                dtype=dtype,
                meta=np.empty((0,) * len(out_ind), dtype=dtype),
                new_axes=dict(zip(new, (int(s) for s in trailing_shape))),
                concatenate=False,  # the one block of each dropped axis is passed as it is (_one_block)
                **static,
            )

    def map_rows(
        self,
        kernel: Callable[..., Any],
        arrays: Any,
        *,
        dtype: Any,
        trailing_shape: Sequence[int] = (),
        shared: Mapping[str, Any] | SharedObjects | Any | None = None,
        static: Mapping[str, Any] | None = None,
        plan: BlockPlan | None = None,
        name: str | None = None,
    ) -> Any:
        """A dask array of shape ``(n, *trailing_shape)``; block ``i`` = ``kernel(*blocks_i, **kwargs)``.

        Parameters
        ----------
        kernel : callable
            Module-level function returning a numpy block of ``len(block)`` rows.
        arrays : dask array or sequence of dask arrays
            Same chunks along axis 0.
        dtype : dtype
            Dtype of the result (blocks are cast to it).
        trailing_shape : tuple of int
            Shape of the result after the sample axis.
        shared, static : mapping, optional
            See the module docstring. ``shared`` may also be a ``dask.delayed``
            object or a future from ``client.scatter``.
        plan : BlockPlan, optional
            If given, the arrays' chunks must match ``plan.rows``.
        name : str, optional
            Name of the graph layer (default ``"<kernel>-<token>"``).
        """
        arrays = self._arrays(arrays, "row")
        if plan is not None and arrays[0].chunks[0] != plan.rows:
            raise UnalignedChunksError(f"The arrays are chunked as {arrays[0].chunks[0]}, the plan says {plan.rows}.")
        letters = iter(_LETTERS)
        args = self._indices(arrays, "i", letters)
        return self._blockwise(
            kernel, "i", args, shared=shared, static=static, dtype=dtype, trailing_shape=trailing_shape,
            name=name, verb=_funcname(kernel), letters=letters,
        )

    def map_pairwise(
        self,
        kernel: Callable[..., Any],
        rows: Any,
        cols: Any,
        *,
        dtype: Any,
        trailing_shape: Sequence[int] = (),
        shared: Mapping[str, Any] | SharedObjects | Any | None = None,
        static: Mapping[str, Any] | None = None,
        plan: BlockPlan | None = None,
        name: str | None = None,
    ) -> Any:
        """A dask array ``(n_rows, n_cols, *trailing_shape)``; block ``(i, j)`` = ``kernel(*rows_i, *cols_j)``.

        One ``da.blockwise`` call: every row block is computed once and
        reused by all the tasks of its row (the graph has one key per row
        block, not one per pair). Parameters as in :meth:`map_rows`.
        """
        rows = self._arrays(rows, "row")
        cols = self._arrays(cols, "column")
        if plan is not None and (rows[0].chunks[0], cols[0].chunks[0]) != (plan.rows, plan.cols):
            raise UnalignedChunksError(
                f"The arrays are chunked as {rows[0].chunks[0]} x {cols[0].chunks[0]}, the plan says "
                f"{plan.rows} x {plan.cols}."
            )
        letters = iter(_LETTERS)
        args = self._indices(rows, "i", letters) + self._indices(cols, "j", letters)
        return self._blockwise(
            kernel, "ij", args, shared=shared, static=static, dtype=dtype, trailing_shape=trailing_shape,
            name=name, verb=_funcname(kernel), letters=letters,
        )

    def store(self, result: Any, sink: BlockSink, *, compute: bool = True) -> Any:
        """Write the blocks of a dask array into ``sink``, skipping those already ``done``.

        The array is rechunked to the sink's grid (so every sink block is
        written by exactly one task), one task per pending block writes it,
        and a final task calls ``sink.finish()`` once all are written.

        Returns
        -------
        The value of ``sink.finish()``, or with ``compute=False`` a
        ``dask.delayed`` object computing it.
        """
        import dask
        import dask.array as da
        from dask.delayed import Delayed
        from dask.highlevelgraph import HighLevelGraph

        grid = sink.plan
        n_axes = len(grid.grid)
        target = tuple(grid.chunks) + tuple((s,) for s in result.shape[n_axes:])
        if result.chunks != target:
            result = result.rechunk(target)
        pending = [idx for idx in np.ndindex(*grid.grid) if not sink.done(tuple(int(v) for v in idx))]
        token = layer_name("store-blocks", result.name, getattr(sink, "token", None) or id(sink))
        writes = da.map_blocks(
            _write_block, result, sink=sink, n_axes=n_axes, dtype=np.uint8,
            chunks=tuple((1,) * len(c) for c in result.chunks), name=token,
        )
        (writes,) = dask.optimize(writes)
        # One final task depends on the write tasks of the pending blocks only; computing it culls the rest.
        # (A graph layer, not a list of Delayed objects, whose merging grows quadratically with the blocks.)
        extra = (0,) * (result.ndim - n_axes)
        keys = [(writes.name, *(int(i) for i in idx), *extra) for idx in pending]
        name = f"finish-{token}"
        graph = HighLevelGraph.from_collections(name, {name: (_finish, sink, keys)}, dependencies=[writes])
        finish = Delayed(name, graph)
        return finish.compute() if compute else finish
