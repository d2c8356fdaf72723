"""TracIn: equal to a hand-computed sum of gradient dot products, in memory and through both calculators."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call, grad, vmap  # noqa: E402

from dvl_dask import open_influence  # noqa: E402
from dvl_dask.errors import InvalidModelError, InvalidParameterError, NotFittedError  # noqa: E402
from dvl_dask.influence import (  # noqa: E402
    DaskInfluenceCalculator,
    DisableClientSingleThreadCheck,
    SequentialInfluenceCalculator,
    influence_to_zarr,
)
from dvl_dask.influence.torch import NestedTorchCatAggregator, TorchNumpyConverter, TracInInfluence  # noqa: E402

pytestmark = pytest.mark.torch

RATES = [0.3, 0.05]


@pytest.fixture(scope="module")
def two_checkpoints():
    """An MLP trained for a few SGD steps; its states after step 3 and after step 10."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.sin(x[:, :1]) + 0.1 * torch.randn(40, 1, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    states = []
    for step in range(10):
        opt.zero_grad()
        F.mse_loss(net(x[:30]), y[:30]).backward()
        opt.step()
        if step in (2, 9):
            states.append({k: v.detach().clone() for k, v in net.state_dict().items()})
    return net, states, x[:30], y[:30], x[30:], y[30:]


def _reference(net, states, x_test, y_test, x, y, normalize):
    """Σ_c η_c <∇ℓ(test; θ_c), ∇ℓ(train; θ_c)> with torch.func, independently of the library."""

    def sample_loss(params, xi, yi):
        return F.mse_loss(functional_call(net, params, (xi[None],)), yi[None])

    total = torch.zeros(len(x_test), len(x), dtype=torch.float64)
    for state, rate in zip(states, RATES):

        def flat(xs, ys, state=state):
            g = vmap(grad(sample_loss), in_dims=(None, 0, 0))(state, xs, ys)
            out = torch.cat([g[k].reshape(len(xs), -1) for k in state], dim=1)
            return out / out.norm(dim=1, keepdim=True) if normalize else out

        total += rate * flat(x_test, y_test) @ flat(x, y).T
    return total


@pytest.mark.parametrize("normalize", [False, True])
def test_tracin_equals_hand_computed_gradient_dot_products(two_checkpoints, normalize):
    net, states, x, y, x_test, y_test = two_checkpoints
    model = TracInInfluence(net, F.mse_loss, normalize=normalize).fit(states, learning_rates=RATES)
    expected = _reference(net, states, x_test, y_test, x, y, normalize)
    assert model.n_parameters == 2 * sum(p.numel() for p in net.parameters())
    values = model.influences(x_test, y_test, x, y)
    torch.testing.assert_close(values, expected, rtol=1e-12, atol=1e-14)
    # modules as checkpoints, and the factors/gradients contract to the same matrix
    modules = []
    for s in states:
        m = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
        m.load_state_dict(s)
        modules.append(m)
    other = TracInInfluence(net, F.mse_loss, normalize=normalize).fit(modules, learning_rates=RATES)
    f = other.influence_factors(x_test, y_test)
    torch.testing.assert_close(f @ other.per_sample_gradients(x, y).T, expected, rtol=1e-12, atol=1e-14)
    if normalize:  # each checkpoint contributes a cosine in [-1, 1] times its rate
        assert float(values.abs().max()) <= sum(RATES) + 1e-12


def test_tracin_single_checkpoint_equals_unit_rate_dot_product(two_checkpoints):
    net, states, x, y, x_test, y_test = two_checkpoints
    model = TracInInfluence(net, F.mse_loss).fit(states[1:], learning_rates=1.0)
    g_test = model.per_sample_gradients(x_test, y_test)
    g = model.per_sample_gradients(x, y)
    torch.testing.assert_close(model.influences(x_test, y_test, x, y), g_test @ g.T)


