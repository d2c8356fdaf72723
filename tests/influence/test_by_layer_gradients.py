"""Per-sample gradients layer by layer (networks of linear layers) against ``vmap(grad(...))`` of each sample alone.

The reference is written here with ``torch.func`` directly (each sample's loss
on a batch of one), so it does not share code with either path of the library.
"""

from __future__ import annotations

import gc
import itertools
import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, grad, vmap

from dvl_dask.errors import InvalidDataError, InvalidModelError
from dvl_dask.influence.torch._by_layer import linear_plan
from dvl_dask.influence.torch._functional import FunctionalModel
from dvl_dask.influence.torch._layout import ParameterLayout
from dvl_dask.influence.torch._memory import allocator_maps_fresh, empty_matrix


def reference_gradients(model: nn.Module, loss, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    frozen.update({n: b for n, b in model.named_buffers()})

    def sample_loss(params, xi, yi):
        return loss(functional_call(model, {**params, **frozen}, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    g = vmap(grad(sample_loss), in_dims=(None, 0, 0))(trainable, x, y)
    return torch.cat([g[n].reshape(len(x), -1) for n in trainable], dim=1)


def functional(model: nn.Module, loss) -> FunctionalModel:
    return FunctionalModel(model, loss, ParameterLayout.from_module(model, "test"))


def _net(*layers: nn.Module, dtype=torch.float64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(*layers).to(dtype).eval()


def _frozen_first() -> nn.Module:
    net = _net(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    net[0].requires_grad_(False)
    return net


def _only_a_bias() -> nn.Module:
    net = _net(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1))
    net[0].weight.requires_grad_(False)
    net[2].requires_grad_(False)
    return net


# name -> (model factory, loss, x shape, y factory)
CASES = {
    "mlp-mse": (lambda: _net(nn.Linear(4, 7), nn.Tanh(), nn.Linear(7, 3)), F.mse_loss, (9, 4),
                lambda n: torch.randn(n, 3, dtype=torch.float64)),
    "linear-root": (lambda: nn.Linear(4, 2).double(), F.mse_loss, (9, 4),
                    lambda n: torch.randn(n, 2, dtype=torch.float64)),
    "cross-entropy": (lambda: _net(nn.Linear(4, 5), nn.GELU(), nn.Linear(5, 3)), F.cross_entropy, (9, 4),
                      lambda n: torch.randint(0, 3, (n,))),
    "log-softmax-nll": (lambda: _net(nn.Linear(4, 5), nn.SiLU(), nn.Linear(5, 3), nn.LogSoftmax(dim=1)),
                        F.nll_loss, (9, 4), lambda n: torch.randint(0, 3, (n,))),
    "nested-flatten-no-bias": (lambda: _net(nn.Flatten(), nn.Sequential(nn.Linear(6, 5, bias=False), nn.ELU()),
                                            nn.Dropout(0.5), nn.Linear(5, 1)), F.mse_loss, (9, 2, 3),
                               lambda n: torch.randn(n, 1, dtype=torch.float64)),
    "frozen-first-layer": (_frozen_first, F.mse_loss, (9, 4), lambda n: torch.randn(n, 2, dtype=torch.float64)),
    "only-a-bias": (_only_a_bias, F.mse_loss, (9, 4), lambda n: torch.randn(n, 1, dtype=torch.float64)),
    "float32": (lambda: _net(nn.Linear(4, 8), nn.Softplus(), nn.Linear(8, 2), dtype=torch.float32), F.l1_loss,
                (9, 4), lambda n: torch.randn(n, 2)),
    "sum-reduced-loss": (lambda: _net(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2)),
                         lambda o, t: F.mse_loss(o, t, reduction="sum"), (9, 4),
                         lambda n: torch.randn(n, 2, dtype=torch.float64)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_by_layer_gradients_equal_each_sample_alone(name):
    make, loss, shape, make_y = CASES[name]
    model = make()
    dtype = next(model.parameters()).dtype
    torch.manual_seed(1)
    x, y = torch.randn(*shape, dtype=dtype), make_y(shape[0])
    fm = functional(model, loss)
    assert linear_plan(model, fm.layout.names) is not None, "the layer-by-layer path must be taken here"
    got = fm.per_sample_grads(x, y)
    want = reference_gradients(model, loss, x, y)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-11, "atol": 1e-12}
    torch.testing.assert_close(got, want, **tol)
    assert len(fm.per_sample_grad_parts(x, y)) == 1  # one matrix, written in place


class _Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x - x.mean(dim=0))  # samples interact: the batched pass would be wrong


class _Tanh(nn.Tanh):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x - x.mean(dim=0))


def _tied() -> nn.Module:
    net = _net(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
    net[2].weight = net[0].weight
    return net


def _twice() -> nn.Module:
    layer = nn.Linear(3, 3).double()
    return nn.Sequential(layer, nn.Tanh(), layer).eval()


def _hooked() -> nn.Module:
    net = _net(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    net[0].register_forward_hook(lambda m, a, out: out * 2)
    return net


FALLBACKS = {
    "custom-forward": lambda: _Custom().double(),
    "subclassed-activation": lambda: _net(nn.Linear(3, 4), _Tanh(), nn.Linear(4, 3)),
    "batch-norm": lambda: _net(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)),
    "softmax-over-the-batch": lambda: _net(nn.Linear(3, 4), nn.Softmax(dim=0), nn.Linear(4, 3)),
    "tied-weights": _tied,
    "one-layer-twice": _twice,
    "forward-hook": _hooked,
}


@pytest.mark.parametrize("name", sorted(FALLBACKS))
def test_networks_where_samples_may_interact_keep_the_per_sample_path(name):
    model = FALLBACKS[name]()
    fm = functional(model, F.mse_loss)
    assert linear_plan(model, fm.layout.names) is None
    in_features = 4 if name == "custom-forward" else 3
    torch.manual_seed(2)
    x = torch.randn(6, in_features, dtype=torch.float64)
    y = torch.randn(6, 2 if name == "custom-forward" else 3, dtype=torch.float64)
    torch.testing.assert_close(fm.per_sample_grads(x, y), reference_gradients(model, F.mse_loss, x, y),
                               rtol=1e-11, atol=1e-12)


def test_parameterless_batch_statistics_are_not_mistaken_for_a_per_sample_layer():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, affine=False), nn.Linear(4, 3)).train()
    assert linear_plan(model, ParameterLayout.from_module(model, "test").names) is None


def test_a_linear_layer_on_a_sequence_falls_back_when_it_runs():
    """A linear layer getting a 3-D input (a sequence per sample) is only seen in the forward pass."""
    model = _net(nn.Linear(5, 3), nn.Tanh(), nn.Flatten(), nn.Linear(12, 1))
    fm = functional(model, F.mse_loss)
    assert linear_plan(model, fm.layout.names) is not None
    torch.manual_seed(3)
    x, y = torch.randn(6, 4, 5, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64)
    torch.testing.assert_close(fm.per_sample_grads(x, y), reference_gradients(model, F.mse_loss, x, y),
                               rtol=1e-11, atol=1e-12)


def test_dropout_in_training_mode_is_still_refused_with_advice():
    model = _net(nn.Linear(3, 4), nn.Dropout(0.3), nn.Linear(4, 1)).train()
    fm = functional(model, F.mse_loss)
    with pytest.raises(InvalidModelError, match=r"model\.eval\(\)"):
        fm.per_sample_grads(torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64))


