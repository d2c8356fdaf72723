"""Influence calculators: pairs per second against the bare core, and an out-of-core write to zarr.

Run:  .venv/bin/python benchmarks/bench_influence_calculators.py [--part speed|per-pair|ooc|all]

**speed** -- the 20→64→64→1 tanh MLP of ``bench_influence_models.py`` (5,569
parameters, float32), 500 test × 5,000 training points, Gauss–Newton curvature,
λ = 0.01; DirectInfluence and CgInfluence (20 iterations, rank-100 Nyström
preconditioner). Measured in the same run:

* *bare core*: plain ``torch.func`` code in this process, one torch thread --
  per-sample gradients (``vmap(grad)``) and matrix products with a precomputed
  ``H⁻¹`` (``G_test H⁻¹``, then ``F G_trainᵀ``). The least any method can do.
* *in-memory model*: ``model.influences(x_test, y_test, x, y)`` in this process,
  one thread (for CG the conjugate-gradient solve is part of the work).
* *sequential*: ``SequentialInfluenceCalculator`` in this process, one thread.
* *dask*: ``DaskInfluenceCalculator`` on a ``LocalCluster`` of 2 single-threaded
  worker processes, ``.compute()`` of the matrix into the client (warm workers);
  and the same streamed to a local zarr store.

Chunks: 250 test points (one test chunk per worker) × 1,000 training points.

**per-pair** (issue 30) -- the same MLP and DirectInfluence: the sequential
calculator in this process with 2 torch threads against the Dask calculator on
one worker process with 2 threads (the client passed: the model is
scattered once and each worker thread computes with its own replica; inputs
persisted in the cluster before the clock starts), store and recompute
gradients; also the same graph on dask's threads scheduler in this process
(the calculator without distributed's worker), and the Dask calculator's values
kept in the worker (``persist``: no transfer to the client, as before a
``to_zarr`` or a reduction). The engines run interleaved,
best of ``--pair-repeats`` each. Prints time per million pairs, the ratio
(target: the Dask calculator not slower per pair) and the largest difference
of values; also the median and range of the ratios repeat by repeat (runs
taken back to back, so that the machine's drift cancels out).
With ``--pair-train-sizes 5000,20000`` every engine runs at each size and
the marginal cost per pair (the slope) is printed beside the fixed cost of one
computation; both calculators also write the matrix to a local zarr store.
The sequential calculator runs both in this process and in a process of its
own (spawned once; ratios are taken against that one), so that no other
engine's allocations are in its heap (benchmarks/README.md, "Per pair: what a
computation costs once and what it costs per pair").
``--worker-malloc-threshold`` and ``--worker-huge-pages`` set the worker's
allocator environment (see docs/deployment.md).

**ooc** -- out of core: a 50,000 × 50,000 float32 influence matrix (10 GB)
of a tiny model (linear, 8 features) written to zarr in 2,000 × 2,000 blocks by
the Dask calculator on 2 single-threaded workers, while the resident memory of
the whole process tree (this process, the scheduler, the nanny and worker
processes) is sampled every 0.1 s with psutil. ``--ooc-engine sequential`` does
the same in this process with the sequential calculator. ``--ooc-n`` sets the
matrix side for a smaller run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


class TreeMemory:
    """Peak resident memory (RSS) summed over this process and all its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.1) -> None:
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self.peak_processes = 0
        self.per_process: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        import psutil

        total, n = 0, 0
        for p in [self._proc, *self._proc.children(recursive=True)]:
            try:
                rss = p.memory_info().rss
                name = "this process" if p.pid == self._proc.pid else " ".join(p.cmdline()[-2:])[-40:]
            except psutil.Error:
                continue
            total += rss
            n += 1
            key = f"{p.pid} {name}"
            self.per_process[key] = max(self.per_process.get(key, 0), rss)
        if total > self.peak:
            self.peak, self.peak_processes = total, n
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def __enter__(self) -> TreeMemory:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def _warm_up() -> None:
    """Import torch and compile vmap(grad) in a worker before timing."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.func import functional_call, grad, vmap

    torch.set_num_threads(1)
    m = nn.Linear(3, 1)
    params = dict(m.named_parameters())
    vmap(grad(lambda p, x, y: F.mse_loss(functional_call(m, p, (x[None],)), y[None])), in_dims=(None, 0, 0))(
        params, torch.randn(4, 3), torch.randn(4, 1)
    )


# -- speed ----------------------------------------------------------------------------------


def speed(args: argparse.Namespace) -> None:
    import dask.array as da
    import torch
    from bench_influence_models import _problem, physical_core
    from distributed import Client, LocalCluster

    import dvl_dask
    from dvl_dask.influence import DaskInfluenceCalculator, SequentialInfluenceCalculator, influence_to_zarr
    from dvl_dask.influence.torch import (
        CgInfluence,
        DirectInfluence,
        NestedTorchCatAggregator,
        NystroemPreconditioner,
        TorchNumpyConverter,
    )

    torch.set_num_threads(1)
    model_nn, loss, x, y, x_test, y_test = _problem(args.n_train, args.n_test)
    n_pairs = args.n_train * args.n_test
    lam = 0.01
    print(f"MLP 20-64-64-1 (5569 parameters, float32), {args.n_test} test x {args.n_train} train = {n_pairs:,} "
          f"pairs; chunks {args.test_chunk} test x {args.train_chunk} train; torch threads 1")
    direct = DirectInfluence(model_nn, loss, regularization=lam, second_order_mode="gauss_newton").fit((x, y))
    cg = CgInfluence(model_nn, loss, regularization=lam, second_order_mode="gauss_newton", maxiter=20,
                     preconditioner=NystroemPreconditioner(rank=100), warn_on_max_iteration=False).fit((x, y))
    core = physical_core(model_nn, loss, x, y, x_test, y_test, direct.inverse_curvature[0], args.repeats)
    t_core = core["factors"] + core["influences"]
    print(f"\nbare core (gradients + matrix products, 1 thread): {t_core:.2f} s = {n_pairs / t_core:,.0f} pairs/s")

    def pairs(x_, y_, size):
        return [(x_[i : i + size], y_[i : i + size]) for i in range(0, len(x_), size)]

    rows: list[tuple[str, str, float, float]] = []
    seq_results = {}
    for name, model in (("direct", direct), ("cg", cg)):
        repeats = args.repeats if name == "direct" else 1
        t_mem, reference = _best_of(lambda m=model: m.influences(x_test, y_test, x, y), repeats)
        rows.append((name, "in-memory model.influences (1 process)", t_mem, 0.0))
        calc = SequentialInfluenceCalculator(model, train_gradients="store")
        t_seq, seq_values = _best_of(
            lambda c=calc: c.influences(pairs(x_test, y_test, args.test_chunk), pairs(x, y, args.train_chunk)).compute(
                NestedTorchCatAggregator()
            ),
            repeats,
        )
        err = float((seq_values - reference).abs().max() / reference.abs().max())
        rows.append((name, "sequential calculator, store gradients (1 process)", t_seq, err))
        seq_results[name] = reference

    tmp = tempfile.mkdtemp(prefix="dvl-bench-")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        client.run(_warm_up)
        counter = itertools.count()

        def inputs(n: int | None = None) -> tuple[Any, ...]:
            # Fresh input names for every run: graph keys are deterministic, and a cluster still holding
            # the results of the previous run would otherwise return them without computing.
            k = next(counter)
            sl = slice(None) if n is None else slice(0, n)
            return (
                da.from_array(x_test[sl].numpy(), chunks=(args.test_chunk, -1), name=f"x-test-{k}"),
                da.from_array(y_test[sl].numpy(), chunks=(args.test_chunk, -1), name=f"y-test-{k}"),
                da.from_array(x[sl].numpy(), chunks=(args.train_chunk, -1), name=f"x-train-{k}"),
                da.from_array(y[sl].numpy(), chunks=(args.train_chunk, -1), name=f"y-train-{k}"),
            )

        for name, model in (("direct", direct), ("cg", cg)):
            reference = seq_results[name].numpy()
            repeats = args.repeats if name == "direct" else 1
            for gradients in ("store", "recompute"):
                if name == "cg" and gradients == "recompute":
                    continue
                start = time.perf_counter()
                calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), client, train_gradients=gradients)
                t_scatter = time.perf_counter() - start
                calc.influences(*inputs(8)).compute()  # warm the model on the workers
                t_dask, values = _best_of(lambda c=calc: c.influences(*inputs()).compute(), repeats)
                err = float(np.abs(values - reference).max() / np.abs(reference).max())
                label = f"dask, 2 workers, {gradients} gradients (scatter {t_scatter:.1f} s)"
                rows.append((name, label, t_dask, err))

            calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), client, train_gradients="store")

            def write(c: Any = calc, n: str = name) -> str:
                url = os.path.join(tmp, f"{n}.zarr")
                return influence_to_zarr(c.influences(*inputs()), url, overwrite=True)

            t_zarr, url = _best_of(write, repeats)
            back = dvl_dask.open_influence(url).values
            err = float(np.abs(back - reference).max() / np.abs(reference).max())
            rows.append((name, "dask, 2 workers, store gradients -> local zarr", t_zarr, err))
    shutil.rmtree(tmp, ignore_errors=True)

    header = f"\n{'model':<8}{'engine':<56}{'time s':>8}{'pairs/s':>12}{'x core':>8}{'max rel.err':>13}"
    print(header)
    print("-" * (len(header) - 1))
    print(f"{'-':<8}{'bare core (1 process)':<56}{t_core:>8.2f}{n_pairs / t_core:>12,.0f}{1.0:>8.2f}{'-':>13}")
    for name, engine, t, err in rows:
        print(f"{name:<8}{engine:<56}{t:>8.2f}{n_pairs / t:>12,.0f}{t / t_core:>8.2f}{err:>13.1e}")
    direct_dask = next(t for n, e, t, _ in rows if n == "direct" and e.startswith("dask, 2 workers, store"))
    verdict = "OK" if direct_dask <= 2 * t_core else "MISSED"
    print(f"\nDirectInfluence, dask calculator vs bare core: {direct_dask / t_core:.2f}x (target <= 2x): {verdict}")


# -- per pair: one 2-thread worker against the sequential calculator (issue 30) -------------------


def _worker_malloc(threshold: int | None, huge_pages: bool = False) -> dict[str, Any]:
    """dask config giving the workers glibc's mmap and trim thresholds of ``threshold`` bytes (None: distributed's
    default environment, ``MALLOC_TRIM_THRESHOLD_=65536``, which makes every allocation above 128 KiB a fresh
    mmap: page faults on each, see docs/deployment.md); ``huge_pages``: torch's ``THP_MEM_ALLOC_ENABLE=1`` (its
    allocations of 2 MiB and more are advised to use transparent huge pages: one fault per 2 MiB)."""
    prefix = "distributed.nanny.pre-spawn-environ."
    env: dict[str, Any] = {f"{prefix}THP_MEM_ALLOC_ENABLE": 1} if huge_pages else {}
    if threshold is not None:
        env.update({f"{prefix}MALLOC_TRIM_THRESHOLD_": threshold, f"{prefix}MALLOC_MMAP_THRESHOLD_": threshold})
    return env


_OWN: dict[str, Any] = {}


def _own_process_start(payload: str) -> None:
    """Initializer of the sequential calculator's own process: the fitted model and the data, 2 torch threads."""
    import torch

    torch.set_num_threads(2)
    _OWN.update(torch.load(payload, weights_only=False))


