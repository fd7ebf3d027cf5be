"""The C core under the compiler's sanitizers (POSIX, gcc or clang).

* AddressSanitizer + UndefinedBehaviorSanitizer: csrc/tests/posix/fuzz_header.c
  feeds adversarial headers to attach, load, read_begin, store and wait over
  heap blocks of exactly the mapping's size, then over a real named mapping.
* ThreadSanitizer: csrc/tests/posix/stress_threads.c runs four writers, two
  readers and a waiter as threads on one segment.

Each is skipped, with the reason, when the compiler or its sanitizer runtime
is missing.  ``FASTSHM_LONG=1`` runs them ten times longer.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from test_stress import LONG, report

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
HARNESS = CSRC / "tests" / "posix"
CC = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX harnesses"),
    pytest.mark.skipif(CC is None, reason="no C compiler on PATH"),
]

FUZZ_ITERATIONS = 2_000_000 if LONG else 200_000
STORES_PER_WRITER = 100_000 if LONG else 10_000
REPORT_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "WARNING: ThreadSanitizer",
                  "ERROR: LeakSanitizer", "SUMMARY: ")


def _compile(out: Path, sources: list[Path], flags: list[str]) -> subprocess.CompletedProcess:
    cmd = [str(CC), "-std=gnu11", "-O1", "-g", "-fno-omit-frame-pointer", *flags,
           f"-I{CSRC}", *map(str, sources), "-o", str(out), "-lpthread"]
    if sys.platform.startswith("linux"):
        cmd.append("-lrt")
    return subprocess.run(cmd, check=False, capture_output=True, timeout=300)


def _sanitizer_works(tmp: Path, flags: list[str]) -> str:
    """'' when a trivial program builds and runs with ``flags``, else why not."""
    src = tmp / "probe.c"
    src.write_text("int main(void) { return 0; }\n")
    built = _compile(tmp / "probe", [src], flags)
    if built.returncode != 0:
        return f"{CC} {' '.join(flags)} failed: {built.stderr.decode(errors='replace')[:300]}"
    ran = subprocess.run([str(tmp / "probe")], check=False, capture_output=True, timeout=60)
    if ran.returncode != 0:
        return f"a {' '.join(flags)} program does not run here: {ran.stderr[:300]!r}"
    return ""


def _build(tmp: Path, harness: str, flags: list[str]) -> Path:
    why = _sanitizer_works(tmp, flags)
    if why:
        pytest.skip(why)
    exe = tmp / harness
    built = _compile(exe, [CSRC / "slot.c", CSRC / "map_posix.c", HARNESS / f"{harness}.c"],
                     flags)
    assert built.returncode == 0, built.stderr.decode(errors="replace")
    return exe


def _run(args: list[str], env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(args, check=False, capture_output=True, timeout=timeout,
                          env={**os.environ, **env})
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{err[-8000:]}"
    assert not any(m in err for m in REPORT_MARKERS), err[-8000:]
    return proc.stdout.decode()


def _numbers(line: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def test_hostile_headers_under_asan_ubsan(tmp_path: Path,
                                          shm_name: Callable[..., str]) -> None:
    exe = _build(tmp_path, "fuzz_header",
                 ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"])
    out = _run(
        [str(exe), str(FUZZ_ITERATIONS), "20260301", shm_name("asan")],
        {"ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:abort_on_error=0",
         "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"},
        timeout=1200 if LONG else 180,
    )
    numbers = _numbers(out)
    report("C hostile headers (ASan+UBSan)", **numbers)
    assert numbers["iterations"] >= FUZZ_ITERATIONS
    # Enough cases got past attach for the operations to be exercised, and
    # enough were refused for the hostile values to have mattered.
    for key in ("attach_ok", "attach_refused", "loads_ok", "loads_refused", "stores_ok",
                "stores_refused"):
        assert numbers[key] > 100, (key, numbers)


def test_many_writers_under_tsan(tmp_path: Path) -> None:
    exe = _build(tmp_path, "stress_threads", ["-fsanitize=thread", "-Wno-tsan"])
    supp = HARNESS / "tsan.supp"
    out = _run(
        [str(exe), str(STORES_PER_WRITER)],
        # history_size: the racing reads of other threads stay restorable,
        # so a report names both sides (and the suppression can match).
        {"TSAN_OPTIONS": f"halt_on_error=1 history_size=7 suppressions={supp}"},
        timeout=1200 if LONG else 180,
    )
    numbers = _numbers(out)
    report("C many writers (TSan threads)", **numbers)
    assert numbers["stores"] == 4 * STORES_PER_WRITER
    assert numbers["torn"] == 0 and numbers["distinct"] > 100
