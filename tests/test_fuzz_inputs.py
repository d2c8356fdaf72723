"""Fuzzing the public entry points: a clear DvlDaskError or a finite answer, never silent garbage.

Every call below either returns a well-formed, finite answer, or raises a
:class:`~dvl_dask.errors.DvlDaskError` subclass (each also subclasses the
builtin it documents). The second half is a table of the cases a fault
injection found, kept as regression tests.
"""

from __future__ import annotations

import math
import pickle

import cloudpickle
import dask
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LinearRegression

from dvl_dask import Dataset, Utility
from dvl_dask.cache import InMemoryCacheBackend, RunningStats, _codec
from dvl_dask.errors import (
    DvlDaskError,
    InvalidDataError,
    InvalidParameterError,
    UnusableUtilityError,
    UtilityFailureWarning,
)
from dvl_dask.testing.games import AdditiveGame, Game
from dvl_dask.validation import check_coalition
from dvl_dask.valuation import (
    AbsoluteStandardError,
    HistoryDeviation,
    MaxUpdates,
    RelativeStandardError,
    RelativeTruncation,
    exact_shapley,
    permutation_shapley,
)

N = 6
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _small_utility(**kw) -> Utility:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 2))
    y = x @ np.array([1.0, -2.0]) + 0.1 * rng.normal(size=16)
    data = Dataset(x[:N], y[:N], x[N:], y[N:])
    return Utility(LinearRegression(), data, "r2", **{"default_score": 0.0, **kw})


UTILITY = _small_utility()
GAME = AdditiveGame(np.arange(1.0, N + 1))

scalars = st.one_of(
    st.integers(-3, N + 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)
coalitions = st.one_of(
    st.lists(st.integers(-2, N + 2), max_size=8),
    st.lists(scalars, max_size=5),
    st.lists(st.booleans(), min_size=0, max_size=N + 2),
    st.lists(st.lists(st.integers(0, N - 1), max_size=3), max_size=3),
    scalars,
    st.sets(st.integers(-1, N), max_size=5),
    st.builds(lambda a: np.asarray(a, dtype=np.float64), st.lists(st.integers(0, N - 1), max_size=4)),
    st.builds(lambda a: np.asarray(a, dtype=np.int32).reshape(-1, 1), st.lists(st.integers(0, N - 1), max_size=4)),
)


@FUZZ
@given(indices=coalitions)
def test_coalitions_give_a_finite_score_or_a_clear_error(indices) -> None:
    for u in (UTILITY, GAME):
        try:
            score = u(indices)
        except DvlDaskError as exc:
            assert isinstance(exc, InvalidParameterError) and "coalition" in str(exc).lower()
            continue
        assert isinstance(score, float) and math.isfinite(score)
        # What was accepted is a set of valid integer indices or a full-length mask, read as such.
        arr = np.asarray(list(indices) if isinstance(indices, set) else indices)
        if arr.dtype == bool:
            assert arr.shape == (N,) and score == u(np.flatnonzero(arr))
        else:
            assert arr.size == 0 or (np.issubdtype(arr.dtype, np.integer) and arr.ndim == 1)


@FUZZ
@given(mask=st.lists(st.booleans(), min_size=N, max_size=N))
def test_boolean_masks_are_masks(mask) -> None:
    players = np.flatnonzero(mask)
    assert GAME(mask) == GAME(players) == float(np.arange(1.0, N + 1)[players].sum())
    assert UTILITY(np.asarray(mask)) == UTILITY(players)


@FUZZ
@given(
    n=st.integers(0, 12),
    train_size=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-1, 2)),
    stratify=st.booleans(),
    n_classes=st.integers(1, 6),
    seed=st.integers(0, 3),
)
def test_dataset_from_arrays_splits_or_says_why(n, train_size, stratify, n_classes, seed) -> None:
    x = np.arange(2 * n, dtype=float).reshape(n, 2)
    y = np.arange(n) % n_classes
    try:
        data = Dataset.from_arrays(x, y, train_size=train_size, stratify=stratify, seed=seed)
    except DvlDaskError as exc:
        assert isinstance(exc, InvalidDataError | InvalidParameterError)
        return
    assert data.n_players >= 1 and len(data.x_test) >= 1
    assert data.n_players + len(data.x_test) == n


