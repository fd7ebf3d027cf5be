"""fastshm's exceptions and the translation of C error codes into them."""

from __future__ import annotations

import errno
import os
import pickle
from typing import TYPE_CHECKING, Any, List, NoReturn, Optional

if TYPE_CHECKING:
    import queue


class FormatError(ValueError):
    """The named object is not a fastshm segment, or its header is corrupt."""


class DecodeError(pickle.UnpicklingError):
    """Messages an :class:`ObjectQueue` took could not be unpickled (not a
    pickle, or a class this process cannot import).  Nothing it took is
    lost: ``objects`` holds every object of the call that did decode, in
    order; ``undecoded`` the raw bytes of each message that did not, in
    order, and ``data`` the first of them.  The first decoding error is the
    ``__cause__``."""

    def __init__(self, name: str, taken: int, objects: List[Any],
                 undecoded: List[bytes], first: BaseException) -> None:
        self.objects = objects
        self.undecoded = undecoded
        self.data = undecoded[0]
        self._args = (name, taken, objects, undecoded, first)
        super().__init__(
            f"{len(undecoded)} of {taken} messages taken from queue {name!r} could not "
            f"be unpickled ({type(first).__name__}: {first}); they left the queue: "
            f"their bytes are in .undecoded (.data: the first), and the "
            f"{len(objects)} objects that did decode in .objects"
        )

    def __reduce__(self) -> Any:
        # An exception pickles as its class and args: these, not the message.
        return (type(self), self._args)


class Abandoned(FormatError):
    """The name's creator died before finishing it (FSHM_EABANDONED): an
    open that may create it makes it anew."""


# Library error codes returned by the C core (csrc/fastshm.h); the python
# backend uses the same numbers so both raise through ``raise_for``.
EFORMAT = -1
ETOOBIG = -2
ESMALL = -3
ETIMEOUT = -4
ENOTREADY = -5
EEMPTY = -6
EAGAIN = -7
EVERSION = -8
EOWNER = -9
EBUSY = -10
EKIND = -11
EFULL = -12
ENOMSG = -13
EPROTOCOL = -14
ENOTREG = -15
EABANDONED = -16
ELOST = -17
ESUBFULL = -18


class ProtocolMismatch(FormatError):
    """A queue or channel made by the other backend: its lock cannot be
    shared with this one (compare-and-swap against the python backend's
    flock)."""


_OPENERS = {
    "Segment": "fastshm.Segment",
    "Queue": "fastshm.Queue",
    "Channel": "fastshm.Publisher or fastshm.Subscriber",
}


def kind_error(name: str, found: str, wanted: Optional[str] = None) -> FormatError:
    """The name holds another kind of fastshm object: ``found`` is what it
    holds ("Segment", "Queue", "Channel"), ``wanted`` what was asked for
    (by default the other of Segment and Queue)."""
    if wanted is None:
        wanted = "Segment" if found == "Queue" else "Queue"
    if found not in _OPENERS:
        return FormatError(f"{name!r} is not a fastshm {wanted}, and it changed while it "
                           "was being opened: try again")
    return FormatError(
        f"{name!r} is a fastshm {found}, not a {wanted}: open it with {_OPENERS[found]}"
    )


def protocol_error(name: str, made_by: str, kind: str = "queue") -> ProtocolMismatch:
    """A queue or channel (``kind``) whose lock this backend cannot take part
    in; ``made_by`` is the backend that made it ("native" or "python")."""
    if made_by == "python":
        why = "whose flock-based lock native code cannot share"
    else:
        why = "whose compare-and-swap lock the python backend cannot take part in"
    return ProtocolMismatch(
        f"{kind} {name!r} was made by the {made_by} backend, {why}: open it with "
        f"backend={made_by!r} (or leave backend unset to choose by the {kind})"
    )


