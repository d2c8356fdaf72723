"""Class-wise Shapley (Schoch, Xu & Ji 2022, "CS-Shapley"), by Monte Carlo.

A training point ``i`` of class ``c`` is valued by how it helps the model on
test points of its own class *without* hurting the others. With ``D_c`` the
training points of class ``c`` and ``D_-c`` the rest, the utility of an
in-class set ``S ⊆ D_c`` given an out-of-class context ``C ⊆ D_-c`` is

    u(S | C) = a_in(S ∪ C) * exp(a_out(S ∪ C))

where the model is fitted on ``S ∪ C`` and ``a_in`` (``a_out``) is the number
of test points of class ``c`` (of other classes) it classifies correctly,
divided by the number of test points. The value of ``i`` is its Shapley value
in the game ``S -> u(S | C)`` over the players ``D_c``, averaged over contexts
``C`` drawn uniformly from the subsets of ``D_-c``.

Estimator: sample ``j`` takes class ``classes[j mod n_classes]`` (classes
take turns, so each gets an equal share), draws a context ``C`` (each
out-of-class point with probability 1/2) and a random permutation of
``D_c``, and records every in-class point's marginal contribution along it.
Each sample is an unbiased draw of the value of every point of its class; the
mean and its standard error are reported per point. Blocks of samples are
seeded graph tasks, reduced like the other Monte Carlo methods.

Conventions (also used by pyDVL): a training set of one class gives the
constant predictor of that class; the empty set has utility 0. Contexts are
uniform over subsets.

Normalisation (``normalize_values=True``, pyDVL's
``ClasswiseShapleyValuation(normalize_values=True)``): the values of each
class ``c`` are scaled by ``a_in(D) / sum_{i in D_c} value_i``, so that they
sum to the in-class utility ``a_in(D)`` of the model fitted on the whole
training set (test points of class ``c`` it classifies correctly, over all
test points). A class whose values sum to 0 is left unscaled, as in pyDVL.
The factor is estimated (its denominator is a sum of estimates): the stderr
of a scaled value is the first-order bound
``|f| (stderr_i + |value_i| sum_{j in D_c} stderr_j / |sum_{j in D_c} value_j|)``,
which holds whatever the correlation between the values of a class.
"""

from __future__ import annotations

import math
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .._provenance import describe_utility
from ..errors import InvalidDataError, InvalidModelError, InvalidParameterError
from ..keys import current_call, lazy_method, object_token
from ..results import valuation_dataset
from ..results._schema import SAMPLE_MEAN
from ..threads import limits_blas_threads
from ..validation import SeedLike, as_seed_sequence, check_positive_int, seed_entropy
from ._graph import block_ranges, utility_node
from ._samplers import child_seed
from ._stats import POWER_ROWS, add_powers, mean_and_stderr, power_block, reduce_power_blocks

__all__ = ["classwise_shapley", "classwise_utility"]

#: Samples (one permutation of a class each) per task when not given.
DEFAULT_SAMPLES_PER_BLOCK = 8


def classwise_utility(model: Any, data: Any, rows: np.ndarray, label: Any) -> float:
    """``a_in * exp(a_out)`` of ``model`` fitted on training ``rows``, for the class ``label``.

    ``data`` holds numpy arrays. One class in ``rows`` gives the constant
    predictor of that class; no rows give 0.
    """
    if rows.size == 0:
        return 0.0
    y_rows = data.y_train[rows]
    present = np.unique(y_rows)
    if present.size == 1:
        predictions = np.full(len(data.y_test), present[0])
    else:
        from sklearn.base import clone

        fitted = clone(model).fit(data.x_train[rows], y_rows)
        predictions = fitted.predict(data.x_test)
    correct = predictions == data.y_test
    in_class = data.y_test == label
    n_test = len(data.y_test)
    a_in = float(np.sum(correct & in_class)) / n_test
    a_out = float(np.sum(correct & ~in_class)) / n_test
    return a_in * math.exp(a_out)


