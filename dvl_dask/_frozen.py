"""Immutable values: read-only numpy arrays and objects whose attributes are fixed after ``__init__``.

An object whose token (its identity in graph keys, caches and checkpoints) is
computed once, at construction, must not change afterwards, or every cache
keyed by that token would serve values of the old object. :class:`Frozen`
makes a class's instances immutable once their outermost ``__init__`` has
returned, and :func:`readonly_array` gives arrays that raise on in-place
writes (without making a caller's own array read-only behind their back).
"""

from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import FrozenInstanceError

__all__ = ["Frozen", "freeze_array_in_place", "is_immutable_array", "readonly_array"]

_local = threading.local()


def is_immutable_array(arr: np.ndarray) -> bool:
    """Whether nobody can write to the memory of ``arr``: it and every array it views are read-only.

    The memory at the end of the chain of views must be the array's own or an
    immutable ``bytes`` object (a read-only view of a writeable array, or of a
    ``bytearray`` or memory map, can still change through its base).
    """
    current: Any = arr
    while isinstance(current, np.ndarray):
        if current.flags.writeable:
            return False
        current = current.base
    return current is None or isinstance(current, bytes)


def readonly_array(arr: np.ndarray) -> np.ndarray:
    """``arr`` if it is already immutable, else a read-only copy of it (the caller's array is left writeable).

    Examples
    --------
    >>> a = np.arange(3)
    >>> b = readonly_array(a)
    >>> a.flags.writeable, b.flags.writeable, readonly_array(b) is b
    (True, False, True)
    """
    if is_immutable_array(arr):
        return arr
    out = np.array(arr, copy=True, subok=False)
    out.flags.writeable = False
    return out


def freeze_array_in_place(arr: np.ndarray) -> np.ndarray:
    """Mark an array this code owns (e.g. just computed or unpickled) read-only, without copying."""
    if arr.flags.writeable:
        arr.flags.writeable = False
    return arr


def _freezing(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap a class's ``__init__`` so the instance freezes when the outermost ``__init__`` returns."""

    @functools.wraps(init)
    def __init__(self: Frozen, *args: Any, **kwargs: Any) -> None:
        depths: dict[int, int] = getattr(_local, "depths", None) or {}
        _local.depths = depths
        key = id(self)
        depth = depths.get(key, 0)
        depths[key] = depth + 1
        try:
            init(self, *args, **kwargs)
        finally:
            if depth:
                depths[key] = depth
            else:
                del depths[key]
        if not depth:
            self._freeze()
            self.__dict__["_frozen"] = True

    __init__._dvl_freezes = True  # type: ignore[attr-defined]
    return __init__


class Frozen:
    """Mixin: instances are immutable once their outermost ``__init__`` has returned.

    Subclasses may set attributes in ``__init__`` before and after calling
    ``super().__init__()``; when the outermost ``__init__`` returns,
    :meth:`_freeze` runs (by default it replaces every numpy array attribute by
    a read-only one, copying arrays the caller could still write to) and from
    then on assigning or deleting an attribute raises
    :class:`~dvl_dask.errors.FrozenInstanceError`. Unpickled and copied
    instances are frozen too. Derived values should be computed in
    ``__init__`` or :meth:`_freeze`; use :meth:`_replace` for a modified copy.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_dvl_freezes", False):
            cls.__init__ = _freezing(init)  # type: ignore[method-assign]

    def _freeze(self) -> None:
        """Called once, when construction ends: make array attributes read-only."""
        for name, value in list(self.__dict__.items()):
            if isinstance(value, np.ndarray):
                self.__dict__[name] = readonly_array(value)

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_frozen", False):
            raise FrozenInstanceError(
                f"{type(self).__name__} is immutable: cannot set {name!r} after construction (its token was "
                f"computed from what it holds, so a change would make caches serve stale values). To fix, "
                f"build a new {type(self).__name__}."
            )
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if self.__dict__.get("_frozen", False):
            raise FrozenInstanceError(
                f"{type(self).__name__} is immutable: cannot delete {name!r} after construction. To fix, build "
                f"a new {type(self).__name__}."
            )
        object.__delattr__(self, name)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickled arrays are fresh and writeable: make them read-only again (copies share the
        # originals' arrays, which already are).
        self.__dict__.update(
            {k: freeze_array_in_place(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}
        )

    def _state_token(self, *exclude: str) -> str:
        """Token of the class (:func:`dvl_dask.keys.class_token`: code or package version) and every attribute.

        Attributes in ``exclude`` (cached derived values) and the frozen flag are left out.
        """
        from .keys import class_token, object_token

        state = {k: v for k, v in self.__dict__.items() if k != "_frozen" and k not in exclude}
        return object_token("frozen-instance", class_token(type(self)), state)

    def _cached_state_token(self) -> str:
        """:meth:`_state_token`, computed on first use and kept in ``_token`` (the instance cannot change)."""
        found = self.__dict__.get("_token")
        if found is None:
            found = self.__dict__["_token"] = self._state_token("_token")
        return found

    def _replace(self, **changes: Any) -> Any:
        """A shallow copy with some attributes replaced (arrays among them made read-only), frozen too."""
        clone = copy.copy(self)
        for name, value in changes.items():
            clone.__dict__[name] = readonly_array(value) if isinstance(value, np.ndarray) else value
        return clone
