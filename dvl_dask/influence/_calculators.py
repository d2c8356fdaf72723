"""Influence calculators: one recipe over chunks, two engines (a plain loop and Dask).

The recipe, for test chunks ``i`` and training chunks ``j``:

1. factors ``Fᵢ = H⁻¹∇θℓ(test chunk i)`` -- a row map, **once per test chunk**;
2. either (``train_gradients="store"``) gradients ``Gⱼ = ∇θℓ(train chunk j)``
   -- a row map, once per training chunk -- and block ``(i, j) = Fᵢ Gⱼᵀ``;
   or (``"recompute"``) block ``(i, j) = model.influences_from_factors(Fᵢ, train chunk j)``,
   which recomputes the training gradients for every test chunk but holds
   none of them. Perturbation influences always take the second way.

:class:`SequentialInfluenceCalculator` runs it with a
:class:`~dvl_dask.chunks.SequentialMapper` over iterables of ``(x, y)`` chunks
and returns lazy chunk sequences; :class:`DaskInfluenceCalculator` runs it with
a :class:`~dvl_dask.chunks.DaskMapper` over dask arrays and returns dask arrays
(or labelled ``xr.DataArray`` objects). Both call the kernels of
:mod:`dvl_dask.influence._kernels`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from .. import config
from .._provenance import library_versions, qualified_name
from ..chunks import BlockSequence, DaskMapper, SequentialMapper, SharedObjects
from ..errors import (
    InvalidDataError,
    InvalidModelError,
    InvalidParameterError,
    NotFittedError,
    ThreadSafetyViolationError,
    TokenizationError,
    UnalignedChunksError,
)
from ..keys import BoundCall, bind_arguments, describe_parameters, fingerprint, layer_name
from ..results import influence_dataarray, self_influence_dataarray
from ..validation import is_dask_array, keyword_aliases
from ._base import InfluenceFunctionModel
from ._kernels import (
    factors_block,
    from_factors_block,
    gradients_block,
    product_block,
    self_influence_block,
    supports_replicas,
)
from ._mode import InfluenceMode
from ._sequences import LazyChunkSequence, NestedLazyChunkSequence, labels

__all__ = [
    "GRADIENT_MEMORY_BUDGET",
    "DaskInfluenceCalculator",
    "DisableClientSingleThreadCheck",
    "SequentialInfluenceCalculator",
]

#: dask.config option: bytes of training gradients the calculators may hold ("auto" mode).
GRADIENT_MEMORY_BUDGET = config.INFLUENCE_GRADIENT_MEMORY_BUDGET
TrainGradients = Literal["auto", "store", "recompute"]


class DisableClientSingleThreadCheck:
    """Pass as ``client`` to :class:`DaskInfluenceCalculator` to skip the thread-safety check.

    The calculator then builds graphs without a distributed client: the model
    enters each graph as one ``dask.delayed`` key and the graphs run on any
    scheduler. Use it with the synchronous, threads or processes scheduler.
    On a ``distributed`` cluster prefer passing the ``Client``: the model is
    then sent to each worker once, whereas here it travels with every graph
    (for ``DirectInfluence`` of a 5,569-parameter MLP, its 124 MB inverse
    Hessian per ``compute``). Torch models compute with one replica per
    thread (sharing the fitted tensors), so values stay correct on any
    number of threads; other models that are not thread-safe are used by
    one thread at a time within a process.

    Both the class and an instance are accepted.
    """


def _check_model(model: Any, owner: str) -> InfluenceFunctionModel:
    if not isinstance(model, InfluenceFunctionModel):
        raise InvalidModelError(
            f"The 'model' argument of {owner} must be a fitted InfluenceFunctionModel (e.g. "
            f"dvl_dask.influence.torch.DirectInfluence(...).fit(data)). Got {type(model).__name__}."
        )
    if not model.is_fitted:
        name = type(model).__name__
        raise NotFittedError(
            f"The {name} given to {owner} is not fitted yet. Call {name}.fit(training_data) before building "
            "the calculator."
        )
    return model


def _check_train_gradients(value: Any, model: InfluenceFunctionModel, owner: str) -> str:
    if value not in ("auto", "store", "recompute"):
        raise InvalidParameterError(
            f"The 'train_gradients' parameter of {owner} must be 'auto', 'store' or 'recompute'. Got {value!r} "
            "instead."
        )
    if value == "store" and not model.supports_gradients:
        raise InvalidParameterError(
            f"train_gradients='store' needs per-sample gradients, which {type(model).__name__} does not expose. "
            "To fix, pass train_gradients='recompute' (or 'auto')."
        )
    return str(value)


def _budget(value: Any, owner: str) -> int:
    from dask.utils import parse_bytes

    value = config.get(GRADIENT_MEMORY_BUDGET, override_with=value)
    try:
        budget = parse_bytes(value) if isinstance(value, str) else int(value)
    except (ValueError, TypeError):
        budget = -1
    if isinstance(value, bool) or budget < 0:
        raise InvalidParameterError(
            f"The 'memory_budget' parameter of {owner} (option {GRADIENT_MEMORY_BUDGET!r}) must be a number of "
            f"bytes >= 0 or a string such as '2GiB'. Got {value!r} instead."
        )
    return budget


def _model_token(model: Any, token: str | None, owner: str) -> str:
    """The model's identity in graph names and zarr headers: by value, stable across processes.

    Torch influence models hash their class, hyper-parameters and the contents
    of the module's parameters, buffers and fitted state (see
    :mod:`dvl_dask.keys`). A model that cannot be hashed deterministically
    raises unless the caller names it with ``token=``.
    """
    if token is not None:
        if not isinstance(token, str) or not token:
            raise InvalidParameterError(
                f"The 'token' parameter of {owner} must be a non-empty string or None. Got {token!r} instead."
            )
        return fingerprint("user-token", token)
    try:
        return fingerprint(model)
    except TokenizationError as exc:
        raise TokenizationError(
            f"{owner} cannot name the computations of {type(model).__name__} deterministically: {exc} "
            "Without a stable name, an interrupted influence_to_zarr/to_zarr could never resume. To fix, give "
            f"the model a __dask_tokenize__ method, or pass token='<a string naming this fitted model>' to {owner} "
            "(change it whenever the model or its fit changes)."
        ) from exc


def _numpy_dtype(model: Any, converter: Any) -> np.dtype:
    """Numpy dtype of factors and influences: the model's parameter dtype (float64 if unknown)."""
    name = str(getattr(model, "dtype", "float64")).removeprefix("torch.")
    try:
        return np.dtype(name)
    except TypeError:
        return np.dtype(np.float32)  # bfloat16 and friends: converters return float32


