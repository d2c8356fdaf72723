"""The conformance suite every :class:`~dvl_dask.cache.CacheBackend` passes (needs pytest).

Subclass :class:`CacheBackendTests` in a test module and give it a ``backend``
fixture returning a fresh, empty backend::

    class TestMyBackend(CacheBackendTests):
        @pytest.fixture
        def backend(self, tmp_path):
            return MyBackend(tmp_path)

Backends that sign what they store subclass :class:`SignedCacheBackendTests`
instead and also implement ``raw_set(backend, key, data)`` and
``raw_get(backend, key)``, back doors to the raw bytes under a key, so the
suite can check that forged and replayed entries are rejected unread.

This module is not imported by ``import dvl_dask.cache``; it imports pytest.
"""

from __future__ import annotations

import pickle
import threading
from typing import Any

import cloudpickle
import numpy as np
import pytest

from ..errors import InvalidParameterError
from ._backend import MAX_KEY_LENGTH, CacheBackend, Signer
from ._memoize import memoize
from ._stats import RunningStats

__all__ = ["CacheBackendTests", "SignedCacheBackendTests", "Unpicklable"]

_unpickled: list[str] = []


def _record_unpickling(tag: str) -> str:
    _unpickled.append(tag)
    return tag


class Unpicklable:
    """Unpickling this object records the fact: a canary for forged cache entries."""

    def __init__(self, tag: str = "forged") -> None:
        self.tag = tag

    def __reduce__(self) -> tuple[Any, ...]:
        return (_record_unpickling, (self.tag,))


