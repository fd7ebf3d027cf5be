"""The ``fastshm`` command: the original program's menu, one-shot
store / load / delete / info / list for scripts, and put / get for queues."""

from __future__ import annotations

import argparse
import math
import mmap
import os
import queue
import select
import shlex
import signal
import stat
import subprocess
import sys
import time
from types import FrameType
from typing import BinaryIO, Callable, List, Optional, TextIO, Tuple, TypeVar, Union

from . import _common as C
from ._backend import CHOICES, resolve
from ._errors import Abandoned, FormatError, ProtocolMismatch
from .queue import Queue
from .segment import Segment
from .shared_memory import SharedMemory

T = TypeVar("T")

DEFAULT_NAME = "richong_Shared_Mem"
DEFAULT_SIZE = 1024
SHM_DIR = "/dev/shm"
# How often `load --follow`, `get` and `put` check that the name still leads
# to what they opened.
FOLLOW_CHECK_S = 0.5
# The longest slice a queue wait is cut into, so Ctrl-C ends it this soon.
INTERRUPT_CHECK_S = 0.1
DEFAULT_QUEUE_SIZE = 1 << 20


class _Usage(Exception):
    """An expected error: one line on stderr, exit status 1."""


def _size(text: str) -> int:
    try:
        return C.check_size(int(text, 0))
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds >= 0 (inf: no timeout), not {text!r}"
        )
    return value


def _open(args: argparse.Namespace, create: Optional[bool] = None) -> Segment:
    _refuse_other_kind(args, "segment")
    size = getattr(args, "size", None) or DEFAULT_SIZE
    try:
        return Segment(args.name, size, create=create, backend=args.backend,
                       any_owner=args.any_owner)
    except FormatError:
        _refuse_other_kind(args, "segment")  # made meanwhile, or not readable before
        raise


def _checked_name(args: argparse.Namespace) -> str:
    return C.check_name(args.name, resolve(args.backend).NAME_MAX)


def _header(args: argparse.Namespace, name: str) -> Optional[Tuple[int, bytes]]:
    """(size, first bytes) of the object ``name`` leads to, read without
    opening it as a segment or a queue; None when there is none, or it cannot
    be read."""
    if not C.WINDOWS and os.path.isdir(SHM_DIR):
        return _peek(os.path.join(os.fsencode(SHM_DIR), name.encode("utf-8")))
    try:  # no directory to look in: map it raw
        shm = SharedMemory(name, backend=args.backend, any_owner=args.any_owner)
    except (OSError, ValueError):
        return None
    try:
        buf = shm.buf
        return shm.size, (bytes(buf[:C.HEADER_SIZE]) if buf is not None else b"")
    finally:
        shm.close()


_KINDS = {C.MAGIC: "segment", C.QUEUE_MAGIC: "queue", C.CHANNEL_MAGIC: "channel"}


def _kind(head: bytes) -> Optional[str]:
    """"segment", "queue" or "channel" by the magic at the start of
    ``head``; None for anything else."""
    if len(head) < 4:
        return None
    return _KINDS.get(C.U32.unpack_from(head, 0)[0])


def _kind_of(args: argparse.Namespace, name: str) -> Optional[str]:
    got = _header(args, name)
    return _kind(got[1]) if got is not None else None


def _refuse_other_kind(args: argparse.Namespace, want: str) -> None:
    """A clear error, before anything is changed, when ``args.name`` holds
    the other kind of fastshm object than the command works on."""
    name = _checked_name(args)
    found = _kind_of(args, name)
    if found is None or found == want:
        return
    shown = shlex.quote(name)
    use = {
        "queue": f"`fastshm get {shown}` takes its next message and `fastshm put {shown} "
                 "TEXT` adds one",
        "segment": f"`fastshm load {shown}` prints its message and `fastshm store {shown} "
                   "TEXT` replaces it",
        "channel": f"`fastshm subscribe {shown}` receives its next message and `fastshm "
                   f"publish {shown} TEXT` publishes one",
    }[found]
    raise _Usage(f"{name!r} is a fastshm {found.capitalize()}, not a {want.capitalize()}: "
                 f"{use}; nothing was changed")


def _show(data: bytes) -> str:
    return data.decode("utf-8", "backslashreplace")


def _escape(raw: bytes) -> str:
    """A name or text as one line of printable characters that cannot pass
    for other output: unchanged when it is printable UTF-8 without a
    backslash; otherwise escaped as repr() does (\\n, \\x1b, \\\\), with each
    byte that is not UTF-8 as \\xNN."""
    text = raw.decode("utf-8", "surrogateescape")
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])
    return "".join(out)


# ---- the menu ----


def _chomp(line: bytes) -> bytes:
    """``line`` without its line end (one newline, and a CR before it)."""
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line


