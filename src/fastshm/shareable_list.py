"""ShareableList: a fixed-length list of small values in one named block, a
drop-in for ``multiprocessing.shared_memory.ShareableList``.

The block's bytes are laid out exactly as CPython 3.11's stdlib lays them
out, so a list made by either class is opened by the other, by name
or by pickle::

    8 bytes            N, the number of items (a native signed 64-bit int)
    (N + 1) * 8 bytes  where each item's slot starts in the data area, and
                       where the data area ends (native signed 64-bit ints)
    data area          one slot per item: 8 bytes for int, float, bool and
                       None; 8 * (len // 8 + 1) bytes for str and bytes
    N * 8 bytes        each item's ``struct`` format, NUL-padded ASCII:
                       "q" int, "d" float, "xxxxxxx?" bool, "xxxxxx?x"
                       None, "<slot size>s" str and bytes
    N bytes            each item's type code: 0 int/float/bool, 1 str,
                       2 bytes, 3 None

It sits on :class:`fastshm.SharedMemory`, so it takes that class's
differences from the stdlib (nothing registered with the resource tracker
unless ``track=True``; ``backend=``), and it is stricter where the stdlib
lets bad input through: an index below ``-len`` is an ``IndexError`` (the
stdlib reads another item's bytes), an int that does not fit 64 bits or a
type it cannot store changes nothing (the stdlib may change the item's
format first), and a str whose UTF-8 bytes do not fit the slot the stdlib
gives it (8 * (characters // 8 + 1) bytes) gets a slot they fit (the
stdlib cuts them short).
"""

from __future__ import annotations

import functools
import operator
import struct
import types
from typing import Any, Iterable, Iterator, List, Optional, Tuple, Union

from ._errors import FormatError
from .shared_memory import SharedMemory

#: What a ShareableList holds.
Item = Union[int, float, bool, str, bytes, None]

_ENCODING = "utf-8"
_ALIGNMENT = 8  # every slot is a multiple of this many bytes
_FORMAT_WIDTH = 8  # bytes kept for each item's struct format
# Exact types, as the stdlib maps them (a subclass of int or str is refused
# there too): the struct format and the type code of each fixed-size item.
_FIXED = {
    int: ("q", 0),
    float: ("d", 0),
    bool: ("xxxxxxx?", 0),
    type(None): ("xxxxxx?x", 3),
}
_CODE_STR, _CODE_BYTES, _CODE_NONE = 1, 2, 3
_NUMBER_FORMATS = ("q", "d", "xxxxxxx?")
# A slot's format, "<size>s", must fit 8 characters: slots of at most
# 9_999_992 bytes, so text of at most 9_999_991 bytes (a slot is always
# longer than the text it was made for).
_MAX_TEXT = 9_999_991
_TOO_LONG = "bytes/str item exceeds available storage"


class _UnsupportedTypeError(TypeError, KeyError):
    """An item of a type a ShareableList cannot hold.  Also a KeyError,
    which is what the stdlib's class raises for it."""

    __str__ = BaseException.__str__  # KeyError's would quote the message


class _IntOutOfRangeError(struct.error, OverflowError):
    """An int that does not fit 64 bits.  Also a ``struct.error``, which
    is what the stdlib's class raises for it."""


