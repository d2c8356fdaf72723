"""Monte Carlo valuation methods as lazy graphs of block tasks.

Each public function builds a graph for a fixed budget and returns a lazy
``xr.Dataset``. Block *i* draws its samples from child *i* of the seed, so the
same seed gives the same values on any scheduler; blocks return mergeable
statistics that a tree reduction combines. For a budget chosen by a stopping
criterion use :func:`dvl_dask.valuation.run_until_converged` with the same
function as ``method``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.delayed import Delayed

from .. import config
from .._provenance import describe_utility
from ..errors import InvalidParameterError
from ..keys import current_call, function_token, lazy_method
from ..results import valuation_dataset
from ..results._schema import SAMPLE_MEAN
from ..typing import UtilityLike
from ..validation import SeedLike, as_seed_sequence, check_bool, check_positive_int, seed_entropy
from ._backends import _default_client
from ._coefficients import (
    LogCoefficient,
    banzhaf_coefficient,
    beta_coefficient,
    check_coefficient,
    delta_coefficient,
    shapley_coefficient,
)
from ._estimators import (
    Estimator,
    MsrEstimator,
    PermutationEstimator,
    SemivalueEstimator,
    run_block,
    score_width,
)
from ._graph import block_ranges, check_utility, companion_name, even_ranges, utility_node
from ._samplers import (
    BetaSampler,
    ConstantSampleSize,
    OwenSampler,
    SampleSizeStrategy,
    StratifiedSampler,
    UniformSampler,
    child_seed,
    make_permutation_sampler,
    make_subset_sampler,
)
from ._stats import PointStats, merge_all
from ._truncation import bias_attrs, make_truncation
from ._warmup import warm_workers

__all__ = [
    "ESTIMATOR_FACTORIES",
    "banzhaf",
    "beta_shapley",
    "delta_shapley",
    "msr_banzhaf",
    "owen_shapley",
    "permutation_shapley",
    "sample_attrs",
    "semivalue",
]


# -- estimator factories: method name + options → Estimator (shared with run_until_converged) ----
def _permutation_estimator(
    utility: UtilityLike, *, truncation: Any = None, antithetic: bool = False, warm_start: bool = False,
    sampler: Any = None,
) -> Estimator:
    antithetic = check_bool(antithetic, "antithetic", "permutation_shapley")
    warm_start = check_bool(warm_start, "warm_start", "permutation_shapley")
    if warm_start and not callable(getattr(utility, "prefix_scores", None)):
        raise InvalidParameterError(
            "warm_start=True needs a utility with prefix_scores() (dvl_dask.Utility). "
            f"Got {type(utility).__name__}."
        )
    return PermutationEstimator(
        make_permutation_sampler(sampler, antithetic, "permutation_shapley"),
        make_truncation(truncation, "permutation_shapley"), warm_start,
        score_range=score_width(utility), n_players=utility.n_players,
    )


def _coefficient_parameters(coefficient: LogCoefficient) -> dict[str, Any]:
    name = getattr(coefficient, "__qualname__", type(coefficient).__name__)
    # Code *and* captured values: weighted(alpha=1) and weighted(alpha=8) must differ.
    return {"coefficient": name, "coefficient_code": function_token(coefficient)}


def _semivalue_estimator(
    utility: UtilityLike, *, coefficient: LogCoefficient, sampler: Any = "uniform", method: str = "semivalue"
) -> Estimator:
    check_coefficient(coefficient, utility.n_players, method)
    return SemivalueEstimator(
        method, coefficient, make_subset_sampler(sampler, method), _coefficient_parameters(coefficient),
        n_players=utility.n_players, score_range=score_width(utility),
    )


def _banzhaf_estimator(utility: UtilityLike, *, sampler: Any = "uniform") -> Estimator:
    return SemivalueEstimator(
        "banzhaf", banzhaf_coefficient, make_subset_sampler(sampler, "banzhaf"), {"coefficient": "banzhaf"},
        n_players=utility.n_players, score_range=score_width(utility),
    )


def _msr_estimator(utility: UtilityLike, *, antithetic: bool = False) -> Estimator:
    if antithetic:
        raise InvalidParameterError(
            "msr_banzhaf does not support antithetic=True: each pair S, N \\ S gives a player one 'with' and "
            "one 'without' sample from complementary coalitions, which are negatively correlated, so the "
            "variance grows. To fix, drop antithetic, or use banzhaf(..., sampler='antithetic')."
        )
    return MsrEstimator(UniformSampler(), score_range=score_width(utility))


def _beta_estimator(utility: UtilityLike, *, alpha: float, beta: float, sampler: Any = None) -> Estimator:
    coefficient = beta_coefficient(alpha, beta)
    chosen = BetaSampler(beta, alpha) if sampler is None else make_subset_sampler(sampler, "beta_shapley")
    return SemivalueEstimator(
        "beta_shapley", coefficient, chosen, {"coefficient": "beta", "alpha": float(alpha), "beta": float(beta)},
        n_players=utility.n_players, score_range=score_width(utility),
    )


def _owen_estimator(utility: UtilityLike, *, n_q: int | None = None, antithetic: bool = False) -> Estimator:
    return SemivalueEstimator(
        "owen_shapley", shapley_coefficient, OwenSampler(n_q, antithetic), {"coefficient": "shapley"},
        n_players=utility.n_players, score_range=score_width(utility),
    )


def _delta_bounds(n: int, lower_bound: Any, upper_bound: Any) -> tuple[int, int]:
    owner = "delta_shapley"
    for name, bound in (("lower_bound", lower_bound), ("upper_bound", upper_bound)):
        if isinstance(bound, bool) or not isinstance(bound, int | np.integer) or not 0 <= bound <= n - 1:
            raise InvalidParameterError(
                f"The '{name}' parameter of {owner} must be a coalition size, an int in [0, n - 1] = [0, {n - 1}]. "
                f"Got {bound!r}."
            )
    if lower_bound > upper_bound:
        raise InvalidParameterError(
            f"The 'lower_bound' parameter of {owner} must not exceed 'upper_bound'. Got {lower_bound} > {upper_bound}."
        )
    return int(lower_bound), int(upper_bound)


def _delta_estimator(
    utility: UtilityLike, *, lower_bound: int, upper_bound: int, sample_sizes: Any = None
) -> Estimator:
    lower, upper = _delta_bounds(utility.n_players, lower_bound, upper_bound)
    strategy = ConstantSampleSize() if sample_sizes is None else sample_sizes
    if not isinstance(strategy, SampleSizeStrategy):
        raise InvalidParameterError(
            "The 'sample_sizes' parameter of delta_shapley must be None (the same number at every size) or a "
            "SampleSizeStrategy (DeltaShapleySampleSize(...), PowerLawSampleSize(-2), ...). "
            f"Got {sample_sizes!r}."
        )
    coefficient = delta_coefficient(lower, upper)
    return SemivalueEstimator(
        "delta_shapley", coefficient, StratifiedSampler(allocation=strategy),
        {"coefficient": "delta", "lower_bound": lower, "upper_bound": upper},
        n_players=utility.n_players, score_range=score_width(utility),
    )


ESTIMATOR_FACTORIES: dict[str, Callable[..., Estimator]] = {
    "permutation_shapley": _permutation_estimator,
    "semivalue": _semivalue_estimator,
    "banzhaf": _banzhaf_estimator,
    "msr_banzhaf": _msr_estimator,
    "beta_shapley": _beta_estimator,
    "owen_shapley": _owen_estimator,
    "delta_shapley": _delta_estimator,
}


# -- graph construction --------------------------------------------------------------------------
def _merge_stats(*parts: PointStats) -> PointStats:
    return merge_all(list(parts))


def _finalize(estimator: Estimator, stats: PointStats) -> np.ndarray:
    value, stderr, count = estimator.finalize(stats)
    return np.stack([value, stderr, count.astype(np.float64)])


def tree_merge(blocks: list[Delayed], name: str, split_every: int = 8) -> Delayed:
    """Merge block statistics with a tree of ``split_every``-ary merge tasks."""
    level, nodes = 0, list(blocks)
    merge = dask.delayed(_merge_stats, pure=True)
    while len(nodes) > 1:
        nodes = [
            merge(*nodes[j : j + split_every],
                  dask_key_name=f"{companion_name(name, 'merge')}-{level}-{j // split_every}")
            for j in range(0, len(nodes), split_every)
        ]
        level += 1
    return nodes[0]


def montecarlo_dataset(
    estimator: Estimator,
    utility: UtilityLike,
    *,
    n_items: int,
    seed: np.random.SeedSequence,
    items_per_block: int,
    budget: dict[str, Any],
    min_blocks: int | None = None,
) -> xr.Dataset:
    """Lazy result of ``estimator`` over ``n_items`` samples in blocks of ``items_per_block``.

    With ``min_blocks``, small budgets are cut into at least that many blocks of
    equal size (:func:`._graph.even_ranges`) so that every worker stays busy to
    the end; the layout is recorded in the parameters. Call it from a
    :func:`~dvl_dask.keys.lazy_method`: task names derive from that call.
    """
    n = utility.n_players
    u = utility_node(utility)
    seed_text = seed_entropy(seed)
    # Task names come from the public method's whole call (every argument and option), so two
    # results computed together never share a key unless they are the same computation.
    name = current_call().layer(f"{estimator.method.replace('_', '-')}-block")
    block = dask.delayed(run_block, pure=True)
    if min_blocks is None:
        ranges = block_ranges(n_items, items_per_block)
    else:
        ranges = even_ranges(n_items, items_per_block, min_blocks, estimator.item_granule)
    _warm_default_client(utility)
    blocks = [
        block(u, estimator, child_seed(seed, i), stop - start, None, dask_key_name=f"{name}-{i}")
        for i, (start, stop) in enumerate(ranges)
    ]
    merged = tree_merge(blocks, name)
    final = dask.delayed(_finalize, pure=True)(estimator, merged, dask_key_name=companion_name(name, "finalize"))
    arr = da.from_delayed(final, shape=(3, n), dtype=np.float64)
    parameters = {**estimator.parameters(), **budget, "items_per_block": items_per_block}
    if min_blocks is not None:
        parameters["min_blocks"] = min_blocks
    return valuation_dataset(
        arr[0],
        arr[1],
        arr[2].astype(np.int64),
        data_names=utility.data_names,
        method=estimator.method,
        parameters=parameters,
        seed=seed_text,
        utility_token=utility.token,
        provenance=describe_utility(utility),
        n_evaluations=sum(estimator.block_evaluations(n, stop - start) for start, stop in ranges),
        estimate=SAMPLE_MEAN,
        extra_attrs={
            "n_blocks": len(blocks),
            "n_evaluations_is_upper_bound": True,
            **bias_attrs(parameters),
            **sample_attrs(estimator, seed_text, len(blocks), sum(estimator.units(b - a) for a, b in ranges)),
        },
    )


def sample_attrs(estimator: Estimator, seed_text: str, n_blocks: int, effective: int) -> dict[str, Any]:
    """Attrs that say what was sampled: the unit, the effective sample size and the seed blocks used.

    ``effective_sample_size`` is the number of independent samples behind the
    most-sampled player's value (an antithetic pair counts once).
    ``sample_blocks`` lists ``[seed, first_block, stop_block]`` ranges so that
    :func:`~dvl_dask.results.merge_results` can refuse overlapping samples.
    """
    return {
        "sample_unit": estimator.sample_unit,
        "effective_sample_size": int(effective),
        "sample_blocks": json.dumps([[seed_text, 0, int(n_blocks)]]),
    }


def _run(
    method: str,
    utility: UtilityLike,
    budget_name: str,
    budget: int,
    seed: SeedLike,
    items_per_block: int | None,
    **options: Any,
) -> xr.Dataset:
    utility = check_utility(utility, method)
    n_items = check_positive_int(budget, budget_name, method)
    seq = as_seed_sequence(seed, "seed", method)
    estimator = ESTIMATOR_FACTORIES[method](utility, **options)
    if items_per_block is not None:
        check_positive_int(items_per_block, "items_per_block", method)
    per_block = estimator.items_per_block(utility.n_players, items_per_block, bool(getattr(utility, "batched", False)))
    # The default layout cuts small budgets into at least min-blocks equal blocks (no idle
    # worker at the end); an explicit items_per_block gives the layout run_until_converged uses.
    min_blocks = None if items_per_block is not None else check_positive_int(
        config.get(config.MC_MIN_BLOCKS), "min-blocks", method)
    return montecarlo_dataset(
        estimator, utility, n_items=n_items, seed=seq, items_per_block=per_block, budget={budget_name: n_items},
        min_blocks=min_blocks,
    )


def _warm_default_client(utility: UtilityLike) -> None:
    """If dask computes on a distributed client, warm its workers now, while the graph is built."""
    client = _default_client()
    if client is not None:
        warm_workers(client, utility)


# -- public methods --------------------------------------------------------------------------------
@lazy_method
def permutation_shapley(
    utility: UtilityLike,
    *,
    n_permutations: int,
    seed: SeedLike = None,
    truncation: Any = None,
    antithetic: bool = False,
    warm_start: bool = False,
    items_per_block: int | None = None,
    sampler: Any = None,
) -> xr.Dataset:
    """Shapley values by permutation sampling (optionally truncated: TMC-Shapley).

    Each permutation costs up to ``n + 1`` utility evaluations and gives one
    marginal contribution to every player.

    Parameters
    ----------
    utility : Utility
        The utility or game.
    n_permutations : int
        Number of permutations (the budget).
    seed : int, SeedSequence or None
        Same seed, same values on any scheduler. None draws fresh entropy (recorded in ``attrs["seed"]``).
    truncation : None, float or TruncationPolicy
        ``None`` evaluates every prefix; a float ``rtol`` stops a permutation
        once ``|u(prefix) - u(N)| <= rtol |u(N)|`` (:class:`RelativeTruncation`);
        or :class:`FixedTruncation` / :class:`RelativeTruncation`. The policy is recorded in attrs,
        and so is the bias it introduces (later players of a truncated permutation get a marginal of
        0): ``attrs["biased"]`` is True and ``attrs["bias"]`` names the rule; the stderr then measures
        sampling noise only (measured coverage with and without truncation: README, "Statistics").
    antithetic : bool
        Pair every permutation with its reverse. A pair is ONE sample (its two
        marginals are averaged), so ``counts`` and the stderr count pairs; each
        block rounds its permutations up to whole pairs.
    warm_start : bool
        Fit each prefix starting from the previous prefix's model (sklearn
        ``warm_start``): faster fits, slightly different models; recorded in attrs.
        A utility with a batched model (:mod:`dvl_dask.models`) ignores it: its
        permutations run in lockstep, every prefix warm-started and converged
        to the same optimum as a cold fit.
    items_per_block : int, optional
        Permutations per task; default from ``dvl_dask.valuation.montecarlo.evaluations-per-block``
        (``batched-evaluations-per-block`` for a utility with a batched model),
        and small budgets cut into at least ``min-blocks`` equal blocks so no worker idles at the
        end. An explicit value gives blocks of exactly that size (the layout of
        :func:`run_until_converged`).
    sampler : None, "permutation", "antithetic", "stratified" or a PermutationSampler
        ``None`` follows ``antithetic``. ``"stratified"`` (a
        :class:`StratifiedPermutationSampler`) keeps one statistics stream per
        prefix size and averages the stratum means with weight ``1/n`` each
        (unbiased, lower variance when marginals depend on the coalition size;
        the stderr is ``inf`` until every size has two samples of a player).

    Examples
    --------
    >>> from dvl_dask.testing.games import AirportGame
    >>> ds = permutation_shapley(AirportGame([1.0, 2.0, 4.0]), n_permutations=200, seed=0)
    >>> bool(abs(ds.value.sum().compute() - 4.0) < 1e-9)  # efficiency holds per permutation
    True
    """
    return _run(
        "permutation_shapley", utility, "n_permutations", n_permutations, seed, items_per_block,
        truncation=truncation, antithetic=antithetic, warm_start=warm_start, sampler=sampler,
    )


@lazy_method
def semivalue(
    utility: UtilityLike,
    coefficient: LogCoefficient,
    *,
    n_samples: int,
    seed: SeedLike = None,
    sampler: Any = "uniform",
    items_per_block: int | None = None,
) -> xr.Dataset:
    """Any semivalue, given its log-coefficient ``log_w(n, k)``, by importance-weighted sampling.

    ``n_samples`` coalitions are drawn (for the stratified sampler: per player,
    spread equally over the ``n`` coalition sizes, so ``n_samples >= 2 n`` gives
    every size a variance estimate).
    Each coalition ``S`` costs ``1 + n`` evaluations and updates every player
    with ``w(k)/p(k) [u(S ∪ i) - u(S \\ i)]``, where ``p`` is the sampler's
    probability of the coalition and ``k = |S \\ i|``; weights are computed in
    log space. Samplers: "uniform", "antithetic", "owen", "stratified" or an
    instance (e.g. ``OwenSampler(n_q=10)``, ``BetaSampler(a, b)``).
    """
    return _run(
        "semivalue", utility, "n_samples", n_samples, seed, items_per_block, coefficient=coefficient, sampler=sampler
    )


@lazy_method
def banzhaf(
    utility: UtilityLike,
    *,
    n_samples: int,
    seed: SeedLike = None,
    sampler: Any = "uniform",
    items_per_block: int | None = None,
) -> xr.Dataset:
    """Banzhaf values: marginals averaged uniformly over coalitions (``1 + n`` evaluations a sample)."""
    return _run("banzhaf", utility, "n_samples", n_samples, seed, items_per_block, sampler=sampler)


@lazy_method
def msr_banzhaf(
    utility: UtilityLike,
    *,
    n_samples: int,
    seed: SeedLike = None,
    antithetic: bool = False,
    items_per_block: int | None = None,
) -> xr.Dataset:
    """Banzhaf values by maximum sample reuse: one evaluation per sample updates every player.

    ``value_i = mean u(S) over samples with i - mean u(S) over samples without i``.
    ``antithetic=True`` is refused: pairs ``S, N \\ S`` give each player a "with"
    and a "without" sample from complementary, negatively correlated
    coalitions, which increases the variance (use ``banzhaf(sampler="antithetic")``).
    """
    return _run("msr_banzhaf", utility, "n_samples", n_samples, seed, items_per_block, antithetic=antithetic)


@lazy_method
def beta_shapley(
    utility: UtilityLike,
    *,
    alpha: float,
    beta: float,
    n_samples: int,
    seed: SeedLike = None,
    sampler: Any = None,
    items_per_block: int | None = None,
) -> xr.Dataset:
    """Beta(alpha, beta) Shapley values (Kwon & Zou, 2022).

    The default sampler draws ``q ~ Beta(beta, alpha)`` per coalition, whose
    subset-size distribution equals the Beta Shapley weights, so no importance
    correction is needed. ``alpha = beta = 1`` is the Shapley value;
    Beta(16, 1) emphasises small coalitions.
    """
    return _run(
        "beta_shapley", utility, "n_samples", n_samples, seed, items_per_block, alpha=alpha, beta=beta, sampler=sampler
    )


@lazy_method
def owen_shapley(
    utility: UtilityLike,
    *,
    n_samples: int,
    n_q: int | None = None,
    antithetic: bool = False,
    seed: SeedLike = None,
    items_per_block: int | None = None,
) -> xr.Dataset:
    """Shapley values by Owen sampling.

    Each coalition draws ``q ~ U(0, 1)`` (or cycles through a midpoint grid of
    ``n_q`` values) and every player joins with probability ``q``; each costs
    ``1 + n`` evaluations and updates every player. ``antithetic`` pairs each
    coalition with its complement.

    With ``n_q`` the estimate is still unbiased (``attrs["biased"]`` is
    False): the importance weights use the exact probability of a coalition
    under the grid mixture, not the midpoint quadrature of the integral over
    ``q`` (see :class:`OwenSampler`).
    """
    return _run(
        "owen_shapley", utility, "n_samples", n_samples, seed, items_per_block, n_q=n_q, antithetic=antithetic
    )


@lazy_method
def delta_shapley(
    utility: UtilityLike,
    *,
    lower_bound: int,
    upper_bound: int,
    n_samples: int | None = None,
    sample_sizes: SampleSizeStrategy | None = None,
    seed: SeedLike = None,
    items_per_block: int | None = None,
) -> xr.Dataset:
    """Delta-Shapley values (Watson et al., 2023): Shapley restricted to coalition sizes ``lower..upper``.

    The value of player ``i`` is the mean, over the sizes
    ``k = lower_bound..upper_bound``, of its average marginal contribution to
    coalitions of size ``k`` of the other players::

        v_i = 1/(upper - lower + 1) sum_{k=lower}^{upper} mean_{S ⊆ N \\ {i}, |S| = k} [u(S ∪ {i}) - u(S)]

    With ``lower_bound=0, upper_bound=n-1`` this is the Shapley value; small
    upper bounds keep training sets small (cheap fits), which is the point of
    the method. Sampling is stratified by size (a :class:`StratifiedSampler`
    over the sizes in range, two evaluations per sample): every player gets
    ``n_samples`` samples, split over the sizes by ``sample_sizes``; the
    estimate is the weighted sum of the per-size means, unbiased for any
    split, with stderr ``inf`` until every size in range has two samples.

    Parameters
    ----------
    utility : Utility
        The utility or game.
    lower_bound, upper_bound : int
        Smallest and largest coalition size (of the others), ``0 <= lower <= upper <= n - 1``.
    n_samples : int, optional
        Samples per player. ``None`` takes the total the strategy prescribes
        (:class:`DeltaShapleySampleSize`: ``sum_k m_k`` over the range).
    sample_sizes : SampleSizeStrategy, optional
        Split over sizes: ``None`` the same number at every size;
        :class:`DeltaShapleySampleSize` the paper's per-size counts from its
        stability bound; :class:`PowerLawSampleSize` (``-2`` has the
        paper's decay) and others.
    seed : int, SeedSequence or None
        Same seed, same values on any scheduler.
    items_per_block : int, optional
        Samples per player and graph task.

    Returns
    -------
    xarray.Dataset
        Lazy ``value``, ``stderr``, ``counts`` over ``sample``; attrs record
        the bounds and the sample-size rule.

    References
    ----------
    Watson, L., Kujawa, Z., Andreeva, R., Yang, H.-T., Elahi, T. and Sarkar, R.
    (2023). Accelerated Shapley value approximation for data evaluation. arXiv:2311.05346.

    Examples
    --------
    >>> from dvl_dask.testing.games import SymmetricVotingGame
    >>> ds = delta_shapley(SymmetricVotingGame(4), lower_bound=0, upper_bound=3, n_samples=16, seed=0)
    >>> ds.value.compute().values.round(12).tolist()  # marginals depend on the size only: exact Shapley values
    [0.25, 0.25, 0.25, 0.25]
    """
    owner = "delta_shapley"
    checked = check_utility(utility, owner)
    if n_samples is None:
        lower, upper = _delta_bounds(checked.n_players, lower_bound, upper_bound)
        prescribed = None if sample_sizes is None else getattr(sample_sizes, "total", lambda *a: None)(
            checked.n_players, lower, upper)
        if prescribed is None:
            raise InvalidParameterError(
                "The 'n_samples' parameter of delta_shapley is needed unless 'sample_sizes' prescribes a total "
                "(DeltaShapleySampleSize). Got n_samples=None with "
                f"sample_sizes={sample_sizes!r}."
            )
        n_samples = max(int(prescribed), 2 * (upper - lower + 1))
    return _run(
        owner, checked, "n_samples", n_samples, seed, items_per_block, lower_bound=lower_bound,
        upper_bound=upper_bound, sample_sizes=sample_sizes,
    )


def planned_blocks(n_items: int, items_per_block: int) -> int:
    """Number of blocks a budget of ``n_items`` needs."""
    return math.ceil(n_items / items_per_block)
