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
 *
 * This file: the sizes of the layout, creating and attaching, subscribing,
 * and the snapshots; channel_internal.h names the channel's other files and
 * holds what they share.
 */
#include "channel_internal.h"

#include <string.h>

/* ---- geometry ---- */

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
    dropped = fshm__channel_reclaim_subscribers(c);
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
        fshm__channel_notify_room(c);
    return e != NULL ? 0 : FSHM_ESUBFULL;
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

/* ---- snapshots ---- */

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
