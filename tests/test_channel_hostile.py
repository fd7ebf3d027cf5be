"""Hostile channel headers and tables: whatever bytes another process
writes into a channel, opening it (``Publisher(name, create=False)``,
``Subscriber(name)``) and every operation on it work or raise
``fastshm.FormatError`` (a ValueError; ``ProtocolMismatch`` is one),
``TimeoutError``, or the ValueError that says a subscription or loan was
taken away; they never crash, hang, or return something impossible: a
sample longer than the slot, a message number that goes down for one
subscriber, a negative or miscounted count.

Risky operations run in a child process, so a crash shows up as a signal
exit status, and every child is bounded by a timeout (and a watchdog inside
it that prints where it hangs); every call in the children waits 0 s or a
millisecond.  The lock word is only ever 0 or a dead process's: a live
holder would legitimately keep every call waiting out its timeout.  The
hypothesis run makes 1 000 channels per backend in the quick form and
10 000 with ``FASTSHM_LONG=1``.
"""

from __future__ import annotations

import functools
import json
import os
import struct
import subprocess
import sys
from typing import Any, Dict, Iterable, Sequence

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
U64MAX = (1 << 64) - 1
SEQ_MAX = U64MAX >> 2  # the largest message number: (k << 1) | 1 must not wrap

# docs/FORMAT.md, "Channels" (csrc/channel_internal.h's C_*, S_*, SUB_* defines).
C_MAGIC, C_VERSION, C_HEADER_SIZE, C_SLOT_SIZE, C_HEAD = 0, 4, 6, 8, 16
C_NOTIFY, C_WAITERS, C_SLOTS, C_MAX_SUBS, C_HISTORY, C_FLAGS = 24, 28, 32, 36, 40, 44
C_ROOM, C_ROOM_WAITERS, C_PAYLOAD, C_LOCK, C_LOCK_NEXT = 48, 52, 56, 64, 80
C_DIRTY, C_FREE_COUNT, C_SUB_MASK, C_SWEEP_AT, C_CHECKED_AT = 88, 92, 96, 104, 112
HEADER = 256
S_WORD, S_LENGTH, S_PINS, S_LOANER, S_LOANED_AT = 0, 8, 16, 24, 32
E_OWNER, E_CURSOR, E_MISSED, E_GEN, E_RECEIVED, E_PENDING = 0, 8, 16, 24, 32, 40
CHANNEL_MAGIC, QUEUE_MAGIC, SEGMENT_MAGIC = 0x43485346, 0x51485346, 0x4D485346
OVERWRITE, PYLOCK = 1, 2


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def geometry(slots: int, max_subscribers: int) -> Dict[str, int]:
    """Where the tables are, as FORMAT.md lays them out."""
    index = HEADER + 64 * slots
    free = index + _round_up(4 * slots, 64)
    subs = free + _round_up(4 * slots, 64)
    return {"index": index, "free": free, "subs": subs,
            "payload": _round_up(subs + 64 * max_subscribers, 4096)}


# ---- a child that opens the channel, runs every operation and reports ----

PROBE = r"""
import faulthandler, json, os, struct, sys
faulthandler.enable()
faulthandler.dump_traceback_later(50, exit=True)  # a hang shows where it is
import fastshm
from fastshm import _backend
name, backend, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
ME = _backend.resolve("python").self_id()
out = {}


class Discard(Exception):
    pass


def attempt(key, fn):
    try:
        out[key] = ["ok", fn()]
    except fastshm.FormatError as e:  # ProtocolMismatch too
        out[key] = ["FormatError", f"{type(e).__name__}: {str(e)[:200]}"]
    except TimeoutError as e:
        out[key] = ["Timeout", str(e)[:160]]
    except ValueError as e:
        out[key] = ["Lost" if "taken away" in str(e) else "ValueError", str(e)[:300]]
    except Exception as e:
        out[key] = [type(e).__name__, str(e)[:300]]
    return out[key][0] == "ok"


class Track:
    # A subscriber and what it received: each sample within the slot, its
    # number above the last one, received and missed counted.
    def __init__(self, s):
        self.s, self.last, self.n, self.held, self.missed = s, 0, 0, [], 0

    def take(self, timeout, keep=False):
        smp = self.s.receive(timeout=timeout)
        n, data, seq = len(smp), bytes(smp), smp.seq
        assert type(n) is int and 0 <= n <= self.s.slot_size and len(data) == n, (
            n, len(data), self.s.slot_size)
        assert type(seq) is int and seq > self.last, ("number went down", seq, self.last)
        self.last, self.n = seq, self.n + 1
        assert self.s.last_seq == seq, (self.s.last_seq, seq)
        missed = self.s.missed
        assert type(missed) is int and missed >= self.missed, ("missed went down", missed)
        self.missed = missed
        if keep:
            self.held.append((smp, data))
        else:
            smp.release()
        return [seq, data[:16].decode("latin-1")]

    def drain(self):
        got = []
        for _ in range(self.s.slots + 3):
            try:
                got.append(self.take(0))
            except TimeoutError:
                break
        return got

    def counts(self):
        r, m = self.s.received, self.s.missed
        assert type(r) is int and type(m) is int and r >= 0 and m >= 0, (r, m)
        assert r == self.n, ("received miscounted", r, self.n)
        return [r, m]

    def release(self):
        # A pinned slot is never reused: what a sample held says is what it
        # said when it was received.
        while self.held:
            smp, data = self.held.pop()
            now = bytes(smp)
            smp.release()
            assert now == data, ("a held sample changed", smp.seq, data, now)
        return None


def subscribers(o):
    n = o.subscribers
    assert type(n) is int and 0 <= n <= o.max_subscribers, n
    return n


def pub_ops(key, p):
    ss = p.slot_size

    def publish(timeout):
        seq = p.publish(b"p" * min(ss, 5), timeout=timeout)
        assert type(seq) is int and 1 <= seq <= (1 << 62) - 1 and p.last_seq == seq, seq
        return seq

    def loan_commit():
        n = min(ss, 3)
        with p.loan(n, timeout=0) as v:
            assert len(v) == n and not v.readonly, (len(v), n)
            v[:] = b"L" * n
        return p.last_seq

    def loan_discard():
        try:
            with p.loan(min(ss, 2), timeout=0) as v:
                v[:] = b"D" * len(v)
                raise Discard
        except Discard:
            return "discarded"

    attempt(key + "publish", lambda: publish(0))
    attempt(key + "loan_commit", loan_commit)
    attempt(key + "loan_discard", loan_discard)
    attempt(key + "publish_wait", lambda: publish(1e-3))
    attempt(key + "pub_subscribers", lambda: subscribers(p))
    attempt(key + "pub_repr", lambda: repr(p)[:12])


def sub_ops(key, t):
    attempt(key + "receive", lambda: t.take(0))
    attempt(key + "hold", lambda: t.take(0, keep=True))
    attempt(key + "receive_wait", lambda: t.take(1e-3))
    attempt(key + "counts", t.counts)
    attempt(key + "sub_subscribers", lambda: subscribers(t.s))
    attempt(key + "sub_repr", lambda: repr(t.s)[:12])


def u(fmt, off):
    return struct.unpack_from(fmt, buf, off)[0]


# A publisher and a subscriber opened before the bytes change, and what
# they did then.
pub0 = sub0 = t0 = None
if spec.get("early"):
    pub0 = fastshm.Publisher(name, create=False, backend=backend)
    sub0 = fastshm.Subscriber(name, backend=backend)
    t0 = Track(sub0)
    for m in spec.get("early_publish", []):
        pub0.publish(m.encode(), timeout=0)
    for i in range(spec.get("early_take", 0)):
        t0.take(0, keep=i >= spec.get("early_take", 0) - spec.get("early_hold", 0))
    if spec.get("early_loan"):  # a loan held while the bytes change
        loan = pub0.loan(3, timeout=0)
        loan.__enter__()[:] = b"HHH"

raw = fastshm.SharedMemory(name, backend="python")
buf = raw.buf
if spec.get("writes"):  # on a channel whose header is still sound
    N, M = u("<I", 32), u("<I", 36)
    index = 256 + 64 * N
    free = index + (4 * N + 63) // 64 * 64
    subs = free + (4 * N + 63) // 64 * 64
    ns = {
        "N": N, "M": M, "SS": u("<Q", 8), "head": u("<Q", 16), "index": index, "free": free,
        "subs": subs, "me": ME, "tag": ME >> 32 << 32, "dead": spec.get("dead", 0),
        "U64MAX": (1 << 64) - 1,
        "slot": lambda s: 256 + 64 * s,
        "idx": lambda k: index + 4 * (k % N),
        "slot_of": lambda k: 256 + 64 * u("<I", index + 4 * (k % N)),
        "sub": lambda i: subs + 64 * i,
        "u": u,
    }
    mine = [i for i in range(M) if u("<Q", subs + 64 * i) == ME]
    ns["sub0"] = subs + 64 * (mine[0] if mine else 0)
    lent = [s for s in range(N) if u("<Q", 256 + 64 * s + 24) == ME]
    ns["lent"] = 256 + 64 * (lent[0] if lent else 0)
for fmt, off, value, *count in spec.get("writes", []):
    at, v = eval(str(off), {}, ns), eval(str(value), {}, ns)
    for j in range(count[0] if count else 1):
        struct.pack_into(fmt, buf, at + j * struct.calcsize(fmt), v)

if spec.get("early_loan"):
    how = spec["early_loan"]
    attempt("e_" + how + "_held",
            lambda: loan.__exit__(None if how == "commit" else Discard, None, None))
if t0 is not None:
    sub_ops("e_", t0)
    pub_ops("e_", pub0)

    def more():  # the ring goes round: publish, receive, again
        for _ in range(spec.get("e_more", 0)):
            t0.drain()
            pub0.publish(b"more", timeout=0)
        return pub0.last_seq

    attempt("e_more", more)
    attempt("e_drain", t0.drain)
    attempt("e_release", t0.release)
    attempt("e_counts_after", t0.counts)

p = s = t = None
if attempt("attach", lambda: fastshm.Publisher(name, create=False, backend=backend)):
    p = out["attach"][1]
    out["attach"][1] = [p.slot_size, p.slots, p.max_subscribers, p.history, p.flags]
    size = os.stat(f"/dev/shm/{name}").st_size
    from fastshm._pure_channel import size_for
    assert 0 < size_for(p.slot_size, p.slots, p.max_subscribers) <= size, out["attach"]
    assert p.history < p.slots, out["attach"]
if attempt("subscribe", lambda: fastshm.Subscriber(name, backend=backend)):
    s = out["subscribe"][1]
    out["subscribe"][1] = None
    t = Track(s)
if t is not None:
    sub_ops("", t)
if p is not None:
    pub_ops("", p)
if t is not None:
    attempt("drain", t.drain)
    attempt("release", t.release)
    attempt("counts_after", t.counts)


def close_all():
    for o in (s, p, sub0, pub0):
        if o is not None:
            o.close()
            assert o.closed and "closed" in repr(o)


attempt("close", close_all)
if len(buf) >= 96:
    out["after"] = {"dirty": u("<I", 88), "lock": u("<Q", 64), "head": u("<Q", 16)}
raw.close()
print(json.dumps(out), flush=True)
"""

