"""The README as a landing page: its commands are the ones that work and
that CI runs, and its links lead somewhere.  Its examples run in
tests/test_docs_examples.py, with those of docs/."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"

INSTALL_AND_DEMO = "pip install . && python -m fastshm demo"
INSTALL_AND_TEST = 'pip install ".[test]" && python -m pytest'
BUILD_DOCS = 'pip install ".[docs]" && mkdocs build --strict'


def _sh_blocks(text: str) -> list:
    return [b.strip() for b in re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)]


def test_the_newcomer_commands_are_the_first_two() -> None:
    """The two commands a newcomer runs, exactly, in this order, before any
    other shell command (the docs build is the contributors')."""
    blocks = _sh_blocks(README.read_text(encoding="utf-8"))
    assert blocks[:2] == [INSTALL_AND_DEMO, INSTALL_AND_TEST]
    assert BUILD_DOCS in blocks[2:]


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run's readme_tests is the README's test command, character for
    character, and CI builds the docs as the README says, strictly."""
    ci = CI.read_text(encoding="utf-8")
    body = re.search(r"^readme_tests\(\) \{\n(.*?)^\}", ci, re.S | re.M)
    assert body, ".ci/run has no readme_tests function"
    commands = [ln.strip() for ln in body.group(1).splitlines()
                if ln.strip() and not ln.strip().startswith("#")]
    assert commands == [INSTALL_AND_TEST]
    assert 'pip install -q ".[docs]"' in ci
    assert re.search(r"^\s*mkdocs build --strict --site-dir ", ci, re.M)


def test_readme_is_a_landing_page() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 250


def test_readme_links_lead_somewhere() -> None:
    """Every relative link of the README names a file of the repository,
    and an anchor into a page names one of its headings."""
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.is_file(), f"README links to {link}, which is not a file"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(encoding="utf-8"), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-")
                     for h in headings}
            assert anchor in slugs, f"README links to {link}: no such heading"
