/*
 * Hostile queue headers and rings against csrc/queue.c, built with
 *   -fsanitize=address,undefined -fno-sanitize-recover=all
 * (tests/test_sanitizers.py).  A fixed-seed loop lays a queue over a heap
 * block of exactly the mapping's size (AddressSanitizer's redzone is the
 * byte after it), fills it with some records, rewrites header words and
 * record lengths inside the ring with adversarial values, and calls every
 * queue operation without sleeping.  Each must return success or a defined
 * refusal (FSHM_EFORMAT, ENOMSG, EFULL, and ETOOBIG / ESMALL / EPROTOCOL
 * where the arguments or flags call for them); a sanitizer report, a crash
 * or a hang (the driver's timeout) is a failure.  A copy of a message is
 * made into heap blocks of exactly its length.  A quarter of the cases are
 * left intact and checked against a model of the queue instead: every
 * operation's result and every message, through many wrap-arounds.  A last
 * pass does the same over real named mappings, and opens a segment as a
 * queue and a queue as a segment (FSHM_EKIND).
 *
 *   queue_fuzz ITERATIONS SEED NAME
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

/* Header offsets of docs/FORMAT.md ("Queues"). */
#define Q_MAGIC 0
#define Q_VERSION 4
#define Q_HEADER_SIZE 6
#define Q_CAPACITY 8
#define Q_HEAD 16
#define Q_NOTIFY 24
#define Q_TAIL 32
#define Q_COUNT 40
#define Q_FLAGS 48
#define Q_LOCK 64
#define Q_LOCK_NEXT 80
#define Q_DIRTY 88
#define RING FSHM_HEADER_SIZE

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
    0, 1, 7, 8, 9, 15, 16, 17, 24, 56, 64, 120, 128, 4088, 4096, 4104, 1ULL << 31,
    1ULL << 32, (1ULL << 62) - 8, 1ULL << 62, (1ULL << 63) - 8, 1ULL << 63,
    UINT64_MAX - 15, UINT64_MAX - 7, UINT64_MAX,
};
static const uint64_t CAPACITIES[] = {16, 24, 40, 64, 104, 256, 4096};

