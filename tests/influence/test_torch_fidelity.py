"""Fidelity on indefinite and ill-conditioned curvature (issue 30): Arnoldi's rank-k truncation, MINRES, conditioning."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dvl_dask.influence.torch import ArnoldiInfluence  # noqa: E402

pytestmark = pytest.mark.torch

LAM = 0.01


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _unflatten(model, theta):
    out, start = {}, 0
    for name, p in model.named_parameters():
        out[name] = theta[start : start + p.numel()].reshape(p.shape)
        start += p.numel()
    return out


def _hessian_and_grads(problem):
    """Dense Hessian of the mean loss and per-sample gradients with plain torch.autograd (no library code)."""
    model, loss = problem.model, problem.loss
    theta = _flat(model)

    def mean_loss(t):
        return loss(torch.func.functional_call(model, _unflatten(model, t), (problem.x,)), problem.y)

    def grads(x, y):
        rows = []
        for xi, yi in zip(x, y):
            f = lambda t, xi=xi, yi=yi: loss(  # noqa: E731
                torch.func.functional_call(model, _unflatten(model, t), (xi[None],)), yi[None]
            )
            rows.append(torch.autograd.functional.jacobian(f, theta))
        return torch.stack(rows)

    h = torch.autograd.functional.hessian(mean_loss, theta)
    return (h + h.T) / 2, grads(problem.x_test, problem.y_test), grads(problem.x, problem.y)


@pytest.fixture(scope="module")
def dense(mlp_regressor):
    return _hessian_and_grads(mlp_regressor)


def test_the_regressor_hessian_is_indefinite(dense):
    evals = torch.linalg.eigvalsh(dense[0])
    assert evals.min() < -1e-4 < 1e-4 < evals.max()


@pytest.mark.parametrize(("rank", "block_size"), [(5, 5), (12, 3)])
def test_arnoldi_is_the_rank_k_truncation_by_magnitude(mlp_regressor, dense, rank, block_size):
    """Ground truth: eigh of the dense Hessian, the rank eigenpairs of largest |λ|, each divided by λ + reg.

    Starting from a Krylov space of only ``rank`` vectors (one or a few blocks), the space must
    grow until the kept Ritz pairs converge; before issue 30 it stopped there (error ~1).
    """
    h, g_test, g_train = dense
    evals, evecs = torch.linalg.eigh(h)
    keep = torch.argsort(evals.abs(), descending=True)[:rank]
    v, lam = evecs[:, keep], evals[keep] + LAM
    expected = (g_test @ v / lam) @ (v.T @ g_train.T)
    p = mlp_regressor
    infl = ArnoldiInfluence(
        p.model, p.loss, rank=rank, regularization=LAM, krylov_dimension=rank, block_size=block_size
    ).fit((p.x, p.y))
    actual = infl.influences(p.x_test, p.y_test, p.x, p.y)
    error = float(torch.linalg.matrix_norm(actual - expected) / torch.linalg.matrix_norm(expected))
    assert error < 1e-4
    assert rank < infl.krylov_dimensions[0] <= infl.n_parameters
    torch.testing.assert_close(
        infl.eigenvalues[0].sort().values, lam.sort().values, rtol=1e-8, atol=1e-10
    )


def test_arnoldi_without_ritz_tolerance_stops_at_the_given_krylov_size(mlp_regressor):
    p = mlp_regressor
    infl = ArnoldiInfluence(p.model, p.loss, rank=5, regularization=LAM, krylov_dimension=10, ritz_rtol=None)
    assert infl.fit((p.x, p.y)).krylov_dimensions == [10]
