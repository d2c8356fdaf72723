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

from .... import valuation as native
from ....errors import InvalidParameterError
from ....validation import as_seed_sequence, check_positive_int, check_real
from ....valuation import DeviationTruncation as NativeDeviationTruncation
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
    "DeltaShapleyNCSGDConfig",
    "DeltaShapleyNCSGDSampleSize",
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
    "SampleSizeStrategy",
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

    def __post_init__(self) -> None:
        if self.idx is not None:
            check_positive_int(self.idx, "idx", "Sample", allow_zero=True)
        subset = np.asarray(self.subset) if not isinstance(self.subset, (str, bytes)) else np.asarray(None)
        if subset.ndim != 1 or (subset.size and not np.issubdtype(subset.dtype, np.integer)):
            raise InvalidParameterError(
                f"The 'subset' argument of Sample must be a 1-d array of player indices. Got {self.subset!r:.60}."
            )


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
        self.fraction = NativeFixedTruncation(fraction).fraction  # checked where the user typed it

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
        check_real(burn_in_fraction, "burn_in_fraction", "RelativeTruncation", low=0.0, high=1.0)
        if burn_in_fraction:
            raise not_supported("RelativeTruncation(burn_in_fraction > 0)")
        self.rtol = NativeRelativeTruncation(rtol).rtol  # checked where the user typed it
        self.burn_in_fraction = burn_in_fraction

    def native(self) -> Any:
        return NativeRelativeTruncation(self.rtol)


class DeviationTruncation(TruncationPolicy):
    """Stop a permutation once ``|u(prefix) - u(N)| < sigmas`` standard deviations of its prefix scores so far.

    The rule is checked after ``burn_in_fraction * n`` prefixes (dvl_dask's
    :class:`~dvl_dask.valuation.DeviationTruncation`, the same rule).
    """

    def __init__(self, sigmas: float, burn_in_fraction: float = 0.0) -> None:  # pyDVL 0.10's order
        NativeDeviationTruncation(burn_in_fraction, sigmas=sigmas)  # checks them where the user typed them
        self.burn_in_fraction, self.sigmas = burn_in_fraction, sigmas

    def native(self) -> Any:
        return NativeDeviationTruncation(self.burn_in_fraction, sigmas=self.sigmas)


