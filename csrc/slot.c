/*
 * The message format of docs/FORMAT.md: a 128-byte header and two payload
 * slots.  A store writes the slot that is not current and then publishes it
 * by advancing the header's store counter; the counter's lowest bit names
 * the current slot, so one atomic store publishes both the message and its
 * number.  Readers never wait for writers: a slot carries a sequence word
 * (odd while being written) and a reader re-checks it after its copy.
 */
#include "fastshm.h"
#include "atomics.h"
#include "internal.h"

#include <errno.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "fastshm's format is little-endian; big-endian hosts are not supported"
#endif

/* Header offsets (docs/FORMAT.md). */
#define H_MAGIC 0
#define H_VERSION 4
#define H_HEADER_SIZE 6
#define H_CAPACITY 8
#define H_SEQ 16
#define H_NOTIFY 24
#define H_WAITERS 28
#define H_LOCK 64
#define H_LOCK_WAKE 72
#define H_LOCK_WAITERS 76
#define H_LOCK_NEXT 80
/* Slot header offsets. */
#define S_SEQ 0
#define S_LENGTH 8

#define U64(base, off) ((uint64_t *)((unsigned char *)(base) + (off)))
#define U32(base, off) ((uint32_t *)((unsigned char *)(base) + (off)))
#define U16(base, off) ((uint16_t *)((unsigned char *)(base) + (off)))

/* How long fshm_wait spins before it sleeps, and how long one sleep of a
 * writer waiting for the lock lasts before it checks the owner is alive. */
#define WAIT_SPIN_NS FSHM_SPIN_MIN_NS
/* The longest a waiter sleeps before it looks at the counter again: a writer
 * killed between publishing a message and bumping the notify word leaves no
 * wake-up behind, and this bounds how late the waiter notices. */
#define WAIT_SLEEP_MAX_NS 100000000LL
#define LOCK_SPINS 200
#define LOCK_SLEEP_NS 2000000
/* A turn (lock_next) is given up by others after the lock sat free this long
 * for it; meanwhile they re-check every TURN_SLEEP_NS. */
#define TURN_MAX_NS 10000000LL
#define TURN_SLEEP_NS 1000000
/* The longest fshm_read_lock waits for the writer that holds the lock. */
#define READ_LOCK_MAX_NS 50000000LL
/* The largest store number: its slot word, 2 * seq, must not wrap. */
#define SEQ_MAX (UINT64_MAX >> 1)
/* How long an opener waits for another process to finish creating: when it
 * cannot tell whether that process is alive, and at most while it is. */
#define OPEN_READY_NS 1000000000LL
#define OPEN_CREATOR_NS 60000000000LL

size_t fshm_seg_size_for(uint64_t capacity)
{
    uint64_t rounded, stride, total;
    if (capacity == 0 || capacity > (UINT64_MAX >> 2))
        return 0;
    rounded = (capacity + (FSHM_ALIGN - 1)) & ~(uint64_t)(FSHM_ALIGN - 1);
    stride = FSHM_SLOT_HEADER_SIZE + rounded;
    total = FSHM_HEADER_SIZE + 2 * stride;
    if (total > (uint64_t)SIZE_MAX)
        return 0;
    return (size_t)total;
}

static unsigned char *slot_at(const fshm_seg *s, uint64_t seq)
{
    return s->base + FSHM_HEADER_SIZE + (size_t)((seq & 1) * s->stride);
}

static void fill_seg(fshm_seg *s, void *base, size_t size, uint64_t capacity)
{
    s->base = (unsigned char *)base;
    s->size = size;
    s->capacity = capacity;
    s->stride = FSHM_SLOT_HEADER_SIZE +
                ((capacity + (FSHM_ALIGN - 1)) & ~(uint64_t)(FSHM_ALIGN - 1));
    s->readonly = 0;
}

int fshm_seg_init(fshm_seg *s, void *base, size_t size, uint64_t capacity)
{
    size_t need = fshm_seg_size_for(capacity);
    if (base == NULL || need == 0 || need > size)
        return EINVAL;
    *U16(base, H_VERSION) = FSHM_VERSION;
    *U16(base, H_HEADER_SIZE) = FSHM_HEADER_SIZE;
    *U64(base, H_CAPACITY) = capacity;
    /* The creator's mark (fshm_seg_open) goes with the magic's arrival. */
    fshm_store64(U64(base, H_LOCK), 0, FSHM_RELAXED);
    /* Release: an opener that reads the magic with acquire (fshm_seg_attach)
     * sees every header field written above. */
    fshm_store32(U32(base, H_MAGIC), FSHM_MAGIC, FSHM_RELEASE);
    fill_seg(s, base, size, capacity);
    return 0;
}

