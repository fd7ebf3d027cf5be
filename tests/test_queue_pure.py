"""The python backend's queue handle on its own: the byte layout the C core
reads, the flock-based lock protocol (a dead holder, the dirty recount),
what an interrupt or a signal handler may do, and hostile headers.

Names contain "python" so that ``-k python`` selects them with the rest of
the python backend's tests.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
import threading
import time
from typing import Any, Iterator

import pytest

import fastshm
from fastshm import _common as C
from fastshm import _pure, _pure_futex, _pure_queue
from fastshm._errors import FormatError, ProtocolMismatch

pytestmark = pytest.mark.skipif(C.WINDOWS, reason="the python backend's queue locks with flock")

try:
    from fastshm._fastshm import ffi, lib
except ImportError:  # no C core built
    ffi = lib = None

needs_c = pytest.mark.skipif(lib is None, reason="needs the C core (cffi)")


def _word(h: Any, off: int, size: int = 8) -> int:
    return int.from_bytes(h._mm[off : off + size], "little")


def _set(h: Any, off: int, value: int, size: int = 8) -> None:
    h._mm[off : off + size] = value.to_bytes(size, "little")


@pytest.fixture
def handle(name: str) -> Iterator[Any]:
    h = _pure.QueueHandle(name, C.CREATE, 256, 0o600, False)
    yield h
    del h


def test_python_queue_layout(handle: Any) -> None:
    h = handle
    magic, version, header_size, capacity = struct.unpack_from("<IHHQ", h._mm, 0)
    assert (magic, version, header_size, capacity) == (C.QUEUE_MAGIC, 1, 128, 256)
    assert _word(h, C.Q_FLAGS, 4) == C.QUEUE_PYLOCK
    assert h.size == 128 + 256 and h.max_message == 248 and h.created and not h.readonly
    assert h.put_many([b"abc", b"", b"12345678"], 0)
    # Records: u64 length, payload, zero padding to 8.
    ring = bytes(h._mm[128 : 128 + 48])
    assert ring == (struct.pack("<Q", 3) + b"abc" + bytes(5) + struct.pack("<Q", 0)
                    + struct.pack("<Q", 8) + b"12345678" + bytes(8))
    assert (_word(h, C.Q_HEAD), _word(h, C.Q_TAIL), _word(h, C.Q_COUNT)) == (0, 40, 3)
    assert _word(h, C.Q_DIRTY, 4) == 0 and h.lock_owner() == 0
    assert h.count() == 3 and h.used() == 40
    assert h.take(2, 0) == [b"abc", b""]
    assert (_word(h, C.Q_HEAD), h.count(), h.used()) == (24, 1, 16)


def test_python_queue_capacity_rounds_up(name: str) -> None:
    h = _pure.QueueHandle(name, C.CREATE, 17, 0o600, False)
    assert h.capacity == 24 and h.max_message == 16
    with pytest.raises(ValueError):
        _pure.QueueHandle(name + "x", C.CREATE, 15, 0o600, False)


def test_python_queue_wraps_around_the_ring(handle: Any) -> None:
    h = handle
    sent = []
    got = []
    for i in range(400):
        m = os.urandom(i * 7 % 120)
        assert h.put_many([m], 0)
        sent.append(m)
        if i % 3:
            got += h.take(2, 0)
    got += h.take(1000, 0)
    assert got == sent and h.count() == 0 and h.used() == 0
    buf = bytearray(248)
    for n in (0, 1, 100, 248, 5, 247):
        m = os.urandom(n)
        assert h.put_many([m], 0)
        assert h.take_into(memoryview(buf), 0) == n and bytes(buf[:n]) == m
    assert h.take_into(memoryview(buf), 0) == -1


def test_python_queue_limits(handle: Any) -> None:
    h = handle
    with pytest.raises(ValueError, match="larger than queue"):
        h.put_many([bytes(249)], 0)
    with pytest.raises(ValueError, match="cannot fit queue"):
        h.put_many([bytes(100)] * 3, 0)
    assert h.put_many([bytes(248)], 0)
    assert not h.put_many([b""], 0)  # full: nothing put
    assert h.count() == 1
    with pytest.raises(ValueError, match="it stays queued"):
        h.take_into(memoryview(bytearray(247)), 0)
    assert h.count() == 1 and h.take(5, 0) == [bytes(248)]


def test_python_queue_timeouts(handle: Any) -> None:
    h = handle
    t = time.monotonic()
    assert h.take(1, 0) == [] and h.take_into(memoryview(bytearray(8)), 0) == -1
    assert time.monotonic() - t < 1.0  # no wait (a loaded machine may preempt it)
    t = time.monotonic()
    assert h.take(1, 0.1) == []
    assert 0.09 <= time.monotonic() - t < 1.0
    assert h.put_many([bytes(248)], 0)
    t = time.monotonic()
    assert not h.put_many([b"x"], 0.1)
    assert 0.09 <= time.monotonic() - t < 1.0

    # A blocked take wakes for a put from another thread, a blocked put for a take.
    def later(fn: Any) -> None:
        time.sleep(0.05)
        fn()

    th = threading.Thread(target=later, args=(lambda: h.take(1, 0),))
    th.start()
    assert h.put_many([b"after"], 5.0)
    th.join()
    th = threading.Thread(target=later, args=(lambda: h.put_many([b"more"], 0),))
    th.start()
    assert h.take(5, None) == [b"after"]
    assert h.take(5, 5.0) == [b"more"]
    th.join()
    buf = bytearray(16)
    for timeout in (5.0, None):
        th = threading.Thread(target=later, args=(lambda: h.put_many([b"into"], 0),))
        t = time.monotonic()  # before the thread starts its 50 ms
        th.start()
        assert h.take_into(memoryview(buf), timeout) == 4 and buf[:4] == b"into"
        assert time.monotonic() - t >= 0.04  # it waited for the put
        th.join()
    th = threading.Thread(target=later, args=(lambda: h.put_many([b""], 0),))
    th.start()
    assert h.take_into(memoryview(buf), 5.0) == 0  # an empty message, not "none"
    th.join()


def test_python_queue_kind_errors(name: str, shm_name: Any) -> None:
    q = _pure.QueueHandle(name, C.CREATE, 64, 0o600, False)
    with pytest.raises(FormatError, match="is a fastshm Queue, not a Segment"):
        _pure.SegmentHandle(name, C.OPEN_OR_CREATE, 64, 0o600, False)
    seg = shm_name("seg")
    s = _pure.SegmentHandle(seg, C.CREATE, 64, 0o600, False)
    with pytest.raises(FormatError, match="is a fastshm Segment, not a Queue"):
        _pure.QueueHandle(seg, C.OPEN_OR_CREATE, 64, 0o600, False)
    del q, s


@needs_c
def test_python_queue_refuses_a_native_one(name: str) -> None:
    q = fastshm.Queue(name, 64, create=True, backend="native-cffi")
    with pytest.raises(ProtocolMismatch, match="made by the native backend"):
        _pure.QueueHandle(name, C.ATTACH, 0, 0o600, False)
    q.close()


@needs_c
def test_python_queue_bytes_are_the_c_cores(name: str, shm_name: Any) -> None:
    """Records the python backend writes, the C core takes (and the other
    way round), once the flags word is set to each side's protocol."""
    msgs = [os.urandom(n) for n in (0, 1, 8, 9, 100, 33, 7, 50)]
    py = _pure.QueueHandle(name, C.CREATE, 256, 0o600, False)
    nat = fastshm.Queue(shm_name("c"), 256, create=True, backend="native-cffi")
    for m in msgs[:4]:  # some taken first, so that the rest wrap around
        assert py.put_many([m], 0)
        nat.put(m)
    assert py.take(4, 0) == nat.get_many() == msgs[:4]
    for m in msgs[4:]:
        assert py.put_many([m], 0)
        nat.put(m)
    mine = bytes(py._mm)
    theirs = bytes(ffi.buffer(nat._h._owner, nat._mapped_size))
    for off in (8, 16, 24, 32, 40, 64, 88):  # all but the flags word
        assert mine[off : off + 8] == theirs[off : off + 8], off
    # The C core reads the python backend's bytes ...
    other = fastshm.Queue(shm_name("c2"), 256, create=True, backend="native-cffi")
    ffi.memmove(other._h._owner, mine[:48] + bytes(4) + mine[52:], len(mine))
    assert other.get_many() == msgs[4:]
    # ... and the python backend the C core's.
    py._mm[:] = theirs[:48] + struct.pack("<I", 1) + theirs[52:]
    assert py.take(100, 0) == msgs[4:]
    nat.close()
    other.close()


