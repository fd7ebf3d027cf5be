"""The python backend's segment: ``SegmentHandle``, the layout and behaviour
of csrc/slot.c over ``mmap``, on the mapping, locks and waits of ``_pure``."""

from __future__ import annotations

import mmap
import sys
import time
from typing import Any, Optional, Tuple

from . import _common as C
from ._errors import (
    EFORMAT,
    closed_error,
    raise_for,
    read_only_error,
    too_big,
    too_small,
)
from ._pure import (
    _H_NEXT,
    _H_SEQ,
    _HDR,
    _HELD,
    _INLINE_RELEASE,
    _LOCK_AND_NEXT,
    _LOCK_EX_NB,
    _LOCK_PAUSE_MAX_S,
    _LOCK_SH,
    _LOCK_SH_NB,
    _LOCK_SL,
    _LOCK_UN,
    _LOCKFREE_TRIES,
    _NEXT_SL,
    _NOTIFY_SL,
    _READ_LOCK_MAX_S,
    _SEQ_SL,
    _SLOT_HDR,
    _STRONG_ORDER,
    _TRIES,
    _TURN_MAX_S,
    _WAIT_SLEEP_MAX_S,
    _WAIT_SPIN_S,
    _ZERO8,
    _attach,
    _consume,
    _flock,
    _flock_wait,
    _futex_wake,
    _initialise,
    _Mapped,
    _monotonic,
    _on_stack,
    _open_object,
    _p32,
    _p64,
    _pcall,
    _put,
    _reentrant,
    _slot_words,
    _ThreadState,
    _u32,
    _u64,
    fcntl,
    owner_dead,
)


