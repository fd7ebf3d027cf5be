"""The python backend: the same layout and behaviour as the C core, in pure
Python over ``mmap`` (``_posixshmem`` on POSIX, a tagged mapping on
Windows).

It is the fallback where the C extension is not built, and the baseline the
benchmarks compare against.  What pure Python cannot do is said where it
matters: it has no atomic compare-and-swap, so its writers exclude each other
with an OS file lock (POSIX) rather than with the lock word alone, and its
segment waiters poll with a growing sleep instead of sleeping on a futex
(its queue waiters do sleep on one, on Linux).

This file holds what every object shares: process identity and liveness,
the futex helpers, the mapping layer, the writer lock and what a signal may
interrupt, and opening, creating and taking over an object (``_Mapped``).
Each object has a file of its own, as in csrc/: ``_pure_segment``
(``SegmentHandle``), ``_pure_queue`` (``QueueHandle``) and
``_pure_channel`` (``ChannelHandle``).
"""

from __future__ import annotations

import errno
import itertools
import mmap
import os
import platform
import stat
import struct
import sys
import threading
import time
import weakref
from typing import Any, Callable, List, Optional, Tuple, Union

from . import _common as C
from ._errors import (
    EABANDONED,
    EBUSY,
    EEMPTY,
    EFORMAT,
    EKIND,
    ENOTREADY,
    ENOTREG,
    EVERSION,
    FormatError,
    closed_error,
    os_error,
    owner_error,
    raise_for,
)

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
    import _winapi

    NAME_MAX = 32767
    fcntl: Any = None
else:
    import _posixshmem
    import fcntl

    NAME_MAX = 30 if sys.platform == "darwin" else 255

_READY_WAIT_S = 1.0
# A channel's magic ("FSHC", _pure_channel): a segment or queue opener names it.
_CHANNEL_MAGIC = 0x43485346
# The longest an opener waits for a creator that is alive (as slot.c does):
# a stopped creator, or a dead one whose pid was reused, would hold it forever.
_CREATOR_WAIT_S = 60.0
_WAIT_SPIN_S = 50e-6
_WAIT_SLEEP_MAX_S = 0.002

# ---- process identity for the writer lock (the same word the C core uses) ----

_self_id = 0


def _forget_id() -> None:
    global _self_id
    _self_id = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_id)


def self_id() -> int:
    global _self_id
    if not _self_id:
        tag = 0
        if sys.platform.startswith("linux"):
            try:
                tag = os.stat("/proc/self/ns/pid").st_ino & 0xFFFFFFFF
            except OSError:
                pass
        _self_id = (tag << 32) | (os.getpid() & 0xFFFFFFFF)
    return _self_id


def owner_dead(owner: int) -> int:
    pid = owner & 0xFFFFFFFF
    if pid == 0 or (owner >> 32) != (self_id() >> 32):
        return -1
    if sys.platform == "win32":  # spelled so that type checkers follow it
        return _owner_dead_windows(pid)
    if pid > 0x7FFFFFFF:
        # Not a pid (pid_t is signed: fshm_owner_dead sees it <= 0), and
        # os.kill would raise OverflowError on it: a word nobody can judge.
        return -1
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return 1
    except PermissionError:
        return 0
    return 1 if _is_zombie(pid) else 0


if sys.platform == "win32":

    def _owner_dead_windows(pid: int) -> int:
        """As fshm_owner_dead in map_win32.c: a process object is signalled once
        its process has exited (the exit code alone could be STILL_ACTIVE)."""
        query_limited_information, synchronize = 0x1000, 0x00100000
        try:
            h = _winapi.OpenProcess(query_limited_information | synchronize, False, pid)
        except OSError as e:
            # ERROR_INVALID_PARAMETER: no process has that id; ERROR_ACCESS_DENIED:
            # one does, owned by someone we may not inspect.
            return {87: 1, 5: 0}.get(getattr(e, "winerror", 0) or 0, -1)
        try:
            waited = _winapi.WaitForSingleObject(h, 0)
        finally:
            _winapi.CloseHandle(h)
        if waited == _winapi.WAIT_OBJECT_0:
            return 1
        return 0 if waited == _winapi.WAIT_TIMEOUT else -1


