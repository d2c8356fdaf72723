"""Vectorised scorers: the scores of a whole batch of fitted linear models on the test data.

Each metric reproduces scikit-learn's scorer of the same name on the model
:class:`~dvl_dask.models.LogisticRegression` / :class:`~dvl_dask.models.Ridge`
would be after the same fit: predictions by the same rule (two classes:
``classes_[1]`` where the decision value is > 0, so a decision value of
exactly 0 gives ``classes_[0]``; more: the first class of largest decision
value), probabilities clipped to ``[eps, 1 - eps]`` as ``log_loss`` does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import InvalidParameterError
from ..validation import check_bool
from ._solvers import LinearFit

__all__ = ["VECTOR_METRICS", "vector_metric"]

_EPS = np.finfo(np.float64).eps


def _predicted_codes(decision: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Global class codes predicted by each model: ``(B, t)``."""
    local = (decision[..., 0] > 0).astype(np.int64) if decision.shape[-1] == 1 else decision.argmax(axis=-1)
    return classes[local]


def _accuracy(fit: LinearFit, x: np.ndarray, y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return (_predicted_codes(fit.decision(x), classes) == y[None, :]).mean(axis=1)


def _balanced_accuracy(fit: LinearFit, x: np.ndarray, y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    # scikit-learn: the mean recall over the classes present in y_test (adjusted=False).
    predicted = _predicted_codes(fit.decision(x), classes)
    recalls = [(predicted[:, y == c] == c).mean(axis=1) for c in np.unique(y)]
    return np.mean(recalls, axis=0)


def _neg_log_loss(fit: LinearFit, x: np.ndarray, y: np.ndarray, classes: np.ndarray) -> np.ndarray | None:
    # Only when the model's classes are the test classes (else scikit-learn's log_loss refuses or
    # relabels: the caller then scores those coalitions one at a time).
    if not np.array_equal(classes, np.unique(y)):
        return None
    z = fit.decision(x)
    if z.shape[-1] == 1:
        p1 = 0.5 * (1.0 + np.tanh(0.5 * z[..., 0]))
        proba = np.stack([1.0 - p1, p1], axis=-1)
    else:
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        proba = e / e.sum(axis=-1, keepdims=True)
    local = np.searchsorted(classes, y)
    picked = np.take_along_axis(proba, local[None, :, None], axis=-1)[..., 0]
    return np.log(np.clip(picked, _EPS, 1.0 - _EPS)).mean(axis=1)


def _prediction(fit: LinearFit, x: np.ndarray) -> np.ndarray:
    return fit.decision(x)[..., 0]


def _r2(fit: LinearFit, x: np.ndarray, y: np.ndarray, classes: np.ndarray) -> np.ndarray | None:
    total = ((y - y.mean()) ** 2).sum()
    if total == 0:  # scikit-learn's special cases for constant targets: scored one at a time
        return None
    return 1.0 - ((y[None, :] - _prediction(fit, x)) ** 2).sum(axis=1) / total


def _neg_mse(fit: LinearFit, x: np.ndarray, y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return -((y[None, :] - _prediction(fit, x)) ** 2).mean(axis=1)


Metric = Callable[[LinearFit, np.ndarray, np.ndarray, np.ndarray], "np.ndarray | None"]

#: scikit-learn scorer name -> (vectorised metric, whether it scores classifiers).
VECTOR_METRICS: dict[str, tuple[Metric, bool]] = {
    "accuracy": (_accuracy, True),
    "balanced_accuracy": (_balanced_accuracy, True),
    "neg_log_loss": (_neg_log_loss, True),
    "r2": (_r2, False),
    "neg_mean_squared_error": (_neg_mse, False),
}


def vector_metric(name: str, classifier: bool) -> Metric | None:
    """The vectorised version of the scikit-learn scorer ``name`` for this kind of model, or None."""
    if not isinstance(name, str):
        raise InvalidParameterError(f"The 'name' argument of vector_metric must be a scorer name. Got {name!r:.60}.")
    check_bool(classifier, "classifier", "vector_metric")
    found = VECTOR_METRICS.get(name)
    if found is None or found[1] != classifier:
        return None
    return found[0]
