/*
 * Producers and consumers on one queue (csrc/queue.c), built with the
 * compiler's sanitizers by tests/test_sanitizers.py.  The ring is small, so
 * records wrap around its end all the time and both sides keep blocking on a
 * full or an empty queue.
 *
 *   queue_stress threads P C PER_PRODUCER CAPACITY
 *       P producer and C consumer threads of this process (ThreadSanitizer
 *       sees threads only) over a queue laid on heap memory.
 *   queue_stress procs P C PER_PRODUCER CAPACITY NAME
 *       the same with forked processes, each opening the named queue.
 *   queue_stress crash ROUNDS SEED CAPACITY NAME
 *       forked producers and consumers SIGKILLed at random instants while
 *       they put and take in a loop; after every round the queue must be
 *       consistent, and at the end every message accounted for exactly once.
 *   queue_stress wake ROUNDS
 *       sleepers on the notify word with no timeout of their own are woken
 *       by a put on an empty queue and by a get on a full one; a signal
 *       ends a blocked get and a blocked put with EINTR.
 *   queue_stress steps ROUNDS CAPACITY
 *       a traced child single-stepped through puts and takes: the queue as
 *       a kill after any one instruction would leave it must recover to the
 *       messages before the operation or those after it (Linux ptrace;
 *       prints ptrace=unavailable where a child cannot be traced).
 *
 * A message is [producer u32][length u32][sequence u64][checksum u64] and a
 * payload that is a function of the three, so a torn or mixed message fails
 * its checksum.  Every message taken is checked, and each producer's
 * messages must reach any one consumer in the order they were put.  Prints
 * `key=value` counts and exits 0 when every check held, 1 (with a message
 * on stderr) when one did not.
 */
#include "fastshm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define HDR 24
#define MAX_MSG 200     /* longest message a producer makes */
#define BATCH 3         /* most messages in one put_many or take */
#define WAIT_NS 100000000LL  /* one blocking call's bound: 100 ms */
#define STALL_NS 30000000000LL /* no progress for this long is a hang: 30 s */

/* Header offsets of docs/FORMAT.md ("Queues"), for the checks that look at
 * the raw header. */
#define Q_HEAD 16
#define Q_TAIL 32
#define Q_COUNT 40
#define Q_LOCK 64
#define Q_DIRTY 88

#define U64(base, off) (*(volatile uint64_t *)((unsigned char *)(base) + (off)))
#define U32(base, off) (*(volatile uint32_t *)((unsigned char *)(base) + (off)))

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#include <stdarg.h>
/* Set in a traced child: LeakSanitizer cannot run under ptrace, so it
 * leaves with _exit. */
static int traced;

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "queue_stress [%d]: ", (int)getpid());
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

