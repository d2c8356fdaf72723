"""pyDVL 0.10's samplers, truncation policies and their strategies, as descriptions dvl_dask translates.

A compat sampler holds pyDVL's arguments; the valuation that receives it
picks the dvl_dask method and options (``sampler=``, ``antithetic=``,
``truncation=``, ``n_q=``) in ``_methods.py``. Its ``seed`` becomes the seed
of the run: the values depend on it only, never on the scheduler.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ....errors import InvalidParameterError
from ....valuation import FixedTruncation as NativeFixedTruncation
from ....valuation import NoTruncation as NativeNoTruncation
from ....valuation import RelativeTruncation as NativeRelativeTruncation
from ._unsupported import not_supported

__all__ = [
    "AntitheticOwenSampler",
    "AntitheticPermutationSampler",
    "AntitheticSampler",
    "ConstantSampleSize",
    "DeterministicPermutationSampler",
    "DeterministicUniformSampler",
    "DeviationTruncation",
    "FiniteSequentialSizeIteration",
    "FixedTruncation",
    "GridOwenStrategy",
    "HarmonicSampleSize",
    "IndexSampler",
    "LinearSampleSize",
    "LOOSampler",
    "MSRSampler",
    "NoIndexIteration",
    "NoTruncation",
    "OwenSampler",
    "PermutationSampler",
    "PowerLawSampleSize",
    "RandomIndexIteration",
    "RandomSizeIteration",
    "RelativeTruncation",
    "RoundRobinSizeIteration",
    "Sample",
    "SequentialIndexIteration",
    "StratifiedPermutationSampler",
    "StratifiedSampler",
    "TruncationPolicy",
    "UniformOwenStrategy",
    "UniformSampler",
    "VRDSSampler",
]


# -- samples ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Sample:
    """pyDVL's ``Sample(idx, subset)``: a player of interest (or None) and a coalition; ``utility(sample)`` works."""

    idx: int | None
    subset: np.ndarray


# -- truncation ---------------------------------------------------------------------------------
class TruncationPolicy:
    """Base of pyDVL's truncation policies; :meth:`native` gives dvl_dask's policy."""

    def native(self) -> Any:
        raise NotImplementedError  # pragma: no cover - every policy below overrides it

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NoTruncation(TruncationPolicy):
    """Evaluate every prefix of a permutation."""

    def native(self) -> Any:
        return NativeNoTruncation()


class FixedTruncation(TruncationPolicy):
    """Stop a permutation after a fixed share ``fraction`` of the players.

    pyDVL 0.10 writes ``FixedTruncation(fraction)``; pyDVL 0.9's ``FixedTruncation(u, fraction)`` is accepted.
    """

    def __init__(self, *args: Any, fraction: float | None = None) -> None:
        if fraction is None:
            if not args:
                raise InvalidParameterError("FixedTruncation needs 'fraction', the share of players to evaluate.")
            fraction = args[-1]
        self.fraction = float(fraction)

    def native(self) -> Any:
        return NativeFixedTruncation(self.fraction)


class RelativeTruncation(TruncationPolicy):
    """Stop a permutation once ``|u(prefix) - u(N)| <= rtol |u(N)|``.

    ``burn_in_fraction`` (players always evaluated first) is accepted when 0,
    its default; pyDVL 0.9's ``RelativeTruncation(u, rtol)`` is accepted too.
    """

    def __init__(self, *args: Any, rtol: float | None = None, burn_in_fraction: float = 0.0) -> None:
        if rtol is None:
            if not args:
                raise InvalidParameterError("RelativeTruncation needs 'rtol', the relative tolerance.")
            rtol = args[-1]
        if burn_in_fraction:
            raise not_supported("RelativeTruncation(burn_in_fraction > 0)")
        self.rtol = float(rtol)
        self.burn_in_fraction = burn_in_fraction

    def native(self) -> Any:
        return NativeRelativeTruncation(self.rtol)


class DeviationTruncation(TruncationPolicy):
    """pyDVL's deviation-based truncation: not available yet (raises, naming the dvl_dask way)."""

    def __init__(self, sigmas: float, burn_in_fraction: float = 0.0) -> None:
        raise not_supported("DeviationTruncation")


