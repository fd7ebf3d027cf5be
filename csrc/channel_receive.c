/*
 * A channel's subscribing side (channel.c describes the channel; subscribe
 * and unsubscribe are there): receiving in place or into a buffer, letting
 * go of a message received in place, and waiting for messages.
 */
#include "channel_internal.h"

#include <string.h>

/* How long a reader waits for a publisher deciding whether it may take the
 * slot the reader has just pinned (a few instructions under the lock,
 * unless the publisher was preempted or died there): after that the
 * message counts as lost. */
#define DECIDE_WAIT_NS 200000LL

/* What receive_once returns when there is nothing to receive. */
#define NOTHING 1

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
        /* A pacing publisher waits for the cursor to move (caught_up): tell
         * it now rather than at unpin, a whole read later.  No fence: a
         * sleeper this misses is told at unpin. */
        if (paced(c))
            maybe_notify_room(c);
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
