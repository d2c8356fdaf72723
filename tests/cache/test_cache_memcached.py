"""memcached end to end: several processes and workers, concurrency, failures, forged values."""

from __future__ import annotations

import json
import pickle
import subprocess
import time
import uuid
import warnings

import dask
import numpy as np
import pytest

from dvl_dask import Dataset, Utility
from dvl_dask.cache import (
    HMAC_KEY_ENV,
    MemcachedCacheBackend,
    MemcachedClientConfig,
    memoize,
)
from dvl_dask.cache.conformance import Unpicklable, _unpickled
from dvl_dask.errors import CacheUnavailableWarning


def _backend(server, **config) -> MemcachedCacheBackend:
    config.setdefault("timeout", 2.0)
    return MemcachedCacheBackend(MemcachedClientConfig(server=server.address, **config))


def _namespace() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


# -- a cluster shares hits ---------------------------------------------------------------------


@pytest.mark.memcached
@pytest.mark.slow
@pytest.mark.distributed
def test_two_distributed_workers_share_hits(local_cluster, memcached_server) -> None:
    from distributed import Client
    from sklearn.linear_model import LinearRegression

    def evaluate(fn, inputs):
        values = [fn(x) for x in inputs]
        return values, fn.stats.as_dict()

    def evaluate_utility(utility, coalitions):
        values = [utility(c) for c in coalitions]
        return values, utility._memoized.stats.as_dict()

    calls = []

    def slow_square(x):
        calls.append(x)
        return x * x

    square = memoize(slow_square, _backend(memcached_server), namespace=_namespace())
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 2))
    data = Dataset.from_arrays(x, x @ np.array([1.0, 2.0]), train_size=0.5, seed=0)
    with dask.config.set({"dvl_dask.cache.namespace": _namespace()}):
        utility = Utility(LinearRegression(), data, "r2", default_score=0.0, cache=_backend(memcached_server))
    coalitions = [[0, 1], [2, 3, 4], [1, 5, 6, 7], [7, 6, 5, 1]]
    expected = [Utility(LinearRegression(), data, "r2", default_score=0.0)(c) for c in coalitions]

    with Client(local_cluster, set_as_default=False) as client:
        worker_a, worker_b = sorted(client.scheduler_info()["workers"])[:2]
        values, stats = client.submit(evaluate, square, range(5), workers=[worker_a], pure=False).result()
        assert values == [0, 1, 4, 9, 16]
        assert (stats["misses"], stats["sets"], stats["hits"]) == (5, 5, 0)
        values, stats = client.submit(evaluate, square, range(5), workers=[worker_b], pure=False).result()
        assert values == [0, 1, 4, 9, 16]
        assert (stats["hits"], stats["misses"]) == (5, 0)

        values, stats = client.submit(
            evaluate_utility, utility, coalitions, workers=[worker_a], pure=False
        ).result()
        assert values == expected
        assert (stats["misses"], stats["hits"]) == (3, 1)  # the last coalition is the third, reordered
        values, stats = client.submit(
            evaluate_utility, utility, coalitions, workers=[worker_b], pure=False
        ).result()
        assert values == expected
        assert (stats["misses"], stats["hits"]) == (0, 4)
    assert calls == []  # nothing ran in this process
    assert [square(i) for i in range(5)] == [0, 1, 4, 9, 16] and square.stats.hits == 5


# -- concurrent repeated evaluations -------------------------------------------------------------

