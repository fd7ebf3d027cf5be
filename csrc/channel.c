/*
 * The channel format of docs/FORMAT.md ("Channels"): zero-copy
 * publish/subscribe over a ring of fixed-size slots.
 *
 * A publisher borrows a slot under the writer lock (the lock of segments
 * and queues, at the same header offsets), writes the payload into it
 * without any lock, and commits it under the lock as message head + 1: the
 * slot's word becomes k << 1, the index ring's entry k % N names the slot,
 * and the store of `head` publishes it.  A subscriber never takes the lock:
 * it finds message k through the index, sets its bit in the slot's `pins`
 * and checks that the word still says k; a pinned slot is never lent again
 * until the bit is cleared.  In block mode a subscriber's cursor protects
 * every message from it on; in overwrite mode nothing does, and a publisher
 * that takes a slot holding a message first marks the word odd ("deciding"),
 * then looks at the pins: either it sees a reader's pin and backs off, or
 * the reader sees the odd word (a Dekker pair of seq_cst operations).
 *
 * Everything a process holds is named by its id (fshm_self_id): a loan by
 * the slot's `loaner`, a subscription by its entry's `owner`.  What a dead
 * process held is reclaimed by whoever needs it, with the lock held: a
 * crash inside the lock leaves `dirty` set and the next holder repairs
 * every slot at once; a loan or subscription left by a dead process is
 * found when slots run short, checked at most every LIVENESS_NS.
 */
#include "fastshm.h"
#include "atomics.h"
#include "internal.h"

#include <errno.h>
#include <string.h>

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
/* How often, at most, processes are asked whether they are alive (a system
 * call or two each) while slots are short. */
#define LIVENESS_NS 100000000LL
/* How long a reader waits for a publisher deciding whether it may take the
 * slot the reader has just pinned (a few instructions under the lock,
 * unless the publisher was preempted or died there): after that the
 * message counts as lost. */
#define DECIDE_WAIT_NS 200000LL

/* The largest message fshm_channel_publish copies with the lock held (a
 * larger one is lent, copied, then committed). */
#define PUBLISH_IN_LOCK 4096

/* What receive_once returns when there is nothing to receive. */
#define NOTHING 1

static uint64_t round_up(uint64_t n, uint64_t to)
{
    return (n + (to - 1)) & ~(to - 1);
}

/* ---- geometry ---- */

/* Offsets of the tables after the header; slots <= FSHM_CHANNEL_MAX_SLOTS
 * and subscribers <= 64 keep them far from overflowing. */
static uint64_t index_offset(uint32_t slots)
{
    return HEADER + (uint64_t)slots * SLOT_ENTRY;
}

static uint64_t free_offset(uint32_t slots)
{
    return index_offset(slots) + round_up((uint64_t)slots * 4, 64);
}

static uint64_t subs_offset(uint32_t slots)
{
    return free_offset(slots) + round_up((uint64_t)slots * 4, 64);
}

static uint64_t payload_offset_for(uint32_t slots, uint32_t max_subscribers)
{
    return round_up(subs_offset(slots) + (uint64_t)max_subscribers * SUB_ENTRY, PAGE);
}

/* Payloads 64-aligned, and page-aligned from a page up: an array laid over
 * one is aligned for any element type. */
static uint64_t stride_for(uint64_t slot_size)
{
    return round_up(slot_size, slot_size >= PAGE ? PAGE : 64);
}

size_t fshm_channel_size_for(uint64_t slot_size, uint32_t slots, uint32_t max_subscribers)
{
    uint64_t stride, start;
    if (slot_size == 0 || slot_size > (UINT64_MAX >> 2) || slots < 2 ||
        slots > FSHM_CHANNEL_MAX_SLOTS || max_subscribers < 1 ||
        max_subscribers > FSHM_CHANNEL_MAX_SUBSCRIBERS)
        return 0;
    stride = stride_for(slot_size);
    start = payload_offset_for(slots, max_subscribers);
    if (stride > (UINT64_MAX - start) / slots || start + stride * slots > (uint64_t)SIZE_MAX)
        return 0;
    return (size_t)(start + stride * slots);
}

static unsigned char *slot_entry(const fshm_channel *c, uint32_t s)
{
    return c->base + HEADER + (size_t)s * SLOT_ENTRY;
}

static uint32_t *index_at(const fshm_channel *c, uint64_t k)
{
    return U32(c->base, index_offset(c->slots) + (k % c->slots) * 4);
}

static uint32_t *free_at(const fshm_channel *c, uint32_t i)
{
    return U32(c->base, free_offset(c->slots) + (uint64_t)i * 4);
}

static unsigned char *sub_at(const fshm_channel *c, uint32_t i)
{
    return c->base + subs_offset(c->slots) + (size_t)i * SUB_ENTRY;
}

static unsigned char *payload_at(const fshm_channel *c, uint32_t s)
{
    return c->base + c->payload_offset + (size_t)s * c->stride;
}

/* The subscriber-mask bits that can name an entry. */
static uint64_t all_subs(const fshm_channel *c)
{
    return c->max_subscribers == 64 ? UINT64_MAX : ((uint64_t)1 << c->max_subscribers) - 1;
}

static int overwrite(const fshm_channel *c)
{
    return (c->flags & FSHM_CHANNEL_OVERWRITE) != 0;
}

/* ---- opening ---- */

static void fill_channel(fshm_channel *c, void *base, size_t size, uint64_t slot_size,
                         uint32_t slots, uint32_t history, uint32_t max_subscribers,
                         uint32_t flags)
{
    c->base = (unsigned char *)base;
    c->size = size;
    c->slot_size = slot_size;
    c->stride = stride_for(slot_size);
    c->payload_offset = payload_offset_for(slots, max_subscribers);
    c->slots = slots;
    c->max_subscribers = max_subscribers;
    c->history = history;
    c->flags = flags;
    c->readonly = 0;
}

int fshm_channel_init(fshm_channel *c, void *base, size_t size, uint64_t slot_size,
                      uint32_t slots, uint32_t history, uint32_t max_subscribers,
                      uint32_t flags)
{
    size_t need = fshm_channel_size_for(slot_size, slots, max_subscribers);
    uint32_t i;
    if (base == NULL || need == 0 || need > size || history >= slots ||
        (flags & ~FSHM_CHANNEL_OVERWRITE))
        return EINVAL;
    fill_channel(c, base, size, slot_size, slots, history, max_subscribers, flags);
    /* A channel made anew over an object whose maker died (fshm__open takes
     * those over) may hold what that maker wrote, for other parameters
     * perhaps: every word up to the payloads starts at zero, but the magic
     * (still 0) and the lock words (the maker's mark). */
    memset((unsigned char *)base + C_VERSION, 0, C_LOCK - C_VERSION);
    memset((unsigned char *)base + C_DIRTY, 0, (size_t)c->payload_offset - C_DIRTY);
    *U16(base, C_VERSION) = FSHM_CHANNEL_VERSION;
    *U16(base, C_HEADER_SIZE) = HEADER;
    *U64(base, C_SLOT_SIZE) = slot_size;
    *U32(base, C_SLOTS) = slots;
    *U32(base, C_MAX_SUBS) = max_subscribers;
    *U32(base, C_HISTORY) = history;
    *U32(base, C_FLAGS) = flags;
    *U64(base, C_PAYLOAD) = c->payload_offset;
    /* Every slot free, slot 0 on top. */
    for (i = 0; i < slots; i++)
        *free_at(c, i) = slots - 1 - i;
    *U32(base, C_FREE_COUNT) = slots;
    *U64(base, C_SWEEP_AT) = slots;
    /* The creator's mark (fshm__open) goes with the magic's arrival. */
    fshm_store64(U64(base, C_LOCK), 0, FSHM_RELAXED);
    /* Release: an opener that reads the magic with acquire sees the rest. */
    fshm_store32(U32(base, C_MAGIC), FSHM_CHANNEL_MAGIC, FSHM_RELEASE);
    return 0;
}

