"""Influence by solving ``(H + λI) f = ∇θℓ`` with batched conjugate gradient."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...errors import ConvergenceWarning, InvalidParameterError
from ...validation import check_positive_int, check_real, keyword_aliases
from .._mode import BlockMode, SecondOrderMode
from ._curvature import CurvatureOperator
from ._functional import FunctionalModel, LossFn
from ._layout import ParameterBlock
from ._linalg import batched_cg
from ._model_base import BlockStructure, TorchInfluenceFunctionModel
from ._preconditioners import JacobiPreconditioner, NystroemPreconditioner, Preconditioner

__all__ = ["CgInfluence"]


class CgInfluence(TorchInfluenceFunctionModel):
    """Conjugate gradient on curvature-vector products, all right-hand sides at once.

    Nothing is inverted at fit time (beyond an optional preconditioner): each
    call to :meth:`influence_factors` runs CG for all its samples together, so
    each iteration is a single pass over the training data with a
    vectorised product for every still-unconverged right-hand side.

    Parameters
    ----------
    model : nn.Module
        The trained model.
    loss : callable
        Mean-reduced loss ``loss(output, target) -> scalar``.
    regularization : float
        ``λ ≥ 0`` added to the diagonal. CG needs ``H + λI`` positive definite:
        for non-convex models use ``λ > 0`` and/or Gauss–Newton.
    rtol, atol : float
        A right-hand side ``b`` has converged when ``‖r‖ ≤ max(rtol·‖b‖, atol)``.
    maxiter : int or None
        Maximum number of iterations; None means 10 times the block size (as
        in pyDVL and scipy: exact arithmetic needs the block size, rounding
        on ill-conditioned curvature more). CG stops earlier once converged.
    preconditioner : {"jacobi", "nystroem"}, Preconditioner or None
        ``"jacobi"`` is :class:`JacobiPreconditioner()`, ``"nystroem"`` is
        :class:`NystroemPreconditioner()`; instances allow setting their rank
        or sample count.
    second_order_mode : SecondOrderMode or str
        ``"hessian"`` (default) or ``"gauss_newton"``.
    block_structure : BlockMode, str or mapping
        ``"full"`` (default), ``"layer"``, or ``{block_name: [parameter names]}``.
    warn_on_max_iteration : bool
        Issue a :class:`~dvl_dask.errors.ConvergenceWarning` when some
        right-hand sides did not converge (default True).

    Notes
    -----
    The training data loader is kept after :meth:`fit`: every factor
    computation iterates over it. Non-positive curvature met along a search
    direction stops that right-hand side and triggers a warning.
    """

    @keyword_aliases(hessian_regularization="regularization", pre_conditioner="preconditioner")
    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        *,
        regularization: float = 0.0,
        rtol: float = 1e-7,
        atol: float = 1e-10,
        maxiter: int | None = None,
        preconditioner: str | Preconditioner | None = None,
        second_order_mode: SecondOrderMode | str = SecondOrderMode.Hessian,
        block_structure: BlockStructure = BlockMode.Full,
        warn_on_max_iteration: bool = True,
    ) -> None:
        super().__init__(model, loss)
        owner = self._owner
        self.regularization = self._check_regularization(regularization, positive=False)
        self.rtol = check_real(rtol, "rtol", owner, low=0.0, finite=True)
        self.atol = check_real(atol, "atol", owner, low=0.0, finite=True)
        if self.rtol == 0 and self.atol == 0:
            raise InvalidParameterError(
                f"{owner} needs rtol > 0 or atol > 0 to decide convergence. Got rtol=0 and atol=0."
            )
        self.maxiter = None if maxiter is None else check_positive_int(maxiter, "maxiter", owner)
        self.preconditioner = _as_preconditioner(preconditioner, owner)
        self.second_order_mode = SecondOrderMode.parse(second_order_mode)
        self.warn_on_max_iteration = bool(warn_on_max_iteration)
        self._blocks = self._resolve_blocks(block_structure)
        self._loader: DataLoader | None = None
        self._preconditioners: list[Preconditioner | None] = []

    def _operator(self, fm: FunctionalModel, i: int, loader: DataLoader) -> CurvatureOperator:
        return CurvatureOperator(fm, self._blocks[i], loader, self.second_order_mode, self.regularization, self._owner)

    def _fit(self, fm: FunctionalModel, loader: DataLoader) -> None:
        self._preconditioners = [
            None if self.preconditioner is None else self.preconditioner.fitted(self._operator(fm, i, loader))
            for i in range(len(self._blocks))
        ]
        self._loader = loader

    def _solve(self, grads: torch.Tensor) -> torch.Tensor:
        return self._per_block(grads, self._blocks, self._solve_block)

    def _solve_block(self, i: int, block: ParameterBlock, b: torch.Tensor) -> torch.Tensor:
        assert self._loader is not None
        op = self._operator(self._functional, i, self._loader)
        pre = self._preconditioners[i]
        x, info = batched_cg(
            op.matmat,
            b,
            precondition=None if pre is None else pre.solve,
            rtol=self.rtol,
            atol=self.atol,
            maxiter=self.maxiter if self.maxiter is not None else 10 * op.dim,
        )
        name = block.name
        if info.n_indefinite:
            warnings.warn(
                f"{self._owner}: CG met non-positive curvature for {info.n_indefinite} of {b.shape[0]} "
                f"right-hand sides in block {name!r}; H + λI is not positive definite there and those factors "
                "are inaccurate. To fix, increase regularization or use second_order_mode='gauss_newton'.",
                ConvergenceWarning,
                stacklevel=4,
            )
        if info.n_unconverged and self.warn_on_max_iteration:
            warnings.warn(
                f"{self._owner}: CG did not converge for {info.n_unconverged} of {b.shape[0]} right-hand sides "
                f"in block {name!r} after {info.iterations} iterations (largest relative residual "
                f"{info.max_relative_residual:.2e}, rtol={self.rtol}). To fix, raise maxiter, use a "
                "preconditioner ('jacobi' or 'nystroem'), or increase regularization.",
                ConvergenceWarning,
                stacklevel=4,
            )
        return x


def _as_preconditioner(value: str | Preconditioner | None, owner: str) -> Preconditioner | None:
    if value is None or isinstance(value, Preconditioner):
        return value
    if isinstance(value, str):
        name = value.strip().lower().replace("ö", "oe")
        if name == "jacobi":
            return JacobiPreconditioner()
        if name in ("nystroem", "nystrom"):
            return NystroemPreconditioner()
    raise InvalidParameterError(
        f"The 'preconditioner' parameter of {owner} must be 'jacobi', 'nystroem', a Preconditioner instance or "
        f"None. Got {value!r} instead."
    )
