"""A memcached cache backend (pymemcache is imported here only, and only on first use)."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import ipaddress
import random
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import DvlDaskWarning, InvalidParameterError
from ._backend import SignedCacheBackend, _Degradation, new_secret, resolve_hmac_key

__all__ = ["MemcachedCacheBackend", "MemcachedClientConfig", "as_client_config"]

_FAILED = object()
_CAS_ATTEMPTS = 200


@functools.cache
def _pymemcache_errors() -> tuple[type[Exception], type[Exception], type[Exception]]:
    from pymemcache.exceptions import MemcacheError, MemcacheServerError, MemcacheUnexpectedCloseError

    return MemcacheError, MemcacheServerError, MemcacheUnexpectedCloseError


@dataclasses.dataclass(frozen=True)
class MemcachedClientConfig:
    """How to reach a memcached server.

    Parameters
    ----------
    server : (str, int) or str
        ``(host, port)``, or the path of a Unix socket. The default is the
        loopback interface: a server on another machine must be chosen
        explicitly. ``"localhost"`` may resolve to ``::1`` first; use
        ``"127.0.0.1"`` if your server listens on IPv4 only.
    connect_timeout : float
        Seconds to wait for a connection.
    timeout : float
        Seconds to wait for each reply. Operations that take longer count as
        ``timeouts`` and the call runs uncached.
    no_delay : bool
        Set ``TCP_NODELAY`` (lower latency for small values).
    reconnect_interval : float
        After a failure, seconds during which operations skip the server
        (counted as errors) before the client tries to connect again. Keeps a
        dead server from costing a connect timeout on every call.

    Examples
    --------
    >>> MemcachedClientConfig(server=("127.0.0.1", 11311), timeout=0.5).server
    ('127.0.0.1', 11311)
    """

    server: tuple[str, int] | str = ("localhost", 11211)
    connect_timeout: float = 1.0
    timeout: float = 0.1
    no_delay: bool = True
    reconnect_interval: float = 1.0

    def __post_init__(self) -> None:
        server = self.server
        if isinstance(server, list):
            server = tuple(server)
            object.__setattr__(self, "server", server)
        ok = isinstance(server, str) or (
            isinstance(server, tuple)
            and len(server) == 2
            and isinstance(server[0], str)
            and isinstance(server[1], int)
            and 0 < server[1] < 65536
        )
        if not ok:
            raise InvalidParameterError(
                "The 'server' parameter of MemcachedClientConfig must be a (host, port) tuple with a port "
                f"in [1, 65535] or a Unix socket path. Got {server!r} instead."
            )
        for name in ("connect_timeout", "timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidParameterError(
                    f"The {name!r} parameter of MemcachedClientConfig must be a number of seconds > 0. "
                    f"Got {value!r} instead."
                )
        value = self.reconnect_interval
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise InvalidParameterError(
                "The 'reconnect_interval' parameter of MemcachedClientConfig must be a number of seconds "
                f">= 0. Got {value!r} instead."
            )

    @property
    def address(self) -> str:
        """The server as ``host:port`` (or the socket path)."""
        return self.server if isinstance(self.server, str) else f"{self.server[0]}:{self.server[1]}"

    @property
    def is_local(self) -> bool:
        """Whether the server is on this machine (loopback address or Unix socket)."""
        if isinstance(self.server, str):
            return True
        host = self.server[0]
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


class MemcachedCacheBackend(SignedCacheBackend):
    """Cache values in a memcached server shared by processes and machines.

    Values are signed with HMAC-SHA256 (see ``hmac_key``); numbers, numpy
    scalars and arrays and :class:`RunningStats` are stored without pickle,
    other values as pickles. Entries that do not verify are treated as misses,
    counted in ``stats.rejected``, and never unpickled. The client connects lazily, keeps one connection per
    thread, and is picklable: the connection is dropped when the backend is
    pickled and made again on first use in the worker. When the server closes
    a connection unexpectedly the operation is retried once on a new one
    (``stats.reconnects``). When the server is down or too slow, operations
    behave like misses and refused writes, count in ``stats.errors`` or
    ``stats.timeouts``, one :class:`~dvl_dask.errors.CacheUnavailableWarning` is
    issued, and the client reconnects once the server answers again.

    Parameters
    ----------
    config : MemcachedClientConfig, optional
        Server address and timeouts. Default: ``MemcachedClientConfig()``
        (``localhost:11211``).
    hmac_key : bytes or str, optional
        Secret that signs values. Default: option ``dvl_dask.cache.hmac-key``,
        then the environment variable ``DVL_DASK_CACHE_KEY``, both read when
        the backend is built; without either, a random secret is generated for
        this backend. The secret travels inside the backend when it is pickled,
        so every Dask worker that receives it (or a Utility holding it) signs
        and verifies with the same secret, whatever its own config. Separate
        programs that should share entries in one server (two scripts, a
        notebook and a batch job) must configure the same secret: with a
        generated one each program only reads its own entries (the others
        count as ``rejected`` and are recomputed).

    Notes
    -----
    Only small values belong in memcached: its default item size limit is
    1 MiB. Larger values are refused (counted as errors, with one warning).
    :meth:`clear` empties the whole server (memcached cannot delete by prefix).

    Examples
    --------
    >>> cache = MemcachedCacheBackend(MemcachedClientConfig(server=("127.0.0.1", 11211)))
    >>> cache  # no connection is made until the first operation
    MemcachedCacheBackend('127.0.0.1:11211')
    """

    def __init__(
        self, config: MemcachedClientConfig | None = None, *, hmac_key: bytes | str | None = None
    ) -> None:
        super().__init__()
        if config is None:
            config = MemcachedClientConfig()
        if isinstance(config, dict):  # merged over the defaults, as pyDVL's memcached() does
            config = as_client_config(config, "MemcachedCacheBackend")
        if not isinstance(config, MemcachedClientConfig):
            raise InvalidParameterError(
                "The 'config' argument of MemcachedCacheBackend must be a MemcachedClientConfig. "
                f"Got {type(config).__name__} instead. To fix, pass "
                "MemcachedClientConfig(server=(host, port))."
            )
        if importlib.util.find_spec("pymemcache") is None:
            raise ImportError(
                "MemcachedCacheBackend requires pymemcache, which could not be imported. "
                "Install it with `pip install dvl_dask[memcached]` (or `pip install pymemcache`)."
            )
        self.config = config
        configured = resolve_hmac_key(hmac_key)
        self._secret = configured if configured is not None else new_secret()
        self.secret_configured = configured is not None
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._local = threading.local()
        self._signer = None
        self._warned_unloadable = False
        self._down_until = 0.0
        self._degradation = _Degradation(f"The memcached server at {self.config.address}")
        self._warned_too_large = False

    # -- connection and error handling -----------------------------------------------------
    def _load_secret(self) -> bytes:
        return self._secret

    @property
    def client(self) -> Any:
        """This thread's ``pymemcache`` client (pyDVL's attribute), e.g. ``backend.client.stats()``.

        Calls on it bypass the backend: no signing, no counters, no error handling.
        """
        return self._client()

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            from pymemcache.client.base import Client

            cfg = self.config
            client = Client(
                cfg.server,
                connect_timeout=cfg.connect_timeout,
                timeout=cfg.timeout,
                no_delay=cfg.no_delay,
                default_noreply=False,
                allow_unicode_keys=False,
            )
            self._local.client = client
            self._local.lost = False
        return client

    def _run(self, action: str, op: Callable[[Any], Any]) -> Any:
        """Run ``op(client)``; on failure count, warn once, and return ``_FAILED``."""
        MemcacheError, MemcacheServerError, MemcacheUnexpectedCloseError = _pymemcache_errors()
        if self._down_until and time.monotonic() < self._down_until:
            self.stats.increment("errors")
            return _FAILED
        for attempt in (0, 1):
            client = self._client()
            try:
                result = op(client)
            except (
                MemcacheUnexpectedCloseError,
                BrokenPipeError,
                ConnectionResetError,
                ConnectionAbortedError,
            ) as exc:
                # The server closed our connection (e.g. it restarted): retry once on a new one.
                client.close()
                self._local.lost = True
                if attempt == 0:
                    continue
                self._unavailable("errors", exc, action)
                return _FAILED
            except TimeoutError as exc:
                client.close()
                self._local.lost = True
                self._unavailable("timeouts", exc, action)
                return _FAILED
            except MemcacheServerError as exc:
                # The server answered but refused (e.g. "object too large for cache").
                client.close()
                self._local.lost = True
                self.stats.increment("errors")
                self._refused(exc, action)
                return _FAILED
            except (OSError, MemcacheError) as exc:
                client.close()
                self._local.lost = True
                self._unavailable("errors", exc, action)
                return _FAILED
            if self._local.lost:
                self._local.lost = False
                self.stats.increment("reconnects")
            self._down_until = 0.0
            self._degradation.succeeded()
            return result
        return _FAILED  # pragma: no cover - the loop always returns

    def _unavailable(self, counter: str, exc: BaseException, action: str) -> None:
        interval = self.config.reconnect_interval
        if interval > 0:
            self._down_until = time.monotonic() + interval
        self._degradation.failed(self.stats, counter, exc, action)

    def _refused(self, exc: BaseException, action: str) -> None:
        if not self._warned_too_large:
            self._warned_too_large = True
            warnings.warn(
                f"The memcached server at {self.config.address} refused to {action} a value ({exc}). Values "
                "larger than its item size limit (1 MiB unless memcached runs with -I) are not cached; keep "
                "large results (arrays) out of memcached. Further refusals are counted in stats.errors.",
                DvlDaskWarning,
                stacklevel=4,
            )

    # -- storage ------------------------------------------------------------------------------
    def _lookup(self, key: str) -> tuple[bool, Any]:
        data = self._run("get", lambda c: c.get(key))
        if data is None or data is _FAILED:
            return False, None
        return self._decode(key, data)

    def _store(self, key: str, value: Any) -> bool:
        data = self._encode(key, value)
        return self._run("set", lambda c: c.set(key, data, noreply=False)) is True

    def _remove(self, key: str) -> bool:
        return self._run("delete", lambda c: c.delete(key, noreply=False)) is True

    def clear(self) -> None:
        """Remove every item of the server (memcached ``flush_all``), not only dvl_dask's."""
        self._run("flush", lambda c: c.flush_all(noreply=False))

    def _update(self, key: str, fn: Callable[[Any], Any]) -> Any:
        """Atomic read-modify-write: memcached ``gets``/``cas`` (``add`` when absent), retried on conflict."""
        for attempt in range(_CAS_ATTEMPTS):
            got = self._run("gets", lambda c: c.gets(key))
            if got is _FAILED:
                return None
            data, cas = got
            current = None if data is None else self._decode(key, data)[1]
            new = fn(current)
            payload = self._encode(key, new)
            if data is None:
                stored = self._run("add", lambda c, data=payload: c.add(key, data, noreply=False))
            else:
                stored = self._run(
                    "cas", lambda c, data=payload, token=cas: c.cas(key, data, token, noreply=False)
                )
            if stored is _FAILED:
                return None
            if stored is True:
                return new
            # Another writer came first (or the item vanished): back off a little and retry.
            time.sleep(random.uniform(0, 0.0005 * 2 ** min(attempt, 5)))
        self.stats.increment("errors")
        warnings.warn(
            f"Gave up updating {key!r} in memcached after {_CAS_ATTEMPTS} conflicting attempts; "
            "this evaluation is not recorded.",
            DvlDaskWarning,
            stacklevel=2,
        )
        return None

    # -- pickling, display -----------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for name in ("_local", "_down_until", "_degradation", "_warned_too_large"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "_secret" not in state:  # pickled by an older version: never fall back to a public key
            configured = resolve_hmac_key(state.pop("_hmac_key", None))
            state["_secret"] = configured if configured is not None else new_secret()
            state["secret_configured"] = configured is not None
        self.__dict__.update(state)
        self._init_runtime()

    def close(self) -> None:
        """Close this thread's connection (it reopens on the next operation)."""
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()
            self._local.client = None

    def __repr__(self) -> str:
        return f"MemcachedCacheBackend({self.config.address!r})"


