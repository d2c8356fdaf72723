"""scikit-learn estimators whose fits can also run many coalitions at once.

:class:`LogisticRegression` and :class:`Ridge` are ordinary scikit-learn
estimators (``fit``, ``predict``, ``get_params``, clonable, picklable), so a
:class:`~dvl_dask.utility.Utility` built on them works everywhere one
coalition at a time. They also describe their objective to the batched
solvers (:meth:`batch_fit`), which :meth:`Utility.evaluate_batch` and the
block tasks of valuation methods use to fit a whole batch of coalitions as
one numpy program.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

from ..errors import ConvergenceWarning, InvalidModelError, InvalidParameterError
from ..validation import check_bool
from ._device import batch_device
from ._solvers import LinearFit, fit_least_squares, fit_logistic, fit_ridge

__all__ = ["BatchSpec", "LinearRegression", "LogisticRegression", "Ridge", "batch_spec"]


def _refuse_unsupported(owner: str, unsupported: dict[str, Any], supported: str) -> None:
    if unsupported:
        names = ", ".join(sorted(unsupported))
        raise InvalidParameterError(
            f"dvl_dask.models.{owner} does not support the parameter(s) {names}. Supported: {supported}. "
            f"To fix, drop them, or use scikit-learn's {owner} (one fit per coalition)."
        )


def _check_positive(value: Any, name: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) or not (
        np.isfinite(value) and value > 0
    ):
        raise InvalidParameterError(
            f"The '{name}' parameter of dvl_dask.models.{owner} must be a finite number > 0. Got {value!r}."
        )
    return float(value)


class LogisticRegression(ClassifierMixin, BaseEstimator):
    """L2-regularised logistic regression (binary or multinomial), fitted by Newton's method.

    The objective and parametrisation are scikit-learn's
    ``LogisticRegression(C=C, fit_intercept=fit_intercept)`` with its default
    solver (lbfgs): ``0.5 |w|^2 + C sum_i loss_i``, the intercept not
    penalised, one coefficient vector for two classes (``classes_[1]``
    positive), one per class (softmax, intercepts summing to zero) for more.
    The optimum is unique, so both fit the same model; they differ in how
    tightly they converge. This one takes damped Newton steps until
    ``max|gradient| <= tol * max|gradient at zero|`` (``tol=1e-10``), far
    tighter than scikit-learn's default ``tol=1e-4`` (lbfgs stops at about
    ``1e-7`` on standardised data even with ``tol=1e-12``). Its token differs
    from scikit-learn's class, so caches never mix the two.

    Parameters
    ----------
    C : float
        Inverse regularisation strength (> 0).
    fit_intercept : bool
        Fit an (unpenalised) intercept.
    tol : float
        Relative gradient tolerance of the Newton iterations.
    max_iter : int
        Most Newton steps; a fit that does not converge warns
        (:class:`~dvl_dask.errors.ConvergenceWarning`).

    Notes
    -----
    Other parameters of scikit-learn's class (penalty, class_weight, solver,
    ...) are refused with :class:`~dvl_dask.errors.InvalidParameterError`.
    Use it alone or after a ``StandardScaler()`` in a pipeline; both are
    batched (the scaler is fitted on each coalition's rows, as the pipeline
    does).

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> x, y = load_iris(return_X_y=True)
    >>> model = LogisticRegression(C=1.0).fit(x, y)
    >>> model.coef_.shape, float(model.score(x, y)) > 0.9
    ((3, 4), True)
    """

    _supported = "C, fit_intercept, tol, max_iter"

    def __init__(
        self, C: float = 1.0, *, fit_intercept: bool = True, tol: float = 1e-10, max_iter: int = 100, **unsupported: Any
    ) -> None:
        _refuse_unsupported("LogisticRegression", unsupported, self._supported)
        self.C = C
        self.fit_intercept = fit_intercept
        self.tol = tol
        self.max_iter = max_iter

    def _check(self) -> None:
        _check_positive(self.C, "C", "LogisticRegression")
        _check_positive(self.tol, "tol", "LogisticRegression")
        check_bool(self.fit_intercept, "fit_intercept", "dvl_dask.models.LogisticRegression")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int | np.integer) or self.max_iter < 1:
            raise InvalidParameterError(
                f"The 'max_iter' parameter of dvl_dask.models.LogisticRegression must be an int >= 1. "
                f"Got {self.max_iter!r}."
            )

    def batch_fit(self, x: np.ndarray, y: np.ndarray, s: np.ndarray, n_classes: int, *, scale: bool = False,
                  init: np.ndarray | None = None) -> LinearFit:
        """Fit a batch of coalitions (see :func:`dvl_dask.models._solvers.fit_logistic`); ``y`` holds class codes."""
        self._check()
        device = batch_device()
        return fit_logistic(x, y, s, n_classes=n_classes, C=float(self.C), fit_intercept=bool(self.fit_intercept),
                            scale=scale, tol=float(self.tol), max_iter=int(self.max_iter), init=init, device=device)

    def fit(self, X: Any, y: Any) -> LogisticRegression:
        """Fit on ``X`` (2-D numeric) and labels ``y`` (at least two classes)."""
        x = _as_matrix(X, "LogisticRegression")
        classes, codes = np.unique(np.asarray(y), return_inverse=True)
        if len(codes) != len(x):
            raise InvalidParameterError(
                f"dvl_dask.models.LogisticRegression.fit needs as many labels as rows. Got {len(codes)} labels "
                f"and {len(x)} rows."
            )
        if classes.size < 2:
            raise InvalidParameterError(
                "dvl_dask.models.LogisticRegression needs samples of at least 2 classes in the data; got "
                f"one class: {classes.tolist()}."
            )
        fitted = self.batch_fit(x, codes.reshape(-1), np.ones((1, len(x))), classes.size)
        if not fitted.converged.all():
            warnings.warn(
                f"dvl_dask.models.LogisticRegression did not converge in max_iter={self.max_iter} Newton steps "
                f"to tol={self.tol}. Increase max_iter.", ConvergenceWarning, stacklevel=2)
        self.classes_ = classes
        self.coef_ = fitted.coef[0]
        self.intercept_ = fitted.intercept[0]
        self.n_features_in_ = x.shape[1]
        self.n_iter_ = np.array([fitted.n_iter])
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Decision values: ``(n,)`` for two classes, ``(n, n_classes)`` otherwise."""
        z = _as_matrix(X, "LogisticRegression") @ self.coef_.T + self.intercept_
        return z[:, 0] if z.shape[1] == 1 else z

    def predict(self, X: Any) -> np.ndarray:
        """Labels: for two classes ``classes_[1]`` where the decision value is > 0 (0 gives ``classes_[0]``)."""
        z = self.decision_function(X)
        codes = (z > 0).astype(np.int64) if z.ndim == 1 else z.argmax(axis=1)
        return self.classes_[codes]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (sigmoid for two classes, softmax otherwise)."""
        z = self.decision_function(X)
        if z.ndim == 1:
            p = 0.5 * (1.0 + np.tanh(0.5 * z))
            return np.column_stack([1.0 - p, p])
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Logarithm of :meth:`predict_proba`."""
        return np.log(self.predict_proba(X))


