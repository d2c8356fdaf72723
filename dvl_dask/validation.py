"""Boundary checks: turn user input into validated values or raise clearly.

Every check names the argument and its owner and says what was expected, in
the shape "The 'n' parameter of f must be ... Got ... instead." Internal code
calls these once at the public boundary and trusts the values afterwards.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from .errors import InvalidArgumentsError, InvalidDataError, InvalidModelError, InvalidParameterError

__all__ = [
    "SeedLike",
    "as_seed_sequence",
    "check_array",
    "check_coalition",
    "check_consistent_length",
    "check_bool",
    "check_callable",
    "check_finite_score",
    "check_keywords",
    "check_mapping",
    "check_model",
    "check_name",
    "check_positive_int",
    "check_real",
    "check_url",
    "describe_coalition",
    "describe_point",
    "is_dask_array",
    "keyword_aliases",
    "seed_entropy",
    "unknown_keyword_error",
]

_F = TypeVar("_F", bound=Callable[..., Any])


def keyword_aliases(**aliases: str) -> Callable[[_F], _F]:
    """Accept other spellings of keyword arguments: ``alias="canonical"`` pairs.

    The decorated function keeps its signature (``inspect.signature`` shows
    the canonical names); a call may name a parameter by its canonical name
    or by one alias, never both (a :class:`TypeError`, like Python's own
    "got multiple values"). dvl_dask uses it for pyDVL's names of the same
    parameters (see ``docs/pydvl-names.md``); the alias of a positional
    parameter also counts it as given when it is passed by position.
    The mapping is kept as ``fn.__keyword_aliases__``.

    Examples
    --------
    >>> @keyword_aliases(random_state="seed")
    ... def split(n, seed=None):
    ...     return n, seed
    >>> split(3, random_state=1)
    (3, 1)
    >>> split(3, 2, random_state=1)
    Traceback (most recent call last):
    ...
    TypeError: split() got 'seed' and its synonym 'random_state'; pass only one of them.
    """

    for alias, canonical in aliases.items():
        check_name(canonical, alias, "keyword_aliases")

    def decorate(fn: _F) -> _F:
        check_callable(fn, "fn", "keyword_aliases")
        params = inspect.signature(fn).parameters
        positions = {}
        for i, (name, param) in enumerate(params.items()):
            if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                positions[name] = i
        for alias, canonical in aliases.items():
            if canonical not in params or alias in params:
                raise InvalidParameterError(
                    f"keyword_aliases: the alias {alias}={canonical!r} does not fit {fn.__qualname__}: it needs a "
                    f"parameter named {canonical!r} and none named {alias!r}. Its parameters are {list(params)}."
                )
        qualname = fn.__qualname__
        owner = qualname[: -len(".__init__")] if qualname.endswith(".__init__") else qualname

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for alias, canonical in aliases.items():
                if alias in kwargs:
                    position = positions.get(canonical)
                    if canonical in kwargs or (position is not None and len(args) > position):
                        raise TypeError(
                            f"{owner}() got {canonical!r} and its synonym {alias!r}; pass only one of them."
                        )
                    kwargs[canonical] = kwargs.pop(alias)
            return fn(*args, **kwargs)

        wrapper.__keyword_aliases__ = {**getattr(fn, "__keyword_aliases__", {}), **aliases}  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate

SeedLike = int | np.random.SeedSequence | None


def is_dask_array(x: Any) -> bool:
    """True if ``x`` is a dask array (without importing dask.array eagerly)."""
    return type(x).__module__.startswith("dask.array") and hasattr(x, "chunks")


def check_positive_int(value: Any, name: str, owner: str, *, allow_zero: bool = False) -> int:
    """Return ``value`` as an int if it is a positive integer (or zero when allowed)."""
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise InvalidParameterError(
            f"The {name!r} parameter of {owner} must be an int in the range "
            f"[{low}, inf). Got {value!r} instead."
        )
    return int(value)


def check_real(
    value: Any,
    name: str,
    owner: str,
    *,
    low: float = -np.inf,
    high: float = np.inf,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = False,
) -> float:
    """Return ``value`` as a float inside the given interval (never NaN; never infinite with ``finite``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidParameterError(
            f"The {name!r} parameter of {owner} must be a real number. Got {value!r} instead."
        )
    try:
        v = float(value)
    except OverflowError:  # an int beyond float range
        v = math.inf if value > 0 else -math.inf
    if math.isnan(v):
        raise InvalidParameterError(
            f"The {name!r} parameter of {owner} must be a real number. Got {value!r} instead."
        )
    if finite and not np.isfinite(v):
        raise InvalidParameterError(
            f"The {name!r} parameter of {owner} must be a finite real number. Got {value!r} instead."
        )
    too_low = v <= low if low_open else v < low
    too_high = v >= high if high_open else v > high
    if too_low or too_high:
        lb = "(" if low_open else "["
        rb = ")" if high_open else "]"
        raise InvalidParameterError(
            f"The {name!r} parameter of {owner} must be in the range {lb}{low}, {high}{rb}. "
            f"Got {value!r} instead."
        )
    return v


def as_seed_sequence(seed: SeedLike, name: str = "seed", owner: str = "this function") -> np.random.SeedSequence:
    """Turn ``seed`` into a :class:`numpy.random.SeedSequence`.

    ``None`` draws fresh entropy (recorded in results so a run can be
    repeated); an int seeds deterministically; a ``SeedSequence`` is returned as
    is. Block *i* of a graph then uses ``as_seed_sequence(seed).spawn(n)[i]``.

    Examples
    --------
    >>> as_seed_sequence(7).entropy
    7
    """
    if seed is None:
        return np.random.SeedSequence()
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and seed >= 0:
        return np.random.SeedSequence(int(seed))
    raise InvalidParameterError(
        f"The {name!r} parameter of {owner} must be a non-negative int, a "
        f"numpy.random.SeedSequence or None. Got {seed!r} instead. To fix, pass "
        "e.g. seed=42; a numpy Generator cannot be replayed on other workers."
    )


def seed_entropy(seed: np.random.SeedSequence) -> str:
    """A string that recreates ``seed`` (entropy and spawn key), for result attrs."""
    if not isinstance(seed, np.random.SeedSequence):
        raise InvalidParameterError(
            f"The 'seed' argument of seed_entropy must be a numpy.random.SeedSequence (see as_seed_sequence). "
            f"Got {type(seed).__name__} {seed!r:.60} instead."
        )
    if seed.spawn_key:
        return f"{seed.entropy}:{','.join(map(str, seed.spawn_key))}"
    return str(seed.entropy)


def check_array(
    x: Any,
    name: str,
    owner: str,
    *,
    ndim: tuple[int, ...] = (1, 2),
    allow_empty: bool = False,
    finite: bool = True,
) -> Any:
    """Validate an array argument; numpy input is returned as an ndarray.

    Dask arrays are accepted and checked for dimensionality only: checking
    their values would compute them, which a graph builder must never do.
    """
    if is_dask_array(x):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # ragged lists and the like
            raise InvalidDataError(
                f"The {name!r} argument of {owner} must be array-like. Got {type(x).__name__}: {exc}"
            ) from exc
        if arr.dtype == object:
            raise InvalidDataError(
                f"The {name!r} argument of {owner} must be a numeric or string array. Got an "
                "object array. To fix, convert it with np.asarray(..., dtype=float)."
            )
    if arr.ndim not in ndim:
        raise InvalidDataError(
            f"The {name!r} argument of {owner} must have {' or '.join(map(str, ndim))} "
            f"dimension(s). Got shape {tuple(arr.shape)} instead."
        )
    if not allow_empty and arr.shape[0] == 0:
        raise InvalidDataError(f"The {name!r} argument of {owner} is empty. It needs at least one sample.")
    if finite and not is_dask_array(arr) and np.issubdtype(arr.dtype, np.number):
        if not np.all(np.isfinite(arr)):
            n_bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise InvalidDataError(
                f"The {name!r} argument of {owner} contains {n_bad} NaN or infinite value(s). "
                "To fix, impute or drop them before building the dataset."
            )
    return arr


def check_consistent_length(owner: str, **arrays: Any) -> int:
    """Check that all named arrays have the same first dimension; return it."""
    lengths = {name: int(a.shape[0]) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k}={v}" for k, v in lengths.items())
        raise InvalidDataError(
            f"The arguments of {owner} must have the same number of samples. Got {desc}."
        )
    return next(iter(lengths.values()))


def check_coalition(indices: Any, n_players: int, owner: str = "Utility") -> np.ndarray:
    """Validate a coalition and return its players as sorted unique ``int64`` indices.

    Accepted forms:

    * integer indices (a list, tuple, range, set, 1-D integer array), each in
      ``[0, n_players)``, in any order; a repeated index counts once;
    * a boolean mask of length ``n_players``: ``mask[i]`` says whether player
      ``i`` is in the coalition (never read as the indices 0 and 1).

    Anything else -- float indices, arrays with more than one dimension,
    masks of another length, out-of-range indices, strings --
    raises :class:`~dvl_dask.errors.InvalidParameterError` saying what was
    wrong, instead of being truncated, flattened or reinterpreted.

    Examples
    --------
    >>> check_coalition([3, 1, 3], 4)
    array([1, 3])
    >>> check_coalition([True, False, False, True], 4)
    array([0, 3])
    """
    what = f"A coalition passed to {owner}"
    if isinstance(indices, (str, bytes, dict)) or not (
        isinstance(indices, (np.ndarray, list, tuple, range, set, frozenset))
        or hasattr(indices, "__array__")
        or hasattr(indices, "__iter__")
    ):
        raise InvalidParameterError(
            f"{what} must be a sequence of player indices or a boolean mask of length {n_players}. "
            f"Got {type(indices).__name__} {indices!r:.60} instead. To fix, pass e.g. [0, 2, 5]."
        )
    if isinstance(indices, (set, frozenset)):
        indices = list(indices)  # a set has no repeats; its order does not matter
    elif not isinstance(indices, (np.ndarray, list, tuple, range)) and not hasattr(indices, "__array__"):
        indices = list(indices)  # generators and other iterables
    try:
        arr = np.asarray(indices)
    except Exception as exc:  # ragged nesting
        raise InvalidParameterError(
            f"{what} must be a flat sequence of player indices. Got {type(indices).__name__}: {exc}"
        ) from exc
    if arr.ndim != 1:
        raise InvalidParameterError(
            f"{what} must be one-dimensional (player indices or a boolean mask). Got an array of shape "
            f"{arr.shape}. To fix, pass a flat list such as [0, 2, 5]; a 2-D array is never flattened."
        )
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.dtype == np.bool_:
        if arr.size != n_players:
            raise InvalidParameterError(
                f"{what} is a boolean mask of length {arr.size}, but there are {n_players} players. "
                f"A mask must have one entry per player; to pass indices, use integers."
            )
        return np.flatnonzero(arr).astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        kind = "floats" if np.issubdtype(arr.dtype, np.floating) else f"dtype {arr.dtype}"
        raise InvalidParameterError(
            f"{what} must hold integer player indices (or be a boolean mask). Got {kind}: "
            f"{np.array2string(arr[:8], separator=', ')}{'...' if arr.size > 8 else ''}. Indices are never "
            "truncated; to fix, convert them with np.asarray(indices, dtype=int) if they are whole numbers."
        )
    arr = arr.astype(np.int64, copy=False)
    low, high = int(arr.min()), int(arr.max())
    if low < 0 or high >= n_players:
        raise InvalidParameterError(
            f"{what} has player indices outside [0, {n_players}): min {low}, max {high}."
        )
    return np.unique(arr)


def check_url(url: Any, name: str, owner: str) -> str:
    """Return ``url`` (a path or an fsspec URL) as a string, or raise InvalidParameterError naming ``name``."""
    import os

    if isinstance(url, str | os.PathLike) and str(os.fspath(url)):
        return str(os.fspath(url))
    raise InvalidParameterError(
        f"The '{name}' parameter of {owner} must be a local path or an fsspec URL (a non-empty str or "
        f"os.PathLike). Got {type(url).__name__} {url!r:.40}."
    )


def check_bool(value: Any, name: str, owner: str) -> bool:
    """Return ``value`` as a bool if it is True or False (numpy's too), else raise InvalidParameterError.

    Strings such as ``"yes"`` or ``"false"`` and numbers are refused rather than read by truthiness.
    """
    if not isinstance(value, bool | np.bool_):
        raise InvalidParameterError(
            f"The '{name}' parameter of {owner} must be True or False. Got {value!r:.60} "
            f"({type(value).__name__}). To fix, pass {name}=True or {name}=False."
        )
    return bool(value)


def check_callable(value: Any, name: str, owner: str, *, what: str = "a function") -> Callable[..., Any]:
    """Return ``value`` if it is callable, else raise InvalidParameterError naming ``name`` and what was expected."""
    if not callable(value):
        raise InvalidParameterError(
            f"The '{name}' argument of {owner} must be callable ({what}). Got {type(value).__name__} "
            f"{value!r:.60} instead."
        )
    return value


def check_name(value: Any, name: str, owner: str) -> str:
    """Return ``value`` if it is a non-empty string (a name, a label), else raise InvalidParameterError."""
    if not isinstance(value, str) or not value:
        raise InvalidParameterError(
            f"The '{name}' parameter of {owner} must be a non-empty str. Got {type(value).__name__} "
            f"{value!r:.60} instead."
        )
    return value


def check_mapping(value: Any, name: str, owner: str) -> dict[str, Any]:
    """Return ``value`` as a dict if it is a mapping with string keys, else raise InvalidParameterError."""
    from collections.abc import Mapping

    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise InvalidParameterError(
            f"The '{name}' argument of {owner} must be a mapping with str keys (e.g. {{'model': model}}). "
            f"Got {type(value).__name__} {value!r:.60} instead."
        )
    return dict(value)


def check_keywords(names: Any, allowed: Any, owner: str) -> None:
    """Refuse keyword ``names`` that are not in ``allowed`` (a signature's parameters), suggesting close matches.

    Raises :class:`~dvl_dask.errors.InvalidArgumentsError` (a TypeError, as
    Python's own) naming ``owner``, the public function the user called.
    """
    allowed = [str(a) for a in allowed]
    unknown = [str(n) for n in names if str(n) not in allowed]
    if unknown:
        raise unknown_keyword_error(owner, unknown[0], allowed)


def unknown_keyword_error(owner: str, keyword: str, allowed: Any) -> InvalidArgumentsError:
    """The error for an unexpected keyword ``keyword`` of ``owner``: close matches, else the accepted names."""
    import difflib

    allowed = [str(a) for a in allowed]
    close = difflib.get_close_matches(keyword, allowed, n=2, cutoff=0.6)
    hint = (
        f"Did you mean {' or '.join(repr(c) for c in close)}?"
        if close
        else f"It accepts {', '.join(repr(a) for a in allowed) or 'no keyword arguments'}."
    )
    call = owner if owner.endswith(")") else f"{owner}()"
    return InvalidArgumentsError(f"{call} got an unexpected keyword argument {keyword!r}. {hint}")


def describe_coalition(indices: Any, limit: int = 12) -> str:
    """A short text naming a coalition: ``"the coalition [0, 2, 5]"`` (long ones cut, with their size)."""
    try:
        players = np.asarray(indices).ravel().tolist()
    except Exception:
        return f"the coalition {indices!r:.60}"
    if len(players) <= limit:
        return f"the coalition {players}"
    return f"the coalition of {len(players)} players {players[:limit]}..."


def describe_point(index: int, names: Any = None) -> str:
    """``"point 3"``, or ``"point 3 ('alice')"`` when its label differs from its index."""
    if names is None:
        return f"point {index}"
    name = np.asarray(names)[index]
    name = name.item() if isinstance(name, np.generic) else name
    return f"point {index}" if str(name) == str(index) else f"point {index} ({name!r})"


def check_finite_score(value: Any, owner: str, *, what: str = "returned", coalition: Any = None) -> float:
    """Return ``value`` as a float if it is a finite real number, else raise InvalidParameterError.

    ``coalition`` (the players scored), when given, is named in the message.
    """
    where = "" if coalition is None else f" for {describe_coalition(coalition)}"
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.ndarray, np.generic)):
        raise InvalidParameterError(
            f"{owner} {what} {type(value).__name__} {value!r:.60}{where}, not a real number. "
            "To fix, make it return a finite float for every coalition (e.g. 0.0 for the empty one)."
        )
    arr = np.asarray(value)
    if arr.size != 1 or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InvalidParameterError(
            f"{owner} {what} {value!r:.60}{where}, not a real number. To fix, return one finite float."
        )
    v = float(arr.reshape(()))
    if not np.isfinite(v):
        raise InvalidParameterError(
            f"{owner} {what} {v}{where}. Values must be finite: NaN or infinity would spread into every "
            "estimate. To fix, return a finite float for every coalition."
        )
    return v


def check_model(model: Any, name: str, owner: str, methods: tuple[str, ...] = ("fit",)) -> Any:
    """Return ``model`` if it is an estimator *instance* with the given methods, else raise InvalidModelError.

    A class (``LogisticRegression`` instead of ``LogisticRegression()``) is
    refused by name: its ``fit`` is an unbound function, so it would only
    fail later, far from the mistake.
    """
    if isinstance(model, type):
        raise InvalidModelError(
            f"The '{name}' argument of {owner} must be a model instance. Got the class {model.__name__}. "
            f"To fix, pass {model.__name__}(...) (an instance, with its parameters)."
        )
    missing = [m for m in methods if not callable(getattr(model, m, None))]
    if missing:
        wanted = " and ".join(f"{m}()" for m in methods)
        raise InvalidModelError(
            f"The '{name}' argument of {owner} must have {wanted} (scikit-learn API). Got "
            f"{type(model).__name__}, without {', '.join(missing)}. To fix, wrap your model in an object "
            f"with {wanted}."
        )
    return model
