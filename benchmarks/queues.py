"""Queue cases across processes: messages per second from producers that put
as fast as they can to consumers that take everything, the CPU each message
costs, a consumer taking many messages a call, and the round trip through
two queues.

Contenders:

- ``native`` / ``native-cffi`` / ``python``: ``fastshm.Queue`` on the C
  core through the C-API binding, through cffi, and on the pure-Python
  backend; ``put(msg)`` and ``get()``, or ``get_many()``;
- ``c-queue``: the floor, the same fastshm queue driven by C producers and
  consumers (``fshm_queue_put`` / ``fshm_queue_get``, or
  ``fshm_queue_get_packed`` for many a call; ``cfloor.queue_run``);
- ``faster-fifo`` (when installed): ``faster_fifo.Queue`` on its bytes path
  (``dumps`` passing the bytes through, ``loads=bytes``, so nothing is
  pickled), ``put`` / ``get`` or ``get_many``;
- ``queue``: ``multiprocessing.Queue(maxsize)``, ``put(bytes)`` / ``get()``,
  holding as many messages as the fastshm queue does.  Unbounded, its
  ``put`` only appends to a list that a feeder thread pickles and writes;
  a producer that never pauses keeps that thread from the GIL, its consumer
  gets next to nothing while it puts, and the backlog grows without end;
  bounded, the producer waits when it is full, as with the other queues;
- ``simplequeue``: ``multiprocessing.SimpleQueue``;
- ``pipe``: one direction of ``multiprocessing.Pipe(duplex=False)``,
  ``send_bytes`` / ``recv_bytes``; one producer and one consumer only (a
  pipe shared by several writers interleaves messages over PIPE_BUF, and
  its readers race for each message's header).

fastshm queues and faster-fifo hold 1 MiB of messages.  The producers put
for the run's seconds; then each finishes (``multiprocessing.Queue`` flushes
its feeder thread), and the main process puts one empty message per
consumer, which ends it.  Every message put is taken: "put/s" is what the
producers put over their seconds, "msgs/s" what the consumers had taken by
the deadline (they look at the clock every 32 messages, or every get_many),
over the same seconds; what was still queued is taken after it.  The CPU
is every child's own (``getrusage``, all its threads) over its whole part,
per message taken.  While they run, the main
process looks every 2 ms whether the queue (fastshm, faster-fifo) has room
for another message: "full" is the share of looks that found none, which
says whether the consumers held the producers back.

Children are started with the ``spawn`` method, every blocking call on the
main process's side has a timeout, and every child is joined with a timeout
(then terminated).
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import sys
import time
from itertools import islice
from typing import Any, Callable, Dict, List, Optional, Tuple

import fastshm

from . import cfloor
from .crossproc import TIMEOUT, _join, _recv_ctl
from .names import Names
from .timing import Progress

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

KIB, MIB = 1024, 1024 * 1024
CAPACITY = MIB  # ring bytes of a fastshm queue; faster-fifo's buffer alike
FSHM = ("native", "native-cffi", "python")
THROUGHPUT = FSHM + ("faster-fifo", "queue", "simplequeue", "pipe", "c-queue")
MANY = FSHM + ("faster-fifo", "c-queue")  # the contenders with a get_many
ONE_TO_ONE = ("pipe",)  # safe with one producer and one consumer only
C_BATCH = 1 << 16  # the C floor's get_many: as many as a call can take
# The round trip through two queues; "q-" kinds are fastshm queues.
ROUND_TRIP = (
    "q-native",
    "q-native-cffi",
    "q-python",
    "faster-fifo",
    "queue",
    "simplequeue",
    "pipe",
    "c-spin",
    "c-spin-yield",
)
RT_LABELS = {"q-native": "native", "q-native-cffi": "native-cffi", "q-python": "python"}
SAMPLE_S = 0.002  # how often the main process looks at the queue's fill
PUT_CHUNK = 32  # puts between two looks at the clock
GET_CHUNK = 32  # gets likewise

_ctx = mp.get_context("spawn")


def _cpu() -> float:
    """CPU seconds of this process, every thread (a multiprocessing.Queue's
    feeder thread does the pickling and writing)."""
    if resource is None:
        return time.process_time()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _faster_fifo() -> Any:
    try:
        import faster_fifo
    except Exception:
        return None
    return faster_fifo


def _passthrough(b: Any) -> Any:
    """faster-fifo's ``dumps`` on its bytes path (module level: it travels
    with the queue to the children)."""
    return b


_routes: Optional[Dict[str, str]] = None


def fshm_routes() -> Dict[str, str]:
    """The fastshm queue routes this build has, each with why not when it
    has not: {route: ""} when it works."""
    global _routes
    if _routes is not None:
        return _routes
    from .crossproc import _seg_routes

    have = _seg_routes()
    out = {}
    queue_cls = getattr(fastshm, "Queue", None)
    for route in FSHM:
        if queue_cls is None:
            out[route] = "fastshm has no Queue"
            continue
        if route not in have:
            out[route] = "not a separate binding here"
            continue
        name = f"fshmbench_{os.getpid()}_probe"
        try:
            q = queue_cls(name, 64, create=True, backend=route)
        except Exception as e:
            out[route] = f"{type(e).__name__}: {e}"
            continue
        try:
            q.put(b"x")
            q.get(timeout=1)
            out[route] = ""
        except Exception as e:
            out[route] = f"{type(e).__name__}: {e}"
        finally:
            q.delete()
    _routes = out
    return out


def why_not(kind: str) -> str:
    """Why a contender is left out of this run ("" when it runs)."""
    base = RT_LABELS.get(kind, kind)
    if base in FSHM:
        return fshm_routes().get(base, "unknown route")
    if kind == "faster-fifo":
        return "" if _faster_fifo() is not None else "not installed"
    if kind == "c-queue":
        return "" if cfloor.load_queue() is not None else f"n/a: {cfloor.queue_why()}"
    if kind in ("c-spin", "c-spin-yield"):
        return "" if cfloor.load() is not None else f"n/a: {cfloor.why()}"
    return ""


# ---- the contenders' ends, for the round trip (crossproc's echo child) ----


class QueueEnd:
    """Two queues of any kind with put / get: ``tx`` this side's, ``rx`` the
    other's."""

    def __init__(self, tx: Any, rx: Any) -> None:
        self.tx, self.rx = tx, rx

    def send(self, data: Any) -> None:
        self.tx.put(data)

    def recv(self) -> Any:
        return self.rx.get()

    def recv_into(self, buf: Any, timeout: float) -> int:
        data = self.rx.get()
        return len(data)

    def close(self) -> None:
        pass