def _model_changed(owner: str, model: Any) -> InvalidModelError:
    name = type(model).__name__
    return InvalidModelError(
        f"The {name} given to {owner} changed after the calculator was built (it was refitted, or a "
        "hyper-parameter was assigned): its token no longer matches the one the calculator names its results "
        f"with, so its graphs and stores would mix two different models. To fix, build a new {owner} for the "
        "changed model (torch influence models snapshot their module at fit time: changing the nn.Module "
        "itself needs a new fit, then a new calculator)."
    )


def _verified(shared: Any, expected: str, owner: str) -> Any:
    """Task run before any block: the model a graph computes with still has the token the graph is named by."""
    model = shared.objects["model"]
    if _model_token(model, None, owner) != expected:
        raise _model_changed(owner, model)
    return shared


def _describe_data(value: Any) -> Any:
    """What a data argument was, for provenance: dask arrays by name, shape, dtype and chunks; else by class."""
    if is_dask_array(value):
        shape, dtype = list(value.shape), str(value.dtype)
        return {"name": value.name, "shape": shape, "dtype": dtype, "chunks": list(value.chunks[0])}
    described: dict[str, Any] = {"class": qualified_name(value)}
    shape = getattr(value, "shape", None)
    if shape is not None:
        return {**described, "shape": [int(n) for n in shape], "dtype": str(getattr(value, "dtype", ""))}
    if isinstance(value, (LazyChunkSequence, NestedLazyChunkSequence)):  # its token or chunks would read the data
        return described
    try:
        described["length"] = len(value)
    except TypeError:
        pass
    return described


