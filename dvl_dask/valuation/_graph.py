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

__all__ = ["block_ranges", "check_utility", "stack_blocks", "utility_node"]


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


class CheckedUtility:
    """A user's utility whose every score is checked: None, NaN, inf or non-numbers raise clearly.

    Valuation methods wrap utilities they do not know (anything implementing
    :class:`~dvl_dask.typing.UtilityLike` other than :class:`dvl_dask.Utility`
    and the games of :mod:`dvl_dask.testing.games`), so a bad score fails the
    computation with :class:`~dvl_dask.errors.InvalidParameterError` instead
    of turning every value into NaN. The token is the wrapped utility's.
    """

    def __init__(self, utility: UtilityLike) -> None:
        self.utility = utility
        self.token = utility.token

    @property
    def n_players(self) -> int:
        return self.utility.n_players

    @property
    def data_names(self) -> np.ndarray:
        return self.utility.data_names

    def __call__(self, indices: Any) -> float:
        return check_finite_score(self.utility(indices), f"The utility {type(self.utility).__name__}")

    def __dask_tokenize__(self) -> str:
        return self.token

    def __repr__(self) -> str:
        return f"CheckedUtility({self.utility!r})"


def utility_node(utility: UtilityLike) -> Delayed:
    """The utility as ONE graph key (named by its token); tasks reference it.

    Data therefore travels once: on a distributed cluster the scheduler ships
    this key to a worker once and other tasks depend on it.
    """
    return dask.delayed(utility, pure=True, name=f"utility-{utility.token}")


def block_ranges(total: int, block_size: int) -> list[tuple[int, int]]:
    """Half-open ranges ``[start, stop)`` that cover ``range(total)`` in blocks."""
    return [(s, min(s + block_size, total)) for s in range(0, total, block_size)]


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
