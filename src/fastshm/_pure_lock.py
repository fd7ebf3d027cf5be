"""The python backend's writer lock and what a signal may interrupt: the
flock every thread takes on a descriptor of its own (``_ThreadState``), its
release where no signal handler runs (``_from_c``, ``_INLINE_RELEASE``),
waiting for a flock that another process holds (``_flock_wait``), the busy
markers that refuse a call re-entered from a signal handler
(``_thread_busy``, ``_reentrant``), what a forked child drops, and the
accessors of the shared words (``_put``, ``_u64``, the lock word's slice)."""

from __future__ import annotations

import itertools
import mmap
import os
import platform
import struct
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Optional

from . import _common as C

if TYPE_CHECKING:
    from ._pure import _Mapped

if C.WINDOWS:
    fcntl: Any = None
else:
    import fcntl

# ---- the writer lock, and what a signal may interrupt ----
#
# Writers of this backend exclude each other with an exclusive flock, then
# claim the header's lock word (which native writers take with a CAS) with a
# plain store.  flock belongs to an open file description, so every thread
# that takes it uses a descriptor of its own (an fd shared by two threads
# would let both in); the descriptors live in a threading.local and close
# with their thread or their handle.  A forked child drops the ones it
# inherited (they are its parent's descriptions) and opens its own.
#
# A KeyboardInterrupt (any exception a signal handler raises) can arrive at
# every point where CPython runs signal handlers: on CPython 3.11 and later
# only at calls, function entries and backward jumps, after the call's own
# work is done.  So the lock is taken inside the try whose finally releases
# it, and the release there (clear the word if claimed, then LOCK_UN) has no
# such point before the LOCK_UN call has done its work.  Older CPythons run
# handlers after almost any instruction; there the release is a single C
# call that does both steps (see _INLINE_RELEASE), which leaves only a second
# signal arriving while the first one's exception is being raised.  PyPy
# (whose functools is Python code) uses the inline release: best effort.
#
# A signal handler that stores while this thread is inside store() on the
# same segment would find the lock held by its own thread (deadlock), or, if
# it went ahead, write the slot the interrupted store is writing.  The busy
# marker (the frame of the store that holds the lock, per thread and segment)
# lets it refuse with a RuntimeError instead; a marker whose frame is no
# longer on the stack is stale (left by an interrupted store) and ignored.

_INLINE_RELEASE = sys.implementation.name != "cpython" or sys.version_info >= (3, 11)
if not _INLINE_RELEASE:
    import collections
    import functools

    # map(partial.__call__, ops) consumed by a deque runs every op from C, in
    # one call: no signal handler can run between them.
    _pcall: Any = functools.partial.__call__
    _consume: Any = collections.deque(maxlen=0).extend
    _partial: Any = functools.partial
else:
    # Releases are made inline; the objects import these names all the same.
    _pcall = _consume = _partial = None

# A call made where no signal handler may run after it: ``for _ in it:
# break`` over ``_from_c(fn, *args)`` calls fn(*args) once, from the
# iterator's C code, and CPython 3.11 and later run handlers only after
# CALL instructions, at function entries and at backward jumps, none of
# which that loop has.
_NO_CALL: Any = iter(int, 1)  # stands for a call that has nothing to do


def _from_c(fn: Any, *args: Any) -> Any:
    return itertools.starmap(fn, itertools.repeat(args))


# Loads: lock-free attempts before a writable handle takes the writer lock
# and copies under it, so that a load ends whatever the writers do.
_LOCKFREE_TRIES = 3
_TRIES = tuple(range(_LOCKFREE_TRIES))

# x86 keeps stores in order and loads in order, which the seqlock relies on
# without fences.  Elsewhere (ARM64, POWER, ...) readers take a shared flock
# around their copy: the kernel's lock orders memory against the writers'
# exclusive flock.  A test may set this to False to exercise that path.
_STRONG_ORDER: bool = platform.machine().lower() in {
    "x86_64", "amd64", "i386", "i686", "x86",
}

