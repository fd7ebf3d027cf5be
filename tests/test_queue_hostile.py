"""Hostile queue headers: whatever bytes another process writes into a
queue, opening it and every operation on it work or raise
``fastshm.FormatError`` (or queue.Full / queue.Empty); they never crash,
hang, or reach outside the mapping.

Risky operations run in a child process, so a crash shows up as a signal
exit status, and every child is bounded by a timeout; every call in the
children is non-blocking.  The hypothesis run makes 1 000 headers per route in
the quick form and 10 000 with ``FASTSHM_LONG=1``.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest
from conftest import BACKENDS, PREFIX, backend_name, run_python, shm_entries, unlink_quietly
from test_hostile import _dead_pid, _owner_word

import fastshm

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/dev/shm"), reason="resizes and reads objects in /dev/shm"
)

LONG = os.environ.get("FASTSHM_LONG") == "1"
EXAMPLES = 10000 if LONG else 1000
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

Q_MAGIC, Q_VERSION, Q_HEADER_SIZE, Q_CAPACITY, Q_HEAD = 0, 4, 6, 8, 16
Q_NOTIFY, Q_WAITERS, Q_TAIL, Q_COUNT, Q_FLAGS = 24, 28, 32, 40, 48
Q_LOCK, Q_LOCK_NEXT, Q_DIRTY, Q_RING = 64, 80, 88, 128
QUEUE_MAGIC = 0x51485346
SEGMENT_MAGIC = 0x4D485346
U64MAX = (1 << 64) - 1

# ---- a child that runs every operation, never blocking, and reports ----

PROBE = r"""
import faulthandler, json, queue, sys
faulthandler.enable()
import fastshm
name, backend = sys.argv[1], sys.argv[2]
out = {}
def attempt(key, fn):
    try:
        out[key] = ["ok", fn()]
    except fastshm.FormatError as e:
        out[key] = ["FormatError", str(e)[:120]]
    except queue.Full:
        out[key] = ["Full", None]
    except queue.Empty:
        out[key] = ["Empty", None]
    except Exception as e:
        out[key] = [type(e).__name__, str(e)[:300]]
attempt("attach", lambda: fastshm.Queue(name, create=False, backend=backend).capacity)
if out["attach"][0] == "ok":
    q = fastshm.Queue(name, create=False, backend=backend)
    cap, mx = q.capacity, q.max_message
    def got(b):
        assert type(b) is bytes and len(b) <= mx, (type(b), len(b), mx)
        return b.decode("latin-1")
    def got_many(bs):
        return [got(b) for b in bs]
    def qsize():
        n = q.qsize()
        assert type(n) is int and n >= 0, n
        return n
    def used():
        n = q.bytes_used
        assert type(n) is int and 0 <= n <= cap, (n, cap)
        return n
    def into():
        buf = bytearray(mx)
        n = q.get_into(buf, block=False)
        assert type(n) is int and 0 <= n <= mx, n
        return buf[:n].decode("latin-1")
    attempt("qsize", qsize)
    attempt("used", used)
    attempt("empty", q.empty)
    attempt("full", q.full)
    attempt("get", lambda: got(q.get_nowait()))
    attempt("get_into", into)
    attempt("get_many", lambda: got_many(q.get_many(2, block=False)))
    attempt("get0", lambda: got(q.get(timeout=0)))
    attempt("put", lambda: q.put_nowait(b"p" * min(mx, 5)))
    attempt("put_many", lambda: q.put_many([b"m", b""], block=False))
    attempt("put0", lambda: q.put(b"t", timeout=0))
    attempt("get_all", lambda: got_many(q.get_many(None, block=False)))
    attempt("qsize_after", qsize)
    attempt("used_after", used)
    attempt("repr", lambda: repr(q)[:10])
    q.close()
