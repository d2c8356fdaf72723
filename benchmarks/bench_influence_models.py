"""Influence models: time of factors and influences per method, against the physical core.

Run:  .venv/bin/python benchmarks/bench_influence_models.py [--n-train 5000] [--n-test 500]

Model: a 20→64→64→1 tanh MLP (5,569 parameters, float32), briefly trained on a
synthetic regression task with MSE loss. All methods use the Gauss–Newton
matrix (positive semi-definite, so CG, LiSSA and Nyström are well posed) and
the same regularisation λ.

The *physical core*, measured in the same run with plain torch.func code, is
what any method must at least do once the inverse curvature is known:

* factors:    per-sample gradients of the test points, then one product
              ``G_test @ H⁻¹`` with a precomputed inverse;
* influences: per-sample gradients of the training points, then one product
              ``F @ G_trainᵀ``.

The ideal for DirectInfluence is the core (target: within 2x of it). For the
other methods the figure of merit is accuracy (relative error and correlation
against DirectInfluence with the same curvature) for the time spent.
"""

from __future__ import annotations

import argparse
import time
import warnings
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


def _problem(n_train: int, n_test: int, seed: int = 0):
    import torch
    import torch.nn.functional as F
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    x = torch.randn(n, 20, generator=g)
    w = torch.randn(20, 1, generator=g) / 20**0.5
    y = torch.tanh(x @ w) + 0.1 * torch.sin(3 * x[:, :1]) + 0.05 * torch.randn(n, 1, generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        opt.zero_grad()
        loss = F.mse_loss(model(x[:n_train]), y[:n_train])
        loss.backward()
        opt.step()
    return model, F.mse_loss, x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def physical_core(model, loss, x, y, x_test, y_test, h_inv, repeats: int) -> dict[str, float]:
    """Per-sample gradients (vmap(grad)) plus one matrix product, timed without any library code."""
    import torch
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def sample_loss(p, xi, yi):
        return loss(functional_call(model, p, (xi[None],)), yi[None])

    def grads(xs, ys):
        g = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, xs, ys)
        return torch.cat([t.reshape(len(xs), -1) for t in g.values()], dim=1)

    grads(x_test[:8], y_test[:8])  # warm up
    t_factors, factors = _best_of(lambda: grads(x_test, y_test) @ h_inv, repeats)

    def influences():
        return torch.cat([factors @ grads(x[i : i + 1024], y[i : i + 1024]).T for i in range(0, len(x), 1024)], 1)

    t_infl, _ = _best_of(influences, repeats)
    return {"factors": t_factors, "influences": t_infl}


