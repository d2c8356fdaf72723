"""The one place that hashes: every identity in dvl_dask comes from here.

Graph keys, cache keys, checkpoint headers and zarr write tokens all go
through :func:`object_token` (alias :func:`fingerprint`), so two computations
share a key exactly when they are the same computation:

* numpy arrays by dtype, shape and C-order bytes (BLAKE2b, the same on every
  machine whatever optional hashers are installed);
* scikit-learn estimators by class and ``get_params()`` *by value* (arrays by
  content, nested estimators recursively) -- :func:`estimator_token`;
  scikit-learn scorers by score function, sign, keyword arguments and
  response method;
* callables by code **and** state -- :func:`function_token`: closure cells,
  defaults, ``functools.partial`` arguments, the object a bound method
  belongs to, and the constants, functions and classes their code reads from
  module globals;
* classes -- :func:`class_token`: code defined outside installed packages (a
  notebook, a script, an editable checkout) contributes its bytecode, so
  editing it changes the key; installed packages contribute name and version
  (:func:`package_version`), so keys survive Python patch releases;
* objects with ``__dask_tokenize__`` by their class and what it returns;
  other objects (and types registered with ``dask.base.normalize_token``) by
  class and state (``__getstate__``, ``__dict__``, ``__slots__``) --
  :func:`instance_token`;
* lazily backed (dask) arrays by content, read once:
  :func:`dask_content_digest`.

Hashing never falls back to ``repr`` or a random value: anything that cannot
be hashed deterministically raises :class:`~dvl_dask.errors.TokenizationError`
saying how to fix it (a ``__dask_tokenize__`` method, or ``token=`` where
dvl_dask accepts one). Nothing here uses Python's ``hash()``, so keys do not
depend on ``PYTHONHASHSEED`` and are the same in every process, on every
machine and in every run (for the same Python minor version, whose bytecode
user code contributes).

The scikit-learn and torch normalisers are also registered with
``dask.base.normalize_token`` (lazily, on first use), so graphs users build
with dask from estimators, scorers, tensors and modules get value-based keys
too; there they follow dask's ``tokenize.ensure-deterministic`` setting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import dis
import enum
import functools
import hashlib
import inspect
import os
import re
import struct
import sys
import threading
import types
import uuid
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import PurePath
from typing import Any

import numpy as np
from dask.base import normalize_token, tokenize

from .. import config
from ..errors import InvalidParameterError, TokenizationError
from ._calls import BoundCall, bind_arguments, call_key, current_call, lazy_method  # noqa: F401 - graph keys from whole calls

__all__ = [
    "KeyFunction",
    "cache_key",
    "canonical_indices",
    "class_token",
    "code_fingerprint",
    "dask_content_digest",
    "describe_parameters",
    "estimator_token",
    "fingerprint",
    "function_token",
    "instance_token",
    "layer_name",
    "model_token",
    "object_token",
    "package_version",
    "run_identity",
]

#: Bumped whenever the layout of tokens changes, so old entries are never misread.
_KEY_FORMAT = b"dvl-key-3"
#: Longest key memcached accepts.
MAX_KEY_LENGTH = 250
_MAX_NAMESPACE = 64
_MAX_NAME = 60
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")
_FIX = (
    "To fix, give the object a __dask_tokenize__ method returning a stable value (e.g. a tuple of its "
    "parameters), or pass token=... where dvl_dask accepts one (Utility, the influence calculators)."
)

_Update = Callable[[bytes], Any]
_local = threading.local()


def object_token(*objs: Any) -> str:
    """Deterministic hex token of ``objs``: equal values, equal tokens; different values, different tokens.

    Raises
    ------
    TokenizationError
        If some part of ``objs`` cannot be hashed deterministically.

    Examples
    --------
    >>> import numpy as np
    >>> object_token(np.arange(3)) == object_token(np.arange(3)), object_token(1) == object_token(1.0)
    (True, False)
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(_KEY_FORMAT)
    with _strict():
        for obj in objs:
            _feed(h.update, obj)
    return h.hexdigest()


def fingerprint(*objs: Any) -> str:
    """Deterministic hex token of ``objs`` (the same as :func:`object_token`).

    Examples
    --------
    >>> import numpy as np
    >>> fingerprint(np.arange(3)) == fingerprint(np.arange(3))
    True
    """
    return object_token(*objs)


@contextlib.contextmanager
def _strict() -> Iterator[None]:
    """Inside, the normalisers registered with dask raise instead of following dask's lenient default."""
    depth = getattr(_local, "strict", 0)
    _local.strict = depth + 1
    try:
        yield
    finally:
        _local.strict = depth


# -- canonical byte encoding --------------------------------------------------------------
# Values are fed to a hash as tagged, length-prefixed bytes. Unordered containers (sets,
# dict items) are sorted by the digest of their elements, so neither insertion order nor
# PYTHONHASHSEED matters.


def _digest(obj: Any) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    _feed(h.update, obj)
    return h.digest()


_ARRAY_HEADERS: dict[tuple[Any, tuple[int, ...]], bytes] = {}


def _feed_array(update: _Update, arr: np.ndarray) -> None:
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


