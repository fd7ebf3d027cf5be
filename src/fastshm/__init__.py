"""fastshm: named shared memory between processes.

``Segment`` is a named message slot: ``store`` in one process, ``load`` in any
other, never a torn message, ``wait`` for the next one without polling.
``Queue`` is a named FIFO: every message put is got exactly once, in order,
by any process that opens the name.  ``Publisher`` and ``Subscriber`` share
large messages (frames, tensors) without copying them: every subscriber reads
each message in place.  ``SharedMemory`` is a raw named mapping, a drop-in for
``multiprocessing.shared_memory.SharedMemory``, ``ShareableList`` a fixed-length
list of small values in one, and ``SharedMemoryManager`` unlinks every one it
hands out when it shuts down, as in ``multiprocessing``.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._wait_any import wait_any  # noqa: F401
    from .channel import Publisher, Sample, Subscriber  # noqa: F401
    from .managers import SharedMemoryManager  # noqa: F401
    from .shareable_list import ShareableList  # noqa: F401

from . import _backend
from ._errors import DecodeError, FormatError
from .queue import ObjectQueue, Queue
from .segment import Segment
from .shared_memory import SharedMemory

__version__ = "0.1.0"

__all__ = [
    "Segment", "Queue", "ObjectQueue", "Publisher", "Subscriber", "Sample", "SharedMemory",
    "ShareableList", "SharedMemoryManager", "wait_any",
    "FormatError", "DecodeError",
    "backend", "binding", "features", "__version__",
]


_CHANNEL = ("Publisher", "Subscriber", "Sample")


def __getattr__(attr: str) -> Any:
    # The channel's classes load on first use: on CPython their Sample
    # subclasses the C-API binding's type, which `import fastshm` alone
    # must not load (a backend is chosen on first use too).
    if attr in _CHANNEL:
        from . import channel

        return getattr(channel, attr)
    # multiprocessing.managers is a heavy import, and ShareableList (struct
    # formats, the stdlib's layout) is needed by few: only for those who use
    # them, so that `import fastshm` stays quick for every CLI call.
    if attr == "SharedMemoryManager":
        from .managers import SharedMemoryManager

        return SharedMemoryManager
    if attr == "wait_any":
        from ._wait_any import wait_any

        return wait_any
    if attr == "ShareableList":
        from .shareable_list import ShareableList

        return ShareableList
    # The default backend is chosen on first use, so a bad FASTSHM_BACKEND is
    # a clear error there (and an explicit backend= still works), not at import.
    if attr == "backend":
        #: The default backend of this process: "native" (the C core) or "python".
        return _backend.default().name
    if attr == "binding":
        #: How the default backend reaches the C core: "capi" (a CPython
        #: extension), "cffi", or "python" (no C at all).
        return _backend.default().binding
    if attr == "features":
        #: What the default backend can do ("capi" / "cffi": the binding;
        #: "futex": wait() sleeps on a Linux futex; "atomic_lock": writers take
        #: the lock word with a compare-and-swap; "file_lock": the python
        #: backend's writers exclude each other with flock).
        return _backend.default().features
    raise AttributeError(f"module 'fastshm' has no attribute {attr!r}")