class _Recipe:
    """What both calculators share: the model, its token and the gradients policy."""

    owner = "InfluenceCalculator"

    def __init__(
        self, model: Any, train_gradients: TrainGradients, memory_budget: Any, token: str | None = None
    ) -> None:
        self.model = _check_model(model, self.owner)
        self.train_gradients = _check_train_gradients(train_gradients, self.model, self.owner)
        self.memory_budget = _budget(memory_budget, self.owner)
        self._named_by_user = token is not None
        self._token = _model_token(self.model, token, self.owner)
        # Hyper-parameters in full, recorded with stored results; the module and the loss by class and name
        # (the model token covers their contents; they are not hashed twice).
        self._parameters = describe_parameters(
            {k: v for k, v in getattr(self.model, "__dict__", {}).items() if not k.startswith("_")}, tokens=False
        )

    @property
    def n_parameters(self) -> int:
        return int(self.model.n_parameters)

    def _check_unchanged(self) -> None:
        """Refuse to build or run a computation if the model no longer has the token taken at construction.

        The token names graphs and zarr stores; a model refitted (or given
        another hyper-parameter) after the calculator was built would compute
        other values under the old name. With ``token=`` the caller names the
        model and answers for it.
        """
        if not self._named_by_user and _model_token(self.model, None, self.owner) != self._token:
            raise _model_changed(self.owner, self.model)

    def _identity(self) -> dict[str, Any]:
        """The calculator's part of every call's identity: the model's token and how blocks are computed."""
        return {
            "calculator": type(self).__name__,
            "model_token": self._token,
            "train_gradients": self.train_gradients,
            "memory_budget": self.memory_budget,
        }

    def _call_token(self, method: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        """Token of a whole call: the method, every argument after defaults (mode normalised), the calculator."""
        arguments = bind_arguments(method, (self, *args), kwargs, exclude=("self",))
        if "mode" in arguments:
            arguments["mode"] = InfluenceMode.parse(arguments["mode"]).value
        arguments["calculator"] = self._identity()
        return BoundCall.of(method, arguments).token

    def _provenance(self, method: str, mode: InfluenceMode | None, data: Mapping[str, Any]) -> str:
        """What a result's identity was made of, as JSON text (stored in the ``provenance`` attr)."""
        fingerprint_of = getattr(self.model, "parameter_fingerprint", None)
        network = None
        if callable(fingerprint_of):
            try:
                network = fingerprint_of()
            except TokenizationError:
                network = None
        record = {
            "method": f"{type(self).__name__}.{method}",
            "mode": None if mode is None else mode.value,
            "model": {
                "class": qualified_name(self.model),
                "token": self._token,
                "named_by_user": self._named_by_user,
                "parameters": self._parameters,
                "parameter_fingerprint": network,
            },
            "calculator": describe_parameters(self._identity(), tokens=False),
            "data": {k: _describe_data(v) for k, v in data.items() if v is not None},
            "versions": library_versions(),
        }
        return json.dumps(record, sort_keys=True, default=str)

    def _attrs(
        self, mode: InfluenceMode, stored: bool | str, method: str = "", data: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        return {
            "mode": mode.value,
            "model": type(self.model).__name__,
            "model_token": self._token,
            "model_parameters": self._parameters,
            "train_gradients": stored if isinstance(stored, str) else ("stored" if stored else "recomputed"),
            "provenance": self._provenance(method, mode, data or {}),
        }


# -- sequential -------------------------------------------------------------------------------


class SequentialInfluenceCalculator(_Recipe):
    """Map an influence model over chunks of data in the calling process, lazily.

    Inputs are re-iterables of ``(x, y)`` chunks in the model's own type: a
    torch ``DataLoader``, a list of ``(x, y)`` tensor pairs. Results are lazy
    sequences: nothing is computed until they are iterated,
    ``.compute(aggregator)``-d or written ``.to_zarr(url, converter)`` block
    by block with bounded memory.

    Parameters
    ----------
    model : InfluenceFunctionModel
        A fitted model.
    train_gradients : {"auto", "store", "recompute"}
        ``"store"`` computes the gradients of each training chunk once and
        keeps them for every test chunk; ``"recompute"`` recomputes them for
        every test chunk and keeps none; ``"auto"`` (default) stores
        gradients while they fit in ``memory_budget`` and recomputes the rest.
    memory_budget : int or str, optional
        Bytes of training gradients that may be kept (default: option
        ``dvl_dask.influence.gradient-memory-budget``, 1 GiB).
    progress : bool
        Print a progress line over the blocks (default False).
    token : str, optional
        Names the fitted model in graph keys and zarr headers, for models
        dvl_dask cannot hash deterministically (it raises
        :class:`~dvl_dask.errors.TokenizationError` saying so). Torch
        influence models need none: they hash by value. With ``token=`` you
        answer for the model: the checks below are skipped.

    Notes
    -----
    Identity. The model's token is taken at construction and names every
    result. Torch influence models compute with a private copy of their
    ``nn.Module`` taken at ``fit``, so training or reloading the module
    afterwards changes neither their values nor their token. A model
    *refitted* (or given another hyper-parameter) after the calculator was
    built would compute other values under the old token: every method, and
    every computation of a result built before (a task checks it when the
    graph runs, a lazy sequence when it is iterated or written), raises
    :class:`~dvl_dask.errors.InvalidModelError` instead; build a new
    calculator. Results record what their identity was made of in the
    ``provenance`` attr (JSON text: method, mode, model class, token,
    hyper-parameters and parameter fingerprint, the data, library versions;
    read it with :func:`dvl_dask.results.provenance_of`), also in zarr stores.

    A lazy result's ``token`` (its zarr store identity) is derived from the
    whole call: the method, every argument after defaults -- the data by
    value (DataLoaders over tensor datasets, lists of tensors), the mode --
    the model's token and ``train_gradients``/``memory_budget``. It is
    computed when written, since hashing reads the data; data that cannot be
    hashed completely gets a token unique to that object, so its store is
    never resumed by another process. Another test set written to the same
    path is refused, never resumed into the first one's blocks.

    Factors are computed once per test chunk, when the first block of its
    row is needed. Stored training gradients belong to the returned lazy
    result: computing or writing it again reuses them. Training data is read
    once per test chunk (plus once to count samples if the iterable does not
    announce its batch sizes), so it must be re-iterable.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import torch.nn.functional as F
    >>> from dvl_dask.influence.torch import DirectInfluence, NestedTorchCatAggregator
    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.randn(30, 3), torch.randn(30, 1)
    >>> model = DirectInfluence(nn.Linear(3, 1), F.mse_loss, regularization=0.1).fit((x, y))
    >>> calc = SequentialInfluenceCalculator(model)
    >>> test = [(x[:4], y[:4]), (x[4:6], y[4:6])]
    >>> train = [(x[:10], y[:10]), (x[10:], y[10:])]
    >>> values = calc.influences(test, train).compute(aggregator=NestedTorchCatAggregator())
    >>> values.shape, bool(torch.allclose(values, model.influences(x[:6], y[:6], x, y), atol=1e-5))
    (torch.Size([6, 30]), True)
    """

    owner = "SequentialInfluenceCalculator"

    def __init__(
        self,
        model: InfluenceFunctionModel,
        *,
        train_gradients: TrainGradients = "auto",
        memory_budget: int | str | None = None,
        progress: bool = False,
        token: str | None = None,
    ) -> None:
        super().__init__(model, train_gradients, memory_budget, token)
        self.progress = bool(progress)
        self._mapper = SequentialMapper(progress=self.progress)
        self._shared = SharedObjects({"model": self.model, "converter": None}, token=self._token)

    def __repr__(self) -> str:
        return f"SequentialInfluenceCalculator({self.model!r}, train_gradients={self.train_gradients!r})"

    def _source(self, data: Any, arg: str) -> BlockSequence:
        return BlockSequence.from_iterable(data, name=arg)

    def _lazy_token(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], str]:
        """The whole call's token, computed when asked (to_zarr): hashing the data reads it."""
        return lambda: self._call_token(method, args, kwargs)

    def influence_factors(self, data_iterable: Iterable[Any]) -> LazyChunkSequence:
        """Factors ``H⁻¹∇θℓ`` of every chunk of ``data_iterable``, one block per chunk, lazily."""
        self._check_unchanged()
        source = self._source(data_iterable, "data_iterable")
        blocks = self._mapper.map_rows(factors_block, source, shared=self._shared, name="influence-factors")
        attrs = {
            "model": type(self.model).__name__, "model_token": self._token, "kind": "factors",
            "provenance": self._provenance("influence_factors", None, {"data_iterable": data_iterable}),
        }
        token = self._lazy_token(SequentialInfluenceCalculator.influence_factors, data_iterable)
        return LazyChunkSequence(blocks, token=token, attrs=attrs, check=self._check_unchanged)

    def influences(
        self,
        test_data_iterable: Iterable[Any],
        train_data_iterable: Iterable[Any] | None = None,
        mode: InfluenceMode | str = InfluenceMode.Up,
    ) -> NestedLazyChunkSequence:
        """Influences of every training chunk on every test chunk, as a lazy nested sequence.

        ``train_data_iterable=None`` gives test-vs-test influences. Factors are
        computed once per test chunk.

        Raises
        ------
        UnknownModeError
            If ``mode`` is not ``"up"`` or ``"perturbation"``.
        InvalidDataError
            If an iterable is a one-shot iterator (it is read more than once).
        InvalidModelError
            If the model changed since the calculator was built.
        """
        mode = InfluenceMode.parse(mode)
        self._check_unchanged()
        test = self._source(test_data_iterable, "test_data_iterable")
        train = test if train_data_iterable is None else self._source(train_data_iterable, "train_data_iterable")
        factors = self.influence_factors(test).blocks
        train_data = test_data_iterable if train_data_iterable is None else train_data_iterable
        token = self._lazy_token(SequentialInfluenceCalculator.influences, test_data_iterable, train_data, mode)
        data = {"test_data_iterable": test_data_iterable, "train_data_iterable": train_data_iterable}
        return self._from_factors(factors, train, mode, token, "influences", data)

    @keyword_aliases(z_test_factors="factors")
    def influences_from_factors(
        self,
        factors: Iterable[Any],
        train_data_iterable: Iterable[Any],
        mode: InfluenceMode | str = InfluenceMode.Up,
    ) -> NestedLazyChunkSequence:
        """Contract precomputed factor chunks (e.g. from :meth:`influence_factors`) with every training chunk."""
        mode = InfluenceMode.parse(mode)
        self._check_unchanged()
        if isinstance(factors, LazyChunkSequence):
            rows = factors.blocks
        elif hasattr(factors, "shape"):
            rows = BlockSequence.from_iterable([factors], name="factors")
        else:
            rows = BlockSequence.from_iterable(factors, name="factors")
        train = self._source(train_data_iterable, "train_data_iterable")
        token = self._lazy_token(
            SequentialInfluenceCalculator.influences_from_factors, factors, train_data_iterable, mode
        )
        data = {"factors": factors, "train_data_iterable": train_data_iterable}
        return self._from_factors(rows, train, mode, token, "influences_from_factors", data)

    def self_influences(
        self, data_iterable: Iterable[Any], mode: InfluenceMode | str = InfluenceMode.Up
    ) -> LazyChunkSequence:
        """Self-influence ``I(zᵢ, zᵢ)`` of every sample, one block per chunk, lazily.

        The diagonal of ``influences(data_iterable, data_iterable, mode)``
        without the ``n × n`` matrix: one factor and one gradient per sample,
        memory of one chunk (see :meth:`InfluenceFunctionModel.self_influences`,
        also for the meaning in perturbation mode). Blocks have shape
        ``(chunk,)`` (up) or ``(chunk, *x.shape[1:])`` (perturbation);
        ``.compute(TorchCatAggregator())`` joins them.

        Raises
        ------
        UnknownModeError
            If ``mode`` is not ``"up"`` or ``"perturbation"``.
        InvalidModelError
            If the model changed since the calculator was built.
        """
        mode = InfluenceMode.parse(mode)
        self._check_unchanged()
        source = self._source(data_iterable, "data_iterable")
        blocks = self._mapper.map_rows(
            self_influence_block, source, shared=self._shared, static={"mode": mode.value}, name="self-influences"
        )
        data = {"data_iterable": data_iterable}
        attrs = {**self._attrs(mode, "recomputed", "self_influences", data), "kind": "self_influences"}
        token = self._lazy_token(SequentialInfluenceCalculator.self_influences, data_iterable, mode)
        return LazyChunkSequence(blocks, token=token, attrs=attrs, check=self._check_unchanged)

    def _from_factors(
        self,
        rows: BlockSequence,
        train: BlockSequence,
        mode: InfluenceMode,
        token: Callable[[], str],
        method: str,
        data: Mapping[str, Any],
    ) -> NestedLazyChunkSequence:
        store = mode is InfluenceMode.Up and self.train_gradients != "recompute" and self.model.supports_gradients
        label = f"influence-{mode.value}"
        if store:
            budget = None if self.train_gradients == "store" else self.memory_budget
            grads = self._mapper.map_rows(gradients_block, train, shared=self._shared, name="influence-gradients")
            nested = self._mapper.map_pairwise(product_block, rows, grads.cached(budget), name=label)
            kind = "stored" if budget is None else f"stored up to {budget} bytes"
        else:
            nested = self._mapper.map_pairwise(
                from_factors_block, rows, train, shared=self._shared, static={"mode": mode.value}, name=label
            )
            kind = "recomputed"
        attrs = self._attrs(mode, kind, method, data)
        return NestedLazyChunkSequence(nested, token=token, attrs=attrs, check=self._check_unchanged)


# -- dask ---------------------------------------------------------------------------------------


def _check_client(client: Any, model: InfluenceFunctionModel, owner: str) -> Any:
    if client is DisableClientSingleThreadCheck or isinstance(client, DisableClientSingleThreadCheck):
        return None
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - distributed is a dependency
        Client = ()  # type: ignore[assignment]
    if not isinstance(client, Client):
        raise InvalidParameterError(
            f"The 'client' parameter of {owner} must be a distributed.Client or DisableClientSingleThreadCheck. "
            f"Got {type(client).__name__}."
        )
    if not (model.is_thread_safe or supports_replicas(model)):
        threaded = {w: n for w, n in client.nthreads().items() if n > 1}
        if threaded:
            listing = ", ".join(f"{w}: {n} threads" for w, n in sorted(threaded.items()))
            raise ThreadSafetyViolationError(
                f"{type(model).__name__} is not thread-safe, but {len(threaded)} worker(s) run several threads "
                f"({listing}). To fix, start single-threaded workers (LocalCluster(threads_per_worker=1, ...) "
                "or `dask worker --nthreads 1`) and scale with more workers; or pass "
                "client=DisableClientSingleThreadCheck to skip this check (the model then runs one task at a "
                "time per worker process)."
            )
    return client


class DaskInfluenceCalculator(_Recipe):
    """Map an influence model over chunks of dask arrays: results are lazy dask arrays.

    Inputs are dask arrays chunked along the sample axis (axis 0); ``x`` and
    ``y`` must share those chunks. The result of :meth:`influences` has
    chunks (test chunks, training chunks): compute it, reduce it, or stream it
    to zarr block by block with :func:`dvl_dask.influence.influence_to_zarr`
    (or ``.to_zarr`` of the ``as_xarray=True`` result).

    Parameters
    ----------
    model : InfluenceFunctionModel
        A fitted model. It enters every graph as **one** key: scattered to
        all workers once (``client.scatter(..., broadcast=True)``) when a
        ``Client`` is given, else a single ``dask.delayed`` key.
    converter : object
        Converts numpy blocks to the model's tensors and back (``to_tensor``,
        ``to_numpy``), e.g. ``TorchNumpyConverter()``.
    client : distributed.Client or DisableClientSingleThreadCheck
        The cluster the graphs will run on (they refer to the model scattered
        to it, so compute them with this client). Workers may run several
        threads when the model is thread-safe or makes per-thread replicas
        (``thread_replica()``: every torch model; each thread then computes
        with its own copy of the module, sharing the fitted tensors); any
        other model needs single-threaded workers.
    train_gradients : {"auto", "store", "recompute"}
        ``"store"``: training gradients are a dask array computed once per
        training chunk, and blocks are ``factors @ gradientsᵀ``; they stay in
        the cluster's memory while the matrix is computed (``n_train ×
        n_parameters`` values). ``"recompute"``: every block recomputes its
        training gradients. ``"auto"`` (default): store if they fit in
        ``memory_budget``.
    memory_budget : int or str, optional
        Bytes of stored gradients allowed in ``"auto"`` mode (default: option
        ``dvl_dask.influence.gradient-memory-budget``, 1 GiB).
    token : str, optional
        Names the fitted model in graph keys and zarr headers, for models
        dvl_dask cannot hash deterministically (it raises
        :class:`~dvl_dask.errors.TokenizationError` saying so). Torch
        influence models need none: they hash by value. With ``token=`` you
        answer for the model: the checks below are skipped.

    Raises
    ------
    ThreadSafetyViolationError
        If the model is neither thread-safe nor makes per-thread replicas and a worker of ``client``
        has more than one thread.

    Notes
    -----
    Identity. The model's token is taken at construction and names every
    result. Torch influence models compute with a private copy of their
    ``nn.Module`` taken at ``fit``, so training or reloading the module
    afterwards changes neither their values nor their token. A model
    *refitted* (or given another hyper-parameter) after the calculator was
    built would compute other values under the old token: every method, and
    every computation of a result built before (a task checks it when the
    graph runs, a lazy sequence when it is iterated or written), raises
    :class:`~dvl_dask.errors.InvalidModelError` instead; build a new
    calculator. Results record what their identity was made of in the
    ``provenance`` attr (JSON text: method, mode, model class, token,
    hyper-parameters and parameter fingerprint, the data, library versions;
    read it with :func:`dvl_dask.results.provenance_of`), also in zarr stores.

    Examples
    --------
    >>> import numpy as np, dask.array as da, torch
    >>> from torch import nn
    >>> import torch.nn.functional as F
    >>> from dvl_dask.influence.torch import DirectInfluence, TorchNumpyConverter
    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.randn(30, 3), torch.randn(30, 1)
    >>> model = DirectInfluence(nn.Linear(3, 1), F.mse_loss, regularization=0.1).fit((x, y))
    >>> calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), DisableClientSingleThreadCheck)
    >>> dx, dy = da.from_array(x.numpy(), chunks=(10, -1)), da.from_array(y.numpy(), chunks=(10, -1))
    >>> values = calc.influences(dx[:6], dy[:6], dx, dy)
    >>> values.chunks
    ((6,), (10, 10, 10))
    >>> bool(np.allclose(values.compute(scheduler="sync"), model.influences(x[:6], y[:6], x, y), atol=1e-5))
    True
    """

    owner = "DaskInfluenceCalculator"

    def __init__(
        self,
        model: InfluenceFunctionModel,
        converter: Any,
        client: Any,
        *,
        train_gradients: TrainGradients = "auto",
        memory_budget: int | str | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__(model, train_gradients, memory_budget, token)
        for method in ("to_tensor", "to_numpy"):
            if not callable(getattr(converter, method, None)):
                raise InvalidParameterError(
                    f"The 'converter' parameter of {self.owner} must have to_tensor() and to_numpy() methods, e.g. "
                    f"dvl_dask.influence.torch.TorchNumpyConverter(). Got {type(converter).__name__}."
                )
        self.converter = converter
        self.client = _check_client(client, self.model, self.owner)
        self.dtype = _numpy_dtype(self.model, converter)
        self._mapper = DaskMapper()
        shared = SharedObjects({"model": self.model, "converter": converter}, token=fingerprint(self._token, converter))
        # Graph layers are named by everything their blocks read: the model AND the converter (its dtype and
        # device change the numbers), i.e. the shared objects' token, plus the inputs' names.
        self._graph_token = shared.token
        if self.client is not None:
            # One copy per worker, sent once; every graph refers to this future's key. The key is unique to
            # this calculator (hash=False): with a content-derived key, a calculator built for the same model
            # right after another one was released can have its copy forgotten by the scheduler under it
            # (dask/distributed#8576), and its graphs then fail with "lost dependencies" or hang.
            self._shared: Any = self.client.scatter(shared, broadcast=True, hash=False)
        else:
            self._shared = self._mapper.shared_handle(shared)

    def __repr__(self) -> str:
        where = "no client" if self.client is None else repr(self.client)
        return f"DaskInfluenceCalculator({self.model!r}, train_gradients={self.train_gradients!r}, {where})"

    # -- validation ------------------------------------------------------------------------------

    def _check_pair(self, x: Any, y: Any, xn: str, yn: str, method: str) -> tuple[Any, Any]:
        owner = f"{self.owner}.{method}"
        for name, a in ((xn, x), (yn, y)):
            if not is_dask_array(a):
                raise InvalidDataError(
                    f"The {name!r} argument of {owner} must be a dask array. Got {type(a).__name__}. To fix, wrap "
                    f"it: dask.array.from_array({name}, chunks=(chunk_size, *(-1 for the other axes)))."
                )
            if a.ndim == 0 or a.shape[0] == 0:
                raise InvalidDataError(
                    f"The {name!r} argument of {owner} needs a sample axis with at least one sample. "
                    f"Got shape {a.shape}."
                )
            if any(np.isnan(c) for c in a.chunks[0]):
                raise InvalidDataError(
                    f"The {name!r} argument of {owner} has unknown chunk sizes. To fix, call "
                    f"{name}.compute_chunk_sizes() first."
                )
        if x.shape[0] != y.shape[0]:
            raise InvalidDataError(
                f"The arguments {xn!r} and {yn!r} of {owner} must have the same number of samples. Got "
                f"{x.shape[0]} and {y.shape[0]}."
            )
        if x.chunks[0] != y.chunks[0]:
            raise UnalignedChunksError(
                f"The arguments {xn!r} and {yn!r} of {owner} must have the same chunks along the sample axis "
                f"(axis 0). Got {x.chunks[0]} and {y.chunks[0]}. To fix, call {yn} = {yn}.rechunk({{0: "
                f"{xn}.chunks[0]}})."
            )
        shapes = self.model.input_shapes
        if shapes is not None:
            for name, a, expected in ((xn, x, shapes[0]), (yn, y, shapes[1])):
                if tuple(a.shape[1:]) != tuple(expected):
                    raise InvalidDataError(
                        f"The {name!r} argument of {owner} has per-sample shape {tuple(a.shape[1:])} (full shape "
                        f"{a.shape}), but the model was fitted on per-sample shape {tuple(expected)}."
                    )
        if getattr(self.converter, "dtype", None) is None:
            for name, a in ((xn, x), (yn, y)):
                if np.issubdtype(a.dtype, np.floating) and a.dtype != self.dtype:
                    raise InvalidDataError(
                        f"The {name!r} argument of {owner} has dtype {a.dtype}, but the model computes in "
                        f"{self.dtype}. To fix, convert it: {name} = {name}.astype(np.{self.dtype})."
                    )
        return x, y

    def _check_factors(self, factors: Any, method: str) -> Any:
        owner = f"{self.owner}.{method}"
        if not is_dask_array(factors):
            raise InvalidDataError(
                f"The 'factors' argument of {owner} must be a dask array from influence_factors(). "
                f"Got {type(factors).__name__}."
            )
        if factors.ndim != 2 or factors.shape[1] != self.n_parameters:
            raise InvalidDataError(
                f"The 'factors' argument of {owner} must have shape (n_samples, n_parameters={self.n_parameters}). "
                f"Got {factors.shape}. Compute it with influence_factors() of the same model."
            )
        if len(factors.chunks[1]) > 1:
            factors = factors.rechunk({1: -1})
        return factors

    # -- graphs ----------------------------------------------------------------------------------

    def _use_stored_gradients(self, n_train: int, mode: InfluenceMode) -> bool:
        if mode is InfluenceMode.Perturbation or self.train_gradients == "recompute":
            return False
        if self.train_gradients == "store":
            return True
        need = n_train * self.n_parameters * self.dtype.itemsize
        return self.model.supports_gradients and need <= self.memory_budget

    def _handle(self) -> Any:
        """The shared model in a graph, behind a task that checks, when the graph runs, it is still the same model.

        The graph's keys are named from the model's token; a model refitted
        between building a graph and computing it would otherwise compute
        other values under those names. (Skipped when ``token=`` names the model.)
        """
        self._check_unchanged()
        if self._named_by_user:
            return self._shared
        import dask

        name = layer_name("verified-model", self._graph_token)
        return dask.delayed(_verified, pure=True)(self._shared, self._token, self.owner, dask_key_name=name)

    def _factors(self, x: Any, y: Any) -> Any:
        return self._mapper.map_rows(
            factors_block, [x, y], dtype=self.dtype, trailing_shape=(self.n_parameters,), shared=self._handle(),
            name=layer_name("influence-factors", self._graph_token, x.name, y.name),
        )

    def _gradients(self, x: Any, y: Any) -> Any:
        return self._mapper.map_rows(
            gradients_block, [x, y], dtype=self.dtype, trailing_shape=(self.n_parameters,), shared=self._handle(),
            name=layer_name("influence-gradients", self._graph_token, x.name, y.name),
        )

    def _pairwise(self, factors: Any, x: Any, y: Any, mode: InfluenceMode) -> tuple[Any, bool]:
        stored = self._use_stored_gradients(x.shape[0], mode)
        verb = f"influence-{mode.value}"
        if stored:
            grads = self._gradients(x, y)
            out = self._mapper.map_pairwise(
                product_block, [factors], [grads], dtype=self.dtype, shared=self._handle(),
                name=layer_name(verb, self._graph_token, factors.name, grads.name),
            )
        else:
            trailing = tuple(x.shape[1:]) if mode is InfluenceMode.Perturbation else ()
            out = self._mapper.map_pairwise(
                from_factors_block, [factors], [x, y], dtype=self.dtype, trailing_shape=trailing,
                shared=self._handle(), static={"mode": mode.value},
                name=layer_name(verb, self._graph_token, factors.name, x.name, y.name),
            )
        return out, stored

    def _labelled(
        self,
        values: Any,
        mode: InfluenceMode,
        stored: bool,
        test_names: Any,
        train_names: Any,
        method: str,
        data: Mapping[str, Any],
    ) -> Any:
        owner = f"{self.owner}.{method}"
        return influence_dataarray(
            values,
            test_names=labels(test_names, values.shape[0], "test_names", owner),
            train_names=labels(train_names, values.shape[1], "train_names", owner),
            attrs=self._attrs(mode, stored, method, data),
        )

    # -- public API ---------------------------------------------------------------------------------

    def influence_factors(self, x: Any, y: Any) -> Any:
        """Factors ``H⁻¹∇θℓ`` of every sample: a dask array ``(n, n_parameters)`` chunked like ``x``."""
        x, y = self._check_pair(x, y, "x", "y", "influence_factors")
        return self._factors(x, y)

    def influences(
        self,
        x_test: Any,
        y_test: Any,
        x: Any = None,
        y: Any = None,
        mode: InfluenceMode | str = InfluenceMode.Up,
        *,
        as_xarray: bool = False,
        test_names: Sequence[Any] | np.ndarray | None = None,
        train_names: Sequence[Any] | np.ndarray | None = None,
    ) -> Any:
        """Influence of every training point on every test point, lazily.

        Parameters
        ----------
        x_test, y_test : dask arrays
            Test data, same chunks along axis 0.
        x, y : dask arrays, optional
            Training data; both None gives test-vs-test influences.
        mode : InfluenceMode or {"up", "perturbation"}
        as_xarray : bool
            Return a labelled ``xr.DataArray`` (dims ``test_sample``,
            ``train_sample`` and, in perturbation mode, feature dims) instead
            of a dask array.
        test_names, train_names : sequence, optional
            Labels for the ``as_xarray`` result (default: positions).

        Returns
        -------
        dask.array.Array or xarray.DataArray
            Shape ``(n_test, n_train)`` (up) or ``(n_test, n_train, *x.shape[1:])``
            (perturbation), chunked by test and training chunks.

        Raises
        ------
        UnknownModeError, InvalidDataError, UnalignedChunksError
            On a bad mode, inputs of the wrong type or shape, or ``x``/``y``
            chunked differently.
        """
        mode = InfluenceMode.parse(mode)
        x_test, y_test = self._check_pair(x_test, y_test, "x_test", "y_test", "influences")
        if (x is None) != (y is None):
            given, missing = ("x", "y") if y is None else ("y", "x")
            raise InvalidParameterError(
                f"{self.owner}.influences got {given} but not {missing}. Pass both training features and targets, "
                "or neither for test-vs-test influences."
            )
        if x is None:
            x, y, train_names = x_test, y_test, test_names if train_names is None else train_names
        else:
            x, y = self._check_pair(x, y, "x", "y", "influences")
        values, stored = self._pairwise(self._factors(x_test, y_test), x, y, mode)
        if as_xarray:
            data = {"x_test": x_test, "y_test": y_test, "x": x, "y": y}
            return self._labelled(values, mode, stored, test_names, train_names, "influences", data)
        return values

    def self_influences(
        self,
        x: Any,
        y: Any,
        mode: InfluenceMode | str = InfluenceMode.Up,
        *,
        as_xarray: bool = False,
        names: Sequence[Any] | np.ndarray | None = None,
    ) -> Any:
        """Self-influence ``I(zᵢ, zᵢ)`` of every sample, lazily: one task per chunk of ``x``.

        The diagonal of ``influences(x, y, x, y, mode)`` without the ``n × n``
        matrix: each task computes one factor and one gradient per sample of
        its chunk (see :meth:`InfluenceFunctionModel.self_influences`, also for
        the meaning in perturbation mode). Nothing runs before ``.compute()``.

        Parameters
        ----------
        x, y : dask arrays
            Samples, same chunks along axis 0.
        mode : InfluenceMode or {"up", "perturbation"}
        as_xarray : bool
            Return an ``xr.DataArray`` named ``"self_influence"`` with dim
            ``train_sample`` (and feature dims in perturbation mode).
        names : sequence, optional
            Labels of the samples for the ``as_xarray`` result (default: positions).

        Returns
        -------
        dask.array.Array or xarray.DataArray
            Shape ``(n,)`` (up) or ``(n, *x.shape[1:])`` (perturbation), chunked like ``x``.

        Raises
        ------
        UnknownModeError, InvalidDataError, UnalignedChunksError
            On a bad mode, inputs of the wrong type or shape, or ``x``/``y`` chunked differently.
        """
        mode = InfluenceMode.parse(mode)
        x, y = self._check_pair(x, y, "x", "y", "self_influences")
        trailing = tuple(x.shape[1:]) if mode is InfluenceMode.Perturbation else ()
        values = self._mapper.map_rows(
            self_influence_block,
            [x, y],
            dtype=self.dtype,
            trailing_shape=trailing,
            shared=self._handle(),
            static={"mode": mode.value},
            name=layer_name("self-influence", self._graph_token, mode.value, x.name, y.name),
        )
        if not as_xarray:
            return values
        owner = f"{self.owner}.self_influences"
        attrs = {**self._attrs(mode, "recomputed", "self_influences", {"x": x, "y": y}), "kind": "self_influences"}
        return self_influence_dataarray(values, names=labels(names, values.shape[0], "names", owner), attrs=attrs)

    @keyword_aliases(z_test_factors="factors")
    def influences_from_factors(
        self,
        factors: Any,
        x: Any,
        y: Any,
        mode: InfluenceMode | str = InfluenceMode.Up,
        *,
        as_xarray: bool = False,
        test_names: Sequence[Any] | np.ndarray | None = None,
        train_names: Sequence[Any] | np.ndarray | None = None,
    ) -> Any:
        """Contract precomputed factors (from :meth:`influence_factors`) with every training chunk.

        Same result as :meth:`influences` for the test points the factors came from.
        """
        mode = InfluenceMode.parse(mode)
        factors = self._check_factors(factors, "influences_from_factors")
        x, y = self._check_pair(x, y, "x", "y", "influences_from_factors")
        values, stored = self._pairwise(factors, x, y, mode)
        if as_xarray:
            data = {"factors": factors, "x": x, "y": y}
            return self._labelled(values, mode, stored, test_names, train_names, "influences_from_factors", data)
        return values
