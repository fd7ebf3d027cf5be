"""The channel's commands of ``fastshm``: publish, subscribe, and its rows
for info and list.  They follow the conventions of put and get (exit 1 when
nothing came in time, 130 after Ctrl-C with nothing done), and share their
helpers in ``cli``."""

from __future__ import annotations

import argparse
import os
import shlex
from typing import BinaryIO, Callable, List, Optional, TextIO, Tuple

from . import _common as C
from .channel import Publisher, Subscriber
from .cli import (
    _check_same,
    _checked_name,
    _emit,
    _escape,
    _identity,
    _Interrupt,
    _is_pipe,
    _out_closed,
    _OutputGone,
    _quiet_stdout,
    _read_at_most,
    _refuse_other_kind,
    _sliced,
    _Usage,
    _wait_read,
)

DEFAULT_SLOT_SIZE = 1 << 16
DEFAULT_SLOTS = 16


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]",
                 wait_options: Callable[[argparse.ArgumentParser, str], None],
                 size_type: Callable[[str], int]) -> None:
    pb = sub.add_parser(
        "publish", help="publish TEXT (or stdin with -) on the channel NAME, creating it "
                        "if needed",
        description="Publish one message on the channel NAME, creating the channel when "
        "it does not exist (--slot-size, --slots, --history, --overwrite say how). On a "
        "'block' channel whose every slot a subscriber has not read yet, publish waits "
        "for a slot as long as it takes (Ctrl-C gives up, exit status 130, nothing "
        "published); --timeout bounds the wait and --nowait skips it, and then a full "
        "channel is exit status 1, nothing published.")
    pb.add_argument("name")
    pb.add_argument("text", help="the message; - reads the bytes of standard input")
    pb.add_argument("--slot-size", type=size_type, default=DEFAULT_SLOT_SIZE, metavar="BYTES",
                    help=f"the largest message, when creating (default {DEFAULT_SLOT_SIZE})")
    pb.add_argument("--slots", type=int, default=DEFAULT_SLOTS, metavar="N",
                    help=f"messages the ring holds, when creating (default {DEFAULT_SLOTS})")
    pb.add_argument("--history", type=int, default=0, metavar="N",
                    help="earlier messages a new subscriber gets first, when creating "
                         "(default 0)")
    pb.add_argument("--overwrite", action="store_true",
                    help="when creating: never wait for subscribers, overwrite the oldest "
                         "unread message (default: wait, lose nothing)")
    wait_options(pb, "for a slot")

    sb = sub.add_parser(
        "subscribe", help="receive the next message on the channel NAME and write it to "
                          "stdout",
        description="Join the channel NAME, receive one message and write it to standard "
        "output, byte for byte (a newline is added only on a terminal): the first of the "
        "channel's history, if it keeps one, else the next one published. It waits as "
        "long as it takes (Ctrl-C gives up, exit status 130); --timeout bounds the wait "
        "and --nowait skips it, and then nothing is exit status 1.")
    sb.add_argument("name")
    sb.add_argument("-f", "--follow", action="store_true",
                    help="print every message, one per line, as they come, until Ctrl-C "
                         "(exit 130) or until --timeout seconds pass without one (exit 0). "
                         "Messages are not taken from anyone: a reader that quits early "
                         "(| head -1) costs other subscribers nothing")
    wait_options(sb, "for a message")


def _open_publisher(args: argparse.Namespace, create: bool) -> Publisher:
    if create:
        return Publisher(args.name, args.slot_size, args.slots, history=args.history,
                         overflow="overwrite" if args.overwrite else "block",
                         backend=args.backend, any_owner=args.any_owner)
    return Publisher(args.name, create=False, backend=args.backend, any_owner=args.any_owner)


def cmd_publish(args: argparse.Namespace, stdin: BinaryIO, out: TextIO) -> int:
    _refuse_other_kind(args, "channel")
    name = _checked_name(args)
    if args.slots < 2 or args.history < 0 or args.history >= args.slots:
        raise _Usage(f"--slots must be at least 2 and --history below it (got --slots "
                     f"{args.slots}, --history {args.history}); nothing was published")
    try:
        pub: Optional[Publisher] = _open_publisher(args, create=False)
    except FileNotFoundError:  # made below, if the message fits
        pub = None
    try:
        room = pub.slot_size if pub is not None else args.slot_size
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
            where = (f"the slots of channel {name!r} ({room} bytes)" if pub is not None
                     else f"a slot of {room} bytes: make the channel with a larger --slot-size")
            raise _Usage(f"the message ({'' if exact else 'at least '}{n} bytes) does not fit "
                         f"{where}; nothing was published")
        if pub is None:
            pub = _open_publisher(args, create=True)
        timeout = 0.0 if args.nowait else args.timeout
        with _Interrupt() as stop:
            still = _still_there(name, "waiting for a slot; nothing was published")
            try:
                opened = pub
                seq = _sliced(lambda step: opened.publish(data, timeout=step),
                              TimeoutError, timeout, stop, still)
            except TimeoutError as e:
                waited = ("--nowait" if args.nowait else f"waited {timeout:g} seconds")
                raise _Usage(f"{e} ({waited}); subscribers release slots as they read, "
                             "or wait longer with --timeout") from None
            stop.settle(args.as_command)
            out.write(f"published {n} bytes as message #{seq} on channel {pub.name!r}\n")
    finally:
        if pub is not None:
            pub.close()
    return 0


