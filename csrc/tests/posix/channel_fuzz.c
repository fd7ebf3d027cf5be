/*
 * Hostile channel headers and tables against csrc/channel.c, built with
 *   -fsanitize=address,undefined -fno-sanitize-recover=all
 * (tests/test_sanitizers.py).  A fixed-seed loop lays a channel over a heap
 * block of exactly the mapping's size (AddressSanitizer's redzone is the
 * byte after it), publishes and receives a little, rewrites header words,
 * slot entries, index and free-stack entries and subscriber entries with
 * adversarial values, and calls every channel operation without sleeping
 * (but for a few bounded 2 ms waits).  Each must return success or a
 * defined refusal; a loan's whole capacity is written, a received
 * message's whole length is read (into a heap block of exactly that
 * length), and a copying receive writes into a heap block of exactly the
 * capacity it is given; a sanitizer report, a crash or a hang (the
 * driver's timeout) is a failure.  A quarter of the cases are left intact
 * and checked against a model of a block-mode channel instead: whether
 * each loan finds a slot, every message each subscriber receives (in place
 * or copied; a buffer too small changes nothing), every cursor.  A last pass does
 * the same over real named mappings, and opens each kind of object as the
 * others (FSHM_EKIND).
 *
 *   channel_fuzz ITERATIONS SEED NAME
 *
 * Prints `iterations=... attach_ok=... ...` and exits 0 when every check
 * held, 1 (with a message) when one did not.
 */
#include "fastshm.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* Offsets of docs/FORMAT.md ("Channels"). */
#define C_MAGIC 0
#define C_VERSION 4
#define C_HEADER_SIZE 6
#define C_SLOT_SIZE 8
#define C_HEAD 16
#define C_NOTIFY 24
#define C_SLOTS 32
#define C_MAX_SUBS 36
#define C_HISTORY 40
#define C_FLAGS 44
#define C_ROOM 48
#define C_PAYLOAD 56
#define C_LOCK 64
#define C_LOCK_NEXT 80
#define C_DIRTY 88
#define C_FREE_COUNT 92
#define C_SUB_MASK 96
#define C_SWEEP_AT 104
#define C_CHECKED_AT 112
#define HEADER 256

static uint64_t rng_state;

