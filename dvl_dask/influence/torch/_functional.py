"""A model and its loss as pure functions of the parameters, with ``torch.func``.

Per-sample gradients are one ``vmap(grad(...))`` call over the batch (no
Python loop over samples), or for networks of linear layers one batched
forward and backward pass (:mod:`._by_layer`). The module is called through
:func:`torch.func.functional_call`, which temporarily swaps its parameters:
an instance is therefore not thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from copy import copy as shallow_copy
from copy import deepcopy

import torch
from torch import nn
from torch.func import functional_call, grad, grad_and_value, jacrev, vmap

from ...errors import InvalidDataError, InvalidModelError
from ._by_layer import LinearPlan, linear_output_jacobians, linear_plan, write_linear_gradients
from ._layout import ParameterLayout
from ._memory import empty_matrix, scratch_matrix
from ._recording import recording_layers

__all__ = ["FunctionalModel", "LossFn", "recording_layers"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def module_sharing_tensors(module: nn.Module) -> nn.Module:
    """A private copy of ``module`` whose parameters and buffers are the original tensor objects.

    ``functional_call`` swaps a module's parameters while it runs, so two
    threads must not call one module; a copy like this one costs no parameter
    memory (only the module objects are new).
    """
    tensors = [*module.parameters(), *module.buffers()]
    return deepcopy(module, {id(t): t for t in tensors})


def _non_finite_rows(parts: Sequence[torch.Tensor], losses: torch.Tensor) -> torch.Tensor:
    """Rows of the column blocks ``parts`` (or of ``losses``) holding a NaN or an infinity: a boolean vector.

    A row's sum is NaN or infinite if the row holds one, so the rows are
    screened by their sums (``n`` values allocated, not a boolean copy of
    the gradients: fresh memory costs page faults, which distributed's workers
    pay on every large allocation) and only rows whose sum is not finite -- an
    overflow of finite values among them -- are checked entry by entry.
    """
    bad = ~torch.isfinite(losses.reshape(len(losses), -1)).all(dim=1)
    sums = parts[0].sum(dim=1)
    for part in parts[1:]:
        sums = sums + part.sum(dim=1)
    suspect = bad | ~torch.isfinite(sums)
    if bool(suspect.any()):
        for part in parts:
            bad[suspect] = bad[suspect] | ~torch.isfinite(part[suspect]).all(dim=1)
    return bad


def joined(parts: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """``torch.cat(parts, dim)``, without the copy when there is one part (most calls: one chunk)."""
    return parts[0] if len(parts) == 1 else torch.cat(list(parts), dim=dim)


def times_transposed(factors: torch.Tensor, parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``factors @ Gᵀ`` for ``G`` given as its column blocks ``parts`` (``G = cat(parts, dim=1)``), without ``G``.

    One accumulated matrix product per block, on column views of ``factors``.

    Examples
    --------
    >>> f, g = torch.arange(6.0).reshape(2, 3), torch.arange(12.0).reshape(4, 3)
    >>> bool((times_transposed(f, [g[:, :1], g[:, 1:]]) == f @ g.T).all())
    True
    """
    out, start = None, 0
    for part in parts:
        block = factors[:, start : start + part.shape[1]]
        start += part.shape[1]
        out = block @ part.T if out is None else out.addmm_(block, part.T)
    if out is None or start != factors.shape[1]:
        raise ValueError(f"The column blocks have {start} columns in all; the factors have {factors.shape[1]}.")
    return out


