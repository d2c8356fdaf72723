"""Products with the curvature of the mean training loss, restricted to one parameter block.

Vectors are rows: an operator maps ``V`` of shape ``(k, p_b)`` to ``V @ C`` for
the symmetric curvature block ``C`` (Hessian or Gauss–Newton) of the loss
averaged over a data loader, plus ``λV`` for the regularisation ``λ``.

Two routes compute a product on one batch:

* vjp products: reverse-over-reverse (``vjp`` of a gradient, or of ``Jᵀu`` for
  Gauss–Newton), vectorised over the ``k`` rows with ``vmap``. Forward mode is
  avoided because some losses (``F.mse_loss``) do not support it under ``vmap``.
* Jacobian products (Gauss–Newton only): per-sample output Jacobians ``Jᵢ`` and
  output Hessians ``Λᵢ``, then ``(1/n_b) Σᵢ Jᵢᵀ Λᵢ Jᵢ V`` as large matrix products.
  Far faster when ``k`` is large compared with the number of model outputs, and
  the way the dense Gauss–Newton matrix is built. It relies on the batch loss
  being the mean of per-sample losses (the contract of every loss here).

Threads. A vjp product with many rows runs in chunks of :func:`vmap_rows` rows,
sized so that one chunk's activations stay in cache. With a torch thread
budget above one (:func:`dvl_dask.threads.torch_threads`), the chunks are
shared out to that many Python threads, each running its chunks with one
intra-op thread (and its own copy of the module, which ``functional_call``
mutates while it runs), instead of running one chunk at a time on all threads. The
intra-op route ends every one of the thousands of small kernels of a chunk
at a barrier where each thread spins until the others arrive: when the
cores are shared (two fits at once, or other jobs), a descheduled thread
makes its partners spin through their time slices, and two fits at once
took 3.3-3.6x one alone on 2 cores. Whole chunks per thread have no barrier
inside a chunk, keep the kernels' data in one core's cache, and degrade to
the fair share under contention (``benchmarks/README.md``, "Influence under
contention"). A narrow product, with fewer row chunks than threads (the
20-row blocks of a Krylov method), shares out its batches the same way
instead: one thread and one intra-op thread per batch, the products summed in
the loader's order. A product with one batch (:meth:`CurvatureOperator.batch_matmat`,
LiSSA's) can be shared out to an explicit budget while its caller runs on one
intra-op thread: a Jacobian product computes the batch's Jacobians once,
then its matrix products in terms of :data:`PRODUCT_TERM_SAMPLES` samples on
the threads, summed in order.

An operator that serves an iterative solver (``keep_jacobians``: CG, MINRES,
Arnoldi) keeps the Gauss-Newton Jacobians and output Hessians of its first
pass when all of them fit in :data:`JACOBIAN_CACHE_BUDGET` elements: every
later product is then matrix products only, without reading the loader, and
with the same matrix (a shuffling or augmenting loader would otherwise give
each iteration another one). On the 20-32-32-1 MLP a CG solve of 100 rows
spent a seventh of its time recomputing the Jacobians at every iteration.
A stochastic solver (LiSSA) over a loader that repeats its batches
(:func:`._data.repeats_batches`) names each batch by its position
(:meth:`CurvatureOperator.batch_matmat`'s ``batch``), and the operator keeps
that batch's Jacobians the first time, within the same budget.

Networks of linear layers get their per-sample output Jacobians layer by
layer (:func:`._by_layer.linear_output_jacobians`): one batched forward pass
and one backward pass per model output, about half the time of
``vmap(jacrev(...))``.
"""

from __future__ import annotations

import collections
import itertools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch.func import grad, vjp, vmap
from torch.utils.data import DataLoader

from ...errors import InvalidDataError
from ...threads import manages_torch_threads, side_by_side
from .._mode import SecondOrderMode
from ._data import iter_batches
from ._functional import FunctionalModel
from ._layout import ParameterBlock