class _BatchedRegressor(RegressorMixin, BaseEstimator):
    """``fit``/``predict`` of the batched linear regressors: one coalition of all rows through ``batch_fit``."""

    def batch_fit(self, x: np.ndarray, y: np.ndarray, s: np.ndarray, *, scale: bool = False,
                  init: np.ndarray | None = None) -> LinearFit:
        raise NotImplementedError

    def fit(self, X: Any, y: Any) -> Any:
        """Fit on ``X`` (2-D numeric) and 1-D numeric targets ``y``."""
        owner = type(self).__name__
        x = _as_matrix(X, owner)
        target = np.asarray(y, dtype=np.float64)
        if target.ndim != 1 or len(target) != len(x):
            raise InvalidParameterError(
                f"dvl_dask.models.{owner}.fit needs a 1-D target with one value per row. Got shape "
                f"{target.shape} for {len(x)} rows."
            )
        fitted = self.batch_fit(x, target, np.ones((1, len(x))))
        self.coef_ = fitted.coef[0, 0]
        self.intercept_ = float(fitted.intercept[0, 0])
        self.n_features_in_ = x.shape[1]
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predicted targets ``X @ coef_ + intercept_``."""
        return _as_matrix(X, type(self).__name__) @ self.coef_ + self.intercept_


class Ridge(_BatchedRegressor):
    """Ridge regression, scikit-learn's ``Ridge(alpha=alpha, fit_intercept=fit_intercept)``, fitted in closed form.

    Minimises ``|y - X w - b|^2 + alpha |w|^2`` (intercept not penalised, data
    centred by their means as scikit-learn does); the batched fit solves every
    coalition's normal equations at once. ``alpha`` must be > 0: a small
    value (e.g. ``1e-6``) is a lightly regularised linear regression whose
    solution is unique on coalitions with fewer points than features.

    Examples
    --------
    >>> x = np.arange(12.0).reshape(6, 2); y = x @ [1.0, -2.0] + 3.0
    >>> Ridge(alpha=1e-9).fit(x, y).predict(x[:2]).round(6).tolist()
    [1.0, -1.0]
    """

    _supported = "alpha, fit_intercept"

    def __init__(self, alpha: float = 1.0, *, fit_intercept: bool = True, **unsupported: Any) -> None:
        _refuse_unsupported("Ridge", unsupported, self._supported)
        self.alpha = alpha
        self.fit_intercept = fit_intercept

    def batch_fit(self, x: np.ndarray, y: np.ndarray, s: np.ndarray, n_classes: int = 0, *, scale: bool = False,
                  init: np.ndarray | None = None) -> LinearFit:
        """Fit a batch of coalitions (see :func:`dvl_dask.models._solvers.fit_ridge`); ``init`` is not needed."""
        alpha = _check_positive(self.alpha, "alpha", "Ridge")
        check_bool(self.fit_intercept, "fit_intercept", "dvl_dask.models.Ridge")
        device = batch_device()
        return fit_ridge(x, y, s, alpha=alpha, fit_intercept=bool(self.fit_intercept), scale=scale, device=device)


class LinearRegression(_BatchedRegressor):
    """Ordinary least squares, scikit-learn's ``LinearRegression(fit_intercept=..., tol=...)``, fitted by SVD.

    Unregularised: the rows are centred (with an intercept) and singular
    values below ``tol`` times the largest count as zero, exactly as
    scikit-learn's ``scipy.linalg.lstsq(X, y, cond=tol)``, so a coalition with
    fewer points than features gets the minimum-norm solution scikit-learn
    gives (predictions agree to about 1e-12 relative on breast_cancer and
    diabetes coalitions, rank-deficient ones included). The batched fit is
    one batched SVD of every coalition's rows.

    Examples
    --------
    >>> x = np.arange(12.0).reshape(6, 2) ** 1.5; y = x @ [1.0, -2.0] + 3.0
    >>> LinearRegression().fit(x, y).predict(x[:2]).round(6).tolist()
    [1.0, -4.563878]
    """

    _supported = "fit_intercept, tol"

    def __init__(self, *, fit_intercept: bool = True, tol: float = 1e-6, **unsupported: Any) -> None:
        _refuse_unsupported("LinearRegression", unsupported, self._supported)
        self.fit_intercept = fit_intercept
        self.tol = tol

    def batch_fit(self, x: np.ndarray, y: np.ndarray, s: np.ndarray, n_classes: int = 0, *, scale: bool = False,
                  init: np.ndarray | None = None) -> LinearFit:
        """Fit a batch of coalitions (see :func:`dvl_dask.models._solvers.fit_least_squares`)."""
        check_bool(self.fit_intercept, "fit_intercept", "dvl_dask.models.LinearRegression")
        tol = self.tol
        if isinstance(tol, bool) or not isinstance(tol, int | float | np.integer | np.floating) or not (
            np.isfinite(tol) and tol >= 0
        ):
            raise InvalidParameterError(
                f"The 'tol' parameter of dvl_dask.models.LinearRegression must be a finite number >= 0. Got {tol!r}."
            )
        device = batch_device()
        return fit_least_squares(x, y, s, fit_intercept=bool(self.fit_intercept), scale=scale, rcond=float(tol),
                                 device=device)


def _as_matrix(X: Any, owner: str) -> np.ndarray:
    x = np.asarray(X, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise InvalidParameterError(
            f"dvl_dask.models.{owner} needs a finite 2-D numeric array of features. Got shape {x.shape}"
            + ("" if x.ndim != 2 else " with NaN or inf") + "."
        )
    return x


class BatchSpec:
    """How a utility's model fits in batches: the batched estimator and whether a StandardScaler precedes it."""

    def __init__(self, estimator: LogisticRegression | Ridge | LinearRegression, scale: bool) -> None:
        if not isinstance(estimator, LogisticRegression | Ridge | LinearRegression):
            raise InvalidModelError(
                "The 'estimator' argument of BatchSpec must be a dvl_dask.models.LogisticRegression, Ridge or "
                "LinearRegression. "
                f"Got {type(estimator).__name__}."
            )
        self.estimator = estimator
        self.scale = check_bool(scale, "scale", "BatchSpec")
        self.is_classifier = isinstance(estimator, LogisticRegression)

    def fit(self, x: np.ndarray, y: np.ndarray, s: np.ndarray, n_classes: int = 0,
            init: np.ndarray | None = None) -> LinearFit:
        """Fit a batch of coalitions with the estimator's objective (and per-coalition scaling)."""
        return self.estimator.batch_fit(x, y, s, n_classes, scale=self.scale, init=init)


