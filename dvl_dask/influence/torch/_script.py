"""TorchScript models as eager modules, so that ``torch.func`` can differentiate them per sample."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ...errors import InvalidModelError

__all__ = ["ScriptedModule", "load_torchscript"]


def _owner_and_attr(root: nn.Module, name: str) -> tuple[Any, str]:
    path, _, attr = name.rpartition(".")
    module: Any = root
    for part in path.split(".") if path else ():
        module = getattr(module, part)
    return module, attr


class ScriptedModule(nn.Module):
    """An eager ``nn.Module`` running a TorchScript module with swappable parameters.

    ``torch.func`` (per-sample gradients, ``functional_call``) cannot swap the
    parameters of a scripted module. This wrapper owns eager copies of them
    (named like the original, with ``.`` replaced by ``__``) and, for the
    duration of each forward call, sets them on the scripted module, so the
    compiled code runs with whatever tensors ``functional_call`` passes (also
    the batched tensors of ``vmap``). Not thread-safe, as every torch
    influence model already assumes.

    Parameters
    ----------
    script : torch.jit.ScriptModule
        E.g. from :func:`torch.jit.load`.
    """

    def __init__(self, script: torch.jit.ScriptModule) -> None:
        super().__init__()
        if not isinstance(script, torch.jit.ScriptModule):
            raise InvalidModelError(
                f"ScriptedModule wraps a torch.jit.ScriptModule (from torch.jit.load). Got {type(script).__name__}."
            )
        self.script = script
        self.parameter_names = [n for n, _ in script.named_parameters()]
        for name, p in script.named_parameters():
            self.register_parameter(name.replace(".", "__"), nn.Parameter(p.detach().clone(), p.requires_grad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved = []
        try:
            for name in self.parameter_names:
                module, attr = _owner_and_attr(self.script, name)
                saved.append((module, attr, getattr(module, attr)))
                module._c.setattr(attr, getattr(self, name.replace(".", "__")))
            return self.script(x)
        finally:
            for module, attr, value in saved:
                module._c.setattr(attr, value)


def load_torchscript(path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu") -> nn.Module:
    """Load a TorchScript file (``torch.jit.save``) as a module the influence models accept.

    Returns a :class:`ScriptedModule` in evaluation mode.
    """
    import warnings

    from ...validation import check_url

    path = check_url(path, "path", "load_torchscript")
    if not os.path.exists(path):
        raise InvalidModelError(f"The 'path' of load_torchscript does not exist: {path!r}. To fix, pass the file "
                                "written by torch.jit.save.")
    try:
        with warnings.catch_warnings():  # torch 2.9+ deprecates TorchScript; loading it still works
            warnings.simplefilter("ignore", DeprecationWarning)
            script = torch.jit.load(os.fspath(path), map_location=map_location)
    except (RuntimeError, ValueError) as exc:
        raise InvalidModelError(f"Cannot load {os.fspath(path)!r} as a TorchScript model: {exc}") from exc
    script.eval()
    return ScriptedModule(script).eval()