def native_truncation(truncation: Any, owner: str) -> Any:
    """dvl_dask's truncation for pyDVL's ``truncation`` argument (None: none)."""
    if truncation is None:
        return None
    if not isinstance(truncation, TruncationPolicy):
        raise InvalidParameterError(
            f"The 'truncation' argument of {owner} must be a truncation policy of dvl_dask.compat.pydvl "
            f"(NoTruncation, FixedTruncation, RelativeTruncation). Got {type(truncation).__name__}."
        )
    return truncation.native()


# -- strategies --------------------------------------------------------------------------------
class _Strategy:
    """A record of pyDVL's arguments (index iterations, size strategies)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __repr__(self) -> str:
        return f"{type(self).__name__}(*{self.args}, **{self.kwargs})"


class SequentialIndexIteration(_Strategy):
    """Players in turn (pyDVL's default)."""


class RandomIndexIteration(_Strategy):
    """Players at random."""


class NoIndexIteration(_Strategy):
    """Whole coalitions, no player of interest."""


class FiniteSequentialSizeIteration(_Strategy):
    """Sizes in turn, each as often as the size strategy says."""


class RandomSizeIteration(_Strategy):
    """Sizes drawn from the size strategy."""


class RoundRobinSizeIteration(_Strategy):
    """One sample per size in turn."""


class ConstantSampleSize(_Strategy):
    """As many samples of every size (dvl_dask's ``StratifiedSampler(allocation="equal")``)."""

    def __init__(self, n_samples: int = 1, lower_bound: int | None = None, upper_bound: int | None = None) -> None:
        super().__init__(n_samples=n_samples, lower_bound=lower_bound, upper_bound=upper_bound)


class HarmonicSampleSize(_Strategy):
    """Samples per size proportional to ``1 / (1 + k)``: no dvl_dask counterpart yet."""


class PowerLawSampleSize(_Strategy):
    """Samples per size proportional to ``(1 + k)^a``: no dvl_dask counterpart yet."""


class LinearSampleSize(_Strategy):
    """Samples per size linear in ``k``: no dvl_dask counterpart yet."""


class GridOwenStrategy:
    """Owen sampling on a grid of ``n_samples_outer`` probabilities (dvl_dask's ``n_q``)."""

    def __init__(self, n_samples_outer: int) -> None:
        self.n_samples_outer = int(n_samples_outer)


class UniformOwenStrategy:
    """Owen sampling with probabilities drawn uniformly (dvl_dask's ``n_q=None``)."""

    def __init__(self, n_samples_outer: int, seed: int | None = None) -> None:
        self.n_samples_outer = int(n_samples_outer)
        self.seed = seed


# -- samplers ----------------------------------------------------------------------------------
class IndexSampler:
    """Base of pyDVL's samplers: the arguments the valuation translates, and the seed.

    ``kind`` names the dvl_dask sampling scheme; ``batch_size`` is accepted
    and ignored (dvl_dask sizes its block tasks itself).
    """

    kind = ""
    deterministic = False

    def __init__(self, batch_size: int = 1, seed: Any = None, **options: Any) -> None:
        self.batch_size = batch_size
        self.seed = seed
        self.options = options

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed!r})"


class PermutationSampler(IndexSampler):
    """Random permutations (dvl_dask's :func:`~dvl_dask.valuation.permutation_shapley`); ``truncation`` optional."""

    kind = "permutation"

    def __init__(self, truncation: TruncationPolicy | None = None, seed: Any = None, batch_size: int = 1) -> None:
        super().__init__(batch_size, seed)
        self.truncation = truncation


class AntitheticPermutationSampler(PermutationSampler):
    """Permutations paired with their reverse (``antithetic=True``)."""

    kind = "antithetic_permutation"


class DeterministicPermutationSampler(PermutationSampler):
    """All permutations: the exact value (dvl_dask's :func:`~dvl_dask.valuation.exact_shapley`)."""

    kind = "exact"
    deterministic = True

    def __init__(self, truncation: TruncationPolicy | None = None, batch_size: int = 1) -> None:
        super().__init__(truncation, None, batch_size)


class UniformSampler(IndexSampler):
    """Coalitions drawn uniformly (``sampler="uniform"``)."""

    kind = "uniform"

    def __init__(self, index_iteration: Any = None, seed: Any = None, batch_size: int = 1) -> None:
        super().__init__(batch_size, seed)
        self.index_iteration = index_iteration


