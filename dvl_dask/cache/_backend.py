"""The cache backend ABC, key checks, secrets, signed serialisation and degradation bookkeeping."""

from __future__ import annotations

import abc
import os
import secrets
import threading
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

from .. import config
from ..errors import CacheUnavailableWarning, DvlDaskWarning, InvalidParameterError
from ._codec import Rejected, decode, encode
from ._stats import CacheStats

__all__ = [
    "HMAC_KEY_ENV",
    "CacheBackend",
    "SignedCacheBackend",
    "Signer",
    "check_key",
    "new_secret",
    "resolve_hmac_key",
]

#: Longest key any backend accepts (memcached's limit).
MAX_KEY_LENGTH = 250

#: Environment variable read for the HMAC secret when ``dvl_dask.cache.hmac-key`` is unset.
HMAC_KEY_ENV = "DVL_DASK_CACHE_KEY"

#: Bytes of a generated secret.
SECRET_SIZE = 32

_Rejected = Rejected


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


def resolve_hmac_key(key: bytes | str | None = None) -> bytes | None:
    """The configured secret that signs cached values, or None if none is configured.

    In order of precedence: the ``key`` argument, the option
    ``dvl_dask.cache.hmac-key``, the environment variable ``DVL_DASK_CACHE_KEY``.
    There is no built-in default: backends without a configured secret make a
    random one (see :class:`DiskCacheBackend` and :class:`MemcachedCacheBackend`).
    Backends call this once, when they are built, and carry the result to
    workers when they are pickled.
    """
    if key is not None and isinstance(key, str | bytes) and not key:
        raise InvalidParameterError(
            "The cache HMAC key (argument 'hmac_key' or 'key') must not be empty: an empty secret signs nothing. "
            "To fix, pass a long random secret, or None to read the option or the environment variable "
            f"{HMAC_KEY_ENV}."
        )
    value = config.get(config.CACHE_HMAC_KEY, override_with=key)
    if value is None or value == "" or value == b"":
        value = os.environ.get(HMAC_KEY_ENV) or None
    if value is None:
        return None
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, bytes):
        raise InvalidParameterError(
            f"The cache HMAC key (argument 'hmac_key' or option {config.CACHE_HMAC_KEY!r}) must be str or "
            f"bytes. Got {type(value).__name__} instead."
        )
    return value


def new_secret() -> bytes:
    """A fresh random secret (32 bytes from :mod:`secrets`)."""
    return secrets.token_bytes(SECRET_SIZE)


class Signer:
    """Encode values for a shared cache and verify them before decoding (see :mod:`._codec`).

    Plain values (numbers, numpy scalars and arrays, :class:`RunningStats`,
    str, bytes, None) are stored without pickle; other values as pickles.
    Every entry carries an HMAC-SHA256 over its key and body: :meth:`loads`
    rejects (raises ``Rejected``) anything that does not verify, before any
    decoding, so forged, truncated or replayed entries are never unpickled.
    """

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes) or not secret:
            raise InvalidParameterError("A cache Signer needs a non-empty bytes secret.")
        self._secret = secret

    def dumps(self, key: str, value: Any) -> bytes:
        return encode(key, value, self._secret)

    def loads(self, key: str, data: bytes) -> Any:
        return decode(key, data, self._secret)

    def __repr__(self) -> str:
        return "Signer(<secret>)"


