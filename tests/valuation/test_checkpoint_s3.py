"""Checkpoints and results on an S3-compatible server (moto, on loopback)."""

from __future__ import annotations

import numpy as np
import pytest

import dvl_dask
from dvl_dask.testing.games import AirportGame
from dvl_dask.valuation import MaxEvaluations, load_checkpoint, msr_banzhaf, run_until_converged

pytestmark = pytest.mark.s3

GAME = AirportGame([1.0, 2.0, 3.0, 5.0])


def test_checkpoint_on_s3_resumes(s3_bucket):
    prefix, options = s3_bucket
    url = f"{prefix}/runs/msr.zarr"
    kwargs = dict(seed=2, items_per_block=25, window=2, progress=False, storage_options=options)
    run_until_converged(msr_banzhaf, GAME, stop=MaxEvaluations(100), checkpoint=url, **kwargs)
    resumed = run_until_converged(msr_banzhaf, GAME, stop=MaxEvaluations(250), checkpoint=url, **kwargs)
    direct = run_until_converged(msr_banzhaf, GAME, stop=MaxEvaluations(250), seed=2, items_per_block=25,
                                 window=2, progress=False)
    np.testing.assert_array_equal(resumed["value"].values, direct["value"].values)
    assert load_checkpoint(url, storage_options=options).attrs["n_blocks"] == resumed.attrs["n_blocks"]


def test_result_round_trip_on_s3(s3_bucket):
    prefix, options = s3_bucket
    ds = msr_banzhaf(GAME, n_samples=60, seed=0, items_per_block=20)
    url = f"{prefix}/values.zarr"
    dvl_dask.to_zarr(ds, url, storage_options=options)
    back = dvl_dask.open_result(url, storage_options=options).compute()
    np.testing.assert_array_equal(back["value"].values, ds["value"].values)
    assert back.attrs["method"] == "msr_banzhaf"
    with pytest.raises(dvl_dask.errors.ResultExistsError):
        dvl_dask.to_zarr(ds, url, storage_options=options)


def test_s3_without_credentials_is_a_clear_error(s3_bucket, monkeypatch):
    # issue 25: a raw botocore NoCredentialsError traceback
    prefix, options = s3_bucket
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    bare = {"endpoint_url": options["endpoint_url"]}  # no key, no secret
    ds = msr_banzhaf(GAME, n_samples=20, seed=0, items_per_block=20)
    calls = {
        "to_zarr": lambda: dvl_dask.to_zarr(ds, f"{prefix}/v.zarr", storage_options=bare),
        "open_result": lambda: dvl_dask.open_result(f"{prefix}/v.zarr", storage_options=bare),
        "open_influence": lambda: dvl_dask.open_influence(f"{prefix}/i.zarr", storage_options=bare),
        "run_until_converged": lambda: run_until_converged(
            msr_banzhaf, GAME, stop=MaxEvaluations(10), checkpoint=f"{prefix}/c.zarr", storage_options=bare,
            progress=False),
    }
    for owner, call in calls.items():
        with pytest.raises(dvl_dask.errors.StoreAccessError, match="no credentials were found") as info:
            call()
        assert (owner if owner != "run_until_converged" else "checkpoint") in str(info.value)
        assert "storage_options" in str(info.value)
        assert isinstance(info.value, PermissionError)