class AntitheticSampler(UniformSampler):
    """Coalitions paired with their complement (``sampler="antithetic"``)."""

    kind = "antithetic"


class DeterministicUniformSampler(UniformSampler):
    """All coalitions: the exact value."""

    kind = "exact"
    deterministic = True

    def __init__(self, index_iteration: Any = None, batch_size: int = 1) -> None:
        super().__init__(index_iteration, None, batch_size)


class MSRSampler(IndexSampler):
    """Maximum sample reuse (dvl_dask's :func:`~dvl_dask.valuation.msr_banzhaf`)."""

    kind = "msr"

    def __init__(self, seed: Any = None, batch_size: int = 1) -> None:
        super().__init__(batch_size, seed)


class OwenSampler(IndexSampler):
    """Owen sampling (dvl_dask's :func:`~dvl_dask.valuation.owen_shapley`).

    ``GridOwenStrategy(m)`` is ``n_q=m``, ``UniformOwenStrategy`` is ``n_q=None``;
    ``n_samples_inner`` is accepted (dvl_dask draws one coalition per probability).
    """

    kind = "owen"
    antithetic = False

    def __init__(
        self,
        outer_sampling_strategy: GridOwenStrategy | UniformOwenStrategy | None = None,
        n_samples_inner: int = 2,
        index_iteration: Any = None,
        seed: Any = None,
        batch_size: int = 1,
    ) -> None:
        super().__init__(batch_size, seed)
        if outer_sampling_strategy is None:
            outer_sampling_strategy = GridOwenStrategy(200)
        if not isinstance(outer_sampling_strategy, (GridOwenStrategy, UniformOwenStrategy)):
            raise InvalidParameterError(
                "The 'outer_sampling_strategy' argument of OwenSampler must be GridOwenStrategy(n) or "
                f"UniformOwenStrategy(n). Got {type(outer_sampling_strategy).__name__}."
            )
        self.outer_sampling_strategy = outer_sampling_strategy
        self.n_samples_inner = n_samples_inner
        self.index_iteration = index_iteration

    @property
    def n_q(self) -> int | None:
        """dvl_dask's ``n_q``: grid size, or None for uniform draws."""
        strategy = self.outer_sampling_strategy
        return strategy.n_samples_outer if isinstance(strategy, GridOwenStrategy) else None


class AntitheticOwenSampler(OwenSampler):
    """Owen sampling with complementary coalitions (``antithetic=True``)."""

    antithetic = True


class StratifiedSampler(IndexSampler):
    """Coalitions stratified by size (dvl_dask's :class:`~dvl_dask.valuation.StratifiedSampler`).

    ``ConstantSampleSize`` (without bounds) is equal allocation over sizes;
    other size strategies raise :class:`~dvl_dask.errors.CompatNotSupportedError`.
    """

    kind = "stratified"

    def __init__(
        self,
        sample_sizes: Any = None,
        sample_sizes_iteration: Any = None,
        index_iteration: Any = None,
        seed: Any = None,
        batch_size: int = 1,
    ) -> None:
        super().__init__(batch_size, seed)
        sizes = sample_sizes if sample_sizes is not None else ConstantSampleSize()
        bounded = isinstance(sizes, ConstantSampleSize) and (
            sizes.kwargs["lower_bound"] is not None or sizes.kwargs["upper_bound"] is not None
        )
        if not isinstance(sizes, ConstantSampleSize) or bounded:
            raise not_supported("StratifiedSampler with this sample-size strategy")
        self.sample_sizes = sizes
        self.sample_sizes_iteration = sample_sizes_iteration
        self.index_iteration = index_iteration


class StratifiedPermutationSampler(PermutationSampler):
    """pyDVL's stratified permutation sampler: not available yet (raises, naming the dvl_dask way)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise not_supported("StratifiedPermutationSampler")


class VRDSSampler(IndexSampler):
    """pyDVL's variance-reduced stratified sampler: not available yet (raises, naming the dvl_dask way)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise not_supported("VRDSSampler")


class LOOSampler(IndexSampler):
    """Leave-one-out: the coalitions ``N \\ {i}`` (dvl_dask's :func:`~dvl_dask.valuation.loo`)."""

    kind = "loo"
    deterministic = True

    def __init__(self, batch_size: int = 1, index_iteration: Any = None, seed: Any = None) -> None:
        super().__init__(batch_size, seed)
        self.index_iteration = index_iteration