def cmd_menu(args: argparse.Namespace, stdin: BinaryIO, out: TextIO) -> int:
    """The menu reads its input as bytes: what is typed after "1" is stored
    byte for byte, as `fastshm store NAME -` does, UTF-8 or not."""
    seg = _open(args)
    if seg.created:
        out.write(f"Created shared memory {seg.name!r} ({seg.capacity} bytes)\n")
    else:
        out.write(f"Found shared memory {seg.name!r} ({seg.capacity} bytes)\n")
    try:
        while True:
            out.write("Select 1. store  2. load  3. delete  q. quit\n> ")
            out.flush()
            line = stdin.readline()
            if not line:  # end of input: leave the segment as it is
                out.write("\n")
                return 0
            choice = line.strip()
            if choice == b"1":
                out.write("Input store string: ")
                out.flush()
                text = stdin.readline()
                if not text:
                    out.write("\n")
                    return 0
                try:
                    seq = seg.store(_chomp(text))
                except ValueError as e:
                    out.write(f"Not stored: {e}\n")
                else:
                    out.write(f"Stored message #{seq}\n")
            elif choice == b"2":
                data = seg.load()
                out.write(f"Load Shared Data: {_show(data)}\n")
            elif choice == b"3":
                seg.delete()
                out.write(f"Deleted {seg.name!r}\n")
                return 0
            elif choice in (b"q", b"quit", b"exit"):
                return 0
            elif choice:
                out.write(f"Select only 1, 2, 3 or q (got '{_escape(choice)}').\n")
    finally:
        seg.close()


# ---- one-shot commands ----


def _read_at_most(stdin: BinaryIO, limit: int) -> Tuple[bytes, Optional[int]]:
    """Up to ``limit`` bytes of ``stdin``, and the length of the whole input
    when it is known (a regular file), else None."""
    total: Optional[int] = None
    try:
        st = os.fstat(stdin.fileno())
        if stat.S_ISREG(st.st_mode):
            total = max(st.st_size - stdin.tell(), 0)
    except (OSError, ValueError, AttributeError):
        pass
    # In pieces: read(limit) would allocate all of a large capacity up front,
    # however short the input.
    data = bytearray()
    while len(data) < limit:
        piece = stdin.read(min(_READ_PIECE, limit - len(data)))
        if not piece:
            break
        data += piece
    return bytes(data), total


_READ_PIECE = 1 << 20


def _too_big(n: int, exact: bool, name: str, capacity: int) -> _Usage:
    size = f"{n} bytes" if exact else f"at least {n} bytes"
    return _Usage(
        f"message of {size} does not fit {name!r} (capacity {capacity} bytes); "
        "nothing was stored"
    )


def cmd_store(args: argparse.Namespace, stdin: BinaryIO, out: TextIO) -> int:
    # The room comes first: the segment's capacity when it exists, else
    # --size.  Standard input is read no further than one byte past it (so an
    # endless producer is refused at once), and a segment is created only
    # for a message that fits it.
    try:
        seg: Optional[Segment] = _open(args, create=False)
    except (FileNotFoundError, Abandoned):  # made anew below, if the message fits
        seg = None
    try:
        capacity = seg.capacity if seg is not None else args.size
        exact = True  # n is the message's length, not a lower bound
        if args.text == "-":
            data, total = _read_at_most(stdin, capacity + 1)
            if len(data) > capacity and total is not None:
                n, exact = max(total, len(data)), True
            else:
                n, exact = len(data), len(data) <= capacity
        else:
            data = os.fsencode(args.text)
            n = len(data)
        if n > capacity:
            shown = seg.name if seg is not None else C.check_name(args.name, 1 << 30)
            raise _too_big(n, exact, shown, capacity)
        if seg is None:
            # Open or create: another process may have made it meanwhile.
            seg = _open(args)
            if n > seg.capacity:
                raise _too_big(n, exact, seg.name, seg.capacity)
        seq = seg.store(data)
        out.write(f"stored message #{seq} ({n} bytes) in {seg.name!r}\n")
    finally:
        if seg is not None:
            seg.close()
    return 0


