"""A process that holds a queue's, a segment's or a channel's lock without making
progress -- stopped with SIGSTOP, as Ctrl-Z or a debugger stops it -- must
not make other processes' calls outlast their deadlines, nor keep Ctrl-C
from ending the calls that have none; the command line keeps the promises
of its help text.

The holder takes every lock a writer of either backend takes: the flock on
the object (the python backend's lock) and the lock word at header offset
64, which it sets to its own id, as a compare-and-swap owner of the native
backend does (an owner that is alive holds the lock).  Then it stops itself.
Every call under test runs in a child process bounded by a timeout, so a call
that blocks fails the test instead of hanging the suite; the holder is
resumed and killed on the way out, whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from typing import Iterator, List

import pytest

import fastshm

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="SIGSTOP, /proc and /dev/shm"
)

# Seconds a timed call is given, and how long past its deadline (or, for a
# call that must not wait, past its start) it may take to end: generous, so
# that only a call that waits for the holder fails.
TIMEOUT = 0.5
MARGIN = 2.0

HOLDER = r"""
import fcntl, mmap, os, signal, struct, sys, time
from fastshm import _pure

fd = os.open("/dev/shm/" + sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)            # the python backend's lock
mm = mmap.mmap(fd, 128)
mm[64:72] = struct.pack("<Q", _pure.self_id())   # the lock word: held by us
print("holding", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
time.sleep(3600)
"""


def _read_line(proc: "subprocess.Popen[bytes]", within: float) -> bytes:
    """One line of ``proc``'s stdout, or b"" if none came within ``within``
    seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], within)
    return proc.stdout.readline() if ready else b""


def _is_stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")


@contextlib.contextmanager
def stopped_holder(name: str) -> Iterator[int]:
    """A process holding ``name``'s lock, stopped: its pid.  Resumed and
    killed on the way out."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = _read_line(proc, 30)
        assert line == b"holding\n", (line, proc.poll())
        deadline = time.monotonic() + 10
        while not _is_stopped(proc.pid):
            assert time.monotonic() < deadline, "the holder did not stop"
            time.sleep(0.001)
        yield proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait(10)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()


def _child(code: str, *args: str) -> "subprocess.Popen[bytes]":
    return subprocess.Popen([sys.executable, "-c", code, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: "subprocess.Popen[bytes]", within: float) -> "tuple[int, bytes, bytes]":
    """(status, stdout, stderr) of ``proc``, killed if it has not ended
    within ``within`` seconds (status None then)."""
    try:
        out, err = proc.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        return None, out, err  # type: ignore[return-value]
    return proc.returncode, out, err


# ---- timed and nonblocking queue calls ----

# The end of a CALLS child: each call of its dict ``calls`` in a thread of
# its own, all at once; one that blocks is reported as "hung" after its
# bound, and the others still report.
RUN_CALLS = r"""results = {}

def run(label, call):
    start = time.monotonic()
    try:
        call()
        outcome, text = "returned", ""
    except BaseException as e:
        outcome, text = type(e).__name__, str(e)
    results[label] = {"outcome": outcome, "elapsed": time.monotonic() - start,
                      "message": text}

threads = [threading.Thread(target=run, args=item, daemon=True) for item in calls.items()]
for t in threads:
    t.start()
end = time.monotonic() + timeout + margin
for t in threads:
    t.join(max(0.0, end - time.monotonic()))
for label in calls:
    results.setdefault(label, {"outcome": "hung", "elapsed": None, "message": ""})
print(json.dumps(results), flush=True)
os._exit(0)
"""

# The queue's calls, each in a thread of its own (RUN_CALLS).
CALLS = r"""
import json, os, queue, sys, threading, time
import fastshm

