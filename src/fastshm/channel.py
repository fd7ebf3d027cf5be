"""Publisher and Subscriber: zero-copy publish/subscribe over a named channel.

A channel is a ring of fixed-size slots in shared memory (csrc/channel.c,
docs/FORMAT.md "Channels").  A publisher writes a message into a slot (a
copy with ``publish``, or in place with ``loan``); every subscriber gets
the slot itself as a :class:`Sample`, pinned while it reads, so a publisher
never overwrites what someone is looking at and nobody copies unless they
want to.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Tuple, Union

from . import _common as C
from ._backend import resolve
from ._errors import (
    ProtocolMismatch,
    channel_full_error,
    channel_param_error,
    closed_error,
    too_big,
)
from ._named import Named, _open_args, _timeout_arg, native_class

# The limits of csrc/fastshm.h.
MAX_SUBSCRIBERS = 64
MAX_SLOTS = 1 << 20
_OVERFLOWS = ("block", "overwrite")
_OVERWRITE = 1  # FSHM_CHANNEL_OVERWRITE
_GONE = "the sample was released: its bytes are gone"

try:  # CPython: the C half counts the buffers it hands out (_cext_sample.c).
    from ._cext import SampleCore as _SampleBase

    _C_SAMPLE = True
except ImportError:  # PyPy: __buffer__, which PyPy honours
    _C_SAMPLE = False

    class _SampleBase:  # type: ignore[no-redef]
        """A sample's bytes lent through ``__buffer__``.  PyPy does not tell
        an object when a buffer of it is released, so here release() cannot
        see a view still alive: it only stops new ones."""

        __slots__ = ("_view", "_owner", "_slot", "seq")

        def _pin(self, owner: Any, view: memoryview, seq: int, slot: int) -> None:
            self._view: Optional[memoryview] = view
            self._owner, self.seq, self._slot = owner, seq, slot

        @property
        def _pinned(self) -> bool:
            return getattr(self, "_view", None) is not None and not self._owner.closed

        def _bytes(self) -> memoryview:
            if not self._pinned:
                raise ValueError(_GONE)
            return self._view  # type: ignore[return-value]

        def release(self) -> None:
            if getattr(self, "_view", None) is None:
                return
            self._view = None
            self._owner._release(self._slot)

        def __buffer__(self, flags: int) -> memoryview:
            return self._bytes()

        def __len__(self) -> int:
            return len(self._bytes())

        def __enter__(self) -> Any:
            self._bytes()
            return self

        def __exit__(self, *exc: object) -> None:
            self.release()

        def __del__(self) -> None:
            try:
                self.release()
            except Exception:  # noqa: BLE001 -- nothing to tell at collection time
                pass


class Sample(_SampleBase):
    """One message received, in place: read-only bytes in the channel's
    shared memory that no publisher overwrites until it is released.

    It supports the buffer protocol (``memoryview(sample)``,
    ``numpy.frombuffer(sample, dtype)``, ``bytes(sample)``: only the last
    copies), ``len()``, and ``seq``, the message's number.  Release it with
    ``release()`` or a ``with`` block; one that is garbage-collected is
    released then, and closing its subscriber releases it too.
    ``release()`` while a memoryview or an array of it is still alive raises
    ``BufferError`` and keeps it pinned, as ``mmap.close()`` does; any use
    after the release is a ``ValueError``.
    """

    __slots__ = ()

    def tobytes(self) -> bytes:
        """A copy of the message."""
        return bytes(memoryview(self))

    def __repr__(self) -> str:
        if not self._pinned:
            return f"<Sample #{self.seq} released>"
        return f"<Sample #{self.seq}, {len(self)} bytes>"


def _handle_class(impl: Any) -> Any:
    if impl.name == "python":
        from ._pure_channel import ChannelHandle
    else:
        from ._native_channel import ChannelHandle  # type: ignore[assignment]

    return ChannelHandle


# -- opening --


def _check_slots(value: object) -> int:
    n = C.as_int(value, "slots")
    if not 2 <= n <= MAX_SLOTS:
        raise ValueError(f"slots must be between 2 and {MAX_SLOTS}, not {n}")
    return n


def _check_subscribers(value: object) -> int:
    n = C.as_int(value, "max_subscribers")
    if not 1 <= n <= MAX_SUBSCRIBERS:
        raise ValueError(f"max_subscribers must be between 1 and {MAX_SUBSCRIBERS}, not {n}")
    return n


def _channel_args(
    impl: Any, name: object, slot_size: object, slots: object, history: object,
    max_subscribers: object, overflow: object, create: object, mode: object, any_owner: object,
) -> Tuple[str, int, int, Dict[str, Any]]:
    """Checked arguments: (name, how, mode, the parameters given by field)."""
    given: Dict[str, Any] = {}
    if slot_size is not None:
        given["slot_size"] = C.check_size(slot_size, "slot_size")
    if slots is not None:
        given["slots"] = _check_slots(slots)
    if history is not None:
        h = C.as_int(history, "history")
        if h < 0:
            raise ValueError(f"history must be >= 0, not {h}")
        given["history"] = h
    if max_subscribers is not None:
        given["max_subscribers"] = _check_subscribers(max_subscribers)
    if overflow is not None:
        if overflow not in _OVERFLOWS:
            raise ValueError(f"overflow must be 'block' or 'overwrite', not {overflow!r}")
        given["overflow"] = overflow
    name, how, _, mode = _open_args(impl, name, 1, create, mode, any_owner, lambda _: 0)
    if how == C.OPEN_OR_CREATE and "slot_size" not in given and "slots" not in given:
        how = C.ATTACH  # nothing to create with: open what is there
    if how != C.ATTACH:
        missing = [k for k in ("slot_size", "slots") if k not in given]
        if missing:
            raise TypeError(
                f"creating channel {name!r} needs {' and '.join(missing)} (the largest "
                "message in bytes, and how many messages the ring holds); to open an "
                "existing channel, pass create=False"
            )
        if given.get("history", 0) >= given["slots"]:
            raise ValueError(
                f"history ({given['history']}) must be less than slots ({given['slots']}): "
                "the ring keeps the history and needs a slot to publish into"
            )
    return name, how, mode, given


def _flags(given: Dict[str, Any]) -> int:
    return _OVERWRITE if given.get("overflow") == "overwrite" else 0


def _check_existing(obj: Any, name: str, given: Dict[str, Any]) -> None:
    """An opened channel that exists already must have the parameters given."""
    if obj.created:
        return
    have = {"slot_size": obj.slot_size, "slots": obj.slots, "history": obj.history,
            "max_subscribers": obj.max_subscribers,
            "overflow": "overwrite" if obj.flags & _OVERWRITE else "block"}
    wrong = [(k, v, have[k]) for k, v in given.items() if have[k] != v]
    if wrong:
        obj.close()
        raise channel_param_error(name, wrong)


def _open(public: type, impl: Any, name: str, how: int, mode: int, given: Dict[str, Any],
          any_owner: bool) -> Any:
    """``public`` (Publisher or Subscriber) open on the channel: the C-API
    binding's class where there is one, else the handle's."""
    core = getattr(impl, public.__name__ + "Core", None)
    rest = (given.get("slot_size", 0), given.get("slots", 0), given.get("history", 0),
            given.get("max_subscribers", MAX_SUBSCRIBERS), _flags(given), mode)
    obj: Any
    if core is not None:
        obj = core.__new__(native_class(core, public),
                           name, how | impl.ANY_OWNER if any_owner else how, *rest)
    else:
        h = _handle_class(impl)(name, how, *rest, any_owner)
        obj = object.__new__(_HANDLE_CLASSES[public])
        obj._h, obj._name, obj._backend = h, name, impl.name
        obj._setup()
    _check_existing(obj, name, given)
    return obj


def _open_matching(public: type, impl: Any, backend: Optional[str], name: str, how: int,
                   mode: int, given: Dict[str, Any], any_owner: bool) -> Any:
    """``_open``; a channel made by the other backend, whose lock is that
    backend's, is opened with that one when no backend was chosen."""
    try:
        return _open(public, impl, name, how, mode, given, any_owner)
    except ProtocolMismatch:
        made_by = "native" if impl.name == "python" else "python"
        other = None
        if backend in (None, "auto"):
            try:
                other = resolve(made_by)
            except ImportError:  # not built here: say what the channel needs
                pass
        if other is None or other.name == impl.name:
            raise ProtocolMismatch(
                f"channel {name!r} was made by the {made_by} backend, whose lock the "
                f"{impl.name} backend cannot take part in: open it with backend={made_by!r} "
                "(or leave backend unset to choose by the channel)"
            ) from None
        return _open(public, other, name, C.ATTACH, mode, given, any_owner)


