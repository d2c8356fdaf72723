"""pyDVL's keywords of the influence models and calculators, and ``dvl_dask.influence.torch.util``."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import dvl_dask.influence.torch as torch_influence  # noqa: E402
from dvl_dask.influence import (  # noqa: E402
    DaskInfluenceCalculator,
    DisableClientSingleThreadCheck,
    SequentialInfluenceCalculator,
)
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


def test_util_module_exposes_pydvl_names() -> None:
    from dvl_dask.influence.torch import util

    for name in ("TorchNumpyConverter", "NestedTorchCatAggregator", "TorchCatAggregator",
                 "torch_dataset_to_dask_array"):
        assert getattr(util, name) is getattr(torch_influence, name)
    from dvl_dask.influence import BlockMode, SecondOrderMode

    assert util.BlockMode is BlockMode and util.SecondOrderMode is SecondOrderMode


@pytest.mark.parametrize(
    "cls, extra",
    [
        (DirectInfluence, {}),
        (CgInfluence, {}),
        (LissaInfluence, {"maxiter": 5}),
        (ArnoldiInfluence, {"rank": 4}),
        (EkfacInfluence, {}),
        (NystroemSketchInfluence, {"rank": 4}),
        (InverseHarmonicMeanInfluence, {}),
    ],
)
def test_hessian_regularization_is_regularization(cls, extra, mlp_regressor) -> None:
    p = mlp_regressor
    model = cls(p.model, p.loss, hessian_regularization=0.25, **extra)
    assert model.regularization == 0.25
    with pytest.raises(TypeError, match=f"{cls.__name__}\\(\\) got 'regularization' and its synonym"):
        cls(p.model, p.loss, regularization=0.25, hessian_regularization=0.25, **extra)


def test_arnoldi_rank_estimate_and_ekfac_update_diagonal(mlp_regressor) -> None:
    p = mlp_regressor
    loader = DataLoader(TensorDataset(p.x, p.y), batch_size=25)
    a = ArnoldiInfluence(p.model, p.loss, rank_estimate=5, hessian_regularization=0.1).fit(loader)
    b = ArnoldiInfluence(p.model, p.loss, rank=5, regularization=0.1).fit(loader)
    assert a.rank == 5
    torch.testing.assert_close(a.influences(p.x_test, p.y_test, p.x, p.y), b.influences(p.x_test, p.y_test, p.x, p.y))
    assert ArnoldiInfluence(p.model, p.loss).rank == 10  # pyDVL's default
    with pytest.raises(TypeError, match="got 'rank' and its synonym 'rank_estimate'"):
        ArnoldiInfluence(p.model, p.loss, 5, rank_estimate=5)

    assert EkfacInfluence(p.model, p.loss, update_diagonal=False).eigenvalue_correction is False
    assert EkfacInfluence(p.model, p.loss, update_diagonal=True).eigenvalue_correction is True


def test_z_test_factors_keyword(mlp_regressor) -> None:
    p = mlp_regressor
    loader = DataLoader(TensorDataset(p.x, p.y), batch_size=25)
    model = DirectInfluence(p.model, p.loss, hessian_regularization=0.1).fit(loader)
    factors = model.influence_factors(p.x_test, p.y_test)
    expected = model.influences(p.x_test, p.y_test, p.x, p.y)
    torch.testing.assert_close(model.influences_from_factors(z_test_factors=factors, x=p.x, y=p.y), expected)
    with pytest.raises(TypeError, match="got 'factors' and its synonym 'z_test_factors'"):
        model.influences_from_factors(factors, p.x, p.y, z_test_factors=factors)

    seq = SequentialInfluenceCalculator(model)
    train = DataLoader(TensorDataset(p.x, p.y), batch_size=20)
    lazy = seq.influences_from_factors(z_test_factors=[factors[:4], factors[4:]], train_data_iterable=train)
    torch.testing.assert_close(lazy.compute(aggregator=torch_influence.NestedTorchCatAggregator()), expected)

    from dvl_dask.influence.torch.util import TorchNumpyConverter

    calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), DisableClientSingleThreadCheck)
    x, y = da.from_array(p.x.numpy(), chunks=(20, 3)), da.from_array(p.y.numpy(), chunks=(20, 1))
    da_factors = da.from_array(factors.numpy(), chunks=(5, factors.shape[1]))
    out = calc.influences_from_factors(z_test_factors=da_factors, x=x, y=y).compute(scheduler="synchronous")
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-10, atol=1e-12)
