"""fastshm.aio.Subscriber: a Subscriber whose receive is a coroutine."""

from __future__ import annotations

from typing import Any, AsyncIterator, Optional

from ._waiting import NOT_YET, Waiting


def _nothing(sub: Any, timeout: Optional[float]) -> BaseException:
    return TimeoutError(f"no new message on channel {sub.name!r} within {timeout} s")


class Subscriber(Waiting):
    """:class:`fastshm.Subscriber` for asyncio: same constructor and
    attributes; :meth:`receive`, :meth:`receive_into` and ``async for
    sample in sub.samples()`` await the next message instead of blocking a
    thread.  A task cancelled while it awaits has received nothing."""

    __slots__ = ()

    def __init__(self, name: str, **kwargs: Any) -> None:
        from ..channel import Subscriber as _Subscriber

        super().__init__(_Subscriber(name, **kwargs))

    @classmethod
    def _sync_class(cls) -> Any:
        from ..channel import Subscriber

        return Subscriber

    async def _next(self, take: Any, timeout: Optional[float]) -> Any:
        def check() -> Any:
            try:
                return take()
            except TimeoutError:
                return NOT_YET

        return await self.until(check, timeout, lambda: _nothing(self.sync, timeout))

    async def receive(self, timeout: Optional[float] = None) -> Any:
        """The next message in place, a :class:`fastshm.Sample` (release it,
        or use it in a ``with`` block).  TimeoutError after ``timeout``
        seconds without one."""
        sub = self.sync
        return await self._next(lambda: sub.receive(timeout=0), timeout)

    async def receive_into(self, buffer: Any, timeout: Optional[float] = None) -> int:
        """The next message copied into ``buffer``: its length."""
        sub = self.sync
        return await self._next(  # type: ignore[no-any-return]
            lambda: sub.receive_into(buffer, timeout=0), timeout)

    async def samples(self, timeout: Optional[float] = None) -> AsyncIterator[Any]:
        """Each message as it comes; ends when ``timeout`` seconds pass
        without one (None: never)."""
        while True:
            try:
                sample = await self.receive(timeout)
            except TimeoutError:
                return
            yield sample

    def __aiter__(self) -> AsyncIterator[Any]:
        return self.samples()
