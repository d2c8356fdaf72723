"""Cost of identities: fingerprinting a large dataset, and the per-call overhead of a cache hit.

Run:  PYTHONPATH=. .venv/bin/python benchmarks/bench_tokenize.py [--rows 1000000] [--cols 100]

Part 1 fingerprints a ``rows x cols`` float32 dataset (10^6 x 100 = 400 MB by
default): the content digest of the numpy array, the same digest of the data as a
chunked dask array (read once, in parallel, by the threaded scheduler), and
building a :class:`dvl_dask.Dataset` from each (input checks included). For
comparison, ``dask.base.tokenize`` of the numpy array (what the fingerprint used
before, with dask's fastest installed hasher) is timed too.

Part 2 times the overhead of a cache hit per call: a memoized function of a
10-player coalition with the in-memory backend (target < 10 µs), and a whole
``Utility(...)(players)`` call answered from the cache.

Each line also prints the ideal (a bare BLAKE2b over the array's bytes; a bare
dict lookup of a ready key) and, in brackets, the figure recorded in
``benchmarks/README.md`` ("Identities"), so a regression shows at a glance.

The script only uses APIs that existed before the identity rework (newer ones
are skipped when missing), so running it with ``PYTHONPATH`` pointing at an
older checkout gives the "before" figures.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

#: Figures recorded in benchmarks/README.md ("Identities", issue 23), printed beside the new ones.
RECORDED = {
    "blake2b": "1.09 s",
    "object_token": "1.17 s",
    "dask_content_digest": "1.25 s",
    "dict_lookup": "0.04 µs",
    "memoized_hit": "18.5 µs",
    "utility_hit": "26.8 µs",
}


def _recorded(name: str) -> str:
    return f"[recorded {RECORDED.get(name, '-')}]"


def _best(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _per_call(fn, args, calls: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn(args)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def part_dataset(rows: int, cols: int) -> None:
    import dask
    import dask.array as da
    from dask.base import tokenize

    from dvl_dask import Dataset, keys

    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, cols), dtype=np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    xt, yt = x[:1000].copy(), y[:1000].copy()
    mb = x.nbytes / 2**20
    print(f"[dataset] {rows} x {cols} float32 = {mb:.0f} MiB")
    t = _best(lambda: tokenize(x, ensure_deterministic=True))
    print(f"[dataset] dask.base.tokenize(numpy)         {t:7.3f} s  ({mb / t:6.0f} MiB/s)  (the old fingerprint)")
    ideal = _best(lambda: hashlib.blake2b(x, digest_size=16).digest())
    print(f"[dataset] ideal: bare BLAKE2b over the bytes {ideal:7.3f} s  ({mb / ideal:6.0f} MiB/s)  "
          f"{_recorded('blake2b')}")
    if hasattr(keys, "object_token"):
        t = _best(lambda: keys.object_token(x))
        print(f"[dataset] object_token(numpy)               {t:7.3f} s  ({mb / t:6.0f} MiB/s)  "
              f"x{t / ideal:4.2f} the ideal  {_recorded('object_token')}")
    if hasattr(keys, "dask_content_digest"):
        t = _best(lambda: keys.dask_content_digest(x))
        print(f"[dataset] dask_content_digest(numpy)        {t:7.3f} s  ({mb / t:6.0f} MiB/s)  "
              f"x{t / ideal:4.2f} the ideal  {_recorded('dask_content_digest')}")
        lazy = da.from_array(x, chunks=(rows // 8, cols))
        with dask.config.set(scheduler="threads"):
            t = _best(lambda: keys.dask_content_digest(lazy))
        print(f"[dataset] dask_content_digest(dask, 8 chunks, threads) {t:7.3f} s  ({mb / t:6.0f} MiB/s)")
    t = _best(lambda: Dataset(x, y, xt, yt), repeats=2)
    print(f"[dataset] Dataset(numpy) built              {t:7.3f} s  (input checks + fingerprint)")
    lazy = da.from_array(x, chunks=(rows // 8, cols))
    with dask.config.set(scheduler="threads"):
        t = _best(lambda: Dataset(lazy, y, xt, yt), repeats=2)
    print(f"[dataset] Dataset(dask) built               {t:7.3f} s  (content read once unless version= is given)")


def part_cache_hit(calls: int) -> None:
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression

    from dvl_dask import Dataset, Utility
    from dvl_dask.cache import InMemoryCacheBackend, memoize

    def value(players):
        return float(len(players))

    players = np.arange(10)
    bare = _per_call(value, players, calls)
    table = {"dvl:value:0123456789abcdef0123456789abcdef": 10.0}
    lookup = _per_call(table.__getitem__, "dvl:value:0123456789abcdef0123456789abcdef", calls)
    print(f"[cache] ideal: bare dict lookup of a ready key          {1e6 * lookup:6.2f} µs/call  "
          f"{_recorded('dict_lookup')}")
    f = memoize(value, InMemoryCacheBackend(), subset_args=["players"])
    f(players)
    hit = _per_call(f, players, calls)
    print(f"[cache] memoized function, memory backend: hit overhead {1e6 * (hit - bare):6.2f} µs/call "
          f"(target < 10 µs)  {_recorded('memoized_hit')}")
    data = Dataset.from_sklearn(load_wine, train_size=10 / 178, seed=0, stratify=True)
    u = Utility(LogisticRegression(max_iter=500), data, "accuracy", cache=InMemoryCacheBackend())
    u(players)
    hit = _per_call(u, players, calls)
    print(f"[cache] Utility(players) answered from memory:     {1e6 * hit:6.2f} µs/call "
          f"(index checks + key + lookup)  {_recorded('utility_hit')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cols", type=int, default=100)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--parts", default="dataset,cache")
    args = parser.parse_args()
    parts = args.parts.split(",")
    if "dataset" in parts:
        part_dataset(args.rows, args.cols)
    if "cache" in parts:
        part_cache_hit(args.calls)


if __name__ == "__main__":
    main()