@FUZZ
@given(
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.booleans(), st.text(max_size=2)
    )
)
def test_numeric_parameters_are_finite_or_refused(value) -> None:
    constructors = [
        lambda v: RelativeStandardError(v),
        lambda v: AbsoluteStandardError(v),
        lambda v: RelativeTruncation(v),
        lambda v: HistoryDeviation(5, v),
        lambda v: _small_utility(default_score=v),
    ]
    for make in constructors:
        try:
            obj = make(value)
        except DvlDaskError as exc:
            assert isinstance(exc, InvalidParameterError)
            continue
        for attr in ("rtol", "threshold", "default_score"):
            if hasattr(obj, attr):
                assert math.isfinite(getattr(obj, attr))


@FUZZ
@given(data=st.binary(max_size=80))
def test_the_cache_decoder_rejects_any_bytes_it_did_not_sign(data) -> None:
    with pytest.raises(_codec.Rejected):
        _codec.decode("k", data, b"secret")


@FUZZ
@given(body=st.binary(max_size=60))
def test_signed_bodies_parse_or_are_rejected_never_crash(body) -> None:
    assume(not body.startswith(b"P"))  # a verified pickle is trusted by design
    data = _codec.MAGIC + _codec._mac(b"secret", "k", body) + body
    try:
        _codec.decode("k", data, b"secret")
    except _codec.Rejected:
        pass


@FUZZ
@given(
    value=st.one_of(
        st.floats(allow_nan=False),
        st.integers(),
        st.builds(RunningStats, st.integers(0, 10**6), st.floats(allow_nan=False), st.floats(0, 1e9)),
        st.lists(st.floats(allow_nan=False), max_size=5).map(np.asarray),
    )
)
def test_value_only_round_trip(value) -> None:
    back = _codec.decode("k", _codec.encode("k", value, b"s"), b"s")
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(back, value)
    else:
        assert back == value and type(back) is type(value)


@FUZZ
@given(
    min_reps=st.integers(1, 300),
    max_reps=st.one_of(st.none(), st.just(math.inf), st.integers(1, 300)),
)
def test_repetition_options_survive_pickling_exactly(min_reps, max_reps) -> None:
    cache = {
        "dvl_dask.cache.allow-repeated-evaluations": True,
        "dvl_dask.cache.min-repetitions": min_reps,
        "dvl_dask.cache.max-repetitions": max_reps,
    }
    with dask.config.set(cache):
        try:
            u = _small_utility(cache=InMemoryCacheBackend())
        except DvlDaskError as exc:
            assert isinstance(exc, InvalidParameterError) and max_reps is not None and max_reps < min_reps
            return
    expected = None if max_reps in (None, math.inf) else max_reps
    assert u._memoized.max_repetitions == expected
    for dumps in (pickle.dumps, cloudpickle.dumps):
        with dask.config.set({"dvl_dask.cache.max-repetitions": 100}):  # a worker with the default config
            clone = pickle.loads(dumps(u))
        assert clone._memoized.max_repetitions == expected
        assert clone._memoized.min_repetitions == min_reps


# -- regression table: the cases fault injection found -----------------------------------------------


class _NoPredict:
    def fit(self, x, y):
        return self

    def get_params(self, deep=True):
        return {}


def _data(x, y) -> Dataset:
    return Dataset(x[:8], y[:8], x[8:], y[8:])


_rng = np.random.default_rng(1)
_x2 = _rng.normal(size=(12, 2))
_y_cont = _x2 @ np.array([1.0, 2.0])
_y_class = (_x2[:, 0] > 0).astype(int)

UNUSABLE = {
    "1-D features": lambda: Utility(LinearRegression(), _data(_x2[:, 0], _y_cont), "r2", default_score=0.0),
    "3-D features": lambda: Utility(LinearRegression(), _data(_x2.reshape(12, 2, 1), _y_cont), "r2", default_score=0.0),
    "string features": lambda: Utility(LinearRegression(), _data(_x2.astype(str), _y_cont), "r2", default_score=0.0),
    "model without predict": lambda: Utility(_NoPredict(), _data(_x2, _y_cont), "r2", default_score=0.0),
    # a classifier on continuous targets and accuracy on a regressor are refused when built (test_input_errors.py)
    "scorer returning NaN": lambda: Utility(
        LinearRegression(), _data(_x2, _y_cont), lambda m, x, y: float("nan"), default_score=0.0
    ),
    "scorer returning None": lambda: Utility(
        LinearRegression(), _data(_x2, _y_cont), lambda m, x, y: None, default_score=0.0
    ),
}


