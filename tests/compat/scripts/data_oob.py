"""pyDVL 0.10: Data-OOB values of a bagging ensemble."""

from pydvl.valuation import DataOOBValuation, Dataset
from sklearn.datasets import make_classification
from sklearn.ensemble import BaggingClassifier
from sklearn.tree import DecisionTreeClassifier

X, y = make_classification(n_samples=30, n_features=3, n_informative=2, n_redundant=0, random_state=0)
train, test = Dataset.from_arrays(X, y, train_size=8, random_state=16)
model = BaggingClassifier(DecisionTreeClassifier(random_state=0), n_estimators=40, max_samples=0.8, random_state=16)
model.fit(*train.data())  # pyDVL values a fitted ensemble
valuation = DataOOBValuation(model)
valuation.fit(train)
result = valuation.values()
