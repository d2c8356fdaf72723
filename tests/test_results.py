"""Result schema, accessor and zarr persistence."""

from __future__ import annotations

import datetime
import json
import os

import dask
import numpy as np
import pytest
import xarray as xr

import dvl_dask
from dvl_dask.errors import InvalidParameterError, ResultExistsError, SchemaError
from dvl_dask.results import merge_results, open_result, to_zarr, valuation_dataset
from dvl_dask.testing.games import AdditiveGame, AirportGame
from dvl_dask.valuation import exact_shapley


def _result(values, stderr, count, names=("a", "b", "c"), **kw):
    return valuation_dataset(
        np.asarray(values, float), np.asarray(stderr, float), np.asarray(count), data_names=list(names),
        method=kw.pop("method", "mc"), utility_token=kw.pop("utility_token", "t0"), n_evaluations=10,
        parameters={"n": 3}, seed=kw.pop("seed", "1"), estimate=kw.pop("estimate", "sample mean"),
    )


@pytest.mark.parametrize("names", [["a", "bb", "ccc"], np.array([10, 20, 30])])
def test_zarr_round_trip_keeps_labels_attrs_dtypes(tmp_path, names):
    ds = _result([0.1, -0.2, 0.3], [0.01, 0.02, 0.0], [5, 6, 7], names=names)
    path = tmp_path / "r.zarr"
    to_zarr(ds, path)
    back = open_result(path)
    assert back["value"].chunks is not None  # opened lazily
    back = back.load()
    created = back.attrs.pop("date_created")  # when it was stored, UTC
    assert abs(datetime.datetime.fromisoformat(created) - datetime.datetime.now(datetime.UTC)).total_seconds() < 600
    xr.testing.assert_identical(back.drop_vars("sample"), ds.drop_vars("sample"))
    assert back["sample"].values.tolist() == list(np.asarray(names).tolist())
    assert back["sample"].dtype.kind == np.asarray(names).dtype.kind
    for v in ("value", "stderr", "counts"):
        assert back[v].dtype == ds[v].dtype
    assert back.attrs == ds.attrs
    assert back.dvl.parameters == {"n": 3}


def test_lazy_result_written_and_read(tmp_path):
    ds = exact_shapley(AirportGame([1.0, 2.0, 4.0]), block_size=2)
    delayed = to_zarr(ds, tmp_path / "lazy.zarr", compute=False)
    assert not (tmp_path / "lazy.zarr").exists()
    delayed.compute(scheduler="sync")
    back = dvl_dask.open_result(str(tmp_path / "lazy.zarr")).compute()
    np.testing.assert_allclose(back["value"].values, AirportGame([1.0, 2.0, 4.0]).shapley_values())
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_refuses_overwrite_unless_asked(tmp_path):
    ds = _result([1, 2, 3], [0, 0, 0], [1, 1, 1])
    to_zarr(ds, tmp_path / "x.zarr")
    with pytest.raises(ResultExistsError, match="overwrite=True") as info:
        to_zarr(ds, tmp_path / "x.zarr")
    assert isinstance(info.value, FileExistsError)
    ds2 = _result([4, 5, 6], [0, 0, 0], [1, 1, 1])
    to_zarr(ds2, tmp_path / "x.zarr", overwrite=True)
    assert open_result(tmp_path / "x.zarr")["value"].values.tolist() == [4, 5, 6]


def test_failed_write_leaves_previous_result_intact(tmp_path):
    good = _result([1, 2, 3], [0, 0, 0], [1, 1, 1])
    to_zarr(good, tmp_path / "x.zarr")

    def boom(x):
        raise RuntimeError("worker died")

    import dask.array as da

    bad = good.copy()
    bad["value"] = ("sample", da.from_array(np.ones(3), chunks=1).map_blocks(boom, dtype=float))
    with pytest.raises(RuntimeError, match="worker died"):
        to_zarr(bad, tmp_path / "x.zarr", overwrite=True)
    assert open_result(tmp_path / "x.zarr")["value"].values.tolist() == [1, 2, 3]
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_incomplete_store_is_refused(tmp_path):
    ds = _result([1, 2, 3], [0, 0, 0], [1, 1, 1], names=[7, 8, 9])
    ds.to_zarr(tmp_path / "partial.zarr", consolidated=False)  # written without the completion marker
    with pytest.raises(SchemaError, match="incomplete"):
        open_result(tmp_path / "partial.zarr")


