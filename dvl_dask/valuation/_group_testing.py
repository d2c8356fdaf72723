"""Group-testing Shapley (Jia et al. 2019, with the sample bound corrected by Wang & Jia 2023).

Sample coalitions ``S_t`` by first drawing a size ``k`` with probability
``q_k ∝ 1/k + 1/(n-k)`` (``k = 1..n-1``) and then a uniform subset of that size.
With ``Z = 2 sum_{k=1}^{n-1} 1/k``, Jia et al.'s lemma gives
``E[Z u(S) (1[i in S] - 1[j in S])] = phi_i - phi_j``: sampled coalitions
estimate every *pairwise difference* of Shapley values. The paper then looks
for values ``s`` with ``sum(s) = u(N)`` whose differences are within a
tolerance of the estimates (a feasibility problem handed to a convex solver).

Why no solver here: the estimated differences have the form ``c_i - c_j``
with ``c_i = (Z/T) sum_t u(S_t) 1[i in S_t]``, so the feasible set is centred
on the closed-form point ``s = c + (u(N) - u(∅) - sum(c)) / n``, which meets
every pairwise constraint with zero slack. We return that point: it lies in
the feasible set whenever the set is non-empty, needs no solver, and is
computed from per-player sums only (O(n) memory, not the n x n difference
matrix), so blocks of samples reduce like every other Monte Carlo method.
Writing ``w_ti = Z u(S_t) (1[i in S_t] - |S_t| / n)``, the estimate is
``s_i = mean_t(w_ti) + (u(N) - u(∅)) / n``, unbiased for ``phi_i``, with the
usual standard error ``std_t(w_ti) / sqrt(T)``.

Differences from pyDVL's ``GroupTestingShapleyValuation``: efficiency uses
``u(N) - u(∅)`` (pyDVL uses ``u(N)``, which biases every value by
``u(∅)/n`` when ``u(∅) != 0``); the point returned is the centre of the
feasible set instead of whatever point a solver finds; standard errors are
reported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .._provenance import describe_utility
from ..errors import InvalidParameterError, ScoreOutOfRangeError
from ..keys import current_call, fingerprint, lazy_method
from ..results import valuation_dataset
from ..results._schema import SAMPLE_MEAN
from ..threads import limits_blas_threads
from ..typing import UtilityLike
from ..utility._scorers import outside_range
from ..validation import SeedLike, as_seed_sequence, check_positive_int, check_real, seed_entropy
from ._graph import UtilityWrapper, block_ranges, check_utility, companion_name, utility_node
from ._samplers import child_seed
from ._stats import POWER_ROWS, add_powers, mean_and_stderr, power_block, reduce_power_blocks

__all__ = ["RangeCheckedUtility", "group_testing_sample_size", "group_testing_shapley"]

#: Coalitions evaluated per task when not given.
DEFAULT_SAMPLES_PER_BLOCK = 400


def _size_probabilities(n: int) -> np.ndarray:
    k = np.arange(1, n, dtype=np.float64)
    weights = 1.0 / k + 1.0 / (n - k)
    return weights / weights.sum()


def _z(n: int) -> float:
    return 2.0 * float(np.sum(1.0 / np.arange(1, n, dtype=np.float64)))


def group_testing_sample_size(
    epsilon: float, delta: float, n: int, utility_range: tuple[float, float]
) -> int:
    """Samples after which, with probability ``1 - delta``, ``||s - phi||_2 <= epsilon``.

    The bound of Wang & Jia (2023, Theorem 4, the corrected version of Jia et
    al. 2019's Theorem 3): Bennett's inequality on each pairwise difference
    estimate at accuracy ``epsilon / sqrt(n)`` with confidence
    ``delta / (n (n - 1))``. Its premise is a bound ``|u(S)| <= r`` on every
    coalition's value: each sample ``Z u(S) (1[i in S] - 1[j in S])`` then lies
    in ``[-Z r, Z r]``. The estimate returned by :func:`group_testing_shapley`
    has pairwise differences equal to the estimated ones and sums to
    ``u(N) - u(∅)``, so every error ``|s_i - phi_i|`` is then below
    ``epsilon / sqrt(n)``.

    Parameters
    ----------
    epsilon : float
        Accuracy, in the units of the utility (> 0).
    delta : float
        Probability of missing it, in (0, 1).
    n : int
        Number of players (>= 3).
    utility_range : (float, float)
        Bounds ``(low, high)`` of ``u(S)`` over all coalitions, the caller's
        claim (no default: a wrong range voids the guarantee). ``r`` is
        ``max(|low|, |high|)``: the samples scale with ``u`` itself, not with
        the width ``high - low`` (a shifted utility needs more samples).

    Returns
    -------
    int
        The number of sampled coalitions (2 when ``r = 0``: every value is 0 and any estimate is exact).

    Examples
    --------
    >>> group_testing_sample_size(0.5, 0.05, 6, (0.0, 1.0)) > 0
    True
    >>> group_testing_sample_size(0.5, 0.05, 6, (0.0, 1.0)) == group_testing_sample_size(50, 0.05, 6, (0, 100))
    True
    """
    owner = "group_testing_sample_size"
    epsilon = check_real(epsilon, "epsilon", owner, low=0.0, low_open=True)
    delta = check_real(delta, "delta", owner, low=0.0, high=1.0, low_open=True, high_open=True)
    low, high = check_utility_range(utility_range, owner)
    n = check_positive_int(n, "n", owner)
    if n < 3:
        raise InvalidParameterError(f"{owner} needs n >= 3 players (the bound's size distribution). Got {n}.")
    r = max(abs(low), abs(high))
    if r == 0.0:
        return 2
    q = _size_probabilities(n)
    k = np.arange(1, n, dtype=np.float64)
    # Probability that a sampled coalition holds both or neither of two given players.
    q_tot = (n - 2) / n * q[0] + float(np.dot(q[1:], 1 + 2 * k[1:] * (k[1:] - n) / (n * (n - 1))))
    u = epsilon / r / (2 * _z(n) * math.sqrt(n) * (1 - q_tot))
    bennett = (1 + u) * math.log1p(u) - u
    return max(2, math.ceil(math.log(n * (n - 1) / delta) / (1 - q_tot) / bennett))


def check_utility_range(utility_range: object, owner: str) -> tuple[float, float]:
    """``utility_range`` as two finite floats ``low <= high``; anything else raises InvalidParameterError."""
    problem = (
        f"The 'utility_range' parameter of {owner} must be a pair (low, high) of finite numbers with "
        f"low <= high, bounding u(S) over all coalitions. Got {utility_range!r}."
    )
    if isinstance(utility_range, str | bytes) or not hasattr(utility_range, "__len__"):
        hint = (
            " A single number is ambiguous (the width of the interval or a bound on |u|?); "
            "the guarantee needs max |u(S)|, so pass both ends, e.g. (0.0, 1.0)."
            if isinstance(utility_range, int | float | np.number) else ""
        )
        raise InvalidParameterError(problem + hint)
    try:
        if len(utility_range) != 2:  # type: ignore[arg-type]
            raise ValueError
        low, high = (float(v) for v in utility_range)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InvalidParameterError(problem) from None
    if not (np.isfinite(low) and np.isfinite(high) and low <= high):
        raise InvalidParameterError(problem)
    return low, high


def known_utility_range(utility: object) -> tuple[float, float] | None:
    """The range ``utility`` declares (``score_range``) as two finite floats ``low <= high``, else None.

    A :class:`~dvl_dask.Utility` declares its scorer's range on its test data
    (and refuses any score outside it), a game its exact bounds, a protocol
    utility what its ``score_range`` says. Nothing is guessed: no declaration,
    no range.
    """
    bounds = getattr(utility, "score_range", None)
    if bounds is None:
        return None
    try:
        return check_utility_range(bounds, "score_range")
    except InvalidParameterError:
        return None


class RangeCheckedUtility(UtilityWrapper):
    """A utility whose every value is checked against the range a guarantee assumes.

    :func:`group_testing_shapley` wraps the utility with it when a range is a
    premise (``epsilon`` given) or the caller's claim (``utility_range``): a value outside raises
    :class:`~dvl_dask.errors.ScoreOutOfRangeError` instead of silently voiding
    the (epsilon, delta) promise. The token covers the range.
    """

    returns_finite_scores = True

    def __init__(self, utility: UtilityLike, bounds: tuple[float, float]) -> None:
        super().__init__(utility, fingerprint("RangeCheckedUtility", utility.token, bounds))
        self.bounds = bounds
        self.score_range = bounds

    def __call__(self, indices: Iterable[int] | np.ndarray) -> float:
        value = float(self.utility(indices))
        if outside_range(value, self.bounds):
            raise ScoreOutOfRangeError(
                f"The utility {type(self.utility).__name__} returned {value!r}, outside the range {self.bounds} "
                "that group_testing_shapley's (epsilon, delta) guarantee assumes (from utility_range= or the "
                "utility's score_range). To fix, pass the utility's real bounds as utility_range=(low, high)."
            )
        return value

    def __repr__(self) -> str:
        return f"RangeCheckedUtility({self.utility!r}, {self.bounds})"


@limits_blas_threads
def group_testing_block(utility: UtilityLike, seed: np.random.SeedSequence, size: int, n: int) -> np.ndarray:
    """``(POWER_ROWS, n)``: per-player power sums of ``w_ti`` over ``size`` coalitions (``add_powers``)."""
    rng = np.random.default_rng(seed)
    sizes = rng.choice(np.arange(1, n), size=size, p=_size_probabilities(n))
    z = _z(n)
    out = power_block(n)
    for k in sizes:
        members = rng.choice(n, size=int(k), replace=False)
        value = float(utility(members))
        w = np.full(n, -z * value * k / n)
        w[members] += z * value
        add_powers(out, slice(None), w)
    return out


@limits_blas_threads
def _endpoints(utility: UtilityLike, n: int) -> np.ndarray:
    return np.array([utility(np.arange(n)), utility(np.array([], dtype=np.int64))], dtype=np.float64)


def _finalize(totals: np.ndarray, endpoints: np.ndarray, sample_range: float | None) -> np.ndarray:
    n = totals.shape[1]
    mean, stderr = mean_and_stderr(totals, sample_range, counts=np.full(n, totals[4, 0]))
    return np.stack([mean + (endpoints[0] - endpoints[1]) / n, stderr])


def _no_range_message(owner: str, utility: object) -> str:
    declared = getattr(utility, "score_range", None)
    return (
        f"{owner}(epsilon=...) promises ||values - phi||_2 <= epsilon with probability 1 - delta only for a "
        "utility with known bounds: the bound on |u(S)| sets the number of samples. "
        f"{type(utility).__name__} declares no usable range (score_range={declared!r}: e.g. a scorer unbounded "
        "below or of unknown range, or a utility without score_range). To fix, pass utility_range=(low, high), "
        "bounds of u(S) over all coalitions that you can vouch for, or declare the scorer's range "
        "(Scorer(scoring, range=(low, high))); or give n_samples= instead (no guarantee)."
    )


@lazy_method
def group_testing_shapley(
    utility: UtilityLike,
    n_samples: int | None = None,
    *,
    epsilon: float | None = None,
    delta: float = 0.05,
    utility_range: tuple[float, float] | None = None,
    seed: SeedLike = None,
    samples_per_block: int | None = None,
) -> xr.Dataset:
    """Group-testing Shapley values as a lazy graph of sampled coalitions.

    Give either ``n_samples`` or ``epsilon`` (then ``n_samples`` is
    :func:`group_testing_sample_size` for ``epsilon``, ``delta`` and the
    utility's range, recorded in the result's parameters).

    Parameters
    ----------
    utility : Utility
        The utility or game (at least 3 players).
    n_samples : int, optional
        Coalitions to sample.
    epsilon, delta : float
        Target: ``||values - phi||_2 <= epsilon`` with probability ``1 - delta``.
        The promise holds only for a utility with known bounds (its premise):
        the range the utility declares (``score_range``: a game's exact bounds,
        a :class:`~dvl_dask.Utility`'s scorer range on its test data, which it
        enforces on every score), or ``utility_range``. Without either, a call
        with ``epsilon`` raises :class:`~dvl_dask.errors.InvalidParameterError`.
        Every sampled value is then checked against that range
        (:class:`~dvl_dask.errors.ScoreOutOfRangeError` if outside).
    utility_range : (float, float), optional
        Bounds ``(low, high)`` of ``u(S)`` over all coalitions, the caller's
        claim (every sampled value is checked against it); overrides the
        utility's own ``score_range``. Also bounds the standard errors of
        players whose samples all agree.
    seed : int, SeedSequence or None
        Same seed, same values on any scheduler.
    samples_per_block : int, optional
        Coalitions per task (default 400).

    Returns
    -------
    xarray.Dataset
        ``value``, ``stderr`` (Monte Carlo standard error per player) and
        ``counts`` (samples), lazy. ``u(N)`` and ``u(∅)`` are evaluated once each.

    Notes
    -----
    The method is known to need many more evaluations than permutation
    sampling for the same accuracy (pyDVL warns likewise); it is provided for
    comparison and for its explicit (epsilon, delta) guarantee.

    Examples
    --------
    >>> from dvl_dask.testing.games import AdditiveGame
    >>> ds = group_testing_shapley(AdditiveGame([1.0, 2.0, 3.0]), 20_000, seed=0).compute()
    >>> bool(abs(ds.value - [1.0, 2.0, 3.0]).max() < 4 * ds.stderr.max())
    True
    """
    owner = "group_testing_shapley"
    raw = utility
    utility = check_utility(utility, owner)
    n = utility.n_players
    if n < 3:
        raise InvalidParameterError(f"{owner} needs at least 3 players; the utility has {n}. Use exact_shapley.")
    parameters: dict[str, object] = {}
    if (n_samples is None) == (epsilon is None):
        raise InvalidParameterError(f"{owner} needs exactly one of 'n_samples' and 'epsilon'.")
    if utility_range is not None:
        bounds: tuple[float, float] | None = check_utility_range(utility_range, owner)
        parameters.update(utility_range=list(bounds), utility_range_source="argument")
    else:
        bounds = known_utility_range(raw)
        if bounds is not None:
            parameters.update(utility_range=list(bounds), utility_range_source="utility")
    if epsilon is not None:
        if bounds is None:
            raise InvalidParameterError(_no_range_message(owner, raw))
        n_samples = group_testing_sample_size(epsilon, delta, n, bounds)
        parameters.update(epsilon=epsilon, delta=delta)
    if bounds is not None and (epsilon is not None or utility_range is not None):
        utility = RangeCheckedUtility(utility, bounds)  # a premise of the promise or the caller's claim: verify it
    n_samples = check_positive_int(n_samples, "n_samples", owner)
    if n_samples < 2:
        raise InvalidParameterError(f"The 'n_samples' parameter of {owner} must be at least 2. Got {n_samples}.")
    per_block = check_positive_int(
        DEFAULT_SAMPLES_PER_BLOCK if samples_per_block is None else samples_per_block, "samples_per_block", owner
    )
    # w_ti = Z u(S) (1[i in S] - |S|/n) lies within Z * max|u| of 0: the width of one sample.
    sample_width = 2.0 * _z(n) * max(abs(bounds[0]), abs(bounds[1])) if bounds is not None else None
    seq = as_seed_sequence(seed, "seed", owner)
    seed_text = seed_entropy(seq)
    u = utility_node(utility)
    name = current_call().layer("group-testing-block")
    block_fn = dask.delayed(group_testing_block, pure=True)
    blocks = [
        block_fn(u, child_seed(seq, i), stop - start, n, dask_key_name=f"{name}-{i}")
        for i, (start, stop) in enumerate(block_ranges(n_samples, per_block))
    ]
    parts = [da.from_delayed(b, shape=(POWER_ROWS, n), dtype=np.float64) for b in blocks]
    # One chunk, as one delayed key named by the array (handing the array itself to a delayed call
    # wraps it in a key dask names at random: equal calls would not share keys).
    (totals,) = reduce_power_blocks(parts).to_delayed(optimize_graph=False).ravel()
    endpoints = dask.delayed(_endpoints, pure=True)(u, n, dask_key_name=companion_name(name, "ends"))
    final = da.from_delayed(
        dask.delayed(_finalize, pure=True)(
            totals, endpoints, sample_width, dask_key_name=companion_name(name, "final")
        ),
        shape=(2, n),
        dtype=np.float64,
    )
    return valuation_dataset(
        final[0],
        final[1],
        np.full(n, n_samples, dtype=np.int64),
        data_names=utility.data_names,
        method="group_testing_shapley",
        parameters={**parameters, "n_samples": n_samples, "samples_per_block": per_block},
        seed=seed_text,
        utility_token=utility.token,
        provenance=describe_utility(utility),
        n_evaluations=n_samples + 2,
        estimate=SAMPLE_MEAN,
    )
