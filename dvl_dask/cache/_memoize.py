"""Memoization of functions (utilities) in a cache backend, with optional averaging."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import numbers
import sys
import time
import types
import warnings
from collections.abc import Callable, Collection, Mapping
from typing import Any, Generic, TypeVar

import numpy as np

from .. import config
from .._provenance import describe_utility, library_versions
from ..errors import CacheError, DvlDaskWarning, InvalidParameterError
from ..keys import KeyFunction, describe_parameters, graph_token
from ..validation import check_positive_int, check_real
from ._backend import CacheBackend
from ._memcached import MemcachedCacheBackend, MemcachedClientConfig
from ._stats import CacheStats, RunningStats

__all__ = ["MemoizedFunction", "memcached", "memoize"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_MISS = object()


class MemoizedFunction(Generic[T]):
    """A function whose results are kept in a :class:`CacheBackend`.

    Built by :func:`memoize` (or the :func:`memcached` decorator); see there
    for the parameters. Calling it looks the call's key up in the backend and
    runs the function only on a miss. It is picklable (with ``pickle`` when the
    function is importable, with ``cloudpickle`` always), so it can be sent to
    Dask workers, where it keeps working against the same backend.

    Attributes
    ----------
    backend : CacheBackend
        Where results live.
    key_function : KeyFunction
        Makes the keys; ``key_function.function_token`` identifies the code,
        the data it closes over and the memoization mode.

    Notes
    -----
    Entries hold values only. What their keys were made of is recorded once
    per function and process, beside them in the same backend (a signed JSON
    text under :attr:`provenance_key`, written with the first stored value):
    the function, its token, the options and -- for a bound method such as a
    Utility's -- its owner's provenance (model class and parameters, scorer,
    data fingerprint, library versions). Read it with :meth:`provenance`, or
    :meth:`describe_key` for one call. Hits never read or write it.
    """

    def __init__(
        self,
        fn: Callable[..., T],
        backend: CacheBackend,
        *,
        namespace: str | None = None,
        ignore_args: Collection[str] | None = None,
        subset_args: Collection[str] | None = None,
        time_threshold: float | None = None,
        allow_repeated_evaluations: bool | None = None,
        rtol_stderr: float | None = None,
        atol_stderr: float | None = None,
        min_repetitions: int | None = None,
        max_repetitions: int | None = None,
        signature: inspect.Signature | None = None,
        function_key: bytes | None = None,
    ) -> None:
        owner = "memoize"
        if not callable(fn):
            raise InvalidParameterError(
                f"The 'fn' argument of {owner} must be callable. Got {type(fn).__name__} instead."
            )
        if not isinstance(backend, CacheBackend):
            raise InvalidParameterError(
                f"The 'backend' argument of {owner} must be a dvl_dask.cache.CacheBackend. Got "
                f"{type(backend).__name__} instead. To fix, pass InMemoryCacheBackend(), "
                "DiskCacheBackend(path) or MemcachedCacheBackend(config)."
            )
        repeated = config.get(
            config.CACHE_ALLOW_REPEATED_EVALUATIONS, override_with=allow_repeated_evaluations
        )
        if not isinstance(repeated, (bool, np.bool_)):
            raise InvalidParameterError(
                f"The 'allow_repeated_evaluations' parameter of {owner} must be a bool. "
                f"Got {repeated!r} instead."
            )
        self.backend = backend
        self.allow_repeated_evaluations = bool(repeated)
        threshold = config.get(config.CACHE_TIME_THRESHOLD, override_with=time_threshold)
        self.time_threshold = check_real(threshold, "time_threshold", owner, low=0.0)
        self.rtol_stderr = check_real(
            config.get(config.CACHE_RTOL_STDERR, override_with=rtol_stderr), "rtol_stderr", owner, low=0.0
        )
        self.atol_stderr = check_real(
            config.get(config.CACHE_ATOL_STDERR, override_with=atol_stderr), "atol_stderr", owner, low=0.0
        )
        self.min_repetitions = check_positive_int(
            config.get(config.CACHE_MIN_REPETITIONS, override_with=min_repetitions), "min_repetitions", owner
        )
        max_reps = config.get(config.CACHE_MAX_REPETITIONS, override_with=max_repetitions)
        if isinstance(max_reps, float) and max_reps == math.inf:
            max_reps = None  # math.inf: no cap (None as an argument means "read the config")
        if max_reps is not None:
            max_reps = check_positive_int(max_reps, "max_repetitions", owner)
            if max_reps < self.min_repetitions:
                raise InvalidParameterError(
                    f"The 'max_repetitions' parameter of {owner} must be >= min_repetitions "
                    f"({self.min_repetitions}). Got {max_reps} instead."
                )
        self.max_repetitions: int | None = max_reps
        self.key_function = KeyFunction(
            fn,
            namespace=namespace,
            ignore_args=ignore_args,
            subset_args=subset_args,
            signature=signature,
            salt=("repeated",) if self.allow_repeated_evaluations else (),
            function_key=function_key,
        )
        functools.update_wrapper(self, fn)  # __wrapped__, __name__, __qualname__, __module__, __doc__
        if "__qualname__" not in self.__dict__:  # e.g. a functools.partial or a callable instance
            self.__qualname__ = self.__name__ = type(fn).__qualname__
        self._own = CacheStats()
        self._warned_uncacheable = False
        self._provenance_recorded = False

    # -- calling ------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> T:
        key = self.key_function(args, kwargs)
        if self.allow_repeated_evaluations:
            return self._call_repeated(key, args, kwargs)
        value = self.backend.get(key, _MISS)
        if value is not _MISS:
            self._own.increment("hits")
            logger.debug("cache hit %s", key)
            return value
        self._own.increment("misses")
        start = time.perf_counter()
        value = self.__wrapped__(*args, **kwargs)
        elapsed = time.perf_counter() - start
        if elapsed > self.time_threshold or self.time_threshold <= 0:
            try:
                stored = self.backend.set(key, value)
            except CacheError as exc:
                stored = False
                self._warn_uncacheable(exc)
            if stored:
                self._own.increment("sets")
                self._record_provenance()
            logger.debug("cache miss %s: computed in %.3g s, %s", key, elapsed, "stored" if stored else "not stored")
        else:
            logger.debug("cache miss %s: computed in %.3g s, under time-threshold %g s: not stored", key, elapsed,
                         self.time_threshold)
        return value

    def _call_repeated(self, key: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        record = self.backend.get(key)
        if isinstance(record, RunningStats) and self._converged(record):
            self._own.increment("hits")
            return record.mean
        self._own.increment("misses")
        value = self.__wrapped__(*args, **kwargs)
        sample = _as_real(value, self.__qualname__)

        def add(current: Any) -> RunningStats:
            base = current if isinstance(current, RunningStats) else RunningStats()
            return base.add(sample)

        new = self.backend.update(key, add)
        if new is None:  # the backend is unavailable: the fresh value is all we have
            return value
        self._own.increment("sets")
        self._record_provenance()
        return new.mean

    def _converged(self, record: RunningStats) -> bool:
        return record.converged(
            rtol=self.rtol_stderr,
            atol=self.atol_stderr,
            min_count=self.min_repetitions,
            max_count=self.max_repetitions,
        )

    def _warn_uncacheable(self, exc: Exception) -> None:
        if not self._warned_uncacheable:
            self._warned_uncacheable = True
            message = f"{exc} Results of {self.__qualname__} are not cached."
            warnings.warn(message, DvlDaskWarning, stacklevel=3)

    # -- provenance ---------------------------------------------------------------------------
    @property
    def provenance_key(self) -> str:
        """The key of this function's provenance record: ``"<namespace>:provenance:<function token>"``."""
        return f"{self.key_function.namespace}:provenance:{self.key_function.function_token}"

    def describe(self) -> dict[str, Any]:
        """What this function's keys are made of, as a JSON-serialisable dict (computed here, not read).

        The function's name and module, its token (code, captured state and
        memoization mode: the part every key of this function starts from),
        the namespace and options, the provenance of the object a bound method
        belongs to (e.g. :meth:`dvl_dask.Utility.provenance`) and the library versions.
        """
        fn = self.__wrapped__
        owner = getattr(fn, "__self__", None)
        described: dict[str, Any] = {
            "function": self.__qualname__,
            "module": getattr(fn, "__module__", None) or getattr(type(fn), "__module__", None),
            "function_token": self.key_function.function_token,
            "namespace": self.key_function.namespace,
            "options": describe_parameters(self.options, tokens=False),
            "versions": library_versions(),
        }
        if owner is not None and not isinstance(owner, types.ModuleType):
            described["owner"] = describe_utility(owner)
        return described

    def provenance(self) -> dict[str, Any] | None:
        """The provenance record stored in the backend for this function (see :meth:`describe`), or None.

        None means that no value of this function was stored yet by a process
        that records provenance, or that the backend cannot be reached.
        """
        text = _uncounted(self.backend, "get", self.provenance_key, None)
        if not isinstance(text, str):
            return None
        try:
            found = json.loads(text)
        except ValueError:
            return None
        return found if isinstance(found, dict) else None

    def describe_key(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """What the key of ``self(*args, **kwargs)`` is made of: the key, the canonical arguments, the function.

        ``"function"`` is the stored provenance record (:meth:`provenance`) if
        there is one, else what this process would record (:meth:`describe`);
        ``"stored"`` says which, and ``"cached"`` whether a value is stored under the key.
        """
        key = self.key_function(args, kwargs)
        bound = {  # small arrays (coalitions) shown as their values
            name: value.tolist() if isinstance(value, np.ndarray) and value.size <= 64 else value
            for name, value in self.key_function.bind(args, kwargs).items()
        }
        stored = self.provenance()
        return {
            "key": key,
            "arguments": describe_parameters(bound),
            "function": stored if stored is not None else self.describe(),
            "stored": stored is not None,
            "cached": _uncounted(self.backend, "get", key, _MISS) is not _MISS,
        }

    def _record_provenance(self) -> None:
        """Store the provenance record once per process, after the first stored value (never on hits)."""
        if self.__dict__.get("_provenance_recorded", False):
            return
        self._provenance_recorded = True
        try:
            text = json.dumps(self.describe(), sort_keys=True, default=repr)
        except Exception as exc:  # a description must never break a computation
            warnings.warn(
                f"The provenance of {self.__qualname__} could not be recorded in its cache ({type(exc).__name__}: "
                f"{exc}); its values are cached as usual.",
                DvlDaskWarning,
                stacklevel=4,
            )
            return
        try:
            _uncounted(self.backend, "set", self.provenance_key, text)
        except CacheError as exc:
            self._warn_uncacheable(exc)

    # -- inspection -------------------------------------------------------------------------
    @property
    def options(self) -> dict[str, Any]:
        """The resolved options, as keyword arguments of :func:`memoize` (to rebuild it elsewhere)."""
        key = self.key_function
        return {
            "namespace": key.namespace,
            "ignore_args": sorted(key.ignore_args),
            "subset_args": sorted(key.subset_args),
            "time_threshold": self.time_threshold,
            "allow_repeated_evaluations": self.allow_repeated_evaluations,
            "rtol_stderr": self.rtol_stderr,
            "atol_stderr": self.atol_stderr,
            "min_repetitions": self.min_repetitions,
            # math.inf, not None: None as an argument would mean "read the config" and lose "no cap".
            "max_repetitions": math.inf if self.max_repetitions is None else self.max_repetitions,
        }

    @property
    def stats(self) -> CacheStats:
        """Counters of this function in this process.

        ``hits``, ``misses`` and ``sets`` count calls of this function (a hit
        did not run it). ``timeouts``, ``errors``, ``reconnects`` and
        ``rejected`` are those of its backend, shared by every function that
        uses the same backend object. A snapshot: read it again to update.
        """
        own = self._own.as_dict()
        backend = self.backend.stats.as_dict()
        return CacheStats(
            hits=own["hits"],
            misses=own["misses"],
            sets=own["sets"],
            timeouts=backend["timeouts"],
            errors=backend["errors"],
            reconnects=backend["reconnects"],
            rejected=backend["rejected"],
        )

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        """The key under which ``self(*args, **kwargs)`` is stored."""
        return self.key_function(args, kwargs)

    def statistics(self, *args: Any, **kwargs: Any) -> RunningStats | None:
        """Mean, variance, count and stderr of the evaluations of ``self(*args, **kwargs)``.

        Only with ``allow_repeated_evaluations=True``. Returns None when the
        call has not been evaluated (or the backend cannot be reached).
        """
        if not self.allow_repeated_evaluations:
            raise InvalidParameterError(
                f"statistics() of {self.__qualname__} needs allow_repeated_evaluations=True; this function "
                "stores single values. To fix, memoize it with allow_repeated_evaluations=True."
            )
        record = self.backend.get(self.key_function(args, kwargs))
        return record if isinstance(record, RunningStats) else None

    def converged(self, *args: Any, **kwargs: Any) -> bool:
        """Whether ``self(*args, **kwargs)`` stopped repeating (always True without repetitions)."""
        if not self.allow_repeated_evaluations:
            return True
        record = self.statistics(*args, **kwargs)
        return record is not None and self._converged(record)

    # -- protocols --------------------------------------------------------------------------
    def __dask_tokenize__(self) -> Any:
        # The wrapped function by code and state (dvl_dask.keys.graph_token): two memoized functions
        # with different code or captured values never share a key. Strict inside a persisted
        # identity (object_token); inside one process's graph an unhashable function gets a key of
        # its own instead of an error.
        return ("memoized", graph_token(self.__wrapped__))

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        # Used as a method decorator: bind the instance like a function would.
        return self if obj is None else _BoundMemoizedFunction(self, obj)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_own"] = CacheStats()  # counters are per process
        state["_warned_uncacheable"] = False
        state["_provenance_recorded"] = False  # recorded once per process
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __reduce__(self) -> str | tuple[Any, ...]:
        # A module-level function decorated in place is pickled by name, like the
        # function it replaces; anything else by value.
        name = self._global_name()
        if name is not None:
            # By name, with the backend: its secret (possibly generated here, or configured after
            # the workers started) must reach the copy the worker's import creates.
            return (_resolve_named, (self.__module__, self.__qualname__, self.backend))
        return (_rebuild, (self.__getstate__(),))

    def _global_name(self) -> str | None:
        module = getattr(self, "__module__", None)
        qualname = getattr(self, "__qualname__", None)
        if not module or not qualname or module == "__main__" or "<locals>" in qualname:
            return None
        obj: Any = sys.modules.get(module)
        for part in qualname.split("."):
            obj = getattr(obj, part, None)
        return qualname if obj is self else None

    def __repr__(self) -> str:
        mode = ", repeated" if self.allow_repeated_evaluations else ""
        return f"<memoized {self.__qualname__} in {self.backend!r}{mode}>"


class _BoundMemoizedFunction:
    """A memoized function decorating a method, bound to an instance (which enters the key)."""

    __slots__ = ("__func__", "__self__")

    def __init__(self, func: MemoizedFunction[Any], obj: Any) -> None:
        self.__func__ = func
        self.__self__ = obj

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__func__(self.__self__, *args, **kwargs)

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        return self.__func__.cache_key(self.__self__, *args, **kwargs)

    def statistics(self, *args: Any, **kwargs: Any) -> RunningStats | None:
        return self.__func__.statistics(self.__self__, *args, **kwargs)

    def converged(self, *args: Any, **kwargs: Any) -> bool:
        return self.__func__.converged(self.__self__, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__func__, name)

    def __repr__(self) -> str:
        return f"<bound {self.__func__!r} of {self.__self__!r}>"


def _uncounted(backend: CacheBackend, action: str, key: str, argument: Any) -> Any:
    """``backend.get(key, argument)`` or ``backend.set(key, argument)`` left out of the hit/miss/set counters.

    Provenance records and inspection are not values: the counters keep
    describing the memoized calls (pyDVL's meaning). Failures (errors,
    timeouts) still count.
    """
    counters = ("hits", "misses") if action == "get" else ("sets",)
    before = backend.stats.as_dict()
    result = backend.get(key, argument) if action == "get" else backend.set(key, argument)
    after = backend.stats.as_dict()
    for counter in counters:
        if after[counter] > before[counter]:
            backend.stats.increment(counter, -1)
    return result


def _resolve_named(module: str, qualname: str, backend: CacheBackend) -> MemoizedFunction[Any]:
    """The module-level memoized function ``module.qualname``, using ``backend`` (and its secret)."""
    import importlib

    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, MemoizedFunction):
        raise CacheError(f"{module}.{qualname} is no longer a memoized function; cannot unpickle it.")
    if obj.backend is backend or getattr(obj.backend, "__dict__", {}).get("_secret") == backend.__dict__.get(
        "_secret"
    ):
        return obj
    copy = MemoizedFunction.__new__(MemoizedFunction)
    copy.__dict__.update(obj.__dict__)
    copy.backend = backend
    copy._own = CacheStats()
    copy._provenance_recorded = False
    return copy


