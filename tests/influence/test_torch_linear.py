"""Every influence model against the closed-form influence of ridge-regularised linear regression.

A single ``nn.Linear`` with ``F.mse_loss`` in float64: the Hessian of the mean loss is
``(2/(n m)) Σ JᵢᵀJᵢ`` (see ``linear_closed_form`` in conftest), computed here in numpy only.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from dvl_dask.influence.torch import (  # noqa: E402
    ArnoldiInfluence,
    CgInfluence,
    DirectInfluence,
    EkfacInfluence,
    InverseHarmonicMeanInfluence,
    JacobiPreconditioner,
    LissaInfluence,
    NystroemPreconditioner,
    NystroemSketchInfluence,
)

pytestmark = pytest.mark.torch

LAM = 0.1


def _setup(ridge_data, closed_form, *, outputs: int = 1, bias: bool = True, lam: float = LAM):
    torch.manual_seed(3)
    x_np, y_np = ridge_data["x"], ridge_data["y"][:, :outputs]
    model = nn.Linear(x_np.shape[1], outputs, bias=bias).double()
    with torch.no_grad():  # not at the optimum: residuals and gradients are far from zero
        model.weight.mul_(3.0)
    w = model.weight.detach().numpy()
    b = model.bias.detach().numpy() if bias else None
    cf = closed_form(w, b, x_np, y_np, lam)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    expected = cf["grads"][:7] @ np.linalg.solve(cf["hessian"], cf["grads"].T)
    return model, x, y, expected, cf


def _influences(infl, x, y) -> np.ndarray:
    return infl.influences(x[:7], y[:7], x, y).numpy()


def _rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("outputs", [1, 2])
def test_direct_matches_closed_form(ridge_data, closed_form, bias, outputs):
    model, x, y, expected, _ = _setup(ridge_data, closed_form, outputs=outputs, bias=bias)
    infl = DirectInfluence(model, F.mse_loss, regularization=LAM).fit(DataLoader(TensorDataset(x, y), batch_size=16))
    assert _rel_err(_influences(infl, x, y), expected) < 1e-6


@pytest.mark.parametrize("mode", ["hessian", "gauss_newton"])
@pytest.mark.parametrize("block_structure", ["full", "layer"])
def test_direct_modes_coincide_for_linear_model(ridge_data, closed_form, mode, block_structure):
    # For a linear model and MSE the Gauss-Newton matrix is the Hessian, and "layer" is one block.
    model, x, y, expected, _ = _setup(ridge_data, closed_form)
    infl = DirectInfluence(
        model, F.mse_loss, regularization=LAM, second_order_mode=mode, block_structure=block_structure
    ).fit((x, y))
    assert _rel_err(_influences(infl, x, y), expected) < 1e-6


def test_direct_per_parameter_blocks_match_block_diagonal_inverse(ridge_data, closed_form):
    model, x, y, _, cf = _setup(ridge_data, closed_form)
    h = cf["hessian"].copy()
    d = x.shape[1]
    h[:d, d:] = 0.0
    h[d:, :d] = 0.0
    expected = cf["grads"][:7] @ np.linalg.solve(h, cf["grads"].T)
    blocks = {"w": ["weight"], "b": ["bias"]}
    infl = DirectInfluence(model, F.mse_loss, regularization=LAM, block_structure=blocks).fit((x, y))
    assert _rel_err(_influences(infl, x, y), expected) < 1e-6


@pytest.mark.parametrize(
    "preconditioner",
    [None, "jacobi", "nystroem", JacobiPreconditioner(num_samples_estimate=2, seed=1), NystroemPreconditioner(3)],
    ids=["none", "jacobi", "nystroem", "jacobi-instance", "nystroem-rank3"],
)
def test_cg_matches_closed_form(ridge_data, closed_form, preconditioner):
    model, x, y, expected, _ = _setup(ridge_data, closed_form)
    infl = CgInfluence(model, F.mse_loss, regularization=LAM, preconditioner=preconditioner, rtol=1e-10)
    infl.fit(DataLoader(TensorDataset(x, y), batch_size=20))
    assert _rel_err(_influences(infl, x, y), expected) < 1e-4


def test_cg_layer_blocks_match_closed_form(ridge_data, closed_form):
    model, x, y, expected, _ = _setup(ridge_data, closed_form, outputs=2)
    infl = CgInfluence(model, F.mse_loss, regularization=LAM, block_structure="layer").fit((x, y))
    assert _rel_err(_influences(infl, x, y), expected) < 1e-4


def test_arnoldi_full_rank_matches_closed_form(ridge_data, closed_form):
    model, x, y, expected, _ = _setup(ridge_data, closed_form)
    infl = ArnoldiInfluence(model, F.mse_loss, rank=model.weight.numel() + 1, regularization=LAM).fit((x, y))
    assert _rel_err(_influences(infl, x, y), expected) < 1e-4


def test_arnoldi_low_rank_keeps_leading_eigenpairs(ridge_data, closed_form):
    model, x, y, _, cf = _setup(ridge_data, closed_form)
    infl = ArnoldiInfluence(model, F.mse_loss, rank=2, regularization=LAM).fit((x, y))
    expected = np.sort(np.linalg.eigvalsh(cf["hessian"]))[::-1][:2]  # λ included by both
    np.testing.assert_allclose(infl.eigenvalues[0].numpy(), expected, rtol=1e-8)


def test_nystroem_full_rank_matches_closed_form(ridge_data, closed_form):
    model, x, y, expected, _ = _setup(ridge_data, closed_form)
    infl = NystroemSketchInfluence(model, F.mse_loss, rank=model.weight.numel() + 1, regularization=LAM)
    assert _rel_err(_influences(infl.fit((x, y)), x, y), expected) < 1e-4


@pytest.mark.parametrize("cls", [NystroemSketchInfluence, ArnoldiInfluence])
def test_low_rank_methods_exact_when_hessian_has_that_rank(ridge_data, closed_form, cls):
    # Features in a 2-d subspace, no bias: H = (2/n) XᵀX has rank 2 and every gradient lies in its range,
    # so a rank-2 sketch (Nyström) or rank-2 eigen-approximation (Arnoldi) loses nothing.
    rng = np.random.default_rng(0)
    x_np = ridge_data["x"][:, :2] @ rng.normal(size=(2, 4))
    data = {"x": x_np, "y": ridge_data["y"]}
    model, x, y, expected, _ = _setup(data, closed_form, bias=False)
    infl = cls(model, F.mse_loss, rank=2, regularization=LAM).fit((x, y))
    assert _rel_err(_influences(infl, x, y), expected) < 1e-8


def test_lissa_matches_closed_form_within_documented_tolerance(ridge_data, closed_form):
    # Full batch, no dampening: error ~ (1 - λ_min/scale)^T, driven below 1e-6 by the stopping rule.
    model, x, y, expected, cf = _setup(ridge_data, closed_form)
    scale = 1.5 * float(np.linalg.eigvalsh(cf["hessian"]).max())
    infl = LissaInfluence(model, F.mse_loss, regularization=LAM, scale=scale, maxiter=20_000, rtol=1e-12)
    infl.fit(DataLoader(TensorDataset(x, y), batch_size=len(x)))
    assert _rel_err(_influences(infl, x, y), expected) < 1e-6


@pytest.mark.parametrize("outputs", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_ekfac_exact_for_single_linear_layer_with_mse(ridge_data, closed_form, outputs, bias):
    model, x, y, expected, _ = _setup(ridge_data, closed_form, outputs=outputs, bias=bias)
    infl = EkfacInfluence(model, F.mse_loss, regularization=LAM).fit(DataLoader(TensorDataset(x, y), batch_size=16))
    assert _rel_err(_influences(infl, x, y), expected) < 1e-8


def test_kfac_without_correction_is_also_exact_for_linear_mse(ridge_data, closed_form):
    # The Hessian is exactly A ⊗ (2/m)I, so even uncorrected K-FAC eigenvalues are right.
    model, x, y, expected, _ = _setup(ridge_data, closed_form, outputs=2)
    infl = EkfacInfluence(model, F.mse_loss, regularization=LAM, eigenvalue_correction=False).fit((x, y))
    assert _rel_err(_influences(infl, x, y), expected) < 1e-8


def test_datainf_matches_its_formula(ridge_data, closed_form):
    model, x, y, _, cf = _setup(ridge_data, closed_form)
    g = cf["grads"]
    p = g.shape[1]
    inverse = np.mean([(np.eye(p) - np.outer(gi, gi) / (LAM + gi @ gi)) / LAM for gi in g], axis=0)
    expected = g[:7] @ inverse @ g.T
    infl = InverseHarmonicMeanInfluence(model, F.mse_loss, regularization=LAM).fit((x, y))
    assert _rel_err(_influences(infl, x, y), expected) < 1e-10


def test_perturbation_matches_closed_form(ridge_data, closed_form):
    # ∂/∂xⱼ (2/m) fᵀJⱼᵀrⱼ = (2/m) (F_Wᵀ rⱼ + Wᵀ (F_W xⱼ + F_b)) with fᵀ = [vec(F_W), F_b].
    model, x, y, _, cf = _setup(ridge_data, closed_form, outputs=2)
    infl = DirectInfluence(model, F.mse_loss, regularization=LAM).fit((x, y))
    factors = infl.influence_factors(x[:3], y[:3]).numpy()
    actual = infl.influences(x[:3], y[:3], x, y, mode="perturbation").numpy()
    m, d = model.weight.shape
    w = model.weight.detach().numpy()
    x_np, r = x.numpy(), cf["resid"]
    expected = np.empty((3, len(x_np), d))
    for t in range(3):
        fw, fb = factors[t, : m * d].reshape(m, d), factors[t, m * d :]
        expected[t] = 2.0 / m * (r @ fw + (x_np @ fw.T + fb) @ w)
    assert actual.shape == (3, len(x_np), d)
    np.testing.assert_allclose(actual, expected, rtol=1e-9, atol=1e-12)