ALLOWED = {"ok", "FormatError", "Timeout", "Lost"}


@functools.lru_cache(maxsize=None)
def _dead_owner() -> int:
    """The owner word of a process that has exited (one per session: a
    process each would cost more than the probe)."""
    return _owner_word(_dead_pid())


def probe(name: str, backend: str, writes: Sequence[Any] = (), *,
          early: bool = False, early_publish: Sequence[str] = (), early_take: int = 0,
          early_hold: int = 0, early_loan: str = "", e_more: int = 0,
          timeout: float = 60) -> Dict[str, Any]:
    """Run PROBE on the channel ``name``: ``writes`` ([fmt, offset, value,
    (count)], offsets and values expressions of the channel's geometry and
    head) are made in the child, after the early publisher and subscriber
    (``early``) opened, and it took a loan (``early_loan``: "commit" or
    "discard" it after the writes); ``e_more`` messages more go through it
    after its operations."""
    spec = {"early": early, "early_publish": list(early_publish), "early_take": early_take,
            "early_hold": early_hold, "early_loan": early_loan, "e_more": e_more,
            "writes": [list(w) for w in writes],
            "dead": _dead_owner()}
    proc = run_python(PROBE, name, backend, json.dumps(spec), timeout=timeout, check=False,
                      cwd=TESTS_DIR)
    assert proc.returncode == 0, (
        f"probe died with status {proc.returncode} (negative: killed by that signal)\n"
        f"{proc.stdout.decode(errors='replace')[-2000:]}\n"
        f"{proc.stderr.decode(errors='replace')[-6000:]}"
    )
    out: Dict[str, Any] = json.loads(proc.stdout)
    bad = {k: v for k, v in out.items() if k != "after" and v[0] not in ALLOWED}
    assert not bad, f"operations failed in ways a corrupt channel must not cause: {bad}"
    return out


def _fresh(name: str, backend: str, slot_size: int = 64, slots: int = 4,
           max_subscribers: int = 4, history: int = 0, overflow: str = "block",
           msgs: Iterable[bytes] = (b"first", b"second message", b"")
           ) -> fastshm.SharedMemory:
    """A channel with a few messages published, then the raw mapping over it."""
    with fastshm.Publisher(name, slot_size, slots, history=history,
                           max_subscribers=max_subscribers, overflow=overflow, create=True,
                           backend=backend) as pub:
        for m in msgs:
            pub.publish(m, timeout=0)
    return fastshm.SharedMemory(name, backend="python")


def _put(buf: memoryview, fmt: str, offset: int, value: int) -> None:
    struct.pack_into(fmt, buf, offset, value)


def _get(buf: memoryview, fmt: str, offset: int) -> int:
    return struct.unpack_from(fmt, buf, offset)[0]  # type: ignore[no-any-return]


def _ops(result: Dict[str, Any], prefix: str = "") -> Dict[str, str]:
    keys = ("receive", "hold", "receive_wait", "publish", "loan_commit", "loan_discard",
            "publish_wait")
    return {k: result[prefix + k][0] for k in keys if prefix + k in result}


# ---- the layout ----


