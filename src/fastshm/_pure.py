"""The python backend: the same layout and behaviour as the C core, in pure
Python over ``mmap`` (``_posixshmem`` on POSIX, a tagged mapping on
Windows).

It is the fallback where the C extension is not built, and the baseline the
benchmarks compare against.  What pure Python cannot do is said where it
matters: it has no atomic compare-and-swap, so its writers exclude each other
with an OS file lock (POSIX) rather than with the lock word alone, and its
segment waiters poll with a growing sleep instead of sleeping on a futex
(its queue waiters do sleep on one, on Linux).

This file is the backend's module (its name, features and surface) and holds
what every object builds on, ``_Mapped``: a mapped object and every thread's
lock state for it.  The machinery they share has a file for each concern:
``_pure_process`` (process identity and liveness), ``_pure_futex`` (the
futex calls), ``_pure_lock`` (the writer lock, what a signal may interrupt,
the shared words), ``_pure_map`` (naming, opening and mapping, as
map_posix.c) and ``_pure_open`` (opening, creating and taking over an
object, as slot.c).  Each object has a file of its own, as in csrc/:
``_pure_segment`` (``SegmentHandle``), ``_pure_queue`` (``QueueHandle``) and
``_pure_channel`` (``ChannelHandle``).
"""

from __future__ import annotations

import errno
import mmap
import os
import sys
import threading
import weakref
from typing import Any

from . import _common as C
from ._errors import FormatError, closed_error

# What the objects (_pure_segment, _pure_queue, _pure_channel) and the tests
# take from this module, from the file that holds it.
from ._pure_futex import _FUTEX_WAIT_OK as _FUTEX_WAIT_OK
from ._pure_futex import _HAS_FUTEX as _HAS_FUTEX
from ._pure_futex import _futex_anchor
from ._pure_futex import _futex_wait as _futex_wait
from ._pure_futex import _futex_wake as _futex_wake
from ._pure_futex import _futex_waker as _futex_waker
from ._pure_futex import _uncount as _uncount
from ._pure_lock import _H_NEXT as _H_NEXT
from ._pure_lock import _H_SEQ as _H_SEQ
from ._pure_lock import _HDR as _HDR
from ._pure_lock import _HELD as _HELD
from ._pure_lock import _INLINE_RELEASE as _INLINE_RELEASE
from ._pure_lock import _LINUX, _NO_CALL, _from_c, _open_handles, _partial, _thread_busy
from ._pure_lock import _LOCK_AND_NEXT as _LOCK_AND_NEXT
from ._pure_lock import _LOCK_BUSY as _LOCK_BUSY
from ._pure_lock import _LOCK_EX as _LOCK_EX
from ._pure_lock import _LOCK_EX_NB as _LOCK_EX_NB
from ._pure_lock import _LOCK_PAUSE_MAX_S as _LOCK_PAUSE_MAX_S
from ._pure_lock import _LOCK_SH as _LOCK_SH
from ._pure_lock import _LOCK_SH_NB as _LOCK_SH_NB
from ._pure_lock import _LOCK_SL as _LOCK_SL
from ._pure_lock import _LOCK_UN as _LOCK_UN
from ._pure_lock import _LOCKFREE_TRIES as _LOCKFREE_TRIES
from ._pure_lock import _NEXT_SL as _NEXT_SL
from ._pure_lock import _NOTIFY_SL as _NOTIFY_SL
from ._pure_lock import _NOW as _NOW
from ._pure_lock import _READ_LOCK_MAX_S as _READ_LOCK_MAX_S
from ._pure_lock import _SEQ_SL as _SEQ_SL
from ._pure_lock import _SLOT_HDR as _SLOT_HDR
from ._pure_lock import _STRONG_ORDER as _STRONG_ORDER
from ._pure_lock import _TRIES as _TRIES
from ._pure_lock import _TURN_MAX_S as _TURN_MAX_S
from ._pure_lock import _ZERO8 as _ZERO8
from ._pure_lock import _consume as _consume
from ._pure_lock import _flock as _flock
from ._pure_lock import _flock_wait as _flock_wait
from ._pure_lock import _monotonic as _monotonic
from ._pure_lock import _on_stack as _on_stack
from ._pure_lock import _p32 as _p32
from ._pure_lock import _p64 as _p64
from ._pure_lock import _pcall as _pcall
from ._pure_lock import _put as _put
from ._pure_lock import _reentrant as _reentrant
from ._pure_lock import _slot_words as _slot_words
from ._pure_lock import _ThreadState as _ThreadState
from ._pure_lock import _u32 as _u32
from ._pure_lock import _u64 as _u64
from ._pure_map import _TRACKFD_ARG, RawMapping, unlink
from ._pure_open import _attach as _attach
from ._pure_open import _check_header as _check_header
from ._pure_open import _initialise as _initialise
from ._pure_open import _open_object as _open_object
from ._pure_open import _publish as _publish
from ._pure_process import owner_dead, self_id

