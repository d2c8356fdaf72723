"""Data valuation methods: functions that return lazy ``xr.Dataset`` results."""

from ._exact import exact_shapley, loo, shapley_weights

__all__ = ["exact_shapley", "loo", "shapley_weights"]
