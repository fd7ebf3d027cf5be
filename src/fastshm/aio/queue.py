"""fastshm.aio.Queue: a Queue whose blocking calls are coroutines."""

from __future__ import annotations

import queue as _stdqueue
from typing import Any, AsyncIterator, Iterable, List, Optional, Union

from .. import _common as C
from .. import queue as _queue
from ._waiting import NOT_YET, Waiting


def _empty(q: Any, timeout: Optional[float]) -> BaseException:
    return _stdqueue.Empty(f"queue {q.name!r} stayed empty for {timeout} s")


def _full(q: Any, timeout: Optional[float]) -> BaseException:
    return _stdqueue.Full(f"queue {q.name!r} had no room for {timeout} s")


class Queue(Waiting):
    """:class:`fastshm.Queue` for asyncio: same constructor, attributes and
    plain methods (``put_nowait``, ``get_nowait``, ``qsize``, ...); ``get``,
    ``put``, ``get_many``, ``put_many`` and ``get_into`` are coroutines, and
    ``async for message in queue`` gets messages as they come.  A task
    cancelled while it awaits ``get`` has taken nothing: the next ``get``
    gets the message."""

    __slots__ = ()

    @classmethod
    def _sync_class(cls) -> Any:
        return _queue.Queue

    def __init__(self, name: str, size: int = _queue._DEFAULT_SIZE, **kwargs: Any) -> None:
        super().__init__(_queue.Queue(name, size, **kwargs))

    async def _get(self, take: Any, timeout: Optional[float]) -> Any:
        q = self.sync

        def check() -> Any:
            try:
                return take()
            except _stdqueue.Empty:
                return NOT_YET

        return await self.until(check, timeout, lambda: _empty(q, timeout),
                                peek=lambda: q.qsize() > 0)

    async def _put(self, put: Any, timeout: Optional[float]) -> None:
        q = self.sync

        def check() -> Any:
            try:
                put()
            except _stdqueue.Full:
                return NOT_YET
            return None

        await self.until(check, timeout, lambda: _full(q, timeout), peek=lambda: not q.full())

    async def get(self, timeout: Optional[float] = None) -> bytes:
        """The front message, removed; ``queue.Empty`` after ``timeout``
        seconds without one (None: none)."""
        q = self.sync
        return await self._get(q.get_nowait, timeout)  # type: ignore[no-any-return]

    async def get_into(self, buffer: Any, timeout: Optional[float] = None) -> int:
        """The front message, removed into ``buffer``: its length."""
        q = self.sync
        return await self._get(  # type: ignore[no-any-return]
            lambda: q.get_into(buffer, block=False), timeout)

    async def get_many(self, max_messages: Optional[int] = None,
                       timeout: Optional[float] = None) -> List[bytes]:
        """At least one message, and up to ``max_messages`` of those queued
        (None: all), in order, under one lock."""
        q = self.sync
        return await self._get(  # type: ignore[no-any-return]
            lambda: q.get_many(max_messages, block=False), timeout)

    async def put(self, data: Union[C.BytesLike, str], timeout: Optional[float] = None) -> None:
        """Append ``data``; ``queue.Full`` after ``timeout`` seconds without
        room (None: none)."""
        q = self.sync
        await self._put(lambda: q.put_nowait(data), timeout)

    async def put_many(self, messages: Iterable[Union[C.BytesLike, str]],
                       timeout: Optional[float] = None) -> None:
        """Append every message, in order, all or none."""
        q = self.sync
        batch = list(messages)
        await self._put(lambda: q.put_many(batch, block=False), timeout)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._forever()

    async def _forever(self) -> AsyncIterator[bytes]:
        while True:
            yield await self.get()
