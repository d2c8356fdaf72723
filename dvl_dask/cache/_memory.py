"""A thread-safe in-process cache backend."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

from ._backend import CacheBackend

__all__ = ["InMemoryCacheBackend"]


class InMemoryCacheBackend(CacheBackend):
    """Cache values in a dict of this process, guarded by a lock.

    Values are stored as they are (not copied, not pickled), which makes a hit
    cost about a microsecond; do not mutate values returned by a cached
    function.

    Entries live in the process that computed them. Pickling the backend
    (e.g. to send a utility to Dask workers) sends only its identity: every
    copy unpickled in one process shares that process's entries for this
    backend, so a worker keeps its hits across tasks and across graphs (a
    second valuation method on the same utility), and the process that
    created the backend sees its own entries in every copy. A process keeps
    the entries of its 16 most recently attached backends. Processes do not
    see each other's entries: use :class:`DiskCacheBackend` or
    :class:`MemcachedCacheBackend` for that.

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
        self._id = uuid.uuid4().hex
        self._attach()

    def _attach(self) -> None:
        with _REGISTRY_LOCK:
            storage = _STORAGE.pop(self._id, None) or _Storage()
            _STORAGE[self._id] = storage  # most recently used last
            while len(_STORAGE) > _MAX_BACKENDS_PER_PROCESS:
                del _STORAGE[next(iter(_STORAGE))]
        self._storage = storage
        self._data = storage.data
        self._lock = storage.lock

    def _lookup(self, key: str) -> tuple[bool, Any]:
        with self._lock:
            value = self._data.get(key, _MISSING)
        return (False, None) if value is _MISSING else (True, value)

    def _store(self, key: str, value: Any) -> bool:
        with self._lock:
            self._data[key] = value
        return True

    def _remove(self, key: str) -> bool:
        with self._lock:
            return self._data.pop(key, _MISSING) is not _MISSING

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def _update(self, key: str, fn: Callable[[Any], Any]) -> Any:
        with self._lock:
            new = self._data[key] = fn(self._data.get(key))
        return new

    def __len__(self) -> int:
        return len(self._data)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for name in ("_storage", "_data", "_lock"):
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._attach()

    def __repr__(self) -> str:
        return f"InMemoryCacheBackend(entries={len(self._data)})"


_MISSING = object()


class _Storage:
    """The entries and lock that all copies of one backend share within a process."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.lock = threading.RLock()


# backend id -> storage, kept for the process's lifetime so that workers keep their
# entries between graphs; bounded to the most recently attached backends.
_STORAGE: dict[str, _Storage] = {}
_REGISTRY_LOCK = threading.Lock()
_MAX_BACKENDS_PER_PROCESS = 16
