"""Methods pyDVL 0.10 has that dvl_dask lacked (issue 28), each against a truth written here.

Truths are brute force over all permutations or all coalitions of a tiny game,
or closed forms derived in the comments; never the library's own code for the
same quantity.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dvl_dask.errors import InvalidParameterError
from dvl_dask.testing.games import AdditiveGame
from dvl_dask.valuation import DeviationTruncation, permutation_shapley


# -- DeviationTruncation ---------------------------------------------------------------------------
def _deviation_truth(game, burn_in_fraction: float, sigmas: float) -> np.ndarray:
    """Expected truncated marginals over all n! permutations, with pyDVL's rule written out."""
    n = game.n_players
    total = game(np.arange(n))
    out = np.zeros(n)
    perms = list(itertools.permutations(range(n)))
    for perm in perms:
        previous, scores = game([]), []
        for step in range(1, n + 1):
            score = game(list(perm[:step]))
            out[perm[step - 1]] += score - previous
            previous = score
            scores.append(score)
            std = float(np.std(scores))  # population std of the prefix scores so far
            if len(scores) >= burn_in_fraction * n and abs(score - total) < sigmas * std:
                break  # the remaining players get 0
    return out / len(perms)


def test_deviation_truncation_rule_by_hand():
    stop = DeviationTruncation(0.5, sigmas=2.0).checker(4, total=10.0)
    # scores 0 (count 1 < burn-in 2), then 9: std of (0, 9) is 4.5, |9 - 10| < 9 -> stop
    assert [stop(1, 0.0), stop(2, 9.0)] == [False, True]
    fresh = DeviationTruncation(0.5, sigmas=2.0).checker(4, total=10.0)
    assert fresh(1, 9.0) is False  # state does not leak between permutations


def test_deviation_truncation_converges_to_its_biased_expectation():
    game = AdditiveGame([4.0, 4.0, 4.0, 0.5])
    truth = _deviation_truth(game, 0.25, 0.5)
    assert not np.allclose(truth, game.shapley_values())  # the rule really truncates this game
    ds = permutation_shapley(
        game, n_permutations=600, seed=3, truncation=DeviationTruncation(0.25, sigmas=0.5)
    ).compute(scheduler="sync")
    assert np.all(np.abs(ds.value.values - truth) <= 4.5 * ds.stderr.values + 1e-12)
    assert ds.attrs["biased"] is True or ds.attrs["biased"] == 1
    assert ds.attrs["bias"].startswith("DeviationTruncation(burn_in_fraction=0.25, sigmas=0.5)")


@pytest.mark.parametrize(("kwargs", "name"), [({"burn_in_fraction": 1.5}, "burn_in_fraction"),
                                              ({"burn_in_fraction": 0.1, "sigmas": 0.0}, "sigmas")])
def test_deviation_truncation_bad_input(kwargs, name):
    with pytest.raises(InvalidParameterError, match=name):
        DeviationTruncation(**kwargs)
