"""Canonical byte encoding and the private dispatch every dvl_dask token goes through.

Values are fed to a hash as tagged, length-prefixed bytes. Plain values
(numbers, strings, bytes, containers of them, numpy arrays) are encoded here;
every other type goes through a private dispatch table that the other modules
of :mod:`dvl_dask.keys` fill (:func:`register`, :func:`register_lazy`,
:func:`set_fallback`). Nothing here touches ``dask.base.normalize_token``:
dvl_dask's identities never change how dask hashes other people's objects.

A hash is computed inside a *session* (:func:`session`), strict or lenient:

* strict (persisted identities: cache keys, checkpoints, stores): an object
  or a part of it that cannot be hashed completely raises
  :class:`~dvl_dask.errors.TokenizationError`;
* lenient (graph keys inside one process): such an object gets a random token
  remembered for that very object (:func:`unique_token`), so it never
  collides with another object and is only not de-duplicated.

A session opened inside another one (a ``__dask_tokenize__`` method calling
:func:`~dvl_dask.keys.object_token`, say) inherits the outer mode, so a
persisted identity never silently contains a random part.

Unordered containers (sets, dict items) are sorted by the digest of their
elements, so neither insertion order nor ``PYTHONHASHSEED`` matters.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import struct
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from ..errors import TokenizationError

#: Bumped whenever the layout of tokens changes, so old entries are never misread.
_KEY_FORMAT = b"dvl-key-4"
#: How to make an object hashable, appended to messages about objects that are not.
FIX = (
    "To fix, give the object a __dask_tokenize__ method returning a stable value (e.g. a tuple of its "
    "parameters), or pass token=... where dvl_dask accepts one (Utility, Dataset version=, the influence "
    "calculators)."
)

Update = Callable[[bytes], Any]
Handler = Callable[[Update, Any], None]


class Uncoverable(TokenizationError):
    """An object, or a part of it, cannot be hashed completely (raised by handlers)."""


# -- sessions ---------------------------------------------------------------------------------


class Session:
    """State of one top-level hash: its mode, the objects on the stack and what was already hashed."""

    __slots__ = ("active", "budget", "incomplete", "memo", "strict")

    def __init__(self, strict: bool, budget: int) -> None:
        self.strict = strict
        #: ids of the objects being hashed (cycle guard)
        self.active: set[int] = set()
        #: id -> (object, index) of functions hashed in the current digest scope (back-references)
        self.memo: dict[int, tuple[Any, int]] = {}
        #: how many more code objects of user code may be walked
        self.budget = budget
        #: how many parts got a random token instead of their value (lenient mode)
        self.incomplete = 0


_local = threading.local()
#: Most code objects of user code (not installed as a package) one token may walk.
MAX_USER_CODE = 5000


def current() -> Session | None:
    """The session of this thread, None outside one."""
    return getattr(_local, "session", None)


@contextlib.contextmanager
def session(strict: bool) -> Iterator[Session]:
    """Open a session (or join the current one, whose mode wins)."""
    outer = current()
    if outer is not None:
        yield outer
        return
    s = Session(strict, MAX_USER_CODE)
    _local.session = s
    try:
        yield s
    finally:
        _local.session = None


@contextlib.contextmanager
def scope() -> Iterator[None]:
    """A fresh back-reference scope: what is hashed inside does not depend on what was hashed before."""
    s = current()
    if s is None:
        yield
        return
    saved, s.memo = s.memo, {}
    try:
        yield
    finally:
        s.memo = saved


def digest_of(*parts: Any, tag: bytes = b"") -> str:
    """Hex digest of ``parts`` in the current session (strict if there is none), in a fresh scope."""
    h = hashlib.blake2b(digest_size=16)
    h.update(_KEY_FORMAT + tag)
    with session(strict=True), scope():
        for part in parts:
            feed(h.update, part)
    return h.hexdigest()


# -- tokens unique to one object ------------------------------------------------------------------

_UNIQUE: dict[int, tuple[Any, str]] = {}
_UNIQUE_LOCK = threading.Lock()


def unique_token(obj: Any) -> str:
    """A random token remembered for ``obj`` as long as it lives: the same object, the same token.

    Weak-referenceable objects are remembered through a weak reference (the
    entry goes when the object does); others are kept alive with their token,
    so that their ``id`` is never reused for another object.
    """
    key = id(obj)
    with _UNIQUE_LOCK:
        found = _UNIQUE.get(key)
        if found is not None:
            ref, token = found
            target = ref() if isinstance(ref, _Weak) else ref
            if target is obj:
                return token
        token = uuid.uuid4().hex
        try:
            ref = _Weak(obj, _forget, key)
        except TypeError:  # not weak-referenceable: keep it (and so its id) alive
            ref = obj
        _UNIQUE[key] = (ref, token)
    return token


class _Weak(weakref.ref):
    __slots__ = ("key",)

    def __new__(cls, obj: Any, callback: Callable[[Any], None], key: int) -> _Weak:
        self = super().__new__(cls, obj, callback)
        self.key = key
        return self

    def __init__(self, obj: Any, callback: Callable[[Any], None], key: int) -> None:
        super().__init__(obj, callback)


def _forget(ref: _Weak) -> None:
    with _UNIQUE_LOCK:
        found = _UNIQUE.get(ref.key)
        if found is not None and found[0] is ref:
            del _UNIQUE[ref.key]


# -- the private dispatch -------------------------------------------------------------------------

_HANDLERS: dict[type, Handler] = {}
_LAZY: dict[str, Callable[[], None] | str] = {}
_LAZY_LOCK = threading.RLock()
_DISPATCH: dict[type, Handler] = {}
_FALLBACK: list[Handler] = []


def register(cls: type | tuple[type, ...], handler: Handler) -> None:
    """Hash instances of ``cls`` (and subclasses) with ``handler(update, obj)`` in dvl_dask's tokens."""
    for c in cls if isinstance(cls, tuple) else (cls,):
        _HANDLERS[c] = handler
    _DISPATCH.clear()


