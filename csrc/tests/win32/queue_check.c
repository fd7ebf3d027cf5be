/*
 * A command-line driver of fastshm's queue (csrc/queue.c), built for Windows
 * (run under Wine by tests/test_windows.py) and for POSIX from the same
 * source, so the error codes of the two builds can be compared line by line.
 * Every command prints `key=value` lines and exits 0 when it did what it was
 * asked, 1 otherwise.  Timeouts are in milliseconds; every wait is bounded.
 *
 *   hold NAME CAP              create the queue, print ready, keep it until a
 *                              line (or EOF) on stdin
 *   put NAME MSG TIMEOUT       attach and put MSG
 *   fill NAME MSG              put MSG until the queue is full
 *   get NAME TIMEOUT           attach, print blocking, then get one message
 *   stat NAME                  count, bytes used, sleepers (the waiters word)
 *   sleeper NAME TIMEOUT       register as a sleeper on the notify word and
 *                              sleep until it moves: a put's or a get's
 *                              wake-up, with no re-check of its own (the
 *                              timeout only bounds a failed test); report
 *                              whether the wake semaphore exists
 *   producer NAME ID COUNT     put COUNT self-checking messages of producer
 *                              ID, one after another
 *   consumer NAME TOTAL NPROD  get TOTAL messages of producers 1..NPROD:
 *                              each whole, each once, each producer's in
 *                              order; after the first, wait until a
 *                              producer sleeps for room
 *   errors NAME                the error cases, one line each
 */
#include "fastshm.h"
#include "atomics.h"

#include <errno.h>
#ifdef _WIN32
#include <windows.h>
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MSG 300
/* Header offsets of docs/FORMAT.md ("Queues"). */
#define Q_NOTIFY 24
#define Q_WAITERS 28

static const char *code_name(int rc)
{
    switch (rc) {
    case 0: return "OK";
    case ENOENT: return "ENOENT";
    case EEXIST: return "EEXIST";
    case EACCES: return "EACCES";
    case EINVAL: return "EINVAL";
    case FSHM_EFORMAT: return "FSHM_EFORMAT";
    case FSHM_ETOOBIG: return "FSHM_ETOOBIG";
    case FSHM_ESMALL: return "FSHM_ESMALL";
    case FSHM_ETIMEOUT: return "FSHM_ETIMEOUT";
    case FSHM_ENOTREADY: return "FSHM_ENOTREADY";
    case FSHM_EVERSION: return "FSHM_EVERSION";
    case FSHM_EKIND: return "FSHM_EKIND";
    case FSHM_EFULL: return "FSHM_EFULL";
    case FSHM_ENOMSG: return "FSHM_ENOMSG";
    case FSHM_EPROTOCOL: return "FSHM_EPROTOCOL";
    case FSHM_EBUSY: return "FSHM_EBUSY";
    case FSHM_EAGAIN: return "FSHM_EAGAIN";
    default: {
        static char buf[32];
        snprintf(buf, sizeof buf, "code%d", rc);
        return buf;
    }
    }
}

static void say(const char *key, const char *value)
{
    printf("%s=%s\n", key, value);
    fflush(stdout);
}

static void say_n(const char *key, unsigned long long n)
{
    printf("%s=%llu\n", key, n);
    fflush(stdout);
}

static void wait_for_stdin(void)
{
    char line[64];
    (void)fgets(line, sizeof line, stdin);
}

static int64_t ms_ns(const char *ms)
{
    long long v = strtoll(ms, NULL, 10);
    return v < 0 ? -1 : (int64_t)v * 1000000;
}

static int attach(fshm_queue *q, fshm_map *m, const char *name)
{
    int rc = fshm_queue_open(q, m, name, FSHM_ATTACH, 0, 0, 0);
    say("attach", code_name(rc));
    return rc;
}

static int cmd_hold(const char *name, uint64_t cap)
{
    fshm_queue q;
    fshm_map m;
    int rc = fshm_queue_open(&q, &m, name, FSHM_CREATE, cap, 0, 0600);
    say("open", code_name(rc));
    if (rc != 0)
        return 1;
    say_n("capacity", q.capacity);
    say("ready", "1");
    wait_for_stdin();
    fshm_unmap(m.base, m.size);
    fshm_unlink(name);
    return 0;
}