int fshm_channel_attach(fshm_channel *c, void *base, size_t size)
{
    uint32_t magic, slots, max_subs, history, flags;
    uint64_t slot_size, payload;
    size_t need;
    if (base == NULL || size < 4)
        return FSHM_EFORMAT;
    /* Acquire: pairs with the creator's release of the magic.  The kind is
     * told before the size is judged: a small queue is still a queue. */
    magic = fshm_load32(U32(base, C_MAGIC), FSHM_ACQUIRE);
    if (magic == 0)
        return FSHM_ENOTREADY;
    if (magic == FSHM_MAGIC || magic == FSHM_QUEUE_MAGIC)
        return FSHM_EKIND;
    if (magic != FSHM_CHANNEL_MAGIC || size < HEADER)
        return FSHM_EFORMAT;
    if (*U16(base, C_VERSION) != FSHM_CHANNEL_VERSION)
        return FSHM_EVERSION;
    if (*U16(base, C_HEADER_SIZE) != HEADER)
        return FSHM_EFORMAT;
    /* Read once and kept: later scribbles on the header cannot move the
     * tables or the payloads. */
    slot_size = fshm_load64(U64(base, C_SLOT_SIZE), FSHM_RELAXED);
    slots = fshm_load32(U32(base, C_SLOTS), FSHM_RELAXED);
    max_subs = fshm_load32(U32(base, C_MAX_SUBS), FSHM_RELAXED);
    history = fshm_load32(U32(base, C_HISTORY), FSHM_RELAXED);
    flags = fshm_load32(U32(base, C_FLAGS), FSHM_RELAXED);
    payload = fshm_load64(U64(base, C_PAYLOAD), FSHM_RELAXED);
    need = fshm_channel_size_for(slot_size, slots, max_subs);
    if (need == 0 || need > size || history >= slots ||
        (flags & ~(FSHM_CHANNEL_OVERWRITE | FSHM_CHANNEL_PYLOCK)) ||
        payload != payload_offset_for(slots, max_subs))
        return FSHM_EFORMAT;
    /* Made by the python backend, whose processes change the channel under
     * a flock and never with the atomics this code relies on (the pin's
     * read-modify-write, the claim's Dekker pair): the two would not
     * exclude each other, so this side keeps out. */
    if (flags & FSHM_CHANNEL_PYLOCK)
        return FSHM_EPROTOCOL;
    fill_channel(c, base, size, slot_size, slots, history, max_subs, flags);
    return 0;
}

typedef struct channel_open_args {
    fshm_channel *c;
    uint64_t slot_size;
    uint32_t slots, history, max_subscribers, flags;
} channel_open_args;

static int channel_open_step(void *obj, const fshm_map *m)
{
    channel_open_args *a = (channel_open_args *)obj;
    int rc;
    if (m->created)
        return fshm_channel_init(a->c, m->base, m->size, a->slot_size, a->slots, a->history,
                                 a->max_subscribers, a->flags);
    rc = fshm_channel_attach(a->c, m->base, m->size);
    if (rc == 0)
        a->c->readonly = m->readonly;
    return rc;
}

int fshm_channel_open(fshm_channel *c, fshm_map *m, const char *name, int how,
                      uint64_t slot_size, uint32_t slots, uint32_t history,
                      uint32_t max_subscribers, uint32_t flags, unsigned mode)
{
    channel_open_args a;
    size_t need = 0;
    if ((how & FSHM_HOW_MASK) != FSHM_ATTACH) {
        need = fshm_channel_size_for(slot_size, slots, max_subscribers);
        if (need == 0 || history >= slots || (flags & ~FSHM_CHANNEL_OVERWRITE))
            return EINVAL;
    }
    a.c = c;
    a.slot_size = slot_size;
    a.slots = slots;
    a.history = history;
    a.max_subscribers = max_subscribers;
    a.flags = flags;
    return fshm__open(m, name, how, need, mode, channel_open_step, &a);
}

/* ---- wake-ups ---- */

/* After a publish: tell sleeping subscribers.  The seq_cst increment, then
 * the seq_cst load of the sleeper count, pair with wait_message (a Dekker
 * pair), as a segment's store does. */
static void notify_subscribers(const fshm_channel *c)
{
    fshm_add32(U32(c->base, C_NOTIFY), 1);
    if (fshm_load32(U32(c->base, C_WAITERS), FSHM_SEQ_CST) != 0)
        fshm_futex_wake(U32(c->base, C_NOTIFY), 1);
}

/* After a slot may have come free: tell sleeping publishers. */
static void notify_room(const fshm_channel *c)
{
    fshm_add32(U32(c->base, C_ROOM), 1);
    if (fshm_load32(U32(c->base, C_ROOM_WAITERS), FSHM_SEQ_CST) != 0)
        fshm_futex_wake(U32(c->base, C_ROOM), 1);
}

/* After a message was published: the slot its loan held is one that a
 * waiting publisher may now take when nobody must read it first (overwrite
 * mode, or no live subscriber in block mode), so tell sleeping publishers
 * then.  The seq_cst fence orders the publish before the load of the
 * sleeper count, as maybe_notify_room's caller's seq_cst change does. */
static void notify_published(const fshm_channel *c)
{
    notify_subscribers(c);
    if (!overwrite(c) && fshm_load64(U64(c->base, C_SUB_MASK), FSHM_RELAXED) != 0)
        return; /* block mode: every live subscriber must receive it first */
    fshm_fence(FSHM_SEQ_CST);
    if (fshm_load32(U32(c->base, C_ROOM_WAITERS), FSHM_SEQ_CST) != 0)
        notify_room(c);
}

/* The same, for the hot paths (release, discard): only when a publisher
 * sleeps.  The caller's change was a seq_cst read-modify-write or store;
 * with this seq_cst load of the sleeper count it pairs with wait_room's
 * increment of the count and seq_cst look at the slots, so either the
 * sleeper sees the change or this sees the sleeper. */
static void maybe_notify_room(const fshm_channel *c)
{
    if (fshm_load32(U32(c->base, C_ROOM_WAITERS), FSHM_SEQ_CST) != 0)
        notify_room(c);
}

/* ---- the lock, and repairs ---- */

static void begin_change(const fshm_channel *c)
{
    /* Release fence: whoever reads a change that follows with acquire (or
     * after an acquire fence) sees the mark too.  (A holder that dies
     * leaves its stores to be found by the next one: on x86 and in the
     * kernel's futex handover they are all visible to it once the lock
     * word is, and the repair looks at every slot either way.) */
    fshm_store32(U32(c->base, C_DIRTY), 1, FSHM_RELAXED);
    fshm_fence(FSHM_RELEASE);
}

static void end_change(const fshm_channel *c)
{
    /* Release: the mark goes only after every change is visible. */
    fshm_store32(U32(c->base, C_DIRTY), 0, FSHM_RELEASE);
}

/* Under the lock: whether message k is committed and still reachable in
 * slot s (the index names s for it, and it is one of the last N). */
static int reachable(const fshm_channel *c, uint32_t s, uint64_t k, uint64_t head)
{
    return k >= 1 && k <= head && head - k < c->slots &&
           fshm_load32(index_at(c, k), FSHM_RELAXED) == s;
}

/* Under the lock: take slot e, which holds the message whose word is
 * `word`, unless a reader holds it pinned.  Only the lock holder writes a
 * word, so no compare-and-swap is needed. */
static int claim(unsigned char *e, uint64_t word)
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

/* Under the lock: drop subscriber entry i, as its dead or evicted owner
 * would have left it; its pins first, so the entry is never free while
 * any remain. */
