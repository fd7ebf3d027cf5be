"""The lending half of the python backend's channel (as csrc/channel_lend.c
and channel_repair.c):
under the lock, a slot taken for a loan (off the free stack, or the oldest
message that may go), the loan committed, published in one go or
discarded; and the sweeps and reclaims that find the slots and the
subscriber entries of dead processes, and repair what a holder that died
left half-changed.  ``ChannelHandle`` (``_pure_channel``) inherits it."""

from __future__ import annotations

import mmap
import struct
import time
from typing import Any, Tuple

from . import _pure as P
from ._errors import EFORMAT
from ._errors import (
    ELOST as _ELOST,
)
from ._pure_channel_layout import (
    _DIRTY_SL,
    _E_CURSOR,
    _FREE_COUNT_SL,
    _H_CHECKED_AT,
    _H_FREE_COUNT,
    _H_HEAD,
    _H_NOTIFY,
    _H_ROOM,
    _H_SUB_MASK,
    _H_SWEEP_AT,
    _HEAD_SL,
    _LIVENESS_NS,
    _M32,
    _M64,
    _NOTIFY_SL,
    _ONE4,
    _ROOM_SL,
    _ROOM_WAITERS_SL,
    _S_LENGTH,
    _S_LOANED_AT,
    _S_LOANER,
    _S_PINS,
    _SEQ_MAX,
    _SLOT,
    _SUB_MASK_SL,
    _WAITERS_SL,
    _WAKE_NOTIFY,
    _WAKE_ROOM,
    _ZERO4,
    _ZERO8,
    HEADER,
    _inconsistent,
    _p32,
    _p64,
    _u32,
    _u64,
)


