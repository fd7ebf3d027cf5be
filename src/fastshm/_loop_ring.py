"""The sleeper of fastshm.aio on Linux 6.7 and later: an event loop's own
io_uring of futex waits (csrc/futex_ring.c), watched by the loop like a
socket.

A writer's wake-up of an object's word completes the ring's wait on it and
makes the ring's descriptor readable: the loop wakes in its own epoll, reads
the completions (no system call) and sets the waiting tasks' futures, on its
own thread.  So a wake-up costs what a socket's does, with no helper thread
between the writer and the loop, and an idle loop costs nothing.

One wait is queued per word, however many tasks of the loop sleep on it.
Words a ring cannot wait on (polled words, a publisher's room with its
periodic look) go to the helper threads of ``_hub``; where the system has no
such ring, every word does.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Set, Tuple

from ._fastshm import ffi, lib

if TYPE_CHECKING:
    from ._hub import Mapping, Watch

_REAP = 64
# A ring that failed this many submissions in a row gives way to the
# helper threads for good (the kernel refusing what it accepted before).
_FAILURES_MAX = 16

# False once the system said it has no such ring: every loop's words go to
# the helper threads from then on.
usable = True


class Ring:
    """The futex waits of one event loop's watches (see the module's
    docstring).  Used on the loop's thread; ``leave`` and ``fire`` may come
    from any thread."""

    #: Callbacks given to ``add`` run on the loop's thread.
    local = True
    #: False once it gave up (the kernel refused its waits, or it closed):
    #: its watches move to the helper threads when they are armed again.
    working = True

    def __init__(self, loop: asyncio.AbstractEventLoop, peek_s: float) -> None:
        self.lock = threading.Lock()
        self.ring: Any = None
        # Weak: the loop's entry in _rings must not keep the loop alive.
        self._loop = weakref.ref(loop)
        out = ffi.new("fshm_futex_ring **")
        rc = lib.fshm_futex_ring_open(out)
        if rc:
            raise OSError(rc, "no futex waits through io_uring here")
        self.ring = out[0]
        self.fd = lib.fshm_futex_ring_fd(self.ring)
        self.thread = threading.get_ident()
        self.peek_s = peek_s
        self.asleep: Dict["Watch", Callable[[], None]] = {}
        # Per word (by address): the watches asleep on it, and the wait
        # queued for it: (tag, the mapping it was queued in, the value).
        self.sleepers: Dict[int, Set["Watch"]] = {}
        self.queued: Dict[int, Tuple[int, "Mapping", int]] = {}
        self.tags: Dict[int, int] = {}
        self._next_tag = itertools.count(1)
        self._failures = 0
        self._peeking: Optional[asyncio.TimerHandle] = None
        self._tags = ffi.new("uint64_t[]", _REAP)
        self._results = ffi.new("int32_t[]", _REAP)
        try:
            loop.add_reader(self.fd, self._ready)
        except BaseException:
            self.close()
            raise

    def close(self, _close: Callable[[Any], None] = lib.fshm_futex_ring_close) -> None:
        """Close the ring (its queued waits end with it); harmless twice.
        Run when it is collected, with its closed loop: a task collected in
        the same cycle may still leave it afterwards, which then does
        nothing.  (``_close`` is bound early: at exit, module globals may be
        gone before the last ring.)"""
        with self.lock:
            ring, self.ring = self.ring, None
            self.working = False
        if ring is not None:
            _close(ring)

    __del__ = close

    # -- on the loop's thread ------------------------------------------------

    def add(self, w: "Watch", callback: Callable[[], None]) -> None:
        with self.lock:
            self.asleep[w] = callback
            self.sleepers.setdefault(w.key, set()).add(w)
            q = self.queued.get(w.key)
            # A wait queued for this word in the same mapping, with the
            # value this watch read, wakes it too.
            if q is None or q[1] is not w.mapping or q[2] != w.value:
                queued = self._queue(w)
            else:
                queued = True
        if not queued:
            self.fire(w)  # it looks again, and sleeps again
        if self._peeking is None:
            self._schedule_peek()

    def _queue(self, w: "Watch") -> bool:
        """Queue the wait for w's word (lock held); False if it could not
        be (the waiter looks again)."""
        if self.ring is None:
            return False
        tag = next(self._next_tag)
        rc = lib.fshm_futex_ring_wait(self.ring, w.word, w.value, tag)
        if rc:
            self._failures += 1
            if self._failures >= _FAILURES_MAX:
                global usable
                usable = False  # new watches go to the helpers at once
                self.working = False
            return False
        self._failures = 0
        old = self.queued.pop(w.key, None)
        if old is not None:
            self.tags.pop(old[0], None)  # its completion means nothing now
        self.queued[w.key] = (tag, w.mapping, w.value)
        self.tags[tag] = w.key
        return True

    def _ready(self) -> None:
        """The descriptor is readable: wake the watches whose word changed,
        queue again for those whose did not."""
        fired: List[Callable[[], None]] = []
        tags, results = self._tags, self._results
        while self.ring is not None:
            n = lib.fshm_futex_ring_reap(self.ring, tags, results, _REAP)
            if not n:
                break
            with self.lock:
                for i in range(n):
                    key = self.tags.pop(int(tags[i]), None)
                    if key is None:
                        continue  # a cancel's, or a wait replaced since
                    del self.queued[key]
                    self._woken(key, int(results[i]), fired)
        for callback in fired:
            callback()

    def _woken(self, key: int, result: int, fired: List[Callable[[], None]]) -> None:
        # 0: woken; -EAGAIN: it had changed already.  Anything else is
        # treated as a change too: the waiters look again.
        sleepers = self.sleepers.get(key)
        if not sleepers:
            return
        still = None
        for w in list(sleepers):
            if result in (0, -11) and w.word[0] == w.value:
                still = w  # woken for a change undone, or for nothing
                continue
            sleepers.discard(w)
            fired.append(self.asleep.pop(w))
        if not sleepers:
            del self.sleepers[key]
        elif still is not None and not self._queue(still):
            for w in list(sleepers):
                fired.append(self.asleep.pop(w))
            del self.sleepers[key]

    def _schedule_peek(self) -> None:
        loop = self._loop()
        if loop is not None and not loop.is_closed():
            self._peeking = loop.call_later(self.peek_s, self._peek)

    def _peek(self) -> None:
        self._peeking = None
        peek_all(self)
        if self.asleep:
            self._schedule_peek()

    # -- from any thread -----------------------------------------------------

    def fire(self, w: "Watch") -> None:
        """Call w's callback now if it is asleep (on the loop's thread)."""
        with self.lock:
            callback = self._forget(w)
        loop = self._loop()
        if callback is None or loop is None or loop.is_closed():
            return  # a closed loop's waiters wait no more
        if threading.get_ident() == self.thread:
            callback()
            return
        try:
            loop.call_soon_threadsafe(callback)
        except RuntimeError:
            pass  # closed meanwhile

    def leave(self, w: "Watch") -> None:
        """w sleeps here no more (disarmed); its word's wait is cancelled
        if nobody else of this loop sleeps on it."""
        with self.lock:
            if self._forget(w) is None or w.key in self.sleepers:
                return
            q = self.queued.get(w.key)
            if q is None or self.ring is None or threading.get_ident() != self.thread:
                return  # it ends at the word's next change, or with the ring
            del self.queued[w.key]
            del self.tags[q[0]]
            lib.fshm_futex_ring_cancel(self.ring, q[0])

    def _forget(self, w: "Watch") -> Optional[Callable[[], None]]:
        callback = self.asleep.pop(w, None)
        if callback is not None:
            sleepers = self.sleepers[w.key]
            sleepers.discard(w)
            if not sleepers:
                del self.sleepers[w.key]
        return callback


def peek_all(sleeper: Any) -> None:
    """Ask each watch asleep on ``sleeper`` (a Ring, or a helper thread's
    shard: ``lock``, ``asleep``, ``fire``) whether what it waits for is
    there all the same (a writer killed between its change and its
    wake-up), and wake those for which it is."""
    with sleeper.lock:
        looks = [w for w in sleeper.asleep if w.peek is not None]
    for w in looks:
        try:
            there = w.peek()
        except Exception:
            there = True  # closed, say: the waiter finds out when it looks
        if there:
            sleeper.fire(w)


# Each loop's ring, weakly: the loop itself holds it (by its reader), so
# closing the loop lets the ring, and the tasks asleep on it, be collected,
# as a socket's waiters are.
_rings: "weakref.WeakKeyDictionary[Any, weakref.ref[Ring]]" = weakref.WeakKeyDictionary()
_rings_lock = threading.Lock()
# The last loop asked for and its ring, weakly (each is collected with the
# other).
_last: Tuple[Callable[[], Any], Callable[[], Optional[Ring]]] = (lambda: None, lambda: None)


def ring_supported() -> bool:
    """Whether this system has such rings (one is opened to see)."""
    out = ffi.new("fshm_futex_ring **")
    if lib.fshm_futex_ring_open(out):
        return False
    lib.fshm_futex_ring_close(out[0])
    return True


def ring_here(peek_s: float) -> Optional[Ring]:
    """The running loop's ring, made at its first use; None where there is
    no running loop or no such ring (the helper threads serve then)."""
    global usable
    if not usable:
        return None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    last_loop, last_ring = _last
    if last_loop() is loop:  # the loop of the last call: no dictionary
        ring = last_ring()
        if ring is not None:
            return ring
    ref = _rings.get(loop)
    ring = None if ref is None else ref()
    if ring is not None:
        return ring
    with _rings_lock:
        ref = _rings.get(loop)
        ring = None if ref is None else ref()
        if ring is None:
            try:
                ring = Ring(loop, peek_s)
            except OSError:
                usable = False  # the system has none: not tried again
                return None
            except (NotImplementedError, TypeError):
                return None  # a loop without add_reader, or no weakref to it
            _rings[loop] = weakref.ref(ring)
    _remember(loop, ring)
    return ring


def _remember(loop: Any, ring: Ring) -> None:
    global _last
    _last = (weakref.ref(loop), weakref.ref(ring))


def forget() -> None:
    """A forked child: its loops are its own (the parent's rings stay the
    parent's)."""
    global _rings, _rings_lock, _last
    _rings = weakref.WeakKeyDictionary()
    _last = (lambda: None, lambda: None)
    _rings_lock = threading.Lock()