@pytest.mark.parametrize("case", list(UNUSABLE))
def test_unusable_utilities_raise_instead_of_returning_zeros(case) -> None:
    u = UNUSABLE[case]()
    with pytest.raises(UnusableUtilityError, match="cannot be evaluated") as info:
        u(range(4))
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnusableUtilityError):
        exact_shapley(u).compute()  # inside a graph too


def test_unusable_utility_can_be_configured_to_warn_once() -> None:
    with dask.config.set({"dvl_dask.utility.on-unusable": "warn"}):
        u = UNUSABLE["scorer returning NaN"]()
    with pytest.warns(UtilityFailureWarning, match="cannot be evaluated") as record:
        assert [u(range(k)) for k in (3, 5, 8)] == [0.0, 0.0, 0.0]
    assert len([w for w in record if "cannot be evaluated" in str(w.message)]) == 1
    with pytest.raises(InvalidParameterError, match="on_unusable"):
        _small_utility(on_unusable="ignore")


def test_small_coalitions_that_fail_only_warn_when_the_full_set_works() -> None:
    from sklearn.neighbors import KNeighborsRegressor

    u = Utility(KNeighborsRegressor(n_neighbors=3), _data(_x2, _y_cont), "r2", default_score=0.0)
    with pytest.warns(UtilityFailureWarning, match="2 player"):
        assert u([0, 1]) == 0.0  # fewer samples than neighbours
    assert math.isfinite(u(range(8))) and u(range(8)) != 0.0


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf, "high", True])
def test_default_score_must_be_finite(score) -> None:
    with pytest.raises(InvalidParameterError, match="default_score"):
        _small_utility(default_score=score)
    with dask.config.set({"dvl_dask.utility.default-score": score}), pytest.raises(InvalidParameterError):
        _small_utility(default_score=None)


@pytest.mark.parametrize(
    ("indices", "match"),
    [
        ([True, False], "boolean mask of length 2"),  # never read as the indices {0, 1}
        ([0.7, 1.2], "integer player indices"),  # never truncated to [0, 1]
        (np.array([[0, 1], [2, 3]]), "one-dimensional"),  # never flattened
        ([0, N], r"outside \[0, 6\)"),
        ("01", "sequence of player indices"),
        (3, "sequence of player indices"),
        ([None], "integer player indices"),
    ],
)
def test_coalition_regressions(indices, match) -> None:
    for u in (UTILITY, GAME):
        with pytest.raises(InvalidParameterError, match=match):
            u(indices)
    assert check_coalition([True] * N, N).tolist() == list(range(N))


class _NoneGame(Game):
    def value(self, players):
        return None


class _NaNGame(Game):
    def value(self, players):
        return float("nan") if players.size == 2 else float(players.size)


class _UserUtility:
    """A user's own UtilityLike returning NaN for one coalition."""

    token = "user-utility"
    n_players = 3
    data_names = np.arange(3)

    def __call__(self, indices):
        return float("nan") if len(indices) == 1 else float(len(indices))


@pytest.mark.parametrize("game", [_NoneGame(3), _NaNGame(3)], ids=["None", "NaN"])
def test_games_returning_none_or_nan_raise(game) -> None:
    with pytest.raises(InvalidParameterError, match=r"not a real number|must be finite"):
        exact_shapley(game).compute()


def test_user_utilities_returning_nan_raise_in_every_method() -> None:
    with pytest.raises(InvalidParameterError, match="must be finite"):
        exact_shapley(_UserUtility()).compute()
    with pytest.raises(InvalidParameterError, match="must be finite"):
        permutation_shapley(_UserUtility(), n_permutations=4, seed=0).compute()


def test_truncation_and_stopping_refuse_unreachable_tolerances() -> None:
    for bad in (math.inf, math.nan, 0.0, -1.0):
        with pytest.raises(InvalidParameterError, match="'rtol'"):
            permutation_shapley(GAME, n_permutations=2, truncation=bad)
    with pytest.raises(InvalidParameterError, match="'rtol'"):
        RelativeStandardError(1e-300)
    assert RelativeStandardError(1e-6).rtol == 1e-6
    assert MaxUpdates(3)  # the criterion to combine with a small tolerance