int fshm_seg_attach(fshm_seg *s, void *base, size_t size)
{
    uint32_t magic;
    uint64_t capacity;
    size_t need;
    if (base == NULL || size < FSHM_HEADER_SIZE)
        return FSHM_EFORMAT;
    /* Acquire: pairs with the creator's release of the magic in
     * fshm_seg_init, so the fields read below are the creator's. */
    magic = fshm_load32(U32(base, H_MAGIC), FSHM_ACQUIRE);
    if (magic == 0)
        return FSHM_ENOTREADY;
    if (magic == FSHM_QUEUE_MAGIC || magic == FSHM_CHANNEL_MAGIC)
        return FSHM_EKIND;
    if (magic != FSHM_MAGIC)
        return FSHM_EFORMAT;
    if (*U16(base, H_VERSION) != FSHM_VERSION)
        return FSHM_EVERSION;
    if (*U16(base, H_HEADER_SIZE) != FSHM_HEADER_SIZE)
        return FSHM_EFORMAT;
    /* Read once: a process scribbling over the header cannot make the
     * value checked below differ from the value kept. */
    capacity = fshm_load64(U64(base, H_CAPACITY), FSHM_RELAXED);
    need = fshm_seg_size_for(capacity);
    if (need == 0 || need > size)
        return FSHM_EFORMAT;
    fill_seg(s, base, size, capacity);
    return 0;
}

int fshm_kind(const void *base, size_t size)
{
    uint32_t magic;
    if (base == NULL || size < 4)
        return 0;
    magic = fshm_load32(U32(base, H_MAGIC), FSHM_ACQUIRE);
    return magic == FSHM_MAGIC ? FSHM_KIND_SEGMENT
         : magic == FSHM_QUEUE_MAGIC ? FSHM_KIND_QUEUE
         : magic == FSHM_CHANNEL_MAGIC ? FSHM_KIND_CHANNEL : 0;
}

int fshm_kind_of(const char *name, int how, int *kind)
{
    fshm_map m;
    int rc;
    *kind = 0;
    /* Only the magic is read: a mapping of any size will do. */
    rc = fshm_map_open(&m, name, FSHM_ATTACH | (how & FSHM_ANY_OWNER), 0, 0);
    if (rc != 0)
        return rc;
    *kind = fshm_kind(m.base, m.size);
    fshm_unmap(m.base, m.size);
    return 0;
}

/* ---- opening: making an object, and taking over one whose maker died ---- */

/* The rest of making an object this process created or took over (it holds
 * the init lock): commit its memory, lay the header over it, publish it. */
static int finish_making(fshm_map *m, const char *name, unsigned mode,
                         int (*init)(void *obj, const fshm_map *m), void *obj)
{
    int rc = fshm__map_reserve(m);
    if (rc == 0)
        rc = init(obj, m);
    if (rc != 0) {
        /* Removed before the lock goes, so that nobody takes it over to
         * find the name gone beneath it. */
        fshm_unlink(name);
        fshm__map_release(m);
        return rc;
    }
    fshm__map_done(m, mode);
    return 0;
}

/* How fshm__open goes on after looking at an unfinished object. */
enum { OPEN_DONE, OPEN_AGAIN, OPEN_WAIT_ALIVE, OPEN_WAIT };

/* An object found unfinished (size 0, or magic 0): is a live process making
 * it, did its maker die, or can this process not tell?  Sets *next, and
 * returns the result for OPEN_DONE, or the error to give up with once the
 * waits are over. */
