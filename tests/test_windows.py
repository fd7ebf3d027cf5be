"""fastshm's Windows C core (csrc/map_win32.c), cross-compiled with
MinGW-w64 and run under Wine.

The programs are csrc/tests/win32/fshm_check.c (a command-line driver of the
C API), csrc/tests/win32/queue_check.c (the same for queues) and
csrc/tests/win32/original.c (a plain Win32 program that shares
memory the way the program fastshm grew from does).  Every Wine process of a
module runs in one temporary WINEPREFIX, so they share one wineserver and see
each other's named objects, as processes of one Windows session do.

fshm_check.c and queue_check.c are also built for this host with the native
compiler, and the error cases must give the same codes on both.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_name, unlink_quietly

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
WIN32_TESTS = CSRC / "tests" / "win32"
CORE = [CSRC / "slot.c", CSRC / "queue.c", CSRC / "wait_words.c", CSRC / "map_win32.c"]

MINGW = os.environ.get("FSHM_MINGW_CC") or shutil.which("x86_64-w64-mingw32-gcc")
# Debian's wine64 package installs its loader outside PATH; the wine package
# adds the /usr/bin/wine wrapper.
WINE = (
    os.environ.get("FSHM_WINE")
    or shutil.which("wine")
    or shutil.which("wine64")
    or next((p for p in ("/usr/lib/wine/wine64",) if os.access(p, os.X_OK)), None)
)
WINESERVER = shutil.which("wineserver") or next(
    (p for p in (os.path.join(os.path.dirname(WINE or "/"), "wineserver"),
                 "/usr/lib/wine/wineserver") if os.access(p, os.X_OK)),
    None,
)

# A generous bound for one Wine process; the first one in a prefix may
# also have to bring up the wineserver.
RUN_TIMEOUT = 120
BOOT_TIMEOUT = 600
STRESS_SECONDS = 3.0

# CI that installed the toolchain sets this, so a missing tool fails the run
# instead of skipping the tests.
REQUIRE_WINE = os.environ.get("FSHM_REQUIRE_WINE") == "1"

needs_wine = pytest.mark.skipif(
    (MINGW is None or WINE is None) and not REQUIRE_WINE,
    reason="the Windows core is tested under Wine with MinGW-w64: install the Debian "
    "packages gcc-mingw-w64-x86-64 and wine64 (missing: "
    + ", ".join(n for n, p in (("x86_64-w64-mingw32-gcc", MINGW), ("wine", WINE)) if p is None)
    + ")",
)


def parse(out: str) -> dict[str, str]:
    """The space-separated key=value fields of a program's output; a key
    seen twice keeps every value, joined by '|'."""
    result: dict[str, str] = {}
    for line in out.splitlines():
        for field in line.strip().split(" "):
            key, sep, value = field.partition("=")
            if sep:
                result[key] = f"{result[key]}|{value}" if key in result else value
    return result


class Said(dict):  # type: ignore[type-arg]
    """What a Wine process printed (its key=value lines, with returncode,
    stdout and stderr): a key it did not print fails with all of them, so a
    process that died early says how."""

    def __missing__(self, key: str) -> str:
        raise AssertionError(
            f"the Wine process printed no {key!r} (exit {self.get('returncode')})\n"
            f"stdout: {self.get('stdout')!r}\nstderr: {str(self.get('stderr', ''))[-3000:]}")


def parse_lines(out: str) -> dict[str, str]:
    """key=value per line, the value being the rest of the line (text with
    spaces); a key seen twice keeps every value, joined by '|'."""
    result: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.rstrip("\r").partition("=")
        if sep:
            result[key] = f"{result[key]}|{value}" if key in result else value
    return result


# ---- building ----


def compile_c(cc: str, out: Path, sources: list[Path], *flags: str) -> Path:
    proc = subprocess.run(
        [cc, "-O2", "-Wall", "-Wextra", "-Werror", f"-I{CSRC}", *map(str, sources),
         "-o", str(out), *flags],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )
    assert proc.returncode == 0, f"{cc} failed:\n{proc.stderr}"
    return out


@pytest.fixture(scope="module")
def build_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fshm-win32-build-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def win_exes(build_dir: Path) -> dict[str, Path]:
    assert MINGW is not None, "FSHM_REQUIRE_WINE=1 but x86_64-w64-mingw32-gcc is missing"
    # Static: the programs need no MinGW DLLs inside the Wine prefix.
    return {
        "check": compile_c(MINGW, build_dir / "fshm_check.exe",
                           [*CORE, WIN32_TESTS / "fshm_check.c"], "-static"),
        "queue": compile_c(MINGW, build_dir / "queue_check.exe",
                           [*CORE, WIN32_TESTS / "queue_check.c"], "-static"),
        "original": compile_c(MINGW, build_dir / "original.exe",
                              [WIN32_TESTS / "original.c"], "-static"),
    }


@pytest.fixture(scope="module")
def msvc_atomics(build_dir: Path) -> dict[str, Path]:
    """fshm_check.exe and queue_check.exe with slot.c and queue.c built on
    atomics.h's MSVC branch (volatile accesses, MemoryBarrier, Interlocked*),
    which MSVC wheels use: GCC compiles it when told it is MSVC, and MinGW's
    headers provide the intrinsics.  Told the same, MinGW's headers define
    their inline helpers (atoll, strcasecmp, ...) in every object, so the two
    files are built as one translation unit; map_win32.c is built normally."""
    assert MINGW is not None
    unity = build_dir / "core_msvc_atomics.c"
    unity.write_text('#include "slot.c"\n#include "queue.c"\n')
    obj = build_dir / "core_msvc_atomics.o"
    proc = subprocess.run(
        [MINGW, "-O2", "-Wall", "-Wextra", "-Werror", "-D_MSC_VER=1930", f"-I{CSRC}", "-c",
         str(unity), "-o", str(obj)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"this MinGW cannot build atomics.h's MSVC branch: {proc.stderr[-500:]}")
    return {
        "check": compile_c(MINGW, build_dir / "fshm_check_msvc_atomics.exe",
                           [obj, CSRC / "wait_words.c", CSRC / "map_win32.c",
                            WIN32_TESTS / "fshm_check.c"], "-static"),
        "queue": compile_c(MINGW, build_dir / "queue_check_msvc_atomics.exe",
                           [obj, CSRC / "map_win32.c", WIN32_TESTS / "queue_check.c"], "-static"),
    }


@pytest.fixture(scope="module")
def msvc_atomics_check(msvc_atomics: dict[str, Path]) -> Path:
    return msvc_atomics["check"]


def _native_cc() -> tuple[str, list[str]]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or os.name != "posix":
        pytest.skip("no native C compiler to build the POSIX twins of the Windows programs")
    libs = ["-lrt", "-lpthread"] if os.uname().sysname == "Linux" else ["-lpthread"]
    return cc, libs


@pytest.fixture(scope="module")
def posix_check(build_dir: Path) -> Path:
    cc, libs = _native_cc()
    return compile_c(cc, build_dir / "fshm_check",
                     [CSRC / "slot.c", CSRC / "wait_words.c", CSRC / "map_posix.c",
                      WIN32_TESTS / "fshm_check.c"], "-pthread",
                     *libs)


@pytest.fixture(scope="module")
def posix_queue_check(build_dir: Path) -> Path:
    cc, libs = _native_cc()
    return compile_c(cc, build_dir / "queue_check",
                     [*(CSRC / f for f in ("slot.c", "queue.c", "map_posix.c")),
                      WIN32_TESTS / "queue_check.c"], *libs)


# ---- Wine ----


class Wine:
    """Runs Windows programs in one prefix (one wineserver)."""

    def __init__(self, prefix: Path) -> None:
        assert WINE is not None, "FSHM_REQUIRE_WINE=1 but wine is missing"
        self.env = dict(os.environ)
        self.env.update(
            WINEPREFIX=str(prefix),
            WINEDEBUG="-all",
            # No Mono or Gecko: nothing here needs them, and asking for them
            # would stall a headless run.
            WINEDLLOVERRIDES="mscoree,mshtml=",
        )
        self.env.pop("DISPLAY", None)
        self.env.pop("WAYLAND_DISPLAY", None)

    def run(self, exe: Path, *args: str, timeout: float = RUN_TIMEOUT) -> dict[str, str]:
        proc = subprocess.run(
            [WINE, str(exe), *args], env=self.env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        out = Said(parse_lines(proc.stdout))
        out["returncode"] = str(proc.returncode)
        out["stdout"] = proc.stdout
        out["stderr"] = proc.stderr
        return out

    def start(self, exe: Path, *args: str) -> Held:
        return Held([WINE, str(exe), *args], self.env)

    def keep_server(self) -> subprocess.Popen | None:
        """A persistent wineserver for the prefix, so it is not restarted for
        every process of the module (it would exit 3 s after the last)."""
        if WINESERVER is None:
            return None
        return subprocess.Popen([WINESERVER, "--persistent", "--foreground"], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop_server(self, server: subprocess.Popen | None) -> None:
        if WINESERVER is not None:
            subprocess.run([WINESERVER, "--kill"], env=self.env, timeout=RUN_TIMEOUT,
                           capture_output=True, check=False)
        if server is not None:
            try:
                server.wait(timeout=RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=RUN_TIMEOUT)


class Held:
    """A program that keeps running until a line on its stdin, read line by
    line with a deadline so nothing can hang."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\r\n"))
        self.lines.put(None)

    def wait_for(self, key: str, timeout: float = RUN_TIMEOUT) -> dict[str, str]:
        """Everything printed up to and including the line `key=...`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise AssertionError(f"no {key}= within {timeout}s; got {self.seen}") from None
            if line is None:
                raise AssertionError(
                    f"exited ({self.proc.wait(timeout=RUN_TIMEOUT)}) before {key}=; "
                    f"got {self.seen}"
                )
            self.seen.append(line)
            if line.startswith(key + "="):
                return parse_lines("\n".join(self.seen))

    def finish(self, timeout: float = RUN_TIMEOUT) -> dict[str, str]:
        """Tell it to go on, wait for its exit, and return all it printed."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("\n")
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        while True:
            try:
                # Briefly: whatever it printed is in the pipe by now.
                line = self.lines.get(timeout=5)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
        out = parse_lines("\n".join(self.seen))
        out["returncode"] = str(self.proc.returncode)
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=RUN_TIMEOUT)


