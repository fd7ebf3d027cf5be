"""fastshm.aio.wait_any: await until one of many objects is ready."""

from __future__ import annotations

from typing import Any, Iterable, List, Optional

from .. import _watched
from .._hub import Watch
from .._wait_any import look
from ._waiting import running_loop, sleep_on


async def wait_any(objects: Iterable[Any], timeout: Optional[float] = None) -> List[Any]:
    """:func:`fastshm.wait_any` for asyncio: the ready ones of ``objects``
    (synchronous or fastshm.aio objects), nothing taken; TimeoutError after
    ``timeout`` seconds.  Any number of objects, on the loop's ring or
    the helper threads."""
    given, objs, peeks, ready = look(objects)
    if ready:
        return ready
    loop = running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    watches: List[Watch] = []
    try:
        _watched.watches_of(objs, watches)
        while True:
            for w in watches:
                w.arm()
            ready = [g for g, peek in zip(given, peeks) if peek()]
            if ready:
                return ready
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise TimeoutError(f"none of the {len(objs)} objects was ready within "
                                   f"{timeout} s")
            await sleep_on(loop, watches, left)
    finally:
        for w in watches:
            w.disarm()
