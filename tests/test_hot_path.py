"""The hot path on every route: the GIL around long copies and blocking
calls, references and memory over a million calls, zero-copy reads that can
tell whether they were intact, and the arguments of wait() and intact().
"""

from __future__ import annotations

import gc
import json
import math
import sys
import threading
from typing import Any, Callable, Iterator, List

import pytest
from conftest import BACKENDS, run_python
from test_stress import LONG, report

import fastshm
from fastshm import _backend

CAPI = "native" in BACKENDS and "native-cffi" in BACKENDS  # CPython with the C-API binding
NATIVE = [b for b in BACKENDS if b.startswith("native")]
MIB = 1 << 20

try:
    import numpy
except ImportError:  # PyPy without numpy
    numpy = None  # type: ignore[assignment]


@pytest.fixture
def seg(backend: str, name: str) -> Iterator[fastshm.Segment]:
    with fastshm.Segment(name, 4096, create=True, backend=backend) as s:
        yield s


# ---- wait() and intact() arguments ----


def test_wait_timeout_inf_and_huge_mean_no_timeout(seg: fastshm.Segment) -> None:
    seg.store(b"one")
    # The message is already there: these return at once, without overflow.
    for forever in (math.inf, 10**30, 2**64, 1e300):
        assert seg.wait(forever, after=0) == 1
    stored = threading.Timer(0.05, lambda: seg.store(b"two"))
    stored.start()
    try:
        assert seg.wait(math.inf) == 2
    finally:
        stored.join()


@pytest.mark.parametrize("after", [2**63, 2**64, 2**100])
def test_wait_after_out_of_range_is_value_error(seg: fastshm.Segment, after: int) -> None:
    with pytest.raises(ValueError, match="after"):
        seg.wait(0, after=after)


def test_wait_after_largest_is_accepted(seg: fastshm.Segment) -> None:
    with pytest.raises(TimeoutError):
        seg.wait(0, after=2**63 - 1)


class _Index:
    def __init__(self, n: int) -> None:
        self.n = n

    def __index__(self) -> int:
        return self.n


@pytest.mark.parametrize("make", [_Index] + ([numpy.int64, numpy.uint32] if numpy else []))
def test_integer_like_arguments(seg: fastshm.Segment, make: Callable[[int], Any]) -> None:
    seg.store(b"x")
    assert seg.wait(make(0), after=make(0)) == 1
    with pytest.raises(TimeoutError):
        seg.wait(make(0), after=make(1))
    assert seg.intact(make(1)) is True


@pytest.mark.parametrize("bad, error", [
    (-1, ValueError), (True, TypeError), (1.0, TypeError), ("1", TypeError),
    (2**63, ValueError), (None, TypeError),
])
def test_intact_bad_arguments(seg: fastshm.Segment, bad: Any, error: type) -> None:
    with pytest.raises(error, match="seq"):
        seg.intact(bad)


def test_wait_keyword_misuse(seg: fastshm.Segment) -> None:
    with pytest.raises(TypeError):
        seg.wait(0, 0)  # type: ignore[misc]
    with pytest.raises(TypeError):
        seg.wait(0, before=1)  # type: ignore[call-arg]
    with pytest.raises(TimeoutError):
        seg.wait(timeout=0, after=0)


# ---- intact(): the seqlock's check for zero-copy readers ----


def test_intact_follows_the_slot(seg: fastshm.Segment) -> None:
    assert seg.intact(0) is True  # nothing stored: the empty message
    seg.store(b"first")
    view = seg.view()
    seq = seg.last_seq
    assert seq == 1 and bytes(view) == b"first" and seg.intact(seq)
    seg.store(b"second")  # the other slot: the view is untouched
    assert seg.intact(seq) and bytes(view) == b"first"
    seg.store(b"third")  # reuses the view's slot
    assert not seg.intact(seq)
    assert not seg.intact(seq + 100)  # never stored


def test_apply_returns_a_result_from_intact_bytes(seg: fastshm.Segment) -> None:
    seg.store(b"abc")
    assert seg.apply(bytes) == b"abc"
    assert seg.last_seq == 1


