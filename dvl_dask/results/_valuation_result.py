"""A read-only view of a valuation result with the interface of pyDVL's ``ValuationResult``."""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InvalidParameterError
from ..validation import check_positive_int
from ._schema import SAMPLE_DIM, validate_valuation_dataset

__all__ = ["ValuationResult", "ValueItem"]

_SORT_KEYS = ("value", "variance", "index", "name")


@dataclasses.dataclass(frozen=True)
class ValueItem:
    """One player of a :class:`ValuationResult` (pyDVL's ``ValueItem``).

    Attributes
    ----------
    index : int
        Position of the player in the training set (or group list).
    name : object
        Its label (the ``sample`` coordinate).
    value, variance : float
        Estimated value and the variance of the samples behind it.
    count : int
        Number of marginal contributions behind ``value``.
    stderr : float
        Standard error of ``value``.
    """

    index: int
    name: Any
    value: float
    variance: float
    count: int
    stderr: float

    def __post_init__(self) -> None:
        for name in ("index", "count"):
            check_positive_int(getattr(self, name), name, "ValueItem", allow_zero=True)
        for name in ("value", "variance", "stderr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):  # NaN/inf: an estimate's own
                raise InvalidParameterError(
                    f"The '{name}' field of ValueItem must be a real number. Got {type(value).__name__} "
                    f"{value!r:.60} instead."
                )


class ValuationResult:
    """pyDVL's ``ValuationResult`` interface over a dvl_dask result (read-only).

    Built by ``ds.dvl.to_valuation_result()`` or
    :meth:`ValuationResult.from_dataset`; the dataset is computed once.
    Values, standard errors and counts cannot be changed; :meth:`sort` only
    reorders the view, as in pyDVL (in place, ascending by default).
    Everything else -- merging, ranking, storing -- is done on the xarray
    result (``ds.dvl``, :func:`dvl_dask.to_zarr`).

    Attributes
    ----------
    algorithm : str
        The ``method`` attribute of the result.
    status : str
        ``"converged"`` when the result says so (attribute ``converged`` of
        :func:`~dvl_dask.valuation.run_until_converged`) or, without that
        attribute, when every standard error is 0 (exact methods); else
        ``"pending"``.

    Examples
    --------
    >>> import numpy as np
    >>> from dvl_dask.results import valuation_dataset
    >>> ds = valuation_dataset(np.array([0.1, 0.5, -0.2]), np.array([0.01, 0.02, 0.0]),
    ...                        np.array([4, 4, 1]), data_names=["a", "b", "c"], method="demo")
    >>> result = ds.dvl.to_valuation_result()
    >>> result.values.tolist(), result.names.tolist()
    ([0.1, 0.5, -0.2], ['a', 'b', 'c'])
    >>> result.sort(reverse=True).indices.tolist()
    [1, 0, 2]
    >>> result[0].name, result[0].value
    ('b', 0.5)
    >>> result.to_dataframe(column="demo").columns.tolist()
    ['demo', 'demo_stderr', 'demo_updates']
    """

    def __init__(self, ds: xr.Dataset) -> None:
        ds = validate_valuation_dataset(ds).compute()
        self._ds = ds
        self._values = np.asarray(ds["value"].values, dtype=np.float64)
        self._stderr = np.asarray(ds["stderr"].values, dtype=np.float64)
        self._counts = np.asarray(ds["counts"].values, dtype=np.int64)
        self._names = np.asarray(ds[SAMPLE_DIM].values)
        self._order = np.arange(len(self._values))
        for arr in (self._values, self._stderr, self._counts, self._names, self._order):
            arr.flags.writeable = False
        self.algorithm = str(ds.attrs.get("method", ""))
        converged = ds.attrs.get("converged")
        if converged is None:
            converged = bool(np.all(self._stderr == 0))
        self.status = "converged" if bool(converged) else "pending"

    @classmethod
    def from_dataset(cls, ds: xr.Dataset) -> ValuationResult:
        """The view of a valuation result (an ``xr.Dataset`` with ``value``, ``stderr``, ``counts``)."""
        if not isinstance(ds, xr.Dataset):
            raise InvalidParameterError(
                f"The 'ds' argument of ValuationResult.from_dataset must be an xarray Dataset (a dvl_dask "
                f"valuation result). Got {type(ds).__name__} instead."
            )
        return cls(ds)

    # -- arrays, in the current order ---------------------------------------------------------
    def _view(self, arr: np.ndarray) -> np.ndarray:
        out = arr[self._order]
        out.flags.writeable = False
        return out

    @property
    def values(self) -> np.ndarray:
        """Values of the players (read-only array, in the current order)."""
        return self._view(self._values)

    @property
    def stderr(self) -> np.ndarray:
        """Standard errors of the values."""
        return self._view(self._stderr)

    @property
    def variances(self) -> np.ndarray:
        """Variances of the samples behind each value (``stderr**2 * counts``)."""
        return self._view(self._stderr**2 * np.maximum(self._counts, 1))

    @property
    def counts(self) -> np.ndarray:
        """Number of marginal contributions behind each value."""
        return self._view(self._counts)

    @property
    def indices(self) -> np.ndarray:
        """Positions of the players in the training set (or group list)."""
        return self._view(np.arange(len(self._values)))

    @property
    def names(self) -> np.ndarray:
        """Labels of the players."""
        return self._view(self._names)

    def to_dataset(self) -> xr.Dataset:
        """The underlying xarray result (player order of the result, not of the view)."""
        return self._ds

    # -- ordering and items -----------------------------------------------------------------------
    def sort(self, reverse: bool = False, key: str = "value") -> ValuationResult:
        """Order the view by ``key`` (``"value"``, ``"variance"``, ``"index"`` or ``"name"``), in place.

        Ascending unless ``reverse`` (which reverses the ascending order, ties
        included). Returns self.
        """
        if key not in _SORT_KEYS:
            raise InvalidParameterError(
                f"The 'key' parameter of ValuationResult.sort must be one of {list(_SORT_KEYS)}. Got {key!r} instead."
            )
        by = {
            "value": self._values,
            "variance": self._stderr**2 * np.maximum(self._counts, 1),
            "index": np.arange(len(self._values)),
            "name": self._names,
        }[key]
        order = np.argsort(by, kind="stable")
        if reverse:
            order = order[::-1].copy()
        order.flags.writeable = False
        self._order = order
        return self

    def _item(self, position: int) -> ValueItem:
        i = int(position)
        count = int(self._counts[i])
        stderr = float(self._stderr[i])
        return ValueItem(
            index=i,
            name=self._names[i].item() if hasattr(self._names[i], "item") else self._names[i],
            value=float(self._values[i]),
            variance=stderr**2 * max(count, 1),
            count=count,
            stderr=stderr,
        )

    def __getitem__(self, key: int | slice) -> ValueItem | list[ValueItem]:
        """Item(s) at a position of the current order (an int or a slice)."""
        if isinstance(key, slice):
            return [self._item(i) for i in self._order[key]]
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            n = len(self._order)
            if not -n <= key < n:
                raise IndexError(f"ValuationResult index {key} is out of range for {n} players.")
            return self._item(self._order[key])
        raise InvalidParameterError(
            f"ValuationResult indices must be ints or slices. Got {type(key).__name__} instead."
        )

    def get(self, index: int) -> ValueItem:
        """The item of the player at ``index`` of the training set, whatever the order."""
        n = len(self._values)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < n:
            raise IndexError(f"ValuationResult.get needs a player index in [0, {n}). Got {index!r}.")
        return self._item(int(index))

    def __iter__(self) -> Iterator[ValueItem]:
        return (self._item(i) for i in self._order)

    def __len__(self) -> int:
        return len(self._values)

    def to_dataframe(self, column: str | None = None, use_names: bool = False) -> Any:
        """A pandas DataFrame: ``column``, ``column_stderr``, ``column_updates`` (pyDVL's layout).

        Rows follow the current order, indexed by player index (or by name with
        ``use_names=True``); ``column`` defaults to :attr:`algorithm`.
        """
        import pandas as pd

        column = column or self.algorithm or "value"
        index = self.names if use_names else self.indices
        return pd.DataFrame(
            {column: self.values, f"{column}_stderr": self.stderr, f"{column}_updates": self.counts},
            index=pd.Index(index),
        )

    def __repr__(self) -> str:
        return (
            f"ValuationResult(algorithm={self.algorithm!r}, status={self.status!r}, n_players={len(self)}, "
            f"values={np.array2string(self.values, threshold=6, precision=4)})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ValuationResult):
            return NotImplemented
        return bool(
            np.array_equal(self._values, other._values)
            and np.array_equal(self._stderr, other._stderr)
            and np.array_equal(self._counts, other._counts)
            and np.array_equal(self._names, other._names)
        )

    __hash__ = None  # type: ignore[assignment]
