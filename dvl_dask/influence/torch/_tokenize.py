"""How dvl_dask's tokens hash torch tensors and modules: by value.

The handlers are registered into :mod:`dvl_dask.keys`' private dispatch when
this module is imported: on import of :mod:`dvl_dask.influence.torch`, or by
:mod:`dvl_dask.keys` itself (by module name) the first time it meets an
object of a ``torch`` type, so that ``dvl_dask.keys`` never imports torch.
Nothing is registered with ``dask.base.normalize_token``: how dask hashes
tensors and modules is left to dask and torch.

Tokens depend on values, not identity or device: a tensor hashes its dtype,
shape and bytes; a module, for itself and every submodule, its class
(:func:`~dvl_dask.keys.class_token`: the code of user-defined modules), its
plain attributes (hyper-parameters such as ``in_features`` or ``p``, the
training flag) and every parameter and buffer by name and content. Tokens are
the same in every process and on every machine.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from ...keys import class_token, object_token
from ...keys._encode import Update, feed, register

__all__ = ["normalize_module", "normalize_tensor", "register_handlers"]

#: Compiled TorchScript callables: identified through their module's code, not as values.
_SCRIPT_CALLABLES = (torch._C.ScriptMethod, torch._C.ScriptFunction)


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
    """Plain attributes of a module (``in_features``, ``p``, ``training``, ...), hashed by value.

    A TorchScript module contributes its compiled code (``m.code``, the source
    of ``forward``) instead of its ``ScriptMethod`` attributes, which cannot be
    read as values.
    """
    found = {k: v for k, v in vars(m).items() if not k.startswith("_") and not isinstance(v, _SCRIPT_CALLABLES)}
    if isinstance(m, torch.jit.ScriptModule):
        try:
            found["torchscript_code"] = m.code
        except RuntimeError:  # a module without a compiled forward
            found["torchscript_code"] = None
    return found


def normalize_module(m: nn.Module) -> tuple[Any, ...]:
    """Class and hyper-parameters of every submodule, parameters and buffers by name and content."""
    layers = [(n, class_token(type(sub)), object_token(_hyper_parameters(sub))) for n, sub in m.named_modules()]
    state = [(n, normalize_tensor(p)) for n, p in m.named_parameters()]
    state += [(n, normalize_tensor(b)) for n, b in m.named_buffers()]
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    return ("torch.nn.Module", layers, state, trainable)


def _feed_tensor(update: Update, t: torch.Tensor) -> None:
    feed(update, normalize_tensor(t))


def _feed_module(update: Update, m: nn.Module) -> None:
    if getattr(m, "__dask_tokenize__", None) is not None:
        feed(update, (class_token(type(m)), m.__dask_tokenize__()))
        return
    feed(update, normalize_module(m))


def _feed_plain(update: Update, obj: Any) -> None:
    feed(update, (type(obj).__name__, str(obj)))


def register_handlers() -> None:
    """Register the handlers with dvl_dask's private dispatch (idempotent)."""
    register(torch.Tensor, _feed_tensor)
    register(nn.Module, _feed_module)
    register((torch.dtype, torch.device), _feed_plain)


register_handlers()