static void drop_subscriber(const fshm_channel *c, uint32_t i)
{
    unsigned char *sub = sub_at(c, i);
    uint64_t bit = (uint64_t)1 << i;
    uint32_t s;
    for (s = 0; s < c->slots; s++) {
        uint64_t *pins = U64(slot_entry(c, s), S_PINS);
        if (fshm_load64(pins, FSHM_RELAXED) & bit)
            fshm_and64(pins, ~bit);
    }
    fshm_and64(U64(c->base, C_SUB_MASK), ~bit);
    /* Seq_cst: a publisher's wait_room sees the entry gone, or is woken.
     * The cursor stays: a publisher looking without the lock that still
     * sees the owner then reads a cursor that holds it back as before,
     * never a 0 that would hold back every slot; subscribe sets it anew. */
    fshm_store64(U64(sub, SUB_OWNER), 0, FSHM_SEQ_CST);
}

/* Under the lock: reclaim the entries of dead subscribers, and bring the
 * mask of used entries in line with the owners.  1 when any was dropped. */
static int reclaim_subscribers(const fshm_channel *c)
{
    uint64_t me = fshm_self_id(), mask = fshm_load64(U64(c->base, C_SUB_MASK), FSHM_RELAXED);
    uint32_t i;
    int dropped = 0;
    for (i = 0; i < c->max_subscribers; i++) {
        uint64_t owner = fshm_load64(U64(sub_at(c, i), SUB_OWNER), FSHM_RELAXED);
        uint64_t bit = (uint64_t)1 << i;
        if (owner != 0 && owner != me && fshm_owner_dead(owner) == 1) {
            drop_subscriber(c, i);
            dropped = 1;
        } else if (owner != 0 && !(mask & bit)) {
            fshm_or64(U64(c->base, C_SUB_MASK), bit);
        } else if (owner == 0 && (mask & bit)) {
            fshm_and64(U64(c->base, C_SUB_MASK), ~bit);
        }
    }
    if (mask & ~all_subs(c))
        fshm_and64(U64(c->base, C_SUB_MASK), all_subs(c));
    return dropped;
}

/* Under the lock: put every slot in order and rebuild the stack of free
 * slots.  A word left odd by a publisher that died deciding goes back to
 * even; a loan of a dead process is reclaimed (`live`, or when it has been
 * out for N messages: a live publisher commits sooner), unless all it
 * missed of its commit was clearing `loaner`; a slot whose message can no
 * longer be reached, or that holds nothing, is freed; with `live`, pins of
 * entries nobody owns (an evicted subscriber) are cleared.  1 when any
 * loan was reclaimed or pin cleared. */
static int sweep(const fshm_channel *c, int live)
{
    uint64_t head = fshm_load64(U64(c->base, C_HEAD), FSHM_RELAXED), me = fshm_self_id();
    uint64_t owned = 0;
    uint32_t s, i, count = 0;
    int changed = 0;
    if (live)
        for (i = 0; i < c->max_subscribers; i++)
            if (fshm_load64(U64(sub_at(c, i), SUB_OWNER), FSHM_RELAXED) != 0)
                owned |= (uint64_t)1 << i;
    for (s = 0; s < c->slots; s++) {
        unsigned char *e = slot_entry(c, s);
        uint64_t word = fshm_load64(U64(e, S_WORD), FSHM_RELAXED);
        /* Acquire: pairs with discard's store, so the discarding publisher's
         * writes to the payload come before the next loan's. */
        uint64_t loaner = fshm_load64(U64(e, S_LOANER), FSHM_ACQUIRE);
        uint64_t pins = fshm_load64(U64(e, S_PINS), FSHM_RELAXED);
        if (live && (pins & ~owned)) {
            fshm_and64(U64(e, S_PINS), owned);
            changed = 1;
        }
        if (word & 1) {
            /* Release: a reader waiting on the odd word sees the message
             * whole (nothing was written to it while it was odd). */
            word &= ~(uint64_t)1;
            fshm_store64(U64(e, S_WORD), word, FSHM_RELEASE);
        }
        if (loaner != 0) {
            uint64_t at = fshm_load64(U64(e, S_LOANED_AT), FSHM_RELAXED);
            if (loaner == me || !(live || head - at >= c->slots) ||
                fshm_owner_dead(loaner) != 1)
                continue; /* a live loan */
            /* The word it left is judged below as any slot's: a message
             * still reachable is kept (its publisher died after storing
             * head, before clearing loaner), any other is claimed, so a
             * slot a reader holds pinned is not emptied under it. */
            fshm_store64(U64(e, S_LOANER), 0, FSHM_RELAXED);
            changed = 1;
        }
        if (word == 0 || (!reachable(c, s, word >> 1, head) && claim(e, word)))
            *free_at(c, count++) = s;
    }
    fshm_store32(U32(c->base, C_FREE_COUNT), count, FSHM_RELAXED);
    return changed;
}

/* Under the lock, after a process died holding it: everything in order. */
static void repair(const fshm_channel *c)
{
    reclaim_subscribers(c);
    sweep(c, 1);
    end_change(c);
}

static int lock_channel(const fshm_channel *c, int64_t deadline)
{
    int rc;
    if (c->readonly)
        return EACCES;
    if ((rc = fshm__lock_acquire(c->base, deadline)) != 0)
        return rc;
    if (fshm_load32(U32(c->base, C_DIRTY), FSHM_RELAXED) != 0) {
        repair(c);
        /* What the dead holder held may be free now: publishers sleeping
         * for room try again (rare: woken under the lock, they wait for
         * it briefly). */
        notify_room(c);
    }
    return 0;
}

/* Whether it is time to ask again whether the processes holding slots are
 * alive (a time ahead of ours, from another clock or a scribbled header,
 * makes it time at once; so does one <= 0, which the subtraction could not
 * take). */
static int liveness_due(const fshm_channel *c, int64_t now)
{
    int64_t last = (int64_t)fshm_load64(U64(c->base, C_CHECKED_AT), FSHM_RELAXED);
    return last <= 0 || now < last || now - last >= LIVENESS_NS;
}

/* Under the lock: liveness_due, and if so, the time of this check. */
static int liveness_check(const fshm_channel *c)
{
    int64_t now = fshm_monotonic_ns();
    if (!liveness_due(c, now))
        return 0;
    fshm_store64(U64(c->base, C_CHECKED_AT), (uint64_t)now, FSHM_RELAXED);
    return 1;
}

/* The deadline of a call that found the lock busy (the try forms never
 * sleep): a short grace for a zero timeout, else the call's.  Computed then
 * rather than up front, as a queue's, so an uncontended call reads no
 * clock. */
static int64_t channel_deadline(int64_t timeout_ns)
{
    return fshm__deadline(timeout_ns == 0 ? FSHM__LOCK_GRACE_NS : timeout_ns);
}

/* ---- lending slots ---- */

/* Under the lock: a slot from the stack of free ones, checked (the stack
 * is rebuilt by sweeps; an entry may be stale). */
static int take_free(const fshm_channel *c, uint32_t *slot)
{
    uint32_t count = fshm_load32(U32(c->base, C_FREE_COUNT), FSHM_RELAXED);
    if (count > c->slots)
        count = c->slots;
    while (count > 0) {
        uint32_t s = *free_at(c, --count);
        unsigned char *e;
        fshm_store32(U32(c->base, C_FREE_COUNT), count, FSHM_RELAXED);
        if (s >= c->slots)
            continue;
        e = slot_entry(c, s);
        /* Acquire on the loaner: as in sweep, after a discard.  Pins may be
         * set: a reader that pinned the slot while looking for an older
         * message finds the word is not its message and lets go, without
         * reading the payload. */
        if (fshm_load64(U64(e, S_WORD), FSHM_RELAXED) == 0 &&
            fshm_load64(U64(e, S_LOANER), FSHM_ACQUIRE) == 0) {
            *slot = s;
            return 1;
        }
    }
    return 0;
}

