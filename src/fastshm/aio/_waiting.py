"""What every fastshm.aio object shares: the synchronous object it wraps,
the helper's mapping of it, and the one way it waits (``until``)."""

from __future__ import annotations

import asyncio
import functools
import weakref
from typing import Any, Callable, List, Optional, Set, Type

from .. import _watched
from .._hub import Mapping, Watch

#: What a ``check`` returns while what it waits for is not there.
NOT_YET: Any = object()
#: How long a wait looks again at each turn of the loop before it sleeps,
#: at least, when the object's last wait ended within SPIN_MAX_S (a request
#: answered at once, a stream that keeps up): a sleep and its wake-up cost
#: more.  It looks for twice the time the last wait took, within these two.
SPIN_S = 50e-6
SPIN_MAX_S = 500e-6


def look_for(waited: float) -> float:
    """How long the next wait looks again before it sleeps, after a wait
    that took ``waited`` seconds: 0 (sleep at once) past SPIN_MAX_S."""
    return 0.0 if waited > SPIN_MAX_S else min(SPIN_MAX_S, max(SPIN_S, 2 * waited))


def running_loop() -> asyncio.AbstractEventLoop:
    """The asyncio event loop this coroutine runs on, or a RuntimeError
    that says what fastshm.aio needs."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "fastshm.aio waits on an asyncio event loop (asyncio's own, uvloop, or "
            "anyio's asyncio backend) and none runs in this thread: await it under "
            "asyncio.run(), or use the blocking call of the synchronous object "
            "(trio has no asyncio loop)") from None


def _wake(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


def _waker(loop: asyncio.AbstractEventLoop, fut: "asyncio.Future[None]") -> Callable[[], None]:
    """The helper thread's callback: wake the loop for this future."""
    def wake() -> None:
        try:
            loop.call_soon_threadsafe(_wake, fut)
        except RuntimeError:
            pass  # the loop is closed: nobody waits any more
    return wake


async def sleep_on(loop: asyncio.AbstractEventLoop, watches: List[Watch],
                   left: Optional[float]) -> None:
    """Until the loop's ring or a helper sees one of the armed ``watches``
    change, or ``left`` seconds (None: no limit).  Watches not woken sleep on with a
    callback that finds the future done, until armed and put to sleep
    again (or disarmed)."""
    fut: "asyncio.Future[None]" = loop.create_future()
    here = functools.partial(_wake, fut)  # for the loop's own ring
    there = _waker(loop, fut)  # for a helper thread
    for w in watches:
        w.sleep(here if w.local else there)
    timer = None if left is None else loop.call_later(left, _wake, fut)
    try:
        await fut
    finally:
        if timer is not None:
            timer.cancel()


class Waiting:
    """Base of the aio classes: ``sync`` is the synchronous object, shared
    (closing either closes both); attributes not defined here are its."""

    __slots__ = ("sync", "_mapping", "_counted", "_look", "_watches", "_release",
                 "__weakref__")

    @classmethod
    def _sync_class(cls) -> Type[Any]:
        raise NotImplementedError

    def __init__(self, sync: Any) -> None:
        self.sync = sync
        mapping = _watched.mapping_of(sync)
        self._mapping: Optional[Mapping] = mapping
        self._counted = _watched.counted(sync)
        self._look = 0.0  # how long its next wait looks again (look_for)
        self._watches: Set[Watch] = set()
        # Its reference to the mapping goes at close(), or with it if it is
        # never closed (waits still running keep theirs).
        self._release = weakref.finalize(self, mapping.release)
        self._release.atexit = False

    @classmethod
    def from_sync(cls, obj: Any) -> Any:
        """The asynchronous twin of ``obj``, sharing its handle."""
        want = cls._sync_class()
        if not isinstance(obj, want):
            raise TypeError(f"fastshm.aio.{cls.__name__}.from_sync() takes a "
                            f"fastshm.{want.__name__}, not {type(obj).__name__!r}")
        self = cls.__new__(cls)
        Waiting.__init__(self, obj)
        return self

    def __getattr__(self, attr: str) -> Any:
        # The non-blocking methods and the attributes: the synchronous one's.
        if attr in Waiting.__slots__:
            raise AttributeError(attr)
        return getattr(self.sync, attr)

    def close(self) -> None:
        """Close the object; tasks awaiting it raise the error a closed
        object gives.  Harmless twice."""
        self.sync.close()
        self._closed()

    def delete(self) -> None:
        """Close it and remove its name, as the synchronous ``delete``."""
        self.sync.delete()
        self._closed()

    def _closed(self) -> None:
        for w in list(self._watches):
            w.wake()
        self._mapping = None
        self._release()  # once: a finalizer runs at most once

    def _after_close(self, check: Callable[[], Any]) -> Any:
        """A wait on a closed object: what the synchronous call says (its
        closed error, as a rule)."""
        got = check()
        if got is NOT_YET:
            raise ValueError(f"{self.sync!r} is closed: nothing to wait for")
        return got

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<fastshm.aio {self.sync!r}>"

    async def until(self, check: Callable[[], Any], timeout: Optional[float],
                    expired: Callable[[], BaseException], *, room: bool = False,
                    peek: Optional[Callable[[], bool]] = None) -> Any:
        """``check()`` until it returns something other than NOT_YET, and
        that; ``expired()`` raised after ``timeout`` seconds (None: none).
        Only ``check`` takes anything, on this task: a cancelled wait has
        taken nothing.  The first look costs no thread hop."""
        got = check()
        if got is not NOT_YET:
            return got
        mapping = self._mapping
        if mapping is None:
            return self._after_close(check)
        loop = running_loop()
        start = loop.time()
        deadline = None if timeout is None else start + max(timeout, 0.0)
        if self._look and (deadline is None or deadline > start):
            # The last wait of this object was quick: look again each time
            # the loop comes round (its other tasks run between the looks),
            # for twice as long as it took, before the cost of a sleep and a
            # wake-up.  A peer that answers within that is caught here.
            end = start + self._look
            while True:
                await asyncio.sleep(0)
                got = check()
                if got is not NOT_YET:
                    self._look = look_for(loop.time() - start)
                    return got
                if loop.time() >= end or self._mapping is None:
                    break
            if self._mapping is None:  # closed meanwhile: its mapping is gone
                return self._after_close(check)
        w = _watched.watch(self.sync, mapping, room=room, peek=peek,
                           is_counted=self._counted)
        self._watches.add(w)
        try:
            w.arm()
            while True:
                # After arming: a change from now on alters the word.
                got = check()
                if got is not NOT_YET:
                    # Quick enough to be caught by looking again next time?
                    self._look = look_for(loop.time() - start)
                    return got
                if self._mapping is None:
                    return self._after_close(check)
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    self._look = 0.0
                    raise expired()
                await sleep_on(loop, [w], left)
                w.arm()
        finally:
            w.disarm()
            self._watches.discard(w)
