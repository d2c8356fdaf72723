"""LoGra-style Kronecker projections: the projected gradient is (P_out ⊗ P_in)ᵀ of the true one; lossless = exact."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from dvl_dask.errors import InvalidModelError, InvalidParameterError  # noqa: E402
from dvl_dask.influence.torch import DirectInfluence, LograInfluence  # noqa: E402

pytestmark = pytest.mark.torch

REG = 0.01


def _layer_fisher_influences(model, loss, x, y, x_test, y_test):
    """Per-layer (block-diagonal) empirical-Fisher influences from per-sample gradients, by hand."""
    direct = DirectInfluence(model, loss).fit((x, y))
    g, g_test = direct.per_sample_gradients(x, y), direct.per_sample_gradients(x_test, y_test)
    out, start = 0, 0
    for module in (m for m in model.modules() if isinstance(m, nn.Linear)):
        size = sum(p.numel() for p in module.parameters())
        gb, tb = g[:, start : start + size], g_test[:, start : start + size]
        fisher = gb.T @ gb / len(gb) + REG * torch.eye(size, dtype=g.dtype)
        out = out + tb @ torch.linalg.solve(fisher, gb.T)
        start += size
    return out


def test_lossless_kronecker_projection_equals_per_layer_empirical_fisher(mlp_regressor):
    p = mlp_regressor  # layers 3 -> 8 -> 1: augmented inputs 4 and 9, outputs 8 and 1
    logra = LograInfluence(p.model, p.loss, input_dim=9, output_dim=8, projection="orthogonal", regularization=REG).fit(
        (p.x, p.y)
    )
    expected = _layer_fisher_influences(p.model, p.loss, p.x, p.y, p.x_test, p.y_test)
    torch.testing.assert_close(logra.influences(p.x_test, p.y_test, p.x, p.y), expected, rtol=1e-8, atol=1e-10)


def test_projected_gradient_is_the_kronecker_projection_of_the_true_one(mlp_classifier):
    p = mlp_classifier
    logra = LograInfluence(p.model, p.loss, input_dim=3, output_dim=2, seed=4).fit((p.x, p.y))
    grads = DirectInfluence(p.model, p.loss, regularization=1e-3).fit((p.x, p.y)).per_sample_gradients(p.x[:5], p.y[:5])
    feats = logra.per_sample_gradients(p.x[:5], p.y[:5])
    assert feats.shape == (5, 2 * 6)
    start, col = 0, 0
    for module, (p_in, p_out) in zip([p.model[0], p.model[2]], logra._factors_in_out):
        d_out, d_in = module.weight.shape
        w = grads[:, start : start + d_out * d_in].reshape(5, d_out, d_in)
        b = grads[:, start + d_out * d_in : start + d_out * (d_in + 1)]
        augmented = torch.cat([w, b.unsqueeze(2)], dim=2)  # (n, out, in + 1)
        expected = (p_out.T @ augmented @ p_in).reshape(5, -1)
        torch.testing.assert_close(feats[:, col : col + 6], expected, rtol=1e-10, atol=1e-12)
        start += d_out * (d_in + 1)
        col += 6


def test_tokens_are_summed_into_the_per_sample_gradient():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    x = torch.randn(30, 5, 4, generator=g, dtype=torch.float64)
    y = torch.randn(30, 5, 2, generator=g, dtype=torch.float64)
    logra = LograInfluence(model, F.mse_loss, input_dim=5, output_dim=3, projection="orthogonal", regularization=REG)
    logra.fit((x, y))
    expected = _layer_fisher_influences(model, F.mse_loss, x, y, x[:4], y[:4])
    torch.testing.assert_close(logra.influences(x[:4], y[:4], x, y), expected, rtol=1e-8, atol=1e-10)


def test_logra_rejects_unsupported_models_and_modes(mlp_regressor):
    p = mlp_regressor
    with pytest.raises(InvalidModelError, match=r"nn\.Linear layers"):
        LograInfluence(nn.Sequential(nn.Conv1d(1, 1, 2), nn.Flatten()).double(), F.mse_loss)
    with pytest.raises(InvalidParameterError, match="'input_dim'"):
        LograInfluence(p.model, p.loss, input_dim=0)
    logra = LograInfluence(p.model, p.loss, regularization=REG).fit((p.x, p.y))
    with pytest.raises(InvalidParameterError, match="mode='up' only"):
        logra.influences(p.x_test, p.y_test, p.x, p.y, mode="perturbation")


def test_logra_gradients_stored_once_and_reused(mlp_regressor, tmp_path):
    p = mlp_regressor
    url = str(tmp_path / "logra.zarr")
    first = LograInfluence(p.model, p.loss, input_dim=3, output_dim=2, regularization=REG).fit((p.x, p.y), store=url)
    expected = first.influences(p.x_test, p.y_test, p.x, p.y).numpy()
    again = LograInfluence(p.model, p.loss, input_dim=3, output_dim=2, regularization=REG).fit((p.x, p.y), store=url)
    torch.testing.assert_close(
        torch.from_numpy(again.train_influences(p.x_test, p.y_test).compute()),
        torch.from_numpy(expected),
        rtol=1e-10,
        atol=1e-12,
    )
    # the same k = 6 split the other way is another projection: the store is rewritten, values differ
    other = LograInfluence(p.model, p.loss, input_dim=2, output_dim=3, regularization=REG).fit((p.x, p.y), store=url)
    assert other.train_gradients().shape == (50, 12)
    assert not torch.allclose(
        torch.from_numpy(other.train_influences(p.x_test, p.y_test).compute()), torch.from_numpy(expected)
    )


def test_sampled_gauss_newton_converges_to_the_per_layer_gauss_newton(mlp_regressor):
    p = mlp_regressor
    direct = DirectInfluence(
        p.model, p.loss, regularization=REG, second_order_mode="gauss_newton", block_structure="layer"
    ).fit((p.x, p.y))
    expected = direct.influences(p.x_test, p.y_test, p.x, p.y)
    errors = []
    for samples in (4, 400):
        logra = LograInfluence(
            p.model,
            p.loss,
            input_dim=9,
            output_dim=8,
            projection="orthogonal",
            regularization=REG,
            curvature="gauss_newton",
            fisher_samples=samples,
        ).fit((p.x, p.y))
        values = logra.influences(p.x_test, p.y_test, p.x, p.y)
        errors.append(float(torch.linalg.norm(values - expected) / torch.linalg.norm(expected)))
    assert errors[1] < 0.1 and errors[1] < errors[0] / 3  # Monte Carlo error shrinks like 1/√samples
