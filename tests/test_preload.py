"""dvl_dask.preload: workers import the block code and the configured modules at start-up."""

from __future__ import annotations

import subprocess
import sys

import dask
import pytest

from dvl_dask import config
from dvl_dask.errors import InvalidParameterError
from dvl_dask.preload import dask_setup, preload_modules


def test_preload_imports_the_configured_modules_and_skips_missing_ones():
    with dask.config.set({config.COMPUTE_PRELOAD_MODULES: ["sklearn.linear_model", "no_such_module_dvl", "json"]}):
        assert preload_modules() == ["sklearn.linear_model", "json"]
    with dask.config.set({config.COMPUTE_PRELOAD_MODULES: None}):
        assert preload_modules() == []
    with dask.config.set({config.COMPUTE_PRELOAD_MODULES: "json"}):  # a single name, not its letters
        assert preload_modules() == ["json"]
    class Worker:  # stands for distributed's server objects (Worker, Nanny, Scheduler)
        address = "tcp://127.0.0.1:1"

    assert dask_setup(Worker()) is None  # distributed calls it with the worker
    with pytest.raises(InvalidParameterError, match="'worker'"):  # issue 25: anything was accepted
        dask_setup(3)


@pytest.mark.parametrize("bad", [5, ["sklearn.base", 3], {"sklearn": 1}])
def test_preload_refuses_a_malformed_module_list(bad):
    with dask.config.set({config.COMPUTE_PRELOAD_MODULES: bad}), \
            pytest.raises(InvalidParameterError, match="preload-modules"):
        preload_modules()


def test_preload_in_a_fresh_process_imports_sklearn_and_the_block_code():
    code = (
        "import sys; import dvl_dask.preload as p; p.dask_setup(None); "
        "print(all(m in sys.modules for m in ('sklearn.linear_model', 'dvl_dask.valuation._estimators')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_workers_started_with_the_preload_have_imported_before_any_task():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      host="127.0.0.1", preload=["dvl_dask.preload"]) as cluster, Client(cluster) as client:
        def loaded():
            return sorted(m for m in ("sklearn.linear_model", "dvl_dask.valuation._estimators") if m in sys.modules)

        assert list(client.run(loaded).values()) == [["dvl_dask.valuation._estimators", "sklearn.linear_model"]]
