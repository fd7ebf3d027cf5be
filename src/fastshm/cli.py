"""The ``fastshm`` command: the original program's menu, and one-shot
store / load / delete / info / list for scripts."""

from __future__ import annotations

import argparse
import math
import os
import secrets
import stat
import subprocess
import sys
import time
from typing import BinaryIO, List, Optional, TextIO, Tuple

from . import _common as C
from ._backend import CHOICES, resolve
from ._errors import FormatError
from .segment import Segment

DEFAULT_NAME = "richong_Shared_Mem"
DEFAULT_SIZE = 1024
SHM_DIR = "/dev/shm"
# How often `load --follow` checks that the name still leads to its segment.
FOLLOW_CHECK_S = 0.5


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
    size = getattr(args, "size", None) or DEFAULT_SIZE
    return Segment(args.name, size, create=create, backend=args.backend,
                   any_owner=args.any_owner)


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
    except FileNotFoundError:
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


def _check_same(name: str, identity: Optional[Tuple[int, int]]) -> None:
    """Raise when ``name`` no longer leads to the segment being followed:
    its stores would never reach this process again."""
    if identity is None:
        return
    try:
        st = os.stat(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        raise _Usage(f"{name!r} was deleted while following it") from None
    except OSError:
        return
    if (st.st_dev, st.st_ino) != identity:
        raise _Usage(
            f"{name!r} was replaced by a new segment while following it; "
            "run the command again to follow the new one"
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
        Segment(name, create=False, backend=args.backend, any_owner=args.any_owner).delete()
    else:
        impl.unlink(name)
    out.write(f"deleted {name!r}\n")
    return 0


def cmd_info(args: argparse.Namespace, out: TextIO) -> int:
    with _open(args, create=False) as seg:
        owner = seg._lock_owner()
        rows = [
            ("name", _escape(seg.name.encode("utf-8"))),
            ("capacity", f"{seg.capacity} bytes"),
            ("length", f"{len(seg)} bytes"),
            ("stores", str(seg.seq)),
            ("format", f"fastshm version {C.VERSION}"),
            ("mapped", f"{seg._mapped_size} bytes"),
            ("writer", f"pid {owner & 0xFFFFFFFF} storing now" if owner else "none"),
            ("backend", seg.backend),
        ]
    path = os.path.join(SHM_DIR, args.name.lstrip("/"))
    if os.path.exists(path):
        st = os.stat(path)
        rows.append(("mode", f"{st.st_mode & 0o777:#o}, uid {st.st_uid}"))
    for key, value in rows:
        out.write(f"{key:<9} {value}\n")
    return 0


def cmd_unlock(args: argparse.Namespace, out: TextIO) -> int:
    with _open(args, create=False) as seg:
        owner = seg._lock_owner()
        if not owner:
            out.write(f"{seg.name!r} is not locked\n")
            return 0
        pid = owner & 0xFFFFFFFF
        judged = resolve(seg.backend).owner_dead(owner)
        if judged == 0 and not args.force:
            raise _Usage(
                f"{seg.name!r} is locked by pid {pid}, which is alive: it is storing, or "
                "stopped, or it took over the pid of a holder that died; the lock was left "
                "alone (if you are sure its holder is gone, "
                f"`fastshm unlock {seg.name} --force` frees it anyway)"
            )
        if judged < 0 and not args.force:
            raise _Usage(
                f"{seg.name!r} is locked by pid {pid} of another pid namespace, whose "
                "liveness cannot be checked from here; if that process is gone, run "
                f"`fastshm unlock {seg.name} --force`"
            )
        if not seg._break_lock(owner):
            raise _Usage(f"the lock of {seg.name!r} changed hands meanwhile; left alone")
        if judged == 0:
            _warn(f"pid {pid}, which held the lock of {seg.name!r}, is alive; the lock "
                  "was freed anyway (--force): if that process was storing, its message "
                  "and the next one may overlap")
        out.write(f"unlocked {seg.name!r} (was held by pid {pid})\n")
    return 0


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
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
        if len(head) >= 24 and C.HEAD.unpack_from(head, 0)[0] == C.MAGIC:
            _, version, _, capacity = C.HEAD.unpack_from(head, 0)
            seq = C.U64.unpack_from(head, C.H_SEQ)[0]
            if not found:
                out.write(f"{'NAME':<32} {'CAPACITY':>12} {'STORES':>10} {'MAPPED':>12}\n")
            out.write(f"{shown:<32} {capacity:>12} {seq:>10} {size:>12}\n")
            found += 1
        elif args.all:
            out.write(f"{shown:<32} {'(raw)':>12} {'-':>10} {size:>12}\n")
            found += 1
    if not found:
        out.write("no fastshm segments\n")
    return 0


def _peek(path: bytes) -> Optional[Tuple[int, bytes]]:
    """(size, first bytes) of the regular file at ``path``; None for anything
    else (a FIFO, a device, a directory or a symbolic link is never opened,
    so nothing can block), or when it cannot be read."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)  # it may have been swapped since the lstat
        if not stat.S_ISREG(st.st_mode):
            return None
        return st.st_size, os.read(fd, C.HEADER_SIZE)
    except OSError:
        return None
    finally:
        os.close(fd)


_DEMO_CHILD = """
import sys
from fastshm import Segment
seg = Segment(sys.argv[1], create=False, backend=sys.argv[2])
seq = seg.store("12345")
print(f"P1 (pid {__import__('os').getpid()}) stored '12345' as message #{seq}", flush=True)
seg.close()
"""


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
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
        "load it in any other.",
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

    d = sub.add_parser("delete", help="remove NAME")
    d.add_argument("name")

    i = sub.add_parser("info", help="capacity, length, stores so far, format of NAME")
    i.add_argument("name")

    u = sub.add_parser("unlock", help="free the writer lock of NAME when its holder is gone")
    u.add_argument("name")
    u.add_argument("--force", action="store_true",
                   help="also when the holder's liveness cannot be checked (another "
                        "pid namespace), or when its pid is alive (a holder that died "
                        "and whose pid was reused); breaks the lock whoever holds it")

    li = sub.add_parser("list", help=f"the fastshm segments in {SHM_DIR}")
    li.add_argument("-a", "--all", action="store_true", help="also list raw shared memory")

    sub.add_parser("demo", help="a child process stores '12345'; this one waits and loads it")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
        return cmd_demo(args, sys.stdout)
    except KeyboardInterrupt:
        return 130
    except FileNotFoundError as e:
        return _fail(f"no segment named {e.filename!r}; store to it first "
                     "(fastshm store NAME TEXT creates it)")
    except FileExistsError as e:
        return _fail(f"a segment named {e.filename!r} already exists")
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
