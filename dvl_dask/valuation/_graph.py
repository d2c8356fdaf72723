"""Small helpers every valuation graph uses: the utility key and block ranges."""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.delayed import Delayed

from .. import config
from ..errors import InvalidParameterError, TooManyPlayersError
from ..typing import UtilityLike
from ..validation import check_finite_score

__all__ = [
    "UtilityWrapper", "block_ranges", "check_utility", "companion_name", "evaluate_masks", "even_ranges",
    "stack_blocks", "utility_node",
]


def check_utility(utility: Any, owner: str) -> UtilityLike:
    """Validate the ``utility`` argument of a valuation method."""
    if not isinstance(utility, UtilityLike):
        raise InvalidParameterError(
            f"The 'utility' argument of {owner} must be a dvl_dask.Utility (or a game from "
            f"dvl_dask.testing.games). Got {type(utility).__name__}."
        )
    if utility.n_players < 1:
        raise InvalidParameterError(f"{owner} needs at least one player. The utility has none.")
    if _checks_its_scores(utility):
        return utility
    return CheckedUtility(utility)


def _checks_its_scores(utility: Any) -> bool:
    """Whether ``utility`` already returns only finite floats (dvl_dask's Utility and games say so)."""
    return isinstance(utility, CheckedUtility) or getattr(type(utility), "returns_finite_scores", False) is True


class UtilityWrapper:
    """What every wrapper of a user's utility passes through: players, labels, provenance and a token.

    Subclasses add what they check in ``__call__``; ``token`` is the wrapped
    utility's unless the wrapper changes what is computed.
    """

    def __init__(self, utility: UtilityLike, token: str | None = None) -> None:
        self.utility = utility
        self.token = utility.token if token is None else token

    @property
    def n_players(self) -> int:
        return self.utility.n_players

    @property
    def data_names(self) -> np.ndarray:
        return self.utility.data_names

    def provenance(self) -> dict[str, Any]:
        """The wrapped utility's provenance (see :func:`dvl_dask._provenance.describe_utility`)."""
        from .._provenance import describe_utility

        return describe_utility(self.utility)

    def __dask_tokenize__(self) -> str:
        return self.token


class CheckedUtility(UtilityWrapper):
    """A user's utility whose every score is checked: None, NaN, inf or non-numbers raise clearly.

    Valuation methods wrap utilities they do not know (anything implementing
    :class:`~dvl_dask.typing.UtilityLike` other than :class:`dvl_dask.Utility`
    and the games of :mod:`dvl_dask.testing.games`), so a bad score fails the
    computation with :class:`~dvl_dask.errors.InvalidParameterError` instead
    of turning every value into NaN. The token is the wrapped utility's, and
    so is ``score_range`` (the bounds a protocol utility may declare; None
    when it declares none), which estimators read for their variance floor.
    """

    @property
    def score_range(self) -> tuple[float, float] | None:
        """The wrapped utility's declared ``score_range``, or None if it declares none."""
        return getattr(self.utility, "score_range", None)

    def __call__(self, indices: Any) -> float:
        return check_finite_score(
            self.utility(indices), f"The utility {type(self.utility).__name__}", coalition=indices
        )

    def __repr__(self) -> str:
        return f"CheckedUtility({self.utility!r})"


def evaluate_masks(utility: UtilityLike, masks: np.ndarray) -> np.ndarray:
    """Scores of the coalitions given as boolean masks ``(B, n)``: one batch when the utility fits batches.

    A :class:`~dvl_dask.utility.Utility` with a batched model
    (:mod:`dvl_dask.models`) fits them together (``evaluate_batch``); any other
    utility is called once per coalition, in order.
    """
    if getattr(utility, "batched", False):
        return np.asarray(utility.evaluate_batch(masks), dtype=np.float64)  # type: ignore[attr-defined]
    players = np.arange(utility.n_players)
    return np.array([utility(players[mask]) for mask in masks], dtype=np.float64).reshape(len(masks))


def utility_node(utility: UtilityLike) -> Delayed:
    """The utility as ONE graph key (named by its token); tasks reference it.

    Data therefore travels once: on a distributed cluster the scheduler ships
    this key to a worker once and other tasks depend on it.
    """
    return dask.delayed(utility, pure=True, name=f"utility-{utility.token}")


