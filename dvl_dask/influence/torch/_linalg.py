"""Matrix-free linear algebra on symmetric operators given as row products ``V ↦ V A``.

* :func:`batched_cg` -- conjugate gradient for many right-hand sides at once, one recurrence each.
* :func:`block_cg` -- block conjugate gradient: many right-hand sides sharing one Krylov space.
* :func:`batched_minres` -- MINRES for many right-hand sides at once, for symmetric indefinite operators.
* :func:`block_krylov_eigh` -- leading eigenpairs from a randomised block Krylov space (batched products).
* :func:`nystroem_sketch` -- randomised Nyström low-rank approximation of a PSD operator.
* :func:`safe_eigh` -- ``eigh`` that retries in float64 on the CPU.
* :func:`check_conditioning` -- refuse a regularised curvature too ill-conditioned for its dtype.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...errors import InvalidModelError

__all__ = [
    "CgInfo",
    "batched_cg",
    "batched_minres",
    "block_cg",
    "check_conditioning",
    "block_krylov_eigh",
    "krylov_eigh",
    "nystroem_from_products",
    "nystroem_sketch",
    "nystroem_test_matrix",
    "safe_eigh",
]

MatMat = Callable[[torch.Tensor], torch.Tensor]

#: Largest ``cond · eps(dtype)`` of a regularised curvature that is inverted: beyond it, rounding in
#: that dtype can move the solution by more than about this fraction (issue 25: DirectInfluence with
#: regularization=0 on a near-singular Hessian returned [-160.4, -1.49, 41.6] in float32 where float64
#: gives [156.7, 21.1, 70.0]).
CONDITION_LIMIT = 1e-2


@dataclass(frozen=True)
class CgInfo:
    """Outcome of :func:`batched_cg`."""

    iterations: int
    n_unconverged: int
    n_indefinite: int
    max_relative_residual: float
    #: Smallest Ritz value of ``A`` met (block CG only; NaN otherwise).
    min_ritz_value: float = float("nan")


def batched_cg(
    matmat: MatMat,
    b: torch.Tensor,
    *,
    precondition: MatMat | None = None,
    rtol: float,
    atol: float,
    maxiter: int,
) -> tuple[torch.Tensor, CgInfo]:
    """Solve ``X A = B`` row by row for symmetric positive definite ``A``.

    All rows run their own CG recurrence (own step sizes), but every
    iteration makes one call ``matmat(P)`` for all rows still active, so the
    expensive operator is applied to many vectors at once. A row stops when
    ``‖r‖ ≤ max(rtol·‖b‖, atol)``, or when it meets non-positive curvature
    ``pᵀAp ≤ 0`` (``A`` is not positive definite along ``p``; the row keeps its
    current iterate and is counted in ``n_indefinite``).
    """
    x = torch.zeros_like(b)
    r = b.clone()
    z = precondition(r) if precondition is not None else r
    p = z.clone()
    rz = (r * z).sum(dim=1)
    b_norm = torch.linalg.vector_norm(b, dim=1)
    tol = torch.clamp(rtol * b_norm, min=atol)
    active = b_norm > tol
    indefinite = torch.zeros_like(active)
    it = 0
    while it < maxiter and bool(active.any()):
        it += 1
        idx = active.nonzero().squeeze(1)
        p_a = p[idx]
        ap = matmat(p_a)
        pap = (p_a * ap).sum(dim=1)
        bad = pap <= 0
        if bool(bad.any()):
            indefinite[idx[bad]] = True
            active[idx[bad]] = False
            keep = ~bad
            idx, p_a, ap, pap = idx[keep], p_a[keep], ap[keep], pap[keep]
        alpha = rz[idx] / pap
        x[idx] += alpha[:, None] * p_a
        r_a = r[idx] - alpha[:, None] * ap
        r[idx] = r_a
        converged = torch.linalg.vector_norm(r_a, dim=1) <= tol[idx]
        z_a = precondition(r_a) if precondition is not None else r_a
        rz_new = (r_a * z_a).sum(dim=1)
        beta = rz_new / rz[idx]
        p[idx] = z_a + beta[:, None] * p_a
        rz[idx] = rz_new
        active[idx[converged]] = False
    rel = torch.linalg.vector_norm(r, dim=1) / torch.clamp(b_norm, min=torch.finfo(b.dtype).tiny)
    unconverged = active & ~indefinite
    info = CgInfo(
        iterations=it,
        n_unconverged=int(unconverged.sum()),
        n_indefinite=int(indefinite.sum()),
        max_relative_residual=float(rel.max()) if rel.numel() else 0.0,
    )
    return x, info


def block_cg(
    matmat: MatMat,
    b: torch.Tensor,
    *,
    precondition: MatMat | None = None,
    rtol: float,
    atol: float,
    maxiter: int,
    rank_tol: float | None = None,
    memory: int = 4,
) -> tuple[torch.Tensor, CgInfo]:
    """Solve ``X A = B`` for all rows at once with block conjugate gradient.

    O'Leary's block CG (1980) in the breakdown-free form of Ji & Li (2017):
    all right-hand sides share one Krylov space, which grows by a block of
    search directions per iteration (one ``matmat`` call on that block), and
    every row takes its Galerkin-optimal update from the whole space so far.
    With ``k`` right-hand sides the space grows up to ``k`` dimensions per
    iteration instead of one, which is what makes few iterations enough on
    ill-conditioned curvature matrices.

    Each new block of directions is orthonormalised with a rank-revealing
    SVD of its (row-normalised) rows: directions that are (numerically)
    linearly dependent -- on each other, or because the space already spans
    them -- are dropped, and rows that have converged
    (``‖r‖ ≤ max(rtol·‖b‖, atol)``) contribute no new directions (deflation).
    The block stays at most ``k`` wide and shrinks as rows converge. New
    directions are made A-conjugate to the last ``memory`` blocks explicitly
    (in exact arithmetic they already are; in floating point this keeps the
    convergence of full block CG), so memory is about ``(2·memory + 4)·k``
    vectors; when the stored blocks already span the residuals, the
    iteration restarts from them.

    Non-positive curvature (a Ritz value of ``A`` on the current block
    ``≤ 0``) is recorded in ``n_indefinite`` (all rows share the space, so
    it counts every row) and ``min_ritz_value``; the step then uses the
    pseudo-inverse of the projected matrix and the iteration continues.
    """
    dtype = b.dtype
    eps = torch.finfo(dtype).eps
    rank_tol = eps**0.5 if rank_tol is None else rank_tol
    x = torch.zeros_like(b)
    r = b.clone()
    b_norm = torch.linalg.vector_norm(b, dim=1)
    tol = torch.clamp(rtol * b_norm, min=atol)
    active = b_norm > tol
    indefinite = False
    min_ritz = float("inf")
    it = 0

    # Earlier blocks of directions P_j with their A P_j and (P_jᵀ A P_j)⁺, for re-conjugation.
    history: deque[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = deque(maxlen=max(1, memory))

    def directions(z: torch.Tensor) -> torch.Tensor:
        """Orthonormal rows spanning the part of ``z`` new to (and A-conjugate to) the stored blocks."""
        norms = torch.linalg.vector_norm(z, dim=1, keepdim=True)
        z = z[norms[:, 0] > 0] / norms[norms[:, 0] > 0]
        for p_j, q_j, inv_j in history:
            z = z - (inv_j @ (q_j @ z.T)).T @ p_j
        if z.shape[0] == 0:
            return z
        s, vh = _right_singular(z)
        return vh[s > rank_tol]

    def preconditioned(rows: torch.Tensor) -> torch.Tensor:
        return precondition(rows) if precondition is not None else rows

    p = directions(preconditioned(r[active]))
    while it < maxiter and p.shape[0] > 0:
        it += 1
        q = matmat(p)  # rows of (A Pᵀ)ᵀ
        ptq = p @ q.T
        ptq = (ptq + ptq.T) / 2
        w, v = torch.linalg.eigh(ptq)
        min_ritz = min(min_ritz, float(w[0]))
        indefinite = indefinite or float(w[0]) <= 0
        keep = w.abs() > eps * p.shape[0] * float(w.abs().max())
        # Pseudo-inverse of PᵀAP from its eigendecomposition (its inverse when it is definite).
        inv = (v[:, keep] / w[keep]) @ v[:, keep].T
        alpha = inv @ (p @ r.T)  # (s, k)
        x += alpha.T @ p
        r -= alpha.T @ q
        active = torch.linalg.vector_norm(r, dim=1) > tol
        if not bool(active.any()):
            break
        history.append((p, q, inv))
        z = preconditioned(r[active])
        p = directions(z)
        if p.shape[0] == 0:
            # The stored blocks span what is left of the residuals up to rounding: restart from them.
            history.clear()
            p = directions(z)
    rel = torch.linalg.vector_norm(r, dim=1) / torch.clamp(b_norm, min=torch.finfo(dtype).tiny)
    info = CgInfo(
        iterations=it,
        n_unconverged=int(active.sum()),
        n_indefinite=int(b.shape[0]) if indefinite else 0,
        max_relative_residual=float(rel.max()) if rel.numel() else 0.0,
        min_ritz_value=min_ritz if it else float("nan"),
    )
    return x, info


def batched_minres(
    matmat: MatMat,
    b: torch.Tensor,
    *,
    rtol: float,
    atol: float,
    maxiter: int,
) -> tuple[torch.Tensor, CgInfo]:
    """Solve ``X A = B`` row by row with MINRES, for symmetric ``A`` that may be indefinite.

    MINRES (Paige & Saunders, 1975) minimises ``‖b - A x‖`` over the Krylov
    space of each row, built by the Lanczos recurrence and solved with Givens
    rotations, so it needs ``A`` symmetric and nonsingular but not positive
    definite, where CG breaks down. Each row runs its own recurrence; every
    iteration makes one ``matmat`` call on the rows still active. A row stops
    when its residual norm (the recurrence's estimate ``φ̄``, exact in exact
    arithmetic) is ``≤ max(rtol·‖b‖, atol)``. The reported
    ``max_relative_residual`` is recomputed from one final product.
    """
    n = b.shape[0]
    tiny = torch.finfo(b.dtype).tiny
    x = torch.zeros_like(b)
    b_norm = torch.linalg.vector_norm(b, dim=1)
    tol = torch.clamp(rtol * b_norm, min=atol)
    zeros = torch.zeros(n, dtype=b.dtype, device=b.device)
    # Lanczos vectors r1 (previous), r2 (current, unnormalised) and the two previous search directions.
    r1, r2, y = b.clone(), b.clone(), b.clone()
    w, w2 = torch.zeros_like(b), torch.zeros_like(b)
    beta, oldb = b_norm.clone(), zeros.clone()
    dbar, epsln, phibar = zeros.clone(), zeros.clone(), b_norm.clone()
    cs, sn = -torch.ones_like(zeros), zeros.clone()
    active = b_norm > tol
    it = 0
    while it < maxiter and bool(active.any()):
        it += 1
        i = active.nonzero().squeeze(1)
        v = y[i] / beta[i, None]
        yi = matmat(v)
        if it >= 2:
            yi = yi - (beta[i] / oldb[i])[:, None] * r1[i]
        alfa = (v * yi).sum(dim=1)
        yi = yi - (alfa / beta[i])[:, None] * r2[i]
        r1[i], r2[i], y[i] = r2[i], yi, yi
        oldb[i] = beta[i]
        beta[i] = torch.linalg.vector_norm(yi, dim=1)
        oldeps = epsln[i]
        delta = cs[i] * dbar[i] + sn[i] * alfa
        gbar = sn[i] * dbar[i] - cs[i] * alfa
        epsln[i] = sn[i] * beta[i]
        dbar[i] = -cs[i] * beta[i]
        gamma = torch.clamp(torch.sqrt(gbar**2 + beta[i] ** 2), min=tiny)
        cs[i], sn[i] = gbar / gamma, beta[i] / gamma
        phi = cs[i] * phibar[i]
        phibar[i] = sn[i] * phibar[i]
        w1 = w2[i]
        w2[i] = w[i]
        w[i] = (v - oldeps[:, None] * w1 - delta[:, None] * w2[i]) / gamma[:, None]
        x[i] += phi[:, None] * w[i]
        done = (phibar[i] <= tol[i]) | (beta[i] <= tiny)  # converged, or an exact invariant subspace
        active[i[done]] = False
    rel = torch.zeros_like(b_norm)
    if n:
        residual = torch.linalg.vector_norm(b - matmat(x), dim=1)
        rel = residual / torch.clamp(b_norm, min=tiny)
        active = residual > tol * (1 + 1e-3)  # the recurrence's estimate, checked against a true residual
    info = CgInfo(
        iterations=it,
        n_unconverged=int(active.sum()),
        n_indefinite=0,
        max_relative_residual=float(rel.max()) if rel.numel() else 0.0,
    )
    return x, info


def block_krylov_eigh(
    matmat: MatMat,
    dim: int,
    krylov_dim: int,
    block_size: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator,
    tol: float,
    rank: int | None = None,
    ritz_rtol: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of a symmetric operator from a randomised block Krylov space (block Lanczos).

    The space ``span{Ω, AΩ, A²Ω, ...}`` of a random ``block_size``-wide start
    ``Ω`` is built block by block, each new block orthonormalised against all
    earlier ones (two passes of block Gram-Schmidt, then a rank-revealing SVD;
    directions lost to an invariant subspace are replaced by random ones), up
    to ``krylov_dim`` vectors. Every block costs **one** ``matmat`` call on
    ``block_size`` rows, so the operator sees ``krylov_dim / block_size``
    batched calls instead of ``krylov_dim`` single-vector ones. Rayleigh-Ritz
    on the whole space (``Qᵀ A Q``, from the products already made) gives the
    eigenpairs; ``block_size=1`` is Lanczos with full re-orthogonalisation and
    ``krylov_dim == dim`` the exact spectrum. Returns ``(eigenvalues,
    eigenvectors as rows)`` sorted by decreasing magnitude (Musco & Musco,
    2015; Halko, Martinsson & Tropp, 2011).

    With ``rank`` and ``ritz_rtol`` the space keeps growing past ``krylov_dim``
    until the ``rank`` Ritz pairs of largest magnitude have converged: every
    residual ``‖A yᵢ - θᵢ yᵢ‖ ≤ ritz_rtol·|θᵢ| + 100·eps·|θ₁|`` (computed from
    the products already made, no extra ``matmat``), or the space is the whole
    of ``R^dim`` (exact). Use :func:`krylov_eigh` to also get the size reached.
    """
    evals, evecs, _ = krylov_eigh(
        matmat,
        dim,
        krylov_dim,
        block_size,
        dtype=dtype,
        device=device,
        generator=generator,
        tol=tol,
        rank=rank,
        ritz_rtol=ritz_rtol,
    )
    return evals, evecs