def _is_zombie(pid: int) -> bool:
    """Killed but not yet reaped by its parent: kill(0) still succeeds, but
    /proc says Z (or X) and no thread of it is left (as in map_posix.c)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    if state not in (b"Z", b"X"):
        return False
    try:
        return len(os.listdir(f"/proc/{pid}/task")) <= 1
    except OSError:
        return True


# ---- the futex: wakes, so native waiters see python stores at once, and
# the queue's waits ----
#
# Through each interpreter's own foreign-function interface: ctypes on
# CPython (in the standard library), cffi's ABI mode on PyPy (built into it).
# PyPy's ctypes is written in Python and takes 0.1-0.3 ms of CPU a call until
# its JIT has warmed up, which a waiter's one call per slice never does; its
# cffi takes a few microseconds.  syscall() is variadic; both declare the
# futex call's seven arguments with their C types (so an address is never
# truncated), which on x86-64 and AArch64 Linux passes them where glibc's
# syscall(), an assembly stub, takes them.

_FUTEX_WAIT, _FUTEX_WAKE = 0, 1  # not the _PRIVATE ones: the word is shared
_SYS_futex = {"x86_64": 202, "aarch64": 98}.get(platform.machine(), 0)
_FUTEX_SIG = "long syscall(long, void *, int, unsigned int, void *, void *, int);"

_futex_ffi: Any = None
_ct: Any = None  # ctypes, on CPython
if sys.platform.startswith("linux") and _SYS_futex:
    try:
        if sys.implementation.name == "pypy":
            import cffi

            _futex_ffi = cffi.FFI()
            _futex_ffi.cdef(_FUTEX_SIG)
            _futex_lib = _futex_ffi.dlopen(None)
        else:
            import ctypes

            _syscall = ctypes.CDLL(None, use_errno=True).syscall
            _syscall.restype = ctypes.c_long
            _syscall.argtypes = (ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)

            class _Timespec(ctypes.Structure):
                _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

            _ct = ctypes
    except (ImportError, OSError, AttributeError):
        _futex_ffi = _ct = None

# What a FUTEX_WAIT may end with besides a wake: the word had changed
# already, the timeout, a signal.  Anything else (a seccomp filter's ENOSYS
# or EPERM, say) turns the queue's waits back to polling for good, rather
# than into a busy loop of failing calls.
_FUTEX_WAIT_OK = frozenset({0, errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR})
_HAS_FUTEX = _futex_ffi is not None or _ct is not None


def _futex_anchor(mm: mmap.mmap) -> Any:
    """What the futex calls address the mapping by; it holds the mapping's
    buffer exported (so it cannot be unmapped under a sleeper).  None
    without a futex."""
    if _futex_ffi is not None:
        return _futex_ffi.from_buffer(mm)
    if _ct is not None:
        first = _ct.c_char.from_buffer(mm)
        return _ct.addressof(first), first
    return None


def _futex_wake(anchor: Any, offset: int) -> None:
    if anchor is None:
        return
    if _futex_ffi is not None:
        _futex_lib.syscall(_SYS_futex, anchor + offset, _FUTEX_WAKE, 0x7FFFFFFF,
                           _futex_ffi.NULL, _futex_ffi.NULL, 0)
    else:
        _syscall(_SYS_futex, anchor[0] + offset, _FUTEX_WAKE, 0x7FFFFFFF, None, None, 0)


def _futex_waker(anchor: Any, offset: int) -> Any:
    """``_futex_wake(anchor, offset)`` as a call from C (see _from_c)."""
    if anchor is None:
        return _NO_CALL
    if _futex_ffi is not None:
        return _from_c(_futex_lib.syscall, _SYS_futex, anchor + offset, _FUTEX_WAKE,
                       0x7FFFFFFF, _futex_ffi.NULL, _futex_ffi.NULL, 0)
    return _from_c(_syscall, _SYS_futex, anchor[0] + offset, _FUTEX_WAKE, 0x7FFFFFFF,
                   None, None, 0)


def _futex_wait(anchor: Any, offset: int, expected: int, timeout_s: float) -> int:
    """Sleep while the u32 at ``offset`` holds ``expected``, for at most
    ``timeout_s`` seconds (a relative timeout): 0 when woken, else the errno
    (EAGAIN: it held another value already; ETIMEDOUT; EINTR: a signal).
    Woken or not, the caller re-checks what it waits for.  Both interfaces
    drop the GIL around the call, and a signal ends it with EINTR, after
    which the interpreter runs the Python handler as the call returns."""
    ns = int(timeout_s * 1e9) if timeout_s > 0 else 0
    sec, nsec = divmod(ns, 1_000_000_000)
    if _futex_ffi is not None:
        ffi = _futex_ffi
        r = _futex_lib.syscall(_SYS_futex, anchor + offset, _FUTEX_WAIT,
                               expected & 0xFFFFFFFF, ffi.new("long[2]", (sec, nsec)),
                               ffi.NULL, 0)
        return 0 if r == 0 else int(ffi.errno)
    r = _syscall(_SYS_futex, anchor[0] + offset, _FUTEX_WAIT, expected & 0xFFFFFFFF,
                 _ct.byref(_Timespec(sec, nsec)), None, 0)
    return 0 if r == 0 else int(_ct.get_errno())


def _uncount(uncount: Callable[[], Any], mark: List[bool]) -> None:
    """Call ``uncount`` (which counts this thread out of an object's
    sleepers and clears ``mark[0]``) until it has.  A signal that ended the
    futex wait has its handler run at the first call after it, often inside
    this one: its exception (KeyboardInterrupt) must not leave the count
    behind, so the uncount is tried again before it goes on (a few times: a
    closed handle fails every time)."""
    raised: Optional[BaseException] = None
    for _ in range(4):
        try:
            uncount()
        except BaseException as e:  # re-raised below, once uncounted
            raised = raised or e
        if not mark[0]:
            break
    if raised is not None:
        raise raised


def _put(mm: mmap.mmap, offset: int, st: Any, value: int) -> None:
    """Write one shared word in a single copy.  ``Struct.pack_into`` zero-fills
    its target before packing, so another process could read 0 in a published
    counter, slot word or lock word; a slice assignment is one memcpy."""
    mm[offset : offset + st.size] = st.pack(value)


# ---- the mapping layer ----


class _Empty(Exception):
    """The name exists with size 0: its creator has not sized it (yet)."""


# An existing name is opened without blocking: a FIFO made under it would
# otherwise wait for a writer (a shared-memory object ignores the flag).
_ATTACH_FLAGS = os.O_NONBLOCK if sys.platform.startswith("linux") else 0
# The mode bit a new object carries while a fastshm process makes it, from
# the open that creates the name until its header is published (MAKING_MODE
# in map_posix.c; Linux only).
_MAKING_MODE = stat.S_ISVTX if sys.platform.startswith("linux") else 0


def _attach_fd(path: str) -> Tuple[int, bool]:
    """An existing object, read-write, or read-only when its permissions let
    this process read but not write it: (fd, read_only)."""
    try:
        return _posixshmem.shm_open(path, os.O_RDWR | _ATTACH_FLAGS, mode=0), False
    except PermissionError:
        return _posixshmem.shm_open(path, os.O_RDONLY | _ATTACH_FLAGS, mode=0), True


def _open_error(name: str, err: int) -> int:
    """What an open of ``name`` that failed with ``err`` means, as
    open_error in map_posix.c: ENOTREG when the name holds something other
    than shared memory (glibc reports a directory as EINVAL, O_NOFOLLOW a
    symbolic link as ELOOP)."""
    if sys.platform.startswith("linux") and err in (errno.EINVAL, errno.ELOOP, errno.EISDIR):
        try:
            if not stat.S_ISREG(os.lstat(os.path.join("/dev/shm", name)).st_mode):
                return ENOTREG
        except (OSError, ValueError):
            pass
    return err


def _lock_new(fd: int) -> bool:
    """The init lock of an object this process has just created, taken
    before it has a size (lock_new in map_posix.c); False when an opener
    took the object over in the instant before (it has a size then): open
    it again as it stands."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        return True  # no flock here: the lock word alone marks the making
    if os.fstat(fd).st_size != 0:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    return True


