"""fastshm.Queue: a named, bounded FIFO of byte messages, on every route.

Semantics in one process (round trips, order, batches, room accounting,
wrap-around against a ``collections.deque`` model, bad input, opening rules,
kinds, pickling, ObjectQueue, threads, big messages), then what needs a
second process or a user: mixing backends, read-only access, forked
children, a blocked call woken from elsewhere, and Ctrl-C in a blocked
call.  Many processes, SIGKILL and idle CPU are in
test_queue_procs.py; hostile headers in test_queue_hostile.py.
"""

from __future__ import annotations

import array
import collections
import math
import os
import pickle
import queue
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List

import pytest
from conftest import (
    BACKENDS,
    SHM_DIR,
    backend_name,
    close_ends_blocked_call,
    drain,
    in_thread,
    run_python,
)

import fastshm

LONG = os.environ.get("FASTSHM_LONG") == "1"
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
SRC_DIR = os.path.dirname(os.path.dirname(os.path.abspath(fastshm.__file__)))

# The queue header (docs/FORMAT.md, "Queues").
Q_MAGIC, Q_VERSION, Q_HEADER_SIZE, Q_CAPACITY, Q_HEAD = 0, 4, 6, 8, 16
Q_NOTIFY, Q_WAITERS, Q_TAIL, Q_COUNT, Q_FLAGS = 24, 28, 32, 40, 48
Q_LOCK, Q_DIRTY, Q_RING = 64, 88, 128
QUEUE_MAGIC = 0x51485346
PYLOCK = 1
DEFAULT_SIZE = 1 << 20

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="needs root, to run a child process as another user",
)


def rec(n: int) -> int:
    """Ring bytes a message of n bytes takes."""
    return 8 + ((n + 7) & ~7)


def make(name: str, backend: str, size: int = 1024, **kw: Any) -> fastshm.Queue:
    return fastshm.Queue(name, size, create=True, backend=backend, **kw)


def raw_bytes(name: str) -> bytes:
    """Every byte of the named object, as another process maps it."""
    sm = fastshm.SharedMemory(name, backend="python")
    try:
        return bytes(sm.buf)
    finally:
        sm.close()


def header(name: str) -> dict:
    raw = raw_bytes(name)[:Q_RING]
    (head, tail, count) = (struct.unpack_from("<Q", raw, o)[0] for o in (Q_HEAD, Q_TAIL, Q_COUNT))
    return {
        "magic": struct.unpack_from("<I", raw, Q_MAGIC)[0],
        "capacity": struct.unpack_from("<Q", raw, Q_CAPACITY)[0],
        "head": head, "tail": tail, "count": count,
        "flags": struct.unpack_from("<I", raw, Q_FLAGS)[0],
        "waiters": struct.unpack_from("<I", raw, Q_WAITERS)[0],
        "lock": struct.unpack_from("<Q", raw, Q_LOCK)[0],
        "dirty": struct.unpack_from("<I", raw, Q_DIRTY)[0],
    }


def state(q: fastshm.Queue) -> tuple:
    """What a rejected call must leave as it was (without taking anything)."""
    h = header(q.name)
    return q.qsize(), q.bytes_used, h["head"], h["tail"], h["count"], h["lock"], h["dirty"]


def exists(name: str) -> bool:
    """Whether the name can be opened (as a raw mapping)."""
    if os.path.isdir(SHM_DIR):
        return os.path.exists(os.path.join(SHM_DIR, name))
    try:
        fastshm.SharedMemory(name, backend="python").close()
    except FileNotFoundError:
        return False
    return True


@pytest.fixture(autouse=True)
def python_queues_need_flock(request: pytest.FixtureRequest) -> None:
    """The python backend opens no queue on Windows (no flock there)."""
    callspec = getattr(request.node, "callspec", None)
    if sys.platform == "win32" and callspec and "python" in callspec.params.values():
        pytest.skip("the python backend has no queues on Windows")


