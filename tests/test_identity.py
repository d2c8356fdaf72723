"""Identities: different computations never share a token, the same one has the same token everywhere.

Every token (graph keys, cache keys, checkpoint and zarr headers) comes from
``dvl_dask.keys``; these tests hold it to "equal values, equal tokens;
different values, different tokens", in this process and in fresh ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import f1_score, fbeta_score, make_scorer, precision_score, recall_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dvl_dask import Dataset, Utility
from dvl_dask.cache import InMemoryCacheBackend, memoize
from dvl_dask.errors import CheckpointMismatchError, InvalidParameterError, TokenizationError
from dvl_dask.keys import (
    class_token,
    dask_content_digest,
    estimator_token,
    function_token,
    model_token,
    object_token,
    package_version,
)
from dvl_dask.testing.games import AirportGame
from dvl_dask.valuation import MaxUpdates, loo, run_until_converged, semivalue
from dvl_dask.valuation._coefficients import log_binomial

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLOATS = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False).map(lambda v: v + 0.0)  # no -0.0
#: Lengths below and above numpy's print threshold (1000): repr elides the middle of long arrays.
LENGTHS = st.sampled_from([3, 999, 1001, 2500])


def _define(source: str, name: str, module: str = "notebook_cell"):
    namespace: dict = {"__name__": module}
    exec(textwrap.dedent(source), namespace)
    return namespace[name]


def _classification_data(seed: int = 0, n: int = 40) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = (x[:, 0] + 0.8 * rng.normal(size=n) > 0).astype(int)
    return Dataset.from_arrays(x, y, train_size=0.3, seed=seed, stratify=True)


# -- property-based: equal values <=> equal tokens ---------------------------------------------


@SETTINGS
@given(a=FLOATS, b=FLOATS)
def test_scalar_parameters(a, b):
    same = estimator_token(LogisticRegression(C=a)) == estimator_token(LogisticRegression(C=b))
    assert same == (a == b)


@SETTINGS
@given(data=st.data(), n=LENGTHS)
def test_array_parameters_below_and_above_the_print_threshold(data, n):
    a = np.random.default_rng(data.draw(st.integers(0, 2**32))).normal(size=n).round(data.draw(st.integers(0, 3)))
    a += 0.0  # no -0.0
    b = a.copy()
    if data.draw(st.booleans()):
        i = data.draw(st.integers(0, n - 1))
        b[i] = data.draw(FLOATS)
    same = model_token(Ridge(alpha=a)) == model_token(Ridge(alpha=b))
    assert same == (a.tobytes() == b.tobytes())


def test_long_arrays_that_differ_only_where_repr_elides_them():
    a = np.zeros(5000)
    b = a.copy()
    b[2500] = 1.0
    assert repr(a) == repr(b)
    assert model_token(Ridge(alpha=a)) != model_token(Ridge(alpha=b))
    m = np.arange(9.0).reshape(3, 3)
    assert object_token(m) != object_token(m.T)  # same bytes in memory order, other values
    assert object_token(m) == object_token(np.asfortranarray(m))  # same values, other layout


@SETTINGS
@given(c1=FLOATS, c2=FLOATS, center1=st.booleans(), center2=st.booleans())
def test_nested_estimators(c1, c2, center1, center2):
    def pipe(c, center):
        return make_pipeline(StandardScaler(with_mean=center), LogisticRegression(C=c))

    same = model_token(pipe(c1, center1)) == model_token(pipe(c2, center2))
    assert same == (c1 == c2 and center1 == center2)


@SETTINGS
@given(t1=st.one_of(FLOATS, st.integers(), st.text(max_size=5)), t2=st.one_of(FLOATS, st.integers(),
                                                                               st.text(max_size=5)))
def test_closures_with_captured_values(t1, t2):
    def make(threshold):
        return lambda x: x > threshold

    same = function_token(make(t1)) == function_token(make(t2))
    assert same == (type(t1) is type(t2) and t1 == t2)


SCORERS = {
    "f1": lambda: make_scorer(f1_score),
    "recall": lambda: make_scorer(recall_score),
    "precision": lambda: make_scorer(precision_score),
    "f1-macro": lambda: make_scorer(f1_score, average="macro"),
    "fbeta-0.5": lambda: make_scorer(fbeta_score, beta=0.5),
    "fbeta-2": lambda: make_scorer(fbeta_score, beta=2.0),
    "neg-f1": lambda: make_scorer(f1_score, greater_is_better=False),
    "f1-proba": lambda: make_scorer(f1_score, response_method="predict_proba"),
}


@SETTINGS
@given(a=st.sampled_from(sorted(SCORERS)), b=st.sampled_from(sorted(SCORERS)))
def test_scorers(a, b):
    assert (object_token(SCORERS[a]()) == object_token(SCORERS[b]())) == (a == b)


def weighted(alpha: float):
    """A custom semivalue coefficient factory: weights ~ (k + 1)^-alpha, normalised."""

    def log_w(n, k):
        sizes = np.arange(n)
        raw = -alpha * np.log1p(sizes)
        log_norm = np.logaddexp.reduce(log_binomial(n - 1, sizes) + raw)
        return -alpha * np.log1p(np.asarray(k, dtype=float)) - log_norm

    return log_w


@SETTINGS
@given(a=st.integers(0, 10), b=st.integers(0, 10))
def test_coefficient_factories(a, b):
    assert (function_token(weighted(a)) == function_token(weighted(b))) == (a == b)


# -- code-aware identities ----------------------------------------------------------------------


def test_editing_user_code_changes_tokens_installed_packages_give_name_and_version():
    src = """
        class Model:
            def __init__(self, c=1.0):
                self.c = c
            def fit(self, x, y):
                self.coef_ = {body}
                return self
    """
    v1, v1_again, v2 = (_define(src.format(body=b), "Model") for b in ("x.mean()", "x.mean()", "x.sum()"))
    assert class_token(v1) == class_token(v1_again) != class_token(v2)
    assert model_token(v1(2.0)) == model_token(v1_again(2.0)) != model_token(v1(3.0))
    assert model_token(v1(2.0)) != model_token(v2(2.0))
    assert package_version("sklearn.linear_model").startswith("scikit-learn==")
    assert package_version("notebook_cell") is None


def test_module_constants_read_by_code_are_part_of_its_token_assigned_globals_are_not():
    src = """
        THRESHOLD = {t}
        calls = 0
        def score(model, x, y):
            global calls
            calls += 1
            return float((model.predict(x) > THRESHOLD).mean())
    """
    a, b = _define(src.format(t=0.5), "score"), _define(src.format(t=0.7), "score")
    assert function_token(a) != function_token(b)
    token = function_token(a)
    a.__globals__["calls"] = 10  # run-time state does not change the identity
    assert function_token(a) == token


def test_objects_without_get_params_hash_by_state_and_unhashable_ones_raise():
    import threading

    class Plain:
        def __init__(self, k):
            self.k = k

        def fit(self, x, y):
            return self

    assert model_token(Plain(1)) == model_token(Plain(1)) != model_token(Plain(2))

    class Locked(Plain):
        def __init__(self):
            super().__init__(0)
            self.lock = threading.Lock()

    with pytest.raises(TokenizationError, match="__dask_tokenize__"):
        Utility(Locked(), _classification_data(), "accuracy")
    named = Utility(Locked(), _classification_data(), "accuracy", token="locked-v1")
    assert named.token == Utility(Locked(), _classification_data(), "accuracy", token="locked-v1").token
    assert named.token != Utility(Locked(), _classification_data(), "accuracy", token="locked-v2").token
    with pytest.raises(InvalidParameterError, match="'token'"):
        Utility(Plain(1), _classification_data(), "accuracy", token="")


def test_estimator_and_memoized_function_tokens_go_by_value():
    from dvl_dask.valuation._estimators import SemivalueEstimator
    from dvl_dask.valuation._samplers import UniformSampler

    e1 = SemivalueEstimator("semivalue", weighted(1), UniformSampler())
    e8 = SemivalueEstimator("semivalue", weighted(8), UniformSampler())
    assert object_token(e1) != object_token(e8)
    assert object_token(e1) == object_token(SemivalueEstimator("semivalue", weighted(1), UniformSampler()))

    backend = InMemoryCacheBackend()

    def make(scale):
        return lambda players: scale * len(players)

    assert dask.base.tokenize(memoize(make(1), backend)) != dask.base.tokenize(memoize(make(2), backend))
    assert dask.base.tokenize(memoize(make(1), backend)) == dask.base.tokenize(memoize(make(1), backend))


# -- regressions from the issue: colliding graphs computed together, shared caches ----------------


def test_f1_recall_precision_utilities_computed_together_and_through_a_shared_cache():
    data = _classification_data()
    model = LogisticRegression(max_iter=200)
    names = ("f1", "recall", "precision")
    utilities = [Utility(model, data, SCORERS[n]()) for n in names]
    assert len({u.token for u in utilities}) == 3
    together = dask.compute(*(loo(u).value for u in utilities), scheduler="sync")
    alone = [loo(u).value.compute(scheduler="sync") for u in utilities]
    for t, a in zip(together, alone):
        np.testing.assert_array_equal(t.values, a.values)
    assert not np.array_equal(alone[0].values, alone[1].values) or not np.array_equal(
        alone[0].values, alone[2].values
    )
    # one shared cache: each utility gets its own score back, never another scorer's
    cache = InMemoryCacheBackend()
    cached = [Utility(model, data, SCORERS[n]()) for n in names]
    cached = [Utility(model, data, SCORERS[n](), cache=cache) for n in names]
    players = np.arange(data.n_players)[::2]
    expected = [u.fit_and_score(players) for u in utilities]
    assert [u(players) for u in cached] == expected
    assert len({expected[0], expected[1], expected[2]}) > 1


def test_closures_differing_in_a_captured_threshold_computed_together():
    data = _classification_data(1)

    def threshold_scorer(threshold):
        def score(model, x, y):
            return float(np.mean((model.predict_proba(x)[:, 1] > threshold) == y))

        return score

    low, high = (Utility(LogisticRegression(), data, threshold_scorer(t), default_score=0.0) for t in (0.2, 0.8))
    assert low.token != high.token
    v_low, v_high = dask.compute(loo(low).value, loo(high).value, scheduler="sync")
    np.testing.assert_array_equal(v_low.values, loo(low).value.compute(scheduler="sync").values)
    np.testing.assert_array_equal(v_high.values, loo(high).value.compute(scheduler="sync").values)


def test_coefficient_factories_computed_together_and_refused_on_resume(tmp_path):
    game = AirportGame([1.0, 2.0, 3.0, 5.0])
    kwargs = dict(n_samples=60, seed=3, items_per_block=20)
    one, eight = (semivalue(game, weighted(a), **kwargs) for a in (1, 8))
    v1, v8 = dask.compute(one.value, eight.value, scheduler="sync")
    np.testing.assert_allclose(v1.values, semivalue(game, weighted(1), **kwargs).value.compute().values)
    np.testing.assert_allclose(v8.values, semivalue(game, weighted(8), **kwargs).value.compute().values)
    assert not np.allclose(v1.values, v8.values)

    ck = str(tmp_path / "weighted.zarr")
    run_until_converged(semivalue, game, coefficient=weighted(1), stop=MaxUpdates(20), seed=1, checkpoint=ck,
                        progress=False, items_per_block=10)
    with pytest.raises(CheckpointMismatchError, match="identity"):
        run_until_converged(semivalue, game, coefficient=weighted(8), stop=MaxUpdates(40), seed=1, checkpoint=ck,
                            progress=False, items_per_block=10)
    resumed = run_until_converged(semivalue, game, coefficient=weighted(1), stop=MaxUpdates(40), seed=1,
                                  checkpoint=ck, progress=False, items_per_block=10)
    assert resumed.attrs["n_blocks"] >= 2


def test_zarr_backed_data_is_fingerprinted_by_content(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4))
    y = (x[:, 0] > 0).astype(np.int64)
    url = str(tmp_path / "x.zarr")
    da.from_array(x, chunks=(10, 4)).to_zarr(url)

    def dataset(**kw):
        lazy = da.from_zarr(url)
        return Dataset(lazy[:20], y[:20], lazy[20:], y[20:], **kw)

    before = dataset()
    assert before.fingerprint == Dataset(x[:20], y[:20], x[20:], y[20:]).fingerprint
    import zarr

    zarr.open_array(url, mode="r+")[3, 2] = 99.0  # rewrite one value in the store
    after = dataset()
    assert after.fingerprint != before.fingerprint
    # with an explicit version the store is not read: the user names the content
    assert dataset(version="v1").fingerprint == dataset(version="v1").fingerprint != dataset(version="v2").fingerprint


def test_content_digest_ignores_chunks_and_container():
    x = np.random.default_rng(0).normal(size=(1000, 7)).astype(np.float32)
    digest = dask_content_digest(x)
    for chunks in [(1000, 7), (3, 7), (333, 2)]:
        assert dask_content_digest(da.from_array(x, chunks=chunks)) == digest
    y = x.copy()
    y[999, 6] += 1
    assert dask_content_digest(y) != digest
    assert dask_content_digest(x.astype(np.float64)) != digest


# -- the same tokens in fresh processes ----------------------------------------------------------

_MODULE = '''
import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import f1_score, make_scorer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

THRESHOLD = 0.25


def make_scorer_with(threshold):
    def score(model, x, y):
        return float(np.mean((model.predict(x) > threshold + THRESHOLD) == y))
    return score


class Custom:
    def __init__(self, weights):
        self.weights = weights

    def fit(self, x, y):
        return self


def objects():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = (x[:, 0] > 0).astype(int)
    return {
        "ridge": Ridge(alpha=np.linspace(0, 1, 2000)),
        "pipeline": make_pipeline(StandardScaler(), LogisticRegression(C=0.3, class_weight={0: 1, 1: 3})),
        "scorer": make_scorer(f1_score, average="macro"),
        "closure": make_scorer_with(0.5),
        "custom": Custom({"a": np.arange(5), "b": (1, "x")}),
        "data": (x, y),
    }
'''

_CHILD = '''
import json, sys
sys.path.insert(0, sys.argv[1])
import identity_objects as m
import dask.array as da
from dvl_dask import Dataset, Utility
from dvl_dask.keys import object_token

objs = m.objects()
x, y = objs.pop("data")
data = Dataset.from_arrays(da.from_array(x, chunks=7), y, train_size=0.5, seed=1)
out = {k: object_token(v) for k, v in objs.items()}
out["dataset"] = data.fingerprint
out["utility"] = Utility(objs["pipeline"], data, objs["closure"], default_score=0.0).token
print(json.dumps(out, sort_keys=True))
'''


@pytest.mark.slow
def test_tokens_are_the_same_in_fresh_processes_with_other_hash_seeds(tmp_path):
    (tmp_path / "identity_objects.py").write_text(_MODULE)
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env,
                             timeout=300, check=False)
        assert run.returncode == 0, run.stderr
        outputs.append(json.loads(run.stdout.strip().splitlines()[-1]))
    assert outputs[0] == outputs[1]
    assert len(set(outputs[0].values())) == len(outputs[0])
    sys.path.insert(0, str(tmp_path))
    try:
        import identity_objects as m

        objs = m.objects()
        objs.pop("data")
        assert {k: object_token(v) for k, v in objs.items()} == {k: outputs[0][k] for k in objs}
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("identity_objects", None)


class _Level(int):
    pass


class _Mode(__import__("enum").IntEnum):
    UP = 1
    DOWN = 2


_Pair = __import__("collections").namedtuple("_Pair", "a b")


@pytest.mark.parametrize(
    "make",
    [
        lambda v: _Level(v),
        lambda v: _Mode(v),
        lambda v: _Pair(1, v),
        lambda v: __import__("datetime").date(2020, 1, v),
        lambda v: __import__("decimal").Decimal(v),
        lambda v: np.float32(v),
        lambda v: {"nested": [np.arange(v), {"k": (v,)}]},
        lambda v: __import__("functools").partial(max, v),
        lambda v: slice(0, v),
    ],
)
def test_assorted_values_equal_iff_same(make):
    assert object_token(make(1)) == object_token(make(1))
    assert object_token(make(1)) != object_token(make(2))


def test_class_tokens_do_not_depend_on_what_was_hashed_before():
    src = """
        class A:
            def make(self):
                return B()

        class B:
            def make(self):
                return A()
    """
    first, second = ({"__name__": "cells"}, {"__name__": "cells"})
    exec(textwrap.dedent(src), first)
    exec(textwrap.dedent(src), second)
    a1, b1 = class_token(first["A"]), class_token(first["B"])  # A first here ...
    b2, a2 = class_token(second["B"]), class_token(second["A"])  # ... B first there
    assert (a1, b1) == (a2, b2) and a1 != b1


def test_tokenizing_from_many_threads_while_dask_tokenizes_does_not_deadlock():
    from concurrent.futures import ThreadPoolExecutor

    def work(i):
        cls = _define(f"class C:\n    def f(self):\n        return {i}\n", "C")
        return object_token(cls(), make_pipeline(StandardScaler(), LogisticRegression(C=i + 1.0))), \
            dask.base.tokenize(lambda x: x + i, cls)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(64), timeout=120))
    assert len({r[0] for r in results}) == 64


def test_checkpoint_identity_refuses_another_estimator_code_accepts_another_version_alone(tmp_path):
    import zarr

    from dvl_dask.valuation import permutation_shapley

    game = AirportGame([1.0, 2.0, 3.0])
    ck = str(tmp_path / "ck.zarr")

    def run(updates):
        return run_until_converged(permutation_shapley, game, stop=MaxUpdates(updates), seed=1, checkpoint=ck,
                                   progress=False, items_per_block=5)

    run(10)
    group = zarr.open_group(ck, mode="r+")
    identity = dict(group.attrs["identity"])
    assert identity["dvl_dask_version"] and identity["estimator"]["parameters"]["sampler"]
    # written by another dvl_dask version whose estimator code was the same: resumed
    group.attrs["identity"] = {**identity, "dvl_dask_version": "0.0.1"}
    assert run(20).attrs["n_blocks"] >= 2
    # written by a version whose estimator code differed: refused, saying so
    group.attrs["identity"] = {**identity, "dvl_dask_version": "0.0.1",
                               "estimator": {**identity["estimator"], "token": "0" * 32}}
    with pytest.raises(CheckpointMismatchError, match=r"estimator's code changed \(written by dvl_dask 0.0.1"):
        run(30)


def test_sampler_and_truncation_subclasses_with_state_of_their_own_get_keys_of_their_own():
    """Samplers and truncation policies hash their class and whole state, not a hand-picked parameters()."""
    from dvl_dask.valuation import FixedTruncation, UniformSampler, banzhaf

    class BiasedSampler(UniformSampler):
        """Includes each player with probability q (same name and parameters() as its base)."""

        def __init__(self, q):
            self.q = float(q)

        def inclusion_probabilities(self, rng, m):
            return np.full(m, self.q)

        def log_proposal(self, n, k):
            k = np.asarray(k, dtype=float)
            return k * np.log(self.q) + (n - k) * np.log1p(-self.q)

    class Tagged(FixedTruncation):
        def __init__(self, fraction, tag):
            super().__init__(fraction)
            self.tag = tag

    assert object_token(BiasedSampler(0.3)) != object_token(BiasedSampler(0.7))
    assert object_token(BiasedSampler(0.3)) == object_token(BiasedSampler(0.3))
    assert object_token(Tagged(0.5, "a")) != object_token(Tagged(0.5, "b"))
    game = AirportGame([1.0, 2.0, 3.0, 4.0])
    low = banzhaf(game, n_samples=400, sampler=BiasedSampler(0.3), seed=0)
    high = banzhaf(game, n_samples=400, sampler=BiasedSampler(0.7), seed=0)
    together = dask.compute(low, high, scheduler="sync")
    alone = [low.compute(scheduler="sync"), high.compute(scheduler="sync")]
    for got, want in zip(together, alone, strict=True):
        np.testing.assert_array_equal(got["value"].values, want["value"].values)
    assert not np.array_equal(together[0]["value"].values, together[1]["value"].values)
