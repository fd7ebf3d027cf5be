"""fastshm.wait_any: block until one of many objects is ready."""

from __future__ import annotations

import time
from typing import Any, Iterable, List, Optional, Tuple

from . import _watched
from ._errors import ETIMEOUT
from ._fastshm import ffi, lib
from ._hub import PER_THREAD, POLL_MAX_S, Watch

# The longest one sleep lasts: then the objects are looked at again (a
# writer killed between its change and its wake-up), and a signal handler
# runs.
_SLICE_S = 0.1


def look(objects: Iterable[Any]) -> Tuple[List[Any], List[Any], List[Any], List[Any]]:
    """(given, synchronous objects, their peeks, the given ones ready now):
    an aio object stands for its synchronous one."""
    given = list(objects)
    objs = [getattr(o, "sync", o) for o in given]
    if not objs:
        raise ValueError("wait_any() needs at least one object to wait on")
    peeks = [_watched.ready_peek(o)[1] for o in objs]
    return given, objs, peeks, [g for g, peek in zip(given, peeks) if peek()]


def wait_any(objects: Iterable[Any], timeout: Optional[float] = None) -> List[Any]:
    """Block until at least one of ``objects`` is ready, and return the
    ready ones, in the order given: a Segment with a message newer than its
    ``last_seq``, a Queue or ObjectQueue with a message queued, a Subscriber
    with a message it has not received.  Nothing is taken: get, load or
    receive from those returned.  TimeoutError after
    ``timeout`` seconds (None: none).  Sleeps on all of them at once, in
    this thread (Linux 5.16 and later, and Windows; elsewhere it polls, a
    change seen within a few milliseconds); Ctrl-C interrupts it.  At most
    128 objects (64 on Windows); ``await fastshm.aio.wait_any()`` takes any
    number."""
    given, objs, peeks, ready = look(objects)
    if ready:
        return ready
    if len(objs) > PER_THREAD + 1:
        raise ValueError(f"wait_any() waits on at most {PER_THREAD + 1} objects at once, "
                         f"not {len(objs)}: await fastshm.aio.wait_any() for more")
    deadline = None if timeout is None else time.monotonic() + timeout
    watches: List[Watch] = []
    counted: List[Watch] = []
    try:
        _watched.watches_of(objs, watches)
        n = len(watches)
        words = ffi.new("uint32_t *[]", [w.word for w in watches])
        values = ffi.new("uint32_t[]", n)
        polled = any(not w.counted for w in watches)
        for w in watches:
            if w.counted:
                lib.fshm_waiters_add(w.waiters, 1)
                counted.append(w)
        while True:
            for i, w in enumerate(watches):
                values[i] = lib.fshm_word_load(w.word)
            # After reading the words: a change from now on alters one.
            ready = [g for g, peek in zip(given, peeks) if peek()]
            if ready:
                return ready
            slice_s = POLL_MAX_S if polled else _SLICE_S
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"none of the {n} objects was ready within {timeout} s")
                slice_s = min(slice_s, left)
            rc = lib.fshm_wait_words(words, values, n, int(slice_s * 1e9))
            if rc not in (0, ETIMEOUT):
                time.sleep(0)  # EINTR: the signal's handler runs here
    finally:
        for w in counted:
            lib.fshm_waiters_add(w.waiters, -1)
        for w in watches:
            w.disarm()  # not armed: lets go of its mapping
