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

What a signal may interrupt follows ``_pure_queue``: the last stores of
each operation (a commit, a pin and its cursor, a copying receive's cursor
after its copy, a release) are plain slice assignments with no call between
them and the release of the lock, so on CPython 3.11 and later no signal
handler runs between a change and the unlock; the loops (sweeps, reclaims,
unsubscribing) run inside the dirty bracket, so an interrupt there leaves
work the next holder redoes.

Waiting: subscribers sleep on ``notify``, publishers on ``room``, counting
themselves in ``waiters`` / ``room_waiters`` under the flock (Linux: a
futex through ``_pure_futex``; elsewhere a bounded growing sleep), in
slices of at most 100 ms, so that Ctrl-C, a ``close()`` from another thread
and a waker killed before its wake-up all end a wait promptly.

This file holds ``ChannelHandle``'s public face: creating, attaching and
opening a channel, the lock (``_run``), subscribing, and the calls that
``fastshm.channel`` makes.  The rest it inherits, one concern a file, as
the C core splits its channel (csrc/channel.c, channel_lend.c,
channel_repair.c, channel_receive.c): the layout in
``_pure_channel_layout``, lending (loan, commit, publish, discard) and the
sweeps and reclaims in ``_pure_channel_lend``, receiving and the waits in
``_pure_channel_receive``.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
import sys
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
    read_only_error,
    receive_too_small,
    too_big,
)
from ._errors import (
    ELOST as _ELOST,
)
from ._pure_channel_layout import (
    _BUSY,
    _COPY_UNDER_LOCK,
    _COUNTS,
    _DIRTY_SL,
    _E_CURSOR,
    _E_GEN,
    _EINVAL,
    _ENTRY,
    _FIELDS,
    _FOR_MESSAGE,
    _FOR_ROOM,
    _FREE_COUNT_SL,
    _GEOMETRY,
    _H_FLAGS,
    _H_HEAD,
    _H_LOCK,
    _H_NOTIFY,
    _H_PAYLOAD,
    _H_ROOM,
    _H_SLOTS,
    _H_SUB_MASK,
    _H_SWEEP_AT,
    _LOCK_SL,
    _M64,
    _NOTHING,
    _ONE4,
    _S_PINS,
    _SEQ_MAX,
    _SLOT,
    _SUB_MASK_SL,
    _UNTIMED,
    _WAKE_NOTIFY,
    _WAKE_ROOM,
    _ZERO4,
    _ZERO8,
    HEADER,
    MAGIC,
    OVERWRITE,
    PYLOCK,
    VERSION,
    _free_offset,
    _inconsistent,
    _index_offset,
    _p32,
    _p64,
    _payload_offset,
    _stride,
    _subs_offset,
    _u32,
    _u64,
    size_for,
)
from ._pure_channel_receive import _ChannelReceive

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


def _reentrant(name: str) -> RuntimeError:
    return RuntimeError(
        f"a channel call made from a signal handler while this thread is inside a call "
        f"on the same channel {name!r}; the python backend cannot go on there without "
        "waiting for its own lock. Publish or receive from the main code (e.g. let the "
        "handler set a flag), or use the native backend"
    )


def _release_deferred() -> None:
    """The deferred releases there are now, each tried once: one whose
    channel this thread is still inside is deferred again."""
    for _ in range(len(_deferred)):
        try:
            h, sub, slot = _deferred.pop()
        except IndexError:  # another thread took the last
            return
        h._run(h._release_locked, sub, slot)


class ChannelHandle(_ChannelReceive):
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
        ``_pure_lock``'s "what a signal may interrupt" for the shape of this.

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

    # -- under the lock: subscribing --

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
