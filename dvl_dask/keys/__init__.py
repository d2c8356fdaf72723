"""The one place that hashes: every identity in dvl_dask comes from here.

Two entry points, one private tokenizer:

* :func:`object_token` (alias :func:`fingerprint`) for **persisted**
  identities -- cache keys (:class:`KeyFunction`, :func:`cache_key`),
  checkpoint headers, influence stores. Equal values give equal tokens in
  every process and on every machine; anything that cannot be hashed
  completely raises :class:`~dvl_dask.errors.TokenizationError` saying how to
  fix it (a ``__dask_tokenize__`` method, or ``token=`` where dvl_dask accepts
  one). No random part, no ``repr``, no ``hash()`` (so no dependence on
  ``PYTHONHASHSEED``).
* :func:`graph_token` (and :func:`layer_name`) for **graph keys inside one
  process**: never raises; a part that cannot be hashed completely gets a
  random token remembered for that very object (never a collision, only no
  de-duplication).

What a token covers:

* numpy arrays by dtype, shape and C-order bytes (BLAKE2b, the same on every
  machine); lazily backed (dask) arrays by content, read once:
  :func:`dask_content_digest`;
* scikit-learn estimators by class and ``get_params()`` *by value*
  (:func:`estimator_token`), scorers by score function, sign, keyword
  arguments and response method;
* callables completely -- :func:`function_token`: code, defaults, closure
  cells, every wrapper of a ``__wrapped__`` chain, and the module globals and
  module attributes the code reads (``THRESHOLD``, ``helpers.f()``,
  ``np.linalg.norm``), recursively;
* classes -- :func:`class_token`;
* objects with ``__dask_tokenize__`` by their class and what it returns; types
  dask knows (pandas, pyarrow, ...) through ``dask.base.tokenize``; other
  objects by class and what pickle keeps of them (:func:`instance_token`);
* torch tensors and modules by value (handlers in
  :mod:`dvl_dask.influence.torch`, imported the first time a ``torch`` object
  is hashed; this package never imports torch).

Library code or user code: a module whose top-level package comes from an
installed, non-editable distribution (``importlib.metadata``; the standard
library too) is identified by name and version; anything else (``__main__``,
notebooks, scripts, directories on ``sys.path``, editable installs) by its
bytecode, so editing it changes the keys (:func:`package_version`). No file
path is looked at. Walking user code is bounded (a few thousand code objects
per token; per-code-object analysis is computed once).

dvl_dask registers nothing with ``dask.base.normalize_token``: importing or
using it does not change how dask hashes anybody else's objects. Modules:
``_encode`` (canonical bytes, dispatch, sessions), ``_code`` (packages,
classes, functions), ``_objects`` (generic objects), ``_models`` (estimators,
scorers, torch hook), ``_content`` (array digests), ``_tokens`` (entry
points), ``_identity`` (run identity), ``_cache`` (cache keys).
"""

from __future__ import annotations

from ._cache import KeyFunction, cache_key, canonical_indices
from ._calls import BoundCall, bind_arguments, call_key, current_call, lazy_method
from ._code import class_token, code_fingerprint, function_token, package_version
from ._content import dask_content_digest
from ._encode import _KEY_FORMAT as _KEY_FORMAT
from ._identity import describe_parameters, run_identity
from ._models import estimator_token, model_token
from ._objects import instance_token
from ._tokens import fingerprint, graph_token, layer_name, object_token

__all__ = [
    "BoundCall",
    "KeyFunction",
    "bind_arguments",
    "call_key",
    "current_call",
    "lazy_method",
    "cache_key",
    "canonical_indices",
    "class_token",
    "code_fingerprint",
    "dask_content_digest",
    "describe_parameters",
    "estimator_token",
    "fingerprint",
    "function_token",
    "graph_token",
    "instance_token",
    "layer_name",
    "model_token",
    "object_token",
    "package_version",
    "run_identity",
]
