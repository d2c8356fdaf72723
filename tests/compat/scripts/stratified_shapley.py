"""pyDVL 0.10: stratified Shapley sampling."""

from pydvl.valuation import Dataset, MaxUpdates, ModelUtility, StratifiedShapleyValuation, SupervisedScorer
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

X, y = make_classification(n_samples=30, n_features=3, n_informative=2, n_redundant=0, random_state=0)
train, test = Dataset.from_arrays(X, y, train_size=5, random_state=16)
scorer = SupervisedScorer("accuracy", test_data=test, default=0.0, range=(0.0, 1.0))
utility = ModelUtility(LogisticRegression(), scorer)

valuation = StratifiedShapleyValuation(utility, is_done=MaxUpdates(12), seed=16)
valuation.fit(train)
result = valuation.values()
