/*
 * The handful of atomic operations slot.c, queue.c and the channel's files need, on
 * GCC/Clang builtins or MSVC intrinsics.  Internal to the C core; not part
 * of the public API.
 */
#ifndef FASTSHM_ATOMICS_H
#define FASTSHM_ATOMICS_H

#include <stdint.h>

#if defined(_MSC_VER) && !defined(__clang__)
/* The loads and stores below are plain 64-bit accesses, atomic only on a
 * 64-bit target (32-bit x86 splits them in two). */
#if !defined(_M_X64) && !defined(_M_ARM64)
#error "fastshm needs a 64-bit target (x64 or ARM64) when built with MSVC"
#endif
#include <intrin.h>
#include <windows.h>
/* x86-64 and ARM64 MSVC: aligned 32/64-bit loads and stores are atomic.
 * Interlocked* are full barriers; plain volatile accesses with
 * /volatile:iso need explicit barriers, so loads and stores below are
 * bracketed with compiler barriers and MemoryBarrier() where ordering
 * matters. */
#define FSHM_RELAXED 0
#define FSHM_ACQUIRE 1
#define FSHM_RELEASE 2
#define FSHM_SEQ_CST 3
static __inline uint64_t fshm_load64(const uint64_t *p, int order)
{
    uint64_t v = *(const volatile uint64_t *)p;
    if (order != FSHM_RELAXED) MemoryBarrier();
    return v;
}
static __inline uint32_t fshm_load32(const uint32_t *p, int order)
{
    uint32_t v = *(const volatile uint32_t *)p;
    if (order != FSHM_RELAXED) MemoryBarrier();
    return v;
}
static __inline void fshm_store64(uint64_t *p, uint64_t v, int order)
{
    if (order != FSHM_RELAXED) MemoryBarrier();
    *(volatile uint64_t *)p = v;
    if (order == FSHM_SEQ_CST) MemoryBarrier();
}
static __inline void fshm_store32(uint32_t *p, uint32_t v, int order)
{
    if (order != FSHM_RELAXED) MemoryBarrier();
    *(volatile uint32_t *)p = v;
    if (order == FSHM_SEQ_CST) MemoryBarrier();
}
static __inline int fshm_cas64(uint64_t *p, uint64_t *expected, uint64_t desired)
{
    uint64_t seen = (uint64_t)_InterlockedCompareExchange64(
        (volatile __int64 *)p, (__int64)desired, (__int64)*expected);
    if (seen == *expected) return 1;
    *expected = seen;
    return 0;
}
static __inline uint32_t fshm_add32(uint32_t *p, int32_t d)
{
    return (uint32_t)_InterlockedExchangeAdd((volatile long *)p, (long)d);
}
/* Bit sets and clears of a 64-bit word (a channel slot's pins): full
 * barriers, as every Interlocked* call. */
static __inline uint64_t fshm_or64(uint64_t *p, uint64_t bits)
{
    return (uint64_t)_InterlockedOr64((volatile __int64 *)p, (__int64)bits);
}
static __inline uint64_t fshm_and64(uint64_t *p, uint64_t bits)
{
    return (uint64_t)_InterlockedAnd64((volatile __int64 *)p, (__int64)bits);
}
#define fshm_fence(order) MemoryBarrier()
#define fshm_cpu_relax() YieldProcessor()

#else /* GCC, Clang, MinGW */

/* The format's 64-bit words are shared between processes: an atomics
 * library that emulates them with a lock private to one process would be
 * silently wrong. */
_Static_assert(__atomic_always_lock_free(8, 0),
               "fastshm needs lock-free 64-bit atomics on this target");

#define FSHM_RELAXED __ATOMIC_RELAXED
#define FSHM_ACQUIRE __ATOMIC_ACQUIRE
#define FSHM_RELEASE __ATOMIC_RELEASE
#define FSHM_SEQ_CST __ATOMIC_SEQ_CST
#define fshm_load64(p, order) __atomic_load_n((p), (order))
#define fshm_load32(p, order) __atomic_load_n((p), (order))
#define fshm_store64(p, v, order) __atomic_store_n((p), (v), (order))
#define fshm_store32(p, v, order) __atomic_store_n((p), (v), (order))
/* Compare-and-swap, acquire and release on success (the winner reads what
 * the previous owner wrote, and what it wrote before is seen by whoever
 * acquires the word from it), relaxed on failure (the loser only retries). */
#define fshm_cas64(p, expected, desired)                                   \
    __atomic_compare_exchange_n((p), (expected), (desired), 0,             \
                                __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)
#define fshm_add32(p, d) __atomic_fetch_add((p), (d), __ATOMIC_SEQ_CST)
/* Seq_cst bit sets and clears of a 64-bit word (a channel slot's pins). */
#define fshm_or64(p, bits) __atomic_fetch_or((p), (bits), __ATOMIC_SEQ_CST)
#define fshm_and64(p, bits) __atomic_fetch_and((p), (bits), __ATOMIC_SEQ_CST)
#define fshm_fence(order) __atomic_thread_fence(order)
#if defined(__x86_64__) || defined(__i386__)
#define fshm_cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define fshm_cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#else
#define fshm_cpu_relax() __asm__ __volatile__("" ::: "memory")
#endif

#endif

#endif /* FASTSHM_ATOMICS_H */
