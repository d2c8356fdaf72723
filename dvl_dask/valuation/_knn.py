"""KNN-Shapley: exact Shapley values of the K-nearest-neighbour utility in closed form.

For one test point ``(x, y)`` sort the training points by their distance to
``x``: ``a_1`` is the nearest, ``a_N`` the farthest, and ``m_i = 1`` when
``a_i`` has the label ``y``. The KNN utility of a subset ``S`` is the share of
the ``K`` nearest members of ``S`` that carry ``y``,
``u(S) = (1/K) #{k <= min(K, |S|): the k-th nearest member of S has label y}``
(for ``|S| >= K`` this is ``KNeighborsClassifier.predict_proba`` of the true
class). Jia et al. (2019, "Efficient task-specific data valuation for nearest
neighbor algorithms", Theorem 1) give its Shapley values by a recursion from
the farthest point inwards::

    s(a_N) = m_N * min(K, N) / (K * N)      (= m_N / N when N >= K)
    s(a_i) = s(a_{i+1}) + (m_i - m_{i+1}) * min(K, i) / (K * i)

which is a suffix sum over the sorted points; the value of a training point
is the mean of ``s`` over the test points.

For a ``KNeighborsRegressor`` the utility of ``S`` for a test point
``(x, t)`` is the negative squared error of the KNN prediction,
``u(S) = -((1/K) sum of the targets of the K nearest members of S - t)^2``
(divided by ``K`` also when ``|S| < K``, so ``u(∅) = -t^2``; for
``|S| >= K`` it is ``-(KNeighborsRegressor.predict(x) - t)^2``). Jia et al.
(2019, Theorem 2) show that its Shapley values also follow from one sort; the
O(N) form used here (:func:`_regression_shapley_of_sorted`) expands the
square into a sum of "j is among the K nearest" and "j and l are among the K
nearest" games whose Shapley values are counted directly, and is checked
against brute force over all subsets in the tests. No model is fitted: the cost is one
distance row and one sort per test point, O(n_test * N log N).

Graph shape (why not a single ``dask.array`` expression): every test point
needs the distances to *all* training points at once to rank them. One task
per chunk of test points computes its distance rows train chunk by train chunk
into one preallocated float64 ``(rows, N)`` buffer, then ranks each row and scatters
the values back with ``np.bincount``; the per-chunk vectors are summed by a
tree reduction. Peak memory of a task is its buffer (``max_block_bytes``) plus
a few length-``N`` vectors; the full ``n_test x N`` distance matrix never
exists. Training chunks are graph keys of their own, so a cluster ships each
of them to a worker once; for the Euclidean metric they are keys of float64
rows centred on the training mean (with their squared norms), prepared once,
which holds a float64 copy of the training features while the graph runs.
"""

from __future__ import annotations

import math
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .._provenance import library_versions
from ..data import Dataset, GroupedDataset
from ..errors import InvalidDataError, InvalidModelError, InvalidParameterError
from ..keys import current_call, layer_name, lazy_method
from ..results import valuation_dataset
from ..results._schema import EXACT
from ..utility._utility import _check_classifier_targets
from ..validation import check_positive_int, is_dask_array
from ._graph import stack_blocks

__all__ = ["encode_labels", "knn_regression_test_chunk", "knn_shapley", "knn_shapley_test_chunk"]

#: Bytes of distance rows one task keeps by default (rows * N * itemsize).
DEFAULT_BLOCK_BYTES = 256 * 2**20
#: Bytes of one chunk of training features by default.
DEFAULT_TRAIN_CHUNK_BYTES = 64 * 2**20
#: Below this many test chunks a cluster would idle; split the test points further.
MIN_TEST_CHUNKS = 16
#: What ``stderr = 0`` means for KNN-Shapley (recorded in the result's ``stderr_note`` attr).
KNN_STDERR_NOTE = (
    "0: exact for this training and test set, the closed form of Jia et al. (2019) sums every coalition's "
    "marginal contribution, so there is no sampling error; it does not measure how the values would change "
    "with another test set drawn from the same distribution"
)

