"""In-process cases: the copy path (store, load, load_into, view) and the
cost of opening a segment, for every contender.

Each contender is built explicitly and labelled:

- ``native``: ``fastshm.Segment(backend="native")``, the C core through the
  CPython C-API binding (on PyPy, where there is none, through cffi);
- ``native-cffi``: the same C core through the cffi binding, so the C-API
  binding's gain is measured (left out where ``native`` already is cffi);
- ``python``: ``fastshm.Segment(backend="python")``, the pure-Python backend;
- ``stdlib``: ``multiprocessing.shared_memory.SharedMemory`` with the same
  length framing done in Python (no protection against torn reads);
- ``posix_ipc`` (64 B, when the package is installed): the C-API peer a user
  might pick instead, ``posix_ipc.SharedMemory`` + ``mmap``, same framing;
- ``mmap``: the ``mmap`` module over a file in /dev/shm, same framing;
- ``native-bare``: the C core's store / load_into called straight through
  cffi with every argument prepared;
- ``memcpy-2slot`` (store only): copying into two buffers in turn, as
  fastshm's two slots do;
- ``memcpy``: the same bytes copied between two ready buffers by a
  memoryview slice assignment; for ``load`` it is ``bytes(memoryview)``, the
  cost of making a new bytes object of that size;
- ``memcpy-c`` (store, load_into): C's memcpy between two ready buffers,
  looping in C: the physical floor of the copy;
- ``slice`` (view): slicing the stdlib's ``buf`` at a known length, the
  floor of handing out a view.

Every contender but the C loops is called through one Python function call
per operation, as a program would call it.
"""

from __future__ import annotations

import itertools
import mmap
import os
import struct
from multiprocessing import shared_memory
from typing import Any, Callable, Dict, List, Tuple

from fastshm import Segment

from . import cfloor
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


def native_labels() -> List[Tuple[str, str]]:
    """(label, backend) of fastshm's native routes here: ``native`` is the
    default binding; ``native-cffi`` is added when that is not cffi."""
    import fastshm

    out = [("native", "native")]
    if "cffi" in CFFI_ROUTE and getattr(fastshm, "binding", "cffi") != "cffi":
        out.append(("native-cffi", "native-cffi"))
    return out


def _has_cffi_route() -> Tuple[str, ...]:
    try:
        from fastshm import _backend

        _backend.resolve("native-cffi")
        return ("cffi",)
    except Exception:
        return ()


CFFI_ROUTE = _has_cffi_route()


def posix_ipc_module() -> Any:
    try:
        import posix_ipc
    except ImportError:
        return None
    return posix_ipc


POSIX_IPC_SIZES = (64,)


