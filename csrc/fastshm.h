/*
 * fastshm: named shared memory with a framed, tear-free message slot.
 *
 * Plain C, usable from any C program.  Two layers:
 *
 *   mapping  fshm_map_open / fshm_unmap / fshm_unlink: a named region of
 *            shared memory (shm_open + mmap on POSIX, CreateFileMappingW +
 *            MapViewOfFile on Windows).
 *   segment  fshm_seg_*: the message format of docs/FORMAT.md laid over a
 *            mapping: a header and two payload slots, one message at a time,
 *            never torn, safe against a writer that dies at any instant.
 *   queue    fshm_queue_*: a bounded FIFO of byte messages over a mapping
 *            (docs/FORMAT.md, "Queues"): every message delivered once, in
 *            order, safe against a producer or consumer that dies at any
 *            instant.
 *   channel  fshm_channel_*: zero-copy publish/subscribe over a ring of
 *            fixed-size slots (docs/FORMAT.md, "Channels"): publishers write
 *            into a slot they have borrowed, every subscriber reads the slot
 *            itself, pinned while it reads; safe against a publisher or
 *            subscriber that dies at any instant.
 *
 * Every function that can fail returns 0 on success, a positive errno value
 * for a system error (Windows errors are translated to the same errno
 * values), or one of the negative FSHM_E* codes below.  Nothing prints.
 */
#ifndef FASTSHM_H
#define FASTSHM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FSHM_MAGIC 0x4D485346u       /* the bytes "FSHM" read little-endian */
#define FSHM_VERSION 1
#define FSHM_HEADER_SIZE 128
#define FSHM_SLOT_HEADER_SIZE 64
#define FSHM_ALIGN 64

/* How fshm_map_open / fshm_seg_open find or make the name. */
#define FSHM_ATTACH 0                /* the name must exist */
#define FSHM_CREATE 1                /* the name must not exist */
#define FSHM_OPEN_OR_CREATE 2        /* attach, or create when missing */
#define FSHM_HOW_MASK 3
/* Or-ed into `how`: commit the memory of a new object now (posix_fallocate
 * on Linux), so a full /dev/shm is an ENOSPC here rather than a SIGBUS at
 * the first write. */
#define FSHM_RESERVE 4
/* Or-ed into `how`: attach even when the object belongs to another user.
 * Without it an object owned by neither the caller's effective uid nor root
 * is refused with FSHM_EOWNER (POSIX; Windows has no such check): another
 * user who made the name first could read every message and truncate the
 * object under its readers. */
#define FSHM_ANY_OWNER 8
/* Or-ed into `how` by fshm_seg_open: a created object is sized and mapped,
 * and its reservation (FSHM_RESERVE) is left to fshm_map_reserve, so the
 * creator can mark the header as "being made by me" first. */
#define FSHM_DEFER_RESERVE 16

/* Library error codes (negative; system errors are positive errno values). */
#define FSHM_EFORMAT (-1)    /* not a fastshm segment, or its header is corrupt */
#define FSHM_ETOOBIG (-2)    /* message larger than the slot capacity */
#define FSHM_ESMALL (-3)     /* destination too small; *n says what is needed */
#define FSHM_ETIMEOUT (-4)   /* wait ran out of time */
#define FSHM_ENOTREADY (-5)  /* segment exists but has no header, and no creator
                                can be seen making it */
#define FSHM_EEMPTY (-6)     /* the name exists with size 0 */
#define FSHM_EAGAIN (-7)     /* a read raced with writers; try again */
#define FSHM_EVERSION (-8)   /* a fastshm segment of a format version we do not know */
#define FSHM_EOWNER (-9)     /* the object belongs to another user; see FSHM_ANY_OWNER */
#define FSHM_EBUSY (-10)     /* another process held the lock past the call's deadline */
#define FSHM_EKIND (-11)     /* the name holds another kind of fastshm object (a
                                queue where a segment was expected, ...):
                                fshm_kind_of says which */
#define FSHM_EFULL (-12)     /* a queue has no room for the message(s); a
                                channel has no slot to lend */
#define FSHM_ENOMSG (-13)    /* a queue holds no message */
#define FSHM_EPROTOCOL (-14) /* a queue or channel made for the python
                                backend's lock */
#define FSHM_ENOTREG (-15)   /* the name holds no shared memory: a FIFO, a
                                directory, a device, a socket or a symbolic
                                link made there by other means */
#define FSHM_EABANDONED (-16) /* its creator died before finishing it; an
                                 opener that may create it takes it over */
#define FSHM_ELOST (-17)     /* a channel loan or subscription that no longer
                                belongs to the caller (reclaimed as dead, evicted,
                                or made by the parent of a forked process) */