def test_a_module_switched_to_training_mode_after_construction_is_planned_again():
    model = _net(nn.Linear(3, 4), nn.Dropout(0.3), nn.Linear(4, 1))
    fm = functional(model, F.mse_loss)
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    fm.per_sample_grads(x, y)
    model.train()
    with pytest.raises(InvalidModelError, match=r"model\.eval\(\)"):
        fm.per_sample_grads(x, y)


def test_non_finite_samples_are_named_on_the_layer_by_layer_path():
    model = _net(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    fm = functional(model, F.mse_loss)
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64)
    x[4, 1] = float("nan")
    with pytest.raises(InvalidDataError, match="sample 14 "):
        fm.per_sample_grads(x, y, start=10)


def test_a_gradient_overflowing_from_finite_factors_is_refused_on_both_paths():
    """Loss and output finite, gradient δ·a = 20 x 1e38 overflows float32: both paths refuse it."""
    for hooked in (False, True):
        layer = nn.Linear(1, 1)
        with torch.no_grad():
            layer.weight.zero_()
            layer.bias.zero_()
        model = nn.Sequential(layer).eval()
        if hooked:  # forces the vmap path
            model.register_forward_pre_hook(lambda m, a: None)
        fm = functional(model, F.mse_loss)
        assert (linear_plan(model, fm.layout.names) is None) is hooked
        x = torch.tensor([[1.0], [1e38], [2.0]])
        y = torch.full((3, 1), -10.0)
        with pytest.raises(InvalidDataError, match="sample 1 "):
            fm.per_sample_grads(x, y)
        fm.per_sample_grads(x[[0, 2]], y[[0, 2]])  # the other samples are fine