name, backend, timeout, margin = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
q = fastshm.Queue(name, create=False, backend=backend)
calls = {
    "put_nowait": lambda: q.put_nowait(b"x"),
    "put(block=False)": lambda: q.put(b"x", block=False),
    "get_nowait": lambda: q.get_nowait(),
    "get_many(block=False)": lambda: q.get_many(block=False),
    "put(timeout)": lambda: q.put(b"x", timeout=timeout),
    "get(timeout)": lambda: q.get(timeout=timeout),
    "get_many(timeout)": lambda: q.get_many(timeout=timeout),
    "get_into(timeout)": lambda: q.get_into(bytearray(64), timeout=timeout),
    "put_many(timeout)": lambda: q.put_many([b"a", b"b"], timeout=timeout),
}
""" + RUN_CALLS


def test_queue_calls_keep_their_deadlines(backend: str, name: str) -> None:
    """put_nowait, get_nowait and the timed put, get, get_many, get_into and
    put_many raise queue.Full / queue.Empty once their timeout has passed,
    though the queue has room and a message: its lock is held by a process
    that does not run.  Nothing is put or taken."""
    q = fastshm.Queue(name, 1 << 12, create=True, backend=backend)
    try:
        q.put(b"queued before the holder stopped")
        with stopped_holder(name) as holder:
            proc = _child(CALLS, name, backend, str(TIMEOUT), str(MARGIN))
            rc, out, err = _finish(proc, 60)
            assert rc == 0, (rc, err.decode(errors="replace")[-2000:])
            assert q.qsize() == 1, "a call put or took a message under another's lock"
        results = json.loads(out)
        wrong = {}
        for label, r in results.items():
            want = "Full" if label.startswith("put") else "Empty"
            timed = "timeout" in label
            bound = (TIMEOUT if timed else 0.0) + MARGIN
            if r["outcome"] != want or r["elapsed"] > bound:
                wrong[label] = r
            elif timed and r["elapsed"] < 0.8 * TIMEOUT:
                wrong[label] = dict(r, problem="gave up before its timeout")
            elif str(holder) not in r["message"]:
                wrong[label] = dict(r, problem="the message does not name the holder")
        assert not wrong, (
            f"calls that did not end with queue.Full/Empty within their timeout + {MARGIN} s "
            f"behind a stopped lock holder:\n" + "\n".join(
                f"  {label}: {r['outcome']} after {r['elapsed']} s {r.get('problem', '')} "
                f"{r['message'][:200]!r}" for label, r in wrong.items())
        )
        assert q.get(timeout=5) == b"queued before the holder stopped"
    finally:
        q.close()


# ---- timed and nonblocking channel calls ----

# As CALLS, on a channel: the publisher and the subscriber join before the
# holder stops (joining takes the lock), then wait for a line on stdin.
CHANNEL_CALLS = r"""
import json, os, sys, threading, time
import fastshm

name, backend, timeout, margin = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
pub = fastshm.Publisher(name, create=False, backend=backend)
sub = fastshm.Subscriber(name, backend=backend)
print("ready", flush=True)
sys.stdin.readline()

def loan(t):
    with pub.loan(8, timeout=t) as buf:
        buf[:] = b"12345678"

