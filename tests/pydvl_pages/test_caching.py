"""pyDVL's caching pages with ``pydvl`` replaced by ``dvl_dask``, against a real memcached server.

Sources (pyDVL): docs/getting-started/advanced-usage.md ("Caching"),
docs/how-to-guides/how-to-speed-up-value-with-caching.md, the docstrings of
``pydvl.utils.caching`` (``memcached(**asdict(cache_options))(fun, signature=...)``) and of its
backends (``cache_backend.wrap(foo)``). Filled in: the server address (the fixture's free port
instead of localhost:11211) and small data. Where a page's code cannot run by design the test
says so and runs the nearest equivalent:

* pyDVL 0.10's ``ModelUtility(model, scorer, cache_backend=...)``, ``utility.with_dataset(...)``
  and ``Sample(-1, indices)`` are ``Utility(model, data, scorer, cache_backend=...)`` and
  ``utility(indices)`` here; ``fetch_covtype()`` (a download) is replaced by ``load_wine``.
* ``cache_backend.wrap(foo)`` keeps pyDVL's default ``time_threshold`` of 0.3 s, so a function
  as fast as the docstring's ``foo`` is not stored (the docstring's hit counts assume it is);
  the test shows both.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict

import dask
import numpy as np
import pytest
from sklearn.datasets import load_wine
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, Normalizer
from sklearn.svm import LinearSVC

from dvl_dask.cache import CachedFuncConfig

pytestmark = pytest.mark.memcached


@pytest.fixture
def page_data():
    """The page's "Set up the dataset and model" block (wine instead of the downloaded covtype)."""
    from dvl_dask import Dataset, Scorer

    data = load_wine()  # the page: fetch_covtype()
    training_set = Dataset.from_sklearn(data, train_size=12 / 178, random_state=16, stratify_by_target=True)
    model = make_pipeline(MinMaxScaler(), Normalizer(), LinearSVC())
    scorer = Scorer("accuracy")
    return training_set, model, scorer


def test_disk_based_caching(page_data) -> None:
    training_set, model, scorer = page_data

    from dvl_dask.cache import DiskCacheBackend

    cache_backend = DiskCacheBackend()
    print(cache_backend.stats)
    assert (cache_backend.stats.hits, cache_backend.stats.misses) == (0, 0)

    from dvl_dask import Utility  # the page: ModelUtility(model, scorer, cache_backend=...) + with_dataset

    utility = Utility(model, training_set, scorer, cache_backend=cache_backend)

    # We use the entire training set as a sample (the page: Sample(-1, np.arange(len(training_set))))
    sample = np.arange(len(training_set))
    score = utility(sample)
    print(cache_backend.stats)
    assert (cache_backend.stats.misses, cache_backend.stats.sets) == (1, 1)

    files = [p for p in cache_backend.cache_dir.glob("*") if not p.name.startswith(".")]
    print(files)
    # One shard directory holding the one entry, and one holding the record of what its key was made of
    # (dvl_dask only: written once per memoized function, not counted in stats).
    assert len(files) == 2
    assert utility.describe_cache_entry(sample)["function"]["owner"]["token"] == utility.token
    assert utility(sample[::-1]) == score and cache_backend.stats.hits == 1
    plain = Utility(model, training_set, scorer)
    assert plain(sample) == score


def test_memcached_based_caching(page_data, memcached_server) -> None:
    training_set, model, scorer = page_data

    from dvl_dask.cache import (
        MemcachedCacheBackend,
        MemcachedClientConfig,
    )

    # The page passes nothing because memcached listens on localhost:11211 there.
    cache_config = MemcachedClientConfig(server=(memcached_server.host, memcached_server.port))
    cache_backend = MemcachedCacheBackend(cache_config)
    cache_backend.clear()
    print(cache_backend.stats)

    from dvl_dask import Utility

    utility = Utility(model, training_set, scorer, cache_backend=cache_backend)
    sample = np.arange(len(training_set))
    first = utility(sample)
    print(cache_backend.stats)
    assert cache_backend.stats.sets == 1

    server_stats = cache_backend.client.stats()  # the memcached "stats" command
    print(server_stats)
    assert server_stats[b"curr_items"] == 2  # the entry and (dvl_dask only) the record of what its key was made of
    assert isinstance(cache_backend.get(utility._memoized.provenance_key), str)
    # Another backend object (another process, another machine) with the same secret shares the entry.
    other = Utility(model, training_set, scorer,
                    cache_backend=MemcachedCacheBackend(cache_config, hmac_key=cache_backend._secret))
    assert other(sample) == first and other.cache.stats.hits == 1


