"""Variance reduction at equal utility evaluations: plain vs antithetic vs stratified.

Run:  .venv/bin/python benchmarks/bench_variance_reduction.py [--seeds 100] [--evaluations 2400] [--only stratified]

For each game and value (Shapley, Banzhaf), every sampler gets the same
number of utility evaluations; over ``--seeds`` seeds we report the root mean
squared error against the exact values (averaged over players), its ratio to
plain sampling (variance ratio = its square), the mean reported stderr, and
the +-2 stderr coverage. Blocks are called directly (no scheduler): this
measures the estimators, not Dask (and games skip their per-call
coalition check, which costs 10x the game itself).

Budgets at ``E`` evaluations and ``n`` players: permutations ``E / n``;
Banzhaf/semivalue coalitions ``E / (n + 1)``; stratified samples per player
``E / (2 n)``; MSR coalitions ``E``. Neyman-allocated stratified runs use
the estimator's own block size (at least ``5 * pilot * n`` samples per
player), so at the default budget a run is one block whose pilot takes
``2 n`` of its ``E / (2 n)`` samples per player.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

import numpy as np


def _exact(game, weight) -> np.ndarray:
    n = game.n_players
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            w = weight(n, k)
            for s in itertools.combinations(others, k):
                phi[i] += w * (game([*s, i]) - game(list(s)))
    return phi


def _estimate(method, game, options, n_items, seed, per_block=50):
    """``per_block=None``: the estimator's own block size (Neyman: at least 5 pilots per block)."""
    from dvl_dask.valuation._montecarlo import ESTIMATOR_FACTORIES
    from dvl_dask.valuation._samplers import child_seed
    from dvl_dask.valuation._stats import merge_all

    estimator = ESTIMATOR_FACTORIES[method](game, **options)
    if per_block is None:
        per_block = estimator.items_per_block(game.n_players)
    root = np.random.SeedSequence(seed)
    blocks = [
        estimator.block(game, child_seed(root, b), min(per_block, n_items - start), None)
        for b, start in enumerate(range(0, n_items, per_block))
    ]
    value, stderr, _ = estimator.finalize(merge_all(blocks))
    return value, stderr


def _shapley_weight(n: int, k: int) -> float:
    return 1.0 / (n * math.comb(n - 1, k))


def _banzhaf_weight(n: int, k: int) -> float:
    return 2.0 ** -(n - 1)


def main() -> None:
    from dvl_dask.testing.games import AirportGame, ShoesGame, Unchecked, WeightedVotingGame
    from dvl_dask.valuation import shapley_coefficient

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--evaluations", type=int, default=2400)
    parser.add_argument("--only", default="", help="run only samplers whose label contains this (plus the plain ones)")
    args = parser.parse_args()
    budget = args.evaluations

    games = {
        "voting-12 (rare player)": WeightedVotingGame([12, 11, 10, 10, 9, 9, 8, 8, 7, 6, 6, 1], quota=72),
        "airport-8": AirportGame([1.0, 2.0, 2.5, 4.0, 5.0, 7.5, 8.0, 10.0]),
        "shoes-3-4": ShoesGame(3, 4),
    }
    print(f"evaluations per run={budget}  seeds={args.seeds}")
    print(f"{'game':24s} {'value':8s} {'sampler':22s} {'RMSE':>9s} {'vs plain':>9s} {'var ratio':>9s} "
          f"{'mean stderr':>11s} {'coverage':>8s}")
    for gname, game in games.items():
        n = game.n_players
        shapley, banzhaf = _shapley_weight, _banzhaf_weight
        rows = [
            ("shapley", shapley, "permutation", "permutation_shapley", {}, budget // n),
            ("shapley", shapley, "antithetic permutation", "permutation_shapley", {"antithetic": True}, budget // n),
            ("shapley", shapley, "stratified (equal)", "semivalue",
             {"coefficient": shapley_coefficient, "sampler": "stratified"}, budget // (2 * n)),
            ("shapley", shapley, "stratified (neyman)", "semivalue",
             {"coefficient": shapley_coefficient, "sampler": "stratified-neyman"}, budget // (2 * n)),
            ("banzhaf", banzhaf, "uniform", "banzhaf", {}, budget // (n + 1)),
            ("banzhaf", banzhaf, "antithetic", "banzhaf", {"sampler": "antithetic"}, budget // (n + 1)),
            ("banzhaf", banzhaf, "stratified (equal)", "banzhaf", {"sampler": "stratified"}, budget // (2 * n)),
            ("banzhaf", banzhaf, "stratified (neyman)", "banzhaf", {"sampler": "stratified-neyman"},
             budget // (2 * n)),
            ("banzhaf", banzhaf, "MSR", "msr_banzhaf", {}, budget),
        ]
        plain: dict[str, float] = {}
        exact_cache: dict[str, np.ndarray] = {}
        plain_labels = ("permutation", "uniform")
        rows = [r for r in rows if not args.only or args.only in r[2] or r[2] in plain_labels]
        for value_name, weight, label, method, options, n_items in rows:
            exact = exact_cache.setdefault(value_name, _exact(game, weight))
            start = time.perf_counter()
            per_block = None if "neyman" in label else 50
            fast = Unchecked(game)
            runs = [_estimate(method, fast, options, n_items, seed, per_block) for seed in range(args.seeds)]
            values = np.array([v for v, _ in runs])
            stderr = np.array([s for _, s in runs])
            rmse = float(np.sqrt(np.mean((values - exact) ** 2)))
            plain.setdefault(value_name, rmse)
            ratio = rmse / plain[value_name]
            coverage = float(np.mean(np.abs(values - exact) <= 2 * stderr + 1e-12))
            print(f"{gname:24s} {value_name:8s} {label:22s} {rmse:9.5f} {ratio:9.2f} {ratio**2:9.2f} "
                  f"{float(np.mean(stderr)):11.5f} {coverage:8.3f}   ({time.perf_counter() - start:.1f} s)",
                  flush=True)


if __name__ == "__main__":
    main()
