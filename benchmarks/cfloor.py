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
- ``frames``: a stream of large messages between two C processes, each
  copied into a slot of a shared mapping by the producer and out of it by
  the consumer, the slots taken in turn and handed over by two counters
  (``c-turns``: two slots, one written while the other is read;
  ``c-ring``: as many as the contenders' rings, either side running ahead
  through the other's stalls; the floor is the faster of the two).

- ``queue``: messages through fastshm's own queue between C processes,
  producers putting as fast as they can and consumers taking one message a
  call (``fshm_queue_get``) or many (``fshm_queue_get_packed``): the C core
  with no interpreter, compiled with it from ``csrc/`` (``queue.c``,
  ``slot.c``, ``map_posix.c``) into a second library, so the queue cases
  show what Python adds (n/a where ``csrc/`` is not beside the benchmarks).

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
from typing import Any, Dict, List, Optional

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

static double thread_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Frames from this process to a forked child through `slots` slots of a
   shared anonymous mapping, taken in turn: the producer copies its frame (a
   private buffer, its number in its first and last 8 bytes) into the next
   slot and bumps `head`; the consumer, spinning on `head`, copies the slot
   into its own buffer, checks the two numbers and bumps `tail`; the
   producer waits while `slots` frames are not yet copied out.  Two slots
   take turns (one written while the other is read: the fewest bytes in
   the caches); more let either side run ahead through the other's
   stalls.  Spinners yield as in floor_pingpong.  This is the copy-in,
   copy-out stream with nothing between the copies but two counters: the
   floor of C1.  out[0]: frames sent by the deadline; out[1]: seconds;
   out[2]: the producer's CPU seconds; out[3]: the consumer's; out[4]:
   frames received with wrong numbers. */
typedef struct {
    uint64_t head;
    char pad0[LINE - 8];
    uint64_t tail;
    char pad1[LINE - 8];
    int done;
    double consumer_cpu_s;
    uint64_t bad;
} ff_ctl;

int floor_frames(long size, long slots, double seconds, double yield_after_ns, double *out) {
    if (size < 16 || slots < 2 || slots > 64) return -EINVAL;
    size_t area = ((size_t)size + 4095) & ~(size_t)4095;
    size_t total = 4096 + (size_t)slots * area;
    unsigned char *m = mmap(NULL, total, PROT_READ | PROT_WRITE,
                            MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return -errno;
    memset(m, 0, total);
    ff_ctl *c = (ff_ctl *)m;
    unsigned char *slot0 = m + 4096;
    pid_t pid = fork();
    if (pid < 0) { int e = errno; munmap(m, total); return -e; }
    if (pid == 0) {
        unsigned char *dst = malloc((size_t)size);
        if (dst == NULL) _exit(4);
        memset(dst, 0, (size_t)size);
        double cpu0 = thread_cpu_s();
        uint64_t got = 0, bad = 0;
        for (;;) {
            double start = now_ns();
            unsigned spins = 0;
            while (__atomic_load_n(&c->head, __ATOMIC_ACQUIRE) == got) {
                if (__atomic_load_n(&c->done, __ATOMIC_ACQUIRE)
                    && __atomic_load_n(&c->head, __ATOMIC_ACQUIRE) == got)
                    goto finished;
                if ((++spins & 255u) == 0) {
                    double waited = now_ns() - start;
                    if (waited > yield_after_ns) sched_yield();
                    if (waited > 10e9) _exit(3);
                }
            }
            memcpy(dst, slot0 + (got % (uint64_t)slots) * area, (size_t)size);
            uint64_t first, last;
            memcpy(&first, dst, 8);
            memcpy(&last, dst + size - 8, 8);
            got++;
            if (first != got || last != got) bad++;
            __atomic_store_n(&c->tail, got, __ATOMIC_RELEASE);
        }
    finished:
        c->consumer_cpu_s = thread_cpu_s() - cpu0;
        c->bad = bad;
        _exit(0);
    }
    unsigned char *src = malloc((size_t)size);
    int rc = 0;
    if (src == NULL) rc = -ENOMEM;
    else memset(src, 1, (size_t)size);
    double t0 = now_ns(), deadline = t0 + seconds * 1e9, cpu0 = thread_cpu_s();
    uint64_t sent = 0;
    while (rc == 0 && now_ns() < deadline) {
        double start = now_ns();
        unsigned spins = 0;
        while (sent - __atomic_load_n(&c->tail, __ATOMIC_ACQUIRE) >= (uint64_t)slots) {
            if ((++spins & 255u) == 0) {
                double waited = now_ns() - start;
                if (waited > yield_after_ns) sched_yield();
                if (waited > 10e9) { rc = -ETIMEDOUT; break; }
            }
        }
        if (rc) break;
        uint64_t seq = sent + 1;
        memcpy(src, &seq, 8);
        memcpy(src + size - 8, &seq, 8);
        memcpy(slot0 + (sent % (uint64_t)slots) * area, src, (size_t)size);
        __atomic_store_n(&c->head, seq, __ATOMIC_RELEASE);
        sent = seq;
    }
    double elapsed = (now_ns() - t0) / 1e9, cpu = thread_cpu_s() - cpu0;
    __atomic_store_n(&c->done, 1, __ATOMIC_RELEASE);
    if (rc) kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    if (!rc && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) rc = -ECHILD;
    if (!rc) {
        out[0] = (double)sent;
        out[1] = elapsed;
        out[2] = cpu;
        out[3] = c->consumer_cpu_s;
        out[4] = (double)c->bad;
    }
    free(src);
    munmap(m, total);
    return rc;
}
"""

# Messages through a fastshm queue between C processes; compiled with the
# C core's own sources (queue.c, slot.c, map_posix.c).
QUEUE_SOURCE = r"""
#define _GNU_SOURCE
#include "fastshm.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define QF_MAXPROC 64

static double qf_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static double qf_cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           1e-6 * (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* What the children share besides the queue: the start, the deadline, how
   many producers are done, and each child's count, CPU and end time. */
typedef struct {
    int go;
    int producers_done;
    double start_ns, deadline_ns;
    uint64_t count[QF_MAXPROC];
    uint64_t by_deadline[QF_MAXPROC];  /* consumers: taken by the deadline */
    double cpu_s[QF_MAXPROC];
    double end_ns[QF_MAXPROC];
} qf_ctl;

static int qf_producer(const fshm_queue *q, qf_ctl *c, int i, long size) {
    unsigned char *msg = malloc(size > 0 ? (size_t)size : 1);
    if (msg == NULL) return 4;
    memset(msg, 'a' + i, size > 0 ? (size_t)size : 1);
    while (!__atomic_load_n(&c->go, __ATOMIC_ACQUIRE)) usleep(100);
    double start = c->start_ns, deadline = c->deadline_ns;
    while (qf_now_ns() < start) { }
    double cpu0 = qf_cpu_s();
    uint64_t sent = 0;
    for (;;) {
        if ((sent & 15) == 0 && qf_now_ns() >= deadline) break;
        int rc = fshm_queue_put(q, msg, (size_t)size, 100000000);
        if (rc == 0) { sent++; continue; }
        /* EBUSY: a lock holder was preempted past the timeout (a busy machine) */
        if (rc != FSHM_EFULL && rc != EINTR && rc != FSHM_EBUSY) return 2;
        if (qf_now_ns() >= deadline) break;
    }
    c->end_ns[i] = qf_now_ns();
    c->cpu_s[i] = qf_cpu_s() - cpu0;
    c->count[i] = sent;
    __atomic_add_fetch(&c->producers_done, 1, __ATOMIC_RELEASE);
    return 0;
}

/* Takes until every producer is done and the queue is empty: one message a
   call (batch 1) or up to `batch` packed into one buffer. */
static int qf_consumer(const fshm_queue *q, qf_ctl *c, int i, long size, long batch,
                       long producers) {
    size_t rec = 8 + (((size_t)size + 7) & ~(size_t)7);
    size_t cap = batch > 1 ? rec * (size_t)batch : (size_t)size + 1;
    unsigned char *buf = malloc(cap);
    size_t *lens = malloc(sizeof(size_t) * (size_t)(batch > 1 ? batch : 1));
    if (buf == NULL || lens == NULL) return 4;
    while (!__atomic_load_n(&c->go, __ATOMIC_ACQUIRE)) usleep(100);
    double cpu0 = qf_cpu_s();
    double last = c->start_ns, deadline = c->deadline_ns;
    uint64_t got = 0, mark = 0, by_deadline = 0;
    int finishing = 0, late = 0;
    for (;;) {
        int64_t timeout = finishing ? 0 : 20000000;
        size_t n = 0, taken = 0;
        int rc = batch > 1
            ? fshm_queue_get_packed(q, buf, cap, lens, (size_t)batch, &taken, timeout)
            : fshm_queue_get(q, buf, cap, &n, timeout);
        if (rc == 0) {
            got += batch > 1 ? taken : 1;
            if (got - mark >= 16) {
                last = qf_now_ns();
                mark = got;
                if (!late && last >= deadline) { by_deadline = got; late = 1; }
            }
            finishing = 0;
            continue;
        }
        if (rc == FSHM_EBUSY) continue;  /* the lock holder was preempted: again */
        if (rc != FSHM_ENOMSG && rc != EINTR) return 2;
        if (finishing) break;
        /* Empty: once every producer is done, one more look without
           waiting takes what was put since. */
        if (__atomic_load_n(&c->producers_done, __ATOMIC_ACQUIRE) == producers)
            finishing = 1;
    }
    if (got != mark) last = qf_now_ns();
    c->end_ns[i] = last;
    c->cpu_s[i] = qf_cpu_s() - cpu0;
    c->count[i] = got;
    c->by_deadline[i] = late ? by_deadline : got;
    return 0;
}

/* `producers` C processes put `size`-byte messages into a fresh queue of
   `capacity` ring bytes as fast as they can for `seconds`; `consumers`
   processes take them (batch 1: fshm_queue_get; more: get_packed).
   out[0]: messages put; out[1]: messages taken; out[2]: CPU seconds of
   every child from the start; out[3]: seconds the producers put (to the last
   one's end); out[4]: seconds from the start to the last message taken;
   out[5]: messages taken by the deadline (within 16 a consumer). */
int floor_queue(long size, long producers, long consumers, long batch, double seconds,
                long capacity, double *out) {
    if (producers < 1 || consumers < 1 || producers + consumers > QF_MAXPROC || size < 0)
        return -EINVAL;
    size_t qbytes = fshm_queue_size_for((uint64_t)capacity);
    if (qbytes == 0) return -EINVAL;
    void *qb = mmap(NULL, qbytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (qb == MAP_FAILED) return -errno;
    qf_ctl *c = mmap(NULL, sizeof(qf_ctl), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (c == MAP_FAILED) { int e = errno; munmap(qb, qbytes); return -e; }
    memset(c, 0, sizeof *c);
    fshm_queue q;
    int rc = fshm_queue_init(&q, qb, qbytes, (uint64_t)capacity, 0);
    if (rc != 0) { munmap(qb, qbytes); munmap(c, sizeof *c); return rc > 0 ? -rc : -EINVAL; }
    long total = producers + consumers;
    pid_t pids[QF_MAXPROC];
    long forked = 0;
    for (; forked < total; forked++) {
        pid_t pid = fork();
        if (pid < 0) { rc = -errno; break; }
        if (pid == 0) {
            int i = (int)forked;
            _exit(i < producers ? qf_producer(&q, c, i, size)
                                : qf_consumer(&q, c, i, size, batch, producers));
        }
        pids[forked] = pid;
    }
    if (rc == 0) {
        c->start_ns = qf_now_ns() + 20e6;
        c->deadline_ns = c->start_ns + seconds * 1e9;
        __atomic_store_n(&c->go, 1, __ATOMIC_RELEASE);
    }
    double limit = qf_now_ns() + (seconds + 30.0) * 1e9;
    int failed = 0;
    for (long k = 0; k < forked; k++) {
        int status = 0;
        for (;;) {
            pid_t w = waitpid(pids[k], &status, rc == 0 ? WNOHANG : 0);
            if (w == pids[k]) break;
            if (w < 0 && errno != EINTR) { failed = 1; break; }
            if (qf_now_ns() > limit) {
                for (long j = 0; j < forked; j++) kill(pids[j], SIGKILL);
                rc = -ETIMEDOUT;
            }
            usleep(1000);
        }
        if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) failed = 1;
    }
    if (rc == 0 && failed) rc = -ECHILD;
    if (rc == 0) {
        double put = 0, taken = 0, by = 0, cpu = 0;
        double put_end = c->start_ns, take_end = c->start_ns;
        for (long k = 0; k < total; k++) {
            cpu += c->cpu_s[k];
            if (k < producers) {
                put += (double)c->count[k];
                if (c->end_ns[k] > put_end) put_end = c->end_ns[k];
            } else {
                taken += (double)c->count[k];
                by += (double)c->by_deadline[k];
                if (c->end_ns[k] > take_end) take_end = c->end_ns[k];
            }
        }
        out[0] = put;
        out[1] = taken;
        out[2] = cpu;
        out[3] = (put_end - c->start_ns) / 1e9;
        out[4] = (take_end - c->start_ns) / 1e9;
        out[5] = by;
    }
    munmap(qb, qbytes);
    munmap(c, sizeof *c);
    return rc;
}
"""

_lib: Any = None
_why: Optional[str] = None
_tmp: Optional[str] = None
_qlib: Any = None
_qwhy: Optional[str] = None
# The C core's sources, beside the benchmarks in a checkout of the repository.
CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
QUEUE_CORE = ("queue.c", "slot.c", "map_posix.c")


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
    lib.floor_frames.restype = ctypes.c_int
    long_, double = ctypes.c_long, ctypes.c_double  # size, slots, seconds, yield after, out
    lib.floor_frames.argtypes = [long_, long_, double, double, ctypes.POINTER(double)]
    _lib = lib
    return lib


def why() -> Optional[str]:
    return _why


def load_queue() -> Any:
    """The queue floor's library (ctypes): its source compiled with the C
    core's, or None with ``queue_why()`` set."""
    global _qlib, _qwhy
    if _qlib is not None or _qwhy is not None:
        return _qlib
    if load() is None:
        _qwhy = _why
        return None
    if not sys.platform.startswith("linux") and sys.platform != "darwin":
        _qwhy = "the C floors are POSIX-only"
        return None
    core = [os.path.join(CSRC, f) for f in QUEUE_CORE]
    if not all(os.path.isfile(f) for f in core):
        _qwhy = f"the C core's sources are not at {CSRC}"
        return None
    assert _tmp is not None
    src = os.path.join(_tmp, "queue_floor.c")
    out = os.path.join(_tmp, "queue_floor.so")
    with open(src, "w") as f:
        f.write(QUEUE_SOURCE)
    cmd = _compiler() + ["-O2", "-shared", "-fPIC", "-I", CSRC, "-o", out, src] + core
    cmd += ["-lrt", "-lpthread"] if sys.platform.startswith("linux") else ["-lpthread"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        _qwhy = f"no C compiler ({e})"
        return None
    if proc.returncode != 0:
        _qwhy = f"compiling the queue floor failed: {proc.stderr.strip()[:300]}"
        return None
    try:
        lib = ctypes.CDLL(out)
    except OSError as e:
        _qwhy = f"loading the queue floor failed: {e}"
        return None
    lib.floor_queue.restype = ctypes.c_int
    lib.floor_queue.argtypes = [
        ctypes.c_long,
        ctypes.c_long,
        ctypes.c_long,
        ctypes.c_long,
        ctypes.c_double,
        ctypes.c_long,
        ctypes.POINTER(ctypes.c_double),
    ]
    _qlib = lib
    return lib


def queue_why() -> Optional[str]:
    return _qwhy


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


def frames_run(
    size: int, slots: int, seconds: float, yield_after_ns: float = 1e6
) -> Optional[Dict[str, float]]:
    """Frames of ``size`` bytes from this process to a forked C child for
    ``seconds``, through ``slots`` slots taken in turn, copied in and out:
    what was sent, how long it took, each side's CPU seconds and the frames
    that came out wrong."""
    lib = load()
    if lib is None:
        return None
    out = (ctypes.c_double * 5)()
    rc = lib.floor_frames(size, slots, seconds, yield_after_ns, out)
    if rc != 0:
        raise OSError(-rc, f"C frames floor failed: {os.strerror(-rc)}")
    return {
        "sent": out[0],
        "seconds": out[1],
        "producer_cpu_s": out[2],
        "consumer_cpu_s": out[3],
        "bad": out[4],
    }


def queue_run(
    size: int, producers: int, consumers: int, batch: int, seconds: float, capacity: int
) -> Optional[Dict[str, float]]:
    """C producers putting ``size``-byte messages into a fastshm queue as
    fast as they can for ``seconds``, C consumers taking them ``batch`` at a
    time: what was put and taken (all, and by the deadline), the children's
    CPU seconds, and the seconds the producers put and the consumers took."""
    lib = load_queue()
    if lib is None:
        return None
    out = (ctypes.c_double * 6)()
    rc = lib.floor_queue(size, producers, consumers, batch, seconds, capacity, out)
    if rc != 0:
        err = -rc if rc < 0 else rc
        raise OSError(err, f"C queue floor failed: {os.strerror(err) if err < 200 else rc}")
    return {
        "put": out[0],
        "taken": out[1],
        "cpu_s": out[2],
        "put_s": out[3],
        "take_s": out[4],
        "by_deadline": out[5],
    }
