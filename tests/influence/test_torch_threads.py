"""torch influence models run with the thread budget of dvl_dask.compute.torch-threads, and restore the caller's."""

from __future__ import annotations

import os
import threading
import time

import dask
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from dvl_dask.errors import InvalidParameterError  # noqa: E402
from dvl_dask.influence.torch import ArnoldiInfluence, CgInfluence, DirectInfluence  # noqa: E402
from dvl_dask.threads import torch_thread_budget, torch_threads  # noqa: E402

pytestmark = pytest.mark.torch


class RecordingLoss:
    """MSE that records the torch thread count of every call."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def __call__(self, out, y):
        self.seen.add(torch.get_num_threads())
        return F.mse_loss(out, y)


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(12, 3, generator=g, dtype=torch.float64), torch.randn(12, 1, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("cls", [DirectInfluence, ArnoldiInfluence, CgInfluence])
def test_fit_and_products_use_the_budget_and_restore_the_callers_threads(two_threads, cls):
    x, y = _data()
    loss = RecordingLoss()
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    kwargs = {"rank": 5} if cls is ArnoldiInfluence else {}
    infl = cls(model, loss, regularization=0.5, second_order_mode="gauss_newton", **kwargs)
    with dask.config.set({"dvl_dask.compute.torch-threads": 1}):
        infl.fit((x, y))
        assert torch.get_num_threads() == 2
        infl.influences(x[:3], y[:3], x, y)
        infl.self_influences(x, y)
        infl.influences_from_factors(infl.influence_factors(x[:2], y[:2]), x, y)
        assert torch.get_num_threads() == 2
    assert loss.seen == {1}


def test_null_leaves_torch_alone(two_threads):
    loss = RecordingLoss()
    x, y = _data()
    with dask.config.set({"dvl_dask.compute.torch-threads": None}):
        DirectInfluence(nn.Linear(3, 1).double(), loss, regularization=0.1).fit((x, y))
    assert loss.seen == {2}


def test_auto_is_one_thread_per_task_in_a_pool_thread_and_at_most_torchs_own(two_threads):
    with dask.config.set({"dvl_dask.compute.torch-threads": "auto"}):
        # The main thread runs one task: all usable cores, at most torch's own setting (2 here).
        assert torch_thread_budget() == min(2, len(os.sched_getaffinity(0)))
        seen = []
        worker = threading.Thread(target=lambda: seen.append(torch_thread_budget()))
        worker.start()
        worker.join()
        assert seen == [1]
        torch.set_num_threads(1)
        assert torch_thread_budget() == 1


def test_nested_contexts_restore_once(two_threads):
    with dask.config.set({"dvl_dask.compute.torch-threads": 1}):
        with torch_threads():
            assert torch.get_num_threads() == 1
            with dask.config.set({"dvl_dask.compute.torch-threads": 2}), torch_threads():
                assert torch.get_num_threads() == 1  # the outermost setting holds
            assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("bad", [0, -1, "many", 1.5, True])
def test_invalid_setting_is_refused(bad):
    with dask.config.set({"dvl_dask.compute.torch-threads": bad}):
        with pytest.raises(InvalidParameterError, match="torch-threads"):
            torch_thread_budget()


# -- work shared out to single-threaded worker threads (issue 30: no intra-op barriers to spin at) ----


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 3 rows, so that the 21 rows of the small MLP's Hessian take 7 chunks."""
    from dvl_dask.influence.torch import _curvature

    monkeypatch.setattr(_curvature, "ROW_SAMPLES_BUDGET", 1)
    monkeypatch.setattr(_curvature, "VMAP_CHUNK", 3)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def _hessian_by_torch_func(model, x, y):
    """Ground truth: torch.func.hessian of the mean loss in the flat parameters (written here, not the library's)."""
    from torch.func import functional_call, hessian

    names = [n for n, _ in model.named_parameters()]
    shapes = [q.shape for q in model.parameters()]
    theta = torch.cat([q.detach().reshape(-1) for q in model.parameters()])

    def loss_of(t):
        params, i = {}, 0
        for n, shape in zip(names, shapes):
            params[n] = t[i : i + shape.numel()].reshape(shape)
            i += shape.numel()
        return F.mse_loss(functional_call(model, params, (x,)), y)

    return hessian(loss_of)(theta)


def test_dense_hessian_on_worker_threads_is_exact_and_independent_of_the_budget(two_threads, small_chunks):
    from torch.utils.data import DataLoader, TensorDataset

    from dvl_dask.influence import SecondOrderMode
    from dvl_dask.influence.torch._curvature import CurvatureOperator
    from dvl_dask.influence.torch._functional import FunctionalModel
    from dvl_dask.influence.torch._layout import ParameterLayout, resolve_blocks

    x, y = _data()
    model = _mlp()
    layout = ParameterLayout.from_module(model, "t")
    block = resolve_blocks(layout, "full", "t")[0]
    loss = RecordingLoss()
    op = CurvatureOperator(
        FunctionalModel(model, loss, layout), block, DataLoader(TensorDataset(x, y), batch_size=6),
        SecondOrderMode.Hessian, 0.0, "t",
    )  # fmt: skip
    shared = op.dense()
    assert torch.get_num_threads() == 2
    assert loss.seen == {1}  # every chunk ran on a worker thread with one intra-op thread
    torch.set_num_threads(1)
    alone = op.dense()
    torch.testing.assert_close(shared, alone, rtol=0, atol=0)  # same chunks, same arithmetic
    torch.testing.assert_close(shared, _hessian_by_torch_func(model, x, y), rtol=1e-10, atol=1e-12)


