"""What a waiter of each kind of object sleeps on: the wake-up word and
sleeper count in the object's header (docs/FORMAT.md), and how to tell,
without taking anything, whether what it waits for looks there.  Shared by
fastshm.aio and fastshm.wait_any."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

from . import _common as C
from ._hub import Mapping, Watch

# Every kind keeps its "something was published" word and count where a
# segment does; a channel's "a slot came free" pair follows (FORMAT.md).
NOTIFY, WAITERS = C.H_NOTIFY, C.H_WAITERS
ROOM, ROOM_WAITERS = 48, 52
# A publisher waiting for room looks for subscribers that died holding
# slots this often, as fshm_channel_loan does.
ROOM_TICK_S = 0.1


def kind_of(obj: Any) -> str:
    """"segment", "queue", "subscriber" or "publisher"; TypeError else."""
    from .channel import Publisher, Subscriber
    from .queue import ObjectQueue, Queue
    from .segment import Segment

    if isinstance(obj, Segment):
        return "segment"
    if isinstance(obj, (Queue, ObjectQueue)):
        return "queue"
    if isinstance(obj, Subscriber):
        return "subscriber"
    if isinstance(obj, Publisher):
        return "publisher"
    raise TypeError(f"cannot wait on {type(obj).__name__!r}: fastshm waits on a Segment, "
                    "Queue, ObjectQueue, Subscriber or Publisher")


def _target(obj: Any) -> Any:
    """The object with the handle: an ObjectQueue's bytes queue."""
    from .queue import ObjectQueue

    return obj.queue if isinstance(obj, ObjectQueue) else obj


def mapping_of(obj: Any) -> Mapping:
    """The helper's own mapping of obj's object.  Any owner: obj was opened
    (and its owner judged) already, and the mapping only reads its words."""
    obj = _target(obj)
    if obj.closed:
        raise ValueError(f"cannot wait on {obj!r}: it is closed")
    return Mapping(obj.name, any_owner=True)


def counted(obj: Any) -> bool:
    """Whether a waiter may count itself among obj's sleepers with an atomic
    add: not on the python backend's queue and channel, whose counts change
    under their file lock (their words are polled instead)."""
    return kind_of(obj) == "segment" or _target(obj).backend != "python"


def watch(obj: Any, mapping: Mapping, *, room: bool = False,
          peek: Optional[Callable[[], bool]] = None,
          is_counted: Optional[bool] = None) -> Watch:
    """A watch on obj's messages (room: a publisher's free slots);
    ``is_counted``: ``counted(obj)``, when the caller knows it already."""
    if is_counted is None:
        is_counted = counted(obj)
    if room:
        return Watch(mapping, ROOM, ROOM_WAITERS, counted=is_counted, peek=peek,
                     tick=ROOM_TICK_S)
    return Watch(mapping, NOTIFY, WAITERS, counted=is_counted, peek=peek)


def watches_of(objs: List[Any], into: List[Watch]) -> None:
    """A watch on each object's messages, appended to ``into`` (so that a
    caller disarms those made before an error)."""
    for o in objs:
        m = mapping_of(o)
        try:
            into.append(watch(o, m))
        finally:
            m.release()  # the watch holds it now


def ready_peek(obj: Any) -> Tuple[str, Callable[[], bool]]:
    """(kind, peek): whether obj has what a reader waits for, as far as one
    can tell without taking it: a segment a message newer than its
    last_seq, a queue a message queued, a subscriber a message it has not
    received."""
    kind = kind_of(obj)
    if kind == "segment":
        return kind, lambda: obj.seq > obj.last_seq
    if kind == "queue":
        q = _target(obj)
        return kind, lambda: q.qsize() > 0
    if kind == "subscriber":
        return kind, obj._pending
    raise TypeError("wait_any waits for messages, and a Publisher has none to give: "
                    "await fastshm.aio.Publisher.publish() for room instead")
