"""The ``fastshm`` command against hostile or unusual input: odd files and
names in /dev/shm, endless stdin, broken segments, a live lock holder, a
segment deleted under ``load --follow``, bad option values, a bad
FASTSHM_BACKEND.  Each command runs as a separate process, bounded by a
timeout."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional

import pytest
from conftest import BACKENDS, SHM_DIR, run_python
from test_cli import assert_clean_error

import fastshm
from fastshm import Segment, SharedMemory
from fastshm import _common as C

needs_shm_dir = pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="needs /dev/shm")
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="needs root, to run a child process as the user 'nobody'",
)


def run(*args: str, backend: Optional[str], input: bytes = b"", timeout: float = 60,
        env: Optional[Dict[str, str]] = None, **kw: Any) -> subprocess.CompletedProcess:
    """``fastshm [--backend B] ARGS``; ``backend=None`` leaves --backend out."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    pick = ["--backend", backend] if backend is not None else []
    return subprocess.run(
        [sys.executable, "-m", "fastshm", *pick, *args],
        input=input, capture_output=True, timeout=timeout, env=full_env, **kw,
    )


def popen(*args: str, backend: str, **kw: Any) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fastshm", "--backend", backend, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw,
    )


def shm_path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def exists(name: str) -> bool:
    return os.path.lexists(shm_path(name))


# ---- 1. list: FIFOs, control characters, names that are not UTF-8 ----