class SegmentHandle(_Mapped):
    """An open fastshm segment over an mmap."""

    __slots__ = ("capacity", "_stride")
    _KIND = "segment"

    def __init__(
        self, name: str, how: int, capacity: int, mode: int, any_owner: bool
    ) -> None:
        capacity = C.as_int(capacity, "capacity")
        mode = C.as_int(mode, "mode")
        need = C.seg_size_for(capacity) if how != C.ATTACH else 0

        def init(mm: mmap.mmap, fd: int, size: int) -> None:
            _initialise(mm, fd, size, capacity)

        mm, size, created, fd, read_only, dup, code = _open_object(
            name, how, need, mode, any_owner, init, _attach, "Queue"
        )
        self._setup(name, mm, fd, dup, size, created, read_only)
        self.capacity = code if not created else capacity
        self._stride = C.stride_for(self.capacity)

    def _claim(self, t: _ThreadState, mm: mmap.mmap, ops: Any,
               deadline: Optional[float] = None, named: bool = False) -> bool:
        """Wait for the lock word, then write this process's id into it (the
        caller holds the flock): True; False, nothing claimed, when another
        still held it at ``deadline`` (None: no deadline).  A native writer
        holds the word with a CAS; its owner is asked about every 50th round
        (system calls), and every round once the wait has grown long.

        After one failed look this process names itself in lock_next, as a
        native waiter that has slept does: native writers then leave the free
        lock to it, so native writers storing back to back cannot starve it
        (it polls, and would otherwise have to land in the instant between
        one native store and the next); ``named``: it did so already.  It
        looks every 20 us while the writers move (the lock word or the
        notify word changes), and less and less often, up to every 50 ms,
        while they do not: the holder is then stuck (stopped, or paused in a
        debugger), and a waiter behind it costs little CPU.  A signal ends
        the sleep it lands in."""
        me = t.me
        rounds = 0
        turn = named and _u64(mm, _H_NEXT)[0] == me
        pause = 20e-6
        seen = (0, 0)
        try:
            while True:
                owner = _u64(mm, C.H_LOCK)[0]
                # Our own id under our flock: left by a store of this process
                # that was interrupted where an old CPython could not clear it.
                if owner == 0 or owner == me or (
                    (rounds % 50 == 0 or pause >= 1e-3) and owner_dead(owner) == 1
                ):
                    break
                if not turn and _u64(mm, _H_NEXT)[0] == 0:
                    # A plain store, not a compare-and-swap: losing a race
                    # with a native writer naming itself costs that writer
                    # its turn, never exclusion (the lock word decides that).
                    mm[_NEXT_SL] = t.ident
                    turn = True
                rounds += 1
                now = (owner, _u32(mm, C.H_NOTIFY)[0])
                if now != seen:
                    seen = now
                    pause = 20e-6
                else:
                    pause = min(pause * 2, _LOCK_PAUSE_MAX_S)
                if deadline is not None:
                    left = deadline - _monotonic()
                    if left <= 0:
                        return False
                    pause = min(pause, left)
                self._check_open()
                time.sleep(pause)
            t.claimed = True
            if ops is not None:
                ops[0] = t.clear
            mm[_LOCK_SL] = t.ident
        finally:
            # After the lock word is ours (cleared first, a native writer
            # could take the lock in between), or on the way out.
            if turn and _u64(mm, _H_NEXT)[0] == me:
                mm[_NEXT_SL] = _ZERO8
        return True

    def _leave_turn(self, mm: mmap.mmap, turn: int) -> None:
        """lock_next names another process, one waiting for the lock, which
        native writers leave the free lock to (docs/FORMAT.md, "Storing");
        so does this writer: it lets go of the flock and waits until that
        turn is taken (lock_next moves on), or is stale -- its process gone,
        or the lock free for _TURN_MAX_S without it taking it -- and then
        clears it.  Without this, a python writer storing back to back would
        take the flock again before a waiting reader ever got it."""
        free_since: Optional[float] = None
        pause = 20e-6
        while True:
            self._check_open()
            time.sleep(pause)
            if _u64(mm, _H_NEXT)[0] != turn:
                return
            now = _monotonic()
            if _u64(mm, C.H_LOCK)[0] != 0:
                free_since = None
            elif free_since is None:
                free_since = now
            if (free_since is not None and now - free_since >= _TURN_MAX_S) or (
                owner_dead(turn) == 1
            ):
                if _u64(mm, _H_NEXT)[0] == turn:
                    mm[_NEXT_SL] = _ZERO8
                return
            pause = min(pause * 2, 1e-3)

    # -- the operations --

    def store(self, data: C.BytesLike) -> int:
        n = len(data)
        if n > self.capacity:
            raise too_big(n, self.name, self.capacity)
        if self.readonly:
            raise read_only_error(self.name)
        try:
            t: _ThreadState = self._tls.t
        except AttributeError:
            t = self._thread_state()
        busy = t.busy
        key = self._key
        inner = busy.get(key)
        if inner is not None and _on_stack(inner):
            raise _reentrant(self.name, inner, "store")
        mm = self._mm
        fd = t.fd
        me = t.me
        ops = rel = None
        if not _INLINE_RELEASE:
            ops = [t.noop, t.unflock]
            rel = map(_pcall, ops)
        # From here until the release, see "what a signal may interrupt" (_pure_lock).
        busy[key] = sys._getframe()
        try:
            while True:
                if fd >= 0:
                    try:
                        _flock(fd, _LOCK_EX_NB)
                    except BlockingIOError:
                        _flock_wait(self, fd, _LOCK_EX_NB, None)  # see "waiting for a flock"
                owner, turn = _LOCK_AND_NEXT(mm, C.H_LOCK)
                if not turn or turn == me:
                    break
                # A lock word that will never be let go of (its holder died,
                # or it is this process's own, left by an interrupted store)
                # is taken whoever's turn it is, as a native writer does: the
                # turn's holder waits for that word too, and _leave_turn
                # would wait for it to be free for ever.
                if owner == me or (owner != 0 and owner_dead(owner) == 1):
                    break
                # Another process's turn: leave the lock to it (_leave_turn).
                if fd >= 0:
                    _flock(fd, _LOCK_UN)
                self._leave_turn(mm, turn)
            if owner == 0 or owner == me:  # as _claim's first look finds it
                t.claimed = True
                if ops is not None:
                    ops[0] = t.clear
                mm[_LOCK_SL] = t.ident
            else:
                self._claim(t, mm, ops)
            nxt: int = _u64(mm, C.H_SEQ)[0] + 1
            if nxt > C.SEQ_MAX:  # a corrupt counter: 2 * nxt would not fit its word
                raise_for(EFORMAT, self.name, "seq")
            off = C.HEADER_SIZE + (nxt & 1) * self._stride
            # Each shared word in one copy (a slice assignment is one memcpy).
            mm[off : off + 8] = _p64(2 * nxt - 1)
            mm[off + 8 : off + 16] = _p64(n)
            start = off + C.SLOT_HEADER_SIZE
            # Through the memoryview: PyPy's mmap slice assignment takes
            # bytes only, a memoryview slice takes any byte buffer.
            self._mv[start : start + n] = data
            mm[off : off + 8] = _p64(2 * nxt)
            mm[_SEQ_SL] = _p64(nxt)
            mm[_NOTIFY_SL] = _p32((_u32(mm, C.H_NOTIFY)[0] + 1) & 0xFFFFFFFF)
            if _u32(mm, C.H_WAITERS)[0]:
                _futex_wake(self._anchor, C.H_NOTIFY)
            if rel is not None:
                _consume(rel)  # released here; the finally's call finds nothing left
        finally:
            if rel is None:
                # No point where a signal handler runs until LOCK_UN is done.
                if t.claimed:
                    mm[_LOCK_SL] = _ZERO8
                    t.claimed = False
                if fd >= 0:
                    _flock(fd, _LOCK_UN)
            else:
                _consume(rel)
            busy[key] = None
        return nxt

    def _begin(self) -> Tuple[int, int, int, int]:
        """(payload offset, length, seq, slot word), as fshm_read_begin."""
        mm = self._mm
        while True:
            seq = _u64(mm, _H_SEQ)[0]
            if seq == 0:
                return _HDR + _SLOT_HDR, 0, 0, 0
            off = _HDR + (seq & 1) * self._stride
            token, length = _slot_words(mm, off)
            if token == 2 * seq and length <= self.capacity:
                return off + _SLOT_HDR, length, seq, token
            if _u64(mm, _H_SEQ)[0] == seq:
                raise_for(EFORMAT, self.name, "slot")
            time.sleep(0)

    def _end(self, offset: int, seq: int, token: int) -> bool:
        if seq == 0:
            return True
        now: int = _u64(self._mm, offset - C.SLOT_HEADER_SIZE)[0]
        return now == token

    def _read_once(self, what: int, dst: Any) -> Any:
        """One seqlock attempt: (result, seq), or None when writers got in
        the way.  what: 0 load, 1 load_into(dst), 2 view."""
        off, length, seq, token = self._begin()
        if what == 0:
            out: Any = self._mm[off : off + length]
        elif what == 1:
            if length > dst.nbytes:
                if not self._end(off, seq, token):
                    return None
                raise too_small(dst.nbytes, length)
            dst[:length] = self._mv[off : off + length]
            out = length
        else:
            out = None
        if not self._end(off, seq, token):
            return None
        if what == 2:
            out = self._mv[off : off + length].toreadonly()
        return out, seq

    def _read_locked(self, what: int, dst: Any, exclusive: bool) -> Any:
        """One attempt under the flock: shared (ordering on weakly ordered
        CPUs), or exclusive with the lock word too (no writer can get in the
        way, native ones included).  Exclusive, _HELD when a writer kept the
        lock for _READ_LOCK_MAX_S without a store: one that holds it that
        long is stuck (stopped, or paused in a debugger), and spoils no
        copy."""
        try:
            t: _ThreadState = self._tls.t
        except AttributeError:
            t = self._thread_state()
        busy = t.busy
        key = self._key
        inner = busy.get(key)
        if inner is not None and _on_stack(inner):
            # A signal handler reading while this thread holds the lock: the
            # interrupted writer cannot move, so a plain attempt is enough.
            return self._read_once(what, dst)
        mm = self._mm
        fd = t.fd
        ops = rel = None
        if not _INLINE_RELEASE:
            ops = [t.noop, t.unflock]
            rel = map(_pcall, ops)
        named = False
        busy[key] = sys._getframe()
        try:
            if fd >= 0:
                how = _LOCK_EX_NB if exclusive else _LOCK_SH_NB
                try:
                    _flock(fd, how)
                except BlockingIOError:
                    if not exclusive:
                        _flock_wait(self, fd, how, None)
                    else:
                        named = True

                        def take(end: float) -> bool:
                            # Its turn next: writers of either backend leave
                            # the lock to it once the holder lets go
                            # (_leave_turn).  Named again every round: a
                            # writer that found the turn stale cleared it.
                            if _u64(mm, _H_NEXT)[0] == 0:
                                mm[_NEXT_SL] = t.ident
                            return _flock_wait(self, fd, how, end)

                        if not self._until_stuck(take):
                            return _HELD
            if exclusive and not self._until_stuck(
                lambda end: self._claim(t, mm, ops, end, named)
            ):
                return _HELD
            out = self._read_once(what, dst)
            if rel is not None:
                _consume(rel)
        finally:
            if rel is None:
                if t.claimed:
                    mm[_LOCK_SL] = _ZERO8
                    t.claimed = False
                if fd >= 0:
                    _flock(fd, _LOCK_UN)
            else:
                _consume(rel)
            busy[key] = None
            if named and _u64(mm, _H_NEXT)[0] == t.me:  # a turn it did not take
                mm[_NEXT_SL] = _ZERO8
        return out

    def _until_stuck(self, attempt: Any) -> bool:
        """``attempt(deadline)`` in rounds of _READ_LOCK_MAX_S until it
        succeeds, True, or a round passes in which no writer stored, False:
        the holder is stuck, and spoils no copy."""
        mm = self._mm
        while True:
            seen = _u32(mm, C.H_NOTIFY)[0]
            if attempt(_monotonic() + _READ_LOCK_MAX_S):
                return True
            if _u32(mm, C.H_NOTIFY)[0] == seen:
                return False

    def _read_slow(self, what: int, dst: Any) -> Any:
        """After the lock-free attempts (strongly ordered CPUs) or instead of
        them: under the lock, so that a load ends in bounded time.  A
        read-only handle cannot take the writer lock and keeps trying."""
        tries = _LOCKFREE_TRIES if _STRONG_ORDER else 0
        while True:
            exclusive = tries >= _LOCKFREE_TRIES and not self.readonly
            if exclusive or not _STRONG_ORDER:
                out = self._read_locked(what, dst, exclusive)
                if out is _HELD:  # by a writer that is stuck: copy without it
                    out = (self._read_once(what, dst) if _STRONG_ORDER
                           else self._read_locked(what, dst, False))
            else:
                out = self._read_once(what, dst)
            if out is not None:
                return out
            tries += 1

    def load(self) -> Tuple[bytes, int]:
        if _STRONG_ORDER:  # the hot path: lock-free, no system call
            mm = self._mm
            for _ in _TRIES:
                off, length, seq, token = self._begin()
                data = mm[off : off + length]
                if seq == 0 or _u64(mm, off - _SLOT_HDR)[0] == token:
                    return data, seq
        return self._read_slow(0, None)  # type: ignore[no-any-return]

    def load_into(self, dst: memoryview) -> Tuple[int, int]:
        if _STRONG_ORDER:
            mm = self._mm
            for _ in _TRIES:
                off, length, seq, token = self._begin()
                if length > dst.nbytes:
                    if _u64(mm, off - _SLOT_HDR)[0] == token:
                        raise too_small(dst.nbytes, length)
                    continue
                dst[:length] = self._mv[off : off + length]
                if seq == 0 or _u64(mm, off - _SLOT_HDR)[0] == token:
                    return length, seq
        return self._read_slow(1, dst)  # type: ignore[no-any-return]

    def view(self) -> Tuple[memoryview, int]:
        if _STRONG_ORDER:
            mm = self._mm
            for _ in _TRIES:
                off, length, seq, token = self._begin()
                if seq == 0 or _u64(mm, off - _SLOT_HDR)[0] == token:
                    return self._mv[off : off + length].toreadonly(), seq
        return self._read_slow(2, None)  # type: ignore[no-any-return]

    def intact(self, seq: int) -> bool:
        """Whether message ``seq`` is still in place and untouched: the
        seqlock's re-check, for a reader of a view() to ask afterwards."""
        seq = C.as_int(seq, "seq")
        if seq < 0:
            raise ValueError(f"seq must be a message number >= 0, not {seq}")
        if seq == 0:
            return True
        if seq > C.SEQ_MAX:
            return False
        if not _STRONG_ORDER:
            self._fence()
        word: int = _u64(self._mm, C.HEADER_SIZE + (seq & 1) * self._stride)[0]
        return word == 2 * seq

    def _fence(self) -> None:
        """A full barrier through the kernel: take and drop a shared flock
        (not while this thread holds the lock: that would convert it)."""
        if fcntl is None:
            return
        try:
            t: _ThreadState = self._tls.t
        except AttributeError:
            t = self._thread_state()
        inner = t.busy.get(self._key)
        if t.fd < 0 or (inner is not None and _on_stack(inner)):
            return
        try:
            _flock(t.fd, _LOCK_SH)
        finally:
            _flock(t.fd, _LOCK_UN)

    def seq(self) -> int:
        seq: int = _u64(self._mm, C.H_SEQ)[0]
        return seq

    def lock_owner(self) -> int:
        return _u64(self._mm, C.H_LOCK)[0]  # type: ignore[no-any-return]

    def break_lock(self, owner: int) -> bool:
        if self.readonly:
            raise read_only_error(self.name)
        # Without a compare-and-swap there is a window between the check and
        # the write; the caller has judged the owner gone, and a new writer
        # would have to arrive within it.
        if owner == 0 or self.lock_owner() != owner:
            return False
        _put(self._mm, C.H_LOCK, C.U64, 0)
        return True

    def wait(self, after: int, timeout: Optional[float]) -> Optional[int]:
        # Polls: it writes nothing shared (a read-only handle waits too).
        mm = self._mm
        unpack = _u64
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        seq: int
        while time.monotonic() - start < _WAIT_SPIN_S:
            seq = unpack(mm, C.H_SEQ)[0]
            if seq > after:
                return seq
        pause = 50e-6
        while True:
            seq = unpack(mm, C.H_SEQ)[0]
            if seq > after:
                return seq
            if self.closed:  # by another thread
                raise closed_error("segment", self.name)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                time.sleep(min(pause, left))
            else:
                time.sleep(pause)
            pause = min(pause * 2, _WAIT_SLEEP_MAX_S)
