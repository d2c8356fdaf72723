"""Cache keys: canonical coalitions, data, code, ignored arguments, determinism across processes."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from helpers import r2_scorer, scaled_by

from dvl_dask import Dataset, Utility
from dvl_dask.cache import InMemoryCacheBackend, memoize
from dvl_dask.errors import InvalidParameterError, TokenizationError
from dvl_dask.keys import KeyFunction, cache_key, code_fingerprint, function_token


def _define(source: str, name: str = "utility", module: str = "user_module"):
    namespace: dict = {"__name__": module}
    exec(textwrap.dedent(source), namespace)
    return namespace[name]


def _data(seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(24, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=24)
    return Dataset.from_arrays(x, y, train_size=0.5, seed=0)


def _utility(data: Dataset, cache=None) -> Utility:
    from sklearn.linear_model import LinearRegression

    return Utility(LinearRegression(), data, "r2", default_score=0.0, cache=cache)


def test_same_coalition_in_another_order_hits() -> None:
    cache = InMemoryCacheBackend()
    u = _utility(_data(0), cache)
    first = u([5, 1, 3, 0])
    assert u((0, 3, 1, 5)) == first
    assert u(np.array([3, 3, 0, 5, 1])) == first  # repetitions too
    assert u._memoized.stats.hits == 2
    assert u._memoized.stats.misses == 1


def test_subset_args_make_plain_functions_order_free() -> None:
    def value(players, index):
        return float(sum(players))

    f = memoize(value, InMemoryCacheBackend(), subset_args=["players"], ignore_args=["index"])
    assert f([3, 1], index=0) == f({1, 3}, index=7) == f(np.array([1, 3, 3]), index=2)
    assert (f.stats.hits, f.stats.misses) == (2, 1)


def test_another_dataset_with_same_indices_misses() -> None:
    cache = InMemoryCacheBackend()
    u1, u2 = _utility(_data(0), cache), _utility(_data(1), cache)
    players = np.array([0, 2, 4, 6])
    assert u1._memoized.cache_key(players) != u2._memoized.cache_key(players)
    u1(players)
    u2(players)
    assert u2._memoized.stats.misses == 1 and u2._memoized.stats.hits == 0
    # An equal dataset built again shares the entries.
    u3 = _utility(_data(0), cache)
    assert u3._memoized.cache_key(players) == u1._memoized.cache_key(players)
    u3(players)
    assert u3._memoized.stats.hits == 1


def test_another_model_or_scorer_misses() -> None:
    from sklearn.linear_model import Ridge

    data = _data(0)
    keys = {
        memoize(Utility(model, data, scorer, default_score=0.0).fit_and_score, InMemoryCacheBackend())
        .cache_key(np.arange(3))
        for model, scorer in [
            (Ridge(alpha=1.0), "r2"),
            (Ridge(alpha=2.0), "r2"),
            (Ridge(alpha=1.0), "neg_max_error"),
        ]
    }
    assert len(keys) == 3


def test_editing_the_code_misses() -> None:
    cache = InMemoryCacheBackend()
    v1 = _define("def utility(players):\n    return float(len(players))\n")
    v1_again = _define("\n\n\ndef utility(players):\n    return float(len(players))\n")  # moved lines only
    v2 = _define("def utility(players):\n    return float(len(players)) + 1.0\n")
    f1, f1_again, f2 = (memoize(f, cache) for f in (v1, v1_again, v2))
    players = np.arange(3)
    assert f1(players) == 3.0
    assert f1_again(players) == 3.0 and f1_again.stats.hits == 1
    assert f2(players) == 4.0 and f2.stats.misses == 1


def test_editing_a_nested_function_or_a_helper_misses() -> None:
    base = """
        def helper(x):
            return x * {factor}

        def utility(players):
            inner = lambda p: helper(len(p))
            return float(inner(players) + {offset})
    """
    keys = {
        function_token(_define(base.format(factor=f, offset=o)))
        for f, o in [(2, 0), (3, 0), (2, 1)]
    }
    assert len(keys) == 3
    assert function_token(_define(base.format(factor=2, offset=0))) == function_token(
        _define(base.format(factor=2, offset=0))
    )


def test_closures_and_partials_are_state() -> None:
    def make(scale):
        def utility(players):
            return scale * len(players)

        return utility

    assert function_token(make(1.0)) == function_token(make(1.0))
    assert function_token(make(1.0)) != function_token(make(2.0))

    def f(players, scale):
        return scale * len(players)

    assert function_token(functools.partial(f, scale=1)) != function_token(functools.partial(f, scale=2))


def test_ignore_args() -> None:
    calls = []

    def utility(players, progress=None, job_id=0):
        calls.append(1)
        return float(len(players))

    f = memoize(utility, InMemoryCacheBackend(), ignore_args=["progress", "job_id"])
    players = np.arange(4)
    f(players, progress="bar", job_id=1)
    f(players, "other bar", 2)
    f(players)
    assert len(calls) == 1 and f.stats.hits == 2
    with pytest.raises(InvalidParameterError, match="'ignore_args' argument names parameters \\['nope'\\]"):
        memoize(utility, InMemoryCacheBackend(), ignore_args=["nope"])


def test_arguments_bind_by_name() -> None:
    def g(a, b=2, *, c=3):
        return a + b + c

    key = KeyFunction(g)
    assert key((1,), {}) == key((1, 2), {}) == key((), {"a": 1, "b": 2, "c": 3}) == key((1,), {"c": 3})
    assert key((1,), {"c": 4}) != key((1,), {})


def test_keys_are_short_ascii_without_whitespace() -> None:
    def a_function_with_a_rather_long_name_to_check_that_keys_stay_short_enough_for_memcached(x):
        return x

    fn = a_function_with_a_rather_long_name_to_check_that_keys_stay_short_enough_for_memcached
    key = cache_key(fn, (np.arange(1000), {"a": [1.5, None]}), {}, namespace="n" * 64)
    assert len(key) <= 250 and key.isascii() and key.isprintable() and " " not in key
    with pytest.raises(InvalidParameterError, match="namespace"):
        cache_key(fn, (1,), {}, namespace="has space")


def test_unhashable_state_raises_instead_of_a_random_key() -> None:
    class Holder:
        def __init__(self) -> None:
            self.lock = threading.Lock()

        def utility(self, players):
            return 0.0

    with pytest.raises(TokenizationError, match="deterministically"):
        memoize(Holder().utility, InMemoryCacheBackend())


def test_code_fingerprint_ignores_set_order_and_line_numbers() -> None:
    src = "def utility(p):\n    return 1.0 if p in {'alpha', 'beta', 'gamma', 'delta'} else 0.0\n"
    assert code_fingerprint(_define(src)) == code_fingerprint(_define("\n" * 5 + src))


_CHILD = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import cache_user_module as m
from dvl_dask import Dataset, Utility
from dvl_dask.cache import MemcachedCacheBackend, MemcachedClientConfig, memoize
from sklearn.linear_model import LinearRegression

backend = MemcachedCacheBackend(MemcachedClientConfig(server=("127.0.0.1", int(sys.argv[2])), timeout=2.0))
f = memoize(m.utility, backend, namespace="two-processes", subset_args=["players"])
rng = np.random.default_rng(0)
x = rng.normal(size=(24, 3))
data = Dataset.from_arrays(x, x.sum(axis=1), train_size=0.5, seed=0)
u = Utility(LinearRegression(), data, "r2", default_score=0.0, cache=backend)
values = [f(list(range(i, 0, -1))) for i in range(1, 6)]
out = {
    "keys": [f.cache_key([2, 1, 0]), u._memoized.cache_key(np.arange(4)), f.key_function.function_token],
    "values": values,
    "stats": f.stats.as_dict(),
}
print(json.dumps(out))
"""

