"""The native backend: fastshm's C core through cffi.

Same functions and classes as ``_pure``; ``segment.py`` and
``shared_memory.py`` sit on top of either.
"""

from __future__ import annotations

import errno
import itertools
import sys
import time
from typing import Any, Optional, Tuple

from . import _common as C
from ._errors import (
    EBUSY,
    EFORMAT,
    EFULL,
    EKIND,
    ENOMSG,
    EOWNER,
    ESMALL,
    ETIMEOUT,
    ETOOBIG,
    batch_too_big,
    closed_error,
    kind_error,
    lock_held_error,
    next_too_small,
    owner_error,
    protocol_error,
    raise_for,
    read_only_error,
    too_big,
    too_small,
)
from ._fastshm import ffi, lib

name = "native"
binding = "cffi"
# "quiet_commit": no signal handler runs between a queue put's commit and
# its return (CPython 3.11 and later; see _from_c), so a put that raises
# KeyboardInterrupt has put nothing; on PyPy that is best effort.
features = frozenset(
    ({"cffi", "atomic_lock", "futex"} if sys.platform.startswith("linux")
     else {"cffi", "atomic_lock"})
    | ({"quiet_commit"} if sys.implementation.name == "cpython" and sys.version_info >= (3, 11)
       else set())
)
NAME_MAX: int = lib.fshm_name_max()

# A blocking wait returns to Python this often, so Ctrl-C and other signal
# handlers run promptly while the GIL is released in between.
_WAIT_SLICE_NS = 50_000_000
# A queue's: its stores wake its sleepers, so the slice's end serves only a
# signal that went to another thread and a waker killed before its wake-up,
# and costs an idle waiter a context switch.
_QUEUE_SLICE_NS = 100_000_000
_QREC = C.QUEUE_RECORD_HEADER
_EINTR = errno.EINTR


# Out-parameters and a small bounce buffer for the hot path, reused instead of
# allocated per call.  A call pops one from the pool and puts it back when it
# has read its results, so two threads (or a signal handler that stores from
# inside another store) never share one; the pool grows to the number of
# calls in flight at once.
_SCRATCH_SIZE = 4096
# Offset of slot 0's payload; slot 1's is one stride further.
_PAYLOAD = C.HEADER_SIZE + C.SLOT_HEADER_SIZE


class _Scratch:
    __slots__ = ("words", "n", "seq", "read", "buf", "fbuf")

    def __init__(self) -> None:
        # n and seq point into words, which owns their memory.
        self.words = words = ffi.new("uint64_t[2]")
        self.n = ffi.cast("size_t *", words)
        self.seq = words + 1
        self.read = ffi.new("fshm_read *")
        self.buf = ffi.new("unsigned char[]", _SCRATCH_SIZE)
        self.fbuf = ffi.buffer(self.buf)


_pool: "list[_Scratch]" = []


def _mapping_view(base: Any, size: int, readonly: bool) -> memoryview:
    """A memoryview over the mapping that owns it: the mapping is unmapped
    only when this view and every slice or export of it are gone, so a view
    that outlives close() never touches unmapped memory."""
    owner = ffi.gc(ffi.cast("unsigned char *", base), lambda p: lib.fshm_unmap(p, size), size=size)
    mv = memoryview(ffi.buffer(owner, size))
    # A read-only mapping faults on a write: only a read-only view of it.
    return mv.toreadonly() if readonly else mv


def _from_c(fn: Any, *args: Any) -> Any:
    """An iterator whose first step calls fn(*args) from C: ``for rc in
    _from_c(...)`` makes the call without a CALL instruction, after which
    CPython (3.11 and later) would run pending signal handlers."""
    return itertools.starmap(fn, itertools.repeat(args))


def _how(how: int, any_owner: bool) -> int:
    return how | lib.FSHM_ANY_OWNER if any_owner else how


_KINDS = {1: "Segment", 2: "Queue", 3: "Channel"}  # FSHM_KIND_*


