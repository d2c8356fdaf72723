"""The device the batched models fit on: ``dask.config`` ``dvl_dask.models.device``, read at call time."""

from __future__ import annotations

from .. import config
from ..errors import InvalidParameterError

__all__ = ["SUPPORTED_DEVICES", "batch_device"]

#: Devices the batched models support on any install: they are numpy programs.
SUPPORTED_DEVICES = ("cpu",)


def batch_device() -> str:
    """The configured device of the batched models, refused unless supported.

    The batched solvers are numpy programs, so ``"cpu"`` is the only device.
    A torch version was measured on this project's CPU machine and was slower
    (batched Gram matrices 1.7x, batched Cholesky solves 1.5x, a small
    operation 3x; see ``docs/batched-models.md``), so none is provided; a
    setting such as ``"cuda"`` raises rather than being ignored.

    Raises
    ------
    InvalidParameterError
        If ``dvl_dask.models.device`` is not one of :data:`SUPPORTED_DEVICES`.
    """
    device = config.get(config.MODELS_DEVICE)
    if not isinstance(device, str) or device.strip().lower() not in SUPPORTED_DEVICES:
        raise InvalidParameterError(
            f"The dask.config setting '{config.MODELS_DEVICE}' is {device!r}, but the batched models of "
            f"dvl_dask.models run in numpy on the CPU. Supported on this install: "
            f"{', '.join(repr(d) for d in SUPPORTED_DEVICES)}. To fix, set it to 'cpu' (or unset it)."
        )
    return "cpu"
