"""Stopping criteria for :func:`run_until_converged`, composable with ``&``, ``|`` and ``~``.

A criterion looks at a :class:`ConvergenceState` after every merged block and
says whether to stop (:meth:`StoppingCriterion.check`), how far along it is
(:meth:`completion`, for progress) and, where it can, which players have
converged (:meth:`converged`): estimators that allow it stop sending work to
those players.

Criteria may keep history (``HistoryDeviation``, ``RankCorrelation``); the
loop calls :meth:`reset` before a run and replays checkpointed blocks through
:meth:`check` in order, so a resumed run makes the same decisions.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..validation import check_positive_int, check_real

__all__ = [
    "AbsoluteStandardError",
    "ConvergenceState",
    "HistoryDeviation",
    "MaxEvaluations",
    "MaxTime",
    "MaxUpdates",
    "RankCorrelation",
    "RelativeStandardError",
    "StoppingCriterion",
]


@dataclass
class ConvergenceState:
    """What a criterion sees: current estimates and counters."""

    values: np.ndarray
    stderr: np.ndarray
    counts: np.ndarray
    n_evaluations: int
    n_blocks: int
    elapsed: float


class StoppingCriterion(ABC):
    """Base class of stopping criteria."""

    def reset(self) -> None:  # noqa: B027 - a hook: most criteria keep no history
        """Forget history before a new run."""

    @abstractmethod
    def check(self, state: ConvergenceState) -> bool:
        """Record ``state`` and return True to stop."""

    def completion(self, state: ConvergenceState) -> float:
        """Progress towards stopping, in [0, 1]."""
        return 0.0

    def converged(self, state: ConvergenceState) -> np.ndarray | None:
        """Per-player convergence (True = no more work needed), or None if not per player."""
        return None

    def __and__(self, other: StoppingCriterion) -> StoppingCriterion:
        return _All(self, other)

    def __or__(self, other: StoppingCriterion) -> StoppingCriterion:
        return _Any(self, other)

    def __invert__(self) -> StoppingCriterion:
        return _Not(self)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class _All(StoppingCriterion):
    def __init__(self, *parts: StoppingCriterion) -> None:
        self.parts = parts

    def reset(self) -> None:
        for p in self.parts:
            p.reset()

    def check(self, state: ConvergenceState) -> bool:
        return all([p.check(state) for p in self.parts])  # every part records history

    def completion(self, state: ConvergenceState) -> float:
        return min(p.completion(state) for p in self.parts)

    def converged(self, state: ConvergenceState) -> np.ndarray | None:
        masks = [m for m in (p.converged(state) for p in self.parts) if m is not None]
        return np.logical_and.reduce(masks) if len(masks) == len(self.parts) else None

    def __repr__(self) -> str:
        return "(" + " & ".join(map(repr, self.parts)) + ")"


class _Any(_All):
    def check(self, state: ConvergenceState) -> bool:
        return any([p.check(state) for p in self.parts])

    def completion(self, state: ConvergenceState) -> float:
        return max(p.completion(state) for p in self.parts)

    def converged(self, state: ConvergenceState) -> np.ndarray | None:
        masks = [m for m in (p.converged(state) for p in self.parts) if m is not None]
        return np.logical_or.reduce(masks) if masks else None

    def __repr__(self) -> str:
        return "(" + " | ".join(map(repr, self.parts)) + ")"


class _Not(StoppingCriterion):
    def __init__(self, part: StoppingCriterion) -> None:
        self.part = part

    def reset(self) -> None:
        self.part.reset()

    def check(self, state: ConvergenceState) -> bool:
        return not self.part.check(state)

    def completion(self, state: ConvergenceState) -> float:
        return 1.0 - self.part.completion(state)

    def __repr__(self) -> str:
        return f"~{self.part!r}"


class MaxEvaluations(StoppingCriterion):
    """Stop after ``n_evaluations`` utility evaluations (counted over all blocks)."""

    def __init__(self, n_evaluations: int) -> None:
        self.n_evaluations = check_positive_int(n_evaluations, "n_evaluations", "MaxEvaluations")

    def check(self, state: ConvergenceState) -> bool:
        return state.n_evaluations >= self.n_evaluations

    def completion(self, state: ConvergenceState) -> float:
        return min(1.0, state.n_evaluations / self.n_evaluations)


class MaxUpdates(StoppingCriterion):
    """Stop once every player has at least ``n_updates`` samples (marginal contributions)."""

    def __init__(self, n_updates: int) -> None:
        self.n_updates = check_positive_int(n_updates, "n_updates", "MaxUpdates")

    def check(self, state: ConvergenceState) -> bool:
        return bool(np.all(state.counts >= self.n_updates))

    def completion(self, state: ConvergenceState) -> float:
        return float(np.mean(np.minimum(state.counts, self.n_updates) / self.n_updates))

    def converged(self, state: ConvergenceState) -> np.ndarray:
        return state.counts >= self.n_updates


class MaxTime(StoppingCriterion):
    """Stop after ``seconds`` of wall time in this call (not deterministic across runs)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = check_real(seconds, "seconds", "MaxTime", low=0.0, low_open=True)

    def check(self, state: ConvergenceState) -> bool:
        return state.elapsed >= self.seconds

    def completion(self, state: ConvergenceState) -> float:
        return min(1.0, state.elapsed / self.seconds)


