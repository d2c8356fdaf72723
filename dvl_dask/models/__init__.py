"""Batched convex models: many coalitions fitted at once, each to a stated tolerance.

:class:`LogisticRegression` (binary and multinomial), :class:`Ridge` and
:class:`LinearRegression` are
scikit-learn estimators with scikit-learn's objectives and parametrisation.
A :class:`~dvl_dask.utility.Utility` built on one of them (alone or after a
``StandardScaler`` in a pipeline) fits whole batches of coalitions as one
numpy program, or torch program on the device ``dask.config``
``dvl_dask.models.device`` names (:meth:`Utility.evaluate_batch`), which the block tasks of
valuation methods use. See ``docs/batched-models.md``.
"""

from ._convert import to_batched
from ._device import SUPPORTED_DEVICES, available_devices, batch_device
from ._estimators import BatchSpec, LinearRegression, LogisticRegression, Ridge, batch_spec, check_batchable
from ._scoring import VECTOR_METRICS, vector_metric
from ._solvers import LinearFit, fit_least_squares, fit_logistic, fit_ridge, standardize

__all__ = [
    "SUPPORTED_DEVICES",
    "VECTOR_METRICS",
    "BatchSpec",
    "LinearFit",
    "LinearRegression",
    "LogisticRegression",
    "Ridge",
    "available_devices",
    "batch_device",
    "batch_spec",
    "check_batchable",
    "fit_least_squares",
    "fit_logistic",
    "fit_ridge",
    "standardize",
    "to_batched",
    "vector_metric",
]