@pytest.fixture(scope="module")
def wine(win_exes: dict[str, Path]) -> Iterator[Wine]:
    """A fresh prefix, booted once for the module (the first boot of a
    prefix takes several seconds; every later process starts quickly)."""
    assert WINE is not None, "FSHM_REQUIRE_WINE=1 but wine is missing"
    prefix = Path(tempfile.mkdtemp(prefix="fshm-wine-"))
    w = Wine(prefix)
    server = None
    try:
        server = w.keep_server()
        assert WINE is not None
        # Output to a file, not a pipe: the services wineboot starts inherit
        # it and live as long as the wineserver, so a pipe would never close.
        with open(prefix / "wineboot.log", "w+") as log:
            boot = subprocess.run([WINE, "wineboot", "-i"], env=w.env, stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=log, timeout=BOOT_TIMEOUT, check=False)
            log.seek(0)
            assert boot.returncode == 0, f"wineboot failed: {log.read()[-2000:]}"
        yield w
    finally:
        w.stop_server(server)
        shutil.rmtree(prefix, ignore_errors=True)


@pytest.fixture
def held() -> Iterator[list[Held]]:
    """Held programs of a test, killed if the test left them running."""
    procs: list[Held] = []
    yield procs
    for p in procs:
        p.kill()


# ---- the tests ----


