/*
 * Waiting on many wake-up words at once: one thread sleeps until any of up
 * to FSHM_WAIT_WORDS_MAX objects changes (fastshm.aio's helper thread, and
 * fastshm.wait_any).
 *
 * A waiter counts itself in an object's sleeper count (fshm_waiters_add),
 * reads the object's wake-up word (fshm_word_load), looks whether what it
 * waits for is there, and only then sleeps here with the value it read: the
 * sleeper half of the Dekker pair every store, put, take and publish makes
 * with its increment of the word and its look at the count.  So a change
 * either is seen by the look, or alters the word before the sleep (which
 * then returns at once), or wakes it.
 *
 * Linux 5.16 and later sleep in futex_waitv(2), on the shared futexes the
 * single waits use.  Windows sleeps in WaitForMultipleObjects on the named
 * semaphores the single waits use (one per object and word, released once
 * per counted sleeper), up to its 64 handles at a time, with an event for
 * the interrupt word in the process's own memory.  Elsewhere (other POSIX
 * systems, older kernels, a word without a semaphore) the words are polled
 * with a growing sleep, 20 us doubling up to FSHM_WAIT_WORDS_POLL_NS:
 * correct, but each change is seen up to that late.
 */

#include "atomics.h"
#include "fastshm.h"
#include "internal.h"

#include <errno.h>

#ifdef _WIN32
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#endif

#ifdef __linux__
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449 /* the same number on every architecture */
#endif

/* linux/futex.h's struct futex_waitv and __kernel_timespec, spelled out:
 * headers older than the kernel lack them. */
struct fshm__futex_waitv {
    uint64_t val;
    uint64_t uaddr;
    uint32_t flags;
    uint32_t reserved;
};
struct fshm__kernel_timespec {
    long long tv_sec;
    long long tv_nsec;
};
#define FSHM__FUTEX2_SIZE_U32 0x02 /* shared: no FUTEX2_PRIVATE */

/* Set when the kernel said ENOSYS once: poll from then on. */
static uint32_t no_waitv;
#endif

static int poll_words(uint32_t *const *words, const uint32_t *values, size_t n,
                      int64_t timeout_ns)
{
    int64_t step = 20000, now = fshm_monotonic_ns();
    int64_t deadline = timeout_ns < 0 || timeout_ns > INT64_MAX - now
                           ? INT64_MAX : now + timeout_ns;
    size_t i;
    int rc;

    for (;;) {
        for (i = 0; i < n; i++) {
            if (fshm_load32(words[i], FSHM_SEQ_CST) != values[i])
                return 0;
        }
        now = fshm_monotonic_ns();
        if (now >= deadline)
            return FSHM_ETIMEOUT;
        rc = fshm_sleep_ns(step < deadline - now ? step : deadline - now);
        if (rc == EINTR)
            return EINTR;
        if (step < FSHM_WAIT_WORDS_POLL_NS)
            step = step * 2 < FSHM_WAIT_WORDS_POLL_NS ? step * 2 : FSHM_WAIT_WORDS_POLL_NS;
    }
}

#ifdef _WIN32
/* A release of a semaphore this thread counted itself a sleeper of, or the
 * set of its interrupt word's event, ends the wait.  WaitForMultipleObjects
 * takes one count, of the first signalled: a count left on another is this
 * thread's too, and only ends a later wait early, for a look (as a timed-out
 * single wait's count does). */