static uint64_t checksum(uint32_t producer, uint64_t seq, const unsigned char *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL ^ mix(((uint64_t)producer << 40) ^ seq);
    size_t i;
    for (i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

/* Lay message (producer, seq) into buf; its length depends on both, from
 * HDR to max_len. */
static size_t make_msg(unsigned char *buf, uint32_t producer, uint64_t seq, size_t max_len)
{
    uint64_t r = mix(((uint64_t)producer << 32) ^ seq ^ 0x5151);
    uint32_t len = HDR + (uint32_t)(r % (max_len - HDR + 1));
    uint64_t sum;
    size_t i;
    for (i = HDR; i < len; i++)
        buf[i] = (unsigned char)(r >> (i % 57)) ^ (unsigned char)(i * 7);
    sum = checksum(producer, seq, buf + HDR, len - HDR);
    memcpy(buf, &producer, 4);
    memcpy(buf + 4, &len, 4);
    memcpy(buf + 8, &seq, 8);
    memcpy(buf + 16, &sum, 8);
    return len;
}

/* 0 when buf[0..n) is a whole message; its producer and number out. */
static int check_msg(const unsigned char *buf, size_t n, uint32_t *producer, uint64_t *seq)
{
    uint32_t len;
    uint64_t sum;
    if (n < HDR)
        return 1;
    memcpy(producer, buf, 4);
    memcpy(&len, buf + 4, 4);
    memcpy(seq, buf + 8, 8);
    memcpy(&sum, buf + 16, 8);
    if (len != n || *seq == 0)
        return 1;
    return checksum(*producer, *seq, buf + HDR, n - HDR) != sum;
}

/* ---- threads and procs: every message taken exactly once ---- */

static fshm_queue q;
static unsigned producers, consumers;
static uint64_t per_producer;
static size_t max_len;
/* Shared by every thread or process (a MAP_SHARED mapping for procs):
 * seen[(p - 1) * (per_producer + 1) + seq] counts the takes of a message,
 * and the totals. */
static uint32_t *seen;
static struct totals {
    uint64_t taken, puts, put_manys, try_puts, gets, packed, takes, full_waits,
        empty_waits;
} *totals;

static void add(uint64_t *counter, uint64_t n) { __atomic_add_fetch(counter, n, __ATOMIC_RELAXED); }

static void producer_loop(uint32_t id)
{
    static __thread unsigned char bufs[BATCH][MAX_MSG];
    uint64_t state = id * 7919u, seq = 1;
    int64_t last = fshm_monotonic_ns();
    while (seq <= per_producer) {
        fshm_msg msgs[BATCH];
        size_t k = 1 + (size_t)(rnd(&state) % BATCH), i;
        unsigned how = (unsigned)(rnd(&state) % 4);
        int rc;
        if (k > per_producer - seq + 1)
            k = (size_t)(per_producer - seq + 1);
        for (i = 0; i < k; i++) {
            msgs[i].data = bufs[i];
            msgs[i].len = make_msg(bufs[i], id, seq + i, max_len);
        }
        if (how == 0) {
            /* One at a time, waiting as long as it takes (bounded here). */
            for (i = 0; i < k; i++) {
                /* EBUSY: another thread held the lock through the wait (a
                 * sanitizer's slowdown); nothing was put, as with EFULL. */
                while ((rc = fshm_queue_put(&q, msgs[i].data, msgs[i].len, WAIT_NS)) ==
                           FSHM_EFULL ||
                       rc == FSHM_EBUSY) {
                    add(&totals->full_waits, 1);
                    if (fshm_monotonic_ns() - last > STALL_NS)
                        die("producer %u: no room for 30 s", id);
                }
                if (rc != 0)
                    die("producer %u: put rc %d", id, rc);
                add(&totals->puts, 1);
                last = fshm_monotonic_ns();
            }
        } else if (how == 1) {
            rc = fshm_queue_try_put_many(&q, msgs, k);
            if (rc == FSHM_EFULL || rc == FSHM_EBUSY) {
                add(&totals->full_waits, 1);
                if (fshm_monotonic_ns() - last > STALL_NS)
                    die("producer %u: no room for 30 s", id);
                continue; /* nothing put: the same batch again */
            }
            if (rc != 0)
                die("producer %u: try_put_many rc %d", id, rc);
            add(&totals->try_puts, 1);
            last = fshm_monotonic_ns();
        } else {
            rc = fshm_queue_put_many(&q, msgs, k, how == 2 ? 0 : WAIT_NS);
            if (rc == FSHM_EFULL || rc == FSHM_EBUSY) {
                add(&totals->full_waits, 1);
                if (fshm_monotonic_ns() - last > STALL_NS)
                    die("producer %u: no room for 30 s", id);
                if (how == 2)
                    sched_yield();
                continue;
            }
            if (rc != 0)
                die("producer %u: put_many rc %d", id, rc);
            add(&totals->put_manys, 1);
            last = fshm_monotonic_ns();
        }
        seq += k;
    }
}

typedef struct take_ctx {
    unsigned char (*bufs)[MAX_MSG];
    size_t lens[BATCH];
    size_t n;
} take_ctx;

static void *take_cb(void *ctx, size_t len)
{
    take_ctx *c = (take_ctx *)ctx;
    if (len > MAX_MSG || c->n == BATCH)
        return NULL;
    c->lens[c->n] = len;
    return c->bufs[c->n++];
}

/* Check one message a consumer took, in the order it took them. */
static void took(const unsigned char *buf, size_t n, uint64_t *last_seq)
{
    uint32_t p;
    uint64_t seq, total = producers * per_producer;
    if (check_msg(buf, n, &p, &seq) != 0)
        die("torn message of %zu bytes", n);
    if (p < 1 || p > producers || seq > per_producer)
        die("message from nowhere: producer %u seq %llu", p, (unsigned long long)seq);
    if (seq <= last_seq[p])
        die("producer %u's message %llu came after %llu", p, (unsigned long long)seq,
            (unsigned long long)last_seq[p]);
    last_seq[p] = seq;
    if (__atomic_add_fetch(&seen[(p - 1) * (per_producer + 1) + seq], 1, __ATOMIC_RELAXED) != 1)
        die("producer %u's message %llu taken twice", p, (unsigned long long)seq);
    if (__atomic_add_fetch(&totals->taken, 1, __ATOMIC_RELAXED) > total)
        die("more messages taken than put");
}

static void consumer_loop(unsigned id)
{
    static __thread unsigned char bufs[BATCH][MAX_MSG];
    static __thread unsigned char packed[BATCH * MAX_MSG];
    uint64_t *last_seq = calloc(producers + 1, sizeof *last_seq);
    uint64_t state = id * 104729u + 3, total = producers * per_producer;
    int64_t last = fshm_monotonic_ns();
    if (last_seq == NULL)
        die("calloc");
    while (__atomic_load_n(&totals->taken, __ATOMIC_RELAXED) < total) {
        unsigned how = (unsigned)(rnd(&state) % 4);
        size_t n = 0, taken = 0, i, lens[BATCH];
        int rc;
        if (how == 0) {
            rc = fshm_queue_get(&q, bufs[0], MAX_MSG, &n, WAIT_NS);
            if (rc == 0) {
                add(&totals->gets, 1);
                took(bufs[0], n, last_seq);
            }
        } else if (how == 1) {
            size_t at = 0;
            rc = fshm_queue_get_packed(&q, packed, sizeof packed, lens, BATCH, &taken,
                                       WAIT_NS);
            if (rc == 0) {
                add(&totals->packed, 1);
                for (i = 0; i < taken; i++) {
                    took(packed + at, lens[i], last_seq);
                    at += lens[i];
                }
            }
        } else {
            take_ctx c;
            c.bufs = bufs;
            c.n = 0;
            rc = how == 2 ? fshm_queue_take(&q, take_cb, &c, BATCH, &taken, WAIT_NS)
                          : fshm_queue_try_take(&q, take_cb, &c, 1 + rnd(&state) % BATCH,
                                                &taken);
            if (rc == 0) {
                if (taken != c.n)
                    die("take said %zu, copied %zu", taken, c.n);
                add(&totals->takes, 1);
                for (i = 0; i < taken; i++)
                    took(bufs[i], c.lens[i], last_seq);
            } else if (rc == FSHM_EBUSY || (how == 3 && rc == FSHM_ENOMSG)) {
                sched_yield();
                rc = FSHM_ENOMSG;
            }
        }
        if (rc == 0) {
            last = fshm_monotonic_ns();
        } else if (rc == FSHM_ENOMSG) {
            add(&totals->empty_waits, 1);
            if (fshm_monotonic_ns() - last > STALL_NS)
                die("consumer %u: nothing for 30 s", id);
        } else {
            die("consumer %u: rc %d", id, rc);
        }
    }
    free(last_seq);
}

static void *producer_thread(void *arg)
{
    producer_loop((uint32_t)(uintptr_t)arg);
    return NULL;
}

static void *consumer_thread(void *arg)
{
    consumer_loop((unsigned)(uintptr_t)arg);
    return NULL;
}

static void *shared_zeroed(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die("mmap of %zu bytes failed", size);
    return p;
}

/* After the run: every message taken once, nothing queued, header clean. */
static void final_checks(void)
{
    uint64_t p, s;
    for (p = 1; p <= producers; p++)
        for (s = 1; s <= per_producer; s++)
            if (seen[(p - 1) * (per_producer + 1) + s] != 1)
                die("producer %llu's message %llu taken %u times", (unsigned long long)p,
                    (unsigned long long)s, seen[(p - 1) * (per_producer + 1) + s]);
    if (fshm_queue_count(&q) != 0 || fshm_queue_used(&q) != 0)
        die("queue not empty at the end: count %llu used %llu",
            (unsigned long long)fshm_queue_count(&q), (unsigned long long)fshm_queue_used(&q));
    if (fshm_queue_lock_owner(&q) != 0 || U32(q.base, Q_DIRTY) != 0)
        die("lock or dirty mark left set");
    if (U64(q.base, Q_HEAD) != U64(q.base, Q_TAIL))
        die("head != tail at the end");
    printf("messages=%llu taken=%llu puts=%llu put_manys=%llu try_puts=%llu gets=%llu "
           "packed=%llu takes=%llu full_waits=%llu empty_waits=%llu wraps=%llu\n",
           (unsigned long long)(producers * per_producer), (unsigned long long)totals->taken,
           (unsigned long long)totals->puts, (unsigned long long)totals->put_manys,
           (unsigned long long)totals->try_puts, (unsigned long long)totals->gets,
           (unsigned long long)totals->packed, (unsigned long long)totals->takes,
           (unsigned long long)totals->full_waits, (unsigned long long)totals->empty_waits,
           (unsigned long long)(U64(q.base, Q_TAIL) / q.capacity));
}

/* The longest message a producer makes: a full batch of the longest always
 * fits the ring. */
static size_t longest(uint64_t capacity)
{
    uint64_t per_record = (capacity / BATCH) & ~7ULL;
    if (capacity < BATCH * (8 + HDR) || per_record < 8 + HDR)
        die("capacity %llu is too small for batches of %d", (unsigned long long)capacity, BATCH);
    return per_record - 8 < MAX_MSG ? (size_t)(per_record - 8) : MAX_MSG;
}

static void setup_shared(const char *p, const char *c, const char *per, const char *cap,
                         uint64_t *capacity)
{
    producers = (unsigned)strtoul(p, NULL, 10);
    consumers = (unsigned)strtoul(c, NULL, 10);
    per_producer = strtoull(per, NULL, 10);
    *capacity = strtoull(cap, NULL, 10);
    if (producers < 1 || consumers < 1 || per_producer < 1)
        die("bad arguments");
    max_len = longest(*capacity);
    seen = shared_zeroed(producers * (per_producer + 1) * sizeof *seen);
    totals = shared_zeroed(sizeof *totals);
}

static int run_threads(uint64_t capacity)
{
    pthread_t *t = calloc(producers + consumers, sizeof *t);
    size_t size = fshm_queue_size_for(capacity);
    void *base = NULL;
    unsigned i;
    if (t == NULL || size == 0 || posix_memalign(&base, 4096, size) != 0)
        die("allocation");
    memset(base, 0, size);
    if (fshm_queue_init(&q, base, size, capacity, 0) != 0)
        die("init");
    for (i = 0; i < consumers; i++)
        pthread_create(&t[producers + i], NULL, consumer_thread, (void *)(uintptr_t)(i + 1));
    for (i = 0; i < producers; i++)
        pthread_create(&t[i], NULL, producer_thread, (void *)(uintptr_t)(i + 1));
    for (i = 0; i < producers + consumers; i++)
        pthread_join(t[i], NULL);
    final_checks();
    free(base);
    free(t);
    return 0;
}

static void attach_by_name(const char *name, fshm_map *m)
{
    int rc = fshm_queue_open(&q, m, name, FSHM_ATTACH, 0, 0, 0);
    if (rc != 0)
        die("attach %s: rc %d", name, rc);
}

static int run_procs(uint64_t capacity, const char *name)
{
    fshm_map m;
    pid_t *pids = calloc(producers + consumers, sizeof *pids);
    unsigned i, failed = 0;
    int rc = fshm_queue_open(&q, &m, name, FSHM_CREATE, capacity, 0, 0600);
    if (rc != 0 || pids == NULL)
        die("create %s: rc %d", name, rc);
    fflush(NULL);
    for (i = 0; i < producers + consumers; i++) {
        pids[i] = fork();
        if (pids[i] < 0)
            die("fork");
        if (pids[i] == 0) {
            fshm_map mine;
            fshm_unmap(m.base, m.size);
            attach_by_name(name, &mine);
            if (i < producers)
                producer_loop(i + 1);
            else
                consumer_loop(i - producers + 1);
            fshm_unmap(mine.base, mine.size);
            _exit(0);
        }
    }
    for (i = 0; i < producers + consumers; i++) {
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

/* ---- crash: children killed at random instants ---- */

/* What a child tells the parent, one write(2) each (atomic on a pipe). */
enum { ACKED = 1, TAKING = 2, TAKEN = 3 };
typedef struct note {
    uint32_t kind;
    uint32_t producer;
    uint64_t seq;
} note;

static int note_fd = -1;

static void tell(uint32_t kind, uint32_t producer, uint64_t seq)
{
    note n;
    n.kind = kind;
    n.producer = producer;
    n.seq = seq;
    while (write(note_fd, &n, sizeof n) != (ssize_t)sizeof n)
        if (errno != EINTR)
            _exit(3);
}

static void crash_producer(uint32_t id, uint64_t state)
{
    unsigned char bufs[BATCH][MAX_MSG];
    uint64_t seq = 1;
    for (;;) {
        fshm_msg msgs[BATCH];
        size_t k = 1 + (size_t)(rnd(&state) % BATCH), i;
        int rc;
        for (i = 0; i < k; i++) {
            msgs[i].data = bufs[i];
            msgs[i].len = make_msg(bufs[i], id, seq + i, max_len);
        }
        rc = k == 1 ? fshm_queue_put(&q, msgs[0].data, msgs[0].len, WAIT_NS)
                    : fshm_queue_put_many(&q, msgs, k, WAIT_NS);
        if (rc == FSHM_EFULL || rc == FSHM_EBUSY)
            continue;
        if (rc != 0)
            die("crash producer %u: rc %d", id, rc);
        /* Acknowledged only once the put has returned. */
        for (i = 0; i < k; i++)
            tell(ACKED, id, seq + i);
        seq += k;
    }
}

/* A consumer says which message it is about to take (inside the take, under
 * the lock) and, once the take has returned, that it took it.  One killed
 * between the two may or may not have taken it; the parent finds out by
 * looking for the message everywhere else.  Under the lock the records from
 * head on are fixed, so the callback reads the message's producer and
 * number from the ring itself before take copies it. */
typedef struct crash_ctx {
    take_ctx t;
    uint64_t pos;
} crash_ctx;

static void ring_read(uint64_t pos, void *dst, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        ((unsigned char *)dst)[i] = q.base[FSHM_HEADER_SIZE + (pos + i) % q.capacity];
}

static void *crash_take_cb(void *ctx, size_t len)
{
    crash_ctx *c = (crash_ctx *)ctx;
    uint64_t rec_len, seq;
    uint32_t producer;
    if (len > MAX_MSG || c->t.n == BATCH)
        return NULL;
    if (c->t.n == 0)
        c->pos = U64(q.base, Q_HEAD);
    ring_read(c->pos, &rec_len, 8);
    if (rec_len != len || len < HDR)
        die("crash consumer: the record at %llu is not the one taken",
            (unsigned long long)c->pos);
    ring_read(c->pos + 8, &producer, 4);
    ring_read(c->pos + 16, &seq, 8);
    tell(TAKING, producer, seq);
    c->pos += 8 + ((len + 7) & ~7ULL);
    c->t.lens[c->t.n] = len;
    return c->t.bufs[c->t.n++];
}

static void crash_consumer(uint64_t state)
{
    unsigned char bufs[BATCH][MAX_MSG];
    for (;;) {
        crash_ctx c;
        size_t taken = 0, i;
        int rc;
        c.t.bufs = bufs;
        c.t.n = 0;
        rc = fshm_queue_take(&q, crash_take_cb, &c, 1 + rnd(&state) % BATCH, &taken, WAIT_NS);
        if (rc == FSHM_ENOMSG || rc == FSHM_EBUSY)
            continue;
        if (rc != 0 || taken != c.t.n)
            die("crash consumer: rc %d taken %zu", rc, taken);
        for (i = 0; i < taken; i++) {
            uint32_t p;
            uint64_t seq;
            if (check_msg(bufs[i], c.t.lens[i], &p, &seq) != 0)
                die("crash consumer: torn message");
            tell(TAKEN, p, seq);
        }
    }
}

/* The parent's ledger: per producer, per message, what was heard of it. */
typedef struct fate {
    uint16_t acked, taking, taken;
} fate;
static fate **ledger;
static uint64_t *ledger_len;
static uint32_t ledger_producers;

static fate *fate_of(uint32_t p, uint64_t seq)
{
    if (p < 1 || p > ledger_producers || seq < 1 || seq > (1u << 24))
        die("note about an impossible message: producer %u seq %llu", p,
            (unsigned long long)seq);
    if (seq >= ledger_len[p]) {
        uint64_t n = ledger_len[p] ? ledger_len[p] : 64;
        while (n <= seq)
            n *= 2;
        ledger[p] = realloc(ledger[p], n * sizeof(fate));
        if (ledger[p] == NULL)
            die("realloc");
        memset(ledger[p] + ledger_len[p], 0, (n - ledger_len[p]) * sizeof(fate));
        ledger_len[p] = n;
    }
    return &ledger[p][seq];
}

static void heard(const note *n)
{
    fate *f = fate_of(n->producer, n->seq);
    if (n->kind == ACKED)
        f->acked++;
    else if (n->kind == TAKING)
        f->taking++;
    else if (n->kind == TAKEN)
        f->taken++;
    else
        die("bad note kind %u", n->kind);
}

/* Read whatever a child has written; 1 at its end of file. */
static int drain(int fd, unsigned char *buf, size_t *have)
{
    for (;;) {
        ssize_t got = read(fd, buf + *have, 4096 - *have);
        size_t i;
        if (got < 0) {
            if (errno != EINTR && errno != EAGAIN)
                die("read: errno %d", errno);
            return 0;
        }
        if (got == 0)
            return 1;
        *have += (size_t)got;
        for (i = 0; i + sizeof(note) <= *have; i += sizeof(note)) {
            note n;
            memcpy(&n, buf + i, sizeof n);
            heard(&n);
        }
        memmove(buf, buf + i, *have - i);
        *have -= i;
    }
}

static void *refuse_cb(void *ctx, size_t len)
{
    (void)ctx;
    (void)len;
    return NULL;
}

static struct {
    unsigned long rounds, killed_producers, killed_consumers, dead_locks, dirty_found,
        records_checked, in_flight_lost, acked, taken, drained;
} cs;

/* The messages queued from head to tail, read from the raw ring and
 * checked record by record (ids: producer << 32 | number); dies on a record
 * that is not a whole message.  Returns how many. */
static size_t walk(const fshm_queue *qq, uint64_t *ids, size_t max)
{
    unsigned char buf[MAX_MSG];
    uint64_t head = U64(qq->base, Q_HEAD), tail = U64(qq->base, Q_TAIL), pos;
    size_t walked = 0;
    if ((head | tail) & 7 || tail - head > qq->capacity)
        die("bad positions head %llu tail %llu", (unsigned long long)head,
            (unsigned long long)tail);
    for (pos = head; pos != tail; walked++) {
        uint64_t len, off = pos % qq->capacity, first;
        uint32_t p;
        uint64_t seq;
        memcpy(&len, qq->base + FSHM_HEADER_SIZE + off, 8);
        if (len > MAX_MSG || 8 + ((len + 7) & ~7ULL) > tail - pos)
            die("record at %llu: length %llu does not fit", (unsigned long long)pos,
                (unsigned long long)len);
        off = (pos + 8) % qq->capacity;
        first = qq->capacity - off < len ? qq->capacity - off : len;
        memcpy(buf, qq->base + FSHM_HEADER_SIZE + off, first);
        memcpy(buf + first, qq->base + FSHM_HEADER_SIZE, len - first);
        if (check_msg(buf, len, &p, &seq) != 0)
            die("record at %llu: a partial or torn message", (unsigned long long)pos);
        if (ids != NULL && walked < max)
            ids[walked] = (uint64_t)p << 32 | seq;
        pos += 8 + ((len + 7) & ~7ULL);
    }
    if (walked != U64(qq->base, Q_COUNT))
        die("count %llu but %llu records", (unsigned long long)U64(qq->base, Q_COUNT),
            (unsigned long long)walked);
    return walked;
}

/* Take the lock as the next user would (a dead holder's lock is taken over,
 * a dirty mark recounted) with a take that refuses the first message: a
 * lock round that changes nothing else. */
static void lock_round(const fshm_queue *qq)
{
    size_t taken = 0;
    int rc = fshm_queue_take(qq, refuse_cb, NULL, 1, &taken, 0);
    if ((rc != 0 && rc != FSHM_ENOMSG) || taken != 0)
        die("checking take: rc %d taken %zu", rc, taken);
    if (U64(qq->base, Q_LOCK) != 0 || U32(qq->base, Q_DIRTY) != 0)
        die("lock %llu or dirty mark %u left after a take",
            (unsigned long long)U64(qq->base, Q_LOCK), U32(qq->base, Q_DIRTY));
}

/* After a round: the queue as the next user finds it. */
static void check_queue(void)
{
    if (U64(q.base, Q_LOCK) != 0)
        cs.dead_locks++;
    if (U32(q.base, Q_DIRTY) != 0)
        cs.dirty_found++;
    lock_round(&q);
    cs.records_checked += walk(&q, NULL, 0);
}

static int run_crash(unsigned long rounds, uint64_t seed, uint64_t capacity, const char *name)
{
    fshm_map m;
    uint64_t state = seed;
    uint32_t next_producer = 1;
    unsigned long r;
    uint32_t p;
    int rc = fshm_queue_open(&q, &m, name, FSHM_CREATE, capacity, 0, 0600);
    if (rc != 0)
        die("create %s: rc %d", name, rc);
    max_len = longest(capacity);
    ledger_producers = (uint32_t)(rounds * 3 + 1);
    ledger = calloc(ledger_producers + 1, sizeof *ledger);
    ledger_len = calloc(ledger_producers + 1, sizeof *ledger_len);
    if (ledger == NULL || ledger_len == NULL)
        die("calloc");

    for (r = 0; r < rounds; r++) {
        enum { MAXKIDS = 5 };
        pid_t pid[MAXKIDS];
        int fd[MAXKIDS], is_consumer[MAXKIDS], done[MAXKIDS];
        unsigned char bufs[MAXKIDS][4096];
        size_t have[MAXKIDS];
        int64_t kill_at[MAXKIDS], start;
        unsigned kids = 2 + (unsigned)(rnd(&state) % (MAXKIDS - 1)), i, alive;
        for (i = 0; i < kids; i++) {
            int pipefd[2];
            /* At least one of each most rounds; all of one kind sometimes. */
            is_consumer[i] = i == 0 ? 0 : i == 1 ? (rnd(&state) % 8 != 0) : (int)(rnd(&state) & 1);
            if (pipe(pipefd) != 0)
                die("pipe");
            fflush(NULL);
            pid[i] = fork();
            if (pid[i] < 0)
                die("fork");
            if (pid[i] == 0) {
                fshm_map mine;
                uint64_t child_state = seed ^ mix(r * 16 + i);
                close(pipefd[0]);
                note_fd = pipefd[1];
                fshm_unmap(m.base, m.size);
                attach_by_name(name, &mine);
                if (is_consumer[i])
                    crash_consumer(child_state);
                else
                    crash_producer(next_producer, child_state);
                _exit(0);
            }
            if (!is_consumer[i])
                next_producer++;
            close(pipefd[1]);
            fd[i] = pipefd[0];
            fcntl(fd[i], F_SETFL, O_NONBLOCK);
            have[i] = 0;
            done[i] = 0;
        }
        /* Kill each at its own instant within 25 ms, reading notes meanwhile. */
        start = fshm_monotonic_ns();
        for (i = 0; i < kids; i++)
            kill_at[i] = start + (int64_t)(rnd(&state) % 25000000);
        for (alive = kids; alive > 0;) {
            struct pollfd pf[MAXKIDS];
            int64_t now = fshm_monotonic_ns(), next = INT64_MAX;
            for (i = 0; i < kids; i++) {
                if (pid[i] > 0 && now >= kill_at[i]) {
                    kill(pid[i], SIGKILL);
                    pid[i] = -pid[i];
                    alive--;
                }
                if (pid[i] > 0 && kill_at[i] < next)
                    next = kill_at[i];
                pf[i].fd = fd[i];
                pf[i].events = POLLIN;
            }
            if (alive > 0)
                poll(pf, kids, (int)((next - now) / 1000000) + 1);
            for (i = 0; i < kids; i++)
                if (!done[i])
                    done[i] = drain(fd[i], bufs[i], &have[i]);
        }
        for (i = 0; i < kids; i++) {
            int status;
            pid_t who = -pid[i];
            if (waitpid(who, &status, 0) != who)
                die("waitpid");
            if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL))
                die("child %d ended other than by SIGKILL (status %#x)", (int)who, status);
            while (!done[i]) {
                done[i] = drain(fd[i], bufs[i], &have[i]);
                if (!done[i])
                    usleep(1000);
            }
            close(fd[i]);
            if (have[i] != 0)
                die("a partial note");
            if (is_consumer[i])
                cs.killed_consumers++;
            else
                cs.killed_producers++;
        }
        check_queue();
        cs.rounds++;
    }
    /* The end: the parent takes what is left, and every message is found
     * exactly once. */
    check_queue();
    for (;;) {
        unsigned char buf[MAX_MSG];
        size_t n = 0;
        uint32_t pr;
        uint64_t seq;
        rc = fshm_queue_get(&q, buf, sizeof buf, &n, 0);
        if (rc == FSHM_ENOMSG)
            break;
        if (rc == FSHM_EBUSY)
            continue; /* a holder slowed down, not gone: again */
        if (rc != 0 || check_msg(buf, n, &pr, &seq) != 0)
            die("final drain: rc %d", rc);
        fate_of(pr, seq)->taken++;
        cs.drained++;
    }
    for (p = 1; p < next_producer; p++) {
        uint64_t s, last = 0;
        for (s = 1; s < ledger_len[p]; s++) {
            fate *f = &ledger[p][s];
            if (f->acked || f->taken || f->taking)
                last = s;
        }
        /* Every message up to the last one heard of was put: a producer's
         * batches commit in order. */
        for (s = 1; s <= last; s++) {
            fate *f = &ledger[p][s];
            cs.acked += f->acked;
            if (f->acked > 1)
                die("producer %u's message %llu acknowledged twice", p, (unsigned long long)s);
            if (f->taken > 1)
                die("producer %u's message %llu taken %u times", p, (unsigned long long)s,
                    f->taken);
            if (f->taken == 1) {
                cs.taken++;
                continue;
            }
            /* Never taken by anyone who lived to say so: only a consumer
             * killed inside its take can have it. */
            if (f->taking == 0)
                die("producer %u's message %llu (%s) lost", p, (unsigned long long)s,
                    f->acked ? "acknowledged" : "put, not acknowledged");
            cs.in_flight_lost++;
        }
    }
    if (cs.in_flight_lost > cs.killed_consumers * BATCH)
        die("%lu messages lost in flight by %lu killed consumers", cs.in_flight_lost,
            cs.killed_consumers);
    printf("rounds=%lu killed_producers=%lu killed_consumers=%lu dead_locks=%lu "
           "dirty_found=%lu records_checked=%lu acked=%lu taken=%lu drained=%lu "
           "in_flight_lost=%lu\n",
           cs.rounds, cs.killed_producers, cs.killed_consumers, cs.dead_locks, cs.dirty_found,
           cs.records_checked, cs.acked, cs.taken, cs.drained, cs.in_flight_lost);
    for (p = 0; p <= ledger_producers; p++)
        free(ledger[p]);
    free(ledger);
    free(ledger_len);
    fshm_unmap(m.base, m.size);
    fshm_unlink(name);
    return 0;
}


#ifdef __linux__
/* ---- steps: a process killed after every single instruction ----
 *
 * A child is traced and single-stepped through one put or take; after each
 * instruction the parent copies the shared queue as it stands, which is
 * what the next user would find had the child been killed right there, and
 * recovers the copy: the lock of a dead holder taken over, a dirty count
 * recounted, every record whole, and the messages either all as before the
 * operation or all as after it, never anything between, and once "after",
 * never "before" again. */
#include <sys/ptrace.h>

#define STEP_MSGS 16
static uint64_t dead_id;
static unsigned char *scratch;

static struct {
    unsigned long scenarios, steps, before, after, dirty_seen, lock_seen;
    int unavailable;
} ss;

typedef struct scenario {
    const char *what;
    size_t before_n, after_n;
    uint64_t before[STEP_MSGS], after[STEP_MSGS];
} scenario;

static int same(const uint64_t *a, size_t na, const uint64_t *b, size_t nb)
{
    return na == nb && memcmp(a, b, na * sizeof *a) == 0;
}

/* The copy as the next user finds it; 0 for "before", 1 for "after". */
static int recover(const scenario *sc, size_t size, int *dirty)
{
    fshm_queue c;
    uint64_t ids[STEP_MSGS], seen;
    size_t n;
    int rc;
    memcpy(scratch, q.base, size);
    /* The child's lock word names a live (stopped) process; in the copy it
     * names one that is gone, as it would once the child is killed. */
    if (U64(scratch, Q_LOCK) != 0) {
        U64(scratch, Q_LOCK) = dead_id;
        ss.lock_seen++;
    }
    if (U64(scratch, 80) != 0)
        U64(scratch, 80) = dead_id;
    *dirty = U32(scratch, Q_DIRTY) != 0;
    if ((rc = fshm_queue_attach(&c, scratch, size)) != 0)
        die("%s: attach of the copy: rc %d", sc->what, rc);
    /* What a reader that looks before the next lock holder comes is told. */
    seen = fshm_queue_count(&c);
    lock_round(&c);
    n = walk(&c, ids, STEP_MSGS);
    if (seen != n)
        die("%s: the count without the lock said %llu with %zu queued", sc->what,
            (unsigned long long)seen, n);
    if (same(ids, n, sc->before, sc->before_n))
        return 0;
    if (same(ids, n, sc->after, sc->after_n))
        return 1;
    die("%s: %zu messages queued, neither the %zu before nor the %zu after", sc->what, n,
        sc->before_n, sc->after_n);
}

enum { PUT_ONE, PUT_MANY, GET_ONE, GET_PACKED };

static void act(int op, uint32_t producer, uint64_t seq)
{
    unsigned char bufs[BATCH][MAX_MSG], packed[BATCH * MAX_MSG];
    fshm_msg msgs[BATCH];
    size_t n, lens[BATCH], i;
    int rc = 0;
    for (i = 0; i < BATCH; i++) {
        msgs[i].data = bufs[i];
        msgs[i].len = make_msg(bufs[i], producer, seq + i, max_len);
    }
    if (op == PUT_ONE)
        rc = fshm_queue_put(&q, msgs[0].data, msgs[0].len, 0);
    else if (op == PUT_MANY)
        rc = fshm_queue_put_many(&q, msgs, 2, 0);
    else if (op == GET_ONE)
        rc = fshm_queue_get(&q, bufs[0], MAX_MSG, &n, 0);
    else
        rc = fshm_queue_get_packed(&q, packed, sizeof packed, lens, 2, &n, 0);
    if (rc != 0)
        die("traced operation %d: rc %d", op, rc);
}

/* Run op in a traced child, one instruction at a time; sc says what the
 * queue holds before and must hold after. */
static void step_through(scenario *sc, int op, uint32_t producer, uint64_t seq, size_t size)
{
    pid_t pid;
    int status, state = 0, dirty, now;
    unsigned long steps = 0;
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        traced = 1;
        if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) != 0)
            _exit(4);
        raise(SIGSTOP);
        act(op, producer, seq);
        raise(SIGSTOP);
        _exit(0);
    }
    if (waitpid(pid, &status, 0) != pid || !WIFSTOPPED(status))
        die("%s: the child did not stop (status %#x)", sc->what, status);
    for (;;) {
        if (ptrace(PTRACE_SINGLESTEP, pid, NULL, NULL) != 0) {
            if (steps == 0 && ss.steps == 0) {
                /* A sandbox that lets a child be traced but not stepped. */
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                ss.unavailable = 1;
                return;
            }
            die("%s: PTRACE_SINGLESTEP: errno %d", sc->what, errno);
        }
        if (waitpid(pid, &status, 0) != pid)
            die("waitpid");
        if (!WIFSTOPPED(status))
            die("%s: the child ended (status %#x)", sc->what, status);
        if (WSTOPSIG(status) != SIGTRAP)
            break; /* the SIGSTOP after the operation */
        steps++;
        /* Killed after this instruction: "before", or "after" for good. */
        now = recover(sc, size, &dirty);
        if (now < state)
            die("%s: back to the messages before after step %lu", sc->what, steps);
        state = now;
        ss.dirty_seen += dirty;
        if (now)
            ss.after++;
        else
            ss.before++;
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    if (!state)
        die("%s: the operation never showed", sc->what);
    ss.steps += steps;
    ss.scenarios++;
}

