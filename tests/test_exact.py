"""Exact Shapley and LOO against brute force, axioms and analytic games."""

from __future__ import annotations

import itertools
import math

import dask
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvl_dask.errors import InvalidParameterError, TooManyPlayersError
from dvl_dask.keys import fingerprint
from dvl_dask.testing import assert_valid_valuation_dataset
from dvl_dask.testing.games import (
    AdditiveGame,
    AirportGame,
    MinerGame,
    ShoesGame,
    SymmetricVotingGame,
    WeightedVotingGame,
)
from dvl_dask.valuation import exact_shapley, loo


class TableGame:
    """A game given by an arbitrary table of coalition values (indexed by bit mask)."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = np.asarray(table, dtype=np.float64)
        self.n_players = round(math.log2(len(self.table)))
        self.data_names = np.array([f"p{i}" for i in range(self.n_players)])
        self.token = fingerprint("TableGame", self.table)

    def __call__(self, indices) -> float:
        mask = sum(1 << int(i) for i in set(int(i) for i in indices))
        return float(self.table[mask])

    def __dask_tokenize__(self) -> str:
        return self.token


def brute_force_shapley(u, n: int) -> np.ndarray:
    """Average marginal contribution over all n! permutations (independent of the library).

    Each of the 2**n coalitions is evaluated once (a table indexed by bit mask), not once per
    permutation that passes through it: n = 8 took 322,560 calls of ``u`` instead of 256.
    """
    table = [u([i for i in range(n) if mask >> i & 1]) for mask in range(2**n)]
    phi = np.zeros(n)
    for perm in itertools.permutations(range(n)):
        mask = 0
        for i in perm:
            phi[i] += table[mask | 1 << i] - table[mask]
            mask |= 1 << i
    return phi / math.factorial(n)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6])
def test_exact_equals_brute_force_on_random_tables(rng, n):
    game = TableGame(rng.normal(size=2**n))
    ds = exact_shapley(game, block_size=7).compute(scheduler="sync")
    np.testing.assert_allclose(ds["value"].values, brute_force_shapley(game, n), rtol=0, atol=1e-12)
    assert_valid_valuation_dataset(ds)
    assert list(ds["sample"].values) == [f"p{i}" for i in range(n)]
    assert ds.attrs["n_evaluations"] == 2**n
    assert (ds["counts"].values == 2 ** (n - 1)).all()
    assert (ds["stderr"].values == 0).all()


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 6),
    block_size=st.integers(1, 70),
    seed=st.integers(0, 2**32 - 1),
)
def test_exact_shapley_axioms_property(n, block_size, seed):
    rng = np.random.default_rng(seed)
    table = rng.normal(size=2**n)
    # player 0 is a null player, players 1 and 2 are interchangeable (if present)
    def canonical(mask: int) -> int:
        mask &= ~1
        if n >= 3:
            k = ((mask >> 1) & 1) + ((mask >> 2) & 1)
            mask = (mask & ~0b110) | (0b010 if k >= 1 else 0) | (0b100 if k == 2 else 0)
        return mask

    table = np.array([table[canonical(m)] for m in range(2**n)])
    game = TableGame(table)
    values = exact_shapley(game, block_size=block_size)["value"].compute(scheduler="sync").values
    # efficiency
    assert values.sum() == pytest.approx(game(range(n)) - game([]), abs=1e-10)
    # null player
    assert values[0] == pytest.approx(0.0, abs=1e-10)
    # symmetry
    if n >= 3:
        assert values[1] == pytest.approx(values[2], abs=1e-10)


@pytest.mark.parametrize(
    "game",
    [
        AdditiveGame([0.5, -1.0, 2.0, 0.0]),
        SymmetricVotingGame(7),
        WeightedVotingGame([4, 3, 2, 1, 1], quota=6),
        ShoesGame(3, 5),
        ShoesGame(4, 4),
        AirportGame([1.0, 1.0, 2.0, 3.5, 6.0, 6.5]),
        MinerGame(7),
    ],
    ids=repr,
)
def test_games_analytic_values(game):
    ds = exact_shapley(game).compute(scheduler="sync")
    np.testing.assert_allclose(ds["value"].values, game.shapley_values(), atol=1e-12)
    np.testing.assert_allclose(game.shapley_values(), brute_force_shapley(game, game.n_players), atol=1e-12)


def test_exact_on_real_utility_matches_brute_force():
    from sklearn.datasets import load_iris
    from sklearn.neighbors import KNeighborsClassifier

    from dvl_dask import Dataset, Utility

    data = Dataset.from_sklearn(load_iris, train_size=6 / 150, seed=4, stratify=True)
    u = Utility(KNeighborsClassifier(n_neighbors=1), data, "accuracy")
    ds = exact_shapley(u, block_size=5).compute(scheduler="threads")
    np.testing.assert_allclose(ds["value"].values, brute_force_shapley(u, 6), atol=1e-12)
    assert ds["value"].sum() == pytest.approx(u(range(6)) - u([]))
    # labels are the rows of the original data the training points came from
    assert len(set(ds["sample"].values.tolist())) == 6


def test_loo_matches_definition(rng):
    game = TableGame(rng.normal(size=2**5))
    ds = loo(game, block_size=2).compute(scheduler="sync")
    full = game(range(5))
    expected = [full - game([j for j in range(5) if j != i]) for i in range(5)]
    np.testing.assert_allclose(ds["value"].values, expected, atol=1e-14)
    assert ds.attrs["method"] == "loo" and ds.attrs["n_evaluations"] == 6
    assert (ds["counts"].values == 1).all()


def test_exact_refuses_too_many_players():
    with pytest.raises(TooManyPlayersError, match="exceeds the limit") as info:
        exact_shapley(SymmetricVotingGame(21))
    assert isinstance(info.value, ValueError)
    assert "dask.config.set" in str(info.value)
    with dask.config.set({"dvl_dask.valuation.exact.max-players": 3}):
        with pytest.raises(TooManyPlayersError):
            exact_shapley(SymmetricVotingGame(4))


@pytest.mark.parametrize("block_size", [0, -1, 2.5, "8"])
def test_bad_block_size(block_size):
    with pytest.raises(InvalidParameterError, match="'block_size' parameter of exact_shapley"):
        exact_shapley(SymmetricVotingGame(3), block_size=block_size)
    with pytest.raises(InvalidParameterError, match="'block_size' parameter of loo"):
        loo(SymmetricVotingGame(3), block_size=block_size)


def test_bad_utility():
    with pytest.raises(InvalidParameterError, match="'utility' argument of exact_shapley"):
        exact_shapley(lambda s: 0.0)


def test_block_size_from_config_read_at_call_time():
    game = SymmetricVotingGame(4)
    with dask.config.set({"dvl_dask.valuation.exact.subsets-per-block": 4}):
        ds = exact_shapley(game)
    assert ds.dvl.parameters == {"block_size": 4}
    assert len(ds["value"].data.dask.layers) > 1
    # explicit arguments win over config
    with dask.config.set({"dvl_dask.valuation.exact.subsets-per-block": 4}):
        assert exact_shapley(game, block_size=3).dvl.parameters == {"block_size": 3}


def test_each_coalition_evaluated_exactly_once():
    calls: list[tuple[int, ...]] = []

    class Recording(TableGame):
        def __call__(self, indices):
            calls.append(tuple(sorted(int(i) for i in indices)))
            return super().__call__(indices)

    game = Recording(np.arange(2**5, dtype=float))
    exact_shapley(game, block_size=6).compute(scheduler="sync")
    assert len(calls) == 2**5 and len(set(calls)) == 2**5
