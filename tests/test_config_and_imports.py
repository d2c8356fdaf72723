"""Configuration, import weight and layer contracts."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import dask
import pytest

import dvl_dask
from dvl_dask import config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_defaults_registered_and_read_at_call_time():
    assert config.get(config.EXACT_MAX_PLAYERS) == 20
    with dask.config.set({"dvl_dask.valuation.exact.max-players": 7}):
        assert config.get(config.EXACT_MAX_PLAYERS) == 7
        assert config.get(config.EXACT_MAX_PLAYERS, override_with=3) == 3


def test_environment_variables_override_defaults():
    code = "import dvl_dask, dask; print(dask.config.get('dvl_dask.valuation.exact.max-players'))"
    env = dict(os.environ, DASK_DVL_DASK__VALUATION__EXACT__MAX_PLAYERS="11")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "11"


def test_import_is_light():
    code = (
        "import sys, dvl_dask;"
        "heavy=[m for m in ('torch','pymemcache','distributed','matplotlib','s3fs','dvl_dask.compat')"
        " if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_names():
    for name in dvl_dask.__all__:
        assert hasattr(dvl_dask, name), name
    assert dvl_dask.__version__


def test_layers_contract_holds():
    lint = shutil.which("lint-imports", path=os.path.dirname(sys.executable))
    if lint is None:
        pytest.fail("lint-imports (import-linter) is not installed; install the 'test' extra.")
    out = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
