"""DataInf: the inverse of the curvature replaced by the mean of per-sample inverses."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...validation import keyword_aliases
from .._mode import BlockMode
from ._data import iter_batches
from ._functional import FunctionalModel, LossFn
from ._model_base import GRAD_CHUNK, BlockStructure, TorchInfluenceFunctionModel

__all__ = ["InverseHarmonicMeanInfluence"]


class InverseHarmonicMeanInfluence(TorchInfluenceFunctionModel):
    r"""DataInf (Kwon et al., 2024): swap the order of averaging and inversion.

    For each block ``l`` (by default one per layer) the regularised empirical
    Fisher ``(1/n) Σᵢ gᵢgᵢᵀ + λI`` is replaced by the *inverse harmonic mean*
    of its per-sample terms, whose inverse has a closed form by
    Sherman–Morrison:

    .. math::

        H_l^{-1} \approx \frac{1}{n} \sum_{i=1}^n (g_i g_i^T + λ I)^{-1}
        = \frac{1}{λ} \Big( I - \frac{1}{n} \sum_i
          \frac{g_i g_i^T}{λ + \lVert g_i \rVert^2} \Big),

    with ``gᵢ = ∇θ_l ℓ(zᵢ)``. No matrix is stored or inverted: every factor
    computation makes one pass over the training data (kept after
    :meth:`fit`), computing per-sample gradients. The approximation is good
    when ``λ`` is large compared with the spread of ``‖gᵢ‖²``, and it is not
    exact even for linear models.

    Parameters
    ----------
    model : nn.Module
        The trained model.
    loss : callable
        Mean-reduced loss.
    regularization : float
        ``λ > 0``. The paper suggests ``0.1 · mean ‖gᵢ‖²`` per layer.
    block_structure : BlockMode, str or mapping
        ``"layer"`` (default), ``"full"``, or ``{block_name: [parameter names]}``.
    """

    @keyword_aliases(hessian_regularization="regularization")
    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        *,
        regularization: float,
        block_structure: BlockStructure = BlockMode.Layer,
    ) -> None:
        super().__init__(model, loss)
        self.regularization = self._check_regularization(
            regularization, positive=True, why="DataInf inverts gᵢgᵢᵀ + λI, which is singular for λ = 0."
        )
        self._blocks = self._resolve_blocks(block_structure)
        self._loader: DataLoader | None = None

    def _fit(self, fm: FunctionalModel, loader: DataLoader) -> None:
        self._loader = loader

    def _solve(self, grads: torch.Tensor) -> torch.Tensor:
        assert self._loader is not None
        fm = self._functional
        lam = self.regularization
        acc = torch.zeros_like(grads)
        test_blocks = [block.select(grads) for block in self._blocks]
        total = 0
        for x, y in iter_batches(self._loader, self._owner):
            x, y = x.to(grads.device), y.to(grads.device)
            for j in range(0, x.shape[0], GRAD_CHUNK):
                g_train = fm.per_sample_grads(x[j : j + GRAD_CHUNK], y[j : j + GRAD_CHUNK], total)
                for block, g_test in zip(self._blocks, test_blocks):
                    gt = block.select(g_train)
                    coef = (g_test @ gt.T) / (lam + (gt * gt).sum(dim=1))
                    update = coef @ gt
                    cols = block.columns
                    if isinstance(cols, slice):
                        acc[:, cols] += update
                    else:
                        acc.index_add_(1, cols.to(acc.device), update)
                total += g_train.shape[0]
        return (grads - acc / total) / lam
