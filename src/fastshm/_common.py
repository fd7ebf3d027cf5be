"""What both backends share: the byte layout, argument checks, constants."""

from __future__ import annotations

import operator
import struct
import sys
from typing import Any, Callable, Optional, Union

# How a name is opened (the same numbers as csrc/fastshm.h).
ATTACH = 0
CREATE = 1
OPEN_OR_CREATE = 2

# The byte layout of docs/FORMAT.md.
MAGIC = 0x4D485346
VERSION = 1
HEADER_SIZE = 128
SLOT_HEADER_SIZE = 64
ALIGN = 64
H_MAGIC = 0
H_VERSION = 4
H_HEADER_SIZE = 6
H_CAPACITY = 8
H_SEQ = 16
H_NOTIFY = 24
H_WAITERS = 28
H_LOCK = 64
H_LOCK_NEXT = 80
S_SEQ = 0
S_LENGTH = 8
# The largest store number (SEQ_MAX in slot.c): its slot word, 2 * seq, fits 64 bits.
SEQ_MAX = (1 << 63) - 1

U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
SLOT_WORDS = struct.Struct("<QQ")  # slot sequence word, length
HEAD = struct.Struct("<IHHQ")  # magic, version, header size, capacity

# A queue's header (docs/FORMAT.md, "Queues"; csrc/queue.c); its ring of
# records follows at HEADER_SIZE.
QUEUE_MAGIC = 0x51485346  # the bytes "FSHQ" read little-endian
QUEUE_VERSION = 1
QUEUE_PYLOCK = 1  # flags bit 0: locked the python backend's way (flock)
Q_HEAD = 16
Q_NOTIFY = 24
Q_WAITERS = 28
Q_TAIL = 32
Q_COUNT = 40
Q_FLAGS = 48
Q_LOCK = 64
Q_DIRTY = 88
U64_MASK = (1 << 64) - 1

# A channel's header (docs/FORMAT.md, "Channels"; csrc/channel_internal.h).
CHANNEL_MAGIC = 0x43485346  # the bytes "FSHC" read little-endian
CH_SLOT_SIZE = 8
CH_HEAD = 16
CH_SLOTS = 32
CH_FLAGS = 44
CH_SUB_MASK = 96

WINDOWS = sys.platform == "win32"

BytesLike = Union[bytes, bytearray, memoryview]


def seg_size_for(capacity: int) -> int:
    """Mapping bytes a segment of ``capacity`` needs; 0 when it overflows."""
    if capacity <= 0 or capacity > (1 << 62) - 1:
        return 0
    return HEADER_SIZE + 2 * stride_for(capacity)


def stride_for(capacity: int) -> int:
    return SLOT_HEADER_SIZE + ((capacity + ALIGN - 1) & ~(ALIGN - 1))


def check_name(name: object, name_max: int) -> str:
    """The name as the platform will see it, or a ValueError / TypeError
    that says what is wrong with it. A leading '/' is accepted and dropped,
    as multiprocessing.shared_memory does on POSIX."""
    if (type(name) is str and name.isascii() and 0 < len(name) <= name_max
            and "/" not in name and "\\" not in name and "\0" not in name):
        return name  # the common case, every check below passed at once
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if not WINDOWS and name.startswith("/"):
        name = name[1:]
    if not name:
        raise ValueError("name must not be empty")
    if "\0" in name:
        raise ValueError(f"name must not contain a NUL character: {name!r}")
    if not WINDOWS and "/" in name:
        raise ValueError(
            f"name must not contain '/' after its first character: {name!r}"
        )
    if WINDOWS:
        rest = name.split("\\", 1)[1] if name.startswith(("Local\\", "Global\\")) else name
        if "\\" in rest:
            raise ValueError(
                f"name may contain '\\' only after a Local or Global prefix: {name!r}"
            )
    try:
        n = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"name is not encodable as UTF-8: {name!r}") from None
    if n > name_max:
        raise ValueError(
            f"name is {n} bytes long; this platform allows at most {name_max}: {name!r}"
        )
    return name


