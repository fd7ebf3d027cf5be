/*
 * Shared between the core's own files, not part of the public API: the
 * writer lock of docs/FORMAT.md, which segments and queues lay out at the
 * same header offsets (lock 64, lock_wake 72, lock_waiters 76, lock_next 80).
 */
#ifndef FASTSHM_INTERNAL_H
#define FASTSHM_INTERNAL_H

#include <stdint.h>

/* Deadlines of the lock wait, in fshm_monotonic_ns() time. */
#define FSHM__NOW 0              /* a short spin, never a sleep */
#define FSHM__NEVER INT64_MAX    /* as long as it takes */
/* How long a call with a zero timeout may wait for a lock that another
 * process holds: enough for a holder that was preempted mid-commit, short
 * enough that a stopped holder never makes a "don't wait" call wait. */
#define FSHM__LOCK_GRACE_NS 1000000LL

/* 0 once this process holds the lock at `base`; EINTR when a signal arrived
 * while it slept; FSHM_EBUSY when another process still held it at
 * `deadline` (FSHM__NOW: after a short spin).  A dead owner's lock is taken
 * over. */
int fshm__lock_acquire(unsigned char *base, int64_t deadline);
/* The deadline `timeout_ns` from now (< 0: FSHM__NEVER). */
int64_t fshm__deadline(int64_t timeout_ns);
void fshm__lock_release(unsigned char *base);
/* Free the lock if it still holds `owner` (FSHM_EAGAIN otherwise). */
int fshm__break_lock(unsigned char *base, uint64_t owner);

/* The opening loop of fshm_seg_open and fshm_queue_open: map the name as
 * `how` says (need: the bytes of a new object), mark a created object with
 * this process's id in the lock word while its memory is reserved, then call
 * init(obj, m), which lays a fresh header over a created object or checks
 * an attached one.  Waits for another creator as fshm_seg_open documents. */
#include "fastshm.h"
int fshm__open(fshm_map *m, const char *name, int how, size_t need, unsigned mode,
               int (*init)(void *obj, const fshm_map *m), void *obj);

#endif
