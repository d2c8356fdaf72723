"""pyDVL's names and keywords are accepted spellings of dvl_dask's (docs/pydvl-names.md)."""

from __future__ import annotations

import inspect
import pickle
from dataclasses import asdict

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LinearRegression

from dvl_dask import Dataset, Utility
from dvl_dask.cache import (
    CachedFuncConfig,
    DiskCacheBackend,
    InMemoryCacheBackend,
    MemcachedCacheBackend,
    MemcachedClientConfig,
    MemcachedConfig,
    memcached,
)
from dvl_dask.errors import InvalidParameterError
from dvl_dask.results import ValuationResult, valuation_dataset
from dvl_dask.validation import keyword_aliases
from dvl_dask.valuation import exact_shapley


def test_keyword_aliases_helper() -> None:
    @keyword_aliases(alias="canonical")
    def f(a, canonical=0, *, other=1):
        return a, canonical, other

    assert f(1, alias=5) == (1, 5, 1)
    assert f(1, canonical=5) == (1, 5, 1)
    assert list(inspect.signature(f).parameters) == ["a", "canonical", "other"]
    assert f.__keyword_aliases__ == {"alias": "canonical"}
    with pytest.raises(TypeError, match=r"f\(\) got 'canonical' and its synonym 'alias'"):
        f(1, canonical=2, alias=3)
    with pytest.raises(TypeError, match="synonym 'alias'"):
        f(1, 2, alias=3)  # the canonical one given by position
    with pytest.raises(ValueError, match="needs a parameter named 'missing'"):
        keyword_aliases(x="missing")(f.__wrapped__)


def test_dataset_split_keywords() -> None:
    pydvl = Dataset.from_sklearn(load_iris, train_size=0.4, random_state=3, stratify_by_target=True)
    ours = Dataset.from_sklearn(load_iris, train_size=0.4, seed=3, stratify=True)
    assert pydvl.fingerprint == ours.fingerprint
    counts = np.bincount(np.asarray(pydvl.y_train))
    assert counts.tolist() == [20, 20, 20]  # stratified: 40% of each class of 50
    x, y = load_iris(return_X_y=True)
    assert Dataset.from_arrays(x, y, random_state=3).fingerprint == Dataset.from_arrays(x, y, seed=3).fingerprint
    with pytest.raises(TypeError, match=r"Dataset.from_arrays\(\) got 'stratify' and its synonym"):
        Dataset.from_arrays(x, y, stratify=True, stratify_by_target=True)


def _small_data() -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 2))
    return Dataset.from_arrays(x, x @ [1.0, -2.0] + 0.1 * rng.normal(size=12), train_size=0.5, seed=0)


def test_utility_cache_backend_and_cached_func_options() -> None:
    data = _small_data()
    backend = InMemoryCacheBackend()
    u = Utility(LinearRegression(), data, "r2", default_score=0.0, cache_backend=backend)
    assert u.cache is backend
    u([0, 1, 2]), u([2, 1, 0])
    assert backend.stats.hits == 1 and backend.stats.sets == 1
    with pytest.raises(TypeError, match="Utility\\(\\) got 'cache' and its synonym 'cache_backend'"):
        Utility(LinearRegression(), data, "r2", default_score=0.0, cache=backend, cache_backend=backend)

    options = CachedFuncConfig(time_threshold=0.0, allow_repeated_evaluations=True, min_repetitions=2)
    v = Utility(LinearRegression(), data, "r2", default_score=0.0, cache=InMemoryCacheBackend(),
                cached_func_options=options)
    assert v._memoized.min_repetitions == 3  # pyDVL's 2 repetitions after the first evaluation
    assert pickle.loads(pickle.dumps(v))._memoized.min_repetitions == 3
    with pytest.raises(InvalidParameterError, match="needs a cache"):
        Utility(LinearRegression(), data, "r2", default_score=0.0, cached_func_options=options)
    with pytest.raises(InvalidParameterError, match=r"must be a dvl_dask\.cache\.CachedFuncConfig"):
        Utility(LinearRegression(), data, "r2", default_score=0.0, cache=backend, cached_func_options={})


def test_disk_cache_default_directory_and_cache_dir() -> None:
    a, b = DiskCacheBackend(), DiskCacheBackend()
    assert a.cache_dir.is_dir() and a.cache_dir != b.cache_dir  # a new temporary directory each, as in pyDVL
    assert a.cache_dir.name.startswith("dvl_dask-cache-")
    c = DiskCacheBackend(cache_dir=a.cache_dir)
    assert a.set("k", 1.5) and c.get("k") == 1.5
    with pytest.raises(TypeError, match="DiskCacheBackend\\(\\) got 'path' and its synonym 'cache_dir'"):
        DiskCacheBackend(a.cache_dir, cache_dir=a.cache_dir)


def test_backend_wrap_with_cached_func_config() -> None:
    calls = []

    def square(x):
        calls.append(x)
        return x * x

    f = InMemoryCacheBackend().wrap(square, config=CachedFuncConfig(time_threshold=0.0))
    assert [f(3), f(3), f(4)] == [9, 9, 16] and calls == [3, 4]
    slow_only = InMemoryCacheBackend().wrap(square)  # pyDVL's default: only results taking >= 0.3 s
    slow_only(2), slow_only(2)
    assert slow_only.stats.hits == 0 and calls[-2:] == [2, 2]
    with pytest.raises(InvalidParameterError, match="must be a CachedFuncConfig"):
        InMemoryCacheBackend().wrap(square, config={"time_threshold": 0})


