"""pyDVL 0.10: exact KNN-Shapley of a regressor."""

from pydvl.valuation import Dataset, KNNShapleyValuation
from sklearn.datasets import make_regression
from sklearn.neighbors import KNeighborsRegressor

X, y = make_regression(n_samples=14, n_features=2, noise=1.0, random_state=0)
train, test = Dataset.from_arrays(X, y, train_size=6, random_state=16)
valuation = KNNShapleyValuation(KNeighborsRegressor(n_neighbors=2), test_data=test)
valuation.fit(train)
result = valuation.values()