static int unfinished(fshm_map *m, const char *name, int how, int flags, size_t need,
                      unsigned mode, int found, int (*init)(void *obj, const fshm_map *m),
                      void *obj, int *next)
{
    uint64_t mark = 0, me = fshm_self_id();
    int state, rc, dead = -1, abandoned;

    *next = OPEN_DONE;
    rc = fshm__map_claim(m, name, flags, &state);
    if (rc == ENOENT) {
        *next = OPEN_AGAIN; /* removed meanwhile */
        return rc;
    }
    if (rc == FSHM_EBUSY) {
        *next = OPEN_WAIT_ALIVE; /* its maker holds the init lock */
        return FSHM_ENOTREADY;
    }
    if (rc != 0)
        return rc;
    if (m->size >= FSHM_HEADER_SIZE &&
        fshm_load32(U32(m->base, H_MAGIC), FSHM_ACQUIRE) != 0) {
        fshm__map_release(m);
        *next = OPEN_AGAIN; /* finished meanwhile */
        return FSHM_ENOTREADY;
    }
    if (m->size >= FSHM_HEADER_SIZE) {
        mark = fshm_load64(U64(m->base, H_LOCK), FSHM_ACQUIRE);
        if (mark != 0)
            dead = fshm_owner_dead(mark);
    }
    /* Abandoned: the making mark with nobody holding the init lock (a maker
     * holds it from before the object has a size to after the magic), or a
     * lock word naming a maker that is gone. */
    abandoned = ((state & FSHM__LOCKED) && (state & FSHM__MAKING)) || dead == 1;
    if (!abandoned) {
        fshm__map_release(m);
        /* A live maker of a fastshm without the init lock is waited for;
         * an object without a mark is not known to be fastshm's at all. */
        *next = mark != 0 && dead == 0 ? OPEN_WAIT_ALIVE : OPEN_WAIT;
        return found;
    }
    if ((how & FSHM_HOW_MASK) != FSHM_OPEN_OR_CREATE || m->readonly) {
        size_t size = m->size;
        fshm__map_release(m);
        if (size == 0 && dead != 1) {
            /* Perhaps its maker, between creating the name and taking the
             * lock: only an opener that may create can settle it now. */
            *next = OPEN_WAIT;
        }
        return FSHM_EABANDONED;
    }
    if (!(state & FSHM__LOCKED) && m->size < need) {
        fshm__map_release(m); /* no lock to grow it under */
        *next = OPEN_WAIT;
        return found;
    }
    if ((rc = fshm__map_adopt(m, need)) != 0) {
        fshm__map_release(m);
        return rc;
    }
    /* The mark changes hands by compare-and-swap, so that of two openers
     * taking over at once (without an init lock to order them) one wins;
     * the loser waits for the winner, which its lock word now names. */
    if (!fshm_cas64(U64(m->base, H_LOCK), &mark, me)) {
        m->created = 0;
        fshm__map_release(m);
        *next = OPEN_AGAIN;
        return FSHM_ENOTREADY;
    }
    if (fshm_load32(U32(m->base, H_MAGIC), FSHM_ACQUIRE) != 0) {
        /* Published after all (no init lock here), and the dead id was a
         * writer's that died holding the lock, taken over just now: free. */
        fshm__break_lock(m->base, me);
        m->created = 0;
        fshm__map_release(m);
        *next = OPEN_AGAIN;
        return FSHM_ENOTREADY;
    }
    /* Made anew: every header field the dead maker may have written goes,
     * but the magic (still 0) and the mark (now this process's). */
    memset((unsigned char *)m->base + H_VERSION, 0, H_LOCK - H_VERSION);
    memset((unsigned char *)m->base + H_LOCK + 8, 0, FSHM_HEADER_SIZE - H_LOCK - 8);
    return finish_making(m, name, mode, init, obj);
}

