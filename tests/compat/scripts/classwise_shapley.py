"""pyDVL 0.10: class-wise Shapley values (without normalisation)."""

from pydvl.valuation import (
    ClasswiseModelUtility,
    ClasswiseSampler,
    ClasswiseShapleyValuation,
    ClasswiseSupervisedScorer,
    Dataset,
    MaxUpdates,
    NoIndexIteration,
    PermutationSampler,
    UniformSampler,
)
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

X, y = make_classification(n_samples=30, n_features=3, n_informative=2, n_redundant=0, random_state=0)
train, test = Dataset.from_arrays(X, y, train_size=5, random_state=16)
scorer = ClasswiseSupervisedScorer("accuracy", test_data=test)
utility = ClasswiseModelUtility(LogisticRegression(), scorer, catch_errors=True)  # one-class fits score 0
sampler = ClasswiseSampler(
    in_class=PermutationSampler(seed=16),
    out_of_class=UniformSampler(index_iteration=NoIndexIteration, seed=16),
    max_in_class_samples=1,
)
valuation = ClasswiseShapleyValuation(utility, sampler=sampler, is_done=MaxUpdates(4), normalize_values=False)
valuation.fit(train)
result = valuation.values()
