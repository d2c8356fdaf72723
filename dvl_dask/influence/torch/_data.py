"""Training data for ``fit`` and checks of the tensors given to an influence model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from ...errors import InvalidDataError

__all__ = ["InputSpec", "as_data_loader", "check_tensor_pair", "iter_batches", "repeats_batches"]

#: Batch size used when ``fit`` receives a tuple ``(x, y)`` instead of a DataLoader.
TUPLE_BATCH_SIZE = 512


def as_data_loader(data: Any, owner: str) -> DataLoader:
    """A DataLoader as is, or a tuple/list ``(x, y)`` of tensors wrapped in one."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, tuple | list) and len(data) == 2:
        x, y = check_tensor_pair(data[0], data[1], owner, "x", "y")
        return DataLoader(TensorDataset(x, y), batch_size=min(len(x), TUPLE_BATCH_SIZE), shuffle=False)
    raise InvalidDataError(
        f"{owner}.fit() needs a torch.utils.data.DataLoader yielding (x, y) batches or a tuple (x, y) of "
        f"tensors. Got {type(data).__name__}. To fix, wrap the data: "
        "DataLoader(TensorDataset(x, y), batch_size=...)."
    )


def check_tensor_pair(x: Any, y: Any, owner: str, x_name: str, y_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check that ``x`` and ``y`` are non-empty tensors with the same number of samples."""
    for name, t in ((x_name, x), (y_name, y)):
        if not isinstance(t, torch.Tensor):
            raise InvalidDataError(
                f"The {name!r} argument of {owner} must be a torch.Tensor. Got {type(t).__name__}. To fix, "
                "convert arrays with dvl_dask.influence.torch.TorchNumpyConverter().to_tensor(...)."
            )
        if t.ndim == 0 or t.shape[0] == 0:
            raise InvalidDataError(
                f"The {name!r} argument of {owner} must have a leading sample dimension with at least one "
                f"sample. Got shape {tuple(t.shape)}."
            )
    if x.shape[0] != y.shape[0]:
        raise InvalidDataError(
            f"The arguments {x_name!r} and {y_name!r} of {owner} must have the same number of samples. Got "
            f"{x.shape[0]} and {y.shape[0]}."
        )
    return x, y


def _in_order_slices(loader: DataLoader) -> Iterator[tuple[torch.Tensor, ...]] | None:
    """The batches of a plain in-order ``DataLoader`` over a ``TensorDataset``, read as slices of its tensors.

    Such a loader builds every batch sample by sample in Python (``dataset[i]``
    for each index, then ``torch.stack``): about 5 µs a sample, a fifth of a
    LiSSA iteration on the benchmarks' MLP, and all of it holding the GIL. A copy
    of each slice has the same values, dtype and shape as the stacked batch. The
    loader itself is not iterated, so it draws no seed from torch's global
    generator. None (iterate the loader) for anything else: another loader,
    dataset, sampler or batch sampler class, a shuffling or custom sampler, a
    custom ``collate_fn``, worker processes or pinned memory.
    """
    from torch.utils.data import BatchSampler, SequentialSampler
    from torch.utils.data._utils.collate import default_collate

    if type(loader) is not DataLoader or type(loader.dataset) is not TensorDataset:
        return None
    batches = loader.batch_sampler
    if (loader.num_workers or loader.pin_memory or loader.collate_fn is not default_collate
            or type(batches) is not BatchSampler or type(batches.sampler) is not SequentialSampler
            or batches.sampler.data_source is not loader.dataset):
        return None
    tensors, size = loader.dataset.tensors, int(batches.batch_size)
    n = len(loader.dataset)
    stop = n - n % size if batches.drop_last else n
    return (tuple(t[i : i + size].clone() for t in tensors) for i in range(0, stop, size))


def repeats_batches(loader: DataLoader) -> bool:
    """Whether every pass over ``loader`` yields the same batches in the same order.

    True only for what :func:`_in_order_slices` reads as slices: a plain
    ``DataLoader`` over a ``TensorDataset`` (fixed tensors, no transform) with a
    sequential sampler. Anything else may shuffle, sample or augment.
    """
    return _in_order_slices(loader) is not None


def iter_batches(loader: DataLoader, owner: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches of ``loader``, checking their structure.

    A plain in-order loader over a ``TensorDataset`` (what tuples of tensors
    become) is read as slices of its tensors (:func:`_in_order_slices`).
    """
    n_batches = 0
    sliced = _in_order_slices(loader)
    for batch in loader if sliced is None else sliced:
        if not isinstance(batch, tuple | list) or len(batch) != 2:
            raise InvalidDataError(
                f"The data loader given to {owner} must yield (x, y) pairs. Got a batch of type "
                f"{type(batch).__name__}"
                + (f" with {len(batch)} elements" if isinstance(batch, tuple | list) else "")
                + ". To fix, use a dataset whose items are (features, target) pairs."
            )
        n_batches += 1
        yield check_tensor_pair(batch[0], batch[1], owner, "x (batch)", "y (batch)")
    if n_batches == 0:
        raise InvalidDataError(f"The data loader given to {owner} yielded no batches. It needs training data.")


@dataclass(frozen=True)
class InputSpec:
    """Per-sample shapes seen at fit time, and the model's dtype/device, to check later inputs."""

    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    def check(
        self, x: Any, y: Any, owner: str, *, x_name: str = "x", y_name: str = "y", differentiable: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate ``(x, y)`` against the fit-time data and move them to the model's device."""
        x, y = check_tensor_pair(x, y, owner, x_name, y_name)
        for name, t, shape in ((x_name, x, self.x_shape), (y_name, y, self.y_shape)):
            if tuple(t.shape[1:]) != shape:
                raise InvalidDataError(
                    f"The {name!r} argument of {owner} has per-sample shape {tuple(t.shape[1:])}, but the model "
                    f"was fitted on data of per-sample shape {shape}. Got full shape {tuple(t.shape)}."
                )
            if t.is_floating_point() and t.dtype != self.dtype:
                raise InvalidDataError(
                    f"The {name!r} argument of {owner} has dtype {t.dtype}, but the model parameters are "
                    f"{self.dtype}. To fix, convert it with {name}.to({self.dtype})."
                )
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise InvalidDataError(
                    f"The {name!r} argument of {owner} contains NaN or infinite values. To fix, impute or drop "
                    "them first."
                )
            if t.is_complex():
                raise InvalidDataError(f"The {name!r} argument of {owner} must be real. Got dtype {t.dtype}.")
        if differentiable and not x.is_floating_point():
            raise InvalidDataError(
                f"Perturbation influences differentiate w.r.t. {x_name!r}, so it must be a floating point "
                f"tensor. Got dtype {x.dtype} in {owner}."
            )
        return x.to(self.device), y.to(self.device)
