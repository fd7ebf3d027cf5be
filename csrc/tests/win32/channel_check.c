/*
 * A command-line driver of fastshm's channel (csrc/channel.c), built for
 * Windows (run under Wine by tests/test_windows_channel.py) and for POSIX
 * from the same source, so the error codes of the two builds can be
 * compared line by line.  Every command prints `key=value` lines and exits
 * 0 when it did what it was asked, 1 otherwise.  Timeouts are in
 * milliseconds; every wait is bounded.
 *
 *   hold NAME MODE SLOTS       create the channel (block|overwrite, 64-byte
 *                              slots), print ready, keep it until a line
 *                              (or EOF) on stdin
 *   publish NAME MSG TIMEOUT   attach and publish MSG
 *   fill NAME MSG              publish MSG until no slot is free
 *   lagger NAME                subscribe and print ready; on a line on
 *                              stdin, receive and release two messages;
 *                              at EOF, unsubscribe
 *   receive NAME TIMEOUT       subscribe, print blocking, receive one message
 *   stat NAME                  head, subscribers, the sleeper counts
 *   sleeper NAME WORD TIMEOUT  register as a sleeper on the notify or room
 *                              word and sleep until it moves: a publish's or
 *                              a release's wake-up, with no re-check of its
 *                              own (the timeout only bounds a failed test);
 *                              report whether the word's semaphore exists
 *   publisher NAME ID COUNT    publish COUNT self-checking messages of
 *                              publisher ID, one after another
 *   subscriber NAME TOTAL NPUB subscribe, print ready, receive TOTAL messages
 *                              of publishers 1..NPUB: each whole, each once,
 *                              each publisher's in order, numbers 1, 2, ...;
 *                              after the first, wait until a publisher
 *                              sleeps for room
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

#define SLOT_SIZE 64
/* Header offsets of docs/FORMAT.md ("Channels"). */
#define C_NOTIFY 24
#define C_WAITERS 28
#define C_ROOM 48
#define C_ROOM_WAITERS 52

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
    case FSHM_ETIMEOUT: return "FSHM_ETIMEOUT";
    case FSHM_ENOTREADY: return "FSHM_ENOTREADY";
    case FSHM_EVERSION: return "FSHM_EVERSION";
    case FSHM_EKIND: return "FSHM_EKIND";
    case FSHM_EFULL: return "FSHM_EFULL";
    case FSHM_EBUSY: return "FSHM_EBUSY";
    case FSHM_EAGAIN: return "FSHM_EAGAIN";
    case FSHM_ELOST: return "FSHM_ELOST";
    case FSHM_ESUBFULL: return "FSHM_ESUBFULL";
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

/* 1 on a line, 0 at EOF. */
static int wait_for_stdin(void)
{
    char line[64];
    return fgets(line, sizeof line, stdin) != NULL;
}

static int64_t ms_ns(const char *ms)
{
    long long v = strtoll(ms, NULL, 10);
    return v < 0 ? -1 : (int64_t)v * 1000000;
}

static int attach(fshm_channel *c, fshm_map *m, const char *name)
{
    int rc = fshm_channel_open(c, m, name, FSHM_ATTACH, 0, 0, 0, 0, 0, 0);
    say("attach", code_name(rc));
    return rc;
}

static int cmd_hold(const char *name, const char *mode, uint32_t slots)
{
    fshm_channel c;
    fshm_map m;
    int rc = fshm_channel_open(&c, &m, name, FSHM_CREATE, SLOT_SIZE, slots, 1, 4,
                               strcmp(mode, "overwrite") == 0 ? FSHM_CHANNEL_OVERWRITE : 0,
                               0600);
    say("open", code_name(rc));
    if (rc != 0)
        return 1;
    say_n("slots", c.slots);
    say("ready", "1");
    wait_for_stdin();
    fshm_unmap(m.base, m.size);
    fshm_unlink(name);
    return 0;
}

