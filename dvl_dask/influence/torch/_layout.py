"""Where each trainable parameter sits in the flat parameter vector, and how it is split into blocks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import InvalidModelError, InvalidParameterError
from .._mode import BlockMode

__all__ = ["ParameterBlock", "ParameterLayout", "resolve_blocks"]


@dataclass(frozen=True)
class ParameterLayout:
    """Names and shapes of trainable parameters, in ``model.named_parameters()`` order.

    A flat vector concatenates the row-major flattened parameters in this order.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def from_module(cls, model: nn.Module, owner: str) -> ParameterLayout:
        named = [(n, p.shape) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise InvalidModelError(
                f"{owner} needs a model with trainable parameters; {type(model).__name__} has none "
                "with requires_grad=True. To fix, unfreeze the parameters influence is computed for."
            )
        return cls(tuple(n for n, _ in named), tuple(torch.Size(s) for _, s in named))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(s.numel()) for s in self.shapes)

    @property
    def n(self) -> int:
        return sum(self.sizes)

    def offsets(self) -> dict[str, tuple[int, int]]:
        """``name -> (start, stop)`` in the flat vector."""
        out: dict[str, tuple[int, int]] = {}
        start = 0
        for name, size in zip(self.names, self.sizes):
            out[name] = (start, start + size)
            start += size
        return out

    def flatten(self, tensors: Mapping[str, torch.Tensor], batch_ndim: int = 0) -> torch.Tensor:
        """Concatenate ``tensors`` (leading ``batch_ndim`` dims kept) into flat vectors."""
        parts = []
        for name in self.names:
            t = tensors[name]
            parts.append(t.reshape(*t.shape[:batch_ndim], -1))
        return torch.cat(parts, dim=batch_ndim)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inverse of :meth:`flatten` for one vector (no batch dimension)."""
        chunks = torch.split(flat, self.sizes)
        return {name: c.reshape(shape) for name, c, shape in zip(self.names, chunks, self.shapes)}

    def sub(self, names: Sequence[str]) -> ParameterLayout:
        """The layout of a subset of parameters, kept in this layout's order."""
        wanted = set(names)
        keep = [(n, s) for n, s in zip(self.names, self.shapes) if n in wanted]
        return ParameterLayout(tuple(n for n, _ in keep), tuple(s for _, s in keep))

    def indices(self, names: Sequence[str]) -> torch.Tensor:
        """Positions of the parameters ``names`` in the flat vector (in layout order)."""
        offsets = self.offsets()
        wanted = set(names)
        ranges = [torch.arange(*offsets[n]) for n in self.names if n in wanted]
        return torch.cat(ranges)


@dataclass(frozen=True)
class ParameterBlock:
    """A diagonal block of the curvature matrix: some parameters and their flat positions."""

    name: str
    layout: ParameterLayout
    index: torch.Tensor  # positions in the full flat vector

    @property
    def n(self) -> int:
        return self.layout.n

    @property
    def columns(self) -> slice | torch.Tensor:
        """Selector of the block's columns in rows of flat vectors: a slice when contiguous (a view)."""
        start, stop = int(self.index[0]), int(self.index[-1]) + 1
        if stop - start == self.index.numel():
            return slice(start, stop)
        return self.index

    def select(self, rows: torch.Tensor) -> torch.Tensor:
        """The block's columns of ``rows`` (shape ``(k, n_parameters)``)."""
        cols = self.columns
        return rows[:, cols] if isinstance(cols, slice) else rows[:, cols.to(rows.device)]


def resolve_blocks(
    layout: ParameterLayout,
    structure: BlockMode | str | Mapping[str, Sequence[str]],
    owner: str,
) -> list[ParameterBlock]:
    """Split ``layout`` into blocks: one, one per module, or as the user mapped them.

    A mapping ``{block_name: [parameter names]}`` must assign every trainable
    parameter to exactly one block.
    """
    if isinstance(structure, Mapping):
        groups = {str(k): list(v) for k, v in structure.items()}
        assigned = [n for names in groups.values() for n in names]
        unknown = sorted(set(assigned) - set(layout.names))
        missing = [n for n in layout.names if n not in set(assigned)]
        duplicated = sorted({n for n in assigned if assigned.count(n) > 1})
        if unknown or missing or duplicated or any(not v for v in groups.values()):
            raise InvalidParameterError(
                f"The 'block_structure' mapping of {owner} must assign every trainable parameter to exactly "
                f"one non-empty block. Got unknown names {unknown}, unassigned {missing}, repeated "
                f"{duplicated}. Trainable parameters are {list(layout.names)}."
            )
    else:
        mode = BlockMode.parse(structure)
        if mode is BlockMode.Full:
            groups = {"all": list(layout.names)}
        else:
            groups = {}
            for name in layout.names:
                groups.setdefault(name.rpartition(".")[0] or "<root>", []).append(name)
    return [ParameterBlock(k, layout.sub(v), layout.indices(v)) for k, v in groups.items()]