def _feed(update: _Update, obj: Any) -> None:
    t = type(obj)
    if t is np.ndarray and not obj.dtype.hasobject:
        _feed_array(update, obj)
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
            _feed(update, item)
    elif t is bytes:
        update(b"b%d:" % len(obj))
        update(obj)
    elif t is dict:
        _feed_mapping(update, b"d", obj)
    elif t is set or t is frozenset:
        update(b"S%d:" % len(obj))
        for d in sorted(_digest(item) for item in obj):
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
        _feed(update, (obj.start, obj.stop, obj.step))
    elif t is types.CodeType:
        _feed_code(update, obj, _Context(None, None, None), set())
    elif isinstance(obj, (types.FunctionType, types.MethodType, functools.partial, types.BuiltinFunctionType)):
        update(b"F")
        update(function_token(obj).encode())
    elif isinstance(obj, type):
        update(b"C")
        update(class_token(obj).encode())
    elif isinstance(obj, types.ModuleType):
        update(b"M")
        _feed(update, obj.__name__)
    elif t is np.dtype:
        update(b"dt")
        _feed(update, obj.str if obj.fields is None else repr(obj.descr))
    else:
        _feed_object(update, obj)


def _feed_mapping(update: _Update, tag: bytes, obj: Mapping[Any, Any]) -> None:
    update(tag + b"%d:" % len(obj))
    for kd, vd in sorted((_digest(k), _digest(v)) for k, v in obj.items()):
        update(kd)
        update(vd)


def _registered_normalizer(cls: type) -> Callable[[Any], Any] | None:
    """The ``normalize_token`` registration for ``cls`` other than dask's generic object one."""
    from dask.tokenize import normalize_object

    try:
        fn = normalize_token.dispatch(cls)
    except TypeError:
        return None
    return None if fn is normalize_object else fn


def _feed_object(update: _Update, obj: Any) -> None:
    """Objects without a fast path: ``__dask_tokenize__``, dask registrations, then class + state."""
    active: set[int] = getattr(_local, "objects", None) or set()
    _local.objects = active
    if id(obj) in active:  # an object that (indirectly) holds itself
        update(b"<cycle>")
        return
    active.add(id(obj))
    try:
        cls = type(obj)
        method = getattr(obj, "__dask_tokenize__", None)
        if method is not None:
            update(b"D")
            update(class_token(cls).encode())
            _feed(update, method())
            return
        if isinstance(obj, np.ndarray):  # object arrays and ndarray subclasses
            update(b"A")
            update(class_token(cls).encode())
            _feed(update, (obj.dtype.str, obj.shape))
            if obj.dtype.hasobject:
                _feed(update, obj.ravel().tolist())
            else:
                _feed_array(update, np.asarray(obj))
            return
        update(b"O")
        update(class_token(cls).encode())
        if isinstance(obj, enum.Enum):
            _feed(update, obj.name)
        elif isinstance(obj, (int, float, str, bytes, complex)):  # subclasses of builtins: their plain value
            base = next(b for b in (bool, int, float, str, bytes, complex) if isinstance(obj, b))
            _feed(update, base(obj))
            _feed(update, _state(obj))
        elif isinstance(obj, (tuple, list)):
            _feed(update, list(obj))
            _feed(update, _state(obj))
        elif isinstance(obj, dict):
            _feed_mapping(update, b"d", obj)
            _feed(update, _state(obj))
        elif isinstance(obj, PurePath):
            _feed(update, obj.as_posix())
        elif dataclasses.is_dataclass(obj):
            _feed(update, {f.name: getattr(obj, f.name, None) for f in dataclasses.fields(obj)})
        else:
            normalizer = _registered_normalizer(cls)
            normalized = normalizer(obj) if normalizer is not None else obj
            if normalized is not obj:  # registered with dask (ours for sklearn and torch, dask's, users')
                update(b"R")
                _feed(update, normalized)
                return
            state = _state(obj)
            _feed(update, _pickled(obj) if state is None else state)
    finally:
        active.discard(id(obj))


def _state(obj: Any) -> Any:
    """What pickle would keep of ``obj``: ``__getstate__()``, else ``__dict__`` and ``__slots__`` (None: nothing)."""
    cls = type(obj)
    getstate = getattr(cls, "__getstate__", None)
    if getstate is not None and getstate is not getattr(object, "__getstate__", None):
        try:
            return obj.__getstate__()
        except TypeError:  # C types refusing to be pickled
            return None
    d = getattr(obj, "__dict__", None)
    slots = [s for c in cls.__mro__ for s in getattr(c, "__slots__", ()) if isinstance(s, str)]
    if d is None and not slots:
        return None
    state = dict(d) if d is not None else {}
    for name in slots:
        if name not in ("__dict__", "__weakref__") and hasattr(obj, name):
            state[name] = getattr(obj, name)
    return state


def _pickled(obj: Any) -> str:
    """Last resort for opaque (C extension) objects: dask's deterministic pickle-based token."""
    try:
        return tokenize(obj, ensure_deterministic=True)
    except Exception as exc:
        raise TokenizationError(
            f"Cannot hash {type(obj).__module__}.{type(obj).__qualname__} deterministically ({exc}). {_FIX}"
        ) from None


