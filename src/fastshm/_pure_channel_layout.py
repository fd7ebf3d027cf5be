"""The python backend's channel layout (docs/FORMAT.md, "Channels"), as
csrc/channel_internal.h lays it out, and what every part of ``ChannelHandle`` shares:
the header's and the tables' offsets, the timings of waits and of liveness
checks, and the codes an operation under the lock returns."""

from __future__ import annotations

import errno
import struct

from ._errors import EFORMAT, raise_for

# ---- the layout (docs/FORMAT.md, "Channels") ----

MAGIC = 0x43485346  # the bytes "FSHC" read little-endian
VERSION = 1
HEADER = 256
OVERWRITE = 1  # flags bit 0: publishers never wait for subscribers
PYLOCK = 2  # flags bit 1: made here; every change under the flock
MAX_SLOTS = 1 << 20
MAX_SUBSCRIBERS = 64
_PAGE = 4096
_SEQ_MAX = ((1 << 64) - 1) >> 2  # (k << 1) | 1 must not wrap
_M64 = (1 << 64) - 1
_M32 = 0xFFFFFFFF

# Header.
_H_SLOT_SIZE = 8
_H_HEAD = 16
_H_NOTIFY = 24
_H_WAITERS = 28
_H_SLOTS = 32
_H_MAX_SUBS = 36
_H_HISTORY = 40
_H_FLAGS = 44
_H_ROOM = 48
_H_ROOM_WAITERS = 52
_H_PAYLOAD = 56
_H_LOCK = 64
_H_DIRTY = 88
_H_FREE_COUNT = 92
_H_SUB_MASK = 96
_H_SWEEP_AT = 104
_H_CHECKED_AT = 112
# Slot entries (64 bytes each, from HEADER).
_S_WORD = 0
_S_LENGTH = 8
_S_PINS = 16
_S_LOANER = 24
_S_LOANED_AT = 32
# Subscriber entries (64 bytes each).
_E_OWNER = 0
_E_CURSOR = 8
_E_MISSED = 16
_E_GEN = 24
_E_RECEIVED = 32
_E_PENDING = 40

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_u64 = _U64.unpack_from
_u32 = _U32.unpack_from
_p64 = _U64.pack
_p32 = _U32.pack
_SLOT = struct.Struct("<QQQQQ")  # word, length, pins, loaner, loaned_at
_ENTRY = struct.Struct("<QQQQQQ")  # owner, cursor, missed, gen, received, pending
_FIELDS = struct.Struct("<QQQQQ")  # an entry's fields after the owner
_GEOMETRY = struct.Struct("<IHHQ")  # magic, version, header_size, slot_size
_COUNTS = struct.Struct("<III")  # slots, max_subscribers, history

_ZERO4 = bytes(4)
_ONE4 = _p32(1)
_ZERO8 = bytes(8)
_LOCK_SL = slice(_H_LOCK, _H_LOCK + 8)
_DIRTY_SL = slice(_H_DIRTY, _H_DIRTY + 4)
_HEAD_SL = slice(_H_HEAD, _H_HEAD + 8)
_NOTIFY_SL = slice(_H_NOTIFY, _H_NOTIFY + 4)
_WAITERS_SL = slice(_H_WAITERS, _H_WAITERS + 4)
_ROOM_SL = slice(_H_ROOM, _H_ROOM + 4)
_ROOM_WAITERS_SL = slice(_H_ROOM_WAITERS, _H_ROOM_WAITERS + 4)
_FREE_COUNT_SL = slice(_H_FREE_COUNT, _H_FREE_COUNT + 4)
_SUB_MASK_SL = slice(_H_SUB_MASK, _H_SUB_MASK + 8)

# ---- timing (the C core's) ----

# How long a blocked call polls before it sleeps.
_SPIN_S = 50e-6
# The longest one sleep lasts: signal handlers run, a close() from another
# thread is seen, a waker killed before its wake-up leaves none behind, and
# a publisher short of slots looks for dead processes at this pace.
_SLICE_S = 0.1
# How often, at most, processes holding slots are asked whether they live.
_LIVENESS_NS = 100_000_000
# Without a futex: the longest sleep between two looks.
_POLL_MAX_S = 0.002
# A publish copies its message under the flock (one lock round instead of
# two) up to this size; a larger one is a loan, a copy and a commit.
_COPY_UNDER_LOCK = 256 * 1024

# What an operation under the lock returns besides a result: wake-ups to
# make once the lock is released.
_WAKE_NOTIFY = 1
_WAKE_ROOM = 2
# receive_once's "nothing new"; the other codes are those of _errors.
_NOTHING = 1
_EINVAL = errno.EINVAL

# _run's deadline for the calls that give something back (a release, a
# discard, unsubscribing, a commit): a blocking flock.
_UNTIMED = -2.0
# _run's result when the flock stayed held until its deadline.
_BUSY = "busy"

# What _wait waits for.
_FOR_MESSAGE = 0
_FOR_ROOM = 1

def _round_up(n: int, to: int) -> int:
    return (n + to - 1) & ~(to - 1)


def _index_offset(slots: int) -> int:
    return HEADER + slots * 64


def _free_offset(slots: int) -> int:
    return _index_offset(slots) + _round_up(slots * 4, 64)


def _subs_offset(slots: int) -> int:
    return _free_offset(slots) + _round_up(slots * 4, 64)


def _payload_offset(slots: int, max_subscribers: int) -> int:
    return _round_up(_subs_offset(slots) + max_subscribers * 64, _PAGE)


def _stride(slot_size: int) -> int:
    return _round_up(slot_size, _PAGE if slot_size >= _PAGE else 64)


def size_for(slot_size: int, slots: int, max_subscribers: int) -> int:
    """Mapping bytes a channel needs; 0 when out of range (as
    fshm_channel_size_for)."""
    if (not 1 <= slot_size <= _M64 >> 2 or not 2 <= slots <= MAX_SLOTS
            or not 1 <= max_subscribers <= MAX_SUBSCRIBERS):
        return 0
    return _payload_offset(slots, max_subscribers) + _stride(slot_size) * slots


def _inconsistent(name: str) -> None:
    raise_for(EFORMAT, name, "the channel's tables are inconsistent")

