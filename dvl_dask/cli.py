"""The ``dvl-dask`` command line: ``dvl-dask demo``, ``value``, ``evaluate`` and ``influence``.

The demo is the project's main job: a real valuation of a scikit-learn dataset
on a local Dask cluster, persisted to zarr in a local folder. Both commands can
instead connect to a running cluster (``--scheduler-address`` or
``--scheduler-file``), and run Monte Carlo methods until ``--budget`` samples
per point with a resumable checkpoint (``--checkpoint``, local or ``s3://``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import xarray as xr

from ._cli_options import check_numbers, connect_client, json_object
from .data import Dataset
from .errors import DvlDaskError, InvalidParameterError
from .results import to_zarr
from .utility import Utility

__all__ = ["main"]

DATASETS = ("iris", "wine", "breast_cancer", "digits", "diabetes")
MODELS = ("logistic", "knn", "tree", "ridge", "linear")
METHODS = ("exact_shapley", "loo", "permutation_shapley", "banzhaf", "msr_banzhaf", "owen_shapley")
_BUDGET_ARGUMENT = {
    "permutation_shapley": "n_permutations",
    "banzhaf": "n_samples",
    "msr_banzhaf": "n_samples",
    "owen_shapley": "n_samples",
}
SCHEDULERS = ("local-cluster", "threads", "processes", "sync")
_INF = float("inf")
#: Accepted ranges of the numeric options of demo, value and evaluate (checked before anything runs).
_BOUNDS = {
    "n_points": (2, _INF),
    "budget": (1, _INF),
    "workers": (1, 1024),
    "top": (1, _INF),
    "max_fraction": (0.0, 1.0),
    "steps": (1, 10_000),
    "n_random": (1, _INF),
}


def _load_dataset(name: str, n_points: int, seed: int) -> Dataset:
    from sklearn import datasets

    if name not in DATASETS:
        raise InvalidParameterError(f"--dataset must be one of {DATASETS}. Got {name!r}.")
    bunch = getattr(datasets, f"load_{name}")()
    n = len(bunch.target)
    classification = name != "diabetes"
    # keep n_points training points out of the whole data; the rest (up to 200) is test data
    train_size = min(n_points, n - 2) / n
    data = Dataset.from_sklearn(bunch, train_size=train_size, seed=seed, stratify=classification)
    if len(data.x_test) > 200:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(data.x_test), 200, replace=False))
        data = Dataset(
            data.x_train,
            data.y_train,
            data.x_test[keep],
            data.y_test[keep],
            data_names=data.data_names,
            feature_names=list(data.feature_names),
            target_names=data.target_names,
        )
    return data


def _make_model(name: str) -> Any:
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    factories: dict[str, Callable[[], Any]] = {
        "logistic": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        "knn": lambda: KNeighborsClassifier(n_neighbors=1),
        "tree": lambda: DecisionTreeClassifier(random_state=0),
        "ridge": lambda: make_pipeline(StandardScaler(), Ridge(alpha=1.0)),
        "linear": LinearRegression,
    }
    if name not in factories:
        raise InvalidParameterError(f"--model must be one of {MODELS}. Got {name!r}.")
    return factories[name]()


_CLASSIFIERS = ("logistic", "knn", "tree")


def _check_model_fits_dataset(dataset: str, model: str) -> None:
    """Refuse a classifier on the continuous target of diabetes, and a regressor on class labels."""
    continuous = dataset == "diabetes"
    if continuous and model in _CLASSIFIERS:
        raise InvalidParameterError(
            f"--model {model} is a classifier, but --dataset diabetes has a continuous target (it would be read as "
            f"about 200 classes). To fix, use a regressor: --model ridge or --model linear."
        )
    if not continuous and model not in _CLASSIFIERS:
        raise InvalidParameterError(
            f"--model {model} is a regressor, but --dataset {dataset} has class labels (scored by accuracy). To fix, "
            f"use a classifier: --model {', '.join(_CLASSIFIERS)}; or --dataset diabetes."
        )


class _RemoteClient:
    """A client of a cluster that is already running (its address or scheduler file)."""

    def __init__(self, address: str | None, scheduler_file: str | None) -> None:
        self.address, self.scheduler_file = address, scheduler_file

    def __enter__(self) -> Any:
        self.client = connect_client(self.address, self.scheduler_file)
        threads = sum(self.client.nthreads().values())
        print(f"Connected to {self.client.scheduler.address} ({threads} worker threads)")
        return self.client

    def __exit__(self, *exc: Any) -> None:
        self.client.close()


def _scheduler(name: str, n_workers: int, address: str | None = None,
               scheduler_file: str | None = None) -> AbstractContextManager[Any]:
    import dask

    if address or scheduler_file:
        return _RemoteClient(address, scheduler_file)
    if name == "local-cluster":
        from distributed import Client, LocalCluster

        class _ClusterClient:
            def __enter__(self) -> Any:
                # dvl_dask.preload: workers import the block code and scikit-learn as they start,
                # not when their first block arrives
                self.cluster = LocalCluster(
                    n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                    preload=["dvl_dask.preload"],
                )
                self.client = Client(self.cluster)
                print(f"Dask dashboard: {self.client.dashboard_link}")
                return self.client

            def __exit__(self, *exc: Any) -> None:
                self.client.close()
                self.cluster.close()

        return _ClusterClient()
    if name in ("threads", "processes", "sync"):
        return dask.config.set(scheduler=name)
    raise InvalidParameterError(f"--scheduler must be one of {SCHEDULERS}. Got {name!r}.")


def _value(args: argparse.Namespace) -> tuple[xr.Dataset, xr.Dataset | None]:
    """Run the valuation (and, with --compare-loo, leave-one-out on the same cached utility)."""
    from . import valuation
    from .cache import InMemoryCacheBackend

    _check_model_fits_dataset(args.dataset, args.model)
    data = _load_dataset(args.dataset, args.n_points, args.seed)
    scorer = "r2" if args.dataset == "diabetes" else "accuracy"
    cache = InMemoryCacheBackend() if args.cache else None
    # r2 is unbounded below: the empty coalition scores like a constant prediction (r2 = 0).
    default_score = 0.0 if scorer == "r2" else None
    utility = Utility(_make_model(args.model), data, scorer, default_score=default_score, cache=cache)
    if args.method not in METHODS:
        raise InvalidParameterError(f"--method must be one of {METHODS}. Got {args.method!r}.")
    method = getattr(valuation, args.method)
    if args.checkpoint and args.method not in _BUDGET_ARGUMENT:
        raise InvalidParameterError(f"--checkpoint needs a Monte Carlo --method {sorted(_BUDGET_ARGUMENT)}. "
                                    f"Got {args.method!r}.")
    if args.method in _BUDGET_ARGUMENT:
        ds = method(utility, **{_BUDGET_ARGUMENT[args.method]: args.budget}, seed=args.seed)
    else:
        ds = method(utility)
    print(
        f"Valuing {data.n_players} training points of {args.dataset!r} with {args.model!r} "
        f"({args.method}, {ds.attrs['n_evaluations'] if not args.checkpoint else 'until the budget'} utility "
        f"evaluations, scorer {scorer!r}, {'in-memory cache' if cache is not None else 'no cache'})"
    )
    loo_result = None
    remote = args.scheduler_address or args.scheduler_file
    with _scheduler(args.scheduler, args.workers, args.scheduler_address, args.scheduler_file) as client, \
            _progress("local-cluster" if remote else args.scheduler):
        start = time.perf_counter()
        if args.checkpoint:
            ds = valuation.run_until_converged(
                args.method, utility, stop=valuation.MinUpdates(args.budget), seed=args.seed,
                client=client if hasattr(client, "submit") else None, checkpoint=args.checkpoint,
                storage_options=args.storage_options, progress=sys.stderr.isatty(),
            )
            print(f"Ran {ds.attrs['n_blocks']} blocks ({ds.attrs['n_evaluations']} evaluations), "
                  f"checkpoint {args.checkpoint}")
        to_zarr(ds, args.out, overwrite=True, storage_options=args.storage_options)
        print(f"Wrote {args.out} in {time.perf_counter() - start:.1f} s")
        if args.compare_loo and args.method != "loo":
            start = time.perf_counter()
            loo_result = valuation.loo(utility).compute()
            note = " (coalitions a worker already evaluated come from its cache)" if cache is not None else ""
            print(f"Leave-one-out on the same utility took {time.perf_counter() - start:.2f} s{note}")
    from .results import open_result

    return open_result(args.out, storage_options=args.storage_options).load(), loo_result


def _progress(scheduler: str) -> AbstractContextManager[Any]:
    if scheduler == "local-cluster" or not sys.stdout.isatty():
        return nullcontext()
    from dask.diagnostics import ProgressBar

    return ProgressBar()


def _report(result: xr.Dataset, k: int, loo_result: xr.Dataset | None = None) -> None:
    k = min(k, result.sizes["sample"])
    method = result.attrs["method"]
    header = f"  {'point':>8}  {method:>20}" + (f"  {'leave-one-out':>14}" if loo_result is not None else "")
    for title, part in (("Most", result.dvl.top_k(k)), ("Least", result.dvl.bottom_k(k))):
        print(f"\n{title} valuable {k} training points:")
        print(header)
        for name, v, err in zip(part["sample"].values, part["value"].values, part["stderr"].values):
            extra = f"  {float(loo_result['value'].sel(sample=name)):+14.5f}" if loo_result is not None else ""
            spread = f" ± {err:.4f}" if err > 0 else ""
            print(f"  {name!s:>8}  {f'{v:+.5f}{spread}':>20}{extra}")
    total = float(result["value"].sum())
    print(f"Sum of values: {total:+.5f}")


def _plot(result: xr.Dataset, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        print("matplotlib is not installed: no plot written (pip install dvl_dask[plot]).")
        return
    from .plot import plot_values

    ax = plot_values(result)
    ax.figure.savefig(path, dpi=120)
    print(f"Wrote {path}")


def _evaluate(args: argparse.Namespace) -> int:
    """Removal curves (and detection scores for --corrupted) of a stored result, on the rebuilt utility."""
    from .evaluation import detection_scores, point_removal_curve, weighted_accuracy_drop
    from .results import open_result

    _check_model_fits_dataset(args.dataset, args.model)
    result = open_result(args.result, storage_options=args.storage_options).load()
    data = _load_dataset(args.dataset, args.n_points, args.seed)
    scorer = "r2" if args.dataset == "diabetes" else "accuracy"
    utility = Utility(_make_model(args.model), data, scorer, default_score=0.0 if scorer == "r2" else None)
    fractions = np.linspace(0.0, args.max_fraction, args.steps)
    with _scheduler(args.scheduler, args.workers, args.scheduler_address, args.scheduler_file):
        curve = point_removal_curve(result, utility, fractions=fractions, n_random=args.n_random, seed=args.seed)
        curve = curve.compute()
    print(f"Removal curve of {result.attrs.get('method', '?')} values ({args.result}), scorer {scorer!r}:")
    print(f"  {'removed':>8}" + "".join(f"  {o!s:>10}" for o in curve["order"].values))
    for step in range(curve.sizes["step"]):
        row = curve.isel(step=step)
        cells = "".join(f"  {float(v):10.4f}" for v in row["score"].values)
        print(f"  {float(row['fraction']):8.0%}{cells}")
    print(f"Weighted accuracy drop (highest first): {weighted_accuracy_drop(curve):+.4f}; "
          f"(lowest first): {weighted_accuracy_drop(curve, 'lowest'):+.4f}")
    if args.corrupted:
        names = np.asarray(result["sample"].values).astype(str)
        wanted = {c.strip() for c in args.corrupted.split(",") if c.strip()}
        unknown = sorted(wanted - set(names))
        if unknown:
            raise InvalidParameterError(f"--corrupted names points that are not in the result: {unknown}.")
        scores = detection_scores(result, np.isin(names, list(wanted)))
        print("Detection of the corrupted points by low values: " + ", ".join(
            f"{k} {v:.3f}" for k, v in scores.items() if isinstance(v, float)))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        from .plot import plot_curves

        plot_curves(curve).figure.savefig(args.plot, dpi=120)
        print(f"Wrote {args.plot}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dvl-dask", description="Data valuation as lazy Dask graphs.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, *, out: str) -> None:
        sp.add_argument("--dataset", default="wine", choices=DATASETS)
        sp.add_argument("--model", default="logistic", choices=MODELS)
        sp.add_argument("--method", default="exact_shapley", choices=METHODS)
        sp.add_argument("--n-points", type=int, default=12, help="training points to value (default 12)")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--budget", type=int, default=200,
                        help="permutations or samples of Monte Carlo methods (default 200)")
        sp.add_argument("--out", default=out, help="zarr path or fsspec URL of the result")
        sp.add_argument("--scheduler", default="local-cluster", choices=SCHEDULERS)
        sp.add_argument("--workers", type=int, default=2, help="workers of the local cluster")
        sp.add_argument("--no-cache", dest="cache", action="store_false", help="do not memoize utilities")
        sp.add_argument("--top", type=int, default=5, help="how many best/worst points to print")
        sp.add_argument("--compare-loo", action="store_true", help="also compute leave-one-out values")
        sp.add_argument("--scheduler-address", default=None,
                        help="connect to a running Dask scheduler (e.g. tcp://10.0.0.5:8786) instead of --scheduler")
        sp.add_argument("--scheduler-file", default=None,
                        help="connect to the Dask scheduler described by this file (dask scheduler --scheduler-file)")
        sp.add_argument("--checkpoint", default=None,
                        help="Monte Carlo methods: run until --budget samples per point, committing blocks to this "
                             "zarr path or URL and resuming from it")
        sp.add_argument("--storage-options", type=json_object, default=None,
                        help='fsspec options for --out and --checkpoint as JSON, e.g. \'{"endpoint_url": "..."}\'')

    demo = sub.add_parser("demo", help="value a real sklearn dataset end to end (the main job)")
    common(demo, out="values.zarr")
    demo.set_defaults(compare_loo=True)
    demo.add_argument("--plot", default="values.png", help="where to save a plot ('' for none)")
    value = sub.add_parser("value", help="value a dataset and write the result to zarr")
    common(value, out="values.zarr")
    value.add_argument("--plot", default="", help="where to save a plot (default: none)")
    evaluate = sub.add_parser(
        "evaluate", help="removal curve and noisy-label detection of a stored result (same --dataset/--model/...)"
    )
    common(evaluate, out="values.zarr")
    evaluate.add_argument("--result", default="values.zarr", help="zarr path or URL of the result to evaluate")
    evaluate.add_argument("--max-fraction", type=float, default=0.5, help="largest fraction of points removed")
    evaluate.add_argument("--steps", type=int, default=6, help="steps of the removal curve")
    evaluate.add_argument("--n-random", type=int, default=3, help="repetitions of the random baseline")
    evaluate.add_argument("--corrupted", default="", help="comma-separated names of known-corrupted points")
    evaluate.add_argument("--plot", default="", help="where to save the curve plot (default: none)")
    from ._influence_cli import add_parser as add_influence_parser

    add_influence_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dvl-dask`` and ``python -m dvl_dask``."""
    args = _parser().parse_args(argv)
    if args.command == "influence":
        from ._influence_cli import run as run_influence

        try:
            return run_influence(args)
        except DvlDaskError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        check_numbers(args, _BOUNDS)  # before anything runs or is written
        if args.command == "evaluate":
            return _evaluate(args)
        result, loo_result = _value(args)
        _report(result, args.top, loo_result)
        if args.plot:
            _plot(result, args.plot)
    except DvlDaskError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