int fshm__open(fshm_map *m, const char *name, int how, size_t need, unsigned mode,
               int (*init)(void *obj, const fshm_map *m), void *obj)
{
    int64_t start = fshm_monotonic_ns();
    int64_t deadline = start + OPEN_READY_NS;
    int64_t backoff = 20000;
    int flags = how & FSHM_ANY_OWNER, rc, next, format_tries = 0;
    size_t format_size = 0;

    how &= FSHM_HOW_MASK;
    for (;;) {
        rc = fshm_map_open(m, name,
                           how | flags | FSHM_RESERVE | FSHM_DEFER_RESERVE | FSHM__INIT_LOCK,
                           need, mode);
        if (rc == FSHM_EAGAIN)
            continue; /* made anew by another opener before this one locked it */
        if (rc == 0 && m->created) {
            /* Reserving a large object takes a while (the kernel zeroes
             * every page): the creator's id in the lock word, before the
             * magic, tells openers meanwhile who is at work. */
            fshm_store64(U64(m->base, H_LOCK), fshm_self_id(), FSHM_RELEASE);
            return finish_making(m, name, mode, init, obj);
        }
        if (rc == 0) {
            size_t mapped = m->size;
            rc = init(obj, m);
            if (rc == 0)
                return 0;
            fshm_unmap(m->base, m->size);
            m->base = NULL;
            /* Mapped at the size a dead maker left, then taken over and
             * grown by another opener before this one read its header: the
             * header asks for more than was mapped.  Open it again while
             * its size keeps changing; the same size twice is a corrupt
             * header. */
            if (rc == FSHM_EFORMAT && mapped != format_size && format_tries++ < 16) {
                format_size = mapped;
                continue;
            }
        }
        if (rc != FSHM_ENOTREADY && rc != FSHM_EEMPTY)
            return rc;
        rc = unfinished(m, name, how, flags, need, mode, rc, init, obj, &next);
        if (next == OPEN_DONE)
            return rc;
        if (next == OPEN_AGAIN)
            continue;
        /* A maker at work is waited for while it lives (a minute at most:
         * a stopped one, or a pid reused); one that cannot be judged, or a
         * name of size 0, a bounded time. */
        if (next == OPEN_WAIT_ALIVE && fshm_monotonic_ns() - start < OPEN_CREATOR_NS)
            deadline = fshm_monotonic_ns() + OPEN_READY_NS;
        if (fshm_monotonic_ns() >= deadline)
            return rc;
        if (fshm_sleep_ns(backoff) == EINTR)
            return EINTR;
        if (backoff < 10000000)
            backoff *= 2;
    }
}

typedef struct seg_open_args {
    fshm_seg *s;
    uint64_t capacity;
} seg_open_args;

/* fshm__open's step for a segment: lay the header over what this call
 * created, or check the one found. */
static int seg_open_step(void *obj, const fshm_map *m)
{
    seg_open_args *a = (seg_open_args *)obj;
    int rc;
    if (m->created)
        return fshm_seg_init(a->s, m->base, m->size, a->capacity);
    rc = fshm_seg_attach(a->s, m->base, m->size);
    if (rc == 0)
        a->s->readonly = m->readonly;
    return rc;
}

int fshm_seg_open(fshm_seg *s, fshm_map *m, const char *name, int how,
                  uint64_t capacity, unsigned mode)
{
    seg_open_args a;
    size_t need = 0;
    if ((how & FSHM_HOW_MASK) != FSHM_ATTACH) {
        need = fshm_seg_size_for(capacity);
        if (need == 0)
            return EINVAL;
    }
    a.s = s;
    a.capacity = capacity;
    return fshm__open(m, name, how, need, mode, seg_open_step, &a);
}

/* ---- the writer lock ---- */

int64_t fshm__deadline(int64_t timeout_ns)
{
    int64_t start;
    if (timeout_ns < 0)
        return FSHM__NEVER;
    start = fshm_monotonic_ns();
    return timeout_ns > INT64_MAX - start ? FSHM__NEVER : start + timeout_ns;
}

/* 0 once this process holds the lock; EINTR when a signal arrived while it
 * slept (the caller lets its handler run, then tries again); FSHM_EBUSY when
 * the lock was still another's at the deadline (FSHM__NOW: after the spin),
 * so that a holder that is alive but stopped (SIGSTOP, a debugger) bounds
 * no caller's timeout.
 *
 * A compare-and-swap alone is unfair: a writer storing in a tight loop takes
 * the lock again before a woken waiter has even been scheduled, and a reader
 * that needs the lock (fshm_read_lock) could wait forever.  So a waiter that
 * has slept once names itself in lock_next, "my turn": the others leave a
 * free lock to it, and the unlock wakes everyone.  A turn whose owner is
 * dead, or that the lock has sat free for TURN_MAX_NS without its owner
 * taking it (a stopped process), is cleared by whoever notices. */