_EUCLIDEAN = ("euclidean", "l2", "sqeuclidean")


def _knn_parameters(model: Any, owner: str) -> tuple[int, str, dict[str, Any]]:
    """``(K, metric, metric kwargs)`` of a KNN classifier or regressor; refuse what the closed form cannot do."""
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

    if not isinstance(model, KNeighborsClassifier | KNeighborsRegressor):
        raise InvalidModelError(
            f"The 'model' argument of {owner} must be a sklearn.neighbors.KNeighborsClassifier or "
            f"KNeighborsRegressor (its n_neighbors and metric define the utility). Got {type(model).__name__}."
        )
    params = model.get_params()
    k = check_positive_int(params["n_neighbors"], "n_neighbors", owner)
    if params["weights"] != "uniform":
        raise InvalidModelError(
            f"{owner}: the closed form holds for weights='uniform' only; the model has "
            f"weights={params['weights']!r}. Use a Monte Carlo method on a Utility for weighted KNN."
        )
    metric = params["metric"]
    if metric == "precomputed":
        raise InvalidModelError(f"{owner} computes distances itself; metric='precomputed' is not supported.")
    metric_params = dict(params.get("metric_params") or {})
    if metric == "minkowski":
        p = metric_params.pop("p", params.get("p", 2))
        if p == 2 and not metric_params:
            metric = "euclidean"
        else:
            metric_params["p"] = p
    return k, metric, metric_params


