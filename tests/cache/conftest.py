"""Fixtures of the cache tests: real memcached servers on free loopback ports.

When ``DVL_DASK_REQUIRE_SERVICES=1`` (CI), a server that cannot start fails the
run; locally the memcached tests are skipped with the reason.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dvl_dask.testing.servers import MemcachedServer, start_memcached

REPO_ROOT = Path(__file__).resolve().parents[2]


def _service_unavailable(reason: str) -> None:
    if os.environ.get("DVL_DASK_REQUIRE_SERVICES", "") == "1":
        pytest.fail(f"Required test service unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def _start(port: int | None = None) -> MemcachedServer:
    try:
        return start_memcached(port)
    except (OSError, RuntimeError) as exc:
        _service_unavailable(f"cannot start a memcached server: {exc}")
        raise  # pragma: no cover - skip/fail raise first


@pytest.fixture(scope="session")
def memcached_server() -> Iterator[MemcachedServer]:
    """One memcached server for the session (tests use their own namespaces or clear it)."""
    server = _start()
    yield server
    server.stop()


@pytest.fixture
def own_memcached_server() -> Iterator[MemcachedServer]:
    """A memcached server for one test, which may kill and restart it."""
    server = _start()
    yield server
    server.stop()


@pytest.fixture
def restart_memcached():
    """``restart_memcached(port)`` starts a server on a port again; stopped after the test."""
    started: list[MemcachedServer] = []

    def restart(port: int) -> MemcachedServer:
        server = _start(port)
        started.append(server)
        return server

    yield restart
    for server in started:
        server.stop()


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for child Python processes that import dvl_dask from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("DVL_DASK_CACHE_KEY", None)
    return env


@pytest.fixture
def python() -> str:
    return sys.executable
