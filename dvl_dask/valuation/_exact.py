"""Exact methods as lazy graphs: exact Shapley (all 2**n subsets) and leave-one-out."""

from __future__ import annotations

import math

import dask
import numpy as np
import xarray as xr

from .. import config
from .._provenance import describe_utility
from ..keys import current_call, lazy_method
from ..results import valuation_dataset
from ..results._schema import EXACT
from ..threads import limits_blas_threads
from ..typing import UtilityLike
from ..validation import check_positive_int
from ._graph import (
    block_ranges,
    check_enumerable,
    check_utility,
    companion_name,
    evaluate_masks,
    stack_blocks,
    utility_node,
)

__all__ = ["EXACT_STDERR_NOTE", "exact_shapley", "loo", "shapley_weights"]

#: What ``stderr = 0`` means for a method that evaluates every term of its definition.
EXACT_STDERR_NOTE = (
    "0: exact, every coalition the value is defined by was evaluated once, so there is no sampling error; "
    "a utility whose own evaluation is random (a model fitted with a random seed) is taken as evaluated, "
    "its noise is not measured"
)


def shapley_weights(n: int) -> np.ndarray:
    """``w[s] = s! (n-s-1)! / n!`` for s in 0..n-1: the Shapley weight of a coalition of size s."""
    n = check_positive_int(n, "n", "shapley_weights")
    s = np.arange(n)
    return np.array([1.0 / (n * math.comb(n - 1, int(k))) for k in s])


def _mask_bits(masks: np.ndarray, n: int) -> np.ndarray:
    return ((masks[:, None] >> np.arange(n, dtype=np.int64)) & 1).astype(bool)


@limits_blas_threads
def exact_shapley_block(utility: UtilityLike, start: int, stop: int, n: int) -> np.ndarray:
    """Evaluate the coalitions with bit masks ``start..stop-1`` and return their
    contribution to every player's Shapley value.

    With ``w(s)`` from :func:`shapley_weights`, a coalition ``S`` of size ``s``
    adds ``w(s-1) u(S)`` to every member and subtracts ``w(s) u(S)`` from every
    non-member, so the Shapley value is the plain sum of these per-block
    vectors and each coalition is evaluated exactly once.
    """
    masks = np.arange(start, stop, dtype=np.int64)
    bits = _mask_bits(masks, n)
    sizes = bits.sum(axis=1)
    values = evaluate_masks(utility, bits)  # one batch for a batched model (dvl_dask.models)
    w = shapley_weights(n)
    w_member = np.where(sizes > 0, w[np.clip(sizes - 1, 0, n - 1)], 0.0)
    w_outside = np.where(sizes < n, w[np.clip(sizes, 0, n - 1)], 0.0)
    plus = (values * w_member) @ bits
    minus = (values * w_outside) @ ~bits
    return plus - minus


