"""The ``fastshm`` command's queue side: put and get (from stdin, bounded,
waiting, --follow), and info / list / delete / unlock / the segment
commands when a name holds a queue.  Each command runs as a separate
process, bounded by a timeout; every name is unlinked afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import pytest
from conftest import BACKENDS, SHM_DIR, backend_name
from test_cli import assert_clean_error
from test_cli_hardening import ENDLESS, _cap_memory

from fastshm import Queue, Segment, SharedMemory
from fastshm import _common as C

needs_shm_dir = pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="needs /dev/shm")


def run(*args: str, backend: Optional[str], input: bytes = b"", timeout: float = 60,
        **kw: Any) -> subprocess.CompletedProcess:
    """``fastshm [--backend B] ARGS``; ``backend=None`` leaves --backend out."""
    pick = ["--backend", backend] if backend is not None else []
    if "stdout" not in kw:
        kw["capture_output"] = True
    return subprocess.run(
        [sys.executable, "-m", "fastshm", *pick, *args], input=input, timeout=timeout, **kw,
    )


def popen(*args: str, backend: str, **kw: Any) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fastshm", "--backend", backend, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw,
    )


def finish(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=timeout)
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()


def exists(name: str) -> bool:
    return os.path.lexists(os.path.join(SHM_DIR, name))


def wait_for_sleeper(name: str, limit: float = 30) -> None:
    """Until a process sleeps in a put or get of the queue (its header's
    waiters word is non-zero), ``limit`` seconds at most."""
    with SharedMemory(name) as shm:
        assert shm.buf is not None
        deadline = time.monotonic() + limit
        while C.U32.unpack_from(shm.buf, C.Q_WAITERS)[0] == 0:
            if time.monotonic() > deadline:
                pytest.fail(f"nothing waited in {name!r} within {limit} seconds")
            time.sleep(0.01)


def fields(out: bytes) -> Dict[str, str]:
    return dict(line.split(None, 1) for line in out.decode().splitlines())  # type: ignore[misc]


def list_rows(backend: str) -> Dict[str, List[str]]:
    proc = run("list", backend=backend)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines[0].split() == ["NAME", "KIND", "CAPACITY", "STORES", "QUEUED", "USED",
                                "MAPPED", "LOCK", "PROTOCOL"]
    return {cells[0]: cells[1:] for cells in (line.split() for line in lines[1:])}


# ---- put and get ----


def test_put_then_get_round_trip_in_order(backend: str, name: str) -> None:
    for text in ("first", "second", "third"):
        proc = run("put", name, text, backend=backend)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.decode() == f"put {len(text)} bytes in queue {name!r}\n"
    for text in ("first", "second", "third"):
        proc = run("get", name, backend=backend)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == text.encode()  # raw: no newline added off a terminal
    with Queue(name, create=False, backend=backend) as q:
        assert q.qsize() == 0


def test_put_from_stdin_keeps_bytes_exactly(backend: str, name: str) -> None:
    payload = bytes(range(256)) + b"\r\n\x00tail\n"
    assert run("put", name, "-", backend=backend, input=payload).returncode == 0
    assert run("put", name, "-", backend=backend, input=b"").returncode == 0
    assert run("get", name, backend=backend).stdout == payload
    empty = run("get", name, backend=backend)
    assert empty.returncode == 0 and empty.stdout == b""


def test_put_size_sets_the_ring_only_when_creating(backend: str, name: str) -> None:
    assert run("put", name, "x", "--size", "100", backend=backend).returncode == 0
    assert run("put", name, "y", "--size", "4096", backend=backend).returncode == 0
    with Queue(name, create=False, backend=backend) as q:
        assert q.capacity == 104  # rounded up to 8
        assert q.max_message == 96
        assert q.qsize() == 2


def test_put_without_size_makes_a_1_mib_queue(backend: str, name: str) -> None:
    assert run("put", name, "x", backend=backend).returncode == 0
    with Queue(name, create=False, backend=backend) as q:
        assert q.capacity == 1 << 20


def test_put_too_big_creates_nothing(backend: str, name: str) -> None:
    proc = run("put", name, "-", "--size", "64", backend=backend, input=b"z" * 57)
    assert_clean_error(proc, "57 bytes", "max_message 56", "nothing was put", "--size 72")
    assert not exists(name)


def test_put_too_big_leaves_the_queue_as_it_was(backend: str, name: str) -> None:
    assert run("put", name, "keep", "--size", "64", backend=backend).returncode == 0
    proc = run("put", name, "-", backend=backend, input=b"z" * 57)
    assert_clean_error(proc, "57 bytes", "max_message 56", "nothing was put")
    assert run("get", name, "--nowait", backend=backend).stdout == b"keep"
    assert_clean_error(run("get", name, "--nowait", backend=backend), "is empty")


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX memory limit keeps it bounded")
@pytest.mark.parametrize("existing", [False, True])
def test_put_endless_stdin_is_refused(backend: str, name: str, existing: bool) -> None:
    if existing:
        assert run("put", name, "keep", "--size", "4096", backend=backend).returncode == 0
    producer = subprocess.Popen([sys.executable, "-c", ENDLESS], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
    try:
        proc = run("put", name, "-", "--size", "4096", backend=backend,
                   stdin=producer.stdout, input=None, timeout=30, preexec_fn=_cap_memory)
    finally:
        producer.kill()
        producer.wait(timeout=30)
        producer.stdout.close()  # type: ignore[union-attr]
    assert_clean_error(proc, "at least 4089 bytes", "max_message 4088", "nothing was put")
    assert exists(name) == existing
    if existing:
        with Queue(name, create=False, backend=backend) as q:
            assert q.qsize() == 1


def test_full_queue_put_fails_with_nowait_and_timeout(backend: str, name: str) -> None:
    assert run("put", name, "-", "--size", "16", backend=backend, input=b"12345678").returncode == 0
    proc = run("put", name, "more", "--nowait", backend=backend)
    assert_clean_error(proc, "no room", "--nowait", "nothing was put", "fastshm get")
    start = time.monotonic()
    proc = run("put", name, "more", "--timeout", "0.3", backend=backend)
    assert time.monotonic() - start >= 0.3
    assert_clean_error(proc, "no room", "waited 0.3 seconds", "nothing was put")
    assert run("get", name, backend=backend).stdout == b"12345678"
    assert_clean_error(run("get", name, "--nowait", backend=backend), "is empty")


def test_empty_queue_get_fails_with_nowait_and_timeout(backend: str, name: str) -> None:
    Queue(name, 64, backend=backend).close()
    proc = run("get", name, "--nowait", backend=backend)
    assert_clean_error(proc, f"queue {name!r} is empty", "--nowait", "fastshm put")
    assert proc.stdout == b""
    start = time.monotonic()
    proc = run("get", name, "--timeout", "0.3", backend=backend)
    assert time.monotonic() - start >= 0.3
    assert_clean_error(proc, "is empty", "waited 0.3 seconds")


def test_blocked_put_goes_through_when_a_consumer_makes_room(backend: str,
                                                              name: str) -> None:
    with Queue(name, 16, backend=backend) as q:
        q.put(b"12345678")
        producer = popen("put", name, "waiting", "--timeout", "30", backend=backend)
        try:
            wait_for_sleeper(name)
            assert producer.poll() is None  # still waiting for room
            assert q.get() == b"12345678"
            out, err = producer.communicate(timeout=30)
            assert producer.returncode == 0, err
            assert q.get(timeout=10) == b"waiting"
        finally:
            finish(producer)


def test_blocked_get_prints_the_message_put_by_another_process(backend: str,
                                                               name: str) -> None:
    Queue(name, 1024, backend=backend).close()
    consumer = popen("get", name, backend=backend)  # no --timeout: as long as it takes
    try:
        wait_for_sleeper(name)
        assert consumer.poll() is None
        assert run("put", name, "hello", backend=backend).returncode == 0
        out, err = consumer.communicate(timeout=30)
        assert consumer.returncode == 0, err
        assert out == b"hello"
    finally:
        finish(consumer)


def test_get_missing_queue_creates_nothing(backend: str, name: str) -> None:
    assert_clean_error(run("get", name, "--nowait", backend=backend),
                       f"no queue named {name!r}", "fastshm put")
    assert not exists(name)


# ---- get --follow ----


def test_follow_prints_messages_from_another_process_and_ends_on_timeout(
        backend: str, name: str) -> None:
    with Queue(name, 4096, backend=backend) as q:
        q.put(b"queued before")
        follower = popen("get", name, "--follow", "--timeout", "3", backend=backend)
        try:
            assert follower.stdout is not None
            assert follower.stdout.readline() == b"queued before\n"
            for text in ("second", "third"):
                assert run("put", name, text, backend=backend).returncode == 0
                assert follower.stdout.readline() == f"{text}\n".encode()
            start = time.monotonic()
            out, err = follower.communicate(timeout=30)
            assert follower.returncode == 0, err
            assert out == b"" and err == b""
            assert time.monotonic() - start >= 2  # three quiet seconds from the last
            assert q.qsize() == 0
        finally:
            finish(follower)


def test_follow_nowait_drains_what_is_queued(backend: str, name: str) -> None:
    with Queue(name, 4096, backend=backend) as q:
        for text in ("a", "b", "c"):
            q.put(text)
        proc = run("get", name, "--follow", "--nowait", backend=backend)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == b"a\nb\nc\n"
        assert q.qsize() == 0


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_follow_ctrl_c_exits_130_and_takes_nothing_more(backend: str, name: str) -> None:
    with Queue(name, 4096, backend=backend) as q:
        q.put(b"one")
        follower = popen("get", name, "--follow", backend=backend)
        try:
            assert follower.stdout is not None
            assert follower.stdout.readline() == b"one\n"
            follower.send_signal(signal.SIGINT)
            assert follower.wait(timeout=10) == 130
            assert follower.stdout.read() == b""
            assert b"Traceback" not in follower.stderr.read()  # type: ignore[union-attr]
            q.put(b"after")
            assert q.get(timeout=5) == b"after"
        finally:
            finish(follower)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
@pytest.mark.parametrize("command", ["get", "put"])
def test_ctrl_c_after_the_work_is_done_is_exit_0(backend: str, name: str,
                                                 command: str) -> None:
    """Ctrl-C that lands once `fastshm get` has written its message (or
    `fastshm put` has said it put one) does not turn the exit status into
    130, which means "nothing taken" ("nothing put"): each round sends
    SIGINT the moment the output is read from the pipe, or a few
    milliseconds later, while the command closes and exits."""
    with Queue(name, 4096, backend=backend) as q:
        for i in range(20):
            msg = b"message %d" % i
            if command == "get":
                q.put(msg)
                proc = popen("get", name, backend=backend)
                expect = msg
            else:
                proc = popen("put", name, msg.decode(), backend=backend)
                expect = f"put {len(msg)} bytes in queue {name!r}\n".encode()
            try:
                assert proc.stdout is not None
                out = proc.stdout.read(len(expect))
                time.sleep((i % 4) * 0.002)
                proc.send_signal(signal.SIGINT)
                status = proc.wait(timeout=30)
                err = proc.stderr.read()  # type: ignore[union-attr]
            finally:
                finish(proc)
            assert out == expect
            assert status == 0, (i, status, err)
            assert q.get_nowait() == msg if command == "put" else q.empty()


@pytest.mark.skipif(sys.platform == "win32", reason="poll() on a pipe")
def test_nothing_is_taken_for_a_reader_that_is_gone(backend: str, name: str) -> None:
    with Queue(name, 4096, backend=backend) as q:
        q.put(b"stays")
        for args, status in ((["get", name], 1), (["get", name, "--follow"], 0)):
            r, w = os.pipe()
            os.close(r)  # standard output leads nowhere from the start
            try:
                proc = run(*args, backend=backend, stdout=w, stderr=subprocess.PIPE,
                           input=None, timeout=30)
            finally:
                os.close(w)
            assert proc.returncode == status, proc.stderr
            assert b"Traceback" not in proc.stderr
            if status:
                assert b"standard output is closed; nothing was taken" in proc.stderr
            assert q.qsize() == 1
        assert q.get_nowait() == b"stays"


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="how much of a pipe is unread is known on Linux")
@pytest.mark.parametrize("nowait", [True, False])
def test_follow_into_a_reader_that_quits_takes_one_more_at_most(
        backend: str, name: str, nowait: bool) -> None:
    """`fastshm get Q --follow | head -1`: head prints the first message and
    quits; the follower stops taking messages then, losing at most the one it
    had written to the pipe after the one head read, not the whole queue.
    (The reader's shell keeps the pipe open a second longer, as a slow
    pipeline would: the follower must not fill the pipe meanwhile.)"""
    with Queue(name, 1 << 16, backend=backend) as q:
        q.put_many([b"m%d" % i for i in range(50)])
        wait = ["--nowait"] if nowait else ["--timeout", "30"]
        follower = popen("get", name, "--follow", *wait, backend=backend)
        head = subprocess.Popen(["sh", "-c", "head -n 1; sleep 1"], stdin=follower.stdout,
                                stdout=subprocess.PIPE)
        try:
            follower.stdout.close()  # type: ignore[union-attr]  # head's now
            out, _ = head.communicate(timeout=30)
            assert out == b"m0\n"
            assert follower.wait(timeout=30) == 0
            err = follower.stderr.read()  # type: ignore[union-attr]
            assert b"Traceback" not in err and err == b"", err
        finally:
            finish(follower)
            if head.poll() is None:
                head.kill()
            head.wait(timeout=30)
        left = q.get_many(None, block=False)
        assert left[-1] == b"m49" and len(left) >= 48, left
        assert left == [b"m%d" % i for i in range(50 - len(left), 50)]


@needs_shm_dir
def test_follow_ends_when_the_queue_is_deleted(backend: str, name: str) -> None:
    with Queue(name, 4096, backend=backend) as q:
        q.put(b"first")
        follower = popen("get", name, "--follow", backend=backend)
        try:
            assert follower.stdout is not None
            assert follower.stdout.readline() == b"first\n"
            assert run("delete", name, backend=backend).returncode == 0
            try:
                out, err = follower.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                pytest.fail("get --follow went on following a queue that is gone")
            assert follower.returncode == 1, err
            assert f"{name!r} was deleted while following it".encode() in err
            assert b"Traceback" not in err
        finally:
            finish(follower)


@needs_shm_dir
@pytest.mark.parametrize("args, words", [
    (["put", "{name}", "-"], "was deleted while waiting for room in it; nothing was put"),
    (["get", "{name}"], "was deleted while waiting for a message"),
])
def test_a_blocked_put_or_get_ends_when_the_queue_is_deleted(
        backend: str, name: str, args: List[str], words: str) -> None:
    with Queue(name, 16, backend=backend) as q:
        if args[0] == "put":
            q.put(b"full")
        waiter = popen(*[a.format(name=name) for a in args], backend=backend,
                       stdin=subprocess.PIPE)
        try:
            assert waiter.stdin is not None
            waiter.stdin.write(b"blocked")
            waiter.stdin.close()
            wait_for_sleeper(name)  # it opened the queue: deleting it now is noticed
            assert waiter.poll() is None
            q.delete()
            assert waiter.wait(timeout=30) == 1
            err = waiter.stderr.read()  # type: ignore[union-attr]
            assert f"{name!r} {words}".encode() in err and b"Traceback" not in err
        finally:
            finish(waiter)


@needs_shm_dir
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="makes a FIFO in /dev/shm")
def test_commands_on_a_name_that_holds_no_shared_memory(backend: str, name: str) -> None:
    """A FIFO or a directory under the name: each command says what it is
    and how to remove it (exit 1), and blocks on nothing."""
    path = os.path.join(SHM_DIR, name)
    os.mkfifo(path, 0o600)
    try:
        for args in (["get", name], ["put", name, "x"], ["load", name], ["store", name, "x"],
                     ["info", name]):
            assert_clean_error(run(*args, backend=backend, timeout=30),
                               "is a FIFO (a named pipe) in /dev/shm, not shared memory",
                               f"fastshm delete {name}")
        assert run("delete", name, backend=backend).returncode == 0
        assert not os.path.lexists(path)
        os.mkdir(path, 0o700)
        for args in (["get", name], ["delete", name], ["info", name]):
            assert_clean_error(run(*args, backend=backend, timeout=30),
                               "is a directory in /dev/shm, not shared memory",
                               f"rmdir {path}")
        assert os.path.isdir(path)
    finally:
        if os.path.isdir(path):
            os.rmdir(path)
        elif os.path.lexists(path):
            os.unlink(path)


# ---- info, list, delete, unlock ----


@needs_shm_dir
def test_info_and_list_show_a_queue_and_a_segment_side_by_side(
        backend: str, shm_name: Any) -> None:
    qname, sname = shm_name("q"), shm_name("s")
    assert run("put", qname, "hello", "--size", "4096", backend=backend).returncode == 0
    assert run("put", qname, "world!!!!", backend=backend).returncode == 0
    assert run("store", sname, "kept", "--size", "100", backend=backend).returncode == 0

    info = run("info", qname, backend=backend)
    assert info.returncode == 0, info.stderr
    qf = fields(info.stdout)
    assert qf["kind"] == "queue"
    assert qf["capacity"].startswith("4096 bytes")
    assert qf["max_message"] == "4088 bytes"
    assert qf["messages"] == "2"
    assert qf["used"] == f"{8 + 8 + 8 + 16} bytes"
    assert qf["lock"] == "free"
    assert qf["protocol"].split()[0] == backend_name(backend)
    assert qf["backend"] == backend_name(backend)
    assert qf["mode"].startswith("0o600")

    sf = fields(run("info", sname, backend=backend).stdout)
    assert sf["kind"] == "segment"
    assert sf["capacity"] == "100 bytes" and sf["stores"] == "1"

    rows = list_rows(backend)
    qsize = os.stat(os.path.join(SHM_DIR, qname)).st_size
    ssize = os.stat(os.path.join(SHM_DIR, sname)).st_size
    assert rows[qname] == ["queue", "4096", "-", "2", "40", str(qsize), "-",
                           backend_name(backend)]
    assert rows[sname] == ["segment", "100", "1", "-", "-", str(ssize), "-", "-"]


def test_delete_removes_a_queue(backend: str, name: str) -> None:
    assert run("put", name, "x", backend=backend).returncode == 0
    proc = run("delete", name, backend=backend)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == f"deleted {name!r}\n"
    assert not exists(name)
    assert_clean_error(run("delete", name, backend=backend), "no segment or queue named")


@pytest.mark.skipif(not os.path.exists("/proc/self/ns/pid"), reason="needs Linux /proc")
def test_unlock_a_queue(backend: str, name: str) -> None:
    from test_cli import _own_tag, _set_lock

    assert run("put", name, "kept", "--size", "64", backend=backend).returncode == 0
    assert b"is not locked" in run("unlock", name, backend=backend).stdout
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=60)
    _set_lock(name, gone.pid | _own_tag() << 32)
    info = fields(run("info", name, backend=backend).stdout)
    assert f"pid {gone.pid}" in info["lock"] and "died" in info["lock"]
    proc = run("unlock", name, backend=backend)
    assert proc.returncode == 0, proc.stderr
    if backend_name(backend) == "python":
        # A flock: freed by the system when its holder died; nothing to do.
        assert b"nothing to unlock" in proc.stdout
    else:
        assert f"held by pid {gone.pid}".encode() in proc.stdout
    assert run("put", name, "after", backend=backend, timeout=30).returncode == 0
    out = run("get", name, "--follow", "--nowait", backend=backend, timeout=30)
    assert out.stdout == b"kept\nafter\n"

    _set_lock(name, os.getpid() | _own_tag() << 32)  # this test process: alive
    assert_clean_error(run("unlock", name, backend=backend), "alive", "left alone"
                       if backend_name(backend) != "python" else "nothing was changed")
    _set_lock(name, 0)


# ---- the wrong kind, the wrong lock protocol, bad options ----


def test_segment_commands_refuse_a_queue_and_change_nothing(backend: str,
                                                           name: str) -> None:
    assert run("put", name, "queued", backend=backend).returncode == 0
    for args in (["store", name, "x"], ["store", name, "-"], ["load", name],
                 ["load", name, "--follow", "--timeout", "0"]):
        proc = run(*args, backend=backend, input=b"y")
        assert_clean_error(proc, f"{name!r} is a fastshm Queue, not a Segment",
                           f"fastshm get {name}", "nothing was changed")
    with Queue(name, create=False, backend=backend) as q:
        assert q.get_nowait() == b"queued" and q.qsize() == 0


def test_queue_commands_refuse_a_segment_and_change_nothing(backend: str,
                                                           name: str) -> None:
    assert run("store", name, "stored", backend=backend).returncode == 0
    for args in (["put", name, "x"], ["put", name, "-"], ["get", name],
                 ["get", name, "--follow", "--nowait"]):
        proc = run(*args, backend=backend, input=b"y")
        assert_clean_error(proc, f"{name!r} is a fastshm Segment, not a Queue",
                           f"fastshm load {name}", "nothing was changed")
    with Segment(name, create=False, backend=backend) as seg:
        assert seg.load() == b"stored" and seg.seq == 1


@pytest.mark.skipif(len({backend_name(b) for b in BACKENDS}) < 2,
                    reason="needs both backends")
def test_the_other_backends_queue_names_the_backend_to_use(backend: str,
                                                           other_backend: str,
                                                           name: str) -> None:
    assert run("put", name, "from one", backend=backend).returncode == 0
    made_by = backend_name(backend)
    proc = run("get", name, "--nowait", backend=other_backend)
    assert_clean_error(proc, f"made by the {made_by} backend", f"--backend {made_by}",
                       "nothing was changed")
    # Without --backend the queue's own protocol is chosen.
    auto = run("get", name, "--nowait", backend=None)
    assert auto.returncode == 0, auto.stderr
    assert auto.stdout == b"from one"


@pytest.mark.parametrize("args", [
    ["put", "{name}", "x", "--size", "8"],
    ["put", "{name}", "x", "--size", "ten"],
    ["put", "{name}", "x", "--timeout", "-1"],
    ["put", "{name}", "x", "--timeout", "1", "--nowait"],
    ["get", "{name}", "--timeout", "nan"],
    ["get", "{name}", "--nowait", "--timeout", "1"],
])
def test_bad_options_are_usage_errors(backend: str, name: str, args: List[str]) -> None:
    proc = run(*[a.format(name=name) for a in args], backend=backend)
    assert proc.returncode == 2, proc.stderr
    assert b"Traceback" not in proc.stderr
    assert not exists(name)
