"""Utilities: model + data + scorer as a function of coalitions."""

from ._learned import LearnedUtility, learn_utility
from ._scorers import Scorer, as_scorer
from ._utility import Utility

__all__ = ["LearnedUtility", "Scorer", "Utility", "as_scorer", "learn_utility"]
