"""The one base of the torch influence models: everything they share, so that a model file holds its method only.

:class:`TorchInfluenceFunctionModel` owns

* construction: the checks of ``model`` and ``loss`` and of the shared
  hyper-parameters (``regularization``, ``second_order_mode``,
  ``block_structure``, ``rank``, integer seeds), and pyDVL's keyword synonyms
  (``hessian_regularization=`` for every model with a ``regularization``;
  a subclass adds its own with ``class M(TorchInfluenceFunctionModel,
  aliases={...})``);
* device and dtype (those of the model's trainable parameters; inputs are
  checked against them), the private copy of the module taken at fit time,
  the fit records that identify a fitted model (``__dask_tokenize__``) and
  "not fitted" errors;
* the computation skeleton: factors, gradients, influences and
  self-influences by chunks of samples, with ``_solve`` applied block by
  block through ``_solve_block``;
* services a method calls: the curvature operator of a block, the
  conditioning check of a regularised curvature before it is inverted or
  factorised, passes over the training gradients, and perturbation products.

:class:`FeatureInfluenceModel` adds the skeleton of models whose factors are a
rescaling of their own features (TracIn, TRAK, LoGra): no ``_solve``.
"""

from __future__ import annotations

import copy
import inspect
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Self

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...errors import InvalidDataError, InvalidModelError, InvalidParameterError, UnknownModeError
from ...threads import torch_threads, uses_torch_threads
from ...validation import check_positive_int, check_real, keyword_aliases
from .._base import InfluenceFunctionModel
from .._mode import BlockMode, InfluenceMode, SecondOrderMode
from ._curvature import CurvatureOperator
from ._data import InputSpec, as_data_loader, iter_batches
from ._functional import FunctionalModel, LossFn, joined, module_sharing_tensors, times_transposed
from ._layout import ParameterBlock, ParameterLayout, resolve_blocks
from ._linalg import check_conditioning

__all__ = ["FeatureInfluenceModel", "TorchInfluenceFunctionModel"]

#: Samples whose per-sample gradients are held in memory at once.
GRAD_CHUNK = 1024
#: Bound on (factors x samples x parameters) elements in one perturbation product.
PERTURBATION_BUDGET = 2**24

BlockStructure = BlockMode | str | Mapping[str, Sequence[str]]
_UNSET = object()
#: Default of the shared constructor arguments of the base: "this model has no such parameter".
_ABSENT: Any = object()
#: pyDVL's names of constructor parameters that every model accepts where it has the parameter.
KEYWORD_ALIASES = {"hessian_regularization": "regularization"}


def _data_token(loader: DataLoader) -> Any:
    """Token of the training data of a fit (the loader by value: dataset contents, batching), or the error."""
    from ...errors import TokenizationError
    from ...keys import object_token

    try:
        return object_token("fit-data", loader)
    except TokenizationError as exc:  # reported when a token is needed, not at fit time
        return exc


def _snapshot(model: nn.Module, owner: str) -> nn.Module:
    """A private deep copy of ``model``: what a fit and every later computation of the fitted model use."""
    try:
        return copy.deepcopy(model)
    except Exception as exc:  # e.g. a non-leaf tensor held as a plain attribute
        raise InvalidModelError(
            f"{owner}.fit takes a private copy of the module (so that changing it afterwards cannot change the "
            f"fitted model or its token), but copy.deepcopy failed: {type(exc).__name__}: {exc}. To fix, make the "
            "module deep-copyable (e.g. register tensors as parameters or buffers instead of computed attributes)."
        ) from exc


#: Attributes that are not part of what a fitted model is (bookkeeping of its token).
_TOKEN_BOOKKEEPING = ("_fitted_attrs", "_fit_token", "_module_token")