@limits_blas_threads
def classwise_block(
    utility: Any, seed: np.random.SeedSequence, first_sample: int, n_samples: int, classes: np.ndarray
) -> np.ndarray:
    """``(POWER_ROWS, n)``: per-point power sums of marginal contributions around a shift (``add_powers``)."""
    data = utility.data.materialize()
    y = np.asarray(data.y_train)
    n = len(y)
    rng = np.random.default_rng(seed)
    out = power_block(n)
    model = utility.model  # an unfitted copy (a new one on every access): taken once per block
    score = _block_scores(utility, model, data)
    for j in range(first_sample, first_sample + n_samples):
        label = classes[j % len(classes)]
        members = np.flatnonzero(y == label)
        others = np.flatnonzero(y != label)
        context = others[rng.random(others.size) < 0.5]
        order = rng.permutation(members)
        previous = score(context, label)
        for k in range(order.size):
            current = score(np.concatenate([context, order[: k + 1]]), label)
            marginal = current - previous
            add_powers(out, order[k], marginal)
            previous = current
    return out


class _ClasswiseScores:
    """``classwise_utility(rows, label)`` of one utility's model and data, memoised in the utility's cache.

    The key digests this code (and ``classwise_utility``'s), the owner's token (the
    utility's model, data and scorer) and the arguments: the rows *in their order*
    (the fit sees them in that order, and e.g. nearest-neighbour ties depend on it,
    so values with and without a cache are the same) and the label.
    """

    def __init__(self, utility: Any, model: Any, data: Any) -> None:
        from ..cache import memoize

        self.token = object_token("classwise-utility", utility.token)
        self._utility, self._model, self._data = utility, model, data
        options = dict(getattr(utility, "_cache_options", None) or {})
        options.pop("subset_args", None)
        self._memoized = memoize(self.fit_and_score, utility.cache, **options)

    def fit_and_score(self, rows: np.ndarray, label: Any) -> float:
        return classwise_utility(self._model, self._data, rows, label)

    def __call__(self, rows: np.ndarray, label: Any) -> float:
        return float(self._memoized(np.asarray(rows, dtype=np.int64), label))

    def provenance(self) -> dict[str, Any]:
        """What the token was made of (recorded beside the cache entries)."""
        return {"class": "classwise-utility", "utility": describe_utility(self._utility)}

    def __dask_tokenize__(self) -> str:
        return self.token


def _block_scores(utility: Any, model: Any, data: Any) -> Any:
    """``score(rows, label)`` for a block: through the utility's cache when it has one."""
    if getattr(utility, "cache", None) is None:
        return lambda rows, label: classwise_utility(model, data, rows, label)
    return _ClasswiseScores(utility, model, data)


def in_class_utilities(utility: Any, classes: np.ndarray) -> np.ndarray:
    """``a_in(D)`` per class: the model fitted on all training points, correct test points of the class / n_test."""
    data = utility.data.materialize()
    rows = np.arange(len(np.asarray(data.y_train)))
    model = utility.model  # an unfitted copy
    return np.array([_in_class_accuracy(model, data, rows, label) for label in classes], dtype=np.float64)


def _in_class_accuracy(model: Any, data: Any, rows: np.ndarray, label: Any) -> float:
    y_rows = data.y_train[rows]
    present = np.unique(y_rows)
    if present.size == 1:
        predictions = np.full(len(data.y_test), present[0])
    else:
        from sklearn.base import clone

        predictions = clone(model).fit(data.x_train[rows], y_rows).predict(data.x_test)
    return float(np.sum((predictions == data.y_test) & (data.y_test == label))) / len(data.y_test)