def native_truncation(truncation: Any, owner: str) -> Any:
    """dvl_dask's truncation for pyDVL's ``truncation`` argument (None: none)."""
    if truncation is None:
        return None
    if not isinstance(truncation, TruncationPolicy):
        raise InvalidParameterError(
            f"The 'truncation' argument of {owner} must be a truncation policy of dvl_dask.compat.pydvl "
            f"(NoTruncation, FixedTruncation, RelativeTruncation, DeviationTruncation). "
            f"Got {type(truncation).__name__}."
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


def _check_iteration(value: Any, name: str, owner: str) -> Any:
    """pyDVL's ``index_iteration`` or ``sample_sizes_iteration``: None, or an iteration class or instance."""
    is_class = isinstance(value, type) and issubclass(value, _Strategy)
    if value is not None and not is_class and not isinstance(value, _Strategy):
        raise InvalidParameterError(
            f"The '{name}' argument of {owner} must be None or an iteration of dvl_dask.compat.pydvl.valuation "
            f"(e.g. SequentialIndexIteration, RandomIndexIteration). Got {value!r:.60}."
        )
    return value


class RoundRobinSizeIteration(_Strategy):
    """One sample per size in turn."""


class SampleSizeStrategy(_Strategy):
    """pyDVL's sample-size strategies: how a stratified sampler splits its samples over coalition sizes.

    :meth:`native` gives dvl_dask's strategy. ``n_samples`` (samples per
    player) is the budget of a finite sampler run with ``NoStopping``; with
    another stopping criterion the run also stops once every player has that
    many. ``lower_bound`` / ``upper_bound`` (sizes outside get no samples)
    have no counterpart outside Delta-Shapley: they raise.
    """

    def __init__(
        self, n_samples: int | None = None, lower_bound: int | None = None, upper_bound: int | None = None,
    ) -> None:
        owner = type(self).__name__
        if n_samples is not None:
            check_positive_int(n_samples, "n_samples", owner)
        for name, bound in (("lower_bound", lower_bound), ("upper_bound", upper_bound)):
            if bound is not None:
                check_positive_int(bound, name, owner, allow_zero=True)
        super().__init__(n_samples=n_samples, lower_bound=lower_bound, upper_bound=upper_bound)
        self.n_samples, self.lower_bound, self.upper_bound = n_samples, lower_bound, upper_bound

    def native(self) -> Any:
        """dvl_dask's strategy (or allocation name) for this one."""
        if self.lower_bound is not None or self.upper_bound is not None:
            raise not_supported("a sample-size strategy with lower_bound or upper_bound")
        return self._native()

    def bounds(self, n_players: int) -> tuple[int, int]:
        """Smallest and largest coalition size (of the others) sampled: pyDVL's defaults are ``0`` and ``n - 1``."""
        lower = 0 if self.lower_bound is None else int(self.lower_bound)
        upper = n_players - 1 if self.upper_bound is None else int(self.upper_bound)
        return lower, upper

    def _native(self) -> Any:
        raise not_supported("StratifiedSampler with this sample-size strategy")


class ConstantSampleSize(SampleSizeStrategy):
    """As many samples of every size (dvl_dask's ``StratifiedSampler(allocation="equal")``)."""

    def __init__(self, n_samples: int | None = None, lower_bound: int | None = None,
                 upper_bound: int | None = None) -> None:
        super().__init__(n_samples, lower_bound, upper_bound)

    def _native(self) -> Any:
        return "equal"


class HarmonicSampleSize(SampleSizeStrategy):
    """Samples per size proportional to ``1 / (1 + k)`` (dvl_dask's :class:`~dvl_dask.valuation.HarmonicSampleSize`)."""

    def _native(self) -> Any:
        return native.HarmonicSampleSize()


class PowerLawSampleSize(SampleSizeStrategy):
    """Samples per size proportional to ``(1 + k)^exponent`` (:class:`~dvl_dask.valuation.PowerLawSampleSize`)."""

    def __init__(
        self, exponent: float, n_samples: int | None = None, lower_bound: int | None = None,
        upper_bound: int | None = None,
    ) -> None:
        super().__init__(n_samples, lower_bound, upper_bound)
        self.exponent = check_real(exponent, "exponent", "PowerLawSampleSize", finite=True)
        self.kwargs["exponent"] = exponent

    def _native(self) -> Any:
        return native.PowerLawSampleSize(self.exponent)


@dataclasses.dataclass
class DeltaShapleyNCSGDConfig:
    """Constants of Watson et al.'s (2023) bound for non-convex losses trained with SGD (pyDVL's config).

    ``n_val`` and ``n_train`` are used only by pyDVL's ``version="code"``
    bound, which dvl_dask does not implement (it raises when used).
    """

    max_loss: float
    lipschitz_loss: float
    lipschitz_grad: float
    lr_factor: float
    n_sgd_iter: int
    n_val: int
    n_train: int
    eps: float = 0.01
    delta: float = 0.05
    version: str = "theorem7"

    def __post_init__(self) -> None:
        owner = "DeltaShapleyNCSGDConfig"
        for name in ("max_loss", "lipschitz_loss", "lipschitz_grad", "lr_factor"):
            check_real(getattr(self, name), name, owner, low=0.0, low_open=True, finite=True)
        for name in ("n_sgd_iter", "n_val", "n_train"):
            check_positive_int(getattr(self, name), name, owner)
        for name in ("eps", "delta"):
            check_real(getattr(self, name), name, owner, low=0.0, high=1.0, low_open=True, high_open=True)
        if self.version not in ("theorem7", "code"):
            raise InvalidParameterError(
                f"The 'version' argument of {owner} must be 'theorem7' or 'code'. Got {self.version!r}."
            )


class DeltaShapleyNCSGDSampleSize(SampleSizeStrategy):
    """Delta-Shapley's samples per size from its SGD bound (:class:`~dvl_dask.valuation.DeltaShapleySampleSize`).

    With ``n_samples`` left to None the strategy prescribes the total: a
    finite sampler is exhausted after ``sum_k m_k`` samples per player.
    """

    def __init__(
        self, config: DeltaShapleyNCSGDConfig, lower_bound: int | None = None, upper_bound: int | None = None,
    ) -> None:
        if not isinstance(config, DeltaShapleyNCSGDConfig):
            raise InvalidParameterError(
                "The 'config' argument of DeltaShapleyNCSGDSampleSize must be a DeltaShapleyNCSGDConfig. "
                f"Got {type(config).__name__}."
            )
        super().__init__(None, lower_bound, upper_bound)
        self.config = config

    def _native(self) -> Any:
        c = self.config
        if c.version != "theorem7":
            raise not_supported("DeltaShapleyNCSGDConfig(version='code')")
        return native.DeltaShapleySampleSize(
            max_loss=c.max_loss, lipschitz_loss=c.lipschitz_loss, lipschitz_grad=c.lipschitz_grad,
            lr_factor=c.lr_factor, n_sgd_iter=c.n_sgd_iter, eps=c.eps, delta=c.delta,
        )


class LinearSampleSize(SampleSizeStrategy):
    """Samples per size linear in ``k`` (pyDVL: for testing): no dvl_dask counterpart, raises when used."""

    def __init__(
        self, scale: float = 1.0, offset: int = 0, n_samples: int | None = None, lower_bound: int | None = None,
        upper_bound: int | None = None,
    ) -> None:
        super().__init__(n_samples, lower_bound, upper_bound)
        self.scale = check_real(scale, "scale", "LinearSampleSize", low=0.0, low_open=True, finite=True)
        self.offset = check_positive_int(offset, "offset", "LinearSampleSize", allow_zero=True)


class GridOwenStrategy:
    """Owen sampling on a grid of ``n_samples_outer`` probabilities (dvl_dask's ``n_q``)."""

    def __init__(self, n_samples_outer: int) -> None:
        self.n_samples_outer = check_positive_int(n_samples_outer, "n_samples_outer", "GridOwenStrategy")


class UniformOwenStrategy:
    """Owen sampling with probabilities drawn uniformly (dvl_dask's ``n_q=None``)."""

    def __init__(self, n_samples_outer: int, seed: int | None = None) -> None:
        self.n_samples_outer = check_positive_int(n_samples_outer, "n_samples_outer", "UniformOwenStrategy")
        if seed is not None:
            as_seed_sequence(seed, "seed", "UniformOwenStrategy")
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
        owner = type(self).__name__
        self.batch_size = check_positive_int(batch_size, "batch_size", owner)
        if seed is not None:
            as_seed_sequence(seed, "seed", owner)  # checked where the user typed it
        self.seed = seed
        self.options = options

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed!r})"


