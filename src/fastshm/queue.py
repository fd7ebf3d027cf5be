"""Queue: a named FIFO of byte messages, each delivered once.

``Queue(...)`` returns one of two classes, both subclasses of ``Queue``, as
``Segment(...)`` does: on the native backend's C-API binding, a class whose
hot methods (put, get, get_into, get_many, put_many, their ``_nowait``
forms, qsize) are C methods of ``_cext.QueueCore``; on the cffi binding and
the python backend, ``_HandleQueue``, whose methods below call the backend's
``QueueHandle``.  Both behave the same; the suite runs on each.

``ObjectQueue`` wraps a Queue to send picklable objects.
"""

from __future__ import annotations

import pickle
from typing import Any, Iterable, Iterator, List, Optional, Tuple, Union

from . import _common as C
from ._backend import resolve
from ._errors import (
    DecodeError,
    ProtocolMismatch,
    batch_too_big,
    empty_error,
    full_error,
    message_too_big,
)
from ._named import HandleNamed, Named, _open_args, _timeout_arg, native_class

_DEFAULT_SIZE = 1 << 20


def _reattach(name: str, backend: str) -> "Queue":
    return Queue(name, create=False, backend=backend)


def _open(impl: Any, name: str, how: int, capacity: int, mode: int, any_owner: bool) -> "Queue":
    core = getattr(impl, "QueueCore", None)
    if core is not None:
        flags = impl.ANY_OWNER if any_owner else 0
        return core.__new__(native_class(core, Queue), name, how | flags, capacity, mode)  # type: ignore[no-any-return]
    self = object.__new__(_HandleQueue)
    self._name = name
    self._backend = impl.name
    self._h = impl.QueueHandle(name, how, capacity, mode, any_owner)
    return self


def _max_messages_arg(value: object) -> int:
    """``get_many``'s limit: an int >= 1, or None for every queued message."""
    if value is None:
        return 1 << 62
    n = C.as_int(value, "max_messages")
    if n < 1:
        raise ValueError(f"max_messages must be at least 1 (or None for all), not {n}")
    return n


def _block_arg(block: object, timeout: object) -> Optional[float]:
    """Seconds a call may wait: 0 when it must not block, None for ever."""
    if not block:
        return 0.0
    return _timeout_arg(timeout)


