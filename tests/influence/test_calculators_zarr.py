"""Influence results in zarr: round trips (local, S3), labels, chunking, interrupted writes resumed."""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
import pytest
import xarray as xr

torch = pytest.importorskip("torch")

import dvl_dask  # noqa: E402
from dvl_dask import open_influence  # noqa: E402
from dvl_dask.errors import ResultExistsError, SchemaError  # noqa: E402
from dvl_dask.influence import (  # noqa: E402
    DaskInfluenceCalculator,
    DisableClientSingleThreadCheck,
    InfluenceFunctionModel,
    SequentialInfluenceCalculator,
    influence_to_zarr,
)
from dvl_dask.influence.torch import DirectInfluence, TorchNumpyConverter  # noqa: E402
from dvl_dask.testing import raise_if_dask_computes  # noqa: E402

pytestmark = pytest.mark.torch

TEST_NAMES = [f"test-{i}" for i in range(10)]
TRAIN_NAMES = np.arange(100, 150)


class FlakyInfluence(InfluenceFunctionModel):
    """Delegates to a fitted model; the n-th contraction raises once (a crash), calls are counted."""

    def __init__(self, inner, fail_at=None):
        self.inner = inner
        self.fail_at = fail_at
        self.contractions = 0

    n_parameters = property(lambda self: self.inner.n_parameters)
    is_fitted = property(lambda self: self.inner.is_fitted)
    input_shapes = property(lambda self: self.inner.input_shapes)
    dtype = property(lambda self: self.inner.dtype)

    def fit(self, data):
        return self

    def __dask_tokenize__(self):
        return ("flaky", self.inner)  # the same computation as the wrapped model, whatever the counters

    def _influence_factors(self, x, y):
        return self.inner.influence_factors(x, y)

    def _influences_from_factors(self, factors, x, y, mode):
        self.contractions += 1
        if self.fail_at is not None and self.contractions == self.fail_at:
            raise KeyboardInterrupt("simulated crash")
        return self.inner.influences_from_factors(factors, x, y, mode)


@pytest.fixture(scope="module")
def fitted(mlp_regressor):
    p = mlp_regressor
    model = DirectInfluence(p.model, p.loss, regularization=0.01).fit((p.x, p.y))
    return p, model, model.influences(p.x_test, p.y_test, p.x, p.y).numpy()


def _pairs(x, y, size):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def _dask(t, size):
    return da.from_array(t.numpy(), chunks=(size,) + (-1,) * (t.ndim - 1))


def _check_stored(url, expected, chunks, storage_options=None):
    back = open_influence(url, storage_options=storage_options)
    assert back.dims == ("test_sample", "train_sample")
    assert back.chunks == chunks  # opened lazily, with the stored chunking
    assert back.test_sample.values.tolist() == TEST_NAMES
    assert back.train_sample.values.tolist() == TRAIN_NAMES.tolist()
    np.testing.assert_allclose(back.values, expected, rtol=1e-10, atol=1e-12)
    # Plain xarray reads it too (no dvl_dask needed downstream).
    raw = xr.open_zarr(_store(url, storage_options), consolidated=False)
    assert list(raw.data_vars) == ["influence"]
    return back


def _store(url, storage_options):
    if storage_options is None:
        return url
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(url, storage_options=storage_options, read_only=True)


def test_sequential_to_zarr_round_trip(fitted, tmp_path):
    p, model, expected = fitted
    lazy = SequentialInfluenceCalculator(model).influences(_pairs(p.x_test, p.y_test, 5), _pairs(p.x, p.y, 20))
    url = lazy.to_zarr(tmp_path / "seq.zarr", TorchNumpyConverter(), test_names=TEST_NAMES, train_names=TRAIN_NAMES)
    assert url == str(tmp_path / "seq.zarr")
    back = _check_stored(url, expected, ((5, 5), (20, 20, 10)))
    assert back.attrs["mode"] == "up" and back.attrs["train_gradients"].startswith("stored")
    assert "_dvl_progress" not in os.listdir(url)  # progress markers removed once complete
    with pytest.raises(ResultExistsError, match="overwrite=True"):
        lazy.to_zarr(url, TorchNumpyConverter())
    stored = lazy.to_zarr(url, TorchNumpyConverter(), overwrite=True, return_stored=True)
    np.testing.assert_allclose(stored.values, expected, rtol=1e-10, atol=1e-12)


