"""Influence modes: members, strings, clear errors (no torch needed)."""

from __future__ import annotations

import pytest

from dvl_dask.errors import InvalidParameterError, UnknownModeError
from dvl_dask.influence import BlockMode, InfluenceFunctionModel, InfluenceMode, SecondOrderMode


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("up", InfluenceMode.Up),
        ("UP", InfluenceMode.Up),
        (" perturbation ", InfluenceMode.Perturbation),
        (InfluenceMode.Perturbation, InfluenceMode.Perturbation),
    ],
)
def test_influence_mode_accepts_members_and_strings(value, expected):
    assert InfluenceMode.parse(value) is expected
    assert InfluenceMode(value) is expected


@pytest.mark.parametrize("value", ["down", "", 1, None])
def test_unknown_influence_mode(value):
    with pytest.raises(UnknownModeError, match=r"is not a valid InfluenceMode. Use one of 'up', 'perturbation'"):
        InfluenceMode.parse(value)
    with pytest.raises(InvalidParameterError):  # UnknownModeError is a parameter error (and a ValueError)
        InfluenceMode(value)


def test_other_modes():
    assert SecondOrderMode.parse("gauss-newton") is SecondOrderMode.GaussNewton
    assert SecondOrderMode.parse("Hessian") is SecondOrderMode.Hessian
    assert BlockMode.parse("layer") is BlockMode.Layer
    with pytest.raises(UnknownModeError, match=r"'hessian', 'gauss_newton'"):
        SecondOrderMode.parse("fisher")


def test_interface_is_abstract():
    with pytest.raises(TypeError, match=r"abstract"):
        InfluenceFunctionModel()


class _Toy(InfluenceFunctionModel):
    """A scalar 'model' with H = 2: factors are g / 2, gradients are the inputs."""

    def __init__(self):
        self.fitted = False

    @property
    def n_parameters(self):
        return 1

    @property
    def is_fitted(self):
        return self.fitted

    def fit(self, data):
        self.fitted = True
        return self

    def _influence_factors(self, x, y):
        return [xi / 2 for xi in x]

    def _influences_from_factors(self, factors, x, y, mode):
        assert mode is InfluenceMode.Up
        return [[f * xi for xi in x] for f in factors]


def test_interface_template_methods():
    toy = _Toy()
    assert not toy.is_thread_safe
    with pytest.raises(Exception, match=r"not fitted yet"):
        toy.influences([1.0], [0.0])
    toy.fit(None)
    assert toy.influences([2.0], [0.0], [1.0, 3.0], [0.0, 0.0], mode="up") == [[1.0, 3.0]]
    assert toy.influences([2.0, 4.0], [0.0, 0.0]) == [[2.0, 4.0], [4.0, 8.0]]  # test vs test
