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
    """

    token: str

    @property
    def n_players(self) -> int: ...

    @property
    def data_names(self) -> np.ndarray: ...

    def __call__(self, indices: Iterable[int] | np.ndarray) -> float: ...
