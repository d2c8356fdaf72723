"""2D-Shapley (Liu et al., ICML 2023): values of the cells of a data matrix, rows x features.

Fragmented data: different sources hold different blocks of one matrix (some
rows, some features). 2D-Shapley values a *cell* ``(i, j)`` (row ``i``,
feature ``j``) with a utility ``u(S, F)`` of a block: the rows ``S`` restricted
to the features ``F``. The value of a cell is its average *double marginal*
contribution over pairs of coalitions of the other rows and the other
features, with Shapley weights in both directions::

    psi_ij = sum_{S ⊆ N \\ {i}} sum_{F ⊆ M \\ {j}} w_N(|S|) w_M(|F|)
             [u(S + i, F + j) - u(S + i, F) - u(S, F + j) + u(S, F)]

with ``w_n(s) = 1 / (n C(n-1, s))``. The double marginal is what the cell
adds beyond what its row brings without its feature and its feature brings
without its row. The values satisfy the 2D efficiency axiom
``sum_ij psi_ij = u(N, M) - u(N, ∅) - u(∅, M) + u(∅, ∅)``.

Two estimators, both lazy graphs of block tasks:

- :func:`exact_two_d_shapley` evaluates all ``2**n * 2**m`` blocks once. The
  sum factorises: ``psi = A^T U B`` with ``U[S, F] = u(S, F)``,
  ``A[S, i] = w_N(|S| - 1)`` if ``i ∈ S`` else ``-w_N(|S|)`` (and ``B`` the
  same for features), so each task takes a range of row subsets, evaluates
  them against every feature subset and returns its ``(n, m)`` share.
- :func:`two_d_shapley` samples pairs of permutations (rows, features), the
  Monte Carlo estimator of the paper: a pair costs ``(n + 1)(m + 1)``
  evaluations (every prefix block ``u(pi[:a], sigma[:b])``) and gives one
  double marginal to every cell. Statistics are those of the other Monte Carlo
  methods (mergeable moments, honest stderr; a double marginal lies in an
  interval of width ``4 W`` for a utility of range width ``W``).

How a :class:`~dvl_dask.Utility` restricts features
(:class:`FeatureSubsetUtility`): the model is fitted on the selected training
rows *and columns only* and scored on the test set restricted to the same
columns, as in Liu et al.'s experiments (the model is trained on the data
block). Masking columns to zero is not used: it would feed the model values
that were never observed. A block with no rows or no features gets the
utility's ``default_score`` (the model cannot be fitted on it).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .. import config
from ..errors import InvalidParameterError, TooManyPlayersError, UtilityFailureWarning
from ..keys import current_call, lazy_method, object_token
from ..results import valuation_dataset
from ..results._schema import EXACT, FEATURE_DIM, SAMPLE_DIM, SAMPLE_MEAN, describe_variables
from ..threads import limits_blas_threads
from ..validation import SeedLike, as_seed_sequence, check_finite_score, check_positive_int, seed_entropy
from ._estimators import score_width
from ._graph import block_ranges, companion_name, even_ranges, stack_blocks
from ._montecarlo import tree_merge
from ._samplers import child_seed
from ._stats import PointStats, finalize_stats

__all__ = ["FEATURE_DIM", "FeatureSubsetUtility", "exact_two_d_shapley", "two_d_shapley"]

#: What ``stderr = 0`` means for exact 2D-Shapley.
TWO_D_STDERR_NOTE = (
    "0: exact, every block u(S, F) the value is defined by was evaluated once, so there is no sampling error"
)


class FeatureSubsetUtility:
    """The 2D utility of a :class:`~dvl_dask.Utility`: ``u(S, F)`` fits on rows ``S`` and columns ``F``.

    ``u(rows, features)`` clones the utility's model, fits it on
    ``x_train[rows][:, features]`` and scores it with the utility's scorer on
    ``x_test[:, features]``. Blocks without rows or features, and single-class
    row sets of classifiers, get the utility's ``default_score``; a failing
    fit does too when the utility catches errors, and so does a non-finite
    score (both with a :class:`~dvl_dask.errors.UtilityFailureWarning`); an
    error raises when the utility does not catch errors. Rows are
    the utility's players (groups of a ``GroupedDataset`` select all their
    rows); features are the columns of 2-d ``x_train``.

    With a cache (``Utility(..., cache=backend)``) blocks are memoised in the
    same backend, with the utility's cache options and the same key function
    (:func:`dvl_dask.cache.memoize`): a key digests this class's evaluation
    code, the token (the utility's model, data and scorer) and the canonical
    row *and* feature subsets, so a block evaluated again is a hit and the
    same rows with other features are a miss. Entries never collide with the
    utility's own (one-argument) entries.

    Parameters
    ----------
    utility : Utility
        Model, data (2-d features) and scorer.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LinearRegression
    >>> from dvl_dask import Dataset, Utility
    >>> x = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 1.0], [3.0, 0.0]]); y = x[:, 0] * 2
    >>> u2 = FeatureSubsetUtility(Utility(LinearRegression(), Dataset(x, y, x, y), "r2", default_score=0.0))
    >>> round(u2([0, 1, 2, 3], [0]), 6), u2([0, 1, 2, 3], [])
    (1.0, 0.0)
    """

    returns_finite_scores = True

    def __init__(self, utility: Any) -> None:
        data = getattr(utility, "data", None)
        if data is None or not callable(getattr(utility, "scorer", None)) or not hasattr(utility, "model"):
            raise InvalidParameterError(
                "The 'utility' argument of FeatureSubsetUtility must be a dvl_dask.Utility (model, data, scorer). "
                f"Got {type(utility).__name__}."
            )
        if getattr(data.x_train, "ndim", 0) != 2:
            raise InvalidParameterError(
                "FeatureSubsetUtility needs 2-d features (rows x features) to select columns. x_train has shape "
                f"{tuple(data.x_train.shape)}."
            )
        self.utility = utility
        self.n_rows = int(utility.n_players)
        self.n_features = int(data.x_train.shape[1])
        self.row_names = np.asarray(utility.data_names)
        self.feature_names = np.asarray(data.feature_names)
        self.token = object_token("FeatureSubsetUtility", utility.token)
        self.score_range = getattr(utility, "score_range", None)
        self._memoized = _memoize_blocks(self)

    def __call__(self, rows: Any, features: Any) -> float:
        rows = np.unique(np.asarray(rows, dtype=np.int64).ravel())
        features = np.unique(np.asarray(features, dtype=np.int64).ravel())
        if self._memoized is not None:
            return float(self._memoized(rows, features))
        return self.fit_and_score(rows, features)

    def fit_and_score(self, rows: np.ndarray, features: np.ndarray) -> float:
        """Fit a fresh clone on canonical (sorted, unique) ``rows`` x ``features`` and score it; no cache."""
        utility = self.utility
        if rows.size == 0 or features.size == 0:
            return float(utility.default_score)
        data = utility.data.materialize()
        index = data.train_indices(rows)
        y = data.y_train[index]
        if getattr(utility, "_is_classifier", False) and np.unique(y).size < 2:
            return float(utility.default_score)
        model = utility.model  # a fresh unfitted copy
        try:
            model.fit(data.x_train[index][:, features], y)
            score = float(utility.scorer(model, data.x_test[:, features], data.y_test))
        except Exception as exc:
            if not getattr(utility, "catch_errors", False):
                raise
            warnings.warn(
                f"Fitting on {rows.size} row(s) and {features.size} feature(s) failed ({type(exc).__name__}: {exc}); "
                f"using default_score={utility.default_score}.", UtilityFailureWarning, stacklevel=2,
            )
            return float(utility.default_score)
        if not np.isfinite(score):
            warnings.warn(
                f"The scorer returned {score} on {rows.size} row(s) and {features.size} feature(s); "
                f"using default_score={utility.default_score}.", UtilityFailureWarning, stacklevel=2,
            )
            return float(utility.default_score)
        return score

    def provenance(self) -> dict[str, Any]:
        from .._provenance import describe_utility

        return {"class": "FeatureSubsetUtility", "utility": describe_utility(self.utility)}

    @property
    def cache_stats(self) -> Any:
        """Hits, misses and sets of this utility's blocks in this process (a :class:`~dvl_dask.cache.CacheStats`).

        Raises
        ------
        InvalidParameterError
            If the wrapped utility has no cache.
        """
        if self._memoized is None:
            raise InvalidParameterError(
                "cache_stats needs a FeatureSubsetUtility over a Utility built with a cache "
                "(Utility(..., cache=<CacheBackend>)); this one has none."
            )
        return self._memoized.stats

    def __dask_tokenize__(self) -> str:
        return self.token

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_memoized"] = None  # rebuilt on unpickling, against the utility's own (unpickled) backend
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._memoized = _memoize_blocks(self)

    def __repr__(self) -> str:
        return f"FeatureSubsetUtility({self.utility!r})"


def _memoize_blocks(two_d: FeatureSubsetUtility) -> Any:
    """``two_d.fit_and_score`` memoised in its utility's cache backend with the utility's options, or None.

    The key digests the method's code, the owner's token (``__dask_tokenize__``:
    model, data, scorer) and both canonical subsets, as :class:`~dvl_dask.Utility` does.
    """
    utility = two_d.utility
    backend = getattr(utility, "cache", None)
    if backend is None:
        return None
    from ..cache import memoize

    options = dict(getattr(utility, "_cache_options", None) or {})
    options.pop("subset_args", None)  # the subsets arrive canonical (sorted, unique)
    return memoize(two_d.fit_and_score, backend, **options)


def _check_two_d_utility(utility: Any, owner: str) -> tuple[int, int]:
    """``(n_rows, n_features)`` of a 2D utility; refuse anything else."""
    ok = callable(utility) and isinstance(getattr(utility, "token", None), str)
    shape = (getattr(utility, "n_rows", None), getattr(utility, "n_features", None))
    if not ok or not all(isinstance(s, int | np.integer) and s >= 1 for s in shape):
        raise InvalidParameterError(
            f"The 'utility' argument of {owner} must be a 2D utility u(rows, features) with int n_rows >= 1, "
            "n_features >= 1 and a str token, e.g. FeatureSubsetUtility(Utility(model, data, scorer)). "
            f"Got {type(utility).__name__}."
        )
    return int(shape[0]), int(shape[1])


def _scorer(utility: Any) -> Any:
    """``score(rows, features)``: the utility itself if it vouches for finite floats, else checked per call."""
    if getattr(type(utility), "returns_finite_scores", False) is True:
        return utility
    owner = f"The 2D utility {type(utility).__name__}"

    def score(rows: np.ndarray, features: np.ndarray) -> float:
        return check_finite_score(utility(rows, features), owner)

    return score


def _names(utility: Any, attribute: str, size: int) -> np.ndarray:
    names = getattr(utility, attribute, None)
    return np.arange(size) if names is None or len(names) != size else np.asarray(names)


def _subset_coefficients(n: int, masks: np.ndarray) -> np.ndarray:
    """``A[S, i]``: ``w(|S| - 1)`` for members, ``-w(|S|)`` for the others (``w(s) = 1 / (n C(n-1, s))``)."""
    bits = ((masks[:, None] >> np.arange(n, dtype=np.int64)) & 1).astype(bool)
    sizes = bits.sum(axis=1)
    w = np.array([1.0 / (n * math.comb(n - 1, s)) for s in range(n)] + [0.0])
    member = w[np.clip(sizes - 1, 0, n)]
    outside = w[np.minimum(sizes, n)]
    return np.where(bits, member[:, None], -outside[:, None])


def _members(mask: int, n: int) -> np.ndarray:
    return np.flatnonzero((int(mask) >> np.arange(n)) & 1)


@limits_blas_threads
def exact_two_d_block(utility: Any, start: int, stop: int, n: int, m: int) -> np.ndarray:
    """Share of row subsets ``start..stop-1`` (bit masks) in every cell's value, flattened ``(n * m,)``."""
    row_masks = np.arange(start, stop, dtype=np.int64)
    feature_masks = np.arange(2**m, dtype=np.int64)
    feature_sets = [_members(f, m) for f in feature_masks]
    score = _scorer(utility)
    scores = np.array(
        [[score(_members(r, n), feats) for feats in feature_sets] for r in row_masks], dtype=np.float64
    )
    share = _subset_coefficients(n, row_masks).T @ scores @ _subset_coefficients(m, feature_masks)
    return share.ravel()


