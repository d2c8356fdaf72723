"""Coverage of +-2 stderr with and without truncation, and without a known score range (issue 24).

Run:  .venv/bin/python benchmarks/bench_truncation_bias.py [--permutations 100] [--seeds 100]

On games with exact Shapley values (computed here by brute force over all
coalitions), permutation Shapley runs for ``--seeds`` seeds with
``--permutations`` permutations each (block by block, no scheduler), with no
truncation, ``FixedTruncation(0.5)`` and ``RelativeTruncation(0.1)``, and once
more without truncation on a wrapper that declares no ``score_range`` (the
stderr floor then uses the observed sample width). Printed per case: the
share of (seed, player) pairs whose exact value lies within +-2 stderr (ideal
~0.95), the mean and smallest signed z = (estimate - exact) / stderr (a bias
shows as a mean far from 0), the mean |sum(values) - u(N)| (efficiency gap;
0 without truncation) and whether results carry ``attrs["biased"]``.
"""

from __future__ import annotations

import argparse
import itertools
import math

import numpy as np


class _NoRange:
    """The game behind the UtilityLike protocol, declaring no score range."""

    def __init__(self, game) -> None:
        self.game, self.token, self.n_players, self.data_names = game, game.token + "-norange", game.n_players, \
            game.data_names

    def __call__(self, indices) -> float:
        return float(self.game.value(np.asarray(indices, dtype=np.int64)))


def _exact_shapley(game) -> np.ndarray:
    n = game.n_players
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            w = 1.0 / (n * math.comb(n - 1, k))
            for s in itertools.combinations(others, k):
                with_i = np.asarray(sorted((*s, i)), dtype=np.int64)
                phi[i] += w * (game.value(with_i) - game.value(np.asarray(s, dtype=np.int64)))
    return phi


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--permutations", type=int, default=100)
    p.add_argument("--seeds", type=int, default=100)
    args = p.parse_args()

    from dvl_dask.testing.games import AdditiveGame, AirportGame, ShoesGame, Unchecked
    from dvl_dask.valuation import FixedTruncation, RelativeTruncation
    from dvl_dask.valuation._graph import check_utility
    from dvl_dask.valuation._montecarlo import ESTIMATOR_FACTORIES
    from dvl_dask.valuation._samplers import child_seed
    from dvl_dask.valuation._stats import merge_all
    from dvl_dask.valuation._truncation import bias_attrs

    games = {
        "airport(8)": AirportGame([1.0, 2.0, 2.5, 4.0, 5.0, 7.5, 8.0, 10.0]),
        "shoes(3,4)": ShoesGame(3, 4),
        "additive(8)": AdditiveGame([0.5, 1.0, 1.5, 2.0, 3.0, 0.25, 4.0, 1.25]),
    }
    policies = {"none": None, "FixedTruncation(0.5)": FixedTruncation(0.5),
                "RelativeTruncation(0.1)": RelativeTruncation(0.1)}
    per_block = 25
    for game_name, game in games.items():
        exact = _exact_shapley(game)
        total = game.value(np.arange(game.n_players))
        cases = [(name, Unchecked(game), policy) for name, policy in policies.items()]
        cases.append(("none, no score_range", check_utility(_NoRange(game), "bench"), None))
        for name, utility, policy in cases:
            estimator = ESTIMATOR_FACTORIES["permutation_shapley"](utility, truncation=policy)
            z, gaps = [], []
            for seed in range(args.seeds):
                root = np.random.SeedSequence(seed)
                blocks = [estimator.block(utility, child_seed(root, b), min(per_block, args.permutations - s), None)
                          for b, s in enumerate(range(0, args.permutations, per_block))]
                value, stderr, _ = estimator.finalize(merge_all(blocks))
                err = value - exact
                exact_hit = np.abs(err) < 1e-9
                z.append(np.where(exact_hit, 0.0, err / stderr))
                gaps.append(abs(value.sum() - total))
            z = np.asarray(z)
            biased = bias_attrs(estimator.parameters())["biased"]
            print(f"| {game_name:11} | {name:23} | {np.mean(np.abs(z) <= 2):.3f} | {z.mean():+6.2f} | "
                  f"{z.min():+7.1f} | {np.mean(gaps):.3f} | {biased!s:5} |")


if __name__ == "__main__":
    main()