def _own_process_run(gradients: str, n_train: int, test_chunk: int, train_chunk: int, url: str | None
                     ) -> tuple[float, Any]:
    """Seconds of the sequential calculator in its own process (returning the matrix, or writing it to ``url``)."""
    from dvl_dask.influence import SequentialInfluenceCalculator
    from dvl_dask.influence.torch import NestedTorchCatAggregator, TorchNumpyConverter

    calc = _OWN.setdefault(gradients, SequentialInfluenceCalculator(_OWN["model"], train_gradients=gradients))
    x, y, x_test, y_test = _OWN["x"][:n_train], _OWN["y"][:n_train], _OWN["x_test"], _OWN["y_test"]

    def pairs(a: Any, b: Any, size: int) -> list[Any]:
        return [(a[i : i + size], b[i : i + size]) for i in range(0, len(a), size)]

    start = time.perf_counter()
    lazy = calc.influences(pairs(x_test, y_test, test_chunk), pairs(x, y, train_chunk))
    if url is None:
        out = lazy.compute(NestedTorchCatAggregator()).numpy()
    else:
        lazy.to_zarr(url, TorchNumpyConverter())
        out = None
    return time.perf_counter() - start, out


def per_pair(args: argparse.Namespace) -> None:
    """Seconds per million pairs: the sequential calculator in this process (torch threads 2) against the
    Dask calculator on one worker process with 2 threads, same model, same chunks; values must be identical.

    With two or more ``--pair-train-sizes`` every engine also runs at each size (interleaved) and the marginal
    cost per pair -- the slope between the smallest and the largest size -- is printed next to the fixed cost
    of one computation (the intercept): distributed's submit, scheduling and gather round trips are paid once
    per ``compute``, whatever its size, and are not a cost per pair."""
    import dask
    import dask.array as da
    import torch
    from bench_influence_models import _problem
    from distributed import Client, LocalCluster, wait

    from dvl_dask import open_influence
    from dvl_dask.influence import (
        DaskInfluenceCalculator,
        DisableClientSingleThreadCheck,
        SequentialInfluenceCalculator,
        influence_to_zarr,
    )
    from dvl_dask.influence.torch import DirectInfluence, NestedTorchCatAggregator, TorchNumpyConverter

    torch.set_num_threads(2)
    sizes = sorted({int(n) for n in args.pair_train_sizes.split(",")}) if args.pair_train_sizes else [args.n_train]
    model_nn, loss, x_all, y_all, x_test, y_test = _problem(sizes[-1], args.n_test)
    model = DirectInfluence(model_nn, loss, regularization=0.01, second_order_mode="gauss_newton").fit(
        (x_all[: sizes[0]], y_all[: sizes[0]]))
    listed = " / ".join(f"{args.n_test} test x {n} train = {args.n_test * n:,} pairs" for n in sizes)
    print(f"MLP 20-64-64-1, {listed}; chunks "
          f"{args.test_chunk} x {args.train_chunk}; DirectInfluence (Gauss-Newton); worker malloc thresholds: "
          f"{args.worker_malloc_threshold or 'distributed default (trim 65536)'}"
          f"{'; worker THP_MEM_ALLOC_ENABLE=1' if args.worker_huge_pages else ''}")

    def pairs(x_, y_, size):
        return [(x_[i : i + size], y_[i : i + size]) for i in range(0, len(x_), size)]

    engines = ("own", "sequential", "dask", "threads", "kept", "own-zarr", "sequential-zarr", "dask-zarr")
    labels = {
        "own": "sequential, {g} gradients, in its own process (torch threads 2)",
        "own-zarr": "sequential, {g} gradients, in its own process, written to a local zarr store",
        "sequential-zarr": "sequential, {g} gradients, written to a local zarr store",
        "dask-zarr": "dask, 1 worker x 2 threads, {g} gradients, written to a local zarr store by the worker",
        "sequential": "sequential, {g} gradients (torch threads 2)",
        "dask": "dask, 1 worker x 2 threads, {g} gradients (worker torch threads {t})",
        "threads": "dask threads scheduler here, 2 threads, {g} gradients",
        "kept": "dask, 1 worker x 2 threads, {g} gradients, kept in the worker (persist)",
    }
    rows = []  # (gradients, engine, n_train, seconds, max |diff|)
    each: dict[tuple[str, str, int], list[float]] = {}  # every repeat's seconds, in the order run
    store_dir = tempfile.mkdtemp(prefix="dvl-per-pair-")
    # The sequential calculator also runs in a process of its own, whose heap no other engine touches: in this
    # process it inherits the threads scheduler's and zarr's allocations (10-40% slower at 10 M pairs).
    payload = os.path.join(store_dir, "payload.pt")
    torch.save({"model": model, "x": x_all, "y": y_all, "x_test": x_test, "y_test": y_test}, payload)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    own = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_own_process_start,
                              initargs=(payload,))
    with own, dask.config.set(_worker_malloc(args.worker_malloc_threshold, args.worker_huge_pages)), \
            LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0",
                         host="127.0.0.1") as cluster, Client(cluster) as client:
        counter = itertools.count()

        def inputs(n_train: int, n: int | None = None, counter: Any = counter) -> tuple[Any, ...]:
            k, sl = next(counter), slice(None) if n is None else slice(0, n)
            return tuple(da.from_array(t[sl].numpy(), chunks=(c, -1), name=f"{name}-{k}") for t, c, name in (
                (x_test, args.test_chunk, "xt"), (y_test, args.test_chunk, "yt"),
                (x_all[:n_train], args.train_chunk, "x"), (y_all[:n_train], args.train_chunk, "y")))

        threads = next(iter(client.run(lambda: __import__("torch").get_num_threads()).values()))
        for gradients in ("store", "recompute"):
            calc = SequentialInfluenceCalculator(model, train_gradients=gradients)
            # The client is passed (torch models make one replica per worker thread, so a 2-thread worker is
            # accepted): the model is scattered once. Inputs are persisted in the cluster under fresh names
            # before the clock starts, as data loaded by the cluster (e.g. from zarr) would be.
            dcalc = DaskInfluenceCalculator(model, TorchNumpyConverter(), client, train_gradients=gradients)
            client.compute(dcalc.influences(*inputs(sizes[0], 8))).result()  # warm the worker, then the process
            own.submit(_own_process_run, gradients, sizes[0], args.test_chunk, args.train_chunk, None).result()
            # The same graph on dask's threads scheduler in this process: what the calculator costs without
            # distributed's worker (its allocator settings, event loop, per-task bookkeeping, result transfer).
            tcalc = DaskInfluenceCalculator(model, TorchNumpyConverter(), DisableClientSingleThreadCheck,
                                            train_gradients=gradients)

            def timed(engine: str, n_train: int, calc: Any = calc, dcalc: Any = dcalc, tcalc: Any = tcalc,
                      gradients: str = gradients) -> tuple[float, Any]:
                x, y = x_all[:n_train], y_all[:n_train]
                url = os.path.join(store_dir, "per-pair.zarr")
                shutil.rmtree(url, ignore_errors=True)
                if engine in ("own", "own-zarr"):
                    t, out = own.submit(_own_process_run, gradients, n_train, args.test_chunk, args.train_chunk,
                                        url if engine == "own-zarr" else None).result()
                    return t, (open_influence(url).values if engine == "own-zarr" else out)
                if engine == "sequential-zarr":
                    start = time.perf_counter()
                    calc.influences(pairs(x_test, y_test, args.test_chunk),
                                    pairs(x, y, args.train_chunk)).to_zarr(url, TorchNumpyConverter())
                    return time.perf_counter() - start, open_influence(url).values
                if engine == "sequential":
                    start = time.perf_counter()
                    out = calc.influences(pairs(x_test, y_test, args.test_chunk),
                                          pairs(x, y, args.train_chunk)).compute(NestedTorchCatAggregator())
                    return time.perf_counter() - start, out.numpy()
                if engine == "threads":
                    local = [da.from_array(t.numpy(), chunks=(c, -1)) for t, c in (
                        (x_test, args.test_chunk), (y_test, args.test_chunk), (x, args.train_chunk),
                        (y, args.train_chunk))]
                    start = time.perf_counter()
                    out = tcalc.influences(*local).compute(scheduler="threads", num_workers=2)
                    return time.perf_counter() - start, out
                arrays = client.persist(list(inputs(n_train)))
                wait(arrays)
                start = time.perf_counter()
                if engine == "dask":
                    out = client.compute(dcalc.influences(*arrays)).result()
                    return time.perf_counter() - start, out
                if engine == "dask-zarr":
                    influence_to_zarr(dcalc.influences(*arrays), url)
                    return time.perf_counter() - start, open_influence(url).values
                # "kept": the values computed and kept in the worker, as before a to_zarr or a reduction.
                wait(client.persist(dcalc.influences(*arrays)))
                return time.perf_counter() - start, None

            # Interleaved, best of each: this VM's speed drifts by 10-15% within minutes. Every repeat's times
            # are kept too, for ratios of runs taken back to back (paired).
            best: dict[tuple[str, int], tuple[float, Any]] = {}
            for _ in range(args.pair_repeats):
                for n_train in sizes:
                    for engine in engines:
                        t, out = timed(engine, n_train)
                        each.setdefault((gradients, engine, n_train), []).append(t)
                        if (engine, n_train) not in best or t < best[engine, n_train][0]:
                            best[engine, n_train] = (t, out)
            for n_train in sizes:
                reference = best["sequential", n_train][1]
                for engine in engines:
                    t, out = best[engine, n_train]
                    diff = float("nan") if out is None else float(np.abs(out - reference).max())
                    rows.append((gradients, engine, n_train, t, diff))
    shutil.rmtree(store_dir, ignore_errors=True)
    print(f"\n{'engine':<82}{'n_train':>8}{'time s':>8}{'s / 1e6 pairs':>15}{'max |diff|':>12}")
    for gradients, engine, n_train, t, diff in rows:
        shown = "-" if np.isnan(diff) else f"{diff:.1e}"
        label = labels[engine].format(g=gradients, t=threads)
        print(f"{label:<82}{n_train:>8}{t:>8.2f}{t / (n_train * args.n_test) * 1e6:>15.3f}{shown:>12}")
    times = {(g, e, n): t for g, e, n, t, _ in rows}
    # Each engine against the sequential calculator doing the same: returning the matrix, or writing it to zarr.
    baseline = {e: "own-zarr" if e.endswith("zarr") else "own" for e in engines}
    compared = [e for e in engines if e != baseline[e]]
    targets = ("dask", "dask-zarr")
    for gradients in ("store", "recompute"):
        for n_train in sizes:
            for engine in compared:
                ratio = times[gradients, engine, n_train] / times[gradients, baseline[engine], n_train]
                by_repeat = sorted(e / b for e, b in zip(each[gradients, engine, n_train],
                                                         each[gradients, baseline[engine], n_train]))
                print(f"{labels[engine].split(' (')[0].format(g=gradients)}, {n_train} train: {ratio:.2f}x the "
                      f"sequential time (best of each); repeat by repeat median {np.median(by_repeat):.2f}x "
                      f"(range {by_repeat[0]:.2f}-{by_repeat[-1]:.2f}x)"
                      f"{' (whole computation)' if engine in targets else ''}")
        if len(sizes) > 1:
            small, large = sizes[0], sizes[-1]
            added = (large - small) * args.n_test / 1e6

            def slope(engine: str, g: str = gradients, small: int = small, large: int = large,
                      added: float = added) -> float:
                return (times[g, engine, large] - times[g, engine, small]) / added

            def fixed(engine: str, g: str = gradients, small: int = small) -> float:
                return times[g, engine, small] - slope(engine) * small * args.n_test / 1e6

            def paired(engine: str, g: str = gradients, small: int = small, large: int = large,
                       added: float = added) -> list[float]:
                # Per repeat: the engine's slope over the baseline's, from runs of the same repeat (minutes apart
                # at most), so a drift of the machine's speed between repeats cancels out.
                base = baseline[engine]
                return sorted(
                    (el - es) / (bl - bs)
                    for es, el, bs, bl in zip(each[g, engine, small], each[g, engine, large], each[g, base, small],
                                              each[g, base, large])
                    if bl > bs)  # a repeat whose baseline did not grow with the size has no slope

            for engine in compared:
                base = baseline[engine]
                ratios = paired(engine)
                print(f"{labels[engine].split(' (')[0].format(g=gradients)}: per pair, repeat by repeat: median "
                      f"{np.median(ratios):.2f}x the sequential (range {ratios[0]:.2f}-{ratios[-1]:.2f}x)"
                      f"{' (target <= 1x)' if engine in targets else ''}")
            for engine in compared:
                base = baseline[engine]
                print(f"{labels[engine].split(' (')[0].format(g=gradients)}: marginal {slope(engine):.3f} s per "
                      f"1e6 pairs against the sequential {slope(base):.3f} = {slope(engine) / slope(base):.2f}x"
                      f"{' (target <= 1x)' if engine in targets else ''}; fixed cost per computation "
                      f"{fixed(engine) * 1e3:.0f} ms (sequential {fixed(base) * 1e3:.0f} ms)")