@pytest.mark.parametrize("slots,max_subscribers", [(2, 1), (4, 4), (64, 64), (100, 3)])
def test_layout_is_the_documented_one(backend: str, name: str, slots: int,
                                      max_subscribers: int) -> None:
    """The offsets this file writes at are where each backend keeps the
    fields: the header, the free stack (slot 0 on top), and a subscriber's
    entry at the documented place."""
    raw = _fresh(name, backend, 100, slots, max_subscribers, msgs=())
    try:
        g = geometry(slots, max_subscribers)
        assert _get(raw.buf, "<I", C_MAGIC) == CHANNEL_MAGIC
        assert (_get(raw.buf, "<H", C_VERSION), _get(raw.buf, "<H", C_HEADER_SIZE)) == (1, 256)
        assert _get(raw.buf, "<Q", C_SLOT_SIZE) == 100
        assert (_get(raw.buf, "<I", C_SLOTS), _get(raw.buf, "<I", C_MAX_SUBS)) == (
            slots, max_subscribers)
        assert _get(raw.buf, "<Q", C_PAYLOAD) == g["payload"]
        assert raw.size >= g["payload"] + 128 * slots
        assert _get(raw.buf, "<I", C_FREE_COUNT) == slots
        assert [_get(raw.buf, "<I", g["free"] + 4 * i) for i in range(slots)] == list(
            range(slots - 1, -1, -1))
        flags = _get(raw.buf, "<I", C_FLAGS)
        assert bool(flags & PYLOCK) == (backend_name(backend) == "python")
        with fastshm.Subscriber(name, backend=backend):
            owner = _get(raw.buf, "<Q", g["subs"] + E_OWNER)
            assert owner == fastshm._backend.resolve("python").self_id()
            assert _get(raw.buf, "<Q", C_SUB_MASK) == 1
        with fastshm.Publisher(name, create=False, backend=backend) as pub:
            assert pub.publish(b"xyz") == 1
        assert _get(raw.buf, "<Q", C_HEAD) == 1
        s = _get(raw.buf, "<I", g["index"] + 4 * (1 % slots))
        e = HEADER + 64 * s
        assert (_get(raw.buf, "<Q", e + S_WORD), _get(raw.buf, "<Q", e + S_LENGTH)) == (2, 3)
        start = g["payload"] + s * 128
        assert bytes(raw.buf[start : start + 3]) == b"xyz"
    finally:
        raw.close()


# ---- refused at the door ----

GOOD_SIZE = 4096 + 4 * 64  # slot_size 64, 4 slots, 4 subscribers


@pytest.mark.parametrize(
    "field,fmt,offset,value",
    [
        ("magic", "<I", C_MAGIC, CHANNEL_MAGIC + 1),
        ("magic", "<I", C_MAGIC, 0),  # never finished: refused after a bounded wait
        ("version", "<H", C_VERSION, 0),
        ("version", "<H", C_VERSION, 2),
        ("header size", "<H", C_HEADER_SIZE, 0),
        ("header size", "<H", C_HEADER_SIZE, 128),
        ("header size", "<H", C_HEADER_SIZE, 0xFFFF),
        ("slot size", "<Q", C_SLOT_SIZE, 0),
        ("slot size", "<Q", C_SLOT_SIZE, 65),  # a stride of 128: beyond the object
        ("slot size", "<Q", C_SLOT_SIZE, 4096),
        ("slot size", "<Q", C_SLOT_SIZE, 1 << 40),
        ("slot size", "<Q", C_SLOT_SIZE, SEQ_MAX + 1),
        ("slot size", "<Q", C_SLOT_SIZE, U64MAX),
        ("slots", "<I", C_SLOTS, 1),
        ("slots", "<I", C_SLOTS, 5),  # beyond the object
        ("slots", "<I", C_SLOTS, 1 << 20),
        ("slots", "<I", C_SLOTS, (1 << 20) + 1),
        ("slots", "<I", C_SLOTS, 0xFFFFFFFF),
        ("max subscribers", "<I", C_MAX_SUBS, 0),
        ("max subscribers", "<I", C_MAX_SUBS, 64),  # moves the payloads
        ("max subscribers", "<I", C_MAX_SUBS, 65),
        ("history", "<I", C_HISTORY, 4),
        ("history", "<I", C_HISTORY, 0xFFFFFFFF),
        ("flags", "<I", C_FLAGS, 4),
        ("flags", "<I", C_FLAGS, 0xFFFFFFFF),
        ("payload offset", "<Q", C_PAYLOAD, 0),
        ("payload offset", "<Q", C_PAYLOAD, 4096 + 64),
        ("payload offset", "<Q", C_PAYLOAD, 8192),
        ("payload offset", "<Q", C_PAYLOAD, U64MAX),
    ],
)
def test_bad_header_is_refused_at_open(
    backend: str, name: str, field: str, fmt: str, offset: int, value: int
) -> None:
    raw = _fresh(name, backend)
    try:
        assert raw.size == GOOD_SIZE
        flags = _get(raw.buf, "<I", C_FLAGS)
        if field == "flags":
            value |= flags & PYLOCK  # the other bits; the lock protocol is the next test's
        _put(raw.buf, fmt, offset, value)
        before = bytes(raw.buf)
        result = probe(name, backend, timeout=90)
        assert result["attach"][0] == "FormatError", (field, value, result)
        assert result["subscribe"][0] == "FormatError", (field, value, result)
        assert "ProtocolMismatch" not in result["attach"][1]
        assert bytes(raw.buf) == before  # nothing touched
    finally:
        raw.close()


def test_flipped_lock_protocol_is_refused(backend: str, name: str) -> None:
    """A channel whose PYLOCK flag names the other backend's lock (set on a
    native channel, cleared on a python one): refused by the explicit
    backend with the mismatch, naming the backend the flag says, and
    nothing touched.  The two locks do not exclude each other, so no
    operation may go ahead."""
    raw = _fresh(name, backend)
    try:
        flags = _get(raw.buf, "<I", C_FLAGS)
        _put(raw.buf, "<I", C_FLAGS, flags ^ PYLOCK)
        before = bytes(raw.buf)
        result = probe(name, backend)
        made_by = "native" if backend_name(backend) == "python" else "python"
        for key in ("attach", "subscribe"):
            assert result[key][0] == "FormatError", result
            assert result[key][1].startswith("ProtocolMismatch"), result
            assert f"made by the {made_by} backend" in result[key][1], result
            assert f"backend={made_by!r}" in result[key][1], result
        assert bytes(raw.buf) == before
    finally:
        raw.close()


@pytest.mark.parametrize("magic,kind", [(SEGMENT_MAGIC, "Segment"), (QUEUE_MAGIC, "Queue")])
def test_other_kinds_magic_in_a_channel(backend: str, name: str, magic: int, kind: str) -> None:
    raw = _fresh(name, backend)
    try:
        _put(raw.buf, "<I", C_MAGIC, magic)
        result = probe(name, backend)
        for key in ("attach", "subscribe"):
            assert result[key][0] == "FormatError", result
            assert f"is a fastshm {kind}, not a Channel" in result[key][1], result
    finally:
        raw.close()


def test_segment_or_queue_opened_as_a_channel(backend: str, shm_name: Any) -> None:
    seg, q = shm_name(), shm_name()
    with fastshm.Segment(seg, 64, create=True, backend=backend), \
            fastshm.Queue(q, 64, create=True, backend=backend):
        for n, kind in ((seg, "Segment"), (q, "Queue")):
            with pytest.raises(fastshm.FormatError, match=f"is a fastshm {kind}, not a "
                               f"Channel: open it with fastshm.{kind}"):
                fastshm.Publisher(n, create=False, backend=backend)
            with pytest.raises(fastshm.FormatError, match=f"is a fastshm {kind}, not a Channel"):
                fastshm.Publisher(n, 64, 4, backend=backend)  # open or create: it exists
            with pytest.raises(fastshm.FormatError, match=f"is a fastshm {kind}, not a Channel"):
                fastshm.Subscriber(n, backend=backend)