class TorchInfluenceFunctionModel(InfluenceFunctionModel[torch.Tensor, DataLoader]):
    """Base of the torch influence models.

    Parameters
    ----------
    model : nn.Module
        A trained model. Only parameters with ``requires_grad=True`` are
        considered. :meth:`fit` takes a private copy of the whole module
        (``copy.deepcopy``: parameters, buffers, hyper-parameters, training
        flag) and everything the fitted model computes -- factors, influences,
        its token -- uses that copy. Changing ``model`` afterwards (training a
        few more steps, ``load_state_dict``, ``model.train()``) changes neither
        the fitted model's values nor its identity; call :meth:`fit` again to
        use the new weights (a new fit, a new token). Put models with dropout
        or batch-norm in evaluation mode (``model.eval()``) first.
    loss : callable
        ``loss(output, target) -> scalar``, averaged over the batch like
        :func:`torch.nn.functional.mse_loss`. ``H`` is the Hessian of this loss
        averaged over all training samples.

    regularization : float, optional
        ``λ`` added to the curvature's diagonal, for the models that have it:
        checked finite and ``>= 0`` (``> 0`` where the class sets
        ``_POSITIVE_REGULARIZATION`` to the reason), stored as a float.
    second_order_mode : SecondOrderMode or str, optional
        The curvature, for the models that choose it: ``"hessian"`` or
        ``"gauss_newton"``.
    block_structure : BlockMode, str or mapping, optional
        How the parameters are cut into independent blocks, for the models
        that allow it: ``"full"``, ``"layer"`` or ``{block_name: [parameter
        names]}``; resolved into ``_blocks``.

    Notes
    -----
    A method implements ``_fit(fm, loader)`` (compute and store what solving
    needs) and either ``_solve_block(i, block, grads)`` (the inverse-curvature
    approximation on the columns of one block; :meth:`_solve` applies it to
    every block) or ``_solve(grads)`` itself. Everything else -- input checks,
    chunking, contractions with training gradients, perturbation influences,
    self-influences, identity -- is here. Computation happens on the device
    of the model's parameters, in their dtype. Inputs must have the same
    dtype when floating point (no silent casts); they are moved to the
    model's device.

    Subclass keywords: ``aliases={"pyDVL name": "parameter"}`` adds keyword
    synonyms to the subclass's ``__init__`` (on top of ``KEYWORD_ALIASES``,
    which apply wherever the parameter exists).
    """

    #: Why this model needs ``regularization > 0`` (the end of the error message), or None if 0 is allowed.
    _POSITIVE_REGULARIZATION: ClassVar[str | None] = None
    #: Keyword synonyms of this class's ``__init__`` (``KEYWORD_ALIASES`` plus the ``aliases=`` of the class).
    _KEYWORD_ALIASES: ClassVar[dict[str, str]] = dict(KEYWORD_ALIASES)

    def __init_subclass__(cls, aliases: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._KEYWORD_ALIASES = {**cls._KEYWORD_ALIASES, **(aliases or {})}
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        params = inspect.signature(init).parameters
        own = {alias: name for alias, name in cls._KEYWORD_ALIASES.items() if name in params and alias not in params}
        if own:
            cls.__init__ = keyword_aliases(**own)(init)  # type: ignore[misc]

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        regularization: float = _ABSENT,
        second_order_mode: SecondOrderMode | str = _ABSENT,
        block_structure: BlockStructure = _ABSENT,
    ) -> None:
        owner = type(self).__name__
        if not isinstance(model, nn.Module):
            raise InvalidModelError(
                f"The 'model' parameter of {owner} must be a torch.nn.Module. Got {type(model).__name__}."
            )
        if not callable(loss):
            raise InvalidParameterError(
                f"The 'loss' parameter of {owner} must be a callable loss(output, target) -> scalar, e.g. "
                f"torch.nn.functional.mse_loss. Got {type(loss).__name__}."
            )
        self.model = model
        self.loss = loss
        self._layout = ParameterLayout.from_module(model, owner)
        self._fm: FunctionalModel | None = None
        self._spec: InputSpec | None = None
        if regularization is not _ABSENT:
            self.regularization = self._check_regularization(regularization)
        if second_order_mode is not _ABSENT:
            self.second_order_mode = self._named(SecondOrderMode.parse, second_order_mode, "second_order_mode")
        if block_structure is not _ABSENT:
            self._blocks = self._named(
                lambda v: resolve_blocks(self._layout, v, owner), block_structure, "block_structure"
            )

    # -- properties --------------------------------------------------------------------

    @property
    def _owner(self) -> str:
        return type(self).__name__

    @property
    def n_parameters(self) -> int:
        return self._layout.n

    @property
    def is_fitted(self) -> bool:
        return self._fm is not None

    @property
    def is_thread_safe(self) -> bool:
        # functional_call swaps the module's parameters during every call.
        return False

    def thread_replica(self) -> Self:
        """A copy of this fitted model for another thread: private modules, shared fitted tensors.

        ``functional_call`` swaps a module's parameters while it runs, so two
        threads must not compute through one module; everything else a fitted
        model holds (factors, inverses, projections, parameters) is only read
        by factors and influences. The replica therefore shares every tensor
        and gets its own copy of each module, whose parameters and buffers are
        the original tensor objects (no parameter memory is duplicated). The
        influence calculators' block kernels give each thread one replica, so
        a worker's threads compute side by side instead of queueing on a lock.
        """
        modules: dict[int, nn.Module] = {}

        def module_copy(module: nn.Module) -> nn.Module:
            if id(module) not in modules:
                modules[id(module)] = module_sharing_tensors(module)
            return modules[id(module)]

        def replicate(value: Any) -> Any:
            if isinstance(value, nn.Module):
                return module_copy(value)
            if isinstance(value, FunctionalModel):
                return value.replica(module_copy(value.model))
            if isinstance(value, list | tuple) and any(isinstance(v, nn.Module | FunctionalModel) for v in value):
                return type(value)(replicate(v) for v in value)
            return value

        clone = object.__new__(type(self))
        clone.__dict__.update({name: replicate(value) for name, value in vars(self).items()})
        return clone

    @property
    def input_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        return None if self._spec is None else (self._spec.x_shape, self._spec.y_shape)

    @property
    def device(self) -> torch.device:
        """Device of the model's trainable parameters (at fit time), where all computation happens."""
        return self._spec.device if self._spec is not None else self._first_param().device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the model's trainable parameters (at fit time), and of factors and influences."""
        return self._spec.dtype if self._spec is not None else self._first_param().dtype

    def _first_param(self) -> torch.Tensor:
        first = self._layout.names[0]
        return dict(self._net.named_parameters())[first]

    @property
    def _net(self) -> nn.Module:
        """The module computations run through: the private copy taken by :meth:`fit` (``model`` before)."""
        found = getattr(self, "_module", None)
        return self.model if found is None else found

    def parameter_fingerprint(self) -> str:
        """Token of the module the fitted model computes with (classes, hyper-parameters, parameters, buffers).

        After :meth:`fit` it is the token of the private copy taken at fit
        time, computed once; before, that of ``model`` as it is now.

        Raises
        ------
        TokenizationError
            If the module holds something that cannot be hashed deterministically.
        """
        from ...keys import object_token

        module = getattr(self, "_module", None)
        if module is None:
            return object_token(self.model)
        found = getattr(self, "_module_token", None)
        if found is None:
            found = object_token(module)
            self._module_token = found  # the copy is private and never changes: hashed once
        return found

    def __dask_tokenize__(self) -> str:
        """Class, hyper-parameters, module contents and training data, by value.

        The token digests the class (its code if not installed), every
        attribute set before fitting (the loss by code, hyper-parameters), the
        module the model computes with (:meth:`parameter_fingerprint`: after
        :meth:`fit`, the private copy taken then, not the live ``model``) and
        the content of the data passed to :meth:`fit`, not the fitted tensors
        (whose last bits may differ between processes). So the same fitted
        model has the same token in every process -- an interrupted
        ``influence_to_zarr`` resumes in a new one -- refitting on other data,
        other weights, another loss or other hyper-parameters changes it, and
        changing ``model`` after the fit changes neither the token nor the
        values.

        Raises
        ------
        TokenizationError
            If the training data cannot be hashed deterministically (a
            DataLoader over a custom dataset): give the dataset a
            ``__dask_tokenize__`` method, or pass ``token=`` to the calculator.
        """
        from ...errors import TokenizationError
        from ...keys import class_token, object_token

        fitted = set(getattr(self, "_fitted_attrs", ()))
        state = {k: v for k, v in vars(self).items() if k not in fitted and k not in _TOKEN_BOOKKEEPING}
        state["model"] = ("module", self.parameter_fingerprint())  # the copy fitted on, not the live module
        fit_token = getattr(self, "_fit_token", None)
        if isinstance(fit_token, TokenizationError):
            raise TokenizationError(
                f"{self._owner} was fitted on data dvl_dask cannot hash deterministically ({fit_token}). To fix, "
                "give the dataset a __dask_tokenize__ method, or pass token='<name of this fit>' to the calculator."
            )
        return object_token("torch-influence-model", class_token(type(self)), state, fit_token)

    def __repr__(self) -> str:
        state = "fitted" if self.is_fitted else "not fitted"
        return f"{self._owner}(model={type(self.model).__name__}, n_parameters={self.n_parameters}, {state})"

    # -- fitting -----------------------------------------------------------------------

    @uses_torch_threads
    def fit(self, data: DataLoader | tuple[torch.Tensor, torch.Tensor]) -> Self:
        """Compute the curvature approximation on the training data.

        Like every computation of the model, it runs with the torch thread
        budget of :func:`dvl_dask.threads.torch_threads` (the caller's
        ``torch.get_num_threads()`` is restored afterwards).

        Parameters
        ----------
        data : DataLoader or tuple of tensors
            A DataLoader yielding ``(x, y)`` batches, or a tuple ``(x, y)``
            (wrapped in a DataLoader of batches of 512 samples; pass a
            DataLoader to choose the batch size).

        Returns
        -------
        self
        """
        owner = self._owner
        loader = as_data_loader(data, owner)
        before = dict(vars(self))
        x0, y0 = next(iter_batches(loader, f"{owner}.fit"))
        module = _snapshot(self.model, owner)
        ref = dict(module.named_parameters())[self._layout.names[0]]
        spec = InputSpec(tuple(x0.shape[1:]), tuple(y0.shape[1:]), ref.dtype, ref.device)
        x0, y0 = spec.check(x0, y0, f"{owner}.fit", x_name="x (batch)", y_name="y (batch)")
        fm = FunctionalModel(module, self.loss, self._layout, copy=False)
        fm.check_loss(x0, y0, owner)
        self._fm, self._spec, self._module, self._module_token = None, spec, module, None
        self._fit(fm, loader)
        # What fitting computed is identified by what it was computed from: the training
        # data (by content) with the model and hyper-parameters. Fitted tensors themselves
        # may differ in their last bits between processes (BLAS results depend on memory
        # alignment), so they are left out of the token; see __dask_tokenize__.
        self._fm = fm
        self._record_fit(tuple(sorted(k for k, v in vars(self).items() if before.get(k, _UNSET) is not v)),
                         _data_token(loader))
        return self

    def _record_fit(self, fitted_attrs: tuple[str, ...], fit_token: Any) -> None:
        """Record what a fit set (left out of the token) and the token of what it was fitted on."""
        self._fitted_attrs = fitted_attrs
        self._fit_token = fit_token

    @abstractmethod
    def _fit(self, fm: FunctionalModel, loader: DataLoader) -> None:
        """Compute and store what :meth:`_solve` needs."""

    def _solve(self, grads: torch.Tensor) -> torch.Tensor:
        """Apply the inverse-curvature approximation to the rows of ``grads``: :meth:`_solve_block` per block."""
        return self._per_block(grads, self._blocks, self._solve_block)

    def _solve_block(self, i: int, block: ParameterBlock, grads: torch.Tensor) -> torch.Tensor:
        """The inverse-curvature approximation of block ``i`` applied to its columns ``grads`` of the rows."""
        raise NotImplementedError(f"{self._owner} implements neither _solve nor _solve_block.")

    # -- factors and influences --------------------------------------------------------

    def _compute_context(self) -> Any:
        return torch_threads()

    @property
    def _functional(self) -> FunctionalModel:
        assert self._fm is not None  # guarded by _check_fitted
        return self._fm

    def _check_inputs(
        self, x: Any, y: Any, method: str, *, differentiable: bool = False, prefix: str = ""
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._spec is not None
        return self._spec.check(
            x, y, f"{self._owner}.{method}", x_name=f"x{prefix}", y_name=f"y{prefix}", differentiable=differentiable
        )

    def _influence_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = self._check_inputs(x, y, "influence_factors")
        return joined([self._solve(g) for _, g in self._grad_chunks(x, y)]).detach()

    def _per_sample_gradients(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = self._check_inputs(x, y, "per_sample_gradients")
        return joined([g for _, g in self._grad_chunks(x, y)]).detach()

    def _grad_chunks(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        step: int = GRAD_CHUNK,
        *,
        fm: FunctionalModel | None = None,
        offset: int = 0,
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        """``(rows, per-sample gradients of x[rows])`` for consecutive chunks of ``step`` samples.

        ``fm`` defaults to the fitted functional model; ``offset`` is the index
        of ``x[0]`` in the data (errors name samples by it).
        """
        fm = self._functional if fm is None else fm
        for i in range(0, x.shape[0], step):
            rows = slice(i, i + step)
            yield rows, fm.per_sample_grads(x[rows], y[rows], offset + i)

    def _influences(
        self, x_test: torch.Tensor, y_test: torch.Tensor, x: torch.Tensor, y: torch.Tensor, mode: InfluenceMode
    ) -> torch.Tensor:
        # Check the training inputs before the (possibly expensive) factors.
        self._check_inputs(x, y, "influences", differentiable=mode is InfluenceMode.Perturbation)
        self._check_inputs(x_test, y_test, "influences", prefix="_test")
        return super()._influences(x_test, y_test, x, y, mode)

    def _influences_from_factors(
        self, factors: torch.Tensor, x: torch.Tensor, y: torch.Tensor, mode: InfluenceMode
    ) -> torch.Tensor:
        factors = self._check_factors(factors)
        perturbation = mode is InfluenceMode.Perturbation
        x, y = self._check_inputs(x, y, "influences_from_factors", differentiable=perturbation)
        if not perturbation:
            return self._up_influences(factors, x, y)
        out = torch.zeros((factors.shape[0], x.shape[0], *x.shape[1:]), dtype=factors.dtype, device=factors.device)
        for fm, full in self._parameter_factors(factors):
            self._add_perturbation(out, fm, full, x, y)
        return out.detach()

    def _up_influences(self, factors: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``factors @ gradientsᵀ`` of checked inputs, by chunks of training samples.

        Parameter by parameter (:func:`times_transposed`): the gradients of a
        chunk are never joined into one matrix, which would copy them all into
        fresh memory (on a ``distributed`` worker, the page faults of that copy
        cost as much as the gradients themselves). Gradients computed layer by
        layer are one matrix, in this thread's scratch buffer where fresh
        memory costs page faults (they are used up before the next chunk).
        """
        fm = self._functional
        return joined([
            times_transposed(
                factors, fm.per_sample_grad_parts(x[i : i + GRAD_CHUNK], y[i : i + GRAD_CHUNK], i, transient=True)
            )
            for i in range(0, x.shape[0], GRAD_CHUNK)
        ], dim=1).detach()

    def _parameter_factors(self, factors: torch.Tensor) -> Iterator[tuple[FunctionalModel, torch.Tensor]]:
        """``(functional model, parameter-space factors)`` pairs whose perturbation influences add up to ours."""
        return iter([(self._functional, factors)])

    @staticmethod
    def _add_perturbation(
        out: torch.Tensor, fm: FunctionalModel, factors: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> None:
        """``out += ∂⟨factors, ∇θℓ(x)⟩/∂x`` with ``fm``, in chunks bounded by ``PERTURBATION_BUDGET``."""
        k, p = factors.shape
        k_chunk = min(k, 64)
        n_chunk = max(1, PERTURBATION_BUDGET // (k_chunk * p))
        for i in range(0, k, k_chunk):
            for j in range(0, x.shape[0], n_chunk):
                out[i : i + k_chunk, j : j + n_chunk] += fm.perturbation(
                    factors[i : i + k_chunk], x[j : j + n_chunk], y[j : j + n_chunk]
                )

    def _self_influences(self, x: torch.Tensor, y: torch.Tensor, mode: InfluenceMode) -> torch.Tensor:
        """Per chunk: gradients once, factors from them, then a row-wise contraction."""
        perturbation = mode is InfluenceMode.Perturbation
        x, y = self._check_inputs(x, y, "self_influences", differentiable=perturbation)
        fm = self._functional
        step = max(1, min(GRAD_CHUNK, PERTURBATION_BUDGET // self.n_parameters)) if perturbation else GRAD_CHUNK
        parts = []
        for rows, grads in self._grad_chunks(x, y, step):
            factors = self._solve(grads)
            parts.append(
                fm.paired_perturbation(factors, x[rows], y[rows]) if perturbation else (factors * grads).sum(dim=1)
            )
        return torch.cat(parts).detach()

    def _concatenate(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts).detach()

    def _check_factors(self, factors: Any) -> torch.Tensor:
        owner = f"{self._owner}.influences_from_factors"
        if not isinstance(factors, torch.Tensor):
            raise InvalidDataError(
                f"The 'factors' argument of {owner} must be a torch.Tensor from influence_factors(). "
                f"Got {type(factors).__name__}."
            )
        if factors.ndim != 2 or factors.shape[1] != self.n_parameters:
            raise InvalidDataError(
                f"The 'factors' argument of {owner} must have shape (n_samples, n_parameters={self.n_parameters})."
                f" Got shape {tuple(factors.shape)}. Compute it with influence_factors(x, y) of this model."
            )
        if factors.dtype != self.dtype:
            raise InvalidDataError(
                f"The 'factors' argument of {owner} has dtype {factors.dtype}, but the model parameters are "
                f"{self.dtype}. To fix, convert it with factors.to({self.dtype})."
            )
        return factors.to(self.device)

    # -- helpers for subclasses -------------------------------------------------------

    def _check_regularization(self, value: Any) -> float:
        """``regularization`` as a finite float ``>= 0`` (``> 0`` if the class needs it, with its reason)."""
        why = self._POSITIVE_REGULARIZATION
        if why is not None:
            try:
                return check_real(value, "regularization", self._owner, low=0.0, low_open=True, finite=True)
            except InvalidParameterError as exc:
                raise InvalidParameterError(f"{exc} {why}".strip()) from None
        return check_real(value, "regularization", self._owner, low=0.0, finite=True)

    def _named(self, parse: Callable[[Any], Any], value: Any, name: str) -> Any:
        """``parse(value)``, with an unknown mode's error naming the argument and this model."""
        try:
            return parse(value)
        except UnknownModeError as exc:
            raise UnknownModeError(f"The {name!r} parameter of {self._owner}: {exc}") from None

    def _check_rank(self, rank: Any) -> int:
        rank = check_positive_int(rank, "rank", self._owner)
        if rank > self.n_parameters:
            raise InvalidParameterError(
                f"The 'rank' parameter of {self._owner} must be at most the number of trainable parameters "
                f"({self.n_parameters}). Got {rank} instead. To fix, pass rank <= {self.n_parameters}."
            )
        return rank

    def _check_seed(self, seed: Any) -> int:
        """An integer seed ``>= 0`` (models that seed torch generators directly)."""
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InvalidParameterError(f"The 'seed' parameter of {self._owner} must be an integer >= 0. Got {seed!r}.")
        return seed

    def _curvature_operator(
        self,
        fm: FunctionalModel,
        block: ParameterBlock,
        loader: DataLoader,
        regularization: float | None = None,
        *,
        iterative: bool = False,
    ) -> CurvatureOperator:
        """Products with the curvature (``second_order_mode``) of ``block`` over ``loader``, plus ``λI``.

        ``regularization`` defaults to the model's (low-rank methods pass 0 and add it to eigenvalues).
        ``iterative``: the operator serves many products (an iterative solver), so it keeps the
        per-sample Jacobians of its first pass where they fit (:class:`CurvatureOperator`).
        """
        lam = self.regularization if regularization is None else regularization
        return CurvatureOperator(fm, block, loader, self.second_order_mode, lam, self._owner, keep_jacobians=iterative)

    def _check_conditioning(self, evals: torch.Tensor, what: str, suggested: float | None = None) -> None:
        """Refuse to invert or factorise a regularised curvature too ill-conditioned for the model's dtype.

        ``evals`` are the eigenvalues of what is inverted, regularisation
        included; ``what`` names it in the error. Above ``CONDITION_LIMIT``
        (``cond x eps``) the error names the condition number and the fix: a
        regularization that brings it within the limit (``suggested`` where
        the model knows it better than the generic rule), or float64. See
        :func:`~dvl_dask.influence.torch._linalg.check_conditioning`.
        """
        check_conditioning(
            evals, self.dtype, owner=self._owner, what=what, regularization=self.regularization, suggested=suggested
        )

    def _training_gradients(self, fm: FunctionalModel, loader: DataLoader) -> Iterator[torch.Tensor]:
        """Per-sample gradients of the training data in ``loader``, chunk by chunk (one pass, on the model's device)."""
        total = 0
        for x, y in iter_batches(loader, self._owner):
            x, y = x.to(self.device), y.to(self.device)
            for _, g in self._grad_chunks(x, y, fm=fm, offset=total):
                yield g
            total += x.shape[0]

    @staticmethod
    def _per_block(
        grads: torch.Tensor,
        blocks: Sequence[ParameterBlock],
        fn: Callable[[int, ParameterBlock, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """Apply ``fn(i, block, grads[:, block])`` to every block and reassemble the rows."""
        if len(blocks) == 1:
            return fn(0, blocks[0], grads)
        out = torch.empty_like(grads)
        for i, block in enumerate(blocks):
            cols = block.columns
            cols = cols if isinstance(cols, slice) else cols.to(grads.device)
            out[:, cols] = fn(i, block, block.select(grads))
        return out


class FeatureInfluenceModel(TorchInfluenceFunctionModel):
    """Base of the models whose factors are a rescaling of their own features: no ``_solve`` on gradients.

    TracIn's features are the gradients at every checkpoint, TRAK's and
    LoGra's their random projections. A subclass implements

    * ``_features(x, y)``: what :meth:`per_sample_gradients` returns (checked inputs);
    * ``_scale(features)``: the factors of those features;
    * ``_parameter_factors(factors)``: ``(functional model, factors in parameter space)`` pairs whose
      perturbation influences add up to those of ``factors`` (needed for ``mode="perturbation"`` only).

    Up-mode influences are ``factors @ featuresᵀ`` and self-influences the
    row-wise ``⟨_scale(f), f⟩``, one feature computation per sample.
    """

    @abstractmethod
    def _features(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample features (the model's per-sample gradients) of checked inputs."""

    @abstractmethod
    def _scale(self, features: torch.Tensor) -> torch.Tensor:
        """The influence factors of ``features``."""

    def _parameter_factors(self, factors: torch.Tensor) -> Iterator[tuple[FunctionalModel, torch.Tensor]]:
        """``factors`` as parameter-space factors of functional models, for perturbation influences."""
        raise InvalidParameterError(f"{self._owner} supports mode='up' only.")

    def _influence_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = self._check_inputs(x, y, "influence_factors")
        return self._scale(self._features(x, y))

    def _per_sample_gradients(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = self._check_inputs(x, y, "per_sample_gradients")
        return self._features(x, y)

    def _solve(self, grads: torch.Tensor) -> torch.Tensor:  # pragma: no cover - factors are built from features
        raise NotImplementedError

    def _self_influences(self, x: torch.Tensor, y: torch.Tensor, mode: InfluenceMode) -> torch.Tensor:
        """``⟨_scale(f), f⟩`` of the features ``f`` of each sample (perturbation: the generic path)."""
        if mode is InfluenceMode.Perturbation:
            return InfluenceFunctionModel._self_influences(self, x, y, mode)
        x, y = self._check_inputs(x, y, "self_influences")
        parts = []
        for i in range(0, len(x), GRAD_CHUNK):
            feats = self._features(x[i : i + GRAD_CHUNK], y[i : i + GRAD_CHUNK])
            parts.append((self._scale(feats) * feats).sum(dim=1))
        return torch.cat(parts).detach()

    def _up_influences(self, factors: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return factors @ self._features(x, y).T
