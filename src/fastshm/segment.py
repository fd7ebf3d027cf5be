"""Segment: a named, framed message slot (the menu: store, load, delete).

``Segment(...)`` returns one of two classes, both subclasses of ``Segment``:
on the native backend's C-API binding, a class whose hot methods (store,
load, load_into, view, wait, seq, len) are C methods of
``_cext.SegmentCore``, so a call goes from the caller straight into C; on the
cffi binding and the python backend, ``_HandleSegment``, whose methods below
call the backend's ``SegmentHandle``.  Both behave the same; the suite runs
on each.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Iterator, Optional, TypeVar, Union

from . import _common as C
from ._backend import resolve
from ._named import HandleNamed, Named, _open_args, _timeout_arg, native_class

T = TypeVar("T")



def _reattach(name: str, backend: str) -> "Segment":
    return Segment(name, create=False, backend=backend)


def _seq_arg(value: object, what: str) -> int:
    """A message number from any integer-like object but bool (0 <= n < 2**63)."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int message number, not {value!r}")
    try:
        n = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what} must be an int message number, not {value!r}") from None
    if n < 0:
        raise ValueError(f"{what} must be a message number >= 0, not {value!r}")
    if n > C.SEQ_MAX:
        raise ValueError(f"{what} must be a message number below 2**63, not {value!r}")
    return n