@needs_wine
def test_original_scenario_across_two_wine_processes(
    wine: Wine, win_exes: dict[str, Path], held: list[Held]
) -> None:
    """P1 open-or-creates richong_Shared_Mem (1024) and stores 12345; P2 finds
    it and loads 12345, then deletes it; the name is gone once both closed."""
    exe = win_exes["check"]
    # The original program's fixed name; it lives only in this prefix.
    name = "richong_Shared_Mem"
    p1 = wine.start(exe, "hold", name, "1024", "12345")
    held.append(p1)
    first = p1.wait_for("ready")
    assert (first["open"], first["created"], first["store"]) == ("OK", "1", "OK")

    p2 = wine.run(exe, "find", name, "1024")
    assert p2["returncode"] == "0", p2["stdout"]
    assert p2["created"] == "0"
    assert p2["message"] == "12345"
    # Delete on Windows: close the view; unlink succeeds and removes nothing.
    assert (p2["unmap"], p2["unlink"]) == ("OK", "OK")

    # P1 still holds it, so the name outlives P2's delete.
    still = wine.run(exe, "attach", name)
    assert (still["attach"], still["message"]) == ("OK", "12345")

    assert p1.finish()["returncode"] == "0"
    gone = wine.run(exe, "attach", name)
    assert gone["attach"] == "ENOENT", gone["stdout"]


