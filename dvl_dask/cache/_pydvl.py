"""pyDVL's configuration objects for caching: :class:`CachedFuncConfig`, :class:`MemcachedConfig`.

pyDVL counts ``min_repetitions`` as repetitions *after* the first evaluation
(a call is evaluated at least ``min_repetitions + 1`` times); :func:`memoize`
counts evaluations. :func:`memoize_options` translates, so code written for
pyDVL averages exactly as often as it did there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any

from ..errors import InvalidParameterError
from ..validation import check_bool, check_name, check_real
from ._memcached import MemcachedClientConfig, as_client_config

__all__ = ["CachedFuncConfig", "MemcachedConfig", "as_client_config", "memoize_options"]


def memoize_options(
    *,
    time_threshold: float,
    allow_repeated_evaluations: bool,
    rtol_stderr: float,
    min_repetitions: int,
    ignore_args: Collection[str] | None,
    hash_prefix: str | None = None,
    owner: str,
) -> dict[str, Any]:
    """Keyword arguments of :func:`memoize` for pyDVL's options (``min_repetitions`` + 1 evaluations).

    Every option is checked here, so pyDVL's configuration objects and :func:`memcached` refuse a bad value
    when they are built, not when a function is first wrapped. ``None`` (time and tolerance) reads the option.
    """
    for name, value in (("time_threshold", time_threshold), ("rtol_stderr", rtol_stderr)):
        if value is not None:
            check_real(value, name, owner, low=0.0)
    check_bool(allow_repeated_evaluations, "allow_repeated_evaluations", owner)
    if hash_prefix is not None:
        check_name(hash_prefix, "hash_prefix", owner)
    if ignore_args is not None and (
        isinstance(ignore_args, str) or not isinstance(ignore_args, Collection)
        or not all(isinstance(a, str) for a in ignore_args)
    ):
        raise InvalidParameterError(
            f"The 'ignore_args' parameter of {owner} must be a collection of parameter names (str), e.g. "
            f"['verbose']. Got {ignore_args!r:.60} instead."
        )
    if isinstance(min_repetitions, bool) or not isinstance(min_repetitions, int) or min_repetitions < 0:
        raise InvalidParameterError(
            f"The 'min_repetitions' parameter of {owner} must be an int >= 0 (repetitions after the first "
            f"evaluation, as in pyDVL). Got {min_repetitions!r} instead."
        )
    return {
        "namespace": hash_prefix,
        "ignore_args": None if ignore_args is None else list(ignore_args),
        "time_threshold": time_threshold,
        "allow_repeated_evaluations": allow_repeated_evaluations,
        "rtol_stderr": rtol_stderr,
        "min_repetitions": min_repetitions + 1,
    }


@dataclasses.dataclass
class CachedFuncConfig:
    """pyDVL's options of a cached function (``Utility(..., cached_func_options=...)``, ``backend.wrap``).

    Parameters
    ----------
    hash_prefix : str, optional
        First part of the keys (dvl_dask's ``namespace``).
    ignore_args : collection of str
        Parameters left out of the key.
    time_threshold : float
        Store only results that took longer than this many seconds.
    allow_repeated_evaluations : bool
        Average repeated evaluations of a stochastic function (see :func:`memoize`).
    rtol_stderr : float
        Stop repeating once the standard error is at most ``rtol_stderr * |mean|``.
    min_repetitions : int
        Repetitions after the first evaluation before a cached mean is returned
        (pyDVL's count: at least ``min_repetitions + 1`` evaluations).

    Examples
    --------
    >>> from dvl_dask.cache import InMemoryCacheBackend
    >>> f = InMemoryCacheBackend().wrap(abs, config=CachedFuncConfig(time_threshold=0.0))
    >>> f(-2), f(-2), f.stats.hits
    (2, 2, 1)
    """

    hash_prefix: str | None = None
    ignore_args: Collection[str] = dataclasses.field(default_factory=list)
    time_threshold: float = 0.3
    allow_repeated_evaluations: bool = False
    rtol_stderr: float = 0.1
    min_repetitions: int = 3

    def __post_init__(self) -> None:
        self.memoize_options()  # every option checked when built

    def memoize_options(self) -> dict[str, Any]:
        """These options as keyword arguments of :func:`memoize`."""
        return memoize_options(
            time_threshold=self.time_threshold,
            allow_repeated_evaluations=self.allow_repeated_evaluations,
            rtol_stderr=self.rtol_stderr,
            min_repetitions=self.min_repetitions,
            ignore_args=self.ignore_args,
            hash_prefix=self.hash_prefix,
            owner="CachedFuncConfig",
        )


@dataclasses.dataclass
class MemcachedConfig:
    """pyDVL's options of :func:`memcached`, so that ``memcached(**asdict(options))`` works.

    The fields are the parameters of :func:`memcached`; ``asdict`` turns
    ``client_config`` into a dict, which :func:`memcached` merges over the
    defaults of :class:`MemcachedClientConfig`.

    Examples
    --------
    >>> from dataclasses import asdict
    >>> options = MemcachedConfig(MemcachedClientConfig(server=("127.0.0.1", 11211)), time_threshold=0.0)
    >>> asdict(options)["client_config"]["server"]
    ('127.0.0.1', 11211)
    """

    client_config: MemcachedClientConfig = dataclasses.field(default_factory=MemcachedClientConfig)
    time_threshold: float = 0.3
    allow_repeated_evaluations: bool = False
    rtol_stderr: float = 0.1
    min_repetitions: int = 3
    ignore_args: Collection[str] | None = None

    def __post_init__(self) -> None:
        as_client_config(self.client_config, "MemcachedConfig")
        memoize_options(
            time_threshold=self.time_threshold, allow_repeated_evaluations=self.allow_repeated_evaluations,
            rtol_stderr=self.rtol_stderr, min_repetitions=self.min_repetitions, ignore_args=self.ignore_args,
            owner="MemcachedConfig",
        )
