"""EK-FAC for convolutions, sequences and many classes (sampled true Fisher)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import jacrev, vmap  # noqa: E402

from dvl_dask.errors import InvalidModelError, InvalidParameterError  # noqa: E402
from dvl_dask.influence.torch import DirectInfluence, EkfacInfluence  # noqa: E402
from dvl_dask.influence.torch._fisher import sample_output_gradients  # noqa: E402

pytestmark = pytest.mark.torch

LAM = 0.01


def _rel_err(a, b):
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def _pearson(a, b):
    return float(np.corrcoef(a.numpy().ravel(), b.numpy().ravel())[0, 1])


@pytest.mark.parametrize("correction", [True, False])
@pytest.mark.parametrize(("stride", "padding"), [(1, 1), (2, 0)])
def test_single_conv_layer_with_mse_is_exact(correction, stride, padding):
    # One conv layer, MSE on its flattened output: the Gauss-Newton block is exactly I ⊗ Σ patches patchesᵀ.
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=stride, padding=padding).double()
    model = nn.Sequential(conv, nn.Flatten())
    x = torch.randn(30, 2, 5, 5, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x) + 0.1 * torch.randn(model(x).shape, generator=g, dtype=torch.float64)
    ekfac = EkfacInfluence(model, F.mse_loss, regularization=LAM, eigenvalue_correction=correction).fit((x, y))
    direct = DirectInfluence(model, F.mse_loss, regularization=LAM).fit((x, y))
    assert _rel_err(ekfac.influences(x[:5], y[:5], x, y), direct.influences(x[:5], y[:5], x, y)) < 1e-8


def test_linear_layer_on_sequences_with_mse_is_exact():
    g = torch.Generator().manual_seed(1)
    model = nn.Linear(4, 2).double()
    x = torch.randn(30, 3, 4, generator=g, dtype=torch.float64)  # (batch, tokens, features)
    y = torch.randn(30, 3, 2, generator=g, dtype=torch.float64)
    ekfac = EkfacInfluence(model, F.mse_loss, regularization=LAM).fit((x, y))
    direct = DirectInfluence(model, F.mse_loss, regularization=LAM).fit((x, y))
    assert _rel_err(ekfac.influences(x[:5], y[:5], x, y), direct.influences(x[:5], y[:5], x, y)) < 1e-8


def test_tiny_cnn_classifier_is_close_to_the_layer_block_gauss_newton():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(80, 1, 6, 6, generator=g, dtype=torch.float64)
    y = (x[:, 0, :3].sum(dim=(1, 2)) > x[:, 0, 3:].sum(dim=(1, 2))).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(48, 2)).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(50):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    ekfac = EkfacInfluence(model, F.cross_entropy, regularization=LAM).fit((x, y))
    direct = DirectInfluence(
        model, F.cross_entropy, regularization=LAM, second_order_mode="gauss_newton", block_structure="layer"
    ).fit((x, y))
    r = _pearson(ekfac.influences(x[:10], y[:10], x, y), direct.influences(x[:10], y[:10], x, y))
    assert r > 0.95


@pytest.mark.parametrize("tokens", [1, 3])
def test_sampled_cross_entropy_gradients_have_the_output_hessian_as_covariance(tokens):
    g = torch.Generator().manual_seed(3)
    shape = (2, 4) if tokens == 1 else (2, 4, tokens)
    out = torch.randn(shape, generator=g, dtype=torch.float64)
    y = torch.zeros((2, *shape[2:]), dtype=torch.long)

    def sample_loss(oi, yi):
        return F.cross_entropy(oi.reshape(1, *shape[1:]), yi.unsqueeze(0))

    hess = vmap(jacrev(jacrev(sample_loss)))(out.reshape(2, -1), y)
    # 4 draws for each of 5000 copies of the batch: 20000 draws per sample, in few calls
    reps = 5000
    draws = sample_output_gradients(F.cross_entropy, out.repeat(reps, *([1] * (out.ndim - 1))), 4, g, None, "t")
    flat = torch.stack(draws).reshape(4, reps, 2, -1)
    estimate = torch.einsum("srni,srnj->nij", flat, flat) / reps  # draws are already scaled by 1/√s
    assert float((estimate - hess).abs().max()) < 0.02 * float(hess.abs().max())


def test_sampled_mse_gradients_have_the_output_hessian_as_covariance():
    g = torch.Generator().manual_seed(4)
    out = torch.randn(3, 2, 2, generator=g, dtype=torch.float64)
    reps = 5000
    draws = sample_output_gradients(F.mse_loss, out.repeat(reps, 1, 1), 4, g, None, "test")
    flat = torch.stack(draws).reshape(4, reps, 3, -1)
    estimate = torch.einsum("srni,srnj->nij", flat, flat) / reps
    expected = (2 / 4) * torch.eye(4, dtype=torch.float64).expand(3, 4, 4)  # ∇²(‖o - y‖²/m), m = 4
    assert float((estimate - expected).abs().max()) < 0.02


def _classifier(n_classes, n=120, seed=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g, dtype=torch.float64)
    w = torch.randn(8, n_classes, generator=g, dtype=torch.float64)
    y = torch.argmax(x @ w + 0.5 * torch.randn(n, n_classes, generator=g, dtype=torch.float64), dim=1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, n_classes)).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


def test_sampled_fisher_correlates_with_the_exact_one_on_ten_classes():
    model, x, y = _classifier(10)
    exact = EkfacInfluence(model, F.cross_entropy, regularization=LAM).fit((x, y))
    sampled = EkfacInfluence(model, F.cross_entropy, regularization=LAM, fisher_samples=4).fit((x, y))
    assert _pearson(sampled.influences(x[:20], y[:20], x, y), exact.influences(x[:20], y[:20], x, y)) >= 0.9


def test_fit_cost_is_linear_in_samples_not_classes(monkeypatch):
    calls = []
    original = torch.autograd.grad

    def counting(outputs, inputs, *args, **kwargs):
        # backward passes through the network (to the layer outputs), not those through the loss alone;
        # a batched call (one vmapped pass per column of grad_outputs) counts its columns
        if isinstance(inputs, list | tuple) and len(inputs) == 2:
            calls.append(kwargs["grad_outputs"].shape[0] if kwargs.get("is_grads_batched") else 1)
        return original(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    counts = {}
    for n_classes in (10, 100):
        model, x, y = _classifier(n_classes, n=60)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=30)  # 2 batches
        for samples in (1, 3):
            calls.clear()
            EkfacInfluence(model, F.cross_entropy, regularization=LAM, fisher_samples=samples).fit(loader)
            counts[n_classes, samples] = sum(calls)
    # 2 batches x 2 passes (factors, eigenvalue correction) x samples, whatever the number of classes
    assert counts == {(10, 1): 4, (10, 3): 12, (100, 1): 4, (100, 3): 12}
    calls.clear()
    EkfacInfluence(model, F.cross_entropy, regularization=LAM).fit(loader)
    assert sum(calls) == 2 * 2 * 100  # the exact output Hessian: one pass per class
    assert len(calls) == 2 * 2  # ... batched into one call per batch and pass (large operations)


def test_sampled_fisher_needs_a_known_loss_or_a_sampler():
    model, x, y = _classifier(3, n=20)

    def nll(out, target):
        return F.nll_loss(F.log_softmax(out, dim=1), target)

    with pytest.raises(InvalidParameterError, match="target_sampler"):
        EkfacInfluence(model, nll, regularization=LAM, fisher_samples=2).fit((x, y))
    sampler = lambda out, gen: torch.multinomial(torch.softmax(out, 1), 1, generator=gen)[:, 0]  # noqa: E731
    with_sampler = EkfacInfluence(model, nll, regularization=LAM, fisher_samples=2, target_sampler=sampler, seed=9)
    builtin = EkfacInfluence(model, F.cross_entropy, regularization=LAM, fisher_samples=2, seed=9)
    # same draws (same seed, same categorical sampling), same loss values: the same fit
    torch.testing.assert_close(
        with_sampler.fit((x, y)).influences(x[:3], y[:3], x, y), builtin.fit((x, y)).influences(x[:3], y[:3], x, y)
    )
    with pytest.raises(InvalidParameterError, match="'fisher_samples'"):
        EkfacInfluence(model, F.cross_entropy, fisher_samples=0)
    with pytest.raises(InvalidParameterError, match="'target_sampler'"):
        EkfacInfluence(model, F.cross_entropy, fisher_samples=1, target_sampler="categorical")
    with pytest.raises(InvalidModelError, match="groups=1"):
        EkfacInfluence(nn.Conv2d(2, 2, 3, groups=2).double(), F.mse_loss)
