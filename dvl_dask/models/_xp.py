"""Array namespaces of the batched solvers: numpy itself, or torch on one device behind numpy's names.

The solvers of :mod:`dvl_dask.models._solvers` are written once against a
namespace ``xp`` with numpy's names and semantics (``xp.einsum``,
``xp.where``, ``xp.linalg.solve``, ``xp.amax(a, axis=..., keepdims=...)``,
...). :data:`NUMPY` is numpy itself (the same functions, so the numpy path is
the numpy program it always was); :class:`TorchNamespace` maps the same
names onto torch operations on one device, in float64. What is genuinely
backend-specific (a batched Cholesky solve) is one method here.

Arrays stay in the namespace they were made in: the public solver functions
convert their inputs once (:meth:`asarray`) and the results back to numpy
once (:meth:`to_numpy`).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import numpy as np

__all__ = ["NUMPY", "NumpyNamespace", "TorchNamespace", "namespace_of", "torch_module", "torch_namespace"]


class NumpyNamespace:
    """numpy's functions, plus the few operations the solvers need beyond numpy's names.

    Attribute look-ups fall through to the numpy module and are cached on the
    instance, so ``xp.einsum`` costs what ``np.einsum`` does.
    """

    is_numpy = True
    device = "cpu"

    def __getattr__(self, name: str) -> Any:
        value = getattr(np, name)
        setattr(self, name, value)
        return value

    @staticmethod
    def copy(a: np.ndarray) -> np.ndarray:
        """A C-contiguous copy (``a.copy()``: not ``np.copy``, which keeps the layout of a transposed view)."""
        return a.copy()

    @staticmethod
    def std(a: np.ndarray, axis: int) -> np.ndarray:
        """Population standard deviation."""
        return a.std(axis=axis)

    @staticmethod
    def to_numpy(a: Any) -> np.ndarray:
        return np.asarray(a)

    @staticmethod
    def int_array(a: Any) -> np.ndarray:
        return np.asarray(a, dtype=np.int64)


#: The numpy namespace (the ``"cpu"`` device).
NUMPY = NumpyNamespace()


class _TorchLinalg:
    def __init__(self, torch: Any) -> None:
        self._torch = torch

    def solve(self, A: Any, b: Any) -> Any:
        """``numpy.linalg.solve``; a singular matrix raises ``numpy.linalg.LinAlgError``, as numpy's does."""
        try:
            return self._torch.linalg.solve(A, b)
        except self._torch.linalg.LinAlgError as error:
            raise np.linalg.LinAlgError(str(error)) from None

    def svd(self, a: Any, full_matrices: bool = True) -> tuple[Any, Any, Any]:
        """``numpy.linalg.svd``; no convergence raises ``numpy.linalg.LinAlgError``, as numpy's does."""
        try:
            return self._torch.linalg.svd(a, full_matrices=full_matrices)
        except self._torch.linalg.LinAlgError as error:
            raise np.linalg.LinAlgError(str(error)) from None