static uint64_t rnd(void)
{
    /* xorshift64*: fixed seed, the same run every time. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static uint64_t pick(const uint64_t *v, size_t n) { return v[rnd() % n]; }

static const uint64_t WORDS[] = {
    0, 1, 2, 3, 7, 8, 63, 64, 65, 255, 256, 4095, 4096, 1ULL << 20, (1ULL << 20) + 1,
    1ULL << 31, 1ULL << 32, (1ULL << 62) - 1, 1ULL << 62, (1ULL << 63) - 1, 1ULL << 63,
    UINT64_MAX - 1, UINT64_MAX,
};
static const uint64_t SLOT_SIZES[] = {1, 7, 64, 100, 200, 4096, 5000};
static const uint32_t SLOT_COUNTS[] = {2, 3, 4, 8, 16};
static const uint32_t SUB_COUNTS[] = {1, 2, 3, 64};

static struct {
    unsigned long iterations, attach_ok, attach_refused, loans_ok, loans_refused, commits_ok,
        commits_refused, receives_ok, receives_refused, subscribes_ok, subscribes_refused,
        waits, receives_into, model_cases, model_ops, model_messages, model_full, model_joins,
        model_copies, model_small, ekind;
} st;

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "iteration %lu: check failed: %s: ", st.iterations, #cond); \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
            exit(1);                                                         \
        }                                                                    \
    } while (0)

static void put64(unsigned char *base, size_t size, size_t off, uint64_t v)
{
    if (off + 8 <= size)
        memcpy(base + off, &v, 8);
}

static void put32(unsigned char *base, size_t size, size_t off, uint32_t v)
{
    if (off + 4 <= size)
        memcpy(base + off, &v, 4);
}

/* A process of ours that has exited and been reaped. */
static uint64_t dead_owner;

static uint64_t any_word(void)
{
    return rnd() % 2 ? pick(WORDS, sizeof WORDS / 8) : rnd();
}

/* An owner: nobody, us, a dead process, or anything. */
static uint64_t owner_word(void)
{
    switch (rnd() % 4) {
    case 0: return 0;
    case 1: return fshm_self_id();
    case 2: return dead_owner;
    default: return any_word();
    }
}

/* A message number near head, or anything. */
static uint64_t number_near(uint64_t head)
{
    switch (rnd() % 4) {
    case 0: return any_word();
    case 1: return head + rnd() % 4;
    default: return head - rnd() % 20;
    }
}

/* Table offsets as the format lays them out for n slots (n from the
 * header as written, which may be hostile: only used where they fit). */
static size_t index_off(uint64_t n) { return HEADER + (size_t)n * 64; }
static size_t free_off(uint64_t n) { return index_off(n) + (((size_t)n * 4 + 63) & ~(size_t)63); }
static size_t subs_off(uint64_t n) { return free_off(n) + (((size_t)n * 4 + 63) & ~(size_t)63); }

static void corrupt(unsigned char *base, size_t size, uint32_t n, uint32_t m)
{
    uint64_t head = 0;
    unsigned mask = (unsigned)rnd();
    int i, k;
    uint16_t u16;
    if (size >= C_HEAD + 8)
        memcpy(&head, base + C_HEAD, 8);
    /* The fields attach checks, one time in ten each, so most cases get
     * past attach to the operations. */
    if (rnd() % 10 == 0)
        put32(base, size, C_MAGIC, rnd() % 2 ? (uint32_t)rnd()
                                   : rnd() % 2 ? FSHM_MAGIC : FSHM_QUEUE_MAGIC);
    if (rnd() % 10 == 0 && size >= 8) {
        u16 = (uint16_t)(rnd() % 2 ? rnd() : 2);
        memcpy(base + C_VERSION, &u16, 2);
    }
    if (rnd() % 10 == 0 && size >= 8) {
        u16 = (uint16_t)(rnd() % 2 ? rnd() : 128);
        memcpy(base + C_HEADER_SIZE, &u16, 2);
    }
    if (rnd() % 10 == 0)
        put64(base, size, C_SLOT_SIZE, any_word());
    if (rnd() % 10 == 0)
        put32(base, size, C_SLOTS, (uint32_t)(rnd() % 2 ? any_word() : n + rnd() % 3 - 1));
    if (rnd() % 10 == 0)
        put32(base, size, C_MAX_SUBS, (uint32_t)(rnd() % 2 ? any_word() : rnd() % 70));
    if (rnd() % 10 == 0)
        put32(base, size, C_HISTORY, (uint32_t)(rnd() % 2 ? any_word() : n + rnd() % 3 - 1));
    if (rnd() % 10 == 0)
        put32(base, size, C_FLAGS, (uint32_t)(rnd() % 2 ? rnd() : rnd() % 4));
    if (rnd() % 10 == 0)
        put64(base, size, C_PAYLOAD, any_word());
    /* Words the operations read and trust at their peril. */
    if (mask & 1)
        put64(base, size, C_HEAD, number_near(head));
    if (mask & 2)
        put64(base, size, C_NOTIFY, rnd()); /* notify and waiters */
    if (mask & 4)
        put64(base, size, C_ROOM, rnd() % 2 ? rnd() : 0); /* room and room_waiters */
    if (mask & 8)
        put32(base, size, C_DIRTY, rnd() % 2 ? 1 : (uint32_t)rnd());
    if (mask & 16)
        put32(base, size, C_FREE_COUNT, (uint32_t)(rnd() % 2 ? any_word() : rnd() % (n + 3)));
    if (mask & 32)
        put64(base, size, C_SUB_MASK, any_word());
    if (mask & 64)
        put64(base, size, C_SWEEP_AT, number_near(head));
    if (mask & 128)
        put64(base, size, C_CHECKED_AT, any_word());
    /* Slot entries. */
    k = (mask & 256) ? 1 + (int)(rnd() % 4) : 0;
    for (i = 0; i < k; i++) {
        size_t e = HEADER + (size_t)(rnd() % n) * 64;
        switch (rnd() % 6) {
        case 0: put64(base, size, e + 0, rnd() % 16 == 0 ? (number_near(head) << 1) | 1
                                                         : number_near(head) << 1); break;
        case 1: put64(base, size, e + 0, any_word()); break;
        case 2: put64(base, size, e + 8, any_word()); break;                /* length */
        case 3: put64(base, size, e + 16, rnd() % 2 ? any_word() : 1ULL << (rnd() % 64)); break;
        case 4: put64(base, size, e + 24, owner_word()); break;              /* loaner */
        default: put64(base, size, e + 32, number_near(head)); break;        /* loaned_at */
        }
    }
    /* Index and free-stack entries. */
    k = (mask & 512) ? 1 + (int)(rnd() % 4) : 0;
    for (i = 0; i < k; i++) {
        uint32_t v = (uint32_t)(rnd() % 2 ? any_word() : rnd() % (n + 2));
        if (rnd() % 2)
            put32(base, size, index_off(n) + (size_t)(rnd() % n) * 4, v);
        else
            put32(base, size, free_off(n) + (size_t)(rnd() % n) * 4, v);
    }
    /* Subscriber entries. */
    k = (mask & 1024) ? 1 + (int)(rnd() % 3) : 0;
    for (i = 0; i < k; i++) {
        size_t e = subs_off(n) + (size_t)(rnd() % m) * 64;
        switch (rnd() % 5) {
        case 0: put64(base, size, e + 0, owner_word()); break;
        case 1: put64(base, size, e + 8, number_near(head)); break;          /* cursor */
        case 2: put64(base, size, e + 16, any_word()); break;                /* missed */
        case 3: put64(base, size, e + 24, any_word()); break;                /* gen */
        default: put64(base, size, e + 40, any_word()); break;               /* pending */
        }
    }
    if (mask & 2048) {
        /* A burst of random bytes anywhere in the first 1024. */
        size_t at = (size_t)(rnd() % 1024), j, len = (size_t)(rnd() % 64) + 1;
        for (j = 0; j < len && at + j < size; j++)
            base[at + j] = (unsigned char)rnd();
    }
    /* The lock words: free or held by a dead process, both of which every
     * operation must get past (a live foreign owner would just wait). */
    put64(base, size, C_LOCK, (mask & 4096) ? dead_owner : 0);
    put64(base, size, C_LOCK_NEXT, (mask & 8192) ? dead_owner : 0);
}

static int refusal(int rc)
{
    return rc == FSHM_EFORMAT || rc == FSHM_EFULL || rc == FSHM_ETIMEOUT || rc == FSHM_ELOST ||
           rc == FSHM_ESUBFULL;
}

/* Read a received message whole, into a block of exactly its length. */
static void read_sample(const fshm_channel *c, const fshm_sample *s)
{
    unsigned char *copy = malloc(s->length ? s->length : 1);
    CHECK(copy != NULL, "malloc");
    CHECK(s->length <= c->slot_size && s->slot < c->slots &&
              (const unsigned char *)s->data == c->base + s->offset &&
              s->offset == c->payload_offset + (size_t)s->slot * c->stride,
          "sample of %zu bytes in slot %u at %zu", s->length, s->slot, s->offset);
    if (s->length)
        memcpy(copy, s->data, s->length);
    free(copy);
}

/* Every operation, none of them sleeping (but for a short bounded wait). */
static void ops(const fshm_channel *c, unsigned char *base, size_t size)
{
    static unsigned char src[6000];
    fshm_sub subs[3];
    int have[3] = {0, 0, 0};
    fshm_loan loans[2];
    int lent[2] = {0, 0};
    uint32_t i;
    int round, rc;

    CHECK(c->base == base && c->size == size, "geometry");
    CHECK(fshm_channel_size_for(c->slot_size, c->slots, c->max_subscribers) != 0 &&
              fshm_channel_size_for(c->slot_size, c->slots, c->max_subscribers) <= size &&
              c->history < c->slots && c->payload_offset % 4096 == 0 &&
              c->payload_offset + (uint64_t)c->slots * c->stride <= size,
          "attached geometry does not fit %zu bytes", size);
    (void)fshm_channel_head(c);
    CHECK(fshm_channel_subscribers(c) <= c->max_subscribers, "subscribers");
    for (i = 0; i < c->max_subscribers && i < 4; i++) {
        fshm_sub_info info;
        CHECK(fshm_channel_subscriber_info(c, i, &info) == 0 && info.pinned <= c->slots,
              "subscriber_info");
    }
    CHECK(fshm_channel_subscriber_info(c, c->max_subscribers, NULL) == EINVAL, "info range");
    (void)fshm_channel_lock_owner(c);

    /* One subscription from the start, so receives have something to do. */
    rc = fshm_channel_subscribe(c, &subs[0], 0);
    CHECK(rc == 0 || refusal(rc) || rc == FSHM_EBUSY, "subscribe rc %d", rc);
    have[0] = rc == 0;
    if (rc == 0 && rnd() % 2) {
        memset(src, 0x11, 8);
        (void)fshm_channel_try_publish(c, src, c->slot_size < 8 ? (size_t)c->slot_size : 8, NULL);
    }
    for (round = 0; round < 6; round++) {
        unsigned what = (unsigned)(rnd() % 8);
        unsigned j = (unsigned)(rnd() % 3);
        if (what == 0 && have[j]) {
            rc = fshm_channel_unsubscribe(c, &subs[j]);
            CHECK(rc == 0 || rc == FSHM_ELOST, "unsubscribe rc %d", rc);
            have[j] = 0;
        } else if (what == 0) {
            rc = fshm_channel_subscribe(c, &subs[j], 0);
            CHECK(rc == 0 || refusal(rc) || rc == FSHM_EBUSY, "subscribe rc %d", rc);
            if (rc == 0) {
                CHECK(subs[j].index < c->max_subscribers, "subscribe index %u", subs[j].index);
                have[j] = 1;
                st.subscribes_ok++;
            } else {
                st.subscribes_refused++;
            }
        } else if (what == 1) {
            size_t n = (size_t)(rnd() % 3 == 0 ? c->slot_size + rnd() % 2
                                               : rnd() % (c->slot_size + 1));
            if (n > sizeof src)
                n = sizeof src;
            memset(src, 0x5a, n);
            rc = rnd() % 2 ? fshm_channel_try_publish(c, src, n, NULL)
                           : fshm_channel_publish(c, src, n, 0, NULL);
            if (n > c->slot_size)
                CHECK(rc == FSHM_ETOOBIG, "publish of %zu > %llu: rc %d", n,
                      (unsigned long long)c->slot_size, rc);
            else
                CHECK(rc == 0 || refusal(rc) || rc == FSHM_EBUSY, "publish rc %d", rc);
            if (rc == 0)
                st.commits_ok++;
            else
                st.commits_refused++;
        } else if (what == 2 || what == 3) {
            unsigned l = (unsigned)(rnd() % 2);
            if (!lent[l]) {
                rc = rnd() % 2 ? fshm_channel_try_loan(c, 1, &loans[l])
                               : fshm_channel_loan(c, 1, &loans[l], 0);
                CHECK(rc == 0 || refusal(rc) || rc == FSHM_EBUSY, "loan rc %d", rc);
                if (rc == 0) {
                    CHECK(loans[l].slot < c->slots && loans[l].capacity == c->slot_size &&
                              (unsigned char *)loans[l].data == base + loans[l].offset,
                          "loan of slot %u", loans[l].slot);
                    /* The whole capacity is the caller's to write. */
                    memset(loans[l].data, 0x77, loans[l].capacity);
                    lent[l] = 1;
                    st.loans_ok++;
                } else {
                    st.loans_refused++;
                }
            } else {
                size_t n = (size_t)(rnd() % (c->slot_size + 2));
                rc = what == 3 ? fshm_channel_discard(c, &loans[l])
                               : rnd() % 2 ? fshm_channel_try_commit(c, &loans[l], n, NULL)
                                           : fshm_channel_commit(c, &loans[l], n, 0, NULL);
                CHECK(rc == 0 || refusal(rc) || rc == FSHM_EBUSY ||
                          (n > c->slot_size && rc == FSHM_ETOOBIG),
                      "commit or discard rc %d", rc);
                if (rc == FSHM_ETOOBIG || rc == FSHM_EBUSY)
                    rc = fshm_channel_discard(c, &loans[l]);
                if (rc == 0 && what == 2)
                    st.commits_ok++;
                lent[l] = 0;
            }
        } else if (what <= 5) {
            fshm_sample s;
            uint64_t missed = 0;
            if (!have[j])
                continue;
            if (rnd() % 4 == 0) {
                /* A copy, into a block of exactly the capacity asked for. */
                size_t cap = (size_t)(rnd() % (c->slot_size + 2));
                unsigned char *into = malloc(cap ? cap : 1);
                CHECK(into != NULL, "malloc");
                rc = what == 4
                         ? fshm_channel_try_receive_into(c, &subs[j], into, cap, &s, &missed)
                         : fshm_channel_receive_into(c, &subs[j], into, cap, &s, &missed, 0);
                CHECK(rc == 0 || refusal(rc) || rc == FSHM_ESMALL, "receive_into rc %d", rc);
                CHECK(rc != 0 || (s.length <= cap && s.data == NULL && s.slot < c->slots),
                      "receive_into of %zu bytes into %zu", s.length, cap);
                CHECK(rc != FSHM_ESMALL || (s.length > cap && s.length <= c->slot_size),
                      "receive_into refused %zu bytes for %zu", s.length, cap);
                free(into);
                st.receives_into += rc == 0;
                continue;
            }
            rc = what == 4 ? fshm_channel_try_receive(c, &subs[j], &s, &missed)
                           : fshm_channel_receive(c, &subs[j], &s, &missed, 0);
            CHECK(rc == 0 || refusal(rc), "receive rc %d", rc);
            if (rc == 0) {
                read_sample(c, &s);
                rc = fshm_channel_release(c, &subs[j], rnd() % 8 ? s.slot : (uint32_t)rnd());
                CHECK(rc == 0 || rc == EINVAL || rc == FSHM_ELOST, "release rc %d", rc);
                st.receives_ok++;
            } else {
                st.receives_refused++;
            }
        } else if (what == 6) {
            rc = fshm_channel_wait_room(c, 0);
            CHECK(rc == 0 || rc == FSHM_ETIMEOUT, "wait_room rc %d", rc);
            if (have[j]) {
                rc = fshm_channel_wait(c, &subs[j], 0);
                CHECK(rc == 0 || refusal(rc), "wait rc %d", rc);
            }
        } else {
            int how = (int)(rnd() % 3);
            rc = how == 0   ? fshm_channel_reclaim(c, 0)
                 : how == 1 ? fshm_channel_evict(c, (uint32_t)(rnd() % (c->max_subscribers + 1)),
                                                 owner_word(), 0)
                            : fshm_channel_evict_loan(c, (uint32_t)(rnd() % (c->slots + 1)),
                                                      owner_word(), 0);
            CHECK(rc == 0 || rc == FSHM_EAGAIN || rc == EINVAL || rc == FSHM_EBUSY,
                  "reclaim or evict rc %d", rc);
        }
    }
    if (rnd() % 64 == 0) {
        /* Short blocking waits on whatever the header says: bounded. */
        int64_t t0 = fshm_monotonic_ns();
        fshm_loan l;
        rc = fshm_channel_loan(c, 0, &l, 2000000);
        CHECK(rc == 0 || refusal(rc) || rc == FSHM_EBUSY, "timed loan rc %d", rc);
        if (rc == 0)
            (void)fshm_channel_discard(c, &l);
        if (have[0]) {
            fshm_sample s;
            rc = fshm_channel_receive(c, &subs[0], &s, NULL, 2000000);
            CHECK(rc == 0 || refusal(rc), "timed receive rc %d", rc);
        }
        CHECK(fshm_channel_wait_room(c, 2000000) <= 0, "timed wait_room");
        CHECK(fshm_monotonic_ns() - t0 < 2000000000LL, "2 ms waits took over 2 s");
        st.waits++;
    }
    for (i = 0; i < 2; i++)
        if (lent[i])
            (void)fshm_channel_discard(c, &loans[i]);
    for (i = 0; i < 3; i++)
        if (have[i]) {
            rc = fshm_channel_unsubscribe(c, &subs[i]);
            CHECK(rc == 0 || rc == FSHM_ELOST, "unsubscribe rc %d", rc);
        }
}

/* ---- model: an intact block-mode channel against what it must do ---- */

#define MODEL_SUBS 4
#define MODEL_MAX 4096

typedef struct msub {
    int on;
    fshm_sub sub;
    uint64_t cursor;
    uint64_t pinned[8]; /* message numbers held, 0: none */
    uint32_t slot[8];
} msub;

/* The length of message k, from k alone. */
static size_t msg_len(uint64_t k, uint64_t slot_size)
{
    k ^= k >> 31;
    k *= 0x9E3779B97F4A7C15ULL;
    return (size_t)((k ^ (k >> 29)) % (slot_size + 1));
}

static void msg_fill(unsigned char *p, uint64_t k, size_t len)
{
    size_t i;
    for (i = 0; i < len; i++)
        p[i] = (unsigned char)(k * 131 + i * 7 + (k >> 8));
}

static int msg_is(const unsigned char *p, size_t len, uint64_t k, uint64_t slot_size)
{
    static unsigned char want[6000];
    if (len != msg_len(k, slot_size) || len > sizeof want)
        return 0;
    msg_fill(want, k, len);
    return memcmp(p, want, len) == 0;
}

static void model_case(void)
{
    static unsigned char buf[6000];
    uint64_t slot_size = SLOT_SIZES[rnd() % 5];
    uint32_t n = SLOT_COUNTS[rnd() % 5], hist = (uint32_t)(rnd() % n);
    size_t size = fshm_channel_size_for(slot_size, n, MODEL_SUBS), step,
           steps = 100 + (size_t)(rnd() % 300);
    unsigned char *base = NULL;
    fshm_channel c;
    msub subs[MODEL_SUBS];
    fshm_loan loans[2];
    int lent[2] = {0, 0};
    uint64_t head = 0;

    CHECK(posix_memalign((void **)&base, 64, size) == 0, "posix_memalign");
    memset(base, 0, size);
    CHECK(fshm_channel_init(&c, base, size, slot_size, n, hist, MODEL_SUBS, 0) == 0, "init");
    memset(subs, 0, sizeof subs);
    for (step = 0; step < steps; step++) {
        unsigned op = (unsigned)(rnd() % 8), s = (unsigned)(rnd() % MODEL_SUBS), i;
        uint64_t least = head + 1, busy;
        int rc;
        /* A loan finds a slot unless every slot is lent, holds a message
         * some subscriber has not received, or is pinned. */
        for (i = 0; i < MODEL_SUBS; i++)
            if (subs[i].on && subs[i].cursor < least)
                least = subs[i].cursor;
        busy = (uint64_t)lent[0] + (uint64_t)lent[1] + (head + 1 - least);
        {
            uint64_t seen[MODEL_SUBS * 8];
            unsigned ns = 0, a, b;
            for (a = 0; a < MODEL_SUBS; a++)
                for (b = 0; b < 8; b++) {
                    uint64_t k = subs[a].on ? subs[a].pinned[b] : 0;
                    unsigned t;
                    if (k == 0 || k >= least)
                        continue;
                    for (t = 0; t < ns && seen[t] != k; t++)
                        ;
                    if (t == ns)
                        seen[ns++] = k;
                }
            busy += ns;
        }
        CHECK(busy <= n, "model: %llu busy of %u", (unsigned long long)busy, n);
        if (op <= 1) {
            /* Publish, or loan and commit later. */
            unsigned l = (unsigned)(rnd() % 2);
            if (op == 1 && lent[l]) {
                size_t len = msg_len(head + 1, slot_size);
                uint64_t seq = 0;
                msg_fill(loans[l].data, head + 1, len);
                if (rnd() % 4 == 0) {
                    CHECK(fshm_channel_discard(&c, &loans[l]) == 0, "model discard");
                } else {
                    CHECK(fshm_channel_commit(&c, &loans[l], len, 0, &seq) == 0 &&
                              seq == head + 1, "model commit");
                    head++;
                }
                lent[l] = 0;
            } else if (op == 1) {
                rc = fshm_channel_try_loan(&c, 0, &loans[l]);
                CHECK(busy < n ? rc == 0 : rc == FSHM_EFULL,
                      "model loan with %llu of %u busy: rc %d", (unsigned long long)busy, n, rc);
                lent[l] = rc == 0;
                st.model_full += rc == FSHM_EFULL;
            } else {
                size_t len = msg_len(head + 1, slot_size);
                uint64_t seq = 0;
                msg_fill(buf, head + 1, len);
                rc = fshm_channel_try_publish(&c, buf, len, &seq);
                CHECK(busy < n ? rc == 0 && seq == head + 1 : rc == FSHM_EFULL,
                      "model publish with %llu of %u busy: rc %d", (unsigned long long)busy, n,
                      rc);
                head += rc == 0;
                st.model_full += rc == FSHM_EFULL;
            }
        } else if (op <= 4 && subs[s].on && rnd() % 3 == 0) {
            /* Receive a copy: into a buffer one byte short, exact or one
             * byte long; one too short changes nothing. */
            fshm_sample smp;
            uint64_t missed = 7, want = subs[s].cursor;
            size_t len = want <= head ? msg_len(want, slot_size) : 0, cap, z;
            unsigned fit = (unsigned)(rnd() % 3);
            cap = fit == 0 && len > 0 ? len - 1 : fit == 1 ? len : len + 1;
            memset(buf, 0xA5, cap + 1);
            rc = rnd() % 2 ? fshm_channel_try_receive_into(&c, &subs[s].sub, buf, cap, &smp,
                                                           &missed)
                           : fshm_channel_receive_into(&c, &subs[s].sub, buf, cap, &smp,
                                                       &missed, 0);
            if (want > head) {
                CHECK(rc == FSHM_ETIMEOUT && missed == 0, "model receive_into of nothing: rc %d",
                      rc);
                continue;
            }
            if (cap < len) {
                CHECK(rc == FSHM_ESMALL && smp.length == len && smp.seq == want && missed == 0,
                      "model receive_into %zu of %zu bytes: rc %d", cap, len, rc);
                for (z = 0; z <= cap; z++)
                    CHECK(buf[z] == 0xA5, "model receive_into: a refused buffer was written");
                st.model_small++;
                continue;
            }
            CHECK(rc == 0 && smp.seq == want && missed == 0 && smp.data == NULL &&
                      msg_is(buf, smp.length, smp.seq, slot_size) && buf[smp.length] == 0xA5,
                  "model receive_into: rc %d, message %llu, wanted %llu", rc,
                  (unsigned long long)smp.seq, (unsigned long long)want);
            /* Released: it holds no slot (the busy count says so next). */
            subs[s].cursor++;
            st.model_messages++;
            st.model_copies++;
        } else if (op <= 4) {
            /* Receive: the subscriber's next message, whole. */
            fshm_sample smp;
            uint64_t missed = 7;
            unsigned b;
            if (!subs[s].on)
                continue;
            for (b = 0; b < 8 && subs[s].pinned[b] != 0; b++)
                ;
            if (b == 8)
                continue;
            rc = fshm_channel_try_receive(&c, &subs[s].sub, &smp, &missed);
            if (subs[s].cursor > head) {
                CHECK(rc == FSHM_ETIMEOUT && missed == 0, "model receive of nothing: rc %d", rc);
                continue;
            }
            CHECK(rc == 0 && smp.seq == subs[s].cursor && missed == 0 &&
                      msg_is(smp.data, smp.length, smp.seq, slot_size),
                  "model receive: rc %d, message %llu, wanted %llu", rc,
                  (unsigned long long)smp.seq, (unsigned long long)subs[s].cursor);
            subs[s].pinned[b] = smp.seq;
            subs[s].slot[b] = smp.slot;
            subs[s].cursor++;
            st.model_messages++;
        } else if (op == 5) {
            /* Release something held. */
            unsigned b = (unsigned)(rnd() % 8);
            if (!subs[s].on || subs[s].pinned[b] == 0)
                continue;
            CHECK(msg_is(base + c.payload_offset + (size_t)subs[s].slot[b] * c.stride,
                         msg_len(subs[s].pinned[b], slot_size), subs[s].pinned[b], slot_size),
                  "model: a pinned message changed");
            CHECK(fshm_channel_release(&c, &subs[s].sub, subs[s].slot[b]) == 0, "release");
            subs[s].pinned[b] = 0;
        } else if (op == 6) {
            /* Join or leave. */
            if (subs[s].on) {
                CHECK(fshm_channel_unsubscribe(&c, &subs[s].sub) == 0, "model unsubscribe");
                memset(&subs[s], 0, sizeof subs[s]);
            } else {
                fshm_sub_info info;
                uint64_t oldest = head + 1 > hist ? head + 1 - hist : 1;
                rc = fshm_channel_subscribe(&c, &subs[s].sub, 0);
                CHECK(rc == 0, "model subscribe: rc %d", rc);
                CHECK(fshm_channel_subscriber_info(&c, subs[s].sub.index, &info) == 0 &&
                          info.owner == fshm_self_id(), "model info");
                /* The latest messages in place, within history; those the
                 * others have still to receive are all in place. */
                CHECK(info.cursor >= oldest && info.cursor <= head + 1 &&
                          info.cursor <= (least > oldest ? least : oldest),
                      "model join at %llu: head %llu, history %u, least %llu",
                      (unsigned long long)info.cursor, (unsigned long long)head, hist,
                      (unsigned long long)least);
                subs[s].on = 1;
                subs[s].cursor = info.cursor;
                st.model_joins++;
            }
        } else {
            /* The snapshots and the non-sleeping waits agree with the model. */
            CHECK((fshm_channel_wait_room(&c, 0) == 0) == (busy < n),
                  "model wait_room with %llu of %u busy", (unsigned long long)busy, n);
            if (subs[s].on)
                CHECK((fshm_channel_wait(&c, &subs[s].sub, 0) == 0) ==
                          (subs[s].cursor <= head), "model wait");
        }
        {
            unsigned a, count = 0;
            for (a = 0; a < MODEL_SUBS; a++) {
                fshm_sub_info info;
                if (!subs[a].on)
                    continue;
                count++;
                CHECK(fshm_channel_subscriber_info(&c, subs[a].sub.index, &info) == 0 &&
                          info.cursor == subs[a].cursor && info.missed == 0,
                      "model cursor %llu, wanted %llu", (unsigned long long)info.cursor,
                      (unsigned long long)subs[a].cursor);
            }
            CHECK(fshm_channel_head(&c) == head && fshm_channel_subscribers(&c) == count,
                  "model head %llu (want %llu), %u subscribers (want %u)",
                  (unsigned long long)fshm_channel_head(&c), (unsigned long long)head,
                  fshm_channel_subscribers(&c), count);
        }
        st.model_ops++;
    }
    st.model_cases++;
    free(base);
}

/* ---- hostile cases ---- */

/* Some messages published, some received, so head, the index and the
 * cursors are somewhere. */
static void fill(const fshm_channel *c)
{
    static unsigned char buf[6000];
    fshm_sub sub;
    int i, k = (int)(rnd() % 20);
    int subscribed = rnd() % 2 && fshm_channel_subscribe(c, &sub, 0) == 0;
    for (i = 0; i < k; i++) {
        size_t n = (size_t)(rnd() % (c->slot_size + 1));
        fshm_sample s;
        if (n > sizeof buf)
            n = sizeof buf;
        (void)fshm_channel_try_publish(c, buf, n, NULL);
        if (subscribed && rnd() % 2 && fshm_channel_try_receive(c, &sub, &s, NULL) == 0 &&
            rnd() % 4)
            (void)fshm_channel_release(c, &sub, s.slot);
    }
    /* Left subscribed sometimes: an entry (ours) with pins. */
}

static void one_case(void)
{
    uint64_t slot_size = pick(SLOT_SIZES, sizeof SLOT_SIZES / 8);
    uint32_t n = SLOT_COUNTS[rnd() % 5], m = SUB_COUNTS[rnd() % 4];
    uint32_t hist = (uint32_t)(rnd() % n), flags = (uint32_t)(rnd() % 2);
    size_t need = fshm_channel_size_for(slot_size, n, m);
    static const long DELTA[] = {0, 0, 0, 0, 64, 1, -1, -8, -4096, -(long)HEADER};
    long delta = DELTA[rnd() % (sizeof DELTA / sizeof DELTA[0])];
    size_t size = (long)need + delta > 0 ? (size_t)((long)need + delta) : 1;
    unsigned char *base = NULL;
    fshm_channel c;
    int rc;

    /* Exactly `size` bytes: one byte past the end is a redzone. */
    CHECK(posix_memalign((void **)&base, 64, size) == 0, "posix_memalign");
    memset(base, 0, size);
    if (size >= need) {
        CHECK(fshm_channel_init(&c, base, size, slot_size, n, hist, m, flags) == 0, "init");
        fill(&c);
    } else {
        /* Too small for what its header says: the header by hand. */
        uint16_t v = FSHM_CHANNEL_VERSION, h = HEADER;
        uint64_t payload = need - (uint64_t)n * ((slot_size >= 4096 ? (slot_size + 4095) & ~4095ULL
                                                                     : (slot_size + 63) & ~63ULL));
        if (size >= 64) {
            memcpy(base + C_VERSION, &v, 2);
            memcpy(base + C_HEADER_SIZE, &h, 2);
            memcpy(base + C_SLOT_SIZE, &slot_size, 8);
            memcpy(base + C_SLOTS, &n, 4);
            memcpy(base + C_MAX_SUBS, &m, 4);
            memcpy(base + C_HISTORY, &hist, 4);
            memcpy(base + C_PAYLOAD, &payload, 8);
        }
        put32(base, size, C_MAGIC, FSHM_CHANNEL_MAGIC);
    }

    if (size >= need && (rnd() & 1)) {
        /* Attached first, corrupted later: the cached geometry must hold. */
        CHECK(fshm_channel_attach(&c, base, size) == 0, "attach of a valid channel");
        corrupt(base, size, n, m);
        ops(&c, base, size);
    } else {
        corrupt(base, size, n, m);
        rc = fshm_channel_attach(&c, base, size);
        if (rc == 0) {
            st.attach_ok++;
            ops(&c, base, size);
        } else {
            CHECK(rc == FSHM_EFORMAT || rc == FSHM_EVERSION || rc == FSHM_ENOTREADY ||
                      rc == FSHM_EKIND || rc == FSHM_EPROTOCOL, "attach rc %d", rc);
            st.attach_refused++;
        }
    }
    free(base);
}

/* The same over real named mappings, attached by name as a process would;
 * and each kind opened as the others. */
static void named_cases(const char *name, unsigned long count)
{
    unsigned long k;
    int kind, rc;
    for (k = 0; k < count; k++, st.iterations++) {
        fshm_channel c, c2;
        fshm_seg s;
        fshm_queue q;
        fshm_map m, m2;
        uint32_t n = SLOT_COUNTS[rnd() % 5], subs = SUB_COUNTS[rnd() % 4];
        rc = fshm_channel_open(&c, &m, name, FSHM_CREATE, 1 + rnd() % 5000, n,
                               (uint32_t)(rnd() % n), subs, (uint32_t)(rnd() % 2), 0600);
        CHECK(rc == 0, "create %s: rc %d", name, rc);
        fill(&c);
        CHECK(fshm_seg_open(&s, &m2, name, FSHM_ATTACH, 0, 0) == FSHM_EKIND &&
                  fshm_queue_open(&q, &m2, name, FSHM_OPEN_OR_CREATE, 64, 0, 0600) == FSHM_EKIND,
              "a channel opened as a segment or a queue");
        CHECK(fshm_kind_of(name, 0, &kind) == 0 && kind == FSHM_KIND_CHANNEL, "kind_of");
        st.ekind += 2;
        corrupt(m.base, m.size, n, subs);
        rc = fshm_channel_open(&c2, &m2, name, FSHM_ATTACH, 0, 0, 0, 0, 0, 0);
        if (rc == 0) {
            st.attach_ok++;
            ops(&c2, m2.base, m2.size);
            fshm_unmap(m2.base, m2.size);
        } else {
            CHECK(rc == FSHM_EFORMAT || rc == FSHM_EVERSION || rc == FSHM_ENOTREADY ||
                      rc == FSHM_EKIND || rc == FSHM_EPROTOCOL, "attach by name rc %d", rc);
            st.attach_refused++;
        }
        /* The creator's own handle, geometry cached before the damage. */
        ops(&c, m.base, m.size);
        fshm_unmap(m.base, m.size);
        CHECK(fshm_unlink(name) == 0, "unlink");
    }
    {
        /* A segment and a queue opened as a channel. */
        fshm_channel c;
        fshm_seg s;
        fshm_queue q;
        fshm_map m, m2;
        CHECK(fshm_seg_open(&s, &m, name, FSHM_CREATE, 64, 0600) == 0, "create segment");
        CHECK(fshm_channel_open(&c, &m2, name, FSHM_ATTACH, 0, 0, 0, 0, 0, 0) == FSHM_EKIND &&
                  fshm_channel_open(&c, &m2, name, FSHM_OPEN_OR_CREATE, 64, 4, 0, 1, 0, 0600) ==
                      FSHM_EKIND,
              "a segment opened as a channel");
        CHECK(fshm_kind_of(name, 0, &kind) == 0 && kind == FSHM_KIND_SEGMENT, "kind_of");
        fshm_unmap(m.base, m.size);
        CHECK(fshm_unlink(name) == 0, "unlink");
        CHECK(fshm_queue_open(&q, &m, name, FSHM_CREATE, 64, 0, 0600) == 0, "create queue");
        CHECK(fshm_channel_open(&c, &m2, name, FSHM_ATTACH, 0, 0, 0, 0, 0, 0) == FSHM_EKIND,
              "a queue opened as a channel");
        CHECK(fshm_kind_of(name, 0, &kind) == 0 && kind == FSHM_KIND_QUEUE, "kind_of");
        fshm_unmap(m.base, m.size);
        CHECK(fshm_unlink(name) == 0, "unlink");
        CHECK(fshm_kind_of(name, 0, &kind) == ENOENT && kind == 0, "kind_of a missing name");
        st.ekind += 3;
    }
}

int main(int argc, char **argv)
{
    unsigned long iterations = argc > 1 ? strtoul(argv[1], NULL, 10) : 100000;
    unsigned long seed = argc > 2 ? strtoul(argv[2], NULL, 10) : 1;
    const char *name = argc > 3 ? argv[3] : NULL;
    pid_t pid;
    size_t i;

    rng_state = seed * 0x9E3779B97F4A7C15ULL + 1;
    pid = fork();
    if (pid == 0)
        _exit(0);
    CHECK(pid > 0 && waitpid(pid, NULL, 0) == pid, "fork");
    dead_owner = (fshm_self_id() & ~(uint64_t)0xFFFFFFFF) | (uint32_t)pid;
    CHECK(fshm_owner_dead(dead_owner) == 1, "a reaped child must count as dead");

    /* Sizes at the edges of the range: out of range is 0; in range, the
     * payloads are page-aligned and the slots fit. */
    for (i = 0; i < sizeof WORDS / sizeof WORDS[0]; i++) {
        static const uint32_t NS[] = {0, 1, 2, 3, FSHM_CHANNEL_MAX_SLOTS,
                                      FSHM_CHANNEL_MAX_SLOTS + 1, UINT32_MAX};
        static const uint32_t MS[] = {0, 1, 64, 65, UINT32_MAX};
        size_t a, b;
        for (a = 0; a < sizeof NS / 4; a++)
            for (b = 0; b < sizeof MS / 4; b++) {
                uint64_t ss = WORDS[i];
                size_t size = fshm_channel_size_for(ss, NS[a], MS[b]);
                int valid = ss > 0 && NS[a] >= 2 && NS[a] <= FSHM_CHANNEL_MAX_SLOTS &&
                            MS[b] >= 1 && MS[b] <= 64;
                CHECK(valid || size == 0, "size_for(%llu, %u, %u) = %zu",
                      (unsigned long long)ss, NS[a], MS[b], size);
                if (size != 0)
                    CHECK(size >= (uint64_t)NS[a] * ss && size % 64 == 0,
                          "size_for(%llu, %u, %u) = %zu", (unsigned long long)ss, NS[a], MS[b],
                          size);
            }
    }
    for (st.iterations = 0; st.iterations < iterations; st.iterations++) {
        if (rnd() % 4 == 0)
            model_case();
        else
            one_case();
    }
    if (name != NULL)
        named_cases(name, iterations / 200 + 1);
    printf("iterations=%lu attach_ok=%lu attach_refused=%lu loans_ok=%lu loans_refused=%lu "
           "commits_ok=%lu commits_refused=%lu receives_ok=%lu receives_refused=%lu "
           "subscribes_ok=%lu subscribes_refused=%lu waits=%lu model_cases=%lu model_ops=%lu "
           "model_messages=%lu model_full=%lu model_joins=%lu model_copies=%lu "
           "model_small=%lu receives_into=%lu ekind=%lu\n",
           st.iterations, st.attach_ok, st.attach_refused, st.loans_ok, st.loans_refused,
           st.commits_ok, st.commits_refused, st.receives_ok, st.receives_refused,
           st.subscribes_ok, st.subscribes_refused, st.waits, st.model_cases, st.model_ops,
           st.model_messages, st.model_full, st.model_joins, st.model_copies, st.model_small,
           st.receives_into, st.ekind);
    return 0;
}
