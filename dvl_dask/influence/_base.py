"""The interface every influence function model implements, free of any tensor library."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Generic, Self, TypeVar

from ..errors import InvalidParameterError, NotFittedError
from ..validation import keyword_aliases
from ._mode import InfluenceMode

__all__ = ["SELF_INFLUENCE_CHUNK", "InfluenceFunctionModel"]

#: Samples per chunk of the generic :meth:`InfluenceFunctionModel.self_influences`.
SELF_INFLUENCE_CHUNK = 256

TensorT = TypeVar("TensorT")
DataT = TypeVar("DataT")


class InfluenceFunctionModel(ABC, Generic[TensorT, DataT]):
    r"""An approximation of the inverse curvature of a trained model's training loss.

    Subclasses approximate ``H⁻¹`` (or a stand-in for it), where ``H`` is the
    Hessian of the *empirical mean* training loss
    ``L(θ) = (1/n) Σᵢ ℓ(zᵢ; θ)`` over the data given to :meth:`fit`.

    Sign convention (as in pyDVL): the influence of a training point ``z`` on
    a test point ``z_test`` is

    .. math::

        I(z_{test}, z) = \langle H^{-1} \nabla_\theta \ell(z_{test}),
                                \nabla_\theta \ell(z) \rangle

    *without* the minus sign of Koh & Liang's ``I_up,loss``. Up-weighting
    ``z`` by ``ε`` changes the test loss by ``-ε · I(z_test, z)`` to first
    order, so a **positive influence means the training point helps** (it
    lowers the test loss) and a negative one means it hurts. In
    :attr:`InfluenceMode.Perturbation` the value is the gradient of the same
    quantity with respect to the training features ``x``.

    Parameters of the computation are set in the constructor; :meth:`fit`
    consumes the training data. After :meth:`fit`:

    * :meth:`influence_factors` gives ``H⁻¹∇θℓ(zᵢ)`` per sample, shape
      ``(n, n_parameters)``. Factors of the test set are computed once and
      reused against any number of training chunks.
    * :meth:`influences_from_factors` contracts factors with training gradients.
    * :meth:`influences` does both; ``influences(x_test, y_test)`` (no training
      data) gives test-vs-test influences.
    * :meth:`self_influences` gives the diagonal ``I(zᵢ, zᵢ)`` in ``O(n)``
      memory and time, without the ``n × n`` matrix.
    * :meth:`per_sample_gradients` (optional, see :attr:`supports_gradients`)
      gives ``∇θℓ(zᵢ)``; up-mode influences are then ``factors @ gradientsᵀ``,
      which lets calculators compute training gradients once per chunk.

    Result shapes: ``(n_test, n_train)`` in up mode and
    ``(n_test, n_train, *x.shape[1:])`` in perturbation mode.
    """

    @property
    @abstractmethod
    def n_parameters(self) -> int:
        """Number of trainable parameters, the length of one influence factor."""

    @property
    @abstractmethod
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has been called."""

    @property
    def is_thread_safe(self) -> bool:
        """Whether one instance may be used from several threads at once.

        False unless a subclass guarantees otherwise: computing gradients
        usually mutates the wrapped model's state for the duration of a call.
        """
        return False

    @property
    def input_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """Per-sample shapes of ``x`` and ``y`` seen by :meth:`fit`, or None if unknown.

        Calculators use them to reject inputs of the wrong shape before any
        computation starts.
        """
        return None

    @property
    def supports_gradients(self) -> bool:
        """Whether :meth:`per_sample_gradients` is implemented."""
        return type(self)._per_sample_gradients is not InfluenceFunctionModel._per_sample_gradients

    @abstractmethod
    def fit(self, data: DataT) -> Self:
        """Compute (an approximation of) the curvature of the training loss on ``data``.

        Returns
        -------
        self
        """

    def influence_factors(self, x: TensorT, y: TensorT) -> TensorT:
        """``H⁻¹∇θℓ(xᵢ, yᵢ)`` for every sample, shape ``(len(x), n_parameters)``.

        Raises
        ------
        NotFittedError
            If :meth:`fit` has not been called.
        """
        self._check_fitted("influence_factors")
        with self._compute_context():
            return self._influence_factors(x, y)

    def per_sample_gradients(self, x: TensorT, y: TensorT) -> TensorT:
        """``∇θℓ(xᵢ, yᵢ)`` for every sample, flattened: shape ``(len(x), n_parameters)``.

        Where implemented, ``influences_from_factors(f, x, y, "up")`` equals
        ``f @ per_sample_gradients(x, y).T``.

        Raises
        ------
        NotFittedError
            If :meth:`fit` has not been called.
        NotImplementedError
            If the model does not expose gradients (:attr:`supports_gradients` is False).
        """
        self._check_fitted("per_sample_gradients")
        with self._compute_context():
            return self._per_sample_gradients(x, y)

    def influences(
        self,
        x_test: TensorT,
        y_test: TensorT,
        x: TensorT | None = None,
        y: TensorT | None = None,
        mode: InfluenceMode | str = InfluenceMode.Up,
    ) -> TensorT:
        """Influence of each training point ``(x, y)`` on each test point.

        Parameters
        ----------
        x_test, y_test
            Test features and targets.
        x, y
            Training features and targets. Both None (the default) means the
            test points themselves (test-vs-test influences).
        mode : InfluenceMode or {"up", "perturbation"}
            See :class:`InfluenceMode`.

        Returns
        -------
        tensor
            Shape ``(n_test, n_train)`` in up mode, ``(n_test, n_train,
            *x.shape[1:])`` in perturbation mode.

        Raises
        ------
        NotFittedError
            If :meth:`fit` has not been called.
        UnknownModeError
            If ``mode`` is not a known :class:`InfluenceMode`.
        """
        mode = InfluenceMode.parse(mode)
        self._check_fitted("influences")
        x, y = self._train_or_test(x_test, y_test, x, y)
        with self._compute_context():
            return self._influences(x_test, y_test, x, y, mode)

    @keyword_aliases(z_test_factors="factors")
    def influences_from_factors(
        self,
        factors: TensorT,
        x: TensorT,
        y: TensorT,
        mode: InfluenceMode | str = InfluenceMode.Up,
    ) -> TensorT:
        """Contract precomputed :meth:`influence_factors` with the gradients of ``(x, y)``.

        ``influences(x_test, y_test, x, y, mode)`` equals
        ``influences_from_factors(influence_factors(x_test, y_test), x, y, mode)``.

        Raises
        ------
        NotFittedError
            If :meth:`fit` has not been called.
        UnknownModeError
            If ``mode`` is not a known :class:`InfluenceMode`.
        """
        mode = InfluenceMode.parse(mode)
        self._check_fitted("influences_from_factors")
        with self._compute_context():
            return self._influences_from_factors(factors, x, y, mode)

    def self_influences(self, x: TensorT, y: TensorT, mode: InfluenceMode | str = InfluenceMode.Up) -> TensorT:
        r"""Influence of every sample on its own loss: the diagonal of ``influences(x, y, x, y, mode)``.

        In up mode ``I(zᵢ, zᵢ) = ⟨H⁻¹∇θℓ(zᵢ), ∇θℓ(zᵢ)⟩`` -- the standard
        mislabel detector: points the model can only fit by bending towards
        them have large self-influence. Computed in chunks, one factor and
        one gradient per sample, in ``O(n)`` memory (the full matrix is never
        formed).

        In perturbation mode the value for ``zᵢ`` is
        ``∇_{xᵢ} ⟨H⁻¹∇θℓ(z_{test}), ∇θℓ(xᵢ, yᵢ)⟩`` at ``z_test = zᵢ`` held
        fixed, i.e. ``influences(x, y, x, y, "perturbation")[i, i]``: how
        moving the features of ``zᵢ`` as a *training* point changes its
        influence on the (unmoved) test point ``zᵢ``. It is not the total
        derivative of ``I(zᵢ, zᵢ)`` in ``xᵢ``, which would also move the
        factor.

        Parameters
        ----------
        x, y
            Features and targets, ``len(x)`` samples.
        mode : InfluenceMode or {"up", "perturbation"}

        Returns
        -------
        tensor
            Shape ``(n,)`` in up mode, ``(n, *x.shape[1:])`` in perturbation mode.

        Raises
        ------
        NotFittedError
            If :meth:`fit` has not been called.
        UnknownModeError
            If ``mode`` is not a known :class:`InfluenceMode`.

        Notes
        -----
        The default implementation, shared by every model type, takes chunks
        of ``SELF_INFLUENCE_CHUNK`` samples: their factors, then row-wise dot
        products with their gradients (:meth:`per_sample_gradients`) or, for
        models without gradients and in perturbation mode, the diagonal of
        ``influences_from_factors`` on the chunk. Subclasses may override
        :meth:`_self_influences` with something cheaper. Models whose
        factors depend on the other samples solved with them (block CG
        before convergence) give the values of this chunking.
        """
        mode = InfluenceMode.parse(mode)
        self._check_fitted("self_influences")
        with self._compute_context():
            return self._self_influences(x, y, mode)

    # -- hooks for subclasses -------------------------------------------------------

    def _compute_context(self) -> AbstractContextManager[Any]:
        """Context every public computation runs in (default: none).

        Tensor libraries set their thread budget here (the torch models use
        :func:`dvl_dask.threads.torch_threads`).
        """
        return nullcontext()

    @abstractmethod
    def _influence_factors(self, x: TensorT, y: TensorT) -> TensorT:
        """Factors of validated-fitted model; inputs still to be checked."""

    @abstractmethod
    def _influences_from_factors(self, factors: TensorT, x: TensorT, y: TensorT, mode: InfluenceMode) -> TensorT:
        """Contraction for a fitted model; inputs still to be checked."""

    def _per_sample_gradients(self, x: TensorT, y: TensorT) -> TensorT:
        """Per-sample gradients of a fitted model; optional (see :attr:`supports_gradients`)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not expose per-sample gradients; use influences_from_factors() instead."
        )

    def _influences(self, x_test: TensorT, y_test: TensorT, x: TensorT, y: TensorT, mode: InfluenceMode) -> TensorT:
        """Default: factors of the test points, then their contraction with ``(x, y)``."""
        return self._influences_from_factors(self._influence_factors(x_test, y_test), x, y, mode)

    def _self_influences(self, x: TensorT, y: TensorT, mode: InfluenceMode) -> TensorT:
        """Generic diagonal, chunk by chunk: ``O(chunk²)`` work beyond one factor and gradient per sample."""
        n = len(x)  # type: ignore[arg-type]
        parts = []
        for i in range(0, n, SELF_INFLUENCE_CHUNK):
            xc, yc = x[i : i + SELF_INFLUENCE_CHUNK], y[i : i + SELF_INFLUENCE_CHUNK]  # type: ignore[index]
            factors = self._influence_factors(xc, yc)
            if mode is InfluenceMode.Up and self.supports_gradients:
                parts.append((factors * self._per_sample_gradients(xc, yc)).sum(-1))
            else:
                block = self._influences_from_factors(factors, xc, yc, mode)
                diagonal = list(range(len(xc)))
                parts.append(block[diagonal, diagonal])  # type: ignore[index]
        return self._concatenate(parts)

    def _concatenate(self, parts: list[TensorT]) -> TensorT:
        """Join result chunks along the sample axis, in the type of the chunks.

        ``torch.cat`` for torch tensors (torch is not imported here: the chunks
        come from an imported torch), ``numpy.concatenate`` otherwise. Tensor
        libraries may override it.
        """
        import sys

        import numpy as np

        lib = sys.modules.get(type(parts[0]).__module__.split(".")[0]) if parts else None
        if lib is not None and lib.__name__ == "torch":
            return lib.cat(parts)  # type: ignore[no-any-return]
        return np.concatenate(parts, axis=0)  # type: ignore[return-value]

    # -- helpers --------------------------------------------------------------------

    def _check_fitted(self, method: str) -> None:
        if not self.is_fitted:
            name = type(self).__name__
            raise NotFittedError(
                f"This {name} instance is not fitted yet: {method}() needs the curvature of the "
                f"training loss. Call {name}.fit(data_loader) with the training data first."
            )

    def _train_or_test(self, x_test: TensorT, y_test: TensorT, x: Any, y: Any) -> tuple[TensorT, TensorT]:
        if (x is None) != (y is None):
            given, missing = ("x", "y") if y is None else ("y", "x")
            raise InvalidParameterError(
                f"influences() got {given} but not {missing}. Pass both training features and targets, "
                "or neither to compute test-vs-test influences."
            )
        if x is None:
            return x_test, y_test
        return x, y