class _Channel(Named):
    """What Publisher and Subscriber share, on every route."""

    __slots__ = ()
    _KIND = "channel"

    slot_size: Any
    slots: Any
    history: Any
    max_subscribers: Any
    flags: Any
    created: Any
    readonly: Any
    subscribers: Any
    last_seq: Any

    @property
    def overflow(self) -> str:
        """``"block"`` (publishers wait for slow subscribers, nothing is lost)
        or ``"overwrite"`` (they never wait; slow subscribers skip)."""
        return "overwrite" if self.flags & _OVERWRITE else "block"


class _HandleChannel:
    """The part of a Publisher or Subscriber that reaches the channel
    through a ``ChannelHandle`` (the cffi binding, and the python backend)."""

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

    name = property(lambda self: self._name, doc="The channel's name.")
    backend = property(lambda self: self._backend,
                       doc='``"native"`` or ``"python"``: the backend this object uses.')
    closed = property(lambda self: self._h is None, doc="Whether close() was called.")
    slot_size = property(lambda self: self._handle().slot_size, doc="The largest message.")
    slots = property(lambda self: self._handle().slots, doc="Messages the ring holds.")
    history = property(lambda self: self._handle().history,
                       doc="Earlier messages a new subscriber gets first.")
    max_subscribers = property(lambda self: self._handle().max_subscribers)
    flags = property(lambda self: self._handle().flags)
    created = property(lambda self: self._handle().created)
    readonly = property(lambda self: self._handle().readonly)
    subscribers = property(lambda self: self._handle().subscribers(),
                           doc="How many subscribers are joined now (a snapshot).")
    _mapped_size = property(lambda self: self._handle().size)

    def _lock_owner(self) -> int:
        return self._handle().lock_owner()  # type: ignore[no-any-return]

    def _break_lock(self, owner: int) -> bool:
        return self._handle().break_lock(owner)  # type: ignore[no-any-return]

    def close(self) -> None:
        h, self._h = self._h, None
        if h is not None:
            h.closed = True  # a call blocked in another thread ends at its next slice
            self._closed(h)

    def _closed(self, h: Any) -> None:
        pass


