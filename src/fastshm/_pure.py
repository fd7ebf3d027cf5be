"""The python backend: the same layout and behaviour as the C core, in pure
Python over ``mmap`` (``_posixshmem`` on POSIX, a tagged mapping on
Windows).

It is the fallback where the C extension is not built, and the baseline the
benchmarks compare against.  What pure Python cannot do is said where it
matters: it has no atomic compare-and-swap, so its writers exclude each other
with an OS file lock (POSIX) rather than with the lock word alone, and its
segment waiters poll with a growing sleep instead of sleeping on a futex
(its queue waiters do sleep on one, on Linux).
"""

from __future__ import annotations

import errno
import mmap
import os
import platform
import sys
import threading
import time
import weakref
from typing import Any, Optional, Tuple

from . import _common as C
from ._errors import (
    EEMPTY,
    EFORMAT,
    EKIND,
    ENOTREADY,
    EVERSION,
    FormatError,
    batch_too_big,
    closed_error,
    message_too_big,
    next_too_small,
    os_error,
    owner_error,
    protocol_error,
    raise_for,
    read_only_error,
    too_big,
    too_small,
)

name = "python"
binding = "python"
# "file_lock": writers exclude each other with flock (POSIX only; on Windows
# the python backend has no writer lock at all).
features: "frozenset[str]" = frozenset() if C.WINDOWS else frozenset({"file_lock"})

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
_futex_waits = _HAS_FUTEX


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


def _put(mm: mmap.mmap, offset: int, st: Any, value: int) -> None:
    """Write one shared word in a single copy.  ``Struct.pack_into`` zero-fills
    its target before packing, so another process could read 0 in a published
    counter, slot word or lock word; a slice assignment is one memcpy."""
    mm[offset : offset + st.size] = st.pack(value)


# ---- the mapping layer ----


class _Empty(Exception):
    """The name exists with size 0: its creator has not sized it (yet)."""


def _attach_fd(path: str) -> Tuple[int, bool]:
    """An existing object, read-write, or read-only when its permissions let
    this process read but not write it: (fd, read_only)."""
    try:
        return _posixshmem.shm_open(path, os.O_RDWR, mode=0), False
    except PermissionError:
        return _posixshmem.shm_open(path, os.O_RDONLY, mode=0), True


def _open_posix(
    name: str, how: int, size: int, mode: int, any_owner: bool
) -> Tuple[int, int, bool, bool]:
    """(fd, size, created, read_only).  Everything opened is closed again,
    and a name made here removed again, when it fails."""
    path = "/" + name
    for tries in range(101):
        if how != C.ATTACH:
            try:
                fd = _posixshmem.shm_open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode=mode)
            except FileExistsError:
                if how == C.CREATE:
                    raise os_error(errno.EEXIST, name) from None
            except OSError as e:
                raise os_error(e.errno or errno.EIO, name) from None
            else:
                try:
                    os.fchmod(fd, mode)
                    os.ftruncate(fd, size)
                except BaseException as e:
                    os.close(fd)
                    _posixshmem.shm_unlink(path)
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
            raise os_error(e.errno or errno.EIO, name) from None
        try:
            st = os.fstat(fd)
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
    name: str, how: int, size: int, mode: int, any_owner: bool
) -> Tuple[mmap.mmap, int, bool, int, bool]:
    """(mapping, size, created, fd, read_only); fd is -1 where there is none.
    Before CPython 3.13 the mapping holds a duplicate of fd of its own."""
    if C.WINDOWS:
        mm, size, created = _open_windows(name, how, size)
        return mm, size, created, -1, False
    fd, size, created, read_only = _open_posix(name, how, size, mode, any_owner)
    try:
        access = mmap.ACCESS_READ if read_only else mmap.ACCESS_WRITE
        mm = mmap.mmap(fd, size, access=access, **_TRACKFD_ARG)
    except BaseException as e:
        os.close(fd)
        if created:
            _posixshmem.shm_unlink("/" + name)
        if isinstance(e, OSError):
            raise os_error(e.errno or errno.EIO, name) from None
        raise
    return mm, size, created, fd, read_only


def unlink(name: str) -> None:
    if C.WINDOWS:
        return
    try:
        _posixshmem.shm_unlink("/" + name)
    except OSError as e:
        raise os_error(e.errno or errno.EIO, name) from None


