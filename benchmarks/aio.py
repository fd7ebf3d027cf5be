"""asyncio cases: ``fastshm.aio`` across processes, against a thread per
waiter and against asyncio's own streams (targets A1-A4 of the report).

- A1, ``aio idle``: a child process opens ``tasks`` (1000) small queues and
  starts one task per queue awaiting ``get()`` with nothing to get; after
  ``settle`` seconds its CPU (getrusage, all its threads) over an idle
  window, its threads and the growth of its resident memory since just
  before the tasks were made.  Then this process puts one message into each
  queue and the child counts the tasks that ended with their own message.
  Contender ``executor``: the same with ``loop.run_in_executor(pool,
  q.get)`` on synchronous queues, ``ThreadPoolExecutor(max_workers=1000)``;
- A2 and A3, ``aio wake``: this process stores into a Segment every
  ``pause`` seconds (a message of its number and ``time.perf_counter_ns()``,
  CLOCK_MONOTONIC: one clock for every process of the machine) and a child
  subtracts that stamp from the clock as soon as its waiter returns: the
  one-way wake-up latency of a task awaiting ``fastshm.aio.Segment.wait()``
  (``aio``), of the child's main thread blocked in ``Segment.wait()``
  (``thread``) and of a task awaiting ``loop.run_in_executor(None,
  seg.wait)`` (``executor``), in interleaved blocks.  Contender ``socket``,
  the floor of any event-loop wake-up: the same messages written instead to
  a Unix socket (one end of a ``socketpair``) that a task of the child's
  loop awaits with ``loop.sock_recv``;
- A4, ``aio ping-pong``: two asyncio processes hand a 64 B message back and
  forth: through two ``fastshm.aio.Queue`` (``aio``: A puts to q1, B awaits
  q1 and puts to q2, A awaits q2), asyncio streams over a Unix socket
  (``streams``: ``start_unix_server`` / ``open_unix_connection``, write +
  drain, ``readexactly(64)``) and ``zmq.asyncio`` PAIR sockets over ipc
  (``zmq``, when pyzmq is installed): round trips per second, interleaved
  runs.

Every loop is asyncio's default event loop, except in the contenders named
``-uvloop`` (when uvloop is installed): ``aio-uvloop`` and
``socket-uvloop`` in A2-A3, ``aio-uvloop`` and ``streams-uvloop`` in A4
(both processes), the same on uvloop's loop.  They are informational, beside
the targets, which rest on the default loop's rows.  Children are started with
``spawn``; every blocking step has a timeout, every coroutine a watchdog,
and every child is joined with a timeout (then terminated).  A contender
that fails is reported as failed, with why, and the suite goes on.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

import fastshm

from .channels import _cpu
from .crossproc import TIMEOUT, _clean_up, _join, _stop
from .names import Names
from .timing import Progress, summarize

QUEUE_SIZE = 4096  # A1: each awaited queue's ring
IDLE_KINDS = ("aio", "executor")
UVLOOP = "-uvloop"  # a contender on uvloop's event loop: its name ends so
WAKE_KINDS = ("aio", "thread", "executor", "socket", "aio" + UVLOOP, "socket" + UVLOOP)
PING_KINDS = ("aio", "streams", "zmq", "aio" + UVLOOP, "streams" + UVLOOP)
PING_SIZE = 64
PING_CHUNK = 64  # round trips between two looks at the clock
PING_WARM = 200  # untimed round trips at the start of each run
WAKE_WARM = 20  # untimed wake-ups before the first block
STAMP = struct.Struct("<QQ")  # A2: the message's number, the waker's clock
SEQ = struct.Struct("<Q")  # A4: the message's number, in its first 8 bytes
STOP = b"stop"  # A4: any message of another length than PING_SIZE ends an echo
SOCK_READ = 64 * STAMP.size  # A2 ``socket``: one read takes whatever came

_ctx = mp.get_context("spawn")


def _recv(conn: Any, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise TimeoutError("no word from the other process of the benchmark")
    return conn.recv()


def _rss_kib() -> int:
    """This process's resident memory in KiB (VmRSS); 0 without /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _base(kind: str) -> str:
    """The contender without its loop: ``aio`` of ``aio-uvloop``."""
    return kind[: -len(UVLOOP)] if kind.endswith(UVLOOP) else kind


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new event loop for ``kind``: uvloop's for the ``-uvloop`` kinds,
    else asyncio's default one."""
    if kind.endswith(UVLOOP):
        return importlib.import_module("uvloop").new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


