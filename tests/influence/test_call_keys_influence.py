"""Influence graphs are named by everything their blocks read: the model AND the converter (issue 23, part B).

Two Dask calculators over the same fitted model whose converters turn the data
into different tensors compute different influences. Their layers used to be
named from the model's token and the inputs only, so computed together (one
``dask.compute``) one result silently replaced the other.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dvl_dask.influence import (  # noqa: E402
    DaskInfluenceCalculator,
    DisableClientSingleThreadCheck,
    SequentialInfluenceCalculator,
)
from dvl_dask.influence.torch import DirectInfluence, TorchNumpyConverter  # noqa: E402

pytestmark = pytest.mark.torch


class ScalingConverter(TorchNumpyConverter):
    """Multiplies the data by ``scale`` on the way in: the same model sees other inputs."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def to_tensor(self, x):
        return super().to_tensor(np.asarray(x) * self.scale)


@pytest.fixture(scope="module")
def fitted():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(12, 1, generator=gen, dtype=torch.float64)
    model = DirectInfluence(torch.nn.Linear(3, 1).double(), torch.nn.functional.mse_loss, regularization=0.1)
    return model.fit((x, y)), x.numpy(), y.numpy()


@pytest.mark.parametrize("method", ["influences", "self_influences", "influence_factors"])
def test_calculators_with_different_converters_computed_together(fitted, method):
    model, x, y = fitted
    dx, dy = da.from_array(x, chunks=(4, -1)), da.from_array(y, chunks=(4, -1))
    calcs = [DaskInfluenceCalculator(model, conv, DisableClientSingleThreadCheck)
             for conv in (TorchNumpyConverter(), ScalingConverter(2.0))]
    args = {"influences": (dx[:5], dy[:5], dx, dy), "self_influences": (dx, dy), "influence_factors": (dx, dy)}[method]
    lazy = [getattr(c, method)(*args) for c in calcs]
    together = dask.compute(*lazy, scheduler="sync")
    alone = [getattr(c, method)(*args).compute(scheduler="sync") for c in calcs]
    for joint, single in zip(together, alone):
        np.testing.assert_array_equal(joint, single)
    assert not np.allclose(together[0], together[1])  # the converters really change the numbers


# -- every public method, every argument (issue 23 in the influence package) -----------------------------


def _public_methods(cls) -> list[str]:
    return sorted(n for n, f in vars(cls).items() if not n.startswith("_") and callable(f))


def _dask_identity(out) -> tuple:
    """A lazy result's identity: its task keys, plus the labels and attrs of a DataArray."""
    from dask.base import tokenize

    if hasattr(out, "coords"):
        coords = {k: tokenize(np.asarray(v.values)) for k, v in out.coords.items()}
        return (tuple(sorted(map(str, out.data.__dask_graph__()))), tokenize(coords), out.attrs.get("mode"))
    return (tuple(sorted(map(str, out.__dask_graph__()))),)


@pytest.fixture(scope="module")
def dask_calls(fitted):
    model, x, y = fitted
    calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), DisableClientSingleThreadCheck)
    dx, dy = da.from_array(x, chunks=(4, -1)), da.from_array(y, chunks=(4, -1))
    other_x, other_y = da.from_array(x + 1.0, chunks=(4, -1)), da.from_array(y - 1.0, chunks=(4, -1))
    factors = calc.influence_factors(dx[:5], dy[:5])
    # method -> (base arguments, {argument: another value})
    return calc, {
        "influence_factors": ({"x": dx, "y": dy}, {"x": other_x, "y": other_y}),
        "influences": (
            {"x_test": dx[:5], "y_test": dy[:5], "x": dx, "y": dy, "mode": "up", "as_xarray": True,
             "test_names": None, "train_names": None},
            {"x_test": other_x[:5], "y_test": other_y[:5], "x": other_x, "y": other_y, "mode": "perturbation",
             "as_xarray": False, "test_names": list("abcde"), "train_names": np.arange(12) + 100},
        ),
        "influences_from_factors": (
            {"factors": factors, "x": dx, "y": dy, "mode": "up", "as_xarray": True, "test_names": None,
             "train_names": None},
            {"factors": factors * 2, "x": other_x, "y": other_y, "mode": "perturbation", "as_xarray": False,
             "test_names": list("abcde"), "train_names": np.arange(12) + 100},
        ),
        "self_influences": (
            {"x": dx, "y": dy, "mode": "up", "as_xarray": True, "names": None},
            {"x": other_x, "y": other_y, "mode": "perturbation", "as_xarray": False, "names": np.arange(12) + 1},
        ),
    }


def test_every_dask_method_is_keyed_by_every_argument(dask_calls):
    import inspect

    calc, calls = dask_calls
    assert set(calls) == set(_public_methods(DaskInfluenceCalculator))  # a new method needs its row here
    for method, (base, others) in calls.items():
        params = [p for p in inspect.signature(getattr(calc, method)).parameters]
        assert set(params) == set(base) == set(others), method  # a new parameter needs its values here
        fn = getattr(calc, method)
        reference = _dask_identity(fn(**base))
        assert _dask_identity(fn(**base)) == reference, method  # equal calls, equal keys
        for name in params:
            changed = _dask_identity(fn(**{**base, name: others[name]}))
            assert changed != reference, (method, name)


def test_every_sequential_method_is_keyed_by_every_argument(fitted):
    import inspect

    import torch

    model, x, y = fitted
    calc = SequentialInfluenceCalculator(model)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    data = [(tx[:6], ty[:6]), (tx[6:], ty[6:])]
    other = [(tx[:6] + 1, ty[:6]), (tx[6:] + 1, ty[6:])]
    factors = calc.influence_factors(data[:1])
    calls = {
        "influence_factors": ({"data_iterable": data}, {"data_iterable": other}),
        "influences": (
            {"test_data_iterable": data[:1], "train_data_iterable": data, "mode": "up"},
            {"test_data_iterable": other[:1], "train_data_iterable": other, "mode": "perturbation"},
        ),
        "influences_from_factors": (
            {"factors": factors, "train_data_iterable": data, "mode": "up"},
            {"factors": calc.influence_factors(other[:1]), "train_data_iterable": other, "mode": "perturbation"},
        ),
        "self_influences": ({"data_iterable": data, "mode": "up"}, {"data_iterable": other, "mode": "perturbation"}),
    }
    assert set(calls) == set(_public_methods(SequentialInfluenceCalculator))
    for method, (base, others) in calls.items():
        fn = getattr(calc, method)
        params = list(inspect.signature(fn).parameters)
        assert set(params) == set(base) == set(others), method
        reference = fn(**base).token
        assert fn(**base).token == reference, method
        for name in params:
            assert fn(**{**base, name: others[name]}).token != reference, (method, name)
    # Defaults and spellings of the same call share the identity.
    assert calc.influences(data[:1]).token == calc.influences(data[:1], data[:1], "up").token
    # Another calculator configuration (how blocks are computed) is another identity.
    other_calc = SequentialInfluenceCalculator(model, train_gradients="recompute")
    assert other_calc.influences(data[:1], data).token != calc.influences(data[:1], data).token
