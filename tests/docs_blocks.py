"""Run the ```python blocks of a markdown file, in order, in one namespace.

Used by ``tests/test_docs_examples.py`` so that the README and the guides in ``docs/``
cannot drift from the library. A block that must not run (it connects to a remote
scheduler, say) is preceded by an HTML comment giving the reason, on the line just
above the fence::

    <!-- no-run: connects to a scheduler at a remote address -->
    ```python
    client = Client("tcp://10.0.0.5:8786")
    ```

Such a block is still compiled and its import statements are still executed, so a
renamed module or function fails the test even there.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,}|~{3,})\s*(?P<info>[^\n`]*)$")
_NO_RUN = re.compile(r"^\s*<!--\s*no-run\s*(?::\s*(?P<reason>.*?))?\s*-->\s*$")
_HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$")


@dataclass(frozen=True)
class CodeBlock:
    """One fenced ```python block of a markdown file."""

    path: str
    line: int  # 1-based line of the first line of code (just below the fence)
    source: str
    heading: str  # the nearest markdown heading above the block ("" before any)
    run: bool = True
    reason: str = ""


@dataclass
class BlockFailure(Exception):
    """A block raised; the message names the file and the block's first line."""

    block: CodeBlock
    error: BaseException

    def __str__(self) -> str:
        return (
            f"{self.block.path}: the python block at line {self.block.line} (under "
            f"{self.block.heading!r}) raised {type(self.error).__name__}: {self.error}"
        )


@dataclass
class RunReport:
    """How long each block took, in seconds, keyed by its first line."""

    seconds: dict[int, float] = field(default_factory=dict)
    blocks: list[CodeBlock] = field(default_factory=list)

    def seconds_under(self, heading: str) -> float:
        """Time of the first executed block under ``heading``; ``KeyError`` when there is none."""
        for block in self.blocks:
            if block.run and block.heading == heading:
                return self.seconds[block.line]
        raise KeyError(f"no executed python block under the heading {heading!r}")


def python_blocks(text: str, path: str = "<markdown>") -> list[CodeBlock]:
    """The ```python blocks of ``text`` with their line numbers, headings and run markers.

    Raises
    ------
    ValueError
        When a fence is not closed, or a ``no-run`` marker gives no reason.
    """
    lines = text.splitlines()
    blocks: list[CodeBlock] = []
    heading = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence is None:
            title = _HEADING.match(line)
            if title is not None:
                heading = title.group("title")
            i += 1
            continue
        ticks = fence.group("ticks")
        closing = re.compile(rf"^[ \t]*{re.escape(ticks[0])}{{{len(ticks)},}}\s*$")
        end = i + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        if end == len(lines):
            raise ValueError(f"{path}: the code fence opened at line {i + 1} is never closed")
        language = fence.group("info").split()[0].lower() if fence.group("info").strip() else ""
        if language in ("python", "py"):
            previous = lines[i - 1] if i > 0 else ""
            marker = _NO_RUN.match(previous)
            if marker is not None and not (marker.group("reason") or "").strip():
                raise ValueError(f"{path}: the no-run marker at line {i} must give a reason: <!-- no-run: why -->")
            indent = len(fence.group("indent"))
            body = "\n".join(code[indent:] if code[:indent].isspace() else code for code in lines[i + 1 : end])
            blocks.append(
                CodeBlock(
                    path=path,
                    line=i + 2,
                    source=body + "\n",
                    heading=heading,
                    run=marker is None,
                    reason=(marker.group("reason") or "").strip() if marker else "",
                )
            )
        i = end + 1
    return blocks


def _compile(block: CodeBlock, tree: ast.Module | None = None):
    # Leading newlines put the block's lines at their line numbers in the markdown file,
    # so a traceback points into README.md itself.
    if tree is None:
        return compile("\n" * (block.line - 1) + block.source, block.path, "exec")
    return compile(tree, block.path, "exec")


def _imports_only(block: CodeBlock) -> ast.Module:
    tree = ast.parse("\n" * (block.line - 1) + block.source, block.path)
    tree.body = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    return tree


def run_blocks(blocks: list[CodeBlock], workdir: Path) -> RunReport:
    """Execute ``blocks`` in order in one namespace with ``workdir`` as the working directory.

    Blocks marked ``no-run`` are compiled and only their imports are executed.

    Raises
    ------
    BlockFailure
        For the first block that raises (or does not compile).
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    namespace: dict[str, object] = {"__name__": "__main__"}
    report = RunReport(blocks=list(blocks))
    previous = Path.cwd()
    os.chdir(workdir)
    try:
        for block in blocks:
            start = time.perf_counter()
            try:
                code = _compile(block) if block.run else _compile(block, _imports_only(block))
                exec(code, namespace)
            except BaseException as exc:  # KeyboardInterrupt is not re-raised as a failure
                if isinstance(exc, KeyboardInterrupt):
                    raise
                raise BlockFailure(block, exc) from exc
            finally:
                report.seconds[block.line] = time.perf_counter() - start
                plt.close("all")
    finally:
        os.chdir(previous)
        # Close clients, then clusters, that a guide opened without a ``with`` (newest first).
        for value in reversed(list(namespace.values())):
            close = getattr(value, "close", None)
            if type(value).__module__.startswith("distributed") and callable(close):
                with contextlib.suppress(Exception):  # never hide the block's own failure
                    close()
    return report