def instance_token(obj: Any) -> str:
    """Token of an object by its class (:func:`class_token`) and state, ignoring its ``__dask_tokenize__``.

    The state is what pickle would keep (``__getstate__()``, else ``__dict__``
    and ``__slots__``), hashed by value recursively. Classes use it to
    implement ``__dask_tokenize__`` by value.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(_KEY_FORMAT + b"instance")
    h.update(class_token(type(obj)).encode())
    with _strict():
        state = _state(obj)
        _feed(h.update, _pickled(obj) if state is None else state)
    return h.hexdigest()


# -- packages and classes -------------------------------------------------------------------


def _is_installed(path: str) -> bool:
    parts = PurePath(path).parts
    return "site-packages" in parts or "dist-packages" in parts


@functools.lru_cache(maxsize=1)
def _distributions() -> Mapping[str, list[str]]:
    from importlib.metadata import packages_distributions

    return packages_distributions()


@functools.lru_cache(maxsize=4096)
def package_version(module: str | None) -> str | None:
    """``"<distribution>==<version>"`` of the installed package a module belongs to, else None.

    The standard library gives ``"python==<major>.<minor>"``. Code that is not
    installed -- ``__main__``, notebooks, scripts, editable checkouts -- gives
    None: its identity is its bytecode.

    Examples
    --------
    >>> package_version("numpy.linalg").startswith("numpy==")
    True
    >>> package_version("__main__") is None
    True
    """
    if not module:
        return None
    top = module.partition(".")[0]
    if top in ("__main__", "__mp_main__"):
        return None
    if top in sys.stdlib_module_names or top == "builtins":
        return f"python=={sys.version_info.major}.{sys.version_info.minor}"
    mod = sys.modules.get(top)
    path = getattr(mod, "__file__", None)
    if path is None:
        paths = list(getattr(mod, "__path__", None) or ())
        path = paths[0] if paths else None
    if path is None or not _is_installed(str(path)):
        return None
    from importlib.metadata import PackageNotFoundError, version

    for dist in _distributions().get(top, ()):
        try:
            return f"{dist}=={version(dist)}"
        except PackageNotFoundError:  # pragma: no cover - broken metadata
            continue
    return None  # files in site-packages without metadata: hash their code


_CLASS_TOKENS: weakref.WeakKeyDictionary[type, str] = weakref.WeakKeyDictionary()
_CLASS_LOCK = threading.Lock()


def class_token(cls: type) -> str:
    """Token of a class: name and version for installed packages, name and code for user code.

    User code (not installed: ``__main__``, notebooks, scripts, editable
    checkouts) contributes the bytecode of every method, property and nested
    class, the constants in its body and the tokens of its bases, so editing
    the class changes the token. Tokens are computed once per class object.
    """
    # Tokens are cached for top-level calls only: a class met while hashing another one is
    # hashed afresh, so a token never depends on which classes were hashed before (cycles
    # between classes are cut the same way every time). The lock guards the cache only:
    # holding it while hashing could deadlock against dask's tokenize lock.
    active: set[int] = getattr(_local, "classes", None) or set()
    _local.classes = active
    top_level = not active
    if top_level:
        with _CLASS_LOCK:
            try:
                found = _CLASS_TOKENS.get(cls)
            except TypeError:  # not weak-referenceable
                found = None
        if found is not None:
            return found
    name = f"{getattr(cls, '__module__', '')}.{getattr(cls, '__qualname__', cls.__name__)}"
    if id(cls) in active:  # a method naming its own class
        return f"class:{name}"
    active.add(id(cls))
    try:
        token = _class_token(cls, name)
    finally:
        active.discard(id(cls))
    if top_level:
        with _CLASS_LOCK, contextlib.suppress(TypeError):
            _CLASS_TOKENS[cls] = token
    return token


def _class_token(cls: type, name: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(b"class:")
    _feed(h.update, name)
    version = package_version(getattr(cls, "__module__", None))
    if version is not None or not hasattr(cls, "__dict__"):
        _feed(h.update, version or "builtin")
        return h.hexdigest()
    for base in cls.__bases__:
        if base is not object:
            _feed(h.update, class_token(base))
    module = sys.modules.get(cls.__module__)
    ctx = _Context(cls.__module__, getattr(module, "__dict__", None), cls)
    for attr in sorted(vars(cls)):
        if attr in ("__dict__", "__weakref__", "__doc__", "__module__", "__qualname__", "__annotations__"):
            continue
        value = inspect.getattr_static(cls, attr)
        funcs = _functions_of(value)
        if funcs:
            _feed(h.update, attr)
            for fn in funcs:
                _feed_code(h.update, fn.__code__, ctx, set())
                _feed(h.update, (fn.__defaults__, fn.__kwdefaults__))
        elif isinstance(value, type):
            _feed(h.update, (attr, class_token(value)))
        elif _is_constant(value):
            _feed(h.update, (attr, value))
    return h.hexdigest()


def _functions_of(value: Any) -> list[types.FunctionType]:
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if isinstance(value, property):
        return [f for f in (value.fget, value.fset, value.fdel) if isinstance(f, types.FunctionType)]
    if isinstance(value, functools.cached_property):
        value = value.func
    return [value] if isinstance(value, types.FunctionType) else []


def _is_constant(value: Any, depth: int = 0) -> bool:
    """Immutable plain values (numbers, strings, tuples and frozensets of them): safe to hash as configuration."""
    if value is None or type(value) in (int, float, str, bytes, bool, complex):
        return True
    if isinstance(value, np.generic) and not isinstance(value, np.object_):
        return True
    if isinstance(value, enum.Enum):
        return True
    if type(value) in (tuple, frozenset) and depth < 3 and len(value) <= 256:
        return all(_is_constant(v, depth + 1) for v in value)
    return False


# -- code -----------------------------------------------------------------------------------


class _Context:
    """Where names in a code object are looked up: module globals and the owner class."""

    __slots__ = ("globals", "module", "owner_cls")

    def __init__(self, module: str | None, globals_: dict[str, Any] | None, owner_cls: type | None) -> None:
        self.module = module
        self.globals = globals_
        self.owner_cls = owner_cls


_STORED_GLOBALS: dict[types.CodeType, frozenset[str]] = {}


def _stored_globals(code: types.CodeType) -> frozenset[str]:
    """Names the code assigns with ``global``: run-time state, not configuration."""
    found = _STORED_GLOBALS.get(code)
    if found is None:
        found = frozenset(
            ins.argval for ins in dis.get_instructions(code) if ins.opname in ("STORE_GLOBAL", "DELETE_GLOBAL")
        )
        if len(_STORED_GLOBALS) < 8192:
            _STORED_GLOBALS[code] = found
    return found


def _resolve_name(name: str, ctx: _Context) -> Any:
    """What a name in a code object refers to (module global, or attribute of the owner class)."""
    if ctx.globals is not None and name in ctx.globals:
        return ctx.globals[name]
    if ctx.owner_cls is not None:
        obj = inspect.getattr_static(ctx.owner_cls, name, None)
        funcs = _functions_of(obj)
        return funcs[0] if len(funcs) == 1 else None
    return None


def _feed_code(update: _Update, code: types.CodeType, ctx: _Context, seen: set[int]) -> None:
    if id(code) in seen:
        update(b"<seen>")
        return
    seen.add(id(code))
    update(b"code:")
    for part in (code.co_code, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
        _feed(update, part)
    _feed(update, (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount))
    update(b"consts:%d:" % len(code.co_consts))
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _feed_code(update, const, ctx, seen)
        else:
            _feed(update, const)
    # What the code reads by name: functions (their code, or package and version), classes,
    # and constant module-level values. Names the code itself assigns (`global counter`) are
    # state, not configuration, and left out, as are mutable values and modules.
    stored = _stored_globals(code) if code.co_names else frozenset()
    for name in code.co_names:
        if name in stored:
            continue
        obj = _resolve_name(name, ctx)
        if obj is None:
            continue
        if isinstance(obj, types.FunctionType):
            _feed(update, name)
            version = package_version(getattr(obj, "__module__", None))
            if version is not None:
                _feed(update, ("pkg", obj.__qualname__, version))
                continue
            helper_ctx = _Context(obj.__module__, obj.__globals__, ctx.owner_cls)
            _feed_code(update, obj.__code__, helper_ctx, seen)
            _feed(update, (obj.__defaults__, obj.__kwdefaults__))
        elif isinstance(obj, type):
            _feed(update, (name, class_token(obj)))
        elif _is_constant(obj):
            _feed(update, (name, obj))


def _unwrap(fn: Any) -> tuple[Any, list[Any], Any]:
    """Follow partials, bound methods and ``__wrapped__`` to the code that runs.

    Returns the target, the partial arguments met on the way and the object a
    bound method belongs to (or None).
    """
    target = fn
    partial_args: list[Any] = []
    owner = None
    for _ in range(64):
        if isinstance(target, functools.partial):
            partial_args.append((target.args, sorted(target.keywords.items())))
            target = target.func
        elif isinstance(target, types.MethodType):
            if owner is None and not isinstance(target.__self__, (type, types.ModuleType)):
                owner = target.__self__
            elif isinstance(target.__self__, type):  # classmethod: the class is state
                partial_args.append(target.__self__)
            target = target.__func__
        elif not isinstance(target, type) and getattr(target, "__wrapped__", None) is not None:
            target = target.__wrapped__
        else:
            break
    return target, partial_args, owner


def code_fingerprint(fn: Callable[..., Any]) -> str:
    """Digest of the code behind ``fn``: bytecode, names and constants, recursively.

    Bound methods, ``functools.partial`` objects, ``__wrapped__`` chains and
    callables with a ``__call__`` are unwrapped to the function that runs.
    Nested code objects (inner functions, lambdas, comprehensions) are hashed
    recursively, and so is what the code reads by name: the functions it
    calls (their code, or package and version if installed), classes
    (:func:`class_token`) and constant module-level values (numbers,
    strings, tuples of them; not mutable values, nor names the code assigns
    with ``global``). Functions of installed packages contribute their
    qualified name and the package version instead of their bytecode.
    Neither the file path nor line numbers of user code are part of the
    digest, and sets are hashed in sorted order, so the same code gives the
    same digest in every process and on every machine.

    Examples
    --------
    >>> def f(x):
    ...     return x + 1
    >>> def g(x):
    ...     return x + 2
    >>> code_fingerprint(f) == code_fingerprint(f), code_fingerprint(f) == code_fingerprint(g)
    (True, False)
    """
    target, partial_args, owner = _unwrap(fn)
    h = hashlib.blake2b(digest_size=16)
    update = h.update
    _feed(update, partial_args)
    code = getattr(target, "__code__", None)
    owner_cls = type(owner) if owner is not None else None
    if code is None and not isinstance(target, (types.BuiltinFunctionType, type)):
        # A callable instance: the code of its class's __call__, the instance is state.
        call = type(target).__call__ if callable(target) else None
        code = getattr(call, "__code__", None)
        owner_cls = type(target)
        update(b"instance:")
        update(class_token(type(target)).encode())
        target = call if code is not None else target
    if owner_cls is not None:
        update(b"owner-class:")
        update(class_token(owner_cls).encode())
    if code is None:
        # Builtins, classes and C extensions: qualified name and package version.
        if isinstance(target, type):
            update(class_token(target).encode())
        else:
            name = getattr(target, "__qualname__", None) or type(target).__qualname__
            module = getattr(target, "__module__", None) or type(target).__module__
            _feed(update, f"builtin:{module}.{name}")
            _feed(update, package_version(module) or "")
        return h.hexdigest()
    module = getattr(target, "__module__", None)
    _feed(update, f"{module}.{getattr(target, '__qualname__', '')}")
    version = package_version(module)
    if version is not None:
        _feed(update, ("pkg", version, code.co_name, code.co_firstlineno))
    else:
        _feed_code(update, code, _Context(module, getattr(target, "__globals__", None), owner_cls), set())
    _feed(update, (getattr(target, "__defaults__", None), getattr(target, "__kwdefaults__", None)))
    return h.hexdigest()


def _state_token(fn: Any) -> bytes:
    """Digest of the state a callable carries besides its code."""
    target, _, owner = _unwrap(fn)
    h = hashlib.blake2b(digest_size=16)
    if owner is not None:
        # The object a bound method belongs to; a Utility answers with its stored
        # token (data fingerprint, model parameters, scorer).
        h.update(b"owner:")
        _feed(h.update, owner)
    if isinstance(target, types.FunctionType):
        closure = target.__closure__ or ()
        h.update(b"closure:%d:" % len(closure))
        for cell in closure:
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell (variable not yet assigned)
                h.update(b"<empty>")
                continue
            _feed(h.update, contents)
    elif not isinstance(target, (types.BuiltinFunctionType, type)) and callable(target):
        h.update(b"instance:")
        state = _state(target)
        _feed(h.update, _pickled(target) if state is None else state)
    elif isinstance(target, types.BuiltinFunctionType):
        bound = getattr(target, "__self__", None)
        if bound is not None and not isinstance(bound, types.ModuleType):
            h.update(b"bound:")
            _feed(h.update, bound)
    return h.digest()


def function_token(fn: Callable[..., Any]) -> str:
    """Token of a callable: its :func:`code_fingerprint` and the state it carries.

    The state is the object a bound method belongs to (through its
    ``__dask_tokenize__``, e.g. a :class:`~dvl_dask.Utility`'s data fingerprint,
    model parameters and scorer), the contents of a closure, the arguments of a
    ``functools.partial`` or the attributes of a callable instance.

    Raises
    ------
    TokenizationError
        If some of that state cannot be hashed deterministically.

    Examples
    --------
    >>> def make(threshold):
    ...     return lambda x: x > threshold
    >>> function_token(make(0.5)) == function_token(make(0.5)), function_token(make(0.5)) == function_token(make(0.7))
    (True, False)
    """
    active: set[int] = getattr(_local, "active", None) or set()
    _local.active = active
    if id(fn) in active:  # a function that closes over itself
        return "recursive"
    active.add(id(fn))
    try:
        with _strict():
            h = hashlib.blake2b(digest_size=16)
            h.update(_KEY_FORMAT)
            h.update(code_fingerprint(fn).encode())
            h.update(_state_token(fn))
            return h.hexdigest()
    finally:
        active.discard(id(fn))


# -- models ---------------------------------------------------------------------------------


def estimator_token(estimator: Any, *, fitted: bool = True) -> str:
    """Token of a scikit-learn style estimator: class, ``get_params(deep=False)`` by value, fitted state.

    Parameters are hashed by value (arrays by content, nested estimators
    recursively, callables by code and state). With ``fitted=True`` the
    fitted attributes (public names ending in ``_``) are included too.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> estimator_token(LogisticRegression(C=1.0)) == estimator_token(LogisticRegression(C=1.0))
    True
    >>> estimator_token(LogisticRegression(C=1.0)) == estimator_token(LogisticRegression(C=2.0))
    False
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(_KEY_FORMAT + b"estimator")
    h.update(class_token(type(estimator)).encode())
    with _strict():
        try:
            params = estimator.get_params(deep=False)
        except Exception as exc:
            raise TokenizationError(
                f"Cannot read the parameters of {type(estimator).__qualname__} (get_params raised "
                f"{type(exc).__name__}: {exc}). {_FIX}"
            ) from exc
        _feed(h.update, dict(params))
        if fitted:
            state = getattr(estimator, "__dict__", {})
            _feed(h.update, {k: v for k, v in state.items() if k.endswith("_") and not k.startswith("_")})
    return h.hexdigest()