_HAMMER = """
import json, os, random, sys, time
from dvl_dask.cache import DiskCacheBackend, MemcachedCacheBackend, MemcachedClientConfig, memoize

kind, where, n, ready, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
if kind == "memcached":
    backend = MemcachedCacheBackend(MemcachedClientConfig(server=("127.0.0.1", int(where)), timeout=5.0))
else:
    backend = DiskCacheBackend(where)


def noisy(x):
    return random.random()


f = memoize(noisy, backend, namespace=sys.argv[6], allow_repeated_evaluations=True, rtol_stderr=0.0,
            max_repetitions=10**9)
f.cache_key(0)
open(ready, "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.002)
for _ in range(n):
    f(0)
print(json.dumps({"key": f.cache_key(0), "stats": backend.stats.as_dict()}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", [pytest.param("memcached", marks=pytest.mark.memcached), "disk"])
def test_concurrent_repeated_evaluations_from_processes_lose_nothing(
    kind, request, tmp_path, subprocess_env, python
) -> None:
    from dvl_dask.cache import DiskCacheBackend

    n_procs, n_evals = 3, 150
    server = request.getfixturevalue("memcached_server") if kind == "memcached" else None
    where = str(server.port) if server is not None else str(tmp_path / "disk")
    namespace = _namespace()
    go = tmp_path / "go"
    procs, ready = [], []
    for i in range(n_procs):
        ready.append(tmp_path / f"ready-{i}")
        procs.append(
            subprocess.Popen(
                [python, "-c", _HAMMER, kind, where, str(n_evals), str(ready[-1]), str(go), namespace],
                # separate programs sharing a memcached server share entries only with one secret
                env=dict(subprocess_env, DVL_DASK_CACHE_KEY="hammer-secret"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # all processes start hammering the same key together
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    keys = {r["key"] for r in results}
    assert len(keys) == 1
    for r in results:
        assert r["stats"]["errors"] == r["stats"]["timeouts"] == 0
        assert r["stats"]["sets"] == n_evals
    if server is not None:
        backend = MemcachedCacheBackend(
            MemcachedClientConfig(server=server.address, timeout=2.0), hmac_key="hammer-secret"
        )
    else:
        backend = DiskCacheBackend(where, hmac_key="hammer-secret")
    record = backend.get(keys.pop())
    assert record.count == n_procs * n_evals  # no update lost
    assert 0.0 < record.mean < 1.0 and record.variance > 0


# -- failures ---------------------------------------------------------------------------------------


def _expensive(x: int) -> float:
    return float(np.sin(x) * 10)


@pytest.mark.memcached
@pytest.mark.slow
def test_server_killed_mid_run_then_restarted(own_memcached_server, restart_memcached) -> None:
    server = own_memcached_server
    backend = _backend(server, timeout=0.5, reconnect_interval=0.0)
    f = memoize(_expensive, backend, namespace=_namespace())
    inputs = list(range(20))
    expected = [_expensive(x) for x in inputs]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = []
        for x in inputs:
            if x == 10:
                server.stop()
            got.append(f(x))
        again = [f(x) for x in inputs]  # first half: cache is gone with the server
    assert got == expected and again == expected
    unavailable = [w for w in caught if issubclass(w.category, CacheUnavailableWarning)]
    assert len(unavailable) == 1, [str(w.message) for w in caught]
    stats = f.stats
    assert stats.errors >= 10 + 20  # each call failed its get, misses also fail to set
    assert stats.hits == 0 and stats.sets == 10

    restarted = restart_memcached(server.port)
    assert restarted.port == server.port
    assert f(3) == expected[3]  # the new server is empty: a miss, stored
    assert f(3) == expected[3]
    stats = f.stats
    assert stats.hits == 1 and stats.sets == 11
    assert stats.reconnects >= 1


@pytest.mark.serial  # timing: 100 skipped lookups in 0.1 s
@pytest.mark.memcached
def test_reconnect_interval_skips_a_dead_server(own_memcached_server) -> None:
    backend = _backend(own_memcached_server, reconnect_interval=30.0)
    assert backend.set("k", 1)
    own_memcached_server.stop()
    with pytest.warns(CacheUnavailableWarning):
        assert backend.get("k") is None
    start = time.perf_counter()
    for _ in range(100):
        assert backend.get("k") is None  # skipped, not attempted
    assert time.perf_counter() - start < 0.1
    assert backend.stats.errors == 101


# -- signatures -------------------------------------------------------------------------------------


@pytest.mark.memcached
def test_forged_value_is_rejected_and_recomputed(memcached_server) -> None:
    from pymemcache.client.base import Client

    f = memoize(_expensive, _backend(memcached_server), namespace=_namespace())
    key = f.cache_key(5)
    raw = Client(memcached_server.address, default_noreply=False)
    assert raw.set(key, pickle.dumps(Unpicklable("memoize")))
    _unpickled.clear()
    assert f(5) == _expensive(5)
    assert _unpickled == []
    assert f.stats.rejected == 1 and f.stats.misses == 1 and f.stats.sets == 1
    assert f(5) == _expensive(5) and f.stats.hits == 1  # replaced by a signed value
    raw.close()


@pytest.mark.memcached
def test_secrets_from_config_and_environment(memcached_server, monkeypatch) -> None:
    namespace = _namespace()
    with dask.config.set({"dvl_dask.cache.hmac-key": "secret-from-config"}):
        writer = memoize(_expensive, _backend(memcached_server), namespace=namespace)
        writer(1)
    monkeypatch.setenv(HMAC_KEY_ENV, "another-secret")
    reader = memoize(_expensive, _backend(memcached_server), namespace=namespace)
    assert reader(1) == _expensive(1)
    assert reader.stats.rejected == 1
    explicit = memoize(
        _expensive,
        MemcachedCacheBackend(
            MemcachedClientConfig(server=memcached_server.address), hmac_key="another-secret"
        ),
        namespace=namespace,
    )
    assert explicit(1) == _expensive(1) and explicit.stats.hits == 1  # reader stored it with the env secret
