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


def _imported_top_level_modules(root: pathlib.Path) -> dict[str, set[str]]:
    """Top-level names of the absolute imports of every module under ``root`` (module-level or not)."""
    import ast

    found: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(root.parent)))
    return found


def _normalized(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_package_is_declared():
    """Each third-party package the library imports is a dependency or in an extra of pyproject.toml."""
    import importlib.metadata
    import re
    import tomllib

    repo = pathlib.Path(dvl_dask.__file__).resolve().parents[1]
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    declared = {_normalized(re.match(r"[A-Za-z0-9_.\-]+", r).group(0)) for r in requirements}
    distributions = importlib.metadata.packages_distributions()  # import name -> distributions
    third_party = {
        name: where for name, where in _imported_top_level_modules(repo / "dvl_dask").items()
        if name not in sys.stdlib_module_names and name not in ("dvl_dask", "__future__")
    }
    assert {"numpy", "dask", "sklearn", "scipy", "pandas", "tqdm"} <= set(third_party)
    missing = {
        name: sorted(where)[:3] for name, where in third_party.items()
        if not {_normalized(d) for d in distributions.get(name, [name])} & declared
    }
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_the_library_logs_and_does_not_print():
    """Messages go to logging.getLogger("dvl_dask") (a NullHandler: silent unless the application
    configures logging); print() is used only by the command line."""
    import ast
    import logging

    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("dvl_dask").handlers)
    root = pathlib.Path(dvl_dask.__file__).resolve().parent
    printing = sorted(
        str(path.relative_to(root)) for path in root.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    )
    assert set(printing) <= {"cli.py", "_influence_cli.py"}, printing
