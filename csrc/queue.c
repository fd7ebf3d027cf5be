/*
 * The queue format of docs/FORMAT.md ("Queues"): a 128-byte header and a
 * ring of records, each a u64 length, the payload, and padding to 8 bytes.
 * `head` and `tail` count the bytes ever taken and ever put; their
 * difference is what is queued, and a record at counter p lies at p modulo
 * the ring's capacity (a payload may wrap around the end).
 *
 * Producers and consumers take the writer lock of segments (slot.c), at the
 * same header offsets.  Everything a put or a take changes becomes visible
 * by one store of `tail` or `head`: a process killed before that store
 * changed nothing, one killed after it finished its work.  The message count
 * is a second word, so an operation marks the header `dirty` while it runs;
 * whoever takes the lock next and finds the mark recounts the records.
 */
#include "fastshm.h"
#include "atomics.h"
#include "internal.h"

#include <errno.h>
#include <string.h>

/* Header offsets (docs/FORMAT.md). */
#define Q_MAGIC 0
#define Q_VERSION 4
#define Q_HEADER_SIZE 6
#define Q_CAPACITY 8
#define Q_HEAD 16
#define Q_NOTIFY 24     /* the same offsets as a segment's notify and waiters: */
#define Q_WAITERS 28    /* Windows keys its wake-up semaphore on them */
#define Q_TAIL 32
#define Q_COUNT 40
#define Q_FLAGS 48
#define Q_LOCK 64
#define Q_DIRTY 88
#define Q_RING FSHM_HEADER_SIZE
#define REC FSHM_QUEUE_RECORD_HEADER

#define U64(base, off) ((uint64_t *)((unsigned char *)(base) + (off)))
#define U32(base, off) ((uint32_t *)((unsigned char *)(base) + (off)))
#define U16(base, off) ((uint16_t *)((unsigned char *)(base) + (off)))

/* The smallest ring: one record of up to 8 bytes. */
#define MIN_CAPACITY 16
/* How long a blocked put or take spins before it sleeps, and the longest
 * one sleep lasts before it looks again (a process killed between its
 * commit and its wake-up leaves none behind). */
#define SPIN_NS FSHM_SPIN_MIN_NS
#define SLEEP_MAX_NS 100000000LL

static uint64_t round8(uint64_t n)
{
    return (n + 7) & ~(uint64_t)7;
}

size_t fshm_queue_size_for(uint64_t capacity)
{
    uint64_t ring;
    if (capacity < MIN_CAPACITY || capacity > (UINT64_MAX >> 2))
        return 0;
    ring = round8(capacity);
    if (Q_RING + ring > (uint64_t)SIZE_MAX)
        return 0;
    return (size_t)(Q_RING + ring);
}

uint64_t fshm_queue_max_message(uint64_t capacity)
{
    /* 0 for every capacity no queue can have, as fshm_queue_size_for says:
     * past the range, round8 would wrap to 0 and the subtraction with it. */
    return fshm_queue_size_for(capacity) == 0 ? 0 : round8(capacity) - REC;
}

static void fill(fshm_queue *q, void *base, size_t size, uint64_t capacity,
                 uint32_t flags)
{
    q->base = (unsigned char *)base;
    q->size = size;
    q->capacity = capacity;
    q->flags = flags;
    q->readonly = 0;
}

int fshm_queue_init(fshm_queue *q, void *base, size_t size, uint64_t capacity,
                    uint32_t flags)
{
    size_t need = fshm_queue_size_for(capacity);
    if (base == NULL || need == 0 || need > size || (flags & ~FSHM_QUEUE_PYLOCK))
        return EINVAL;
    capacity = round8(capacity);
    *U16(base, Q_VERSION) = FSHM_QUEUE_VERSION;
    *U16(base, Q_HEADER_SIZE) = FSHM_HEADER_SIZE;
    *U64(base, Q_CAPACITY) = capacity;
    *U32(base, Q_FLAGS) = flags;
    fshm_store64(U64(base, Q_LOCK), 0, FSHM_RELAXED);
    /* Release: an opener that reads the magic with acquire sees the rest. */
    fshm_store32(U32(base, Q_MAGIC), FSHM_QUEUE_MAGIC, FSHM_RELEASE);
    fill(q, base, size, capacity, flags);
    return 0;
}

