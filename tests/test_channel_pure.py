"""The python backend's channel between real processes: fan-out in block
mode (messages read in place and copied out), overwrite with a slow
subscriber, subscribers and publishers killed with SIGKILL (holding
samples, inside a loan, inside the lock), and Ctrl-C in a blocked receive,
receive_into and publish.

Every message carries its number and a CRC-32 of its body, so a subscriber
can tell a torn, foreign or repeated message from a good one.  Every wait
is bounded, and every child is killed on the way out.

Names contain "python" so that ``-k python`` selects them with the rest of
the python backend's tests.
"""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
import time
from typing import Any, Iterator, List

import pytest

import fastshm
from fastshm import _backend
from fastshm import _pure_channel_layout as PCL

pytestmark = pytest.mark.skipif(
    "file_lock" not in _backend.resolve("python").features or sys.platform == "win32",
    reason="the python backend's channels lock with flock; the tests use POSIX signals",
)

# The longest any one call of a child or the parent may wait.
WAIT = 30
# The bound on "it ended promptly": generous, for a loaded machine.
PROMPT = 5.0

CHILD = r"""
import json, os, random, signal, struct, sys, time, zlib
import fastshm

WAIT = 30
HEAD = struct.Struct("<II")  # number, CRC-32 of the body


def body_of(n, size):
    return random.Random(n).randbytes(size - HEAD.size)


def message(n, size):
    body = body_of(n, size)
    return HEAD.pack(n, zlib.crc32(body)) + body


def check(m):
    # The number of an intact message (m: any buffer), else -1.
    m = memoryview(m)
    if len(m) < HEAD.size:
        return -1
    n, crc = HEAD.unpack_from(m)
    return n if zlib.crc32(m[HEAD.size:]) == crc else -1


def subscriber(name, count, seed):
    # Block mode: every message, in order, each checked in place; now and
    # then it dawdles holding the sample, so that the publisher waits.  A
    # third of them it copies out instead (receive_into), some after a
    # try with a buffer too small for any message, which receives nothing.
    s = fastshm.Subscriber(name, backend="python")
    rnd = random.Random(seed)
    print("ready", flush=True)
    bad = []
    view = memoryview(bytearray(s.slot_size))
    copies = refused = 0
    for n in range(count):
        if rnd.random() < 0.3:
            if rnd.random() < 0.2:
                try:
                    s.receive_into(view[: rnd.randrange(HEAD.size)], timeout=WAIT)
                    bad.append([n, "a message fit a buffer too small"])
                except ValueError:
                    refused += 1
            got = check(view[: s.receive_into(view, timeout=WAIT)])
            copies += 1
            if got != n or s.last_seq != n + 1:
                bad.append([n, got, s.last_seq])
            continue
        with s.receive(timeout=WAIT) as sample:
            got = check(sample)
            if rnd.random() < 0.01:
                time.sleep(0.002)
                got = got if check(sample) == got else -2
            if got != n or sample.seq != n + 1:
                bad.append([n, got, sample.seq])
    print(json.dumps({"received": s.received, "missed": s.missed, "bad": bad[:10],
                      "copies": copies, "refused": refused}),
          flush=True)
    s.close()


def slow_subscriber(name):
    # Overwrite mode: keeps the first message pinned throughout and reads
    # the rest slowly until the empty stop mark.
    s = fastshm.Subscriber(name, backend="python")
    print("ready", flush=True)
    first = s.receive(timeout=WAIT)
    kept = bytes(first)
    bad = []
    last = first.seq
    while True:
        with s.receive(timeout=WAIT) as sample:
            if sample.seq <= last:
                bad.append(["seq went back", last, sample.seq])
            last = sample.seq
            if len(sample) == 0:
                break
            if check(sample) != sample.seq - 1:
                bad.append(["torn", sample.seq])
        time.sleep(0.001)
    # The first message received is the one published first only when the
    # subscriber called receive before the publisher lapped the ring (a slow
    # start on a busy machine misses some): its number says which it is.
    intact = bytes(first) == kept and check(first) == first.seq - 1
    first.release()
    print(json.dumps({"received": s.received, "missed": s.missed, "bad": bad[:10],
                      "intact": intact, "last_seq": last}), flush=True)
    s.close()


def holder(name, k):
    # Receives k samples and holds them until it is killed.
    s = fastshm.Subscriber(name, backend="python")
    print("ready", flush=True)
    held = [s.receive(timeout=WAIT) for _ in range(k)]
    print("holding %d" % len(held), flush=True)
    time.sleep(WAIT)
    sys.exit("the holder was not killed")


def loaner(name, published):
    # Publishes a few messages, then dies inside a loan, half written.
    p = fastshm.Publisher(name, create=False, backend="python")
    for n in range(published):
        p.publish(message(n, 100), timeout=WAIT)
    with p.loan(100, timeout=WAIT) as buf:
        buf[:50] = message(99, 100)[:50]
        print("inside", flush=True)
        time.sleep(WAIT)
    sys.exit("the loan was not killed")


def lock_holder(name):
    # Dies inside the lock, in the middle of a commit: the slot popped off
    # the free stack and lent, its word and the index written, head not yet;
    # and a pin of an entry nobody owns set.
    from fastshm import _pure, _pure_channel_layout as PCL
    p = fastshm.Publisher(name, create=False, backend="python")
    h = p._handle()
    u32 = lambda v: v.to_bytes(4, "little")
    u64 = lambda v: v.to_bytes(8, "little")

    def die(mm, a, b):
        mm[PCL._H_DIRTY : PCL._H_DIRTY + 4] = u32(1)
        count = int.from_bytes(mm[PCL._H_FREE_COUNT : PCL._H_FREE_COUNT + 4], "little") - 1
        mm[PCL._H_FREE_COUNT : PCL._H_FREE_COUNT + 4] = u32(count)
        s = int.from_bytes(mm[h._free + 4 * count : h._free + 4 * count + 4], "little")
        e = PCL.HEADER + s * 64
        k = h.head() + 1
        mm[e + 24 : e + 32] = u64(_pure.self_id())  # loaner
        mm[e + 8 : e + 16] = u64(5)  # length
        mm[e : e + 8] = u64(k << 1)  # word
        at = h._index + (k % h.slots) * 4
        mm[at : at + 4] = u32(s)
        other = PCL.HEADER + ((s + 1) % h.slots) * 64
        mm[other + 16 : other + 24] = u64(1 << 5)  # pins: entry 5 has no owner
        print("inside", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    h._run(die)
    sys.exit("not killed")


def blocked(name, what):
    # Blocks with no timeout until a SIGINT, then says so.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if what.startswith("receive"):
        o = fastshm.Subscriber(name, backend="python")
    else:
        o = fastshm.Publisher(name, create=False, backend="python")
    print("ready", flush=True)
    try:
        if what == "receive":
            o.receive()
        elif what == "receive_into":
            o.receive_into(bytearray(8))
        else:
            o.publish(b"never")
        print("returned", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    o.close()


if __name__ == "__main__":
    fn = globals()[sys.argv[1]]
    fn(*[int(a) if a.isdigit() else a for a in sys.argv[2:]])
"""