print(json.dumps(out), flush=True)
"""

ALLOWED = {"ok", "FormatError", "Full", "Empty"}


def probe(name: str, backend: str, timeout: float = 30) -> dict:
    proc = run_python(PROBE, name, backend, timeout=timeout, check=False)
    assert proc.returncode == 0, (
        f"probe died with status {proc.returncode} (negative: killed by that signal)\n"
        f"{proc.stderr.decode(errors='replace')[-4000:]}"
    )
    out: dict = json.loads(proc.stdout)
    bad = {k: v for k, v in out.items() if v[0] not in ALLOWED}
    assert not bad, f"operations failed in ways a corrupt queue must not cause: {bad}"
    return out


def _fresh(name: str, backend: str, capacity: int = 256,
           msgs: tuple = (b"first", b"second message", b"")) -> fastshm.SharedMemory:
    """A queue with a few messages, then the raw mapping over it."""
    with fastshm.Queue(name, capacity, create=True, backend=backend) as q:
        for m in msgs:
            q.put(m)
    return fastshm.SharedMemory(name, backend="python")


def _put(buf: memoryview, fmt: str, offset: int, value: int) -> None:
    struct.pack_into(fmt, buf, offset, value)


def _get(buf: memoryview, fmt: str, offset: int) -> int:
    return struct.unpack_from(fmt, buf, offset)[0]  # type: ignore[no-any-return]


# ---- targeted cases ----


@pytest.mark.parametrize(
    "field,fmt,offset,value",
    [
        ("magic", "<I", Q_MAGIC, QUEUE_MAGIC + 1),
        ("magic", "<I", Q_MAGIC, 0xFFFFFFFF),
        ("magic", "<I", Q_MAGIC, 0),  # never finished: refused after a bounded wait
        ("version", "<H", Q_VERSION, 0),
        ("version", "<H", Q_VERSION, 2),
        ("version", "<H", Q_VERSION, 0xFFFF),
        ("header size", "<H", Q_HEADER_SIZE, 64),
        ("header size", "<H", Q_HEADER_SIZE, 0xFFFF),
        ("capacity", "<Q", Q_CAPACITY, 0),
        ("capacity", "<Q", Q_CAPACITY, 8),
        ("capacity", "<Q", Q_CAPACITY, 250),  # not a multiple of 8
        ("capacity", "<Q", Q_CAPACITY, 264),  # beyond the mapping
        ("capacity", "<Q", Q_CAPACITY, 1 << 40),
        ("capacity", "<Q", Q_CAPACITY, 1 << 63),
        ("capacity", "<Q", Q_CAPACITY, U64MAX),
        ("flags", "<I", Q_FLAGS, 2),
        ("flags", "<I", Q_FLAGS, 0xFFFFFFFF),
    ],
)
def test_bad_header_is_refused_at_attach(
    backend: str, name: str, field: str, fmt: str, offset: int, value: int
) -> None:
    raw = _fresh(name, backend)
    try:
        _put(raw.buf, fmt, offset, value)
        result = probe(name, backend, timeout=90)
        assert result["attach"][0] == "FormatError", (field, value, result)
    finally:
        raw.close()


def test_flipped_lock_protocol_is_refused(backend: str, name: str) -> None:
    """A queue whose flags name the other backend's lock: refused by the
    explicit backend with the mismatch, nothing touched."""
    raw = _fresh(name, backend)
    try:
        flags = _get(raw.buf, "<I", Q_FLAGS)
        _put(raw.buf, "<I", Q_FLAGS, flags ^ 1)
        before = bytes(raw.buf)
        result = probe(name, backend)
        assert result["attach"][0] == "FormatError", result
        made_by = "native" if backend_name(backend) == "python" else "python"
        assert f"made by the {made_by} backend" in result["attach"][1], result
        assert bytes(raw.buf) == before
    finally:
        raw.close()


@pytest.mark.parametrize(
    "head,tail",
    [
        (4, 56), (0, 52), (0, 3), (64, 0), (0, 264), (0, 1 << 40), (8, U64MAX & ~7),
        (1 << 63, (1 << 63) + 512),
    ],
)
def test_bad_head_or_tail(backend: str, name: str, head: int, tail: int) -> None:
    """Counters that are not multiples of 8, or further apart than the
    ring: puts and gets refuse them, snapshots stay in range."""
    raw = _fresh(name, backend)
    try:
        _put(raw.buf, "<Q", Q_HEAD, head)
        _put(raw.buf, "<Q", Q_TAIL, tail)
        result = probe(name, backend)
        assert result["attach"][0] == "ok"
        for op in ("get", "get_into", "get_many", "get0", "put", "put_many", "put0"):
            assert result[op][0] == "FormatError", (op, result)
    finally:
        raw.close()


@pytest.mark.parametrize("length", [249, 256, 1 << 32, U64MAX, 100])
def test_bad_record_length(backend: str, name: str, length: int) -> None:
    """A front record longer than the ring, or than what is queued (100:
    the three queued records take 48 bytes)."""
    raw = _fresh(name, backend)
    try:
        _put(raw.buf, "<Q", Q_RING, length)
        result = probe(name, backend)
        for op in ("get", "get_into", "get_many", "get0"):
            assert result[op][0] == "FormatError", (op, result)
        # The queue is not made worse: the record is still refused.
        assert probe(name, backend)["get"][0] == "FormatError"
    finally:
        raw.close()


def test_bad_second_record_after_a_good_one(backend: str, name: str) -> None:
    raw = _fresh(name, backend)
    try:
        _put(raw.buf, "<Q", Q_RING + 16, 1 << 20)  # the second record's length
        result = probe(name, backend)
        assert result["get"] == ["ok", "first"]
        assert result["get_into"][0] == "FormatError", result
        assert result["get_many"][0] == "FormatError", result
    finally:
        raw.close()


@pytest.mark.parametrize("first", ["put", "get"])
def test_stale_count_is_recounted_when_dirty(backend: str, name: str, first: str) -> None:
    """A lock holder that died between its commit and the count leaves
    ``dirty``: the next lock holder recounts, whatever it came to do."""
    raw = _fresh(name, backend)
    try:
        _put(raw.buf, "<Q", Q_COUNT, 12345)
        _put(raw.buf, "<I", Q_DIRTY, 1)
        with fastshm.Queue(name, create=False, backend=backend) as q:
            if first == "put":
                q.put(b"x", timeout=0)
                assert q.qsize() == 4
                assert q.get_many(None, block=False) == [b"first", b"second message", b"", b"x"]
            else:
                assert q.get(timeout=0) == b"first"
                assert q.qsize() == 2
                assert q.get_many(None, block=False) == [b"second message", b""]
            assert q.qsize() == 0 and _get(raw.buf, "<I", Q_DIRTY) == 0
    finally:
        raw.close()


def test_dirty_with_corrupt_records_is_refused(backend: str, name: str) -> None:
    raw = _fresh(name, backend)
    try:
        _put(raw.buf, "<I", Q_DIRTY, 1)
        _put(raw.buf, "<Q", Q_RING + 16, 1 << 20)
        result = probe(name, backend)
        for op in ("get", "get_into", "get_many", "put", "put_many"):
            assert result[op][0] == "FormatError", (op, result)
        assert result["qsize"][0] == "ok"
    finally:
        raw.close()


def test_count_without_dirty_is_only_a_snapshot(backend: str, name: str) -> None:
    """A wrong count (without the dirty mark) misleads qsize, never a get."""
    raw = _fresh(name, backend)
    try:
        _put(raw.buf, "<Q", Q_COUNT, U64MAX)
        result = probe(name, backend)
        assert result["get"] == ["ok", "first"]
        assert result["get_into"] == ["ok", "second message"]
        assert result["get_many"] == ["ok", [""]]
    finally:
        raw.close()


def test_capacity_grown_after_attach_stays_inside_the_mapping(backend: str, name: str) -> None:
    """The ring's size is read once at open: a header rewritten later cannot
    stretch a put or get past the mapping."""
    raw = _fresh(name, backend, msgs=())
    try:
        with fastshm.Queue(name, create=False, backend=backend) as q:
            _put(raw.buf, "<Q", Q_CAPACITY, 1 << 40)
            _put(raw.buf, "<Q", Q_HEAD, (1 << 40) - 64)
            _put(raw.buf, "<Q", Q_TAIL, (1 << 40) - 64)
            for i in range(20):  # round the real ring several times
                q.put(bytes([i]) * 200, timeout=0)
                assert q.get(timeout=0) == bytes([i]) * 200
            assert q.capacity == 256 and q.qsize() == 0
    finally:
        raw.close()


def test_lock_held_by_dead_process_is_taken_over(backend: str, name: str) -> None:
    raw = _fresh(name, backend)
    try:
        _put(raw.buf, "<Q", Q_LOCK, _owner_word(_dead_pid()))
        _put(raw.buf, "<I", Q_DIRTY, 1)
        _put(raw.buf, "<Q", Q_COUNT, 7)
        result = probe(name, backend, timeout=60)
        assert result["get"] == ["ok", "first"]
        assert result["put"] == ["ok", None]
        assert _get(raw.buf, "<Q", Q_LOCK) == 0 and _get(raw.buf, "<I", Q_DIRTY) == 0
    finally:
        raw.close()


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="truncates /dev/shm/<name>")
def test_truncated_queue_is_refused(backend: str, name: str) -> None:
    raw = _fresh(name, backend)
    raw.close()
    os.truncate(os.path.join("/dev/shm", name), 200)
    assert probe(name, backend)["attach"][0] == "FormatError"


def test_segment_magic_in_a_queue(backend: str, name: str) -> None:
    raw = _fresh(name, backend)
    try:
        _put(raw.buf, "<I", Q_MAGIC, SEGMENT_MAGIC)
        result = probe(name, backend)
        assert result["attach"][0] == "FormatError"
        assert "Segment" in result["attach"][1]
    finally:
        raw.close()


# ---- hypothesis: random and adversarial headers, a batch per child ----

FUZZ = r"""
import faulthandler, json, os, queue, struct, sys
faulthandler.enable()
from hypothesis import HealthCheck, given, settings, strategies as st
import fastshm

