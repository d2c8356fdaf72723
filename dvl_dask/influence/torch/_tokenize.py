"""Deterministic dask tokens for torch tensors and modules.

Registered lazily from :mod:`dvl_dask.keys` (``normalize_token.register_lazy("torch")``)
and on import of :mod:`dvl_dask.influence.torch`. Tokens depend on values, not
identity or device: a tensor hashes its dtype, shape and bytes; a module its
class, ``repr`` (hyper-parameters), training flag and every parameter and
buffer by name.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from dask.base import normalize_token
from torch import nn

__all__ = ["normalize_module", "normalize_tensor", "register"]


def normalize_tensor(t: torch.Tensor) -> tuple[Any, ...]:
    """``(kind, dtype, shape, digest of the bytes)`` of a tensor."""
    t = t.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.is_meta:
        raise TypeError("A meta tensor has no data to hash; materialise it first.")
    flat = t.cpu().contiguous().reshape(-1)
    raw = flat.view(torch.uint8) if flat.numel() else flat.new_empty(0, dtype=torch.uint8)
    digest = hashlib.blake2b(raw.numpy().tobytes(), digest_size=16).hexdigest()
    return ("torch.Tensor", str(t.dtype), tuple(t.shape), digest)


def normalize_module(m: nn.Module) -> tuple[Any, ...]:
    """Class, ``repr``, training flag, parameters and buffers (by name) of a module."""
    cls = f"{type(m).__module__}.{type(m).__qualname__}"
    state = [(n, normalize_tensor(p)) for n, p in m.named_parameters()]
    state += [(n, normalize_tensor(b)) for n, b in m.named_buffers()]
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    return ("torch.nn.Module", cls, repr(m), m.training, state, trainable)


def register() -> None:
    """Register the normalisers with ``dask.base.normalize_token`` (idempotent)."""
    normalize_token.register(torch.Tensor, normalize_tensor)
    normalize_token.register(nn.Module, normalize_module)


register()