def _reattach_publisher(name: str, backend: str) -> "Publisher":
    return Publisher(name, create=False, backend=backend)


def _reattach_subscriber(name: str, backend: str) -> "Subscriber":
    return Subscriber(name, backend=backend)


class _Loan:
    """``Publisher.loan``'s context manager: the slot's bytes as a writable
    memoryview; published when the block ends normally, discarded (never
    seen by anyone) when it ends by an exception."""

    __slots__ = ("_pub", "_size", "_timeout", "_loan", "_view")

    def __init__(self, pub: "Publisher", size: int, timeout: Optional[float]) -> None:
        self._pub, self._size, self._timeout = pub, size, timeout
        self._loan: Any = None
        self._view: Optional[memoryview] = None

    def __enter__(self) -> memoryview:
        if self._loan is not None:
            raise RuntimeError("this loan is in use: call loan() again for another")
        *loan, view = self._pub._loan(self._size, self._timeout)
        self._loan, self._view = loan, view
        return view  # type: ignore[no-any-return]

    def __exit__(self, exc_type: object, *exc: object) -> None:
        loan, view = self._loan, self._view
        self._loan = self._view = None
        if view is not None:
            try:
                view.release()  # writes after the block go nowhere
            except BufferError:
                pass  # an array of it is still alive: its writes must stop here
        pub = self._pub
        if pub.closed:
            return  # the loan is reclaimed as this process's
        if exc_type is not None:
            pub._discard(*loan)
            return
        try:
            pub._commit(*loan, self._size)
        except BaseException:
            pub._discard(*loan)
            raise


