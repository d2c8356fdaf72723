"""Graph keys from the whole bound call of a lazy method.

A lazy method (a function that builds a dask graph) names its tasks from ONE
token of its whole call: the method's qualified name, every argument bound to
its parameter name *after defaults* (budget, seed, sampler, truncation,
layout parameters, everything), and the ``dvl_dask.*`` options in effect
(defaults that ``None`` arguments resolve to at call time). Two calls share
task names exactly when they are the same computation, and adding a
parameter to a method changes its keys without anyone having to remember to
add it to a list: a dask graph computing two results whose layers share a
name silently keeps only one (budgets 20, 80 and 320 computed
together returned the 320 run three times).

Seeds are resolved before hashing: the decorator turns the seed argument into
a :class:`numpy.random.SeedSequence` once and passes *that* to the method, so
``seed=None`` draws fresh entropy (a fresh key per call) that the method then
uses and records, while equal ints (or equal sequences) give equal keys.

Usage::

    @lazy_method
    def my_method(utility, *, n_samples, seed=None):
        name = current_call().layer("my-method-block")  # "<verb>-<token of the call>"
        ...
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import inspect
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, TypeVar

import dask.config
import numpy as np

from .. import config
from ..errors import InvalidArgumentsError, InvalidParameterError
from ..validation import as_seed_sequence, check_callable, check_keywords, check_mapping, check_name
from ._tokens import graph_token

__all__ = ["BoundCall", "bind_arguments", "call_key", "current_call", "lazy_method"]

F = TypeVar("F", bound=Callable[..., Any])

#: Options whose values must never enter a key, even hashed (secrets).
_SECRET_OPTIONS = (config.CACHE_HMAC_KEY,)


# -- binding and hashing a call ------------------------------------------------------------------------


def qualified_name(func: Callable[..., Any]) -> str:
    """``"<module>.<qualname>"`` of ``func`` (unwrapping decorators)."""
    target = inspect.unwrap(func)
    return f"{getattr(target, '__module__', None) or '?'}.{getattr(target, '__qualname__', type(target).__name__)}"


def bind_arguments(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any], *, exclude: Collection[str] = ()
) -> dict[str, Any]:
    """Every argument of ``func(*args, **kwargs)`` by parameter name, defaults applied, in declared order.

    ``*args`` and ``**kwargs`` parameters appear under their names (a tuple and
    a dict). Names in ``exclude`` are dropped.

    Raises
    ------
    InvalidArgumentsError
        If the arguments do not fit the signature (as calling ``func`` would; a TypeError too), with the
        closest parameter name for a misspelt keyword.

    Examples
    --------
    >>> def f(a, b=2, *, c=3):
    ...     pass
    >>> bind_arguments(f, (1,), {"c": 4})
    {'a': 1, 'b': 2, 'c': 4}
    """
    return _bind(func, inspect.signature(func), args, kwargs, exclude)


def _bind(
    func: Callable[..., Any],
    signature: inspect.Signature,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    exclude: Collection[str] = (),
) -> dict[str, Any]:
    owner = getattr(func, "__qualname__", func)
    params = signature.parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        keywords = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        check_keywords(kwargs, [*keywords, *getattr(func, "__keyword_aliases__", {})], str(owner))
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise InvalidArgumentsError(f"{owner}(): {exc}") from None
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k not in exclude}


def _hashable(value: Any) -> Any:
    """What of an argument enters the key: a seed sequence by what it draws, anything else as is."""
    if isinstance(value, np.random.SeedSequence):
        return ("SeedSequence", value.entropy, tuple(value.spawn_key), value.pool_size, value.n_children_spawned)
    return value


def _options() -> Any:
    """The ``dvl_dask.*`` options in effect (defaults of None arguments resolve to them), secrets dropped."""
    options = dask.config.get("dvl_dask", default={})
    for secret in _SECRET_OPTIONS:
        options = _without(options, secret.split(".")[1:])
    return options


def _without(tree: Any, path: list[str]) -> Any:
    if not path or not isinstance(tree, Mapping):
        return tree
    head, rest = path[0], path[1:]
    found = next((k for k in tree if str(k).replace("_", "-") == head), None)
    if found is None:
        return tree
    out = dict(tree)
    if rest:
        out[found] = _without(tree[found], rest)
    else:
        out[found] = "<set>" if tree[found] else None
    return out


@dataclasses.dataclass(frozen=True)
class BoundCall:
    """One call of a lazy method: its name, its arguments (seeds resolved) and their token.

    Attributes
    ----------
    name : str
        Qualified name of the method.
    arguments : dict
        Every argument that entered the token, by parameter name, after
        defaults, with seeds as :class:`numpy.random.SeedSequence` (what the
        method runs with).
    token : str
        Token of the name, the arguments and the ``dvl_dask.*`` options in effect.
    """

    name: str
    arguments: Mapping[str, Any]
    token: str

    def __post_init__(self) -> None:
        check_name(self.name, "name", "BoundCall")
        check_mapping(self.arguments, "arguments", "BoundCall")
        check_name(self.token, "token", "BoundCall")

    @classmethod
    def of(cls, func: Callable[..., Any], arguments: Mapping[str, Any]) -> BoundCall:
        """The call of ``func`` with bound ``arguments``; its token hashes all of them."""
        name = qualified_name(func)
        # Each argument on its own: one that cannot be hashed gets a token unique to it, the others keep theirs.
        items = [(k, graph_token(_hashable(v))) for k, v in arguments.items()]
        return cls(name, dict(arguments), graph_token("dvl-call", name, items, _options()))

    def layer(self, verb: str, *extra: Any) -> str:
        """Graph layer name ``"<verb>-<token>"``; ``extra`` values (resolved inside the method) are hashed in too.

        Task names derive from it: ``f"{layer}-{i}"`` for blocks and
        :func:`dvl_dask.valuation._graph.companion_name` for the tasks combining them.
        """
        token = self.token if not extra else graph_token(self.token, *(_hashable(e) for e in extra))
        return f"{verb}-{token}"


_CURRENT: contextvars.ContextVar[BoundCall | None] = contextvars.ContextVar("dvl_dask_current_call", default=None)


def current_call() -> BoundCall:
    """The :class:`BoundCall` of the innermost :func:`lazy_method` running in this context.

    Raises
    ------
    RuntimeError
        Outside a lazy method: graph keys must come from a whole call.
    """
    call = _CURRENT.get()
    if call is None:
        raise RuntimeError(
            "current_call() is only available inside a function decorated with dvl_dask.keys.lazy_method: "
            "graph keys are derived from the method's whole bound call."
        )
    return call


@contextlib.contextmanager
def _active(call: BoundCall) -> Iterator[BoundCall]:
    reset = _CURRENT.set(call)
    try:
        yield call
    finally:
        _CURRENT.reset(reset)


def _resolve_seeds(func: Callable[..., Any], arguments: dict[str, Any], seeds: Collection[str]) -> None:
    for name in seeds:
        if name in arguments:
            arguments[name] = as_seed_sequence(arguments[name], name, func.__name__)


def lazy_method(
    func: F | None = None, *, seeds: Collection[str] = ("seed",), exclude: Collection[str] = ()
) -> Any:
    """Decorate a function that builds a graph: its keys come from its whole bound call.

    On every call the arguments are bound to the signature (defaults applied),
    the parameters named in ``seeds`` are resolved to a
    :class:`numpy.random.SeedSequence` (so ``None`` draws entropy once, used
    both in the key and by the method), and the function runs with exactly
    these arguments while :func:`current_call` returns their
    :class:`BoundCall`. Parameters named in ``exclude`` stay out of the token;
    use it only for arguments that cannot change any task's result (where
    to run, progress display).

    Parameters
    ----------
    func : callable
        The method (when used as ``@lazy_method`` without arguments).
    seeds : collection of str
        Names of seed parameters (default ``("seed",)``, if the method has one).
    exclude : collection of str
        Names of parameters that never change a result.

    Examples
    --------
    >>> @lazy_method
    ... def method(n, *, seed=None):
    ...     return current_call().layer("method-block")
    >>> method(3, seed=0) == method(n=3, seed=0), method(3, seed=0) == method(4, seed=0)
    (True, False)
    >>> method(3) == method(3)  # seed=None: fresh entropy, fresh keys
    False
    """

    def decorate(fn: F) -> F:
        check_callable(fn, "func", "lazy_method")
        signature = inspect.signature(fn)
        for arg, names in (("seeds", seeds), ("exclude", exclude)):
            ok = not isinstance(names, str) and isinstance(names, Collection)
            # the default seeds=("seed",) applies only "if the method has one"; names given must all exist
            if ok and not (arg == "seeds" and tuple(names) == ("seed",)):
                ok = not set(names) - set(signature.parameters)
            if not ok:
                raise InvalidParameterError(
                    f"The '{arg}' argument of lazy_method must be a collection of parameter names of "
                    f"{fn.__qualname__} ({sorted(signature.parameters)}). Got {names!r:.60}."
                )

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            arguments = _bind(fn, signature, args, kwargs)
            _resolve_seeds(fn, arguments, seeds)
            hashed = {k: v for k, v in arguments.items() if k not in exclude}
            with _active(BoundCall.of(fn, hashed)):
                return _call_with(fn, signature, arguments)

        # How the key is made, read by call_key (and by tests that check every method is keyed by its call).
        wrapper.__dvl_lazy_method__ = {"seeds": tuple(seeds), "exclude": tuple(exclude)}  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate if func is None else decorate(func)


def _call_with(fn: Callable[..., Any], signature: inspect.Signature, arguments: Mapping[str, Any]) -> Any:
    """Call ``fn`` with bound ``arguments`` (as :func:`bind_arguments` returns them)."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for param in signature.parameters.values():
        if param.name not in arguments:
            continue
        value = arguments[param.name]
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            args.append(value)
        elif param.kind is param.VAR_POSITIONAL:
            args.extend(value)
        elif param.kind is param.KEYWORD_ONLY:
            kwargs[param.name] = value
        else:
            kwargs.update(value)
    return fn(*args, **kwargs)


def call_key(func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """Key prefix ``"<name>-<token>"`` of the call ``func(*args, **kwargs)``, without running it.

    The same token a :func:`lazy_method` derives its task names from (seeds
    resolved, so ``seed=None`` gives a fresh key).

    Examples
    --------
    >>> def f(x, *, seed=None):
    ...     pass
    >>> call_key(f, (1,), {"seed": 0}) == call_key(f, (), {"x": 1, "seed": 0})
    True
    """
    check_callable(func, "func", "call_key")
    how = getattr(func, "__dvl_lazy_method__", None) or {"seeds": ("seed",), "exclude": ()}
    target = inspect.unwrap(func)
    arguments = bind_arguments(target, args, kwargs)
    _resolve_seeds(target, arguments, how["seeds"])
    hashed = {k: v for k, v in arguments.items() if k not in how["exclude"]}
    return BoundCall.of(target, hashed).layer(target.__name__.strip("_").replace("_", "-"))
