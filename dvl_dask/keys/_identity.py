"""What persisted runs record about their identity: :func:`run_identity` and :func:`describe_parameters`."""

from __future__ import annotations

import contextlib
import enum
import functools
import types
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..errors import TokenizationError
from ._code import function_token, innermost
from ._tokens import object_token


def run_identity(estimator: Any = None, utility_token: str | None = None, **parts: Any) -> dict[str, Any]:
    """What a persisted run (checkpoint, influence store) records to refuse resuming another computation.

    Returns a JSON-serialisable dict: the dvl_dask version, the estimator's
    class, its parameters in full and its token (code and parameters), the
    utility token and any extra ``parts`` (already JSON-serialisable).
    """
    from .._version import __version__
    from ..validation import check_name

    if utility_token is not None:
        check_name(utility_token, "utility_token", "run_identity")

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
        target = innermost(value)
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