int fshm__lock_acquire(unsigned char *base, int64_t deadline)
{
    uint64_t *lock = U64(base, H_LOCK);
    uint64_t *next = U64(base, H_LOCK_NEXT);
    uint32_t *wake = U32(base, H_LOCK_WAKE);
    uint32_t *waiters = U32(base, H_LOCK_WAITERS);
    uint64_t me = fshm_self_id();
    unsigned spins = 0;
    int slept = 0;
    int64_t yielded_since = 0;

    for (;;) {
        uint64_t owner = 0, turn, mine;
        uint32_t v;
        int rc = 0;
        int64_t sleep_ns;
        turn = fshm_load64(next, FSHM_ACQUIRE);
        if (turn == 0 || turn == me) {
            /* Acquire on success: this writer sees the previous writer's
             * slot bytes and counter (released in lock_release). */
            if (fshm_cas64(lock, &owner, me)) {
                mine = me;
                if (turn == me)
                    fshm_cas64(next, &mine, 0); /* turn served */
                return 0;
            }
        } else {
            owner = fshm_load64(lock, FSHM_RELAXED);
        }
        if (spins < LOCK_SPINS) {
            spins++;
            fshm_cpu_relax();
            continue;
        }
        if (owner != 0 && fshm_owner_dead(owner) == 1) {
            /* The owner died holding the lock.  It can only have been
             * writing the slot that is not current, so taking over loses
             * nothing that was published. */
            if (fshm_cas64(lock, &owner, me)) {
                mine = me;
                fshm_cas64(next, &mine, 0);
                return 0;
            }
            continue;
        }
        if (turn != 0 && turn != me) {
            /* Someone else's turn: clear it if its owner is gone, or if the
             * lock has sat free too long for it. */
            int64_t now = fshm_monotonic_ns();
            if (owner != 0 || yielded_since == 0)
                yielded_since = now;
            if (fshm_owner_dead(turn) == 1 || now - yielded_since > TURN_MAX_NS) {
                fshm_cas64(next, &turn, 0);
                yielded_since = 0;
                continue;
            }
        } else {
            yielded_since = 0;
        }
        sleep_ns = turn != 0 && turn != me ? TURN_SLEEP_NS : LOCK_SLEEP_NS;
        if (deadline != FSHM__NEVER) {
            int64_t now = deadline == FSHM__NOW ? 0 : fshm_monotonic_ns();
            if (now >= deadline) {
                mine = me;
                fshm_cas64(next, &mine, 0); /* a turn it will not take */
                return FSHM_EBUSY;
            }
            if (deadline - now < sleep_ns)
                sleep_ns = deadline - now;
        }
        if (slept && turn == 0) {
            uint64_t none = 0;
            fshm_cas64(next, &none, me); /* my turn next */
        }
        fshm_add32(waiters, 1);
        /* Seq_cst: pairs with lock_release's increment of wake and load of
         * waiters, so either it sees this waiter or this waiter sees the
         * lock free or wake moved. */
        v = fshm_load32(wake, FSHM_SEQ_CST);
        turn = fshm_load64(next, FSHM_SEQ_CST);
        if (fshm_load64(lock, FSHM_SEQ_CST) != 0 || (turn != 0 && turn != me))
            rc = fshm_futex_wait(wake, v, sleep_ns);
        fshm_add32(waiters, -1);
        slept = 1;
        if (rc == EINTR) {
            mine = me;
            fshm_cas64(next, &mine, 0); /* give the turn back */
            return EINTR;
        }
    }
}

void fshm__lock_release(unsigned char *base)
{
    /* Release: the next writer's acquiring CAS sees our slot and counter. */
    fshm_store64(U64(base, H_LOCK), 0, FSHM_RELEASE);
    fshm_add32(U32(base, H_LOCK_WAKE), 1);
    /* With a turn named, wake every sleeper: the one whose turn it is may
     * not be the first in the kernel's queue. */
    if (fshm_load32(U32(base, H_LOCK_WAITERS), FSHM_SEQ_CST) != 0)
        fshm_futex_wake(U32(base, H_LOCK_WAKE),
                        fshm_load64(U64(base, H_LOCK_NEXT), FSHM_RELAXED) != 0);
}

static int lock_acquire(const fshm_seg *s, int64_t deadline)
{
    return fshm__lock_acquire(s->base, deadline);
}

static void lock_release(const fshm_seg *s)
{
    fshm__lock_release(s->base);
}

uint64_t fshm_lock_owner(const fshm_seg *s)
{
    return fshm_load64(U64(s->base, H_LOCK), FSHM_RELAXED);
}

int fshm__break_lock(unsigned char *base, uint64_t owner)
{
    /* Only the owner the caller judged gone: if the word moved meanwhile, a
     * live writer has it now and must keep it. */
    if (owner == 0 || !fshm_cas64(U64(base, H_LOCK), &owner, 0))
        return FSHM_EAGAIN;
    fshm_add32(U32(base, H_LOCK_WAKE), 1);
    fshm_futex_wake(U32(base, H_LOCK_WAKE), 1);
    return 0;
}

int fshm_break_lock(const fshm_seg *s, uint64_t owner)
{
    if (s->readonly)
        return EACCES;
    return fshm__break_lock(s->base, owner);
}

