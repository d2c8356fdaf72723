"""Iterative solvers keep the per-sample Jacobians of their first pass (LiSSA: of each batch of a loader that repeats
its batches); wide SVDs go through the transpose."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from dvl_dask.errors import InvalidDataError  # noqa: E402
from dvl_dask.influence import SecondOrderMode  # noqa: E402
from dvl_dask.influence.torch import ArnoldiInfluence, CgInfluence, LissaInfluence  # noqa: E402
from dvl_dask.influence.torch import _curvature as curvature  # noqa: E402
from dvl_dask.influence.torch._curvature import CurvatureOperator  # noqa: E402
from dvl_dask.influence.torch._data import repeats_batches  # noqa: E402
from dvl_dask.influence.torch._functional import FunctionalModel  # noqa: E402
from dvl_dask.influence.torch._layout import ParameterLayout, resolve_blocks  # noqa: E402
from dvl_dask.influence.torch._linalg import _right_singular  # noqa: E402

pytestmark = pytest.mark.torch


def _problem(n: int = 90, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.randn(n, 2, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    return model, x, y


class _CountingLoader(DataLoader):
    """A DataLoader that counts the passes made over it (a subclass: iterated as it is)."""

    passes = 0

    def __iter__(self):
        self.passes += 1
        return super().__iter__()


def _operator(loader, keep: bool, model=None):
    model = model if model is not None else _problem()[0]
    layout = ParameterLayout.from_module(model, "test")
    fm = FunctionalModel(model, F.mse_loss, layout)
    block = resolve_blocks(layout, "full", "test")[0]
    return CurvatureOperator(fm, block, loader, SecondOrderMode.GaussNewton, 0.1, "test", keep_jacobians=keep), layout


def test_an_iterative_operator_reads_the_loader_once_and_gives_the_same_products():
    model, x, y = _problem()
    counted = _CountingLoader(TensorDataset(x, y), batch_size=20)
    kept, layout = _operator(counted, keep=True, model=model)
    fresh, _ = _operator(DataLoader(TensorDataset(x, y), batch_size=20), keep=False, model=model)
    g = torch.Generator().manual_seed(1)
    for k in (40, 3, 40):  # wide (the Jacobian route), narrow, wide again
        v = torch.randn(k, layout.n, generator=g, dtype=torch.float64)
        torch.testing.assert_close(kept.matmat(v), fresh.matmat(v), rtol=1e-12, atol=1e-13)
    assert counted.passes == 1
    assert kept._jacobians is not None and len(kept._jacobians) == 5  # one entry per batch of 20 (90 samples)


def test_a_single_pass_operator_keeps_nothing():
    model, x, y = _problem()
    counted = _CountingLoader(TensorDataset(x, y), batch_size=20)
    op, layout = _operator(counted, keep=False, model=model)
    v = torch.randn(40, layout.n, dtype=torch.float64)
    op.matmat(v)
    op.matmat(v)
    assert counted.passes == 2 and op._jacobians is None


def test_jacobians_over_the_budget_are_not_kept(monkeypatch):
    model, x, y = _problem()
    # Room for the Jacobians of two batches of 20 samples (2 outputs x 56 parameters each), not all five.
    monkeypatch.setattr(curvature, "JACOBIAN_CACHE_BUDGET", 2 * 20 * (2 * 56 + 4))
    counted = _CountingLoader(TensorDataset(x, y), batch_size=20)
    op, layout = _operator(counted, keep=True, model=model)
    fresh, _ = _operator(DataLoader(TensorDataset(x, y), batch_size=20), keep=False, model=model)
    v = torch.randn(40, layout.n, dtype=torch.float64)
    torch.testing.assert_close(op.matmat(v), fresh.matmat(v), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(op.matmat(v), fresh.matmat(v), rtol=1e-12, atol=1e-13)
    assert op._jacobians is None and counted.passes == 2
    assert not op._jacobians_fit  # later passes do not try again


class _Stream(torch.utils.data.IterableDataset):
    """Samples of unknown number: whether the Jacobians fit is only known once they are computed."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y))


def test_jacobians_of_a_stream_stop_being_kept_at_the_budget(monkeypatch):
    model, x, y = _problem()
    monkeypatch.setattr(curvature, "JACOBIAN_CACHE_BUDGET", 2 * 20 * (2 * 56 + 4))
    op, layout = _operator(DataLoader(_Stream(x, y), batch_size=20), keep=True, model=model)
    fresh, _ = _operator(DataLoader(TensorDataset(x, y), batch_size=20), keep=False, model=model)
    v = torch.randn(40, layout.n, dtype=torch.float64)
    torch.testing.assert_close(op.matmat(v), fresh.matmat(v), rtol=1e-12, atol=1e-13)
    assert op._jacobians is None and not op._jacobians_fit
    torch.testing.assert_close(op.matmat(v), fresh.matmat(v), rtol=1e-12, atol=1e-13)
    monkeypatch.setattr(curvature, "JACOBIAN_CACHE_BUDGET", 2**26)
    small, _ = _operator(DataLoader(_Stream(x, y), batch_size=20), keep=True, model=model)
    torch.testing.assert_close(small.matmat(v), fresh.matmat(v), rtol=1e-12, atol=1e-13)
    assert small._jacobians is not None