def model_token(model: Any) -> str:
    """Token of an (unfitted) model: what a computation that clones and fits it depends on.

    ``__dask_tokenize__`` wins; scikit-learn style models (``get_params``) are
    hashed by class and parameters (:func:`estimator_token` without fitted
    state); other objects by class and state (:func:`object_token`).
    """
    if getattr(model, "__dask_tokenize__", None) is None and callable(getattr(model, "get_params", None)):
        return estimator_token(model, fitted=False)
    return object_token(model)


def _scorer_token(scorer: Any) -> str:
    """A scikit-learn scorer: score function (code or package version), sign, kwargs, response method."""
    h = hashlib.blake2b(digest_size=16)
    h.update(_KEY_FORMAT + b"scorer")
    h.update(class_token(type(scorer)).encode())
    with _strict():
        _feed(h.update, dict(vars(scorer)))
    return h.hexdigest()


def _lenient(tag: str, fn: Callable[[Any], str]) -> Callable[[Any], tuple[str, str]]:
    """A ``normalize_token`` registration: strict inside dvl_dask, dask's own rules elsewhere."""

    def normalize(obj: Any) -> tuple[str, str]:
        if getattr(_local, "strict", 0):
            return tag, fn(obj)
        try:
            return tag, fn(obj)
        except TokenizationError as exc:
            from dask.tokenize import _maybe_raise_nondeterministic

            _maybe_raise_nondeterministic(str(exc))
            return tag, uuid.uuid4().hex

    normalize.__name__ = f"normalize_{tag.replace('-', '_')}"
    return normalize