def test_backend_docstring_examples(memcached_server, tmp_path) -> None:
    from dvl_dask.cache import DiskCacheBackend, MemcachedCacheBackend, MemcachedClientConfig

    for cache_backend in (
        DiskCacheBackend(tmp_path),
        MemcachedCacheBackend(MemcachedClientConfig(server=(memcached_server.host, memcached_server.port))),
    ):
        cache_backend.clear()
        value = 42
        cache_backend.set("key", value)
        assert cache_backend.get("key") == 42

        def foo(x: int):
            return x + 1

        # pyDVL's default config stores only results that took >= 0.3 s: foo is never stored
        wrapped_foo = cache_backend.wrap(foo)
        assert wrapped_foo(value) == 43 and wrapped_foo(value) == 43
        assert (wrapped_foo.stats.misses, wrapped_foo.stats.hits) == (2, 0)

        # what the docstring's counts describe: every result stored
        wrapped_foo = cache_backend.wrap(foo, config=CachedFuncConfig(time_threshold=0.0))
        assert wrapped_foo(value) == 43
        assert (wrapped_foo.stats.misses, wrapped_foo.stats.hits) == (1, 0)
        assert wrapped_foo(value) == 43
        assert (wrapped_foo.stats.misses, wrapped_foo.stats.hits) == (1, 1)


def _heavy_computation(x: float, job_id: int = 0) -> float:
    return x**2


class _Noisy:
    """A stochastic function: returns the next value of a fixed sequence on every evaluation."""

    def __init__(self, values):
        self.values = list(values)
        self.calls = 0

    def __call__(self, x):
        value = self.values[self.calls]
        self.calls += 1
        return value


def test_memcached_decorator_with_config_objects(memcached_server) -> None:
    from dvl_dask.cache import MemcachedClientConfig, MemcachedConfig, memcached

    client_config = MemcachedClientConfig(server=(memcached_server.host, memcached_server.port))
    cache_options = MemcachedConfig(client_config=client_config, time_threshold=0.0, ignore_args=["job_id"])
    custom_signature = f"heavy-{uuid.uuid4()}".encode()

    # the caching package's docstring
    cached_fun = memcached(**asdict(cache_options))(_heavy_computation, signature=custom_signature)
    assert cached_fun(3.0, job_id=1) == 9.0 and cached_fun(3.0, job_id=2) == 9.0  # job_id ignored
    assert (cached_fun.stats.misses, cached_fun.stats.hits) == (1, 1)

    # another function wrapped with the same signature bytes reads the same entries -- once the
    # backends share a secret (dvl_dask signs values; without a configured secret each backend
    # object generates its own, and the other's entries are rejected, never unpickled)
    same_key = memcached(**asdict(cache_options))(lambda x, job_id=0: -1.0, signature=custom_signature)
    assert same_key(3.0) == -1.0 and same_key.backend.stats.rejected == 1
    with dask.config.set({"dvl_dask.cache.hmac-key": "a secret shared by the experiment"}):
        writer = memcached(**asdict(cache_options))(_heavy_computation, signature=custom_signature + b"-shared")
        reader = memcached(**asdict(cache_options))(lambda x, job_id=0: -1.0, signature=custom_signature + b"-shared")
    assert writer(3.0) == 9.0 and reader(3.0) == 9.0 and reader.stats.hits == 1

    # stochastic functions: pyDVL's min_repetitions=3 -> evaluated while count <= 3, i.e. 4 times
    noisy = _Noisy([1.0, 1.02, 0.98, 1.0, 5.0, 5.0])
    averaged = memcached(
        client_config=asdict(client_config), time_threshold=0.0, allow_repeated_evaluations=True,
        rtol_stderr=0.1, min_repetitions=3,
    )(noisy, signature=f"noisy-{uuid.uuid4()}".encode())
    results = [averaged(1) for _ in range(6)]
    assert noisy.calls == 4
    assert results[-1] == pytest.approx(1.0)
    assert averaged.statistics(1).count == 4
