"""Semivalue coefficients, in log space so that n in the thousands never overflows.

A semivalue gives player ``i`` the value
``phi_i = sum over S ⊆ N\\{i} of w(|S|) [u(S ∪ {i}) - u(S)]``. Coefficients here
are normalised as probabilities over the subsets of ``N \\ {i}``:
``sum_k C(n-1, k) w(k) = 1``. A coefficient is a callable
``log_w(n, k) -> array`` taking an array of subset sizes ``k``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.special import betaln, gammaln

from ..errors import InvalidParameterError
from ..validation import check_positive_int, check_real

__all__ = [
    "LogCoefficient",
    "banzhaf_coefficient",
    "beta_coefficient",
    "delta_coefficient",
    "log_binomial",
    "shapley_coefficient",
]

LogCoefficient = Callable[[int, np.ndarray], np.ndarray]


def log_binomial(n: int | np.ndarray, k: int | np.ndarray) -> np.ndarray:
    """``log C(n, k)`` for arrays, via log-gamma."""
    n = np.asarray(n, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)


def shapley_coefficient(n: int, k: np.ndarray) -> np.ndarray:
    """``log w(k) = -log n - log C(n-1, k)``: the Shapley value."""
    n = check_positive_int(n, "n", "shapley_coefficient")
    return -np.log(n) - log_binomial(n - 1, k)


def banzhaf_coefficient(n: int, k: np.ndarray) -> np.ndarray:
    """``log w(k) = -(n-1) log 2``: the Banzhaf value (all subsets weigh the same)."""
    n = check_positive_int(n, "n", "banzhaf_coefficient")
    return np.full(np.shape(k), -(n - 1) * np.log(2.0))


def beta_coefficient(alpha: float, beta: float) -> LogCoefficient:
    """Beta Shapley (Kwon & Zou, 2022): ``w(k) = B(k + beta, n - 1 - k + alpha) / B(alpha, beta)``.

    ``alpha = beta = 1`` is the Shapley value; ``alpha > beta`` puts more weight
    on small coalitions (e.g. Beta(16, 1)), ``beta > alpha`` on large ones.
    """
    alpha = check_real(alpha, "alpha", "beta_coefficient", low=0.0, low_open=True, high_open=True)
    beta = check_real(beta, "beta", "beta_coefficient", low=0.0, low_open=True, high_open=True)

    def log_w(n: int, k: np.ndarray) -> np.ndarray:
        k = np.asarray(k, dtype=np.float64)
        return betaln(k + beta, n - 1 - k + alpha) - betaln(alpha, beta)

    log_w.__qualname__ = f"beta_coefficient({alpha}, {beta})"
    log_w.alpha, log_w.beta = alpha, beta  # type: ignore[attr-defined]
    return log_w


def delta_coefficient(lower_bound: int, upper_bound: int) -> LogCoefficient:
    """Delta-Shapley (Watson et al., 2023): sizes ``lower..upper`` weigh ``1/(upper - lower + 1)`` each.

    ``log w(k) = -log(upper - lower + 1) - log C(n-1, k)`` for
    ``lower <= k <= upper`` and ``-inf`` (weight 0) elsewhere, so the value is
    the mean over those sizes of the average marginal contribution at each
    size; ``lower = 0, upper = n - 1`` is the Shapley value.
    """
    width = int(upper_bound) - int(lower_bound) + 1

    def log_w(n: int, k: np.ndarray) -> np.ndarray:
        k = np.asarray(k, dtype=np.float64)
        inside = (k >= lower_bound) & (k <= upper_bound)
        return np.where(inside, -np.log(width) - log_binomial(n - 1, np.where(inside, k, 0)), -np.inf)

    log_w.__qualname__ = f"delta_coefficient({int(lower_bound)}, {int(upper_bound)})"
    return log_w


def check_coefficient(coefficient: LogCoefficient, n: int, owner: str) -> np.ndarray:
    """Evaluate ``coefficient`` on all sizes and check it is a probability over subsets."""
    if not callable(coefficient):
        raise InvalidParameterError(
            f"The 'coefficient' parameter of {owner} must be a callable log_w(n, k). Got {type(coefficient).__name__}."
        )
    k = np.arange(n)
    log_w = np.asarray(coefficient(n, k), dtype=np.float64)
    if log_w.shape != (n,) or np.isnan(log_w).any():
        raise InvalidParameterError(
            f"The coefficient of {owner} must return {n} log-weights (one per subset size), without NaN."
        )
    total = np.exp(np.logaddexp.reduce(log_binomial(n - 1, k) + log_w))
    if not np.isclose(total, 1.0, rtol=1e-6):
        raise InvalidParameterError(
            f"The coefficient of {owner} must sum to 1 over subsets (sum_k C(n-1,k) w(k) = 1). Got {total:.6g}. "
            "To fix, normalise it."
        )
    return log_w
