"""fastshm: named shared memory between processes.

``Segment`` is a named message slot: ``store`` in one process, ``load`` in any
other, never a torn message, ``wait`` for the next one without polling.
``Queue`` is a named FIFO: every message put is got exactly once, in order,
by any process that opens the name.  ``SharedMemory`` is a raw named mapping, a drop-in for
``multiprocessing.shared_memory.SharedMemory``.
"""

from typing import Any

from . import _backend
from ._errors import DecodeError, FormatError
from .queue import ObjectQueue, Queue
from .segment import Segment
from .shared_memory import SharedMemory

__version__ = "0.1.0"

__all__ = [
    "Segment", "Queue", "ObjectQueue", "SharedMemory", "FormatError", "DecodeError",
    "backend", "binding", "features", "__version__",
]


def __getattr__(attr: str) -> Any:
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
