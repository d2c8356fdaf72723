"""Random-projection attribution: exact with a lossless projection, close at k=512, stored gradients reused."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from dvl_dask.errors import InvalidParameterError, NotFittedError  # noqa: E402
from dvl_dask.influence import DaskInfluenceCalculator, DisableClientSingleThreadCheck  # noqa: E402
from dvl_dask.influence.torch import (  # noqa: E402
    DirectInfluence,
    TorchNumpyConverter,
    TrakInfluence,
    _projection,
)
from dvl_dask.influence.torch._projection import RandomProjection  # noqa: E402

pytestmark = pytest.mark.torch

REG = 0.01


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("block_structure", ["full", "layer"])
@pytest.mark.parametrize("extra", [0, 9])
def test_lossless_projection_equals_direct_gauss_newton(mlp_regressor, block_structure, extra):
    p = mlp_regressor
    # per-layer blocks have at most 32 parameters: k = 41 + extra >= every block
    k = _n_params(p.model) + extra
    trak = TrakInfluence(
        p.model, p.loss, projection_dim=k, projection="orthogonal", regularization=REG, block_structure=block_structure
    ).fit((p.x, p.y))
    direct = DirectInfluence(
        p.model, p.loss, regularization=REG, second_order_mode="gauss_newton", block_structure=block_structure
    ).fit((p.x, p.y))
    torch.testing.assert_close(
        trak.influences(p.x_test, p.y_test, p.x, p.y),
        direct.influences(p.x_test, p.y_test, p.x, p.y),
        rtol=1e-9,
        atol=1e-11,
    )
    if extra == 0 and block_structure == "full":
        torch.testing.assert_close(
            trak.influences(p.x_test[:3], p.y_test[:3], p.x[:4], p.y[:4], mode="perturbation"),
            direct.influences(p.x_test[:3], p.y_test[:3], p.x[:4], p.y[:4], mode="perturbation"),
            rtol=1e-9,
            atol=1e-11,
        )


def test_lossless_projection_of_classifier_equals_direct_gauss_newton(mlp_classifier):
    p = mlp_classifier
    trak = TrakInfluence(
        p.model, p.loss, projection_dim=_n_params(p.model), projection="orthogonal", regularization=REG
    ).fit((p.x, p.y))
    direct = DirectInfluence(p.model, p.loss, regularization=REG, second_order_mode="gauss_newton").fit((p.x, p.y))
    torch.testing.assert_close(
        trak.influences(p.x_test, p.y_test, p.x, p.y),
        direct.influences(p.x_test, p.y_test, p.x, p.y),
        rtol=1e-9,
        atol=1e-11,
    )


def test_empirical_fisher_equals_its_closed_form(mlp_regressor):
    p = mlp_regressor
    trak = TrakInfluence(
        p.model,
        p.loss,
        projection_dim=_n_params(p.model),
        projection="orthogonal",
        regularization=REG,
        curvature="empirical_fisher",
    ).fit((p.x, p.y))
    direct = DirectInfluence(p.model, p.loss).fit((p.x, p.y))  # only for its per-sample gradients
    g, g_test = direct.per_sample_gradients(p.x, p.y), direct.per_sample_gradients(p.x_test, p.y_test)
    fisher = g.T @ g / len(g) + REG * torch.eye(g.shape[1], dtype=g.dtype)
    expected = g_test @ torch.linalg.solve(fisher, g.T)
    torch.testing.assert_close(trak.influences(p.x_test, p.y_test, p.x, p.y), expected, rtol=1e-9, atol=1e-11)


def test_projection_is_generated_block_wise_from_the_seed(monkeypatch):
    monkeypatch.setattr(_projection, "BLOCK_ELEMENTS", 64)
    sizes = []
    original = RandomProjection.block

    def spy(self, index):
        out = original(self, index)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(RandomProjection, "block", spy)
    proj = RandomProjection(1000, 16, "rademacher", 7, dtype=torch.float64, device=torch.device("cpu"))
    g = torch.randn(5, 1000, dtype=torch.float64)
    out = proj.project(g)
    assert max(sizes) <= 64 and len(sizes) == proj.n_blocks == 250  # p x k never held at once
    dense = proj.dense()
    torch.testing.assert_close(out, g @ dense)
    assert set(dense.abs().unique().tolist()) == {0.25}  # ±1/√k
    again = RandomProjection(1000, 16, "rademacher", 7, dtype=torch.float64, device=torch.device("cpu"))
    torch.testing.assert_close(again.project(g), out)  # same seed, same matrix
    other = RandomProjection(1000, 16, "rademacher", 8, dtype=torch.float64, device=torch.device("cpu"))
    assert not torch.allclose(other.dense(), dense)
    gauss = RandomProjection(4000, 256, "gaussian", 1, dtype=torch.float64, device=torch.device("cpu")).dense()
    assert abs(float(gauss.var()) * 256 - 1) < 0.02  # entries N(0, 1/k)
    # E[P Pᵀ] = I: inner products are preserved in expectation, to ~1/√k
    a = torch.randn(4000, dtype=torch.float64)
    rel = abs(float((a @ gauss) @ (a @ gauss)) / float(a @ a) - 1)
    assert rel < 0.3


@pytest.mark.slow
def test_k512_correlates_with_direct_influence_on_the_benchmark_mlp():
    g = torch.Generator().manual_seed(0)
    n_train, n_test = 1000, 50
    n = n_train + n_test
    x = torch.randn(n, 20, generator=g)
    w = torch.randn(20, 1, generator=g) / 20**0.5
    y = torch.tanh(x @ w) + 0.1 * torch.sin(3 * x[:, :1]) + 0.05 * torch.randn(n, 1, generator=g)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(300):
        opt.zero_grad()
        F.mse_loss(net(x[:n_train]), y[:n_train]).backward()
        opt.step()
    net, x, y = net.double(), x.double(), y.double()
    assert _n_params(net) == 1761
    xs, ys, xt, yt = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    exact = DirectInfluence(net, F.mse_loss, regularization=REG, second_order_mode="gauss_newton").fit((xs, ys))
    trak = TrakInfluence(net, F.mse_loss, projection_dim=512, regularization=REG).fit((xs, ys))
    r = np.corrcoef(trak.influences(xt, yt, xs, ys).numpy().ravel(), exact.influences(xt, yt, xs, ys).numpy().ravel())
    assert r[0, 1] >= 0.9


def test_ensemble_is_the_mean_over_checkpoints(mlp_regressor):
    p = mlp_regressor
    torch.manual_seed(5)
    second = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    states = [p.model.state_dict(), second.state_dict()]
    kw = {"projection_dim": 16, "regularization": REG, "seed": 3}
    ens = TrakInfluence(p.model, p.loss, checkpoints=states, **kw).fit((p.x, p.y))
    assert ens.n_parameters == 32
    single = [TrakInfluence(m, p.loss, **kw).fit((p.x, p.y)) for m in (p.model, second)]
    expected = sum(s.influences(p.x_test, p.y_test, p.x, p.y) for s in single) / 2
    torch.testing.assert_close(ens.influences(p.x_test, p.y_test, p.x, p.y), expected, rtol=1e-10, atol=1e-12)
    calc = DaskInfluenceCalculator(ens, TorchNumpyConverter(), DisableClientSingleThreadCheck)
    lazy = calc.influences(
        da.from_array(p.x_test.numpy(), chunks=(4, 3)),
        da.from_array(p.y_test.numpy(), chunks=(4, 1)),
        da.from_array(p.x.numpy(), chunks=(20, 3)),
        da.from_array(p.y.numpy(), chunks=(20, 1)),
    )
    np.testing.assert_allclose(lazy.compute(scheduler="sync"), expected.numpy(), rtol=1e-10, atol=1e-12)


def test_projected_gradients_are_stored_once_and_reused(mlp_regressor, tmp_path, monkeypatch):
    p = mlp_regressor
    url = str(tmp_path / "grads.zarr")
    kw = {"projection_dim": 12, "seed": 1}
    first = TrakInfluence(p.model, p.loss, regularization=REG, **kw).fit((p.x, p.y), store=url)
    stored = first.train_gradients()
    assert stored.shape == (50, 12)
    np.testing.assert_allclose(stored.compute(), first.per_sample_gradients(p.x, p.y).numpy(), rtol=1e-12)
    expected = first.influences(p.x_test, p.y_test, p.x, p.y).numpy()
    np.testing.assert_allclose(first.train_influences(p.x_test, p.y_test).compute(), expected, rtol=1e-10)

    # a new process would refit from the store: no projected gradient of the training data is computed
    calls = []
    original = TrakInfluence._features
    monkeypatch.setattr(TrakInfluence, "_features", lambda self, x, y: calls.append(len(x)) or original(self, x, y))
    again = TrakInfluence(p.model, p.loss, regularization=REG, **kw).fit((p.x, p.y), store=url)
    assert calls == []
    np.testing.assert_allclose(again.train_influences(p.x_test, p.y_test).compute(), expected, rtol=1e-10)
    assert calls == [len(p.x_test)]  # only the test points
    # the curvature does not depend on the regularization: another one reuses the store too
    TrakInfluence(p.model, p.loss, regularization=1.0, **kw).fit((p.x, p.y), store=url)
    assert calls == [len(p.x_test)]
    # another projection rewrites it
    TrakInfluence(p.model, p.loss, regularization=REG, projection_dim=12, seed=2).fit((p.x, p.y), store=url)
    assert sum(calls) == len(p.x_test) + len(p.x)
    # fitted without a store: no stored gradients
    with pytest.raises(NotFittedError, match="fitted without a store"):
        TrakInfluence(p.model, p.loss, **kw).fit((p.x, p.y)).train_gradients()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("not a store")
    with pytest.raises(InvalidParameterError, match="holds something other than projected gradients"):
        TrakInfluence(p.model, p.loss, **kw).fit((p.x, p.y), store=str(tmp_path / "other"))


def test_trak_rejects_bad_parameters(mlp_regressor):
    p = mlp_regressor
    with pytest.raises(InvalidParameterError, match="'projection_dim'"):
        TrakInfluence(p.model, p.loss, projection_dim=0)
    with pytest.raises(InvalidParameterError, match="'projection' parameter of TrakInfluence must be one of"):
        TrakInfluence(p.model, p.loss, projection="sparse")
    with pytest.raises(InvalidParameterError, match="'curvature'"):
        TrakInfluence(p.model, p.loss, curvature="hessian")
    with pytest.raises(InvalidParameterError, match="'seed'"):
        TrakInfluence(p.model, p.loss, seed=-1)
    with pytest.raises(InvalidParameterError, match="would hold"):
        RandomProjection(10**6, 2**10, "orthogonal", 0, dtype=torch.float64, device=torch.device("cpu"))
