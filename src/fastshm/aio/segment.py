"""fastshm.aio.Segment: a Segment whose wait is a coroutine."""

from __future__ import annotations

from typing import Any, AsyncIterator, Optional

from .. import segment as _segment
from ._waiting import NOT_YET, Waiting


class Segment(Waiting):
    """:class:`fastshm.Segment` for asyncio: same constructor, attributes and
    plain methods (``store``, ``load``, ``view``, ...); :meth:`wait` and
    :meth:`messages` await instead of blocking a thread."""

    __slots__ = ()

    @classmethod
    def _sync_class(cls) -> Any:
        return _segment.Segment

    def __init__(self, name: str, size: int = 1024, **kwargs: Any) -> None:
        super().__init__(_segment.Segment(name, size, **kwargs))

    async def wait(self, timeout: Optional[float] = None, *, after: Optional[int] = None) -> int:
        """Until a message newer than ``after`` (default :attr:`last_seq`)
        is stored: the newest message number.  TimeoutError after
        ``timeout`` seconds (None: none)."""
        seg = self.sync
        if after is None:
            after = seg.last_seq
        point: int = after

        def check() -> Any:
            seq = seg.seq
            return seq if seq > point else NOT_YET

        def expired() -> BaseException:
            return TimeoutError(f"no new message in segment {seg.name!r} within {timeout} s")

        return await self.until(check, timeout, expired,  # type: ignore[no-any-return]
                                peek=lambda: seg.seq > point)

    async def messages(self, timeout: Optional[float] = None) -> AsyncIterator[bytes]:
        """Each new message as it is stored, from after :attr:`last_seq`;
        ends when ``timeout`` seconds pass without one (None: never)."""
        while True:
            try:
                await self.wait(timeout)
            except TimeoutError:
                return
            yield self.sync.load()
