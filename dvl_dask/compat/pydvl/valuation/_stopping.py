"""pyDVL 0.10's stopping criteria, translated to dvl_dask's when a valuation is fitted.

dvl_dask checks a criterion after each merged block of samples (not after
each sample), so a run can go past a budget such as ``MaxUpdates(n)`` by up
to one block; ``HistoryDeviation`` counts updates per player (pyDVL counts
checks). The differences are listed in ``docs/migrating-from-pydvl.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .... import valuation as native
from ....errors import InvalidParameterError
from ....validation import check_positive_int
from ._samplers import IndexSampler
from ._unsupported import not_supported

__all__ = [
    "AbsoluteStandardError",
    "HistoryDeviation",
    "MaxChecks",
    "MaxSamples",
    "MaxTime",
    "MaxUpdates",
    "MinUpdates",
    "NoStopping",
    "RankCorrelation",
    "StoppingCriterion",
]


class StoppingCriterion:
    """Base of pyDVL's stopping criteria: composable with ``|``, ``&`` and ``~``.

    :meth:`native` builds the dvl_dask criterion once the number of players is known.
    """

    def native(self, n_players: int) -> native.StoppingCriterion:
        raise NotImplementedError  # pragma: no cover - every criterion overrides it

    def __or__(self, other: StoppingCriterion) -> StoppingCriterion:
        return _Combined(self, other, lambda a, b: a | b, "|")

    def __and__(self, other: StoppingCriterion) -> StoppingCriterion:
        return _Combined(self, other, lambda a, b: a & b, "&")

    def __invert__(self) -> StoppingCriterion:
        return _Inverted(self)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class _Combined(StoppingCriterion):
    def __init__(self, a: StoppingCriterion, b: StoppingCriterion, op: Callable[..., Any], symbol: str) -> None:
        for part in (a, b):
            if not isinstance(part, StoppingCriterion):
                raise InvalidParameterError(
                    "Stopping criteria of dvl_dask.compat.pydvl combine only with each other. "
                    f"Got {type(part).__name__}."
                )
        self._parts, self._op, self._symbol = (a, b), op, symbol

    def native(self, n_players: int) -> native.StoppingCriterion:
        return self._op(*(part.native(n_players) for part in self._parts))

    def __repr__(self) -> str:
        return f"({self._parts[0]!r} {self._symbol} {self._parts[1]!r})"


class _Inverted(StoppingCriterion):
    def __init__(self, part: StoppingCriterion) -> None:
        self._part = part

    def native(self, n_players: int) -> native.StoppingCriterion:
        return ~self._part.native(n_players)


class MaxUpdates(StoppingCriterion):
    """Stop once the most-updated player has ``n_updates`` updates."""

    def __init__(self, n_updates: int, modify_result: bool = True) -> None:
        native.MaxUpdates(n_updates)  # checks n_updates now, where the user typed it
        self.n_updates = n_updates

    def native(self, n_players: int) -> native.StoppingCriterion:
        return native.MaxUpdates(self.n_updates)


class MinUpdates(StoppingCriterion):
    """Stop once every player has ``n_updates`` updates."""

    def __init__(self, n_updates: int, modify_result: bool = True) -> None:
        native.MinUpdates(n_updates)  # checks n_updates now
        self.n_updates = n_updates

    def native(self, n_players: int) -> native.StoppingCriterion:
        return native.MinUpdates(self.n_updates)


class MaxChecks(StoppingCriterion):
    """Stop after ``n_checks`` checks (dvl_dask checks once per merged block)."""

    def __init__(self, n_checks: int, modify_result: bool = True) -> None:
        native.MaxChecks(n_checks)  # checks n_checks now
        self.n_checks = n_checks

    def native(self, n_players: int) -> native.StoppingCriterion:
        return native.MaxChecks(self.n_checks)


class MaxTime(StoppingCriterion):
    """Stop after ``seconds`` of wall time."""

    def __init__(self, seconds: float, modify_result: bool = True) -> None:
        native.MaxTime(seconds)  # checks seconds now
        self.seconds = seconds

    def native(self, n_players: int) -> native.StoppingCriterion:
        return native.MaxTime(self.seconds)


class MaxSamples(StoppingCriterion):
    """Stop after ``n_samples`` samples of ``sampler``.

    A sample of a permutation sampler is one permutation and of the MSR sampler
    one coalition: each updates every player once, so this is
    ``MaxUpdates(n_samples)``. A sample of the other powerset samplers is one
    pair (player, coalition): ``n_samples`` of them update each player about
    ``n_samples / n_players`` times, so this is ``MaxUpdates(ceil(n_samples / n_players))``.
    """

    def __init__(self, sampler: IndexSampler, n_samples: int, modify_result: bool = True) -> None:
        if not isinstance(sampler, IndexSampler):
            raise InvalidParameterError(
                f"The 'sampler' argument of MaxSamples must be a sampler of dvl_dask.compat.pydvl. "
                f"Got {type(sampler).__name__}."
            )
        self.sampler = sampler
        self.n_samples = check_positive_int(n_samples, "n_samples", "MaxSamples")

    def native(self, n_players: int) -> native.StoppingCriterion:
        whole = self.sampler.kind in ("permutation", "antithetic_permutation", "stratified_permutation", "msr")
        return native.MaxUpdates(self.n_samples if whole else max(1, math.ceil(self.n_samples / n_players)))


class AbsoluteStandardError(StoppingCriterion):
    """Stop once a ``fraction`` of the players have a standard error below ``threshold``."""

    def __init__(self, threshold: float, fraction: float = 1.0, burn_in: int = 4, modify_result: bool = True) -> None:
        native.AbsoluteStandardError(threshold, fraction=fraction, burn_in=burn_in)  # checks them now
        self.threshold, self.fraction, self.burn_in = threshold, fraction, burn_in

    def native(self, n_players: int) -> native.StoppingCriterion:
        return native.AbsoluteStandardError(self.threshold, fraction=self.fraction, burn_in=self.burn_in)


class HistoryDeviation(StoppingCriterion):
    """Ghorbani & Zou's rule: values moved less than ``rtol`` over ``n_steps`` (dvl_dask counts updates)."""

    def __init__(self, n_steps: int, rtol: float, pin_converged: bool = True, modify_result: bool = True) -> None:
        native.HistoryDeviation(n_steps, rtol)  # checks them now
        self.n_steps, self.rtol, self.pin_converged = n_steps, rtol, pin_converged

    def native(self, n_players: int) -> native.StoppingCriterion:
        return native.HistoryDeviation(self.n_steps, self.rtol)


