"""The C core's lock waits end at the caller's deadline (csrc/slot.c,
fshm__lock_acquire), called through the cffi lib: a lock held by a process
that is alive but not running bounds no timeout, changes nothing, and leaves
no turn behind; a dead holder's lock is still taken over.

The holder here is a live child process that never touches the object: its
id is written into the lock word, which is what a holder stopped with
SIGSTOP inside a store leaves there (tests/test_lock_held.py stops real
holders through the public API)."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from typing import Iterator

import pytest

import fastshm
from fastshm import _errors as E

lib = pytest.importorskip("fastshm._fastshm", reason="needs the cffi binding").lib
ffi = pytest.importorskip("fastshm._fastshm").ffi

LOCK, LOCK_NEXT = 64, 80


@pytest.fixture
def live_id() -> Iterator[int]:
    """The lock-word id of a live process that will never let go."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        # The namespace tag is this process's own: the child shares it.
        yield (int(lib.fshm_self_id()) & ~0xFFFFFFFF) | child.pid
    finally:
        child.kill()
        child.wait()


def hold(mv: memoryview, owner: int) -> None:
    struct.pack_into("<Q", mv, LOCK, owner)


def word(mv: memoryview, offset: int) -> int:
    return struct.unpack_from("<Q", mv, offset)[0]  # type: ignore[no-any-return]


def test_queue_calls_end_at_their_deadline(name: str, live_id: int) -> None:
    with fastshm.Queue(name, 256, create=True, backend="native-cffi") as q:
        q.put(b"first")
        h = q._h._q
        mv = memoryview(ffi.buffer(h.base, h.size))
        hold(mv, live_id)
        out, n = ffi.new("char[64]"), ffi.new("size_t *")
        for timeout_ns in (0, 200_000_000):
            start = time.monotonic()
            assert lib.fshm_queue_put(h, b"second", 6, timeout_ns) == E.EBUSY
            assert lib.fshm_queue_get(h, out, 64, n, timeout_ns) == E.EBUSY
            took = time.monotonic() - start
            assert took >= 2 * timeout_ns / 1e9  # each waited its whole timeout
            assert took < 2 * timeout_ns / 1e9 + 5  # and ended (not: until the holder left)
        # Nothing changed, and no waiter left a turn or a sleeper count behind.
        assert lib.fshm_queue_count(h) == 1
        assert word(mv, LOCK) == live_id and word(mv, LOCK_NEXT) == 0
        assert struct.unpack_from("<I", mv, 76)[0] == 0  # lock_waiters
        hold(mv, 0)
        assert q.get_nowait() == b"first"
        del mv


def test_segment_store_ends_at_its_deadline_and_load_does_not_wait(
        name: str, live_id: int) -> None:
    with fastshm.Segment(name, 64, create=True, backend="native-cffi") as seg:
        seg.store(b"kept")
        h = seg._h._seg
        mv = memoryview(ffi.buffer(h.base, h.size))
        hold(mv, live_id)
        seq = ffi.new("uint64_t *")
        assert lib.fshm_try_store(h, b"new", 3, seq) == E.EBUSY
        start = time.monotonic()
        assert lib.fshm_store_timed(h, b"new", 3, 0, seq) == E.EBUSY
        assert lib.fshm_store_timed(h, b"new", 3, 100_000_000, seq) == E.EBUSY
        assert 0.1 <= time.monotonic() - start < 5
        # A stopped writer spoils no copy: loads go on without the lock.
        assert seg.load() == b"kept" and seg.seq == 1
        rd = ffi.new("fshm_read *")
        assert lib.fshm_read_lock(h, rd) == E.EBUSY  # gives up after 50 ms
        assert word(mv, LOCK) == live_id and word(mv, LOCK_NEXT) == 0
        hold(mv, 0)
        assert lib.fshm_store_timed(h, b"new", 3, 0, seq) == 0 and seq[0] == 2
        assert seg.load() == b"new"
        del mv


def test_dead_holder_is_taken_over_even_without_waiting(name: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names nobody now
    dead = (int(lib.fshm_self_id()) & ~0xFFFFFFFF) | child.pid
    with fastshm.Queue(name, 256, create=True, backend="native-cffi") as q:
        h = q._h._q
        mv = memoryview(ffi.buffer(h.base, h.size))
        hold(mv, dead)
        assert lib.fshm_queue_put(h, b"x", 1, 0) == 0  # taken over at once
        assert word(mv, LOCK) == 0 and q.get_nowait() == b"x"
        del mv
