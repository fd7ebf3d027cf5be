/*
 * A channel's publishing side (channel.c describes the channel): taking a
 * slot to lend (from the free stack, else the newest or oldest message
 * that may be overwritten), loans and their commit or discard, publish
 * (lend, copy and commit in one), and waiting for room.
 */
#include "channel_internal.h"

#include <string.h>

/* The largest message fshm_channel_publish copies with the lock held (a
 * larger one is lent, copied, then committed). */
#define PUBLISH_IN_LOCK 4096

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
void fshm__channel_notify_room(const fshm_channel *c)
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
        fshm__channel_notify_room(c);
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
        *freed |= fshm__channel_sweep(c, 0);
        fshm_store64(U64(c->base, C_SWEEP_AT), head + c->slots, FSHM_RELAXED);
    }
    /* The slot read last before a free one: a free slot was last written
     * longest ago (a sweep frees the slots of messages that fell out of
     * reach), so taking it first would cycle through all N slots. */
    if (take_read(c, head, slot) || take_free(c, slot))
        return 1;
    /* Taking the newest read first leaves older slots holding messages that
     * fell out of reach: a sweep frees them before an unread message is
     * overwritten (overwrite mode) or the publisher waits (block mode). */
    *freed |= fshm__channel_sweep(c, 0);
    if (take_free(c, slot) || take_oldest(c, head, slot))
        return 1;
    /* Short of slots: find those of dead processes (at most every
     * LIVENESS_NS, the question costs system calls), and any that a sweep
     * can free. */
    live = fshm__channel_liveness_check(c);
    if (live)
        *freed |= fshm__channel_reclaim_subscribers(c);
    *freed |= fshm__channel_sweep(c, live);
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
        fshm__channel_notify_room(c); /* others may wait for what was reclaimed */
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

/* ---- pacing ---- */

/* How long a pacing publisher waits for a subscriber that lets go of no
 * message meanwhile before it stops waiting for it (the subscriber is
 * working on what it holds, stopped or dead): 100 us, and 1 ns a byte of
 * a slot (copying at 1 GB/s). */
#define PACE_STALL_NS 100000LL

/* How many unread messages pacing allows (paced, channel_internal.h): the
 * slots that fit in PACE_BYTES but for the one being read and the one being
 * written; the ring's own depth when nothing is paced. */
static uint64_t pace_allowance(const fshm_channel *c)
{
    return paced(c) ? (uint64_t)PACE_BYTES / c->stride - 2 : c->slots;
}

/* Whether the slowest live subscriber has at most `allow` messages unread
 * (seq_cst loads: the sleeper half of maybe_notify_room's pair). */
static int caught_up(const fshm_channel *c, uint64_t allow)
{
    uint64_t head = fshm_load64(U64(c->base, C_HEAD), FSHM_SEQ_CST);
    uint64_t least = min_cursor(c, head);
    if (least == 0)
        least = 1; /* a fresh subscriber's next message is 1 */
    return least > head || head + 1 - least <= allow;
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

/* Whether a waiting publisher may go on: room_ready, or when pacing
 * (allow < N) caught_up. */
static int may_go_on(const fshm_channel *c, uint64_t allow)
{
    return allow < c->slots ? caught_up(c, allow) : room_ready(c);
}

/* Until may_go_on: spin for spin_ns, then sleep on the room word, looking
 * for dead processes' slots every SLEEP_MAX_NS.  FSHM_ETIMEOUT at the
 * deadline, EINTR on a signal.  Pacing also ends, with 0, once the word
 * has not changed for the stall time: every slot a reader lets go of
 * changes it while someone waits, so a reader that lets go of none is
 * working on what it holds, stopped or dead, and is not waited for. */
static int wait_room_until(const fshm_channel *c, int64_t deadline, int64_t spin_ns,
                           uint64_t allow)
{
    uint32_t *word = U32(c->base, C_ROOM);
    uint32_t *waiters = U32(c->base, C_ROOM_WAITERS);
    int64_t start = fshm_monotonic_ns(), checked = start;
    int pacing = allow < c->slots;
    int64_t nap = pacing ? PACE_STALL_NS + (int64_t)c->stride : SLEEP_MAX_NS;
    unsigned spins = 0;
    int rc = 0;

    while (spin_ns > 0) {
        if (may_go_on(c, allow))
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
    fshm__channel_reclaim_if_due(c);
    fshm_add32(waiters, 1);
    for (;;) {
        int64_t now;
        /* Seq_cst, after registering: the sleeper half of the Dekker pairs
         * with maybe_notify_room and notify_room. */
        uint32_t v = fshm_load32(word, FSHM_SEQ_CST);
        if (may_go_on(c, allow))
            break;
        now = fshm_monotonic_ns();
        if (now >= deadline) {
            rc = FSHM_ETIMEOUT;
            break;
        }
        if (now - checked >= SLEEP_MAX_NS) {
            checked = now;
            fshm__channel_reclaim_if_due(c);
            continue;
        }
        rc = fshm_futex_wait(word, v, deadline - now < nap ? deadline - now : nap);
        if (rc == EINTR)
            break;
        rc = 0;
        if (pacing && fshm_load32(word, FSHM_SEQ_CST) == v)
            break; /* no reader let go of a message within the stall time */
    }
    fshm_add32(waiters, -1);
    return rc;
}

/* lend_once until it finds a slot: waiting for room as the timeout allows,
 * and first (a waiting loan of a large message) for the subscribers to
 * catch up, as pacing allows (wait_room_until with the allowance). */
static int lend(const fshm_channel *c, int64_t timeout_ns, int nonblock, fshm_loan *loan,
                const void *src, size_t n, uint64_t *seq)
{
    int64_t deadline = FSHM__NOW; /* the first try spins for the lock, no more */
    uint64_t allow = nonblock || timeout_ns == 0 ? c->slots : pace_allowance(c);
    int rc, spun = 0, timed = nonblock;
    for (;;) {
        if (allow < c->slots && !caught_up(c, allow)) {
            if (!timed) {
                deadline = channel_deadline(timeout_ns);
                timed = 1;
            }
            /* Never fails the call: at the deadline the loan goes on. */
            rc = wait_room_until(c, deadline, SPIN_NS, allow);
            if (rc != 0 && rc != FSHM_ETIMEOUT)
                return rc;
        }
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
        rc = wait_room_until(c, deadline, spun ? 0 : SPIN_NS, c->slots);
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
    return wait_room_until(c, fshm__deadline(timeout_ns), 0, c->slots);
}