class Publisher(_Channel):
    """The publishing end of the channel ``name``: messages of up to
    ``slot_size`` bytes, in a ring of ``slots``.

    ``Publisher(name, slot_size, slots)`` opens the channel, creating it when
    it does not exist; ``create=True`` insists on creating it,
    ``create=False`` on finding it.  Opening an existing channel takes its
    parameters from it; one given that disagrees is a ``ValueError`` saying
    which.  ``history`` (0 when creating): how many of the latest messages a
    new subscriber gets first.  ``overflow`` (``"block"`` when creating):
    ``"block"`` makes ``publish`` wait while every slot holds a message some
    live subscriber has not received, or is pinned (no subscriber: it never
    waits); ``"overwrite"`` never waits for readers: it reuses the oldest
    slot nobody has pinned, and subscribers that fell behind skip ahead
    (:attr:`Subscriber.missed`).  Several publishers, in any processes, may
    publish on one channel.  Permissions, ownership and errors are those of
    :class:`Segment`.
    """

    __slots__ = ()
    _REATTACH = staticmethod(_reattach_publisher)

    def __new__(
        cls,
        name: str,
        slot_size: Optional[int] = None,
        slots: Optional[int] = None,
        *,
        history: Optional[int] = None,
        max_subscribers: Optional[int] = None,
        overflow: Optional[str] = None,
        create: Optional[bool] = None,
        backend: Optional[str] = None,
        mode: int = 0o600,
        any_owner: bool = False,
    ) -> "Publisher":
        impl = resolve(backend)
        name, how, mode, given = _channel_args(impl, name, slot_size, slots, history,
                                               max_subscribers, overflow, create, mode,
                                               any_owner)
        return _open_matching(Publisher, impl, backend, name, how, mode, given,  # type: ignore[no-any-return]
                              any_owner)

    def publish(self, data: Union[C.BytesLike, str], timeout: Optional[float] = None) -> int:
        """Copy ``data`` (bytes-like, or str as UTF-8) into a slot and
        publish it; returns its number.  In block mode, waits up to
        ``timeout`` seconds for a slot (None: as long as it takes; 0: not
        at all), then raises ``TimeoutError``."""
        raise NotImplementedError

    def loan(self, size: int, timeout: Optional[float] = None) -> _Loan:
        """A context manager giving a writable memoryview of ``size`` bytes
        inside the channel's shared memory: build the message there (for
        instance ``numpy.frombuffer(buf, dtype).reshape(shape)``).  When the
        block ends normally the message is published (its number in
        :attr:`last_seq`); when it ends by an exception it is discarded,
        seen by nobody.  Waits for a slot as :meth:`publish` does.  Do not
        write through views of it that outlive the block."""
        if self.closed:
            raise closed_error(self._KIND, self.name)
        n = C.as_int(size, "size")
        if n < 0:
            raise ValueError(f"size must be >= 0, not {n}")
        if n > self.slot_size:
            raise too_big(n, self.name, self.slot_size)
        return _Loan(self, n, _timeout_arg(timeout))

    def _loan(self, size: int, timeout: Optional[float]) -> Tuple[Any, ...]:
        raise NotImplementedError

    def _commit(self, *loan_and_length: Any) -> int:
        raise NotImplementedError

    def _discard(self, *loan: Any) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        if self.closed:
            return f"<Publisher {self.name!r} closed>"
        return (f"Publisher({self.name!r}, slot_size={self.slot_size}, slots={self.slots}, "
                f"overflow={self.overflow!r}, subscribers={self.subscribers})")


class _HandlePublisher(_HandleChannel, Publisher):
    """Publisher over a ChannelHandle (the cffi binding, the python backend)."""

    __slots__ = ("_h", "_name", "_backend", "_last_seq", "__weakref__")
    _last_seq: int

    def _setup(self) -> None:
        self._last_seq = 0

    @property
    def last_seq(self) -> int:
        """The number of the last message this object published (0: none)."""
        return self._last_seq

    def publish(self, data: Union[C.BytesLike, str], timeout: Optional[float] = None) -> int:
        h = self._handle()
        if type(data) is not bytes:
            data = C.as_bytes_view(data)
        wait = _timeout_arg(timeout)
        if len(data) > h.slot_size:
            raise too_big(len(data), self._name, h.slot_size)
        seq: int = h.publish(data, wait)
        self._last_seq = seq
        return seq

    def _loan(self, size: int, timeout: Optional[float]) -> Tuple[Any, ...]:
        loan, view = self._handle().loan(size, timeout)
        return loan, view

    def _commit(self, *loan_and_length: Any) -> int:
        loan, length = loan_and_length
        self._last_seq = seq = self._handle().commit(loan, length)
        return seq  # type: ignore[no-any-return]

    def _discard(self, *loan: Any) -> None:
        h = self._h
        if h is not None:
            h.discard(loan[0])