static int cmd_put(const char *name, const char *msg, const char *timeout)
{
    fshm_queue q;
    fshm_map m;
    int rc;
    if (attach(&q, &m, name) != 0)
        return 1;
    say("putting", "1");
    rc = fshm_queue_put(&q, msg, strlen(msg), ms_ns(timeout));
    say("put", code_name(rc));
    say_n("count", fshm_queue_count(&q));
    fshm_unmap(m.base, m.size);
    return rc != 0;
}

static int cmd_fill(const char *name, const char *msg)
{
    fshm_queue q;
    fshm_map m;
    unsigned long long n = 0;
    int rc;
    if (attach(&q, &m, name) != 0)
        return 1;
    while ((rc = fshm_queue_put(&q, msg, strlen(msg), 0)) == 0)
        n++;
    say("fill", code_name(rc));
    say_n("puts", n);
    say_n("used", fshm_queue_used(&q));
    fshm_unmap(m.base, m.size);
    return rc != FSHM_EFULL;
}

static int cmd_get(const char *name, const char *timeout)
{
    fshm_queue q;
    fshm_map m;
    char buf[MAX_MSG + 1];
    size_t n = 0;
    int64_t t0;
    int rc;
    if (attach(&q, &m, name) != 0)
        return 1;
    say("blocking", "1");
    t0 = fshm_monotonic_ns();
    rc = fshm_queue_get(&q, buf, MAX_MSG, &n, ms_ns(timeout));
    buf[rc == 0 ? n : 0] = '\0';
    say("get", code_name(rc));
    say("got", buf);
    say_n("waited_ms", (unsigned long long)((fshm_monotonic_ns() - t0) / 1000000));
    fshm_unmap(m.base, m.size);
    return rc != 0;
}

static int cmd_stat(const char *name)
{
    fshm_queue q;
    fshm_map m;
    if (attach(&q, &m, name) != 0)
        return 1;
    say_n("count", fshm_queue_count(&q));
    say_n("used", fshm_queue_used(&q));
    say_n("sleepers", fshm_load32((uint32_t *)(q.base + Q_WAITERS), FSHM_SEQ_CST));
    say_n("lock", fshm_queue_lock_owner(&q));
    fshm_unmap(m.base, m.size);
    return 0;
}

/* The sleeping half of a blocked put or get, done by hand so that nothing
 * but another process's wake-up ends the sleep (queue.c looks again every
 * 100 ms on its own). */
static int cmd_sleeper(const char *name, const char *timeout)
{
    fshm_queue q;
    fshm_map m;
    uint32_t *notify, *waiters, v;
    int64_t deadline;
    if (attach(&q, &m, name) != 0)
        return 1;
    notify = (uint32_t *)(q.base + Q_NOTIFY);
    waiters = (uint32_t *)(q.base + Q_WAITERS);
    fshm_add32(waiters, 1);
    v = fshm_load32(notify, FSHM_SEQ_CST);
    say_n("count", fshm_queue_count(&q));
    say("sleeping", "1");
    deadline = fshm_monotonic_ns() + ms_ns(timeout);
    while (fshm_load32(notify, FSHM_SEQ_CST) == v && fshm_monotonic_ns() < deadline)
        fshm_futex_wait(notify, v, deadline - fshm_monotonic_ns());
    fshm_add32(waiters, -1);
    say("woken", fshm_load32(notify, FSHM_SEQ_CST) != v ? "1" : "0");
    say_n("woke_count", fshm_queue_count(&q));
#ifdef _WIN32
    {
        wchar_t wname[512];
        HANDLE sem;
        MultiByteToWideChar(CP_UTF8, 0, name, -1, wname, 480);
        wcscat(wname, L".fastshm-wake");
        sem = OpenSemaphoreW(SYNCHRONIZE, FALSE, wname);
        say("semaphore", sem != NULL ? "OK" : "missing");
        if (sem != NULL)
            CloseHandle(sem);
    }
#else
    say("semaphore", "none");
#endif
    fshm_unmap(m.base, m.size);
    return 0;
}

/* ---- self-checking messages: [producer u32][seq u32][length u32][FNV-1a
 * of all the rest u32][payload], payload bytes a function of the three ---- */

