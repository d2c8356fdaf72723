"""Least core values: the efficient allocation that minimises the largest coalition's complaint.

The least core of a game ``u`` over players ``N`` is the set of allocations
``x`` with ``sum(x) = u(N)`` that minimise the subsidy ``e`` such that
``x(S) + e >= u(S)`` for every coalition ``S`` (non-empty, proper). It is a
linear programme; among its solutions we return the one of smallest Euclidean
norm (the second stage pyDVL also solves), which is unique.

Graph: coalitions are evaluated in block tasks (all ``2**n - 1`` of them for
:func:`exact_least_core`, ``n_samples`` random ones for
:func:`montecarlo_least_core`); one final task stacks the constraints and
solves both stages. The linear programme is solved by HiGHS through
``scipy.optimize.linprog``; the minimal-norm stage is a small quadratic
programme solved by SLSQP on a working set of constraints that grows by the
most violated ones until all hold (a cutting-plane loop): the active set of a
least core is small, so this never hands the full constraint matrix to a
dense QP solver.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .._provenance import describe_utility
from ..errors import DvlDaskError, InvalidParameterError
from ..keys import current_call, lazy_method
from ..results import valuation_dataset
from ..threads import limits_blas_threads
from ..typing import UtilityLike
from ..validation import SeedLike, as_seed_sequence, check_positive_int, seed_entropy
from ._graph import block_ranges, check_enumerable, check_utility, companion_name, utility_node
from ._samplers import child_seed

__all__ = ["LeastCoreError", "exact_least_core", "least_core_from_constraints", "montecarlo_least_core"]

#: Coalitions evaluated by one task.
DEFAULT_COALITIONS_PER_BLOCK = 128
#: Slack under which a constraint counts as satisfied in the second stage.
FEASIBILITY_TOLERANCE = 1e-9


class LeastCoreError(DvlDaskError, RuntimeError):
    """The least core linear programme could not be solved (infeasible, unbounded, solver failure)."""


def _bits(masks: np.ndarray, n: int) -> np.ndarray:
    return ((masks[:, None] >> np.arange(n, dtype=np.int64)) & 1).astype(bool)


@limits_blas_threads
def exact_coalitions_block(utility: UtilityLike, start: int, stop: int, n: int) -> np.ndarray:
    """Rows ``[membership bits..., u(S)]`` for the coalitions with bit masks ``start..stop-1``."""
    bits = _bits(np.arange(start, stop, dtype=np.int64), n)
    return _evaluate(utility, bits)


@limits_blas_threads
def sampled_coalitions_block(utility: UtilityLike, seed: np.random.SeedSequence, size: int, n: int) -> np.ndarray:
    """Rows ``[membership bits..., u(S)]`` for ``size`` uniformly random coalitions (each player w.p. 1/2)."""
    bits = np.random.default_rng(seed).random((size, n)) < 0.5
    return _evaluate(utility, bits)


@limits_blas_threads
def grand_coalition_block(utility: UtilityLike, n: int) -> np.ndarray:
    """The row ``[1, ..., 1, u(N)]`` (any n; bit masks would overflow beyond 62 players)."""
    return _evaluate(utility, np.ones((1, n), dtype=bool))


def _stack_rows(blocks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(blocks, axis=0)


def _membership_counts(rows: np.ndarray, n: int) -> np.ndarray:
    return (rows[:, :n] > 0.5).sum(axis=0).astype(np.int64)


def _evaluate(utility: UtilityLike, bits: np.ndarray) -> np.ndarray:
    players = np.arange(bits.shape[1])
    values = np.array([utility(players[row]) for row in bits], dtype=np.float64)
    return np.column_stack([bits.astype(np.float64), values])


def _minimal_norm(
    a: np.ndarray, b: np.ndarray, total: float, start: np.ndarray, tol: float = FEASIBILITY_TOLERANCE
) -> np.ndarray:
    """``argmin ||x||^2`` s.t. ``a x >= b`` and ``sum(x) = total``, by a growing working set of constraints."""
    from scipy.optimize import minimize

    n = a.shape[1]
    slack = a @ start - b
    working = list(np.flatnonzero(slack <= 1e-7))
    x = start
    for _ in range(100):
        rows = a[working]
        rhs = b[working]
        constraints = [
            {"type": "eq", "fun": lambda v: v.sum() - total, "jac": lambda v: np.ones(n)},
        ]
        if working:
            constraints.append({"type": "ineq", "fun": lambda v, r=rows, c=rhs: r @ v - c, "jac": lambda v, r=rows: r})
        res = minimize(
            lambda v: v @ v,
            x,
            jac=lambda v: 2 * v,
            constraints=constraints,
            method="SLSQP",
            options={"maxiter": 1000, "ftol": 1e-14},
        )
        x = res.x
        violation = b - a @ x
        worst = np.argsort(violation)[::-1][:64]
        new = [int(i) for i in worst if violation[i] > tol and int(i) not in set(working)]
        if not new:
            return x
        working.extend(new)
    raise LeastCoreError("The minimal-norm stage of the least core did not converge in 100 rounds of constraints.")


def least_core_from_constraints(
    rows: np.ndarray, n: int, *, non_negative_subsidy: bool = False
) -> np.ndarray:
    """Solve both stages from evaluated coalitions; return ``[x_1..x_n, e]``.

    ``rows`` holds ``[membership bits..., u(S)]`` per coalition; the grand
    coalition (all bits set) must be among them and gives the efficiency
    equality; the empty coalition and duplicates are ignored.
    """
    from scipy.optimize import linprog
    from scipy.sparse import csr_matrix, hstack

    bits = rows[:, :n] > 0.5
    values = rows[:, n]
    sizes = bits.sum(axis=1)
    grand = np.flatnonzero(sizes == n)
    if grand.size == 0:
        raise LeastCoreError("The constraints lack the grand coalition, which fixes sum(x) = u(N).")
    total = float(values[grand[0]])
    keep = (sizes > 0) & (sizes < n)
    if not keep.any():
        raise LeastCoreError(
            "No proper coalition was evaluated, so the subsidy is unbounded. To fix, sample more coalitions."
        )
    a = bits[keep].astype(np.float64)
    b = values[keep]
    # Variables (x_1..x_n, e): minimise e subject to -(a x + e) <= -b and sum(x) = u(N).
    a_ub = hstack([csr_matrix(-a), csr_matrix(-np.ones((a.shape[0], 1)))]).tocsr()
    a_eq = np.r_[np.ones(n), 0.0][None, :]
    bounds = [(None, None)] * n + [(0.0 if non_negative_subsidy else None, None)]
    cost = np.r_[np.zeros(n), 1.0]
    res = linprog(cost, A_ub=a_ub, b_ub=-b, A_eq=a_eq, b_eq=[total], bounds=bounds, method="highs")
    if res.status != 0:
        hint = "Some players are unconstrained: sample more coalitions." if res.status == 3 else ""
        raise LeastCoreError(
            f"The least core linear programme failed: {res.message} (HiGHS status {res.status}). {hint}"
        )
    subsidy = float(res.x[n])
    x = _minimal_norm(a, b - subsidy, total, res.x[:n])
    return np.r_[x, subsidy]


def _least_core_graph(
    utility: UtilityLike,
    blocks: list[Any],
    *,
    method: str,
    parameters: dict[str, Any],
    seed: str | None,
    n_evaluations: int,
    non_negative_subsidy: bool,
    name: str,
    exact: bool,
) -> xr.Dataset:
    n = utility.n_players
    # One key holds every evaluated coalition, so both consumers below share it (a dask
    # array passed to two delayed calls was evaluated twice).
    rows = dask.delayed(_stack_rows, pure=True)(blocks, dask_key_name=companion_name(name, "rows"))
    solution = dask.delayed(least_core_from_constraints, pure=True)(
        rows, n, non_negative_subsidy=non_negative_subsidy, dask_key_name=companion_name(name, "solve")
    )
    solved = da.from_delayed(solution, shape=(n + 1,), dtype=np.float64)
    counts = da.from_delayed(
        dask.delayed(_membership_counts, pure=True)(rows, n, dask_key_name=companion_name(name, "counts")),
        shape=(n,),
        dtype=np.int64,
    )
    # Exact: every constraint is known, no sampling error. Sampled: the allocation depends on which
    # coalitions were drawn, and no standard error of it is computed: NaN, and an attr that says so.
    stderr_note = ("exact: every coalition's constraint is used" if exact else
                   "not available: the least core of sampled constraints is not a mean of samples, and "
                   "dvl_dask computes no spread for it (stderr is NaN); compare runs with different seeds, "
                   "or use exact_least_core for few players")
    ds = valuation_dataset(
        solved[:n],
        np.zeros(n) if exact else np.full(n, np.nan),
        counts,
        data_names=utility.data_names,
        method=method,
        parameters={**parameters, "non_negative_subsidy": non_negative_subsidy},
        seed=seed,
        utility_token=utility.token,
        provenance=describe_utility(utility),
        n_evaluations=n_evaluations,
        extra_attrs={"stderr_available": exact, "stderr_note": stderr_note},
    )
    return ds.assign(subsidy=((), solved[n]))


@lazy_method
def exact_least_core(
    utility: UtilityLike, *, non_negative_subsidy: bool = False, block_size: int | None = None
) -> xr.Dataset:
    """Least core values from all ``2**n - 1`` non-empty coalitions, as a lazy graph.

    Parameters
    ----------
    utility : Utility
        The utility or game.
    non_negative_subsidy : bool
        Constrain ``e >= 0`` (an empty core then reports ``e = 0``; pyDVL's
        convention). Default False: ``e`` may be negative, and ``-e`` then
        measures how deep inside the core the allocation is.
    block_size : int, optional
        Coalitions per task (default 128).

    Returns
    -------
    xarray.Dataset
        ``value`` (the minimal-norm least core allocation), ``stderr`` (0),
        ``counts`` (coalitions holding the player) and the 0-d variable
        ``subsidy`` (the minimal ``e``), all lazy.

    Raises
    ------
    TooManyPlayersError
        Beyond ``dvl_dask.valuation.exact.max-players`` players.
    LeastCoreError
        When the linear programme cannot be solved (raised at compute time).

    Examples
    --------
    >>> from dvl_dask.testing.games import ShoesGame
    >>> ds = exact_least_core(ShoesGame(1, 2)).compute()
    >>> (ds.value.values.round(6) + 0.0).tolist(), round(float(ds.subsidy), 6) + 0.0
    ([1.0, 0.0, 0.0], 0.0)
    """
    owner = "exact_least_core"
    utility = check_utility(utility, owner)
    n = utility.n_players
    check_enumerable(n, owner, "montecarlo_least_core")
    bs = check_positive_int(DEFAULT_COALITIONS_PER_BLOCK if block_size is None else block_size, "block_size", owner)
    u = utility_node(utility)
    name = current_call().layer("exact-least-core")
    block_fn = dask.delayed(exact_coalitions_block, pure=True)
    blocks = [
        block_fn(u, start, stop, n, dask_key_name=f"{name}-{i}")
        for i, (start, stop) in enumerate(block_ranges(2**n, bs))
    ]
    return _least_core_graph(
        utility,
        blocks,
        method="exact_least_core",
        parameters={"block_size": bs},
        seed=None,
        n_evaluations=2**n,
        non_negative_subsidy=bool(non_negative_subsidy),
        name=name,
        exact=True,
    )


@lazy_method
def montecarlo_least_core(
    utility: UtilityLike,
    n_samples: int,
    *,
    seed: SeedLike = None,
    non_negative_subsidy: bool = False,
    block_size: int | None = None,
) -> xr.Dataset:
    """Least core values from ``n_samples`` random coalitions plus the grand coalition, lazily.

    Each sampled coalition holds every player with probability 1/2 (uniform
    over subsets). The allocation satisfies the sampled constraints only;
    with enough samples (Yan & Procaccia 2021: ``O(n / eps^2)``) most
    coalitions' constraints hold up to ``eps``.

    Parameters
    ----------
    utility : Utility
        The utility or game.
    n_samples : int
        Random coalitions to evaluate (at least ``n``; a few times ``n`` or more).
    seed : int, SeedSequence or None
        Same seed, same values on any scheduler.
    non_negative_subsidy : bool
        Constrain ``e >= 0`` (see :func:`exact_least_core`).
    block_size : int, optional
        Coalitions per task (default 128).

    Returns
    -------
    xarray.Dataset
        As :func:`exact_least_core`, but ``stderr`` is NaN: the allocation
        solves a linear programme over the sampled constraints, it is not a
        mean of samples, and no spread is computed for it (an honest
        "unknown" instead of 0). ``attrs["stderr_available"]`` is False and
        ``attrs["stderr_note"]`` says so; compare runs with different seeds to
        see the spread.
    """
    owner = "montecarlo_least_core"
    utility = check_utility(utility, owner)
    n = utility.n_players
    n_samples = check_positive_int(n_samples, "n_samples", owner)
    if n_samples < n:
        raise InvalidParameterError(
            f"The 'n_samples' parameter of {owner} must be at least the number of players ({n}) so that every "
            f"player is constrained. Got {n_samples}."
        )
    bs = check_positive_int(DEFAULT_COALITIONS_PER_BLOCK if block_size is None else block_size, "block_size", owner)
    seq = as_seed_sequence(seed, "seed", owner)
    seed_text = seed_entropy(seq)
    u = utility_node(utility)
    name = current_call().layer("mc-least-core")
    block_fn = dask.delayed(sampled_coalitions_block, pure=True)
    blocks = [
        block_fn(u, child_seed(seq, i), stop - start, n, dask_key_name=f"{name}-{i}")
        for i, (start, stop) in enumerate(block_ranges(n_samples, bs))
    ]
    grand = dask.delayed(grand_coalition_block, pure=True)(u, n, dask_key_name=companion_name(name, "grand"))
    return _least_core_graph(
        utility,
        [*blocks, grand],
        method="montecarlo_least_core",
        parameters={"n_samples": n_samples, "block_size": bs},
        seed=seed_text,
        n_evaluations=n_samples + 1,
        non_negative_subsidy=bool(non_negative_subsidy),
        name=name,
        exact=False,
    )
