"""Cases across real processes: round-trip latency, one-way throughput with
1, 2 and 4 readers, and the video-frames scenario.

Contenders across processes:

- ``native`` / ``native-cffi`` / ``python``: fastshm segments (the C core
  through the C-API binding, through cffi, and the pure-Python backend); a
  reader sleeps in ``Segment.wait`` until the next store;
- ``c-spin``: the floor, two C processes handing the message back and forth
  through an atomic counter in a shared mapping, one memcpy each way
  (``cfloor.pingpong``);
- ``iceoryx2`` (64 B and 1 MiB, when the package is installed): iceoryx2's
  Python bindings, publish/subscribe of a byte slice (loan, copy in, send;
  receive busy-polling, copy out), as its examples do;
- ``stdlib-poll``: ``multiprocessing.shared_memory`` with a store counter
  and length written in Python, the reader spinning on the counter;
- ``pipe``: ``multiprocessing.Pipe``, ``send_bytes`` / ``recv_bytes``;
- ``queue``: ``multiprocessing.Queue``;
- ``socket``: ``socket.socketpair``, length-prefixed.

The queue cases (``queues.py``) add their channels to the round trip:
fastshm queues (``q-native``, ...), faster-fifo and SimpleQueue.

Children are started with the ``spawn`` method, every blocking call has a
timeout, and every child is joined with a timeout (then terminated).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import struct
import sys
import time
from multiprocessing import shared_memory
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from fastshm import Segment

from . import cfloor
from .names import Names
from .timing import Progress, summarize, timed_calls

KIB, MIB = 1024, 1024 * 1024
TIMEOUT = 30.0  # seconds any single blocking step may take before it is an error
# stdlib-poll frames with two words, store counter and length, written and
# read through a memoryview cast to "Q": one 8-byte move each.  (struct's
# pack_into zero-fills its target before it writes, so a reader spinning on
# a counter written with it sees it pass through 0 and takes one message
# for two.)
LEN = struct.Struct("<Q")  # socket framing

SEGMENTS = ("native", "native-cffi", "python")
ROUND_TRIP = SEGMENTS + (
    "stdlib-poll",
    "pipe",
    "queue",
    "socket",
    "iceoryx2",
    "c-spin",
    "c-spin-yield",
)
C_SPIN = {"c-spin": 1e6, "c-spin-yield": 0.0}  # yield after this many ns of spinning
ICEORYX2_SIZES = (64, 1024 * 1024)
ONE_WAY = ("native", "python", "stdlib-poll", "pipe", "queue", "socket")
FRAMES = ("native", "python", "pipe", "queue")
# One shared segment serves every reader; the others need a channel each.
SHARED = SEGMENTS + ("stdlib-poll",)

_ctx = mp.get_context("spawn")


# ---- the contenders' two ends ----


class _SegEnd:
    """fastshm: ``tx`` carries this side's messages, ``rx`` the other's."""

    def __init__(self, tx: Optional[str], rx: Optional[str], backend: str) -> None:
        self.tx = Segment(tx, create=False, backend=backend) if tx else None
        self.rx = Segment(rx, create=False, backend=backend) if rx else None

    def send(self, data: Any) -> None:
        self.tx.store(data)  # type: ignore[union-attr]

    def recv(self) -> bytes:
        self.rx.wait(TIMEOUT)  # type: ignore[union-attr]
        return self.rx.load()  # type: ignore[union-attr]

    def recv_into(self, buf: Any, timeout: float) -> int:
        self.rx.wait(timeout)  # type: ignore[union-attr]
        return self.rx.load_into(buf)  # type: ignore[union-attr]

    def close(self) -> None:
        for s in (self.tx, self.rx):
            if s is not None:
                s.close()


class _PollEnd:
    """stdlib shared memory, framed by hand; the reader spins on a counter."""

    def __init__(self, tx: Optional[str], rx: Optional[str]) -> None:
        self.sms = []
        self.tx = self.rx = self.txw = self.rxw = None
        # Attaching registers the name with the resource tracker the parent
        # shares (Python < 3.13); it is already there, and the parent's
        # unlink unregisters it once.
        if tx:
            sm = shared_memory.SharedMemory(tx)
            self.sms.append(sm)
            self.tx = sm.buf
            self.txw = sm.buf[:16].cast("Q")
        if rx:
            sm = shared_memory.SharedMemory(rx)
            self.sms.append(sm)
            self.rx = sm.buf
            self.rxw = sm.buf[:16].cast("Q")
        self.sent = 0
        self.seen = 0

    def send(self, data: Any) -> None:
        buf = self.tx
        n = len(data)
        buf[16 : 16 + n] = data
        self.sent += 1
        words = self.txw
        words[1] = n
        words[0] = self.sent  # publishes: x86 keeps stores in order

    def _spin(self, deadline: float) -> int:
        words = self.rxw
        seen = self.seen
        spins = 0
        while True:
            count = words[0]
            if count != seen:
                self.seen = count
                return words[1]  # type: ignore[no-any-return]
            spins += 1
            if spins & 1023 == 0 and time.monotonic() > deadline:
                raise TimeoutError("stdlib-poll: no message")

    def recv(self) -> bytes:
        n = self._spin(time.monotonic() + TIMEOUT)
        return bytes(self.rx[16 : 16 + n])  # type: ignore[index]

    def recv_into(self, buf: Any, timeout: float) -> int:
        n = self._spin(time.monotonic() + timeout)
        buf[:n] = self.rx[16 : 16 + n]  # type: ignore[index]
        return n

    def close(self) -> None:
        for w in (self.txw, self.rxw):
            if w is not None:
                w.release()
        self.tx = self.rx = self.txw = self.rxw = None
        for sm in self.sms:
            sm.close()


class _PipeEnd:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def send(self, data: Any) -> None:
        self.conn.send_bytes(data)

    def recv(self) -> bytes:
        if not self.conn.poll(TIMEOUT):
            raise TimeoutError("pipe: no message")
        return self.conn.recv_bytes()  # type: ignore[no-any-return]

    def recv_into(self, buf: Any, timeout: float) -> int:
        if not self.conn.poll(timeout):
            raise TimeoutError("pipe: no message")
        return self.conn.recv_bytes_into(buf)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.conn.close()


class _QueueEnd:
    def __init__(self, tx: Any, rx: Any) -> None:
        self.tx, self.rx = tx, rx

    def send(self, data: Any) -> None:
        self.tx.put(data, timeout=TIMEOUT)

    def recv(self) -> Any:
        return self.rx.get(timeout=TIMEOUT)

    def recv_into(self, buf: Any, timeout: float) -> int:
        data = self.rx.get(timeout=timeout)
        n = len(data) if isinstance(data, (bytes, bytearray)) else memoryview(data).nbytes
        return n

    def close(self) -> None:
        for q in (self.tx, self.rx):
            if q is not None:
                q.close()


class _SockEnd:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(TIMEOUT)
        self.hdr = bytearray(8)

    def send(self, data: Any) -> None:
        self.sock.sendall(LEN.pack(len(data)))
        self.sock.sendall(data)

    def _exact(self, mv: memoryview) -> None:
        got = 0
        while got < len(mv):
            k = self.sock.recv_into(mv[got:])
            if k == 0:
                raise EOFError("socket closed")
            got += k

    def recv(self) -> bytes:
        self._exact(memoryview(self.hdr))
        (n,) = LEN.unpack(self.hdr)
        buf = bytearray(n)
        self._exact(memoryview(buf))
        return bytes(buf)

    def recv_into(self, buf: Any, timeout: float) -> int:
        self.sock.settimeout(timeout)
        self._exact(memoryview(self.hdr))
        (n,) = LEN.unpack(self.hdr)
        self._exact(memoryview(buf)[:n])
        return n  # type: ignore[no-any-return]

    def close(self) -> None:
        self.sock.close()


class _IoxEnd:
    """iceoryx2 publish/subscribe of a byte slice: ``tx`` and ``rx`` are
    service names; the receiver busy-polls, as iceoryx2's examples do."""

    def __init__(self, tx: Optional[str], rx: Optional[str], size: int) -> None:
        import ctypes

        import iceoryx2 as iox2

        iox2.set_log_level(iox2.LogLevel.Error)
        self.ctypes = ctypes
        self.node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        self.pub = self.sub = None
        self.services = []
        payload = iox2.Slice[ctypes.c_uint8]
        if tx:
            svc = (
                self.node.service_builder(iox2.ServiceName.new(tx))
                .publish_subscribe(payload)
                .open_or_create()
            )
            self.services.append(svc)
            self.pub = svc.publisher_builder().initial_max_slice_len(max(size, 1)).create()
        if rx:
            svc = (
                self.node.service_builder(iox2.ServiceName.new(rx))
                .publish_subscribe(payload)
                .open_or_create()
            )
            self.services.append(svc)
            self.sub = svc.subscriber_builder().create()

    def send(self, data: Any) -> None:
        n = len(data)
        sample = self.pub.loan_slice_uninit(n)  # type: ignore[union-attr]
        self.ctypes.memmove(sample.payload().as_ptr(), data, n)
        sample.assume_init().send()

    def _poll(self, deadline: float) -> Any:
        sub = self.sub
        spins = 0
        while True:
            sample = sub.receive()  # type: ignore[union-attr]
            if sample is not None:
                return sample
            spins += 1
            if spins & 1023 == 0 and time.monotonic() > deadline:
                raise TimeoutError("iceoryx2: no message")

    def recv(self) -> bytes:
        sample = self._poll(time.monotonic() + TIMEOUT)
        p = sample.payload()
        out = self.ctypes.string_at(p.as_ptr(), p.len())
        sample.delete()
        return out

    def recv_into(self, buf: Any, timeout: float) -> int:
        sample = self._poll(time.monotonic() + timeout)
        p = sample.payload()
        n = p.len()
        memoryview(buf)[:n] = self.ctypes.string_at(p.as_ptr(), n)
        sample.delete()
        return n  # type: ignore[no-any-return]

    def close(self) -> None:
        for port in (self.pub, self.sub):
            if port is not None:
                port.delete()
        self.pub = self.sub = None
        self.services = []
        self.node = None