class CacheBackend(abc.ABC):
    """Where memoized values live: a small key-value store with counters.

    The public methods (:meth:`get`, :meth:`set`, :meth:`delete`,
    :meth:`update`) check keys and keep :attr:`stats` here, once for every
    backend; a backend implements only its storage: :meth:`_lookup`,
    :meth:`_store`, :meth:`_remove`, :meth:`_update` and :meth:`clear`.
    Backends must be picklable (so they can travel to Dask workers). Every
    backend passes the shared conformance suite
    :class:`dvl_dask.cache.conformance.CacheBackendTests`.

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

    # -- the public face: key checks and counters, the same for every backend ------------------
    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default`` if there is none (or it is unusable)."""
        check_key(key)
        found, value = self._lookup(key)
        self.stats.increment("hits" if found else "misses")
        return value if found else default

    def set(self, key: str, value: Any) -> bool:
        """Store ``value`` under ``key``; True if it was stored."""
        check_key(key)
        stored = self._store(key, value)
        if stored:
            self.stats.increment("sets")
        return stored

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it was there."""
        check_key(key)
        return self._remove(key)

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
        check_key(key)

        def checked(current: Any) -> Any:
            new = fn(current)
            if new is None:
                raise InvalidParameterError(
                    "The function given to CacheBackend.update must return the new value, not None."
                )
            return new

        new = self._update(key, checked)
        if new is not None:
            self.stats.increment("sets")
        return new

    # -- what each backend implements ------------------------------------------------------------
    @abc.abstractmethod
    def _lookup(self, key: str) -> tuple[bool, Any]:
        """``(found, value)`` for a checked key, counting only failures (never hits or misses)."""

    @abc.abstractmethod
    def _store(self, key: str, value: Any) -> bool:
        """Store under a checked key; True if stored (failures counted, never raised)."""

    @abc.abstractmethod
    def _remove(self, key: str) -> bool:
        """Remove a checked key; True if it was there."""

    @abc.abstractmethod
    def _update(self, key: str, fn: Callable[[Any], Any]) -> Any:
        """Atomic read-modify-write of a checked key with ``fn`` (which never returns None); the value or None."""

    @abc.abstractmethod
    def clear(self) -> None:
        """Remove every entry of this backend."""

    def __contains__(self, key: str) -> bool:
        return self.get(key, _ABSENT) is not _ABSENT

    def wrap(self, func: Callable[..., Any], *, config: Any = None) -> Any:
        """``func`` memoized in this backend, with pyDVL's options (``CacheBackend.wrap`` in pyDVL).

        Parameters
        ----------
        func : callable
            The function to memoize.
        config : CachedFuncConfig, optional
            pyDVL's options (default ``CachedFuncConfig()``: results that took
            at least 0.3 s are stored). For dvl_dask's options use :func:`memoize`.

        Returns
        -------
        MemoizedFunction
        """
        from ._memoize import memoize
        from ._pydvl import CachedFuncConfig

        config = CachedFuncConfig() if config is None else config
        if not isinstance(config, CachedFuncConfig):
            raise InvalidParameterError(
                f"The 'config' argument of {type(self).__name__}.wrap must be a CachedFuncConfig or None. "
                f"Got {type(config).__name__} instead."
            )
        return memoize(func, self, **config.memoize_options())

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["stats"] = CacheStats()  # counters are per process
        return state


class SignedCacheBackend(CacheBackend):
    """Base of the backends other processes write to: entries are signed going in, verified coming out.

    One encode/verify path for every shared backend. A subclass provides its
    secret (:meth:`_load_secret`, which may raise OSError, e.g. a secret file
    that cannot be read) and a ``_degradation`` (:class:`_Degradation`) for
    storage failures, and stores the bytes of :meth:`_encode`; whatever it
    reads goes through :meth:`_decode`, which counts entries that do not
    verify in ``stats.rejected`` before anything is unpickled.
    """

    shared: ClassVar[bool] = True
    _signer: Signer | None = None
    _degradation: _Degradation
    _warned_unloadable: bool = False

    @abc.abstractmethod
    def _load_secret(self) -> bytes:
        """The secret that signs this backend's entries (read or made on first use)."""

    def _signer_(self) -> Signer:
        """The signer, built on first use (raises OSError if the secret cannot be read or made)."""
        if self._signer is None:
            self._signer = Signer(self._load_secret())
        return self._signer

    def _encode(self, key: str, value: Any) -> bytes:
        return self._signer_().dumps(key, value)

    def _decode(self, key: str, data: bytes) -> tuple[bool, Any]:
        """``(True, value)`` for an entry that verifies and loads, else ``(False, None)`` (counted)."""
        try:
            signer = self._signer_()
        except OSError as exc:
            self._degradation.failed(self.stats, "errors", exc, "reading the secret of")
            return False, None
        try:
            return True, signer.loads(key, data)
        except Rejected:
            self.stats.increment("rejected")
        except Exception as exc:  # verified but not loadable here (e.g. a class missing on this worker)
            self.stats.increment("errors")
            if not self._warned_unloadable:
                self._warned_unloadable = True
                warnings.warn(
                    f"A signed cache entry for {key!r} could not be unpickled ({type(exc).__name__}: {exc}); "
                    "treating it as a miss. Further such entries are counted in stats.errors without warning.",
                    DvlDaskWarning,
                    stacklevel=5,
                )
        return False, None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for name in ("_signer", "_warned_unloadable"):
            state.pop(name, None)  # rebuilt on first use in the receiving process
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