def companion_name(layer: str, role: str) -> str:
    """Key prefix for tasks that combine the blocks of ``layer`` (``"<verb>-<token>"``): ``"<verb>-<role>-<token>"``.

    Dask's distributed scheduler groups tasks by the words of their key before
    the token (``dask.utils.key_split``). Block tasks whose group has only the
    utility as a dependency count as *root-ish*: the scheduler queues them and
    hands one to each worker as it frees up, so every worker starts at once and
    none idles at the end. A merge or finalize task keyed ``"<layer>-merge..."``
    would fall into the blocks' own group and make that group depend on
    itself; the scheduler then places every block next to the utility's data,
    on ONE worker, and relies on work stealing to move some away (measured:
    one of two workers idle for the first 0.8 s and the last 2 s of an 8 s
    run). Combining tasks therefore get a group of their own.

    Examples
    --------
    >>> from dask.utils import key_split
    >>> layer = "permutation-shapley-block-0123456789abcdef0123456789abcdef"
    >>> key_split(f"{layer}-3"), key_split(f"{companion_name(layer, 'merge')}-0-1")
    ('permutation-shapley-block', 'permutation-shapley-block-merge')
    """
    verb, sep, token = layer.rpartition("-")
    if not sep:
        return f"{layer}-{role}"
    return f"{verb}-{role}-{token}"


def block_ranges(total: int, block_size: int) -> list[tuple[int, int]]:
    """Half-open ranges ``[start, stop)`` that cover ``range(total)`` in blocks."""
    return [(s, min(s + block_size, total)) for s in range(0, total, block_size)]


def even_ranges(total: int, block_size: int, min_blocks: int, granule: int = 1) -> list[tuple[int, int]]:
    """Blocks of equal size (within one ``granule``), at most ``block_size`` items, at least ``min_blocks`` of them.

    Small budgets are cut into ``min_blocks`` blocks (but none smaller than
    ``max(granule, block_size // 8)`` items), so every worker of a small
    cluster gets work to the end; large budgets into blocks of about
    ``block_size``. Sizes are multiples of ``granule`` (2 keeps antithetic
    pairs whole) except possibly the last. Equal sizes make the finishing
    time independent of the order in which a scheduler runs the blocks: a
    worker waits at most one block at the end. The layout depends on the
    arguments only, never on the workers, so a seed gives the same values on
    any scheduler.

    Examples
    --------
    >>> [b - a for a, b in even_ranges(40, 4, 16)]
    [3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2]
    >>> [b - a for a, b in even_ranges(10, 4, 16, granule=2)]
    [2, 2, 2, 2, 2]
    """
    granule = max(1, int(granule))
    cap = max(granule, block_size - block_size % granule)
    floor = max(granule, cap // 8)
    units = -(-total // granule)  # whole granules to spread
    n_blocks = max(-(-total // cap), min(min_blocks, -(-total // floor)))
    n_blocks = max(1, min(n_blocks, units))
    base, extra = divmod(units, n_blocks)
    ranges, start = [], 0
    for i in range(n_blocks):
        stop = min(total, start + granule * (base + (1 if i < extra else 0)))
        ranges.append((start, stop))
        start = stop
    return ranges


def stack_blocks(blocks: list[Delayed], n: int, *, split_every: int = 16) -> da.Array:
    """Sum per-block length-``n`` vectors with a tree reduction (one dask array)."""
    if not blocks:
        raise InvalidParameterError("A valuation graph needs at least one block.")
    parts = [da.from_delayed(b, shape=(n,), dtype=np.float64) for b in blocks]
    return da.stack(parts).sum(axis=0, split_every=split_every)


def check_enumerable(n: int, owner: str, alternative: str) -> None:
    """Refuse to enumerate all ``2**n`` coalitions beyond ``dvl_dask.valuation.exact.max-players``."""
    max_players = int(config.get(config.EXACT_MAX_PLAYERS))
    if n > max_players:
        raise TooManyPlayersError(
            f"{owner} needs 2**n utility evaluations; n={n} exceeds the limit of {max_players} "
            f"players (2**{n} = {2**n:,} fits). To fix, use {alternative}, group the data "
            "(GroupedDataset), or raise the limit with "
            f"dask.config.set({{'{config.EXACT_MAX_PLAYERS}': {n}}})."
        )
