"""Cache, checkpoint and resume decisions are logged on the "dvl_dask" logger."""

from __future__ import annotations

import logging

import numpy as np

from dvl_dask.cache import InMemoryCacheBackend, memoize
from dvl_dask.testing.games import AdditiveGame
from dvl_dask.valuation import MaxUpdates, permutation_shapley, run_until_converged

GAME = AdditiveGame([1.0, 2.0, 3.0])


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("dvl_dask")]


def test_checkpoint_creation_and_resume_are_logged(tmp_path, caplog):
    url = str(tmp_path / "ck.zarr")
    kwargs = dict(seed=0, items_per_block=1, checkpoint=url, progress=False)
    with caplog.at_level(logging.INFO, logger="dvl_dask"):
        run_until_converged(permutation_shapley, GAME, stop=MaxUpdates(2), **kwargs)
        first = _messages(caplog)
        caplog.clear()
        ds = run_until_converged(permutation_shapley, GAME, stop=MaxUpdates(3), **kwargs)
        second = _messages(caplog)
    np.testing.assert_allclose(ds["value"].values, [1.0, 2.0, 3.0])
    assert any("Created checkpoint" in m and url in m for m in first)
    assert any("Resuming checkpoint" in m and "2 committed blocks" in m for m in second)
    assert any("resumed 2 committed blocks" in m for m in second)
    assert any("stopped after 3 blocks" in m for m in second)


def test_cache_decisions_are_logged_at_debug(caplog):
    def square(x):
        return x * x

    f = memoize(square, InMemoryCacheBackend())
    with caplog.at_level(logging.DEBUG, logger="dvl_dask"):
        assert f(3) == 9 and f(3) == 9
    messages = _messages(caplog)
    assert any(m.startswith("cache miss") and "stored" in m for m in messages)
    assert any(m.startswith("cache hit") for m in messages)


def test_silent_by_default(capsys):
    run_until_converged(permutation_shapley, GAME, stop=MaxUpdates(2), seed=0, items_per_block=1)
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err == ""
