"""pyDVL's ``pydvl.influence.torch.util`` names, for code written against pyDVL.

The same objects as in :mod:`dvl_dask.influence.torch` and
:mod:`dvl_dask.influence`; nothing here is specific to this module:

* :class:`TorchNumpyConverter` -- numpy blocks ↔ tensors for the calculators.
* :class:`TorchCatAggregator`, :class:`NestedTorchCatAggregator` -- assemble
  the lazy results of :class:`~dvl_dask.influence.SequentialInfluenceCalculator`
  into one tensor.
* :func:`torch_dataset_to_dask_array` -- a torch ``Dataset`` as dask arrays.
* :class:`BlockMode`, :class:`SecondOrderMode` -- the options of the models.

Examples
--------
>>> from dvl_dask.influence.torch.util import NestedTorchCatAggregator, TorchNumpyConverter
>>> from dvl_dask.influence.torch import NestedTorchCatAggregator as same
>>> NestedTorchCatAggregator is same
True
"""

from .._mode import BlockMode, SecondOrderMode
from ._aggregators import NestedTorchCatAggregator, TorchCatAggregator
from ._converters import TorchNumpyConverter
from ._dask_data import torch_dataset_to_dask_array

__all__ = [
    "BlockMode",
    "NestedTorchCatAggregator",
    "SecondOrderMode",
    "TorchCatAggregator",
    "TorchNumpyConverter",
    "torch_dataset_to_dask_array",
]