class Subscriber(_Channel):
    """The receiving end of the channel ``name`` (which must exist).

    It receives every message published after it joined, preceded by up to
    the channel's ``history`` of the latest earlier ones, in order
    (``overwrite`` channels: minus those it fell too far behind for, counted
    in :attr:`missed`).  Each is a :class:`Sample`, the message in place, or
    with :meth:`receive_into` a copy in a buffer of yours.
    Closing it releases every sample it still holds.
    """

    __slots__ = ()
    _REATTACH = staticmethod(_reattach_subscriber)
    _sample_type = Sample  # what the C half's receive() makes

    received: Any
    missed: Any

    def __new__(cls, name: str, *, backend: Optional[str] = None,
                any_owner: bool = False) -> "Subscriber":
        impl = resolve(backend)
        name, how, mode, given = _channel_args(impl, name, None, None, None, None, None,
                                               False, 0o600, any_owner)
        return _open_matching(Subscriber, impl, backend, name, how, mode, given,  # type: ignore[no-any-return]
                              any_owner)

    def receive(self, timeout: Optional[float] = None) -> Sample:
        """The next message, in place (a pinned :class:`Sample`).  Waits up
        to ``timeout`` seconds (None: as long as it takes; 0: not at all),
        then raises ``TimeoutError``."""
        raise NotImplementedError

    def receive_into(self, buffer: Any, timeout: Optional[float] = None) -> int:
        """Copy the next message into ``buffer`` (any writable C-contiguous
        bytes-like object: a bytearray, a memoryview, a numpy array, an
        mmap) and return its length; its slot is released before this
        returns.  Waits as :meth:`receive` does.  A buffer smaller than the
        message raises ``ValueError`` and receives nothing: the message is
        still the next one (on an ``overwrite`` channel it may be
        overwritten meanwhile, and is then counted in :attr:`missed`)."""
        raise NotImplementedError

    def samples(self, timeout: Optional[float] = None) -> Iterator[Sample]:
        """Each message as it comes; stops when ``timeout`` seconds pass
        without one (None: never)."""
        while True:
            try:
                yield self.receive(timeout)
            except TimeoutError:
                return

    def __iter__(self) -> Iterator[Sample]:
        return self.samples()

    def __repr__(self) -> str:
        if self.closed:
            return f"<Subscriber {self.name!r} closed>"
        return (f"Subscriber({self.name!r}, received={self.received}, "
                f"missed={self.missed}, last_seq={self.last_seq})")


class _HandleSubscriber(_HandleChannel, Subscriber):
    """Subscriber over a ChannelHandle (the cffi binding, the python backend)."""

    __slots__ = ("_h", "_name", "_backend", "_sub", "_received", "_missed", "_last_seq",
                 "__weakref__")
    _sub: Any
    _received: int
    _missed: int
    _last_seq: int

    def _setup(self) -> None:
        h = self._h
        self._sub = h.subscribe()
        self._received = self._missed = self._last_seq = 0
        if self._sub is None:
            h.closed = True
            self._h = None
            raise channel_full_error(self._name, None, False, 0, h.max_subscribers)

    received = property(lambda self: self._received, doc="Messages received so far.")
    missed = property(lambda self: self._missed,
                      doc="Messages lost to overwriting so far: received + missed counts "
                          "every message since it joined.")
    last_seq = property(lambda self: self._last_seq,
                        doc="The number of the last message received (0: none).")

    def receive(self, timeout: Optional[float] = None) -> Sample:
        h = self._handle()
        wait = _timeout_arg(timeout)
        got = h.receive(self._sub, wait)
        if got is None:
            raise TimeoutError(f"no new message on channel {self._name!r} within {timeout} s")
        slot, offset, length, seq, missed = got
        sample = Sample()
        if _C_SAMPLE:
            sample._pin(self, h.owner, h.address + offset, length, seq, slot)
        else:
            sample._pin(self, h.view[offset:offset + length].toreadonly(),  # type: ignore[call-arg]
                        seq, slot)
        self._received += 1
        self._missed += missed
        self._last_seq = seq
        return sample

    def receive_into(self, buffer: Any, timeout: Optional[float] = None) -> int:
        h = self._handle()
        dst = (memoryview(buffer) if type(buffer) is bytearray
               else C.writable_view(buffer, "receive_into"))
        got = h.receive_into(self._sub, dst, _timeout_arg(timeout))
        if got is None:
            raise TimeoutError(f"no new message on channel {self._name!r} within {timeout} s")
        length, seq, missed = got
        self._received += 1
        self._missed += missed
        self._last_seq = seq
        return length  # type: ignore[no-any-return]

    def _pending(self) -> bool:
        h = self._h
        return True if h is None else bool(h.pending(self._sub))

    def _release(self, slot: int) -> None:
        h = self._h
        if h is not None:
            h.release(self._sub, slot)

    def _closed(self, h: Any) -> None:
        h.unsubscribe(self._sub)  # gives up every pin: its samples' bytes are gone


_HANDLE_CLASSES: Dict[type, type] = {Publisher: _HandlePublisher, Subscriber: _HandleSubscriber}
