"""The native backend through its C-API binding, ``fastshm._cext``: the
route CPython takes.

``Segment``'s hot methods are the C methods of ``_cext.SegmentCore``, which
``fastshm.segment`` subclasses, so a ``store`` or ``load`` goes from the
caller straight into C; ``Queue``'s are those of ``_cext.QueueCore``, and
``Publisher``'s and ``Subscriber``'s those of ``_cext.PublisherCore`` and
``_cext.SubscriberCore``.
The rest of the backend interface (raw mappings, unlink, the lock owner's
identity) is here, over the same C core the cffi binding (``_native``)
compiles.
"""

from __future__ import annotations

import sys

from . import _cext
from ._cext import PublisherCore, QueueCore, SegmentCore, SubscriberCore

name = "native"
binding = "capi"
# "quiet_commit": a put's commit and its return are one C call, with no
# signal handler between them.
features = frozenset(
    {"capi", "atomic_lock", "futex", "quiet_commit"} if sys.platform.startswith("linux")
    else {"capi", "atomic_lock", "quiet_commit"}
)
NAME_MAX: int = _cext.NAME_MAX
ANY_OWNER: int = _cext.ANY_OWNER

unlink = _cext.unlink
self_id = _cext.self_id
owner_dead = _cext.owner_dead


class RawMapping:
    """A named mapping without a header (fastshm.SharedMemory)."""

    __slots__ = ("buf", "size", "created", "readonly")

    def __init__(self, name: str, how: int, size: int, mode: int, any_owner: bool) -> None:
        mapping, self.created = _cext.map_open(name, how | ANY_OWNER if any_owner else how,
                                               size, mode)
        self.size: int = mapping.size
        self.readonly: bool = mapping.readonly
        # The mapping is unmapped when this view and every slice of it are gone.
        self.buf = memoryview(mapping)


__all__ = [
    "RawMapping", "SegmentCore", "QueueCore", "PublisherCore", "SubscriberCore", "unlink",
    "self_id", "owner_dead",
]
