"""The device the batched models fit on: ``dask.config`` ``dvl_dask.models.device``, read at call time.

``"cpu"`` (the default) runs the solvers in numpy, the fastest on a CPU. A
torch device runs the same solvers (one implementation, written against the
array namespaces of :mod:`dvl_dask.models._xp`) in torch, float64, on that
device: ``"cuda"``, ``"cuda:N"``, ``"mps"``, or ``"torch:cpu"`` for torch on
the CPU (how the torch path is tested on a machine without a GPU); the
prefix ``"torch:"`` is accepted before any of them. Each batch's inputs are
copied to the device once and its fitted coefficients back to numpy once: the
utility and valuation layers stay numpy (the scores of a batch are computed
from the coefficients, in numpy).

A device that is not available here (torch not installed, no CUDA device of
that index, no MPS, or no float64 on it: torch's MPS backend has none)
raises :class:`~dvl_dask.errors.InvalidParameterError` naming the setting,
its value and the devices that are available, before any work: it never
falls back to another device.
"""

from __future__ import annotations

import functools
from typing import Any

from .. import config
from ..errors import InvalidParameterError
from ._xp import NUMPY, torch_module, torch_namespace

__all__ = ["SUPPORTED_DEVICES", "available_devices", "batch_device", "device_namespace"]

#: The device spellings of ``dvl_dask.models.device`` (``N`` a CUDA device index; ``"torch:"`` may prefix a torch
#: device). Which of them are available depends on the install: :func:`available_devices`.
SUPPORTED_DEVICES = ("cpu", "torch:cpu", "cuda", "cuda:N", "mps")


def batch_device() -> str:
    """The configured device of the batched models, checked: ``"cpu"`` (numpy) or a torch device.

    Returns
    -------
    str
        ``"cpu"`` for numpy, else the torch device with the ``"torch:"``
        prefix (``"torch:cpu"``, ``"torch:cuda:1"``, ``"torch:mps"``).

    Raises
    ------
    InvalidParameterError
        If ``dvl_dask.models.device`` is not one of :data:`SUPPORTED_DEVICES`,
        or names a device that is not available here (:func:`available_devices`).
    """
    return _resolve(config.get(config.MODELS_DEVICE), f"The dask.config setting '{config.MODELS_DEVICE}'")


def device_namespace(device: Any, owner: str) -> Any:
    """The array namespace of ``device`` (a value of :func:`batch_device`, or a spelling it accepts).

    ``owner`` names the function whose ``device`` argument this is, for the error.
    """
    resolved = _resolve(device, f"The 'device' argument of {owner}")
    return NUMPY if resolved == "cpu" else torch_namespace(resolved.removeprefix("torch:"))


def available_devices() -> tuple[str, ...]:
    """The devices the batched models can use on this install: ``"cpu"``, and torch's if torch is installed."""
    found = ["cpu"]
    torch = _torch()
    if torch is not None:
        found.append("torch:cpu")
        if torch.cuda.is_available():
            found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        if torch.backends.mps.is_available() and _float64_problem("mps") is None:
            found.append("mps")
    return tuple(found)


def _resolve(device: Any, what: str) -> str:
    if isinstance(device, str):
        name = device.strip().lower()
        if name == "cpu":
            return "cpu"
        torch_device = _parse_torch(name.removeprefix("torch:"))
        if torch_device is not None:
            problem = _unavailable(torch_device)
            if problem is None:
                return "torch:" + torch_device
            raise InvalidParameterError(
                f"{what} is {device!r}, but {problem}. Supported on this install: "
                f"{', '.join(repr(d) for d in available_devices())}. To fix, set it to one of them ('cpu', the "
                "default, runs numpy)."
            )
    raise InvalidParameterError(
        f"{what} is {device!r}:{' not' if not isinstance(device, str) else ''} a device name the batched models "
        f"know. Expected one of {', '.join(repr(d) for d in SUPPORTED_DEVICES)} ('torch:' may prefix a torch "
        f"device). Supported on this install: {', '.join(repr(d) for d in available_devices())}."
    )


def _parse_torch(name: str) -> str | None:
    """The torch device of a spelling (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``), or None."""
    if name in ("cpu", "cuda", "mps"):
        return name
    kind, _, index = name.partition(":")
    if kind == "cuda" and index.isdigit():
        return f"cuda:{int(index)}"
    return None


def _unavailable(device: str) -> str | None:
    """Why the torch device ``device`` cannot be used here, or None."""
    torch = _torch()
    if torch is None:
        return ("torch, which runs the batched models on devices other than 'cpu', is not installed "
                "(pip install 'dvl_dask[torch]')")
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            return (f"torch {torch.__version__} sees {count} CUDA device{'' if count == 1 else 's'}"
                    f"{' (CUDA is not available)' if count == 0 else ''}")
    if device == "mps" and not torch.backends.mps.is_available():
        return f"MPS is not available to torch {torch.__version__}"
    return _float64_problem(device)


@functools.cache
def _float64_problem(device: str) -> str | None:
    """Why torch cannot compute in float64 on ``device`` (MPS has no float64), or None; probed once per device."""
    torch = _torch()
    try:
        torch.ones(2, dtype=torch.float64, device=device).sum().item()
    except (RuntimeError, TypeError) as error:
        return (f"torch {torch.__version__} cannot compute in float64 on {device!r}, which the batched solvers need "
                f"(their tolerance is 1e-10 relative): {str(error).splitlines()[0]}")
    return None


def _torch() -> Any:
    """torch (imported by :mod:`._xp`, the one module of ``dvl_dask.models`` that does), or None if not installed."""
    return torch_module()
