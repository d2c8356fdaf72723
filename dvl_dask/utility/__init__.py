"""Utilities: model + data + scorer as a function of coalitions."""

from .._pydvl_names import pydvl_name_hook as _pydvl_name_hook
from ._learned import LearnedUtility, learn_utility
from ._scorers import (
    Scorer,
    as_scorer,
    compose_score,
    scorer_task,
    sigmoid,
    sklearn_scorer_range,
    squashed_neg_mse,
    squashed_r2,
    squashed_variance,
)
from ._utility import Utility

__all__ = [
    "LearnedUtility",
    "Scorer",
    "Utility",
    "as_scorer",
    "compose_score",
    "learn_utility",
    "scorer_task",
    "sigmoid",
    "sklearn_scorer_range",
    "squashed_neg_mse",
    "squashed_r2",
    "squashed_variance",
]

# pyDVL names (ModelUtility, ShapleyValuation, ...) raise an ImportError pointing to the migration guide.
__getattr__ = _pydvl_name_hook(__name__)