def test_direct_fit_on_worker_threads_matches_the_inverse_of_the_exact_hessian(two_threads, small_chunks):
    x, y = _data()
    model = _mlp()
    with dask.config.set({"dvl_dask.compute.torch-threads": 2}):
        infl = DirectInfluence(model, F.mse_loss, regularization=0.1).fit((x, y))
    assert torch.get_num_threads() == 2
    expected = torch.linalg.inv(_hessian_by_torch_func(model, x, y) + 0.1 * torch.eye(21, dtype=torch.float64))
    torch.testing.assert_close(infl.inverse_curvature[0], expected, rtol=1e-8, atol=1e-10)


def test_a_failing_chunk_is_raised_and_the_threads_restored(two_threads):
    from dvl_dask.influence.torch._curvature import map_row_chunks

    def make_fn(_worker):
        def fn(v):
            raise ValueError("boom in a chunk")

        return fn

    with pytest.raises(ValueError, match="boom in a chunk"):
        map_row_chunks(make_fn, torch.ones(8, 2), 2)
    assert torch.get_num_threads() == 2


def test_side_by_side_runs_single_threaded_in_order_and_restores(two_threads):
    from dvl_dask.threads import side_by_side

    assert side_by_side(lambda: ("a", torch.get_num_threads()), lambda: ("b", torch.get_num_threads())) == [
        ("a", 1),
        ("b", 1),
    ]
    assert torch.get_num_threads() == 2
    with pytest.raises(KeyError):
        side_by_side(lambda: 1, lambda: {}["missing"])
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    assert side_by_side(lambda: threading.current_thread() is threading.main_thread()) == [True]


def test_side_by_side_refuses_a_non_callable():
    from dvl_dask.threads import side_by_side

    with pytest.raises(InvalidParameterError, match="fns"):
        side_by_side(lambda: 1, 3)


def test_worker_threads_never_use_a_module_at_once(two_threads, small_chunks, monkeypatch):
    """functional_call swaps a module's parameters while it runs: two threads on one module corrupt each other
    (seen as a functorch "level escaped" assert). Rows shared out (the dense Hessian) and batches shared out
    (narrow products) both run on several threads, never two at once on one module."""
    from torch.utils.data import DataLoader, TensorDataset

    from dvl_dask.influence.torch._functional import FunctionalModel

    x, y = _data()
    lock, busy, clashes, threads = threading.Lock(), {}, [], set()
    original = FunctionalModel.output

    def watched(self, params, inputs):
        me, key = threading.get_ident(), id(self.model)
        with lock:
            owner, depth = busy.get(key, (me, 0))
            if owner != me:
                clashes.append(key)
            busy[key] = (me, depth + 1)
            threads.add(me)
        try:
            time.sleep(0.002)  # widen the window in which another thread could enter
            return original(self, params, inputs)
        finally:
            with lock:
                owner, depth = busy[key]
                if depth == 1:
                    del busy[key]
                else:
                    busy[key] = (owner, depth - 1)

    monkeypatch.setattr(FunctionalModel, "output", watched)
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    with dask.config.set({"dvl_dask.compute.torch-threads": 2}):
        DirectInfluence(_mlp(), F.mse_loss, regularization=0.1).fit(loader)
        ArnoldiInfluence(_mlp(), F.mse_loss, rank=4, regularization=0.1, seed=0).fit(loader)
    assert not clashes
    assert len(threads) >= 3  # the caller and at least two workers