def _open_posix(
    name: str, how: int, size: int, mode: int, any_owner: bool, making: bool = False
) -> Tuple[int, int, bool, bool]:
    """(fd, size, created, read_only).  Everything opened is closed again,
    and a name made here removed again, when it fails.  ``making``: a
    created object gets the making mode bit and its init lock, held on the
    returned descriptor until ``_made``."""
    path = "/" + name
    mark = _MAKING_MODE if making else 0
    for tries in range(101):
        if how != C.ATTACH:
            try:
                fd = _posixshmem.shm_open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL,
                                          mode=mode | mark)
            except FileExistsError:
                if how == C.CREATE:
                    raise os_error(errno.EEXIST, name) from None
            except OSError as e:
                raise os_error(e.errno or errno.EIO, name) from None
            else:
                if making:
                    try:
                        locked = _lock_new(fd)
                    except BaseException:
                        os.close(fd)  # interrupted while another opener made it
                        raise
                    if not locked:
                        # Another opener made it anew: not ours to remove.
                        os.close(fd)
                        if how == C.CREATE:
                            raise os_error(errno.EEXIST, name)
                        continue
                try:
                    os.fchmod(fd, mode | mark)
                    os.ftruncate(fd, size)
                except BaseException as e:
                    # Removed before the lock goes with the descriptor.
                    _posixshmem.shm_unlink(path)
                    os.close(fd)
                    if isinstance(e, OSError):
                        raise os_error(e.errno or errno.EIO, name) from None
                    raise
                return fd, size, True, False
        try:
            fd, read_only = _attach_fd(path)
        except FileNotFoundError:
            if how == C.ATTACH or tries == 100:
                raise os_error(errno.ENOENT, name) from None
            continue
        except OSError as e:
            failed = e.errno or errno.EIO
        else:
            failed = 0
        if failed:
            raise_for(_open_error(name, failed), name)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise_for(ENOTREG, name)
            # Name squatting: someone else made the name first, so that what we
            # store goes to them.  Only its owner (or root) can chmod or
            # truncate it; trust ourselves and root, nobody else unless asked.
            if not any_owner and st.st_uid not in (0, os.geteuid()):
                raise owner_error(name, st.st_uid)
            if st.st_size == 0:
                raise _Empty(name)
        except BaseException:
            os.close(fd)
            raise
        return fd, st.st_size, False, read_only
    raise AssertionError("unreachable")