class PermutationSampler(IndexSampler):
    """Random permutations (dvl_dask's :func:`~dvl_dask.valuation.permutation_shapley`); ``truncation`` optional."""

    kind = "permutation"

    def __init__(self, truncation: TruncationPolicy | None = None, seed: Any = None, batch_size: int = 1) -> None:
        super().__init__(batch_size, seed)
        native_truncation(truncation, type(self).__name__)  # checked where the user typed it
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

    def __init__(self, batch_size: int = 1, index_iteration: Any = None, seed: Any = None) -> None:
        super().__init__(batch_size, seed)
        self.index_iteration = _check_iteration(index_iteration, "index_iteration", type(self).__name__)


class AntitheticSampler(UniformSampler):
    """Coalitions paired with their complement (``sampler="antithetic"``)."""

    kind = "antithetic"


class DeterministicUniformSampler(UniformSampler):
    """All coalitions: the exact value."""

    kind = "exact"
    deterministic = True

    def __init__(self, batch_size: int = 1, index_iteration: Any = None) -> None:
        super().__init__(batch_size, index_iteration, None)


class MSRSampler(IndexSampler):
    """Maximum sample reuse (dvl_dask's :func:`~dvl_dask.valuation.msr_banzhaf`)."""

    kind = "msr"

    def __init__(self, batch_size: int = 1, seed: Any = None) -> None:
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
        batch_size: int = 1,
        index_iteration: Any = None,
        seed: Any = None,
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
        self.n_samples_inner = check_positive_int(n_samples_inner, "n_samples_inner", type(self).__name__)
        self.index_iteration = _check_iteration(index_iteration, "index_iteration", type(self).__name__)

    @property
    def n_q(self) -> int | None:
        """dvl_dask's ``n_q``: grid size, or None for uniform draws."""
        strategy = self.outer_sampling_strategy
        return strategy.n_samples_outer if isinstance(strategy, GridOwenStrategy) else None


class AntitheticOwenSampler(OwenSampler):
    """Owen sampling with complementary coalitions (``antithetic=True``)."""

    antithetic = True


def _check_strategy(sizes: Any, owner: str) -> SampleSizeStrategy:
    if not isinstance(sizes, SampleSizeStrategy):
        raise InvalidParameterError(
            f"The 'sample_sizes' argument of {owner} must be a sample-size strategy of dvl_dask.compat.pydvl "
            f"(ConstantSampleSize, HarmonicSampleSize, PowerLawSampleSize). Got {type(sizes).__name__}."
        )
    return sizes


