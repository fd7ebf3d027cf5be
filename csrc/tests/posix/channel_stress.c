/*
 * Publishers and subscribers on one channel (csrc/channel.c), built with the
 * compiler's sanitizers by tests/test_sanitizers.py.  Rings are small, so
 * slots are reused all the time, block-mode publishers keep waiting for
 * room, and overwrite-mode readers keep falling behind.
 *
 *   channel_stress threads PUBS SUBS PER_PUB SLOTS SLOT_SIZE block|overwrite
 *       PUBS publisher and SUBS subscriber threads of this process
 *       (ThreadSanitizer sees threads only) over a channel on heap memory.
 *       Block mode: every subscriber receives every message once, in
 *       order, each publisher's in the order it published them, with
 *       sequence numbers 1, 2, 3, ...  Overwrite mode: publishers never get
 *       FSHM_EFULL (they never wait for readers); subscriber 0 holds a
 *       message pinned while the publishers lap the ring, and its bytes
 *       must not change (publisher 1 asks for such a hold every four
 *       laps and waits until one has begun, so that the laps are made
 *       however the processes are scheduled); for every subscriber,
 *       messages received plus messages reported missed is every message
 *       published.  Subscribers receive in place and as copies
 *       (fshm_channel_receive_into), now and then into a buffer too small,
 *       which must change nothing.
 *   channel_stress procs PUBS SUBS PER_PUB SLOTS SLOT_SIZE block|overwrite NAME
 *       the same with forked processes, each opening the named channel.
 *   channel_stress history ROUNDS
 *       late joiners: exactly the last `history` messages in place, then
 *       the new ones (both modes, and with another subscriber's pins in the
 *       way); and joiners while a publisher runs.
 *   channel_stress crash ROUNDS SEED NAME NAME2
 *       forked publishers and subscribers SIGKILLed at random instants
 *       (inside a loan, inside a commit, holding pins) on a block channel
 *       (NAME) and an overwrite one (NAME2).  After every round the next
 *       user must find the channel working: a block-mode publisher that
 *       dead subscribers hold back is unblocked within a second, every
 *       message in place is whole, no slot stays lost; at the end every
 *       acknowledged message reached the parent's block-mode subscriber
 *       exactly once, each publisher's in order.
 *   channel_stress wake ROUNDS
 *       sleepers on the notify and room words (with no re-check of their
 *       own) are woken by a publish and by a release; blocked receives,
 *       loans, waits return; a signal ends a blocked receive and a blocked
 *       loan with EINTR; a blocked loan is freed within a second when the
 *       subscriber that held it back is killed.
 *   channel_stress takeover NAME
 *       what a channel maker killed while making the channel leaves (Linux:
 *       the making mode bit, a dead maker's id in the lock word, and what it
 *       wrote for other parameters in the tables): an attaching opener
 *       refuses it, an open-or-create opener makes a clean channel over it.
 *   channel_stress steps ROUNDS
 *       a traced child single-stepped through publishes (a free slot, a
 *       claimed one, a pinned one passed over, after a dead lock holder),
 *       a loan it writes and commits, and a loan it discards: after every instruction the channel, as the
 *       next user finds it once the child is dead, holds the messages
 *       before or those after, never part of one, and every slot is free
 *       or holds a message (Linux ptrace; ptrace=unavailable otherwise).
 *
 * A message is [publisher u32][length u32][number u64][checksum u64] and a
 * payload that is a function of the three, so a torn or mixed message fails
 * its checksum.  Prints `key=value` counts and exits 0 when every check
 * held, 1 (with a message on stderr) when one did not.
 */
#include "fastshm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define HDR 24
#define WAIT_NS 100000000LL      /* one blocking call's bound: 100 ms */
#define STALL_NS 30000000000LL   /* no progress for this long is a hang: 30 s */
#define MAX_SLOT 16384

/* Header and slot offsets of docs/FORMAT.md ("Channels"), for the checks
 * that look at the raw channel. */
#define C_HEAD 16
#define C_NOTIFY 24
#define C_WAITERS 28
#define C_ROOM 48
#define C_ROOM_WAITERS 52
#define C_LOCK 64
#define C_LOCK_NEXT 80
#define C_DIRTY 88
#define C_FREE_COUNT 92
#define SLOTS_AT 256
#define S_WORD 0
#define S_LENGTH 8
#define S_PINS 16
#define S_LOANER 24

#define U64(base, off) (*(volatile uint64_t *)((unsigned char *)(base) + (off)))
#define U32(base, off) (*(volatile uint32_t *)((unsigned char *)(base) + (off)))

/* Set in a traced child: LeakSanitizer cannot run under ptrace. */
static int traced;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "channel_stress [%d]: ", (int)getpid());
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    if (traced)
        _exit(1);
    exit(1);
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static uint64_t rnd(uint64_t *state)
{
    *state += 0x9E3779B97F4A7C15ULL;
    return mix(*state);
}