@pytest.fixture(autouse=True)
def bounded() -> Any:
    """A test that hangs (a wait that ignores its timeout) ends the run with
    every thread's traceback instead of blocking it."""
    import faulthandler

    faulthandler.dump_traceback_later(300, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


# ---- round trips ----


def test_round_trip_of_every_bytes_like(backend: str, name: str) -> None:
    q = make(name, backend, 4096)
    try:
        assert q.created and q.backend == backend_name(backend) and q.name == name
        ints = array.array("i", [1, -2, 3, 1 << 30])
        grid = memoryview(bytes(range(12))).cast("B", (3, 4))
        items: List[Any] = [
            b"bytes", bytearray(b"bytearray"), memoryview(b"memoryview"),
            memoryview(bytearray(b"..slice..."))[2:7], "str, é and ☃ in UTF-8",
            ints, grid, b"",
        ]
        want = [
            b"bytes", b"bytearray", b"memoryview", b"slice", "str, é and ☃ in UTF-8".encode(),
            ints.tobytes(), bytes(range(12)), b"",
        ]
        for item in items:
            q.put(item)
        assert q.qsize() == len(items)
        got = [q.get() for _ in items]
        assert got == want
        assert all(type(g) is bytes for g in got)
        assert q.qsize() == 0 and q.empty() and q.bytes_used == 0
    finally:
        q.close()


def test_numpy_arrays(backend: str, name: str) -> None:
    np = pytest.importorskip("numpy")
    with make(name, backend, 4096) as q:
        a = np.arange(12, dtype=np.float64).reshape(3, 4)
        q.put(a)
        assert q.get() == a.tobytes()
        with pytest.raises(ValueError):
            q.put(a[:, ::2])  # not contiguous
        assert q.qsize() == 0
        q.put(a[1])
        out = np.zeros(8, dtype=np.float64)
        assert q.get_into(out) == 32
        assert list(out[:4]) == [4.0, 5.0, 6.0, 7.0] and not out[4:].any()


def test_get_into_counts_bytes_not_items(backend: str, name: str) -> None:
    with make(name, backend) as q:
        q.put(b"\x01\x00\x00\x00\x02\x00\x00\x00")
        ints = array.array("i", [0, 0, 0])
        assert q.get_into(ints) == 8
        assert list(ints) == [1, 2, 0]
        q.put(b"x" * 13)
        with pytest.raises(ValueError, match="too small"):
            q.get_into(ints)  # 12 bytes
        assert q.get() == b"x" * 13


def test_put_copies_at_once(backend: str, name: str) -> None:
    """The queue holds a copy: changing the buffer after put changes nothing."""
    with make(name, backend) as q:
        buf = bytearray(b"original")
        q.put(buf)
        buf[:] = b"changed!"
        assert q.get() == b"original"


def test_empty_message(backend: str, name: str) -> None:
    with make(name, backend, 64) as q:
        q.put(b"")
        q.put("")
        assert q.qsize() == 2 and q.bytes_used == 16 and not q.empty()
        assert q.get() == b""
        buf = bytearray(b"xyz")
        assert q.get_into(buf) == 0 and buf == b"xyz"
        assert q.empty()


def test_fifo_order(backend: str, name: str) -> None:
    with make(name, backend, 1 << 16) as q:
        msgs = [os.urandom(random.randrange(0, 200)) + b"%d" % i for i in range(300)]
        for m in msgs[:150]:
            q.put(m)
        got = [q.get() for _ in range(100)]
        for m in msgs[150:]:
            q.put(m)
        got += drain(q)
        assert got == msgs


# ---- get_into ----


def test_get_into(backend: str, name: str) -> None:
    with make(name, backend) as q:
        q.put(b"hello world")
        q.put(b"second")
        buf = bytearray(32)
        assert q.get_into(buf) == 11
        assert buf[:11] == b"hello world" and buf[11:] == bytes(21)
        arr = array.array("B", bytes(6))
        assert q.get_into(arr) == 6 and arr.tobytes() == b"second"
        # Exactly the message's size is enough.
        q.put(b"12345678")
        exact = bytearray(8)
        assert q.get_into(memoryview(exact)) == 8 and exact == b"12345678"
        with pytest.raises(queue.Empty):
            q.get_into(buf, block=False)


def test_get_into_too_small_keeps_the_message(backend: str, name: str) -> None:
    with make(name, backend) as q:
        q.put(b"a message of 26 bytes long")
        q.put(b"next")
        before = state(q)
        small = bytearray(b"\xaa" * 25)
        with pytest.raises(ValueError, match="too small") as e:
            q.get_into(small)
        assert "26" in str(e.value) and "25" in str(e.value)
        assert "stays queued" in str(e.value)
        assert small == b"\xaa" * 25, "a too-small buffer was written to"
        assert state(q) == before
        with pytest.raises(ValueError):
            q.get_into(bytearray(0), block=False)
        assert state(q) == before
        assert q.get() == b"a message of 26 bytes long"
        assert q.get() == b"next"


def test_get_into_bad_buffers(backend: str, name: str) -> None:
    with make(name, backend) as q:
        q.put(b"kept")
        before = state(q)
        with pytest.raises(TypeError):
            q.get_into(b"read-only bytes, big enough")
        with pytest.raises(TypeError):
            q.get_into(12)
        with pytest.raises(TypeError):
            q.get_into(None)
        with pytest.raises(TypeError):
            q.get_into(memoryview(bytearray(40)).toreadonly())
        with pytest.raises((TypeError, ValueError)):
            q.get_into(memoryview(bytearray(40))[::2])
        assert state(q) == before
        assert q.get() == b"kept"


# ---- batches ----


def test_get_many(backend: str, name: str) -> None:
    with make(name, backend, 4096) as q:
        msgs = [b"m%d" % i for i in range(10)]
        for m in msgs:
            q.put(m)
        assert q.get_many(3) == msgs[:3]
        assert q.get_many(1) == msgs[3:4]
        assert q.qsize() == 6
        assert q.get_many(100) == msgs[4:]
        with pytest.raises(queue.Empty):
            q.get_many(block=False)
        with pytest.raises(queue.Empty):
            q.get_many(5, timeout=0.05)
        for m in msgs:
            q.put(m)
        assert q.get_many() == msgs
        assert q.empty()
        q.put(b"one")
        assert q.get_many(None, False) == [b"one"]
        # A limit beyond any count is "all".
        for m in msgs:
            q.put(m)
        assert q.get_many(1 << 70) == msgs


@pytest.mark.parametrize("bad,exc", [
    (0, ValueError), (-1, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError),
])
def test_get_many_bad_max(backend: str, name: str, bad: Any, exc: type) -> None:
    with make(name, backend) as q:
        q.put(b"stays")
        before = state(q)
        with pytest.raises(exc):
            q.get_many(bad)
        with pytest.raises(exc):
            q.get_many(bad, block=False)
        assert state(q) == before
        assert q.get() == b"stays"


def test_put_many(backend: str, name: str) -> None:
    with make(name, backend, 4096) as q:
        q.put_many([b"a", bytearray(b"bb"), memoryview(b"ccc"), "dddd", array.array("B", b"e")])
        q.put_many(b"%d" % i for i in range(3))  # any iterable
        assert q.qsize() == 8
        assert drain(q) == [b"a", b"bb", b"ccc", b"dddd", b"e", b"0", b"1", b"2"]
        q.put_many([])
        q.put_many(iter(()))
        assert q.qsize() == 0 and q.bytes_used == 0


def test_put_many_all_or_nothing(backend: str, name: str) -> None:
    with make(name, backend, 160) as q:  # ten 8-byte messages fill it
        q.put_many([b"x" * 8] * 6)
        before = state(q)
        with pytest.raises(queue.Full):
            q.put_many([b"y" * 8] * 5, block=False)
        assert state(q) == before
        with pytest.raises(queue.Full):
            q.put_many([b"y" * 8] * 5, timeout=0.05)
        assert state(q) == before
        with pytest.raises(queue.Full):
            q.put_many([b"y"] * 4 + [b"z" * 9], block=False)  # the last one tips it
        assert state(q) == before
        q.put_many([b"y" * 8] * 4, block=False)  # exactly the room left
        assert q.full() and q.bytes_used == 160 and q.qsize() == 10
        # An empty batch fits even a full queue.
        q.put_many([], block=False)
        assert drain(q) == [b"x" * 8] * 6 + [b"y" * 8] * 4


def test_put_many_never_fits(backend: str, name: str) -> None:
    with make(name, backend, 160) as q:
        q.put(b"kept")
        before = state(q)
        # Together over the capacity: ValueError at once, even when blocking.
        with pytest.raises(ValueError, match="cannot fit"):
            q.put_many([b"z" * 8] * 11)
        with pytest.raises(ValueError):
            q.put_many([b"z" * 8] * 11, block=False)
        # One message over max_message.
        with pytest.raises(ValueError, match="larger than"):
            q.put_many([b"ok", b"z" * 153])
        # A bad element anywhere: nothing put.
        with pytest.raises(TypeError):
            q.put_many([b"ok", 12])
        with pytest.raises(TypeError):
            q.put_many([b"ok", None])
        with pytest.raises(TypeError):
            q.put_many(12)  # not iterable
        assert state(q) == before
        assert drain(q) == [b"kept"]


def test_put_many_many_empty_messages(backend: str, name: str) -> None:
    """A batch of 131 072 empty messages exactly fills a 1 MiB ring; one
    more could never fit."""
    with fastshm.Queue(name, create=True, backend=backend) as q:
        with pytest.raises(ValueError):
            q.put_many([b""] * (DEFAULT_SIZE // 8 + 1))
        assert q.qsize() == 0
        q.put_many([b""] * (DEFAULT_SIZE // 8), block=False)
        assert q.full() and q.qsize() == DEFAULT_SIZE // 8
        got = q.get_many()
        assert len(got) == DEFAULT_SIZE // 8 and set(got) == {b""}


def test_put_many_buffer_resized_meanwhile(backend: str, name: str) -> None:
    """A generator that resizes a buffer it already yielded: the batch is
    refused (the buffer is held) or holds the bytes as they were at some
    point, never freed memory."""
    ba = bytearray(b"abc")

    def gen() -> Any:
        yield ba
        try:
            ba.extend(b"more" * 10000)  # a reallocation, unless the buffer is held
        except BufferError:
            pass
        yield b"x"

    with make(name, backend, 1 << 18) as q:
        try:
            q.put_many(gen())
        except BufferError:
            assert q.qsize() == 0
            return
        got = drain(q)
        assert got[1:] == [b"x"] and got[0] in (b"abc", bytes(ba)), got[0][:20]


def test_put_many_generator_error_puts_nothing(backend: str, name: str) -> None:
    def gen() -> Any:
        yield b"first"
        raise RuntimeError("the producer's own error")

    with make(name, backend) as q:
        with pytest.raises(RuntimeError, match="own error"):
            q.put_many(gen())
        assert q.qsize() == 0 and q.bytes_used == 0


# ---- full, empty, timeouts ----


def test_full_and_empty(backend: str, name: str) -> None:
    with make(name, backend, 32) as q:  # two 8-byte messages
        assert q.empty() and not q.full() and q.qsize() == 0
        with pytest.raises(queue.Empty, match="empty"):
            q.get(block=False)
        with pytest.raises(queue.Empty):
            q.get_nowait()
        with pytest.raises(queue.Empty):
            q.get(timeout=0.05)
        with pytest.raises(queue.Empty):
            q.get(timeout=0)
        q.put(b"12345678")
        q.put_nowait(b"abcdefgh")
        assert q.full() and q.qsize() == 2 and q.bytes_used == 32
        before = state(q)
        with pytest.raises(queue.Full) as e:
            q.put(b"", block=False)
        assert name in str(e.value)
        with pytest.raises(queue.Full):
            q.put_nowait(b"x")
        with pytest.raises(queue.Full):
            q.put(b"x", timeout=0.05)
        with pytest.raises(queue.Full):
            q.put(b"x", timeout=0)
        assert state(q) == before
        # Waits that ran out left no sleeper registered.
        assert header(name)["waiters"] == 0
        assert q.get_nowait() == b"12345678"
        assert not q.full()
        q.put(b"", timeout=0)
        assert q.get(timeout=0) == b"abcdefgh"
        assert q.get(block=False) == b""


def test_queue_exceptions_are_the_stdlib_ones(backend: str, name: str) -> None:
    with make(name, backend, 16) as q:
        with pytest.raises(queue.Empty):
            q.get_nowait()
        q.put(b"8 bytes!")
        with pytest.raises(queue.Full):
            q.put_nowait(b"")
        try:
            q.put_nowait(b"")
        except Exception as e:  # noqa: BLE001 -- the exact class is the point
            assert type(e) is queue.Full


def test_block_false_ignores_timeout(backend: str, name: str) -> None:
    """As the stdlib's queue: without blocking, the timeout is not looked at."""
    with make(name, backend, 16) as q:
        q.put(b"x", block=False, timeout=-1)
        with pytest.raises(queue.Full):
            q.put(b"y", False, -1)
        assert q.get(block=False, timeout=-1) == b"x"
        with pytest.raises(queue.Empty):
            q.get(False, float("nan"))


def _get_into(q: fastshm.Queue, **kw: Any) -> bytes:
    buf = bytearray(100)
    return bytes(buf[: q.get_into(buf, **kw)])


GETS: List[Callable[..., Any]] = [
    lambda q, **kw: q.get(**kw),
    lambda q, **kw: q.get_many(**kw)[0],
    _get_into,
]


@pytest.mark.parametrize("how", range(len(GETS)), ids=["get", "get_many", "get_into"])
@pytest.mark.parametrize("timeout", [30, None])
def test_get_waits_for_a_put(backend: str, name: str, how: int, timeout: Any) -> None:
    """A blocking call on an empty queue waits: a message put by a thread
    while it waits is returned (the watchdog puts one if the first is lost)."""
    with make(name, backend) as q:
        t = threading.Timer(0.2, q.put, args=(b"late",))
        guard = threading.Timer(20, q.put, args=(b"watchdog",))
        t.start()
        guard.start()
        try:
            assert GETS[how](q, timeout=timeout) == b"late"
        finally:
            t.join()
            guard.cancel()


@pytest.mark.parametrize("many", [False, True], ids=["put", "put_many"])
@pytest.mark.parametrize("timeout", [30, None])
def test_put_waits_for_room(backend: str, name: str, many: bool, timeout: Any) -> None:
    with make(name, backend, 32) as q:
        q.put(b"x" * 24)  # full
        t = threading.Timer(0.2, q.get)
        guard = threading.Timer(20, q.get)
        t.start()
        guard.start()
        try:
            if many:
                q.put_many([b"a", b"b"], timeout=timeout)
            else:
                q.put(b"y" * 8, timeout=timeout)
        finally:
            t.join()
            guard.cancel()
        assert drain(q) == ([b"a", b"b"] if many else [b"y" * 8])


def test_gil_released_while_blocked(backend: str, name: str) -> None:
    """A thread blocked in get lets the main thread run and wake it."""
    with make(name, backend) as q:
        box: List[object] = []

        def consumer() -> None:
            try:
                box.append(q.get(timeout=20))
            except BaseException as e:  # noqa: BLE001 -- reported below
                box.append(e)

        t = threading.Thread(target=consumer, daemon=True)
        t.start()
        n, end = 0, time.monotonic() + 0.3
        while time.monotonic() < end:
            n += 1
        q.put(b"from main")
        t.join(30)
        assert not t.is_alive()
        assert box == [b"from main"]


# ---- room accounting ----


def test_capacity_and_max_message(backend: str, shm_name: Callable[..., str]) -> None:
    for size, cap in [(16, 16), (17, 24), (1000, 1000), (1001, 1008), (4096, 4096)]:
        with make(shm_name(), backend, size) as q:
            assert q.capacity == cap and q.max_message == cap - 8, size
    with fastshm.Queue(shm_name(), backend=backend) as q:
        assert q.capacity == DEFAULT_SIZE and q.max_message == DEFAULT_SIZE - 8


def test_default_queue_holds_14563_messages_of_64_bytes(backend: str, name: str) -> None:
    with fastshm.Queue(name, create=True, backend=backend) as q:
        msg = bytes(range(64))
        for _ in range(14563 // 1000):
            q.put_many([msg] * 1000, block=False)
        q.put_many([msg] * (14563 % 1000), block=False)
        assert q.qsize() == 14563 and q.bytes_used == 14563 * 72
        assert not q.full()  # 40 bytes left
        with pytest.raises(queue.Full):
            q.put(msg, block=False)
        q.put(b"y" * 32, block=False)  # exactly 40 bytes
        assert q.full() and q.bytes_used == DEFAULT_SIZE
        got = q.get_many(None)
        assert len(got) == 14564 and got[-1] == b"y" * 32
        assert all(g == msg for g in got[:-1])


def test_message_of_max_message(backend: str, name: str) -> None:
    with make(name, backend, 256) as q:
        big = os.urandom(q.max_message)
        q.put(big, block=False)
        assert q.full() and q.bytes_used == 256 and q.qsize() == 1
        with pytest.raises(queue.Full):
            q.put(b"", block=False)
        assert q.get() == big
        q.put(b"first")
        before = state(q)
        for data in (b"z" * (q.max_message + 1), bytearray(10_000), "é" * 125):
            with pytest.raises(ValueError, match="larger than"):
                q.put(data)
            with pytest.raises(ValueError):
                q.put(data, block=False)
        assert state(q) == before
        assert drain(q) == [b"first"]


def test_sizes_and_used(backend: str, name: str) -> None:
    with make(name, backend, 1024) as q:
        used = 0
        for n in (0, 1, 7, 8, 9, 15, 16, 17, 100):
            q.put(b"s" * n)
            used += rec(n)
            assert q.bytes_used == used
        assert q.qsize() == 9
        for n in (0, 1, 7, 8, 9, 15, 16, 17, 100):
            assert q.get() == b"s" * n
            used -= rec(n)
            assert q.bytes_used == used


# ---- wrap-around against a model ----


def _model_run(q: fastshm.Queue, seed: int, steps: int) -> None:
    rnd = random.Random(seed)
    model: collections.deque = collections.deque()
    cap, used = q.capacity, 0
    big = max(1, q.max_message)
    counter = 0

    def fresh(n: int) -> bytes:
        nonlocal counter
        counter += 1
        tag = counter.to_bytes(4, "little")
        return (tag * (n // 4 + 1))[:n]

    for step in range(steps):
        op = rnd.random()
        if op < 0.35:
            small = rnd.randrange(0, min(17, big + 1))
            n = rnd.choice([0, 1, small, rnd.randrange(0, big + 1), big])
            m = fresh(n)
            if cap - used >= rec(n):
                q.put(m, block=False)
                model.append(m)
                used += rec(n)
            else:
                with pytest.raises(queue.Full):
                    q.put(m, block=False)
        elif op < 0.5:
            ms = [fresh(rnd.randrange(0, big // 3 + 2)) for _ in range(rnd.randrange(1, 5))]
            need = sum(rec(len(m)) for m in ms)
            if need > cap:
                with pytest.raises(ValueError):
                    q.put_many(ms, block=False)
            elif cap - used >= need:
                q.put_many(ms, block=False)
                model.extend(ms)
                used += need
            else:
                with pytest.raises(queue.Full):
                    q.put_many(ms, block=False)
        elif op < 0.7:
            if model:
                m = model.popleft()
                assert q.get(block=False) == m, step
                used -= rec(len(m))
            else:
                with pytest.raises(queue.Empty):
                    q.get(block=False)
        elif op < 0.85:
            k = rnd.randrange(1, 4)
            if model:
                want = [model.popleft() for _ in range(min(k, len(model)))]
                assert q.get_many(k, block=False) == want, step
                used -= sum(rec(len(m)) for m in want)
            else:
                with pytest.raises(queue.Empty):
                    q.get_many(k, block=False)
        else:
            buf = bytearray(rnd.randrange(0, big + 1))
            if not model:
                with pytest.raises(queue.Empty):
                    q.get_into(buf, block=False)
            elif len(model[0]) > len(buf):
                with pytest.raises(ValueError):
                    q.get_into(buf, block=False)
            else:
                m = model.popleft()
                assert q.get_into(buf, block=False) == len(m)
                assert buf[: len(m)] == m, step
                used -= rec(len(m))
        assert q.qsize() == len(model), step
        assert q.bytes_used == used, step
        assert q.empty() == (not model)
        assert q.full() == (cap - used < 8)
    assert drain(q) == list(model)


@pytest.mark.parametrize("size", [16, 24, 136, 1000, 4096])
def test_wrap_around_against_a_model(backend: str, name: str, size: int) -> None:
    steps = 20000 if LONG else 2500
    with make(name, backend, size) as q:
        _model_run(q, seed=size * 7919 + len(backend), steps=steps)
        # The counters have gone round the ring many times.
        h = header(name)
        assert h["head"] == h["tail"] and h["tail"] > 4 * size


# ---- bad input changes nothing ----


BAD_TIMEOUTS = [(-1, ValueError), (-0.5, ValueError), (float("nan"), ValueError),
                (float("-inf"), ValueError), (True, TypeError), (False, TypeError),
                ("1", TypeError), ([1], TypeError)]


@pytest.mark.parametrize("bad,exc", BAD_TIMEOUTS)
def test_bad_timeouts_change_nothing(backend: str, name: str, bad: Any, exc: type) -> None:
    with make(name, backend, 64) as q:
        q.put(b"kept")
        before = state(q)
        calls: List[Callable[[], Any]] = [
            lambda: q.put(b"x", timeout=bad),
            lambda: q.put(b"x", True, bad),
            lambda: q.get(timeout=bad),
            lambda: q.get_into(bytearray(10), timeout=bad),
            lambda: q.get_many(2, timeout=bad),
            lambda: q.put_many([b"x"], timeout=bad),
        ]
        for call in calls:
            with pytest.raises(exc):
                call()
        assert state(q) == before
        assert drain(q) == [b"kept"]


def test_good_timeouts(backend: str, name: str) -> None:
    with make(name, backend, 64) as q:
        for t in (0, 0.0, 1, 0.01, math.inf, 10**12, 1e300, 2**100, None):
            q.put(b"t", timeout=t)
            assert q.get(timeout=t) == b"t"


@pytest.mark.parametrize("bad,exc", [
    (12345, TypeError), (None, TypeError), ([1, 2, 3], TypeError), (object(), TypeError),
    (1.5, TypeError), (memoryview(bytearray(20))[::2], ValueError), ("\ud800", ValueError),
])
def test_bad_data_changes_nothing(backend: str, name: str, bad: Any, exc: type) -> None:
    with make(name, backend, 64) as q:
        q.put(b"kept")
        before = state(q)
        with pytest.raises(exc):
            q.put(bad)
        with pytest.raises(exc):
            q.put_nowait(bad)
        with pytest.raises(exc):
            q.put_many([bad])
        assert state(q) == before
        assert drain(q) == [b"kept"]


def test_closed_queue(backend: str, name: str) -> None:
    q = make(name, backend)
    q.put(b"stays for others")
    q.close()
    assert q.closed
    q.close()  # twice is harmless
    calls: List[Callable[[], Any]] = [
        lambda: q.put(b"x"), lambda: q.put_nowait(b"x"), lambda: q.get(),
        lambda: q.get(block=False), lambda: q.get_nowait(),
        lambda: q.get_into(bytearray(10)), lambda: q.get_many(), lambda: q.put_many([b"x"]),
        lambda: q.qsize(), lambda: q.empty(), lambda: q.full(), lambda: q.bytes_used,
        lambda: q.capacity, lambda: q.max_message,
    ]
    for call in calls:
        with pytest.raises(ValueError, match="closed"):
            call()
    with pytest.raises(ValueError, match="closed"):
        with q:
            pass
    assert "closed" in repr(q) and name in repr(q)
    with fastshm.Queue(name, create=False, backend=backend) as again:
        assert again.get_nowait() == b"stays for others"


def test_context_manager(backend: str, name: str) -> None:
    with make(name, backend) as q:
        assert not q.closed
        q.put(b"in")
    assert q.closed
    with fastshm.Queue(name, create=False, backend=backend) as q2:
        assert q2.get_nowait() == b"in"
    # An exception inside still closes it.
    with pytest.raises(KeyError):
        with fastshm.Queue(name, create=False, backend=backend) as q3:
            raise KeyError("inside")
    assert q3.closed


def test_repr(backend: str, name: str) -> None:
    with make(name, backend, 1000) as q:
        q.put(b"a")
        q.put(b"b")
        r = repr(q)
        assert name in r and "1000" in r and backend_name(backend) in r
        assert "qsize=2" in r


def test_messages_iterates_until_timeout(backend: str, name: str) -> None:
    with make(name, backend) as q:
        q.put_many([b"1", b"2", b"3"])
        assert list(q.messages(timeout=0.05)) == [b"1", b"2", b"3"]
        q.put(b"4")
        it = iter(q)
        assert next(it) == b"4"


def test_delete_and_unlink(backend: str, name: str) -> None:
    q = make(name, backend)
    assert exists(name)
    q.delete()
    assert q.closed and not exists(name)
    q = make(name, backend)
    q.unlink()
    assert not q.closed
    q.put(b"still mapped")  # the mapping stays until close
    assert q.get() == b"still mapped"
    q.close()
    with pytest.raises(FileNotFoundError):
        fastshm.Queue(name, create=False, backend=backend)


# ---- opening ----


def test_leading_slash_is_dropped(backend: str, name: str) -> None:
    with fastshm.Queue("/" + name, 64, create=True, backend=backend) as q:
        assert q.name == name
        q.put(b"slash")
        with fastshm.Queue(name, create=False, backend=backend) as q2:
            assert q2.get() == b"slash"


def test_opening_rules(backend: str, name: str) -> None:
    with pytest.raises(FileNotFoundError):
        fastshm.Queue(name, create=False, backend=backend)
    assert not exists(name)
    with fastshm.Queue(name, 256, backend=backend) as q:  # open-or-create: creates
        assert q.created and q.capacity == 256
        q.put(b"from the creator")
        with pytest.raises(FileExistsError):
            fastshm.Queue(name, 256, create=True, backend=backend)
        # size is ignored when the queue exists, however it is opened
        for kw in ({}, {"create": False}, {"create": None}):
            with fastshm.Queue(name, 4096, backend=backend, **kw) as other:
                assert not other.created and other.capacity == 256
        with fastshm.Queue(name, 3, create=False, backend=backend) as other:
            assert other.capacity == 256  # not even checked
            assert other.get() == b"from the creator"


@pytest.mark.parametrize("bad,exc", [
    ("", ValueError), ("a/b", ValueError), ("nul\0byte", ValueError), ("x" * 300, ValueError),
    (b"bytes", TypeError), (None, TypeError),
])
def test_bad_names(backend: str, bad: Any, exc: type) -> None:
    with pytest.raises(exc):
        fastshm.Queue(bad, backend=backend)


@pytest.mark.parametrize("bad,exc", [
    (0, ValueError), (-1, ValueError), (8, ValueError), (15, ValueError), (1 << 63, ValueError),
    ("1024", TypeError), (1024.0, TypeError), (True, TypeError), (None, TypeError),
])
def test_bad_sizes(backend: str, name: str, bad: Any, exc: type) -> None:
    with pytest.raises(exc):
        fastshm.Queue(name, bad, backend=backend)
    with pytest.raises(exc):
        fastshm.Queue(name, bad, create=True, backend=backend)
    assert not exists(name)


def test_bad_options(backend: str, name: str) -> None:
    with pytest.raises(TypeError):
        fastshm.Queue(name, create="yes", backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        fastshm.Queue(name, mode=0o1000, backend=backend)
    with pytest.raises(TypeError):
        fastshm.Queue(name, any_owner=1, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        fastshm.Queue(name, backend="bogus")
    assert not exists(name)


@pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="reads the mode in /dev/shm")
def test_mode_is_applied(backend: str, name: str) -> None:
    old = os.umask(0o077)
    try:
        with make(name, backend, mode=0o640):
            assert os.stat(os.path.join(SHM_DIR, name)).st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_header_as_the_format_says(backend: str, name: str) -> None:
    with make(name, backend, 1000) as q:
        q.put(b"abc")
        h = header(name)
        assert h["magic"] == QUEUE_MAGIC and h["capacity"] == 1000
        assert h["flags"] == (PYLOCK if backend_name(backend) == "python" else 0)
        assert (h["head"], h["tail"], h["count"], h["lock"], h["dirty"]) == (0, 16, 1, 0, 0)
        raw = raw_bytes(name)
        assert len(raw) >= Q_RING + 1000
        assert struct.unpack_from("<Q", raw, Q_RING)[0] == 3
        assert raw[Q_RING + 8 : Q_RING + 11] == b"abc"
        assert struct.unpack_from("<HH", raw, Q_VERSION) == (1, 128)


# ---- kinds ----


def test_segment_and_queue_refuse_each_other(backend: str, shm_name: Callable[..., str]) -> None:
    qname, sname = shm_name("q"), shm_name("s")
    with make(qname, backend) as q, fastshm.Segment(sname, 64, create=True, backend=backend) as s:
        q.put(b"queued")
        s.store(b"stored")
        for kw in ({"create": False}, {}):
            with pytest.raises(fastshm.FormatError) as e:
                fastshm.Segment(qname, backend=backend, **kw)
            msg = str(e.value)
            assert "is a fastshm Queue, not a Segment" in msg and "fastshm.Queue" in msg
            assert qname in msg
            with pytest.raises(fastshm.FormatError) as e:
                fastshm.Queue(sname, backend=backend, **kw)
            msg = str(e.value)
            assert "is a fastshm Segment, not a Queue" in msg and "fastshm.Segment" in msg
            assert sname in msg
        with pytest.raises(fastshm.FormatError):
            fastshm.Queue(sname)  # no backend: no fallback for the wrong kind
        assert q.get() == b"queued" and s.load() == b"stored"


def test_not_fastshm_is_format_error(backend: str, name: str) -> None:
    raw = fastshm.SharedMemory(name, create=True, size=4096, backend=backend)
    try:
        raw.buf[:16] = b"not a queue!!!!!"
        with pytest.raises(fastshm.FormatError):
            fastshm.Queue(name, create=False, backend=backend)
        with pytest.raises(fastshm.FormatError):
            fastshm.Queue(name, backend=backend)
    finally:
        raw.close()


# ---- pickling ----


def test_pickle_reattaches_by_name(backend: str, name: str) -> None:
    with make(name, backend) as q:
        q.put(b"shared")
        q2 = pickle.loads(pickle.dumps(q))
        try:
            assert q2.name == name and q2.backend == q.backend and not q2.created
            assert q2.get() == b"shared"
            q2.put(b"back")
            assert q.get() == b"back"
        finally:
            q2.close()
        data = pickle.dumps(q)
    code = (
        "import pickle, sys, fastshm\n"
        "q = pickle.loads(bytes.fromhex(sys.argv[1]))\n"
        "print(q.backend, q.get(timeout=10).decode())\n"
    )
    for default in BACKENDS:
        with fastshm.Queue(name, create=False, backend=backend) as q:
            q.put(b"for " + default.encode())
            out = run_python(code, data.hex(), env={"FASTSHM_BACKEND": default},
                             timeout=30).stdout.decode().split()
            assert out == [backend_name(backend), "for", default]
    # Pickling never creates: a deleted queue is not brought back.
    fastshm.Queue(name, create=False, backend=backend).delete()
    with pytest.raises(FileNotFoundError):
        pickle.loads(data)


# ---- ObjectQueue ----


def test_object_queue(backend: str, name: str) -> None:
    objs: List[Any] = [None, 1, "two", [3, (4, 5)], {"six": 6.0}, b"seven", {8, 9},
                       list(range(1000))]
    with fastshm.ObjectQueue(name, 1 << 16, create=True, backend=backend) as oq:
        assert isinstance(oq.queue, fastshm.Queue) and oq.queue.backend == backend_name(backend)
        assert oq.empty() and not oq.full()
        for o in objs[:4]:
            oq.put(o)
        oq.put_many(objs[4:6])
        oq.put_nowait(objs[6])
        oq.put(objs[7], timeout=1)
        assert oq.qsize() == len(objs)
        assert oq.get() == objs[0]
        assert oq.get_nowait() == objs[1]
        assert oq.get_many(2) == objs[2:4]
        assert oq.get_many() == objs[4:]
        with pytest.raises(queue.Empty):
            oq.get_nowait()
        with pytest.raises(queue.Empty):
            oq.get(timeout=0.01)
        # What is in the bytes queue is the pickle, highest protocol.
        oq.put({"k": 1})
        raw = oq.queue.get()
        assert pickle.loads(raw) == {"k": 1} and raw[1] == pickle.HIGHEST_PROTOCOL
        oq2 = pickle.loads(pickle.dumps(oq))
        try:
            oq2.put(("across", "pickle"))
            assert oq.get() == ("across", "pickle")
        finally:
            oq2.close()
    assert oq.queue.closed
    oq3 = fastshm.ObjectQueue(name, create=False, backend=backend)
    oq3.put(None)
    assert oq3.qsize() == 1 and oq3.get_nowait() is None
    oq3.delete()
    assert oq3.queue.closed and not exists(name)


def test_object_queue_too_big(backend: str, name: str) -> None:
    with fastshm.ObjectQueue(name, 64, create=True, backend=backend) as oq:
        with pytest.raises(ValueError):
            oq.put(b"x" * 100)
        assert oq.qsize() == 0


# A producer of its own process: good objects, a message that is no pickle
# (put through the bytes queue), an object of a class only it can import,
# and more good ones.
MIXED_PRODUCER = r"""
import pickle, sys
import fastshm

class OnlyHere:
    pass

name, backend = sys.argv[1], sys.argv[2]
oq = fastshm.ObjectQueue(name, create=False, backend=backend)
oq.put_many([1, 2, 3])
oq.queue.put(b"not a pickle")
oq.put_many([4, 5, 6])
oq.put(OnlyHere())
oq.put({"seven": 7})
oq.close()
"""


def test_object_queue_keeps_the_good_objects_of_a_bad_batch(backend: str, name: str) -> None:
    """get_many takes a batch with a message that is no pickle and one whose
    class this process cannot import: it raises DecodeError (an
    UnpicklingError) that carries every object that decoded, in order, and
    the raw bytes of those that did not; nothing is left behind or lost."""
    with fastshm.ObjectQueue(name, 1 << 16, create=True, backend=backend) as oq:
        run_python(MIXED_PRODUCER, name, backend, timeout=60)
        assert oq.qsize() == 9
        with pytest.raises(fastshm.DecodeError) as info:
            oq.get_many(None, timeout=5)
        e = info.value
        assert isinstance(e, pickle.UnpicklingError)
        assert e.objects == [1, 2, 3, 4, 5, 6, {"seven": 7}]
        assert e.data == b"not a pickle"
        assert len(e.undecoded) == 2 and e.undecoded[0] == b"not a pickle"
        assert b"OnlyHere" in e.undecoded[1]
        assert e.__cause__ is not None
        assert "2 of 9 messages" in str(e) and name in str(e)
        assert oq.qsize() == 0
        again = pickle.loads(pickle.dumps(e))  # it crosses processes whole
        assert again.objects == e.objects and again.undecoded == e.undecoded
        assert str(again) == str(e)

        # One at a time: the bad ones raise with their bytes, the good ones
        # around them come out as usual.
        run_python(MIXED_PRODUCER, name, backend, timeout=60)
        got: List[Any] = []
        bad: List[bytes] = []
        for _ in range(9):
            try:
                got.append(oq.get(timeout=5))
            except fastshm.DecodeError as err:
                assert err.objects == [] and err.undecoded == [err.data]
                bad.append(err.data)
        assert got == [1, 2, 3, 4, 5, 6, {"seven": 7}]
        assert bad[0] == b"not a pickle" and b"OnlyHere" in bad[1] and len(bad) == 2
        oq.queue.put(b"\x80\x05junk")
        with pytest.raises(fastshm.DecodeError) as info:
            oq.get_nowait()
        assert info.value.data == b"\x80\x05junk"
        assert oq.empty()


# ---- two native routes, and the python backend beside them ----


needs_two_natives = pytest.mark.skipif(
    "native-cffi" not in BACKENDS, reason="needs both native bindings"
)
needs_both_kinds = pytest.mark.skipif(
    len({backend_name(b) for b in BACKENDS}) < 2, reason="needs the native backend"
)


@pytest.mark.parametrize("call", ["get", "get_into", "get_many", "put", "put_many"])
def test_close_from_another_thread_ends_a_blocked_call(backend: str, name: str,
                                                       call: str) -> None:
    """close() from another thread ends a blocked put or get within a slice
    (100 ms): ValueError, nothing put or taken, the queue fine for others."""
    q = make(name, backend, 64)
    other = fastshm.Queue(name, create=False, backend=backend)
    try:
        if call.startswith("put"):
            while not q.full():
                q.put(b"")
        before = other.qsize()
        calls: Dict[str, Callable[[], Any]] = {
            "get": q.get, "get_into": lambda: q.get_into(bytearray(8)),
            "get_many": q.get_many, "put": lambda: q.put(b"x"),
            "put_many": lambda: q.put_many([b"x", b"y"]),
        }
        close_ends_blocked_call(q, calls[call])
        assert other.qsize() == before  # nothing put or taken
        if before:  # make room again
            assert other.get_many(block=False) == [b""] * before
        other.put(b"after", timeout=5)
        assert other.get_nowait() == b"after"
    finally:
        other.close()
        q.close()


def test_core_queue_wait(name: str) -> None:
    """fshm_queue_wait, the sleep of a binding's later slices: 0 at once when
    the queue is ready, FSHM_ETIMEOUT when it stays unready, woken by a put
    from another thread; it refuses room the ring cannot hold and changes
    nothing (the sleeper count is back to 0)."""
    from fastshm import _errors as E

    lib = pytest.importorskip("fastshm._fastshm", reason="needs the cffi binding").lib
    with make(name, "native-cffi", 64) as q:
        h = q._h._q
        assert lib.fshm_queue_wait(h, 0, 0) == E.ETIMEOUT  # empty: no message
        assert lib.fshm_queue_wait(h, 64, 0) == 0  # room for the whole ring
        assert lib.fshm_queue_wait(h, 72, 0) == E.ETOOBIG
        assert lib.fshm_queue_wait(h, 72, 10**9) == E.ETOOBIG  # at once, never sleeps
        start = time.monotonic()
        assert lib.fshm_queue_wait(h, 0, 50_000_000) == E.ETIMEOUT
        assert time.monotonic() - start >= 0.04
        t = threading.Timer(0.2, q.put, args=(b"x" * 40,))
        t.start()
        try:
            assert lib.fshm_queue_wait(h, 0, 20 * 10**9) == 0  # woken by the put
        finally:
            t.join()
        assert lib.fshm_queue_wait(h, 0, 0) == 0
        # 48 of 64 bytes used (a length word and 40 bytes): room for 16, not 24.
        assert lib.fshm_queue_wait(h, 16, 0) == 0
        assert lib.fshm_queue_wait(h, 24, 0) == E.ETIMEOUT
        assert header(name)["waiters"] == 0
        assert q.get_nowait() == b"x" * 40


@needs_two_natives
def test_native_bindings_share_one_queue(name: str) -> None:
    with make(name, "native-capi", 256) as a, fastshm.Queue(
        name, create=False, backend="native-cffi"
    ) as b:
        for i in range(200):  # round the ring many times, alternating sides
            (a if i % 2 else b).put(b"m%d" % i + bytes(i % 50))
            got = (b if i % 3 else a).get(timeout=5)
            assert got == b"m%d" % i + bytes(i % 50)
        a.put_many([b"1", b"2"])
        b.put_many([b"3"])
        assert a.qsize() == b.qsize() == 3
        assert b.get_many() == [b"1", b"2", b"3"]
        assert header(name)["flags"] == 0


@needs_both_kinds
@pytest.mark.parametrize("maker", ["native", "python"])
def test_explicit_other_backend_is_refused(maker: str, name: str) -> None:
    user = "python" if maker == "native" else "native"
    explicit = [user] + (["native-cffi", "native-capi"] if user == "native"
                         and "native-cffi" in BACKENDS else [])
    with make(name, maker) as q:
        q.put(b"kept")
        before = raw_bytes(name)
        for b in explicit:
            with pytest.raises(fastshm.FormatError) as e:
                fastshm.Queue(name, create=False, backend=b)
            assert isinstance(e.value, fastshm._errors.ProtocolMismatch)
            msg = str(e.value)
            assert name in msg and f"backend={maker!r}" in msg and "backend unset" in msg
            assert f"made by the {maker} backend" in msg
            with pytest.raises(fastshm.FormatError):
                fastshm.Queue(name, backend=b)  # open-or-create: it exists
        assert raw_bytes(name) == before
        assert q.get() == b"kept"


@needs_both_kinds
@pytest.mark.parametrize("maker", ["native", "python"])
def test_unset_backend_follows_the_queue(maker: str, name: str) -> None:
    """Without a backend choice, a queue opens with the backend that made
    it, whichever is the default, and the two can talk through it."""
    code = (
        "import sys, fastshm\n"
        "for kw in ({}, {'backend': None}, {'backend': 'auto'}, {'create': False}):\n"
        "    with fastshm.Queue(sys.argv[1], **kw) as q:\n"
        "        q.put(q.backend)\n"
        "        print(q.backend, q.created)\n"
    )
    with make(name, maker) as q:
        for default in (None, "native", "python"):
            env = dict(os.environ)
            env.pop("FASTSHM_BACKEND", None)
            if default:
                env["FASTSHM_BACKEND"] = default
            proc = subprocess.run([sys.executable, "-c", code, name], capture_output=True,
                                  timeout=60, env=env)
            assert proc.returncode == 0, proc.stderr.decode(errors="replace")
            lines = proc.stdout.decode().splitlines()
            # FASTSHM_BACKEND picks the default; the queue's own still wins.
            assert lines == [f"{maker} False"] * 4, (default, lines)
            assert drain(q) == [maker.encode()] * 4
        # In this process, backend="auto" follows the queue too.
        with fastshm.Queue(name, backend="auto") as q2:
            assert q2.backend == maker
            q2.put(b"auto")
            assert q.get() == b"auto"


# ---- read-only ----


AS_USER_READONLY = r"""
import importlib, os, sys, queue
uid, src, needed, name, backend = int(sys.argv[1]), *sys.argv[2:6]
for mod in needed.split(","):
    if mod:
        importlib.import_module(mod)
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
sys.path.insert(0, src)
import fastshm
q = fastshm.Queue(name, create=False, backend=backend)
print("readonly", q.readonly)
print("qsize", q.qsize(), q.bytes_used, q.empty(), q.full(), q.capacity)
for label, call in [
    ("put", lambda: q.put(b"no")), ("put_nowait", lambda: q.put_nowait(b"no")),
    ("put_many", lambda: q.put_many([b"no"])), ("get", lambda: q.get()),
    ("get_nowait", lambda: q.get_nowait()), ("get_many", lambda: q.get_many()),
    ("get_into", lambda: q.get_into(bytearray(64))),
]:
    try:
        call()
        print(label, "allowed")
    except PermissionError:
        print(label, "PermissionError")
    except Exception as e:
        print(label, type(e).__name__, e)
print("after", q.qsize())
q.close()
"""


@needs_root
def test_read_only_queue(backend: str, name: str) -> None:
    from test_permissions import modules_fastshm_needs

    with make(name, backend, 1024, mode=0o644) as q:
        q.put(b"for everyone")
        before = raw_bytes(name)
        needed = ",".join([modules_fastshm_needs(), "queue"])
        out = run_python(AS_USER_READONLY, "65534", SRC_DIR, needed, name, backend,
                         timeout=60).stdout.decode().splitlines()
        assert out == [
            "readonly True", "qsize 1 24 False False 1024",
            "put PermissionError", "put_nowait PermissionError", "put_many PermissionError",
            "get PermissionError", "get_nowait PermissionError", "get_many PermissionError",
            "get_into PermissionError", "after 1",
        ]
        # Nothing shared was written: no waiter count, no lock word.
        assert raw_bytes(name) == before
        assert q.get() == b"for everyone"


# ---- woken from another process ----


PUT_LATER = (
    "import sys, time, fastshm\n"
    "q = fastshm.Queue(sys.argv[1], create=False, backend=sys.argv[2])\n"
    "time.sleep(0.3)\n"
    "q.put(b'from another process')\n"
)
GET_LATER = (
    "import sys, time, fastshm\n"
    "q = fastshm.Queue(sys.argv[1], create=False, backend=sys.argv[2])\n"
    "time.sleep(0.3)\n"
    "print(q.get(timeout=30).decode())\n"
)


def test_blocked_get_woken_by_another_process(backend: str, name: str) -> None:
    peers = [backend] if backend_name(backend) == "python" else [
        b for b in BACKENDS if backend_name(b) == "native"]
    with make(name, backend) as q:
        for peer in peers:
            t, box = in_thread(lambda: q.get(timeout=30))
            run_python(PUT_LATER, name, peer, timeout=60)
            t.join(40)
            assert not t.is_alive() and box == [b"from another process"], peer
            assert header(name)["waiters"] == 0


def test_blocked_put_woken_by_another_process(backend: str, name: str) -> None:
    with make(name, backend, 64) as q:
        q.put(b"f" * 56)  # full
        assert q.full()
        t, box = in_thread(lambda: q.put(b"waiting to go in", timeout=30))
        out = run_python(GET_LATER, name, backend, timeout=60).stdout.decode().strip()
        t.join(40)
        assert not t.is_alive() and box == [None]
        assert out == "f" * 56
        assert q.get_nowait() == b"waiting to go in"
        assert header(name)["waiters"] == 0


# ---- Ctrl-C in a blocked call ----

SIGINT_CHILD = r"""
import os, sys, queue, signal
import fastshm
name, backend, what = sys.argv[1:4]
q = fastshm.Queue(name, create=False, backend=backend)
calls = {
    "get": lambda: q.get(),
    "get_timeout": lambda: q.get(timeout=60),
    "get_many": lambda: q.get_many(),
    "get_into": lambda: q.get_into(bytearray(100)),
    "put": lambda: q.put(b"p" * 40),
    "put_timeout": lambda: q.put(b"p" * 40, timeout=60),
    "put_many": lambda: q.put_many([b"p" * 8] * 3),
}
before = (q.qsize(), q.bytes_used)
print("blocking", flush=True)
try:
    calls[what]()
    print("returned", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
print("state", *before, q.qsize(), q.bytes_used, flush=True)
# The handle still works after the interruption.
if what.startswith("get"):
    q.put(b"after")
    print("again", q.get(timeout=10).decode(), flush=True)
else:
    print("again", q.get(timeout=10).decode(), flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("what", ["get", "get_timeout", "get_many", "get_into", "put",
                                  "put_timeout", "put_many"])
def test_ctrl_c_interrupts_a_blocked_call(backend: str, name: str, what: str) -> None:
    with make(name, backend, 64) as q:
        if what.startswith("put"):
            q.put(b"f" * 32)
            q.put(b"g" * 16)  # 64 bytes: full
        before = raw_bytes(name)
        p = subprocess.Popen([sys.executable, "-c", SIGINT_CHILD, name, backend, what],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert p.stdout.readline() == b"blocking\n"  # type: ignore[union-attr]
            time.sleep(0.3)  # long past the spin: asleep in the wait
            assert p.poll() is None, p.stderr.read()  # type: ignore[union-attr]
            mid = header(name)
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        lines = out.decode().splitlines()
        assert p.returncode == 0, err.decode(errors="replace")
        assert lines[0] == "interrupted", (lines, err)
        a, b, c, d = (int(x) for x in lines[1].split()[1:])
        assert (a, b) == (c, d), "the interrupted call changed the queue"
        assert lines[2] == "again " + ("after" if what.startswith("get") else "f" * 32)
        h = header(name)
        assert h["waiters"] == 0 and h["lock"] == 0 and h["dirty"] == 0
        assert (mid["head"], mid["tail"]) == tuple(
            struct.unpack_from("<Q", before, o)[0] for o in (Q_HEAD, Q_TAIL)
        )
        if what.startswith("put"):
            assert drain(q) == [b"g" * 16]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("what", ["get", "put"])
def test_ctrl_c_from_a_thread_in_process(backend: str, name: str, what: str) -> None:
    """SIGINT sent from a thread of this very process (os.kill) interrupts a
    get or put blocked forever in the main thread, and changes nothing."""
    with make(name, backend, 32) as q:
        if what == "put":
            q.put(b"f" * 24)  # full
        before = state(q)
        fired = threading.Event()

        def interrupt() -> None:
            time.sleep(0.3)
            fired.set()
            os.kill(os.getpid(), signal.SIGINT)

        old = signal.signal(signal.SIGINT, signal.default_int_handler)
        # A watchdog: if the call ignores the signal, the other side frees it.
        guard = threading.Timer(20, q.put if what == "get" else q.get,
                                args=(b"watchdog",) if what == "get" else ())
        guard.start()
        t = threading.Thread(target=interrupt, daemon=True)
        t.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                got = q.get() if what == "get" else q.put(b"more")
                pytest.fail(f"{what} returned {got!r} instead of being interrupted")
        finally:
            guard.cancel()
            t.join()
            signal.signal(signal.SIGINT, old)
        assert fired.is_set()
        assert state(q) == before and header(name)["waiters"] == 0
        if what == "put":
            assert q.get(timeout=5) == b"f" * 24
        q.put(b"still works")
        assert q.get(timeout=5) == b"still works"


# ---- threads and forked children on one Queue object ----


def _tagged(who: int, seq: int, rnd: random.Random) -> bytes:
    body = bytes([rnd.randrange(256)]) * rnd.randrange(0, 300)
    head = struct.pack("<II", who, seq)
    return head + body + struct.pack("<I", zlib_crc(head + body))


def zlib_crc(data: bytes) -> int:
    import zlib

    return zlib.crc32(data)


def _untag(m: bytes) -> tuple[int, int]:
    assert len(m) >= 12 and struct.unpack_from("<I", m, len(m) - 4)[0] == zlib_crc(m[:-4]), (
        f"corrupt message of {len(m)} bytes"
    )
    return struct.unpack_from("<II", m)  # type: ignore[return-value]


def _check_delivery(got: List[List[bytes]], producers: int, each: int) -> None:
    seen = set()
    for c, msgs in enumerate(got):
        last: dict = {}
        for m in msgs:
            who, seq = _untag(m)
            assert (who, seq) not in seen, f"{(who, seq)} delivered twice"
            seen.add((who, seq))
            assert seq > last.get(who, -1), f"consumer {c}: {(who, seq)} out of order"
            last[who] = seq
    missing = {(w, s) for w in range(producers) for s in range(each)} - seen
    assert not missing, f"{len(missing)} never delivered, e.g. {sorted(missing)[:5]}"


@pytest.mark.parametrize("shared", [True, False], ids=["one-object", "object-per-thread"])
def test_threads_share_one_queue(backend: str, name: str, shared: bool) -> None:
    producers, consumers, each = 3, 2, 1500
    q = make(name, backend, 4096)
    errors: List[BaseException] = []
    got: List[List[bytes]] = [[] for _ in range(consumers)]
    handles: List[fastshm.Queue] = []

    def handle() -> fastshm.Queue:
        if shared:
            return q
        h = fastshm.Queue(name, create=False, backend=backend)
        handles.append(h)
        return h

    def producer(who: int) -> None:
        try:
            h, rnd = handle(), random.Random(who)
            for seq in range(each):
                h.put(_tagged(who, seq, rnd), timeout=30)
        except BaseException as e:  # noqa: BLE001 -- reported in the test's thread
            errors.append(e)

    def consumer(c: int) -> None:
        try:
            h = handle()
            while True:
                batch = h.get_many(c + 2, timeout=30)
                for i, m in enumerate(batch):
                    if m == b"":
                        # Marks taken beyond its own go back for the others.
                        assert batch[i:] == [b""] * (len(batch) - i), batch[i:]
                        for _ in batch[i + 1 :]:
                            h.put(b"", timeout=30)
                        return
                    got[c].append(m)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    try:
        cs = [threading.Thread(target=consumer, args=(c,), daemon=True) for c in range(consumers)]
        ps = [threading.Thread(target=producer, args=(p,), daemon=True) for p in range(producers)]
        for t in cs + ps:
            t.start()
        for t in ps:
            t.join(60)
        assert not any(t.is_alive() for t in ps), "producers did not finish"
        assert not errors, errors
        for _ in range(consumers):
            q.put(b"", timeout=30)  # one stop mark each, behind every message
        for t in cs:
            t.join(60)
        assert not any(t.is_alive() for t in cs), "consumers did not finish"
        assert not errors, errors
        _check_delivery(got, producers, each)
        assert drain(q) == []
    finally:
        for h in handles:
            h.close()
        q.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_children_share_the_queue(backend: str, name: str) -> None:
    """Children forked after the queue was opened put through the object
    they inherited, while the parent gets: they exclude one another."""
    children, each = 2, 2000
    q = make(name, backend, 4096)
    q.put(b"")  # used before the fork, so any per-process state exists
    assert q.get() == b""
    pids = []
    try:
        for who in range(children):
            pid = os.fork()
            if pid == 0:  # the child
                code = 1
                try:
                    rnd = random.Random(who)
                    for seq in range(each):
                        q.put(_tagged(who, seq, rnd), timeout=30)
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        got: List[bytes] = []
        deadline = time.monotonic() + 60
        while len(got) < children * each:
            assert time.monotonic() < deadline, f"only {len(got)} messages arrived"
            try:
                got.extend(q.get_many(50, timeout=1))
            except queue.Empty:
                pass
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        pids.clear()
        _check_delivery([got], children, each)
        assert q.qsize() == 0 and q.bytes_used == 0
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
        q.close()


# ---- big messages, and a signal handler that puts ----


def test_big_messages(backend: str, name: str) -> None:
    """Messages far beyond any internal scratch buffer, alone and in one
    get_many, wrapping round the ring's end."""
    rnd = random.Random(5)
    with fastshm.Queue(name, 1 << 20, create=True, backend=backend) as q:
        biggest = os.urandom(q.max_message)
        q.put(biggest)
        assert q.get() == biggest
        for _ in range(3):
            sizes = [70000, 10, 65536, 1, 200000, 0, 131072, 4097, 300001]
            msgs = [rnd.randbytes(n) for n in sizes]
            q.put_many(msgs[:4])
            for m in msgs[4:]:
                q.put(m)
            assert q.get_many() == msgs
            q.put_many(msgs)
            out = [q.get() for _ in msgs[:3]]
            buf = bytearray(400000)
            for _ in msgs[3:6]:
                n = q.get_into(buf)
                out.append(bytes(buf[:n]))
            out += q.get_many(2) + q.get_many(None)
            assert out == msgs
        assert q.qsize() == 0 and q.bytes_used == 0


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_signal_handler_puts_while_get_waits(backend: str, name: str) -> None:
    """A signal handler that puts, on the same object, while this thread
    waits in get: the handler runs during the wait, and the get returns
    what it put (the python backend may refuse the handler's put with
    RuntimeError, as its README says)."""
    with make(name, backend) as q:
        errors: List[BaseException] = []

        def handler(signum: int, frame: Any) -> None:
            try:
                q.put(b"from the handler", timeout=5)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
                q2 = fastshm.Queue(name, create=False, backend=backend)
                q2.put(b"from a second object")
                q2.close()

        old = signal.signal(signal.SIGALRM, handler)
        guard = threading.Timer(20, lambda: fastshm.Queue(
            name, create=False, backend=backend).put(b"watchdog"))
        guard.start()
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            got = q.get(timeout=30)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            guard.cancel()
        if backend_name(backend) == "python" and errors:
            assert isinstance(errors[0], RuntimeError), errors
            assert got == b"from a second object"
        else:
            assert not errors, errors
            assert got == b"from the handler"
        assert q.qsize() == 0


# ---- hypothesis: a state machine against the same model ----


@pytest.mark.parametrize("size", [16, 40, 200])
def test_state_machine_against_a_model(backend: str, size: int) -> None:
    from conftest import make_name, unlink_quietly
    from hypothesis import HealthCheck, settings
    from hypothesis import strategies as st
    from hypothesis.stateful import (
        RuleBasedStateMachine,
        invariant,
        rule,
        run_state_machine_as_test,
    )

    payload = st.binary(max_size=size)

    class QueueModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.name = make_name("sm")
            self.q = fastshm.Queue(self.name, size, create=True, backend=backend)
            self.model: collections.deque = collections.deque()

        def used(self) -> int:
            return sum(rec(len(m)) for m in self.model)

        @rule(data=payload)
        def put(self, data: bytes) -> None:
            if len(data) > self.q.max_message:
                with pytest.raises(ValueError):
                    self.q.put_nowait(data)
            elif self.q.capacity - self.used() >= rec(len(data)):
                self.q.put_nowait(data)
                self.model.append(data)
            else:
                with pytest.raises(queue.Full):
                    self.q.put_nowait(data)

        @rule(batch=st.lists(payload, max_size=4))
        def put_many(self, batch: List[bytes]) -> None:
            need = sum(rec(len(m)) for m in batch)
            if any(len(m) > self.q.max_message for m in batch) or need > self.q.capacity:
                with pytest.raises(ValueError):
                    self.q.put_many(batch, block=False)
            elif self.q.capacity - self.used() >= need:
                self.q.put_many(batch, block=False)
                self.model.extend(batch)
            else:
                with pytest.raises(queue.Full):
                    self.q.put_many(batch, block=False)

        @rule()
        def get(self) -> None:
            if self.model:
                assert self.q.get_nowait() == self.model.popleft()
            else:
                with pytest.raises(queue.Empty):
                    self.q.get_nowait()

        @rule(k=st.one_of(st.none(), st.integers(1, 5)))
        def get_many(self, k: Any) -> None:
            if self.model:
                n = len(self.model) if k is None else min(k, len(self.model))
                want = [self.model.popleft() for _ in range(n)]
                assert self.q.get_many(k, block=False) == want
            else:
                with pytest.raises(queue.Empty):
                    self.q.get_many(k, block=False)

        @rule(cap=st.integers(0, size))
        def get_into(self, cap: int) -> None:
            buf = bytearray(cap)
            if not self.model:
                with pytest.raises(queue.Empty):
                    self.q.get_into(buf, block=False)
            elif len(self.model[0]) > cap:
                with pytest.raises(ValueError):
                    self.q.get_into(buf, block=False)
            else:
                m = self.model.popleft()
                assert self.q.get_into(buf, block=False) == len(m) and buf[: len(m)] == m

        @invariant()
        def snapshots(self) -> None:
            assert self.q.qsize() == len(self.model)
            assert self.q.bytes_used == self.used()
            assert self.q.empty() == (not self.model)
            assert self.q.full() == (self.q.capacity - self.used() < 8)

        def teardown(self) -> None:
            self.q.close()
            unlink_quietly(self.name)

    run_state_machine_as_test(QueueModel, settings=settings(
        max_examples=300 if LONG else 40, stateful_step_count=40, deadline=None,
        database=None, suppress_health_check=list(HealthCheck),
    ))


# ---- a queue made by another user ----

SQUAT_QUEUE = r"""
import fastshm
q = fastshm.Queue(args[0], 256, create=True, backend=args[1], mode=0o666)
q.put(b"squatted")
print("made")
"""

VICTIM_QUEUE = r"""
import errno, fastshm
name, backend = args[0], args[1]
for label, kw in [("attach", {"create": False}), ("open_or_create", {})]:
    try:
        fastshm.Queue(name, backend=backend, **kw)
    except PermissionError as e:
        ok = e.errno == errno.EPERM and "any_owner=True" in str(e)
        print(label, "refused" if ok else f"wrong error {e!r}")
    else:
        print(label, "attached")
q = fastshm.Queue(name, create=False, backend=backend, any_owner=True)
print("any_owner", q.get(timeout=5).decode())
"""


@needs_root
def test_queue_of_another_user_is_refused(backend: str, name: str) -> None:
    from test_hardening import NOBODY, VICTIM, as_user

    assert as_user(NOBODY, SQUAT_QUEUE, name, backend) == ["made"]
    assert as_user(VICTIM, VICTIM_QUEUE, name, backend) == [
        "attach refused", "open_or_create refused", "any_owner squatted",
    ]


# ---- the first call on a handle ----


@pytest.mark.parametrize("kind", ["queue", "segment"])
def test_first_call_does_not_grow_with_open_descriptors(backend: str, name: str,
                                                        kind: str) -> None:
    """A handle's first put or store costs the same whether the process has
    a few descriptors open or hundreds more (the python backend then sets up
    a descriptor of the calling thread's own for its flock)."""
    import resource

    extra = 600
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < extra + 256:
        if hard != resource.RLIM_INFINITY and hard < extra + 256:
            pytest.skip(f"the descriptor limit ({hard}) is too low")
        resource.setrlimit(resource.RLIMIT_NOFILE, (extra + 256, hard))
    if kind == "queue":
        first = fastshm.Queue(name, 1 << 16, create=True, backend=backend)

        def open_and_call() -> float:
            h = fastshm.Queue(name, create=False, backend=backend)
            start = time.perf_counter()
            h.put_nowait(b"x")
            took = time.perf_counter() - start
            h.close()
            first.get_nowait()
            return took
    else:
        first = fastshm.Segment(name, 64, create=True, backend=backend)

        def open_and_call() -> float:
            h = fastshm.Segment(name, create=False, backend=backend)
            start = time.perf_counter()
            h.store(b"x")
            took = time.perf_counter() - start
            h.close()
            return took

    def median_first_call() -> float:
        times = sorted(open_and_call() for _ in range(15))
        return times[len(times) // 2]

    fds: List[int] = []
    try:
        median_first_call()  # warm up: imports, caches
        few = median_first_call()
        fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(extra)]
        many = median_first_call()
    finally:
        for fd in fds:
            os.close(fd)
        if soft != resource.getrlimit(resource.RLIMIT_NOFILE)[0]:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        first.close()
    assert many < 4 * few, (
        f"a handle's first call took {many * 1e6:.0f} us with {extra} more descriptors "
        f"open, {few * 1e6:.0f} us without"
    )
