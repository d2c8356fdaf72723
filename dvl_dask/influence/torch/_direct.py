"""Influence with the explicit, regularised inverse of the curvature matrix."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...errors import InvalidModelError
from ...threads import side_by_side
from .._mode import BlockMode, SecondOrderMode
from ._functional import FunctionalModel, LossFn
from ._layout import ParameterBlock
from ._model_base import BlockStructure, TorchInfluenceFunctionModel

__all__ = ["DirectInfluence"]


class DirectInfluence(TorchInfluenceFunctionModel):
    """Build ``H + λI`` explicitly and invert it.

    Exact up to floating point; memory ``O(p²)`` and time ``O(p)`` curvature
    products plus ``O(p³)`` for the inverse, so only for models with up to a
    few tens of thousands of parameters (or per-layer blocks of that size).
    Once fitted, factors are one matrix product per test chunk.

    Parameters
    ----------
    model : nn.Module
        The trained model (see :class:`TorchInfluenceFunctionModel`).
    loss : callable
        Mean-reduced loss ``loss(output, target) -> scalar``.
    regularization : float
        ``λ ≥ 0`` added to the diagonal. Use ``λ > 0`` when ``H`` may be
        singular (over-parameterised models, dead units). A regularised
        curvature whose condition number times the dtype's epsilon exceeds
        ``CONDITION_LIMIT`` (1e-2; cond > 8e4 in float32) is refused with an
        :class:`~dvl_dask.errors.InvalidModelError` naming a regularization
        that fits, rather than inverted into meaningless factors.
    second_order_mode : SecondOrderMode or str
        ``"hessian"`` (default) or ``"gauss_newton"``.
    block_structure : BlockMode, str or mapping
        ``"full"`` (default), ``"layer"`` for a block-diagonal approximation
        with one block per module, or ``{block_name: [parameter names]}``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import torch.nn.functional as F
    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.randn(20, 3), torch.randn(20, 1)
    >>> model = nn.Linear(3, 1)
    >>> infl = DirectInfluence(model, F.mse_loss, regularization=0.1).fit((x, y))
    >>> infl.influences(x[:2], y[:2], x, y).shape
    torch.Size([2, 20])
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        *,
        regularization: float = 0.0,
        second_order_mode: SecondOrderMode | str = SecondOrderMode.Hessian,
        block_structure: BlockStructure = BlockMode.Full,
    ) -> None:
        super().__init__(model, loss, regularization, second_order_mode, block_structure)
        self._inverses: list[torch.Tensor] = []

    def _fit(self, fm: FunctionalModel, loader: DataLoader) -> None:
        inverses = []
        for block in self._blocks:
            h = self._curvature_operator(fm, block, loader).dense()
            if not bool(torch.isfinite(h).all()):
                raise InvalidModelError(
                    f"{self._owner}: the curvature matrix of block {block.name!r} contains NaN or infinite "
                    "entries: the loss or its derivatives are not finite on the training data (NaN or huge "
                    "inputs, a loss that overflows, e.g. log(0)). No regularization fixes this. To fix, check "
                    "that the loss of the model is finite on every training batch."
                )
            eigenvalues, (inv, info) = side_by_side(lambda: torch.linalg.eigvalsh(h), lambda: torch.linalg.inv_ex(h))  # noqa: B023
            self._check_conditioning(
                eigenvalues,
                f"the regularised curvature matrix of block {block.name!r} ({block.n}x{block.n})",
            )
            if int(info) != 0 or not bool(torch.isfinite(inv).all()):
                fix = (
                    "pass a positive regularization (e.g. 1e-3 times the mean diagonal of the Hessian)"
                    if self.regularization == 0
                    else "increase the regularization"
                )
                raise InvalidModelError(
                    f"{self._owner}: the regularised curvature matrix of block {block.name!r} "
                    f"({block.n}x{block.n}) is singular with regularization={self.regularization}. To fix, "
                    f"{fix}."
                )
            inverses.append((inv + inv.T) / 2)
        self._inverses = inverses

    def _solve_block(self, i: int, block: ParameterBlock, grads: torch.Tensor) -> torch.Tensor:
        return grads @ self._inverses[i]

    @property
    def inverse_curvature(self) -> list[torch.Tensor]:
        """The inverted regularised curvature blocks, one per block (after :meth:`fit`)."""
        self._check_fitted("inverse_curvature")
        return list(self._inverses)