def test_schema_validation_errors():
    with pytest.raises(SchemaError, match=r"must be an xarray\.Dataset"):
        to_zarr(np.ones(3), "nowhere.zarr")
    ds = _result([1, 2, 3], [0, 0, 0], [1, 1, 1]).drop_vars("stderr")
    with pytest.raises(SchemaError, match="stderr"):
        dvl_dask.results.validate_valuation_dataset(ds)
    with pytest.raises(SchemaError, match="shape"):
        valuation_dataset(np.ones(2), np.ones(3), np.ones(3), data_names=["a", "b", "c"], method="m")


def test_accessor_rank_top_bottom():
    ds = _result([0.1, 0.5, -0.2], [0, 0, 0], [1, 1, 1])
    assert ds.dvl.rank().values.tolist() == [2, 1, 3]
    assert ds.dvl.rank(ascending=True).values.tolist() == [2, 3, 1]
    assert ds.dvl.top_k(2)["sample"].values.tolist() == ["b", "a"]
    assert ds.dvl.bottom_k(1)["sample"].values.tolist() == ["c"]
    assert ds.dvl.top_k(10).sizes["sample"] == 3
    with pytest.raises(InvalidParameterError, match="'k' parameter"):
        ds.dvl.top_k(0)


def test_accessor_sort_is_ascending_like_xarray():
    ds = _result([0.1, 0.5, -0.2], [0, 0, 0], [1, 1, 1])
    assert ds.dvl.sort()["sample"].values.tolist() == ["c", "a", "b"]  # ds.sortby("value") order
    assert ds.dvl.sort(ascending=False)["sample"].values.tolist() == ["b", "a", "c"]
    assert ds.dvl.sort()["value"].values.tolist() == [-0.2, 0.1, 0.5]


_CALLS: list[int] = []


class _CountedGame(AdditiveGame):
    """An additive game that records every evaluation (scheduler="sync": one process, one thread)."""

    def value(self, players):
        _CALLS.append(len(players))
        return super().value(players)


def test_accessor_computes_a_lazy_result_once():
    game = _CountedGame([0.5, -1.0, 2.0, 0.25])
    ds = exact_shapley(game)
    with dask.config.set(scheduler="sync"):
        _CALLS.clear()
        ds.compute()
        once = len(_CALLS)
        assert once >= 2 ** 4  # every coalition at least once
        _CALLS.clear()
        top = ds.dvl.top_k(2)
        bottom = ds.dvl.bottom_k(2)
        ranks = ds.dvl.rank()
        ordered = ds.dvl.sort()
        # reading every variable of what they return runs nothing more
        top["value"].values, top["stderr"].values, top["counts"].values, bottom["value"].values
        ordered["stderr"].values
        assert len(_CALLS) == once
    np.testing.assert_allclose(top["value"].values, [2.0, 0.5])  # additive: Shapley values are the weights
    assert bottom["sample"].values.tolist() == [1, 3] and ranks.values.tolist() == [2, 4, 1, 3]


def test_accessor_sees_a_variable_assigned_in_place():
    ds = _result([0.1, 0.5, -0.2], [0, 0, 0], [1, 1, 1]).chunk()
    assert ds.dvl.top_k(1)["sample"].values.tolist() == ["b"]
    ds["value"] = ds["value"] * -1
    assert ds.dvl.top_k(1)["sample"].values.tolist() == ["c"]


def test_merge_is_count_weighted_with_exact_variance(rng):
    samples_a = rng.normal(size=(7, 3))
    samples_b = rng.normal(size=(12, 3))

    def summarize(s, seed):
        return _result(s.mean(0), s.std(0, ddof=1) / np.sqrt(len(s)), np.full(3, len(s)), seed=seed)

    a, b = summarize(samples_a, "1"), summarize(samples_b, "2")
    merged = a.dvl.merge(b)
    pooled = np.vstack([samples_a, samples_b])
    np.testing.assert_allclose(merged["value"].values, pooled.mean(0))
    # independent estimates: Var((7 a + 12 b) / 19) = (49 s_a^2 + 144 s_b^2) / 19^2
    expected = np.sqrt((7 * a["stderr"].values) ** 2 + (12 * b["stderr"].values) ** 2) / 19
    np.testing.assert_allclose(merged["stderr"].values, expected)
    assert merged["counts"].values.tolist() == [19, 19, 19]
    assert merged.attrs["n_evaluations"] == 20
    assert json.loads(merged.attrs["seed"]) == ["1", "2"]


def test_merge_refuses_other_utility_or_samples():
    a = _result([1, 2, 3], [0, 0, 0], [1, 1, 1])
    with pytest.raises(SchemaError, match="utility_token"):
        merge_results(a, _result([1, 2, 3], [0, 0, 0], [1, 1, 1], utility_token="other"))
    with pytest.raises(InvalidParameterError, match="different samples"):
        merge_results(a, _result([1, 2, 3], [0, 0, 0], [1, 1, 1], names=("x", "y", "z")))
