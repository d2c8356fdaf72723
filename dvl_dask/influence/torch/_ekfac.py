"""EK-FAC: Kronecker-factored Gauss–Newton blocks per nn.Linear / nn.Conv2d layer, with eigenvalue correction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap
from torch.utils.data import DataLoader

from ...errors import InvalidModelError, InvalidParameterError
from ...validation import check_bool, check_positive_int
from ._data import iter_batches
from ._fisher import sample_output_gradients
from ._functional import FunctionalModel, LossFn, recording_layers
from ._linalg import safe_eigh
from ._model_base import TorchInfluenceFunctionModel

__all__ = ["EkfacInfluence"]


@dataclass(frozen=True)
class _ConvGeometry:
    """What unfolding the input of an nn.Conv2d needs (values, not the module: the fit uses a private copy)."""

    kernel_size: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[int, ...]
    stride: tuple[int, ...]

    @classmethod
    def of(cls, conv: nn.Conv2d) -> _ConvGeometry:
        return cls(tuple(conv.kernel_size), tuple(conv.dilation), tuple(conv.padding), tuple(conv.stride))


@dataclass(frozen=True)
class _Layer:
    """An nn.Linear or nn.Conv2d layer with trainable parameters and where they sit in the flat vector.

    For a convolution, ``in_features`` is the length of one unfolded input
    patch (``C_in x kh x kw``) and ``out_features`` the output channels.
    """

    name: str
    in_features: int
    out_features: int
    weight: tuple[int, int] | None  # (start, stop) in the flat vector, None when frozen
    bias: tuple[int, int] | None
    conv: _ConvGeometry | None = None

    def tokens(self, inp: torch.Tensor, owner: str) -> torch.Tensor:
        """The layer's input as ``(n, T, in_features)``: patches of a convolution, tokens of a sequence."""
        n = inp.shape[0]
        if self.conv is None:
            return inp.reshape(n, -1, inp.shape[-1])
        if inp.ndim != 4:
            raise InvalidModelError(
                f"{owner}: layer {self.name!r} received input of shape {tuple(inp.shape)}; EK-FAC supports "
                "nn.Conv2d layers applied to (batch, channels, height, width) inputs only."
            )
        c = self.conv
        patches = nn.functional.unfold(inp, c.kernel_size, dilation=c.dilation, padding=c.padding, stride=c.stride)
        return patches.transpose(1, 2)

    def output_tokens(self, grad: torch.Tensor) -> torch.Tensor:
        """Gradients w.r.t. the layer's output as ``(n, T, out_features)``."""
        n = grad.shape[0]
        if self.conv is None:
            return grad.reshape(n, -1, grad.shape[-1])
        return grad.reshape(n, self.out_features, -1).transpose(1, 2)

    @property
    def input_dim(self) -> int:
        """Size of the (augmented) input factor: features, plus one for a trainable bias."""
        return (self.in_features if self.weight else 0) + (1 if self.bias else 0)


