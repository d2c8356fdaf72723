"""The entry points: strict tokens for persisted identities, lenient ones for graph keys."""

from __future__ import annotations

import hashlib
from typing import Any

from ._encode import _KEY_FORMAT, current, feed, scope, session, unique_token


def object_token(*objs: Any) -> str:
    """Deterministic hex token of ``objs``: equal values, equal tokens; different values, different tokens.

    For **persisted** identities (cache keys, checkpoints, influence stores):
    the token is the same in every process and on every machine (for the
    same Python minor version and library versions), and anything that
    cannot be hashed completely raises instead of getting a random part.

    Raises
    ------
    TokenizationError
        If some part of ``objs`` cannot be hashed completely.

    Examples
    --------
    >>> import numpy as np
    >>> object_token(np.arange(3)) == object_token(np.arange(3)), object_token(1) == object_token(1.0)
    (True, False)
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(_KEY_FORMAT)
    with session(strict=True), scope():
        for obj in objs:
            feed(h.update, obj)
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


def graph_token(*objs: Any) -> str:
    """Token of ``objs`` for graph keys inside one process: never raises, never collides.

    Equal to :func:`object_token` when everything in ``objs`` can be hashed
    completely. An object (or part) that cannot -- a lock, a generator, a
    callable reaching an unhashable global -- contributes a random token
    remembered for that very object while it lives: two different objects
    never share a key, the same object keeps its key, only equal-valued
    copies are not de-duplicated. Called while a strict token is being
    computed (from a ``__dask_tokenize__`` method, say) it is as strict as
    that one, so a persisted identity never holds a random part.

    Examples
    --------
    >>> import threading
    >>> lock = threading.Lock()
    >>> graph_token(lock, 1) == graph_token(lock, 1) != graph_token(threading.Lock(), 1)
    True
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(_KEY_FORMAT)
    outer = current()
    try:
        with session(strict=False), scope():
            for obj in objs:
                feed(h.update, obj)
    except Exception:
        if outer is not None and outer.strict:
            raise
        h = hashlib.blake2b(digest_size=16)  # defensive: a failure outside any object's handler
        for obj in objs:
            h.update(unique_token(obj).encode())
    return h.hexdigest()


def layer_name(verb: str, *parts: Any) -> str:
    """Name of a graph layer: ``"<verb>-<graph_token(*parts)>"``; same inputs, same name."""
    from ..validation import check_name

    check_name(verb, "verb", "layer_name")
    return f"{verb}-{graph_token(*parts)}"
