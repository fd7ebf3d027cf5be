"""The C-API binding (src/fastshm/_cext*.c) under AddressSanitizer and
UndefinedBehaviorSanitizer (tests/test_sanitizers.py builds it with
-fsanitize=address,undefined and runs this file with the runtime preloaded
and PYTHONMALLOC=malloc, so the sanitizers see Python's own allocations).

    capi_harness.py EXTENSION SEED ITERATIONS ROUNDS MAIN BIG HOSTILE RAW ABSENT SPARE
                    QMAIN QBIG CMAIN

EXTENSION is the instrumented build; it is imported as ``fastshm._cext``
before anything imports the normal one, so every ``fastshm.Segment(...,
backend="native")``, ``fastshm.Queue(..., backend="native")`` and
``fastshm.SharedMemory`` below runs on it.  The nine names are fresh
names; everything made under them is deleted here.

Phases, all with a fixed seed:
  mapping   map_open / Mapping / unlink / self_id / owner_dead / SegmentCore()
  threads   ROUNDS times: threads storing and loading 16 MiB messages (the
            GIL released) while the main thread closes the object; each
            kind of thread alone first, then mixes
  model     ITERATIONS random operations checked against a model: stores of
            every size and buffer kind, loads, load_into, views, len,
            intact and wait with good and bad arguments
  closing   arguments whose __index__ closes the object mid-call
  closed    every method after close(); views used after close and delete
  hostile   10 * ROUNDS segments whose header is scribbled over (through
            fastshm.SharedMemory) between operations
  queue     QueueCore: its constructor's refusals (segments, the python
            backend's queues, bad sizes); ROUNDS rounds of threads blocked
            in or copying through put, get, get_into, get_many and put_many
            (big messages without the GIL) while the object is closed;
            ITERATIONS model-checked operations on a small ring (full,
            empty, wrapping around), and fewer on a ring of messages copied
            without the GIL, with blocked calls woken by another thread,
            and bad arguments; closing arguments; every method after
            close(); 10 * ROUNDS queues scribbled over between operations
  channel   PublisherCore, SubscriberCore, SampleCore: constructor refusals;
            ROUNDS rounds of threads receiving, publishing and lending 16 MiB
            messages while the objects are closed; ITERATIONS model-checked
            publishes, loans (committed and discarded), receives, releases
            and buffer exports (release refused while exported, use after
            release refused), on slots copied with and without the GIL;
            samples and views after close and delete; 10 * ROUNDS channels
            scribbled over between operations

Prints `key=value` counts on one line and exits 0 when every check held.
"""

import array
import collections
import importlib.util
import math
import queue as queue_mod
import random
import reprlib
import struct
import subprocess
import sys
import threading
import time

import fastshm
from fastshm import _common as C

ext_path, seed, iterations, rounds = sys.argv[1], *map(int, sys.argv[2:5])
main_name, big_name, hostile_name, raw_name, absent_name, spare_name = sys.argv[5:11]
qmain_name, qbig_name, cmain_name = sys.argv[11:14]

# The instrumented build goes in before anything imports the normal one.
assert "fastshm._cext" not in sys.modules and "fastshm._capi" not in sys.modules, sorted(
    m for m in sys.modules if m.startswith("fastshm"))
spec = importlib.util.spec_from_file_location("fastshm._cext", ext_path)
assert spec is not None and spec.loader is not None
cext = importlib.util.module_from_spec(spec)
sys.modules["fastshm._cext"] = cext
spec.loader.exec_module(cext)
fastshm._cext = cext  # type: ignore[attr-defined]
try:
    import numpy as np
except ImportError:
    np = None

rng = random.Random(seed)
counts: collections.Counter = collections.Counter()
GIL_BYTES = cext.GIL_RELEASE_BYTES
SEQ_MAX = (1 << 63) - 1
BIG = 16 << 20


def expect(excs, fn, *args, **kw):
    """The exception ``fn(*args, **kw)`` must raise (one of ``excs``)."""
    try:
        result = fn(*args, **kw)
    except excs as e:
        counts["err_" + type(e).__name__] += 1
        return e
    raise AssertionError(f"{getattr(fn, '__name__', fn)}{reprlib.repr(args)}{reprlib.repr(kw)} "
                         f"returned {reprlib.repr(result)}, expected {excs}")


def attempt(fn, *args, **kw):
    """fn's result, or None when it raised what a hostile header may cause."""
    try:
        return fn(*args, **kw)
    except (ValueError, TimeoutError) as e:  # FormatError is a ValueError
        counts["err_" + type(e).__name__] += 1
        return None


def open_seg(name, size, **kw):
    seg = fastshm.Segment(name, size, backend="native", **kw)
    assert isinstance(seg, cext.SegmentCore) and cext.SegmentCore in type(seg).__mro__, (
        type(seg).__mro__)
    return seg


# ---- data of every size and kind ----

def pick_size(cap):
    r = rng.random()
    if r < 0.25:
        return rng.randrange(0, 300)
    if r < 0.4:  # around the size from which copies let go of the GIL
        return min(cap, GIL_BYTES + rng.randrange(-3, 4))
    if r < 0.55:
        return cap
    if r < 0.65:
        return cap + rng.choice([1, 2, 63, 64, 4096, 1 << 20])
    return rng.randrange(0, cap + 1)


PRINTABLE = bytes(32 + b % 95 for b in range(256))