int fshm_queue_attach(fshm_queue *q, void *base, size_t size)
{
    uint32_t magic, flags;
    uint64_t capacity;
    size_t need;
    if (base == NULL || size < FSHM_HEADER_SIZE)
        return FSHM_EFORMAT;
    magic = fshm_load32(U32(base, Q_MAGIC), FSHM_ACQUIRE);
    if (magic == 0)
        return FSHM_ENOTREADY;
    if (magic == FSHM_MAGIC)
        return FSHM_EKIND;
    if (magic != FSHM_QUEUE_MAGIC)
        return FSHM_EFORMAT;
    if (*U16(base, Q_VERSION) != FSHM_QUEUE_VERSION)
        return FSHM_EVERSION;
    if (*U16(base, Q_HEADER_SIZE) != FSHM_HEADER_SIZE)
        return FSHM_EFORMAT;
    /* Read once and kept: later scribbles on the header cannot move the
     * ring's bounds. */
    capacity = fshm_load64(U64(base, Q_CAPACITY), FSHM_RELAXED);
    flags = fshm_load32(U32(base, Q_FLAGS), FSHM_RELAXED);
    need = fshm_queue_size_for(capacity);
    if (need == 0 || need > size || (capacity & 7) || (flags & ~FSHM_QUEUE_PYLOCK))
        return FSHM_EFORMAT;
    fill(q, base, size, capacity, flags);
    return 0;
}

typedef struct queue_open_args {
    fshm_queue *q;
    uint64_t capacity;
    uint32_t flags;
} queue_open_args;

static int queue_open_step(void *obj, const fshm_map *m)
{
    queue_open_args *a = (queue_open_args *)obj;
    int rc;
    if (m->created)
        return fshm_queue_init(a->q, m->base, m->size, a->capacity, a->flags);
    rc = fshm_queue_attach(a->q, m->base, m->size);
    if (rc == 0)
        a->q->readonly = m->readonly;
    return rc;
}

int fshm_queue_open(fshm_queue *q, fshm_map *m, const char *name, int how,
                    uint64_t capacity, uint32_t flags, unsigned mode)
{
    queue_open_args a;
    size_t need = 0;
    if ((how & FSHM_HOW_MASK) != FSHM_ATTACH) {
        need = fshm_queue_size_for(capacity);
        if (need == 0 || (flags & ~FSHM_QUEUE_PYLOCK))
            return EINVAL;
    }
    a.q = q;
    a.capacity = capacity;
    a.flags = flags;
    return fshm__open(m, name, how, need, mode, queue_open_step, &a);
}

/* ---- the ring ---- */

static unsigned char *ring_at(const fshm_queue *q, uint64_t pos)
{
    return q->base + Q_RING + (size_t)(pos % q->capacity);
}

static void copy_in(const fshm_queue *q, uint64_t pos, const void *src, size_t n)
{
    size_t off = (size_t)(pos % q->capacity);
    size_t first = (size_t)q->capacity - off;
    if (first > n)
        first = n;
    if (first > 0)
        memcpy(q->base + Q_RING + off, src, first);
    if (n > first)
        memcpy(q->base + Q_RING, (const unsigned char *)src + first, n - first);
}

static void copy_out(const fshm_queue *q, uint64_t pos, void *dst, size_t n)
{
    size_t off = (size_t)(pos % q->capacity);
    size_t first = (size_t)q->capacity - off;
    if (first > n)
        first = n;
    if (first > 0)
        memcpy(dst, q->base + Q_RING + off, first);
    if (n > first)
        memcpy((unsigned char *)dst + first, q->base + Q_RING, n - first);
}

