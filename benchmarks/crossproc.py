"""Cases across real processes: round-trip latency, one-way throughput with
1, 2 and 4 readers, and the video-frames scenario.

Contenders across processes:

- ``native`` / ``python``: fastshm segments; a reader sleeps in
  ``Segment.wait`` until the next store;
- ``stdlib-poll``: ``multiprocessing.shared_memory`` with a store counter
  and length written in Python, the reader spinning on the counter;
- ``pipe``: ``multiprocessing.Pipe``, ``send_bytes`` / ``recv_bytes``;
- ``queue``: ``multiprocessing.Queue``;
- ``socket``: ``socket.socketpair``, length-prefixed.

Children are started with the ``spawn`` method, every blocking call has a
timeout, and every child is joined with a timeout (then terminated).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import struct
import time
from multiprocessing import shared_memory
from typing import Any, Dict, List, Optional, Tuple

from fastshm import Segment

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

ROUND_TRIP = ("native", "python", "stdlib-poll", "pipe", "queue", "socket")
ONE_WAY = ROUND_TRIP
FRAMES = ("native", "python", "pipe", "queue")
# One shared segment serves every reader; the others need a channel each.
SHARED = ("native", "python", "stdlib-poll")

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


def _make_end(spec: Tuple[Any, ...]) -> Any:
    kind = spec[0]
    if kind in ("native", "python"):
        return _SegEnd(spec[1], spec[2], kind)
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
        if kind in ("native", "python"):
            a, b = names.new("rt"), names.new("rt")
            for n in (a, b):
                Segment(n, max(size, 1), create=True, backend=kind).close()
                self.cleanup.append(
                    lambda n=n, k=kind: Segment(n, create=False, backend=k).delete()
                )
            self.mine: Tuple[Any, ...] = (kind, a, b)
            self.theirs: Tuple[Any, ...] = (kind, b, a)
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


def _recv_ctl(conn: Any) -> Any:
    if not conn.poll(TIMEOUT * 2):
        raise TimeoutError("benchmark child did not answer")
    return conn.recv()


# ---- round trip ----


def _echo_child(spec: Tuple[Any, ...], ctl: Any) -> None:
    """Answer every message with the same bytes, in blocks the parent asks
    for, so the contenders' blocks can be interleaved."""
    end = _make_end(spec)
    ctl.send("ready")
    try:
        while ctl.poll(TIMEOUT * 4):
            k = ctl.recv()
            if k is None:
                break
            for _ in range(k):
                end.send(end.recv())
            ctl.send("done")
    finally:
        end.close()


