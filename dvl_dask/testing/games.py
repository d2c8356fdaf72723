"""Cooperative games with known Shapley values, usable wherever a Utility is.

Each game is cheap to evaluate, implements the :class:`~dvl_dask.typing.UtilityLike`
protocol (``n_players``, ``data_names``, ``token``, ``__call__``) and has a
``shapley_values()`` method computing the values from a closed form (never by
enumerating coalitions), which makes it a ground truth for estimators.

Games are immutable values: their token is computed, when construction ends,
from the class (its code, for classes outside installed packages) and the
whole instance state (:func:`dvl_dask.keys.instance_token`), arrays become
read-only copies, and assigning an attribute afterwards raises
:class:`~dvl_dask.errors.FrozenInstanceError`. Two games differing in any
parameter -- or a user's subclass with extra state -- never share a token.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .._frozen import Frozen
from .._provenance import library_versions, qualified_name
from ..errors import InvalidParameterError
from ..keys import describe_parameters
from ..validation import check_coalition, check_finite_score, check_positive_int

__all__ = [
    "AdditiveGame",
    "AirportGame",
    "Game",
    "MinerGame",
    "ShoesGame",
    "SymmetricVotingGame",
    "Unchecked",
    "WeightedVotingGame",
]


class Game(Frozen):
    """Base class: a coalition value ``v(S)`` over players ``0..n-1``; an immutable value.

    Calls validate the coalition (:func:`dvl_dask.validation.check_coalition`)
    and the value: ``value()`` returning None, NaN or infinity raises
    :class:`~dvl_dask.errors.InvalidParameterError`.

    Subclasses set their attributes in ``__init__`` (before or after calling
    ``super().__init__(n_players)``). When the outermost ``__init__`` returns,
    array attributes become read-only copies and the instance refuses further
    assignments. ``token`` covers the class (:func:`dvl_dask.keys.class_token`:
    its code, or its package's version) and every attribute by value; it is
    computed on first use, so building a game (e.g. at import time on a
    worker) costs no hashing.
    """

    #: Calls return finite floats only (valuation methods need not check them).
    returns_finite_scores = True

    def __init__(self, n_players: int) -> None:
        self._n = check_positive_int(n_players, "n_players", type(self).__name__)

    @property
    def token(self) -> str:
        """The game's identity: class and whole state, by value (computed once, on first use)."""
        return self._cached_state_token()

    @property
    def n_players(self) -> int:
        return self._n

    @property
    def data_names(self) -> np.ndarray:
        return np.arange(self._n, dtype=np.int64)

    def _params(self) -> object:
        """The defining parameters (kept for subclasses; the token covers the whole state anyway)."""
        return self._n

    def provenance(self) -> dict[str, object]:
        """What the token was made of: class, attributes (described) and library versions."""
        state = {k: v for k, v in vars(self).items() if k not in ("_token", "_frozen")}
        return {
            "class": qualified_name(self),
            "token": self.token,
            "parameters": describe_parameters(state),
            "versions": library_versions(),
        }

    @property
    def score_range(self) -> tuple[float, float] | None:
        """Bounds ``(lo, hi)`` of ``v(S)`` over all coalitions (the empty one included), or None if unknown.

        Each game derives its exact minimum and maximum from its definition (a
        test checks them against every coalition of small games). Estimators
        use the width to bound the variance of players whose samples all agree,
        and :func:`~dvl_dask.valuation.group_testing_shapley` the bound on
        ``|v(S)|`` as the premise of its (epsilon, delta) guarantee.
        """
        return None

    def __call__(self, indices: Iterable[int] | np.ndarray) -> float:
        players = check_coalition(indices, self._n, type(self).__name__)
        return check_finite_score(self.value(players), f"{type(self).__name__}.value()", coalition=players)

    def value(self, players: np.ndarray) -> float:
        raise NotImplementedError

    def shapley_values(self) -> np.ndarray:
        raise NotImplementedError

    def __dask_tokenize__(self) -> str:
        return self.token

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_players={self._n})"