backend, prefix, dead_owner, examples = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
U64MAX = (1 << 64) - 1
counter = [0]
outcomes = {"examples": 0, "attach_ok": 0, "attach_refused": 0, "op_refused": 0, "op_ok": 0,
            "op_full_empty": 0}

u64 = st.one_of(
    st.sampled_from([0, 1, 7, 8, 16, 24, 64, 248, 256, 264, 4096, 1 << 32, 1 << 62, 1 << 63,
                     U64MAX - 7, U64MAX]),
    st.integers(0, U64MAX),
    st.integers(0, 1 << 14).map(lambda n: n * 8),
)
fields = st.fixed_dictionaries({}, optional={
    # Not 0: a zero magic means "still being created", which an opener waits
    # a second for (test_bad_header_is_refused_at_attach covers it once).
    "magic": st.sampled_from([0x51485346, 0x4D485346, 0x51485347, 0xFFFFFFFF]),
    "version": st.sampled_from([1, 0, 2, 0xFFFF]),
    "header_size": st.sampled_from([128, 0, 64, 0xFFFF]),
    "capacity": u64,
    "head": u64,
    "tail": u64,
    "count": u64,
    "flags": st.sampled_from([0, 1, 2, 3, 0xFFFFFFFF]),
    "dirty": st.sampled_from([0, 1, 0xFFFFFFFF]),
    "notify": st.integers(0, 0xFFFFFFFF),
    "waiters": st.integers(0, 0xFFFFFFFF),
    "lock": st.sampled_from([0, dead_owner]),
    "lock_next": st.sampled_from([0, dead_owner]),
    "rec0": u64,
    "rec1": u64,
    "rec_at": st.tuples(st.integers(0, 1 << 16), u64),
})

