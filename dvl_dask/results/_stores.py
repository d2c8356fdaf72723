"""Store helpers shared by every result writer: URLs, fsspec/zarr stores, labels, the completion marker."""

from __future__ import annotations

import functools
import glob
import json
import os
import re
import shutil
import socket
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import xarray as xr

__all__ = [
    "ABSENT",
    "CHECKPOINT",
    "COMPLETE",
    "FOREIGN",
    "INFLUENCE",
    "VALUATION",
    "check_location",
    "STAGED",
    "TEMPORARY_MARKER",
    "clean_stale_temporaries",
    "consolidate",
    "credential_error",
    "explains_store_errors",
    "remove_temporary",
    "refuse_to_replace",
    "store_kind",
    "temporary_sibling",
    "delete_store",
    "fsspec_mapper",
    "has_content",
    "is_local",
    "local_path",
    "portable_labels",
    "restore_labels",
    "store_exists",
    "zarr_store",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Attribute written last: a store without it holds an interrupted write.
COMPLETE = "_dvl_complete"

# What a location holds (see store_kind).
ABSENT = "absent"
VALUATION = "valuation result"
INFLUENCE = "influence result"
CHECKPOINT = "checkpoint"
FOREIGN = "data dvl_dask did not write"
#: Kinds that writers with overwrite=True may replace: results dvl_dask wrote.
REPLACEABLE = (VALUATION, INFLUENCE)
#: Seconds after which a temporary directory of another machine (or an older version) counts as stale.
STALE_AFTER = 3600.0


def check_location(url: Any, owner: str) -> str:
    """``url`` as a non-empty string, else InvalidParameterError (``""`` would mean the current directory)."""
    from ..errors import InvalidParameterError

    if not isinstance(url, (str, os.PathLike)):
        raise InvalidParameterError(
            f"The 'url' argument of {owner} must be a path or an fsspec URL (str or os.PathLike). "
            f"Got {type(url).__name__} instead."
        )
    text = os.fspath(url)
    if not isinstance(text, str) or not text.strip() or text.strip() in (".", "file://"):
        raise InvalidParameterError(
            f"The 'url' argument of {owner} must name a store, e.g. 'values.zarr' or 's3://bucket/values.zarr'. "
            f"Got {text!r}, which is empty or the current directory."
        )
    return text


def store_kind(url: str, storage_options: dict[str, Any] | None = None) -> str:
    """What is stored at ``url``: ABSENT, VALUATION, INFLUENCE, CHECKPOINT or FOREIGN.

    ABSENT means nothing (or an empty directory); FOREIGN means anything that
    dvl_dask did not write: a file, a directory of other files, a zarr store
    of another tool. Recognition uses the metadata dvl_dask writes in the
    root group's attributes.
    """
    if not has_content(url, storage_options):
        return ABSENT
    if is_local(url) and os.path.isfile(os.path.abspath(local_path(url))):
        return FOREIGN
    try:
        import zarr

        group = zarr.open_group(zarr_store(url, storage_options, read_only=True), mode="r")
        attrs = dict(group.attrs)
    except Exception:  # not a zarr group
        return FOREIGN
    if "dvl_checkpoint_version" in attrs:
        return CHECKPOINT
    if isinstance(attrs.get("_dvl_write"), dict):
        return INFLUENCE
    if "schema_version" in attrs and "dvl_dask_version" in attrs and "method" in attrs:
        return VALUATION
    return FOREIGN


def refuse_to_replace(url: str, kind: str, owner: str, *, overwrite: bool) -> None:
    """Raise ResultExistsError unless ``kind`` may be replaced (with ``overwrite=True``, only dvl_dask results)."""
    from ..errors import ResultExistsError

    if kind == ABSENT:
        return
    if kind in REPLACEABLE:
        if overwrite:
            return
        raise ResultExistsError(
            f"{url} holds a dvl_dask {kind}. To fix, pass overwrite=True to replace it or choose another path."
        )
    if kind == CHECKPOINT:
        what = "a dvl_dask checkpoint (the statistics of a resumable run)"
        fix = "Read it with dvl_dask.valuation.load_checkpoint, delete it yourself if you no longer need it,"
    else:
        what = "data that dvl_dask did not write (a file, other files or another tool's store)"
        fix = "Delete it yourself if you are sure,"
    raise ResultExistsError(
        f"{owner} refuses to write to {url}: it holds {what}, which overwrite=True never deletes. {fix} or "
        "choose another path."
    )


_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"
#: The file dvl_dask writes inside every temporary or backup folder it makes: only folders holding it
#: (naming the same target) are ever removed, whatever their name or age.
TEMPORARY_MARKER = ".dvl_dask_temporary.json"
#: Inside a temporary folder: the store being written (renamed onto the target when complete), or in a
#: backup folder the result being replaced.
STAGED = "store"


def temporary_sibling(target: str, kind: str = "tmp") -> str:
    """Create a fresh, marked temporary folder next to ``target`` and return its path.

    The folder holds :data:`TEMPORARY_MARKER` (a random id, the target, this
    host, process and its start time); the data goes to ``<folder>/store``.
    The name also shows host and process, for people; it is never trusted.

    Raises
    ------
    StoreAccessError
        If the folder cannot be created (e.g. a read-only directory), naming ``target``.
    """
    from ._owners import process_owner

    path = f"{target}.{kind}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    marker = {"dvl_dask_temporary": 1, "id": uuid.uuid4().hex, "kind": kind, "target": os.path.abspath(target),
              "created": time.time(), **process_owner()}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkdir(path)
    except OSError as exc:
        raise _access_error(target, exc) from None
    try:
        with open(os.path.join(path, TEMPORARY_MARKER), "w") as f:
            json.dump(marker, f)
    except OSError as exc:
        shutil.rmtree(path, ignore_errors=True)  # made by this call a moment ago
        raise _access_error(target, exc) from None
    return path