def message_too_big(n: int, name: str, max_message: int) -> ValueError:
    """A put of ``n`` bytes that no queue state could ever take."""
    return ValueError(
        f"message of {n} bytes is larger than queue {name!r} holds "
        f"(max_message {max_message} bytes); nothing was put"
    )


def batch_too_big(total: int, name: str, capacity: int) -> ValueError:
    """A put_many whose records together exceed the ring."""
    return ValueError(
        f"messages taking {total} bytes in all cannot fit queue {name!r} "
        f"(capacity {capacity} bytes; each message takes 8 bytes plus its length "
        "rounded up to 8); nothing was put"
    )


def next_too_small(have: int, need: int) -> ValueError:
    """get_into refused a buffer of ``have`` bytes for the front message."""
    return ValueError(
        f"buffer of {have} bytes is too small for the next message ({need} bytes); "
        "it stays queued"
    )


def receive_too_small(have: int, need: int) -> ValueError:
    """Subscriber.receive_into refused a buffer of ``have`` bytes for the
    next message, of ``need``."""
    return ValueError(
        f"buffer of {have} bytes is too small for the next message of {need} bytes; "
        "nothing was received (it is still the next message)"
    )


def full_error(name: str, need: int, capacity: int, used: int) -> "queue.Full":
    """queue.Full with what was asked and what there was."""
    import queue

    err = queue.Full(
        f"queue {name!r} has no room for {need} bytes of records "
        f"({capacity}-byte ring, {used} bytes used)"
    )
    return err


def empty_error(name: str) -> "queue.Empty":
    import queue

    return queue.Empty(f"queue {name!r} is empty")


def lock_held_error(name: str, owner: int, put: bool) -> "queue.Full | queue.Empty":
    """queue.Full (a put) or queue.Empty (a get) for a call whose timeout ran
    out while another process held the queue's lock: one that is alive but
    not running, since a holder that runs lets go within microseconds.
    ``owner`` is the lock word as last seen (0: free again by now)."""
    import queue

    who = f"process {owner & 0xFFFFFFFF}" if owner else "another process"
    exc = queue.Full if put else queue.Empty
    return exc(
        f"queue {name!r} stayed locked by {who} until the timeout, so nothing was "
        f"{'put' if put else 'taken'}; a holder that keeps the lock this long is alive "
        "but not running (stopped with Ctrl-Z or SIGSTOP, or paused in a debugger): "
        "resume it (kill -CONT), and the queue moves again"
    )


def channel_full_error(name: str, timeout: Optional[float], lock_held: bool, owner: int,
                       subscribers: Optional[int] = None) -> TimeoutError:
    """A publish or loan that found no slot in time (or, with
    ``subscribers``, a subscriber that found no free entry)."""
    if subscribers is not None:
        return TimeoutError(
            f"channel {name!r} has all its {subscribers} subscriber entries taken by live "
            "processes: close a Subscriber first, or make the channel with a larger "
            "max_subscribers"
        )
    if lock_held:
        return channel_locked_error(name, timeout, owner, "published")
    within = "at once" if timeout == 0 else f"within {timeout} s" if timeout else ""
    return TimeoutError(
        f"no free slot in channel {name!r} {within}: every slot holds a message a live "
        "subscriber has not received yet, or is pinned by one (a Sample not released) or "
        "lent to a publisher; nothing was published"
    )


def channel_locked_error(name: str, timeout: Optional[float], owner: int,
                         undone: str = "received") -> TimeoutError:
    """A call whose timeout ran out while another process held the channel's
    lock (``owner``: the lock word as last seen); nothing was ``undone``."""
    who = f"process {owner & 0xFFFFFFFF}" if owner else "another process"
    if timeout == 0:
        # A call that does not wait gives a held lock about a millisecond:
        # a holder the system preempted can keep it longer than that.
        return TimeoutError(
            f"channel {name!r} stayed locked by {who} at once, so nothing was {undone}: a "
            "call that does not wait gives a held lock about a millisecond, and a holder "
            "the system preempted can keep it longer; try again, or pass a timeout (a "
            "holder that keeps it beyond a timeout is stopped, or paused in a debugger: "
            "resume it with kill -CONT)"
        )
    within = f"within {timeout} s" if timeout else ""
    return TimeoutError(
        f"channel {name!r} stayed locked by {who} {within}, so nothing was {undone}; a "
        "holder that keeps the lock this long is alive but not running (stopped with "
        "Ctrl-Z or SIGSTOP, or paused in a debugger): resume it (kill -CONT)"
    )