def test_python_queue_dead_holder_and_recount(handle: Any) -> None:
    """A holder killed inside its put leaves its id in the lock word, the
    dirty mark, and a stale count: the next holder recounts."""
    h = handle
    assert h.put_many([b"one", b"two"], 0)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            t = h._thread_state()
            _pure._flock(t.fd, _pure._LOCK_EX)
            h._mm[64:72] = t.ident
            _set(h, C.Q_DIRTY, 1, 4)
            _set(h, C.Q_COUNT, 99)
            os.write(w, b"x")
            time.sleep(60)
        finally:
            os._exit(1)
    try:
        assert os.read(r, 1) == b"x"
        assert h.lock_owner() == _pure.self_id() >> 32 << 32 | pid
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        # A reader counts the records itself: the holder that left 99 is gone.
        assert h.count() == 2 and _word(h, C.Q_COUNT) == 99
        assert h.take(1, 5.0) == [b"one"]
        assert h.count() == 1 and h.lock_owner() == 0 and _word(h, C.Q_DIRTY, 4) == 0
    finally:
        os.close(r)
        os.close(w)


def test_python_queue_take_interrupted_before_commit(handle: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt before the head store leaves the message queued
    and the lock free."""
    h = handle
    assert h.put_many([b"stay"], 0)
    real = _pure_queue._p64
    state = {"left": 2}  # the count's word, then the head's

    def interrupting(value: int) -> bytes:
        state["left"] -= 1
        if state["left"] == 0:
            raise KeyboardInterrupt
        return real(value)

    monkeypatch.setattr(_pure_queue, "_p64", interrupting)
    with pytest.raises(KeyboardInterrupt):
        h.take(1, 0)
    monkeypatch.setattr(_pure_queue, "_p64", real)
    assert h.lock_owner() == 0 and h.count() == 1
    assert h.take(1, 0) == [b"stay"]


def test_python_queue_put_interrupted_before_commit(handle: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    h = handle
    assert h.take(1, 0) == []  # this thread's lock state exists before the patch
    real = _pure_queue._p64
    calls = []

    def interrupting(value: int) -> bytes:
        calls.append(value)
        if len(calls) == 4:  # count, the two records' lengths, then tail
            raise KeyboardInterrupt
        return real(value)

    monkeypatch.setattr(_pure_queue, "_p64", interrupting)
    with pytest.raises(KeyboardInterrupt):
        h.put_many([b"a", b"b"], 0)
    monkeypatch.setattr(_pure_queue, "_p64", real)
    assert h.lock_owner() == 0
    assert _word(h, C.Q_DIRTY, 4) == 1  # left marked: the next holder recounts
    assert h.take(5, 0) == [] and h.count() == 0 and _word(h, C.Q_DIRTY, 4) == 0
    assert h.put_many([b"c"], 0) and h.take(5, 0) == [b"c"]


@pytest.mark.skipif(not _pure_queue._futex_waits, reason="sleeps on a futex only where one is")
def test_python_queue_interrupt_inside_the_uncount(handle: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal's handler that raises inside the call counting the thread
    out of the sleepers (its first call after the futex wait) leaves no
    sleeper counted: the uncount is tried again, then the exception goes on."""
    h = handle
    real = _pure_queue.QueueHandle._enlist
    raised = []

    def interrupted(self: Any, delta: int, *args: Any) -> int:
        if delta < 0 and not raised:
            raised.append(1)
            raise KeyboardInterrupt
        return real(self, delta, *args)

    monkeypatch.setattr(_pure_queue.QueueHandle, "_enlist", interrupted)
    with pytest.raises(KeyboardInterrupt):
        h.take(1, 0.2)  # empty: it sleeps, times out, and counts itself out
    assert raised and _word(h, C.Q_WAITERS, 4) == 0
    assert h.put_many([b"x"], 0) and h.take(1, 0) == [b"x"]


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")
def test_python_queue_signal_handler_reentry(handle: Any) -> None:
    """A handler that puts on the queue this thread is putting to gets a
    RuntimeError, never a deadlock."""
    h = handle
    seen = {"refused": 0, "ok": 0, "busy": False}

    def on_alarm(signum: int, frame: Any) -> None:
        if seen["busy"]:  # a nested run of this handler (PyPy runs them so)
            return
        seen["busy"] = True
        try:
            if h.put_many([b"h"], 0):
                h.take(1, 0)
            seen["ok"] += 1
        except RuntimeError as e:
            assert "called from a signal handler while this thread is inside" in str(e)
            seen["refused"] += 1
        finally:
            seen["busy"] = False

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
    try:
        end = time.monotonic() + 1.0
        while time.monotonic() < end and not seen["refused"]:
            assert h.put_many([b"m" * 100], 1.0)
            h.take(1, 1.0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert seen["refused"] >= 1, seen
    h.take(100, 0)
    assert h.lock_owner() == 0 and h.count() == 0


@pytest.mark.parametrize("corrupt", [
    {C.Q_HEAD: 3}, {C.Q_TAIL: 257, C.Q_HEAD: 1}, {C.Q_TAIL: 1 << 20},
    {C.Q_HEAD: (1 << 64) - 8, C.Q_TAIL: 1 << 30},
])
def test_python_queue_hostile_header(handle: Any, corrupt: "dict[int, int]") -> None:
    """Whatever head and tail say, a put or take ends with FormatError: no
    IndexError, no struct.error, no endless wait."""
    h = handle
    assert h.put_many([b"x" * 20, b"y"], 0)
    for off, value in corrupt.items():
        _set(h, off, value)
    for call in (lambda: h.take(1, None), lambda: h.put_many([b"z" * 200], None),
                 lambda: h.take_into(memoryview(bytearray(300)), None)):
        with pytest.raises(FormatError, match="queue .* is corrupt"):
            call()
        assert h.lock_owner() == 0
    assert h.used() <= h.capacity


@pytest.mark.parametrize("length", [1 << 40, (1 << 64) - 1, 249, 200])
def test_python_queue_hostile_record(handle: Any, length: int) -> None:
    """A record longer than the ring, or than what is queued after it: takes
    end with FormatError (puts do not read records)."""
    h = handle
    assert h.put_many([b"x" * 20, b"y"], 0)
    _set(h, 128, length)
    for call in (lambda: h.take(1, None), lambda: h.take_into(memoryview(bytearray(300)), None)):
        with pytest.raises(FormatError, match="queue .* is corrupt"):
            call()
        assert h.lock_owner() == 0
    _set(h, 128 + 32, 1 << 50)  # the second record: the first comes out, then the error
    _set(h, 128, 20)
    assert h.take(5, 0) == [b"x" * 20]
    with pytest.raises(FormatError):
        h.take(5, 0)


def test_python_queue_dirty_with_corrupt_records(handle: Any) -> None:
    h = handle
    assert h.put_many([b"x"], 0)
    _set(h, 128, 10_000)
    _set(h, C.Q_DIRTY, 1, 4)
    with pytest.raises(FormatError):
        h.put_many([b"a"], 0)
    with pytest.raises(FormatError):
        h.take(1, 0)
    assert h.lock_owner() == 0


def test_python_queue_fork_child_uses_its_own_lock(handle: Any) -> None:
    h = handle
    assert h.put_many([b"parent"], 0)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            if h.take(1, 5.0) == [b"parent"] and h.put_many([b"child"], 5.0):
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert h.take(2, 0) == [b"child"]


def test_python_queue_through_fastshm_queue(name: str) -> None:
    with fastshm.Queue(name, 4096, create=True, backend="python") as q:
        assert q.backend == "python"
        q.put(b"a")
        q.put_many(["b", memoryview(b"cc")])
        assert q.qsize() == 3 and q.get() == b"a" and q.get_many() == [b"b", b"cc"]
        assert q.empty() and not q.full()
    if sys.platform.startswith("linux"):
        assert os.path.exists(f"/dev/shm/{name}")


_IDLE_CHILD = r"""
import resource, struct, sys, time, queue
import fastshm
from fastshm import _pure_queue

q = fastshm.Queue(sys.argv[1], create=False, backend="python")

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

try:
    q.get(timeout=0.01)  # this thread's lock state, made outside the measure
except queue.Empty:
    pass
c0, t0 = cpu(), time.monotonic()
try:
    q.get(timeout=2.0)
    sys.exit("a message came")
except queue.Empty:
    pass
print(cpu() - c0, time.monotonic() - t0, flush=True)
# Long slices: only the put's wake-up, not a slice's end, gets it out soon.
_pure_queue._Q_SLICE_S = 30.0
m = q.get(timeout=60)
print(time.monotonic() - struct.unpack("d", m)[0], flush=True)
"""


@pytest.mark.skipif(not _pure._HAS_FUTEX, reason="needs the futex (Linux)")
def test_python_queue_idle_get_sleeps_and_a_put_wakes_it(handle: Any) -> None:
    """A get blocked on an empty queue sleeps in the kernel: under 1% of a
    core over 2 s (polling took about 2%; through ctypes, PyPy took 1-2%),
    counted in waiters, and a put from another process wakes it at once."""
    import subprocess

    h = handle
    child = subprocess.Popen([sys.executable, "-c", _IDLE_CHILD, h.name],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stderr is not None
        line = child.stdout.readline()
        assert line, child.stderr.read()
        used, idle = map(float, line.split())
        assert idle >= 1.9
        assert used / idle < 0.01, f"{used:.4f} s of CPU over {idle:.2f} s idle"
        # Asleep again (the spin is 50 us): counted, and woken by the put.
        end = time.monotonic() + 10
        while _word(h, C.Q_WAITERS, 4) != 1:
            assert time.monotonic() < end, "the getter never counted itself"
            time.sleep(0.01)
        time.sleep(0.1)
        assert h.put_many([struct.pack("d", time.monotonic())], 0)
        latency = float(child.stdout.readline())
        assert latency < 5.0  # its slices are 30 s: only the wake-up ends one
        assert child.wait(30) == 0, child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert _word(h, C.Q_WAITERS, 4) == 0 and h.count() == 0 and h.lock_owner() == 0


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")
def test_python_queue_interrupted_sleep_uncounts_itself(handle: Any) -> None:
    """A KeyboardInterrupt in a blocked take comes at once (the sleep ends
    with EINTR) and leaves waiters as it found it; so does a timeout."""
    h = handle
    fired = {}

    def on_alarm(signum: int, frame: Any) -> None:
        fired["at"] = time.monotonic()
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, on_alarm)
    try:
        for room in (False, True):
            if room:
                assert h.put_many([b"x" * 200], 0)  # no room for another
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(KeyboardInterrupt):
                if room:
                    h.put_many([b"y" * 200], None)
                else:
                    h.take(1, None)
            assert time.monotonic() - fired["at"] < 0.5
            assert _word(h, C.Q_WAITERS, 4) == 0 and h.lock_owner() == 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert not h.put_many([b"y" * 200], 0.1)
    assert h.take(5, 0) == [b"x" * 200] and h.take(5, 0.1) == []
    assert _word(h, C.Q_WAITERS, 4) == 0


def test_python_queue_one_put_wakes_every_sleeper(handle: Any) -> None:
    """Threads asleep on the same queue (each counted): a put wakes them
    all, one takes the message, the others sleep again until theirs."""
    h = handle
    got: "list[bytes]" = []

    def getter() -> None:
        got.extend(h.take(1, 30.0))

    threads = [threading.Thread(target=getter) for _ in range(3)]
    for th in threads:
        th.start()
    end = time.monotonic() + 10
    while _word(h, C.Q_WAITERS, 4) != 3 and time.monotonic() < end:
        time.sleep(0.01)
    assert _word(h, C.Q_WAITERS, 4) == 3
    for i in range(3):
        assert h.put_many([b"m%d" % i], 0)
    for th in threads:
        th.join(10)
        assert not th.is_alive()
    assert sorted(got) == [b"m0", b"m1", b"m2"]
    assert _word(h, C.Q_WAITERS, 4) == 0 and h.count() == 0


@pytest.mark.skipif(not _pure._HAS_FUTEX, reason="needs the futex (Linux)")
def test_python_queue_waits_poll_without_the_futex(handle: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A futex call that fails for good (a seccomp filter's ENOSYS, say)
    turns the waits to polling, which still see a put."""
    import errno

    h = handle
    calls = []

    def refused(*args: Any) -> int:
        calls.append(args)
        return errno.ENOSYS

    monkeypatch.setattr(_pure_queue, "_futex_waits", True)
    monkeypatch.setattr(_pure_queue, "_futex_wait", refused)
    for attempt in range(2):
        timer = threading.Timer(0.2, h.put_many, ([b"late%d" % attempt], 0))
        timer.start()
        try:
            assert h.take(1, 10.0) == [b"late%d" % attempt]
        finally:
            timer.join()
        assert _word(h, C.Q_WAITERS, 4) == 0
        assert not _pure_queue._futex_waits and len(calls) == 1
    assert h.take(1, 0.05) == [] and len(calls) == 1


@pytest.mark.skipif(_pure_futex._futex_ffi is None,
                    reason="the futex is called through cffi's ABI mode on PyPy only")
def test_python_queue_timed_wait_parses_no_c_type(handle: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A timed wait names no C type by a string.  cffi parses such a type
    in pure Python at its first use; a KeyboardInterrupt that landed inside
    that parse left the parser broken, and every wait after it raised
    CDefError ("invalid #line directive") out of a get."""
    import errno

    class Refused:
        def __getattr__(self, attr: str) -> Any:
            raise AssertionError(f"a wait went to cffi's parser ({attr})")

    h = handle
    monkeypatch.setattr(_pure_futex._futex_ffi, "_parsed_types", {})
    monkeypatch.setattr(_pure_futex._futex_ffi, "_parser", Refused())
    seen = _word(h, C.Q_NOTIFY, 4)
    wait = _pure_futex._futex_wait
    assert wait(h._anchor, C.Q_NOTIFY, seen + 1, 0.01) == errno.EAGAIN
    assert wait(h._anchor, C.Q_NOTIFY, seen, 0.01) == errno.ETIMEDOUT
    assert h.take(1, 0.05) == []  # a get's own timed sleep
