"""fastshm.Queue between real processes: many producers and consumers,
producers and consumers killed with SIGKILL at random instants, SIGINTs
inside puts and gets, many processes opening one new name at once, and an
idle waiter's CPU use.

Every message names its producer and its number and carries a BLAKE2b
checksum of itself, so a consumer can tell a torn, foreign or repeated
message from a good one (sizes 6 B - 4 KiB: six bytes are the name).
Every wait is bounded, and every child is killed on the way out.  The quick
form runs 25 000 messages per producer and 40 kills per route;
``FASTSHM_LONG=1`` runs 100 000 and 200.
"""

from __future__ import annotations

import json
import os
import queue
import random
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest
from conftest import BACKENDS, drain, header_word

import fastshm
from fastshm import _common as C

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="POSIX signals, and select() on pipes"
)

LONG = os.environ.get("FASTSHM_LONG") == "1"
PER_PRODUCER = 100000 if LONG else 25000
KILLS = 200 if LONG else 40
MAX_SIZE = 4096
# The most messages one get_many of the kill test's consumers takes, and one
# put_many of its producers puts.
TAKE_MAX = 4
PUT_MAX = 3
# How many times the kill test stops a victim, looking for an instant when it
# holds the lock, before it kills it wherever it is.
HUNT = 40

# ---- the children: one program, run with ``python -c`` (no pytest import) ----

