"""DataInf: the inverse of the curvature replaced by the mean of per-sample inverses."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from .._mode import BlockMode
from ._functional import FunctionalModel, LossFn
from ._linalg import CONDITION_LIMIT, nystroem_from_products, nystroem_test_matrix
from ._model_base import BlockStructure, TorchInfluenceFunctionModel

__all__ = ["CONDITIONING_SKETCH_RANK", "InverseHarmonicMeanInfluence"]

#: Blocks up to this size have the conditioning of their approximation checked exactly (a dense
#: ``d x d`` matrix per block during fit); larger ones with a Nyström sketch of this rank.
CONDITIONING_SKETCH_RANK = 256


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

    Conditioning: where the training gradients of a block are aligned and
    ``λ`` is small compared with ``‖gᵢ‖²``, the bracket above nearly vanishes
    in their direction, and computing it in the model's dtype cancels
    catastrophically. :meth:`fit` therefore makes one pass over the training
    data to find the eigenvalues ``μ`` of ``M = (1/n) Σᵢ gᵢgᵢᵀ/(λ + ‖gᵢ‖²)``
    per block (exactly for blocks of up to ``CONDITIONING_SKETCH_RANK``
    parameters, otherwise the largest ones from a Nyström sketch of that
    rank, which never over-estimates them) and refuses, like every model that
    inverts a curvature, an approximation ``λ/(1 - μ)`` whose condition number
    is too large for the dtype, naming a regularization that fits or float64.

    Parameters
    ----------
    model : nn.Module
        The trained model.
    loss : callable
        Mean-reduced loss.
    regularization : float
        ``λ > 0``. The paper suggests ``0.1 · mean ‖gᵢ‖²`` per layer. Too
        small a value for the dtype is refused at fit (see Conditioning
        above) with a value that is guaranteed to fit: the smallest ``λ``
        with ``mean(λ/(λ + ‖gᵢ‖²)) >= 2·eps/CONDITION_LIMIT``, a lower bound
        on every ``1 - μ``.
    block_structure : BlockMode, str or mapping
        ``"layer"`` (default), ``"full"``, or ``{block_name: [parameter names]}``.
    """

    _POSITIVE_REGULARIZATION = "DataInf inverts gᵢgᵢᵀ + λI, which is singular for λ = 0."

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        *,
        regularization: float,
        block_structure: BlockStructure = BlockMode.Layer,
    ) -> None:
        super().__init__(model, loss, regularization=regularization, block_structure=block_structure)
        self._loader: DataLoader | None = None

    def _fit(self, fm: FunctionalModel, loader: DataLoader) -> None:
        self._check_approximation(fm, loader)
        self._loader = loader

    def _check_approximation(self, fm: FunctionalModel, loader: DataLoader) -> None:
        """Refuse an approximate curvature too ill-conditioned for the dtype (one pass over the data)."""
        lam = self.regularization
        generator = torch.Generator(device="cpu").manual_seed(0)
        tests = [
            None
            if b.n <= CONDITIONING_SKETCH_RANK
            else nystroem_test_matrix(
                b.n, CONDITIONING_SKETCH_RANK, dtype=self.dtype, device=self.device, generator=generator
            )
            for b in self._blocks
        ]
        sums = [
            torch.zeros((b.n if t is None else len(t), b.n), dtype=self.dtype, device=self.device)
            for b, t in zip(self._blocks, tests)
        ]
        norms: list[list[torch.Tensor]] = [[] for _ in self._blocks]
        for g_train in self._training_gradients(fm, loader):
            for block, omega, acc, sq in zip(self._blocks, tests, sums, norms):
                gt = block.select(g_train)
                sq.append((gt * gt).sum(dim=1))
                weighted = gt / (lam + sq[-1]).unsqueeze(1)
                acc += (weighted.T if omega is None else omega @ weighted.T) @ gt
        eps = torch.finfo(self.dtype).eps
        for block, omega, acc, sq in zip(self._blocks, tests, sums, norms):
            squares = torch.cat(sq).to(torch.float64)
            n = len(squares)
            if omega is None:
                mu = torch.linalg.eigvalsh((acc + acc.T) / (2 * n))
            else:  # the sketch's eigenvalues are at most M's: the check never refuses on an over-estimate
                sketched = nystroem_from_products(omega, acc / n, self._owner)[0]
                mu = torch.cat([sketched, sketched.new_zeros(1)])  # μ >= 0 everywhere: the curvature is >= λ
            gap = torch.clamp(1 - mu.to(torch.float64), min=eps)  # 1 - μ is not resolved below eps
            self._check_conditioning(
                lam / gap,
                f"the approximate curvature λ/(1 - μ) of block {block.name!r} ({block.n} parameters)",
                suggested=_regularization_for(squares, 2 * eps / CONDITION_LIMIT),
            )

    def _solve(self, grads: torch.Tensor) -> torch.Tensor:
        assert self._loader is not None
        lam = self.regularization
        acc = torch.zeros_like(grads)
        test_blocks = [block.select(grads) for block in self._blocks]
        total = 0
        for g_train in self._training_gradients(self._functional, self._loader):
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


def _regularization_for(squares: torch.Tensor, floor: float) -> float:
    """The smallest ``λ`` (to 1%) with ``mean(λ / (λ + ‖gᵢ‖²)) >= floor``.

    Every eigenvalue ``μ`` of ``M = (1/n) Σᵢ gᵢgᵢᵀ/(λ + ‖gᵢ‖²)`` is at most
    its trace ``1 - mean(λ / (λ + ‖gᵢ‖²))``, so such a ``λ`` bounds the
    condition number of ``I - M`` by ``1/floor`` whatever the gradients' directions.
    """

    def enough(lam: float) -> bool:
        return float((lam / (lam + squares)).mean()) >= floor

    high = max(float(squares.max()), torch.finfo(torch.float64).tiny) * floor / (1 - floor)  # every term >= floor
    while not enough(high):  # guards rounding: at most a few doublings
        high *= 2
    low = high * 1e-12
    while high / low > 1.01:
        mid = (low * high) ** 0.5
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high