static uint32_t fnv1a(const unsigned char *p, size_t n, uint32_t h)
{
    while (n--) {
        h ^= *p++;
        h *= 16777619u;
    }
    return h;
}

static size_t make_msg(unsigned char *buf, uint32_t producer, uint32_t seq)
{
    uint32_t len = 16 + (seq * 2654435761u ^ producer * 40503u) % (MAX_MSG - 15), sum, i;
    for (i = 16; i < len; i++)
        buf[i] = (unsigned char)(producer * 17 + seq * 31 + i);
    memcpy(buf, &producer, 4);
    memcpy(buf + 4, &seq, 4);
    memcpy(buf + 8, &len, 4);
    sum = fnv1a(buf + 16, len - 16, fnv1a(buf, 12, 2166136261u));
    memcpy(buf + 12, &sum, 4);
    return len;
}

static int check_msg(const unsigned char *buf, size_t n, uint32_t *producer, uint32_t *seq)
{
    uint32_t len, sum;
    if (n < 16)
        return 1;
    memcpy(producer, buf, 4);
    memcpy(seq, buf + 4, 4);
    memcpy(&len, buf + 8, 4);
    memcpy(&sum, buf + 12, 4);
    return len != n || sum != fnv1a(buf + 16, n - 16, fnv1a(buf, 12, 2166136261u));
}

static int cmd_producer(const char *name, uint32_t id, uint32_t count)
{
    fshm_queue q;
    fshm_map m;
    unsigned char buf[MAX_MSG];
    unsigned long long full = 0;
    uint32_t seq;
    int rc = 0;
    if (attach(&q, &m, name) != 0)
        return 1;
    for (seq = 1; seq <= count; seq++) {
        size_t n = make_msg(buf, id, seq);
        /* Without waiting first, to count the times the queue was full. */
        rc = fshm_queue_put(&q, buf, n, 0);
        if (rc == FSHM_EFULL) {
            full++;
            rc = fshm_queue_put(&q, buf, n, 30000000000LL);
        }
        if (rc != 0)
            break;
    }
    say("put", code_name(rc));
    say_n("puts", seq - 1);
    say_n("full_waits", full);
    fshm_unmap(m.base, m.size);
    return rc != 0;
}

static int cmd_consumer(const char *name, unsigned long total, uint32_t producers)
{
    fshm_queue q;
    fshm_map m;
    unsigned char buf[MAX_MSG];
    uint32_t *last = (uint32_t *)calloc(producers + 1, sizeof *last);
    unsigned long long empty = 0, bad = 0, got;
    int rc = 0;
    if (last == NULL || attach(&q, &m, name) != 0)
        return 1;
    say("ready", "1");
    for (got = 0; got < total; got++) {
        size_t n = 0;
        uint32_t p, seq;
        rc = fshm_queue_get(&q, buf, sizeof buf, &n, 0);
        if (rc == FSHM_ENOMSG) {
            empty++;
            rc = fshm_queue_get(&q, buf, sizeof buf, &n, 30000000000LL);
        }
        if (rc != 0)
            break;
        /* Whole, from a known producer, and that producer's next one: one
         * consumer sees every message of a producer, in order, once. */
        if (check_msg(buf, n, &p, &seq) != 0 || p < 1 || p > producers || seq != last[p] + 1)
            bad++;
        else
            last[p] = seq;
        if (got == 0) {
            /* After the first message, the ring is left to the producers
             * until one of them sleeps for room (the waiters word; this
             * consumer is in no get): one found the queue full, however the
             * processes were scheduled.  Bounded: after 10 s it goes on. */
            int64_t until = fshm_monotonic_ns() + 10000000000LL;
            while (fshm_load32((uint32_t *)(q.base + Q_WAITERS), FSHM_SEQ_CST) == 0 &&
                   fshm_monotonic_ns() < until)
                fshm_sleep_ns(1000000);
        }
    }
    say("get", code_name(rc));
    say_n("taken", got);
    say_n("bad", bad);
    say_n("empty_waits", empty);
    say_n("left", fshm_queue_count(&q));
    /* The tail counter (header offset 32) over the ring: times it wrapped. */
    say_n("wraps", fshm_load64((uint64_t *)(q.base + 32), FSHM_ACQUIRE) / q.capacity);
    fshm_unmap(m.base, m.size);
    free(last);
    return rc != 0 || bad != 0;
}

