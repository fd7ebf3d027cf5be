"""fastshm.aio.Publisher: a Publisher whose waits for room are coroutines."""

from __future__ import annotations

from typing import Any, Optional, Union

from .. import _common as C
from ._waiting import NOT_YET, Waiting


def _no_room(pub: Any, timeout: Optional[float]) -> BaseException:
    return TimeoutError(f"no free slot on channel {pub.name!r} within {timeout} s: every "
                        "slot holds a message a live subscriber has not received, or is "
                        "pinned")


class Publisher(Waiting):
    """:class:`fastshm.Publisher` for asyncio: same constructor and
    attributes; :meth:`publish` and ``async with pub.loan(n) as buf`` await
    a free slot instead of blocking a thread."""

    __slots__ = ()

    def __init__(self, name: str, slot_size: Optional[int] = None,
                 slots: Optional[int] = None, **kwargs: Any) -> None:
        from ..channel import Publisher as _Publisher

        super().__init__(_Publisher(name, slot_size, slots, **kwargs))

    @classmethod
    def _sync_class(cls) -> Any:
        from ..channel import Publisher

        return Publisher

    async def publish(self, data: Union[C.BytesLike, str], timeout: Optional[float] = None) -> int:
        """Copy ``data`` into a slot and publish it: its sequence number.
        TimeoutError after ``timeout`` seconds without a free slot."""
        pub = self.sync

        def check() -> Any:
            try:
                return pub.publish(data, timeout=0)
            except TimeoutError:
                return NOT_YET

        return await self.until(check, timeout, lambda: _no_room(pub, timeout),  # type: ignore[no-any-return]
                                room=True)

    def loan(self, size: int, timeout: Optional[float] = None) -> "_Loan":
        """``async with pub.loan(size) as buf``: a writable memoryview of
        ``size`` bytes in a slot, published when the block ends normally,
        discarded when it ends by an exception."""
        return _Loan(self, size, timeout)


class _Loan:
    """The asynchronous form of Publisher.loan's context manager."""

    __slots__ = ("_pub", "_size", "_timeout", "_cm")

    def __init__(self, pub: Publisher, size: int, timeout: Optional[float]) -> None:
        self._pub, self._size, self._timeout = pub, size, timeout
        self._cm: Any = None

    async def __aenter__(self) -> memoryview:
        if self._cm is not None:
            raise RuntimeError("this loan is in use: call loan() again for another")
        sync = self._pub.sync
        size = self._size

        def check() -> Any:
            cm = sync.loan(size, timeout=0)
            try:
                view = cm.__enter__()
            except TimeoutError:
                return NOT_YET
            self._cm = cm
            return view

        return await self._pub.until(  # type: ignore[no-any-return]
            check, self._timeout, lambda: _no_room(sync, self._timeout), room=True)

    async def __aexit__(self, *exc: Any) -> None:
        cm, self._cm = self._cm, None
        if cm is not None:
            cm.__exit__(*exc)
