"""Influence function models in torch (the only part of dvl_dask that imports torch).

All models implement :class:`dvl_dask.influence.InfluenceFunctionModel`:
``fit(data_loader)``, then ``influence_factors``, ``influences`` and
``influences_from_factors``. See that class for the sign convention.

* :class:`DirectInfluence` -- explicit regularised curvature matrix, inverted.
* :class:`CgInfluence` -- block (or batched per-sample) conjugate gradient, optional Jacobi or Nyström
  preconditioning.
* :class:`LissaInfluence` -- stochastic Neumann series.
* :class:`ArnoldiInfluence` -- leading eigenpairs by Lanczos iteration.
* :class:`EkfacInfluence` -- eigenvalue-corrected Kronecker factors (``nn.Linear`` layers).
* :class:`NystroemSketchInfluence` -- randomised Nyström low-rank sketch.
* :class:`InverseHarmonicMeanInfluence` -- DataInf, closed-form per-sample inverses.
* :class:`TrakInfluence` -- TRAK-style: influence in a seeded random projection of the gradients.
* :class:`LograInfluence` -- LoGra-style: per-layer Kronecker projections, no per-sample gradients.
* :class:`TracInInfluence` -- TracIn: gradient similarity over training checkpoints (no Hessian).

Most accept ``regularization``, ``second_order_mode`` (``"hessian"`` or
``"gauss_newton"``) and ``block_structure`` (``"full"``, ``"layer"`` or a mapping).

Which curvature by default, and why:

* The exact Hessian (``second_order_mode="hessian"``) for :class:`DirectInfluence`,
  :class:`CgInfluence`, :class:`LissaInfluence`, :class:`ArnoldiInfluence` and
  :class:`NystroemSketchInfluence`: it is the influence function's own definition. A trained
  network's Hessian is usually indefinite; Direct and Arnoldi handle that (Arnoldi keeps the
  eigenvalues of largest magnitude, to a residual tolerance), CG finishes right-hand sides it
  cannot solve with MINRES and refuses unconverged indefinite solves, LiSSA needs a ``scale``
  above the spectrum and Nyström refuses a non-PSD sketch: pass ``"gauss_newton"`` (positive
  semi-definite by construction) for those on non-convex models.
* A positive semi-definite Fisher-type curvature (Gauss-Newton / Fisher, or the empirical
  Fisher of the gradients), always, for :class:`EkfacInfluence`,
  :class:`InverseHarmonicMeanInfluence`, :class:`TrakInfluence` and :class:`LograInfluence`:
  their factorisations (Kronecker factors, rank-one per-sample terms, projected ``ΦᵀΦ``) exist
  only for such a sum of outer products.

Every model that inverts a matrix refuses a regularised curvature whose condition number times
the dtype's epsilon exceeds 1e-2 (the error names a regularization that fits, or float64), and
every fit and product runs with the torch thread budget of :func:`dvl_dask.threads.torch_threads`
(``dvl_dask.compute.torch-threads``), restoring the caller's ``torch.get_num_threads()``.
Importing this package registers dvl_dask's (private) hashing of tensors and modules.

For the calculators of :mod:`dvl_dask.influence`: :class:`TorchNumpyConverter`
(numpy blocks ↔ tensors), :class:`TorchCatAggregator` and
:class:`NestedTorchCatAggregator` (assemble lazy results into one tensor) and
:func:`torch_dataset_to_dask_array` (a torch ``Dataset`` as dask arrays). :func:`load_torchscript`
loads a TorchScript file as a module ``torch.func`` can differentiate.
"""

try:
    import torch as _torch  # noqa: F401 - only to say clearly when it is missing
except ModuleNotFoundError as _missing:
    from ...errors import MissingDependencyError

    raise MissingDependencyError(
        "dvl_dask.influence.torch needs PyTorch, which is not installed here. To fix, install dvl_dask's torch "
        "extra: pip install 'dvl_dask[torch]' (or a torch build for your platform from pytorch.org).",
        name="torch",
    ) from _missing

from . import _tokenize as _tokenize  # registers dvl_dask's hashing of tensors and modules
from ._aggregators import NestedTorchCatAggregator, TorchCatAggregator
from ._arnoldi import ArnoldiInfluence
from ._cg import CgInfluence
from ._converters import TorchNumpyConverter
from ._dask_data import torch_dataset_to_dask_array
from ._datainf import InverseHarmonicMeanInfluence
from ._direct import DirectInfluence
from ._ekfac import EkfacInfluence
from ._lissa import LissaInfluence
from ._logra import LograInfluence
from ._model_base import TorchInfluenceFunctionModel
from ._nystroem import NystroemSketchInfluence
from ._preconditioners import JacobiPreconditioner, NystroemPreconditioner, Preconditioner
from ._script import ScriptedModule, load_torchscript
from ._tracin import TracInInfluence
from ._trak import TrakInfluence

__all__ = [
    "TorchInfluenceFunctionModel",
    "DirectInfluence",
    "CgInfluence",
    "LissaInfluence",
    "ArnoldiInfluence",
    "EkfacInfluence",
    "NystroemSketchInfluence",
    "InverseHarmonicMeanInfluence",
    "TracInInfluence",
    "TrakInfluence",
    "LograInfluence",
    "Preconditioner",
    "JacobiPreconditioner",
    "NystroemPreconditioner",
    "TorchNumpyConverter",
    "TorchCatAggregator",
    "NestedTorchCatAggregator",
    "torch_dataset_to_dask_array",
    "ScriptedModule",
    "load_torchscript",
]
