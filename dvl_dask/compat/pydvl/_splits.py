"""pyDVL's train/test split and its reading of scikit-learn bunches, shared by the 0.9 and 0.10 namespaces.

pyDVL (0.9's ``pydvl.utils.Dataset`` and 0.10's ``pydvl.valuation.Dataset``)
splits with scikit-learn's ``train_test_split(X, y[, groups], train_size=,
random_state=, stratify=y or None)``: doing the same call here is what makes
the same arguments give the same parts, in the same shuffled order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidParameterError

__all__ = ["bunch_arrays", "pydvl_split"]


def pydvl_split(
    x: Any, y: Any, groups: Any, train_size: float | int, random_state: Any, stratify: bool
) -> list[np.ndarray]:
    """``train_test_split(x, y[, groups], ...)`` as pyDVL calls it: ``[x_tr, x_te, y_tr, y_te(, g_tr, g_te)]``."""
    from sklearn.model_selection import train_test_split

    arrays = [np.asarray(x), np.asarray(y)] + ([np.asarray(groups)] if groups is not None else [])
    return train_test_split(
        *arrays, train_size=train_size, random_state=random_state, stratify=np.asarray(y) if stratify else None
    )


def bunch_arrays(data: Any, kwargs: dict[str, Any], owner: str) -> tuple[Any, Any]:
    """``(data.data, data.target)`` of a scikit-learn Bunch; its names and description added to ``kwargs``."""
    if not hasattr(data, "data") or not hasattr(data, "target"):
        raise InvalidParameterError(
            f"The 'data' argument of {owner} must be a scikit-learn Bunch with 'data' and 'target' "
            f"(e.g. load_iris()). Got {type(data).__name__}."
        )
    for key in ("feature_names", "target_names"):
        if key not in kwargs and getattr(data, key, None) is not None:
            kwargs[key] = list(map(str, getattr(data, key)))
    kwargs.setdefault("description", getattr(data, "DESCR", None))
    return data.data, data.target