#define FSHM_ESUBFULL (-18)  /* every subscriber entry of a channel is taken */

#define FSHM_QUEUE_MAGIC 0x51485346u /* the bytes "FSHQ" read little-endian */
#define FSHM_QUEUE_VERSION 1
#define FSHM_QUEUE_RECORD_HEADER 8    /* a record: u64 length, payload, padding to 8 */
/* Queue header flags. */
#define FSHM_QUEUE_PYLOCK 1u          /* producers and consumers lock the way
                                         fastshm's python backend does */

#define FSHM_CHANNEL_MAGIC 0x43485346u /* the bytes "FSHC" read little-endian */
#define FSHM_CHANNEL_VERSION 1
#define FSHM_CHANNEL_HEADER_SIZE 256
#define FSHM_CHANNEL_MAX_SLOTS (1u << 20)
#define FSHM_CHANNEL_MAX_SUBSCRIBERS 64
/* Channel flags. */
#define FSHM_CHANNEL_OVERWRITE 1u     /* publishers never wait for subscribers:
                                         the oldest unpinned slot is reused */
#define FSHM_CHANNEL_PYLOCK 2u        /* made by fastshm's python backend, whose
                                         processes do everything under a flock:
                                         attach refuses it (FSHM_EPROTOCOL) */

/* What the magic at the start of a mapping names (fshm_kind, fshm_kind_of). */
#define FSHM_KIND_SEGMENT 1
#define FSHM_KIND_QUEUE 2
#define FSHM_KIND_CHANNEL 3

typedef struct fshm_map {
    void *base;       /* start of the mapping, NULL when not mapped */
    size_t size;      /* bytes mapped */
    int created;      /* 1 when this call created the name */
    int readonly;     /* 1 when mapped for reading only: write access was
                         refused, so the object was opened read-only */
    int64_t owner;    /* the object's owner uid (POSIX); -1 where unknown */
    int fd;           /* FSHM_DEFER_RESERVE: open until fshm_map_reserve */
} fshm_map;

/* A segment opened on a mapping.  The geometry is read and checked once,
 * when the segment is opened, and cached here: no later change of the shared
 * header can make an operation reach outside the mapping. */
typedef struct fshm_seg {
    unsigned char *base;
    size_t size;
    uint64_t capacity;   /* payload bytes per slot */
    uint64_t stride;     /* bytes from one slot to the next */
    int readonly;        /* mapped read-only: stores are refused (EACCES),
                            waiters poll instead of registering */
} fshm_seg;

/* Where the current message lies, as seen at fshm_read_begin. */
typedef struct fshm_read {
    size_t offset;       /* of the payload, from base */
    size_t length;
    uint64_t seq;        /* store number of the message; 0: nothing stored */
    uint64_t token;      /* the slot sequence word seen at the start */
} fshm_read;

/* A queue opened on a mapping; as with fshm_seg, its geometry is read once
 * at open. */
typedef struct fshm_queue {
    unsigned char *base;
    size_t size;
    uint64_t capacity;   /* bytes of the ring that holds the records */
    uint32_t flags;      /* the header's flags (FSHM_QUEUE_PYLOCK) */
    int readonly;        /* mapped read-only: puts and gets are refused (EACCES) */
} fshm_queue;

/* One message of a batch, for fshm_queue_put_many. */
typedef struct fshm_msg {
    const void *data;
    size_t len;
} fshm_msg;

/* A channel opened on a mapping; its geometry is read and checked once, at
 * open, and cached here, so no later change of the shared header can make
 * an access reach outside the mapping. */
typedef struct fshm_channel {
    unsigned char *base;
    size_t size;
    uint64_t slot_size;       /* payload bytes per slot */
    uint64_t stride;          /* bytes from one payload to the next */
    uint64_t payload_offset;  /* of slot 0's payload, from base (page-aligned) */
    uint32_t slots;           /* N */
    uint32_t max_subscribers; /* M */
    uint32_t history;         /* H: messages a new subscriber gets from before it joined */
    uint32_t flags;           /* FSHM_CHANNEL_OVERWRITE */
    int readonly;             /* mapped read-only: everything but the snapshots is
                                 refused (EACCES), as subscribing writes too */
} fshm_channel;

/* A slot lent to a publisher: it writes up to `capacity` bytes at `data`
 * (base + offset), then commits or discards it. */
typedef struct fshm_loan {
    uint32_t slot;
    void *data;
    size_t offset;
    size_t capacity;
} fshm_loan;

/* A subscription: its entry in the subscriber table, and the entry's
 * generation when it was taken (a reused entry is not this subscription). */
typedef struct fshm_sub {
    uint32_t index;
    uint64_t gen;
} fshm_sub;

