"""memoize() and the memcached() decorator: thresholds, repetitions, pickling, Utility integration."""

from __future__ import annotations

import inspect
import itertools
import pickle
import time

import cloudpickle
import dask
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from dvl_dask import Dataset, Utility
from dvl_dask.cache import (
    CacheStats,
    DiskCacheBackend,
    InMemoryCacheBackend,
    MemcachedClientConfig,
    MemoizedFunction,
    RunningStats,
    memcached,
    memoize,
)
from dvl_dask.errors import InvalidParameterError


@memcached(MemcachedClientConfig(server=("127.0.0.1", 1)), time_threshold=0.0)
def module_level_square(x: int) -> int:
    return x * x


class CountingLinearRegression(LinearRegression):
    """LinearRegression that counts its fits (class-level, so clones count too)."""

    fits = 0

    def fit(self, X, y, sample_weight=None):
        type(self).fits += 1
        return super().fit(X, y, sample_weight=sample_weight)


def _dataset(n_train: int = 6) -> Dataset:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n_train * 2, 2))
    y = x @ np.array([1.5, -1.0]) + 0.2 * rng.normal(size=n_train * 2)
    return Dataset.from_arrays(x, y, train_size=0.5, seed=1)


def test_utility_with_memory_cache_fits_once_per_coalition() -> None:
    data = _dataset(6)
    plain = Utility(CountingLinearRegression(), data, "r2", default_score=0.0)
    cached = Utility(CountingLinearRegression(), data, "r2", default_score=0.0, cache=InMemoryCacheBackend())
    coalitions = [c for r in range(7) for c in itertools.combinations(range(6), r)]
    rng = np.random.default_rng(0)

    CountingLinearRegression.fits = 0
    expected = [plain(c) for c in coalitions]
    plain_fits = CountingLinearRegression.fits
    assert plain_fits == len(coalitions) - 1  # the empty coalition is not fitted

    CountingLinearRegression.fits = 0
    for _ in range(3):  # three passes, each coalition in a shuffled order
        got = [cached(rng.permutation(np.array(c, dtype=int))) for c in coalitions]
        assert got == expected  # identical values, not merely close
    assert CountingLinearRegression.fits == plain_fits
    stats = cached._memoized.stats
    assert stats.misses == len(coalitions)
    assert stats.hits == 2 * len(coalitions)


def test_utility_rejects_a_cache_that_is_not_a_backend() -> None:
    with pytest.raises(InvalidParameterError, match="'cache' argument of Utility"):
        Utility(LinearRegression(), _dataset(), "r2", default_score=0.0, cache={})


def test_cached_utility_survives_cloudpickle_and_keeps_its_key() -> None:
    cache = InMemoryCacheBackend()
    u = Utility(LinearRegression(), _dataset(), "r2", default_score=0.0, cache=cache)
    u([0, 1, 2])
    clone = cloudpickle.loads(cloudpickle.dumps(u))
    assert clone._memoized.cache_key(np.arange(3)) == u._memoized.cache_key(np.arange(3))
    assert clone([2, 1, 0]) == u([0, 1, 2])
    assert clone._memoized.stats.hits == 1  # copies in one process share the in-memory entries


def test_time_threshold_stores_only_slow_results() -> None:
    def compute(x, delay):
        time.sleep(delay)
        return x

    # The fast call must stay under the threshold on a loaded machine (it took over 20 ms with a
    # threshold of 0.02 s while pytest-xdist workers and other processes shared the two cores).
    f = memoize(compute, InMemoryCacheBackend(), time_threshold=0.2)
    f(1, 0.0)
    f(2, 0.3)
    assert f.stats.sets == 1
    f(1, 0.0)
    f(2, 0.3)
    assert (f.stats.hits, f.stats.misses) == (1, 3)


def test_defaults_come_from_config_at_call_time() -> None:
    with dask.config.set({"dvl_dask.cache.time-threshold": 5.0, "dvl_dask.cache.namespace": "from-config"}):
        f = memoize(lambda x: x, InMemoryCacheBackend())
    assert f.time_threshold == 5.0
    assert f.cache_key(1).startswith("from-config:")
    g = memoize(lambda x: x, InMemoryCacheBackend(), time_threshold=0.5)
    assert g.time_threshold == 0.5 and g.cache_key(1).startswith("dvl:")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"time_threshold": -1.0}, "'time_threshold' parameter"),
        ({"min_repetitions": 0}, "'min_repetitions' parameter"),
        ({"rtol_stderr": -0.1}, "'rtol_stderr' parameter"),
        ({"allow_repeated_evaluations": "yes"}, "'allow_repeated_evaluations' parameter"),
        ({"min_repetitions": 5, "max_repetitions": 2}, "'max_repetitions' parameter"),
    ],
)
def test_invalid_parameters_are_named(kwargs, match) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        memoize(lambda x: x, InMemoryCacheBackend(), **kwargs)
    with pytest.raises(InvalidParameterError, match="'backend' argument of memoize"):
        memoize(lambda x: x, "memory")  # type: ignore[arg-type]


def _sequence_function(values):
    it = iter(values)

    def utility(players):
        return next(it)

    return utility