def test_narrow_products_share_out_their_batches_and_equal_the_one_thread_result_bit_for_bit(two_threads):
    """A Krylov block of a few rows: each batch on one worker thread with one intra-op thread, summed in order."""
    from torch.utils.data import DataLoader, TensorDataset

    from dvl_dask.influence import SecondOrderMode
    from dvl_dask.influence.torch._curvature import CurvatureOperator
    from dvl_dask.influence.torch._functional import FunctionalModel
    from dvl_dask.influence.torch._layout import ParameterLayout, resolve_blocks

    x, y = _data()
    model = _mlp()
    layout = ParameterLayout.from_module(model, "t")
    block = resolve_blocks(layout, "full", "t")[0]
    v = torch.randn(2, 21, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for mode in (SecondOrderMode.Hessian, SecondOrderMode.GaussNewton):
        loss = RecordingLoss()
        op = CurvatureOperator(
            FunctionalModel(model, loss, layout), block, DataLoader(TensorDataset(x, y), batch_size=3), mode, 0.1, "t"
        )
        with dask.config.set({"dvl_dask.compute.torch-threads": 2}):
            shared = op.matmat(v)
        assert torch.get_num_threads() == 2
        assert loss.seen == {1}  # every batch on a worker thread with one intra-op thread
        torch.set_num_threads(1)
        alone = op.matmat(v)
        torch.set_num_threads(2)
        torch.testing.assert_close(shared, alone, rtol=0, atol=0)
        dense = op.dense(regularized=True)
        torch.testing.assert_close(shared, v @ dense, rtol=1e-10, atol=1e-12)


def test_the_lissa_recursion_runs_on_one_intra_op_thread_and_restores_the_callers(two_threads, monkeypatch):
    """Its products are narrow (one batch each): on two intra-op threads they collapsed 6.6-9.5x when two
    solves shared the cores. The caller's thread count is back afterwards."""
    from torch.utils.data import DataLoader, TensorDataset

    from dvl_dask.influence.torch import LissaInfluence
    from dvl_dask.influence.torch._curvature import CurvatureOperator

    x, y = _data()
    seen = []
    original = CurvatureOperator.batch_matmat

    def watched(self, v, xb, yb, **kwargs):
        seen.append(torch.get_num_threads())
        return original(self, v, xb, yb, **kwargs)

    monkeypatch.setattr(CurvatureOperator, "batch_matmat", watched)
    infl = LissaInfluence(_mlp(), F.mse_loss, regularization=0.1, maxiter=5, second_order_mode="gauss_newton",
                          warn_on_max_iteration=False).fit(DataLoader(TensorDataset(x, y), batch_size=4))
    with dask.config.set({"dvl_dask.compute.torch-threads": 2}):
        factors = infl.influence_factors(x[:3], y[:3])
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2
    assert bool(torch.isfinite(factors).all())


def test_the_lissa_product_is_shared_out_to_the_callers_budget_with_the_same_values(two_threads, monkeypatch):
    """The recursion runs on one intra-op thread, but each iteration's Gauss-Newton product with its batch is
    shared out to the caller's budget: terms of PRODUCT_TERM_SAMPLES samples on worker threads with one
    intra-op thread each, summed in order, so the factors are the same bit for bit on one thread or two."""
    from torch.utils.data import DataLoader, TensorDataset

    from dvl_dask.influence.torch import LissaInfluence, _curvature

    g = torch.Generator().manual_seed(1)
    x = torch.randn(600, 3, generator=g, dtype=torch.float64)
    y = torch.randn(600, 1, generator=g, dtype=torch.float64)
    seen = []
    original = _curvature._jacobian_term

    def watched(jac, h_out, v):
        seen.append((threading.get_ident(), torch.get_num_threads(), jac.shape[0]))
        return original(jac, h_out, v)

    monkeypatch.setattr(_curvature, "_jacobian_term", watched)
    infl = LissaInfluence(_mlp(), F.mse_loss, regularization=0.1, maxiter=4, second_order_mode="gauss_newton",
                          scale=20.0, warn_on_max_iteration=False).fit(DataLoader(TensorDataset(x, y), batch_size=300))
    results = {}
    for budget in (1, 2):
        seen.clear()
        with dask.config.set({"dvl_dask.compute.torch-threads": budget}):
            results[budget] = infl.influence_factors(x[:40], y[:40])
        assert torch.get_num_threads() == 2
        assert {n for _, n, _ in seen} == {1}
        term = _curvature.PRODUCT_TERM_SAMPLES
        assert {s for *_, s in seen} == {min(term, 300 - i) for i in range(0, 300, term)}
        threads_used = {t for t, *_ in seen}
        assert (len(threads_used) == 2 and threading.get_ident() not in threads_used) if budget == 2 else (
            threads_used == {threading.get_ident()})
    torch.testing.assert_close(results[2], results[1], rtol=0, atol=0)
    # The shared product is the batch's Gauss-Newton product: against the one-thread product of the operator.
    op = infl._curvature_operator(infl._functional, infl._blocks[0], infl._loader)
    v = torch.randn(40, op.dim, generator=g, dtype=torch.float64)
    torch.set_num_threads(1)
    alone = op.batch_matmat(v, x[:300], y[:300])
    torch.set_num_threads(2)
    torch.testing.assert_close(op.batch_matmat(v, x[:300], y[:300], threads=2), alone, rtol=1e-12, atol=1e-12)


def test_side_by_side_takes_an_explicit_budget_from_a_one_thread_caller():
    """A caller on one intra-op thread (LiSSA's recursion) can still share work out to its budget."""
    from dvl_dask.threads import intra_op_threads, side_by_side

    barrier = threading.Barrier(2, timeout=10)

    def meet():  # returns only if both functions run at once
        barrier.wait()
        return threading.current_thread() is threading.main_thread(), torch.get_num_threads()

    with intra_op_threads(1):
        assert side_by_side(meet, meet, threads=2) == [(False, 1), (False, 1)]
        assert torch.get_num_threads() == 1
        assert side_by_side(lambda: threading.current_thread() is threading.main_thread(), threads=1) == [True]
    with pytest.raises(InvalidParameterError, match="'threads' parameter of side_by_side"):
        side_by_side(lambda: 1, threads=0)