def _finite_vector(values: Any, name: str, owner: str) -> np.ndarray:
    """A non-empty 1-d float64 array of finite numbers, or InvalidParameterError naming ``name``."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all():
        raise InvalidParameterError(
            f"The '{name}' of {owner} must be a non-empty 1-d sequence of finite numbers, one per player. Got "
            f"{values!r:.60}."
        )
    return arr


class AdditiveGame(Game):
    """``v(S) = sum of w_i over S``; Shapley values equal the weights."""

    def __init__(self, weights: Sequence[float]) -> None:
        self.weights = _finite_vector(weights, "weights", "AdditiveGame")
        super().__init__(len(self.weights))

    def _params(self) -> object:
        return self.weights

    @property
    def score_range(self) -> tuple[float, float]:
        # The smallest sum takes every negative weight, the largest every positive one.
        return float(self.weights[self.weights < 0].sum()), float(self.weights[self.weights > 0].sum())

    def value(self, players: np.ndarray) -> float:
        return float(self.weights[players].sum())

    def shapley_values(self) -> np.ndarray:
        return self.weights.copy()


class SymmetricVotingGame(Game):
    """Majority vote: ``v(S) = 1`` if ``|S| > n/2`` else 0. Every player gets ``1/n``."""

    @property
    def score_range(self) -> tuple[float, float]:
        return 0.0, 1.0  # v(∅) = 0, v(N) = 1 (n > n/2)

    def value(self, players: np.ndarray) -> float:
        return 1.0 if players.size > self._n / 2 else 0.0

    def shapley_values(self) -> np.ndarray:
        return np.full(self._n, 1.0 / self._n)


class WeightedVotingGame(Game):
    """``v(S) = 1`` if the weights in S reach ``quota``, else 0.

    Shapley values (Shapley-Shubik power index) come from a dynamic program
    over coalition sizes and weights -- polynomial in n and the total weight,
    not an enumeration of coalitions. Weights must be non-negative integers.
    """

    def __init__(self, weights: Sequence[int], quota: int) -> None:
        w = np.asarray(weights)
        if not np.issubdtype(w.dtype, np.integer) or (w < 0).any():
            raise InvalidParameterError("The 'weights' of WeightedVotingGame must be non-negative integers.")
        self.weights = w.astype(np.int64)
        self.quota = check_positive_int(quota, "quota", "WeightedVotingGame")
        super().__init__(len(w))

    def _params(self) -> object:
        return (self.weights, self.quota)

    @property
    def score_range(self) -> tuple[float, float]:
        # v(∅) = 0 (quota >= 1); v(N) = 1 unless even all the weight misses the quota.
        return 0.0, 1.0 if int(self.weights.sum()) >= self.quota else 0.0

    def value(self, players: np.ndarray) -> float:
        return 1.0 if self.weights[players].sum() >= self.quota else 0.0

    def shapley_values(self) -> np.ndarray:
        n, total = self._n, int(self.weights.sum())
        phi = np.zeros(n)
        for i in range(n):
            others = np.delete(self.weights, i)
            # ways[k, t]: number of k-subsets of the other players with total weight t
            ways = np.zeros((n, total + 1), dtype=object)
            ways[0, 0] = 1
            for w in others:
                ways[1:, w:] = ways[1:, w:] + ways[:-1, : total + 1 - w]
            lo, hi = max(self.quota - self.weights[i], 0), self.quota - 1
            acc = 0.0
            for k in range(n):
                swing = int(sum(ways[k, lo : hi + 1])) if hi >= lo else 0
                acc += swing * math.factorial(k) * math.factorial(n - k - 1)
            phi[i] = acc / math.factorial(n)
        return phi


class ShoesGame(Game):
    """Players ``0..left-1`` own left shoes, the rest right shoes; ``v(S)`` is the
    number of pairs in S. Values come from a hypergeometric sum."""

    def __init__(self, left: int, right: int) -> None:
        self.left = check_positive_int(left, "left", "ShoesGame")
        self.right = check_positive_int(right, "right", "ShoesGame")
        super().__init__(left + right)

    def _params(self) -> object:
        return (self.left, self.right)

    @property
    def score_range(self) -> tuple[float, float]:
        return 0.0, float(min(self.left, self.right))  # v(∅) = 0; N makes min(left, right) pairs

    def value(self, players: np.ndarray) -> float:
        n_left = int((players < self.left).sum())
        return float(min(n_left, players.size - n_left))

    def _value_of_own_side(self, own: int, other: int) -> float:
        # A player's marginal is 1 iff fewer of its own side than of the other
        # side precede it. The predecessors form a uniform random k-subset of the
        # other n-1 players, with k uniform on 0..n-1.
        n = own + other
        total = 0.0
        for k in range(n):
            denom = math.comb(n - 1, k)
            hits = sum(math.comb(own - 1, a) * math.comb(other, k - a) for a in range(0, k + 1) if a < k - a)
            total += hits / denom
        return total / n

    def shapley_values(self) -> np.ndarray:
        left_value = self._value_of_own_side(self.left, self.right)
        right_value = self._value_of_own_side(self.right, self.left)
        return np.r_[np.full(self.left, left_value), np.full(self.right, right_value)]


class AirportGame(Game):
    """Runway cost game: ``v(S) = max cost over S``; costs sorted ascending.

    ``phi_i = sum_{j <= i} (c_j - c_{j-1}) / (n - j)`` with ``c_{-1} = 0``
    (0-based j): each runway segment is shared by the players that need it.
    """

    def __init__(self, costs: Sequence[float]) -> None:
        c = _finite_vector(costs, "costs", "AirportGame")
        if c.ndim != 1 or np.any(np.diff(c) < 0):
            raise InvalidParameterError("The 'costs' of AirportGame must be a 1-d ascending sequence.")
        self.costs = c
        super().__init__(len(c))

    def _params(self) -> object:
        return self.costs

    @property
    def score_range(self) -> tuple[float, float]:
        # v(∅) = 0 and each singleton {i} costs c_i: the values are {0} and every cost.
        return min(0.0, float(self.costs[0])), max(0.0, float(self.costs[-1]))

    def value(self, players: np.ndarray) -> float:
        return float(self.costs[players].max()) if players.size else 0.0

    def shapley_values(self) -> np.ndarray:
        n = self._n
        increments = np.diff(np.r_[0.0, self.costs]) / (n - np.arange(n))
        return np.cumsum(increments)


class MinerGame(Game):
    """Miners work in pairs: ``v(S) = floor(|S| / 2)``. By symmetry each gets ``floor(n/2)/n``."""

    @property
    def score_range(self) -> tuple[float, float]:
        return 0.0, float(self._n // 2)  # floor(|S| / 2) from |S| = 0 to n

    def value(self, players: np.ndarray) -> float:
        return float(players.size // 2)

    def shapley_values(self) -> np.ndarray:
        return np.full(self._n, (self._n // 2) / self._n)


class Unchecked(Frozen):
    """A game whose calls skip the coalition check: about 10x faster, for statistics over many seeds.

    Valuation estimators only pass valid coalitions (sorted, unique, in
    range), so the check a :class:`Game` makes on every call is pure cost in
    calibration suites and benchmarks that evaluate millions of coalitions.
    Same token, range and names as the wrapped game.

    Examples
    --------
    >>> fast = Unchecked(AirportGame([1.0, 3.0]))
    >>> fast([0, 1]), fast.n_players
    (3.0, 2)
    """

    returns_finite_scores = True

    def __init__(self, game: Game) -> None:
        if not isinstance(game, Game):
            raise InvalidParameterError(
                f"The 'game' argument of Unchecked must be a Game of dvl_dask.testing.games. Got {type(game).__name__}."
            )
        self.game, self.n_players = game, game.n_players
        self.score_range, self.data_names = game.score_range, game.data_names

    def __call__(self, indices: Iterable[int] | np.ndarray) -> float:
        return self.game.value(np.asarray(indices, dtype=np.int64))

    @property
    def token(self) -> str:
        """The wrapped game's token."""
        return self.game.token

    def provenance(self) -> dict[str, object]:
        """The wrapped game's provenance."""
        return self.game.provenance()

    def __dask_tokenize__(self) -> str:
        return self.token

    def __repr__(self) -> str:
        return f"Unchecked({self.game!r})"