/* ---- store and load ---- */

static int store(const fshm_seg *s, const void *src, size_t n, uint64_t *seq,
                 int64_t deadline)
{
    unsigned char *slot;
    uint64_t next;
    int rc;

    if ((uint64_t)n > s->capacity)
        return FSHM_ETOOBIG;
    if (n > 0 && src == NULL)
        return EINVAL;
    if (s->readonly)
        return EACCES;
    if ((rc = lock_acquire(s, deadline)) != 0)
        return rc;
    /* Relaxed is enough: the lock's acquire already ordered us after the
     * previous writer's store of the counter. */
    next = fshm_load64(U64(s->base, H_SEQ), FSHM_RELAXED);
    /* A counter this high is a corrupt header (2^63 stores take millennia):
     * 2 * next would wrap, and the counter with it, back to "nothing
     * stored". */
    if (next++ >= SEQ_MAX) {
        lock_release(s);
        return FSHM_EFORMAT;
    }
    slot = slot_at(s, next);
    /* Release (free on x86 and ARMv8): a reader that sees this odd word also
     * sees the counter that made it possible, so its corruption check in
     * fshm_read_begin finds the counter moved and retries. */
    fshm_store64(U64(slot, S_SEQ), 2 * next - 1, FSHM_RELEASE);
    /* Release fence: a reader that sees any byte written below also sees
     * the odd slot word, so its re-check in fshm_read_end fails. */
    fshm_fence(FSHM_RELEASE);
    fshm_store64(U64(slot, S_LENGTH), (uint64_t)n, FSHM_RELAXED);
    if (n > 0)
        memcpy(slot + FSHM_SLOT_HEADER_SIZE, src, n);
    /* Release: a reader that sees the even slot word sees the whole
     * payload and its length. */
    fshm_store64(U64(slot, S_SEQ), 2 * next, FSHM_RELEASE);
    /* Release: publishes the message; readers load the counter with
     * acquire and find the slot it names complete. */
    fshm_store64(U64(s->base, H_SEQ), next, FSHM_RELEASE);
    /* Seq_cst increment, then seq_cst load of the waiter count: pairs with
     * fshm_wait, which registers itself before it reads the counter, so a
     * sleeping waiter is always woken. */
    fshm_add32(U32(s->base, H_NOTIFY), 1);
    if (fshm_load32(U32(s->base, H_WAITERS), FSHM_SEQ_CST) != 0)
        fshm_futex_wake(U32(s->base, H_NOTIFY), 1);
    lock_release(s);
    if (seq != NULL)
        *seq = next;
    return 0;
}

int fshm_store(const fshm_seg *s, const void *src, size_t n, uint64_t *seq)
{
    return store(s, src, n, seq, FSHM__NEVER);
}

int fshm_try_store(const fshm_seg *s, const void *src, size_t n, uint64_t *seq)
{
    return store(s, src, n, seq, FSHM__NOW);
}

int fshm_store_timed(const fshm_seg *s, const void *src, size_t n, int64_t timeout_ns,
                     uint64_t *seq)
{
    /* The first try spins for the lock and reads no clock. */
    int rc = store(s, src, n, seq, FSHM__NOW);
    if (rc != FSHM_EBUSY)
        return rc;
    return store(s, src, n, seq,
                 fshm__deadline(timeout_ns == 0 ? FSHM__LOCK_GRACE_NS : timeout_ns));
}

int fshm_read_begin(const fshm_seg *s, fshm_read *r)
{
    unsigned attempts = 0;
    for (;;) {
        /* Acquire: pairs with the writer's publishing store; the slot the
         * counter names is complete. */
        uint64_t seq = fshm_load64(U64(s->base, H_SEQ), FSHM_ACQUIRE);
        unsigned char *slot;
        uint64_t token, length;
        if (seq == 0) {
            r->offset = FSHM_HEADER_SIZE + FSHM_SLOT_HEADER_SIZE;
            r->length = 0;
            r->seq = 0;
            r->token = 0;
            return 0;
        }
        if (seq > SEQ_MAX)
            return FSHM_EFORMAT;
        slot = slot_at(s, seq);
        /* Acquire: pairs with the writer's release of the even slot word;
         * the length read next belongs to that message. */
        token = fshm_load64(U64(slot, S_SEQ), FSHM_ACQUIRE);
        length = fshm_load64(U64(slot, S_LENGTH), FSHM_RELAXED);
        if (token == 2 * seq && length <= s->capacity) {
            r->offset = (size_t)(slot - s->base) + FSHM_SLOT_HEADER_SIZE;
            r->length = (size_t)length;
            r->seq = seq;
            r->token = token;
            return 0;
        }
        /* Writers never touch the current slot, so a counter that has not
         * moved while its slot looks wrong means a corrupt header. */
        fshm_fence(FSHM_ACQUIRE);
        if (fshm_load64(U64(s->base, H_SEQ), FSHM_RELAXED) == seq)
            return FSHM_EFORMAT;
        if (++attempts > 64)
            fshm_sleep_ns(0);
        else
            fshm_cpu_relax();
    }
}