class FshmQueueEnd(QueueEnd):
    def __init__(self, tx: str, rx: str, backend: str) -> None:
        super().__init__(
            fastshm.Queue(tx, create=False, backend=backend),
            fastshm.Queue(rx, create=False, backend=backend),
        )

    def recv(self) -> Any:
        return self.rx.get(timeout=TIMEOUT)

    def recv_into(self, buf: Any, timeout: float) -> int:
        return self.rx.get_into(buf, timeout=timeout)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.tx.close()
        self.rx.close()


def make_end(spec: Tuple[Any, ...]) -> Any:
    kind = spec[0]
    if kind.startswith("q-"):
        return FshmQueueEnd(spec[1], spec[2], kind[2:])
    return QueueEnd(spec[1], spec[2])


def channel(kind: str, names: Names, size: int) -> Tuple[Tuple[Any, ...], Tuple[Any, ...], list]:
    """Both sides' specs of a round-trip channel, and what frees it."""
    cleanup: List[Callable[[], None]] = []
    if kind.startswith("q-"):
        route = kind[2:]
        a, b = names.new("q"), names.new("q")
        for n in (a, b):
            fastshm.Queue(n, max(CAPACITY, 8 * size), create=True, backend=route).close()
            cleanup.append(lambda n=n, r=route: fastshm.Queue(n, create=False, backend=r).delete())
        return (kind, a, b), (kind, b, a), cleanup
    if kind == "faster-fifo":
        ff = _faster_fifo()
        q1, q2 = (
            ff.Queue(max(CAPACITY, 8 * size), loads=bytes, dumps=_passthrough) for _ in range(2)
        )
        return (kind, q1, q2), (kind, q2, q1), cleanup
    if kind == "simplequeue":
        q1, q2 = _ctx.SimpleQueue(), _ctx.SimpleQueue()
        for q in (q1, q2):
            cleanup.append(q.close)
        return (kind, q1, q2), (kind, q2, q1), cleanup
    raise ValueError(kind)