def channel_param_error(name: str, wrong: "list[tuple[str, object, object]]") -> ValueError:
    """An existing channel whose parameters are not those asked for."""
    said = ", ".join(f"{k}={v!r} (the channel has {have!r})" for k, v, have in wrong)
    return ValueError(
        f"channel {name!r} exists with other parameters: {said}; leave them out to take "
        "the channel's own, or delete it first to make it anew"
    )


def lost_error(name: str) -> ValueError:
    """A subscription the channel no longer knows as this one's."""
    return ValueError(
        f"this subscription to channel {name!r} was taken away (its entry was reclaimed as "
        "a dead process's, or evicted, or it was made before a fork): open a new Subscriber"
    )


def owner_error(name: str, uid: int) -> PermissionError:
    """Refusal to attach to a segment that another user made (name squatting)."""
    who = _user_name(uid)
    return PermissionError(
        errno.EPERM,  # the object is there, but not to be trusted
        f"{name!r} belongs to {who}, not to you (uid {_my_uid()}) or root; refusing to "
        "attach, since its owner could read every message and truncate it under you. "
        "If sharing with that user is intended, pass any_owner=True "
        "(the command line: --any-owner)",
        name,
    )


def closed_error(kind: str, name: str) -> ValueError:
    """A call on a closed segment or queue, or a blocked one whose object
    another thread closed."""
    return ValueError(f"{kind} {name!r} is closed")


def read_only_error(name: str, kind: str = "segment") -> PermissionError:
    """A change through a handle that could open the segment (or, with
    kind "queue", the queue) only for reading."""
    if kind == "queue":
        works = "qsize and the other snapshots work; put and get (which removes) do not"
    elif kind == "channel":
        works = "subscribing and publishing both write to it, so neither works"
    else:
        works = "load, view and wait work, store does not"
    return PermissionError(
        errno.EACCES,
        f"{name!r} is open read-only (its permissions let you read but not write it): {works}",
        name,
    )


def _user_name(uid: int) -> str:
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _my_uid() -> int:
    return os.geteuid() if hasattr(os, "geteuid") else -1


def os_error(code: int, name: Optional[str]) -> OSError:
    """OSError for errno ``code``; the constructor picks the subclass
    (FileExistsError, FileNotFoundError, PermissionError, ...)."""
    return OSError(code, os.strerror(code), name)


def too_big(n: int, name: str, capacity: int) -> ValueError:
    """A store of ``n`` bytes refused before a byte was written."""
    return ValueError(
        f"message of {n} bytes does not fit {name!r}, whose capacity is {capacity} bytes"
    )


def too_small(have: int, need: int) -> ValueError:
    """load_into refused a buffer of ``have`` bytes for a ``need``-byte message."""
    return ValueError(
        f"buffer of {have} bytes is too small for the current message of "
        f"{need} bytes; nothing was copied"
    )


# What is wrong with a corrupt object found while using it, by the key every
# backend passes as raise_for's detail (the C core says only FSHM_EFORMAT),
# so that all say the same.
_CORRUPT = {
    "slot": "its current slot is inconsistent",
    "seq": "its store counter is out of range",
    "ring": "its head and tail, or a queued message's length, are out of range",
    "tables": "its slot, index or subscriber tables are inconsistent",
}