_LINUX = sys.platform.startswith("linux")
_flock: Any = None if fcntl is None else fcntl.flock
_LOCK_EX = 0 if fcntl is None else fcntl.LOCK_EX
_LOCK_SH = 0 if fcntl is None else fcntl.LOCK_SH
_LOCK_UN = 0 if fcntl is None else fcntl.LOCK_UN
_LOCK_NB = 0 if fcntl is None else fcntl.LOCK_NB
_LOCK_EX_NB = _LOCK_EX | _LOCK_NB
_LOCK_SH_NB = _LOCK_SH | _LOCK_NB
_LOCK_SL = slice(C.H_LOCK, C.H_LOCK + 8)
_H_NEXT = C.H_LOCK_NEXT
# The lock word and the turn word (lock_next), in one look.
_LOCK_AND_NEXT = struct.Struct(f"<Q{C.H_LOCK_NEXT - C.H_LOCK - 8}xQ").unpack_from
_NEXT_SL = slice(C.H_LOCK_NEXT, C.H_LOCK_NEXT + 8)
_SEQ_SL = slice(C.H_SEQ, C.H_SEQ + 8)
_NOTIFY_SL = slice(C.H_NOTIFY, C.H_NOTIFY + 4)
_ZERO8 = bytes(8)
_u64 = C.U64.unpack_from
_slot_words = C.SLOT_WORDS.unpack_from
_HDR = C.HEADER_SIZE
_SLOT_HDR = C.SLOT_HEADER_SIZE
_H_SEQ = C.H_SEQ
_p64 = C.U64.pack
_u32 = C.U32.unpack_from
_p32 = C.U32.pack


def _put(mm: mmap.mmap, offset: int, st: Any, value: int) -> None:
    """Write one shared word in a single copy.  ``Struct.pack_into`` zero-fills
    its target before packing, so another process could read 0 in a published
    counter, slot word or lock word; a slice assignment is one memcpy."""
    mm[offset : offset + st.size] = st.pack(value)


_busy_local = threading.local()

# ---- waiting for a flock that another process holds ----
#
# A holder that runs lets go within microseconds or a copy's time; one that
# holds on is alive but not running -- stopped with Ctrl-Z or SIGSTOP, paused
# in a debugger -- and holds on until it resumes.  So no wait for the flock
# outlasts the caller's deadline: every attempt is a LOCK_NB, and between
# attempts the waiter sleeps, 50 us at first, doubling.  While the object's
# notify word or its lock word moves (others commit: the lock changes hands)
# the sleep stays at 2 ms at most, so a waiter keeps its chances among busy
# holders, and it starts again at 50 us when the lock word has just been
# cleared (holders clear it before they let go of the flock); while neither
# moves (the holder is stuck) it grows to 50 ms, which keeps the CPU a
# waiter spends behind a stopped holder near 0.3% of a core (a wake-up costs
# tens of microseconds), as little as a queue's idle sleeper.  A call that
# must not wait (timeout 0, the *_nowait forms) makes a few attempts over
# about a millisecond, for a holder preempted mid-commit.  A call without a
# deadline waits the same way rather than in a blocking flock: a signal that
# landed just before a blocking flock began would wait for the holder, and so
# would a close() from another thread; here a signal ends the sleep it lands
# in and its handler runs, and every round (50 ms at most) looks at the
# handle.

_NOW = -1.0  # the deadline of a call that must not wait
_LOCK_BUSY = -2  # QueueHandle._enlist: the flock stayed held until the deadline
_LOCK_PAUSE_MIN_S = 50e-6
_LOCK_PAUSE_BUSY_S = 0.002
_LOCK_PAUSE_MAX_S = 0.05
_LOCK_GRACE_S = (50e-6, 100e-6, 200e-6, 400e-6)
# A load waiting for the writer lock gives up on it when this long passes
# without a store, and copies without it (a writer stopped with the lock
# spoils no copy), as fshm_read_lock does.
_READ_LOCK_MAX_S = 0.05
_HELD = object()  # SegmentHandle._read_locked: what it returns then
# How long a turn to the lock (lock_next) is kept while the lock sits free
# without its owner taking it, as TURN_MAX_NS in slot.c.
_TURN_MAX_S = 0.01
_monotonic = time.monotonic


