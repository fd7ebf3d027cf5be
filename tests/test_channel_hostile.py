"""Hostile channel headers: whatever bytes another process writes into a
channel, opening it (``Publisher``, ``Subscriber``) and every operation on
it work or raise ``fastshm.FormatError`` (a ValueError), the "taken away"
ValueError of a lost subscription or loan, or ``TimeoutError``; they never
crash, hang, or hand out a message longer than ``slot_size``, and the
numbers one subscriber receives never go down.

Every run is a child process bounded by a timeout (a crash shows as a
signal exit status); every call in it has a timeout of 0 or 1 ms.  The lock
word, subscriber owners and slot loaners are written as 0, a dead process's
id or random bytes (an owner nobody can judge), never a live process's: a
live holder makes calls wait, as it should.  The hypothesis run makes 300
channels per backend in the quick form and 3 000 with ``FASTSHM_LONG=1``.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest
from conftest import BACKENDS, PREFIX, run_python, shm_entries, unlink_quietly
from test_hostile import _dead_pid, _owner_word

import fastshm

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/dev/shm"), reason="scribbles on objects in /dev/shm"
)

LONG = os.environ.get("FASTSHM_LONG") == "1"
EXAMPLES = 3000 if LONG else 300
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

# docs/FORMAT.md, "Channels".
MAGIC, VERSION, HEADER_SIZE, SLOT_SIZE, HEAD = 0, 4, 6, 8, 16
SLOTS, MAX_SUBS, HISTORY, FLAGS, PAYLOAD = 32, 36, 40, 44, 56
LOCK, DIRTY, FREE_COUNT, SUB_MASK, SWEEP_AT, CHECKED_AT = 64, 88, 92, 96, 104, 112
HEADER = 256
U64MAX = (1 << 64) - 1

# ---- one channel's operations, run in a child ----

OPS = r"""
import faulthandler, json, sys
faulthandler.enable()
import fastshm

def attempt(out, key, fn):
    try:
        out[key] = ["ok", fn()]
    except fastshm.FormatError as e:
        out[key] = ["FormatError", str(e)[:160]]
    except TimeoutError:
        out[key] = ["TimeoutError", None]
    except ValueError as e:
        out[key] = ["lost" if "taken away" in str(e) else "ValueError", str(e)[:160]]
    except Exception as e:
        out[key] = [type(e).__name__, str(e)[:300]]

def run_ops(pub, sub, out, seen):
    size = pub.slot_size
    def received():
        with sub.receive(timeout=0) as s:
            assert len(s) <= size and s.seq > seen[0], (len(s), size, s.seq, seen[0])
            seen[0] = s.seq
            return len(bytes(s))
    def lend():
        with pub.loan(min(size, 3), timeout=0.001) as buf:
            buf[:] = b"abc"[: len(buf)]
    def lend_and_fail():
        try:
            with pub.loan(0, timeout=0.001):
                raise KeyError
        except KeyError:
            return "discarded"
    attempt(out, "publish", lambda: pub.publish(b"x" * min(size, 7), timeout=0))
    attempt(out, "receive", received)
    buf = bytearray(size)
    attempt(out, "receive_into", lambda: sub.receive_into(buf, 0.001))
    attempt(out, "loan", lend)
    attempt(out, "discard", lend_and_fail)
    attempt(out, "counts", lambda: [pub.subscribers, sub.received, sub.missed, repr(pub)])
"""

PROBE = OPS + r"""
name, backend = sys.argv[1], sys.argv[2]
out = {}
attempt(out, "attach_pub", lambda: fastshm.Publisher(name, create=False, backend=backend).close())
attempt(out, "attach_sub", lambda: fastshm.Subscriber(name, backend=backend).close())
if out["attach_pub"][0] == "ok" and out["attach_sub"][0] == "ok":
    pub = fastshm.Publisher(name, create=False, backend=backend)
    sub = fastshm.Subscriber(name, backend=backend)
    run_ops(pub, sub, out, [0])
    sub.close()
    pub.close()
