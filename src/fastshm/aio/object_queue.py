"""fastshm.aio.ObjectQueue: an ObjectQueue whose blocking calls are
coroutines."""

from __future__ import annotations

import pickle
from typing import Any, AsyncIterator, Iterable, List, Optional

from .. import queue as _queue
from ._waiting import Waiting
from .queue import Queue


class ObjectQueue(Queue):
    """:class:`fastshm.ObjectQueue` for asyncio: Python objects, pickled on
    the way in and unpickled on the way out (whoever can put into it runs
    code in the getter: see the synchronous class).  ``get_into`` is not
    there: it gives bytes (``.queue`` is the bytes queue)."""

    __slots__ = ()

    @classmethod
    def _sync_class(cls) -> Any:
        return _queue.ObjectQueue

    def __init__(self, name: str, size: int = _queue._DEFAULT_SIZE, **kwargs: Any) -> None:
        Waiting.__init__(self, _queue.ObjectQueue(name, size, **kwargs))

    async def get(self, timeout: Optional[float] = None) -> Any:
        """The front object, removed and unpickled."""
        return await self._get(self.sync.get_nowait, timeout)

    async def get_many(self, max_messages: Optional[int] = None,
                       timeout: Optional[float] = None) -> List[Any]:
        """At least one object, and up to ``max_messages`` of those queued."""
        q = self.sync
        return await self._get(  # type: ignore[no-any-return]
            lambda: q.get_many(max_messages, block=False), timeout)

    async def get_into(self, buffer: Any, timeout: Optional[float] = None) -> int:
        raise AttributeError("an ObjectQueue gives objects, not bytes: use get(), or "
                             "get_into() of its .queue")

    async def put(self, obj: Any, timeout: Optional[float] = None) -> None:
        """Append ``obj`` (pickled once, however long it waits)."""
        q = self.sync
        data = pickle.dumps(obj, q.protocol)
        await self._put(lambda: q.queue.put_nowait(data), timeout)

    async def put_many(self, objects: Iterable[Any],
                       timeout: Optional[float] = None) -> None:
        """Append every object, in order, all or none."""
        q = self.sync
        batch = [pickle.dumps(obj, q.protocol) for obj in objects]
        await self._put(lambda: q.queue.put_many(batch, block=False), timeout)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._forever()