def _flock_wait(h: "_Mapped", fd: int, how: int, deadline: Optional[float]) -> bool:
    """After an attempt found the flock on ``fd`` held: attempt again
    (``how`` has LOCK_NB) until it is ours, True, or ``deadline`` passes,
    False (None: no deadline; _NOW: a few attempts).  ValueError once
    another thread has closed ``h``."""
    if deadline == _NOW:
        for pause in _LOCK_GRACE_S:
            time.sleep(pause)
            try:
                _flock(fd, how)
                return True
            except BlockingIOError:
                pass
        return False
    mm = h._mm
    seen = (_u32(mm, C.H_NOTIFY)[0], _u64(mm, C.H_LOCK)[0])
    pause = _LOCK_PAUSE_MIN_S
    while True:
        h._check_open()
        if deadline is not None:
            left = deadline - _monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
        else:
            time.sleep(pause)
        try:
            _flock(fd, how)
            return True
        except BlockingIOError:
            pass
        now = (_u32(mm, C.H_NOTIFY)[0], _u64(mm, C.H_LOCK)[0])
        if now == seen:
            pause = min(pause * 2, _LOCK_PAUSE_MAX_S)
        elif now[1] == 0:  # the holder has just let go of the word: the flock follows
            pause = _LOCK_PAUSE_MIN_S
        else:
            pause = min(pause * 2, _LOCK_PAUSE_BUSY_S)
        seen = now


def _thread_busy() -> "dict[Any, Any]":
    """This thread's busy markers: segment key -> frame holding its lock."""
    try:
        d: "dict[Any, Any]" = _busy_local.d
    except AttributeError:
        # One C call: a signal handler that gets here first, in between,
        # makes the dict this code then uses too.
        d = _busy_local.__dict__.setdefault("d", {})
    return d


def _on_stack(frame: Any) -> bool:
    f: Any = sys._getframe(2)
    while f is not None:
        if f is frame:
            return True
        f = f.f_back
    return False


def _reentrant(name: str, frame: Any, what: str) -> RuntimeError:
    inner = "store" if frame.f_code.co_name == "store" else "load"
    return RuntimeError(
        f"{what}() called from a signal handler while this thread is inside "
        f"{inner}() on the same segment {name!r}; the python backend cannot "
        "store there without waiting for itself or overwriting the message being "
        "written. Store from the main code (e.g. let the handler set a flag), or "
        "use the native backend"
    )


class _ThreadState:
    """One thread's lock state for one handle."""

    __slots__ = ("fd", "claimed", "ident", "me", "busy", "release", "clear", "unflock",
                 "noop", "__weakref__")

    fd: int
    release: Any  # LOCK_UN on fd, called from C (_from_c)
    claimed: bool  # the lock word holds our id (inline release only)
    ident: bytes  # that id, packed
    me: int
    busy: "dict[Any, Any]"
    clear: Any  # the composed release's steps (old CPythons only)
    unflock: Any
    noop: Any

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def __del__(self) -> None:
        try:
            self.close()
        except AttributeError:
            pass


_open_handles: "weakref.WeakSet[_Mapped]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _busy_local
    _busy_local = threading.local()
    for h in list(_open_handles):
        for t in list(h._states):
            t.close()
        h._states = weakref.WeakSet()
        h._tls = threading.local()


if hasattr(os, "register_at_fork") and not C.WINDOWS:
    os.register_at_fork(after_in_child=_after_fork_in_child)

