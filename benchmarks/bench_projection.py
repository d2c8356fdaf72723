"""Random-projection attribution (TrakInfluence): correlation with exact influence as k grows.

Run:  .venv/bin/python benchmarks/bench_projection.py [--n-train 2000] [--n-test 100]

Model: the 20→32→32→1 tanh MLP of the influence benchmarks (1,761 parameters,
float64), trained briefly with Adam on a synthetic regression task, MSE loss.
Reference: DirectInfluence with the same curvature (Gauss–Newton) and the
same regularisation λ = 0.01, and with the exact Hessian. For every
projection dimension k the script prints the Pearson correlation of the
n_test x n_train influence matrices, the relative Frobenius error, and the
fit + influence time. Ideal: correlation 1 (reached exactly with an
orthogonal projection and k >= p, which the tests check).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from dvl_dask.influence.torch import DirectInfluence, LograInfluence, TrakInfluence

    parser = argparse.ArgumentParser()
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--ks", default="32,64,128,256,512,1024,2048")
    parser.add_argument("--projection", default="rademacher")
    parser.add_argument(
        "--large", type=int, default=0, help="instead: time a 100-H-H-1 MLP (H hidden units, ~H² parameters) at k=512"
    )
    parser.add_argument("--logra-only", action="store_true", help="with --large: skip TrakInfluence")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.large:
        _large(args.large, args.n_train, args.n_test, args.logra_only)
        return

    g = torch.Generator().manual_seed(0)
    n = args.n_train + args.n_test
    x = torch.randn(n, 20, generator=g)
    w = torch.randn(20, 1, generator=g) / 20**0.5
    y = torch.tanh(x @ w) + 0.1 * torch.sin(3 * x[:, :1]) + 0.05 * torch.randn(n, 1, generator=g)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(300):
        opt.zero_grad()
        F.mse_loss(net(x[: args.n_train]), y[: args.n_train]).backward()
        opt.step()
    net, x, y = net.double(), x.double(), y.double()
    xs, ys, xt, yt = x[: args.n_train], y[: args.n_train], x[args.n_train :], y[args.n_train :]
    p = sum(q.numel() for q in net.parameters())
    refs = {}
    for mode in ("gauss_newton", "hessian"):
        start = time.perf_counter()
        d = DirectInfluence(net, F.mse_loss, regularization=0.01, second_order_mode=mode).fit((xs, ys))
        refs[mode] = d.influences(xt, yt, xs, ys).numpy()
        print(f"DirectInfluence ({mode}): {time.perf_counter() - start:.2f} s")
    print(f"MLP 20-32-32-1, p={p}, n_train={args.n_train}, n_test={args.n_test}, projection={args.projection}")
    print(f"{'k':>6} {'pearson GN':>11} {'rel.err GN':>11} {'pearson H':>10} {'time s':>8}")
    for k in (int(s) for s in args.ks.split(",")):
        start = time.perf_counter()
        trak = TrakInfluence(net, F.mse_loss, projection_dim=k, projection=args.projection, regularization=0.01)
        v = trak.fit((xs, ys)).influences(xt, yt, xs, ys).numpy()
        elapsed = time.perf_counter() - start
        gn, h = refs["gauss_newton"], refs["hessian"]
        r_gn = np.corrcoef(v.ravel(), gn.ravel())[0, 1]
        r_h = np.corrcoef(v.ravel(), h.ravel())[0, 1]
        err = np.linalg.norm(v - gn) / np.linalg.norm(gn)
        print(f"{k:>6} {r_gn:>11.4f} {err:>11.3f} {r_h:>10.4f} {elapsed:>8.2f}")
    gn_layer = (
        DirectInfluence(net, F.mse_loss, regularization=0.01, second_order_mode="gauss_newton", block_structure="layer")
        .fit((xs, ys))
        .influences(xt, yt, xs, ys)
        .numpy()
    )
    print("LograInfluence (k_in x k_out a layer; sampled Gauss-Newton, 1 draw a sample):")
    print(f"{'k_in':>6} {'k':>6} {'pearson GN':>11} {'pearson GN layer':>17} {'time s':>8}")
    for d in (4, 8, 16, 33):
        start = time.perf_counter()
        logra = LograInfluence(
            net, F.mse_loss, input_dim=d, output_dim=min(d, 32), regularization=0.01, curvature="gauss_newton"
        )
        v = logra.fit((xs, ys)).influences(xt, yt, xs, ys).numpy()
        elapsed = time.perf_counter() - start
        r_gn = np.corrcoef(v.ravel(), refs["gauss_newton"].ravel())[0, 1]
        r_layer = np.corrcoef(v.ravel(), gn_layer.ravel())[0, 1]
        print(f"{d:>6} {logra.n_parameters:>6} {r_gn:>11.4f} {r_layer:>17.4f} {elapsed:>8.2f}")


def _large(hidden: int, n_train: int, n_test: int, logra_only: bool) -> None:
    """Time fit and influences of TrakInfluence on a model too large for any exact method."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from dvl_dask.influence.torch import LograInfluence, TrakInfluence

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_test, 100, generator=g)
    y = torch.randn(n_train + n_test, 1, generator=g)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(100, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    p = sum(q.numel() for q in net.parameters())
    print(f"MLP 100-{hidden}-{hidden}-1, p={p:,} (float32), n_train={n_train}, n_test={n_test}, 1 thread")
    start = time.perf_counter()
    logra = LograInfluence(net, F.mse_loss, input_dim=32, output_dim=32, regularization=1e-3, curvature="gauss_newton")
    logra.fit((x[:n_train], y[:n_train]))
    fit = time.perf_counter() - start
    start = time.perf_counter()
    logra.influences(x[n_train:], y[n_train:], x[:n_train], y[:n_train])
    infl = time.perf_counter() - start
    print(
        f"LograInfluence 32x32 a layer (k={logra.n_parameters}): fit {fit:.1f} s ({1e3 * fit / n_train:.1f} ms a "
        f"training point), influences {infl:.1f} s"
    )
    for curvature in () if logra_only else ("empirical_fisher", "gauss_newton"):
        start = time.perf_counter()
        trak = TrakInfluence(net, F.mse_loss, projection_dim=512, regularization=1e-3, curvature=curvature)
        trak.fit((x[:n_train], y[:n_train]))
        fit = time.perf_counter() - start
        start = time.perf_counter()
        trak.influences(x[n_train:], y[n_train:], x[:n_train], y[:n_train])
        infl = time.perf_counter() - start
        print(
            f"{curvature:>17}: fit {fit:.1f} s ({1e3 * fit / n_train:.0f} ms a training point), "
            f"influences {infl:.1f} s; p x k = {p * 512:,} projection entries, never held at once"
        )


if __name__ == "__main__":
    main()
