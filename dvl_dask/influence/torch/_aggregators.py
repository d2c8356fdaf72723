"""Aggregators that concatenate torch blocks of the sequential calculator's lazy results."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ...chunks import NestedSequenceAggregator, SequenceAggregator

__all__ = ["NestedTorchCatAggregator", "TorchCatAggregator"]


class TorchCatAggregator(SequenceAggregator):
    """Concatenate tensor blocks along dim 0.

    Examples
    --------
    >>> import torch
    >>> TorchCatAggregator()([torch.ones(1, 2), torch.zeros(2, 2)]).shape
    torch.Size([3, 2])
    """

    def __call__(self, blocks: Iterable[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(blocks), dim=0)


class NestedTorchCatAggregator(NestedSequenceAggregator):
    """Assemble tensor blocks into one tensor: blocks of a row along dim 1, rows along dim 0.

    Examples
    --------
    >>> import torch
    >>> rows = [[torch.ones(2, 1), torch.ones(2, 3)], [torch.ones(1, 1), torch.ones(1, 3)]]
    >>> NestedTorchCatAggregator()(rows).shape
    torch.Size([3, 4])
    """

    def __call__(self, rows: Iterable[Iterable[torch.Tensor]]) -> torch.Tensor:
        return torch.cat([torch.cat(list(row), dim=1) for row in rows], dim=0)
