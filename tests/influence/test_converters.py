"""TorchNumpyConverter: dtype/device handling and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dvl_dask.errors import InvalidDataError  # noqa: E402
from dvl_dask.influence.torch import TorchNumpyConverter  # noqa: E402

pytestmark = pytest.mark.torch


def test_round_trip_keeps_values_and_dtype():
    conv = TorchNumpyConverter()
    arr = np.arange(6, dtype=np.float64).reshape(2, 3)
    t = conv.to_tensor(arr)
    assert t.dtype == torch.float64 and t.device.type == "cpu"
    np.testing.assert_array_equal(conv.to_numpy(t), arr)


def test_dtype_and_device_are_applied():
    conv = TorchNumpyConverter(device="cpu", dtype=torch.float32)
    t = conv.to_tensor(np.ones((2, 2)))
    assert t.dtype == torch.float32 and t.device == torch.device("cpu")
    assert conv.to_numpy(t.requires_grad_(True)).dtype == np.float32  # detached
    assert conv.to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype == np.float32
    assert "float32" in repr(conv)


def test_read_only_arrays_are_copied():
    arr = np.ones(3)
    arr.flags.writeable = False
    t = TorchNumpyConverter().to_tensor(arr)
    t += 1
    assert arr[0] == 1.0


def test_errors():
    with pytest.raises(InvalidDataError, match=r"numeric array. Got dtype object"):
        TorchNumpyConverter().to_tensor(np.array([{}, 1], dtype=object))
    with pytest.raises(InvalidDataError, match=r"needs a torch.Tensor. Got ndarray"):
        TorchNumpyConverter().to_numpy(np.ones(2))
    with pytest.raises(InvalidDataError, match=r"must be a torch.dtype"):
        TorchNumpyConverter(dtype="float32")
