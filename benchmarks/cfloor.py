"""The physical floors, measured in C in the same run.

A small C library is compiled at run time with the system C compiler
(``sysconfig.get_config_var("CC")``, else ``cc``) into a temporary directory
and loaded with ctypes, so it works the same under CPython and PyPy.  Each
floor loops in C and times itself with ``clock_gettime``; Python only starts
the loop, so no interpreter cost is in the figure:

- ``attach``: shm_open, fstat, mmap, touch one byte, close, munmap;
- ``create``: shm_open O_CREAT|O_EXCL, ftruncate, mmap, close, munmap,
  shm_unlink;
- ``pingpong``: a round trip between two C processes spinning on an atomic
  counter in a shared mapping, with one memcpy of the payload each way (the
  parent copies its message in, the child copies it to the answer area), so
  the floor of an N-byte round trip is two memcpys plus the two hand-offs
  (``c-spin``: a spinner yields its core only after a millisecond;
  ``c-spin-yield``: every 256 spins, which loses at small sizes but wins on
  a machine with more runnable work than cores, where the peer may not be
  running; the floor is the faster of the two).

Without a compiler (or on a system without these calls) ``available()`` is
False, the floor is reported as "n/a" and the run goes on.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from typing import Any, List, Optional

SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* Nanoseconds per attach + close of an existing segment, -errno on failure. */
double floor_attach(const char *name, long n) {
    double t0 = now_ns();
    for (long i = 0; i < n; i++) {
        int fd = shm_open(name, O_RDWR, 0);
        if (fd < 0) return -errno;
        struct stat st;
        if (fstat(fd, &st) != 0) { close(fd); return -errno; }
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) { close(fd); return -errno; }
        (void)*(volatile unsigned char *)p;
        close(fd);
        munmap(p, (size_t)st.st_size);
    }
    return (now_ns() - t0) / (double)n;
}

/* Nanoseconds per create + unlink of a fresh segment of ``size`` bytes. */
double floor_create(const char *name, long n, long size) {
    double t0 = now_ns();
    for (long i = 0; i < n; i++) {
        int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
        if (fd < 0) return -errno;
        if (ftruncate(fd, size) != 0) { close(fd); shm_unlink(name); return -errno; }
        void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) { close(fd); shm_unlink(name); return -errno; }
        close(fd);
        munmap(p, (size_t)size);
        shm_unlink(name);
    }
    return (now_ns() - t0) / (double)n;
}

/* Nanoseconds of one memcpy of ``size`` bytes between two ready buffers,
   per call over n calls. */
double floor_memcpy(void *dst, const void *src, long size, long n) {
    double t0 = now_ns();
    for (long i = 0; i < n; i++) {
        memcpy(dst, src, (size_t)size);
        __asm__ __volatile__("" ::: "memory");
    }
    return (now_ns() - t0) / (double)n;
}

/* Round trips between this process and a forked child over a shared
   anonymous mapping: two counters on their own cache lines, a ping area and
   a pong area.  The parent copies its message into ping and bumps the ping
   counter; the child, spinning on it, copies ping to pong and bumps the pong
   counter; the parent spins on that.  out_ns[i] is each timed round trip.
   The child gives up after 10 s without a ping. */
#define LINE 128
/* A spinner that has waited yield_after_ns yields its core from then on
   (checked every 256 spins), so on a machine with more runnable work than
   cores the peer it waits for can run. */
int floor_pingpong(const void *msg, long size, long warm, long n, double *out_ns,
                   double yield_after_ns) {
    size_t area = ((size_t)size + 4095) & ~(size_t)4095;
    size_t total = 2 * LINE + 2 * area;
    unsigned char *m = mmap(NULL, total, PROT_READ | PROT_WRITE,
                            MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return -errno;
    uint64_t *ping = (uint64_t *)m, *pong = (uint64_t *)(m + LINE);
    unsigned char *a = m + 2 * LINE, *b = a + area;
    memset(m, 0, total);
    pid_t pid = fork();
    if (pid < 0) { int e = errno; munmap(m, total); return -e; }
    if (pid == 0) {
        uint64_t seen = 0;
        long rounds = warm + n;
        while ((long)seen < rounds) {
            double start = now_ns();
            unsigned spins = 0;
            uint64_t v;
            while ((v = __atomic_load_n(ping, __ATOMIC_ACQUIRE)) == seen) {
                if ((++spins & 255u) == 0) {
                    double waited = now_ns() - start;
                    if (waited > yield_after_ns) sched_yield();
                    if (waited > 10e9) _exit(3);
                }
            }
            seen = v;
            memcpy(b, a, (size_t)size);
            __atomic_store_n(pong, seen, __ATOMIC_RELEASE);
        }
        _exit(0);
    }
    int rc = 0;
    for (long i = 0; i < warm + n; i++) {
        double t0 = now_ns();
        memcpy(a, msg, (size_t)size);
        __atomic_store_n(ping, (uint64_t)(i + 1), __ATOMIC_RELEASE);
        unsigned spins = 0;
        while (__atomic_load_n(pong, __ATOMIC_ACQUIRE) != (uint64_t)(i + 1)) {
            if ((++spins & 255u) == 0) {
                double waited = now_ns() - t0;
                if (waited > yield_after_ns) sched_yield();
                if (waited > 10e9) { rc = -ETIMEDOUT; break; }
            }
        }
        if (rc) break;
        if (i >= warm) out_ns[i - warm] = now_ns() - t0;
    }
    if (rc) kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    munmap(m, total);
    if (!rc && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) rc = -ECHILD;
    return rc;
}
"""

