"""The device of the batched models (issue 27): the torch path on the CPU ("torch:cpu") equals the numpy path.

No GPU here: "torch:cpu" runs the same solvers in torch on the CPU, which is
how the torch path (the one a GPU worker runs) is tested. Fits are compared
coefficient by coefficient with the numpy ("cpu") path; scores and values
also with ground truth written here (brute-force Shapley values).
"""

from __future__ import annotations

from math import comb

import dask
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dvl_dask import Dataset, Utility
from dvl_dask.errors import InvalidParameterError
from dvl_dask.models import LinearRegression, LogisticRegression, Ridge, fit_least_squares, fit_logistic, fit_ridge

torch = pytest.importorskip("torch")

TORCH_CPU = {"dvl_dask.models.device": "torch:cpu"}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """torch on one thread while these tests run (restored after): on a loaded 2-core machine torch's intra-op
    threads wait on each other and a batch of 12 tiny fits takes 1-2 s instead of 8 ms. The library itself never
    changes torch's threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rows(seed: int = 0, m: int = 30, d: int = 5) -> tuple[np.ndarray, np.random.Generator]:
    """Rows with a constant feature (column 1) and a feature constant in half of the rows (column 3)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, d)) * np.array([1.0, 1.0, 5.0, 1.0, 0.1])[:d] + 2.0
    x[:, 1] = 3.0
    x[: m // 2, 3] = -1.0
    return x, rng


def _weights(rng: np.random.Generator, m: int, counts: bool) -> np.ndarray:
    """0/1 masks or bootstrap-like counts, incl. a coalition of the rows where feature 3 is constant."""
    s = rng.integers(0, 3, size=(12, m)) if counts else (rng.random((12, m)) < 0.5)
    s = s.astype(float)
    s[0] = 0.0
    s[0, : m // 2] = 1.0
    return s


def _assert_same_fit(torch_fit, numpy_fit) -> None:
    for name in ("coef", "intercept", "params"):
        a, b = getattr(torch_fit, name), getattr(numpy_fit, name)
        assert isinstance(a, np.ndarray) and a.dtype == np.float64 and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * np.abs(b).max())
    np.testing.assert_array_equal(torch_fit.converged, numpy_fit.converged)
    assert torch_fit.n_iter == numpy_fit.n_iter


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("scale", [False, True])
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("counts", [False, True])
def test_logistic_fits_in_torch_on_the_cpu_equal_the_numpy_fits(n_classes, scale, fit_intercept, counts):
    x, rng = _rows(n_classes)
    y = np.arange(len(x)) % n_classes  # every coalition below holds every class
    s = _weights(rng, len(x), counts)
    s[:, :n_classes] = 1.0
    kw = dict(n_classes=n_classes, C=0.7, fit_intercept=fit_intercept, scale=scale)
    want = fit_logistic(x, y, s, **kw)
    assert want.converged.all()
    _assert_same_fit(fit_logistic(x, y, s, **kw, device="torch:cpu"), want)
    # gathered rows (prefixes of permutations in lockstep) and a warm start
    rows = np.stack([rng.permutation(len(x))[:12] for _ in range(3)])
    rows[:, :n_classes] = np.arange(n_classes)
    gathered = (x[rows], y[rows], np.ones(rows.shape))
    cold = fit_logistic(*gathered, **kw)
    _assert_same_fit(fit_logistic(*gathered, **kw, init=cold.params * 0.5, device="torch:cpu"),
                     fit_logistic(*gathered, **kw, init=cold.params * 0.5))


def test_logistic_torch_path_solves_large_batches_with_its_cholesky_and_small_ones_with_lu():
    # 60 coalitions: above the size where the numpy path switches from LU to its own batched Cholesky.
    x, rng = _rows(7, m=40)
    y = (x[:, 0] + rng.normal(size=len(x)) > 2.0).astype(int)
    s = (rng.random((60, len(x))) < 0.7).astype(float)
    s[:, np.flatnonzero(y == 0)[:1]] = s[:, np.flatnonzero(y == 1)[:1]] = 1.0
    for scale in (False, True):
        kw = dict(n_classes=2, C=2.0, fit_intercept=True, scale=scale)
        _assert_same_fit(fit_logistic(x, y, s, **kw, device="torch:cpu"), fit_logistic(x, y, s, **kw))


@pytest.mark.parametrize("scale", [False, True])
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("counts", [False, True])
def test_ridge_and_least_squares_in_torch_on_the_cpu_equal_the_numpy_fits(scale, fit_intercept, counts):
    x, rng = _rows(11, m=24, d=4)
    y = x @ np.array([1.0, 0.0, -0.5, 2.0]) + rng.normal(size=len(x))
    s = _weights(rng, len(x), counts)
    s[1, :] = 0.0
    s[1, :2] = 1.0  # fewer rows than features: least squares' minimum-norm solution
    kw = dict(fit_intercept=fit_intercept, scale=scale)
    _assert_same_fit(fit_ridge(x, y, s, alpha=0.5, **kw, device="torch:cpu"), fit_ridge(x, y, s, alpha=0.5, **kw))
    _assert_same_fit(fit_least_squares(x, y, s, **kw, device="torch:cpu"), fit_least_squares(x, y, s, **kw))


@pytest.mark.parametrize("n_suspect", [10, 60])  # refits below and above the batched Cholesky's batch size
def test_ridge_with_large_offsets_takes_the_same_direct_path_in_torch(monkeypatch, n_suspect):
    # Features far from zero and almost constant in a coalition: the moments would cancel, both paths refit
    # those coalitions from their own rows (_ridge_direct).
    from dvl_dask.models import _solvers

    rng = np.random.default_rng(5)
    x = 1e6 + rng.normal(size=(30, 3))
    x[:10, 2] = 1e6 + 1e-7 * rng.normal(size=10)
    y = x[:, 0] - 1e6 + rng.normal(size=30)
    s = (rng.random((n_suspect + 20, 30)) < 0.6).astype(float)
    s[:n_suspect] = 0.0
    s[:n_suspect, :10] = 1.0
    refits = []
    direct = _solvers._ridge_direct
    monkeypatch.setattr(_solvers, "_ridge_direct", lambda x, y, s, *a: refits.append(len(s)) or direct(x, y, s, *a))
    want = fit_ridge(x, y, s, alpha=1.0, fit_intercept=True, scale=True)
    _assert_same_fit(fit_ridge(x, y, s, alpha=1.0, fit_intercept=True, scale=True, device="torch:cpu"), want)
    assert refits == [n_suspect, n_suspect]


def test_torch_newton_steps_its_cholesky_rejects_are_solved_by_lu(monkeypatch):
    from dvl_dask.models._xp import TorchNamespace

    x, rng = _rows(9, m=40)
    y = np.arange(40) % 2
    s = (rng.random((64, 40)) < 0.7).astype(float)
    s[:, :2] = 1.0
    kw = dict(n_classes=2, C=1.0, fit_intercept=True, scale=True)
    want = fit_logistic(x, y, s, **kw)
    original = TorchNamespace.cholesky_solve_batch_last
    calls = []

    def rejecting(self, A, b):  # as if every third matrix had a non-positive pivot (cholesky_ex's info > 0)
        calls.append(A.shape[-1])
        solution, ok = original(self, A, b)
        ok[::3] = False
        solution[:, ::3] = np.nan  # what is not ok must not be used
        return solution, ok

    monkeypatch.setattr(TorchNamespace, "cholesky_solve_batch_last", rejecting)
    got = fit_logistic(x, y, s, **kw, device="torch:cpu")
    assert calls and got.converged.all()
    np.testing.assert_allclose(got.coef, want.coef, rtol=1e-10, atol=1e-12)


def test_lockstep_prefixes_with_warm_starts_under_torch_cpu_equal_the_numpy_ones():
    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(4).permutation(len(y))[:80]
    data = Dataset(x[order[:16]], y[order[:16]], x[order[16:]], y[order[16:]])
    u = Utility(make_pipeline(StandardScaler(), LogisticRegression()), data, "neg_log_loss", default_score=-2.0)
    orders = np.stack([np.random.default_rng(i).permutation(16) for i in range(6)])
    want, want_steps = u.batch_prefix_scores(orders)
    with dask.config.set(TORCH_CPU):
        got, steps = u.batch_prefix_scores(orders)
    np.testing.assert_array_equal(steps, want_steps)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def _masks(rng: np.random.Generator, n: int, y: np.ndarray) -> np.ndarray:
    masks = rng.random((40, n)) < rng.uniform(0.1, 1.0, (40, 1))
    masks[0] = False  # empty
    masks[1] = False
    masks[1, np.flatnonzero(y == y[0])[:3]] = True  # one class
    return masks


# iris coalitions missing a class: log-loss scored one at a time, with a warning
@pytest.mark.filterwarnings("ignore::dvl_dask.errors.UtilityFailureWarning")
@pytest.mark.parametrize("scoring", ["accuracy", "balanced_accuracy", "neg_log_loss"])
@pytest.mark.parametrize("loader", [load_breast_cancer, load_iris])
def test_classification_scores_under_torch_cpu_equal_the_numpy_scores(scoring, loader):
    x, y = loader(return_X_y=True)
    order = np.random.default_rng(1).permutation(len(y))[:50]
    x, y = x[order], y[order]
    data = Dataset(x[:20], y[:20], x[20:], y[20:])
    u = Utility(make_pipeline(StandardScaler(), LogisticRegression(C=0.5)), data, scoring, default_score=-3.0)
    masks = _masks(np.random.default_rng(2), 20, y[:20])
    want, want_single = u.evaluate_batch(masks), u(np.flatnonzero(masks[5]))
    with dask.config.set(TORCH_CPU):
        got = u.evaluate_batch(masks)
        single = u(np.flatnonzero(masks[5]))  # one fit (gathered rows), as the utility's one-at-a-time path
    assert got[0] == got[1] == -3.0  # empty and one-class coalitions: the default score
    if scoring == "neg_log_loss":
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    else:
        np.testing.assert_array_equal(got, want)
    assert single == pytest.approx(want_single, rel=1e-12)


@pytest.mark.parametrize("model", [Ridge(alpha=0.3), LinearRegression(),
                                   make_pipeline(StandardScaler(), Ridge(alpha=2.0))])
def test_regression_scores_under_torch_cpu_equal_the_numpy_scores(model):
    x, _ = load_breast_cancer(return_X_y=True)
    x, y = x[:60, 1:6], x[:60, 0]
    data = Dataset(x[:20], y[:20], x[20:], y[20:])
    u = Utility(model, data, "r2", default_score=0.0)
    masks = _masks(np.random.default_rng(3), 20, np.zeros(20))
    want = u.evaluate_batch(masks)
    with dask.config.set(TORCH_CPU):
        got = u.evaluate_batch(masks)
    assert got[0] == 0.0
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_bootstrap_fits_predict_the_same_under_torch_cpu():
    x, y = load_iris(return_X_y=True)
    order = np.random.default_rng(8).permutation(len(y))[:60]
    data = Dataset(x[order[:30]], y[order[:30]], x[order[30:]], y[order[30:]])
    u = Utility(make_pipeline(StandardScaler(), LogisticRegression()), data, "accuracy")
    counts = np.random.default_rng(9).multinomial(30, np.full(30, 1 / 30), size=16)
    counts[0] = 0
    counts[0, np.flatnonzero(data.y_train == data.y_train[0])] = 1  # one class: not fitted in the batch
    want = u.fit_predict_batch(counts)
    with dask.config.set(TORCH_CPU):
        got = u.fit_predict_batch(counts)
    assert got[0] is None and want[0] is None
    assert sum(g is not None for g in got) == len(counts) - 1
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_array_equal(g, w)


def test_least_squares_failures_raise_numpys_error_on_the_torch_path(monkeypatch):
    # The batch evaluator catches numpy.linalg.LinAlgError (the coalitions are then fitted one at a time).
    x, _ = _rows(2, m=12)
    s = np.ones((2, 12))

    def failing(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "svd", failing)
    with pytest.raises(np.linalg.LinAlgError, match="failed to converge"):
        fit_least_squares(x, x[:, 0], s, fit_intercept=True, device="torch:cpu")


def test_exact_shapley_under_torch_cpu_equals_brute_force_and_the_numpy_values():
    from dvl_dask.valuation import exact_shapley

    x, y = load_breast_cancer(return_X_y=True)
    x = StandardScaler().fit_transform(x)
    order = np.random.default_rng(6).permutation(len(y))[:58]
    data = Dataset(x[order[:8]], y[order[:8]], x[order[8:]], y[order[8:]])
    u = Utility(LogisticRegression(), data, "neg_log_loss", default_score=-1.0)
    with dask.config.set(TORCH_CPU):
        got = exact_shapley(u).value.compute(scheduler="sync").values
    want = exact_shapley(u).value.compute(scheduler="sync").values
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    masks = (np.arange(256)[:, None] >> np.arange(8) & 1).astype(bool)  # coalition `bits` is row `bits`
    scores = dict(enumerate(u.evaluate_batch(masks)))  # numpy, every coalition once
    brute = [sum((scores[bits | 1 << i] - scores[bits]) / (8 * comb(7, bin(bits).count("1")))
                 for bits in range(256) if not bits >> i & 1) for i in range(8)]
    np.testing.assert_allclose(got, brute, rtol=0, atol=1e-9)


def test_an_unavailable_device_raises_naming_the_setting_the_value_and_what_is_available():
    from dvl_dask.models import available_devices, batch_device

    assert available_devices()[:2] == ("cpu", "torch:cpu")
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last CUDA device (cuda:0 on this machine)
    x, y = np.arange(12.0).reshape(6, 2), np.arange(6.0)
    u = Utility(Ridge(), Dataset(x, y, x, y), "r2", default_score=0.0)  # catch_errors=True by default
    for value in (missing, "torch:" + missing):
        with dask.config.set({"dvl_dask.models.device": value}):
            for call in (batch_device, lambda: u(np.arange(6)), lambda: u.evaluate_batch([np.arange(6)])):
                with pytest.raises(InvalidParameterError, match=(
                        rf"'dvl_dask\.models\.device' is '{value}', but torch .* sees \d CUDA device.*"
                        r"Supported on this install: 'cpu', 'torch:cpu'")):
                    call()
    with dask.config.set({"dvl_dask.models.device": "gpu"}):
        with pytest.raises(InvalidParameterError, match=r"'gpu'.*Expected one of 'cpu', 'torch:cpu', 'cuda'"):
            batch_device()
    with pytest.raises(InvalidParameterError, match=r"'device' argument of fit_ridge is 'tpu'"):
        fit_ridge(x, y, np.ones((1, 6)), alpha=1.0, fit_intercept=True, device="tpu")
    with dask.config.set({"dvl_dask.models.device": " Torch:CPU "}):
        assert batch_device() == "torch:cpu"


def test_without_torch_a_torch_device_raises_and_cpu_still_works(monkeypatch):
    import sys

    from dvl_dask.models._xp import torch_module

    monkeypatch.setitem(sys.modules, "torch", None)  # what an environment without torch looks like to import
    torch_module.cache_clear()
    x, y = np.arange(12.0).reshape(6, 2), np.arange(6.0)
    try:
        _fit_without_torch(x, y)
    finally:
        torch_module.cache_clear()  # torch is imported again once sys.modules is restored


def _fit_without_torch(x: np.ndarray, y: np.ndarray) -> None:
    with dask.config.set(TORCH_CPU):
        with pytest.raises(InvalidParameterError, match=r"'torch:cpu', but torch.*is not installed "
                           r"\(pip install 'dvl_dask\[torch\]'\)\. Supported on this install: 'cpu'\. "):
            Ridge().fit(x, y)
    assert Ridge().fit(x, y).coef_.shape == (2,)