/* A message received: slot `slot` pinned for the subscriber until it
 * releases it; `length` bytes at `data` (base + offset), never changed
 * while pinned. */
typedef struct fshm_sample {
    uint32_t slot;
    const void *data;
    size_t offset;
    size_t length;
    uint64_t seq;
} fshm_sample;

/* A snapshot of one subscriber entry, for tools. */
typedef struct fshm_sub_info {
    uint64_t owner;      /* the process's fshm_self_id; 0: the entry is free */
    uint64_t cursor;     /* the number of the next message it receives */
    uint64_t missed;     /* messages it lost to overwriting, in all */
    uint64_t received;   /* messages it received, in all */
    uint64_t lag;        /* messages published that it has not reached yet */
    uint32_t pinned;     /* slots it holds pinned now */
} fshm_sub_info;

/* Called by fshm_queue_take for each message it takes, with the queue's lock
 * held: returns where to copy `len` bytes, or NULL to take no more (that
 * message stays queued).  It must not block. */
typedef void *(*fshm_take_fn)(void *ctx, size_t len);

/* ---- mapping layer (map_posix.c / map_win32.c) ---- */

/* Open `name` (UTF-8, without the leading '/' POSIX uses) as `how` says.
 * `size` is used when creating; attaching maps the whole existing object.
 * `mode` is the permission bits of a new POSIX object (ignored on Windows). */
int fshm_map_open(fshm_map *m, const char *name, int how, size_t size,
                  unsigned mode);
/* Commit the memory of an object created with FSHM_DEFER_RESERVE, and close
 * the descriptor kept for it.  0 when there is nothing to do. */
int fshm_map_reserve(fshm_map *m);
int fshm_unmap(void *base, size_t size);
int fshm_unlink(const char *name);
/* Longest name the platform accepts, in bytes. */
size_t fshm_name_max(void);

/* Identity of the calling process for the writer lock, and whether the
 * process a lock word names is gone (1), alive (0), or unknown (-1, for
 * instance another pid namespace). */
uint64_t fshm_self_id(void);
int fshm_owner_dead(uint64_t owner);
/* Futex-style primitives: a shared futex on Linux, the segment's named
 * semaphores on Windows (for the header's wake words), polling elsewhere. */
int fshm_futex_wait(uint32_t *addr, uint32_t expected, int64_t timeout_ns);
void fshm_futex_wake(uint32_t *addr, int all);
/* ---- waiting on many words at once (wait_words.c) ---- */

/* Sleep until one of words[i] differs from values[i], is woken, or the
 * timeout (ns, < 0: none) runs out: 0 (look at them all: it may also end
 * early, for nothing), FSHM_ETIMEOUT, EINTR on a signal, EINVAL for n 0 or
 * above FSHM_WAIT_WORDS_MAX.  A waiter counts itself in each object's
 * sleeper count first (fshm_waiters_add), then reads each word
 * (fshm_word_load), then looks at what it waits for, then sleeps here. */
#ifdef _WIN32
#define FSHM_WAIT_WORDS_MAX 64 /* WaitForMultipleObjects' MAXIMUM_WAIT_OBJECTS */
#else
#define FSHM_WAIT_WORDS_MAX 128 /* futex_waitv's FUTEX_WAITV_MAX */
#endif
/* Where the system cannot sleep on many words (fshm_wait_words_polls()
 * says 1), they are polled, a change seen at most this late. */
#define FSHM_WAIT_WORDS_POLL_NS 2000000
int fshm_wait_words(uint32_t *const *words, const uint32_t *values, size_t n,
                    int64_t timeout_ns);
int fshm_wait_words_polls(void);
/* Seq_cst: add delta to a sleeper count; read a wake-up word. */
void fshm_waiters_add(uint32_t *waiters, int32_t delta);
uint32_t fshm_word_load(const uint32_t *word);
/* Add one to a process's own wake-up word and wake its sleeper: how a
 * thread interrupts another's fshm_wait_words. */
void fshm_word_bump(uint32_t *word);

/* ---- sleeping on wake-up words from an event loop (futex_ring.c) ---- */

/* An io_uring of futex waits whose descriptor an event loop watches.
 * Open: 0 and *out, or an errno value where the system cannot (not Linux,
 * io_uring refused, a kernel before 6.7: ENOSYS).  Wait: queue and submit a
 * sleep on word while it holds value (same protocol as fshm_wait_words),
 * tag coming back with its completion; 0 or an errno value.  Cancel: end the
 * wait queued with tag (it completes with -ECANCELED; tag 0 is the cancel's
 * own completion, never a wait's).  Reap: up to max
 * completions (results: 0 woken, -EAGAIN the value differed, -ECANCELED,
 * another -errno), their number.  One thread uses a ring at a time. */
