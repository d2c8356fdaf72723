"""pyDVL 0.10's ``Dataset``, ``GroupedDataset`` and ``RawData``: one part of the data (x, y), read-only.

pyDVL 0.10 keeps the training and the test data in two ``Dataset`` objects
(``from_arrays`` / ``from_sklearn`` return the pair); dvl_dask's
:class:`dvl_dask.Dataset` holds both. :func:`native_dataset` joins a training
part and the test data of a scorer into the dvl_dask dataset a valuation runs on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ...._frozen import readonly_array
from ....data import Dataset as NativeDataset
from ....data import GroupedDataset as NativeGroupedDataset
from ....errors import InvalidDataError, InvalidParameterError
from .._splits import bunch_arrays, pydvl_split

__all__ = ["Dataset", "GroupedDataset", "RawData", "native_dataset"]

Index = int | slice | Sequence[int] | np.ndarray | None


@dataclasses.dataclass(frozen=True)
class RawData:
    """The arrays ``x`` and ``y`` of (a part of) a dataset; unpacks as ``x, y = data.data()``."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        for name in ("x", "y"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or np.ndim(value) == 0:
                raise InvalidDataError(
                    f"The '{name}' argument of RawData must be an array. Got {type(value).__name__}."
                )
        if len(self.x) != len(self.y):
            raise InvalidDataError(f"RawData needs x and y of the same length. Got {len(self.x)} and {len(self.y)}.")

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.x, self.y))

    def __getitem__(self, item: Index) -> RawData:
        return RawData(self.x[item], self.y[item])

    def __len__(self) -> int:
        return len(self.x)


def _default_names(prefix: str, a: np.ndarray) -> list[str]:
    n = a.shape[1] if a.ndim > 1 else 1
    width = 1 + int(np.log10(n))
    return [f"{prefix}{i:0{width}d}" for i in range(1, n + 1)]


def _as_positions(idx: Index, n: int) -> np.ndarray:
    if idx is None:
        return np.arange(n)
    if isinstance(idx, (int, np.integer)):
        return np.array([int(idx)])
    return np.arange(n)[idx]