@needs_shm_dir
def test_list_skips_a_fifo_and_escapes_names(backend: str,
                                             shm_name: Callable[..., str]) -> None:
    plain = shm_name("plain")
    fifo = shm_name("fifo")
    forged = shm_name("nl") + "\nforged_row"
    ansi = shm_name("esc") + "\x1b[2J"
    not_utf8 = os.fsencode(shm_name("bytes")) + b"\xff\xfe"
    raw_not_utf8 = os.fsencode(shm_name("rawbytes")) + b"\xc3("
    made: List[bytes] = []
    try:
        with Segment(plain, 64, create=True, backend=backend) as seg:
            seg.store("x")
        os.mkfifo(shm_path(fifo), 0o600)
        made.append(os.fsencode(shm_path(fifo)))
        for special in (forged, ansi):
            with Segment(special, 64, create=True, backend=backend) as seg:
                seg.store("y")
            made.append(os.fsencode(shm_path(special)))
        # A fastshm segment renamed to a name that is not UTF-8, and a raw
        # object with such a name.
        tmp = shm_name("tmp")
        Segment(tmp, 64, create=True, backend=backend).close()
        os.rename(os.fsencode(shm_path(tmp)), b"/dev/shm/" + not_utf8)
        made.append(b"/dev/shm/" + not_utf8)
        fd = os.open(b"/dev/shm/" + raw_not_utf8, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        made.append(b"/dev/shm/" + raw_not_utf8)

        for extra in ([], ["--all"]):
            proc = run("list", *extra, backend=backend, timeout=30)
            assert proc.returncode == 0, proc.stderr
            assert b"Traceback" not in proc.stderr
            out = proc.stdout
            assert b"\x1b" not in out and b"\r" not in out
            lines = out.decode("ascii").splitlines()  # every byte escaped to ASCII
            names = [line.split()[0] for line in lines]
            assert plain in names
            assert not any(line.startswith("forged_row") for line in lines)
            assert repr(forged)[1:-1] in names
            assert repr(ansi)[1:-1] in names
            assert not_utf8.decode("ascii", "backslashreplace") in names
            assert fifo not in names
            raw_shown = raw_not_utf8.decode("ascii", "backslashreplace") in names
            assert raw_shown == bool(extra)
    finally:
        for path in made:
            try:
                os.unlink(path)
            except OSError:
                pass


def test_info_escapes_the_name(backend: str, shm_name: Callable[..., str]) -> None:
    name = shm_name("info") + "\nlength 999 bytes\x1b[2J"
    with Segment(name, 64, create=True, backend=backend) as seg:
        seg.store("x")
    try:
        proc = run("info", name, backend=backend)
    finally:
        Segment(name, create=False, backend=backend).delete()
    assert proc.returncode == 0, proc.stderr
    assert b"\x1b" not in proc.stdout
    fields = dict(line.split(None, 1) for line in proc.stdout.decode().splitlines())
    assert fields["name"] == repr(name)[1:-1]
    assert fields["length"] == "1 bytes"


@needs_shm_dir
def test_list_does_not_follow_symlinks(backend: str, shm_name: Callable[..., str]) -> None:
    fifo = shm_name("fifo")
    link = shm_name("link")
    os.mkfifo(shm_path(fifo), 0o600)
    try:
        os.symlink(shm_path(fifo), shm_path(link))
        proc = run("list", "--all", backend=backend, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert link.encode() not in proc.stdout
    finally:
        for n in (fifo, link):
            if os.path.lexists(shm_path(n)):
                os.unlink(shm_path(n))


# ---- 2. store -: stdin is read no further than the capacity ----

ENDLESS = "import sys\nwhile True:\n    sys.stdout.buffer.write(b'y' * 65536)\n"


def _cap_memory() -> None:
    """In the command's process: a command that reads without bound runs out
    of memory at 1 GiB instead of taking the machine's."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX memory limit keeps it bounded")
@pytest.mark.parametrize("existing", [False, True])
def test_store_endless_stdin_is_refused(backend: str, name: str, existing: bool) -> None:
    if existing:
        assert run("store", name, "keep", "--size", "4096", backend=backend).returncode == 0
    producer = subprocess.Popen([sys.executable, "-c", ENDLESS], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
    try:
        proc = run("store", name, "-", "--size", "4096", backend=backend,
                   stdin=producer.stdout, input=None, timeout=30, preexec_fn=_cap_memory)
    finally:
        producer.kill()
        producer.wait(timeout=30)
        producer.stdout.close()  # type: ignore[union-attr]
    assert_clean_error(proc, "does not fit", "capacity 4096", "nothing was stored")
    assert exists(name) == existing
    if existing:
        assert run("load", name, backend=backend).stdout == b"keep"


# ---- 3. a message too big for --size creates nothing ----


@pytest.mark.parametrize("how", ["stdin-pipe", "stdin-file", "argument"])
def test_store_too_big_for_new_segment_creates_nothing(backend: str, name: str, how: str,
                                                       tmp_path: Any) -> None:
    data = b"z" * 100
    if how == "argument":
        proc = run("store", name, data.decode(), "--size", "64", backend=backend)
    elif how == "stdin-pipe":
        proc = run("store", name, "-", "--size", "64", backend=backend, input=data)
    else:
        path = tmp_path / "big"
        path.write_bytes(data)
        with open(path, "rb") as f:
            proc = run("store", name, "-", "--size", "64", backend=backend,
                       stdin=f, input=None)
    assert_clean_error(proc, "does not fit", "capacity 64")
    if how != "stdin-pipe":  # the exact length is known
        assert "100 bytes" in proc.stderr.decode()
    assert not exists(name)
    # What fits is still stored, in a segment of the requested size.
    assert run("store", name, "-", "--size", "100", backend=backend,
               input=data).returncode == 0
    with Segment(name, create=False, backend=backend) as seg:
        assert seg.capacity == 100 and seg.load() == data


# ---- 4. delete: by name, whatever the object holds ----


def _broken(name: str, content: bytes, size: int) -> None:
    fd = os.open(shm_path(name), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.write(fd, content)
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


@needs_shm_dir
@pytest.mark.parametrize("content, size", [
    (b"", 0),                                     # never sized
    (b"", 4096),                                  # zero-filled: never initialised
    (bytes(range(256)) * 16, 4096),               # garbage
    (b"0123456789", 10),                          # shorter than a header
    (struct.pack("<IHHQ", C.MAGIC, 99, 128, 64), 4096),  # a format from the future
], ids=["empty", "zeros", "garbage", "ten-bytes", "future-version"])
def test_delete_removes_broken_objects(backend: str, name: str, content: bytes,
                                       size: int) -> None:
    _broken(name, content, size)
    proc = run("delete", name, backend=backend, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == f"deleted {name!r}\n"
    assert not exists(name)
    assert_clean_error(run("delete", name, backend=backend), "no segment or queue named")


@needs_shm_dir
def test_delete_accepts_a_leading_slash_and_checks_the_name(backend: str, name: str) -> None:
    Segment(name, 64, create=True, backend=backend).close()
    assert run("delete", "/" + name, backend=backend).returncode == 0
    assert not exists(name)
    assert_clean_error(run("delete", "a/b", backend=backend), "'/'")
    assert_clean_error(run("delete", "", backend=backend), "empty")


# Run the command as 'nobody': the child gives up root before it loads the
# command (the interpreter's own library may sit where 'nobody' cannot read,
# so what the command needs is imported first, while still root).
AS_NOBODY = r"""
import os, pwd, sys
src, backends = sys.argv[1], sys.argv[2].split(",")
sys.path.insert(0, src)
import argparse, errno, secrets, shutil, stat, subprocess, time
import fastshm, fastshm.cli, fastshm._backend, fastshm._errors
for b in backends:
    fastshm._backend.resolve(b)
fastshm.cli.build_parser().format_help()
nobody = pwd.getpwnam("nobody")
os.setgroups([])
os.setgid(nobody.pw_gid)
os.setuid(nobody.pw_uid)
for line in sys.stdin.read().splitlines():
    argv = line.split("\t")
    if argv[0] == "segment":  # segment NAME MODE BACKEND: create one as nobody
        with fastshm.Segment(argv[1], 64, create=True, mode=int(argv[2], 8),
                             backend=argv[3]) as seg:
            pass
        continue
    code = fastshm.cli.main(argv)
    sys.stdout.flush()
    sys.stderr.write(f"exit {code}\n")
    sys.stderr.flush()
"""


def as_nobody(*commands: List[str]) -> subprocess.CompletedProcess:
    src = os.path.dirname(os.path.dirname(os.path.abspath(fastshm.__file__)))
    script = "".join("\t".join(c) + "\n" for c in commands)
    return run_python(AS_NOBODY, src, ",".join(BACKENDS), input=script.encode(),
                      timeout=60)


@needs_shm_dir
@needs_root
def test_delete_own_read_only_segment(backend: str, name: str) -> None:
    proc = as_nobody(["segment", name, "400", backend],
                     ["--backend", backend, "delete", name])
    err = proc.stderr.decode()
    assert err == "exit 0\n", err
    assert proc.stdout.decode() == f"deleted {name!r}\n"
    assert not exists(name)


# ---- 5. unlock --force frees a lock whose pid is alive ----


def _lock_word(name: str) -> int:
    shm = SharedMemory(name)
    try:
        assert shm.buf is not None
        return struct.unpack_from("<Q", shm.buf, C.H_LOCK)[0]  # type: ignore[no-any-return]
    finally:
        shm.close()


def _set_lock(name: str, owner: int) -> None:
    shm = SharedMemory(name)
    try:
        assert shm.buf is not None
        shm.buf[C.H_LOCK:C.H_LOCK + 8] = owner.to_bytes(8, "little")
    finally:
        shm.close()


def _owner_word(pid: int) -> int:
    """The lock word a process of our pid namespace with ``pid`` writes."""
    return (fastshm._backend.resolve("python").self_id() & ~0xFFFFFFFF) | pid


def test_unlock_force_frees_a_live_pid(backend: str, name: str) -> None:
    assert run("store", name, "kept", backend=backend).returncode == 0
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        word = _owner_word(sleeper.pid)
        _set_lock(name, word)
        refused = run("unlock", name, backend=backend)
        assert_clean_error(refused, "alive", f"pid {sleeper.pid}", "--force", "left alone")
        assert _lock_word(name) == word

        forced = run("unlock", name, "--force", backend=backend)
        assert forced.returncode == 0, forced.stderr
        warning = forced.stderr.decode()
        assert warning.count("\n") == 1 and "Traceback" not in warning
        assert f"pid {sleeper.pid}" in warning and "alive" in warning and "freed" in warning
        assert f"held by pid {sleeper.pid}".encode() in forced.stdout
        assert _lock_word(name) == 0
        assert sleeper.poll() is None  # the holder was left running

        assert run("store", name, "after", backend=backend, timeout=30).returncode == 0
        assert run("load", name, backend=backend).stdout == b"after"
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)


# ---- 6. load --follow notices that the segment was deleted or replaced ----


def _follow_until(name: str, backend: str, change: Callable[[], None]) -> str:
    """Start following, check it prints the current message, apply ``change``,
    and return what the follower said on stderr (it must exit 1 on its own)."""
    follower = popen("load", name, "--follow", backend=backend)
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == b"first\n"
        change()
        try:
            out, err = follower.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("load --follow went on following a segment that is gone")
        assert follower.returncode == 1, (follower.returncode, err)
        return err.decode()
    finally:
        if follower.poll() is None:
            follower.kill()
        follower.wait(timeout=30)


@needs_shm_dir
def test_follow_ends_when_the_segment_is_deleted(backend: str, name: str) -> None:
    with Segment(name, backend=backend) as seg:
        seg.store("first")
    err = _follow_until(name, backend, lambda: Segment(name, create=False,
                                                       backend=backend).delete())
    assert err.startswith("fastshm: error: ") and err.count("\n") == 1, err
    assert f"{name!r} was deleted while following it" in err


@needs_shm_dir
def test_follow_ends_when_the_segment_is_replaced(backend: str, name: str) -> None:
    with Segment(name, backend=backend) as seg:
        seg.store("first")

    def replace() -> None:
        Segment(name, create=False, backend=backend).delete()
        with Segment(name, 64, create=True, backend=backend) as new:
            new.store("in the new one")

    err = _follow_until(name, backend, replace)
    assert err.startswith("fastshm: error: ") and err.count("\n") == 1, err
    assert f"{name!r} was replaced by a new segment" in err


@needs_shm_dir
def test_follow_still_prints_messages_and_times_out(backend: str, name: str) -> None:
    with Segment(name, backend=backend) as seg:
        follower = popen("load", name, "--follow", "--timeout", "5", backend=backend)
        try:
            assert follower.stdout is not None
            for text in ("one", "two"):
                seg.store(text)
                assert follower.stdout.readline() == f"{text}\n".encode()
            # Quiet from here on: it ends by itself after 5 quiet seconds.
            out, err = follower.communicate(timeout=60)
            assert follower.returncode == 0, err
            assert out == b"" and err == b""
        finally:
            if follower.poll() is None:
                follower.kill()
            follower.wait(timeout=30)


# ---- 7. --timeout ----


@pytest.mark.parametrize("value", ["-1", "nan", "NaN", "-inf", "soon"])
def test_bad_timeout_is_refused_before_opening(backend: str, name: str, value: str) -> None:
    # The segment does not exist: had the command opened it, it would say so.
    proc = run("load", name, "--follow", f"--timeout={value}", backend=backend)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert proc.stdout == b"" and "Traceback" not in err
    assert "--timeout" in err and "no segment named" not in err
    assert not exists(name)


def test_timeout_without_follow_is_refused(backend: str, name: str) -> None:
    assert run("store", name, "x", backend=backend).returncode == 0
    proc = run("load", name, "--timeout", "1", backend=backend)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert proc.stdout == b"" and "Traceback" not in err
    assert "--timeout" in err and "--follow" in err


def test_timeout_inf_means_no_timeout(backend: str, name: str) -> None:
    with Segment(name, backend=backend) as seg:
        follower = popen("load", name, "--follow", "--timeout", "inf", backend=backend)
        try:
            assert follower.stdout is not None
            seg.store("one")
            assert follower.stdout.readline() == b"one\n"
            seg.store("two")
            assert follower.stdout.readline() == b"two\n"
            assert follower.poll() is None
            follower.send_signal(signal.SIGINT)
            assert follower.wait(timeout=30) == 130
            assert b"Traceback" not in follower.stderr.read()  # type: ignore[union-attr]
        finally:
            if follower.poll() is None:
                follower.kill()
            follower.wait(timeout=30)


# ---- 8. the menu stores raw bytes ----


def test_menu_stores_bytes_that_are_not_utf8(backend: str, name: str) -> None:
    proc = run("menu", name, backend=backend, input=b"1\n\xff\xfe\n2\nq\n", timeout=30)
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr
    assert "Stored message #1" in out
    assert "Load Shared Data: \\xff\\xfe\n" in out
    assert run("load", name, backend=backend).stdout == b"\xff\xfe"


def test_menu_strips_only_the_line_end(backend: str, name: str) -> None:
    proc = run("menu", name, backend=backend, input=b"1\n  a b \t\r\n\xe9\n", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert run("load", name, backend=backend).stdout == b"  a b \t"
    assert "(got '\\xe9')" in proc.stdout.decode()


# ---- 9. FASTSHM_BACKEND and --backend ----

BAD_ENV = {"FASTSHM_BACKEND": "bogus"}


@pytest.mark.parametrize("explicit", BACKENDS)
def test_explicit_backend_wins_over_a_bad_environment(explicit: str, name: str) -> None:
    assert run("store", name, "hi", backend=explicit, env=BAD_ENV).returncode == 0
    proc = run("load", name, backend=explicit, env=BAD_ENV)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"hi"
    info = run("info", name, backend=explicit, env=BAD_ENV)
    assert info.returncode == 0, info.stderr
    assert run("delete", name, backend=explicit, env=BAD_ENV).returncode == 0


@pytest.mark.parametrize("command", [["store", "{name}", "hi"], ["load", "{name}"],
                                     ["delete", "{name}"], ["list"], ["demo"]])
def test_bad_environment_without_backend_is_one_line(name: str, command: List[str]) -> None:
    proc = run(*[a.format(name=name) for a in command], backend=None, env=BAD_ENV,
               timeout=30)
    assert_clean_error(proc, "FASTSHM_BACKEND", "'bogus'")
    assert proc.stdout == b""
    assert not exists(name)


@pytest.mark.parametrize("choice", fastshm._backend.CHOICES)
def test_every_library_backend_is_a_choice(choice: str, name: str) -> None:
    proc = run("store", name, "via " + choice, backend=choice, timeout=30)
    if proc.returncode == 0:
        assert run("load", name, backend=choice).stdout == ("via " + choice).encode()
    else:  # a binding that is not built here: said in one line
        assert choice.startswith("native"), proc.stderr
        assert_clean_error(proc, "backend is not available")
        assert not exists(name)


# ---- 10. permission errors say what happened; --any-owner ----


@needs_shm_dir
@needs_root
def test_permission_error_on_own_read_only_segment(backend: str, name: str) -> None:
    proc = as_nobody(["segment", name, "400", backend],
                     ["--backend", backend, "store", name, "x"])
    err = proc.stderr.decode()
    lines = err.splitlines()
    assert lines[-1] == "exit 1" and len(lines) == 2, err
    assert lines[0].startswith("fastshm: error: ")
    assert "another user" not in err
    assert name in lines[0] and "ermission" in lines[0]
    # It is still there, and nobody may delete it (item 4 too).
    assert exists(name)
    proc = as_nobody(["--backend", backend, "delete", name])
    assert proc.stderr.decode() == "exit 0\n"
    assert not exists(name)


def test_any_owner_is_an_option() -> None:
    proc = run("--help", backend=None)
    assert proc.returncode == 0 and b"--any-owner" in proc.stdout


@pytest.mark.parametrize("flag", [[], ["--any-owner"]])
def test_any_owner_reaches_every_segment(backend: str, name: str, flag: List[str],
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from fastshm import cli

    seen: List[bool] = []

    def recording(*args: Any, any_owner: bool = False, **kw: Any) -> Segment:
        seen.append(any_owner)
        return Segment(*args, any_owner=any_owner, **kw)

    monkeypatch.setattr(cli, "Segment", recording)
    base = [*flag, "--backend", backend]
    assert cli.main([*base, "store", name, "x"]) == 0
    assert cli.main([*base, "load", name]) == 0
    assert cli.main([*base, "info", name]) == 0
    assert cli.main([*base, "unlock", name]) == 0
    assert cli.main([*base, "load", name, "--follow", "--timeout", "0"]) == 0
    monkeypatch.setattr(sys, "stdin", open(os.devnull))
    assert cli.main([*base, "menu", name]) == 0
    capsys.readouterr()
    assert len(seen) >= 6 and set(seen) == {bool(flag)}
