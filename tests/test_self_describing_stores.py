"""Every store dvl_dask writes opens with plain ``xr.open_zarr`` without a warning and describes itself."""

from __future__ import annotations

import json
import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from dvl_dask import influence_to_zarr, open_result, to_zarr
from dvl_dask.results import influence_dataarray
from dvl_dask.testing.games import AdditiveGame
from dvl_dask.valuation import MaxUpdates, exact_shapley, permutation_shapley, run_until_converged

GAME = AdditiveGame([1.0, 2.0, 3.0])


def _open_strictly(url: str) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return xr.open_zarr(url)


def _described(var: xr.DataArray) -> bool:
    return bool(var.attrs.get("long_name")) and bool(var.attrs.get("description"))


def test_valuation_result_opens_without_warning_and_round_trips_provenance(tmp_path):
    ds = exact_shapley(GAME)
    url = str(tmp_path / "values.zarr")
    to_zarr(ds, url)
    plain = _open_strictly(url)
    np.testing.assert_allclose(plain["value"].values, [1.0, 2.0, 3.0])
    for name in ("value", "stderr", "counts", "sample"):
        assert _described(plain[name]), name
    assert plain["value"].attrs["units"] == "units of the utility's score" and plain["counts"].attrs["units"] == "1"
    back = open_result(url)
    for key in ("method", "parameters", "seed", "utility_token", "provenance", "dvl_dask_version"):
        assert back.attrs[key] == ds.attrs[key], key
    provenance = json.loads(back.attrs["provenance"])
    assert provenance["class"].endswith("AdditiveGame") and provenance["token"] == GAME.token
    assert {"dvl_dask", "numpy", "dask"} <= set(provenance["versions"])
    assert "date_created" in back.attrs
    # written again (e.g. after a merge or a copy): still consolidated and described
    again = str(tmp_path / "again.zarr")
    to_zarr(back, again)
    assert _described(_open_strictly(again)["value"])


def test_influence_store_opens_without_warning(tmp_path):
    values = influence_dataarray(da.from_array(np.arange(12.0).reshape(3, 4), chunks=(2, 2)),
                                 attrs={"mode": "up", "model": "demo"})
    url = str(tmp_path / "influences.zarr")
    influence_to_zarr(values, url)
    plain = _open_strictly(url)
    np.testing.assert_array_equal(plain["influence"].values, np.arange(12.0).reshape(3, 4))
    for name in ("influence", "test_sample", "train_sample"):
        assert _described(plain[name]), name
    assert "_dvl_progress" not in plain  # progress markers are gone, not in the consolidated metadata


@pytest.mark.parametrize("blocks", [2, 3])  # created, then appended to
def test_checkpoint_opens_without_warning(tmp_path, blocks):
    url = str(tmp_path / "ck.zarr")
    run_until_converged(permutation_shapley, GAME, stop=MaxUpdates(2), seed=0, checkpoint=url, items_per_block=1,
                        progress=False)
    if blocks == 3:
        run_until_converged(permutation_shapley, GAME, stop=MaxUpdates(3), seed=0, checkpoint=url,
                            items_per_block=1, progress=False)
    plain = _open_strictly(url)
    assert plain["evaluations"].sizes["block"] == blocks and plain["stats"].dims[-1] == "sample"
    assert (plain["evaluations"].values > 0).all()
    assert _described(plain["stats"]) and _described(plain["evaluations"])
    assert plain.attrs["method"] == "permutation_shapley"
