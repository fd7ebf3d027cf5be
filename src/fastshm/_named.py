"""What Segment and Queue share: the checks of an open, and the life of a
named object (close, unlink, delete, the context manager, pickling by name,
the lock for `fastshm info` / `fastshm unlock`), with the methods of the
classes that reach a backend through a handle."""

from __future__ import annotations

import functools
import math
import operator
from typing import Any, Callable, Optional, Tuple

from . import _common as C
from ._backend import resolve
from ._errors import closed_error

# A timeout longer than this many seconds is no timeout (31 years), as in _cext.c.
_FOREVER_S = 1e9


def _timeout_arg(value: object) -> Optional[float]:
    """Seconds to wait, None for no timeout (None, inf, or beyond 31 years)."""
    if value is None:
        return None
    if isinstance(value, float):
        secs = value
    else:
        if isinstance(value, bool):
            n = None
        else:
            try:
                n = operator.index(value)  # type: ignore[arg-type]
            except TypeError:
                n = None
        if n is None:
            raise TypeError(f"timeout must be a number of seconds or None, not {value!r}")
        secs = -1.0 if n < 0 else math.inf if n > _FOREVER_S else float(n)
    if not secs >= 0:  # negative, or NaN
        raise ValueError(f"timeout must be >= 0 seconds, not {value!r}")
    return None if secs > _FOREVER_S else secs


def _open_args(
    impl: Any, name: object, size: object, create: object, mode: object, any_owner: object,
    check_size: Callable[[object], int],
) -> Tuple[str, int, int, int]:
    """The checked arguments of an open, as Segment and Queue take them:
    (name, how, capacity -- 0 when attaching --, mode)."""
    name = C.check_name(name, impl.NAME_MAX)
    if create is None:
        how = C.OPEN_OR_CREATE
    elif create is True:
        how = C.CREATE
    elif create is False:
        how = C.ATTACH
    else:
        raise TypeError(f"create must be None, True or False, not {create!r}")
    capacity = check_size(size) if how != C.ATTACH else 0
    mode = C.check_mode(mode)
    if not isinstance(any_owner, bool):
        raise TypeError(f"any_owner must be True or False, not {any_owner!r}")
    return name, how, capacity, mode


class Named:
    """The shared half of Segment and Queue.  Subclasses set ``_KIND`` (in
    messages) and ``_REATTACH`` (how a pickle opens the object again), and
    answer ``name``, ``backend``, ``closed`` and ``close``."""

    __slots__ = ()
    _KIND = "object"
    _REATTACH: Any = None

    name: Any
    backend: Any
    closed: Any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # The public class (Segment, Queue) is the one that names Named as a
        # base; its constructor picks among the subclasses in its module.
        public = next(c for c in cls.__mro__ if Named in c.__bases__)
        if cls is not public and cls.__module__ != public.__module__:
            kind = public.__name__
            raise TypeError(
                f"fastshm.{kind} cannot be subclassed ({kind}() picks the class that "
                f"fits its backend); hold a {kind} in an attribute instead"
            )
        super().__init_subclass__(**kwargs)

    def close(self) -> None:
        raise NotImplementedError

    def unlink(self) -> None:
        """Remove the name (POSIX) so no new process can open it; processes
        that have it open keep their mapping. On Windows this does nothing:
        the object disappears with the last handle."""
        resolve(self.backend).unlink(self.name)

    def delete(self) -> None:
        """Close and unlink."""
        self.close()
        self.unlink()

    # -- for `fastshm info` and `fastshm unlock` --

    @property
    def _mapped_size(self) -> int:
        raise NotImplementedError

    def _lock_owner(self) -> int:
        raise NotImplementedError

    def _break_lock(self, owner: int) -> bool:
        raise NotImplementedError

    # -- Python protocols --

    def __enter__(self) -> Any:
        if self.closed:
            raise closed_error(self._KIND, self.name)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Tuple[Any, Tuple[str, str]]:
        return (type(self)._REATTACH, (self.name, self.backend))


class HandleNamed:
    """The part of a Segment or Queue that reaches the backend through its
    handle (the python backend, and the native one through cffi): put
    before the public class in the bases, it answers what that class
    leaves open."""

    __slots__ = ()
    _h: Any
    _name: str
    _backend: str
    _KIND: str

    def _handle(self) -> Any:
        h = self._h
        if h is None:
            raise closed_error(self._KIND, self._name)
        return h

    name = property(lambda self: self._name, doc="The name, as other processes open it.")
    backend = property(lambda self: self._backend,
                       doc='``"native"`` or ``"python"``: the backend this object uses.')
    closed = property(lambda self: self._h is None, doc="Whether close() was called.")

    @property
    def capacity(self) -> int:
        return self._handle().capacity  # type: ignore[no-any-return]

    @property
    def created(self) -> bool:
        return self._handle().created  # type: ignore[no-any-return]

    @property
    def readonly(self) -> bool:
        return self._handle().readonly  # type: ignore[no-any-return]

    @property
    def _mapped_size(self) -> int:
        return self._handle().size  # type: ignore[no-any-return]

    def close(self) -> None:
        h, self._h = self._h, None
        if h is not None:
            # A call blocked on it in another thread ends at its next slice
            # with ValueError, as through the C-API binding.
            h.closed = True

    def _lock_owner(self) -> int:
        return self._handle().lock_owner()  # type: ignore[no-any-return]

    def _break_lock(self, owner: int) -> bool:
        return self._handle().break_lock(owner)  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=None)
def native_class(core: type, public: type) -> type:
    """``public`` (Segment, Queue) with the C-API binding's hot methods of
    ``core``: they come first in the method order, and ``public`` supplies
    the rest."""
    return type(f"_Native{public.__name__}", (core, public),
                {"__slots__": (), "__module__": public.__module__})
