"""``run_until_converged``: the one eager loop of dvl_dask.

It runs blocks of a Monte Carlo method until a stopping criterion holds:
through a ``distributed.Client`` (the utility scattered once to every worker,
blocks streamed with ``as_completed``), through any
``concurrent.futures.Executor``, or in waves of ``dask.compute`` on the
current Dask scheduler. It never wraps or chooses the scheduler.

Determinism: blocks are merged in index order and the criterion is checked
after each, so the result is the merge of blocks ``0..K`` for the first ``K``
that satisfies the criterion, whatever the order in which blocks finish. The
players a block works on (per-player convergence) are fixed at the start of
each round of ``blocks_per_round`` blocks from the blocks before it. With a
checkpoint, each round's statistics are appended to zarr; a later call
replays them through the criterion and continues the seed sequence, so an
interrupted-then-resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from concurrent.futures import as_completed as futures_as_completed
from typing import Any

import dask
import numpy as np
import xarray as xr

from .. import config
from ..errors import InvalidParameterError
from ..keys import fingerprint, layer_name, run_identity
from ..results import Checkpoint, valuation_dataset
from ..results._checkpoint import stored_seed
from ..typing import UtilityLike
from ..validation import SeedLike, as_seed_sequence, check_positive_int, seed_entropy
from ._estimators import Estimator, run_block, values_from_stats
from ._graph import check_utility, utility_node
from ._montecarlo import ESTIMATOR_FACTORIES
from ._progress import ProgressLine
from ._samplers import child_seed
from ._stats import PointStats
from ._stopping import ConvergenceState, StoppingCriterion, now

__all__ = ["load_checkpoint", "run_until_converged"]

_BUDGET_NAMES = ("n_permutations", "n_samples")


def _resolve_method(method: Any, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    opts = dict(options)
    if isinstance(method, functools.partial):
        opts = {**method.keywords, **opts}
        method = method.func
    name = method if isinstance(method, str) else getattr(method, "__name__", None)
    if name not in ESTIMATOR_FACTORIES:
        raise InvalidParameterError(
            f"The 'method' parameter of run_until_converged must be one of {sorted(ESTIMATOR_FACTORIES)} "
            f"(a name, the function, or a functools.partial of it). Got {method!r}."
        )
    budget = [k for k in _BUDGET_NAMES if k in opts]
    if budget:
        raise InvalidParameterError(
            f"run_until_converged decides the budget with its stopping criterion; do not pass {budget}. "
            "To fix, drop it, or call the method itself for a fixed budget."
        )
    return name, opts


def _parse_seed(text: str) -> np.random.SeedSequence:
    entropy, _, key = text.partition(":")
    spawn_key = tuple(int(k) for k in key.split(",")) if key else ()
    return np.random.SeedSequence(int(entropy), spawn_key=spawn_key)


class _Run:
    """State of one run: merged statistics, criterion, per-round active players."""

    def __init__(self, estimator: Estimator, n: int, stop: StoppingCriterion, blocks_per_round: int) -> None:
        self.estimator = estimator
        self.stop = stop
        self.blocks_per_round = blocks_per_round
        self.merged = PointStats.zeros(n, estimator.n_streams)
        self.n_blocks = 0
        self.start = now()
        self.converged = False
        self.round_active: np.ndarray | None = None
        self.state = self._state()

    def _state(self) -> ConvergenceState:
        value, stderr, count = self.estimator.finalize(self.merged)
        return ConvergenceState(value, stderr, count, self.merged.n_evaluations, self.n_blocks, now() - self.start)

    def active_for(self, block: int) -> np.ndarray | None:
        """Players block ``block`` works on; fixed at the start of its round."""
        if block % self.blocks_per_round == 0 or self.round_active is None:
            self.round_active = self._active_now()
        return self.round_active

    def _active_now(self) -> np.ndarray | None:
        if not self.estimator.supports_active or self.n_blocks == 0:
            return None
        done = self.stop.converged(self.state)
        if done is None or not done.any() or done.all():
            return None
        return ~done

    def add(self, stats: PointStats) -> bool:
        """Merge the next block (in order); return True when the criterion says stop."""
        if self.n_blocks % self.blocks_per_round == 0:
            self.round_active = self._active_now()
        self.merged = self.merged.merge(stats)
        self.n_blocks += 1
        self.state = self._state()
        self.converged = bool(self.stop.check(self.state))
        return self.converged


def run_until_converged(
    method: Any,
    utility: UtilityLike,
    *,
    stop: StoppingCriterion,
    seed: SeedLike = None,
    client: Any = None,
    executor: Executor | None = None,
    checkpoint: str | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: bool = True,
    blocks_per_round: int | None = None,
    items_per_block: int | None = None,
    **method_options: Any,
) -> xr.Dataset:
    """Run a Monte Carlo valuation method until ``stop`` holds; optionally checkpoint and resume.

    Parameters
    ----------
    method : str, callable or functools.partial
        One of ``permutation_shapley``, ``banzhaf``, ``msr_banzhaf``,
        ``beta_shapley``, ``semivalue``, ``owen_shapley`` (the function, its
        name, or a partial with its options, e.g. ``partial(beta_shapley, alpha=16, beta=1)``).
    utility : Utility
        The utility or game.
    stop : StoppingCriterion
        When to stop, e.g. ``RelativeStandardError(0.05) | MaxEvaluations(100_000)``.
    seed : int, SeedSequence or None
        Block *i* uses child *i* of the seed. None: fresh entropy, or the
        checkpoint's seed when resuming.
    client : distributed.Client, optional
        Submit blocks to this cluster (utility scattered once to all workers).
    executor : concurrent.futures.Executor, optional
        Submit blocks to this executor instead. The utility travels with every
        block there (an executor has no scatter); on a cluster prefer ``client``.
    checkpoint : str, optional
        zarr path or fsspec URL. Each round's statistics are appended; an
        existing checkpoint of the same run is resumed, one of another run refused.
    storage_options : dict, optional
        fsspec options for ``checkpoint`` (e.g. an S3 endpoint and keys).
    progress : bool
        Show a progress line (criterion completion, blocks, evaluations).
    blocks_per_round : int, optional
        Blocks in flight per round. Default ``dvl_dask.valuation.montecarlo.blocks-per-round``.
    items_per_block : int, optional
        Permutations or subsets per block.
    **method_options
        Options of the method (``truncation=``, ``alpha=``, ``sampler=``, ...).

    Returns
    -------
    xarray.Dataset
        Computed values with attrs ``converged``, ``stopping_criterion``,
        ``n_blocks`` and the actual ``n_evaluations``.
    """
    owner = "run_until_converged"
    if not isinstance(stop, StoppingCriterion):
        raise InvalidParameterError(
            f"The 'stop' parameter of {owner} must be a StoppingCriterion (e.g. MaxEvaluations(10_000)). "
            f"Got {type(stop).__name__}."
        )
    if client is not None and executor is not None:
        raise InvalidParameterError(f"Pass at most one of 'client' and 'executor' to {owner}.")
    name, options = _resolve_method(method, method_options)
    utility = check_utility(utility, owner)
    n = utility.n_players
    estimator = ESTIMATOR_FACTORIES[name](utility, **options)
    if items_per_block is not None:
        check_positive_int(items_per_block, "items_per_block", owner)
    per_block = estimator.items_per_block(n, items_per_block)
    per_round = check_positive_int(
        config.get(config.MC_BLOCKS_PER_ROUND, override_with=blocks_per_round), "blocks_per_round", owner
    )
    if seed is None and checkpoint is not None:
        previous = stored_seed(checkpoint, storage_options)
        seq = _parse_seed(previous) if previous else as_seed_sequence(None)
    else:
        seq = as_seed_sequence(seed, "seed", owner)
    seed_text = seed_entropy(seq)
    parameters = {**estimator.parameters(), "items_per_block": per_block}

    stop.reset()
    run = _Run(estimator, n, stop, per_round)
    store = None
    if checkpoint is not None:
        header = {
            "method": estimator.method,
            "parameters": parameters,
            "utility_token": utility.token,
            "seed": seed_text,
            "n_players": n,
            "n_streams": estimator.n_streams,
            "identity": run_identity(estimator, utility.token),  # estimator code and parameters in full
        }
        store = Checkpoint.open(checkpoint, header=header, data_names=utility.data_names,
                                storage_options=storage_options)
        for block in _stored_blocks(store):
            if run.add(block):
                break

    line = ProgressLine(
        f"{estimator.method}", enabled=progress, interval=float(config.get(config.MC_PROGRESS_INTERVAL))
    )
    name_prefix = layer_name(f"{estimator.method.replace('_', '-')}-block", utility.token, estimator, seed_text,
                             per_block)
    submit = _submitter(utility, client, executor)
    try:
        while not run.converged:
            first = run.n_blocks
            last = (first // per_round + 1) * per_round
            jobs = [(b, run.active_for(b)) for b in range(first, last)]
            finished: list[tuple[np.ndarray, int]] = []
            for stats in submit(estimator, seq, per_block, jobs, name_prefix):
                finished.append((stats.to_array(), stats.n_evaluations))
                stopped = run.add(stats)
                line.update(blocks=run.n_blocks, evaluations=run.merged.n_evaluations,
                            completion=stop.completion(run.state), elapsed=run.state.elapsed)
                if stopped:
                    break
            if store is not None:
                store.append([a for a, _ in finished], [e for _, e in finished])
    finally:
        line.update(blocks=run.n_blocks, evaluations=run.merged.n_evaluations,
                    completion=stop.completion(run.state), elapsed=run.state.elapsed, force=True)
        line.close()
    value, stderr, count = estimator.finalize(run.merged)
    return valuation_dataset(
        value, stderr, count, data_names=utility.data_names, method=estimator.method, parameters=parameters,
        seed=seed_text, utility_token=utility.token, n_evaluations=run.merged.n_evaluations,
        extra_attrs={
            "n_blocks": run.n_blocks,
            "converged": run.converged,
            "stopping_criterion": repr(stop),
            "checkpoint": checkpoint or "",
        },
    )


Submitter = Callable[[Estimator, np.random.SeedSequence, int, list[tuple[int, Any]], str], Iterator[PointStats]]


def _submitter(utility: UtilityLike, client: Any, executor: Executor | None) -> Submitter:
    """A function running a list of (block, active) jobs and yielding their stats in block order."""
    if client is not None:
        return _DistributedSubmitter(utility, client)
    if executor is not None:
        return _ExecutorSubmitter(utility, executor)
    return _DaskWaveSubmitter(utility)


def _in_order(results: Iterator[tuple[int, PointStats]], first: int) -> Iterator[PointStats]:
    """Re-order (index, stats) pairs arriving in any order into index order."""
    pending: dict[int, PointStats] = {}
    expected = first
    for index, stats in results:
        pending[index] = stats
        while expected in pending:
            yield pending.pop(expected)
            expected += 1


def _job_key(prefix: str, block: int, active: np.ndarray | None) -> str:
    suffix = "all" if active is None else fingerprint(active)[:10]
    return f"{prefix}-{block}-{suffix}"


class _DistributedSubmitter:
    def __init__(self, utility: UtilityLike, client: Any) -> None:
        if not (hasattr(client, "submit") and hasattr(client, "scatter")):
            raise InvalidParameterError(
                f"The 'client' parameter must be a distributed.Client. Got {type(client).__name__}. "
                "To use another executor, pass it as 'executor'."
            )
        self.client = client
        # Data travels once: every worker receives the utility (and its data) a single time.
        self.utility = client.scatter(utility, broadcast=True, hash=False)

    def __call__(self, estimator, seed, per_block, jobs, prefix):  # type: ignore[no-untyped-def]
        from distributed import as_completed

        futures = {
            self.client.submit(run_block, self.utility, estimator, child_seed(seed, b), per_block, active,
                               key=_job_key(prefix, b, active), pure=False, retries=2): b
            for b, active in jobs
        }
        try:
            yield from _in_order(((futures[f], f.result()) for f in as_completed(list(futures))), jobs[0][0])
        finally:
            self.client.cancel(list(futures))


class _ExecutorSubmitter:
    def __init__(self, utility: UtilityLike, executor: Executor) -> None:
        if not isinstance(executor, Executor) and not hasattr(executor, "submit"):
            raise InvalidParameterError(
                f"The 'executor' parameter must be a concurrent.futures.Executor. Got {type(executor).__name__}."
            )
        self.utility = utility
        self.executor = executor

    def __call__(self, estimator, seed, per_block, jobs, prefix):  # type: ignore[no-untyped-def]
        futures = {
            self.executor.submit(run_block, self.utility, estimator, child_seed(seed, b), per_block, active): b
            for b, active in jobs
        }
        try:
            yield from _in_order(((futures[f], f.result()) for f in futures_as_completed(futures)), jobs[0][0])
        finally:
            for f in futures:
                f.cancel()


class _DaskWaveSubmitter:
    """One ``dask.compute`` per round on whatever scheduler is current."""

    def __init__(self, utility: UtilityLike) -> None:
        self.node = utility_node(utility)

    def __call__(self, estimator, seed, per_block, jobs, prefix):  # type: ignore[no-untyped-def]
        block = dask.delayed(run_block, pure=True)
        tasks = [
            block(self.node, estimator, child_seed(seed, b), per_block, active,
                  dask_key_name=_job_key(prefix, b, active))
            for b, active in jobs
        ]
        yield from dask.compute(*tasks)


def _stored_blocks(store: Checkpoint) -> Iterator[PointStats]:
    """The committed blocks of a checkpoint, in order."""
    stats, evaluations = store.read()
    for arr, ev in zip(stats, evaluations):
        yield PointStats.from_array(arr, int(ev))


def load_checkpoint(url: str, *, storage_options: dict[str, Any] | None = None) -> xr.Dataset:
    """The values stored in a checkpoint so far (all committed blocks merged), as a result Dataset.

    Raises
    ------
    SchemaError
        If there is no dvl_dask checkpoint at ``url``.
    """
    store = Checkpoint.open_existing(url, storage_options=storage_options)
    header = store.header
    merged = PointStats.zeros(int(header["n_players"]), int(header["n_streams"]))
    for block in _stored_blocks(store):
        merged = merged.merge(block)
    value, stderr, count = values_from_stats(merged)
    return valuation_dataset(
        value, stderr, count, data_names=np.asarray(header["data_names"]), method=header["method"],
        parameters=header["parameters"], seed=header["seed"], utility_token=header["utility_token"],
        n_evaluations=merged.n_evaluations, extra_attrs={"n_blocks": store.n_blocks, "checkpoint": url},
    )
