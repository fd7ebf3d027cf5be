"""The C-API binding (src/fastshm/_cext.c) under AddressSanitizer and
UndefinedBehaviorSanitizer (tests/test_sanitizers.py builds it with
-fsanitize=address,undefined and runs this file with the runtime preloaded
and PYTHONMALLOC=malloc, so the sanitizers see Python's own allocations).

    capi_harness.py EXTENSION SEED ITERATIONS ROUNDS MAIN BIG HOSTILE RAW ABSENT SPARE

EXTENSION is the instrumented build; it is imported as ``fastshm._cext``
before anything imports the normal one, so every ``fastshm.Segment(...,
backend="native")`` and ``fastshm.SharedMemory`` below runs on it.  The six
names are fresh segment names; everything made under them is deleted here.

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

Prints `key=value` counts on one line and exits 0 when every check held.
"""

import array
import collections
import importlib.util
import math
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
counts["numpy"] = int(np is not None)
print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())), flush=True)
