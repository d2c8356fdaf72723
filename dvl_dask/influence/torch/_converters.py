"""Conversion between numpy arrays and torch tensors at the boundary of the influence models."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...errors import InvalidDataError

__all__ = ["TorchNumpyConverter"]


class TorchNumpyConverter:
    """Convert numpy arrays to tensors on a device/dtype, and tensors back to numpy.

    Parameters
    ----------
    device : torch.device, str or None
        Device of the tensors made by :meth:`to_tensor`; None keeps torch's
        default (the CPU).
    dtype : torch.dtype or None
        Dtype of the tensors made by :meth:`to_tensor`; None keeps the
        array's dtype (float64 stays float64).

    Examples
    --------
    >>> import numpy as np, torch
    >>> conv = TorchNumpyConverter(dtype=torch.float32)
    >>> t = conv.to_tensor(np.ones((2, 3)))
    >>> t.dtype, conv.to_numpy(t).shape
    (torch.float32, (2, 3))
    """

    def __init__(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise InvalidDataError(
                f"The 'dtype' parameter of TorchNumpyConverter must be a torch.dtype such as torch.float32. "
                f"Got {dtype!r}."
            )
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"TorchNumpyConverter(device={self.device!r}, dtype={self.dtype!r})"

    def to_tensor(self, x: Any) -> torch.Tensor:
        """``x`` (a numpy array or array-like) as a tensor on ``device`` with ``dtype``."""
        arr = np.asarray(x)
        if arr.dtype == object or arr.dtype.kind in "USV":
            raise InvalidDataError(
                f"TorchNumpyConverter.to_tensor needs a numeric array. Got dtype {arr.dtype}. To fix, convert "
                "it with np.asarray(x, dtype=float) (or encode labels as integers)."
            )
        if not arr.flags.writeable:  # torch warns on read-only memory
            arr = arr.copy()
        return torch.as_tensor(arr, device=self.device, dtype=self.dtype)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        """``x`` as a numpy array (detached, copied to the CPU when needed)."""
        if not isinstance(x, torch.Tensor):
            raise InvalidDataError(f"TorchNumpyConverter.to_numpy needs a torch.Tensor. Got {type(x).__name__}.")
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.numpy()