CHILD = r"""
import hashlib, json, os, queue, random, struct, sys, time
import fastshm

NAME_FMT = struct.Struct("<HI")  # producer, number


def make_message(producer, seq, n, pool, rnd):
    head = NAME_FMT.pack(producer, seq)
    k = min(8, n - NAME_FMT.size)
    off = rnd.randrange(len(pool) - MAX_SIZE)
    body = pool[off : off + n - NAME_FMT.size - k]
    digest = hashlib.blake2b(head + body, digest_size=k).digest() if k else b""
    return head + body + digest


def check_message(m):
    # (producer, seq) of an intact message, or None.
    if len(m) < NAME_FMT.size:
        return None
    k = min(8, len(m) - NAME_FMT.size)
    if k and hashlib.blake2b(m[: len(m) - k], digest_size=k).digest() != m[len(m) - k :]:
        return None
    return NAME_FMT.unpack_from(m)


MAX_SIZE = 4096


def sizes(rnd):
    while True:
        r = rnd.random()
        if r < 0.1:
            yield rnd.randint(NAME_FMT.size, 16)
        elif r < 0.15:
            yield MAX_SIZE
        else:
            yield rnd.randint(NAME_FMT.size, MAX_SIZE)


def producer(name, backend, ident, count, seed):
    # Puts `count` messages, alone or in batches; says how it went.
    q = fastshm.Queue(name, create=False, backend=backend)
    rnd = random.Random(seed)
    pool = os.urandom(1 << 16)
    size = sizes(rnd)
    seq = 0
    print("ready", flush=True)
    while seq < count:
        k = min(count - seq, rnd.choice([1, 1, 1, 2, 3]))
        msgs = [make_message(ident, seq + i, next(size), pool, rnd) for i in range(k)]
        if k == 1 and rnd.random() < 0.5:
            q.put(msgs[0], timeout=60)
        elif k == 1:
            try:
                q.put_nowait(msgs[0])
            except queue.Full:
                q.put(msgs[0], timeout=60)
        else:
            q.put_many(msgs, timeout=60)
        seq += k
    print(json.dumps({"put": seq}), flush=True)


def consumer(name, backend, ident, out_path, seed):
    # Gets until it sees an empty message (the parent's stop mark); writes
    # what it got, in order, with the monotonic time before and after each
    # call: producer, number, start ns, end ns.
    q = fastshm.Queue(name, create=False, backend=backend)
    rnd = random.Random(seed)
    rec = struct.Struct("<HIqq")
    out = bytearray()
    bad = 0
    buf = bytearray(MAX_SIZE)
    print("ready", flush=True)
    while True:
        how = rnd.random()
        t0 = time.monotonic_ns()
        if how < 0.4:
            got = [q.get(timeout=60)]
        elif how < 0.6:
            n = q.get_into(buf, timeout=60)
            got = [bytes(buf[:n])]
        else:
            got = q.get_many(rnd.choice([2, 5, 8, None]), timeout=60)
        t1 = time.monotonic_ns()
        stops = [m for m in got if m == b""]
        for m in got:
            if m == b"":
                continue
            ps = check_message(m)
            if ps is None:
                bad += 1
                continue
            out += rec.pack(ps[0], ps[1], t0, t1)
        if stops:
            assert got[-len(stops):] == stops, "a message after the stop mark"
            for _ in stops[1:]:
                q.put(b"")  # for the other consumers
            break
    with open(out_path, "wb") as f:
        f.write(out)
    print(json.dumps({"got": len(out) // rec.size, "bad": bad}), flush=True)


def killable_producer(name, backend, ident, log_path, stop_path, seed):
    # Puts until told to stop; after each put returns, appends the numbers
    # it put to its log (one write).
    q = fastshm.Queue(name, create=False, backend=backend)
    rnd = random.Random(seed)
    pool = os.urandom(1 << 16)
    size = sizes(rnd)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    seq = 0
    print("ready", flush=True)
    while not os.path.exists(stop_path):
        k = rnd.choice([1, 1, 2, PUT_MAX])
        msgs = [make_message(ident, seq + i, next(size), pool, rnd) for i in range(k)]
        try:
            if k == 1:
                q.put(msgs[0], timeout=0.05)
            else:
                q.put_many(msgs, timeout=0.05)
        except queue.Full:
            continue  # none went in: the same numbers again
        os.write(log, b"".join(b"%d\n" % (seq + i) for i in range(k)))
        seq += k


def killable_consumer(name, backend, ident, log_path, stop_path, seed):
    # Gets until told to stop.  Before each call it appends "T k" to its log
    # (it may take k messages now); after the call returns, what it got (one
    # write): "producer number" per message, BAD for one whose checksum or
    # name is wrong.
    q = fastshm.Queue(name, create=False, backend=backend)
    rnd = random.Random(seed)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    print("ready", flush=True)
    while not os.path.exists(stop_path):
        k = 1 if rnd.random() < 0.5 else rnd.randint(1, TAKE_MAX)
        os.write(log, b"T %d\n" % k)
        try:
            if k == 1 and rnd.random() < 0.5:
                got = [q.get(timeout=0.05)]
            else:
                got = q.get_many(k, timeout=0.05)
        except queue.Empty:
            continue
        lines = []
        for m in got:
            ps = check_message(m)
            lines.append(b"BAD %r\n" % m[:32] if ps is None else b"%d %d\n" % ps)
        os.write(log, b"".join(lines))


def sigint_worker(name, backend, stop_path, count_path):
    # Puts and gets in a loop while SIGINTs raise KeyboardInterrupt inside
    # the calls (once per call; signals between calls are only counted);
    # then says what went in and out, and checks the queue still works.
    import signal
    q = fastshm.Queue(name, create=False, backend=backend)
    rnd = random.Random(os.getpid())
    state = {"inside": False, "outside": 0}

    def on_sigint(signum, frame):
        if state["inside"]:
            state["inside"] = False
            raise KeyboardInterrupt
        state["outside"] += 1

    signal.signal(signal.SIGINT, on_sigint)
    put_ok, put_intr, got, get_intr = [], [], [], 0
    counter = os.open(count_path, os.O_WRONLY | os.O_CREAT, 0o600)
    i = 0
    print("ready", flush=True)
    while not os.path.exists(stop_path):
        # How many calls were interrupted so far, for the parent to see.
        os.pwrite(counter, b"%8d" % (len(put_intr) + get_intr), 0)
        # The flag is cleared in a finally inside the try that catches the
        # KeyboardInterrupt: a signal landing as Full or Empty is being
        # raised, or as the flag is cleared, is then still caught.
        try:
            try:
                state["inside"] = True
                q.put(b"%d." % i + bytes(rnd.randrange(2000)), timeout=1)
            finally:
                state["inside"] = False
            put_ok.append(i)
        except KeyboardInterrupt:
            put_intr.append(i)
        except queue.Full:
            pass
        i += 1
        try:
            try:
                state["inside"] = True
                if rnd.random() < 0.5:
                    ms = q.get_many(rnd.randint(1, 3), timeout=0.01)
                else:
                    ms = [q.get(timeout=0.01)]
            finally:
                state["inside"] = False
            got.extend(int(m.split(b".")[0]) for m in ms)
        except KeyboardInterrupt:
            get_intr += 1
        except queue.Empty:
            pass
    state["inside"] = False
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    left = q.get_many(None, block=False) if q.qsize() else []
    got.extend(int(m.split(b".")[0]) for m in left)
    q.put(b"after the storm", timeout=10)  # hangs if an interrupted call kept the lock
    assert q.get(timeout=10) == b"after the storm"
    def runs(xs):
        # [first, last] of each run of consecutive numbers, in order.
        out = []
        for x in xs:
            if out and x == out[-1][1] + 1:
                out[-1][1] = x
            else:
                out.append([x, x])
        return out
    print(json.dumps({"put_ok": runs(put_ok), "put_intr": put_intr, "got": runs(got),
                      "get_intr": get_intr, "left": len(left)}), flush=True)


def interrupted_putter(name, backend, stop_path, count_path):
    # Puts numbered messages while SIGINTs arrive.  The handler raises
    # KeyboardInterrupt when it runs inside fastshm's code -- the put was
    # interrupted -- and lets the signal pass when it runs in this loop: the
    # put had returned (or not begun).  Says which puts were interrupted.
    import signal
    q = fastshm.Queue(name, create=False, backend=backend)
    package = os.path.dirname(fastshm.__file__) + os.sep
    state = {"inside": 0, "outside": 0}

    def on_sigint(signum, frame):
        if frame is not None and frame.f_code.co_filename.startswith(package):
            state["inside"] += 1
            raise KeyboardInterrupt
        state["outside"] += 1

    signal.signal(signal.SIGINT, on_sigint)
    counter = os.open(count_path, os.O_WRONLY | os.O_CREAT, 0o600)
    interrupted = []
    i = 0
    print("ready", flush=True)
    while not os.path.exists(stop_path):
        os.pwrite(counter, b"%8d" % len(interrupted), 0)
        msg = struct.pack("<Q", i)
        try:
            q.put(msg, timeout=10)
        except KeyboardInterrupt:
            interrupted.append(i)
        i += 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(json.dumps({"puts": i, "interrupted": interrupted, "outside": state["outside"]}),
          flush=True)


def racer(name, backend, size, workdir, index):
    # Waits for the go file, opens (or creates) the queue, puts its pid.
    open(os.path.join(workdir, "ready.%d" % index), "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(workdir, "go")):
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.001)
    q = fastshm.Queue(name, size, backend=None if backend == "default" else backend)
    q.put(json.dumps([os.getpid(), q.created, q.capacity, q.backend]), timeout=30)


def seq_producer(name, backend, stop_path):
    # 8-byte numbered messages, in batches, as fast as they go in.
    q = fastshm.Queue(name, create=False, backend=backend)
    seq = 0
    print("ready", flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(stop_path) and time.monotonic() < deadline:
        try:
            q.put_many([struct.pack("<Q", seq + i) for i in range(256)], timeout=0.05)
        except queue.Full:
            continue
        seq += 256
    print(json.dumps({"put": seq}), flush=True)


def seq_getter(name, backend, stop_path, out_path):
    # One message per get, in bursts, until told to stop; writes the numbers.
    import array
    q = fastshm.Queue(name, create=False, backend=backend)
    got = array.array("Q")
    print("ready", flush=True)
    while not os.path.exists(stop_path):
        for _ in range(100):
            try:
                got.append(struct.unpack("<Q", q.get(timeout=0.05))[0])
            except queue.Empty:
                break
        time.sleep(0.001)
    with open(out_path, "wb") as f:
        got.tofile(f)


def idle_getter(name, backend):
    q = fastshm.Queue(name, create=False, backend=backend)
    print("waiting", flush=True)
    print(q.get().decode(), flush=True)


PUT_MAX = int(os.environ.get("QPUT_MAX", "3"))
TAKE_MAX = int(os.environ.get("QTAKE_MAX", "4"))

if __name__ == "__main__":
    fn = globals()[sys.argv[1]]
    args = [int(a) if a.lstrip("-").isdigit() else a for a in sys.argv[2:]]
    fn(*args)
"""