class _PerPoint(StoppingCriterion):
    """Stop once a ``fraction`` of players satisfy a per-player test (after ``burn_in`` samples)."""

    def __init__(self, fraction: float, burn_in: int) -> None:
        self.fraction = check_real(fraction, "fraction", type(self).__name__, low=0.0, high=1.0, low_open=True)
        self.burn_in = check_positive_int(burn_in, "burn_in", type(self).__name__)

    def _passes(self, state: ConvergenceState) -> np.ndarray:
        raise NotImplementedError

    def converged(self, state: ConvergenceState) -> np.ndarray:
        return (state.counts >= self.burn_in) & self._passes(state)

    def check(self, state: ConvergenceState) -> bool:
        return bool(np.mean(self.converged(state)) >= self.fraction)

    def completion(self, state: ConvergenceState) -> float:
        return float(min(1.0, np.mean(self.converged(state)) / self.fraction))


class AbsoluteStandardError(_PerPoint):
    """Converged where ``stderr <= threshold``."""

    def __init__(self, threshold: float, *, fraction: float = 1.0, burn_in: int = 4) -> None:
        self.threshold = check_real(
            threshold, "threshold", "AbsoluteStandardError", low=0.0, low_open=True, finite=True
        )
        super().__init__(fraction, burn_in)

    def _passes(self, state: ConvergenceState) -> np.ndarray:
        return state.stderr <= self.threshold


class RelativeStandardError(_PerPoint):
    """Converged where ``stderr <= rtol * |value|`` (players valued exactly 0 need ``stderr == 0``).

    ``rtol`` must be finite and at least 1e-9: smaller tolerances cannot be reached by sampling.
    """

    def __init__(self, rtol: float, *, fraction: float = 1.0, burn_in: int = 4) -> None:
        # rtol < 1e-9 would need ~1e18 samples per point: refused rather than running forever.
        self.rtol = check_real(rtol, "rtol", "RelativeStandardError", low=1e-9, finite=True)
        super().__init__(fraction, burn_in)

    def _passes(self, state: ConvergenceState) -> np.ndarray:
        return state.stderr <= self.rtol * np.abs(state.values)


class HistoryDeviation(StoppingCriterion):
    """Ghorbani & Zou's TMC rule: stop when the mean relative change of the values over
    the last ``n_steps`` checks is below ``rtol``: ``mean_i |v_i(t) - v_i(t-n)| / |v_i(t)| < rtol``.
    Players valued 0 are skipped."""

    def __init__(self, n_steps: int, rtol: float) -> None:
        self.n_steps = check_positive_int(n_steps, "n_steps", "HistoryDeviation")
        self.rtol = check_real(rtol, "rtol", "HistoryDeviation", low=0.0, low_open=True, finite=True)
        self._history: deque[np.ndarray] = deque(maxlen=self.n_steps + 1)
        self._last = np.inf

    def reset(self) -> None:
        self._history.clear()
        self._last = np.inf

    def _deviation(self) -> float:
        if len(self._history) <= self.n_steps:
            return np.inf
        now, then = self._history[-1], self._history[0]
        nonzero = np.abs(now) > 0
        if not nonzero.any():
            return 0.0
        return float(np.mean(np.abs(now[nonzero] - then[nonzero]) / np.abs(now[nonzero])))

    def check(self, state: ConvergenceState) -> bool:
        self._history.append(np.array(state.values, dtype=np.float64))
        self._last = self._deviation()
        return self._last < self.rtol

    def completion(self, state: ConvergenceState) -> float:
        return 0.0 if not np.isfinite(self._last) else float(min(1.0, self.rtol / max(self._last, 1e-300)))


class RankCorrelation(StoppingCriterion):
    """Stop when the Spearman correlation of the values between consecutive checks exceeds
    ``1 - rtol``, after ``burn_in`` checks."""

    def __init__(self, rtol: float, *, burn_in: int = 10) -> None:
        self.rtol = check_real(rtol, "rtol", "RankCorrelation", low=0.0, high=1.0, low_open=True)
        self.burn_in = check_positive_int(burn_in, "burn_in", "RankCorrelation")
        self._previous: np.ndarray | None = None
        self._checks = 0
        self._last = -1.0

    def reset(self) -> None:
        self._previous, self._checks, self._last = None, 0, -1.0

    def check(self, state: ConvergenceState) -> bool:
        from scipy.stats import spearmanr

        values = np.array(state.values, dtype=np.float64)
        self._checks += 1
        if self._previous is not None and len(values) > 1:
            rho = spearmanr(self._previous, values).statistic
            self._last = float(rho) if np.isfinite(rho) else 1.0
        self._previous = values
        return self._checks >= self.burn_in and self._last >= 1.0 - self.rtol

    def completion(self, state: ConvergenceState) -> float:
        return float(np.clip(self._last, 0.0, 1.0) / (1.0 - self.rtol)) if self._last > 0 else 0.0


def now() -> float:
    """Monotonic clock used by the loop (one place, easy to fake in tests)."""
    return time.monotonic()