def _open_windows(name: str, how: int, size: int) -> Tuple[mmap.mmap, int, bool]:
    # The stdlib's own way (multiprocessing.shared_memory): reserve or find
    # the name with _winapi, then let mmap map it by tag name.
    if sys.platform != "win32":  # also tells type checkers elsewhere to skip the rest
        raise OSError(errno.ENOSYS, "Windows named mappings exist only on Windows")
    if how != C.ATTACH:
        h = _winapi.CreateFileMapping(
            _winapi.INVALID_HANDLE_VALUE, _winapi.NULL, _winapi.PAGE_READWRITE,
            (size >> 32) & 0xFFFFFFFF, size & 0xFFFFFFFF, name,
        )
        try:
            existed = _winapi.GetLastError() == _winapi.ERROR_ALREADY_EXISTS
            if existed and how == C.CREATE:
                raise os_error(errno.EEXIST, name)
            if not existed:
                return mmap.mmap(-1, size, tagname=name), size, True
        finally:
            _winapi.CloseHandle(h)
    try:
        h = _winapi.OpenFileMapping(_winapi.FILE_MAP_READ, False, name)
    except OSError as e:
        raise os_error(e.errno or errno.ENOENT, name) from None
    try:
        p = _winapi.MapViewOfFile(h, _winapi.FILE_MAP_READ, 0, 0, 0)
    finally:
        _winapi.CloseHandle(h)
    try:
        size = _winapi.VirtualQuerySize(p)
    finally:
        _winapi.UnmapViewOfFile(p)
    return mmap.mmap(-1, size, tagname=name), size, False