/* head and tail as the lock holder sees them, checked: a corrupt header is
 * an error, never a reach outside the ring. */
static int positions(const fshm_queue *q, uint64_t *head, uint64_t *tail)
{
    *head = fshm_load64(U64(q->base, Q_HEAD), FSHM_RELAXED);
    *tail = fshm_load64(U64(q->base, Q_TAIL), FSHM_RELAXED);
    if (((*head | *tail) & 7) || *tail - *head > q->capacity)
        return FSHM_EFORMAT;
    return 0;
}

/* The length of the record at pos, checked against the bytes queued after
 * pos; 0 with *len set, or FSHM_EFORMAT. */
static int record_at(const fshm_queue *q, uint64_t pos, uint64_t tail, uint64_t *len)
{
    uint64_t n = fshm_load64((uint64_t *)ring_at(q, pos), FSHM_RELAXED);
    if (n > q->capacity - REC || REC + round8(n) > tail - pos)
        return FSHM_EFORMAT;
    *len = n;
    return 0;
}

/* After a process died inside a put or a take (the dirty mark is still
 * there): head and tail are each whole, only the count may be stale. */
static int recount(const fshm_queue *q)
{
    uint64_t head, tail, pos, len, n = 0;
    int rc = positions(q, &head, &tail);
    if (rc != 0)
        return rc;
    for (pos = head; pos != tail; pos += REC + round8(len), n++) {
        if ((rc = record_at(q, pos, tail, &len)) != 0)
            return rc;
    }
    fshm_store64(U64(q->base, Q_COUNT), n, FSHM_RELAXED);
    fshm_store32(U32(q->base, Q_DIRTY), 0, FSHM_RELEASE);
    return 0;
}

static int lock_queue(const fshm_queue *q, int64_t deadline)
{
    int rc;
    if (q->readonly)
        return EACCES;
    if (q->flags & FSHM_QUEUE_PYLOCK)
        return FSHM_EPROTOCOL;
    if ((rc = fshm__lock_acquire(q->base, deadline)) != 0)
        return rc;
    if (fshm_load32(U32(q->base, Q_DIRTY), FSHM_RELAXED) != 0 && (rc = recount(q)) != 0) {
        fshm__lock_release(q->base);
        return rc;
    }
    return 0;
}

/* Mark the header before the first change: a release fence keeps the mark
 * ahead of the stores of head, tail and count that follow. */
static void mark_dirty(const fshm_queue *q)
{
    fshm_store32(U32(q->base, Q_DIRTY), 1, FSHM_RELAXED);
    fshm_fence(FSHM_RELEASE);
}

/* Release: the mark goes only after every change is visible. */
static void mark_clean(const fshm_queue *q)
{
    fshm_store32(U32(q->base, Q_DIRTY), 0, FSHM_RELEASE);
}

/* After a commit, outside the lock: tell sleepers of either side.  The
 * seq_cst increment, then the seq_cst load of the sleeper count, pair with
 * wait_until (a Dekker pair), as in a segment's store. */
static void notify(const fshm_queue *q)
{
    fshm_add32(U32(q->base, Q_NOTIFY), 1);
    if (fshm_load32(U32(q->base, Q_WAITERS), FSHM_SEQ_CST) != 0)
        fshm_futex_wake(U32(q->base, Q_NOTIFY), 1);
}

/* Whether a waiter can go on: data queued (room == 0), or room for `room`
 * bytes of records. */
static int ready(const fshm_queue *q, uint64_t room, int order)
{
    uint64_t head = fshm_load64(U64(q->base, Q_HEAD), order);
    uint64_t tail = fshm_load64(U64(q->base, Q_TAIL), order);
    if (room == 0)
        return tail != head;
    return tail - head <= q->capacity && q->capacity - (tail - head) >= room;
}

