"""Provenance: the human-readable description recorded beside an identity (a token).

A token says *whether* two computations are the same; provenance says *what*
they were made of -- classes, parameters, data fingerprints and library
versions -- so a user can see why two runs were or were not considered the
same. Results, checkpoints and cache entries record it (see
:meth:`dvl_dask.Utility.provenance`).
"""

from __future__ import annotations

import functools
import sys
from typing import Any

__all__ = ["describe_utility", "library_versions", "qualified_name"]

#: Distributions recorded in every provenance, by import name.
_LIBRARIES = {
    "dvl_dask": "dvl_dask",
    "numpy": "numpy",
    "sklearn": "scikit-learn",
    "dask": "dask",
    "xarray": "xarray",
    "zarr": "zarr",
}
#: Recorded when installed, read from package metadata (never imported for it: importing torch takes seconds).
_OPTIONAL = {"torch": "torch", "distributed": "distributed", "pymemcache": "pymemcache"}


@functools.lru_cache(maxsize=64)
def _version(module: str, distribution: str) -> str | None:
    if module == "dvl_dask":
        from ._version import __version__

        return __version__
    mod = sys.modules.get(module)
    found = getattr(mod, "__version__", None)
    if isinstance(found, str):
        return found
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a result depends on (optional ones when installed).

    Examples
    --------
    >>> {"dask", "dvl_dask", "numpy", "python"} <= set(library_versions())
    True
    """
    out = {name: _version(module, name) for module, name in _LIBRARIES.items()}
    out.update({name: _version(module, name) for module, name in _OPTIONAL.items()})
    out["python"] = "{}.{}.{}".format(*sys.version_info[:3])
    return {k: v for k, v in sorted(out.items()) if v is not None}


def qualified_name(obj: Any) -> str:
    """``module.QualName`` of an object's class (of a class itself)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls.__name__)}"


def describe_utility(utility: Any) -> dict[str, Any]:
    """The provenance of a utility or game: its ``provenance()`` if it has one, else class, token and versions.

    Utilities, games and learned utilities of dvl_dask describe themselves
    (model, parameters, scorer, data fingerprint, versions); a user's
    :class:`~dvl_dask.typing.UtilityLike` without a ``provenance()`` method is
    described by its class and token.
    """
    method = getattr(utility, "provenance", None)
    if callable(method):
        found = method()
        if isinstance(found, dict):
            return found
    return {
        "class": qualified_name(utility),
        "token": getattr(utility, "token", None),
        "versions": library_versions(),
    }