/* The lowest cursor of the live subscribers (head + 1 without any): in
 * block mode, every message from it on is still to be received.  Seq_cst
 * loads, for room_ready; claim needs only acquire on the cursors. */
static uint64_t min_cursor(const fshm_channel *c, uint64_t head)
{
    uint64_t mask = fshm_load64(U64(c->base, C_SUB_MASK), FSHM_SEQ_CST) & all_subs(c);
    uint64_t least = head + 1;
    while (mask != 0) {
        uint32_t i = 0;
        uint64_t cursor;
        while (!(mask & ((uint64_t)1 << i)))
            i++;
        mask &= ~((uint64_t)1 << i);
        if (fshm_load64(U64(sub_at(c, i), SUB_OWNER), FSHM_SEQ_CST) == 0)
            continue;
        /* Acquire (at least): pairs with receive_once's release of the
         * cursor, so the pin it set before moving past a message is seen by
         * claim, which loads the pins after this. */
        cursor = fshm_load64(U64(sub_at(c, i), SUB_CURSOR), FSHM_SEQ_CST);
        if (cursor < least)
            least = cursor;
    }
    return least;
}

/* Under the lock: claim the slot of message k if it may be overwritten:
 * it holds k, unpinned and not lent. */
static int take_message(const fshm_channel *c, uint64_t k, uint32_t *slot)
{
    uint32_t s = fshm_load32(index_at(c, k), FSHM_RELAXED);
    unsigned char *e;
    if (s >= c->slots)
        return 0;
    e = slot_entry(c, s);
    if (fshm_load64(U64(e, S_WORD), FSHM_RELAXED) != k << 1 ||
        fshm_load64(U64(e, S_LOANER), FSHM_RELAXED) != 0 ||
        fshm_load64(U64(e, S_PINS), FSHM_RELAXED) != 0 || !claim(e, k << 1))
        return 0;
    *slot = s;
    return 1;
}

/* Under the lock: the slot of the newest message that every live
 * subscriber has received and a late joiner is not shown (older than the
 * last `history`).  It was the last read, so it is likely still in the
 * caches: a stream of large messages that keeps up cycles through two slots
 * rather than through all N, its copies staying within the last-level
 * cache. */
static int take_read(const fshm_channel *c, uint64_t head, uint32_t *slot)
{
    uint64_t first = head >= c->slots ? head - c->slots + 1 : 1, least, top, k;
    if (head < c->history || (least = min_cursor(c, head)) == 0)
        return 0;
    top = least - 1 < head - c->history ? least - 1 : head - c->history;
    for (k = top; k >= first; k--)
        if (take_message(c, k, slot))
            return 1;
    return 0;
}

/* Under the lock: the slot of the oldest message still reachable that may
 * be overwritten: in block mode received by every live subscriber, in
 * overwrite mode any. */
static int take_oldest(const fshm_channel *c, uint64_t head, uint32_t *slot)
{
    uint64_t k = head >= c->slots ? head - c->slots + 1 : 1, last = head;
    if (!overwrite(c)) {
        uint64_t least = min_cursor(c, head);
        if (least == 0)
            return 0;
        if (least <= last)
            last = least - 1;
    }
    for (; k <= last; k++)
        if (take_message(c, k, slot))
            return 1;
    return 0;
}

static void fill_loan(const fshm_channel *c, uint32_t s, fshm_loan *loan)
{
    loan->slot = s;
    loan->data = payload_at(c, s);
    loan->offset = (size_t)(c->payload_offset + (uint64_t)s * c->stride);
    loan->capacity = (size_t)c->slot_size;
}

/* Under the lock, the change begun: a slot to lend, or 0 when none is free
 * (*freed set when slots of dead processes were reclaimed on the way). */
static int lend_locked(const fshm_channel *c, uint64_t head, uint32_t *slot, int *freed)
{
    uint64_t sweep_at = fshm_load64(U64(c->base, C_SWEEP_AT), FSHM_RELAXED);
    int live;
    /* Every N messages, a sweep without asking who is alive: slots
     * discarded, or holding a message nobody can reach any more, go back
     * on the stack (N slots looked at every N messages). */
    if (head >= sweep_at || sweep_at - head > c->slots) {
        *freed |= sweep(c, 0);
        fshm_store64(U64(c->base, C_SWEEP_AT), head + c->slots, FSHM_RELAXED);
    }
    if (take_free(c, slot) || take_read(c, head, slot))
        return 1;
    /* Taking the newest read first leaves older slots holding messages that
     * fell out of reach: a sweep frees them before an unread message is
     * overwritten (overwrite mode) or the publisher waits (block mode). */
    *freed |= sweep(c, 0);
    if (take_free(c, slot) || take_oldest(c, head, slot))
        return 1;
    /* Short of slots: find those of dead processes (at most every
     * LIVENESS_NS, the question costs system calls), and any that a sweep
     * can free. */
    live = liveness_check(c);
    if (live)
        *freed |= reclaim_subscribers(c);
    *freed |= sweep(c, live);
    return take_free(c, slot) || take_oldest(c, head, slot);
}

/* Under the lock, the change begun: publish slot s, holding `length`
 * bytes, as message k = head + 1.  Killed anywhere in here, the message is
 * published (head stored) or not; the next holder of the lock finds the
 * dirty mark and puts the slot in order. */
static void publish_locked(const fshm_channel *c, uint32_t s, size_t length, uint64_t k)
{
    unsigned char *e = slot_entry(c, s);
    fshm_store64(U64(e, S_LENGTH), (uint64_t)length, FSHM_RELAXED);
    /* Release: a reader that sees the word sees the payload and length. */
    fshm_store64(U64(e, S_WORD), k << 1, FSHM_RELEASE);
    fshm_store32(index_at(c, k), s, FSHM_RELAXED);
    /* Release: publishes the message; a reader that loads head with acquire
     * finds the index entry and the slot complete. */
    fshm_store64(U64(c->base, C_HEAD), k, FSHM_RELEASE);
    fshm_store64(U64(e, S_LOANER), 0, FSHM_RELAXED);
}

/* One attempt under the lock: 0, FSHM_EFULL, or a lock error.  With a
 * loan, a slot lent (*loan); without, n bytes of src copied into a slot
 * and published (*seq), all under this one hold of the lock. */
static int lend_once(const fshm_channel *c, int64_t deadline, fshm_loan *loan, const void *src,
                     size_t n, uint64_t *seq)
{
    uint64_t head;
    uint32_t s = 0;
    int rc, ok, freed = 0;
    if ((rc = lock_channel(c, deadline)) != 0)
        return rc;
    head = fshm_load64(U64(c->base, C_HEAD), FSHM_RELAXED);
    if (head >= NUMBER_MAX) {
        fshm__lock_release(c->base);
        return FSHM_EFORMAT;
    }
    begin_change(c);
    ok = lend_locked(c, head, &s, &freed);
    if (ok && loan != NULL) {
        fshm_store64(U64(slot_entry(c, s), S_LOANED_AT), head, FSHM_RELAXED);
        fshm_store64(U64(slot_entry(c, s), S_LOANER), fshm_self_id(), FSHM_RELAXED);
    } else if (ok) {
        /* Never lent: a process killed while copying leaves an empty slot
         * nobody holds, which the repair frees. */
        if (n > 0)
            memcpy(payload_at(c, s), src, n);
        publish_locked(c, s, n, head + 1);
    }
    end_change(c);
    fshm__lock_release(c->base);
    if (freed)
        notify_room(c); /* others may wait for what was reclaimed */
    if (!ok)
        return FSHM_EFULL;
    if (loan != NULL) {
        fill_loan(c, s, loan);
    } else {
        notify_published(c);
        if (seq != NULL)
            *seq = head + 1;
    }
    return 0;
}

