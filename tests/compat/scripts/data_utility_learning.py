"""pyDVL 0.10: data utility learning, then exact Shapley values of the learned utility."""

from pydvl.valuation import (
    Dataset,
    DataUtilityLearning,
    DeterministicUniformSampler,
    IndicatorUtilityModel,
    ModelUtility,
    NoStopping,
    ShapleyValuation,
    SupervisedScorer,
)
from sklearn.datasets import make_classification
from sklearn.linear_model import LinearRegression, LogisticRegression

X, y = make_classification(n_samples=30, n_features=3, n_informative=2, n_redundant=0, random_state=0)
train, test = Dataset.from_arrays(X, y, train_size=5, random_state=16)
scorer = SupervisedScorer("accuracy", test_data=test, default=0.0, range=(0.0, 1.0))
utility = ModelUtility(LogisticRegression(), scorer)
learned = DataUtilityLearning(utility, training_budget=20, model=IndicatorUtilityModel(LinearRegression(), len(train)))
sampler = DeterministicUniformSampler()
valuation = ShapleyValuation(learned, sampler=sampler, is_done=NoStopping(sampler))
valuation.fit(train)
result = valuation.values()
