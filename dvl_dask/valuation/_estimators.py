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
from ..threads import limits_blas_threads
from ..typing import UtilityLike
from ._coefficients import LogCoefficient, log_binomial
from ._graph import evaluate_masks
from ._samplers import PermutationSampler, StratifiedSampler, SubsetSampler
from ._stats import PointStats, finalize_stats
from ._truncation import NoTruncation, TruncationPolicy

__all__ = [
    "Estimator",
    "MsrEstimator",
    "PermutationEstimator",
    "SemivalueEstimator",
    "run_block",
    "score_width",
    "values_from_stats",
]


def score_width(utility: UtilityLike) -> float | None:
    """Width ``hi - lo`` of the utility's ``score_range`` if it is known and finite, else None."""
    bounds = getattr(utility, "score_range", None)
    if bounds is None:
        return None
    lo, hi = float(bounds[0]), float(bounds[1])
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
        return None
    return hi - lo


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

    def units(self, n_items: int) -> int:
        """Independent samples per player that a block of ``n_items`` items yields."""
        return int(n_items)

    @property
    def item_granule(self) -> int:
        """Blocks hold a multiple of this many items (2 keeps antithetic pairs whole)."""
        return 1 if self.units(2) == 2 else 2

    def block_evaluations(self, n: int, n_items: int) -> int:
        """Upper bound of the utility evaluations of one block of ``n_items`` items."""
        return int(n_items) * self.evaluations_per_item(n)

    def items_per_block(self, n: int, override: int | None = None, batched: bool = False) -> int:
        """Items per task so that a task runs about ``evaluations-per-block`` evaluations.

        ``batched``: the utility fits batches (``batched-evaluations-per-block``).
        """
        if override is not None:
            return int(override)
        key = config.MC_BATCHED_EVALUATIONS_PER_BLOCK if batched else config.MC_EVALUATIONS_PER_BLOCK
        target = int(config.get(key))
        return max(1, target // max(1, self.evaluations_per_item(n)))

    def finalize_spec(self) -> dict[str, Any]:
        """How :func:`finalize_stats` combines this estimator's streams (recorded in parameters)."""
        return {"combine": "mean", "sample_range": None}

    def finalize(self, stats: PointStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Value, standard error and number of samples per player."""
        return finalize_stats(stats, self.finalize_spec())

    #: What one sample (one unit of ``counts``) is, recorded in result attrs.
    sample_unit = "sample"

    def __dask_tokenize__(self) -> Any:
        # By value and code (dvl_dask.keys.instance_token): the class, its sampler, truncation and
        # coefficient (callables by code and captured values), not just the class name.
        from ..keys import instance_token

        return instance_token(self)


def values_from_stats(
    stats: PointStats, parameters: dict[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Value, stderr and count per player from merged statistics and recorded parameters.

    Uses the ``"finalize"`` spec stored in ``parameters`` (as every estimator
    records it); statistics written before it existed fall back to a mean of
    one stream or the difference of two (MSR).
    """
    spec = (parameters or {}).get("finalize")
    if spec is None:
        spec = {"combine": "difference" if stats.mean.shape[0] == 2 else "mean", "sample_range": None}
    return finalize_stats(stats, spec)


@limits_blas_threads
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
    utility: UtilityLike, order: np.ndarray, truncation: TruncationPolicy, total: float | None, warm_start: bool,
    empty: float,
) -> tuple[np.ndarray, int]:
    """Scores of the prefixes of ``order`` until truncation; returns (scores, evaluations).

    ``u(∅)`` is the same for every permutation: the caller evaluates it once
    (``empty``) and it is not counted here.
    """
    stop_when = None
    n = len(order)
    if not isinstance(truncation, NoTruncation):
        stop_when = truncation.checker(n, total)  # fresh per permutation: policies may keep state along it

    prefix = getattr(utility, "prefix_scores", None)
    if prefix is not None:
        scores = prefix(order, warm_start=warm_start, stop_when=stop_when)
        return scores, len(scores) - 1
    scores = [empty]
    for step in range(1, n + 1):
        scores.append(utility(order[:step]))
        if stop_when is not None and stop_when(step, scores[-1]):
            break
    return np.asarray(scores, dtype=np.float64), len(scores) - 1


class PermutationEstimator(Estimator):
    """Permutation sampling of Shapley values, optionally truncated and warm-started."""

    method = "permutation_shapley"

    def __init__(
        self, sampler: PermutationSampler, truncation: TruncationPolicy, warm_start: bool = False,
        score_range: float | None = None, n_players: int = 1,
    ) -> None:
        self.sampler = sampler
        self.truncation = truncation
        self.warm_start = bool(warm_start)
        self.score_range = score_range
        self.sample_unit = "antithetic pair" if sampler.antithetic else "permutation"
        self.stratified = bool(getattr(sampler, "stratified", False))
        self.n_players = int(n_players)

    @property
    def n_streams(self) -> int:  # type: ignore[override]
        return self.n_players if self.stratified else 1

    def evaluations_per_item(self, n: int) -> int:
        return n

    def units(self, n_items: int) -> int:
        return (int(n_items) + 1) // 2 if self.sampler.antithetic else int(n_items)

    def block_evaluations(self, n: int, n_items: int) -> int:
        drawn = 2 * self.units(n_items) if self.sampler.antithetic else int(n_items)
        return drawn * n + 1 + (1 if self.truncation.needs_total else 0)

    def finalize_spec(self) -> dict[str, Any]:
        # A marginal contribution u(S + i) - u(S) lies in [-D, D]: width 2D.
        width = None if self.score_range is None else 2.0 * self.score_range
        if self.stratified:
            # Strata are the prefix sizes k = 0..n-1, each of probability 1/n in a uniform permutation.
            return {"combine": "strata", "sample_range": width,
                    "stratum_weights": [1.0 / self.n_players] * self.n_players}
        return {"combine": "mean", "sample_range": width}

    def parameters(self) -> dict[str, Any]:
        return {**self.sampler.parameters(), **self.truncation.parameters(), "warm_start": self.warm_start,
                "finalize": self.finalize_spec()}

    def block(
        self, utility: UtilityLike, seed: np.random.SeedSequence, n_items: int, active: np.ndarray | None
    ) -> PointStats:
        rng = np.random.default_rng(seed)
        n = utility.n_players
        # Antithetic: n_items permutations rounded up to whole pairs; a pair is one sample.
        n_draw = 2 * ((n_items + 1) // 2) if self.sampler.antithetic else n_items
        perms = self.sampler.draw(rng, n, n_draw)
        total = float(utility(np.arange(n))) if self.truncation.needs_total else None
        empty = float(utility(np.arange(0)))
        evaluations = 1 + (1 if total is not None else 0)  # u(∅) once per block
        marginals = np.zeros((n_draw, n))
        if getattr(utility, "batched", False):
            evaluations += self._lockstep(utility, perms, total, marginals)
        else:
            evaluations += self._one_by_one(utility, perms, total, empty, marginals)
        if self.stratified:
            # Player perm[k] arrived after a prefix of size k: its marginal belongs to stratum k.
            positions = np.argsort(perms, axis=1)
            players = np.broadcast_to(np.arange(n), marginals.shape)
            return PointStats.from_groups(marginals.ravel(), positions.ravel(), players.ravel(), n, n, evaluations)
        if self.sampler.antithetic:
            marginals = marginals.reshape(-1, 2, n).mean(axis=1)
        return PointStats.from_samples(marginals, np.ones_like(marginals, dtype=bool), evaluations)

    def _one_by_one(
        self, utility: UtilityLike, perms: np.ndarray, total: float | None, empty: float, marginals: np.ndarray
    ) -> int:
        evaluations = 0
        for row, perm in enumerate(perms):
            scores, used = _prefix_scores(utility, perm, self.truncation, total, self.warm_start, empty)
            evaluations += used
            steps = len(scores) - 1
            marginals[row, perm[:steps]] = np.diff(scores)
        return evaluations

    def _lockstep(self, utility: UtilityLike, perms: np.ndarray, total: float | None, marginals: np.ndarray) -> int:
        """All permutations of the block in lockstep: prefix k of every permutation in one batched fit.

        Each prefix starts from the same permutation's previous optimum (batched
        models converge to the same optimum from any start, to their tolerance);
        truncation drops finished permutations from the batch.
        """
        n = perms.shape[1]
        stop_when = None
        if not isinstance(self.truncation, NoTruncation):
            # One fresh rule per permutation: policies may keep state along a permutation (DeviationTruncation).
            stop_when = [self.truncation.checker(n, total) for _ in range(len(perms))]
        scores, steps = utility.batch_prefix_scores(perms, stop_when=stop_when)  # type: ignore[attr-defined]
        for row, perm in enumerate(perms):
            used = int(steps[row])
            marginals[row, perm[:used]] = np.diff(scores[row, : used + 1])
        return int(steps.sum())


class SemivalueEstimator(Estimator):
    """Importance-weighted marginals ``w(k)/p(k) [u(S ∪ i) - u(S)]`` for any semivalue.

    With a :class:`SubsetSampler`, one coalition ``S`` serves every active
    player: ``u(S)`` plus one flipped evaluation ``u(S xor {i})`` per player;
    with an antithetic sampler a pair ``S, N \\ S`` is one sample (the mean of
    its two weighted marginals). With a :class:`StratifiedSampler`, each active
    player gets its own samples, one statistics stream per coalition size, and
    the value is the weighted sum of the stratum means. Players outside
    ``active`` receive no work.
    """

    supports_active = True

    def __init__(self, method: str, coefficient: LogCoefficient, sampler: SubsetSampler | StratifiedSampler,
                 coefficient_parameters: dict[str, Any] | None = None, *, n_players: int = 1,
                 score_range: float | None = None) -> None:
        self.method = method
        self.coefficient = coefficient
        self.sampler = sampler
        self.coefficient_parameters = dict(coefficient_parameters or {})
        self.n_players = int(n_players)
        self.score_range = score_range
        self.stratified = isinstance(sampler, StratifiedSampler)
        if self.stratified:
            self.sample_unit = "stratified marginal"
            strategy = sampler.allocation
            if not isinstance(strategy, str):
                # Refuse a strategy that starves a weighted size now, not inside the first block task.
                strategy.counts(np.random.default_rng(0), self.n_players, self.stratum_weights(), 2 * self.n_players)
        else:
            self.sample_unit = "antithetic pair" if sampler.antithetic else "coalition"

    @property
    def n_streams(self) -> int:  # type: ignore[override]
        return self.n_players if self.stratified else 1

    def evaluations_per_item(self, n: int) -> int:
        return 2 * n if self.stratified else n + 1

    def _antithetic(self) -> bool:
        return not self.stratified and bool(getattr(self.sampler, "antithetic", False))

    def units(self, n_items: int) -> int:
        return (int(n_items) + 1) // 2 if self._antithetic() else int(n_items)

    def block_evaluations(self, n: int, n_items: int) -> int:
        drawn = 2 * self.units(n_items) if self._antithetic() else int(n_items)
        return drawn * self.evaluations_per_item(n)

    def items_per_block(self, n: int, override: int | None = None, batched: bool = False) -> int:
        """As :meth:`Estimator.items_per_block`; Neyman allocation gets at least ``5 * pilot * n`` per block.

        A Neyman block spends ``pilot * n`` samples per player on its pilot, so
        smaller blocks would waste most of their evaluations (and blocks under
        ``(pilot + 2) * n`` fall back to equal allocation).
        """
        items = super().items_per_block(n, override, batched)
        allocation = getattr(self.sampler, "allocation", "equal")
        if override is None and self.stratified and isinstance(allocation, str) and allocation == "neyman":
            items = max(items, 5 * self.sampler.pilot * n)
        elif override is None and self.stratified and not isinstance(allocation, str):
            items = max(items, 4 * n)  # two per size, and as much again split by the strategy
        return items

    def stratum_weights(self) -> np.ndarray:
        """``C(n-1, k) w(k)`` for ``k = 0..n-1``: the weight of each coalition size."""
        n = self.n_players
        k = np.arange(n)
        return np.exp(np.asarray(self.coefficient(n, k), dtype=np.float64) + log_binomial(n - 1, k))

    def finalize_spec(self) -> dict[str, Any]:
        n = self.n_players
        if self.stratified:
            width = None if self.score_range is None else 2.0 * self.score_range
            return {"combine": "strata", "sample_range": width,
                    "stratum_weights": [float(w) for w in self.stratum_weights()]}
        if self.score_range is None:
            return {"combine": "mean", "sample_range": None}
        factor = float(np.exp(self._log_factor(n, np.arange(n))).max())
        return {"combine": "mean", "sample_range": 2.0 * self.score_range * factor}

    def parameters(self) -> dict[str, Any]:
        return {**self.coefficient_parameters, **self.sampler.parameters(), "finalize": self.finalize_spec()}

    def _log_factor(self, n: int, k: np.ndarray) -> np.ndarray:
        assert isinstance(self.sampler, SubsetSampler)
        return np.asarray(self.coefficient(n, k)) - self.sampler.log_proposal(n, k)

    def block(
        self, utility: UtilityLike, seed: np.random.SeedSequence, n_items: int, active: np.ndarray | None
    ) -> PointStats:
        rng = np.random.default_rng(seed)
        n = utility.n_players
        players = np.flatnonzero(active) if active is not None else np.arange(n)
        if self.stratified:
            return self._stratified_block(utility, rng, n, n_items, players)
        assert isinstance(self.sampler, SubsetSampler)
        antithetic = self.sampler.antithetic
        n_draw = 2 * ((n_items + 1) // 2) if antithetic else n_items
        masks = self.sampler.draw(rng, n, n_draw)
        values = np.zeros((n_draw, n))
        # Per sample: S, then S with each active player flipped; all evaluated as one batch.
        batch = np.repeat(masks[:, None, :], 1 + len(players), axis=1)
        batch[:, np.arange(1, 1 + len(players)), players] ^= True
        scores = evaluate_masks(utility, batch.reshape(-1, n)).reshape(n_draw, 1 + len(players))
        evaluations = scores.size
        u_s, u_f = scores[:, :1], scores[:, 1:]
        values[:, players] = np.where(masks[:, players], u_s - u_f, u_f - u_s)
        for row, mask in enumerate(masks):
            k = mask.sum() - mask  # |S \ {i}| for every i
            values[row] *= np.exp(self._log_factor(n, k))
        if antithetic:
            values = values.reshape(-1, 2, n).mean(axis=1)
        used = np.zeros(values.shape, dtype=bool)
        used[:, players] = True
        return PointStats.from_samples(values, used, evaluations)

    def _stratified_block(
        self, utility: UtilityLike, rng: np.random.Generator, n: int, n_items: int, players: np.ndarray
    ) -> PointStats:
        sampler = self.sampler
        assert isinstance(sampler, StratifiedSampler)
        values, strata, owners = [], [], []
        evaluations = 0

        def marginals(i: int, masks: np.ndarray) -> np.ndarray:
            nonlocal evaluations
            with_i = masks.copy()
            with_i[:, i] = True
            scores = evaluate_masks(utility, np.stack([masks, with_i], axis=1).reshape(-1, n)).reshape(-1, 2)
            evaluations += scores.size
            return scores[:, 1] - scores[:, 0]

        weights = self.stratum_weights()
        pilot = sampler.uses_pilot(n, n_items)
        for i in players:
            if not pilot:
                sizes = sampler.plan_sizes(rng, n, n_items, weights)
                masks = sampler.draw_sizes_for_player(rng, n, int(i), sizes)
            else:
                # Neyman: a pilot per stratum sets the allocation and is then discarded (unbiased).
                pilot_sizes = np.repeat(np.arange(n), sampler.pilot)
                pilot_marginals = marginals(int(i), sampler.draw_sizes_for_player(rng, n, int(i), pilot_sizes))
                sigma = pilot_marginals.reshape(n, sampler.pilot).std(axis=1, ddof=1)
                counts = sampler.neyman_counts(weights, sigma, n_items - len(pilot_sizes))
                sizes = np.repeat(np.arange(n), counts)
                masks = sampler.draw_sizes_for_player(rng, n, int(i), sizes)
            values.append(marginals(int(i), masks))
            strata.append(sizes)
            owners.append(np.full(len(sizes), i))
        if not values:
            return PointStats.zeros(n, n)
        return PointStats.from_groups(
            np.concatenate(values), np.concatenate(strata), np.concatenate(owners), n, n, evaluations
        )


class MsrEstimator(Estimator):
    """Maximum sample reuse for Banzhaf values (Wang & Jia, 2023).

    Each uniform coalition ``S`` is evaluated once and updates every player:
    ``u(S)`` joins the "with i" stream of the members and the "without i"
    stream of the others; the value is the difference of the stream means.
    The two streams of a player come from disjoint sets of independent
    coalitions, so their variances add. There is no antithetic variant: with
    ``S, N \\ S`` pairs, every pair gives player ``i`` one "with" sample and
    one "without" sample, the utilities of complementary coalitions. Those are
    typically negatively correlated (a large coalition pairs with a small one),
    so the variance of their difference grows instead of shrinking.
    """

    method = "msr_banzhaf"
    n_streams = 2
    sample_unit = "coalition"

    def __init__(self, sampler: SubsetSampler, score_range: float | None = None) -> None:
        self.sampler = sampler
        self.score_range = score_range

    def evaluations_per_item(self, n: int) -> int:
        return 1

    def finalize_spec(self) -> dict[str, Any]:
        return {"combine": "difference", "sample_range": self.score_range}

    def parameters(self) -> dict[str, Any]:
        return {**self.sampler.parameters(), "finalize": self.finalize_spec()}

    def block(
        self, utility: UtilityLike, seed: np.random.SeedSequence, n_items: int, active: np.ndarray | None
    ) -> PointStats:
        rng = np.random.default_rng(seed)
        n = utility.n_players
        masks = self.sampler.draw(rng, n, n_items)
        scores = evaluate_masks(utility, masks)
        values = np.broadcast_to(scores[:, None], masks.shape)
        stacked_values = np.stack([values, values])
        stacked_masks = np.stack([masks, ~masks])
        return PointStats.from_samples(stacked_values, stacked_masks, len(masks))
