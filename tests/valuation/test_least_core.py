"""Least core: known least cores, an LP solved independently here, efficiency and every constraint."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.optimize import linprog

from dvl_dask.errors import DvlDaskError, InvalidParameterError, TooManyPlayersError
from dvl_dask.testing import assert_valid_valuation_dataset
from dvl_dask.testing.games import AirportGame, MinerGame, ShoesGame, SymmetricVotingGame, WeightedVotingGame
from dvl_dask.valuation import LeastCoreError, exact_least_core, montecarlo_least_core
from dvl_dask.valuation._least_core import least_core_from_constraints


def reference_subsidy(game) -> float:
    """Minimal e with x(S) + e >= v(S) for every non-empty proper S and x(N) = v(N), via a dense LP."""
    n = game.n_players
    rows, rhs = [], []
    for size in range(1, n):
        for s in itertools.combinations(range(n), size):
            row = np.zeros(n + 1)
            row[list(s)] = -1.0
            row[n] = -1.0
            rows.append(row)
            rhs.append(-game(list(s)))
    res = linprog(
        np.r_[np.zeros(n), 1.0],
        A_ub=np.array(rows),
        b_ub=np.array(rhs),
        A_eq=np.r_[np.ones(n), 0.0][None],
        b_eq=[game(range(n))],
        bounds=[(None, None)] * (n + 1),
    )
    assert res.status == 0
    return float(res.x[n])


def all_constraints_hold(game, x, e, tol=1e-7) -> bool:
    n = game.n_players
    return all(
        x[list(s)].sum() + e >= game(list(s)) - tol
        for size in range(1, n)
        for s in itertools.combinations(range(n), size)
    )


GAMES = [
    ShoesGame(2, 3),
    ShoesGame(3, 3),
    MinerGame(4),
    MinerGame(5),
    SymmetricVotingGame(5),
    AirportGame([1.0, 2.0, 4.0, 4.5]),
    WeightedVotingGame([3, 2, 2, 1, 1], quota=5),
]


@pytest.mark.parametrize("game", GAMES, ids=repr)
def test_exact_least_core_is_efficient_feasible_and_minimal(game):
    ds = exact_least_core(game).compute()
    assert_valid_valuation_dataset(ds)
    x, e = ds.value.values, float(ds.subsidy)
    n = game.n_players
    assert x.sum() == pytest.approx(game(range(n)), abs=1e-9)
    assert e == pytest.approx(reference_subsidy(game), abs=1e-8)
    assert all_constraints_hold(game, x, e)
    assert (ds.counts.values == 2 ** (n - 1)).all()


def test_known_least_cores():
    # Scarce left shoes take everything; the core is a single point, e = 0.
    ds = exact_least_core(ShoesGame(2, 3)).compute()
    np.testing.assert_allclose(ds.value.values, [1, 1, 0, 0, 0], atol=1e-7)
    # Even number of miners: every pair carries one bar, x_i = 1/2 with e = 0.
    ds = exact_least_core(MinerGame(6)).compute()
    np.testing.assert_allclose(ds.value.values, 0.5, atol=1e-7)
    assert float(ds.subsidy) == pytest.approx(0.0, abs=1e-9)
    # Majority voting of 5: the core is empty; the symmetric least core gives 1/5 each and e = 3/5 - 1 + ... > 0.
    ds = exact_least_core(SymmetricVotingGame(5)).compute()
    np.testing.assert_allclose(ds.value.values, 0.2, atol=1e-7)
    assert float(ds.subsidy) == pytest.approx(0.4, abs=1e-8)


def test_minimal_norm_is_selected_among_least_core_allocations():
    """Additive game: x = weights is the whole least core (e = 0); a game with a flat face picks the smallest norm."""
    from dvl_dask.testing.games import AdditiveGame

    ds = exact_least_core(AdditiveGame([1.0, 2.0, 3.0])).compute()
    np.testing.assert_allclose(ds.value.values, [1.0, 2.0, 3.0], atol=1e-7)
    # v(S) = 0 except v(N) = 1: any x >= -e with sum 1; e* = -1/3 forces x = 1/3 each.
    rows = np.array([[*map(float, bits), 1.0 if all(bits) else 0.0] for bits in itertools.product([0, 1], repeat=3)])
    sol = least_core_from_constraints(rows, 3)
    np.testing.assert_allclose(sol, [1 / 3, 1 / 3, 1 / 3, -1 / 3], atol=1e-8)
    sol = least_core_from_constraints(rows, 3, non_negative_subsidy=True)
    assert sol[3] == pytest.approx(0.0) and sol[:3].sum() == pytest.approx(1.0)
    np.testing.assert_allclose(sol[:3], 1 / 3, atol=1e-6)


def test_montecarlo_least_core_approaches_exact_and_is_seeded():
    game = MinerGame(6)
    mc = montecarlo_least_core(game, 400, seed=3)
    again = montecarlo_least_core(game, 400, seed=3)
    assert mc.value.data.name == again.value.data.name
    ds = mc.compute()
    assert ds.value.values.sum() == pytest.approx(3.0)
    np.testing.assert_allclose(ds.value.values, 0.5, atol=1e-6)
    assert ds.attrs["n_evaluations"] == 401 and ds.attrs["seed"] == "3"


def test_montecarlo_scales_past_bit_masks():
    from dvl_dask.testing.games import AdditiveGame

    weights = np.linspace(0.0, 1.0, 70)
    ds = montecarlo_least_core(AdditiveGame(weights), 600, seed=0, block_size=200).compute()
    assert ds.value.values.sum() == pytest.approx(weights.sum())


def test_errors():
    with pytest.raises(InvalidParameterError, match="n_samples"):
        montecarlo_least_core(MinerGame(5), 3)
    with pytest.raises(TooManyPlayersError):
        exact_least_core(MinerGame(30))
    with pytest.raises(LeastCoreError, match="grand coalition"):
        least_core_from_constraints(np.array([[1.0, 0.0, 1.0]]), 2)
    with pytest.raises(LeastCoreError, match="proper coalition"):
        least_core_from_constraints(np.array([[1.0, 1.0, 1.0]]), 2)
    assert issubclass(LeastCoreError, DvlDaskError)


class CountingMiner(MinerGame):
    calls = 0

    def value(self, players):
        CountingMiner.calls += 1
        return super().value(players)


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_every_coalition_is_evaluated_once(scheduler):
    """The values, counts and subsidy share one node of evaluated coalitions (no second evaluation)."""
    CountingMiner.calls = 0
    exact_least_core(CountingMiner(7)).compute(scheduler=scheduler)
    assert CountingMiner.calls == 2**7
    CountingMiner.calls = 0
    montecarlo_least_core(CountingMiner(7), 50, seed=0).compute(scheduler=scheduler)
    assert CountingMiner.calls == 51
