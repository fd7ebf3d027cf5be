"""The python backend's channel: the layout of csrc/channel.c (docs/FORMAT.md,
"Channels") in pure Python over ``mmap``.

``ChannelHandle`` is what ``fastshm.channel`` (Publisher, Subscriber) calls
on this backend, with the interface of ``_native_channel.ChannelHandle``.

The C core's protocol leans on atomics that pure Python lacks: the lock is
a compare-and-swap, a subscriber pins a slot with an atomic OR and no lock,
and an overwriting publisher claims a slot with a Dekker pair against that
pin.  So, as for the python backend's queues (docs/FORMAT.md, "Two lock
protocols"), a channel made here carries flags bit ``PYLOCK``, and every
operation that changes a shared word -- loan, commit, discard, subscribe,
unsubscribe, a receive's pin and cursor, release, the repairs -- happens
under an exclusive ``flock`` of the channel's object; the holder writes its
id into the lock word meanwhile, for ``fastshm info`` and for the next
holder.  Under the flock the deciding (odd) slot word is never needed: no
reader can pin a slot while a publisher looks at its pins.  Native code
refuses such a channel (``FSHM_EPROTOCOL``), and this module refuses one
without the flag: a compare-and-swap and a flock do not exclude each other.

Crash safety is the C core's: a change of more than one word is bracketed
by ``dirty``; a holder killed inside the flock leaves the lock word naming
it and, when it was changing several words, ``dirty`` set, and the next
holder repairs (reclaims dead subscribers, then sweeps the slots asking who
is alive).  Loans and subscriptions of dead processes are reclaimed when
slots run short, at most every 100 ms, as in the C core.

What a signal may interrupt follows ``_pure``'s queue: the last stores of
each operation (a commit, a pin and its cursor, a copying receive's cursor
after its copy, a release) are plain slice assignments with no call between
them and the release of the lock, so on CPython 3.11 and later no signal
handler runs between a change and the unlock; the loops (sweeps, reclaims,
unsubscribing) run inside the dirty bracket, so an interrupt there leaves
work the next holder redoes.

Waiting: subscribers sleep on ``notify``, publishers on ``room``, counting
themselves in ``waiters`` / ``room_waiters`` under the flock (Linux: a
futex through ``_pure``'s helpers; elsewhere a bounded growing sleep), in
slices of at most 100 ms, so that Ctrl-C, a ``close()`` from another thread
and a waker killed before its wake-up all end a wait promptly.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import _common as C
from . import _pure as P
from ._errors import (
    EFORMAT,
    EKIND,
    ENOTREADY,
    ESMALL,
    EVERSION,
    FormatError,
    channel_full_error,
    channel_locked_error,
    closed_error,
    kind_error,
    lost_error,
    os_error,
    protocol_error,
    raise_for,
    read_only_error,
    receive_too_small,
    too_big,
)
from ._errors import (
    ELOST as _ELOST,
)

# ---- the layout (docs/FORMAT.md, "Channels") ----

MAGIC = 0x43485346  # the bytes "FSHC" read little-endian
VERSION = 1
HEADER = 256
OVERWRITE = 1  # flags bit 0: publishers never wait for subscribers
PYLOCK = 2  # flags bit 1: made here; every change under the flock
MAX_SLOTS = 1 << 20
MAX_SUBSCRIBERS = 64
_PAGE = 4096
_SEQ_MAX = ((1 << 64) - 1) >> 2  # (k << 1) | 1 must not wrap
_M64 = (1 << 64) - 1
_M32 = 0xFFFFFFFF

# Header.
_H_SLOT_SIZE = 8
_H_HEAD = 16
_H_NOTIFY = 24
_H_WAITERS = 28
_H_SLOTS = 32
_H_MAX_SUBS = 36
_H_HISTORY = 40
_H_FLAGS = 44
_H_ROOM = 48
_H_ROOM_WAITERS = 52
_H_PAYLOAD = 56
_H_LOCK = 64
_H_DIRTY = 88
_H_FREE_COUNT = 92
_H_SUB_MASK = 96
_H_SWEEP_AT = 104
_H_CHECKED_AT = 112
# Slot entries (64 bytes each, from HEADER).
_S_WORD = 0
_S_LENGTH = 8
_S_PINS = 16
_S_LOANER = 24
_S_LOANED_AT = 32
# Subscriber entries (64 bytes each).
_E_OWNER = 0
_E_CURSOR = 8
_E_MISSED = 16
_E_GEN = 24
_E_RECEIVED = 32
_E_PENDING = 40

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_u64 = _U64.unpack_from
_u32 = _U32.unpack_from
_p64 = _U64.pack
_p32 = _U32.pack
_SLOT = struct.Struct("<QQQQQ")  # word, length, pins, loaner, loaned_at
_ENTRY = struct.Struct("<QQQQQQ")  # owner, cursor, missed, gen, received, pending
_FIELDS = struct.Struct("<QQQQQ")  # an entry's fields after the owner
_GEOMETRY = struct.Struct("<IHHQ")  # magic, version, header_size, slot_size
_COUNTS = struct.Struct("<III")  # slots, max_subscribers, history

_ZERO4 = bytes(4)
_ONE4 = _p32(1)
_ZERO8 = bytes(8)
_LOCK_SL = slice(_H_LOCK, _H_LOCK + 8)
_DIRTY_SL = slice(_H_DIRTY, _H_DIRTY + 4)
_HEAD_SL = slice(_H_HEAD, _H_HEAD + 8)
_NOTIFY_SL = slice(_H_NOTIFY, _H_NOTIFY + 4)
_WAITERS_SL = slice(_H_WAITERS, _H_WAITERS + 4)
_ROOM_SL = slice(_H_ROOM, _H_ROOM + 4)
_ROOM_WAITERS_SL = slice(_H_ROOM_WAITERS, _H_ROOM_WAITERS + 4)
_FREE_COUNT_SL = slice(_H_FREE_COUNT, _H_FREE_COUNT + 4)
_SUB_MASK_SL = slice(_H_SUB_MASK, _H_SUB_MASK + 8)

# ---- timing (the C core's) ----

# How long a blocked call polls before it sleeps.
_SPIN_S = 50e-6
# The longest one sleep lasts: signal handlers run, a close() from another
# thread is seen, a waker killed before its wake-up leaves none behind, and
# a publisher short of slots looks for dead processes at this pace.
_SLICE_S = 0.1
# How often, at most, processes holding slots are asked whether they live.
_LIVENESS_NS = 100_000_000
# Without a futex: the longest sleep between two looks.
_POLL_MAX_S = 0.002
# A publish copies its message under the flock (one lock round instead of
# two) up to this size; a larger one is a loan, a copy and a commit.
_COPY_UNDER_LOCK = 256 * 1024

# What an operation under the lock returns besides a result: wake-ups to
# make once the lock is released.
_WAKE_NOTIFY = 1
_WAKE_ROOM = 2
# receive_once's "nothing new"; the other codes are those of _errors.
_NOTHING = 1
_EINVAL = errno.EINVAL

# _run's deadline for the calls that give something back (a release, a
# discard, unsubscribing, a commit): a blocking flock.
_UNTIMED = -2.0
# _run's result when the flock stayed held until its deadline.
_BUSY = "busy"

# What _wait waits for.
_FOR_MESSAGE = 0
_FOR_ROOM = 1

# The futex's waits, turned off for good when the call fails for a reason
# other than a wake, a changed word, a timeout or a signal (a seccomp filter).
_futex_ok = P._HAS_FUTEX

# Releases asked for from inside a call on the same channel in the same
# thread (a sample collected there, or released by a signal handler): made
# after the next call of any thread lets go of the lock.
_deferred: List[Tuple["ChannelHandle", Any, Any]] = []

# A sample's bytes by address, for the C half of fastshm.Sample (CPython).
_ctypes: Any = None
if sys.implementation.name == "cpython":
    try:
        import ctypes as _ctypes
    except ImportError:  # a CPython built without it: samples use the views
        _ctypes = None


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) & ~(to - 1)


def _index_offset(slots: int) -> int:
    return HEADER + slots * 64


def _free_offset(slots: int) -> int:
    return _index_offset(slots) + _round_up(slots * 4, 64)


def _subs_offset(slots: int) -> int:
    return _free_offset(slots) + _round_up(slots * 4, 64)


def _payload_offset(slots: int, max_subscribers: int) -> int:
    return _round_up(_subs_offset(slots) + max_subscribers * 64, _PAGE)


def _stride(slot_size: int) -> int:
    return _round_up(slot_size, _PAGE if slot_size >= _PAGE else 64)


def size_for(slot_size: int, slots: int, max_subscribers: int) -> int:
    """Mapping bytes a channel needs; 0 when out of range (as
    fshm_channel_size_for)."""
    if (not 1 <= slot_size <= _M64 >> 2 or not 2 <= slots <= MAX_SLOTS
            or not 1 <= max_subscribers <= MAX_SUBSCRIBERS):
        return 0
    return _payload_offset(slots, max_subscribers) + _stride(slot_size) * slots


def _reentrant(name: str) -> RuntimeError:
    return RuntimeError(
        f"a channel call made from a signal handler while this thread is inside a call "
        f"on the same channel {name!r}; the python backend cannot go on there without "
        "waiting for its own lock. Publish or receive from the main code (e.g. let the "
        "handler set a flag), or use the native backend"
    )


def _inconsistent(name: str) -> None:
    raise_for(EFORMAT, name, "the channel's tables are inconsistent")


def _release_deferred() -> None:
    """The deferred releases there are now, each tried once: one whose
    channel this thread is still inside is deferred again."""
    for _ in range(len(_deferred)):
        try:
            h, sub, slot = _deferred.pop()
        except IndexError:  # another thread took the last
            return
        h._run(h._release_locked, sub, slot)


class ChannelHandle(P._Mapped):
    """An open channel over an mmap, locked the python backend's way (flags
    PYLOCK).  A subscription is ``(entry, gen)``; a loan is its slot."""

    __slots__ = (
        "view", "owner", "address", "slot_size", "slots", "history", "max_subscribers",
        "flags", "_overwrite", "_stride", "_payload", "_index", "_free", "_subs", "_all_subs",
    )

    def __init__(self, name: str, how: int, slot_size: int, slots: int, history: int,
                 max_subscribers: int, flags: int, mode: int, any_owner: bool) -> None:
        if P.fcntl is None:
            # Without flock nothing would keep two processes' changes apart.
            raise OSError(
                errno.ENOSYS,
                "the python backend's channel locks with flock, which this platform "
                "lacks: use backend='native'",
                name,
            )
        need = 0
        if how != C.ATTACH:
            need = size_for(slot_size, slots, max_subscribers)
            if (need == 0 or need > sys.maxsize or not 0 <= history < slots
                    or flags & ~OVERWRITE):
                raise os_error(_EINVAL, name)
            flags |= PYLOCK
        # What the header says, read once by attach: later scribbles on it
        # cannot move the tables under this handle.
        geometry = [slot_size, slots, max_subscribers, history, flags]
        found: List[str] = []

        def init(mm: mmap.mmap, fd: int, size: int) -> None:
            def fields() -> None:
                _GEOMETRY.pack_into(mm, 0, 0, VERSION, HEADER, slot_size)
                _COUNTS.pack_into(mm, _H_SLOTS, slots, max_subscribers, history)
                mm[_H_FLAGS : _H_FLAGS + 4] = _p32(flags)
                mm[_H_PAYLOAD : _H_PAYLOAD + 8] = _p64(_payload_offset(slots, max_subscribers))
                # Every slot free, slot 0 on top.
                free = _free_offset(slots)
                mm[free : free + 4 * slots] = struct.pack(f"<{slots}I", *range(slots - 1, -1, -1))
                mm[_FREE_COUNT_SL] = _p32(slots)
                mm[_H_SWEEP_AT : _H_SWEEP_AT + 8] = _p64(slots)

            P._publish(mm, fd, size, fields, MAGIC)

        def attach(mm: mmap.mmap, size: int) -> int:
            found.clear()
            if size < 4:
                return EFORMAT
            # The kind is told before the size is judged, as channel.c does.
            magic: int = _u32(mm, 0)[0]
            if magic == 0:
                return ENOTREADY
            if magic in (C.MAGIC, C.QUEUE_MAGIC):
                found.append("Segment" if magic == C.MAGIC else "Queue")
                return EKIND
            if magic != MAGIC or size < HEADER:
                return EFORMAT
            _, version, header_size, slot_size_ = _GEOMETRY.unpack_from(mm, 0)
            if version != VERSION:
                return EVERSION
            if header_size != HEADER:
                return EFORMAT
            slots_, subs_, history_ = _COUNTS.unpack_from(mm, _H_SLOTS)
            flags_: int = _u32(mm, _H_FLAGS)[0]
            payload: int = _u64(mm, _H_PAYLOAD)[0]
            need_ = size_for(slot_size_, slots_, subs_)
            if (need_ == 0 or need_ > size or history_ >= slots_
                    or flags_ & ~(OVERWRITE | PYLOCK)
                    or payload != _payload_offset(slots_, subs_)):
                return EFORMAT
            geometry[:] = [slot_size_, slots_, subs_, history_, flags_]
            return 1

        try:
            mm, size, created, fd, read_only, dup, _ = P._open_object(
                name, how, need, mode, any_owner, init, attach, "object:Channel"
            )
        except FormatError:
            if found:  # a segment or a queue: say which
                raise kind_error(name, found[0], "Channel") from None
            raise
        slot_size, slots, max_subscribers, history, flags = geometry
        if not flags & PYLOCK:
            mm.close()
            if fd >= 0:
                os.close(fd)
            raise protocol_error(name, "native", "channel")
        self._setup(name, mm, fd, dup, size, created, read_only)
        self.slot_size = slot_size
        self.slots = slots
        self.max_subscribers = max_subscribers
        self.history = history
        self.flags = flags
        self._overwrite = bool(flags & OVERWRITE)
        self._stride = _stride(slot_size)
        self._payload = _payload_offset(slots, max_subscribers)
        self._index = _index_offset(slots)
        self._free = _free_offset(slots)
        self._subs = _subs_offset(slots)
        self._all_subs = (1 << max_subscribers) - 1
        # Writable when the object could be opened for writing (the mmap's
        # own memoryview says so).
        self.view = self._mv
        # Where a sample's bytes are, for the C half of Sample (CPython):
        # ``owner`` exports the mapping, so it stays mapped while any sample
        # holds it.  A read-only handle cannot subscribe: it needs neither.
        self.owner: Any = None
        self.address = 0
        if _ctypes is not None and not read_only:
            self.owner = _ctypes.c_char.from_buffer(mm)
            self.address = _ctypes.addressof(self.owner)

    # -- the lock --

    def _run(self, fn: Callable[..., Tuple[Any, int]], a: Any = None, b: Any = None,
             deadline: Optional[float] = _UNTIMED) -> Any:
        """``fn(mm, a, b)`` under the lock: the exclusive flock, with this
        process's id in the lock word and the channel repaired first if a
        holder died changing it.  ``fn`` returns (result, wake-ups); the
        wake-ups are made after the release, and the result returned.  See
        ``_pure``'s "what a signal may interrupt" for the shape of this.

        A flock found held is waited for until ``deadline`` (monotonic
        seconds; ``_pure._NOW``: about a millisecond, for a holder preempted
        mid-change; None: as long as it takes, ValueError once another
        thread closes the handle; ``_UNTIMED``: a blocking flock, for the
        calls that give something back), and ``_BUSY`` returned, nothing
        done, when it stayed held: its holder is alive but not running."""
        try:
            t: P._ThreadState = self._tls.t
        except AttributeError:
            t = self._thread_state()
        busy = t.busy
        key = self._key
        inner = busy.get(key)
        if inner is not None and P._on_stack(inner):
            if fn == self._release_locked:
                # A sample collected, or released by a signal handler, while
                # this thread is inside a call on the channel: its pin goes
                # when that call (or the next one) has let go of the lock.
                _deferred.append((self, a, b))
                return None
            raise _reentrant(self.name)
        mm = self._mm
        fd = t.fd
        ops = rel = None
        if not P._INLINE_RELEASE:
            ops = [t.noop, t.unflock]
            rel = map(P._pcall, ops)
        busy[key] = sys._getframe()
        try:
            if fd >= 0:
                try:
                    P._flock(fd, P._LOCK_EX_NB)
                except BlockingIOError:
                    if deadline == _UNTIMED:
                        P._flock(fd, P._LOCK_EX)
                    elif not P._flock_wait(self, fd, P._LOCK_EX_NB, deadline):
                        return _BUSY  # the finally lets go of nothing held
            # The flock is the lock: a word found here that is not 0 belongs
            # to a holder that died (the kernel dropped its flock), or to an
            # interrupted release of this process; dirty says whether it was
            # in the middle of a change.
            t.claimed = True
            if ops is not None:
                ops[0] = t.clear
            mm[_LOCK_SL] = t.ident
            repaired = 0
            if mm[_DIRTY_SL] != _ZERO4:
                self._repair(mm)
                # What the dead holder held may be free now.
                repaired = self._room_bump(mm)
            out, wake = fn(mm, a, b)
            wake |= repaired
            if rel is not None:
                P._consume(rel)  # released here; the finally's call finds nothing left
        finally:
            if rel is None:
                # No point where a signal handler runs until LOCK_UN is done.
                if t.claimed:
                    mm[_LOCK_SL] = _ZERO8
                    t.claimed = False
                if fd >= 0:
                    P._flock(fd, P._LOCK_UN)
            else:
                P._consume(rel)
            busy[key] = None
        if wake:
            # After the release, so that the woken take the flock at once.
            # An interrupt before it loses the wake-up: the sleepers find
            # the change at the end of their slice.
            anchor = self._anchor
            if wake & _WAKE_NOTIFY:
                P._futex_wake(anchor, _H_NOTIFY)
            if wake & _WAKE_ROOM:
                P._futex_wake(anchor, _H_ROOM)
        if _deferred:
            _release_deferred()
        return out

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
        """Put every slot in order and rebuild the free stack, as channel.c's
        sweep: a loan of a dead process is reclaimed (``live``, or once it
        has been out for N messages) unless all its commit missed was
        clearing ``loaner``; a slot empty, or holding a message nobody can
        reach and nobody pins, goes on the stack; with ``live``, pins of
        entries nobody owns are cleared.  True when it freed anything."""
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

    # -- under the lock: subscribing and receiving --

    def _own_entry(self, mm: mmap.mmap, sub: Tuple[int, int]) -> int:
        """The offset of the subscription's entry, or -1 when it is no
        longer this process's (reclaimed, evicted, or made before a fork)."""
        i, gen = sub
        e = self._subs + i * 64
        if _u64(mm, e)[0] != P.self_id() or _u64(mm, e + _E_GEN)[0] != gen:
            return -1
        return e

    def _subscribe_locked(self, mm: mmap.mmap, _a: Any, _b: Any) -> Tuple[Any, int]:
        head: int = _u64(mm, _H_HEAD)[0]
        if head > _SEQ_MAX:
            _inconsistent(self.name)
        mm[_DIRTY_SL] = _ONE4
        dropped = self._reclaim_subscribers(mm)
        subs = self._subs
        out: Any = None
        for i in range(self.max_subscribers):
            e = subs + i * 64
            if _u64(mm, e)[0] != 0:
                continue
            # The latest messages in place, as many as history allows in a
            # row; in block mode the cursor protects them once stored.
            n = self.slots
            cursor = head + 1
            k = head
            while k >= 1 and head - k < self.history:
                s: int = _u32(mm, self._index + (k % n) * 4)[0]
                if s >= n:
                    break
                word, _, _, loaner, _ = _SLOT.unpack_from(mm, HEADER + s * 64)
                if word != k << 1 or loaner:
                    break
                cursor = k
                k -= 1
            gen = (_u64(mm, e + _E_GEN)[0] + 1) & _M64
            # cursor, missed, gen, received, pending; the owner last.
            _FIELDS.pack_into(mm, e + _E_CURSOR, cursor, 0, gen, 0, 0)
            mm[e : e + 8] = _p64(P.self_id())
            mask: int = _u64(mm, _H_SUB_MASK)[0]
            mm[_SUB_MASK_SL] = _p64(mask | (1 << i))
            out = (i, gen)
            break
        mm[_DIRTY_SL] = _ZERO4
        return out, self._room_bump(mm) if dropped else 0

    def _unsubscribe_locked(self, mm: mmap.mmap, sub: Tuple[int, int],
                            _b: Any) -> Tuple[int, int]:
        if self._own_entry(mm, sub) < 0:
            return _ELOST, 0
        mm[_DIRTY_SL] = _ONE4
        self._drop_subscriber(mm, sub[0])
        mm[_DIRTY_SL] = _ZERO4
        return 0, self._room_bump(mm)

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
        handler raises meanwhile (``_pure._uncount``)."""
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

    def _writable(self) -> None:
        if self.readonly:
            raise read_only_error(self.name, "channel")

    # -- publishing --

    def publish(self, data: Any, timeout: Optional[float]) -> int:
        """Copy ``data`` into a slot and publish it: its number.
        TimeoutError when no slot came free in time."""
        n = len(data)
        if n > self.slot_size:
            raise too_big(n, self.name, self.slot_size)
        self._writable()
        if n > _COPY_UNDER_LOCK:
            loan, view = self.loan(n, timeout)
            try:
                view[:] = data
            except BaseException:
                self.discard(loan)
                raise
            finally:
                view.release()
            try:
                return self.commit(loan, n)
            except BaseException:
                self.discard(loan)
                raise
        seq = self._retry(self._publish_locked, data, n, _FOR_ROOM, None, timeout, 0)
        return self._published(seq, timeout)

    def _published(self, seq: Any, timeout: Optional[float]) -> int:
        if seq is _BUSY:
            raise channel_full_error(self.name, timeout, True, self.lock_owner())
        if seq > 0:
            return int(seq)
        if seq == 0:
            raise channel_full_error(self.name, timeout, False, self.lock_owner())
        if seq == _ELOST:
            raise lost_error(self.name)
        _inconsistent(self.name)
        return 0  # not reached

    def loan(self, size: int, timeout: Optional[float]) -> Tuple[int, memoryview]:
        """A slot lent for ``size`` bytes: (loan, writable view of them).
        TimeoutError as publish."""
        if size > self.slot_size:
            raise too_big(size, self.name, self.slot_size)
        self._writable()
        s = self._retry(self._loan_locked, None, None, _FOR_ROOM, None, timeout, -1)
        if s is _BUSY or s < 0:
            raise channel_full_error(self.name, timeout, s is _BUSY, self.lock_owner())
        start = self._payload + s * self._stride
        return s, self._mv[start : start + size]

    def commit(self, loan: int, length: int) -> int:
        """Publish a loan: its number."""
        if length > self.slot_size:
            raise too_big(length, self.name, self.slot_size)
        self._writable()
        return self._published(self._run(self._commit_locked, loan, length), None)

    def discard(self, loan: int) -> None:
        """Give a loan back unpublished (nothing when it is no longer this
        process's)."""
        if not self.readonly:
            self._run(self._discard_locked, loan)

    # -- subscribing --

    def subscribe(self) -> Optional[Tuple[int, int]]:
        """A subscription, or None when every entry is taken."""
        self._writable()
        sub: Optional[Tuple[int, int]] = self._run(self._subscribe_locked)
        return sub

    def unsubscribe(self, sub: Tuple[int, int]) -> None:
        """Give up the subscription and every pin it holds."""
        if not self.readonly:
            self._run(self._unsubscribe_locked, sub)

    def receive(self, sub: Tuple[int, int],
                timeout: Optional[float]) -> Optional[Tuple[int, int, int, int, int]]:
        """The next message, pinned: (slot, offset, length, seq, missed
        before it); None when none came in time."""
        self._writable()
        got = self._retry(self._receive_locked, sub, None, _FOR_MESSAGE, sub, timeout,
                          _NOTHING)
        if type(got) is tuple:
            return got
        self._no_message(got, timeout)
        return None

    def _no_message(self, got: Any, timeout: Optional[float]) -> None:
        """For a receive that got no message: returns when none came in
        time, raises what any other outcome means."""
        if got is _BUSY:
            raise channel_locked_error(self.name, timeout, self.lock_owner())
        if got == _NOTHING:
            return
        if got == _ELOST:
            if self.closed:  # by another thread, which gave the entry up
                raise closed_error("channel", self.name)
            raise lost_error(self.name)
        _inconsistent(self.name)

    def pending(self, sub: Tuple[int, int]) -> bool:
        """Whether a message ``sub`` has not reached is published (True
        also when the next receive would raise).  Never waits."""
        if self.closed:
            return True
        return self._message_ready(self._mm, sub)

    def receive_into(self, sub: Tuple[int, int], dst: memoryview,
                     timeout: Optional[float]) -> Optional[Tuple[int, int, int]]:
        """The next message copied into ``dst`` (a writable byte-wise view)
        and received: (length, seq, missed before it); None when none came
        in time.  ValueError, nothing received, when dst is too small."""
        self._writable()
        got = self._retry(self._receive_into_locked, sub, dst, _FOR_MESSAGE, sub, timeout,
                          _NOTHING)
        if type(got) is tuple:
            if got[0] == ESMALL:
                raise receive_too_small(dst.nbytes, got[1])
            return got
        self._no_message(got, timeout)
        return None

    def release(self, sub: Tuple[int, int], slot: int) -> None:
        """Let go of a pinned slot (nothing when it is not pinned, or the
        subscription is no longer this process's)."""
        if not self.readonly:
            self._run(self._release_locked, sub, slot)

    # -- snapshots and tools, without the lock --

    def head(self) -> int:
        return _u64(self._mm, _H_HEAD)[0]  # type: ignore[no-any-return]

    def subscribers(self) -> int:
        mm = self._mm
        me = P.self_id()
        n = 0
        for i in range(self.max_subscribers):
            owner: int = _u64(mm, self._subs + i * 64)[0]
            if owner and (owner == me or P.owner_dead(owner) != 1):
                n += 1
        return n

    def subscriber_info(self, index: int) -> Optional[Dict[str, int]]:
        if not 0 <= index < self.max_subscribers:
            return None
        mm = self._mm
        owner, cursor, missed, _, received, _ = _ENTRY.unpack_from(mm, self._subs + index * 64)
        if not owner:
            return None
        head: int = _u64(mm, _H_HEAD)[0]
        bit = 1 << index
        pinned = 0
        for s in range(self.slots):
            if _u64(mm, HEADER + s * 64 + _S_PINS)[0] & bit:
                pinned += 1
        return {"owner": owner, "cursor": cursor, "missed": missed, "received": received,
                "lag": head + 1 - cursor if cursor <= head else 0, "pinned": pinned}

    def lock_owner(self) -> int:
        return _u64(self._mm, _H_LOCK)[0]  # type: ignore[no-any-return]

    def break_lock(self, owner: int) -> bool:
        if self.readonly:
            raise read_only_error(self.name, "channel")
        # The flock is what excludes; the word only names the holder.
        if owner == 0 or self.lock_owner() != owner:
            return False
        self._mm[_LOCK_SL] = _ZERO8
        return True


__all__ = ["ChannelHandle", "MAGIC", "OVERWRITE", "PYLOCK", "size_for"]
