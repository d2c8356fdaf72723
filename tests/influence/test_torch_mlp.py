"""Influence models on small float64 MLPs: oracles from plain autograd, finite differences, agreement."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from helpers import flat_params, unflatten_params  # noqa: E402

from dvl_dask.errors import ConvergenceWarning, InvalidModelError  # noqa: E402
from dvl_dask.influence import InfluenceMode  # noqa: E402
from dvl_dask.influence.torch import (  # noqa: E402
    ArnoldiInfluence,
    CgInfluence,
    DirectInfluence,
    EkfacInfluence,
    InverseHarmonicMeanInfluence,
    LissaInfluence,
    NystroemSketchInfluence,
)

pytestmark = pytest.mark.torch

LAM = 0.1


def _autograd_oracle(problem, lam, blocks=None):
    """Influences from torch.autograd.functional (no torch.func): explicit Hessian, per-sample loops."""
    model, loss = problem.model, problem.loss
    theta = flat_params(model)

    def mean_loss(t):
        return loss(torch.func.functional_call(model, unflatten_params(model, t), (problem.x,)), problem.y)

    h = torch.autograd.functional.hessian(mean_loss, theta)
    if blocks is not None:
        mask = torch.zeros_like(h, dtype=torch.bool)
        for idx in blocks:
            mask[np.ix_(idx, idx)] = True
        h = torch.where(mask, h, torch.zeros_like(h))
    h = h + lam * torch.eye(len(theta), dtype=h.dtype)

    def grads(x, y):
        rows = []
        for xi, yi in zip(x, y):
            f = lambda t, xi=xi, yi=yi: loss(  # noqa: E731
                torch.func.functional_call(model, unflatten_params(model, t), (xi[None],)), yi[None]
            )
            rows.append(torch.autograd.functional.jacobian(f, theta))
        return torch.stack(rows)

    g_test, g_train = grads(problem.x_test, problem.y_test), grads(problem.x, problem.y)
    return g_test @ torch.linalg.solve(h, g_train.T)


@pytest.fixture(params=["regressor", "classifier"])
def problem(request, mlp_regressor, mlp_classifier):
    return mlp_regressor if request.param == "regressor" else mlp_classifier


def test_direct_matches_plain_autograd_oracle(problem):
    infl = DirectInfluence(problem.model, problem.loss, regularization=LAM).fit((problem.x, problem.y))
    actual = infl.influences(problem.x_test, problem.y_test, problem.x, problem.y)
    torch.testing.assert_close(actual, _autograd_oracle(problem, LAM), rtol=1e-8, atol=1e-10)


def test_direct_layer_blocks_match_block_diagonal_oracle(mlp_regressor):
    p = mlp_regressor
    sizes = [q.numel() for q in p.model.parameters()]  # w0, b0, w2, b2
    edges = np.cumsum([0, *sizes])
    blocks = [np.arange(edges[0], edges[2]), np.arange(edges[2], edges[4])]
    infl = DirectInfluence(p.model, p.loss, regularization=LAM, block_structure="layer").fit((p.x, p.y))
    actual = infl.influences(p.x_test, p.y_test, p.x, p.y)
    torch.testing.assert_close(actual, _autograd_oracle(p, LAM, blocks), rtol=1e-8, atol=1e-10)


def test_perturbation_matches_finite_differences(problem):
    infl = DirectInfluence(problem.model, problem.loss, regularization=LAM).fit((problem.x, problem.y))
    x, y = problem.x[:6], problem.y[:6]
    factors = infl.influence_factors(problem.x_test[:3], problem.y_test[:3])
    actual = infl.influences_from_factors(factors, x, y, mode=InfluenceMode.Perturbation)
    assert actual.shape == (3, 6, x.shape[1])
    eps = 1e-6
    expected = torch.empty_like(actual)
    for k in range(x.shape[1]):
        step = torch.zeros_like(x)
        step[:, k] = eps
        up = infl.influences_from_factors(factors, x + step, y)
        down = infl.influences_from_factors(factors, x - step, y)
        expected[:, :, k] = (up - down) / (2 * eps)
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7)


def _methods(problem_kind: str, n_params: int):
    """(name, constructor, exact reference second-order mode or None, relative tolerance)."""
    return [
        ("cg", lambda m, loss: CgInfluence(m, loss, regularization=LAM, rtol=1e-10), "hessian", 1e-6),
        (
            "cg-gn-nystroem",
            lambda m, loss: CgInfluence(
                m, loss, regularization=LAM, second_order_mode="gauss_newton", preconditioner="nystroem"
            ),
            "gauss_newton",
            1e-5,
        ),
        (
            "arnoldi",
            lambda m, loss: ArnoldiInfluence(m, loss, rank=n_params, regularization=LAM),
            "hessian",
            1e-6,
        ),
        (
            "nystroem-gn",
            lambda m, loss: NystroemSketchInfluence(
                m, loss, rank=n_params, regularization=LAM, second_order_mode="gauss_newton"
            ),
            "gauss_newton",
            1e-6,
        ),
        (
            # A large λ keeps the Neumann series short: error ~ (1 - λ_min/scale)^T, with
            # scale just above λ + the largest Gauss-Newton eigenvalue (about 30 for the regressor).
            "lissa-gn",
            lambda m, loss: LissaInfluence(
                m,
                loss,
                regularization=5.0 if problem_kind == "regressor" else 1.0,
                second_order_mode="gauss_newton",
                scale=40.0 if problem_kind == "regressor" else 2.0,
                maxiter=5000,
                rtol=1e-9,
            ),
            "gauss_newton",
            1e-6,
        ),
        ("ekfac", lambda m, loss: EkfacInfluence(m, loss, regularization=LAM), None, None),
        ("datainf", lambda m, loss: InverseHarmonicMeanInfluence(m, loss, regularization=LAM), None, None),
    ]


@pytest.mark.parametrize("kind", ["regressor", "classifier"])
@pytest.mark.parametrize("method", range(7), ids=["cg", "cg-gn", "arnoldi", "nystroem", "lissa", "ekfac", "datainf"])
def test_end_to_end_and_agreement_with_direct(kind, method, mlp_regressor, mlp_classifier):
    p = mlp_regressor if kind == "regressor" else mlp_classifier
    n_params = sum(q.numel() for q in p.model.parameters())
    _, build, reference_mode, rtol = _methods(kind, n_params)[method]
    infl = build(p.model, p.loss).fit((p.x, p.y))
    assert infl.is_fitted and infl.n_parameters == n_params

    factors = infl.influence_factors(p.x_test, p.y_test)
    assert factors.shape == (len(p.x_test), n_params)
    values = infl.influences(p.x_test, p.y_test, p.x, p.y)
    assert values.shape == (len(p.x_test), len(p.x))
    assert bool(torch.isfinite(values).all())
    torch.testing.assert_close(values, infl.influences_from_factors(factors, p.x, p.y), rtol=1e-10, atol=1e-12)
    assert infl.influences(p.x_test, p.y_test).shape == (len(p.x_test), len(p.x_test))

    if reference_mode is not None:
        lam = infl.regularization
        direct = DirectInfluence(p.model, p.loss, regularization=lam, second_order_mode=reference_mode)
        expected = direct.fit((p.x, p.y)).influences(p.x_test, p.y_test, p.x, p.y)
        err = float((values - expected).abs().max() / expected.abs().max())
        assert err < rtol
    else:
        # Approximate methods: same broad ranking as the layer-wise Gauss-Newton influence.
        direct = DirectInfluence(
            p.model, p.loss, regularization=LAM, second_order_mode="gauss_newton", block_structure="layer"
        )
        expected = direct.fit((p.x, p.y)).influences(p.x_test, p.y_test, p.x, p.y)
        corr = np.corrcoef(values.reshape(-1).numpy(), expected.reshape(-1).numpy())[0, 1]
        assert corr > 0.5


@pytest.mark.parametrize(
    "build",
    [
        lambda m, loss: DirectInfluence(m, loss, regularization=LAM, block_structure="layer"),
        lambda m, loss: CgInfluence(m, loss, regularization=LAM, preconditioner="jacobi"),
        lambda m, loss: ArnoldiInfluence(m, loss, rank=5, regularization=LAM, second_order_mode="gauss_newton"),
        lambda m, loss: EkfacInfluence(m, loss, regularization=LAM),
        lambda m, loss: InverseHarmonicMeanInfluence(m, loss, regularization=LAM, block_structure="full"),
    ],
    ids=["direct-layer", "cg-jacobi", "arnoldi-gn", "ekfac", "datainf-full"],
)
def test_perturbation_from_factors_equals_direct_call(mlp_classifier, build):
    p = mlp_classifier
    infl = build(p.model, p.loss).fit((p.x, p.y))
    direct = infl.influences(p.x_test[:3], p.y_test[:3], p.x[:5], p.y[:5], mode="perturbation")
    factors = infl.influence_factors(p.x_test[:3], p.y_test[:3])
    via_factors = infl.influences_from_factors(factors, p.x[:5], p.y[:5], mode="perturbation")
    assert direct.shape == (3, 5, 3)
    torch.testing.assert_close(direct, via_factors, rtol=1e-10, atol=1e-12)


def test_cg_warns_when_not_converged(mlp_regressor):
    p = mlp_regressor
    infl = CgInfluence(p.model, p.loss, regularization=LAM, maxiter=1).fit((p.x, p.y))
    with pytest.warns(ConvergenceWarning, match=r"did not converge"):
        infl.influence_factors(p.x_test, p.y_test)


def test_cg_refuses_unconverged_factors_of_an_indefinite_system(mlp_regressor):
    """Issue 30: CG meets negative curvature, MINRES gets too few iterations: an error with the fix."""
    p = mlp_regressor
    infl = CgInfluence(p.model, lambda out, y: -F.mse_loss(out, y), maxiter=2).fit((p.x, p.y))
    with pytest.raises(InvalidModelError, match=r"not positive definite.*MINRES.*gauss_newton"):
        infl.influence_factors(p.x_test, p.y_test)


def test_lissa_warns_when_not_converged(mlp_regressor):
    p = mlp_regressor
    infl = LissaInfluence(p.model, p.loss, regularization=LAM, scale=40.0, maxiter=3).fit((p.x, p.y))
    with pytest.warns(ConvergenceWarning, match=r"did not reach"):
        infl.influence_factors(p.x_test, p.y_test)


def test_lissa_detects_divergence_and_advises_on_scale(mlp_regressor):
    p = mlp_regressor
    infl = LissaInfluence(p.model, p.loss, regularization=LAM, scale=0.1, maxiter=500).fit((p.x, p.y))
    with pytest.raises(InvalidModelError, match=r"diverged.*increase scale"):
        infl.influence_factors(p.x_test, p.y_test)


def test_lissa_with_minibatches_is_close(mlp_regressor):
    # Stochastic Hessians: documented to be accurate to the batch-to-batch variation only.
    from torch.utils.data import DataLoader, TensorDataset

    p = mlp_regressor
    loader = DataLoader(TensorDataset(p.x, p.y), batch_size=25)
    lissa = LissaInfluence(
        p.model,
        p.loss,
        regularization=5.0,
        second_order_mode="gauss_newton",
        scale=40.0,
        dampen=0.0,
        maxiter=150,
        rtol=1e-12,
        warn_on_max_iteration=False,
    ).fit(loader)
    direct = DirectInfluence(p.model, p.loss, regularization=5.0, second_order_mode="gauss_newton").fit(loader)
    a = lissa.influences(p.x_test, p.y_test, p.x, p.y)
    b = direct.influences(p.x_test, p.y_test, p.x, p.y)
    assert float((a - b).abs().max() / b.abs().max()) < 0.2


NON_CONTIGUOUS = {"weights": ["0.weight", "2.weight"], "biases": ["0.bias", "2.bias"]}


def _block_indices(model, mapping):
    offsets, start = {}, 0
    for name, q in model.named_parameters():
        offsets[name] = np.arange(start, start + q.numel())
        start += q.numel()
    return [np.concatenate([offsets[n] for n in names]) for names in mapping.values()]


def test_direct_non_contiguous_blocks_match_oracle(mlp_regressor):
    p = mlp_regressor
    infl = DirectInfluence(p.model, p.loss, regularization=LAM, block_structure=NON_CONTIGUOUS).fit((p.x, p.y))
    expected = _autograd_oracle(p, LAM, _block_indices(p.model, NON_CONTIGUOUS))
    torch.testing.assert_close(infl.influences(p.x_test, p.y_test, p.x, p.y), expected, rtol=1e-8, atol=1e-10)


def test_datainf_non_contiguous_blocks_match_formula(mlp_classifier):
    p = mlp_classifier
    infl = InverseHarmonicMeanInfluence(p.model, p.loss, regularization=LAM, block_structure=NON_CONTIGUOUS)
    infl.fit((p.x, p.y))
    g_train = torch.stack(
        [
            torch.cat(
                [
                    g.reshape(-1)
                    for g in torch.autograd.grad(p.loss(p.model(xi[None]), yi[None]), list(p.model.parameters()))
                ]
            )
            for xi, yi in zip(p.x, p.y)
        ]
    )
    expected = torch.zeros(4, len(p.x), dtype=torch.float64)
    for idx in _block_indices(p.model, NON_CONTIGUOUS):
        gt = g_train[:, idx]
        inv = sum((torch.eye(len(idx), dtype=gt.dtype) - torch.outer(g, g) / (LAM + g @ g)) / LAM for g in gt)
        expected += gt[:4] @ (inv / len(gt)) @ gt.T
    actual = infl.influences(p.x[:4], p.y[:4], p.x, p.y)
    torch.testing.assert_close(actual, expected, rtol=1e-8, atol=1e-10)


def test_parameters_are_snapshotted_at_fit(mlp_regressor):
    import copy

    p = mlp_regressor
    model = copy.deepcopy(p.model)
    infl = CgInfluence(model, p.loss, regularization=LAM).fit((p.x, p.y))
    before = infl.influences(p.x_test, p.y_test, p.x, p.y)
    with torch.no_grad():
        for q in model.parameters():
            q.add_(1.0)  # an optimiser step after fit must not leak into the influences
    torch.testing.assert_close(infl.influences(p.x_test, p.y_test, p.x, p.y), before, rtol=0, atol=0)


def test_gauss_newton_product_routes_agree(mlp_classifier):
    # Few rows: vectorised vjp products; many rows: per-sample output Jacobians. Same numbers.
    from dvl_dask.influence import SecondOrderMode
    from dvl_dask.influence.torch._curvature import CurvatureOperator
    from dvl_dask.influence.torch._functional import FunctionalModel
    from dvl_dask.influence.torch._layout import ParameterLayout, resolve_blocks

    p = mlp_classifier
    layout = ParameterLayout.from_module(p.model, "test")
    fm = FunctionalModel(p.model, p.loss, layout)
    op = CurvatureOperator(fm, resolve_blocks(layout, "full", "test")[0], None, SecondOrderMode.GaussNewton, 0.0, "t")
    v = torch.randn(64, layout.n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    many = op._batch_product(v, p.x, p.y)
    one = torch.cat([op._batch_product(v[i : i + 1], p.x, p.y) for i in range(2)])
    torch.testing.assert_close(one, many[:2], rtol=1e-10, atol=1e-12)
