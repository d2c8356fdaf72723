"""``dvl-dask influence``: the stored matrix equals the Python API's, for TorchScript and state-dict models."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
import zarr  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from dvl_dask import open_influence  # noqa: E402
from dvl_dask.cli import main  # noqa: E402
from dvl_dask.influence.torch import (  # noqa: E402
    DirectInfluence,
    EkfacInfluence,
    LograInfluence,
    TracInInfluence,
    TrakInfluence,
)

pytestmark = [
    pytest.mark.torch,
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]

FACTORY = """
import torch
from torch import nn


def classifier():
    torch.manual_seed(123)  # any initial values: the state dict replaces them
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 3)).double()
"""


def _save(tmp_path, **arrays):
    paths = {}
    for name, value in arrays.items():
        paths[name] = str(tmp_path / f"{name}.npy")
        np.save(paths[name], value.numpy())
    return paths


def _data_args(paths):
    return [
        arg
        for name in ("x_train", "y_train", "x_test", "y_test")
        for arg in (f"--{name.replace('_', '-')}", paths[name])
    ]


def test_torchscript_mlp_direct_equals_the_python_api(mlp_regressor, tmp_path, capsys):
    p = mlp_regressor
    script_path = str(tmp_path / "mlp.pt")
    torch.jit.script(p.model).save(script_path)
    paths = _save(tmp_path, x_train=p.x, y_train=p.y, x_test=p.x_test, y_test=p.y_test)
    out = str(tmp_path / "influences.zarr")
    code = main(
        [
            "influence",
            "--model",
            script_path,
            *_data_args(paths),
            "--method",
            "direct",
            "--regularization",
            "0.01",
            "--chunk-size",
            "16",
            "--out",
            out,
            "--scheduler",
            "sync",
        ]
    )
    assert code == 0
    printed = capsys.readouterr()
    assert "Wrote 10 x 50 influences" in printed.out
    stored = open_influence(out)
    assert stored.shape == (10, 50) and stored.attrs["model"] == "DirectInfluence"
    expected = DirectInfluence(p.model, p.loss, regularization=0.01).fit((p.x, p.y))
    np.testing.assert_allclose(
        stored.values, expected.influences(p.x_test, p.y_test, p.x, p.y).numpy(), rtol=1e-9, atol=1e-12
    )
    # output redirected (captured): no progress bar unless --progress
    assert "100%" not in printed.err
    # a damaged chunk: the same command with --repair recomputes it, bit-identical to the first write
    first = stored.values
    (tmp_path / "influences.zarr" / "influence" / "c" / "0" / "1").unlink()
    argv = ["influence", "--model", script_path, *_data_args(paths), "--method", "direct", "--regularization", "0.01",
            "--chunk-size", "16", "--out", out, "--scheduler", "sync"]
    assert main(argv) == 2  # a complete result is refused without --repair (or --overwrite)
    assert "repair" in capsys.readouterr().err
    assert main([*argv, "--repair"]) == 0
    assert open_influence(out).values.tobytes() == first.tobytes()


def test_state_dict_module_zarr_data_and_other_methods(mlp_classifier, tmp_path, monkeypatch):
    p = mlp_classifier
    (tmp_path / "cli_factory_mod.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    model_path = str(tmp_path / "state.pt")
    torch.save(p.model.state_dict(), model_path)
    paths = {}
    for name, value in {"x_train": p.x, "y_train": p.y, "x_test": p.x_test, "y_test": p.y_test}.items():
        paths[name] = str(tmp_path / f"{name}.zarr")
        zarr.create_array(paths[name], data=value.numpy())
    common = [
        "influence",
        "--model",
        model_path,
        "--module",
        "cli_factory_mod:classifier",
        *_data_args(paths),
        "--loss",
        "cross_entropy",
        "--chunk-size",
        "20",
        "--no-progress",
    ]
    out = str(tmp_path / "ekfac.zarr")
    assert main([*common, "--method", "ekfac", "--regularization", "0.05", "--out", out]) == 0
    expected = EkfacInfluence(p.model, F.cross_entropy, regularization=0.05).fit((p.x, p.y))
    np.testing.assert_allclose(
        open_influence(out).values, expected.influences(p.x_test, p.y_test, p.x, p.y).numpy(), rtol=1e-9, atol=1e-12
    )

    out = str(tmp_path / "trak.zarr")
    assert (
        main(
            [
                *common,
                "--method",
                "trak",
                "--projection-dim",
                "16",
                "--regularization",
                "0.05",
                "--method-seed",
                "3",
                "--out",
                out,
            ]
        )
        == 0
    )
    trak = TrakInfluence(p.model, F.cross_entropy, projection_dim=16, regularization=0.05, seed=3).fit((p.x, p.y))
    np.testing.assert_allclose(
        open_influence(out).values, trak.influences(p.x_test, p.y_test, p.x, p.y).numpy(), rtol=1e-9, atol=1e-12
    )

    out = str(tmp_path / "logra.zarr")
    assert (
        main(
            [
                *common,
                "--method",
                "logra",
                "--input-dim",
                "3",
                "--output-dim",
                "2",
                "--curvature",
                "gauss_newton",
                "--regularization",
                "0.05",
                "--out",
                out,
            ]
        )
        == 0
    )
    logra = LograInfluence(
        p.model, F.cross_entropy, input_dim=3, output_dim=2, curvature="gauss_newton", regularization=0.05
    ).fit(DataLoader(TensorDataset(p.x, p.y), batch_size=20))
    np.testing.assert_allclose(
        open_influence(out).values, logra.influences(p.x_test, p.y_test, p.x, p.y).numpy(), rtol=1e-9, atol=1e-12
    )

    torch.manual_seed(7)
    other = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    ckpts = [str(tmp_path / "c0.pt"), str(tmp_path / "c1.pt")]
    torch.save(other.state_dict(), ckpts[0])
    torch.save(p.model.state_dict(), ckpts[1])
    out = str(tmp_path / "tracin.zarr")
    assert (
        main([*common, "--method", "tracin", "--checkpoints", *ckpts, "--learning-rates", "0.1", "0.02", "--out", out])
        == 0
    )
    tracin = TracInInfluence(p.model, F.cross_entropy).fit([other.state_dict(), p.model.state_dict()], [0.1, 0.02])
    np.testing.assert_allclose(
        open_influence(out).values, tracin.influences(p.x_test, p.y_test, p.x, p.y).numpy(), rtol=1e-9, atol=1e-12
    )


def test_bad_arguments_exit_with_a_message(mlp_regressor, tmp_path, capsys):
    p = mlp_regressor
    script_path = str(tmp_path / "mlp.pt")
    torch.jit.script(p.model).save(script_path)
    paths = _save(tmp_path, x_train=p.x, y_train=p.y, x_test=p.x_test, y_test=p.y_test)
    base = ["influence", "--model", script_path, *_data_args(paths), "--out", str(tmp_path / "o.zarr")]
    assert main([*base, "--method", "direct", "--rank", "3"]) == 2
    assert "--rank does not apply to --method direct" in capsys.readouterr().err
    assert main([*base, "--method", "tracin"]) == 2
    assert "needs --checkpoints" in capsys.readouterr().err
    assert main([*base, "--method", "nystroem"]) == 2  # arnoldi has a default rank (10, as in pyDVL)
    assert "needs --rank" in capsys.readouterr().err
    assert main(["influence", "--model", str(tmp_path / "missing.pt"), *_data_args(paths)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main([*base, "--module", "no_such_module_xyz:f"]) == 2
    assert "cannot import 'no_such_module_xyz'" in capsys.readouterr().err


@pytest.mark.slow
def test_on_a_running_scheduler(mlp_regressor, tmp_path):
    distributed = pytest.importorskip("distributed")
    p = mlp_regressor
    script_path = str(tmp_path / "mlp.pt")
    torch.jit.script(p.model).save(script_path)
    paths = _save(tmp_path, x_train=p.x, y_train=p.y, x_test=p.x_test, y_test=p.y_test)
    out = str(tmp_path / "remote.zarr")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
    ) as cluster:
        code = main(
            [
                "influence",
                "--model",
                script_path,
                *_data_args(paths),
                "--method",
                "direct",
                "--regularization",
                "0.01",
                "--chunk-size",
                "16",
                "--out",
                out,
                "--scheduler-address",
                cluster.scheduler_address,
            ]
        )
    assert code == 0
    expected = DirectInfluence(p.model, p.loss, regularization=0.01).fit((p.x, p.y))
    np.testing.assert_allclose(
        open_influence(out).values, expected.influences(p.x_test, p.y_test, p.x, p.y).numpy(), rtol=1e-9, atol=1e-12
    )