def _rebuild(state: dict[str, Any]) -> MemoizedFunction[Any]:
    obj = MemoizedFunction.__new__(MemoizedFunction)
    obj.__setstate__(state)
    return obj


def _as_real(value: Any, name: str) -> float:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0 and np.issubdtype(value.dtype, np.number):
        return float(value)
    raise InvalidParameterError(
        f"With allow_repeated_evaluations=True, {name} must return a real number to average. "
        f"Got {type(value).__name__} instead. To fix, return a float or memoize without repetitions."
    )


def memoize(
    fn: Callable[..., T],
    backend: CacheBackend,
    *,
    namespace: str | None = None,
    ignore_args: Collection[str] | None = None,
    time_threshold: float | None = None,
    allow_repeated_evaluations: bool | None = None,
    rtol_stderr: float | None = None,
    min_repetitions: int | None = None,
    signature: inspect.Signature | None = None,
    subset_args: Collection[str] | None = None,
    atol_stderr: float | None = None,
    max_repetitions: int | None = None,
    function_key: bytes | None = None,
) -> MemoizedFunction[T]:
    """Keep the results of ``fn`` in ``backend``, keyed by code, data and arguments.

    The key of a call (see :class:`dvl_dask.keys.KeyFunction`) digests the
    code of ``fn`` (bytecode and constants, recursively, and the helpers it
    calls in its module), the state it carries -- for a bound method its
    owner's ``__dask_tokenize__``, e.g. a Utility's data fingerprint, model
    and scorer -- and its arguments in canonical form. It is the same in every
    process, machine and run, so workers share entries through a shared
    backend, and it never silently changes (it raises
    :class:`~dvl_dask.errors.TokenizationError` for state it cannot hash).

    Parameters
    ----------
    fn : callable
        The function to memoize. Its results must be picklable for the disk
        and memcached backends.
    backend : CacheBackend
        Where results live: :class:`InMemoryCacheBackend`,
        :class:`DiskCacheBackend` or :class:`MemcachedCacheBackend`.
    namespace : str, optional
        First part of the keys. Default ``dvl_dask.cache.namespace`` (``"dvl"``).
    ignore_args : collection of str, optional
        Parameters left out of the key (they must not change the result).
    time_threshold : float, optional
        Store only results whose computation took longer than this many
        seconds. Default ``dvl_dask.cache.time-threshold`` (0.0: store all).
    allow_repeated_evaluations : bool, optional
        For stochastic functions returning a real number: keep a running mean,
        variance and count per key, updated atomically in the backend, and
        evaluate again until the mean is precise enough (see Notes); calls
        return the running mean. Default
        ``dvl_dask.cache.allow-repeated-evaluations`` (False).
    rtol_stderr : float, optional
        Stop repeating once ``stderr <= rtol_stderr * |mean|``. Default
        ``dvl_dask.cache.rtol-stderr`` (0.1).
    min_repetitions : int, optional
        Evaluate at least this often before stopping. Default
        ``dvl_dask.cache.min-repetitions`` (3).
    signature : inspect.Signature, optional
        Signature used to bind arguments to names (for ``ignore_args``), for
        callables :func:`inspect.signature` cannot read.
    subset_args : collection of str, optional
        Parameters that hold a coalition: their indices are sorted and made
        unique for the key, so equal coalitions in any order share an entry
        (``fn`` still receives them as given).
    atol_stderr : float, optional
        Also stop once ``stderr <= atol_stderr``. Default
        ``dvl_dask.cache.atol-stderr`` (0.0).
    max_repetitions : int or math.inf, optional
        Stop after this many evaluations in any case; ``math.inf`` means no
        cap. Default ``dvl_dask.cache.max-repetitions`` (100); None in the
        config means no cap. The resolved options (:attr:`MemoizedFunction.options`)
        rebuild the same function exactly in any process.
    function_key : bytes, optional
        Stands for ``fn`` in the keys instead of its code and state (what
        pyDVL's ``signature`` bytes do): every function memoized with the same
        bytes shares entries.

    Returns
    -------
    MemoizedFunction
        Callable like ``fn``, with ``.stats`` (:class:`CacheStats`),
        ``.cache_key(*args)``, ``.statistics(*args)`` (:class:`RunningStats`)
        and ``.backend``. It survives ``cloudpickle`` to Dask workers.

    Notes
    -----
    With repetitions, a call returns the cached mean without evaluating once
    ``count >= min_repetitions`` and ``stderr <= max(rtol_stderr * |mean|,
    atol_stderr)``, or ``count >= max_repetitions``. The tolerance is relative
    to ``|mean|``, so negative utilities stop as positive ones do; a mean of
    exactly zero stops when evaluations agree exactly (stderr 0), else at
    ``atol_stderr`` or ``max_repetitions``. Every evaluation is recorded even
    when ``time_threshold`` would skip it.

    Examples
    --------
    >>> from dvl_dask.cache import InMemoryCacheBackend, memoize
    >>> calls = []
    >>> def size(players):
    ...     calls.append(1)
    ...     return len(players)
    >>> f = memoize(size, InMemoryCacheBackend(), subset_args=["players"])
    >>> f([1, 2, 3]), f([3, 2, 1]), len(calls)
    (3, 3, 1)
    >>> f.stats.hits, f.stats.misses
    (1, 1)
    """
    return MemoizedFunction(
        fn,
        backend,
        namespace=namespace,
        ignore_args=ignore_args,
        subset_args=subset_args,
        time_threshold=time_threshold,
        allow_repeated_evaluations=allow_repeated_evaluations,
        rtol_stderr=rtol_stderr,
        atol_stderr=atol_stderr,
        min_repetitions=min_repetitions,
        max_repetitions=max_repetitions,
        signature=signature,
        function_key=function_key,
    )