def test_the_hessian_keeps_nothing():
    model, x, y = _problem()
    layout = ParameterLayout.from_module(model, "test")
    fm = FunctionalModel(model, F.mse_loss, layout)
    block = resolve_blocks(layout, "full", "test")[0]
    loader = DataLoader(TensorDataset(x, y), batch_size=20)
    op = CurvatureOperator(fm, block, loader, SecondOrderMode.Hessian, 0.1, "test", keep_jacobians=True)
    op.matmat(torch.randn(40, layout.n, dtype=torch.float64))
    assert op._jacobians is None and not op._jacobians_fit


def test_a_pass_stopped_early_keeps_nothing():
    model, x, y = _problem()
    op, layout = _operator(DataLoader(TensorDataset(x, y), batch_size=20), keep=True, model=model)
    products = op._batch_products(torch.randn(40, layout.n, dtype=torch.float64))
    next(products)
    products.close()
    assert op._jacobians is None and op._jacobians_fit


def test_kept_jacobians_make_a_shuffling_loader_one_matrix():
    # Each pass of a shuffling loader sums the batches in another order; with the Jacobians kept, every product
    # is with the same matrix, bit for bit, as an iterative solver assumes.
    model, x, y = _problem()
    loader = DataLoader(TensorDataset(x, y), batch_size=20, shuffle=True, generator=torch.Generator().manual_seed(3))
    op, layout = _operator(loader, keep=True, model=model)
    v = torch.randn(40, layout.n, dtype=torch.float64)
    first = op.matmat(v)
    assert torch.equal(op.matmat(v), first)


@pytest.mark.parametrize("budget", [0, None])
def test_cg_and_arnoldi_factors_do_not_depend_on_keeping_the_jacobians(monkeypatch, budget):
    model, x, y = _problem(120)
    loader = DataLoader(TensorDataset(x, y), batch_size=40)
    x_test, y_test = x[:30], y[:30]

    def factors():
        cg = CgInfluence(model, F.mse_loss, regularization=0.1, maxiter=30, second_order_mode="gauss_newton")
        arnoldi = ArnoldiInfluence(model, F.mse_loss, rank=10, regularization=0.1, second_order_mode="gauss_newton")
        return [m.fit(loader).influence_factors(x_test, y_test) for m in (cg, arnoldi)]

    kept = factors()
    if budget is not None:
        monkeypatch.setattr(curvature, "JACOBIAN_CACHE_BUDGET", budget)
    else:  # the reference: operators that never keep (the single-pass default)
        monkeypatch.setattr(CurvatureOperator, "__init__", _never_keep(CurvatureOperator.__init__))
    again = factors()
    for a, b in zip(kept, again):
        # Kept Jacobians serve narrow products too, where an operator that keeps nothing takes vjp products.
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def _never_keep(init):
    def wrapped(self, *args, **kwargs):
        kwargs["keep_jacobians"] = False
        init(self, *args, **kwargs)

    return wrapped


def test_cg_reads_the_training_loader_once_per_solve(monkeypatch):
    model, x, y = _problem(120)
    counted = _CountingLoader(TensorDataset(x, y), batch_size=40)
    cg = CgInfluence(model, F.mse_loss, regularization=0.1, maxiter=30, second_order_mode="gauss_newton").fit(counted)
    before = counted.passes
    cg.influence_factors(x[:30], y[:30])
    assert counted.passes - before == 1


# -- LiSSA: one batch per iteration, kept by its position when the loader repeats its batches -------------


def _counting_jacobians(monkeypatch) -> list[int]:
    """Count the batches whose per-sample Jacobians are computed (one entry per batch, its size)."""
    seen: list[int] = []
    original = CurvatureOperator._jacobian_chunks

    def counted(self, x, y):
        seen.append(x.shape[0])
        return original(self, x, y)

    monkeypatch.setattr(CurvatureOperator, "_jacobian_chunks", counted)
    return seen


def _lissa_factors(loader, x_test, y_test, model, mode="gauss_newton", maxiter=12):
    lissa = LissaInfluence(model, F.mse_loss, regularization=0.1, scale=20.0, maxiter=maxiter,
                           second_order_mode=mode, warn_on_max_iteration=False)
    return lissa.fit(loader).influence_factors(x_test, y_test)


@pytest.mark.parametrize("k", [3, 40])  # narrow (a vjp product if not kept) and wide right-hand sides
def test_lissa_computes_each_batchs_jacobians_once_for_an_in_order_loader(monkeypatch, k):
    model, x, y = _problem(100)
    x_test, y_test = x[:k], y[:k]
    seen = _counting_jacobians(monkeypatch)
    kept = _lissa_factors(DataLoader(TensorDataset(x, y), batch_size=20), x_test, y_test, model)
    assert seen == [20] * 5  # 12 iterations over 5 batches: each batch's Jacobians computed once
    monkeypatch.setattr(curvature, "JACOBIAN_CACHE_BUDGET", 0)  # nothing fits: every iteration recomputes
    seen.clear()
    again = _lissa_factors(DataLoader(TensorDataset(x, y), batch_size=20), x_test, y_test, model)
    assert seen == ([20] * 12 if k == 40 else [])  # narrow rows without keeping: vjp products
    torch.testing.assert_close(kept, again, rtol=1e-10, atol=1e-12)
    assert kept.shape == (k, 50)


