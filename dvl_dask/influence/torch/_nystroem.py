"""Influence with a randomised Nyström sketch of the curvature."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...validation import SeedLike
from .._mode import BlockMode, SecondOrderMode
from ._functional import FunctionalModel, LossFn
from ._layout import ParameterBlock
from ._linalg import nystroem_sketch
from ._model_base import BlockStructure, TorchInfluenceFunctionModel
from ._preconditioners import torch_generator

__all__ = ["NystroemSketchInfluence"]


class NystroemSketchInfluence(TorchInfluenceFunctionModel):
    r"""Invert a rank-``r`` Nyström approximation ``H ≈ U Λ Uᵀ`` plus regularisation.

    The sketch costs ``rank`` curvature-vector products (one pass over the
    data, vectorised) per block. With ``λ > 0``, by the Woodbury identity

    .. math::

        (U Λ U^T + λ I)^{-1} = U (Λ + λI)^{-1} U^T + \frac{1}{λ} (I - U U^T),

    so, unlike :class:`ArnoldiInfluence`, components outside the sketched
    subspace are kept (scaled by ``1/λ``). With ``rank`` equal to the number
    of parameters the result is exact. The sketch assumes ``H`` is positive
    semi-definite; use ``second_order_mode="gauss_newton"`` for non-convex
    models.

    Parameters
    ----------
    model : nn.Module
        The trained model.
    loss : callable
        Mean-reduced loss.
    rank : int
        Rank of the sketch; at most the number of trainable parameters
        (clipped to the size of smaller blocks).
    regularization : float
        ``λ > 0`` (required by the ``1/λ`` term).
    seed : int, SeedSequence or None
        Seed of the random test matrix.
    second_order_mode : SecondOrderMode or str
        ``"hessian"`` (default) or ``"gauss_newton"``.
    block_structure : BlockMode, str or mapping
        ``"full"`` (default), ``"layer"``, or ``{block_name: [parameter names]}``.
    """

    _POSITIVE_REGULARIZATION = "The Nyström inverse divides the unsketched directions by it."

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        rank: int,
        *,
        regularization: float,
        seed: SeedLike = 0,
        second_order_mode: SecondOrderMode | str = SecondOrderMode.Hessian,
        block_structure: BlockStructure = BlockMode.Full,
    ) -> None:
        super().__init__(model, loss, regularization, second_order_mode, block_structure)
        self.rank = self._check_rank(rank)
        self.seed = seed
        self._sketches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _fit(self, fm: FunctionalModel, loader: DataLoader) -> None:
        gen = torch_generator(self.seed, self._owner)
        sketches = []
        for block in self._blocks:
            op = self._curvature_operator(fm, block, loader, regularization=0.0)
            evals, u = nystroem_sketch(
                op.matmat,
                block.n,
                min(self.rank, block.n),
                dtype=self.dtype,
                device=self.device,
                generator=gen,
                owner=self._owner,
            )
            self._check_conditioning(
                torch.cat([evals + self.regularization, evals.new_tensor([self.regularization])]),
                f"the regularised Nyström approximation of block {block.name!r}",
            )
            sketches.append((evals, u))
        self._sketches = sketches

    def _solve_block(self, i: int, block: ParameterBlock, grads: torch.Tensor) -> torch.Tensor:
        lam = self.regularization
        evals, u = self._sketches[i]
        c = grads @ u.T
        return (c / (evals + lam)) @ u + (grads - c @ u) / lam