print(json.dumps(out))
"""

ALLOWED = {"ok", "FormatError", "TimeoutError", "lost"}


def probe(name: str, backend: str) -> dict:
    proc = run_python(PROBE, name, backend, timeout=60, check=False)
    assert proc.returncode == 0, (
        f"probe died with status {proc.returncode} (negative: killed by that signal)\n"
        f"{proc.stderr.decode(errors='replace')[-4000:]}"
    )
    out: dict = json.loads(proc.stdout)
    bad = {k: v for k, v in out.items() if v[0] not in ALLOWED}
    assert not bad, f"operations failed in ways a corrupt channel must not cause: {bad}"
    return out


def _fresh(name: str, backend: str, slot_size: int = 64, slots: int = 4) -> fastshm.SharedMemory:
    """A channel with a few messages, then the raw mapping over it."""
    with fastshm.Publisher(name, slot_size, slots, history=2, create=True,
                           backend=backend) as pub:
        for m in (b"first", b"second message", b""):
            pub.publish(m, timeout=0)
    return fastshm.SharedMemory(name, backend="python")


# ---- targeted cases ----


@pytest.mark.parametrize(
    "field,fmt,offset,value",
    [
        ("magic", "<I", MAGIC, 0x43485346 + 1),
        ("version", "<H", VERSION, 0),
        ("version", "<H", VERSION, 2),
        ("header size", "<H", HEADER_SIZE, 64),
        ("slot size", "<Q", SLOT_SIZE, 0),
        ("slot size", "<Q", SLOT_SIZE, 1 << 40),
        ("slot size", "<Q", SLOT_SIZE, U64MAX),
        ("slots", "<I", SLOTS, 0),
        ("slots", "<I", SLOTS, 1 << 30),
        ("max subscribers", "<I", MAX_SUBS, 0),
        ("max subscribers", "<I", MAX_SUBS, 65),
        ("history", "<I", HISTORY, 4),
        ("payload offset", "<Q", PAYLOAD, 8),
        ("payload offset", "<Q", PAYLOAD, U64MAX),
        ("flags", "<I", FLAGS, 4),
    ],
)
def test_bad_header_is_refused_at_attach(backend: str, name: str, field: str, fmt: str,
                                         offset: int, value: int) -> None:
    raw = _fresh(name, backend)
    try:
        struct.pack_into(fmt, raw.buf, offset, value)
        out = probe(name, backend)
        assert out["attach_pub"][0] == "FormatError", (field, out)
        assert out["attach_sub"][0] == "FormatError", (field, out)
    finally:
        raw.close()
        raw.unlink()


@pytest.mark.parametrize(
    "field,fmt,offset,value",
    [
        ("head far ahead", "<Q", HEAD, 1 << 40),
        ("head at the top", "<Q", HEAD, U64MAX),
        ("head back to 0", "<Q", HEAD, 0),
        ("dirty with nothing to repair", "<I", DIRTY, 1),
        ("free count beyond the slots", "<I", FREE_COUNT, 0xFFFFFFFF),
        ("every subscriber bit", "<Q", SUB_MASK, U64MAX),
        ("sweep due long ago", "<Q", SWEEP_AT, 0),
        ("liveness checked in the future", "<Q", CHECKED_AT, U64MAX),
    ],
)
def test_bad_counters_are_survived(backend: str, name: str, field: str, fmt: str, offset: int,
                                   value: int) -> None:
    """Fields the operations read as they go: each call works or refuses."""
    raw = _fresh(name, backend)
    try:
        struct.pack_into(fmt, raw.buf, offset, value)
        probe(name, backend)
    finally:
        raw.close()
        raw.unlink()


def test_slot_entries_pointing_anywhere(backend: str, name: str) -> None:
    """Slot words, lengths and the index scribbled: no message longer than
    slot_size is handed out, and nothing crashes."""
    raw = _fresh(name, backend, slot_size=32, slots=4)
    try:
        buf = raw.buf
        for s in range(4):
            e = HEADER + 64 * s
            struct.pack_into("<QQ", buf, e, (s + 1) << 1, 1 << 33)  # word, huge length
        index = HEADER + 64 * 4
        struct.pack_into("<4I", buf, index, 7, 0xFFFFFFFF, 2, 1)
        probe(name, backend)
    finally:
        raw.close()
        raw.unlink()


def test_lock_and_owners_of_the_dead_are_taken_over(backend: str, name: str) -> None:
    """A dead lock holder with the dirty mark, a dead subscriber and a dead
    loaner: the next publisher repairs, reclaims, and publishes."""
    dead = _owner_word(_dead_pid())
    raw = _fresh(name, backend, slots=3)
    try:
        buf = raw.buf
        struct.pack_into("<Q", buf, LOCK, dead)
        struct.pack_into("<I", buf, DIRTY, 1)
        info = {}
        with fastshm.Publisher(name, create=False, backend=backend) as pub:
            assert pub.publish(b"after the repair", timeout=5) == 4
            info["lock"] = pub._lock_owner()
        assert info["lock"] == 0, info
    finally:
        raw.close()
        raw.unlink()


def test_the_other_backends_channel_is_refused_clearly(backend: str, name: str) -> None:
    """A channel made by the python backend (flags bit PYLOCK) on a native
    route, or the reverse: a FormatError naming the backend to use."""
    other = "native" if backend == "python" else "python"
    if other == "native" and not any(b.startswith("native") for b in BACKENDS):
        pytest.skip("no native backend here")
    with fastshm.Publisher(name, 64, 2, create=True, backend=other):
        with pytest.raises(fastshm.FormatError, match=f"backend={other!r}"):
            fastshm.Publisher(name, create=False, backend=backend)
        with pytest.raises(fastshm.FormatError, match=f"backend={other!r}"):
            fastshm.Subscriber(name, backend=backend)
        # Left unset, the backend is the channel's own.
        with fastshm.Publisher(name, create=False) as pub, fastshm.Subscriber(name) as sub:
            pub.publish(b"hello", timeout=0)
            with sub.receive(timeout=0) as s:
                assert bytes(s) == b"hello"
    fastshm.Publisher(name, create=False, backend=other).delete()


# ---- hypothesis: any header, any scribble ----

FUZZ = OPS + r"""
import os, struct, sys
from hypothesis import HealthCheck, given, settings, strategies as st

