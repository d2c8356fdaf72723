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

from dvl_dask.influence import DaskInfluenceCalculator, DisableClientSingleThreadCheck  # noqa: E402
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