def kind_of(name: str, how: int) -> str:
    """What the name holds, for a message: "Segment", "Queue", "Channel"
    ("object" when that cannot be told any more)."""
    out = ffi.new("int *")
    rc = lib.fshm_kind_of(name.encode("utf-8"), how, out)
    return _KINDS.get(int(out[0]), "object") if rc == 0 else "object"


def _raise_open(rc: int, m: Any, name: str, kind: str = "segment", how: int = 0) -> None:
    """An open of the ``kind`` ("segment", "queue", "channel") ``name``
    failed with ``rc``; ``how`` as the open was made."""
    if rc == EOWNER:
        raise owner_error(name, int(m.owner))
    if rc == EKIND:
        raise kind_error(name, kind_of(name, how), kind.capitalize())
    raise_for(rc, name, "", kind)


def unlink(name: str) -> None:
    rc = lib.fshm_unlink(name.encode("utf-8"))
    if rc:
        raise_for(rc, name)


def self_id() -> int:
    return int(lib.fshm_self_id())


def owner_dead(owner: int) -> int:
    return int(lib.fshm_owner_dead(owner))


class RawMapping:
    """A named mapping without a header (fastshm.SharedMemory)."""

    __slots__ = ("buf", "size", "created", "readonly")

    def __init__(self, name: str, how: int, size: int, mode: int, any_owner: bool) -> None:
        m = ffi.new("fshm_map *")
        rc = lib.fshm_map_open(m, name.encode("utf-8"), _how(how, any_owner), size, mode)
        if rc:
            _raise_open(rc, m, name)
        self.size = int(m.size)
        self.created = bool(m.created)
        self.readonly = bool(m.readonly)
        self.buf = _mapping_view(m.base, self.size, self.readonly)


