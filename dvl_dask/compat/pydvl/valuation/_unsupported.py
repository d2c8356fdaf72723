"""The one table of pyDVL names the compat layer cannot run, and what to use in dvl_dask instead.

Keys name a pyDVL feature; values say the dvl_dask way.
"""

from __future__ import annotations

from ....errors import CompatNotSupportedError

__all__ = ["NOT_SUPPORTED", "not_supported"]

#: pyDVL features without a dvl_dask counterpart: feature -> the dvl_dask way.
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
    "'equal' | 'neyman' | HarmonicSampleSize() | PowerLawSampleSize(exponent)) (pyDVL's ConstantSampleSize, "
    "HarmonicSampleSize and PowerLawSampleSize are translated; a strategy of your own subclasses "
    "dvl_dask.valuation.SampleSizeStrategy)",
    "a sample-size strategy with lower_bound or upper_bound": "coalition sizes within bounds are Delta-Shapley "
    "(outside it the bounds are not applied): DeltaShapleyValuation(utility, StratifiedSampler("
    "ConstantSampleSize(lower_bound=..., upper_bound=...)), is_done) or dvl_dask.valuation.delta_shapley("
    "utility, lower_bound=..., upper_bound=..., sample_sizes=HarmonicSampleSize() | PowerLawSampleSize(-2) | "
    "DeltaShapleySampleSize(...))",
    "StratifiedPermutationSampler with this sample-size strategy": "dvl_dask.valuation.permutation_shapley("
    "sampler='stratified') stratifies the prefix sizes of uniform permutations (unbiased; pass "
    "ConstantSampleSize()); for another split over sizes use StratifiedSampler(sample_sizes=...) "
    "(dvl_dask.valuation.StratifiedSampler(allocation=HarmonicSampleSize()))",
    "DeltaShapleyNCSGDConfig(version='code')": "dvl_dask.valuation.DeltaShapleySampleSize implements the "
    "bound of Theorem 7 of Watson et al. (version='theorem7'); PowerLawSampleSize(-2) has the same decay with "
    "a budget of your choosing",
    "DeltaShapleyValuation with a sampler other than StratifiedSampler": "dvl_dask.valuation.delta_shapley "
    "samples coalitions stratified by size (pyDVL's StratifiedSampler); pass StratifiedSampler(sample_sizes="
    "ConstantSampleSize(lower_bound=..., upper_bound=...))",
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
    """The error to raise for ``feature`` (a key of :data:`NOT_SUPPORTED`)."""
    return CompatNotSupportedError(f"dvl_dask.compat.pydvl does not support {feature}: {NOT_SUPPORTED[feature]}.")
