"""Identity of influence computations (issue 23 in the influence package).

* The torch models hashed the *live* ``nn.Module`` while computing with the
  copies taken at ``fit``: weights changed in place after the fit gave the old
  values under the key of the new weights, so a model fitted at the new weights
  shared keys (one ``dask.compute``) and zarr stores with it.
* A calculator kept the token taken at construction: a model refitted
  afterwards computed new values under the old key.
* The sequential calculator's store identities left the data out: another test
  set written to the same path resumed the interrupted write of the first one.
* Influence results record what their identity was made of (``provenance``).
"""

from __future__ import annotations

import json

import dask
import dask.array as da
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dvl_dask.errors import InvalidModelError, ResultExistsError  # noqa: E402
from dvl_dask.influence import (  # noqa: E402
    DaskInfluenceCalculator,
    DisableClientSingleThreadCheck,
    SequentialInfluenceCalculator,
    influence_to_zarr,
)
from dvl_dask.influence.torch import DirectInfluence, NestedTorchCatAggregator, TorchNumpyConverter  # noqa: E402
from dvl_dask.results import open_influence, provenance_of  # noqa: E402

pytestmark = pytest.mark.torch

REG = 0.1


@pytest.fixture()
def problem():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 2).double()
    return module, x, y


def _closed_form(weight, bias, x, y, x_test, y_test, closed_form):
    """Up-weighting influences ``g_test H⁻¹ g_trainᵀ`` of ridge-regularised mean MSE, in numpy."""
    train = closed_form(weight, bias, x, y, REG)
    test = closed_form(weight, bias, x_test, y_test, REG)
    return test["grads"] @ np.linalg.solve(train["hessian"], train["grads"].T)


def _weights(module):
    return module.weight.detach().numpy().copy(), module.bias.detach().numpy().copy()


def _train_in_place(module, x, y):
    """A few optimiser steps: the module's parameters change in place."""
    opt = torch.optim.SGD(module.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(module(x), y).backward()
        opt.step()


def _dask(t, chunk):
    return da.from_array(t.numpy(), chunks=(chunk, -1))


def test_weights_changed_after_fit_change_neither_values_nor_token(problem, closed_form):
    module, x, y = problem
    w0 = _weights(module)
    model = DirectInfluence(module, torch.nn.functional.mse_loss, regularization=REG).fit((x, y))
    token = dask.base.tokenize(model)
    _train_in_place(module, x, y)
    module.train(False)
    assert not np.allclose(_weights(module)[0], w0[0])  # the module really changed
    expected = _closed_form(*w0, x.numpy(), y.numpy(), x[:4].numpy(), y[:4].numpy(), closed_form)
    np.testing.assert_allclose(model.influences(x[:4], y[:4], x, y).numpy(), expected, rtol=1e-8)
    assert dask.base.tokenize(model) == token


def test_models_fitted_before_and_after_training_computed_together(problem, closed_form):
    module, x, y = problem
    w0 = _weights(module)
    before = DirectInfluence(module, torch.nn.functional.mse_loss, regularization=REG).fit((x, y))
    _train_in_place(module, x, y)
    w1 = _weights(module)
    after = DirectInfluence(module, torch.nn.functional.mse_loss, regularization=REG).fit((x, y))
    dx, dy = _dask(x, 5), _dask(y, 5)
    calcs = [DaskInfluenceCalculator(m, TorchNumpyConverter(), DisableClientSingleThreadCheck) for m in (before, after)]
    lazy = [c.influences(dx[:6], dy[:6], dx, dy) for c in calcs]
    got = dask.compute(*lazy, scheduler="sync")
    xn, yn = x.numpy(), y.numpy()
    np.testing.assert_allclose(got[0], _closed_form(*w0, xn, yn, xn[:6], yn[:6], closed_form), rtol=1e-8)
    np.testing.assert_allclose(got[1], _closed_form(*w1, xn, yn, xn[:6], yn[:6], closed_form), rtol=1e-8)


def test_store_of_the_old_weights_is_not_resumed_by_the_new_fit(problem, tmp_path):
    module, x, y = problem
    before = DirectInfluence(module, torch.nn.functional.mse_loss, regularization=REG).fit((x, y))
    _train_in_place(module, x, y)
    after = DirectInfluence(module, torch.nn.functional.mse_loss, regularization=REG).fit((x, y))
    dx, dy = _dask(x, 4), _dask(y, 4)
    calc = DaskInfluenceCalculator(before, TorchNumpyConverter(), DisableClientSingleThreadCheck)
    url = tmp_path / "influences.zarr"
    influence_to_zarr(calc.influences(dx[:4], dy[:4], dx, dy, as_xarray=True), url, compute=False)  # interrupted
    calc = DaskInfluenceCalculator(after, TorchNumpyConverter(), DisableClientSingleThreadCheck)
    with pytest.raises(ResultExistsError, match="another computation"):
        influence_to_zarr(calc.influences(dx[:4], dy[:4], dx, dy, as_xarray=True), url)


class _CrashAfterFirstBlock(TorchNumpyConverter):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def to_numpy(self, x):
        self.calls += 1
        if self.calls > 1:
            raise KeyboardInterrupt("simulated crash")
        return super().to_numpy(x)


def test_sequential_store_of_another_test_set_is_not_resumed(problem, tmp_path):
    module, x, y = problem
    model = DirectInfluence(module, torch.nn.functional.mse_loss, regularization=REG).fit((x, y))
    calc = SequentialInfluenceCalculator(model)
    train = [(x[:8], y[:8]), (x[8:], y[8:])]
    first = [(x[:2], y[:2]), (x[2:4], y[2:4])]
    second = [(x[4:6], y[4:6]), (x[6:8], y[6:8])]  # same shapes and chunks, other points
    url = tmp_path / "seq.zarr"
    with pytest.raises(KeyboardInterrupt):
        calc.influences(first, train).to_zarr(url, _CrashAfterFirstBlock())
    with pytest.raises(ResultExistsError, match="another computation"):
        calc.influences(second, train).to_zarr(url, TorchNumpyConverter())
    # The same test set resumes.
    calc.influences(first, train).to_zarr(url, TorchNumpyConverter())
    expected = model.influences(x[:4], y[:4], x, y).numpy()
    np.testing.assert_allclose(open_influence(url).values, expected, rtol=1e-10)


def test_model_refitted_after_the_calculator_was_built_is_refused(problem):
    module, x, y = problem
    model = DirectInfluence(module, torch.nn.functional.mse_loss, regularization=REG).fit((x, y))
    dx, dy = _dask(x, 4), _dask(y, 4)
    calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), DisableClientSingleThreadCheck)
    seq = SequentialInfluenceCalculator(model)
    graph = calc.influences(dx[:4], dy[:4], dx, dy)  # built before the refit, computed after
    lazy = seq.influences([(x[:4], y[:4])], [(x, y)])
    _train_in_place(module, x, y)
    model.fit((x, y))
    with pytest.raises(InvalidModelError, match="changed after the calculator was built"):
        graph.compute(scheduler="sync")
    with pytest.raises(InvalidModelError, match="changed after the calculator was built"):
        calc.influences(dx[:4], dy[:4], dx, dy)
    with pytest.raises(InvalidModelError, match="changed after the calculator was built"):
        lazy.compute(NestedTorchCatAggregator())
    with pytest.raises(InvalidModelError, match="changed after the calculator was built"):
        seq.self_influences([(x, y)])