class Queue(Named):
    """A named, bounded queue of byte messages in shared memory: any number
    of processes put and get, every message is delivered to exactly one
    ``get``, and the messages of one producer come out in the order it put
    them.

    ``Queue(name)`` opens the queue called ``name``, creating it with a ring
    of ``size`` bytes when it does not exist yet; ``create=True`` insists on
    creating it, ``create=False`` on finding it (``size`` is then ignored).
    Each message takes 8 bytes plus its length rounded up to 8, so a 1 MiB
    queue holds 14563 messages of 64 bytes.  Permissions, ownership and
    errors are those of :class:`Segment`.

    A producer or consumer killed at any instant neither corrupts nor wedges
    the queue: a message whose ``put`` returned is delivered once (unless
    the queue is deleted), a ``put`` killed midway leaves nothing behind, and
    a ``get`` killed midway loses at most the messages it was taking.
    """

    __slots__ = ()
    _KIND = "queue"
    _REATTACH = staticmethod(_reattach)

    def __new__(
        cls,
        name: str,
        size: int = _DEFAULT_SIZE,
        *,
        create: Optional[bool] = None,
        backend: Optional[str] = None,
        mode: int = 0o600,
        any_owner: bool = False,
    ) -> "Queue":
        impl = resolve(backend)
        name, how, capacity, mode = _open_args(impl, name, size, create, mode, any_owner,
                                               C.check_queue_size)
        try:
            return _open(impl, name, how, capacity, mode, any_owner)
        except ProtocolMismatch:
            # A queue made by the other backend: its lock is that backend's.
            # Without an explicit choice, open it with that one.
            if backend not in (None, "auto"):
                raise
            other = resolve("python" if impl.name == "native" else "native")
            if other.name == impl.name:
                raise
            return _open(other, name, C.ATTACH, 0, mode, any_owner)

    # -- what it is (each subclass answers these its own way) --

    @property
    def name(self) -> str:
        """The queue's name, as other processes open it."""
        raise NotImplementedError

    @property
    def backend(self) -> str:
        """``"native"`` or ``"python"``: which backend this object uses (a
        queue is locked the way the backend that made it locks)."""
        raise NotImplementedError

    @property
    def capacity(self) -> int:
        """Bytes of the ring that holds the queued messages."""
        raise NotImplementedError

    @property
    def max_message(self) -> int:
        """The largest message the queue takes: ``capacity - 8``."""
        raise NotImplementedError

    @property
    def created(self) -> bool:
        """Whether opening this object created the queue."""
        raise NotImplementedError

    @property
    def readonly(self) -> bool:
        """Whether this object could open the queue for reading only: qsize
        and the other snapshots work; put and get raise PermissionError."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        raise NotImplementedError

    @property
    def bytes_used(self) -> int:
        """Ring bytes the queued messages take now (a snapshot)."""
        raise NotImplementedError

    # -- putting and getting --

    def put(self, data: Union[C.BytesLike, str], block: bool = True,
            timeout: Optional[float] = None) -> None:
        """Append ``data`` (bytes-like, or str as UTF-8).  While there is no
        room, wait up to ``timeout`` seconds (None: as long as it takes), then
        raise ``queue.Full``; with ``block=False``, raise it at once.  A
        message larger than :attr:`max_message` raises ValueError."""
        raise NotImplementedError

    def put_nowait(self, data: Union[C.BytesLike, str]) -> None:
        """``put(data, block=False)``."""
        raise NotImplementedError

    def get(self, block: bool = True, timeout: Optional[float] = None) -> bytes:
        """Remove and return the front message.  While the queue is empty,
        wait up to ``timeout`` seconds (None: as long as it takes), then raise
        ``queue.Empty``; with ``block=False``, raise it at once."""
        raise NotImplementedError

    def get_nowait(self) -> bytes:
        """``get(block=False)``."""
        raise NotImplementedError

    def get_into(self, buffer: Any, block: bool = True, timeout: Optional[float] = None) -> int:
        """Remove the front message into ``buffer`` (writable, contiguous)
        and return its length; waits as :meth:`get` does.  A buffer too small
        for it raises ValueError, and the message stays queued."""
        raise NotImplementedError

    def get_many(self, max_messages: Optional[int] = None, block: bool = True,
                 timeout: Optional[float] = None) -> List[bytes]:
        """Wait as :meth:`get` does for at least one message, then remove and
        return up to ``max_messages`` of those queued (None: all), in order,
        under one lock: how a consumer keeps up with a fast producer."""
        raise NotImplementedError

    def put_many(self, messages: Iterable[Union[C.BytesLike, str]], block: bool = True,
                 timeout: Optional[float] = None) -> None:
        """Append every message, in order, under one lock: all of them or,
        on ``queue.Full``, none.  Messages that together could never fit
        raise ValueError."""
        raise NotImplementedError

    # -- snapshots (other processes may change the queue the next moment) --

    def qsize(self) -> int:
        """How many messages are queued."""
        raise NotImplementedError

    def empty(self) -> bool:
        """Whether no message is queued."""
        return self.bytes_used == 0  # head == tail: each is stored whole

    def full(self) -> bool:
        """Whether not even an empty message would fit."""
        return self.capacity - self.bytes_used < C.QUEUE_RECORD_HEADER

    # -- iteration --

    def messages(self, timeout: Optional[float] = None) -> Iterator[bytes]:
        """Yield messages as they are got, until ``timeout`` seconds pass
        without one (None: never)."""
        import queue

        while True:
            try:
                yield self.get(timeout=timeout)
            except queue.Empty:
                return

    def __iter__(self) -> Iterator[bytes]:
        """``messages()``: every message, waiting for the next one forever."""
        return self.messages()

    # -- lifetime --

    def close(self) -> None:
        """Close this object's access; the queue stays for other processes.
        Closing twice is harmless."""
        raise NotImplementedError

    def __repr__(self) -> str:
        if self.closed:
            return f"<Queue {self.name!r} closed>"
        return (
            f"Queue({self.name!r}, capacity={self.capacity}, qsize={self.qsize()}, "
            f"backend={self.backend!r})"
        )


class _HandleQueue(HandleNamed, Queue):
    """Queue over a backend's QueueHandle: the python backend, and the
    native backend through cffi."""

    __slots__ = ("_h", "_name", "_backend", "__weakref__")
    _h: Any
    _name: str
    _backend: str

    @property
    def max_message(self) -> int:
        return self._handle().max_message  # type: ignore[no-any-return]

    @property
    def bytes_used(self) -> int:
        return self._handle().used()  # type: ignore[no-any-return]

    def _put(self, h: Any, msgs: List[C.BytesLike], wait: Optional[float]) -> None:
        if not h.put_many(msgs, wait):
            need = sum(C.record_size(len(m)) for m in msgs)
            raise full_error(self._name, need, h.capacity, h.used())

    def put(self, data: Union[C.BytesLike, str], block: bool = True,
            timeout: Optional[float] = None) -> None:
        h = self._handle()
        if type(data) is not bytes:
            data = C.as_bytes_view(data)
        wait = _block_arg(block, timeout)
        if len(data) > h.max_message:
            raise message_too_big(len(data), self._name, h.max_message)
        self._put(h, [data], wait)

    def put_nowait(self, data: Union[C.BytesLike, str]) -> None:
        self.put(data, False)

    def put_many(self, messages: Iterable[Union[C.BytesLike, str]], block: bool = True,
                 timeout: Optional[float] = None) -> None:
        h = self._handle()
        wait = _block_arg(block, timeout)
        msgs = [m if type(m) is bytes else C.as_bytes_view(m) for m in messages]
        if not msgs:
            return
        for m in msgs:
            if len(m) > h.max_message:
                raise message_too_big(len(m), self._name, h.max_message)
        total = sum(C.record_size(len(m)) for m in msgs)
        if total > h.capacity:
            raise batch_too_big(total, self._name, h.capacity)
        self._put(h, msgs, wait)

    def get(self, block: bool = True, timeout: Optional[float] = None) -> bytes:
        h = self._handle()
        got = h.take(1, _block_arg(block, timeout))
        if not got:
            raise empty_error(self._name)
        return got[0]  # type: ignore[no-any-return]

    def get_nowait(self) -> bytes:
        return self.get(False)

    def get_into(self, buffer: Any, block: bool = True, timeout: Optional[float] = None) -> int:
        h = self._handle()
        dst = (memoryview(buffer) if type(buffer) is bytearray
               else C.writable_view(buffer, "get_into"))
        n: int = h.take_into(dst, _block_arg(block, timeout))
        if n < 0:
            raise empty_error(self._name)
        return n

    def get_many(self, max_messages: Optional[int] = None, block: bool = True,
                 timeout: Optional[float] = None) -> List[bytes]:
        h = self._handle()
        limit = _max_messages_arg(max_messages)
        got: List[bytes] = h.take(limit, _block_arg(block, timeout))
        if not got:
            raise empty_error(self._name)
        return got

    def qsize(self) -> int:
        return self._handle().count()  # type: ignore[no-any-return]



class ObjectQueue:
    """A :class:`Queue` of Python objects, pickled on the way in and
    unpickled on the way out, for code written for ``multiprocessing.Queue``.

    Unpickling runs code of the writer's choosing: a process that gets from
    an ObjectQueue trusts every process that can put into it.  By default
    that is only this user's processes (the queue is made with mode 0o600,
    and a queue of another user is refused); do not widen both for writers
    you do not trust.  Send bytes through a plain :class:`Queue` when they
    come from elsewhere.

    A message that does not unpickle (bytes put through the plain queue, a
    class the getting process cannot import) has left the queue when
    ``get`` or ``get_many`` finds out: they raise :class:`DecodeError`, a
    ``pickle.UnpicklingError`` that carries its bytes (``.data``) and, for
    ``get_many``, every other object of the batch (``.objects``).
    """

    __slots__ = ("queue", "protocol")

    def __init__(self, name: str, size: int = _DEFAULT_SIZE, *,
                 protocol: int = pickle.HIGHEST_PROTOCOL, **kwargs: Any) -> None:
        #: The underlying bytes queue.
        self.queue = Queue(name, size, **kwargs)
        self.protocol = protocol

    def put(self, obj: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        self.queue.put(pickle.dumps(obj, self.protocol), block, timeout)

    def put_nowait(self, obj: Any) -> None:
        self.put(obj, False)

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """Remove the front message and return its object; waits as
        :meth:`Queue.get` does.  A message that does not unpickle has left
        the queue all the same: :class:`DecodeError` carries its bytes
        (``.data``)."""
        return self._decode([self.queue.get(block, timeout)])[0]

    def get_nowait(self) -> Any:
        return self.get(False)

    def put_many(self, objs: Iterable[Any], block: bool = True,
                 timeout: Optional[float] = None) -> None:
        self.queue.put_many([pickle.dumps(o, self.protocol) for o in objs], block, timeout)

    def get_many(self, max_messages: Optional[int] = None, block: bool = True,
                 timeout: Optional[float] = None) -> List[Any]:
        """Up to ``max_messages`` objects (None: all queued), as
        :meth:`Queue.get_many` takes them.  When any of the messages taken
        does not unpickle, every one is still decoded that can be, and
        :class:`DecodeError` is raised with those objects, in order
        (``.objects``), and the bytes of the others (``.undecoded``): the
        messages have left the queue, and none is lost."""
        return self._decode(self.queue.get_many(max_messages, block, timeout))

    def _decode(self, messages: List[bytes]) -> List[Any]:
        objects: List[Any] = []
        undecoded: List[bytes] = []
        first: Optional[BaseException] = None
        for m in messages:
            try:
                objects.append(pickle.loads(m))
            except Exception as e:  # anything unpickling raises: bad bytes, a missing class
                undecoded.append(m)
                first = first or e
        if first is not None:
            raise DecodeError(self.queue.name, len(messages), objects, undecoded,
                              first) from first
        return objects

    def qsize(self) -> int:
        return self.queue.qsize()

    def empty(self) -> bool:
        return self.queue.empty()

    def full(self) -> bool:
        return self.queue.full()

    @property
    def name(self) -> str:
        return self.queue.name

    def close(self) -> None:
        self.queue.close()

    def unlink(self) -> None:
        self.queue.unlink()

    def delete(self) -> None:
        self.queue.delete()

    def __enter__(self) -> "ObjectQueue":
        self.queue.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Tuple[Any, Tuple[str, str, int]]:
        return (_reattach_objects, (self.queue.name, self.queue.backend, self.protocol))

    def __repr__(self) -> str:
        return f"ObjectQueue({self.queue!r})"


def _reattach_objects(name: str, backend: str, protocol: int) -> ObjectQueue:
    return ObjectQueue(name, create=False, backend=backend, protocol=protocol)
