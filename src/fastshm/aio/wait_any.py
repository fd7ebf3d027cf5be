"""fastshm.aio.wait_any: await until one of many objects is ready."""

from __future__ import annotations

import asyncio
from typing import Any, Iterable, List, Optional

from .. import _watched
from .._wait_any import objects_of
from ._waiting import _wake, _waker


async def wait_any(objects: Iterable[Any], timeout: Optional[float] = None) -> List[Any]:
    """:func:`fastshm.wait_any` for asyncio: the ready ones of ``objects``
    (synchronous or fastshm.aio objects), nothing taken; TimeoutError after
    ``timeout`` seconds.  Any number of objects, on the helper thread."""
    given = list(objects)
    objs = objects_of(given)
    peeks = [_watched.ready_peek(o)[1] for o in objs]
    ready = [g for g, peek in zip(given, peeks) if peek()]
    if ready:
        return ready
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    watches = []
    try:
        for o in objs:
            mapping = _watched.mapping_of(o)
            try:
                watches.append(_watched.watch(o, mapping))
            finally:
                mapping.release()  # the watch holds it now
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
            fut: "asyncio.Future[None]" = loop.create_future()
            wake = _waker(loop, fut)
            for w in watches:
                w.sleep(wake)
            timer = None if left is None else loop.call_later(left, _wake, fut)
            try:
                await fut
            finally:
                if timer is not None:
                    timer.cancel()
            # The other watches sleep on with this callback until armed
            # and put to sleep again: a late call finds the future done.
    finally:
        for w in watches:
            w.disarm()
