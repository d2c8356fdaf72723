"""The Python blocks of docs/migrating-from-pydvl.md run as written, in order, in one namespace.

Each block is executed with ``exec`` in a shared namespace from an empty temporary working
directory, so the page's examples cannot rot. (The documentation harness runs them too.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "migrating-from-pydvl.md"
_FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fences of a markdown text, in order."""
    return _FENCE.findall(text)


def test_fence_parser() -> None:
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = x\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = x\n"]


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.distributed
def test_migration_guide_blocks_run(tmp_path, monkeypatch) -> None:
    pytest.importorskip("torch")
    blocks = python_blocks(GUIDE.read_text())
    assert len(blocks) >= 6  # data, caching, exact, Monte Carlo, schedulers, influence
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__migration_guide__"}
    for number, block in enumerate(blocks, 1):
        code = compile(block, f"{GUIDE.name}:block{number}", "exec")
        exec(code, namespace)
    assert namespace["influences"].shape == (10, 30)