/* Whether a loan may find a slot, looked at without the lock: a slot
 * neither lent nor pinned that is free, unreachable, or (block mode)
 * received by every live subscriber.  May say yes wrongly (the loan then
 * finds nothing and waits again), never no wrongly but for slots a dead
 * process holds, which wait_room reclaims.  Seq_cst loads: the other half
 * of maybe_notify_room's Dekker pair. */
static int room_ready(const fshm_channel *c)
{
    uint64_t head = fshm_load64(U64(c->base, C_HEAD), FSHM_SEQ_CST), least = head + 1;
    uint32_t s;
    if (fshm_load32(U32(c->base, C_FREE_COUNT), FSHM_SEQ_CST) != 0)
        return 1;
    if (!overwrite(c))
        least = min_cursor(c, head);
    for (s = 0; s < c->slots; s++) {
        unsigned char *e = slot_entry(c, s);
        uint64_t word;
        if (fshm_load64(U64(e, S_LOANER), FSHM_SEQ_CST) != 0 ||
            fshm_load64(U64(e, S_PINS), FSHM_SEQ_CST) != 0)
            continue;
        word = fshm_load64(U64(e, S_WORD), FSHM_SEQ_CST);
        if (word == 0)
            return 1;
        if (word & 1)
            continue;
        if ((word >> 1) > head || head - (word >> 1) >= c->slots ||
            fshm_load32(index_at(c, word >> 1), FSHM_SEQ_CST) != s)
            return 1; /* unreachable: a sweep frees it */
        if ((word >> 1) < least)
            return 1;
    }
    return 0;
}

/* With the lock if it is free: reclaim what dead processes hold, if it is
 * time to ask. */
static void reclaim_if_due(const fshm_channel *c)
{
    int freed = 0;
    /* A look without the lock first: most of the time it is not. */
    if (!liveness_due(c, fshm_monotonic_ns()) ||
        fshm__lock_acquire(c->base, FSHM__NOW) != 0)
        return;
    if (fshm_load32(U32(c->base, C_DIRTY), FSHM_RELAXED) != 0) {
        repair(c);
        freed = 1;
    } else if (liveness_check(c)) {
        begin_change(c);
        freed = reclaim_subscribers(c);
        freed |= sweep(c, 1);
        end_change(c);
    }
    fshm__lock_release(c->base);
    if (freed)
        notify_room(c);
}

/* Until room_ready: spin for spin_ns, then sleep on the room word, looking
 * for dead processes' slots every SLEEP_MAX_NS.  FSHM_ETIMEOUT at the
 * deadline, EINTR on a signal. */
