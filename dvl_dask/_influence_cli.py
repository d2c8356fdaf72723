"""``dvl-dask influence``: influence of training points on test points of a saved torch model, to zarr."""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np

from ._cli_options import check_numbers, connect_client, json_object, load_array
from ._progress import GraphProgress, progress_enabled
from .errors import InvalidModelError, InvalidParameterError

__all__ = ["METHODS", "add_parser", "run"]

METHODS = ("direct", "cg", "lissa", "arnoldi", "ekfac", "nystroem", "datainf", "tracin", "trak", "logra")
_CLASSES = {
    "direct": "DirectInfluence",
    "cg": "CgInfluence",
    "lissa": "LissaInfluence",
    "arnoldi": "ArnoldiInfluence",
    "ekfac": "EkfacInfluence",
    "nystroem": "NystroemSketchInfluence",
    "datainf": "InverseHarmonicMeanInfluence",
    "tracin": "TracInInfluence",
    "trak": "TrakInfluence",
    "logra": "LograInfluence",
}
#: command-line option -> constructor parameter of the influence models (passed when given and accepted)
_OPTIONS = {
    "regularization": "regularization",
    "second_order_mode": "second_order_mode",
    "block_structure": "block_structure",
    "rank": "rank",
    "maxiter": "maxiter",
    "rtol": "rtol",
    "preconditioner": "preconditioner",
    "fisher_samples": "fisher_samples",
    "projection_dim": "projection_dim",
    "projection": "projection",
    "input_dim": "input_dim",
    "output_dim": "output_dim",
    "curvature": "curvature",
    "normalize": "normalize",
    "method_seed": "seed",
}