/* The deadline of a put or take that found the lock busy (the try forms
 * never sleep): a short grace for a zero timeout, else the call's.  Computed
 * then rather than up front, so an uncontended call reads no clock. */
static int64_t lock_deadline(int64_t timeout_ns)
{
    return fshm__deadline(timeout_ns == 0 ? FSHM__LOCK_GRACE_NS : timeout_ns);
}

/* Until ready(q, room): spin for spin_ns, then sleep on the notify word.
 * FSHM_ETIMEOUT at the deadline, EINTR on a signal. */
static int wait_until(const fshm_queue *q, uint64_t room, int64_t deadline, int64_t spin_ns)
{
    uint32_t *word = U32(q->base, Q_NOTIFY);
    uint32_t *waiters = U32(q->base, Q_WAITERS);
    int64_t start = fshm_monotonic_ns();
    unsigned spins = 0;
    int rc = 0;

    for (;;) {
        if (ready(q, room, FSHM_ACQUIRE))
            return 0;
        if ((++spins & 63) == 0) {
            int64_t now = fshm_monotonic_ns();
            if (now >= deadline)
                return FSHM_ETIMEOUT;
            if (now - start >= spin_ns)
                break;
            fshm_sleep_ns(0);
        }
        fshm_cpu_relax();
    }
    fshm_add32(waiters, 1);
    for (;;) {
        int64_t now;
        uint32_t v = fshm_load32(word, FSHM_SEQ_CST);
        if (ready(q, room, FSHM_SEQ_CST))
            break;
        now = fshm_monotonic_ns();
        if (now >= deadline) {
            rc = FSHM_ETIMEOUT;
            break;
        }
        rc = fshm_futex_wait(word, v, deadline - now < SLEEP_MAX_NS ? deadline - now
                                                                   : SLEEP_MAX_NS);
        if (rc == EINTR)
            break;
        rc = 0;
    }
    fshm_add32(waiters, -1);
    return rc;
}

int fshm_queue_wait(const fshm_queue *q, uint64_t room, int64_t timeout_ns)
{
    if (q->readonly)
        return EACCES;
    if (q->flags & FSHM_QUEUE_PYLOCK)
        return FSHM_EPROTOCOL;
    if (room > q->capacity)
        return FSHM_ETOOBIG;
    if (timeout_ns == 0)
        return ready(q, room, FSHM_ACQUIRE) ? 0 : FSHM_ETIMEOUT;
    return wait_until(q, room, fshm__deadline(timeout_ns), 0);
}

/* ---- put ---- */

/* The ring bytes of a batch; 0 when it could never fit. */
static uint64_t batch_bytes(const fshm_queue *q, const fshm_msg *msgs, size_t count)
{
    uint64_t need = 0;
    size_t i;
    for (i = 0; i < count; i++) {
        uint64_t n = (uint64_t)msgs[i].len;
        if (n > q->capacity - REC)
            return 0;
        need += REC + round8(n);
        if (need > q->capacity)
            return 0;
    }
    return need;
}

/* One attempt under the lock: 0, FSHM_EFULL, or a lock error. */
static int put_once(const fshm_queue *q, const fshm_msg *msgs, size_t count,
                    uint64_t need, int64_t deadline)
{
    uint64_t head, tail, pos, n;
    size_t i;
    int rc = lock_queue(q, deadline);
    if (rc != 0)
        return rc;
    if ((rc = positions(q, &head, &tail)) != 0)
        goto out;
    if (q->capacity - (tail - head) < need) {
        rc = FSHM_EFULL;
        goto out;
    }
    mark_dirty(q);
    /* The records go beyond tail, where no reader looks until the store of
     * tail below. */
    for (i = 0, pos = tail; i < count; i++) {
        n = (uint64_t)msgs[i].len;
        fshm_store64((uint64_t *)ring_at(q, pos), n, FSHM_RELAXED);
        if (n > 0)
            copy_in(q, pos + REC, msgs[i].data, (size_t)n);
        pos += REC + round8(n);
    }
    /* Release: whoever takes the lock, or sees tail move while waiting, sees
     * the records. */
    fshm_store64(U64(q->base, Q_TAIL), pos, FSHM_RELEASE);
    n = fshm_load64(U64(q->base, Q_COUNT), FSHM_RELAXED);
    fshm_store64(U64(q->base, Q_COUNT), n + count, FSHM_RELAXED);
    mark_clean(q);
out:
    fshm__lock_release(q->base);
    if (rc == 0)
        notify(q);
    return rc;
}

