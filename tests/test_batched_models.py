"""Batched convex models (dvl_dask.models) equal tightly converged scikit-learn fits, coalition by coalition.

Ground truth is scikit-learn fitted on each coalition with ``tol=1e-12,
max_iter=10_000``. Its ``newton-cholesky`` solver converges to the optimum
(gradient ~1e-13); its default lbfgs stops near a gradient of 1e-7 even with
``tol=1e-12`` (it stops on the change of the objective), so against lbfgs
only the coefficients are compared, to 1e-6 relative.
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.linear_model import LogisticRegression as SkLogisticRegression
from sklearn.linear_model import Ridge as SkRidge
from sklearn.metrics import get_scorer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import dvl_dask
from dvl_dask import Dataset, Utility
from dvl_dask.data import GroupedDataset
from dvl_dask.errors import InvalidParameterError
from dvl_dask.keys import model_token
from dvl_dask.models import LogisticRegression, Ridge, fit_logistic, fit_ridge


def _split(loader, n_train, n_test, seed=0, scale=True):
    x, y = loader(return_X_y=True)
    if scale:
        x = StandardScaler().fit_transform(x)
    order = np.random.default_rng(seed).permutation(len(y))[: n_train + n_test]
    x, y = x[order], y[order]
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def _coalitions(rng, n_coalitions, n, low=0.1):
    """Masks of random coalitions whose sizes spread from small to all players."""
    return rng.random((n_coalitions, n)) < rng.uniform(low, 1.0, (n_coalitions, 1))


def _tight(model_cls=SkLogisticRegression, solver="newton-cholesky", **params):
    return model_cls(tol=1e-12, max_iter=10_000, solver=solver, **params)


def _relative(a, b):
    return np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(b).max(), 1e-300)


def _sklearn_scores(model, x, y, xt, yt, masks, scoring, default):
    scorer = get_scorer(scoring)
    out = []
    for mask in masks:
        if not mask.any() or (hasattr(model, "predict_proba") and np.unique(y[mask]).size < 2):
            out.append(default)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = clone(model).fit(x[mask], y[mask])
        try:
            out.append(scorer(fitted, xt, yt))
        except ValueError:  # log-loss of a model without every test class: the utility's default score
            out.append(default)
    return np.array(out)


# -- coefficients -------------------------------------------------------------------------------
@pytest.mark.parametrize(("loader", "n_train"), [(load_breast_cancer, 100), (load_wine, 60)])
def test_logistic_coefficients_equal_tight_sklearn(loader, n_train):
    x, y, _, _ = _split(loader, n_train, 0)
    masks = _coalitions(np.random.default_rng(1), 40, n_train, low=0.3)
    k = np.unique(y).size
    full = np.array([np.unique(y[m]).size == k for m in masks])
    fit = fit_logistic(x, y, masks[full].astype(float), n_classes=k, C=0.7, fit_intercept=True)
    assert fit.converged.all()
    for j, mask in enumerate(masks[full]):
        ref = _tight(C=0.7).fit(x[mask], y[mask])
        assert _relative(fit.coef[j], ref.coef_) < 1e-6
        # Multinomial intercepts are defined up to a constant: both sum to zero.
        assert _relative(fit.intercept[j], ref.intercept_) < 1e-6


@pytest.mark.slow  # lbfgs at tol=1e-12 takes ~0.1-1 s a fit
def test_logistic_coefficients_equal_lbfgs_to_1e_6():
    x, y, _, _ = _split(load_breast_cancer, 100, 0)
    masks = _coalitions(np.random.default_rng(2), 12, 100, low=0.4)
    fit = fit_logistic(x, y, masks.astype(float), n_classes=2, C=1.0, fit_intercept=True)
    for j, mask in enumerate(masks):
        ref = _tight(solver="lbfgs").fit(x[mask], y[mask])
        assert _relative(fit.coef[j], ref.coef_) < 1e-6


@pytest.mark.parametrize(("loader", "fit_intercept"), [(load_breast_cancer, True), (load_wine, True),
                                                     (load_breast_cancer, False)])
def test_pipeline_scaler_is_fitted_per_coalition(loader, fit_intercept):
    x, y, _, _ = _split(loader, 80, 0, scale=False)
    k = np.unique(y).size
    masks = _coalitions(np.random.default_rng(3), 10, 80, low=0.4)
    masks = masks[[np.unique(y[m]).size == k for m in masks]]
    fit = fit_logistic(x, y, masks.astype(float), n_classes=k, C=1.0, fit_intercept=fit_intercept, scale=True)
    gathered = fit_logistic(x[masks[0]][None], y[masks[0]][None], np.ones((1, masks[0].sum())), n_classes=k,
                            C=1.0, fit_intercept=fit_intercept, scale=True)
    np.testing.assert_allclose(gathered.coef[0], fit.coef[0], rtol=1e-7, atol=1e-12)
    for j, mask in enumerate(masks):
        ref = make_pipeline(StandardScaler(), _tight(fit_intercept=fit_intercept)).fit(x[mask], y[mask])
        scaler, model = ref[0], ref[1]
        coef = model.coef_ / scaler.scale_  # back in raw units
        assert _relative(fit.coef[j], coef) < 1e-6
        assert _relative(fit.intercept[j], model.intercept_ - coef @ scaler.mean_) < 1e-6


def test_ridge_coefficients_equal_sklearn_gathered_and_masked():
    x, y, _, _ = _split(load_diabetes, 80, 0)
    masks = _coalitions(np.random.default_rng(4), 20, 80)
    fit = fit_ridge(x, y, masks.astype(float), alpha=0.5, fit_intercept=True)
    rows = np.flatnonzero(masks[0])
    gathered = fit_ridge(x[rows][None], y[rows][None], np.ones((1, rows.size)), alpha=0.5, fit_intercept=True)
    for j, mask in enumerate(masks):
        ref = SkRidge(alpha=0.5).fit(x[mask], y[mask])
        assert _relative(fit.coef[j, 0], ref.coef_) < 1e-9
        assert abs(fit.intercept[j, 0] - ref.intercept_) < 1e-9 * max(1.0, abs(ref.intercept_))
    np.testing.assert_allclose(gathered.coef[0], fit.coef[0], rtol=1e-10)


def test_logistic_scaler_with_a_feature_constant_in_the_coalition_behaves_as_sklearn():
    # A binary feature that is constant in a coalition has scale 1 in scikit-learn's StandardScaler; its
    # variance from the coalition's moments is ~1e-16 (not 0) for some sizes, so those coalitions take the
    # two-pass statistics.
    rng = np.random.default_rng(16)
    x = np.column_stack([rng.normal(size=60), np.where(rng.random(60) < 0.5, 0.3, 1.7), rng.normal(size=60) + 5.0])
    y = (x[:, 0] + 0.5 * rng.normal(size=60) > 0).astype(int)
    rows = np.flatnonzero(x[:, 1] == 0.3)
    masks = np.zeros((12, 60), dtype=bool)
    for k in range(12):  # the first k + 4 rows with the value 0.3, both classes present
        masks[k, rows[: k + 4]] = True
        masks[k, rows[np.flatnonzero(y[rows] != y[rows[0]])[0]]] = True
    fit = fit_logistic(x, y, masks.astype(float), n_classes=2, C=1.0, fit_intercept=True, scale=True)
    assert fit.converged.all()
    for j, mask in enumerate(masks):
        ref = make_pipeline(StandardScaler(), _tight()).fit(x[mask], y[mask])
        scaler, model = ref[0], ref[1]
        assert scaler.scale_[1] == 1.0
        coef = model.coef_ / scaler.scale_
        np.testing.assert_allclose(fit.coef[j], coef, rtol=1e-6, atol=1e-9)
        assert abs(fit.intercept[j, 0] - (model.intercept_[0] - coef[0] @ scaler.mean_)) < 1e-6


def test_cholesky_solve_batched_equals_lu_and_solves_indefinite_matrices_by_lu():
    from dvl_dask.models._solvers import cholesky_solve

    rng = np.random.default_rng(17)
    a = rng.normal(size=(80, 7, 7))
    A = a @ np.swapaxes(a, 1, 2) + 0.1 * np.eye(7)
    A[5] = np.diag([1.0, -2.0, 3.0, 1.0, 1.0, 1.0, 1.0])  # symmetric, non-singular, not positive definite
    b = rng.normal(size=(80, 7))
    want = np.linalg.solve(A, b[..., None])[..., 0]
    np.testing.assert_allclose(cholesky_solve(A, b), want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(cholesky_solve(A[:10], b[:10]), want[:10], rtol=1e-9, atol=1e-12)  # small: LAPACK


def test_logistic_newton_steps_the_batched_cholesky_rejects_are_solved_by_lu(monkeypatch):
    from dvl_dask.models import _solvers

    x, y, _, _ = _split(load_breast_cancer, 60, 0, scale=False)
    masks = _coalitions(np.random.default_rng(18), 64, 60, low=0.5)
    masks = masks[[np.unique(y[m]).size == 2 for m in masks]]
    want = fit_logistic(x, y, masks.astype(float), n_classes=2, C=1.0, fit_intercept=True, scale=True)
    original = _solvers._cholesky_columns
    calls = []

    def rejecting(A, b):  # as if every third matrix had a non-positive pivot
        calls.append(A.shape[-1])
        solution, ok = original(A, b)
        ok[::3] = False
        return solution, ok

    monkeypatch.setattr(_solvers, "_cholesky_columns", rejecting)
    got = fit_logistic(x, y, masks.astype(float), n_classes=2, C=1.0, fit_intercept=True, scale=True)
    assert calls and got.converged.all()
    np.testing.assert_allclose(got.coef, want.coef, rtol=1e-8, atol=1e-10)


# -- ridge from moments: centring and scaling without cancellation -----------------------------
def _offset_problem(n=60, d=5, offset=1e4, seed=11):
    """Features with means ~``offset`` and spread ~1; a linear target with its own large offset."""
    rng = np.random.default_rng(seed)
    x = offset * (1.0 + rng.random(d)) + rng.normal(size=(n, d))
    y = x @ rng.normal(size=d) + 3.0 * offset + rng.normal(size=n)
    return x, y


@pytest.mark.parametrize("scale", [False, True])
def test_ridge_keeps_the_digits_of_large_offset_features(scale):
    # Moments about zero would lose ~8 digits here (E x^2 ~ 1e8 against a variance ~1): the coefficients
    # then differ from scikit-learn's by up to ~3e-7 relative; about a global centre they agree to 1e-10.
    x, y = _offset_problem()
    masks = _coalitions(np.random.default_rng(12), 25, len(y), low=0.2)
    masks[:, :2] = True  # at least two rows, so that no feature is constant
    fit = fit_ridge(x, y, masks.astype(float), alpha=0.5, fit_intercept=True, scale=scale)
    for j, mask in enumerate(masks):
        if scale:
            ref = make_pipeline(StandardScaler(), SkRidge(alpha=0.5)).fit(x[mask], y[mask])
            coef = ref[1].coef_ / ref[0].scale_
            intercept = ref[1].intercept_ - coef @ ref[0].mean_
        else:
            ref = SkRidge(alpha=0.5).fit(x[mask], y[mask])
            coef, intercept = ref.coef_, ref.intercept_
        assert _relative(fit.coef[j, 0], coef) < 1e-10
        assert abs(fit.intercept[j, 0] - intercept) < 1e-10 * abs(intercept)


def test_ridge_scaler_constant_features_and_single_rows_behave_as_sklearn():
    # scikit-learn's StandardScaler gives a feature constant in the coalition scale 1: a binary feature in
    # small coalitions, a column constant everywhere, every feature of a one-row coalition.
    rng = np.random.default_rng(13)
    x = np.column_stack([rng.normal(size=40) + 50.0, np.where(rng.random(40) < 0.5, 0.3, 1.7), np.full(40, 7.3),
                         rng.normal(size=40) * 1e-3 + 1e3])
    y = x @ [1.0, -2.0, 0.5, 3.0] + rng.normal(size=40)
    masks = _coalitions(rng, 30, 40, low=0.02)
    masks[0] = False
    masks[0, 5] = True  # one row
    for k in range(1, 9):  # the binary feature constant (moments of 7 rows leave it a variance of 2e-16)
        masks[k] = False
        masks[k, np.flatnonzero(x[:, 1] == 0.3)[: k + 1]] = True
    masks = masks[masks.any(axis=1)]
    for fit_intercept in (True, False):
        fit = fit_ridge(x, y, masks.astype(float), alpha=1.0, fit_intercept=fit_intercept, scale=True)
        for j, mask in enumerate(masks):
            ref = make_pipeline(StandardScaler(), SkRidge(alpha=1.0, fit_intercept=fit_intercept))
            # Without an intercept the same fit on targets centred on the coalition (scaled columns sum to
            # zero, so X^T y = X^T (y - mean y)): scikit-learn's own X^T y rounds to ~1e-6 on these targets
            # (mean ~3,000, the last feature's spread 1e-6 of its mean); the moments do not.
            ref.fit(x[mask], y[mask] - (0.0 if fit_intercept else y[mask].mean()))
            want = ref.predict(x)
            np.testing.assert_allclose(x @ fit.coef[j, 0] + fit.intercept[j, 0], want, rtol=0,
                                       atol=1e-9 * np.abs(want).max())


def test_ridge_multiplicities_weigh_as_duplicated_rows():
    x, y = _offset_problem(n=30, d=4, offset=1e3, seed=14)
    counts = np.random.default_rng(15).integers(0, 4, size=(6, 30))
    for scale in (False, True):
        for fit_intercept in (True, False):
            fit = fit_ridge(x, y, counts.astype(float), alpha=0.3, fit_intercept=fit_intercept, scale=scale)
            for j, c in enumerate(counts):
                rows = np.repeat(np.arange(30), c)
                ridge = SkRidge(alpha=0.3, fit_intercept=fit_intercept)
                ref = make_pipeline(StandardScaler(), ridge) if scale else ridge
                # (targets centred without an intercept after a scaler: see the test above)
                ref.fit(x[rows], y[rows] - (y[rows].mean() if scale and not fit_intercept else 0.0))
                want = ref.predict(x)
                np.testing.assert_allclose(x @ fit.coef[j, 0] + fit.intercept[j, 0], want, rtol=0,
                                           atol=1e-9 * np.abs(want).max())


def test_warm_start_reaches_the_same_optimum():
    x, y, _, _ = _split(load_wine, 60, 0)
    masks = np.ones((3, 60))
    cold = fit_logistic(x, y, masks, n_classes=3, C=1.0, fit_intercept=True)
    warm = fit_logistic(x, y, masks, n_classes=3, C=1.0, fit_intercept=True, init=cold.params * 0.9)
    assert warm.n_iter < cold.n_iter
    np.testing.assert_allclose(warm.coef, cold.coef, rtol=1e-8, atol=1e-10)


# -- the estimators -----------------------------------------------------------------------------
def test_estimators_refuse_unsupported_parameters_naming_the_supported_ones():
    with pytest.raises(InvalidParameterError, match=r"penalty.*Supported: C, fit_intercept, tol, max_iter"):
        LogisticRegression(penalty="l1")
    with pytest.raises(InvalidParameterError, match=r"solver.*Supported: alpha, fit_intercept"):
        Ridge(solver="svd")
    with pytest.raises(InvalidParameterError, match=r"'C'.*> 0"):
        LogisticRegression(C=0.0).fit(np.eye(3), [0, 1, 1])
    with pytest.raises(InvalidParameterError, match=r"'alpha'.*> 0"):
        Ridge(alpha=0.0).fit(np.eye(3), [0.0, 1.0, 1.0])
    with pytest.raises(InvalidParameterError, match="at least 2 classes"):
        LogisticRegression().fit(np.eye(3), [1, 1, 1])


def test_estimators_are_sklearn_estimators_with_their_own_token():
    model = LogisticRegression(C=2.0)
    assert clone(model).get_params() == {"C": 2.0, "fit_intercept": True, "tol": 1e-10, "max_iter": 100}
    assert model_token(model) != model_token(SkLogisticRegression(C=2.0))
    assert model_token(model) != model_token(LogisticRegression(C=1.0))
    assert model_token(model) == model_token(pickle.loads(pickle.dumps(model)))
    x, y, xt, _ = _split(load_wine, 60, 30)
    fitted = model.fit(x, y)
    ref = _tight(C=2.0).fit(x, y)
    np.testing.assert_allclose(fitted.predict_proba(xt), ref.predict_proba(xt), rtol=1e-7, atol=1e-12)
    assert (fitted.predict(xt) == ref.predict(xt)).all()


# -- Utility.evaluate_batch -----------------------------------------------------------------------
@pytest.mark.parametrize("scoring", ["accuracy", "neg_log_loss", "balanced_accuracy"])
def test_batch_scores_equal_sklearn_binary(scoring):
    x, y, xt, yt = _split(load_breast_cancer, 100, 200)
    u = Utility(LogisticRegression(), Dataset(x, y, xt, yt), scoring, default_score=-5.0)
    assert u.batched
    masks = _coalitions(np.random.default_rng(5), 40, 100, low=0.02)
    masks[0] = False  # empty: the default score
    masks[1] = False
    masks[1, np.flatnonzero(y == 1)[:3]] = True  # one class: the default score
    got = u.evaluate_batch(masks)
    want = _sklearn_scores(_tight(), x, y, xt, yt, masks, scoring, -5.0)
    assert got[0] == got[1] == -5.0
    if scoring == "neg_log_loss":
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-8)
    else:  # a test point on the decision boundary could flip: at most one coalition may differ
        assert (np.abs(got - want) < 1e-12).sum() >= len(masks) - 1


def test_batch_scores_multiclass_coalitions_with_missing_classes():
    x, y, xt, yt = _split(load_wine, 60, 60)
    rng = np.random.default_rng(6)
    masks = _coalitions(rng, 40, 60, low=0.03)
    masks[0] = (y != 2) & (rng.random(60) < 0.6)  # two of the three classes: a binary model
    masks[1] = (y != 0) & (rng.random(60) < 0.6)
    for scoring in ("accuracy", "neg_log_loss"):
        u = Utility(LogisticRegression(C=0.5), Dataset(x, y, xt, yt), scoring, default_score=-5.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # log-loss on two of three classes fails: default score, warned
            got = u.evaluate_batch(masks)
            one_by_one = np.array([u(m) for m in masks])
        want = _sklearn_scores(_tight(C=0.5), x, y, xt, yt, masks, scoring, -5.0)
        classes = np.array([np.unique(y[m]).size for m in masks])
        assert {2, 3} <= set(classes.tolist())  # coalitions with 2 and 3 classes are both tested
        np.testing.assert_allclose(got, one_by_one, atol=1e-8)
        both = classes == 3
        np.testing.assert_allclose(got[both], want[both], atol=1e-8)


@pytest.mark.parametrize("scoring", ["r2", "neg_mean_squared_error"])
def test_batch_scores_equal_sklearn_ridge_pipeline(scoring):
    x, y, xt, yt = _split(load_diabetes, 80, 100, scale=False)
    u = Utility(make_pipeline(StandardScaler(), Ridge(alpha=2.0)), Dataset(x, y, xt, yt), scoring,
                default_score=0.0)
    assert u.batched
    masks = _coalitions(np.random.default_rng(7), 30, 80)
    masks[0] = False
    got = u.evaluate_batch(masks)
    want = _sklearn_scores(make_pipeline(StandardScaler(), SkRidge(alpha=2.0)), x, y, xt, yt, masks, scoring, 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-8)


def test_other_scorers_and_models_are_evaluated_one_at_a_time():
    x, y, xt, yt = _split(load_breast_cancer, 40, 40)
    data = Dataset(x, y, xt, yt)
    masks = _coalitions(np.random.default_rng(8), 5, 40, low=0.5)
    for u in (Utility(LogisticRegression(), data, "f1"), Utility(SkLogisticRegression(), data, "accuracy")):
        assert not u.batched
        np.testing.assert_array_equal(u.evaluate_batch(masks), [u(m) for m in masks])


def test_grouped_data_batches_by_groups():
    x, y, xt, yt = _split(load_breast_cancer, 60, 60)
    data = GroupedDataset(x, y, xt, yt, data_groups=np.arange(60) % 15)
    u = Utility(LogisticRegression(), data, "neg_log_loss", default_score=-5.0)
    masks = _coalitions(np.random.default_rng(9), 20, 15, low=0.2)
    np.testing.assert_allclose(u.evaluate_batch(masks), [u(m) for m in masks], atol=1e-9)
    orders = np.array([np.random.default_rng(i).permutation(15) for i in range(3)])
    scores, steps = u.batch_prefix_scores(orders)
    assert (steps == 15).all()
    np.testing.assert_allclose(scores[1], [u(orders[1, :k]) for k in range(16)], atol=1e-9)


def test_lockstep_prefixes_warm_equal_cold_and_one_by_one():
    x, y, xt, yt = _split(load_wine, 30, 40)
    u = Utility(LogisticRegression(), Dataset(x, y, xt, yt), "neg_log_loss", default_score=-5.0)
    orders = np.array([np.random.default_rng(i).permutation(30) for i in range(4)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warm, _ = u.batch_prefix_scores(orders, warm_start=True)
        cold, _ = u.batch_prefix_scores(orders, warm_start=False)
        single = np.array([[u(o[:k]) for k in range(31)] for o in orders])
    np.testing.assert_allclose(warm, cold, atol=1e-9)
    np.testing.assert_allclose(warm, single, atol=1e-9)


def test_lockstep_truncation_drops_finished_permutations():
    x, y, xt, yt = _split(load_breast_cancer, 30, 60)
    u = Utility(LogisticRegression(), Dataset(x, y, xt, yt), "accuracy")
    orders = np.array([np.random.default_rng(i).permutation(30) for i in range(5)])
    rules = [lambda step, score: step >= 4 + (score > 0.9)] * len(orders)  # one (stateless) rule per permutation
    scores, steps = u.batch_prefix_scores(orders, stop_when=rules)
    assert set(steps.tolist()) <= {4, 5}
    for row, used in enumerate(steps):
        assert np.isnan(scores[row, used + 1 :]).all() and not np.isnan(scores[row, : used + 1]).any()


def test_dvl_dask_models_is_importable_from_the_package():
    assert dvl_dask.models.LogisticRegression is LogisticRegression


@pytest.mark.slow  # 300 tightly converged scikit-learn fits per dataset (~5-20 s each)
@pytest.mark.parametrize(("loader", "n_train", "scorings"), [
    (load_breast_cancer, 100, ("accuracy", "neg_log_loss")),
    (load_wine, 60, ("accuracy", "neg_log_loss")),
    (load_diabetes, 100, ("r2",)),
])
def test_300_coalitions_equal_tight_sklearn(loader, n_train, scorings):
    x, y, xt, yt = _split(loader, n_train, 200 if loader is not load_wine else 100)
    regression = loader is load_diabetes
    masks = _coalitions(np.random.default_rng(10), 300, n_train, low=0.05)
    model, ref_model = (Ridge(alpha=1.0), SkRidge(alpha=1.0)) if regression else (LogisticRegression(), _tight())
    refs = []
    for mask in masks:
        fittable = mask.any() and (regression or np.unique(y[mask]).size >= 2)
        refs.append(clone(ref_model).fit(x[mask], y[mask]) if fittable else None)
    for scoring in scorings:
        u = Utility(model, Dataset(x, y, xt, yt), scoring, default_score=-5.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = u.evaluate_batch(masks)
        want = []
        for ref in refs:
            try:
                want.append(-5.0 if ref is None else get_scorer(scoring)(ref, xt, yt))
            except ValueError:  # log-loss of a model without every test class
                want.append(-5.0)
        if scoring == "accuracy":
            assert (np.abs(got - np.array(want)) < 1e-12).sum() >= 299
        else:
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-8)
    k = None if regression else np.unique(y).size
    full = [j for j, ref in enumerate(refs) if ref is not None and (regression or ref.classes_.size == k)]
    if regression:
        fit = fit_ridge(x, y, masks[full].astype(float), alpha=1.0, fit_intercept=True)
        coef = np.array([refs[j].coef_ for j in full])[:, None, :]
    else:
        fit = fit_logistic(x, y, masks[full].astype(float), n_classes=k, C=1.0, fit_intercept=True)
        coef = np.array([refs[j].coef_ for j in full])
    for j in range(len(full)):
        assert _relative(fit.coef[j], coef[j]) < 1e-6


def test_malformed_arguments_name_the_argument() -> None:
    """Issue 25: the public building blocks refuse bad input where it is given, naming the argument."""
    from dvl_dask.errors import DvlDaskError
    from dvl_dask.models import BatchSpec, LogisticRegression, Ridge, batch_spec, fit_ridge, standardize, vector_metric

    x = np.arange(8.0).reshape(4, 2)
    cases = {
        "model": lambda: batch_spec(Ridge),  # the class, not an instance: was None ("no batched fit")
        "estimator": lambda: BatchSpec(None, False),
        "fit_intercept": lambda: Ridge(fit_intercept="no").fit(x, np.arange(4.0)),
        "x": lambda: fit_ridge(np.array([[np.nan, 1.0]] * 4), np.zeros(4), np.ones((1, 4)), alpha=1.0,
                               fit_intercept=True),
        "s": lambda: standardize(x, np.ones((1, 3))),
        "name": lambda: vector_metric(None, True),
        "C": lambda: LogisticRegression(C=-1.0).fit(x, np.array([0, 1, 0, 1])),
    }
    for argument, call in cases.items():
        with pytest.raises(DvlDaskError, match=f"'{argument}'"):
            call()


@pytest.mark.parametrize("scoring", ["accuracy", "neg_log_loss"])
def test_refilled_lanes_give_each_permutation_its_own_prefix_scores(scoring):
    x, y, xt, yt = _split(load_breast_cancer, 20, 40)
    u = Utility(make_pipeline(StandardScaler(), LogisticRegression()), Dataset(x, y, xt, yt), scoring,
                default_score=-5.0 if scoring == "neg_log_loss" else None)
    orders = np.array([np.random.default_rng(i).permutation(20) for i in range(5)])

    def rules():  # stateless, different lengths per permutation: lanes refill at different prefix sizes
        return [lambda step, score, p=p: step >= 4 + 3 * p for p in range(len(orders))]

    lockstep, lockstep_steps = u.batch_prefix_scores(orders, stop_when=rules())
    refilled, refilled_steps = u.batch_prefix_scores(orders, stop_when=rules(), lanes=2)
    np.testing.assert_array_equal(refilled_steps, [4, 7, 10, 13, 16])
    np.testing.assert_array_equal(refilled_steps, lockstep_steps)
    assert np.array_equal(np.isnan(refilled), np.isnan(lockstep))
    cold = np.array([[u(o[:k]) if k <= used else np.nan for k in range(21)]
                     for o, used in zip(orders, refilled_steps, strict=True)])
    if scoring == "accuracy":  # a discrete score: the same fits give the same numbers, bit for bit
        np.testing.assert_array_equal(refilled, lockstep)
        np.testing.assert_array_equal(refilled, cold)
    else:
        np.testing.assert_allclose(refilled, lockstep, rtol=0, atol=1e-9)
        np.testing.assert_allclose(refilled, cold, rtol=0, atol=1e-9)


def test_refilled_lanes_finish_permutations_without_truncation_and_refuse_bad_lanes():
    x, y, xt, yt = _split(load_breast_cancer, 12, 40)
    u = Utility(LogisticRegression(), Dataset(x, y, xt, yt), "accuracy")
    orders = np.array([np.random.default_rng(i).permutation(12) for i in range(3)])
    refilled, steps = u.batch_prefix_scores(orders, lanes=1)
    assert (steps == 12).all()
    np.testing.assert_array_equal(refilled, u.batch_prefix_scores(orders)[0])
    with pytest.raises(InvalidParameterError, match="lanes"):
        u.batch_prefix_scores(orders, lanes=0)


def test_an_unavailable_device_setting_raises_from_every_fitting_path_naming_the_supported_devices():
    import dask

    x, y, xt, yt = _split(load_breast_cancer, 20, 30)
    u = Utility(LogisticRegression(), Dataset(x, y, xt, yt), "accuracy")  # catch_errors=True by default
    assert dask.config.get("dvl_dask.models.device") == "cpu"
    with dask.config.set({"dvl_dask.models.device": "cuda:99"}):  # no such GPU (torch devices: test_batched_devices)
        for evaluate in (lambda: u(np.arange(10)), lambda: u.evaluate_batch([np.arange(20)]),
                         lambda: u.batch_prefix_scores(np.arange(20)[None]),
                         lambda: Ridge().fit(x, y.astype(float))):
            with pytest.raises(InvalidParameterError, match=r"dvl_dask\.models\.device.*'cuda:99'.*Supported.*'cpu'"):
                evaluate()
    with dask.config.set({"dvl_dask.models.device": "CPU"}):
        assert u(np.arange(20)) == u.evaluate_batch([np.arange(20)])[0]


def test_batched_true_converts_sklearn_models_to_the_batched_utility():
    x, y, xt, yt = _split(load_breast_cancer, 25, 60, scale=False)
    data = Dataset(x, y, xt, yt)
    sk = make_pipeline(StandardScaler(), SkLogisticRegression(C=0.5, max_iter=1000, tol=1e-3))
    converted = Utility(sk, data, "neg_log_loss", default_score=-5.0, batched=True)
    direct = Utility(make_pipeline(StandardScaler(), LogisticRegression(C=0.5)), data, "neg_log_loss",
                     default_score=-5.0)
    unbatched = Utility(sk, data, "neg_log_loss", default_score=-5.0)
    assert converted.batched and not unbatched.batched
    # The same utility as one built on the batched model (same token); not the loosely converged scikit-learn one.
    assert converted.token == direct.token and converted.token != unbatched.token
    assert sk.get_params()["logisticregression__tol"] == 1e-3  # the caller's model is unchanged
    masks = _coalitions(np.random.default_rng(3), 12, 25, low=0.3)
    got = converted.evaluate_batch(masks)
    truth = _sklearn_scores(make_pipeline(StandardScaler(), _tight(C=0.5)), x, y, xt, yt, masks, "neg_log_loss", -5.0)
    np.testing.assert_allclose(got, truth, rtol=0, atol=1e-8)


def test_batched_true_converts_sklearn_ridge():
    x, y, xt, yt = _split(load_diabetes, 30, 60)
    u = Utility(SkRidge(alpha=2.0, solver="svd", tol=1e-2), Dataset(x, y, xt, yt), "r2", default_score=-1.0,
                batched=True)
    assert u.batched and isinstance(u.model, Ridge) and u.model.alpha == 2.0
    masks = _coalitions(np.random.default_rng(4), 10, 30, low=0.3)
    truth = _sklearn_scores(SkRidge(alpha=2.0), x, y, xt, yt, masks, "r2", -1.0)
    np.testing.assert_allclose(u.evaluate_batch(masks), truth, rtol=0, atol=1e-9)


@pytest.mark.parametrize(("model", "scoring", "error", "match"), [
    (SkLogisticRegression(class_weight="balanced"), "accuracy", InvalidParameterError, "class_weight='balanced'"),
    (SkLogisticRegression(solver="liblinear"), "accuracy", InvalidParameterError, "solver='liblinear'"),
    (SkLogisticRegression(l1_ratio=1.0, solver="saga"), "accuracy", InvalidParameterError, "l1_ratio=1.0"),
    (SkRidge(positive=True), "r2", InvalidParameterError, "positive=True.*Supported: alpha"),
    (make_pipeline(StandardScaler(with_mean=False), SkRidge()), "r2", "InvalidModelError", "default StandardScaler"),
    ("LinearRegression", "r2", InvalidParameterError, "positive=True.*Supported: fit_intercept, tol"),
    ("KNeighborsClassifier", "accuracy", "InvalidModelError", "Supported: scikit-learn's LogisticRegression"),
    (SkLogisticRegression(), "roc_auc", InvalidParameterError, "'roc_auc' has none.*Supported: accuracy"),
])
def test_batched_true_refuses_what_it_cannot_batch_naming_what_is_supported(model, scoring, error, match):
    from sklearn.linear_model import LinearRegression
    from sklearn.neighbors import KNeighborsClassifier

    from dvl_dask.errors import InvalidModelError

    model = {"LinearRegression": LinearRegression(positive=True),
             "KNeighborsClassifier": KNeighborsClassifier()}.get(model, model)
    error = InvalidModelError if error == "InvalidModelError" else error
    x, y, xt, yt = _split(load_breast_cancer, 20, 30)
    y, yt = (y.astype(float), yt.astype(float)) if scoring == "r2" else (y, yt)
    with pytest.raises(error, match=match):
        Utility(model, Dataset(x, y, xt, yt), scoring, default_score=-1.0, batched=True)


def test_batched_true_refuses_a_cache_and_batched_false_keeps_the_token():
    from dvl_dask.cache import InMemoryCacheBackend

    x, y, xt, yt = _split(load_breast_cancer, 20, 30)
    data = Dataset(x, y, xt, yt)
    with pytest.raises(InvalidParameterError, match="cannot use a cache"):
        Utility(SkLogisticRegression(), data, "accuracy", batched=True, cache=InMemoryCacheBackend())
    with pytest.raises(InvalidParameterError, match="'batched' parameter"):
        Utility(LogisticRegression(), data, "accuracy", batched="yes")
    one_at_a_time = Utility(LogisticRegression(), data, "accuracy", batched=False)
    default = Utility(LogisticRegression(), data, "accuracy")
    assert default.batched and not one_at_a_time.batched and one_at_a_time.token == default.token
    masks = _coalitions(np.random.default_rng(5), 8, 20, low=0.3)
    np.testing.assert_array_equal(one_at_a_time.evaluate_batch(masks), default.evaluate_batch(masks))


def test_fit_predict_batch_refuses_counts_that_are_not_multiplicities():
    x, y, xt, yt = _split(load_breast_cancer, 10, 20)
    u = Utility(LogisticRegression(), Dataset(x, y, xt, yt), "accuracy")
    for bad in (np.ones((2, 10)), -np.ones((2, 10), dtype=int), np.ones((2, 9), dtype=int)):
        with pytest.raises(InvalidParameterError, match=r"'counts' argument of Utility\.fit_predict_batch"):
            u.fit_predict_batch(bad)
    one_class = np.zeros((1, 10), dtype=int)
    one_class[0, np.flatnonzero(y == y[0])[:3]] = 2
    assert u.fit_predict_batch(one_class) == [None]  # one class: the caller fits it (and reports the failure)


@pytest.mark.parametrize("loader", [load_diabetes, load_breast_cancer])
def test_linear_regression_equals_sklearn_including_rank_deficient_coalitions(loader):
    from sklearn.linear_model import LinearRegression as SkLinearRegression

    from dvl_dask.models import LinearRegression as BatchedLinearRegression

    x, y, xt, yt = _split(loader, 40, 60, scale=False)
    y, yt = y.astype(float), yt.astype(float)
    masks = _coalitions(np.random.default_rng(6), 24, 40, low=0.05)
    masks[:4] = np.arange(40) < np.array([[3], [8], [15], [25]])  # fewer points than breast_cancer's 30 features
    sk = make_pipeline(StandardScaler(), SkLinearRegression())
    truth = _sklearn_scores(sk, x, y, xt, yt, masks, "r2", -1.0)
    converted = Utility(sk, Dataset(x, y, xt, yt), "r2", default_score=-1.0, batched=True)
    direct = Utility(make_pipeline(StandardScaler(), BatchedLinearRegression()), Dataset(x, y, xt, yt), "r2",
                     default_score=-1.0)
    assert converted.token == direct.token
    np.testing.assert_allclose(converted.evaluate_batch(masks), truth, rtol=1e-8, atol=1e-8)
    one = BatchedLinearRegression().fit(x[masks[1]], y[masks[1]])
    ref = SkLinearRegression().fit(x[masks[1]], y[masks[1]])
    np.testing.assert_allclose(one.predict(xt), ref.predict(xt), rtol=1e-8)


@pytest.mark.parametrize("gathered", [False, True])
def test_standardisation_of_a_feature_almost_constant_far_from_zero_is_exact_to_rounding(gathered):
    """Against exact rational arithmetic. The mean's rounding (a few ulps of 1e8) is 1e-3 of this feature's
    spread; a plain two-pass variance kept it at second order (6e-5 relative on these rows), the corrected
    two-pass algorithm (as scikit-learn's StandardScaler) removes it."""
    from fractions import Fraction

    from dvl_dask.models import standardize

    rng = np.random.default_rng(3)
    x = np.column_stack([1e8 + 3e-6 * rng.normal(size=40), rng.normal(size=40)])
    s = (rng.random((50, 40)) < 0.5).astype(float)
    if gathered:  # the (B, m, d) rows of lockstep permutations
        x, s = np.broadcast_to(x, (50, 40, 2)).copy(), s
    _, mean, scale = standardize(x, s)
    rows = x if x.ndim == 2 else x[0]
    for b in range(len(s)):
        exact = [Fraction(float(v)) for v, w in zip(rows[:, 0], s[b], strict=True) if w]
        m = sum(exact) / len(exact)
        sd = float(sum((r - m) ** 2 for r in exact) / len(exact)) ** 0.5
        assert abs(mean[b, 0] - float(m)) <= 2 * np.spacing(1e8)
        assert abs(scale[b, 0] - sd) <= 1e-12 * sd