# CPython 3.13 can map without keeping a duplicate of the descriptor.
_TRACKFD_ARG: "dict[str, Any]" = {"trackfd": False} if sys.version_info >= (3, 13) else {}


def _map(
    name: str, how: int, size: int, mode: int, any_owner: bool, making: bool = False
) -> Tuple[mmap.mmap, int, bool, int, bool, int]:
    """(mapping, size, created, fd, read_only, dup); fd is -1 where there is
    none.  Before CPython 3.13 the mapping holds a duplicate of fd of its
    own, and ``dup`` is its number as far as it can be known (else -1): a
    guess, if another thread opened a descriptor at the same instant.
    ``making``: as _open_posix."""
    if C.WINDOWS:
        mm, size, created = _open_windows(name, how, size)
        return mm, size, created, -1, False, -1
    fd, size, created, read_only = _open_posix(name, how, size, mode, any_owner, making)
    dup = -1
    try:
        access = mmap.ACCESS_READ if read_only else mmap.ACCESS_WRITE
        if not _TRACKFD_ARG:
            # mmap duplicates fd with the lowest free number, as dup() does.
            dup = os.dup(fd)
            os.close(dup)
        mm = mmap.mmap(fd, size, access=access, **_TRACKFD_ARG)
    except BaseException as e:
        if created:
            _posixshmem.shm_unlink("/" + name)
        os.close(fd)
        if isinstance(e, OSError):
            raise os_error(e.errno or errno.EIO, name) from None
        raise
    return mm, size, created, fd, read_only, dup


def unlink(name: str) -> None:
    if C.WINDOWS:
        return
    try:
        _posixshmem.shm_unlink("/" + name)
    except OSError as e:
        failed = e.errno or errno.EIO
    else:
        return
    raise_for(_open_error(name, failed), name)


class RawMapping:
    """A named mapping without a header (fastshm.SharedMemory)."""

    __slots__ = ("buf", "size", "created", "readonly")

    def __init__(self, name: str, how: int, size: int, mode: int, any_owner: bool) -> None:
        try:
            mm, self.size, self.created, fd, self.readonly, _ = _map(
                name, how, size, mode, any_owner
            )
        except _Empty:
            raise_for(EEMPTY, name)
        if fd >= 0:
            os.close(fd)  # the mapping keeps the object alive
        # The mmap stays alive while this view or any export of it does; it
        # is read-only when the object could only be opened for reading.
        self.buf = memoryview(mm)


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


def _check_header(mm: mmap.mmap, size: int, magic_want: int, other_magic: int,
                  version_want: int, size_for: Any) -> int:
    """The capacity in the header a segment and a queue share, after the
    checks both make (the other kind's magic is EKIND), or a negative
    error code."""
    if size < C.HEADER_SIZE:
        return EFORMAT
    capacity: int
    magic, version, header_size, capacity = C.HEAD.unpack_from(mm, 0)
    if magic == 0:
        return ENOTREADY
    if magic == other_magic or magic == _CHANNEL_MAGIC:
        return EKIND
    if magic != magic_want:
        return EFORMAT
    if version != version_want:
        return EVERSION
    need = size_for(capacity)
    if header_size != C.HEADER_SIZE or need == 0 or need > size:
        return EFORMAT
    return capacity


