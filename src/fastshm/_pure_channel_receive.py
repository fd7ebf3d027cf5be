"""The receiving half of the python backend's channel (as
csrc/channel_receive.c): under the lock, a subscriber's next message found,
pinned or copied out and received, and a pinned slot released; and the
waits of subscribers for a message and of publishers for room, on the
futex or polling.  ``ChannelHandle`` (``_pure_channel``) inherits it."""

from __future__ import annotations

import mmap
import time
from typing import Any, Callable, List, Optional, Tuple

from . import _pure as P
from ._errors import EFORMAT, ESMALL, closed_error
from ._errors import (
    ELOST as _ELOST,
)
from ._pure_channel_layout import (
    _BUSY,
    _E_CURSOR,
    _E_GEN,
    _E_MISSED,
    _E_PENDING,
    _E_RECEIVED,
    _EINVAL,
    _ENTRY,
    _FOR_MESSAGE,
    _FREE_COUNT_SL,
    _H_HEAD,
    _H_NOTIFY,
    _H_ROOM,
    _M32,
    _M64,
    _NOTHING,
    _POLL_MAX_S,
    _ROOM_WAITERS_SL,
    _S_PINS,
    _SEQ_MAX,
    _SLICE_S,
    _SLOT,
    _SPIN_S,
    _WAITERS_SL,
    _ZERO4,
    _ZERO8,
    HEADER,
    _p32,
    _p64,
    _u32,
    _u64,
)
from ._pure_channel_lend import _ChannelLend

# The futex's waits, turned off for good when the call fails for a reason
# other than a wake, a changed word, a timeout or a signal (a seccomp filter).
_futex_ok = P._HAS_FUTEX