class EkfacInfluence(TorchInfluenceFunctionModel, aliases={"update_diagonal": "eigenvalue_correction"}):
    r"""Eigenvalue-corrected Kronecker-factored curvature (George et al., 2018; Grosse et al., 2023).

    For every ``nn.Linear`` layer with input ``a`` (augmented with a 1 for a
    trainable bias) and output ``s``, its block of the Gauss–Newton matrix

    .. math::

        G_l = \frac{1}{n} \sum_i (a_i a_i^T) \otimes (J_i^T Λ_i J_i)

    (``Λᵢ`` the Hessian of the per-sample loss w.r.t. the model output, ``Jᵢ``
    the Jacobian of the output w.r.t. ``s``) is approximated by ``A ⊗ S`` with
    ``A = mean aaᵀ`` and ``S = mean JᵀΛJ``. In the eigenbasis ``Q_S ⊗ Q_A`` of
    that product, the diagonal is then refitted to the per-sample gradients
    (eigenvalue correction), giving ``(Q_S ⊗ Q_A) diag(Λ*) (Q_S ⊗ Q_A)ᵀ``; its
    inverse (plus ``λI``) is applied layer by layer. Cross-layer curvature is
    ignored (block-diagonal by layer).

    Weight sharing: an ``nn.Linear`` applied to inputs with extra dimensions
    (``(batch, tokens, features)``) has its tokens flattened into the factors
    (``A`` is the mean over tokens of ``aaᵀ``, ``S`` the sum), and an
    ``nn.Conv2d`` is treated the same way with the unfolded input patches as
    tokens (KFC, Grosse & Martens 2016). The eigenvalue correction uses the
    exact per-sample gradients ``Σ_t g_t a_tᵀ``, cross-token terms included.
    A single such layer with MSE loss has an exactly Kronecker-factored
    Gauss–Newton block, so EK-FAC is exact there.

    Output curvature: by default (``fisher_samples=None``) ``Λᵢ`` is computed
    exactly and factored as ``Λᵢ = RᵢRᵢᵀ``, one backward pass per model
    output dimension (exact for a single linear layer with MSE loss, where
    the Hessian is exactly ``A ⊗ (2/m)I``). With ``fisher_samples=s``,
    ``JᵀΛJ`` is estimated by the true Fisher (Grosse et al. 2023): ``s``
    pseudo-targets per sample are drawn from the model's predictive
    distribution and their loss gradients back-propagated, ``s`` backward
    passes whatever the number of classes. Built-in predictive
    distributions: categorical for :func:`~torch.nn.functional.cross_entropy`
    (class indices or probabilities as targets) and Gaussian for
    :func:`~torch.nn.functional.mse_loss` (mean reductions, as
    ``nn.CrossEntropyLoss()`` / ``nn.MSELoss()``); pass ``target_sampler``
    for other losses.

    Parameters
    ----------
    model : nn.Module
        A trained model whose trainable parameters all belong to
        ``nn.Linear`` or ``nn.Conv2d`` layers (groups 1, zero padding given
        as numbers), each applied once per forward pass, and whose samples
        are processed independently (no batch-norm in training mode).
    loss : callable
        Mean-reduced loss.
    regularization : float
        ``λ ≥ 0`` added to the corrected eigenvalues; must make them all
        positive (zero eigenvalues appear with dead units or constant inputs)
        and their spread fit the dtype: a layer whose regularised eigenvalues
        have a condition number times the dtype's epsilon above
        ``CONDITION_LIMIT`` (1e-2; cond > 8e4 in float32) is refused at fit
        with an :class:`~dvl_dask.errors.InvalidModelError` naming a
        regularization that fits, or float64, as for every model that
        inverts a curvature.
    eigenvalue_correction : bool
        True (default) for EK-FAC; False for plain K-FAC eigenvalues
        ``λ_S ⊗ λ_A``.
    max_factor_dim : int
        Largest Kronecker factor (``in_features + 1`` or ``out_features``)
        accepted. Each factor is a dense ``d x d`` eigendecomposition; larger
        layers raise :class:`~dvl_dask.errors.InvalidModelError` at
        construction. If ``eigh`` fails on the model's device it is retried in
        float64 on the CPU.
    fisher_samples : int, optional
        Pseudo-targets drawn per training sample for the sampled (true)
        Fisher; None (default) for the exact output Hessian.
    target_sampler : callable, optional
        ``target_sampler(output, generator) -> targets`` drawing one target
        per sample from the model's predictive distribution given the
        (detached) batch output; needed with ``fisher_samples`` for losses
        other than cross-entropy and MSE.
    seed : int
        Seed of the pseudo-target draws (default 0).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        *,
        regularization: float = 0.0,
        eigenvalue_correction: bool = True,
        max_factor_dim: int = 8192,
        fisher_samples: int | None = None,
        target_sampler: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(model, loss, regularization=regularization)
        self.eigenvalue_correction = check_bool(eigenvalue_correction, "eigenvalue_correction", "EkfacInfluence")
        self.max_factor_dim = check_positive_int(max_factor_dim, "max_factor_dim", self._owner)
        self.fisher_samples = (
            None if fisher_samples is None else check_positive_int(fisher_samples, "fisher_samples", self._owner)
        )
        if target_sampler is not None and not callable(target_sampler):
            raise InvalidParameterError(
                f"The 'target_sampler' parameter of {self._owner} must be a callable (output, generator) -> "
                f"targets or None. Got {type(target_sampler).__name__}."
            )
        self.target_sampler = target_sampler
        self.seed = self._check_seed(seed)
        self._layers = self._find_layers()
        self._factors: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    # -- structure ---------------------------------------------------------------------

    def _find_layers(self) -> list[_Layer]:
        offsets = self._layout.offsets()
        layers, covered = [], set()
        for name, module in self._net.named_modules():
            if not isinstance(module, nn.Linear | nn.Conv2d):
                continue
            prefix = f"{name}." if name else ""
            w, b = offsets.get(f"{prefix}weight"), offsets.get(f"{prefix}bias")
            if w is None and b is None:
                continue
            if isinstance(module, nn.Conv2d):
                if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
                    raise InvalidModelError(
                        f"{self._owner}: convolution {name!r} has groups={module.groups}, padding="
                        f"{module.padding!r}, padding_mode={module.padding_mode!r}; EK-FAC supports nn.Conv2d "
                        "with groups=1, zero padding and numeric padding only. To fix, freeze the layer "
                        "(requires_grad_(False)) or use another influence model."
                    )
                kh, kw = module.kernel_size
                layer = _Layer(name, module.in_channels * kh * kw, module.out_channels, w, b, _ConvGeometry.of(module))
            else:
                layer = _Layer(name, module.in_features, module.out_features, w, b)
            for what, dim in (("input", layer.input_dim), ("output", layer.out_features)):
                if dim > self.max_factor_dim:
                    raise InvalidModelError(
                        f"{self._owner}: layer {name!r} has an {what} Kronecker factor of size {dim}x{dim}, "
                        f"above max_factor_dim={self.max_factor_dim} (it would need a dense eigendecomposition "
                        f"of {dim**2 * 8 / 2**30:.1f} GiB in float64). To fix, freeze the layer "
                        "(requires_grad_(False)) or raise max_factor_dim."
                    )
            layers.append(layer)
            covered.update(f"{prefix}{p}" for p, o in (("weight", w), ("bias", b)) if o is not None)
        unsupported = [n for n in self._layout.names if n not in covered]
        if unsupported:
            owners = dict(self._net.named_modules())
            kinds = sorted({type(owners.get(n.rpartition(".")[0], self._net)).__name__ for n in unsupported})
            raise InvalidModelError(
                f"{self._owner} supports trainable parameters of nn.Linear and nn.Conv2d layers only. Got "
                f"{unsupported} in {kinds}. To fix, freeze them (requires_grad_(False)) or use another "
                "influence model."
            )
        return layers

    # -- fitting -----------------------------------------------------------------------

    def _capture(
        self, fm: FunctionalModel, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer: augmented inputs ``(n, T, d_in)`` and output pseudo-gradients ``(n, c, T, d_out)``.

        With the exact output Hessian the pseudo-gradients are ``Jᵀ Rᵢ[:, c]``
        for the columns ``c`` of a square root of it, so that ``Σ_c g gᵀ =
        JᵀΛᵢJ``; with sampled targets they are the loss gradients of the
        ``c``-th draw divided by ``√s``, whose expectation of ``Σ_c g gᵀ`` is
        the same for the built-in losses.
        """
        names, why = [layer.name for layer in self._layers], "EK-FAC needs each layer to be applied once."
        with recording_layers(self._net, names, self._owner, why) as (inputs, outputs):
            params = {k: v.clone().requires_grad_(True) for k, v in fm.params.items()}
            with torch.enable_grad():
                out = functional_call(self._net, {**params, **fm.state}, (x,))
        n = x.shape[0]
        targets = [outputs[layer.name] for layer in self._layers]
        if self.fisher_samples is None:
            out_flat = out.detach().reshape(n, -1)

            def sample_loss(oi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
                return self.loss(oi.reshape(1, *out.shape[1:]), yi.unsqueeze(0))

            h_out = vmap(jacrev(jacrev(sample_loss)))(out_flat, y)  # (n, m, m)
            evals, evecs = torch.linalg.eigh((h_out + h_out.transpose(1, 2)) / 2)
            root = evecs * torch.sqrt(torch.clamp(evals, min=0.0)).unsqueeze(1)  # Λᵢ = R Rᵀ
            seeds = [root[:, :, c].reshape(out.shape) for c in range(root.shape[2])]
        else:
            seeds = sample_output_gradients(
                self.loss, out.detach(), self.fisher_samples, generator, self.target_sampler, self._owner
            )
        # All columns in one batched backward pass (vmap over the seeds), not one pass per column.
        batched = len(seeds) > 1
        grads = torch.autograd.grad(
            out, targets, grad_outputs=torch.stack(list(seeds)) if batched else seeds[0], is_grads_batched=batched
        )
        acts, pseudo = [], []
        for i, layer in enumerate(self._layers):
            a = layer.tokens(inputs[layer.name], self._owner)
            parts = ([a] if layer.weight else []) + ([torch.ones_like(a[..., :1])] if layer.bias else [])
            acts.append(torch.cat(parts, dim=2))
            g = grads[i].detach() if batched else grads[i].detach().unsqueeze(0)  # (columns, n, ...)
            pseudo.append(torch.stack([layer.output_tokens(col) for col in g.unbind(0)], dim=1))
        return acts, pseudo

    def _fit(self, fm: FunctionalModel, loader: DataLoader) -> None:
        a_fac = [torch.zeros((ly.input_dim,) * 2, dtype=self.dtype, device=self.device) for ly in self._layers]
        s_fac = [torch.zeros((ly.out_features,) * 2, dtype=self.dtype, device=self.device) for ly in self._layers]
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        n = 0
        for x, y in iter_batches(loader, self._owner):
            acts, pseudo = self._capture(fm, x.to(self.device), y.to(self.device), generator)
            for i, (a, g) in enumerate(zip(acts, pseudo)):
                # One GEMM over all samples (and tokens, and columns) of the batch per factor.
                a_rows, g_rows = a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])
                a_fac[i] += (a_rows.T @ a_rows) / a.shape[1]
                s_fac[i] += g_rows.T @ g_rows
            n += x.shape[0]
        bases = []
        for layer, a, s in zip(self._layers, a_fac, s_fac):
            ev_a, q_a = safe_eigh(a / n, f"the input factor of layer {layer.name!r}")
            ev_s, q_s = safe_eigh(s / n, f"the output factor of layer {layer.name!r}")
            bases.append((q_a, q_s, torch.outer(torch.clamp(ev_s, min=0), torch.clamp(ev_a, min=0))))
        if self.eigenvalue_correction:
            corrected = [torch.zeros_like(lam) for _, _, lam in bases]
            for x, y in iter_batches(loader, self._owner):
                acts, pseudo = self._capture(fm, x.to(self.device), y.to(self.device), generator)
                for i, (a, g) in enumerate(zip(acts, pseudo)):
                    q_a, q_s, _ = bases[i]
                    if a.shape[1] == 1:  # one token: the per-sample gradient is rank one
                        corrected[i] += torch.einsum("nco,nk->ok", (g[:, :, 0] @ q_s) ** 2, (a[:, 0] @ q_a) ** 2)
                    else:  # per-sample gradients Σ_t g_t a_tᵀ in the eigenbasis
                        rotated = torch.einsum("ncto,ntk->ncok", g @ q_s, a @ q_a)
                        corrected[i] += (rotated**2).sum(dim=(0, 1))
            bases = [(q_a, q_s, lam / n) for (q_a, q_s, _), lam in zip(bases, corrected)]
        factors = []
        for layer, (q_a, q_s, lam) in zip(self._layers, bases):
            lam = lam + self.regularization
            floor = torch.finfo(self.dtype).eps * float(lam.max())
            zeros = int((lam <= floor).sum())
            dead = f"; {zeros} (near-)zero eigenvalues: dead units, constant or collinear inputs" if zeros else ""
            self._check_conditioning(
                lam.flatten(),
                f"the regularised EK-FAC curvature of layer {layer.name!r} ({lam.numel()} Kronecker eigenvalues{dead})",
            )
            factors.append((q_a, q_s, lam))
        self._factors = factors

    # -- solving -----------------------------------------------------------------------

    def _solve(self, grads: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(grads)
        k = grads.shape[0]
        for layer, (q_a, q_s, lam) in zip(self._layers, self._factors):
            parts = []
            if layer.weight:
                parts.append(grads[:, slice(*layer.weight)].reshape(k, layer.out_features, layer.in_features))
            if layer.bias:
                parts.append(grads[:, slice(*layer.bias)].reshape(k, layer.out_features, 1))
            m = torch.cat(parts, dim=2)  # (k, out, d_in)
            m = q_s @ ((q_s.T @ m @ q_a) / lam) @ q_a.T
            if layer.weight:
                out[:, slice(*layer.weight)] = m[:, :, : layer.in_features].reshape(k, -1)
            if layer.bias:
                out[:, slice(*layer.bias)] = m[:, :, -1]
        return out