HDR = struct.Struct("<HI")
REC = struct.Struct("<HIqq")


def _check_message(m: bytes) -> Optional[Tuple[int, int]]:
    import hashlib

    if len(m) < HDR.size:
        return None
    k = min(8, len(m) - HDR.size)
    if k and hashlib.blake2b(m[: len(m) - k], digest_size=k).digest() != m[len(m) - k :]:
        return None
    return HDR.unpack_from(m)  # type: ignore[return-value]


class Child:
    """A child process running one function of CHILD; stdout is a pipe."""

    ident = -1  # the kill test's producer or consumer number
    kill_at: Optional[float] = None  # when the kill test kills it

    def __init__(self, kind: str, fn: str, *args: object,
                 env: Optional[Dict[str, str]] = None) -> None:
        env = dict(os.environ, QPUT_MAX=str(PUT_MAX), QTAKE_MAX=str(TAKE_MAX), **(env or {}))
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, fn, *map(str, args)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            # Unbuffered: readline takes one line and no more, so what
            # follows is left in the pipe for communicate().
            bufsize=0,
        )
        self.ready = False

    def poll_ready(self, timeout: float = 0) -> bool:
        if not self.ready:
            r, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if r:
                line = self.proc.stdout.readline()  # type: ignore[union-attr]
                assert line in (b"ready\n", b"waiting\n"), self.failure(line)
                self.ready = True
        return self.ready

    def failure(self, what: object = "") -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        _, err = self.proc.communicate(timeout=30)
        return f"{self.kind} child failed ({what!r}, status {self.proc.returncode}):\n" + (
            err.decode(errors="replace")[-4000:]
        )

    def finish(self, timeout: float) -> Tuple[int, bytes, bytes]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.communicate(timeout=30)
        except (subprocess.TimeoutExpired, ValueError, OSError):
            pass


def _cleanup(children: List[Child]) -> None:
    for c in children:
        c.cleanup()


# ---- 4 producers x 3 consumers ----

