"""fastshm's channel (csrc/channel.c) on the Windows core (csrc/map_win32.c),
cross-compiled with MinGW-w64 and run under Wine, as tests/test_windows.py
does for segments and queues (whose Wine fixtures this module uses).

The program is csrc/tests/win32/channel_check.c, a command-line driver of the
channel API, also built for this host with the native compiler: the error
cases must give the same codes on both.  Windows has no futex shared between
processes, so what needs proving here is that the named semaphores wake the
sleepers of other processes: subscribers on the notify word, and
publishers on the room word, whose semaphore only channels have.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from conftest import make_name, unlink_quietly
from test_windows import (  # noqa: F401  (fixtures: build_dir, held, win_exes, wine)
    CSRC,
    MINGW,
    RUN_TIMEOUT,
    WIN32_TESTS,
    Held,
    Wine,
    _native_cc,
    build_dir,
    compile_c,
    held,
    needs_wine,
    win_exes,
    wine,
)

# slot.c and queue.c, then the channel's files (src/fastshm/_build.py lists
# the same).
CHANNEL_CORE = [CSRC / "slot.c", CSRC / "queue.c", CSRC / "channel.c", CSRC / "channel_lend.c",
                CSRC / "channel_receive.c", CSRC / "channel_repair.c"]
WAIT_MS = "60000"
MESSAGES = 1000  # per publisher


@pytest.fixture(scope="module")
def channel_exes(build_dir: Path) -> dict[str, Path]:  # noqa: F811
    """channel_check.exe on atomics.h's GCC branch, and on its MSVC branch
    (the core files as one translation unit, as test_windows.py's
    msvc_atomics does, since MinGW's headers told they are MSVC define
    their inline helpers in every object)."""
    assert MINGW is not None, "FSHM_REQUIRE_WINE=1 but x86_64-w64-mingw32-gcc is missing"
    exes = {"gcc": compile_c(MINGW, build_dir / "channel_check.exe",
                             [*CHANNEL_CORE, CSRC / "map_win32.c",
                              WIN32_TESTS / "channel_check.c"], "-static")}
    unity = build_dir / "channel_msvc_atomics.c"
    unity.write_text("".join(f'#include "{p.name}"\n' for p in CHANNEL_CORE))
    obj = build_dir / "channel_msvc_atomics.o"
    proc = subprocess.run(
        [MINGW, "-O2", "-Wall", "-Wextra", "-Werror", "-D_MSC_VER=1930", f"-I{CSRC}", "-c",
         str(unity), "-o", str(obj)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )
    if proc.returncode == 0:
        exes["msvc"] = compile_c(MINGW, build_dir / "channel_check_msvc_atomics.exe",
                                 [obj, CSRC / "map_win32.c", WIN32_TESTS / "channel_check.c"],
                                 "-static")
    return exes


@pytest.fixture(scope="module")
def posix_channel_check(build_dir: Path) -> Path:  # noqa: F811
    cc, libs = _native_cc()
    return compile_c(cc, build_dir / "channel_check",
                     [*CHANNEL_CORE, CSRC / "map_posix.c", WIN32_TESTS / "channel_check.c"],
                     *libs)


def wait_for(wine: Wine, exe: Path, name: str, key: str,  # noqa: F811
             count: int) -> dict[str, str]:
    """Poll the channel's stat until ``key`` (sleepers, room_sleepers)
    reaches ``count``: the blocked processes are then asleep, or about to be."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        stat = wine.run(exe, "stat", name)
        # A stat that printed nothing never ran: Wine itself failed to start
        # it, which happens now and then on a loaded machine.  It observes
        # only, so asking again is sound; the deadline still bounds the wait.
        if "attach" in stat:
            assert stat["attach"] == "OK", stat["stdout"]
            if int(stat[key]) >= count:
                return stat
        assert time.monotonic() < deadline, (
            f"never {count} {key}: rc {stat['returncode']}, "
            f"stdout {stat['stdout']!r}, stderr {stat['stderr'][-2000:]!r}")
        time.sleep(0.05)


def send_line(p: Held) -> None:
    """Tell a held program to go on, without ending its input."""
    assert p.proc.stdin is not None
    p.proc.stdin.write("\n")
    p.proc.stdin.flush()


