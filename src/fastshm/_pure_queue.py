"""The python backend's queue: ``QueueHandle``, the layout and behaviour of
csrc/queue.c over ``mmap``, on the mapping, locks and waits of ``_pure``."""

from __future__ import annotations

import errno
import mmap
import os
import sys
import time
from typing import Any, Optional, Tuple

from . import _common as C
from ._errors import (
    EFORMAT,
    batch_too_big,
    lock_held_error,
    message_too_big,
    next_too_small,
    protocol_error,
    raise_for,
    read_only_error,
)
from ._pure import (
    _FUTEX_WAIT_OK,
    _HAS_FUTEX,
    _INLINE_RELEASE,
    _LOCK_BUSY,
    _LOCK_EX_NB,
    _LOCK_SL,
    _LOCK_UN,
    _NOW,
    _WAIT_SLEEP_MAX_S,
    _WAIT_SPIN_S,
    _ZERO8,
    _check_header,
    _consume,
    _flock,
    _flock_wait,
    _futex_wait,
    _futex_waker,
    _Mapped,
    _monotonic,
    _on_stack,
    _open_object,
    _p32,
    _p64,
    _pcall,
    _publish,
    _put,
    _ThreadState,
    _u32,
    _u64,
    _uncount,
    fcntl,
    owner_dead,
)

# ---- the queue ----

_futex_waits = _HAS_FUTEX
#
# The layout and the commit protocol of csrc/queue.c (docs/FORMAT.md,
# "Queues").  A queue this backend makes has flags = PYLOCK: its producers
# and consumers exclude each other with the exclusive flock alone (every
# thread on a descriptor of its own, as the segment's writers), and inside
# it write their id into the lock word while they work, for `fastshm info`
# and for the next holder: a non-zero word found under the flock was left by
# a holder that died (the kernel dropped its flock).  Native code refuses
# such a queue, and this backend refuses a native one (flags = 0): a
# compare-and-swap lock and a flock do not exclude each other.
#
# A put writes its records beyond tail, where nobody looks, then publishes
# them with one store of tail; a take copies the front records out, then
# drops them with one store of head.  Everything before that store can be
# interrupted (a KeyboardInterrupt, SIGKILL) without changing the queue; the
# count word beside it is fixed by whoever next finds the dirty mark.
#
# After the commit.  From the head or tail store until put or get has
# returned to its caller, nothing runs a signal handler (CPython 3.11 and
# later): the statements up to the release make no call, the release's
# LOCK_UN and the wake of sleepers after it are called from C (_from_c), and
# the returns through put_many or _take to the caller are no such point
# either.  A signal that lands after the commit raises its exception in the
# caller, after the call returned: an interrupted put has put nothing (a
# caller that retries it sends nothing twice), and the messages of a take
# that committed reach its caller.  A signal that lands before the commit
# raises inside, and the queue is as it was.

_Q_RING = C.HEADER_SIZE
_Q_REC = C.QUEUE_RECORD_HEADER
_M64 = C.U64_MASK
_Q_HEAD_SL = slice(C.Q_HEAD, C.Q_HEAD + 8)
_Q_TAIL_SL = slice(C.Q_TAIL, C.Q_TAIL + 8)
_Q_COUNT_SL = slice(C.Q_COUNT, C.Q_COUNT + 8)
_Q_DIRTY_SL = slice(C.Q_DIRTY, C.Q_DIRTY + 4)
_Q_WAITERS_SL = slice(C.Q_WAITERS, C.Q_WAITERS + 4)
_Q_NOTIFY_SL = slice(C.Q_NOTIFY, C.Q_NOTIFY + 4)
_ZERO4 = bytes(4)
_ONE4 = _p32(1)
# The longest a queue wait sleeps in the kernel at a time, as the C core's
# (a process killed between its commit and its wake-up leaves no wake-up
# behind).  A signal ends the sleep at once (EINTR: Python installs its
# handlers without SA_RESTART), so Ctrl-C does not wait for the slice; the
# fewer slices, the less an idle waiter costs (each is a context switch and
# a few Python lines, about 0.2 ms of CPU from a cold cache).
_Q_SLICE_S = 0.1
# Zero padding after a payload of n bytes, by n % 8.
_PADS = tuple(bytes(-i & 7) for i in range(8))
_HEADTAIL = C.U64.unpack_from  # one word at a time: each is stored whole
_QH, _QT, _QC, _QN = C.Q_HEAD, C.Q_TAIL, C.Q_COUNT, C.Q_NOTIFY

