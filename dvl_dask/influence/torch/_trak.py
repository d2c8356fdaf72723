"""Random-projection attribution (TRAK-style): influence solved in a seeded k-dimensional gradient sketch."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Self

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...errors import InvalidModelError, InvalidParameterError, NotFittedError
from ...threads import uses_torch_threads
from ...validation import check_positive_int
from .._mode import BlockMode
from ._data import iter_batches
from ._functional import FunctionalModel, LossFn
from ._model_base import GRAD_CHUNK, BlockStructure, FeatureInfluenceModel, _data_token
from ._projection import PROJECTIONS, RandomProjection
from ._tracin import load_checkpoint_states

__all__ = ["TrakInfluence"]

CURVATURES = ("gauss_newton", "empirical_fisher")
#: Bound on elements of per-sample Jacobians held at once during fit.
FIT_BUDGET = 2**24
#: Bound on elements of per-sample gradients projected together: the projection is regenerated
#: (block by block) once per such chunk, so larger chunks amortise it over more samples.
FEATURE_BUDGET = 2**26
_STORE_TAG = "dvl_dask_projected_gradients"


class TrakInfluence(FeatureInfluenceModel):
    r"""Influence in a random projection of the gradients (TRAK, Park et al. 2023).

    Per-sample gradients ``g`` are projected to ``φ = Pᵀg`` with a seeded
    ``p x k`` random matrix ``P`` (generated block by block, never held
    whole: see :class:`RandomProjection`), the curvature is formed and
    inverted in those ``k`` dimensions, and

    .. math::

        I(z_{test}, z) = φ(z_{test})ᵀ (C + λI)^{-1} φ(z),
        \qquad C = \frac1n \sum_i (J_i P)ᵀ H_{o,i} (J_i P)

    (``curvature="gauss_newton"``, TRAK's ``ΦᵀΦ`` of output gradients
    weighted by the loss's output Hessian ``H_o``) or ``C = (1/n) Σ φᵢφᵢᵀ``
    (``"empirical_fisher"``: projected loss gradients, one backward pass per
    sample). With an orthogonal projection and ``k >= p`` this is exactly
    :class:`DirectInfluence` with ``second_order_mode="gauss_newton"`` (resp.
    the empirical Fisher). Memory: ``k x k`` per block and checkpoint, and
    ``k`` numbers per training point, which makes models with 10⁷
    parameters tractable on a CPU.

    With several ``checkpoints`` (e.g. independently trained models) the
    result is the mean over them, as in TRAK's ensembles. With
    ``block_structure="layer"`` each layer gets its own ``k``-dimensional
    projection and curvature (LoGra-style per-layer projections).

    Factors have ``n_parameters = n_checkpoints x n_blocks x k`` columns and
    :meth:`per_sample_gradients` returns the projected gradients, so the
    calculators use the projected space throughout. :meth:`fit` can write
    the projected training gradients to a zarr ``store`` once; a later fit of
    the same model, projection and data reads the curvature back without
    touching the data, and :meth:`train_influences` contracts any number of
    test points with the stored gradients lazily.

    Parameters
    ----------
    model : nn.Module
        The trained model (see :class:`TorchInfluenceFunctionModel`).
    loss : callable
        Mean-reduced loss ``loss(output, target) -> scalar``.
    projection_dim : int
        ``k``, the dimension of the projected gradients (default 512).
    projection : {"rademacher", "gaussian", "orthogonal"}
        Distribution of ``P``; ``"orthogonal"`` is dense, for small models.
    seed : int
        Seed of ``P`` (default 0).
    regularization : float
        ``λ ≥ 0`` added to the projected curvature (TRAK uses ``λ = 0``
        and ``ΦᵀΦ`` unnormalised; here ``C`` is a mean over samples, so
        ``λ`` is on the scale of the other models' regularization).
    curvature : {"gauss_newton", "empirical_fisher"}
        See above (default ``"gauss_newton"``).
    block_structure : BlockMode, str or mapping
        ``"full"`` (one projection) or ``"layer"`` / a mapping (one per block).
    checkpoints : list of state dicts or nn.Module, optional
        Model states to ensemble over (default: the model's own state).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import torch.nn.functional as F
    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.randn(40, 3), torch.randn(40, 1)
    >>> trak = TrakInfluence(nn.Linear(3, 1), F.mse_loss, projection_dim=8, regularization=0.1).fit((x, y))
    >>> trak.influences(x[:2], y[:2], x, y).shape
    torch.Size([2, 40])
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        *,
        projection_dim: int = 512,
        projection: str = "rademacher",
        seed: int = 0,
        regularization: float = 0.0,
        curvature: str = "gauss_newton",
        block_structure: BlockStructure = BlockMode.Full,
        checkpoints: Sequence[Any] | None = None,
    ) -> None:
        super().__init__(model, loss, regularization=regularization, block_structure=block_structure)
        owner = self._owner
        self.projection_dim = check_positive_int(projection_dim, "projection_dim", owner)
        if projection not in PROJECTIONS:
            raise InvalidParameterError(
                f"The 'projection' parameter of {owner} must be one of {PROJECTIONS}. Got {projection!r}."
            )
        if curvature not in CURVATURES:
            raise InvalidParameterError(
                f"The 'curvature' parameter of {owner} must be one of {CURVATURES}. Got {curvature!r}."
            )
        self.projection = projection
        self.seed = self._check_seed(seed)
        self.curvature = curvature
        self.checkpoints = None if checkpoints is None else load_checkpoint_states(model, checkpoints, owner)
        self._fms: list[FunctionalModel] = []
        self._projections: list[RandomProjection] = []
        self._inverses: list[torch.Tensor] = []
        self._store: tuple[str, dict[str, Any] | None] | None = None
        self._n_train = 0

    # -- sizes ------------------------------------------------------------------------------

    @property
    def n_checkpoints(self) -> int:
        return 1 if self.checkpoints is None else len(self.checkpoints)

    @property
    def n_parameters(self) -> int:
        """Length of one factor: ``n_checkpoints x n_blocks x projection_dim``."""
        return self.n_checkpoints * len(self._blocks) * self.projection_dim

    @property
    def n_train(self) -> int:
        """Number of training samples seen by :meth:`fit`."""
        return self._n_train

    # -- fitting ---------------------------------------------------------------------------

    @uses_torch_threads
    def fit(  # type: ignore[override]
        self,
        data: DataLoader | tuple[torch.Tensor, torch.Tensor],
        *,
        store: str | os.PathLike[str] | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> Self:
        """Project the training gradients and invert the projected curvature.

        Parameters
        ----------
        data : DataLoader or tuple of tensors
            The training data.
        store : str or path, optional
            Zarr store (local path or fsspec URL) for the projected training
            gradients. If it already holds those of this model, projection
            and data, the curvature is read from it and the data is not
            touched; otherwise it is (re)written.
        storage_options : mapping, optional
            fsspec options for a remote ``store``.

        Returns
        -------
        self
        """
        if store is not None:
            from ...results._stores import check_location

            store = check_location(store, f"{self._owner}.fit")
        self._store = None if store is None else (str(store), dict(storage_options or {}))
        return super().fit(data)

    def _functional_models(self, fm: FunctionalModel) -> list[FunctionalModel]:
        if self.checkpoints is None:
            return [fm]
        fms = []
        for state in self.checkpoints:
            other = FunctionalModel(self._net, self.loss, self._layout, copy=False)
            other.params = {n: state[n] for n in other.params}
            other.state = {n: state[n] for n in other.state}
            fms.append(other)
        return fms

    def _make_projections(self) -> None:
        self._projections = [
            RandomProjection(
                b.n,
                self.projection_dim,
                self.projection,
                self.seed * 1_000_003 + i,
                dtype=self.dtype,
                device=self.device,
            )
            for i, b in enumerate(self._blocks)
        ]

    def _store_key(self, loader: DataLoader) -> str:
        from ...keys import class_token, object_token

        data = _data_token(loader)
        if isinstance(data, Exception):
            raise data
        return object_token(
            "projected-gradients",
            class_token(type(self)),
            self.parameter_fingerprint(),  # the module as fitted (a private copy), not the live one
            self.loss,
            self.projection_dim,
            self.projection,
            self.seed,
            self.curvature,
            [(b.name, b.n) for b in self._blocks],
            self.checkpoints,
            data,
        )

    def _fit(self, fm: FunctionalModel, loader: DataLoader) -> None:
        # A fresh object: the store's location is a fitted attribute, not part of the model's token.
        self._store = None if self._store is None else (self._store[0], self._store[1])
        self._fms = self._functional_models(fm)
        k = self.projection_dim
        self._make_projections()
        curv = None
        writer = None
        if self._store is not None:
            key = self._store_key(loader)
            curv, n = _read_store(*self._store, key)
            if curv is None:
                writer = _StoreWriter(*self._store, key, self.n_parameters)
        if curv is None:
            curv, n = self._accumulate(loader, writer)
            if writer is not None:
                writer.finish(curv, n)
        self._n_train = n
        eye = torch.eye(k, dtype=self.dtype, device=self.device)
        inverses = []
        for i, c in enumerate(curv):
            c = c.to(device=self.device, dtype=self.dtype) + self.regularization * eye
            self._check_conditioning(
                torch.linalg.eigvalsh((c + c.T) / 2),
                f"the regularised projected curvature {i} ({c.shape[0]}x{c.shape[0]})",
            )
            inv, info = torch.linalg.inv_ex(c)
            if int(info) != 0 or not bool(torch.isfinite(inv).all()):
                raise InvalidModelError(
                    f"{self._owner}: the projected curvature (checkpoint {i // len(self._blocks)}, block "
                    f"{self._blocks[i % len(self._blocks)].name!r}) is singular with regularization="
                    f"{self.regularization}. To fix, pass a positive regularization or a smaller projection_dim."
                )
            inverses.append((inv + inv.T) / 2)
        self._inverses = inverses

    def _accumulate(self, loader: DataLoader, writer: _StoreWriter | None) -> tuple[list[torch.Tensor], int]:
        k, nb = self.projection_dim, len(self._blocks)
        curv = [torch.zeros(k, k, dtype=self.dtype, device=self.device) for _ in range(len(self._fms) * nb)]
        n = 0
        for xb, yb in iter_batches(loader, f"{self._owner}.fit"):
            xb, yb = self._check_inputs(xb, yb, "fit", prefix=" (batch)")
            feats = self._features(xb, yb)
            if writer is not None:
                writer.append(feats)
            if self.curvature == "empirical_fisher":
                for j in range(len(curv)):
                    phi = feats[:, j * k : (j + 1) * k]
                    curv[j] += phi.T @ phi
            else:
                self._add_gauss_newton(curv, xb, yb)
            n += len(xb)
        return [c / n for c in curv], n

    def _add_gauss_newton(self, curv: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> None:
        nb = len(self._blocks)
        for c, fm in enumerate(self._fms):
            out = fm.output(fm.params, x[:1])
            m = out[0].numel()
            for b, (block, proj) in enumerate(zip(self._blocks, self._projections)):
                step = max(1, FEATURE_BUDGET // (m * block.n))
                for i in range(0, len(x), step):
                    xs, ys = x[i : i + step], y[i : i + step]
                    with torch.no_grad():
                        h_out = fm.per_sample_output_hessian(fm.output(fm.params, xs), ys)
                    jp = proj.project(fm.per_sample_output_jacobian(block.layout, xs).detach())  # (n, m, k)
                    curv[c * nb + b] += torch.einsum("nik,nij,njl->kl", jp, h_out, jp)

    # -- projected gradients and factors ------------------------------------------------------

    def _features(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Projected per-sample loss gradients, ``[Pᵦᵀ g_{c,b}]`` over checkpoints c and blocks b."""
        p = self._layout.n
        step = max(1, min(GRAD_CHUNK, FEATURE_BUDGET // p))
        rows = []
        for i in range(0, len(x), step):
            xs, ys = x[i : i + step], y[i : i + step]
            parts = []
            for fm in self._fms:
                g = fm.per_sample_grads(xs, ys, i).detach()
                for block, proj in zip(self._blocks, self._projections):
                    parts.append(proj.project(block.select(g)))
            rows.append(torch.cat(parts, dim=1))
        return torch.cat(rows)

    def _scale(self, feats: torch.Tensor) -> torch.Tensor:
        k = self.projection_dim
        out = torch.empty_like(feats)
        for j, inv in enumerate(self._inverses):
            out[:, j * k : (j + 1) * k] = feats[:, j * k : (j + 1) * k] @ inv
        return out / len(self._fms)

    def _parameter_factors(self, factors: torch.Tensor) -> Iterator[tuple[FunctionalModel, torch.Tensor]]:
        """<f, Pᵀ g(x)> = <P f, g(x)>: the factors back-projected, per checkpoint."""
        k, nb, p = self.projection_dim, len(self._blocks), self._layout.n
        for c, fm in enumerate(self._fms):
            full = torch.zeros(factors.shape[0], p, dtype=factors.dtype, device=factors.device)
            for b, (block, proj) in enumerate(zip(self._blocks, self._projections)):
                j = c * nb + b
                back = torch.cat(
                    [factors[:, j * k : (j + 1) * k] @ proj.block(r).T for r in range(proj.n_blocks)], dim=1
                )
                cols = block.columns
                full[:, cols if isinstance(cols, slice) else cols.to(full.device)] = back
            yield fm, full

    # -- stored training gradients ---------------------------------------------------------------

    def train_gradients(self) -> Any:
        """The projected training gradients in the ``store`` of :meth:`fit`, as a lazy dask array.

        Shape ``(n_train, n_parameters)``, in the order of the training data.

        Raises
        ------
        NotFittedError
            If the model was not fitted with a ``store``.
        """
        import dask.array as da
        import zarr

        from ...results._stores import zarr_store

        self._check_fitted("train_gradients")
        if self._store is None:
            raise NotFittedError(
                f"{self._owner}.train_gradients() reads the projected gradients stored by fit(data, store=url). "
                "This model was fitted without a store. To fix, refit with store='<path or URL>.zarr'."
            )
        group = zarr.open_group(zarr_store(self._store[0], self._store[1], read_only=True), mode="r", zarr_format=3)
        return da.from_zarr(group["gradients"])

    def train_influences(self, x_test: torch.Tensor, y_test: torch.Tensor) -> Any:
        """Influence of every stored training point on each test point, lazily (a dask array).

        The test factors are computed now (they are small: ``n_test x
        n_parameters``); the product with the stored projected gradients is
        a dask graph over their zarr chunks, shape ``(n_test, n_train)``.
        Write it with :func:`dvl_dask.influence.influence_to_zarr`.
        """
        import dask.array as da

        grads = self.train_gradients()
        factors = self.influence_factors(x_test, y_test).cpu().numpy()
        return da.from_array(factors, chunks=(len(factors), -1)) @ grads.T


# -- the zarr store of projected gradients ----------------------------------------------------


def _read_store(url: str, options: dict[str, Any] | None, key: str) -> tuple[list[torch.Tensor] | None, int]:
    """The stored curvature blocks and sample count if ``url`` holds a complete store for ``key``."""
    import zarr

    from ...results._stores import has_content, zarr_store

    if not has_content(url, options):
        return None, 0
    try:
        group = zarr.open_group(zarr_store(url, options, read_only=True), mode="r", zarr_format=3)
        meta = dict(group.attrs).get(_STORE_TAG)
    except Exception:
        meta = None
    if not isinstance(meta, dict):
        raise InvalidParameterError(
            f"The 'store' {url!r} holds something other than projected gradients of dvl_dask. To fix, pass an "
            "empty or new location."
        )
    if meta.get("key") != key or not meta.get("complete"):
        return None, 0
    curv = torch.from_numpy(group["curvature"][...])
    return list(curv), int(meta["n_train"])


class _StoreWriter:
    """Appends projected gradients batch by batch; marks the store complete with the curvature."""

    def __init__(self, url: str, options: dict[str, Any] | None, key: str, width: int) -> None:
        import zarr

        from ...results._stores import zarr_store

        self.group = zarr.open_group(zarr_store(url, options), mode="w", zarr_format=3)
        self.group.attrs[_STORE_TAG] = {"key": key, "complete": False}
        self.key, self.width = key, width
        self.array: Any = None

    def append(self, feats: torch.Tensor) -> None:
        values = feats.detach().cpu().numpy()
        if self.array is None:
            self.array = self.group.create_array(
                "gradients", shape=(0, self.width), chunks=(max(1, len(values)), self.width), dtype=values.dtype
            )
        self.array.append(values, axis=0)

    def finish(self, curv: list[torch.Tensor], n: int) -> None:
        stacked = torch.stack(curv).cpu().numpy()
        arr = self.group.create_array("curvature", shape=stacked.shape, dtype=stacked.dtype)
        arr[...] = stacked
        self.group.attrs[_STORE_TAG] = {"key": self.key, "complete": True, "n_train": n}