name = "python"
binding = "python"
# "file_lock": writers exclude each other with flock (POSIX only; on Windows
# the python backend has no writer lock at all).  "quiet_commit": no signal
# handler runs between a queue's commit and the return of its put or get
# (CPython 3.11 and later; see "after the commit"), so that a put that
# raises KeyboardInterrupt has put nothing; elsewhere that is best effort.
features: "frozenset[str]" = frozenset() if C.WINDOWS else frozenset(
    {"file_lock", "quiet_commit"}
    if sys.implementation.name == "cpython" and sys.version_info >= (3, 11)
    else {"file_lock"}
)

if C.WINDOWS:
    NAME_MAX = 32767
    fcntl: Any = None
else:
    import _posixshmem
    import fcntl

    NAME_MAX = 30 if sys.platform == "darwin" else 255

_WAIT_SPIN_S = 50e-6
_WAIT_SLEEP_MAX_S = 0.002


# ---- a mapped object: what a segment, a queue and a channel share ----


class _Mapped:
    """A mapped fastshm object and every thread's lock state for it."""

    __slots__ = (
        "name", "_mm", "_mv", "_fd", "_src", "_key", "_anchor", "_tls", "_states",
        "size", "created", "readonly", "closed", "__weakref__",
    )
    _KIND = "object"  # in messages: "segment" or "queue"

    def _setup(self, name: str, mm: mmap.mmap, fd: int, dup: int, size: int,
               created: bool, read_only: bool) -> None:
        self.name = name
        self.closed = False  # set by close() of its Segment or Queue: blocked calls end
        self._mm = mm
        self._mv = memoryview(mm)
        self.readonly = read_only
        self._key: Any = name
        # A descriptor of this object that threads reopen to lock: the
        # mapping's duplicate (as _map found it; _open_thread_fd checks).
        self._src: int = dup
        if fd >= 0:
            st = os.fstat(fd)
            self._key = (st.st_dev, st.st_ino)
            if _LINUX and not _TRACKFD_ARG:
                # The mapping holds a duplicate of the descriptor: one is
                # enough; threads that lock reopen it through /proc.
                os.close(fd)
                fd = -1
        self._fd = fd
        # The futex word of native waiters (only writers wake it).
        self._anchor = None if read_only else _futex_anchor(mm)
        self._tls = threading.local()
        self._states: "weakref.WeakSet[_ThreadState]" = weakref.WeakSet()
        if not C.WINDOWS:
            _open_handles.add(self)
        self.size = size
        self.created = created

    def __del__(self) -> None:
        try:
            for t in list(self._states):
                t.close()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        except (AttributeError, OSError):
            pass

    def _check_open(self) -> None:
        """Between two sleeps of a wait: ValueError once another thread has
        closed the object (the wait changed nothing)."""
        if self.closed:
            raise closed_error(self._KIND, self.name)

    # -- per-thread lock state --

    def _thread_state(self) -> _ThreadState:
        t = _ThreadState()
        t.fd = -1
        t.claimed = False
        t.me = self_id()
        t.ident = _p64(t.me)
        t.busy = _thread_busy()
        if fcntl is not None:
            t.fd = self._open_thread_fd()
        t.release = _from_c(_flock, t.fd, _LOCK_UN) if t.fd >= 0 else _NO_CALL
        if not _INLINE_RELEASE:
            t.clear = _partial(self._mm.__setitem__, _LOCK_SL, _ZERO8)
            t.noop = _partial(int)
            t.unflock = _partial(_flock, t.fd, _LOCK_UN) if t.fd >= 0 else t.noop
        # A signal handler may have made this thread's state meanwhile: keep
        # the first (one C call), drop ours.
        first: _ThreadState = self._tls.__dict__.setdefault("t", t)
        if first is not t:
            t.close()
            return first
        self._states.add(t)
        return t

    def _reopen(self, cands: "list[int]") -> int:
        """A new description of the first of ``cands`` that is a descriptor
        of this object, through /proc/self/fd (Linux); -1 if none is."""
        if not _LINUX:
            return -1
        for n in cands:
            path = f"/proc/self/fd/{n}"
            try:
                # Looked at before it is opened: the number may have been
                # closed and reused for something that an open would wait
                # for or act on (a FIFO, a device).
                st = os.stat(path)
                if (st.st_dev, st.st_ino) != self._key:
                    continue
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            except OSError:
                continue
            if self._same(fd):
                if n != self._fd:
                    self._src = n
                return fd
            os.close(fd)
        return -1

    def _same(self, fd: int) -> bool:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == self._key  # type: ignore[no-any-return]

    def _open_thread_fd(self) -> int:
        """A descriptor of this thread's own (a new open file description of
        the object), for flock; opened read-only, which flock needs no more
        than."""
        flags = os.O_RDONLY
        # Reopening /proc/self/fd/N makes a new description of N's object: N
        # is the handle's fd or the mapping's duplicate, each checked, as is
        # the object the name leads to (it may be gone, or another).  Only
        # when all of them fail, every descriptor of the process is looked
        # at: a cost in proportion to how many are open.
        fd = self._reopen([n for n in (self._fd, self._src) if n >= 0])
        if fd >= 0:
            return fd
        try:
            fd = int(_posixshmem.shm_open("/" + self.name, flags, mode=0))
        except OSError:
            pass
        else:
            if self._same(fd):
                return fd
            os.close(fd)
        if _LINUX:
            cands = []
            for entry in os.listdir("/proc/self/fd"):
                try:
                    st = os.stat(f"/proc/self/fd/{entry}")
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) == self._key:
                    cands.append(int(entry))
            fd = self._reopen(cands)  # (each looked at twice: a rare path)
            if fd >= 0:
                return fd
        if self._fd >= 0:
            # The name is gone or names another object: a duplicate shares
            # the handle's description, so this thread's stores exclude other
            # processes' but not those of the handle's other threads.
            return os.dup(self._fd)
        raise OSError(errno.EBADF, f"cannot reopen {self.name!r} for locking")


def __getattr__(attr: str) -> Any:
    """The objects, each in a file of its own that builds on this one:
    ``SegmentHandle`` (_pure_segment) and ``QueueHandle`` (_pure_queue),
    imported when first asked for, so that either file may be imported
    first."""
    if attr == "SegmentHandle":
        from ._pure_segment import SegmentHandle

        return SegmentHandle
    if attr == "QueueHandle":
        from ._pure_queue import QueueHandle

        return QueueHandle
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


# (and SegmentHandle, QueueHandle: see __getattr__)
__all__ = ["FormatError", "RawMapping", "unlink", "self_id", "owner_dead"]
