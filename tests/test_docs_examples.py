"""Every python code block of README.md and docs/*.md, run as a test.

Each block runs in a fresh interpreter (``sys.executable -c``), bounded by a
timeout, in a scratch directory; a failure names the block's file and line.
An HTML comment on the line just before a block says how to run it
(docs/development.md, "Examples are tests"):

    (no comment)                          run it as it is
    <!-- example: names=jobs,frames -->   put a unique name for this run in
                                          place of each quoted name
    <!-- example: needs=numpy -->         skip where numpy is missing (any
                                          module; "native": the C core is
                                          built; "posix": not on Windows)
    <!-- example: runner=pingpong -->     run it with RUNNERS["pingpong"]
    <!-- not run: REASON -->              skip it, saying why

Keys combine with ";"; text after a key's value is a comment.  A block
must delete every object it names: one still there afterwards fails the
test (and is removed).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest
from conftest import make_name

import fastshm
from fastshm import _backend

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
TIMEOUT = 90  # seconds, for each process an example runs
WINDOWS = sys.platform == "win32"

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
_MARK = re.compile(r"^\s*<!--\s*(example|not run)\s*(?::\s*(.*?))?\s*-->\s*$")
_PYTHON = {"python", "py", "python3"}
_KEYS = {"names", "needs", "runner"}
# Constructors that take a name first: a literal there must be in names=.
_NAMED = re.compile(
    r"\b(?:Segment|Queue|ObjectQueue|SharedMemory|Publisher|Subscriber)"
    r"(?:\.open_or_create)?\(\s*(['\"])([^'\"]+)\1"
    # ShareableList takes its name as a keyword.
    r"|\bShareableList\([^()]*?\bname=(['\"])([^'\"]+)\3"
)
# What the python backend does not open on Windows (it has no flock there).
_NEEDS_FLOCK = re.compile(r"\b(?:Queue|ObjectQueue|Publisher|Subscriber)\b")


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    code: str
    kind: str = "run"  # "run" or "not run"
    reason: str = ""
    options: Dict[str, List[str]] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"


def _parse_options(text: str, where: str) -> Dict[str, List[str]]:
    options: Dict[str, List[str]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, eq, rest = part.partition("=")
        key = key.strip()
        if not eq or key not in _KEYS or not rest.strip():
            raise ValueError(f"{where}: cannot read {part!r} in the example marker "
                             f"(keys: {', '.join(sorted(_KEYS))}; key=value)")
        value = rest.split()[0]  # what follows is a comment
        options[key] = [v for v in value.split(",") if v]
    return options


def collect(path: Path) -> List[Block]:
    """The python blocks of ``path``, with the marker before each."""
    blocks: List[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(2), m.group(3).lower(), i
        i += 1
        body: List[str] = []
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        if lang not in _PYTHON:
            continue
        block = Block(path, start + 1, "\n".join(body) + "\n")
        mark = _MARK.match(lines[start - 1]) if start else None
        if mark:
            kind, rest = mark.group(1), mark.group(2) or ""
            if kind == "not run":
                if not rest:
                    raise ValueError(f"{block.where}: 'not run' needs a reason")
                block.kind, block.reason = "not run", rest
            else:
                block.options = _parse_options(rest, block.where)
        blocks.append(block)
    return blocks


BLOCKS = [b for path in FILES for b in collect(path)]


def _skip_reason(block: Block) -> Optional[str]:
    if block.kind == "not run":
        return f"{block.where}: not run: {block.reason}"
    for need in block.options.get("needs", []):
        if need == "posix":
            if WINDOWS:
                return "needs POSIX"
        elif need == "native":
            if _backend.native_error() is not None:
                return f"needs the native backend: {_backend.native_error()}"
        elif importlib.util.find_spec(need.split(".")[0]) is None or (
                "." in need and importlib.util.find_spec(need) is None):
            return f"needs {need}, which is not installed"
    if WINDOWS and fastshm.backend == "python" and _NEEDS_FLOCK.search(block.code):
        return "the python backend opens no queues or channels on Windows"
    return None


def _substitute(block: Block) -> Tuple[str, List[str]]:
    """The block's code with a fresh name for each of its names=, and those
    fresh names."""
    code, fresh = block.code, []
    for name in block.options.get("names", []):
        new = make_name("d")
        replaced = code.replace(f'"{name}"', f'"{new}"').replace(f"'{name}'", f"'{new}'")
        assert replaced != code, f"{block.where}: names={name} but no quoted {name!r} in the block"
        code = replaced
        fresh.append(new)
    return code, fresh


def _left_behind(names: List[str]) -> List[str]:
    """Which of ``names`` still exist (removing them)."""
    if WINDOWS:  # a name lives only while someone has it open
        return []
    left = []
    for name in names:
        try:
            _backend.resolve("python").unlink(name)
        except OSError:
            continue
        left.append(name)
    return left


def python(block: Block, code: str, *args: str, cwd: Path) -> "subprocess.CompletedProcess[str]":
    """``code`` run as ``python -c code *args``; a failure names the block."""
    try:
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                              text=True, encoding="utf-8", errors="replace", timeout=TIMEOUT,
                              cwd=cwd)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{block.where}: the example (args {list(args)}) did not finish within "
                    f"{TIMEOUT} s\n--- stdout\n{e.stdout}\n--- stderr\n{e.stderr}",
                    pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"{block.where}: the example (args {list(args)}) exited with "
                    f"{proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}",
                    pytrace=False)
    return proc


def _check_output(block: Block, got: str, expected: List[str]) -> None:
    lines = got.splitlines()
    if lines != expected:
        pytest.fail(f"{block.where}: the example printed {lines!r}, not {expected!r}",
                    pytrace=False)


# ---- runners: blocks that need more than one plain run ----


def run_pingpong(block: Block, code: str, names: List[str], cwd: Path) -> None:
    """``python pingpong.py pong`` and ``python pingpong.py`` at once."""
    pong = subprocess.Popen([sys.executable, "-c", code, "pong"], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ping = python(block, code, cwd=cwd)
        _, err = pong.communicate(timeout=TIMEOUT)
        assert pong.returncode == 0, f"{block.where}: pong failed\n{err.decode()}"
        _check_output(block, ping.stdout, ["pong 0", "pong 1", "pong 2"])
    finally:
        if pong.poll() is None:
            pong.kill()
            pong.wait(timeout=10)


def run_queue(block: Block, code: str, names: List[str], cwd: Path) -> None:
    proc = python(block, code, cwd=cwd)
    _check_output(block, proc.stdout,
                  ["b'resize img_0001.png' [b'a', b'b', b'c'] wörld 0 True", "empty"])


def run_frames(block: Block, code: str, names: List[str], cwd: Path) -> None:
    """``python frames.py camera``, then ``python frames.py``."""
    python(block, code, "camera", cwd=cwd)
    viewer = python(block, code, cwd=cwd)
    _check_output(block, viewer.stdout, [
        "1 0 (1080, 1920, 3)", "2 1 (1080, 1920, 3)", "3 2 (1080, 1920, 3)",
    ])


def run_plain(block: Block, code: str, names: List[str], cwd: Path) -> None:
    python(block, code, cwd=cwd)


RUNNERS: Dict[str, Callable[[Block, str, List[str], Path], None]] = {
    "pingpong": run_pingpong,
    "queue": run_queue,
    "frames": run_frames,
}


# ---- the tests ----


def test_examples_are_found() -> None:
    """The collector sees the blocks: the README's, and the docs'."""
    readme = [b for b in BLOCKS if b.path.name == "README.md"]
    docs = [b for b in BLOCKS if b.path.parent != ROOT]
    assert len(readme) >= 4 and len(docs) >= 20, (len(readme), len(docs))
    assert all(b.kind == "run" for b in readme), "every README example runs"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_markers_are_consistent(block: Block) -> None:
    """A runner exists; every name a block gives a fastshm constructor as a
    literal is one the test replaces, so no example touches a name that
    another test run may be using."""
    if block.kind == "not run":
        return
    for runner in block.options.get("runner", []):
        assert runner in RUNNERS, f"{block.where}: no runner {runner!r}"
    literal = {m.group(2) or m.group(4) for m in _NAMED.finditer(block.code)}
    missing = literal - set(block.options.get("names", []))
    assert not missing, f"{block.where}: add names={','.join(sorted(missing))} to its marker"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_example_runs(block: Block, tmp_path: Path) -> None:
    reason = _skip_reason(block)
    if reason:
        pytest.skip(reason if block.kind == "not run" else f"{block.where}: {reason}")
    code, names = _substitute(block)
    runner = RUNNERS.get(next(iter(block.options.get("runner", [])), ""), run_plain)
    try:
        runner(block, code, names, tmp_path)
    finally:
        left = _left_behind(names)
    assert not left, f"{block.where}: the example left {left} behind (it must delete them)"