typedef struct fshm_futex_ring fshm_futex_ring;
int fshm_futex_ring_open(fshm_futex_ring **out);
int fshm_futex_ring_fd(const fshm_futex_ring *r);
int fshm_futex_ring_wait(fshm_futex_ring *r, uint32_t *word, uint32_t value, uint64_t tag);
int fshm_futex_ring_cancel(fshm_futex_ring *r, uint64_t tag);
int fshm_futex_ring_reap(fshm_futex_ring *r, uint64_t *tags, int32_t *results, int max);
void fshm_futex_ring_close(fshm_futex_ring *r);

/* Sleep ns nanoseconds (<= 0: yield the processor).  EINTR when a signal
 * handler ran meanwhile (POSIX), else 0. */
int fshm_sleep_ns(int64_t ns);
int64_t fshm_monotonic_ns(void);

/* What kind of fastshm object the header at base is (FSHM_KIND_*), by its
 * magic; 0 for none (not fastshm's, or still being made). */
int fshm_kind(const void *base, size_t size);
/* The kind of the object `name` holds, into *kind (0 for none): for the
 * message of an FSHM_EKIND.  `how` may carry FSHM_ANY_OWNER; errors as
 * fshm_map_open. */
int fshm_kind_of(const char *name, int how, int *kind);

/* ---- segment layer (slot.c) ---- */

/* Mapping bytes needed for a segment of `capacity`; 0 if that overflows. */
size_t fshm_seg_size_for(uint64_t capacity);
/* Lay a fresh header over base (the mapping must be zero-filled) and publish
 * it.  The magic is written last so openers never see half a header. */
int fshm_seg_init(fshm_seg *s, void *base, size_t size, uint64_t capacity);
/* Check an existing header and fill s.  FSHM_ENOTREADY when the magic is not
 * there yet, FSHM_EKIND for a queue or a channel, FSHM_EFORMAT /
 * FSHM_EVERSION when it is wrong. */
int fshm_seg_attach(fshm_seg *s, void *base, size_t size);
/* Map and open a segment by name, creating and initialising it as `how`
 * says (FSHM_ANY_OWNER may be or-ed in).  An opener that finds the segment
 * still being made waits for its creator while the creator is alive (it
 * holds the object's init lock, and marks the header with its id, while it
 * makes it), up to a minute, and about a second when it cannot tell;
 * FSHM_ENOTREADY (FSHM_EEMPTY for a size of 0) after that.  One whose
 * creator died is made anew by an FSHM_OPEN_OR_CREATE opener (m->created
 * is then 1), and refused with FSHM_EABANDONED by an FSHM_ATTACH one
 * (docs/FORMAT.md, "Creating").  EINTR when a signal handler ran while it
 * waited: call again.  On success *m holds the mapping, to be released
 * with fshm_unmap(m->base, m->size). */
int fshm_seg_open(fshm_seg *s, fshm_map *m, const char *name, int how,
                  uint64_t capacity, unsigned mode);

/* Store n bytes as the next message.  Refused with FSHM_ETOOBIG before a
 * byte is written when n exceeds the capacity.  *seq gets its number.
 * EINTR when a signal arrived while waiting for another writer: nothing was
 * stored, call again. */
int fshm_store(const fshm_seg *s, const void *src, size_t n, uint64_t *seq);
/* fshm_store that never sleeps: FSHM_EBUSY when another writer holds the
 * lock beyond a short spin (nothing stored).  For callers that must let go
 * of something, such as a language runtime's global lock, before sleeping. */
int fshm_try_store(const fshm_seg *s, const void *src, size_t n, uint64_t *seq);
/* fshm_store waiting at most timeout_ns for another writer's lock (0: about
 * a millisecond, for a writer preempted while it held it; < 0: as long as
 * it takes): FSHM_EBUSY when the lock was still another's after that,
 * nothing stored.  A writer that is alive but stopped (SIGSTOP, a debugger)
 * holds the lock until it resumes; this bounds how long a caller waits for
 * it, and lets a binding wait in slices, running its signal handlers
 * between them. */
int fshm_store_timed(const fshm_seg *s, const void *src, size_t n, int64_t timeout_ns,
                     uint64_t *seq);
/* Copy the current message into dst (dst_cap bytes).  *n gets its length,
 * *seq its number.  FSHM_ESMALL when dst_cap < *n: dst is untouched, unless
 * an earlier attempt's copy raced with writers and was retried.  A copy that
 * writers spoil three times running is made under the writer lock, so a load
 * finishes whatever the writers do (not for a read-only segment, which
 * cannot take the lock: it keeps retrying).  EINTR when a signal arrived
 * while it waited for that lock. */
