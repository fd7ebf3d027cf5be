"""The documentation site's sources, checked without building it (CI builds
it with ``mkdocs build --strict``): every page is in the nav, the API
reference covers every public name, and the docs extra is declared."""

from __future__ import annotations

import re
from pathlib import Path

import fastshm

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MKDOCS = ROOT / "mkdocs.yml"


def test_every_page_is_in_the_nav() -> None:
    config = MKDOCS.read_text(encoding="utf-8")
    nav = config[config.index("\nnav:"):config.index("\n\n", config.index("\nnav:") + 1)]
    listed = set(re.findall(r"([\w./-]+\.md)\s*$", nav, re.M))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert listed == pages, (sorted(pages - listed), sorted(listed - pages))


def test_format_page_stays_where_it_is() -> None:
    """Other files link to docs/FORMAT.md."""
    assert (DOCS / "FORMAT.md").is_file()


def test_api_reference_covers_all_public_names() -> None:
    api = (DOCS / "reference" / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^::: fastshm\.(\w+)\s*$", api, re.M))
    described = set(re.findall(r"^`fastshm\.(\w+)`$", api, re.M))
    missing = set(fastshm.__all__) - documented - described
    assert not missing, f"docs/reference/api.md lacks {sorted(missing)}"


def test_cli_reference_covers_every_command() -> None:
    """Each subcommand has its --help section (made when the site is built)."""
    from fastshm.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    cli = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    marked = set(re.findall(r"<!-- cli-help: ?([a-z-]*) ?-->", cli))
    assert marked == {""} | set(commands)


def test_docs_extra_is_declared() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    line = re.search(r"^docs = \[(.*)\]$", pyproject, re.M)
    assert line, "pyproject.toml has no docs extra"
    names = {re.split(r"[<>=\[; ]", d.strip().strip('"'))[0]
             for d in line.group(1).split(",")}
    assert names == {"mkdocs", "mkdocs-material", "mkdocstrings"}
    assert "mkdocstrings[python]" in line.group(1)


def test_site_output_is_ignored() -> None:
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "site/" in ignored