def iceoryx2_available() -> bool:
    try:
        import iceoryx2  # noqa: F401
    except Exception:
        return False
    return True


# Channels the queue cases add to the round trip (benchmarks/queues.py).
QUEUE_KINDS = ("q-native", "q-native-cffi", "q-python", "faster-fifo", "simplequeue")
# And the channel cases theirs (benchmarks/channels.py).
CHANNEL_KINDS = ("ch-native", "ch-native-cffi")


def _make_end(spec: Tuple[Any, ...]) -> Any:
    kind = spec[0]
    if kind in QUEUE_KINDS:
        from . import queues

        return queues.make_end(spec)
    if kind in CHANNEL_KINDS:
        from . import channels

        return channels.make_end(spec)
    if kind in SEGMENTS:
        return _SegEnd(spec[1], spec[2], kind)
    if kind == "iceoryx2":
        return _IoxEnd(spec[1], spec[2], spec[3])
    if kind == "stdlib-poll":
        return _PollEnd(spec[1], spec[2])
    if kind == "pipe":
        return _PipeEnd(spec[1])
    if kind == "queue":
        return _QueueEnd(spec[1], spec[2])
    return _SockEnd(spec[1])


class _Channel:
    """Both directions between the main process and one child, for one
    contender: the specs each side builds its end from, and what to free."""

    def __init__(self, kind: str, names: Names, size: int) -> None:
        self.kind = kind
        self.cleanup: List[Any] = []
        if kind in QUEUE_KINDS:
            from . import queues

            self.mine, self.theirs, more = queues.channel(kind, names, size)
            self.cleanup += more
        elif kind in CHANNEL_KINDS:
            from . import channels

            self.mine, self.theirs, more = channels.channel(kind, names, size)
            self.cleanup += more
        elif kind in SEGMENTS:
            a, b = names.new("rt"), names.new("rt")
            for n in (a, b):
                Segment(n, max(size, 1), create=True, backend=kind).close()
                self.cleanup.append(
                    lambda n=n, k=kind: Segment(n, create=False, backend=k).delete()
                )
            self.mine: Tuple[Any, ...] = (kind, a, b)
            self.theirs: Tuple[Any, ...] = (kind, b, a)
        elif kind == "iceoryx2":
            # Service names of this run; iceoryx2 keeps its files under its
            # own names and removes them when the last port closes.
            a, b = names.new("iox"), names.new("iox")
            self.mine, self.theirs = (kind, a, b, size), (kind, b, a, size)
        elif kind == "stdlib-poll":
            a, b = names.new("poll"), names.new("poll")
            for n in (a, b):
                sm = shared_memory.SharedMemory(n, create=True, size=size + 16)
                self.cleanup.append(sm)
            self.mine, self.theirs = (kind, a, b), (kind, b, a)
        elif kind == "pipe":
            x, y = _ctx.Pipe()
            self.mine, self.theirs = (kind, x), (kind, y)
            self.cleanup += [x.close, y.close]
        elif kind == "queue":
            # Bounded, so a writer faster than its readers cannot fill the
            # memory with 64 MiB messages.
            q1, q2 = _ctx.Queue(maxsize=8), _ctx.Queue(maxsize=8)
            self.mine, self.theirs = (kind, q1, q2), (kind, q2, q1)
            for q in (q1, q2):
                self.cleanup += [q.cancel_join_thread, q.close]
        else:
            x, y = socket.socketpair()
            self.mine, self.theirs = (kind, x), (kind, y)
            self.cleanup += [x.close, y.close]

    def close(self) -> None:
        for c in self.cleanup:
            if isinstance(c, shared_memory.SharedMemory):
                c.close()
                c.unlink()
            else:
                c()
        self.cleanup = []


