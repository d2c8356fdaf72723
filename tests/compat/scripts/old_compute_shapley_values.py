"""pyDVL 0.9: compute_shapley_values with a Utility over a one-object Dataset."""

from pydvl.utils import Dataset, Scorer, Utility
from pydvl.value import MaxUpdates, RelativeTruncation, compute_shapley_values
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

X, y = make_classification(n_samples=30, n_features=3, n_informative=2, n_redundant=0, random_state=0)
data = Dataset.from_arrays(X, y, train_size=5, random_state=16)
utility = Utility(LogisticRegression(), data, Scorer("accuracy", default=0.0))
result = compute_shapley_values(
    utility,
    mode="truncated_montecarlo",
    done=MaxUpdates(8),
    truncation=RelativeTruncation(utility, rtol=0.05),
    n_jobs=2,
    seed=16,
)