def _attach(mm: mmap.mmap, size: int) -> int:
    """The segment's capacity, after the same checks as fshm_seg_attach."""
    return _check_header(mm, size, C.MAGIC, C.QUEUE_MAGIC, C.VERSION, C.seg_size_for)


def _initialise(mm: mmap.mmap, fd: int, size: int, capacity: int) -> None:
    """Write a new segment's header (docs/FORMAT.md, "Creating")."""

    def fields() -> None:
        C.HEAD.pack_into(mm, 0, 0, C.VERSION, C.HEADER_SIZE, capacity)

    _publish(mm, fd, size, fields, C.MAGIC)


def _publish(mm: mmap.mmap, fd: int, size: int, fields: Any, magic: int) -> None:
    """Reserve a new object's memory and write its header: ``fields()``
    writes all of it but the magic, which goes last.  While the magic is 0
    the lock word names the creator, so that openers wait for a creator that
    is alive and give up at once on one that died."""
    reserve = fd >= 0 and _LINUX
    if reserve:
        # The header's page first: writing it cannot fault on a full /dev/shm.
        os.posix_fallocate(fd, 0, min(size, mmap.PAGESIZE))
    _put(mm, C.H_LOCK, C.U64, self_id())
    if reserve:
        # As FSHM_RESERVE in map_posix.c: a full /dev/shm is an ENOSPC now
        # rather than a SIGBUS at the first write.
        os.posix_fallocate(fd, 0, size)
    fields()
    _put(mm, C.H_LOCK, C.U64, 0)
    # The magic last: an opener that sees it sees the rest.
    _put(mm, C.H_MAGIC, C.U32, magic)


def _made(fd: int, mode: int) -> None:
    """After the magic is out (fshm__map_done in map_posix.c): the object's
    final mode, which drops the making mark, and its init lock released."""
    try:
        if _MAKING_MODE:
            os.fchmod(fd, mode)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass  # a mode bit nobody reads on a finished object; no flock here


class _Claim:
    """An unfinished object opened to judge it (fshm__map_claim): its init
    lock tried without waiting, its header read."""

    __slots__ = ("fd", "size", "locked", "making", "read_only", "magic", "mark")
    fd: int
    size: int
    locked: bool  # this process holds the init lock
    making: bool  # the object carries the making mode bit
    read_only: bool
    magic: int
    mark: int  # the lock word

    def close(self) -> None:
        if self.locked:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _claim(name: str, any_owner: bool) -> Union[_Claim, int, None]:
    """An unfinished object opened and judged, as fshm__map_claim in
    map_posix.c: None when it was removed meanwhile, EBUSY when a live
    process holds its init lock, else a _Claim (to be closed)."""
    try:
        fd, read_only = _attach_fd("/" + name)
    except FileNotFoundError:
        return None
    except OSError as e:
        failed = e.errno or errno.EIO
    else:
        failed = 0
    if failed:
        raise_for(_open_error(name, failed), name)
    c = _Claim()
    c.fd, c.read_only, c.locked = fd, read_only, False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise_for(ENOTREG, name)
        if not any_owner and st.st_uid not in (0, os.geteuid()):
            raise owner_error(name, st.st_uid)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            c.locked = True
        except BlockingIOError:
            os.close(fd)
            return EBUSY  # its maker is at work, and alive
        except OSError:
            pass  # no flock here: judge by the lock word alone
        st = os.fstat(fd)  # again under the lock
        c.size = st.st_size
        c.making = bool(_MAKING_MODE and st.st_mode & _MAKING_MODE)
        head = os.pread(fd, C.HEADER_SIZE, 0)
        c.magic = C.U32.unpack_from(head, 0)[0] if len(head) >= 4 else 0
        c.mark = C.U64.unpack_from(head, C.H_LOCK)[0] if len(head) >= C.HEADER_SIZE else 0
    except BaseException:
        c.close()
        raise
    return c