class Dataset:
    """pyDVL 0.10's ``Dataset``: features ``x``, targets ``y`` and names of one part of the data.

    Parameters
    ----------
    x, y : array-like
        Features (n, d) and targets (n,) or (n, k); copied into read-only arrays.
    feature_names, target_names, data_names : sequence of str, optional
        As in pyDVL (defaults ``x1..``, ``y1..`` and the row numbers as strings).
    description : str, optional
        Free text.
    multi_output : bool
        Accepted for pyDVL; ``y`` may be 2-d either way.
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        feature_names: Sequence[str] | None = None,
        target_names: Sequence[str] | None = None,
        data_names: Sequence[str] | None = None,
        description: str | None = None,
        multi_output: bool = False,
    ) -> None:
        x_arr, y_arr = np.array(x), np.array(y)
        if x_arr.ndim == 0 or y_arr.ndim == 0 or len(x_arr) != len(y_arr):
            raise InvalidDataError(
                f"{type(self).__name__} needs arrays x and y with one row per sample. "
                f"Got shapes {x_arr.shape} and {y_arr.shape}."
            )
        self._x, self._y = readonly_array(x_arr), readonly_array(y_arr)
        self.feature_names = list(feature_names) if feature_names is not None else _default_names("x", x_arr)
        self.target_names = list(target_names) if target_names is not None else _default_names("y", y_arr)
        self.description = description or "No description"
        self.multi_output = multi_output
        self._indices = readonly_array(np.arange(len(x_arr), dtype=np.int_))
        names = np.array(data_names, dtype=np.str_) if data_names is not None else self._indices.astype(np.str_)
        if names.shape != (len(x_arr),):
            raise InvalidParameterError(
                f"The 'data_names' argument of {type(self).__name__} needs one name per sample ({len(x_arr)}). "
                f"Got shape {names.shape}."
            )
        self._data_names = readonly_array(names)

    # -- pyDVL's interface -------------------------------------------------------------------
    def __getitem__(self, idx: Index) -> Dataset:
        rows = _as_positions(idx, len(self._x))
        return Dataset(
            self._x[rows], self._y[rows], feature_names=self.feature_names, target_names=self.target_names,
            data_names=self._data_names[rows], description="(SLICED): " + self.description,
        )

    def data(self, indices: Index = None) -> RawData:
        """``RawData(x, y)`` of the given logical indices (all by default: the read-only arrays themselves)."""
        if indices is None and type(self) is Dataset:
            return RawData(self._x, self._y)
        rows = self.data_indices(indices)
        return RawData(self._x[rows], self._y[rows])

    def data_indices(self, indices: Index = None) -> np.ndarray:
        """Rows of the arrays behind the given logical indices (the same indices here)."""
        return _as_positions(indices, len(self._x))

    def logical_indices(self, indices: Index = None) -> np.ndarray:
        """Logical indices of the given rows (the same indices here)."""
        return _as_positions(indices, len(self._x))

    def feature(self, name: str) -> tuple[slice, int]:
        """Index expression selecting the column of feature ``name``."""
        if name not in self.feature_names:
            raise InvalidParameterError(f"Feature {name!r} is not in {self.feature_names}.")
        return np.index_exp[:, self.feature_names.index(name)]  # type: ignore[return-value]

    def target(self, name: str) -> tuple[slice, int]:
        """Index expression selecting the column of target ``name``."""
        if name not in self.target_names:
            raise InvalidParameterError(f"Target {name!r} is not in {self.target_names}.")
        return np.index_exp[:, self.target_names.index(name)]  # type: ignore[return-value]

    @property
    def indices(self) -> np.ndarray:
        """Logical indices ``0..len-1``."""
        return self._indices

    @property
    def names(self) -> np.ndarray:
        """Names of the players."""
        return self._data_names

    @property
    def n_features(self) -> int:
        """Number of feature columns."""
        return int(self._x.shape[1]) if self._x.ndim > 1 else 1

    dim = n_features

    def __len__(self) -> int:
        return len(self._x)

    def __str__(self) -> str:
        return self.description

    def __repr__(self) -> str:
        return f"<{type(self).__name__} (dvl_dask.compat.pydvl) n={len(self)} x={self._x.shape}>"

    # -- constructors: pyDVL 0.10 splits with sklearn's train_test_split, as here --------------------
    @classmethod
    def from_arrays(
        cls,
        X: Any,
        y: Any,
        train_size: float | int = 0.8,
        random_state: int | None = None,
        stratify_by_target: bool = False,
        **kwargs: Any,
    ) -> tuple[Dataset, Dataset]:
        """Split ``X, y`` into ``(train, test)`` exactly as pyDVL 0.10 does.

        The split is scikit-learn's ``train_test_split(X, y, train_size=train_size,
        random_state=random_state, stratify=y if stratify_by_target else None)``,
        so the same arguments give the same parts, in the same (shuffled) order.
        """
        x_train, x_test, y_train, y_test = pydvl_split(X, y, None, train_size, random_state, stratify_by_target)
        return cls(x_train, y_train, **kwargs), cls(x_test, y_test, **kwargs)

    @classmethod
    def from_sklearn(
        cls,
        data: Any,
        train_size: float | int = 0.8,
        random_state: int | None = None,
        stratify_by_target: bool = False,
        **kwargs: Any,
    ) -> tuple[Dataset, Dataset]:
        """``(train, test)`` from a scikit-learn ``Bunch`` (``load_iris()``), split as :meth:`from_arrays`.

        Feature names, target names and the description come from the bunch.
        """
        x, y = bunch_arrays(data, kwargs, f"{cls.__name__}.from_sklearn")
        return cls.from_arrays(
            x, y, train_size=train_size, random_state=random_state, stratify_by_target=stratify_by_target, **kwargs
        )


class GroupedDataset(Dataset):
    """pyDVL 0.10's ``GroupedDataset``: the players are groups of rows.

    Parameters
    ----------
    x, y : array-like
        Features and targets.
    data_groups : sequence of int
        Group id of every row (zero-based consecutive integers, as pyDVL assumes).
    group_names : sequence of str, optional
        Names of the groups (default: their ids as strings).
    **kwargs
        As for :class:`Dataset`.
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        data_groups: Sequence[int] | np.ndarray,
        feature_names: Sequence[str] | None = None,
        target_names: Sequence[str] | None = None,
        data_names: Sequence[str] | None = None,
        group_names: Sequence[str] | None = None,
        description: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(x, y, feature_names, target_names, data_names, description, **kwargs)
        try:
            groups = np.asarray(data_groups).astype(int, casting="same_kind")
        except TypeError as exc:
            raise InvalidParameterError(
                "The 'data_groups' argument of GroupedDataset must hold an integer group id per row."
            ) from exc
        if groups.shape != (len(self._x),):
            raise InvalidDataError(
                f"The 'data_groups' argument of GroupedDataset needs one group id per row ({len(self._x)}). "
                f"Got shape {groups.shape}."
            )
        self.data_to_group = readonly_array(groups)
        ids = np.unique(groups)
        self.group_to_data = {int(g): np.flatnonzero(groups == g) for g in ids}
        self._indices = readonly_array(ids.astype(np.int_))
        names = np.array(group_names, dtype=np.str_) if group_names is not None else ids.astype(np.str_)
        if len(names) != len(ids):
            raise InvalidParameterError(
                f"The 'group_names' argument of GroupedDataset names {len(names)} groups; there are {len(ids)}."
            )
        self._group_names = readonly_array(names)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, idx: Index) -> GroupedDataset:
        positions = _as_positions(idx, len(self._indices))
        rows = self.data_indices(positions)
        return GroupedDataset(
            self._x[rows], self._y[rows], data_groups=self.data_to_group[rows], feature_names=self.feature_names,
            target_names=self.target_names, data_names=self._data_names[rows],
            group_names=self._group_names[positions], description="(SLICED): " + self.description,
        )

    @property
    def names(self) -> np.ndarray:
        """Names of the groups (the players)."""
        return self._group_names

    def data_indices(self, indices: Index = None) -> np.ndarray:
        """Rows of the given groups (all rows by default)."""
        positions = _as_positions(indices, len(self._indices))
        if positions.size == 0:
            return np.empty(0, dtype=np.int_)
        return np.concatenate([self.group_to_data[int(self._indices[p])] for p in positions])

    def logical_indices(self, indices: Index = None) -> np.ndarray:
        """Group of each given row."""
        return self.data_to_group if indices is None else self.data_to_group[indices]

    @classmethod
    def from_arrays(  # type: ignore[override]
        cls,
        X: Any,
        y: Any,
        train_size: float | int = 0.8,
        random_state: int | None = None,
        stratify_by_target: bool = False,
        data_groups: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> tuple[GroupedDataset, GroupedDataset]:
        """Split ``X, y`` and their ``data_groups`` into ``(train, test)`` as pyDVL 0.10 does."""
        if data_groups is None:
            raise InvalidParameterError("GroupedDataset.from_arrays needs 'data_groups': a group id per row.")
        x_train, x_test, y_train, y_test, g_train, g_test = pydvl_split(
            X, y, data_groups, train_size, random_state, stratify_by_target
        )
        return cls(x_train, y_train, data_groups=g_train, **kwargs), cls(x_test, y_test, data_groups=g_test, **kwargs)

    @classmethod
    def from_dataset(
        cls, data: Dataset, data_groups: Sequence[int] | np.ndarray, group_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> GroupedDataset:
        """Group the rows of ``data``."""
        return cls(
            data._x, data._y, data_groups=data_groups, feature_names=data.feature_names,
            target_names=data.target_names, description=data.description, group_names=group_names, **kwargs,
        )


def native_dataset(train: Dataset, test: Dataset, owner: str) -> NativeDataset:
    """The dvl_dask dataset of a training part and the test data (a ``GroupedDataset`` stays grouped)."""
    for arg, part in (("data", train), ("test_data", test)):
        if not isinstance(part, Dataset):
            raise InvalidParameterError(
                f"The '{arg}' argument of {owner} must be a dvl_dask.compat.pydvl.valuation.Dataset "
                f"(e.g. from Dataset.from_arrays). Got {type(part).__name__}."
            )
    x_train, y_train = train._x, train._y  # rows in their order (a group's rows need not be contiguous)
    x_test, y_test = test._x, test._y
    features = train.feature_names if x_train.ndim == 2 and len(train.feature_names) == x_train.shape[1] else None
    if isinstance(train, GroupedDataset):
        return NativeGroupedDataset(
            x_train, y_train, x_test, y_test, data_groups=np.asarray(train.data_to_group),
            feature_names=features, description=train.description,
        )
    return NativeDataset(
        x_train, y_train, x_test, y_test, data_names=train.names, feature_names=features,
        description=train.description,
    )
