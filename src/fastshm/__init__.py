"""fastshm: named shared memory between processes.

``Segment`` is a named message slot: ``store`` in one process, ``load`` in any
other, never a torn message, ``wait`` for the next one without polling.
``SharedMemory`` is a raw named mapping, a drop-in for
``multiprocessing.shared_memory.SharedMemory``.
"""

from ._backend import _default as _default_backend
from ._errors import FormatError
from .segment import Segment
from .shared_memory import SharedMemory

__version__ = "0.1.0"

#: The default backend of this process: "native" (the C core) or "python".
backend: str = _default_backend.name

#: What the default backend can do ("futex": wait() sleeps on a Linux futex;
#: "atomic_lock": writers take the lock word with a compare-and-swap;
#: "file_lock": the python backend's writers exclude each other with flock).
features: "frozenset[str]" = _default_backend.features

__all__ = ["Segment", "SharedMemory", "FormatError", "backend", "features", "__version__"]