static int put_many(const fshm_queue *q, const fshm_msg *msgs, size_t count,
                    int64_t timeout_ns, int nonblock)
{
    uint64_t need;
    int64_t deadline;
    size_t i;
    int rc, timed;

    if (count == 0)
        return 0;
    if (msgs == NULL)
        return EINVAL;
    for (i = 0; i < count; i++)
        if (msgs[i].len > 0 && msgs[i].data == NULL)
            return EINVAL;
    if ((need = batch_bytes(q, msgs, count)) == 0)
        return FSHM_ETOOBIG;
    deadline = FSHM__NOW; /* the first try spins for the lock, no more */
    timed = nonblock;
    for (;;) {
        rc = put_once(q, msgs, count, need, deadline);
        if (rc == FSHM_EBUSY && !timed) {
            deadline = lock_deadline(timeout_ns);
            timed = 1;
            continue;
        }
        if (rc != FSHM_EFULL || nonblock || timeout_ns == 0)
            return rc;
        if (!timed) {
            deadline = lock_deadline(timeout_ns);
            timed = 1;
        }
        rc = wait_until(q, need, deadline, SPIN_NS);
        if (rc == FSHM_ETIMEOUT)
            return FSHM_EFULL;
        if (rc != 0)
            return rc;
    }
}

int fshm_queue_put(const fshm_queue *q, const void *src, size_t n, int64_t timeout_ns)
{
    fshm_msg m;
    m.data = src;
    m.len = n;
    return put_many(q, &m, 1, timeout_ns, 0);
}

int fshm_queue_put_many(const fshm_queue *q, const fshm_msg *msgs, size_t count,
                        int64_t timeout_ns)
{
    return put_many(q, msgs, count, timeout_ns, 0);
}

int fshm_queue_try_put_many(const fshm_queue *q, const fshm_msg *msgs, size_t count)
{
    return put_many(q, msgs, count, 0, 1);
}

/* ---- take ---- */

static int take_once(const fshm_queue *q, fshm_take_fn take, void *ctx, size_t max,
                     size_t *taken, int64_t deadline)
{
    uint64_t head, tail, pos, len, n;
    size_t got = 0;
    int rc = lock_queue(q, deadline);
    if (rc != 0)
        return rc;
    if ((rc = positions(q, &head, &tail)) != 0)
        goto out;
    if (head == tail) {
        rc = FSHM_ENOMSG;
        goto out;
    }
    for (pos = head; got < max && pos != tail; got++) {
        void *dst;
        if ((rc = record_at(q, pos, tail, &len)) != 0)
            break;
        if ((dst = take(ctx, (size_t)len)) == NULL)
            break;
        if (len > 0)
            copy_out(q, pos + REC, dst, (size_t)len);
        pos += REC + round8(len);
    }
    if (got > 0) {
        /* One commit for the batch: a process killed before it has taken
         * nothing; the records stay for the next take. */
        mark_dirty(q);
        fshm_store64(U64(q->base, Q_HEAD), pos, FSHM_RELEASE);
        n = fshm_load64(U64(q->base, Q_COUNT), FSHM_RELAXED);
        fshm_store64(U64(q->base, Q_COUNT), n >= got ? n - got : 0, FSHM_RELAXED);
        mark_clean(q);
        rc = 0; /* a corrupt record after good ones: return those first */
    }
out:
    fshm__lock_release(q->base);
    *taken = got;
    if (got > 0)
        notify(q);
    return rc;
}

