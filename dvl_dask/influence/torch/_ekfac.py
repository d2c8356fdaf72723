"""EK-FAC: Kronecker-factored Gauss–Newton blocks per nn.Linear layer, with eigenvalue correction."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap
from torch.utils.data import DataLoader

from ...errors import InvalidModelError
from ...validation import check_positive_int, keyword_aliases
from ._data import iter_batches
from ._functional import FunctionalModel, LossFn
from ._linalg import safe_eigh
from ._model_base import TorchInfluenceFunctionModel

__all__ = ["EkfacInfluence"]


@dataclass(frozen=True)
class _Layer:
    """An nn.Linear layer with trainable parameters and where they sit in the flat vector."""

    name: str
    in_features: int
    out_features: int
    weight: tuple[int, int] | None  # (start, stop) in the flat vector, None when frozen
    bias: tuple[int, int] | None

    @property
    def input_dim(self) -> int:
        """Size of the (augmented) input factor: features, plus one for a trainable bias."""
        return (self.in_features if self.weight else 0) + (1 if self.bias else 0)


class EkfacInfluence(TorchInfluenceFunctionModel):
    r"""Eigenvalue-corrected Kronecker-factored curvature (George et al., 2018; Grosse et al., 2023).

    For every ``nn.Linear`` layer with input ``a`` (augmented with a 1 for a
    trainable bias) and output ``s``, its block of the Gauss–Newton matrix

    .. math::

        G_l = \frac{1}{n} \sum_i (a_i a_i^T) \otimes (J_i^T Λ_i J_i)

    (``Λᵢ`` the Hessian of the per-sample loss w.r.t. the model output, ``Jᵢ``
    the Jacobian of the output w.r.t. ``s``) is approximated by ``A ⊗ S`` with
    ``A = mean aaᵀ`` and ``S = mean JᵀΛJ``. In the eigenbasis ``Q_S ⊗ Q_A`` of
    that product, the diagonal is then refitted to the data (eigenvalue
    correction), giving ``(Q_S ⊗ Q_A) diag(Λ*) (Q_S ⊗ Q_A)ᵀ``; its inverse
    (plus ``λI``) is applied layer by layer. Cross-layer curvature is
    ignored (block-diagonal by layer). ``Λᵢ`` is computed exactly and factored
    as ``Λᵢ = RᵢRᵢᵀ``, so ``S`` needs one extra backward pass per model
    output dimension; this keeps the approximation exact for a single linear
    layer with MSE loss, where the Hessian is exactly ``A ⊗ (2/m)I``.

    Parameters
    ----------
    model : nn.Module
        A trained model whose trainable parameters all belong to
        ``nn.Linear`` layers, each applied once per forward pass to inputs of
        shape ``(batch, features)``, and whose samples are processed
        independently (no batch-norm in training mode).
    loss : callable
        Mean-reduced loss.
    regularization : float
        ``λ ≥ 0`` added to the corrected eigenvalues; must make them all
        positive (zero eigenvalues appear with dead units or constant inputs).
    eigenvalue_correction : bool
        True (default) for EK-FAC; False for plain K-FAC eigenvalues
        ``λ_S ⊗ λ_A``.
    max_factor_dim : int
        Largest Kronecker factor (``in_features + 1`` or ``out_features``)
        accepted. Each factor is a dense ``d x d`` eigendecomposition; larger
        layers raise :class:`~dvl_dask.errors.InvalidModelError` at
        construction. If ``eigh`` fails on the model's device it is retried in
        float64 on the CPU.
    """

    @keyword_aliases(hessian_regularization="regularization", update_diagonal="eigenvalue_correction")
    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        *,
        regularization: float = 0.0,
        eigenvalue_correction: bool = True,
        max_factor_dim: int = 8192,
    ) -> None:
        super().__init__(model, loss)
        self.regularization = self._check_regularization(regularization, positive=False)
        self.eigenvalue_correction = bool(eigenvalue_correction)
        self.max_factor_dim = check_positive_int(max_factor_dim, "max_factor_dim", self._owner)
        self._layers = self._find_layers()
        self._factors: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    # -- structure ---------------------------------------------------------------------

    def _find_layers(self) -> list[_Layer]:
        offsets = self._layout.offsets()
        layers, covered = [], set()
        for name, module in self.model.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            prefix = f"{name}." if name else ""
            w, b = offsets.get(f"{prefix}weight"), offsets.get(f"{prefix}bias")
            if w is None and b is None:
                continue
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
            owners = dict(self.model.named_modules())
            kinds = sorted({type(owners.get(n.rpartition(".")[0], self.model)).__name__ for n in unsupported})
            raise InvalidModelError(
                f"{self._owner} supports trainable parameters of nn.Linear layers only. Got {unsupported} "
                f"in {kinds}. To fix, freeze them (requires_grad_(False)) or use another influence model."
            )
        return layers

    # -- fitting -----------------------------------------------------------------------

    def _capture(
        self, fm: FunctionalModel, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer: augmented inputs ``(n, d_in)`` and output pseudo-gradients ``(n, m, d_out)``.

        The pseudo-gradients are ``Jᵀ Rᵢ[:, c]`` for the columns ``c`` of a square
        root of the output Hessian, so that ``Σ_c g gᵀ = JᵀΛᵢJ``.
        """
        modules = dict(self.model.named_modules())
        inputs: dict[str, torch.Tensor] = {}
        outputs: dict[str, torch.Tensor] = {}

        def hook_for(name: str):
            def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
                if name in inputs:
                    raise InvalidModelError(
                        f"{self._owner}: layer {name!r} is called more than once per forward pass; EK-FAC "
                        "needs each nn.Linear to be applied once."
                    )
                if args[0].ndim != 2:
                    raise InvalidModelError(
                        f"{self._owner}: layer {name!r} received input of shape {tuple(args[0].shape)}; EK-FAC "
                        "supports nn.Linear layers applied to (batch, features) inputs only."
                    )
                inputs[name], outputs[name] = args[0].detach(), out

            return hook

        handles = [modules[layer.name].register_forward_hook(hook_for(layer.name)) for layer in self._layers]
        try:
            params = {k: v.clone().requires_grad_(True) for k, v in fm.params.items()}
            with torch.enable_grad():
                out = functional_call(self.model, {**params, **fm.state}, (x,))
        finally:
            for h in handles:
                h.remove()
        n = x.shape[0]
        out_flat = out.detach().reshape(n, -1)

        def sample_loss(oi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            return self.loss(oi.reshape(1, *out.shape[1:]), yi.unsqueeze(0))

        h_out = vmap(jacrev(jacrev(sample_loss)))(out_flat, y)  # (n, m, m)
        evals, evecs = torch.linalg.eigh((h_out + h_out.transpose(1, 2)) / 2)
        root = evecs * torch.sqrt(torch.clamp(evals, min=0.0)).unsqueeze(1)  # Λᵢ = R Rᵀ
        targets = [outputs[layer.name] for layer in self._layers]
        columns = []
        for c in range(root.shape[2]):
            g = torch.autograd.grad(
                out, targets, grad_outputs=root[:, :, c].reshape(out.shape), retain_graph=c + 1 < root.shape[2]
            )
            columns.append([gi.detach() for gi in g])
        acts = []
        for layer in self._layers:
            a = inputs[layer.name]
            parts = ([a] if layer.weight else []) + ([torch.ones_like(a[:, :1])] if layer.bias else [])
            acts.append(torch.cat(parts, dim=1))
        pseudo = [torch.stack([col[i] for col in columns], dim=1) for i in range(len(self._layers))]
        return acts, pseudo

    def _fit(self, fm: FunctionalModel, loader: DataLoader) -> None:
        a_fac = [torch.zeros((ly.input_dim,) * 2, dtype=self.dtype, device=self.device) for ly in self._layers]
        s_fac = [torch.zeros((ly.out_features,) * 2, dtype=self.dtype, device=self.device) for ly in self._layers]
        n = 0
        for x, y in iter_batches(loader, self._owner):
            acts, pseudo = self._capture(fm, x.to(self.device), y.to(self.device))
            for i, (a, g) in enumerate(zip(acts, pseudo)):
                a_fac[i] += a.T @ a
                s_fac[i] += torch.einsum("nco,ncp->op", g, g)
            n += x.shape[0]
        bases = []
        for layer, a, s in zip(self._layers, a_fac, s_fac):
            ev_a, q_a = safe_eigh(a / n, f"the input factor of layer {layer.name!r}")
            ev_s, q_s = safe_eigh(s / n, f"the output factor of layer {layer.name!r}")
            bases.append((q_a, q_s, torch.outer(torch.clamp(ev_s, min=0), torch.clamp(ev_a, min=0))))
        if self.eigenvalue_correction:
            corrected = [torch.zeros_like(lam) for _, _, lam in bases]
            for x, y in iter_batches(loader, self._owner):
                acts, pseudo = self._capture(fm, x.to(self.device), y.to(self.device))
                for i, (a, g) in enumerate(zip(acts, pseudo)):
                    q_a, q_s, _ = bases[i]
                    corrected[i] += torch.einsum("nco,nk->ok", (g @ q_s) ** 2, (a @ q_a) ** 2)
            bases = [(q_a, q_s, lam / n) for (q_a, q_s, _), lam in zip(bases, corrected)]
        factors = []
        for layer, (q_a, q_s, lam) in zip(self._layers, bases):
            lam = lam + self.regularization
            floor = torch.finfo(self.dtype).eps * max(float(lam.max()), 1.0)
            if bool((lam <= floor).any()):
                raise InvalidModelError(
                    f"{self._owner}: layer {layer.name!r} has {int((lam <= floor).sum())} (near-)zero "
                    f"eigenvalues (dead units, constant or collinear inputs) with regularization="
                    f"{self.regularization}. To fix, pass a positive regularization, e.g. 1e-3 x "
                    f"{float(lam.mean()):.3g} (the mean eigenvalue)."
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