int fshm_load(const fshm_seg *s, void *dst, size_t dst_cap, size_t *n,
              uint64_t *seq);
/* fshm_load that never takes the writer lock: FSHM_EAGAIN when writers
 * spoiled its three copies.  For callers that must let go of something,
 * such as a language runtime's global lock, before they wait for the lock
 * (then call fshm_load). */
int fshm_try_load(const fshm_seg *s, void *dst, size_t dst_cap, size_t *n,
                  uint64_t *seq);
/* The two halves of a load done by the caller (zero-copy readers): begin
 * says where the current message lies, the caller reads it, end says whether
 * what was read is consistent (0) or raced with writers (FSHM_EAGAIN). */
int fshm_read_begin(const fshm_seg *s, fshm_read *r);
int fshm_read_end(const fshm_seg *s, const fshm_read *r);
/* fshm_read_begin under the writer lock, for a reader that writers keep
 * spoiling: no store of a writer that takes the lock word can move the
 * message until fshm_read_unlock.  EINTR when a signal arrived while it
 * waited, EACCES for a read-only segment, FSHM_EBUSY when a writer held the
 * lock for 50 ms: a writer stopped with its lock spoils no copy, so the
 * caller copies without the lock again. */
int fshm_read_lock(const fshm_seg *s, fshm_read *r);
void fshm_read_unlock(const fshm_seg *s);
/* 1 while message number `seq` is still in place and untouched (0 counts as
 * the empty message), 0 once a later store has begun to overwrite its slot:
 * the seqlock's re-check for a zero-copy reader that used the bytes where
 * they lie and asks afterwards whether they were intact. */
int fshm_intact(const fshm_seg *s, uint64_t seq);
/* The policy of fshm_load, for callers that make their own copies: after
 * FSHM_LOAD_TRIES copies spoiled by writers, and at least
 * FSHM_LOAD_LOCKFREE_NS of lock-free attempts (so short copies, which
 * writers rarely spoil twice, keep trying without the lock), copy under the
 * writer lock (fshm_read_lock). */
#define FSHM_LOAD_TRIES 3
#define FSHM_LOAD_LOCKFREE_NS 20000
/* Number of stores published so far. */
uint64_t fshm_seq(const fshm_seg *s);
/* Block until a store newer than `after` is published; *seq gets the newest
 * number.  timeout_ns < 0 waits forever; FSHM_ETIMEOUT when it ran out,
 * EINTR when a signal arrived (the caller decides whether to wait again). */
int fshm_wait(const fshm_seg *s, uint64_t after, int64_t timeout_ns,
              uint64_t *seq);
/* fshm_wait spinning for spin_ns (0: none) before it sleeps, instead of
 * the fixed 50 us. */
int fshm_wait_spin(const fshm_seg *s, uint64_t after, int64_t timeout_ns,
                   int64_t spin_ns, uint64_t *seq);
/* Adaptive spinning, as adaptive mutexes do it: the spin for a waiter's next
 * wait, from the spin of its last one and how long that wait took to see a
 * message (elapsed_ns < 0: it timed out).  A waiter whose messages come
 * within FSHM_SPIN_MAX_NS learns to spin just past them and never sleeps; an
 * idle one goes back to the short FSHM_SPIN_MIN_NS. */
#define FSHM_SPIN_MIN_NS 50000
#define FSHM_SPIN_MAX_NS 500000
int64_t fshm_spin_next(int64_t spin_ns, int64_t elapsed_ns);
/* The writer lock word: 0 when free. */
uint64_t fshm_lock_owner(const fshm_seg *s);
/* Free a lock held by `owner`, for a writer that is gone but whose death
 * fshm_owner_dead cannot see (another pid namespace, a reused pid).  Only
 * when the word still holds `owner`; FSHM_EAGAIN otherwise. */
int fshm_break_lock(const fshm_seg *s, uint64_t owner);

/* ---- queue layer (queue.c) ---- */

/* Mapping bytes for a queue whose ring holds `capacity` bytes (rounded up to
 * a multiple of 8); 0 if that is out of range (under 16, or overflowing). */
size_t fshm_queue_size_for(uint64_t capacity);
/* The largest message a queue of this ring capacity takes. */
uint64_t fshm_queue_max_message(uint64_t capacity);
/* Lay a fresh queue header over zero-filled base and publish it. */
int fshm_queue_init(fshm_queue *q, void *base, size_t size, uint64_t capacity,
                    uint32_t flags);
/* Check an existing header and fill q: FSHM_EKIND for a segment or a channel,
 * FSHM_ENOTREADY / FSHM_EFORMAT / FSHM_EVERSION as fshm_seg_attach. */