def _join(procs: List[Any]) -> None:
    for p in procs:
        p.join(TIMEOUT)
        if p.is_alive():
            p.terminate()
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)


def _stop(ctls: Iterable[Any]) -> None:
    """Ask each child at the other end of ``ctls`` to end (None), whatever
    pipes are broken already (their child is gone: ``_join`` sees to it)."""
    for c in ctls:
        try:
            c.send(None)
        except OSError:
            pass


def _clean_up(cleanup: List[Callable[[], Any]]) -> None:
    """Run ``cleanup``'s calls, last first, each whatever the others did
    (a failure is said; the sweep removes what is left), and empty it."""
    for c in reversed(cleanup):
        try:
            c()
        except Exception as e:  # noqa: BLE001 -- the sweep removes what is left
            sys.stderr.write(f"benchmarks: cleanup failed: {type(e).__name__}: {e}\n")
    cleanup.clear()


def _recv_ctl(conn: Any) -> Any:
    if not conn.poll(TIMEOUT * 2):
        raise TimeoutError("benchmark child did not answer")
    return conn.recv()


# ---- round trip ----


def _echo_child(spec: Tuple[Any, ...], ctl: Any, into: int = 0) -> None:
    """Answer every message with the same bytes, in blocks the parent asks
    for, so the contenders' blocks can be interleaved.  ``into``: the size
    of a ready buffer each message is copied into (recv_into) instead of a
    new bytes object (recv)."""
    end = _make_end(spec)
    buf = bytearray(into)
    view = memoryview(buf)
    ctl.send("ready")
    try:
        while ctl.poll(TIMEOUT * 4):
            k = ctl.recv()
            if k is None:
                break
            if into:
                for _ in range(k):
                    end.send(view[: end.recv_into(buf, TIMEOUT)])
            else:
                for _ in range(k):
                    end.send(end.recv())
            ctl.send("done")
    finally:
        end.close()


