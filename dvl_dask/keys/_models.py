"""Models and scorers: scikit-learn estimators by class and parameters, torch through influence.torch.

scikit-learn's handlers are registered the first time an object of a
scikit-learn type (or a subclass) is hashed. torch tensors and modules are
hashed by value by handlers living with the rest of the torch code
(:mod:`dvl_dask.influence.torch._tokenize`): the first time an object of a
``torch.*`` type is hashed, that module is imported by name and registers
them, so :mod:`dvl_dask.keys` never imports torch itself.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..errors import TokenizationError
from ._code import class_token
from ._encode import _KEY_FORMAT, FIX, Update, feed, register, register_lazy, scope, session
from ._objects import _feed_object
from ._tokens import object_token


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
    with session(strict=True), scope():
        h.update(class_token(type(estimator)).encode())
        try:
            params = estimator.get_params(deep=False)
        except Exception as exc:
            raise TokenizationError(
                f"Cannot read the parameters of {type(estimator).__qualname__} (get_params raised "
                f"{type(exc).__name__}: {exc}). {FIX}"
            ) from exc
        feed(h.update, dict(params))
        if fitted:
            state = getattr(estimator, "__dict__", {})
            feed(h.update, {k: v for k, v in state.items() if k.endswith("_") and not k.startswith("_")})
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
    with session(strict=True), scope():
        h.update(class_token(type(scorer)).encode())
        feed(h.update, dict(vars(scorer)))
    return h.hexdigest()


def _feed_estimator(update: Update, estimator: Any) -> None:
    if getattr(estimator, "__dask_tokenize__", None) is not None:
        _feed_object(update, estimator)
        return
    update(b"sklearn-estimator:")
    update(estimator_token(estimator).encode())


def _feed_scorer(update: Update, scorer: Any) -> None:
    update(b"sklearn-scorer:")
    update(_scorer_token(scorer).encode())


def _register_sklearn() -> None:
    from sklearn.base import BaseEstimator

    register(BaseEstimator, _feed_estimator)
    try:
        from sklearn.metrics._scorer import _BaseScorer
    except ImportError:  # pragma: no cover - private module moved
        return
    register(_BaseScorer, _feed_scorer)


register_lazy("sklearn", _register_sklearn)
register_lazy("torch", "dvl_dask.influence.torch._tokenize")
