"""cffi builder for fastshm's C core (``setup.py``'s ``cffi_modules`` target).

The C sources live in ``csrc/`` as plain C; this file only tells cffi which
ones to compile and reads the declarations Python may call from
``csrc/fastshm.cdef``.
"""

import os
import sys

from cffi import FFI

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CSRC = os.path.join(_ROOT, "csrc")


def _rel(*parts: str) -> str:
    # setuptools wants source paths relative to the project root.
    return os.path.relpath(os.path.join(_CSRC, *parts), os.getcwd())


with open(os.path.join(_CSRC, "fastshm.cdef")) as f:
    _CDEF = f.read()

if sys.platform == "win32":
    _SOURCES = ["slot.c", "map_win32.c"]
    _LIBRARIES: list = []
    _ARGS: list = []
else:
    _SOURCES = ["slot.c", "map_posix.c"]
    # glibc before 2.34 keeps shm_open in librt; macOS has no librt.
    _LIBRARIES = ["rt", "pthread"] if sys.platform.startswith("linux") else ["pthread"]
    _ARGS = ["-O2"]

ffibuilder = FFI()
ffibuilder.cdef(_CDEF)
ffibuilder.set_source(
    "fastshm._fastshm",
    '#include "fastshm.h"',
    sources=[_rel(s) for s in _SOURCES],
    include_dirs=[_rel()],
    libraries=_LIBRARIES,
    extra_compile_args=_ARGS,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