def _slot_for(item: Union[str, bytes], data: bytes) -> int:
    """The slot for a str or bytes item when a list is made: the stdlib's,
    8 * (len(item) // 8 + 1), counted in characters for a str, so that the
    bytes are the stdlib's; sized by the UTF-8 bytes instead when they do
    not fit that (the stdlib would cut them short)."""
    slot = _ALIGNMENT * (len(item) // _ALIGNMENT + 1)
    if len(data) > slot:
        slot = _ALIGNMENT * (len(data) // _ALIGNMENT + 1)
    return slot


def _encode(value: Item) -> Tuple[str, int, Optional[bytes], bytes]:
    """``(format, type code, text, packed)`` for ``value``; ``text`` is the
    encoded str or bytes (None for a fixed-size item), ``packed`` the slot's
    bytes for a fixed-size item.  Raises before anything is written."""
    kind = type(value)
    if kind is str:
        return "", _CODE_STR, value.encode(_ENCODING), b""  # type: ignore[union-attr]
    if kind is bytes:
        return "", _CODE_BYTES, value, b""  # type: ignore[return-value]
    if kind not in _FIXED:
        raise _UnsupportedTypeError(
            f"a ShareableList holds int, float, bool, str, bytes and None, not "
            f"{kind.__name__}: convert the item first (int(x), float(x), str(x)), or "
            f"store pickle.dumps(x) as bytes"
        )
    fmt, code = _FIXED[kind]
    try:
        packed = struct.pack(fmt, value)
    except struct.error:
        raise _IntOutOfRangeError(
            f"int {value!r} does not fit the 64-bit slot of a ShareableList "
            f"(-2**63 to 2**63 - 1): store it as str(x) instead"
        ) from None
    return fmt, code, None, packed


class ShareableList:
    """A list of int, float, bool, str, bytes and None items, in one named
    block that any process can open.

    ``ShareableList(sequence=None, *, name=None, backend=None, track=False)``:
    with a ``sequence``, makes a new block holding its items (under ``name``,
    or a fresh ``psm_…`` name); with only ``name``, opens the list already
    there.  ``backend`` and ``track`` are passed to
    :class:`fastshm.SharedMemory`: by default nothing is registered with
    ``multiprocessing.resource_tracker``, so the block stays until someone
    calls ``shm.unlink()``.

    The length is fixed when the list is made, and so is each item's slot:
    an int, float, bool or None takes 8 bytes, a str or bytes the next
    multiple of 8 above its length (as the stdlib counts it: characters for
    a str, unless its UTF-8 bytes need more).  Any item may later be set to
    a value of any of these types that fits its slot.  As with the stdlib's
    class,
    trailing NUL bytes of a str or bytes item are dropped when it is read,
    and setting an item is not atomic: a process reading an item while
    another sets it may see a mix of the two (use a :class:`fastshm.Segment`
    for values that must never be torn).

    Close with ``shm.close()``; remove the block with ``shm.unlink()``.
    """

    shm: SharedMemory

    def __init__(
        self,
        sequence: Optional[Iterable[Item]] = None,
        *,
        name: Optional[str] = None,
        backend: Optional[str] = None,
        track: bool = False,
    ) -> None:
        if name is None or sequence is not None:
            self._create(list(sequence) if sequence is not None else [], name, backend, track)
        else:
            self.shm = SharedMemory(name, backend=backend, track=track)
            self._read_header()

    def _create(self, items: List[Item], name: Optional[str], backend: Optional[str],
                track: bool) -> None:
        # Everything is checked and laid out before the block exists, so bad
        # input leaves nothing behind.
        formats: List[str] = []
        codes: List[int] = []
        slots: List[bytes] = []
        for item in items:
            fmt, code, text, packed = _encode(item)
            if text is not None:
                if len(text) > _MAX_TEXT:
                    raise ValueError(
                        f"{_TOO_LONG}: a ShareableList item holds at most {_MAX_TEXT} "
                        f"bytes, and this {type(item).__name__} has {len(text)}: keep "
                        f"large data in a SharedMemory block instead"
                    )
                fmt = f"{_slot_for(item, text)}s"  # type: ignore[arg-type]
                packed = struct.pack(fmt, text)
            formats.append(fmt)
            codes.append(code)
            slots.append(packed)
        offsets = [0]
        for packed in slots:
            offsets.append(offsets[-1] + len(packed))
        image = b"".join([
            struct.pack(f"q{len(offsets)}q", len(items), *offsets),
            *slots,
            *(struct.pack(f"{_FORMAT_WIDTH}s", f.encode("ascii")) for f in formats),
            bytes(codes),
        ])
        self.shm = SharedMemory(name, create=True, size=len(image), backend=backend,
                                track=track)
        self._buffer()[:len(image)] = image
        self._list_len = len(items)
        self._offsets = offsets

    def _read_header(self) -> None:
        buf = self._buffer()
        size = len(buf)
        if size < 16:
            raise self._not_a_list(f"it has {size} bytes, fewer than any list's 16")
        (n,) = struct.unpack_from("q", buf, 0)
        if n < 0 or (n + 2) * 8 > size:
            raise self._not_a_list(f"its length field says {n} items, which a "
                                   f"{size}-byte block cannot hold")
        offsets = list(struct.unpack_from(f"{n + 1}q", buf, 8))
        if offsets[0] != 0 or any(b - a < 8 for a, b in zip(offsets, offsets[1:])) or \
                (n + 2) * 8 + offsets[-1] + n * (_FORMAT_WIDTH + 1) > size:
            raise self._not_a_list("its slot offsets are out of order, shorter than 8 "
                                   "bytes or out of the block")
        self._list_len = n
        self._offsets = offsets

    def _not_a_list(self, why: str) -> FormatError:
        name = self.shm.name
        self.shm.close()
        return FormatError(
            f"{name!r} is not a ShareableList: {why}; open it with SharedMemory "
            f"instead, or check the name"
        )

    def _buffer(self) -> memoryview:
        buf = self.shm.buf
        if buf is None:
            raise ValueError(
                f"ShareableList {self.shm.name!r} is closed (its shm was closed): "
                f"open it again with ShareableList(name={self.shm.name!r})"
            )
        return buf

    # The layout's regions, from the start of the block.
    @property
    def _offset_data_start(self) -> int:
        return (self._list_len + 2) * 8

    @property
    def _offset_packing_formats(self) -> int:
        return self._offset_data_start + self._offsets[-1]

    @property
    def _offset_back_transform_codes(self) -> int:
        return self._offset_packing_formats + self._list_len * _FORMAT_WIDTH

    def _position(self, position: Any, what: str) -> int:
        try:
            i = operator.index(position)
        except TypeError:
            raise TypeError(
                f"ShareableList indices must be integers, not {type(position).__name__}"
            ) from None
        n = self._list_len
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError(
                f"{what}index out of range: {i} for a ShareableList of {n} items "
                f"(its length is fixed when it is made)"
            )
        return j

    def _get_packing_format(self, position: int) -> str:
        """The ``struct`` format item ``position`` is stored with now."""
        i = self._position(position, "")
        buf = self._buffer()
        raw = bytes(buf[self._offset_packing_formats + i * _FORMAT_WIDTH:][:_FORMAT_WIDTH])
        return raw.rstrip(b"\x00").decode("ascii", errors="replace")

    def _slot(self, i: int) -> Tuple[str, int, int, int]:
        """``(format, type code, offset, slot size)`` of item ``i``,
        checked against each other."""
        fmt = self._get_packing_format(i)
        (code,) = struct.unpack_from("b", self._buffer(), self._offset_back_transform_codes + i)
        size = self._offsets[i + 1] - self._offsets[i]
        if code == 0:
            fits = fmt in _NUMBER_FORMATS and size >= 8
        elif code == _CODE_NONE:
            fits = fmt == _FIXED[type(None)][0] and size >= 8
        elif code in (_CODE_STR, _CODE_BYTES):
            fits = fmt[:-1].isdigit() and fmt.endswith("s") and int(fmt[:-1]) <= size
        else:
            fits = False
        if not fits:
            raise FormatError(
                f"item {i} of ShareableList {self.shm.name!r} has format {fmt!r} with "
                f"type code {code} in a {size}-byte slot: the block is not a "
                f"ShareableList, or another process is setting that item right now "
                f"(read it again)"
            )
        return fmt, code, self._offset_data_start + self._offsets[i], size

    def __getitem__(self, position: int) -> Item:
        i = self._position(position, "")
        fmt, code, offset, _ = self._slot(i)
        (value,) = struct.unpack_from(fmt, self._buffer(), offset)
        if code == _CODE_STR:
            return value.rstrip(b"\x00").decode(_ENCODING)  # type: ignore[no-any-return]
        if code == _CODE_BYTES:
            return value.rstrip(b"\x00")  # type: ignore[no-any-return]
        if code == _CODE_NONE:
            return None
        return value  # type: ignore[no-any-return]

    def __setitem__(self, position: int, value: Item) -> None:
        i = self._position(position, "assignment ")
        fmt, code, text, packed = _encode(value)
        offset = self._offset_data_start + self._offsets[i]
        size = self._offsets[i + 1] - self._offsets[i]
        if text is not None:
            if len(text) > size:
                raise ValueError(
                    f"{_TOO_LONG}: {len(text)} bytes for item {i}, whose slot holds "
                    f"{size} (a slot's size is fixed when the list is made: make it "
                    f"with a longer placeholder)"
                )
            fmt = f"{size}s"
            packed = struct.pack(fmt, text)
        buf = self._buffer()
        # In the stdlib's order: the format, the type code, then the value.
        struct.pack_into(f"{_FORMAT_WIDTH}s", buf,
                         self._offset_packing_formats + i * _FORMAT_WIDTH, fmt.encode("ascii"))
        struct.pack_into("b", buf, self._offset_back_transform_codes + i, code)
        buf[offset:offset + len(packed)] = packed

    def __len__(self) -> int:
        return self._list_len

    def __iter__(self) -> Iterator[Item]:
        for i in range(self._list_len):
            yield self[i]

    def __reduce__(self) -> Tuple[Any, Tuple[()]]:
        # Re-attaches by name, with the same backend.  The stdlib's pickles,
        # partial(ShareableList, name=...), load here too.
        return functools.partial(self.__class__, name=self.shm.name,
                                 backend=self.shm.backend), ()

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({list(self)}, name={self.shm.name!r})"

    @property
    def format(self) -> str:
        "The struct packing format of all the items stored now, in order."
        return "".join(self._get_packing_format(i) for i in range(self._list_len))

    def count(self, value: Any) -> int:
        "L.count(value) -> integer -- return number of occurrences of value."
        return sum(value == entry for entry in self)

    def index(self, value: Any) -> int:
        """L.index(value) -> integer -- return first index of value.
        Raises ValueError if the value is not present."""
        for position, entry in enumerate(self):
            if value == entry:
                return position
        raise ValueError(f"{value!r} not in this container")

    def __class_getitem__(cls, item: Any) -> types.GenericAlias:
        return types.GenericAlias(cls, item)
