/*
 * Shared between the channel's files (the channel is described at the top
 * of channel.c), not part of the public API: the layout of docs/FORMAT.md
 * ("Channels") as offsets and accessors, and what more than one of the
 * files needs.
 *
 *   channel.c          the layout's sizes, creating and attaching,
 *                      subscribing, snapshots
 *   channel_lend.c     lending slots: loan, commit, publish, discard, and
 *                      waiting for room
 *   channel_receive.c  receiving: receive, receive_into, release, and
 *                      waiting for messages
 *   channel_repair.c   repairs under the lock, sweeps, reclaiming what dead
 *                      processes hold, evictions and breaking the lock
 *
 * The small helpers of the hot paths are static __inline here, so that each
 * file inlines them as the single file did.
 */
#ifndef FASTSHM_CHANNEL_INTERNAL_H
#define FASTSHM_CHANNEL_INTERNAL_H

#include "fastshm.h"
#include "atomics.h"
#include "internal.h"

#include <errno.h>
#include <stdint.h>

/* Header offsets (docs/FORMAT.md, "Channels"). */
#define C_MAGIC 0
#define C_VERSION 4
#define C_HEADER_SIZE 6
#define C_SLOT_SIZE 8
#define C_HEAD 16
#define C_NOTIFY 24        /* the offsets of a segment's notify and waiters, */
#define C_WAITERS 28       /* where Windows keys its wake-up semaphore */
#define C_SLOTS 32
#define C_MAX_SUBS 36
#define C_HISTORY 40
#define C_FLAGS 44
#define C_ROOM 48          /* Windows: a third semaphore, for channels only */
#define C_ROOM_WAITERS 52
#define C_PAYLOAD 56
#define C_LOCK 64
#define C_DIRTY 88
#define C_FREE_COUNT 92
#define C_SUB_MASK 96
#define C_SWEEP_AT 104
#define C_CHECKED_AT 112
#define HEADER FSHM_CHANNEL_HEADER_SIZE

/* A slot's entry in the slot table (64 bytes: one cache line, so readers
 * pinning neighbouring slots do not share one). */
#define SLOT_ENTRY 64
#define S_WORD 0
#define S_LENGTH 8
#define S_PINS 16
#define S_LOANER 24
#define S_LOANED_AT 32
/* A subscriber's entry (64 bytes). */
#define SUB_ENTRY 64
#define SUB_OWNER 0
#define SUB_CURSOR 8
#define SUB_MISSED 16
#define SUB_GEN 24
#define SUB_RECEIVED 32
#define SUB_PENDING 40

#define U64(base, off) ((uint64_t *)((unsigned char *)(base) + (off)))
#define U32(base, off) ((uint32_t *)((unsigned char *)(base) + (off)))
#define U16(base, off) ((uint16_t *)((unsigned char *)(base) + (off)))

/* The largest message number: its word, (k << 1) | 1, must not wrap. */
#define NUMBER_MAX (UINT64_MAX >> 2)
#define PAGE 4096

/* How long a blocked call spins before it sleeps, and the longest one sleep
 * lasts (a process killed between its change and its wake-up leaves none
 * behind; a dead subscriber is looked for at this pace). */
#define SPIN_NS FSHM_SPIN_MIN_NS
#define SLEEP_MAX_NS 100000000LL

static __inline uint64_t round_up(uint64_t n, uint64_t to)
{
    return (n + (to - 1)) & ~(to - 1);
}

/* ---- geometry ---- */

/* Offsets of the tables after the header; slots <= FSHM_CHANNEL_MAX_SLOTS
 * and subscribers <= 64 keep them far from overflowing. */
static __inline uint64_t index_offset(uint32_t slots)
{
    return HEADER + (uint64_t)slots * SLOT_ENTRY;
}

static __inline uint64_t free_offset(uint32_t slots)
{
    return index_offset(slots) + round_up((uint64_t)slots * 4, 64);
}

static __inline uint64_t subs_offset(uint32_t slots)
{
    return free_offset(slots) + round_up((uint64_t)slots * 4, 64);
}

static __inline unsigned char *slot_entry(const fshm_channel *c, uint32_t s)
{
    return c->base + HEADER + (size_t)s * SLOT_ENTRY;
}

static __inline uint32_t *index_at(const fshm_channel *c, uint64_t k)
{
    return U32(c->base, index_offset(c->slots) + (k % c->slots) * 4);
}

static __inline uint32_t *free_at(const fshm_channel *c, uint32_t i)
{
    return U32(c->base, free_offset(c->slots) + (uint64_t)i * 4);
}

static __inline unsigned char *sub_at(const fshm_channel *c, uint32_t i)
{
    return c->base + subs_offset(c->slots) + (size_t)i * SUB_ENTRY;
}

static __inline unsigned char *payload_at(const fshm_channel *c, uint32_t s)
{
    return c->base + c->payload_offset + (size_t)s * c->stride;
}

/* The subscriber-mask bits that can name an entry. */
static __inline uint64_t all_subs(const fshm_channel *c)
{
    return c->max_subscribers == 64 ? UINT64_MAX : ((uint64_t)1 << c->max_subscribers) - 1;
}

static __inline int overwrite(const fshm_channel *c)
{
    return (c->flags & FSHM_CHANNEL_OVERWRITE) != 0;
}

