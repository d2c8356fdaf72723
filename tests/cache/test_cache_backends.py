"""Every backend passes the conformance suite; plus what is specific to each backend."""

from __future__ import annotations

import os
import pickle
import socket
import threading
import uuid
import warnings

import pytest

from dvl_dask.cache import (
    CacheBackend,
    DiskCacheBackend,
    InMemoryCacheBackend,
    MemcachedCacheBackend,
    MemcachedClientConfig,
)
from dvl_dask.cache.conformance import CacheBackendTests, SignedCacheBackendTests
from dvl_dask.errors import CacheUnavailableWarning, DvlDaskWarning, InvalidParameterError


class TestInMemoryCacheBackend(CacheBackendTests):
    @pytest.fixture
    def backend(self) -> InMemoryCacheBackend:
        return InMemoryCacheBackend()


class TestDiskCacheBackend(SignedCacheBackendTests):
    @pytest.fixture
    def backend(self, tmp_path) -> DiskCacheBackend:
        return DiskCacheBackend(tmp_path / "cache")

    def raw_set(self, backend: CacheBackend, key: str, data: bytes) -> None:
        assert isinstance(backend, DiskCacheBackend)
        path = backend._file(backend._digest(key))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def raw_get(self, backend: CacheBackend, key: str) -> bytes:
        assert isinstance(backend, DiskCacheBackend)
        return backend._file(backend._digest(key)).read_bytes()

    def test_writes_leave_no_temporary_files(self, backend: DiskCacheBackend) -> None:
        for i in range(20):
            backend.set(f"k{i}", list(range(i)))
        backend.update("n", lambda v: (v or 0) + 1)
        names = [f for _, _, files in os.walk(backend.path) for f in files]
        assert not [n for n in names if n.startswith(".tmp-")]

    def test_rejects_a_file_as_path(self, tmp_path) -> None:
        file = tmp_path / "file"
        file.write_text("x")
        with pytest.raises(InvalidParameterError, match="is a file"):
            DiskCacheBackend(file)

    def test_unwritable_directory_degrades(self, tmp_path) -> None:
        if os.geteuid() == 0:
            # root writes anywhere: use a path below a regular file instead.
            blocker = tmp_path / "blocker"
            blocker.write_text("x")
            backend = DiskCacheBackend(tmp_path / "ok")
            backend.path = blocker / "below"
        else:  # pragma: no cover - not run as root
            backend = DiskCacheBackend(tmp_path / "ro")
            backend.path.mkdir()
            backend.path.chmod(0o500)
        with pytest.warns(CacheUnavailableWarning, match="disk cache"):
            assert backend.set("k", 1) is False
            assert backend.set("k", 2) is False
        assert backend.stats.errors == 2


