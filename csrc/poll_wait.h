/*
 * Waiting for a word to change by polling it with a growing sleep (20 us,
 * doubling up to 1 ms), where no kernel primitive fits: POSIX systems other
 * than Linux, and Windows when a segment's semaphore cannot be made.
 * Internal to the C core.
 */
#ifndef FASTSHM_POLL_WAIT_H
#define FASTSHM_POLL_WAIT_H

#include "atomics.h"
#include "fastshm.h"

static int fshm_poll_wait(uint32_t *addr, uint32_t expected, int64_t timeout_ns)
{
    int64_t step = 20000, now = fshm_monotonic_ns();
    int64_t deadline = timeout_ns < 0 || timeout_ns > INT64_MAX - now
                           ? INT64_MAX : now + timeout_ns;

    while (fshm_load32(addr, FSHM_ACQUIRE) == expected) {
        now = fshm_monotonic_ns();
        if (now >= deadline)
            return 0;
        fshm_sleep_ns(step < deadline - now ? step : deadline - now);
        if (step < 1000000)
            step *= 2;
    }
    return 0;
}

#endif /* FASTSHM_POLL_WAIT_H */