ROUTES = BACKENDS + (["mixed"] if "native-cffi" in BACKENDS else [])


def _route(route: str, i: int) -> str:
    if route == "mixed":
        return ["native", "native-cffi"][i % 2]
    return route


@pytest.mark.parametrize("route", ROUTES)
def test_producers_and_consumers(route: str, name: str, tmp_path: Path) -> None:
    producers, consumers = 4, 3
    ring = 1 << 16
    q = fastshm.Queue(name, ring, create=True, backend=_route(route, 0))
    children: List[Child] = []
    try:
        for c in range(consumers):
            children.append(Child("consumer", "consumer", name, _route(route, c + 1), c,
                                  str(tmp_path / f"c{c}.bin"), 1000 + c))
        for p in range(producers):
            children.append(Child("producer", "producer", name, _route(route, p), p,
                                  PER_PRODUCER, 2000 + p))
        deadline = time.monotonic() + (600 if LONG else 120)
        for ch in children:
            assert ch.poll_ready(max(1.0, deadline - time.monotonic())), ch.failure("no ready")
        # Until the producers are done; any child that fails meanwhile is
        # reported at once, with its own error.
        while any(ch.proc.poll() is None for ch in children[consumers:]):
            assert time.monotonic() < deadline, "the producers did not finish in time"
            for ch in children:
                if ch.proc.poll() not in (None, 0):
                    pytest.fail(ch.failure("failed"))
            time.sleep(0.05)
        for ch in children[consumers:]:
            rc, out, err = ch.finish(30)
            assert rc == 0, err.decode(errors="replace")
            assert out.split() == [b'{"put":', b"%d}" % PER_PRODUCER], (out, err)
        for _ in range(consumers):
            q.put(b"", timeout=30)  # the stop marks, behind every message
        stats = []
        for ch in children[:consumers]:
            rc, out, err = ch.finish(max(1.0, deadline - time.monotonic()))
            assert rc == 0, err.decode(errors="replace")
            stats.append(json.loads(out.splitlines()[-1]))
    finally:
        _cleanup(children)
    assert all(s["bad"] == 0 for s in stats), f"corrupt messages: {stats}"
    assert q.qsize() == 0 and q.bytes_used == 0
    q.close()

    seen: Dict[Tuple[int, int], Tuple[int, int, int]] = {}  # -> consumer, start, end
    for c in range(consumers):
        data = (tmp_path / f"c{c}.bin").read_bytes()
        last: Dict[int, int] = {}
        for p, s, t0, t1 in REC.iter_unpack(data):
            assert (p, s) not in seen, f"message {(p, s)} delivered twice"
            seen[(p, s)] = (c, t0, t1)
            # One consumer sees each producer's messages in the order put.
            assert s > last.get(p, -1), f"consumer {c} got {(p, s)} after {(p, last[p])}"
            last[p] = s
    want = {(p, s) for p in range(producers) for s in range(PER_PRODUCER)}
    missing = want - seen.keys()
    assert not missing, f"{len(missing)} messages never delivered, e.g. {sorted(missing)[:5]}"
    assert seen.keys() == want
    # Across consumers: a later message of a producer was never taken by a
    # call that ended before the call that took an earlier one began.
    for p in range(producers):
        latest_start = -1
        for s in range(PER_PRODUCER):
            _, t0, t1 = seen[(p, s)]
            assert t1 >= latest_start, f"producer {p}'s message {s} taken before an earlier one"
            latest_start = max(latest_start, t0)
    counts = sorted(sum(1 for v in seen.values() if v[0] == c) for c in range(consumers))
    print(f"[queue stress {route}] messages={len(seen)} per consumer={counts}")


# ---- SIGKILL at random instants ----


