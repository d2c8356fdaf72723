"""Datasets: labelled, fingerprinted train/test arrays (numpy or dask)."""

from ._dataset import Dataset, GroupedDataset

__all__ = ["Dataset", "GroupedDataset"]
