"""Build description of fastshm's two bindings of the C core.

``ffibuilder`` is ``setup.py``'s ``cffi_modules`` target: the cffi binding
(``fastshm._fastshm``; PyPy's, and the fallback).  ``ext_modules()`` is the
C-API binding (``fastshm._cext``, from ``src/fastshm/_cext*.c``), built for
CPython only.  Both compile the same plain-C core in ``csrc/``; the
declarations cffi may call are read from ``csrc/fastshm.cdef``.
"""

import os
import platform
import sys
from typing import List

from cffi import FFI
from setuptools import Extension

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CSRC = os.path.join(_ROOT, "csrc")


def _rel(*parts: str) -> str:
    # setuptools wants source paths relative to the project root.
    return os.path.relpath(os.path.join(_CSRC, *parts), os.getcwd())


with open(os.path.join(_CSRC, "fastshm.cdef")) as f:
    _CDEF = f.read()

# The C-API binding: the module, and a file per type, sharing _cext.h (the
# channel's three, and what they share, also _cext_channel.h).
_CEXT_SOURCES = [
    "_cext.c", "_cext_mapping.c", "_cext_segment.c", "_cext_queue.c", "_cext_channel.c",
    "_cext_sample.c", "_cext_publisher.c", "_cext_subscriber.c",
]

# The core: the channel's files by concern (channel_internal.h holds what
# they share; tests/test_sanitizers.py and tests/test_windows_channel.py list
# the same).
_CHANNEL_SOURCES = ["channel.c", "channel_lend.c", "channel_receive.c", "channel_repair.c"]

if sys.platform == "win32":
    _SOURCES = ["slot.c", "queue.c", *_CHANNEL_SOURCES, "wait_words.c", "futex_ring.c",
                "map_win32.c"]
    _LIBRARIES: list = []
    _ARGS: list = []
else:
    _SOURCES = ["slot.c", "queue.c", *_CHANNEL_SOURCES, "wait_words.c", "futex_ring.c",
                "map_posix.c"]
    # glibc before 2.34 keeps shm_open in librt; macOS has no librt.
    _LIBRARIES = ["rt", "pthread"] if sys.platform.startswith("linux") else ["pthread"]
    _ARGS = ["-O2"]

# The core's headers: a change to one alone rebuilds both bindings.
_HEADERS = ["fastshm.h", "internal.h", "atomics.h", "poll_wait.h", "channel_internal.h"]

ffibuilder = FFI()
ffibuilder.cdef(_CDEF)
ffibuilder.set_source(
    "fastshm._fastshm",
    '#include "fastshm.h"',
    sources=[_rel(s) for s in _SOURCES],
    depends=[_rel(h) for h in _HEADERS],
    include_dirs=[_rel()],
    libraries=_LIBRARIES,
    extra_compile_args=_ARGS,
)



def ext_modules() -> List[Extension]:
    """The C-API binding, on CPython (PyPy runs cffi code natively, and its
    emulation of the C API is slow)."""
    if platform.python_implementation() != "CPython":
        return []
    here = os.path.relpath(os.path.dirname(os.path.abspath(__file__)), os.getcwd())
    return [
        Extension(
            "fastshm._cext",
            sources=[os.path.join(here, s) for s in _CEXT_SOURCES] + [_rel(s) for s in _SOURCES],
            depends=[os.path.join(here, "_cext.h"), os.path.join(here, "_cext_channel.h")]
            + [_rel(h) for h in _HEADERS],
            include_dirs=[_rel()],
            libraries=_LIBRARIES,
            extra_compile_args=_ARGS,
        )
    ]


if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
