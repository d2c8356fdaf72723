"""Small float64 problems for the influence tests: ridge regression with a closed form, and MLPs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from helpers import one_torch_thread, train_lbfgs

_one_torch_thread = pytest.fixture(autouse=True, scope="package")(one_torch_thread)


@dataclass
class Problem:
    model: Any
    loss: Any
    x: Any
    y: Any
    x_test: Any
    y_test: Any


def linear_closed_form(
    weight: np.ndarray, bias: np.ndarray | None, x: np.ndarray, y: np.ndarray, regularization: float
) -> dict[str, np.ndarray]:
    """Per-sample gradients and regularised Hessian of mean MSE for ``y ≈ x Wᵀ + b``, computed in numpy.

    ``F.mse_loss`` averages over samples *and* outputs, so ``ℓᵢ = ‖W xᵢ + b - yᵢ‖² / m``,
    ``∇ℓᵢ = (2/m) Jᵢᵀ rᵢ`` and ``H = (2/(n m)) Σ Jᵢᵀ Jᵢ + λI`` with ``Jᵢ = ∂(W xᵢ + b)/∂θ`` and
    ``θ = [vec_row(W), b]`` (the order of ``named_parameters``).
    """
    n, d = x.shape
    m = weight.shape[0]
    p = m * d + (m if bias is not None else 0)
    jac = np.zeros((n, m, p))
    for k in range(m):
        jac[:, k, k * d : (k + 1) * d] = x
        if bias is not None:
            jac[:, k, m * d + k] = 1.0
    pred = x @ weight.T + (bias if bias is not None else 0.0)
    resid = pred - y
    grads = 2.0 / m * np.einsum("nkp,nk->np", jac, resid)
    hessian = 2.0 / (n * m) * np.einsum("nkp,nkq->pq", jac, jac) + regularization * np.eye(p)
    return {"grads": grads, "hessian": hessian, "resid": resid}


@pytest.fixture(scope="session")
def ridge_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    n, d = 50, 4
    x = rng.normal(size=(n, d))
    w = rng.normal(size=(d, 2))
    y = x @ w + 0.3 * rng.normal(size=(n, 2))
    return {"x": x, "y": y}


@pytest.fixture(scope="session")
def mlp_regressor() -> Problem:
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    from torch import nn

    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 3, generator=g, dtype=torch.float64)
    y = torch.sin(x[:, :1]) + 0.5 * x[:, 1:2] + 0.1 * torch.randn(60, 1, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    train_lbfgs(model, F.mse_loss, x[:50], y[:50])
    return Problem(model, F.mse_loss, x[:50], y[:50], x[50:], y[50:])


@pytest.fixture(scope="session")
def mlp_classifier() -> Problem:
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    from torch import nn

    g = torch.Generator().manual_seed(2)
    x = torch.randn(60, 3, generator=g, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] ** 2 > 1).long() + (x[:, 2] > 0.5).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    train_lbfgs(model, F.cross_entropy, x[:50], y[:50], steps=30)
    return Problem(model, F.cross_entropy, x[:50], y[:50], x[50:], y[50:])


@pytest.fixture(scope="session")
def closed_form():
    """The numpy oracle :func:`linear_closed_form` (fixtures are the way to share it across test modules)."""
    return linear_closed_form
