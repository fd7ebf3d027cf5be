"""SharedMemoryManager: hands out SharedMemory blocks and ShareableLists and
unlinks them all when it shuts down, a drop-in for
``multiprocessing.managers.SharedMemoryManager``."""

from __future__ import annotations

import os
from multiprocessing import managers, resource_tracker
from typing import Any, Iterable, Optional

from ._backend import resolve
from .shareable_list import Item, ShareableList
from .shared_memory import SharedMemory

# The parts of multiprocessing.managers that its stubs leave out.
_mp: Any = managers
# Where multiprocessing tracks shared memory (not on Windows, where a block
# goes with the last process that has it open).
_POSIX = os.name == "posix"


class _Tracker(_mp._SharedMemoryTracker):  # type: ignore[misc]
    """The server's list of the blocks it hands out, each also registered
    with multiprocessing's resource tracker from the server process, so that
    they go when the server ends, however it ends (as the stdlib's do).  A
    block someone already unlinked is passed over at shutdown, so the others
    are still removed (the stdlib's stops at it, leaving the rest behind)."""

    def register_segment(self, segment_name: str) -> None:
        super().register_segment(segment_name)
        if _POSIX:
            resource_tracker.register("/" + segment_name, "shared_memory")

    def destroy_segment(self, segment_name: str) -> None:
        self.segment_names.remove(segment_name)
        try:
            resolve(None).unlink(segment_name)
        except FileNotFoundError:
            pass
        if _POSIX:
            resource_tracker.unregister("/" + segment_name, "shared_memory")


class _Server(managers.SharedMemoryServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        name: str = self.shared_memory_context.shared_memory_context_name  # type: ignore[has-type]
        self.shared_memory_context = _Tracker(name, [])


class SharedMemoryManager(managers.SharedMemoryManager):
    """Hands out :class:`fastshm.SharedMemory` blocks and
    :class:`fastshm.ShareableList` lists, and unlinks every one of them at
    ``shutdown()`` — at the end of a ``with`` block, or when the process
    that started it exits.

    ``SharedMemoryManager(address=None, authkey=None, serializer='pickle',
    ctx=None, *, backend=None)``: the stdlib's arguments, and the
    ``backend`` of the objects it makes.  ``start()``, ``shutdown()``,
    ``connect()``, ``get_server()`` and the ``with`` block are the stdlib's.

    It is the stdlib's manager, made to hand out fastshm's objects, because
    what a user of the stdlib's class relies on needs a server process; an
    in-process list of names could not give it.  The names live in the
    manager's server, not in the process that made the blocks, so:

    * the blocks go at ``shutdown()``, whichever process made them (any
      process may ``connect()`` and make blocks);
    * when the process that started the manager ends without calling
      ``shutdown()`` (an exception, ``sys.exit``), the manager is shut down
      on its way out, and the blocks go with it;
    * when that process is killed outright (SIGKILL), the server, which
      ignores Ctrl-C, lives on with the blocks; when it ends, however it
      ends, ``multiprocessing.resource_tracker`` unlinks them, as it does
      the stdlib manager's.

    The server registers each block with the resource tracker for that last
    case; the objects handed out register nothing, so a process they are
    passed to never unlinks them when it exits: the manager alone decides
    when they go.  Unlike the stdlib's, a block someone unlinked already
    does not stop the others from being unlinked at shutdown.
    """

    _Server = _Server

    def __init__(self, *args: Any, backend: Optional[str] = None, **kwargs: Any) -> None:
        resolve(backend)  # an unknown backend is refused here, not at first use
        self._fastshm_backend = backend
        super().__init__(*args, **kwargs)

    def _track(self, name: str, unlink: Any) -> None:
        # The stdlib's protocol: register the name with the server, or remove
        # the block if the server cannot take it.
        try:
            manager: Any = self
            with manager._Client(manager._address, authkey=manager._authkey) as conn:
                _mp.dispatch(conn, None, "track_segment", (name,))
        except BaseException:
            unlink()
            raise

    def _check_started(self) -> None:
        manager: Any = self
        if manager._state.value != _mp.State.STARTED:
            raise ValueError(
                "this SharedMemoryManager is not running: call start() first, or "
                "use it in a with block"
            )

    # fastshm's classes in place of the stdlib's: drop-ins, not subclasses.
    def SharedMemory(self, size: int) -> SharedMemory:  # type: ignore[override]
        """A new block of ``size`` bytes with a fresh name, unlinked when the
        manager shuts down."""
        self._check_started()
        sms = SharedMemory(None, create=True, size=size, backend=self._fastshm_backend)
        self._track(sms.name, sms.unlink)
        return sms

    def ShareableList(  # type: ignore[override]
        self, sequence: Optional[Iterable[Item]]
    ) -> ShareableList:
        """A new ShareableList holding ``sequence``'s items, with a fresh
        name, unlinked when the manager shuts down."""
        self._check_started()
        sl = ShareableList(sequence, backend=self._fastshm_backend)
        self._track(sl.shm.name, sl.shm.unlink)
        return sl
