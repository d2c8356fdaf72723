"""pyDVL 0.10's ``pydvl.valuation`` names on dvl_dask.

A pyDVL 0.10 valuation script runs after changing ``from pydvl.valuation import ...``
to ``from dvl_dask.compat.pydvl.valuation import ...``::

    from dvl_dask.compat.pydvl.valuation import (
        Dataset, ModelUtility, SupervisedScorer, PermutationSampler, RelativeTruncation,
        ShapleyValuation, MaxUpdates,
    )

    train, test = Dataset.from_arrays(x, y, train_size=0.6, random_state=16)
    utility = ModelUtility(model, SupervisedScorer("accuracy", test, default=0.0))
    valuation = ShapleyValuation(utility, PermutationSampler(RelativeTruncation(0.05), seed=16), MaxUpdates(50))
    valuation.fit(train)
    result = valuation.values()

Each ``fit`` runs the dvl_dask method the class stands for (see
``docs/pydvl-names.md``) on the active Dask scheduler or
``distributed.Client``; ``joblib.parallel_config(n_jobs=k)`` becomes dask's
threads scheduler with ``k`` workers when neither is set. The dvl_dask
result behind a :class:`ValuationResult` is ``result.to_dataset()``.
"""

from ._dataset import Dataset, GroupedDataset, RawData
from ._methods import (
    BanzhafValuation,
    BetaShapleyValuation,
    ClasswiseSampler,
    ClasswiseShapleyValuation,
    DataOOBValuation,
    DeltaShapleyValuation,
    ExactLeastCoreValuation,
    GroupTestingShapleyValuation,
    KNNShapleyValuation,
    LeastCoreValuation,
    LOOValuation,
    MonteCarloLeastCoreValuation,
    MSRBanzhafValuation,
    ShapleyValuation,
    StratifiedShapleyValuation,
    TMCShapleyValuation,
    Valuation,
)
from ._result import Status, ValuationResult
from ._samplers import (
    AntitheticOwenSampler,
    AntitheticPermutationSampler,
    AntitheticSampler,
    ConstantSampleSize,
    DeltaShapleyNCSGDConfig,
    DeltaShapleyNCSGDSampleSize,
    DeterministicPermutationSampler,
    DeterministicUniformSampler,
    DeviationTruncation,
    FiniteSequentialSizeIteration,
    FixedTruncation,
    GridOwenStrategy,
    HarmonicSampleSize,
    IndexSampler,
    LinearSampleSize,
    LOOSampler,
    MSRSampler,
    NoIndexIteration,
    NoTruncation,
    OwenSampler,
    PermutationSampler,
    PowerLawSampleSize,
    RandomIndexIteration,
    RandomSizeIteration,
    RelativeTruncation,
    RoundRobinSizeIteration,
    Sample,
    SampleSizeStrategy,
    SequentialIndexIteration,
    StratifiedPermutationSampler,
    StratifiedSampler,
    TruncationPolicy,
    UniformOwenStrategy,
    UniformSampler,
    VRDSSampler,
)
from ._stopping import (
    AbsoluteStandardError,
    HistoryDeviation,
    MaxChecks,
    MaxSamples,
    MaxTime,
    MaxUpdates,
    MinUpdates,
    NoStopping,
    RankCorrelation,
    StoppingCriterion,
)
from ._unsupported import NOT_SUPPORTED
from ._utility import (
    ClasswiseModelUtility,
    ClasswiseSupervisedScorer,
    DataUtilityLearning,
    ModelUtility,
    SupervisedScorer,
    compose_score,
)

__all__ = [
    "NOT_SUPPORTED",
    "AbsoluteStandardError",
    "AntitheticOwenSampler",
    "AntitheticPermutationSampler",
    "AntitheticSampler",
    "BanzhafValuation",
    "BetaShapleyValuation",
    "ClasswiseModelUtility",
    "ClasswiseSampler",
    "ClasswiseShapleyValuation",
    "ClasswiseSupervisedScorer",
    "ConstantSampleSize",
    "DataOOBValuation",
    "DataUtilityLearning",
    "Dataset",
    "DeltaShapleyNCSGDConfig",
    "DeltaShapleyNCSGDSampleSize",
    "DeltaShapleyValuation",
    "DeterministicPermutationSampler",
    "DeterministicUniformSampler",
    "DeviationTruncation",
    "ExactLeastCoreValuation",
    "FiniteSequentialSizeIteration",
    "FixedTruncation",
    "GridOwenStrategy",
    "GroupTestingShapleyValuation",
    "GroupedDataset",
    "HarmonicSampleSize",
    "HistoryDeviation",
    "IndexSampler",
    "KNNShapleyValuation",
    "LOOSampler",
    "LOOValuation",
    "LeastCoreValuation",
    "LinearSampleSize",
    "MSRBanzhafValuation",
    "MSRSampler",
    "MaxChecks",
    "MaxSamples",
    "MaxTime",
    "MaxUpdates",
    "MinUpdates",
    "ModelUtility",
    "MonteCarloLeastCoreValuation",
    "NoIndexIteration",
    "NoStopping",
    "NoTruncation",
    "OwenSampler",
    "PermutationSampler",
    "PowerLawSampleSize",
    "RandomIndexIteration",
    "RandomSizeIteration",
    "RankCorrelation",
    "RawData",
    "RelativeTruncation",
    "RoundRobinSizeIteration",
    "Sample",
    "SampleSizeStrategy",
    "SequentialIndexIteration",
    "ShapleyValuation",
    "Status",
    "StoppingCriterion",
    "StratifiedPermutationSampler",
    "StratifiedSampler",
    "StratifiedShapleyValuation",
    "SupervisedScorer",
    "TMCShapleyValuation",
    "TruncationPolicy",
    "UniformOwenStrategy",
    "UniformSampler",
    "VRDSSampler",
    "Valuation",
    "ValuationResult",
    "compose_score",
]
