"""pyDVL 0.10 style: exact KNN-Shapley of a regressor (an extension of the compat namespace).

pyDVL 0.10's KNNShapleyValuation accepts only a KNeighborsClassifier (it raises TypeError here); this
script runs only with its imports pointed at the Dask compat namespace.
"""

from pydvl.valuation import Dataset, KNNShapleyValuation
from sklearn.datasets import make_regression
from sklearn.neighbors import KNeighborsRegressor

X, y = make_regression(n_samples=14, n_features=2, noise=1.0, random_state=0)
train, test = Dataset.from_arrays(X, y, train_size=6, random_state=16)
valuation = KNNShapleyValuation(KNeighborsRegressor(n_neighbors=2), test_data=test)
valuation.fit(train)
result = valuation.values()
