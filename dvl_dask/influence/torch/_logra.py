"""LoGra-style attribution: per-layer Kronecker projections, without per-sample gradients."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.func import functional_call

from ...errors import InvalidModelError, InvalidParameterError
from ...validation import check_positive_int
from .._mode import BlockMode
from ._functional import FunctionalModel, LossFn, recording_layers
from ._projection import RandomProjection
from ._trak import TrakInfluence

__all__ = ["LograInfluence"]


class _LinearShape(NamedTuple):
    """Sizes of an nn.Linear layer."""

    in_features: int
    out_features: int


class LograInfluence(TrakInfluence):
    r"""Random-projection attribution with one Kronecker-structured projection per ``nn.Linear`` layer.

    The per-sample gradient of a linear layer is ``Σ_t g_t a_tᵀ`` (output
    gradients ``g``, inputs ``a`` augmented with a 1 for the bias, summed over
    tokens). Projecting it with ``P_out ⊗ P_in`` gives
    ``Σ_t (P_outᵀ g_t)(P_inᵀ a_t)ᵀ``, so inputs and output gradients are
    projected *before* their product (LoGra, Choe et al. 2024): the
    per-sample gradient (``p`` numbers a sample) and the ``p x k`` matrix are
    never formed; a layer costs ``O(d_in k_in + d_out k_out + k_in k_out)``
    per token. The projected gradients (``k_out x k_in`` a layer) then enter
    :class:`TrakInfluence`'s machinery with the curvature (empirical or
    sampled true Fisher) solved per layer: same factors/gradients interface, calculators, zarr
    store of training gradients, :meth:`train_influences`.

    With orthogonal factors and ``input_dim >= in_features + 1``,
    ``output_dim >= out_features`` nothing is lost: the result equals the
    per-layer empirical-Fisher influence.

    Parameters
    ----------
    model : nn.Module
        A trained model whose trainable parameters all belong to ``nn.Linear``
        layers (weight trainable), each applied once per forward pass; inputs
        may carry token dimensions ``(batch, ..., features)``.
    loss : callable
        Mean-reduced loss ``loss(output, target) -> scalar``.
    input_dim, output_dim : int
        ``k_in`` and ``k_out`` (default 16 each: 256 numbers a layer).
    projection : {"gaussian", "rademacher", "orthogonal"}
        Distribution of the factors ``P_in`` and ``P_out``.
    seed : int
        Seed of the factors.
    regularization : float
        ``λ ≥ 0`` added to each layer's projected curvature.
    curvature : {"empirical_fisher", "gauss_newton"}
        ``"empirical_fisher"`` (default): the projected loss gradients of the
        training data. ``"gauss_newton"``: the true Fisher, estimated from
        the projected gradients of ``fisher_samples`` pseudo-targets per
        sample drawn from the model's predictive distribution (categorical
        for cross-entropy, Gaussian for MSE; equal to the Gauss–Newton matrix
        in expectation).
    fisher_samples : int
        Pseudo-targets per sample with ``curvature="gauss_newton"`` (default 1).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        *,
        input_dim: int = 16,
        output_dim: int = 16,
        projection: str = "gaussian",
        seed: int = 0,
        regularization: float = 0.0,
        curvature: str = "empirical_fisher",
        fisher_samples: int = 1,
    ) -> None:
        k_in = check_positive_int(input_dim, "input_dim", type(self).__name__)
        k_out = check_positive_int(output_dim, "output_dim", type(self).__name__)
        super().__init__(
            model,
            loss,
            projection_dim=k_in * k_out,
            projection=projection,
            seed=seed,
            regularization=regularization,
            curvature=curvature,
            block_structure=BlockMode.Layer,
        )
        self.input_dim, self.output_dim = k_in, k_out
        self.fisher_samples = check_positive_int(fisher_samples, "fisher_samples", self._owner)
        self._linear = self._find_linear_layers()
        self._factors_in_out: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _find_linear_layers(self) -> list[tuple[str, _LinearShape, bool]]:
        modules = dict(self._net.named_modules())
        layers = []
        for block in self._blocks:
            name = "" if block.name == "<root>" else block.name
            module = modules.get(name)
            prefix = f"{name}." if name else ""
            names = set(block.layout.names)
            if not isinstance(module, nn.Linear) or f"{prefix}weight" not in names:
                raise InvalidModelError(
                    f"{self._owner} supports trainable parameters of nn.Linear layers (with a trainable weight) "
                    f"only. Got {sorted(names)} in {type(module).__name__}. To fix, freeze them or use "
                    "TrakInfluence (dense projections of any parameters)."
                )
            # Sizes, not the module: computations run through the private copy taken by fit.
            layers.append((name, _LinearShape(module.in_features, module.out_features), f"{prefix}bias" in names))
        return layers

    def _make_projections(self) -> None:
        factors = []
        for i, (_, module, bias) in enumerate(self._linear):
            d_in = module.in_features + (1 if bias else 0)
            seed = self.seed * 1_000_003 + 2 * i
            p_in = RandomProjection(d_in, self.input_dim, self.projection, seed, dtype=self.dtype, device=self.device)
            p_out = RandomProjection(
                module.out_features, self.output_dim, self.projection, seed + 1, dtype=self.dtype, device=self.device
            )
            factors.append((p_in.dense(), p_out.dense()))
        self._factors_in_out = factors
        self._projections = []
        self._make_generator()

    def _features(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._projected(x, lambda out: [self.loss(out, y) * x.shape[0]])[0]

    def _add_gauss_newton(self, curv: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> None:
        from ._fisher import sample_output_gradients

        generator = self._generator

        def seeds(out: torch.Tensor) -> list[torch.Tensor]:
            draws = sample_output_gradients(self.loss, out.detach(), self.fisher_samples, generator, None, self._owner)
            return [(out * d).sum() for d in draws]

        k = self.projection_dim
        for feats in self._projected(x, seeds):
            for j in range(len(curv)):
                phi = feats[:, j * k : (j + 1) * k]
                curv[j] += phi.T @ phi

    def _make_generator(self) -> None:
        self._generator = torch.Generator(device=self.device).manual_seed(self.seed)

    def _projected(self, x: torch.Tensor, objectives: Any) -> list[torch.Tensor]:
        """Projected per-sample gradients of each scalar in ``objectives(output)``, one ``(n, k)`` per scalar.

        Each scalar must be a sum over samples of per-sample terms (n x a mean-reduced loss).
        """
        fm = self._fms[0]
        names, why = [name for name, _, _ in self._linear], "each nn.Linear must be applied once."
        with recording_layers(self._net, names, self._owner, why) as (inputs, outputs), torch.enable_grad():
            params = {k: v.detach().requires_grad_(True) for k, v in fm.params.items()}  # views, no copies
            out = functional_call(self._net, {**params, **fm.state}, (x,))
            targets = [outputs[name] for name in names]
            scalars = objectives(out)
            all_grads = [
                torch.autograd.grad(s, targets, retain_graph=i + 1 < len(scalars)) for i, s in enumerate(scalars)
            ]
        n = x.shape[0]
        acts = []
        for (name, module, bias), (p_in, _) in zip(self._linear, self._factors_in_out):
            a = inputs[name].reshape(n, -1, module.in_features)
            if bias:
                a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
            acts.append(a @ p_in)
        result = []
        for grads in all_grads:
            parts = []
            for (_, module, _), g, a, (_, p_out) in zip(self._linear, grads, acts, self._factors_in_out):
                g = g.detach().reshape(n, -1, module.out_features)
                parts.append(torch.einsum("nto,nti->noi", g @ p_out, a).reshape(n, -1))
            result.append(torch.cat(parts, dim=1))
        return result

    def _parameter_factors(self, factors: torch.Tensor) -> Iterator[tuple[FunctionalModel, torch.Tensor]]:
        raise InvalidParameterError(
            f"{self._owner} supports mode='up' only. To fix, use TrakInfluence for perturbation influences."
        )

    def _store_key(self, loader: Any) -> str:
        from ...keys import object_token

        return object_token(super()._store_key(loader), self.input_dim, self.output_dim, self.fisher_samples)