class CacheBackendTests:
    """Behaviour shared by every cache backend. Subclasses provide a ``backend`` fixture."""

    @pytest.fixture
    def backend(self) -> CacheBackend:  # pragma: no cover - overridden
        raise NotImplementedError("Subclasses of CacheBackendTests must define a 'backend' fixture.")

    # -- get / set / delete / clear -------------------------------------------------------
    def test_is_a_cache_backend(self, backend: CacheBackend) -> None:
        assert isinstance(backend, CacheBackend)

    def test_missing_key_gives_default(self, backend: CacheBackend) -> None:
        assert backend.get("absent") is None
        sentinel = object()
        assert backend.get("absent", sentinel) is sentinel
        assert "absent" not in backend

    @pytest.mark.parametrize(
        "value",
        [0, -1.5, 2**70, "text", b"bytes", (1, "a"), {"b": [1, 2]}, np.arange(5.0), np.float64(0.25)],
        ids=lambda v: type(v).__name__,
    )
    def test_set_then_get_roundtrips(self, backend: CacheBackend, value: Any) -> None:
        assert backend.set("k", value) is True
        got = backend.get("k")
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(got, value)
        else:
            assert got == value
            assert type(got) is type(value)

    def test_none_value_is_not_a_miss(self, backend: CacheBackend) -> None:
        sentinel = object()
        assert backend.set("none", None)
        assert backend.get("none", sentinel) is None
        assert "none" in backend

    def test_overwrite(self, backend: CacheBackend) -> None:
        backend.set("k", 1)
        backend.set("k", 2)
        assert backend.get("k") == 2

    def test_delete(self, backend: CacheBackend) -> None:
        backend.set("k", 1)
        assert backend.delete("k") is True
        assert backend.get("k") is None
        assert backend.delete("k") is False

    def test_clear(self, backend: CacheBackend) -> None:
        for i in range(5):
            backend.set(f"k{i}", i)
        backend.clear()
        assert all(backend.get(f"k{i}") is None for i in range(5))
        backend.set("after", 1)
        assert backend.get("after") == 1

    def test_longest_key(self, backend: CacheBackend) -> None:
        key = "k" * MAX_KEY_LENGTH
        assert backend.set(key, 1)
        assert backend.get(key) == 1

    @pytest.mark.parametrize(
        "key", ["", "a b", "a\nb", "tab\t", "caf\u00e9", "k" * (MAX_KEY_LENGTH + 1), 12, b"bytes"]
    )
    def test_invalid_keys_raise(self, backend: CacheBackend, key: Any) -> None:
        with pytest.raises(InvalidParameterError, match="Cache keys must be"):
            backend.set(key, 1)
        with pytest.raises(InvalidParameterError, match="Cache keys must be"):
            backend.get(key)

    def test_stats_count_hits_misses_sets(self, backend: CacheBackend) -> None:
        before = backend.stats.as_dict()
        backend.get("nothing")
        backend.set("k", 1)
        backend.get("k")
        backend.get("k")
        after = backend.stats.as_dict()
        assert after["misses"] - before["misses"] == 1
        assert after["hits"] - before["hits"] == 2
        assert after["sets"] - before["sets"] == 1
        assert after["errors"] == before["errors"] == 0

    # -- atomic updates ---------------------------------------------------------------------
    def test_update_creates_then_changes(self, backend: CacheBackend) -> None:
        assert backend.update("n", lambda v: (v or 0) + 1) == 1
        assert backend.update("n", lambda v: (v or 0) + 1) == 2
        assert backend.get("n") == 2

    def test_update_refuses_none(self, backend: CacheBackend) -> None:
        with pytest.raises(InvalidParameterError, match="must return the new value"):
            backend.update("n", lambda v: None)

    def test_concurrent_updates_lose_nothing(self, backend: CacheBackend) -> None:
        n_threads, n_updates = 4, 25

        def work() -> None:
            for _ in range(n_updates):
                assert backend.update("counter", lambda v: (v or 0) + 1) is not None

        threads = [threading.Thread(target=work) for _ in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert backend.get("counter") == n_threads * n_updates

    # -- pickling ---------------------------------------------------------------------------
    @pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
    def test_pickled_backend_keeps_working(self, backend: CacheBackend, dumps: Any) -> None:
        backend.set("before", 1)
        backend.get("before")
        clone = pickle.loads(dumps(backend))
        assert isinstance(clone, type(backend))
        assert clone.stats.hits == 0  # counters are per process
        assert clone.get("before") == 1  # copied (memory) or shared (disk, memcached)
        assert clone.set("after", 2)
        assert clone.get("after") == 2
        if backend.shared:
            assert backend.get("after") == 2

    # -- memoization on top -----------------------------------------------------------------
    def test_memoize_hits_after_first_call(self, backend: CacheBackend) -> None:
        calls: list[int] = []

        def square(x: int) -> int:
            calls.append(x)
            return x * x

        f = memoize(square, backend, namespace="conformance")
        assert [f(3), f(3), f(4), f(3)] == [9, 9, 16, 9]
        assert calls == [3, 4]
        stats = f.stats
        assert (stats.hits, stats.misses, stats.sets) == (2, 2, 2)

    def test_repeated_evaluations_are_counted(self, backend: CacheBackend) -> None:
        values = iter([1.0, 3.0, 2.0, 2.0, 2.0, 2.0])

        def noisy(x: int) -> float:
            return next(values)

        f = memoize(noisy, backend, allow_repeated_evaluations=True, min_repetitions=3, rtol_stderr=0.5)
        assert f(0) == 1.0
        assert f(0) == 2.0  # the running mean
        assert f(0) == 2.0
        stats = f.statistics(0)
        assert isinstance(stats, RunningStats)
        assert (stats.count, stats.mean, stats.variance) == (3, 2.0, 1.0)
        assert f.converged(0)  # stderr 0.577 <= 0.5 * 2
        assert f(0) == 2.0  # converged: served from the cache
        assert f.statistics(0).count == 3



class SignedCacheBackendTests(CacheBackendTests):
    """The suite for backends that sign entries (disk, memcached): adds forgery checks."""

    def raw_set(self, backend: CacheBackend, key: str, data: bytes) -> None:  # pragma: no cover - overridden
        raise NotImplementedError("Subclasses of SignedCacheBackendTests must implement raw_set().")

    def raw_get(self, backend: CacheBackend, key: str) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError("Subclasses of SignedCacheBackendTests must implement raw_get().")

    def test_forged_entries_are_rejected_not_unpickled(self, backend: CacheBackend) -> None:
        # A well-formed entry signed with another key, and a bare pickle.
        self.raw_set(backend, "k1", Signer(b"not the right key").dumps("k1", Unpicklable("forged")))
        self.raw_set(backend, "k2", pickle.dumps(Unpicklable("forged")))
        _unpickled.clear()
        rejected = backend.stats.rejected
        sentinel = object()
        assert backend.get("k1", sentinel) is sentinel
        assert backend.get("k2", sentinel) is sentinel
        assert backend.stats.rejected == rejected + 2
        assert _unpickled == []

    def test_replayed_entries_are_rejected(self, backend: CacheBackend) -> None:
        # A correctly signed entry copied under another key does not verify there.
        backend.set("k3", 7)
        self.raw_set(backend, "k4", self.raw_get(backend, "k3"))
        assert backend.get("k4", "absent") == "absent"
        assert backend.get("k3") == 7

    def test_update_overwrites_a_forged_entry(self, backend: CacheBackend) -> None:
        self.raw_set(backend, "n", pickle.dumps(Unpicklable("forged")))
        _unpickled.clear()
        assert backend.update("n", lambda v: (v or 0) + 1) == 1
        assert _unpickled == []
        assert backend.get("n") == 1