def test_channel_opened_as_a_segment_or_queue(backend: str, name: str) -> None:
    raw = _fresh(name, backend)
    raw.close()
    for cls in (fastshm.Segment, fastshm.Queue):
        with pytest.raises(fastshm.FormatError,
                           match=f"is a fastshm Channel, not a {cls.__name__}: open it with "
                           "fastshm.Publisher or fastshm.Subscriber"):
            cls(name, create=False, backend=backend)


@pytest.mark.parametrize("size", [GOOD_SIZE - 1, 4096, 257, 256, 200, 3])
def test_truncated_channel_is_refused(backend: str, name: str, size: int) -> None:
    raw = _fresh(name, backend)
    raw.close()
    os.truncate(os.path.join("/dev/shm", name), size)
    result = probe(name, backend)
    assert result["attach"][0] == "FormatError", result
    assert result["subscribe"][0] == "FormatError", result


def test_smaller_geometry_that_fits_is_judged_by_it(backend: str, name: str) -> None:
    """A header rewritten to a smaller channel that still fits the object
    and keeps the payload offset (1-byte slots, 3 of them, 1 subscriber) is
    a channel: opened as that one, it never returns a message longer than
    its slot, and it works.  (Its subscriber entry lies where the free stack
    was: cleared here, or it holds an owner that cannot be judged.)"""
    raw = _fresh(name, backend, history=3)
    try:
        _put(raw.buf, "<Q", C_SLOT_SIZE, 1)
        _put(raw.buf, "<I", C_SLOTS, 3)
        _put(raw.buf, "<I", C_MAX_SUBS, 1)
        _put(raw.buf, "<I", C_HISTORY, 2)
        entry = geometry(3, 1)["subs"]
        assert geometry(3, 1)["payload"] == _get(raw.buf, "<Q", C_PAYLOAD)
        raw.buf[entry : entry + 64] = bytes(64)
        result = probe(name, backend)
        flags = _get(raw.buf, "<I", C_FLAGS)
        assert result["attach"] == ["ok", [1, 3, 1, 2, flags]]
        assert result["subscribe"][0] == "ok"
        # "first" (5 bytes) and "second message" are longer than the slot
        # now; the empty message fits.
        assert result["drain"][0] == "ok", result
        received = [r[1] for r in (result["receive"], result["hold"], result["receive_wait"])
                    if r[0] == "ok"] + result["drain"][1]
        assert all(len(data) <= 1 for _, data in received), result
        assert result["publish"][0] == "ok" and result["loan_commit"][0] == "ok", result
    finally:
        raw.close()


# ---- counters and tables out of line ----


@pytest.mark.parametrize("overflow", ["block", "overwrite"])
@pytest.mark.parametrize("delta", [1000, 1 << 40])
def test_head_far_ahead_of_cursors(backend: str, name: str, overflow: str, delta: int) -> None:
    """``head`` moved far past every cursor: nothing it names is in place, so
    a subscriber skips to it, counts what it missed once, and goes on;
    publishers number on from it."""
    raw = _fresh(name, backend, overflow=overflow)
    try:
        result = probe(name, backend, [["<Q", C_HEAD, f"head + {delta}"]], early=True)
        head = 3 + delta
        assert result["e_receive"][0] == "Timeout", result
        assert result["e_publish"] == ["ok", head + 1], result
        assert result["e_drain"][0] == "ok" and result["e_drain"][1][0][0] == head + 1, result
        assert result["e_counts_after"] == ["ok", [3, delta]], result
        assert result["attach"][0] == "ok" and result["subscribe"][0] == "ok", result
        assert result["publish"][0] == "ok" and result["publish"][1] > head, result
        assert result["after"]["head"] > head
    finally:
        raw.close()


@pytest.mark.parametrize("head", [SEQ_MAX - 1, SEQ_MAX, SEQ_MAX + 1, 1 << 63, U64MAX])
def test_head_at_the_top_of_its_range(backend: str, name: str, head: int) -> None:
    """A message number that cannot grow: publishing is refused, nothing
    wraps; above SEQ_MAX (a corrupt channel) receiving and subscribing are
    refused too."""
    raw = _fresh(name, backend)
    try:
        result = probe(name, backend, [["<Q", C_HEAD, head]], early=True)
        ops = _ops(result, "e_")
        if head < SEQ_MAX:
            assert result["e_publish"] == ["ok", SEQ_MAX], result
        else:
            assert ops["publish"] == ops["loan_commit"] == "FormatError", result
        assert ops["publish_wait"] in ("FormatError", "Timeout"), result
        if head > SEQ_MAX:
            assert ops["receive"] == "FormatError", result
            assert result["subscribe"][0] == "FormatError", result
        else:
            assert result["subscribe"][0] == "ok", result
        assert result["attach"][0] == "ok", result
        assert result["after"]["head"] in (head, SEQ_MAX)
    finally:
        raw.close()


@pytest.mark.parametrize("cursor,outcome", [
    ("head + 1", "Timeout"), ("head + 2", "FormatError"), ("head + 1000", "FormatError"),
    ("U64MAX", "FormatError"), ("0", "ok"),
])
def test_cursor_beyond_head(backend: str, name: str, cursor: str, outcome: str) -> None:
    """A subscriber's cursor past ``head + 1`` is a corrupt channel: its
    receives are refused (the others' are not); 0 means 1: the oldest
    message still in place is received.  (With nobody subscribed a
    publisher may reuse any slot, so which one that is depends on the
    backend: the native one reuses the newest.)"""
    raw = _fresh(name, backend)
    try:
        result = probe(name, backend, [["<Q", "sub0 + 8", cursor]], early=True)
        assert result["e_receive"][0] == outcome, result
        if outcome == "ok":
            seq, text = result["e_receive"][1]
            assert text == {1: "first", 2: "second message", 3: ""}[seq], result
        assert result["subscribe"][0] == "ok" and result["publish"][0] == "ok", result
        assert result["drain"][0] == "ok", result
    finally:
        raw.close()


@pytest.mark.parametrize("slot", ["N", "N + 1", "0xFFFFFFFF"])
def test_index_entry_outside_the_slots(backend: str, name: str, slot: str) -> None:
    """The index names no slot for a message: that message is skipped
    (counted as missed), the ones around it are received."""
    raw = _fresh(name, backend)
    try:
        result = probe(name, backend, [["<I", "idx(head - 1)", slot]], early=True,
                       early_publish=["m1", "m2", "m3"])
        assert result["e_receive"] == ["ok", [4, "m1"]], result
        assert result["e_hold"] == ["ok", [6, "m3"]], result
        assert result["e_counts"] == ["ok", [2, 1]], result
        assert result["publish"][0] == "ok" and result["drain"][0] == "ok", result
    finally:
        raw.close()


def test_index_entry_naming_another_slot(backend: str, name: str) -> None:
    raw = _fresh(name, backend)
    try:
        result = probe(name, backend, [["<I", "idx(head - 1)", "u('<I', idx(head))"]],
                       early=True, early_publish=["m1", "m2", "m3"])
        assert result["e_receive"] == ["ok", [4, "m1"]], result
        assert result["e_hold"] == ["ok", [6, "m3"]], result
    finally:
        raw.close()


