"""Monte Carlo estimators: what one block of samples computes, and how statistics become values.

An estimator is a small picklable object. ``block(utility, seed, n_items,
active)`` evaluates a batch (permutations or subsets) and returns
:class:`PointStats`; ``finalize(stats)`` turns merged statistics into value,
standard error and count per player. The lazy methods and the eager
``run_until_converged`` loop both call these, so they agree by construction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from .. import config
from ..typing import UtilityLike
from ._coefficients import LogCoefficient
from ._samplers import PermutationSampler, StratifiedSampler, SubsetSampler
from ._stats import PointStats
from ._truncation import NoTruncation, TruncationPolicy

__all__ = [
    "Estimator",
    "MsrEstimator",
    "PermutationEstimator",
    "SemivalueEstimator",
    "run_block",
    "values_from_stats",
]


class Estimator(ABC):
    """One Monte Carlo method: blocks of samples → per-player statistics → values."""

    method: str = ""
    n_streams = 1
    supports_active = False

    @abstractmethod
    def block(
        self, utility: UtilityLike, seed: np.random.SeedSequence, n_items: int, active: np.ndarray | None
    ) -> PointStats:
        """Evaluate ``n_items`` samples (permutations or subsets) and return their statistics."""

    @abstractmethod
    def evaluations_per_item(self, n: int) -> int:
        """Upper bound of utility evaluations per item, to size blocks and plan budgets."""

    @abstractmethod
    def parameters(self) -> dict[str, Any]:
        """Parameters recorded in results and checkpoints."""

    def items_per_block(self, n: int, override: int | None = None) -> int:
        """Items per task so that a task runs about ``evaluations-per-block`` evaluations."""
        if override is not None:
            return int(override)
        target = int(config.get(config.MC_EVALUATIONS_PER_BLOCK))
        return max(1, target // max(1, self.evaluations_per_item(n)))

    def finalize(self, stats: PointStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Value, standard error and number of samples per player."""
        return values_from_stats(stats)

    def __dask_tokenize__(self) -> Any:
        # By value and code (dvl_dask.keys.instance_token): the class, its sampler, truncation and
        # coefficient (callables by code and captured values), not just the class name.
        from ..keys import instance_token

        return instance_token(self)


