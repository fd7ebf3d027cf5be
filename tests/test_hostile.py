"""Hostile headers: whatever bytes another process writes into a segment,
opening, loading, storing and waiting raise ``fastshm.FormatError`` or
behave correctly; they never crash, hang, or reach outside the mapping.

Every risky operation runs in a child process, so a crash shows up as a
signal exit status instead of taking pytest down, and every child is bounded
by a timeout.  The hypothesis run makes 300 headers per backend in the quick
form and 5 000 with ``FASTSHM_LONG=1``.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time

import pytest
from conftest import BACKENDS, PREFIX, run_python
from test_stress import LONG, TESTS_DIR, report

import fastshm
from fastshm import _common as C

EXAMPLES = 5000 if LONG else 300


def _dead_pid() -> int:
    """A pid that belonged to a process which has exited and been reaped."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(timeout=30)
    return p.pid


def _owner_word(pid: int) -> int:
    """The lock word a process of our pid namespace with ``pid`` writes."""
    return (fastshm._backend.resolve("python").self_id() & ~0xFFFFFFFF) | pid


# ---- a child that runs every operation and reports what each did ----

PROBE = r"""
import faulthandler, json, sys
faulthandler.enable()
import fastshm
name, backend = sys.argv[1], sys.argv[2]
out = {}
def attempt(key, fn):
    try:
        out[key] = ["ok", fn()]
    except fastshm.FormatError as e:
        out[key] = ["FormatError", str(e)[:80]]
    except Exception as e:
        out[key] = [type(e).__name__, str(e)[:200]]
attempt("attach", lambda: fastshm.Segment(name, create=False, backend=backend).capacity)
if out["attach"][0] == "ok":
    seg = fastshm.Segment(name, create=False, backend=backend)
    cap = seg.capacity
    attempt("seq", lambda: seg.seq)
    attempt("load", lambda: len(seg.load()))
    attempt("load_into", lambda: seg.load_into(bytearray(cap)))
    attempt("view", lambda: len(seg.view()))
    attempt("len", lambda: len(seg))
    attempt("wait0", lambda: seg.wait(0, after=0))
    def timed_wait():
        try:
            return seg.wait(0.01)
        except TimeoutError:
            return "timeout"
    attempt("wait", timed_wait)
    attempt("store", lambda: seg.store(b"s" * min(cap, 7)))
    attempt("load_after_store", lambda: seg.load())
print(json.dumps(out, default=repr), flush=True)
"""


def probe(name: str, backend: str, timeout: float = 30) -> dict[str, list]:
    proc = run_python(PROBE, name, backend, timeout=timeout, check=False)
    assert proc.returncode == 0, (
        f"probe died with status {proc.returncode} (negative: killed by that signal)\n"
        f"{proc.stderr.decode(errors='replace')}"
    )
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _fresh(name: str, capacity: int, backend: str, stores: int = 3) -> fastshm.SharedMemory:
    """A valid segment with a few messages, then the raw mapping over it."""
    with fastshm.Segment(name, capacity, create=True, backend=backend) as seg:
        for i in range(stores):
            seg.store(b"message %d" % i)
    return fastshm.SharedMemory(name, backend=backend)


def _put(buf: memoryview, fmt: str, offset: int, value: int) -> None:
    struct.pack_into(fmt, buf, offset, value)


def _stride(capacity: int) -> int:
    return C.stride_for(capacity)


# ---- targeted cases ----


@pytest.mark.parametrize(
    "field,fmt,offset,value",
    [
        ("version", "<H", C.H_VERSION, 2),
        ("version", "<H", C.H_VERSION, 0),
        ("version", "<H", C.H_VERSION, 0xFFFF),
        ("header size", "<H", C.H_HEADER_SIZE, 64),
        ("header size", "<H", C.H_HEADER_SIZE, 0xFFFF),
        ("capacity", "<Q", C.H_CAPACITY, 0),
        ("capacity", "<Q", C.H_CAPACITY, 1 << 20),  # bigger than the mapping
        ("capacity", "<Q", C.H_CAPACITY, 1 << 63),
        ("capacity", "<Q", C.H_CAPACITY, (1 << 64) - 1),
        ("magic", "<I", C.H_MAGIC, 0x4D485347),
        ("magic", "<I", C.H_MAGIC, 0),  # never finished: refused after a bounded wait
    ],
)
def test_bad_header_is_refused_at_attach(
    backend: str, name: str, field: str, fmt: str, offset: int, value: int
) -> None:
    raw = _fresh(name, 256, backend)
    try:
        _put(raw.buf, fmt, offset, value)
        result = probe(name, backend)
        assert result["attach"][0] == "FormatError", (field, result)
    finally:
        raw.close()


