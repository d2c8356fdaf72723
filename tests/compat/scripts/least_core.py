"""pyDVL 0.10: least core with a deterministic sampler (the exact least core)."""

from pydvl.valuation import (
    Dataset,
    DeterministicUniformSampler,
    LeastCoreValuation,
    ModelUtility,
    NoIndexIteration,
    SupervisedScorer,
)
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

X, y = make_classification(n_samples=30, n_features=3, n_informative=2, n_redundant=0, random_state=0)
train, test = Dataset.from_arrays(X, y, train_size=5, random_state=16)
scorer = SupervisedScorer("accuracy", test_data=test, default=0.0, range=(0.0, 1.0))
utility = ModelUtility(LogisticRegression(), scorer)

sampler = DeterministicUniformSampler(index_iteration=NoIndexIteration)
solver = {"solver": "CLARABEL"}  # an interior-point solver: pyDVL's default SCS is accurate to about 1e-5
valuation = LeastCoreValuation(utility, sampler=sampler, non_negative_subsidy=True, solver_options=solver)
valuation.fit(train)
result = valuation.values()
