"""Cache overhead per call, and the speed-up of reusing a cached utility across methods.

Run:  .venv/bin/python benchmarks/bench_cache.py [--n-points 10] [--parts overhead,methods,cluster]

Part 1 times a memoized function of a 10-player coalition (what a Utility
passes) with each backend: the overhead of a hit and of a miss followed by a
set, i.e. the time per call minus the time of the bare function. Targets:
memory < 10 µs, memcached < 300 µs per hit on loopback.

Part 1b ("roundtrip") times, call by call and interleaved, a memoized hit
through memcached next to a raw pymemcache get of the same item: the hit can
never be faster than the round trip it contains.

Part 2 runs ``exact_shapley(utility)`` and then ``loo(utility)`` on one cached
utility. Every coalition leave-one-out needs was already evaluated by exact
Shapley, so the second method should fit no model at all.

A memcached server is started on a free loopback port (``memcached`` must be
installed) and stopped at the end.
"""

from __future__ import annotations

import os

# One BLAS thread per process, as dask workers get: on 2 shared cores, multithreaded BLAS
# makes each small fit ~10x slower and the timings meaningless. Set before numpy loads.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

_FIT_LOCK = threading.Lock()
FITS = [0]


def _counting_model():
    from sklearn.linear_model import LogisticRegression

    class CountingLogisticRegression(LogisticRegression):
        def fit(self, X, y, sample_weight=None):
            with _FIT_LOCK:
                FITS[0] += 1
            return super().fit(X, y, sample_weight=sample_weight)

    return CountingLogisticRegression


def _data(n_points: int):
    from sklearn.datasets import load_wine

    from dvl_dask import Dataset

    return Dataset.from_sklearn(load_wine, train_size=n_points / 178, seed=0, stratify=True)


