"""TracIn: learning-rate-weighted gradient similarity summed over training checkpoints (no Hessian)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Self

import torch
from torch import nn

from ...errors import InvalidDataError, InvalidModelError, InvalidParameterError
from ...threads import uses_torch_threads
from ._data import check_tensor_pair
from ._functional import FunctionalModel, LossFn, joined
from ._model_base import FeatureInfluenceModel, _snapshot

__all__ = ["TracInInfluence", "load_checkpoint_states"]


def load_checkpoint_states(model: nn.Module, checkpoints: Any, owner: str) -> list[dict[str, torch.Tensor]]:
    """Parameter and buffer tensors of every checkpoint (a state dict or a module), checked against ``model``."""
    if isinstance(checkpoints, Mapping | nn.Module) or not isinstance(checkpoints, Sequence):
        raise InvalidParameterError(
            f"The 'checkpoints' argument of {owner} must be a list of model states (state dicts or nn.Module "
            f"objects with the architecture of the model). Got {type(checkpoints).__name__}."
        )
    if len(checkpoints) == 0:
        raise InvalidParameterError(
            f"The 'checkpoints' argument of {owner} must hold at least one model state. Got an empty list."
        )
    reference = dict(model.state_dict())
    states = []
    for c, ckpt in enumerate(checkpoints):
        if isinstance(ckpt, nn.Module):
            ckpt = ckpt.state_dict()
        if not isinstance(ckpt, Mapping):
            raise InvalidParameterError(
                f"Checkpoint {c} given to {owner} must be a state dict or an nn.Module. Got {type(ckpt).__name__}."
            )
        missing = sorted(set(reference) - set(ckpt))
        extra = sorted(set(ckpt) - set(reference))
        if missing or extra:
            raise InvalidModelError(
                f"Checkpoint {c} given to {owner} does not match the model: missing keys {missing[:5]}, "
                f"unexpected keys {extra[:5]}. Pass states of the same architecture as 'model'."
            )
        state = {}
        for name, ref in reference.items():
            t = ckpt[name]
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(ref.shape):
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise InvalidModelError(
                    f"Checkpoint {c} given to {owner}: entry {name!r} must be a tensor of shape "
                    f"{tuple(ref.shape)}. Got {got}."
                )
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise InvalidModelError(
                    f"Checkpoint {c} given to {owner}: entry {name!r} holds "
                    f"{int((~torch.isfinite(t)).sum())} NaN or infinite value(s) (a diverged training step?); "
                    "every influence computed at it would be NaN. To fix, drop that checkpoint or pass one saved "
                    "before training diverged."
                )
            state[name] = t.detach().to(device=ref.device, dtype=ref.dtype).clone()
        states.append(state)
    return states


def _check_learning_rates(learning_rates: Any, n: int, owner: str) -> list[float]:
    if isinstance(learning_rates, int | float) and not isinstance(learning_rates, bool):
        rates = [float(learning_rates)] * n
    elif isinstance(learning_rates, Sequence) and not isinstance(learning_rates, str):
        if len(learning_rates) != n:
            raise InvalidParameterError(
                f"The 'learning_rates' argument of {owner} must have one entry per checkpoint ({n}). Got "
                f"{len(learning_rates)}."
            )
        rates = []
        for r in learning_rates:
            if isinstance(r, bool) or not isinstance(r, int | float):
                raise InvalidParameterError(
                    f"The 'learning_rates' of {owner} must be numbers. Got {type(r).__name__} ({r!r})."
                )
            rates.append(float(r))
    else:
        raise InvalidParameterError(
            f"The 'learning_rates' argument of {owner} must be a positive number or a list with one positive "
            f"number per checkpoint. Got {type(learning_rates).__name__}."
        )
    for r in rates:
        if not (r > 0 and r < float("inf")):
            raise InvalidParameterError(f"The 'learning_rates' of {owner} must be positive and finite. Got {r!r}.")
    return rates


class TracInInfluence(FeatureInfluenceModel):
    r"""TracIn-CP (Pruthi et al. 2020): gradient similarity summed over training checkpoints.

    .. math::

        I(z_{test}, z) = \sum_c \eta_c\,
            \langle \nabla_\theta \ell(z_{test}; \theta_c), \nabla_\theta \ell(z; \theta_c) \rangle

    over checkpoints ``θ_c`` saved during training with learning rates
    ``η_c``. With ``normalize=True`` the gradients are scaled to unit norm
    per checkpoint (the cosine variant, robust to points with huge losses).
    No curvature is involved. As for the other models a positive value means
    that the training point helps the test point (gradient descent on it
    lowers the test loss).

    Factors are ``[η_c ĝ_c(z_test)]_c`` and per-sample gradients
    ``[ĝ_c(z)]_c`` concatenated over checkpoints, so
    :attr:`n_parameters` is ``n_checkpoints x`` the number of trainable
    parameters and the calculators and ``influence_to_zarr`` work as for
    any other model (``ĝ`` is the gradient, normalised if ``normalize``).

    Parameters
    ----------
    model : nn.Module
        The architecture (its parameter values are replaced by each
        checkpoint's). Only parameters with ``requires_grad=True`` count.
    loss : callable
        Mean-reduced loss ``loss(output, target) -> scalar``.
    normalize : bool
        Cosine variant: unit-norm gradients per checkpoint (default False).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import torch.nn.functional as F
    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
    >>> net = nn.Linear(3, 1)
    >>> states = [{k: v.clone() for k, v in net.state_dict().items()}, nn.Linear(3, 1).state_dict()]
    >>> tracin = TracInInfluence(net, F.mse_loss).fit(states, learning_rates=[0.1, 0.05])
    >>> tracin.influences(x[:2], y[:2], x, y).shape
    torch.Size([2, 8])
    """

    def __init__(self, model: nn.Module, loss: LossFn, *, normalize: bool = False) -> None:
        super().__init__(model, loss)
        if not isinstance(normalize, bool):
            raise InvalidParameterError(
                f"The 'normalize' parameter of {self._owner} must be True or False. Got {normalize!r}."
            )
        self.normalize = normalize
        self._fms: list[FunctionalModel] = []
        self._rates: list[float] = []

    @property
    def n_parameters(self) -> int:
        """Length of one factor: trainable parameters times checkpoints (after :meth:`fit`)."""
        return self._layout.n * max(1, len(self._fms))

    @property
    def n_checkpoints(self) -> int:
        """Number of checkpoints given to :meth:`fit` (0 before)."""
        return len(self._fms)

    @property
    def learning_rates(self) -> list[float]:
        """Learning rate of each checkpoint (after :meth:`fit`)."""
        return list(self._rates)

    @property
    def input_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        return None

    @uses_torch_threads
    def fit(self, checkpoints: Sequence[Any], learning_rates: float | Sequence[float] = 1.0) -> Self:  # type: ignore[override]
        """Store the checkpoints; no training data is needed (there is no curvature).

        Parameters
        ----------
        checkpoints : list of state dicts or nn.Module
            Model states saved during training, each with the keys (and
            shapes) of ``model.state_dict()``. Tensors are copied.
        learning_rates : float or list of float
            ``η_c`` of each checkpoint (one number: the same for all).

        Returns
        -------
        self

        Raises
        ------
        InvalidParameterError
            On an empty or malformed list, or learning rates that are not
            positive or whose number differs from that of the checkpoints.
        InvalidModelError
            If a checkpoint does not match the model's architecture.
        """
        from ...keys import object_token

        owner = self._owner
        states = load_checkpoint_states(self.model, checkpoints, owner)
        rates = _check_learning_rates(learning_rates, len(states), owner)
        module = _snapshot(self.model, owner)  # hyper-parameters and code as at fit time; weights from the states
        fms = []
        for state in states:
            fm = FunctionalModel(module, self.loss, self._layout, copy=False)
            fm.params = {n: state[n] for n in fm.params}
            fm.state = {n: state[n] for n in fm.state}
            fms.append(fm)
        self._fms, self._rates = fms, rates
        self._fm, self._module, self._module_token = fms[0], module, None
        self._record_fit(("_fm", "_fms", "_module", "_rates"), object_token("tracin-checkpoints", states, rates))
        return self

    # -- inputs -----------------------------------------------------------------------------

    def _check_inputs(
        self, x: Any, y: Any, method: str, *, differentiable: bool = False, prefix: str = ""
    ) -> tuple[torch.Tensor, torch.Tensor]:
        owner = f"{self._owner}.{method}"
        x, y = check_tensor_pair(x, y, owner, f"x{prefix}", f"y{prefix}")
        for name, t in ((f"x{prefix}", x), (f"y{prefix}", y)):
            if t.is_floating_point() and t.dtype != self.dtype:
                raise InvalidDataError(
                    f"The {name!r} argument of {owner} has dtype {t.dtype}, but the model parameters are "
                    f"{self.dtype}. To fix, convert it with {name}.to({self.dtype})."
                )
        if differentiable and not x.is_floating_point():
            raise InvalidDataError(f"Perturbation influences need a floating point 'x' in {owner}.")
        return x.to(self.device), y.to(self.device)

    # -- features and factors ------------------------------------------------------------------

    def _features(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample gradients at every checkpoint (normalised if ``normalize``), concatenated."""
        parts = []
        for fm in self._fms:
            g = joined([g for _, g in self._grad_chunks(x, y, fm=fm)])
            if self.normalize:
                g = g / g.norm(dim=1, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
            parts.append(g)
        return torch.cat(parts, dim=1).detach()

    def _scale(self, features: torch.Tensor) -> torch.Tensor:
        """Each checkpoint's gradients times its learning rate."""
        p = self._layout.n
        out = torch.empty_like(features)
        for c, rate in enumerate(self._rates):
            out[:, c * p : (c + 1) * p] = features[:, c * p : (c + 1) * p] * rate
        return out

    def _parameter_factors(self, factors: torch.Tensor) -> Iterator[tuple[FunctionalModel, torch.Tensor]]:
        if self.normalize:
            raise InvalidParameterError(
                f"{self._owner} with normalize=True supports mode='up' only: the derivative of the cosine "
                "similarity w.r.t. the features is not implemented. To fix, use normalize=False."
            )
        p = self._layout.n
        return ((fm, factors[:, c * p : (c + 1) * p]) for c, fm in enumerate(self._fms))

    def _fit(self, fm: FunctionalModel, loader: Any) -> None:  # pragma: no cover - fit is overridden
        raise NotImplementedError
