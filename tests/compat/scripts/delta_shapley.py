"""pyDVL 0.10: Delta-Shapley (coalition sizes 1..4)."""

from pydvl.valuation import (
    ConstantSampleSize,
    Dataset,
    DeltaShapleyValuation,
    MaxUpdates,
    ModelUtility,
    RandomIndexIteration,
    RandomSizeIteration,
    StratifiedSampler,
    SupervisedScorer,
)
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

X, y = make_classification(n_samples=30, n_features=3, n_informative=2, n_redundant=0, random_state=0)
train, test = Dataset.from_arrays(X, y, train_size=5, random_state=16)
scorer = SupervisedScorer("accuracy", test_data=test, default=0.0, range=(0.0, 1.0))
utility = ModelUtility(LogisticRegression(), scorer)

sampler = StratifiedSampler(
    sample_sizes=ConstantSampleSize(lower_bound=1, upper_bound=4),
    sample_sizes_iteration=RandomSizeIteration,
    index_iteration=RandomIndexIteration,
    seed=16,
)
valuation = DeltaShapleyValuation(utility, sampler=sampler, is_done=MaxUpdates(8))
valuation.fit(train)
result = valuation.values()