def _take_over(c: _Claim, name: str, need: int, mode: int, init: Any
               ) -> Tuple[mmap.mmap, int, bool, int, bool, int, int]:
    """Make anew an object whose maker died (fshm__map_adopt and the rest of
    ``unfinished`` in slot.c): this process holds its init lock, so no other
    opener of either backend is at it."""
    fd = c.fd
    try:
        st = os.fstat(fd)
        if _MAKING_MODE:
            # Marked first: should this process die too, the next opener knows.
            os.fchmod(fd, (st.st_mode & 0o7777) | _MAKING_MODE)
        size = max(st.st_size, need)
        if st.st_size < need:
            os.ftruncate(fd, need)
        dup = -1
        if not _TRACKFD_ARG:  # as in _map
            dup = os.dup(fd)
            os.close(dup)
        mm = mmap.mmap(fd, size, access=mmap.ACCESS_WRITE, **_TRACKFD_ARG)
    except BaseException as e:
        c.close()
        if isinstance(e, OSError):
            raise os_error(e.errno or errno.EIO, name) from None
        raise
    try:
        _put(mm, C.H_LOCK, C.U64, self_id())  # the flock orders it: no CAS needed
        # Every header field the dead maker may have written goes, but the
        # magic (still 0) and the mark (now this process's).
        mm[4 : C.H_LOCK] = bytes(C.H_LOCK - 4)
        mm[C.H_LOCK + 8 : C.HEADER_SIZE] = bytes(C.HEADER_SIZE - C.H_LOCK - 8)
        init(mm, fd, size)
    except BaseException as e:
        unlink(name)  # removed before the lock goes
        mm.close()
        c.close()
        if isinstance(e, OSError):
            raise os_error(e.errno or errno.EIO, name) from None
        raise
    _made(fd, mode)
    return mm, size, True, fd, False, dup, 1


def _open_object(
    name: str, how: int, need: int, mode: int, any_owner: bool,
    init: Any, attach: Any, other: str,
) -> Tuple[mmap.mmap, int, bool, int, bool, int, int]:
    """Map a segment or a queue, as fshm__open in slot.c: (mapping, size,
    created, fd, read_only, dup, capacity), dup as _map's.  ``init(mm, fd,
    size)`` writes the header of one made here; ``attach(mm, size)`` checks
    the one found and returns its capacity or an error code (EKIND: the
    name holds ``other``, the other kind of object).  An object whose maker
    died before finishing it is made anew when ``how`` lets this call
    create."""
    kind = "queue" if other == "Segment" else "segment"
    start = time.monotonic()
    deadline = start + _READY_WAIT_S
    backoff = 20e-6
    format_size, format_tries = 0, 0
    while True:
        try:
            mm, size, created, fd, read_only, dup = _map(name, how, need, mode, any_owner,
                                                         making=True)
        except _Empty:  # size 0: its maker has not sized it (yet)
            code = EEMPTY
        else:
            if created:
                try:
                    init(mm, fd, size)
                except BaseException as e:
                    unlink(name)  # removed before the lock goes
                    mm.close()
                    if fd >= 0:
                        os.close(fd)
                    if isinstance(e, OSError):
                        raise os_error(e.errno or errno.EIO, name) from None
                    raise
                if fd >= 0:
                    _made(fd, mode)
                return mm, size, True, fd, False, dup, 1
            code = attach(mm, size)
            if code > 0:
                return mm, size, created, fd, read_only, dup, code
            if code == EKIND and _u32(mm, C.H_MAGIC)[0] == _CHANNEL_MAGIC:
                other = "Channel:" + ("Segment" if other == "Queue" else "Queue")
            mm.close()
            if fd >= 0:
                os.close(fd)
            # Mapped at the size a dead maker left, then taken over and
            # grown by another opener before this one read its header: the
            # header asks for more than was mapped.  Open it again while its
            # size keeps changing; the same size twice is a corrupt header.
            if code == EFORMAT and size != format_size and format_tries < 16:
                format_size, format_tries = size, format_tries + 1
                continue
        if code not in (ENOTREADY, EEMPTY):
            raise_for(code, name, other if code == EKIND else "", kind)
        if C.WINDOWS:
            verdict, got = _unfinished_windows(name, code)
        else:
            verdict, got = _unfinished(name, how, need, mode, any_owner, init, code)
        if verdict == _DONE:
            if isinstance(got, int):
                raise_for(got, name, "", kind)
            return got
        if verdict == _AGAIN:
            continue
        code = got
        # A maker at work is waited for while it lives (a large object can
        # take seconds to reserve; a minute at most: a stopped one, or a pid
        # reused); one that cannot be judged, or a name of size 0, a bounded
        # time.
        if verdict == _WAIT_ALIVE and time.monotonic() - start < _CREATOR_WAIT_S:
            deadline = time.monotonic() + _READY_WAIT_S
        if time.monotonic() >= deadline:
            raise_for(code, name, "", kind)
        time.sleep(backoff)
        backoff = min(backoff * 2, 0.01)