@limits_blas_threads
def two_d_block(utility: Any, seed: np.random.SeedSequence, n_pairs: int, n: int, m: int) -> PointStats:
    """``n_pairs`` pairs of (row, feature) permutations: one double marginal per cell and pair."""
    rng = np.random.default_rng(seed)
    samples = np.empty((n_pairs, n * m))
    evaluations = 0
    score = _scorer(utility)
    for p in range(n_pairs):
        rows, features = rng.permutation(n), rng.permutation(m)
        grid = np.empty((n + 1, m + 1))
        for a in range(n + 1):
            for b in range(m + 1):
                grid[a, b] = score(rows[:a], features[:b])
        evaluations += (n + 1) * (m + 1)
        double = grid[1:, 1:] - grid[:-1, 1:] - grid[1:, :-1] + grid[:-1, :-1]  # cell (rows[a], features[b])
        cells = np.empty((n, m))
        cells[np.ix_(rows, features)] = double
        samples[p] = cells.ravel()
    return PointStats.from_samples(samples, np.ones(samples.shape, dtype=bool), evaluations)


def _finalize_cells(stats: PointStats, sample_range: float | None) -> np.ndarray:
    value, stderr, count = finalize_stats(stats, {"combine": "mean", "sample_range": sample_range})
    return np.stack([value, stderr, count.astype(np.float64)])