_lib: Any = None
_why: Optional[str] = None
_tmp: Optional[str] = None


def _compiler() -> List[str]:
    cc = sysconfig.get_config_var("CC") or ""
    argv = shlex.split(cc) if cc else []
    if argv and shutil.which(argv[0]):
        return argv
    return ["cc"]


def compiler_line() -> str:
    return " ".join(_compiler() + ["-O2", "-shared", "-fPIC"])


def load() -> Any:
    """The compiled floors library (ctypes), or None with ``why()`` set."""
    global _lib, _why, _tmp
    if _lib is not None or _why is not None:
        return _lib
    if not sys.platform.startswith("linux") and sys.platform != "darwin":
        _why = "the C floors are POSIX-only"
        return None
    _tmp = tempfile.mkdtemp(prefix="fshmbench_cfloor_")
    src = os.path.join(_tmp, "floors.c")
    out = os.path.join(_tmp, "floors.so")
    with open(src, "w") as f:
        f.write(SOURCE)
    cmd = _compiler() + ["-O2", "-shared", "-fPIC", "-o", out, src]
    if sys.platform.startswith("linux"):
        cmd.append("-lrt")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        _why = f"no C compiler ({e})"
        return None
    if proc.returncode != 0:
        _why = f"compiling the floors failed: {proc.stderr.strip()[:300]}"
        return None
    try:
        lib = ctypes.CDLL(out)
    except OSError as e:
        _why = f"loading the floors failed: {e}"
        return None
    lib.floor_attach.restype = ctypes.c_double
    lib.floor_attach.argtypes = [ctypes.c_char_p, ctypes.c_long]
    lib.floor_create.restype = ctypes.c_double
    lib.floor_create.argtypes = [ctypes.c_char_p, ctypes.c_long, ctypes.c_long]
    lib.floor_memcpy.restype = ctypes.c_double
    lib.floor_memcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_long]
    lib.floor_pingpong.restype = ctypes.c_int
    lib.floor_pingpong.argtypes = [
        ctypes.c_char_p,
        ctypes.c_long,
        ctypes.c_long,
        ctypes.c_long,
        ctypes.POINTER(ctypes.c_double),
        ctypes.c_double,
    ]
    _lib = lib
    return lib


def why() -> Optional[str]:
    return _why


def cleanup() -> None:
    """Remove the temporary build directory (the library stays mapped)."""
    global _tmp
    if _tmp is not None:
        shutil.rmtree(_tmp, ignore_errors=True)
        _tmp = None


class Loop:
    """An op the timing harness runs as a C loop: ``batch(number)`` returns
    nanoseconds per iteration, measured in C."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def batch(self, number: int) -> float:
        ns = float(self.fn(*self.args[:1], number, *self.args[1:]))
        if ns < 0:
            raise OSError(int(-ns), os.strerror(int(-ns)))
        return ns

    def __call__(self) -> None:
        self.batch(1)


def attach_loop(name: str) -> Optional[Loop]:
    lib = load()
    return None if lib is None else Loop(lib.floor_attach, ("/" + name).encode())


def create_loop(name: str, size: int) -> Optional[Loop]:
    lib = load()
    return None if lib is None else Loop(lib.floor_create, ("/" + name).encode(), size)


class _MemcpyLoop(Loop):
    def __init__(self, lib: Any, size: int) -> None:
        self.lib, self.size = lib, size
        self.src = ctypes.create_string_buffer(os.urandom(size), size)
        self.dst = ctypes.create_string_buffer(size)

    def batch(self, number: int) -> float:
        return float(self.lib.floor_memcpy(self.dst, self.src, self.size, number))


def memcpy_loop(size: int) -> Optional[Loop]:
    lib = load()
    return None if lib is None else _MemcpyLoop(lib, size)


def pingpong(msg: bytes, warm: int, n: int, yield_after_ns: float = 1e6) -> Optional[List[float]]:
    """Nanoseconds of each of ``n`` C round trips carrying ``msg``; a side
    that has spun ``yield_after_ns`` yields its core between checks."""
    lib = load()
    if lib is None:
        return None
    out = (ctypes.c_double * n)()
    rc = lib.floor_pingpong(msg, len(msg), warm, n, out, yield_after_ns)
    if rc != 0:
        raise OSError(-rc, f"C ping-pong floor failed: {os.strerror(-rc)}")
    return list(out)