def test_dask_to_zarr_round_trip_is_lazy_and_keeps_labels(fitted, tmp_path):
    p, model, expected = fitted
    calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), DisableClientSingleThreadCheck)
    arr = calc.influences(_dask(p.x_test, 4), _dask(p.y_test, 4), _dask(p.x, 16), _dask(p.y, 16), as_xarray=True,
                          test_names=TEST_NAMES, train_names=TRAIN_NAMES)
    url = str(tmp_path / "dask.zarr")
    with raise_if_dask_computes():
        delayed = influence_to_zarr(arr, url, compute=False)
    assert delayed.compute(scheduler="sync") == url
    back = _check_stored(url, expected, ((4, 4, 2), (16, 16, 16, 2)))
    assert back.attrs["model"] == "DirectInfluence"
    with pytest.raises(SchemaError, match="influence_to_zarr"):
        dvl_dask.to_zarr(arr, tmp_path / "wrong-writer.zarr")
    # xarray's own to_zarr works lazily on the labelled result too (regular chunks; numeric labels
    # here, as zarr v3 has no specification for fixed-width strings).
    arr = arr.assign_coords(test_sample=np.arange(10))
    with raise_if_dask_computes():
        arr.to_dataset().to_zarr(tmp_path / "xr.zarr", consolidated=False, zarr_format=3, compute=False)
    arr.to_dataset().to_zarr(tmp_path / "xr.zarr", consolidated=False, zarr_format=3, mode="w")
    np.testing.assert_allclose(xr.open_zarr(tmp_path / "xr.zarr", consolidated=False)["influence"].values, expected)


def test_uneven_chunks_are_regularised_for_zarr(fitted, tmp_path):
    p, model, expected = fitted
    calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), DisableClientSingleThreadCheck)
    xt = da.from_array(p.x_test.numpy(), chunks=((3, 5, 2), -1))
    yt = da.from_array(p.y_test.numpy(), chunks=((3, 5, 2), -1))
    x = da.from_array(p.x.numpy(), chunks=((7, 20, 4, 19), -1))
    y = da.from_array(p.y.numpy(), chunks=((7, 20, 4, 19), -1))
    values = calc.influences(xt, yt, x, y)
    url = influence_to_zarr(values, tmp_path / "uneven.zarr", test_names=TEST_NAMES, train_names=TRAIN_NAMES)
    _check_stored(url, expected, ((5, 5), (20, 20, 10)))  # every zarr chunk written by exactly one task
    seq = SequentialInfluenceCalculator(model).influences(
        [(p.x_test[:3], p.y_test[:3]), (p.x_test[3:], p.y_test[3:])], _pairs(p.x, p.y, 20)
    )
    url = seq.to_zarr(tmp_path / "seq-uneven.zarr", test_names=TEST_NAMES, train_names=TRAIN_NAMES)
    _check_stored(url, expected, ((7, 3), (20, 20, 10)))  # blocks straddle zarr chunks, written in turn


def test_factors_to_zarr(fitted, tmp_path):
    p, model, _ = fitted
    factors = SequentialInfluenceCalculator(model).influence_factors(_pairs(p.x_test, p.y_test, 4))
    back = factors.to_zarr(tmp_path / "f.zarr", return_stored=True, names=TEST_NAMES)
    assert back.dims == ("test_sample", "parameter") and back.name == "influence_factors"
    np.testing.assert_allclose(back.values, model.influence_factors(p.x_test, p.y_test).numpy())