@needs_wine
@pytest.mark.parametrize("first", ["original", "fastshm"])
def test_raw_interop_with_a_program_written_the_original_way(
    wine: Wine, win_exes: dict[str, Path], held: list[Held], first: str
) -> None:
    """A plain Win32 program (OpenFileMapping / CreateFileMapping /
    MapViewOfFile / strcpy) and fastshm's raw mapping share the memory."""
    name = make_name("raw")
    programs = {
        "original": (win_exes["original"],),
        "fastshm": (win_exes["check"], "raw"),
    }
    second = "fastshm" if first == "original" else "original"
    a = wine.start(*programs[first], name, f"written by {first}")
    held.append(a)
    got_a = a.wait_for("wrote")
    assert got_a["created"] == "1"
    assert got_a["read"] == ""

    b = wine.run(*programs[second], name, f"written by {second}")
    assert b["returncode"] == "0", b["stdout"]
    assert b["created"] == "0"
    # What b found, then (b's stdin is empty, so it goes on at once) what it
    # wrote itself.
    assert b["read"] == f"written by {first}|written by {second}"

    final = a.finish()
    assert final["returncode"] == "0"
    assert final["read"].split("|")[-1] == f"written by {second}"


@needs_wine
def test_error_codes_match_posix(
    wine: Wine, win_exes: dict[str, Path], posix_check: Path
) -> None:
    """Create-existing, attach-missing, over-capacity store (message kept)
    and a corrupt header: the same codes from map_win32.c as map_posix.c."""
    on_windows = wine.run(win_exes["check"], "errors", make_name("err"))
    name = make_name("err")
    try:
        posix = subprocess.run([str(posix_check), "errors", name], capture_output=True,
                               text=True, timeout=RUN_TIMEOUT, check=False)
    finally:
        for suffix in ("", "_missing", "_corrupt"):
            try:
                os.unlink(f"/dev/shm/{name}{suffix}")
            except OSError:
                pass
    expected = {
        "create": "OK",
        "store": "OK",
        "create_existing": "EEXIST",
        "attach_missing": "ENOENT",
        "raw_attach_missing": "ENOENT",
        "empty_name": "EINVAL",
        "store_too_big": "FSHM_ETOOBIG",
        "after_too_big": "previous seq=1",
        "load_small": "FSHM_ESMALL",
        "corrupt_header": "FSHM_EFORMAT",
        "all_as_expected": "1",
    }
    assert {k: on_windows.get(k) for k in expected} == expected, on_windows["stdout"]
    assert on_windows["returncode"] == "0"
    assert posix.returncode == 0, posix.stdout
    assert posix.stdout.replace("\r", "") == on_windows["stdout"].replace("\r", "")