_INF = float("inf")
#: Accepted ranges of the numeric options (checked before the model is loaded).
_BOUNDS = {
    "chunk_size": (1, _INF),
    "fit_batch_size": (1, _INF),
    "rank": (1, _INF),
    "maxiter": (1, _INF),
    "rtol": (1e-300, _INF),
    "regularization": (0.0, _INF),
    "projection_dim": (1, _INF),
    "input_dim": (1, _INF),
    "output_dim": (1, _INF),
}


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``influence`` subcommand to the subparsers ``sub``."""
    p = sub.add_parser(
        "influence",
        help="influence of training points on test points of a saved torch model, written to zarr",
        description="Fit an influence model on the training data and write the n_test x n_train influence "
        "matrix to a labelled zarr store, block by block (resumable), on a local or remote Dask scheduler.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = p.add_argument_group("model")
    model.add_argument(
        "--model", required=True, help="TorchScript file (torch.jit.save), or a state dict (torch.save) with --module"
    )
    model.add_argument(
        "--module", default=None, help="'package.module:factory' returning the nn.Module whose state dict --model holds"
    )
    model.add_argument("--loss", default="mse", choices=("mse", "cross_entropy"))
    model.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "float64"),
        help="cast the model and floating point data to this dtype (default: the model's)",
    )
    data = p.add_argument_group("data (.npy files, or zarr arrays: local paths or fsspec URLs)")
    for name in ("x-train", "y-train", "x-test", "y-test"):
        data.add_argument(f"--{name}", required=True)
    data.add_argument("--chunk-size", type=int, default=256, help="samples per block")
    method = p.add_argument_group("method")
    method.add_argument("--method", default="direct", choices=METHODS)
    method.add_argument("--mode", default="up", choices=("up", "perturbation"))
    method.add_argument("--regularization", type=float, default=None)
    method.add_argument("--second-order-mode", default=None, choices=("hessian", "gauss_newton"))
    method.add_argument("--block-structure", default=None, choices=("full", "layer"))
    method.add_argument("--rank", type=int, default=None, help="arnoldi, nystroem")
    method.add_argument("--maxiter", type=int, default=None, help="cg, lissa")
    method.add_argument("--rtol", type=float, default=None, help="cg, lissa")
    method.add_argument("--preconditioner", default=None, help="cg: jacobi or nystroem")
    method.add_argument(
        "--fisher-samples", type=int, default=None, help="ekfac, logra: sampled Fisher draws per sample"
    )
    method.add_argument("--projection-dim", type=int, default=None, help="trak")
    method.add_argument(
        "--projection", default=None, choices=("rademacher", "gaussian", "orthogonal"), help="trak, logra"
    )
    method.add_argument("--input-dim", type=int, default=None, help="logra: k_in a layer")
    method.add_argument("--output-dim", type=int, default=None, help="logra: k_out a layer")
    method.add_argument("--curvature", default=None, choices=("gauss_newton", "empirical_fisher"), help="trak")
    method.add_argument("--method-seed", type=int, default=None, help="seed of randomised methods")
    method.add_argument(
        "--checkpoints",
        nargs="+",
        default=None,
        help="tracin (required), trak (optional ensemble): state dict files of the checkpoints",
    )
    method.add_argument(
        "--learning-rates",
        nargs="+",
        type=float,
        default=None,
        help="tracin: one learning rate per checkpoint, or one for all (None: 1 for all)",
    )
    method.add_argument("--normalize", action="store_true", default=None, help="tracin: cosine variant")
    method.add_argument("--fit-batch-size", type=int, default=512, help="batch size of the fit")
    out = p.add_argument_group("output and scheduler")
    out.add_argument("--out", default="influences.zarr", help="zarr path or fsspec URL of the result")
    out.add_argument("--overwrite", action="store_true", help="replace an existing result at --out")
    out.add_argument(
        "--repair",
        action="store_true",
        help="verify every chunk of the result at --out (same command) and recompute only the damaged ones",
    )
    out.add_argument(
        "--storage-options", type=json_object, default=None, help="fsspec options for the data and --out as JSON"
    )
    out.add_argument(
        "--scheduler",
        default="threads",
        choices=("threads", "processes", "sync"),
        help="local dask scheduler when no --scheduler-address is given",
    )
    out.add_argument("--scheduler-address", default=None, help="a running Dask scheduler, e.g. tcp://host:8786")
    out.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="show progress (default: on a terminal or in Jupyter, not when output is redirected)")
    return p


# -- inputs ---------------------------------------------------------------------------------------


def _factory(spec: str) -> Callable[[], Any]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidParameterError(f"--module must look like 'package.module:factory'. Got {spec!r}.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidParameterError(f"--module: cannot import {module_name!r}: {exc}") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InvalidParameterError(f"--module: {module_name!r} has no attribute {attr!r}.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InvalidParameterError(f"--module: {spec!r} is not callable.")
    return obj


def _load_state(path: str) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidModelError(f"Cannot load the state dict {path!r} (torch.load): {exc}") from exc
    if not isinstance(state, dict):
        raise InvalidModelError(f"{path!r} holds a {type(state).__name__}, not a state dict.")
    return state


def _load_model(args: argparse.Namespace) -> Any:
    import torch

    from .influence.torch._script import load_torchscript

    if not os.path.exists(args.model):
        raise InvalidParameterError(f"--model: no such file {args.model!r}.")
    if args.module is None:
        model = load_torchscript(args.model)
    else:
        model = _factory(args.module)()
        if not isinstance(model, torch.nn.Module):
            raise InvalidModelError(f"--module {args.module!r} returned a {type(model).__name__}, not an nn.Module.")
        try:
            model.load_state_dict(_load_state(args.model))
        except RuntimeError as exc:
            raise InvalidModelError(
                f"The state dict {args.model!r} does not fit --module {args.module!r}: {exc}"
            ) from exc
        model.eval()
    if args.dtype is not None:
        model = model.to(getattr(torch, args.dtype))
    return model


def _influence_model(args: argparse.Namespace, model: Any, loss: Any) -> tuple[Any, dict[str, Any]]:
    """The influence model of ``--method`` with the options given; and what its fit needs besides data."""
    from .influence import torch as itorch

    cls = getattr(itorch, _CLASSES[args.method])
    accepted = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {}
    for option, parameter in _OPTIONS.items():
        value = getattr(args, option)
        if value is None:
            continue
        if parameter not in accepted:
            flag = "--" + option.replace("_", "-")
            raise InvalidParameterError(f"{flag} does not apply to --method {args.method}.")
        kwargs[parameter] = value
    fit_kwargs: dict[str, Any] = {}
    if args.checkpoints is not None:
        states = [_load_state(path) for path in args.checkpoints]
        if args.method == "tracin":
            fit_kwargs["checkpoints"] = states
        elif args.method == "trak":
            kwargs["checkpoints"] = states
        else:
            raise InvalidParameterError(f"--checkpoints does not apply to --method {args.method}.")
    elif args.method == "tracin":
        raise InvalidParameterError("--method tracin needs --checkpoints (state dict files saved during training).")
    if args.learning_rates is not None:
        if args.method != "tracin":
            raise InvalidParameterError(f"--learning-rates does not apply to --method {args.method}.")
        rates = args.learning_rates
        fit_kwargs["learning_rates"] = rates[0] if len(rates) == 1 else rates
    if "rank" in accepted and accepted["rank"].default is inspect.Parameter.empty and "rank" not in kwargs:
        raise InvalidParameterError(f"--method {args.method} needs --rank.")
    return cls(model, loss, **kwargs), fit_kwargs


class _Blocks:
    """Row blocks of dask arrays as ``(x, y)`` tensor batches: a torch Dataset for the fit's DataLoader."""

    def __init__(self, x: Any, y: Any, converter: Any) -> None:
        self.x, self.y, self.converter = x, y, converter
        self.offsets = np.cumsum((0, *x.chunks[0]))

    def __len__(self) -> int:
        return len(self.x.chunks[0])

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        x, y = (np.asarray(t[a:b].compute(scheduler="sync")) for t in (self.x, self.y))
        return self.converter.to_tensor(x), self.converter.to_tensor(y)

    def __dask_tokenize__(self) -> Any:
        return ("dvl-dask-cli-blocks", self.x.name, self.y.name, self.x.chunks, self.y.chunks)