int fshm_read_end(const fshm_seg *s, const fshm_read *r)
{
    if (r->seq == 0)
        return 0;
    /* Acquire fence: the caller's reads of the payload happen before this
     * re-check of the slot word (the reader half of the seqlock). */
    fshm_fence(FSHM_ACQUIRE);
    if (fshm_load64(U64(slot_at(s, r->seq), S_SEQ), FSHM_RELAXED) != r->token)
        return FSHM_EAGAIN;
    return 0;
}

int fshm_read_lock(const fshm_seg *s, fshm_read *r)
{
    int rc;
    if (s->readonly)
        return EACCES;
    /* Bounded: a writer stopped with the lock (SIGSTOP, a debugger) spoils
     * no copy, so its caller can go back to copying without it. */
    if ((rc = lock_acquire(s, fshm__deadline(READ_LOCK_MAX_NS))) != 0)
        return rc;
    if ((rc = fshm_read_begin(s, r)) != 0)
        lock_release(s);
    return rc;
}

void fshm_read_unlock(const fshm_seg *s)
{
    lock_release(s);
}

int fshm_intact(const fshm_seg *s, uint64_t seq)
{
    if (seq == 0)
        return 1;
    if (seq > SEQ_MAX)
        return 0;
    /* Acquire fence: the caller's reads of the payload happen before this
     * look at the slot word, which the next writer of the slot makes odd
     * before it touches a byte (as in fshm_read_end). */
    fshm_fence(FSHM_ACQUIRE);
    return fshm_load64(U64(slot_at(s, seq), S_SEQ), FSHM_RELAXED) == 2 * seq;
}

static int load(const fshm_seg *s, void *dst, size_t dst_cap, size_t *n, uint64_t *seq,
                int may_lock)
{
    fshm_read r;
    unsigned tries = 0;
    int64_t since = 0;
    for (;;) {
        int locked = 0, rc;
        if (++tries > FSHM_LOAD_TRIES) {
            int64_t now = fshm_monotonic_ns();
            if (since == 0)
                since = now;
            if (now - since < FSHM_LOAD_LOCKFREE_NS)
                tries = FSHM_LOAD_TRIES; /* short copies: keep trying lock-free */
            else if (!may_lock)
                return FSHM_EAGAIN;
            else
                locked = !s->readonly;
        }
        rc = locked ? fshm_read_lock(s, &r) : fshm_read_begin(s, &r);
        if (rc == FSHM_EBUSY) {
            tries = 0; /* its writer is stopped: lock-free copies hold again */
            since = 0;
            continue;
        }
        if (rc != 0)
            return rc;
        if (r.length > dst_cap) {
            rc = fshm_read_end(s, &r);
            if (locked)
                fshm_read_unlock(s);
            if (rc != 0)
                continue;
            *n = r.length;
            if (seq != NULL)
                *seq = r.seq;
            return FSHM_ESMALL;
        }
        if (r.length > 0)
            memcpy(dst, s->base + r.offset, r.length);
        /* Checked under the lock too: a python-backend writer claims the
         * lock word without a compare-and-swap and may not have seen us. */
        rc = fshm_read_end(s, &r);
        if (locked)
            fshm_read_unlock(s);
        if (rc == 0) {
            *n = r.length;
            if (seq != NULL)
                *seq = r.seq;
            return 0;
        }
    }
}

int fshm_load(const fshm_seg *s, void *dst, size_t dst_cap, size_t *n,
              uint64_t *seq)
{
    return load(s, dst, dst_cap, n, seq, 1);
}

int fshm_try_load(const fshm_seg *s, void *dst, size_t dst_cap, size_t *n,
                  uint64_t *seq)
{
    return load(s, dst, dst_cap, n, seq, 0);
}

