"""Shared fixtures: small datasets, utilities and one distributed cluster per session."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

REQUIRE_SERVICES = os.environ.get("DVL_DASK_REQUIRE_SERVICES", "") == "1"


def service_unavailable(reason: str) -> None:
    """Skip locally, fail in CI (where DVL_DASK_REQUIRE_SERVICES=1) when a service cannot start."""
    if REQUIRE_SERVICES:
        pytest.fail(f"Required test service unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-long", action="store_true", default=False,
        help="also run the tests marked long (make test-long runs them alone: --run-long -m long)",
    )
    parser.addoption(
        "--serial", choices=("include", "exclude", "only"), default="include",
        help="tests marked serial (timing or concurrency claims that need the machine to themselves): "
             "`exclude` for the pytest-xdist phase of make test, `only` for the phase after it",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Select by ``--serial``; tests marked ``long`` are skipped unless ``--run-long`` is given."""
    _select_serial(config, items)
    if config.getoption("--run-long"):
        return
    skip = pytest.mark.skip(reason="long: run by `make test-long` (pytest --run-long -m long), as in CI")
    for item in items:
        if item.get_closest_marker("long") is not None:
            item.add_marker(skip)


def _select_serial(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the tests marked ``serial`` (``--serial=exclude``) or all others (``--serial=only``).

    ``make test`` runs the suite on pytest-xdist workers with ``--serial=exclude``, then the
    ``serial`` tests in one process with ``--serial=only``, so that their timing is not
    disturbed by the other workers.
    """
    mode = config.getoption("--serial")
    if mode == "include":
        return
    keep_serial = mode == "only"
    kept = [item for item in items if (item.get_closest_marker("serial") is not None) == keep_serial]
    dropped = [item for item in items if (item.get_closest_marker("serial") is not None) != keep_serial]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _default_client():
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        return distributed.default_client()
    except ValueError:
        return None


@pytest.fixture(autouse=True)
def _no_default_client_left_behind():
    """Fail the test that leaves a new ``distributed.Client`` as the default scheduler, and close it.

    A client left as the default routes every later ``compute()`` of the session to
    its cluster: later tests then hang or see distributed behaviour (no local
    callbacks) where they expect a local scheduler. Closing it here stops one
    test's failure from cascading into others. A default client that existed
    before the test (a module-scoped fixture's) is left to its fixture.
    """
    before = _default_client()
    yield
    leftover = _default_client()
    if leftover is None or leftover is before:
        return
    leftover.close()
    pytest.fail(f"the test left {leftover!r} as the default scheduler; use `with Client(...)`", pytrace=False)


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


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on a free loopback port; yields fsspec ``storage_options`` for it.

    Fails (in CI) or skips (locally) when moto cannot start.
    """
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(var, None)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    try:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
    except Exception as exc:  # pragma: no cover - environment dependent
        service_unavailable(f"cannot start the moto S3 server: {exc}")
    options = {
        "endpoint_url": f"http://{host}:{port}",
        "key": "testing",
        "secret": "testing",
    }
    try:
        _wait_for_s3(options)
    except Exception as exc:  # pragma: no cover
        server.stop()
        service_unavailable(f"the moto S3 server did not answer: {exc}")
    yield options
    server.stop()


def _wait_for_s3(options, timeout: float = 10.0) -> None:
    import time

    import s3fs

    deadline = time.monotonic() + timeout
    while True:
        try:
            s3fs.S3FileSystem(**options, skip_instance_cache=True).ls("")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket on the test S3 server: yields (url prefix, storage_options)."""
    import uuid

    import s3fs

    name = f"dvl-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**s3_server, skip_instance_cache=True).mkdir(name)
    return f"s3://{name}", s3_server