def values_from_stats(stats: PointStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Value, stderr and count per player from merged statistics.

    One stream: the mean of the samples. Two streams (MSR): the difference of
    the "with" and "without" means, with their standard errors added in quadrature.
    """
    err = stats.stderr()
    if stats.mean.shape[0] == 1:
        return stats.mean[0], err[0], stats.count[0]
    value = stats.mean[0] - stats.mean[1]
    return value, np.sqrt(err[0] ** 2 + err[1] ** 2), stats.count[0] + stats.count[1]


def run_block(
    utility: UtilityLike,
    estimator: Estimator,
    seed: np.random.SeedSequence,
    n_items: int,
    active: np.ndarray | None = None,
) -> PointStats:
    """The task every Monte Carlo graph runs: one block of one estimator."""
    return estimator.block(utility, seed, n_items, active)


def _prefix_scores(
    utility: UtilityLike, order: np.ndarray, truncation: TruncationPolicy, total: float | None, warm_start: bool
) -> tuple[np.ndarray, int]:
    """Scores of the prefixes of ``order`` until truncation; returns (scores, evaluations)."""
    stop_when = None
    n = len(order)
    if not isinstance(truncation, NoTruncation):

        def stop_when(step: int, score: float) -> bool:
            return truncation.stop_after(step, n, score, total)

    prefix = getattr(utility, "prefix_scores", None)
    if prefix is not None:
        scores = prefix(order, warm_start=warm_start, stop_when=stop_when)
        return scores, len(scores)
    scores = [utility(order[:0])]
    for step in range(1, n + 1):
        scores.append(utility(order[:step]))
        if stop_when is not None and stop_when(step, scores[-1]):
            break
    return np.asarray(scores, dtype=np.float64), len(scores)


class PermutationEstimator(Estimator):
    """Permutation sampling of Shapley values, optionally truncated and warm-started."""

    method = "permutation_shapley"

    def __init__(
        self, sampler: PermutationSampler, truncation: TruncationPolicy, warm_start: bool = False
    ) -> None:
        self.sampler = sampler
        self.truncation = truncation
        self.warm_start = bool(warm_start)

    def evaluations_per_item(self, n: int) -> int:
        return n + 1

    def parameters(self) -> dict[str, Any]:
        return {**self.sampler.parameters(), **self.truncation.parameters(), "warm_start": self.warm_start}

    def block(
        self, utility: UtilityLike, seed: np.random.SeedSequence, n_items: int, active: np.ndarray | None
    ) -> PointStats:
        rng = np.random.default_rng(seed)
        n = utility.n_players
        perms = self.sampler.draw(rng, n, n_items)
        total = float(utility(np.arange(n))) if self.truncation.needs_total else None
        evaluations = 1 if total is not None else 0
        marginals = np.zeros((n_items, n))
        for row, perm in enumerate(perms):
            scores, used = _prefix_scores(utility, perm, self.truncation, total, self.warm_start)
            evaluations += used
            steps = len(scores) - 1
            marginals[row, perm[:steps]] = np.diff(scores)
        return PointStats.from_samples(marginals, np.ones_like(marginals, dtype=bool), evaluations)


class SemivalueEstimator(Estimator):
    """Importance-weighted marginals ``w(k)/p(k) [u(S ∪ i) - u(S)]`` for any semivalue.

    With a :class:`SubsetSampler`, one coalition ``S`` serves every active
    player: ``u(S)`` plus one flipped evaluation ``u(S xor {i})`` per player.
    With a :class:`StratifiedSampler`, each active player gets its own samples.
    Players outside ``active`` receive no work.
    """

    supports_active = True

    def __init__(self, method: str, coefficient: LogCoefficient, sampler: SubsetSampler | StratifiedSampler,
                 coefficient_parameters: dict[str, Any] | None = None) -> None:
        self.method = method
        self.coefficient = coefficient
        self.sampler = sampler
        self.coefficient_parameters = dict(coefficient_parameters or {})

    def evaluations_per_item(self, n: int) -> int:
        return 2 * n if isinstance(self.sampler, StratifiedSampler) else n + 1

    def parameters(self) -> dict[str, Any]:
        return {**self.coefficient_parameters, **self.sampler.parameters()}

    def _log_factor(self, n: int, k: np.ndarray) -> np.ndarray:
        return np.asarray(self.coefficient(n, k)) - self.sampler.log_proposal(n, k)

    def block(
        self, utility: UtilityLike, seed: np.random.SeedSequence, n_items: int, active: np.ndarray | None
    ) -> PointStats:
        rng = np.random.default_rng(seed)
        n = utility.n_players
        players = np.flatnonzero(active) if active is not None else np.arange(n)
        if isinstance(self.sampler, StratifiedSampler):
            return self._stratified_block(utility, rng, n, n_items, players)
        masks = self.sampler.draw(rng, n, n_items)
        values = np.zeros((n_items, n))
        used = np.zeros((n_items, n), dtype=bool)
        evaluations = 0
        all_players = np.arange(n)
        for s, mask in enumerate(masks):
            u_s = utility(all_players[mask])
            evaluations += 1
            for i in players:
                flipped = mask.copy()
                flipped[i] = not mask[i]
                u_f = utility(all_players[flipped])
                evaluations += 1
                values[s, i] = (u_s - u_f) if mask[i] else (u_f - u_s)
            k = mask.sum() - mask  # |S \ {i}| for every i
            values[s] *= np.exp(self._log_factor(n, k))
            used[s, players] = True
        return PointStats.from_samples(values, used, evaluations)

    def _stratified_block(
        self, utility: UtilityLike, rng: np.random.Generator, n: int, n_items: int, players: np.ndarray
    ) -> PointStats:
        assert isinstance(self.sampler, StratifiedSampler)
        values = np.zeros((n_items, n))
        used = np.zeros((n_items, n), dtype=bool)
        all_players = np.arange(n)
        evaluations = 0
        for i in players:
            masks = self.sampler.draw_for_player(rng, n, int(i), n_items)
            k = masks.sum(axis=1)
            factor = np.exp(self._log_factor(n, k))
            for s, mask in enumerate(masks):
                without = utility(all_players[mask])
                mask[i] = True
                with_i = utility(all_players[mask])
                evaluations += 2
                values[s, i] = factor[s] * (with_i - without)
            used[:, i] = True
        return PointStats.from_samples(values, used, evaluations)


class MsrEstimator(Estimator):
    """Maximum sample reuse for Banzhaf values (Wang & Jia, 2023).

    Each uniform coalition ``S`` is evaluated once and updates every player:
    ``u(S)`` joins the "with i" stream of the members and the "without i"
    stream of the others; the value is the difference of the stream means.
    """

    method = "msr_banzhaf"
    n_streams = 2

    def __init__(self, sampler: SubsetSampler) -> None:
        self.sampler = sampler

    def evaluations_per_item(self, n: int) -> int:
        return 1

    def parameters(self) -> dict[str, Any]:
        return self.sampler.parameters()

    def block(
        self, utility: UtilityLike, seed: np.random.SeedSequence, n_items: int, active: np.ndarray | None
    ) -> PointStats:
        rng = np.random.default_rng(seed)
        n = utility.n_players
        masks = self.sampler.draw(rng, n, n_items)
        all_players = np.arange(n)
        scores = np.array([utility(all_players[m]) for m in masks], dtype=np.float64)
        values = np.broadcast_to(scores[:, None], masks.shape)
        stacked_values = np.stack([values, values])
        stacked_masks = np.stack([masks, ~masks])
        return PointStats.from_samples(stacked_values, stacked_masks, len(masks))

