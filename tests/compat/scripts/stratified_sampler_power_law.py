"""pyDVL 0.10: Shapley values with a stratified sampler and a power-law sample-size strategy."""

from pydvl.valuation import (
    Dataset,
    MaxUpdates,
    ModelUtility,
    PowerLawSampleSize,
    RandomIndexIteration,
    RandomSizeIteration,
    ShapleyValuation,
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
    sample_sizes=PowerLawSampleSize(exponent=-0.5),
    sample_sizes_iteration=RandomSizeIteration,
    index_iteration=RandomIndexIteration,
    seed=16,
)
valuation = ShapleyValuation(utility, sampler=sampler, is_done=MaxUpdates(12))
valuation.fit(train)
result = valuation.values()