OFFSETS = {"magic": ("<I", 0), "version": ("<H", 4), "header_size": ("<H", 6),
           "capacity": ("<Q", 8), "head": ("<Q", 16), "notify": ("<I", 24),
           "waiters": ("<I", 28), "tail": ("<Q", 32), "count": ("<Q", 40),
           "flags": ("<I", 48), "lock": ("<Q", 64), "lock_next": ("<Q", 80),
           "dirty": ("<I", 88)}


def write(buf, ring, f):
    for key, (fmt, off) in OFFSETS.items():
        if key in f:
            struct.pack_into(fmt, buf, off, f[key])
    # Record lengths where the front records are (as the header now says),
    # and anywhere in the ring.
    head = struct.unpack_from("<Q", buf, 16)[0]
    spots = []
    if "rec0" in f:
        spots.append((head % ring, f["rec0"]))
    if "rec1" in f:
        spots.append(((head + 16) % ring, f["rec1"]))
    if "rec_at" in f:
        spots.append(((f["rec_at"][0] * 8) % ring, f["rec_at"][1]))
    for at, value in spots:
        if 128 + at + 8 <= len(buf):
            struct.pack_into("<Q", buf, 128 + at, value)


def run_ops(q):
    cap, mx = q.capacity, q.max_message
    def attempt(fn):
        try:
            r = fn()
        except fastshm.FormatError:
            outcomes["op_refused"] += 1
            return None
        except (queue.Full, queue.Empty):
            outcomes["op_full_empty"] += 1
            return None
        outcomes["op_ok"] += 1
        return r
    n = attempt(q.qsize)
    assert n is None or (type(n) is int and n >= 0), n
    u = attempt(lambda: q.bytes_used)
    assert u is None or 0 <= u <= cap, (u, cap)
    attempt(q.empty)
    attempt(q.full)
    for b in (attempt(q.get_nowait), attempt(lambda: q.get(timeout=0))):
        assert b is None or (type(b) is bytes and len(b) <= mx)
    buf = bytearray(mx)
    k = attempt(lambda: q.get_into(buf, block=False))
    assert k is None or 0 <= k <= mx, k
    for bs in (attempt(lambda: q.get_many(3, block=False)),):
        assert bs is None or (1 <= len(bs) <= 3 and all(len(b) <= mx for b in bs))
    payload = b"h" * min(mx, 5)
    attempt(lambda: q.put_nowait(payload))
    batch = [b"a", b"bb"][: cap // 16]  # two fit a ring of 32 bytes
    attempt(lambda: q.put_many(batch, block=False))
    bs = attempt(lambda: q.get_many(None, block=False))
    assert bs is None or all(type(b) is bytes and len(b) <= mx for b in bs)
    u = attempt(lambda: q.bytes_used)
    assert u is None or 0 <= u <= cap, (u, cap)
    repr(q)


@settings(max_examples=examples, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(
    capacity=st.sampled_from([16, 64, 136, 4096]),
    extra=st.sampled_from([0, 0, 0, 8, 4096, -1, -64, -129]),
    msgs=st.lists(st.binary(max_size=20), max_size=4),
    taken=st.integers(0, 2),
    when=st.sampled_from(["before_attach", "after_attach"]),
    f=fields,
    noise=st.one_of(st.none(), st.binary(min_size=1, max_size=256)),
    noise_at=st.integers(0, 255),
)
def case(capacity, extra, msgs, taken, when, f, noise, noise_at):
    counter[0] += 1
    name = f"{prefix}qfz{os.getpid()}_{counter[0]}"
    q0 = fastshm.Queue(name, capacity, create=True, backend=backend)
    raw = None
    try:
        for m in msgs:
            try:
                q0.put_nowait(m[: q0.max_message])
            except queue.Full:
                break
        for _ in range(taken):
            try:
                q0.get_nowait()
            except queue.Empty:
                break
        size = os.stat(f"/dev/shm/{name}").st_size
        raw = fastshm.SharedMemory(name, backend="python")
        buf = raw.buf
        early = None
        if when == "after_attach":
            early = fastshm.Queue(name, create=False, backend=backend)
        write(buf, capacity, f)
        if noise is not None and noise_at < len(buf):
            end = min(len(buf), noise_at + len(noise))
            buf[noise_at:end] = noise[: end - noise_at]
            for off in (64, 80):  # keep the lock and its turn free or dead-owned
                if buf[off:off + 8] != bytes(8):
                    struct.pack_into("<Q", buf, off, dead_owner)
        if early is None and extra != 0:
            # Shrink the object under the header, or grow it: a later opener
            # maps less, or more, than the header says it needs.  (Not under
            # a live mapping: pages cut off there fault, as with any mmap;
            # nothing here touches buf after this.)
            os.truncate(f"/dev/shm/{name}", size + extra)
        outcomes["examples"] += 1
        if early is not None:
            run_ops(early)
            early.close()
            return
        try:
            q = fastshm.Queue(name, create=False, backend=backend)
        except fastshm.FormatError:
            outcomes["attach_refused"] += 1
            return
        outcomes["attach_ok"] += 1
        assert q.capacity + 128 <= os.stat(f"/dev/shm/{name}").st_size
        run_ops(q)
        q.close()
    finally:
        q0.close()
        if raw is not None:
            raw.close()
        fastshm._backend.resolve("python").unlink(name)

case()
print(json.dumps(outcomes), flush=True)
"""


@pytest.mark.parametrize("backend_", BACKENDS)
def test_hypothesis_hostile_queue_headers(backend_: str) -> None:
    dead = _owner_word(_dead_pid())
    try:
        proc = subprocess.run(
            [sys.executable, "-c", FUZZ, backend_, PREFIX, str(dead), str(EXAMPLES)],
            check=False, capture_output=True, timeout=900 if LONG else 150, cwd=TESTS_DIR,
        )
    finally:
        # A child that died mid-example leaves that example's queue.
        for entry in shm_entries():
            if entry.startswith(PREFIX + "qfz"):
                unlink_quietly(entry)
    assert proc.returncode == 0, (
        f"fuzz child exited with status {proc.returncode} (negative: killed by that "
        f"signal)\n{proc.stdout.decode(errors='replace')[-3000:]}\n"
        f"{proc.stderr.decode(errors='replace')[-6000:]}"
    )
    outcomes = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    print(f"[hostile queue headers {backend_}] {outcomes}")
    assert outcomes["examples"] >= EXAMPLES // 2
    # Both kinds of outcome happened: the cases were neither all benign nor
    # all refused at the door.
    assert outcomes["attach_refused"] > 0 and outcomes["attach_ok"] > 0
    assert outcomes["op_refused"] > 0 and outcomes["op_ok"] > 0


def test_size_zero_object_is_format_error(backend: str, name: str) -> None:
    """A name that exists with size 0 (a creator that died before sizing it,
    or another program's): refused however it is opened, and left alone."""
    import _posixshmem

    os.close(_posixshmem.shm_open("/" + name, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode=0o600))
    for kw in ({"create": False}, {}):
        with pytest.raises(fastshm.FormatError):
            fastshm.Queue(name, backend=backend, **kw)
    with pytest.raises(FileExistsError):
        fastshm.Queue(name, create=True, backend=backend)
    assert os.stat(os.path.join("/dev/shm", name)).st_size == 0