class TorchNamespace:
    """numpy's names for torch operations on ``device``, in float64 (only those the batched solvers use).

    Parameters
    ----------
    device : str
        A torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).
    """

    is_numpy = False

    def __init__(self, device: str) -> None:
        torch = torch_module()
        if torch is None:
            raise ModuleNotFoundError("torch is not installed")
        self._torch = torch
        self.device = torch.device(device)
        self.float64 = torch.float64
        self.int64 = torch.int64
        self.bool_ = torch.bool
        self.linalg = _TorchLinalg(torch)
        for name in ("matmul", "swapaxes", "moveaxis", "broadcast_to", "exp", "log", "sqrt", "abs",
                     "isnan", "isfinite", "tanh", "amax"):
            setattr(self, name, getattr(torch, name))

    # -- creation (on this device) --
    def asarray(self, a: Any, dtype: Any = None) -> Any:
        if isinstance(a, np.ndarray):
            if dtype is None and a.dtype.kind == "f":
                dtype = self.float64
            if not a.flags.writeable:  # e.g. a broadcast view: torch wants memory it may write (it never does here)
                a = np.array(a)
        return self._torch.as_tensor(a, dtype=dtype, device=self.device)

    def int_array(self, a: Any) -> Any:
        return self._torch.as_tensor(np.asarray(a, dtype=np.int64), device=self.device)

    def array(self, a: Any, dtype: Any = None) -> Any:
        return self.asarray(a, dtype).clone()

    def zeros(self, shape: Any, dtype: Any = None) -> Any:
        return self._torch.zeros(shape, dtype=dtype or self.float64, device=self.device)

    def ones(self, shape: Any, dtype: Any = None) -> Any:
        return self._torch.ones(shape, dtype=dtype or self.float64, device=self.device)

    def empty(self, shape: Any, dtype: Any = None) -> Any:
        return self._torch.empty(shape, dtype=dtype or self.float64, device=self.device)

    def full(self, shape: Any, value: float, dtype: Any = None) -> Any:
        return self._torch.full(_shape(shape), value, dtype=dtype or self.float64, device=self.device)

    def zeros_like(self, a: Any) -> Any:
        return self._torch.zeros_like(a)

    def eye(self, n: int, dtype: Any = None) -> Any:
        return self._torch.eye(n, dtype=dtype or self.float64, device=self.device)

    def arange(self, n: int) -> Any:
        return self._torch.arange(n, device=self.device)

    def tri(self, n: int, dtype: Any = None) -> Any:
        """Lower-triangular ones, diagonal included (``numpy.tri``)."""
        ones = self._torch.ones((n, n), dtype=self.bool_ if dtype is bool else (dtype or self.float64),
                                device=self.device)
        return self._torch.tril(ones)

    # -- numpy names with other spellings in torch --
    def einsum(self, spec: str, *operands: Any, optimize: bool = False) -> Any:
        return self._torch.einsum(spec, *operands)

    def concatenate(self, arrays: Any, axis: int = 0) -> Any:
        return self._torch.cat(list(arrays), dim=axis)

    def where(self, condition: Any, a: Any, b: Any) -> Any:
        return self._torch.where(condition, a, b)

    def logaddexp(self, a: Any, b: Any) -> Any:
        if isinstance(a, (int, float)):
            a = self._torch.full_like(b, a)
        if isinstance(b, (int, float)):
            b = self._torch.full_like(a, b)
        return self._torch.logaddexp(a, b)

    def maximum(self, a: Any, b: Any) -> Any:
        if isinstance(b, (int, float)):
            return self._torch.clamp(a, min=b)
        if isinstance(a, (int, float)):
            return self._torch.clamp(b, min=a)
        return self._torch.maximum(a, b)

    def diagonal(self, a: Any) -> Any:
        return self._torch.diagonal(a, 0, 0, 1)

    def flatnonzero(self, a: Any) -> Any:
        return self._torch.nonzero(a.reshape(-1)).reshape(-1)

    def ascontiguousarray(self, a: Any) -> Any:
        return a.contiguous()

    def copy(self, a: Any) -> Any:
        return a.clone(memory_format=self._torch.contiguous_format)

    def std(self, a: Any, axis: int) -> Any:
        """Population standard deviation."""
        return self._torch.std(a, dim=axis, correction=0)

    def errstate(self, **_: Any) -> contextlib.AbstractContextManager[None]:
        """torch does not warn on overflow: nothing to silence."""
        return contextlib.nullcontext()

    # -- backend-specific --
    def cholesky_solve_batch_last(self, A: Any, b: Any) -> tuple[Any, Any]:
        """Solve SPD systems stored batch last (``A`` ``(p, p, B)``, lower triangle read; ``b`` ``(p, B)``).

        ``torch.linalg.cholesky_ex`` (no error on a matrix that is not
        positive definite: ``info`` says which) and ``torch.cholesky_solve``.
        Returns ``x`` ``(p, B)`` and which matrices had positive pivots.
        """
        factor, info = self._torch.linalg.cholesky_ex(A.permute(2, 0, 1))
        x = self._torch.cholesky_solve(b.T.unsqueeze(-1), factor)[..., 0]
        return x.T, info == 0

    def to_numpy(self, a: Any) -> np.ndarray:
        return a.detach().cpu().numpy()


def _shape(shape: Any) -> tuple[int, ...]:
    return (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(n) for n in shape)


def namespace_of(a: Any) -> Any:
    """The namespace of an array: :data:`NUMPY` for numpy arrays, a :class:`TorchNamespace` for tensors."""
    if isinstance(a, np.ndarray):
        return NUMPY
    return torch_namespace(str(a.device))


@functools.cache
def torch_namespace(device: str) -> TorchNamespace:
    """The (cached) torch namespace of ``device``."""
    return TorchNamespace(device)


@functools.cache
def torch_module() -> Any:
    """torch, imported on first use of a torch device (never for ``"cpu"``); None if it is not installed.

    The one place ``dvl_dask.models`` imports torch (an import-linter contract allows it here only).
    """
    try:
        import torch
    except ImportError:
        return None
    return torch