def as_client_config(value: MemcachedClientConfig | Mapping[str, Any] | None, owner: str) -> MemcachedClientConfig:
    """A :class:`MemcachedClientConfig` from one, from a mapping merged over the defaults, or the default.

    A mapping is what :func:`dataclasses.asdict` makes of a config (e.g. of a
    :class:`MemcachedConfig`); its keys are the fields of
    :class:`MemcachedClientConfig` and missing ones keep their defaults.
    """
    if value is None:
        return MemcachedClientConfig()
    if isinstance(value, MemcachedClientConfig):
        return value
    if isinstance(value, Mapping):
        fields = {f.name for f in dataclasses.fields(MemcachedClientConfig)}
        unknown = sorted(set(value) - fields)
        if unknown:
            raise InvalidParameterError(
                f"The 'client_config' argument of {owner} has keys {unknown} that MemcachedClientConfig does not "
                f"know; its fields are {sorted(fields)}. (pyDVL's 'serde' is not needed: dvl_dask serialises "
                "and signs values itself.)"
            )
        return MemcachedClientConfig(**dict(value))
    raise InvalidParameterError(
        f"The 'client_config' argument of {owner} must be a MemcachedClientConfig, a dict of its fields or None. "
        f"Got {type(value).__name__} instead."
    )
