"""Seeded, picklable generators of permutations and subsets for Monte Carlo methods.

Block *i* of a graph draws from ``np.random.default_rng(child_seed(seed, i))``,
so the same seed gives the same samples on every scheduler and any number of
workers, and a resumed run continues the sequence.

Subset samplers draw coalitions ``S ⊆ N`` in which, given a per-sample
probability ``q``, every player is included independently. ``S \\ {i}`` then
has the same distribution for every player ``i``, which lets one sample update
all players (``1 + n`` evaluations for ``n`` marginals), and the probability
of any particular subset of size ``k`` of the other ``n - 1`` players is the
closed form returned by :meth:`SubsetSampler.log_proposal` (used for importance
weights, in log space).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from scipy.special import betaln

from ..errors import InvalidParameterError
from ..keys import instance_token
from ..validation import check_bool, check_positive_int, check_real

__all__ = [
    "AntitheticSampler",
    "BetaSampler",
    "ConstantSampleSize",
    "DeltaShapleySampleSize",
    "HarmonicSampleSize",
    "PowerLawSampleSize",
    "SampleSizeStrategy",
    "VRDSSampler",
    "OwenSampler",
    "PermutationSampler",
    "StratifiedPermutationSampler",
    "StratifiedSampler",
    "SubsetSampler",
    "UniformSampler",
    "child_seed",
    "make_permutation_sampler",
    "make_subset_sampler",
]


def child_seed(seed: np.random.SeedSequence, index: int) -> np.random.SeedSequence:
    """Child ``index`` of ``seed``, equal to ``seed.spawn(index + 1)[index]`` without spawning."""
    return np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, int(index)))


class PermutationSampler:
    """Uniform random permutations; ``antithetic=True`` pairs each with its reverse.

    Antithetic pairs are not independent samples: estimators average the two
    members of a pair and treat the pair mean as ONE sample.
    """

    def __init__(self, antithetic: bool = False) -> None:
        self.antithetic = check_bool(antithetic, "antithetic", type(self).__name__)

    def draw(self, rng: np.random.Generator, n: int, m: int) -> np.ndarray:
        """``m`` permutations of ``range(n)`` as an ``(m, n)`` int array (pairs in rows 2j, 2j+1)."""
        if not self.antithetic:
            return np.array([rng.permutation(n) for _ in range(m)], dtype=np.int64).reshape(m, n)
        half = np.array([rng.permutation(n) for _ in range((m + 1) // 2)], dtype=np.int64).reshape(-1, n)
        pairs = np.empty((2 * len(half), n), dtype=np.int64)
        pairs[0::2], pairs[1::2] = half, half[:, ::-1]
        return pairs[:m]

    def parameters(self) -> dict[str, Any]:
        return {"sampler": "antithetic-permutation" if self.antithetic else "permutation"}

    def __dask_tokenize__(self) -> Any:
        # The class (its code, for user subclasses) and its whole state, not the hand-picked
        # parameters(): a subclass with state of its own must not share a key.
        return instance_token(self)


class StratifiedPermutationSampler(PermutationSampler):
    """Uniform random permutations whose marginals are stratified by prefix size (pyDVL's stratified permutations).

    In a uniform permutation, player ``i`` arrives after a prefix of size
    ``k`` with probability ``1/n`` for every ``k = 0..n-1``, and given ``k``
    the prefix is a uniform ``k``-subset of the others. The Shapley value is
    therefore ``(1/n) sum_k E[u(S + i) - u(S) | |S| = k]``. This sampler draws
    the same permutations as :class:`PermutationSampler`, but the estimator
    keeps one statistics stream per prefix size (a *stratum*) and reports
    ``(1/n) sum_k mean_k`` with variance ``(1/n^2) sum_k stderr_k^2``
    (post-stratification): the randomness of how many samples each size got
    is removed from the estimate, which lowers its variance when marginals
    depend strongly on the coalition size (Maleki et al., 2013; Castro et
    al., 2017). Every stratum needs two samples before a player's stderr is
    finite, so budgets should be several times ``n`` permutations; until then
    the stderr is ``inf``, not small.

    pyDVL 0.10's ``StratifiedPermutationSampler`` (marked experimental there)
    samples set sizes from a strategy and does not reweight; this one
    samples sizes exactly as permutations do and is unbiased. There is no
    antithetic variant: a permutation and its reverse put a player at sizes
    ``k`` and ``n - 1 - k``, two strata.
    """

    stratified = True

    def __init__(self) -> None:
        super().__init__(antithetic=False)

    def parameters(self) -> dict[str, Any]:
        return {"sampler": "stratified-permutation"}


def make_permutation_sampler(sampler: Any, antithetic: bool, owner: str) -> PermutationSampler:
    """Resolve the ``sampler`` argument of a permutation method (None, a name or an instance)."""
    if sampler is None or sampler == "permutation":
        return PermutationSampler(antithetic)
    if sampler == "antithetic":
        return PermutationSampler(True)
    if sampler == "stratified":
        sampler = StratifiedPermutationSampler()
    if not isinstance(sampler, PermutationSampler):
        raise InvalidParameterError(
            f"The 'sampler' parameter of {owner} must be None, 'permutation', 'antithetic', 'stratified' or a "
            f"PermutationSampler / StratifiedPermutationSampler instance. Got {sampler!r}."
        )
    if antithetic and not sampler.antithetic:
        raise InvalidParameterError(
            f"{owner}: antithetic=True contradicts sampler={sampler!r}"
            + (" (stratified permutations have no antithetic variant: a permutation and its reverse put a player "
               "in two strata)" if getattr(sampler, "stratified", False) else "")
            + ". To fix, drop one of the two arguments."
        )
    return sampler


class SubsetSampler(ABC):
    """Coalitions with independent inclusion given a per-sample probability ``q``."""

    name = "subset"

    @abstractmethod
    def inclusion_probabilities(self, rng: np.random.Generator, m: int) -> np.ndarray:
        """``q`` for each of ``m`` samples."""

    @abstractmethod
    def log_proposal(self, n: int, k: np.ndarray) -> np.ndarray:
        """log-probability that ``S \\ {i}`` equals one given subset of size ``k`` of the others."""

    antithetic = False

    def draw(self, rng: np.random.Generator, n: int, m: int) -> np.ndarray:
        """``m`` coalitions as an ``(m, n)`` boolean mask; antithetic samplers pair S with N \\ S."""
        n_draw = (m + 1) // 2 if self.antithetic else m
        q = self.inclusion_probabilities(rng, n_draw)
        masks = rng.random((n_draw, n)) < q[:, None]
        if self.antithetic:
            pairs = np.empty((2 * n_draw, n), dtype=bool)
            pairs[0::2], pairs[1::2] = masks, ~masks
            masks = pairs[:m]
        return masks

    def parameters(self) -> dict[str, Any]:
        return {"sampler": self.name}

    def __dask_tokenize__(self) -> Any:
        # The class (its code, for user subclasses) and its whole state, not the hand-picked
        # parameters(): a subclass with state of its own must not share a key.
        return instance_token(self)


class UniformSampler(SubsetSampler):
    """Every player joins with probability 1/2: uniform over all subsets (Banzhaf's own weights)."""

    name = "uniform"

    def inclusion_probabilities(self, rng: np.random.Generator, m: int) -> np.ndarray:
        return np.full(m, 0.5)

    def log_proposal(self, n: int, k: np.ndarray) -> np.ndarray:
        return np.full(np.shape(k), -(n - 1) * np.log(2.0))


class AntitheticSampler(UniformSampler):
    """Uniform subsets drawn in pairs ``S, N \\ S`` (negatively correlated, lower variance)."""

    name = "antithetic"
    antithetic = True


class OwenSampler(SubsetSampler):
    """Owen's multilinear-extension sampling: ``q ~ U(0, 1)`` or a midpoint grid of ``n_q`` values.

    With ``q`` uniform, subset sizes follow the Shapley weights exactly, so
    Shapley marginals need no importance correction. On a grid, samples cycle
    through the grid (stratified, from a random start, so every sample's
    ``q`` is uniform over the grid), and the importance weights use the exact
    probability of a coalition under that mixture,
    ``p(k) = mean_j q_j^k (1 - q_j)^(n-1-k)``, so the estimator stays
    **unbiased**: the grid changes the variance, not the expectation. This is
    not the quadrature of the original Owen sampling (the mean marginal at
    each grid point averaged with equal weights, which carries the midpoint
    rule's error as a bias); results say ``biased: False``. Checked in
    ``tests/valuation/test_merge_safety.py``: the exact expectation over the
    grid and all coalitions equals the Shapley value.
    """

    def __init__(self, n_q: int | None = None, antithetic: bool = False) -> None:
        self.n_q = None if n_q is None else check_positive_int(n_q, "n_q", "OwenSampler")
        self.antithetic = check_bool(antithetic, "antithetic", type(self).__name__)
        self.name = "owen" if n_q is None else "owen-grid"

    def _grid(self) -> np.ndarray:
        assert self.n_q is not None
        return (np.arange(self.n_q) + 0.5) / self.n_q

    def inclusion_probabilities(self, rng: np.random.Generator, m: int) -> np.ndarray:
        if self.n_q is None:
            return rng.random(m)
        grid = self._grid()
        return grid[(rng.integers(self.n_q) + np.arange(m)) % self.n_q]

    def log_proposal(self, n: int, k: np.ndarray) -> np.ndarray:
        k = np.asarray(k, dtype=np.float64)
        if self.n_q is None:
            return betaln(k + 1, n - k)
        q = self._grid()[:, None]
        terms = k[None, :] * np.log(q) + (n - 1 - k[None, :]) * np.log1p(-q)
        return np.logaddexp.reduce(terms, axis=0) - np.log(self.n_q)

    def parameters(self) -> dict[str, Any]:
        return {"sampler": self.name, "n_q": self.n_q, "antithetic": self.antithetic}


class BetaSampler(SubsetSampler):
    """``q ~ Beta(a, b)``: subset sizes follow the Beta(alpha=b, beta=a) Shapley weights exactly."""

    name = "beta"

    def __init__(self, a: float, b: float) -> None:
        self.a = check_real(a, "a", "BetaSampler", low=0.0, low_open=True, high_open=True)
        self.b = check_real(b, "b", "BetaSampler", low=0.0, low_open=True, high_open=True)

    def inclusion_probabilities(self, rng: np.random.Generator, m: int) -> np.ndarray:
        return rng.beta(self.a, self.b, size=m)

    def log_proposal(self, n: int, k: np.ndarray) -> np.ndarray:
        k = np.asarray(k, dtype=np.float64)
        return betaln(k + self.a, n - 1 - k + self.b) - betaln(self.a, self.b)

    def parameters(self) -> dict[str, Any]:
        return {"sampler": self.name, "a": self.a, "b": self.b}


class SampleSizeStrategy:
    """How many of a player's samples go to each coalition size ``k``: ``m_k ∝ f(n, k)`` (Wu et al., 2023).

    Subclasses implement :meth:`fun`. A stratified sampler with a strategy
    splits each block of ``m`` samples per player over the sizes that carry
    weight in the semivalue: two per size first (every stratum needs a
    variance estimate), the rest in proportion to ``f`` (largest remainders,
    ties broken at random). Estimates stay unbiased for any ``f``: each
    stratum's mean is weighted by the semivalue, not by its sample count. A
    block of fewer than two samples per weighted size splits all of them in
    proportion to ``f`` at random, so sizes without a sample keep the stderr
    ``inf`` until they get some.
    """

    name = "strategy"

    def fun(self, n: int, k: np.ndarray) -> np.ndarray:
        """Relative number of samples ``f(n, k)`` at each coalition size in ``k`` (non-negative)."""
        raise NotImplementedError

    def total(self, n: int, lower: int, upper: int) -> int | None:
        """Samples per player the strategy prescribes for sizes ``lower..upper``, or None if only relative."""
        return None

    def parameters(self) -> dict[str, Any]:
        return {"sample_sizes": self.name}

    def counts(self, rng: np.random.Generator, n: int, weights: np.ndarray, m: int) -> np.ndarray:
        """Samples per coalition size ``k = 0..n-1`` for ``m`` samples of one player."""
        used = np.asarray(weights, dtype=np.float64) > 0
        share = np.where(used, np.asarray(self.fun(n, np.arange(n)), dtype=np.float64), 0.0)
        if np.any(~np.isfinite(share)) or np.any(share < 0) or np.any(share[used] == 0):
            raise InvalidParameterError(
                f"The sample-size strategy {self!r} must give a positive, finite share to every coalition size "
                "the value weighs (a size without samples would bias the value)."
            )
        counts = np.zeros(n, dtype=np.int64)
        n_used = int(used.sum())
        if m >= 2 * n_used:
            counts[used] = 2
            m -= 2 * n_used
        exact = m * share / share.sum()
        base = np.floor(exact).astype(np.int64)
        left = m - int(base.sum())
        if left > 0:
            fraction = exact - base
            pick = rng.choice(n, size=left, replace=False, p=fraction / fraction.sum())
            base[pick] += 1
        return counts + base

    def __dask_tokenize__(self) -> Any:
        return instance_token(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.parameters()})"


class ConstantSampleSize(SampleSizeStrategy):
    """The same number of samples at every coalition size (Maleki et al.'s equal allocation)."""

    name = "constant"

    def fun(self, n: int, k: np.ndarray) -> np.ndarray:
        return np.ones(np.shape(k))


class HarmonicSampleSize(SampleSizeStrategy):
    """``f(k) = 1 / (1 + k)``: many small coalitions, few large ones (the VRDS rule of Wu et al., 2023)."""

    name = "harmonic"

    def fun(self, n: int, k: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.asarray(k, dtype=np.float64))


class PowerLawSampleSize(SampleSizeStrategy):
    """``f(k) = (1 + k) ** exponent``; -1 is :class:`HarmonicSampleSize`, -2 the decay of Delta-Shapley's bound.

    Wu et al. (2023) report exponents between -1 and -0.5 to work well.
    """

    name = "power-law"

    def __init__(self, exponent: float) -> None:
        self.exponent = check_real(exponent, "exponent", "PowerLawSampleSize", finite=True)

    def fun(self, n: int, k: np.ndarray) -> np.ndarray:
        return (1.0 + np.asarray(k, dtype=np.float64)) ** self.exponent

    def parameters(self) -> dict[str, Any]:
        return {"sample_sizes": self.name, "exponent": self.exponent}


class DeltaShapleySampleSize(SampleSizeStrategy):
    """Samples per coalition size from Watson et al.'s (2023) bound for non-convex losses trained with SGD.

    Delta-Shapley bounds how much a model trained by ``T`` steps of SGD with
    learning rate ``c / t`` can change when one point is added to a training
    set of size ``k`` (uniform stability), and from it the number of samples
    ``m_k`` at size ``k`` for which the mean marginal at that size is within
    ``eps`` of its expectation with probability ``1 - delta`` (Theorem 7, a
    Bernstein bound with a union bound over the ``n`` players)::

        q   = lipschitz_grad * lr_factor
        H_k = max_loss^(q/(q+1)) (2 lr_factor lipschitz_loss^2)^(1/(q+1)) T^(q/(q+1)) (1 + 1/q) / max(k - 1, 1)
        m_k = ceil(2 log(2 n / delta) (2 H_k^2 + 2 max_loss H_k + 4 max_loss eps / 3) / eps^2)

    ``m_k`` decays like ``1/k^2``. The constants are properties of the
    training algorithm that are hard to know; :class:`PowerLawSampleSize`
    with exponent -2 has the same shape with a budget of your choosing.
    :func:`~dvl_dask.valuation.delta_shapley` with ``n_samples=None`` takes
    ``sum_k m_k`` over its size range as the samples per player.

    Parameters
    ----------
    max_loss, lipschitz_loss, lipschitz_grad, lr_factor : float
        Bound of the loss, Lipschitz constants of the loss and of its
        gradient, and ``c`` of the learning rate ``c / t``; all positive.
    n_sgd_iter : int
        Number of SGD steps ``T``.
    eps, delta : float
        Accuracy and failure probability of each size's mean marginal.
    """

    name = "delta-shapley"

    def __init__(
        self, *, max_loss: float, lipschitz_loss: float, lipschitz_grad: float, lr_factor: float,
        n_sgd_iter: int, eps: float = 0.01, delta: float = 0.05,
    ) -> None:
        owner = "DeltaShapleySampleSize"
        positive = {"low": 0.0, "low_open": True, "finite": True}
        self.max_loss = check_real(max_loss, "max_loss", owner, **positive)
        self.lipschitz_loss = check_real(lipschitz_loss, "lipschitz_loss", owner, **positive)
        self.lipschitz_grad = check_real(lipschitz_grad, "lipschitz_grad", owner, **positive)
        self.lr_factor = check_real(lr_factor, "lr_factor", owner, **positive)
        self.n_sgd_iter = check_positive_int(n_sgd_iter, "n_sgd_iter", owner)
        self.eps = check_real(eps, "eps", owner, **positive)
        self.delta = check_real(delta, "delta", owner, low=0.0, high=1.0, low_open=True, high_open=True)

    def fun(self, n: int, k: np.ndarray) -> np.ndarray:
        q = self.lipschitz_grad * self.lr_factor
        h = (self.max_loss ** (q / (q + 1)) * (2 * self.lr_factor * self.lipschitz_loss**2) ** (1 / (q + 1))
             * self.n_sgd_iter ** (q / (q + 1)) * (1 + 1 / q) / np.maximum(np.asarray(k, dtype=np.float64) - 1, 1))
        bound = (2 * h**2 + 2 * self.max_loss * h + 4 * self.max_loss * self.eps / 3) / self.eps**2
        return np.ceil(2 * np.log(2 * n / self.delta) * bound)

    def total(self, n: int, lower: int, upper: int) -> int | None:
        return int(self.fun(n, np.arange(lower, upper + 1)).sum())

    def parameters(self) -> dict[str, Any]:
        return {"sample_sizes": self.name, "max_loss": self.max_loss, "lipschitz_loss": self.lipschitz_loss,
                "lipschitz_grad": self.lipschitz_grad, "lr_factor": self.lr_factor, "n_sgd_iter": self.n_sgd_iter,
                "eps": self.eps, "delta": self.delta}


class StratifiedSampler:
    """Per-player sampling stratified by coalition size, with equal or Neyman allocation per size.

    For player ``i`` the coalitions ``S ⊆ N \\ {i}`` are split into the ``n``
    strata ``|S| = k`` (``k = 0..n-1``); within a stratum the coalition is a
    uniform ``k``-subset of the others. The estimator keeps one statistics
    stream per stratum and combines the stratum means with the semivalue's
    stratum weights ``w_k = C(n-1, k) w(k)`` (``1/n`` for Shapley); its
    variance is ``sum_k w_k^2 var_k / m_k`` for ``m_k`` samples in stratum
    ``k``. How a block of ``m`` samples per player is split over the strata:

    - ``allocation="equal"``: round-robin over the strata from a random
      starting size, so every stratum gets ``floor(m / n)`` or
      ``ceil(m / n)`` samples (Maleki et al.'s stratified Shapley sampling
      with equal allocation).
    - ``allocation=<SampleSizeStrategy>``: a fixed split ``m_k ∝ f(k)``
      (two per size first), e.g. :class:`HarmonicSampleSize` (VRDS,
      :class:`VRDSSampler`) or :class:`PowerLawSampleSize`.
    - ``allocation="neyman"``: two-phase Neyman allocation, the
      variance-optimal split ``m_k ∝ w_k σ_k`` (Neyman, 1934; proposed for
      Shapley values by Maleki et al., 2013, and, with a pilot-estimated
      ``σ_k``, in the variance-reduction line of Wu et al., 2023). Each block
      first draws ``pilot`` samples in every stratum to estimate ``σ_k``
      (sample standard deviation of the marginals), then splits the rest:
      two samples per stratum of positive weight (so every stratum has a
      variance estimate), a *defensive* share
      ``defensive`` of the remainder equally (so a stratum whose pilot saw
      only zeros is still explored), and the rest proportionally to
      ``w_k σ_k`` (largest remainders). The pilot samples are evaluated but
      NOT used in the estimate: the allocation depends on them, and pooling
      them with the samples they allocated would bias the stratum means. The
      estimate is therefore exactly unbiased; the pilot costs
      ``pilot * n`` of the ``m`` samples of each block (so blocks should
      hold several times that). A block with fewer than
      ``(pilot + 2) * n`` samples per player uses equal allocation.

    Parameters
    ----------
    allocation : {"equal", "neyman"} or SampleSizeStrategy
        How samples are split over coalition sizes. Sizes of weight 0 in the
        semivalue (outside Delta-Shapley's range) get no samples.
    pilot : int, default 2
        Pilot samples per stratum and block (``allocation="neyman"``), at least 2.
    defensive : float, default 0.2
        Share of the allocated samples split equally over strata, in ``[0, 1]``.
    """

    name = "stratified"

    def __init__(
        self, allocation: str | SampleSizeStrategy = "equal", pilot: int = 2, defensive: float = 0.2
    ) -> None:
        if not isinstance(allocation, SampleSizeStrategy) and allocation not in ("equal", "neyman"):
            raise InvalidParameterError(
                "The 'allocation' parameter of StratifiedSampler must be 'equal', 'neyman' or a SampleSizeStrategy "
                f"(HarmonicSampleSize(), PowerLawSampleSize(exponent), ...). Got {allocation!r}."
            )
        self.allocation = allocation
        self.pilot = check_positive_int(pilot, "pilot", "StratifiedSampler")
        if self.pilot < 2:
            raise InvalidParameterError(
                f"The 'pilot' parameter of StratifiedSampler must be at least 2 (a standard deviation needs two "
                f"samples). Got {pilot!r}."
            )
        self.defensive = check_real(defensive, "defensive", "StratifiedSampler", low=0.0, high=1.0)

    def sizes(self, rng: np.random.Generator, n: int, m: int) -> np.ndarray:
        """Stratum (coalition size) of each of ``m`` samples: round-robin from a random start."""
        return (int(rng.integers(n)) + np.arange(m)) % n

    def plan_sizes(self, rng: np.random.Generator, n: int, m: int, weights: np.ndarray) -> np.ndarray:
        """Coalition size of each of ``m`` samples of one player (equal allocation or a strategy).

        Sizes of weight 0 get no samples; with every weight positive, equal
        allocation is :meth:`sizes` (the same draws as before strategies existed).
        """
        if isinstance(self.allocation, SampleSizeStrategy):
            return np.repeat(np.arange(n), self.allocation.counts(rng, n, weights, m))
        used = np.flatnonzero(np.asarray(weights) > 0)
        if used.size == n:
            return self.sizes(rng, n, m)
        return used[(int(rng.integers(used.size)) + np.arange(m)) % used.size]

    def uses_pilot(self, n: int, m: int) -> bool:
        """Whether a block of ``m`` samples per player over ``n`` strata runs a Neyman pilot."""
        return isinstance(self.allocation, str) and self.allocation == "neyman" and m >= (self.pilot + 2) * n

    def neyman_counts(self, weights: np.ndarray, sigma: np.ndarray, m: int) -> np.ndarray:
        """Samples per stratum for ``m`` samples: 2 per weighted stratum, a defensive equal share, then ``∝ w σ``.

        ``weights`` are the stratum weights ``w_k`` and ``sigma`` the pilot
        standard deviations; strata of weight 0 get no samples.
        """
        weights = np.asarray(weights, dtype=np.float64)
        used = weights > 0
        counts = 2 * used.astype(np.int64)
        rest = m - int(counts.sum())
        if rest <= 0:
            return counts
        score = weights * np.where(used, np.asarray(sigma, dtype=np.float64), 0.0)
        equal = used / used.sum()
        share = equal if score.sum() <= 0 else self.defensive * equal + (1 - self.defensive) * score / score.sum()
        exact = rest * share
        extra = np.floor(exact).astype(np.int64)
        left = rest - int(extra.sum())
        if left > 0:
            extra[np.argsort(-(exact - extra), kind="stable")[:left]] += 1
        return counts + extra

    def draw_sizes_for_player(
        self, rng: np.random.Generator, n: int, player: int, sizes: np.ndarray
    ) -> np.ndarray:
        """Uniform subsets of ``N \\ {player}`` with the given sizes, as a boolean mask."""
        others = np.delete(np.arange(n), player)
        sizes = np.asarray(sizes, dtype=np.int64)
        # rank of each other player in a random order per sample; the first k of that order join
        ranks = np.argsort(np.argsort(rng.random((len(sizes), n - 1)), axis=1), axis=1)
        masks = np.zeros((len(sizes), n), dtype=bool)
        masks[:, others] = ranks < sizes[:, None]
        return masks

    def draw_for_player(self, rng: np.random.Generator, n: int, player: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        """``m`` equal-allocation subsets of ``N \\ {player}`` as an ``(m, n)`` boolean mask, and their sizes."""
        sizes = self.sizes(rng, n, m)
        return self.draw_sizes_for_player(rng, n, player, sizes), sizes

    def parameters(self) -> dict[str, Any]:
        if isinstance(self.allocation, SampleSizeStrategy):
            return {"sampler": self.name, "allocation": "strategy", **self.allocation.parameters()}
        if self.allocation == "equal":
            return {"sampler": self.name, "allocation": self.allocation}
        return {"sampler": self.name, "allocation": self.allocation, "pilot": self.pilot,
                "defensive": self.defensive}

    def __dask_tokenize__(self) -> Any:
        # The class (its code, for user subclasses) and its whole state, not the hand-picked
        # parameters(): a subclass with state of its own must not share a key.
        return instance_token(self)


class VRDSSampler(StratifiedSampler):
    """Variance-reduced data Shapley sampling (Wu et al., 2023): stratified by size with ``m_k ∝ 1 / (1 + k)``.

    A :class:`StratifiedSampler` with :class:`HarmonicSampleSize` (pyDVL's
    ``VRDSSampler``): each player's samples go mostly to small coalitions,
    where marginal contributions of learning algorithms vary most, two per
    size first. The estimate combines the stratum means with the semivalue's
    weights and stays unbiased; only its variance depends on the split.

    References
    ----------
    Wu, M., Jia, R., Lin, C., Huang, W. and Chang, X. (2023). Variance reduced
    Shapley value estimation for trustworthy data valuation. Computers &
    Operations Research 159, 106305.
    """

    name = "vrds"

    def __init__(self) -> None:
        super().__init__(allocation=HarmonicSampleSize())

    def parameters(self) -> dict[str, Any]:
        return {"sampler": self.name}


_SUBSET_SAMPLERS = {
    "uniform": UniformSampler,
    "antithetic": AntitheticSampler,
    "owen": OwenSampler,
}


def make_subset_sampler(sampler: str | SubsetSampler | StratifiedSampler, owner: str) -> Any:
    """Resolve a sampler argument: a name or an instance."""
    if isinstance(sampler, SubsetSampler | StratifiedSampler):
        return sampler
    if sampler == "stratified":
        return StratifiedSampler()
    if sampler == "stratified-neyman":
        return StratifiedSampler("neyman")
    if sampler == "vrds":
        return VRDSSampler()
    if isinstance(sampler, str) and sampler in _SUBSET_SAMPLERS:
        return _SUBSET_SAMPLERS[sampler]()
    names = [*_SUBSET_SAMPLERS, "stratified", "stratified-neyman", "vrds"]
    raise InvalidParameterError(
        f"The 'sampler' parameter of {owner} must be one of {names} or a sampler instance "
        f"(OwenSampler(n_q=...), BetaSampler(a, b)). Got {sampler!r}."
    )
