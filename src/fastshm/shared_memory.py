"""SharedMemory: a raw named mapping, a drop-in for
``multiprocessing.shared_memory.SharedMemory``.

Same arguments, attributes, exceptions, pickling and naming, so a block made
by either class is opened by the other.  The differences are on purpose:

* nothing is registered with ``multiprocessing.resource_tracker`` unless
  ``track=True``, so no block is unlinked behind the user's back when the
  process that made it exits;
* ``close()`` never raises for views still in use: the mapping stays until
  the last of them is gone, so a stale view can never crash the interpreter;
* ``SharedMemory.open_or_create(name, size)`` exists.
"""

from __future__ import annotations

import sys
from typing import Any, Optional, Tuple

from . import _common as C
from ._backend import resolve

# The stdlib's naming, so names made here look like the stdlib's.
_SAFE_NAME_LENGTH = 14
_NAME_PREFIX = "wnsm_" if C.WINDOWS else "psm_"


def _make_name() -> str:
    nbytes = (_SAFE_NAME_LENGTH - len(_NAME_PREFIX) - (0 if C.WINDOWS else 1)) // 2
    import secrets  # only a nameless SharedMemory needs it: keeps the import quick

    return _NAME_PREFIX + secrets.token_hex(nbytes)


def _reattach(cls: Any, name: str, size: int, backend: str) -> "SharedMemory":
    """Unpickling: attach to ``name`` again, with the backend it was open with."""
    return cls(name, False, size, backend=backend)  # type: ignore[no-any-return]


class SharedMemory:
    """Create a new named block of shared memory, or attach to one.

    ``SharedMemory(name=None, create=False, size=0, *, track=False,
    backend=None, mode=0o600)``.
    """

    _map: Any = None
    _buf: Optional[memoryview] = None
    _name: Optional[str] = None
    _size = 0
    _created = False
    _track = False

    def __init__(
        self,
        name: Optional[str] = None,
        create: bool = False,
        size: int = 0,
        *,
        track: bool = False,
        backend: Optional[str] = None,
        mode: int = 0o600,
        any_owner: bool = False,
    ) -> None:
        self._open(
            name, C.CREATE if create else C.ATTACH, size, track, backend, mode, any_owner
        )

    def _open(
        self, name: Optional[str], how: int, size: int, track: bool,
        backend: Optional[str], mode: int, any_owner: bool,
    ) -> None:
        # Any integer-like size (numpy.int64 from shape arithmetic), as the
        # stdlib takes; bool is refused.
        size = C.as_int(size, "'size'")
        if not size >= 0:
            raise ValueError("'size' must be a positive integer")
        if how != C.ATTACH and size == 0:
            raise ValueError("'size' must be a positive number different from zero")
        if how != C.ATTACH and size > sys.maxsize:
            # Refused before anything is created: no mapping can be that large.
            raise ValueError(
                f"'size' of {size} bytes is too large for this platform "
                f"(at most {sys.maxsize})"
            )
        if name is None and how != C.CREATE:
            raise ValueError("'name' can only be None if create=True")
        impl = resolve(backend)
        mode = C.check_mode(mode)
        if not isinstance(any_owner, bool):
            raise TypeError(f"any_owner must be True or False, not {any_owner!r}")
        if name is None:
            while True:
                name = _make_name()
                try:
                    self._map = impl.RawMapping(name, how, size, mode, any_owner)
                except FileExistsError:
                    continue
                break
        else:
            name = C.check_name(name, impl.NAME_MAX)
            self._map = impl.RawMapping(name, how, size, mode, any_owner)
        self._name = name
        self._backend: str = impl.name
        self._size = self._map.size
        self._created = self._map.created
        self._buf = self._map.buf
        self._track = bool(track)
        if self._track and not C.WINDOWS:
            from multiprocessing import resource_tracker

            resource_tracker.register("/" + name, "shared_memory")

    @classmethod
    def open_or_create(
        cls, name: str, size: int, *, track: bool = False,
        backend: Optional[str] = None, mode: int = 0o600, any_owner: bool = False,
    ) -> "SharedMemory":
        """Attach to ``name``, or create it with ``size`` bytes when it does
        not exist.  ``created`` tells which happened."""
        self = cls.__new__(cls)
        self._open(name, C.OPEN_OR_CREATE, size, track, backend, mode, any_owner)
        return self

    @property
    def buf(self) -> Optional[memoryview]:
        "A memoryview of the whole block (None once closed)."
        return self._buf

    @property
    def name(self) -> str:
        "The block's name, without the leading '/' POSIX adds."
        assert self._name is not None  # set by every constructor
        return self._name

    @property
    def size(self) -> int:
        "Size in bytes."
        return self._size

    @property
    def created(self) -> bool:
        "Whether this object created the block."
        return self._created

    @property
    def backend(self) -> str:
        "``\"native\"`` or ``\"python\"``: which backend this object uses."
        return self._backend

    def close(self) -> None:
        """Close this object's access; the block stays for other processes.
        Closing twice is harmless; views still in use stay valid."""
        buf, self._buf = self._buf, None
        if buf is not None:
            try:
                buf.release()
            except BufferError:
                pass  # exported views keep the mapping alive until they go
        self._map = None

    def unlink(self) -> None:
        """Remove the block's name; call it once, from one process, when no
        new process needs to attach.  Does nothing on Windows, where a block
        lives while any process has it open."""
        if self._name is None:
            return
        resolve(self._backend).unlink(self._name)
        if self._track and not C.WINDOWS:
            from multiprocessing import resource_tracker

            resource_tracker.unregister("/" + self._name, "shared_memory")

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self) -> "SharedMemory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Tuple[Any, Tuple[Any, str, int, str]]:
        # Re-attaches with the same backend.  Pickles of the stdlib's shape,
        # (cls, (name, False, size)), still load: that is the constructor.
        return (_reattach, (self.__class__, self.name, self.size, self._backend))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.name!r}, size={self.size})"