static struct {
    unsigned long iterations, attach_ok, attach_refused, puts_ok, puts_refused, gets_ok,
        gets_refused, takes_ok, takes_refused, waits, model_cases, model_ops, model_messages,
        model_empty, ekind;
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

static uint64_t get64(const unsigned char *base, size_t off)
{
    uint64_t v;
    memcpy(&v, base + off, 8);
    return v;
}

/* A process of ours that has exited and been reaped: its lock word is one
 * every operation must take over. */
static uint64_t dead_owner;

/* A counter value near `around`, aligned or not. */
static uint64_t position(uint64_t around, uint64_t cap)
{
    switch (rnd() % 6) {
    case 0: return pick(WORDS, sizeof WORDS / 8);
    case 1: return rnd();
    case 2: return around + (rnd() % (2 * cap + 16)) - cap;
    case 3: return (around + (rnd() % (2 * cap + 16)) - cap) & ~7ULL;
    case 4: return around + 8 * (rnd() % 4);
    default: return around;
    }
}

/* A record length: fitting, just not fitting, or anything. */
static uint64_t length(uint64_t cap)
{
    switch (rnd() % 5) {
    case 0: return pick(WORDS, sizeof WORDS / 8);
    case 1: return rnd();
    case 2: return cap - 8 + rnd() % 24 - 8;
    default: return rnd() % (cap + 8);
    }
}

static void corrupt(unsigned char *base, size_t size, uint64_t cap)
{
    unsigned mask = (unsigned)rnd();
    uint64_t head = size >= 24 ? get64(base, Q_HEAD) : 0;
    uint64_t tail = size >= 40 ? get64(base, Q_TAIL) : 0;
    uint16_t u16;
    int i, n;
    /* The fields attach checks are hit one time in eight each, so most
     * cases get past attach to the operations. */
    if (rnd() % 8 == 0)
        put32(base, size, Q_MAGIC, (rnd() & 1) ? (uint32_t)rnd() : FSHM_QUEUE_MAGIC + 1);
    if (rnd() % 8 == 0 && size >= 8) {
        u16 = (uint16_t)((rnd() & 1) ? rnd() : 2);
        memcpy(base + Q_VERSION, &u16, 2);
    }
    if (rnd() % 8 == 0 && size >= 8) {
        u16 = (uint16_t)((rnd() & 1) ? rnd() : 64);
        memcpy(base + Q_HEADER_SIZE, &u16, 2);
    }
    if (rnd() % 8 == 0)
        put64(base, size, Q_CAPACITY, (rnd() & 1) ? rnd() : pick(WORDS, sizeof WORDS / 8));
    if (rnd() % 8 == 0)
        put32(base, size, Q_FLAGS, (rnd() & 1) ? (uint32_t)rnd() : FSHM_QUEUE_PYLOCK);
    if (mask & 1)
        put64(base, size, Q_HEAD, position(head, cap));
    if (mask & 2)
        put64(base, size, Q_TAIL, position(mask & 1 ? tail : head, cap));
    if (mask & 4)
        put64(base, size, Q_COUNT, (rnd() & 1) ? rnd() : rnd() % 8);
    if (mask & 8)
        put32(base, size, Q_DIRTY, (rnd() & 1) ? 1 : (uint32_t)rnd());
    if (mask & 16)
        put64(base, size, Q_NOTIFY, rnd()); /* notify and waiters */
    /* Record lengths inside the ring: where head points, or anywhere. */
    n = (mask & 32) ? 1 + (int)(rnd() % 4) : 0;
    for (i = 0; i < n && size > RING && cap >= 16; i++) {
        uint64_t at = (i == 0 ? get64(base, Q_HEAD) : rnd()) % cap & ~7ULL;
        if (RING + at + 8 <= size)
            put64(base, size, RING + (size_t)at, length(cap));
    }
    if (mask & 64) {
        /* A burst of random bytes anywhere in the first 512. */
        size_t at = (size_t)(rnd() % 512), k, len = (size_t)(rnd() % 64) + 1;
        for (k = 0; k < len && at + k < size; k++)
            base[at + k] = (unsigned char)rnd();
    }
    /* The lock words: free or held by a dead process, both of which every
     * operation must get past (a live foreign owner would just wait). */
    put64(base, size, Q_LOCK, (mask & 128) ? dead_owner : 0);
    put64(base, size, Q_LOCK_NEXT, (mask & 256) ? dead_owner : 0);
}

/* take callbacks: copy into heap blocks of exactly the message's length. */
typedef struct exact_ctx {
    unsigned char *blocks[4];
    size_t lens[4];
    size_t n, max_len;
} exact_ctx;

static void *take_exact(void *ctx, size_t len)
{
    exact_ctx *c = (exact_ctx *)ctx;
    if (c->n == 4 || len > c->max_len)
        return NULL;
    c->blocks[c->n] = malloc(len ? len : 1);
    CHECK(c->blocks[c->n] != NULL, "malloc");
    c->lens[c->n] = len;
    return c->blocks[c->n++];
}

static void free_exact(exact_ctx *c)
{
    size_t i;
    for (i = 0; i < c->n; i++)
        free(c->blocks[i]);
    c->n = 0;
}

static int refusal(int rc)
{
    return rc == FSHM_EFORMAT || rc == FSHM_ENOMSG || rc == FSHM_EFULL;
}

/* Every operation, none of them sleeping (but for one short bounded wait). */
static void ops(const fshm_queue *q, unsigned char *base, size_t size)
{
    static unsigned char src[3][4200];
    uint64_t cap = q->capacity, max = fshm_queue_max_message(cap);
    int pylock = (q->flags & FSHM_QUEUE_PYLOCK) != 0;
    fshm_msg msgs[3];
    exact_ctx c;
    size_t n = 0, k, taken = 0, lens[4], i;
    unsigned char *dst;
    int rc, round;

    CHECK(q->base == base && q->size == size, "geometry");
    CHECK(fshm_queue_size_for(cap) != 0 && fshm_queue_size_for(cap) <= size && cap % 8 == 0,
          "attached capacity %llu does not fit %zu bytes", (unsigned long long)cap, size);
    (void)fshm_queue_count(q);
    CHECK(fshm_queue_used(q) <= cap, "used beyond the ring");
    (void)fshm_queue_lock_owner(q);

    for (round = 0; round < 3; round++) {
        /* put: a length that fits, or just does not. */
        n = (size_t)(rnd() % 3 == 0 ? max + (rnd() % 2) : rnd() % (max + 1));
        if (n > sizeof src[0])
            n = sizeof src[0] - (rnd() % 2);
        memset(src[0], 0x5a, n);
        rc = fshm_queue_put(q, src[0], n, 0);
        if (n > max)
            CHECK(rc == FSHM_ETOOBIG, "put of %zu > max %llu: rc %d", n,
                  (unsigned long long)max, rc);
        else if (pylock)
            CHECK(rc == FSHM_EPROTOCOL, "put on a PYLOCK queue: rc %d", rc);
        else
            CHECK(rc == 0 || refusal(rc), "put rc %d", rc);
        if (rc == 0)
            st.puts_ok++;
        else
            st.puts_refused++;
        if (rc == 0 || refusal(rc))
            CHECK(fshm_queue_lock_owner(q) == 0, "lock left held by put");

        /* try_put_many of up to 3 small ones. */
        k = 1 + (size_t)(rnd() % 3);
        for (i = 0; i < k; i++) {
            msgs[i].data = src[i];
            msgs[i].len = (size_t)(rnd() % (max / 3 + 1));
            memset(src[i], 0x33, msgs[i].len);
        }
        rc = (rnd() & 1) ? fshm_queue_try_put_many(q, msgs, k)
                         : fshm_queue_put_many(q, msgs, k, 0);
        CHECK(rc == 0 || refusal(rc) || rc == FSHM_ETOOBIG || (pylock && rc == FSHM_EPROTOCOL),
              "put_many rc %d", rc);

        /* get into exactly as many bytes as asked for. */
        n = (size_t)(rnd() % (max + 2));
        dst = malloc(n ? n : 1);
        CHECK(dst != NULL, "malloc");
        k = 0;
        rc = fshm_queue_get(q, n ? dst : NULL, n, &k, 0);
        CHECK(rc == 0 || refusal(rc) || rc == FSHM_ESMALL || (pylock && rc == FSHM_EPROTOCOL),
              "get rc %d", rc);
        if (rc == 0 || rc == FSHM_ESMALL)
            CHECK(k <= max && (rc == FSHM_ESMALL) == (k > n), "get length %zu of %zu", k, n);
        if (rc == 0)
            st.gets_ok++;
        else
            st.gets_refused++;
        free(dst);

        /* get_packed into an exact block. */
        n = (size_t)(rnd() % (2 * max + 2));
        dst = malloc(n ? n : 1);
        CHECK(dst != NULL, "malloc");
        rc = fshm_queue_get_packed(q, n ? dst : NULL, n, lens, 1 + rnd() % 4, &taken, 0);
        CHECK(rc == 0 || refusal(rc) || rc == FSHM_ESMALL || (pylock && rc == FSHM_EPROTOCOL),
              "get_packed rc %d", rc);
        if (rc == 0) {
            size_t sum = 0;
            for (i = 0; i < taken; i++)
                sum += lens[i];
            CHECK(taken >= 1 && sum <= n, "get_packed took %zu, %zu bytes of %zu", taken, sum, n);
        }
        free(dst);

        /* take and try_take into exact blocks. */
        memset(&c, 0, sizeof c);
        c.max_len = (size_t)(rnd() % 2 ? max : rnd() % (max + 1));
        rc = (rnd() & 1) ? fshm_queue_try_take(q, take_exact, &c, 1 + rnd() % 4, &taken)
                         : fshm_queue_take(q, take_exact, &c, 1 + rnd() % 4, &taken, 0);
        CHECK(rc == 0 || refusal(rc) || (pylock && rc == FSHM_EPROTOCOL), "take rc %d", rc);
        CHECK(taken == c.n || (rc != 0 && taken == 0), "take said %zu, copied %zu", taken, c.n);
        if (rc == 0)
            st.takes_ok++;
        else
            st.takes_refused++;
        free_exact(&c);
        CHECK(fshm_queue_used(q) <= cap, "used beyond the ring");
    }

    if (rnd() % 32 == 0) {
        /* A short blocking wait on whatever the header says: bounded. */
        int64_t t0 = fshm_monotonic_ns();
        n = (size_t)(rnd() % (max + 1));
        rc = (rnd() & 1) ? fshm_queue_put(q, src[0], n, 2000000)
                         : fshm_queue_get(q, src[0], sizeof src[0], &k, 2000000);
        CHECK(rc == 0 || refusal(rc) || (pylock && rc == FSHM_EPROTOCOL), "wait rc %d", rc);
        CHECK(fshm_monotonic_ns() - t0 < 2000000000LL, "a 2 ms wait took over 2 s");
        st.waits++;
    }
}

/* ---- model: an intact queue against a list of what it must hold ---- */

typedef struct model {
    uint64_t ids[4096];
    size_t lens[4096];
    size_t first, n;
    uint64_t used, next_id;
} model;

static size_t msg_fill(unsigned char *p, uint64_t id, size_t len)
{
    size_t i;
    for (i = 0; i < len; i++)
        p[i] = (unsigned char)(id * 131 + i * 7 + (id >> 8));
    if (len >= 8)
        memcpy(p, &id, 8);
    return len;
}

static int msg_is(const unsigned char *p, size_t len, uint64_t id)
{
    static unsigned char want[8192];
    return len <= sizeof want && memcmp(p, want, msg_fill(want, id, len)) == 0;
}

static uint64_t rec(size_t len) { return 8 + (((uint64_t)len + 7) & ~7ULL); }

static void model_case(void)
{
    static model m;
    static unsigned char buf[8192], out[4 * 4096];
    uint64_t cap = pick(CAPACITIES, sizeof CAPACITIES / 8), max = fshm_queue_max_message(cap);
    size_t size = fshm_queue_size_for(cap), step, steps = 50 + (size_t)(rnd() % 200);
    unsigned char *base = NULL;
    fshm_queue q;

    CHECK(posix_memalign((void **)&base, 64, size) == 0, "posix_memalign");
    memset(base, 0, size);
    CHECK(fshm_queue_init(&q, base, size, cap, 0) == 0, "init");
    memset(&m, 0, sizeof m);
    for (step = 0; step < steps; step++) {
        unsigned op = (unsigned)(rnd() % 4);
        size_t len, got = 0, k, i;
        int rc;
        if (op <= 1) {
            /* Mostly small messages, some empty, some as long as the ring
             * allows. */
            len = (size_t)(rnd() % 4 == 0 ? rnd() % (max + 1)
                           : rnd() % 3 == 0 ? 0 : rnd() % (max / 4 + 1));
            msg_fill(buf, m.next_id, len);
            rc = fshm_queue_put(&q, buf, len, 0);
            if (cap - m.used >= rec(len)) {
                CHECK(rc == 0, "model put of %zu with %llu free: rc %d", len,
                      (unsigned long long)(cap - m.used), rc);
                m.ids[(m.first + m.n) % 4096] = m.next_id++;
                m.lens[(m.first + m.n) % 4096] = len;
                m.n++;
                m.used += rec(len);
            } else {
                CHECK(rc == FSHM_EFULL, "model put without room: rc %d", rc);
            }
        } else if (op == 2) {
            rc = fshm_queue_get(&q, out, sizeof out, &got, 0);
            if (m.n == 0) {
                CHECK(rc == FSHM_ENOMSG, "model get of nothing: rc %d", rc);
            } else {
                CHECK(rc == 0 && got == m.lens[m.first] && msg_is(out, got, m.ids[m.first]),
                      "model get: rc %d, %zu bytes", rc, got);
                m.used -= rec(got);
                m.first = (m.first + 1) % 4096;
                m.n--;
                st.model_messages++;
            }
        } else if (rnd() % 4 == 0) {
            /* Into no buffer at all: only empty messages can be taken, the
             * leading ones, and a first one with bytes stays queued. */
            size_t lens[4], want = 1 + (size_t)(rnd() % 4), zeros = 0;
            while (zeros < want && zeros < m.n && m.lens[(m.first + zeros) % 4096] == 0)
                zeros++;
            rc = fshm_queue_get_packed(&q, NULL, 0, lens, want, &k, 0);
            if (m.n == 0) {
                CHECK(rc == FSHM_ENOMSG, "model get_packed into nothing, of nothing: rc %d", rc);
            } else if (zeros == 0) {
                CHECK(rc == FSHM_ESMALL && k == 0 && lens[0] == m.lens[m.first],
                      "model get_packed into nothing: rc %d, %zu", rc, k);
            } else {
                CHECK(rc == 0 && k == zeros, "model get_packed of empty messages: rc %d: %zu",
                      rc, k);
                for (i = 0; i < k; i++) {
                    CHECK(lens[i] == 0, "model get_packed of empty messages: length %zu",
                          lens[i]);
                    m.used -= rec(0);
                    m.first = (m.first + 1) % 4096;
                    m.n--;
                    st.model_messages++;
                    st.model_empty++;
                }
            }
        } else {
            size_t lens[4], at = 0, want = 1 + (size_t)(rnd() % 4);
            rc = fshm_queue_get_packed(&q, out, sizeof out, lens, want, &k, 0);
            if (m.n == 0) {
                CHECK(rc == FSHM_ENOMSG, "model get_packed of nothing: rc %d", rc);
            } else {
                CHECK(rc == 0 && k == (want < m.n ? want : m.n), "model get_packed rc %d: %zu",
                      rc, k);
                for (i = 0; i < k; i++) {
                    CHECK(lens[i] == m.lens[m.first] && msg_is(out + at, lens[i], m.ids[m.first]),
                          "model get_packed message %zu", i);
                    at += lens[i];
                    m.used -= rec(lens[i]);
                    m.first = (m.first + 1) % 4096;
                    m.n--;
                    st.model_messages++;
                }
            }
        }
        CHECK(fshm_queue_count(&q) == m.n && fshm_queue_used(&q) == m.used,
              "model count %llu (want %zu), used %llu (want %llu)",
              (unsigned long long)fshm_queue_count(&q), m.n,
              (unsigned long long)fshm_queue_used(&q), (unsigned long long)m.used);
        st.model_ops++;
    }
    st.model_cases++;
    free(base);
}

/* ---- hostile cases ---- */

/* Some records put and taken, so head and tail are somewhere in the ring
 * (often past its end) and records wrap. */
static void fill(const fshm_queue *q)
{
    static unsigned char buf[4200];
    uint64_t max = fshm_queue_max_message(q->capacity);
    int i, n = (int)(rnd() % 12);
    size_t got;
    for (i = 0; i < n; i++) {
        size_t len = (size_t)(rnd() % (max / 2 + 1));
        if (rnd() % 3 == 0)
            (void)fshm_queue_get(q, buf, sizeof buf, &got, 0);
        else
            (void)fshm_queue_put(q, buf, len, 0);
    }
}

static void one_case(void)
{
    uint64_t cap = pick(CAPACITIES, sizeof CAPACITIES / 8);
    size_t need = fshm_queue_size_for(cap);
    static const long DELTA[] = {0, 0, 0, 0, 8, 1, -1, -8, -64, -(long)FSHM_HEADER_SIZE};
    long delta = DELTA[rnd() % (sizeof DELTA / sizeof DELTA[0])];
    size_t size = (long)need + delta > 0 ? (size_t)((long)need + delta) : 1;
    unsigned char *base = NULL;
    uint32_t flags = rnd() % 8 == 0 ? FSHM_QUEUE_PYLOCK : 0;
    fshm_queue q;
    int rc;

    /* Exactly `size` bytes: one byte past the end is a redzone. */
    CHECK(posix_memalign((void **)&base, 64, size) == 0, "posix_memalign");
    memset(base, 0, size);
    if (size >= need) {
        CHECK(fshm_queue_init(&q, base, size, cap, 0) == 0, "init");
        fill(&q);
        if (flags)
            put32(base, size, Q_FLAGS, flags);
    } else {
        /* Too small for its header's capacity: write the header by hand. */
        uint16_t v = FSHM_QUEUE_VERSION, h = FSHM_HEADER_SIZE;
        if (size >= 16) {
            memcpy(base + Q_VERSION, &v, 2);
            memcpy(base + Q_HEADER_SIZE, &h, 2);
            memcpy(base + Q_CAPACITY, &cap, 8);
        }
        put32(base, size, Q_MAGIC, FSHM_QUEUE_MAGIC);
    }

    if (size >= need && (rnd() & 1)) {
        /* Attached first, corrupted later: the cached geometry must hold. */
        CHECK(fshm_queue_attach(&q, base, size) == 0, "attach of a valid queue");
        corrupt(base, size, cap);
        ops(&q, base, size);
    } else {
        corrupt(base, size, cap);
        rc = fshm_queue_attach(&q, base, size);
        if (rc == 0) {
            st.attach_ok++;
            ops(&q, base, size);
        } else {
            CHECK(rc == FSHM_EFORMAT || rc == FSHM_EVERSION || rc == FSHM_ENOTREADY ||
                      rc == FSHM_EKIND, "attach rc %d", rc);
            st.attach_refused++;
        }
    }
    free(base);
}

/* The same over real named mappings, attached by name as a process would;
 * and each kind opened as the other. */
static void named_cases(const char *name, unsigned long count)
{
    unsigned long k;
    for (k = 0; k < count; k++, st.iterations++) {
        fshm_queue q, q2;
        fshm_seg s;
        fshm_map m, m2;
        int rc = fshm_queue_open(&q, &m, name, FSHM_CREATE, 16 + rnd() % 4096, 0, 0600);
        CHECK(rc == 0, "create %s: rc %d", name, rc);
        fill(&q);
        rc = fshm_seg_open(&s, &m2, name, FSHM_ATTACH, 0, 0);
        CHECK(rc == FSHM_EKIND, "a queue opened as a segment: rc %d", rc);
        st.ekind++;
        corrupt(m.base, m.size, q.capacity);
        rc = fshm_queue_open(&q2, &m2, name, FSHM_ATTACH, 0, 0, 0);
        if (rc == 0) {
            st.attach_ok++;
            ops(&q2, m2.base, m2.size);
            fshm_unmap(m2.base, m2.size);
        } else {
            CHECK(rc == FSHM_EFORMAT || rc == FSHM_EVERSION || rc == FSHM_ENOTREADY ||
                      rc == FSHM_EKIND, "attach by name rc %d", rc);
            st.attach_refused++;
        }
        /* The creator's own handle, geometry cached before the damage. */
        ops(&q, m.base, m.size);
        fshm_unmap(m.base, m.size);
        CHECK(fshm_unlink(name) == 0, "unlink");
    }
    {
        fshm_queue q;
        fshm_seg s;
        fshm_map m, m2;
        int rc = fshm_seg_open(&s, &m, name, FSHM_CREATE, 64, 0600);
        CHECK(rc == 0, "create segment %s: rc %d", name, rc);
        rc = fshm_queue_open(&q, &m2, name, FSHM_ATTACH, 0, 0, 0);
        CHECK(rc == FSHM_EKIND, "a segment opened as a queue: rc %d", rc);
        rc = fshm_queue_open(&q, &m2, name, FSHM_OPEN_OR_CREATE, 64, 0, 0600);
        CHECK(rc == FSHM_EKIND, "a segment open-or-created as a queue: rc %d", rc);
        st.ekind += 2;
        fshm_unmap(m.base, m.size);
        CHECK(fshm_unlink(name) == 0, "unlink");
    }
}

int main(int argc, char **argv)
{
    unsigned long iterations = argc > 1 ? strtoul(argv[1], NULL, 10) : 100000;
    unsigned long seed = argc > 2 ? strtoul(argv[2], NULL, 10) : 1;
    const char *name = argc > 3 ? argv[3] : NULL;
    pid_t pid;

    rng_state = seed * 0x9E3779B97F4A7C15ULL + 1;
    pid = fork();
    if (pid == 0)
        _exit(0);
    CHECK(pid > 0 && waitpid(pid, NULL, 0) == pid, "fork");
    dead_owner = (fshm_self_id() & ~(uint64_t)0xFFFFFFFF) | (uint32_t)pid;
    CHECK(fshm_owner_dead(dead_owner) == 1, "a reaped child must count as dead");

    {
        /* Sizes at the edges of the range: a capacity no queue can have has
         * no mapping size and takes no message; any other takes its ring
         * less one record header. */
        size_t i;
        for (i = 0; i < sizeof WORDS / sizeof WORDS[0] + 4; i++) {
            uint64_t cap = i < sizeof WORDS / 8 ? WORDS[i] : UINT64_MAX - (i - sizeof WORDS / 8);
            size_t size = fshm_queue_size_for(cap);
            uint64_t max = fshm_queue_max_message(cap);
            CHECK((size == 0) == (max == 0), "capacity %llu: size %zu but max_message %llu",
                  (unsigned long long)cap, size, (unsigned long long)max);
            if (size != 0)
                CHECK(max == ((cap + 7) & ~7ULL) - 8 && size == 128 + max + 8,
                      "capacity %llu: size %zu, max_message %llu", (unsigned long long)cap,
                      size, (unsigned long long)max);
        }
    }
    for (st.iterations = 0; st.iterations < iterations; st.iterations++) {
        if (rnd() % 4 == 0)
            model_case();
        else
            one_case();
    }
    if (name != NULL)
        named_cases(name, iterations / 100 + 1);
    printf("iterations=%lu attach_ok=%lu attach_refused=%lu puts_ok=%lu puts_refused=%lu "
           "gets_ok=%lu gets_refused=%lu takes_ok=%lu takes_refused=%lu waits=%lu "
           "model_cases=%lu model_ops=%lu model_messages=%lu model_empty=%lu ekind=%lu\n",
           st.iterations, st.attach_ok, st.attach_refused, st.puts_ok, st.puts_refused,
           st.gets_ok, st.gets_refused, st.takes_ok, st.takes_refused, st.waits,
           st.model_cases, st.model_ops, st.model_messages, st.model_empty, st.ekind);
    return 0;
}