# What QueueHandle._locked does under the lock.
_PUT, _TAKE, _TAKE_INTO = 0, 1, 2


def _queue_attach(mm: mmap.mmap, size: int) -> int:
    """The queue's capacity, after the checks of fshm_queue_attach."""
    capacity = _check_header(mm, size, C.QUEUE_MAGIC, C.MAGIC, C.QUEUE_VERSION,
                             C.queue_size_for)
    if capacity < 0:
        return capacity
    if capacity & 7 or _u32(mm, C.Q_FLAGS)[0] & ~C.QUEUE_PYLOCK:
        return EFORMAT
    return capacity


def _reentrant_queue(name: str) -> RuntimeError:
    return RuntimeError(
        f"put or get called from a signal handler while this thread is inside a put "
        f"or get on the same queue {name!r}; the python backend cannot go on there "
        "without waiting for its own lock. Put or get from the main code (e.g. let "
        "the handler set a flag), or use the native backend"
    )


class QueueHandle(_Mapped):
    """An open fastshm queue over an mmap (the python backend's lock: flags
    PYLOCK)."""

    __slots__ = ("capacity", "max_message", "_waker", "_owed")
    _KIND = "queue"

    def __init__(
        self, name: str, how: int, capacity: int, mode: int, any_owner: bool
    ) -> None:
        if fcntl is None:
            # Without flock nothing would keep two processes' puts apart.
            raise OSError(
                errno.ENOSYS,
                "the python backend's queue locks with flock, which this platform "
                "lacks: use backend='native'",
                name,
            )
        capacity = C.as_int(capacity, "capacity")
        mode = C.as_int(mode, "mode")
        need = 0
        if how != C.ATTACH:
            need = C.queue_size_for(capacity)
            if need == 0 or need > sys.maxsize:
                raise ValueError(
                    f"a queue's size must be between {C.QUEUE_MIN_CAPACITY} bytes and "
                    f"what this platform maps, got {capacity}"
                )
            capacity = need - C.HEADER_SIZE  # rounded up to 8

        def init(mm: mmap.mmap, fd: int, size: int) -> None:
            def fields() -> None:
                C.HEAD.pack_into(mm, 0, 0, C.QUEUE_VERSION, C.HEADER_SIZE, capacity)
                _put(mm, C.Q_FLAGS, C.U32, C.QUEUE_PYLOCK)

            _publish(mm, fd, size, fields, C.QUEUE_MAGIC)

        mm, size, created, fd, read_only, dup, code = _open_object(
            name, how, need, mode, any_owner, init, _queue_attach, "Segment"
        )
        if not created:
            # Both read once: later scribbles on the header cannot move the
            # ring's bounds or change the lock protocol under this handle.
            capacity = code
            if not _u32(mm, C.Q_FLAGS)[0] & C.QUEUE_PYLOCK:
                mm.close()
                if fd >= 0:
                    os.close(fd)
                raise protocol_error(name, "native")
        self._setup(name, mm, fd, dup, size, created, read_only)
        self.capacity = capacity
        self.max_message = capacity - _Q_REC
        self._waker = _futex_waker(self._anchor, C.Q_NOTIFY)
        # Sleepers this handle could not uncount (the flock stayed held past
        # the call's deadline): its next count under the flock takes them off.
        self._owed = 0

    # -- under the lock --

    def _positions(self) -> Tuple[int, int]:
        """head and tail, checked (the lock held)."""
        mm = self._mm
        head: int = _HEADTAIL(mm, C.Q_HEAD)[0]
        tail: int = _HEADTAIL(mm, C.Q_TAIL)[0]
        if (head | tail) & 7 or (tail - head) & _M64 > self.capacity:
            raise_for(EFORMAT, self.name, "ring", "queue")
        return head, tail

    def _bad_record(self) -> None:
        raise_for(EFORMAT, self.name, "ring", "queue")

    def _recount(self) -> None:
        """After a holder died (or was interrupted) between its dirty marks:
        head and tail are each whole, the count may be stale."""
        mm = self._mm
        cap = self.capacity
        head, tail = self._positions()
        pos, n = head, 0
        while pos != tail:
            length: int = _u64(mm, _Q_RING + pos % cap)[0]
            rec = _Q_REC + ((length + 7) & ~7)
            if length > cap - _Q_REC or rec > (tail - pos) & _M64:
                self._bad_record()
            pos = (pos + rec) & _M64
            n += 1
        mm[_Q_COUNT_SL] = _p64(n)
        mm[_Q_DIRTY_SL] = _ZERO4

    def _locked(self, what: int, arg: Any, arg2: Any, need: int,
                deadline: Optional[float]) -> Any:
        """One attempt under the lock: _PUT (arg: messages, arg2: their
        lengths, need: the ring bytes of their records) -> bool; _TAKE (arg:
        at most that many) -> list;
        _TAKE_INTO (arg: the buffer) -> length, or -1 when empty.  None,
        nothing done, when another process held the lock until ``deadline``
        (see "waiting for a flock")."""
        try:
            t: _ThreadState = self._tls.t
        except AttributeError:
            t = self._thread_state()
        busy = t.busy
        key = self._key
        inner = busy.get(key)
        if inner is not None and _on_stack(inner):
            raise _reentrant_queue(self.name)
        mm = self._mm
        fd = t.fd
        ops = rel = None
        if not _INLINE_RELEASE:
            ops = [t.noop, t.unflock]
            rel = map(_pcall, ops)
        wake = False
        # From here until the release, see "what a signal may interrupt" (_pure_lock).
        busy[key] = sys._getframe()
        try:
            # (A queue is never opened without flock: fd is a descriptor.)
            try:
                _flock(fd, _LOCK_EX_NB)
            except BlockingIOError:
                if not _flock_wait(self, fd, _LOCK_EX_NB, deadline):
                    return None
            # The flock is the lock: a word found here that is not 0 (nor
            # ours, left by an old CPython's interrupted release) belongs to
            # a holder that died; the dirty mark says whether to recount.
            t.claimed = True
            if ops is not None:
                ops[0] = t.clear
            mm[_LOCK_SL] = t.ident
            if mm[_Q_DIRTY_SL] != _ZERO4:
                self._recount()
            cap = self.capacity
            mv = self._mv
            head: int = _HEADTAIL(mm, _QH)[0]
            tail: int = _HEADTAIL(mm, _QT)[0]
            if (head | tail) & 7 or (tail - head) & _M64 > cap:
                self._positions()  # raises
            count: int = _u64(mm, _QC)[0]
            # notify + 1, ready before the commit (the flock makes it exact).
            bump = _p32((_u32(mm, _QN)[0] + 1) & 0xFFFFFFFF)
            done = False
            if what == _PUT:
                lens: "list[int]" = arg2
                if cap - ((tail - head) & _M64) < need:
                    out: Any = False
                else:
                    cnt = _p64((count + len(lens)) & _M64)
                    mm[_Q_DIRTY_SL] = _ONE4
                    # The records go beyond tail, where nobody looks until
                    # tail moves.
                    pos = tail
                    for data, n in zip(arg, lens):
                        at = _Q_RING + pos % cap
                        mm[at : at + 8] = _p64(n)
                        at = pos + _Q_REC
                        off = at % cap
                        first = cap - off
                        if n <= first:
                            mv[_Q_RING + off : _Q_RING + off + n] = data
                        else:  # it wraps around the ring's end
                            src = memoryview(data)
                            mv[_Q_RING + off : _Q_RING + cap] = src[:first]
                            mv[_Q_RING : _Q_RING + n - first] = src[first:]
                        if n & 7:
                            # Never across the ring's end: it stops at a multiple of 8.
                            off = (at + n) % cap
                            mm[_Q_RING + off : _Q_RING + off + 8 - (n & 7)] = _PADS[n & 7]
                        pos = (pos + _Q_REC + ((n + 7) & ~7)) & _M64
                    end = _p64(pos)
                    # The commit, and no call from here to the release.
                    mm[_Q_TAIL_SL] = end
                    mm[_Q_COUNT_SL] = cnt
                    mm[_Q_DIRTY_SL] = _ZERO4
                    mm[_Q_NOTIFY_SL] = bump
                    out = done = True
            else:
                pos = head
                limit: int = 1 if what == _TAKE_INTO else arg
                got: "list[bytes]" = []
                length = -1
                while len(got) < limit and pos != tail:
                    at = _Q_RING + pos % cap
                    length = _u64(mm, at)[0]
                    rec = _Q_REC + ((length + 7) & ~7)
                    if length > cap - _Q_REC or rec > (tail - pos) & _M64:
                        if got:
                            break  # the good ones first; the next take reports it
                        self._bad_record()
                    off = (pos + _Q_REC) % cap
                    first = cap - off
                    if what == _TAKE_INTO:
                        dst: memoryview = arg
                        if length > dst.nbytes:
                            raise next_too_small(dst.nbytes, length)
                        if length <= first:
                            dst[:length] = mv[_Q_RING + off : _Q_RING + off + length]
                        else:
                            dst[:first] = mv[_Q_RING + off : _Q_RING + cap]
                            dst[first:length] = mv[_Q_RING : _Q_RING + length - first]
                        got.append(b"")
                    elif length <= first:
                        got.append(mm[_Q_RING + off : _Q_RING + off + length])
                    else:
                        got.append(mm[_Q_RING + off : _Q_RING + cap]
                                   + mm[_Q_RING : _Q_RING + length - first])
                    pos = (pos + rec) & _M64
                if what == _TAKE_INTO:
                    out = length if got else -1
                else:
                    out = got
                if got:
                    k = len(got)
                    cnt = _p64(count - k if count >= k else 0)
                    start = _p64(pos)
                    mm[_Q_DIRTY_SL] = _ONE4
                    # The commit, and no call from here to the release.
                    mm[_Q_HEAD_SL] = start
                    mm[_Q_COUNT_SL] = cnt
                    mm[_Q_DIRTY_SL] = _ZERO4
                    mm[_Q_NOTIFY_SL] = bump
                    done = True
            # Sleepers count themselves in waiters under the flock, so this
            # read, under it too, after the notify store, sees every sleeper
            # that could have missed the commit (see "waiting" below).
            wake = done and mm[_Q_WAITERS_SL] != _ZERO4
            if rel is not None:
                _consume(rel)  # released here; the finally's call finds nothing left
        finally:
            if rel is None:
                # No point where a signal handler runs from here back to the
                # caller (see "after the commit" above).
                if t.claimed:
                    mm[_LOCK_SL] = _ZERO8
                    t.claimed = False
                for _ in t.release:  # LOCK_UN
                    break
            else:
                _consume(rel)
            busy[key] = None
        if wake:
            # After the release, so the woken take the flock at once.  An
            # interrupt before it loses the wake-up: the sleepers find the
            # change at the end of their slice.
            for _ in self._waker:
                break
        return out

    # -- waiting --
    #
    # A blocked put or take spins briefly, then sleeps on the notify futex
    # word until a commit changes it (Linux; elsewhere, without a futex call, and
    # for a handle that cannot write the header, it polls).  Only processes
    # of this backend use a PYLOCK queue, so the sleeper count `waiters`
    # changes only under the flock, and a commit reads it under the same
    # flock as it bumps notify: a sleeper registered before the commit's
    # critical section is counted and woken (or finds notify moved and does
    # not sleep at all); one that registers after it sees the change in its
    # re-check under the flock and does not sleep.
    #
    # The count is kept exact against interrupts where it can be: the
    # increment and the record that it was made are two stores with no call
    # between (where no signal handler runs on CPython 3.11 and later), and
    # a finally undoes it.  What can leak one count: a process killed while
    # registered, a second interrupt during the decrement's flock, or, on
    # older CPythons, an interrupt between the two stores.  A leaked count
    # costs only a futex wake system call in every commit (with no sleeper
    # to wake), never a missed wake-up.

    def _ready(self, room: int) -> bool:
        """A message is queued (room 0), or there is room for ``room`` bytes
        of records, or the header looks wrong (the locked attempt reports
        it).  Holding the lock or not: head and tail are each read whole."""
        mm = self._mm
        cap = self.capacity
        head: int = _HEADTAIL(mm, _QH)[0]
        tail: int = _HEADTAIL(mm, _QT)[0]
        used = (tail - head) & _M64
        if (head | tail) & 7 or used > cap:
            return True
        return (used != 0) if room == 0 else (cap - used >= room)

    def _enlist(self, delta: int, room: int, mark: "list[bool]",
                deadline: Optional[float]) -> int:
        """Under the flock: with ``delta`` 1, unless ``_ready(room)``, count
        this thread in ``waiters`` and return the notify word it then holds
        (-1 when ready: nothing counted); with -1, uncount it.  ``mark[0]``
        says whether this thread is counted, stored right beside the count.
        _LOCK_BUSY when another process held the flock until ``deadline``:
        nothing counted, or an uncount owed (``_owed``) to the handle's next
        count under the flock."""
        try:
            t: _ThreadState = self._tls.t
        except AttributeError:
            t = self._thread_state()
        busy = t.busy
        key = self._key
        inner = busy.get(key)
        if inner is not None and _on_stack(inner):
            raise _reentrant_queue(self.name)
        mm = self._mm
        fd = t.fd
        rel = None
        if not _INLINE_RELEASE:
            rel = map(_pcall, [t.noop, t.unflock])
        out = -1
        busy[key] = sys._getframe()
        try:
            if fd >= 0:
                try:
                    _flock(fd, _LOCK_EX_NB)
                except BlockingIOError:
                    if not _flock_wait(self, fd, _LOCK_EX_NB, deadline):
                        if delta < 0:
                            self._owed += 1
                            mark[0] = False
                        return _LOCK_BUSY
            n: int = _u32(mm, C.Q_WAITERS)[0]
            owed = self._owed
            if owed:
                self._owed = 0
                n = n - owed if n > owed else 0
                mm[_Q_WAITERS_SL] = _p32(n)
            if delta > 0:
                if not self._ready(room):
                    more = _p32((n + 1) & 0xFFFFFFFF)
                    out = _u32(mm, C.Q_NOTIFY)[0]
                    # The count and its record: no call between the two.
                    mm[_Q_WAITERS_SL] = more
                    mark[0] = True
            else:
                fewer = _p32(n - 1) if n else _ZERO4  # never below 0 (a scribbled word)
                mm[_Q_WAITERS_SL] = fewer
                mark[0] = False
            if rel is not None:
                _consume(rel)  # released here; the finally's call finds nothing left
        finally:
            if rel is None:
                if fd >= 0:
                    _flock(fd, _LOCK_UN)
            else:
                _consume(rel)
            busy[key] = None
        return out

    def _sleep(self, room: int, deadline: Optional[float]) -> bool:
        """Counted in ``waiters``, sleep on notify in slices of at most
        ``_Q_SLICE_S`` (signal handlers run between them) until notify moves
        or ``_ready(room)`` (a slice's end re-checks: a holder killed between
        its commit and its wake-up leaves none); False at the deadline."""
        global _futex_waits
        mark = [False]
        try:
            seen = self._enlist(1, room, mark, deadline)
            if seen == _LOCK_BUSY:
                return False  # only ever at the deadline
            if seen < 0:
                return True
            mm = self._mm
            anchor = self._anchor
            while True:
                self._check_open()
                left = _Q_SLICE_S
                if deadline is not None:
                    left = min(left, deadline - time.monotonic())
                    if left <= 0:
                        return False
                err = _futex_wait(anchor, C.Q_NOTIFY, seen, left)
                if err not in _FUTEX_WAIT_OK:
                    _futex_waits = False  # the caller's next wait polls
                    return True
                if _u32(mm, C.Q_NOTIFY)[0] != seen or self._ready(room):
                    return True
        finally:
            if mark[0]:
                # Without waiting for a holder that does not run: this may be
                # a deadline's or an interrupt's way out (whose handler may
                # raise inside it: _uncount tries again).
                _uncount(lambda: self._enlist(-1, room, mark, _NOW), mark)

    def _wait(self, room: int, deadline: Optional[float]) -> bool:
        """Until ``_ready(room)``: True; False at the deadline.  It may end
        early (on any commit): the caller retries and waits again."""
        if self._anchor is None or not _futex_waits:
            return self._poll(room, deadline)
        start = time.monotonic()
        while True:
            if self._ready(room):
                return True
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            if now - start >= _WAIT_SPIN_S:
                return self._sleep(room, deadline)

    def _poll(self, room: int, deadline: Optional[float]) -> bool:
        """``_wait`` without the futex: until there is a message (room 0) or
        room for ``room`` bytes of records, or the header looks wrong (the
        locked attempt reports it): True; False at the deadline.  It writes
        nothing shared and holds nothing, so a KeyboardInterrupt here
        changes nothing."""
        mm = self._mm
        cap = self.capacity
        start = time.monotonic()
        pause = 0.0
        while True:
            head: int = _HEADTAIL(mm, C.Q_HEAD)[0]
            tail: int = _HEADTAIL(mm, C.Q_TAIL)[0]
            used = (tail - head) & _M64
            if (head | tail) & 7 or used > cap:
                return True
            if (used != 0) if room == 0 else (cap - used >= room):
                return True
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            if pause == 0.0:
                if now - start < _WAIT_SPIN_S:
                    continue
                pause = 50e-6
            else:
                pause = min(pause * 2, _WAIT_SLEEP_MAX_S)
            self._check_open()
            time.sleep(pause if deadline is None else min(pause, deadline - now))

    # -- the operations --

    # The timeouts of put_many, take and take_into: seconds (finite), 0 for a
    # call that must not wait, None for no timeout.

    def put_many(self, msgs: "list[Any]", timeout: Optional[float]) -> bool:
        if len(msgs) == 1:  # put(): the common case, without the loops
            biggest = len(msgs[0])
            lens = [biggest]
            need = _Q_REC + ((biggest + 7) & ~7)
        else:
            lens = [len(m) for m in msgs]
            if not lens:
                return True
            biggest = max(lens)
            need = 0
            for n in lens:
                need += _Q_REC + ((n + 7) & ~7)
        if biggest > self.max_message:
            raise message_too_big(biggest, self.name, self.max_message)
        if need > self.capacity:
            raise batch_too_big(need, self.name, self.capacity)
        if self.readonly:
            raise read_only_error(self.name, "queue")
        # Taken as the call starts: it bounds the wait for the lock too.
        deadline = (None if timeout is None
                    else _monotonic() + timeout if timeout else _NOW)
        while True:
            done = self._locked(_PUT, msgs, lens, need, deadline)
            if done:
                return True
            if done is None:
                raise lock_held_error(self.name, self.lock_owner(), True)
            if deadline == _NOW or not self._wait(need, deadline):
                return False

    def _take(self, what: int, arg: Any, timeout: Optional[float]) -> Any:
        if self.readonly:
            raise read_only_error(self.name, "queue")
        deadline = (None if timeout is None
                    else _monotonic() + timeout if timeout else _NOW)
        while True:
            out = self._locked(what, arg, None, 0, deadline)
            if out is None:
                raise lock_held_error(self.name, self.lock_owner(), False)
            if (out >= 0) if what == _TAKE_INTO else out:  # a length, or messages
                return out
            if deadline == _NOW or not self._wait(0, deadline):
                return out

    def take(self, max: Optional[int], timeout: Optional[float]) -> "list[bytes]":
        limit = sys.maxsize if max is None else max
        if limit < 1:
            raise ValueError(f"max_messages must be at least 1, got {limit}")
        return self._take(_TAKE, limit, timeout)  # type: ignore[no-any-return]

    def take_into(self, dst: memoryview, timeout: Optional[float]) -> int:
        return self._take(_TAKE_INTO, dst, timeout)  # type: ignore[no-any-return]

    # -- snapshots, without the lock --

    def count(self) -> int:
        return C.queue_count(self._mm, self.capacity, owner_dead)

    def used(self) -> int:
        mm = self._mm
        head: int = _HEADTAIL(mm, C.Q_HEAD)[0]
        tail: int = _HEADTAIL(mm, C.Q_TAIL)[0]
        # Two loads, not one moment: the difference can exceed the ring.
        return min((tail - head) & _M64, self.capacity)

    def lock_owner(self) -> int:
        return _u64(self._mm, C.H_LOCK)[0]  # type: ignore[no-any-return]

    def break_lock(self, owner: int) -> bool:
        if self.readonly:
            raise read_only_error(self.name, "queue")
        # The flock is what excludes; the word only names the holder.
        if owner == 0 or self.lock_owner() != owner:
            return False
        _put(self._mm, C.H_LOCK, C.U64, 0)
        return True