def _still_there(name: str, doing: str) -> Callable[[], None]:
    identity = _identity(name)

    def check() -> None:
        _check_same(name, identity, "channel", doing, "use the new one")

    return check


def cmd_subscribe(args: argparse.Namespace, out: BinaryIO) -> int:
    _refuse_other_kind(args, "channel")
    name = _checked_name(args)
    try:
        sub = Subscriber(name, backend=args.backend, any_owner=args.any_owner)
    except FileNotFoundError:
        raise _Usage(f"no channel named {name!r}; publish on it first "
                     "(fastshm publish NAME TEXT creates it)") from None
    with _Interrupt() as stop, sub:
        timeout = 0.0 if args.nowait else args.timeout
        still = _still_there(name, "following it" if args.follow else "waiting for a message")

        def attempt(step: float) -> bytes:
            if _out_closed(out):
                raise _OutputGone
            with sub.receive(timeout=step) as sample:
                return bytes(sample)

        if not args.follow:
            try:
                data = _sliced(attempt, TimeoutError, timeout, stop, still)
            except _OutputGone:
                _quiet_stdout()
                raise _Usage("standard output is closed; nothing was received") from None
            except TimeoutError:
                waited = ("--nowait" if args.nowait else f"waited {timeout:g} seconds")
                raise _Usage(
                    f"no message on channel {name!r} ({waited}): `fastshm publish "
                    f"{shlex.quote(name)} TEXT` publishes one, or wait longer with --timeout "
                    "(without it, subscribe waits as long as it takes)"
                ) from None
            tail = b"\n" if out.isatty() and not data.endswith(b"\n") else b""
            stop.settle(args.as_command)
            _emit(out, name, data, tail, "received on channel")
            return 0
        pipe = _is_pipe(out)
        while True:
            try:
                data = _sliced(attempt, TimeoutError, timeout, stop, still)
                _emit(out, name, data, b"\n", "received on channel")
                if pipe:
                    _wait_read(out, stop)
            except TimeoutError:
                return 0
            except _OutputGone:
                _quiet_stdout()
                return 0
            stop.check()


# ---- info and list ----


def info_rows(args: argparse.Namespace) -> List[Tuple[str, str]]:
    with Publisher(args.name, create=False, backend=args.backend,
                   any_owner=args.any_owner) as pub:
        owner = pub._lock_owner()
        rows = [
            ("name", _escape(pub.name.encode("utf-8"))),
            ("kind", "channel"),
            ("slot_size", f"{pub.slot_size} bytes"),
            ("slots", str(pub.slots)),
            ("history", str(pub.history)),
            ("overflow", pub.overflow),
            ("published", str(_head(args))),
            ("subscribers", f"{pub.subscribers} of at most {pub.max_subscribers}"),
        ]
        rows += [(f"subscriber {i}", who) for i, who in _subscriber_lines(args)]
        rows += [
            ("mapped", f"{pub._mapped_size} bytes"),
            ("lock", f"held by pid {owner & 0xFFFFFFFF}, publishing now" if owner else "free"),
            ("backend", pub.backend),
        ]
    return rows


def _subscriber_lines(args: argparse.Namespace) -> List[Tuple[int, str]]:
    """(entry, what it says) for each joined subscriber: its pid, how far
    behind it is, what it received, missed and holds."""
    from ._native_channel import ChannelHandle

    h = ChannelHandle(args.name, C.ATTACH, 0, 0, 0, 0, 0, 0o600, args.any_owner)
    try:
        lines = []
        for i in range(h.max_subscribers):
            got = h.subscriber_info(i)
            if got is not None:
                lines.append((i, f"pid {got['owner'] & 0xFFFFFFFF}: {got['lag']} behind, "
                                 f"{got['received']} received, {got['missed']} missed, "
                                 f"{got['pinned']} held"))
        return lines
    finally:
        h.closed = True


def _head(args: argparse.Namespace) -> int:
    from .cli import _header

    got = _header(args, args.name)
    if got is None or len(got[1]) < 24:
        return 0
    return int(C.U64.unpack_from(got[1], C.CH_HEAD)[0])


def list_row(shown: str, size: int, head: bytes) -> Tuple[object, ...]:
    """A channel's row of ``fastshm list``: its slot size as capacity,
    messages published as stores, subscribers joined as queued."""
    slot_size = C.U64.unpack_from(head, C.CH_SLOT_SIZE)[0]
    published = C.U64.unpack_from(head, C.CH_HEAD)[0]
    mask = C.U64.unpack_from(head, C.CH_SUB_MASK)[0]
    owner = C.U64.unpack_from(head, C.H_LOCK)[0]
    return (shown, "channel", slot_size, published, f"{bin(mask).count('1')} subs", "-", size,
            owner & 0xFFFFFFFF if owner else "-", "native")