@pytest.mark.parametrize("engine", ["sequential", "dask"])
def test_interrupted_write_resumes_without_recomputing_finished_blocks(fitted, tmp_path, engine):
    p, model, expected = fitted
    url = str(tmp_path / f"{engine}.zarr")
    n_blocks = 2 * 3

    def write(flaky):
        if engine == "sequential":
            calc = SequentialInfluenceCalculator(flaky, train_gradients="recompute")
            lazy = calc.influences(_pairs(p.x_test, p.y_test, 5), _pairs(p.x, p.y, 20))
            return lazy.to_zarr(url, TorchNumpyConverter(), test_names=TEST_NAMES, train_names=TRAIN_NAMES)
        calc = DaskInfluenceCalculator(flaky, TorchNumpyConverter(), DisableClientSingleThreadCheck,
                                       train_gradients="recompute")
        values = calc.influences(_dask(p.x_test, 5), _dask(p.y_test, 5), _dask(p.x, 20), _dask(p.y, 20))
        delayed = influence_to_zarr(values, url, test_names=TEST_NAMES, train_names=TRAIN_NAMES, compute=False)
        return delayed.compute(scheduler="sync")

    crashing = FlakyInfluence(model, fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        write(crashing)
    with pytest.raises(SchemaError, match="incomplete"):
        open_influence(url)
    resumed = FlakyInfluence(model)
    assert write(resumed) == url
    assert resumed.contractions == n_blocks - 3  # the 3 blocks stored before the crash were skipped
    _check_stored(url, expected, ((5, 5), (20, 20, 10)))


@pytest.mark.parametrize("engine", ["sequential", "dask"])
def test_repair_recomputes_only_the_damaged_block(fitted, tmp_path, engine):
    # issue 25: a damaged chunk of a complete store was only repairable by rewriting the whole matrix
    p, model, expected = fitted
    url = str(tmp_path / f"{engine}.zarr")

    def write(counting, **options):
        if engine == "sequential":
            calc = SequentialInfluenceCalculator(counting, train_gradients="recompute")
            lazy = calc.influences(_pairs(p.x_test, p.y_test, 5), _pairs(p.x, p.y, 20))
            return lazy.to_zarr(url, TorchNumpyConverter(), test_names=TEST_NAMES, train_names=TRAIN_NAMES,
                                **options)
        calc = DaskInfluenceCalculator(counting, TorchNumpyConverter(), DisableClientSingleThreadCheck,
                                       train_gradients="recompute")
        values = calc.influences(_dask(p.x_test, 5), _dask(p.y_test, 5), _dask(p.x, 20), _dask(p.y, 20))
        delayed = influence_to_zarr(values, url, test_names=TEST_NAMES, train_names=TRAIN_NAMES, compute=False,
                                    **options)
        return delayed.compute(scheduler="sync")

    write(FlakyInfluence(model))
    first = open_influence(url).values
    os.remove(os.path.join(url, "influence", "c", "1", "2"))
    repairing = FlakyInfluence(model)
    assert write(repairing, repair=True) == url
    assert repairing.contractions == 1  # one block of six recomputed
    assert open_influence(url).values.tobytes() == first.tobytes()
    _check_stored(url, expected, ((5, 5), (20, 20, 10)))


def test_interrupted_write_of_another_computation_is_not_mixed_in(fitted, tmp_path):
    p, model, _ = fitted
    url = str(tmp_path / "other.zarr")
    calc = SequentialInfluenceCalculator(FlakyInfluence(model, fail_at=2), train_gradients="recompute")
    with pytest.raises(KeyboardInterrupt):
        calc.influences(_pairs(p.x_test, p.y_test, 5), _pairs(p.x, p.y, 20)).to_zarr(url)
    other = SequentialInfluenceCalculator(model).influences(_pairs(p.x_test, p.y_test, 5), _pairs(p.x, p.y, 25))
    with pytest.raises(ResultExistsError, match="another computation"):
        other.to_zarr(url)
    assert other.to_zarr(url, overwrite=True) == url
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("keep me")
    with pytest.raises(ResultExistsError, match="did not write"):
        other.to_zarr(tmp_path / "plain")
    with pytest.raises(ResultExistsError, match="never deletes"):  # not even with overwrite=True
        other.to_zarr(tmp_path / "plain", overwrite=True)
    assert (tmp_path / "plain" / "notes.txt").read_text() == "keep me"


@pytest.mark.s3
def test_s3_round_trip_both_engines(fitted, s3_bucket):
    p, model, expected = fitted
    prefix, storage_options = s3_bucket
    seq = SequentialInfluenceCalculator(model).influences(_pairs(p.x_test, p.y_test, 5), _pairs(p.x, p.y, 25))
    url = seq.to_zarr(f"{prefix}/seq.zarr", TorchNumpyConverter(), storage_options=storage_options,
                      test_names=TEST_NAMES, train_names=TRAIN_NAMES)
    _check_stored(url, expected, ((5, 5), (25, 25)), storage_options)

    calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), DisableClientSingleThreadCheck)
    values = calc.influences(_dask(p.x_test, 5), _dask(p.y_test, 5), _dask(p.x, 25), _dask(p.y, 25), as_xarray=True,
                             test_names=TEST_NAMES, train_names=TRAIN_NAMES)
    url = influence_to_zarr(values, f"{prefix}/dask.zarr", storage_options=storage_options)
    _check_stored(url, expected, ((5, 5), (25, 25)), storage_options)
    with pytest.raises(ResultExistsError):
        influence_to_zarr(values, f"{prefix}/dask.zarr", storage_options=storage_options)


@pytest.mark.s3
def test_s3_interrupted_write_resumes(fitted, s3_bucket):
    p, model, expected = fitted
    prefix, storage_options = s3_bucket
    url = f"{prefix}/resumed.zarr"

    def write(flaky):
        calc = DaskInfluenceCalculator(flaky, TorchNumpyConverter(), DisableClientSingleThreadCheck,
                                       train_gradients="recompute")
        values = calc.influences(_dask(p.x_test, 5), _dask(p.y_test, 5), _dask(p.x, 25), _dask(p.y, 25))
        delayed = influence_to_zarr(values, url, storage_options=storage_options, test_names=TEST_NAMES,
                                    train_names=TRAIN_NAMES, compute=False)
        return delayed.compute(scheduler="sync")

    with pytest.raises(KeyboardInterrupt):
        write(FlakyInfluence(model, fail_at=3))
    resumed = FlakyInfluence(model)
    assert write(resumed) == url and resumed.contractions == 2
    _check_stored(url, expected, ((5, 5), (25, 25)), storage_options)