#: How dask normalises plain Python functions once dvl_dask is imported: by code and captured
#: state (dask's default pickles importable functions by reference, so an edited body kept its key).
normalize_function = _lenient("function", function_token)
normalize_token.register(types.FunctionType, normalize_function)


@normalize_token.register_lazy("sklearn")
def _register_sklearn_tokenizers() -> None:
    from sklearn.base import BaseEstimator

    normalize_token.register(BaseEstimator, _lenient("sklearn-estimator", estimator_token))
    try:
        from sklearn.metrics._scorer import _BaseScorer
    except ImportError:  # pragma: no cover - private module moved
        return
    normalize_token.register(_BaseScorer, _lenient("sklearn-scorer", _scorer_token))


# -- data -----------------------------------------------------------------------------------

#: Rows per block of a content digest: a fixed number of bytes, so the digest does not depend on chunks.
_DIGEST_BLOCK_BYTES = 8 * 2**20


def _rows_per_block(shape: tuple[int, ...], itemsize: int) -> int:
    row = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize) if len(shape) > 1 else max(1, itemsize)
    return max(1, _DIGEST_BLOCK_BYTES // row)


def _block_digest(block: np.ndarray) -> np.ndarray:
    h = hashlib.blake2b(digest_size=16)
    _feed_array(h.update, np.asarray(block))
    return np.frombuffer(h.digest(), dtype=np.uint8).reshape((1, 16))


def _combine(shape: tuple[int, ...], dtype: np.dtype, digests: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(_KEY_FORMAT + b"content")
    _feed(h.update, (np.dtype(dtype).str, tuple(int(s) for s in shape)))
    h.update(np.ascontiguousarray(digests, dtype=np.uint8).tobytes())
    return h.hexdigest()


def _combine_parts(shape: tuple[int, ...], dtype: np.dtype, parts: list[np.ndarray]) -> str:
    return _combine(shape, dtype, np.concatenate(parts))


def dask_content_digest(array: Any, *, compute: bool = True) -> Any:
    """Digest of an array's *values*, the same for numpy and dask arrays and for any chunking.

    The rows are cut into blocks of about 8 MiB (a number of rows fixed by
    the shape and dtype, not by the chunks), each block is hashed
    (BLAKE2b), and the block digests are hashed in order with the dtype and
    shape. For a dask array (e.g. backed by zarr or a cloud store) the block
    digests are a dask reduction: the data is read once, in parallel, by the
    current scheduler, and never held in memory as a whole.

    Parameters
    ----------
    array : numpy or dask array
        Must not be object dtype.
    compute : bool
        For dask arrays: False returns a ``dask.delayed`` object.

    Examples
    --------
    >>> import dask.array as da
    >>> x = np.arange(12.0).reshape(6, 2)
    >>> dask_content_digest(x) == dask_content_digest(da.from_array(x, chunks=(4, 1)))
    True
    """
    from ..validation import is_dask_array

    shape = tuple(int(s) for s in array.shape)
    dtype = np.dtype(array.dtype)
    if dtype.hasobject:
        raise TokenizationError(
            f"Cannot digest an object-dtype array (shape {shape}) by content. To fix, convert it to a numeric or "
            "string dtype, or pass version=... to the Dataset."
        )
    if not shape:
        return _combine(shape, dtype, _block_digest(np.asarray(array)))
    rows = _rows_per_block(shape, dtype.itemsize)
    if not is_dask_array(array):
        arr = np.asarray(array)
        blocks = [arr[i : i + rows] for i in range(0, max(1, shape[0]), rows)]
        if len(blocks) > 2:  # hashlib releases the GIL: hash blocks on all cores
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(len(blocks), os.cpu_count() or 1)) as pool:
                digests = list(pool.map(_block_digest, blocks))
        else:
            digests = [_block_digest(b) for b in blocks]
        return _combine(shape, dtype, np.concatenate(digests))
    import dask

    blocks = array.rechunk({0: rows, **{d: -1 for d in range(1, len(shape))}})
    parts = [dask.delayed(_block_digest, pure=True)(b) for b in blocks.to_delayed().ravel()]
    combined = dask.delayed(_combine_parts, pure=True)(shape, dtype, parts)
    return combined.compute() if compute else combined


# -- run identity ---------------------------------------------------------------------------


def run_identity(estimator: Any = None, utility_token: str | None = None, **parts: Any) -> dict[str, Any]:
    """What a persisted run (checkpoint, influence store) records to refuse resuming another computation.

    Returns a JSON-serialisable dict: the dvl_dask version, the estimator's
    class, its parameters in full and its token (code and parameters), the
    utility token and any extra ``parts`` (already JSON-serialisable).
    """
    from .._version import __version__

    identity: dict[str, Any] = {"dvl_dask_version": __version__}
    if estimator is not None:
        identity["estimator"] = {
            "class": f"{type(estimator).__module__}.{type(estimator).__qualname__}",
            "parameters": describe_parameters(getattr(estimator, "__dict__", {})),
            "token": object_token(estimator),
        }
    if utility_token is not None:
        identity["utility_token"] = utility_token
    identity.update(parts)
    return identity


def describe_parameters(value: Any, *, tokens: bool = True, _depth: int = 0) -> Any:
    """A readable, JSON-serialisable description of parameters, for headers and attributes.

    Numbers, strings and containers of them are kept; callables become their
    name and :func:`function_token`; objects with a ``parameters()`` method
    returning a mapping (samplers, truncation policies) are described by it;
    other objects by class name and (with ``tokens=True``) :func:`object_token`.

    Examples
    --------
    >>> describe_parameters({"alpha": 1.0, "rank": np.int64(3), "name": "x"})
    {'alpha': 1.0, 'name': 'x', 'rank': 3}
    """
    depth = _depth + 1
    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is float or isinstance(value, np.floating):
        return float(value) if np.isfinite(value) else repr(float(value))
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    if isinstance(value, enum.Enum):
        return describe_parameters(value.value, tokens=tokens, _depth=depth)
    if isinstance(value, Mapping) and depth < 5:
        return {
            str(k): describe_parameters(v, tokens=tokens, _depth=depth)
            for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))
        }
    if isinstance(value, (list, tuple)) and depth < 5 and len(value) <= 64:
        return [describe_parameters(v, tokens=tokens, _depth=depth) for v in value]
    if isinstance(value, (types.FunctionType, functools.partial, types.MethodType)):
        target, _, _ = _unwrap(value)
        name = getattr(target, "__qualname__", type(target).__qualname__)
        return {"callable": name, "token": _token_or_none(function_token, value) if tokens else None}
    described: dict[str, Any] = {"class": type(value).__qualname__}
    params = getattr(value, "parameters", None)
    if callable(params) and depth < 5:
        with contextlib.suppress(Exception):
            found = params()
            if isinstance(found, Mapping):
                described.update(describe_parameters(found, tokens=tokens, _depth=depth))
                return described
    described["token"] = _token_or_none(object_token, value) if tokens else None
    return described


