"""Preconditioners for :class:`~dvl_dask.influence.torch.CgInfluence`.

A preconditioner is a small configuration object. ``fitted(operator)``
returns a copy that approximates ``(C + λI)⁻¹`` for one curvature block, and
``solve(r)`` applies that approximation to the rows of ``r``.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Self

import numpy as np
import torch

from ...validation import SeedLike, as_seed_sequence, check_positive_int
from ._curvature import CurvatureOperator
from ._linalg import nystroem_sketch

__all__ = ["JacobiPreconditioner", "NystroemPreconditioner", "Preconditioner", "torch_generator"]


def torch_generator(seed: SeedLike, owner: str) -> torch.Generator:
    """A CPU generator seeded from ``seed`` (int, SeedSequence or None for fresh entropy)."""
    state = as_seed_sequence(seed, "seed", owner).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device="cpu").manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


class Preconditioner(ABC):
    """Approximate inverse of one regularised curvature block, used to speed up CG."""

    def fitted(self, op: CurvatureOperator) -> Self:
        """A copy of this preconditioner fitted to ``op``."""
        new = copy.copy(self)
        new._fit(op)
        return new

    @abstractmethod
    def _fit(self, op: CurvatureOperator) -> None: ...

    @abstractmethod
    def solve(self, r: torch.Tensor) -> torch.Tensor:
        """Apply the approximate inverse to the rows of ``r``."""


class JacobiPreconditioner(Preconditioner):
    """Divide by an estimate of the diagonal of ``C + λI``.

    The diagonal is estimated with Hutchinson's method,
    ``diag(C) ≈ mean_s vₛ ⊙ (C vₛ)`` for Rademacher vectors ``vₛ``, at the
    cost of ``num_samples_estimate`` curvature products (one pass over the
    data). Estimates are clipped to a small positive value.

    Parameters
    ----------
    num_samples_estimate : int
        Number of random vectors; more gives a better diagonal.
    seed : int, SeedSequence or None
        Seed of the random vectors.
    """

    def __init__(self, num_samples_estimate: int = 4, seed: SeedLike = 0) -> None:
        self.num_samples_estimate = check_positive_int(
            num_samples_estimate, "num_samples_estimate", "JacobiPreconditioner"
        )
        self.seed = seed
        self._diagonal: torch.Tensor | None = None

    def _fit(self, op: CurvatureOperator) -> None:
        gen = torch_generator(self.seed, "JacobiPreconditioner")
        ref = next(iter(op.fm.params.values()))
        v = torch.randint(0, 2, (self.num_samples_estimate, op.dim), generator=gen).to(ref.device, ref.dtype)
        v = 2 * v - 1
        diag = (v * op.matmat(v)).mean(dim=0)
        floor = max(op.regularization, 1e-6 * float(diag.abs().max()), torch.finfo(ref.dtype).tiny)
        self._diagonal = torch.clamp(diag, min=floor)

    def solve(self, r: torch.Tensor) -> torch.Tensor:
        assert self._diagonal is not None, "fit the preconditioner first"
        return r / self._diagonal


class NystroemPreconditioner(Preconditioner):
    """Randomised Nyström preconditioner (Frangella, Tropp & Udell, 2023).

    A rank-``r`` Nyström sketch ``Uᵀ diag(Λ) U`` of the regularised block
    ``C + λI`` gives ``P⁻¹ = Λᵣ Uᵀ Λ⁻¹ U + (I - UᵀU)``: the sketched directions
    are scaled down to the ``r``-th eigenvalue, the others are left alone. It
    costs ``rank`` curvature products (one pass over the data) and needs
    ``C + λI`` positive definite, as CG itself does.

    Parameters
    ----------
    rank : int
        Rank of the sketch (clipped to the size of each block).
    seed : int, SeedSequence or None
        Seed of the random test matrix.
    """

    def __init__(self, rank: int = 10, seed: SeedLike = 0) -> None:
        self.rank = check_positive_int(rank, "rank", "NystroemPreconditioner")
        self.seed = seed
        self._u: torch.Tensor | None = None
        self._scale: torch.Tensor | None = None

    def _fit(self, op: CurvatureOperator) -> None:
        ref = next(iter(op.fm.params.values()))
        evals, u = nystroem_sketch(
            op.matmat,
            op.dim,
            min(self.rank, op.dim),
            dtype=ref.dtype,
            device=ref.device,
            generator=torch_generator(self.seed, "NystroemPreconditioner"),
            owner="NystroemPreconditioner",
        )
        tiny = torch.finfo(ref.dtype).eps * max(float(evals.max()), 1.0)
        evals = torch.clamp(evals, min=tiny)
        self._u = u
        self._scale = evals[-1] / evals

    def solve(self, r: torch.Tensor) -> torch.Tensor:
        assert self._u is not None and self._scale is not None, "fit the preconditioner first"
        c = r @ self._u.T
        return r + ((c * self._scale) - c) @ self._u