# ---- throughput: producers putting as fast as they can ----


class _Contender:
    """One run's queue: what the children get, how the main process ends the
    consumers, looks at the fill, and frees it."""

    def __init__(self, kind: str, names: Names, size: int) -> None:
        self.kind = kind
        self.size = size
        self.cleanup: List[Callable[[], None]] = []
        self.probe: Optional[Callable[[], bool]] = None
        # Called first when the run failed: a consumer that is gone cannot
        # drain a multiprocessing.Queue's feeder thread.
        self.abandon: Optional[Callable[[], None]] = None
        rec = 8 + (size + 7) // 8 * 8
        if kind in FSHM:
            name = names.new("q")
            q = fastshm.Queue(name, CAPACITY, create=True, backend=kind)
            self.cleanup.append(q.delete)
            self.producer_spec: Tuple[Any, ...] = (kind, name)
            self.consumer_spec: Tuple[Any, ...] = (kind, name)
            self.end_one = lambda: q.put(b"", timeout=TIMEOUT)
            self.probe = lambda: q.capacity - q.bytes_used < rec
        elif kind == "faster-fifo":
            q = _faster_fifo().Queue(CAPACITY, loads=bytes, dumps=_passthrough)
            self.producer_spec = self.consumer_spec = (kind, q)
            self.end_one = lambda: q.put(b"", timeout=TIMEOUT)
            # Its records are the length (size_t) and the bytes.
            self.probe = lambda: CAPACITY - q.data_size() < size + 8
        elif kind == "queue":
            q = _ctx.Queue(maxsize=CAPACITY // rec)
            self.producer_spec = self.consumer_spec = (kind, q)
            self.end_one = lambda: q.put(b"")
            self.cleanup += [q.join_thread, q.close]
            self.abandon = q.cancel_join_thread
        elif kind == "simplequeue":
            q = _ctx.SimpleQueue()
            self.producer_spec = self.consumer_spec = (kind, q)
            self.end_one = lambda: q.put(b"")
            self.cleanup.append(q.close)
        elif kind == "pipe":
            r, w = _ctx.Pipe(duplex=False)
            self.producer_spec, self.consumer_spec = (kind, w), (kind, r)
            self.end_one = lambda: w.send_bytes(b"")
            self.cleanup += [r.close, w.close]
        else:
            raise ValueError(kind)

    def close(self, ok: bool) -> None:
        if not ok and self.abandon is not None:
            self.abandon()
        for c in reversed(self.cleanup):
            c()
        self.cleanup = []


def _open(spec: Tuple[Any, ...]) -> Any:
    kind = spec[0]
    if kind in FSHM:
        return fastshm.Queue(spec[1], create=False, backend=kind)
    return spec[1]


def _producer_child(spec: Tuple[Any, ...], size: int, ctl: Any) -> None:
    kind = spec[0]
    q = _open(spec)
    put = q.send_bytes if kind == "pipe" else q.put
    msg = os.urandom(size)
    ctl.send("ready")
    start, deadline = _recv_ctl(ctl)
    chunk = itertools.repeat  # the clock is read every PUT_CHUNK puts
    pause = start - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    cpu0 = _cpu()
    sent = 0
    while time.monotonic() < deadline:
        for _ in chunk(None, PUT_CHUNK):
            put(msg)
        sent += PUT_CHUNK
    put_s = time.monotonic() - start
    if kind == "queue":
        q.close()
        q.join_thread()  # every message in the pipe, as a producer that exits does
    cpu = _cpu() - cpu0
    ctl.send({"sent": sent, "put_s": put_s, "cpu_s": cpu})
    if kind in FSHM:
        q.close()


def _consumer_child(spec: Tuple[Any, ...], many: bool, ctl: Any) -> None:
    kind = spec[0]
    q = _open(spec)
    ctl.send("ready")
    start, deadline = _recv_ctl(ctl)
    cpu0 = _cpu()
    clock = time.monotonic
    got = 0
    by_deadline = None  # messages taken when the clock was first seen past it
    if many:
        # One consumer: the empty message that ends it is the last one.
        get_many = q.get_many
        while True:
            items = get_many()
            if not items[-1]:
                got += len(items) - 1
                break
            got += len(items)
            if by_deadline is None and clock() >= deadline:
                by_deadline = got
    else:
        # Messages up to the empty one, GET_CHUNK at a time between two
        # looks at the clock.
        it = iter(q.recv_bytes if kind == "pipe" else q.get, b"")
        while True:
            n = len(list(islice(it, GET_CHUNK)))
            got += n
            if n < GET_CHUNK:
                break
            if by_deadline is None and clock() >= deadline:
                by_deadline = got
    end_s = clock() - start
    cpu = _cpu() - cpu0
    if by_deadline is None:  # what came after the deadline was under a chunk
        by_deadline = got
    ctl.send({"received": got, "by_deadline": by_deadline, "end_s": end_s, "cpu_s": cpu})
    if kind in FSHM:
        q.close()


def _python_run(
    kind: str, names: Names, size: int, producers: int, consumers: int, many: bool, seconds: float
) -> Dict[str, Any]:
    con = _Contender(kind, names, size)
    procs: List[Any] = []
    pctl: List[Any] = []
    cctl: List[Any] = []
    ok = False
    try:
        for i in range(producers + consumers):
            mine, theirs = _ctx.Pipe()
            if i < producers:
                target, args = _producer_child, (con.producer_spec, size, theirs)
                pctl.append(mine)
            else:
                target, args = _consumer_child, (con.consumer_spec, many, theirs)
                cctl.append(mine)
            procs.append(_ctx.Process(target=target, args=args, daemon=True))
        for p in procs:
            p.start()
        for c in pctl + cctl:
            if _recv_ctl(c) != "ready":
                raise RuntimeError(f"{kind}: child failed")
        start = time.monotonic() + 0.05
        deadline = start + seconds
        for c in pctl + cctl:
            c.send((start, deadline))
        # Look at the fill while the producers put (the same sleeps for
        # every contender, so each run shares the cores alike).
        looks = full = 0
        while time.monotonic() < deadline:
            time.sleep(SAMPLE_S)
            if con.probe is not None and start <= time.monotonic() < deadline:
                looks += 1
                full += con.probe()
        ws = [_recv_ctl(c) for c in pctl]
        for _ in range(consumers):
            con.end_one()
        rs = [_recv_ctl(c) for c in cctl]
        ok = True
    finally:
        started = [p for p in procs if p.pid is not None]
        if not ok:
            for p in started:
                if p.is_alive():
                    p.terminate()
        _join(started)
        con.close(ok)
    return {
        "put": sum(w["sent"] for w in ws),
        "taken": sum(r["received"] for r in rs),
        "by_deadline": sum(r["by_deadline"] for r in rs),
        "cpu_s": sum(x["cpu_s"] for x in ws + rs),
        "put_s": max(w["put_s"] for w in ws),
        "take_s": max(r["end_s"] for r in rs),
        "full_share": full / looks if looks else None,
    }


def _run(
    kind: str, names: Names, size: int, producers: int, consumers: int, many: bool, seconds: float
) -> Dict[str, Any]:
    if kind == "c-queue":
        batch = C_BATCH if many else 1
        res = cfloor.queue_run(size, producers, consumers, batch, seconds, CAPACITY)
        assert res is not None
        res["full_share"] = None
        return res
    return _python_run(kind, names, size, producers, consumers, many, seconds)


def plan_kinds(producers: int, consumers: int, many: bool) -> Tuple[str, ...]:
    kinds = MANY if many else THROUGHPUT
    if producers > 1 or consumers > 1:
        kinds = tuple(k for k in kinds if k not in ONE_TO_ONE)
    return tuple(k for k in kinds if not why_not(k))


def throughput(
    names: Names,
    plan: List[Tuple[int, int, int, str]],
    seconds: float,
    repeats: int,
    progress: Progress,
) -> List[Dict[str, Any]]:
    """Each (size, producers, consumers, "get" or "get_many") of the plan:
    every contender ``repeats`` times, in turns; the median run's figures."""
    rows = []
    for size, producers, consumers, how in plan:
        many = how == "get_many"
        kinds = plan_kinds(producers, consumers, many)
        progress.step(f"queue: {size} B, {producers} -> {consumers}, {how} ({', '.join(kinds)})")
        runs: Dict[str, List[Dict[str, Any]]] = {k: [] for k in kinds}
        for r in range(repeats):
            k = r % len(kinds)
            for kind in kinds[k:] + kinds[:k]:
                runs[kind].append(_run(kind, names, size, producers, consumers, many, seconds))
        for kind in kinds:
            rs = runs[kind]
            lost = sum(x["put"] - x["taken"] for x in rs)
            if lost:
                sys.stderr.write(
                    f"benchmarks: {kind} took {lost:.0f} messages fewer than were put "
                    f"({size} B, {producers} -> {consumers}, {how})\n"
                )
            for x in rs:
                x["rate"] = x["by_deadline"] / seconds
            rs.sort(key=lambda x: x["rate"])
            med = rs[len(rs) // 2]
            rows.append(
                {
                    "case": "queue",
                    "op": f"{producers}→{consumers} {how}",
                    "contender": kind,
                    "size": size,
                    "producers": producers,
                    "consumers": consumers,
                    "consumer": how,
                    "seconds": seconds,
                    "msgs_per_s": med["rate"],
                    "min_msgs_per_s": rs[0]["rate"],
                    "max_msgs_per_s": rs[-1]["rate"],
                    "put_msgs_per_s": med["put"] / max(med["put_s"], 1e-9),
                    "drain_s": med["take_s"] - seconds,
                    "throughput_GBps": med["rate"] * size / 1e9,
                    "cpu_s": med["cpu_s"],
                    "cpu_us_per_msg": 1e6 * med["cpu_s"] / max(med["taken"], 1),
                    "messages_put": med["put"],
                    "messages_taken": med["taken"],
                    "lost": lost,
                    "full_share": med["full_share"],
                    "runs": len(rs),
                }
            )
    return rows


def round_trip(
    names: Names, sizes: List[int], block_s: float, blocks: int, progress: Progress
) -> List[Dict[str, Any]]:
    """A message there and back through two queues, as crossproc's round
    trip does it for every channel (the C ping-pong floor beside it)."""
    from . import crossproc

    kinds = tuple(k for k in ROUND_TRIP if not why_not(k))
    return crossproc.round_trip(
        names, sizes, block_s, blocks, progress, kinds, case="queue round trip", labels=RT_LABELS
    )


def skipped() -> Dict[str, str]:
    """The contenders this run leaves out, and why."""
    out = {}
    for k in THROUGHPUT + ROUND_TRIP:
        why = why_not(k)
        if why:
            out[RT_LABELS.get(k, k)] = why
    return out
