"""Truncation policies for permutation sampling (truncated Monte Carlo Shapley).

Late in a permutation, adding a point rarely changes the score. A policy
decides after each prefix whether to stop evaluating; the remaining players of
that permutation get a marginal contribution of 0. That makes the estimate
**biased**: the truncated marginals are not 0 in general, values need not sum
to ``u(N)``, and the standard error measures the noise around the biased
value only. Results of truncated runs say so (:func:`bias_attrs`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InvalidParameterError
from ..keys import instance_token
from ..validation import check_real

__all__ = [
    "DeviationTruncation",
    "FixedTruncation",
    "NoTruncation",
    "RelativeTruncation",
    "TruncationPolicy",
    "bias_attrs",
    "make_truncation",
]


class TruncationPolicy:
    """Base class. ``needs_total`` says whether ``u(N)`` must be known."""

    needs_total = False
    name = "none"

    def stop_after(self, step: int, n: int, score: float, total: float | None) -> bool:
        """True to stop after prefix length ``step`` (1..n) with score ``score``."""
        return False

    def checker(self, n: int, total: float | None) -> Callable[[int, float], bool]:
        """A fresh stopping rule for ONE permutation of ``n`` players: ``stop(step, score) -> bool``.

        Policies with state along a permutation (:class:`DeviationTruncation`)
        keep it in the returned closure, so one policy object serves every
        permutation of every block and thread without shared mutable state.
        """

        def stop(step: int, score: float) -> bool:
            return self.stop_after(step, n, score, total)

        return stop

    def parameters(self) -> dict[str, Any]:
        return {"truncation": self.name}

    def __dask_tokenize__(self) -> Any:
        # The class (its code, for user subclasses) and its whole state, not the hand-picked
        # parameters(): a subclass with state of its own must not share a key.
        return instance_token(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.parameters()})"


class NoTruncation(TruncationPolicy):
    """Evaluate every prefix."""


class FixedTruncation(TruncationPolicy):
    """Evaluate only the first ``ceil(fraction * n)`` prefixes of each permutation."""

    name = "fixed"

    def __init__(self, fraction: float) -> None:
        self.fraction = check_real(fraction, "fraction", "FixedTruncation", low=0.0, high=1.0, low_open=True)

    def stop_after(self, step: int, n: int, score: float, total: float | None) -> bool:
        return step >= int(np.ceil(self.fraction * n))

    def parameters(self) -> dict[str, Any]:
        return {"truncation": self.name, "fraction": self.fraction}


class RelativeTruncation(TruncationPolicy):
    """Stop once ``|u(prefix) - u(N)| <= rtol * |u(N)|`` (Ghorbani & Zou's TMC rule)."""

    name = "relative"
    needs_total = True

    def __init__(self, rtol: float) -> None:
        self.rtol = check_real(rtol, "rtol", "RelativeTruncation", low=0.0, low_open=True, finite=True)

    def stop_after(self, step: int, n: int, score: float, total: float | None) -> bool:
        assert total is not None
        return abs(score - total) <= self.rtol * abs(total)

    def parameters(self) -> dict[str, Any]:
        return {"truncation": self.name, "rtol": self.rtol}


class DeviationTruncation(TruncationPolicy):
    """Stop once ``|u(prefix) - u(N)| < sigmas * std`` of the scores seen so far in the permutation (pyDVL's rule).

    Along each permutation the policy keeps the running mean and (population)
    variance of the prefix scores evaluated so far, the current one
    included; after a burn-in of ``burn_in_fraction * n`` prefixes it stops
    as soon as the current score lies strictly within ``sigmas`` standard
    deviations of the total utility ``u(N)``. The state starts afresh with
    every permutation. This is pyDVL 0.10's ``DeviationTruncation`` (the
    "bootstrap truncation" of pyDVL 0.9). Like every truncation it biases the
    values (later players get a marginal contribution of 0): results say so
    in ``attrs["biased"]`` and ``attrs["bias"]``.

    Parameters
    ----------
    burn_in_fraction : float
        Fraction of the ``n`` prefixes of a permutation evaluated before the
        rule is checked, in ``[0, 1]``.
    sigmas : float, default 1.0
        Number of standard deviations, positive.

    Examples
    --------
    >>> stop = DeviationTruncation(0.0, sigmas=1.0).checker(4, total=1.0)
    >>> [stop(1, 0.0), stop(2, 0.9)]  # std 0.45 after two scores; |0.9 - 1| < 0.45
    [False, True]
    """

    name = "deviation"
    needs_total = True

    def __init__(self, burn_in_fraction: float, sigmas: float = 1.0) -> None:
        self.burn_in_fraction = check_real(
            burn_in_fraction, "burn_in_fraction", "DeviationTruncation", low=0.0, high=1.0
        )
        self.sigmas = check_real(sigmas, "sigmas", "DeviationTruncation", low=0.0, low_open=True, finite=True)

    def checker(self, n: int, total: float | None) -> Callable[[int, float], bool]:
        assert total is not None
        burn_in = self.burn_in_fraction * n
        count, mean, m2 = 0, 0.0, 0.0

        def stop(step: int, score: float) -> bool:
            nonlocal count, mean, m2
            count += 1
            delta = score - mean
            mean += delta / count
            m2 += delta * (score - mean)
            if count < burn_in:
                return False
            return abs(score - total) < self.sigmas * float(np.sqrt(m2 / count))

        return stop

    def stop_after(self, step: int, n: int, score: float, total: float | None) -> bool:
        raise InvalidParameterError(
            "DeviationTruncation keeps state along a permutation; use checker(n, total) for each permutation."
        )

    def parameters(self) -> dict[str, Any]:
        return {"truncation": self.name, "burn_in_fraction": self.burn_in_fraction, "sigmas": self.sigmas}


_BIAS_RULES = {
    "fixed": ("FixedTruncation(fraction={fraction}): only the first ceil({fraction} n) prefixes of each "
              "permutation are evaluated and later players get a marginal contribution of 0"),
    "relative": ("RelativeTruncation(rtol={rtol}): a permutation stops once |u(prefix) - u(N)| <= {rtol} "
                 "|u(N)| and later players get a marginal contribution of 0"),
    "deviation": ("DeviationTruncation(burn_in_fraction={burn_in_fraction}, sigmas={sigmas}): after a burn-in, a "
                  "permutation stops once |u(prefix) - u(N)| < {sigmas} standard deviations of its prefix scores "
                  "so far and later players get a marginal contribution of 0"),
}


def bias_attrs(parameters: dict[str, Any]) -> dict[str, Any]:
    """Result attrs that say whether (and by which rule) an estimate is biased, from its recorded parameters.

    ``{"biased": False, "bias": ""}`` for unbiased estimators; for truncated
    permutations ``{"biased": True, "bias": "<rule and parameters>"}``. The
    standard error of a biased result measures its sampling noise only, not
    its distance from the true value.

    Examples
    --------
    >>> bias_attrs(FixedTruncation(0.5).parameters())["bias"][:31]
    'FixedTruncation(fraction=0.5): '
    >>> bias_attrs({"truncation": "none"})
    {'biased': False, 'bias': ''}
    """
    name = str(parameters.get("truncation", "none"))
    if name == "none":
        return {"biased": False, "bias": ""}
    rule = _BIAS_RULES.get(name, "truncation {truncation!r}: permutations stop early and later players get a "
                                 "marginal contribution of 0")
    return {"biased": True, "bias": rule.format_map(parameters) + "; the values are biased (need not sum to u(N)) "
            "and their stderr measures sampling noise only."}


def make_truncation(truncation: str | float | TruncationPolicy | None, owner: str) -> TruncationPolicy:
    """``None``/"none" → no truncation; a float → relative with that rtol; or a policy instance."""
    if truncation is None or truncation == "none":
        return NoTruncation()
    if isinstance(truncation, TruncationPolicy):
        return truncation
    if isinstance(truncation, float | int) and not isinstance(truncation, bool):
        return RelativeTruncation(float(truncation))
    raise InvalidParameterError(
        f"The 'truncation' parameter of {owner} must be None, 'none', a relative tolerance (float) or a "
        f"policy (NoTruncation(), FixedTruncation(fraction), RelativeTruncation(rtol), "
        f"DeviationTruncation(burn_in_fraction, sigmas)). Got {truncation!r}."
    )