class FunctionalModel:
    """``model`` and ``loss`` with the trainable parameters captured as detached tensors.

    Parameters
    ----------
    model : nn.Module
        The trained model. Its parameters and buffers are copied when this
        object is built (at ``fit``) and passed to every call, so later
        changes to the module do not leak into the influence computation.
    loss : callable
        ``loss(output, target) -> scalar``, mean-reduced over the batch.
    layout : ParameterLayout
        The trainable parameters and their order in flat vectors.
    copy : bool
        Copy the parameters and buffers (default). False uses them as they are
        (detached views), for a module that is already a private copy.
    """

    def __init__(self, model: nn.Module, loss: LossFn, layout: ParameterLayout, *, copy: bool = True) -> None:
        self.model = model
        self.loss = loss
        self.layout = layout
        trainable = set(layout.names)

        # Copies: later in-place updates of the model (an optimiser step) must not change the
        # parameters the curvature was computed at.
        def own(t: torch.Tensor) -> torch.Tensor:
            return t.detach().clone() if copy else t.detach()

        self.params = {n: own(p) for n, p in model.named_parameters() if n in trainable}
        self.state = {n: own(p) for n, p in model.named_parameters() if n not in trainable}
        self.state.update({n: own(b) for n, b in model.named_buffers()})

    def replica(self, module: nn.Module | None = None) -> FunctionalModel:
        """The same functional model computing through another module, for another thread.

        ``module`` defaults to :func:`module_sharing_tensors` of this one.
        ``params`` and ``state`` are shared, not copied: they are only read.
        """
        out = shallow_copy(self)
        out.model = module_sharing_tensors(self.model) if module is None else module
        return out

    # -- forward passes ---------------------------------------------------------------

    def output(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, {**params, **self.state}, (x,))

    def batch_loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(self.output(params, x), y)

    def _sample_loss(self, params: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return self.batch_loss(params, xi.unsqueeze(0), yi.unsqueeze(0))

    def block_params(self, block: ParameterLayout, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """All parameters, with those of ``block`` taken from the flat vector ``flat``."""
        return {**self.params, **block.unflatten(flat)}

    def check_loss(self, x: torch.Tensor, y: torch.Tensor, owner: str) -> None:
        """Fail early and clearly if the loss is not a scalar on a batch."""
        with torch.no_grad(), _explain_vmap_errors(owner, y):
            value = self.batch_loss(self.params, x, y)
        if not isinstance(value, torch.Tensor) or value.ndim != 0:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise InvalidModelError(
                f"The loss given to {owner} must return a scalar averaged over the batch (like "
                f"torch.nn.functional.mse_loss with reduction='mean'). Got {shape}."
            )
        if not bool(torch.isfinite(value)):
            raise InvalidModelError(
                f"The loss given to {owner} is not finite ({value.item()}) on the first training batch: NaN or inf "
                "(NaN parameters or inputs, log(0), an overflow) would give NaN or silently zero influences. "
                "To fix, check that the model's parameters are finite and the loss is finite on the training data."
            )

    # -- output derivatives (Gauss-Newton) ------------------------------------------------

    def per_sample_output_hessian(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``∇²_o ℓ(oᵢ, yᵢ)`` w.r.t. each sample's flattened output: shape ``(n, m, m)``."""
        shape = out.shape[1:]

        def sample_loss(oi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            return self.loss(oi.reshape(1, *shape), yi.unsqueeze(0))

        h = vmap(jacrev(jacrev(sample_loss)))(out.detach().reshape(out.shape[0], -1), y)
        return (h + h.transpose(1, 2)) / 2

    def per_sample_output_jacobian(self, block: ParameterLayout, x: torch.Tensor) -> torch.Tensor:
        """``∂oᵢ/∂θ_block`` for each sample: shape ``(n, m, p_block)``.

        Networks of linear layers (:mod:`._by_layer`) get them layer by layer
        (one forward pass, one backward pass per output); other models through
        ``vmap(jacrev(...))``.
        """
        planned = self._linear_plan(block, x)
        if planned is not None:
            plan, tensors, offsets = planned
            jac = linear_output_jacobians(plan, self.model, tensors, x, block.n, offsets)
            if jac is not None:
                return jac
        theta = block.flatten(self.params)

        def sample_output(t: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
            return self.output(self.block_params(block, t), xi.unsqueeze(0)).reshape(-1)

        with _explain_vmap_errors():
            return vmap(jacrev(sample_output), in_dims=(None, 0))(theta, x)

    # -- gradients ----------------------------------------------------------------------

    def per_sample_grads(self, x: torch.Tensor, y: torch.Tensor, start: int = 0) -> torch.Tensor:
        """``∇θℓ(xᵢ, yᵢ)`` for each sample, flattened: shape ``(len(x), n_parameters)``.

        A sample whose loss or gradient is NaN or infinite raises
        :class:`~dvl_dask.errors.InvalidDataError` naming it (``start + i``:
        ``start`` is the index of ``x[0]`` among the caller's points): a NaN
        loss can have a zero gradient, which would give silently zero influences.

        Networks of linear layers (:mod:`._by_layer`) get their gradients
        layer by layer, written straight into the returned matrix; other
        models through ``vmap(grad(...))``, joined.
        """
        return joined(self.per_sample_grad_parts(x, y, start), dim=1)

    def per_sample_grad_parts(
        self, x: torch.Tensor, y: torch.Tensor, start: int = 0, *, transient: bool = False
    ) -> list[torch.Tensor]:
        """Column blocks of :meth:`per_sample_grads` in layout order, not joined: ``G = cat(parts, dim=1)``.

        One block, the whole matrix, when the gradients are computed layer by
        layer; otherwise one per parameter, each ``(len(x), size)``. A product
        with the gradients can be taken block by block
        (:func:`times_transposed`), which spares joining ``vmap``'s blocks: a
        copy of every gradient, and fresh memory (page faults) on
        ``distributed`` workers. Checked as :meth:`per_sample_grads`.

        ``transient=True`` promises that the caller is done with the blocks
        before its next call in this thread: the matrix may then be a
        per-thread scratch buffer (:func:`._memory.scratch_matrix`).
        """
        by_layer = self._by_layer(x, y, scratch_matrix if transient else empty_matrix)
        if by_layer is not None:
            parts, losses, bad = by_layer
        else:
            with _explain_vmap_errors("per-sample gradients", y):
                g, losses = vmap(grad_and_value(self._sample_loss), in_dims=(None, 0, 0))(self.params, x, y)
            parts = [g[name].reshape(len(x), -1) for name in self.layout.names]
            bad = _non_finite_rows(parts, losses)
        if bool(bad.any()):
            first = int(torch.nonzero(bad)[0, 0])
            raise InvalidDataError(
                f"The loss or its gradient is not finite for sample {start + first} (loss {losses[first].item()}; "
                f"{int(bad.sum())} of {len(x)} samples in its chunk): its influences would be NaN or silently "
                "zero. To fix, check that sample's inputs and label, the model's parameters (NaN in a checkpoint?) "
                "and that the loss is finite there (e.g. clamp before a log)."
            )
        return parts

    def _by_layer(
        self, x: torch.Tensor, y: torch.Tensor, allocate: Callable[..., torch.Tensor]
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor] | None:
        """``([gradients], losses, non-finite rows)`` computed layer by layer, or None where that does not apply."""
        planned = self._linear_plan(self.layout, x)
        if planned is None:
            return None
        plan, tensors, offsets = planned
        any_param = next(iter(self.params.values()))
        out = allocate(len(x), self.layout.n, dtype=any_param.dtype, device=any_param.device)
        with _explain_vmap_errors("per-sample gradients", y):
            written = write_linear_gradients(plan, self.model, tensors, self.loss, x, y, out, offsets)
        return None if written is None else ([out], *written)

    def _linear_plan(
        self, layout: ParameterLayout, x: torch.Tensor
    ) -> tuple[LinearPlan, dict[str, torch.Tensor], list[tuple[int, int]]] | None:
        """``(plan, every parameter and buffer, columns of layout's parameters)`` for :mod:`._by_layer`, or None.

        Planned on every call (a few microseconds): the module's mode and hooks may change between calls.
        """
        plan = linear_plan(self.model, layout.names) if len(x) else None
        if plan is None:
            return None
        offsets = layout.offsets()
        return plan, {**self.params, **self.state}, [offsets[name] for name in layout.names]

    def perturbation(self, factors: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``∇x ⟨fₖ, ∇θℓ(xⱼ, yⱼ)⟩`` for every factor ``fₖ`` and sample ``j``.

        Returns shape ``(len(factors), len(x), *x.shape[1:])``. Reverse mode
        over the per-sample gradient (``jacrev``), vectorised over samples.
        """

        def contracted(xi: torch.Tensor, yi: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
            g = grad(self._sample_loss)(self.params, xi, yi)
            return f @ self.layout.flatten(g)

        with _explain_vmap_errors():
            jac = vmap(jacrev(contracted), in_dims=(0, 0, None))(x, y, factors)
        return jac.movedim(0, 1)

    def paired_perturbation(self, factors: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``∇xⱼ ⟨fⱼ, ∇θℓ(xⱼ, yⱼ)⟩`` for every sample ``j`` with its own factor ``fⱼ``.

        The diagonal of :meth:`perturbation` for ``len(factors) == len(x)``:
        shape ``(len(x), *x.shape[1:])``.
        """

        def contracted(xi: torch.Tensor, yi: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
            g = grad(self._sample_loss)(self.params, xi, yi)
            return f @ self.layout.flatten(g)

        with _explain_vmap_errors():
            return vmap(jacrev(contracted), in_dims=(0, 0, 0))(x, y, factors)


#: Words of torch's errors when a loss gets labels of the wrong dtype (float labels for cross_entropy).
_LABEL_DTYPE_ERRORS = ("expected target dtype", "expected scalar type long", "not implemented for 'float'",
                       "not implemented for 'double'")


class _explain_vmap_errors:
    """Turn torch errors with a known cause into advice: random layers under vmap, labels of the wrong dtype."""

    def __init__(self, what: str = "per-sample gradients", y: torch.Tensor | None = None) -> None:
        self.what, self.y = what, y

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> bool:
        if exc_type is None or not issubclass(exc_type, RuntimeError):
            return False
        text = str(exc).lower()
        if "randomness" in text:
            raise InvalidModelError(
                "The model uses randomness (e.g. dropout in training mode), which per-sample gradients "
                "cannot vectorise. To fix, call model.eval() before building the influence model."
            ) from exc
        if any(words in text for words in _LABEL_DTYPE_ERRORS):
            dtype = getattr(self.y, "dtype", "?")
            raise InvalidDataError(
                f"The loss failed on the labels 'y' ({self.what}): {exc}. The labels have dtype {dtype}; a "
                "classification loss such as cross_entropy or nll_loss needs integer class indices. To fix, pass "
                "y.long() (or class probabilities of shape (n, n_classes) for cross_entropy)."
            ) from exc
        return False