@pytest.mark.parametrize("length", ["SS + 1", "1 << 32", "1 << 63", "U64MAX"])
def test_slot_length_beyond_the_slot_is_never_returned(backend: str, name: str,
                                                        length: str) -> None:
    raw = _fresh(name, backend)
    try:
        result = probe(name, backend, [["<Q", "slot_of(head - 2) + 8", length]], early=True,
                       early_publish=["m1", "m2", "m3"])
        assert result["e_receive"] == ["ok", [5, "m2"]], result
        assert result["e_hold"] == ["ok", [6, "m3"]], result
        assert result["e_counts"] == ["ok", [2, 1]], result
        assert result["publish"][0] == "ok", result
    finally:
        raw.close()


@pytest.mark.parametrize("field,value", [
    ("loaner", "dead"), ("loaner", "0"), ("loaner", "me + 1"), ("word", "(head + 1) << 1"),
])
@pytest.mark.parametrize("how", ["commit", "discard"])
def test_loan_taken_away_under_its_publisher(backend: str, name: str, field: str, value: str,
                                             how: str) -> None:
    """A lent slot whose loaner or word was rewritten is no longer the
    publisher's: its commit says it was taken away (nothing published),
    its discard leaves the slot alone, and the channel goes on."""
    raw = _fresh(name, backend)
    try:
        off = {"loaner": "lent + 24", "word": "lent"}[field]
        result = probe(name, backend, [["<Q", off, value]], early=True, early_loan=how)
        if how == "commit":
            assert result["e_commit_held"][0] == "Lost", result
            assert "taken away" in result["e_commit_held"][1], result
        else:
            assert result["e_discard_held"] == ["ok", None], result
        assert result["after"]["head"] >= 3
        assert result["attach"][0] == "ok" and result["subscribe"][0] == "ok", result
    finally:
        raw.close()


@pytest.mark.parametrize("overflow", ["block", "overwrite"])
@pytest.mark.parametrize("dirty", [0, 1])
def test_held_sample_in_a_slot_lent_to_the_dead(backend: str, name: str, overflow: str,
                                                dirty: int) -> None:
    """The slot of a sample a subscriber holds is marked lent to a dead
    process (lent when the message was: its publisher died before clearing
    ``loaner``, as the repair would find it).  When that loan is reclaimed,
    after the ring has gone round and the message is out of reach, the slot
    is still pinned: it must not be lent again while the sample is held."""
    raw = _fresh(name, backend, overflow=overflow)
    try:
        writes = [["<Q", "slot_of(head) + 24", "dead"], ["<Q", "slot_of(head) + 32", "head"],
                  ["<I", C_DIRTY, dirty]]
        result = probe(name, backend, writes, early=True, early_publish=["held"],
                       early_take=1, early_hold=1, e_more=8)
        assert result["e_more"][0] == "ok", result
        assert result["e_release"] == ["ok", None], result
    finally:
        raw.close()


def test_dirty_with_garbage_is_repaired(backend: str, name: str) -> None:
    """``dirty`` left set by a holder that died mid-change, over a free stack
    of garbage, odd words, pins of nobody and loans of the dead: the next
    holder repairs it all, and the channel works."""
    raw = _fresh(name, backend, msgs=())
    try:
        writes = [
            ["<I", C_DIRTY, 1],
            ["<I", C_FREE_COUNT, 0xFFFFFFFF],
            ["<I", "free", 0xFFFFFFFF, 4],  # every entry of the stack names no slot
            ["<Q", C_SUB_MASK, U64MAX],
            ["<Q", "slot(0)", 7],  # odd: a publisher that died deciding
            ["<Q", "slot(1) + 16", "0xFFFF << 1"],  # pins of entries nobody owns
            ["<Q", "slot(2) + 24", "dead"],  # lent to a dead process
            ["<Q", "slot(2) + 32", 0],
            ["<Q", "slot(3) + 24", "dead"],
            ["<Q", "slot(3) + 32", "U64MAX"],
            ["<Q", "sub(3)", "dead"],  # a dead subscriber, far behind
            ["<Q", "sub(3) + 8", 1],
        ]
        result = probe(name, backend, writes, early=True)
        assert result["after"]["dirty"] == 0 and result["after"]["lock"] == 0, result
        ops = _ops(result, "e_")
        assert ops["publish"] == ops["loan_commit"] == ops["loan_discard"] == "ok", result
        assert result["e_drain"] == ["ok", [[1, "ppppp"], [2, "LLL"], [3, "ppppp"]]], result
        assert result["e_counts_after"] == ["ok", [3, 0]], result
        assert result["attach"][0] == "ok" and result["subscribe"][0] == "ok", result
        for op in ("publish", "loan_commit", "loan_discard", "publish_wait", "drain"):
            assert result[op][0] == "ok", (op, result)
        assert [seq for seq, _ in result["drain"][1]] == [4, 5, 6], result
    finally:
        raw.close()


def test_dirty_with_a_corrupt_head_is_refused(backend: str, name: str) -> None:
    raw = _fresh(name, backend)
    try:
        result = probe(name, backend, [["<I", C_DIRTY, 1], ["<Q", C_HEAD, U64MAX]], early=True)
        for op in ("receive", "publish", "loan_commit"):
            assert result["e_" + op][0] == "FormatError", (op, result)
        assert result["attach"][0] == "ok" and result["subscribe"][0] == "FormatError", result
        assert result["after"]["dirty"] == 0 and result["after"]["lock"] == 0, result
    finally:
        raw.close()


def test_lock_held_by_dead_process_is_taken_over(backend: str, name: str) -> None:
    raw = _fresh(name, backend)
    try:
        writes = [["<Q", C_LOCK, "dead"], ["<I", C_DIRTY, 1], ["<I", C_FREE_COUNT, 3]]
        result = probe(name, backend, writes, timeout=60)
        assert result["attach"][0] == result["subscribe"][0] == "ok", result
        assert result["publish"] == ["ok", 4], result
        assert result["after"] == {"dirty": 0, "lock": 0, "head": 6}, result
    finally:
        raw.close()


@pytest.mark.parametrize("overflow", ["block", "overwrite"])
def test_subscriber_that_cannot_be_judged(backend: str, name: str, overflow: str) -> None:
    """A subscriber entry owned by a process of another pid namespace, far
    behind: nothing is taken from it.  In block mode it holds publishers
    back (their calls end at their timeouts); in overwrite mode it does not.
    (A history of 3 keeps the three messages in three slots: with nobody
    subscribed, the native backend would reuse one slot for all of them.)"""
    raw = _fresh(name, backend, overflow=overflow, history=3)
    try:
        writes = [["<Q", "sub(2)", "0x1234567800000042"], ["<Q", "sub(2) + 8", 1],
                  ["<Q", C_SUB_MASK, 4]]
        result = probe(name, backend, writes)
        assert result["pub_subscribers"] == ["ok", 2], result
        assert result["publish"] == ["ok", 4], result  # the one slot never used
        outcome = "Timeout" if overflow == "block" else "ok"
        for op in ("loan_commit", "publish_wait"):
            assert result[op][0] == outcome, (op, result)
        assert result["loan_discard"][0] == outcome, result
    finally:
        raw.close()