_child_ns: dict = {}
exec(compile(CHILD.split("def subscriber")[0], "<child messages>", "exec"), _child_ns)
message = _child_ns["message"]


class Children:
    """Child processes running CHILD, each killed on the way out."""

    def __init__(self) -> None:
        self.procs: List[subprocess.Popen] = []

    def start(self, *args: Any) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", CHILD, *map(str, args)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(p)
        return p

    @staticmethod
    def line(p: subprocess.Popen, want: str) -> str:
        """The child's next line, which must start with ``want``."""
        assert p.stdout is not None
        line = p.stdout.readline().decode()
        if not line.startswith(want):
            p.kill()
            _, err = p.communicate(timeout=WAIT)
            raise AssertionError(f"child said {line!r}, wanted {want!r}: {err.decode()}")
        return line

    @staticmethod
    def result(p: subprocess.Popen) -> Any:
        out, err = p.communicate(timeout=WAIT)
        assert p.returncode == 0, err.decode()
        return json.loads(out.decode().splitlines()[-1])

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.communicate()


@pytest.fixture
def children() -> Iterator[Children]:
    c = Children()
    yield c
    c.close()


def wait_until(cond: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_python_fan_out_block_every_message_in_order(name: str, children: Children) -> None:
    count = 1500
    with fastshm.Publisher(name, 256, 8, create=True, backend="python") as pub:
        subs = [children.start("subscriber", name, count, seed) for seed in range(3)]
        for p in subs:
            children.line(p, "ready")
        wait_until(lambda: pub.subscribers == 3, "three subscribers")
        sizes = [8 + (n * 7919) % 249 for n in range(count)]
        for n in range(count):
            assert pub.publish(message(n, sizes[n]), timeout=WAIT) == n + 1
        for p in subs:
            r = children.result(p)
            copies, refused = r.pop("copies"), r.pop("refused")
            assert r == {"received": count, "missed": 0, "bad": []}
            assert copies > 0 and refused > 0, (copies, refused)
        assert pub.subscribers == 0


def publish_without_waiting_for_room(pub: Any, data: bytes) -> int:
    """``pub.publish(data, timeout=0)``, tried again while another process
    holds the channel's lock: a call that does not wait gives up on the lock
    after a grace of under a millisecond, and on a loaded machine the
    subscriber can be preempted holding it for longer.  A ring with no free
    slot still raises, which is what the caller's test is about."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return pub.publish(data, timeout=0)  # type: ignore[no-any-return]
        except TimeoutError as e:
            if "stayed locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def test_python_overwrite_slow_subscriber(name: str, children: Children) -> None:
    count = 3000
    with fastshm.Publisher(name, 128, 4, overflow="overwrite", create=True,
                           backend="python") as pub:
        p = children.start("slow_subscriber", name)
        children.line(p, "ready")
        wait_until(lambda: pub.subscribers == 1, "the subscriber")
        for n in range(count):
            # Never waits for the subscriber: at most two slots are pinned.
            publish_without_waiting_for_room(pub, message(n, 8 + n % 121))
            if n % 10 == 0:
                time.sleep(0.0003)  # paced, so that it laps the reader as it reads
        publish_without_waiting_for_room(pub, b"")  # the stop mark
        r = children.result(p)
        assert r["bad"] == [] and r["intact"] and r["last_seq"] == count + 1
        assert r["received"] + r["missed"] == count + 1
        assert r["missed"] > 0 and r["received"] >= 2


def test_python_killed_holder_does_not_hold_a_block_publisher(name: str,
                                                              children: Children) -> None:
    with fastshm.Publisher(name, 64, 4, create=True, backend="python") as pub:
        p = children.start("holder", name, 3)
        children.line(p, "ready")
        wait_until(lambda: pub.subscribers == 1, "the holder")
        for n in range(4):
            pub.publish(message(n, 64), timeout=WAIT)
        children.line(p, "holding 3")
        with pytest.raises(TimeoutError, match="no free slot"):
            pub.publish(b"full", timeout=0.05)
        p.kill()  # not reaped yet: a zombie counts as dead too
        start = time.monotonic()
        pub.publish(b"after", timeout=WAIT)
        assert time.monotonic() - start < PROMPT
        p.wait(WAIT)
        assert pub.subscribers == 0
        h = pub._handle()
        assert h.subscriber_info(0) is None
        assert all(h._mm[PCL.HEADER + s * 64 + 16 : PCL.HEADER + s * 64 + 24] == bytes(8)
                   for s in range(pub.slots))  # no pin of it left
        for n in range(3 * pub.slots):  # nobody subscribed: never waits
            pub.publish(b"%d" % n, timeout=0)


def test_python_publisher_killed_inside_a_loan(name: str, children: Children) -> None:
    with fastshm.Publisher(name, 100, 4, create=True, backend="python") as pub, \
            fastshm.Subscriber(name, backend="python") as sub:
        p = children.start("loaner", name, 2)
        children.line(p, "inside")
        p.kill()
        p.wait(WAIT)
        for n in range(2):
            with sub.receive(1) as s:
                assert bytes(s) == message(n, 100) and s.seq == n + 1
        # Three slots left, then the dead loan's: reclaimed when slots run short.
        start = time.monotonic()
        for n in range(3 * pub.slots):
            seq = pub.publish(b"m%d" % n, timeout=WAIT)
            with sub.receive(1) as s:
                assert bytes(s) == b"m%d" % n and s.seq == seq == n + 3
        assert time.monotonic() - start < PROMPT
        with pytest.raises(TimeoutError):
            sub.receive(0)  # nothing of the dead loan was ever published
        for n in range(pub.slots):  # every slot, the dead loan's too
            pub.publish(b"h%d" % n, timeout=0)
        assert [bytes(s) for s in sub.samples(0)] == [b"h%d" % n for n in range(pub.slots)]


def test_python_killed_inside_the_lock_is_repaired(name: str, children: Children) -> None:
    with fastshm.Publisher(name, 64, 4, create=True, backend="python") as pub, \
            fastshm.Subscriber(name, backend="python") as sub:
        pub.publish(b"one")
        p = children.start("lock_holder", name)
        children.line(p, "inside")
        p.wait(WAIT)
        assert p.returncode == -signal.SIGKILL
        h = pub._handle()
        # The lock word names the dead holder, and dirty says it was changing.
        assert h.lock_owner() & 0xFFFFFFFF == p.pid
        assert h._mm[PCL._H_DIRTY : PCL._H_DIRTY + 4] != bytes(4)
        # Its message never existed (head did not move); the next holder
        # repairs: the slot and the stray pin are freed, every slot usable.
        with sub.receive(1) as s:
            assert bytes(s) == b"one" and s.seq == 1
        assert h.lock_owner() == 0 and h._mm[PCL._H_DIRTY : PCL._H_DIRTY + 4] == bytes(4)
        for n in range(3 * pub.slots):
            seq = pub.publish(b"m%d" % n, timeout=0)
            with sub.receive(0) as s:
                assert bytes(s) == b"m%d" % n and s.seq == seq == n + 2
        held = [pub.publish(b"h%d" % n, timeout=0) for n in range(pub.slots)]
        assert [s.seq for s in sub.samples(0)] == held
        assert sub.missed == 0


@pytest.mark.parametrize("what", ["receive", "receive_into", "publish"])
def test_python_ctrl_c_ends_a_blocked_call(what: str, name: str, children: Children) -> None:
    with fastshm.Publisher(name, 64, 2, create=True, backend="python") as pub:
        sub = None
        if what == "publish":
            sub = fastshm.Subscriber(name, backend="python")
            pub.publish(b"a")
            pub.publish(b"b")  # full: the ring holds what sub has not received
        try:
            p = children.start("blocked", name, what)
            children.line(p, "ready")
            time.sleep(0.3)  # into its sleep
            assert p.poll() is None
            start = time.monotonic()
            p.send_signal(signal.SIGINT)
            children.line(p, "interrupted")
            assert time.monotonic() - start < PROMPT
            p.wait(WAIT)
            h = pub._handle()
            # It counted itself out of the sleepers again.
            assert h._mm[PCL._H_WAITERS : PCL._H_WAITERS + 4] == bytes(4)
            assert h._mm[PCL._H_ROOM_WAITERS : PCL._H_ROOM_WAITERS + 4] == bytes(4)
            assert pub.last_seq == (2 if what == "publish" else 0) and h.head() == pub.last_seq
        finally:
            if sub is not None:
                sub.close()


def test_python_channel_layout(name: str) -> None:
    """The header the C core would read (it refuses the channel for its
    PYLOCK flag, but the bytes are the format's)."""
    with fastshm.Publisher(name, 100, 5, history=2, max_subscribers=3, create=True,
                           backend="python") as pub:
        h = pub._handle()
        mm = h._mm
        magic, version, header_size, slot_size = struct.unpack_from("<IHHQ", mm, 0)
        assert (magic, version, header_size, slot_size) == (0x43485346, 1, 256, 100)
        assert struct.unpack_from("<IIII", mm, 32) == (5, 3, 2, PCL.PYLOCK)
        # index ring at 256 + 64*5 = 576, free stack at 640, subscribers at 704.
        assert struct.unpack_from("<Q", mm, 56)[0] == 4096 == h._payload
        assert struct.unpack_from("<5I", mm, 640) == (4, 3, 2, 1, 0)
        assert struct.unpack_from("<I", mm, 92)[0] == 5  # free_count
        assert h.size == 4096 + 5 * 128 == PCL.size_for(100, 5, 3)
        with fastshm.Subscriber(name, backend="python") as sub:
            assert struct.unpack_from("<QQ", mm, 704) == (fastshm._backend.resolve(
                "python").self_id(), 1)  # owner, cursor
            seq = pub.publish(b"x" * 10)
            assert struct.unpack_from("<Q", mm, 16)[0] == seq == 1  # head
            # Slot 0 (the top of the stack) holds message 1: word 2, length 10.
            assert struct.unpack_from("<QQ", mm, 256) == (2, 10)
            assert struct.unpack_from("<I", mm, 576 + 4)[0] == 0  # index[1 % 5]
            s = sub.receive(0)
            assert struct.unpack_from("<Q", mm, 256 + 16)[0] == 1  # pinned by entry 0
            s.release()
            assert struct.unpack_from("<Q", mm, 256 + 16)[0] == 0


def test_python_calls_from_inside_a_call_on_the_channel(name: str) -> None:
    """What a signal handler or a finalizer may do while this thread holds
    the channel's lock: a release waits until the lock is let go; anything
    else would wait for itself, and is refused."""
    with fastshm.Publisher(name, 64, 2, create=True, backend="python") as pub, \
            fastshm.Subscriber(name, backend="python") as sub:
        pub.publish(b"a")
        s = sub.receive(1)
        h = sub._handle()
        pins = slice(PCL.HEADER + 16, PCL.HEADER + 24)  # slot 0's

        def inside(mm: Any, a: Any, b: Any) -> Any:
            s.release()  # as a finalizer of a forgotten sample would
            with pytest.raises(RuntimeError, match="signal handler"):
                pub.publish(b"b")
            return bytes(mm[pins]), 0

        assert h._run(inside) == (1).to_bytes(8, "little")  # still pinned inside
        assert h._mm[pins] == bytes(8)  # released once the lock was let go
        with pytest.raises(ValueError, match="released"):
            bytes(s)
        pub.publish(b"b", timeout=0)
        pub.publish(b"c", timeout=0)  # both slots free again
