/*
 * Many writers and readers on one segment, as threads of one process, built
 * with -fsanitize=thread (tests/test_sanitizers.py; ThreadSanitizer sees
 * threads, not processes).  Four writers store self-checking messages (writer
 * id, per-writer counter, length, checksum, payload), two readers load and
 * verify every message, one waiter follows with fshm_wait.  The writer lock
 * and the counters are atomics ThreadSanitizer understands; the one race it
 * can see by design is a reader's payload copy overlapping a writer's, which
 * the seqlock re-check then discards (tsan.supp says so, for fshm_load only).
 *
 *   stress_threads STORES_PER_WRITER
 *
 * Prints `stores=... loads=... distinct=... torn=0` and exits 0 when every
 * loaded message was one writer's complete message and per-writer counters
 * never went backwards, 1 otherwise.
 */
#include "fastshm.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WRITERS 4
#define READERS 2
#define CAPACITY 2048
#define HDR 24 /* writer u32, length u32, counter u64, checksum u64 */

static fshm_seg seg;
static unsigned long per_writer;
static int writers_done; /* atomic */

static uint64_t checksum(const unsigned char *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    size_t i;
    for (i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

static void fail(const char *what, unsigned long a, unsigned long b)
{
    fprintf(stderr, "torn or out-of-order message: %s (%lu, %lu)\n", what, a, b);
    exit(1);
}

static void *writer(void *arg)
{
    uint32_t id = (uint32_t)(uintptr_t)arg;
    unsigned char msg[CAPACITY];
    uint64_t state = id * 0x9E3779B97F4A7C15ULL + 7, last = 0, counter;
    for (counter = 1; counter <= per_writer; counter++) {
        uint32_t len;
        uint64_t sum, seq = 0;
        size_t i;
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        len = HDR + (uint32_t)(state % (CAPACITY - HDR + 1));
        for (i = HDR; i < len; i++)
            msg[i] = (unsigned char)(state >> (i % 56)) ^ (unsigned char)i;
        sum = checksum(msg + HDR, len - HDR);
        memcpy(msg, &id, 4);
        memcpy(msg + 4, &len, 4);
        memcpy(msg + 8, &counter, 8);
        memcpy(msg + 16, &sum, 8);
        if (fshm_store(&seg, msg, len, &seq) != 0)
            fail("store failed", id, (unsigned long)counter);
        if (seq <= last)
            fail("store numbers went backwards", (unsigned long)seq, (unsigned long)last);
        last = seq;
    }
    __atomic_add_fetch(&writers_done, 1, __ATOMIC_RELEASE);
    return NULL;
}

struct reader_result {
    unsigned long loads, distinct;
};

/* A reader's copy races with a writer by design (the seqlock discards it,
 * and this harness checks every message it keeps), so the reader's accesses
 * inside fshm_load are hidden from ThreadSanitizer, which then judges what
 * it is here for: that writers exclude each other.  A suppression alone is
 * not enough: when TSan cannot restore the reader's old stack, the report
 * names only fshm_store. */
#if defined(__SANITIZE_THREAD__)
void __tsan_ignore_thread_begin(void);
void __tsan_ignore_thread_end(void);
#define TSAN_IGNORE_BEGIN() __tsan_ignore_thread_begin()
#define TSAN_IGNORE_END() __tsan_ignore_thread_end()
#else
#define TSAN_IGNORE_BEGIN() ((void)0)
#define TSAN_IGNORE_END() ((void)0)
#endif

static void *reader(void *arg)
{
    struct reader_result *res = arg;
    unsigned char buf[CAPACITY];
    uint64_t last_counter[WRITERS + 1] = {0}, prev_seq = 0;
    for (;;) {
        int done = __atomic_load_n(&writers_done, __ATOMIC_ACQUIRE) == WRITERS;
        size_t n = 0;
        uint64_t seq = 0, counter, sum;
        uint32_t id, len;
        TSAN_IGNORE_BEGIN();
        if (fshm_load(&seg, buf, sizeof buf, &n, &seq) != 0)
            fail("load failed", 0, 0);
        TSAN_IGNORE_END();
        res->loads++;
        if (seq < prev_seq)
            fail("seq went backwards", (unsigned long)seq, (unsigned long)prev_seq);
        if (seq > prev_seq) {
            res->distinct++;
            if (n < HDR)
                fail("short message", (unsigned long)n, 0);
            memcpy(&id, buf, 4);
            memcpy(&len, buf + 4, 4);
            memcpy(&counter, buf + 8, 8);
            memcpy(&sum, buf + 16, 8);
            if (id < 1 || id > WRITERS || len != n)
                fail("bad header", id, (unsigned long)n);
            if (checksum(buf + HDR, n - HDR) != sum)
                fail("checksum", id, (unsigned long)counter);
            /* A later store of the same writer carries a higher counter. */
            if (counter <= last_counter[id])
                fail("writer counter went backwards", (unsigned long)counter,
                     (unsigned long)last_counter[id]);
            last_counter[id] = counter;
            prev_seq = seq;
        }
        if (done)
            break;
    }
    return NULL;
}

static void *waiter(void *arg)
{
    unsigned long *wakes = arg;
    uint64_t after = 0, seq = 0;
    while (__atomic_load_n(&writers_done, __ATOMIC_ACQUIRE) != WRITERS) {
        int rc = fshm_wait(&seg, after, 2000000, &seq);
        if (rc == 0) {
            if (seq <= after)
                fail("wait returned an old number", (unsigned long)seq, (unsigned long)after);
            after = seq;
            (*wakes)++;
        } else if (rc != FSHM_ETIMEOUT) {
            fail("wait failed", (unsigned long)-rc, 0);
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    pthread_t w[WRITERS], r[READERS], wt;
    struct reader_result rr[READERS];
    unsigned long wakes = 0, loads = 0, distinct = 0;
    size_t size = fshm_seg_size_for(CAPACITY);
    void *base = NULL;
    int i;

    per_writer = argc > 1 ? strtoul(argv[1], NULL, 10) : 20000;
    if (posix_memalign(&base, 64, size) != 0)
        return 1;
    memset(base, 0, size);
    if (fshm_seg_init(&seg, base, size, CAPACITY) != 0)
        return 1;
    memset(rr, 0, sizeof rr);
    for (i = 0; i < READERS; i++)
        pthread_create(&r[i], NULL, reader, &rr[i]);
    pthread_create(&wt, NULL, waiter, &wakes);
    for (i = 0; i < WRITERS; i++)
        pthread_create(&w[i], NULL, writer, (void *)(uintptr_t)(i + 1));
    for (i = 0; i < WRITERS; i++)
        pthread_join(w[i], NULL);
    for (i = 0; i < READERS; i++) {
        pthread_join(r[i], NULL);
        loads += rr[i].loads;
        distinct += rr[i].distinct;
    }
    pthread_join(wt, NULL);
    if (fshm_seq(&seg) != WRITERS * per_writer)
        fail("store count", (unsigned long)fshm_seq(&seg), WRITERS * per_writer);
    if (fshm_lock_owner(&seg) != 0)
        fail("lock left held", 0, 0);
    printf("stores=%lu loads=%lu distinct=%lu wakes=%lu torn=0\n", WRITERS * per_writer, loads,
           distinct, wakes);
    free(base);
    return 0;
}