static void *refuse(void *ctx, size_t len)
{
    (void)ctx;
    (void)len;
    return NULL;
}

static int cmd_errors(const char *name)
{
    fshm_queue q, q2;
    fshm_seg s;
    fshm_map m, m2, raw;
    char other[256], buf[64], big[64];
    size_t n = 0, taken = 9;
    int rc, bad = 0;

    snprintf(other, sizeof other, "%s_other", name);
#define EXPECT(key, call, want)        \
    do {                               \
        rc = (call);                   \
        say(key, code_name(rc));       \
        bad |= rc != (want);           \
    } while (0)

    EXPECT("create", fshm_queue_open(&q, &m, name, FSHM_CREATE, 64, 0, 0600), 0);
    if (rc != 0)
        return 1;
    say_n("capacity", q.capacity);
    say_n("max_message", fshm_queue_max_message(q.capacity));
    EXPECT("create_existing", fshm_queue_open(&q2, &m2, name, FSHM_CREATE, 64, 0, 0600), EEXIST);
    EXPECT("attach_missing", fshm_queue_open(&q2, &m2, other, FSHM_ATTACH, 0, 0, 0), ENOENT);
    EXPECT("capacity_too_small", fshm_queue_open(&q2, &m2, other, FSHM_CREATE, 8, 0, 0600),
           EINVAL);
    EXPECT("bad_flags", fshm_queue_open(&q2, &m2, other, FSHM_CREATE, 64, 2, 0600), EINVAL);
    EXPECT("get_empty", fshm_queue_get(&q, buf, sizeof buf, &n, 0), FSHM_ENOMSG);
    EXPECT("get_empty_waiting", fshm_queue_get(&q, buf, sizeof buf, &n, 20000000), FSHM_ENOMSG);
    memset(big, 'x', sizeof big);
    EXPECT("put_too_big", fshm_queue_put(&q, big, 57, 0), FSHM_ETOOBIG);
    EXPECT("put_largest", fshm_queue_put(&q, big, 56, 0), 0);
    EXPECT("put_full", fshm_queue_put(&q, big, 0, 0), FSHM_EFULL);
    EXPECT("put_full_waiting", fshm_queue_put(&q, big, 0, 20000000), FSHM_EFULL);
    EXPECT("get_small", fshm_queue_get(&q, buf, 10, &n, 0), FSHM_ESMALL);
    printf("small_needs=%zu count=%llu\n", n, (unsigned long long)fshm_queue_count(&q));
    EXPECT("take_refused", fshm_queue_take(&q, refuse, NULL, 1, &taken, 0), 0);
    printf("taken=%zu count=%llu\n", taken, (unsigned long long)fshm_queue_count(&q));
    EXPECT("get_largest", fshm_queue_get(&q, buf, sizeof buf, &n, 0), 0);
    bad |= n != 56;
    printf("got=%zu count=%llu used=%llu\n", n, (unsigned long long)fshm_queue_count(&q),
           (unsigned long long)fshm_queue_used(&q));
    {
        fshm_msg two[2];
        two[0].data = big;
        two[0].len = 20;
        two[1].data = big;
        two[1].len = 30; /* 8 + 24 and 8 + 32 records: 72 > 64 bytes of ring */
        EXPECT("put_many_never_fits", fshm_queue_put_many(&q, two, 2, 0), FSHM_ETOOBIG);
        two[1].len = 16;
        EXPECT("put_many", fshm_queue_put_many(&q, two, 2, 0), 0);
        printf("count=%llu used=%llu\n", (unsigned long long)fshm_queue_count(&q),
               (unsigned long long)fshm_queue_used(&q));
    }

    /* The lock of a holder judged gone, broken by hand: only while it still
     * holds that owner. */
    {
        uint64_t someone = fshm_self_id() ^ 1;
        memcpy(q.base + 64, &someone, 8);
        EXPECT("break_lock_other", fshm_queue_break_lock(&q, someone ^ 2), FSHM_EAGAIN);
        bad |= fshm_queue_lock_owner(&q) != someone;
        EXPECT("break_lock", fshm_queue_break_lock(&q, someone), 0);
        bad |= fshm_queue_lock_owner(&q) != 0;
        EXPECT("put_after_break", fshm_queue_put(&q, "", 0, 0), 0); /* 8 bytes: full */
        printf("count=%llu lock=%llu\n", (unsigned long long)fshm_queue_count(&q),
               (unsigned long long)fshm_queue_lock_owner(&q));
    }

    /* The other kind at a name. */
    EXPECT("queue_as_segment", fshm_seg_open(&s, &m2, name, FSHM_ATTACH, 0, 0), FSHM_EKIND);
    EXPECT("segment_create", fshm_seg_open(&s, &m2, other, FSHM_CREATE, 64, 0600), 0);
    if (rc == 0) {
        EXPECT("segment_as_queue", fshm_queue_open(&q2, &raw, other, FSHM_ATTACH, 0, 0, 0),
               FSHM_EKIND);
        EXPECT("segment_as_queue_open_or_create",
               fshm_queue_open(&q2, &raw, other, FSHM_OPEN_OR_CREATE, 64, 0, 0600), FSHM_EKIND);
        fshm_unmap(m2.base, m2.size);
        fshm_unlink(other);
    }
    /* A queue made for the python backend's lock. */
    EXPECT("pylock_create", fshm_queue_open(&q2, &m2, other, FSHM_CREATE, 64,
                                            FSHM_QUEUE_PYLOCK, 0600), 0);
    if (rc == 0) {
        EXPECT("pylock_put", fshm_queue_put(&q2, "x", 1, 0), FSHM_EPROTOCOL);
        EXPECT("pylock_get", fshm_queue_get(&q2, buf, sizeof buf, &n, 0), FSHM_EPROTOCOL);
        fshm_unmap(m2.base, m2.size);
        fshm_unlink(other);
    }
    /* A queue whose magic is then overwritten. */
    EXPECT("corrupt_create", fshm_queue_open(&q2, &m2, other, FSHM_CREATE, 64, 0, 0600), 0);
    if (rc == 0) {
        memcpy(m2.base, "JUNK", 4);
        EXPECT("corrupt_magic", fshm_queue_open(&q2, &raw, other, FSHM_ATTACH, 0, 0, 0),
               FSHM_EFORMAT);
        /* Positions that cannot be: the handle opened before sees them. */
        memcpy(m2.base, "FSHQ", 4);
        memset(m2.base + 16, 0xff, 8);
        fshm_queue_attach(&q2, m2.base, m2.size);
        EXPECT("corrupt_head_put", fshm_queue_put(&q2, "x", 1, 0), FSHM_EFORMAT);
        EXPECT("corrupt_head_get", fshm_queue_get(&q2, buf, sizeof buf, &n, 0), FSHM_EFORMAT);
        fshm_unmap(m2.base, m2.size);
        fshm_unlink(other);
    }
    fshm_unmap(m.base, m.size);
    fshm_unlink(name);
    say("all_as_expected", bad ? "0" : "1");
    return bad;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "";
    if (strcmp(cmd, "hold") == 0 && argc == 4)
        return cmd_hold(argv[2], strtoull(argv[3], NULL, 10));
    if (strcmp(cmd, "put") == 0 && argc == 5)
        return cmd_put(argv[2], argv[3], argv[4]);
    if (strcmp(cmd, "fill") == 0 && argc == 4)
        return cmd_fill(argv[2], argv[3]);
    if (strcmp(cmd, "get") == 0 && argc == 4)
        return cmd_get(argv[2], argv[3]);
    if (strcmp(cmd, "stat") == 0 && argc == 3)
        return cmd_stat(argv[2]);
    if (strcmp(cmd, "sleeper") == 0 && argc == 4)
        return cmd_sleeper(argv[2], argv[3]);
    if (strcmp(cmd, "producer") == 0 && argc == 5)
        return cmd_producer(argv[2], (uint32_t)strtoul(argv[3], NULL, 10),
                            (uint32_t)strtoul(argv[4], NULL, 10));
    if (strcmp(cmd, "consumer") == 0 && argc == 5)
        return cmd_consumer(argv[2], strtoul(argv[3], NULL, 10),
                            (uint32_t)strtoul(argv[4], NULL, 10));
    if (strcmp(cmd, "errors") == 0 && argc == 3)
        return cmd_errors(argv[2]);
    fprintf(stderr, "usage: see the comment at the top of queue_check.c\n");
    return 2;
}
