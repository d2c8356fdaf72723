"""MkDocs hooks for ``make docs``: the README is the home page, notebooks/ and docs/*.md are pages.

- ``index.md`` is generated from ``README.md`` (links into ``docs/`` made relative
  to the site), so the README stays the one source of the front page.
- The notebooks of ``notebooks/`` are added as pages. The build does not execute them:
  mkdocs-jupyter renders the copy the full-size test run executed (``build/notebooks/``, written
  by ``tests/test_notebooks_and_cli.py``, so CI's ``make test-long`` then ``make docs`` shows
  outputs) when its code is that of the notebook, else the notebook as committed.
- Links a guide makes as on GitHub (``../README.md``, ``../notebooks/x.ipynb``) are
  pointed at the pages the site has for them.
- Sphinx roles in docstrings (``:class:`X```, ``:func:`~a.b```) are shown as plain code,
  as Sphinx would show them (``~`` keeps the last name).
- Every guide ``docs/*.md`` (``docs/migrating-from-pydvl.md``, ...) that ``nav``
  does not list yet is appended to a "Guides" section, so a new guide needs no edit here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
_DOCS_LINK = re.compile(r"(\]\(|src=\")docs/")
_SPHINX_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj|const):<code>(~)?([^<]*)</code>")
_ESCAPED_PIPE = re.compile(r"(<code>[^<]*?)\\\|")  # GitHub shows `a \| b` in a table cell as `a | b`
_UP_LINKS = {"](../README.md": "](index.md", "](../notebooks/": "](notebooks/"}


def _listed(nav: list) -> set[str]:
    """Every page path named anywhere in a ``nav`` list."""
    found: set[str] = set()
    for entry in nav or []:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            if isinstance(value, list):
                found |= _listed(value)
            elif isinstance(value, str):
                found.add(value)
    return found


def on_config(config):
    nav = config.nav
    if nav is None:
        return config
    guides = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    missing = [name for name in guides if name not in _listed(nav)]
    if missing:
        nav.insert(1, {"Guides": missing})
    return config


def _code(notebook: Path) -> list[str]:
    """The source of every code cell of a notebook file."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]


@event_priority(100)  # before mkdocs-jupyter wraps .ipynb files as pages
def on_files(files: Files, config) -> Files:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "index.md", content=_DOCS_LINK.sub(r"\1", readme)))
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        executed = ROOT / "build" / "notebooks" / notebook.name
        source = ROOT / "build" if executed.is_file() and _code(executed) == _code(notebook) else ROOT
        files.append(
            File(
                f"notebooks/{notebook.name}",
                src_dir=str(source),
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
            )
        )
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != "index.md" and "/" not in page.file.src_uri:  # a guide in docs/
        for github, site in _UP_LINKS.items():
            markdown = markdown.replace(github, site)
    return markdown


def _plain_role(match: re.Match) -> str:
    name = match.group(2).rsplit(".", 1)[-1] if match.group(1) else match.group(2)
    return f"<code>{name}</code>"


def on_page_content(html: str, page, config, files) -> str:
    while _ESCAPED_PIPE.search(html):
        html = _ESCAPED_PIPE.sub(r"\1|", html)
    return _SPHINX_ROLE.sub(_plain_role, html)