class Segment(Named):
    """A named shared-memory segment that holds one message at a time.

    ``Segment(name)`` opens the segment called ``name``, creating it with room
    for ``size`` bytes when it does not exist yet (the original program's
    behaviour); ``create=True`` insists on creating it, ``create=False`` on
    finding it.  When it already exists, ``size`` is ignored and the capacity
    comes from its header.  An existing segment that belongs to another user
    (not root) is refused with PermissionError unless ``any_owner=True``; one
    that this user may read but not write opens read-only.

    Any process that opens the same name sees the same message.  A store
    never tears a message that another process is loading, and a writer that
    dies at any instant leaves the last complete message intact.
    """

    __slots__ = ()
    _KIND = "segment"
    _REATTACH = staticmethod(_reattach)

    def __new__(
        cls,
        name: str,
        size: int = 1024,
        *,
        create: Optional[bool] = None,
        backend: Optional[str] = None,
        mode: int = 0o600,
        any_owner: bool = False,
    ) -> "Segment":
        impl = resolve(backend)
        name, how, capacity, mode = _open_args(impl, name, size, create, mode, any_owner,
                                               C.check_size)
        core = getattr(impl, "SegmentCore", None)
        if core is not None:
            flags = impl.ANY_OWNER if any_owner else 0
            return core.__new__(native_class(core, Segment), name, how | flags, capacity, mode)  # type: ignore[no-any-return]
        self = object.__new__(_HandleSegment)
        self._name = name
        self._backend = impl.name
        self._last_seq = 0
        self._h = impl.SegmentHandle(name, how, capacity, mode, any_owner)
        return self

    # -- what it is (each subclass answers these its own way) --

    @property
    def name(self) -> str:
        """The segment's name, as other processes open it."""
        raise NotImplementedError

    @property
    def backend(self) -> str:
        """``"native"`` or ``"python"``: which backend this object uses."""
        raise NotImplementedError

    @property
    def capacity(self) -> int:
        """The largest message, in bytes, the segment holds."""
        raise NotImplementedError

    @property
    def created(self) -> bool:
        """Whether opening this object created the segment."""
        raise NotImplementedError

    @property
    def readonly(self) -> bool:
        """Whether this object could open the segment for reading only (its
        permissions let this user read but not write it): load, view and
        wait work; store raises PermissionError."""
        raise NotImplementedError

    @property
    def seq(self) -> int:
        """How many messages have been stored in the segment so far (by any
        process); the number of the current message."""
        raise NotImplementedError

    @property
    def last_seq(self) -> int:
        """Number of the newest message this object stored, loaded, viewed
        or waited for (0 before any): what :meth:`wait` waits to move past."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        raise NotImplementedError

    def __len__(self) -> int:
        """Length in bytes of the current message."""
        raise NotImplementedError

    # -- the menu --

    def store(self, data: Union[C.BytesLike, str]) -> int:
        """Store ``data`` (bytes-like, or str as UTF-8) as the new message and
        return its number.  A message larger than :attr:`capacity` raises
        ValueError and leaves the current message as it was."""
        raise NotImplementedError

    def load(self) -> bytes:
        """The current message, copied once into a new bytes object
        (``b""`` when nothing has been stored yet)."""
        raise NotImplementedError

    def load_str(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        """The current message decoded as text."""
        return self.load().decode(encoding, errors)

    def load_into(self, buffer: Any) -> int:
        """Copy the current message into ``buffer`` (any writable, contiguous
        bytes-like object) and return its length. Allocates nothing. A buffer
        too small for the message raises ValueError; nothing of that message
        is copied into it (though under concurrent stores an earlier, raced
        attempt may have written part of an older one)."""
        raise NotImplementedError

    def view(self) -> memoryview:
        """A read-only memoryview of the current message inside the shared
        memory: no copy; :attr:`last_seq` becomes its number.  Its bytes stay
        that message's only until a later store starts to reuse its slot
        (stores alternate between two slots), so after using them, ask
        ``intact(seq)`` whether they were still whole — or let
        :meth:`apply` do both — or use :meth:`load` for a copy that cannot
        change."""
        raise NotImplementedError

    def intact(self, seq: int) -> bool:
        """Whether message number ``seq`` is still in place, untouched by any
        later store: call it *after* using a :meth:`view` of that message
        (``seq = seg.last_seq`` right after ``view()``); True means every
        byte read from the view until now was that message's.  The seqlock's
        own re-check: the writer that will reuse the slot marks it before it
        changes a byte."""
        raise NotImplementedError

    def apply(self, func: Callable[[memoryview], T]) -> T:
        """Call ``func`` on a view of the current message, in place, and
        return its result once it was computed from intact bytes: when a
        store reused the slot meanwhile, ``func`` runs again on the newer
        message; after three such races, on a copy.  ``func`` must not keep
        the view (copy what it needs, e.g. ``numpy.frombuffer(v,
        dtype).sum()`` or ``.copy()``)."""
        for _ in range(3):
            mv = self.view()
            seq = self.last_seq
            result = func(mv)
            if self.intact(seq):
                return result
        return func(memoryview(self.load()).toreadonly())

    def wait(self, timeout: Optional[float] = None, *, after: Optional[int] = None) -> int:
        """Block until a message newer than ``after`` is stored, and return
        the newest message number.  ``after`` defaults to :attr:`last_seq`, so
        after storing a request, ``wait()`` waits for the reply, not for one's
        own store.  Raises TimeoutError when ``timeout`` seconds pass first
        (None or ``math.inf``: no timeout).  Other threads run while it
        blocks, and Ctrl-C interrupts it."""
        raise NotImplementedError

    def messages(self, timeout: Optional[float] = None) -> Iterator[bytes]:
        """Yield each new message as it is stored, starting after
        :attr:`last_seq`.  Stops when ``timeout`` seconds pass without one
        (None: never).  A reader slower than the writers sees the newest
        message, not every one in between."""
        while True:
            try:
                self.wait(timeout)
            except TimeoutError:
                return
            yield self.load()

    def close(self) -> None:
        """Close this object's access; the segment stays for other processes.
        Views handed out earlier stay valid until they are released.
        Closing twice is harmless."""
        raise NotImplementedError

    def __repr__(self) -> str:
        if self.closed:
            return f"<Segment {self.name!r} closed>"
        return (
            f"Segment({self.name!r}, capacity={self.capacity}, seq={self.seq}, "
            f"backend={self.backend!r})"
        )


class _HandleSegment(HandleNamed, Segment):
    """Segment over a backend's SegmentHandle: the python backend, and the
    native backend through cffi."""

    __slots__ = ("_h", "_name", "_backend", "_last_seq", "__weakref__")
    _h: Any
    _name: str
    _backend: str
    _last_seq: int

    last_seq = property(lambda self: self._last_seq, doc=Segment.last_seq.__doc__)

    @property
    def seq(self) -> int:
        return self._handle().seq()  # type: ignore[no-any-return]

    def __len__(self) -> int:
        # Through view(): a length read without the seqlock's re-check could
        # belong to a message still being written.
        return self._handle().view()[0].nbytes  # type: ignore[no-any-return]

    def store(self, data: Union[C.BytesLike, str]) -> int:
        h = self._h
        if h is None:
            self._handle()  # raises the closed error
        if type(data) is not bytes:
            data = C.as_bytes_view(data)
        seq: int = h.store(data)
        self._last_seq = seq
        return seq

    def load(self) -> bytes:
        h = self._h
        if h is None:
            self._handle()  # raises the closed error
        data: bytes
        data, self._last_seq = h.load()
        return data

    def load_into(self, buffer: Any) -> int:
        h = self._h
        if h is None:
            self._handle()  # raises the closed error
        # A bytearray is always a writable, contiguous run of bytes: no checks.
        dst = memoryview(buffer) if type(buffer) is bytearray else C.writable_view(buffer)
        n: int
        n, self._last_seq = h.load_into(dst)
        return n

    def view(self) -> memoryview:
        h = self._h
        if h is None:
            self._handle()  # raises the closed error
        mv: memoryview
        mv, self._last_seq = h.view()
        return mv

    def intact(self, seq: int) -> bool:
        h = self._handle()
        return h.intact(_seq_arg(seq, "seq"))  # type: ignore[no-any-return]

    def wait(self, timeout: Optional[float] = None, *, after: Optional[int] = None) -> int:
        h = self._handle()
        after_n = self._last_seq if after is None else _seq_arg(after, "after")
        seq: Optional[int] = h.wait(after_n, _timeout_arg(timeout))
        if seq is None:
            raise TimeoutError(
                f"no message newer than #{after_n} in {self._name!r} within {timeout} s"
            )
        self._last_seq = seq
        return seq