/* A block-mode publisher of large messages holds the slots its stream
 * cycles through (the unread ones, the one being read and the one being
 * written) to at most PACE_BYTES while its slowest subscriber keeps reading
 * (channel_lend.c paces).  They then stay within the last-level cache for
 * frames of a few MB, where a full ring of them does not, and a reader that
 * finds each message cold copies it at DRAM speed.  Once a ring of such
 * messages is full, the reader falls behind for good (each message it
 * reads is cold, so it stays the slower side): pacing keeps it from
 * filling, and drains it again.  Slots over 5.3 MiB (and up to 8) go in
 * lockstep: the publisher writes one while the reader reads the one before,
 * two slots taking turns.  Slots larger than half of PACE_BYTES are not
 * paced: they do not fit in the cache even two at a time, and a publisher
 * held to lockstep with its reader would wait for each wake-up; nor are
 * rings whose N slots fit (pacing would never hold a publisher back). */
#define PACE_BYTES (16LL << 20)

static __inline int paced(const fshm_channel *c)
{
    return !overwrite(c) && 2 * c->stride <= (uint64_t)PACE_BYTES &&
           (uint64_t)c->slots * c->stride > (uint64_t)PACE_BYTES;
}

/* ---- wake-ups ---- */

/* After a slot may have come free: tell sleeping publishers
 * (channel_lend.c). */
void fshm__channel_notify_room(const fshm_channel *c);

/* The same, for the hot paths (release, discard): only when a publisher
 * sleeps.  The caller's change was a seq_cst read-modify-write or store;
 * with this seq_cst load of the sleeper count it pairs with wait_room's
 * increment of the count and seq_cst look at the slots, so either the
 * sleeper sees the change or this sees the sleeper. */
static __inline void maybe_notify_room(const fshm_channel *c)
{
    if (fshm_load32(U32(c->base, C_ROOM_WAITERS), FSHM_SEQ_CST) != 0)
        fshm__channel_notify_room(c);
}

/* ---- the lock, and repairs ---- */

static __inline void begin_change(const fshm_channel *c)
{
    /* Release fence: whoever reads a change that follows with acquire (or
     * after an acquire fence) sees the mark too.  (A holder that dies
     * leaves its stores to be found by the next one: on x86 and in the
     * kernel's futex handover they are all visible to it once the lock
     * word is, and the repair looks at every slot either way.) */
    fshm_store32(U32(c->base, C_DIRTY), 1, FSHM_RELAXED);
    fshm_fence(FSHM_RELEASE);
}

static __inline void end_change(const fshm_channel *c)
{
    /* Release: the mark goes only after every change is visible. */
    fshm_store32(U32(c->base, C_DIRTY), 0, FSHM_RELEASE);
}

/* Under the lock: take slot e, which holds the message whose word is
 * `word`, unless a reader holds it pinned.  Only the lock holder writes a
 * word, so no compare-and-swap is needed. */
static __inline int claim(unsigned char *e, uint64_t word)
{
    /* Seq_cst store of the odd word, then seq_cst load of the pins: pairs
     * with receive_once's seq_cst pin and re-read of the word, so a reader
     * that pinned the slot either is seen here (and keeps the message) or
     * sees the odd word (and waits for the decision). */
    fshm_store64(U64(e, S_WORD), word | 1, FSHM_SEQ_CST);
    if (fshm_load64(U64(e, S_PINS), FSHM_SEQ_CST) != 0) {
        /* Release: a reader waiting on the odd word that sees the message
         * again sees it whole. */
        fshm_store64(U64(e, S_WORD), word, FSHM_RELEASE);
        return 0;
    }
    fshm_store64(U64(e, S_WORD), 0, FSHM_RELAXED);
    return 1;
}

/* channel_repair.c's, each described there: */
/* Under the lock: reclaim dead subscribers' entries; 1 when any was dropped. */
int fshm__channel_reclaim_subscribers(const fshm_channel *c);
/* Under the lock: put every slot in order, rebuild the free stack. */
int fshm__channel_sweep(const fshm_channel *c, int live);
/* Under the lock, after a process died holding it: everything in order. */
void fshm__channel_repair(const fshm_channel *c);
/* Under the lock: whether it is time to ask who is alive (then noted). */
int fshm__channel_liveness_check(const fshm_channel *c);
/* With the lock if it is free: reclaim what dead processes hold, if due. */
void fshm__channel_reclaim_if_due(const fshm_channel *c);

static __inline int lock_channel(const fshm_channel *c, int64_t deadline)
{
    int rc;
    if (c->readonly)
        return EACCES;
    if ((rc = fshm__lock_acquire(c->base, deadline)) != 0)
        return rc;
    if (fshm_load32(U32(c->base, C_DIRTY), FSHM_RELAXED) != 0) {
        fshm__channel_repair(c);
        /* What the dead holder held may be free now: publishers sleeping
         * for room try again (rare: woken under the lock, they wait for
         * it briefly). */
        fshm__channel_notify_room(c);
    }
    return 0;
}

/* The deadline of a call that found the lock busy (the try forms never
 * sleep): a short grace for a zero timeout, else the call's.  Computed then
 * rather than up front, as a queue's, so an uncontended call reads no
 * clock. */
static __inline int64_t channel_deadline(int64_t timeout_ns)
{
    return fshm__deadline(timeout_ns == 0 ? FSHM__LOCK_GRACE_NS : timeout_ns);
}

/* ---- subscribing ---- */

/* The subscription's entry if it is still the caller's: 0 with *e set,
 * FSHM_ELOST, EINVAL or EACCES. */
static __inline int own_entry(const fshm_channel *c, const fshm_sub *sub, unsigned char **e)
{
    if (sub == NULL || sub->index >= c->max_subscribers)
        return EINVAL;
    if (c->readonly)
        return EACCES;
    *e = sub_at(c, sub->index);
    if (fshm_load64(U64(*e, SUB_OWNER), FSHM_RELAXED) != fshm_self_id() ||
        fshm_load64(U64(*e, SUB_GEN), FSHM_RELAXED) != sub->gen)
        return FSHM_ELOST;
    return 0;
}

#endif /* FASTSHM_CHANNEL_INTERNAL_H */