def as_int(value: object, what: str) -> int:
    """``value`` as a plain int, for anything integer-like (``operator.index``:
    int, numpy.int64, ...), as the stdlib accepts; bool is refused."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not bool")
    if type(value) is int:
        return value
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what} must be an int, not {type(value).__name__}") from None


def check_size(size: object, what: str = "size") -> int:
    size = as_int(size, what)
    if size <= 0:
        raise ValueError(f"{what} must be a positive number of bytes, got {size}")
    need = seg_size_for(size)
    if need == 0 or need > sys.maxsize:
        raise ValueError(f"{what} of {size} bytes is too large for this platform")
    return size


def check_mode(mode: object) -> int:
    if type(mode) is int and 0 <= mode <= 0o777:
        return mode
    try:
        mode = as_int(mode, "mode")
    except TypeError:
        raise TypeError(
            f"mode must be an int such as 0o600, not {type(mode).__name__}"
        ) from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be permission bits between 0 and 0o777, got {oct(mode)}")
    return mode


def as_bytes_view(data: object) -> BytesLike:
    """bytes stay as they are, str becomes UTF-8, any other C-contiguous
    buffer becomes a byte-wise memoryview over the same memory."""
    if type(data) is bytes:
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    try:
        mv = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"can only store bytes-like objects or str, not {type(data).__name__}"
        ) from None
    if not mv.c_contiguous:
        raise ValueError("can only store a C-contiguous buffer; copy it first")
    return mv.cast("B") if (mv.format != "B" or mv.ndim != 1) else mv


def writable_view(buffer: object, what: str = "load_into") -> memoryview:
    try:
        mv = memoryview(buffer)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{what} needs a writable bytes-like object, not {type(buffer).__name__}"
        ) from None
    if mv.readonly:
        raise TypeError(f"{what} needs a writable buffer; this one is read-only")
    if not mv.c_contiguous:
        raise ValueError(f"{what} needs a C-contiguous buffer")
    return mv.cast("B") if (mv.format != "B" or mv.ndim != 1) else mv


# ---- queues (docs/FORMAT.md, "Queues") ----

QUEUE_RECORD_HEADER = 8
QUEUE_MIN_CAPACITY = 16


def queue_size_for(capacity: int) -> int:
    """Mapping bytes a queue whose ring holds ``capacity`` bytes needs; 0
    when out of range (as fshm_queue_size_for)."""
    if capacity < QUEUE_MIN_CAPACITY or capacity > (1 << 62) - 1:
        return 0
    return HEADER_SIZE + ((capacity + 7) & ~7)


def check_queue_size(size: object) -> int:
    size = as_int(size, "size")
    if size < QUEUE_MIN_CAPACITY:
        raise ValueError(
            f"size must be at least {QUEUE_MIN_CAPACITY} bytes for a queue "
            f"(its ring holds 8 bytes per message plus the message), got {size}"
        )
    need = queue_size_for(size)
    if need == 0 or need > sys.maxsize:
        raise ValueError(f"size of {size} bytes is too large for this platform")
    return size


def record_size(n: int) -> int:
    """Ring bytes a message of ``n`` bytes takes: its length word, itself,
    and padding to 8."""
    return QUEUE_RECORD_HEADER + ((n + 7) & ~7)


def queue_count(buf: Any, capacity: int, owner_dead: Callable[[int], int]) -> int:
    """The messages queued in the queue mapped by ``buf``, read without its
    lock, as fshm_queue_count in queue.c: the header's count, unless a
    holder killed between its store of tail or head and its store of count
    left it short (the dirty mark with a holder that is gone, or a count the
    bytes queued disagree with); then the records between head and tail are
    walked.  ``owner_dead`` judges the lock word's process (1: gone)."""
    u64, u32 = U64.unpack_from, U32.unpack_from
    dirty = u32(buf, Q_DIRTY)[0]
    count: int = u64(buf, Q_COUNT)[0]
    head, tail = u64(buf, Q_HEAD)[0], u64(buf, Q_TAIL)[0]
    used = (tail - head) & U64_MASK
    plausible = (count == 0) == (used == 0) and count <= used // QUEUE_RECORD_HEADER
    if plausible and not dirty:
        return count
    if plausible:
        # A live holder fixes the count in a moment; only a gone one leaves
        # it for the next lock holder, and only then is the walk worth it.
        owner = u64(buf, Q_LOCK)[0]
        if owner and owner_dead(owner) != 1:
            return count
    walked = _walk_records(buf, capacity)
    return count if walked is None else walked


def _walk_records(buf: Any, capacity: int) -> Optional[int]:
    """How many records lie between head and tail, counted without the
    lock: an unchanged head across the walk means no take reused the bytes
    walked.  None when takes kept moving head or the records are corrupt."""
    u64 = U64.unpack_from
    rec = QUEUE_RECORD_HEADER
    for _ in range(8):
        head, tail = u64(buf, Q_HEAD)[0], u64(buf, Q_TAIL)[0]
        if (head | tail) & 7 or (tail - head) & U64_MASK > capacity:
            return None
        pos, n, bad = head, 0, False
        while pos != tail:
            length = u64(buf, HEADER_SIZE + pos % capacity)[0]
            size = rec + ((length + 7) & ~7)
            if length > capacity - rec or size > (tail - pos) & U64_MASK:
                bad = True
                break
            pos = (pos + size) & U64_MASK
            n += 1
        if u64(buf, Q_HEAD)[0] != head:
            continue
        return None if bad else n
    return None
