/*
 * Hostile headers against the C core, built with
 *   -fsanitize=address,undefined -fno-sanitize-recover=all
 * (tests/test_sanitizers.py).  A fixed-seed loop lays a segment over a heap
 * block of exactly the mapping's size, so AddressSanitizer's redzones catch a
 * read or write of even one byte past it, rewrites the header and slot words
 * with adversarial values, and calls every entry point a reader or writer
 * uses.  Each call must return a defined result; a sanitizer report, a crash
 * or a hang (the driver's timeout) is a failure.  A last pass does the same
 * over a real named mapping.
 *
 *   fuzz_header ITERATIONS SEED NAME
 *
 * Prints `iterations=... attach_ok=... ...` and exits 0 when every check
 * held, 1 (with a message) when one did not.
 */
#include "fastshm.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

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
    0, 1, 2, 3, 63, 64, 65, 127, 128, 4095, 4096, 4097, 1ULL << 31, 1ULL << 32,
    (1ULL << 62) - 1, 1ULL << 62, (1ULL << 63) - 1, 1ULL << 63, UINT64_MAX - 1, UINT64_MAX,
};
static const uint64_t CAPACITIES[] = {1, 7, 64, 100, 4096};

static struct {
    unsigned long iterations, attach_ok, attach_refused, loads_ok, loads_refused,
        stores_ok, stores_refused, waits;
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

/* The lock word of a process of ours that has exited and been reaped. */
static uint64_t dead_owner;

static void corrupt(unsigned char *base, size_t size, uint64_t stride)
{
    unsigned mask = (unsigned)rnd();
    uint32_t magic = FSHM_MAGIC;
    uint16_t u16;
    int i;
    /* The four fields attach checks are hit one time in six each, so most
     * cases get past attach to the operations. */
    if (rnd() % 6 == 0) {
        magic = (rnd() & 1) ? (uint32_t)rnd() : FSHM_MAGIC + 1;
        memcpy(base, &magic, 4);
    }
    if (rnd() % 6 == 0) {
        u16 = (uint16_t)((rnd() & 1) ? rnd() : 2);
        memcpy(base + 4, &u16, 2);
    }
    if (rnd() % 6 == 0) {
        u16 = (uint16_t)((rnd() & 1) ? rnd() : 64);
        memcpy(base + 6, &u16, 2);
    }
    if (rnd() % 6 == 0)
        put64(base, size, 8, (rnd() & 1) ? rnd() : pick(WORDS, sizeof WORDS / 8));
    if (mask & 16)
        put64(base, size, 16, (rnd() & 1) ? rnd() : pick(WORDS, sizeof WORDS / 8));
    if (mask & 32)
        put64(base, size, 24, rnd()); /* notify and waiters */
    for (i = 0; i < 2; i++) {
        size_t slot = FSHM_HEADER_SIZE + (size_t)i * (size_t)stride;
        if (mask & (64u << i))
            put64(base, size, slot, (rnd() & 1) ? rnd() : pick(WORDS, sizeof WORDS / 8));
        if (mask & (256u << i))
            put64(base, size, slot + 8, (rnd() & 1) ? rnd() : pick(WORDS, sizeof WORDS / 8));
    }
    if (mask & 1024) {
        /* A burst of random bytes anywhere in the first 256. */
        size_t at = (size_t)(rnd() % 256), n = (size_t)(rnd() % 64) + 1, k;
        for (k = 0; k < n && at + k < size; k++)
            base[at + k] = (unsigned char)rnd();
    }
    /* The lock word: free or held by a dead process, both of which a store
     * must get past; a live foreign owner is tested from Python. */
    put64(base, size, 64, (mask & 2048) ? dead_owner : 0);
}

/* Sum every byte of [p, p + n): makes AddressSanitizer check the range. */
static unsigned touch(const unsigned char *p, size_t n)
{
    unsigned sum = 0;
    size_t i;
    for (i = 0; i < n; i++)
        sum += p[i];
    return sum;
}

static void ops(const fshm_seg *s, unsigned char *base, size_t size)
{
    static unsigned char dst[8192], src[8192];
    fshm_read r;
    size_t n = 0;
    uint64_t seq = 0, cap = s->capacity;
    int rc;

    CHECK(s->base == base && s->size == size, "geometry");
    CHECK(fshm_seg_size_for(cap) != 0 && fshm_seg_size_for(cap) <= size,
          "attached capacity %llu does not fit %zu bytes", (unsigned long long)cap, size);

    (void)fshm_seq(s);
    (void)fshm_lock_owner(s);
    rc = fshm_read_begin(s, &r);
    if (rc == 0) {
        CHECK(r.length <= cap, "length %zu > capacity", r.length);
        CHECK(r.offset + r.length <= size, "message [%zu, +%zu) beyond %zu", r.offset,
              r.length, size);
        (void)touch(base + r.offset, r.length);
        rc = fshm_read_end(s, &r);
        CHECK(rc == 0 || rc == FSHM_EAGAIN, "read_end rc %d", rc);
    } else {
        CHECK(rc == FSHM_EFORMAT, "read_begin rc %d", rc);
    }

    {
        /* Exactly `cap` bytes of heap, so a copy past it is caught. */
        unsigned char *exact = malloc(cap ? (size_t)cap : 1);
        CHECK(exact != NULL, "malloc");
        rc = fshm_load(s, exact, (size_t)cap, &n, &seq);
        CHECK(rc == 0 || rc == FSHM_EFORMAT, "load rc %d", rc);
        if (rc == 0) {
            CHECK(n <= cap, "loaded %zu > capacity", n);
            st.loads_ok++;
        } else {
            st.loads_refused++;
        }
        free(exact);
    }
    rc = fshm_load(s, dst, 1, &n, &seq);
    CHECK(rc == 0 || rc == FSHM_ESMALL || rc == FSHM_EFORMAT, "small load rc %d", rc);

    rc = fshm_wait(s, 0, 0, &seq);
    CHECK(rc == 0 || rc == FSHM_ETIMEOUT, "wait rc %d", rc);
    rc = fshm_wait(s, UINT64_MAX, 0, &seq);
    CHECK(rc == FSHM_ETIMEOUT, "wait past the end rc %d", rc);
    st.waits += 2;

    n = cap < sizeof src ? (size_t)(rnd() % (cap + 1)) : (size_t)(rnd() % sizeof src);
    memset(src, 0x5a, n);
    rc = fshm_store(s, src, n, &seq);
    CHECK(rc == 0 || rc == FSHM_EFORMAT, "store rc %d", rc);
    if (rc == 0) {
        size_t got = 0;
        uint64_t seq2 = 0;
        st.stores_ok++;
        CHECK(fshm_lock_owner(s) == 0, "lock still held after a store");
        rc = fshm_load(s, dst, sizeof dst, &got, &seq2);
        /* Another slot word may still be hostile, but ours is now current. */
        CHECK(rc == 0 && got == n && seq2 == seq && touch(dst, n) == 0x5au * n,
              "stored message not loaded back: rc %d", rc);
    } else {
        st.stores_refused++;
    }
    rc = fshm_store(s, src, (size_t)cap + 1, &seq);
    CHECK(rc == FSHM_ETOOBIG, "over-capacity store rc %d", rc);
}

static void one_case(void)
{
    uint64_t cap = pick(CAPACITIES, sizeof CAPACITIES / 8);
    size_t need = fshm_seg_size_for(cap);
    static const long DELTA[] = {0, 0, 0, 1, 63, -1, -63, -129, -(long)FSHM_HEADER_SIZE};
    long delta = DELTA[rnd() % (sizeof DELTA / sizeof DELTA[0])];
    size_t size = (long)need + delta > 0 ? (size_t)((long)need + delta) : 1;
    unsigned char *base = NULL;
    uint64_t stride = FSHM_SLOT_HEADER_SIZE + ((cap + 63) & ~(uint64_t)63);
    fshm_seg s;
    int rc, stores = (int)(rnd() % 4), i;

    /* Exactly `size` bytes: one byte past the end is a redzone. */
    CHECK(posix_memalign((void **)&base, 64, size) == 0, "posix_memalign");
    memset(base, 0, size);
    if (size >= need) {
        CHECK(fshm_seg_init(&s, base, size, cap) == 0, "init");
        for (i = 0; i < stores; i++)
            CHECK(fshm_store(&s, "abc", cap < 3 ? (size_t)cap : 3, NULL) == 0, "store");
    } else {
        /* Too small for its header's capacity: write the header by hand. */
        uint32_t magic = FSHM_MAGIC;
        uint16_t v = FSHM_VERSION, h = FSHM_HEADER_SIZE;
        if (size >= 16) {
            memcpy(base + 4, &v, 2);
            memcpy(base + 6, &h, 2);
            memcpy(base + 8, &cap, 8);
        }
        if (size >= 4)
            memcpy(base, &magic, 4);
    }

    if (size >= need && (rnd() & 1)) {
        /* Attached first, corrupted later: the cached geometry must hold. */
        CHECK(fshm_seg_attach(&s, base, size) == 0, "attach of a valid segment");
        corrupt(base, size, stride);
        ops(&s, base, size);
    } else {
        corrupt(base, size, stride);
        rc = fshm_seg_attach(&s, base, size);
        if (rc == 0) {
            st.attach_ok++;
            ops(&s, base, size);
        } else {
            CHECK(rc == FSHM_EFORMAT || rc == FSHM_EVERSION || rc == FSHM_ENOTREADY ||
                      rc == FSHM_EKIND, /* a magic corrupted into a queue's */
                  "attach rc %d", rc);
            st.attach_refused++;
        }
    }
    free(base);
}

/* The same over a real named mapping, attached by name as a process would. */
static void named_cases(const char *name, unsigned long count)
{
    unsigned long k;
    for (k = 0; k < count; k++, st.iterations++) {
        fshm_seg s, s2;
        fshm_map m, m2;
        int rc = fshm_seg_open(&s, &m, name, FSHM_CREATE, 64 + rnd() % 4096, 0600);
        CHECK(rc == 0, "create %s: rc %d", name, rc);
        CHECK(fshm_store(&s, "hello", 5, NULL) == 0, "store");
        corrupt(m.base, m.size, s.stride);
        rc = fshm_seg_open(&s2, &m2, name, FSHM_ATTACH, 0, 0);
        if (rc == 0) {
            st.attach_ok++;
            ops(&s2, m2.base, m2.size);
            fshm_unmap(m2.base, m2.size);
        } else {
            CHECK(rc == FSHM_EFORMAT || rc == FSHM_EVERSION || rc == FSHM_ENOTREADY ||
                      rc == FSHM_EKIND, /* a magic corrupted into a queue's */
                  "attach by name rc %d", rc);
            st.attach_refused++;
        }
        /* The creator's own handle, geometry cached before the damage. */
        ops(&s, m.base, m.size);
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

    for (st.iterations = 0; st.iterations < iterations; st.iterations++)
        one_case();
    if (name != NULL)
        named_cases(name, iterations / 100 + 1);
    printf("iterations=%lu attach_ok=%lu attach_refused=%lu loads_ok=%lu loads_refused=%lu "
           "stores_ok=%lu stores_refused=%lu waits=%lu\n",
           st.iterations, st.attach_ok, st.attach_refused, st.loads_ok, st.loads_refused,
           st.stores_ok, st.stores_refused, st.waits);
    return 0;
}
