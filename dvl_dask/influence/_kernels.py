"""Block kernels of the influence calculators: module-level, pure, shared by both engines.

Every kernel takes the blocks of one chunk (or one pair of chunks) and the
keyword arguments ``model`` (a fitted :class:`InfluenceFunctionModel`) and
``converter``. With a converter (the Dask engine) inputs are numpy blocks,
converted with ``converter.to_tensor`` and results returned as numpy through
``converter.to_numpy``; without one (the sequential engine) blocks are passed
to the model as they come (e.g. tensors from a DataLoader) and results are
returned in the model's type. No tensor library is imported here.

Each thread computes with a model it alone uses (:func:`for_this_thread`): a
model with a ``thread_replica()`` method (all torch models) gets one replica
per thread, sharing the fitted tensors, so a multi-threaded worker computes
its blocks side by side; any other model that is not thread-safe is used by
one thread at a time (a lock per model object in each process), so even a
threaded scheduler that bypassed the calculators' check computes correct
values.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._mode import InfluenceMode

__all__ = [
    "factors_block",
    "for_this_thread",
    "from_factors_block",
    "gradients_block",
    "product_block",
    "self_influence_block",
    "supports_replicas",
]

_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
_FALLBACK_LOCK = threading.RLock()
_THREAD = threading.local()


def supports_replicas(model: Any) -> bool:
    """Whether ``model`` makes per-thread replicas (``thread_replica()``), so threads never share it."""
    return callable(getattr(model, "thread_replica", None))


def _replica(model: Any) -> Any:
    """This thread's replica of ``model``, made on first use and kept while the model's state is unchanged.

    A model refitted in place (the same object, new fitted attributes) gets a
    new replica: the kept one is reused only while every attribute of the model
    is still the very object it was when the replica was made (held here, so no
    freed object's ``id`` can be mistaken for it).
    """
    state = tuple(vars(model).items()) if hasattr(model, "__dict__") else None
    replicas = getattr(_THREAD, "replicas", None)
    if replicas is None:
        replicas = _THREAD.replicas = weakref.WeakKeyDictionary()
    try:
        kept = replicas.get(model)
    except TypeError:  # not weak-referenceable or unhashable: one replica per call
        return model.thread_replica()
    if kept is not None and state is not None and _same_state(kept[0], state):
        return kept[1]
    replica = model.thread_replica()
    if state is not None:
        replicas[model] = (state, replica)
    return replica


def _same_state(kept: tuple[tuple[str, Any], ...], now: tuple[tuple[str, Any], ...]) -> bool:
    return len(kept) == len(now) and all(k == n and a is b for (k, a), (n, b) in zip(kept, now, strict=True))


@contextmanager
def for_this_thread(model: Any) -> Iterator[Any]:
    """The model this thread may compute with: itself, this thread's replica, or itself under its lock."""
    if getattr(model, "is_thread_safe", False):
        yield model
    elif supports_replicas(model):
        yield _replica(model)
    else:
        with exclusive(model):
            yield model


@contextmanager
def exclusive(model: Any) -> Iterator[None]:
    """Hold the model's lock unless it declares itself thread-safe."""
    if getattr(model, "is_thread_safe", False):
        yield
        return
    with _LOCKS_GUARD:
        try:
            lock = _LOCKS.get(model)
            if lock is None:
                lock = _LOCKS[model] = threading.RLock()
        except TypeError:  # not weak-referenceable or unhashable
            lock = _FALLBACK_LOCK
    with lock:
        yield


def _in(value: Any, converter: Any) -> Any:
    return value if converter is None else converter.to_tensor(value)


def _out(value: Any, converter: Any) -> Any:
    return value if converter is None else converter.to_numpy(value)


def factors_block(x: Any, y: Any, *, model: Any, converter: Any = None) -> Any:
    """Influence factors ``H⁻¹∇θℓ`` of one chunk of samples: shape ``(len(x), n_parameters)``."""
    with for_this_thread(model) as own:
        return _out(own.influence_factors(_in(x, converter), _in(y, converter)), converter)


def gradients_block(x: Any, y: Any, *, model: Any, converter: Any = None) -> Any:
    """Per-sample gradients ``∇θℓ`` of one chunk of samples: shape ``(len(x), n_parameters)``."""
    with for_this_thread(model) as own:
        return _out(own.per_sample_gradients(_in(x, converter), _in(y, converter)), converter)


def product_block(factors: Any, gradients: Any, *, model: Any = None, converter: Any = None) -> Any:
    """Up-mode influences of a (test chunk, train chunk) pair from stored gradients: ``factors @ gradientsᵀ``.

    With a converter (the Dask engine) the product runs in the converter's
    tensor library, on its device and in its dtype, on tensors sharing the
    numpy blocks' memory (on a CPU worker torch's BLAS took 0.017-0.018 s for
    a 250 x 5,569 by 5,569 x 1,000 float32 product where numpy's took
    0.020 s; on a GPU worker the products run on the GPU). Blocks received
    read-only (fetched from another worker) are multiplied by numpy instead,
    as a converter would copy them first. ``model`` is not used: it arrives
    with the converter as the calculators' shared objects.

    Examples
    --------
    >>> import numpy as np
    >>> product_block(np.ones((2, 3)), np.arange(6.0).reshape(2, 3)).tolist()
    [[3.0, 12.0], [3.0, 12.0]]
    """
    if converter is not None and _writeable(factors) and _writeable(gradients):
        return converter.to_numpy(converter.to_tensor(factors) @ converter.to_tensor(gradients).T)
    return factors @ gradients.T


def _writeable(block: Any) -> bool:
    flags = getattr(block, "flags", None)
    return bool(getattr(flags, "writeable", False))


def from_factors_block(
    factors: Any, x: Any, y: Any, *, model: Any, converter: Any = None, mode: str = "up"
) -> Any:
    """Influences of a (test chunk, train chunk) pair, recomputing the training gradients."""
    with for_this_thread(model) as own:
        out = own.influences_from_factors(
            _in(factors, converter), _in(x, converter), _in(y, converter), InfluenceMode.parse(mode)
        )
    return _out(out, converter)


def self_influence_block(x: Any, y: Any, *, model: Any, converter: Any = None, mode: str = "up") -> Any:
    """Self-influences ``I(zᵢ, zᵢ)`` of one chunk of samples: shape ``(len(x),)`` (up) or ``x.shape`` (perturbation)."""
    with for_this_thread(model) as own:
        out = own.self_influences(_in(x, converter), _in(y, converter), InfluenceMode.parse(mode))
    return _out(out, converter)