@lazy_method
def exact_shapley(utility: UtilityLike, *, block_size: int | None = None) -> xr.Dataset:
    """Exact Shapley values of every player, as a lazy graph.

    Every one of the ``2**n`` coalitions is evaluated exactly once, in blocks of
    ``block_size`` coalitions per graph task; blocks are summed with a tree
    reduction. Nothing is computed until ``.compute()``, ``.persist()`` or
    :func:`dvl_dask.to_zarr`; any Dask scheduler works.

    Parameters
    ----------
    utility : Utility
        The utility (model + data + scorer) or a game.
    block_size : int, optional
        Coalitions per task. Default ``dvl_dask.valuation.exact.subsets-per-block``
        (``batched-subsets-per-block`` for a utility that fits batches, see :mod:`dvl_dask.models`).

    Returns
    -------
    xarray.Dataset
        ``value`` (lazy), ``stderr`` (0: no sampling error, see the
        ``stderr_note`` attr) and ``counts`` (``2**(n-1)`` marginals per
        player) over dim ``sample``; attr ``estimate`` is ``"exact"``, so
        :func:`~dvl_dask.results.merge_results` refuses to pool it.

    Raises
    ------
    TooManyPlayersError
        If ``n`` exceeds ``dvl_dask.valuation.exact.max-players`` (default 20).

    Notes
    -----
    :math:`\\phi_i = \\sum_{S \\subseteq N \\setminus \\{i\\}} \\frac{|S|!(n-|S|-1)!}{n!}
    [u(S \\cup \\{i\\}) - u(S)]`.

    Examples
    --------
    >>> from dvl_dask.testing.games import AirportGame
    >>> ds = exact_shapley(AirportGame([1.0, 2.0, 4.0]))
    >>> ds.value.compute().values.round(4).tolist()
    [0.3333, 0.8333, 2.8333]
    """
    owner = "exact_shapley"
    utility = check_utility(utility, owner)
    n = utility.n_players
    check_enumerable(n, owner, "a Monte Carlo method")
    batched = getattr(utility, "batched", False)
    key = config.EXACT_BATCHED_SUBSETS_PER_BLOCK if batched else config.EXACT_SUBSETS_PER_BLOCK
    bs = check_positive_int(config.get(key, override_with=block_size), "block_size", owner)
    u = utility_node(utility)
    name = current_call().layer("exact-shapley-block")
    block_fn = dask.delayed(exact_shapley_block, pure=True)
    blocks = [
        block_fn(u, start, stop, n, dask_key_name=f"{name}-{i}")
        for i, (start, stop) in enumerate(block_ranges(2**n, bs))
    ]
    values = stack_blocks(blocks, n)
    return valuation_dataset(
        values,
        np.zeros(n),
        np.full(n, 2 ** (n - 1), dtype=np.int64),
        data_names=utility.data_names,
        method="exact_shapley",
        parameters={"block_size": bs},
        utility_token=utility.token,
        provenance=describe_utility(utility),
        n_evaluations=2**n,
        estimate=EXACT,
        extra_attrs={"stderr_note": EXACT_STDERR_NOTE},
    )


@limits_blas_threads
def loo_block(utility: UtilityLike, start: int, stop: int, n: int) -> np.ndarray:
    """Scores ``u(N \\ {i})`` for ``i`` in ``start..stop-1``, placed in a length-n vector."""
    out = np.zeros(n)
    masks = np.ones((stop - start, n), dtype=bool)
    masks[np.arange(stop - start), np.arange(start, stop)] = False
    out[start:stop] = evaluate_masks(utility, masks)
    return out


@limits_blas_threads
def _full_score(utility: UtilityLike, n: int) -> float:
    return float(utility(np.arange(n)))


@lazy_method
def loo(utility: UtilityLike, *, block_size: int | None = None) -> xr.Dataset:
    """Leave-one-out values ``u(N) - u(N \\ {i})`` as a lazy graph of ``n + 1`` evaluations.

    Parameters
    ----------
    utility : Utility
        The utility or game.
    block_size : int, optional
        Evaluations per task. Default ``dvl_dask.valuation.loo.evaluations-per-block``.

    Returns
    -------
    xarray.Dataset
        ``value`` (lazy), ``stderr`` (0: every evaluation the value is defined
        by was made; the ``stderr_note`` attr says so) and ``counts`` (1);
        attr ``estimate`` is ``"exact"`` (never pooled by
        :func:`~dvl_dask.results.merge_results`).

    Examples
    --------
    >>> from dvl_dask.testing.games import AirportGame
    >>> loo(AirportGame([1.0, 2.0, 4.0])).value.compute().values.tolist()
    [0.0, 0.0, 2.0]
    """
    owner = "loo"
    utility = check_utility(utility, owner)
    n = utility.n_players
    bs = check_positive_int(
        config.get(config.LOO_EVALUATIONS_PER_BLOCK, override_with=block_size), "block_size", owner
    )
    u = utility_node(utility)
    name = current_call().layer("loo-block")
    block_fn = dask.delayed(loo_block, pure=True)
    blocks = [block_fn(u, a, b, n, dask_key_name=f"{name}-{i}") for i, (a, b) in enumerate(block_ranges(n, bs))]
    without = stack_blocks(blocks, n)
    full = dask.delayed(_full_score, pure=True)(u, n, dask_key_name=companion_name(name, "full"))
    import dask.array as da

    total = da.from_delayed(full, shape=(), dtype=np.float64)
    return valuation_dataset(
        total - without,
        np.zeros(n),
        np.ones(n, dtype=np.int64),
        data_names=utility.data_names,
        method="loo",
        parameters={"block_size": bs},
        utility_token=utility.token,
        provenance=describe_utility(utility),
        n_evaluations=n + 1,
        estimate=EXACT,
        extra_attrs={"stderr_note": EXACT_STDERR_NOTE},
    )