def test_lissa_keeps_the_batches_that_fit_in_the_budget(monkeypatch):
    model, x, y = _problem(100)
    monkeypatch.setattr(curvature, "JACOBIAN_CACHE_BUDGET", 2 * 20 * 2 * (50 + 2))  # two batches of 20
    seen = _counting_jacobians(monkeypatch)
    _lissa_factors(DataLoader(TensorDataset(x, y), batch_size=20), x[:40], y[:40], model)
    # Batches 0 and 1 kept; 2, 3, 4 computed in both cycles (iterations 3-5 and 8-10), 0 and 1 not again.
    assert seen == [20] * 8


@pytest.mark.parametrize("loader_kind", ["shuffle", "subclass"])
def test_lissa_keeps_nothing_for_a_loader_that_may_change_its_batches(monkeypatch, loader_kind):
    model, x, y = _problem(100)
    data = TensorDataset(x, y)
    loader = (DataLoader(data, batch_size=20, shuffle=True, generator=torch.Generator().manual_seed(0))
              if loader_kind == "shuffle" else _CountingLoader(data, batch_size=20))
    assert not repeats_batches(loader)
    seen = _counting_jacobians(monkeypatch)
    _lissa_factors(loader, x[:40], y[:40], model)
    assert seen == [20] * 12  # wide rows: the Jacobian route, recomputed at every iteration


def test_lissa_keeps_nothing_when_no_batch_comes_again(monkeypatch):
    model, x, y = _problem(100)
    seen = _counting_jacobians(monkeypatch)
    _lissa_factors(DataLoader(TensorDataset(x, y), batch_size=20), x[:3], y[:3], model, maxiter=5)
    assert seen == []  # five batches, five iterations: narrow rows stay vjp products
    _lissa_factors(DataLoader(TensorDataset(x, y), batch_size=20), x[:3], y[:3], model, maxiter=6)
    assert seen == [20] * 5


def test_lissa_with_the_hessian_keeps_nothing(monkeypatch):
    model, x, y = _problem(100)
    seen = _counting_jacobians(monkeypatch)
    _lissa_factors(DataLoader(TensorDataset(x, y), batch_size=20), x[:40], y[:40], model, mode="hessian")
    assert seen == []


def test_which_loaders_repeat_their_batches():
    _, x, y = _problem(100)
    data = TensorDataset(x, y)
    assert repeats_batches(DataLoader(data, batch_size=20))
    assert repeats_batches(DataLoader(data, batch_size=30, drop_last=True))
    assert not repeats_batches(DataLoader(data, batch_size=20, shuffle=True))
    assert not repeats_batches(DataLoader(data, batch_size=20, collate_fn=lambda b: b))
    assert not repeats_batches(DataLoader(_Stream(x, y), batch_size=20))


def test_a_kept_position_with_another_batch_is_an_error():
    model, x, y = _problem(100)
    op, layout = _operator(DataLoader(TensorDataset(x, y), batch_size=20), keep=True, model=model)
    v = torch.randn(4, layout.n, dtype=torch.float64)
    first = op.batch_matmat(v, x[:20], y[:20], batch=0)
    torch.testing.assert_close(op.batch_matmat(v, x[:20], y[:20], batch=0, threads=2), first, rtol=1e-12, atol=1e-13)
    fresh, _ = _operator(DataLoader(TensorDataset(x, y), batch_size=20), keep=False, model=model)
    torch.testing.assert_close(fresh.batch_matmat(v, x[:20], y[:20]), first, rtol=1e-10, atol=1e-12)
    with pytest.raises(InvalidDataError, match="batch 0 of the loader has 10 samples, but 20"):
        op.batch_matmat(v, x[:10], y[:10], batch=0)


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 12),
    extra=st.integers(0, 30),
    rank=st.integers(0, 12),
    seed=st.integers(0, 2**16),
)
def test_right_singular_vectors_match_the_svd(k, extra, rank, seed):
    g = torch.Generator().manual_seed(seed)
    p = k + extra
    rank = min(rank, k)
    z = torch.randn(k, rank, generator=g, dtype=torch.float64) @ torch.randn(rank, p, generator=g, dtype=torch.float64)
    s, vh = _right_singular(z)
    _, s_ref, vh_ref = torch.linalg.svd(z, full_matrices=False)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)
    assert vh.shape == vh_ref.shape == (k, p)
    torch.testing.assert_close(vh @ vh.T, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-10)
    # The leading rows span the row space of z: projecting z onto them loses nothing.
    lead = vh[s > 1e-8 * max(float(s.max()), 1.0)] if k else vh
    torch.testing.assert_close(z @ lead.T @ lead, z, rtol=1e-8, atol=1e-8)
