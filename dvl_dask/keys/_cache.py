"""Cache keys: :class:`KeyFunction`, :func:`cache_key` and canonical coalitions (:func:`canonical_indices`)."""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Callable, Collection, Iterable
from typing import Any

import numpy as np

from .. import config
from ..errors import InvalidParameterError
from ._code import function_token, innermost
from ._encode import feed

_MAX_NAMESPACE = 64
_MAX_NAME = 60
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")


def canonical_indices(indices: Iterable[int] | np.ndarray) -> np.ndarray:
    """Sorted, unique ``int64`` indices: equal coalitions get equal arrays.

    Examples
    --------
    >>> canonical_indices([3, 1, 3, 2])
    array([1, 2, 3])
    """
    if isinstance(indices, (str, bytes)) or not isinstance(indices, Iterable):
        raise _bad_indices(indices)
    if not isinstance(indices, np.ndarray):
        try:
            indices = np.asarray(indices if isinstance(indices, (list, tuple, range)) else list(indices))
        except ValueError:  # ragged nesting
            raise _bad_indices(indices) from None
    if indices.ndim > 1 or (indices.size and indices.dtype.kind not in "iu"):
        raise _bad_indices(indices)
    return np.unique(indices.astype(np.int64, copy=False).reshape(-1))


def _bad_indices(indices: Any) -> InvalidParameterError:
    return InvalidParameterError(
        "The 'indices' argument of canonical_indices must be a flat sequence of integer player indices (a list, "
        f"range, set or 1-D integer array). Got {type(indices).__name__} {indices!r:.60} instead; indices are "
        "never truncated or flattened."
    )


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
    target = innermost(fn)
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
        feed(h.update, salt)
        feed(h.update, sorted(self.ignore_args))
        feed(h.update, sorted(self.subset_args))
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
                feed(update, value)
        else:
            names = self._name_bytes
            for name, value in self.bind(args, kwargs).items():
                update(names.get(name) or _name_bytes(name))
                feed(update, value)
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