calls = {
    "publish(timeout=0)": lambda: pub.publish(b"x", timeout=0),
    "publish(timeout)": lambda: pub.publish(b"x", timeout=timeout),
    "loan(timeout=0)": lambda: loan(0),
    "loan(timeout)": lambda: loan(timeout),
    "receive(timeout=0)": lambda: sub.receive(timeout=0),
    "receive(timeout)": lambda: sub.receive(timeout=timeout),
}
""" + RUN_CALLS


def test_channel_calls_keep_their_deadlines(backend: str, name: str) -> None:
    """publish, loan and receive, with a zero or a short timeout, raise
    TimeoutError once it has passed while a process that does not run holds
    the channel's lock; a publish or loan says who holds it.  Nothing is
    published."""
    pub = fastshm.Publisher(name, 64, 4, create=True, backend=backend)
    watch = fastshm.Subscriber(name, backend=backend)
    try:
        proc = subprocess.Popen([sys.executable, "-c", CHANNEL_CALLS, name, backend,
                                 str(TIMEOUT), str(MARGIN)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            line = _read_line(proc, 30)
            assert line == b"ready\n", (line, proc.poll(), proc.stderr.read()[-2000:])
            with stopped_holder(name) as holder:
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
                proc.stdin.flush()
                rc, out, err = _finish(proc, 60)
                assert rc == 0, (rc, err.decode(errors="replace")[-2000:])
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
        results = json.loads(out)
        wrong = {}
        for label, r in results.items():
            timed = "timeout=0" not in label
            bound = (TIMEOUT if timed else 0.0) + MARGIN
            if r["outcome"] != "TimeoutError" or r["elapsed"] > bound:
                wrong[label] = r
            elif timed and r["elapsed"] < 0.8 * TIMEOUT:
                wrong[label] = dict(r, problem="gave up before its timeout")
            elif not label.startswith("receive") and str(holder) not in r["message"]:
                wrong[label] = dict(r, problem="the message does not name the holder")
        assert not wrong, (
            f"calls that did not end with TimeoutError within their timeout + {MARGIN} s "
            f"behind a stopped lock holder:\n" + "\n".join(
                f"  {label}: {r['outcome']} after {r['elapsed']} s {r.get('problem', '')} "
                f"{r['message'][:200]!r}" for label, r in wrong.items())
        )
        with pytest.raises(TimeoutError):
            watch.receive(timeout=0)  # nothing was published meanwhile
        assert pub.publish(b"after", timeout=5) == 1
        with watch.receive(timeout=5) as sample:
            assert (sample.seq, bytes(sample)) == (1, b"after")
    finally:
        watch.close()
        pub.close()


# ---- Ctrl-C ends a call that has no timeout ----

UNTIMED = r"""
import sys, time
import fastshm

name, backend, what = sys.argv[1:4]
if what == "store":
    obj = fastshm.Segment(name, create=False, backend=backend)
else:
    obj = fastshm.Queue(name, create=False, backend=backend)
print("calling", flush=True)
start = time.monotonic()
try:
    if what == "get":
        obj.get()
    elif what == "put":
        obj.put(b"x")
    else:
        obj.store(b"from the interrupted store")
except KeyboardInterrupt:
    print("interrupted after %.3f s" % (time.monotonic() - start), flush=True)
    sys.exit(0)
