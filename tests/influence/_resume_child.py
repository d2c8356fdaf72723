"""Run by test_influence_resume.py in a fresh process: fit a torch influence model, write its influences to zarr.

``python _resume_child.py <kind> <url> [<storage options as JSON>]``, or ``python _resume_child.py
tokens`` to print the token of every kind's fitted model as JSON. Every computed
block appends a line to ``$DVL_BLOCK_LOG`` and sleeps ``$DVL_BLOCK_DELAY`` seconds, so the
parent can kill the process mid-write and count what a resumed run recomputes. Neither
setting is part of the model's state, so both runs compute the same thing.
"""

from __future__ import annotations

import json
import os
import sys
import time

import dask
import dask.array as da
import torch
import torch.nn.functional as F
from torch import nn

from dvl_dask.influence import DaskInfluenceCalculator, DisableClientSingleThreadCheck, influence_to_zarr
from dvl_dask.influence.torch import (
    ArnoldiInfluence,
    CgInfluence,
    DirectInfluence,
    EkfacInfluence,
    TorchNumpyConverter,
)

KINDS = {
    "direct": (DirectInfluence, {"regularization": 0.05}),
    "cg": (CgInfluence, {"regularization": 0.05, "rtol": 1e-10, "second_order_mode": "gauss_newton"}),
    "arnoldi": (ArnoldiInfluence, {"rank": 6, "regularization": 0.05, "seed": 3}),
    "ekfac": (EkfacInfluence, {"regularization": 0.05}),
}
N_TEST, N_TRAIN, TEST_CHUNK, TRAIN_CHUNK = 8, 40, 4, 8  # 2 x 5 = 10 blocks


def counted(base: type) -> type:
    class Counted(base):  # type: ignore[misc, valid-type]
        def _influences_from_factors(self, factors, x, y, mode):
            log = os.environ.get("DVL_BLOCK_LOG")
            if log:
                with open(log, "a") as f:
                    f.write("block\n")
            time.sleep(float(os.environ.get("DVL_BLOCK_DELAY", "0")))
            return super()._influences_from_factors(factors, x, y, mode)

    return Counted


def problem(kind: str):
    """The same fitted model and data in every process."""
    torch.manual_seed(0)
    x = torch.randn(N_TRAIN, 3, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-1.0], [0.5]], dtype=torch.float64) + 0.1 * torch.randn(N_TRAIN, 1,
                                                                                          dtype=torch.float64)
    x_test, y_test = x[:N_TEST] + 0.1, y[:N_TEST]
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    cls, kwargs = KINDS[kind]
    model = counted(cls)(net, F.mse_loss, **kwargs).fit((x, y))
    return model, (x_test, y_test, x, y)


def influences(kind: str):
    model, tensors = problem(kind)
    xt, yt, x, y = (da.from_array(t.numpy(), chunks=(TEST_CHUNK if i < 2 else TRAIN_CHUNK, -1))
                    for i, t in enumerate(tensors))
    calc = DaskInfluenceCalculator(model, TorchNumpyConverter(), DisableClientSingleThreadCheck,
                                   train_gradients="recompute")
    return calc.influences(xt, yt, x, y, as_xarray=True)


if __name__ == "__main__" and sys.argv[1:] == ["tokens"]:
    from dvl_dask.keys import object_token

    torch.set_num_threads(1)
    print(json.dumps({kind: object_token(problem(kind)[0]) for kind in KINDS}))
elif __name__ == "__main__":
    kind, url = sys.argv[1], sys.argv[2]
    options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
    torch.set_num_threads(1)
    with dask.config.set(scheduler="sync"):
        influence_to_zarr(influences(kind), url, storage_options=options)
    print("complete")