def _stop(pid: int) -> bool:
    """SIGSTOP ``pid`` and wait until it is stopped; False where that cannot
    be seen (no /proc)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("T", "t"):
                    return True
        except OSError:
            return False
        time.sleep(0.0005)
    return False


def _parse_log(path: Path) -> List[bytes]:
    if not path.exists():
        return []
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), f"{path.name}: a torn log line"
    return data.splitlines()


@pytest.mark.parametrize("backend_", BACKENDS)
def test_killed_producers_and_consumers(backend_: str, name: str, tmp_path: Path) -> None:
    backend = backend_
    n_prod, n_cons = 2, 2
    q = fastshm.Queue(name, 1 << 15, create=True, backend=backend)
    stop = tmp_path / "stop"
    rnd = random.Random()
    children: List[Child] = []
    live: List[Child] = []
    ident = [0]
    kills = {"producer": 0, "consumer": 0}
    inside_lock = 0

    def spawn(kind: str) -> Child:
        i = ident[0]
        ident[0] += 1
        log = tmp_path / f"{kind[0]}{i}.log"
        ch = Child(kind, f"killable_{kind}", name, backend, i, str(log), str(stop),
                   rnd.randrange(1 << 30))
        ch.ident = i
        children.append(ch)
        live.append(ch)
        return ch

    try:
        for _ in range(n_prod):
            spawn("producer")
        for _ in range(n_cons):
            spawn("consumer")
        deadline = time.monotonic() + (900 if LONG else 150)
        while sum(kills.values()) < KILLS:
            assert time.monotonic() < deadline, f"only {kills} kills before the deadline"
            time.sleep(rnd.uniform(0.001, 0.005))
            now = time.monotonic()
            for ch in live:
                if ch.proc.poll() is not None:
                    pytest.fail(ch.failure("exited by itself"))
                if ch.kill_at is None and ch.poll_ready():
                    # Its own random while of work before it is killed.
                    ch.kill_at = now + rnd.uniform(0.0, 0.15)
            due = [ch for ch in live if ch.kill_at is not None and ch.kill_at <= now]
            if not due:
                continue
            victim = rnd.choice(due)
            # Stopped first, so the lock word shows whether it dies inside
            # a put or get (a live process would take the lock over at once).
            # Every other kill hunts for such an instant: stopped and let go
            # again until it is caught holding the lock, or tries run out.
            tries = HUNT if kills[victim.kind] % 2 else 1
            for attempt in range(tries):
                if not _stop(victim.proc.pid):
                    break
                if q._lock_owner() & 0xFFFFFFFF == victim.proc.pid:
                    inside_lock += 1
                    break
                if attempt + 1 < tries:
                    victim.proc.send_signal(signal.SIGCONT)
                    time.sleep(rnd.uniform(0, 0.0003))
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(timeout=30)
            assert victim.proc.returncode == -signal.SIGKILL, victim.failure("not killed")
            kills[victim.kind] += 1
            live.remove(victim)
            victim.cleanup()
            spawn(victim.kind)
        stop.touch()
        for ch in live:
            rc, _, err = ch.finish(60)
            assert rc == 0, f"{ch.kind}: status {rc}\n{err.decode(errors='replace')[-3000:]}"
    finally:
        stop.touch()
        _cleanup(children)

    # The queue works, and its count is right once a lock holder has
    # recounted it (a kill can leave the count stale until then).  The
    # children stopped wherever they were, the producers perhaps with the
    # ring full: what is taken out to make room for the marker is checked
    # with the rest below.
    marker = b"after the kills"
    early: List[bytes] = []
    while True:
        try:
            q.put(marker, timeout=0.5)  # time to take over a dead holder's lock
            break
        except queue.Full:
            early.extend(q.get_many(block=False))
    left = q.qsize()
    rest = []
    while True:
        try:
            rest.extend(q.get_many(block=False))
        except queue.Empty:
            break
    assert rest and rest[-1] == marker, "the marker did not come out last"
    rest.pop()
    assert left == len(rest) + 1, f"qsize() said {left}, the queue held {len(rest) + 1}"
    rest = early + rest
    assert q.qsize() == 0 and q.bytes_used == 0
    q.put(b"round trip")
    assert q.get(timeout=10) == b"round trip"
    assert q._lock_owner() == 0
    q.close()

    # What the consumers logged, and what was left: each message once, intact.
    delivered: Dict[Tuple[int, int], int] = {}
    bad: List[bytes] = []
    # A killed consumer may have taken messages it did not get to log: as
    # many as the call it had announced last, when nothing followed it.
    allowed = 0
    for ch in children:
        if ch.kind != "consumer":
            continue
        pending = 0
        for line in _parse_log(tmp_path / f"c{ch.ident}.log"):
            if line.startswith(b"T "):
                pending = int(line.split()[1])
                continue
            pending = 0
            if line.startswith(b"BAD"):
                bad.append(line)
                continue
            p, s = map(int, line.split())
            delivered[(p, s)] = delivered.get((p, s), 0) + 1
        if ch.proc.returncode == -signal.SIGKILL:
            allowed += pending
    for m in rest:
        ps = _check_message(m)
        if ps is None:
            bad.append(m[:32])
            continue
        delivered[ps] = delivered.get(ps, 0) + 1
    assert not bad, f"corrupt messages: {bad[:5]}"
    twice = [k for k, v in delivered.items() if v > 1]
    assert not twice, f"delivered more than once: {twice[:10]}"

    # What the producers' puts returned for: all delivered, but for what
    # the killed consumers were taking (a get_many each, at most).
    acked: Set[Tuple[int, int]] = set()
    for ch in children:
        if ch.kind != "producer":
            continue
        i = ch.ident
        seqs = [int(x) for x in _parse_log(tmp_path / f"p{i}.log")]
        assert seqs == list(range(len(seqs))), f"producer {i} logged {seqs[:20]}..."
        acked.update((i, s) for s in seqs)
        # A killed producer may have put one batch it did not get to log.
        extra = [s for (p, s) in delivered if p == i and s >= len(seqs)]
        assert not extra or max(extra) < len(seqs) + PUT_MAX, (i, len(seqs), extra)
    producers = {ch.ident for ch in children if ch.kind == "producer"}
    assert {p for (p, _) in delivered} <= producers, "a message from no producer"
    lost = acked - delivered.keys()
    assert allowed <= kills["consumer"] * TAKE_MAX
    assert len(lost) <= allowed, (
        f"{len(lost)} acknowledged messages lost; the calls the {kills['consumer']} killed "
        f"consumers were in allow {allowed}: {sorted(lost)[:10]}"
    )
    print(f"[queue kills {backend}] kills={kills} inside_lock={inside_lock} "
          f"acked={len(acked)} delivered={len(delivered)} lost={len(lost)} allowed={allowed}")
    assert len(acked) > 10 * KILLS, "too little traffic for the kills to mean much"


# ---- an idle waiter ----


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process's threads so far: from the scheduler's
    nanosecond counts where the kernel keeps them, else from
    /proc/<pid>/stat's clock ticks (whose 10 ms steps are a third of what
    the idle test allows)."""
    try:
        ns = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns += int(f.read().split()[0])
        return ns / 1e9
    except (OSError, ValueError, IndexError):
        pass
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc/<pid>/stat")
def test_blocked_get_is_idle(backend: str, name: str) -> None:
    """A get with nothing to get sleeps: under 1% of a core over 3 s."""
    window = 3.0
    q = fastshm.Queue(name, 1024, create=True, backend=backend)
    ch = Child("getter", "idle_getter", name, backend)
    try:
        assert ch.poll_ready(30), ch.failure("no ready")
        # Asleep (counted in the waiters word): past the spin, and the
        # interpreter's start-up, however long they took.
        deadline = time.monotonic() + 30
        while header_word(name, C.Q_WAITERS) != 1:
            assert ch.proc.poll() is None, ch.failure("exited")
            assert time.monotonic() < deadline, ch.failure("never asleep")
            time.sleep(0.01)
        before = _cpu_seconds(ch.proc.pid)
        time.sleep(window)
        used = _cpu_seconds(ch.proc.pid) - before
        q.put(b"wake up")
        rc, out, err = ch.finish(30)
    finally:
        ch.cleanup()
        q.close()
    assert rc == 0, err.decode(errors="replace")
    assert out.decode().split() == ["wake", "up"]
    assert used < 0.01 * window, f"an idle get used {used:.3f} s of CPU in {window} s"


