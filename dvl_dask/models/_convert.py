"""scikit-learn's convex models converted to their batched equivalents (``Utility(..., batched=True)``).

A scikit-learn ``LogisticRegression``, ``Ridge`` or ``LinearRegression``
(alone or after a default ``StandardScaler`` in a ``Pipeline``) whose
parameters define the objective of :class:`~dvl_dask.models.LogisticRegression`,
:class:`~dvl_dask.models.Ridge` or :class:`~dvl_dask.models.LinearRegression`
becomes that model. Parameters that only steer scikit-learn's solver towards
the same optimum (``solver``, ``tol``, ``max_iter``, ``warm_start``, ...) are
dropped: the batched fit converges to its own, tighter, tolerance. Parameters
that change the optimum (``class_weight``, an L1 penalty, ``positive``, ...)
are refused, naming what is supported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidModelError, InvalidParameterError
from ._estimators import LinearRegression, LogisticRegression, Ridge

__all__ = ["to_batched"]

#: Solvers of scikit-learn's LogisticRegression that minimise the objective of the batched model
#: (liblinear penalises the intercept: another objective).
_LOGISTIC_SOLVERS = ("lbfgs", "newton-cg", "newton-cholesky", "sag", "saga")
_LOGISTIC_SUPPORTED = (
    "C (finite, > 0), fit_intercept, an L2 penalty (penalty 'l2' or left at its default, l1_ratio 0 or None), "
    f"solver in {_LOGISTIC_SOLVERS}, class_weight=None, dual=False; tol, max_iter, warm_start, n_jobs, verbose, "
    "random_state and intercept_scaling are accepted and dropped (they do not change the optimum)"
)
_LEAST_SQUARES_SUPPORTED = (
    "fit_intercept, tol (the singular value cut-off of its least-squares solve, kept), positive=False; copy_X and "
    "n_jobs are accepted and dropped"
)
_RIDGE_SUPPORTED = (
    "alpha (one finite number > 0), fit_intercept, positive=False; solver, tol, max_iter, copy_X and "
    "random_state are accepted and dropped (they do not change the optimum)"
)


def _refuse(owner: str, problems: list[str], supported: str) -> None:
    if problems:
        raise InvalidParameterError(
            f"scikit-learn's {owner} with {'; '.join(problems)} has no batched equivalent, so "
            f"Utility(..., batched=True) cannot convert it. Supported: {supported}. To fix, change those "
            "parameters, or leave batched unset (one scikit-learn fit per coalition)."
        )


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)


def _logistic(model: Any) -> LogisticRegression:
    p = model.get_params(deep=False)
    problems = []
    C = p.get("C")
    if not (_is_number(C) and np.isfinite(C) and C > 0):
        problems.append(f"C={C!r} (no L2 penalty of finite strength)")
    penalty = p.get("penalty", "l2")
    if penalty not in ("l2", "deprecated"):
        problems.append(f"penalty={penalty!r}")
    l1_ratio = p.get("l1_ratio")
    if l1_ratio is not None and not (_is_number(l1_ratio) and l1_ratio == 0):
        problems.append(f"l1_ratio={l1_ratio!r}")
    if p.get("solver", "lbfgs") not in _LOGISTIC_SOLVERS:
        problems.append(f"solver={p.get('solver')!r}")
    if p.get("class_weight") is not None:
        problems.append(f"class_weight={p.get('class_weight')!r}")
    if p.get("dual", False):
        problems.append("dual=True")
    known = {"C", "penalty", "l1_ratio", "solver", "class_weight", "dual", "fit_intercept", "tol", "max_iter",
             "warm_start", "n_jobs", "verbose", "random_state", "intercept_scaling", "multi_class"}
    if p.get("multi_class", "deprecated") not in ("deprecated", "auto", "multinomial"):
        problems.append(f"multi_class={p.get('multi_class')!r}")
    problems += [f"the unknown parameter {name}={p[name]!r}" for name in sorted(set(p) - known)]
    _refuse("LogisticRegression", problems, _LOGISTIC_SUPPORTED)
    return LogisticRegression(C=float(C), fit_intercept=bool(p.get("fit_intercept", True)))


def _ridge(model: Any) -> Ridge:
    p = model.get_params(deep=False)
    problems = []
    alpha = p.get("alpha")
    if not (_is_number(alpha) and np.isfinite(alpha) and alpha > 0):
        problems.append(f"alpha={alpha!r}")
    if p.get("positive", False):
        problems.append("positive=True")
    known = {"alpha", "positive", "fit_intercept", "solver", "tol", "max_iter", "copy_X", "random_state"}
    problems += [f"the unknown parameter {name}={p[name]!r}" for name in sorted(set(p) - known)]
    _refuse("Ridge", problems, _RIDGE_SUPPORTED)
    return Ridge(alpha=float(alpha), fit_intercept=bool(p.get("fit_intercept", True)))


def _least_squares(model: Any) -> LinearRegression:
    p = model.get_params(deep=False)
    problems = []
    if p.get("positive", False):
        problems.append("positive=True")
    tol = p.get("tol", 1e-6)
    if not (_is_number(tol) and np.isfinite(tol) and tol >= 0):
        problems.append(f"tol={tol!r}")
    known = {"positive", "fit_intercept", "tol", "copy_X", "n_jobs"}
    problems += [f"the unknown parameter {name}={p[name]!r}" for name in sorted(set(p) - known)]
    _refuse("LinearRegression", problems, _LEAST_SQUARES_SUPPORTED)
    return LinearRegression(fit_intercept=bool(p.get("fit_intercept", True)), tol=float(tol))


def _convert_estimator(model: Any) -> Any:
    from sklearn.linear_model import LinearRegression as SkLinearRegression
    from sklearn.linear_model import LogisticRegression as SkLogisticRegression
    from sklearn.linear_model import Ridge as SkRidge

    if isinstance(model, LogisticRegression | Ridge | LinearRegression):
        return model
    if type(model) is SkLogisticRegression:
        return _logistic(model)
    if type(model) is SkRidge:
        return _ridge(model)
    if type(model) is SkLinearRegression:
        return _least_squares(model)
    return None


def to_batched(model: Any) -> Any:
    """The batched equivalent of ``model``: a :mod:`dvl_dask.models` model, or a pipeline ending in one.

    Parameters
    ----------
    model : estimator
        scikit-learn's ``LogisticRegression``, ``Ridge`` or ``LinearRegression``, or a ``Pipeline``
        of a default ``StandardScaler()`` and one of them (models of
        :mod:`dvl_dask.models` are returned as they are).

    Returns
    -------
    estimator
        A new, unfitted model; ``model`` is not changed.

    Raises
    ------
    InvalidParameterError
        If the model is supported but a parameter changes its optimum (the
        message names the supported parameters).
    InvalidModelError
        If the model has no batched equivalent.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression as SkLogisticRegression
    >>> to_batched(SkLogisticRegression(C=0.5, max_iter=1000))
    LogisticRegression(C=0.5)
    """
    from sklearn.base import clone
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    converted = _convert_estimator(model)
    if converted is not None:
        return converted if converted is not model else clone(model)
    if type(model) is Pipeline and len(model.steps) == 2:
        (first_name, first), (last_name, last) = model.steps
        last_converted = _convert_estimator(last)
        if last_converted is not None:
            if type(first) is not StandardScaler or not (first.with_mean and first.with_std):
                raise InvalidModelError(
                    f"Utility(..., batched=True) converts a pipeline only after a default StandardScaler(); got "
                    f"{first!r} before {type(last).__name__}. To fix, use StandardScaler() or leave batched unset."
                )
            return Pipeline([(first_name, clone(first)), (last_name, last_converted)])
    raise InvalidModelError(
        f"Utility(..., batched=True) has no batched equivalent for {type(model).__name__}. Supported: "
        "scikit-learn's LogisticRegression, Ridge and LinearRegression, the same of dvl_dask.models, and a "
        "Pipeline of StandardScaler() and one of them. To fix, use one of them or leave batched unset."
    )
