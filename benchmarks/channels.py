"""Channel cases: ``fastshm.Publisher`` / ``Subscriber`` across processes,
against iceoryx2, the other fastshm objects and a socketpair (targets
C1-C5 of the report).

- C1, ``channel frames``: 1920×1080×3 frames (6.2 MB) from one producer to
  one consumer, unpaced and lossless: the producer copies each frame in,
  the consumer copies each out into a ready buffer; frames/s and each
  process's CPU per frame;
- C2, ``channel 1:1``: 16 MiB messages from one producer to one consumer,
  copied in and out (``publish`` and ``bytes(sample)``), and in place (built
  in a ``loan``, read in the ``Sample``: a few bytes touched each side);
- C3, ``channel fan-out``: 1 MiB messages to 4 subscriber processes reading
  in place: deliveries per second (messages times subscribers);
- C4, ``channel round trip``: 64 B there and back through two channels,
  each end copying into a ready buffer (``receive_into``; the Segment's
  ``load_into`` beside it) (crossproc's round trip, beside the C floor);
- C5, ``channel idle`` and ``channel sample``: the CPU of a receive blocked
  with nothing to receive, and receive + release of a 16 MiB sample against
  copying it.

Contenders, each built explicitly:

- ``channel``: ``fastshm.Publisher(..., overflow="block")`` and
  ``fastshm.Subscriber`` on the native backend through the C-API binding
  (the default route); ``channel-cffi``: the same through cffi
  (``backend="native-cffi"``; in C1-C3 only where the run asks for it);
- ``iceoryx2`` / ``iceoryx2-yield`` (when the package is installed): its
  Python bindings, publish/subscribe of a byte slice, lossless (no safe
  overflow, the publisher's backpressure ``RetryUntilDelivered``), loaned
  samples written and read through their memory; a subscriber busy-polls
  ``receive()`` as crossproc's and iceoryx2's examples do, or
  (``-yield``) gives up its core with ``sched_yield`` after each empty
  poll, which a machine with more processes than cores rewards: its
  targets are checked against the better of the two;
- ``segment``: ``fastshm.Segment`` (native): ``store`` / ``wait`` +
  ``load_into``; it keeps the newest message, so a slow reader skips
  frames (lossy: its "sent" and "delivered" differ);
- ``fastshm-queue``: ``fastshm.Queue`` (native): ``put`` / ``get_into``;
- ``socket``: ``socket.socketpair``, ``sendall`` / ``recv_into`` of the
  whole message (the size is known: no framing);
- ``c-turns`` / ``c-ring`` (C1): the same stream between two C processes,
  each frame copied into a slot of a shared mapping and out of it, handed
  over by two counters, through two slots taking turns or a ring as deep as
  the contenders' (``cfloor``): the floor of the whole stream, the faster
  of the two;
- ``memcpy-c``: one C memcpy of the message between two ready buffers in one
  process (``cfloor``): the floor of each copy.

Every message carries its number in its first and last 8 bytes; consumers
check them (lossless contenders: each exactly one more than the last), so a
channel that loses, repeats or tears a message shows in the ``bad`` column.
Children are started with ``spawn``, every blocking call has a timeout, and
a run that fails is reported as failed, with why, and the suite goes on.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import queue as queue_mod
import socket
import struct
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import fastshm

from . import cfloor
from .crossproc import FRAME_SHAPE, TIMEOUT, _clean_up, _join
from .names import Names
from .timing import Progress, summarize

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

KIB, MIB = 1024, 1024 * 1024
FRAME = FRAME_SHAPE[0] * FRAME_SHAPE[1] * FRAME_SHAPE[2]
BIG = 16 * MIB  # C2 and C5
FAN_SIZE, FAN_SUBS = MIB, 4  # C3
SLOTS = 4  # ring depth of every lossless contender (channel slots, iceoryx2 buffer, queue)
FAN_SLOTS = 8
STEP = 0.1  # seconds a blocking call waits before its loop looks at the clock again
HDR = struct.Struct("<Q")  # the message number, at both ends of each message

# The channel's two native routes: the C-API binding (the default) and cffi.
CHANNELS = {"channel": "native", "channel-cffi": "native-cffi"}
# C1's floor: the same stream between two C processes (cfloor.frames_run),
# through this many slots taken in turn.
C_FRAMES = {"c-turns": 2, "c-ring": SLOTS}
FRAMES_KINDS = (
    "channel",
    "channel-cffi",
    "iceoryx2",
    "iceoryx2-yield",
    "segment",
    "fastshm-queue",
) + tuple(C_FRAMES)
BIG_RUNS = (  # (contender, how the producer makes it, how the consumer takes it)
    ("channel", "copy", "bytes"),
    ("channel-cffi", "copy", "bytes"),
    ("channel", "loan", "inplace"),
    ("channel-cffi", "loan", "inplace"),
    ("socket", "copy", "copy"),
)
FAN_KINDS = ("channel", "channel-cffi", "iceoryx2", "iceoryx2-yield")
ROUND_TRIP = ("ch-native", "ch-native-cffi", "native", "native-cffi", "c-spin", "c-spin-yield")
RT_LABELS = {
    "ch-native": "channel",
    "ch-native-cffi": "channel-cffi",
    "native": "segment",
    "native-cffi": "segment-cffi",
}
IOX = ("iceoryx2", "iceoryx2-yield")
LOSSY = ("segment",)
SAMPLE_OPS = (
    "receive+release",
    "receive+release, back to back",
    "copy into a ready buffer",
    "bytes(sample)",
)
OPS = {
    ("copy", "copy"): "copy in, copy out",
    ("copy", "bytes"): "publish, bytes(sample)",
    ("loan", "inplace"): "in place",
}

_ctx = mp.get_context("spawn")


def _cpu() -> float:
    """CPU seconds of this process, all its threads."""
    if resource is None:
        return time.process_time()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def cpu_of(pid: int) -> Optional[float]:
    """CPU seconds another process has used so far: the scheduler's
    nanosecond counts of its threads where the kernel keeps them, else its
    clock ticks (10 ms steps); None without /proc."""
    try:
        ns = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns += int(f.read().split()[0])
        return ns / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# ---- what can run here ----

_why: Optional[Dict[str, str]] = None


def _probe() -> Dict[str, str]:
    """Why each channel route and iceoryx2 cannot run ("" when they can)."""
    global _why
    if _why is not None:
        return _why
    from .crossproc import _seg_routes

    out = {}
    for kind, route in CHANNELS.items():
        if route not in _seg_routes():
            out[kind] = "not a separate binding here"
            continue
        name = f"fshmbench_{os.getpid()}_chprobe"
        try:
            pub = fastshm.Publisher(name, 64, 2, create=True, backend=route)
            try:
                sub = fastshm.Subscriber(name, backend=route)
                pub.publish(b"x")
                with sub.receive(1) as s:
                    ok = bytes(s) == b"x"
                sub.close()
                out[kind] = "" if ok else "a message came back wrong"
            finally:
                pub.delete()
        except Exception as e:
            out[kind] = f"{type(e).__name__}: {e}"
    try:
        import iceoryx2  # noqa: F401

        out["iceoryx2"] = out["iceoryx2-yield"] = ""
    except Exception:
        out["iceoryx2"] = out["iceoryx2-yield"] = "not installed"
    _why = out
    return out


def why_not(kind: str) -> str:
    """Why a contender is left out of this run ("" when it runs)."""
    if kind in CHANNELS:
        return _probe()[kind]
    if kind.startswith("ch-"):
        return _probe()[RT_LABELS[kind]]
    if kind in IOX:
        return _probe()[kind]
    if kind in ("c-spin", "c-spin-yield") or kind in C_FRAMES:
        return "" if cfloor.load() is not None else f"n/a: {cfloor.why()}"
    if kind == "native-cffi":
        from .crossproc import _seg_routes

        return "" if kind in _seg_routes() else "not a separate binding here"
    return ""


def skipped() -> Dict[str, str]:
    out = {}
    for k in FRAMES_KINDS + FAN_KINDS + ROUND_TRIP:
        why = why_not(k)
        if why:
            out[RT_LABELS.get(k, k)] = why
    return out


# ---- iceoryx2, lossless ----


def _iox_service(node: Any, name: str, subs: int, depth: int) -> Any:
    """The service every side opens with the same settings: no safe
    overflow (a full subscriber buffer holds the publisher back), a buffer
    of ``depth`` samples per subscriber, no history."""
    import iceoryx2 as iox2

    return (
        node.service_builder(iox2.ServiceName.new(name))
        .publish_subscribe(iox2.Slice[ctypes.c_uint8])
        .enable_safe_overflow(False)
        .subscriber_max_buffer_size(depth)
        .subscriber_max_borrowed_samples(2)
        .history_size(0)
        .max_subscribers(subs)
        .max_publishers(1)
        .open_or_create()
    )


def _iox_node() -> Any:
    import iceoryx2 as iox2

    iox2.set_log_level(iox2.LogLevel.Error)
    return iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)


# ---- the two ends of a stream ----


def _address(buf: bytearray) -> int:
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


class _Tx:
    """The producing end: ``copy(src)`` sends the bytes of ``src``; ``loan(seq)``
    builds a message in place, writing only its number.  Both wait as long
    as the receivers make them (they drain until told to stop)."""

    def __init__(self, spec: Tuple[Any, ...]) -> None:
        kind = self.kind = spec[0]
        self.size = spec[2]
        self.close: Callable[[], None] = lambda: None
        if kind in CHANNELS:
            self.obj = fastshm.Publisher(spec[1], create=False, backend=CHANNELS[kind])
            self.close = self.obj.close
        elif kind in IOX:
            import iceoryx2 as iox2

            self.node = _iox_node()
            self.svc = _iox_service(self.node, spec[1], spec[3], spec[4])
            self.obj = (
                self.svc.publisher_builder()
                .initial_max_slice_len(self.size)
                .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
                .max_loaned_samples(1)
                .create()
            )
            self.close = self.obj.delete
        elif kind == "segment":
            self.obj = fastshm.Segment(spec[1], create=False)
            self.close = self.obj.close
        elif kind == "fastshm-queue":
            self.obj = fastshm.Queue(spec[1], create=False)
            self.close = self.obj.close
        elif kind == "socket":
            self.obj = spec[1]
            self.obj.settimeout(TIMEOUT)
            self.close = self.obj.close
        else:
            raise ValueError(kind)

    def connect(self) -> None:
        """Every consumer has joined by now: an iceoryx2 publisher connects
        to them before the first message (a sample sent while it connects
        may be lost)."""
        if self.kind in IOX:
            self.obj.update_connections()

    def copy(self, src: bytearray, addr: int) -> None:
        kind, obj = self.kind, self.obj
        if kind in CHANNELS:
            while True:
                try:
                    obj.publish(src, STEP)
                    return
                except TimeoutError:
                    continue
        elif kind in IOX:
            sample = obj.loan_slice_uninit(self.size)
            ctypes.memmove(sample.payload().as_ptr(), addr, self.size)
            sample.assume_init().send()
        elif kind == "segment":
            obj.store(src)
        elif kind == "fastshm-queue":
            while True:
                try:
                    obj.put(src, timeout=STEP)
                    return
                except queue_mod.Full:
                    continue
        else:
            obj.sendall(src)

    def loan(self, seq: int) -> None:
        kind, obj, end = self.kind, self.obj, self.size - 8
        if kind in CHANNELS:
            while True:
                try:
                    with obj.loan(self.size, STEP) as buf:
                        HDR.pack_into(buf, 0, seq)
                        HDR.pack_into(buf, end, seq)
                    return
                except TimeoutError:
                    continue
        elif kind in IOX:
            sample = obj.loan_slice_uninit(self.size)
            view = sample.payload().as_memory_view()
            HDR.pack_into(view, 0, seq)
            HDR.pack_into(view, end, seq)
            view.release()
            sample.assume_init().send()
        else:
            raise ValueError(f"{kind} cannot lend its memory")


class _Rx:
    """The consuming end: ``take(how)`` returns the next message's number
    (raising TimeoutError after about STEP seconds without one), having
    copied it into the ready buffer (``copy``), into a new bytes object
    (``bytes``), or read its two numbers in place (``inplace``)."""

    def __init__(self, spec: Tuple[Any, ...]) -> None:
        kind = self.kind = spec[0]
        self.size = spec[2]
        self.target = bytearray(self.size)
        self.tview = memoryview(self.target)
        self.addr = _address(self.target)
        self.close: Callable[[], None] = lambda: None
        self.pos = 0  # socket: bytes of the current message already in
        if kind in CHANNELS:
            self.obj = fastshm.Subscriber(spec[1], backend=CHANNELS[kind])
            self.close = self.obj.close
        elif kind in IOX:
            self.node = _iox_node()
            self.svc = _iox_service(self.node, spec[1], spec[3], spec[4])
            self.obj = self.svc.subscriber_builder().buffer_size(spec[4]).create()
            self.close = self.obj.delete
        elif kind == "segment":
            self.obj = fastshm.Segment(spec[1], create=False)
            self.close = self.obj.close
        elif kind == "fastshm-queue":
            self.obj = fastshm.Queue(spec[1], create=False)
            self.close = self.obj.close
        elif kind == "socket":
            self.obj = spec[1]
            self.obj.settimeout(STEP)
            self.close = self.obj.close
        else:
            raise ValueError(kind)

    def _numbers(self, buf: Any, n: int) -> int:
        seq = HDR.unpack_from(buf, 0)[0]
        if HDR.unpack_from(buf, n - 8)[0] != seq:
            return -1  # torn: the two ends of one message disagree
        return seq  # type: ignore[no-any-return]

    def _iox_sample(self) -> Any:
        sub, polite = self.obj, self.kind == "iceoryx2-yield"
        deadline = time.monotonic() + STEP
        spins = 0
        while True:
            sample = sub.receive()
            if sample is not None:
                return sample
            if polite:
                os.sched_yield()
            spins += 1
            if spins & 1023 == 0 or polite:
                if time.monotonic() > deadline:
                    raise TimeoutError("iceoryx2: no message")

    def take(self, how: str) -> int:
        kind, obj = self.kind, self.obj
        if kind in CHANNELS and how == "copy":
            # The copy-out the other contenders make: no Sample at all.
            n = obj.receive_into(self.tview, STEP)
            return self._numbers(self.target, n)
        if kind in CHANNELS:
            sample = obj.receive(STEP)
            n = len(sample)
            if how == "inplace":
                seq = self._numbers(sample, n)
                sample.release()
                return seq
            data = bytes(sample)  # "bytes"
            sample.release()
            return self._numbers(data, n)
        if kind in IOX:
            sample = self._iox_sample()
            payload = sample.payload()
            n = payload.len()
            if how == "inplace":
                view = payload.as_memory_view()
                seq = self._numbers(view, n)
                view.release()
            else:
                ctypes.memmove(self.addr, payload.as_ptr(), n)
                seq = self._numbers(self.target, n)
            sample.delete()
            return seq
        if kind == "segment":
            obj.wait(STEP)
            n = obj.load_into(self.tview)
            return self._numbers(self.target, n)
        if kind == "fastshm-queue":
            try:
                n = obj.get_into(self.tview, timeout=STEP)
            except queue_mod.Empty:
                raise TimeoutError("queue: no message") from None
            return self._numbers(self.target, n)
        # socket: the whole message, however many reads it takes; a read
        # that times out keeps what came for the next call.
        view, size = self.tview, self.size
        while self.pos < size:
            got = obj.recv_into(view[self.pos :])
            if got == 0:
                raise EOFError("socket closed")
            self.pos += got
        self.pos = 0
        return self._numbers(self.target, size)


def _recv(conn: Any, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise TimeoutError("no word from the benchmark's main process")
    return conn.recv()


def _producer_child(spec: Tuple[Any, ...], how: str, ctl: Any) -> None:
    tx = _Tx(spec)
    size = spec[2]
    src = bytearray(size)
    addr = _address(src)
    end = size - 8
    ctl.send("ready")
    start, deadline = _recv(ctl, TIMEOUT * 2)
    tx.connect()
    pause = start - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    clock = time.monotonic
    cpu0 = _cpu()
    sent = 0
    while clock() < deadline:
        seq = sent + 1
        if how == "loan":
            tx.loan(seq)
        else:
            HDR.pack_into(src, 0, seq)
            HDR.pack_into(src, end, seq)
            tx.copy(src, addr)
        sent = seq
    ctl.send({"sent": sent, "cpu_s": _cpu() - cpu0, "secs": clock() - start})
    # The consumers may still hold samples: close once they are done.
    _recv(ctl, TIMEOUT * 2)
    tx.close()


def _consumer_child(spec: Tuple[Any, ...], how: str, lossless: bool, ctl: Any) -> None:
    rx = _Rx(spec)
    ctl.send("ready")
    start, deadline = _recv(ctl, TIMEOUT * 2)
    pause = start - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    clock = time.monotonic
    cpu0 = _cpu()
    cpu = None
    got = bad = last = 0
    first_bad = ""
    while True:
        try:
            seq: Optional[int] = rx.take(how)
        except TimeoutError:
            seq = None
        now = clock()
        if seq is not None:
            if seq < 0 or (seq != last + 1 if lossless else seq <= last):
                bad += 1
                if not first_bad:
                    first_bad = f"message {seq} after {last}" if seq >= 0 else "torn message"
            last = max(last, seq)
            if now < deadline:
                got += 1
        if now >= deadline:
            if cpu is None:
                cpu = _cpu() - cpu0
            # Drain until the producer is done, so it never waits on a
            # consumer that is gone.
            if ctl.poll():
                break
    ctl.send({"received": got, "cpu_s": cpu, "bad": bad, "first_bad": first_bad, "last": last})
    rx.close()


class _Transport:
    """One run's channel of a kind, made by the main process: the specs the
    children open it with, and what frees it."""

    def __init__(self, kind: str, names: Names, size: int, subs: int, depth: int) -> None:
        self.cleanup: List[Callable[[], None]] = []
        self.consumer_specs: List[Tuple[Any, ...]] = []
        self.held: Any = None
        if kind in CHANNELS:
            name = names.new("ch")
            pub = fastshm.Publisher(
                name, size, depth, overflow="block", create=True, backend=CHANNELS[kind]
            )
            self.cleanup.append(pub.delete)
            self.producer_spec: Tuple[Any, ...] = (kind, name, size)
        elif kind in IOX:
            # The main process holds the service while the children come
            # and go; iceoryx2 removes its files when the last holder leaves.
            name = names.new("iox")
            node = _iox_node()
            self.held = (node, _iox_service(node, name, subs, depth))
            self.producer_spec = (kind, name, size, subs, depth)
        elif kind == "segment":
            name = names.new("seg")
            fastshm.Segment(name, size, create=True).close()
            self.cleanup.append(lambda: fastshm.Segment(name, create=False).delete())
            self.producer_spec = (kind, name, size)
        elif kind == "fastshm-queue":
            name = names.new("q")
            q = fastshm.Queue(name, depth * (size + 64), create=True)
            if q.max_message < size:
                q.delete()
                raise ValueError(f"a queue of {depth} messages cannot hold one of {size} B")
            self.cleanup.append(q.delete)
            self.producer_spec = (kind, name, size)
        elif kind == "socket":
            if subs != 1:
                raise ValueError("a socketpair has one reader")
            a, b = socket.socketpair()
            self.cleanup += [a.close, b.close]
            self.producer_spec = (kind, a, size)
            self.consumer_specs = [(kind, b, size)]
        else:
            raise ValueError(kind)
        if not self.consumer_specs:
            self.consumer_specs = [self.producer_spec] * subs

    def close(self) -> None:
        _clean_up(self.cleanup)
        self.held = None


def _c_stream_run(size: int, slots: int, seconds: float) -> Dict[str, Any]:
    """The C stream (cfloor.frames_run) for ``seconds``, as _stream_run
    reports a run."""
    f = cfloor.frames_run(size, slots, seconds)
    if f is None:
        raise RuntimeError(f"the C floors are not available: {cfloor.why()}")
    n = f["sent"]
    return {
        "sent": n,
        "producer_cpu_s": f["producer_cpu_s"],
        "received": n,
        "received_min": n,
        "consumer_cpu_s": f["consumer_cpu_s"],
        "bad": int(f["bad"]),
        "first_bad": f"{int(f['bad'])} frames with wrong numbers" if f["bad"] else "",
        "rate": n / f["seconds"],
    }


def _stream_run(
    kind: str,
    names: Names,
    size: int,
    subs: int,
    depth: int,
    make: str,
    take: str,
    seconds: float,
) -> Dict[str, Any]:
    """One producer and ``subs`` consumers for ``seconds``; what each did."""
    if kind in C_FRAMES:
        return _c_stream_run(size, C_FRAMES[kind], seconds)
    tr = _Transport(kind, names, size, subs, depth)
    procs: List[Any] = []
    pctl = None
    cctl: List[Any] = []
    ok = False
    wait = seconds + TIMEOUT
    try:
        mine, theirs = _ctx.Pipe()
        procs.append(
            _ctx.Process(target=_producer_child, args=(tr.producer_spec, make, theirs), daemon=True)
        )
        pctl = mine
        for spec in tr.consumer_specs:
            mine, theirs = _ctx.Pipe()
            procs.append(
                _ctx.Process(
                    target=_consumer_child,
                    args=(spec, take, kind not in LOSSY, theirs),
                    daemon=True,
                )
            )
            cctl.append(mine)
        # Consumers first: each has joined before the producer can send.
        for p in procs[1:] + procs[:1]:
            p.start()
        for c in cctl + [pctl]:
            if _recv(c, wait) != "ready":
                raise RuntimeError("a child failed to start")
        start = time.monotonic() + 0.05
        deadline = start + seconds
        for c in [pctl] + cctl:
            c.send((start, deadline))
        w = _recv(pctl, wait)
        for c in cctl:
            c.send("stop")
        rs = [_recv(c, wait) for c in cctl]
        pctl.send("bye")
        ok = True
    finally:
        started = [p for p in procs if p.pid is not None]
        if not ok:
            for p in started:
                if p.is_alive():
                    p.terminate()
        _join(started)
        tr.close()
    received = sum(r["received"] for r in rs)
    return {
        "sent": w["sent"],
        "producer_cpu_s": w["cpu_s"],
        "received": received,
        "received_min": min(r["received"] for r in rs),
        "consumer_cpu_s": sum(r["cpu_s"] for r in rs),
        "bad": sum(r["bad"] for r in rs),
        "first_bad": next((r["first_bad"] for r in rs if r["first_bad"]), ""),
        "rate": received / seconds,
    }


def _streams(
    case: str,
    plan: List[Tuple[str, str, str]],
    names: Names,
    size: int,
    subs: int,
    depth: int,
    seconds: float,
    repeats: int,
    progress: Progress,
) -> List[Dict[str, Any]]:
    """Every (contender, make, take) of ``plan`` ``repeats`` times, in turns;
    one row each, from its median run, with every run's rate and CPU by
    repeat (``per_run``: runs of one repeat were close in time, so their
    ratios are paired, free of the machine's slower drifts)."""
    left_out = {p: why_not(p[0]) for p in plan if why_not(p[0])}
    plan = [p for p in plan if p not in left_out]
    if not plan:
        return []
    progress.step(
        f"{case}: {human(size)} to {subs} consumer(s), "
        + ", ".join(f"{k} ({OPS[m, t]})" for k, m, t in plan)
    )
    runs: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = {p: [] for p in plan}
    errors: Dict[Tuple[str, str, str], str] = {}
    for r in range(repeats):
        k = r % len(plan)
        for p in plan[k:] + plan[:k]:
            if p in errors:
                continue
            try:
                run = _stream_run(p[0], names, size, subs, depth, p[1], p[2], seconds)
                run["repeat"] = r
                runs[p].append(run)
            except Exception as e:  # noqa: BLE001 -- reported in the row, the suite goes on
                errors[p] = f"{type(e).__name__}: {e}"
                sys.stderr.write(f"benchmarks: {case} {p[0]} {OPS[p[1:]]} failed: {errors[p]}\n")
    rows: List[Dict[str, Any]] = [
        {
            "case": case,
            "op": OPS[p[1:]],
            "contender": p[0],
            "size": size,
            "subscribers": subs,
            "seconds": seconds,
            "lossless": p[0] not in LOSSY,
            "skipped": why,
        }
        for p, why in left_out.items()
    ]
    for p in plan:
        kind, make, take = p
        row: Dict[str, Any] = {
            "case": case,
            "op": OPS[make, take],
            "contender": kind,
            "size": size,
            "subscribers": subs,
            "depth": depth,
            "seconds": seconds,
            "lossless": kind not in LOSSY,
        }
        rs = sorted(runs[p], key=lambda x: x["rate"])
        if not rs:
            row["error"] = errors.get(p, "no run")
            rows.append(row)
            continue
        med = rs[len(rs) // 2]
        row.update(
            {
                "msgs_per_s": med["rate"],  # deliveries: messages times consumers
                "min_msgs_per_s": rs[0]["rate"],
                "max_msgs_per_s": rs[-1]["rate"],
                "per_consumer_per_s": med["rate"] / subs,
                "sent_per_s": med["sent"] / seconds,
                "throughput_GBps": med["rate"] * size / 1e9,
                "producer_cpu_s": med["producer_cpu_s"],
                "consumer_cpu_s": med["consumer_cpu_s"],
                "producer_cpu_ms_per_msg": 1e3 * med["producer_cpu_s"] / max(med["sent"], 1),
                "consumer_cpu_ms_per_msg": 1e3 * med["consumer_cpu_s"] / max(med["received"], 1),
                "cpu_ms_per_delivered": 1e3
                * (med["producer_cpu_s"] + med["consumer_cpu_s"])
                / max(med["received"], 1),
                "bad": sum(x["bad"] for x in rs),
                "runs": len(rs),
                "per_run": [
                    {
                        "repeat": x["repeat"],
                        "msgs_per_s": x["rate"],
                        "cpu_ms_per_delivered": 1e3
                        * (x["producer_cpu_s"] + x["consumer_cpu_s"])
                        / max(x["received"], 1),
                    }
                    for x in runs[p]
                ],
            }
        )
        if p in errors:
            row["error"] = errors[p]
        bad = next((x["first_bad"] for x in rs if x["first_bad"]), "")
        if bad:
            row["first_bad"] = bad
            sys.stderr.write(f"benchmarks: {case} {kind}: wrong messages ({bad})\n")
        rows.append(row)
    return rows


def human(n: int) -> str:
    from .report import human_size

    return human_size(n)


def _memcpy_row(case: str, size: int) -> List[Dict[str, Any]]:
    """One C memcpy of ``size`` bytes in one process: the floor of a copy."""
    loop = cfloor.memcpy_loop(size)
    if loop is None:
        return []
    ns = min(loop.batch(5) for _ in range(5))
    return [{"case": case, "op": "floor", "contender": "memcpy-c", "size": size, "memcpy_ns": ns}]


# ---- C1-C3 ----


def _no_channel(case: str, size: int) -> List[Dict[str, Any]]:
    """The row that says a case did not run: the channel does not work here."""
    return [
        {
            "case": case,
            "op": "",
            "contender": "channel",
            "size": size,
            "subscribers": 1,
            "seconds": 0.0,
            "lossless": True,
            "skipped": why_not("channel"),
        }
    ]


def _plan(runs: List[Tuple[str, str, str]], cffi: bool) -> List[Tuple[str, str, str]]:
    """The runs of a case; the cffi route's only when asked for."""
    return [r for r in runs if cffi or r[0] != "channel-cffi"]


def frames(
    names: Names, seconds: float, repeats: int, progress: Progress, cffi: bool = True
) -> List[Dict[str, Any]]:
    """C1: frames copied in and out, one producer to one consumer, beside
    the same stream in C."""
    if why_not("channel"):
        return _no_channel("channel frames", FRAME)
    plan = _plan([(k, "copy", "copy") for k in FRAMES_KINDS], cffi)
    rows = _streams("channel frames", plan, names, FRAME, 1, SLOTS, seconds, repeats, progress)
    return rows + _memcpy_row("channel frames", FRAME)


def big(
    names: Names, seconds: float, repeats: int, progress: Progress, cffi: bool = True
) -> List[Dict[str, Any]]:
    """C2: 16 MiB messages one to one, copied and in place, and a socketpair."""
    if why_not("channel"):
        return _no_channel("channel 1:1", BIG)
    plan = _plan(list(BIG_RUNS), cffi)
    rows = _streams("channel 1:1", plan, names, BIG, 1, SLOTS, seconds, repeats, progress)
    return rows + _memcpy_row("channel 1:1", BIG)


def fan_out(
    names: Names, seconds: float, repeats: int, progress: Progress, cffi: bool = True
) -> List[Dict[str, Any]]:
    """C3: 1 MiB messages to 4 subscribers reading in place."""
    if why_not("channel"):
        return _no_channel("channel fan-out", FAN_SIZE)
    plan = _plan([(k, "loan", "inplace") for k in FAN_KINDS], cffi)
    return _streams(
        "channel fan-out", plan, names, FAN_SIZE, FAN_SUBS, FAN_SLOTS, seconds, repeats, progress
    )


# ---- C4: the round trip, through crossproc's machinery ----


class ChannelEnd:
    """Two channels: ``tx`` this side publishes on, ``rx`` the other's,
    which it subscribes to; both through ``route``."""

    def __init__(self, tx: str, rx: str, route: str) -> None:
        self.pub = fastshm.Publisher(tx, create=False, backend=route)
        self.sub = fastshm.Subscriber(rx, backend=route)

    def send(self, data: Any) -> None:
        self.pub.publish(data, TIMEOUT)

    def recv(self) -> bytes:
        with self.sub.receive(TIMEOUT) as sample:
            return bytes(sample)

    def recv_into(self, buf: Any, timeout: float) -> int:
        return self.sub.receive_into(buf, timeout)

    def close(self) -> None:
        self.sub.close()
        self.pub.close()


def make_end(spec: Tuple[Any, ...]) -> ChannelEnd:
    return ChannelEnd(spec[1], spec[2], spec[0][3:])


def channel(
    kind: str, names: Names, size: int
) -> Tuple[Tuple[Any, ...], Tuple[Any, ...], List[Callable[[], None]]]:
    """Both sides' specs of a round-trip pair of channels, and what frees it."""
    cleanup = []
    a, b = names.new("ch"), names.new("ch")
    for n in (a, b):
        pub = fastshm.Publisher(n, max(size, 1), SLOTS, overflow="block", create=True)
        cleanup.append(pub.delete)
    return (kind, a, b), (kind, b, a), cleanup


def round_trip(
    names: Names, sizes: List[int], block_s: float, blocks: int, progress: Progress
) -> List[Dict[str, Any]]:
    """C4: publish -> receive_into there and back, beside the Segment's
    store -> wait -> load_into, interleaved in blocks (crossproc.round_trip)."""
    from . import crossproc

    kinds = tuple(k for k in ROUND_TRIP if not why_not(k))
    if "ch-native" not in kinds:
        return []
    return crossproc.round_trip(
        names,
        sizes,
        block_s,
        blocks,
        progress,
        kinds,
        case="channel round trip",
        labels=RT_LABELS,
        into=True,
    )


# ---- C5: a blocked receive, and receive + release against a copy ----


def _idle_child(name: str, route: str, seconds: float, ctl: Any) -> None:
    sub = fastshm.Subscriber(name, backend=route)
    ctl.send("ready")
    cpu0, t0 = time.process_time(), time.monotonic()
    woke = False
    try:
        with sub.receive(seconds) as sample:
            woke = bytes(sample) == b"wake up"
    except TimeoutError:
        pass
    ctl.send({"cpu_s": time.process_time() - cpu0, "wall_s": time.monotonic() - t0, "woke": woke})
    sub.close()


def _sample_costs(names: Names, kind: str, count: int) -> List[Dict[str, Any]]:
    """receive + release of a 16 MiB sample, and copying it out, timed call
    by call in one process (each message built in a loan, untimed).  Between
    copies of 16 MiB the channel's own lines and pages are out of the caches,
    as in a program that uses the data: that is the figure the target takes;
    back to back (nothing between) is the warm one."""
    route = CHANNELS[kind]
    name = names.new("chs")
    pub = fastshm.Publisher(name, BIG, 2, overflow="block", create=True, backend=route)
    sub = fastshm.Subscriber(name, backend=route)
    target = bytearray(BIG)
    tview = memoryview(target)
    clock = time.perf_counter_ns
    times: Dict[str, List[float]] = {op: [] for op in SAMPLE_OPS}
    try:
        for i in range(count + 4):  # the first four fault the pages in
            with pub.loan(BIG, TIMEOUT) as buf:
                buf[0] = buf[BIG - 1] = i & 255
            t0 = clock()
            sample = sub.receive(TIMEOUT)
            t1 = clock()
            tview[:] = sample
            t2 = clock()
            data = bytes(sample)
            t3 = clock()
            sample.release()
            t4 = clock()
            if not data[0] == data[-1] == target[0] == target[-1] == i & 255:
                raise RuntimeError(f"sample {i} holds another message")
            del data
            if i >= 4:
                times[SAMPLE_OPS[0]].append(float(t1 - t0 + t4 - t3))
                times[SAMPLE_OPS[2]].append(float(t2 - t1))
                times[SAMPLE_OPS[3]].append(float(t3 - t2))
        for i in range(count + 4):
            with pub.loan(BIG, TIMEOUT) as buf:
                buf[0] = i & 255
            t0 = clock()
            sample = sub.receive(TIMEOUT)
            sample.release()
            t1 = clock()
            if i >= 4:
                times[SAMPLE_OPS[1]].append(float(t1 - t0))
    finally:
        sub.close()
        pub.delete()
    return [
        {"case": "channel sample", "op": op, "contender": kind, "size": BIG, **summarize(t)}
        for op, t in times.items()
    ]


def _memcpy_sample(count: int) -> List[Dict[str, Any]]:
    loop = cfloor.memcpy_loop(BIG)
    if loop is None:
        return []
    ts = [loop.batch(3) for _ in range(max(5, count // 4))]
    return [
        {
            "case": "channel sample",
            "op": "memcpy-c",
            "contender": "memcpy-c",
            "size": BIG,
            **summarize(ts),
        }
    ]


def idle_and_sample(
    names: Names, idle_seconds: float, count: int, progress: Progress
) -> List[Dict[str, Any]]:
    """C5: a subscriber per route blocked in receive() with nothing coming,
    its CPU read from /proc over ``idle_seconds`` (while this process times
    receive + release against a copy, on the other core), then woken."""
    kinds = [k for k in CHANNELS if not why_not(k)]
    if "channel" not in kinds:
        return []
    progress.step(
        f"channel idle receive ({idle_seconds:.1f} s) and 16 MiB receive+release "
        f"({', '.join(kinds)})"
    )
    pubs, procs, ctls = {}, {}, {}
    rows: List[Dict[str, Any]] = []
    idle: List[Dict[str, Any]] = []
    try:
        for kind in kinds:
            name = names.new("chi")
            pubs[kind] = fastshm.Publisher(name, 64, 2, create=True)
            mine, theirs = _ctx.Pipe()
            procs[kind] = _ctx.Process(
                target=_idle_child,
                args=(name, CHANNELS[kind], idle_seconds + 30, theirs),
                daemon=True,
            )
            procs[kind].start()
            ctls[kind] = mine
        for kind in kinds:
            if _recv(ctls[kind], TIMEOUT * 2) != "ready":
                raise RuntimeError(f"{kind} idle child failed")
        time.sleep(0.5)  # past the receive's spin and the interpreter's start-up
        t0 = time.monotonic()
        cpu0 = {k: cpu_of(p.pid) for k, p in procs.items() if p.pid is not None}
        for kind in kinds:
            try:
                rows += _sample_costs(names, kind, count)
            except Exception as e:  # noqa: BLE001 -- reported in the row
                rows.append(
                    {
                        "case": "channel sample",
                        "op": SAMPLE_OPS[0],
                        "contender": kind,
                        "size": BIG,
                        "error": f"{type(e).__name__}: {e}",
                    }
                )
        rows += _memcpy_sample(count)
        left = idle_seconds - (time.monotonic() - t0)
        if left > 0:
            time.sleep(left)
        t1 = time.monotonic()
        cpu1 = {k: cpu_of(p.pid) for k, p in procs.items() if p.pid is not None}
        for kind in kinds:
            pubs[kind].publish(b"wake up")
        for kind in kinds:
            r = _recv(ctls[kind], TIMEOUT)
            a, b = cpu0.get(kind), cpu1.get(kind)
            if a is None or b is None:  # no /proc: the child's own count
                used, wall, how = r["cpu_s"], r["wall_s"], "process_time"
            else:
                used, wall, how = b - a, t1 - t0, "/proc schedstat"
            idle.append(
                {
                    "case": "channel idle",
                    "op": "blocked receive()",
                    "contender": kind,
                    "size": 64,
                    "seconds": wall,
                    "cpu_s": used,
                    "core_percent": 100 * used / max(wall, 1e-9),
                    "woke": r["woke"],
                    "measured_by": how,
                }
            )
    finally:
        _join([p for p in procs.values() if p.pid is not None])
        for pub in pubs.values():
            pub.delete()
    return idle + rows


def steps(rt_sizes: List[int]) -> int:
    """Progress steps of a run: C1, C2, C3, C4 (one a size), C5."""
    return 4 + len(rt_sizes)


def run(names: Names, cfg: Dict[str, Any], progress: Progress) -> List[Dict[str, Any]]:
    """Every channel case with the run's settings (run.CONFIGS)."""
    seconds, repeats, cffi = cfg["chan_seconds"], cfg["chan_repeats"], cfg["chan_cffi"]
    rows = frames(names, cfg["chan_frames_seconds"], cfg["chan_frames_repeats"], progress, cffi)
    rows += big(names, seconds, repeats, progress, cffi)
    rows += fan_out(names, seconds, repeats, progress, cffi)
    rows += round_trip(
        names, cfg["chan_rt_sizes"], cfg["chan_rt_block_s"], cfg["chan_rt_blocks"], progress
    )
    rows += idle_and_sample(names, cfg["chan_idle_seconds"], cfg["chan_sample_count"], progress)
    return rows