int fshm_queue_attach(fshm_queue *q, void *base, size_t size);
/* Map and open a queue by name, as fshm_seg_open does for a segment; a
 * created queue gets `flags`.  A queue whose flags name the python
 * backend's lock (FSHM_QUEUE_PYLOCK) is opened, but its puts and gets return
 * FSHM_EPROTOCOL: a compare-and-swap lock and that one do not exclude each
 * other. */
int fshm_queue_open(fshm_queue *q, fshm_map *m, const char *name, int how,
                    uint64_t capacity, uint32_t flags, unsigned mode);

/* Timeouts: 0 never sleeps for room or a message, < 0 waits as long as it
 * takes.  The timeout bounds the wait for the queue's lock too: a put or
 * take returns FSHM_EBUSY (nothing put or taken) when another process held
 * the lock until then, such as one that is alive but stopped (SIGSTOP, a
 * debugger).  With a zero timeout that wait lasts about a millisecond, for
 * a holder preempted in the middle of its commit. */

/* Append one message.  FSHM_ETOOBIG at once (nothing changed) when it could
 * never fit; FSHM_EFULL when there was no room before the timeout; EINTR
 * when a signal arrived while it slept (nothing put: call again). */
int fshm_queue_put(const fshm_queue *q, const void *src, size_t n, int64_t timeout_ns);
/* Append `count` messages in order, all or none, under one lock: they are
 * contiguous in the queue.  FSHM_ETOOBIG when together they could never
 * fit. */
int fshm_queue_put_many(const fshm_queue *q, const fshm_msg *msgs, size_t count,
                        int64_t timeout_ns);
/* fshm_queue_put_many that never sleeps, not even for the lock: FSHM_EBUSY
 * when another process holds it beyond a short spin, FSHM_EFULL without
 * room.  For callers that must let go of something (a runtime's global
 * lock) before they sleep. */
int fshm_queue_try_put_many(const fshm_queue *q, const fshm_msg *msgs, size_t count);
/* Take up to `max` messages from the front, in order, under one lock: for
 * each, take(ctx, len) says where to copy it (NULL: stop, it stays queued).
 * A message counts as taken once copied.  *taken gets the number (0 only
 * when take refused the first).  Waits while the queue is empty:
 * FSHM_ENOMSG when it stayed empty to the timeout; EINTR on a signal. */
int fshm_queue_take(const fshm_queue *q, fshm_take_fn take, void *ctx, size_t max,
                    size_t *taken, int64_t timeout_ns);
/* fshm_queue_take that never sleeps: FSHM_EBUSY, FSHM_ENOMSG. */
int fshm_queue_try_take(const fshm_queue *q, fshm_take_fn take, void *ctx, size_t max,
                        size_t *taken);
/* Take the front message into dst: *n gets its length.  FSHM_ESMALL when
 * dst_cap < *n: the message stays queued. */
int fshm_queue_get(const fshm_queue *q, void *dst, size_t dst_cap, size_t *n,
                   int64_t timeout_ns);
/* Take up to `max` front messages into dst, one after another: lens[i]
 * gets the length of the i-th, *taken their number.  It stops before a
 * message that does not fit in what is left of dst; when the first does not,
 * FSHM_ESMALL with lens[0] its length (it stays queued). */
int fshm_queue_get_packed(const fshm_queue *q, void *dst, size_t dst_cap, size_t *lens,
                          size_t max, size_t *taken, int64_t timeout_ns);
/* Sleep until a message is queued (room 0) or there is room for `room`
 * bytes of records (8 + n rounded up to 8 for each message of n bytes): 0,
 * else FSHM_ETIMEOUT, or EINTR on a signal; FSHM_ETOOBIG when room is more
 * than the ring holds; EACCES on a read-only mapping (a sleeper counts
 * itself in the header) and FSHM_EPROTOCOL on a python-backend queue, as a
 * put or take.  Unlike a put or take, it does not spin first: it
 * is for bindings that block in slices, so that their signal handlers run
 * between them.  The first slice is the put or take itself, which spins;
 * the later ones sleep here, then try the put or take again. */
int fshm_queue_wait(const fshm_queue *q, uint64_t room, int64_t timeout_ns);
/* Snapshots, without the lock: messages queued, and ring bytes they use
 * (records with their headers and padding). */
uint64_t fshm_queue_count(const fshm_queue *q);
uint64_t fshm_queue_used(const fshm_queue *q);
/* The lock word, and fshm_break_lock's counterpart for a queue. */
uint64_t fshm_queue_lock_owner(const fshm_queue *q);
int fshm_queue_break_lock(const fshm_queue *q, uint64_t owner);

