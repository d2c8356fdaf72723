"""Block Lanczos (randomised block Krylov) eigensolver of ArnoldiInfluence, against dense eigh."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dvl_dask.influence.torch._linalg import block_krylov_eigh  # noqa: E402

pytestmark = pytest.mark.torch


def _operator(p=90, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64)).Q
    f64 = torch.float64
    ev = torch.cat([torch.logspace(2, -3, p - 10, dtype=f64), -torch.logspace(1, -2, 10, dtype=f64)])
    return (q * ev) @ q.T, ev[ev.abs().argsort(descending=True)]


def _eigh(a, krylov, block, calls=None):
    def matmat(v):
        if calls is not None:
            calls.append(v.shape[0])
        return v @ a

    return block_krylov_eigh(
        matmat, a.shape[0], krylov, block, dtype=a.dtype, device=a.device,
        generator=torch.Generator().manual_seed(1), tol=1e-10,
    )


@pytest.mark.parametrize("block", [1, 7, 90])
def test_full_dimension_recovers_the_spectrum_exactly(block):
    a, true = _operator()
    calls = []
    evals, evecs = _eigh(a, 90, block, calls)
    torch.testing.assert_close(evals, true, rtol=1e-10, atol=1e-10)  # indefinite, sorted by magnitude
    torch.testing.assert_close((evecs.T * evals) @ evecs, a, rtol=0, atol=1e-10)
    # One batched product per block of the Krylov space: ceil(90 / block) calls, 90 vectors in all.
    assert len(calls) == -(-90 // block) and sum(calls) == 90


def test_leading_eigenpairs_below_full_dimension():
    a, true = _operator()
    evals, evecs = _eigh(a, 60, 6)
    torch.testing.assert_close(evals[:5], true[:5], rtol=1e-8, atol=0)
    residual = evecs[:5] @ a - evals[:5, None] * evecs[:5]
    assert float(residual.norm(dim=1).max()) < 1e-6


def test_invariant_subspace_is_completed_with_random_directions():
    g = torch.Generator().manual_seed(2)
    q = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64)).Q[:, :3]
    a = (q * torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)) @ q.T  # rank 3
    evals, evecs = _eigh(a, 12, 4)
    torch.testing.assert_close(evals[:3], torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(evecs @ evecs.T, torch.eye(12, dtype=torch.float64), rtol=0, atol=1e-12)
    assert float(evals[3:].abs().max()) < 1e-12