def _round_trip_kinds(kinds: Tuple[str, ...], size: int) -> Tuple[str, ...]:
    out = []
    for k in kinds:
        if k == "iceoryx2" and (size not in ICEORYX2_SIZES or not iceoryx2_available()):
            continue
        if k == "native-cffi" and "native-cffi" not in _seg_routes():
            continue
        if k in C_SPIN and cfloor.load() is None:
            continue
        out.append(k)
    return tuple(out)


def _seg_routes() -> Tuple[str, ...]:
    from .inproc import native_labels

    return tuple(label for label, _ in native_labels()) + ("python",)


class _CSpin:
    """The C ping-pong floor as a round-trip contender: each block forks a
    C child (outside the timed loop) and returns every round trip's time."""

    def __init__(self, msg: bytes, yield_after_ns: float) -> None:
        self.msg, self.yield_after_ns = msg, yield_after_ns

    def block(self, n: int) -> List[float]:
        warm = 20 if len(self.msg) < MIB else 3
        out = cfloor.pingpong(self.msg, warm, n, self.yield_after_ns)
        return out or []


def round_trip(
    names: Names,
    sizes: List[int],
    block_s: float,
    blocks: int,
    progress: Progress,
    kinds: Tuple[str, ...] = ROUND_TRIP,
    case: str = "round trip",
    labels: Optional[Dict[str, str]] = None,
    into: bool = False,
) -> List[Dict[str, Any]]:
    """Round trips of each size, per contender, in interleaved blocks; rows
    of ``case``, each contender named as ``labels`` says (else its kind).
    ``into``: both ends copy each message into a ready buffer (recv_into)
    rather than into a new bytes object (recv)."""
    rows = []
    labels = labels or {}
    all_kinds = kinds
    for size in sizes:
        kinds = _round_trip_kinds(all_kinds, size)
        progress.step(f"{case}: {size} B ({', '.join(labels.get(k, k) for k in kinds)})")
        msg = os.urandom(size)
        chans, ends, procs, ctls = {}, {}, [], {}
        try:
            for kind in kinds:
                if kind in C_SPIN:
                    continue
                ch = _Channel(kind, names, size)
                chans[kind] = ch
                mine, theirs = _ctx.Pipe()
                p = _ctx.Process(target=_echo_child,
                                 args=(ch.theirs, theirs, size if into else 0), daemon=True)
                p.start()
                procs.append(p)
                ctls[kind] = mine
                if _recv_ctl(mine) != "ready":
                    raise RuntimeError(f"{kind} echo child failed")
                ends[kind] = _make_end(ch.mine)
            spin = {k: _CSpin(msg, C_SPIN[k]) for k in kinds if k in C_SPIN}
            rbuf = bytearray(size)

            def one(e: Any, m: bytes, rbuf: bytearray = rbuf) -> Any:
                e.send(m)
                return e.recv_into(rbuf, TIMEOUT) if into else e.recv()

            samples: Dict[str, List[float]] = {k: [] for k in kinds}
            counts: Dict[str, int] = {}
            for kind in kinds:  # warm-up, and how many round trips fill a block
                warm = 3 if size >= MIB else 20
                if kind in spin:
                    t = spin[kind].block(warm)
                else:
                    end = ends[kind]
                    ctls[kind].send(warm)
                    t = timed_calls(lambda e=end, m=msg: one(e, m), warm)
                    _recv_ctl(ctls[kind])
                # From the median: a spinning contender sharing a core with its
                # peer is fast at times and a scheduler tick slow at others.
                typical = sorted(t)[len(t) // 2]
                counts[kind] = max(1, min(5000, int(block_s * 1e9 / max(typical, 1.0))))
            order = list(kinds)
            for b in range(blocks):
                k = b % len(order)
                for kind in order[k:] + order[:k]:
                    n = counts[kind]
                    if kind in spin:
                        samples[kind] += spin[kind].block(n)
                        continue
                    end = ends[kind]
                    ctls[kind].send(n)
                    samples[kind] += timed_calls(lambda e=end, m=msg: one(e, m), n)
                    if _recv_ctl(ctls[kind]) != "done":
                        raise RuntimeError(f"{kind} echo child failed")
            for kind in kinds:
                st = summarize(samples[kind])
                rows.append(
                    {
                        "case": case,
                        "op": "round trip",
                        "contender": labels.get(kind, kind),
                        "size": size,
                        **st,
                    }
                )
        finally:
            _stop(ctls.values())
            _join(procs)
            for e in ends.values():
                e.close()
            for ch in chans.values():
                ch.close()
    return rows


# ---- a waiter with nothing to wait for ----


def _idle_child(backend: str, name: str, seconds: float, ctl: Any) -> None:
    seg = Segment(name, create=False, backend=backend)
    ctl.send("ready")
    cpu0, t0 = time.process_time(), time.monotonic()
    try:
        seg.wait(seconds)
    except TimeoutError:
        pass
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    seg.close()
    ctl.send({"cpu_s": cpu, "wall_s": wall})


def idle_wait(names: Names, seconds: float, progress: Progress) -> List[Dict[str, Any]]:
    """CPU a reader blocked in ``wait()`` uses while no message comes, per
    route: one child each, all at once (they are meant to sleep)."""
    progress.step(f"idle wait: {seconds:.1f} s blocked, {', '.join(_seg_routes())}")
    procs, ctls, segs = [], {}, []
    rows = []
    try:
        for kind in _seg_routes():
            name = names.new("idle")
            Segment(name, 64, create=True, backend=kind).close()
            segs.append((name, kind))
            mine, theirs = _ctx.Pipe()
            p = _ctx.Process(target=_idle_child, args=(kind, name, seconds, theirs), daemon=True)
            p.start()
            procs.append(p)
            ctls[kind] = mine
        for kind, c in ctls.items():
            if _recv_ctl(c) != "ready":
                raise RuntimeError(f"{kind} idle child failed")
        for kind, c in ctls.items():
            r = _recv_ctl(c)
            rows.append(
                {
                    "case": "idle wait",
                    "op": "blocked wait()",
                    "contender": kind,
                    "size": 64,
                    "seconds": r["wall_s"],
                    "cpu_s": r["cpu_s"],
                    "core_percent": 100 * r["cpu_s"] / max(r["wall_s"], 1e-9),
                }
            )
    finally:
        _join(procs)
        for name, kind in segs:
            Segment(name, create=False, backend=kind).delete()
    return rows


# ---- one writer, N readers ----


def _writer_child(kind: str, specs: List[Tuple[Any, ...]], size: int, ctl: Any) -> None:
    ends = [_make_end(s) for s in specs]
    msg = os.urandom(max(size, 1))[:size]
    ctl.send("ready")
    deadline = _recv_ctl(ctl)
    cpu0 = time.process_time()
    sent = 0
    while time.monotonic() < deadline:
        for e in ends:
            e.send(msg)
        sent += 1
    if kind in ("pipe", "queue", "socket"):
        for e in ends:
            e.send(b"")  # end marker; readers drain up to it
    cpu = time.process_time() - cpu0
    ctl.send({"sent": sent, "cpu_s": cpu})
    # Readers may still be draining what the queue's feeder thread holds.
    _recv_ctl(ctl)
    for e in ends:
        e.close()


def _reader_child(kind: str, spec: Tuple[Any, ...], size: int, ctl: Any) -> None:
    end = _make_end(spec)
    buf = bytearray(max(size, 1))
    ctl.send("ready")
    start, deadline = _recv_ctl(ctl)
    cpu0 = time.process_time()
    got = 0
    drained = kind in SHARED
    while True:
        now = time.monotonic()
        if now >= deadline and drained:
            break
        try:
            if kind == "queue":
                item = end.rx.get(timeout=max(0.05, deadline - now) if now < deadline else TIMEOUT)
                n = len(item)
            else:
                n = end.recv_into(buf, max(0.01, deadline - now) if now < deadline else TIMEOUT)
        except TimeoutError:
            if now >= deadline:
                break
            continue
        except Exception as e:  # queue.Empty
            if type(e).__name__ == "Empty":
                continue
            raise
        if kind in ("pipe", "queue", "socket") and n == 0:
            break  # the writer's end marker
        if time.monotonic() < deadline:
            got += 1
    cpu = time.process_time() - cpu0
    ctl.send({"received": got, "cpu_s": cpu})
    end.close()


def one_way(
    names: Names,
    plan: List[Tuple[int, int]],
    seconds: float,
    repeats: int,
    progress: Progress,
    kinds: Tuple[str, ...] = ONE_WAY,
) -> List[Dict[str, Any]]:
    """Throughput delivered to each reader while one writer sends as fast as
    it can for ``seconds``.  fastshm keeps the newest message, so a reader
    slower than the writer skips messages: only the ones it loaded count."""
    results: Dict[Tuple[str, int, int], List[Dict[str, float]]] = {}
    for size, readers in plan:
        progress.step(f"one way: {size} B to {readers} reader(s)")
        for r in range(repeats):
            k = r % len(kinds)
            for kind in kinds[k:] + kinds[:k]:
                res = _one_way_run(kind, names, size, readers, seconds)
                results.setdefault((kind, size, readers), []).append(res)
    rows = []
    for (kind, size, readers), runs in results.items():
        rates = [x["msgs_per_s"] for x in runs]
        med = sorted(rates)[len(rates) // 2]
        rows.append(
            {
                "case": "one way",
                "op": f"{readers} reader(s)",
                "contender": kind,
                "size": size,
                "readers": readers,
                "msgs_per_s": med,
                "min_msgs_per_s": min(rates),
                "max_msgs_per_s": max(rates),
                "throughput_GBps": med * size / 1e9,
                "cpu_s": sorted(x["cpu_s"] for x in runs)[len(runs) // 2],
                "runs": len(runs),
            }
        )
    return rows


def _run_writer_and_readers(
    kind: str, procs: List[Any], ctls: List[Any], seconds: float
) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """Start the writer (procs[0]) and its readers, let them run for
    ``seconds`` from a common start, and collect what each reports."""
    for p in procs:
        p.start()
    for c in ctls:
        if _recv_ctl(c) != "ready":
            raise RuntimeError(f"{kind}: child failed")
    start = time.monotonic() + 0.05
    deadline = start + seconds
    ctls[0].send(deadline)
    for c in ctls[1:]:
        c.send((start, deadline))
    w = _recv_ctl(ctls[0])
    rs = [_recv_ctl(c) for c in ctls[1:]]
    ctls[0].send("bye")
    return w, rs


def _one_way_run(
    kind: str, names: Names, size: int, readers: int, seconds: float
) -> Dict[str, float]:
    chans = [_Channel(kind, names, size) for _ in range(1 if kind in SHARED else readers)]
    procs, ctls = [], []
    try:
        wspecs = [c.mine for c in chans]
        mine, theirs = _ctx.Pipe()
        procs.append(
            _ctx.Process(target=_writer_child, args=(kind, wspecs, size, theirs), daemon=True)
        )
        ctls.append(mine)
        for i in range(readers):
            spec = chans[0 if kind in SHARED else i].theirs
            mine, theirs = _ctx.Pipe()
            procs.append(
                _ctx.Process(target=_reader_child, args=(kind, spec, size, theirs), daemon=True)
            )
            ctls.append(mine)
        w, rs = _run_writer_and_readers(kind, procs, ctls, seconds)
        got = sum(x["received"] for x in rs) / readers
        return {
            "msgs_per_s": got / seconds,
            "cpu_s": w["cpu_s"] + sum(x["cpu_s"] for x in rs),
        }
    finally:
        _join(procs)
        for ch in chans:
            ch.close()


# ---- the frames scenario ----

FRAME_SHAPE = (1080, 1920, 3)
# The paced producer sends like a camera: 240 fps is more than a Pipe
# delivers here, so both the rate and the CPU cost tell.  Unpaced, it takes a
# whole core of the two and the consumers share the other: that form says
# what each channel delivers when the producer does not wait.
FRAME_RATE = 240.0


def _frame_buffer() -> Any:
    try:
        import numpy as np

        return np.zeros(FRAME_SHAPE, dtype=np.uint8)
    except ImportError:
        return bytearray(FRAME_SHAPE[0] * FRAME_SHAPE[1] * FRAME_SHAPE[2])


def _frame_producer(
    kind: str, specs: List[Tuple[Any, ...]], rate: Optional[float], ctl: Any
) -> None:
    ends = [_make_end(s) for s in specs]
    frame = _frame_buffer()
    flat = memoryview(frame).cast("B")
    ctl.send("ready")
    deadline = _recv_ctl(ctl)
    cpu0 = time.process_time()
    sent = 0
    due = time.monotonic()
    while due < deadline:
        if rate is not None:
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        flat[0] = sent & 255  # a new frame each time, as a camera would give
        for e in ends:
            e.send(frame if kind == "queue" else flat)
        sent += 1
        # A channel that blocked the producer for longer than a frame makes
        # it skip the frames it missed, as a camera drops them.  Unpaced, it
        # sends the next frame at once.
        due = time.monotonic() if rate is None else max(due + 1 / rate, time.monotonic())
    if kind in ("pipe", "queue"):
        for e in ends:
            e.send(b"")
    ctl.send({"sent": sent, "cpu_s": time.process_time() - cpu0})
    _recv_ctl(ctl)
    for e in ends:
        e.close()


def _frame_consumer(kind: str, spec: Tuple[Any, ...], ctl: Any) -> None:
    end = _make_end(spec)
    frame = _frame_buffer()
    # Without numpy the frame is a bytearray, taken as it is (PyPy's Pipe
    # cannot read into a cast memoryview).
    target = frame if isinstance(frame, bytearray) else memoryview(frame).cast("B")
    ctl.send("ready")
    start, deadline = _recv_ctl(ctl)
    cpu0 = time.process_time()
    got = 0
    while True:
        now = time.monotonic()
        if now >= deadline and kind in SEGMENTS:
            break
        try:
            if kind == "queue":
                item = end.rx.get(timeout=TIMEOUT)
                n = 0 if isinstance(item, bytes) else memoryview(item).nbytes
            else:
                n = end.recv_into(target, max(0.01, deadline - now) if now < deadline else TIMEOUT)
        except TimeoutError:
            continue
        if n == 0:
            break
        if time.monotonic() < deadline:
            got += 1
    ctl.send({"received": got, "cpu_s": time.process_time() - cpu0})
    end.close()


# The two forms of the scenario: paced like a camera, and a producer that
# sends as fast as it can (the consumers then compete with it for the cores).
FRAME_MODES: Tuple[Optional[float], ...] = (FRAME_RATE, None)


def frames(
    names: Names,
    seconds: float,
    progress: Progress,
    kinds: Tuple[str, ...] = FRAMES,
    modes: Tuple[Optional[float], ...] = FRAME_MODES,
) -> List[Dict[str, Any]]:
    size = FRAME_SHAPE[0] * FRAME_SHAPE[1] * FRAME_SHAPE[2]
    rows = []
    # The floor of the unpaced rate: one C memcpy of a frame.
    loop = cfloor.memcpy_loop(size)
    floor_ns = min(loop.batch(10) for _ in range(5)) if loop is not None else None
    for rate in modes:
        pace = "unpaced" if rate is None else f"{rate:.0f} fps"
        for kind in kinds:
            progress.step(f"frames: 1920x1080x3 to 2 consumers, {pace}, {kind}")
            rows.append(_frames_run(kind, names, size, seconds, rate))
            rows[-1]["memcpy_c_ns"] = floor_ns
    return rows


def _frames_run(
    kind: str, names: Names, size: int, seconds: float, rate: Optional[float]
) -> Dict[str, Any]:
    shared = kind in SEGMENTS
    chans = [_Channel(kind, names, size) for _ in range(1 if shared else 2)]
    procs, ctls = [], []
    try:
        mine, theirs = _ctx.Pipe()
        procs.append(
            _ctx.Process(
                target=_frame_producer,
                args=(kind, [c.mine for c in chans], rate, theirs),
                daemon=True,
            )
        )
        ctls.append(mine)
        for i in range(2):
            mine, theirs = _ctx.Pipe()
            spec = chans[0 if shared else i].theirs
            procs.append(
                _ctx.Process(target=_frame_consumer, args=(kind, spec, theirs), daemon=True)
            )
            ctls.append(mine)
        w, rs = _run_writer_and_readers(kind, procs, ctls, seconds)
        cpu = w["cpu_s"] + sum(x["cpu_s"] for x in rs)
        fps = [x["received"] / seconds for x in rs]
        return {
            "case": "frames",
            "op": "unpaced" if rate is None else f"{rate:.0f} fps",
            "paced_fps": rate,
            "contender": kind,
            "size": size,
            "seconds": seconds,
            "sent_fps": w["sent"] / seconds,
            "fps_per_consumer": sum(fps) / len(fps),
            "fps_min": min(fps),
            "cpu_s": cpu,
            "cpu_ms_per_delivered_frame": 1000 * cpu / max(1, sum(x["received"] for x in rs)),
        }
    finally:
        _join(procs)
        for ch in chans:
            ch.close()