def _recording_constant(calls: list[int]):
    def constant(x):
        calls.append(x)
        return 2.0

    return constant


def test_min_repetitions_counts_like_pydvl() -> None:
    """pyDVL evaluates while count <= min_repetitions: min_repetitions + 1 evaluations for a steady function.

    (With min_repetitions=0 dvl_dask still evaluates twice: one evaluation has no standard error, where
    pyDVL takes it as 0; see docs/pydvl-names.md.)
    """
    for min_repetitions in (1, 3):
        calls: list[int] = []
        constant = _recording_constant(calls)

        config = CachedFuncConfig(
            time_threshold=0.0, allow_repeated_evaluations=True, min_repetitions=min_repetitions
        )
        f = InMemoryCacheBackend().wrap(constant, config=config)
        for _ in range(10):
            assert f(1) == 2.0
        assert len(calls) == min_repetitions + 1


def test_memcached_accepts_pydvl_forms() -> None:
    config = MemcachedClientConfig(server=("127.0.0.1", 1), timeout=0.5)
    options = MemcachedConfig(client_config=config, time_threshold=0.0, min_repetitions=2, ignore_args=["verbose"])
    as_dict = asdict(options)
    assert as_dict["client_config"] == asdict(config)

    def fun(x, verbose=False):
        return x + 1

    wrapped = memcached(**as_dict)(fun)
    assert wrapped.backend.config == config  # the dict is merged back into a MemcachedClientConfig
    assert wrapped.min_repetitions == 3 and wrapped.time_threshold == 0.0
    assert wrapped.cache_key(1, verbose=True) == wrapped.cache_key(1)

    # merged over the defaults: only the given fields change
    partial = memcached(client_config={"server": ("127.0.0.1", 1)})(fun)
    assert partial.backend.config == MemcachedClientConfig(server=("127.0.0.1", 1))
    assert MemcachedCacheBackend({"timeout": 0.25}).config == MemcachedClientConfig(timeout=0.25)
    with pytest.raises(InvalidParameterError, match="'serde'"):
        memcached(client_config={"serde": object()})

    # signature=bytes stands for the function in the keys: same bytes, same entries, whatever the code
    def other(x, verbose=False):
        return x - 1

    a = memcached(**as_dict)(fun, signature=b"experiment-1")
    b = memcached(**as_dict)(other, signature=b"experiment-1")
    c = memcached(**as_dict)(fun, signature=b"experiment-2")
    assert a.cache_key(5) == b.cache_key(5) != c.cache_key(5)
    assert memcached(**as_dict)(fun).cache_key(5) != a.cache_key(5)
    with pytest.raises(InvalidParameterError, match="'signature' argument of the memcached wrapper"):
        memcached(**as_dict)(fun, signature="text")


def test_valuation_result_view() -> None:
    ds = valuation_dataset(
        np.array([0.3, -0.1, 0.7, 0.2]),
        np.array([0.1, 0.0, 0.2, 0.05]),
        np.array([4, 1, 9, 16]),
        data_names=["a", "b", "c", "d"],
        method="demo",
    )
    result = ds.dvl.to_valuation_result()
    assert result == ValuationResult.from_dataset(ds) and len(result) == 4
    assert result.values.tolist() == [0.3, -0.1, 0.7, 0.2] and result.indices.tolist() == [0, 1, 2, 3]
    assert result.status == "pending" and result.algorithm == "demo"
    np.testing.assert_allclose(result.variances, [0.04, 0.0, 0.36, 0.04])
    result.sort()
    assert result.names.tolist() == ["b", "d", "a", "c"] and result.values.tolist() == [-0.1, 0.2, 0.3, 0.7]
    result.sort(reverse=True)
    assert [item.name for item in result] == ["c", "a", "d", "b"]
    top = result[0]
    assert (top.index, top.name, top.value, top.count, top.stderr) == (2, "c", 0.7, 9, 0.2)
    assert [item.index for item in result[1:3]] == [0, 3]
    assert result.get(1).value == -0.1 and result[-1].name == "b"
    assert result.sort(key="name").names.tolist() == ["a", "b", "c", "d"]
    df = result.sort(reverse=True).to_dataframe(use_names=True)
    assert df.columns.tolist() == ["demo", "demo_stderr", "demo_updates"]
    assert df.index.tolist() == ["c", "a", "d", "b"] and df["demo_updates"].tolist() == [9, 4, 16, 1]
    with pytest.raises(ValueError):
        result.values[0] = 1.0  # read-only
    with pytest.raises(IndexError):
        result[4]
    with pytest.raises(InvalidParameterError, match="'key' parameter"):
        result.sort(key="stderr")
    with pytest.raises(InvalidParameterError, match="xarray Dataset"):
        ValuationResult.from_dataset(np.zeros(3))


def test_valuation_result_of_an_exact_method_is_converged() -> None:
    from dvl_dask.testing.games import AirportGame

    result = exact_shapley(AirportGame([1.0, 3.0])).dvl.to_valuation_result()
    assert result.status == "converged"
    np.testing.assert_allclose(result.values, [0.5, 2.5])  # airport game: closed form
