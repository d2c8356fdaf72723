"""Protocols shared across layers (no third-party imports but numpy)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["UtilityLike"]


@runtime_checkable
class UtilityLike(Protocol):
    """What valuation methods need of a utility: players, labels, a token, a call.

    :class:`dvl_dask.Utility` and the games in :mod:`dvl_dask.testing.games` implement it.

    Optionally, ``score_range`` (a ``(low, high)`` tuple of finite floats, or
    None) declares bounds of every value ``u(S)``; estimators then floor the
    standard error of players whose samples all agree by that width. Without
    it they use the spread of the samples observed in the run (see
    :func:`dvl_dask.valuation._stats.guarded_stderr`). Every wrapper dvl_dask
    puts around a utility keeps it.
    """

    token: str

    @property
    def n_players(self) -> int: ...

    @property
    def data_names(self) -> np.ndarray: ...

    def __call__(self, indices: Iterable[int] | np.ndarray) -> float: ...