# How _open_object goes on after looking at an unfinished object.
_DONE, _AGAIN, _WAIT_ALIVE, _WAIT = range(4)


def _unfinished(name: str, how: int, need: int, mode: int, any_owner: bool, init: Any,
                found: int) -> Tuple[int, Any]:
    """(verdict, what): an unfinished object judged as ``unfinished`` in
    slot.c judges it; ``what`` is the open object for _DONE, else the error
    code to give up with once the waits are over (``found``: ENOTREADY or
    EEMPTY, as first seen)."""
    c = _claim(name, any_owner)
    if c is None:
        return _AGAIN, found  # removed meanwhile
    if isinstance(c, int):
        return _WAIT_ALIVE, ENOTREADY  # its maker holds the init lock
    if c.size >= C.HEADER_SIZE and c.magic != 0:
        c.close()
        return _AGAIN, found  # finished meanwhile
    dead = owner_dead(c.mark) if c.mark else -1
    # Abandoned: the making mark with nobody holding the init lock (a maker
    # holds it from before the object has a size to after the magic), or a
    # lock word naming a maker that is gone.
    abandoned = (c.locked and c.making) or dead == 1
    if not abandoned:
        c.close()
        return (_WAIT_ALIVE if c.mark and dead == 0 else _WAIT), found
    if how != C.OPEN_OR_CREATE or c.read_only or not c.locked:
        # Taken over only by an opener that may create it, and, pure Python
        # having no compare-and-swap, only under the init lock.
        c.close()
        if (c.size == 0 and dead != 1) or (not c.locked and how == C.OPEN_OR_CREATE):
            # Perhaps its maker, between creating the name and taking the
            # lock (only an opener that may create can settle that now), or
            # a native opener may take it over by compare-and-swap.
            return _WAIT, EABANDONED
        return _DONE, EABANDONED
    return _DONE, _take_over(c, name, need, mode, init)


def _unfinished_windows(name: str, found: int) -> Tuple[int, int]:
    """Windows has no init lock and no making mark: a lock word naming a
    maker that is gone says it was abandoned (the python backend does not
    take it over there); one naming a live maker is waited for."""
    try:
        mm, size, _, _, _, _ = _map(name, C.ATTACH, 0, 0, False)
    except (OSError, _Empty):
        return _AGAIN, found
    try:
        if size < C.HEADER_SIZE or _u32(mm, C.H_MAGIC)[0] != 0:
            return _AGAIN, found
        owner = _u64(mm, C.H_LOCK)[0]
    finally:
        mm.close()
    state = owner_dead(owner) if owner else -1
    if state == 1:
        return _DONE, EABANDONED
    return (_WAIT_ALIVE if state == 0 else _WAIT), found


# ---- the segment ----


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
