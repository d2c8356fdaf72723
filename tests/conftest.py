"""Shared fixtures: small datasets, utilities and one distributed cluster per session."""

from __future__ import annotations

import os

import numpy as np
import pytest

REQUIRE_SERVICES = os.environ.get("DVL_DASK_REQUIRE_SERVICES", "") == "1"


def service_unavailable(reason: str) -> None:
    """Skip locally, fail in CI (where DVL_DASK_REQUIRE_SERVICES=1) when a service cannot start."""
    if REQUIRE_SERVICES:
        pytest.fail(f"Required test service unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261122)


@pytest.fixture
def iris_small():
    """12 stratified training points of iris and 40 test points."""
    from sklearn.datasets import load_iris

    from dvl_dask import Dataset

    data = Dataset.from_sklearn(load_iris, train_size=12 / 150, seed=3, stratify=True)
    return Dataset(
        data.x_train, data.y_train, data.x_test[:40], data.y_test[:40], data_names=data.data_names,
        feature_names=list(data.feature_names),
    )


@pytest.fixture
def logistic_utility_8():
    """A real sklearn utility on 8 training points of wine (256 coalitions)."""
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from dvl_dask import Dataset, Utility

    data = Dataset.from_sklearn(load_wine, train_size=8 / 178, seed=1, stratify=True)
    return Utility(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), data, "accuracy")


@pytest.fixture(scope="session")
def local_cluster():
    """One process-based LocalCluster (2 single-threaded workers) for the whole session."""
    distributed = pytest.importorskip("distributed")
    try:
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", host="127.0.0.1"
        )
    except Exception as exc:  # pragma: no cover - environment dependent
        service_unavailable(f"cannot start a distributed LocalCluster: {exc}")
    yield cluster
    cluster.close()


@pytest.fixture
def client(local_cluster):
    """A client of the session cluster, made the default scheduler inside the test."""
    from distributed import Client

    with Client(local_cluster, set_as_default=True) as c:
        yield c
