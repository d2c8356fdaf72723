"""``run_until_converged``: the one eager loop of dvl_dask.

It runs blocks of a Monte Carlo method until a stopping criterion holds. It
never wraps or chooses the scheduler: a backend (:mod:`._backends`) runs the
blocks on the ``client`` or ``executor`` given, or on dask's current scheduler.

Sliding window. The loop keeps ``window`` blocks in flight (on a cluster
``window-per-thread`` x its total threads, re-read as workers come and go; on
local schedulers and executors their number of workers) and submits the next
block as soon as one finishes, so no thread idles at a round barrier.

Determinism. Finished blocks are buffered and merged strictly in block order;
the criterion is checked after each, so the result is the merge of blocks
``0..K`` for the first ``K`` that satisfies it, whatever the scheduler, window,
number of workers or order of completion. The players block ``b`` works on
(per-player convergence) are decided from the merged blocks ``< b -
active-set-lag``: a block is submitted only once that state exists, which
never depends on timing.

Checkpoints. Merged blocks are committed to a checkpoint
(:class:`~dvl_dask.results.Checkpoint`) every ``checkpoint-interval`` seconds
and when the run ends, also on errors and Ctrl-C. A later call verifies and
replays them through the criterion and continues the seed sequence, so an
interrupted-then-resumed run equals an uninterrupted one. The run holds the
checkpoint's writer lease while it runs.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import Executor
from typing import Any

import numpy as np
import xarray as xr

from .. import config
from .._progress import progress_bar
from .._provenance import describe_utility
from ..errors import BiasedEstimateWarning, InvalidParameterError, NoWorkersError
from ..keys import bind_arguments, current_call, describe_parameters, lazy_method, run_identity
from ..results import Checkpoint, valuation_dataset
from ..results._checkpoint import stored_seed
from ..results._schema import SAMPLE_MEAN
from ..typing import UtilityLike
from ..validation import (
    SeedLike,
    as_seed_sequence,
    check_positive_int,
    check_url,
    seed_entropy,
    unknown_keyword_error,
)
from ._backends import BlockSpec, choose_backend
from ._estimators import Estimator, values_from_stats
from ._graph import check_utility
from ._montecarlo import ESTIMATOR_FACTORIES, sample_attrs
from ._stats import PointStats
from ._stopping import ConvergenceState, StoppingCriterion, now
from ._truncation import bias_attrs

__all__ = ["load_checkpoint", "run_until_converged"]

logger = logging.getLogger(__name__)

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
    _check_method_keywords(name, opts)
    budget = [k for k in _BUDGET_NAMES if k in opts]
    if budget:
        raise InvalidParameterError(
            f"run_until_converged decides the budget with its stopping criterion; do not pass {budget}. "
            "To fix, drop it, or call the method itself for a fixed budget."
        )
    return name, opts


def _check_method_keywords(name: str, options: dict[str, Any]) -> None:
    """Refuse options that ``name`` does not take, naming the public method (not its private estimator factory)."""
    params = inspect.signature(ESTIMATOR_FACTORIES[name]).parameters
    accepted = [p for p in params if p != "utility"]
    allowed = [*accepted, *_BUDGET_NAMES]  # budgets get their own message
    unknown = [k for k in options if k not in allowed]
    if unknown:
        own = [p for p in inspect.signature(run_until_converged).parameters if p not in ("method", "utility")]
        own = [p for p in own if p != "method_options"]
        raise unknown_keyword_error(f"run_until_converged(method={name!r}, ...)", unknown[0], [*accepted, *own])


def _bound_options(name: str, utility: UtilityLike, options: dict[str, Any]) -> Any:
    """Every option of method ``name`` after defaults, described (readable, compared on resume)."""
    bound = bind_arguments(ESTIMATOR_FACTORIES[name], (utility,), options, exclude=("utility",))
    return describe_parameters(bound)


def _parse_seed(text: str) -> np.random.SeedSequence:
    entropy, _, key = text.partition(":")
    spawn_key = tuple(int(k) for k in key.split(",")) if key else ()
    return np.random.SeedSequence(int(entropy), spawn_key=spawn_key)


class _Run:
    """State of one run: merged statistics, criterion, active players decided by block index."""

    def __init__(self, estimator: Estimator, n: int, stop: StoppingCriterion, lag: int) -> None:
        self.estimator = estimator
        self.stop = stop
        self.lag = lag
        self.merged = PointStats.zeros(n, estimator.n_streams)
        self.n_blocks = 0
        self.start = now()
        self.stopped = False
        self.state = self._state()
        #: active players of future blocks, decided when the state they depend on was merged
        self._decided: dict[int, np.ndarray | None] = {}

    def _state(self) -> ConvergenceState:
        value, stderr, count = self.estimator.finalize(self.merged)
        return ConvergenceState(value, stderr, count, self.merged.n_evaluations, self.n_blocks, now() - self.start)

    def ready(self, block: int) -> bool:
        """Whether the players of ``block`` are decided (the blocks they depend on are merged)."""
        return not self.estimator.supports_active or block - self.lag <= self.n_blocks

    def active_for(self, block: int) -> np.ndarray | None:
        """Players ``block`` works on: decided from the merged blocks before ``block - lag``."""
        if not self.estimator.supports_active or block <= self.lag:
            return None
        if block - self.lag == self.n_blocks:
            return self._active_now()
        return self._decided.pop(block)

    def _active_now(self) -> np.ndarray | None:
        if self.n_blocks == 0:
            return None
        done = self.stop.converged(self.state)
        if done is None or not done.any() or done.all():
            return None
        return ~done

    def add(self, stats: PointStats, submitted: int) -> bool:
        """Merge the next block (in order); return True when the criterion says stop.

        ``submitted`` is the number of blocks submitted so far: the decision for
        block ``n_blocks + lag`` is recorded if that block is not submitted yet.
        """
        self.merged = self.merged.merge(stats)
        self._decided.pop(self.n_blocks, None)  # a decision for a block merged without being submitted here
        self.n_blocks += 1
        self.state = self._state()
        if self.estimator.supports_active and self.n_blocks + self.lag >= submitted:
            self._decided[self.n_blocks + self.lag] = self._active_now()
        self.stopped = bool(self.stop.check(self.state))
        return self.stopped

    def outcome(self) -> tuple[bool, list[str], np.ndarray]:
        """Whether an accuracy criterion held, the criteria that fired, and each player's own convergence.

        ``converged`` is True only if a criterion other than a budget cap
        (:attr:`~StoppingCriterion.is_budget_cap`) fired. Per player: the
        criterion's own per-player test where it has one, else ``converged``.
        """
        fired = self.stop.fired() if self.stopped else []
        converged = any(not c.is_budget_cap for c in fired)
        per_player = self.stop.converged(self.state)
        n = self.merged.count.shape[1]
        per_player = np.full(n, converged) if per_player is None else np.asarray(per_player, dtype=bool)
        return converged, [repr(c) for c in fired], per_player



#: Arguments that never change a block's statistics: where and how fast blocks run, when to stop
#: (blocks are merged in order, so the stopping point is replayed, not computed), the checkpoint's place.
_DRIVER_ONLY = ("stop", "client", "executor", "checkpoint", "storage_options", "progress", "window")


@lazy_method(seeds=(), exclude=_DRIVER_ONLY)
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
    progress: bool | None = None,
    window: int | None = None,
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
        Submit blocks to this cluster. Without ``client`` and ``executor``, the
        default distributed client is used if there is one, else dask's current
        local scheduler.
    executor : concurrent.futures.Executor, optional
        Submit blocks to this executor instead. The utility travels with every
        block there (an executor has no shared data); on a cluster prefer ``client``.
    checkpoint : str, optional
        zarr path or fsspec URL. Merged blocks are committed every
        ``checkpoint-interval`` seconds and at the end; an existing checkpoint
        of the same run is verified and resumed, one of another run refused.
    storage_options : dict, optional
        fsspec options for ``checkpoint`` (e.g. an S3 endpoint and keys).
    progress : bool, optional
        Show a progress bar (the stopping criterion's completion, blocks,
        evaluations; ``tqdm.auto``: one widget in Jupyter, one line in a
        terminal). None: the ``dvl_dask.progress.enabled`` option (default
        ``"auto"``: shown on a terminal or in a Jupyter kernel, silent when
        output is redirected).
    window : int, optional
        Blocks in flight. Default ``dvl_dask.valuation.montecarlo.window``, else
        ``window-per-thread`` x the cluster's threads, or the number of workers of
        a local scheduler or executor. It changes the speed, never the values.
    items_per_block : int, optional
        Permutations or subsets per block.
    **method_options
        Options of the method (``truncation=``, ``alpha=``, ``sampler=``, ...).

    Returns
    -------
    xarray.Dataset
        Computed values with attrs ``converged`` (True only if a criterion
        other than a budget cap -- ``MaxEvaluations``, ``MaxTime``,
        ``MaxChecks``, ``MaxUpdates`` -- fired), ``stopped_by`` (the reprs of
        the criteria that fired: the parts of ``a | b`` that held),
        ``stopping_criterion``, ``biased`` and ``bias`` (truncation),
        ``n_blocks`` and the actual ``n_evaluations``; and the boolean
        variable ``converged``: whether each player's own criterion (e.g.
        ``RelativeStandardError``) held when the run stopped (the global
        ``converged`` for criteria that are not per player).

    Warns
    -----
    BiasedEstimateWarning
        Once per call, when ``stop`` judges standard errors
        (``RelativeStandardError``, ``AbsoluteStandardError``) and the
        estimator is biased (``truncation``): the stderr measures sampling
        noise only, so the criterion can declare convergence at the biased value.

    Raises
    ------
    NoWorkersError
        The cluster had no workers for ``no-workers-timeout`` seconds. Merged
        blocks are committed to the checkpoint: call again to resume.
    CheckpointCorruptError
        The checkpoint fails verification (the message names the block and how to recover).
    CheckpointInUseError
        Another process is writing the checkpoint.
    KeyboardInterrupt
        Re-raised after Ctrl-C, once merged blocks are committed; a note on
        it says how many blocks the checkpoint holds and that the same call
        resumes from them.
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
    if window is not None:
        check_positive_int(window, "window", owner)
    per_block = estimator.items_per_block(n, items_per_block, bool(getattr(utility, "batched", False)))
    lag = check_positive_int(config.get(config.MC_ACTIVE_SET_LAG), "active-set-lag", owner)
    if checkpoint is not None:
        checkpoint = check_url(checkpoint, "checkpoint", "run_until_converged")
        if "://" not in checkpoint and os.path.isfile(checkpoint):
            raise InvalidParameterError(
                f"The 'checkpoint' of run_until_converged must be a folder (a zarr store it creates or resumes). "
                f"Got the file {checkpoint!r}. To fix, pass a new or existing checkpoint folder."
            )
    if seed is None and checkpoint is not None:
        previous = stored_seed(checkpoint, storage_options)
        seq = _parse_seed(previous) if previous else as_seed_sequence(None)
    else:
        seq = as_seed_sequence(seed, "seed", owner)
    seed_text = seed_entropy(seq)
    parameters = {**estimator.parameters(), "items_per_block": per_block}
    if estimator.supports_active:
        parameters["active_set_lag"] = lag
    bias = bias_attrs(parameters)
    if bias["biased"] and stop.uses_stderr():
        warnings.warn(
            f"{owner}: the criterion {stop!r} judges standard errors, but the estimator is biased: {bias['bias']} "
            "It can report convergence at the biased value (with FixedTruncation(0.5), +-2 stderr covered "
            "the exact Shapley values in under half the cases; see the README's statistics section). To fix, "
            "drop truncation, or stop on a budget (MaxEvaluations) and read attrs['bias'].",
            BiasedEstimateWarning, stacklevel=2,
        )

    stop.reset()
    run = _Run(estimator, n, stop, lag)
    provenance = describe_utility(utility)
    store = None
    if checkpoint is not None:
        header = {
            "method": estimator.method,
            "parameters": parameters,
            "utility_token": utility.token,
            "seed": seed_text,
            "n_players": n,
            "n_streams": estimator.n_streams,
            # The estimator's code and parameters in full, and every option of the method (bound, defaults
            # applied), so a resume with any option that changes the numbers is refused.
            "identity": run_identity(estimator, utility.token, options=_bound_options(name, utility, options)),
            "provenance": provenance,  # what the utility token was made of (recorded, never compared)
        }
        store = Checkpoint.open(checkpoint, header=header, data_names=utility.data_names,
                                storage_options=storage_options)
    try:
        if store is not None:
            for block in _stored_blocks(store):
                if run.add(block, submitted=0):
                    break
            if run.n_blocks:
                logger.info("%s: resumed %d committed blocks (%d evaluations) from %s%s", estimator.method,
                            run.n_blocks, run.merged.n_evaluations, checkpoint,
                            ", which already meet the stopping criterion" if run.stopped else "")
        _drive(run, utility, estimator, seq, per_block, seed_text, client, executor, window, store, progress)
    except KeyboardInterrupt as exc:
        exc.add_note(_interrupted_note(run, store))
        raise
    finally:
        if store is not None:
            store.close()
    value, stderr, count = estimator.finalize(run.merged)
    converged, stopped_by, per_player = run.outcome()
    logger.info("%s: stopped after %d blocks (%d evaluations) by %s", estimator.method, run.n_blocks,
                run.merged.n_evaluations, ", ".join(stopped_by) or "nothing")
    return valuation_dataset(
        value, stderr, count, data_names=utility.data_names, method=estimator.method, parameters=parameters,
        seed=seed_text, utility_token=utility.token, n_evaluations=run.merged.n_evaluations,
        converged=per_player, provenance=provenance, estimate=SAMPLE_MEAN,
        extra_attrs={
            "n_blocks": run.n_blocks,
            "converged": converged,
            "stopped_by": stopped_by,
            "stopping_criterion": repr(stop),
            **bias,
            "checkpoint": checkpoint or "",
            **sample_attrs(estimator, seed_text, run.n_blocks, int(np.max(count, initial=0))),
        },
    )


def _interrupted_note(run: _Run, store: Checkpoint | None) -> str:
    """What survives a Ctrl-C, added to the KeyboardInterrupt (its traceback shows it)."""
    if store is None:
        return (f"run_until_converged was interrupted after {run.n_blocks} merged blocks; nothing is kept because "
                "no checkpoint was given. Pass checkpoint=<path or URL> to be able to resume an interrupted run.")
    return (f"run_until_converged was interrupted: {store.n_blocks} blocks are committed to the checkpoint "
            f"{store.url}. Run the same call again (same arguments and checkpoint) to resume from them: they are "
            "verified and not computed again, and the values equal those of an uninterrupted run.")


class _Committer:
    """Collects merged blocks and appends them to the checkpoint every ``checkpoint-interval`` seconds."""

    def __init__(self, store: Checkpoint | None) -> None:
        self.store = store
        self.interval = float(config.get(config.MC_CHECKPOINT_INTERVAL))
        self.stats: list[np.ndarray] = []
        self.evaluations: list[int] = []
        self.last = now()

    def add(self, stats: PointStats) -> None:
        if self.store is not None:
            self.stats.append(stats.to_array())
            self.evaluations.append(stats.n_evaluations)

    def maybe_flush(self) -> None:
        if self.stats and now() - self.last >= self.interval:
            self.flush()

    def flush(self) -> None:
        if self.store is not None and self.stats:
            self.store.append(self.stats, self.evaluations)
        self.stats, self.evaluations, self.last = [], [], now()


class _CompletionBar:
    """The stopping criterion's completion (in %) on a progress bar, with the blocks and evaluations merged."""

    def __init__(self, method: str, progress: bool | None) -> None:
        self.bar = progress_bar(100.0, method, progress=progress, unit="%",
                                bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")

    def update(self, run: _Run, *, refresh: bool = False) -> None:
        done = 100.0 * max(0.0, min(1.0, float(run.stop.completion(run.state))))
        self.bar.set_postfix_str(f"{run.n_blocks} blocks, {run.merged.n_evaluations:,} evaluations", refresh=False)
        self.bar.update(max(0.0, done - self.bar.n))
        if refresh:
            self.bar.refresh()

    def close(self, run: _Run) -> None:
        self.update(run, refresh=True)
        self.bar.close()


def _drive(run: _Run, utility: UtilityLike, estimator: Estimator, seq: np.random.SeedSequence, per_block: int,
           seed_text: str, client: Any, executor: Executor | None, window: int | None,
           store: Checkpoint | None, progress: bool | None) -> None:
    """The sliding window: keep blocks in flight, merge them in block order, commit, stop."""
    if run.stopped:
        return
    # Block keys: the run's whole call (less the driver-only arguments) and the seed actually used
    # (None resolves to fresh entropy or the checkpoint's); the block index and active players follow.
    prefix = current_call().layer(f"{estimator.method.replace('_', '-')}-block", seed_text)
    backend = choose_backend(BlockSpec(utility, estimator, seq, per_block, prefix), client, executor, window)
    line = _CompletionBar(estimator.method, progress)
    committer = _Committer(store)
    buffered: dict[int, PointStats] = {}
    in_flight: set[int] = set()
    next_block = run.n_blocks
    try:
        while not run.stopped:
            size = backend.window
            # buffered blocks count too (up to 4 windows), so one slow block cannot make memory grow
            while (len(in_flight) < size and len(in_flight) + len(buffered) < 4 * size
                   and run.ready(next_block)):
                backend.submit(next_block, run.active_for(next_block))
                in_flight.add(next_block)
                next_block += 1
            block, stats = backend.next_done()
            in_flight.discard(block)
            buffered[block] = stats
            while run.n_blocks in buffered and not run.stopped:
                stats = buffered.pop(run.n_blocks)
                run.add(stats, submitted=next_block)
                committer.add(stats)
            committer.maybe_flush()
            line.update(run)
    except NoWorkersError as exc:
        committer.flush()
        where = (f"{run.n_blocks} merged blocks are committed to the checkpoint {store.url}: call "
                 "run_until_converged again with the same arguments once workers are back to resume from them."
                 if store is not None else
                 f"{run.n_blocks} merged blocks are lost because no checkpoint was given: pass "
                 "checkpoint=<path or URL> to be able to resume.")
        raise NoWorkersError(f"{exc} {where}") from None
    finally:
        try:
            committer.flush()
        finally:
            backend.close()
            line.close(run)


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
    url = check_url(url, "url", "load_checkpoint")
    store = Checkpoint.open_existing(url, storage_options=storage_options)
    header = store.header
    merged = PointStats.zeros(int(header["n_players"]), int(header["n_streams"]))
    for block in _stored_blocks(store):
        merged = merged.merge(block)
    # The same finalize (variance floor, strata) as the live run: the spec is in the recorded parameters.
    value, stderr, count = values_from_stats(merged, header["parameters"])
    return valuation_dataset(
        value, stderr, count, data_names=np.asarray(header["data_names"]), method=header["method"],
        parameters=header["parameters"], seed=header["seed"], utility_token=header["utility_token"],
        n_evaluations=merged.n_evaluations, provenance=header.get("provenance"), estimate=SAMPLE_MEAN,
        extra_attrs={
            "n_blocks": store.n_blocks, "checkpoint": url,
            "effective_sample_size": int(np.max(count, initial=0)),
            **bias_attrs(header["parameters"]),
            "sample_blocks": json.dumps([[header["seed"], 0, int(store.n_blocks)]]),
        },
    )


def checkpoint_history(
    url: str, *, every: int = 1, storage_options: dict[str, Any] | None = None
) -> xr.Dataset:
    """Values and standard errors after each committed block of a checkpoint: a run's convergence history.

    Parameters
    ----------
    url : str
        A checkpoint written by :func:`run_until_converged` (local path or fsspec URL).
    every : int
        Record every ``every``-th block (and always the last).
    storage_options : dict, optional
        fsspec options for ``url``.

    Returns
    -------
    xarray.Dataset
        ``value``, ``stderr`` and ``counts`` over dims ``(step, sample)``,
        with coordinates ``block`` (blocks merged so far) and
        ``n_evaluations`` along ``step``. Computed with the same finalize as
        the run, so the last step equals :func:`load_checkpoint`.

    Raises
    ------
    SchemaError, CheckpointCorruptError
        As :func:`load_checkpoint`.
    """
    every = check_positive_int(every, "every", "checkpoint_history")
    url = check_url(url, "url", "checkpoint_history")
    store = Checkpoint.open_existing(url, storage_options=storage_options)
    header = store.header
    merged = PointStats.zeros(int(header["n_players"]), int(header["n_streams"]))
    rows: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]] = []
    n_blocks = int(store.n_blocks)
    for index, block in enumerate(_stored_blocks(store), start=1):
        merged = merged.merge(block)
        if index % every == 0 or index == n_blocks:
            value, stderr, count = values_from_stats(merged, header["parameters"])
            rows.append((index, merged.n_evaluations, value, stderr, count))
    if not rows:
        raise InvalidParameterError(f"checkpoint_history: the checkpoint at {url} has no committed block yet.")
    names = np.asarray(header["data_names"])
    return xr.Dataset(
        {
            "value": (("step", "sample"), np.stack([r[2] for r in rows])),
            "stderr": (("step", "sample"), np.stack([r[3] for r in rows])),
            "counts": (("step", "sample"), np.stack([r[4] for r in rows]).astype(np.int64)),
        },
        coords={
            "sample": names,
            "block": ("step", [r[0] for r in rows]),
            "n_evaluations": ("step", [int(r[1]) for r in rows]),
        },
        attrs={"method": header["method"], "seed": header["seed"], "checkpoint": url,
               **bias_attrs(header["parameters"])},
    )