class _ChannelLend(P._Mapped):
    """A channel's lending and its repairs, under the lock."""

    __slots__ = ()
    # The geometry, set by ChannelHandle.__init__ (in its __slots__).
    slot_size: int
    slots: int
    max_subscribers: int
    _overwrite: bool
    _stride: int
    _payload: int
    _index: int
    _free: int
    _subs: int
    _all_subs: int

    # -- under the lock: repairs --

    def _reachable(self, mm: mmap.mmap, s: int, k: int, head: int) -> bool:
        """Whether message k is committed and still reachable in slot s."""
        n = self.slots
        return (1 <= k <= head and head - k < n
                and _u32(mm, self._index + (k % n) * 4)[0] == s)

    def _drop_subscriber(self, mm: mmap.mmap, i: int) -> None:
        """Free entry i, as its dead or departed owner would have left it
        (inside the dirty bracket: an interrupt leaves it to the repair)."""
        e = self._subs + i * 64
        # The owner first: an entry without one is left by whoever stops
        # here, and the repair's sweep clears the pins of such entries.
        mm[e : e + 8] = _ZERO8
        mm[e + _E_CURSOR : e + _E_CURSOR + 8] = _ZERO8
        bit = 1 << i
        for s in range(self.slots):
            at = HEADER + s * 64 + _S_PINS
            pins: int = _u64(mm, at)[0]
            if pins & bit:
                mm[at : at + 8] = _p64(pins & ~bit)
        mask: int = _u64(mm, _H_SUB_MASK)[0]
        if mask & bit:
            mm[_SUB_MASK_SL] = _p64(mask & ~bit)

    def _owned(self, mm: mmap.mmap) -> int:
        """The mask of entries that have an owner."""
        owned = 0
        subs = self._subs
        for i in range(self.max_subscribers):
            if _u64(mm, subs + i * 64)[0]:
                owned |= 1 << i
        return owned

    def _reclaim_subscribers(self, mm: mmap.mmap) -> bool:
        """Drop the entries of dead owners, and bring sub_mask in line with
        the owners.  True when any was dropped."""
        me = P.self_id()
        subs = self._subs
        dropped = False
        for i in range(self.max_subscribers):
            owner: int = _u64(mm, subs + i * 64)[0]
            if owner and owner != me and P.owner_dead(owner) == 1:
                self._drop_subscriber(mm, i)
                dropped = True
        owned = self._owned(mm)
        if _u64(mm, _H_SUB_MASK)[0] != owned:
            mm[_SUB_MASK_SL] = _p64(owned)
        return dropped

    def _sweep(self, mm: mmap.mmap, live: bool) -> bool:
        """Put every slot in order and rebuild the free stack, as
        channel_repair.c's sweep: a loan of a dead process is reclaimed
        (``live``, or once it has been out for N messages) unless all its
        commit missed was clearing ``loaner``; a slot empty, or holding a
        message nobody can reach and nobody pins, goes on the stack; with
        ``live``, pins of entries nobody owns are cleared.  True when it
        freed anything."""
        n = self.slots
        head: int = _u64(mm, _H_HEAD)[0]
        me = P.self_id()
        owned = self._owned(mm) if live else 0
        free = self._free
        unpack = _SLOT.unpack_from
        stack = []
        changed = False
        for s in range(n):
            e = HEADER + s * 64
            word, _, pins, loaner, at = unpack(mm, e)
            if live and pins & ~owned:
                pins &= owned
                mm[e + _S_PINS : e + _S_PINS + 8] = _p64(pins)
                changed = True
            if word & 1:  # never written here; a scribbled word
                word &= ~1
                mm[e : e + 8] = _p64(word)
            if loaner:
                if (loaner == me or not (live or (head - at) & _M64 >= n)
                        or P.owner_dead(loaner) != 1):
                    continue  # a live loan
                # Its word is judged below as any slot's, so a slot a reader
                # holds pinned is not emptied under it.
                mm[e + _S_LOANER : e + _S_LOANER + 8] = _ZERO8
                changed = True
            if word and not self._reachable(mm, s, word >> 1, head) and not pins:
                # An old message a reader kept pinned while the ring moved on.
                word = 0
                mm[e : e + 8] = _ZERO8
            if word == 0:
                stack.append(s)
        if stack:
            mm[free : free + 4 * len(stack)] = struct.pack(f"<{len(stack)}I", *stack)
        mm[_FREE_COUNT_SL] = _p32(len(stack))
        return changed

    def _repair(self, mm: mmap.mmap) -> None:
        """A holder died (or was interrupted) between its dirty marks."""
        self._reclaim_subscribers(mm)
        self._sweep(mm, True)
        mm[_DIRTY_SL] = _ZERO4

    def _liveness_due(self, mm: mmap.mmap, now: int) -> bool:
        last: int = _u64(mm, _H_CHECKED_AT)[0]
        if last >= 1 << 63:
            last -= 1 << 64
        return last <= 0 or now < last or now - last >= _LIVENESS_NS

    def _room_bump(self, mm: mmap.mmap) -> int:
        """Under the lock, after a slot may have come free: bump ``room``
        for sleeping publishers, and say whether to wake them."""
        if mm[_ROOM_WAITERS_SL] == _ZERO4:
            return 0
        mm[_ROOM_SL] = _p32((_u32(mm, _H_ROOM)[0] + 1) & _M32)
        return _WAKE_ROOM

    # -- under the lock: lending --

    def _take_free(self, mm: mmap.mmap) -> int:
        """A slot off the free stack, checked (the stack is rebuilt by
        sweeps, an entry may be stale); -1 when none."""
        n = self.slots
        count: int = _u32(mm, _H_FREE_COUNT)[0]
        if count > n:
            count = n
        free = self._free
        found = -1
        while count > 0:
            count -= 1
            s: int = _u32(mm, free + count * 4)[0]
            if s >= n:
                continue
            e = HEADER + s * 64
            if _u64(mm, e)[0] == 0 and _u64(mm, e + _S_LOANER)[0] == 0:
                found = s
                break
        mm[_FREE_COUNT_SL] = _p32(count)
        return found

    def _min_cursor(self, mm: mmap.mmap, head: int) -> int:
        """The lowest cursor of the subscribers (head + 1 without any): in
        block mode every message from it on is still to be received."""
        mask: int = _u64(mm, _H_SUB_MASK)[0] & self._all_subs
        least = head + 1
        subs = self._subs
        while mask:
            low = mask & -mask
            mask ^= low
            e = subs + (low.bit_length() - 1) * 64
            if _u64(mm, e)[0] == 0:
                continue
            cursor: int = _u64(mm, e + _E_CURSOR)[0]
            if cursor < least:
                least = cursor
        return least

    def _take_oldest(self, mm: mmap.mmap, head: int) -> int:
        """The slot of the oldest message still reachable that may be
        overwritten: not lent, not pinned (the flock keeps pins from
        changing meanwhile), and in block mode received by everyone."""
        n = self.slots
        k = head - n + 1 if head >= n else 1
        last = head
        if not self._overwrite:
            least = self._min_cursor(mm, head)
            if least == 0:
                return -1
            if least <= last:
                last = least - 1
        index = self._index
        unpack = _SLOT.unpack_from
        while k <= last:
            s: int = _u32(mm, index + (k % n) * 4)[0]
            if s < n:
                e = HEADER + s * 64
                word, _, pins, loaner, _ = unpack(mm, e)
                if word == k << 1 and not loaner and not pins:
                    mm[e : e + 8] = _ZERO8
                    return s
            k += 1
        return -1

    def _loan_locked(self, mm: mmap.mmap, _a: Any, _b: Any) -> Tuple[int, int]:
        """A slot lent to this process, or -1 when slots are short."""
        n = self.slots
        head: int = _u64(mm, _H_HEAD)[0]
        if head > _SEQ_MAX:
            _inconsistent(self.name)
        mm[_DIRTY_SL] = _ONE4
        freed = False
        # Every N messages, a sweep without asking who is alive.
        sweep_at: int = _u64(mm, _H_SWEEP_AT)[0]
        if head >= sweep_at or sweep_at - head > n:
            freed = self._sweep(mm, False)
            mm[_H_SWEEP_AT : _H_SWEEP_AT + 8] = _p64(head + n)
        s = self._take_free(mm)
        if s < 0:
            s = self._take_oldest(mm, head)
        if s < 0:
            # Short of slots: find those of dead processes (at most every
            # 100 ms: the question costs system calls), and any a sweep frees.
            now = time.monotonic_ns()
            live = self._liveness_due(mm, now)
            if live:
                mm[_H_CHECKED_AT : _H_CHECKED_AT + 8] = _p64(now)
                freed = self._reclaim_subscribers(mm) or freed
            freed = self._sweep(mm, live) or freed
            s = self._take_free(mm)
            if s < 0:
                s = self._take_oldest(mm, head)
        wake = self._room_bump(mm) if freed else 0
        if s >= 0:
            e = HEADER + s * 64
            at = _p64(head)
            me = _p64(P.self_id())
            mm[e + _S_LOANED_AT : e + _S_LOANED_AT + 8] = at
            mm[e + _S_LOANER : e + _S_LOANER + 8] = me
        mm[_DIRTY_SL] = _ZERO4
        return s, wake

    def _commit_locked(self, mm: mmap.mmap, s: int, length: int) -> Tuple[int, int]:
        """Publish the loan of slot s: its number, or ELOST when the loan is
        no longer this process's, EFORMAT for a corrupt head."""
        n = self.slots
        e = HEADER + s * 64
        if (s >= n or _u64(mm, e + _S_LOANER)[0] != P.self_id()
                or _u64(mm, e)[0] != 0):
            return _ELOST, 0
        k: int = _u64(mm, _H_HEAD)[0] + 1
        if k > _SEQ_MAX:
            return EFORMAT, 0
        length_b = _p64(length)
        word_b = _p64(k << 1)
        at = self._index + (k % n) * 4
        slot_b = _p32(s)
        head_b = _p64(k)
        notify_b = _p32((_u32(mm, _H_NOTIFY)[0] + 1) & _M32)
        # Sleepers count themselves under the flock: this read is exact.
        wake = 0 if mm[_WAITERS_SL] == _ZERO4 else _WAKE_NOTIFY
        # A publisher waiting for room may take this slot once it holds a
        # message nobody must read first (overwrite mode, or no subscriber).
        room_b = None
        if (mm[_ROOM_WAITERS_SL] != _ZERO4
                and (self._overwrite or mm[_SUB_MASK_SL] == _ZERO8)):
            room_b = _p32((_u32(mm, _H_ROOM)[0] + 1) & _M32)
            wake |= _WAKE_ROOM
        # The commit, and no call from here to the release.  Killed inside
        # it, the next holder finds dirty and sorts the slot out: before
        # head moves the message does not exist, after it it is whole.
        mm[_DIRTY_SL] = _ONE4
        mm[e + _S_LENGTH : e + _S_LENGTH + 8] = length_b
        mm[e : e + 8] = word_b
        mm[at : at + 4] = slot_b
        mm[_HEAD_SL] = head_b
        mm[e + _S_LOANER : e + _S_LOANER + 8] = _ZERO8
        mm[_DIRTY_SL] = _ZERO4
        mm[_NOTIFY_SL] = notify_b
        if room_b is not None:
            mm[_ROOM_SL] = room_b
        return k, wake

    def _publish_locked(self, mm: mmap.mmap, data: Any, n: int) -> Tuple[int, int]:
        """Loan, copy and commit under one lock: the message's number, or 0
        when slots are short."""
        s, wake = self._loan_locked(mm, None, None)
        if s < 0:
            return 0, wake
        # Killed while copying: a loan of a dead process, reclaimed by a sweep.
        start = self._payload + s * self._stride
        self._mv[start : start + n] = data
        k, woke = self._commit_locked(mm, s, n)
        return k, wake | woke

    def _discard_locked(self, mm: mmap.mmap, s: int, _b: Any) -> Tuple[int, int]:
        e = HEADER + s * 64
        if (s >= self.slots or _u64(mm, e + _S_LOANER)[0] != P.self_id()
                or _u64(mm, e)[0] != 0):
            return _ELOST, 0
        # An empty slot nobody lends is free; the next sweep stacks it.
        wake = self._room_bump(mm)
        mm[e + _S_LOANER : e + _S_LOANER + 8] = _ZERO8
        return 0, wake
