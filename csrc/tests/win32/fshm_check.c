/*
 * A small command-line driver of fastshm's C API, built for Windows (run
 * under Wine in the test suite) and for POSIX from the same source, so the
 * two builds can be compared line by line.  tests/test_windows.py runs it;
 * every command prints `key=value` lines and exits 0 when it did what it
 * was asked, 1 otherwise.
 *
 *   hold NAME CAP MSG        open-or-create, store MSG, print ready, then
 *                            keep the mapping until a line (or EOF) on stdin
 *   find NAME CAP            open-or-create, load, then close and unlink
 *   attach NAME              attach and load, or print the error code
 *   errors NAME              the error cases, one line each
 *   raw NAME TEXT            a raw 1024-byte mapping: print what is there,
 *                            strcpy TEXT into it, hold until stdin, print again
 *   take-lock NAME           write this process's id into the writer lock
 *                            word and exit holding it
 *   store NAME MSG           attach and store
 *   writer NAME CAP SECONDS  stress writer (creates NAME)
 *   reader NAME SECONDS      stress reader: checks every load it makes
 *   sleeper NAME             register as a waiter and sleep on the notify
 *                            word with no timeout until a store wakes it;
 *                            report whether the wake semaphore exists
 *   wait-any NAME1 NAME2 MS  count itself a sleeper of both segments' notify
 *                            words and sleep in fshm_wait_words on them and
 *                            on a word of its own, which a thread bumps
 *                            (fshm_word_bump) when a line comes on stdin; MS
 *                            the timeout (-1: none); then which changed
 *   bump-quietly NAME        add one to the notify word and wake nobody
 */
#include "fastshm.h"
#include "atomics.h"

#include <errno.h>
#ifdef _WIN32
#include <windows.h>
#else
#include <pthread.h>
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Error codes by name: the Windows and POSIX builds have different errno
 * numbers for some of them, and the tests compare names. */
