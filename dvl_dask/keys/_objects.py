"""Objects without a handler of their own: by their ``__dask_tokenize__``, or by class and state.

Order: ``__dask_tokenize__`` (class and what it returns); numpy arrays of
objects and ndarray subclasses; then the class (:func:`class_token`) and the
value: enum members by name, subclasses of builtins by their plain value and
attributes, paths, dataclass fields, types dask knows (pandas, pyarrow, ...:
*calling* ``dask.base.tokenize`` with ``ensure_deterministic=True``), and
every other object by what pickle keeps of it (``__reduce_ex__(4)``: the
reconstructor, its arguments and the state, hashed by value recursively).
What pickle refuses (locks, generators, open files) cannot be covered.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import types
from pathlib import PurePath
from typing import Any

import numpy as np

from ._code import _package_version, class_token
from ._encode import (
    _KEY_FORMAT,
    FIX,
    Uncoverable,
    Update,
    feed,
    feed_array,
    feed_mapping,
    scope,
    session,
    set_fallback,
)

_DASK_NORMALIZERS: dict[type, bool] = {}


def _known_to_dask(cls: type) -> bool:
    """Whether dask has a ``normalize_token`` registration for ``cls`` other than its generic object one."""
    found = _DASK_NORMALIZERS.get(cls)
    if found is None:
        from dask.base import normalize_token
        from dask.tokenize import normalize_object

        try:
            found = normalize_token.dispatch(cls) is not normalize_object
        except TypeError:
            found = False
        if len(_DASK_NORMALIZERS) > 4096:
            _DASK_NORMALIZERS.clear()
        _DASK_NORMALIZERS[cls] = found
    return found


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def feed_reduced(update: Update, obj: Any) -> None:
    """What pickle keeps of ``obj``: reconstructor, arguments, state, items; by value, recursively."""
    cls = type(obj)
    if cls is object:
        raise Uncoverable(f"A bare object() has no value to hash, only an identity. {FIX}")
    try:
        reduced = obj.__reduce_ex__(4)
    except Exception as exc:  # pickle refuses it: no state to read
        raise Uncoverable(
            f"Cannot hash {_name(cls)} deterministically: it has no state dvl_dask can read ({exc}). {FIX}"
        ) from None
    if isinstance(reduced, str):  # pickled by reference: a named module-level object
        module = getattr(obj, "__module__", None) or cls.__module__
        feed(update, ("global", f"{module}.{reduced}", _package_version(module) or ""))
        return
    if not isinstance(reduced, tuple) or len(reduced) < 2:
        raise Uncoverable(f"Cannot hash {_name(cls)}: its __reduce_ex__ returned {type(reduced).__name__}. {FIX}")
    update(b"reduce:%d:" % len(reduced))
    feed(update, reduced[0])
    feed(update, reduced[1])
    feed(update, reduced[2] if len(reduced) > 2 else None)
    if len(reduced) > 3 and reduced[3] is not None:
        feed(update, list(reduced[3]))
    if len(reduced) > 4 and reduced[4] is not None:
        feed_mapping(update, b"items", dict(reduced[4]))


def _feed_object(update: Update, obj: Any) -> None:
    cls = type(obj)
    method = getattr(obj, "__dask_tokenize__", None)
    if method is not None and callable(method):
        update(b"D")
        update(class_token(cls).encode())
        feed(update, method())
        return
    if isinstance(obj, np.ndarray):  # object arrays and ndarray subclasses
        update(b"A")
        update(class_token(cls).encode())
        feed(update, (obj.dtype.str, obj.shape))
        if obj.dtype.hasobject:
            feed(update, obj.ravel().tolist())
        else:
            feed_array(update, np.asarray(obj))
        return
    update(b"O")
    update(class_token(cls).encode())
    if isinstance(obj, enum.Enum):
        feed(update, obj.name)
    elif isinstance(obj, (int, float, str, bytes, complex)):  # subclasses of builtins: their plain value
        base = next(b for b in (bool, int, float, str, bytes, complex) if isinstance(obj, b))
        feed(update, base(obj))
        feed(update, dict(getattr(obj, "__dict__", None) or {}))
    elif isinstance(obj, (tuple, list)):
        feed(update, list(obj))
        feed(update, dict(getattr(obj, "__dict__", None) or {}))
    elif isinstance(obj, (dict, types.MappingProxyType)):
        feed_mapping(update, b"d", obj)
        feed(update, dict(getattr(obj, "__dict__", None) or {}))
    elif isinstance(obj, (set, frozenset)):
        feed(update, frozenset(obj))
    elif isinstance(obj, PurePath):
        feed(update, obj.as_posix())
    elif dataclasses.is_dataclass(obj):
        feed(update, {f.name: getattr(obj, f.name, None) for f in dataclasses.fields(obj)})
    elif _known_to_dask(cls):
        from dask.base import tokenize

        try:
            token = tokenize(obj, ensure_deterministic=True)
        except Exception as exc:  # dask's own refusal
            raise Uncoverable(f"Cannot hash {_name(cls)} deterministically ({exc}). {FIX}") from None
        update(b"dask:")
        feed(update, token)
    else:
        feed_reduced(update, obj)


def instance_token(obj: Any) -> str:
    """Token of an object by its class (:func:`class_token`) and state, ignoring its ``__dask_tokenize__``.

    The state is what pickle keeps of it (``__reduce_ex__(4)``: for plain
    Python objects their ``__dict__`` and ``__slots__``, or what
    ``__getstate__`` returns), hashed by value recursively. Classes use it to
    implement ``__dask_tokenize__`` by value.

    Raises
    ------
    TokenizationError
        If some of the state cannot be hashed completely.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(_KEY_FORMAT + b"instance")
    with session(strict=True) as s, scope():
        h.update(class_token(type(obj)).encode())
        s.active.add(id(obj))
        try:
            feed_reduced(h.update, obj)
        finally:
            s.active.discard(id(obj))
    return h.hexdigest()


set_fallback(_feed_object)