def _per_call(fn, args_list, repeats: int = 3) -> float:
    """Best-of-``repeats`` mean seconds per call of ``fn`` over ``args_list``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for a in args_list:
            fn(a)
        best = min(best, (time.perf_counter() - start) / len(args_list))
    return best


def overheads(backends: dict, n_calls: dict) -> None:
    from dvl_dask.cache import memoize

    def score(players: np.ndarray) -> float:
        return float(players.sum()) / 7.0

    rng = np.random.default_rng(0)
    print("\n== Per-call overhead of a memoized function (10-player coalition; bare call subtracted) ==")
    print(f"{'backend':<10} {'hit µs':>9} {'target':>9} {'miss+set µs':>12}   verdict")
    targets = {"memory": 10.0, "memcached": 300.0}
    for name, backend in backends.items():
        n = n_calls[name]
        coalitions = [np.sort(rng.choice(64, size=10, replace=False)).astype(np.int64) for _ in range(n)]
        bare = _per_call(score, coalitions)
        f = memoize(score, backend, namespace=f"bench-{time.time_ns()}")
        # miss + set: every call a new coalition (fresh namespace per repeat)
        miss = float("inf")
        for r in range(3):
            f = memoize(score, backend, namespace=f"bench-{time.time_ns()}-{r}")
            miss = min(miss, _per_call(f, coalitions, repeats=1))
        hit_args = [coalitions[0]] * n
        f(coalitions[0])
        hit = _per_call(f, hit_args)
        hit_us, miss_us = (hit - bare) * 1e6, (miss - bare) * 1e6
        target = targets.get(name)
        verdict = "-" if target is None else ("OK" if hit_us < target else "SLOWER THAN TARGET")
        target_s = f"< {target:g}" if target else "-"
        print(f"{name:<10} {hit_us:9.1f} {target_s:>9} {miss_us:12.1f}   {verdict}")


def roundtrip(server_address, n_calls: int = 3000) -> None:
    """A memoized hit through memcached next to a raw pymemcache get of the same stored bytes.

    Both are timed call by call, interleaved in one loop (so foreign load hits
    both alike), on one connection each with the same client options. The raw
    get fetches the very item the hit reads (same key, same size); the hit
    adds key hashing, HMAC verification and unpickling to it.
    """
    from pymemcache.client.base import Client

    from dvl_dask.cache import MemcachedCacheBackend, MemcachedClientConfig, memoize

    def score(players: np.ndarray) -> float:
        return float(players.sum()) / 7.0

    cfg = MemcachedClientConfig(server=server_address, timeout=1.0)
    f = memoize(score, MemcachedCacheBackend(cfg), namespace=f"roundtrip-{time.time_ns()}")
    coalition = np.arange(0, 20, 2, dtype=np.int64)
    f(coalition)  # miss + set: the item now exists
    key = f.cache_key(coalition)
    raw = Client(cfg.server, connect_timeout=cfg.connect_timeout, timeout=cfg.timeout, no_delay=cfg.no_delay,
                 default_noreply=False, allow_unicode_keys=False)
    size = len(raw.get(key))
    raw_ns, hit_ns, bare_ns = np.empty(n_calls), np.empty(n_calls), np.empty(n_calls)
    clock = time.perf_counter_ns
    for i in range(n_calls):
        t0 = clock()
        raw.get(key)
        t1 = clock()
        f(coalition)
        t2 = clock()
        score(coalition)
        t3 = clock()
        raw_ns[i], hit_ns[i], bare_ns[i] = t1 - t0, t2 - t1, t3 - t2
    raw.close()
    print(f"\n== memcached round trip vs a memoized hit ({n_calls} interleaved calls, {size}-byte item, "
          f"load average {os.getloadavg()[0]:.1f}) ==")
    print(f"{'':36} {'p50 µs':>8} {'p90 µs':>8} {'mean µs':>8}")
    for label, arr in (("raw pymemcache get (same item)", raw_ns), ("memoized hit (whole call)", hit_ns),
                       ("bare function", bare_ns)):
        print(f"{label:36} {np.median(arr) / 1e3:8.1f} {np.percentile(arr, 90) / 1e3:8.1f} {arr.mean() / 1e3:8.1f}")
    print(f"{'hit minus raw get (p50)':36} {(np.median(hit_ns) - np.median(raw_ns)) / 1e3:8.1f}")


def two_methods(backends: dict, n_points: int) -> None:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from dvl_dask import Utility
    from dvl_dask.valuation import exact_shapley, loo

    data = _data(n_points)
    model_cls = _counting_model()
    print(f"\n== exact_shapley then loo on one utility (n={n_points}: {2**n_points} coalitions, "
          "sync scheduler) ==")
    print(f"{'cache':<10} {'exact_shapley s':>16} {'fits':>6} {'loo s':>8} {'fits in loo':>12} "
          f"{'loo speed-up':>13}")
    baseline_loo = None
    reference = None
    for name, backend in [("none", None), *backends.items()]:
        if backend is not None:
            backend.clear()
        model = make_pipeline(StandardScaler(), model_cls(max_iter=500))
        utility = Utility(model, data, "accuracy", cache=backend)
        FITS[0] = 0
        start = time.perf_counter()
        shapley = exact_shapley(utility).compute(scheduler="sync")
        t_exact = time.perf_counter() - start
        fits_exact = FITS[0]
        FITS[0] = 0
        start = time.perf_counter()
        leave_one_out = loo(utility).compute(scheduler="sync")
        t_loo = time.perf_counter() - start
        fits_loo = FITS[0]
        if baseline_loo is None:
            baseline_loo = t_loo
            reference = (shapley["value"].values, leave_one_out["value"].values)
        else:
            assert np.array_equal(reference[0], shapley["value"].values)
            assert np.array_equal(reference[1], leave_one_out["value"].values)
        speedup = baseline_loo / t_loo
        print(f"{name:<10} {t_exact:16.2f} {fits_exact:6d} {t_loo:8.3f} {fits_loo:12d} {speedup:12.1f}x")


def cluster(server_address, n_points: int) -> None:
    from distributed import Client, LocalCluster
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from dvl_dask import Utility
    from dvl_dask.cache import MemcachedCacheBackend, MemcachedClientConfig
    from dvl_dask.valuation import exact_shapley, loo

    data = _data(n_points)
    backend = MemcachedCacheBackend(MemcachedClientConfig(server=server_address, timeout=1.0))
    backend.clear()
    model = make_pipeline(StandardScaler(), LogisticRegression())
    utility = Utility(model, data, "accuracy", cache=backend)
    # The cache is not part of a Utility's token, so an uncached twin would share its graph
    # key and the scheduler could hand either object to the tasks of the other: give the
    # baseline another token (catch_errors changes nothing here: no fit fails).
    plain = Utility(model, data, "accuracy", catch_errors=False)
    print(f"\n== Same on a LocalCluster (2 process workers), memcached shared by the workers "
          f"(n={n_points}) ==")
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cl,
        Client(cl) as client,
    ):
        client.run(lambda: __import__("sklearn.linear_model"))  # warm the workers' imports
        loo(plain).compute()  # and everything else, so the timings below compare like with like
        start = time.perf_counter()
        loo(plain).compute()
        t_plain = time.perf_counter() - start
        start = time.perf_counter()
        exact_shapley(utility).compute()
        t_exact = time.perf_counter() - start
        # Every coalition loo needs is now in memcached: check, then time loo.
        keys = [utility._memoized.cache_key(np.delete(np.arange(n_points), i)) for i in range(n_points)]
        keys.append(utility._memoized.cache_key(np.arange(n_points)))
        present = sum(backend.get(k) is not None for k in keys)
        start = time.perf_counter()
        loo(utility).compute()
        t_loo = time.perf_counter() - start
    print(f"exact_shapley {t_exact:.2f} s; loo uncached {t_plain:.3f} s, loo after exact_shapley "
          f"{t_loo:.3f} s ({t_plain / t_loo:.1f}x); {present}/{len(keys)} coalitions of loo were cached "
          f"before it ran -> {len(keys) - present} fits")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-points", type=int, default=10)
    p.add_argument(
        "--parts",
        default="overhead,roundtrip,methods,cluster",
        help="comma-separated subset of overhead,roundtrip,methods,cluster",
    )
    args = p.parse_args()

    from dvl_dask.cache import (
        DiskCacheBackend,
        InMemoryCacheBackend,
        MemcachedCacheBackend,
        MemcachedClientConfig,
    )
    from dvl_dask.testing.servers import start_memcached

    server = start_memcached()
    tmp = tempfile.TemporaryDirectory()
    try:
        backends = {
            "memory": InMemoryCacheBackend(),
            "disk": DiskCacheBackend(tmp.name),
            "memcached": MemcachedCacheBackend(MemcachedClientConfig(server=server.address, timeout=1.0)),
        }
        print(f"memcached {server.host}:{server.port}; disk cache in {tmp.name}")
        parts = set(args.parts.split(","))
        if "overhead" in parts:
            overheads(backends, {"memory": 20000, "disk": 1000, "memcached": 3000})
        if "roundtrip" in parts:
            roundtrip(server.address)
        if "methods" in parts:
            two_methods(backends, args.n_points)
        if "cluster" in parts:
            cluster(server.address, args.n_points)
    finally:
        server.stop()
        tmp.cleanup()


if __name__ == "__main__":
    main()
