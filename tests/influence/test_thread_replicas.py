"""Per-thread replicas of fitted torch models (issue 30): private modules, shared fitted tensors, same values.

The influence calculators' kernels give each thread its own replica, so the
threads of a ``distributed`` worker compute side by side instead of queueing
on one model's lock.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from helpers import torch_model_builders  # noqa: E402

from dvl_dask.influence._kernels import factors_block, for_this_thread, from_factors_block  # noqa: E402
from dvl_dask.influence.torch import DirectInfluence, LograInfluence, TracInInfluence, TrakInfluence  # noqa: E402

pytestmark = pytest.mark.torch

BUILDERS = {
    **torch_model_builders(lissa_maxiter=20),
    "trak": lambda m, loss: TrakInfluence(m, loss, projection_dim=16, regularization=0.1, seed=3),
    "logra": lambda m, loss: LograInfluence(m, loss, input_dim=4, output_dim=2, regularization=0.1),
}


def _fit(name, p):
    if name == "tracin":
        states = [{k: v * s for k, v in p.model.state_dict().items()} for s in (0.9, 1.0)]
        return TracInInfluence(p.model, F.cross_entropy).fit(states, learning_rates=[0.1, 0.05])
    return BUILDERS[name](p.model, F.cross_entropy).fit((p.x, p.y))


@pytest.fixture(scope="module", params=[*BUILDERS, "tracin"])
def fitted(request, mlp_classifier):
    return mlp_classifier, _fit(request.param, mlp_classifier)


class _Converter:
    def to_tensor(self, a):
        return torch.as_tensor(a)

    def to_numpy(self, t):
        return t.detach().numpy()


def _tensors(module):
    return [*module.parameters(), *module.buffers()]


def test_a_replica_has_its_own_modules_shares_every_tensor_and_computes_the_same_values(fitted):
    p, model = fitted
    replica = model.thread_replica()
    assert type(replica) is type(model) and replica is not model
    assert replica._net is not model._net and replica._functional.model is replica._net
    # The module copy's parameters and buffers are the original tensor objects: no memory duplicated.
    assert all(a is b for a, b in zip(_tensors(replica._net), _tensors(model._net), strict=True))
    for fm, original in zip(getattr(replica, "_fms", []), getattr(model, "_fms", []), strict=True):
        assert fm.model is replica._net and fm.params is original.params
    for name, value in vars(model).items():  # everything fitted is shared, only modules are copied
        if isinstance(value, torch.Tensor):
            assert getattr(replica, name) is value
    assert torch.equal(replica.influences(p.x_test, p.y_test, p.x, p.y), model.influences(p.x_test, p.y_test, p.x, p.y))
    factors = model.influence_factors(p.x_test[:2], p.y_test[:2])
    mode = "up" if isinstance(model, LograInfluence) else "perturbation"  # LoGra has no perturbation mode
    assert torch.equal(
        replica.influences_from_factors(factors, p.x[:3], p.y[:3], mode),
        model.influences_from_factors(factors, p.x[:3], p.y[:3], mode),
    )
    assert replica.__dask_tokenize__() == model.__dask_tokenize__()


def test_kernels_give_each_thread_one_replica_and_keep_it(mlp_classifier):
    model = _fit("direct", mlp_classifier)
    seen: dict[int, set[int]] = {}
    barrier = threading.Barrier(3)

    def use() -> None:
        barrier.wait()
        for _ in range(3):
            with for_this_thread(model) as own:
                assert own is not model
                seen.setdefault(threading.get_ident(), set()).add(id(own))

    with ThreadPoolExecutor(3) as pool:
        for f in [pool.submit(use) for _ in range(3)]:
            f.result()
    assert len(seen) == 3 and all(len(ids) == 1 for ids in seen.values())
    assert len({i for ids in seen.values() for i in ids}) == 3


@pytest.mark.parametrize("name", ["direct", "ekfac", "tracin"])
def test_threads_hammering_one_model_get_bit_identical_blocks(name, mlp_classifier):
    """functional_call swaps a module's parameters while it runs: without replicas, threads computing
    through one module at once corrupt each other's values (or trip functorch's level checks)."""
    p = mlp_classifier
    model = _fit(name, p)
    x, y, xt, yt = p.x.numpy(), p.y.numpy(), p.x_test.numpy(), p.y_test.numpy()

    conv = _Converter()
    factors = factors_block(xt, yt, model=model, converter=conv)
    expected = from_factors_block(factors, x, y, model=model, converter=conv)

    def work(_: int) -> tuple[np.ndarray, np.ndarray]:
        f = factors_block(xt, yt, model=model, converter=conv)
        return f, from_factors_block(f, x, y, model=model, converter=conv)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(16)))
    for f, values in results:
        np.testing.assert_array_equal(f, factors)
        np.testing.assert_array_equal(values, expected)


def test_a_thread_never_keeps_a_replica_of_a_model_refitted_since(mlp_classifier):
    """A model refitted in place (same object, new fitted state) must not be served from a replica of its old
    state: on the threads scheduler the kernels see the user's own object in long-lived pool threads."""
    p = mlp_classifier
    model = DirectInfluence(p.model, F.cross_entropy, regularization=0.1)
    xt, yt = p.x_test.numpy(), p.y_test.numpy()
    with ThreadPoolExecutor(1) as pool:
        model.fit((p.x, p.y))
        first = pool.submit(lambda: factors_block(xt, yt, model=model, converter=_Converter())).result()
        model.regularization = 5.0
        model.fit((p.x[:30], p.y[:30]))
        again = pool.submit(lambda: factors_block(xt, yt, model=model, converter=_Converter())).result()
    expected = model.influence_factors(p.x_test, p.y_test).numpy()
    assert not np.allclose(first, expected)
    np.testing.assert_array_equal(again, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_products_in_the_converters_library_equal_numpys_and_read_only_blocks_are_not_copied(dtype):
    from dvl_dask.influence._kernels import product_block
    from dvl_dask.influence.torch import TorchNumpyConverter

    rng = np.random.default_rng(0)
    f, g = rng.normal(size=(5, 7)).astype(dtype), rng.normal(size=(6, 7)).astype(dtype)
    want = f @ g.T
    got = product_block(f, g, converter=TorchNumpyConverter())
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12)

    class Refusing(TorchNumpyConverter):  # a read-only block must not be handed to the converter (it would copy it)
        def to_tensor(self, x):
            assert x.flags.writeable, "a read-only block was converted"
            return super().to_tensor(x)

    g.flags.writeable = False
    np.testing.assert_array_equal(product_block(f, g, converter=Refusing()), want)