uint64_t fshm_seq(const fshm_seg *s)
{
    /* Acquire: a caller that then loads sees that message or a newer one. */
    return fshm_load64(U64(s->base, H_SEQ), FSHM_ACQUIRE);
}

/* ---- waiting for the next store ---- */

int64_t fshm_spin_next(int64_t spin_ns, int64_t elapsed_ns)
{
    /* Spin a little past the recent arrivals; forget them when they come
     * later than spinning is worth (or not at all). */
    int64_t target = elapsed_ns >= 0 && elapsed_ns <= FSHM_SPIN_MAX_NS
                         ? elapsed_ns + elapsed_ns / 2 : FSHM_SPIN_MIN_NS;
    if (spin_ns < FSHM_SPIN_MIN_NS || spin_ns > FSHM_SPIN_MAX_NS)
        spin_ns = FSHM_SPIN_MIN_NS;
    spin_ns += (target - spin_ns) / 4;
    if (spin_ns < FSHM_SPIN_MIN_NS)
        return FSHM_SPIN_MIN_NS;
    return spin_ns > FSHM_SPIN_MAX_NS ? FSHM_SPIN_MAX_NS : spin_ns;
}

/* A read-only waiter cannot register in the header: it polls the counter
 * with a growing sleep (20 us, doubling up to 1 ms). */
static int poll_counter(const fshm_seg *s, uint64_t after, int64_t deadline,
                        uint64_t *seq)
{
    int64_t step = 20000;
    for (;;) {
        int64_t now;
        *seq = fshm_load64(U64(s->base, H_SEQ), FSHM_ACQUIRE);
        if (*seq > after)
            return 0;
        now = fshm_monotonic_ns();
        if (now >= deadline)
            return FSHM_ETIMEOUT;
        fshm_sleep_ns(step < deadline - now ? step : deadline - now);
        if (step < 1000000)
            step *= 2;
    }
}

int fshm_wait(const fshm_seg *s, uint64_t after, int64_t timeout_ns,
              uint64_t *seq)
{
    return fshm_wait_spin(s, after, timeout_ns, WAIT_SPIN_NS, seq);
}

int fshm_wait_spin(const fshm_seg *s, uint64_t after, int64_t timeout_ns,
                   int64_t spin_ns, uint64_t *seq)
{
    uint64_t *counter = U64(s->base, H_SEQ);
    uint32_t *notify = U32(s->base, H_NOTIFY);
    uint32_t *waiters = U32(s->base, H_WAITERS);
    int64_t start = fshm_monotonic_ns();
    int64_t deadline = (timeout_ns < 0 || timeout_ns > INT64_MAX - start)
                           ? INT64_MAX : start + timeout_ns;
    unsigned spins = 0;
    int rc = 0;
    uint64_t now_seq;

    /* Spin first: a store that comes within a few tens of microseconds is
     * seen without a system call on the writer's side.  Every 64 rounds the
     * spinner yields its core, in case the writer is waiting for one: with
     * more runnable processes than cores, a pure spin would hold the core the
     * writer needs for the whole spin. */
    for (;;) {
        now_seq = fshm_load64(counter, FSHM_ACQUIRE);
        if (now_seq > after) {
            *seq = now_seq;
            return 0;
        }
        if ((++spins & 63) == 0) {
            int64_t now = fshm_monotonic_ns();
            if (now - start >= spin_ns || now >= deadline)
                break;
            fshm_sleep_ns(0);
        }
        fshm_cpu_relax();
    }

    if (s->readonly)
        return poll_counter(s, after, deadline, seq);
    fshm_add32(waiters, 1);
    for (;;) {
        int64_t now;
        /* Seq_cst, after registering: pairs with fshm_store's increment of
         * notify and load of waiters (a Dekker pair), so a store either
         * sees this waiter and wakes it, or is seen here. */
        uint32_t v = fshm_load32(notify, FSHM_SEQ_CST);
        now_seq = fshm_load64(counter, FSHM_SEQ_CST);
        if (now_seq > after)
            break;
        now = fshm_monotonic_ns();
        if (now >= deadline) {
            rc = FSHM_ETIMEOUT;
            break;
        }
        rc = fshm_futex_wait(notify, v, deadline - now < WAIT_SLEEP_MAX_NS
                                            ? deadline - now : WAIT_SLEEP_MAX_NS);
        if (rc == EINTR)
            break;
        rc = 0;
    }
    fshm_add32(waiters, -1);
    *seq = now_seq;
    return rc;
}