def test_capacity_grown_after_attach_stays_inside_the_mapping(backend: str, name: str) -> None:
    """Geometry is read once at open: a header rewritten later cannot
    stretch loads or stores past the mapping."""
    raw = _fresh(name, 256, backend)
    try:
        with fastshm.Segment(name, create=False, backend=backend) as seg:
            _put(raw.buf, "<Q", C.H_CAPACITY, 1 << 40)
            stride = _stride(256)
            cur = seg.seq & 1
            _put(raw.buf, "<Q", C.HEADER_SIZE + cur * stride + C.S_LENGTH, 1 << 30)
            with pytest.raises(fastshm.FormatError):
                seg.load()
            with pytest.raises(ValueError):
                seg.store(b"x" * 257)
            assert seg.store(b"y" * 256) == 4
            assert seg.load() == b"y" * 256
    finally:
        raw.close()


@pytest.mark.parametrize("seq", [1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 2, (1 << 64) - 1])
def test_huge_seq(backend: str, name: str, seq: int) -> None:
    """A counter near the top of its range: stores that cannot publish a
    larger number are refused with FormatError, nothing wraps to 0."""
    raw = _fresh(name, 64, backend)
    try:
        stride = _stride(64)
        slot = C.HEADER_SIZE + (seq & 1) * stride
        _put(raw.buf, "<Q", C.H_SEQ, seq)
        _put(raw.buf, "<Q", slot + C.S_SEQ, (2 * seq) & ((1 << 64) - 1))
        _put(raw.buf, "<Q", slot + C.S_LENGTH, 3)
        raw.buf[slot + C.SLOT_HEADER_SIZE : slot + C.SLOT_HEADER_SIZE + 3] = b"abc"
        result = probe(name, backend)
        assert result["attach"][0] == "ok"
        for op in ("seq", "load", "load_into", "view", "len", "wait0", "wait", "store"):
            assert result[op][0] in ("ok", "FormatError"), (op, result)
        if result["store"][0] == "ok":
            # A store that succeeded published a larger number, and its message.
            assert result["store"][1] > seq
            assert result["load_after_store"] == ["ok", "b'sssssss'"]
        else:
            assert result["load_after_store"][0] in ("ok", "FormatError")
        assert result["seq"] == ["ok", seq]
    finally:
        raw.close()


def test_slot_word_odd_forever(backend: str, name: str) -> None:
    """A current slot that looks half-written and never completes: loads
    raise FormatError rather than spin."""
    raw = _fresh(name, 64, backend)
    try:
        seq = struct.unpack_from("<Q", raw.buf, C.H_SEQ)[0]
        slot = C.HEADER_SIZE + (seq & 1) * _stride(64)
        _put(raw.buf, "<Q", slot + C.S_SEQ, 2 * seq + 1)
        result = probe(name, backend)
        for op in ("load", "load_into", "view", "len"):
            assert result[op][0] == "FormatError", (op, result)
        # A store writes the other slot and repairs the segment.
        assert result["store"] == ["ok", seq + 1]
        assert result["load_after_store"] == ["ok", "b'sssssss'"]
    finally:
        raw.close()


def test_slot_length_beyond_capacity(backend: str, name: str) -> None:
    raw = _fresh(name, 64, backend)
    try:
        seq = struct.unpack_from("<Q", raw.buf, C.H_SEQ)[0]
        slot = C.HEADER_SIZE + (seq & 1) * _stride(64)
        for length in (65, 128, 1 << 40, (1 << 64) - 1):
            _put(raw.buf, "<Q", slot + C.S_LENGTH, length)
            result = probe(name, backend)
            for op in ("load", "load_into", "view", "len"):
                assert result[op][0] == "FormatError", (length, op, result)
            _put(raw.buf, "<Q", slot + C.S_LENGTH, 9)  # the probe's store moved on
            seq = struct.unpack_from("<Q", raw.buf, C.H_SEQ)[0]
            slot = C.HEADER_SIZE + (seq & 1) * _stride(64)
    finally:
        raw.close()


def test_lock_held_by_dead_pid_is_taken_over(backend: str, name: str) -> None:
    raw = _fresh(name, 64, backend)
    try:
        _put(raw.buf, "<Q", C.H_LOCK, _owner_word(_dead_pid()))
        result = probe(name, backend, timeout=30)
        assert result["store"] == ["ok", 4]
        assert struct.unpack_from("<Q", raw.buf, C.H_LOCK)[0] == 0
    finally:
        raw.close()