def round_trip(
    names: Names,
    sizes: List[int],
    block_s: float,
    blocks: int,
    progress: Progress,
    kinds: Tuple[str, ...] = ROUND_TRIP,
) -> List[Dict[str, Any]]:
    rows = []
    for size in sizes:
        progress.step(f"round trip: {size} B ({', '.join(kinds)})")
        msg = os.urandom(size)
        chans, ends, procs, ctls = {}, {}, [], {}
        try:
            for kind in kinds:
                ch = _Channel(kind, names, size)
                chans[kind] = ch
                mine, theirs = _ctx.Pipe()
                p = _ctx.Process(target=_echo_child, args=(ch.theirs, theirs), daemon=True)
                p.start()
                procs.append(p)
                ctls[kind] = mine
                if _recv_ctl(mine) != "ready":
                    raise RuntimeError(f"{kind} echo child failed")
                ends[kind] = _make_end(ch.mine)
            samples: Dict[str, List[float]] = {k: [] for k in kinds}
            counts: Dict[str, int] = {}
            for kind in kinds:  # warm-up, and how many round trips fill a block
                end = ends[kind]
                warm = 3 if size >= MIB else 20
                ctls[kind].send(warm)
                t = timed_calls(lambda e=end, m=msg: (e.send(m), e.recv()), warm)
                _recv_ctl(ctls[kind])
                # From the median: a spinning contender sharing a core with its
                # peer is fast at times and a scheduler tick slow at others.
                typical = sorted(t)[len(t) // 2]
                counts[kind] = max(1, min(5000, int(block_s * 1e9 / max(typical, 1.0))))
            order = list(kinds)
            for b in range(blocks):
                k = b % len(order)
                for kind in order[k:] + order[:k]:
                    end, n = ends[kind], counts[kind]
                    ctls[kind].send(n)
                    samples[kind] += timed_calls(lambda e=end, m=msg: (e.send(m), e.recv()), n)
                    if _recv_ctl(ctls[kind]) != "done":
                        raise RuntimeError(f"{kind} echo child failed")
            for kind in kinds:
                st = summarize(samples[kind])
                rows.append(
                    {
                        "case": "round trip",
                        "op": "round trip",
                        "contender": kind,
                        "size": size,
                        **st,
                    }
                )
        finally:
            for c in ctls.values():
                try:
                    c.send(None)
                except OSError:
                    pass
            _join(procs)
            for e in ends.values():
                e.close()
            for ch in chans.values():
                ch.close()
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
# The producer is paced like a camera.  Unpaced, it takes a whole core of the
# two, the consumers share the other, and the faster the channel the less CPU
# its consumers get: the figure would measure the scheduler.  240 fps is more
# than a Pipe delivers here, so both the rate and the CPU cost tell.
FRAME_RATE = 240.0


def _frame_buffer() -> Any:
    try:
        import numpy as np

        return np.zeros(FRAME_SHAPE, dtype=np.uint8)
    except ImportError:
        return bytearray(FRAME_SHAPE[0] * FRAME_SHAPE[1] * FRAME_SHAPE[2])


def _frame_producer(kind: str, specs: List[Tuple[Any, ...]], ctl: Any) -> None:
    ends = [_make_end(s) for s in specs]
    frame = _frame_buffer()
    flat = memoryview(frame).cast("B")
    ctl.send("ready")
    deadline = _recv_ctl(ctl)
    cpu0 = time.process_time()
    sent = 0
    due = time.monotonic()
    while due < deadline:
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        flat[0] = sent & 255  # a new frame each time, as a camera would give
        for e in ends:
            e.send(frame if kind == "queue" else flat)
        sent += 1
        # A channel that blocked the producer for longer than a frame makes
        # it skip the frames it missed, as a camera drops them.
        due = max(due + 1 / FRAME_RATE, time.monotonic())
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
    flat = memoryview(frame).cast("B")
    ctl.send("ready")
    start, deadline = _recv_ctl(ctl)
    cpu0 = time.process_time()
    got = 0
    while True:
        now = time.monotonic()
        if now >= deadline and kind in ("native", "python"):
            break
        try:
            if kind == "queue":
                item = end.rx.get(timeout=TIMEOUT)
                n = 0 if isinstance(item, bytes) else item.nbytes
            else:
                n = end.recv_into(flat, max(0.01, deadline - now) if now < deadline else TIMEOUT)
        except TimeoutError:
            continue
        if n == 0:
            break
        if time.monotonic() < deadline:
            got += 1
    ctl.send({"received": got, "cpu_s": time.process_time() - cpu0})
    end.close()


def frames(
    names: Names, seconds: float, progress: Progress, kinds: Tuple[str, ...] = FRAMES
) -> List[Dict[str, Any]]:
    size = FRAME_SHAPE[0] * FRAME_SHAPE[1] * FRAME_SHAPE[2]
    rows = []
    for kind in kinds:
        progress.step(f"frames: 1920x1080x3 to 2 consumers, {kind}")
        shared = kind in ("native", "python")
        chans = [_Channel(kind, names, size) for _ in range(1 if shared else 2)]
        procs, ctls = [], []
        try:
            mine, theirs = _ctx.Pipe()
            procs.append(
                _ctx.Process(
                    target=_frame_producer,
                    args=(kind, [c.mine for c in chans], theirs),
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
            rows.append(
                {
                    "case": "frames",
                    "op": "2 consumers",
                    "contender": kind,
                    "size": size,
                    "seconds": seconds,
                    "sent_fps": w["sent"] / seconds,
                    "fps_per_consumer": sum(fps) / len(fps),
                    "fps_min": min(fps),
                    "cpu_s": cpu,
                    "cpu_ms_per_delivered_frame": 1000
                    * cpu
                    / max(1, sum(x["received"] for x in rs)),
                }
            )
        finally:
            _join(procs)
            for ch in chans:
                ch.close()
    return rows
