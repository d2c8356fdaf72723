"""Point removal and addition curves: re-fit after dropping (or keeping) points in order of value.

Each step is one graph task (it evaluates the utility on the points left), so a
curve is a lazy graph like a valuation, runs on any scheduler and computes its
ordering from the values inside the tasks (lazy values stay lazy). Random
orders are seeded per repetition with ``SeedSequence.spawn``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ..errors import InvalidDataError, InvalidParameterError
from ..keys import current_call, lazy_method
from ..results import validate_valuation_dataset
from ..threads import limits_blas_threads
from ..validation import SeedLike, as_seed_sequence, check_positive_int, describe_point, seed_entropy
from ..valuation._graph import companion_name, utility_node

__all__ = ["REMOVAL_ORDERS", "point_addition_curve", "point_removal_curve", "weighted_accuracy_drop"]

#: Orders a curve can follow: by value, highest or lowest first, or at random.
REMOVAL_ORDERS = ("highest", "lowest", "random")
#: What ``score_std`` is (recorded in the curve's ``score_std_note`` attr).
SCORE_STD_NOTE = (
    "standard deviation (ddof=1) of the n_random random-order curves at each step: the spread of one random "
    "curve, not the standard error of their mean (score_std / sqrt(n_random)); NaN where there is one curve "
    "(the value orders, or n_random=1): no spread was measured. The uncertainty of the values themselves "
    "(their stderr) is not propagated into any curve"
)


def _ranking(values: np.ndarray, order: str, seed: np.random.SeedSequence | None) -> np.ndarray:
    """Player indices in the order they are removed (or added)."""
    if order == "random":
        return np.random.default_rng(seed).permutation(len(values))
    # Stable sort on the value, ties by index; "highest" reverses the value order only.
    ranks = np.argsort(values, kind="stable")
    if order == "highest":
        ranks = np.argsort(-values, kind="stable")
    return ranks


def curve_step(
    utility: Any,
    values: np.ndarray,
    order: str,
    seed: np.random.SeedSequence | None,
    n_points: int,
    mode: str,
) -> float:
    """Score after removing (``mode="removal"``) or keeping only (``"addition"``) the first ``n_points``."""
    values = np.asarray(values, dtype=np.float64)
    _check_finite_values(values, None, f"point_{mode}_curve")
    ranking = _ranking(values, order, seed)
    chosen = ranking[n_points:] if mode == "removal" else ranking[:n_points]
    return float(utility(np.sort(chosen)))


@limits_blas_threads
def _step_array(*args: Any) -> np.ndarray:
    # A 0-d array, not a Python float: dask slices the chunks it stacks.
    return np.asarray(curve_step(*args), dtype=np.float64)


def _check_finite_values(values: np.ndarray, names: Any, owner: str) -> None:
    """Refuse NaN or infinite values (they have no rank), naming the first such point."""
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InvalidDataError(
            f"The 'values' argument of {owner} holds {int(bad.sum())} non-finite value(s), the first for "
            f"{describe_point(first, names)}: {values[first]}. NaN or inf has no place in a ranking, so the curve "
            "would be meaningless. To fix, compute the values again (check the method's warnings), or drop those "
            "points first."
        )


def _check_fractions(fractions: Any, owner: str) -> np.ndarray:
    try:
        arr = np.asarray(fractions, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.array([np.nan])  # not numbers: refused below with the others
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise InvalidParameterError(
            f"The 'fractions' argument of {owner} must be a non-empty 1-d sequence of numbers in [0, 1]. "
            f"Got {fractions!r}."
        )
    return arr


def _curve(
    values: xr.Dataset,
    utility: Any,
    *,
    mode: str,
    fractions: Sequence[float] | np.ndarray | None,
    orders: Sequence[str],
    n_random: int,
    seed: SeedLike,
    owner: str,
) -> xr.Dataset:
    values = validate_valuation_dataset(values)
    n = int(getattr(utility, "n_players", -1))
    if not callable(utility) or n < 1:
        raise InvalidParameterError(f"The 'utility' argument of {owner} must be a dvl_dask.Utility or a game.")
    if values.sizes["sample"] != n or not np.array_equal(
        np.asarray(values["sample"].values).astype(str), np.asarray(utility.data_names).astype(str)
    ):
        raise InvalidParameterError(
            f"{owner}: the values' 'sample' labels must be the utility's data_names, in the same order "
            f"({values.sizes['sample']} values for {n} players)."
        )
    default = np.linspace(0.0, 0.5 if mode == "removal" else 1.0, 11)
    fractions = _check_fractions(default if fractions is None else fractions, owner)
    orders = tuple(orders)
    unknown = [o for o in orders if o not in REMOVAL_ORDERS]
    if not orders or unknown:
        raise InvalidParameterError(
            f"The 'orders' argument of {owner} must hold some of {REMOVAL_ORDERS}. Got {orders!r}."
        )
    n_random = check_positive_int(n_random, "n_random", owner)
    seq = as_seed_sequence(seed, "seed", owner)
    counts = np.round(fractions * n).astype(int)
    value_data = values["value"].data
    value_array = value_data if isinstance(value_data, da.Array) else np.asarray(value_data)
    if not isinstance(value_array, da.Array):  # known now: refuse before building the graph
        _check_finite_values(np.asarray(value_array, dtype=np.float64), values["sample"].values, owner)
    if isinstance(value_array, da.Array):
        # As one delayed key named by the array: handed to a delayed call as is, dask would wrap it
        # in a key named at random, and equal calls would not share keys.
        (value_array,) = value_array.rechunk(-1).to_delayed(optimize_graph=False).ravel()
    token = getattr(utility, "token", "")
    name = current_call().layer(f"{mode}-curve")  # from the public function's whole call
    # The values enter the graph as ONE key that every step reads: a dask array handed to
    # each step's delayed call would have its whole valuation graph recomputed per step.
    # The steps' inputs get task groups of their own (see companion_name), so the steps are
    # "root-ish" and the scheduler spreads them over the workers from the start.
    value_node = dask.delayed(np.asarray, pure=True)(value_array, dask_key_name=companion_name(name, "values"))
    # The utility too enters once (one key), not embedded in every step's task.
    u = utility_node(utility) if token else utility
    step = dask.delayed(_step_array, pure=True)
    repetitions = {o: (n_random if o == "random" else 1) for o in orders}
    rows = []
    for o in orders:
        per_rep = []
        for r in range(repetitions[o]):
            rep_seed = seq.spawn(r + 1)[r] if o == "random" else None
            tasks = [
                da.from_delayed(
                    step(u, value_node, o, rep_seed, int(k), mode, dask_key_name=f"{name}-{o}-{r}-{j}"),
                    shape=(),
                    dtype=np.float64,
                )
                for j, k in enumerate(counts)
            ]
            per_rep.append(da.stack(tasks))
        stacked = da.stack(per_rep)  # (repetition, step)
        # One curve (a value order, or n_random=1) shows no spread: NaN (unknown), never 0.
        spread = stacked.std(axis=0, ddof=1) if repetitions[o] > 1 else da.full(len(counts), np.nan)
        rows.append((stacked.mean(axis=0), spread))
    score = da.stack([m for m, _ in rows])
    spread = da.stack([s for _, s in rows])
    return xr.Dataset(
        {"score": (("order", "step"), score), "score_std": (("order", "step"), spread)},
        coords={
            "order": list(orders),
            "step": np.arange(len(counts)),
            "fraction": ("step", fractions),
            "n_points": ("step", counts),
        },
        attrs={
            "mode": mode,
            "n_random": n_random,
            "seed": seed_entropy(seq),
            "method": values.attrs.get("method", ""),
            "utility_token": token,
            "score_std_note": SCORE_STD_NOTE,
        },
    )


@lazy_method
def point_removal_curve(
    values: xr.Dataset,
    utility: Any,
    *,
    fractions: Sequence[float] | np.ndarray | None = None,
    orders: Sequence[str] = REMOVAL_ORDERS,
    n_random: int = 5,
    seed: SeedLike = None,
) -> xr.Dataset:
    """Scores after removing the ``fraction`` of points ranked first by each order, as a lazy graph.

    Parameters
    ----------
    values : xarray.Dataset
        A valuation result whose ``sample`` labels are the utility's ``data_names``.
    utility : Utility
        Re-fitted and scored on the points left at each step.
    fractions : sequence of float in [0, 1], optional
        Steps (default ``0, 0.05, ..., 0.5``).
    orders : sequence of {"highest", "lowest", "random"}
        Orders to follow; "random" is repeated ``n_random`` times with seeds.
    n_random : int
        Repetitions of the random baseline (its mean is ``score``, its
        standard deviation ``score_std``; at least 2 for a spread).
    seed : int, SeedSequence or None
        Seeds the random orders.

    Returns
    -------
    xarray.Dataset
        ``score`` and ``score_std`` over dims ``(order, step)``, coordinates
        ``fraction`` and ``n_points`` (points removed), lazy. ``score_std``
        is the spread of the ``n_random`` random curves (not the standard
        error of their mean); it is NaN for the value orders and when
        ``n_random=1``, where one curve shows no spread (attr
        ``score_std_note``). The values' own uncertainty is not propagated.

    Notes
    -----
    Good values make the score drop fastest when the highest-valued points
    go first and drop least (or rise, when the lowest are mislabelled) when
    the lowest go first. Ties in value are broken by the players' order.

    Examples
    --------
    >>> from dvl_dask.testing.games import AdditiveGame
    >>> from dvl_dask.valuation import exact_shapley
    >>> game = AdditiveGame([3.0, 1.0, 2.0])
    >>> curve = point_removal_curve(exact_shapley(game), game, fractions=[0, 1 / 3], orders=["highest", "lowest"])
    >>> curve.score.compute().values.tolist()
    [[6.0, 3.0], [6.0, 5.0]]
    """
    return _curve(
        values,
        utility,
        mode="removal",
        fractions=fractions,
        orders=orders,
        n_random=n_random,
        seed=seed,
        owner="point_removal_curve",
    )


@lazy_method
def point_addition_curve(
    values: xr.Dataset,
    utility: Any,
    *,
    fractions: Sequence[float] | np.ndarray | None = None,
    orders: Sequence[str] = REMOVAL_ORDERS,
    n_random: int = 5,
    seed: SeedLike = None,
) -> xr.Dataset:
    """Scores of models fitted on only the ``fraction`` of points ranked first by each order (lazy).

    Same arguments and result as :func:`point_removal_curve`; ``n_points`` is
    the number of points kept. Default fractions ``0, 0.1, ..., 1``.
    """
    return _curve(
        values,
        utility,
        mode="addition",
        fractions=fractions,
        orders=orders,
        n_random=n_random,
        seed=seed,
        owner="point_addition_curve",
    )


def weighted_accuracy_drop(curve: xr.Dataset, order: str = "highest") -> float:
    """OpenDataVal's weighted accuracy drop of a removal curve: ``sum_j (a_0 - a_j) / j``.

    ``a_j`` is the score after step ``j`` of ``order`` (``a_0`` before any
    removal, i.e. the curve's first step should be fraction 0). The ``j``-th
    term is the mean, over the first ``j`` steps, of the drop each step
    caused, so early drops weigh most; higher is better for ``"highest"``.

    Examples
    --------
    >>> import xarray as xr
    >>> c = xr.Dataset({"score": (("order", "step"), [[1.0, 0.5, 0.25]])}, coords={"order": ["highest"]})
    >>> weighted_accuracy_drop(c)
    0.875
    """
    if "score" not in getattr(curve, "data_vars", {}) or order not in curve["order"].values:
        raise InvalidParameterError(
            f"weighted_accuracy_drop needs a curve from point_removal_curve that includes order {order!r}."
        )
    scores = np.asarray(curve["score"].sel(order=order).values, dtype=np.float64)
    if scores.size < 2:
        return 0.0
    drops = scores[0] - scores[1:]
    return float(np.sum(drops / np.arange(1, scores.size)))