def _progress(enabled: bool, remote: bool) -> AbstractContextManager[Any]:
    """Tasks of a local-scheduler compute on one progress bar (a cluster's are shown by distributed.progress)."""
    if not enabled or remote:
        return nullcontext()
    return GraphProgress("influences", progress=True)


def _require_torch() -> None:
    """Import dvl_dask's torch models first: without torch, its error names the ``[torch]`` extra."""
    from .influence import torch as _models  # noqa: F401


def run(args: argparse.Namespace) -> int:
    """Run ``dvl-dask influence`` with parsed arguments."""
    check_numbers(args, _BOUNDS)
    _require_torch()
    import dask
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from .influence import DaskInfluenceCalculator, DisableClientSingleThreadCheck, influence_to_zarr
    from .influence.torch import TorchNumpyConverter

    model = _load_model(args)
    dtype = next(model.parameters()).dtype
    loss = F.mse_loss if args.loss == "mse" else F.cross_entropy
    so = args.storage_options
    arrays = {
        name: load_array(getattr(args, name), "--" + name.replace("_", "-"), args.chunk_size, so)
        for name in ("x_train", "y_train", "x_test", "y_test")
    }
    np_dtype = np.dtype(str(dtype).removeprefix("torch."))
    for name, arr in arrays.items():  # floats in the model's dtype; cross-entropy targets as class indices
        if name.startswith("y") and args.loss == "cross_entropy":
            arrays[name] = arr.astype(np.int64)
        elif np.issubdtype(arr.dtype, np.floating) and arr.dtype != np_dtype:
            arrays[name] = arr.astype(np_dtype)
    if args.loss == "cross_entropy":
        for name in ("y_train", "y_test"):
            if arrays[name].ndim == 2 and arrays[name].shape[1] == 1:
                arrays[name] = arrays[name][:, 0]
    infl, fit_kwargs = _influence_model(args, model, loss)
    converter = TorchNumpyConverter()  # floats are already in the model dtype; labels stay integers
    start = time.perf_counter()
    if args.method == "tracin":
        infl.fit(**fit_kwargs)
    else:
        fit_blocks = _Blocks(
            arrays["x_train"].rechunk((args.fit_batch_size, *arrays["x_train"].chunks[1:])),
            arrays["y_train"].rechunk((args.fit_batch_size, *arrays["y_train"].chunks[1:])),
            TorchNumpyConverter(),
        )
        infl.fit(DataLoader(fit_blocks, batch_size=None))
    n_train, n_test = arrays["x_train"].shape[0], arrays["x_test"].shape[0]
    print(
        f"Fitted {type(infl).__name__} ({infl.n_parameters} factor columns) on {n_train} training points in "
        f"{time.perf_counter() - start:.1f} s",
        flush=True,
    )
    remote = args.scheduler_address is not None
    if remote:
        client: Any = connect_client(args.scheduler_address)
        context: AbstractContextManager[Any] = client
    else:
        client = DisableClientSingleThreadCheck
        context = dask.config.set(scheduler=args.scheduler)
    with context:
        calc = DaskInfluenceCalculator(infl, converter, client)
        lazy = calc.influences(
            arrays["x_test"], arrays["y_test"], arrays["x_train"], arrays["y_train"], mode=args.mode, as_xarray=True
        )
        start = time.perf_counter()
        show = progress_enabled(args.progress)
        with _progress(show, remote):
            if remote and show:
                from distributed import progress

                future = client.compute(
                    influence_to_zarr(lazy, args.out, storage_options=so, overwrite=args.overwrite, repair=args.repair,
                                      compute=False)
                )
                progress(future)
                future.result()
            else:
                influence_to_zarr(lazy, args.out, storage_options=so, overwrite=args.overwrite, repair=args.repair)
    print(
        f"Wrote {n_test} x {n_train} influences ({args.method}, mode {args.mode}) to {args.out} in "
        f"{time.perf_counter() - start:.1f} s"
    )
    return 0