static const char *code_name(int rc)
{
    switch (rc) {
    case 0: return "OK";
    case ENOENT: return "ENOENT";
    case EEXIST: return "EEXIST";
    case EACCES: return "EACCES";
    case EINVAL: return "EINVAL";
    case ENOMEM: return "ENOMEM";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case EIO: return "EIO";
    case FSHM_EFORMAT: return "FSHM_EFORMAT";
    case FSHM_ETOOBIG: return "FSHM_ETOOBIG";
    case FSHM_ESMALL: return "FSHM_ESMALL";
    case FSHM_ETIMEOUT: return "FSHM_ETIMEOUT";
    case FSHM_ENOTREADY: return "FSHM_ENOTREADY";
    case FSHM_EEMPTY: return "FSHM_EEMPTY";
    case FSHM_EAGAIN: return "FSHM_EAGAIN";
    case FSHM_EVERSION: return "FSHM_EVERSION";
    case FSHM_EABANDONED: return "FSHM_EABANDONED";
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

/* Block until the driver writes a line or closes stdin. */
static void wait_for_stdin(void)
{
    char line[64];
    (void)fgets(line, sizeof line, stdin);
}

static int cmd_hold(const char *name, uint64_t cap, const char *msg)
{
    fshm_seg s;
    fshm_map m;
    uint64_t seq;
    int rc = fshm_seg_open(&s, &m, name, FSHM_OPEN_OR_CREATE, cap, 0600);
    say("open", code_name(rc));
    if (rc != 0)
        return 1;
    printf("created=%d\n", m.created);
    rc = fshm_store(&s, msg, strlen(msg), &seq);
    say("store", code_name(rc));
    say("ready", "1");
    wait_for_stdin();
    fshm_unmap(m.base, m.size);
    if (m.created)
        fshm_unlink(name);
    return rc != 0;
}

static int cmd_find(const char *name, uint64_t cap)
{
    fshm_seg s;
    fshm_map m;
    char buf[4096];
    size_t n = 0;
    uint64_t seq = 0;
    int rc = fshm_seg_open(&s, &m, name, FSHM_OPEN_OR_CREATE, cap, 0600);
    say("open", code_name(rc));
    if (rc != 0)
        return 1;
    printf("created=%d\n", m.created);
    rc = fshm_load(&s, buf, sizeof buf - 1, &n, &seq);
    say("load", code_name(rc));
    buf[rc == 0 ? n : 0] = '\0';
    say("message", buf);
    /* The delete of the original program: close, and unlink the name. */
    say("unmap", code_name(fshm_unmap(m.base, m.size)));
    say("unlink", code_name(fshm_unlink(name)));
    return rc != 0;
}

static int cmd_attach(const char *name)
{
    fshm_seg s;
    fshm_map m;
    char buf[4096];
    size_t n = 0;
    uint64_t seq = 0;
    int rc = fshm_seg_open(&s, &m, name, FSHM_ATTACH, 0, 0);
    say("attach", code_name(rc));
    if (rc != 0)
        return 0;
    rc = fshm_load(&s, buf, sizeof buf - 1, &n, &seq);
    buf[rc == 0 ? n : 0] = '\0';
    say("message", buf);
    fshm_unmap(m.base, m.size);
    return 0;
}

static int cmd_errors(const char *name)
{
    fshm_seg s, s2;
    fshm_map m, m2, raw;
    char missing[256], corrupt[256], buf[64], big[65];
    size_t n = 0;
    uint64_t seq = 0;
    int rc, bad = 0;

    snprintf(missing, sizeof missing, "%s_missing", name);
    snprintf(corrupt, sizeof corrupt, "%s_corrupt", name);

    rc = fshm_seg_open(&s, &m, name, FSHM_CREATE, 64, 0600);
    say("create", code_name(rc));
    if (rc != 0)
        return 1;
    say("store", code_name(fshm_store(&s, "previous", 8, &seq)));

    rc = fshm_seg_open(&s2, &m2, name, FSHM_CREATE, 64, 0600);
    say("create_existing", code_name(rc));
    bad |= rc != EEXIST;
    rc = fshm_seg_open(&s2, &m2, missing, FSHM_ATTACH, 0, 0);
    say("attach_missing", code_name(rc));
    bad |= rc != ENOENT;
    rc = fshm_map_open(&m2, missing, FSHM_ATTACH, 0, 0);
    say("raw_attach_missing", code_name(rc));
    bad |= rc != ENOENT;
    rc = fshm_map_open(&m2, "", FSHM_OPEN_OR_CREATE, 64, 0600);
    say("empty_name", code_name(rc));
    bad |= rc != EINVAL;

    memset(big, 'x', sizeof big);
    rc = fshm_store(&s, big, sizeof big, &seq);
    say("store_too_big", code_name(rc));
    bad |= rc != FSHM_ETOOBIG;
    rc = fshm_load(&s, buf, sizeof buf, &n, &seq);
    bad |= rc != 0 || n != 8 || memcmp(buf, "previous", 8) != 0 || seq != 1;
    printf("after_too_big=%.*s seq=%llu\n", (int)n, buf, (unsigned long long)seq);
    rc = fshm_load(&s, buf, 4, &n, &seq);
    say("load_small", code_name(rc));
    bad |= rc != FSHM_ESMALL;

    /* A segment whose magic is then overwritten through a raw mapping. */
    rc = fshm_seg_open(&s2, &m2, corrupt, FSHM_CREATE, 64, 0600);
    bad |= rc != 0;
    if (rc == 0) {
        rc = fshm_map_open(&raw, corrupt, FSHM_ATTACH, 0, 0);
        bad |= rc != 0;
        if (rc == 0) {
            memcpy(raw.base, "JUNK", 4);
            fshm_unmap(raw.base, raw.size);
        }
        rc = fshm_seg_open(&s, &raw, corrupt, FSHM_ATTACH, 0, 0);
        say("corrupt_header", code_name(rc));
        bad |= rc != FSHM_EFORMAT;
        fshm_unmap(m2.base, m2.size);
        fshm_unlink(corrupt);
    }
    fshm_unmap(m.base, m.size);
    fshm_unlink(name);
    say("all_as_expected", bad ? "0" : "1");
    return bad;
}

static int cmd_raw(const char *name, const char *text)
{
    fshm_map m;
    int rc = fshm_map_open(&m, name, FSHM_OPEN_OR_CREATE, 1024, 0600);
    say("open", code_name(rc));
    if (rc != 0)
        return 1;
    printf("created=%d\n", m.created);
    printf("read=%.1023s\n", (const char *)m.base);
    strcpy((char *)m.base, text);
    say("wrote", "1");
    wait_for_stdin();
    printf("read=%.1023s\n", (const char *)m.base);
    fflush(stdout);
    fshm_unmap(m.base, m.size);
    if (m.created)
        fshm_unlink(name);
    return 0;
}

static int cmd_take_lock(const char *name)
{
    fshm_map m;
    uint64_t id = fshm_self_id();
    int rc = fshm_map_open(&m, name, FSHM_ATTACH, 0, 0);
    say("attach", code_name(rc));
    if (rc != 0)
        return 1;
    /* The writer lock word of the header (docs/FORMAT.md), as a writer that
     * dies between taking the lock and releasing it leaves it. */
    memcpy((unsigned char *)m.base + 64, &id, sizeof id);
    printf("owner=%llu\n", (unsigned long long)id);
    fflush(stdout);
    return 0;
}

static int cmd_store(const char *name, const char *msg)
{
    fshm_seg s;
    fshm_map m;
    uint64_t seq = 0, before;
    int rc = fshm_seg_open(&s, &m, name, FSHM_ATTACH, 0, 0);
    say("attach", code_name(rc));
    if (rc != 0)
        return 1;
    before = fshm_lock_owner(&s);
    printf("owner_before=%llu dead=%d\n", (unsigned long long)before,
           fshm_owner_dead(before));
    rc = fshm_store(&s, msg, strlen(msg), &seq);
    say("store", code_name(rc));
    printf("seq=%llu owner_after=%llu\n", (unsigned long long)seq,
           (unsigned long long)fshm_lock_owner(&s));
    fflush(stdout);
    fshm_unmap(m.base, m.size);
    return rc != 0;
}

/* The sleeping half of fshm_wait, done by hand so the sleep has no timeout
 * at all: only a real wake-up from another process's store ends it (slot.c
 * would re-check every 100 ms).  Offsets from docs/FORMAT.md. */
static int cmd_sleeper(const char *name)
{
    fshm_seg s;
    fshm_map m;
    uint32_t *notify, *waiters, v;
    int rc = fshm_seg_open(&s, &m, name, FSHM_ATTACH, 0, 0);
    say("attach", code_name(rc));
    if (rc != 0)
        return 1;
    notify = (uint32_t *)(s.base + 24);
    waiters = (uint32_t *)(s.base + 28);
    fshm_add32(waiters, 1);
    v = fshm_load32(notify, FSHM_SEQ_CST);
    printf("seq=%llu\n", (unsigned long long)fshm_seq(&s));
    say("sleeping", "1");
    while (fshm_load32(notify, FSHM_SEQ_CST) == v)
        fshm_futex_wait(notify, v, -1);
    fshm_add32(waiters, -1);
    printf("woke_seq=%llu\n", (unsigned long long)fshm_seq(&s));
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
    say("woke", "1");
    fshm_unmap(m.base, m.size);
    return 0;
}

/* ---- waiting on many words: fastshm.aio's helper thread and wait_any ---- */

static uint32_t own_word; /* in this process's private memory */

#ifdef _WIN32
static DWORD WINAPI bump_on_stdin(LPVOID arg)
#else
static void *bump_on_stdin(void *arg)
#endif
{
    (void)arg;
    wait_for_stdin();
    fshm_word_bump(&own_word);
    return 0;
}

/* As the helper thread does it: count in, read the words, sleep on them
 * all.  A wait with a timeout that ends with nothing changed prints
 * FSHM_ETIMEOUT; one whose word changed without a wake-up (bump-quietly)
 * while it slept in the kernel ends by its timeout too, where polling
 * would have seen the change. */
static int cmd_wait_any(const char *name1, const char *name2, long long ms)
{
    fshm_seg s[2];
    fshm_map m[2];
    uint32_t *words[3], values[3];
    const char *names[2] = {name1, name2};
    char changed[16] = "";
    int i, rc;
#ifdef _WIN32
    HANDLE thread;
#else
    pthread_t thread;
#endif

    for (i = 0; i < 2; i++) {
        rc = fshm_seg_open(&s[i], &m[i], names[i], FSHM_ATTACH, 0, 0);
        if (rc != 0) {
            say("attach", code_name(rc));
            return 1;
        }
        words[i] = (uint32_t *)(s[i].base + 24);
        fshm_add32((uint32_t *)(s[i].base + 28), 1);
    }
    say("attach", "OK");
    words[2] = &own_word;
    for (i = 0; i < 3; i++)
        values[i] = fshm_word_load(words[i]);
#ifdef _WIN32
    thread = CreateThread(NULL, 0, bump_on_stdin, NULL, 0, NULL);
#else
    pthread_create(&thread, NULL, bump_on_stdin, NULL);
#endif
    printf("polls=%d\n", fshm_wait_words_polls());
    say("sleeping", "1");
    rc = fshm_wait_words(words, values, 3, ms < 0 ? -1 : ms * 1000000LL);
    say("wait", code_name(rc));
    for (i = 0; i < 3; i++) {
        if (fshm_word_load(words[i]) != values[i]) {
            size_t len = strlen(changed);
            snprintf(changed + len, sizeof changed - len, "%s%d", len ? "," : "", i);
        }
    }
    say("changed", changed[0] ? changed : "none");
    for (i = 0; i < 2; i++) {
        fshm_add32((uint32_t *)(s[i].base + 28), (uint32_t)-1);
        fshm_unmap(m[i].base, m[i].size);
    }
    /* The stdin thread ends with the process (the driver closes stdin). */
    (void)thread;
    return rc != 0 && rc != FSHM_ETIMEOUT;
}

static int cmd_bump_quietly(const char *name)
{
    fshm_seg s;
    fshm_map m;
    int rc = fshm_seg_open(&s, &m, name, FSHM_ATTACH, 0, 0);
    say("attach", code_name(rc));
    if (rc != 0)
        return 1;
    fshm_add32((uint32_t *)(s.base + 24), 1);
    fshm_unmap(m.base, m.size);
    return 0;
}

/* ---- stress: self-checking messages ----
 * [store number u64][length u64][payload...][FNV-1a of all before, u32];
 * payload byte i is a function of the number and i, so a message mixed from
 * two stores fails either the bytes or the checksum. */

static uint32_t fnv1a(const unsigned char *p, size_t n)
{
    uint32_t h = 2166136261u;
    while (n--) {
        h ^= *p++;
        h *= 16777619u;
    }
    return h;
}

static uint64_t rng_state = 88172645463325252ULL;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static size_t make_message(unsigned char *buf, uint64_t number, size_t cap)
{
    size_t len = 20 + (size_t)(rng() % (cap - 19)), i;
    uint32_t sum;
    memcpy(buf, &number, 8);
    memcpy(buf + 8, &len, 8);
    for (i = 16; i < len - 4; i++)
        buf[i] = (unsigned char)(number * 31 + i);
    sum = fnv1a(buf, len - 4);
    memcpy(buf + len - 4, &sum, 4);
    return len;
}

/* 0 when buf holds message `seq` intact. */
static int check_message(const unsigned char *buf, size_t n, uint64_t seq)
{
    uint64_t number, len;
    uint32_t sum;
    size_t i;
    if (n < 20)
        return 1;
    memcpy(&number, buf, 8);
    memcpy(&len, buf + 8, 8);
    memcpy(&sum, buf + n - 4, 4);
    if (number != seq || len != n || sum != fnv1a(buf, n - 4))
        return 1;
    for (i = 16; i < n - 4; i++)
        if (buf[i] != (unsigned char)(number * 31 + i))
            return 1;
    return 0;
}

static int cmd_writer(const char *name, uint64_t cap, double seconds)
{
    fshm_seg s;
    fshm_map m;
    unsigned char *buf = (unsigned char *)malloc((size_t)cap);
    uint64_t number = 0, seq;
    int64_t end;
    int rc = fshm_seg_open(&s, &m, name, FSHM_CREATE, cap, 0600);
    say("open", code_name(rc));
    if (rc != 0 || buf == NULL)
        return 1;
    /* A first message before readers come, so every load checks one. */
    rc = fshm_store(&s, buf, make_message(buf, ++number, (size_t)cap), &seq);
    say("ready", "1");
    end = fshm_monotonic_ns() + (int64_t)(seconds * 1e9);
    while (rc == 0 && fshm_monotonic_ns() < end) {
        rc = fshm_store(&s, buf, make_message(buf, ++number, (size_t)cap), &seq);
        if (seq != number)
            rc = -100;
    }
    say("store", code_name(rc));
    printf("stores=%llu\n", (unsigned long long)number);
    fflush(stdout);
    /* Keep the name until the readers are done (they attached long ago). */
    wait_for_stdin();
    fshm_unmap(m.base, m.size);
    fshm_unlink(name);
    free(buf);
    return rc != 0;
}

static int cmd_reader(const char *name, double seconds)
{
    fshm_seg s;
    fshm_map m;
    unsigned char *buf;
    uint64_t loads = 0, torn = 0, changes = 0, last = 0, seq = 0;
    size_t n;
    int64_t end;
    int rc = fshm_seg_open(&s, &m, name, FSHM_ATTACH, 0, 0);
    say("attach", code_name(rc));
    if (rc != 0)
        return 1;
    buf = (unsigned char *)malloc((size_t)s.capacity);
    end = fshm_monotonic_ns() + (int64_t)(seconds * 1e9);
    while (fshm_monotonic_ns() < end) {
        rc = fshm_load(&s, buf, (size_t)s.capacity, &n, &seq);
        if (rc != 0)
            break;
        loads++;
        if (check_message(buf, n, seq) != 0)
            torn++;
        if (seq < last)
            torn++; /* a message older than one already seen */
        else if (seq > last)
            changes++;
        last = seq;
    }
    say("load", code_name(rc));
    printf("loads=%llu changes=%llu torn=%llu\n", (unsigned long long)loads,
           (unsigned long long)changes, (unsigned long long)torn);
    fflush(stdout);
    fshm_unmap(m.base, m.size);
    free(buf);
    return rc != 0 || torn != 0;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "";
    if (strcmp(cmd, "hold") == 0 && argc == 5)
        return cmd_hold(argv[2], strtoull(argv[3], NULL, 10), argv[4]);
    if (strcmp(cmd, "find") == 0 && argc == 4)
        return cmd_find(argv[2], strtoull(argv[3], NULL, 10));
    if (strcmp(cmd, "attach") == 0 && argc == 3)
        return cmd_attach(argv[2]);
    if (strcmp(cmd, "errors") == 0 && argc == 3)
        return cmd_errors(argv[2]);
    if (strcmp(cmd, "raw") == 0 && argc == 4)
        return cmd_raw(argv[2], argv[3]);
    if (strcmp(cmd, "take-lock") == 0 && argc == 3)
        return cmd_take_lock(argv[2]);
    if (strcmp(cmd, "store") == 0 && argc == 4)
        return cmd_store(argv[2], argv[3]);
    if (strcmp(cmd, "writer") == 0 && argc == 5)
        return cmd_writer(argv[2], strtoull(argv[3], NULL, 10), atof(argv[4]));
    if (strcmp(cmd, "reader") == 0 && argc == 4)
        return cmd_reader(argv[2], atof(argv[3]));
    if (strcmp(cmd, "sleeper") == 0 && argc == 3)
        return cmd_sleeper(argv[2]);
    if (strcmp(cmd, "wait-any") == 0 && argc == 5)
        return cmd_wait_any(argv[2], argv[3], strtoll(argv[4], NULL, 10));
    if (strcmp(cmd, "bump-quietly") == 0 && argc == 3)
        return cmd_bump_quietly(argv[2]);
    fprintf(stderr, "usage: see the comment at the top of fshm_check.c\n");
    return 2;
}