@needs_wine
def test_dead_writer_lock_is_taken_over(
    wine: Wine, win_exes: dict[str, Path], held: list[Held]
) -> None:
    """A writer that exited holding the lock (OpenProcess /
    WaitForSingleObject see it gone) does not block the next writer."""
    exe = win_exes["check"]
    name = make_name("lock")
    holder = wine.start(exe, "hold", name, "64", "first")
    held.append(holder)
    assert holder.wait_for("ready")["store"] == "OK"

    taker = wine.run(exe, "take-lock", name)
    assert taker["returncode"] == "0", taker["stdout"]
    dead_owner = taker["owner"]

    store = wine.run(exe, "store", name, "second")
    assert store["returncode"] == "0", store["stdout"]
    got = parse(store["stdout"])
    assert (got["owner_before"], got["dead"]) == (dead_owner, "1")
    assert (store["store"], got["seq"], got["owner_after"]) == ("OK", "2", "0")

    # A live owner is reported alive: the holder's own id is a live process.
    check = wine.run(exe, "attach", name)
    assert check["message"] == "second"
    assert holder.finish()["returncode"] == "0"


@needs_wine
def test_a_creation_whose_maker_died_is_made_anew(
    wine: Wine, win_exes: dict[str, Path], held: list[Held]
) -> None:
    """A section with no magic whose lock word names a process that is gone
    (its maker died before publishing it; another process keeps the name
    alive): an attaching opener refuses it, an open-or-create one makes it
    anew and is its creator."""
    exe = win_exes["check"]
    name = make_name("made")
    keeper = wine.start(exe, "raw", name, "")  # zero-filled, and kept alive
    held.append(keeper)
    assert keeper.wait_for("wrote")["created"] == "1"
    maker = wine.run(exe, "take-lock", name)  # its id in the lock word, then gone
    assert maker["returncode"] == "0", maker["stdout"]

    refused = wine.run(exe, "attach", name)
    assert refused["attach"] == "FSHM_EABANDONED", refused["stdout"]
    made = wine.run(exe, "find", name, "64")
    assert (made["open"], made["created"], made["load"]) == ("OK", "1", "OK"), made["stdout"]
    assert keeper.finish()["returncode"] == "0"


@needs_wine
def test_a_store_wakes_a_sleeper_in_another_process(
    wine: Wine, win_exes: dict[str, Path], held: list[Held]
) -> None:
    """A waiter sleeps on the segment's named semaphore with no timeout at
    all; only the store of another Wine process can end that sleep."""
    exe = win_exes["check"]
    name = make_name("wake")
    holder = wine.start(exe, "hold", name, "64", "first")
    held.append(holder)
    assert holder.wait_for("ready")["store"] == "OK"
    sleeper = wine.start(exe, "sleeper", name)
    held.append(sleeper)
    assert sleeper.wait_for("sleeping")["seq"] == "1"

    store = wine.run(exe, "store", name, "second")
    assert store["returncode"] == "0", store["stdout"]
    woke = sleeper.wait_for("woke")
    assert (woke["woke_seq"], woke["semaphore"]) == ("2", "OK")
    assert sleeper.finish()["returncode"] == "0"
    assert holder.finish()["returncode"] == "0"


# ---- waiting on many at once (fastshm.aio's helper thread, wait_any) ----


def _waiting_on_two(wine: Wine, exe: Path, held: list[Held], tag: str,
                    timeout_ms: str) -> tuple[list[str], Held, dict[str, str]]:
    """Two segments held open and a `wait-any` on them asleep: their names,
    the waiter, and what it printed up to `sleeping=`."""
    names = [make_name(f"{tag}{i}") for i in range(2)]
    for name in names:
        holder = wine.start(exe, "hold", name, "64", "first")
        held.append(holder)
        assert holder.wait_for("ready")["store"] == "OK"
    waiter = wine.start(exe, "wait-any", *names, timeout_ms)
    held.append(waiter)
    return names, waiter, waiter.wait_for("sleeping")


