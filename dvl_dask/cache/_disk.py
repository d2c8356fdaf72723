"""A cache backend in a directory, safe for several processes."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pathlib
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import CacheError, InvalidParameterError
from ..validation import keyword_aliases
from ._backend import SignedCacheBackend, _Degradation, new_secret, resolve_hmac_key

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["DiskCacheBackend"]

_SUFFIX = ".dvl"
_TMP_PREFIX = ".tmp-"
_LOCK_DIR = ".locks"
#: File of the directory's generated secret (owner-only permissions).
SECRET_FILE = ".secret"
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


class DiskCacheBackend(SignedCacheBackend):
    """Cache values as signed files in a directory.

    Each entry is one file, written to a temporary file in the same directory
    and moved into place with :func:`os.replace`, so readers in any process
    see either the old or the new value, never a partial one. :meth:`update`
    holds an exclusive :func:`fcntl.flock` lock (one of 256 lock files, chosen
    by the key) while it reads, changes and writes, so concurrent updates from
    several processes are never lost.

    Parameters
    ----------
    path : str or os.PathLike, optional
        Directory of the cache; created if missing. Several processes (or
        workers on one machine, or machines sharing a file system with working
        ``flock``) may use the same directory. Default, as in pyDVL: a new
        temporary directory (``tempfile.mkdtemp``), shared by the copies of
        this backend sent to workers on this machine, and left in place. pyDVL's
        name ``cache_dir`` is accepted, and is also an attribute.
    hmac_key : bytes or str, optional
        Secret that signs entries; entries that do not verify are ignored
        (counted in ``stats.rejected``) and never unpickled. Default: option
        ``dvl_dask.cache.hmac-key``, then the environment variable
        ``DVL_DASK_CACHE_KEY`` (both read when the backend is built, and
        carried with it to workers), then the directory's own secret: 32
        random bytes generated on first use in ``<path>/.secret`` with
        owner-only permissions (0600) and read by every process that opens
        the directory.

    Raises
    ------
    CacheError
        On first use, if ``<path>/.secret`` belongs to another user or can be
        read or written by group or others: whoever can read it can forge
        entries. Fix its permissions (``chmod 600``) or configure a secret.

    Notes
    -----
    Numbers, numpy scalars and arrays, :class:`RunningStats`, str and bytes
    are stored without pickle; other values as signed pickles. Without
    ``fcntl`` (Windows), :meth:`update` is atomic between the threads of one
    process only.

    Examples
    --------
    >>> import tempfile
    >>> directory = tempfile.TemporaryDirectory()
    >>> cache = DiskCacheBackend(directory.name)
    >>> cache.set("answer", 42), cache.get("answer")
    (True, 42)
    >>> directory.cleanup()
    """

    @keyword_aliases(cache_dir="path")
    def __init__(self, path: str | os.PathLike[str] | None = None, *, hmac_key: bytes | str | None = None) -> None:
        super().__init__()
        if path is None:
            path = tempfile.mkdtemp(prefix="dvl_dask-cache-")
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidParameterError(
                f"The 'path' argument of DiskCacheBackend must be a str or os.PathLike directory. "
                f"Got {type(path).__name__} instead."
            )
        self.path = pathlib.Path(path).expanduser().absolute()
        if self.path.exists() and not self.path.is_dir():
            raise InvalidParameterError(
                f"The 'path' argument of DiskCacheBackend must be a directory; {str(self.path)!r} is a file. "
                "To fix, pass a directory (it is created if missing)."
            )
        self._secret = resolve_hmac_key(hmac_key)  # configured secrets travel with the backend
        self._degradation = _Degradation(f"The disk cache at {str(self.path)!r}")

    @property
    def cache_dir(self) -> pathlib.Path:
        """The directory of the cache (pyDVL's name of :attr:`path`)."""
        return self.path

    # -- helpers ------------------------------------------------------------------------------
    def _load_secret(self) -> bytes:
        """The configured secret, else the directory's (raises OSError if it cannot be read or made)."""
        return self._secret if self._secret is not None else self._directory_secret()

    def _directory_secret(self) -> bytes:
        """Read ``<path>/.secret``, creating it (0600, atomically) if missing."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self.path / SECRET_FILE
        try:
            return self._read_secret(target)
        except FileNotFoundError:
            pass
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=_TMP_PREFIX, suffix=".secret")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(new_secret())
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, target)  # atomic: fails if another process made it first
            except FileExistsError:
                pass
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return self._read_secret(target)

    def _read_secret(self, target: pathlib.Path) -> bytes:
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(target, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symbolic link: whoever placed it chooses the secret
                raise CacheError(
                    f"Refusing the cache secret {str(target)!r}: it is a symbolic link. To fix, delete it (a new "
                    "secret is made on first use) or configure one with dask.config.set({'dvl_dask.cache.hmac-key': "
                    "...})."
                ) from exc
            raise
        try:
            info = os.fstat(fd)
            if os.name == "posix":
                foreign = info.st_uid != os.geteuid()
                if foreign or stat.S_IMODE(info.st_mode) & 0o077 or not stat.S_ISREG(info.st_mode):
                    raise CacheError(
                        f"Refusing the cache secret {str(target)!r}: it "
                        f"{'belongs to another user' if foreign else 'is readable or writable by others'} "
                        f"(mode {stat.S_IMODE(info.st_mode):o}), so others could forge cache entries. "
                        f"To fix, run `chmod 600 {target}` as its owner, delete it (a new one is made), or "
                        "configure a secret with dask.config.set({'dvl_dask.cache.hmac-key': ...})."
                    )
            with os.fdopen(fd, "rb", closefd=False) as f:
                secret = f.read()
        finally:
            os.close(fd)
        if not secret:
            raise CacheError(
                f"The cache secret {str(target)!r} is empty. To fix, delete it (a new one is made on first use)."
            )
        return secret

    @staticmethod
    def _digest(key: str) -> str:
        return hashlib.blake2b(key.encode("ascii"), digest_size=20).hexdigest()

    def _file(self, digest: str) -> pathlib.Path:
        return self.path / digest[:2] / (digest[2:] + _SUFFIX)

    def _read(self, key: str, digest: str) -> tuple[bool, Any]:
        """(found, value) without touching hit/miss counters."""
        try:
            data = self._file(digest).read_bytes()
        except FileNotFoundError:
            return False, None
        except OSError as exc:
            self._degradation.failed(self.stats, "errors", exc, "reading")
            return False, None
        return self._decode(key, data)

    def _write(self, key: str, digest: str, value: Any) -> bool:
        target = self._file(digest)
        try:
            data = self._encode(key, value)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=_TMP_PREFIX, suffix=".part")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            self._degradation.failed(self.stats, "errors", exc, "writing")
            return False
        self._degradation.succeeded()
        return True

    @contextlib.contextmanager
    def _locked(self, digest: str) -> Iterator[None]:
        lock_dir = self.path / _LOCK_DIR
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock_path = lock_dir / f"{digest[:2]}.lock"
        if fcntl is None:  # pragma: no cover - Windows
            with _thread_locks_guard:
                lock = _thread_locks.setdefault(str(lock_path), threading.Lock())
            with lock:
                yield
            return
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # -- storage ------------------------------------------------------------------------------
    def _lookup(self, key: str) -> tuple[bool, Any]:
        return self._read(key, self._digest(key))

    def _store(self, key: str, value: Any) -> bool:
        return self._write(key, self._digest(key), value)

    def _remove(self, key: str) -> bool:
        try:
            self._file(self._digest(key)).unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            self._degradation.failed(self.stats, "errors", exc, "deleting")
            return False
        return True

    def clear(self) -> None:
        if not self.path.is_dir():
            return
        for sub in os.scandir(self.path):
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for entry in os.scandir(sub.path):
                if entry.name.endswith(_SUFFIX) or entry.name.startswith(_TMP_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    def _update(self, key: str, fn: Callable[[Any], Any]) -> Any:
        digest = self._digest(key)
        try:
            with self._locked(digest):
                _, current = self._read(key, digest)
                new = fn(current)
                return new if self._write(key, digest, new) else None
        except OSError as exc:  # the lock file could not be created or locked
            self._degradation.failed(self.stats, "errors", exc, "locking")
            return None

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("_secret", None)
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"DiskCacheBackend({str(self.path)!r})"