static uint64_t checksum(uint32_t pub, uint64_t n, const unsigned char *p, size_t len)
{
    uint64_t h = 1469598103934665603ULL ^ mix(((uint64_t)pub << 40) ^ n);
    size_t i;
    for (i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

/* Message `n` of publisher `pub` into buf: HDR to max_len bytes. */
static size_t make_msg(unsigned char *buf, uint32_t pub, uint64_t n, size_t max_len)
{
    uint64_t r = mix(((uint64_t)pub << 32) ^ n ^ 0x5151);
    uint32_t len = HDR + (uint32_t)(r % (max_len - HDR + 1));
    uint64_t sum;
    size_t i;
    for (i = HDR; i < len; i++)
        buf[i] = (unsigned char)(r >> (i % 57)) ^ (unsigned char)(i * 7);
    sum = checksum(pub, n, buf + HDR, len - HDR);
    memcpy(buf, &pub, 4);
    memcpy(buf + 4, &len, 4);
    memcpy(buf + 8, &n, 8);
    memcpy(buf + 16, &sum, 8);
    return len;
}

/* 0 when p[0..len) is a whole message; its publisher and number out. */
static int check_msg(const unsigned char *p, size_t len, uint32_t *pub, uint64_t *n)
{
    uint32_t l;
    uint64_t sum;
    if (len < HDR)
        return 1;
    memcpy(pub, p, 4);
    memcpy(&l, p + 4, 4);
    memcpy(n, p + 8, 8);
    memcpy(&sum, p + 16, 8);
    if (l != len || *n == 0)
        return 1;
    return checksum(*pub, *n, p + HDR, len - HDR) != sum;
}

static void *shared_zeroed(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die("mmap of %zu bytes failed", size);
    return p;
}

static void add(uint64_t *counter, uint64_t n)
{
    __atomic_add_fetch(counter, n, __ATOMIC_RELAXED);
}

/* Payloads are 64-aligned, and page-aligned from a page up. */
static void check_alignment(const fshm_channel *c, size_t offset)
{
    if (offset % 64 != 0 || (c->slot_size >= 4096 && offset % 4096 != 0) ||
        offset < c->payload_offset || offset + c->slot_size > c->size)
        die("payload at %zu: misaligned or outside the mapping", offset);
}

/* ---- threads and procs ---- */

static fshm_channel ch;
static unsigned pubs, nsubs;
static uint64_t per_pub;
static size_t max_len;
static int overwrite_mode;
/* Shared by every thread or process: seen[(s * pubs + p - 1) * (per_pub + 1) + n]
 * counts subscriber s's receipts of publisher p's message n; and totals. */
static uint32_t *seen;
static struct totals {
    uint64_t subscribed, received, missed, publishes, try_publishes, loans, try_loans,
        discards, full_waits, busy, empty_waits, held, pinned_checks, laps, copies, refused,
        failures;
    /* Overwrite mode: holds publisher 1 has asked subscriber 0 for, and
     * holds subscriber 0 has begun. */
    uint64_t hold_asks, hold_starts;
} *totals;

/* Overwrite mode: publisher 1 asks for a hold every HOLD_LAPS laps; each
 * hold lasts 3 laps (or until the publishers finish). */
#define HOLD_LAPS 4

static void wait_for_subscribers(void)
{
    int64_t start = fshm_monotonic_ns();
    while (__atomic_load_n(&totals->subscribed, __ATOMIC_ACQUIRE) < nsubs) {
        if (fshm_monotonic_ns() - start > STALL_NS)
            die("subscribers never all subscribed");
        fshm_sleep_ns(100000);
    }
}

static void publisher_loop(uint32_t id)
{
    unsigned char *buf = malloc(MAX_SLOT);
    uint64_t state = id * 7919u, n = 1, last_seq = 0;
    int64_t last = fshm_monotonic_ns();
    if (buf == NULL)
        die("malloc");
    wait_for_subscribers();
    while (n <= per_pub) {
        size_t len = make_msg(buf, id, n, max_len);
        /* Asked before message n goes out, so that subscriber 0 has a
         * message published after the ask to hold, and never at the last
         * one (a hold begins only at a message before the last). */
        uint64_t ask = overwrite_mode && id == 1 && n % (HOLD_LAPS * ch.slots) == 0 &&
                               n < per_pub
                           ? n / (HOLD_LAPS * ch.slots) : 0;
        unsigned how = (unsigned)(rnd(&state) % 5);
        uint64_t seq = 0;
        fshm_loan l;
        int rc;
        if (ask)
            __atomic_store_n(&totals->hold_asks, ask, __ATOMIC_RELEASE);
        if (how == 0) {
            rc = fshm_channel_publish(&ch, buf, len, WAIT_NS, &seq);
            if (rc == 0)
                add(&totals->publishes, 1);
        } else if (how == 1) {
            rc = fshm_channel_try_publish(&ch, buf, len, &seq);
            if (rc == 0)
                add(&totals->try_publishes, 1);
        } else {
            rc = how == 3 ? fshm_channel_try_loan(&ch, len, &l)
                          : fshm_channel_loan(&ch, len, &l, WAIT_NS);
            if (rc == 0) {
                if (l.capacity != ch.slot_size || l.slot >= ch.slots)
                    die("loan of slot %u, %zu bytes", l.slot, l.capacity);
                check_alignment(&ch, l.offset);
                if (how == 4) {
                    /* Written, then given back: nobody ever sees it. */
                    memset(l.data, 0xEE, len);
                    if ((rc = fshm_channel_discard(&ch, &l)) != 0)
                        die("discard: rc %d", rc);
                    add(&totals->discards, 1);
                    continue;
                }
                /* Written in two halves, another thread or process may run
                 * in between: nobody sees any of it before the commit. */
                memcpy(l.data, buf, len / 2);
                sched_yield();
                memcpy((unsigned char *)l.data + len / 2, buf + len / 2, len - len / 2);
                rc = how == 3 ? fshm_channel_try_commit(&ch, &l, len, &seq) : FSHM_EBUSY;
                if (rc == FSHM_EBUSY)
                    rc = fshm_channel_commit(&ch, &l, len, -1, &seq);
                if (rc != 0)
                    die("publisher %u: commit rc %d", id, rc);
                add(how == 3 ? &totals->try_loans : &totals->loans, 1);
            }
        }
        if (rc == FSHM_EFULL || rc == FSHM_EBUSY) {
            /* Overwrite mode: a publisher never waits for readers (slots
             * outnumber what readers hold), only, briefly, for another
             * publisher's lock. */
            if (rc == FSHM_EFULL && overwrite_mode)
                die("publisher %u: no slot in overwrite mode", id);
            add(rc == FSHM_EFULL ? &totals->full_waits : &totals->busy, 1);
            if (fshm_monotonic_ns() - last > STALL_NS)
                die("publisher %u: no slot for 30 s", id);
            sched_yield();
            continue;
        }
        if (rc != 0)
            die("publisher %u: rc %d (how %u)", id, rc, how);
        if (seq <= last_seq)
            die("publisher %u: sequence %llu after %llu", id, (unsigned long long)seq,
                (unsigned long long)last_seq);
        last_seq = seq;
        if (ask) {
            /* Waits (as the harness, not the channel: full_waits stays 0)
             * until subscriber 0 holds a message, so that the laps below
             * run under its pin even when it was not scheduled for a while. */
            while (__atomic_load_n(&totals->hold_starts, __ATOMIC_ACQUIRE) < ask) {
                if (fshm_monotonic_ns() - last > STALL_NS)
                    die("publisher %u: subscriber 0 never held a message", id);
                sched_yield();
            }
        }
        last = fshm_monotonic_ns();
        n++;
    }
    free(buf);
}

typedef struct held_msg {
    fshm_sample s;
    unsigned char copy[MAX_SLOT];
} held_msg;

/* The bytes of a message held pinned are the bytes it was received with. */
static void check_held(const held_msg *h)
{
    if (memcmp(h->s.data, h->copy, h->s.length) != 0)
        die("the bytes of pinned message %llu changed", (unsigned long long)h->s.seq);
    add(&totals->pinned_checks, 1);
}

static void subscriber_loop(unsigned s, const fshm_sub *sub)
{
    uint64_t state = s * 104729u + 3, total = pubs * per_pub;
    uint64_t last_seq = 0, received = 0, missed = 0, *last_n;
    held_msg *held = malloc(sizeof *held);
    unsigned char *into = malloc(max_len);
    int holding = 0, refused_yet = 0;
    int64_t last = fshm_monotonic_ns();
    last_n = calloc(pubs + 1, sizeof *last_n);
    if (held == NULL || into == NULL || last_n == NULL)
        die("malloc");
    for (;;) {
        unsigned how = (unsigned)(rnd(&state) % 6);
        fshm_sample smp;
        uint64_t gone = 0, n;
        uint32_t p;
        int rc, copied = 0;
        /* A subscriber that holds a slot while it sleeps for the next
         * message could leave a block-mode publisher without one: only
         * the non-sleeping receive while holding. */
        if (how >= 4 && !(overwrite_mode && s == 0)) {
            /* A copy, into a buffer of max_len bytes, or now and then into
             * one that may be too small: refused, the message stays next
             * (the order checks below see it again).  The first is into
             * none at all, so that every run sees a refusal. */
            size_t cap = !refused_yet ? 0
                         : rnd(&state) % 8 == 0 ? (size_t)(rnd(&state) % (max_len + 1))
                                                : max_len;
            rc = how == 4 && !holding
                     ? fshm_channel_receive_into(&ch, sub, into, cap, &smp, &gone, WAIT_NS)
                     : fshm_channel_try_receive_into(&ch, sub, into, cap, &smp, &gone);
            if (rc == FSHM_ESMALL) {
                if (smp.length <= cap || smp.length > max_len || gone != 0)
                    die("subscriber %u: %zu bytes refused for %zu", s, smp.length, cap);
                add(&totals->refused, 1);
                refused_yet = 1;
                continue;
            }
            if (rc == 0) {
                if (smp.data != NULL || smp.length > cap || smp.slot >= ch.slots)
                    die("subscriber %u: a copy of %zu bytes into %zu", s, smp.length, cap);
                smp.data = into;
                copied = 1;
                add(&totals->copies, 1);
            }
        } else if (holding || how == 0)
            rc = fshm_channel_try_receive(&ch, sub, &smp, &gone);
        else if (how == 1)
            rc = fshm_channel_receive(&ch, sub, &smp, &gone, WAIT_NS);
        else if (how == 2) {
            rc = fshm_channel_wait(&ch, sub, WAIT_NS);
            if (rc == 0)
                rc = fshm_channel_try_receive(&ch, sub, &smp, &gone);
        } else
            rc = fshm_channel_receive(&ch, sub, &smp, &gone, 0);
        if (rc == FSHM_ETIMEOUT) {
            if (holding) {
                check_held(held);
                fshm_channel_release(&ch, sub, held->s.slot);
                holding = 0;
            }
            add(&totals->empty_waits, 1);
            if (fshm_monotonic_ns() - last > STALL_NS)
                die("subscriber %u: nothing for 30 s (received %llu, missed %llu)", s,
                    (unsigned long long)received, (unsigned long long)missed);
            continue;
        }
        if (rc != 0)
            die("subscriber %u: receive rc %d", s, rc);
        last = fshm_monotonic_ns();
        missed += gone;
        if (!copied) {
            check_alignment(&ch, smp.offset);
            if ((const unsigned char *)smp.data != ch.base + smp.offset)
                die("sample data and offset disagree");
        }
        if (smp.seq <= last_seq || (!overwrite_mode && (smp.seq != last_seq + 1 || gone != 0)))
            die("subscriber %u: message %llu after %llu (%llu missed)", s,
                (unsigned long long)smp.seq, (unsigned long long)last_seq,
                (unsigned long long)gone);
        if (smp.seq - last_seq - 1 != gone)
            die("subscriber %u: %llu missed between %llu and %llu", s, (unsigned long long)gone,
                (unsigned long long)last_seq, (unsigned long long)smp.seq);
        last_seq = smp.seq;
        if (check_msg(smp.data, smp.length, &p, &n) != 0)
            die("subscriber %u: torn message %llu of %zu bytes", s,
                (unsigned long long)smp.seq, smp.length);
        if (p < 1 || p > pubs || n > per_pub || n <= last_n[p] ||
            (!overwrite_mode && n != last_n[p] + 1))
            die("subscriber %u: publisher %u's message %llu after %llu", s, p,
                (unsigned long long)n, (unsigned long long)last_n[p]);
        last_n[p] = n;
        if (__atomic_add_fetch(&seen[(s * pubs + p - 1) * (per_pub + 1) + n], 1,
                               __ATOMIC_RELAXED) != 1)
            die("subscriber %u: publisher %u's message %llu twice", s, p, (unsigned long long)n);
        received++;
        if (holding) {
            check_held(held);
            fshm_channel_release(&ch, sub, held->s.slot);
            holding = 0;
        }
        if (copied) {
            /* Released already (the run's end finds no pin left). */
            if (overwrite_mode ? smp.seq == total : received == total)
                break;
            continue;
        }
        if (overwrite_mode && s == 0 && smp.seq < total &&
            __atomic_load_n(&totals->hold_starts, __ATOMIC_RELAXED) <
                __atomic_load_n(&totals->hold_asks, __ATOMIC_ACQUIRE)) {
            /* The slow reader, when publisher 1 asks: keeps this one pinned
             * while the publishers lap the ring three times (or finish),
             * then checks its bytes. */
            uint64_t from = fshm_channel_head(&ch), now;
            int64_t t0 = fshm_monotonic_ns();
            memcpy(held->copy, smp.data, smp.length);
            held->s = smp;
            __atomic_add_fetch(&totals->hold_starts, 1, __ATOMIC_RELEASE);
            while ((now = fshm_channel_head(&ch)) < from + 3 * ch.slots && now < total) {
                if (fshm_monotonic_ns() - t0 > STALL_NS)
                    die("the publishers stopped while a reader held a slot");
                sched_yield();
            }
            check_held(held);
            add(&totals->laps, (now - from) / ch.slots);
        }
        if (rnd(&state) % 3 == 0 && !(overwrite_mode && s == 0)) {
            /* Keep it pinned while receiving the next. */
            memcpy(held->copy, smp.data, smp.length);
            held->s = smp;
            holding = 1;
            add(&totals->held, 1);
        } else {
            if ((rc = fshm_channel_release(&ch, sub, smp.slot)) != 0)
                die("release: rc %d", rc);
        }
        if (overwrite_mode ? smp.seq == total : received == total)
            break;
    }
    if (holding) {
        check_held(held);
        fshm_channel_release(&ch, sub, held->s.slot);
    }
    if (received + missed != total)
        die("subscriber %u: %llu received and %llu missed of %llu", s,
            (unsigned long long)received, (unsigned long long)missed, (unsigned long long)total);
    add(&totals->received, received);
    add(&totals->missed, missed);
    free(into);
    free(held);
    free(last_n);
}

static fshm_sub *thread_subs;

static void *publisher_thread(void *arg)
{
    publisher_loop((uint32_t)(uintptr_t)arg);
    return NULL;
}

static void *subscriber_thread(void *arg)
{
    unsigned s = (unsigned)(uintptr_t)arg;
    subscriber_loop(s, &thread_subs[s]);
    return NULL;
}

static void setup(const char *p, const char *s, const char *per, const char *slot_size,
                  const char *mode)
{
    pubs = (unsigned)strtoul(p, NULL, 10);
    nsubs = (unsigned)strtoul(s, NULL, 10);
    per_pub = strtoull(per, NULL, 10);
    max_len = (size_t)strtoull(slot_size, NULL, 10);
    overwrite_mode = strcmp(mode, "overwrite") == 0;
    if (pubs < 1 || nsubs < 1 || nsubs > 32 || per_pub < 1 || max_len < HDR ||
        max_len > MAX_SLOT || (!overwrite_mode && strcmp(mode, "block") != 0))
        die("bad arguments");
    seen = shared_zeroed((size_t)nsubs * pubs * (per_pub + 1) * sizeof *seen);
    totals = shared_zeroed(sizeof *totals);
}

/* After the run: every message received once by every subscriber (block
 * mode), nothing pinned or lent, the ring wrapped many times. */
static void final_checks(void)
{
    uint64_t total = pubs * per_pub, p, n, counted = 0;
    unsigned s;
    uint32_t i;
    for (s = 0; s < nsubs; s++)
        for (p = 1; p <= pubs; p++)
            for (n = 1; n <= per_pub; n++) {
                uint32_t k = seen[(s * pubs + p - 1) * (per_pub + 1) + n];
                if (k > 1 || (!overwrite_mode && k != 1))
                    die("subscriber %u got publisher %llu's message %llu %u times", s,
                        (unsigned long long)p, (unsigned long long)n, k);
                counted += k;
            }
    if (counted != totals->received)
        die("%llu receipts counted, %llu reported", (unsigned long long)counted,
            (unsigned long long)totals->received);
    if (fshm_channel_head(&ch) != total)
        die("head %llu after %llu messages", (unsigned long long)fshm_channel_head(&ch),
            (unsigned long long)total);
    for (i = 0; i < ch.slots; i++) {
        unsigned char *e = ch.base + SLOTS_AT + (size_t)i * 64;
        if (U64(e, S_PINS) != 0 || U64(e, S_LOANER) != 0 || (U64(e, S_WORD) & 1))
            die("slot %u left pinned, lent or undecided", i);
    }
    if (fshm_channel_lock_owner(&ch) != 0 || U32(ch.base, C_DIRTY) != 0)
        die("lock or dirty mark left set");
    if (fshm_channel_subscribers(&ch) != 0)
        die("%u subscribers left", fshm_channel_subscribers(&ch));
    printf("messages=%llu received=%llu missed=%llu publishes=%llu try_publishes=%llu "
           "loans=%llu try_loans=%llu discards=%llu full_waits=%llu busy=%llu "
           "empty_waits=%llu held=%llu pinned_checks=%llu laps=%llu copies=%llu refused=%llu "
           "wraps=%llu\n",
           (unsigned long long)total, (unsigned long long)totals->received,
           (unsigned long long)totals->missed, (unsigned long long)totals->publishes,
           (unsigned long long)totals->try_publishes, (unsigned long long)totals->loans,
           (unsigned long long)totals->try_loans, (unsigned long long)totals->discards,
           (unsigned long long)totals->full_waits, (unsigned long long)totals->busy,
           (unsigned long long)totals->empty_waits, (unsigned long long)totals->held,
           (unsigned long long)totals->pinned_checks, (unsigned long long)totals->laps,
           (unsigned long long)totals->copies, (unsigned long long)totals->refused,
           (unsigned long long)(total / ch.slots));
}

static uint32_t flags_of_mode(void)
{
    return overwrite_mode ? FSHM_CHANNEL_OVERWRITE : 0;
}

static int run_threads(uint32_t slots)
{
    pthread_t *t = calloc(pubs + nsubs, sizeof *t);
    size_t size = fshm_channel_size_for(max_len, slots, nsubs);
    void *base = NULL;
    unsigned i;
    int rc;
    thread_subs = calloc(nsubs, sizeof *thread_subs);
    if (t == NULL || thread_subs == NULL || size == 0 || posix_memalign(&base, 4096, size) != 0)
        die("allocation");
    memset(base, 0, size);
    if ((rc = fshm_channel_init(&ch, base, size, max_len, slots, 0, nsubs, flags_of_mode())) != 0)
        die("init: rc %d", rc);
    for (i = 0; i < nsubs; i++) {
        if ((rc = fshm_channel_subscribe(&ch, &thread_subs[i], 0)) != 0)
            die("subscribe: rc %d", rc);
        add(&totals->subscribed, 1);
    }
    for (i = 0; i < nsubs; i++)
        pthread_create(&t[pubs + i], NULL, subscriber_thread, (void *)(uintptr_t)i);
    for (i = 0; i < pubs; i++)
        pthread_create(&t[i], NULL, publisher_thread, (void *)(uintptr_t)(i + 1));
    for (i = 0; i < pubs + nsubs; i++)
        pthread_join(t[i], NULL);
    for (i = 0; i < nsubs; i++)
        if ((rc = fshm_channel_unsubscribe(&ch, &thread_subs[i])) != 0)
            die("unsubscribe: rc %d", rc);
    final_checks();
    free(base);
    free(t);
    free(thread_subs);
    return 0;
}

static void attach_by_name(const char *name, fshm_channel *c, fshm_map *m)
{
    int rc = fshm_channel_open(c, m, name, FSHM_ATTACH, 0, 0, 0, 0, 0, 0);
    if (rc != 0)
        die("attach %s: rc %d", name, rc);
}

static int run_procs(uint32_t slots, const char *name)
{
    fshm_map m;
    pid_t *pids = calloc(pubs + nsubs, sizeof *pids);
    unsigned i, failed = 0;
    int rc = fshm_channel_open(&ch, &m, name, FSHM_CREATE, max_len, slots, 0, nsubs,
                               flags_of_mode(), 0600);
    if (rc != 0 || pids == NULL)
        die("create %s: rc %d", name, rc);
    fflush(NULL);
    for (i = 0; i < pubs + nsubs; i++) {
        pids[i] = fork();
        if (pids[i] < 0)
            die("fork");
        if (pids[i] == 0) {
            fshm_map mine;
            fshm_unmap(m.base, m.size);
            attach_by_name(name, &ch, &mine);
            if (i < pubs) {
                publisher_loop(i + 1);
            } else {
                fshm_sub sub;
                if ((rc = fshm_channel_subscribe(&ch, &sub, -1)) != 0)
                    die("subscribe: rc %d", rc);
                add(&totals->subscribed, 1);
                subscriber_loop(i - pubs, &sub);
                if ((rc = fshm_channel_unsubscribe(&ch, &sub)) != 0)
                    die("unsubscribe: rc %d", rc);
            }
            fshm_unmap(mine.base, mine.size);
            _exit(0);
        }
    }
    for (i = 0; i < pubs + nsubs; i++) {
        int status;
        if (waitpid(pids[i], &status, 0) != pids[i] || !WIFEXITED(status) ||
            WEXITSTATUS(status) != 0)
            failed++;
    }
    if (failed)
        die("%u children failed", failed);
    final_checks();
    fshm_unmap(m.base, m.size);
    fshm_unlink(name);
    free(pids);
    return 0;
}

/* ---- history: late joiners ---- */

static struct {
    unsigned long cases, joined, from_history, concurrent_joins, concurrent_messages;
} hs;

/* Publish messages (1, n) ... (1, n + k - 1) of publisher 1. */
static void publish_run(const fshm_channel *c, uint64_t *n, unsigned k)
{
    unsigned char buf[256];
    unsigned i;
    for (i = 0; i < k; i++, (*n)++) {
        int rc = fshm_channel_publish(c, buf, make_msg(buf, 1, *n, (size_t)c->slot_size), 0,
                                      NULL);
        if (rc != 0)
            die("history: publish of %llu: rc %d", (unsigned long long)*n, rc);
    }
}

/* Receive everything now there: the numbers must be first, first + 1, ...
 * (publisher 1's, which here are also the sequence numbers); returns how
 * many. */
static uint64_t drain_expect(const fshm_channel *c, const fshm_sub *sub, uint64_t first)
{
    uint64_t got = 0, missed, n;
    fshm_sample smp;
    uint32_t p;
    int rc;
    while ((rc = fshm_channel_try_receive(c, sub, &smp, &missed)) == 0) {
        if (check_msg(smp.data, smp.length, &p, &n) != 0 || n != smp.seq ||
            smp.seq != first + got || missed != 0)
            die("history: got %llu (missed %llu), wanted %llu", (unsigned long long)smp.seq,
                (unsigned long long)missed, (unsigned long long)(first + got));
        fshm_channel_release(c, sub, smp.slot);
        got++;
    }
    if (rc != FSHM_ETIMEOUT)
        die("history: receive rc %d", rc);
    return got;
}

static void history_case(uint32_t flags, uint32_t slots, uint32_t history, unsigned before)
{
    size_t size = fshm_channel_size_for(200, slots, 4);
    void *base = NULL;
    fshm_channel c;
    fshm_sub a, b;
    fshm_sample pinned;
    uint64_t n = 1, want, missed;
    if (posix_memalign(&base, 4096, size) != 0)
        die("posix_memalign");
    memset(base, 0, size);
    if (fshm_channel_init(&c, base, size, 200, slots, history, 4, flags) != 0)
        die("init");
    /* No subscriber: a publisher never waits, whatever the mode. */
    publish_run(&c, &n, before);
    if (fshm_channel_subscribe(&c, &a, 0) != 0)
        die("subscribe");
    want = before < history ? before : history;
    if (drain_expect(&c, &a, n - want) != want)
        die("history: a joiner after %u messages got other than the last %llu", before,
            (unsigned long long)want);
    hs.from_history += want;
    /* As many as the ring holds without overwriting any (overwrite mode
     * would lose the oldest otherwise, and say so). */
    publish_run(&c, &n, slots - 1);
    if (drain_expect(&c, &a, n - (slots - 1)) != slots - 1)
        die("history: the new messages did not follow");
    /* Overwrite mode: an old message pinned by one subscriber is passed
     * over; a joiner still gets the latest in a row. */
    if ((flags & FSHM_CHANNEL_OVERWRITE) && history > 0) {
        publish_run(&c, &n, 1);
        if (fshm_channel_try_receive(&c, &a, &pinned, &missed) != 0 || pinned.seq != n - 1)
            die("history: pin");
        publish_run(&c, &n, 2 * slots + 3);
        if (fshm_channel_subscribe(&c, &b, 0) != 0)
            die("subscribe b");
        if (drain_expect(&c, &b, n - history) != history)
            die("history: a joiner with a pinned slot in the ring");
        hs.from_history += history;
        {
            uint32_t p;
            uint64_t pn;
            if (check_msg(pinned.data, pinned.length, &p, &pn) != 0 || pn != pinned.seq)
                die("history: the pinned message changed");
        }
        fshm_channel_release(&c, &a, pinned.slot);
        fshm_channel_unsubscribe(&c, &b);
        hs.joined++;
    }
    fshm_channel_unsubscribe(&c, &a);
    hs.joined++;
    hs.cases++;
    free(base);
}

static fshm_channel hc;
static volatile int history_publishing;

static void *history_publisher(void *arg)
{
    uint64_t n = 1;
    (void)arg;
    while (__atomic_load_n(&history_publishing, __ATOMIC_ACQUIRE)) {
        unsigned char buf[256];
        int rc = fshm_channel_publish(&hc, buf, make_msg(buf, 1, n, sizeof buf), WAIT_NS, NULL);
        if (rc == 0)
            n++;
        else if (rc != FSHM_EFULL && rc != FSHM_EBUSY) /* EBUSY: a joiner held the lock */
            die("history publisher: rc %d", rc);
    }
    return NULL;
}

/* Joiners while a publisher runs (block mode): each gets a run of
 * messages in a row from at most `history` before its join, none lost. */
static void concurrent_joins(unsigned joins)
{
    const uint32_t slots = 8, history = 5;
    size_t size = fshm_channel_size_for(256, slots, 4);
    void *base = NULL;
    pthread_t t;
    unsigned j;
    if (posix_memalign(&base, 4096, size) != 0)
        die("posix_memalign");
    memset(base, 0, size);
    if (fshm_channel_init(&hc, base, size, 256, slots, history, 4, 0) != 0)
        die("init");
    history_publishing = 1;
    pthread_create(&t, NULL, history_publisher, NULL);
    for (j = 0; j < joins; j++) {
        fshm_sub sub;
        fshm_sample smp;
        uint64_t before = fshm_channel_head(&hc), after, first = 0, prev = 0, missed, n;
        unsigned got;
        uint32_t p;
        int rc;
        if (fshm_channel_subscribe(&hc, &sub, -1) != 0)
            die("subscribe");
        after = fshm_channel_head(&hc);
        for (got = 0; got < 40; got++) {
            rc = fshm_channel_receive(&hc, &sub, &smp, &missed, STALL_NS);
            if (rc != 0)
                die("joiner: rc %d", rc);
            if (check_msg(smp.data, smp.length, &p, &n) != 0 || n != smp.seq || missed != 0 ||
                (prev != 0 && smp.seq != prev + 1))
                die("joiner: message %llu after %llu", (unsigned long long)smp.seq,
                    (unsigned long long)prev);
            if (first == 0)
                first = smp.seq;
            prev = smp.seq;
            fshm_channel_release(&hc, &sub, smp.slot);
        }
        if (first + history <= before || first > after + 1)
            die("joiner: first message %llu, head %llu before the join and %llu after",
                (unsigned long long)first, (unsigned long long)before,
                (unsigned long long)after);
        hs.concurrent_messages += got;
        fshm_channel_unsubscribe(&hc, &sub);
        hs.concurrent_joins++;
    }
    __atomic_store_n(&history_publishing, 0, __ATOMIC_RELEASE);
    pthread_join(t, NULL);
    free(base);
}

static int run_history(unsigned rounds)
{
    unsigned r;
    for (r = 0; r < rounds; r++) {
        unsigned before;
        for (before = 0; before < 30; before += 1 + r % 3) {
            history_case(0, 8, 5, before);
            history_case(FSHM_CHANNEL_OVERWRITE, 8, 5, before);
            history_case(0, 8, 0, before);
            history_case(FSHM_CHANNEL_OVERWRITE, 2, 1, before);
            history_case(0, 16, 15, before);
        }
    }
    concurrent_joins(20 * rounds);
    printf("cases=%lu joined=%lu from_history=%lu concurrent_joins=%lu "
           "concurrent_messages=%lu\n",
           hs.cases, hs.joined, hs.from_history, hs.concurrent_joins, hs.concurrent_messages);
    return 0;
}

/* ---- crash: children killed at random instants ---- */

#define CRASH_SLOTS 8
#define CRASH_SLOT_SIZE 256
#define CRASH_SUBS 16
#define MAXKIDS 6

/* Where a child was when it was killed (its own word in shared memory). */
enum { IDLE, LOANING, WRITING, COMMITTING, PUBLISHING, RECEIVING, HOLDING };

/* What a publisher child tells the parent, one write(2) each. */
typedef struct note {
    uint32_t pub;
    uint32_t pad;
    uint64_t n;
} note;

static int note_fd = -1;
static volatile uint32_t *kid_state;

static void tell(uint32_t pub, uint64_t n)
{
    note x;
    x.pub = pub;
    x.pad = 0;
    x.n = n;
    while (write(note_fd, &x, sizeof x) != (ssize_t)sizeof x)
        if (errno != EINTR)
            _exit(3);
}

static void set_state(unsigned kid, uint32_t s)
{
    __atomic_store_n(&kid_state[kid], s, __ATOMIC_SEQ_CST);
}

static void crash_publisher(const fshm_channel *c, unsigned kid, uint32_t id, uint64_t state)
{
    unsigned char buf[CRASH_SLOT_SIZE];
    uint64_t n = 1;
    for (;;) {
        size_t len = make_msg(buf, id, n, CRASH_SLOT_SIZE);
        fshm_loan l;
        int rc;
        if (rnd(&state) % 4 == 0) {
            set_state(kid, PUBLISHING);
            rc = fshm_channel_publish(c, buf, len, WAIT_NS, NULL);
        } else {
            set_state(kid, LOANING);
            rc = fshm_channel_loan(c, len, &l, WAIT_NS);
            if (rc == 0) {
                size_t at = 0;
                set_state(kid, WRITING);
                while (at < len) {
                    size_t k = len - at < 64 ? len - at : 64;
                    memcpy((unsigned char *)l.data + at, buf + at, k);
                    at += k;
                    if (rnd(&state) % 4 == 0)
                        sched_yield();
                }
                set_state(kid, COMMITTING);
                rc = fshm_channel_commit(c, &l, len, -1, NULL);
            }
        }
        set_state(kid, IDLE);
        /* EBUSY: another child was stopped (to see where it is) while it
         * held the lock, through this call's wait; nothing was lent. */
        if (rc == FSHM_EFULL || rc == FSHM_EBUSY)
            continue;
        if (rc != 0)
            die("crash publisher %u: rc %d", id, rc);
        tell(id, n++);
    }
}

static void crash_subscriber(const fshm_channel *c, unsigned kid, uint64_t state)
{
    fshm_sub sub;
    uint64_t last = 0, missed, n;
    uint32_t p;
    int rc = fshm_channel_subscribe(c, &sub, -1);
    if (rc == FSHM_ESUBFULL)
        for (;;)
            pause(); /* dead ones not yet reclaimed: nothing to do */
    if (rc != 0)
        die("crash subscriber: subscribe rc %d", rc);
    for (;;) {
        fshm_sample smp;
        unsigned char copy[CRASH_SLOT_SIZE];
        set_state(kid, RECEIVING);
        rc = fshm_channel_receive(c, &sub, &smp, &missed, WAIT_NS);
        if (rc == FSHM_ETIMEOUT)
            continue;
        if (rc != 0)
            die("crash subscriber: receive rc %d", rc);
        set_state(kid, HOLDING);
        if (smp.seq <= last || check_msg(smp.data, smp.length, &p, &n) != 0)
            die("crash subscriber: message %llu after %llu, or torn",
                (unsigned long long)smp.seq, (unsigned long long)last);
        last = smp.seq;
        memcpy(copy, smp.data, smp.length);
        if (rnd(&state) % 2)
            fshm_sleep_ns((int64_t)(rnd(&state) % 3000000));
        if (memcmp(copy, smp.data, smp.length) != 0)
            die("crash subscriber: a pinned message changed");
        fshm_channel_release(c, &sub, smp.slot);
    }
}

/* The parent's ledger: per publisher, per message, acknowledged and
 * received (by the parent's block-mode subscriber). */
typedef struct fate {
    uint16_t acked, received;
} fate;
static fate **ledger;
static uint64_t *ledger_len;
static uint32_t ledger_pubs;
static int *pub_block; /* 1 when publisher p published on the block channel */

static fate *fate_of(uint32_t p, uint64_t n)
{
    if (p < 1 || p > ledger_pubs || n < 1 || n > (1u << 24))
        die("a note about an impossible message: publisher %u, %llu", p, (unsigned long long)n);
    if (n >= ledger_len[p]) {
        uint64_t len = ledger_len[p] ? ledger_len[p] : 64;
        while (len <= n)
            len *= 2;
        ledger[p] = realloc(ledger[p], len * sizeof(fate));
        if (ledger[p] == NULL)
            die("realloc");
        memset(ledger[p] + ledger_len[p], 0, (len - ledger_len[p]) * sizeof(fate));
        ledger_len[p] = len;
    }
    return &ledger[p][n];
}

static struct {
    unsigned long rounds, killed_publishers, killed_subscribers, killed_loaning, killed_writing,
        killed_committing, killed_publishing, killed_holding, killed_in_lock, dead_locks,
        dirty_found, dead_loans, dead_pins, reclaimed_subscribers,
        blocked_then_freed, acked, received, received_overwrite, missed_overwrite,
        parent_publishes, slots_checked, max_unblock_ms;
} cs;

/* The parent's subscriptions, one per channel, and what they last saw. */
typedef struct watcher {
    fshm_channel *c;
    fshm_sub sub;
    uint64_t last_seq;
    uint64_t *last_n; /* per publisher */
    int block;
} watcher;

static void drain_notes(int fd, unsigned char *buf, size_t *have, int *done)
{
    for (;;) {
        ssize_t got = read(fd, buf + *have, 4096 - *have);
        size_t i;
        if (got < 0) {
            if (errno != EINTR && errno != EAGAIN)
                die("read: errno %d", errno);
            return;
        }
        if (got == 0) {
            *done = 1;
            return;
        }
        *have += (size_t)got;
        for (i = 0; i + sizeof(note) <= *have; i += sizeof(note)) {
            note x;
            memcpy(&x, buf + i, sizeof x);
            fate_of(x.pub, x.n)->acked++;
        }
        memmove(buf, buf + i, *have - i);
        *have -= i;
    }
}

/* Everything the watcher can receive now, checked and recorded. */
static void watch(watcher *w)
{
    fshm_sample smp;
    uint64_t missed, n;
    uint32_t p;
    int rc;
    while ((rc = fshm_channel_try_receive(w->c, &w->sub, &smp, &missed)) == 0) {
        if (smp.seq <= w->last_seq || (w->block && (smp.seq != w->last_seq + 1 || missed)))
            die("watcher: message %llu after %llu, %llu missed", (unsigned long long)smp.seq,
                (unsigned long long)w->last_seq, (unsigned long long)missed);
        w->last_seq = smp.seq;
        if (check_msg(smp.data, smp.length, &p, &n) != 0)
            die("watcher: torn message %llu", (unsigned long long)smp.seq);
        if (p != 0) {
            if (p > ledger_pubs || n <= w->last_n[p])
                die("watcher: publisher %u's message %llu after %llu", p,
                    (unsigned long long)n, (unsigned long long)w->last_n[p]);
            w->last_n[p] = n;
            if (w->block) {
                fate_of(p, n)->received++;
                cs.received++;
            } else {
                cs.received_overwrite++;
            }
        }
        if (!w->block)
            cs.missed_overwrite += missed;
        fshm_channel_release(w->c, &w->sub, smp.slot);
    }
    if (rc != FSHM_ETIMEOUT)
        die("watcher: receive rc %d", rc);
}

/* Subscriber entries taken, by live processes or dead ones. */
static uint32_t entries_in_use(const fshm_channel *c)
{
    fshm_sub_info info;
    uint32_t i, n = 0;
    for (i = 0; i < c->max_subscribers; i++)
        if (fshm_channel_subscriber_info(c, i, &info) == 0 && info.owner != 0)
            n++;
    return n;
}

/* Where a kill should land. */
enum { ANYWHERE, IN_LOCK, IN_LOAN, IN_COMMIT, WITH_PINS };

/* Kill child `kid` (process pid) where `want` says: stop it, look at where
 * it is (the lock word names it inside the lock; its state word says
 * whether it holds a loan or pins), kill it if it is there, else let it go
 * on and look again a moment later (a kill at a random instant mostly lands
 * in a system call).  Counts where it died. */
static void kill_kid(pid_t pid, unsigned kid, int want, int is_sub, const fshm_channel *c,
                     watcher *w, uint64_t *state)
{
    uint64_t id = (fshm_self_id() & ~(uint64_t)0xFFFFFFFF) | (uint32_t)pid;
    uint32_t st = IDLE;
    /* A commit holds the lock for a few instructions: look more often. */
    int max_tries = want == IN_COMMIT ? 2000 : 500;
    int tries, in_lock = 0, status;
    for (tries = 0; want != ANYWHERE && tries < max_tries; tries++) {
        if (kill(pid, SIGSTOP) != 0 || waitpid(pid, &status, WUNTRACED) != pid ||
            !WIFSTOPPED(status))
            die("child %d did not stop", (int)pid);
        st = __atomic_load_n(&kid_state[kid], __ATOMIC_SEQ_CST);
        in_lock = fshm_channel_lock_owner(c) == id;
        if ((want == IN_LOCK && in_lock) || (want == IN_LOAN && st == WRITING) ||
            (want == IN_COMMIT && in_lock && st == COMMITTING) ||
            (want == WITH_PINS && st == HOLDING))
            break;
        kill(pid, SIGCONT);
        watch(&w[0]);
        watch(&w[1]);
        fshm_sleep_ns((int64_t)(rnd(state) % (want == IN_COMMIT ? 50000 : 200000)));
    }
    if (want == ANYWHERE || tries == max_tries) {
        st = __atomic_load_n(&kid_state[kid], __ATOMIC_SEQ_CST);
        in_lock = fshm_channel_lock_owner(c) == id;
    }
    kill(pid, SIGKILL);
    if (is_sub) {
        cs.killed_subscribers++;
        cs.killed_holding += st == HOLDING;
    } else {
        cs.killed_publishers++;
        cs.killed_in_lock += in_lock;
        cs.killed_loaning += st == LOANING;
        cs.killed_writing += st == WRITING;
        cs.killed_committing += st == COMMITTING && in_lock;
        cs.killed_publishing += st == PUBLISHING;
    }
}

/* After a round, as the next user: nothing lent or undecided once dead
 * processes' slots are reclaimed, every slot free or holding a reachable,
 * whole message; dead subscribers' entries gone. */
static void check_channel(const fshm_channel *c, uint32_t live_subs)
{
    uint64_t head;
    uint32_t s, empty = 0;
    int rc = fshm_channel_reclaim(c, -1);
    if (rc != 0)
        die("reclaim: rc %d", rc);
    head = fshm_channel_head(c);
    for (s = 0; s < c->slots; s++) {
        unsigned char *e = c->base + SLOTS_AT + (size_t)s * 64;
        uint64_t word = U64(e, S_WORD), k = word >> 1, n, len = U64(e, S_LENGTH);
        uint32_t p, at;
        if (U64(e, S_LOANER) != 0 || (word & 1))
            die("slot %u: lent (%llx) or undecided after reclaim", s,
                (unsigned long long)U64(e, S_LOANER));
        if (word == 0) {
            empty++;
            continue;
        }
        memcpy(&at, c->base + 256 + (size_t)c->slots * 64 + (k % c->slots) * 4, 4);
        if (k > head || head - k >= c->slots || at != s)
            die("slot %u holds message %llu that nobody can reach (head %llu)", s,
                (unsigned long long)k, (unsigned long long)head);
        if (len > c->slot_size ||
            check_msg(c->base + c->payload_offset + (size_t)s * c->stride, len, &p, &n) != 0)
            die("slot %u: message %llu is not whole", s, (unsigned long long)k);
        cs.slots_checked++;
    }
    if (U32(c->base, C_FREE_COUNT) != empty)
        die("%u free slots but %u on the stack", empty, U32(c->base, C_FREE_COUNT));
    if (entries_in_use(c) != live_subs || fshm_channel_subscribers(c) != live_subs)
        die("%u entries in use after reclaim, %u alive", entries_in_use(c), live_subs);
}

/* As the next publisher: N + 2 messages go through, each within a second,
 * however the dead left the channel (a block-mode publish sleeps until the
 * dead subscribers holding it back are reclaimed; in overwrite mode, slots
 * that dead processes hold pinned or lent are reclaimed when a loan finds
 * no other); the watchers keep up. */
static void parent_publishes(watcher *w, uint64_t *n)
{
    unsigned char buf[CRASH_SLOT_SIZE];
    uint32_t i;
    for (i = 0; i < w->c->slots + 2; i++) {
        size_t len = make_msg(buf, 0, *n, CRASH_SLOT_SIZE);
        int64_t t0 = fshm_monotonic_ns(), ms;
        int rc;
        for (;;) {
            rc = w->block ? fshm_channel_publish(w->c, buf, len, 1500000000LL, NULL)
                          : fshm_channel_try_publish(w->c, buf, len, NULL);
            if (w->block || (rc != FSHM_EBUSY && rc != FSHM_EFULL) ||
                fshm_monotonic_ns() - t0 > 1500000000LL)
                break;
            fshm_sleep_ns(1000000);
        }
        ms = (fshm_monotonic_ns() - t0) / 1000000;
        if (rc != 0)
            die("the next publisher on the %s channel: rc %d after %lld ms",
                w->block ? "block" : "overwrite", rc, (long long)ms);
        if ((unsigned long)ms > cs.max_unblock_ms)
            cs.max_unblock_ms = (unsigned long)ms;
        if (ms >= 50)
            cs.blocked_then_freed++;
        if (ms >= 1000)
            die("a publisher waited %lld ms for what dead processes held", (long long)ms);
        (*n)++;
        cs.parent_publishes++;
        watch(w);
    }
}

static int run_crash(unsigned long rounds, uint64_t seed, const char *name, const char *name2)
{
    fshm_channel cb, co;
    fshm_map mb, mo;
    watcher w[2];
    uint64_t state = seed, parent_n = 1;
    uint32_t next_pub = 1, p;
    unsigned long r;
    int rc, i;
    if ((rc = fshm_channel_open(&cb, &mb, name, FSHM_CREATE, CRASH_SLOT_SIZE, CRASH_SLOTS, 4,
                                CRASH_SUBS, 0, 0600)) != 0 ||
        (rc = fshm_channel_open(&co, &mo, name2, FSHM_CREATE, CRASH_SLOT_SIZE, CRASH_SLOTS, 4,
                                CRASH_SUBS, FSHM_CHANNEL_OVERWRITE, 0600)) != 0)
        die("create: rc %d", rc);
    kid_state = shared_zeroed(MAXKIDS * sizeof *kid_state);
    ledger_pubs = (uint32_t)(rounds * MAXKIDS + 1);
    ledger = calloc(ledger_pubs + 1, sizeof *ledger);
    ledger_len = calloc(ledger_pubs + 1, sizeof *ledger_len);
    pub_block = calloc(ledger_pubs + 1, sizeof *pub_block);
    if (ledger == NULL || ledger_len == NULL || pub_block == NULL)
        die("calloc");
    for (i = 0; i < 2; i++) {
        w[i].c = i == 0 ? &cb : &co;
        w[i].block = i == 0;
        w[i].last_seq = 0;
        w[i].last_n = calloc(ledger_pubs + 1, sizeof(uint64_t));
        if (w[i].last_n == NULL || fshm_channel_subscribe(w[i].c, &w[i].sub, -1) != 0)
            die("parent subscribe");
    }

    for (r = 0; r < rounds; r++) {
        int block = r % 2 == 0;
        fshm_channel *c = block ? &cb : &co;
        pid_t pid[MAXKIDS];
        int fd[MAXKIDS], is_sub[MAXKIDS], done[MAXKIDS];
        unsigned char bufs[MAXKIDS][4096];
        size_t have[MAXKIDS];
        int64_t kill_at[MAXKIDS], start;
        unsigned kids = 2 + (unsigned)(rnd(&state) % (MAXKIDS - 1)), k, alive;
        for (k = 0; k < kids; k++) {
            int pipefd[2];
            is_sub[k] = k == 0 ? 0 : k == 1 ? 1 : (int)(rnd(&state) & 1);
            kid_state[k] = IDLE;
            if (pipe(pipefd) != 0)
                die("pipe");
            fflush(NULL);
            pid[k] = fork();
            if (pid[k] < 0)
                die("fork");
            if (pid[k] == 0) {
                fshm_channel mine;
                fshm_map mm;
                uint64_t child_state = seed ^ mix(r * 16 + k);
                close(pipefd[0]);
                note_fd = pipefd[1];
                fshm_unmap(mb.base, mb.size);
                fshm_unmap(mo.base, mo.size);
                attach_by_name(block ? name : name2, &mine, &mm);
                if (is_sub[k])
                    crash_subscriber(&mine, k, child_state);
                else
                    crash_publisher(&mine, k, next_pub, child_state);
                _exit(0);
            }
            if (!is_sub[k])
                pub_block[next_pub++] = block;
            close(pipefd[1]);
            fd[k] = pipefd[0];
            fcntl(fd[k], F_SETFL, O_NONBLOCK);
            have[k] = 0;
            done[k] = 0;
        }
        /* Kill each at its own instant within 40 ms, receiving meanwhile. */
        start = fshm_monotonic_ns();
        for (k = 0; k < kids; k++)
            kill_at[k] = start + 5000000 + (int64_t)(rnd(&state) % 35000000);
        for (alive = kids; alive > 0;) {
            struct pollfd pf[MAXKIDS];
            int64_t now = fshm_monotonic_ns();
            for (k = 0; k < kids; k++) {
                if (pid[k] > 0 && now >= kill_at[k]) {
                    /* Publishers: anywhere, in the lock, holding a loan,
                     * or (twice as often: it is hardest to catch) in a
                     * commit. */
                    static const int pub_wants[] = {ANYWHERE, IN_LOCK, IN_LOAN, IN_COMMIT,
                                                    IN_COMMIT};
                    int want = is_sub[k] ? (rnd(&state) % 2 ? WITH_PINS : ANYWHERE)
                                         : pub_wants[rnd(&state) % 5];
                    kill_kid(pid[k], k, want, is_sub[k], c, w, &state);
                    pid[k] = -pid[k];
                    alive--;
                }
                pf[k].fd = fd[k];
                pf[k].events = POLLIN;
            }
            if (alive > 0)
                poll(pf, kids, 1);
            for (k = 0; k < kids; k++)
                if (!done[k])
                    drain_notes(fd[k], bufs[k], &have[k], &done[k]);
            watch(&w[0]);
            watch(&w[1]);
        }
        for (k = 0; k < kids; k++) {
            int status;
            pid_t who = -pid[k];
            if (waitpid(who, &status, 0) != who)
                die("waitpid");
            if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL))
                die("child %d ended other than by SIGKILL (status %#x)", (int)who, status);
            while (!done[k]) {
                drain_notes(fd[k], bufs[k], &have[k], &done[k]);
                if (!done[k])
                    fshm_sleep_ns(1000000);
            }
            close(fd[k]);
            if (have[k] != 0)
                die("a partial note");
        }
        /* What the dead left: the lock held, the dirty mark, slots lent,
         * slots pinned by others than the parent. */
        {
            uint64_t parent = (uint64_t)1 << w[block ? 0 : 1].sub.index;
            uint32_t s;
            cs.dead_locks += fshm_channel_lock_owner(c) != 0;
            cs.dirty_found += U32(c->base, C_DIRTY) != 0;
            for (s = 0; s < c->slots; s++) {
                unsigned char *e = c->base + SLOTS_AT + (size_t)s * 64;
                cs.dead_loans += U64(e, S_LOANER) != 0;
                cs.dead_pins += (U64(e, S_PINS) & ~parent) != 0;
            }
        }
        /* The next user. */
        {
            uint32_t before = entries_in_use(c);
            watch(&w[block ? 0 : 1]);
            parent_publishes(&w[block ? 0 : 1], &parent_n);
            check_channel(c, 1);
            cs.reclaimed_subscribers += before - 1;
        }
        cs.rounds++;
    }
    watch(&w[0]);
    watch(&w[1]);
    /* Every acknowledged block-channel message reached the parent's
     * subscriber exactly once; any message it got, it got once. */
    for (p = 1; p < next_pub; p++) {
        uint64_t n;
        for (n = 1; n < ledger_len[p]; n++) {
            fate *f = &ledger[p][n];
            if (f->acked > 1 || f->received > 1)
                die("publisher %u's message %llu acknowledged %u, received %u times", p,
                    (unsigned long long)n, f->acked, f->received);
            if (pub_block[p] && f->acked && !f->received)
                die("publisher %u's acknowledged message %llu never arrived", p,
                    (unsigned long long)n);
            cs.acked += f->acked;
        }
    }
    printf("rounds=%lu killed_publishers=%lu killed_subscribers=%lu killed_loaning=%lu "
           "killed_writing=%lu killed_committing=%lu killed_publishing=%lu killed_holding=%lu "
           "killed_in_lock=%lu dead_locks=%lu dirty_found=%lu dead_loans=%lu dead_pins=%lu "
           "reclaimed_subscribers=%lu blocked_then_freed=%lu max_unblock_ms=%lu acked=%lu "
           "received=%lu received_overwrite=%lu missed_overwrite=%lu parent_publishes=%lu "
           "slots_checked=%lu\n",
           cs.rounds, cs.killed_publishers, cs.killed_subscribers, cs.killed_loaning,
           cs.killed_writing, cs.killed_committing, cs.killed_publishing, cs.killed_holding,
           cs.killed_in_lock, cs.dead_locks, cs.dirty_found, cs.dead_loans, cs.dead_pins,
           cs.reclaimed_subscribers, cs.blocked_then_freed, cs.max_unblock_ms, cs.acked,
           cs.received, cs.received_overwrite, cs.missed_overwrite, cs.parent_publishes,
           cs.slots_checked);
    for (i = 0; i < 2; i++) {
        fshm_channel_unsubscribe(w[i].c, &w[i].sub);
        free(w[i].last_n);
    }
    for (p = 0; p <= ledger_pubs; p++)
        free(ledger[p]);
    free(ledger);
    free(ledger_len);
    free(pub_block);
    fshm_unmap(mb.base, mb.size);
    fshm_unmap(mo.base, mo.size);
    fshm_unlink(name);
    fshm_unlink(name2);
    return 0;
}