def _not_shared_memory(name: str) -> FormatError:
    """The name holds something other than shared memory (ENOTREG)."""
    import stat

    path = os.path.join("/dev/shm", name)
    what = "not a regular file"
    try:
        mode = os.lstat(path).st_mode
    except (OSError, ValueError):
        mode = 0
    for test, words in ((stat.S_ISFIFO, "a FIFO (a named pipe)"),
                        (stat.S_ISDIR, "a directory"),
                        (stat.S_ISLNK, "a symbolic link"),
                        (stat.S_ISSOCK, "a socket"),
                        (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if mode and test(mode):
            what = words
            break
    remove = (f"`rmdir {path}`" if what == "a directory"
              else f"`fastshm delete {name}`")
    return FormatError(
        f"{name!r} is {what} in /dev/shm, not shared memory, so fastshm cannot open "
        f"it; if nothing needs it, remove it ({remove}), or use another name"
    )


# The command that makes each kind, for messages.
_MAKER = {"segment": "store", "queue": "put", "channel": "publish"}


def raise_for(code: int, name: str, detail: str = "", kind: str = "segment") -> NoReturn:
    """Raise what the C core's (or the python backend's) ``code`` means for
    the ``kind`` ("segment", "queue", "channel") called ``name``.  ``detail``: for
    FSHM_EFORMAT, what is wrong with an object in use ("slot", "seq",
    "ring"; empty: found at open); for FSHM_EKIND, what the name holds
    instead."""
    if code > 0:
        raise os_error(code, name)
    if code == EFORMAT:
        if detail:
            raise FormatError(
                f"{kind} {name!r} is corrupt: {_CORRUPT.get(detail, detail)}; nothing "
                "was changed. Look at its "
                f"raw bytes with fastshm.SharedMemory, or delete it (`fastshm delete "
                f"{name}`) and make it anew"
            )
        raise FormatError(
            f"{name!r} is not a fastshm {kind}, or its header is corrupt; open it with "
            "fastshm.SharedMemory to look at the raw bytes, or delete it"
        )
    if code == EVERSION:
        raise FormatError(
            f"{name!r} is a fastshm {kind} of a format version this fastshm does "
            "not know; upgrade fastshm or open it with the version that made it"
        )
    if code == ENOTREADY:
        raise FormatError(
            f"{name!r} exists but is not a finished fastshm {kind}: it has no header, "
            "and nothing shows a fastshm process making it (it is another program's, "
            "or an older fastshm died creating it), or its creator has been at it for "
            f"over a minute; if nothing uses it, remove it with `fastshm delete {name}`"
        )
    if code == EEMPTY:
        # FormatError (a ValueError): the same exception from both backends,
        # whichever of them noticed it.
        raise FormatError(
            f"{name!r} exists but has size 0, and nothing shows a fastshm process "
            "making it (it is another program's, or an older fastshm died creating "
            f"it); if nothing uses it, remove it with `fastshm delete {name}`"
        )
    if code == EABANDONED:
        raise Abandoned(
            f"{name!r} was never finished: the process creating it died first. Opening "
            f"it with create=None (open or create, the default) makes it anew, as "
            f"`fastshm {_MAKER.get(kind, 'store')}` does; "
            f"`fastshm delete {name}` removes it"
        )
    if code == ENOTREG:
        raise _not_shared_memory(name)
    if code == ETIMEOUT:
        raise TimeoutError(f"no new message in {name!r} before the timeout")
    if code == EKIND:
        # detail: what the name holds ("Queue", "Segment", "Channel"),
        # optionally ":" and what was asked for (by default: `kind`).
        found, _, wanted = (detail or ("Segment" if kind == "queue" else "Queue")).partition(":")
        raise kind_error(name, found, wanted or kind.capitalize())
    if code == EPROTOCOL:
        raise protocol_error(name, detail or "python", "channel" if kind == "channel" else "queue")
    raise RuntimeError(f"fastshm: unexpected error code {code} for {name!r}")