def batch_spec(model: Any) -> BatchSpec | None:
    """The batch description of ``model``, or None if it has no batched fit.

    Recognised: :class:`LogisticRegression`, :class:`Ridge`, :class:`LinearRegression`, and a scikit-learn
    ``Pipeline`` of a default ``StandardScaler()`` followed by one of them.
    Anything else (including scikit-learn's own classes) is fitted one
    coalition at a time. A class (not an instance) raises :class:`~dvl_dask.errors.InvalidModelError`.
    """
    if isinstance(model, type):
        raise InvalidModelError(
            f"The 'model' argument of batch_spec must be a model instance. Got the class {model.__name__}: "
            f"pass {model.__name__}(...)."
        )
    if isinstance(model, LogisticRegression | Ridge | LinearRegression):
        return BatchSpec(model, scale=False)
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if isinstance(model, Pipeline) and len(model.steps) == 2:
        (_, first), (_, last) = model.steps
        if isinstance(last, LogisticRegression | Ridge | LinearRegression) and type(first) is StandardScaler:
            if first.with_mean and first.with_std:
                return BatchSpec(last, scale=True)
    return None


def check_batchable(model: Any) -> BatchSpec:
    """:func:`batch_spec`, or :class:`~dvl_dask.errors.InvalidModelError` naming what is supported."""
    spec = batch_spec(model)
    if spec is None:
        raise InvalidModelError(
            f"The 'model' argument ({type(model).__name__}) has no batched fit. Supported: "
            "dvl_dask.models.LogisticRegression, Ridge and LinearRegression, and "
            "make_pipeline(StandardScaler(), <one of them>)."
        )
    return spec