def test_tracin_perturbation_is_gradient_of_up_influence(two_checkpoints):
    net, states, x, y, x_test, y_test = two_checkpoints
    model = TracInInfluence(net, F.mse_loss).fit(states, learning_rates=RATES)
    f = model.influence_factors(x_test[:2], y_test[:2])
    pert = model.influences_from_factors(f, x[:3], y[:3], mode="perturbation")
    # reference by central finite differences on one feature of one training point
    eps = 1e-6
    for j, d in ((0, 0), (2, 1)):
        xp, xm = x[:3].clone(), x[:3].clone()
        xp[j, d] += eps
        xm[j, d] -= eps
        fd = (model.influences_from_factors(f, xp, y[:3]) - model.influences_from_factors(f, xm, y[:3]))[:, j] / (
            2 * eps
        )
        torch.testing.assert_close(pert[:, j, d], fd, rtol=1e-6, atol=1e-8)
    cosine = TracInInfluence(net, F.mse_loss, normalize=True).fit(states, learning_rates=RATES)
    with pytest.raises(InvalidParameterError, match="normalize=True supports mode='up' only"):
        cosine.influences(x_test[:2], y_test[:2], x[:3], y[:3], mode="perturbation")


def test_tracin_through_both_calculators_and_zarr(two_checkpoints, tmp_path):
    net, states, x, y, x_test, y_test = two_checkpoints
    model = TracInInfluence(net, F.mse_loss).fit(states, learning_rates=RATES)
    expected = _reference(net, states, x_test, y_test, x, y, False).numpy()
    seq = SequentialInfluenceCalculator(model).influences(
        [(x_test[:4], y_test[:4]), (x_test[4:], y_test[4:])], [(x[:13], y[:13]), (x[13:], y[13:])]
    )
    np.testing.assert_allclose(seq.compute(NestedTorchCatAggregator()).numpy(), expected, rtol=1e-12, atol=1e-14)
    calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), DisableClientSingleThreadCheck)
    lazy = calc.influences(
        da.from_array(x_test.numpy(), chunks=(4, 3)),
        da.from_array(y_test.numpy(), chunks=(4, 1)),
        da.from_array(x.numpy(), chunks=(13, 3)),
        da.from_array(y.numpy(), chunks=(13, 1)),
        as_xarray=True,
    )
    influence_to_zarr(lazy, tmp_path / "tracin.zarr")
    stored = open_influence(tmp_path / "tracin.zarr")
    np.testing.assert_allclose(stored.values, expected, rtol=1e-12, atol=1e-14)
    assert stored.attrs["model"] == "TracInInfluence"
    # another learning rate is another model: another token
    other = TracInInfluence(net, F.mse_loss).fit(states, learning_rates=[0.3, 0.06])
    other_calc = DaskInfluenceCalculator(other, TorchNumpyConverter(), DisableClientSingleThreadCheck)
    assert other_calc._token != calc._token


def test_tracin_rejects_bad_input(two_checkpoints):
    net, states, x, y, _, _ = two_checkpoints
    model = TracInInfluence(net, F.mse_loss)
    with pytest.raises(NotFittedError):
        model.influences(x, y)
    with pytest.raises(InvalidParameterError, match="at least one model state"):
        model.fit([], learning_rates=[])
    with pytest.raises(InvalidParameterError, match=r"one entry per checkpoint \(2\)"):
        model.fit(states, learning_rates=[0.1])
    with pytest.raises(InvalidParameterError, match="positive and finite"):
        model.fit(states, learning_rates=[0.1, -1.0])
    with pytest.raises(InvalidParameterError, match="must be a list of model states"):
        model.fit(states[0])
    with pytest.raises(InvalidModelError, match="missing keys"):
        model.fit([nn.Linear(3, 1).double().state_dict()])
    bad = {k: v.clone() for k, v in states[0].items()}
    bad["0.weight"] = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(InvalidModelError, match=r"'0.weight' must be a tensor of shape \(5, 3\)"):
        model.fit([bad])
    with pytest.raises(InvalidParameterError, match="'normalize'"):
        TracInInfluence(net, F.mse_loss, normalize="yes")