def _methods(model, loss, lam: float, args) -> dict[str, Callable[[], Any]]:
    from dvl_dask.influence.torch import (
        ArnoldiInfluence,
        CgInfluence,
        DirectInfluence,
        EkfacInfluence,
        InverseHarmonicMeanInfluence,
        LissaInfluence,
        NystroemPreconditioner,
        NystroemSketchInfluence,
    )

    gn = {"second_order_mode": "gauss_newton"}
    hessian = {"direct-hessian": lambda: DirectInfluence(model, loss, regularization=lam)} if args.with_hessian else {}
    return {
        "direct": lambda: DirectInfluence(model, loss, regularization=lam, **gn),
        **hessian,
        "direct-layer": lambda: DirectInfluence(model, loss, regularization=lam, block_structure="layer", **gn),
        f"cg(maxiter={args.cg_maxiter}, nystroem-pc)": lambda: CgInfluence(
            model,
            loss,
            regularization=lam,
            maxiter=args.cg_maxiter,
            preconditioner=NystroemPreconditioner(rank=args.rank),
            warn_on_max_iteration=False,
            **gn,
        ),
        f"lissa(maxiter={args.lissa_maxiter})": lambda: LissaInfluence(
            model,
            loss,
            regularization=lam,
            scale=args.lissa_scale,
            maxiter=args.lissa_maxiter,
            warn_on_max_iteration=False,
            **gn,
        ),
        f"arnoldi(rank={args.rank})": lambda: ArnoldiInfluence(model, loss, rank=args.rank, regularization=lam, **gn),
        f"nystroem(rank={args.rank})": lambda: NystroemSketchInfluence(
            model, loss, rank=args.rank, regularization=lam, **gn
        ),
        "ekfac": lambda: EkfacInfluence(model, loss, regularization=lam),
        "datainf": lambda: InverseHarmonicMeanInfluence(model, loss, regularization=lam),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=500, help="training DataLoader batch size")
    p.add_argument("--regularization", type=float, default=1e-2)
    p.add_argument("--rank", type=int, default=100, help="rank of Arnoldi/Nyström and the CG preconditioner")
    p.add_argument("--cg-maxiter", type=int, default=20)
    p.add_argument("--lissa-maxiter", type=int, default=100)
    p.add_argument("--lissa-scale", type=float, default=None, help="default: 1.2 x the largest eigenvalue")
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs for cheap steps")
    p.add_argument("--methods", default="all", help="comma-separated prefixes of method names, or 'all'")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--with-hessian", action="store_true", help="also time DirectInfluence with the exact Hessian")
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from torch.utils.data import DataLoader, TensorDataset

    from dvl_dask.influence.torch import DirectInfluence

    torch.manual_seed(0)
    model, loss, x, y, x_test, y_test = _problem(args.n_train, args.n_test)
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size)
    n_params = sum(q.numel() for q in model.parameters())
    print(
        f"MLP 20-64-64-1, {n_params} parameters, float32; n_train={len(x)} n_test={len(x_test)} "
        f"batch={args.batch_size} λ={args.regularization}; torch threads={torch.get_num_threads()}"
    )

    # Reference: DirectInfluence with Gauss-Newton curvature; its inverse also feeds the core.
    start = time.perf_counter()
    direct = DirectInfluence(model, loss, regularization=args.regularization, second_order_mode="gauss_newton")
    direct.fit(loader)
    t_direct_fit = time.perf_counter() - start
    h_inv = direct.inverse_curvature[0]
    if args.lissa_scale is None:
        lam_max = float(1.0 / torch.linalg.eigvalsh(h_inv.double()).min())
        args.lissa_scale = 1.2 * lam_max
    core = physical_core(model, loss, x, y, x_test, y_test, h_inv, args.repeats)
    print(
        f"\nphysical core (ideal): factors {core['factors']:.3f} s   influences {core['influences']:.3f} s   "
        f"(per-sample gradients + one matmul with a precomputed H⁻¹)\n"
    )
    t_factors, ref_factors = _best_of(lambda: direct.influence_factors(x_test, y_test), args.repeats)
    t_infl, reference = _best_of(lambda: direct.influences_from_factors(ref_factors, x, y), args.repeats)

    header = f"{'method':<28}{'fit s':>9}{'factors s':>11}{'x core':>8}{'influences s':>14}{'x core':>8}"
    header += f"{'rel.err':>10}{'corr':>8}"
    print(header)
    print("-" * len(header))

    def row(name, t_fit, t_f, t_i, values):
        err = float(torch.linalg.matrix_norm(values - reference) / torch.linalg.matrix_norm(reference))
        corr = float(np.corrcoef(values.reshape(-1).double().numpy(), reference.reshape(-1).double().numpy())[0, 1])
        print(
            f"{name:<28}{t_fit:>9.2f}{t_f:>11.3f}{t_f / core['factors']:>8.2f}{t_i:>14.3f}"
            f"{t_i / core['influences']:>8.2f}{err:>10.1e}{corr:>8.4f}"
        )

    row("direct (reference)", t_direct_fit, t_factors, t_infl, reference)
    wanted = None if args.methods == "all" else [m.strip() for m in args.methods.split(",")]
    for name, build in _methods(model, loss, args.regularization, args).items():
        if name == "direct" or (wanted is not None and not any(name.startswith(w) for w in wanted)):
            continue
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            infl = build().fit(loader)
            t_fit = time.perf_counter() - start
            start = time.perf_counter()
            factors = infl.influence_factors(x_test, y_test)
            t_f = time.perf_counter() - start
            start = time.perf_counter()
            values = infl.influences_from_factors(factors, x, y)
            t_i = time.perf_counter() - start
        row(name, t_fit, t_f, t_i, values)

    ratio = max(t_factors / core["factors"], t_infl / core["influences"])
    print(f"\nDirectInfluence vs core: {ratio:.2f}x (target <= 2x): {'OK' if ratio <= 2 else 'MISSED'}")


if __name__ == "__main__":
    main()