class RankCorrelation(StoppingCriterion):
    """Stop once the Spearman correlation of successive rankings changes less than ``rtol``."""

    def __init__(self, rtol: float, burn_in: int, fraction: float = 1.0, modify_result: bool = True) -> None:
        if fraction != 1.0:
            raise not_supported("RankCorrelation(fraction != 1)")
        native.RankCorrelation(rtol, burn_in=burn_in)  # checks them now
        self.rtol, self.burn_in, self.fraction = rtol, burn_in, fraction

    def native(self, n_players: int) -> native.StoppingCriterion:
        return native.RankCorrelation(self.rtol, burn_in=self.burn_in)


class NoStopping(StoppingCriterion):
    """Run until a (deterministic) sampler is exhausted: the exact methods."""

    def __init__(self, sampler: IndexSampler | None = None, modify_result: bool = True) -> None:
        if sampler is not None and not isinstance(sampler, IndexSampler):
            raise InvalidParameterError(
                f"The 'sampler' argument of NoStopping must be None or a sampler of dvl_dask.compat.pydvl "
                f"(e.g. DeterministicUniformSampler()). Got {type(sampler).__name__}."
            )
        self.sampler = sampler

    def native(self, n_players: int) -> native.StoppingCriterion:
        raise not_supported("NoStopping with a random sampler")
