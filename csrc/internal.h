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
 * an attached one.  Waits for another creator as fshm_seg_open documents,
 * and takes over (makes anew) an object whose maker died before finishing
 * it when `how` lets it create (docs/FORMAT.md, "Creating"). */
#include "fastshm.h"
int fshm__open(fshm_map *m, const char *name, int how, size_t need, unsigned mode,
               int (*init)(void *obj, const fshm_map *m), void *obj);

/* ---- the mapping layer's part in making an object (map_posix.c,
 * map_win32.c) ----
 *
 * The init lock: whoever writes the header of an object not yet published
 * (its magic 0) holds it, from before the object has a size until the magic
 * is out: its creator, or an opener taking over from a maker that died.  On
 * POSIX it is an exclusive flock on the object, which the system releases
 * when its holder dies, and on Linux a new object also carries the sticky
 * mode bit (FSHM__MAKING_MODE) from the instant it exists until then: "a
 * fastshm process is making this".  Windows has neither. */

/* Or-ed into fshm_map_open's `how` with FSHM_DEFER_RESERVE: a created object
 * is made with the making mode bit and its init lock taken, and m->fd keeps
 * the lock until fshm__map_done.  FSHM_EAGAIN (nothing mapped, the name not
 * removed) when the new name was taken over by another process before this
 * one locked it: open it again as it stands. */
#define FSHM__INIT_LOCK 32
/* What fshm__map_claim found out. */
#define FSHM__LOCKED 1      /* this process holds the init lock (m->fd) */
#define FSHM__MAKING 2      /* the object carries the making mode bit */
/* Open an existing object to judge (and maybe take over) an unfinished
 * creation: its init lock tried without waiting, then all of it mapped
 * (nothing when its size is 0; read-only when only that is allowed, then
 * m->readonly).  FSHM_EBUSY: a live process holds the lock.  ENOENT: gone.
 * `how_flags` may carry FSHM_ANY_OWNER. */
int fshm__map_claim(fshm_map *m, const char *name, int how_flags, int *state);
/* Make a claimed, locked object this process's to initialise: the making
 * mode bit set, grown to `need` bytes if smaller, m->created set. */
int fshm__map_adopt(fshm_map *m, size_t need);
/* Commit a created object's memory (FSHM_RESERVE), keeping m->fd. */
int fshm__map_reserve(fshm_map *m);
/* After the magic is out: the object's final mode, the init lock released,
 * m->fd closed; the mapping stays. */
void fshm__map_done(fshm_map *m, unsigned mode);
/* Give up a claimed or created object: the init lock released, m->fd
 * closed, the mapping unmapped. */
void fshm__map_release(fshm_map *m);

#ifdef _WIN32
/* ---- sleeping on many words at once on Windows (map_win32.c, for
 * wait_words.c) ----
 *
 * out[i]: a handle of its own (HANDLE, closed by fshm__close_wait_handles)
 * on the kernel object a sleeper of words[i] waits for: the named semaphore
 * of a mapped object's wake-up word, or an event of this process's for a
 * word in its private memory (set by fshm__local_wake).  ENOENT, nothing
 * left open, when some word has neither: its waiter must poll. */
int fshm__wait_handles(uint32_t *const *words, size_t n, void **out);
void fshm__close_wait_handles(void **handles, size_t n);
void fshm__local_wake(uint32_t *word);
#endif

#endif