# ---- Ctrl-C at any instant of put and get ----


def test_ctrl_c_storm(backend: str, name: str, tmp_path: Path) -> None:
    """SIGINTs that land anywhere inside puts and gets: the lock is never
    kept, nothing is delivered twice or made up, and a message whose put
    returned is lost only to a get that was interrupted (after its commit)."""
    q = fastshm.Queue(name, 1 << 14, create=True, backend=backend)
    stop, count = tmp_path / "stop", tmp_path / "count"
    ch = Child("worker", "sigint_worker", name, backend, str(stop), str(count))
    try:
        assert ch.poll_ready(30), ch.failure("no ready")
        rnd = random.Random()
        # Until 10 signals have landed inside calls, at least 300 sent.
        deadline = time.monotonic() + 90
        sent = 0
        while sent < 300 or int(count.read_bytes() or b"0") < 10:
            assert time.monotonic() < deadline, f"{count.read_bytes()!r} interrupted calls"
            time.sleep(rnd.uniform(0, 0.004))
            assert ch.proc.poll() is None, ch.failure("died in the storm")
            ch.proc.send_signal(signal.SIGINT)
            sent += 1
        stop.touch()
        rc, out, err = ch.finish(60)
    finally:
        stop.touch()
        ch.cleanup()
    assert rc == 0, err.decode(errors="replace")[-3000:]
    r = json.loads(out.splitlines()[-1])

    def expand(runs: List[List[int]]) -> List[int]:
        return [x for a, b in runs for x in range(a, b + 1)]

    got, put_ok, put_intr = expand(r["got"]), set(expand(r["put_ok"])), set(r["put_intr"])
    assert len(got) == len(set(got)), "a message was delivered twice"
    assert set(got) <= put_ok | put_intr, "a message nobody put"
    lost = put_ok - set(got)
    assert len(lost) <= r["get_intr"], (
        f"{len(lost)} messages whose put returned were lost, "
        f"with {r['get_intr']} interrupted gets: {sorted(lost)[:10]}"
    )
    assert len(put_intr) + r["get_intr"] >= 10
    assert q.qsize() == 0 and q._lock_owner() == 0
    q.put(b"from the parent", timeout=5)
    assert q.get(timeout=5) == b"from the parent"
    q.close()
    print(f"[queue ctrl-c {backend}] puts={len(put_ok)} interrupted puts={len(put_intr)} "
          f"interrupted gets={r['get_intr']} lost={len(lost)}")


