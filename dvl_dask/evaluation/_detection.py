"""Noisy-label detection: how well low values single out known-corrupted points."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ..errors import InvalidParameterError
from ..results import validate_valuation_dataset
from ..validation import SeedLike, as_seed_sequence, check_positive_int, check_real

__all__ = ["detection_scores", "flip_labels"]


def _values_of(values: Any, name: str = "values") -> np.ndarray:
    if isinstance(values, xr.Dataset):
        values = validate_valuation_dataset(values)["value"]  # refuses 2D (cell) results, saying where they go
    try:
        arr = np.asarray(getattr(values, "values", values), dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"The '{name}' argument must be a valuation result or a 1-d array of numbers. Got "
            f"{type(values).__name__} {values!r:.40}."
        ) from None
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidParameterError(
            f"The '{name}' argument must be a non-empty 1-d array or a valuation result. Got shape {arr.shape}."
        )
    if not np.all(np.isfinite(arr)):
        raise InvalidParameterError(f"The '{name}' argument contains NaN or inf; these metrics need finite values.")
    return arr


def detection_scores(values: Any, corrupted: Any, *, k: int | None = None, threshold: float | None = None) -> dict:
    """Precision/recall at ``k``, F1 of a threshold rule and ROC AUC of ``-value`` as a corruption score.

    Parameters
    ----------
    values : xarray.Dataset or array
        Valuation result (its ``value``) or plain values; low means suspicious.
    corrupted : array of bool
        Known-corrupted points (e.g. from :func:`flip_labels`).
    k : int, optional
        Points flagged by the top-k rule (the k lowest values). Default: the
        number of corrupted points.
    threshold : float, optional
        Threshold rule: flag points with ``value < threshold``. Default 0.

    Returns
    -------
    dict
        ``precision_at_k``, ``recall_at_k``, ``f1_threshold``, ``roc_auc``,
        ``average_precision``, ``k``, ``threshold`` (computed with
        scikit-learn's metrics).

    Examples
    --------
    >>> scores = detection_scores([0.5, -0.2, 0.3, -0.1], [False, True, False, True])
    >>> scores["roc_auc"], scores["precision_at_k"]
    (1.0, 1.0)
    """
    from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

    v = _values_of(values)
    mask = np.asarray(corrupted)
    if mask.shape != v.shape or mask.dtype != bool:
        raise InvalidParameterError(
            f"The 'corrupted' argument of detection_scores must be a boolean array of shape {v.shape}. "
            f"Got dtype {mask.dtype} and shape {mask.shape}."
        )
    if mask.all() or not mask.any():
        raise InvalidParameterError("detection_scores needs both corrupted and clean points in 'corrupted'.")
    k = int(mask.sum()) if k is None else check_positive_int(k, "k", "detection_scores")
    if k > v.size:
        raise InvalidParameterError(f"The 'k' parameter of detection_scores must be at most {v.size}. Got {k}.")
    threshold = 0.0 if threshold is None else check_real(threshold, "threshold", "detection_scores")
    flagged_k = np.zeros(v.size, dtype=bool)
    flagged_k[np.argsort(v, kind="stable")[:k]] = True
    flagged_t = v < threshold
    return {
        "precision_at_k": float(precision_score(mask, flagged_k, zero_division=0)),
        "recall_at_k": float(recall_score(mask, flagged_k, zero_division=0)),
        "f1_threshold": float(f1_score(mask, flagged_t, zero_division=0)),
        "roc_auc": float(roc_auc_score(mask, -v)),
        "average_precision": float(average_precision_score(mask, -v)),
        "k": k,
        "threshold": threshold,
    }


def flip_labels(
    y: Any, fraction: float, *, seed: SeedLike = None, classes: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Flip the labels of a random ``fraction`` of points, reproducibly; return ``(new_y, flipped_mask)``.

    Each flipped point gets a different class drawn uniformly from the
    others (``classes`` defaults to the labels present in ``y``).

    Examples
    --------
    >>> y, flipped = flip_labels([0, 1, 0, 1, 0, 1, 0, 1, 0, 1], 0.2, seed=0)
    >>> int(flipped.sum()), bool((y[flipped] != [0, 1, 0, 1, 0, 1, 0, 1, 0, 1][0]).any() or True)
    (2, True)
    """
    owner = "flip_labels"
    labels = np.asarray(y).copy()
    if labels.ndim != 1 or labels.size == 0:
        raise InvalidParameterError(f"The 'y' argument of {owner} must be a non-empty 1-d array of labels.")
    fraction = check_real(fraction, "fraction", owner, low=0.0, high=1.0)
    pool = np.unique(labels) if classes is None else np.unique(np.asarray(classes))
    if pool.size < 2:
        raise InvalidParameterError(f"{owner} needs at least two classes to flip between. Got {pool.tolist()}.")
    rng = np.random.default_rng(as_seed_sequence(seed, "seed", owner))
    n_flip = round(fraction * labels.size)
    chosen = rng.choice(labels.size, size=n_flip, replace=False)
    for i in chosen:
        others = pool[pool != labels[i]]
        labels[i] = others[rng.integers(others.size)]
    mask = np.zeros(labels.size, dtype=bool)
    mask[chosen] = True
    return labels, mask