def memcached(
    client_config: MemcachedClientConfig | Mapping[str, Any] | None = None,
    time_threshold: float = 0.3,
    allow_repeated_evaluations: bool = False,
    rtol_stderr: float = 0.1,
    min_repetitions: int = 3,
    ignore_args: Collection[str] | None = None,
    *,
    namespace: str | None = None,
    subset_args: Collection[str] | None = None,
    hmac_key: bytes | str | None = None,
) -> Callable[..., MemoizedFunction[Any]]:
    """Decorator: memoize a function in a memcached server (pyDVL's ``memcached``).

    ``memcached(...)(fn)`` is ``memoize(fn, MemcachedCacheBackend(client_config), ...)``
    with pyDVL's parameters, defaults and meaning, so pyDVL code such as
    ``memcached(**asdict(MemcachedConfig(...)))(fn, signature=b"...")`` runs
    unchanged. See :func:`memoize` for what the options do.

    Parameters
    ----------
    client_config : MemcachedClientConfig or dict, optional
        Server and timeouts; a dict (e.g. from :func:`dataclasses.asdict`) is
        merged over the defaults of :class:`MemcachedClientConfig`
        (``localhost:11211``).
    time_threshold : float
        Store only results that took longer than this many seconds.
    allow_repeated_evaluations : bool
        Average repeated evaluations of a stochastic function.
    rtol_stderr : float
        Stop repeating once the standard error is at most ``rtol_stderr * |mean|``.
    min_repetitions : int
        Repetitions after the first evaluation, as in pyDVL: a call is
        evaluated at least ``min_repetitions + 1`` times (``memoize``'s
        ``min_repetitions`` counts evaluations: this passes ``min_repetitions + 1``).
    ignore_args : collection of str, optional
        Parameters left out of the key.
    namespace, subset_args
        As in :func:`memoize` (dvl_dask only).
    hmac_key : bytes or str, optional
        Secret that signs values, see :class:`MemcachedCacheBackend` (dvl_dask only).

    Returns
    -------
    callable
        ``wrapper(fn, signature=None) -> MemoizedFunction``. ``signature`` is
        either bytes that stand for ``fn`` in the keys instead of its code
        (pyDVL's meaning: functions given the same bytes share entries) or an
        :class:`inspect.Signature` to bind the arguments of callables whose
        signature cannot be read. The memoized function has ``.stats``
        (sets, misses, hits, timeouts, errors, reconnects, rejected).

    Examples
    --------
    >>> @memcached(MemcachedClientConfig(server=("127.0.0.1", 11211)), time_threshold=0.0)
    ... def slow_square(x):
    ...     return x * x
    >>> slow_square.stats.hits  # no server contacted yet
    0
    >>> slow_square.min_repetitions  # pyDVL's 3 repetitions after the first evaluation
    4
    """
    from ._pydvl import as_client_config, memoize_options

    config = as_client_config(client_config, "memcached")
    options = memoize_options(
        time_threshold=time_threshold,
        allow_repeated_evaluations=allow_repeated_evaluations,
        rtol_stderr=rtol_stderr,
        min_repetitions=min_repetitions,
        ignore_args=ignore_args,
        owner="memcached",
    )
    options["namespace"] = namespace

    def wrapper(
        fn: Callable[..., T], signature: bytes | inspect.Signature | None = None
    ) -> MemoizedFunction[T]:
        if signature is not None and not isinstance(signature, (bytes, inspect.Signature)):
            raise InvalidParameterError(
                "The 'signature' argument of the memcached wrapper must be bytes (a key for the function, as "
                f"in pyDVL) or an inspect.Signature. Got {type(signature).__name__} instead."
            )
        return memoize(
            fn,
            MemcachedCacheBackend(config, hmac_key=hmac_key),
            subset_args=subset_args,
            signature=signature if isinstance(signature, inspect.Signature) else None,
            function_key=signature if isinstance(signature, bytes) else None,
            **options,
        )

    return wrapper