/* ---- wake: sleepers are woken by the other side ---- */

static fshm_channel wc;
static fshm_sub wsub[3];

/* Sleeps on a header word by hand, registered as a blocked call is, with
 * no re-check of its own: only a futex wake ends its sleep (a 10 s bound
 * fails the run). */
static void *hand_sleeper(void *arg)
{
    size_t off = (size_t)(uintptr_t)arg;
    uint32_t *word = (uint32_t *)(wc.base + off), *waiters = word + 1, v;
    /* The word first, then the count: the test waits for the count
     * (await_sleepers) before it publishes or releases, so the word moves
     * after this load, however long this thread was preempted. */
    v = __atomic_load_n(word, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(waiters, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(word, __ATOMIC_SEQ_CST) == v) {
        int64_t t0 = fshm_monotonic_ns();
        fshm_futex_wait(word, v, 10000000000LL);
        if (fshm_monotonic_ns() - t0 >= 10000000000LL)
            die("a sleeper on header word %zu was not woken in 10 s", off);
    }
    __atomic_sub_fetch(waiters, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static void *blocked_receive(void *arg)
{
    fshm_sample smp;
    uint64_t missed;
    int rc = fshm_channel_receive(&wc, &wsub[(uintptr_t)arg], &smp, &missed, -1);
    if (rc != 0 || smp.length != 5 || memcmp(smp.data, "hello", 5) != 0)
        die("blocked receive: rc %d", rc);
    fshm_channel_release(&wc, &wsub[(uintptr_t)arg], smp.slot);
    return NULL;
}

static void *blocked_wait(void *arg)
{
    int rc = fshm_channel_wait(&wc, &wsub[(uintptr_t)arg], -1);
    if (rc != 0)
        die("blocked wait: rc %d", rc);
    return NULL;
}

static void *blocked_publish(void *arg)
{
    uint64_t seq;
    int rc = fshm_channel_publish(&wc, "late", 4, -1, &seq);
    (void)arg;
    if (rc != 0)
        die("blocked publish: rc %d", rc);
    return NULL;
}

static void *blocked_wait_room(void *arg)
{
    int rc = fshm_channel_wait_room(&wc, -1);
    (void)arg;
    if (rc != 0)
        die("blocked wait_room: rc %d", rc);
    return NULL;
}

/* Until n sleepers are registered on the word at off (notify or room), and
 * a moment more for them to be asleep. */
static void await_sleepers(size_t off, uint32_t n)
{
    int64_t start = fshm_monotonic_ns();
    while (__atomic_load_n((uint32_t *)(wc.base + off + 4), __ATOMIC_SEQ_CST) < n) {
        if (fshm_monotonic_ns() - start > STALL_NS)
            die("never %u sleepers on word %zu", n, off);
        fshm_sleep_ns(1000000);
    }
    fshm_sleep_ns(20000000);
}

static void fill_ring(void)
{
    uint32_t i;
    for (i = 0; i < wc.slots; i++)
        if (fshm_channel_publish(&wc, "early", 5, 0, NULL) != 0)
            die("fill");
    if (fshm_channel_try_publish(&wc, "x", 1, NULL) != FSHM_EFULL)
        die("not full");
}

/* Receive and release everything subscriber i has not received. */
static void drain_sub(unsigned i)
{
    fshm_sample smp;
    uint64_t missed;
    while (fshm_channel_try_receive(&wc, &wsub[i], &smp, &missed) == 0)
        fshm_channel_release(&wc, &wsub[i], smp.slot);
}

#ifdef __linux__
static volatile sig_atomic_t signals;
static int interrupted_done, interrupt_loan;

static void on_signal(int sig)
{
    (void)sig;
    signals++;
}

static void *interrupted(void *arg)
{
    fshm_sample smp;
    fshm_loan l;
    uint64_t missed;
    int rc = interrupt_loan ? fshm_channel_loan(&wc, 1, &l, -1)
                            : fshm_channel_receive(&wc, &wsub[0], &smp, &missed, -1);
    (void)arg;
    if (rc != EINTR)
        die("a signal during a blocked %s: rc %d", interrupt_loan ? "loan" : "receive", rc);
    __atomic_store_n(&interrupted_done, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* Signal t once it sleeps on the word at off, again every 200 ms, until its
 * call has returned. */
static void interrupt(pthread_t t, size_t off)
{
    int64_t start = fshm_monotonic_ns();
    await_sleepers(off, 1);
    while (!__atomic_load_n(&interrupted_done, __ATOMIC_ACQUIRE)) {
        if (fshm_monotonic_ns() - start > STALL_NS)
            die("a blocked call did not return on a signal");
        pthread_kill(t, SIGUSR1);
        fshm_sleep_ns(200000000);
    }
    pthread_join(t, NULL);
    interrupted_done = 0;
}
#endif

/* A subscriber process holds the ring back (block mode), then dies: a loan
 * blocked with no timeout is freed within a second. */
static unsigned long dead_unblock_ms(const char *name)
{
    fshm_channel c;
    fshm_map m;
    fshm_loan l;
    int pipefd[2], status;
    char ok;
    pid_t pid;
    int64_t t0;
    uint32_t i;
    int rc = fshm_channel_open(&c, &m, name, FSHM_CREATE, 64, 4, 0, 2, 0, 0600);
    if (rc != 0 || pipe(pipefd) != 0)
        die("create %s: rc %d", name, rc);
    fflush(NULL);
    pid = fork();
    if (pid == 0) {
        fshm_channel mine;
        fshm_map mm;
        fshm_sub sub;
        fshm_sample smp;
        uint64_t missed;
        attach_by_name(name, &mine, &mm);
        if (fshm_channel_subscribe(&mine, &sub, -1) != 0 ||
            fshm_channel_publish(&mine, "held", 4, 0, NULL) != 0 ||
            fshm_channel_try_receive(&mine, &sub, &smp, &missed) != 0)
            _exit(2);
        /* Pinned, and behind on everything published from now on. */
        if (write(pipefd[1], "k", 1) != 1)
            _exit(3);
        for (;;)
            pause();
    }
    close(pipefd[1]);
    if (read(pipefd[0], &ok, 1) != 1)
        die("the holding subscriber did not start");
    close(pipefd[0]);
    for (i = 0; i < c.slots - 1; i++)
        if (fshm_channel_publish(&c, "more", 4, 0, NULL) != 0)
            die("fill");
    if (fshm_channel_try_loan(&c, 1, &l) != FSHM_EFULL)
        die("the subscriber does not hold the ring back");
    kill(pid, SIGKILL);
    /* Dead (a zombie until reaped): no longer counted as a subscriber,
     * though its entry is still taken. */
    t0 = fshm_monotonic_ns();
    while (fshm_channel_subscribers(&c) != 0)
        if (fshm_monotonic_ns() - t0 > STALL_NS)
            die("a killed subscriber still counts as live");
    if (entries_in_use(&c) != 1)
        die("the killed subscriber's entry went away on its own");
    t0 = fshm_monotonic_ns();
    rc = fshm_channel_loan(&c, 1, &l, -1);
    if (rc != 0)
        die("loan after the death: rc %d", rc);
    t0 = fshm_monotonic_ns() - t0;
    if (fshm_channel_commit(&c, &l, 0, -1, NULL) != 0)
        die("commit");
    if (waitpid(pid, &status, 0) != pid)
        die("waitpid");
    if (t0 >= 1000000000LL)
        die("a dead subscriber held a blocked loan for %lld ms", (long long)(t0 / 1000000));
    if (entries_in_use(&c) != 0)
        die("the dead subscriber's entry was not reclaimed");
    fshm_unmap(m.base, m.size);
    fshm_unlink(name);
    return (unsigned long)(t0 / 1000000);
}

static int run_wake(unsigned rounds, const char *name)
{
    size_t size = fshm_channel_size_for(64, 4, 3);
    void *base = NULL;
    unsigned r, i;
    unsigned long worst = 0;
    if (posix_memalign(&base, 4096, size) != 0)
        die("posix_memalign");
    memset(base, 0, size);
    if (fshm_channel_init(&wc, base, size, 64, 4, 0, 3, 0) != 0)
        die("init");
    for (i = 0; i < 3; i++)
        if (fshm_channel_subscribe(&wc, &wsub[i], 0) != 0)
            die("subscribe");
    if (fshm_channel_wait(&wc, &wsub[0], 0) != FSHM_ETIMEOUT ||
        fshm_channel_wait_room(&wc, 0) != 0)
        die("waits on an empty channel");
    for (r = 0; r < rounds; r++) {
        pthread_t t[4];
        /* Nothing to receive: a publish wakes them all. */
        pthread_create(&t[0], NULL, hand_sleeper, (void *)(uintptr_t)C_NOTIFY);
        pthread_create(&t[1], NULL, blocked_receive, (void *)(uintptr_t)0);
        pthread_create(&t[2], NULL, blocked_receive, (void *)(uintptr_t)1);
        pthread_create(&t[3], NULL, blocked_wait, (void *)(uintptr_t)2);
        await_sleepers(C_NOTIFY, 4);
        if (fshm_channel_publish(&wc, "hello", 5, 0, NULL) != 0)
            die("publish");
        for (i = 0; i < 4; i++)
            pthread_join(t[i], NULL);
        drain_sub(2);
        /* Full: a release (of the last subscriber still behind) wakes the
         * publishers. */
        fill_ring();
        drain_sub(0);
        drain_sub(1);
        pthread_create(&t[0], NULL, hand_sleeper, (void *)(uintptr_t)C_ROOM);
        pthread_create(&t[1], NULL, blocked_publish, NULL);
        pthread_create(&t[2], NULL, blocked_wait_room, NULL);
        await_sleepers(C_ROOM, 3);
        {
            /* Two slots: one for the blocked publisher, one left for
             * wait_room, whichever looks first. */
            fshm_sample smp;
            uint64_t missed;
            for (i = 0; i < 2; i++) {
                if (fshm_channel_try_receive(&wc, &wsub[2], &smp, &missed) != 0)
                    die("receive");
                if (fshm_channel_release(&wc, &wsub[2], smp.slot) != 0)
                    die("release");
            }
        }
        for (i = 0; i < 3; i++)
            pthread_join(t[i], NULL);
        for (i = 0; i < 3; i++)
            drain_sub(i);
        if (U32(wc.base, C_WAITERS) != 0 || U32(wc.base, C_ROOM_WAITERS) != 0)
            die("sleepers left registered");
    }
#ifdef __linux__
    {
        /* A signal ends a blocked receive and a blocked loan with EINTR
         * (the caller runs its handler and calls again). */
        pthread_t t;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal; /* no SA_RESTART */
        sigaction(SIGUSR1, &sa, NULL);
        interrupt_loan = 0;
        pthread_create(&t, NULL, interrupted, NULL);
        interrupt(t, C_NOTIFY);
        fill_ring();
        interrupt_loan = 1;
        pthread_create(&t, NULL, interrupted, NULL);
        interrupt(t, C_ROOM);
        if (signals < 2)
            die("%d signals", signals);
        for (i = 0; i < 3; i++)
            drain_sub(i);
    }
#endif
    for (i = 0; i < 3; i++)
        if (fshm_channel_unsubscribe(&wc, &wsub[i]) != 0)
            die("unsubscribe");
    for (r = 0; r < rounds; r++) {
        unsigned long ms = dead_unblock_ms(name);
        if (ms > worst)
            worst = ms;
    }
#ifdef __linux__
    printf("wake_rounds=%u eintr=2 dead_unblock_max_ms=%lu\n", rounds, worst);
#else
    printf("wake_rounds=%u eintr=0 dead_unblock_max_ms=%lu\n", rounds, worst);
#endif
    free(base);
    return 0;
}

#ifdef __linux__
/* ---- steps: a publisher killed after every single instruction ----
 *
 * A child is traced and single-stepped through one publish (or a loan it
 * discards); after each instruction the parent copies the shared channel as
 * it stands, which is what the next user would find had the child been
 * killed right there, names the child's id in it as a dead process's, and
 * recovers the copy as the next user would: it takes the lock (a dead
 * holder's is taken over, a dirty mark repaired) and reclaims what the dead
 * held.  Then every slot must be free or hold a message that can be
 * reached, whole; head must be the one before or the one after, and once
 * after, never before again; the parent's subscription receives the
 * messages in order, the new one whole; and a publish goes through. */
#include <sys/ptrace.h>

static uint64_t dead_id;
static unsigned char *scratch;
static fshm_channel sc; /* the shared channel the child publishes on */
static fshm_sub parent_sub;

static struct {
    unsigned long scenarios, steps, before, after, dirty_seen, lock_seen, loan_seen, odd_seen;
    int unavailable;
} ss;

enum { PUBLISH, LOAN_COMMIT, LOAN_DISCARD };

/* What the next user finds in a copy of the channel: 0 (before) or 1
 * (after). */
static int recover(size_t size, uint64_t head0, uint64_t want_n)
{
    fshm_channel c;
    fshm_sample smp;
    uint64_t missed, head, n, got = 0;
    uint32_t s, p;
    int rc;
    unsigned char buf[200];
    memcpy(scratch, sc.base, size);
    if (U64(scratch, C_LOCK) != 0) {
        U64(scratch, C_LOCK) = dead_id;
        ss.lock_seen++;
    }
    if (U64(scratch, C_LOCK_NEXT) != 0)
        U64(scratch, C_LOCK_NEXT) = dead_id;
    ss.dirty_seen += U32(scratch, C_DIRTY) != 0;
    for (s = 0; s < sc.slots; s++) {
        unsigned char *e = scratch + SLOTS_AT + (size_t)s * 64;
        if (U64(e, S_LOANER) != 0) {
            U64(e, S_LOANER) = dead_id;
            ss.loan_seen++;
        }
        ss.odd_seen += (U64(e, S_WORD) & 1) != 0;
    }
    if ((rc = fshm_channel_attach(&c, scratch, size)) != 0)
        die("attach of the copy: rc %d", rc);
    if ((rc = fshm_channel_reclaim(&c, 0)) != 0)
        die("reclaim of the copy: rc %d", rc);
    head = fshm_channel_head(&c);
    if (head != head0 && head != head0 + 1)
        die("head %llu, before %llu", (unsigned long long)head, (unsigned long long)head0);
    for (s = 0; s < c.slots; s++) {
        unsigned char *e = scratch + SLOTS_AT + (size_t)s * 64;
        uint64_t word = U64(e, S_WORD);
        uint32_t at;
        if (U64(e, S_LOANER) != 0 || (word & 1))
            die("slot %u lent or undecided after recovery", s);
        if (word == 0)
            continue;
        memcpy(&at, scratch + 256 + (size_t)c.slots * 64 + ((word >> 1) % c.slots) * 4, 4);
        if ((word >> 1) > head || head - (word >> 1) >= c.slots || at != s)
            die("slot %u holds message %llu that nobody can reach", s,
                (unsigned long long)(word >> 1));
    }
    /* The parent's subscription, caught up before the operation: the new
     * message, whole, or nothing. */
    while ((rc = fshm_channel_try_receive(&c, &parent_sub, &smp, &missed)) == 0) {
        if (smp.seq != head0 + 1 || check_msg(smp.data, smp.length, &p, &n) != 0 ||
            n != want_n)
            die("the parent received message %llu, torn or not the child's",
                (unsigned long long)smp.seq);
        fshm_channel_release(&c, &parent_sub, smp.slot);
        got++;
    }
    if (rc != FSHM_ETIMEOUT || got != head - head0)
        die("receive on the copy: rc %d, %llu messages", rc, (unsigned long long)got);
    /* Usable at once: a publish goes through. */
    if ((rc = fshm_channel_publish(&c, buf, make_msg(buf, 9, 1, sizeof buf), 0, NULL)) != 0)
        die("publish on the recovered copy: rc %d", rc);
    return head == head0 + 1;
}

static void act(int op, uint64_t n)
{
    unsigned char buf[200];
    fshm_loan l;
    int rc;
    if (op == PUBLISH) {
        /* A small message: lent, copied and published under one hold of
         * the lock. */
        rc = fshm_channel_publish(&sc, buf, make_msg(buf, 1, n, sizeof buf), 0, NULL);
    } else if (op == LOAN_COMMIT) {
        size_t len = make_msg(buf, 1, n, sizeof buf);
        rc = fshm_channel_loan(&sc, len, &l, 0);
        if (rc == 0) {
            memcpy(l.data, buf, len);
            rc = fshm_channel_commit(&sc, &l, len, 0, NULL);
        }
    } else {
        rc = fshm_channel_loan(&sc, 10, &l, 0);
        if (rc == 0) {
            memset(l.data, 0xAB, 10);
            rc = fshm_channel_discard(&sc, &l);
        }
    }
    if (rc != 0)
        die("traced operation %d: rc %d", op, rc);
}

static void step_through(int op, uint64_t n, size_t size)
{
    pid_t pid;
    int status, state = 0, now;
    unsigned long steps = 0;
    uint64_t head0 = fshm_channel_head(&sc);
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        traced = 1;
        if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) != 0)
            _exit(4);
        raise(SIGSTOP);
        act(op, n);
        raise(SIGSTOP);
        _exit(0);
    }
    if (waitpid(pid, &status, 0) != pid || !WIFSTOPPED(status))
        die("the child did not stop (status %#x)", status);
    for (;;) {
        if (ptrace(PTRACE_SINGLESTEP, pid, NULL, NULL) != 0) {
            if (steps == 0 && ss.steps == 0) {
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                ss.unavailable = 1;
                return;
            }
            die("PTRACE_SINGLESTEP: errno %d", errno);
        }
        if (waitpid(pid, &status, 0) != pid)
            die("waitpid");
        if (!WIFSTOPPED(status))
            die("the child ended (status %#x)", status);
        if (WSTOPSIG(status) != SIGTRAP)
            break; /* the SIGSTOP after the operation */
        steps++;
        now = recover(size, head0, n);
        if (now < state)
            die("back to the messages before after step %lu", steps);
        if (op == LOAN_DISCARD && now)
            die("a discarded loan showed up as a message");
        state = now;
        if (now)
            ss.after++;
        else
            ss.before++;
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    if (op != LOAN_DISCARD && !state)
        die("the publish never showed");
    ss.steps += steps;
    ss.scenarios++;
}

/* The parent's subscription catches up (and lets go of everything). */
static void parent_catch_up(void)
{
    fshm_sample smp;
    uint64_t missed;
    while (fshm_channel_try_receive(&sc, &parent_sub, &smp, &missed) == 0)
        fshm_channel_release(&sc, &parent_sub, smp.slot);
}

static int run_steps(unsigned rounds)
{
    const uint32_t slots = 4;
    size_t size = fshm_channel_size_for(200, slots, 2);
    void *base;
    uint64_t n = 1;
    unsigned r, mode;
    pid_t pid;
    base = shared_zeroed(size);
    if (posix_memalign((void **)&scratch, 4096, size) != 0)
        die("posix_memalign");
    pid = fork();
    if (pid == 0)
        _exit(0);
    if (pid < 0 || waitpid(pid, NULL, 0) != pid)
        die("fork");
    dead_id = (fshm_self_id() & ~(uint64_t)0xFFFFFFFF) | (uint32_t)pid;
    if (fshm_owner_dead(dead_id) != 1)
        die("a reaped child must count as dead");
    {
        int status = 0;
        pid = fork();
        if (pid == 0)
            _exit(ptrace(PTRACE_TRACEME, 0, NULL, NULL) == 0 ? 0 : 5);
        if (pid < 0 || waitpid(pid, &status, 0) != pid)
            die("fork");
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            ss.unavailable = 1;
    }
    for (mode = 0; mode < 2 && !ss.unavailable; mode++) {
        memset(base, 0, size);
        if (fshm_channel_init(&sc, base, size, 200, slots, 1,
                              2, mode ? FSHM_CHANNEL_OVERWRITE : 0) != 0 ||
            fshm_channel_subscribe(&sc, &parent_sub, 0) != 0)
            die("init");
        for (r = 0; r < rounds && !ss.unavailable; r++) {
            fshm_sample pinned;
            uint64_t missed;
            /* A free slot (the stack), then claimed ones (the ring full of
             * received messages), one of them pinned in overwrite mode. */
            step_through(PUBLISH, n++, size);
            parent_catch_up();
            while (fshm_channel_head(&sc) < (r + 1) * slots + 1) {
                act(PUBLISH, n++);
                parent_catch_up();
            }
            step_through(PUBLISH, n++, size);
            parent_catch_up();
            if (mode == 1) {
                /* The oldest in place pinned: passed over. */
                act(PUBLISH, n++);
                if (fshm_channel_try_receive(&sc, &parent_sub, &pinned, &missed) != 0)
                    die("pin");
                act(PUBLISH, n++);
                act(PUBLISH, n++);
                parent_catch_up();
                step_through(PUBLISH, n++, size);
                fshm_channel_release(&sc, &parent_sub, pinned.slot);
                parent_catch_up();
            }
            step_through(LOAN_COMMIT, n++, size);
            parent_catch_up();
            step_through(LOAN_DISCARD, n, size);
            /* A holder killed in the lock before: the lock, a dirty mark,
             * an undecided word of a slot holding a message. */
            U64(sc.base, C_LOCK) = dead_id;
            U32(sc.base, C_DIRTY) = 1;
            {
                uint32_t s;
                for (s = 0; s < slots; s++) {
                    unsigned char *e = sc.base + SLOTS_AT + (size_t)s * 64;
                    if (U64(e, S_WORD) != 0) {
                        U64(e, S_WORD) |= 1;
                        break;
                    }
                }
            }
            step_through(PUBLISH, n++, size);
            parent_catch_up();
        }
        fshm_channel_unsubscribe(&sc, &parent_sub);
    }
    if (ss.unavailable)
        printf("ptrace=unavailable\n");
    else
        printf("scenarios=%lu steps=%lu before=%lu after=%lu dirty_seen=%lu lock_seen=%lu "
               "loan_seen=%lu odd_seen=%lu\n",
               ss.scenarios, ss.steps, ss.before, ss.after, ss.dirty_seen, ss.lock_seen,
               ss.loan_seen, ss.odd_seen);
    free(scratch);
    munmap(base, size);
    return 0;
}
#else
static int run_steps(unsigned rounds)
{
    (void)rounds;
    printf("ptrace=unavailable\n");
    return 0;
}
#endif

/* ---- takeover: a channel made anew over a dead maker's leftover ---- */

#ifdef __linux__
#include <sys/stat.h>

static int run_takeover(const char *name)
{
    char path[300];
    fshm_channel c;
    fshm_map m;
    fshm_sub sub;
    fshm_sample smp;
    uint64_t dead, missed, n;
    unsigned char *base, buf[64];
    size_t size = 1 << 16, i;
    uint32_t s, p;
    int fd, rc, rounds;
    pid_t pid = fork();
    if (pid == 0)
        _exit(0);
    if (pid < 0 || waitpid(pid, NULL, 0) != pid)
        die("fork");
    dead = (fshm_self_id() & ~(uint64_t)0xFFFFFFFF) | (uint32_t)pid;
    snprintf(path, sizeof path, "/dev/shm/%s", name);
    for (rounds = 0; rounds < 2; rounds++) {
        /* The leftover: sized, the making mode bit, the dead maker's id,
         * and everything past the lock words scribbled on (a maker of a
         * channel with other parameters writes its free stack where this
         * one's slot table goes). */
        fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
        if (fd < 0 || ftruncate(fd, (off_t)size) != 0 || fchmod(fd, 0600 | S_ISVTX) != 0)
            die("leftover: errno %d", errno);
        base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED)
            die("mmap");
        close(fd);
        for (i = 88; i < size; i++)
            base[i] = (unsigned char)(i * 131 + 7);
        memcpy(base + C_LOCK, &dead, 8);
        munmap(base, size);
        rc = fshm_channel_open(&c, &m, name, FSHM_ATTACH, 0, 0, 0, 0, 0, 0);
        if (rc != FSHM_EABANDONED)
            die("attaching to a dead maker's channel: rc %d", rc);
        rc = fshm_channel_open(&c, &m, name, FSHM_OPEN_OR_CREATE, 64, 16, 3, 4,
                               rounds ? FSHM_CHANNEL_OVERWRITE : 0, 0600);
        if (rc != 0 || !m.created)
            die("open-or-create over a dead maker's channel: rc %d, created %d", rc,
                m.created);
        /* Clean: nothing published, nobody subscribed, every slot free. */
        if (fshm_channel_head(&c) != 0 || entries_in_use(&c) != 0 ||
            U32(c.base, C_DIRTY) != 0 || U32(c.base, C_FREE_COUNT) != 16)
            die("the channel made anew kept what the dead maker wrote");
        for (s = 0; s < c.slots; s++) {
            unsigned char *e = c.base + SLOTS_AT + (size_t)s * 64;
            if (U64(e, S_WORD) != 0 || U64(e, S_PINS) != 0 || U64(e, S_LOANER) != 0)
                die("slot %u of the channel made anew is not empty", s);
        }
        /* And working. */
        if (fshm_channel_subscribe(&c, &sub, 0) != 0)
            die("subscribe");
        for (n = 1; n <= 40; n++) {
            if (fshm_channel_publish(&c, buf, make_msg(buf, 1, n, sizeof buf), 0, NULL) != 0 ||
                fshm_channel_try_receive(&c, &sub, &smp, &missed) != 0 || smp.seq != n ||
                check_msg(smp.data, smp.length, &p, &n) != 0 || n != smp.seq ||
                fshm_channel_release(&c, &sub, smp.slot) != 0)
                die("message %llu through the channel made anew", (unsigned long long)n);
        }
        fshm_channel_unsubscribe(&c, &sub);
        fshm_unmap(m.base, m.size);
        if (fshm_unlink(name) != 0)
            die("unlink");
    }
    printf("takeovers=%d\n", rounds);
    return 0;
}
#else
static int run_takeover(const char *name)
{
    (void)name;
    printf("takeover=unavailable\n");
    return 0;
}
#endif

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    /* Whatever happens, never hang the driver. */
    alarm(300);
    if (strcmp(mode, "threads") == 0 && argc == 8) {
        setup(argv[2], argv[3], argv[4], argv[6], argv[7]);
        return run_threads((uint32_t)strtoul(argv[5], NULL, 10));
    }
    if (strcmp(mode, "procs") == 0 && argc == 9) {
        setup(argv[2], argv[3], argv[4], argv[6], argv[7]);
        return run_procs((uint32_t)strtoul(argv[5], NULL, 10), argv[8]);
    }
    if (strcmp(mode, "history") == 0 && argc == 3)
        return run_history((unsigned)strtoul(argv[2], NULL, 10));
    if (strcmp(mode, "crash") == 0 && argc == 6)
        return run_crash(strtoul(argv[2], NULL, 10), strtoull(argv[3], NULL, 10), argv[4],
                         argv[5]);
    if (strcmp(mode, "wake") == 0 && argc == 4)
        return run_wake((unsigned)strtoul(argv[2], NULL, 10), argv[3]);
    if (strcmp(mode, "takeover") == 0 && argc == 3)
        return run_takeover(argv[2]);
    if (strcmp(mode, "steps") == 0 && argc == 3)
        return run_steps((unsigned)strtoul(argv[2], NULL, 10));
    fprintf(stderr, "usage: see the comment at the top of channel_stress.c\n");
    return 2;
}