class _ChannelReceive(_ChannelLend):
    """A channel's receiving, under the lock, and its waits."""

    __slots__ = ()
    # ChannelHandle's (_pure_channel): an operation under the lock.
    _run: Callable[..., Any]

    # -- under the lock: receiving --

    def _own_entry(self, mm: mmap.mmap, sub: Tuple[int, int]) -> int:
        """The offset of the subscription's entry, or -1 when it is no
        longer this process's (reclaimed, evicted, or made before a fork)."""
        i, gen = sub
        e = self._subs + i * 64
        if _u64(mm, e)[0] != P.self_id() or _u64(mm, e + _E_GEN)[0] != gen:
            return -1
        return e

    def _next_locked(self, mm: mmap.mmap, sub: Tuple[int, int]) -> Any:
        """The subscriber's next message still in place, as (entry, slot,
        slot entry, pins, length, k, first, missed, received, pending) for
        the caller to store its cursor and counts; or _NOTHING (what was
        overwritten meanwhile counted: the last stores), ELOST, EFORMAT."""
        e = self._own_entry(mm, sub)
        if e < 0:
            return _ELOST
        bit = 1 << sub[0]
        owner, first, missed, gen, received, pending = _ENTRY.unpack_from(mm, e)
        if first == 0:
            first = 1
        head: int = _u64(mm, _H_HEAD)[0]
        if head > _SEQ_MAX:
            return EFORMAT
        if first > head:
            return EFORMAT if first > head + 1 else _NOTHING
        n = self.slots
        k = head - n + 1 if head >= n and first <= head - n else first
        index = self._index
        unpack = _SLOT.unpack_from
        limit = self.slot_size
        while k <= head:
            s: int = _u32(mm, index + (k % n) * 4)[0]
            if s < n:
                se = HEADER + s * 64
                word, length, pins, _, _ = unpack(mm, se)
                # A slot this subscriber holds pinned holds an earlier message.
                if word == k << 1 and not pins & bit and length <= limit:
                    return e, s, se, pins, length, k, first, missed, received, pending
            k += 1
        # Everything up to head was overwritten before this subscriber got
        # to it: counted now, reported with the next message received.
        gone = head + 1 - first
        cursor_b = _p64(head + 1)
        missed_b = _p64((missed + gone) & _M64)
        pending_b = _p64((pending + gone) & _M64)
        mm[e + _E_CURSOR : e + _E_CURSOR + 8] = cursor_b
        mm[e + _E_MISSED : e + _E_MISSED + 8] = missed_b
        mm[e + _E_PENDING : e + _E_PENDING + 8] = pending_b
        return _NOTHING

    def _receive_locked(self, mm: mmap.mmap, sub: Tuple[int, int], _b: Any) -> Tuple[Any, int]:
        """The next message pinned: (slot, offset, length, seq, missed), or
        _NOTHING, ELOST, EFORMAT."""
        found = self._next_locked(mm, sub)
        if type(found) is int:
            return found, 0
        e, s, se, pins, length, k, first, missed, received, pending = found
        gone = k - first + pending
        pins_b = _p64(pins | (1 << sub[0]))
        cursor_b = _p64(k + 1)
        missed_b = _p64((missed + k - first) & _M64)
        received_b = _p64((received + 1) & _M64)
        # The pin and the cursor, and no call from here to the release: the
        # sample is this subscriber's, whole.
        mm[se + _S_PINS : se + _S_PINS + 8] = pins_b
        mm[e + _E_CURSOR : e + _E_CURSOR + 8] = cursor_b
        mm[e + _E_MISSED : e + _E_MISSED + 8] = missed_b
        mm[e + _E_RECEIVED : e + _E_RECEIVED + 8] = received_b
        mm[e + _E_PENDING : e + _E_PENDING + 8] = _ZERO8
        return (s, self._payload + s * self._stride, length, k, gone), 0

    def _receive_into_locked(self, mm: mmap.mmap, sub: Tuple[int, int],
                             dst: memoryview) -> Tuple[Any, int]:
        """The next message copied into dst and received: (length, seq,
        missed); (ESMALL, length, seq) when dst is too small for it, with
        nothing changed; or _NOTHING, ELOST, EFORMAT.  No pin: nobody
        reuses the slot while the flock is held."""
        found = self._next_locked(mm, sub)
        if type(found) is int:
            return found, 0
        e, s, _, _, length, k, first, missed, received, pending = found
        if length > dst.nbytes:
            return (ESMALL, length, k), 0
        gone = k - first + pending
        start = self._payload + s * self._stride
        # The copy first: a process killed inside it has changed nothing.
        dst[:length] = self._mv[start : start + length]
        cursor_b = _p64(k + 1)
        missed_b = _p64((missed + k - first) & _M64)
        received_b = _p64((received + 1) & _M64)
        # The cursor and the counts, and no call from here to the release.
        mm[e + _E_CURSOR : e + _E_CURSOR + 8] = cursor_b
        mm[e + _E_MISSED : e + _E_MISSED + 8] = missed_b
        mm[e + _E_RECEIVED : e + _E_RECEIVED + 8] = received_b
        mm[e + _E_PENDING : e + _E_PENDING + 8] = _ZERO8
        return (length, k, gone), 0

    def _release_locked(self, mm: mmap.mmap, sub: Tuple[int, int], s: int) -> Tuple[int, int]:
        if s >= self.slots or s < 0:
            return _EINVAL, 0
        if self._own_entry(mm, sub) < 0:
            return _ELOST, 0
        bit = 1 << sub[0]
        at = HEADER + s * 64 + _S_PINS
        pins: int = _u64(mm, at)[0]
        if not pins & bit:
            return 0, 0
        wake = self._room_bump(mm)
        mm[at : at + 8] = _p64(pins & ~bit)
        return 0, wake

    # -- waiting --
    #
    # Only processes of this backend use a PYLOCK channel, so the sleeper
    # counts change only under the flock: a sleeper takes it, re-checks what
    # it waits for, and if it must wait counts itself and reads the word it
    # will sleep on before releasing it; a commit (or a release of a slot)
    # bumps the word and reads the count under the same flock.  The flock
    # orders the two: a sleeper is either counted before the change (and
    # woken, or it finds the word moved and does not sleep) or sees it.

    def _message_ready(self, mm: mmap.mmap, sub: Tuple[int, int]) -> bool:
        """A message this subscriber has not reached is published, or the
        entry is no longer its own (the next attempt says so)."""
        i, gen = sub
        e = self._subs + i * 64
        if _u64(mm, e)[0] != P.self_id() or _u64(mm, e + _E_GEN)[0] != gen:
            return True
        cursor: int = _u64(mm, e + _E_CURSOR)[0]
        head: int = _u64(mm, _H_HEAD)[0]
        return head >= (cursor or 1)

    def _room_ready(self, mm: mmap.mmap) -> bool:
        """Whether a loan may find a slot: one neither lent nor pinned that
        is free, unreachable, or (block mode) received by every subscriber.
        Without the lock only a hint (a word read as it changes); under it,
        exact but for slots dead processes hold, which the next loan looks
        for after a slice."""
        if mm[_FREE_COUNT_SL] != _ZERO4:
            return True
        n = self.slots
        head: int = _u64(mm, _H_HEAD)[0]
        least = head + 1 if self._overwrite else self._min_cursor(mm, head)
        unpack = _SLOT.unpack_from
        index = self._index
        for s in range(n):
            word, _, pins, loaner, _ = unpack(mm, HEADER + s * 64)
            if loaner or pins or word & 1:
                continue
            k = word >> 1
            if word == 0 or k > head or head - k >= n:
                return True
            if _u32(mm, index + (k % n) * 4)[0] != s or k < least:
                return True
        return False

    def _ready(self, mm: mmap.mmap, what: int, sub: Any) -> bool:
        if what == _FOR_MESSAGE:
            return self._message_ready(mm, sub)
        return self._room_ready(mm)

    def _enlist_locked(self, mm: mmap.mmap, what_sub: Tuple[int, Any],
                       mark: List[bool]) -> Tuple[int, int]:
        """Count this thread as a sleeper and return the word it sleeps on,
        unless what it waits for is there already (-1); with ``mark`` True,
        uncount it instead.  ``mark[0]`` records the count, right beside it."""
        what, sub = what_sub
        sl = _WAITERS_SL if what == _FOR_MESSAGE else _ROOM_WAITERS_SL
        count: int = _u32(mm, sl.start)[0]
        if mark[0]:
            fewer = _p32(count - 1) if count else _ZERO4  # never below 0
            mm[sl] = fewer
            mark[0] = False
            return 0, 0
        if self._ready(mm, what, sub):
            return -1, 0
        seen: int = _u32(mm, _H_NOTIFY if what == _FOR_MESSAGE else _H_ROOM)[0]
        more = _p32((count + 1) & _M32)
        # The count and its record: no call between them.
        mm[sl] = more
        mark[0] = True
        return seen, 0

    def _wait(self, what: int, sub: Any, deadline: Optional[float], spin: bool) -> None:
        """Until what ``what`` waits for looks ready, a wake-up, the deadline,
        or one slice at most: the caller tries again either way.  Ends with
        ValueError when another thread closes the handle, and with whatever
        a signal handler raises."""
        global _futex_ok
        mm = self._mm
        now = start = time.monotonic()
        if spin:
            while now - start < _SPIN_S:
                if self._ready(mm, what, sub):
                    return
                now = time.monotonic()
        end = now + _SLICE_S
        if deadline is not None and deadline < end:
            end = deadline
        anchor = self._anchor
        if anchor is None or not _futex_ok:
            self._poll(what, sub, end)
            return
        mark = [False]
        try:
            seen = self._run(self._enlist_locked, (what, sub), mark, end)
            if seen is _BUSY or seen < 0:
                return
            left = end - time.monotonic()
            if left <= 0:
                return
            word = _H_NOTIFY if what == _FOR_MESSAGE else _H_ROOM
            err = P._futex_wait(anchor, word, seen, left)
            if err not in P._FUTEX_WAIT_OK:
                _futex_ok = False  # the next wait polls
        finally:
            if mark[0]:
                self._uncount(what, sub, mark)

    def _uncount(self, what: int, sub: Any, mark: List[bool]) -> None:
        """Count this thread out of the sleepers again, whatever a signal's
        handler raises meanwhile (``_pure_futex._uncount``)."""
        P._uncount(lambda: self._run(self._enlist_locked, (what, sub), mark), mark)

    def _poll(self, what: int, sub: Any, end: float) -> None:
        """``_wait`` without a futex: a growing sleep between looks.  It
        writes nothing shared, so an interrupt here changes nothing."""
        mm = self._mm
        pause = 50e-6
        while not self._ready(mm, what, sub):
            left = end - time.monotonic()
            if left <= 0 or self.closed:
                return
            time.sleep(min(pause, left))
            pause = min(pause * 2, _POLL_MAX_S)

    def _retry(self, fn: Callable[..., Tuple[Any, int]], a: Any, b: Any, what: int,
               sub: Any, timeout: Optional[float], nothing: Any) -> Any:
        """``fn`` under the lock until it returns something other than
        ``nothing``, waiting for ``what`` between tries; ``nothing`` once
        the timeout has passed, or ``_BUSY`` when another process held the
        lock until then."""
        if timeout is None:
            deadline: Optional[float] = None
        else:
            deadline = time.monotonic() + timeout if timeout > 0 else P._NOW
        out = self._run(fn, a, b, deadline)
        if out is _BUSY or out != nothing or timeout == 0:
            return out
        spin = True
        while True:
            if self.closed:
                raise closed_error("channel", self.name)
            if deadline is not None and time.monotonic() >= deadline:
                return out
            self._wait(what, sub, deadline, spin)
            spin = False
            if self.closed:
                raise closed_error("channel", self.name)
            out = self._run(fn, a, b, deadline)
            if out is _BUSY or out != nothing:
                return out
