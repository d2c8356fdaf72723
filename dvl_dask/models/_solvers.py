"""Batched solvers: many convex fits as one numpy program (Newton steps with batched linear solves).

A batch is ``B`` coalitions of the same training matrix. Rows are given
either as one shared matrix ``x`` of shape ``(m, d)`` with 0/1 weights ``s``
of shape ``(B, m)`` (masks: the cost is ``m`` rows per coalition), or as
gathered rows ``x`` of shape ``(B, m, d)`` with ``s`` all ones (prefixes of
permutations in lockstep: the cost follows the prefix size).

Objectives are scikit-learn's, with the same parametrisation:

* logistic regression (``LogisticRegression(C, fit_intercept)`` with the
  lbfgs solver): ``0.5 |w|^2 + C sum_i s_i loss_i``, intercept not penalised;
  binary models have one coefficient vector (class ``classes_[1]`` positive),
  multinomial ones one row per class with intercepts summing to zero;
* ridge (``Ridge(alpha, fit_intercept)``): ``sum_i s_i (y_i - x_i w - b)^2 +
  alpha |w|^2``, solved in closed form on weighted, centred data.

Optionally the rows are standardised per coalition first, as
``make_pipeline(StandardScaler(), model)`` does (mean and population standard
deviation of the coalition's rows; near-constant features get scale 1 by
scikit-learn's rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LinearFit", "fit_logistic", "fit_ridge", "standardize"]

_EPS = np.finfo(np.float64).eps


@dataclass
class LinearFit:
    """Fitted coefficients of a batch: ``coef`` ``(B, K, d)``, ``intercept`` ``(B, K)`` in raw feature units.

    ``params`` are the solver's own parameters (standardised units, intercept
    last), used to warm-start the next batch; ``converged`` says which fits met
    the tolerance and ``n_iter`` how many Newton steps the batch took.
    """

    coef: np.ndarray
    intercept: np.ndarray
    params: np.ndarray
    converged: np.ndarray
    n_iter: int

    def decision(self, x: np.ndarray) -> np.ndarray:
        """Decision values ``x @ coef.T + intercept``: shape ``(B, t, K)``."""
        return np.einsum("td,bkd->btk", x, self.coef, optimize=True) + self.intercept[:, None, :]


def _weighted_rows(x: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and population variance of the rows of each coalition: ``(B, d)`` each."""
    total = s.sum(axis=1)[:, None]
    if x.ndim == 2:
        mean = (s @ x) / total
        var = np.einsum("bm,bmd->bd", s, (x[None, :, :] - mean[:, None, :]) ** 2, optimize=True) / total
    else:
        mean = np.einsum("bm,bmd->bd", s, x, optimize=True) / total
        var = np.einsum("bm,bmd->bd", s, (x - mean[:, None, :]) ** 2, optimize=True) / total
    return mean, var


