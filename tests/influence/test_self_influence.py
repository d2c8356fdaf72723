"""Self-influence: the diagonal of the train-vs-train matrix, for every model type and both engines, lazily."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dvl_dask.errors import InvalidParameterError, NotFittedError, UnknownModeError  # noqa: E402
from dvl_dask.influence import (  # noqa: E402
    DaskInfluenceCalculator,
    DisableClientSingleThreadCheck,
    InfluenceFunctionModel,
    SequentialInfluenceCalculator,
)
from dvl_dask.influence.torch import (  # noqa: E402
    ArnoldiInfluence,
    CgInfluence,
    DirectInfluence,
    EkfacInfluence,
    InverseHarmonicMeanInfluence,
    LissaInfluence,
    LograInfluence,
    NystroemSketchInfluence,
    TorchCatAggregator,
    TorchNumpyConverter,
    TracInInfluence,
    TrakInfluence,
)
from dvl_dask.testing import raise_if_dask_computes  # noqa: E402

pytestmark = pytest.mark.torch

LAM = 0.1
MODELS = {
    "direct": lambda m, loss: DirectInfluence(m, loss, regularization=LAM),
    "cg": lambda m, loss: CgInfluence(m, loss, regularization=LAM, maxiter=5, warn_on_max_iteration=False),
    "cg-per-sample": lambda m, loss: CgInfluence(
        m, loss, regularization=LAM, maxiter=5, warn_on_max_iteration=False, solve_simultaneously=False
    ),
    "lissa": lambda m, loss: LissaInfluence(
        m,
        loss,
        regularization=1.0,
        scale=5.0,
        maxiter=20,
        warn_on_max_iteration=False,
        second_order_mode="gauss_newton",
    ),
    "arnoldi": lambda m, loss: ArnoldiInfluence(m, loss, rank=10, regularization=LAM),
    "ekfac": lambda m, loss: EkfacInfluence(m, loss, regularization=LAM),
    "nystroem": lambda m, loss: NystroemSketchInfluence(
        m, loss, rank=10, regularization=LAM, second_order_mode="gauss_newton"
    ),
    "datainf": lambda m, loss: InverseHarmonicMeanInfluence(m, loss, regularization=LAM),
    "trak": lambda m, loss: TrakInfluence(m, loss, projection_dim=64, regularization=LAM),
    "logra": lambda m, loss: LograInfluence(m, loss, input_dim=4, output_dim=2, regularization=LAM),
    "tracin": lambda m, loss: TracInInfluence(m, loss),
    "tracin-cosine": lambda m, loss: TracInInfluence(m, loss, normalize=True),
}


def _fitted(name, p):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MODELS[name](p.model, p.loss)
        if name.startswith("tracin"):  # fits from checkpoints: the trained state and a perturbed copy
            state = p.model.state_dict()
            shifted = {k: v + 0.01 for k, v in state.items()}
            return model.fit([state, shifted], [0.1, 0.05])
        return model.fit((p.x, p.y))


@pytest.mark.parametrize("name", list(MODELS))
def test_self_influences_are_the_diagonal_for_every_model(name, mlp_classifier):
    p = mlp_classifier
    model = _fitted(name, p)
    full = model.influences(p.x, p.y, p.x, p.y)
    actual = model.self_influences(p.x, p.y)
    assert actual.shape == (len(p.x),)
    torch.testing.assert_close(actual, torch.diagonal(full), rtol=1e-9, atol=1e-12)
    # The generic implementation of the ABC (any model type) gives the same values.
    generic = InfluenceFunctionModel._self_influences(model, p.x, p.y, model_mode("up"))
    torch.testing.assert_close(generic, actual, rtol=1e-9, atol=1e-12)


def model_mode(mode):
    from dvl_dask.influence import InfluenceMode

    return InfluenceMode.parse(mode)


@pytest.mark.parametrize("name", ["direct", "ekfac"])
def test_perturbation_self_influences_are_the_diagonal(name, mlp_classifier):
    p = mlp_classifier
    model = _fitted(name, p)
    x, y = p.x[:12], p.y[:12]
    full = model.influences(x, y, x, y, mode="perturbation")  # (12, 12, 3)
    expected = full[torch.arange(12), torch.arange(12)]
    actual = model.self_influences(x, y, mode="perturbation")
    assert actual.shape == x.shape
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)
    generic = InfluenceFunctionModel._self_influences(model, x, y, model_mode("perturbation"))
    torch.testing.assert_close(generic, expected, rtol=1e-9, atol=1e-12)


class NumpyRidgeInfluence(InfluenceFunctionModel):
    """A model type outside torch: ridge regression in numpy, no per-sample gradients exposed."""

    def __init__(self, lam):
        self.lam = lam
        self.h_inv = None

    n_parameters = property(lambda self: 4)
    is_fitted = property(lambda self: self.h_inv is not None)

    def fit(self, data):
        x, _ = data
        self.h_inv = np.linalg.inv(2 * x.T @ x / len(x) + self.lam * np.eye(4))
        self.w = np.array([0.5, -1.0, 0.2, 0.0])
        return self

    def _grads(self, x, y):
        return 2 * (x @ self.w - y)[:, None] * x

    def _influence_factors(self, x, y):
        return self._grads(x, y) @ self.h_inv

    def _influences_from_factors(self, factors, x, y, mode):
        return factors @ self._grads(x, y).T


def test_generic_self_influences_of_a_model_without_gradients_in_chunks():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(600, 4)), rng.normal(size=600)  # more than one SELF_INFLUENCE_CHUNK
    model = NumpyRidgeInfluence(0.1)
    with pytest.raises(NotFittedError, match="self_influences"):
        model.self_influences(x, y)
    model.fit((x, y))
    g = model._grads(x, y)
    expected = np.einsum("ip,pq,iq->i", g, model.h_inv, g)
    np.testing.assert_allclose(model.self_influences(x, y), expected, rtol=1e-12)
    with pytest.raises(UnknownModeError):
        model.self_influences(x, y, mode="sideways")


def test_both_engines_agree_and_are_lazy(mlp_regressor, monkeypatch):
    p = mlp_regressor
    model = DirectInfluence(p.model, p.loss, regularization=LAM).fit((p.x, p.y))
    expected = torch.diagonal(model.influences(p.x, p.y, p.x, p.y)).numpy()
    calls = []
    original = DirectInfluence._self_influences

    def counting(self, x, y, mode):
        calls.append(len(x))
        return original(self, x, y, mode)

    monkeypatch.setattr(DirectInfluence, "_self_influences", counting)

    chunks = [(p.x[a : a + 17], p.y[a : a + 17]) for a in range(0, len(p.x), 17)]
    lazy = SequentialInfluenceCalculator(model).self_influences(chunks)
    assert calls == [] and lazy.chunks == (17, 17, 16)
    sequential = lazy.compute(TorchCatAggregator()).numpy()
    assert calls == [17, 17, 16]  # one call per chunk: one factor and one gradient per point
    np.testing.assert_allclose(sequential, expected, rtol=1e-10)
    with pytest.raises(InvalidParameterError, match="self-influences are one value per sample"):
        lazy.to_zarr("unused.zarr")

    calls.clear()
    calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), DisableClientSingleThreadCheck)
    dx = da.from_array(p.x.numpy(), chunks=(17, -1))
    dy = da.from_array(p.y.numpy(), chunks=(17, -1))
    with raise_if_dask_computes():
        arr = calc.self_influences(dx, dy, as_xarray=True, names=[f"p{i}" for i in range(len(p.x))])
        pert = calc.self_influences(dx, dy, mode="perturbation")
    assert calls == []
    assert arr.dims == ("train_sample",) and arr.name == "self_influence" and arr.attrs["mode"] == "up"
    assert arr.data.chunks == ((17, 17, 16),)
    assert arr.train_sample.values[3] == "p3"
    dask_values = arr.compute(scheduler="sync").values
    assert sorted(calls) == [16, 17, 17]
    np.testing.assert_allclose(dask_values, sequential, rtol=1e-12)
    expected_pert = model.influences(p.x, p.y, p.x, p.y, mode="perturbation")
    expected_pert = expected_pert[torch.arange(len(p.x)), torch.arange(len(p.x))].numpy()
    assert pert.shape == p.x.shape
    np.testing.assert_allclose(pert.compute(scheduler="sync"), expected_pert, rtol=1e-9, atol=1e-12)