def _two_d_dataset(flat: Any, utility: Any, n: int, m: int, **attrs: Any) -> xr.Dataset:
    """The labelled ``(sample, feature)`` result from flattened ``(3, n * m)`` rows value, stderr, counts."""
    cells = valuation_dataset(flat[0], flat[1], flat[2].astype(np.int64), data_names=np.arange(n * m), **attrs)
    rows, features = _names(utility, "row_names", n), _names(utility, "feature_names", m)
    data_vars = {name: ((SAMPLE_DIM, FEATURE_DIM), cells[name].data.reshape(n, m)) for name in cells.data_vars}
    out = xr.Dataset(data_vars, coords={SAMPLE_DIM: rows, FEATURE_DIM: features}, attrs=cells.attrs)
    return describe_variables(out)


def _provenance(utility: Any) -> dict[str, Any]:
    describe = getattr(utility, "provenance", None)
    return describe() if callable(describe) else {"class": type(utility).__name__}


@lazy_method
def exact_two_d_shapley(utility: Any, *, block_size: int | None = None) -> xr.Dataset:
    """Exact 2D-Shapley values of every cell of an ``n x m`` data matrix (Liu et al., 2023), as a lazy graph.

    Every block ``u(S, F)`` of the ``2**n * 2**m`` is evaluated once, in tasks
    of ``block_size`` row subsets (each against all feature subsets); their
    ``(n, m)`` shares are summed by a tree reduction.

    Parameters
    ----------
    utility : FeatureSubsetUtility or any 2D utility
        ``u(rows, features) -> float`` with ``n_rows``, ``n_features`` and a
        ``token`` (optionally ``row_names``, ``feature_names``, ``provenance()``).
    block_size : int, optional
        Row subsets per task (default: ``dvl_dask.valuation.exact.subsets-per-block`` evaluations per task).

    Returns
    -------
    xarray.Dataset
        Lazy ``value``, ``stderr`` (0) and ``counts`` (``2**(n-1) * 2**(m-1)``
        double marginals per cell) over dims ``(sample, feature)``;
        ``attrs["estimate"]`` is ``"exact"``.

    Raises
    ------
    TooManyPlayersError
        If ``n + m`` exceeds ``dvl_dask.valuation.exact.max-players``.

    References
    ----------
    Liu, Z., Just, H. A., Chang, X., Chen, X. and Jia, R. (2023). 2D-Shapley: a
    framework for fragmented data valuation. ICML, PMLR 202, 21730-21755.

    Examples
    --------
    >>> import numpy as np
    >>> class CellSum:  # u(S, F) = sum of the cells of the block: every cell is worth itself
    ...     n_rows, n_features, token = 2, 2, "cell-sum"
    ...     def __call__(self, rows, features):
    ...         return float(np.array([[1.0, 2.0], [3.0, 4.0]])[np.ix_(rows, features)].sum())
    >>> exact_two_d_shapley(CellSum()).value.values.tolist()
    [[1.0, 2.0], [3.0, 4.0]]
    """
    owner = "exact_two_d_shapley"
    n, m = _check_two_d_utility(utility, owner)
    limit = int(config.get(config.EXACT_MAX_PLAYERS))
    if n + m > limit:
        raise TooManyPlayersError(
            f"{owner} evaluates 2**(n + m) blocks; n + m = {n} + {m} exceeds the limit of {limit}. To fix, use "
            f"two_d_shapley (Monte Carlo) or raise the limit with dask.config.set({{'{config.EXACT_MAX_PLAYERS}': "
            f"{n + m}}})."
        )
    default = max(1, int(config.get(config.EXACT_SUBSETS_PER_BLOCK)) // 2**m)
    size = check_positive_int(default if block_size is None else block_size, "block_size", owner)
    u = dask.delayed(utility, pure=True, name=f"utility-2d-{utility.token}")
    name = current_call().layer("two-d-shapley-exact-block")
    block = dask.delayed(exact_two_d_block, pure=True)
    blocks = [block(u, a, b, n, m, dask_key_name=f"{name}-{i}") for i, (a, b) in enumerate(block_ranges(2**n, size))]
    values = stack_blocks(blocks, n * m)
    zeros = da.zeros(n * m, chunks=n * m)
    counts = da.full(n * m, 2 ** (n - 1) * 2 ** (m - 1), chunks=n * m, dtype=np.float64)
    return _two_d_dataset(
        da.stack([values, zeros, counts]), utility, n, m, method="two_d_shapley",
        parameters={"estimator": "exact", "block_size": size}, utility_token=utility.token,
        n_evaluations=2 ** (n + m), estimate=EXACT, provenance=_provenance(utility),
        extra_attrs={"stderr_note": TWO_D_STDERR_NOTE},
    )


@lazy_method
def two_d_shapley(
    utility: Any,
    *,
    n_permutations: int,
    seed: SeedLike = None,
    items_per_block: int | None = None,
) -> xr.Dataset:
    """2D-Shapley values of the cells of a data matrix by sampling pairs of permutations (Liu et al., 2023).

    Each sample draws a permutation of the rows and one of the features and
    evaluates every prefix block ``u(rows[:a], features[:b])``
    (``(n + 1)(m + 1)`` evaluations); cell ``(rows[a], features[b])`` gets the
    double marginal ``u(a+1, b+1) - u(a, b+1) - u(a+1, b) + u(a, b)``. Prefixes
    of uniform permutations have the Shapley weights in both directions, so
    the mean of a cell's double marginals is an unbiased estimate of its
    2D-Shapley value; the stderr follows the rules of the other Monte Carlo
    methods (a double marginal lies in an interval of width ``4 W`` when the
    utility's range has width ``W``).

    Parameters
    ----------
    utility : FeatureSubsetUtility or any 2D utility
        As for :func:`exact_two_d_shapley`.
    n_permutations : int
        Pairs of permutations (the budget).
    seed : int, SeedSequence or None
        Same seed, same values on any scheduler.
    items_per_block : int, optional
        Pairs per task (default: about ``evaluations-per-block`` evaluations
        per task, small budgets cut into at least ``min-blocks`` tasks).

    Returns
    -------
    xarray.Dataset
        Lazy ``value``, ``stderr`` and ``counts`` over dims ``(sample, feature)``.

    References
    ----------
    Liu, Z., Just, H. A., Chang, X., Chen, X. and Jia, R. (2023). 2D-Shapley: a
    framework for fragmented data valuation. ICML, PMLR 202, 21730-21755.
    """
    owner = "two_d_shapley"
    n, m = _check_two_d_utility(utility, owner)
    total = check_positive_int(n_permutations, "n_permutations", owner)
    seq = as_seed_sequence(seed, "seed", owner)
    per_pair = (n + 1) * (m + 1)
    if items_per_block is None:
        per_block = max(1, int(config.get(config.MC_EVALUATIONS_PER_BLOCK)) // per_pair)
        ranges = even_ranges(total, per_block, int(config.get(config.MC_MIN_BLOCKS)))
    else:
        per_block = check_positive_int(items_per_block, "items_per_block", owner)
        ranges = block_ranges(total, per_block)
    u = dask.delayed(utility, pure=True, name=f"utility-2d-{utility.token}")
    name = current_call().layer("two-d-shapley-block")
    block = dask.delayed(two_d_block, pure=True)
    blocks = [
        block(u, child_seed(seq, i), b - a, n, m, dask_key_name=f"{name}-{i}") for i, (a, b) in enumerate(ranges)
    ]
    merged = tree_merge(blocks, name)
    width = score_width(utility)
    sample_range = None if width is None else 4.0 * width
    finalize = dask.delayed(_finalize_cells, pure=True)
    final = finalize(merged, sample_range, dask_key_name=companion_name(name, "finalize"))
    return _two_d_dataset(
        da.from_delayed(final, shape=(3, n * m), dtype=np.float64), utility, n, m, method="two_d_shapley",
        parameters={"estimator": "permutation pairs", "n_permutations": total, "items_per_block": per_block,
                    "sample_range": sample_range},
        seed=seed_entropy(seq), utility_token=utility.token, n_evaluations=total * per_pair,
        estimate=SAMPLE_MEAN, provenance=_provenance(utility),
        extra_attrs={"n_blocks": len(blocks), "sample_unit": "pair of permutations", "biased": False, "bias": ""},
    )