def _run(coro: Awaitable[Any], limit: float, kind: str = "aio") -> Any:
    """``coro`` on a new event loop for ``kind`` (``_new_loop``), cancelled
    after ``limit`` s."""
    loop = _new_loop(kind)
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, limit))
    finally:
        loop.close()


# ---- what can run here ----

_why: Optional[Dict[str, str]] = None


def _unimportable(module: str) -> str:
    """Why ``module`` cannot be imported ("" when it can)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return "not installed"
    except Exception as e:  # noqa: BLE001 -- said in the report
        return f"{type(e).__name__}: {e}"
    return ""


def _probe() -> Dict[str, str]:
    """Why fastshm.aio, zmq and uvloop cannot run ("" when they can)."""
    global _why
    if _why is not None:
        return _why
    out = {"zmq": "", "uvloop": ""}
    try:
        from fastshm import aio  # noqa: F401

        out["aio"] = ""
    except Exception as e:  # noqa: BLE001 -- said in the report
        out["aio"] = f"{type(e).__name__}: {e}"
    out["zmq"] = _unimportable("zmq.asyncio")
    why = _unimportable("uvloop")
    out["uvloop"] = f"uvloop: {why}" if why else ""
    _why = out
    return out


def why_not(kind: str) -> str:
    """Why a contender is left out of this run ("" when it runs).  Every
    case is fastshm.aio's: without it none runs."""
    why = _probe()
    if why["aio"]:
        return f"fastshm.aio: {why['aio']}"
    if kind.endswith(UVLOOP) and why["uvloop"]:
        return why["uvloop"]
    return why.get(_base(kind), "")


def uvloop_version() -> str:
    """uvloop's version, "" without it."""
    if _probe()["uvloop"]:
        return ""
    return str(getattr(importlib.import_module("uvloop"), "__version__", "?"))


def skipped() -> Dict[str, str]:
    out = {}
    for k in IDLE_KINDS + WAKE_KINDS + PING_KINDS:
        why = why_not(k)
        if why:
            out[k] = why
    return out


def sleeps_in() -> str:
    """How a loop awaiting fastshm.aio sleeps here: on its own io_uring of
    futex waits (Linux 6.7+), else through the helper threads, in the
    kernel's futex_waitv or polling."""
    if why_not("aio"):
        return "n/a"
    try:  # an older fastshm has no such module
        from fastshm import _loop_ring

        if _loop_ring.ring_supported():
            return "the loop's own io_uring (futex waits)"
    except Exception:  # noqa: BLE001 -- then the helper threads serve
        pass
    from fastshm import _hub

    return "polling (no futex_waitv here)" if _hub.POLLS else "futex_waitv"


# ---- A1: 1000 tasks awaiting get(), idle ----


