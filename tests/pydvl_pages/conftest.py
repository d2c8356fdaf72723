"""Fixtures of the pyDVL documentation pages: a small trained MLP, its data, a memcached server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from helpers import one_torch_thread, train_lbfgs

_one_torch_thread = pytest.fixture(autouse=True, scope="package")(one_torch_thread)


@dataclass
class SmallMLP:
    """What pyDVL's pages elide: ``model``, ``loss`` and the (map-style) training and test data sets."""

    model: Any
    loss: Any
    train_data_set: Any
    test_data_set: Any


@pytest.fixture(scope="session")
def small_mlp() -> SmallMLP:
    """A 3-4-1 tanh MLP in float64, trained to convergence (LBFGS) on 40 points; 10 test points."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64)
    y = torch.sin(x[:, :1]) + 0.5 * x[:, 1:2] + 0.1 * torch.randn(50, 1, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    train_lbfgs(model, F.mse_loss, x[:40], y[:40])
    return SmallMLP(model, F.mse_loss, TensorDataset(x[:40], y[:40]), TensorDataset(x[40:], y[40:]))


@pytest.fixture(scope="session")
def memcached_server() -> Iterator[Any]:
    """A real memcached server on a free loopback port (fails in CI, skips locally, if it cannot start)."""
    from dvl_dask.testing.servers import start_memcached

    try:
        server = start_memcached()
    except (OSError, RuntimeError) as exc:
        if os.environ.get("DVL_DASK_REQUIRE_SERVICES", "") == "1":
            pytest.fail(f"Required test service unavailable: cannot start a memcached server: {exc}", pytrace=False)
        pytest.skip(f"cannot start a memcached server: {exc}")
    yield server
    server.stop()