def _access_error(target: str, exc: OSError) -> Exception:
    from ..errors import StoreAccessError

    where = os.path.dirname(os.path.abspath(target)) or "."
    return StoreAccessError(
        f"Cannot write {target}: {exc.strerror or exc} in its directory {where}. dvl_dask writes a result next to "
        "its target and renames it into place. To fix, choose a path in a directory you can write to."
    )


def _temporary_marker(path: str, target: str) -> dict[str, Any] | None:
    """The marker of a temporary folder dvl_dask made for ``target``, or None (then it is not ours)."""
    try:
        with open(os.path.join(path, TEMPORARY_MARKER)) as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("dvl_dask_temporary") != 1:
        return None
    if marker.get("target") != os.path.abspath(target) or not isinstance(marker.get("id"), str):
        return None
    return marker


def remove_temporary(path: str, target: str) -> bool:
    """Remove ``path`` if it is a temporary folder dvl_dask made for ``target`` (its marker says so)."""
    if not os.path.isdir(path) or _temporary_marker(path, target) is None:
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def _abandoned(path: str, marker: dict[str, Any]) -> bool:
    """Whether the write that made a marked temporary folder is over (its process died, or long silent)."""
    from ._owners import owner_is_dead, owner_is_here

    if owner_is_here(marker):
        return owner_is_dead(marker)
    # another host (or boot): its process cannot be checked; abandoned once unchanged for long
    try:
        latest = max(os.path.getmtime(p) for p in (path, os.path.join(path, STAGED)) if os.path.exists(p))
    except (OSError, ValueError):
        return False
    return time.time() - latest > STALE_AFTER


def clean_stale_temporaries(target: str) -> list[str]:
    """Remove temporary folders of ``target`` left by killed writes; return what was removed.

    Only folders holding dvl_dask's :data:`TEMPORARY_MARKER` for this very
    target are considered, never a folder recognised by its name or age alone:
    a user's ``values.zarr.old-20240517/`` is never touched. A marked folder
    is removed when the process that made it provably died (same host; see
    :func:`._owners.owner_is_dead`), or -- made on another host -- when it has
    not changed for :data:`STALE_AFTER` seconds. A backup of the previous
    result whose replacement never landed (the target is missing) is moved
    back instead of removed.
    """
    removed = []
    for path in sorted(glob.glob(glob.escape(target) + ".tmp-*") + glob.glob(glob.escape(target) + ".old-*")):
        marker = _temporary_marker(path, target) if os.path.isdir(path) else None
        if marker is None or not _abandoned(path, marker):
            continue
        staged = os.path.join(path, STAGED)
        if marker.get("kind") == "old" and os.path.isdir(staged) and not os.path.exists(target):
            os.replace(staged, target)  # the replacement was interrupted: the previous result comes back
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


#: Exceptions of object-store clients that mean "no usable credentials" (matched by name: botocore,
#: google-auth and azure-identity are optional).
_CREDENTIAL_ERRORS = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                      "NoAuthTokenError", "DefaultCredentialsError", "RefreshError", "ClientAuthenticationError",
                      "CredentialUnavailableError")
#: Words in a PermissionError of an object store that mean the credentials were refused.
_REFUSED = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "AccessDenied", "Forbidden",
            "InvalidToken", "AuthorizationHeaderMalformed", "Access Denied", "403")