static int take(const fshm_queue *q, fshm_take_fn fn, void *ctx, size_t max,
                size_t *taken, int64_t timeout_ns, int nonblock)
{
    int64_t deadline;
    int rc, timed;
    *taken = 0;
    if (fn == NULL || max == 0)
        return EINVAL;
    deadline = FSHM__NOW; /* the first try spins for the lock, no more */
    timed = nonblock;
    for (;;) {
        rc = take_once(q, fn, ctx, max, taken, deadline);
        if (rc == FSHM_EBUSY && !timed) {
            deadline = lock_deadline(timeout_ns);
            timed = 1;
            continue;
        }
        if (rc != FSHM_ENOMSG || nonblock || timeout_ns == 0)
            return rc;
        if (!timed) {
            deadline = lock_deadline(timeout_ns);
            timed = 1;
        }
        rc = wait_until(q, 0, deadline, SPIN_NS);
        if (rc == FSHM_ETIMEOUT)
            return FSHM_ENOMSG;
        if (rc != 0)
            return rc;
    }
}

int fshm_queue_take(const fshm_queue *q, fshm_take_fn fn, void *ctx, size_t max,
                    size_t *taken, int64_t timeout_ns)
{
    return take(q, fn, ctx, max, taken, timeout_ns, 0);
}

int fshm_queue_try_take(const fshm_queue *q, fshm_take_fn fn, void *ctx, size_t max,
                        size_t *taken)
{
    return take(q, fn, ctx, max, taken, 0, 1);
}

typedef struct into_ctx {
    void *dst;
    size_t cap;
    size_t len;
} into_ctx;

static void *take_into(void *ctx, size_t len)
{
    into_ctx *c = (into_ctx *)ctx;
    c->len = len;
    return len <= c->cap ? (c->dst != NULL ? c->dst : (void *)c) : NULL;
}

int fshm_queue_get(const fshm_queue *q, void *dst, size_t dst_cap, size_t *n,
                   int64_t timeout_ns)
{
    into_ctx c;
    size_t taken;
    int rc;
    if (dst == NULL && dst_cap > 0)
        return EINVAL;
    c.dst = dst;
    c.cap = dst_cap;
    c.len = 0;
    rc = fshm_queue_take(q, take_into, &c, 1, &taken, timeout_ns);
    *n = c.len;
    if (rc == 0 && taken == 0)
        return FSHM_ESMALL;
    return rc;
}

typedef struct packed_ctx {
    unsigned char *dst;
    size_t cap;
    size_t used;
    size_t *lens;
    size_t n;
} packed_ctx;

static void *take_packed(void *ctx, size_t len)
{
    packed_ctx *c = (packed_ctx *)ctx;
    unsigned char *at;
    if (len > c->cap - c->used) {
        if (c->n == 0)
            c->lens[0] = len; /* what the first message needs */
        return NULL;
    }
    c->lens[c->n++] = len;
    if (len == 0)
        return c; /* nothing to copy; dst may be NULL, and NULL + 0 is undefined */
    at = c->dst + c->used;
    c->used += len;
    return at;
}

int fshm_queue_get_packed(const fshm_queue *q, void *dst, size_t dst_cap, size_t *lens,
                          size_t max, size_t *taken, int64_t timeout_ns)
{
    packed_ctx c;
    int rc;
    *taken = 0;
    if ((dst == NULL && dst_cap > 0) || lens == NULL)
        return EINVAL;
    c.dst = (unsigned char *)dst;
    c.cap = dst_cap;
    c.used = 0;
    c.lens = lens;
    c.n = 0;
    rc = fshm_queue_take(q, take_packed, &c, max, taken, timeout_ns);
    if (rc == 0 && *taken == 0)
        return FSHM_ESMALL;
    return rc;
}

