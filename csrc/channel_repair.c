/*
 * A channel's repairs (channel.c describes the channel): what the lock's
 * next holder does after a process died holding it, the sweep that puts
 * the slots in order, reclaiming the loans and subscriptions of dead
 * processes, and the repairs by hand: reclaim, evictions, breaking the
 * lock.
 */
#include "channel_internal.h"

/* How often, at most, processes are asked whether they are alive (a system
 * call or two each) while slots are short. */
#define LIVENESS_NS 100000000LL

/* ---- repairs ---- */

/* Under the lock: whether message k is committed and still reachable in
 * slot s (the index names s for it, and it is one of the last N). */
static int reachable(const fshm_channel *c, uint32_t s, uint64_t k, uint64_t head)
{
    return k >= 1 && k <= head && head - k < c->slots &&
           fshm_load32(index_at(c, k), FSHM_RELAXED) == s;
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
int fshm__channel_reclaim_subscribers(const fshm_channel *c)
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
int fshm__channel_sweep(const fshm_channel *c, int live)
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
void fshm__channel_repair(const fshm_channel *c)
{
    fshm__channel_reclaim_subscribers(c);
    fshm__channel_sweep(c, 1);
    end_change(c);
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
int fshm__channel_liveness_check(const fshm_channel *c)
{
    int64_t now = fshm_monotonic_ns();
    if (!liveness_due(c, now))
        return 0;
    fshm_store64(U64(c->base, C_CHECKED_AT), (uint64_t)now, FSHM_RELAXED);
    return 1;
}

/* With the lock if it is free: reclaim what dead processes hold, if it is
 * time to ask. */
void fshm__channel_reclaim_if_due(const fshm_channel *c)
{
    int freed = 0;
    /* A look without the lock first: most of the time it is not. */
    if (!liveness_due(c, fshm_monotonic_ns()) ||
        fshm__lock_acquire(c->base, FSHM__NOW) != 0)
        return;
    if (fshm_load32(U32(c->base, C_DIRTY), FSHM_RELAXED) != 0) {
        fshm__channel_repair(c);
        freed = 1;
    } else if (fshm__channel_liveness_check(c)) {
        begin_change(c);
        freed = fshm__channel_reclaim_subscribers(c);
        freed |= fshm__channel_sweep(c, 1);
        end_change(c);
    }
    fshm__lock_release(c->base);
    if (freed)
        fshm__channel_notify_room(c);
}

/* ---- repairs by hand ---- */

int fshm_channel_reclaim(const fshm_channel *c, int64_t timeout_ns)
{
    int rc = lock_channel(c, channel_deadline(timeout_ns));
    if (rc != 0)
        return rc;
    begin_change(c);
    fshm__channel_reclaim_subscribers(c);
    fshm__channel_sweep(c, 1);
    end_change(c);
    fshm__lock_release(c->base);
    fshm__channel_notify_room(c);
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
        fshm__channel_notify_room(c);
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
