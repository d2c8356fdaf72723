"""Recording the inputs and outputs of named submodules during a forward pass (forward hooks, removed after)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ...errors import InvalidModelError

__all__ = ["recording_layers"]


@contextmanager
def recording_layers(
    net: nn.Module, names: Sequence[str], owner: str, why: str
) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """Record the input (detached) and output of the named submodules of ``net`` in the forward pass run inside.

    Yields ``(inputs, outputs)``, dicts by name filled by forward hooks that
    are removed on exit. A layer called twice in the pass raises
    :class:`InvalidModelError` ending with ``why`` (what the caller needs).
    """
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if name in inputs:
                raise InvalidModelError(f"{owner}: layer {name!r} is called more than once per forward pass; {why}")
            inputs[name], outputs[name] = args[0].detach(), out

        return hook

    modules = dict(net.named_modules())
    handles = [modules[name].register_forward_hook(hook_for(name)) for name in names]
    try:
        yield inputs, outputs
    finally:
        for h in handles:
            h.remove()
