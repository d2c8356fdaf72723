"""Evaluating values: removal/addition curves, noisy-label detection and rank stability.

A layer above :mod:`dvl_dask.valuation` and below :mod:`dvl_dask.plot` and the
CLI. Curves are lazy graphs (one task per step) like the valuation methods;
detection and stability metrics are small eager functions over computed values.
"""

from ._curves import REMOVAL_ORDERS, point_addition_curve, point_removal_curve, weighted_accuracy_drop
from ._detection import detection_scores, flip_labels
from ._stability import rank_stability, top_k_overlap

__all__ = [
    "REMOVAL_ORDERS",
    "detection_scores",
    "flip_labels",
    "point_addition_curve",
    "point_removal_curve",
    "rank_stability",
    "top_k_overlap",
    "weighted_accuracy_drop",
]