@needs_wine
def test_wait_any_sleeps_on_the_semaphores_until_a_store(
    wine: Wine, win_exes: dict[str, Path], held: list[Held]
) -> None:
    """fshm_wait_words on Windows sleeps in WaitForMultipleObjects on the
    segments' named semaphores (it no longer polls), with no timeout at
    all: the store of another Wine process to the second segment ends it,
    and that word alone changed."""
    exe = win_exes["check"]
    names, waiter, sleeping = _waiting_on_two(wine, exe, held, "wany", "-1")
    assert sleeping["polls"] == "0"
    assert wine.run(exe, "store", names[1], "second")["returncode"] == "0"
    woke = waiter.wait_for("changed")
    assert (woke["wait"], woke["changed"]) == ("OK", "1"), woke


@needs_wine
def test_wait_any_is_interrupted_by_its_own_word(
    wine: Wine, win_exes: dict[str, Path], held: list[Held]
) -> None:
    """The word in the process's own memory (how fastshm.aio tells its
    helper thread to look again): fshm_word_bump from another thread sets
    its event and ends the sleep, which has no timeout."""
    exe = win_exes["check"]
    _, waiter, _ = _waiting_on_two(wine, exe, held, "wown", "-1")
    assert waiter.proc.stdin is not None
    waiter.proc.stdin.write("\n")
    waiter.proc.stdin.flush()
    woke = waiter.wait_for("changed")
    assert (woke["wait"], woke["changed"]) == ("OK", "2"), woke


@needs_wine
def test_wait_any_sleeps_in_the_kernel_not_polling(
    wine: Wine, win_exes: dict[str, Path], held: list[Held]
) -> None:
    """A word changed by hand, with no semaphore released, while the wait
    sleeps: the sleep goes on to its timeout (a poll would have ended it at
    the change), and the change is there to see afterwards."""
    exe = win_exes["check"]
    names, waiter, _ = _waiting_on_two(wine, exe, held, "wquiet", "3000")
    time.sleep(0.5)  # into WaitForMultipleObjects
    assert wine.run(exe, "bump-quietly", names[0])["returncode"] == "0"
    woke = waiter.wait_for("changed")
    assert (woke["wait"], woke["changed"]) == ("FSHM_ETIMEOUT", "0"), woke


@needs_wine
@pytest.mark.parametrize("atomics", ["gcc", "msvc"])
def test_stress_one_writer_two_readers_no_torn_reads(
    wine: Wine, win_exes: dict[str, Path], held: list[Held],
    request: pytest.FixtureRequest, atomics: str,
) -> None:
    """Random-length checksummed messages stored as fast as one Wine process
    can while two others load them: every load is one whole message, and
    numbers never go backwards.  Once with each branch of atomics.h."""
    exe = win_exes["check"] if atomics == "gcc" else request.getfixturevalue(
        "msvc_atomics_check")
    name = make_name("stress")
    # The writer outlasts the readers by a margin that covers their start.
    writer = wine.start(exe, "writer", name, "4096", str(STRESS_SECONDS + 3))
    held.append(writer)
    assert writer.wait_for("ready")["open"] == "OK"
    readers = [wine.start(exe, "reader", name, str(STRESS_SECONDS)) for _ in range(2)]
    held.extend(readers)
    results = [r.finish(timeout=RUN_TIMEOUT) for r in readers]
    w = writer.finish(timeout=RUN_TIMEOUT)
    assert w["returncode"] == "0" and w["store"] == "OK", w
    stores = int(w["stores"])
    for r in results:
        got = parse(r["loads"] and "loads=" + r["loads"])
        assert r["attach"] == "OK" and r["load"] == "OK", r
        assert got["torn"] == "0", r
        # The readers really ran alongside the writer.
        assert int(got["changes"]) >= 2, r
        assert int(got["loads"]) >= int(got["changes"])
        assert r["returncode"] == "0"
    assert stores >= 2


# ---- queues ----

# Bounds for one blocked call of queue_check.exe: long enough for a loaded
# machine, short enough that a lost wake-up fails the test rather than hangs.
QUEUE_WAIT_MS = "60000"
QUEUE_MESSAGES = 3000