__all__ = [
    "JACOBIAN_BUDGET",
    "JACOBIAN_CACHE_BUDGET",
    "JACOBIAN_ROWS_PER_OUTPUT",
    "PRODUCT_TERM_SAMPLES",
    "ROW_SAMPLES_BUDGET",
    "VMAP_CHUNK",
    "CurvatureOperator",
    "batch_product_fn",
    "map_row_chunks",
    "row_workers",
    "vmap_rows",
]

#: Fewest rows of ``V`` pushed through one vectorised product.
VMAP_CHUNK = 16
#: Bound on (rows of ``V``) x (samples of the batch) in one vectorised product, i.e. on the copies
#: of one sample's activations held at once, so that a chunk's activations stay in cache. On the
#: 20-32-32-1 MLP (batches of 500, one thread) the dense Hessian cost 2.6 CPU s in chunks of 64 rows
#: (2^15 / 500), 2.9 s in chunks of 32 and 4.0 s in chunks of 262 (2^17 / 500, which spill the
#: cache, and more so when two processes share it).
ROW_SAMPLES_BUDGET = 2**15
#: Bound on the elements of one chunk of per-sample output Jacobians (samples x outputs x parameters).
JACOBIAN_BUDGET = 2**24
#: Gauss-Newton products of at least this many rows per model output use per-sample Jacobians
#: (measured crossover on a 5k-parameter MLP: 16-32 rows for one output).
JACOBIAN_ROWS_PER_OUTPUT = 16
#: Bound on the elements of per-sample output Jacobians an operator keeps between products (256 MiB of
#: float32): a solver's later products (CG's and MINRES's iterations, Arnoldi's Krylov blocks) reuse the
#: Jacobians of the first pass instead of recomputing them from the data.
JACOBIAN_CACHE_BUDGET = 2**26
#: Samples per matrix-product term of a one-batch Jacobian product shared out to threads
#: (:meth:`CurvatureOperator.batch_matmat` with ``threads``). The terms, and so the result, do not
#: depend on the number of threads.
PRODUCT_TERM_SAMPLES = 128

RowFn = Callable[[torch.Tensor], torch.Tensor]


def batch_product_fn(
    fm: FunctionalModel, block: ParameterBlock, x: torch.Tensor, y: torch.Tensor, mode: SecondOrderMode
) -> RowFn:
    """``v ↦ C_batch v`` for one vector ``v`` of the block (no regularisation).

    The forward and first backward pass over the batch happen once, here; the
    returned function only runs the second backward pass.
    """
    layout = block.layout
    theta = layout.flatten(fm.params)
    if mode is SecondOrderMode.Hessian:

        def loss_of_block(t: torch.Tensor) -> torch.Tensor:
            return fm.batch_loss(fm.block_params(layout, t), x, y)

        _, hvp = vjp(grad(loss_of_block), theta)
        return lambda v: hvp(v)[0]

    def output_of_block(t: torch.Tensor) -> torch.Tensor:
        return fm.output(fm.block_params(layout, t), x)

    out, jt = vjp(output_of_block, theta)  # jt(u) = Jᵀu
    # Jv as the vjp of the linear map u ↦ Jᵀu (the "double vjp" trick, reverse mode only).
    _, j = vjp(lambda u: jt(u)[0], torch.zeros_like(out))
    _, h_out = vjp(grad(lambda o: fm.loss(o, y)), out.detach())
    return lambda v: jt(h_out(j(v)[0])[0])[0]


