"""Rank stability: do two valuations (seeds, methods) order the points alike?"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidParameterError
from ..validation import check_positive_int
from ._detection import _values_of

__all__ = ["rank_stability", "top_k_overlap"]


def _pair(a: Any, b: Any, owner: str) -> tuple[np.ndarray, np.ndarray]:
    va, vb = _values_of(a, "a"), _values_of(b, "b")
    if va.shape != vb.shape:
        raise InvalidParameterError(
            f"{owner} compares values of the same points. Got shapes {va.shape} and {vb.shape}."
        )
    if (
        hasattr(a, "sample")
        and hasattr(b, "sample")
        and not np.array_equal(np.asarray(a["sample"].values).astype(str), np.asarray(b["sample"].values).astype(str))
    ):
        raise InvalidParameterError(f"{owner}: the two results label their points differently ('sample').")
    return va, vb


def top_k_overlap(a: Any, b: Any, k: int, *, lowest: bool = False) -> float:
    """Share of the ``k`` highest (or lowest) points of ``a`` that are also among those of ``b``.

    Examples
    --------
    >>> top_k_overlap([3, 2, 1, 0], [3, 1, 2, 0], 2)
    0.5
    """
    va, vb = _pair(a, b, "top_k_overlap")
    k = check_positive_int(k, "k", "top_k_overlap")
    if k > va.size:
        raise InvalidParameterError(f"The 'k' parameter of top_k_overlap must be at most {va.size}. Got {k}.")
    sign = 1.0 if lowest else -1.0
    top_a = set(np.argsort(sign * va, kind="stable")[:k].tolist())
    top_b = set(np.argsort(sign * vb, kind="stable")[:k].tolist())
    return len(top_a & top_b) / k


def rank_stability(a: Any, b: Any, *, k: int | None = None) -> dict:
    """Spearman and Kendall rank correlations of two valuations, and the top-k overlap (both ends).

    Computed with scipy.stats; ``k`` defaults to 10% of the points (at least 1).

    Examples
    --------
    >>> round(rank_stability([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 4.0, 3.0])["spearman"], 6)
    0.8
    """
    from scipy.stats import kendalltau, spearmanr

    va, vb = _pair(a, b, "rank_stability")
    k = max(1, round(0.1 * va.size)) if k is None else k
    return {
        "spearman": float(spearmanr(va, vb).statistic),
        "kendall": float(kendalltau(va, vb).statistic),
        "top_k_overlap": top_k_overlap(va, vb, k),
        "bottom_k_overlap": top_k_overlap(va, vb, k, lowest=True),
        "k": k,
    }
