"""Modes that select what an influence model computes and how it approximates curvature.

Each mode is an :class:`enum.Enum` whose values are lower-case strings, and
every public function accepts either the member or its string (in any case).
An unknown string raises :class:`~dvl_dask.errors.UnknownModeError` naming the
accepted values.
"""

from __future__ import annotations

import enum
from typing import Any, Self

from ..errors import UnknownModeError

__all__ = ["BlockMode", "InfluenceMode", "SecondOrderMode"]


class _StrMode(enum.Enum):
    """An enum that also accepts its values as case-insensitive strings."""

    @classmethod
    def _missing_(cls, value: Any) -> Any:
        if isinstance(value, str):
            wanted = value.strip().lower().replace("-", "_")
            for member in cls:
                if member.value == wanted:
                    return member
        accepted = ", ".join(repr(m.value) for m in cls)
        raise UnknownModeError(
            f"{value!r} is not a valid {cls.__name__}. Use one of {accepted} "
            f"(or the members {', '.join(f'{cls.__name__}.{m.name}' for m in cls)})."
        )

    @classmethod
    def parse(cls, value: Any) -> Self:
        """Return the member for ``value`` (a member or its string value).

        Raises
        ------
        UnknownModeError
            If ``value`` names no member.
        """
        if isinstance(value, cls):
            return value
        return cls(value)


class InfluenceMode(_StrMode):
    """What an influence value measures.

    Up
        ``⟨H⁻¹∇θℓ(z_test), ∇θℓ(z)⟩``: the effect of up-weighting a training
        point on the test loss (sign convention in
        :class:`~dvl_dask.influence.InfluenceFunctionModel`).
    Perturbation
        ``∇x ⟨H⁻¹∇θℓ(z_test), ∇θℓ(z)⟩``: the effect of perturbing the features
        ``x`` of a training point, one value per feature.

    Examples
    --------
    >>> InfluenceMode("up") is InfluenceMode.Up
    True
    >>> InfluenceMode.parse("Perturbation")
    <InfluenceMode.Perturbation: 'perturbation'>
    """

    Up = "up"
    Perturbation = "perturbation"


class SecondOrderMode(_StrMode):
    """Which curvature matrix stands in for ``H``.

    Hessian
        The Hessian of the empirical mean training loss.
    GaussNewton
        The generalised Gauss–Newton matrix ``mean_i Jᵢᵀ ∇²ℓᵢ Jᵢ`` (``J`` the
        Jacobian of the model output w.r.t. the parameters). It is positive
        semi-definite for convex losses such as MSE and cross-entropy, which
        makes iterative solvers and low-rank sketches better behaved.
    """

    Hessian = "hessian"
    GaussNewton = "gauss_newton"


class BlockMode(_StrMode):
    """How the curvature matrix is split before inversion.

    Full
        One block holding every trainable parameter.
    Layer
        Block-diagonal: one block per module owning parameters (e.g. an
        ``nn.Linear``'s weight and bias together). Cross-layer curvature is
        ignored, which makes inversion far cheaper.
    """

    Full = "full"
    Layer = "layer"