class SegmentHandle:
    """An open fastshm segment: the C ``fshm_seg`` and its mapping."""

    __slots__ = (
        "name", "_seg", "_mv", "capacity", "size", "created", "readonly", "_big", "_stride",
        "_spin", "closed",
    )

    def __init__(
        self, name: str, how: int, capacity: int, mode: int, any_owner: bool
    ) -> None:
        seg = ffi.new("fshm_seg *")
        m = ffi.new("fshm_map *")
        cname, chow = name.encode("utf-8"), _how(how, any_owner)
        rc = lib.fshm_seg_open(seg, m, cname, chow, capacity, mode)
        while rc == _EINTR:  # a signal came while waiting for its creator; its handler ran
            rc = lib.fshm_seg_open(seg, m, cname, chow, capacity, mode)
        if rc:
            _raise_open(rc, m, name, "segment", chow)
        self.name = name
        self._seg = seg
        self.size = int(m.size)
        self.created = bool(m.created)
        self.readonly = bool(m.readonly)
        self.capacity = int(seg.capacity)
        self._mv = _mapping_view(m.base, self.size, self.readonly)
        self._big = False
        self._stride = int(seg.stride)
        self._spin = int(lib.FSHM_SPIN_MIN_NS)
        self.closed = False  # set by Segment.close(): a blocked wait ends

    def store(self, data: C.BytesLike) -> int:
        try:  # inline rather than a helper call: this is the hot path
            sc = _pool.pop()
        except IndexError:
            sc = _Scratch()
        # bytes go to C as they are; cffi takes their pointer without a copy.
        src = data if type(data) is bytes else ffi.from_buffer(data)
        rc = lib.fshm_try_store(self._seg, src, len(data), sc.seq)
        if rc and rc == EBUSY:
            rc = self._store_waiting(src, len(data), sc)
        seq = sc.seq[0]
        _pool.append(sc)
        if rc:
            if rc == ETOOBIG:
                raise too_big(len(data), self.name, self.capacity)
            if self.readonly:
                raise read_only_error(self.name)
            raise_for(rc, self.name, "seq" if rc == EFORMAT else "")
        return seq  # type: ignore[no-any-return]

    def _store_waiting(self, src: Any, n: int, sc: _Scratch) -> int:
        """A store that found another writer's lock busy: wait for it in
        slices.  EINTR (a signal came while it slept) and EBUSY (the holder
        kept it through the slice: stopped?) both come back here, where
        signal handlers run, before the next slice."""
        while True:
            if self.closed:  # by another thread meanwhile: nothing stored
                _pool.append(sc)
                raise closed_error("segment", self.name)
            rc = lib.fshm_store_timed(self._seg, src, n, _WAIT_SLICE_NS, sc.seq)
            if rc != _EINTR and rc != EBUSY:
                return rc  # type: ignore[no-any-return]

    def load(self) -> Tuple[bytes, int]:
        # A small message: one C call copies it into the scratch buffer under
        # the seqlock, and the bytes object is made from there.  A large one
        # is copied once, straight from the mapping into the new bytes, and
        # the next load goes that way at once (_big).
        try:  # inline rather than a helper call: this is the hot path
            sc = _pool.pop()
        except IndexError:
            sc = _Scratch()
        seg = self._seg
        if not self._big:
            rc = lib.fshm_load(seg, sc.buf, _SCRATCH_SIZE, sc.n, sc.seq)
            while rc == _EINTR:  # a signal came while waiting for the writer lock
                rc = lib.fshm_load(seg, sc.buf, _SCRATCH_SIZE, sc.n, sc.seq)
            if rc == 0:
                out = (sc.fbuf[0 : sc.n[0]], sc.seq[0])
                _pool.append(sc)
                return out
            if rc != ESMALL:
                _pool.append(sc)
                raise_for(rc, self.name, "slot")
        r = sc.read
        for _ in range(3):
            rc = lib.fshm_read_begin(seg, r)
            if rc:
                _pool.append(sc)
                raise_for(rc, self.name, "slot")
            off = r.offset
            n = r.length
            data = self._mv[off : off + n].tobytes()
            if lib.fshm_read_end(seg, r) == 0:
                seq = r.seq
                _pool.append(sc)
                self._big = n > _SCRATCH_SIZE
                return data, seq
        # Writers spoiled three copies: one C call copies under the writer
        # lock (fshm_load), so the lock is never held while this thread
        # waits for the GIL.
        while True:
            buf = bytearray(n)
            rc = lib.fshm_load(seg, ffi.from_buffer(buf), n, sc.n, sc.seq)
            while rc == _EINTR:  # a signal came while waiting for the writer lock
                rc = lib.fshm_load(seg, ffi.from_buffer(buf), n, sc.n, sc.seq)
            n, seq = sc.n[0], sc.seq[0]
            if rc != ESMALL:
                break
            # A longer message came meanwhile: room for it, and again.
        _pool.append(sc)
        if rc:
            raise_for(rc, self.name, "slot")
        return bytes(memoryview(buf)[:n]), seq

    def load_into(self, dst: memoryview) -> Tuple[int, int]:
        try:  # inline rather than a helper call: this is the hot path
            sc = _pool.pop()
        except IndexError:
            sc = _Scratch()
        cap = len(dst)  # dst is a byte-format view: its length is its size
        dst_c = ffi.from_buffer(dst)
        rc = lib.fshm_load(self._seg, dst_c, cap, sc.n, sc.seq)
        while rc == _EINTR:  # a signal came while waiting for the writer lock
            rc = lib.fshm_load(self._seg, dst_c, cap, sc.n, sc.seq)
        n, seq = sc.n[0], sc.seq[0]
        _pool.append(sc)
        if rc:
            if rc == ESMALL:
                raise too_small(cap, n)
            raise_for(rc, self.name, "slot")
        return n, seq

    def view(self) -> Tuple[memoryview, int]:
        try:  # inline rather than a helper call: this is the hot path
            sc = _pool.pop()
        except IndexError:
            sc = _Scratch()
        # One C call: a load into no room at all copies nothing and reports
        # the current message's length and number, checked by the seqlock;
        # its slot follows from the number (docs/FORMAT.md).
        rc = lib.fshm_load(self._seg, ffi.NULL, 0, sc.n, sc.seq)
        n, seq = sc.n[0], sc.seq[0]
        _pool.append(sc)
        if rc and rc != ESMALL:
            raise_for(rc, self.name, "slot")
        off = _PAYLOAD + (seq & 1) * self._stride
        return self._mv[off : off + n].toreadonly(), seq

    def seq(self) -> int:
        return int(lib.fshm_seq(self._seg))

    def intact(self, seq: int) -> bool:
        return bool(lib.fshm_intact(self._seg, seq))

    def lock_owner(self) -> int:
        return int(lib.fshm_lock_owner(self._seg))

    def break_lock(self, owner: int) -> bool:
        return lib.fshm_break_lock(self._seg, owner) == 0  # type: ignore[no-any-return]

    def wait(self, after: int, timeout: Optional[float]) -> Optional[int]:
        """The newest seq once it is greater than ``after``; None when
        ``timeout`` seconds passed first."""
        seg = self._seg
        now_seq = lib.fshm_seq(seg)
        if now_seq > after:  # already there: no setup at all
            return int(now_seq)
        seq = ffi.new("uint64_t *")
        deadline = None if timeout is None else time.monotonic() + timeout
        start = lib.fshm_monotonic_ns()
        spin = self._spin
        while True:
            slice_ns = _WAIT_SLICE_NS
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    slice_ns = 0
                else:
                    slice_ns = min(slice_ns, int(left * 1e9))
            rc = lib.fshm_wait_spin(seg, after, slice_ns, spin, seq)
            spin = 0  # later slices of one wait: the spin is spent
            if rc == 0:
                self._spin = lib.fshm_spin_next(self._spin, lib.fshm_monotonic_ns() - start)
                return int(seq[0])
            if rc == ETIMEOUT:
                if deadline is not None and time.monotonic() >= deadline:
                    self._spin = lib.fshm_spin_next(self._spin, -1)
                    return None
            elif rc != errno.EINTR:  # EINTR: a signal, whose handler runs here
                raise_for(rc, self.name)
            if self.closed:  # by another thread
                raise closed_error("segment", self.name)


