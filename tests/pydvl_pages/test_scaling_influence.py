"""pyDVL's page "Scaling computation" (influence functions) with ``pydvl`` replaced by ``dvl_dask``.

Source: docs/influence/scaling_computation.md of pyDVL 0.10. Each test runs one code block of
the page as written; only what the page elides is filled in: ``model`` and ``loss`` (a small
trained MLP), the data sets (``TensorDataset``), and the paths (temporary directories). The
page's ``Client(n_workers=4, threads_per_worker=1)`` is the test suite's shared cluster of two
single-threaded worker processes (same kind of cluster, within the suite's time budget), and
its ``to_zarr("path/or/url")`` gets an absolute path: worker processes write the chunks relative
to *their* working directory, so with a relative path the client's store holds only fill values
(docs/migrating-from-pydvl.md says so). The
results are checked against the explicit inverse of the regularised Hessian (DirectInfluence),
to the accuracy of CG (relative residual 1e-7 on a curvature of condition number ~1e3).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader  # noqa: E402

pytestmark = pytest.mark.torch


def _reference(small_mlp) -> np.ndarray:
    """Influences of every test point on every training point, with the explicit inverse Hessian."""
    from dvl_dask.influence.torch import DirectInfluence

    train, test = small_mlp.train_data_set.tensors, small_mlp.test_data_set.tensors
    direct = DirectInfluence(small_mlp.model, small_mlp.loss, regularization=0.01)
    direct = direct.fit(DataLoader(small_mlp.train_data_set))
    return direct.influences(test[0], test[1], train[0], train[1]).numpy()


def test_sequential(small_mlp, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    model, loss = small_mlp.model, small_mlp.loss

    # -- the page's block, pydvl -> dvl_dask --
    from dvl_dask.influence import SequentialInfluenceCalculator
    from dvl_dask.influence.torch import CgInfluence
    from dvl_dask.influence.torch.util import (
        NestedTorchCatAggregator,
        TorchNumpyConverter,
    )

    batch_size = 10
    train_dataloader = DataLoader(small_mlp.train_data_set, batch_size=batch_size)
    test_dataloader = DataLoader(small_mlp.test_data_set, batch_size=batch_size)

    infl_model = CgInfluence(model, loss, hessian_regularization=0.01)
    infl_model = infl_model.fit(train_dataloader)

    infl_calc = SequentialInfluenceCalculator(infl_model)

    # this does not trigger the computation
    lazy_influences = infl_calc.influences(test_dataloader, train_dataloader)

    # trigger computation and pull the result into main memory,
    # result is the full tensor for all combinations of the two loaders
    influences = lazy_influences.compute(aggregator=NestedTorchCatAggregator())
    # or
    # trigger computation and write results chunk-wise to disk using zarr
    # in a sequential manner
    lazy_influences.to_zarr("local_path/or/url", TorchNumpyConverter())
    # -- end of the page's block --

    expected = _reference(small_mlp)
    assert isinstance(influences, torch.Tensor) and influences.shape == (10, 40)
    np.testing.assert_allclose(influences.numpy(), expected, rtol=1e-4, atol=1e-7)

    from dvl_dask import open_influence

    stored = open_influence(tmp_path / "local_path/or/url")
    np.testing.assert_allclose(np.asarray(stored), expected, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
@pytest.mark.distributed
def test_parallel(small_mlp, local_cluster, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    model, loss = small_mlp.model, small_mlp.loss

    # -- the page's block, pydvl -> dvl_dask --
    import torch
    from distributed import Client
    from torch.utils.data import DataLoader, Dataset

    from dvl_dask.influence import DaskInfluenceCalculator
    from dvl_dask.influence.torch import CgInfluence
    from dvl_dask.influence.torch.util import (
        TorchNumpyConverter,
        torch_dataset_to_dask_array,
    )

    train_data_set: Dataset = small_mlp.train_data_set  # Possible some out of memory large Dataset
    test_data_set: Dataset = small_mlp.test_data_set  # Possible some out of memory large Dataset

    train_dataloader = DataLoader(train_data_set)
    infl_model = CgInfluence(model, loss, hessian_regularization=0.01)
    infl_model = infl_model.fit(train_dataloader)

    # wrap your input data into dask arrays
    chunk_size = 10
    da_x, da_y = torch_dataset_to_dask_array(train_data_set, chunk_size=chunk_size)
    da_x_test, da_y_test = torch_dataset_to_dask_array(test_data_set, chunk_size=chunk_size)

    # use only one thread for scheduling,
    # due to non-thread safety of some torch operations
    client = Client(local_cluster)  # the page: Client(n_workers=4, threads_per_worker=1)
    try:  # (not on the page: the client is closed even if the computation fails)
        infl_calc = DaskInfluenceCalculator(infl_model,
                                            converter=TorchNumpyConverter(
                                                device=torch.device("cpu")
                                            ),
                                            client=client)
        da_influences = infl_calc.influences(da_x_test, da_y_test, da_x, da_y)
        # da_influences is a dask.array.Array
        # trigger computation and write chunks to disk in parallel
        da_influences.to_zarr(str(tmp_path / "path/or/url"))  # the page: "path/or/url" (see below)
        # -- end of the page's block --

        import zarr

        stored = np.asarray(zarr.open(str(tmp_path / "path/or/url"), mode="r")[...])
        np.testing.assert_allclose(stored, _reference(small_mlp), rtol=1e-4, atol=1e-7)
        assert da_influences.chunks == ((10,), (10, 10, 10, 10))
    finally:
        client.close()


def test_disable_client_single_thread_check(small_mlp) -> None:
    from dvl_dask.influence.torch import CgInfluence
    from dvl_dask.influence.torch.util import TorchNumpyConverter, torch_dataset_to_dask_array

    infl_model = CgInfluence(small_mlp.model, small_mlp.loss, hessian_regularization=0.01)
    infl_model = infl_model.fit(DataLoader(small_mlp.train_data_set, batch_size=40))
    da_x, da_y = torch_dataset_to_dask_array(small_mlp.train_data_set, chunk_size=10)
    da_x_test, da_y_test = torch_dataset_to_dask_array(small_mlp.test_data_set, chunk_size=5)

    # -- the page's block, pydvl -> dvl_dask --
    from dvl_dask.influence import DisableClientSingleThreadCheck

    infl_calc = DaskInfluenceCalculator(infl_model,
                                        TorchNumpyConverter(device=torch.device("cpu")),
                                        DisableClientSingleThreadCheck)
    da_influences = infl_calc.influences(da_x_test, da_y_test, da_x, da_y)
    influences = da_influences.compute(scheduler="synchronous")  # the page discards the result
    # -- end of the page's block --

    np.testing.assert_allclose(influences, _reference(small_mlp), rtol=1e-4, atol=1e-7)


from dvl_dask.influence import DaskInfluenceCalculator  # noqa: E402  (imported by the page's earlier block)
