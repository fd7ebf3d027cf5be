"""The python backend's mapping layer, as csrc/map_posix.c and
map_win32.c: opening or creating a name and mapping it (``_open_posix``,
``_open_windows``, ``_map``), removing it (``unlink``), a mapping without a
header (``RawMapping``), and the init lock and making mark of an object
being made (``_lock_new``, ``_made``, ``_claim``)."""

from __future__ import annotations

import errno
import mmap
import os
import stat
import sys
from typing import Any, Tuple, Union

from . import _common as C
from ._errors import EBUSY, EEMPTY, ENOTREG, os_error, owner_error, raise_for

if C.WINDOWS:
    import _winapi

    fcntl: Any = None
else:
    import _posixshmem
    import fcntl

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