backend, prefix, dead, examples = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
counter = [0]
outcomes = {"examples": 0, "attach_ok": 0, "attach_refused": 0, "op_ok": 0,
            "op_refused": 0}
u64 = st.one_of(st.integers(0, 8), st.integers(0, (1 << 64) - 1),
                st.sampled_from([(1 << 63) - 1, (1 << 64) - 1, 1 << 32]))
u32 = st.one_of(st.integers(0, 8), st.integers(0, (1 << 32) - 1))
owner = st.one_of(st.just(0), st.just(dead), st.integers(1, (1 << 64) - 1))
FIELDS = {"version": ("<H", 4, st.integers(0, 3)), "slot_size": ("<Q", 8, u64),
          "head": ("<Q", 16, u64), "notify": ("<I", 24, u32), "waiters": ("<I", 28, u32),
          "slots": ("<I", 32, u32), "max_subs": ("<I", 36, u32), "history": ("<I", 40, u32),
          "flags": ("<I", 44, u32), "room": ("<I", 48, u32), "room_waiters": ("<I", 52, u32),
          "payload": ("<Q", 56, u64), "lock": ("<Q", 64, st.sampled_from([0, dead])),
          "dirty": ("<I", 88, u32), "free_count": ("<I", 92, u32),
          "sub_mask": ("<Q", 96, u64), "sweep_at": ("<Q", 104, u64),
          "checked_at": ("<Q", 112, u64)}
fields = st.fixed_dictionaries({}, optional={k: v[2] for k, v in FIELDS.items()})
entry_words = st.lists(st.tuples(st.integers(0, 63), st.integers(0, 5), u64, owner),
                       max_size=6)