static int cmd_publish(const char *name, const char *msg, const char *timeout)
{
    fshm_channel c;
    fshm_map m;
    uint64_t seq = 0;
    int64_t t0;
    int rc;
    if (attach(&c, &m, name) != 0)
        return 1;
    say("publishing", "1");
    t0 = fshm_monotonic_ns();
    rc = fshm_channel_publish(&c, msg, strlen(msg), ms_ns(timeout), &seq);
    say("publish", code_name(rc));
    say_n("seq", seq);
    say_n("waited_ms", (unsigned long long)((fshm_monotonic_ns() - t0) / 1000000));
    fshm_unmap(m.base, m.size);
    return rc != 0;
}

static int cmd_fill(const char *name, const char *msg)
{
    fshm_channel c;
    fshm_map m;
    unsigned long long n = 0;
    int rc;
    if (attach(&c, &m, name) != 0)
        return 1;
    while ((rc = fshm_channel_publish(&c, msg, strlen(msg), 0, NULL)) == 0)
        n++;
    say("fill", code_name(rc));
    say_n("publishes", n);
    fshm_unmap(m.base, m.size);
    return rc != FSHM_EFULL;
}

static int cmd_lagger(const char *name)
{
    fshm_channel c;
    fshm_map m;
    fshm_sub sub;
    int rc, i;
    if (attach(&c, &m, name) != 0)
        return 1;
    rc = fshm_channel_subscribe(&c, &sub, -1);
    say("subscribe", code_name(rc));
    if (rc != 0)
        return 1;
    say("ready", "1");
    if (wait_for_stdin()) {
        for (i = 0; i < 2; i++) {
            fshm_sample s;
            rc = fshm_channel_receive(&c, &sub, &s, NULL, 0);
            if (rc != 0)
                break;
            rc = fshm_channel_release(&c, &sub, s.slot);
        }
        say("released", code_name(rc));
        wait_for_stdin();
    }
    say("unsubscribe", code_name(fshm_channel_unsubscribe(&c, &sub)));
    fshm_unmap(m.base, m.size);
    return rc != 0;
}

static int cmd_receive(const char *name, const char *timeout)
{
    fshm_channel c;
    fshm_map m;
    fshm_sub sub;
    fshm_sample s;
    char buf[SLOT_SIZE + 1];
    int64_t t0;
    int rc;
    if (attach(&c, &m, name) != 0)
        return 1;
    if ((rc = fshm_channel_subscribe(&c, &sub, -1)) != 0) {
        say("subscribe", code_name(rc));
        return 1;
    }
    say("blocking", "1");
    t0 = fshm_monotonic_ns();
    rc = fshm_channel_receive(&c, &sub, &s, NULL, ms_ns(timeout));
    if (rc == 0) {
        memcpy(buf, s.data, s.length);
        buf[s.length] = '\0';
        fshm_channel_release(&c, &sub, s.slot);
    } else {
        buf[0] = '\0';
    }
    say("receive", code_name(rc));
    say("got", buf);
    say_n("waited_ms", (unsigned long long)((fshm_monotonic_ns() - t0) / 1000000));
    fshm_channel_unsubscribe(&c, &sub);
    fshm_unmap(m.base, m.size);
    return rc != 0;
}

static int cmd_stat(const char *name)
{
    fshm_channel c;
    fshm_map m;
    if (attach(&c, &m, name) != 0)
        return 1;
    say_n("head", fshm_channel_head(&c));
    say_n("subscribers", fshm_channel_subscribers(&c));
    say_n("sleepers", fshm_load32((uint32_t *)(c.base + C_WAITERS), FSHM_SEQ_CST));
    say_n("room_sleepers", fshm_load32((uint32_t *)(c.base + C_ROOM_WAITERS), FSHM_SEQ_CST));
    fshm_unmap(m.base, m.size);
    return 0;
}

/* The sleeping half of a blocked receive (word "notify") or loan ("room"),
 * done by hand so that nothing but another process's wake-up ends it
 * (channel_receive.c and channel_lend.c look again every 100 ms on their
 * own). */