def utf8_text(n):
    """A str whose UTF-8 form has exactly n bytes, mostly non-ASCII."""
    unit = "".join(rng.choice(["\u00e9", "\u20ac", "\U0001f600", "a", "\u0800"])
                   for _ in range(16))
    size = len(unit.encode())
    return unit * (n // size) + "a" * (n % size)


def make_data(n):
    """(object to store, its bytes) or (object, the exception storing it raises)."""
    raw = rng.randbytes(n)
    kind = rng.randrange(13 if np is not None else 10)
    if kind == 0:
        return raw, raw
    if kind == 1:
        return bytearray(raw), raw
    if kind == 2:  # a contiguous slice out of a larger buffer
        return memoryview(rng.randbytes(7) + raw + bytes(5))[7:7 + n], raw
    if kind == 3:
        return memoryview(bytearray(2 * n + 4))[::2], ValueError  # not contiguous
    if kind == 4:
        return array.array("B", raw), raw
    if kind == 5:
        a = array.array("i", raw[: n - n % 4])
        return a, a.tobytes()
    if kind == 6:
        s = raw.translate(PRINTABLE).decode("ascii")
        return s, s.encode()
    if kind == 7:
        s = utf8_text(n)
        return s, s.encode()
    if kind == 8:
        return rng.choice(["\ud800", "abc\udfff", "\U0001f600\udc80"]), UnicodeEncodeError
    if kind == 9:
        return rng.choice([None, 42, 1.5, [1, 2], object()]), TypeError
    if kind == 10:
        rows = rng.choice([1, 2, 4, 8])
        a = np.frombuffer(raw[: n - n % rows], dtype=np.uint8).reshape(rows, -1).copy()
        return a, a.tobytes()
    if kind == 11:
        return np.zeros((4, max(2, n // 4)), dtype=np.uint8)[:, ::2], ValueError
    return np.frombuffer(raw[: n - n % 8], dtype=np.float64), raw[: n - n % 8]


# ---- operations checked against a model of the segment ----

def check_store(seg, cap, model):
    data, want = make_data(pick_size(cap))
    seq = seg.seq
    if isinstance(want, type):
        expect(want, seg.store, data)
    elif len(want) > cap:
        expect(ValueError, seg.store, data)
    else:
        assert seg.store(data) == seq + 1 == seg.seq == seg.last_seq
        counts["stores"] += 1
        counts["stores_without_gil"] += len(want) >= GIL_BYTES
        return want
    assert seg.seq == seq
    return model


def check_load_into(seg, model):
    n = len(model)
    kind = rng.randrange(8 if np is not None else 6)
    counts["load_intos"] += 1
    if kind == 0 and n > 0:
        # Allocated to the byte (numpy, array) or not (bytearray's spare NUL).
        make = rng.choice([bytearray, lambda k: array.array("B", bytes(k))]
                          + ([lambda k: np.zeros(k, dtype=np.uint8)] if np is not None else []))
        buf = make(n - 1)
        expect(ValueError, seg.load_into, buf)
        assert bytes(buf) == bytes(n - 1)
    elif kind == 1:
        expect(TypeError, seg.load_into,
               rng.choice([bytes(n + 1), memoryview(bytearray(n + 1)).toreadonly()]))
    elif kind == 2:
        expect(ValueError, seg.load_into, memoryview(bytearray(2 * n + 4))[::2])
    elif kind == 3:
        expect(TypeError, seg.load_into, rng.choice([None, 42, "text", [0] * 4]))
    elif kind == 4:
        buf = array.array("B", bytes(n + rng.randrange(0, 3)))
        assert seg.load_into(buf) == n and buf.tobytes()[:n] == model
    elif kind == 6:
        buf = np.zeros(n + rng.randrange(0, 100), dtype=np.uint8)
        assert seg.load_into(buf) == n and buf[:n].tobytes() == model
    elif kind == 7:
        expect(ValueError, seg.load_into, np.zeros((4, n + 2), dtype=np.uint8)[:, ::2])
    else:  # exact, or larger
        extra = rng.choice([0, 0, 1, 64, 4096])
        buf = bytearray(b"\xa5" * (n + extra))
        assert seg.load_into(buf) == n
        assert buf[:n] == model and buf[n:] == b"\xa5" * extra
        assert seg.last_seq == seg.seq


def check_intact(seg):
    seq = seg.seq
    assert seg.intact(seq) is True and seg.intact(0) is True
    if seq >= 1:
        assert seg.intact(seq - 1) is True
    if seq >= 3:  # (0 counts as the empty message, always intact)
        assert seg.intact(seq - 2) is False
    assert seg.intact(seq + 1) is False
    assert seg.intact(SEQ_MAX) in (True, False)
    if np is not None:
        assert seg.intact(np.int64(seq)) is True and seg.intact(np.uint64(seq)) is True
        expect(ValueError, seg.intact, np.uint64((1 << 64) - 1))
        expect(ValueError, seg.intact, np.int64(-1))
        expect(TypeError, seg.intact, np.float64(1.0))
    expect(ValueError, seg.intact, rng.choice([-1, -(1 << 70), 1 << 63, 1 << 64, 1 << 200]))
    expect(TypeError, seg.intact, rng.choice([True, False, 1.0, "1", None, b"1"]))
    counts["intacts"] += 1


def check_wait(seg):
    """Returns the message a store from another thread put there, or None."""
    seq = seg.seq
    counts["waits"] += 1
    r = rng.randrange(8)
    if r == 0:
        expect(TimeoutError, seg.wait, rng.choice([0, 0.0, -0.0, 1e-9, 1e-4, 0.001]), after=seq)
    elif r == 1 and seq >= 1:
        t = rng.choice([0, 0.0, 1e-6, math.inf, None, 1 << 80, 10 ** 400, 1e300, 5])
        assert seg.wait(t, after=rng.randrange(0, seq)) == seq == seg.last_seq
    elif r == 2:
        expect(ValueError, seg.wait, rng.choice([math.nan, -1, -1e-9, -math.inf, -(1 << 70)]),
               after=0)
        if seq >= 1:  # (with nothing newer than `after`, a wrong answer would block)
            expect((ValueError, OverflowError), seg.wait, -(10 ** 400), after=0)
    elif r == 3:
        expect(TypeError, seg.wait, rng.choice([True, False, "1", b"", [], 1j]))
    elif r == 4:
        expect(ValueError, seg.wait, 0, after=rng.choice([-1, 1 << 63, 1 << 64, 1 << 100]))
        expect(TypeError, seg.wait, 0, after=rng.choice([True, 1.5, "3", math.nan]))
    elif r == 5:
        expect(TypeError, lambda: seg.wait(1, timeout=2))
        expect(TypeError, lambda: seg.wait(0, 0))
        expect(TypeError, lambda: seg.wait(0, after=0, extra=1))
        expect(TypeError, lambda: seg.wait(tmeout=0))
        expect(TimeoutError, lambda: seg.wait(timeout=0, after=seq))
        expect(TimeoutError, lambda: seg.wait(after=seq, timeout=0))
    elif r == 6 and np is not None:
        expect(TimeoutError, seg.wait, np.float64(0.0005), after=np.int64(seq))
        expect(TimeoutError, seg.wait, np.int32(0), after=np.uint64(seq))
        expect(TypeError, seg.wait, np.float32(0.0))
    else:  # a wait that sleeps until another thread stores
        other = open_seg(seg.name, 1, create=False)
        timer = threading.Timer(0.002, other.store, (b"wake",))
        timer.start()
        try:
            got = seg.wait(10, after=seq)
        finally:
            timer.join()
            other.close()
        assert got == seq + 1 == seg.last_seq
        counts["woken"] += 1
        return b"wake"
    assert seg.seq == seq
    return None


def model_run(name, cap, n):
    seg = open_seg(name, cap, create=True)
    assert seg.capacity == cap and seg.created and not seg.readonly and not seg.closed
    assert seg.backend == "native" and seg.name == name
    assert seg._mapped_size >= C.seg_size_for(cap)
    assert seg.load() == b"" and len(seg) == 0 and seg.seq == 0 and seg.last_seq == 0
    assert len(seg.view()) == 0 and seg._lock_owner() == 0
    model = b""
    views = []
    for _ in range(n):
        counts["iterations"] += 1
        op = rng.randrange(10)
        if op <= 2:
            model = check_store(seg, cap, model)
        elif op == 3:
            assert seg.load() == model and seg.last_seq == seg.seq
            counts["loads"] += 1
            counts["loads_without_gil"] += len(model) >= GIL_BYTES
        elif op == 4:
            check_load_into(seg, model)
        elif op == 5:
            v = seg.view()
            assert v.readonly and v == model and seg.intact(seg.last_seq)
            if len(views) < 64:
                views.append(v)
            counts["views"] += 1
        elif op == 6:
            assert len(seg) == len(model) and seg.last_seq <= seg.seq
        elif op == 7:
            check_intact(seg)
        elif op == 8:
            model = check_wait(seg) or model
        else:
            assert seg._lock_owner() == 0 and seg._break_lock(12345) is False
            expect(TypeError, seg._break_lock, "x")
            expect(OverflowError, seg._break_lock, -1)
    return seg, views


# ---- arguments whose __index__ closes the object mid-call ----

class Closer:
    def __init__(self, seg, value):
        self.seg, self.value = seg, value

    def __index__(self):
        self.seg.close()
        return self.value


def closing_argument_checks(name):
    calls = [
        lambda seg, v: seg.intact(Closer(seg, v)),
        lambda seg, v: seg.wait(0, after=Closer(seg, v)),
        lambda seg, v: seg.wait(Closer(seg, 0), after=v),
    ]
    for call in calls:
        for v in (0, 1, 2):
            # A fresh object: nothing else keeps its mapping.
            seg = open_seg(name, 1, create=False)
            try:
                call(seg, min(v, seg.seq))
            except (ValueError, TimeoutError) as e:
                counts["err_" + type(e).__name__] += 1
            assert seg.closed
            counts["closing_arguments"] += 1


# ---- every method after close ----

def closed_checks(seg, views):
    seg.close()
    seg.close()
    assert seg.closed and seg.name
    buf = bytearray(16)
    for fn in (lambda: seg.store(b"x"), lambda: seg.store(""), seg.load,
               lambda: seg.load_into(buf), seg.view, lambda: seg.wait(0),
               lambda: seg.wait(None, after=0), lambda: seg.intact(0), lambda: len(seg),
               lambda: seg.seq, lambda: seg.capacity, lambda: seg.created,
               lambda: seg.readonly, lambda: seg._mapped_size, seg._lock_owner,
               lambda: seg._break_lock(1), seg.__enter__):
        expect(ValueError, fn)
        counts["closed_calls"] += 1
    expect(TypeError, lambda: seg.wait(1, 2))
    assert seg.last_seq >= 0 and seg.backend == "native" and "closed" in repr(seg)
    for v in views:  # views handed out before stay readable
        assert len(bytes(v)) == v.nbytes
        counts["views_after_close"] += 1


# ---- the module's other functions, and Mapping ----

def mapping_checks(name):
    m, created = cext.map_open(name, C.CREATE, 4096 + rng.randrange(1, 100), 0o600)
    assert created and m.size >= 4096 and m.readonly is False
    mv = memoryview(m)
    mv[:4] = b"abcd"
    part = mv[100:200]
    m2, created2 = cext.map_open(name, C.ATTACH, 0, 0o600)
    assert not created2 and bytes(memoryview(m2)[:4]) == b"abcd"
    del m, m2, mv
    part[:] = b"z" * 100  # the slice keeps its mapping
    expect(FileExistsError, cext.map_open, name, C.CREATE, 10, 0o600)
    expect(TypeError, cext.map_open, b"name", C.ATTACH, 0, 0o600)
    expect(TypeError, cext.map_open, name, C.ATTACH, 0)
    expect(OverflowError, cext.map_open, name, C.ATTACH, 1 << 64, 0o600)
    expect((OSError, ValueError), cext.map_open, absent_name, C.ATTACH, 0, 0o600)
    expect((OSError, ValueError), cext.map_open, spare_name, C.CREATE, -1, 0o600)
    cext.unlink(name)
    expect(FileNotFoundError, cext.unlink, name)
    expect(TypeError, cext.unlink, 42)
    assert bytes(part) == b"z" * 100
    del part
    assert cext.self_id() > 0 and cext.owner_dead(cext.self_id()) == 0
    expect(OverflowError, cext.owner_dead, -1)
    expect(TypeError, cext.owner_dead, "1")
    expect(TypeError, cext.SegmentCore, name, C.CREATE, 64, 0o600, extra=1)
    expect(TypeError, cext.SegmentCore, name, C.CREATE, 64)
    expect((OSError, ValueError), cext.SegmentCore, absent_name, C.ATTACH, 0, 0o600)
    for cap in (0, (1 << 64) - 1, 1 << 62):
        expect((OSError, ValueError, MemoryError), cext.SegmentCore, name, C.CREATE, cap, 0o600)
        try:
            cext.unlink(name)
        except OSError:
            pass
    counts["mapping_checks"] += 1


# ---- threads: 16 MiB copies without the GIL while the object is closed ----

def thread_round(name, payload, target, kinds):
    """Threads of the given kinds on one object, which the main thread
    closes under them; a second object stores all along, so loads race
    with writers (and fall back to copying under the writer lock)."""
    seg = open_seg(name, BIG)
    other = open_seg(name, BIG, create=False)
    other.store(payload)
    stop = threading.Event()
    failures = []

    def wait_once():
        try:
            seg.wait(0.01)
        except TimeoutError:
            counts["thread_wait_timeouts"] += 1

    work = {
        "store": ("thread_stores", lambda: seg.store(payload)),
        "store_view": ("thread_stores", lambda: seg.store(memoryview(payload)[1:])),
        "load": ("thread_loads", seg.load),
        "load_into": ("thread_loads", lambda: seg.load_into(target)),
        "view": ("thread_views", lambda: bytes(seg.view()[-4096:])),
        "wait": ("thread_waits", wait_once),
    }

    def loop(key, fn):
        try:
            while True:
                fn()
                counts[key] += 1
        except ValueError as e:
            if "closed" not in str(e):
                failures.append(repr(e))
        except BaseException as e:
            failures.append(repr(e))

    def other_stores():
        while not stop.is_set():
            other.store(payload)
            counts["thread_other_stores"] += 1

    threads = [threading.Thread(target=loop, args=work[k]) for k in kinds]
    storer = threading.Thread(target=other_stores)
    for t in threads + [storer]:
        t.start()
    time.sleep(rng.uniform(0.0, 0.05))
    seg.close()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    stop.set()
    storer.join(60)
    assert not failures, failures
    assert other.load()[:16] in (payload[:16], payload[1:17])
    other.close()
    counts["thread_rounds"] += 1


# ---- hostile bytes in the header between operations ----

U64_VALUES = [0, 1, 2, 3, 63, 64, 65, 127, 128, 4095, 4096, 1 << 31, 1 << 32, 1 << 62,
              SEQ_MAX - 1, SEQ_MAX, 1 << 63, (1 << 64) - 2, (1 << 64) - 1]


def dead_owner():
    """The lock word of a process of ours that is gone (a live one, or one
    of another pid namespace, would make stores wait for good)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(timeout=30)
    return (cext.self_id() & ~0xFFFFFFFF) | p.pid


def scribble(buf, cap, stride, lock_values):
    put = struct.pack_into
    f = rng.randrange(9)
    u64 = rng.choice(U64_VALUES) if rng.random() < 0.7 else rng.getrandbits(64)
    slot = C.HEADER_SIZE + rng.randrange(2) * stride
    if f == 0:  # (not 0: an opener would wait a second for the creator)
        put("<I", buf, C.H_MAGIC, rng.choice([0x4D485347, 0xFFFFFFFF, 0x46534D48, C.MAGIC]))
    elif f == 1:
        put("<H", buf, rng.choice([C.H_VERSION, C.H_HEADER_SIZE]),
            rng.choice([0, 1, 2, 64, 128, 0xFFFF]))
    elif f == 2:
        put("<Q", buf, C.H_CAPACITY, u64)
    elif f == 3:
        put("<Q", buf, C.H_SEQ, u64)
    elif f == 4:  # notify, waiters, lock_wake, lock_waiters
        put("<I", buf, rng.choice([C.H_NOTIFY, C.H_WAITERS, 72, 76]), rng.getrandbits(32))
    elif f == 5:
        put("<Q", buf, C.H_LOCK, rng.choice(lock_values))
    elif f == 6:
        put("<Q", buf, slot + C.S_SEQ, u64)
    elif f == 7:
        put("<Q", buf, slot + C.S_LENGTH, u64)
    else:  # a coherent current slot with a hostile length
        seq = rng.choice([1, 2, 3, SEQ_MAX, rng.randrange(1, 1 << 40)])
        slot = C.HEADER_SIZE + (seq & 1) * stride
        put("<Q", buf, C.H_SEQ, seq)
        put("<Q", buf, slot + C.S_SEQ, 2 * seq)
        put("<Q", buf, slot + C.S_LENGTH, rng.choice([0, 1, cap - 1, cap, cap + 1, u64]))
    counts["scribbles"] += 1


def hostile_op(seg, name):
    """One operation; returns the object to go on with (None: the header no
    longer opens)."""
    cap = seg.capacity  # as this object read it when it opened
    op = rng.randrange(11)
    counts["hostile_ops"] += 1
    if op == 0:
        r = attempt(seg.load)
        assert r is None or len(r) <= cap
    elif op == 1:
        buf = bytearray(rng.choice([0, 1, cap // 2, cap, cap + 64]))
        r = attempt(seg.load_into, buf)
        assert r is None or r <= len(buf)
    elif op == 2:
        v = attempt(seg.view)
        if v is not None:
            assert len(v) <= cap
            bytes(v)
            attempt(seg.intact, seg.last_seq)
    elif op == 3:
        r = attempt(len, seg)
        assert r is None or r <= cap
    elif op == 4:
        attempt(seg.store, rng.randbytes(rng.choice([0, 1, cap - 1, cap, cap + 1])))
    elif op == 5:
        attempt(seg.wait, rng.choice([0, 1e-4]), after=rng.choice([0, seg.last_seq, SEQ_MAX]))
    elif op == 6:
        attempt(seg.wait, 0)
    elif op == 7:
        attempt(seg.intact, rng.choice([0, 1, 2, seg.last_seq, SEQ_MAX]))
        assert seg.seq >= 0 and seg._lock_owner() >= 0
    elif op == 8:
        s2 = attempt(fastshm.Segment, name, create=False, backend="native")
        if s2 is not None:
            attempt(s2.load)
            attempt(s2.store, b"x" * min(s2.capacity, 3))
            s2.close()
    elif op == 9:
        seg._break_lock(seg._lock_owner())
    else:
        attempt(seg.view)
        seg.close()
        expect(ValueError, seg.load)
        return attempt(open_seg, name, 1, create=False)
    return seg


def hostile_run(name, n):
    lock_values = [0, 0, dead_owner()]
    for _ in range(n):
        cap = rng.choice([1, 7, 64, 100, 4096, GIL_BYTES + 5])
        seg = open_seg(name, cap, create=True)
        for i in range(rng.randrange(4)):
            seg.store(b"m%d" % i if cap > 1 else b"m")
        raw = fastshm.SharedMemory(name, backend="native")
        kept = seg.view()
        try:
            for _ in range(40):
                if rng.random() < 0.7:
                    scribble(raw.buf, cap, C.stride_for(cap), lock_values)
                nxt = hostile_op(seg, name)
                if nxt is None:
                    break
                seg = nxt
        finally:
            seg.close()
            raw.close()
            raw.unlink()
        bytes(kept)  # after close and unlink
        counts["hostile_rounds"] += 1


# ==== QueueCore ====

QUEUE_FLAGS = 48  # header offsets of docs/FORMAT.md, "Queues"
Q_HEAD, Q_TAIL, Q_COUNT, Q_DIRTY = 16, 32, 40, 88


def rec(n):
    """Ring bytes of a message of n bytes."""
    return 8 + ((n + 7) & ~7)


def open_q(name, size, **kw):
    q = fastshm.Queue(name, size, backend="native", **kw)
    assert isinstance(q, cext.QueueCore) and cext.QueueCore in type(q).__mro__, type(q).__mro__
    return q


def q_size(mx):
    r = rng.random()
    if r < 0.6:
        return rng.randrange(0, min(mx, 200) + 1)
    if r < 0.7:
        return rng.randrange(0, mx + 1)
    if r < 0.8 and mx >= GIL_BYTES:  # copied without the GIL
        return GIL_BYTES + rng.randrange(-3, 4)
    if r < 0.9:
        return mx
    return mx + rng.choice([1, 2, 7, 8, 9, 64])


def is_error(want):
    return isinstance(want, type) and issubclass(want, BaseException)


class QModel:
    """What the queue must hold: the messages, and the ring bytes they take."""

    def __init__(self, cap):
        self.cap, self.msgs, self.used, self.put_bytes = cap, collections.deque(), 0, 0

    def free(self):
        return self.cap - self.used

    def push(self, m):
        self.msgs.append(m)
        self.used += rec(len(m))
        self.put_bytes += rec(len(m))

    def pop(self):
        m = self.msgs.popleft()
        self.used -= rec(len(m))
        return m


def q_put_forms(q, obj, fits):
    """One way of putting obj; those that may block only when it fits."""
    forms = [lambda: q.put_nowait(obj), lambda: q.put(obj, False),
             lambda: q.put(obj, timeout=0), lambda: q.put(obj, True, 1e-4),
             lambda: q.put(obj, block=False, timeout=-1),  # (ignored when not blocking)
             lambda: q.put(data=obj, timeout=0.0)]
    if fits:
        forms += [lambda: q.put(obj), lambda: q.put(obj, True, None),
                  lambda: q.put(obj, timeout=math.inf)]
    return rng.choice(forms)


def q_check_put(q, model):
    obj, want = make_data(q_size(q.max_message))
    counts["q_puts"] += 1
    if is_error(want):
        expect(want, q_put_forms(q, obj, True))
    elif len(want) > q.max_message:
        e = expect(ValueError, q_put_forms(q, obj, True))
        assert "larger than queue" in str(e), e
    elif rec(len(want)) > model.free():
        e = expect(queue_mod.Full, q_put_forms(q, obj, False))
        assert str(rec(len(want))) in str(e), e
        counts["q_full"] += 1
    else:
        q_put_forms(q, obj, True)()
        model.push(want)
        counts["q_without_gil"] += len(want) >= GIL_BYTES


def q_items(k, mx):
    items, wants = [], []
    for _ in range(k):
        n = q_size(mx) if rng.random() < 0.3 else rng.randrange(0, min(mx, 64) + 1)
        obj, want = make_data(n)
        items.append(obj)
        wants.append(want)
    return items, wants


def q_check_put_many(q, model):
    items, wants = q_items(rng.randrange(0, 7), q.max_message)
    counts["q_put_manys"] += 1
    shape = rng.randrange(3)
    arg = items if shape == 0 else tuple(items) if shape == 1 else (x for x in items)
    error = None
    for w in wants:  # the first bad message decides, in order
        if is_error(w):
            error = w
            break
        if len(w) > q.max_message:
            error = ValueError
            break
    total = sum(rec(len(w)) for w in wants) if error is None else 0
    if error is None and total > q.capacity:
        error = ValueError
    if error is not None:
        expect(error, lambda: q.put_many(arg, rng.choice([True, False]), 1e-4))
    elif total > model.free():
        expect(queue_mod.Full, rng.choice([lambda: q.put_many(arg, False),
                                           lambda: q.put_many(arg, timeout=1e-4),
                                           lambda: q.put_many(messages=arg, timeout=0)]))
        counts["q_full"] += 1
    else:
        rng.choice([lambda: q.put_many(arg), lambda: q.put_many(arg, False),
                    lambda: q.put_many(arg, True, 10)])()
        for w in wants:
            model.push(w)


def q_check_get(q, model):
    counts["q_gets"] += 1
    if model.msgs:
        got = rng.choice([q.get, q.get_nowait, lambda: q.get(False), lambda: q.get(timeout=0),
                          lambda: q.get(True, 1e-3), lambda: q.get(block=False, timeout=-1),
                          lambda: q.get(timeout=None)])()
        assert type(got) is bytes and got == model.pop()
    else:
        e = expect(queue_mod.Empty, rng.choice([q.get_nowait, lambda: q.get(False),
                                                lambda: q.get(timeout=0),
                                                lambda: q.get(True, 1e-4),
                                                lambda: q.get(block=False, timeout=math.nan)]))
        assert "is empty" in str(e)
        counts["q_empty"] += 1


def q_buffer(m):
    """A writable buffer of m bytes, and how to read its bytes back."""
    kind = rng.randrange(5 if np is not None else 4)
    if kind == 0:
        b = bytearray(m)
        return b, lambda: bytes(b)
    if kind == 1:
        raw = bytearray(m + 3)
        return memoryview(raw)[3:], lambda: bytes(raw[3:])
    if kind == 2:
        a = array.array("B", bytes(m))
        return a, a.tobytes
    if kind == 3:
        a = array.array("d", bytes(m - m % 8))
        return a, a.tobytes
    a = np.zeros(m, dtype=np.uint8)
    return a, a.tobytes


def q_check_get_into(q, model):
    counts["q_get_intos"] += 1
    if not model.msgs:
        buf, _ = q_buffer(rng.randrange(0, 64))
        expect(queue_mod.Empty, rng.choice([lambda: q.get_into(buf, False),
                                            lambda: q.get_into(buf, timeout=1e-4),
                                            lambda: q.get_into(buffer=buf, block=False)]))
        counts["q_empty"] += 1
        return
    front = model.msgs[0]
    m = rng.choice([len(front), len(front) + rng.randrange(1, 100), max(0, len(front) - 1),
                    rng.randrange(0, len(front) + 1)])
    buf, read = q_buffer(m)
    room = len(read())
    call = rng.choice([lambda: q.get_into(buf), lambda: q.get_into(buf, False),
                       lambda: q.get_into(buf, True, 1.0), lambda: q.get_into(buffer=buf)])
    if room < len(front):
        e = expect(ValueError, call)
        assert "stays queued" in str(e) and str(len(front)) in str(e), e
        assert q.qsize() == len(model.msgs)
        counts["q_too_small"] += 1
    else:
        n = call()
        assert n == len(front) and read()[:n] == front
        model.pop()
        counts["q_without_gil"] += n >= GIL_BYTES


def q_check_get_many(q, model):
    counts["q_get_manys"] += 1
    k = rng.choice([None, None, 1, 2, 3, 7, 1000, 1 << 70] +
                   ([np.int64(2), np.uint8(5)] if np is not None else []))
    if not model.msgs:
        expect(queue_mod.Empty, rng.choice([lambda: q.get_many(k, False),
                                            lambda: q.get_many(k, timeout=1e-4),
                                            lambda: q.get_many(max_messages=k, block=False)]))
        counts["q_empty"] += 1
        return
    got = rng.choice([lambda: q.get_many(k), lambda: q.get_many(k, False),
                      lambda: q.get_many(max_messages=k, timeout=1.0)])()
    want = len(model.msgs) if k is None else min(int(k), len(model.msgs))
    assert type(got) is list and len(got) == want, (len(got), want)
    for g in got:
        assert type(g) is bytes and g == model.pop()


def q_check_snapshots(q, model):
    assert q.qsize() == len(model.msgs) and q.bytes_used == model.used
    assert q.empty() == (not model.msgs) and q.full() == (model.free() < 8)
    assert not q.closed and q._lock_owner() == 0
    assert repr(q).startswith("Queue(")


def q_check_bad_arguments(q, model):
    counts["q_bad_arguments"] += 1
    r = rng.randrange(7)
    if r == 0:
        expect(ValueError, rng.choice([q.get, q.get_many, lambda **kw: q.put(b"x", **kw)]),
               timeout=rng.choice([math.nan, -1, -1e-9, -math.inf, -(1 << 70)]))
    elif r == 1:
        expect(TypeError, rng.choice([lambda t: q.get(True, t), lambda t: q.put(b"", True, t),
                                      lambda t: q.get_into(bytearray(1), True, t),
                                      lambda t: q.put_many([], True, t),
                                      lambda t: q.get_many(None, True, t)]),
               rng.choice([True, False, "1", b"", [], 1j]))
    elif r == 2:
        expect(ValueError, q.get_many, rng.choice([0, -1, -(1 << 70)]))
        expect(TypeError, q.get_many, rng.choice([True, 1.5, "3", b"", math.nan]))
    elif r == 3:
        expect(TypeError, rng.choice([
            lambda: q.put(), lambda: q.put(b"x", True, 1, 2), lambda: q.put(b"x", blok=1),
            lambda: q.put(b"x", True, block=True), lambda: q.get(1, 2, 3),
            lambda: q.get(timeout=0, extra=1), lambda: q.get_into(),
            lambda: q.get_many(foo=1), lambda: q.put_many(), lambda: q.put_many(1),
            lambda: q.put_nowait(), lambda: q.get_nowait(1), lambda: q.qsize(1),
            lambda: q.get_into(b"read-only"), lambda: q.get_into(42),
            lambda: q.get_into(memoryview(b"abc")), lambda: q._break_lock("x")]))
    elif r == 4:
        expect(ValueError, rng.choice([
            lambda: q.get_into(memoryview(bytearray(64))[::2]),
            lambda: q.put(memoryview(bytearray(64))[::2]),
            lambda: q.put_many([b"a", memoryview(bytearray(64))[::2]])]))
        expect(OverflowError, q._break_lock, -1)
        assert q._break_lock(12345) is False
    elif r == 5:  # a block argument whose truth is an error
        class Bad:
            def __bool__(self):
                raise ZeroDivisionError("bool")
        expect(ZeroDivisionError, rng.choice([lambda: q.get(Bad()), lambda: q.put(b"", Bad()),
                                              lambda: q.get_many(1, Bad())]))
    else:  # truthy and falsy objects as block
        if model.msgs:
            assert q.get(rng.choice([0, "", None, [], 1, "yes"]), 1.0) == model.pop()
    assert q.qsize() == len(model.msgs)


def q_check_woken(q, model, name):
    """A blocked call that another thread's call lets go on."""
    other = open_q(name, 16, create=False)
    try:
        if not model.msgs:  # get, woken by a put
            timer = threading.Timer(0.002, other.put, (b"wake",))
            timer.start()
            try:
                got = rng.choice([lambda: q.get(), lambda: q.get(timeout=10),
                                  lambda: q.get_many(None, True, 10),
                                  lambda: [bytes(b[:q.get_into(b)]) for b in [bytearray(8)]]])()
            finally:
                timer.join()
            assert got in (b"wake", [b"wake"]), got
            counts["q_woken_get"] += 1
        else:  # a put that waits for room, which a get_many makes
            size = min(q.max_message, model.free() + rng.randrange(0, 64))
            data = rng.randbytes(size)
            taken = []
            timer = threading.Timer(0.002, lambda: taken.extend(other.get_many()))
            timer.start()
            try:
                rng.choice([lambda: q.put(data), lambda: q.put(data, True, 10),
                            lambda: q.put_many([data], timeout=10)])()
            finally:
                timer.join()
            want = []
            while model.msgs:
                want.append(model.pop())
            if taken == want:  # the put came after the take
                model.push(data)
            else:  # there was room after all: the take got it too
                assert taken == want + [data], (len(taken), len(want))
            counts["q_woken_put"] += 1
    finally:
        other.close()


def q_model_run(name, cap, n):
    q = open_q(name, cap, create=True)
    assert q.capacity == cap and q.max_message == cap - 8 and q.created and not q.readonly
    assert q.backend == "native" and q.name == name and q._mapped_size >= 128 + cap
    assert q.qsize() == 0 and q.bytes_used == 0 and q._lock_owner() == 0 and not q.closed
    model = QModel(cap)
    for _ in range(n):
        counts["q_iterations"] += 1
        op = rng.randrange(24)
        if op < 6:
            q_check_put(q, model)
        elif op < 8:
            q_check_put_many(q, model)
        elif op < 12:
            q_check_get(q, model)
        elif op < 15:
            q_check_get_into(q, model)
        elif op < 18:
            q_check_get_many(q, model)
        elif op < 20:
            q_check_snapshots(q, model)
        elif op < 23:
            q_check_bad_arguments(q, model)
        else:
            q_check_woken(q, model, name)
    q_check_snapshots(q, model)
    rest = q.get_many(block=False) if model.msgs else []
    assert rest == list(model.msgs)
    counts["q_wraps"] += model.put_bytes // cap
    return q


def q_raw_take_checks(name):
    """Takes made without the GIL into raw memory: a get_many with more than
    GIL_RELEASE_BYTES queued (many messages, and some longer than a raw
    chunk), and blocked calls that wake to many messages."""
    q = open_q(name, 3 * GIL_BYTES, create=True)
    other = open_q(name, 16, create=False)
    try:
        for _ in range(3):
            sent = []
            while q.bytes_used < GIL_BYTES + 4096:
                batch = [rng.randbytes(rng.choice([0, 1, 9, 100, 2000, 70000]))
                         for _ in range(rng.randrange(1, 200))]
                q.put_many(batch)
                sent += batch
            k = rng.choice([None, 37, len(sent), len(sent) + 5])
            got = q.get_many(k)
            want = sent if k is None else sent[:k]
            assert got == want, (len(got), len(want))
            rest = q.get_many(block=False) if len(want) < len(sent) else []
            assert got + rest == sent and q.qsize() == 0
            counts["q_raw_takes"] += 1
        for call in (lambda: q.get_many(), lambda: q.get_many(50, True, 10)):
            batch = [rng.randbytes(rng.randrange(0, 300)) for _ in range(40)]
            timer = threading.Timer(0.005, other.put_many, (batch,))
            timer.start()
            try:
                got = call()
            finally:
                timer.join()
            assert got == batch[:len(got)] and len(got) >= 1
            got += q.get_many(block=False) if q.qsize() else []
            assert got == batch
            counts["q_raw_takes"] += 1
    finally:
        other.close()
        q.delete()


def q_closing_argument_checks(name):
    """Arguments whose conversion closes the object mid-call."""
    calls = [
        lambda q: q.get(True, Closer(q, 0)),
        lambda q: q.put(b"x", True, Closer(q, 0)),
        lambda q: q.get_many(Closer(q, 1), False),
        lambda q: q.get_into(bytearray(8), True, Closer(q, 0)),
        lambda q: q.put_many((q.close() or b"m" for _ in range(3)), False),
    ]
    for call in calls:
        q = open_q(name, 4096, create=False)
        try:
            call(q)
        except (ValueError, queue_mod.Empty, queue_mod.Full) as e:
            counts["err_" + type(e).__name__] += 1
        assert q.closed
        counts["q_closing_arguments"] += 1
    q = open_q(name, 4096, create=False)
    q.get_many(block=False) if q.qsize() else None
    q.close()


def q_closed_checks(q):
    q.close()
    q.close()
    assert q.closed and q.name and q.backend == "native" and "closed" in repr(q)
    buf = bytearray(16)
    for fn in (lambda: q.put(b"x"), lambda: q.put(""), lambda: q.put_nowait(b"x"),
               lambda: q.put_many([b"x"]), lambda: q.put_many([]), q.get, q.get_nowait,
               lambda: q.get(False), lambda: q.get_into(buf), lambda: q.get_many(),
               lambda: q.get_many(1, False), q.qsize, q.empty, q.full,
               lambda: q.capacity, lambda: q.max_message, lambda: q.created,
               lambda: q.readonly, lambda: q.bytes_used, lambda: q._mapped_size,
               q._lock_owner, lambda: q._break_lock(1), q.__enter__):
        expect(ValueError, fn)
        counts["q_closed_calls"] += 1


def q_constructor_checks(name, seg_name):
    QC = cext.QueueCore
    expect(TypeError, QC, name, C.CREATE, 64, 0o600, extra=1)
    expect(TypeError, QC, name, C.CREATE, 64)
    expect(TypeError, QC, b"name", C.CREATE, 64, 0o600)
    expect(FileNotFoundError, QC, absent_name, C.ATTACH, 0, 0o600)
    for cap in (0, 8, 15, (1 << 64) - 1, 1 << 62):
        expect((OSError, ValueError, MemoryError), QC, name, C.CREATE, cap, 0o600)
        try:
            cext.unlink(name)
        except OSError:
            pass
    # A segment is no queue, and a queue no segment.
    seg = open_seg(seg_name, 64, create=True)
    e = expect(fastshm.FormatError, QC, seg_name, C.ATTACH, 0, 0o600)
    assert "is a fastshm Segment, not a Queue" in str(e), e
    seg.delete()
    q = QC(name, C.CREATE | cext.ANY_OWNER, 64, 0o600)
    assert q.created and q.capacity == 64
    e = expect(fastshm.FormatError, fastshm.Segment, name, create=False, backend="native")
    assert "is a fastshm Queue, not a Segment" in str(e), e
    q.put(b"kept")
    # A queue made by the python backend (its lock flag set): refused.
    raw = fastshm.SharedMemory(name, backend="native")
    struct.pack_into("<I", raw.buf, QUEUE_FLAGS, 1)
    e = expect(fastshm.FormatError, QC, name, C.ATTACH, 0, 0o600)
    assert type(e).__name__ == "ProtocolMismatch" and "python backend" in str(e), e
    e = expect(fastshm.FormatError, fastshm.Queue, name, backend="native")
    struct.pack_into("<I", raw.buf, QUEUE_FLAGS, 0)
    q2 = QC(name, C.OPEN_OR_CREATE, 16, 0o600)
    assert not q2.created and q2.capacity == 64 and q2.get_nowait() == b"kept"
    struct.pack_into("<I", raw.buf, 0, 0x12345678)  # not a queue any more
    expect(fastshm.FormatError, QC, name, C.ATTACH, 0, 0o600)
    raw.close()
    q2.close()
    q.close()
    cext.unlink(name)
    counts["q_constructor_checks"] += 1


# ---- threads: copies without the GIL, and waits, while the object is closed ----

def q_thread_round(name, big, kinds):
    cap = 4 * GIL_BYTES + 4096
    q = open_q(name, cap)
    other = open_q(name, cap, create=False)
    small = rng.randbytes(100)
    target = bytearray(GIL_BYTES + 64)
    trng = random.Random(rng.random())  # for the threads (the main sequence stays seeded)
    stop = threading.Event()
    failures = []

    def put_one():
        q.put(big if trng.random() < 0.5 else small)

    work = {
        "get": ("q_thread_gets", q.get),
        "get_into": ("q_thread_gets", lambda: q.get_into(target)),
        "get_many": ("q_thread_gets", q.get_many),
        "put": ("q_thread_puts", put_one),
        "put_many": ("q_thread_puts", lambda: q.put_many([small, big, small])),
    }

    def loop(key, fn):
        try:
            while True:
                fn()
                counts[key] += 1
        except ValueError as e:
            if "closed" not in str(e):
                failures.append(repr(e))
            else:
                counts["q_closed_under_threads"] += 1
        except BaseException as e:
            failures.append(repr(e))

    def traffic():  # the other side, now and then, so calls both wait and go
        while not stop.is_set():
            try:
                if trng.random() < 0.5:
                    other.put(big if trng.random() < 0.3 else small, timeout=0.01)
                else:
                    other.get_many(timeout=0.01)
                counts["q_thread_other"] += 1
            except (queue_mod.Full, queue_mod.Empty):
                pass
            time.sleep(0.002)

    threads = [threading.Thread(target=loop, args=work[k]) for k in kinds]
    side = threading.Thread(target=traffic)
    for t in threads + [side]:
        t.start()
    time.sleep(rng.uniform(0.0, 0.05))
    q.close()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    stop.set()
    side.join(60)
    assert not failures, failures
    while other.qsize():
        for m in other.get_many():
            assert m in (big, small), len(m)
    other.close()
    counts["q_thread_rounds"] += 1


# ---- hostile bytes in the header and the ring between operations ----

def q_scribble(buf, cap, lock_values):
    put = struct.pack_into
    f = rng.randrange(10)
    u64 = rng.choice(U64_VALUES + [cap, cap - 8, cap + 8]) if rng.random() < 0.7 \
        else rng.getrandbits(64)
    if f == 0:
        put("<Q", buf, rng.choice([Q_HEAD, Q_TAIL]), u64)
    elif f == 1:  # head and tail that agree with each other, not with the records
        head = rng.randrange(0, 1 << 40) & ~7
        put("<Q", buf, Q_HEAD, head)
        put("<Q", buf, Q_TAIL, head + (rng.randrange(0, cap + 1) & ~7))
    elif f == 2:
        put("<Q", buf, Q_COUNT, u64)
    elif f == 3:
        put("<I", buf, Q_DIRTY, rng.choice([0, 1, 0xFFFFFFFF]))
    elif f == 4:  # notify, waiters, lock_wake, lock_waiters
        put("<I", buf, rng.choice([24, 28, 72, 76]), rng.getrandbits(32))
    elif f == 5:
        put("<Q", buf, C.H_LOCK, rng.choice(lock_values))
    elif f == 6:  # a record length word anywhere in the ring
        put("<Q", buf, 128 + (rng.randrange(0, cap) & ~7), u64)
    elif f == 7:
        off = 128 + rng.randrange(0, cap)
        buf[off] = rng.randrange(256)
    elif f == 8:  # read by a later open only: the open object keeps its own
        put("<Q", buf, C.H_CAPACITY, u64)
    else:
        put("<I", buf, rng.choice([0, QUEUE_FLAGS]), rng.getrandbits(32))
    counts["q_scribbles"] += 1


def q_attempt(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except (ValueError, queue_mod.Full, queue_mod.Empty) as e:  # FormatError is a ValueError
        counts["err_" + type(e).__name__] += 1
        return None


def q_hostile_op(q, name):
    cap = q.capacity  # as this object read it when it opened
    op = rng.randrange(11)
    counts["q_hostile_ops"] += 1
    if op == 0:
        r = q_attempt(rng.choice([q.get_nowait, lambda: q.get(timeout=1e-4)]))
        assert r is None or len(r) <= cap - 8
    elif op == 1:
        buf = bytearray(rng.choice([0, 1, cap // 2, cap]))
        r = q_attempt(q.get_into, buf, rng.choice([False, True]), 1e-4)
        assert r is None or r <= len(buf)
    elif op == 2:
        r = q_attempt(q.get_many, rng.choice([None, 1, 3]), rng.choice([False, True]), 1e-4)
        assert r is None or sum(rec(len(m)) for m in r) <= cap
    elif op == 3:
        q_attempt(q.put, rng.randbytes(rng.choice([0, 1, cap // 3, cap - 8])),
                  rng.choice([False, True]), 1e-4)
    elif op == 4:
        q_attempt(q.put_many, [b"a" * rng.randrange(0, 20) for _ in range(rng.randrange(4))],
                  rng.choice([False, True]), 1e-4)
    elif op == 5:
        assert 0 <= q.bytes_used <= cap and q.qsize() >= 0 and q._lock_owner() >= 0
        q.full()
        q.empty()
    elif op == 6:
        q._break_lock(q._lock_owner())
    elif op == 7:
        q2 = q_attempt(fastshm.Queue, name, create=False, backend="native")
        if q2 is not None:
            q_attempt(q2.get_nowait)
            q_attempt(q2.put_nowait, b"x")
            q2.close()
    elif op == 8:
        q_attempt(lambda: q.get_many(block=False))
    elif op == 9:
        q_attempt(q.put_nowait, "text \u20ac")
    else:
        q.close()
        expect(ValueError, q.get_nowait)
        return q_attempt(open_q, name, 16, create=False)
    return q


def q_hostile_run(name, n):
    lock_values = [0, 0, dead_owner()]
    for _ in range(n):
        cap = rng.choice([16, 24, 64, 200, 4096])
        q = open_q(name, cap, create=True)
        for i in range(rng.randrange(4)):
            q_attempt(q.put_nowait, b"m%d" % i)  # (a 16-byte ring holds one)
        raw = fastshm.SharedMemory(name, backend="native")
        try:
            for _ in range(40):
                if rng.random() < 0.6:
                    q_scribble(raw.buf, cap, lock_values)
                nxt = q_hostile_op(q, name)
                if nxt is None:
                    break
                q = nxt
        finally:
            q.close()
            raw.close()
            raw.unlink()
        counts["q_hostile_rounds"] += 1


def queue_phases(qmain_name, qbig_name, seg_name):
    q_constructor_checks(qmain_name, seg_name)
    big = rng.randbytes(GIL_BYTES + 5)
    kinds = ["get", "get_into", "get_many", "put", "put_many"]
    for i in range(rounds):
        ks = [kinds[i]] if i < len(kinds) else rng.sample(kinds, rng.randrange(2, len(kinds) + 1))
        q_thread_round(qbig_name, big, ks)
    fastshm.Queue(qbig_name, create=False, backend="native").delete()
    # A small ring (full and wrapped around all the time), then one that
    # takes messages copied without the GIL.
    q = q_model_run(qmain_name, rng.choice([256, 512, 1000, 2048]), iterations)
    q.delete()
    q_raw_take_checks(qmain_name)
    q = q_model_run(qmain_name, 2 * GIL_BYTES + 8 * rng.randrange(1, 512),
                    max(100, iterations // 20))
    q_closing_argument_checks(qmain_name)
    q_closed_checks(q)
    fastshm.Queue(qmain_name, create=False, backend="native").delete()
    q_hostile_run(qmain_name, 10 * rounds)


# ---- the channel: PublisherCore, SubscriberCore, SampleCore ----

def open_pub(name, slot_size=None, slots=None, **kw):
    pub = fastshm.Publisher(name, slot_size, slots, backend="native", **kw)
    assert isinstance(pub, cext.PublisherCore), type(pub).__mro__
    return pub


def open_sub(name):
    sub = fastshm.Subscriber(name, backend="native")
    assert isinstance(sub, cext.SubscriberCore), type(sub).__mro__
    return sub


def c_constructor_checks(name, seg_name):
    expect(FileNotFoundError, open_pub, name, 64, 4, create=False)
    expect(FileNotFoundError, open_sub, name)
    for args in [(0, 4), (64, 0), (-1, 4), (64, -2), (1 << 62, 1 << 20)]:
        expect((ValueError, OverflowError, MemoryError, OSError), open_pub, name, *args,
               create=True)
    expect(TypeError, open_pub, name, "64", 4, create=True)
    expect(ValueError, open_pub, name, 64, 4, overflow="sometimes", create=True)
    seg = open_seg(seg_name, 64, create=True)
    try:
        expect(ValueError, open_pub, seg_name, 64, 4)  # FormatError: a segment
        expect(ValueError, open_sub, seg_name)
    finally:
        seg.delete()
    pub = open_pub(name, 64, 4, create=True)
    expect(ValueError, open_pub, name, 128, 4, create=False)  # disagrees
    pub.delete()
    counts["c_constructor_checks"] += 1


def c_payload(n):
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(n), None
    if kind == 1:
        return bytearray(rng.randbytes(n)), None
    if kind == 2:
        b = rng.randbytes(n + 3)
        return memoryview(b)[3:], None
    if kind == 3 and n % 4 == 0:
        a = array.array("i", rng.randbytes(n))
        return a, None
    t = "x" * n
    return t, t.encode()


def c_model_run(name, slot_size, n):
    """Random publishes, loans, receives, releases and buffer exports
    against a model: one subscriber in block mode, so every message arrives
    whole and in order."""
    slots = rng.choice([2, 3, 4, 8])
    pub = open_pub(name, slot_size, slots, create=True, overflow="block")
    sub = open_sub(name)
    expected = collections.deque()  # messages published, not yet received
    held = []  # (sample, bytes it must hold)
    views = []
    for _ in range(n):
        op = rng.randrange(10)
        if op <= 2:
            size = rng.choice([0, 1, slot_size, rng.randrange(slot_size + 1)])
            data, raw = c_payload(size)
            want = raw if raw is not None else bytes(memoryview(data).cast("B"))
            try:
                seq = pub.publish(data, 0)
            except TimeoutError:
                counts["err_TimeoutError"] += 1
                continue
            assert seq == pub.last_seq
            expected.append(want)
            counts["c_publishes"] += 1
        elif op == 3:
            size = rng.randrange(slot_size + 1)
            fill = rng.randbytes(size)
            fail = rng.random() < 0.3
            try:
                with pub.loan(size, 0) as buf:
                    assert len(buf) == size and not buf.readonly
                    buf[:] = fill
                    if fail:
                        raise KeyError("discard")
            except TimeoutError:
                counts["err_TimeoutError"] += 1
                continue
            except KeyError:
                counts["c_discards"] += 1
                continue
            expected.append(fill)
            counts["c_loans"] += 1
        elif op <= 6:
            try:
                sample = sub.receive(rng.choice([0, 1e-4]))
            except TimeoutError:
                assert not expected, len(expected)
                counts["err_TimeoutError"] += 1
                continue
            want = expected.popleft()
            assert len(sample) == len(want) and bytes(sample) == want
            assert sample.seq == sub.last_seq
            held.append((sample, want))
            counts["c_receives"] += 1
            if np is not None and rng.random() < 0.2:
                arr = np.frombuffer(sample, dtype=np.uint8)
                assert arr.tobytes() == want
                del arr
        elif op == 7 and held:
            i = rng.randrange(len(held))
            sample, want = held[i]
            if any(v.obj is sample for v, _ in views):
                expect(BufferError, sample.release)  # a kept view: the pin stays
                assert bytes(sample) == want
                if rng.random() < 0.5:
                    continue
                mine = [v for v, _ in views if v.obj is sample]
                views[:] = [(v, w) for v, w in views if v.obj is not sample]
                for v in mine:
                    v.release()
            del held[i]
            if rng.random() < 0.4:
                v = memoryview(sample)
                expect(BufferError, sample.release)
                assert bytes(v) == want  # the pin was kept
                v.release()
            sample.release()
            sample.release()  # twice: nothing more
            expect(ValueError, bytes, sample)
            expect(ValueError, memoryview, sample)
            counts["c_releases"] += 1
        elif op == 8 and held:
            sample, want = rng.choice(held)
            v = memoryview(sample)
            assert v.readonly and bytes(v) == want
            if rng.random() < 0.1 and len(views) < 64:
                views.append((v, want))  # kept, perhaps past close and delete
            else:
                v.release()
            counts["c_views"] += 1
        else:
            expect(ValueError, pub.publish, b"x" * (slot_size + 1), 0)
            expect(ValueError, pub.loan, slot_size + 1)
            expect(TypeError, pub.publish, 12345)
            expect(TypeError, sub.receive, "soon")
            expect((ValueError, OverflowError), pub.loan, -1)
            counts["c_bad_arguments"] += 1
    if not views:
        # One view at least kept past close and delete.
        if not held:
            while expected:
                s = sub.receive(0)
                assert bytes(s) == expected.popleft()
                s.release()
            pub.publish(b"kept", 0)
            held.append((sub.receive(0), b"kept"))
        sample, want = held[-1]
        views.append((memoryview(sample), want))
    return pub, sub, held, views


def c_closed_checks(name, pub, sub, held, views):
    for v, want in views:
        assert bytes(v) == want
    sub.close()
    for sample, _ in held:
        expect(ValueError, bytes, sample)  # closing the subscriber released it
        if any(v.obj is sample for v, _ in views):
            expect(BufferError, sample.release)  # views of it still alive
        else:
            sample.release()
    for v, want in views:
        bytes(v)  # still mapped: the view holds the mapping
        counts["c_views_after_close"] += 1
    expect(ValueError, sub.receive, 0)
    pub.close()
    expect(ValueError, pub.publish, b"x", 0)
    expect(ValueError, pub.loan, 1)
    fastshm.Publisher(name, create=False, backend="native").delete()
    for v, _ in views:
        bytes(v)
        v.release()
        counts["c_views_after_delete"] += 1
    counts["c_closed_checks"] += 1


def c_thread_round(name, kinds):
    """Threads blocked in or copying through receive, publish and loan (16
    MiB, without the GIL) while the main thread closes their objects."""
    pub = open_pub(name, BIG, 2, create=True)
    sub = open_sub(name)
    other = open_pub(name, create=False)
    payload = rng.randbytes(BIG)
    trng = random.Random(rng.random())
    failures = []

    def receiver():
        while True:
            with sub.receive() as s:
                assert len(s) in (BIG, 5)
            counts["c_thread_receives"] += 1

    def publisher():
        while True:
            pub.publish(payload if trng.random() < 0.5 else b"small")
            counts["c_thread_publishes"] += 1

    def lender():
        while True:
            with pub.loan(BIG) as buf:
                buf[:8] = b"12345678"
            counts["c_thread_loans"] += 1

    work = {"receive": receiver, "publish": publisher, "loan": lender}

    def loop(fn):
        try:
            fn()
        except ValueError as e:
            if "closed" in str(e) or "released" in str(e) or "taken away" in str(e):
                counts["c_closed_under_threads"] += 1
            else:
                failures.append(repr(e))
        except BaseException as e:
            failures.append(repr(e))

    threads = [threading.Thread(target=loop, args=(work[k],)) for k in kinds]
    for t in threads:
        t.start()
    time.sleep(rng.uniform(0.0, 0.05))
    sub.close()  # the publishers are no longer held back
    time.sleep(rng.uniform(0.0, 0.02))
    pub.close()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    assert not failures, failures
    other.delete()
    counts["c_thread_rounds"] += 1


def c_scribble(buf, lock_values):
    at = rng.randrange(min(len(buf), 256 + 64 * 16) // 8) * 8
    if at == 64:
        struct.pack_into("<Q", buf, at, rng.choice(lock_values))
    else:
        struct.pack_into("<Q", buf, at, rng.choice(
            [0, 1, 2, 3, rng.getrandbits(64), rng.getrandbits(32), (1 << 63) - 1]))
    counts["c_scribbles"] += 1


def c_hostile_op(pub, sub, name):
    op = rng.randrange(6)
    counts["c_hostile_ops"] += 1
    if op == 0:
        attempt(pub.publish, rng.randbytes(rng.randrange(pub.slot_size + 1)), 0)
    elif op == 1:
        s = attempt(sub.receive, rng.choice([0, 1e-4]))
        if s is not None:
            assert len(s) <= pub.slot_size
            bytes(s)
            s.release()
    elif op == 2:
        try:
            with pub.loan(rng.randrange(pub.slot_size + 1), 1e-4) as buf:
                buf[:1] = b"x" if len(buf) else b""
        except (ValueError, TimeoutError) as e:
            counts["err_" + type(e).__name__] += 1
    elif op == 3:
        pub.subscribers
        sub.received, sub.missed
        pub._break_lock(pub._lock_owner())
    elif op == 4:
        s2 = attempt(open_sub, name)
        if s2 is not None:
            attempt(s2.receive, 0)
            s2.close()
    else:
        p2 = attempt(open_pub, name, create=False)
        if p2 is not None:
            attempt(p2.publish, b"y", 0)
            p2.close()


def c_hostile_run(name, n):
    lock_values = [0, dead_owner()]
    for _ in range(n):
        pub = open_pub(name, rng.choice([8, 64, 256]), rng.choice([2, 3, 4]), create=True,
                       overflow=rng.choice(["block", "overwrite"]))
        sub = open_sub(name)
        raw = fastshm.SharedMemory(name, backend="native")
        try:
            for _ in range(30):
                if rng.random() < 0.6:
                    c_scribble(raw.buf, lock_values)
                c_hostile_op(pub, sub, name)
        finally:
            sub.close()
            pub.close()
            raw.close()
            raw.unlink()
        counts["c_hostile_rounds"] += 1


def channel_phases(cmain_name, seg_name):
    c_constructor_checks(cmain_name, seg_name)
    kinds = ["receive", "publish", "loan"]
    for i in range(rounds):
        ks = [kinds[i]] if i < len(kinds) else rng.sample(kinds, rng.randrange(2, 4))
        c_thread_round(cmain_name, ks)
    for slot_size in (rng.choice([16, 100, 4096]), GIL_BYTES + 8 * rng.randrange(1, 512)):
        pub, sub, held, views = c_model_run(cmain_name, slot_size,
                                            iterations if slot_size < GIL_BYTES
                                            else max(100, iterations // 20))
        c_closed_checks(cmain_name, pub, sub, held, views)
    c_hostile_run(cmain_name, 10 * rounds)


mapping_checks(raw_name)
payload = rng.randbytes(BIG)
target = bytearray(BIG)
# Each kind of thread alone first (then the object's mapping is held by
# nothing but that thread's call when the close comes), then mixes.
KINDS = ["store", "store_view", "load", "load_into", "view", "wait"]
for i in range(rounds):
    kinds = [KINDS[i]] if i < len(KINDS) else rng.sample(KINDS, rng.randrange(2, len(KINDS) + 1))
    thread_round(big_name, payload, target, kinds)
fastshm.Segment(big_name, 1, create=False, backend="native").delete()
del payload, target
assert sys.modules["fastshm._capi"]._cext is cext
seg, views = model_run(main_name, rng.choice([GIL_BYTES + 4321, 3 * GIL_BYTES + 1]), iterations)
closing_argument_checks(main_name)
closed_checks(seg, views)
fastshm.Segment(main_name, create=False, backend="native").delete()
for v in views:
    bytes(v)
    counts["views_after_delete"] += 1
del views
hostile_run(hostile_name, 10 * rounds)
queue_phases(qmain_name, qbig_name, spare_name)
channel_phases(cmain_name, spare_name)
counts["numpy"] = int(np is not None)
print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())), flush=True)