def test_repetitions_stop_for_negative_utilities() -> None:
    values = [-5.0, -5.2, -4.8] + [-5.0] * 10
    f = memoize(
        _sequence_function(values), InMemoryCacheBackend(), allow_repeated_evaluations=True, rtol_stderr=0.1
    )
    results = [f((0, 1)) for _ in range(6)]
    stats = f.statistics((0, 1))
    assert stats.count == 3  # stderr 0.115 <= 0.1 * 5: stopped after min_repetitions
    assert results[-1] == pytest.approx(-5.0)
    assert stats.variance == pytest.approx(0.04) and stats.stderr == pytest.approx(np.sqrt(0.04 / 3))
    assert f.stats.hits == 3


def test_repetitions_with_zero_mean() -> None:
    exact_zero = memoize(
        _sequence_function([0.0] * 10), InMemoryCacheBackend(), allow_repeated_evaluations=True
    )
    for _ in range(5):
        exact_zero(1)
    assert exact_zero.statistics(1).count == 3  # evaluations agree: stderr 0 <= 0

    noisy_zero = memoize(
        _sequence_function([1.0, -1.0] * 10),
        InMemoryCacheBackend(),
        allow_repeated_evaluations=True,
        max_repetitions=6,
    )
    for _ in range(10):
        noisy_zero(1)
    assert noisy_zero.statistics(1).count == 6  # relative tolerance unreachable: capped

    with_atol = memoize(
        _sequence_function([0.01, -0.01] * 10),
        InMemoryCacheBackend(),
        allow_repeated_evaluations=True,
        atol_stderr=0.01,
    )
    for _ in range(10):
        with_atol(1)
    assert with_atol.statistics(1).count == 3


def test_statistics_need_repetitions_and_real_values() -> None:
    f = memoize(lambda x: x, InMemoryCacheBackend())
    with pytest.raises(InvalidParameterError, match="allow_repeated_evaluations=True"):
        f.statistics(1)
    g = memoize(lambda x: [x], InMemoryCacheBackend(), allow_repeated_evaluations=True)
    with pytest.raises(InvalidParameterError, match="must return a real number"):
        g(1)
    h = memoize(lambda x: 1.0, InMemoryCacheBackend(), allow_repeated_evaluations=True)
    assert h.statistics(2) is None


def test_repeated_evaluations_on_disk_from_two_backends(tmp_path) -> None:
    values = iter(np.linspace(0.0, 1.0, 20))
    f1 = memoize(lambda x: next(values), DiskCacheBackend(tmp_path), allow_repeated_evaluations=True,
                 rtol_stderr=0.0, max_repetitions=1000)
    f2 = cloudpickle.loads(cloudpickle.dumps(f1))
    for _ in range(5):
        f1(0)
        f2(0)
    stats = f1.statistics(0)
    assert isinstance(stats, RunningStats) and stats.count == 10


def test_memoized_function_pickles() -> None:
    # A decorated module-level function pickles by name, like the function it replaces.
    assert pickle.loads(pickle.dumps(module_level_square)) is module_level_square
    # A local one travels by value with cloudpickle and keeps its key.
    cache = InMemoryCacheBackend()
    f = memoize(lambda x: x + 1, cache)
    f(1)
    g = cloudpickle.loads(cloudpickle.dumps(f))
    assert isinstance(g, MemoizedFunction)
    assert g.cache_key(1) == f.cache_key(1)
    assert g(1) == 2 and g.stats.hits == 1  # entries copied along with the memory backend
    # dask keys of a memoized function follow the wrapped function's code and state (dvl_dask's graph_token;
    # dask's own hashing of plain functions is left alone)
    assert dask.base.tokenize(f) == dask.base.tokenize(g) != dask.base.tokenize(memoize(lambda x: x + 2, cache))


def test_memcached_decorator_signature_and_stats() -> None:
    params = inspect.signature(memcached).parameters
    assert list(params)[:6] == [
        "client_config", "time_threshold", "allow_repeated_evaluations", "rtol_stderr", "min_repetitions",
        "ignore_args",
    ]
    assert [params[p].default for p in list(params)[1:6]] == [0.3, False, 0.1, 3, None]
    assert isinstance(module_level_square.stats, CacheStats)
    assert module_level_square.time_threshold == 0.0

    class Opaque:
        def __call__(self, *args, **kwargs):
            return args[0]

    sig = inspect.Signature(
        [inspect.Parameter("x", inspect.Parameter.POSITIONAL_OR_KEYWORD),
         inspect.Parameter("verbose", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=False)]
    )
    wrapped = memcached(ignore_args=["verbose"])(Opaque(), signature=sig)
    assert wrapped.cache_key(1, verbose=True) == wrapped.cache_key(1)


def test_method_decoration_binds_the_instance() -> None:
    class Model:
        def __init__(self, scale):
            self.scale = scale

        def __dask_tokenize__(self):
            return ("Model", self.scale)

        @memcached(MemcachedClientConfig(server=("127.0.0.1", 1)))
        def score(self, x):
            return self.scale * x

    assert Model(2).score.cache_key(3) != Model(3).score.cache_key(3)
