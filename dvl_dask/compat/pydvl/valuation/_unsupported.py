"""The one table of pyDVL names the compat layer cannot run yet, and what to use in dvl_dask instead.

Keys name a pyDVL feature; values say the dvl_dask way (native API or the
issue that adds it). ``PENDING_METHODS`` lists the methods being added to
``dvl_dask.valuation`` in parallel (issue 28, second half): once merged, wire
them in ``_methods.py`` / ``_samplers.py`` and delete their rows here.
"""

from __future__ import annotations

from ....errors import CompatNotSupportedError

__all__ = ["NOT_SUPPORTED", "PENDING_METHODS", "not_supported"]

#: Methods of pyDVL 0.10 that dvl_dask is gaining (issue 28): feature -> the dvl_dask way until then.
PENDING_METHODS: dict[str, str] = {
    "DeltaShapleyValuation": "Delta-Shapley is being added to dvl_dask.valuation (issue 28); until then use "
    "dvl_dask.valuation.semivalue(utility, coefficient, sampler=StratifiedSampler()) with a coefficient "
    "that is zero outside the size bounds",
    "VRDSSampler": "the VRDS sampler is being added to dvl_dask.valuation (issue 28); until then use "
    "dvl_dask.valuation.StratifiedSampler(allocation='neyman')",
    "StratifiedPermutationSampler": "stratified permutation sampling is being added to dvl_dask.valuation "
    "(issue 28); until then use dvl_dask.valuation.permutation_shapley or StratifiedSampler()",
    "DeviationTruncation": "DeviationTruncation is being added to dvl_dask.valuation (issue 28); until then use "
    "dvl_dask.valuation.RelativeTruncation(rtol) or FixedTruncation(fraction)",
    "KNNShapleyValuation for regression": "KNN-Shapley for regression is being added to dvl_dask.valuation "
    "(issue 28); dvl_dask.valuation.knn_shapley takes a KNeighborsClassifier",
    "ClasswiseShapleyValuation(normalize_values=True)": "class-wise value normalisation is being added to "
    "dvl_dask.valuation (issue 28); pass normalize_values=False, or use dvl_dask.valuation.classwise_shapley "
    "and normalise the values yourself",
}

#: Other pyDVL features without a dvl_dask counterpart: feature -> the dvl_dask way.
NOT_SUPPORTED: dict[str, str] = {
    "exact Banzhaf values (a deterministic sampler)": "dvl_dask has no exact Banzhaf method; use "
    "dvl_dask.valuation.banzhaf(utility, n_samples=..., seed=...) or msr_banzhaf",
    "NoStopping with a random sampler": "a random sampler never runs out of samples: give a stopping "
    "criterion such as MaxUpdates(n) (dvl_dask.valuation.run_until_converged(..., stop=MaxUpdates(n)))",
    "ModelUtility(clone_before_fit=False)": "dvl_dask.Utility always clones its model (scikit-learn's "
    "convention), so results never depend on a model object changed afterwards",
    "ClasswiseSupervisedScorer with other than accuracy, identity and exp": "dvl_dask.valuation.classwise_shapley "
    "scores a_in * exp(a_out) with accuracy (pyDVL's defaults)",
    "this sampler with this valuation": "see docs/pydvl-names.md for the samplers each valuation accepts; "
    "the dvl_dask methods take sampler= or antithetic=",
    "StratifiedSampler with this sample-size strategy": "dvl_dask.valuation.StratifiedSampler(allocation="
    "'equal' | 'neyman') (equal allocation over sizes is pyDVL's ConstantSampleSize with random or "
    "round-robin size iteration)",
    "LeastCoreValuation with this sampler": "dvl_dask.valuation.exact_least_core or montecarlo_least_core "
    "(coalitions drawn uniformly)",
    "RelativeTruncation(burn_in_fraction > 0)": "dvl_dask.valuation.RelativeTruncation(rtol) checks from the "
    "first player (pass burn_in_fraction=0.0)",
    "RankCorrelation(fraction != 1)": "dvl_dask.valuation.RankCorrelation(rtol, burn_in=...) ranks all players",
    "ParallelConfig(backend='ray')": "dvl_dask runs on any Dask scheduler: for a cluster, create a "
    "distributed.Client(address) (it becomes the default scheduler)",
    "fit(continue_from=...)": "run again with another seed and add the results (result_a + result_b pools "
    "independent runs), or use dvl_dask.valuation.run_until_converged(..., checkpoint=url) to resume a run",
    "this compute_shapley_values mode": "mode='permutation_montecarlo' (dvl_dask.valuation.permutation_shapley)",
    "skip_converged=True": "dvl_dask's criteria stop the whole run; a per-player RelativeStandardError reports "
    "which players converged in the result's 'converged' variable",
}


def not_supported(feature: str) -> CompatNotSupportedError:
    """The error to raise for ``feature`` (a key of :data:`PENDING_METHODS` or :data:`NOT_SUPPORTED`)."""
    way = PENDING_METHODS.get(feature) or NOT_SUPPORTED[feature]
    return CompatNotSupportedError(f"dvl_dask.compat.pydvl does not support {feature} yet: {way}.")