_USER_MODULE = """
import math

WORDS = {"alpha", "beta", "gamma"}


def _weight(n):
    return math.log1p(n)


def utility(players, verbose=False):
    label = "alpha" if len(players) in {1, 2, 3} else "delta"
    # A set of strings is a frozenset constant whose order follows PYTHONHASHSEED.
    return _weight(len(players)) + (label in {"alpha", "beta", "gamma", "epsilon"}) + (label in WORDS)
"""


@pytest.mark.memcached
@pytest.mark.slow
def test_keys_identical_in_processes_with_other_hash_seeds_and_hits_shared(
    tmp_path, memcached_server, subprocess_env, python
) -> None:
    from dvl_dask.cache import MemcachedCacheBackend, MemcachedClientConfig

    (tmp_path / "cache_user_module.py").write_text(_USER_MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        import cache_user_module as m
    finally:
        sys.path.remove(str(tmp_path))
    # Separate programs share entries only with the same configured secret.
    backend = MemcachedCacheBackend(
        MemcachedClientConfig(server=memcached_server.address, timeout=2.0), hmac_key="two-processes-secret"
    )
    f = memoize(m.utility, backend, namespace="two-processes", subset_args=["players"])
    expected = [f(list(range(1, i + 1))) for i in range(1, 6)]  # the parent fills the cache
    data_x = np.random.default_rng(0).normal(size=(24, 3))
    u = _utility_from(data_x)
    parent_keys = [f.cache_key([0, 1, 2]), u._memoized.cache_key(np.arange(4)), f.key_function.function_token]

    procs = []
    for seed in ("1", "2"):
        env = dict(subprocess_env, PYTHONHASHSEED=seed, DVL_DASK_CACHE_KEY="two-processes-secret")
        procs.append(
            subprocess.Popen(
                [python, "-c", _CHILD, str(tmp_path), str(memcached_server.port)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        child = json.loads(out.strip().splitlines()[-1])
        assert child["keys"] == parent_keys
        assert child["values"] == expected
        assert child["stats"]["hits"] == 5 and child["stats"]["misses"] == 0


def _utility_from(x: np.ndarray) -> Utility:
    from sklearn.linear_model import LinearRegression

    data = Dataset.from_arrays(x, x.sum(axis=1), train_size=0.5, seed=0)
    return Utility(LinearRegression(), data, "r2", default_score=0.0, cache=InMemoryCacheBackend())


# -- decorated scorers (issue 23): a wrapper's closure is part of the key --------------------------


_scaled = scaled_by
_r2 = r2_scorer


def _decorated_utilities(cache_for) -> tuple[Utility, Utility]:
    from sklearn.linear_model import LinearRegression

    data = _data(3)
    return tuple(Utility(LinearRegression(), data, _scaled(f)(_r2), default_score=0.0, cache=cache_for())
                 for f in (1.0, -1.0))


def test_decorated_scorers_differing_in_a_wrapper_closure_get_different_keys() -> None:
    plus, minus = _scaled(1.0)(_r2), _scaled(-1.0)(_r2)
    assert plus.__wrapped__ is minus.__wrapped__ is _r2
    assert function_token(plus) != function_token(minus)
    assert function_token(plus) == function_token(_scaled(1.0)(_r2))
    # a wrapper differing only in its own code (same closure, same wrapped function)
    other = _define(
        """
        import functools
        def decorate(fn):
            @functools.wraps(fn)
            def wrapper(model, x, y):
                return {expr}
            return wrapper
        """.format(expr="fn(model, x, y) + 0.0"), "decorate")(_r2)
    again = _define(
        """
        import functools
        def decorate(fn):
            @functools.wraps(fn)
            def wrapper(model, x, y):
                return {expr}
            return wrapper
        """.format(expr="fn(model, x, y) - 1.0"), "decorate")(_r2)
    assert function_token(other) != function_token(again)


def test_decorated_scorers_through_a_shared_disk_cache(tmp_path) -> None:
    from dvl_dask.cache import DiskCacheBackend

    disk = DiskCacheBackend(tmp_path / "cache", hmac_key="decorated")
    plus, minus = _decorated_utilities(lambda: disk)
    assert plus.token != minus.token
    players = np.arange(plus.data.n_players)[1::2]
    true_plus, true_minus = plus.fit_and_score(players), minus.fit_and_score(players)
    assert true_minus == -true_plus != 0.0
    assert plus(players) == true_plus
    assert minus(players) == true_minus  # not the entry plus stored
    fresh = _decorated_utilities(lambda: DiskCacheBackend(tmp_path / "cache", hmac_key="decorated"))
    assert [u(players) for u in fresh] == [true_plus, true_minus]


@pytest.mark.memcached
def test_decorated_scorers_through_a_shared_memcached(memcached_server) -> None:
    from dvl_dask.cache import MemcachedCacheBackend, MemcachedClientConfig

    def backend():
        return MemcachedCacheBackend(
            MemcachedClientConfig(server=memcached_server.address, timeout=2.0), hmac_key="decorated-memcached"
        )

    plus, minus = _decorated_utilities(backend)
    players = np.arange(plus.data.n_players)[::3]
    true_plus = plus.fit_and_score(players)
    assert plus(players) == true_plus
    assert minus(players) == -true_plus
