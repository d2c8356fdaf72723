"""The older ``pydvl.utils`` names (pyDVL <= 0.9) on dvl_dask: ``Dataset``, ``Utility``, ``Scorer``, ``ParallelConfig``.

In these versions one ``Dataset`` holds the training and the test data, as
dvl_dask's does; :meth:`Dataset.from_arrays` / :meth:`Dataset.from_sklearn`
here split exactly as pyDVL did (scikit-learn's ``train_test_split`` with the
given ``random_state``, rows in its shuffled order), where
:meth:`dvl_dask.Dataset.from_arrays` derives its own seed and sorts the rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ...data import Dataset as NativeDataset
from ...data import GroupedDataset as NativeGroupedDataset
from ...errors import InvalidParameterError
from ...utility import Scorer as NativeScorer
from ...utility import Utility as NativeUtility
from ...validation import check_positive_int, check_real
from ._splits import bunch_arrays, pydvl_split
from .valuation._unsupported import not_supported
from .valuation._utility import score_range as _score_range

__all__ = ["Dataset", "GroupedDataset", "ParallelConfig", "Scorer", "Utility"]


class Dataset(NativeDataset):
    """pyDVL 0.9's ``Dataset``: :class:`dvl_dask.Dataset` whose constructors split as pyDVL did."""

    @classmethod
    def from_arrays(  # type: ignore[override]
        cls,
        X: Any,
        y: Any,
        train_size: float | int = 0.8,
        random_state: int | None = None,
        stratify_by_target: bool = False,
        **kwargs: Any,
    ) -> Dataset:
        """Split ``X, y`` with ``train_test_split`` as pyDVL 0.9 did; extra keywords go to the constructor."""
        x_train, x_test, y_train, y_test = pydvl_split(X, y, None, train_size, random_state, stratify_by_target)
        return cls(x_train, y_train, x_test, y_test, **kwargs)

    @classmethod
    def from_sklearn(  # type: ignore[override]
        cls,
        data: Any,
        train_size: float | int = 0.8,
        random_state: int | None = None,
        stratify_by_target: bool = False,
        **kwargs: Any,
    ) -> Dataset:
        """Split a scikit-learn ``Bunch`` as pyDVL 0.9 did."""
        x, y = bunch_arrays(data, kwargs, f"{cls.__name__}.from_sklearn")
        return cls.from_arrays(x, y, train_size, random_state, stratify_by_target, **kwargs)


