"""wait() and messages(): woken by stores from other processes, ping-pong
without a lost message, timeouts, Ctrl-C, the GIL, and a sleeping waiter
that costs no CPU.

Ping-pong runs 10 000 round trips per pair in the quick form and 100 000 with
``FASTSHM_LONG=1``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

import pytest
from conftest import BACKENDS, close_ends_blocked_call, run_python
from test_stress import LONG, report

import fastshm

ROUND_TRIPS = 100_000 if LONG else 10_000
PAIRS = [(a, b) for a in BACKENDS for b in BACKENDS]


def _popen(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _readline(p: subprocess.Popen, timeout: float) -> bytes:
    """One line of the child's stdout, or a failure after ``timeout``."""
    box: list[bytes] = []
    t = threading.Thread(target=lambda: box.append(p.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    t.start()
    t.join(timeout)
    if not box:
        p.kill()
        raise AssertionError(f"child said nothing within {timeout} s")
    return box[0]


def _finish(p: subprocess.Popen, timeout: float = 30) -> bytes:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise AssertionError(f"child did not finish within {timeout} s") from None
    assert p.returncode == 0, f"child exited {p.returncode}: {err.decode(errors='replace')}"
    return out


# ---- woken from another process ----

WAITER = """
import sys, fastshm
seg = fastshm.Segment(sys.argv[1], create=False, backend=sys.argv[2])
before = seg.seq
print("waiting", flush=True)
seq = seg.wait(30)
print(seq, before, seg.load().decode(), flush=True)
"""


@pytest.mark.parametrize("waiter_backend,writer_backend", PAIRS)
def test_wait_wakes_for_store_from_other_process(
    waiter_backend: str, writer_backend: str, name: str
) -> None:
    with fastshm.Segment(name, 64, create=True, backend=writer_backend) as seg:
        p = _popen(WAITER, name, waiter_backend)
        assert _readline(p, 30) == b"waiting\n"
        time.sleep(0.2)  # let it go to sleep, past its spinning
        assert p.poll() is None, "wait() returned with nothing stored"
        seq = seg.store(b"wake-up")
        seq_s, before, text = _finish(p).split()
        assert (int(seq_s), int(before), text) == (seq, 0, b"wake-up")


# ---- ping-pong through one segment, relying on wait()'s default `after` ----

PINGER = """
import sys, fastshm
seg = fastshm.Segment(sys.argv[1], create=False, backend=sys.argv[2])
n = int(sys.argv[3])
for i in range(n):
    seg.store(b"ping %d" % i)
    seg.wait(20)  # after our own store: waits for the reply
    got = seg.load()
    if got != b"pong %d" % i:
        sys.exit(f"round {i}: got {got!r}")
print(n, flush=True)
"""

PONGER = """
import sys, fastshm
seg = fastshm.Segment(sys.argv[1], create=False, backend=sys.argv[2])
n = int(sys.argv[3])
print("ready", flush=True)
for i in range(n):
    seg.wait(20)
    got = seg.load()
    if got != b"ping %d" % i:
        sys.exit(f"round {i}: got {got!r}")
    seg.store(b"pong %d" % i)
print(n, flush=True)
"""


@pytest.mark.parametrize("ping_backend,pong_backend", PAIRS)
def test_ping_pong(ping_backend: str, pong_backend: str, name: str) -> None:
    with fastshm.Segment(name, 64, create=True, backend=ping_backend) as seg:
        t0 = time.monotonic()
        ponger = _popen(PONGER, name, pong_backend, str(ROUND_TRIPS))
        try:
            assert _readline(ponger, 30) == b"ready\n"
            pinger = _popen(PINGER, name, ping_backend, str(ROUND_TRIPS))
            try:
                assert _finish(pinger, 300).strip() == str(ROUND_TRIPS).encode()
            finally:
                if pinger.poll() is None:
                    pinger.kill()
                    pinger.wait()
            assert _finish(ponger, 30).strip() == str(ROUND_TRIPS).encode()
        finally:
            if ponger.poll() is None:
                ponger.kill()
                ponger.wait()
        elapsed = time.monotonic() - t0
        # Every round trip is two stores; nothing else wrote.
        assert seg.seq == 2 * ROUND_TRIPS
        assert seg.load() == b"pong %d" % (ROUND_TRIPS - 1)
    report(f"ping-pong {ping_backend}<->{pong_backend}", round_trips=ROUND_TRIPS,
           lost=0, seconds=round(elapsed, 2))


# ---- timeouts ----


def test_wait_timeout_raises(backend: str, name: str) -> None:
    with fastshm.Segment(name, 64, create=True, backend=backend) as seg:
        seg.store(b"old")
        for timeout in (0.2, 0.05):
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                seg.wait(timeout)
            elapsed = time.monotonic() - t0
            assert elapsed >= timeout - 0.005, f"returned early: {elapsed:.3f} s < {timeout} s"
            assert elapsed < timeout + 2, "hung well past its timeout"
        # A zero timeout polls once; the message and seq are untouched.
        with pytest.raises(TimeoutError):
            seg.wait(0)
        assert seg.seq == 1 and seg.load() == b"old" and seg.last_seq == 1


def test_close_from_another_thread_ends_a_blocked_wait(backend: str, name: str) -> None:
    """close() from another thread ends a wait() blocked on the segment
    within a slice (50 ms), with ValueError, as it ends a blocked Queue call;
    the segment and its message stay for others."""
    seg = fastshm.Segment(name, 64, create=True, backend=backend)
    other = fastshm.Segment(name, create=False, backend=backend)
    try:
        seg.store(b"kept")
        error = close_ends_blocked_call(seg, lambda: seg.wait(30))
        assert name in str(error)
        assert other.seq == 1 and other.load() == b"kept"
    finally:
        seg.close()
        other.delete()


def test_wait_returns_at_once_when_already_newer(backend: str, name: str) -> None:
    with fastshm.Segment(name, 64, create=True, backend=backend) as seg:
        seg.store(b"a")
        seg.store(b"b")
        assert seg.wait(0, after=0) == 2
        assert seg.wait(0, after=1) == 2
        assert seg.last_seq == 2


# ---- `after` semantics ----


def test_after_defaults_to_own_last_store_load_or_wait(backend: str, name: str) -> None:
    with fastshm.Segment(name, 64, create=True, backend=backend) as seg:
        assert seg.last_seq == 0
        with pytest.raises(TimeoutError):
            seg.wait(0.05)  # nothing stored at all
        assert seg.store(b"request") == 1
        assert seg.last_seq == 1
        # Not woken by its own store: it waits for somebody else's.
        with pytest.raises(TimeoutError):
            seg.wait(0.05)
        assert seg.wait(0, after=0) == 1
        other = fastshm.Segment(name, create=False, backend=backend)
        try:
            assert other.last_seq == 0
            assert other.wait(0) == 1  # a fresh object has seen nothing yet
            assert other.last_seq == 1
            with pytest.raises(TimeoutError):
                other.wait(0.02)
            other.store(b"reply")
        finally:
            other.close()
        assert seg.wait(1) == 2
        assert seg.load() == b"reply"
        # load() moves last_seq too.
        fresh = fastshm.Segment(name, create=False, backend=backend)
        try:
            fresh.load()
            assert fresh.last_seq == 2
            with pytest.raises(TimeoutError):
                fresh.wait(0.02)
        finally:
            fresh.close()


def test_after_bad_values(backend: str, name: str) -> None:
    with fastshm.Segment(name, 64, create=True, backend=backend) as seg:
        with pytest.raises(ValueError):
            seg.wait(0, after=-1)
        for bad in (1.5, "1", True):
            with pytest.raises(TypeError):
                seg.wait(0, after=bad)  # type: ignore[arg-type]
        for bad_t in ("1", [1]):
            with pytest.raises(TypeError):
                seg.wait(bad_t)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            seg.wait(float("nan"))
        seg.close()
        with pytest.raises(ValueError):
            seg.wait(0)


# ---- messages() ----

FEEDER = """
import sys, fastshm
seg = fastshm.Segment(sys.argv[1], create=False, backend=sys.argv[2])
ack = fastshm.Segment(sys.argv[3], create=False, backend=sys.argv[2])
for i in range(5):
    seg.store(b"msg %d" % i)
    ack.wait(20)  # the reader got it: next one
print("done", flush=True)
"""


@pytest.mark.parametrize("reader_backend,writer_backend", PAIRS)
def test_messages_yields_each_new_message_and_stops_on_timeout(
    reader_backend: str, writer_backend: str, shm_name: Callable[..., str]
) -> None:
    name, ack_name = shm_name(), shm_name()
    seg = fastshm.Segment(name, 64, create=True, backend=reader_backend)
    ack = fastshm.Segment(ack_name, 64, create=True, backend=reader_backend)
    try:
        seg.store(b"before the reader started")
        seg.load()  # seen: messages() starts after it
        p = _popen(FEEDER, name, writer_backend, ack_name)
        got = []
        try:
            for msg in seg.messages(timeout=10):
                got.append(msg)
                ack.store(msg)
                if len(got) == 5:
                    break
            assert _finish(p).strip() == b"done"
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert got == [b"msg %d" % i for i in range(5)]
        # Nothing more comes: the iterator ends after its timeout.
        t0 = time.monotonic()
        assert list(seg.messages(timeout=0.1)) == []
        assert time.monotonic() - t0 >= 0.095
    finally:
        seg.close()
        ack.close()


# ---- Ctrl-C ----

INTERRUPTED = """
import sys, fastshm
seg = fastshm.Segment(sys.argv[1], create=False, backend=sys.argv[2])
print("waiting", flush=True)
try:
    seg.wait()
except KeyboardInterrupt:
    print("interrupted", seg.seq, flush=True)
    sys.exit(0)
sys.exit(3)
"""


def test_ctrl_c_interrupts_wait(backend: str, name: str) -> None:
    with fastshm.Segment(name, 64, create=True, backend=backend):
        p = _popen(INTERRUPTED, name, backend)
        try:
            assert _readline(p, 30) == b"waiting\n"
            time.sleep(0.3)  # well past the spin: asleep in the kernel or in time.sleep
            assert p.poll() is None
            p.send_signal(signal.SIGINT)
            assert _finish(p, 10).strip() == b"interrupted 0"
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


# ---- the GIL ----


def test_other_threads_run_while_waiting(backend: str, name: str) -> None:
    with fastshm.Segment(name, 64, create=True, backend=backend) as seg:
        count = [0]
        stop = threading.Event()

        def spin() -> None:
            while not stop.is_set():
                count[0] += 1

        t = threading.Thread(target=spin)
        t.start()
        try:
            time.sleep(0.05)
            start = count[0]
            with pytest.raises(TimeoutError):
                seg.wait(0.5)
            progressed = count[0] - start
        finally:
            stop.set()
            t.join(10)
        # With the GIL held through the wait the counter would stand still.
        assert progressed > 1000, f"the other thread advanced only {progressed} times"


def test_store_from_another_thread_wakes_wait(backend: str, name: str) -> None:
    with fastshm.Segment(name, 64, create=True, backend=backend) as seg:
        writer = fastshm.Segment(name, create=False, backend=backend)
        timer = threading.Timer(0.2, writer.store, (b"from a thread",))
        timer.start()
        try:
            assert seg.wait(10) == 1
            assert seg.load() == b"from a thread"
        finally:
            timer.cancel()
            timer.join(10)
            writer.close()


# ---- a blocked waiter sleeps ----

SLEEPER = """
import json, resource, sys, fastshm
seg = fastshm.Segment(sys.argv[1], create=False, backend=sys.argv[2])
r0 = resource.getrusage(resource.RUSAGE_SELF)
try:
    seg.wait(float(sys.argv[3]))
except TimeoutError:
    pass
r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
print(json.dumps({"cpu": cpu}), flush=True)
"""


@pytest.mark.skipif("native" not in BACKENDS, reason="native backend not importable")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="futex wait is Linux-only")
@pytest.mark.parametrize("binding", [b for b in BACKENDS if b.startswith("native")])
def test_native_wait_sleeps_in_the_kernel(name: str, binding: str) -> None:
    with fastshm.Segment(name, 64, create=True, backend=binding):
        out = run_python(SLEEPER, name, binding, "1.0", timeout=30).stdout
        cpu = json.loads(out)["cpu"]
        report(f"{binding} wait CPU", wall_s=1.0, cpu_s=round(cpu, 4))
        # A spinning waiter would burn about 1 s of CPU here.
        assert cpu < 0.2, f"a blocked wait() used {cpu:.3f} s of CPU in 1 s"


def test_python_wait_backs_off(name: str) -> None:
    """The python backend polls, but with a growing sleep, not a busy loop."""
    with fastshm.Segment(name, 64, create=True, backend="python"):
        out = run_python(SLEEPER, name, "python", "1.0", timeout=30).stdout
        cpu = json.loads(out)["cpu"]
        report("python wait CPU", wall_s=1.0, cpu_s=round(cpu, 4))
        assert cpu < 0.5, f"a blocked wait() used {cpu:.3f} s of CPU in 1 s"