/* ---- channel layer (channel.c, channel_lend.c, channel_receive.c, channel_repair.c) ---- */

/* Mapping bytes for a channel of `slots` slots of `slot_size` bytes and
 * `max_subscribers` subscriber entries; 0 when out of range (slot_size 0,
 * slots outside 2..FSHM_CHANNEL_MAX_SLOTS, max_subscribers outside
 * 1..FSHM_CHANNEL_MAX_SUBSCRIBERS) or overflowing. */
size_t fshm_channel_size_for(uint64_t slot_size, uint32_t slots, uint32_t max_subscribers);
/* Lay a fresh channel over base and publish it: everything up to the
 * payloads is cleared first, but the lock words (base need not be
 * zero-filled there).  EINVAL for parameters out of range, history >= slots,
 * or unknown flags. */
int fshm_channel_init(fshm_channel *c, void *base, size_t size, uint64_t slot_size,
                      uint32_t slots, uint32_t history, uint32_t max_subscribers,
                      uint32_t flags);
/* Check an existing header and fill c: FSHM_EKIND for a segment or a queue,
 * FSHM_ENOTREADY / FSHM_EFORMAT / FSHM_EVERSION as fshm_seg_attach, and
 * FSHM_EPROTOCOL for a channel of the python backend (FSHM_CHANNEL_PYLOCK):
 * its lock is a flock, which this code's compare-and-swap does not exclude. */
int fshm_channel_attach(fshm_channel *c, void *base, size_t size);
/* Map and open a channel by name, as fshm_seg_open does for a segment.  A
 * created channel gets the parameters given; an existing one keeps its own,
 * which c then holds (the caller compares). */
int fshm_channel_open(fshm_channel *c, fshm_map *m, const char *name, int how,
                      uint64_t slot_size, uint32_t slots, uint32_t history,
                      uint32_t max_subscribers, uint32_t flags, unsigned mode);

/* Timeouts, as for queues: 0 never sleeps for a slot or a message, < 0
 * waits as long as it takes.  Calls that take the channel's lock (loan,
 * commit, subscribe, reclaim, evict) wait for it at most that long too:
 * FSHM_EBUSY (nothing changed) when another process held it until then;
 * with a zero timeout, about a millisecond.  EINTR when a signal arrived
 * while sleeping (nothing changed: call again).  The try_ forms never sleep,
 * not even for the lock: for callers that must let go of something (a
 * runtime's global lock) first; they then sleep in fshm_channel_wait_room
 * or fshm_channel_wait and try again. */

/* Borrow a slot to write a message of up to `size` bytes into.  FSHM_ETOOBIG
 * at once when size > slot_size; FSHM_EFULL when no slot came free before
 * the timeout (block mode: every slot holds a message some live subscriber
 * has not received, or is pinned or lent; overwrite mode: every slot is
 * pinned or lent).  A subscriber or publisher that died holding slots is
 * noticed within about 100 ms of the slots being needed, and its slots
 * reclaimed. */
int fshm_channel_loan(const fshm_channel *c, size_t size, fshm_loan *loan, int64_t timeout_ns);
int fshm_channel_try_loan(const fshm_channel *c, size_t size, fshm_loan *loan);
/* Publish the first `length` bytes of a loan as the next message; *seq gets
 * its number.  FSHM_ETOOBIG when length exceeds the slot; FSHM_ELOST when the
 * loan is no longer the caller's.  On FSHM_EBUSY or EINTR the loan is still
 * held: commit or discard it. */
int fshm_channel_commit(const fshm_channel *c, const fshm_loan *loan, size_t length,
                        int64_t timeout_ns, uint64_t *seq);
int fshm_channel_try_commit(const fshm_channel *c, const fshm_loan *loan, size_t length,
                            uint64_t *seq);
/* Give a loan back unpublished.  Never waits. */
int fshm_channel_discard(const fshm_channel *c, const fshm_loan *loan);
/* Loan, copy n bytes, commit: all or nothing (a commit that fails discards
 * the loan). */
int fshm_channel_publish(const fshm_channel *c, const void *src, size_t n, int64_t timeout_ns,
                         uint64_t *seq);
int fshm_channel_try_publish(const fshm_channel *c, const void *src, size_t n, uint64_t *seq);

/* Take a subscriber entry.  The subscription starts with the latest
 * messages still in place, up to `history` of them in a row, then every
 * new one.  FSHM_ESUBFULL when every entry is taken by a live process.
 * Entries of dead processes are reclaimed first.  A subscription, like a
 * loan, belongs to the calling process (a forked child gets FSHM_ELOST):
 * any of its threads may use it, but one receive at a time (a receive
 * moves the cursor); releases may come from any of them. */
