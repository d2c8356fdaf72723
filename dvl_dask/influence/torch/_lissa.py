"""Influence with LiSSA, a stochastic Neumann-series estimate of ``(H + λI)⁻¹ b``."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...errors import ConvergenceWarning, InvalidModelError
from ...threads import intra_op_threads
from ...validation import check_positive_int, check_real
from .._mode import BlockMode, SecondOrderMode
from ._data import iter_batches, repeats_batches
from ._functional import FunctionalModel, LossFn
from ._layout import ParameterBlock
from ._model_base import BlockStructure, TorchInfluenceFunctionModel

__all__ = ["LissaInfluence"]

#: While ``‖I - (H_batch + λI)/s‖ ≤ 1`` the iterates obey ``‖h_t‖ ≤ (t + 1)‖b‖``; growing past
#: this multiple of that bound means the recursion diverges (geometric growth).
_DIVERGENCE_FACTOR = 100.0


def _cycle(loader: DataLoader, owner: str) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(position in the pass, x, y)`` of ``loader``'s batches forever, re-iterating it (and reshuffling, if it
    shuffles) at the end."""
    while True:
        for position, (x, y) in enumerate(iter_batches(loader, owner)):
            yield position, x, y


class LissaInfluence(TorchInfluenceFunctionModel):
    r"""Linear time Stochastic Second-order Algorithm (Agarwal et al., 2017).

    Iterates, for every right-hand side ``b`` at once and one training batch
    per iteration,

    .. math::

        h_0 = b, \qquad h_{t+1} = b + (1 - d)\, h_t - \frac{(H_{batch} + λI) h_t}{s},

    and returns ``h_T / s``. With ``d = 0`` and ``s`` larger than the largest
    eigenvalue of ``H + λI`` this converges to ``(H + λI)⁻¹ b`` (up to the noise
    of mini-batch Hessians); ``d > 0`` trades bias for stability.

    Parameters
    ----------
    model : nn.Module
        The trained model.
    loss : callable
        Mean-reduced loss.
    regularization : float
        ``λ ≥ 0`` added to the diagonal.
    maxiter : int
        Maximum number of iterations (batches; the loader is cycled).
    dampen : float
        ``d ∈ [0, 1)``.
    scale : float
        ``s > 0``; must exceed the largest eigenvalue of ``H + λI`` or the
        series diverges.
    rtol : float
        Stop when ``max_b ‖h_{t+1} - h_t‖ / ‖b‖ < rtol``: the step is the
        residual of the scaled, damped system ``((H + λI)/s + d·I) h = b`` on
        the current batch, so this is its relative residual.
    second_order_mode : SecondOrderMode or str
        ``"hessian"`` (default) or ``"gauss_newton"``.
    block_structure : BlockMode, str or mapping
        ``"full"`` (default), ``"layer"``, or ``{block_name: [parameter names]}``.
    warn_on_max_iteration : bool
        Warn with :class:`~dvl_dask.errors.ConvergenceWarning` when ``rtol``
        was not reached.

    Notes
    -----
    Accuracy: with full-batch Hessians, ``d = 0`` and ``T`` iterations the
    relative error is about ``(1 - λ_min/s)^T``; mini-batches add noise of
    the order of the batch-to-batch variation of ``H``. Raises
    :class:`~dvl_dask.errors.InvalidModelError` when the iterates become
    non-finite or explode, with advice on ``scale``.

    Threads: the recursion's own operations run on one torch intra-op
    thread: they are too small to share out, and on two intra-op threads two
    solves sharing the cores took 6.6-9.5x one alone, waiting at every
    kernel's barrier. Each iteration's product with its batch's curvature is
    shared out to the torch thread budget instead
    (:meth:`CurvatureOperator.batch_matmat` with ``threads``): Python threads
    with one intra-op thread each, on shares of the batch's samples
    (Gauss-Newton) or of the iterates' rows (Hessian). On the benchmarks' MLP
    this is faster alone than the recursion on two intra-op threads was, and
    two solves at once take 1.8x one alone.

    Jacobians: with ``second_order_mode="gauss_newton"``, a loader that
    yields the same batches in the same order on every pass (tensors, or a
    plain ``DataLoader`` over a ``TensorDataset`` that does not shuffle) and
    ``maxiter`` above its number of batches, each batch's per-sample
    Jacobians and output Hessians are computed in the first pass and kept
    while they fit in ``JACOBIAN_CACHE_BUDGET`` elements (``2**26``, as for
    :class:`CgInfluence`): every later iteration on that batch is matrix
    products only. The iterates are the same as without keeping, up to
    rounding.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        *,
        regularization: float = 0.0,
        maxiter: int = 1000,
        dampen: float = 0.0,
        scale: float = 10.0,
        rtol: float = 1e-4,
        second_order_mode: SecondOrderMode | str = SecondOrderMode.Hessian,
        block_structure: BlockStructure = BlockMode.Full,
        warn_on_max_iteration: bool = True,
    ) -> None:
        super().__init__(model, loss, regularization, second_order_mode, block_structure)
        owner = self._owner
        self.maxiter = check_positive_int(maxiter, "maxiter", owner)
        self.dampen = check_real(dampen, "dampen", owner, low=0.0, high=1.0, high_open=True)
        self.scale = check_real(scale, "scale", owner, low=0.0, low_open=True, finite=True)
        self.rtol = check_real(rtol, "rtol", owner, low=0.0, low_open=True, finite=True)
        self.warn_on_max_iteration = bool(warn_on_max_iteration)
        self._loader: DataLoader | None = None

    def _fit(self, fm: FunctionalModel, loader: DataLoader) -> None:
        self._loader = loader

    def _solve_block(self, _i: int, block: ParameterBlock, b: torch.Tensor) -> torch.Tensor:
        # One intra-op thread: each iteration's small operations are too narrow to share out; on two threads
        # their barriers collapse when the cores are shared (two solves at once took 6.6x one alone; see
        # benchmarks/README.md). The product with the batch's curvature is shared out to the caller's budget
        # instead, in Python threads with one intra-op thread each.
        budget = torch.get_num_threads()
        with intra_op_threads(1):
            return self._recursion(block, b, budget)

    def _recursion(self, block: ParameterBlock, b: torch.Tensor, threads: int) -> torch.Tensor:
        assert self._loader is not None
        # A loader that repeats its batches (a TensorDataset read in order) names them by position: the operator
        # keeps each batch's Gauss-Newton Jacobians the first time, so later cycles are matrix products only. Only
        # if there are later cycles: a batch seen once is cheaper as a vjp product when there are few rows.
        repeats = repeats_batches(self._loader) and self.maxiter > len(self._loader)
        op = self._curvature_operator(self._functional, block, self._loader, iterative=repeats)
        batches = _cycle(self._loader, self._owner)
        tiny = torch.finfo(b.dtype).tiny
        b_norms = torch.clamp(torch.linalg.vector_norm(b, dim=1), min=tiny)
        h = b.clone()
        change = float("inf")
        for it in range(1, self.maxiter + 1):
            position, x, y = next(batches)
            # h_new = b + (1 - d) h - (H + λI) h / s, as h + step: a few passes over the iterates, which on one
            # intra-op thread cost as much as the product when there are many right-hand sides.
            product = op.batch_matmat(h, x, y, threads=threads, batch=position if repeats else None)
            step = torch.sub(b, product, alpha=1 / self.scale)
            if self.dampen:
                step.sub_(h, alpha=self.dampen)
            h_new = h + step
            norms = torch.linalg.vector_norm(h_new, dim=1)
            # A row holding a NaN or an infinity has a NaN or infinite norm (so may a finite row too large to square).
            finite = bool(torch.isfinite(norms).all()) or bool(torch.isfinite(h_new).all())
            if not finite or bool((norms > _DIVERGENCE_FACTOR * (it + 1) * b_norms).any()):
                raise InvalidModelError(
                    f"{self._owner}: the LiSSA recursion diverged at iteration {it} in block {block.name!r} "
                    f"(iterates became {'non-finite' if not finite else 'huge'}). "
                    f"The scale ({self.scale}) must exceed the largest eigenvalue of H + λI, and H + λI must be "
                    "positive definite. To fix, increase scale (e.g. 10x), increase regularization or dampen, "
                    "or use second_order_mode='gauss_newton'."
                )
            change = float((torch.linalg.vector_norm(step, dim=1) / b_norms).max())
            h = h_new
            if change < self.rtol:
                break
        else:
            if self.warn_on_max_iteration:
                warnings.warn(
                    f"{self._owner}: LiSSA did not reach rtol={self.rtol} in block {block.name!r} after "
                    f"{self.maxiter} iterations (last relative residual {change:.2e}). To fix, raise maxiter, "
                    "lower scale (keeping it above the largest eigenvalue), or raise dampen.",
                    ConvergenceWarning,
                    stacklevel=4,
                )
        return h / self.scale