@needs_wine
def test_channel_error_codes_match_posix(
    wine: Wine, channel_exes: dict[str, Path], posix_channel_check: Path  # noqa: F811
) -> None:
    """Bad parameters, create-existing, attach-missing, an existing channel
    opened with other parameters (it keeps its own), too big, every
    subscriber entry taken, nothing to receive, no slot free (with and
    without waiting), a lost subscription and loan, eviction, a channel
    opened as a segment or a queue and a segment as a channel (EKIND, and
    fshm_kind_of naming it), a corrupt header: the same codes from
    map_win32.c as from map_posix.c."""
    on_windows = wine.run(channel_exes["gcc"], "errors", make_name("cerr"))
    name = make_name("cerr")
    try:
        posix = subprocess.run([str(posix_channel_check), "errors", name], capture_output=True,
                               text=True, timeout=RUN_TIMEOUT, check=False)
    finally:
        for suffix in ("", "_other"):
            unlink_quietly(name + suffix)
    expected = {
        "create_bad_slots": "EINVAL", "create_bad_history": "EINVAL",
        "create_bad_subscribers": "EINVAL", "create_bad_flags": "EINVAL", "create": "OK",
        "create_existing": "EEXIST", "attach_missing": "ENOENT", "attach": "OK",
        "attached_slots": "4", "attached_slot_size": "64",
        "publish_too_big": "FSHM_ETOOBIG", "subscribe_full": "FSHM_ESUBFULL",
        "receive_nothing_waiting": "FSHM_ETIMEOUT", "publish_full": "FSHM_EFULL",
        "publish_full_waiting": "FSHM_EFULL", "try_loan_full": "FSHM_EFULL",
        "wait_room_full": "FSHM_ETIMEOUT", "subscribers": "4",
        "receive_unsubscribed": "FSHM_ELOST", "unsubscribe_twice": "FSHM_ELOST",
        "wait_room": "OK", "commit_too_big": "FSHM_ETOOBIG", "commit_discarded": "FSHM_ELOST",
        "release_bad_slot": "EINVAL", "evict_other": "FSHM_EAGAIN", "evict": "OK",
        "receive_evicted": "FSHM_ELOST", "break_lock_other": "FSHM_EAGAIN",
        "channel_as_segment": "FSHM_EKIND", "channel_as_queue": "FSHM_EKIND", "kind": "3",
        "segment_as_channel": "FSHM_EKIND", "segment_as_channel_open_or_create": "FSHM_EKIND",
        "corrupt_magic": "FSHM_EFORMAT", "corrupt_head_publish": "FSHM_EFORMAT",
        "all_as_expected": "1",
    }
    assert {k: on_windows.get(k) for k in expected} == expected, on_windows["stdout"]
    assert on_windows["returncode"] == "0"
    assert posix.returncode == 0, posix.stdout
    assert posix.stdout.replace("\r", "") == on_windows["stdout"].replace("\r", "")


@needs_wine
def test_channel_receive_blocks_until_a_publish_wakes_it(
    wine: Wine, channel_exes: dict[str, Path], held: list[Held]  # noqa: F811
) -> None:
    """A receive with nothing to receive sleeps; another Wine process's
    publish ends it.  Beside it, a sleeper on the notify word that never
    looks again on its own: only the publish's release of the wake
    semaphore can end its sleep."""
    exe = channel_exes["gcc"]
    name = make_name("cwake")
    holder = wine.start(exe, "hold", name, "block", "4")
    held.append(holder)
    assert holder.wait_for("ready")["open"] == "OK"
    receiver = wine.start(exe, "receive", name, WAIT_MS)
    sleeper = wine.start(exe, "sleeper", name, "notify", WAIT_MS)
    held.extend([receiver, sleeper])
    assert receiver.wait_for("blocking")["attach"] == "OK"
    assert sleeper.wait_for("sleeping")["head"] == "0"
    wait_for(wine, exe, name, "sleepers", 2)

    put = wine.run(exe, "publish", name, "hello from the publisher", "0")
    assert (put["publish"], put["seq"]) == ("OK", "1"), put["stdout"]
    got = receiver.finish()
    assert (got["receive"], got["got"], got["returncode"]) == (
        "OK", "hello from the publisher", "0"), got
    woke = sleeper.finish()
    assert (woke["woken"], woke["semaphore"], woke["returncode"]) == ("1", "OK", "0"), woke
    assert holder.finish()["returncode"] == "0"


