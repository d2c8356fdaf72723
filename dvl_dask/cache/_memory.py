"""A thread-safe in-process cache backend."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..errors import InvalidParameterError
from ._backend import CacheBackend, check_key

__all__ = ["InMemoryCacheBackend"]


class InMemoryCacheBackend(CacheBackend):
    """Cache values in a dict of this process, guarded by a lock.

    Values are stored as they are (not copied, not pickled), which makes a hit
    cost about a microsecond; do not mutate values returned by a cached
    function. Pickling the backend (e.g. to send it to a Dask worker) copies
    its entries; the processes do not share later entries: use
    :class:`DiskCacheBackend` or :class:`MemcachedCacheBackend` for that.

    Examples
    --------
    >>> cache = InMemoryCacheBackend()
    >>> cache.set("answer", 42)
    True
    >>> cache.get("answer"), cache.get("question", "unknown")
    (42, 'unknown')
    >>> cache.update("count", lambda n: (n or 0) + 1)
    1
    """

    shared = False

    def __init__(self) -> None:
        super().__init__()
        self._data: dict[str, Any] = {}
        self._lock = threading.RLock()

    def get(self, key: str, default: Any = None) -> Any:
        check_key(key)
        with self._lock:
            value = self._data.get(key, _MISSING)
        if value is _MISSING:
            self.stats.increment("misses")
            return default
        self.stats.increment("hits")
        return value

    def set(self, key: str, value: Any) -> bool:
        check_key(key)
        with self._lock:
            self._data[key] = value
        self.stats.increment("sets")
        return True

    def delete(self, key: str) -> bool:
        check_key(key)
        with self._lock:
            return self._data.pop(key, _MISSING) is not _MISSING

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def update(self, key: str, fn: Callable[[Any], Any]) -> Any:
        check_key(key)
        with self._lock:
            new = fn(self._data.get(key))
            if new is None:
                raise InvalidParameterError(
                    "The function given to CacheBackend.update must return the new value, not None."
                )
            self._data[key] = new
        self.stats.increment("sets")
        return new

    def __len__(self) -> int:
        return len(self._data)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        with self._lock:
            state["_data"] = dict(self._data)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"InMemoryCacheBackend(entries={len(self._data)})"


_MISSING = object()