def test_from_arrays_regressions() -> None:
    x, y = np.arange(40.0).reshape(20, 2), np.arange(20) % 2
    with pytest.raises(InvalidDataError, match="training part empty"):
        Dataset.from_arrays(x, y, train_size=0.01)
    with pytest.raises(InvalidDataError, match="training part empty"):
        Dataset.from_arrays(x[:3], y[:3], train_size=0.3)
    with pytest.raises(InvalidDataError, match=r"single sample"):
        Dataset.from_arrays(x, np.r_[y[:-1], 7], stratify=True)
    with pytest.raises(InvalidParameterError, match="'stratify'"):
        Dataset.from_arrays(x, y, stratify="yes")


@pytest.mark.torch
@pytest.mark.parametrize("regularization", [math.inf, math.nan, -0.1, "0.1", None])
def test_influence_regularization_must_be_finite_and_non_negative(regularization) -> None:
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    from dvl_dask.influence.torch import CgInfluence, DirectInfluence

    for cls in (DirectInfluence, CgInfluence):
        with pytest.raises(InvalidParameterError, match="'regularization'"):
            cls(torch.nn.Linear(2, 1), F.mse_loss, regularization=regularization)


@pytest.mark.torch
def test_nan_loss_is_not_blamed_on_regularization() -> None:
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    from dvl_dask.errors import InvalidModelError
    from dvl_dask.influence.torch import DirectInfluence

    x, y = torch.randn(16, 2, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    model = torch.nn.Linear(2, 1).double()

    def nan_loss(out, target):  # e.g. a 0 * inf somewhere in the loss: NaN values and derivatives
        return F.mse_loss(out, target) * (torch.zeros((), dtype=out.dtype) * math.inf)

    with pytest.raises(InvalidModelError, match="not finite") as info:
        DirectInfluence(model, nan_loss, regularization=0.1).fit((x, y))
    assert "singular" not in str(info.value) and "positive regularization" not in str(info.value)


budgets = st.one_of(st.integers(-2, 30), st.floats(allow_nan=True, allow_infinity=True), st.none(), st.text(max_size=2))
seeds = st.one_of(st.integers(-2, 2**70), st.none(), st.floats(allow_nan=True), st.text(max_size=2))


@FUZZ
@given(
    method=st.sampled_from(["permutation_shapley", "banzhaf", "msr_banzhaf", "beta_shapley", "owen_shapley"]),
    budget=budgets,
    seed=seeds,
    items_per_block=st.one_of(st.none(), st.integers(-1, 5), st.floats(allow_nan=True)),
    antithetic=st.one_of(st.booleans(), st.integers(0, 2), st.text(max_size=1)),
    alpha=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-1, 20)),
)
def test_valuation_methods_give_finite_values_or_a_clear_error(
    method, budget, seed, items_per_block, antithetic, alpha
) -> None:
    from dvl_dask import valuation

    fn = getattr(valuation, method)
    kwargs: dict = {"seed": seed, "items_per_block": items_per_block}
    kwargs["n_permutations" if method == "permutation_shapley" else "n_samples"] = budget
    if method in ("permutation_shapley", "msr_banzhaf", "owen_shapley"):
        kwargs["antithetic"] = antithetic
    if method == "beta_shapley":
        kwargs.update(alpha=alpha, beta=1.0)
    small = AdditiveGame([1.0, 2.0, 3.0])
    try:
        ds = fn(small, **kwargs).compute()
    except DvlDaskError as exc:
        assert isinstance(exc, InvalidParameterError | InvalidDataError), exc
        return
    assert np.isfinite(ds["value"].values).all()
    assert (ds["stderr"].values >= 0).all()  # never NaN (inf while a point has too few samples)


def test_history_size_and_catch_errors_are_checked() -> None:
    from dvl_dask.valuation import HistoryDeviation

    with pytest.raises(InvalidParameterError, match="n_steps"):
        HistoryDeviation(n_steps=10**30, rtol=0.01)
    with pytest.raises(InvalidParameterError, match="catch_errors"):
        _small_utility(catch_errors="yes")


# -- every public callable and every CLI command (issue 25) --------------------------------------------

import collections  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import pathlib  # noqa: E402
import tempfile  # noqa: E402

from fuzz_cases import CASES, EXEMPT, KNOWN_GAPS, public_callables  # noqa: E402

#: Inputs tried per public callable (and per CLI command), printed at the end of this module's tests.
TRIED: collections.Counter[str] = collections.Counter()
FEW = settings(max_examples=4, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _report_inputs_tried(request):
    yield
    if TRIED:
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"  {name}: {count}" for name, count in sorted(TRIED.items())]
        text = f"\nMalformed inputs tried per public callable ({sum(TRIED.values())} in all):\n" + "\n".join(lines)
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            if reporter is not None:
                reporter.write_line(text)
            else:
                print(text)


