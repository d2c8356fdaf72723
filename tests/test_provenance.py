"""Results, checkpoints and caches record what their identity was made of (issue 23, part C)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from sklearn.linear_model import LogisticRegression

from dvl_dask import Dataset, Utility, open_result, to_zarr
from dvl_dask.errors import CheckpointMismatchError
from dvl_dask.results import Checkpoint, provenance_of
from dvl_dask.testing.games import AdditiveGame
from dvl_dask.valuation import MaxEvaluations, exact_shapley, permutation_shapley, run_until_converged

LIBRARIES = {"dvl_dask", "numpy", "scikit-learn", "dask", "python"}


def _utility(c: float = 0.5) -> Utility:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(14, 3))
    y = (x[:, 0] + 0.3 * rng.normal(size=14) > 0).astype(np.int64)
    data = Dataset(x[:6], y[:6], x[6:], y[6:], feature_names=["a", "b", "c"])
    return Utility(LogisticRegression(C=c), data, "accuracy")


def _check_utility_provenance(found: dict, u: Utility) -> None:
    assert found["token"] == u.token
    assert found["model"]["class"] == "sklearn.linear_model._logistic.LogisticRegression"
    assert found["model"]["parameters"]["C"] == 0.5 and found["model"]["parameters"]["max_iter"] == 100
    assert found["scorer"]["name"] == "accuracy"
    assert found["scorer"]["score_func"] == "sklearn.metrics._classification.accuracy_score"
    assert found["data"]["fingerprint"] == u.data.fingerprint
    assert found["data"]["arrays"]["x_train"] == {"shape": [6, 3], "dtype": "<f8", "kind": "numpy"}
    assert found["default_score"] == 0.0 and found["catch_errors"] is True
    assert LIBRARIES <= set(found["versions"])
    assert found["versions"]["numpy"] == np.__version__


def test_utility_provenance_is_json_and_describes_the_token():
    u = _utility()
    found = u.provenance()
    assert json.loads(json.dumps(found)) == found
    _check_utility_provenance(found, u)
    found["model"]["class"] = "changed"  # a copy: the utility's record is untouched
    assert u.provenance()["model"]["class"].endswith("LogisticRegression")


def test_result_attrs_keep_provenance_through_zarr(tmp_path):
    u = _utility()
    ds = exact_shapley(u)
    assert provenance_of(ds) == ds.dvl.provenance
    _check_utility_provenance(ds.dvl.provenance, u)
    to_zarr(ds, str(tmp_path / "result.zarr"))
    back = open_result(str(tmp_path / "result.zarr"))
    assert isinstance(back.attrs["provenance"], str)  # zarr-serialisable JSON text, like "parameters"
    _check_utility_provenance(back.dvl.provenance, u)
    assert back.attrs["utility_token"] == back.dvl.provenance["token"]


def test_games_and_user_utilities_have_provenance():
    game = AdditiveGame([1.0, 2.0])
    found = permutation_shapley(game, n_permutations=4, seed=0).dvl.provenance
    assert found["class"] == "dvl_dask.testing.games.AdditiveGame" and found["token"] == game.token
    assert "weights" in found["parameters"] and LIBRARIES <= set(found["versions"])

    class Mine:
        n_players, data_names, token = 2, np.arange(2), "mine-v1"

        def __call__(self, indices):
            return float(len(indices))

    found = exact_shapley(Mine()).dvl.provenance
    assert found["class"].endswith("Mine") and found["token"] == "mine-v1"


def test_results_without_provenance_read_as_none():
    ds = xr.Dataset(attrs={"method": "old"})
    assert provenance_of(ds) is None


def test_checkpoint_header_records_provenance_and_explains_a_refusal(tmp_path):
    url = str(tmp_path / "run.ckpt")
    u = _utility()
    run_until_converged(permutation_shapley, u, stop=MaxEvaluations(20), seed=1, checkpoint=url, progress=False,
                        items_per_block=2)
    header = Checkpoint.open_existing(url).header
    _check_utility_provenance(header["provenance"], u)
    other = _utility(c=2.0)
    with pytest.raises(CheckpointMismatchError, match=r"model\.parameters\.C: stored 0\.5, now 2\.0"):
        run_until_converged(permutation_shapley, other, stop=MaxEvaluations(40), seed=1, checkpoint=url,
                            progress=False, items_per_block=2)
    # Resuming the same run is not refused by the (descriptive) provenance.
    again = run_until_converged(permutation_shapley, _utility(), stop=MaxEvaluations(40), seed=1, checkpoint=url,
                                progress=False, items_per_block=2)
    _check_utility_provenance(again.dvl.provenance, u)


def test_dataset_name_is_recorded_in_provenance_but_not_in_the_fingerprint() -> None:
    import numpy as np
    from sklearn.datasets import load_iris

    from dvl_dask import Dataset
    from dvl_dask.errors import InvalidParameterError

    iris = Dataset.from_sklearn(load_iris, train_size=0.5, seed=0)
    assert iris.name == "iris" and iris.provenance()["name"] == "iris"
    x, y = np.arange(12.0).reshape(6, 2), np.arange(6) % 2
    named = Dataset(x[:4], y[:4], x[4:], y[4:], name="toy")
    assert named.provenance()["name"] == "toy"
    assert named.fingerprint == Dataset(x[:4], y[:4], x[4:], y[4:]).fingerprint
    with pytest.raises(InvalidParameterError, match="'name'"):
        Dataset(x[:4], y[:4], x[4:], y[4:], name=3)
