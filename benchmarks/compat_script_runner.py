"""Run one pyDVL-style script of ``tests/compat/scripts`` and print its result as one JSON line.

Run:  python benchmarks/compat_script_runner.py SCRIPT {pydvl,dvl_dask}

``pydvl`` runs the script unchanged (in an interpreter where real pyDVL is importable);
``dvl_dask`` rewrites ``from pydvl.`` to ``from dvl_dask.compat.pydvl.`` and nothing else, exactly as
``tests/compat/test_pydvl_scripts.py`` does. Every script leaves its valuation result in a global
``result``; this runner reads ``values``, ``variances``, ``counts`` and ``indices`` from it and prints
them with the wall time of the whole script (imports excluded: they are done before the clock starts).
It imports nothing of dvl_dask itself, so the same file runs under both interpreters.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

PREFIX = "from pydvl."


def _source(script: Path, library: str) -> str:
    source = script.read_text()
    if library == "dvl_dask":
        return source.replace(PREFIX, "from dvl_dask.compat.pydvl.")
    if library == "pydvl":
        return source
    raise ValueError(f"library must be 'pydvl' or 'dvl_dask', got {library!r}")


def _warm_imports(source: str) -> None:
    """Import the script's modules before the clock starts (both libraries pay import time alike)."""
    for line in source.splitlines():
        if line.startswith("from ") and " import " in line:
            __import__(line.split()[1])


def _as_list(values: Any) -> list[Any]:
    return [None if v != v else v for v in (x.item() if hasattr(x, "item") else x for x in values)]


def run(script: Path, library: str) -> dict[str, Any]:
    """Execute ``script`` for ``library`` and return its result's arrays and the wall time."""
    source = _source(script, library)
    _warm_imports(source)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    start = time.perf_counter()
    exec(compile(source, str(script), "exec"), namespace)
    seconds = time.perf_counter() - start
    result = namespace["result"]
    return {
        "script": script.name,
        "library": library,
        "seconds": seconds,
        "values": _as_list(result.values),
        "variances": _as_list(result.variances),
        "counts": _as_list(result.counts),
        "indices": _as_list(result.indices),
    }


def main() -> None:
    warnings.filterwarnings("ignore")
    script, library = Path(sys.argv[1]), sys.argv[2]
    print(json.dumps(run(script, library)), flush=True)


if __name__ == "__main__":
    main()
