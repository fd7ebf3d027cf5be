"""The C core under the compiler's sanitizers (POSIX, gcc or clang).

* AddressSanitizer + UndefinedBehaviorSanitizer: csrc/tests/posix/fuzz_header.c
  feeds adversarial headers to attach, load, read_begin, store and wait over
  heap blocks of exactly the mapping's size, then over a real named mapping.
* ThreadSanitizer: csrc/tests/posix/stress_threads.c runs four writers, two
  readers and a waiter as threads on one segment.
* The C-API binding: src/fastshm/_cext.c is built with ASan + UBSan as an
  extension module, and csrc/tests/posix/capi_harness.py drives every method
  of SegmentCore and Mapping with it in a child Python (the ASan runtime
  preloaded, PYTHONMALLOC=malloc so ASan sees Python's allocations too).

Each is skipped, with the reason, when the compiler or its sanitizer runtime
is missing.  ``FASTSHM_LONG=1`` runs them ten times longer.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Callable

import pytest
from conftest import unlink_quietly
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
# capi_harness.py: model-checked operations; rounds of closing under 16 MiB
# copies (and ten times as many hostile-header segments).
CAPI_ITERATIONS = 200_000 if LONG else 20_000
CAPI_ROUNDS = 100 if LONG else 10
ASAN_UBSAN = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
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
    built = _compile(exe, [CSRC / "slot.c", CSRC / "queue.c", CSRC / "map_posix.c",
                           HARNESS / f"{harness}.c"], flags)
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
    exe = _build(tmp_path, "fuzz_header", ASAN_UBSAN)
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


def _runtime(lib: str) -> str:
    """The compiler's shared sanitizer runtime ``lib``, or '' when it has none."""
    out = subprocess.run([str(CC), f"-print-file-name={lib}"], check=False,
                         capture_output=True, timeout=60).stdout.decode().strip()
    return out if os.path.isabs(out) and os.path.exists(out) else ""


def test_capi_binding_under_asan_ubsan(tmp_path: Path, shm_name: Callable[..., str]) -> None:
    """fastshm._cext built with ASan + UBSan, imported in place of the normal
    build, and driven hard: every store, load and argument path, closes
    under concurrent 16 MiB copies, and hostile headers (capi_harness.py)."""
    if sys.implementation.name != "cpython":
        pytest.skip("the C-API binding is built for CPython only")
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").exists():
        pytest.skip(f"no Python headers (Python.h) in {include}")
    why = _sanitizer_works(tmp_path, ASAN_UBSAN)
    if why:
        pytest.skip(why)
    asan = _runtime("libasan.so")
    if not asan:
        pytest.skip(f"{CC} has no shared ASan runtime (libasan.so) to preload into Python")
    preload = [asan] + [lib for lib in [_runtime("libubsan.so")] if lib]
    ext = tmp_path / f"_cext{sysconfig.get_config_var('EXT_SUFFIX')}"
    built = _compile(ext, [ROOT / "src" / "fastshm" / "_cext.c", CSRC / "slot.c", CSRC / "queue.c",
                           CSRC / "map_posix.c"],
                     [*ASAN_UBSAN, "-shared", "-fPIC", f"-I{include}"])
    assert built.returncode == 0, built.stderr.decode(errors="replace")
    # main, big, hostile, raw, absent (never made), spare (a create that fails)
    names = [shm_name(f"capi{i}") for i in range(6)]
    env = {
        "LD_PRELOAD": " ".join(preload),
        # CPython leaks at exit by design: no leak check.
        "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:abort_on_error=0",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        "PYTHONMALLOC": "malloc",
        "FASTSHM_BACKEND": "native",
    }
    probe = subprocess.run([sys.executable, "-c", "pass"], check=False, capture_output=True,
                           timeout=60, env={**os.environ, **env})
    if probe.returncode != 0:
        pytest.skip(f"Python does not run with {asan} preloaded: {probe.stderr[-300:]!r}")
    try:
        out = _run(
            [sys.executable, str(HARNESS / "capi_harness.py"), str(ext), "20260301",
             str(CAPI_ITERATIONS), str(CAPI_ROUNDS), *names],
            env, timeout=1200 if LONG else 180,
        )
    finally:
        for name in names:
            unlink_quietly(name)
    numbers = _numbers(out)
    report("C-API binding (ASan+UBSan)", **numbers)
    assert numbers["iterations"] == CAPI_ITERATIONS
    assert numbers["thread_rounds"] == CAPI_ROUNDS
    assert numbers["hostile_rounds"] == 10 * CAPI_ROUNDS
    assert numbers["mapping_checks"] == 1 and numbers["closing_arguments"] == 9
    assert numbers["closed_calls"] >= 17
    assert numbers["views_after_close"] > 0 and numbers["views_after_delete"] > 0
    # Both sides of the GIL-release threshold, every operation, and every
    # kind of refusal were reached.
    for key in ("stores", "loads", "load_intos", "views", "intacts", "waits"):
        assert numbers[key] > CAPI_ITERATIONS // 20, (key, numbers)
    for key in ("stores_without_gil", "loads_without_gil", "woken", "thread_stores",
                "thread_loads", "thread_other_stores", "scribbles", "hostile_ops",
                "err_ValueError", "err_TypeError", "err_TimeoutError", "err_OverflowError",
                "err_UnicodeEncodeError", "err_FormatError", "err_FileNotFoundError"):
        assert numbers.get(key, 0) > 0, (key, numbers)
