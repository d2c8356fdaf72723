"""Test doubles shared by several test modules (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin


class CountingModel(RegressorMixin, BaseEstimator):
    """A tiny sklearn-style regressor that counts how often it is fitted (class-level counter).

    Predicts the mean of its training targets (plus ``bias``); fits are counted
    on the class, so only in-process schedulers see the count.
    """

    fits = 0

    def __init__(self, bias: float = 0.0) -> None:
        self.bias = bias

    def fit(self, x: np.ndarray, y: np.ndarray) -> CountingModel:
        type(self).fits += 1
        self.mean_ = float(np.mean(y)) + self.bias
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), self.mean_)


def one_torch_thread() -> Iterator[None]:
    """Fixture body: run tiny torch problems on one intra-op thread, restoring the setting after.

    On a shared 2-core machine torch's thread pool makes the many small kernels
    of the influence tests about 10x slower than one thread. Conftests wrap it
    with ``pytest.fixture(autouse=True, scope="package")``.
    """
    try:
        import torch
    except ImportError:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def train_lbfgs(model, loss, x, y, steps: int = 100):
    """Train a small torch ``model`` on ``(x, y)`` with full-batch L-BFGS (strong Wolfe), in place; returns it.

    The influence fixtures (tests/influence, tests/pydvl_pages) train their
    MLPs to convergence with it, so that curvature is that of a minimum.
    """
    import torch

    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        value = loss(model(x), y)
        value.backward()
        return value

    optimizer.step(closure)
    return model


def scaled_by(factor: float):
    """A parametrised ``functools.wraps`` decorator: scorers it makes differ only in the wrapper's closure."""
    import functools

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(model, x, y):
            return factor * fn(model, x, y)

        return wrapper

    return decorate


def r2_scorer(model, x, y) -> float:
    """``model.score`` as a plain scorer function (no range known)."""
    return float(model.score(x, y))


def flat_params(model):
    """A torch module's parameters as one detached vector (torch imported here, not at module import)."""
    import torch

    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def unflatten_params(model, theta):
    """``{name: tensor}`` views of a flat parameter vector ``theta``, shaped like ``model``'s parameters."""
    out, start = {}, 0
    for name, p in model.named_parameters():
        out[name] = theta[start : start + p.numel()].reshape(p.shape)
        start += p.numel()
    return out


def torch_model_builders(lissa_maxiter: int = 50) -> dict:
    """``name -> build(module, loss)`` of every curvature-based torch influence model, small settings for tests."""
    from dvl_dask.influence.torch import (
        ArnoldiInfluence,
        CgInfluence,
        DirectInfluence,
        EkfacInfluence,
        InverseHarmonicMeanInfluence,
        LissaInfluence,
        NystroemSketchInfluence,
    )

    return {
        "direct": lambda m, loss: DirectInfluence(m, loss, regularization=0.1, block_structure="layer"),
        "cg": lambda m, loss: CgInfluence(m, loss, regularization=0.1, preconditioner="nystroem"),
        "lissa": lambda m, loss: LissaInfluence(
            m, loss, regularization=1.0, scale=2.0, maxiter=lissa_maxiter, warn_on_max_iteration=False
        ),
        "arnoldi": lambda m, loss: ArnoldiInfluence(m, loss, rank=6, regularization=0.1),
        "ekfac": lambda m, loss: EkfacInfluence(m, loss, regularization=0.1),
        "nystroem": lambda m, loss: NystroemSketchInfluence(m, loss, rank=6, regularization=0.1),
        "datainf": lambda m, loss: InverseHarmonicMeanInfluence(m, loss, regularization=0.1),
    }