class RawMapping:
    """A named mapping without a header (fastshm.SharedMemory)."""

    __slots__ = ("buf", "size", "created", "readonly")

    def __init__(self, name: str, how: int, size: int, mode: int, any_owner: bool) -> None:
        try:
            mm, self.size, self.created, fd, self.readonly = _map(
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
_LOCK_SL = slice(C.H_LOCK, C.H_LOCK + 8)
_H_NEXT = C.H_LOCK_NEXT
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

    __slots__ = ("fd", "claimed", "ident", "me", "busy", "clear", "unflock", "noop",
                 "__weakref__")

    fd: int
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


def _open_object(
    name: str, how: int, need: int, mode: int, any_owner: bool,
    init: Any, attach: Any, other: str,
) -> Tuple[mmap.mmap, int, bool, int, bool, int]:
    """Map a segment or a queue, as fshm__open in slot.c: (mapping, size,
    created, fd, read_only, capacity).  ``init(mm, fd, size)`` writes the
    header of one made here; ``attach(mm, size)`` checks the one found and
    returns its capacity or an error code (EKIND: the name holds ``other``,
    the other kind of object)."""
    start = time.monotonic()
    deadline = start + _READY_WAIT_S
    backoff = 20e-6
    while True:
        creator_alive = False
        try:
            mm, size, created, fd, read_only = _map(name, how, need, mode, any_owner)
        except _Empty:  # size 0: its creator has not sized it yet
            code = EEMPTY
        else:
            if created:
                try:
                    init(mm, fd, size)
                except BaseException as e:
                    mm.close()
                    if fd >= 0:
                        os.close(fd)
                    unlink(name)
                    if isinstance(e, OSError):
                        raise os_error(e.errno or errno.EIO, name) from None
                    raise
                code = 1
            else:
                code = attach(mm, size)
                if code == ENOTREADY:
                    owner = _u64(mm, C.H_LOCK)[0]
                    state = owner_dead(owner) if owner else -1
                    if state == 1 and _u32(mm, C.H_MAGIC)[0] == 0:
                        # Its creator died before finishing it (and did
                        # not finish it just now, the lock word then
                        # being a writer's).
                        mm.close()
                        if fd >= 0:
                            os.close(fd)
                        raise_for(ENOTREADY, name)
                    creator_alive = (state == 0
                                     and time.monotonic() - start < _CREATOR_WAIT_S)
            if code > 0:
                return mm, size, created, fd, read_only, code
            if code == EKIND and _u32(mm, C.H_MAGIC)[0] == _CHANNEL_MAGIC:
                other = "Channel:" + ("Segment" if other == "Queue" else "Queue")
            mm.close()
            if fd >= 0:
                os.close(fd)
        if code not in (ENOTREADY, EEMPTY):
            raise_for(code, name, other if code == EKIND else "")
        # A creator that is alive is waited for as long as it takes (a
        # large segment can take seconds to pre-allocate); one that cannot
        # be judged, or a name of size 0, for a bounded time.
        if not creator_alive and time.monotonic() >= deadline:
            raise_for(code, name)
        time.sleep(backoff)
        backoff = min(backoff * 2, 0.01)


# ---- the segment ----


class _Mapped:
    """A mapped fastshm object and every thread's lock state for it."""

    __slots__ = (
        "name", "_mm", "_mv", "_fd", "_src", "_key", "_anchor", "_tls", "_states",
        "size", "created", "readonly", "closed", "__weakref__",
    )

    def _setup(self, name: str, mm: mmap.mmap, fd: int, size: int, created: bool,
               read_only: bool) -> None:
        self.name = name
        self.closed = False  # set by close() of its Segment or Queue: blocked calls end
        self._mm = mm
        self._mv = memoryview(mm)
        self.readonly = read_only
        self._key: Any = name
        self._src: int = -1
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

    def _same(self, fd: int) -> bool:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == self._key  # type: ignore[no-any-return]

    def _open_thread_fd(self) -> int:
        """A descriptor of this thread's own (a new open file description of
        the object), for flock; opened read-only, which flock needs no more
        than."""
        flags = os.O_RDONLY
        if _LINUX:
            # Reopening /proc/self/fd/N makes a new description of N's object:
            # N is the handle's fd, the mapping's duplicate found earlier, or
            # any descriptor of this object (the mapping's is always there).
            for scan in (False, True):
                if scan:
                    cands = []
                    for entry in os.listdir("/proc/self/fd"):
                        try:
                            st = os.stat(f"/proc/self/fd/{entry}")
                        except OSError:
                            continue
                        if (st.st_dev, st.st_ino) == self._key:
                            cands.append(int(entry))
                else:
                    cands = [n for n in (self._fd, self._src) if n >= 0]
                for n in cands:
                    try:
                        fd = os.open(f"/proc/self/fd/{n}", flags)
                    except OSError:
                        continue
                    if self._same(fd):
                        if n != self._fd:
                            self._src = n
                        return fd
                    os.close(fd)
        try:
            fd = int(_posixshmem.shm_open("/" + self.name, flags, mode=0))
        except OSError:
            pass
        else:
            if self._same(fd):
                return fd
            os.close(fd)
        if self._fd >= 0:
            # The name is gone or names another object: a duplicate shares
            # the handle's description, so this thread's stores exclude other
            # processes' but not those of the handle's other threads.
            return os.dup(self._fd)
        raise OSError(errno.EBADF, f"cannot reopen {self.name!r} for locking")


class SegmentHandle(_Mapped):
    """An open fastshm segment over an mmap."""

    __slots__ = ("capacity", "_stride")

    def __init__(
        self, name: str, how: int, capacity: int, mode: int, any_owner: bool
    ) -> None:
        capacity = C.as_int(capacity, "capacity")
        mode = C.as_int(mode, "mode")
        need = C.seg_size_for(capacity) if how != C.ATTACH else 0

        def init(mm: mmap.mmap, fd: int, size: int) -> None:
            _initialise(mm, fd, size, capacity)

        mm, size, created, fd, read_only, code = _open_object(
            name, how, need, mode, any_owner, init, _attach, "Queue"
        )
        self._setup(name, mm, fd, size, created, read_only)
        self.capacity = code if not created else capacity
        self._stride = C.stride_for(self.capacity)

    def _claim(self, t: _ThreadState, mm: mmap.mmap, ops: Any) -> None:
        """Wait for the lock word, then write this process's id into it (the
        caller holds the flock).  A native writer holds the word with a CAS;
        its owner is asked about only every 50th round (system calls).

        After one failed look this process names itself in lock_next, as a
        native waiter that has slept does: native writers then leave the free
        lock to it, so native writers storing back to back cannot starve it
        (it polls, and would otherwise have to land in the instant between
        one native store and the next)."""
        me = t.me
        rounds = 0
        turn = False
        try:
            while True:
                owner = _u64(mm, C.H_LOCK)[0]
                # Our own id under our flock: left by a store of this process
                # that was interrupted where an old CPython could not clear it.
                if owner == 0 or owner == me or (
                    rounds % 50 == 0 and owner_dead(owner) == 1
                ):
                    break
                if not turn and _u64(mm, _H_NEXT)[0] == 0:
                    # A plain store, not a compare-and-swap: losing a race
                    # with a native writer naming itself costs that writer
                    # its turn, never exclusion (the lock word decides that).
                    mm[_NEXT_SL] = t.ident
                    turn = True
                rounds += 1
                time.sleep(20e-6)
            t.claimed = True
            if ops is not None:
                ops[0] = t.clear
            mm[_LOCK_SL] = t.ident
        finally:
            # After the lock word is ours (cleared first, a native writer
            # could take the lock in between), or on the way out.
            if turn and _u64(mm, _H_NEXT)[0] == me:
                mm[_NEXT_SL] = _ZERO8

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
        ops = rel = None
        if not _INLINE_RELEASE:
            ops = [t.noop, t.unflock]
            rel = map(_pcall, ops)
        # From here until the release, see "what a signal may interrupt".
        busy[key] = sys._getframe()
        try:
            if fd >= 0:
                _flock(fd, _LOCK_EX)
            self._claim(t, mm, ops)
            nxt: int = _u64(mm, C.H_SEQ)[0] + 1
            if nxt > C.SEQ_MAX:  # a corrupt counter: 2 * nxt would not fit its word
                raise_for(EFORMAT, self.name, "the store counter is out of range")
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
                raise_for(EFORMAT, self.name, "the current slot is inconsistent")
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
        way, native ones included)."""
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
        busy[key] = sys._getframe()
        try:
            if fd >= 0:
                _flock(fd, _LOCK_EX if exclusive else _LOCK_SH)
            if exclusive:
                self._claim(t, mm, ops)
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
        return out

    def _read_slow(self, what: int, dst: Any) -> Any:
        """After the lock-free attempts (strongly ordered CPUs) or instead of
        them: under the lock, so that a load ends in bounded time.  A
        read-only handle cannot take the writer lock and keeps trying."""
        tries = _LOCKFREE_TRIES if _STRONG_ORDER else 0
        while True:
            exclusive = tries >= _LOCKFREE_TRIES and not self.readonly
            if exclusive or not _STRONG_ORDER:
                out = self._read_locked(what, dst, exclusive)
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


# ---- the queue ----
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
# count word beside it is fixed by whoever next finds the dirty mark.  The
# statements from the head or tail store to the release make no call (the
# futex wake of sleepers comes after the release), so that on CPython 3.11
# and later no signal handler runs between the commit and the release: a
# handler's exception after the commit surfaces only once the lock is given
# back, and a take's messages are then lost to its caller, as the result of
# any Python function interrupted after it has done its work.

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
_QH, _QT, _QC = C.Q_HEAD, C.Q_TAIL, C.Q_COUNT

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

    __slots__ = ("capacity", "max_message")

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

        mm, size, created, fd, read_only, code = _open_object(
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
        self._setup(name, mm, fd, size, created, read_only)
        self.capacity = capacity
        self.max_message = capacity - _Q_REC

    # -- under the lock --

    def _positions(self) -> Tuple[int, int]:
        """head and tail, checked (the lock held)."""
        mm = self._mm
        head: int = _HEADTAIL(mm, C.Q_HEAD)[0]
        tail: int = _HEADTAIL(mm, C.Q_TAIL)[0]
        if (head | tail) & 7 or (tail - head) & _M64 > self.capacity:
            raise_for(EFORMAT, self.name, "the queue's head and tail are inconsistent")
        return head, tail

    def _bad_record(self) -> None:
        raise_for(EFORMAT, self.name, "a queued record's length is out of range")

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

    def _locked(self, what: int, arg: Any, arg2: Any) -> Any:
        """One attempt under the lock: _PUT (arg: messages, arg2: their
        lengths) -> bool; _TAKE (arg: at most that many) -> list;
        _TAKE_INTO (arg: the buffer) -> length, or -1 when empty."""
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
        # From here until the release, see "what a signal may interrupt".
        busy[key] = sys._getframe()
        try:
            if fd >= 0:
                _flock(fd, _LOCK_EX)
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
            bump = _p32((_u32(mm, C.Q_NOTIFY)[0] + 1) & 0xFFFFFFFF)
            done = False
            if what == _PUT:
                lens: "list[int]" = arg2
                need = 0
                for n in lens:
                    need += _Q_REC + ((n + 7) & ~7)
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
                # No point where a signal handler runs until LOCK_UN is done.
                if t.claimed:
                    mm[_LOCK_SL] = _ZERO8
                    t.claimed = False
                if fd >= 0:
                    _flock(fd, _LOCK_UN)
            else:
                _consume(rel)
            busy[key] = None
        if wake:
            # After the release, so the woken take the flock at once.  An
            # interrupt before it loses the wake-up: the sleepers find the
            # change at the end of their slice.
            _futex_wake(self._anchor, C.Q_NOTIFY)
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

    def _enlist(self, delta: int, room: int, mark: "list[bool]") -> int:
        """Under the flock: with ``delta`` 1, unless ``_ready(room)``, count
        this thread in ``waiters`` and return the notify word it then holds
        (-1 when ready: nothing counted); with -1, uncount it.  ``mark[0]``
        says whether this thread is counted, stored right beside the count."""
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
                _flock(fd, _LOCK_EX)
            n: int = _u32(mm, C.Q_WAITERS)[0]
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
            seen = self._enlist(1, room, mark)
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
                self._enlist(-1, room, mark)

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

    def _check_open(self) -> None:
        """Between two sleeps of a wait: ValueError once another thread has
        closed the queue (nothing was put or taken)."""
        if self.closed:
            raise closed_error("queue", self.name)

    @staticmethod
    def _deadline(timeout: Optional[float]) -> Optional[float]:
        if timeout is None or timeout == float("inf"):
            return None
        return time.monotonic() + timeout

    # -- the operations --

    def put_many(self, msgs: "list[Any]", timeout: Optional[float]) -> bool:
        lens = [len(m) for m in msgs]
        if not lens:
            return True
        biggest = max(lens)
        if biggest > self.max_message:
            raise message_too_big(biggest, self.name, self.max_message)
        need = 0
        for n in lens:
            need += _Q_REC + ((n + 7) & ~7)
        if need > self.capacity:
            raise batch_too_big(need, self.name, self.capacity)
        if self.readonly:
            raise read_only_error(self.name, "queue")
        deadline = None
        while True:
            if self._locked(_PUT, msgs, lens):
                return True
            if timeout == 0:
                return False
            if deadline is None:
                deadline = self._deadline(timeout)
            if not self._wait(need, deadline):
                return False

    def _take(self, what: int, arg: Any, timeout: Optional[float]) -> Any:
        if self.readonly:
            raise read_only_error(self.name, "queue")
        deadline = None
        while True:
            out = self._locked(what, arg, None)
            if (out >= 0) if what == _TAKE_INTO else out:  # a length, or messages
                return out
            if timeout == 0:
                return out
            if deadline is None:
                deadline = self._deadline(timeout)
            if not self._wait(0, deadline):
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
        return _u64(self._mm, C.Q_COUNT)[0]  # type: ignore[no-any-return]

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


__all__ = [
    "FormatError", "QueueHandle", "RawMapping", "SegmentHandle", "unlink", "self_id",
    "owner_dead",
]