def test_interrupted_put_queued_nothing(backend: str, name: str, tmp_path: Path) -> None:
    """A put that a signal's exception interrupts has put nothing, so a
    caller that retries it does not send the message twice: a signal that
    lands after the commit is handled once the put has returned.  (The
    child's handler raises only when it runs inside fastshm's code.)"""
    impl = fastshm._backend.resolve(backend)
    if "quiet_commit" not in impl.features:
        pytest.skip("this interpreter can run a signal handler as a function returns "
                    "(PyPy, CPython before 3.11): the promise of the python backend and "
                    "of the cffi binding is best effort there")
    q = fastshm.Queue(name, 1 << 23, create=True, backend=backend)
    stop, count = tmp_path / "stop", tmp_path / "count"
    ch = Child("putter", "interrupted_putter", name, backend, str(stop), str(count))
    try:
        assert ch.poll_ready(30), ch.failure("no ready")
        rnd = random.Random()
        # At least 150 signals; on a route whose put runs Python code, until
        # 20 of them have landed inside a put, or 45 s have passed (a loaded
        # machine): then at least 5 must have.
        deadline = time.monotonic() + 45
        sent = 0
        # Taken as the storm goes, so that a fast putter never fills the ring.
        taken: List[bytes] = []
        while sent < 150 or (backend != "native" and int(count.read_bytes() or b"0") < 20):
            if time.monotonic() > deadline:
                assert int(count.read_bytes() or b"0") >= 5, (
                    f"{count.read_bytes()!r} interrupted puts in 45 s")
                break
            time.sleep(rnd.uniform(0, 0.003))
            assert ch.proc.poll() is None, ch.failure("died in the storm")
            ch.proc.send_signal(signal.SIGINT)
            sent += 1
            if sent % 16 == 0:
                taken += drain(q)
        stop.touch()
        rc, out, err = ch.finish(60)
    finally:
        stop.touch()
        ch.cleanup()
    assert rc == 0, err.decode(errors="replace")[-3000:]
    r = json.loads(out.splitlines()[-1])
    queued = [struct.unpack("<Q", m)[0] for m in taken + drain(q)]
    q.close()
    interrupted = set(r["interrupted"])
    twice = sorted(interrupted & set(queued))
    assert not twice, (
        f"{len(twice)} of {len(interrupted)} interrupted puts had queued their message "
        f"(a retry would send it twice): {twice[:10]}"
    )
    assert sorted(queued) == [i for i in range(r["puts"]) if i not in interrupted], (
        "a put that returned did not queue its message, or queued it twice")
    print(f"[interrupted put {backend}] puts={r['puts']} interrupted={len(interrupted)} "
          f"handled after the put={r['outside']}")


# ---- many processes open one new name at once ----

RACES = [b for b in BACKENDS] + (["mixed-natives"] if "native-cffi" in BACKENDS else []) + (
    ["default-mixed"] if len(BACKENDS) > 1 else [])


@pytest.mark.parametrize("race", RACES)
def test_open_or_create_race(race: str, name: str, tmp_path: Path) -> None:
    """Six processes open the same new name at the same moment: exactly one
    creates it, every one sees its capacity and puts into it.  With no
    backend chosen and FASTSHM_BACKEND differing, all follow the creator."""
    n = 6
    children: List[Child] = []
    try:
        for i in range(n):
            env = {}
            if race == "mixed-natives":
                b = ["native-capi", "native-cffi"][i % 2]
            elif race == "default-mixed":
                b = "default"
                env["FASTSHM_BACKEND"] = ["native", "python"][i % 2]
            else:
                b = race
            children.append(Child("racer", "racer", name, b, 1000 + 8 * i, str(tmp_path), i,
                                  env=env))
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("ready.*"))) < n:
            assert time.monotonic() < deadline, "the racers did not start"
            for ch in children:
                if ch.proc.poll() is not None:
                    pytest.fail(ch.failure("died before the start"))
            time.sleep(0.005)
        (tmp_path / "go").touch()
        for ch in children:
            rc, _, err = ch.finish(60)
            assert rc == 0, err.decode(errors="replace")[-3000:]
    finally:
        _cleanup(children)
    with fastshm.Queue(name, create=False) as q:
        results = [json.loads(m) for m in q.get_many(block=False)]
        assert q.qsize() == 0
    assert len(results) == n, results
    assert sorted(r[0] for r in results) == sorted(ch.proc.pid for ch in children)
    creators = [r for r in results if r[1]]
    assert len(creators) == 1, results
    cap = creators[0][2]
    assert cap in range(1000, 1000 + 8 * n, 8)
    assert {r[2] for r in results} == {cap}
    assert {r[3] for r in results} == {creators[0][3]}, "two lock protocols on one queue"


# ---- get_many takes its messages in one lock round ----