static int run_steps(unsigned rounds, uint64_t capacity)
{
    size_t size = fshm_queue_size_for(capacity);
    void *base;
    uint64_t next_seq = 1;
    unsigned r;
    pid_t pid;
    static const struct { int op; const char *what; } plan[] = {
        {PUT_ONE, "put"}, {PUT_MANY, "put_many of 2"}, {GET_ONE, "get"},
        {GET_PACKED, "get_packed of 2"},
    };
    /* Short enough that the four messages the plan can hold always fit. */
    max_len = longest(capacity);
    if (max_len > ((capacity / 4) & ~7ULL) - 8)
        max_len = (size_t)(((capacity / 4) & ~7ULL) - 8);
    if (max_len < HDR)
        die("capacity %llu is too small for the steps", (unsigned long long)capacity);
    base = shared_zeroed(size);
    if (posix_memalign((void **)&scratch, 4096, size) != 0)
        die("posix_memalign");
    if (fshm_queue_init(&q, base, size, capacity, 0) != 0)
        die("init");
    /* The id of a process that is gone: a child of ours, reaped. */
    pid = fork();
    if (pid == 0)
        _exit(0);
    if (pid < 0 || waitpid(pid, NULL, 0) != pid)
        die("fork");
    dead_id = (fshm_self_id() & ~(uint64_t)0xFFFFFFFF) | (uint32_t)pid;
    if (fshm_owner_dead(dead_id) != 1)
        die("a reaped child must count as dead");
    {
        /* Head and tail moved near the ring's end first, so the first
         * operations already wrap; then one message queued to begin with
         * (the plan keeps 1 to 4). */
        static unsigned char filler[1 << 16];
        size_t n;
        if ((size_t)capacity - 40 > sizeof filler ||
            fshm_queue_put(&q, filler, (size_t)capacity - 40, 0) != 0 ||
            fshm_queue_get(&q, filler, sizeof filler, &n, 0) != 0)
            die("filler");
    }
    {
        unsigned char buf[MAX_MSG];
        if (fshm_queue_put(&q, buf, make_msg(buf, 1, next_seq, max_len), 0) != 0)
            die("first put");
        next_seq++;
    }
    {
        /* Traced children allowed here? */
        int status = 0;
        pid = fork();
        if (pid == 0)
            _exit(ptrace(PTRACE_TRACEME, 0, NULL, NULL) == 0 ? 0 : 5);
        if (pid < 0 || waitpid(pid, &status, 0) != pid)
            die("fork");
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            ss.unavailable = 1;
    }
    for (r = 0; r < rounds && !ss.unavailable; r++) {
        size_t i;
        for (i = 0; i < sizeof plan / sizeof plan[0]; i++) {
            scenario sc;
            size_t k, j;
            sc.what = plan[i].what;
            sc.before_n = walk(&q, sc.before, STEP_MSGS);
            if (plan[i].op == PUT_ONE || plan[i].op == PUT_MANY) {
                k = plan[i].op == PUT_ONE ? 1 : 2;
                memcpy(sc.after, sc.before, sc.before_n * sizeof *sc.after);
                for (j = 0; j < k; j++)
                    sc.after[sc.before_n + j] = (uint64_t)1 << 32 | (next_seq + j);
                sc.after_n = sc.before_n + k;
            } else {
                k = plan[i].op == GET_ONE ? 1 : 2;
                memcpy(sc.after, sc.before + k, (sc.before_n - k) * sizeof *sc.after);
                sc.after_n = sc.before_n - k;
                if (r % 2 == 1) {
                    /* As an earlier holder killed mid-operation leaves it:
                     * the lock held, the mark set, the count stale.  The
                     * traced take takes over and recounts. */
                    U64(q.base, Q_LOCK) = dead_id;
                    U32(q.base, Q_DIRTY) = 1;
                    U64(q.base, Q_COUNT) = 12345;
                }
            }
            step_through(&sc, plan[i].op, 1, next_seq, size);
            if (ss.unavailable)
                break;
            if (plan[i].op == PUT_ONE || plan[i].op == PUT_MANY)
                next_seq += k;
            /* The real queue, after the whole operation, is "after" too. */
            lock_round(&q);
            k = walk(&q, sc.before, STEP_MSGS);
            if (!same(sc.before, k, sc.after, sc.after_n))
                die("%s: the queue after the operation is not as expected", sc.what);
        }
    }
    if (ss.unavailable)
        printf("ptrace=unavailable\n");
    else
        printf("scenarios=%lu steps=%lu before=%lu after=%lu dirty_seen=%lu lock_seen=%lu "
               "wraps=%llu\n",
               ss.scenarios, ss.steps, ss.before, ss.after, ss.dirty_seen, ss.lock_seen,
               (unsigned long long)(U64(q.base, Q_TAIL) / q.capacity));
    free(scratch);
    munmap(base, size);
    return 0;
}
#else
/* Single-stepping a child is Linux ptrace (PTRACE_SINGLESTEP). */
static int run_steps(unsigned rounds, uint64_t capacity)
{
    (void)rounds;
    (void)capacity;
    printf("ptrace=unavailable\n");
    return 0;
}
#endif