static int wait_room_until(const fshm_channel *c, int64_t deadline, int64_t spin_ns)
{
    uint32_t *word = U32(c->base, C_ROOM);
    uint32_t *waiters = U32(c->base, C_ROOM_WAITERS);
    int64_t start = fshm_monotonic_ns(), checked = start;
    unsigned spins = 0;
    int rc = 0;

    while (spin_ns > 0) {
        if (room_ready(c))
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
    reclaim_if_due(c);
    fshm_add32(waiters, 1);
    for (;;) {
        int64_t now;
        /* Seq_cst, after registering: the sleeper half of the Dekker pairs
         * with maybe_notify_room and notify_room. */
        uint32_t v = fshm_load32(word, FSHM_SEQ_CST);
        if (room_ready(c))
            break;
        now = fshm_monotonic_ns();
        if (now >= deadline) {
            rc = FSHM_ETIMEOUT;
            break;
        }
        if (now - checked >= SLEEP_MAX_NS) {
            checked = now;
            reclaim_if_due(c);
            continue;
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

/* lend_once until it finds a slot: waiting for room as the timeout allows. */
static int lend(const fshm_channel *c, int64_t timeout_ns, int nonblock, fshm_loan *loan,
                const void *src, size_t n, uint64_t *seq)
{
    int64_t deadline = FSHM__NOW; /* the first try spins for the lock, no more */
    int rc, spun = 0, timed = nonblock;
    for (;;) {
        rc = lend_once(c, deadline, loan, src, n, seq);
        if (rc == FSHM_EBUSY && !timed) {
            deadline = channel_deadline(timeout_ns);
            timed = 1;
            continue;
        }
        if (rc != FSHM_EFULL || nonblock || timeout_ns == 0)
            return rc;
        if (!timed) {
            deadline = channel_deadline(timeout_ns);
            timed = 1;
        }
        rc = wait_room_until(c, deadline, spun ? 0 : SPIN_NS);
        if (rc == FSHM_ETIMEOUT)
            return FSHM_EFULL;
        if (rc != 0)
            return rc;
        if (spun)
            fshm_sleep_ns(0); /* room that a loan cannot use yet: let its holder run */
        spun = 1;
    }
}

static int loan(const fshm_channel *c, size_t size, fshm_loan *loan, int64_t timeout_ns,
                int nonblock)
{
    if (loan == NULL)
        return EINVAL;
    if ((uint64_t)size > c->slot_size)
        return FSHM_ETOOBIG;
    if (c->readonly)
        return EACCES;
    return lend(c, timeout_ns, nonblock, loan, NULL, 0, NULL);
}

int fshm_channel_loan(const fshm_channel *c, size_t size, fshm_loan *l, int64_t timeout_ns)
{
    return loan(c, size, l, timeout_ns, 0);
}

int fshm_channel_try_loan(const fshm_channel *c, size_t size, fshm_loan *l)
{
    return loan(c, size, l, 0, 1);
}

/* The loan's slot entry if the loan is still the caller's, else NULL. */
static unsigned char *loaned_slot(const fshm_channel *c, const fshm_loan *loan)
{
    unsigned char *e;
    if (loan->slot >= c->slots)
        return NULL;
    e = slot_entry(c, loan->slot);
    if (fshm_load64(U64(e, S_LOANER), FSHM_RELAXED) != fshm_self_id() ||
        fshm_load64(U64(e, S_WORD), FSHM_RELAXED) != 0)
        return NULL;
    return e;
}

static int commit(const fshm_channel *c, const fshm_loan *loan, size_t length,
                  int64_t deadline, uint64_t *seq)
{
    unsigned char *e;
    uint64_t k;
    int rc;
    if (loan == NULL)
        return EINVAL;
    if ((uint64_t)length > c->slot_size)
        return FSHM_ETOOBIG;
    if ((rc = lock_channel(c, deadline)) != 0)
        return rc;
    if ((e = loaned_slot(c, loan)) == NULL) {
        fshm__lock_release(c->base);
        return FSHM_ELOST;
    }
    k = fshm_load64(U64(c->base, C_HEAD), FSHM_RELAXED) + 1;
    if (k > NUMBER_MAX || k == 0) {
        fshm__lock_release(c->base);
        return FSHM_EFORMAT;
    }
    begin_change(c);
    publish_locked(c, loan->slot, length, k);
    end_change(c);
    fshm__lock_release(c->base);
    notify_published(c);
    if (seq != NULL)
        *seq = k;
    return 0;
}

int fshm_channel_commit(const fshm_channel *c, const fshm_loan *loan, size_t length,
                        int64_t timeout_ns, uint64_t *seq)
{
    /* The first try spins for the lock, no more; a busy one reads the clock. */
    int rc = commit(c, loan, length, FSHM__NOW, seq);
    if (rc == FSHM_EBUSY)
        rc = commit(c, loan, length, channel_deadline(timeout_ns), seq);
    return rc;
}

int fshm_channel_try_commit(const fshm_channel *c, const fshm_loan *loan, size_t length,
                            uint64_t *seq)
{
    return commit(c, loan, length, FSHM__NOW, seq);
}

int fshm_channel_discard(const fshm_channel *c, const fshm_loan *loan)
{
    unsigned char *e;
    if (loan == NULL)
        return EINVAL;
    if (c->readonly)
        return EACCES;
    if ((e = loaned_slot(c, loan)) == NULL)
        return FSHM_ELOST;
    /* No lock: an empty slot that nobody lends is free, and the next sweep
     * puts it back on the stack.  Seq_cst: release for the payload written
     * (the next loan reads the loaner with acquire), and the first half of
     * maybe_notify_room's pair. */
    fshm_store64(U64(e, S_LOANER), 0, FSHM_SEQ_CST);
    maybe_notify_room(c);
    return 0;
}

static int publish(const fshm_channel *c, const void *src, size_t n, int64_t timeout_ns,
                   uint64_t *seq, int nonblock)
{
    fshm_loan l;
    int64_t deadline, grace;
    int rc;
    if (n > 0 && src == NULL)
        return EINVAL;
    if ((uint64_t)n > c->slot_size)
        return FSHM_ETOOBIG;
    if (c->readonly)
        return EACCES;
    /* Up to a page, the copy costs less than a second round of the lock:
     * lend, copy and publish under one hold of it. */
    if (n <= PUBLISH_IN_LOCK)
        return lend(c, timeout_ns, nonblock, NULL, src, n, seq);
    deadline = nonblock ? FSHM__NOW : channel_deadline(timeout_ns);
    if ((rc = loan(c, n, &l, timeout_ns, nonblock)) != 0)
        return rc;
    memcpy(l.data, src, n);
    /* The commit gets at least the grace of a zero timeout, whatever the
     * loan used up: the slot is written, and the lock is rarely held long. */
    grace = fshm__deadline(FSHM__LOCK_GRACE_NS);
    rc = commit(c, &l, n, nonblock ? FSHM__NOW : deadline > grace ? deadline : grace, seq);
    if (rc != 0)
        fshm_channel_discard(c, &l);
    return rc;
}

int fshm_channel_publish(const fshm_channel *c, const void *src, size_t n, int64_t timeout_ns,
                         uint64_t *seq)
{
    return publish(c, src, n, timeout_ns, seq, 0);
}

int fshm_channel_try_publish(const fshm_channel *c, const void *src, size_t n, uint64_t *seq)
{
    return publish(c, src, n, 0, seq, 1);
}

int fshm_channel_wait_room(const fshm_channel *c, int64_t timeout_ns)
{
    if (c->readonly)
        return EACCES;
    if (timeout_ns == 0)
        return room_ready(c) ? 0 : FSHM_ETIMEOUT;
    return wait_room_until(c, fshm__deadline(timeout_ns), 0);
}

/* ---- subscribing ---- */

int fshm_channel_subscribe(const fshm_channel *c, fshm_sub *sub, int64_t timeout_ns)
{
    uint64_t head, cursor, k, gen;
    unsigned char *e = NULL;
    uint32_t i, j;
    int rc, dropped;
    if (sub == NULL)
        return EINVAL;
    if ((rc = lock_channel(c, channel_deadline(timeout_ns))) != 0)
        return rc;
    head = fshm_load64(U64(c->base, C_HEAD), FSHM_RELAXED);
    if (head > NUMBER_MAX) {
        fshm__lock_release(c->base);
        return FSHM_EFORMAT;
    }
    begin_change(c);
    dropped = reclaim_subscribers(c);
    for (i = 0; i < c->max_subscribers; i++) {
        if (fshm_load64(U64(sub_at(c, i), SUB_OWNER), FSHM_RELAXED) == 0) {
            e = sub_at(c, i);
            break;
        }
    }
    if (e != NULL) {
        /* The latest messages in place, as many as history allows in a
         * row; nothing can take their slots while the lock is held, and in
         * block mode the cursor protects them once it is stored. */
        cursor = head + 1;
        for (k = head; k >= 1 && head - k < c->history; k--) {
            uint32_t s = fshm_load32(index_at(c, k), FSHM_RELAXED);
            if (s >= c->slots ||
                fshm_load64(U64(slot_entry(c, s), S_WORD), FSHM_RELAXED) != k << 1 ||
                fshm_load64(U64(slot_entry(c, s), S_LOANER), FSHM_RELAXED) != 0)
                break;
            cursor = k;
        }
        /* Pins left under this entry's bit by an evicted subscriber that
         * went on receiving: not this subscriber's. */
        for (j = 0; j < c->slots; j++) {
            uint64_t *pins = U64(slot_entry(c, j), S_PINS);
            if (fshm_load64(pins, FSHM_RELAXED) & ((uint64_t)1 << i))
                fshm_and64(pins, ~((uint64_t)1 << i));
        }
        gen = fshm_load64(U64(e, SUB_GEN), FSHM_RELAXED) + 1;
        fshm_store64(U64(e, SUB_CURSOR), cursor, FSHM_RELAXED);
        fshm_store64(U64(e, SUB_MISSED), 0, FSHM_RELAXED);
        fshm_store64(U64(e, SUB_RECEIVED), 0, FSHM_RELAXED);
        fshm_store64(U64(e, SUB_PENDING), 0, FSHM_RELAXED);
        fshm_store64(U64(e, SUB_GEN), gen, FSHM_RELAXED);
        /* Release: a process that sees the owner sees the cursor. */
        fshm_store64(U64(e, SUB_OWNER), fshm_self_id(), FSHM_RELEASE);
        fshm_or64(U64(c->base, C_SUB_MASK), (uint64_t)1 << i);
        sub->index = i;
        sub->gen = gen;
    }
    end_change(c);
    fshm__lock_release(c->base);
    if (dropped)
        notify_room(c);
    return e != NULL ? 0 : FSHM_ESUBFULL;
}

/* The subscription's entry if it is still the caller's: 0 with *e set,
 * FSHM_ELOST, EINVAL or EACCES. */
static int own_entry(const fshm_channel *c, const fshm_sub *sub, unsigned char **e)
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

int fshm_channel_unsubscribe(const fshm_channel *c, const fshm_sub *sub)
{
    unsigned char *e;
    uint64_t bit;
    uint32_t s;
    int rc = own_entry(c, sub, &e);
    if (rc != 0)
        return rc;
    bit = (uint64_t)1 << sub->index;
    /* No lock: only this process changes its entry while it lives.  Pins
     * first, then the mask bit, then the owner: a subscriber that takes the
     * entry next finds it clean, and its own mask bit is not cleared. */
    for (s = 0; s < c->slots; s++) {
        uint64_t *pins = U64(slot_entry(c, s), S_PINS);
        if (fshm_load64(pins, FSHM_RELAXED) & bit)
            fshm_and64(pins, ~bit);
    }
    fshm_and64(U64(c->base, C_SUB_MASK), ~bit);
    /* A compare-and-swap, then a seq_cst fence (in block mode the cursor
     * no longer holds publishers back: the first half of
     * maybe_notify_room's pair): an entry evicted meanwhile and taken by
     * another subscriber keeps its new owner, and gets its mask bit back. */
    {
        uint64_t me = fshm_self_id();
        if (!fshm_cas64(U64(e, SUB_OWNER), &me, 0)) {
            if (me != 0)
                fshm_or64(U64(c->base, C_SUB_MASK), bit);
            return FSHM_ELOST;
        }
    }
    fshm_fence(FSHM_SEQ_CST);
    maybe_notify_room(c);
    return 0;
}

/* ---- receiving ---- */

/* Let go of a pinned slot. */
static void unpin(const fshm_channel *c, unsigned char *e, uint64_t bit)
{
    /* Seq_cst read-modify-write: release for this reader's reads of the
     * payload (a publisher that sees the bit clear may overwrite it), and
     * the first half of maybe_notify_room's pair. */
    fshm_and64(U64(e, S_PINS), ~bit);
    maybe_notify_room(c);
}

/* A publisher is deciding whether it may take the slot the reader has just
 * pinned: wait a little for the word to change. */
static uint64_t await_decision(unsigned char *e, uint64_t odd)
{
    int64_t start = 0;
    unsigned spins = 0;
    for (;;) {
        /* Acquire: the message seen again is seen whole. */
        uint64_t word = fshm_load64(U64(e, S_WORD), FSHM_ACQUIRE);
        if (word != odd)
            return word;
        if ((++spins & 63) == 0) {
            int64_t now = fshm_monotonic_ns();
            if (start == 0)
                start = now;
            else if (now - start > DECIDE_WAIT_NS)
                return word; /* preempted or dead: count the message as lost */
            fshm_sleep_ns(0);
        }
        fshm_cpu_relax();
    }
}

/* One look: 0 with *out filled and the slot pinned, NOTHING, or an error.
 * FSHM_ESMALL, with out->length and out->seq the message's, when the next
 * message is longer than `limit`: unpinned again before anything is
 * stored, so the cursor and the counts are as they were. */
static int receive_once(const fshm_channel *c, const fshm_sub *sub, fshm_sample *out,
                        uint64_t *missed, size_t limit)
{
    unsigned char *sub_e;
    uint64_t bit, first, head, k, gone;
    int rc = own_entry(c, sub, &sub_e);
    if (rc != 0)
        return rc;
    bit = (uint64_t)1 << sub->index;
    first = fshm_load64(U64(sub_e, SUB_CURSOR), FSHM_RELAXED);
    if (first == 0)
        first = 1;
    /* Acquire: pairs with commit's release of head; the index entries and
     * slots of messages up to head are complete. */
    head = fshm_load64(U64(c->base, C_HEAD), FSHM_ACQUIRE);
    if (head > NUMBER_MAX)
        return FSHM_EFORMAT;
    if (first > head)
        return first > head + 1 ? FSHM_EFORMAT : NOTHING;
    /* Only the last N messages can be reached through the index. */
    k = head >= c->slots && first <= head - c->slots ? head - c->slots + 1 : first;
    for (; k <= head; k++) {
        uint32_t s = fshm_load32(index_at(c, k), FSHM_RELAXED);
        unsigned char *e;
        uint64_t word, length;
        if (s >= c->slots)
            continue;
        e = slot_entry(c, s);
        /* A look before pinning: a slot that holds another message is not
         * pinned for nothing. */
        if ((fshm_load64(U64(e, S_WORD), FSHM_RELAXED) | 1) != ((k << 1) | 1))
            continue;
        /* A slot this subscriber holds pinned holds an earlier message. */
        if (fshm_load64(U64(e, S_PINS), FSHM_RELAXED) & bit)
            continue;
        /* Seq_cst pin, then seq_cst re-read of the word: the reader half of
         * claim's Dekker pair (overwrite mode); in block mode the cursor
         * already keeps publishers away. */
        fshm_or64(U64(e, S_PINS), bit);
        word = fshm_load64(U64(e, S_WORD), FSHM_SEQ_CST);
        if (word == ((k << 1) | 1))
            word = await_decision(e, word);
        length = fshm_load64(U64(e, S_LENGTH), FSHM_RELAXED);
        if (word != k << 1 || length > c->slot_size) {
            unpin(c, e, bit);
            continue;
        }
        if (length > limit) {
            /* Too long for the caller's buffer: let go of it unreceived.
             * The cursor still names it (in block mode it keeps the
             * message in place for the next receive). */
            unpin(c, e, bit);
            out->length = (size_t)length;
            out->seq = k;
            return FSHM_ESMALL;
        }
        /* Release: a publisher that loads the cursor with acquire and finds
         * it past k sees the pin set above (claim then leaves the slot). */
        fshm_store64(U64(sub_e, SUB_CURSOR), k + 1, FSHM_RELEASE);
        gone = k - first + fshm_load64(U64(sub_e, SUB_PENDING), FSHM_RELAXED);
        if (gone != 0) {
            fshm_store64(U64(sub_e, SUB_MISSED),
                         fshm_load64(U64(sub_e, SUB_MISSED), FSHM_RELAXED) + (k - first),
                         FSHM_RELAXED);
            fshm_store64(U64(sub_e, SUB_PENDING), 0, FSHM_RELAXED);
        }
        fshm_store64(U64(sub_e, SUB_RECEIVED),
                     fshm_load64(U64(sub_e, SUB_RECEIVED), FSHM_RELAXED) + 1, FSHM_RELAXED);
        out->slot = s;
        out->data = payload_at(c, s);
        out->offset = (size_t)(c->payload_offset + (uint64_t)s * c->stride);
        out->length = (size_t)length;
        out->seq = k;
        if (missed != NULL)
            *missed = gone;
        return 0;
    }
    /* Everything up to head was overwritten before this reader got to it:
     * counted now, reported with the next message received. */
    gone = head + 1 - first;
    fshm_store64(U64(sub_e, SUB_CURSOR), head + 1, FSHM_RELEASE);
    fshm_store64(U64(sub_e, SUB_MISSED), fshm_load64(U64(sub_e, SUB_MISSED), FSHM_RELAXED) + gone,
                 FSHM_RELAXED);
    fshm_store64(U64(sub_e, SUB_PENDING),
                 fshm_load64(U64(sub_e, SUB_PENDING), FSHM_RELAXED) + gone, FSHM_RELAXED);
    return NOTHING;
}

/* Whether a message the subscriber has not reached is published.  Seq_cst
 * load of head: after registering as a sleeper, the other half of
 * notify_subscribers' pair (and an acquire for the spinning look). */
static int message_ready(const fshm_channel *c, unsigned char *sub_e)
{
    uint64_t cursor = fshm_load64(U64(sub_e, SUB_CURSOR), FSHM_RELAXED);
    return fshm_load64(U64(c->base, C_HEAD), FSHM_SEQ_CST) >= (cursor == 0 ? 1 : cursor);
}

/* Until message_ready: spin for spin_ns, then sleep on the notify word.
 * FSHM_ETIMEOUT at the deadline, EINTR on a signal. */
static int wait_message(const fshm_channel *c, unsigned char *sub_e, int64_t deadline,
                        int64_t spin_ns)
{
    uint32_t *word = U32(c->base, C_NOTIFY);
    uint32_t *waiters = U32(c->base, C_WAITERS);
    int64_t start = fshm_monotonic_ns();
    unsigned spins = 0;
    int rc = 0;

    /* Spin first (yielding every 64 rounds, for a publisher that needs the
     * core), as a segment's waiter does. */
    while (spin_ns > 0) {
        if (message_ready(c, sub_e))
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
        /* Seq_cst, after registering: pairs with notify_subscribers. */
        uint32_t v = fshm_load32(word, FSHM_SEQ_CST);
        if (message_ready(c, sub_e))
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

static int receive(const fshm_channel *c, const fshm_sub *sub, fshm_sample *out,
                   uint64_t *missed, int64_t timeout_ns, size_t limit)
{
    unsigned char *sub_e;
    int64_t deadline;
    int64_t spin = SPIN_NS;
    int rc;
    if (missed != NULL)
        *missed = 0;
    if (out == NULL)
        return EINVAL;
    rc = receive_once(c, sub, out, missed, limit);
    if (rc != NOTHING)
        return rc;
    if (timeout_ns == 0)
        return FSHM_ETIMEOUT;
    deadline = fshm__deadline(timeout_ns);
    sub_e = sub_at(c, sub->index);
    for (;;) {
        if ((rc = wait_message(c, sub_e, deadline, spin)) != 0)
            return rc;
        rc = receive_once(c, sub, out, missed, limit);
        if (rc != NOTHING)
            return rc;
        spin = 0;
    }
}

int fshm_channel_receive(const fshm_channel *c, const fshm_sub *sub, fshm_sample *sample,
                         uint64_t *missed, int64_t timeout_ns)
{
    return receive(c, sub, sample, missed, timeout_ns, SIZE_MAX);
}

int fshm_channel_try_receive(const fshm_channel *c, const fshm_sub *sub, fshm_sample *sample,
                             uint64_t *missed)
{
    return receive(c, sub, sample, missed, 0, SIZE_MAX);
}

/* A receive of a message no longer than `capacity`, copied into dst and
 * released at once. */
static int receive_into(const fshm_channel *c, const fshm_sub *sub, void *dst, size_t capacity,
                        fshm_sample *sample, uint64_t *missed, int64_t timeout_ns)
{
    int rc;
    if (dst == NULL && capacity != 0) {
        if (missed != NULL)
            *missed = 0;
        return EINVAL;
    }
    rc = receive(c, sub, sample, missed, timeout_ns, capacity);
    if (rc != 0)
        return rc;
    /* The pin (a seq_cst read-modify-write, then the seq_cst re-read of the
     * word) keeps the payload whole while it is copied. */
    if (sample->length != 0)
        memcpy(dst, sample->data, sample->length);
    /* The copy is complete before the pin goes: unpin's seq_cst
     * read-modify-write is a release for the reads above, so a publisher
     * that sees the bit clear and reuses the slot writes after them. */
    unpin(c, slot_entry(c, sample->slot), (uint64_t)1 << sub->index);
    sample->data = NULL;
    sample->offset = 0;
    return 0;
}

int fshm_channel_receive_into(const fshm_channel *c, const fshm_sub *sub, void *dst,
                              size_t capacity, fshm_sample *sample, uint64_t *missed,
                              int64_t timeout_ns)
{
    return receive_into(c, sub, dst, capacity, sample, missed, timeout_ns);
}

int fshm_channel_try_receive_into(const fshm_channel *c, const fshm_sub *sub, void *dst,
                                  size_t capacity, fshm_sample *sample, uint64_t *missed)
{
    return receive_into(c, sub, dst, capacity, sample, missed, 0);
}

int fshm_channel_release(const fshm_channel *c, const fshm_sub *sub, uint32_t slot)
{
    unsigned char *sub_e;
    int rc = own_entry(c, sub, &sub_e);
    if (rc != 0)
        return rc;
    if (slot >= c->slots)
        return EINVAL;
    if (fshm_load64(U64(slot_entry(c, slot), S_PINS), FSHM_RELAXED) & ((uint64_t)1 << sub->index))
        unpin(c, slot_entry(c, slot), (uint64_t)1 << sub->index);
    return 0;
}

int fshm_channel_wait(const fshm_channel *c, const fshm_sub *sub, int64_t timeout_ns)
{
    unsigned char *sub_e;
    int rc = own_entry(c, sub, &sub_e);
    if (rc != 0)
        return rc;
    if (timeout_ns == 0)
        return message_ready(c, sub_e) ? 0 : FSHM_ETIMEOUT;
    return wait_message(c, sub_e, fshm__deadline(timeout_ns), 0);
}

/* ---- snapshots and repairs ---- */

uint64_t fshm_channel_head(const fshm_channel *c)
{
    return fshm_load64(U64(c->base, C_HEAD), FSHM_ACQUIRE);
}

uint32_t fshm_channel_subscribers(const fshm_channel *c)
{
    uint64_t me = fshm_self_id();
    uint32_t i, n = 0;
    for (i = 0; i < c->max_subscribers; i++) {
        uint64_t owner = fshm_load64(U64(sub_at(c, i), SUB_OWNER), FSHM_ACQUIRE);
        if (owner != 0 && (owner == me || fshm_owner_dead(owner) != 1))
            n++;
    }
    return n;
}

int fshm_channel_subscriber_info(const fshm_channel *c, uint32_t index, fshm_sub_info *info)
{
    unsigned char *e;
    uint64_t head, bit;
    uint32_t s;
    if (info == NULL || index >= c->max_subscribers)
        return EINVAL;
    e = sub_at(c, index);
    bit = (uint64_t)1 << index;
    info->owner = fshm_load64(U64(e, SUB_OWNER), FSHM_ACQUIRE);
    info->cursor = fshm_load64(U64(e, SUB_CURSOR), FSHM_RELAXED);
    info->missed = fshm_load64(U64(e, SUB_MISSED), FSHM_RELAXED);
    info->received = fshm_load64(U64(e, SUB_RECEIVED), FSHM_RELAXED);
    head = fshm_load64(U64(c->base, C_HEAD), FSHM_ACQUIRE);
    info->lag = info->owner != 0 && info->cursor <= head ? head + 1 - info->cursor : 0;
    info->pinned = 0;
    for (s = 0; s < c->slots; s++)
        if (fshm_load64(U64(slot_entry(c, s), S_PINS), FSHM_RELAXED) & bit)
            info->pinned++;
    return 0;
}

int fshm_channel_reclaim(const fshm_channel *c, int64_t timeout_ns)
{
    int rc = lock_channel(c, channel_deadline(timeout_ns));
    if (rc != 0)
        return rc;
    begin_change(c);
    reclaim_subscribers(c);
    sweep(c, 1);
    end_change(c);
    fshm__lock_release(c->base);
    notify_room(c);
    return 0;
}

/* Under the lock, a change begun: give slot s back as if its loan were
 * discarded, as sweep reclaims a dead process's loan: a message still
 * reachable is kept, any other is claimed (which fails while a reader holds
 * the slot pinned; a later sweep frees it once released).  The next loan
 * finds the slot. */
static void take_loan(const fshm_channel *c, uint32_t s)
{
    unsigned char *e = slot_entry(c, s);
    uint64_t head = fshm_load64(U64(c->base, C_HEAD), FSHM_RELAXED);
    uint64_t word = fshm_load64(U64(e, S_WORD), FSHM_RELAXED);
    if (word != 0 && !reachable(c, s, word >> 1, head))
        claim(e, word);
    fshm_store64(U64(e, S_LOANER), 0, FSHM_RELAXED);
}

/* An eviction by hand: under the lock, `take(c, i)` if the owner word at
 * `word` still names `owner` (FSHM_EAGAIN otherwise); publishers sleeping
 * for room are woken after it. */
static int evict(const fshm_channel *c, uint64_t *word, uint64_t owner, int64_t timeout_ns,
                 void (*take)(const fshm_channel *, uint32_t), uint32_t i)
{
    int rc = lock_channel(c, channel_deadline(timeout_ns));
    if (rc != 0)
        return rc;
    rc = FSHM_EAGAIN;
    if (fshm_load64(word, FSHM_RELAXED) == owner) {
        begin_change(c);
        take(c, i);
        end_change(c);
        rc = 0;
    }
    fshm__lock_release(c->base);
    if (rc == 0)
        notify_room(c);
    return rc;
}

int fshm_channel_evict(const fshm_channel *c, uint32_t index, uint64_t owner,
                       int64_t timeout_ns)
{
    if (index >= c->max_subscribers || owner == 0)
        return EINVAL;
    return evict(c, U64(sub_at(c, index), SUB_OWNER), owner, timeout_ns, drop_subscriber,
                 index);
}

int fshm_channel_evict_loan(const fshm_channel *c, uint32_t slot, uint64_t owner,
                            int64_t timeout_ns)
{
    if (slot >= c->slots || owner == 0)
        return EINVAL;
    return evict(c, U64(slot_entry(c, slot), S_LOANER), owner, timeout_ns, take_loan, slot);
}

uint64_t fshm_channel_lock_owner(const fshm_channel *c)
{
    return fshm_load64(U64(c->base, C_LOCK), FSHM_RELAXED);
}

int fshm_channel_break_lock(const fshm_channel *c, uint64_t owner)
{
    if (c->readonly)
        return EACCES;
    return fshm__break_lock(c->base, owner);
}
