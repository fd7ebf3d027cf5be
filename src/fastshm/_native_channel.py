"""The native backend's channel: csrc/channel.c through cffi.

``ChannelHandle`` is what ``fastshm.channel`` (Publisher, Subscriber)
calls; both native routes use it (a C-API fast path is still to come).
A call that may block waits in slices of at most ``_SLICE_NS``, so signal
handlers run and a ``close()`` from another thread ends it between them:
the first slice is the C call's own wait (which spins first), the later
ones sleep in ``fshm_channel_wait_room`` / ``fshm_channel_wait`` before the
call is tried again, as ``_native.QueueHandle`` does for queues.
"""

from __future__ import annotations

import errno
import time
from typing import Any, Callable, Dict, Optional, Tuple

from ._errors import (
    EBUSY,
    EFORMAT,
    EFULL,
    ESMALL,
    ETIMEOUT,
    channel_full_error,
    closed_error,
    lost_error,
    raise_for,
    read_only_error,
    receive_too_small,
)
from ._fastshm import ffi, lib
from ._native import _how, _raise_open

_SLICE_NS = 100_000_000
_EINTR = errno.EINTR
# Codes that end a slice without an answer: no slot (or no message) yet, or
# the lock held by another process through the slice.
_NOT_YET = (EFULL, ETIMEOUT, EBUSY, _EINTR)

def _slice(deadline: Optional[float]) -> int:
    if deadline is None:
        return _SLICE_NS
    left = deadline - time.monotonic()
    return 0 if left <= 0 else min(_SLICE_NS, int(left * 1e9))