def test_allocator_settings_that_map_large_blocks_fresh_are_recognised():
    assert allocator_maps_fresh(2**24, {"MALLOC_TRIM_THRESHOLD_": "65536"})
    assert allocator_maps_fresh(2**24, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=65536"})
    assert allocator_maps_fresh(2**24, {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=0x100000"})
    assert not allocator_maps_fresh(2**24, {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=0x2000000"})
    assert not allocator_maps_fresh(2**16, {"MALLOC_TRIM_THRESHOLD_": "65536"})
    assert not allocator_maps_fresh(2**24, {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"})
    assert not allocator_maps_fresh(2**24, {"MALLOC_MMAP_THRESHOLD_": "not a number"})
    assert not allocator_maps_fresh(2**24, {})


def test_a_matrix_on_its_own_mapping_outlives_its_tensor_in_numpy_and_pickles(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    t = empty_matrix(1024, 2048, dtype=torch.float32, device="cpu")  # 8 MiB
    t.fill_(3.0)
    a = t.numpy()
    del t
    gc.collect()
    a[0, 0] = 5.0
    assert float(a.sum()) == 3.0 * a.size + 2.0
    back = pickle.loads(pickle.dumps(a))
    assert back.flags.writeable and float(back.sum()) == float(a.sum())
    tensor = torch.from_numpy(a)
    assert torch.equal(tensor @ torch.ones(2048, 1), torch.full((1024, 1), 3.0 * 2048).index_put_(
        (torch.tensor([0]), torch.tensor([0])), torch.tensor(3.0 * 2047 + 5.0)))


def test_scratch_matrices_are_reused_per_thread_only_where_allocations_are_fresh(monkeypatch):
    import threading

    from dvl_dask.influence.torch import _memory

    def kept_in_a_new_thread() -> bool:
        kept = []

        def run() -> None:
            _memory.scratch_matrix(256, 1024, dtype=torch.float32, device="cpu")
            kept.append(hasattr(_memory._SCRATCH, "buffer"))

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        return kept[0]

    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                 "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    assert not kept_in_a_new_thread()  # a plain process: the heap reuses freed memory already

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    assert kept_in_a_new_thread()
    first = _memory.scratch_matrix(256, 1024, dtype=torch.float32, device="cpu")
    again = _memory.scratch_matrix(128, 512, dtype=torch.float64, device="cpu")
    assert first.data_ptr() == again.data_ptr() and again.shape == (128, 512) and again.dtype == torch.float64
    other = []
    thread = threading.Thread(target=lambda: other.append(
        _memory.scratch_matrix(256, 1024, dtype=torch.float32, device="cpu").data_ptr()))
    thread.start()
    thread.join()
    assert other[0] != first.data_ptr()  # each thread its own
    rows = _memory.SCRATCH_LIMIT // 4096 + 1  # larger than the limit: never kept
    big = _memory.scratch_matrix(rows, 1024, dtype=torch.float32, device="cpu")
    assert big.data_ptr() != first.data_ptr()
    assert _memory.scratch_matrix(256, 1024, dtype=torch.float32, device="cpu").data_ptr() == first.data_ptr()


def test_recomputed_influences_through_the_scratch_buffer_equal_stored_ones(monkeypatch):
    """Chunks of training gradients share one scratch buffer; every product is taken before it is overwritten."""
    import threading

    from dvl_dask.influence.torch import DirectInfluence, _memory, _model_base

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1024")  # every chunk's gradients count as large
    monkeypatch.setattr(_model_base, "GRAD_CHUNK", 7)
    model = _net(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2), dtype=torch.float32)
    torch.manual_seed(4)
    x, y = torch.randn(40, 4), torch.randn(40, 2)
    infl = DirectInfluence(model, F.mse_loss, regularization=0.1).fit((x, y))
    factors = infl.influence_factors(x[:5], y[:5])
    stored = factors @ infl.per_sample_gradients(x, y).T
    result = {}

    def run() -> None:  # a new thread: no scratch buffer yet
        result["values"] = infl.influences_from_factors(factors, x, y)
        result["kept"] = _memory._SCRATCH.buffer.numel()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert result["kept"] >= 7 * 4 * (4 * 16 + 16 + 16 * 2 + 2)
    torch.testing.assert_close(result["values"], stored, rtol=1e-5, atol=1e-6)


_ACTIVATIONS = (nn.Tanh, nn.ReLU, nn.GELU, nn.Sigmoid, nn.Softplus, nn.Identity, nn.ELU, nn.SiLU)


@settings(max_examples=30, deadline=None)
@given(
    widths=st.lists(st.integers(1, 6), min_size=2, max_size=4),
    activations=st.lists(st.sampled_from(_ACTIVATIONS), min_size=3, max_size=3),
    biases=st.lists(st.booleans(), min_size=3, max_size=3),
    frozen=st.lists(st.booleans(), min_size=3, max_size=3),
    n=st.integers(1, 9),
    classify=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_networks_of_linear_layers_match_each_sample_alone(widths, activations, biases, frozen, n, classify,
                                                                   seed):
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    linears = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        linears.append(nn.Linear(a, b, bias=biases[i]))
        layers += [linears[-1], activations[i]()]
    model = nn.Sequential(*layers[:-1]).double().eval()  # ends with a linear layer
    for layer, freeze in zip(linears, frozen):
        layer.requires_grad_(not freeze)
    if not any(q.requires_grad for q in model.parameters()):
        linears[-1].requires_grad_(True)
    x = torch.randn(n, widths[0], dtype=torch.float64)
    if classify:
        loss, y = F.cross_entropy, torch.randint(0, widths[-1], (n,))
    else:
        loss, y = F.mse_loss, torch.randn(n, widths[-1], dtype=torch.float64)
    fm = functional(model, loss)
    assert linear_plan(model, fm.layout.names) is not None
    torch.testing.assert_close(fm.per_sample_grads(x, y), reference_gradients(model, loss, x, y), rtol=1e-10,
                               atol=1e-12)


# -- per-sample output Jacobians (Gauss-Newton curvature) -------------------------------------------


def reference_output_jacobians(model: nn.Module, names, x: torch.Tensor) -> torch.Tensor:
    """``∂oᵢ/∂θ`` of each sample alone (a batch of one) for the parameters ``names``, with torch.func."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    params.update({n: b for n, b in model.named_buffers()})

    def sample_output(block, xi):
        return functional_call(model, {**params, **block}, (xi.unsqueeze(0),)).reshape(-1)

    from torch.func import jacrev

    jac = vmap(jacrev(sample_output), in_dims=(None, 0))({n: params[n] for n in names}, x)
    return torch.cat([jac[n].reshape(len(x), jac[n].shape[1], -1) for n in names], dim=2)


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_by_layer_output_jacobians_equal_each_sample_alone(name, monkeypatch):
    import dvl_dask.influence.torch._functional as functional_module

    make, loss, shape, _ = CASES[name]
    model = make()
    dtype = next(model.parameters()).dtype
    torch.manual_seed(3)
    x = torch.randn(*shape, dtype=dtype)
    fm = functional(model, loss)
    taken = []
    original = functional_module.linear_output_jacobians

    def watched(*args, **kwargs):
        out = original(*args, **kwargs)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(functional_module, "linear_output_jacobians", watched)
    # The whole layout, every layer's parameters alone (block_structure="layer"), and a block mapped across
    # layers (the first and the last parameter).
    names = fm.layout.names
    layouts = [fm.layout, fm.layout.sub([names[0], names[-1]])]
    layouts += [fm.layout.sub([n for n in names if n.rpartition(".")[0] == layer])
                for layer in dict.fromkeys(n.rpartition(".")[0] for n in names)]
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-11, "atol": 1e-12}
    for layout in layouts:
        got = fm.per_sample_output_jacobian(layout, x)
        torch.testing.assert_close(got, reference_output_jacobians(model, layout.names, x), **tol)
    assert taken and all(taken), "the layer-by-layer path must be taken here"


@pytest.mark.parametrize("name", sorted(FALLBACKS))
def test_output_jacobians_where_samples_may_interact_keep_the_per_sample_path(name):
    model = FALLBACKS[name]()
    fm = functional(model, F.mse_loss)
    torch.manual_seed(4)
    x = torch.randn(5, 4 if name == "custom-forward" else 3, dtype=torch.float64)
    torch.testing.assert_close(fm.per_sample_output_jacobian(fm.layout, x),
                               reference_output_jacobians(model, fm.layout.names, x), rtol=1e-11, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(1, 5), min_size=2, max_size=4),
    activations=st.lists(st.sampled_from(_ACTIVATIONS), min_size=3, max_size=3),
    biases=st.lists(st.booleans(), min_size=3, max_size=3),
    n=st.integers(1, 7),
    seed=st.integers(0, 2**16),
)
def test_random_networks_output_jacobians_match_each_sample_alone(widths, activations, biases, n, seed):
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers += [nn.Linear(a, b, bias=biases[i]), activations[i]()]
    model = nn.Sequential(*layers[:-1]).double().eval()
    fm = functional(model, F.mse_loss)
    assert linear_plan(model, fm.layout.names) is not None
    x = torch.randn(n, widths[0], dtype=torch.float64)
    torch.testing.assert_close(fm.per_sample_output_jacobian(fm.layout, x),
                               reference_output_jacobians(model, fm.layout.names, x), rtol=1e-10, atol=1e-12)
