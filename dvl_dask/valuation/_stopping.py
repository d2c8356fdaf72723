"""Stopping criteria for :func:`run_until_converged`, composable with ``&``, ``|`` and ``~``.

A criterion looks at a :class:`ConvergenceState` after every merged block and
says whether to stop (:meth:`StoppingCriterion.check`), how far along it is
(:meth:`completion`, for progress) and, where it can, which players have
converged (:meth:`converged`): estimators that allow it stop sending work to
those players.

Criteria may keep history (``HistoryDeviation``, ``RankCorrelation``); the
loop calls :meth:`reset` before a run and replays checkpointed blocks through
:meth:`check` in order, so a resumed run makes the same decisions.

Budget caps (``MaxEvaluations``, ``MaxTime``, ``MaxChecks``, ``MaxUpdates``;
:attr:`StoppingCriterion.is_budget_cap`) say that the budget ran out, not that
the values are accurate: after a run, :meth:`StoppingCriterion.fired` names
the criteria that stopped it, and the run counts as converged only if one of
them is not a cap.
"""

from __future__ import annotations

import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidParameterError
from ..validation import check_positive_int, check_real

__all__ = [
    "AbsoluteStandardError",
    "ConvergenceState",
    "HistoryDeviation",
    "MaxChecks",
    "MaxEvaluations",
    "MaxTime",
    "MaxUpdates",
    "MinUpdates",
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

    def __post_init__(self) -> None:
        owner = "ConvergenceState"
        self.values = _per_player(self.values, "values", owner)
        n = self.values.shape[0]
        self.stderr = _per_player(self.stderr, "stderr", owner, n, allow_inf=True)  # inf: too few samples yet
        self.counts = _per_player(self.counts, "counts", owner, n)
        if (self.stderr < 0).any() or (self.counts < 0).any():
            raise InvalidParameterError(f"The 'stderr' and 'counts' fields of {owner} must be >= 0.")
        self.n_evaluations = check_positive_int(self.n_evaluations, "n_evaluations", owner, allow_zero=True)
        self.n_blocks = check_positive_int(self.n_blocks, "n_blocks", owner, allow_zero=True)
        self.elapsed = check_real(self.elapsed, "elapsed", owner, low=0.0)


def _per_player(value: Any, name: str, owner: str, n: int | None = None, *, allow_inf: bool = False) -> np.ndarray:
    """A 1-D numeric array (one entry per player, ``n`` of them when given) without NaN (or inf)."""
    arr = np.asarray(value) if isinstance(value, np.ndarray | list | tuple) else None
    ok = arr is not None and arr.ndim == 1 and arr.dtype.kind in "iuf" and (n is None or arr.shape[0] == n)
    if ok:
        ok = not np.isnan(arr).any() if allow_inf else bool(np.isfinite(arr).all())
    if not ok:
        size = "" if n is None else f" of length {n}"
        raise InvalidParameterError(
            f"The {name!r} field of {owner} must be a 1-D numeric array{size} (one entry per player) without NaN"
            f"{'' if allow_inf else ' or inf'}. Got {type(value).__name__} {value!r:.60}."
        )
    return arr


class StoppingCriterion(ABC):
    """Base class of stopping criteria."""

    #: True for criteria that stop when a budget is spent (evaluations, time, checks, updates): their
    #: firing says nothing about the accuracy of the values.
    is_budget_cap = False

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

    def fired(self) -> list[StoppingCriterion]:
        """The criteria whose last :meth:`check` stopped the run (call it after a check returned True).

        A simple criterion returns itself; ``a | b`` and ``a & b`` return the
        criteria among their parts that held at the last check (recursively).
        """
        return [self]

    def uses_stderr(self) -> bool:
        """Whether the criterion (or one of its parts) judges the reported standard errors."""
        return False

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
        self._held = [False] * len(parts)  # each part's result at the last check

    def reset(self) -> None:
        self._held = [False] * len(self.parts)
        for p in self.parts:
            p.reset()

    def check(self, state: ConvergenceState) -> bool:
        self._held = [p.check(state) for p in self.parts]  # every part records history
        return all(self._held)

    def fired(self) -> list[StoppingCriterion]:
        return [leaf for part, ok in zip(self.parts, self._held) if ok for leaf in part.fired()]

    def uses_stderr(self) -> bool:
        return any(p.uses_stderr() for p in self.parts)

    def completion(self, state: ConvergenceState) -> float:
        return min(p.completion(state) for p in self.parts)

    def converged(self, state: ConvergenceState) -> np.ndarray | None:
        masks = [m for m in (p.converged(state) for p in self.parts) if m is not None]
        return np.logical_and.reduce(masks) if len(masks) == len(self.parts) else None

    def __repr__(self) -> str:
        return "(" + " & ".join(map(repr, self.parts)) + ")"


class _Any(_All):
    def check(self, state: ConvergenceState) -> bool:
        self._held = [p.check(state) for p in self.parts]  # every part records history
        return any(self._held)

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

    def uses_stderr(self) -> bool:
        return self.part.uses_stderr()

    def __repr__(self) -> str:
        return f"~{self.part!r}"


class MaxEvaluations(StoppingCriterion):
    """Stop after ``n_evaluations`` utility evaluations (counted over all blocks). A budget cap."""

    is_budget_cap = True

    def __init__(self, n_evaluations: int) -> None:
        self.n_evaluations = check_positive_int(n_evaluations, "n_evaluations", "MaxEvaluations")

    def check(self, state: ConvergenceState) -> bool:
        return state.n_evaluations >= self.n_evaluations

    def completion(self, state: ConvergenceState) -> float:
        return min(1.0, state.n_evaluations / self.n_evaluations)


class MaxUpdates(StoppingCriterion):
    """Stop once the MOST-updated player has ``n_updates`` samples (pyDVL's ``MaxUpdates``).

    With per-player convergence some players stop receiving work, so this
    bounds the work spent on any one player. To require ``n_updates`` samples
    for every player use :class:`MinUpdates`. A budget cap.
    """

    is_budget_cap = True

    def __init__(self, n_updates: int) -> None:
        self.n_updates = check_positive_int(n_updates, "n_updates", "MaxUpdates")

    def check(self, state: ConvergenceState) -> bool:
        return bool(np.max(state.counts, initial=0) >= self.n_updates)

    def completion(self, state: ConvergenceState) -> float:
        return float(min(1.0, np.max(state.counts, initial=0) / self.n_updates))


class MinUpdates(StoppingCriterion):
    """Stop once the LEAST-updated player has ``n_updates`` samples (pyDVL's ``MinUpdates``).

    Per player, a player with ``n_updates`` samples has converged (it needs no more work).
    """

    def __init__(self, n_updates: int) -> None:
        self.n_updates = check_positive_int(n_updates, "n_updates", "MinUpdates")

    def check(self, state: ConvergenceState) -> bool:
        return bool(np.all(state.counts >= self.n_updates))

    def completion(self, state: ConvergenceState) -> float:
        return float(np.mean(np.minimum(state.counts, self.n_updates) / self.n_updates))

    def converged(self, state: ConvergenceState) -> np.ndarray:
        return state.counts >= self.n_updates


class MaxChecks(StoppingCriterion):
    """Stop after ``n_checks`` checks, i.e. merged blocks (pyDVL's ``MaxChecks``). A budget cap."""

    is_budget_cap = True

    def __init__(self, n_checks: int) -> None:
        self.n_checks = check_positive_int(n_checks, "n_checks", "MaxChecks")
        self._checks = 0

    def reset(self) -> None:
        self._checks = 0

    def check(self, state: ConvergenceState) -> bool:
        self._checks += 1
        return self._checks >= self.n_checks

    def completion(self, state: ConvergenceState) -> float:
        return min(1.0, self._checks / self.n_checks)


class MaxTime(StoppingCriterion):
    """Stop after ``seconds`` of wall time in this call (not deterministic across runs). A budget cap."""

    is_budget_cap = True

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
    """Converged where ``stderr <= threshold`` (and the player has ``burn_in`` samples).

    Standard errors come from the estimator's finalize, which never reports 0
    for a player merely because its samples agree (see
    :func:`~dvl_dask.valuation._stats.guarded_stderr`): with a known score
    range ``D`` an all-equal player has ``stderr = 1.5 W / n`` (``W`` the
    sample width, e.g. ``2 D`` for marginals; without a known range, the
    spread of the samples the run has seen, and ``inf`` while they all agree),
    so it converges only after ``n >= 1.5 W / threshold`` samples, when the
    rule of three bounds its error.
    """

    def __init__(self, threshold: float, *, fraction: float = 1.0, burn_in: int = 4) -> None:
        self.threshold = check_real(
            threshold, "threshold", "AbsoluteStandardError", low=0.0, low_open=True, finite=True
        )
        super().__init__(fraction, burn_in)

    def _passes(self, state: ConvergenceState) -> np.ndarray:
        return state.stderr <= self.threshold

    def uses_stderr(self) -> bool:
        return True


class RelativeStandardError(_PerPoint):
    """Converged where ``stderr <= rtol * |value| + atol`` (and the player has ``burn_in`` samples).

    With ``atol = 0`` (default) a player valued exactly 0 never converges:
    the estimators never report ``stderr == 0`` for sampled values (a rarely
    pivotal player seen at 0 keeps a positive stderr, from the variance floor
    or ``inf`` without evidence of a range, and keeps receiving work). Pass
    ``atol`` to accept players whose value is indistinguishable from 0 at that
    scale.

    Raises
    ------
    InvalidParameterError
        If ``rtol < 1e-6`` (below floating-point noise of Monte Carlo means;
        the run would never stop) or ``atol < 0``.
    """

    def __init__(self, rtol: float, *, atol: float = 0.0, fraction: float = 1.0, burn_in: int = 4) -> None:
        self.rtol = check_real(rtol, "rtol", "RelativeStandardError", low=0.0, low_open=True, finite=True)
        if self.rtol < 1e-6:
            raise InvalidParameterError(
                f"The 'rtol' parameter of RelativeStandardError must be at least 1e-6. Got {rtol!r}: "
                "Monte Carlo errors shrink like 1/sqrt(samples), so this would never stop. "
                "To fix, use e.g. rtol=0.05, or MaxEvaluations for a fixed budget."
            )
        self.atol = check_real(atol, "atol", "RelativeStandardError", low=0.0, finite=True)
        super().__init__(fraction, burn_in)

    def _passes(self, state: ConvergenceState) -> np.ndarray:
        return state.stderr <= self.rtol * np.abs(state.values) + self.atol

    def uses_stderr(self) -> bool:
        return True


#: Largest history HistoryDeviation keeps per player.
MAX_HISTORY_STEPS = 100_000


class HistoryDeviation(StoppingCriterion):
    r"""Ghorbani & Zou's convergence rule for TMC-Shapley (Data Shapley, ICML 2019).

    Their rule, with ``t`` the iteration (one permutation, which updates
    every point once), ``n_steps = 100`` and ``rtol = 0.05`` in the paper:
    stop at the first ``t`` with

    .. math::

        \frac{1}{n} \sum_{i=1}^{n}
        \frac{\left| v_i^t - v_i^{t - n_{steps}} \right|}{\left| v_i^t \right|} < rtol,

    the mean over players of each player's relative change over the last
    ``n_steps`` iterations. The parameters keep the names of pyDVL's
    ``HistoryDeviation(n_steps, rtol)``, which also averages over players
    but counts ``n_steps`` in checks (batches) and compares only the players
    updated more than ``n_steps + 1`` times.

    How ``t`` counts here: a player's ``t`` is its number of updates (its
    count, the paper's iterations: permutations for permutation sampling),
    not the number of checks, so the rule does not depend on how many
    samples a block holds. ``v_i^{t - n_steps}`` is the player's value when
    it had exactly ``t - n_steps`` updates; the loop checks once per merged
    block, so when no check fell at that count (a block holds several
    updates and ``n_steps`` is not a multiple of them) the value at the last
    check at which the player had at most ``t - n_steps`` updates is used:
    the lag is then ``n_steps`` rounded up to a whole number of checks. The
    rule is evaluated (and can stop the run) only at checks, and only once
    every player has a value ``n_steps`` or more updates back
    (``t - n_steps >= 1``: values before the first update are not
    estimates); until then it does not stop.

    Zeros (the paper does not say): a player with ``v_i^t = 0`` contributes
    0 if ``v_i^{t - n_steps} = 0`` too (no change) and ``inf`` otherwise (a
    relative change from a non-zero value to 0 is unbounded), so that
    iteration cannot stop the run. pyDVL instead adds the absolute change
    ``|v_i^{t - n_steps}|`` for such a player.

    A heuristic: it measures the stability of the running means, not their
    error (prefer :class:`RelativeStandardError`). Unlike pyDVL there is no
    ``pin_converged``: the rule is one number over all players.
    """

    def __init__(self, n_steps: int, rtol: float) -> None:
        self.n_steps = check_positive_int(n_steps, "n_steps", "HistoryDeviation")
        if self.n_steps > MAX_HISTORY_STEPS:
            # The criterion keeps (n_steps + 1) values per player: refuse sizes no run can hold.
            raise InvalidParameterError(
                f"The 'n_steps' parameter of HistoryDeviation must be at most {MAX_HISTORY_STEPS:,} (it keeps "
                f"n_steps + 1 values per player). Got {n_steps!r}. To fix, use e.g. n_steps=100."
            )
        self.rtol = check_real(rtol, "rtol", "HistoryDeviation", low=0.0, low_open=True, finite=True)
        self.reset()

    def reset(self) -> None:
        # Per player, its values and counts at its last (n_steps + 1) updates, newest last; count 0 = empty.
        # n_steps + 1 distinct counts ending at t include one <= t - n_steps, the one the rule needs.
        self._values: np.ndarray | None = None
        self._counts: np.ndarray | None = None
        self._last = np.inf

    def _record(self, state: ConvergenceState) -> None:
        values = np.array(state.values, dtype=np.float64)
        counts = np.asarray(state.counts, dtype=np.int64)
        if self._values is None or self._values.shape[1] != len(values):
            self._values = np.zeros((self.n_steps + 1, len(values)))
            self._counts = np.zeros((self.n_steps + 1, len(values)), dtype=np.int64)
        assert self._counts is not None
        updated = counts > self._counts[-1]
        for history, now in ((self._values, values), (self._counts, counts)):
            history[:, updated] = np.roll(history[:, updated], -1, axis=0)
            history[-1, updated] = now[updated]

    def _lagged(self) -> tuple[np.ndarray, np.ndarray]:
        """Per player, its value ``n_steps`` updates ago (see the class docstring) and whether it has one."""
        assert self._values is not None and self._counts is not None
        target = self._counts[-1] - self.n_steps
        # Counts grow along axis 0 (empty rows hold 0 at the top): the last row at or below the target.
        row = np.sum(self._counts <= target[None, :], axis=0) - 1
        columns = np.arange(self._counts.shape[1])
        row = np.maximum(row, 0)
        has = (target >= 1) & (self._counts[row, columns] >= 1) & (self._counts[row, columns] <= target)
        return self._values[row, columns], has

    def deviations(self) -> np.ndarray:
        """Per player ``|v(t) - v(t - n_steps)| / |v(t)|`` (0 for 0/0; inf while a player has too few updates)."""
        if self._values is None:
            return np.array([np.inf])
        past, has = self._lagged()
        now = self._values[-1]
        change = np.abs(now - past)
        with np.errstate(divide="ignore", invalid="ignore"):
            dev = np.where(now != 0, change / np.abs(now), np.where(change > 0, np.inf, 0.0))
        return np.where(has, dev, np.inf)

    def check(self, state: ConvergenceState) -> bool:
        self._record(state)
        self._last = float(np.mean(self.deviations()))
        return self._last < self.rtol

    def completion(self, state: ConvergenceState) -> float:
        return 0.0 if not np.isfinite(self._last) else float(min(1.0, self.rtol / max(self._last, 1e-300)))


class RankCorrelation(StoppingCriterion):
    """Stop when the Spearman correlation of the values between consecutive checks exceeds
    ``1 - rtol``, after ``burn_in`` checks.

    An undefined correlation (NaN: constant values, e.g. all players still at
    0) never stops the run.
    """

    def __init__(self, rtol: float, *, burn_in: int = 10) -> None:
        self.rtol = check_real(rtol, "rtol", "RankCorrelation", low=0.0, high=1.0, low_open=True)
        self.burn_in = check_positive_int(burn_in, "burn_in", "RankCorrelation")
        self._previous: np.ndarray | None = None
        self._checks = 0
        self._last = float("nan")

    def reset(self) -> None:
        self._previous, self._checks, self._last = None, 0, float("nan")

    def check(self, state: ConvergenceState) -> bool:
        from scipy.stats import spearmanr

        values = np.array(state.values, dtype=np.float64)
        self._checks += 1
        if self._previous is not None and len(values) > 1:
            with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # constant input: NaN, handled below
                rho = spearmanr(self._previous, values).statistic
            self._last = float(rho)
        self._previous = values
        return bool(self._checks >= self.burn_in and np.isfinite(self._last) and self._last >= 1.0 - self.rtol)

    def completion(self, state: ConvergenceState) -> float:
        if not np.isfinite(self._last) or self._last <= 0:
            return 0.0
        return float(min(1.0, self._last / (1.0 - self.rtol)))


def now() -> float:
    """Monotonic clock used by the loop (one place, easy to fake in tests)."""
    return time.monotonic()
