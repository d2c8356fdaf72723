"""Bad input gives the documented exception class and a message that names the problem."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from dvl_dask.errors import (  # noqa: E402
    InvalidDataError,
    InvalidModelError,
    InvalidParameterError,
    NotFittedError,
    UnknownModeError,
)
from dvl_dask.influence.torch import (  # noqa: E402
    ArnoldiInfluence,
    CgInfluence,
    DirectInfluence,
    EkfacInfluence,
    InverseHarmonicMeanInfluence,
    JacobiPreconditioner,
    LissaInfluence,
    NystroemPreconditioner,
    NystroemSketchInfluence,
)

pytestmark = pytest.mark.torch

ALL = [
    lambda m: DirectInfluence(m, F.mse_loss, regularization=0.1),
    lambda m: CgInfluence(m, F.mse_loss, regularization=0.1),
    lambda m: LissaInfluence(m, F.mse_loss, regularization=0.1),
    lambda m: ArnoldiInfluence(m, F.mse_loss, rank=2, regularization=0.1),
    lambda m: EkfacInfluence(m, F.mse_loss, regularization=0.1),
    lambda m: NystroemSketchInfluence(m, F.mse_loss, rank=2, regularization=0.1),
    lambda m: InverseHarmonicMeanInfluence(m, F.mse_loss, regularization=0.1),
]
IDS = ["direct", "cg", "lissa", "arnoldi", "ekfac", "nystroem", "datainf"]


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, generator=g, dtype=torch.float64)
    y = torch.randn(20, 1, generator=g, dtype=torch.float64)
    return x, y


def _linear():
    torch.manual_seed(0)
    return nn.Linear(3, 1).double()


@pytest.mark.parametrize("build", ALL, ids=IDS)
def test_unfitted_model_raises_not_fitted(build, data):
    x, y = data
    infl = build(_linear())
    assert not infl.is_fitted
    with pytest.raises(NotFittedError, match=r"not fitted yet.*fit\(data_loader\)"):
        infl.influence_factors(x, y)
    with pytest.raises(NotFittedError, match=r"influences"):
        infl.influences(x, y)
    with pytest.raises(NotFittedError, match=r"influences_from_factors"):
        infl.influences_from_factors(torch.zeros(2, 4, dtype=torch.float64), x, y)


@pytest.fixture
def fitted(data):
    return DirectInfluence(_linear(), F.mse_loss, regularization=0.1).fit(data)


def test_numpy_input_is_rejected_with_converter_hint(fitted, data):
    x, y = data
    with pytest.raises(InvalidDataError, match=r"must be a torch\.Tensor.*TorchNumpyConverter"):
        fitted.influence_factors(x.numpy(), y)


def test_wrong_dtype_is_rejected(fitted, data):
    x, y = data
    with pytest.raises(InvalidDataError, match=r"dtype torch\.float32.*float64"):
        fitted.influences(x.float(), y)


def test_wrong_feature_shape_is_rejected(fitted, data):
    x, y = data
    with pytest.raises(InvalidDataError, match=r"per-sample shape \(4,\).*\(3,\)"):
        fitted.influences(x[:2], y[:2], torch.zeros(5, 4, dtype=torch.float64), y[:5])


def test_mismatched_lengths_are_rejected(fitted, data):
    x, y = data
    with pytest.raises(InvalidDataError, match=r"same number of samples. Got 20 and 19"):
        fitted.influence_factors(x, y[:19])
    with pytest.raises(InvalidDataError, match=r"same number of samples"):
        fitted.influences(x[:2], y[:2], x, y[:3])


def test_empty_and_non_finite_inputs_are_rejected(fitted, data):
    x, y = data
    with pytest.raises(InvalidDataError, match=r"at least one sample"):
        fitted.influence_factors(x[:0], y[:0])
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(InvalidDataError, match=r"NaN or infinite"):
        fitted.influence_factors(bad, y)


def test_only_one_of_x_and_y_is_rejected(fitted, data):
    x, y = data
    with pytest.raises(InvalidParameterError, match=r"got x but not y"):
        fitted.influences(x, y, x=x)


def test_unknown_mode_is_rejected(fitted, data):
    x, y = data
    with pytest.raises(UnknownModeError, match=r"'sideways' is not a valid InfluenceMode"):
        fitted.influences(x, y, mode="sideways")


def test_factors_of_wrong_shape_or_dtype_are_rejected(fitted, data):
    x, y = data
    with pytest.raises(InvalidDataError, match=r"n_parameters=4\). Got shape \(2, 5\)"):
        fitted.influences_from_factors(torch.zeros(2, 5, dtype=torch.float64), x, y)
    with pytest.raises(InvalidDataError, match=r"float32"):
        fitted.influences_from_factors(torch.zeros(2, 4), x, y)
    with pytest.raises(InvalidDataError, match=r"must be a torch.Tensor"):
        fitted.influences_from_factors(np.zeros((2, 4)), x, y)


def test_perturbation_needs_floating_features(data):
    x = torch.randint(0, 5, (20, 3))
    y = data[1]
    model = nn.Sequential(nn.Embedding(5, 2), nn.Flatten(), nn.Linear(6, 1)).double()
    infl = DirectInfluence(model, F.mse_loss, regularization=0.1).fit((x, y))
    assert infl.influences(x[:2], y[:2], x, y).shape == (2, 20)  # integer inputs are fine in up mode
    with pytest.raises(InvalidDataError, match=r"floating point"):
        infl.influences(x[:2], y[:2], x, y, mode="perturbation")


@pytest.mark.parametrize(
    "build",
    [
        lambda m: ArnoldiInfluence(m, F.mse_loss, rank=5),
        lambda m: NystroemSketchInfluence(m, F.mse_loss, rank=5, regularization=1.0),
    ],
    ids=["arnoldi", "nystroem"],
)
def test_rank_larger_than_number_of_parameters(build):
    with pytest.raises(InvalidParameterError, match=r"at most the number of trainable parameters \(4\). Got 5"):
        build(_linear())


def test_krylov_dimension_must_cover_rank():
    with pytest.raises(InvalidParameterError, match=r"krylov_dimension"):
        ArnoldiInfluence(_linear(), F.mse_loss, rank=3, krylov_dimension=2)


@pytest.mark.parametrize(
    "build",
    [
        lambda m, r: NystroemSketchInfluence(m, F.mse_loss, rank=2, regularization=r),
        lambda m, r: InverseHarmonicMeanInfluence(m, F.mse_loss, regularization=r),
    ],
    ids=["nystroem", "datainf"],
)
@pytest.mark.parametrize("value", [0.0, -1.0])
def test_non_positive_regularization_where_required(build, value):
    with pytest.raises(InvalidParameterError, match=r"'regularization' parameter .* range \(0\.0, inf\]"):
        build(_linear(), value)


@pytest.mark.parametrize(
    ("cls", "extra"),
    [
        (DirectInfluence, {}),
        (CgInfluence, {}),
        (LissaInfluence, {}),
        (ArnoldiInfluence, {"rank": 2}),
        (EkfacInfluence, {}),
    ],
)
def test_negative_regularization(cls, extra):
    with pytest.raises(InvalidParameterError, match=r"'regularization' parameter of \w+ must be in the range \[0\.0"):
        cls(_linear(), F.mse_loss, regularization=-1.0, **extra)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"maxiter": 0}, "'maxiter'"),
        ({"rtol": 0.0, "atol": 0.0}, "rtol > 0 or atol > 0"),
        ({"preconditioner": "ilu"}, "'preconditioner'"),
        ({"second_order_mode": "fisher"}, "not a valid SecondOrderMode"),
        ({"block_structure": "diagonal"}, "not a valid BlockMode"),
        ({"block_structure": {"a": ["weight"]}}, r"unassigned \['bias'\]"),
    ],
)
def test_cg_parameters_are_validated(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        CgInfluence(_linear(), F.mse_loss, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"scale": 0.0}, "'scale'"), ({"dampen": 1.0}, "'dampen'"), ({"maxiter": -2}, "'maxiter'")],
)
def test_lissa_parameters_are_validated(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        LissaInfluence(_linear(), F.mse_loss, **kwargs)


def test_preconditioner_parameters_are_validated():
    with pytest.raises(InvalidParameterError, match=r"'num_samples_estimate'"):
        JacobiPreconditioner(num_samples_estimate=0)
    with pytest.raises(InvalidParameterError, match=r"'rank'"):
        NystroemPreconditioner(rank=0)


def test_not_a_module_or_no_trainable_parameters():
    with pytest.raises(InvalidModelError, match=r"must be a torch.nn.Module"):
        DirectInfluence(lambda x: x, F.mse_loss)
    frozen = _linear().requires_grad_(False)
    with pytest.raises(InvalidModelError, match=r"trainable parameters; Linear has none with requires_grad=True"):
        DirectInfluence(frozen, F.mse_loss)
    with pytest.raises(InvalidParameterError, match=r"'loss' parameter"):
        DirectInfluence(_linear(), "mse")


def test_loss_must_be_mean_reduced(data):
    infl = DirectInfluence(_linear(), lambda out, y: F.mse_loss(out, y, reduction="none"))
    with pytest.raises(InvalidModelError, match=r"must return a scalar.*Got \(20, 1\)"):
        infl.fit(data)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([1, 2, 3], "DataLoader"),
        ((np.zeros((3, 3)), np.zeros(3)), "must be a torch.Tensor"),
        (DataLoader(TensorDataset(torch.zeros(4, 3, dtype=torch.float64)), batch_size=2), r"\(x, y\) pairs"),
        (DataLoader(TensorDataset(torch.zeros(0, 3), torch.zeros(0, 1)), batch_size=2), "yielded no batches"),
        ((torch.zeros(4, 3), torch.zeros(4, 1)), "dtype torch.float32"),
    ],
    ids=["list", "numpy", "not-pairs", "empty", "dtype"],
)
def test_bad_training_data(data, match):
    with pytest.raises(InvalidDataError, match=match):
        DirectInfluence(_linear(), F.mse_loss).fit(data)


def test_singular_curvature_without_regularization(data):
    x, y = data
    x = x.clone()
    x[:, 2] = 0.0  # a feature that never varies: zero row and column in H
    with pytest.raises(InvalidModelError, match=r"singular.*positive regularization"):
        DirectInfluence(_linear(), F.mse_loss).fit((x, y))
    with pytest.raises(InvalidModelError, match=r"zero eigenvalues.*positive regularization"):
        EkfacInfluence(_linear(), F.mse_loss).fit((x, y))
    with pytest.raises(InvalidModelError, match=r"kept eigenvectors.*singular.*positive regularization"):
        ArnoldiInfluence(_linear(), F.mse_loss, rank=4).fit((x, y))


def test_nystroem_rejects_indefinite_curvature(data):
    concave = lambda out, y: -F.mse_loss(out, y)  # noqa: E731
    with pytest.raises(InvalidModelError, match=r"positive semi-definite.*gauss_newton"):
        NystroemSketchInfluence(_linear(), concave, rank=4, regularization=1.0).fit(data)


def test_ekfac_rejects_unsupported_layers():
    model = nn.Sequential(nn.Conv1d(1, 2, 2), nn.Flatten(), nn.Linear(4, 1)).double()
    with pytest.raises(InvalidModelError, match=r"Conv2d layers only.*\['0.weight', '0.bias'\].*Conv1d"):
        EkfacInfluence(model, F.mse_loss)
    # Freezing the unsupported layer makes the model acceptable.
    model[0].requires_grad_(False)
    assert EkfacInfluence(model, F.mse_loss).n_parameters == 5


def test_ekfac_rejects_too_large_factors():
    with pytest.raises(InvalidModelError, match=r"input Kronecker factor of size 4x4, above max_factor_dim=3"):
        EkfacInfluence(_linear(), F.mse_loss, max_factor_dim=3)


def test_ekfac_rejects_layers_called_twice(data):
    layer = nn.Linear(3, 3).double()
    model = nn.Sequential(layer, nn.Tanh(), layer, nn.Linear(3, 1).double())
    with pytest.raises(InvalidModelError, match=r"more than once"):
        EkfacInfluence(model, F.mse_loss, regularization=0.1).fit(data)


def test_dropout_in_training_mode_gets_advice(data):
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 1)).double()
    infl = DirectInfluence(model, F.mse_loss, regularization=0.1).fit(data)  # curvature is fine...
    with pytest.raises(InvalidModelError, match=r"model\.eval\(\)"):
        infl.influence_factors(*data)  # ...per-sample gradients cannot vectorise randomness


# -- issue 25: NaN where it first appears, labels of the wrong dtype ---------------------------------


def _double_data(n=16):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(n, 1, generator=g, dtype=torch.float64)


def test_tracin_refuses_a_nan_checkpoint_naming_it() -> None:
    from dvl_dask.influence.torch import TracInInfluence

    model = nn.Linear(2, 1).double()
    good = {k: v.clone() for k, v in model.state_dict().items()}
    diverged = {k: v.clone() for k, v in model.state_dict().items()}
    diverged["weight"][0, 1] = float("nan")
    with pytest.raises(InvalidModelError, match=r"Checkpoint 1 .*'weight' holds 1 NaN or infinite"):
        TracInInfluence(model, F.mse_loss).fit([good, diverged])


def test_a_nan_loss_with_a_zero_gradient_is_refused_not_zero_influences() -> None:
    x, y = _double_data()
    model = nn.Linear(2, 1).double()

    def constant_nan_loss(out, target):  # no dependence on the parameters: zero gradient and zero Hessian
        return (out * 0.0).sum() * 0.0 + torch.tensor(float("nan"), dtype=out.dtype)

    for make in (DirectInfluence, CgInfluence):
        with pytest.raises(InvalidModelError, match=r"loss .* is not finite \(nan\) on the first training batch"):
            make(model, constant_nan_loss, regularization=0.1).fit((x, y))


def test_a_nan_loss_at_one_test_point_names_it() -> None:
    x, y = _double_data()
    model = nn.Linear(2, 1).double()

    def loss_nan_for_big_targets(out, target):
        return F.mse_loss(out, target) + torch.where(target.abs().max() > 100, float("nan"), 0.0)

    fitted = DirectInfluence(model, loss_nan_for_big_targets, regularization=0.1).fit((x, y))
    y_test = y[:5].clone()
    y_test[3] = 1e3
    with pytest.raises(InvalidDataError, match=r"not finite for sample 3 \(loss nan"):
        fitted.influences(x[:5], y_test, x, y)


def test_float_labels_with_cross_entropy_say_to_pass_class_indices() -> None:
    x, _ = _double_data()
    model = nn.Linear(2, 3).double()
    labels = torch.tensor([0.0, 1.0, 2.0, 1.0] * 4, dtype=torch.float64)
    with pytest.raises(InvalidDataError, match=r"labels have dtype torch.float64.*integer class indices.*long\(\)"):
        DirectInfluence(model, F.cross_entropy, regularization=0.1).fit((x, labels))
    fitted = DirectInfluence(model, F.cross_entropy, regularization=0.1).fit((x, labels.long()))
    assert torch.isfinite(fitted.influences(x[:2], labels[:2].long(), x, labels.long())).all()


def test_a_model_on_the_base_gets_its_checks_synonyms_and_products(data):
    """Issue 29: argument checks, pyDVL synonyms and chunked products come from the base, not the method file."""
    from dvl_dask.influence.torch import TorchInfluenceFunctionModel

    class Scaled(TorchInfluenceFunctionModel, aliases={"damping": "regularization"}):
        """H⁻¹ ≈ I/λ per layer: influences are ⟨g_test, g⟩/λ."""

        _POSITIVE_REGULARIZATION = "Scaled divides by it."

        def __init__(self, model, loss, *, regularization, block_structure="layer"):
            super().__init__(model, loss, regularization=regularization, block_structure=block_structure)

        def _fit(self, fm, loader):
            pass

        def _solve_block(self, i, block, grads):
            return grads / self.regularization

    assert Scaled(_linear(), F.mse_loss, hessian_regularization=2.0).regularization == 2.0
    assert Scaled(_linear(), F.mse_loss, damping=2.0).regularization == 2.0
    with pytest.raises(InvalidParameterError, match=r"'regularization'.*Scaled divides by it"):
        Scaled(_linear(), F.mse_loss, regularization=0.0)
    with pytest.raises(UnknownModeError, match=r"'block_structure' parameter of Scaled: .*not a valid BlockMode"):
        Scaled(_linear(), F.mse_loss, regularization=1.0, block_structure="rows")
    with pytest.raises(UnknownModeError, match=r"'second_order_mode' parameter of DirectInfluence: .*SecondOrderMode"):
        DirectInfluence(_linear(), F.mse_loss, second_order_mode="fisher")
    x, y = data
    model = _linear()
    infl = Scaled(model, F.mse_loss, regularization=2.0).fit((x, y))
    w, b = model.weight.detach(), model.bias.detach()
    r = 2 * (x @ w.T + b - y)  # per-sample gradient of (x·w + b - y)²: r·[x, 1]
    g = torch.cat([r * x, r], dim=1)
    torch.testing.assert_close(infl.influences(x[:4], y[:4], x, y), g[:4] @ g.T / 2.0)
    torch.testing.assert_close(infl.self_influences(x, y), (g * g).sum(dim=1) / 2.0)


def test_non_finite_rows_screen_by_row_sums_without_false_alarms_on_overflow():
    """Rows are screened by their sums (no boolean copy of the gradients); a sum that overflows from
    finite entries is checked entry by entry and not reported."""
    from dvl_dask.influence.torch._functional import _non_finite_rows

    big = torch.finfo(torch.float32).max
    flat = torch.tensor(
        [[1.0, 2.0, 3.0], [big, big, 1.0], [1.0, float("nan"), 0.0], [float("inf"), 0.0, 0.0], [-big, -big, 0.0],
         [1.0, 1.0, 1.0]],
        dtype=torch.float32,
    )
    losses = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, float("nan")])
    want = [False, False, True, True, False, True]
    assert _non_finite_rows([flat], losses).tolist() == want
    # in column blocks (the per-parameter gradients), whose row sums add up to an overflow in row 1 and 4
    assert _non_finite_rows([flat[:, :1], flat[:, 1:]], losses).tolist() == want


def test_products_with_column_blocks_equal_the_joined_product_and_refuse_a_mismatch():
    from dvl_dask.influence.torch._functional import times_transposed

    g = torch.Generator().manual_seed(0)
    factors, grads = torch.randn(5, 9, generator=g, dtype=torch.float64), torch.randn(7, 9, generator=g,
                                                                                       dtype=torch.float64)
    parts = [grads[:, :4], grads[:, 4:5], grads[:, 5:]]
    torch.testing.assert_close(times_transposed(factors, parts), factors @ grads.T, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="8 columns in all; the factors have 9"):
        times_transposed(factors, parts[:1] + parts[2:])
