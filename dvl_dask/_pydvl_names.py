"""pyDVL's class and function names that dvl_dask spells otherwise: an import of one points to the equivalent.

Modules that pyDVL users import from (``dvl_dask``, ``dvl_dask.valuation``,
``dvl_dask.utility``) define ``__getattr__ = pydvl_name_hook(__name__)``, so
``from dvl_dask import ModelUtility`` raises
:class:`~dvl_dask.errors.PyDVLNameError` (an ImportError) naming dvl_dask's
equivalent and the migration guide, instead of a bare "cannot import name".
Names dvl_dask shares with pyDVL (``Utility``, ``Dataset``, ``MaxUpdates``,
...) are ordinary attributes and never reach the hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import PyDVLNameError

__all__ = ["GUIDE", "PYDVL_NAMES", "pydvl_name_hook"]

GUIDE = "docs/migrating-from-pydvl.md"

_VALUE = "dvl_dask.valuation"
#: pyDVL name -> what to use in dvl_dask.
PYDVL_NAMES: dict[str, str] = {
    "ModelUtility": "dvl_dask.Utility(model, data, scorer) (one object: model, data and scorer)",
    "SupervisedScorer": "dvl_dask.Scorer(scoring) or a scikit-learn scorer name",
    "ClasswiseSupervisedScorer": f"{_VALUE}.classwise_shapley(utility, n_samples) (its scorer is built in)",
    "ClasswiseModelUtility": f"{_VALUE}.classwise_shapley(utility, n_samples)",
    "ShapleyValuation": f"{_VALUE}.exact_shapley(utility) or {_VALUE}.permutation_shapley(utility, n_permutations)",
    "TMCShapleyValuation": f"{_VALUE}.permutation_shapley(utility, n_permutations, truncation=...)",
    "DataShapleyValuation": f"{_VALUE}.permutation_shapley(utility, n_permutations)",
    "LOOValuation": f"{_VALUE}.loo(utility)",
    "BanzhafValuation": f"{_VALUE}.banzhaf(utility, n_samples)",
    "MSRBanzhafValuation": f"{_VALUE}.msr_banzhaf(utility, n_samples)",
    "BetaShapleyValuation": f"{_VALUE}.beta_shapley(utility, n_samples, alpha=, beta=)",
    "DataBanzhafValuation": f"{_VALUE}.banzhaf(utility, n_samples)",
    "DataBetaShapleyValuation": f"{_VALUE}.beta_shapley(utility, n_samples, alpha=, beta=)",
    "SemivalueValuation": f"{_VALUE}.semivalue(utility, coefficient, ...)",
    "GroupTestingShapleyValuation": f"{_VALUE}.group_testing_shapley(utility, ...)",
    "ClasswiseShapleyValuation": f"{_VALUE}.classwise_shapley(utility, n_samples)",
    "DataOOBValuation": f"{_VALUE}.data_oob(utility, n_estimators)",
    "KNNShapleyValuation": f"{_VALUE}.knn_shapley(data, KNeighborsClassifier(...))",
    "ExactLeastCoreValuation": f"{_VALUE}.exact_least_core(utility)",
    "MonteCarloLeastCoreValuation": f"{_VALUE}.montecarlo_least_core(utility, n_samples)",
    "LeastCoreValuation": f"{_VALUE}.exact_least_core(utility) or {_VALUE}.montecarlo_least_core(utility, n_samples)",
    "compute_shapley_values": f"{_VALUE}.exact_shapley or {_VALUE}.permutation_shapley",
    "combinatorial_exact_shapley": f"{_VALUE}.exact_shapley(utility)",
    "permutation_montecarlo_shapley": f"{_VALUE}.permutation_shapley(utility, n_permutations)",
    "compute_loo": f"{_VALUE}.loo(utility)",
    "compute_banzhaf_semivalues": f"{_VALUE}.banzhaf(utility, n_samples)",
    "compute_msr_banzhaf_semivalues": f"{_VALUE}.msr_banzhaf(utility, n_samples)",
    "compute_beta_shapley_semivalues": f"{_VALUE}.beta_shapley(utility, n_samples, alpha=, beta=)",
    "compute_generic_semivalues": f"{_VALUE}.semivalue(utility, coefficient, ...)",
    "compute_classwise_shapley_values": f"{_VALUE}.classwise_shapley(utility, n_samples)",
    "compute_data_oob": f"{_VALUE}.data_oob(utility, n_estimators)",
    "compute_least_core_values": f"{_VALUE}.exact_least_core or {_VALUE}.montecarlo_least_core",
    "owen_sampling_shapley": f"{_VALUE}.owen_shapley(utility, n_samples)",
    "ParallelConfig": "a Dask scheduler: values.compute(scheduler=...) or a distributed.Client",
    "MaxSamples": f"{_VALUE}.MaxEvaluations(n)",
}


def pydvl_name_hook(module: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` that explains pyDVL names and raises AttributeError for any other name."""

    def __getattr__(name: str) -> Any:
        if name in PYDVL_NAMES:
            raise PyDVLNameError(
                f"{name} is pyDVL's name; dvl_dask has no {name} in {module}. Use {PYDVL_NAMES[name]}. "
                f"See the migration guide, {GUIDE}, for every pyDVL name and its dvl_dask equivalent.",
                name=name,
            )
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
