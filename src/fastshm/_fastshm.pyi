# Type stub for the cffi extension built from csrc/ (see _build.py and
# csrc/fastshm.cdef).  cffi modules expose exactly two names.
from typing import Any

ffi: Any
lib: Any