/* ---- snapshots and the lock ---- */

/* The records from head to tail counted without the lock, as a reader
 * sees them: head unchanged across the walk means no consumer took a record
 * meanwhile, so no producer can have rewritten one (producers write only
 * from tail to head + capacity).  0 with *n set; FSHM_EAGAIN when takes kept
 * moving head, FSHM_EFORMAT for records that cannot be walked. */
static int count_records(const fshm_queue *q, uint64_t *n)
{
    unsigned attempt;
    for (attempt = 0; attempt < 8; attempt++) {
        /* Acquire: pairs with the release of tail in a put, so the records
         * up to it are whole. */
        uint64_t head = fshm_load64(U64(q->base, Q_HEAD), FSHM_ACQUIRE);
        uint64_t tail = fshm_load64(U64(q->base, Q_TAIL), FSHM_ACQUIRE);
        uint64_t pos, len, k = 0;
        int rc = 0;
        if (((head | tail) & 7) || tail - head > q->capacity)
            rc = FSHM_EFORMAT;
        for (pos = head; rc == 0 && pos != tail; pos += REC + round8(len), k++)
            rc = record_at(q, pos, tail, &len);
        /* Acquire fence: the record reads above happen before this look. */
        fshm_fence(FSHM_ACQUIRE);
        if (fshm_load64(U64(q->base, Q_HEAD), FSHM_RELAXED) != head)
            continue; /* a take meanwhile: the walk may have read reused bytes */
        if (rc == 0)
            *n = k;
        return rc;
    }
    return FSHM_EAGAIN;
}

uint64_t fshm_queue_count(const fshm_queue *q)
{
    uint32_t dirty = fshm_load32(U32(q->base, Q_DIRTY), FSHM_ACQUIRE);
    uint64_t count = fshm_load64(U64(q->base, Q_COUNT), FSHM_ACQUIRE);
    uint64_t head = fshm_load64(U64(q->base, Q_HEAD), FSHM_ACQUIRE);
    uint64_t tail = fshm_load64(U64(q->base, Q_TAIL), FSHM_ACQUIRE);
    uint64_t owner, n;
    /* Every record takes at least 8 bytes: a count that says otherwise, or
     * "none" with records queued, was left by a holder killed between its
     * store of tail or head and its store of count (or is mid-commit). */
    int plausible = (count == 0) == (head == tail) && count <= (tail - head) / REC;
    if (!dirty && plausible)
        return count;
    if (dirty && plausible) {
        /* A live holder is committing and fixes the count in a moment; a
         * dead one left it for the next lock holder, which may be long in
         * coming.  Only then is the walk worth its cost. */
        owner = fshm_load64(U64(q->base, Q_LOCK), FSHM_RELAXED);
        if (owner != 0 && fshm_owner_dead(owner) != 1)
            return count;
    }
    if (count_records(q, &n) == 0)
        return n;
    return count;
}

uint64_t fshm_queue_used(const fshm_queue *q)
{
    uint64_t head = fshm_load64(U64(q->base, Q_HEAD), FSHM_ACQUIRE);
    uint64_t tail = fshm_load64(U64(q->base, Q_TAIL), FSHM_ACQUIRE);
    /* Two loads, not one moment: takes and puts between them can make the
     * difference exceed the ring. */
    return tail - head > q->capacity ? q->capacity : tail - head;
}

uint64_t fshm_queue_lock_owner(const fshm_queue *q)
{
    return fshm_load64(U64(q->base, Q_LOCK), FSHM_RELAXED);
}

int fshm_queue_break_lock(const fshm_queue *q, uint64_t owner)
{
    if (q->readonly)
        return EACCES;
    return fshm__break_lock(q->base, owner);
}