def _token_or_none(fn: Callable[[Any], str], value: Any) -> str | None:
    try:
        return fn(value)
    except TokenizationError:  # described, not identified: the caller holds the identity (token=)
        return None


# -- coalitions and keys ------------------------------------------------------------------


def canonical_indices(indices: Iterable[int] | np.ndarray) -> np.ndarray:
    """Sorted, unique ``int64`` indices: equal coalitions get equal arrays.

    Examples
    --------
    >>> canonical_indices([3, 1, 3, 2])
    array([1, 2, 3])
    """
    if isinstance(indices, np.ndarray):
        arr = indices.astype(np.int64, copy=False).reshape(-1)
    elif isinstance(indices, (set, frozenset, range, list, tuple)):
        arr = np.fromiter(indices, dtype=np.int64, count=len(indices))
    else:
        arr = np.fromiter(indices, dtype=np.int64)
    return np.unique(arr)


def _check_namespace(namespace: Any) -> str:
    if (
        not isinstance(namespace, str)
        or not namespace
        or not namespace.isascii()
        or not namespace.isprintable()
        or any(c.isspace() for c in namespace)
        or len(namespace) > _MAX_NAMESPACE
    ):
        raise InvalidParameterError(
            f"The cache namespace (option {config.CACHE_NAMESPACE!r} or the 'namespace' argument) must be a "
            f"non-empty printable ASCII string without whitespace of at most {_MAX_NAMESPACE} characters. "
            f"Got {namespace!r} instead."
        )
    return namespace