def normalize_classwise(final: np.ndarray, in_class: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Scale each class's values to sum to its in-class utility; stderr by a bound that covers the factor's error.

    ``final`` is ``(value, stderr, counts)`` per point. For class ``c`` with
    values summing to ``s != 0`` the factor is ``f = a_in / s``; a scaled
    value's stderr is ``|f| (stderr_i + |value_i| sum_c stderr_j / |s|)`` (the
    linearised ratio with the standard deviation of the sum bounded by the sum
    of standard deviations). Classes summing to 0 (or not sampled) are left as they are.
    """
    out = np.array(final, dtype=np.float64, copy=True)
    value, stderr = final[0], final[1]
    for k, label in enumerate(classes):
        members = labels == label
        total = float(np.sum(value[members]))
        if not np.isfinite(total) or total == 0.0:
            continue
        factor = in_class[k] / total
        spread = float(np.sum(stderr[members]))
        out[1, members] = abs(factor) * (stderr[members] + np.abs(value[members]) * spread / abs(total))
        out[0, members] = factor * value[members]
    return out


#: Width of one marginal contribution: u(S | C) = a_in exp(a_out) lies in [0, 1] (a_in + a_out <= 1).
MARGINAL_RANGE = 2.0


def _finalize(totals: np.ndarray) -> np.ndarray:
    mean, stderr = mean_and_stderr(totals, MARGINAL_RANGE)
    return np.stack([mean, stderr, totals[4]])


def _refuse_regression(model: Any, y_train: Any, owner: str) -> None:
    """Class-wise Shapley splits players by class: a regressor or continuous targets have none."""
    from sklearn.base import is_regressor
    from sklearn.utils.multiclass import type_of_target

    try:
        regressor = bool(is_regressor(model))
    except Exception:
        regressor = False
    try:
        continuous = type_of_target(np.asarray(y_train)).startswith("continuous")
    except ValueError:
        continuous = False
    if regressor or continuous:
        what = f"the model {type(model).__name__} is a regressor" if regressor else "y_train is continuous"
        raise InvalidParameterError(
            f"The 'utility' argument of {owner} must be a classification utility: class-wise Shapley values "
            f"points within and across their classes, but {what}. To fix, use a classifier with class labels, or "
            "a method for any utility (permutation_shapley, banzhaf, data_oob)."
        )


@lazy_method
def classwise_shapley(
    utility: Any,
    n_samples: int,
    *,
    seed: SeedLike = None,
    samples_per_block: int | None = None,
    normalize_values: bool = False,
) -> xr.Dataset:
    """Class-wise Shapley values (Schoch et al. 2022) as a lazy graph of sampled permutations.

    Parameters
    ----------
    utility : Utility
        A classifier (``predict``) and data with 1-d class labels. Its scorer
        is not used: class-wise Shapley scores ``a_in * exp(a_out)``. With a
        cache (``Utility(..., cache=backend)``) every ``(rows, label)``
        evaluation is memoised there, keyed by the rows in their order and the
        label, so a run repeated with the same seed and layout fits nothing.
    n_samples : int
        Permutations; classes take turns, so each class gets
        ``n_samples / n_classes`` of them and each of its points one marginal
        contribution per permutation. Cost: ``(|D_c| + 1)`` fits per sample.
    seed : int, SeedSequence or None
        Same seed, same values on any scheduler.
    samples_per_block : int, optional
        Permutations per graph task (default 8).
    normalize_values : bool, default False
        Scale the values of each class so that they sum to its in-class
        utility ``a_in(D)`` (the model fitted on all training points; one
        more fit per class), as pyDVL's ``normalize_values=True``. The stderr
        is scaled with a bound that includes the error of the estimated
        class sum (module docstring); ``attrs["normalized"]`` says so.

    Returns
    -------
    xarray.Dataset
        ``value``, ``stderr``, ``counts`` over ``sample`` plus the coordinate
        ``label`` (each point's class), lazy. A class that got no sample
        (``n_samples < n_classes``) has NaN values with ``counts == 0``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from dvl_dask import Dataset, Utility
    >>> x = np.array([[0.0], [1.0], [3.0], [4.0]]); y = np.array([0, 0, 1, 1])
    >>> u = Utility(LogisticRegression(), Dataset(x, y, x, y), "accuracy")
    >>> ds = classwise_shapley(u, 20, seed=0).compute()
    >>> ds.label.values.tolist(), bool((ds.value > 0).all())
    ([0, 0, 1, 1], True)
    """
    owner = "classwise_shapley"
    model = getattr(utility, "model", None)
    data = getattr(utility, "data", None)
    if model is None or data is None:
        raise InvalidParameterError(
            f"The 'utility' argument of {owner} must be a dvl_dask.Utility (a classifier and its data). "
            f"Got {type(utility).__name__}."
        )
    if not callable(getattr(model, "predict", None)) or not hasattr(model, "get_params"):
        raise InvalidModelError(
            f"{owner} needs a scikit-learn classifier (fit, predict, get_params). Got {type(model).__name__}."
        )
    _refuse_regression(model, data.y_train, owner)
    if data.n_players != data.n_samples:
        raise InvalidDataError(f"{owner} values single training points; a GroupedDataset is not supported.")
    if getattr(data.y_train, "ndim", 1) != 1:
        raise InvalidDataError(f"{owner} needs 1-d class labels. y_train has shape {tuple(data.y_train.shape)}.")
    n_samples = check_positive_int(n_samples, "n_samples", owner)
    per_block = check_positive_int(
        DEFAULT_SAMPLES_PER_BLOCK if samples_per_block is None else samples_per_block, "samples_per_block", owner
    )
    labels = np.asarray(data.materialize().y_train)
    classes = np.unique(labels)
    if classes.size < 2:
        raise InvalidDataError(f"{owner} needs at least two classes in y_train. Got {classes.tolist()}.")
    n = data.n_players
    seq = as_seed_sequence(seed, "seed", owner)
    seed_text = seed_entropy(seq)
    u = utility_node(utility)
    name = current_call().layer("classwise-block")
    block_fn = dask.delayed(classwise_block, pure=True)
    blocks = [
        block_fn(u, child_seed(seq, i), start, stop - start, classes, dask_key_name=f"{name}-{i}")
        for i, (start, stop) in enumerate(block_ranges(n_samples, per_block))
    ]
    parts = [da.from_delayed(b, shape=(POWER_ROWS, n), dtype=np.float64) for b in blocks]
    totals = reduce_power_blocks(parts)
    final = totals.map_blocks(_finalize, dtype=np.float64)
    if not isinstance(normalize_values, bool | np.bool_):
        raise InvalidParameterError(
            f"The 'normalize_values' parameter of {owner} must be True or False. Got {normalize_values!r}."
        )
    if normalize_values:
        in_class = dask.delayed(in_class_utilities, pure=True)(
            u, classes, dask_key_name=current_call().layer("classwise-in-class"))
        scaled = dask.delayed(normalize_classwise, pure=True)(
            final, in_class, labels, classes, dask_key_name=current_call().layer("classwise-normalize"))
        final = da.from_delayed(scaled, shape=(3, n), dtype=np.float64)
    sizes = {str(c): int(np.sum(labels == c)) for c in classes}
    ds = valuation_dataset(
        final[0],
        final[1],
        final[2].astype(np.int64),
        data_names=data.data_names,
        method="classwise_shapley",
        parameters={"n_samples": n_samples, "samples_per_block": per_block,
                    "normalize_values": bool(normalize_values)},
        seed=seed_text,
        estimate=SAMPLE_MEAN,
        utility_token=utility.token,
        provenance=describe_utility(utility),
        n_evaluations=sum(
            (n_samples // len(classes) + (1 if k < n_samples % len(classes) else 0)) * (sizes[str(c)] + 1)
            for k, c in enumerate(classes)
        ) + (len(classes) if normalize_values else 0),
        extra_attrs={"normalized": bool(normalize_values)},
    )
    return ds.assign_coords(label=("sample", labels))