def _identity(name: str) -> Optional[Tuple[int, int]]:
    """(device, inode) of the object that ``name`` leads to now; None where
    there is no /dev/shm to look in, or it cannot be looked at."""
    if C.WINDOWS or not os.path.isdir(SHM_DIR):
        return None
    try:
        st = os.stat(os.path.join(SHM_DIR, name))
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _check_same(name: str, identity: Optional[Tuple[int, int]], kind: str = "segment",
                doing: str = "following it", after: str = "follow the new one") -> None:
    """Raise when ``name`` no longer leads to the object in use: what others
    store or put there would never reach this process again."""
    if identity is None:
        return
    try:
        st = os.stat(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        raise _Usage(f"{name!r} was deleted while {doing}") from None
    except OSError:
        return
    if (st.st_dev, st.st_ino) != identity:
        raise _Usage(
            f"{name!r} was replaced by a new {kind} while {doing}; "
            f"run the command again to {after}"
        )


def cmd_load(args: argparse.Namespace, out: BinaryIO) -> int:
    with _open(args, create=False) as seg:
        if not args.follow:
            data = seg.load()
            out.write(data)
            if out.isatty() and not data.endswith(b"\n"):
                out.write(b"\n")
            return 0
        return _follow(seg, args.timeout, out)


def _follow(seg: Segment, timeout: Optional[float], out: BinaryIO) -> int:
    """Print each new message until ``timeout`` quiet seconds (None or inf:
    never), checking every FOLLOW_CHECK_S that the name still leads to this
    segment; the waits are that long at most, so the library never sees an
    infinite timeout."""
    identity = _identity(seg.name)
    if timeout is not None and math.isinf(timeout):
        timeout = None
    if seg.seq:
        out.write(seg.load() + b"\n")
        out.flush()
    quiet_since = checked = time.monotonic()
    while True:
        now = time.monotonic()
        if now - checked >= FOLLOW_CHECK_S:
            _check_same(seg.name, identity)
            checked = now
        step = FOLLOW_CHECK_S
        if timeout is not None:
            left = quiet_since + timeout - now
            if left <= 0:
                return 0
            step = min(step, left)
        try:
            seg.wait(timeout=step)
        except TimeoutError:
            continue
        out.write(seg.load() + b"\n")
        out.flush()
        quiet_since = time.monotonic()


def cmd_delete(args: argparse.Namespace, out: TextIO) -> int:
    # By name alone: an object that is empty, never initialised, corrupt, of
    # another format version, or read-only to us is removed all the same.
    impl = resolve(args.backend)
    name = C.check_name(args.name, impl.NAME_MAX)
    if C.WINDOWS:
        # A Windows mapping has no name to remove: it goes with its last handle.
        kind = _kind_of(args, name)
        if kind == "queue":
            _open_queue(args, create=False).delete()
        elif kind == "channel":
            from .channel import Publisher

            Publisher(name, create=False, backend=args.backend,
                      any_owner=args.any_owner).delete()
        else:
            Segment(name, create=False, backend=args.backend,
                    any_owner=args.any_owner).delete()
    else:
        impl.unlink(name)
    out.write(f"deleted {name!r}\n")
    return 0


def cmd_info(args: argparse.Namespace, out: TextIO) -> int:
    kind = _kind_of(args, _checked_name(args))
    if kind == "queue":
        rows = _queue_rows(args)
    elif kind == "channel":
        from ._cli_channel import info_rows

        rows = info_rows(args)
    else:
        rows = _segment_rows(args)
    path = os.path.join(SHM_DIR, args.name.lstrip("/"))
    if os.path.exists(path):
        st = os.stat(path)
        rows.append(("mode", f"{st.st_mode & 0o777:#o}, uid {st.st_uid}"))
    width = max(len(key) for key, _ in rows) + 1
    for key, value in rows:
        out.write(f"{key:<{width}}{value}\n")
    return 0


def _segment_rows(args: argparse.Namespace) -> List[Tuple[str, str]]:
    with _open(args, create=False) as seg:
        owner = seg._lock_owner()
        return [
            ("name", _escape(seg.name.encode("utf-8"))),
            ("kind", "segment"),
            ("capacity", f"{seg.capacity} bytes"),
            ("length", f"{len(seg)} bytes"),
            ("stores", str(seg.seq)),
            ("format", f"fastshm version {C.VERSION}"),
            ("mapped", f"{seg._mapped_size} bytes"),
            ("writer", f"pid {owner & 0xFFFFFFFF} storing now" if owner else "none"),
            ("backend", seg.backend),
        ]


def _protocol(head: Optional[bytes], q: Queue) -> str:
    """Which backend's lock protocol the queue uses, from its header's
    flags (or, where the header cannot be read raw, from the backend that
    could open it)."""
    if head is not None and len(head) >= C.Q_FLAGS + 4:
        pylock = bool(C.U32.unpack_from(head, C.Q_FLAGS)[0] & C.QUEUE_PYLOCK)
    else:
        pylock = q.backend == "python"
    return "python" if pylock else "native"


def _queue_rows(args: argparse.Namespace) -> List[Tuple[str, str]]:
    with _open_queue(args, create=False) as q:
        got = _header(args, q.name)
        protocol = _protocol(got[1] if got else None, q)
        owner = q._lock_owner()
        rows = [
            ("name", _escape(q.name.encode("utf-8"))),
            ("kind", "queue"),
            ("capacity", f"{q.capacity} bytes of ring"),
            ("max_message", f"{q.max_message} bytes"),
            ("messages", str(q.qsize())),
            ("used", f"{q.bytes_used} bytes"),
            ("format", f"fastshm version {_version(got[1] if got else None)}"),
        ]
        if got is not None:
            rows.append(("mapped", f"{got[0]} bytes"))
        rows += [
            ("lock", _lock_text(owner, protocol, q.backend)),
            ("protocol", "python (a flock, which the system frees when its holder dies)"
             if protocol == "python" else "native (a compare-and-swap lock word)"),
            ("backend", q.backend),
        ]
    return rows


def _version(head: Optional[bytes]) -> int:
    """The format version in a header read raw; the one this fastshm writes
    (the only one it opens) when there is none."""
    if head is None or len(head) < C.HEAD.size:
        return C.VERSION
    return int(C.HEAD.unpack_from(head, 0)[1])


def _lock_text(owner: int, protocol: str, backend: str) -> str:
    if not owner:
        return "free"
    pid = owner & 0xFFFFFFFF
    judged = resolve(backend).owner_dead(owner)
    if judged == 1:
        if protocol == "python":
            return (f"pid {pid} is named, but has died (the next put or get takes "
                    "over, recounting if it must)")
        return f"pid {pid}, which has died (`fastshm unlock` frees it)"
    return f"held by pid {pid}, putting or getting now"


def cmd_unlock(args: argparse.Namespace, out: TextIO) -> int:
    if _kind_of(args, _checked_name(args)) == "queue":
        with _open_queue(args, create=False) as q:
            got = _header(args, q.name)
            if _protocol(got[1] if got else None, q) == "python":
                return _unlock_flock(q, out)
            return _unlock(q, args, out, "putting or getting",
                           "the queue's records may be damaged (the next put or get "
                           "recounts them, and reports a ring it cannot read)")
    with _open(args, create=False) as seg:
        return _unlock(seg, args, out, "storing", "its message and the next one may overlap")


def _unlock(obj: Union[Segment, Queue], args: argparse.Namespace, out: TextIO, doing: str,
            risk: str) -> int:
    owner = obj._lock_owner()
    if not owner:
        out.write(f"{obj.name!r} is not locked\n")
        return 0
    pid = owner & 0xFFFFFFFF
    judged = resolve(obj.backend).owner_dead(owner)
    if judged == 0 and not args.force:
        raise _Usage(
            f"{obj.name!r} is locked by pid {pid}, which is alive: it is {doing}, or "
            "stopped, or it took over the pid of a holder that died; the lock was left "
            "alone (if you are sure its holder is gone, "
            f"`fastshm unlock {obj.name} --force` frees it anyway)"
        )
    if judged < 0 and not args.force:
        raise _Usage(
            f"{obj.name!r} is locked by pid {pid} of another pid namespace, whose "
            "liveness cannot be checked from here; if that process is gone, run "
            f"`fastshm unlock {obj.name} --force`"
        )
    if not obj._break_lock(owner):
        raise _Usage(f"the lock of {obj.name!r} changed hands meanwhile; left alone")
    if judged == 0:
        _warn(f"pid {pid}, which held the lock of {obj.name!r}, is alive; the lock "
              f"was freed anyway (--force): if that process was {doing}, {risk}")
    out.write(f"unlocked {obj.name!r} (was held by pid {pid})\n")
    return 0


def _unlock_flock(q: Queue, out: TextIO) -> int:
    """A queue of the python backend's protocol: its lock is a flock, which
    only its holder's death or finishing releases; the lock word only names
    the holder, and a name left by a dead one is taken over by the next."""
    owner = q._lock_owner()
    if not owner:
        out.write(f"{q.name!r} is not locked\n")
        return 0
    pid = owner & 0xFFFFFFFF
    if resolve("python").owner_dead(owner) == 1:
        out.write(
            f"{q.name!r} names pid {pid} as its lock holder, which has died; the system "
            "released its lock (a flock) then, and the next put or get takes over: "
            "nothing to unlock, nothing changed\n"
        )
        return 0
    raise _Usage(
        f"{q.name!r} is locked by pid {pid}, which is alive or cannot be checked from "
        "here; its lock is a flock (the python backend's), which no other process can "
        "free, --force included: it is released when that process finishes its put or "
        "get, or ends; nothing was changed"
    )


_LIST_HEADER = ("NAME", "KIND", "CAPACITY", "STORES", "QUEUED", "USED", "MAPPED", "LOCK",
                "PROTOCOL")


def _list_row(cells: Tuple[object, ...]) -> str:
    name, kind, *rest = cells
    numbers = " ".join(f"{cell!s:>{w}}" for cell, w in zip(rest, (12, 10, 8, 12, 12, 8)))
    protocol = rest[-1] if len(rest) > 6 else ""
    return f"{name!s:<32} {kind!s:<7} {numbers} {protocol}".rstrip() + "\n"


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    """One row per object: a segment's capacity and stores so far; a queue's
    ring bytes, messages queued and ring bytes they use (snapshots read from
    its header without taking its lock), and whose lock protocol it uses."""
    if not os.path.isdir(SHM_DIR):
        raise _Usage(f"listing needs {SHM_DIR}, which this platform does not have")
    found = 0
    # Names as bytes: any byte but NUL and '/' may be in one.
    for entry in sorted(os.listdir(os.fsencode(SHM_DIR))):
        got = _peek(os.path.join(os.fsencode(SHM_DIR), entry))
        if got is None:
            continue
        size, head = got
        shown = _escape(entry)
        kind = _kind(head) if len(head) >= C.Q_LOCK + 8 else None
        row: Optional[Tuple[object, ...]] = None
        if kind is not None:
            capacity = C.U64.unpack_from(head, C.H_CAPACITY)[0]
            owner = C.U64.unpack_from(head, C.H_LOCK)[0]
            lock = owner & 0xFFFFFFFF if owner else "-"
        if kind == "segment":
            seq = C.U64.unpack_from(head, C.H_SEQ)[0]
            row = (shown, kind, capacity, seq, "-", "-", size, lock, "-")
        elif kind == "queue":
            used = C.U64.unpack_from(head, C.Q_TAIL)[0] - C.U64.unpack_from(head, C.Q_HEAD)[0]
            count = _queued(os.path.join(os.fsencode(SHM_DIR), entry), head, capacity, args)
            pylock = C.U32.unpack_from(head, C.Q_FLAGS)[0] & C.QUEUE_PYLOCK
            row = (shown, kind, capacity, "-", count, max(used, 0), size, lock,
                   "python" if pylock else "native")
        elif kind == "channel":
            from ._cli_channel import list_row

            row = list_row(shown, size, head)
        elif args.all:
            row = (shown, "raw", "-", "-", "-", "-", size, "-", "-")
        if row is not None:
            if not found:
                out.write(_list_row(_LIST_HEADER))
            out.write(_list_row(row))
            found += 1
    if not found:
        out.write("no fastshm segments or queues\n")
    return 0


def _queued(path: bytes, head: bytes, capacity: int, args: argparse.Namespace) -> int:
    """Messages queued in the queue at ``path``: its header's count, or, when
    a holder killed between two stores left that short, the records counted
    (read-only, as qsize() does)."""
    count: int = C.U64.unpack_from(head, C.Q_COUNT)[0]
    opened = _open_regular(path)
    if opened is None:
        return count
    fd, size = opened
    try:
        if size < C.HEADER_SIZE + capacity:
            return count
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mm:
            return C.queue_count(mm, capacity, resolve(args.backend).owner_dead)
    except (OSError, ValueError):
        return count
    finally:
        os.close(fd)


def _open_regular(path: bytes) -> Optional[Tuple[int, int]]:
    """(descriptor, size) of the regular file at ``path``, opened for reading;
    None for anything else (a FIFO, a device, a directory or a symbolic link
    is never opened, so nothing can block), or when it cannot be opened."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)  # it may have been swapped since the lstat
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st.st_size


def _peek(path: bytes) -> Optional[Tuple[int, bytes]]:
    """(size, first bytes) of the regular file at ``path``; None for anything
    else (a FIFO, a device, a directory or a symbolic link is never opened,
    so nothing can block), or when it cannot be read."""
    opened = _open_regular(path)
    if opened is None:
        return None
    fd, size = opened
    try:
        return size, os.read(fd, C.HEADER_SIZE)
    except OSError:
        return None
    finally:
        os.close(fd)


# ---- queues ----


def _queue_size(text: str) -> int:
    try:
        return C.check_queue_size(int(text, 0))
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _ring(size: int) -> int:
    """The ring bytes a queue made with ``size`` gets (rounded up to 8)."""
    return (size + 7) & ~7


def _open_queue(args: argparse.Namespace, create: Optional[bool] = None) -> Queue:
    size = getattr(args, "size", None) or DEFAULT_QUEUE_SIZE
    try:
        return Queue(args.name, size, create=create, backend=args.backend,
                     any_owner=args.any_owner)
    except ProtocolMismatch:
        made_by = "native" if resolve(args.backend).name == "python" else "python"
        raise _Usage(
            f"queue {_checked_name(args)!r} was made by the {made_by} backend, whose lock "
            f"the {'python' if made_by == 'native' else 'native'} backend cannot take part "
            f"in: run the command with --backend {made_by}; nothing was changed"
        ) from None
    except FormatError:
        _refuse_other_kind(args, "queue")  # a segment read no header of before
        raise


def _no_queue(args: argparse.Namespace) -> _Usage:
    return _Usage(
        f"no queue named {_checked_name(args)!r}; put a message first "
        "(fastshm put NAME TEXT creates it)"
    )


class _OutputGone(Exception):
    """Standard output leads to a pipe or terminal nobody reads any more."""


class _Interrupt:
    """While a queue command runs, Ctrl-C is noted and acted on between
    waits, not raised at any instant: a message taken is always written out,
    and a put has either happened or not.

    Once the command has done its work (``settle()``), a Ctrl-C can no
    longer undo it, and must not turn the exit status into 130, which says
    nothing was put or taken: run as the ``fastshm`` command, the process
    ignores SIGINT from then on until it exits; called in-process, the old
    handler comes back."""

    def __init__(self) -> None:
        self.hit = False
        self._old: object = None
        self._settled = False

    def settle(self, as_command: bool) -> None:
        self.hit = False
        self._settled = as_command

    def __enter__(self) -> "_Interrupt":
        try:
            self._old = signal.signal(signal.SIGINT, self._note)
        except ValueError:  # not the main thread: leave Ctrl-C as it is
            self._old = None
        return self

    def _note(self, signum: int, frame: Optional[FrameType]) -> None:
        self.hit = True

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            keep = signal.SIG_IGN if self._settled else self._old
            signal.signal(signal.SIGINT, keep)  # type: ignore[arg-type]

    def check(self) -> None:
        if self.hit:
            raise KeyboardInterrupt


def _sliced(attempt: Callable[[float], T], miss: "type[Exception]", timeout: Optional[float],
            stop: _Interrupt, still_there: Callable[[], None]) -> T:
    """``attempt(seconds)`` in waits of INTERRUPT_CHECK_S at most until it
    returns, or raises ``miss`` once ``timeout`` (None or inf: never) has
    passed; between waits, Ctrl-C ends it, and ``still_there()`` checks every
    FOLLOW_CHECK_S that the queue was not deleted or replaced."""
    start = checked = time.monotonic()
    deadline = None if timeout is None or math.isinf(timeout) else start + timeout
    while True:
        step = INTERRUPT_CHECK_S
        if deadline is not None:
            step = max(0.0, min(step, deadline - time.monotonic()))
        try:
            return attempt(step)
        except miss:
            if deadline is not None and time.monotonic() >= deadline:
                raise
        stop.check()
        now = time.monotonic()
        if now - checked >= FOLLOW_CHECK_S:
            still_there()
            checked = now


def _put_too_big(n: int, exact: bool, name: str, room: int, creating: bool) -> _Usage:
    size = f"{n} bytes" if exact else f"at least {n} bytes"
    if creating:
        hint = (f"a queue made with --size S takes messages of up to S - 8 bytes: "
                f"pass --size {C.record_size(n)} or more")
    else:
        hint = ("its size was set when it was made: delete it and put again with a "
                "larger --size, or send the message in parts")
    return _Usage(
        f"message of {size} is larger than queue {name!r} holds (max_message {room} "
        f"bytes); nothing was put ({hint})"
    )


def cmd_put(args: argparse.Namespace, stdin: BinaryIO, out: TextIO) -> int:
    # As store: the room first (the queue's when it exists, else --size),
    # standard input read no further than one byte past it, and a queue
    # created only for a message that fits it.
    _refuse_other_kind(args, "queue")
    name = _checked_name(args)
    try:
        q: Optional[Queue] = _open_queue(args, create=False)
    except (FileNotFoundError, Abandoned):  # made anew below, if the message fits
        q = None
    try:
        room = q.max_message if q is not None else _ring(args.size) - 8
        exact = True
        if args.text == "-":
            data, total = _read_at_most(stdin, room + 1)
            if len(data) > room and total is not None:
                n = max(total, len(data))
            else:
                n, exact = len(data), len(data) <= room
        else:
            data = os.fsencode(args.text)
            n = len(data)
        if n > room:
            raise _put_too_big(n, exact, name, room, q is None)
        if q is None:
            q = _open_queue(args)  # open or create: another process may have made it
            if n > q.max_message:
                raise _put_too_big(n, exact, q.name, q.max_message, False)
        with _Interrupt() as stop:
            _put(q, data, args, stop)
            stop.settle(args.as_command)
            out.write(f"put {n} bytes in queue {q.name!r}\n")
    finally:
        if q is not None:
            q.close()
    return 0


def _put(q: Queue, data: bytes, args: argparse.Namespace, stop: _Interrupt) -> None:
    identity = _identity(q.name)

    def still_there() -> None:
        _check_same(q.name, identity, "queue", "waiting for room in it; nothing was put",
                    "put in the new one")

    def attempt(step: float) -> None:
        q.put(data, timeout=step)

    try:
        if args.nowait:
            q.put(data, block=False)
        else:
            _sliced(attempt, queue.Full, args.timeout, stop, still_there)
    except queue.Full as e:
        waited = ("--nowait" if args.nowait
                  else f"waited {args.timeout:g} seconds")
        raise _Usage(
            f"{e or f'queue {q.name!r} is full'} ({waited}); nothing was put: "
            f"a consumer (`fastshm get {shlex.quote(q.name)}`) makes room, or wait "
            "longer with --timeout (without it, put waits as long as it takes)"
        ) from None


def cmd_get(args: argparse.Namespace, out: BinaryIO) -> int:
    _refuse_other_kind(args, "queue")
    try:
        q = _open_queue(args, create=False)
    except FileNotFoundError:
        raise _no_queue(args) from None
    # The queue is closed before Ctrl-C is let through again.
    with _Interrupt() as stop, q:
        identity = _identity(q.name)
        timeout = 0.0 if args.nowait else args.timeout

        def still_there() -> None:
            doing = "following it" if args.follow else "waiting for a message"
            _check_same(q.name, identity, "queue", doing, "get from the new one")

        def attempt(step: float) -> bytes:
            if _out_closed(out):
                raise _OutputGone  # nobody would read it: take nothing more
            return q.get(timeout=step)

        if not args.follow:
            try:
                data = _sliced(attempt, queue.Empty, timeout, stop, still_there)
            except _OutputGone:
                _quiet_stdout()
                raise _Usage("standard output is closed; nothing was taken") from None
            except queue.Empty as e:
                waited = ("--nowait" if args.nowait else "waited forever"
                          if timeout is None else f"waited {timeout:g} seconds")
                raise _Usage(
                    f"{e or f'queue {q.name!r} is empty'} ({waited}); nothing was taken: "
                    f"`fastshm put {shlex.quote(q.name)} TEXT` adds a message, or wait "
                    "longer with --timeout (without it, get waits as long as it takes)"
                ) from None
            tail = b"\n" if out.isatty() and not data.endswith(b"\n") else b""
            stop.settle(args.as_command)  # taken: only the writing is left
            _emit(out, q.name, data, tail)
            return 0
        pipe = _is_pipe(out)
        while True:
            try:
                data = _sliced(attempt, queue.Empty, timeout, stop, still_there)
                _emit(out, q.name, data, b"\n")
                if pipe:
                    # Not one message more into the pipe's buffer than its
                    # reader takes: what it holds when the reader quits is lost.
                    _wait_read(out, stop)
            except queue.Empty:
                return 0
            except _OutputGone:  # the reader is done, as `| head -1` is
                _quiet_stdout()
                return 0
            stop.check()


def _emit(out: BinaryIO, name: str, data: bytes, tail: bytes,
          source: str = "taken from queue") -> None:
    """Write a message taken from the queue (or received on a channel): it
    exists nowhere else for this process now, so a failure says so."""
    try:
        out.write(data + tail)
        out.flush()
    except OSError as e:
        _quiet_stdout()
        raise _Usage(
            f"a message of {len(data)} bytes {source} {name!r} could not be "
            f"written to standard output ({_os_message(e)}) and is lost"
        ) from None


def _out_closed(out: BinaryIO) -> bool:
    """True when ``out`` is a pipe or terminal whose other end is gone."""
    if not hasattr(select, "poll"):
        return False
    try:
        fd = out.fileno()
        poller = select.poll()
        poller.register(fd, 0)  # POLLERR and POLLHUP are reported anyway
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _is_pipe(out: BinaryIO) -> bool:
    """Whether ``out`` is a pipe whose unread bytes can be counted (Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return stat.S_ISFIFO(os.fstat(out.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False


def _unread(out: BinaryIO) -> int:
    """Bytes written to the pipe ``out`` that its reader has not read yet."""
    import array
    import fcntl
    import termios

    n = array.array("i", [0])
    try:
        fcntl.ioctl(out.fileno(), termios.FIONREAD, n, True)
    except (OSError, ValueError):
        return 0
    return n[0]


def _wait_read(out: BinaryIO, stop: "_Interrupt") -> None:
    """Until the reader of the pipe ``out`` has read all that was written to
    it; _OutputGone once it has gone.  Ctrl-C ends the wait."""
    pause = 0.0
    while _unread(out):
        if _out_closed(out):
            raise _OutputGone
        stop.check()
        if pause == 0.0:
            pause = 20e-6
            os.sched_yield()  # a reader on the other core is usually there already
            continue
        time.sleep(pause)
        pause = min(pause * 2, 0.01)
    if _out_closed(out):
        raise _OutputGone


def _quiet_stdout() -> None:
    """Point standard output at the null device, so that the flush at exit
    does not fail again on a closed pipe."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass


_DEMO_CHILD = """
import sys
from fastshm import Segment
seg = Segment(sys.argv[1], create=False, backend=sys.argv[2])
seq = seg.store("12345")
print(f"P1 (pid {__import__('os').getpid()}) stored '12345' as message #{seq}", flush=True)
seg.close()
"""


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    import secrets  # the demo's alone: every other command starts without it

    name = f"fastshm_demo_{secrets.token_hex(4)}"
    seg = Segment(name, 1024, create=True, backend=args.backend, any_owner=args.any_owner)
    try:
        out.write(f"P2 (pid {os.getpid()}) created {name!r} ({seg.backend} backend) "
                  "and waits for a message\n")
        out.flush()
        child = subprocess.Popen([sys.executable, "-c", _DEMO_CHILD, name, seg.backend])
        try:
            seg.wait(timeout=30)
        finally:
            child.wait(timeout=30)
        out.write(f"P2 (pid {os.getpid()}) loaded {seg.load_str()!r}\n")
    finally:
        seg.delete()
    out.write(f"deleted {name!r}\n")
    return 0 if child.returncode == 0 else 1


# ---- entry point ----


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastshm",
        description="Named shared memory between processes: store a message in one, "
        "load it in any other; put messages in a queue, each got once by any other; or "
        "publish messages on a channel, each received by every subscriber.",
    )
    p.add_argument("--backend", choices=CHOICES, default=None,
                   help="which implementation to use (default: FASTSHM_BACKEND or auto)")
    p.add_argument("--any-owner", action="store_true",
                   help="open segments that another user created too (by default they "
                        "are refused: their owner could read every message and "
                        "truncate the segment)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("menu", help="the interactive menu: 1. store  2. load  3. delete")
    m.add_argument("name", nargs="?", default=DEFAULT_NAME, help=f"default {DEFAULT_NAME}")
    m.add_argument("--size", type=_size, default=DEFAULT_SIZE,
                   help="capacity in bytes when creating (default 1024)")

    s = sub.add_parser("store", help="store TEXT (or stdin with -) as the message of NAME, "
                                     "creating NAME if needed")
    s.add_argument("name")
    s.add_argument("text", help="the message; - reads the bytes of standard input")
    s.add_argument("--size", type=_size, default=DEFAULT_SIZE,
                   help="capacity in bytes when creating (default 1024)")

    lo = sub.add_parser("load", help="write the message of NAME to standard output")
    lo.add_argument("name")
    lo.add_argument("-f", "--follow", action="store_true",
                    help="then print every new message, one per line, until interrupted")
    lo.add_argument("--timeout", type=_timeout, default=None, metavar="SECONDS",
                    help="with --follow: stop after this many seconds without a message "
                         "(inf: never, the default)")

    pu = sub.add_parser(
        "put", help="add TEXT (or stdin with -) to the queue NAME, creating NAME if needed",
        description="Add one message to the end of the queue NAME, creating the queue "
        "when it does not exist. When the queue is full, put waits for room as long as "
        "it takes (Ctrl-C gives up, exit status 130, nothing put); --timeout bounds the "
        "wait and --nowait skips it, and then a full queue is exit status 1, nothing put.")
    pu.add_argument("name")
    pu.add_argument("text", help="the message; - reads the bytes of standard input")
    pu.add_argument("--size", type=_queue_size, default=DEFAULT_QUEUE_SIZE,
                    help="ring bytes when creating (default 1048576; messages of up to "
                         "the size less 8 bytes fit)")
    _wait_options(pu, "for room")

    g = sub.add_parser(
        "get", help="take the next message from the queue NAME and write it to stdout",
        description="Take the message at the front of the queue NAME and write it to "
        "standard output, byte for byte (a newline is added only on a terminal). When "
        "the queue is empty, get waits for a message as long as it takes (Ctrl-C gives "
        "up, exit status 130, nothing taken); --timeout bounds the wait and --nowait "
        "skips it, and then an empty queue is exit status 1.")
    g.add_argument("name")
    g.add_argument("-f", "--follow", action="store_true",
                   help="take and print every message, one per line, as they come, until "
                        "Ctrl-C (exit 130) or until --timeout seconds pass without one "
                        "(exit 0); --nowait prints those queued now. Into a pipe, the "
                        "next message is taken only after the reader has read the last "
                        "one, and none after the reader is gone (exit 0); but a message "
                        "written has left the queue, so a reader that quits early "
                        "(| head -1) loses the one written after the last it read. "
                        "Elsewhere than on Linux, all that the pipe's buffer holds is "
                        "lost then")
    _wait_options(g, "for a message")

    d = sub.add_parser("delete", help="remove NAME (a segment, a queue or a channel)")
    d.add_argument("name")

    i = sub.add_parser("info", help="what NAME is: for a segment its capacity, length and "
                                    "stores so far; for a queue its messages queued, bytes "
                                    "used, capacity and lock; for a channel its slots, "
                                    "subscribers and how far behind each one is")
    i.add_argument("name")

    u = sub.add_parser("unlock", help="free the writer lock of NAME when its holder is gone")
    u.add_argument("name")
    u.add_argument("--force", action="store_true",
                   help="also when the holder's liveness cannot be checked (another "
                        "pid namespace), or when its pid is alive (a holder that died "
                        "and whose pid was reused); breaks the lock whoever holds it")

    li = sub.add_parser("list", help=f"the fastshm segments, queues and channels in {SHM_DIR}")
    li.add_argument("-a", "--all", action="store_true", help="also list raw shared memory")

    from ._cli_channel import add_commands

    add_commands(sub, _wait_options, _size)

    sub.add_parser("demo", help="a child process stores '12345'; this one waits and loads it")
    return p


def _wait_options(p: argparse.ArgumentParser, what: str) -> None:
    how = p.add_mutually_exclusive_group()
    how.add_argument("--timeout", type=_timeout, default=None, metavar="SECONDS",
                     help=f"wait {what} this many seconds at most (default: as long as "
                          "it takes; inf: the same)")
    how.add_argument("--nowait", action="store_true", help=f"do not wait {what}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Run as the command (not called with arguments from Python code): the
    # process ends with this call, which may leave signal handling so.
    args.as_command = argv is None
    if args.command == "load" and args.timeout is not None and not args.follow:
        parser.error("--timeout needs --follow (it bounds the wait for the next message)")
    try:
        # The backend first, for every command: a bad FASTSHM_BACKEND (without
        # --backend) or a binding that is not built is one clear error.
        resolve(args.backend)
        if args.command == "menu":
            return cmd_menu(args, sys.stdin.buffer, sys.stdout)
        if args.command == "store":
            return cmd_store(args, sys.stdin.buffer, sys.stdout)
        if args.command == "load":
            return cmd_load(args, sys.stdout.buffer)
        if args.command == "delete":
            return cmd_delete(args, sys.stdout)
        if args.command == "info":
            return cmd_info(args, sys.stdout)
        if args.command == "list":
            return cmd_list(args, sys.stdout)
        if args.command == "unlock":
            return cmd_unlock(args, sys.stdout)
        if args.command == "put":
            return cmd_put(args, sys.stdin.buffer, sys.stdout)
        if args.command == "get":
            return cmd_get(args, sys.stdout.buffer)
        if args.command in ("publish", "subscribe"):
            from . import _cli_channel

            if args.command == "publish":
                return _cli_channel.cmd_publish(args, sys.stdin.buffer, sys.stdout)
            return _cli_channel.cmd_subscribe(args, sys.stdout.buffer)
        return cmd_demo(args, sys.stdout)
    except KeyboardInterrupt:
        return 130
    except FileNotFoundError as e:
        if args.command in ("info", "delete", "unlock"):
            return _fail(f"no segment or queue named {e.filename!r} (`fastshm list` shows "
                         "those there are)")
        return _fail(f"no segment named {e.filename!r}; store to it first "
                     "(fastshm store NAME TEXT creates it)")
    except FileExistsError as e:
        return _fail(f"{e.filename!r} already exists")
    except PermissionError as e:
        # The library's own words: "open read-only", "belongs to user ...", or
        # the system's "Permission denied".
        return _fail(_os_message(e))
    except (FormatError, ValueError, TypeError, TimeoutError, OSError, _Usage) as e:
        return _fail(str(e))
    except ImportError as e:
        return _fail(str(e))


def _os_message(e: OSError) -> str:
    """An OSError's text with the name it is about, without "[Errno N]"."""
    text = e.strerror or str(e)
    if e.filename is not None and repr(e.filename) not in text:
        text = f"{e.filename!r}: {text}"
    return text


def _one_line(message: str) -> str:
    """``message`` with its control characters escaped: one line, and
    nothing a terminal would act on."""
    if message.isprintable():
        return message
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in message)


def _warn(message: str) -> None:
    sys.stderr.write(f"fastshm: warning: {_one_line(message)}\n")
    sys.stderr.flush()


def _fail(message: str) -> int:
    sys.stderr.write(f"fastshm: error: {_one_line(message)}\n")
    return 1