@settings(max_examples=examples, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(slot_size=st.sampled_from([1, 16, 64]), slots=st.sampled_from([2, 3, 4]),
       overflow=st.sampled_from(["block", "overwrite"]), published=st.integers(0, 6),
       hold=st.booleans(), when=st.sampled_from(["before_attach", "after_attach"]),
       f=fields, entries=entry_words,
       noise=st.one_of(st.none(), st.binary(min_size=1, max_size=128)),
       noise_at=st.integers(0, 1023))
def case(slot_size, slots, overflow, published, hold, when, f, entries, noise, noise_at):
    counter[0] += 1
    name = f"{prefix}cfz{os.getpid()}_{counter[0]}"
    pub0 = fastshm.Publisher(name, slot_size, slots, history=1, overflow=overflow,
                             create=True, backend=backend)
    sub0 = fastshm.Subscriber(name, backend=backend)
    raw = None
    held = None
    try:
        for i in range(published):
            try:
                pub0.publish(bytes([i]) * min(slot_size, i + 1), timeout=0)
            except TimeoutError:
                break
        if hold:
            try:
                held = sub0.receive(timeout=0)
            except TimeoutError:
                pass
        raw = fastshm.SharedMemory(name, backend="python")
        buf = raw.buf
        early = None
        if when == "after_attach":
            early = (fastshm.Publisher(name, create=False, backend=backend),
                     fastshm.Subscriber(name, backend=backend))
        for key, value in f.items():
            fmt, off, _ = FIELDS[key]
            struct.pack_into(fmt, buf, off, value)
        # Words of slot entries and subscriber entries (from the header on,
        # 64 bytes each): word/length/pins/loaner, owner/cursor/...
        for at, word, value, who in entries:
            off = 256 + 64 * at + 8 * word
            if off + 8 <= len(buf):
                struct.pack_into("<Q", buf, off, who if word in (0, 3) else value)
        if noise is not None and noise_at < len(buf):
            end = min(len(buf), noise_at + len(noise))
            buf[noise_at:end] = noise[: end - noise_at]
            if buf[64:72] != bytes(8):  # the lock: free or dead-owned
                struct.pack_into("<Q", buf, 64, dead)
        outcomes["examples"] += 1
        if early is None:
            try:
                early = (fastshm.Publisher(name, create=False, backend=backend),
                         fastshm.Subscriber(name, backend=backend))
            except fastshm.FormatError:
                outcomes["attach_refused"] += 1
                return
            except TimeoutError:  # every subscriber entry owned by someone
                outcomes["attach_refused"] += 1
                return
            outcomes["attach_ok"] += 1
        out = {}
        run_ops(early[0], early[1], out, [0])
        for key, (what, detail) in out.items():
            assert what in ("ok", "FormatError", "TimeoutError", "lost"), (key, what, detail)
            outcomes["op_ok" if what == "ok" else "op_refused"] += 1
        early[1].close()
        early[0].close()
    finally:
        if held is not None:
            held.release()
        sub0.close()
        pub0.close()
        if raw is not None:
            raw.close()
        fastshm._backend.resolve("python").unlink(name)

case()
print(json.dumps(outcomes), flush=True)
"""


@pytest.mark.parametrize("backend_", BACKENDS)
def test_hypothesis_hostile_channel_headers(backend_: str) -> None:
    dead = _owner_word(_dead_pid())
    try:
        proc = subprocess.run(
            [sys.executable, "-c", FUZZ, backend_, PREFIX, str(dead), str(EXAMPLES)],
            check=False, capture_output=True, timeout=900 if LONG else 150, cwd=TESTS_DIR,
        )
    finally:
        # A child that died mid-example leaves that example's channel.
        for entry in shm_entries():
            if entry.startswith(PREFIX + "cfz"):
                unlink_quietly(entry)
    assert proc.returncode == 0, (
        f"fuzz child exited with status {proc.returncode} (negative: killed by that "
        f"signal)\n{proc.stdout.decode(errors='replace')[-3000:]}\n"
        f"{proc.stderr.decode(errors='replace')[-6000:]}"
    )
    outcomes = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    print(f"[hostile channel headers {backend_}] {outcomes}")
    assert outcomes["examples"] >= EXAMPLES // 2
    assert outcomes["attach_refused"] > 0 and outcomes["attach_ok"] > 0
    assert outcomes["op_refused"] > 0 and outcomes["op_ok"] > 0
