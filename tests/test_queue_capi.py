"""What only the C-API route of Queue (``_cext.QueueCore``) does its own way:
the copies it lets go of the GIL for.  The semantics every route shares
(a close() from another thread ending a call blocked on the object among
them) are tested in test_queue.py."""

from __future__ import annotations

import gc
import queue
import sys
from typing import Any, Callable, Iterator, List

import pytest

import fastshm
from fastshm import _backend

pytestmark = pytest.mark.skipif(_backend.capi_error() is not None,
                                reason=f"no C-API binding: {_backend.capi_error()}")

try:
    from fastshm._cext import GIL_RELEASE_BYTES as GIL_BYTES
except ImportError:
    GIL_BYTES = 1 << 20


@pytest.fixture
def name(shm_name: Callable[..., str]) -> str:
    return shm_name("qc")  # unlinked by shm_name afterwards


@pytest.fixture
def big_queue(name: str) -> Iterator[fastshm.Queue]:
    q = fastshm.Queue(name, 4 * GIL_BYTES, create=True, backend="native")
    from fastshm._cext import QueueCore
    assert isinstance(q, QueueCore)
    try:
        yield q
    finally:
        q.close()


def test_big_messages_copied_without_the_gil(big_queue: fastshm.Queue) -> None:
    q = big_queue
    msgs = [bytes([i]) * n for i, n in enumerate([GIL_BYTES, GIL_BYTES + 1, GIL_BYTES - 1,
                                                  100, GIL_BYTES + 12345])]
    for m in msgs[:3]:
        q.put(m)
    assert q.get() == msgs[0]
    buf = bytearray(GIL_BYTES + 64)
    assert q.get_into(buf) == len(msgs[1]) and buf[:len(msgs[1])] == msgs[1]
    assert q.get_many() == [msgs[2]]
    q.put_many(msgs[3:])  # one batch over GIL_RELEASE_BYTES
    assert q.get_many(1) == [msgs[3]] and q.get(timeout=1) == msgs[4]
    assert q.qsize() == 0 and q.bytes_used == 0


def test_get_many_takes_everything_queued_past_the_gil_share(big_queue: fastshm.Queue) -> None:
    """More than GIL_RELEASE_BYTES queued: one take without the GIL still
    returns every message, small ones and ones longer than its raw chunks."""
    q = big_queue
    sent: List[bytes] = []
    i = 0
    while q.bytes_used < 2 * GIL_BYTES:
        batch = [bytes([i % 251]) * n for n in (0, 1, 64, 1000, 70000, 9)]
        i += 1
        q.put_many(batch)
        sent += batch
    assert q.get_many() == sent
    assert q.qsize() == 0
    q.put_many(sent[:500])
    assert q.get_many(7) == sent[:7] and q.get_many() == sent[7:500]


def test_nonblocking_calls_ignore_the_timeout(name: str) -> None:
    with fastshm.Queue(name, 16, create=True, backend="native") as q:
        with pytest.raises(queue.Empty):
            q.get(False, -1)
        q.put(b"12345678", False, "not a number")
        with pytest.raises(queue.Full):
            q.put(b"", block=False, timeout=float("nan"))
        assert q.get(block=0, timeout=-5) == b"12345678"


def _leak_calls(q: fastshm.Queue, data: bytes, buf: bytearray) -> List[Callable[[], Any]]:
    """Every hot method, on its fast path, through success and refusal."""

    def refused(fn: Callable[[], Any], *errors: type) -> Callable[[], None]:
        def call() -> None:
            try:
                fn()
            except errors:
                pass
            else:
                raise AssertionError(f"{fn} was not refused")
        return call

    small = bytearray(4)
    return [
        lambda: (q.put(data), q.get()),
        lambda: (q.put("text", True, 1.0), q.get(True, 1.0)),
        lambda: (q.put_nowait(buf), q.get_nowait()),
        lambda: (q.put(data), q.get_into(buf)),
        lambda: (q.put_many([data, "s", buf]), q.get_many()),
        lambda: (q.put_many((data,) * 20), q.get_many(max_messages=25, block=False)),
        refused(q.get_nowait, queue.Empty),
        refused(lambda: q.get_many(block=False), queue.Empty),
        refused(lambda: q.get_into(buf, False), queue.Empty),
        lambda: (q.put(data), refused(lambda: q.get_into(small), ValueError)(), q.get()),
        refused(lambda: q.put(b"x" * (q.max_message + 1)), ValueError),
        refused(lambda: q.put_many([data] * 40), ValueError),
        refused(lambda: q.put(None), TypeError),  # type: ignore[arg-type]
        refused(lambda: q.put_many([data, 5]), TypeError),  # type: ignore[list-item]
        refused(lambda: q.get(True, -1), ValueError),
        refused(lambda: q.get_many(0), ValueError),
        refused(lambda: q.put(data, timeout=0, block=True, extra=1), TypeError),  # type: ignore[call-arg]
        lambda: (q.qsize(), q.bytes_used, q.capacity, q.max_message, q.full(), q.empty()),
    ]


def test_a_million_calls_leak_nothing(name: str) -> None:
    """References and memory over a million calls of the C methods, on their
    fast paths and their refusals, then a few thousand through the waits and
    copies made without the GIL."""
    tracemalloc = pytest.importorskip("tracemalloc")
    data = b"d" * 64
    buf = bytearray(128)
    q = fastshm.Queue(name, 2048, create=True, backend="native")
    big_name = name + "b"
    big = fastshm.Queue(big_name, 3 * GIL_BYTES, create=True, backend="native")
    payload = b"p" * (GIL_BYTES + 1)
    big_buf = bytearray(GIL_BYTES + 8)
    try:
        slow = [
            lambda: (big.put(payload), big.get()),  # without the GIL, straight into bytes
            lambda: (big.put(payload), big.get_into(big_buf)),
            lambda: (big.put_many([payload, data]), big.get_many()),  # raw memory
            lambda: (big.put_many([payload, data, payload]), big.get_many(2), big.get()),
        ]

        def waits() -> None:  # the sliced waits, to their deadline
            for fn in (lambda: q.get(True, 1e-6), lambda: q.get_many(None, True, 1e-6),
                       lambda: q.get_into(buf, True, 1e-6)):
                try:
                    fn()
                except queue.Empty:
                    pass
        slow.append(waits)
        calls = _leak_calls(q, data, buf)
        refs_before = (sys.getrefcount(data), sys.getrefcount(buf), sys.getrefcount(q),
                       sys.getrefcount(payload))
        for call in calls + slow:  # warm up caches and free lists
            for _ in range(200):
                call()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for call in calls:
                for _ in range(1_000_000 // len(calls)):
                    call()
            for call in slow:
                for _ in range(500):
                    call()
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        refs_after = (sys.getrefcount(data), sys.getrefcount(buf), sys.getrefcount(q),
                      sys.getrefcount(payload))
        buf.extend(b"x")  # no buffer export left behind: it can still be resized
        big_buf.extend(b"x")
        assert q.qsize() == 0 and big.qsize() == 0
    finally:
        q.close()
        big.close()
        big.unlink()
    print(f"memory after the calls (capi queue): grown_bytes={grown}")
    assert refs_after == refs_before
    # A leaked 64-byte bytes object per call would be megabytes.
    assert grown < 256 * 1024, f"{grown} bytes still allocated after the calls"
