"""Every ```python block of the README and of the guides in docs/ runs as written.

One test per markdown file: its blocks run in order in one namespace, in a fresh
temporary working directory (files such as ``values.zarr`` land there), with
matplotlib's Agg backend. A block that must not run is preceded by
``<!-- no-run: reason -->`` (see ``tests/docs_blocks.py``); it is still compiled and
its imports executed.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from docs_blocks import BlockFailure, python_blocks, run_blocks

ROOT = Path(__file__).resolve().parent.parent

#: Markdown files whose python blocks are executed: the README and every guide in docs/.
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

#: Files whose blocks take longer than ~20 s in all (still run by CI).
SLOW_FILES = {"README.md", "docs/migrating-from-pydvl.md"}

def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _files_with_python() -> list:
    params = []
    for path in DOC_FILES:
        if not python_blocks(path.read_text(encoding="utf-8"), _relative(path)):
            continue
        marks = [pytest.mark.slow] if _relative(path) in SLOW_FILES else []
        params.append(pytest.param(path, id=_relative(path), marks=marks))
    return params


@pytest.mark.parametrize("path", _files_with_python())
def test_markdown_python_blocks_run(path: Path, tmp_path: Path) -> None:
    name = _relative(path)
    blocks = python_blocks(path.read_text(encoding="utf-8"), name)
    # How long the README's quickstart takes is measured in benchmarks/bench_quickstart_scheduler.py,
    # not asserted here (a timed test fails on a loaded machine without telling anything).
    try:
        run_blocks(blocks, tmp_path)
    except BlockFailure as failure:
        pytest.fail(str(failure), pytrace=True)


def test_the_readme_quickstart_is_executed() -> None:
    blocks = python_blocks((ROOT / "README.md").read_text(encoding="utf-8"), "README.md")
    quickstart = [b for b in blocks if b.heading == "Quickstart"]
    assert quickstart and quickstart[0].run, "the README's quickstart block must be executed, not marked no-run"
    assert "README.md" in [p.id for p in _files_with_python()]


# --- the API reference covers every public module --------------------------------

#: Public-looking modules that have no page of their own, and why.
UNDOCUMENTED = {
    "dvl_dask.__main__": "runs the CLI (documented on the cli page)",
    "dvl_dask.threads": "internal: thread limits inside tasks",
    "dvl_dask.typing": "internal type aliases",
    "dvl_dask.validation": "internal argument checks",
    "dvl_dask.testing.assertions": "re-exported by dvl_dask.testing",
    "dvl_dask.influence.torch.util": "pyDVL spellings of dvl_dask.influence.torch names",
}


def _public_modules() -> set[str]:
    names = set()
    for path in (ROOT / "dvl_dask").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(part.startswith("_") for part in parts) or parts[-1] == "__main__":
            names.add(".".join(parts))
    return names - {"dvl_dask"}


def test_every_public_module_has_an_api_page_in_the_nav() -> None:
    import yaml

    documented = {
        line.split()[1]
        for page in (ROOT / "docs" / "api").glob("*.md")
        for line in page.read_text(encoding="utf-8").splitlines()
        if line.startswith("::: ")
    }
    missing = _public_modules() - documented - set(UNDOCUMENTED)
    assert not missing, f"add a `::: module` line to a page of docs/api/ for {sorted(missing)}"
    assert "dvl_dask.valuation" in documented and "dvl_dask.influence.torch" in documented

    def listed(nav) -> set[str]:
        if isinstance(nav, str):
            return {nav}
        items = nav.values() if isinstance(nav, dict) else nav
        return set().union(*(listed(item) for item in items))

    nav = listed(yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"])
    pages = {f"api/{page.name}" for page in (ROOT / "docs" / "api").glob("*.md")}
    assert pages <= nav, f"list these pages in mkdocs.yml's nav: {sorted(pages - nav)}"


# --- the harness itself ------------------------------------------------------------

GUIDE = textwrap.dedent(
    """\
    # Guide

    Text, then a shell block that is not run:

    ```bash
    exit 1
    ```

    ## Setup

    ```python
    from pathlib import Path
    total = 1
    Path("out.txt").write_text("written")
    ```

    <!-- no-run: talks to a remote scheduler -->
    ```python
    import json
    raise RuntimeError("never executed")
    ```

    - in a list:

      ```python
      total += 41
      ```
    """
)


def test_blocks_are_found_with_lines_headings_and_markers() -> None:
    blocks = python_blocks(GUIDE, "guide.md")
    assert [(b.line, b.heading, b.run) for b in blocks] == [
        (12, "Setup", True),
        (19, "Setup", False),
        (26, "Setup", True),
    ]
    assert blocks[1].reason == "talks to a remote scheduler"
    assert blocks[2].source == "total += 41\n"


def test_blocks_share_one_namespace_in_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    blocks = python_blocks(GUIDE, "guide.md") + python_blocks("```python\nassert total == 42, total\n```\n", "end.md")
    report = run_blocks(blocks, tmp_path)
    assert (tmp_path / "out.txt").read_text() == "written"
    assert not (ROOT / "out.txt").exists()
    assert Path.cwd() == ROOT
    assert set(report.seconds) == {12, 19, 26, 2}
    assert report.seconds_under("Setup") == report.seconds[12]


def test_a_failing_block_is_named_by_its_line(tmp_path: Path) -> None:
    text = "# A\n\n```python\nx = 1\n```\n\n## B\n\n```python\ny = 2\nundefined_name\n```\n"
    with pytest.raises(BlockFailure) as info:
        run_blocks(python_blocks(text, "broken.md"), tmp_path)
    assert str(info.value).startswith("broken.md: the python block at line 10 (under 'B') raised NameError")
    # The traceback points at the markdown file's own line.
    assert info.value.error.__traceback__.tb_next.tb_lineno == 11


def test_no_run_blocks_still_import(tmp_path: Path) -> None:
    text = "<!-- no-run: remote -->\n```python\nfrom dvl_dask.valuation import no_such_function\n```\n"
    with pytest.raises(BlockFailure, match="ImportError"):
        run_blocks(python_blocks(text, "stale.md"), tmp_path)


def test_markers_need_a_reason_and_fences_must_close() -> None:
    with pytest.raises(ValueError, match="must give a reason"):
        python_blocks("<!-- no-run -->\n```python\nx = 1\n```\n", "m.md")
    with pytest.raises(ValueError, match="line 1 is never closed"):
        python_blocks("```python\nx = 1\n", "m.md")
