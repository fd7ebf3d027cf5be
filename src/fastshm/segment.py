"""Segment: a named, framed message slot (the menu: store, load, delete)."""

from __future__ import annotations

from typing import Any, Iterator, Optional, Tuple, Union

from . import _common as C
from ._backend import resolve


def _reattach(name: str, backend: str) -> "Segment":
    return Segment(name, create=False, backend=backend)


class Segment:
    """A named shared-memory segment that holds one message at a time.

    ``Segment(name)`` opens the segment called ``name``, creating it with room
    for ``size`` bytes when it does not exist yet (the original program's
    behaviour); ``create=True`` insists on creating it, ``create=False`` on
    finding it.  When it already exists, ``size`` is ignored and the capacity
    comes from its header.

    Any process that opens the same name sees the same message.  A store
    never tears a message that another process is loading, and a writer that
    dies at any instant leaves the last complete message intact.
    """

    __slots__ = ("_h", "_name", "_backend", "_last_seq", "__weakref__")

    def __init__(
        self,
        name: str,
        size: int = 1024,
        *,
        create: Optional[bool] = None,
        backend: Optional[str] = None,
        mode: int = 0o600,
        any_owner: bool = False,
    ) -> None:
        self._h: Any = None
        impl = resolve(backend)
        name = C.check_name(name, impl.NAME_MAX)
        if create is None:
            how = C.OPEN_OR_CREATE
        elif create is True:
            how = C.CREATE
        elif create is False:
            how = C.ATTACH
        else:
            raise TypeError(f"create must be None, True or False, not {create!r}")
        if how != C.ATTACH:
            C.check_size(size)
        C.check_mode(mode)
        if not isinstance(any_owner, bool):
            raise TypeError(f"any_owner must be True or False, not {any_owner!r}")
        self._name = name
        self._backend: str = impl.name
        self._h = impl.SegmentHandle(
            name, how, size if how != C.ATTACH else 0, mode, any_owner
        )
        self._last_seq = 0

    # -- what it is --

    @property
    def name(self) -> str:
        """The segment's name, as other processes open it."""
        return self._name

    @property
    def backend(self) -> str:
        """``"native"`` or ``"python"``: which backend this object uses."""
        return self._backend

    @property
    def capacity(self) -> int:
        """The largest message, in bytes, the segment holds."""
        return self._handle().capacity  # type: ignore[no-any-return]

    @property
    def created(self) -> bool:
        """Whether opening this object created the segment."""
        return self._handle().created  # type: ignore[no-any-return]

    @property
    def seq(self) -> int:
        """How many messages have been stored in the segment so far (by any
        process); the number of the current message."""
        return self._handle().seq()  # type: ignore[no-any-return]

    @property
    def last_seq(self) -> int:
        """Number of the newest message this object stored, loaded or waited
        for (0 before any): what :meth:`wait` waits to move past."""
        return self._last_seq

    @property
    def closed(self) -> bool:
        return self._h is None

    def __len__(self) -> int:
        """Length in bytes of the current message."""
        # Through view(): a length read without the seqlock's re-check could
        # belong to a message still being written.
        return self._handle().view()[0].nbytes  # type: ignore[no-any-return]

    def _handle(self) -> Any:
        h = self._h
        if h is None:
            raise ValueError(f"segment {self._name!r} is closed")
        return h

    # -- the menu --

    def store(self, data: Union[C.BytesLike, str]) -> int:
        """Store ``data`` (bytes-like, or str as UTF-8) as the new message and
        return its number.  A message larger than :attr:`capacity` raises
        ValueError and leaves the current message as it was."""
        h = self._h
        if h is None:
            self._handle()  # raises the closed error
        if type(data) is not bytes:
            data = C.as_bytes_view(data)
        seq: int = h.store(data)
        self._last_seq = seq
        return seq

    def load(self) -> bytes:
        """The current message, copied once into a new bytes object
        (``b""`` when nothing has been stored yet)."""
        h = self._h
        if h is None:
            self._handle()  # raises the closed error
        data, self._last_seq = h.load()
        return data  # type: ignore[no-any-return]

    def load_str(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        """The current message decoded as text."""
        return self.load().decode(encoding, errors)

    def load_into(self, buffer: Any) -> int:
        """Copy the current message into ``buffer`` (any writable, contiguous
        bytes-like object) and return its length. Allocates nothing. A buffer
        too small raises ValueError and is left untouched."""
        h = self._h
        if h is None:
            self._handle()  # raises the closed error
        # A bytearray is always a writable, contiguous run of bytes: no checks.
        dst = memoryview(buffer) if type(buffer) is bytearray else C.writable_view(buffer)
        n, self._last_seq = h.load_into(dst)
        return n  # type: ignore[no-any-return]

    def view(self) -> memoryview:
        """A read-only memoryview of the current message inside the shared
        memory: no copy.  Its bytes are that message's until the second
        store after it (stores alternate between two slots); compare
        :attr:`seq` with :attr:`last_seq` to know whether it is still the
        current message, or use :meth:`load` for a copy that cannot change."""
        h = self._h
        if h is None:
            self._handle()  # raises the closed error
        mv, self._last_seq = h.view()
        return mv  # type: ignore[no-any-return]

    def wait(self, timeout: Optional[float] = None, *, after: Optional[int] = None) -> int:
        """Block until a message newer than ``after`` is stored, and return
        the newest message number.  ``after`` defaults to :attr:`last_seq`, so
        after storing a request, ``wait()`` waits for the reply, not for one's
        own store.  Raises TimeoutError when ``timeout`` seconds pass first.
        Other threads run while it blocks, and Ctrl-C interrupts it."""
        h = self._handle()
        if after is None:
            after = self._last_seq
        elif isinstance(after, bool) or not isinstance(after, int):
            raise TypeError(f"after must be an int message number, not {after!r}")
        elif after < 0:
            raise ValueError(f"after must be a message number >= 0, not {after!r}")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
            if timeout != timeout or timeout < 0:
                raise ValueError(f"timeout must be >= 0 seconds, not {timeout!r}")
        seq = h.wait(after, timeout)
        if seq is None:
            raise TimeoutError(
                f"no message newer than #{after} in {self._name!r} within {timeout} s"
            )
        self._last_seq = seq
        return seq  # type: ignore[no-any-return]

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
        self._h = None

    def unlink(self) -> None:
        """Remove the name (POSIX) so no new process can open it; processes
        that have it open keep their mapping. On Windows this does nothing:
        the segment disappears with the last handle."""
        resolve(self._backend).unlink(self._name)

    def delete(self) -> None:
        """Close and unlink: the menu's "3. delete"."""
        self.close()
        self.unlink()

    # -- Python protocols --

    def __enter__(self) -> "Segment":
        self._handle()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Tuple[Any, Tuple[str, str]]:
        return (_reattach, (self._name, self._backend))

    def __repr__(self) -> str:
        h = self._h
        if h is None:
            return f"<Segment {self._name!r} closed>"
        return (
            f"Segment({self._name!r}, capacity={h.capacity}, seq={h.seq()}, "
            f"backend={self._backend!r})"
        )