@pytest.mark.parametrize("pid", ["0x80000001", "0xFFFFFFFF"])
def test_owner_words_beyond_the_pid_range(backend: str, name: str, pid: str) -> None:
    """Owner words of this pid namespace whose pid no process can have
    (above 2^31 - 1): they cannot be judged, as the C core says; no call
    may fail on them, nor leave the channel marked dirty."""
    raw = _fresh(name, backend, overflow="overwrite")
    try:
        writes = [["<Q", "sub(1)", f"tag | {pid}"], ["<Q", "sub(1) + 8", "head + 1"],
                  ["<Q", "slot(3) + 24", f"tag | {pid}"], ["<I", C_DIRTY, 1]]
        result = probe(name, backend, writes, early=True)
        for key, v in result.items():
            if key not in ("after", "e_receive", "e_hold", "e_receive_wait", "receive", "hold",
                           "receive_wait"):
                assert v[0] == "ok", (key, result)
        assert result["e_pub_subscribers"] == ["ok", 2], result
        assert result["after"]["dirty"] == 0, result
    finally:
        raw.close()


COUNTS = r"""
import faulthandler, json, struct, sys
faulthandler.enable()
import fastshm
name, backend = sys.argv[1], sys.argv[2]
U64MAX = (1 << 64) - 1
pub = fastshm.Publisher(name, create=False, backend=backend)
sub = fastshm.Subscriber(name, backend=backend)
raw = fastshm.SharedMemory(name, backend="python")
subs = 256 + 2 * 64 + 64 + 64  # 2 slots: the subscriber table
entry = subs + 64 * [i for i in range(4) if struct.unpack_from("<Q", raw.buf, subs + 64 * i)[0]][0]
seen = []
try:
    for i in range(3):  # the first is overwritten before it looks
        pub.publish(b"m%d" % i)
    for pending in (None, U64MAX, U64MAX - 1, 1 << 63, U64MAX):
        if pending is not None:  # lost, but not reported yet: says another process
            struct.pack_into("<Q", raw.buf, entry + 40, pending)
            pub.publish(b"n")
        with sub.receive(0) as smp:
            seen.append([smp.seq, sub.received, sub.missed])
finally:
    sub.close()
    pub.close()
    raw.close()
print(json.dumps(seen), flush=True)
"""


def test_missed_never_goes_down(backend: str, name: str) -> None:
    """A subscriber's ``pending`` count (lost, not reported yet) rewritten
    near 2^64: what ``missed`` says is nonsense then, but a total never goes
    down, and ``received`` counts one per message."""
    raw = _fresh(name, backend, slots=2, overflow="overwrite", msgs=())
    raw.close()
    proc = run_python(COUNTS, name, backend, timeout=60)
    seen = json.loads(proc.stdout)
    assert seen[0] == [2, 1, 1], seen
    assert [s for s, _, _ in seen] == [2, 3, 4, 5, 6], seen
    assert [r for _, r, _ in seen] == [1, 2, 3, 4, 5], seen
    missed = [m for _, _, m in seen]
    assert missed == sorted(missed) and missed[-1] >= U64MAX, seen


# ---- hypothesis: random and adversarial channels, a batch per child ----