def wait_for_sleepers(wine: Wine, exe: Path, name: str, sleepers: int,
                      timeout: float = RUN_TIMEOUT) -> dict[str, str]:
    """Poll the queue's sleeper count (the waiters word) until it reaches
    ``sleepers``: the blocked processes are then asleep, or about to be."""
    deadline = time.monotonic() + timeout
    while True:
        stat = wine.run(exe, "stat", name)
        assert stat["attach"] == "OK", stat["stdout"]
        if int(stat["sleepers"]) >= sleepers:
            return stat
        assert time.monotonic() < deadline, f"never {sleepers} sleepers: {stat['stdout']}"
        time.sleep(0.05)


@needs_wine
def test_queue_error_codes_match_posix(
    wine: Wine, win_exes: dict[str, Path], posix_queue_check: Path
) -> None:
    """Create-existing, attach-missing, empty, full, too big, too small, a
    batch that can never fit, a lock broken by hand (only from the owner
    named), a segment opened as a queue and the reverse (EKIND), a
    python-backend queue (EPROTOCOL), a corrupt header: the same codes and
    counts from map_win32.c as from map_posix.c."""
    on_windows = wine.run(win_exes["queue"], "errors", make_name("qerr"))
    name = make_name("qerr")
    try:
        posix = subprocess.run([str(posix_queue_check), "errors", name], capture_output=True,
                               text=True, timeout=RUN_TIMEOUT, check=False)
    finally:
        for suffix in ("", "_other"):
            unlink_quietly(name + suffix)
    expected = {
        "create": "OK", "create_existing": "EEXIST", "attach_missing": "ENOENT",
        "get_empty": "FSHM_ENOMSG", "get_empty_waiting": "FSHM_ENOMSG",
        "put_too_big": "FSHM_ETOOBIG", "put_largest": "OK", "put_full": "FSHM_EFULL",
        "put_full_waiting": "FSHM_EFULL", "get_small": "FSHM_ESMALL",
        "put_many_never_fits": "FSHM_ETOOBIG", "break_lock_other": "FSHM_EAGAIN",
        "break_lock": "OK", "put_after_break": "OK", "queue_as_segment": "FSHM_EKIND",
        "segment_as_queue": "FSHM_EKIND", "segment_as_queue_open_or_create": "FSHM_EKIND",
        "pylock_put": "FSHM_EPROTOCOL", "corrupt_magic": "FSHM_EFORMAT",
        "corrupt_head_put": "FSHM_EFORMAT", "all_as_expected": "1",
    }
    assert {k: on_windows.get(k) for k in expected} == expected, on_windows["stdout"]
    assert on_windows["returncode"] == "0"
    assert posix.returncode == 0, posix.stdout
    assert posix.stdout.replace("\r", "") == on_windows["stdout"].replace("\r", "")


@needs_wine
def test_queue_get_blocks_until_a_put_wakes_it(
    wine: Wine, win_exes: dict[str, Path], held: list[Held]
) -> None:
    """A get on an empty queue sleeps; another Wine process's put ends it.
    Beside it, a sleeper on the notify word that never looks again on its
    own: only the put's release of the wake semaphore can end its sleep."""
    exe = win_exes["queue"]
    name = make_name("qwake")
    holder = wine.start(exe, "hold", name, "256")
    held.append(holder)
    assert holder.wait_for("ready")["open"] == "OK"
    getter = wine.start(exe, "get", name, QUEUE_WAIT_MS)
    sleeper = wine.start(exe, "sleeper", name, QUEUE_WAIT_MS)
    held.extend([getter, sleeper])
    assert getter.wait_for("blocking")["attach"] == "OK"
    assert sleeper.wait_for("sleeping")["count"] == "0"
    wait_for_sleepers(wine, exe, name, 2)

    put = wine.run(exe, "put", name, "hello from the producer", "0")
    assert put["put"] == "OK", put["stdout"]
    got = getter.finish()
    assert (got["get"], got["got"], got["returncode"]) == ("OK", "hello from the producer", "0")
    woke = sleeper.finish()
    assert (woke["woken"], woke["semaphore"], woke["returncode"]) == ("1", "OK", "0"), woke
    assert wine.run(exe, "stat", name)["count"] == "0"
    assert holder.finish()["returncode"] == "0"