static int wait_handles(uint32_t *const *words, const uint32_t *values, size_t n,
                        int64_t timeout_ns)
{
    void *handles[FSHM_WAIT_WORDS_MAX];
    DWORD ms, got;
    size_t i;
    int rc;

    if (fshm__wait_handles(words, n, handles) != 0)
        return poll_words(words, values, n, timeout_ns);
    rc = 0;
    for (i = 0; i < n; i++) {
        if (fshm_load32(words[i], FSHM_SEQ_CST) != values[i])
            break; /* changed already */
    }
    if (i == n) {
        if (timeout_ns < 0 || timeout_ns / 1000000 >= (int64_t)INFINITE)
            ms = INFINITE;
        else
            ms = (DWORD)((timeout_ns + 999999) / 1000000);
        got = WaitForMultipleObjects((DWORD)n, (const HANDLE *)handles, FALSE, ms);
        if (got == WAIT_TIMEOUT)
            rc = FSHM_ETIMEOUT;
        else if (got == WAIT_FAILED)
            rc = EINVAL;
    }
    fshm__close_wait_handles(handles, n);
    return rc;
}
#endif

int fshm_wait_words(uint32_t *const *words, const uint32_t *values, size_t n,
                    int64_t timeout_ns)
{
#ifdef __linux__
    struct fshm__futex_waitv w[FSHM_WAIT_WORDS_MAX];
    struct fshm__kernel_timespec ts, *tsp = NULL;
    struct timespec now;
    size_t i;
#endif
    if (n == 0 || n > FSHM_WAIT_WORDS_MAX)
        return EINVAL;
#ifdef __linux__
    if (fshm_load32(&no_waitv, FSHM_RELAXED))
        return poll_words(words, values, n, timeout_ns);
    for (i = 0; i < n; i++) {
        w[i].val = values[i];
        w[i].uaddr = (uint64_t)(uintptr_t)words[i];
        w[i].flags = FSHM__FUTEX2_SIZE_U32;
        w[i].reserved = 0;
    }
    if (timeout_ns >= 0) {
        /* futex_waitv takes an absolute time on the clock it is given. */
        if (clock_gettime(CLOCK_MONOTONIC, &now) != 0)
            return errno;
        ts.tv_sec = (long long)now.tv_sec + timeout_ns / 1000000000LL;
        ts.tv_nsec = (long long)now.tv_nsec + timeout_ns % 1000000000LL;
        if (ts.tv_nsec >= 1000000000LL) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000LL;
        }
        tsp = &ts;
    }
    if (syscall(SYS_futex_waitv, w, (unsigned)n, 0, tsp, CLOCK_MONOTONIC) >= 0)
        return 0; /* one was woken */
    switch (errno) {
    case EAGAIN:
        return 0; /* one differed already */
    case ETIMEDOUT:
        return FSHM_ETIMEOUT;
    case EINTR:
        return EINTR;
    case ENOSYS:
    case EPERM: /* a seccomp filter that does not know the call */
        fshm_store32(&no_waitv, 1, FSHM_RELAXED);
        return poll_words(words, values, n, timeout_ns);
    default:
        return errno;
    }
#elif defined(_WIN32)
    return wait_handles(words, values, n, timeout_ns);
#else
    return poll_words(words, values, n, timeout_ns);
#endif
}

int fshm_wait_words_polls(void)
{
#ifdef __linux__
    /* No waiters, no futex: EINVAL where the call exists. */
    if (syscall(SYS_futex_waitv, NULL, 0u, 0u, NULL, CLOCK_MONOTONIC) != 0 &&
        (errno == ENOSYS || errno == EPERM))
        fshm_store32(&no_waitv, 1, FSHM_RELAXED);
    return fshm_load32(&no_waitv, FSHM_RELAXED) != 0;
#elif defined(_WIN32)
    return 0;
#else
    return 1;
#endif
}

void fshm_waiters_add(uint32_t *waiters, int32_t delta)
{
    fshm_add32(waiters, (uint32_t)delta);
}

uint32_t fshm_word_load(const uint32_t *word)
{
    return fshm_load32((uint32_t *)word, FSHM_SEQ_CST);
}

void fshm_word_bump(uint32_t *word)
{
    fshm_add32(word, 1);
#ifdef __linux__
    fshm_futex_wake(word, 1);
#elif defined(_WIN32)
    fshm__local_wake(word);
#endif
}
