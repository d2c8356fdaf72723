"""Datasets of training and test points, labelled and fingerprinted once."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._frozen import Frozen, readonly_array
from .._provenance import qualified_name
from ..errors import InvalidDataError, InvalidParameterError
from ..keys import dask_content_digest, fingerprint
from ..validation import (
    SeedLike,
    as_seed_sequence,
    check_array,
    check_consistent_length,
    check_real,
    is_dask_array,
    keyword_aliases,
)

__all__ = ["Dataset", "GroupedDataset"]


def _as_labels(names: Any, n: int, arg: str, owner: str, default_prefix: str | None = None) -> np.ndarray:
    if names is None:
        if default_prefix is None:
            return np.arange(n, dtype=np.int64)
        return np.array([f"{default_prefix}{i}" for i in range(n)])
    labels = np.asarray(names)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise InvalidDataError(
            f"The {arg!r} argument of {owner} must be a 1-d sequence of length {n}. "
            f"Got shape {labels.shape} instead."
        )
    if len(np.unique(labels)) != n:
        raise InvalidDataError(f"The {arg!r} argument of {owner} must hold unique labels; it has duplicates.")
    if labels.dtype == object:
        labels = labels.astype(str)
    return readonly_array(labels)


def _owned(arr: Any) -> Any:
    """A numpy array as a read-only array the dataset owns (dask arrays cannot be frozen: kept as they are)."""
    return arr if is_dask_array(arr) else readonly_array(arr)


class Dataset(Frozen):
    """Training and test data for valuation: arrays, labels and a fingerprint; an immutable value.

    The *players* of a valuation are the training points: ``data_names`` labels
    them, and a utility maps a subset of player indices to training rows with
    :meth:`train_indices`.

    Parameters
    ----------
    x_train, y_train : array-like or dask array
        Training features (n, ...) and targets (n,) or (n, k).
    x_test, y_test : array-like or dask array
        Test features and targets used by scorers.
    data_names : sequence, optional
        Unique labels of the training points; default ``0..n-1``.
    feature_names : sequence of str, optional
        Names of the feature columns of 2-d ``x``; default ``x0, x1, ...``.
    target_names : sequence of str, optional
        Names of the classes or targets, kept for display.
    description : str, optional
        Free text kept with the data.
    name : str, optional
        A short name of the data (e.g. ``"iris"``), recorded in the provenance
        of results for people reading them; not part of the fingerprint
        (renaming data does not change what was computed).
        :meth:`from_sklearn` takes it from a loader's name (``load_iris``
        gives ``"iris"``).
    version : str, optional
        Names the *content* of the dask-backed arrays (e.g. a dataset
        release, a commit of the zarr store). When given, dask arrays are not
        read to fingerprint them: their shape, dtype and this version stand
        for their values, so give a new version whenever the data changes.
        numpy arrays are always fingerprinted by content.

    Notes
    -----
    The fingerprint is computed once, here, and is what caches, graph keys
    and checkpoints use to tell datasets apart: the *values* of the arrays
    (dtype, shape and bytes, see :func:`dvl_dask.keys.dask_content_digest`),
    labels and names. The same values give the same fingerprint whether they
    are numpy or dask arrays, and however they are chunked. Dask arrays
    (backed by zarr, a cloud store, ...) are read **once**, here, by the
    current scheduler, in blocks of about 8 MiB (a dask reduction of block
    digests) -- unless ``version`` is given. Rewriting values in a store thus
    changes the fingerprint of a Dataset built afterwards, so stale cache
    entries and checkpoints of the old values are never used.
    numpy inputs are checked for NaN/inf; dask arrays are checked for shape
    only (checking their values would compute them).

    A Dataset is immutable, so its fingerprint stays true: numpy arrays are
    copied into read-only arrays it owns (an array that is already read-only
    all the way down to its memory is kept without a copy; the caller's
    arrays stay writeable), so ``data.y_train[:8] = 0`` raises ``ValueError:
    assignment destination is read-only`` instead of silently leaving caches
    keyed by the old fingerprint to serve stale values; assigning an
    attribute raises :class:`~dvl_dask.errors.FrozenInstanceError`. Build a
    new Dataset from modified copies instead. Lazily backed (dask, zarr,
    cloud) arrays cannot be frozen: their fingerprint is their content read
    once, here (or ``version``), and their store must not change while the
    Dataset is in use (or give a new ``version`` and build a new Dataset).
    :meth:`provenance` describes what the fingerprint was made of.

    Examples
    --------
    >>> import numpy as np
    >>> data = Dataset.from_arrays(np.arange(20.).reshape(10, 2), np.arange(10) % 2, train_size=0.6, seed=0)
    >>> data.n_players, len(data.x_test)
    (6, 4)
    """

    def __init__(
        self,
        x_train: Any,
        y_train: Any,
        x_test: Any,
        y_test: Any,
        *,
        data_names: Sequence[Any] | np.ndarray | None = None,
        feature_names: Sequence[str] | None = None,
        target_names: Sequence[str] | None = None,
        description: str | None = None,
        name: str | None = None,
        version: str | None = None,
    ) -> None:
        owner = type(self).__name__
        if name is not None and (not isinstance(name, str) or not name):
            raise InvalidParameterError(
                f"The 'name' argument of {owner} must be a non-empty string or None. Got {name!r} instead."
            )
        self.name = name
        if version is not None and (not isinstance(version, str) or not version):
            raise InvalidParameterError(
                f"The 'version' argument of {owner} must be a non-empty string naming the data's content or "
                f"None (to fingerprint dask arrays by reading them). Got {version!r} instead."
            )
        self.version = version
        self.x_train = _owned(check_array(x_train, "x_train", owner, ndim=(1, 2, 3, 4)))
        self.y_train = _owned(check_array(y_train, "y_train", owner, ndim=(1, 2)))
        self.x_test = _owned(check_array(x_test, "x_test", owner, ndim=(1, 2, 3, 4)))
        self.y_test = _owned(check_array(y_test, "y_test", owner, ndim=(1, 2)))
        n = check_consistent_length(owner, x_train=self.x_train, y_train=self.y_train)
        check_consistent_length(owner, x_test=self.x_test, y_test=self.y_test)
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise InvalidDataError(
                f"x_train and x_test of {owner} must have the same feature shape. "
                f"Got {tuple(self.x_train.shape[1:])} and {tuple(self.x_test.shape[1:])}."
            )
        self._n_samples = n
        self.data_names = _as_labels(data_names, n, "data_names", owner)
        n_features = self.x_train.shape[1] if self.x_train.ndim == 2 else 1
        self.feature_names = _as_labels(feature_names, n_features, "feature_names", owner, default_prefix="x")
        self.target_names = None if target_names is None else readonly_array(np.asarray(target_names).astype(str))
        self.description = description
        self.fingerprint = fingerprint(
            type(self).__name__,
            _content_tokens((self.x_train, self.y_train, self.x_test, self.y_test), version),
            self.data_names,
            self.feature_names,
            self._extra_fingerprint(),
        )

    # -- constructors ----------------------------------------------------------------
    @classmethod
    @keyword_aliases(random_state="seed", stratify_by_target="stratify")
    def from_arrays(
        cls,
        x: Any,
        y: Any,
        *,
        train_size: float | int = 0.8,
        seed: SeedLike = None,
        stratify: bool = False,
        data_names: Sequence[Any] | np.ndarray | None = None,
        feature_names: Sequence[str] | None = None,
        target_names: Sequence[str] | None = None,
        description: str | None = None,
        **kwargs: Any,
    ) -> Dataset:
        """Split ``x, y`` into train and test parts (a random split).

        ``train_size`` is, as in scikit-learn's ``train_test_split``, a float
        in (0, 1), the fraction of samples used for training (rounded down), or
        an int, their number.
        ``data_names`` labels the rows of ``x`` *before* splitting (default: the
        row numbers); the training points keep their labels. ``stratify=True`` keeps class proportions.
        pyDVL's names ``random_state`` (for ``seed``) and ``stratify_by_target``
        (for ``stratify``) are accepted.
        Extra keyword arguments go to the class constructor (e.g. ``data_groups``
        of :class:`GroupedDataset`, given per row of ``x``).
        """
        from sklearn.model_selection import train_test_split

        owner = f"{cls.__name__}.from_arrays"
        x = check_array(x, "x", owner, ndim=(1, 2, 3, 4))
        y = check_array(y, "y", owner, ndim=(1, 2))
        n = check_consistent_length(owner, x=x, y=y)
        if n < 2:
            raise InvalidDataError(f"{owner} needs at least 2 samples to split. Got {n}.")
        n_train = _n_train(train_size, n, owner)
        rows = np.arange(n)
        rng_seed = int(as_seed_sequence(seed, "seed", owner).generate_state(1)[0])
        y_np = np.asarray(y) if not is_dask_array(y) else y.compute()
        _check_split(n, n_train, train_size, y_np if stratify else None, stratify, owner)
        try:
            train_rows, test_rows = train_test_split(
                rows, train_size=n_train, test_size=n - n_train, random_state=rng_seed,
                stratify=y_np if stratify else None,
            )
        except ValueError as exc:  # anything _check_split did not foresee: still a clear, typed error
            raise InvalidDataError(f"{owner} cannot split {n} samples with train_size={train_size}: {exc}") from exc
        train_rows.sort()
        test_rows.sort()
        # Training points keep the labels of their rows in the input (by default the row numbers).
        names = _as_labels(data_names, n, "data_names", owner)[train_rows]
        per_row = {k: np.asarray(v)[train_rows] for k, v in kwargs.items() if _is_per_row(v, n)}
        kwargs.update(per_row)
        return cls(
            x[train_rows],
            y[train_rows],
            x[test_rows],
            y[test_rows],
            data_names=names,
            feature_names=feature_names,
            target_names=target_names,
            description=description,
            **kwargs,
        )

    @classmethod
    @keyword_aliases(random_state="seed", stratify_by_target="stratify")
    def from_sklearn(
        cls,
        data: Any,
        *,
        train_size: float | int = 0.8,
        seed: SeedLike = None,
        stratify: bool = False,
        **kwargs: Any,
    ) -> Dataset:
        """Build from a scikit-learn ``Bunch`` or a loader such as ``load_iris``.

        Parameters are those of :meth:`from_arrays` (pyDVL's ``random_state``
        and ``stratify_by_target`` included).

        Examples
        --------
        >>> from sklearn.datasets import load_iris
        >>> Dataset.from_sklearn(load_iris, train_size=0.5, seed=0).n_players
        75
        """
        owner = f"{cls.__name__}.from_sklearn"
        bunch = data() if callable(data) else data
        if not hasattr(bunch, "data") or not hasattr(bunch, "target"):
            raise InvalidParameterError(
                f"The 'data' argument of {owner} must be a sklearn Bunch with 'data' and 'target' "
                f"or a loader returning one (e.g. sklearn.datasets.load_iris). Got {type(bunch).__name__}."
            )
        feature_names = getattr(bunch, "feature_names", None)
        target_names = getattr(bunch, "target_names", None)
        kwargs.setdefault("feature_names", None if feature_names is None else list(map(str, feature_names)))
        kwargs.setdefault("target_names", None if target_names is None else list(map(str, target_names)))
        kwargs.setdefault("description", getattr(bunch, "DESCR", None))
        kwargs.setdefault("name", _loader_name(data))
        x, y = np.asarray(bunch.data), np.asarray(bunch.target)
        return cls.from_arrays(x, y, train_size=train_size, seed=seed, stratify=stratify, **kwargs)

    # -- players ---------------------------------------------------------------------
    @property
    def n_players(self) -> int:
        """Number of players (training points here; groups in GroupedDataset)."""
        return self._n_samples

    @property
    def n_samples(self) -> int:
        """Number of training rows."""
        return self._n_samples

    def train_indices(self, players: np.ndarray) -> np.ndarray:
        """Training rows that make up the given players (identity here)."""
        return np.asarray(players, dtype=np.int64)

    def _extra_fingerprint(self) -> Any:
        return None

    def __dask_tokenize__(self) -> str:
        return self.fingerprint

    def __len__(self) -> int:
        return self.n_players

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} n_players={self.n_players} train={tuple(self.x_train.shape)} "
            f"test={tuple(self.x_test.shape)} fingerprint={self.fingerprint[:8]}>"
        )

    def materialize(self) -> Dataset:
        """Return a dataset whose arrays are numpy (dask arrays computed, read-only); same fingerprint."""
        if not any(is_dask_array(a) for a in (self.x_train, self.y_train, self.x_test, self.y_test)):
            return self
        import dask

        x_train, y_train, x_test, y_test = dask.compute(self.x_train, self.y_train, self.x_test, self.y_test)
        # Computed arrays may be views of the arrays a dask graph was built from: copied, never frozen in place.
        return self._replace(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)

    def provenance(self) -> dict[str, Any]:
        """What the fingerprint was made of, as a JSON-serialisable dict (for results, checkpoints, caches).

        Class, ``name``, fingerprint, ``version``, number of players and training rows,
        and the shape, dtype and kind (numpy or dask) of each array.

        Examples
        --------
        >>> data = Dataset(np.zeros((3, 2)), np.arange(3), np.ones((2, 2)), np.arange(2))
        >>> p = data.provenance()
        >>> p["class"], p["arrays"]["x_train"]["shape"], p["fingerprint"] == data.fingerprint
        ('dvl_dask.data._dataset.Dataset', [3, 2], True)
        """
        arrays = {
            name: {
                "shape": [int(s) for s in arr.shape],
                "dtype": np.dtype(arr.dtype).str,
                "kind": "dask" if is_dask_array(arr) else "numpy",
            }
            for name, arr in (
                ("x_train", self.x_train), ("y_train", self.y_train), ("x_test", self.x_test), ("y_test", self.y_test)
            )
        }
        return {
            "class": qualified_name(self),
            "name": self.name,
            "fingerprint": self.fingerprint,
            "version": self.version,
            "n_players": int(self.n_players),
            "n_samples": int(self.n_samples),
            "arrays": arrays,
        }


def _content_tokens(arrays: Sequence[Any], version: str | None) -> list[Any]:
    """Content digests of the arrays; dask arrays are read once, in one computation (or named by ``version``)."""
    import dask

    tokens: list[Any] = []
    lazy: dict[int, Any] = {}
    for i, arr in enumerate(arrays):
        if not is_dask_array(arr):
            arr = np.asarray(arr)
            tokens.append(fingerprint(arr) if arr.dtype.hasobject else dask_content_digest(arr))
        elif version is not None:
            tokens.append(("version", version, tuple(int(s) for s in arr.shape), np.dtype(arr.dtype).str))
        else:
            tokens.append(None)
            lazy[i] = dask_content_digest(arr, compute=False)
    if lazy:
        for i, digest in zip(lazy, dask.compute(*lazy.values())):
            tokens[i] = digest
    return tokens


def _is_per_row(value: Any, n: int) -> bool:
    return hasattr(value, "__len__") and not isinstance(value, str) and len(value) == n


class GroupedDataset(Dataset):
    """A dataset whose players are groups of training points.

    Parameters
    ----------
    x_train, y_train, x_test, y_test
        As in :class:`Dataset`.
    data_groups : sequence
        Group label of each training row (length n). Groups are ordered by
        their sorted label and become the players: ``data_names`` holds the
        group labels and ``sample_names`` the labels of the rows.
    data_names : sequence, optional
        Labels of the training *rows* (kept as ``sample_names``).
    **kwargs
        Passed to :class:`Dataset` (``feature_names``, ...).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(12.).reshape(6, 2); y = np.array([0, 1, 0, 1, 0, 1])
    >>> g = GroupedDataset(x, y, x, y, data_groups=["a", "a", "b", "b", "c", "c"])
    >>> g.n_players, g.data_names.tolist(), g.train_indices(np.array([2, 0])).tolist()
    (3, ['a', 'b', 'c'], [0, 1, 4, 5])
    """

    def __init__(
        self,
        x_train: Any,
        y_train: Any,
        x_test: Any,
        y_test: Any,
        *,
        data_groups: Sequence[Any] | np.ndarray,
        data_names: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        groups = np.asarray(data_groups)
        n = np.shape(x_train)[0] if hasattr(x_train, "shape") else len(x_train)
        if groups.ndim != 1 or groups.shape[0] != n:
            raise InvalidDataError(
                f"The 'data_groups' argument of GroupedDataset must have one label per training row ({n}). "
                f"Got shape {groups.shape}."
            )
        if groups.dtype == object:
            groups = groups.astype(str)
        self.group_names, self._group_of_row = np.unique(groups, return_inverse=True)
        order = np.argsort(self._group_of_row, kind="stable")
        counts = np.bincount(self._group_of_row, minlength=len(self.group_names))
        self._rows_by_group = tuple(readonly_array(rows) for rows in np.split(order, np.cumsum(counts)[:-1]))
        self.data_groups = readonly_array(groups)
        super().__init__(x_train, y_train, x_test, y_test, data_names=data_names, **kwargs)
        self.sample_names = self.data_names
        self.data_names = self.group_names

    @property
    def n_players(self) -> int:
        return len(self.group_names)

    def train_indices(self, players: np.ndarray) -> np.ndarray:
        players = np.asarray(players, dtype=np.int64)
        if players.size == 0:
            return players
        return np.sort(np.concatenate([self._rows_by_group[p] for p in players]))

    def _extra_fingerprint(self) -> Any:
        return self.data_groups

    @classmethod
    def from_dataset(cls, data: Dataset, data_groups: Sequence[Any] | np.ndarray) -> GroupedDataset:
        """Group the training points of an existing :class:`Dataset`."""
        return cls(
            data.x_train,
            data.y_train,
            data.x_test,
            data.y_test,
            data_groups=data_groups,
            feature_names=list(data.feature_names),
            target_names=data.target_names,
            description=data.description,
            name=data.name,
            version=data.version,
        )


Loader = Callable[[], Any]


def _loader_name(data: Any) -> str | None:
    """The name of a scikit-learn style loader (``load_iris`` -> ``"iris"``); None for anything else."""
    name = getattr(data, "__name__", None) if callable(data) else None
    if not isinstance(name, str):
        return None
    for prefix in ("load_", "fetch_"):
        if name.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix):]
    return None


def _n_train(train_size: Any, n: int, owner: str) -> int:
    """Training samples of a split of ``n``: a count as given, a fraction of ``n`` rounded down (as sklearn)."""
    if isinstance(train_size, numbers.Integral) and not isinstance(train_size, (bool, np.bool_)):
        if not 1 <= train_size <= n - 1:
            raise InvalidParameterError(
                f"The 'train_size' parameter of {owner} is a count of training samples and must be in "
                f"[1, {n - 1}] for {n} samples (at least one is left for testing). Got {train_size!r}. "
                "Pass a float in (0, 1) for a fraction."
            )
        return int(train_size)
    fraction = check_real(train_size, "train_size", owner, low=0.0, high=1.0, low_open=True, high_open=True)
    return int(np.floor(fraction * n))


def _check_split(n: int, n_train: int, train_size: Any, y: Any, stratify: Any, owner: str) -> None:
    """Refuse splits that leave a part empty or cannot be stratified, before sklearn does so obscurely."""
    if not isinstance(stratify, (bool, np.bool_)):
        raise InvalidParameterError(f"The 'stratify' parameter of {owner} must be a bool. Got {stratify!r} instead.")
    n_test = n - n_train
    if n_train == 0 or n_test == 0:
        part = "training" if n_train == 0 else "test"
        raise InvalidDataError(
            f"{owner} with train_size={train_size} on {n} samples leaves the {part} part empty. To fix, pass a "
            f"train_size between {1 / n:.3g} and {1 - 1 / n:.3g} (or a count between 1 and {n - 1}), or "
            "provide more samples."
        )
    if not stratify:
        return
    labels, counts = np.unique(np.asarray(y).reshape(n, -1)[:, 0] if np.ndim(y) > 1 else y, return_counts=True)
    lonely = labels[counts < 2]
    if lonely.size:
        raise InvalidDataError(
            f"{owner} with stratify=True needs at least 2 samples of every class (one for each part). "
            f"Class(es) {lonely[:5].tolist()} have a single sample. To fix, drop or merge these classes, "
            "or pass stratify=False."
        )
    if min(n_train, n_test) < labels.size:
        raise InvalidDataError(
            f"{owner} with stratify=True needs at least one sample of each of the {labels.size} classes in "
            f"both parts, but train_size={train_size} gives {n_train} training and {n_test} test samples. "
            "To fix, pass a train_size closer to 0.5 or stratify=False."
        )
