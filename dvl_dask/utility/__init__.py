"""Utilities: model + data + scorer as a function of coalitions."""

from ._scorers import Scorer, as_scorer
from ._utility import Utility

__all__ = ["Scorer", "Utility", "as_scorer"]