class Contenders:
    """The objects of one message size, opened once and closed together."""

    def __init__(self, names: Names, size: int) -> None:
        self.size = size
        self.data = os.urandom(size)
        self.dst = bytearray(size)
        self.closers: List[Callable[[], None]] = []
        self.objs: Dict[str, Any] = {}
        for label, backend in native_labels() + [("python", "python")]:
            seg = Segment(names.new(label), size, create=True, backend=backend)
            self.closers.append(seg.delete)
            self.objs[label] = seg
        name = names.new("stdlib")
        sm = shared_memory.SharedMemory(name, create=True, size=size + 8)
        framed_sm = self.objs["stdlib"] = FramedBuffer(sm.buf)
        self.sm_buf = sm.buf

        def close_sm() -> None:
            framed_sm.buf = None
            self.sm_buf = None
            sm.close()
            sm.unlink()

        self.closers.append(close_sm)
        pi = posix_ipc_module()
        if pi is not None and size in POSIX_IPC_SIZES:
            pname = "/" + names.new("pipc")
            shm = pi.SharedMemory(pname, pi.O_CREX, size=size + 8)
            pmm = mmap.mmap(shm.fd, size + 8)
            shm.close_fd()
            pmv = memoryview(pmm)
            framed_pi = self.objs["posix_ipc"] = FramedBuffer(pmv)

            def close_pi() -> None:
                framed_pi.buf = None
                pmv.release()
                pmm.close()
                shm.unlink()

            self.closers.append(close_pi)
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
            bare = self._bare(op)
            if bare is not None:
                out["native-bare"] = bare
        src = memoryview(self.data)
        floor_dst = memoryview(bytearray(self.size))
        if op in ("store", "load_into"):

            def memcpy() -> None:
                floor_dst[:] = src

            out["memcpy"] = memcpy
            c = cfloor.memcpy_loop(self.size)
            if c is not None:
                out["memcpy-c"] = c
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
        elif op == "view":
            buf, n = self.sm_buf, self.size
            out["slice"] = lambda: buf[8 : 8 + n]  # type: ignore[index]
        return out

    def _bare(self, op: str) -> Any:
        seg_obj = self.objs.get("native-cffi", self.objs["native"])
        h = getattr(seg_obj, "_h", None)
        if h is None or not hasattr(h, "_seg"):
            return None
        from fastshm._fastshm import ffi, lib

        seg = h._seg
        words = ffi.new("uint64_t[2]")
        n_out, seq_out = ffi.cast("size_t *", words), words + 1
        data, size = self.data, self.size
        if op == "store":
            self._keep_store = words
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
    """create+unlink, attach+close and open-or-create of an existing name for
    every contender, and the C floor of the same system calls; returns the
    stdlib's existing name too."""
    import fastshm

    size = 1024
    ops: Dict[str, Dict[str, Callable[[], object]]] = {
        "create+unlink": {},
        "attach+close": {},
        "open-or-create existing": {},
    }
    for label, backend in native_labels() + [("python", "python")]:
        fresh = names.new(label + "c")
        existing = names.new(label + "a")
        Segment(existing, size, create=True, backend=backend).close()

        def create(fresh: str = fresh, backend: str = backend) -> None:
            Segment(fresh, size, create=True, backend=backend).delete()

        def attach(existing: str = existing, backend: str = backend) -> None:
            Segment(existing, create=False, backend=backend).close()

        def either(existing: str = existing, backend: str = backend) -> None:
            Segment(existing, size, backend=backend).close()

        ops["create+unlink"][label] = create
        ops["attach+close"][label] = attach
        ops["open-or-create existing"][label] = either
        if label == "native":
            native_existing = existing

    # fastshm's drop-in SharedMemory, default backend.
    fresh_fs = names.new("fsmc")
    existing_fs = names.new("fsma")
    fastshm.SharedMemory(existing_fs, create=True, size=size).close()

    def fs_create() -> None:
        sm = fastshm.SharedMemory(fresh_fs, create=True, size=size)
        sm.close()
        sm.unlink()

    def fs_attach() -> None:
        fastshm.SharedMemory(existing_fs).close()

    ops["create+unlink"]["SharedMemory"] = fs_create
    ops["attach+close"]["SharedMemory"] = fs_attach

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

    pi = posix_ipc_module()
    if pi is not None:
        p_fresh = "/" + names.new("pipcc")
        p_existing = "/" + names.new("pipca")
        shm = pi.SharedMemory(p_existing, pi.O_CREX, size=size)
        shm.close_fd()

        def pi_create() -> None:
            shm = pi.SharedMemory(p_fresh, pi.O_CREX, size=size)
            mm = mmap.mmap(shm.fd, size)
            shm.close_fd()
            mm.close()
            shm.unlink()

        def pi_attach() -> None:
            shm = pi.SharedMemory(p_existing)
            mm = mmap.mmap(shm.fd, shm.size)
            shm.close_fd()
            mm.close()

        def pi_either() -> None:
            shm = pi.SharedMemory(p_existing, pi.O_CREAT, size=size)
            mm = mmap.mmap(shm.fd, shm.size)
            shm.close_fd()
            mm.close()

        ops["create+unlink"]["posix_ipc"] = pi_create
        ops["attach+close"]["posix_ipc"] = pi_attach
        ops["open-or-create existing"]["posix_ipc"] = pi_either

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

    # The floor: the same system calls made from C, looping in C, on a file
    # as large as fastshm's segment of that capacity (attaching maps the one
    # fastshm made).
    att = cfloor.attach_loop(native_existing)
    try:
        file_size = os.stat("/dev/shm/" + native_existing).st_size
    except OSError:
        file_size = size
    crt = cfloor.create_loop(names.new("cfloorc"), file_size)
    if att is not None and crt is not None:
        ops["create+unlink"]["c-syscalls"] = crt
        ops["attach+close"]["c-syscalls"] = att
        ops["open-or-create existing"]["c-syscalls"] = att
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