class ChannelHandle:
    """An open channel: the C ``fshm_channel`` and its mapping."""

    __slots__ = ("name", "_c", "owner", "address", "view", "slot_size", "slots", "history",
                 "max_subscribers", "flags", "size", "created", "readonly", "closed")

    def __init__(self, name: str, how: int, slot_size: int, slots: int, history: int,
                 max_subscribers: int, flags: int, mode: int, any_owner: bool) -> None:
        c = ffi.new("fshm_channel *")
        m = ffi.new("fshm_map *")
        args = (c, m, name.encode("utf-8"), _how(how, any_owner), slot_size, slots, history,
                max_subscribers, flags, mode)
        rc = lib.fshm_channel_open(*args)
        while rc == _EINTR:  # a signal came while waiting for its creator; its handler ran
            rc = lib.fshm_channel_open(*args)
        if rc:
            _raise_open(rc, m, name, "channel", args[3])
        size = int(m.size)
        # Unmapped when this handle, every sample pinned from it and every
        # view of a loan are gone.
        self.owner = ffi.gc(ffi.cast("unsigned char *", m.base),
                            lambda p: lib.fshm_unmap(p, size), size=size)
        self.address = int(ffi.cast("uintptr_t", self.owner))
        self.readonly = bool(m.readonly)
        view = memoryview(ffi.buffer(self.owner, size))
        self.view = view.toreadonly() if self.readonly else view
        self.name = name
        self._c = c
        self.size = size
        self.created = bool(m.created)
        self.slot_size = int(c.slot_size)
        self.slots = int(c.slots)
        self.history = int(c.history)
        self.max_subscribers = int(c.max_subscribers)
        self.flags = int(c.flags)
        self.closed = False  # set by close(): blocked calls end at their next slice

    # -- waiting --

    def _call(self, fn: Callable[[int], int], wait: Callable[[int], int],
              timeout: Optional[float]) -> int:
        """fn(timeout_ns) in slices; between them wait(ns) sleeps without
        spinning, signal handlers run, and a close() from another thread
        ends the call (ValueError).  Returns fn's code."""
        if timeout == 0:
            return fn(0)
        deadline = None if timeout is None else time.monotonic() + timeout
        slice_ns = _slice(deadline)
        while True:
            rc = fn(slice_ns)
            if rc not in _NOT_YET or (slice_ns == 0 and rc != _EINTR):
                return rc
            while True:
                if self.closed:
                    raise closed_error("channel", self.name)
                slice_ns = _slice(deadline)
                if slice_ns == 0:
                    break  # out of time: fn's last try, without a wait
                woke = wait(slice_ns)
                if woke == 0:
                    slice_ns = _slice(deadline)
                    break
                if woke not in _NOT_YET:
                    return woke

    def _room(self, ns: int) -> int:
        return int(lib.fshm_channel_wait_room(self._c, ns))

    def _fail(self, rc: int) -> None:
        if self.readonly and rc == errno.EACCES:
            raise read_only_error(self.name, "channel")
        raise_for(rc, self.name, "tables" if rc == EFORMAT else "", "channel")

    # -- publishing --

    def publish(self, data: Any, timeout: Optional[float]) -> int:
        """Copy ``data`` into a slot and publish it: its number.
        TimeoutError when no slot came free in time, or another process
        held the lock throughout."""
        seq = ffi.new("uint64_t *")
        src = data if type(data) is bytes else ffi.from_buffer(data)
        c, n = self._c, len(data)
        rc = self._call(lambda ns: lib.fshm_channel_publish(c, src, n, ns, seq),
                        self._room, timeout)
        return self._done(rc, seq, timeout)

    def _done(self, rc: int, seq: Any, timeout: Optional[float]) -> int:
        if rc == 0:
            return int(seq[0])
        if rc == EFULL or rc == EBUSY:
            raise channel_full_error(self.name, timeout, rc == EBUSY, self.lock_owner())
        if rc == lib.FSHM_ELOST:  # a commit of a loan that is no longer this process's
            raise lost_error(self.name)
        self._fail(rc)
        return 0  # not reached

    def loan(self, size: int, timeout: Optional[float]) -> Tuple[Any, memoryview]:
        """A slot lent for ``size`` bytes: (loan, writable view of them).
        TimeoutError as publish."""
        loan = ffi.new("fshm_loan *")
        c = self._c
        rc = self._call(lambda ns: lib.fshm_channel_loan(c, size, loan, ns), self._room, timeout)
        if rc:
            self._done(rc, None, timeout)
        off = int(loan.offset)
        return loan, self.view[off:off + size]

    def commit(self, loan: Any, length: int) -> int:
        """Publish a loan: its number.  It never waits for room (the slot is
        lent), only for the lock, as long as that takes."""
        seq = ffi.new("uint64_t *")
        rc = lib.fshm_channel_commit(self._c, loan, length, -1, seq)
        while rc == _EINTR:  # the loan is still held: commit it
            rc = lib.fshm_channel_commit(self._c, loan, length, -1, seq)
        return self._done(rc, seq, None)

    def discard(self, loan: Any) -> None:
        lib.fshm_channel_discard(self._c, loan)

    # -- subscribing --

    def subscribe(self) -> Any:
        sub = ffi.new("fshm_sub *")
        rc = lib.fshm_channel_subscribe(self._c, sub, -1)
        while rc == _EINTR:
            rc = lib.fshm_channel_subscribe(self._c, sub, -1)
        if rc:
            if rc == lib.FSHM_ESUBFULL:
                return None
            self._fail(rc)
        return sub

    def unsubscribe(self, sub: Any) -> None:
        lib.fshm_channel_unsubscribe(self._c, sub)

    def receive(self, sub: Any,
                timeout: Optional[float]) -> Optional[Tuple[int, int, int, int, int]]:
        """The next message, pinned: (slot, offset, length, seq, missed
        before it); None when none came in time."""
        sample = ffi.new("fshm_sample *")
        missed = ffi.new("uint64_t *")
        c = self._c
        rc = self._call(lambda ns: lib.fshm_channel_receive(c, sub, sample, missed, ns),
                        lambda ns: lib.fshm_channel_wait(c, sub, ns),
                        timeout)
        if rc == 0:
            return (int(sample.slot), int(sample.offset), int(sample.length), int(sample.seq),
                    int(missed[0]))
        self._no_message(rc)
        return None

    def pending(self, sub: Any) -> bool:
        """Whether a message ``sub`` has not reached is published (True
        also when the next receive would raise).  Never waits."""
        if self.closed:
            return True
        return lib.fshm_channel_wait(self._c, sub, 0) != ETIMEOUT  # type: ignore[no-any-return]

    def receive_into(self, sub: Any, dst: memoryview,
                     timeout: Optional[float]) -> Optional[Tuple[int, int, int]]:
        """The next message copied into ``dst`` (a writable byte-wise view)
        and released: (length, seq, missed before it); None when none came
        in time.  ValueError, nothing received, when dst is too small."""
        sample = ffi.new("fshm_sample *")
        missed = ffi.new("uint64_t *")
        c = self._c
        buf = ffi.from_buffer(dst, require_writable=True)
        cap = dst.nbytes
        rc = self._call(
            lambda ns: lib.fshm_channel_receive_into(c, sub, buf, cap, sample, missed, ns),
            lambda ns: lib.fshm_channel_wait(c, sub, ns),
            timeout)
        if rc == 0:
            if self.closed:
                # By another thread while this one copied: unsubscribing
                # cleared the pin, and the copy may be torn.
                raise closed_error("channel", self.name)
            return int(sample.length), int(sample.seq), int(missed[0])
        if rc == ESMALL:
            raise receive_too_small(cap, int(sample.length))
        self._no_message(rc)
        return None

    def _no_message(self, rc: int) -> None:
        """For a receive that got no message: returns when none came in
        time, raises what any other code means."""
        if rc == ETIMEOUT:
            return
        if rc == lib.FSHM_ELOST:
            if self.closed:  # by another thread, which gave the entry up
                raise closed_error("channel", self.name)
            raise lost_error(self.name)
        self._fail(rc)

    def release(self, sub: Any, slot: int) -> None:
        lib.fshm_channel_release(self._c, sub, slot)

    # -- snapshots and tools --

    def head(self) -> int:
        return int(lib.fshm_channel_head(self._c))

    def subscribers(self) -> int:
        return int(lib.fshm_channel_subscribers(self._c))

    def subscriber_info(self, index: int) -> Optional[Dict[str, int]]:
        info = ffi.new("fshm_sub_info *")
        if lib.fshm_channel_subscriber_info(self._c, index, info) != 0 or not info.owner:
            return None
        return {"owner": int(info.owner), "cursor": int(info.cursor),
                "missed": int(info.missed), "received": int(info.received),
                "lag": int(info.lag), "pinned": int(info.pinned)}

    def lock_owner(self) -> int:
        return int(lib.fshm_channel_lock_owner(self._c))

    def break_lock(self, owner: int) -> bool:
        return bool(lib.fshm_channel_break_lock(self._c, owner) == 0)