@pytest.mark.parametrize("turn", ["another namespace", "a live process"])
def test_lock_held_by_dead_pid_with_another_process_turn(backend: str, name: str,
                                                         turn: str) -> None:
    """The lock word names a dead process and lock_next another one (which
    cannot be judged, or lives but is not waiting): a store takes the dead
    holder's lock over all the same, rather than wait for the turn's holder
    to take a lock that nobody will ever let go of."""
    raw = _fresh(name, 64, backend)
    try:
        _put(raw.buf, "<Q", C.H_LOCK, _owner_word(_dead_pid()))
        other = 0x1234567800000042 if turn == "another namespace" else _owner_word(1)
        _put(raw.buf, "<Q", C.H_LOCK_NEXT, other)
        result = probe(name, backend, timeout=30)
        assert result["store"] == ["ok", 4]
        assert struct.unpack_from("<Q", raw.buf, C.H_LOCK)[0] == 0
    finally:
        raw.close()


HOLDER = "import sys; print('holding', flush=True); sys.stdin.read()"

STORER = """
import sys, fastshm
seg = fastshm.Segment(sys.argv[1], create=False, backend=sys.argv[2])
print("storing", flush=True)
print(seg.store(b"after the holder"), flush=True)
"""


def test_lock_held_by_live_process_makes_store_wait(backend: str, name: str) -> None:
    """A live owner (of our pid namespace) keeps the lock: the store waits
    for it, then takes the lock over once that process is gone."""
    raw = _fresh(name, 64, backend)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    storer: subprocess.Popen | None = None
    try:
        assert holder.stdout.readline() == b"holding\n"  # type: ignore[union-attr]
        _put(raw.buf, "<Q", C.H_LOCK, _owner_word(holder.pid))
        storer = subprocess.Popen([sys.executable, "-c", STORER, name, backend],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert storer.stdout.readline() == b"storing\n"  # type: ignore[union-attr]
        time.sleep(0.3)
        assert storer.poll() is None, "store went ahead while another live process held the lock"
        assert struct.unpack_from("<Q", raw.buf, C.H_SEQ)[0] == 3
        holder.stdin.close()  # type: ignore[union-attr]
        holder.wait(timeout=30)
        out, err = storer.communicate(timeout=30)
        assert storer.returncode == 0, err
        assert out.strip() == b"4"
        assert struct.unpack_from("<Q", raw.buf, C.H_LOCK)[0] == 0
    finally:
        for p in (holder, storer):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        raw.close()


def test_not_fastshm_at_all(backend: str, name: str) -> None:
    """A name made by someone else (the stdlib, another program) is refused."""
    raw = fastshm.SharedMemory(name, create=True, size=4096, backend=backend)
    try:
        raw.buf[:16] = b"not a segment!!!"
        assert probe(name, backend)["attach"][0] == "FormatError"
    finally:
        raw.close()
    small = name + "s"
    raw = fastshm.SharedMemory(small, create=True, size=16, backend=backend)
    try:
        struct.pack_into("<I", raw.buf, 0, C.MAGIC)
        assert probe(small, backend)["attach"][0] == "FormatError"
    finally:
        raw.close()
        fastshm._backend.resolve(backend).unlink(small)


# ---- hypothesis: random and adversarial headers, a batch per child ----

FUZZ = r"""
import faulthandler, os, struct, sys
faulthandler.enable()
from hypothesis import HealthCheck, given, settings, strategies as st
import fastshm
from fastshm import _common as C

backend, prefix, dead_owner, examples = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
U64MAX = (1 << 64) - 1
counter = [0]
outcomes = {"examples": 0, "attach_ok": 0, "attach_refused": 0, "op_refused": 0, "op_ok": 0}

u64 = st.one_of(
    st.sampled_from([0, 1, 2, 3, 63, 64, 65, 4096, 1 << 31, 1 << 32, 1 << 62, 1 << 63,
                     U64MAX - 1, U64MAX]),
    st.integers(0, U64MAX),
)
fields = st.fixed_dictionaries({}, optional={
    # Not 0: a zero magic means "still being created", which an opener waits
    # a second for (test_bad_header_is_refused_at_attach covers it once).
    "magic": st.sampled_from([C.MAGIC, 0x4D485347, 0xFFFFFFFF, 0x46534D48]),
    "version": st.sampled_from([1, 0, 2, 0xFFFF]),
    "header_size": st.sampled_from([128, 0, 64, 129, 0xFFFF]),
    "capacity": u64,
    "seq": u64,
    "slot0_seq": u64,
    "slot1_seq": u64,
    "slot0_len": u64,
    "slot1_len": u64,
    "lock": st.sampled_from([0, dead_owner]),
    "notify": st.integers(0, 0xFFFFFFFF),
    "waiters": st.integers(0, 0xFFFFFFFF),
})

def write(buf, stride, f):
    put = struct.pack_into
    if "magic" in f: put("<I", buf, 0, f["magic"])
    if "version" in f: put("<H", buf, 4, f["version"])
    if "header_size" in f: put("<H", buf, 6, f["header_size"])
    if "capacity" in f: put("<Q", buf, 8, f["capacity"])
    if "seq" in f: put("<Q", buf, 16, f["seq"])
    if "notify" in f: put("<I", buf, 24, f["notify"])
    if "waiters" in f: put("<I", buf, 28, f["waiters"])
    if "lock" in f: put("<Q", buf, 64, f["lock"])
    for i in (0, 1):
        base = 128 + i * stride
        if base + 16 <= len(buf):
            if f"slot{i}_seq" in f: put("<Q", buf, base, f[f"slot{i}_seq"])
            if f"slot{i}_len" in f: put("<Q", buf, base + 8, f[f"slot{i}_len"])

def run_ops(seg, cap):
    def attempt(fn):
        try:
            r = fn()
        except fastshm.FormatError:
            outcomes["op_refused"] += 1
            return None
        except TimeoutError:
            return None
        outcomes["op_ok"] += 1
        return r
    for data in (attempt(seg.load), attempt(seg.view)):
        if data is not None:
            assert len(data) <= cap, (len(data), cap)
    n = attempt(lambda: seg.load_into(bytearray(cap)))
    assert n is None or n <= cap
    attempt(lambda: len(seg))
    attempt(lambda: seg.seq)
    attempt(lambda: seg.wait(0, after=0))
    attempt(lambda: seg.wait(0))
    payload = b"h" * min(cap, 5)
    seq = attempt(lambda: seg.store(payload))
    if seq is not None:
        # A store that succeeded published its message under its number.
        assert attempt(seg.load) in (payload, None)

@settings(max_examples=examples, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(
    capacity=st.sampled_from([1, 64, 100, 4096]),
    extra=st.sampled_from([0, 0, 0, 1, 63, -1, -64, -129]),
    stores=st.integers(0, 3),
    when=st.sampled_from(["before_attach", "after_attach"]),
    f=fields,
    noise=st.one_of(st.none(), st.binary(min_size=1, max_size=256)),
    noise_at=st.integers(0, 255),
)
def case(capacity, extra, stores, when, f, noise, noise_at):
    counter[0] += 1
    name = f"{prefix}fz{os.getpid()}_{counter[0]}"
    stride = C.stride_for(capacity)
    seg = fastshm.Segment(name, capacity, create=True, backend=backend)
    try:
        for i in range(stores):
            seg.store(bytes([65 + i]))
        size = C.seg_size_for(capacity) + extra
        raw = fastshm.SharedMemory(name, backend=backend)
        buf = raw.buf
        early = None
        if when == "after_attach":
            early = fastshm.Segment(name, create=False, backend=backend)
        elif extra < 0:
            # Shrink the object under the header: the mapping of a later
            # opener is smaller than the header says it needs.  (Not under a
            # live mapping: pages cut off there fault, as with any mmap.)
            os.truncate(f"/dev/shm/{name}", size)
        write(buf, stride, f)
        if noise is not None:
            end = min(len(buf), noise_at + len(noise))
            buf[noise_at:end] = noise[: end - noise_at]
            if buf[64:72] != bytes(8):  # keep the lock free or dead-owned
                struct.pack_into("<Q", buf, 64, dead_owner)
        outcomes["examples"] += 1
        if early is not None:
            run_ops(early, early.capacity)
            early.close()
            return
        try:
            s = fastshm.Segment(name, create=False, backend=backend)
        except fastshm.FormatError:
            outcomes["attach_refused"] += 1
            return
        except ValueError as e:  # a shrunk object of size 0
            assert "size 0" in str(e), e
            outcomes["attach_refused"] += 1
            return
        outcomes["attach_ok"] += 1
        cap = s.capacity
        assert C.seg_size_for(cap) <= os.stat(f"/dev/shm/{name}").st_size
        run_ops(s, cap)
        s.close()
    finally:
        seg.close()
        try:
            raw.close()
        except NameError:
            pass
        fastshm._backend.resolve(backend).unlink(name)

case()
import json
print(json.dumps(outcomes), flush=True)
"""


@pytest.mark.parametrize("backend_", BACKENDS)
def test_hypothesis_hostile_headers(backend_: str) -> None:
    dead = _owner_word(_dead_pid())
    proc = subprocess.run(
        [sys.executable, "-c", FUZZ, backend_, PREFIX, str(dead), str(EXAMPLES)],
        check=False, capture_output=True, timeout=600 if LONG else 120, cwd=TESTS_DIR,
    )
    assert proc.returncode == 0, (
        f"fuzz child exited with status {proc.returncode} (negative: killed by that "
        f"signal)\n{proc.stdout.decode(errors='replace')[-3000:]}\n"
        f"{proc.stderr.decode(errors='replace')[-6000:]}"
    )
    outcomes = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    report(f"hostile headers {backend_}", **outcomes)
    assert outcomes["examples"] >= EXAMPLES // 2
    # Both kinds of outcome happened, so the cases were neither all benign
    # nor all rejected at the door.
    assert outcomes["attach_refused"] > 0 and outcomes["attach_ok"] > 0