def _centred(x: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Rows of ``x`` in float64 relative to ``centre`` (exact for float32 input and nearby float64 values)."""
    return np.asarray(x, dtype=np.float64) - centre


def centred_train_chunk(x_train: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rows - centre, their squared norms)`` in float64: one chunk of training rows, prepared once."""
    rows = _centred(x_train, centre)
    return rows, np.einsum("ij,ij->i", rows, rows)


def _check_metric(metric: Any, metric_params: dict[str, Any], n_features: int, owner: str) -> None:
    """Compute one distance now (two made-up rows), so a metric scikit-learn refuses fails when the graph is built."""
    if metric in _EUCLIDEAN:
        return
    probe = np.arange(2.0 * n_features).reshape(2, n_features) / max(n_features, 1)
    try:
        _distance_rows(probe[:1], probe[1:], metric, metric_params)
    except Exception as exc:
        raise InvalidModelError(
            f"The 'model' of {owner} has a metric scikit-learn cannot use: metric={metric!r} with "
            f"metric_params={metric_params!r} ({type(exc).__name__}: {exc}). To fix, pass a metric of "
            "sklearn.metrics.pairwise_distances (e.g. 'euclidean', 'manhattan', 'cosine') with the parameters it "
            "needs, or a callable (a, b) -> float."
        ) from exc


def _distance_rows(x_test: np.ndarray, train_chunk: Any, metric: Any, metric_params: dict[str, Any]) -> np.ndarray:
    """Distances (or any score with the same order per row) between test and training rows, in float64.

    For the Euclidean metric ``x_test`` is centred (``_centred``) and
    ``train_chunk`` is :func:`centred_train_chunk` of the same centre; other
    metrics get raw rows.
    """
    if metric in _EUCLIDEAN:
        # ||b||^2 - 2 a.b ranks the training rows b exactly like ||a - b||^2 (||a||^2 is constant
        # per test row and dropped): one GEMM, no sqrt. Around the training mean every term is at
        # the scale of the data's spread, not of its offset, so the cancellation loses nothing
        # to a large offset (timestamps, uncentred pixels); float64 keeps near-ties apart.
        rows, norms = train_chunk
        return norms[None, :] - 2.0 * (x_test @ rows.T)
    from sklearn.metrics import pairwise_distances

    return pairwise_distances(
        np.asarray(x_test, dtype=np.float64), np.asarray(train_chunk, dtype=np.float64), metric=metric,
        **metric_params,
    )


def _rank_coefficients(n: int, k: int) -> np.ndarray:
    """``c_i = min(K, i) / (K i)`` for ranks ``i = 1..N-1`` and the farthest point's ``min(K, N) / (K N)``."""
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return np.minimum(k, ranks) / (k * ranks)


def _shapley_of_sorted(match: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """Jia et al.'s recursion for one test point, given ``match`` in ascending distance order."""
    m = match.astype(np.float64)
    out = np.empty_like(m)
    out[-1] = m[-1] * coefficients[-1]
    # s(a_i) = s(a_N) + sum_{j >= i} (m_j - m_{j+1}) c_j : a reversed cumulative sum.
    step = np.subtract(m[:-1], m[1:], out=out[:-1])
    step *= coefficients[:-1]
    out[:-1] = np.cumsum(step[::-1])[::-1]
    out[:-1] += out[-1]
    return out


def _regression_shapley_of_sorted(y: np.ndarray, target: float, k: int) -> np.ndarray:
    """Exact Shapley values of ``u(S) = -((1/K) sum of the K nearest y in S - target)^2``, nearest first.

    Expanding the square, ``u(S) + target^2 = sum_{j in T(S)} c_j - (2/K^2) sum_{j<l in T(S)} y_j y_l``
    with ``T(S)`` the ``min(K, |S|)`` nearest members of ``S`` and
    ``c_j = 2 target y_j / K - y_j^2 / K^2``. Both parts are sums of games
    with closed-form Shapley values (1-based ranks ``r``, derived by counting
    the positions of ``r`` in a random order of the ``l`` nearest points):

    - ``1[j in T(S)]`` gives ``min(K, j)/j`` to ``j`` and ``-K/(j(j-1))`` to
      every nearer point when ``j > K``;
    - ``1[j, l in T(S)]`` (``j < l``) gives ``A_l = m(m+1)/(2 l (l-1))``,
      ``m = min(K-1, l-1)``, to ``j`` and to ``l``, and
      ``-B_l = -K(K-1)/(l(l-1)(l-2))`` to every other point nearer than
      ``l`` when ``l > K``.

    Summed with prefix and suffix sums: O(N) per test point after the sort.
    """
    y = np.asarray(y, dtype=np.float64)
    n = y.size
    r = np.arange(1, n + 1, dtype=np.float64)
    c = 2.0 * target * y / k - y * y / k**2
    big = r > k
    d = np.where(big, c * k / (r * np.maximum(r - 1, 1)), 0.0)
    after = np.cumsum(d[::-1])[::-1] - d  # sum over l > r
    linear = c * np.minimum(k, r) / r - after
    m = np.minimum(k - 1, r - 1)
    a = np.where(r > 1, m * (m + 1) / (2 * r * np.maximum(r - 1, 1)), 0.0)
    b = np.where(big & (r > 2), k * (k - 1) / (r * np.maximum(r - 1, 1) * np.maximum(r - 2, 1)), 0.0)
    before = np.cumsum(y) - y  # Y_{<r}
    ya = y * a
    yb = y * b
    suffix_ya = np.cumsum(ya[::-1])[::-1] - ya
    suffix_yb_before = np.cumsum((yb * before)[::-1])[::-1] - yb * before
    suffix_yb = np.cumsum(yb[::-1])[::-1] - yb
    pairs = y * suffix_ya + ya * before - suffix_yb_before + y * suffix_yb
    return linear - 2.0 / k**2 * pairs


def knn_regression_test_chunk(
    x_test: np.ndarray,
    y_test: np.ndarray,
    y_train: np.ndarray,
    k: int,
    metric: Any,
    metric_params: dict[str, Any],
    centre: np.ndarray | None,
    *train_chunks: Any,
) -> np.ndarray:
    """Sum over the given test points of every training point's KNN-regression Shapley value.

    As :func:`knn_shapley_test_chunk`, with float targets: the utility of a
    test point is ``-(prediction - y)^2`` (:func:`_regression_shapley_of_sorted`).
    """
    x_test = _centred(x_test, centre) if metric in _EUCLIDEAN else np.asarray(x_test)
    targets = np.asarray(y_test, dtype=np.float64)
    dist = _distances(x_test, train_chunks, y_train.shape[0], metric, metric_params)
    total = np.zeros(y_train.shape[0])
    for row in range(dist.shape[0]):
        order = np.argsort(dist[row])
        total[order] += _regression_shapley_of_sorted(y_train[order], float(targets[row]), k)
    return total


def _distances(x_test: np.ndarray, train_chunks: Any, n: int, metric: Any, metric_params: dict[str, Any]) -> np.ndarray:
    """Distance rows of the test points to all ``n`` training rows, chunk by chunk into one buffer."""
    dist = np.empty((x_test.shape[0], n), dtype=np.float64)
    start = 0
    for chunk in train_chunks:
        block = _distance_rows(x_test, chunk, metric, metric_params)
        dist[:, start : start + block.shape[1]] = block
        start += block.shape[1]
    return dist


def _float_targets(y_train: Any) -> np.ndarray:
    """Training targets of a KNN regressor as float64 (one key every task reads)."""
    return np.asarray(y_train, dtype=np.float64).ravel()


def encode_labels(y_train: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, codes)`` of the training labels: comparing int32 codes is cheaper than labels."""
    classes, codes = np.unique(np.asarray(y_train), return_inverse=True)
    return classes, codes.astype(np.int32).ravel()


def knn_shapley_test_chunk(
    x_test: np.ndarray,
    y_test: np.ndarray,
    labels: tuple[np.ndarray, np.ndarray],
    k: int,
    metric: Any,
    metric_params: dict[str, Any],
    centre: np.ndarray | None,
    *train_chunks: Any,
) -> np.ndarray:
    """Sum over the given test points of every training point's KNN-Shapley value.

    ``labels`` is :func:`encode_labels` of the training labels and
    ``train_chunks`` are consecutive row blocks of the training features:
    for the Euclidean metric, :func:`centred_train_chunk` of each block with
    ``centre`` (float64, one value per feature; the test rows are centred on
    it too), else the raw blocks and ``centre=None``. Distances are computed
    in float64. Ties in distance are broken by the sort (as in
    scikit-learn's brute-force search, their order is not specified).
    """
    x_test = _centred(x_test, centre) if metric in _EUCLIDEAN else np.asarray(x_test)
    classes, codes = labels
    n = codes.shape[0]
    # A test label absent from the training labels matches no training point (code -1).
    where = np.minimum(np.searchsorted(classes, np.asarray(y_test)), len(classes) - 1)
    test_codes = np.where(classes[where] == np.asarray(y_test), where, -1)
    rows = x_test.shape[0]
    dist = _distances(x_test, train_chunks, n, metric, metric_params)
    coefficients = _rank_coefficients(n, k)
    total = np.zeros(n)
    for r in range(rows):
        order = np.argsort(dist[r])
        # ``order`` is a permutation: a fancy-indexed += adds every value exactly once.
        total[order] += _shapley_of_sorted(codes[order] == test_codes[r], coefficients)
    return total


def _is_regressor(model: Any) -> bool:
    from sklearn.neighbors import KNeighborsRegressor

    return isinstance(model, KNeighborsRegressor)


def _training_mean(x_train: da.Array) -> Any:
    """The float64 mean of the training rows, as one delayed key (the centre of the distance computation)."""
    return x_train.mean(axis=0, dtype=np.float64).to_delayed().ravel()[0]


def _as_rows_array(x: Any, row_chunk: int) -> da.Array:
    """A dask array chunked by rows only (features whole), from numpy or dask input."""
    if is_dask_array(x):
        return x.rechunk({0: x.chunks[0] if row_chunk is None else row_chunk, **dict.fromkeys(range(1, x.ndim), -1)})
    return da.from_array(np.asarray(x), chunks={0: row_chunk, **dict.fromkeys(range(1, np.ndim(x)), -1)})


@lazy_method
def knn_shapley(
    data: Dataset,
    model: Any,
    *,
    test_chunk_size: int | None = None,
    train_chunk_size: int | None = None,
    max_block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> xr.Dataset:
    """Exact Shapley values of the K-nearest-neighbour utility (Jia et al. 2019), as a lazy graph.

    The utility of a subset ``S`` of training points is the mean over test
    points of the share of their ``K`` nearest neighbours in ``S`` that carry
    the test point's label (divided by ``K`` also when ``|S| < K``; this is
    ``predict_proba`` of the true class for ``|S| >= K``). Its Shapley values
    have a closed form: one distance row and one sort per test point, no
    model fits, so millions of training points are feasible.

    Parameters
    ----------
    data : Dataset
        Training and test points (numpy or dask arrays, 2-d features,
        1-d labels). Players are the training points (a ``GroupedDataset`` is
        refused: the closed form is per point).
    model : sklearn.neighbors.KNeighborsClassifier or KNeighborsRegressor
        Unfitted or fitted; its ``n_neighbors`` and ``metric`` (with ``p`` and
        ``metric_params``) define the utility. ``weights`` must be
        ``"uniform"``. For a regressor (numeric 1-d targets) the utility is
        the mean over test points of the negative squared error of the KNN
        prediction ``(1/K) sum of the K nearest targets in S`` (also divided
        by ``K`` when ``|S| < K``; module docstring), exact as well.
    test_chunk_size : int, optional
        Test points per graph task. Default: as many as fit in
        ``max_block_bytes`` of distance rows, and at most ``n_test / 16`` so a
        cluster has tasks to share.
    train_chunk_size : int, optional
        Training rows per chunk of the training features (graph keys shipped
        to workers once). Default: about 64 MiB per chunk; dask inputs keep
        their row chunks.
    max_block_bytes : int
        Memory budget of one task's distance rows (default 256 MiB).

    Returns
    -------
    xarray.Dataset
        ``value`` (lazy), ``stderr`` (0: exact for this test set) and
        ``counts`` (the number of test points) over dim ``sample``. The
        attrs say so: ``estimate`` is ``"exact"`` (such results are never
        pooled by :func:`~dvl_dask.results.merge_results`) and
        ``stderr_note`` states that 0 means no sampling error for this test
        set, not a spread over test sets.

    Raises
    ------
    InvalidModelError
        If ``model`` is not a ``KNeighborsClassifier`` or ``KNeighborsRegressor`` with uniform weights.
    InvalidDataError
        If the features are not 2-d or the labels not 1-d, or ``data`` is grouped, or a
        ``KNeighborsClassifier`` is given continuous (float, not whole) numpy targets.

    Notes
    -----
    Distances are computed in float64 whatever the features' dtype. The
    Euclidean metric uses one matrix product per training chunk,
    ``||b - c||^2 - 2 (a - c).(b - c)``, around the training mean ``c``
    (computed once, in float64): this ranks the training points ``b`` like
    ``||a - b||^2`` for a test point ``a`` while every term stays at the scale
    of the data's spread, so features with a large offset (float32 around
    1e3, float64 timestamps around 1e8) find the same neighbours as exact
    float64 distances. Other metrics go to
    ``sklearn.metrics.pairwise_distances`` with float64 rows. Points at
    exactly equal distance from a test point are ranked in an unspecified
    order, as in scikit-learn.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.neighbors import KNeighborsClassifier
    >>> from dvl_dask import Dataset
    >>> x = np.array([[0.0], [1.0], [5.0]]); y = np.array([0, 1, 1])
    >>> data = Dataset(x, y, np.array([[0.2]]), np.array([0]))
    >>> knn_shapley(data, KNeighborsClassifier(n_neighbors=1)).value.compute().values.tolist()
    [1.0, 0.0, 0.0]
    """
    owner = "knn_shapley"
    if not isinstance(data, Dataset):
        raise InvalidParameterError(
            f"The 'data' argument of {owner} must be a dvl_dask.Dataset. Got {type(data).__name__}."
        )
    if isinstance(data, GroupedDataset):
        raise InvalidDataError(
            f"{owner} values single training points; the closed form does not extend to a GroupedDataset. "
            "Use a Monte Carlo method on a Utility over the grouped data."
        )
    k, metric, metric_params = _knn_parameters(model, owner)
    regression = _is_regressor(model)
    for name in ("x_train", "x_test"):
        if getattr(data, name).ndim != 2:
            raise InvalidDataError(
                f"{owner} needs 2-d features (samples x features), like KNeighborsClassifier. "
                f"{name} has shape {tuple(getattr(data, name).shape)}."
            )
    for name in ("y_train", "y_test"):
        if getattr(data, name).ndim != 1:
            raise InvalidDataError(
                f"{owner} needs 1-d labels (one class per sample). {name} has shape {tuple(getattr(data, name).shape)}."
            )
    if not regression:  # a continuous target would be read as one class per distinct value
        _check_classifier_targets(model, data.y_train, owner)
    if regression and not np.issubdtype(np.dtype(data.y_train.dtype), np.number):
        raise InvalidDataError(
            f"{owner} with a KNeighborsRegressor needs numeric targets. y_train has dtype {data.y_train.dtype}."
        )
    _check_metric(metric, metric_params, int(data.x_train.shape[1]), owner)
    max_block_bytes = check_positive_int(max_block_bytes, "max_block_bytes", owner)
    n_train, n_features = (int(s) for s in data.x_train.shape)
    n_test = int(data.x_test.shape[0])
    itemsize = max(np.dtype(data.x_train.dtype).itemsize, 4)
    if test_chunk_size is None:
        fits = max(1, max_block_bytes // (np.dtype(np.float64).itemsize * n_train))  # float64 distance rows
        test_chunk_size = max(1, min(fits, math.ceil(n_test / MIN_TEST_CHUNKS)))
    test_chunk_size = check_positive_int(test_chunk_size, "test_chunk_size", owner)
    if train_chunk_size is None and not is_dask_array(data.x_train):
        train_chunk_size = max(1, DEFAULT_TRAIN_CHUNK_BYTES // (itemsize * max(n_features, 1)))
    if train_chunk_size is not None:
        train_chunk_size = check_positive_int(train_chunk_size, "train_chunk_size", owner)

    x_train = _as_rows_array(data.x_train, train_chunk_size)
    x_test = _as_rows_array(data.x_test, test_chunk_size)
    y_test = _as_rows_array(data.y_test, test_chunk_size)
    name = current_call().layer("knn-shapley")
    # The labels (targets) of the training points travel as one key; every task needs all of them.
    encode = _float_targets if regression else encode_labels
    labels = dask.delayed(encode, pure=True)(data.y_train, dask_key_name=current_call().layer("knn-labels"))
    train_chunks = list(x_train.to_delayed().ravel())
    centre = None
    if metric in _EUCLIDEAN:
        # Centred float64 chunks and their norms are keys of their own: prepared once, not per task.
        centre = _training_mean(x_train)
        prepare = dask.delayed(centred_train_chunk, pure=True)
        train_chunks = [prepare(chunk, centre) for chunk in train_chunks]
    chunk_fn = dask.delayed(knn_regression_test_chunk if regression else knn_shapley_test_chunk, pure=True)
    blocks = [
        chunk_fn(xt, yt, labels, k, metric, metric_params, centre, *train_chunks, dask_key_name=f"{name}-{i}")
        for i, (xt, yt) in enumerate(zip(x_test.to_delayed().ravel(), y_test.to_delayed().ravel(), strict=True))
    ]
    values = stack_blocks(blocks, n_train) / n_test
    return valuation_dataset(
        values,
        np.zeros(n_train),
        np.full(n_train, n_test, dtype=np.int64),
        data_names=data.data_names,
        method="knn_shapley",
        parameters={"n_neighbors": k, "metric": str(metric), "metric_params": metric_params,
                    "utility": "negative squared error" if regression else "share of matching labels"},
        utility_token=layer_name("knn-utility", data.fingerprint, k, metric, sorted(metric_params.items()),
                                 "regression" if regression else "classification"),
        n_evaluations=0,
        estimate=EXACT,
        extra_attrs={"stderr_note": KNN_STDERR_NOTE},
        provenance={
            "class": "knn_shapley", "model": type(model).__name__, "n_neighbors": k, "metric": str(metric),
            "data": data.provenance(),
            "versions": library_versions(),
        },
    )