def credential_error(exc: BaseException, url: Any, owner: str) -> Exception | None:
    """A :class:`~dvl_dask.errors.StoreAccessError` explaining ``exc`` if it is a credential problem of a remote store.

    None when ``url`` is local or ``exc`` (and what caused it) is something else.
    """
    from ..errors import StoreAccessError

    if not isinstance(url, (str, os.PathLike)) or is_local(os.fspath(url)):
        return None
    seen: BaseException | None = exc
    for _ in range(8):  # zarr, xarray and s3fs wrap the client's exception
        if seen is None or isinstance(seen, StoreAccessError):
            return None
        missing = type(seen).__name__ in _CREDENTIAL_ERRORS
        refused = isinstance(seen, PermissionError) and any(word in str(seen) for word in _REFUSED)
        if missing or refused:
            what = ("no credentials were found" if missing else "the store refused the credentials or this "
                    "account may not access it")
            return StoreAccessError(
                f"{owner} cannot access {os.fspath(url)}: {what} ({type(seen).__name__}: {seen}). To fix, pass "
                "credentials in storage_options (for s3:// e.g. storage_options={'key': ..., 'secret': ...}, "
                "plus 'endpoint_url' for a non-AWS store, or {'anon': True} for a public bucket) or set them in "
                "the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or "
                "GOOGLE_APPLICATION_CREDENTIALS for gs://)."
            )
        seen = seen.__cause__ or seen.__context__
    return None


def explains_store_errors(owner: str, url_position: int) -> Callable[[F], F]:
    """Decorate a public reader or writer: credential failures of remote stores become StoreAccessError."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                url = kwargs.get("url", args[url_position] if len(args) > url_position else None)
                explained = credential_error(exc, url, owner)
                if explained is None:
                    raise
                raise explained from exc

        return wrapper  # type: ignore[return-value]

    return decorate


def is_local(url: str) -> bool:
    return "://" not in str(url) or str(url).startswith("file://")


def local_path(url: str) -> str:
    return str(url)[len("file://") :] if str(url).startswith("file://") else str(url)


def fsspec_mapper(url: str, storage_options: dict[str, Any] | None) -> Any:
    import fsspec

    return fsspec.get_mapper(url, **(storage_options or {}))


def zarr_store(url: str, storage_options: dict[str, Any] | None = None, *, read_only: bool = False) -> Any:
    """A zarr v3 store for ``url``: an absolute local path, or an ``FsspecStore`` for remote URLs."""
    if is_local(url):
        return os.path.abspath(local_path(url))
    from zarr.storage import FsspecStore

    store = FsspecStore.from_url(url, storage_options=dict(storage_options or {}), read_only=read_only)
    # fsspec reuses filesystem instances, listings cached by one of them go stale when another
    # (or another process) writes or deletes: start every store with fresh listings.
    invalidate = getattr(store.fs, "invalidate_cache", None)
    if callable(invalidate):
        invalidate()
    return store


def consolidate(store: Any) -> None:
    """Write the consolidated metadata of a finished zarr store (local path, mapper or zarr store).

    Plain ``xr.open_zarr(url)`` then reads one metadata document and warns
    about nothing. Called as the last write of a store: any later change of
    metadata would make the consolidated copy stale.
    """
    import zarr

    with warnings.catch_warnings():
        # zarr notes that consolidated metadata is not (yet) in the v3 specification: zarr-python and
        # xarray read it, and readers that do not still see the plain metadata of every node.
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(store)


def open_zarr_dataset(url: str, storage_options: dict[str, Any] | None, chunks: Any) -> xr.Dataset:
    """``xr.open_zarr`` of a stored result (lazy; default chunks: the stored ones).

    Missing stores raise ``FileNotFoundError``; anything else unreadable raises
    :class:`~dvl_dask.errors.SchemaError` naming the URL.
    """
    from ..errors import SchemaError

    store = zarr_store(url, storage_options, read_only=True)
    try:
        return xr.open_zarr(store, consolidated=False, chunks={} if chunks is None else chunks)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise SchemaError(f"Cannot read a zarr result at {url}: {exc}") from exc


def store_exists(mapper: Any) -> bool:
    return any(k in mapper for k in ("zarr.json", ".zgroup"))


def has_content(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether anything exists at ``url`` (a non-empty directory or object-store prefix, or a file)."""
    if is_local(url):
        path = os.path.abspath(local_path(url))
        return os.path.isfile(path) or (os.path.isdir(path) and bool(os.listdir(path)))
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    try:
        return bool(fs.exists(path) and (fs.isfile(path) or fs.ls(path)))
    except FileNotFoundError:
        return False


def delete_store(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Remove everything under ``url`` (a local directory or an object-store prefix)."""
    if is_local(url):
        shutil.rmtree(os.path.abspath(local_path(url)), ignore_errors=True)
        return
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if fs.exists(path):
        fs.rm(path, recursive=True)


def portable_labels(ds: xr.Dataset) -> xr.Dataset:
    """Text coordinates as variable-length strings (fixed-width numpy strings have no zarr v3 spec)."""
    for name, coord in ds.coords.items():
        if coord.dtype.kind == "U":
            ds = ds.assign_coords({name: coord.astype(object)})
    return ds


def restore_labels(ds: Any) -> Any:
    """Text coordinates read back from zarr as numpy ``str`` arrays again (their attrs kept)."""
    for name, coord in ds.coords.items():
        if coord.dtype.kind in "OT":
            labels = np.array([str(v) for v in coord.values.tolist()])
            ds = ds.assign_coords({name: (coord.dims, labels, dict(coord.attrs))})
    return ds