def krylov_eigh(
    matmat: MatMat,
    dim: int,
    krylov_dim: int,
    block_size: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator,
    tol: float,
    rank: int | None = None,
    ritz_rtol: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """:func:`block_krylov_eigh`, returning ``(eigenvalues, eigenvectors as rows, Krylov size used)``."""
    krylov_dim = min(krylov_dim, dim)
    block_size = max(1, min(block_size, krylov_dim))
    basis = torch.zeros((krylov_dim, dim), dtype=dtype, device=device)
    products = torch.zeros((krylov_dim, dim), dtype=dtype, device=device)
    block = _orthonormal_rows(basis[:0], block_size, dim, dtype, device, generator)
    filled, scale, target = 0, 0.0, krylov_dim
    while True:
        block = block[: target - filled]
        s = block.shape[0]
        w = matmat(block)
        basis[filled : filled + s], products[filled : filled + s] = block, w
        filled += s
        if filled >= target:
            evals, coeffs = _ritz(basis, products)
            if rank is None or ritz_rtol is None or filled >= dim:
                break
            if _converged(evals, coeffs, basis, products, rank, ritz_rtol):
                break
            # Not converged: grow the space by a quarter (at least one block) and test again.
            target = min(dim, filled + max(block_size, filled // 4))
            more = torch.zeros((target - filled, dim), dtype=dtype, device=device)
            basis, products = torch.cat([basis, more]), torch.cat([products, more])
        scale = max(scale, float(torch.linalg.matrix_norm(w, ord=2)))
        q = basis[:filled]
        for _ in range(2):
            w = w - (w @ q.T) @ q
        sv, vh = _right_singular(w)
        block = vh[sv > tol * max(scale, 1.0)]
        want = min(block_size, target - filled)
        if block.shape[0] < want:  # (nearly) invariant subspace: continue with random directions
            extra = _orthonormal_rows(torch.cat([q, block]), want - block.shape[0], dim, dtype, device, generator)
            block = torch.cat([block, extra])
    return evals, coeffs.T @ basis, filled


def _right_singular(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values and right singular vectors (as rows) of a wide ``z`` ``(k, p)``, ``k <= p``.

    Computed as the left singular vectors of the tall ``zᵀ``: LAPACK's SVD of a
    wide matrix took 2.4-2.8x as long as of its transpose (100 x 1,761: 9.2 ms
    against 3.9; 500 x 5,569: 596 ms against 230, one thread).
    """
    u, s, _ = torch.linalg.svd(z.mT, full_matrices=False)
    return s, u.mT


def _ritz(basis: torch.Tensor, products: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ritz values (by decreasing magnitude) and their coefficient vectors (columns) in ``basis``."""
    t = basis @ products.T
    evals, coeffs = torch.linalg.eigh((t + t.T) / 2)
    order = torch.argsort(evals.abs(), descending=True)
    return evals[order], coeffs[:, order]


def _converged(
    evals: torch.Tensor, coeffs: torch.Tensor, basis: torch.Tensor, products: torch.Tensor, rank: int, rtol: float
) -> bool:
    """Whether the ``rank`` leading Ritz pairs have residuals within ``rtol·|θᵢ| + 100·eps·|θ₁|``."""
    k = min(rank, evals.shape[0])
    c = coeffs[:, :k]
    residual = torch.linalg.vector_norm(c.T @ products - evals[:k, None] * (c.T @ basis), dim=1)
    floor = 100 * torch.finfo(evals.dtype).eps * float(evals[0].abs()) if k else 0.0
    return bool((residual <= rtol * evals[:k].abs() + floor).all())


def _orthonormal_rows(
    basis: torch.Tensor, k: int, dim: int, dtype: torch.dtype, device: torch.device, generator: torch.Generator
) -> torch.Tensor:
    """``k`` random orthonormal rows, orthogonal to the rows of ``basis``."""
    v = torch.randn((k, dim), generator=generator, dtype=dtype, device="cpu").to(device)
    for _ in range(2):
        if basis.shape[0]:
            v = v - (v @ basis.T) @ basis
        v = torch.linalg.qr(v.T).Q.T
    return v


def nystroem_sketch(
    matmat: MatMat,
    dim: int,
    rank: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator,
    owner: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomised Nyström approximation ``A ≈ Uᵀ diag(λ) U`` of a PSD operator.

    ``rank`` products with a random orthonormal test matrix ``Ω``, a small
    shift ``ν`` for stability, a Cholesky factor of ``Ω A Ωᵀ + νΩΩᵀ`` and an
    SVD (Tropp et al., 2017). Returns ``(λ ≥ 0 decreasing, U with orthonormal
    rows)``; with ``rank == dim`` the approximation is exact up to ``ν``.
    """
    omega = nystroem_test_matrix(dim, rank, dtype=dtype, device=device, generator=generator)
    return nystroem_from_products(omega, matmat(omega), owner)


def nystroem_test_matrix(
    dim: int, rank: int, *, dtype: torch.dtype, device: torch.device, generator: torch.Generator
) -> torch.Tensor:
    """A random ``(rank, dim)`` test matrix ``Ω`` with orthonormal rows (drawn on the CPU, then moved)."""
    omega = torch.randn((dim, rank), generator=generator, dtype=dtype, device="cpu").to(device)
    return torch.linalg.qr(omega).Q.T


def nystroem_from_products(omega: torch.Tensor, y: torch.Tensor, owner: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The Nyström approximation of a PSD ``A`` from ``Ω`` and the rows ``Y = Ω A`` (see :func:`nystroem_sketch`)."""
    dim = omega.shape[1]
    dtype = omega.dtype
    nu = torch.finfo(dtype).eps * dim**0.5 * torch.linalg.matrix_norm(y)
    y_nu = y + nu * omega
    core = omega @ y_nu.T
    chol, info = torch.linalg.cholesky_ex((core + core.T) / 2)
    if int(info) != 0:
        raise InvalidModelError(
            f"{owner}: the Nyström sketch needs a positive semi-definite curvature matrix, but ΩᵀCΩ is not "
            "positive definite (the curvature has negative eigenvalues). To fix, use "
            "second_order_mode='gauss_newton', increase regularization, or use a method that does not assume "
            "PSD (ArnoldiInfluence)."
        )
    b = torch.linalg.solve_triangular(chol, y_nu, upper=False)  # (rank, dim) = C⁻¹ Y_ν
    u, s, _ = torch.linalg.svd(b.T, full_matrices=False)
    evals = torch.clamp(s**2 - nu, min=0.0)
    return evals, u.T


def safe_eigh(m: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` of a symmetric matrix, retried in float64 on the CPU on failure."""
    m = (m + m.T) / 2
    try:
        return torch.linalg.eigh(m)
    except RuntimeError as first:  # includes LinAlgError and out-of-memory
        try:
            evals, evecs = torch.linalg.eigh(m.detach().to("cpu", torch.float64))
        except RuntimeError as exc:
            raise InvalidModelError(
                f"The eigendecomposition of {what} (shape {tuple(m.shape)}) failed on {m.device} ({first}) and "
                f"in float64 on the CPU ({exc}). To fix, increase the regularization or freeze the layer."
            ) from exc
        return evals.to(m.device, m.dtype), evecs.to(m.device, m.dtype)


def check_conditioning(
    evals: torch.Tensor,
    dtype: torch.dtype,
    *,
    owner: str,
    what: str,
    regularization: float,
    suggested: float | None = None,
) -> None:
    """Refuse to invert a curvature whose eigenvalues ``evals`` (regularisation included) are too ill-conditioned.

    The condition number ``max|λᵢ| / min|λᵢ|`` times the machine epsilon of
    ``dtype`` bounds the relative error rounding can cause in a solve. Above
    ``CONDITION_LIMIT`` the factors may be meaningless (wrong signs), so an
    :class:`InvalidModelError` names the condition number and the fix: a
    regularization that brings it within the limit, or float64. The
    regularization named is ``10·max|λᵢ|·eps/CONDITION_LIMIT`` (right where
    the regularization shifts fixed eigenvalues), or ``suggested`` where the
    caller knows better (an approximation whose eigenvalues move otherwise).
    """
    a = evals.detach().abs().to(torch.float64)
    if a.numel() == 0:
        return
    largest, smallest = float(a.max()), float(a.min())
    eps = torch.finfo(dtype).eps
    cond = largest / smallest if smallest > 0 else float("inf")
    if cond * eps <= CONDITION_LIMIT:
        return
    if suggested is None:
        suggested = 10 * largest * eps / CONDITION_LIMIT
        example = f" (e.g. 1e-3 times the mean |eigenvalue|, {max(1e-3 * float(a.mean()), suggested):.1e})"
    else:
        example = ""
    name = str(dtype).removeprefix("torch.")
    negative = float(evals.min()) < 0
    wider = f", and above the most negative eigenvalue ({float(evals.min()):.3g})" if negative else ""
    precision = (
        f", or compute in float64 (model.double() and float64 data), which accepts condition numbers up to "
        f"{CONDITION_LIMIT / torch.finfo(torch.float64).eps:.1e}"
        if dtype != torch.float64
        else ""
    )
    if smallest == 0:
        state = "singular"
    elif cond * eps >= 1:
        state = f"numerically singular in {name}"
    else:
        state = f"too ill-conditioned to invert in {name}"
    raise InvalidModelError(
        f"{owner}: {what} is {state}: condition number {cond:.2e} with regularization={regularization} "
        f"(largest |eigenvalue| {largest:.3g}, smallest {smallest:.3g}), so rounding in {name} alone can change "
        f"the influences by more than {CONDITION_LIMIT:.0%} (cond x eps = {cond * eps:.1e} > {CONDITION_LIMIT}). "
        f"To fix, pass a positive regularization of at least {suggested:.1e}{wider}{example}{precision}."
    )