FUZZ = r"""
import faulthandler, json, os, struct, sys, time
faulthandler.enable()
from hypothesis import HealthCheck, given, settings, strategies as st
import fastshm
from fastshm import _backend

backend, prefix, dead, examples = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
U64MAX = (1 << 64) - 1
SEQ_MAX = U64MAX >> 2
ME = _backend.resolve("python").self_id()
TAG = ME >> 32 << 32
counter = [0]
outcomes = {k: 0 for k in ("examples", "attach_ok", "attach_refused", "subscribe_ok",
                           "subscribe_refused", "subscribe_full", "op_ok", "op_refused",
                           "op_timeout", "op_lost", "received", "early_ok", "early_refused")}


class Discard(Exception):
    pass


u64 = st.one_of(
    st.sampled_from([0, 1, 2, 3, 4, 7, 8, 64, 65, 4096, 1 << 32, SEQ_MAX - 1, SEQ_MAX,
                     SEQ_MAX + 1, 1 << 63, U64MAX - 1, U64MAX]),
    st.integers(0, U64MAX),
    st.integers(0, 80),
)
u32 = st.one_of(
    st.sampled_from([0, 1, 2, 3, 4, 5, 8, 63, 64, 65, 1 << 20, (1 << 20) + 1, 0x80000000,
                     0xFFFFFFFF]),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 70),
)
# Around the current head, or anywhere.
near = st.one_of(st.tuples(st.just("head"), st.integers(-9, 3)), u64)
# Who holds a subscriber entry or a loan: nobody, the dead, this process,
# a process that cannot be judged (another namespace, or a pid no process
# has), a live one (init), or anything.
owner = st.one_of(st.sampled_from([0, dead, ME, TAG | 0x80000001, TAG | 0xFFFFFFFF, TAG | 1,
                                   0x1234567800000042]), st.integers(0, U64MAX))
# What an opener judges the channel by: left alone in about half the cases,
# so that the rest of the bytes get past the door.
door = st.one_of(st.just({}), st.fixed_dictionaries({}, optional={
    # Not 0: a zero magic means "still being created", which an opener waits
    # a second for (test_bad_header_is_refused_at_open covers it once).
    "magic": st.sampled_from([0x43485346, 0x4D485346, 0x51485346, 0x43485347, 0xFFFFFFFF]),
    "version": st.sampled_from([1, 0, 2, 0xFFFF]),
    "header_size": st.sampled_from([256, 0, 128, 0xFFFF]),
    "slot_size": st.one_of(u64, st.sampled_from([1, 8, 64, 100, 4096])),
    "slots": st.one_of(u32, st.sampled_from([2, 3, 4, 8])),
    "max_subs": st.one_of(u32, st.sampled_from([1, 2, 4, 64])),
    "history": u32,
    "flags": st.sampled_from([0, 1, 2, 3, 4, 0x80000000, 0xFFFFFFFF]),
    "payload": st.one_of(u64, st.sampled_from([4096, 8192, 4096 + 64])),
}))
counters = st.fixed_dictionaries({}, optional={
    "head": near,
    "notify": u32, "waiters": u32, "room": u32, "room_waiters": u32,
    # The lock: free, or its holder dead.  A live (or unjudgeable) holder
    # would make every call wait out its timeout, as it should.
    "lock": st.sampled_from([0, dead]),
    "lock_next": owner,
    "dirty": st.sampled_from([0, 1, 0xFFFFFFFF]),
    "free_count": u32,
    "sub_mask": u64,
    "sweep_at": near,
    "checked_at": st.one_of(u64, st.just("now")),
})
OFFSETS = {"magic": ("<I", 0), "version": ("<H", 4), "header_size": ("<H", 6),
           "slot_size": ("<Q", 8), "head": ("<Q", 16), "notify": ("<I", 24),
           "waiters": ("<I", 28), "slots": ("<I", 32), "max_subs": ("<I", 36),
           "history": ("<I", 40), "flags": ("<I", 44), "room": ("<I", 48),
           "room_waiters": ("<I", 52), "payload": ("<Q", 56), "lock": ("<Q", 64),
           "lock_next": ("<Q", 80), "dirty": ("<I", 88), "free_count": ("<I", 92),
           "sub_mask": ("<Q", 96), "sweep_at": ("<Q", 104), "checked_at": ("<Q", 112)}
slot_field = st.one_of(
    st.tuples(st.just(0), st.one_of(u64, st.tuples(st.just("word"), st.integers(-9, 3),
                                                    st.booleans()))),
    st.tuples(st.just(8), st.one_of(u64, st.integers(0, 4097))),
    st.tuples(st.just(16), u64),
    st.tuples(st.just(24), owner),
    st.tuples(st.just(32), near),
)
sub_field = st.one_of(
    st.tuples(st.just(0), owner),
    st.tuples(st.sampled_from([8]), near),
    st.tuples(st.sampled_from([16, 24, 32, 40]), u64),
)
tables = st.fixed_dictionaries({}, optional={
    "slot": st.lists(st.tuples(st.integers(0, 7), slot_field), max_size=5),
    "index": st.lists(st.tuples(st.integers(-9, 2), st.one_of(st.integers(0, 9), u32)),
                      max_size=3),
    "free": st.lists(st.tuples(st.integers(0, 7), st.one_of(st.integers(0, 9), u32)),
                     max_size=3),
    "sub": st.lists(st.tuples(st.integers(0, 3), sub_field), max_size=4),
    # The slot of one of the latest messages marked lent (when, by whom).
    "lent": st.lists(st.tuples(st.integers(-4, 0), owner, near), max_size=2),
})


def resolve(v, head):
    if type(v) is tuple and v[0] == "head":
        return (head + v[1]) & U64MAX
    if type(v) is tuple and v[0] == "word":
        return (((head + v[1]) << 1) | v[2]) & U64MAX
    if v == "now":
        return time.monotonic_ns()
    return v


def scribble(buf, g, h, t, noise, noise_at, noise2, noise2_at):
    n, m = g["slots"], g["max_subs"]
    head = struct.unpack_from("<Q", buf, 16)[0]
    for key, (fmt, off) in OFFSETS.items():
        if key in h:
            struct.pack_into(fmt, buf, off, resolve(h[key], head))
    head = struct.unpack_from("<Q", buf, 16)[0]  # as the tables are judged now
    for s, (off, v) in t.get("slot", []):
        struct.pack_into("<Q", buf, 256 + 64 * (s % n) + off, resolve(v, head))
    for d, v in t.get("index", []):
        struct.pack_into("<I", buf, g["index"] + 4 * ((head + d) % n), v)
    for i, v in t.get("free", []):
        struct.pack_into("<I", buf, g["free"] + 4 * (i % n), v)
    for i, (off, v) in t.get("sub", []):
        struct.pack_into("<Q", buf, g["subs"] + 64 * (i % m) + off, resolve(v, head))
    for d, who, at in t.get("lent", []):
        s = struct.unpack_from("<I", buf, g["index"] + 4 * ((head + d) % n))[0]
        if s < n:
            struct.pack_into("<QQ", buf, 256 + 64 * s + 24, who, resolve(at, head))
    if noise is not None:  # over the header and the slot table
        at = noise_at % (256 + 64 * n)
        end = min(at + len(noise), g["payload"])
        buf[at:end] = noise[: end - at]
    if noise2 is not None:  # over the index, the free stack, the subscribers
        at = g["index"] + noise2_at % (g["subs"] + 64 * m - g["index"])
        end = min(at + len(noise2), g["payload"])
        buf[at:end] = noise2[: end - at]
    # The lock free or dead-held (a noise over it included), and a magic,
    # as the strategies say.
    if struct.unpack_from("<Q", buf, 64)[0] not in (0, dead):
        struct.pack_into("<Q", buf, 64, dead)
    if struct.unpack_from("<I", buf, 0)[0] == 0:
        struct.pack_into("<I", buf, 0, 0x43485346)


def attempt(fn, early=False):
    try:
        r = fn()
    except fastshm.FormatError:
        outcomes["op_refused"] += 1
        outcomes["early_refused"] += early
        return None
    except TimeoutError:
        outcomes["op_timeout"] += 1
        return None
    except ValueError as e:
        if "taken away" not in str(e):
            raise
        outcomes["op_lost"] += 1
        return None
    outcomes["op_ok"] += 1
    outcomes["early_ok"] += early
    return r


class Track:
    # check: whether held samples must keep their bytes (not when the
    # handles opened after the bytes changed see another geometry, and may
    # lay payloads elsewhere).
    def __init__(self, s):
        self.s, self.last, self.n, self.held, self.check = s, 0, 0, [], True
        self.missed = 0

    def take(self, timeout, keep=False):
        smp = self.s.receive(timeout=timeout)
        n, data, seq = len(smp), bytes(smp), smp.seq
        assert type(n) is int and 0 <= n <= self.s.slot_size and len(data) == n, (
            n, len(data), self.s.slot_size)
        assert type(seq) is int and 1 <= seq > self.last, ("number went down", seq, self.last)
        self.last, self.n = seq, self.n + 1
        missed = self.s.missed  # counts what this subscriber lost, in all
        assert type(missed) is int and missed >= self.missed, ("missed went down", missed,
                                                               self.missed)
        self.missed = missed
        outcomes["received"] += 1
        if keep:
            self.held.append((smp, data))
        else:
            smp.release()
        return seq

    def counts(self):
        r, m = self.s.received, self.s.missed
        assert type(r) is int and type(m) is int and r >= 0 and m >= 0, (r, m)
        assert r == self.n, ("received miscounted", r, self.n)
        return r

    def release(self):
        # A pinned slot is never reused: a held sample says what it said.
        while self.held:
            smp, data = self.held.pop()
            now = bytes(smp)
            smp.release()
            assert not self.check or data is None or now == data, (
                "a held sample changed", smp.seq, data, now)


def subscribers(o):
    n = o.subscribers
    assert type(n) is int and 0 <= n <= o.max_subscribers, n
    return n


def run_ops(p, t, early=False, check=True):
    # Every operation once, without waiting (or a millisecond).
    if t is not None:
        t.check = check
        attempt(lambda: t.take(0), early)
        attempt(lambda: t.take(0, keep=True), early)
        attempt(lambda: t.take(1e-3), early)
    if p is not None:
        ss = p.slot_size

        def publish(timeout):
            seq = p.publish(b"p" * min(ss, 5), timeout=timeout)
            assert type(seq) is int and 1 <= seq <= SEQ_MAX and p.last_seq == seq, seq
            return seq

        def loan(commit):
            n = min(ss, 3)
            try:
                with p.loan(n, timeout=0) as v:
                    assert len(v) == n and not v.readonly, (len(v), n)
                    v[:] = b"L" * n
                    if not commit:
                        raise Discard
            except Discard:
                pass
            return p.last_seq

        attempt(lambda: publish(0), early)
        attempt(lambda: loan(True), early)
        attempt(lambda: loan(False), early)
        attempt(lambda: publish(1e-3), early)
        attempt(lambda: subscribers(p), early)
        repr(p)
    if t is not None:
        attempt(lambda: t.take(0, keep=True), early)
    if p is not None:
        # The ring goes round (sweeps, reuse) while samples are held.
        for _ in range(p.slots + 2):
            if attempt(lambda: publish(0), early) is None:
                break
            if t is not None:
                for _ in range(t.s.slots + 2):
                    if attempt(lambda: t.take(0), early) is None:
                        break
    if t is not None:
        for _ in range(t.s.slots + 2):
            if attempt(lambda: t.take(0), early) is None:
                break
        attempt(t.release, early)
        t.counts()
        subscribers(t.s)
        repr(t.s)


@settings(max_examples=examples, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(
    slot_size=st.sampled_from([1, 8, 64, 100, 4096]),
    slots=st.sampled_from([2, 3, 4, 8]),
    max_subs=st.sampled_from([1, 2, 4, 64]),
    history=st.integers(0, 7),
    overwrite=st.booleans(),
    msgs=st.lists(st.binary(max_size=12), max_size=8),
    taken=st.integers(0, 4),
    held=st.integers(0, 2),
    loan_held=st.booleans(),
    commit=st.booleans(),
    when=st.sampled_from(["live", "dead"]),
    extra=st.sampled_from([0, 0, 0, 4096, -1, -64, -4096]),
    h=st.tuples(door, counters).map(lambda dc: {**dc[0], **dc[1]}),
    t=tables,
    noise=st.one_of(st.none(), st.binary(min_size=1, max_size=64)),
    noise_at=st.integers(0, 1 << 16),
    noise2=st.one_of(st.none(), st.binary(min_size=1, max_size=64)),
    noise2_at=st.integers(0, 1 << 16),
)
def case(slot_size, slots, max_subs, history, overwrite, msgs, taken, held, loan_held, commit,
         when, extra, h, t, noise, noise_at, noise2, noise2_at):
    counter[0] += 1
    # A hang in one example shows where it is, and ends the child.
    faulthandler.dump_traceback_later(30, exit=True)
    name = f"{prefix}cfz{os.getpid()}_{counter[0]}"
    pub0 = fastshm.Publisher(name, slot_size, slots, history=min(history, slots - 1),
                             max_subscribers=max_subs,
                             overflow="overwrite" if overwrite else "block",
                             create=True, backend=backend)
    sub0 = t0 = ctx = view = raw = None
    others = []
    try:
        sub0 = fastshm.Subscriber(name, backend=backend)
        t0 = Track(sub0)
        for m in msgs:
            try:
                pub0.publish(m[:slot_size], timeout=0)
            except TimeoutError:
                break
        for i in range(taken):
            try:
                t0.take(0, keep=i < held)
            except TimeoutError:
                break
        if loan_held:
            try:
                ctx = pub0.loan(min(slot_size, 3), timeout=0)
                view = ctx.__enter__()
                view[:] = b"H" * len(view)
            except TimeoutError:
                ctx = None
        size = os.stat(f"/dev/shm/{name}").st_size
        raw = fastshm.SharedMemory(name, backend="python")
        buf = raw.buf
        n, m = slots, max_subs
        g = {"slots": n, "max_subs": m, "index": 256 + 64 * n}
        g["free"] = g["index"] + (4 * n + 63) // 64 * 64
        g["subs"] = g["free"] + (4 * n + 63) // 64 * 64
        g["payload"] = (g["subs"] + 64 * m + 4095) // 4096 * 4096
        assert struct.unpack_from("<Q", buf, 56)[0] == g["payload"]
        if when == "dead":
            # As a process killed now would leave it: its subscription, pins
            # and loan still in place, owned by a dead process.
            snap = bytearray(buf[: g["payload"]])
            if view is not None:
                view.release()
            t0.held.clear()
            for o in (sub0, pub0):
                o.close()
            for at in [g["subs"] + 64 * i for i in range(m)] + [
                    256 + 64 * s + 24 for s in range(n)]:
                if struct.unpack_from("<Q", snap, at)[0] == ME:
                    struct.pack_into("<Q", snap, at, dead)
            buf[: g["payload"]] = snap
            sub0 = pub0 = t0 = ctx = None
        geometry = bytes(buf[8:16]) + bytes(buf[32:48]) + bytes(buf[56:64])
        scribble(buf, g, h, t, noise, noise_at, noise2, noise2_at)
        same = geometry == bytes(buf[8:16]) + bytes(buf[32:48]) + bytes(buf[56:64])
        if when == "dead" and extra != 0 or extra > 0:
            # Shrink the object under the header, or grow it: an opener maps
            # less, or more, than the header says it needs.  (Shrunk only
            # under no live mapping: pages cut off there fault, as with any
            # mmap; nothing touches buf after this.)
            os.truncate(f"/dev/shm/{name}", size + extra)
        outcomes["examples"] += 1
        if t0 is not None:
            # The bytes changed under them: even a cursor moved back is the
            # channel's say; from here on the numbers must rise.
            # What it held from before may have lost its pins to the bytes.
            t0.last = 0
            t0.held = [(smp, None) for smp, _ in t0.held]
            run_ops(pub0, t0, early=True, check=same)
            if ctx is not None:
                attempt(lambda: ctx.__exit__(None if commit else Discard, None, None), True)
                ctx = None
        try:
            p = fastshm.Publisher(name, create=False, backend=backend)
        except fastshm.FormatError:
            outcomes["attach_refused"] += 1
            p = None
        else:
            outcomes["attach_ok"] += 1
            others.append(p)
            from fastshm._pure_channel import size_for
            need = size_for(p.slot_size, p.slots, p.max_subscribers)
            assert 0 < need <= os.stat(f"/dev/shm/{name}").st_size and p.history < p.slots
        try:
            s = fastshm.Subscriber(name, backend=backend)
        except fastshm.FormatError:
            outcomes["subscribe_refused"] += 1
            s = None
        except TimeoutError:  # every entry taken
            outcomes["subscribe_full"] += 1
            s = None
        else:
            outcomes["subscribe_ok"] += 1
            others.append(s)
        run_ops(p, Track(s) if s is not None else None, check=same)
    finally:
        faulthandler.cancel_dump_traceback_later()
        if view is not None:
            view.release()
        if t0 is not None:
            t0.held.clear()
        for o in others + [sub0, pub0]:
            if o is not None:
                o.close()
        if raw is not None:
            raw.close()
        _backend.resolve("python").unlink(name)


case()
print(json.dumps(outcomes), flush=True)
"""