def _readable_name(fn: Any) -> str:
    target, _, _ = _unwrap(fn)
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return _UNSAFE_NAME_CHARS.sub("_", name.replace(".<locals>.", "."))[-_MAX_NAME:] or "fn"


class KeyFunction:
    """Cache keys for calls of one function: ``"<namespace>:<name>:<digest>"``.

    Everything that does not change between calls -- the code fingerprint, the
    token of the object a bound method belongs to, closure contents, how
    arguments bind to parameter names -- is computed once, here. A call then
    binds the arguments to parameter names (so ``f(1, b=2)``, ``f(1, 2)`` and
    ``f(1)`` with default ``b=2`` share a key), drops ``ignore_args``, turns
    ``subset_args`` into sorted unique ``int64`` indices, and hashes the rest.

    Parameters
    ----------
    fn : callable
        The function whose calls are keyed.
    namespace : str, optional
        First part of every key, e.g. one per experiment sharing a server.
        Default from ``dvl_dask.cache.namespace`` (``"dvl"``).
    ignore_args : collection of str, optional
        Names of parameters that do not influence the result (progress bars,
        job ids, the index being valued); they are left out of the key.
    subset_args : collection of str, optional
        Names of parameters that hold a coalition (indices of players): their
        order and repetitions are ignored, so equal coalitions share one key.
    signature : inspect.Signature, optional
        Signature used to bind arguments, for callables whose signature
        :func:`inspect.signature` cannot read.
    salt : tuple, optional
        Extra values mixed into every key (e.g. the memoization mode).
    function_key : bytes, optional
        Stands for the function in the keys instead of its code and state
        (pyDVL's ``signature`` bytes): functions given the same bytes share
        entries whatever their code.

    Notes
    -----
    Keys are printable ASCII without whitespace and at most 250 characters
    (64 for the namespace, 60 for the readable name, 32 hex digits of
    BLAKE2b), the limits of memcached. The state of the function (e.g. a
    Utility's data) is hashed when the KeyFunction is built.

    Examples
    --------
    >>> def f(players, verbose=False):
    ...     return len(players)
    >>> key = KeyFunction(f, ignore_args=["verbose"], subset_args=["players"], namespace="doc")
    >>> key(([2, 1],), {}) == key(([1, 2, 2],), {"verbose": True})
    True
    >>> key(([2, 1],), {}).startswith("doc:f:")
    True
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        namespace: str | None = None,
        ignore_args: Collection[str] | None = None,
        subset_args: Collection[str] | None = None,
        signature: inspect.Signature | None = None,
        salt: tuple[Any, ...] = (),
        function_key: bytes | None = None,
    ) -> None:
        if not callable(fn):
            raise InvalidParameterError(
                f"The 'fn' argument of KeyFunction must be callable. Got {type(fn).__name__} instead."
            )
        self.namespace = _check_namespace(config.get(config.CACHE_NAMESPACE, override_with=namespace))
        # With a function_key the function's name stays out of the key too, so that every function given
        # the same key shares entries.
        self.prefix = f"{self.namespace}:{'function-key' if function_key is not None else _readable_name(fn)}:"
        self.ignore_args = frozenset(_check_names(ignore_args, "ignore_args"))
        self.subset_args = frozenset(_check_names(subset_args, "subset_args"))
        sig = signature if signature is not None else _signature(fn)
        self._positional: tuple[str, ...] = ()
        self._declared: tuple[str, ...] = ()
        self._var_positional = "*args"
        self._defaults: tuple[tuple[str, Any], ...] = ()
        if sig is not None:
            if not isinstance(sig, inspect.Signature):
                raise InvalidParameterError(
                    "The 'signature' argument must be an inspect.Signature. "
                    f"Got {type(sig).__name__} instead. "
                    "To fix, pass inspect.signature(some_function_with_the_same_parameters)."
                )
            params = list(sig.parameters.values())
            var_kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
            self._positional = tuple(
                p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            )
            self._declared = tuple(p.name for p in params if p.kind not in var_kinds)
            self._var_positional = next((p.name for p in params if p.kind is p.VAR_POSITIONAL), "*args")
            self._defaults = tuple(
                (p.name, p.default)
                for p in params
                if p.default is not p.empty and p.name not in self.ignore_args
            )
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                known = {p.name for p in params}
                for arg, names in (("ignore_args", self.ignore_args), ("subset_args", self.subset_args)):
                    unknown = sorted(names - known)
                    if unknown:
                        raise InvalidParameterError(
                            f"The {arg!r} argument names parameters {unknown} that "
                            f"{_readable_name(fn)} does not have; its parameters are {sorted(known)}. "
                            "To fix, use the parameter names of the function (or pass its 'signature')."
                        )
        self._name_bytes = {name: _name_bytes(name) for name in self._declared}
        self._positional_bytes = tuple(self._name_bytes[name] for name in self._positional)
        # Calls with exactly the positional parameters, nothing to drop, canonicalise or
        # default take a shortcut that feeds the same bytes as the general path.
        positional = set(self._positional)
        self._plain = (
            not self.ignore_args
            and not self.subset_args
            and all(name in positional for name, _ in self._defaults)
        )
        h = hashlib.blake2b(digest_size=16)
        if function_key is None:
            h.update(function_token(fn).encode())
        elif isinstance(function_key, bytes):
            h.update(b"function-key:" + function_key)
        else:
            raise InvalidParameterError(
                f"The 'function_key' argument of KeyFunction must be bytes. Got {type(function_key).__name__} instead."
            )
        _feed(h.update, salt)
        _feed(h.update, sorted(self.ignore_args))
        _feed(h.update, sorted(self.subset_args))
        self.function_token = h.hexdigest()
        self._seed = h.digest()

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Canonical named arguments of a call, as they enter the key.

        Declared parameters come first, in their declared order, then any
        others (``*args``, ``**kwargs``) sorted by name.
        """
        bound: dict[str, Any] = dict(zip(self._positional, args))
        if len(args) > len(self._positional):
            bound[self._var_positional] = tuple(args[len(self._positional) :])
        if kwargs:
            bound.update(kwargs)
        for name, default in self._defaults:
            if name not in bound:
                bound[name] = default
        for name in self.ignore_args:
            bound.pop(name, None)
        for name in self.subset_args:
            if name in bound:
                bound[name] = canonical_indices(bound[name])
        ordered = {name: bound.pop(name) for name in self._declared if name in bound}
        for name in sorted(bound):
            ordered[name] = bound[name]
        return ordered

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The key of ``fn(*args, **kwargs)``."""
        h = hashlib.blake2b(self._seed, digest_size=16)
        update = h.update
        if self._plain and not kwargs and len(args) == len(self._positional):
            for name, value in zip(self._positional_bytes, args):
                update(name)
                _feed(update, value)
        else:
            names = self._name_bytes
            for name, value in self.bind(args, kwargs).items():
                update(names.get(name) or _name_bytes(name))
                _feed(update, value)
        return self.prefix + h.hexdigest()

    def __repr__(self) -> str:
        return f"KeyFunction({self.prefix}*)"


def _name_bytes(name: str) -> bytes:
    data = name.encode("utf-8", "surrogatepass")
    return b"n%d:" % len(data) + data


def _check_names(names: Collection[str] | None, arg: str) -> list[str]:
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    names = list(names)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise InvalidParameterError(
            f"The {arg!r} argument must be a collection of parameter names (str). Got {bad!r} in it."
        )
    return names


def _signature(fn: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def cache_key(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    namespace: str | None = None,
    ignore_args: Collection[str] | None = None,
    subset_args: Collection[str] | None = None,
) -> str:
    """The cache key of ``fn(*args, **kwargs)``: ASCII, no whitespace, at most 250 characters.

    Combines :func:`code_fingerprint` of ``fn``, the state it carries (for a
    bound method, its owner's ``__dask_tokenize__``: a Utility's data
    fingerprint, model and scorer) and the canonical arguments. For many calls
    of one function build a :class:`KeyFunction` once instead.

    Examples
    --------
    >>> def f(players):
    ...     return len(players)
    >>> key = cache_key(f, ([3, 1],), {}, subset_args=["players"])
    >>> key == cache_key(f, ({1, 3},), {}, subset_args=["players"])
    True
    """
    key = KeyFunction(fn, namespace=namespace, ignore_args=ignore_args, subset_args=subset_args)
    return key(args, kwargs)


def layer_name(verb: str, *parts: Any) -> str:
    """Name of a graph layer: ``"<verb>-<token of parts>"``, same inputs, same name."""
    return f"{verb}-{fingerprint(*parts)}"


# torch tensors and modules hash by value. The normalisers live with the rest of the
# torch code and are imported only once dask meets a torch object, so this module
# (and `import dvl_dask`) never imports torch itself.


@normalize_token.register_lazy("torch")
def _register_torch_tokenizers() -> None:
    from ..influence.torch._tokenize import register

    register()
