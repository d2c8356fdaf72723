"""pyDVL 0.10: exact KNN-Shapley."""

from pydvl.valuation import Dataset, KNNShapleyValuation
from sklearn.datasets import make_classification
from sklearn.neighbors import KNeighborsClassifier

X, y = make_classification(n_samples=30, n_features=3, n_informative=2, n_redundant=0, random_state=0)
train, test = Dataset.from_arrays(X, y, train_size=5, random_state=16)
valuation = KNNShapleyValuation(KNeighborsClassifier(n_neighbors=3), test_data=test)
valuation.fit(train)
result = valuation.values()