class StratifiedSampler(IndexSampler):
    """Coalitions stratified by size (dvl_dask's :class:`~dvl_dask.valuation.StratifiedSampler`).

    ``ConstantSampleSize()`` is ``allocation="equal"``; ``HarmonicSampleSize()``
    and ``PowerLawSampleSize(a)`` are dvl_dask's strategies of the same names
    (``allocation=``). With pyDVL's default (finite) index iteration a
    strategy's ``n_samples`` caps the samples per player; strategies with
    size bounds raise :class:`~dvl_dask.errors.CompatNotSupportedError`
    (Delta-Shapley's bounded sizes are :class:`DeltaShapleyValuation`).
    """

    kind = "stratified"

    def __init__(
        self,
        sample_sizes: Any = None,
        sample_sizes_iteration: Any = None,
        batch_size: int = 1,
        index_iteration: Any = None,
        seed: Any = None,
    ) -> None:
        super().__init__(batch_size, seed)
        sizes = _check_strategy(sample_sizes if sample_sizes is not None else ConstantSampleSize(),
                                type(self).__name__)
        self._allocation = sizes._native()  # size bounds are checked when used (only Delta-Shapley takes them)
        self.sample_sizes = sizes
        self.sample_sizes_iteration = _check_iteration(
            sample_sizes_iteration, "sample_sizes_iteration", type(self).__name__
        )
        self.index_iteration = _check_iteration(index_iteration, "index_iteration", type(self).__name__)

    def samples_per_index(self, n_players: int) -> int | None:
        """Samples per player after which the sampler is exhausted (None: never).

        A finite index iteration (pyDVL's default) is exhausted after the
        strategy's ``n_samples``, or, without it, the total a strategy
        prescribes (``DeltaShapleyNCSGDSampleSize``); an infinite one never.
        """
        if self.index_iteration is not None:
            return None
        if self.sample_sizes.n_samples is not None:
            return int(self.sample_sizes.n_samples)
        total = getattr(self._allocation, "total", None)
        return None if total is None else total(n_players, *self.sample_sizes.bounds(n_players))

    def native(self) -> Any:
        """dvl_dask's sampler."""
        self.sample_sizes.native()  # raises for size bounds, which only DeltaShapleyValuation applies
        return native.StratifiedSampler(allocation=self._allocation)


class VRDSSampler(StratifiedSampler):
    """Variance-reduced stratified sampling (dvl_dask's :class:`~dvl_dask.valuation.VRDSSampler`).

    ``n_samples_per_index`` samples per player, split over sizes in
    proportion to ``1 / (1 + k)``; the sampler is then exhausted.
    """

    def __init__(self, n_samples_per_index: int, batch_size: int = 1, seed: Any = None) -> None:
        check_positive_int(n_samples_per_index, "n_samples_per_index", "VRDSSampler")
        super().__init__(HarmonicSampleSize(n_samples=n_samples_per_index), batch_size=batch_size, seed=seed)
        self.n_samples_per_index = n_samples_per_index

    def native(self) -> Any:
        return native.VRDSSampler()


class StratifiedPermutationSampler(PermutationSampler):
    """Permutations with marginals stratified by prefix size (``permutation_shapley(sampler="stratified")``).

    dvl_dask draws uniform permutations (every prefix size equally often)
    and averages the per-size means, an unbiased estimate; ``sample_sizes``
    must therefore be ``ConstantSampleSize()`` without bounds; the stopping
    criterion sets the number of permutations. pyDVL's other strategies (an
    experimental approximation there) raise.
    """

    kind = "stratified_permutation"

    def __init__(
        self, sample_sizes: Any = None, truncation: TruncationPolicy | None = None, seed: Any = None,
        batch_size: int = 1,
    ) -> None:
        super().__init__(truncation, seed, batch_size)
        sizes = _check_strategy(sample_sizes if sample_sizes is not None else ConstantSampleSize(),
                                type(self).__name__)
        if not isinstance(sizes, ConstantSampleSize) or sizes.native() != "equal":
            raise not_supported("StratifiedPermutationSampler with this sample-size strategy")
        self.sample_sizes = sizes


class LOOSampler(IndexSampler):
    """Leave-one-out: the coalitions ``N \\ {i}`` (dvl_dask's :func:`~dvl_dask.valuation.loo`)."""

    kind = "loo"
    deterministic = True

    def __init__(self, batch_size: int = 1, index_iteration: Any = None, seed: Any = None) -> None:
        super().__init__(batch_size, seed)
        self.index_iteration = _check_iteration(index_iteration, "index_iteration", type(self).__name__)
