"""The native backend: fastshm's C core through cffi.

Same functions and classes as ``_pure``; ``segment.py`` and
``shared_memory.py`` sit on top of either.
"""

from __future__ import annotations

import errno
import sys
import time
from typing import Any, Optional, Tuple

from . import _common as C
from ._errors import ESMALL, ETIMEOUT, ETOOBIG, raise_for
from ._fastshm import ffi, lib

name = "native"
features = frozenset({"atomic_lock", "futex"} if sys.platform.startswith("linux") else {"atomic_lock"})
NAME_MAX: int = lib.fshm_name_max()

# A blocking wait returns to Python this often, so Ctrl-C and other signal
# handlers run promptly while the GIL is released in between.
_WAIT_SLICE_NS = 50_000_000


def _mapping_view(base: Any, size: int) -> memoryview:
    """A memoryview over the mapping that owns it: the mapping is unmapped
    only when this view and every slice or export of it are gone, so a view
    that outlives close() never touches unmapped memory."""
    owner = ffi.gc(ffi.cast("unsigned char *", base), lambda p: lib.fshm_unmap(p, size), size=size)
    return memoryview(ffi.buffer(owner, size))


def unlink(name: str) -> None:
    rc = lib.fshm_unlink(name.encode("utf-8"))
    if rc:
        raise_for(rc, name)


def self_id() -> int:
    return int(lib.fshm_self_id())


def owner_dead(owner: int) -> int:
    return int(lib.fshm_owner_dead(owner))


class RawMapping:
    """A named mapping without a header (fastshm.SharedMemory)."""

    __slots__ = ("buf", "size", "created")

    def __init__(self, name: str, how: int, size: int, mode: int) -> None:
        m = ffi.new("fshm_map *")
        rc = lib.fshm_map_open(m, name.encode("utf-8"), how, size, mode)
        if rc:
            raise_for(rc, name)
        self.size = int(m.size)
        self.created = bool(m.created)
        self.buf = _mapping_view(m.base, self.size)


class SegmentHandle:
    """An open fastshm segment: the C ``fshm_seg`` and its mapping."""

    __slots__ = ("name", "_seg", "_mv", "capacity", "size", "created")

    def __init__(self, name: str, how: int, capacity: int, mode: int) -> None:
        seg = ffi.new("fshm_seg *")
        m = ffi.new("fshm_map *")
        rc = lib.fshm_seg_open(seg, m, name.encode("utf-8"), how, capacity, mode)
        if rc:
            raise_for(rc, name)
        self.name = name
        self._seg = seg
        self.size = int(m.size)
        self.created = bool(m.created)
        self.capacity = int(seg.capacity)
        self._mv = _mapping_view(m.base, self.size)

    def store(self, data: C.BytesLike) -> int:
        seq = ffi.new("uint64_t *")
        rc = lib.fshm_store(self._seg, ffi.from_buffer(data), len(data), seq)
        if rc:
            if rc == ETOOBIG:
                raise ValueError(
                    f"message of {len(data)} bytes does not fit {self.name!r}, "
                    f"whose capacity is {self.capacity} bytes"
                )
            raise_for(rc, self.name)
        return int(seq[0])

    def load(self) -> Tuple[bytes, int]:
        seg = self._seg
        r = ffi.new("fshm_read *")
        while True:
            rc = lib.fshm_read_begin(seg, r)
            if rc:
                raise_for(rc, self.name, "the current slot is inconsistent")
            off = r.offset
            data = self._mv[off : off + r.length].tobytes()
            if lib.fshm_read_end(seg, r) == 0:
                return data, int(r.seq)

    def load_into(self, dst: memoryview) -> Tuple[int, int]:
        n = ffi.new("size_t *")
        seq = ffi.new("uint64_t *")
        rc = lib.fshm_load(self._seg, ffi.from_buffer(dst), dst.nbytes, n, seq)
        if rc:
            if rc == ESMALL:
                raise ValueError(
                    f"buffer of {dst.nbytes} bytes is too small for the current "
                    f"message of {n[0]} bytes; nothing was copied"
                )
            raise_for(rc, self.name, "the current slot is inconsistent")
        return int(n[0]), int(seq[0])

    def view(self) -> Tuple[memoryview, int]:
        r = ffi.new("fshm_read *")
        while True:
            rc = lib.fshm_read_begin(self._seg, r)
            if rc:
                raise_for(rc, self.name, "the current slot is inconsistent")
            if lib.fshm_read_end(self._seg, r) == 0:
                off = r.offset
                return self._mv[off : off + r.length].toreadonly(), int(r.seq)

    def seq(self) -> int:
        return int(lib.fshm_seq(self._seg))

    def length(self) -> int:
        r = ffi.new("fshm_read *")
        rc = lib.fshm_read_begin(self._seg, r)
        if rc:
            raise_for(rc, self.name, "the current slot is inconsistent")
        return int(r.length)

    def lock_owner(self) -> int:
        return int(lib.fshm_lock_owner(self._seg))

    def wait(self, after: int, timeout: Optional[float]) -> Optional[int]:
        """The newest seq once it is greater than ``after``; None when
        ``timeout`` seconds passed first."""
        seq = ffi.new("uint64_t *")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            slice_ns = _WAIT_SLICE_NS
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    slice_ns = 0
                else:
                    slice_ns = min(slice_ns, int(left * 1e9))
            rc = lib.fshm_wait(self._seg, after, slice_ns, seq)
            if rc == 0:
                return int(seq[0])
            if rc == ETIMEOUT:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
            elif rc != errno.EINTR:  # EINTR: a signal, whose handler runs here
                raise_for(rc, self.name)
