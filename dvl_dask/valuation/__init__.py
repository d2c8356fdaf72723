"""Data valuation methods: functions that return lazy ``xr.Dataset`` results.

Fixed-budget methods build graphs; :func:`run_until_converged` is the one
eager loop that runs blocks until a stopping criterion holds, with
checkpoints to zarr.
"""

from .._pydvl_names import pydvl_name_hook as _pydvl_name_hook
from ..results import ValuationResult, ValueItem
from ._classwise import classwise_shapley
from ._coefficients import banzhaf_coefficient, beta_coefficient, shapley_coefficient
from ._data_oob import data_oob
from ._exact import exact_shapley, loo, shapley_weights
from ._group_testing import group_testing_sample_size, group_testing_shapley
from ._knn import knn_shapley
from ._least_core import LeastCoreError, exact_least_core, montecarlo_least_core
from ._loop import checkpoint_history, load_checkpoint, run_until_converged
from ._montecarlo import (
    banzhaf,
    beta_shapley,
    delta_shapley,
    msr_banzhaf,
    owen_shapley,
    permutation_shapley,
    semivalue,
)
from ._samplers import (
    AntitheticSampler,
    BetaSampler,
    ConstantSampleSize,
    DeltaShapleySampleSize,
    HarmonicSampleSize,
    OwenSampler,
    PermutationSampler,
    PowerLawSampleSize,
    SampleSizeStrategy,
    StratifiedPermutationSampler,
    StratifiedSampler,
    UniformSampler,
    VRDSSampler,
)
from ._stopping import (
    AbsoluteStandardError,
    ConvergenceState,
    HistoryDeviation,
    MaxChecks,
    MaxEvaluations,
    MaxTime,
    MaxUpdates,
    MinUpdates,
    RankCorrelation,
    RelativeStandardError,
    StoppingCriterion,
)
from ._truncation import DeviationTruncation, FixedTruncation, NoTruncation, RelativeTruncation
from ._two_d import FeatureSubsetUtility, exact_two_d_shapley, two_d_shapley

__all__ = [
    "ValuationResult",
    "ValueItem",
    "AbsoluteStandardError",
    "ConvergenceState",
    "HistoryDeviation",
    "MaxChecks",
    "MaxEvaluations",
    "MaxTime",
    "MaxUpdates",
    "MinUpdates",
    "RankCorrelation",
    "RelativeStandardError",
    "StoppingCriterion",
    "checkpoint_history",
    "load_checkpoint",
    "run_until_converged",
    "AntitheticSampler",
    "BetaSampler",
    "ConstantSampleSize",
    "DeltaShapleySampleSize",
    "DeviationTruncation",
    "FeatureSubsetUtility",
    "FixedTruncation",
    "HarmonicSampleSize",
    "NoTruncation",
    "OwenSampler",
    "PermutationSampler",
    "PowerLawSampleSize",
    "RelativeTruncation",
    "SampleSizeStrategy",
    "StratifiedPermutationSampler",
    "StratifiedSampler",
    "UniformSampler",
    "VRDSSampler",
    "banzhaf",
    "banzhaf_coefficient",
    "beta_coefficient",
    "beta_shapley",
    "data_oob",
    "delta_shapley",
    "exact_least_core",
    "classwise_shapley",
    "exact_shapley",
    "exact_two_d_shapley",
    "group_testing_sample_size",
    "group_testing_shapley",
    "LeastCoreError",
    "montecarlo_least_core",
    "knn_shapley",
    "loo",
    "msr_banzhaf",
    "owen_shapley",
    "permutation_shapley",
    "semivalue",
    "shapley_coefficient",
    "shapley_weights",
    "two_d_shapley",
]

# pyDVL names (ModelUtility, ShapleyValuation, ...) raise an ImportError pointing to the migration guide.
__getattr__ = _pydvl_name_hook(__name__)
