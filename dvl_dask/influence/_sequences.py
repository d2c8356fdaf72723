"""Lazy results of the sequential calculator: ``.compute(aggregator)`` and ``.to_zarr(url, converter)``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..chunks import (
    BlockPlan,
    BlockSequence,
    ListAggregator,
    NestedBlockSequence,
    NestedListAggregator,
    NestedSequenceAggregator,
    SequenceAggregator,
    SequentialMapper,
)
from ..errors import InvalidParameterError
from ..keys import fingerprint
from ..results import FACTOR_DIM, TEST_DIM, TRAIN_DIM, open_block_sink, open_influence
from ..validation import check_callable, check_mapping, check_name

__all__ = ["LazyChunkSequence", "NestedLazyChunkSequence", "labels", "model_identity"]

_IDENTITY_ATTRS = ("model", "model_token", "model_parameters", "mode")


def model_identity(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What a stored influence result records about the model: class, token and hyper-parameters in full."""
    return {k: attrs[k] for k in _IDENTITY_ATTRS if k in attrs}


def labels(names: Sequence[Any] | np.ndarray | None, n: int, arg: str, owner: str) -> np.ndarray:
    """``names`` as an array of length ``n`` (default ``0..n-1``), or a clear error."""
    if names is None:
        return np.arange(n)
    arr = np.asarray(names)
    if arr.ndim != 1 or len(arr) != n:
        raise InvalidParameterError(
            f"The {arg!r} argument of {owner} must hold one label per sample ({n}). Got shape {arr.shape}."
        )
    return arr


def _converter_fn(converter: Any) -> Any:
    if converter is None:
        return np.asarray
    if not callable(getattr(converter, "to_numpy", None)):
        raise InvalidParameterError(
            "The 'converter' argument of to_zarr must have a to_numpy(tensor) method, e.g. "
            f"dvl_dask.influence.torch.TorchNumpyConverter(). Got {type(converter).__name__}."
        )
    return converter.to_numpy


class _Lazy:
    """What both lazy results share: their identity (token), attributes and the model check."""

    def __init__(
        self,
        *,
        token: str | Callable[[], str],
        attrs: Mapping[str, Any],
        check: Callable[[], None] | None = None,
    ) -> None:
        owner = type(self).__name__
        if not callable(token):
            check_name(token, "token", owner)
        if check is not None:
            check_callable(check, "check", owner, what="checking the model before a computation")
        self._token = token
        self._check = check
        self.attrs = check_mapping(attrs, "attrs", owner)

    @property
    def token(self) -> str:
        """Identity of the computation: the calculator's method, every argument (data included) and the model.

        Computed when asked (it hashes the data, reading it): zarr stores are
        resumed only by a write with the same token.
        """
        return self._token() if callable(self._token) else self._token

    def __dask_tokenize__(self) -> str:
        return self.token

    def _before_compute(self) -> None:
        if self._check is not None:
            self._check()

    def _stored_attrs(self, token: str) -> dict[str, Any]:
        """Attributes written with the result: the provenance records the token of the call too."""
        import json

        attrs = dict(self.attrs)
        text = attrs.get("provenance")
        if isinstance(text, str):
            record = json.loads(text)
            record["token"] = token
            attrs["provenance"] = json.dumps(record, sort_keys=True)
        return attrs


class LazyChunkSequence(_Lazy):
    """Influence factors of every chunk of samples, computed lazily, one chunk at a time.

    Iterating yields one block per chunk (in the model's type, e.g. tensors).
    Nothing is computed until then.
    """

    def __init__(
        self,
        blocks: BlockSequence,
        *,
        token: str | Callable[[], str],
        attrs: Mapping[str, Any],
        check: Callable[[], None] | None = None,
    ) -> None:
        if not isinstance(blocks, BlockSequence):
            raise InvalidParameterError(
                f"The 'blocks' argument of LazyChunkSequence must be a dvl_dask.chunks.BlockSequence. Got "
                f"{type(blocks).__name__}."
            )
        super().__init__(token=token, attrs=attrs, check=check)
        self._blocks = blocks

    def __iter__(self) -> Iterator[Any]:
        self._before_compute()
        return iter(self._blocks)

    @property
    def chunks(self) -> tuple[int, ...]:
        """Samples in every chunk."""
        return self._blocks.chunks

    @property
    def blocks(self) -> BlockSequence:
        """The underlying :class:`~dvl_dask.chunks.BlockSequence` (a valid source for further maps)."""
        return self._blocks

    def compute(self, aggregator: SequenceAggregator | None = None) -> Any:
        """Compute every block and reduce them with ``aggregator`` (default: a list of blocks).

        ``TorchCatAggregator()`` (in :mod:`dvl_dask.influence.torch`) gives one tensor.
        """
        return (aggregator or ListAggregator())(iter(self))

    def to_zarr(
        self,
        url: str | os.PathLike[str],
        converter: Any = None,
        *,
        storage_options: Mapping[str, Any] | None = None,
        names: Sequence[Any] | np.ndarray | None = None,
        overwrite: bool = False,
        resume: bool = True,
        repair: bool = False,
        return_stored: bool = False,
    ) -> Any:
        """Write the factors chunk by chunk to zarr, dims ``("test_sample", "parameter")``.

        See :meth:`NestedLazyChunkSequence.to_zarr` for the arguments.
        """
        if self.attrs.get("kind") == "self_influences":
            raise InvalidParameterError(
                "LazyChunkSequence.to_zarr stores influence factors; self-influences are one value per sample. "
                "To store them, compute them (.compute(TorchCatAggregator())) and save the array, or use "
                "DaskInfluenceCalculator.self_influences(x, y, as_xarray=True).to_zarr(url)."
            )
        self._before_compute()
        plan = BlockPlan(self.chunks)
        coords = {TEST_DIM: labels(names, plan.n_rows, "names", "LazyChunkSequence.to_zarr")}
        token = self.token
        sink = open_block_sink(
            url, plan=plan, name="influence_factors", dims=(TEST_DIM, FACTOR_DIM), coords=coords,
            token=fingerprint(token, plan.chunks, coords[TEST_DIM]), attrs=self._stored_attrs(token),
            storage_options=storage_options, overwrite=overwrite, resume=resume, identity=model_identity(self.attrs),
            repair=repair,
        )
        out = SequentialMapper().store(self._blocks, sink, convert=_converter_fn(converter))
        return open_influence(out, storage_options=storage_options) if return_stored else out