def test_every_public_callable_has_a_bad_input_case() -> None:
    missing = [
        names for names in public_callables().values() if not any(n in CASES or n in EXEMPT for n in names)
    ]
    gaps = sorted(n for n in KNOWN_GAPS if n in CASES)
    print(f"{len(gaps)} public callables still give raw errors or accept bad input (known gaps): {gaps}")
    assert not missing, f"public callables without a bad-input case in tests/fuzz_cases.py: {missing}"
    known = {n for names in public_callables().values() for n in names}
    stale = sorted(n for n in [*CASES, *KNOWN_GAPS] if n not in known)
    assert all(n in CASES for n in KNOWN_GAPS), "a known gap needs its (skipped) case"
    assert not stale, f"cases for names that are not public (renamed?): {stale}"


def _assert_clear_error(name: str, case, value, exc: BaseException) -> None:
    import re

    assert isinstance(exc, DvlDaskError), (
        f"{name}({case.argument}={value!r:.60}) raised a raw {type(exc).__name__}: {exc}"
    )
    named = case.named or re.escape(case.argument)
    assert re.search(named, str(exc), re.IGNORECASE), (
        f"{name}({case.argument}={value!r:.60}): the message does not name {case.argument!r}: {exc}"
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.skip(reason=f"known gap: {KNOWN_GAPS[n]}")) if n in KNOWN_GAPS else n
     for n in sorted(CASES)],
)
@FEW
@given(data=st.data())
def test_public_callables_refuse_malformed_inputs(name, data) -> None:
    if ".influence.torch." in name:
        pytest.importorskip("torch")
    if name.startswith("dvl_dask.plot."):
        matplotlib = pytest.importorskip("matplotlib")
        matplotlib.use("Agg")
    case = data.draw(st.sampled_from(CASES[name]), label="argument")
    value = data.draw(case.values, label=case.argument)
    TRIED[name] += 1
    with tempfile.TemporaryDirectory() as folder:
        tmp = pathlib.Path(folder)
        try:
            case.call(value, tmp)
        except Exception as exc:  # what the test inspects
            _assert_clear_error(name, case, value, exc)
        else:
            pytest.fail(f"{name}({case.argument}={value!r:.60}) was accepted")
        finally:
            stray = tmp.parent / f"{tmp.name}-a-file"
            stray.unlink(missing_ok=True)
            if name.startswith("dvl_dask.plot."):
                import matplotlib.pyplot as plt

                plt.close("all")
        assert not list(tmp.iterdir()), f"{name} wrote {list(tmp.iterdir())} although it failed"


_CLI_NUMBERS = {
    "value": ["--n-points", "--budget", "--workers", "--top"],
    "demo": ["--n-points", "--budget", "--workers", "--top"],
    "evaluate": ["--max-fraction", "--steps", "--n-random", "--workers"],
    "influence": ["--chunk-size", "--fit-batch-size", "--rank", "--maxiter", "--regularization", "--rtol"],
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", sorted(_CLI_NUMBERS))
@FEW
@given(data=st.data())
def test_cli_commands_refuse_malformed_options_without_a_traceback(command, data) -> None:
    from dvl_dask.cli import main

    option = data.draw(st.sampled_from(_CLI_NUMBERS[command]), label="option")
    value = data.draw(st.one_of(st.integers(-5, 0), st.sampled_from(["nan", "inf", "-1", "x", "1e400", ""])),
                      label="value")
    if option in ("--max-fraction",) and value in (0,):
        value = 2
    TRIED[f"dvl-dask {command}"] += 1
    with tempfile.TemporaryDirectory() as folder:
        out = pathlib.Path(folder) / "out.zarr"
        argv = [command, option, str(value), "--out", str(out)]
        if command == "influence":
            argv += ["--model", "m.pt", *(f"--{a}=missing.npy" for a in ("x-train", "y-train", "x-test", "y-test"))]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse: a value that is not a number at all
                code = exc.code
        assert code == 2, f"dvl-dask {' '.join(argv)} exited {code}"
        text = err.getvalue()
        assert "error:" in text and option.lstrip("-") in text and "Traceback" not in text, text
        assert not list(pathlib.Path(folder).iterdir())