async def _idle(
    kind: str, qnames: List[str], settle: float, seconds: float, bound: float, ctl: Any
) -> None:
    loop = asyncio.get_running_loop()
    rss_start = _rss_kib()
    pool: Any = None
    helpers: Optional[Callable[[], int]] = None
    qs: List[Any]
    if kind == "aio":
        from fastshm import _hub, aio

        helpers = _hub.threads
        qs = [aio.Queue(n, create=False) for n in qnames]
    else:
        from concurrent.futures import ThreadPoolExecutor

        qs = [fastshm.Queue(n, create=False) for n in qnames]
        pool = ThreadPoolExecutor(max_workers=len(qs))
    threads0, rss0 = threading.active_count(), _rss_kib()
    tasks: List["asyncio.Future[Any]"]
    if kind == "aio":
        tasks = [asyncio.ensure_future(q.get()) for q in qs]
    else:
        # The blocking gets end by themselves after ``bound`` seconds, so
        # the process can end even if their messages never come.
        tasks = [loop.run_in_executor(pool, functools.partial(q.get, timeout=bound)) for q in qs]
    await asyncio.sleep(settle)
    # A pool starts a thread per waiting call: all of them, before the window.
    give_up = time.monotonic() + TIMEOUT
    while kind == "executor" and threading.active_count() <= len(qs) and time.monotonic() < give_up:
        await asyncio.sleep(0.05)
    threads, rss1 = threading.active_count(), _rss_kib()
    early = sum(t.done() for t in tasks)
    cpu0, t0 = _cpu(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, t1 = _cpu(), time.monotonic()
    ctl.send(
        {
            "cpu_s": cpu1 - cpu0,
            "wall_s": t1 - t0,
            "threads_before": threads0,
            "threads": threads,
            "helper_threads": helpers() if helpers is not None else 0,
            "rss_open_kib": rss0 - rss_start,
            "rss_delta_kib": rss1 - rss0,
            "early": early,
        }
    )
    # The main process puts one message into each queue now.
    t2 = time.monotonic()
    done, pending = await asyncio.wait(tasks, timeout=TIMEOUT)
    woke_s = time.monotonic() - t2
    right = 0
    for i, t in enumerate(tasks):
        if t in done and not t.cancelled() and t.exception() is None:
            right += t.result() == b"wake %d" % i
    for t in pending:
        t.cancel()
    ctl.send({"ended": len(done), "right": right, "woke_s": woke_s})
    for q in qs:
        q.close()
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


def _idle_child(
    kind: str, qnames: List[str], settle: float, seconds: float, ctl: Any
) -> None:
    bound = settle + seconds + 3 * TIMEOUT
    _run(_idle(kind, qnames, settle, seconds, bound, ctl), bound)


def _idle_run(
    kind: str, names: Names, tasks: int, settle: float, seconds: float
) -> Dict[str, Any]:
    """One child with ``tasks`` waiters of ``kind``; its row."""
    qs: List[Any] = []
    proc = None
    ok = False
    try:
        for _ in range(tasks):
            qs.append(fastshm.Queue(names.new("aq"), QUEUE_SIZE, create=True))
        mine, theirs = _ctx.Pipe()
        proc = _ctx.Process(
            target=_idle_child,
            args=(kind, [q.name for q in qs], settle, seconds, theirs),
            daemon=True,
        )
        proc.start()
        got = _recv(mine, settle + seconds + 2 * TIMEOUT)
        for i, q in enumerate(qs):
            q.put(b"wake %d" % i, timeout=TIMEOUT)
        end = _recv(mine, 2 * TIMEOUT)
        ok = True
    finally:
        if proc is not None and proc.pid is not None:
            if not ok and proc.is_alive():
                proc.terminate()
            _join([proc])
        for q in qs:
            q.delete()
    return {
        "case": "aio idle",
        "op": "tasks awaiting get()",
        "contender": kind,
        "size": QUEUE_SIZE,
        "tasks": tasks,
        "settle_s": settle,
        "seconds": got["wall_s"],
        "cpu_s": got["cpu_s"],
        "core_percent": 100 * got["cpu_s"] / max(got["wall_s"], 1e-9),
        "threads_before": got["threads_before"],
        "threads": got["threads"],
        "helper_threads": got["helper_threads"],
        "rss_open_kib": got["rss_open_kib"],
        "rss_delta_kib": got["rss_delta_kib"],
        "ended_early": got["early"],
        "ended": end["ended"],
        "right": end["right"],
        "woke_s": end["woke_s"],
        "measured_by": "getrusage",
    }


def idle(
    names: Names, tasks: int, settle: float, seconds: float, progress: Progress
) -> List[Dict[str, Any]]:
    """A1: ``tasks`` awaiting tasks per kind, one child each, in turn."""
    rows: List[Dict[str, Any]] = []
    for kind in IDLE_KINDS:
        progress.step(f"aio idle: {tasks} tasks awaiting get(), {seconds:g} s, {kind}")
        why = why_not(kind)
        if why:
            rows.append({"case": "aio idle", "contender": kind, "tasks": tasks, "skipped": why})
            continue
        try:
            rows.append(_idle_run(kind, names, tasks, settle, seconds))
        except Exception as e:  # noqa: BLE001 -- reported in the row, the suite goes on
            err = f"{type(e).__name__}: {e}"
            sys.stderr.write(f"benchmarks: aio idle {kind} failed: {err}\n")
            rows.append({"case": "aio idle", "contender": kind, "tasks": tasks, "error": err})
    return rows


# ---- A2, A3: wake-up latency ----


def _take(seg: Any, last: int, stamps: List[float], clock: Callable[[], int]) -> Tuple[int, int]:
    """The message just woken for: (its number, messages skipped before it)."""
    now = clock()
    i, stamp = STAMP.unpack(seg.load())
    stamps.append(float(now - stamp))
    return i, max(i - last - 1, 0)


async def _wake_block(wait: Callable[[], Awaitable[Any]], seg: Any, first: int, last: int,
                      ctl: Any) -> Dict[str, Any]:
    clock = time.perf_counter_ns
    lat: List[float] = []
    got, missed = first - 1, 0
    ctl.send("go")
    while got < last:
        await wait()
        got, skipped = _take(seg, got, lat, clock)
        missed += skipped
    return {"ns": lat, "missed": missed}


async def _sock_block(sock: socket.socket, buf: bytearray, got: int, last: int,
                      ctl: Any) -> Dict[str, Any]:
    """``socket``: the same messages through a Unix socket the loop awaits.
    A wake-up that finds more than one message takes the newest, and the
    ones before it count as missed, as a Segment's waiter finds only the
    newest."""
    loop = asyncio.get_running_loop()
    clock = time.perf_counter_ns
    lat: List[float] = []
    missed = 0
    ctl.send("go")
    while got < last:
        data = await loop.sock_recv(sock, SOCK_READ)
        now = clock()
        if not data:
            raise EOFError("the waking process closed its socket")
        buf += data
        whole = len(buf) - len(buf) % STAMP.size
        if not whole:
            continue  # a part of a message: timed when the rest comes
        i, stamp = STAMP.unpack_from(buf, whole - STAMP.size)
        del buf[:whole]
        lat.append(float(now - stamp))
        missed += max(i - got - 1, 0)
        got = i
    return {"ns": lat, "missed": missed, "got": got}


def _wake_child(kind: str, name: str, ctl: Any, sock: Optional[socket.socket] = None) -> None:
    """Wake-ups of one kind, in the blocks the main process asks for (the
    number of the block's last message, None to end).  ``sock``: the
    ``socket`` kinds' end of the socket pair, in place of the Segment."""
    base = _base(kind)
    seg: Any = None
    sync: Any = None
    if base == "aio":
        from fastshm import aio

        seg = aio.Segment(name, create=False)
        sync = seg.sync
    elif base != "socket":
        seg = sync = fastshm.Segment(name, create=False)
    if sync is not None:
        sync.load()  # from the segment's current message on
    else:
        assert sock is not None
        sock.setblocking(False)
    buf = bytearray()
    got = 0  # ``socket``: the last message's number
    loop = _new_loop(kind)
    ctl.send("ready")
    try:
        while True:
            last = _recv(ctl, TIMEOUT * 4)
            if last is None:
                break
            res: Dict[str, Any]
            if base == "socket":
                assert sock is not None
                res = loop.run_until_complete(
                    asyncio.wait_for(_sock_block(sock, buf, got, last, ctl), TIMEOUT * 2)
                )
                got = res.pop("got")
            elif base == "thread":
                clock = time.perf_counter_ns
                lat: List[float] = []
                got, missed = sync.last_seq, 0
                ctl.send("go")
                while got < last:
                    sync.wait(TIMEOUT)
                    got, skipped = _take(sync, got, lat, clock)
                    missed += skipped
                res = {"ns": lat, "missed": missed}
            else:
                first = sync.last_seq + 1
                if base == "aio":

                    def wait() -> Awaitable[Any]:
                        return seg.wait(TIMEOUT)  # type: ignore[no-any-return]

                else:

                    def wait() -> Awaitable[Any]:
                        return loop.run_in_executor(None, sync.wait, TIMEOUT)

                res = loop.run_until_complete(
                    asyncio.wait_for(_wake_block(wait, sync, first, last, ctl), TIMEOUT * 2)
                )
            ctl.send(res)
    finally:
        loop.close()
        if seg is not None:
            seg.close()
        if sock is not None:
            sock.close()


def _p99(s: List[float]) -> float:
    return statistics.quantiles(s, n=100)[98] if len(s) >= 2 else s[0]


def wake(
    names: Names, count: int, block: int, pause: float, progress: Progress
) -> List[Dict[str, Any]]:
    """A2, A3: ``count`` one-way wake-ups per kind, ``pause`` seconds apart,
    in blocks of ``block`` taken in turns."""
    kinds = [k for k in WAKE_KINDS if not why_not(k)]
    skips: Dict[str, Dict[str, Any]] = {
        k: {"case": "aio wake", "contender": k, "skipped": why_not(k)}
        for k in WAKE_KINDS
        if why_not(k)
    }
    progress.step(
        f"aio wake-up: {count} messages {1e3 * pause:g} ms apart, {', '.join(kinds) or 'none'}"
    )
    if not kinds:
        return list(skips.values())
    # What the waking side writes to, a kind's Segment or its end of a
    # socket pair: ``put(message)`` either way, so both are timed alike.
    segs: Dict[str, Any] = {}
    socks: Dict[str, socket.socket] = {}
    puts: Dict[str, Callable[[bytes], Any]] = {}
    numbers: Dict[str, int] = {}  # the sockets' last message's number
    procs: Dict[str, Any] = {}
    ctls: Dict[str, Any] = {}
    errors: Dict[str, str] = {}
    lat: Dict[str, List[float]] = {k: [] for k in kinds}
    missed = {k: 0 for k in kinds}
    sent = {k: 0 for k in kinds}
    try:
        for kind in kinds:
            theirs_sock: Optional[socket.socket] = None
            try:
                name = ""
                if _base(kind) == "socket":
                    # A Unix-domain stream pair (loopback TCP where there
                    # is no AF_UNIX): the child inherits the other end.
                    socks[kind], theirs_sock = socket.socketpair()
                    puts[kind] = socks[kind].sendall
                    numbers[kind] = 0
                else:
                    segs[kind] = fastshm.Segment(names.new("aw"), STAMP.size, create=True)
                    segs[kind].store(STAMP.pack(0, 0))
                    puts[kind] = segs[kind].store
                    name = segs[kind].name
                mine, theirs = _ctx.Pipe()
                procs[kind] = _ctx.Process(
                    target=_wake_child, args=(kind, name, theirs, theirs_sock), daemon=True
                )
                procs[kind].start()
                ctls[kind] = mine
            except Exception as e:  # noqa: BLE001 -- reported in the row
                errors[kind] = f"{type(e).__name__}: {e}"
                sys.stderr.write(f"benchmarks: aio wake {kind} failed: {errors[kind]}\n")
            finally:
                if theirs_sock is not None:
                    theirs_sock.close()  # the child has its own copy
        for kind in kinds:
            if kind in errors:
                continue
            try:
                if _recv(ctls[kind], TIMEOUT * 2) != "ready":
                    raise RuntimeError("the child failed to start")
            except Exception as e:  # noqa: BLE001 -- reported in the row
                errors[kind] = f"{type(e).__name__}: {e}"
        clock, sleep = time.perf_counter_ns, time.sleep

        def one_block(kind: str, n: int) -> Dict[str, Any]:
            put, ctl = puts[kind], ctls[kind]
            base = segs[kind].seq if kind in segs else numbers[kind]
            ctl.send(base + n)
            if _recv(ctl, TIMEOUT) != "go":
                raise RuntimeError("the child did not start its block")
            for i in range(base + 1, base + n + 1):
                sleep(pause)  # the waiter is asleep again by now
                put(STAMP.pack(i, clock()))
            if kind in numbers:
                numbers[kind] = base + n
            return _recv(ctl, TIMEOUT * 3)  # type: ignore[no-any-return]

        # Warm-up, untimed: a process's first wait makes its loop's ring or
        # starts fastshm.aio's helper thread, and its first wake-up comes
        # later than a pause.
        plan = [(k, WAKE_WARM, False) for k in kinds]
        for b in range((count + block - 1) // block):
            k0 = b % len(kinds)
            plan += [(k, block, True) for k in kinds[k0:] + kinds[:k0]]
        for kind, n, timed in plan:
            if kind in errors:
                continue
            n = min(n, count - sent[kind]) if timed else n
            try:
                res = one_block(kind, n)
            except Exception as e:  # noqa: BLE001 -- reported in the row
                errors[kind] = f"{type(e).__name__}: {e}"
                sys.stderr.write(f"benchmarks: aio wake {kind} failed: {errors[kind]}\n")
                continue
            if timed:
                lat[kind] += res["ns"]
                missed[kind] += res["missed"]
                sent[kind] += n
    finally:
        _stop(ctls.values())
        started = [p for p in procs.values() if p.pid is not None]
        for kind, p in procs.items():
            if kind in errors and p.is_alive():
                p.terminate()
        _join(started)
        for seg in segs.values():
            seg.delete()
        for s in socks.values():
            s.close()
    rows: List[Dict[str, Any]] = []
    for kind in WAKE_KINDS:
        if kind in skips:
            rows.append(skips[kind])
            continue
        row: Dict[str, Any] = {
            "case": "aio wake",
            "op": "one-way wake-up",
            "contender": kind,
            "size": STAMP.size,
            "pause_s": pause,
            "sent": sent[kind],
            "missed": missed[kind],
        }
        if kind.endswith(UVLOOP):
            row["loop"] = "uvloop"
        if lat[kind]:
            row.update(summarize(lat[kind]))
            row["p99_ns"] = _p99(lat[kind])
        if kind in errors:
            row["error"] = errors[kind]
        elif not lat[kind]:
            row["error"] = "no message measured"
        rows.append(row)
    return rows


# ---- A4: ping-pong between two asyncio processes ----


class _End:
    """One side of a ping-pong: ``send`` and ``recv`` coroutines of whole
    messages, and ``close`` (the pinging side's ends the echo)."""

    send: Callable[[bytes], Awaitable[Any]]
    recv: Callable[[], Awaitable[bytes]]

    async def close(self, stop: bool) -> None:
        raise NotImplementedError


class _AioEnd(_End):
    def __init__(self, tx: str, rx: str) -> None:
        from fastshm import aio

        self.tx = aio.Queue(tx, create=False)
        self.rx = aio.Queue(rx, create=False)
        self.send = self.tx.put
        self.recv = self.rx.get

    async def close(self, stop: bool) -> None:
        if stop:
            self.tx.put_nowait(STOP)
        self.tx.close()
        self.rx.close()


class _StreamEnd(_End):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.send = self._send
        self.recv = functools.partial(reader.readexactly, PING_SIZE)

    async def _send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self, stop: bool) -> None:
        # Closing is the stop: the echo's readexactly ends short.
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


class _ZmqEnd(_End):
    def __init__(self, address: str, bind: bool) -> None:
        zmq = importlib.import_module("zmq")
        zmq_asyncio = importlib.import_module("zmq.asyncio")

        self.ctx = zmq_asyncio.Context()
        self.sock = self.ctx.socket(zmq.PAIR)
        self.sock.setsockopt(zmq.LINGER, 0)
        if bind:
            self.sock.bind(address)
        else:
            self.sock.connect(address)
        self.send = self.sock.send
        self.recv = self.sock.recv

    async def close(self, stop: bool) -> None:
        if stop:
            await asyncio.wait_for(self.sock.send(STOP), TIMEOUT)
        self.sock.close()
        self.ctx.term()


async def _echo(spec: Tuple[Any, ...], ctl: Any) -> None:
    kind = _base(spec[0])
    if kind == "streams":
        done = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    writer.write(await reader.readexactly(PING_SIZE))
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()
                done.set()

        server = await asyncio.start_unix_server(serve, spec[1])
        ctl.send("ready")
        await done.wait()
        server.close()
        await server.wait_closed()
        return
    end: _End = _AioEnd(spec[2], spec[1]) if kind == "aio" else _ZmqEnd(spec[1], bind=True)
    ctl.send("ready")
    recv, send = end.recv, end.send
    try:
        while True:
            msg = await recv()
            if len(msg) != PING_SIZE:
                break
            await send(msg)
    finally:
        await end.close(stop=False)


def _echo_child(spec: Tuple[Any, ...], life: float, ctl: Any) -> None:
    """The answering side: every message back, until the stop."""
    _run(_echo(spec, ctl), life, spec[0])


async def _open(spec: Tuple[Any, ...]) -> _End:
    kind = _base(spec[0])
    if kind == "aio":
        return _AioEnd(spec[1], spec[2])
    if kind == "streams":
        reader, writer = await asyncio.open_unix_connection(spec[1])
        return _StreamEnd(reader, writer)
    return _ZmqEnd(spec[1], bind=False)


async def _ping_block(end: _End, seconds: float, seq: int) -> Dict[str, Any]:
    send, recv = end.send, end.recv
    msg = bytearray(PING_SIZE)
    bad = 0
    first_bad = ""

    async def trip() -> None:
        nonlocal seq, bad, first_bad
        seq += 1
        SEQ.pack_into(msg, 0, seq)
        await send(bytes(msg))
        got = await recv()
        if len(got) != PING_SIZE or SEQ.unpack_from(got)[0] != seq:
            bad += 1
            if not first_bad:
                first_bad = f"sent {seq}, got {len(got)} B numbered {SEQ.unpack_from(got)[0]}"

    for _ in range(PING_WARM):
        await trip()
    clock = time.perf_counter
    cpu0, t0 = _cpu(), clock()
    deadline = t0 + seconds
    trips = 0
    while True:
        for _ in range(PING_CHUNK):
            await trip()
        trips += PING_CHUNK
        if clock() >= deadline:
            break
    secs = clock() - t0
    return {"trips": trips, "secs": secs, "cpu_s": _cpu() - cpu0, "bad": bad,
            "first_bad": first_bad, "seq": seq}


def _ping_child(spec: Tuple[Any, ...], ctl: Any) -> None:
    """The pinging side: a run of ``seconds`` each time the main process
    sends a number, its round trips back; None to stop."""
    loop = _new_loop(spec[0])
    try:
        end = loop.run_until_complete(asyncio.wait_for(_open(spec), TIMEOUT))
        ctl.send("ready")
        seq = 0
        try:
            while True:
                seconds = _recv(ctl, TIMEOUT * 4)
                if seconds is None:
                    break
                res = loop.run_until_complete(
                    asyncio.wait_for(_ping_block(end, seconds, seq), seconds + TIMEOUT)
                )
                seq = res["seq"]
                ctl.send(res)
        finally:
            loop.run_until_complete(asyncio.wait_for(end.close(stop=True), TIMEOUT))
    finally:
        loop.close()


class _Pair:
    """One contender's two processes and what they talk through."""

    def __init__(self, kind: str, names: Names, life: float) -> None:
        self.kind = kind
        self.cleanup: List[Callable[[], None]] = []
        self.procs: List[Any] = []
        self.ping: Any = None
        try:
            self._start(names, life)
        except BaseException:
            self.close(failed=True)
            raise

    def _start(self, names: Names, life: float) -> None:
        kind, base = self.kind, _base(self.kind)
        if base == "aio":
            spec: Tuple[Any, ...] = (kind, names.new("ap"), names.new("ap"))
            for n in spec[1:]:
                q = fastshm.Queue(n, 64 * 1024, create=True)
                self.cleanup.append(q.delete)
        else:
            where = tempfile.mkdtemp(prefix="fshmbench_")
            self.cleanup.append(lambda: shutil.rmtree(where, ignore_errors=True))
            path = os.path.join(where, "pp.sock")
            spec = (kind, path if base == "streams" else f"ipc://{path}")
        mine, theirs = _ctx.Pipe()
        echo = _ctx.Process(target=_echo_child, args=(spec, life, theirs), daemon=True)
        self.procs.append(echo)
        echo.start()
        if _recv(mine, TIMEOUT * 2) != "ready":
            raise RuntimeError("the echo process failed to start")
        mine, theirs = _ctx.Pipe()
        ping = _ctx.Process(target=_ping_child, args=(spec, theirs), daemon=True)
        self.procs.insert(0, ping)
        ping.start()
        if _recv(mine, TIMEOUT * 2) != "ready":
            raise RuntimeError("the pinging process failed to start")
        self.ping = mine

    def close(self, failed: bool) -> None:
        if self.ping is not None:
            _stop([self.ping])
        started = [p for p in self.procs if p.pid is not None]
        if failed:
            for p in started:
                if p.is_alive():
                    p.terminate()
        _join(started)
        _clean_up(self.cleanup)


def ping_pong(
    names: Names, seconds: float, repeats: int, progress: Progress
) -> List[Dict[str, Any]]:
    """A4: ``repeats`` runs of ``seconds`` per contender, in turns."""
    kinds = [k for k in PING_KINDS if not why_not(k)]
    rows: List[Dict[str, Any]] = []
    progress.step(
        f"aio ping-pong: {PING_SIZE} B, {repeats} x {seconds:g} s, {', '.join(kinds) or 'none'}"
    )
    pairs: Dict[str, _Pair] = {}
    errors: Dict[str, str] = {}
    runs: Dict[str, List[Dict[str, Any]]] = {k: [] for k in kinds}
    life = 4 * TIMEOUT + repeats * len(kinds) * (seconds + TIMEOUT)
    try:
        for kind in kinds:
            try:
                pairs[kind] = _Pair(kind, names, life)
            except Exception as e:  # noqa: BLE001 -- reported in the row
                errors[kind] = f"{type(e).__name__}: {e}"
                sys.stderr.write(f"benchmarks: aio ping-pong {kind} failed: {errors[kind]}\n")
        for r in range(repeats):
            live = [k for k in kinds if k in pairs and k not in errors]
            k0 = r % max(len(live), 1)
            for kind in live[k0:] + live[:k0]:
                ctl = pairs[kind].ping
                try:
                    ctl.send(seconds)
                    runs[kind].append(_recv(ctl, seconds + TIMEOUT * 2))
                except Exception as e:  # noqa: BLE001 -- reported in the row
                    errors[kind] = f"{type(e).__name__}: {e}"
                    sys.stderr.write(f"benchmarks: aio ping-pong {kind} failed: {errors[kind]}\n")
    finally:
        for kind, pair in pairs.items():
            pair.close(kind in errors)
    for kind in kinds:
        row: Dict[str, Any] = {
            "case": "aio ping-pong",
            "op": "round trip",
            "contender": kind,
            "size": PING_SIZE,
            "seconds": seconds,
            "warm_trips": PING_WARM,
        }
        if kind.endswith(UVLOOP):
            row["loop"] = "uvloop"
        rs = sorted(runs[kind], key=lambda x: x["trips"] / x["secs"])
        if rs:
            med = rs[len(rs) // 2]
            rate = med["trips"] / med["secs"]
            row.update(
                {
                    "trips_per_s": rate,
                    "min_trips_per_s": rs[0]["trips"] / rs[0]["secs"],
                    "max_trips_per_s": rs[-1]["trips"] / rs[-1]["secs"],
                    "round_trip_ns": 1e9 / rate,
                    "pinger_cpu_us_per_trip": 1e6 * med["cpu_s"] / max(med["trips"], 1),
                    "bad": sum(x["bad"] for x in rs),
                    "runs": len(rs),
                }
            )
            bad = next((x["first_bad"] for x in rs if x["first_bad"]), "")
            if bad:
                row["first_bad"] = bad
                sys.stderr.write(f"benchmarks: aio ping-pong {kind}: wrong messages ({bad})\n")
        if kind in errors:
            row["error"] = errors[kind]
        elif not rs:
            row["error"] = "no run"
        rows.append(row)
    return rows + [
        {"case": "aio ping-pong", "contender": k, "size": PING_SIZE, "skipped": why_not(k)}
        for k in PING_KINDS
        if why_not(k)
    ]


def steps() -> int:
    """Progress steps of a run: A1 (one a kind), A2-A3, A4."""
    return len(IDLE_KINDS) + 2


def run(names: Names, cfg: Dict[str, Any], progress: Progress) -> List[Dict[str, Any]]:
    """Every asyncio case with the run's settings (run.CONFIGS)."""
    rows = idle(
        names, cfg["aio_tasks"], cfg["aio_settle_s"], cfg["aio_idle_seconds"], progress
    )
    rows += wake(
        names, cfg["aio_wake_count"], cfg["aio_wake_block"], cfg["aio_wake_pause_s"], progress
    )
    rows += ping_pong(names, cfg["aio_pp_seconds"], cfg["aio_pp_repeats"], progress)
    return rows
