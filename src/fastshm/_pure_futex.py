"""The python backend's futex calls (Linux): wakes, so that native waiters
see python stores at once, and the waits of queues and channels; and
``_uncount``, which counts a sleeper out again whatever a signal handler
raises meanwhile."""

from __future__ import annotations

import errno
import mmap
import platform
import sys
from typing import Any, Callable, List, Optional

from ._pure_lock import _NO_CALL, _from_c

# ---- the futex: wakes, so native waiters see python stores at once, and
# the queue's waits ----
#
# Through each interpreter's own foreign-function interface: ctypes on
# CPython (in the standard library), cffi's ABI mode on PyPy (built into it).
# PyPy's ctypes is written in Python and takes 0.1-0.3 ms of CPU a call until
# its JIT has warmed up, which a waiter's one call per slice never does; its
# cffi takes a few microseconds.  syscall() is variadic; both declare the
# futex call's seven arguments with their C types (so an address is never
# truncated), which on x86-64 and AArch64 Linux passes them where glibc's
# syscall(), an assembly stub, takes them.

_FUTEX_WAIT, _FUTEX_WAKE = 0, 1  # not the _PRIVATE ones: the word is shared
_SYS_futex = {"x86_64": 202, "aarch64": 98}.get(platform.machine(), 0)
_FUTEX_SIG = "long syscall(long, void *, int, unsigned int, void *, void *, int);"

_futex_ffi: Any = None
_TIMESPEC: Any = None  # cffi's type of the timeout, on PyPy
_ct: Any = None  # ctypes, on CPython
if sys.platform.startswith("linux") and _SYS_futex:
    try:
        if sys.implementation.name == "pypy":
            import cffi

            _futex_ffi = cffi.FFI()
            _futex_ffi.cdef(_FUTEX_SIG)
            _futex_lib = _futex_ffi.dlopen(None)
            # The timespec's type, parsed here once: cffi parses a type
            # named by a string in pure Python (pycparser) at its first use,
            # and a KeyboardInterrupt landing inside that parse leaves the
            # parser broken for every later parse ("invalid #line
            # directive"), so a wait must never be the first to name it.
            _TIMESPEC = _futex_ffi.typeof("long[2]")
        else:
            import ctypes

            _syscall = ctypes.CDLL(None, use_errno=True).syscall
            _syscall.restype = ctypes.c_long
            _syscall.argtypes = (ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)

            class _Timespec(ctypes.Structure):
                _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

            _ct = ctypes
    except (ImportError, OSError, AttributeError):
        _futex_ffi = _ct = None

# What a FUTEX_WAIT may end with besides a wake: the word had changed
# already, the timeout, a signal.  Anything else (a seccomp filter's ENOSYS
# or EPERM, say) turns the queue's waits back to polling for good, rather
# than into a busy loop of failing calls.
_FUTEX_WAIT_OK = frozenset({0, errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR})
_HAS_FUTEX = _futex_ffi is not None or _ct is not None


def _futex_anchor(mm: mmap.mmap) -> Any:
    """What the futex calls address the mapping by; it holds the mapping's
    buffer exported (so it cannot be unmapped under a sleeper).  None
    without a futex."""
    if _futex_ffi is not None:
        return _futex_ffi.from_buffer(mm)
    if _ct is not None:
        first = _ct.c_char.from_buffer(mm)
        return _ct.addressof(first), first
    return None


def _futex_wake(anchor: Any, offset: int) -> None:
    if anchor is None:
        return
    if _futex_ffi is not None:
        _futex_lib.syscall(_SYS_futex, anchor + offset, _FUTEX_WAKE, 0x7FFFFFFF,
                           _futex_ffi.NULL, _futex_ffi.NULL, 0)
    else:
        _syscall(_SYS_futex, anchor[0] + offset, _FUTEX_WAKE, 0x7FFFFFFF, None, None, 0)


def _futex_waker(anchor: Any, offset: int) -> Any:
    """``_futex_wake(anchor, offset)`` as a call from C (see _from_c)."""
    if anchor is None:
        return _NO_CALL
    if _futex_ffi is not None:
        return _from_c(_futex_lib.syscall, _SYS_futex, anchor + offset, _FUTEX_WAKE,
                       0x7FFFFFFF, _futex_ffi.NULL, _futex_ffi.NULL, 0)
    return _from_c(_syscall, _SYS_futex, anchor[0] + offset, _FUTEX_WAKE, 0x7FFFFFFF,
                   None, None, 0)


def _futex_wait(anchor: Any, offset: int, expected: int, timeout_s: float) -> int:
    """Sleep while the u32 at ``offset`` holds ``expected``, for at most
    ``timeout_s`` seconds (a relative timeout): 0 when woken, else the errno
    (EAGAIN: it held another value already; ETIMEDOUT; EINTR: a signal).
    Woken or not, the caller re-checks what it waits for.  Both interfaces
    drop the GIL around the call, and a signal ends it with EINTR, after
    which the interpreter runs the Python handler as the call returns."""
    ns = int(timeout_s * 1e9) if timeout_s > 0 else 0
    sec, nsec = divmod(ns, 1_000_000_000)
    if _futex_ffi is not None:
        ffi = _futex_ffi
        r = _futex_lib.syscall(_SYS_futex, anchor + offset, _FUTEX_WAIT,
                               expected & 0xFFFFFFFF, ffi.new(_TIMESPEC, (sec, nsec)),
                               ffi.NULL, 0)
        return 0 if r == 0 else int(ffi.errno)
    r = _syscall(_SYS_futex, anchor[0] + offset, _FUTEX_WAIT, expected & 0xFFFFFFFF,
                 _ct.byref(_Timespec(sec, nsec)), None, 0)
    return 0 if r == 0 else int(_ct.get_errno())


def _uncount(uncount: Callable[[], Any], mark: List[bool]) -> None:
    """Call ``uncount`` (which counts this thread out of an object's
    sleepers and clears ``mark[0]``) until it has.  A signal that ended the
    futex wait has its handler run at the first call after it, often inside
    this one: its exception (KeyboardInterrupt) must not leave the count
    behind, so the uncount is tried again before it goes on (a few times: a
    closed handle fails every time)."""
    raised: Optional[BaseException] = None
    for _ in range(4):
        try:
            uncount()
        except BaseException as e:  # re-raised below, once uncounted
            raised = raised or e
        if not mark[0]:
            break
    if raised is not None:
        raise raised