def register_lazy(toplevel: str, loader: Callable[[], None] | str) -> None:
    """Run ``loader`` (or import the module it names) the first time a type from package ``toplevel`` is met.

    The loader registers the handlers for that package's types, so that
    dvl_dask imports optional libraries (and its own modules using them) only
    once an object of theirs is hashed.
    """
    with _LAZY_LOCK:
        _LAZY[toplevel] = loader
    _DISPATCH.clear()


def set_fallback(handler: Handler) -> None:
    """The handler of types without a registered one (objects by class and state)."""
    _FALLBACK[:] = [handler]
    _DISPATCH.clear()


def _load_lazy(cls: type) -> None:
    for klass in cls.__mro__:
        top = (getattr(klass, "__module__", None) or "").partition(".")[0]
        if top in _LAZY:
            with _LAZY_LOCK:  # other threads wait until the handlers are registered
                loader = _LAZY.get(top)
                if loader is not None:
                    if isinstance(loader, str):
                        importlib.import_module(loader)
                    else:
                        loader()
                    _LAZY.pop(top, None)


def handler_for(cls: type) -> Handler:
    """The handler hashing instances of ``cls``: registered for a class in its MRO, else the fallback."""
    found = _DISPATCH.get(cls)
    if found is not None:
        return found
    if _LAZY:
        _load_lazy(cls)
    for klass in cls.__mro__:
        found = _HANDLERS.get(klass)
        if found is not None:
            break
    else:
        found = _FALLBACK[0]
    if len(_DISPATCH) > 4096:
        _DISPATCH.clear()
    _DISPATCH[cls] = found
    return found


# -- the encoding ---------------------------------------------------------------------------------


_PLAIN_TYPES = frozenset({int, str, float, bool, bytes, type(None)})


