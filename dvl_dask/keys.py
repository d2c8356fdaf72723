"""The one place that hashes.

* :func:`fingerprint` -- a deterministic token of any object (data, params).
* :func:`code_fingerprint` -- a digest of a callable's *code*. ``dask.base.tokenize``
  hashes importable functions by reference, so an edited function body keeps
  its token; caches that outlive a process need the code itself in the key.
* :func:`function_token` -- code plus the state a callable carries (the object a
  bound method belongs to, closure cells, ``functools.partial`` arguments).
* :class:`KeyFunction` and :func:`cache_key` -- function token + canonical
  arguments, as a short ASCII key usable by every cache backend (memcached too).
* :func:`canonical_indices` -- sorted unique ``int64`` indices of a coalition.
* :func:`layer_name` -- ``"<verb>-<token>"`` names for graph layers.

Hashing never falls back to a random value: anything that cannot be hashed
deterministically raises :class:`~dvl_dask.errors.TokenizationError`. Nothing
here uses Python's ``hash()``, so keys do not depend on ``PYTHONHASHSEED`` and
are the same in every process, on every machine and in every run (for the same
Python minor version, whose bytecode they include).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import re
import struct
import threading
import types
from collections.abc import Callable, Collection, Iterable
from typing import Any

import numpy as np
from dask.base import tokenize

from . import config
from .errors import InvalidParameterError, TokenizationError

__all__ = [
    "KeyFunction",
    "cache_key",
    "canonical_indices",
    "code_fingerprint",
    "fingerprint",
    "function_token",
    "layer_name",
]

#: Bumped whenever the layout of cache keys changes, so old entries are never misread.
_KEY_FORMAT = b"dvl-key-2"
#: Longest key memcached accepts.
MAX_KEY_LENGTH = 250
_MAX_NAMESPACE = 64
_MAX_NAME = 60
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")


def fingerprint(*objs: Any) -> str:
    """Deterministic hex token of ``objs`` (``dask.base.tokenize``, never random).

    Examples
    --------
    >>> import numpy as np
    >>> fingerprint(np.arange(3)) == fingerprint(np.arange(3))
    True
    """
    try:
        return tokenize(*objs, ensure_deterministic=True)
    except Exception as exc:
        raise TokenizationError(
            f"Cannot hash {', '.join(type(o).__name__ for o in objs)} deterministically: {exc}. "
            "To fix, give the object a __dask_tokenize__ method returning a stable value."
        ) from exc


# -- canonical byte encoding --------------------------------------------------------------
# Values are fed to a hash as tagged, length-prefixed bytes. Unordered containers (sets,
# dict items) are sorted by the digest of their elements, so neither insertion order nor
# PYTHONHASHSEED matters. Types without a fast path go through ``fingerprint``.

_Update = Callable[[bytes], Any]
_local = threading.local()


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
        arr = np.ascontiguousarray(arr)
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
        update(b"d%d:" % len(obj))
        for kd, vd in sorted((_digest(k), _digest(v)) for k, v in obj.items()):
            update(kd)
            update(vd)
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
    elif t is types.CodeType:
        _feed_code(update, obj, _Context(None, None, None), set())
    elif isinstance(obj, (types.FunctionType, types.MethodType, functools.partial)):
        update(b"F")
        update(function_token(obj).encode())
    else:
        update(b"k")
        update(fingerprint(obj).encode())


# -- code -----------------------------------------------------------------------------------


class _Context:
    """Where names in a code object are looked up: module globals and the owner class."""

    __slots__ = ("globals", "module", "owner_cls")

    def __init__(self, module: str | None, globals_: dict[str, Any] | None, owner_cls: type | None) -> None:
        self.module = module
        self.globals = globals_
        self.owner_cls = owner_cls


def _resolve_helper(name: str, ctx: _Context) -> Any:
    """The function a name in a code object refers to, if its code belongs in the digest.

    Module-level *values* are deliberately left out: a global counter would give
    every process a different key.
    """
    obj = None
    if ctx.globals is not None and name in ctx.globals:
        obj = ctx.globals[name]
    elif ctx.owner_cls is not None:
        obj = inspect.getattr_static(ctx.owner_cls, name, None)
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        elif isinstance(obj, property):
            obj = obj.fget
    if isinstance(obj, types.FunctionType) and obj.__module__ == ctx.module:
        return obj
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
    # Helpers the code calls by name: functions of the same module and methods of the
    # owner's class. Editing them changes the key too.
    for name in code.co_names:
        helper = _resolve_helper(name, ctx)
        if helper is None:
            continue
        _feed(update, name)
        helper_ctx = _Context(helper.__module__, helper.__globals__, ctx.owner_cls)
        _feed_code(update, helper.__code__, helper_ctx, seen)
        _feed(update, (helper.__defaults__, helper.__kwdefaults__))


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
                partial_args.append(f"{target.__self__.__module__}.{target.__self__.__qualname__}")
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
    recursively, and so are the helpers the code names: functions of the same
    module and methods of the owner's class (not module-level values, and not
    functions of other modules).
    Neither the file path nor line numbers are part of the digest, and sets
    are hashed in sorted order, so the same code gives the same digest in
    every process and on every machine.

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
        _feed(update, f"{type(target).__module__}.{type(target).__qualname__}")
        target = call if code is not None else target
    if code is None:
        # Builtins, classes and C extensions: their identity is their qualified name.
        name = getattr(target, "__qualname__", None) or type(target).__qualname__
        _feed(update, f"builtin:{getattr(target, '__module__', '')}.{name}")
    else:
        module = getattr(target, "__module__", None)
        _feed(update, f"{module}.{getattr(target, '__qualname__', '')}")
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
        h.update(fingerprint(owner).encode())
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
        h.update(fingerprint(target).encode())
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
    """
    active: set[int] = getattr(_local, "active", None) or set()
    _local.active = active
    if id(fn) in active:  # a function that closes over itself
        return "recursive"
    active.add(id(fn))
    try:
        h = hashlib.blake2b(digest_size=16)
        h.update(_KEY_FORMAT)
        h.update(code_fingerprint(fn).encode())
        h.update(_state_token(fn))
        return h.hexdigest()
    finally:
        active.discard(id(fn))


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
    ) -> None:
        if not callable(fn):
            raise InvalidParameterError(
                f"The 'fn' argument of KeyFunction must be callable. Got {type(fn).__name__} instead."
            )
        self.namespace = _check_namespace(config.get(config.CACHE_NAMESPACE, override_with=namespace))
        self.prefix = f"{self.namespace}:{_readable_name(fn)}:"
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
        h.update(function_token(fn).encode())
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
from dask.base import normalize_token  # noqa: E402  (kept with the block it serves)


@normalize_token.register_lazy("torch")
def _register_torch_tokenizers() -> None:
    from .influence.torch._tokenize import register

    register()