@pytest.mark.parametrize("backend_", BACKENDS)
def test_hypothesis_hostile_channels(backend_: str) -> None:
    dead = _owner_word(_dead_pid())
    try:
        proc = subprocess.run(
            [sys.executable, "-c", FUZZ, backend_, PREFIX, str(dead), str(EXAMPLES)],
            check=False, capture_output=True, timeout=1800 if LONG else 150, cwd=TESTS_DIR,
        )
    finally:
        # A child that died mid-example leaves that example's channel.
        for entry in shm_entries():
            if entry.startswith(PREFIX + "cfz"):
                unlink_quietly(entry)
    assert proc.returncode == 0, (
        f"fuzz child exited with status {proc.returncode} (negative: killed by that "
        f"signal)\n{proc.stdout.decode(errors='replace')[-3000:]}\n"
        f"{proc.stderr.decode(errors='replace')[-8000:]}"
    )
    outcomes = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    print(f"[hostile channels {backend_}] {outcomes}")
    assert outcomes["examples"] >= EXAMPLES // 2
    # Every kind of outcome happened: the cases were neither all benign nor
    # all refused at the door, and the handles opened before the bytes
    # changed met both too.
    for key in ("attach_ok", "attach_refused", "subscribe_ok", "subscribe_refused",
                "op_ok", "op_refused", "op_timeout", "op_lost", "received", "early_ok",
                "early_refused"):
        assert outcomes[key] > 0, (key, outcomes)