def standardize(x: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows standardised per coalition, as ``StandardScaler().fit(rows)`` would: ``(xs, mean, scale)``.

    ``xs`` has shape ``(B, m, d)``; ``scale`` is 1 for near-constant features
    (scikit-learn's ``_is_constant_feature`` bound on the variance).
    """
    mean, var = _weighted_rows(x, s)
    n = s.sum(axis=1)[:, None]
    constant = var <= n * _EPS * var + (n * mean * _EPS) ** 2
    scale = np.where(constant, 1.0, np.sqrt(var))
    xs = (x[None] if x.ndim == 2 else x) - mean[:, None, :]
    return xs / scale[:, None, :], mean, scale


def _with_intercept(x: np.ndarray, fit_intercept: bool) -> np.ndarray:
    if not fit_intercept:
        return x
    ones = np.ones((*x.shape[:-1], 1), dtype=x.dtype)
    return np.concatenate([x, ones], axis=-1)


def _xt_v(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``sum_i v[b, i, ...] x[(b,) i, :]``: ``(B, m, K) -> (B, K, p)``."""
    return np.matmul(np.swapaxes(v, 1, 2), x)


def _gram(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``X^T diag(c_b) X`` for every batch element: ``(B, p, p)``."""
    if x.ndim == 2:
        return np.matmul(x.T[None, :, :] * c[:, None, :], x)
    return np.matmul(np.swapaxes(x, 1, 2) * c[:, None, :], x)


def _decision(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``(B, m, K)`` decision values of parameters ``w`` ``(B, K, p)``."""
    return np.matmul(x, np.swapaxes(w, 1, 2))


class _Logistic:
    """Objective, gradient and Hessian of L2-regularised logistic regression on one batch.

    ``K == 1``: binary (sigmoid of one decision value, ``y`` in {0, 1});
    ``K > 1``: multinomial (softmax, ``y`` one-hot ``(m, K)`` or ``(B, m, K)``).
    Parameters are ``(B, K, p)``; the last column is the intercept when fitted.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, s: np.ndarray, C: float, fit_intercept: bool, K: int) -> None:
        self.x, self.y, self.s, self.C, self.K = x, y, s, float(C), K
        p = x.shape[-1]
        self.penalty = np.ones(p)
        self.gauge = K > 1 and fit_intercept
        if fit_intercept:
            self.penalty[-1] = 0.0

    def subset(self, idx: np.ndarray) -> _Logistic:
        out = object.__new__(_Logistic)
        out.__dict__.update(self.__dict__)
        out.x = self.x if self.x.ndim == 2 else self.x[idx]
        out.y = self.y if self.y.ndim == self._y_shared_ndim() else self.y[idx]
        out.s = self.s[idx]
        return out

    def _y_shared_ndim(self) -> int:
        return 1 if self.K == 1 else 2

    def _y(self) -> np.ndarray:
        y = self.y
        if y.ndim == self._y_shared_ndim():
            y = y[None]
        return y if self.K > 1 else y[..., None]

    def value(self, w: np.ndarray) -> np.ndarray:
        z = _decision(self.x, w)
        if self.K == 1:
            y = self._y()[..., 0]
            loss = np.logaddexp(0.0, z[..., 0]) - y * z[..., 0]
        else:
            zmax = z.max(axis=-1, keepdims=True)
            lse = zmax[..., 0] + np.log(np.exp(z - zmax).sum(axis=-1))
            loss = lse - (self._y() * z).sum(axis=-1)
        f = self.C * (self.s * loss).sum(axis=1) + 0.5 * np.einsum("bkp,p->b", w * w, self.penalty)
        if self.gauge:
            f = f + 0.5 * w[:, :, -1].sum(axis=1) ** 2
        return f

    def _probabilities(self, w: np.ndarray) -> np.ndarray:
        z = _decision(self.x, w)
        if self.K == 1:
            return 0.5 * (1.0 + np.tanh(0.5 * z))  # the sigmoid, without overflow
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def gradient(self, w: np.ndarray, prob: np.ndarray | None = None) -> np.ndarray:
        prob = self._probabilities(w) if prob is None else prob
        residual = self.C * self.s[..., None] * (prob - self._y())
        g = _xt_v(self.x, residual) + w * self.penalty
        if self.gauge:
            g[:, :, -1] += w[:, :, -1].sum(axis=1, keepdims=True)
        return g

    def hessian(self, w: np.ndarray, prob: np.ndarray) -> np.ndarray:
        B, K, p = w.shape
        cs = self.C * self.s
        H = np.zeros((B, K, p, K, p))
        for k in range(K):
            for j in range(k, K):
                if K == 1:
                    c = cs * prob[..., 0] * (1.0 - prob[..., 0])
                else:
                    c = cs * prob[..., k] * ((1.0 if k == j else 0.0) - prob[..., j])
                block = _gram(self.x, c)
                H[:, k, :, j, :] = block
                if j != k:
                    H[:, j, :, k, :] = block
        idx = np.arange(p)
        for k in range(K):
            H[:, k, idx, k, idx] += self.penalty
        if self.gauge:
            H[:, :, -1, :, -1] += 1.0
        return H.reshape(B, K * p, K * p)


def _newton(problem: _Logistic, w0: np.ndarray, tol: float, max_iter: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Damped Newton on every batch element until ``max|grad| <= tol * max|grad at 0|``.

    Steps are batched linear solves of the (positive definite) Hessians; a
    backtracking line search (Armijo) keeps every step a descent step.
    Returns the parameters, which elements converged, and the iterations.
    """
    B = w0.shape[0]
    w = w0.copy()
    reference = np.abs(problem.gradient(np.zeros_like(w0))).reshape(B, -1).max(axis=1)
    target = tol * np.maximum(reference, _EPS)
    converged = np.zeros(B, dtype=bool)
    iterations = 0
    active = np.arange(B)
    sub = problem
    for iterations in range(max_iter + 1):
        wa = w[active]
        prob = sub._probabilities(wa)
        g = sub.gradient(wa, prob)
        done = np.abs(g).reshape(len(active), -1).max(axis=1) <= target[active]
        converged[active[done]] = True
        if done.all() or iterations == max_iter:
            break
        if done.any():  # drop the converged fits from the batch
            keep = np.flatnonzero(~done)
            active, sub = active[keep], sub.subset(keep)
            wa, g, prob = wa[keep], g[keep], prob[keep]
        H = sub.hessian(wa, prob)
        step = -np.linalg.solve(H, g.reshape(len(active), -1, 1))[..., 0].reshape(wa.shape)
        w[active] = wa + _line_search(sub, wa, g, step)[:, None, None] * step
    return w, converged, iterations


def _line_search(problem: _Logistic, w: np.ndarray, g: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Step lengths (1, 1/2, 1/4, ...) meeting Armijo's condition, per batch element."""
    f0 = problem.value(w)
    slope = (g * step).reshape(len(w), -1).sum(axis=1)
    t = np.ones(len(w))
    pending = np.arange(len(w))
    sub = problem
    for _ in range(40):
        f = sub.value(w[pending] + t[pending, None, None] * step[pending])
        # Rounding: near the optimum a decrease below the objective's precision counts as none.
        ok = f <= f0[pending] + 1e-4 * t[pending] * slope[pending] + 64 * _EPS * np.abs(f0[pending])
        if ok.all():
            break
        sub = sub.subset(np.flatnonzero(~ok))
        pending = pending[~ok]
        t[pending] *= 0.5
    return t


def _design(
    x: np.ndarray, s: np.ndarray, scale: bool, fit_intercept: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    if not scale:
        return _with_intercept(x, fit_intercept), None, None
    xs, mean, sd = standardize(x, s)
    return _with_intercept(xs, fit_intercept), mean, sd


def _to_raw(
    w: np.ndarray, fit_intercept: bool, mean: np.ndarray | None, sd: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients and intercepts in the units of the raw features (undoing the standardisation)."""
    coef = w[:, :, :-1] if fit_intercept else w
    intercept = w[:, :, -1].copy() if fit_intercept else np.zeros(w.shape[:2])
    if sd is not None and mean is not None:
        coef = coef / sd[:, None, :]
        intercept = intercept - np.einsum("bkd,bd->bk", coef, mean)
    return np.ascontiguousarray(coef), intercept


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    s: np.ndarray,
    *,
    n_classes: int,
    C: float,
    fit_intercept: bool,
    scale: bool = False,
    tol: float = 1e-10,
    max_iter: int = 100,
    init: np.ndarray | None = None,
) -> LinearFit:
    """Fit ``B`` logistic regressions at once.

    Parameters
    ----------
    x : array ``(m, d)`` or ``(B, m, d)``
        Shared training rows (with 0/1 weights ``s``) or gathered rows.
    y : array of int
        Class codes ``0..n_classes-1`` of the rows, ``(m,)`` or ``(B, m)``.
    s : array ``(B, m)``
        Row weights (1: the row is in the coalition).
    n_classes : int
        Number of classes of every coalition of the batch (2: binary model).
    C, fit_intercept
        As scikit-learn's ``LogisticRegression``.
    scale : bool
        Standardise each coalition's rows first (``StandardScaler`` in a pipeline).
    tol, max_iter
        Stop when ``max|grad| <= tol * max|grad at zero|``, or after ``max_iter`` Newton steps.
    init : array ``(B, K, p)``, optional
        Starting parameters (a warm start); zeros otherwise.
    """
    K = 1 if n_classes == 2 else n_classes
    design, mean, sd = _design(x, s, scale, fit_intercept)
    targets = y.astype(np.float64) if K == 1 else np.eye(K)[y]
    problem = _Logistic(design, targets, s.astype(np.float64), C, fit_intercept, K)
    B, p = s.shape[0], design.shape[-1]
    w0 = np.zeros((B, K, p)) if init is None else np.array(init, dtype=np.float64)
    w, converged, n_iter = _newton(problem, w0, tol, max_iter)
    coef, intercept = _to_raw(w, fit_intercept, mean, sd)
    return LinearFit(coef, intercept, w, converged, n_iter)


def fit_ridge(
    x: np.ndarray, y: np.ndarray, s: np.ndarray, *, alpha: float, fit_intercept: bool, scale: bool = False
) -> LinearFit:
    """Fit ``B`` ridge regressions at once, in closed form (one batched solve).

    As scikit-learn's ``Ridge`` (cholesky solver): with an intercept, the
    coalition's rows and targets are centred by their means and the intercept
    is ``mean(y) - mean(x) @ w``.
    """
    s = s.astype(np.float64)
    design, mean, sd = _design(x, s, scale, False)
    yb = y[None] if y.ndim == 1 else y
    if fit_intercept:
        x_mean, _ = _weighted_rows(design, s)
        y_mean = (s * yb).sum(axis=1) / s.sum(axis=1)
        design = (design[None] if design.ndim == 2 else design) - x_mean[:, None, :]
        yc = yb - y_mean[:, None]
    else:
        yc = np.broadcast_to(yb, s.shape)
    A = _gram(design, s) + alpha * np.eye(design.shape[-1])
    rhs = _xt_v(design, (s * yc)[..., None])[:, 0, :]
    w = np.linalg.solve(A, rhs[..., None])[..., 0]
    if fit_intercept:
        b = y_mean - np.einsum("bd,bd->b", x_mean, w)
        params = np.concatenate([w, b[:, None]], axis=1)[:, None, :]
    else:
        params = w[:, None, :]
    coef, intercept = _to_raw(params, fit_intercept, mean, sd)
    return LinearFit(coef, intercept, params, np.ones(len(s), dtype=bool), 1)