UNIFORM_WRITER = """
import sys, time, fastshm
seg = fastshm.Segment(sys.argv[1], create=False, backend=sys.argv[2])
size, seconds = int(sys.argv[3]), float(sys.argv[4])
print("ready", flush=True)
stores, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    stores += 1
    seg.store(bytes([stores & 0xFF]) * size)  # every byte of a message alike
print(stores, flush=True)
"""


@pytest.mark.parametrize("size", [64 * 1024, MIB])
def test_zero_copy_reads_that_intact_accepts_are_whole(backend: str, name: str,
                                                       size: int) -> None:
    """A writer process stores messages whose bytes are all alike as fast as
    it can; a reader uses views in place.  Every read that intact() calls
    intact must be uniform; the rule this replaces (``seq <= last_seq + 1``)
    is counted too, to show what it let through."""
    import subprocess

    seconds = 10.0 if LONG else 2.0
    with fastshm.Segment(name, size, create=True, backend=backend) as seg:
        seg.store(b"\0" * size)
        writer = subprocess.Popen(
            [sys.executable, "-c", UNIFORM_WRITER, name, backend, str(size), str(seconds)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert writer.stdout is not None
            assert writer.stdout.readline().strip() == b"ready"
            reads = accepted = torn_accepted = old_rule_torn = applied = 0
            while writer.poll() is None:
                view = seg.view()
                seq = seg.last_seq
                data = view.tobytes()  # the use: any read of the bytes in place
                whole = data.count(data[:1]) == len(data)
                reads += 1
                if seg.intact(seq):
                    accepted += 1
                    torn_accepted += not whole
                if not whole and seg.seq <= seq + 1:
                    old_rule_torn += 1
                result = seg.apply(lambda v: v.tobytes().count(v[:1]) == len(v))
                applied += 1
                assert result, "apply() returned a result computed from torn bytes"
            out, err = writer.communicate(timeout=30)
            assert writer.returncode == 0, err.decode(errors="replace")
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.communicate()
    report(f"zero-copy reads ({backend}, {size} B)", stores=int(out.split()[-1]), reads=reads,
           intact=accepted, torn_called_intact=torn_accepted,
           torn_under_old_rule=old_rule_torn, apply_calls=applied)
    assert torn_accepted == 0, f"intact() accepted {torn_accepted} torn reads"
    assert accepted > 0, "no read was ever intact: the check is useless to a consumer"


# ---- the GIL ----

# With a switch interval far longer than the test, a thread can only run while
# another one has let go of the GIL by itself: a counter that moves while the
# main thread is inside one call proves that call released the GIL.
GIL_PROBE = """
import json, sys, threading, time, fastshm
name, backend, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
seg = fastshm.Segment(name, size, create=False, backend=backend)
payload = b"z" * size
buf = bytearray(size)
inside = False
stop = False
during = {"store": 0, "load": 0, "load_into": 0}
current = "store"

def other():
    while not stop:
        if inside:
            during[current] += 1
        time.sleep(0)  # releases the GIL, so the main thread gets it back

sys.setswitchinterval(1000)
t = threading.Thread(target=other)
t.start()
time.sleep(0.05)
# Five rounds at least; more, up to 30 s, until the other thread has run
# during each call that releases the GIL (cffi's load does not, see the test):
# on a loaded machine it may not be scheduled during any of five copies.
cffi = fastshm._backend.resolve(backend).binding == "cffi"
expect = [op for op in during if not (cffi and op == "load")]
deadline = time.monotonic() + 30
rounds = 0
while rounds < 5 or (time.monotonic() < deadline and not all(during[op] for op in expect)):
    current = "store"; inside = True; seg.store(payload); inside = False
    current = "load"; inside = True; seg.load(); inside = False
    current = "load_into"; inside = True; seg.load_into(buf); inside = False
    rounds += 1
stop = True
t.join()
seg.close()
print(json.dumps(during))
"""


@pytest.mark.skipif(not NATIVE, reason="native backend not importable")
@pytest.mark.parametrize("binding", NATIVE)
def test_gil_released_during_long_copies(binding: str, name: str) -> None:
    size = 32 * MIB
    with fastshm.Segment(name, size, create=True, backend=binding):
        out = run_python(GIL_PROBE, name, binding, str(size), timeout=120).stdout
    during = json.loads(out)
    report(f"another thread's steps during 32 MiB copies ({binding})", **during)
    if _backend.resolve(binding).binding == "cffi":  # native-cffi, and native on PyPy
        # Through cffi, load() makes its bytes with memoryview.tobytes(),
        # which holds the GIL; store and load_into are C calls, which cffi
        # makes without it.
        del during["load"]
    for op, steps in during.items():
        assert steps > 0, f"{op} of 32 MiB held the GIL throughout: {during}"


@pytest.mark.skipif(not CAPI, reason="the C-API binding is CPython's")
def test_capi_keeps_the_gil_for_short_work(name: str) -> None:
    """Below the release threshold a call keeps the GIL: releasing and
    retaking it would cost more than the copy."""
    size = 1024
    with fastshm.Segment(name, size, create=True, backend="native"):
        out = run_python(GIL_PROBE, name, "native", str(size), timeout=60).stdout
    assert json.loads(out) == {"store": 0, "load": 0, "load_into": 0}


CLOSE_WHILE_COPYING = """
import sys, threading, fastshm
name, backend = sys.argv[1], sys.argv[2]
seg = fastshm.Segment(name, create=False, backend=backend)
payload = b"q" * seg.capacity
errors = []

def writer():
    for _ in range(20):
        try:
            seg.store(payload)
            seg.load()
        except ValueError as e:  # closed: the expected way for this thread to stop
            errors.append(str(e))
            return

t = threading.Thread(target=writer)
t.start()
view = seg.view()
seg.close()  # while the other thread is (most likely) in the middle of a copy
t.join()
assert bytes(view[:1]) in (b"q", b"")
print("ok", len(errors))
"""


@pytest.mark.parametrize("attempt", range(3))
def test_close_during_a_copy_in_another_thread(backend: str, name: str, attempt: int) -> None:
    with fastshm.Segment(name, 16 * MIB, create=True, backend=backend) as seg:
        seg.store(b"q" * (16 * MIB))
        out = run_python(CLOSE_WHILE_COPYING, name, backend, timeout=120).stdout
    assert out.startswith(b"ok")


def test_views_outlive_close_and_delete(backend: str, name: str) -> None:
    seg = fastshm.Segment(name, 64, create=True, backend=backend)
    seg.store(b"kept in the view")
    view = seg.view()
    part = view[5:7]
    seg.delete()
    gc.collect()
    assert bytes(view) == b"kept in the view" and bytes(part) == b"in"


# ---- references and memory over a million calls ----


def _calls(seg: fastshm.Segment, data: bytes, buf: bytearray) -> List[Callable[[], Any]]:
    return [
        lambda: seg.store(data),
        lambda: seg.store("text"),
        lambda: seg.store(buf),
        seg.load,
        lambda: seg.load_into(buf),
        seg.view,
        lambda: seg.wait(0, after=0),
        lambda: seg.intact(1),
        lambda: len(seg),
        lambda: seg.seq,
    ]


def test_a_million_calls_leak_nothing(backend: str, name: str) -> None:
    tracemalloc = pytest.importorskip("tracemalloc")
    if sys.implementation.name != "cpython":
        pytest.skip("tracemalloc traces CPython's allocator")
    # The C-API binding is where a missed reference would be; the other
    # routes go through Python code and get a shorter loop.
    rounds = 1_000_000 if backend == "native" and CAPI else 50_000
    data = b"d" * 64
    buf = bytearray(128)
    with fastshm.Segment(name, 128, create=True, backend=backend) as seg:
        calls = _calls(seg, data, buf)
        refs_before = (sys.getrefcount(data), sys.getrefcount(buf), sys.getrefcount(seg))
        for call in calls:  # warm up caches and free lists
            for _ in range(1000):
                call()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for call in calls:
                for _ in range(rounds // len(calls)):
                    call()
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        refs_after = (sys.getrefcount(data), sys.getrefcount(buf), sys.getrefcount(seg))
        buf.extend(b"x")  # no buffer export left behind: it can still be resized
    report(f"memory after {rounds} calls ({backend})", grown_bytes=grown)
    assert refs_after == refs_before
    # A leaked 64-byte bytes object per call would be megabytes.
    assert grown < 256 * 1024, f"{grown} bytes still allocated after {rounds} calls"