/* ---- wake: a sleeper on the notify word is woken by the other side ----
 *
 * Threads sleep on the queue's notify word by hand, registered in waiters
 * as a blocked put or get is, but with no re-check of their own (a 10 s
 * bound fails the run): only the futex wake of a put (on an empty queue) or of a get (on a
 * full one) can end their sleep.  Beside them, a real blocked get and a real
 * blocked put with no timeout, which must complete, and fshm_queue_wait
 * for a message or for room, which must return. */
#define Q_NOTIFY 24
#define Q_WAITERS 28

static void *hand_sleeper(void *arg)
{
    uint32_t *notify = (uint32_t *)(q.base + Q_NOTIFY);
    uint32_t *waiters = (uint32_t *)(q.base + Q_WAITERS);
    uint32_t v;
    (void)arg;
    /* The word first, then the count: the test's put waits for the count
     * (await_sleepers), so it bumps the word after this load, and the
     * sleep below cannot miss it however long this thread was preempted. */
    v = __atomic_load_n(notify, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(waiters, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(notify, __ATOMIC_SEQ_CST) == v) {
        /* The wake-up comes within milliseconds of the commit, or never: a
         * sleep that runs to its 10 s bound was not woken. */
        int64_t t0 = fshm_monotonic_ns();
        fshm_futex_wait(notify, v, 10000000000LL);
        if (fshm_monotonic_ns() - t0 >= 10000000000LL)
            die("a sleeper on the notify word was not woken in 10 s");
    }
    __atomic_sub_fetch(waiters, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static void *blocked_get(void *arg)
{
    unsigned char buf[MAX_MSG];
    size_t n;
    int rc = fshm_queue_get(&q, buf, sizeof buf, &n, -1);
    if (rc != 0 || n != 5 || memcmp(buf, "hello", 5) != 0)
        die("blocked get: rc %d, %zu bytes", rc, n);
    (void)arg;
    return NULL;
}

/* fshm_queue_wait, the no-spin sleep of a binding's later slices: until a
 * message (arg NULL) or room for a 16-byte record. */
static void *queue_waiter(void *arg)
{
    int rc = fshm_queue_wait(&q, arg == NULL ? 0 : 16, -1);
    if (rc != 0)
        die("fshm_queue_wait for %s: rc %d", arg == NULL ? "a message" : "room", rc);
    return NULL;
}

static void *blocked_put(void *arg)
{
    int rc = fshm_queue_put(&q, "late", 4, -1);
    if (rc != 0)
        die("blocked put: rc %d", rc);
    (void)arg;
    return NULL;
}

#ifdef __linux__
static volatile sig_atomic_t signals;
static int eintr_full, interrupted_done;
static void await_sleepers(uint32_t n);

static void on_signal(int sig)
{
    (void)sig;
    signals++;
}

static void *interrupted(void *arg)
{
    unsigned char buf[MAX_MSG];
    size_t n;
    int rc = eintr_full ? fshm_queue_put(&q, "x", 1, -1)
                        : fshm_queue_get(&q, buf, sizeof buf, &n, -1);
    if (rc != EINTR)
        die("a signal during a blocked %s: rc %d", eintr_full ? "put" : "get", rc);
    __atomic_store_n(&interrupted_done, 1, __ATOMIC_RELEASE);
    (void)arg;
    return NULL;
}

/* Signal t once it sleeps, again every 200 ms in case a signal came just
 * before its sleep began, until its call has returned. */
static void interrupt(pthread_t t)
{
    int64_t start = fshm_monotonic_ns();
    await_sleepers(1);
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

/* Until n threads are registered as sleepers, and a moment more for them
 * to be asleep. */
static void await_sleepers(uint32_t n)
{
    int64_t start = fshm_monotonic_ns();
    while (__atomic_load_n((uint32_t *)(q.base + Q_WAITERS), __ATOMIC_SEQ_CST) < n) {
        if (fshm_monotonic_ns() - start > STALL_NS)
            die("never %u sleepers", n);
        fshm_sleep_ns(1000000);
    }
    fshm_sleep_ns(20000000);
}

static int run_wake(unsigned rounds)
{
    size_t size = fshm_queue_size_for(64), n;
    void *base = NULL;
    unsigned r;
    unsigned char buf[MAX_MSG];
    if (posix_memalign(&base, 4096, size) != 0)
        die("posix_memalign");
    memset(base, 0, size);
    if (fshm_queue_init(&q, base, size, 64, 0) != 0)
        die("init");
    if (fshm_queue_wait(&q, 0, 0) != FSHM_ETIMEOUT || fshm_queue_wait(&q, 64, 0) != 0 ||
        fshm_queue_wait(&q, 72, -1) != FSHM_ETOOBIG)
        die("fshm_queue_wait on an empty queue");
    for (r = 0; r < rounds; r++) {
        pthread_t t[3];
        int i;
        /* Empty: a put wakes them. */
        pthread_create(&t[0], NULL, hand_sleeper, NULL);
        pthread_create(&t[1], NULL, hand_sleeper, NULL);
        pthread_create(&t[2], NULL, blocked_get, NULL);
        await_sleepers(3);
        if (fshm_queue_put(&q, "hello", 5, 0) != 0)
            die("put");
        for (i = 0; i < 3; i++)
            pthread_join(t[i], NULL);
        if (fshm_queue_count(&q) != 0)
            die("the blocked get did not take the message");
        /* Full (four 16-byte records): a get wakes them. */
        for (i = 0; i < 4; i++)
            if (fshm_queue_put(&q, "early", 5, 0) != 0)
                die("fill");
        if (fshm_queue_put(&q, "x", 1, 0) != FSHM_EFULL)
            die("not full");
        pthread_create(&t[0], NULL, hand_sleeper, NULL);
        pthread_create(&t[1], NULL, hand_sleeper, NULL);
        pthread_create(&t[2], NULL, blocked_put, NULL);
        await_sleepers(3);
        if (fshm_queue_get(&q, buf, sizeof buf, &n, 0) != 0)
            die("get");
        for (i = 0; i < 3; i++)
            pthread_join(t[i], NULL);
        for (i = 0; i < 4; i++)
            if (fshm_queue_get(&q, buf, sizeof buf, &n, 0) != 0 ||
                memcmp(buf, i < 3 ? "early" : "late", n) != 0)
                die("after the blocked put: message %d", i);
        /* fshm_queue_wait alone (no other taker or putter to race it): a
         * put ends its wait for a message, a get its wait for room. */
        pthread_create(&t[0], NULL, queue_waiter, NULL);
        await_sleepers(1);
        if (fshm_queue_put(&q, "hello", 5, 0) != 0)
            die("put");
        pthread_join(t[0], NULL);
        for (i = 0; i < 3; i++)
            if (fshm_queue_put(&q, "early", 5, 0) != 0)
                die("fill");
        pthread_create(&t[0], NULL, queue_waiter, &q);
        await_sleepers(1);
        if (fshm_queue_get(&q, buf, sizeof buf, &n, 0) != 0 || n != 5)
            die("get");
        pthread_join(t[0], NULL);
        for (i = 0; i < 3; i++)
            if (fshm_queue_get(&q, buf, sizeof buf, &n, 0) != 0)
                die("drain");
        if (__atomic_load_n((uint32_t *)(q.base + Q_WAITERS), __ATOMIC_SEQ_CST) != 0)
            die("sleepers left registered");
    }
#ifdef __linux__
    {
        /* A signal ends a blocked get and a blocked put with EINTR, nothing
         * taken or put (the caller runs its handler and calls again).  Only
         * where the sleep is a futex: elsewhere it polls, and the polling
         * loop (poll_wait.h) goes on after a signal. */
        pthread_t t;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal; /* no SA_RESTART */
        sigaction(SIGUSR1, &sa, NULL);
        eintr_full = 0;
        pthread_create(&t, NULL, interrupted, NULL);
        interrupt(t);
        for (n = 0; n < 4; n++)
            if (fshm_queue_put(&q, "early", 5, 0) != 0)
                die("fill");
        eintr_full = 1;
        pthread_create(&t, NULL, interrupted, NULL);
        interrupt(t);
        if (fshm_queue_count(&q) != 4 || signals < 2)
            die("after the interrupted calls: count %llu, %d signals",
                (unsigned long long)fshm_queue_count(&q), signals);
    }
    printf("wake_rounds=%u eintr=2\n", rounds);
#else
    printf("wake_rounds=%u eintr=0\n", rounds);
#endif
    free(base);
    return 0;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    uint64_t capacity;
    /* Whatever happens, never hang the driver. */
    alarm(300);
    if (strcmp(mode, "threads") == 0 && argc == 6) {
        setup_shared(argv[2], argv[3], argv[4], argv[5], &capacity);
        return run_threads(capacity);
    }
    if (strcmp(mode, "procs") == 0 && argc == 7) {
        setup_shared(argv[2], argv[3], argv[4], argv[5], &capacity);
        return run_procs(capacity, argv[6]);
    }
    if (strcmp(mode, "crash") == 0 && argc == 6)
        return run_crash(strtoul(argv[2], NULL, 10), strtoull(argv[3], NULL, 10),
                         strtoull(argv[4], NULL, 10), argv[5]);
    if (strcmp(mode, "wake") == 0 && argc == 3)
        return run_wake((unsigned)strtoul(argv[2], NULL, 10));
    if (strcmp(mode, "steps") == 0 && argc == 4)
        return run_steps((unsigned)strtoul(argv[2], NULL, 10), strtoull(argv[3], NULL, 10));
    fprintf(stderr, "usage: see the comment at the top of queue_stress.c\n");
    return 2;
}
