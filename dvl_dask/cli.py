"""The ``dvl-dask`` command line: ``dvl-dask demo``, ``value``, ``evaluate`` and ``influence``.

The demo is the project's main job: a real valuation of a scikit-learn dataset
on a local Dask cluster, persisted to zarr in a local folder. Both commands can
instead connect to a running cluster (``--scheduler-address`` or
``--scheduler-file``), and run Monte Carlo methods until ``--budget`` samples
per point with a resumable checkpoint (``--checkpoint``, local or ``s3://``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import xarray as xr

from ._cli_options import check_numbers, connect_client, json_object, load_array
from ._progress import GraphProgress
from .data import Dataset
from .errors import DvlDaskError, InvalidParameterError, MissingDependencyError
from .results import to_zarr
from .utility import Utility

__all__ = ["main"]

#: Result attr of ``value``/``demo``: the options that rebuild the utility (read by ``evaluate``).
CLI_ATTR = "dvl_cli"
_DATA_FILES = ("x_train", "y_train", "x_test", "y_test")

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
    data = Dataset.from_sklearn(bunch, train_size=min(n_points, n - 2), seed=seed, stratify=classification,
                                name=name)
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
            name=name,
        )
    return data



def _recipe(args: argparse.Namespace, stored: dict[str, Any] | None = None) -> dict[str, Any]:
    """What rebuilds the utility: the data (a dataset name, or four array files), model and scorer.

    Options given on the command line win over ``stored`` (a result's recipe); a dataset name and
    array files exclude each other.
    """
    recipe = dict(stored or {})
    files = {k: getattr(args, k, None) for k in _DATA_FILES}
    if any(files.values()):
        missing = [f"--{k.replace('_', '-')}" for k, v in files.items() if not v]
        if missing:
            raise InvalidParameterError(
                f"Array files come in fours: give {', '.join(missing)} too (or none of them and --dataset)."
            )
        for key in ("dataset", "n_points", "seed"):
            recipe.pop(key, None)
        recipe.update(files)
    elif args.dataset is not None:
        for key in _DATA_FILES:
            recipe.pop(key, None)
        recipe["dataset"] = args.dataset
    if "dataset" in recipe:
        for key in ("n_points", "seed"):
            if getattr(args, key) is not None:
                recipe[key] = getattr(args, key)
    for key in ("model", "scorer"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    if "scorer" not in recipe and ("dataset" in recipe or "x_train" in recipe):
        recipe["scorer"] = "r2" if recipe.get("dataset") == "diabetes" else "accuracy"
    return recipe


def _recipe_gaps(recipe: dict[str, Any]) -> list[str]:
    """The options a recipe lacks to rebuild a utility."""
    gaps = []
    if "dataset" in recipe:
        gaps += [f"--{k.replace('_', '-')}" for k in ("n_points", "seed") if recipe.get(k) is None]
    elif not all(recipe.get(k) for k in _DATA_FILES):
        gaps.append("--dataset (or --x-train, --y-train, --x-test and --y-test)")
    if not recipe.get("model"):
        gaps.append("--model")
    return gaps


def _utility(recipe: dict[str, Any], cache: Any = None) -> tuple[Utility, dict[str, Any]]:
    """The utility a recipe describes (see :func:`_recipe`)."""
    gaps = _recipe_gaps(recipe)
    if gaps:
        raise InvalidParameterError(f"Cannot build the utility: missing {', '.join(gaps)}.")
    if "dataset" in recipe:
        _check_model_fits_dataset(recipe["dataset"], recipe["model"])
        data = _load_dataset(recipe["dataset"], int(recipe["n_points"]), int(recipe["seed"]))
    else:
        arrays = [np.asarray(load_array(recipe[k], f"--{k.replace('_', '-')}", 1 << 20, None).compute())
                  for k in _DATA_FILES]
        data = Dataset(*arrays)
    scorer = recipe["scorer"]
    # r2 is unbounded below: the empty coalition scores like a constant prediction (r2 = 0).
    default_score = 0.0 if scorer == "r2" else None
    return Utility(_make_model(recipe["model"]), data, scorer, default_score=default_score, cache=cache), recipe


def _items_per_block(budget: int) -> int:
    """Samples per block of a Monte Carlo --budget: a divisor of it, so that the budget is whole blocks
    (the same with and without --checkpoint), with at least 16 blocks where the budget allows."""
    cap = max(1, budget // 16)
    return max(d for d in range(1, cap + 1) if budget % d == 0)


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


def _print_dashboard(client: Any) -> None:
    """The dashboard's link when it serves (it needs bokeh), else how to get it."""
    import importlib.util

    if importlib.util.find_spec("bokeh") is None:
        print('Dask dashboard: not served (it needs bokeh: pip install "dvl_dask[dashboard]")')
    else:
        print(f"Dask dashboard: {client.dashboard_link}")


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
                # not when their first block arrives. silence_logs: on a busy machine a worker that has
                # imported scikit-learn can take longer than the nanny's 4 s to exit; it is then killed
                # (harmless), which would print a warning per worker (the level is restored on close).
                self.cluster = LocalCluster(
                    n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                    preload=["dvl_dask.preload"], silence_logs=logging.ERROR,
                )
                self.client = Client(self.cluster)
                _print_dashboard(self.client)
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

    cache = InMemoryCacheBackend() if args.cache else None
    utility, recipe = _utility(_recipe(args), cache=cache)
    data, scorer = utility.data, recipe["scorer"]
    if args.method not in METHODS:
        raise InvalidParameterError(f"--method must be one of {METHODS}. Got {args.method!r}.")
    method = getattr(valuation, args.method)
    if args.checkpoint and args.method not in _BUDGET_ARGUMENT:
        raise InvalidParameterError(f"--checkpoint needs a Monte Carlo --method {sorted(_BUDGET_ARGUMENT)}. "
                                    f"Got {args.method!r}.")
    per_block = _items_per_block(args.budget)
    if args.method in _BUDGET_ARGUMENT:
        ds = method(utility, **{_BUDGET_ARGUMENT[args.method]: args.budget}, seed=args.seed,
                    items_per_block=per_block)
    else:
        ds = method(utility)
    print(
        f"Valuing {data.n_players} training points of {recipe.get('dataset', 'the given arrays')!r} with "
        f"{args.model!r} "
        f"({args.method}, {ds.attrs['n_evaluations'] if not args.checkpoint else 'until the budget'} utility "
        f"evaluations, scorer {scorer!r}, {'in-memory cache' if cache is not None else 'no cache'})"
    )
    loo_result = None
    remote = args.scheduler_address or args.scheduler_file
    with _scheduler(args.scheduler, args.workers, args.scheduler_address, args.scheduler_file) as client, \
            _progress("local-cluster" if remote else args.scheduler, args.progress):
        start = time.perf_counter()
        if args.checkpoint:
            # The same blocks as without --checkpoint (block i: child i of the seed, per_block
            # samples), stopped after the same number of them: the same values.
            ds = valuation.run_until_converged(
                args.method, utility, stop=valuation.MaxChecks(args.budget // per_block), seed=args.seed,
                client=client if hasattr(client, "submit") else None, checkpoint=args.checkpoint,
                storage_options=args.storage_options, progress=args.progress, items_per_block=per_block,
            )
            print(f"Ran {ds.attrs['n_blocks']} blocks ({ds.attrs['n_evaluations']} evaluations), "
                  f"checkpoint {args.checkpoint}")
        ds.attrs[CLI_ATTR] = json.dumps(recipe, sort_keys=True)
        to_zarr(ds, args.out, overwrite=True, storage_options=args.storage_options)
        print(f"Wrote {args.out} in {time.perf_counter() - start:.1f} s")
        if args.compare_loo and args.method != "loo":
            start = time.perf_counter()
            loo_result = valuation.loo(utility).compute()
            note = " (coalitions a worker already evaluated come from its cache)" if cache is not None else ""
            print(f"Leave-one-out on the same utility took {time.perf_counter() - start:.2f} s{note}")
    from .results import open_result

    return open_result(args.out, storage_options=args.storage_options).load(), loo_result


def _progress(scheduler: str, progress: bool | None) -> AbstractContextManager[Any]:
    """Tasks of local-scheduler computes on one progress bar (a cluster shows them on its dashboard)."""
    if scheduler == "local-cluster":
        return nullcontext()
    return GraphProgress("value", progress=progress)


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
    """Write the values' plot to ``path`` (a figure of its own: the caller's matplotlib state is left alone)."""
    from .plot import plot_values, save_plot

    try:
        save_plot(plot_values, result, path)
    except MissingDependencyError:
        print("matplotlib is not installed: no plot written (pip install dvl_dask[plot]).")
        return
    print(f"Wrote {path}")


def _evaluate(args: argparse.Namespace) -> int:
    """Removal curves (and detection scores for --corrupted) of a stored result, on the rebuilt utility."""
    from .evaluation import detection_scores, point_removal_curve, weighted_accuracy_drop
    from .results import open_result

    if args.dataset is not None and args.model is not None:  # options given here: checked before any reading
        _check_model_fits_dataset(args.dataset, args.model)
    result = open_result(args.result, storage_options=args.storage_options).load()
    stored = json.loads(result.attrs[CLI_ATTR]) if CLI_ATTR in result.attrs else None
    recipe = _recipe(args, stored)
    gaps = _recipe_gaps(recipe)
    if gaps:
        where = ("records no dvl-dask options (it was not written by dvl-dask value or demo)" if stored is None
                 else "does not record them")
        raise InvalidParameterError(
            f"{args.result} {where}: to rebuild its utility, give {', '.join(gaps)}."
        )
    utility, recipe = _utility(recipe)
    scorer = recipe["scorer"]
    if utility.token != result.attrs.get("utility_token"):
        print(f"note: the utility built from these options differs from the one that produced {args.result} "
              "(its model, data or scorer changed): the curve evaluates the stored values on this one.",
              file=sys.stderr)
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
        from .plot import plot_curves, save_plot

        save_plot(plot_curves, curve, args.plot)  # no pyplot, no backend chosen: main() may run inside a session
        print(f"Wrote {args.plot}")
    return 0


def _parser() -> argparse.ArgumentParser:
    from ._version import __version__

    defaults = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(prog="dvl-dask", description="Data valuation as lazy Dask graphs.",
                                formatter_class=defaults)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, *, out: str, stored: bool = False) -> None:
        # evaluate: the utility's options default to those stored in the result (None here)
        sp.add_argument("--dataset", default=None if stored else "wine", choices=DATASETS,
                        help="scikit-learn dataset to value" + (" (default: the result's)" if stored else ""))
        sp.add_argument("--model", default=None if stored else "logistic", choices=MODELS, help="the model")
        sp.add_argument("--scorer", default=None,
                        help="scikit-learn scorer name (None: r2 for diabetes, else accuracy"
                             + ("; or the result's" if stored else "") + ")")
        sp.add_argument("--method", default="exact_shapley", choices=METHODS, help="valuation method")
        sp.add_argument("--n-points", type=int, default=None if stored else 12,
                        help="training points to value (the rest of the dataset, up to 200, is test data)")
        sp.add_argument("--seed", type=int, default=None if stored else 0,
                        help="seed of the train/test split and of Monte Carlo sampling")
        sp.add_argument("--budget", type=int, default=200,
                        help="Monte Carlo methods: permutations (permutation_shapley) or sampled subsets, "
                             "with or without --checkpoint")
        sp.add_argument("--out", default=out, help="zarr path or fsspec URL of the result")
        sp.add_argument("--scheduler", default="local-cluster", choices=SCHEDULERS,
                        help="where graphs run (local-cluster: a LocalCluster of --workers processes)")
        sp.add_argument("--workers", type=int, default=2, help="workers of the local cluster")
        sp.add_argument("--no-cache", dest="cache", action="store_false", help="do not memoize utilities")
        sp.add_argument("--top", type=int, default=5, help="how many best/worst points to print")
        sp.add_argument("--compare-loo", action="store_true", help="also compute leave-one-out values")
        sp.add_argument("--scheduler-address", default=None,
                        help="connect to a running Dask scheduler (e.g. tcp://10.0.0.5:8786) instead of --scheduler")
        sp.add_argument("--scheduler-file", default=None,
                        help="connect to the Dask scheduler described by this file (dask scheduler --scheduler-file)")
        sp.add_argument("--checkpoint", default=None,
                        help="Monte Carlo methods: commit blocks to this zarr path or URL and resume from it "
                             "(the same values as without it)")
        sp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show progress bars (None: on a terminal or in Jupyter, not when redirected)")
        sp.add_argument("--storage-options", type=json_object, default=None,
                        help='fsspec options for --out and --checkpoint as JSON, e.g. \'{"endpoint_url": "..."}\'')

    def array_files(sp: argparse.ArgumentParser) -> None:
        files = sp.add_argument_group("data from arrays instead of --dataset (.npy files, or zarr arrays: local "
                                      "paths or fsspec URLs; all four)")
        for name in _DATA_FILES:
            files.add_argument(f"--{name.replace('_', '-')}", default=None, help=f"{name} array")

    demo = sub.add_parser("demo", help="value a real sklearn dataset end to end (the main job)",
                          formatter_class=defaults)
    common(demo, out="values.zarr")
    demo.set_defaults(compare_loo=True)
    demo.add_argument("--plot", default="values.png", help="where to save a plot ('' for none)")
    value = sub.add_parser("value", help="value a dataset and write the result to zarr", formatter_class=defaults)
    common(value, out="values.zarr")
    array_files(value)
    value.add_argument("--plot", default="", help="where to save a plot ('' for none)")
    evaluate = sub.add_parser(
        "evaluate", help="removal curve and noisy-label detection of a stored result (its utility is rebuilt "
                         "from the options stored in it; options given here replace them)",
        formatter_class=defaults,
    )
    common(evaluate, out="values.zarr", stored=True)
    array_files(evaluate)
    evaluate.add_argument("--result", default="values.zarr", help="zarr path or URL of the result to evaluate")
    evaluate.add_argument("--max-fraction", type=float, default=0.5, help="largest fraction of points removed")
    evaluate.add_argument("--steps", type=int, default=6, help="steps of the removal curve")
    evaluate.add_argument("--n-random", type=int, default=3, help="repetitions of the random baseline")
    evaluate.add_argument("--corrupted", default="", help="comma-separated names of known-corrupted points")
    evaluate.add_argument("--plot", default="", help="where to save the curve plot ('' for none)")
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