def test_get_many_is_one_round(backend: str, name: str, tmp_path: Path) -> None:
    """While a producer keeps the queue busy and another process gets one
    message at a time, every get_many(None) returns a run of consecutive
    messages (nothing taken from its middle by the other consumer) and no
    more than the ring holds at once: one lock round, not several."""
    import array

    q = fastshm.Queue(name, 1 << 18, create=True, backend=backend)
    per_ring = q.capacity // 16  # 8-byte messages take 16 bytes each
    stop, other_path = tmp_path / "stop", tmp_path / "other.bin"
    producer = Child("producer", "seq_producer", name, backend, str(stop))
    getter = Child("getter", "seq_getter", name, backend, str(stop), str(other_path))
    batches: List[List[int]] = []
    try:
        for ch in (producer, getter):
            assert ch.poll_ready(30), ch.failure("no ready")
        end = time.monotonic() + 2
        while time.monotonic() < end:
            try:
                got = q.get_many(None, timeout=1)
            except queue.Empty:
                continue
            batches.append([struct.unpack("<Q", m)[0] for m in got])
            time.sleep(0.02)  # let the queue fill up again
        stop.touch()
        rc, out, err = producer.finish(60)
        assert rc == 0, err.decode(errors="replace")
        put = json.loads(out.splitlines()[-1])["put"]
        rc, _, err = getter.finish(60)
        assert rc == 0, err.decode(errors="replace")
    finally:
        stop.touch()
        _cleanup([producer, getter])
    other = array.array("Q")
    other.frombytes(other_path.read_bytes())
    rest = [struct.unpack("<Q", m)[0] for m in drain(q)]
    q.close()
    seen = bytearray(put)
    for x in [x for b in batches for x in b] + list(other) + rest:
        assert x < put and not seen[x], f"message {x} made up or delivered twice"
        seen[x] = 1
    assert all(seen), f"{put - sum(seen)} messages lost"
    big = max(len(b) for b in batches)
    gapped = [b for b in batches if any(y != x + 1 for x, y in zip(b, b[1:]))]
    assert not gapped, (
        f"{len(gapped)} of {len(batches)} get_many calls lost their middle to another "
        f"consumer, e.g. {[(x, y) for x, y in zip(gapped[0], gapped[0][1:]) if y != x + 1][:3]}"
    )
    assert big <= per_ring, f"a get_many returned {big} messages; the ring holds {per_ring}"
    print(f"[queue get_many {backend}] batches={len(batches)} largest={big} "
          f"single gets={len(other)} put={put}")


# ---- a producer killed between its commit and its count ----

# Puts N messages, then leaves the header as a put killed between its store
# of tail and its store of count would (tail past N messages, the count k
# short, the dirty mark, its own id in the lock word), and kills itself.
DIES_AFTER_TAIL = r"""
import os, signal, struct, sys
import fastshm
from fastshm import _backend, _common as C
name, backend, n, k = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
q = fastshm.Queue(name, create=False, backend=backend)
q.put_many([b"m%d" % i for i in range(n)])
raw = fastshm.SharedMemory(name)
count = struct.unpack_from("<Q", raw.buf, C.Q_COUNT)[0]
struct.pack_into("<Q", raw.buf, C.Q_LOCK, _backend.resolve(backend).self_id())
struct.pack_into("<I", raw.buf, C.Q_DIRTY, 1)
struct.pack_into("<Q", raw.buf, C.Q_COUNT, count - k)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("before, put, stale", [(0, 3, 3), (50, 6, 6), (50, 6, 2)])
def test_counts_are_right_after_a_producer_died_between_its_two_stores(
        backend: str, name: str, before: int, put: int, stale: int) -> None:
    """qsize(), empty(), `fastshm info` and `fastshm list` give the number of
    messages queued, not the count the dead producer left short, before
    anyone takes the lock again; nothing is changed by looking."""
    from test_cli_queue import fields, list_rows, run

    q = fastshm.Queue(name, 4096, create=True, backend=backend)
    try:
        q.put_many([b"old%d" % i for i in range(before)])
        proc = subprocess.run([sys.executable, "-c", DIES_AFTER_TAIL, name, backend,
                               str(put), str(stale)], capture_output=True, timeout=60)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode(errors="replace")
        raw = fastshm.SharedMemory(name)
        assert struct.unpack_from("<I", raw.buf, 88)[0] == 1  # still dirty
        queued = before + put
        for _ in range(2):  # looking twice: the same answer
            assert q.qsize() == queued
            assert not q.empty()
        assert fields(run("info", name, backend=backend).stdout)["messages"] == str(queued)
        assert list_rows(backend)[name][3] == str(queued)
        # Looking changed nothing; the next get recounts under the lock.
        assert struct.unpack_from("<I", raw.buf, 88)[0] == 1
        raw.close()
        got = q.get_many(None, block=False)
        assert got == [b"old%d" % i for i in range(before)] + [b"m%d" % i for i in range(put)]
        assert q.qsize() == 0 and q.empty()
    finally:
        q.close()
