"""In-process cases: the copy path (store, load, load_into, view) and the
cost of opening a segment, for every contender.

Each contender is built explicitly and labelled:

- ``native``: ``fastshm.Segment(backend="native")``, the C core;
- ``python``: ``fastshm.Segment(backend="python")``, the pure-Python backend;
- ``stdlib``: ``multiprocessing.shared_memory.SharedMemory`` with the same
  length framing done in Python (no protection against torn reads);
- ``mmap``: the ``mmap`` module over a file in /dev/shm, same framing;
- ``native-bare``: the C core's store / load_into called straight through
  cffi with every argument prepared: what any wrapper around it must add to;
- ``memcpy-2slot`` (store only): the floor copying into two buffers in
  turn, as fastshm's two slots do;
- ``memcpy``: the floor, the same bytes copied between two ready buffers in
  one process; for ``load`` it is ``bytes(memoryview)``, the cost of making
  a new bytes object of that size.

Every contender is called through one Python function call per operation,
as a program would call it.
"""

from __future__ import annotations

import itertools
import mmap
import os
import struct
from multiprocessing import shared_memory
from typing import Any, Callable, Dict, List, Tuple

from fastshm import Segment

from .names import Names
from .timing import Progress, interleaved

LEN = struct.Struct("<Q")  # the length prefix stdlib and mmap frame with
OPS = ("store", "load", "load_into", "view")


def _unregister(name: str) -> None:
    """Python before 3.13 tracks every SharedMemory, attached or created, and
    unlinks it at exit; the suite removes its own, so it says so once."""
    try:
        from multiprocessing import resource_tracker

        resource_tracker.unregister("/" + name, "shared_memory")
    except Exception:
        pass


class FramedBuffer:
    """Length-framed message over a plain buffer: ``stdlib`` and ``mmap``."""

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf

    def store(self, data: bytes) -> None:
        buf = self.buf
        n = len(data)
        LEN.pack_into(buf, 0, n)
        buf[8 : 8 + n] = data

    def load(self) -> bytes:
        buf = self.buf
        (n,) = LEN.unpack_from(buf, 0)
        return bytes(buf[8 : 8 + n])

    def load_into(self, dst: memoryview) -> int:
        # Into a memoryview: a bytearray's own slice assignment from a
        # memoryview copies twice.
        buf = self.buf
        (n,) = LEN.unpack_from(buf, 0)
        dst[:n] = buf[8 : 8 + n]
        return n  # type: ignore[no-any-return]

    def view(self) -> memoryview:
        buf = self.buf
        (n,) = LEN.unpack_from(buf, 0)
        return buf[8 : 8 + n]


class Contenders:
    """The objects of one message size, opened once and closed together."""

    def __init__(self, names: Names, size: int) -> None:
        self.size = size
        self.data = os.urandom(size)
        self.dst = bytearray(size)
        self.closers: List[Callable[[], None]] = []
        self.objs: Dict[str, Any] = {}
        for backend in ("native", "python"):
            seg = Segment(names.new(backend), size, create=True, backend=backend)
            self.closers.append(seg.delete)
            self.objs[backend] = seg
        name = names.new("stdlib")
        sm = shared_memory.SharedMemory(name, create=True, size=size + 8)
        framed_sm = self.objs["stdlib"] = FramedBuffer(sm.buf)

        def close_sm() -> None:
            framed_sm.buf = None
            sm.close()
            sm.unlink()

        self.closers.append(close_sm)
        path = "/dev/shm/" + names.new("mmap")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size + 8)
            mm = mmap.mmap(fd, size + 8)
        finally:
            os.close(fd)
        mv = memoryview(mm)
        framed_mm = self.objs["mmap"] = FramedBuffer(mv)

        def close_mm() -> None:
            framed_mm.buf = None
            mv.release()
            mm.close()
            os.unlink(path)

        self.closers.append(close_mm)
        for obj in self.objs.values():
            obj.store(self.data)  # a message to load, and every page touched

    def ops(self, op: str) -> Dict[str, Callable[[], object]]:
        data, dst = self.data, self.dst
        out: Dict[str, Callable[[], object]] = {}
        dst_view = memoryview(dst)
        for label, obj in self.objs.items():
            if op == "store":
                out[label] = lambda f=obj.store: f(data)
            elif op == "load":
                out[label] = obj.load
            elif op == "load_into":
                # fastshm takes the bytearray itself, as its API says; the
                # framed buffers a memoryview of it, their fastest way.
                target = dst if isinstance(obj, Segment) else dst_view
                out[label] = lambda f=obj.load_into, t=target: f(t)
            else:
                out[label] = obj.view
        if op in ("store", "load_into"):
            out["native-bare"] = self._bare(op)
        src = memoryview(self.data)
        floor_dst = memoryview(bytearray(self.size))
        if op in ("store", "load_into"):

            def memcpy() -> None:
                floor_dst[:] = src

            out["memcpy"] = memcpy
        if op == "store":
            # A store writes the slot that is not current: two destinations in
            # turn, twice the memory in the caches.
            two = [floor_dst, memoryview(bytearray(self.size))]
            turn = itertools.cycle(two)

            def memcpy_2slot() -> None:
                next(turn)[:] = src

            out["memcpy-2slot"] = memcpy_2slot
        elif op == "load":
            out["memcpy"] = lambda: bytes(src)  # a new bytes object of that size
        return out

    def _bare(self, op: str) -> Callable[[], object]:
        from fastshm._fastshm import ffi, lib

        seg = self.objs["native"]._h._seg
        words = ffi.new("uint64_t[2]")
        n_out, seq_out = ffi.cast("size_t *", words), words + 1
        data, size = self.data, self.size
        if op == "store":
            return lambda: lib.fshm_store(seg, data, size, seq_out)
        dst = ffi.from_buffer(self.dst)
        self._keep = (words, dst)
        return lambda: lib.fshm_load(seg, dst, size, n_out, seq_out)

    def close(self) -> None:
        self.objs.clear()
        for close in reversed(self.closers):
            close()