class _QueueScratch:
    """A take's landing buffer and its lengths, pooled like _Scratch."""

    __slots__ = ("buf", "fbuf", "size", "lens", "nlens", "out")

    def __init__(self, size: int, nlens: int = 0, clear: bool = True) -> None:
        self.size = size
        # A one-off landing buffer is written before it is read: no need to
        # zero a megabyte first.
        self.buf = (ffi.new if clear else _new_raw)("unsigned char[]", size)
        self.fbuf = ffi.buffer(self.buf)
        self.nlens = nlens or _TAKE_MAX
        self.lens = ffi.new("size_t[]", self.nlens)
        self.out = ffi.new("size_t *")


_new_raw = ffi.new_allocator(should_clear_after_alloc=False)

# One take lands at most this many bytes / messages in the pooled buffer (a
# longer first message gets a buffer of its own).
_TAKE_BYTES = 1 << 16
_TAKE_MAX = 1024


class QueueHandle:
    """An open fastshm queue: the C ``fshm_queue`` and its mapping."""

    __slots__ = ("name", "_q", "_owner", "capacity", "max_message", "size", "created",
                 "readonly", "_pool", "_take_bytes", "closed")

    def __init__(
        self, name: str, how: int, capacity: int, mode: int, any_owner: bool
    ) -> None:
        q = ffi.new("fshm_queue *")
        m = ffi.new("fshm_map *")
        cname, chow = name.encode("utf-8"), _how(how, any_owner)
        rc = lib.fshm_queue_open(q, m, cname, chow, capacity, 0, mode)
        while rc == _EINTR:  # a signal came while waiting for its creator; its handler ran
            rc = lib.fshm_queue_open(q, m, cname, chow, capacity, 0, mode)
        if rc:
            _raise_open(rc, m, name, "queue", chow)
        size = int(m.size)
        base = m.base
        # Unmapped when this handle (and so any call in flight on it) is gone.
        self._owner = ffi.gc(ffi.cast("unsigned char *", base),
                             lambda p: lib.fshm_unmap(p, size), size=size)
        if q.flags & lib.FSHM_QUEUE_PYLOCK:
            raise protocol_error(name, "python")
        self.name = name
        self._q = q
        self.size = size
        self.created = bool(m.created)
        self.readonly = bool(m.readonly)
        self.capacity = int(q.capacity)
        self.max_message = int(lib.fshm_queue_max_message(q.capacity))
        self._take_bytes = min(self.capacity, _TAKE_BYTES)
        self._pool: "list[_QueueScratch]" = []
        self.closed = False  # set by Queue.close(): blocked calls end

    def _call(self, fn: Any, room: int, timeout: Optional[float], *args: Any) -> int:
        """fn(*args, timeout_ns) in slices of at most _QUEUE_SLICE_NS, so
        signal handlers run between them; the last slice never sleeps past
        the deadline.  The first slice is fn's own wait, which spins before
        it sleeps; later ones sleep in fshm_queue_wait (for ``room`` bytes
        of records, or 0: a message), without spinning again, before fn
        tries once more.  Returns fn's code (EFULL / ENOMSG once out of
        time); ValueError when the queue was closed meanwhile."""
        # fn is called from C (_from_c) and nothing but comparisons follow
        # a success on the way back to the caller: CPython 3.11 and later
        # run no signal handler there, so a put that raises
        # KeyboardInterrupt has put nothing (as through the C-API binding).
        if timeout == 0:  # no wait for room or a message; a short one for the lock
            for rc in _from_c(fn, *args, 0):
                return rc  # type: ignore[no-any-return]
        if timeout is None:
            deadline = None
            slice_ns = _QUEUE_SLICE_NS
        else:
            deadline = time.monotonic() + timeout
            slice_ns = self._slice(deadline)
        while True:
            for rc in _from_c(fn, *args, slice_ns):  # noqa: B007 -- used below the loop
                break
            # EBUSY: another process held the lock through the slice.
            if rc == EFULL or rc == ENOMSG or rc == EBUSY:
                if slice_ns == 0:
                    return rc  # type: ignore[no-any-return]
            elif rc != _EINTR:  # EINTR: a signal, whose handler runs here
                return rc  # type: ignore[no-any-return]
            while True:
                if self.closed:  # by another thread: nothing was put or taken
                    raise closed_error("queue", self.name)
                slice_ns = self._slice(deadline)
                if slice_ns == 0:
                    break  # out of time: fn's last try, without a wait
                woke = lib.fshm_queue_wait(self._q, room, slice_ns)
                if woke == 0:
                    slice_ns = self._slice(deadline)
                    break
                if woke != ETIMEOUT and woke != _EINTR:
                    return woke  # type: ignore[no-any-return]

    @staticmethod
    def _slice(deadline: Optional[float]) -> int:
        if deadline is None:
            return _QUEUE_SLICE_NS
        left = deadline - time.monotonic()
        return 0 if left <= 0 else min(_QUEUE_SLICE_NS, int(left * 1e9))

    def _fail(self, rc: int) -> None:
        if rc == EBUSY:  # a get's: a put's says Full
            raise lock_held_error(self.name, self.lock_owner(), False)
        if self.readonly and rc == errno.EACCES:
            raise read_only_error(self.name, "queue")
        raise_for(rc, self.name, "ring" if rc == EFORMAT else "", "queue")

    def put_many(self, msgs: "list[Any]", timeout: Optional[float]) -> bool:
        if len(msgs) == 1:
            data = msgs[0]
            src = data if type(data) is bytes else ffi.from_buffer(data)
            n = len(data)
            rc = self._call(lib.fshm_queue_put, _QREC + ((n + 7) & ~7), timeout, self._q, src, n)
        else:
            arr = ffi.new("fshm_msg[]", len(msgs))
            keep = []
            for i, data in enumerate(msgs):
                p = ffi.from_buffer(data)
                keep.append(p)
                arr[i].data = p
                arr[i].len = len(data)
            room = sum(C.record_size(len(m)) for m in msgs)
            rc = self._call(lib.fshm_queue_put_many, room, timeout, self._q, arr, len(msgs))
            del keep
        if rc == 0:
            return True
        if rc == EFULL:
            return False
        if rc == EBUSY:
            raise lock_held_error(self.name, self.lock_owner(), True)
        if rc == ETOOBIG:
            total = sum(C.record_size(len(m)) for m in msgs)
            raise batch_too_big(total, self.name, self.capacity)
        self._fail(rc)
        return False  # not reached

    def take(self, max: int, timeout: Optional[float]) -> "list[bytes]":
        """Up to ``max`` messages in one lock round, waiting up to
        ``timeout`` for the first.  They land in a pooled buffer, or, when
        more is queued than it holds, in one sized to what is queued; a
        first message longer than the buffer gets one of its own."""
        pooled = max == 1  # one message: the pooled buffer, or one of its own
        if not pooled:
            used = int(lib.fshm_queue_used(self._q))
            pooled = used <= self._take_bytes and (max <= _TAKE_MAX or used // 8 <= _TAKE_MAX)
        if pooled:
            try:
                sc = self._pool.pop()
            except IndexError:
                sc = _QueueScratch(self._take_bytes)
        else:
            # Every record takes at least 8 bytes: no more than used // 8 of them.
            sc = _QueueScratch(used, min(max, used // 8), clear=False)
        try:
            want = min(max, sc.nlens)
            while True:
                rc = self._call(lib.fshm_queue_get_packed, 0, timeout, self._q, sc.buf,
                                sc.size, sc.lens, want, sc.out)
                if rc != ESMALL:
                    break
                big = _QueueScratch(int(sc.lens[0]), 1, clear=False)
                rc = lib.fshm_queue_get_packed(self._q, big.buf, big.size, sc.lens, 1,
                                               sc.out, 0)
                if rc == 0:
                    return [big.fbuf[0 : sc.lens[0]]]
                if rc != ENOMSG and rc != ESMALL:
                    break
                # Another consumer took it, or a longer one got to the front:
                # again, waiting as asked.
            if rc == ENOMSG:
                return []
            if rc:
                self._fail(rc)  # EBUSY included
            out = []
            fbuf, lens = sc.fbuf, sc.lens
            pos = 0
            for i in range(sc.out[0]):
                n = lens[i]
                out.append(fbuf[pos : pos + n])
                pos += n
            return out
        finally:
            if pooled:
                self._pool.append(sc)

    def take_into(self, dst: memoryview, timeout: Optional[float]) -> int:
        out = ffi.new("size_t *")
        cap = len(dst)
        rc = self._call(lib.fshm_queue_get, 0, timeout, self._q, ffi.from_buffer(dst), cap, out)
        if rc == 0:
            return int(out[0])
        if rc == ENOMSG:
            return -1
        if rc == ESMALL:
            raise next_too_small(cap, int(out[0]))
        self._fail(rc)
        return -1  # not reached

    def count(self) -> int:
        return int(lib.fshm_queue_count(self._q))

    def used(self) -> int:
        return int(lib.fshm_queue_used(self._q))

    def lock_owner(self) -> int:
        return int(lib.fshm_queue_lock_owner(self._q))

    def break_lock(self, owner: int) -> bool:
        return lib.fshm_queue_break_lock(self._q, owner) == 0  # type: ignore[no-any-return]