print("returned", flush=True)
sys.exit(3)
"""


def _interrupt_once(name: str, backend: str, what: str) -> None:
    """Start ``what`` without a timeout in a child, let it block behind the
    stopped holder, send one SIGINT: it must end with KeyboardInterrupt within
    a few seconds."""
    with stopped_holder(name):
        proc = _child(UNTIMED, name, backend, what)
        try:
            assert _read_line(proc, 30) == b"calling\n", proc.poll()
            time.sleep(0.5)  # inside the call by now, waiting for the lock
            assert proc.poll() is None, (
                f"{what} ended while the lock was held: {_finish(proc, 5)}")
            proc.send_signal(signal.SIGINT)  # once: a lost signal is the bug
            rc, out, err = _finish(proc, 5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    assert rc is not None, (
        f"one SIGINT did not end a {what}() blocked behind a stopped lock holder "
        f"within 5 s: {out!r} {err.decode(errors='replace')[-2000:]}")
    assert rc == 0 and out.startswith(b"interrupted"), (rc, out, err[-2000:])


@pytest.mark.parametrize("what", ["get", "put"])
def test_ctrl_c_ends_untimed_queue_call(backend: str, name: str, what: str) -> None:
    q = fastshm.Queue(name, 1 << 12, create=True, backend=backend)
    try:
        q.put(b"queued")  # a get waits for the lock, not for a message
        _interrupt_once(name, backend, what)
        assert q.qsize() == 1, "the interrupted call put or took a message"
        assert q.get(timeout=5) == b"queued"
    finally:
        q.close()


def test_ctrl_c_ends_store(backend: str, name: str) -> None:
    seg = fastshm.Segment(name, 64, create=True, backend=backend)
    try:
        seg.store(b"before")
        _interrupt_once(name, backend, "store")
        assert seg.load() == b"before" and seg.seq == 1
    finally:
        seg.close()


def test_load_needs_no_lock(backend: str, name: str) -> None:
    """A reader does not wait for the lock: a load behind a stopped writer
    returns the current message."""
    seg = fastshm.Segment(name, 64, create=True, backend=backend)
    try:
        seg.store(b"current")
        with stopped_holder(name):
            code = ("import sys, fastshm; s = fastshm.Segment(sys.argv[1], create=False, "
                    "backend=sys.argv[2]); sys.stdout.buffer.write(s.load() + s.load())")
            rc, out, err = _finish(_child(code, name, backend), 30)
        assert (rc, out) == (0, b"currentcurrent"), (rc, out, err[-2000:])
    finally:
        seg.close()


# ---- the command line ----


def _cli(backend: str, *args: str) -> List[str]:
    return [sys.executable, "-m", "fastshm", "--backend", backend, *args]


@pytest.mark.parametrize("args, bound", [
    pytest.param(("get", "{name}", "--nowait"), MARGIN, id="get-nowait"),
    pytest.param(("get", "{name}", "--timeout", str(TIMEOUT)), TIMEOUT + MARGIN,
                 id="get-timeout"),
    pytest.param(("put", "{name}", "x", "--nowait"), MARGIN, id="put-nowait"),
    pytest.param(("put", "{name}", "x", "--timeout", str(TIMEOUT)), TIMEOUT + MARGIN,
                 id="put-timeout"),
])
def test_cli_keeps_nowait_and_timeout(backend: str, name: str, args: "tuple[str, ...]",
                                      bound: float) -> None:
    """Exit status 1 with a message (the help: a full or empty queue,
    nothing put or taken), within the bound, though the lock is held."""
    q = fastshm.Queue(name, 1 << 12, create=True, backend=backend)
    try:
        q.put(b"queued")
        argv = _cli(backend, *(a.format(name=name) for a in args))
        with stopped_holder(name):
            # The interpreter's start-up and imports come on top of the bound.
            start = time.monotonic()
            rc, out, err = _finish(subprocess.Popen(argv, stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE), bound + 5)
            elapsed = time.monotonic() - start
        assert rc == 1 and err.startswith(b"fastshm: error: "), (rc, out, err)
        assert elapsed < bound + 3, f"{' '.join(args)} took {elapsed:.1f} s"
        assert q.qsize() == 1
    finally:
        q.close()


def _wait_mapped(proc: "subprocess.Popen[bytes]", name: str) -> None:
    """Until ``proc`` has mapped the object ``name`` (Linux: its
    /proc/PID/maps; elsewhere a fixed 2 s), or 30 s have passed."""
    maps = f"/proc/{proc.pid}/maps"
    if not os.path.exists(maps):
        time.sleep(2.0)
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with open(maps) as f:
                if f"/dev/shm/{name}" in f.read():
                    return
        except OSError:  # it ended: the caller's poll() says how
            return
        time.sleep(0.01)


def test_cli_ctrl_c_ends_untimed_get(backend: str, name: str) -> None:
    """`fastshm get NAME` waits as long as it takes; one Ctrl-C ends it with
    exit status 130, nothing taken."""
    q = fastshm.Queue(name, 1 << 12, create=True, backend=backend)
    try:
        q.put(b"queued")
        with stopped_holder(name):
            proc = subprocess.Popen(_cli(backend, "get", name), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            try:
                # Started, imported, and inside the command: the queue mapped.
                _wait_mapped(proc, name)
                assert proc.poll() is None, _finish(proc, 5)
                proc.send_signal(signal.SIGINT)
                rc, out, err = _finish(proc, 5)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate(timeout=10)
        assert rc == 130, (rc, out, err[-2000:])
        assert out == b"" and q.qsize() == 1
    finally:
        q.close()

