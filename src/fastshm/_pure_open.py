"""The python backend's opening of a segment or a queue, as fshm__open and
``unfinished`` in csrc/slot.c: the header both share (``_check_header``,
``_publish``; the segment's ``_attach`` and ``_initialise``), mapping the
object and waiting for a maker at work (``_open_object``), and judging an
unfinished object, made anew when its maker died (``_unfinished``,
``_take_over``)."""

from __future__ import annotations

import errno
import mmap
import os
import time
from typing import Any, Tuple

from . import _common as C
from ._errors import (
    EABANDONED,
    EEMPTY,
    EFORMAT,
    EKIND,
    ENOTREADY,
    EVERSION,
    os_error,
    raise_for,
)
from ._pure_lock import _LINUX, _put, _u32, _u64
from ._pure_map import _MAKING_MODE, _TRACKFD_ARG, _Claim, _claim, _Empty, _made, _map, unlink
from ._pure_process import owner_dead, self_id

_READY_WAIT_S = 1.0
# A channel's magic ("FSHC", _pure_channel): a segment or queue opener names it.
_CHANNEL_MAGIC = 0x43485346
# The longest an opener waits for a creator that is alive (as slot.c does):
# a stopped creator, or a dead one whose pid was reused, would hold it forever.
_CREATOR_WAIT_S = 60.0


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