static int cmd_sleeper(const char *name, const char *which, const char *timeout)
{
    fshm_channel c;
    fshm_map m;
    int room = strcmp(which, "room") == 0;
    uint32_t *word, *waiters, v;
    int64_t deadline;
    if (attach(&c, &m, name) != 0)
        return 1;
    word = (uint32_t *)(c.base + (room ? C_ROOM : C_NOTIFY));
    waiters = (uint32_t *)(c.base + (room ? C_ROOM_WAITERS : C_WAITERS));
    fshm_add32(waiters, 1);
    v = fshm_load32(word, FSHM_SEQ_CST);
    say_n("head", fshm_channel_head(&c));
    say("sleeping", "1");
    deadline = fshm_monotonic_ns() + ms_ns(timeout);
    while (fshm_load32(word, FSHM_SEQ_CST) == v && fshm_monotonic_ns() < deadline)
        fshm_futex_wait(word, v, deadline - fshm_monotonic_ns());
    fshm_add32(waiters, -1);
    say("woken", fshm_load32(word, FSHM_SEQ_CST) != v ? "1" : "0");
#ifdef _WIN32
    {
        wchar_t wname[512];
        HANDLE sem;
        MultiByteToWideChar(CP_UTF8, 0, name, -1, wname, 480);
        wcscat(wname, room ? L".fastshm-room" : L".fastshm-wake");
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

/* ---- self-checking messages: [publisher u32][number u32][length u32]
 * [FNV-1a of all the rest u32][payload], payload bytes a function of the
 * three ---- */

static uint32_t fnv1a(const unsigned char *p, size_t n, uint32_t h)
{
    size_t i;
    for (i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static size_t make_msg(unsigned char *buf, uint32_t pub, uint32_t n)
{
    uint32_t len = 16 + (pub * 131u + n * 7u) % (SLOT_SIZE - 16 + 1), sum, i;
    for (i = 16; i < len; i++)
        buf[i] = (unsigned char)(pub * 31u + n + i);
    memcpy(buf, &pub, 4);
    memcpy(buf + 4, &n, 4);
    memcpy(buf + 8, &len, 4);
    sum = fnv1a(buf + 16, len - 16, fnv1a(buf, 12, 2166136261u));
    memcpy(buf + 12, &sum, 4);
    return len;
}

static int check_msg(const unsigned char *buf, size_t len, uint32_t *pub, uint32_t *n)
{
    uint32_t l, sum;
    if (len < 16)
        return 1;
    memcpy(pub, buf, 4);
    memcpy(n, buf + 4, 4);
    memcpy(&l, buf + 8, 4);
    memcpy(&sum, buf + 12, 4);
    return l != len || sum != fnv1a(buf + 16, len - 16, fnv1a(buf, 12, 2166136261u));
}

static int cmd_publisher(const char *name, uint32_t id, uint32_t count)
{
    fshm_channel c;
    fshm_map m;
    unsigned char buf[SLOT_SIZE];
    unsigned long full_waits = 0;
    uint32_t n;
    int rc = 0;
    if (attach(&c, &m, name) != 0)
        return 1;
    for (n = 1; n <= count; n++) {
        size_t len = make_msg(buf, id, n);
        fshm_loan l;
        /* Half the messages written into a loan, half copied by publish;
         * a first attempt that does not wait counts the times there was
         * no room. */
        if (n % 2) {
            rc = fshm_channel_try_loan(&c, len, &l);
            if (rc == FSHM_EFULL || rc == FSHM_EBUSY) {
                full_waits += rc == FSHM_EFULL;
                while ((rc = fshm_channel_loan(&c, len, &l, 100000000LL)) == FSHM_EFULL)
                    ;
            }
            if (rc == 0) {
                memcpy(l.data, buf, len);
                rc = fshm_channel_commit(&c, &l, len, -1, NULL);
            }
        } else {
            rc = fshm_channel_try_publish(&c, buf, len, NULL);
            if (rc == FSHM_EFULL || rc == FSHM_EBUSY) {
                full_waits += rc == FSHM_EFULL;
                while ((rc = fshm_channel_publish(&c, buf, len, 100000000LL, NULL)) ==
                       FSHM_EFULL)
                    ;
            }
        }
        if (rc != 0)
            break;
    }
    say("publish", code_name(rc));
    say_n("published", n - 1);
    say_n("full_waits", full_waits);
    fshm_unmap(m.base, m.size);
    return rc != 0;
}

static int cmd_subscriber(const char *name, unsigned long total, uint32_t pubs)
{
    fshm_channel c;
    fshm_map m;
    fshm_sub sub;
    uint32_t last[16] = {0};
    unsigned long got = 0, bad = 0, empty_waits = 0;
    uint64_t last_seq = 0;
    int rc;
    if (attach(&c, &m, name) != 0 || pubs >= 16)
        return 1;
    if ((rc = fshm_channel_subscribe(&c, &sub, -1)) != 0) {
        say("subscribe", code_name(rc));
        return 1;
    }
    say("ready", "1");
    while (got < total) {
        fshm_sample s;
        uint64_t missed = 0;
        uint32_t p, n;
        rc = fshm_channel_receive(&c, &sub, &s, &missed, 100000000LL);
        if (rc == FSHM_ETIMEOUT) {
            empty_waits++;
            if (empty_waits > 600)
                break; /* a minute without a message */
            continue;
        }
        if (rc != 0)
            break;
        if (check_msg(s.data, s.length, &p, &n) != 0 || p < 1 || p > pubs ||
            n != last[p] + 1 || s.seq != last_seq + 1 || missed != 0)
            bad++;
        else
            last[p] = n;
        last_seq = s.seq;
        got++;
        fshm_channel_release(&c, &sub, s.slot);
        if (got == 1) {
            /* After the first message, this subscriber leaves the rest
             * unread until a publisher sleeps for room (the room waiters
             * word): one found the ring full, however the processes were
             * scheduled.  Bounded: after 10 s it goes on. */
            int64_t until = fshm_monotonic_ns() + 10000000000LL;
            while (fshm_load32((uint32_t *)(c.base + C_ROOM_WAITERS), FSHM_SEQ_CST) == 0 &&
                   fshm_monotonic_ns() < until)
                fshm_sleep_ns(1000000);
        }
    }
    say("receive", code_name(rc));
    say_n("received", got);
    say_n("bad", bad);
    say_n("empty_waits", empty_waits);
    say_n("wraps", fshm_channel_head(&c) / c.slots);
    say("unsubscribe", code_name(fshm_channel_unsubscribe(&c, &sub)));
    fshm_unmap(m.base, m.size);
    return got != total || bad != 0;
}

static int expect(const char *key, int rc, int want, int *all)
{
    say(key, code_name(rc));
    if (rc != want)
        *all = 0;
    return rc;
}

static int cmd_errors(const char *name)
{
    fshm_channel c, c2;
    fshm_seg s;
    fshm_queue q;
    fshm_map m, m2;
    fshm_sub subs[5], gone;
    fshm_sample smp;
    fshm_loan l;
    char other[256], big[SLOT_SIZE + 1];
    int all = 1, kind = -1, i;
    memset(big, 'b', sizeof big);
    snprintf(other, sizeof other, "%s_other", name);
    expect("create_bad_slots", fshm_channel_open(&c, &m, name, FSHM_CREATE, 64, 1, 0, 4, 0,
                                                 0600), EINVAL, &all);
    expect("create_bad_history", fshm_channel_open(&c, &m, name, FSHM_CREATE, 64, 4, 4, 4, 0,
                                                   0600), EINVAL, &all);
    expect("create_bad_subscribers", fshm_channel_open(&c, &m, name, FSHM_CREATE, 64, 4, 0, 65,
                                                       0, 0600), EINVAL, &all);
    expect("create_bad_flags", fshm_channel_open(&c, &m, name, FSHM_CREATE, 64, 4, 0, 4, 2,
                                                 0600), EINVAL, &all);
    if (expect("create", fshm_channel_open(&c, &m, name, FSHM_CREATE, SLOT_SIZE, 4, 1, 4, 0,
                                           0600), 0, &all) != 0)
        return 1;
    expect("create_existing", fshm_channel_open(&c2, &m2, name, FSHM_CREATE, SLOT_SIZE, 4, 1, 4,
                                                0, 0600), EEXIST, &all);
    expect("attach_missing", fshm_channel_open(&c2, &m2, other, FSHM_ATTACH, 0, 0, 0, 0, 0, 0),
           ENOENT, &all);
    if (expect("attach", fshm_channel_open(&c2, &m2, name, FSHM_OPEN_OR_CREATE, 8, 2, 0, 1, 0,
                                           0600), 0, &all) == 0) {
        /* The channel as it was made, not as asked. */
        say_n("attached_slots", c2.slots);
        say_n("attached_slot_size", c2.slot_size);
        fshm_unmap(m2.base, m2.size);
    }
    expect("publish_too_big", fshm_channel_publish(&c, big, sizeof big, 0, NULL), FSHM_ETOOBIG,
           &all);
    expect("loan_too_big", fshm_channel_loan(&c, sizeof big, &l, 0), FSHM_ETOOBIG, &all);
    for (i = 0; i < 4; i++)
        expect("subscribe", fshm_channel_subscribe(&c, &subs[i], 0), 0, &all);
    expect("subscribe_full", fshm_channel_subscribe(&c, &subs[4], 0), FSHM_ESUBFULL, &all);
    expect("receive_nothing", fshm_channel_receive(&c, &subs[0], &smp, NULL, 0), FSHM_ETIMEOUT,
           &all);
    expect("receive_nothing_waiting", fshm_channel_receive(&c, &subs[0], &smp, NULL, 20000000LL),
           FSHM_ETIMEOUT, &all);
    for (i = 0; i < 4; i++)
        expect("publish", fshm_channel_publish(&c, "m", 1, 0, NULL), 0, &all);
    expect("publish_full", fshm_channel_publish(&c, "m", 1, 0, NULL), FSHM_EFULL, &all);
    expect("publish_full_waiting", fshm_channel_publish(&c, "m", 1, 20000000LL, NULL),
           FSHM_EFULL, &all);
    expect("try_loan_full", fshm_channel_try_loan(&c, 1, &l), FSHM_EFULL, &all);
    expect("wait_room_full", fshm_channel_wait_room(&c, 0), FSHM_ETIMEOUT, &all);
    say_n("subscribers", fshm_channel_subscribers(&c));
    gone = subs[3];
    expect("unsubscribe", fshm_channel_unsubscribe(&c, &subs[3]), 0, &all);
    expect("receive_unsubscribed", fshm_channel_receive(&c, &gone, &smp, NULL, 0), FSHM_ELOST,
           &all);
    expect("unsubscribe_twice", fshm_channel_unsubscribe(&c, &gone), FSHM_ELOST, &all);
    for (i = 0; i < 3; i++) {
        int k;
        for (k = 0; k < 4; k++)
            if (fshm_channel_receive(&c, &subs[i], &smp, NULL, 0) != 0 ||
                fshm_channel_release(&c, &subs[i], smp.slot) != 0)
                all = 0;
    }
    expect("wait_room", fshm_channel_wait_room(&c, 0), 0, &all);
    if (expect("loan", fshm_channel_loan(&c, 1, &l, 0), 0, &all) == 0) {
        memcpy(l.data, "x", 1);
        expect("commit_too_big", fshm_channel_commit(&c, &l, SLOT_SIZE + 1, 0, NULL),
               FSHM_ETOOBIG, &all);
        expect("discard", fshm_channel_discard(&c, &l), 0, &all);
        expect("commit_discarded", fshm_channel_commit(&c, &l, 1, 0, NULL), FSHM_ELOST, &all);
    }
    expect("release_bad_slot", fshm_channel_release(&c, &subs[0], 99), EINVAL, &all);
    expect("evict_other", fshm_channel_evict(&c, subs[0].index, 12345, 0), FSHM_EAGAIN, &all);
    expect("evict", fshm_channel_evict(&c, subs[0].index, fshm_self_id(), 0), 0, &all);
    expect("receive_evicted", fshm_channel_receive(&c, &subs[0], &smp, NULL, 0), FSHM_ELOST,
           &all);
    expect("break_lock_other", fshm_channel_break_lock(&c, 12345), FSHM_EAGAIN, &all);
    expect("reclaim", fshm_channel_reclaim(&c, 0), 0, &all);
    expect("channel_as_segment", fshm_seg_open(&s, &m2, name, FSHM_ATTACH, 0, 0), FSHM_EKIND,
           &all);
    expect("channel_as_queue", fshm_queue_open(&q, &m2, name, FSHM_OPEN_OR_CREATE, 64, 0, 0600),
           FSHM_EKIND, &all);
    expect("kind_of", fshm_kind_of(name, 0, &kind), 0, &all);
    say_n("kind", (unsigned long long)kind);
    if (kind != FSHM_KIND_CHANNEL)
        all = 0;
    if (expect("segment", fshm_seg_open(&s, &m2, other, FSHM_CREATE, 64, 0600), 0, &all) == 0) {
        expect("segment_as_channel", fshm_channel_open(&c2, &m, other, FSHM_ATTACH, 0, 0, 0, 0, 0,
                                                       0), FSHM_EKIND, &all);
        expect("segment_as_channel_open_or_create",
               fshm_channel_open(&c2, &m, other, FSHM_OPEN_OR_CREATE, 64, 4, 0, 1, 0, 0600),
               FSHM_EKIND, &all);
        fshm_unmap(m2.base, m2.size);
        fshm_unlink(other);
    }
    /* A corrupt header: the magic, then a hostile head. */
    {
        uint32_t magic = c.base[0];
        uint64_t head;
        c.base[0] ^= 0xFF;
        expect("corrupt_magic", fshm_channel_open(&c2, &m2, name, FSHM_ATTACH, 0, 0, 0, 0, 0, 0),
               FSHM_EFORMAT, &all);
        c.base[0] = (unsigned char)magic;
        memcpy(&head, c.base + 16, 8);
        memset(c.base + 16, 0xFF, 8);
        expect("corrupt_head_publish", fshm_channel_publish(&c, "m", 1, 0, NULL), FSHM_EFORMAT,
               &all);
        memcpy(c.base + 16, &head, 8);
    }
    for (i = 1; i < 3; i++)
        fshm_channel_unsubscribe(&c, &subs[i]);
    fshm_unmap(m.base, m.size);
    fshm_unlink(name);
    say_n("all_as_expected", (unsigned long long)all);
    return !all;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "";
    if (strcmp(cmd, "hold") == 0 && argc == 5)
        return cmd_hold(argv[2], argv[3], (uint32_t)strtoul(argv[4], NULL, 10));
    if (strcmp(cmd, "publish") == 0 && argc == 5)
        return cmd_publish(argv[2], argv[3], argv[4]);
    if (strcmp(cmd, "fill") == 0 && argc == 4)
        return cmd_fill(argv[2], argv[3]);
    if (strcmp(cmd, "lagger") == 0 && argc == 3)
        return cmd_lagger(argv[2]);
    if (strcmp(cmd, "receive") == 0 && argc == 4)
        return cmd_receive(argv[2], argv[3]);
    if (strcmp(cmd, "stat") == 0 && argc == 3)
        return cmd_stat(argv[2]);
    if (strcmp(cmd, "sleeper") == 0 && argc == 5)
        return cmd_sleeper(argv[2], argv[3], argv[4]);
    if (strcmp(cmd, "publisher") == 0 && argc == 5)
        return cmd_publisher(argv[2], (uint32_t)strtoul(argv[3], NULL, 10),
                             (uint32_t)strtoul(argv[4], NULL, 10));
    if (strcmp(cmd, "subscriber") == 0 && argc == 5)
        return cmd_subscriber(argv[2], strtoul(argv[3], NULL, 10),
                              (uint32_t)strtoul(argv[4], NULL, 10));
    if (strcmp(cmd, "errors") == 0 && argc == 3)
        return cmd_errors(argv[2]);
    fprintf(stderr, "usage: see the comment at the top of channel_check.c\n");
    return 2;
}