def copy_path(
    names: Names,
    sizes: List[int],
    batch_ns: float,
    repeats: int,
    progress: Progress,
) -> List[Dict[str, Any]]:
    rows = []
    for size in sizes:
        c = Contenders(names, size)
        try:
            for op in OPS:
                progress.step(f"copy path: {op} {size} B")
                # View is the same at every size; the others copy, so fewer
                # calls per batch at the large sizes keep the run short.
                stats = interleaved(c.ops(op), batch_ns, repeats)
                for label, st in stats.items():
                    row = {"case": "copy", "op": op, "contender": label, "size": size, **st}
                    if op != "view":
                        row["throughput_GBps"] = size / st["median_ns"]
                    rows.append(row)
        finally:
            c.close()
    return rows


def _open_ops(names: Names) -> Tuple[Dict[str, Dict[str, Callable[[], object]]], str]:
    """create+unlink, attach+close and open-or-create of an existing name;
    and the stdlib's existing name."""
    size = 1024
    ops: Dict[str, Dict[str, Callable[[], object]]] = {
        "create+unlink": {},
        "attach+close": {},
        "open-or-create existing": {},
    }
    for backend in ("native", "python"):
        fresh = names.new(backend + "c")
        existing = names.new(backend + "a")
        Segment(existing, size, create=True, backend=backend).close()

        def create(fresh: str = fresh, backend: str = backend) -> None:
            Segment(fresh, size, create=True, backend=backend).delete()

        def attach(existing: str = existing, backend: str = backend) -> None:
            Segment(existing, create=False, backend=backend).close()

        def either(existing: str = existing, backend: str = backend) -> None:
            Segment(existing, size, backend=backend).close()

        ops["create+unlink"][backend] = create
        ops["attach+close"][backend] = attach
        ops["open-or-create existing"][backend] = either

    fresh = names.new("stdlibc")
    existing = names.new("stdliba")
    shared_memory.SharedMemory(existing, create=True, size=size).close()

    def sm_create() -> None:
        sm = shared_memory.SharedMemory(fresh, create=True, size=size)
        sm.close()
        sm.unlink()

    def sm_attach() -> None:
        shared_memory.SharedMemory(existing).close()

    def sm_either() -> None:
        # The stdlib has no open-or-create: the usual idiom.
        try:
            sm = shared_memory.SharedMemory(existing, create=True, size=size)
        except FileExistsError:
            sm = shared_memory.SharedMemory(existing)
        sm.close()

    ops["create+unlink"]["stdlib"] = sm_create
    ops["attach+close"]["stdlib"] = sm_attach
    ops["open-or-create existing"]["stdlib"] = sm_either

    fresh_path = "/dev/shm/" + names.new("mmapc")
    existing_path = "/dev/shm/" + names.new("mmapa")
    fd = os.open(existing_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, size)
    os.close(fd)

    def mm_create() -> None:
        fd = os.open(fresh_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(fd, size)
        mmap.mmap(fd, size).close()
        os.close(fd)
        os.unlink(fresh_path)

    def mm_attach() -> None:
        fd = os.open(existing_path, os.O_RDWR)
        mmap.mmap(fd, 0).close()
        os.close(fd)

    def mm_either() -> None:
        fd = os.open(existing_path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(fd).st_size == 0:
            os.ftruncate(fd, size)
        mmap.mmap(fd, 0).close()
        os.close(fd)

    ops["create+unlink"]["mmap"] = mm_create
    ops["attach+close"]["mmap"] = mm_attach
    ops["open-or-create existing"]["mmap"] = mm_either
    return ops, existing


def open_costs(
    names: Names, batch_ns: float, repeats: int, progress: Progress
) -> List[Dict[str, Any]]:
    rows = []
    all_ops, sm_existing = _open_ops(names)
    try:
        for case, ops in all_ops.items():
            progress.step(f"open costs: {case}")
            for label, st in interleaved(ops, batch_ns, repeats, max_number=4096).items():
                rows.append({"case": "open", "op": case, "contender": label, "size": 1024, **st})
    finally:
        # Attaching registered the stdlib name with the resource tracker
        # again (Python < 3.13); once unregistered it stops tracking it.
        _unregister(sm_existing)
        names.sweep()
    return rows
