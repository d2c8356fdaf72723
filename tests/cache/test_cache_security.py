"""Cache security: forged entries are never unpickled, secrets are real and reach every worker.

The forgery matrix runs against the disk and the memcached backends. Each
forged entry carries an :class:`Unpicklable` marker whose unpickling is
recorded: the marker list must stay empty, the rejection must be counted in
``stats.rejected`` and the memoized function must recompute the right value.
"""

from __future__ import annotations

import hmac
import os
import pickle
import stat
import uuid
from collections.abc import Callable
from typing import Any

import dask
import numpy as np
import pytest

from dvl_dask.cache import (
    CacheBackend,
    DiskCacheBackend,
    MemcachedCacheBackend,
    MemcachedClientConfig,
    RunningStats,
    _codec,
    memoize,
)
from dvl_dask.cache._backend import Signer
from dvl_dask.cache.conformance import Unpicklable, _unpickled
from dvl_dask.errors import CacheError

#: The public key that dvl_dask versions before this one used when no secret was configured.
OLD_PUBLIC_KEY = b"dvl_dask default cache signing key -- public, NOT a secret"


def _old_format(key: str, value: Any, secret: bytes = OLD_PUBLIC_KEY) -> bytes:
    magic = b"DVL\x01"
    payload = pickle.dumps(value)
    return magic + hmac.digest(secret, magic + key.encode() + b"\0" + payload, "sha256") + payload


def _square(x: int) -> float:
    return float(x * x)


# -- raw access to what a backend stores ---------------------------------------------------------


def _disk_raw(backend: DiskCacheBackend) -> tuple[Callable[[str, bytes], None], Callable[[str], bytes]]:
    def raw_set(key: str, data: bytes) -> None:
        path = backend._file(backend._digest(key))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def raw_get(key: str) -> bytes:
        return backend._file(backend._digest(key)).read_bytes()

    return raw_set, raw_get


def _memcached_raw(server: Any) -> tuple[Callable[[str, bytes], None], Callable[[str], bytes]]:
    from pymemcache.client.base import Client

    client = Client(server.address, default_noreply=False)
    return (lambda key, data: client.set(key, data)), (lambda key: client.get(key))


@pytest.fixture(params=["disk", pytest.param("memcached", marks=pytest.mark.memcached)])
def target(request, tmp_path) -> tuple[CacheBackend, Callable[[str, bytes], None], Callable[[str], bytes]]:
    if request.param == "disk":
        backend = DiskCacheBackend(tmp_path / "cache")
        return (backend, *_disk_raw(backend))
    server = request.getfixturevalue("memcached_server")
    backend = MemcachedCacheBackend(MemcachedClientConfig(server=server.address, timeout=2.0))
    return (backend, *_memcached_raw(server))


def _forgeries(key: str, backend: CacheBackend, raw_get: Callable[[str], bytes]) -> dict[str, bytes]:
    """Every way to plant a marker under ``key`` without the backend's secret."""
    signer = backend._signer_()
    marker = Unpicklable("forged")
    other_key = f"other-{uuid.uuid4().hex[:8]}"
    # A genuinely signed pickle under another key, copied over (replay).
    backend.set(other_key, marker)
    replayed = raw_get(other_key)
    _unpickled.clear()
    valid = signer.dumps(key, marker)  # what a writer with the secret would store
    return {
        "unsigned pickle": pickle.dumps(marker),
        "pickle in the current format, wrong key": Signer(b"not the secret").dumps(key, marker),
        "old format, old public key": _old_format(key, marker),
        "current format, old public key": Signer(OLD_PUBLIC_KEY).dumps(key, marker),
        "replayed from another key": replayed,
        "truncated": valid[:-3],
        "signature only": valid[: len(_codec.MAGIC) + 32],
        "empty": b"",
    }


FORGERY_NAMES = [
    "unsigned pickle",
    "pickle in the current format, wrong key",
    "old format, old public key",
    "current format, old public key",
    "replayed from another key",
    "truncated",
    "signature only",
    "empty",
]


@pytest.mark.parametrize("forgery", FORGERY_NAMES)
def test_forged_entries_are_never_unpickled_counted_and_recomputed(target, forgery) -> None:
    backend, raw_set, raw_get = target
    f = memoize(_square, backend, namespace=f"sec-{uuid.uuid4().hex[:10]}")
    key = f.cache_key(7)
    data = _forgeries(key, backend, raw_get)[forgery]
    raw_set(key, data)
    rejected = backend.stats.rejected
    _unpickled.clear()
    assert f(7) == 49.0  # recomputed, not the forged value
    assert _unpickled == []  # the marker was never unpickled
    assert backend.stats.rejected == rejected + 1  # counted
    assert f(7) == 49.0 and f.stats.hits == 1  # the recomputed value replaced the forgery
    assert _unpickled == []


