"""Influence with a low-rank eigen-approximation of the curvature, found by block Lanczos iteration."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...errors import InvalidParameterError
from ...threads import intra_op_threads
from ...validation import SeedLike, check_positive_int, check_real
from .._mode import BlockMode, SecondOrderMode
from ._functional import FunctionalModel, LossFn
from ._layout import ParameterBlock
from ._linalg import krylov_eigh
from ._model_base import BlockStructure, TorchInfluenceFunctionModel
from ._preconditioners import torch_generator

__all__ = ["DEFAULT_BLOCK_SIZE", "DEFAULT_RITZ_RTOL", "ArnoldiInfluence"]

#: Default number of Krylov vectors per batched curvature product of :class:`ArnoldiInfluence`.
DEFAULT_BLOCK_SIZE = 20
#: Default relative residual of the kept Ritz pairs of :class:`ArnoldiInfluence`.
DEFAULT_RITZ_RTOL = 1e-6


class ArnoldiInfluence(TorchInfluenceFunctionModel, aliases={"rank_estimate": "rank"}):
    r"""Project onto the ``rank`` leading eigenvectors of the curvature (Schioppa et al., 2022).

    At fit time a block Lanczos iteration (the symmetric case of Arnoldi, on a
    randomised block Krylov space with full re-orthogonalisation) makes
    curvature-vector products per block, ``block_size`` of them per batched
    call (one pass over the training data), and keeps the ``rank`` eigenpairs
    ``(λᵢ, vᵢ)`` of largest magnitude. The Krylov space starts at
    ``krylov_dimension`` vectors and grows (by a quarter at a time) until
    every kept Ritz pair has converged, ``‖H vᵢ - λᵢ vᵢ‖ ≤ ritz_rtol·|λᵢ|``
    (plus ``100·eps·|λ₁|`` for rounding), or spans all parameters (then the
    eigenpairs are exact): the result is the rank-``rank`` truncation by
    largest ``|λᵢ|``, not an approximation of it that depends on the Krylov
    size. The size reached is :attr:`krylov_dimensions`. On an indefinite
    spectrum with many eigenvalues near the cut (a trained MLP's Hessian)
    this can take most of ``p`` products, i.e. about the cost of
    :class:`DirectInfluence` for that block. With the Gauss–Newton
    curvature the per-sample output Jacobians of the first pass are kept for
    the later products where they fit (``JACOBIAN_CACHE_BUDGET``, as for
    :class:`CgInfluence`): the data is read once per block. Then

    .. math::

        H^{-1} g \approx \sum_{i \le rank} \frac{\langle v_i, g \rangle}{λ_i + λ} v_i,

    where ``λ`` is the regularisation. Components of ``g`` outside the
    leading eigenspace are dropped. With ``rank`` equal to the number of
    parameters the result is exact. The Hessian need not be positive
    definite, but ``λᵢ + λ`` must not vanish.

    Parameters
    ----------
    model : nn.Module
        The trained model.
    loss : callable
        Mean-reduced loss.
    rank : int
        Number of eigenpairs kept per block (default 10); at most the number of
        trainable parameters (clipped to the size of smaller blocks).
    regularization : float
        ``λ ≥ 0`` added to every kept eigenvalue.
    krylov_dimension : int or None
        Initial Lanczos steps; at least ``rank``. Default ``min(block size, max(2·rank, rank + 20))``.
    ritz_rtol : float or None
        Relative residual every kept Ritz pair must reach (default
        ``DEFAULT_RITZ_RTOL`` = 1e-6); the eigenvector error is about the
        residual divided by the gap to the rest of the spectrum. None stops
        at ``krylov_dimension`` whatever the residuals (the behaviour before
        issue 30: fast, but not the rank-``rank`` truncation).
    tol : float
        Relative size of a Lanczos residual treated as zero (invariant subspace; restart).
    seed : int, SeedSequence or None
        Seed of the random starting block.
    block_size : int or None
        Krylov vectors per batched curvature product (default
        ``DEFAULT_BLOCK_SIZE`` = 20). Larger blocks mean fewer passes over the
        data (faster) but a shallower Krylov space for the same
        ``krylov_dimension`` (less accurate eigenpairs below full rank);
        ``block_size=1`` is classical Lanczos. At full rank every choice is exact.
    second_order_mode : SecondOrderMode or str
        ``"hessian"`` (default) or ``"gauss_newton"``.
    block_structure : BlockMode, str or mapping
        ``"full"`` (default), ``"layer"``, or ``{block_name: [parameter names]}``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        rank: int = 10,
        *,
        regularization: float = 0.0,
        krylov_dimension: int | None = None,
        tol: float = 1e-10,
        ritz_rtol: float | None = DEFAULT_RITZ_RTOL,
        seed: SeedLike = 0,
        block_size: int | None = None,
        second_order_mode: SecondOrderMode | str = SecondOrderMode.Hessian,
        block_structure: BlockStructure = BlockMode.Full,
    ) -> None:
        super().__init__(model, loss, regularization, second_order_mode, block_structure)
        owner = self._owner
        self.rank = self._check_rank(rank)
        if krylov_dimension is not None:
            krylov_dimension = check_positive_int(krylov_dimension, "krylov_dimension", owner)
            if not self.rank <= krylov_dimension <= self.n_parameters:
                raise InvalidParameterError(
                    f"The 'krylov_dimension' parameter of {owner} must lie between rank={self.rank} and the number "
                    f"of parameters {self.n_parameters}. Got {krylov_dimension} instead."
                )
        self.krylov_dimension = krylov_dimension
        self.tol = check_real(tol, "tol", owner, low=0.0, finite=True)
        self.ritz_rtol = None if ritz_rtol is None else check_real(ritz_rtol, "ritz_rtol", owner, low=0.0, finite=True)
        self.seed = seed
        self.block_size = None if block_size is None else check_positive_int(block_size, "block_size", owner)
        self._eigen: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._krylov_sizes: list[int] = []

    def _fit(self, fm: FunctionalModel, loader: DataLoader) -> None:
        gen = torch_generator(self.seed, self._owner)
        eigen, sizes = [], []
        for block in self._blocks:
            op = self._curvature_operator(fm, block, loader, regularization=0.0, iterative=True)
            rank = min(self.rank, block.n)
            krylov = self.krylov_dimension or max(2 * rank, rank + 20)
            krylov = min(max(krylov, rank), block.n)
            width = self.block_size or DEFAULT_BLOCK_SIZE
            budget = torch.get_num_threads()

            def matmat(v: torch.Tensor, op: Any = op, budget: int = budget) -> torch.Tensor:
                with intra_op_threads(budget):  # the products share out their batches (CurvatureOperator)
                    return op.matmat(v)

            with intra_op_threads(1):  # the Krylov algebra: small operations, one thread (no barriers)
                evals, evecs, size = krylov_eigh(
                    matmat,
                    block.n,
                    krylov,
                    width,
                    dtype=self.dtype,
                    device=self.device,
                    generator=gen,
                    tol=self.tol,
                    rank=rank,
                    ritz_rtol=self.ritz_rtol,
                )
            sizes.append(size)
            evals, evecs = evals[:rank] + self.regularization, evecs[:rank]
            self._check_conditioning(
                evals, f"the regularised curvature on the {rank} kept eigenvectors of block {block.name!r}"
            )
            eigen.append((evals, evecs))
        self._eigen = eigen
        self._krylov_sizes = sizes

    def _solve_block(self, i: int, block: ParameterBlock, grads: torch.Tensor) -> torch.Tensor:
        evals, evecs = self._eigen[i]
        return ((grads @ evecs.T) / evals) @ evecs

    @property
    def eigenvalues(self) -> list[torch.Tensor]:
        """Kept eigenvalues per block, regularisation included (after :meth:`fit`)."""
        self._check_fitted("eigenvalues")
        return [e for e, _ in self._eigen]

    @property
    def krylov_dimensions(self) -> list[int]:
        """Size of the Krylov space of each block's eigenpairs (after :meth:`fit`); the block's size means exact."""
        self._check_fitted("krylov_dimensions")
        return list(self._krylov_sizes)