@needs_wine
def test_queue_put_blocks_until_a_get_wakes_it(
    wine: Wine, win_exes: dict[str, Path], held: list[Held]
) -> None:
    """A put on a full queue sleeps; another Wine process's get ends it (and
    the hand-made sleeper beside it, as above)."""
    exe = win_exes["queue"]
    name = make_name("qfull")
    holder = wine.start(exe, "hold", name, "64")
    held.append(holder)
    assert holder.wait_for("ready")["open"] == "OK"
    fill = wine.run(exe, "fill", name, "early")  # 16-byte records: 4 fill 64
    assert (fill["fill"], fill["puts"], fill["used"]) == ("FSHM_EFULL", "4", "64"), fill
    putter = wine.start(exe, "put", name, "late", QUEUE_WAIT_MS)
    sleeper = wine.start(exe, "sleeper", name, QUEUE_WAIT_MS)
    held.extend([putter, sleeper])
    assert putter.wait_for("putting")["attach"] == "OK"
    assert sleeper.wait_for("sleeping")["count"] == "4"
    wait_for_sleepers(wine, exe, name, 2)

    got = wine.run(exe, "get", name, "0")
    assert (got["get"], got["got"]) == ("OK", "early"), got["stdout"]
    put = putter.finish()
    assert (put["put"], put["returncode"]) == ("OK", "0"), put
    woke = sleeper.finish()
    assert (woke["woken"], woke["semaphore"], woke["returncode"]) == ("1", "OK", "0"), woke
    # The late message went in behind the three left, and comes out last.
    for expected in ["early"] * 3 + ["late"]:
        assert wine.run(exe, "get", name, "0")["got"] == expected
    assert holder.finish()["returncode"] == "0"


@needs_wine
@pytest.mark.parametrize("atomics", ["gcc", "msvc"])
def test_queue_producers_and_consumer_across_wine_processes(
    wine: Wine, win_exes: dict[str, Path], held: list[Held],
    request: pytest.FixtureRequest, atomics: str,
) -> None:
    """Two producer processes put 3000 self-checking messages through a ring
    that holds about three, and one consumer process gets them: every
    message whole, exactly once, each producer's in order, the ring wrapped
    hundreds of times and both sides blocked (full and empty) on the way.
    Once with each branch of atomics.h."""
    exe = win_exes["queue"] if atomics == "gcc" else request.getfixturevalue(
        "msvc_atomics")["queue"]
    name = make_name("qflow")
    holder = wine.start(exe, "hold", name, "512")
    held.append(holder)
    assert holder.wait_for("ready")["open"] == "OK"
    consumer = wine.start(exe, "consumer", name, str(QUEUE_MESSAGES), "2")
    held.append(consumer)
    assert consumer.wait_for("ready")["attach"] == "OK"
    producers = [wine.start(exe, "producer", name, str(i), str(QUEUE_MESSAGES // 2))
                 for i in (1, 2)]
    held.extend(producers)
    results = [p.finish() for p in producers]
    got = consumer.finish()
    # Every side's report in each message: a producer that timed out waiting
    # for room says little without the consumer's and the other producer's.
    everyone = {"producers": results, "consumer": got}
    for r in results:
        assert (r["put"], r["puts"], r["returncode"]) == (
            "OK", str(QUEUE_MESSAGES // 2), "0"), everyone
    assert (got["get"], got["taken"], got["bad"], got["left"], got["returncode"]) == (
        "OK", str(QUEUE_MESSAGES), "0", "0", "0"), everyone
    assert int(got["wraps"]) > 100, got
    # The consumer started first, so it found the queue empty at least once;
    # after its first message it waited until a producer slept for room.
    assert int(got["empty_waits"]) > 0, got
    assert sum(int(r["full_waits"]) for r in results) > 0, results
    assert holder.finish()["returncode"] == "0"