def digest(obj: Any) -> bytes:
    """Raw 16-byte digest of one value, in a fresh back-reference scope."""
    h = hashlib.blake2b(digest_size=16)
    s = current() if type(obj) not in _PLAIN_TYPES else None
    if s is None:
        feed(h.update, obj)
        return h.digest()
    saved, s.memo = s.memo, {}  # what scope() does, without a context manager on this hot path
    try:
        feed(h.update, obj)
    finally:
        s.memo = saved
    return h.digest()


_ARRAY_HEADERS: dict[tuple[Any, tuple[int, ...]], bytes] = {}


def feed_array(update: Update, arr: np.ndarray) -> None:
    """dtype, shape and the values in C order of a numpy array without objects."""
    header = _ARRAY_HEADERS.get((arr.dtype, arr.shape))
    if header is None:
        dtype = arr.dtype.str if arr.dtype.fields is None else repr(arr.dtype.descr)
        header = b"a" + dtype.encode() + repr(arr.shape).encode() + b":"
        if len(_ARRAY_HEADERS) < 4096:
            _ARRAY_HEADERS[(arr.dtype, arr.shape)] = header
    update(header)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)  # values in C order: a transposed view is another array
    try:
        update(arr)
    except (TypeError, ValueError, BufferError):  # dtypes without a buffer (datetime64, ...)
        update(arr.reshape(-1).view(np.uint8))


def feed(update: Update, obj: Any) -> None:
    """Feed the canonical encoding of ``obj`` to ``update``."""
    t = type(obj)
    if t is np.ndarray and not obj.dtype.hasobject:
        feed_array(update, obj)
    elif obj is None:
        update(b"N")
    elif t is int:
        update(b"i%d;" % obj)
    elif t is str:
        data = obj.encode("utf-8", "surrogatepass")
        update(b"s%d:" % len(data))
        update(data)
    elif t is float:
        update(b"f" + struct.pack("<d", obj))
    elif t is bool:
        update(b"T" if obj else b"F")
    elif t is tuple or t is list:
        update(b"(%d:" % len(obj) if t is tuple else b"[%d:" % len(obj))
        for item in obj:
            feed(update, item)
    elif t is bytes:
        update(b"b%d:" % len(obj))
        update(obj)
    elif t is dict:
        feed_mapping(update, b"d", obj)
    elif t is set or t is frozenset:
        update(b"S%d:" % len(obj))
        for d in sorted(digest(item) for item in obj):
            update(d)
    elif isinstance(obj, np.generic) and not isinstance(obj, np.object_):
        update(b"g" + obj.dtype.str.encode() + b":")
        update(obj.tobytes())
    elif t is complex:
        update(b"c" + struct.pack("<dd", obj.real, obj.imag))
    elif t is range:
        update(b"r%d,%d,%d;" % (obj.start, obj.stop, obj.step))
    elif obj is Ellipsis:
        update(b"E")
    elif t is slice:
        update(b"sl")
        feed(update, (obj.start, obj.stop, obj.step))
    elif t is np.dtype:
        update(b"dt")
        feed(update, obj.str if obj.fields is None else repr(obj.descr))
    else:
        feed_dispatched(update, obj)


def feed_mapping(update: Update, tag: bytes, obj: Mapping[Any, Any]) -> None:
    """Items of a mapping, in the order of their digests."""
    update(tag + b"%d:" % len(obj))
    for kd, vd in sorted((digest(k), digest(v)) for k, v in obj.items()):
        update(kd)
        update(vd)


def feed_dispatched(update: Update, obj: Any) -> None:
    """Hash ``obj`` with its handler; in a lenient session a part that fails gets :func:`unique_token`."""
    s = current()
    if s is None:
        with session(strict=True):
            feed_dispatched(update, obj)
        return
    handler = handler_for(type(obj))
    if s.active and id(obj) in s.active:  # an object that (indirectly) holds itself
        update(b"<cycle>")
        return
    s.active.add(id(obj))
    try:
        if s.strict:
            handler(update, obj)
        else:
            try:
                handler(update, obj)
            except Exception:  # lenient by contract: never a collision, only no sharing
                s.incomplete += 1
                update(b"U" + unique_token(obj).encode())
    finally:
        s.active.discard(id(obj))
