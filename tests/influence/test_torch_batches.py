"""Training batches: a plain in-order loader over a TensorDataset is read as slices, equal to the loader's batches."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset  # noqa: E402

from dvl_dask.errors import InvalidDataError  # noqa: E402
from dvl_dask.influence.torch._data import _in_order_slices, iter_batches  # noqa: E402

pytestmark = pytest.mark.torch


def _tensors(n: int = 23):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 2, generator=g), torch.randint(0, 4, (n,), generator=g)


@pytest.mark.parametrize("batch_size", [1, 5, 23, 40])
@pytest.mark.parametrize("drop_last", [False, True])
def test_in_order_slices_equal_the_loaders_batches(batch_size, drop_last):
    x, y = _tensors()
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, drop_last=drop_last)
    assert _in_order_slices(loader) is not None
    expected = [(bx, by) for bx, by in loader]
    if not expected:
        with pytest.raises(InvalidDataError, match="yielded no batches"):
            list(iter_batches(loader, "test"))
        return
    got = list(iter_batches(loader, "test"))
    assert len(got) == len(expected)
    for (gx, gy), (ex, ey) in zip(got, expected):
        assert gx.dtype == ex.dtype and gy.dtype == ey.dtype and gx.shape == ex.shape and gy.shape == ey.shape
        assert torch.equal(gx, ex) and torch.equal(gy, ey)
        assert gx.data_ptr() != x.data_ptr()  # a copy, as the loader's stacked batch is: the data stays intact


def test_in_order_slices_leave_torchs_global_generator_alone():
    x, y = _tensors()
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    state = torch.get_rng_state()
    list(iter_batches(loader, "test"))
    assert torch.equal(torch.get_rng_state(), state)


class _Pairs(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class _Subclass(TensorDataset):
    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x * 2, y


def _loaders():
    x, y = _tensors()
    data = TensorDataset(x, y)
    return {
        "shuffled": DataLoader(data, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(1)),
        "custom sampler": DataLoader(data, batch_size=5, sampler=RandomSampler(data, generator=torch.Generator())),
        "custom collate": DataLoader(data, batch_size=5, collate_fn=lambda b: (torch.stack([p[0] for p in b]) + 1,
                                                                               torch.stack([p[1] for p in b]))),
        "another dataset": DataLoader(_Pairs(x, y), batch_size=5),
        "a TensorDataset subclass": DataLoader(_Subclass(x, y), batch_size=5),
        "no batching": DataLoader(data, batch_size=None),
    }


@pytest.mark.parametrize("name", sorted(_loaders()))
def test_every_other_loader_is_iterated_as_it_is(name):
    loader = _loaders()[name]
    assert _in_order_slices(loader) is None
    if name == "no batching":
        with pytest.raises(InvalidDataError, match="leading sample dimension"):  # single samples, not batches
            list(iter_batches(loader, "test"))
        return
    if "shuffled" in name or "sampler" in name:  # random orders: the same generator state gives the same batches
        state = loader.generator.get_state() if loader.generator is not None else loader.sampler.generator.get_state()
        expected = list(loader)
        (loader.generator or loader.sampler.generator).set_state(state)
    else:
        expected = list(loader)
    got = list(iter_batches(loader, "test"))
    assert len(got) == len(expected)
    assert all(torch.equal(g[0], e[0]) and torch.equal(g[1], e[1]) for g, e in zip(got, expected))
