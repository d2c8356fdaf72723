"""Deterministic dask tokens for torch tensors and modules.

Registered lazily from :mod:`dvl_dask.keys` (``normalize_token.register_lazy("torch")``)
and on import of :mod:`dvl_dask.influence.torch`. Tokens depend on values, not
identity or device: a tensor hashes its dtype, shape and bytes; a module,
for itself and every submodule, its class (:func:`~dvl_dask.keys.class_token`:
the code of user-defined modules), its plain attributes (hyper-parameters such
as ``in_features`` or ``p``, the training flag) and every parameter and buffer
by name and content. Tokens are the same in every process and on every machine.
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


def _hyper_parameters(m: nn.Module) -> dict[str, Any]:
    """Plain attributes of a module (``in_features``, ``p``, ``training``, ...), hashed by value."""
    return {k: v for k, v in vars(m).items() if not k.startswith("_")}


def normalize_module(m: nn.Module) -> tuple[Any, ...]:
    """Class and hyper-parameters of every submodule, parameters and buffers by name and content."""
    from ...keys import class_token, object_token

    layers = [(n, class_token(type(sub)), object_token(_hyper_parameters(sub))) for n, sub in m.named_modules()]
    state = [(n, normalize_tensor(p)) for n, p in m.named_parameters()]
    state += [(n, normalize_tensor(b)) for n, b in m.named_buffers()]
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    return ("torch.nn.Module", layers, state, trainable)


def register() -> None:
    """Register the normalisers with ``dask.base.normalize_token`` (idempotent)."""
    normalize_token.register(torch.Tensor, normalize_tensor)
    normalize_token.register(nn.Module, normalize_module)


register()