int fshm_channel_subscribe(const fshm_channel *c, fshm_sub *sub, int64_t timeout_ns);
/* Give the entry up, and every slot it holds pinned.  Never waits. */
int fshm_channel_unsubscribe(const fshm_channel *c, const fshm_sub *sub);
/* The next message, pinned: *sample says where it lies; release it with
 * fshm_channel_release.  *missed (may be NULL) gets the number of messages
 * lost to overwriting since the previous receive (always 0 in block mode).
 * Sequence numbers only increase.  FSHM_ETIMEOUT when nothing came before the
 * timeout; FSHM_ELOST when the subscription is gone.  Never takes the lock. */
int fshm_channel_receive(const fshm_channel *c, const fshm_sub *sub, fshm_sample *sample,
                         uint64_t *missed, int64_t timeout_ns);
int fshm_channel_try_receive(const fshm_channel *c, const fshm_sub *sub, fshm_sample *sample,
                             uint64_t *missed);
/* The next message copied into dst (up to `capacity` bytes) and released
 * before returning: waits, counts and codes as fshm_channel_receive.
 * sample->length gets the message's length, sample->seq its number and
 * sample->slot the slot it lay in; sample->data is NULL and sample->offset
 * 0 (the slot is no longer held).  FSHM_ESMALL when the next message is
 * longer than capacity: sample->length and sample->seq are its, dst is
 * untouched, and nothing changed: the next receive gets it (in overwrite
 * mode unless it is overwritten meanwhile, which then counts as missed).
 * EINVAL for a NULL dst with a capacity. */
int fshm_channel_receive_into(const fshm_channel *c, const fshm_sub *sub, void *dst,
                              size_t capacity, fshm_sample *sample, uint64_t *missed,
                              int64_t timeout_ns);
int fshm_channel_try_receive_into(const fshm_channel *c, const fshm_sub *sub, void *dst,
                                  size_t capacity, fshm_sample *sample, uint64_t *missed);
/* Unpin a slot received earlier; releasing one not held is harmless.  Never
 * waits. */
int fshm_channel_release(const fshm_channel *c, const fshm_sub *sub, uint32_t slot);
/* Sleep, without spinning first, until a message the subscriber has not
 * received is published (0), or FSHM_ETIMEOUT, EINTR, FSHM_ELOST: a
 * binding's later slices, as fshm_queue_wait. */
int fshm_channel_wait(const fshm_channel *c, const fshm_sub *sub, int64_t timeout_ns);
/* Sleep, without spinning first, until a loan may find a slot (0), or
 * FSHM_ETIMEOUT, EINTR.  Every 100 ms it looks for dead subscribers and
 * publishers holding slots, and reclaims them. */
int fshm_channel_wait_room(const fshm_channel *c, int64_t timeout_ns);

/* Snapshots, without the lock. */
uint64_t fshm_channel_head(const fshm_channel *c);        /* the last message's number */
/* Subscribers whose process is alive (or cannot be judged): one system call
 * or two per entry in use, for tools rather than hot paths. */
uint32_t fshm_channel_subscribers(const fshm_channel *c);
/* Entry `index` (< max_subscribers; EINVAL otherwise). */
int fshm_channel_subscriber_info(const fshm_channel *c, uint32_t index, fshm_sub_info *info);
/* Reclaim now what dead subscribers and publishers hold (their entries,
 * pins and loans) instead of when slots run short. */
int fshm_channel_reclaim(const fshm_channel *c, int64_t timeout_ns);
/* Free subscriber entry `index` if it still belongs to `owner`
 * (FSHM_EAGAIN otherwise): for a subscriber that is gone but whose death
 * fshm_owner_dead cannot see (another pid namespace, a reused pid).  A live
 * subscriber evicted loses its subscription (FSHM_ELOST), and what it reads
 * from then on may be overwritten. */
int fshm_channel_evict(const fshm_channel *c, uint32_t index, uint64_t owner,
                       int64_t timeout_ns);
/* Take back slot `slot` if it is still lent to `owner` (FSHM_EAGAIN
 * otherwise), as if its loan were discarded: for a publisher that is gone
 * but whose death fshm_owner_dead cannot see.  A live publisher whose loan
 * is taken gets FSHM_ELOST from its commit, and what it writes from then
 * on may land in a message another publisher is writing. */
int fshm_channel_evict_loan(const fshm_channel *c, uint32_t slot, uint64_t owner,
                            int64_t timeout_ns);
/* The lock word, and fshm_break_lock's counterpart for a channel. */
uint64_t fshm_channel_lock_owner(const fshm_channel *c);
int fshm_channel_break_lock(const fshm_channel *c, uint64_t owner);

#ifdef __cplusplus
}
#endif
#endif /* FASTSHM_H */