class GroupedDataset(NativeGroupedDataset):
    """pyDVL 0.9's ``GroupedDataset``: :class:`dvl_dask.GroupedDataset` whose constructors split as pyDVL did."""

    @classmethod
    def from_arrays(  # type: ignore[override]
        cls,
        X: Any,
        y: Any,
        train_size: float | int = 0.8,
        random_state: int | None = None,
        stratify_by_target: bool = False,
        data_groups: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> GroupedDataset:
        """Split ``X, y`` and ``data_groups`` (one group per row) as pyDVL 0.9 did."""
        if data_groups is None:
            raise InvalidParameterError("GroupedDataset.from_arrays needs 'data_groups': a group label per row.")
        x_train, x_test, y_train, y_test, g_train, _ = pydvl_split(
            X, y, data_groups, train_size, random_state, stratify_by_target
        )
        return cls(x_train, y_train, x_test, y_test, data_groups=g_train, **kwargs)

    @classmethod
    def from_sklearn(  # type: ignore[override]
        cls,
        data: Any,
        train_size: float | int = 0.8,
        random_state: int | None = None,
        stratify_by_target: bool = False,
        data_groups: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> GroupedDataset:
        """Split a scikit-learn ``Bunch`` and its ``data_groups`` as pyDVL 0.9 did."""
        x, y = bunch_arrays(data, kwargs, f"{cls.__name__}.from_sklearn")
        return cls.from_arrays(x, y, train_size, random_state, stratify_by_target, data_groups, **kwargs)


class Scorer:
    """pyDVL 0.9's ``Scorer(scoring, default, range, name)``: a :class:`dvl_dask.Scorer` and a default score.

    :func:`Utility` takes both apart (dvl_dask keeps the default in ``Utility(default_score=...)``).
    """

    def __init__(
        self,
        scoring: str | Callable[..., float],
        default: float = math.nan,
        range: tuple[float, float] = (-math.inf, math.inf),  # noqa: A002 - pyDVL's name
        name: str | None = None,
    ) -> None:
        low, high = _score_range(range, "range", "Scorer")
        default = check_real(default, "default", "Scorer") if not _is_nan(default) else math.nan  # NaN: not given
        declared = None if np.isinf([low, high]).all() else (low, high)
        self.scorer = NativeScorer(scoring, range=declared, name=name)
        self.default = default
        self.range = self.scorer.range
        self.name = self.scorer.name

    def __call__(self, model: Any, x: Any, y: Any) -> float:
        return self.scorer(model, x, y)

    def __repr__(self) -> str:
        return f"Scorer({self.name!r}, default={self.default}, range={self.range})"


def Utility(
    model: Any,
    data: NativeDataset,
    scorer: str | Callable[..., float] | Scorer | NativeScorer | None = None,
    *,
    default_score: float = 0.0,
    score_range: tuple[float, float] = (-math.inf, math.inf),
    catch_errors: bool = True,
    show_warnings: bool = False,
    enable_cache: bool = False,
    cache_options: Any = None,
    cache_backend: Any = None,
    cached_func_options: Any = None,
    clone_before_fit: bool = True,
) -> NativeUtility:
    """pyDVL 0.9's ``Utility(model, data, scorer)``: returns a :class:`dvl_dask.Utility`.

    ``scorer=None`` is the model's ``score`` method, as in pyDVL; ``score_range``
    declares the scorer's range; ``default_score`` is pyDVL's default 0.0 (a
    :func:`Scorer`'s own default wins when given). ``enable_cache`` with
    memcached options is refused as in dvl_dask (pass ``cache_backend=``).
    """
    if enable_cache or cache_options is not None:
        raise InvalidParameterError(
            "Utility(enable_cache=True, cache_options=...) is pyDVL <= 0.8's cache: pass "
            "cache_backend=MemcachedCacheBackend(...) (dvl_dask.cache) instead."
        )
    if not clone_before_fit:
        raise not_supported("ModelUtility(clone_before_fit=False)")
    if scorer is None:
        scorer = _model_score
    default = default_score
    if isinstance(scorer, Scorer):
        default = default if math.isnan(scorer.default) else scorer.default
        scorer = scorer.scorer
    if not isinstance(scorer, NativeScorer):
        low, high = _score_range(score_range, "score_range", "Utility")
        declared = None if np.isinf([low, high]).all() else (low, high)
        scorer = NativeScorer(scorer, range=declared)
    return NativeUtility(
        model, data, scorer, default_score=default, catch_errors=catch_errors, cache=cache_backend,
        cached_func_options=cached_func_options,
    )


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _model_score(model: Any, x: Any, y: Any) -> float:
    """The model's own ``score`` (pyDVL's scorer when none is given)."""
    return float(model.score(x, y))


class ParallelConfig:
    """pyDVL's ``ParallelConfig``: ``backend="joblib"`` (``n_cpus_local``) maps to dask's threads scheduler.

    Use it as pyDVL's ``config=`` argument of :mod:`dvl_dask.compat.pydvl.value`
    functions. ``backend="ray"`` raises: connect a ``distributed.Client`` to your
    cluster instead (every dvl_dask computation then runs on it).
    """

    def __init__(
        self, backend: str = "joblib", address: Any = None, n_cpus_local: int | None = None,
        logging_level: Any = None, wait_timeout: float = 1.0,
    ) -> None:
        if backend == "ray":
            raise not_supported("ParallelConfig(backend='ray')")
        if backend not in ("joblib", "sequential"):
            raise InvalidParameterError(
                f"The 'backend' argument of ParallelConfig must be 'joblib', 'sequential' or 'ray'. Got {backend!r}."
            )
        if n_cpus_local is not None:
            check_positive_int(n_cpus_local, "n_cpus_local", "ParallelConfig")
        self.backend, self.address, self.n_cpus_local = backend, address, n_cpus_local

    def dask_settings(self, n_jobs: int | None) -> dict[str, Any]:
        """The ``dask.config`` settings for this configuration and ``n_jobs`` (empty: dask's choice)."""
        workers = n_jobs if n_jobs is not None else self.n_cpus_local
        if self.backend == "sequential" or workers == 1:
            return {"scheduler": "sync"}
        if workers is None:
            return {}
        return {"scheduler": "threads", **({"num_workers": int(workers)} if workers > 1 else {})}
