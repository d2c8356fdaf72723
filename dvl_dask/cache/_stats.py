"""Counters of cache events and running statistics of repeated evaluations."""

from __future__ import annotations

import dataclasses
import math
import numbers
import threading
from typing import Any

from ..errors import InvalidParameterError

__all__ = ["CacheStats", "RunningStats"]

_COUNTERS = ("hits", "misses", "sets", "timeouts", "errors", "reconnects", "rejected")


def _check_count(value: Any, name: str, owner: str) -> None:
    """A counter: a non-negative int (numpy's too), never a bool or a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise InvalidParameterError(
            f"The '{name}' field of {owner} must be an int >= 0 (a count). Got {type(value).__name__} "
            f"{value!r:.60} instead."
        )


@dataclasses.dataclass(eq=False)
class CacheStats:
    """Counters of what a cache backend or a memoized function did.

    Attributes
    ----------
    hits : int
        Lookups answered from the cache (for a memoized function: calls that
        did not run the function).
    misses : int
        Lookups that found nothing usable (the function ran).
    sets : int
        Values (or running statistics) stored.
    timeouts : int
        Operations that timed out (memcached).
    errors : int
        Operations that failed otherwise: connection refused, server errors,
        values too large, unwritable files.
    reconnects : int
        Times the memcached client reconnected after the server closed the
        connection.
    rejected : int
        Stored entries whose signature did not verify; they were treated as
        misses and never unpickled.

    Notes
    -----
    Counters are per process: a backend or memoized function sent to a
    worker starts counting from zero there. Updates are thread-safe.

    Examples
    --------
    >>> stats = CacheStats()
    >>> stats.increment("hits")
    >>> stats.hits, stats.misses
    (1, 0)
    """

    hits: int = 0
    misses: int = 0
    sets: int = 0
    timeouts: int = 0
    errors: int = 0
    reconnects: int = 0
    rejected: int = 0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in _COUNTERS:
            _check_count(getattr(self, name), name, "CacheStats")

    def increment(self, counter: str, n: int = 1) -> None:
        """Add ``n`` to ``counter`` (one of the attributes) atomically."""
        with self._lock:
            setattr(self, counter, getattr(self, counter) + n)

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (e.g. to return from a dask task)."""
        with self._lock:
            return {name: getattr(self, name) for name in _COUNTERS}

    def reset(self) -> None:
        """Set every counter to zero."""
        with self._lock:
            for name in _COUNTERS:
                setattr(self, name, 0)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CacheStats):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    def __getstate__(self) -> dict[str, Any]:
        return self.as_dict()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class RunningStats:
    """Mean, variance and count of repeated evaluations of one call (Welford).

    Instances are immutable; :meth:`add` returns the statistics with one more
    sample, which is what backends store atomically.

    Attributes
    ----------
    count : int
        Number of evaluations.
    mean : float
        Their mean.
    m2 : float
        Sum of squared deviations from the mean.

    Examples
    --------
    >>> s = RunningStats().add(1.0).add(3.0)
    >>> s.count, s.mean, s.variance
    (2, 2.0, 2.0)
    """

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def __post_init__(self) -> None:
        _check_count(self.count, "count", "RunningStats")
        for name in ("mean", "m2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise InvalidParameterError(
                    f"The '{name}' field of RunningStats must be a real number. Got {type(value).__name__} "
                    f"{value!r:.60} instead."
                )

    def add(self, value: float) -> RunningStats:
        """The statistics after one more evaluation ``value``."""
        count = self.count + 1
        delta = value - self.mean
        mean = self.mean + delta / count
        return RunningStats(count, mean, self.m2 + delta * (value - mean))

    @property
    def variance(self) -> float:
        """Sample variance (``ddof=1``); NaN with fewer than two evaluations."""
        return self.m2 / (self.count - 1) if self.count > 1 else math.nan

    @property
    def stderr(self) -> float:
        """Standard error of the mean; infinite with fewer than two evaluations."""
        return math.sqrt(max(self.variance, 0.0) / self.count) if self.count > 1 else math.inf

    def converged(
        self, *, rtol: float, atol: float = 0.0, min_count: int = 1, max_count: int | None = None
    ) -> bool:
        """Whether to stop repeating: enough evaluations and a small enough stderr.

        True once ``count >= min_count`` and ``stderr <= max(rtol * |mean|, atol)``,
        or once ``count >= max_count``. The tolerance is relative to ``|mean|``,
        so negative means stop too; a mean of exactly zero stops only when the
        evaluations agree exactly (stderr 0) or ``atol``/``max_count`` allow it.
        """
        if max_count is not None and self.count >= max_count:
            return True
        if self.count < max(min_count, 1):
            return False
        return self.stderr <= max(rtol * abs(self.mean), atol)