# -- out of core ---------------------------------------------------------------------------------


def out_of_core(args: argparse.Namespace) -> None:
    import dask.array as da
    import torch
    import torch.nn.functional as F
    from torch import nn

    from dvl_dask.influence import (
        DaskInfluenceCalculator,
        SequentialInfluenceCalculator,
        influence_to_zarr,
    )
    from dvl_dask.influence.torch import DirectInfluence, TorchNumpyConverter

    n, chunk = args.ooc_n, args.ooc_chunk
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x = torch.randn(n, 8)
    y = x @ torch.randn(8, 1) + 0.1 * torch.randn(n, 1)
    model = DirectInfluence(nn.Linear(8, 1), F.mse_loss, regularization=0.01).fit((x, y))
    out_dir = args.ooc_dir or tempfile.mkdtemp(prefix="dvl-ooc-")
    url = os.path.join(out_dir, "ooc.zarr")
    shutil.rmtree(url, ignore_errors=True)
    size_gb = n * n * 4 / 1e9
    print(f"\nout of core: {n:,} x {n:,} float32 = {size_gb:.1f} GB, blocks {chunk} x {chunk} "
          f"({(-(-n // chunk)) ** 2:,} blocks), engine {args.ooc_engine}, store {url}")
    with TreeMemory() as mem:
        baseline = mem.sample()
        start = time.perf_counter()
        if args.ooc_engine == "dask":
            from distributed import Client, LocalCluster

            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                              host="127.0.0.1", memory_limit="1GiB") as cluster, Client(cluster) as client:
                client.run(_warm_up)
                t_start = time.perf_counter() - start
                calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), client)
                dx = da.from_array(x.numpy(), chunks=(chunk, -1))
                dy = da.from_array(y.numpy(), chunks=(chunk, -1))
                t_graph = time.perf_counter()
                delayed = influence_to_zarr(calc.influences(dx, dy, dx, dy), url, compute=False)
                t_graph = time.perf_counter() - t_graph
                t_write = time.perf_counter()
                delayed.compute()
                t_write = time.perf_counter() - t_write
        else:
            t_start, t_graph = 0.0, 0.0
            t_write = time.perf_counter()
            pairs = [(x[i : i + chunk], y[i : i + chunk]) for i in range(0, n, chunk)]
            SequentialInfluenceCalculator(model).influences(pairs, pairs).to_zarr(url, TorchNumpyConverter())
            t_write = time.perf_counter() - t_write
    total = time.perf_counter() - start
    stored = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(url) for f in files)
    from dvl_dask import open_influence

    back = open_influence(url)
    i, j = n // 3, (2 * n) // 3
    check = float(back[i, j].values)
    expect = float(model.influences(x[i : i + 1], y[i : i + 1], x[j : j + 1], y[j : j + 1])[0, 0])
    print(f"cluster start {t_start:.1f} s, graph {t_graph:.2f} s, write {t_write:.1f} s "
          f"({size_gb / t_write:.2f} GB/s, {n * n / t_write:,.0f} pairs/s), total {total:.1f} s")
    print(f"stored {stored / 1e9:.2f} GB on disk; spot check [{i}, {j}]: {check:.6g} vs {expect:.6g}")
    print(f"peak RSS of the process tree: {mem.peak / 2**30:.2f} GiB over {mem.peak_processes} processes "
          f"(at start {baseline / 2**30:.2f} GiB); target < 2 GiB: {'OK' if mem.peak < 2 * 2**30 else 'MISSED'}")
    for key, rss in sorted(mem.per_process.items(), key=lambda kv: -kv[1]):
        print(f"    peak {rss / 2**20:7.0f} MiB  pid {key}")
    if not args.keep:
        shutil.rmtree(url, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--part", choices=["speed", "ooc", "per-pair", "all"], default="all")
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--test-chunk", type=int, default=250)
    p.add_argument("--train-chunk", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pair-repeats", type=int, default=5, help="per-pair: interleaved runs of each engine (best)")
    p.add_argument("--pair-train-sizes", default=None,
                   help="per-pair: comma-separated training sizes (default: --n-train); with two or more, the "
                        "marginal cost per pair (slope from the smallest to the largest) and the fixed cost "
                        "per computation are printed")
    p.add_argument("--worker-malloc-threshold", type=int, default=None,
                   help="per-pair: glibc mmap/trim thresholds of the worker in bytes (default: distributed's env)")
    p.add_argument("--worker-huge-pages", action="store_true",
                   help="per-pair: THP_MEM_ALLOC_ENABLE=1 in the worker (torch's large allocations on huge pages)")
    p.add_argument("--ooc-n", type=int, default=50_000)
    p.add_argument("--ooc-chunk", type=int, default=2000)
    p.add_argument("--ooc-engine", choices=["dask", "sequential"], default="dask")
    p.add_argument("--ooc-dir", default=None, help="directory for the out-of-core store (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the out-of-core store")
    args = p.parse_args()
    if args.part in ("speed", "all"):
        speed(args)
    if args.part in ("per-pair", "all"):
        per_pair(args)
    if args.part in ("ooc", "all"):
        out_of_core(args)


if __name__ == "__main__":
    main()