class NestedLazyChunkSequence(_Lazy):
    """Influences of every (test chunk, training chunk) pair, computed lazily, one block at a time.

    Iterating yields, for each test chunk, a generator of its blocks (one per
    training chunk). The factors of a test chunk are computed once, when its
    first block is needed, and reused for all its blocks.
    """

    def __init__(
        self,
        nested: NestedBlockSequence,
        *,
        token: str | Callable[[], str],
        attrs: Mapping[str, Any],
        check: Callable[[], None] | None = None,
    ) -> None:
        if not isinstance(nested, NestedBlockSequence):
            raise InvalidParameterError(
                f"The 'nested' argument of NestedLazyChunkSequence must be a dvl_dask.chunks.NestedBlockSequence. "
                f"Got {type(nested).__name__}."
            )
        super().__init__(token=token, attrs=attrs, check=check)
        self._nested = nested

    def __iter__(self) -> Iterator[Iterator[Any]]:
        self._before_compute()
        return iter(self._nested)

    @property
    def plan(self) -> BlockPlan:
        """Chunk sizes of test and training data (may read the data once if a loader hides them)."""
        return self._nested.plan

    @property
    def blocks(self) -> NestedBlockSequence:
        """The underlying :class:`~dvl_dask.chunks.NestedBlockSequence`."""
        return self._nested

    def compute(self, aggregator: NestedSequenceAggregator | None = None) -> Any:
        """Compute every block and reduce them with ``aggregator`` (default: a list of lists of blocks).

        ``NestedTorchCatAggregator()`` gives one tensor; ``NestedMinMaxAggregator()``
        the most and least influential training point of every test point,
        holding one block at a time.
        """
        return (aggregator or NestedListAggregator())(iter(self))

    def to_zarr(
        self,
        url: str | os.PathLike[str],
        converter: Any = None,
        *,
        storage_options: Mapping[str, Any] | None = None,
        test_names: Sequence[Any] | np.ndarray | None = None,
        train_names: Sequence[Any] | np.ndarray | None = None,
        overwrite: bool = False,
        resume: bool = True,
        repair: bool = False,
        return_stored: bool = False,
    ) -> Any:
        """Compute the blocks one by one and write each into its region of a zarr array.

        Memory holds one block and one test chunk's factors (plus stored
        training gradients, if any). The store is readable with
        :func:`dvl_dask.open_influence` or ``xr.open_zarr(url, consolidated=False)``.

        Parameters
        ----------
        url : str or path
            Local path or fsspec URL (``s3://bucket/influences.zarr``).
        converter : object with ``to_numpy``, optional
            Turns blocks into numpy arrays, e.g. ``TorchNumpyConverter()``;
            default ``np.asarray``.
        storage_options : mapping, optional
            fsspec options for remote URLs.
        test_names, train_names : sequence, optional
            Labels of the test and training points (default: positions).
        overwrite : bool
            Replace an existing result (or an interrupted write of another computation).
        resume : bool
            If an earlier write of the same computation was interrupted, keep
            its finished blocks and compute only the others (default).
        repair : bool
            Verify every chunk stored by the same computation (complete or
            interrupted) and recompute only the blocks whose chunk is
            missing or fails its checksum; the store is then complete again.
        return_stored : bool
            Return the stored array (lazy ``xr.DataArray``) instead of the URL.

        Raises
        ------
        ResultExistsError
            If a result exists at ``url`` and ``overwrite`` is False.
        """
        self._before_compute()
        plan = self.plan
        owner = "NestedLazyChunkSequence.to_zarr"
        coords = {
            TEST_DIM: labels(test_names, plan.n_rows, "test_names", owner),
            TRAIN_DIM: labels(train_names, plan.n_cols, "train_names", owner),
        }
        token = self.token
        sink = open_block_sink(
            url, plan=plan, name="influence", dims=(TEST_DIM, TRAIN_DIM), coords=coords,
            token=fingerprint(token, plan.chunks, coords[TEST_DIM], coords[TRAIN_DIM]),
            attrs=self._stored_attrs(token),
            storage_options=storage_options, overwrite=overwrite, resume=resume, identity=model_identity(self.attrs),
            repair=repair,
        )
        mapper = SequentialMapper(progress=self._nested.progress)
        out = mapper.store(self._nested, sink, convert=_converter_fn(converter))
        return open_influence(out, storage_options=storage_options) if return_stored else out
