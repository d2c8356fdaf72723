"""torch influence models run with the thread budget of dvl_dask.compute.torch-threads, and restore the caller's."""

from __future__ import annotations

import os
import threading

import dask
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from dvl_dask.errors import InvalidParameterError  # noqa: E402
from dvl_dask.influence.torch import ArnoldiInfluence, CgInfluence, DirectInfluence  # noqa: E402
from dvl_dask.threads import torch_thread_budget, torch_threads  # noqa: E402

pytestmark = pytest.mark.torch


class RecordingLoss:
    """MSE that records the torch thread count of every call."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def __call__(self, out, y):
        self.seen.add(torch.get_num_threads())
        return F.mse_loss(out, y)


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(12, 3, generator=g, dtype=torch.float64), torch.randn(12, 1, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("cls", [DirectInfluence, ArnoldiInfluence, CgInfluence])
def test_fit_and_products_use_the_budget_and_restore_the_callers_threads(two_threads, cls):
    x, y = _data()
    loss = RecordingLoss()
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    kwargs = {"rank": 5} if cls is ArnoldiInfluence else {}
    infl = cls(model, loss, regularization=0.5, second_order_mode="gauss_newton", **kwargs)
    with dask.config.set({"dvl_dask.compute.torch-threads": 1}):
        infl.fit((x, y))
        assert torch.get_num_threads() == 2
        infl.influences(x[:3], y[:3], x, y)
        infl.self_influences(x, y)
        infl.influences_from_factors(infl.influence_factors(x[:2], y[:2]), x, y)
        assert torch.get_num_threads() == 2
    assert loss.seen == {1}


def test_null_leaves_torch_alone(two_threads):
    loss = RecordingLoss()
    x, y = _data()
    with dask.config.set({"dvl_dask.compute.torch-threads": None}):
        DirectInfluence(nn.Linear(3, 1).double(), loss, regularization=0.1).fit((x, y))
    assert loss.seen == {2}


def test_auto_is_one_thread_per_task_in_a_pool_thread_and_at_most_torchs_own(two_threads):
    with dask.config.set({"dvl_dask.compute.torch-threads": "auto"}):
        # The main thread runs one task: all usable cores, at most torch's own setting (2 here).
        assert torch_thread_budget() == min(2, len(os.sched_getaffinity(0)))
        seen = []
        worker = threading.Thread(target=lambda: seen.append(torch_thread_budget()))
        worker.start()
        worker.join()
        assert seen == [1]
        torch.set_num_threads(1)
        assert torch_thread_budget() == 1


def test_nested_contexts_restore_once(two_threads):
    with dask.config.set({"dvl_dask.compute.torch-threads": 1}):
        with torch_threads():
            assert torch.get_num_threads() == 1
            with dask.config.set({"dvl_dask.compute.torch-threads": 2}), torch_threads():
                assert torch.get_num_threads() == 1  # the outermost setting holds
            assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("bad", [0, -1, "many", 1.5, True])
def test_invalid_setting_is_refused(bad):
    with dask.config.set({"dvl_dask.compute.torch-threads": bad}):
        with pytest.raises(InvalidParameterError, match="torch-threads"):
            torch_thread_budget()