def test_forgery_matrix_is_complete(tmp_path) -> None:
    backend = DiskCacheBackend(tmp_path)
    assert sorted(_forgeries("k", backend, _disk_raw(backend)[1])) == sorted(FORGERY_NAMES)


def test_signed_value_only_entries_with_a_bad_body_are_rejected(target) -> None:
    backend, raw_set, _ = target
    secret = backend._signer_()._secret
    for body in (b"Vz", b"Vf\x00", b"Va\x03<f8\x01" + b"\x05" + b"\x00" * 7, b"Vg\x03|O8" + b"\x00" * 8, b"X"):
        data = _codec.MAGIC + _codec._mac(secret, "k", body) + body
        raw_set("k", data)
        rejected = backend.stats.rejected
        assert backend.get("k", "absent") == "absent"
        assert backend.stats.rejected == rejected + 1


# -- value-only encoding ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        0.1,
        -0.0,
        float("inf"),
        3,
        -(2**80),
        True,
        None,
        "text",
        b"\x00bytes",
        np.float32(1.5),
        np.int64(-4),
        np.bool_(True),
        np.arange(6.0).reshape(2, 3),
        np.array([], dtype=np.int16),
        np.asfortranarray(np.arange(6).reshape(2, 3)),
        RunningStats(3, 0.25, 0.125),
    ],
    ids=repr,
)
def test_what_utilities_return_is_stored_without_pickle(target, value, monkeypatch) -> None:
    backend, _, raw_get = target
    key = f"plain-{uuid.uuid4().hex[:10]}"
    assert backend.set(key, value)
    data = raw_get(key)
    assert data[len(_codec.MAGIC) + 32 : len(_codec.MAGIC) + 33] == b"V"  # value-only body

    def no_pickle(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle.loads called for a value-only entry")

    monkeypatch.setattr(_codec.pickle, "loads", no_pickle)
    got = backend.get(key)
    assert type(got) is type(value)
    if isinstance(value, np.ndarray):
        assert got.dtype == value.dtype and got.shape == value.shape
        np.testing.assert_array_equal(got, value)
    else:
        assert got == value or (got != got and value != value)


def test_other_values_are_signed_pickles(target) -> None:
    backend, _, raw_get = target
    key = f"pickled-{uuid.uuid4().hex[:10]}"
    backend.set(key, {"a": (1, 2)})
    assert raw_get(key)[len(_codec.MAGIC) + 32 : len(_codec.MAGIC) + 33] == b"P"
    assert backend.get(key) == {"a": (1, 2)}


# -- secrets ------------------------------------------------------------------------------------------


def test_no_public_key_ships_in_the_source() -> None:
    import dvl_dask.cache as cache

    assert not hasattr(cache, "DEFAULT_HMAC_KEY")
    root = os.path.dirname(cache.__file__)
    for name in os.listdir(root):
        if name.endswith(".py"):
            with open(os.path.join(root, name), "rb") as f:
                assert OLD_PUBLIC_KEY not in f.read()


def test_disk_cache_generates_an_owner_only_secret(tmp_path) -> None:
    backend = DiskCacheBackend(tmp_path / "c")
    backend.set("k", 1.0)
    secret_file = tmp_path / "c" / ".secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert len(secret_file.read_bytes()) == 32
    other = DiskCacheBackend(tmp_path / "c")  # another process opening the directory
    assert other.get("k") == 1.0
    elsewhere = DiskCacheBackend(tmp_path / "d")
    elsewhere.set("k", 1.0)
    assert (tmp_path / "d" / ".secret").read_bytes() != secret_file.read_bytes()
    backend.clear()
    assert secret_file.exists()  # clear() keeps the secret


def test_disk_cache_refuses_a_secret_others_can_read(tmp_path) -> None:
    DiskCacheBackend(tmp_path / "c").set("k", 1.0)
    (tmp_path / "c" / ".secret").chmod(0o644)
    with pytest.raises(CacheError, match="chmod 600"):
        DiskCacheBackend(tmp_path / "c").get("k")


def test_disk_cache_with_a_configured_secret_reads_entries_of_the_same_secret_only(tmp_path) -> None:
    with dask.config.set({"dvl_dask.cache.hmac-key": "configured"}):
        writer = DiskCacheBackend(tmp_path / "c")
    writer.set("k", 2.0)
    assert DiskCacheBackend(tmp_path / "c", hmac_key="configured").get("k") == 2.0
    generated = DiskCacheBackend(tmp_path / "c")
    assert generated.get("k", "absent") == "absent" and generated.stats.rejected == 1


def test_secrets_are_read_when_the_backend_is_built_and_travel_with_it(tmp_path) -> None:
    with dask.config.set({"dvl_dask.cache.hmac-key": "at-build-time"}):
        backend = DiskCacheBackend(tmp_path / "c")
    clone = pickle.loads(pickle.dumps(backend))  # e.g. on a worker with another config
    with dask.config.set({"dvl_dask.cache.hmac-key": "worker-config"}):
        clone.set("k", 3.0)
    assert DiskCacheBackend(tmp_path / "c", hmac_key="at-build-time").get("k") == 3.0
    assert "at-build-time" not in repr(backend)


@pytest.mark.memcached
def test_programs_sharing_memcached_need_the_same_secret(memcached_server) -> None:
    config = MemcachedClientConfig(server=memcached_server.address, timeout=2.0)
    key = f"shared-{uuid.uuid4().hex[:10]}"
    MemcachedCacheBackend(config).set(key, 1.0)
    stranger = MemcachedCacheBackend(config)  # another program: another generated secret
    assert stranger.get(key, "absent") == "absent" and stranger.stats.rejected == 1
    MemcachedCacheBackend(config, hmac_key="team-secret").set(key, 2.0)
    assert MemcachedCacheBackend(config, hmac_key="team-secret").get(key) == 2.0


# -- the secret reaches workers of a cluster that started before it was set -----------------------


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("kind", ["disk", pytest.param("memcached", marks=pytest.mark.memcached)])
def test_secret_set_after_the_cluster_started_reaches_the_workers(local_cluster, kind, request, tmp_path) -> None:
    from distributed import Client

    def store_on_worker(backend: CacheBackend, key: str) -> bool:
        return backend.set(key, 4.0)

    def read_on_worker(backend: CacheBackend, key: str) -> tuple[Any, int]:
        return backend.get(key, "absent"), backend.stats.rejected

    key = f"late-{uuid.uuid4().hex[:10]}"
    if kind == "disk":

        def make(**kw: Any) -> CacheBackend:
            return DiskCacheBackend(tmp_path / "c", **kw)

    else:
        server = request.getfixturevalue("memcached_server")

        def make(**kw: Any) -> CacheBackend:
            return MemcachedCacheBackend(MemcachedClientConfig(server=server.address, timeout=2.0), **kw)

    with Client(local_cluster, set_as_default=False) as client:
        with dask.config.set({"dvl_dask.cache.hmac-key": "set-after-the-cluster-started"}):
            backend = make()
        assert client.submit(store_on_worker, backend, key, pure=False).result() is True
        # Only the late secret verifies what the worker wrote: the worker signed with it.
        assert make(hmac_key="set-after-the-cluster-started").get(key) == 4.0
        assert make(hmac_key="something-else").get(key, "absent") == "absent"
        # A forged entry planted by someone without the secret is rejected on the worker.
        backend.set(key, 5.0)
        assert client.submit(read_on_worker, backend, key, pure=False).result() == (5.0, 0)
        make(hmac_key="attacker").set(key, Unpicklable("forged-on-worker"))
        value, rejected = client.submit(read_on_worker, backend, key, pure=False).result()
        assert (value, rejected) == ("absent", 1)

    # Without any configured secret, a memcached backend's generated secret travels too.
    if kind == "memcached":
        generated = make()
        with Client(local_cluster, set_as_default=False) as client:
            assert client.submit(store_on_worker, generated, key, pure=False).result() is True
        assert generated.get(key) == 4.0


_DECORATED_MODULE = """
from dvl_dask.cache import MemcachedClientConfig, memcached


@memcached(MemcachedClientConfig(server=("127.0.0.1", 1)), time_threshold=0.0)
def cube(x):
    return float(x) ** 3
"""


def test_module_level_memoized_functions_carry_their_secret_when_pickled(tmp_path, monkeypatch) -> None:
    import importlib
    import sys

    (tmp_path / "sec_decorated_module.py").write_text(_DECORATED_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("sec_decorated_module")
    original = module.cube
    payload = pickle.dumps(original)
    assert pickle.loads(payload) is original  # same process: the same object
    # A worker imports the module afresh: its decorator generates another secret.
    del sys.modules["sec_decorated_module"]
    fresh = importlib.import_module("sec_decorated_module")
    assert fresh.cube.backend._secret != original.backend._secret
    on_worker = pickle.loads(payload)
    assert on_worker.backend._secret == original.backend._secret
    assert on_worker.cache_key(2) == original.cache_key(2)
    del sys.modules["sec_decorated_module"]


def test_disk_cache_refuses_a_symlinked_secret(tmp_path) -> None:
    (tmp_path / "attacker-chosen").write_bytes(b"k" * 32)
    (tmp_path / "attacker-chosen").chmod(0o600)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / ".secret").symlink_to(tmp_path / "attacker-chosen")
    with pytest.raises(CacheError, match="symbolic link"):
        DiskCacheBackend(tmp_path / "c").set("k", 1.0)