def test_provenance_round_trip_through_zarr(problem, tmp_path):
    module, x, y = problem
    model = DirectInfluence(module, torch.nn.functional.mse_loss, regularization=REG).fit((x, y))
    dx, dy = _dask(x, 4), _dask(y, 4)
    calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), DisableClientSingleThreadCheck)
    arr = calc.influences(dx[:4], dy[:4], dx, dy, as_xarray=True)
    back = open_influence(influence_to_zarr(arr, tmp_path / "dask.zarr"))
    record = provenance_of(back)
    assert record == json.loads(arr.attrs["provenance"])
    assert record["method"] == "DaskInfluenceCalculator.influences" and record["mode"] == "up"
    assert record["model"]["class"].endswith("DirectInfluence")
    assert record["model"]["parameters"]["regularization"] == REG
    assert record["model"]["token"] == back.attrs["model_token"]
    assert len(record["model"]["parameter_fingerprint"]) == 32
    assert record["data"]["x"] == {"name": dx.name, "shape": [16, 3], "dtype": "float64", "chunks": [4, 4, 4, 4]}
    assert {"dask", "dvl_dask", "numpy", "torch", "python"} <= set(record["versions"])

    seq = SequentialInfluenceCalculator(model)
    lazy = seq.influences([(x[:4], y[:4])], [(x[:8], y[:8]), (x[8:], y[8:])])
    stored = open_influence(lazy.to_zarr(tmp_path / "seq.zarr", TorchNumpyConverter()))
    record = provenance_of(stored)
    assert record["method"] == "SequentialInfluenceCalculator.influences"
    assert record["token"] == lazy.token
    assert record["data"]["train_data_iterable"] == {"class": "builtins.list", "length": 2}
    assert record["model"]["parameter_fingerprint"] == json.loads(arr.attrs["provenance"])["model"][
        "parameter_fingerprint"
    ]