@pytest.mark.memcached
class TestMemcachedCacheBackend(SignedCacheBackendTests):
    @pytest.fixture
    def backend(self, memcached_server) -> MemcachedCacheBackend:
        backend = MemcachedCacheBackend(MemcachedClientConfig(server=memcached_server.address, timeout=2.0))
        backend.clear()
        backend.stats.reset()
        return backend

    def _raw_client(self, backend: CacheBackend):
        from pymemcache.client.base import Client

        assert isinstance(backend, MemcachedCacheBackend)
        return Client(backend.config.server, default_noreply=False)

    def raw_set(self, backend: CacheBackend, key: str, data: bytes) -> None:
        client = self._raw_client(backend)
        assert client.set(key, data)
        client.close()

    def raw_get(self, backend: CacheBackend, key: str) -> bytes:
        client = self._raw_client(backend)
        data = client.get(key)
        client.close()
        return data

    def test_connects_lazily_and_pickles_without_socket(self, memcached_server) -> None:
        backend = MemcachedCacheBackend(MemcachedClientConfig(server=memcached_server.address))
        assert getattr(backend._local, "client", None) is None
        backend.set("k", 1)
        assert backend._local.client.sock is not None
        state = backend.__getstate__()
        assert "_local" not in state
        clone = pickle.loads(pickle.dumps(backend))
        assert getattr(clone._local, "client", None) is None
        assert clone.get("k") == 1

    def test_value_over_item_limit_is_refused_and_counted(self, backend: MemcachedCacheBackend) -> None:
        with pytest.warns(DvlDaskWarning, match="refused"):
            assert backend.set("big", b"x" * (2 * 1024 * 1024)) is False
        assert backend.stats.errors == 1
        assert backend.get("big") is None
        assert backend.set("small", 1) and backend.get("small") == 1  # the connection recovered

    def test_reconnects_after_unexpected_close(self, backend: MemcachedCacheBackend) -> None:
        backend.set("k", 1)
        # The server side of our connection goes away (as after a restart): the next
        # operation sees an unexpected close and retries once on a new connection.
        backend._local.client.sock.shutdown(socket.SHUT_RDWR)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning: the retry succeeds
            assert backend.get("k") == 1
        assert backend.stats.reconnects == 1
        assert backend.stats.errors == 0

    def test_one_connection_per_thread(self, backend: MemcachedCacheBackend) -> None:
        clients = []

        def work() -> None:
            backend.set(f"t{threading.get_ident()}", 1)
            clients.append(backend._local.client)

        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({id(c) for c in clients}) == 3

    def test_timeouts_are_counted(self) -> None:
        # A socket that accepts connections but never answers.
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        try:
            config = MemcachedClientConfig(server=silent.getsockname(), timeout=0.05, reconnect_interval=0.0)
            backend = MemcachedCacheBackend(config)
            with pytest.warns(CacheUnavailableWarning, match="unavailable"):
                assert backend.get("k", "default") == "default"
                assert backend.set("k", 1) is False
            assert backend.stats.timeouts == 2
        finally:
            silent.close()

    def test_backends_without_a_configured_secret_do_not_share_one(self) -> None:
        # No built-in key: each backend object generates its own random secret.
        a = MemcachedCacheBackend(MemcachedClientConfig(server=("192.0.2.1", 11211)))
        b = MemcachedCacheBackend(MemcachedClientConfig(server=("127.0.0.1", 11211)))
        assert not a.secret_configured and len(a._secret) == 32
        assert a._secret != b._secret
        assert pickle.loads(pickle.dumps(a))._secret == a._secret


def test_memcached_client_config_defaults_and_validation() -> None:
    config = MemcachedClientConfig()
    assert config.server == ("localhost", 11211)
    assert (config.connect_timeout, config.timeout, config.no_delay) == (1.0, 0.1, True)
    assert config.is_local
    with pytest.raises(InvalidParameterError, match="'server' parameter"):
        MemcachedClientConfig(server=("host", 0))
    with pytest.raises(InvalidParameterError, match="'timeout' parameter"):
        MemcachedClientConfig(timeout=0)
    assert MemcachedClientConfig(server=["127.0.0.1", 5]).server == ("127.0.0.1", 5)


def test_backends_are_named_in_errors() -> None:
    with pytest.raises(InvalidParameterError, match="MemcachedClientConfig"):
        MemcachedCacheBackend(config="localhost:1")  # type: ignore[arg-type]
    # a dict of its fields is merged over the defaults (pyDVL's memcached() does the same)
    assert MemcachedCacheBackend(config={"server": ("localhost", 1)}).config.server == ("localhost", 1)


def test_disk_cache_is_shared_between_instances(tmp_path) -> None:
    a, b = DiskCacheBackend(tmp_path), DiskCacheBackend(tmp_path)
    key = f"k-{uuid.uuid4().hex}"
    a.set(key, [1, 2])
    assert b.get(key) == [1, 2]


def test_in_memory_copies_share_entries_within_a_process_only() -> None:
    import subprocess
    import sys

    import cloudpickle

    from dvl_dask.cache import InMemoryCacheBackend

    backend = InMemoryCacheBackend()
    backend.set("k", 1)
    payload = cloudpickle.dumps(backend)
    here = pickle.loads(payload)
    assert here.get("k") == 1  # same process: shared entries
    here.set("later", 2)
    assert backend.get("later") == 2
    # another process gets the identity, not the entries; its copies share among themselves
    code = (
        "import sys, pickle; data = sys.stdin.buffer.read();"
        "a = pickle.loads(data); b = pickle.loads(data); a.set('w', 3);"
        "print(a.get('k'), b.get('w'))"
    )
    out = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, check=True)
    assert out.stdout.decode().split() == ["None", "3"]
    assert len(pickle.dumps(backend)) < 1_000  # entries never travel
