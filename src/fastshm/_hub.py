"""The sleepers of fastshm.aio: an event loop's own ring of futex waits
where the system has one (``_loop_ring``, Linux 6.7 and later), else one
helper thread that waits on the wake-up words of many objects at once
(csrc/wait_words.c) and tells each waiter's event loop when its word
changed.

Every object's stores, puts, takes and publishes add one to a wake-up word
in its header and wake the sleepers counted in the word beside it.  A
``Watch`` is one waiter's claim on such a word: armed, it counts itself
among the object's sleepers, so that writers wake it, and remembers the
word's value; the waiter then looks whether what it waits for is there
(``check``, on its own thread or loop), and if not, hands the watch to the
helper with a callback.  The helper calls it when the word differs from the
remembered value: something changed, look again.  So the helper never takes
a message, and a waiter that is cancelled loses nothing.

A helper thread sleeps on at most ``PER_THREAD`` words (one futex_waitv
takes 128 on Linux, one WaitForMultipleObjects 64 handles on Windows, one
of them the helper's own), however many tasks wait on each: a process
waiting on more objects than that gets one more thread for each
``PER_THREAD`` of them.  Words the helper cannot be woken on (objects of the
python backend's queue and channel, whose sleeper counts change under their
file lock; read-only mappings; systems with neither call) are polled, at
most ``POLL_MAX_S`` apart.  On Windows, where stores of the python backend
release no semaphore, a helper also looks at its words every
``POLL_MAX_S``, as the blocking waits there do.  Every ``PEEK_S`` an idle helper also asks each
watch's ``peek`` whether what it waits for is there all the same (a writer
killed between its change and its wake-up), as the blocking waits look again
every 100 ms.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Union

from ._errors import ETIMEOUT, raise_for

try:
    from ._fastshm import ffi, lib
except ImportError as e:  # pragma: no cover - an install without its C core
    raise ImportError(
        "fastshm.aio and fastshm.wait_any sleep in fastshm's C core, which this "
        f"install lacks ({e}); reinstall fastshm with a C compiler at hand") from e

from . import _loop_ring  # noqa: E402 (after the C core's check)
from ._loop_ring import Ring  # noqa: E402

#: Words one helper thread sleeps on (its own wake-up word is the 128th).
PER_THREAD = lib.FSHM_WAIT_WORDS_MAX - 1
#: The longest a polled word goes unlooked at (the first looks come sooner).
POLL_MAX_S = 0.05
_POLL_MIN_S = 0.001
#: How often an idle helper asks the watches' peek.
PEEK_S = 1.0

# Windows: the longest a helper sleeps with watches, so that a store of the
# python backend (which releases no semaphore) is seen as soon as a blocking
# wait sees it.
_SLICE_S: Optional[float] = POLL_MAX_S if sys.platform == "win32" else None

# Where the kernel cannot sleep on many words, every word is polled by the
# C core itself, and counting in sleeper counts would only cost writers a
# wake-up call for nobody.
POLLS = bool(lib.fshm_wait_words_polls())


class Mapping:
    """The helper's own mapping of a fastshm object, by name: its words stay
    readable whatever the object's owner does with its handle (closing it
    from another thread included).

    Unmapped when the last of its holders lets go (``release``), never by
    the garbage collector: a task collected with its wait unfinished counts
    itself out of the sleepers in its ``finally``, whichever of the cycle's
    objects the collector finalizes first.  The maker holds the first
    reference, each watch one more."""

    __slots__ = ("base", "size", "readonly", "name", "refs", "_lock")

    def __init__(self, name: str, any_owner: bool = False) -> None:
        m = ffi.new("fshm_map *")
        how = lib.FSHM_ATTACH | (lib.FSHM_ANY_OWNER if any_owner else 0)
        rc = lib.fshm_map_open(m, name.encode("utf-8"), how, 0, 0)
        if rc:
            raise_for(rc, name)
        self.name = name
        self.size = int(m.size)
        self.readonly = bool(m.readonly)
        self.base = ffi.cast("unsigned char *", m.base)
        self.refs = 1
        self._lock = threading.Lock()

    def word(self, offset: int) -> Any:
        return ffi.cast("uint32_t *", self.base + offset)

    def acquire(self) -> None:
        with self._lock:
            if self.refs <= 0:
                raise ValueError(f"the wake-up mapping of {self.name!r} is closed")
            self.refs += 1

    def release(self) -> None:
        with self._lock:
            self.refs -= 1
            last = self.refs == 0
        if last:
            lib.fshm_unmap(self.base, self.size)


class Watch:
    """One waiter's claim on a wake-up word (see the module's docstring).
    ``counted``: whether it counts itself among the object's sleepers
    (False: the word is polled).  ``peek()``: whether what it waits for
    looks there, for the helper's occasional look; ``tick``: seconds after
    which the helper calls back even if nothing changed (a publisher waiting
    for room looks for dead subscribers this often).  It holds its mapping
    until :meth:`disarm`, which every maker of one must call."""

    __slots__ = ("mapping", "word", "key", "waiters", "value", "counted", "peek", "tick",
                 "due", "shard", "armed", "held")

    def __init__(self, mapping: Mapping, word: int, waiters: int, *, counted: bool = True,
                 peek: Optional[Callable[[], bool]] = None,
                 tick: Optional[float] = None) -> None:
        mapping.acquire()
        self.held = True
        self.mapping = mapping
        self.word = mapping.word(word)
        self.key = int(ffi.cast("uintptr_t", self.word))
        self.waiters = mapping.word(waiters)
        self.counted = counted and not mapping.readonly and not POLLS
        self.peek = peek
        self.tick = tick
        self.due = 0.0
        self.value = 0
        # Where it sleeps: the running loop's ring, or a helper thread.
        self.shard: Optional[Union[_Shard, Ring]] = None
        self.armed = False

    def arm(self) -> None:
        """Count in (once), then read the word: call before looking."""
        if not self.armed:
            self.shard = _home_for(self)
            if self.counted:
                lib.fshm_waiters_add(self.waiters, 1)
            self.armed = True
        elif self.shard is not None and not self.shard.working:
            # Its loop's ring gave up: a helper thread from now on.
            self.shard.leave(self)
            self.shard = _shard_for(self)
        self.value = lib.fshm_word_load(self.word)

    @property
    def local(self) -> bool:
        """Whether the callback given to :meth:`sleep` runs on the waiting
        loop's own thread (its ring) rather than a helper's.  Armed first."""
        assert self.shard is not None
        return self.shard.local

    def sleep(self, callback: Callable[[], None]) -> None:
        """Have the ring or helper call ``callback`` (see :attr:`local`)
        once the word differs from the value read by :meth:`arm`.  Armed
        first."""
        assert self.shard is not None
        self.shard.add(self, callback)

    def wake(self) -> None:
        """Call the callback now if it is asleep (closing the object)."""
        shard = self.shard
        if shard is not None:
            shard.fire(self)

    def disarm(self) -> None:
        """Stop sleeping, count out and let go of the mapping; harmless
        twice."""
        if self.armed:
            self.armed = False
            shard, self.shard = self.shard, None
            if shard is not None:
                shard.leave(self)  # the helper looks at it no more
            if self.counted:
                lib.fshm_waiters_add(self.waiters, -1)
        if self.held:
            self.held = False
            self.mapping.release()


class _Shard:
    """One helper thread and the watches it sleeps on."""

    #: Callbacks given to ``add`` run on the helper's thread.
    local = False
    working = True

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # How many armed watches share each word (by address) here.
        self.members: Dict[int, int] = {}
        self.asleep: Dict[Watch, Callable[[], None]] = {}
        self.ctl = ffi.new("uint32_t[1]")
        self.words = ffi.new("uint32_t *[]", PER_THREAD + 1)
        self.values = ffi.new("uint32_t[]", PER_THREAD + 1)
        self.thread = threading.Thread(target=self._run, name="fastshm-waiter", daemon=True)
        self.thread.start()

    def add(self, w: Watch, callback: Callable[[], None]) -> None:
        with self.lock:
            self.asleep[w] = callback
            if w.tick is not None:
                w.due = time.monotonic() + w.tick
        lib.fshm_word_bump(self.ctl)

    def fire(self, w: Watch) -> None:
        with self.lock:
            callback = self.asleep.pop(w, None)
        if callback is not None:
            callback()

    def leave(self, w: Watch) -> None:
        with self.lock:
            was_asleep = self.asleep.pop(w, None) is not None
            left = self.members[w.key] - 1
            if left:
                self.members[w.key] = left
            else:
                del self.members[w.key]
        if was_asleep:
            # Looked at again without it.  (The helper reads a word only
            # under the lock, from a watch still asleep, so its mapping may
            # go the next moment either way.)
            lib.fshm_word_bump(self.ctl)

    def _run(self) -> None:
        poll = _POLL_MIN_S
        peeked = time.monotonic()
        words, values = self.words, self.values
        while True:
            ready: List[Callable[[], None]] = []
            with self.lock:
                now = time.monotonic()
                # Plain reads here (a cffi call would let the GIL go each
                # time): a stale one only ends the sleep below at once, as
                # the kernel compares each word again before sleeping.
                words[0] = self.ctl
                values[0] = self.ctl[0]
                n = 1
                seen = set()
                timeout: Optional[float] = None
                polled = False
                for w, callback in list(self.asleep.items()):
                    value = w.word[0]
                    if value != w.value or (w.tick is not None and now >= w.due):
                        del self.asleep[w]
                        ready.append(callback)
                        continue
                    if w.tick is not None:
                        left = w.due - now
                        timeout = left if timeout is None else min(timeout, left)
                    polled = polled or not w.counted
                    if w.key not in seen:  # the same value: each was just compared
                        seen.add(w.key)
                        words[n] = w.word
                        values[n] = value
                        n += 1
                asleep = bool(self.asleep)
            if ready:
                # Then straight to sleep, on what is left: the woken loops
                # find the GIL free.
                poll = _POLL_MIN_S
                for callback in ready:
                    callback()
            # Nothing of a waiter stays referenced from here while asleep:
            # a task whose loop is gone must be free to be collected.
            ready = []
            w = callback = None  # type: ignore[assignment]
            if polled:
                timeout = poll if timeout is None else min(timeout, poll)
                poll = min(poll * 2, POLL_MAX_S)
            if asleep:
                peek_in = max(peeked + PEEK_S - time.monotonic(), 0.0)
                timeout = peek_in if timeout is None else min(timeout, peek_in)
                if _SLICE_S is not None:
                    timeout = min(timeout, _SLICE_S)
            # The GIL is released for the sleep (cffi does so for every call).
            rc = lib.fshm_wait_words(words, values, n,
                                     -1 if timeout is None else int(timeout * 1e9))
            if rc == ETIMEOUT and asleep and time.monotonic() >= peeked + PEEK_S:
                peeked = time.monotonic()
                _loop_ring.peek_all(self)



_lock = threading.Lock()
_shards: List[_Shard] = []


def _home_for(w: Watch) -> Union[_Shard, Ring]:
    """The running loop's own ring where the system has one and the word is
    woken (not polled, no periodic call back); else a helper thread."""
    if w.counted and w.tick is None:
        ring = _loop_ring.ring_here(PEEK_S)
        if ring is not None:
            return ring
    return _shard_for(w)


def _shard_for(w: Watch) -> _Shard:
    """The helper that sleeps on w's word already, else one with room for
    another word: a helper's limit is on words, however many tasks share
    one."""
    with _lock:
        home = None
        for shard in _shards:
            with shard.lock:
                if w.key in shard.members:
                    shard.members[w.key] += 1
                    return shard
                if home is None and len(shard.members) < PER_THREAD:
                    home = shard
        if home is None:
            home = _Shard()
            _shards.append(home)
        with home.lock:
            home.members[w.key] = home.members.get(w.key, 0) + 1
        return home


def threads() -> int:
    """How many helper threads this process has started."""
    return len(_shards)


def _forget() -> None:
    # A forked child has none of its parent's threads: it starts its own.
    global _lock
    _lock = threading.Lock()
    _shards.clear()
    _loop_ring.forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget)
