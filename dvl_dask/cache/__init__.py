"""Memoization of utilities in memory, on disk or in memcached, shared across a cluster.

* :func:`memoize` wraps a function (e.g. ``Utility.fit_and_score``; pass
  ``Utility(..., cache=backend)``) so each distinct call is computed once.
  Keys come from :class:`dvl_dask.keys.KeyFunction`: the function's code, the
  data it closes over and its canonical arguments, the same in every process.
* :func:`memcached` is the decorator form for a memcached server, with pyDVL's
  parameters; :class:`MemcachedConfig` and :class:`CachedFuncConfig` (for
  ``backend.wrap(fn, config=...)`` and ``Utility(..., cached_func_options=...)``)
  are pyDVL's option objects (see ``docs/pydvl-names.md``).
* Backends implement :class:`CacheBackend` and pass the conformance suite in
  :mod:`dvl_dask.cache.conformance`: :class:`InMemoryCacheBackend`,
  :class:`DiskCacheBackend`, :class:`MemcachedCacheBackend`.
* With ``allow_repeated_evaluations=True``, stochastic functions are averaged:
  :class:`RunningStats` per key, updated atomically.

Values in memcached and on disk are signed with HMAC-SHA256 and never
decoded unless the signature verifies. Numbers, numpy values and
:class:`RunningStats` (all a utility returns) are stored without pickle; only
other values are pickled. There is no built-in key: the secret comes from the
option ``dvl_dask.cache.hmac-key`` or the environment variable
``DVL_DASK_CACHE_KEY`` (read when the backend is built and carried with it to
workers), else a disk cache generates one in ``<dir>/.secret`` (mode 0600)
and a memcached backend generates one per backend object. Programs sharing a
memcached server must configure the same secret to share entries.

``pymemcache`` is imported only when a memcached backend is first used.
"""

from ._backend import HMAC_KEY_ENV, CacheBackend, check_key, resolve_hmac_key
from ._disk import DiskCacheBackend
from ._memcached import MemcachedCacheBackend, MemcachedClientConfig
from ._memoize import MemoizedFunction, memcached, memoize
from ._memory import InMemoryCacheBackend
from ._pydvl import CachedFuncConfig, MemcachedConfig
from ._stats import CacheStats, RunningStats

__all__ = [
    "HMAC_KEY_ENV",
    "CacheBackend",
    "CacheStats",
    "CachedFuncConfig",
    "DiskCacheBackend",
    "InMemoryCacheBackend",
    "MemcachedCacheBackend",
    "MemcachedClientConfig",
    "MemcachedConfig",
    "MemoizedFunction",
    "RunningStats",
    "check_key",
    "memcached",
    "memoize",
    "resolve_hmac_key",
]
