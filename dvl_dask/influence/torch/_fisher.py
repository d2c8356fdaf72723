"""Sampled (true) Fisher: output gradients of pseudo-targets drawn from the model's predictive distribution."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InvalidParameterError
from ._functional import LossFn

__all__ = ["sample_output_gradients"]

TargetSampler = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _is_cross_entropy(loss: LossFn) -> bool:
    if loss is F.cross_entropy:
        return True
    return (
        isinstance(loss, nn.CrossEntropyLoss)
        and loss.reduction == "mean"
        and loss.weight is None
        and loss.label_smoothing == 0.0
    )


def _is_mse(loss: LossFn) -> bool:
    return loss is F.mse_loss or (isinstance(loss, nn.MSELoss) and loss.reduction == "mean")


def _sample_categorical(out: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Class indices drawn from ``softmax(out)`` along dim 1, shape ``(n, *out.shape[2:])``."""
    logits = out.movedim(1, -1)
    probs = torch.softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)
    draws = torch.multinomial(probs, 1, generator=generator).reshape(logits.shape[:-1])
    return draws


def sample_output_gradients(
    loss: LossFn,
    out: torch.Tensor,
    n_samples: int,
    generator: torch.Generator,
    sampler: TargetSampler | None,
    owner: str,
) -> list[torch.Tensor]:
    """``n_samples`` tensors shaped like ``out`` whose ``Σ_c gᵢ gᵢᵀ`` estimates each sample's output Hessian.

    Draw ``c`` holds, for every sample ``i``, the gradient of the per-sample
    loss ``ℓᵢ(oᵢ, ŷᵢ)`` w.r.t. ``oᵢ`` for a pseudo-target ``ŷᵢ`` drawn from the
    predictive distribution, scaled so that its covariance is ``∇²ℓᵢ`` (the
    Fisher identity): ``1/√s`` for the ``s`` draws and ``1/√c`` for a loss that
    is ``c`` times the negative log-likelihood (mean reductions over ``T``
    positions of a sample: ``c = 1/T`` for cross-entropy).
    """
    n = out.shape[0]
    per_sample = out[0].numel()
    if sampler is not None:
        draw: TargetSampler = sampler
        scale = 1.0
    elif _is_cross_entropy(loss):
        if out.ndim < 2:
            raise InvalidParameterError(
                f"{owner}: cross-entropy needs outputs of shape (batch, classes, ...). Got {tuple(out.shape)}."
            )
        draw = _sample_categorical
        scale = math.sqrt(per_sample // out.shape[1])  # positions per sample: the loss averages over them
    elif _is_mse(loss):
        # ℓᵢ = ‖oᵢ - yᵢ‖²/m is the NLL (up to a constant) of y ~ N(oᵢ, m/2 · I): its Fisher is (2/m) I = ∇²ℓᵢ.
        std = math.sqrt(per_sample / 2)

        def draw(o: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            return o + std * torch.randn(o.shape, generator=g, dtype=o.dtype, device=o.device)

        scale = 1.0
    else:
        raise InvalidParameterError(
            f"{owner} with fisher_samples needs the model's predictive distribution to draw pseudo-targets, "
            f"which it knows for cross-entropy and MSE only. Got loss {getattr(loss, '__name__', type(loss).__name__)}."
            " To fix, pass target_sampler=lambda output, generator: <targets drawn given output>, or "
            "fisher_samples=None for the exact output Hessian."
        )
    grads = []
    for _ in range(n_samples):
        o = out.detach().clone().requires_grad_(True)
        with torch.no_grad():
            targets = draw(o.detach(), generator)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(loss(o, targets), o)
        grads.append(g * (n * scale / math.sqrt(n_samples)))
    return grads
