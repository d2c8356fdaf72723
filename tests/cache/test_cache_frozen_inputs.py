"""Issue 23's stale shared cache: a Dataset edited in place after construction served the old value.

The arrays of a Dataset are now read-only, so the edit raises at once; a
Dataset built from the edited labels has another fingerprint, so a shared
cache (disk, memcached) computes its value instead of returning the old one.
Each shared cache also keeps, beside its values, what their keys were made of.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score

from dvl_dask import Dataset, Utility
from dvl_dask.cache import DiskCacheBackend, MemcachedCacheBackend, MemcachedClientConfig

SECRET = b"test-secret-frozen-inputs"


def _data() -> Dataset:
    """Separable classes: a logistic regression on the clean labels scores 1.0."""
    rng = np.random.default_rng(1)
    x = np.r_[rng.normal(-2.0, 0.5, size=(10, 2)), rng.normal(2.0, 0.5, size=(10, 2))]
    y = np.r_[np.zeros(10, np.int64), np.ones(10, np.int64)]
    test = np.r_[rng.normal(-2.0, 0.5, size=(5, 2)), rng.normal(2.0, 0.5, size=(5, 2))]
    return Dataset(x, y, test, np.r_[np.zeros(5, np.int64), np.ones(5, np.int64)])


def _by_hand(x, y, x_test, y_test) -> float:
    fitted = LogisticRegression().fit(np.array(x), np.array(y))
    return float(accuracy_score(y_test, fitted.predict(x_test)))


def _stale_case(make_backend) -> None:
    data = _data()
    everyone = range(data.n_players)
    clean = _by_hand(data.x_train, data.y_train, data.x_test, data.y_test)
    flipped_y = np.array(data.y_train)
    flipped_y[:8] = 1 - flipped_y[:8]
    flipped = _by_hand(data.x_train, flipped_y, data.x_test, data.y_test)
    assert clean == 1.0 and flipped != clean  # the two values of the issue (1.0 and 0.6 there)

    first = Utility(LogisticRegression(), data, "accuracy", cache=make_backend())
    assert first(everyone) == clean
    with pytest.raises(ValueError, match="read-only"):
        data.y_train[:8] = 1 - data.y_train[:8]  # the edit: refused, the data is unchanged
    assert first(everyone) == clean

    # The edited labels make a new Dataset, with its own fingerprint: computed, never the cached 1.0.
    edited = Dataset(data.x_train, flipped_y, data.x_test, data.y_test)
    assert edited.fingerprint != data.fingerprint
    second = Utility(LogisticRegression(), edited, "accuracy", cache=make_backend())  # another process's view
    assert second(everyone) == pytest.approx(flipped)
    assert second._memoized.stats.misses == 1 and second._memoized.stats.hits == 0

    # What the keys were made of is readable from the shared cache, without counting as a hit or miss.
    entry = Utility(LogisticRegression(), data, "accuracy", cache=make_backend()).describe_cache_entry(everyone)
    assert entry["stored"] and entry["cached"]
    owner = entry["function"]["owner"]
    assert owner["data"]["fingerprint"] == data.fingerprint
    assert owner["model"]["class"] == "sklearn.linear_model._logistic.LogisticRegression"
    assert owner["model"]["parameters"]["C"] == 1.0
    assert {"dvl_dask", "numpy", "scikit-learn", "dask"} <= set(owner["versions"])
    assert entry["arguments"] == {"players": list(everyone)}


def test_stale_value_case_through_a_shared_disk_cache(tmp_path):
    _stale_case(lambda: DiskCacheBackend(tmp_path / "cache", hmac_key=SECRET))


def test_stale_value_case_through_memcached(memcached_server):
    import dask

    namespace = f"frozen-{uuid.uuid4().hex[:8]}"

    def backend() -> MemcachedCacheBackend:
        return MemcachedCacheBackend(MemcachedClientConfig(server=memcached_server.address, timeout=2.0),
                                     hmac_key=SECRET)

    with dask.config.set({"dvl_dask.cache.namespace": namespace}):
        _stale_case(backend)


def test_provenance_record_costs_hits_nothing(tmp_path):
    data = _data()
    backend = DiskCacheBackend(tmp_path / "cache", hmac_key=SECRET)
    u = Utility(LogisticRegression(), data, "accuracy", cache=backend)
    u([0, 1, 10, 11])
    assert backend.stats.sets == 1 and backend.stats.misses == 1  # the record is not counted as a value
    memoized = u._memoized
    assert memoized.provenance()["function_token"] == memoized.key_function.function_token
    assert backend.stats.hits == 0
    u([11, 10, 1, 0])
    assert backend.stats.hits == 1 and backend.stats.sets == 1
