"""Effective sample size of a valuation result: how many plain Monte Carlo samples its stderr is worth."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ..errors import InvalidParameterError
from ._schema import SAMPLE_DIM, validate_valuation_dataset

__all__ = ["effective_sample_size"]


def _plain_variance(reference: Any, n: int) -> xr.DataArray | np.ndarray:
    if isinstance(reference, xr.Dataset):
        ref = validate_valuation_dataset(reference)
        if ref.sizes[SAMPLE_DIM] != n:
            raise InvalidParameterError(
                f"The 'reference' result of effective_sample_size must have {n} players like the result. "
                f"Got {ref.sizes[SAMPLE_DIM]}."
            )
        # one plain sample's variance: n_ref * stderr_ref^2 (the stderr of a mean of n_ref iid samples)
        return (ref["counts"].astype(np.float64) * ref["stderr"] ** 2).data
    try:
        arr = np.asarray(reference, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.array([np.nan])  # not numbers: refused below
    if arr.shape != (n,) or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise InvalidParameterError(
            f"The 'reference' of effective_sample_size must be a plain Monte Carlo result (xarray.Dataset) "
            f"or {n} finite non-negative per-player variances of one plain sample. Got shape {arr.shape}."
        )
    return arr


def effective_sample_size(result: xr.Dataset, reference: xr.Dataset | Any) -> xr.DataArray:
    """Per-player effective sample size ``ESS_i = sigma_i^2 / stderr_i^2`` of a Monte Carlo result.

    ``sigma_i^2`` is the variance of ONE plain Monte Carlo sample of player
    ``i``'s value: one marginal contribution ``u(S + i) - u(S)`` with ``S``
    drawn from the semivalue's own distribution (a uniform permutation's
    predecessors for Shapley, a uniform subset for Banzhaf), no pairing, no
    strata, no importance weights. ``ESS_i`` is then the number of such
    independent samples whose mean would have the reported standard error:
    it compares a variance-reduced estimator (antithetic pairs, stratified or
    Neyman-allocated sampling, MSR, importance sampling) with plain sampling
    in the currency of samples. ``ESS_i / counts_i`` above 1 means each
    reported sample is worth more than one plain sample; for plain sampling
    ``ESS_i = counts_i`` up to the variance floor of
    :func:`~dvl_dask.valuation._stats.guarded_stderr`. Divide by the
    evaluations one plain sample costs (``n`` per permutation, ``2`` per
    marginal) to compare at equal evaluations.

    Unlike ``attrs["effective_sample_size"]`` (the number of independent
    units behind the values, an antithetic pair counting once), this is a
    variance-based figure and needs to know ``sigma_i^2``:

    Parameters
    ----------
    result : xarray.Dataset
        A valuation result (``value``, ``stderr``, ``counts``), lazy or computed.
    reference : xarray.Dataset or array-like
        Either a plain Monte Carlo result of the same value on the same
        utility (``permutation_shapley`` for Shapley values, ``banzhaf`` with
        the uniform sampler for Banzhaf values), whose ``counts * stderr^2``
        estimates ``sigma_i^2``; or the per-player variances ``sigma_i^2``
        themselves (e.g. exact, from enumerating a small game).

    Returns
    -------
    xarray.DataArray
        ``ESS`` per player (``inf`` where ``stderr == 0``), named ``"ess"``;
        lazy if the inputs are.

    Raises
    ------
    InvalidParameterError
        If ``reference`` has another number of players or is not finite and non-negative.
    """
    ds = validate_valuation_dataset(result)
    sigma2 = _plain_variance(reference, ds.sizes[SAMPLE_DIM])
    stderr2 = ds["stderr"] ** 2
    ess = xr.where(stderr2 > 0, sigma2 / stderr2.where(stderr2 > 0, 1.0), np.inf)
    return ess.rename("ess").assign_attrs(
        description="plain Monte Carlo samples giving the reported stderr: sigma^2 / stderr^2"
    )
