"""The cache backend ABC, key checks, signed serialisation and degradation bookkeeping."""

from __future__ import annotations

import abc
import hmac
import os
import pickle
import threading
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

from .. import config
from ..errors import CacheError, CacheUnavailableWarning, InvalidParameterError
from ._stats import CacheStats

__all__ = [
    "DEFAULT_HMAC_KEY",
    "HMAC_KEY_ENV",
    "CacheBackend",
    "Signer",
    "check_key",
    "resolve_hmac_key",
]

#: Longest key any backend accepts (memcached's limit).
MAX_KEY_LENGTH = 250

#: Environment variable read for the HMAC secret when ``dvl_dask.cache.hmac-key`` is unset.
HMAC_KEY_ENV = "DVL_DASK_CACHE_KEY"

#: The key used when no secret is configured. It is PUBLIC: with it, anyone who can
#: write to the memcached server or the cache directory can forge entries that
#: will be unpickled (run code) in your processes. Set a secret for shared servers.
DEFAULT_HMAC_KEY = b"dvl_dask default cache signing key -- public, NOT a secret"

_MAGIC = b"DVL\x01"
_MAC_SIZE = 32
_PICKLE_PROTOCOL = 5


def check_key(key: Any) -> str:
    """Return ``key`` if every backend can store it, else raise InvalidParameterError.

    Keys must be non-empty printable ASCII strings without whitespace of at most
    250 characters (memcached's rules, applied to all backends so that a key
    that works in memory works everywhere).
    """
    if (
        type(key) is not str
        or not key
        or len(key) > MAX_KEY_LENGTH
        or not key.isascii()
        or not key.isprintable()
        or " " in key
    ):
        shown = key if not isinstance(key, str) or len(key) < 80 else key[:77] + "..."
        raise InvalidParameterError(
            f"Cache keys must be non-empty printable ASCII strings without whitespace of at most "
            f"{MAX_KEY_LENGTH} characters. Got {shown!r} ({type(key).__name__}"
            f"{f', {len(key)} characters' if isinstance(key, str) else ''}). "
            "To fix, build keys with dvl_dask.keys.cache_key or KeyFunction."
        )
    return key


def resolve_hmac_key(key: bytes | str | None = None) -> bytes:
    """The secret used to sign cached values.

    In order of precedence: the ``key`` argument, the option
    ``dvl_dask.cache.hmac-key``, the environment variable ``DVL_DASK_CACHE_KEY``,
    and finally :data:`DEFAULT_HMAC_KEY`, which is public (see its note).
    """
    value = config.get(config.CACHE_HMAC_KEY, override_with=key)
    if value is None or value == "":
        value = os.environ.get(HMAC_KEY_ENV) or DEFAULT_HMAC_KEY
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, bytes):
        raise InvalidParameterError(
            f"The cache HMAC key (argument 'hmac_key' or option {config.CACHE_HMAC_KEY!r}) must be str or "
            f"bytes. Got {type(value).__name__} instead."
        )
    return value


class _Rejected(Exception):
    """A stored entry failed verification."""


class Signer:
    """Pickle values with an HMAC-SHA256 signature bound to their key; verify before unpickling.

    The layout is ``magic (4 bytes) | HMAC-SHA256(secret, magic | key | 0 | payload) | payload``.
    Binding the key into the MAC stops a valid entry from being replayed under
    another key. :meth:`loads` verifies before it unpickles anything.
    """

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def dumps(self, key: str, value: Any) -> bytes:
        try:
            payload = pickle.dumps(value, protocol=_PICKLE_PROTOCOL)
        except Exception as exc:
            raise CacheError(
                f"Cannot cache a value of type {type(value).__name__} under {key!r}: it cannot be pickled "
                f"({type(exc).__name__}: {exc}). To fix, return picklable values from cached functions."
            ) from exc
        mac = hmac.digest(self._secret, _MAGIC + key.encode("ascii") + b"\0" + payload, "sha256")
        return _MAGIC + mac + payload

    def loads(self, key: str, data: bytes) -> Any:
        if len(data) < len(_MAGIC) + _MAC_SIZE or data[: len(_MAGIC)] != _MAGIC:
            raise _Rejected("unknown format")
        mac = data[len(_MAGIC) : len(_MAGIC) + _MAC_SIZE]
        payload = data[len(_MAGIC) + _MAC_SIZE :]
        expected = hmac.digest(self._secret, _MAGIC + key.encode("ascii") + b"\0" + payload, "sha256")
        if not hmac.compare_digest(mac, expected):
            raise _Rejected("signature mismatch")
        return pickle.loads(payload)


class CacheBackend(abc.ABC):
    """Where memoized values live: a small key-value store with counters.

    Subclasses implement :meth:`get`, :meth:`set`, :meth:`delete`,
    :meth:`clear` and :meth:`update`, keep :attr:`stats` up to date, and must
    be picklable (so they can travel to Dask workers). Every backend passes the
    shared conformance suite :class:`dvl_dask.cache.conformance.CacheBackendTests`.

    Failures of the storage (a server down, a full disk) never raise from these
    methods: they count in :attr:`stats`, warn once with
    :class:`~dvl_dask.errors.CacheUnavailableWarning`, and behave like a miss
    or a refused write, so computations continue uncached.

    Attributes
    ----------
    stats : CacheStats
        Counters of this backend in this process.
    shared : bool
        Whether other processes see the entries (class attribute).
    """

    shared: ClassVar[bool] = False

    def __init__(self) -> None:
        self.stats = CacheStats()

    @abc.abstractmethod
    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default`` if there is none (or it is unusable)."""

    @abc.abstractmethod
    def set(self, key: str, value: Any) -> bool:
        """Store ``value`` under ``key``; True if it was stored."""

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it was there."""

    @abc.abstractmethod
    def clear(self) -> None:
        """Remove every entry of this backend."""

    @abc.abstractmethod
    def update(self, key: str, fn: Callable[[Any], Any]) -> Any:
        """Atomically replace the value under ``key`` by ``fn(current)``.

        ``fn`` receives the current value, or None when there is none, and
        returns the new value (never None). Concurrent updates from threads or
        processes sharing the backend are never lost: ``fn`` may therefore be
        called more than once and must have no side effects.

        Returns
        -------
        object or None
            The value stored, or None if the backend could not store it.
        """

    def __contains__(self, key: str) -> bool:
        return self.get(key, _ABSENT) is not _ABSENT

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["stats"] = CacheStats()  # counters are per process
        return state


_ABSENT = object()


class _Degradation:
    """Counts storage failures and warns once per outage."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._lock = threading.Lock()
        self._failing = False

    def failed(self, stats: CacheStats, counter: str, exc: BaseException, action: str) -> None:
        stats.increment(counter)
        with self._lock:
            warn = not self._failing
            self._failing = True
        if warn:
            warnings.warn(
                f"{self._what} is unavailable ({action} failed with {type(exc).__name__}: {exc}). "
                "Computation continues without the cache; further failures are counted in "
                "`.stats` (errors, timeouts) without warning until it answers again.",
                CacheUnavailableWarning,
                stacklevel=4,
            )

    def succeeded(self) -> None:
        if self._failing:
            with self._lock:
                self._failing = False

    def __getstate__(self) -> dict[str, Any]:
        return {"_what": self._what}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["_what"])  # type: ignore[misc]