def vmap_rows(n_samples: int) -> int:
    """Rows of ``V`` per vectorised product on a batch of ``n_samples``: ``ROW_SAMPLES_BUDGET`` / batch."""
    return max(VMAP_CHUNK, ROW_SAMPLES_BUDGET // max(1, n_samples))


def row_workers(k: int, rows: int, threads: int | None = None) -> int:
    """Threads :func:`map_row_chunks` uses for ``k`` rows in chunks of ``rows``: at most ``threads``.

    ``threads`` defaults to the torch budget of the calling thread.
    """
    budget = torch.get_num_threads() if threads is None else threads
    return max(1, min(budget, -(-k // rows)))


def map_row_chunks(
    make_fn: Callable[[int], RowFn], v: torch.Tensor, rows: int, threads: int | None = None
) -> torch.Tensor:
    """``vmap(fn)(V)`` in chunks of ``rows`` rows, shared out to :func:`row_workers` threads.

    Parameters
    ----------
    make_fn : callable
        ``make_fn(i)`` builds the row function ``fn`` (e.g. :func:`batch_product_fn`)
        of worker ``i`` (``0 <= i < row_workers(k, rows)``); called once per
        worker that takes a chunk, so that no autograd graph is shared between
        threads. Workers must not share a module either
        (``functional_call`` swaps its parameters while it runs).
    v : torch.Tensor
        ``(k, p)`` rows.
    rows : int
        Rows per chunk.
    threads : int, optional
        The thread budget (default: the calling thread's ``torch.get_num_threads()``).

    Returns
    -------
    torch.Tensor
        ``(k, p)``: row ``i`` is ``fn(v[i])``.

    Notes
    -----
    With one chunk, or a thread budget of one, the chunks run in the calling
    thread with its intra-op threads. Otherwise each worker thread runs whole
    chunks with one intra-op thread (see the module docstring); chunk
    boundaries do not depend on the threads, so neither do the results. The
    caller's ``torch.get_num_threads()`` is restored.
    """
    k = v.shape[0]
    starts = list(range(0, k, rows))
    workers = row_workers(k, rows, threads)
    if workers <= 1:
        fn = make_fn(0)
        return torch.cat([vmap(fn)(v[i : i + rows]) for i in starts]) if starts else vmap(fn)(v)
    out = torch.empty_like(v)
    pending = iter(starts)
    lock = threading.Lock()
    failed = threading.Event()

    def work(index: int) -> None:
        torch.set_num_threads(1)
        fn = None
        while not failed.is_set():
            with lock:
                start = next(pending, None)
            if start is None:
                return
            try:
                if fn is None:
                    fn = make_fn(index)
                out[start : start + rows] = vmap(fn)(v[start : start + rows])
            except BaseException:
                failed.set()
                raise

    caller = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="dvl_dask-curvature") as pool:
            for future in [pool.submit(work, i) for i in range(workers)]:
                future.result()
    finally:
        torch.set_num_threads(caller)  # a worker's setting is also torch's default for new threads
    return out


def _jacobian_term(jac: torch.Tensor, h_out: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``Σᵢ V Jᵢᵀ Λᵢ Jᵢ`` over the samples of ``jac`` ``(s, m, p)`` and ``h_out`` ``(s, m, m)``: shape ``(k, p)``.

    Computed row-major from ``V`` (``(V Jᵀ) Λ J``), so that terms add up
    without strided copies (``Λᵢ`` is symmetric).
    """
    s, m, p = jac.shape
    j = jac.reshape(s * m, p)
    vj = (v @ j.T).reshape(v.shape[0], s, m)
    return torch.einsum("ksm,smn->ksn", vj, h_out).reshape(v.shape[0], s * m) @ j


class CurvatureOperator:
    """``V ↦ V (C + λI)`` for one block, ``C`` the curvature of the mean loss over ``loader``.

    Parameters
    ----------
    fm : FunctionalModel
    block : ParameterBlock
    loader : DataLoader
        Training batches; each pass over it is one product with all rows of ``V``.
    mode : SecondOrderMode
    regularization : float
        ``λ`` added to the diagonal.
    owner : str
        Name used in error messages.
    keep_jacobians : bool
        For an operator that serves many products (CG, MINRES, a Krylov
        method): the first complete pass of Gauss-Newton products through
        per-sample Jacobians keeps them, if all of them fit in
        :data:`JACOBIAN_CACHE_BUDGET` elements, and every later product is
        computed from them without reading the loader again (a CG iteration
        is then matrix products only). The operator is then also the same
        matrix from product to product, where a loader that shuffles or
        augments would give each pass other batches. Off by default: a single
        pass (a dense matrix, a sketch) has no later product to serve. The
        same applies to single batches named by position
        (:meth:`batch_matmat`'s ``batch``).
    """

    def __init__(
        self,
        fm: FunctionalModel,
        block: ParameterBlock,
        loader: DataLoader,
        mode: SecondOrderMode,
        regularization: float,
        owner: str,
        *,
        keep_jacobians: bool = False,
    ) -> None:
        self.fm = fm
        self.block = block
        self.loader = loader
        self.mode = mode
        self.regularization = regularization
        self.owner = owner
        self._replicas: list[FunctionalModel] = [fm]
        # Per batch, (samples, [(Jacobians, output Hessians), ...]) from the first complete Jacobian pass, when
        # keep_jacobians and they fit in JACOBIAN_CACHE_BUDGET (None: not kept, or not yet). _jacobians_fit: whether
        # a pass should still try to keep them.
        self._jacobians: list[tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]] | None = None
        self._keep = keep_jacobians
        self._jacobians_fit = keep_jacobians
        # Per batch position given to batch_matmat: (samples, [(Jacobians, output Hessians), ...]), and their size in
        # elements (at most JACOBIAN_CACHE_BUDGET).
        self._batch_jacobians: dict[int, tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]] = {}
        self._batch_jacobians_size = 0
        self._outputs: int | None = None

    @property
    def dim(self) -> int:
        return self.block.n

    def _batch_product(self, v: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``V C_batch`` for one batch (no regularisation).

        Gauss–Newton products with many rows (``JACOBIAN_ROWS_PER_OUTPUT`` per
        model output) go through per-sample output Jacobians: one Jacobian
        per sample, then a few large matrix products. Fewer rows, and all
        Hessian products, are vectorised vjp-of-gradient products.
        """
        if self._jacobian_route(v, x):
            return self._jacobian_product(v, self._jacobian_chunks(x, y), x.shape[0])
        rows = vmap_rows(x.shape[0])
        fms = self._functional_models(row_workers(v.shape[0], rows))
        return map_row_chunks(lambda i: batch_product_fn(fms[i], self.block, x, y, self.mode), v, rows)

    def _jacobian_route(self, v: torch.Tensor, x: torch.Tensor) -> bool:
        """Whether ``V C_batch`` goes through per-sample output Jacobians (Gauss-Newton, enough rows)."""
        return self.mode is SecondOrderMode.GaussNewton and v.shape[0] >= JACOBIAN_ROWS_PER_OUTPUT * self._n_outputs(x)

    @staticmethod
    def _jacobian_product(
        v: torch.Tensor, chunks: Iterable[tuple[torch.Tensor, torch.Tensor]], n: int
    ) -> torch.Tensor:
        """``V C_batch`` from the batch's ``n`` samples' Jacobians and output Hessians, given in ``chunks``."""
        acc = torch.zeros_like(v)
        for jac, h_out in chunks:
            acc += _jacobian_term(jac, h_out, v)
        return acc.div_(n)

    def _kept_jacobian_products(
        self, v: torch.Tensor, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Jacobian products of every batch, keeping the Jacobians while they fit in :data:`JACOBIAN_CACHE_BUDGET`.

        Kept only once the pass is complete: a pass stopped early (an error, a
        consumer that stops) leaves nothing behind.
        """
        kept: list[tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]] | None = []
        size = 0
        for x, y in batches:
            chunks: list[tuple[torch.Tensor, torch.Tensor]] = []
            acc = torch.zeros_like(v)
            for jac, h_out in self._jacobian_chunks(x, y):
                acc += _jacobian_term(jac, h_out, v)
                if kept is not None:
                    size += jac.numel() + h_out.numel()
                    if size > JACOBIAN_CACHE_BUDGET:
                        kept, chunks = None, []
                        self._jacobians_fit = False
                    else:
                        chunks.append((jac, h_out))
            if kept is not None:
                kept.append((x.shape[0], chunks))
            yield x.shape[0], acc.div_(x.shape[0])
        if kept is not None:
            self._jacobians = kept

    def _jacobians_may_fit(self, x: torch.Tensor) -> bool:
        """Whether the loader's Jacobians can be kept (Gauss-Newton; within the budget where its size is known).

        For an operator that keeps them, the first pass goes through Jacobians
        whatever the width of ``V``: every later product is then matrix
        products only, cheaper than a vjp product of the narrowest ``V``.
        """
        if self.mode is not SecondOrderMode.GaussNewton:
            self._jacobians_fit = False
            return False
        try:
            n = len(self.loader.dataset)
        except (AttributeError, TypeError):  # an iterable dataset: try, and stop keeping at the budget
            return True
        if self._jacobian_elements(n, x) > JACOBIAN_CACHE_BUDGET:
            self._jacobians_fit = False
        return self._jacobians_fit

    def _jacobian_elements(self, n: int, x: torch.Tensor) -> int:
        """Elements of the per-sample output Jacobians and output Hessians of ``n`` samples like ``x``'s."""
        m = self._n_outputs(x)
        return n * m * (self.block.n + m)

    def _narrow(self, v: torch.Tensor, x: torch.Tensor) -> bool:
        """Whether ``V`` is a vjp product of fewer row chunks than the thread budget (e.g. a Krylov block)."""
        if self._jacobian_route(v, x):
            return False
        return row_workers(v.shape[0], vmap_rows(x.shape[0])) < torch.get_num_threads()

    def _batch_products(self, v: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """``(n_b, V C_b)`` for every batch ``b`` of the loader, in its order.

        With kept Jacobians (``keep_jacobians``), from them, without the loader.

        A narrow ``V`` (:meth:`_narrow`: too few rows to share out) would run
        each batch in the calling thread on all its intra-op threads, thousands
        of small kernels each ending at a barrier: Arnoldi's blocks of 20 rows
        took 7.5-14x as long two fits at once as alone. Its batches are shared
        out instead, each computed whole by one thread with one intra-op thread
        and its own functional model, at most ``2 x budget`` batches in flight;
        the products come back in the loader's order, so their sum does not
        depend on the threads (it equals the one-thread result bit for bit).
        """
        if self._jacobians is not None:
            for n_b, chunks in self._jacobians:
                yield n_b, self._jacobian_product(v, chunks, n_b)
            return
        budget = torch.get_num_threads()
        batches = ((x.to(v.device), y.to(v.device)) for x, y in iter_batches(self.loader, self.owner))
        first = next(batches, None)
        if first is None:
            return
        batches = itertools.chain([first], batches)
        if self._jacobians_fit and self._jacobians_may_fit(first[0]):
            yield from self._kept_jacobian_products(v, batches)
            return
        if budget <= 1 or not manages_torch_threads() or not self._narrow(v, first[0]):
            for x, y in batches:
                yield x.shape[0], self._batch_product(v, x, y)
            return
        free: queue.SimpleQueue[FunctionalModel] = queue.SimpleQueue()
        for fm in self._functional_models(budget):
            free.put(fm)

        def product(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            torch.set_num_threads(1)
            fm = free.get()
            try:  # one intra-op thread: map_row_chunks runs the chunks here, in this thread
                return map_row_chunks(lambda _: batch_product_fn(fm, self.block, x, y, self.mode), v,
                                      vmap_rows(x.shape[0]))
            finally:
                free.put(fm)

        pending: collections.deque[tuple[int, Future[torch.Tensor]]] = collections.deque()
        try:
            with ThreadPoolExecutor(budget, thread_name_prefix="dvl_dask-curvature") as pool:
                for x, y in batches:
                    pending.append((x.shape[0], pool.submit(product, x, y)))
                    if len(pending) >= 2 * budget:
                        n_b, future = pending.popleft()
                        yield n_b, future.result()
                while pending:
                    n_b, future = pending.popleft()
                    yield n_b, future.result()
        finally:
            for _, future in pending:
                future.cancel()
            torch.set_num_threads(budget)  # a worker's setting is also torch's default for new threads

    def _functional_models(self, n: int) -> list[FunctionalModel]:
        """``self.fm`` and ``n - 1`` replicas over private copies of its module, one per worker thread.

        ``functional_call`` swaps a module's parameters while it runs, so two
        threads must not call one module. Replicas share the (read-only)
        parameter tensors and are kept for later products.
        """
        while len(self._replicas) < n:
            self._replicas.append(self.fm.replica())
        return self._replicas[:n]

    def _n_outputs(self, x: torch.Tensor) -> int:
        """Outputs of the model per sample (a forward pass of one sample, the first time)."""
        if self._outputs is None:
            with torch.no_grad():
                self._outputs = int(self.fm.output(self.fm.params, x[:1]).numel())
        return self._outputs

    def _jacobian_chunks(self, x: torch.Tensor, y: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Per-sample output Jacobians ``(s, m, p_b)`` and output Hessians ``(s, m, m)``, in chunks."""
        with torch.no_grad():
            out = self.fm.output(self.fm.params, x)
        step = max(1, min(x.shape[0], JACOBIAN_BUDGET // (out[0].numel() * self.block.n)))
        for i in range(0, x.shape[0], step):
            jac = self.fm.per_sample_output_jacobian(self.block.layout, x[i : i + step])
            yield jac, self.fm.per_sample_output_hessian(out[i : i + step], y[i : i + step])

    def matmat(self, v: torch.Tensor, *, regularized: bool = True) -> torch.Tensor:
        """``V (C + λI)`` (or ``V C`` when not ``regularized``), averaged over all batches."""
        acc = torch.zeros_like(v)
        total = 0
        for n_b, product in self._batch_products(v):
            acc += n_b * product
            total += n_b
        acc /= total
        if regularized and self.regularization:
            acc += self.regularization * v
        return acc

    def batch_matmat(
        self,
        v: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        threads: int | None = None,
        batch: int | None = None,
    ) -> torch.Tensor:
        """``V (C_batch + λI)`` with the curvature of one batch only (stochastic methods).

        Parameters
        ----------
        v : torch.Tensor
            ``(k, p_b)`` rows.
        x, y : torch.Tensor
            One batch.
        threads : int, optional
            Share the product out to this many Python threads, each with one
            intra-op thread, for a caller that runs on one intra-op thread
            itself (the LiSSA recursion, whose other operations are too small to
            share). A Jacobian product computes the batch's per-sample Jacobians
            once, in the calling thread, then shares out its matrix products in
            terms of :data:`PRODUCT_TERM_SAMPLES` samples, summed in order; a vjp
            product shares out its row chunks (:func:`map_row_chunks`). Neither
            result depends on ``threads``. By default the product runs as
            :meth:`matmat`'s, on the calling thread's budget.
        batch : int, optional
            The position of ``(x, y)`` in a loader that yields the same batches
            in the same order on every pass (:func:`._data.repeats_batches`).
            An operator that keeps Jacobians (``keep_jacobians``, Gauss-Newton)
            then keeps this batch's per-sample Jacobians and output Hessians
            under its position, while all it keeps fits in
            :data:`JACOBIAN_CACHE_BUDGET`, and computes the product from them
            when the position comes again (whatever the width of ``v``; a batch
            that does not fit takes the usual route). A batch of another size
            at a kept position is an error.
        """
        x, y = x.to(v.device), y.to(v.device)
        kept = self._positional_jacobians(x, y, batch) if batch is not None else None
        if kept is not None:
            n_b, chunks = kept
            out = self._jacobian_product(v, chunks, n_b) if threads is None else self._shared_jacobian_product(
                v, chunks, n_b, threads)
        elif threads is None:
            out = self._batch_product(v, x, y)
        elif self._jacobian_route(v, x):
            out = self._shared_jacobian_product(v, self._jacobian_chunks(x, y), x.shape[0], threads)
        else:
            rows = vmap_rows(x.shape[0])
            fms = self._functional_models(row_workers(v.shape[0], rows, threads))
            out = map_row_chunks(lambda i: batch_product_fn(fms[i], self.block, x, y, self.mode), v, rows, threads)
        if self.regularization:
            out = out + self.regularization * v
        return out

    def _positional_jacobians(
        self, x: torch.Tensor, y: torch.Tensor, batch: int
    ) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]] | None:
        """``(samples, Jacobian chunks)`` of the batch at position ``batch``: kept, or computed now and kept.

        None where they are not kept: the operator does not keep (or the
        curvature is the Hessian), or they would not fit in the budget.
        """
        if not self._keep or self.mode is not SecondOrderMode.GaussNewton:
            return None
        kept = self._batch_jacobians.get(batch)
        if kept is not None:
            if kept[0] != x.shape[0]:
                raise InvalidDataError(
                    f"{self.owner}: batch {batch} of the loader has {x.shape[0]} samples, but {kept[0]} when its "
                    "Jacobians were kept. A loader whose batches are named by position must repeat them."
                )
            return kept
        n = x.shape[0]
        size = self._jacobian_elements(n, x)
        if self._batch_jacobians_size + size > JACOBIAN_CACHE_BUDGET:
            return None
        chunks = list(self._jacobian_chunks(x, y))
        self._batch_jacobians[batch] = (n, chunks)
        self._batch_jacobians_size += size
        return n, chunks

    @staticmethod
    def _shared_jacobian_product(
        v: torch.Tensor, chunks: Iterable[tuple[torch.Tensor, torch.Tensor]], n: int, threads: int
    ) -> torch.Tensor:
        """``V C_batch`` from the Jacobian ``chunks`` of ``n`` samples, in terms shared out to ``threads`` threads."""
        acc = torch.zeros_like(v)
        for jac, h_out in chunks:
            terms = [(jac[i : i + PRODUCT_TERM_SAMPLES], h_out[i : i + PRODUCT_TERM_SAMPLES])
                     for i in range(0, jac.shape[0], PRODUCT_TERM_SAMPLES)]
            for part in side_by_side(*(lambda t=t: _jacobian_term(*t, v) for t in terms), threads=threads):
                acc += part
        return acc.div_(n)

    def dense(self, *, regularized: bool = True) -> torch.Tensor:
        """The explicit ``(p_b, p_b)`` matrix, symmetrised.

        The Hessian takes ``p_b`` Hessian-vector products, vectorised in
        chunks of :func:`vmap_rows` rows, shared out to the thread budget by
        :func:`map_row_chunks`. The Gauss–Newton
        matrix is assembled from per-sample output Jacobians instead,
        ``(1/n) Σᵢ Jᵢᵀ Λᵢ Jᵢ`` as one large matrix product per chunk, which is
        much faster when the model has few outputs.
        """
        ref = next(iter(self.fm.params.values()))
        p = self.block.n
        if self.mode is SecondOrderMode.GaussNewton:
            m = torch.zeros((p, p), dtype=ref.dtype, device=ref.device)
            total = 0
            for x, y in iter_batches(self.loader, self.owner):
                x, y = x.to(ref.device), y.to(ref.device)
                for jac, h_out in self._jacobian_chunks(x, y):
                    s, k, _ = jac.shape
                    m += jac.reshape(s * k, p).T @ torch.bmm(h_out, jac).reshape(s * k, p)
                total += x.shape[0]
            m /= total
        else:
            m = self.matmat(torch.eye(p, dtype=ref.dtype, device=ref.device), regularized=False)
        m = (m + m.T) / 2
        if regularized and self.regularization:
            m.diagonal().add_(self.regularization)
        return m
