"""The python backend: the same layout and behaviour as the C core, in pure
Python over ``mmap`` (``_posixshmem`` on POSIX, a tagged mapping on
Windows).

It is the fallback where the C extension is not built, and the baseline the
benchmarks compare against.  What pure Python cannot do is said where it
matters: it has no atomic compare-and-swap, so its writers exclude each other
with an OS file lock (POSIX) rather than with the lock word alone, and its
waiters poll with a growing sleep instead of sleeping on a futex.
"""

from __future__ import annotations

import errno
import mmap
import os
import sys
import threading
import time
import weakref
from typing import Any, Optional, Tuple

from . import _common as C
from ._errors import (
    EEMPTY,
    EFORMAT,
    ENOTREADY,
    EVERSION,
    FormatError,
    os_error,
    raise_for,
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
_WAIT_SPIN_S = 50e-6
_WAIT_SLEEP_MAX_S = 0.002
# The largest store number (as SEQ_MAX in slot.c): its slot word, 2 * seq, fits 64 bits.
_SEQ_MAX = (1 << 63) - 1

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


# ---- futex wake through ctypes, so native waiters see python stores at once ----

try:
    if not sys.platform.startswith("linux"):
        raise ImportError
    import ctypes

    _libc = ctypes.CDLL(None, use_errno=True)
    # syscall() is variadic: give each argument its C type, or the address
    # would be passed as a truncated int.
    _syscall = _libc.syscall
    _syscall.restype = ctypes.c_long
    _SYS_futex = {"x86_64": 202, "aarch64": 98}.get(os.uname().machine, 0)
    if not _SYS_futex:
        raise ImportError
except (ImportError, OSError):
    ctypes = None  # type: ignore[assignment]


def _futex_anchor(mm: mmap.mmap) -> Any:
    if ctypes is None:
        return None
    return ctypes.c_char.from_buffer(mm)


def _futex_wake(anchor: Any, offset: int) -> None:
    if anchor is not None:
        _syscall(
            ctypes.c_long(_SYS_futex), ctypes.c_void_p(ctypes.addressof(anchor) + offset),
            ctypes.c_int(1), ctypes.c_int(0x7FFFFFFF), None, None, ctypes.c_int(0),
        )


def _put(mm: mmap.mmap, offset: int, st: Any, value: int) -> None:
    """Write one shared word in a single copy.  ``Struct.pack_into`` zero-fills
    its target before packing, so another process could read 0 in a published
    counter, slot word or lock word; a slice assignment is one memcpy."""
    mm[offset : offset + st.size] = st.pack(value)


# ---- the mapping layer ----


def _open_posix(
    name: str, how: int, size: int, mode: int, reserve: bool = False
) -> Tuple[int, int, bool]:
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
                    # As FSHM_RESERVE in map_posix.c: a full /dev/shm is an
                    # ENOSPC now rather than a SIGBUS at the first write.
                    if reserve and sys.platform.startswith("linux"):
                        os.posix_fallocate(fd, 0, size)
                except OSError as e:
                    os.close(fd)
                    _posixshmem.shm_unlink(path)
                    raise os_error(e.errno or errno.EIO, name) from None
                return fd, size, True
        try:
            fd = _posixshmem.shm_open(path, os.O_RDWR, mode=0)
        except FileNotFoundError:
            if how == C.ATTACH or tries == 100:
                raise os_error(errno.ENOENT, name) from None
            continue
        except OSError as e:
            raise os_error(e.errno or errno.EIO, name) from None
        st_size = os.fstat(fd).st_size
        if st_size == 0:
            os.close(fd)
            raise_for(EEMPTY, name)
        return fd, st_size, False
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


def _map(
    name: str, how: int, size: int, mode: int, reserve: bool = False
) -> Tuple[mmap.mmap, int, bool, int]:
    """(mapping, size, created, fd); fd is -1 where there is none."""
    if C.WINDOWS:
        mm, size, created = _open_windows(name, how, size)
        return mm, size, created, -1
    fd, size, created = _open_posix(name, how, size, mode, reserve)
    try:
        mm = mmap.mmap(fd, size)
    except OSError as e:
        os.close(fd)
        if created:
            _posixshmem.shm_unlink("/" + name)
        raise os_error(e.errno or errno.EIO, name) from None
    return mm, size, created, fd


def unlink(name: str) -> None:
    if C.WINDOWS:
        return
    try:
        _posixshmem.shm_unlink("/" + name)
    except OSError as e:
        raise os_error(e.errno or errno.EIO, name) from None


class RawMapping:
    """A named mapping without a header (fastshm.SharedMemory)."""

    __slots__ = ("buf", "size", "created")

    def __init__(self, name: str, how: int, size: int, mode: int, any_owner: bool) -> None:
        mm, self.size, self.created, fd = _map(name, how, size, mode)
        if fd >= 0:
            os.close(fd)
        # The mmap stays alive while this view or any export of it does.
        self.buf = memoryview(mm)


# ---- the segment ----

# flock belongs to an open file description, which a forked child shares with
# its parent: without a description of its own, a child's store would not
# exclude its parent's.  So every child reopens the descriptors it inherited.
_open_handles: "weakref.WeakSet[SegmentHandle]" = weakref.WeakSet()


def _reopen_after_fork() -> None:
    for h in list(_open_handles):
        h._tlock = threading.Lock()
        if h._fd < 0:  # lost in an earlier fork: stays without one
            continue
        try:
            fd = os.open(f"/proc/self/fd/{h._fd}", os.O_RDWR)
        except OSError:
            try:
                fd = _posixshmem.shm_open("/" + h.name, os.O_RDWR, mode=0)
            except OSError:
                fd = -1  # unlinked since: nobody new can open it to race us
        os.close(h._fd)
        h._fd = fd


if hasattr(os, "register_at_fork") and not C.WINDOWS:
    os.register_at_fork(after_in_child=_reopen_after_fork)


def _attach(mm: mmap.mmap, size: int) -> int:
    """The segment's capacity, after the same checks as fshm_seg_attach."""
    if size < C.HEADER_SIZE:
        return EFORMAT
    capacity: int
    magic, version, header_size, capacity = C.HEAD.unpack_from(mm, 0)
    if magic == 0:
        return ENOTREADY
    if magic != C.MAGIC:
        return EFORMAT
    if version != C.VERSION:
        return EVERSION
    need = C.seg_size_for(capacity)
    if header_size != C.HEADER_SIZE or need == 0 or need > size:
        return EFORMAT
    return capacity


class SegmentHandle:
    """An open fastshm segment over an mmap."""

    __slots__ = (
        "name", "_mm", "_mv", "_fd", "_anchor", "_tlock",
        "capacity", "size", "created", "_stride", "__weakref__",
    )

    def __init__(
        self, name: str, how: int, capacity: int, mode: int, any_owner: bool
    ) -> None:
        need = C.seg_size_for(capacity) if how != C.ATTACH else 0
        deadline = time.monotonic() + _READY_WAIT_S
        backoff = 20e-6
        while True:
            try:
                mm, size, created, fd = _map(name, how, need, mode, reserve=True)
            except ValueError:  # size 0: its creator has not sized it yet
                code = EEMPTY
            else:
                if created:
                    C.HEAD.pack_into(mm, 0, 0, C.VERSION, C.HEADER_SIZE, capacity)
                    # The magic last: an opener that sees it sees the rest.
                    C.U32.pack_into(mm, C.H_MAGIC, C.MAGIC)
                    code = capacity
                else:
                    code = _attach(mm, size)
                if code > 0:
                    break
                mm.close()
                if fd >= 0:
                    os.close(fd)
            if code not in (ENOTREADY, EEMPTY) or time.monotonic() >= deadline:
                raise_for(code, name)
            time.sleep(backoff)
            backoff = min(backoff * 2, 0.01)
        self.name = name
        self._mm = mm
        self._mv = memoryview(mm)
        self._fd = fd
        self._anchor = _futex_anchor(mm)
        self._tlock = threading.Lock()
        if fd >= 0:
            _open_handles.add(self)
        self.capacity = code
        self.size = size
        self.created = created
        self._stride = C.stride_for(code)

    def __del__(self) -> None:
        try:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        except (AttributeError, OSError):
            pass

    # -- writer lock --

    def _lock(self) -> None:
        self._tlock.acquire()
        flocked = False
        try:
            if self._fd >= 0:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                flocked = True
            mm = self._mm
            # A native writer holds the word with a CAS; wait for it, or take
            # the word over when its owner is dead (asking the system about
            # the owner only every 50th round: it costs system calls).
            rounds = 0
            while True:
                owner = C.U64.unpack_from(mm, C.H_LOCK)[0]
                if owner == 0 or (rounds % 50 == 0 and owner_dead(owner) == 1):
                    break
                rounds += 1
                time.sleep(20e-6)
            _put(mm, C.H_LOCK, C.U64, self_id())
        except BaseException:  # e.g. Ctrl-C while waiting: hold nothing
            if flocked:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._tlock.release()
            raise

    def _unlock(self) -> None:
        _put(self._mm, C.H_LOCK, C.U64, 0)
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._tlock.release()

    # -- the operations --

    def store(self, data: C.BytesLike) -> int:
        n = len(data)
        if n > self.capacity:
            raise too_big(n, self.name, self.capacity)
        mm = self._mm
        self._lock()
        try:
            nxt: int = C.U64.unpack_from(mm, C.H_SEQ)[0] + 1
            if nxt > _SEQ_MAX:  # a corrupt counter: 2 * nxt would not fit its word
                raise_for(EFORMAT, self.name, "the store counter is out of range")
            off = C.HEADER_SIZE + (nxt & 1) * self._stride
            _put(mm, off + C.S_SEQ, C.U64, 2 * nxt - 1)
            _put(mm, off + C.S_LENGTH, C.U64, n)
            start = off + C.SLOT_HEADER_SIZE
            # Through the memoryview: PyPy's mmap slice assignment takes
            # bytes only, a memoryview slice takes any byte buffer.
            self._mv[start : start + n] = data
            _put(mm, off + C.S_SEQ, C.U64, 2 * nxt)
            _put(mm, C.H_SEQ, C.U64, nxt)
            notify = C.U32.unpack_from(mm, C.H_NOTIFY)[0]
            _put(mm, C.H_NOTIFY, C.U32, (notify + 1) & 0xFFFFFFFF)
            if C.U32.unpack_from(mm, C.H_WAITERS)[0]:
                _futex_wake(self._anchor, C.H_NOTIFY)
        finally:
            self._unlock()
        return nxt

    def _begin(self) -> Tuple[int, int, int, int]:
        """(payload offset, length, seq, slot word), as fshm_read_begin."""
        mm = self._mm
        while True:
            seq = C.U64.unpack_from(mm, C.H_SEQ)[0]
            if seq == 0:
                return C.HEADER_SIZE + C.SLOT_HEADER_SIZE, 0, 0, 0
            off = C.HEADER_SIZE + (seq & 1) * self._stride
            token, length = C.SLOT_WORDS.unpack_from(mm, off)
            if token == 2 * seq and length <= self.capacity:
                return off + C.SLOT_HEADER_SIZE, length, seq, token
            if C.U64.unpack_from(mm, C.H_SEQ)[0] == seq:
                raise_for(EFORMAT, self.name, "the current slot is inconsistent")
            time.sleep(0)

    def _end(self, offset: int, seq: int, token: int) -> bool:
        if seq == 0:
            return True
        now: int = C.U64.unpack_from(self._mm, offset - C.SLOT_HEADER_SIZE)[0]
        return now == token

    def load(self) -> Tuple[bytes, int]:
        mm = self._mm
        while True:
            off, length, seq, token = self._begin()
            data = mm[off : off + length]
            if self._end(off, seq, token):
                return data, seq

    def load_into(self, dst: memoryview) -> Tuple[int, int]:
        while True:
            off, length, seq, token = self._begin()
            if length > dst.nbytes:
                if not self._end(off, seq, token):
                    continue
                raise too_small(dst.nbytes, length)
            dst[:length] = self._mv[off : off + length]
            if self._end(off, seq, token):
                return length, seq

    def view(self) -> Tuple[memoryview, int]:
        while True:
            off, length, seq, token = self._begin()
            if self._end(off, seq, token):
                return self._mv[off : off + length].toreadonly(), seq

    def seq(self) -> int:
        seq: int = C.U64.unpack_from(self._mm, C.H_SEQ)[0]
        return seq

    def lock_owner(self) -> int:
        return C.U64.unpack_from(self._mm, C.H_LOCK)[0]  # type: ignore[no-any-return]

    def break_lock(self, owner: int) -> bool:
        # Without a compare-and-swap there is a window between the check and
        # the write; the caller has judged the owner gone, and a new writer
        # would have to arrive within it.
        if owner == 0 or self.lock_owner() != owner:
            return False
        _put(self._mm, C.H_LOCK, C.U64, 0)
        return True

    def wait(self, after: int, timeout: Optional[float]) -> Optional[int]:
        mm = self._mm
        unpack = C.U64.unpack_from
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
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                time.sleep(min(pause, left))
            else:
                time.sleep(pause)
            pause = min(pause * 2, _WAIT_SLEEP_MAX_S)


__all__ = ["FormatError", "RawMapping", "SegmentHandle", "unlink", "self_id", "owner_dead"]
