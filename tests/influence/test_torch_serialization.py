"""Influence models survive cloudpickle; torch objects get deterministic dask tokens."""

from __future__ import annotations

import subprocess
import sys

import cloudpickle
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from helpers import torch_model_builders  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from dvl_dask.influence.torch import DirectInfluence  # noqa: E402
from dvl_dask.keys import fingerprint  # noqa: E402

pytestmark = pytest.mark.torch

BUILDERS = torch_model_builders()


@pytest.mark.parametrize("name", list(BUILDERS))
def test_fitted_model_round_trips_through_cloudpickle(name, mlp_classifier):
    p = mlp_classifier
    # A lambda loss and a DataLoader exercise cloudpickle's by-value path.
    loss = lambda out, y: F.cross_entropy(out, y)  # noqa: E731
    infl = BUILDERS[name](p.model, loss).fit(DataLoader(TensorDataset(p.x, p.y), batch_size=16))
    expected = infl.influences(p.x_test, p.y_test, p.x, p.y)
    clone = cloudpickle.loads(cloudpickle.dumps(infl))
    assert clone.is_fitted and not clone.is_thread_safe
    assert clone.n_parameters == infl.n_parameters
    assert torch.equal(clone.influences(p.x_test, p.y_test, p.x, p.y), expected)
    factors = infl.influence_factors(p.x_test[:2], p.y_test[:2])
    assert torch.equal(
        clone.influences_from_factors(factors, p.x[:3], p.y[:3], "perturbation"),
        infl.influences_from_factors(factors, p.x[:3], p.y[:3], "perturbation"),
    )


def test_unfitted_model_round_trips(mlp_regressor):
    infl = DirectInfluence(mlp_regressor.model, F.mse_loss)
    clone = cloudpickle.loads(cloudpickle.dumps(infl))
    assert not clone.is_fitted
    clone.fit((mlp_regressor.x, mlp_regressor.y))
    assert clone.is_fitted


def _check_tokenize(obj):
    """dvl_dask's tokens: idempotent and stable through one and two cloudpickle round trips (as dask tests)."""
    token = fingerprint(obj)
    assert token == fingerprint(obj)
    once = cloudpickle.loads(cloudpickle.dumps(obj))
    assert fingerprint(once) == token
    twice = cloudpickle.loads(cloudpickle.dumps(once))
    assert fingerprint(twice) == token
    return token


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.arange(12, dtype=torch.float64).reshape(3, 4),
        lambda: torch.arange(12, dtype=torch.float64).reshape(3, 4).T,  # non-contiguous
        lambda: torch.tensor(3.5),
        lambda: torch.zeros(0, 2),
        lambda: torch.ones(3, dtype=torch.bool),
        lambda: torch.ones(3, dtype=torch.bfloat16),
        lambda: nn.Parameter(torch.ones(2, 2)),
    ],
    ids=["float64", "transposed", "scalar", "empty", "bool", "bfloat16", "parameter"],
)
def test_tensor_tokens(make):
    token = _check_tokenize(make())
    assert token == fingerprint(make())  # equal values, equal tokens


def test_tensor_tokens_depend_on_values_dtype_and_shape():
    a = torch.arange(6, dtype=torch.float32)
    tokens = {
        fingerprint(t) for t in (a, a + 1, a.double(), a.reshape(2, 3), a.to(torch.int32))
    }
    assert len(tokens) == 5


def test_module_tokens(mlp_regressor):
    model = mlp_regressor.model
    token = _check_tokenize(model)
    assert fingerprint(model) == fingerprint(cloudpickle.loads(cloudpickle.dumps(model)))
    other = cloudpickle.loads(cloudpickle.dumps(model))
    with torch.no_grad():
        other[0].weight[0, 0] += 1e-12
    assert fingerprint(other) != token
    other = cloudpickle.loads(cloudpickle.dumps(model))
    other[0].weight.requires_grad_(False)
    assert fingerprint(other) != token
    other = cloudpickle.loads(cloudpickle.dumps(model)).train(False)
    assert fingerprint(other) != token
    # Same parameters, other hyper-parameters: the repr tells them apart.
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1))
    b = cloudpickle.loads(cloudpickle.dumps(a))
    b[1].p = 0.2
    assert fingerprint(a) != fingerprint(b)


def test_keys_registers_torch_lazily_and_stays_torch_free():
    code = (
        "import sys\n"
        "import dvl_dask.keys, dvl_dask.influence\n"
        "assert 'torch' not in sys.modules, 'importing keys or influence imported torch'\n"
        "import torch\n"
        "from dvl_dask.keys import fingerprint\n"
        "a = fingerprint(torch.arange(3.0), torch.nn.Linear(2, 1))\n"
        "assert 'dvl_dask.influence.torch._tokenize' in sys.modules\n"
        "torch.manual_seed(0)\n"
        "print(fingerprint(torch.arange(3.0)))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == fingerprint(torch.arange(3.0))  # same token in another process


def test_torchscript_module_tokens_cover_weights_and_compiled_code():
    """A scripted module hashes by its compiled code and weights (its ScriptMethods are not values)."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    scripted = torch.jit.script(base)
    same = torch.jit.script(base)
    assert fingerprint(scripted) == fingerprint(same)
    other_code = torch.jit.script(nn.Sequential(base[0], nn.ReLU(), base[2]))  # same weights, other forward
    assert fingerprint(other_code) != fingerprint(scripted)
    import copy

    moved = torch.jit.script(copy.deepcopy(base))
    assert fingerprint(moved) == fingerprint(scripted)
    with torch.no_grad():
        moved[0].weight[0, 0] += 1.0
    assert fingerprint(moved) != fingerprint(scripted)