@needs_wine
def test_channel_publish_blocks_until_a_release_wakes_it(
    wine: Wine, channel_exes: dict[str, Path], held: list[Held]  # noqa: F811
) -> None:
    """Block mode: a publish with every slot holding a message a subscriber
    has not received sleeps; that subscriber, in another Wine process,
    receives and releases two, and the publish goes through.  Beside it, a
    sleeper on the room word (offset 48, which only channels wait on) that
    never looks again on its own: only the release's wake-up through the
    NAME.fastshm-room semaphore can end its sleep."""
    exe = channel_exes["gcc"]
    name = make_name("croom")
    holder = wine.start(exe, "hold", name, "block", "4")
    held.append(holder)
    assert holder.wait_for("ready")["open"] == "OK"
    lagger = wine.start(exe, "lagger", name)
    held.append(lagger)
    assert lagger.wait_for("ready")["subscribe"] == "OK"
    fill = wine.run(exe, "fill", name, "early")
    assert (fill["fill"], fill["publishes"]) == ("FSHM_EFULL", "4"), fill["stdout"]
    publisher = wine.start(exe, "publish", name, "late", WAIT_MS)
    sleeper = wine.start(exe, "sleeper", name, "room", WAIT_MS)
    held.extend([publisher, sleeper])
    assert publisher.wait_for("publishing")["attach"] == "OK"
    assert sleeper.wait_for("sleeping")["head"] == "4"
    wait_for(wine, exe, name, "room_sleepers", 2)

    send_line(lagger)
    assert lagger.wait_for("released")["released"] == "OK"
    put = publisher.finish()
    assert (put["publish"], put["seq"], put["returncode"]) == ("OK", "5", "0"), put
    woke = sleeper.finish()
    assert (woke["woken"], woke["semaphore"], woke["returncode"]) == ("1", "OK", "0"), woke
    assert lagger.finish()["unsubscribe"] == "OK"
    assert holder.finish()["returncode"] == "0"


@needs_wine
def test_channel_dead_subscriber_frees_a_blocked_publisher(
    wine: Wine, channel_exes: dict[str, Path], held: list[Held]  # noqa: F811
) -> None:
    """Block mode: a subscriber process holds every slot back, a publish
    sleeps, and the subscriber is killed: the publisher finds it dead
    (OpenProcess on Windows), reclaims its entry and goes on within about a
    second; the dead subscriber no longer counts."""
    exe = channel_exes["gcc"]
    name = make_name("cdead")
    holder = wine.start(exe, "hold", name, "block", "4")
    held.append(holder)
    assert holder.wait_for("ready")["open"] == "OK"
    lagger = wine.start(exe, "lagger", name)
    held.append(lagger)
    assert lagger.wait_for("ready")["subscribe"] == "OK"
    assert wine.run(exe, "fill", name, "early")["publishes"] == "4"
    publisher = wine.start(exe, "publish", name, "late", WAIT_MS)
    held.append(publisher)
    assert publisher.wait_for("publishing")["attach"] == "OK"
    wait_for(wine, exe, name, "room_sleepers", 1)

    lagger.kill()
    killed = time.monotonic()
    put = publisher.wait_for("waited_ms")
    elapsed = time.monotonic() - killed
    assert (put["publish"], put["seq"]) == ("OK", "5"), put
    # About a second: the dead are looked for every 100 ms, and Wine takes
    # its time telling the wineserver a process has gone (seconds, on a
    # loaded machine): freed, not hung.
    assert elapsed < 10.0, elapsed
    assert publisher.finish()["returncode"] == "0"
    assert wine.run(exe, "stat", name)["subscribers"] == "0"
    assert holder.finish()["returncode"] == "0"


@needs_wine
@pytest.mark.parametrize("atomics", ["gcc", "msvc"])
def test_channel_publishers_and_subscribers_across_wine_processes(
    wine: Wine, channel_exes: dict[str, Path], held: list[Held], atomics: str  # noqa: F811
) -> None:
    """Block mode, four slots: two publisher processes publish 1000
    self-checking messages each (half written into loans, half copied),
    and two subscriber processes receive all 2000: every message whole,
    exactly once, numbered 1, 2, 3, ..., each publisher's in order; the
    ring wrapped hundreds of times and the publishers waited for room (each
    subscriber, after its first message, reads on once a publisher sleeps
    for room).
    Once with each branch of atomics.h."""
    if atomics not in channel_exes:
        pytest.skip("this MinGW cannot build atomics.h's MSVC branch")
    exe = channel_exes[atomics]
    name = make_name("cflow")
    holder = wine.start(exe, "hold", name, "block", "4")
    held.append(holder)
    assert holder.wait_for("ready")["open"] == "OK"
    subscribers = [wine.start(exe, "subscriber", name, str(2 * MESSAGES), "2")
                   for _ in range(2)]
    held.extend(subscribers)
    for s in subscribers:
        assert s.wait_for("ready")["attach"] == "OK"
    publishers = [wine.start(exe, "publisher", name, str(i), str(MESSAGES)) for i in (1, 2)]
    held.extend(publishers)
    results = [p.finish() for p in publishers]
    got = [s.finish() for s in subscribers]
    for r in results:
        assert (r["publish"], r["published"], r["returncode"]) == ("OK", str(MESSAGES), "0"), r
    for g in got:
        assert (g["receive"], g["received"], g["bad"], g["unsubscribe"], g["returncode"]) == (
            "OK", str(2 * MESSAGES), "0", "OK", "0"), g
        assert int(g["wraps"]) > 100, g
    assert sum(int(r["full_waits"]) for r in results) > 0, results
    assert holder.finish()["returncode"] == "0"
