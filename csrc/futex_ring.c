/*
 * Sleeping on wake-up words from an event loop: an io_uring whose futex
 * waits (IORING_OP_FUTEX_WAIT, Linux 6.7 and later) end in completions, and
 * whose file descriptor an event loop watches like a socket.
 *
 * A writer's store, put or publish wakes the shared futex of its object's
 * wake-up word, as for any sleeper; a wait queued here then completes, and
 * the ring's descriptor becomes readable: the loop's own epoll wakes, with
 * no thread between the writer and the loop.  fastshm.aio queues one wait
 * per word its tasks sleep on (one ring per event loop) and reads the
 * completions when the descriptor is readable.
 *
 * The waiter protocol is the one of wait_words.c: count in the object's
 * sleeper count, read the word, look, then queue the wait with the value
 * read (the kernel compares it again: a change in between completes the
 * wait at once, with -EAGAIN).
 *
 * Not Linux, io_uring refused (a seccomp profile, io_uring_disabled), or a
 * kernel without the futex operations: fshm_futex_ring_open says so, and
 * fastshm.aio wakes its loops from a helper thread instead.
 *
 * One thread uses a ring at a time (the loop's): nothing here locks.
 */

#include "fastshm.h"

#include <errno.h>
#include <stdlib.h>

#if defined(__linux__)
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_io_uring_setup
#define SYS_io_uring_setup 425 /* the same numbers on every architecture */
#endif
#ifndef SYS_io_uring_enter
#define SYS_io_uring_enter 426
#endif
#ifndef SYS_io_uring_register
#define SYS_io_uring_register 427
#endif

/* The kernel's io_uring ABI (linux/io_uring.h), spelled out: the headers of
 * older build systems (manylinux's among them) lack it, or lack the futex
 * operations (Linux 6.7).  The layouts are fixed by the kernel's ABI. */
struct fshm__sqe {
    uint8_t opcode;
    uint8_t flags;
    uint16_t ioprio;
    int32_t fd;
    uint64_t off; /* addr2 */
    uint64_t addr;
    uint32_t len;
    uint32_t op_flags; /* futex_flags */
    uint64_t user_data;
    uint16_t buf_index;
    uint16_t personality;
    int32_t file_index;
    uint64_t addr3;
    uint64_t pad;
};
struct fshm__cqe {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
};
struct fshm__sq_offsets {
    uint32_t head, tail, ring_mask, ring_entries, flags, dropped, array, resv1;
    uint64_t user_addr;
};
struct fshm__cq_offsets {
    uint32_t head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1;
    uint64_t user_addr;
};
struct fshm__params {
    uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle, features, wq_fd;
    uint32_t resv[3];
    struct fshm__sq_offsets sq_off;
    struct fshm__cq_offsets cq_off;
};
struct fshm__probe {
    uint8_t last_op;
    uint8_t ops_len;
    uint16_t resv;
    uint32_t resv2[3];
    struct {
        uint8_t op;
        uint8_t resv;
        uint16_t flags;
        uint32_t resv2;
    } ops[256];
};
typedef char fshm__sqe_is_64_bytes[sizeof(struct fshm__sqe) == 64 ? 1 : -1];
typedef char fshm__cqe_is_16_bytes[sizeof(struct fshm__cqe) == 16 ? 1 : -1];
typedef char fshm__params_is_120_bytes[sizeof(struct fshm__params) == 120 ? 1 : -1];
typedef char fshm__addr3_at_48[offsetof(struct fshm__sqe, addr3) == 48 ? 1 : -1];

#define FSHM__SETUP_CQSIZE (1U << 3)
#define FSHM__SETUP_CLAMP (1U << 4)
#define FSHM__FEAT_SINGLE_MMAP (1U << 0)
#define FSHM__FEAT_NODROP (1U << 1)
#define FSHM__OFF_SQ_RING 0ULL
#define FSHM__OFF_SQES 0x10000000ULL
#define FSHM__OP_ASYNC_CANCEL 14
#define FSHM__OP_FUTEX_WAIT 51
#define FSHM__REGISTER_PROBE 8
#define FSHM__OP_SUPPORTED (1U << 0)
#define FSHM__FUTEX2_SIZE_U32 0x02 /* shared: no FUTEX2_PRIVATE */
#define FSHM__FUTEX_BITSET_ANY 0xffffffffu

/* Completions the kernel keeps before its overflow list (which it also
 * keeps: FSHM__FEAT_NODROP): one per word a loop sleeps on at once. */
#define RING_SQ 64
#define RING_CQ 4096

struct fshm_futex_ring {
    int fd;
    void *rings;
    size_t rings_size;
    struct fshm__sqe *sqes;
    size_t sqes_size;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct fshm__cqe *cqes;
};

static int ring_setup(unsigned entries, struct fshm__params *p)
{
    return (int)syscall(SYS_io_uring_setup, entries, p);
}

/* Whether the kernel knows IORING_OP_FUTEX_WAIT (6.7 and later). */
static int futex_wait_supported(int fd)
{
    struct fshm__probe pr;
    memset(&pr, 0, sizeof pr);
    if (syscall(SYS_io_uring_register, fd, FSHM__REGISTER_PROBE, &pr, 256) < 0)
        return 0;
    return pr.last_op >= FSHM__OP_FUTEX_WAIT &&
           (pr.ops[FSHM__OP_FUTEX_WAIT].flags & FSHM__OP_SUPPORTED);
}

int fshm_futex_ring_open(fshm_futex_ring **out)
{
    struct fshm__params p;
    fshm_futex_ring *r;
    unsigned char *cq;
    size_t sq_size, cq_size;
    int fd, err;

    *out = NULL;
    memset(&p, 0, sizeof p);
    p.flags = FSHM__SETUP_CQSIZE | FSHM__SETUP_CLAMP;
    p.cq_entries = RING_CQ;
    fd = ring_setup(RING_SQ, &p);
    if (fd < 0)
        return errno ? errno : ENOSYS;
    if (!(p.features & FSHM__FEAT_SINGLE_MMAP) || !(p.features & FSHM__FEAT_NODROP) ||
        !futex_wait_supported(fd)) {
        close(fd);
        return ENOSYS;
    }
    r = calloc(1, sizeof *r);
    if (r == NULL) {
        close(fd);
        return ENOMEM;
    }
    r->fd = fd;
    sq_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct fshm__cqe);
    r->rings_size = sq_size > cq_size ? sq_size : cq_size;
    r->rings = mmap(NULL, r->rings_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                    fd, FSHM__OFF_SQ_RING);
    if (r->rings == MAP_FAILED) {
        err = errno;
        close(fd);
        free(r);
        return err;
    }
    r->sqes_size = p.sq_entries * sizeof(struct fshm__sqe);
    r->sqes = mmap(NULL, r->sqes_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                   fd, FSHM__OFF_SQES);
    if (r->sqes == MAP_FAILED) {
        err = errno;
        munmap(r->rings, r->rings_size);
        close(fd);
        free(r);
        return err;
    }
    r->sq_head = (unsigned *)((unsigned char *)r->rings + p.sq_off.head);
    r->sq_tail = (unsigned *)((unsigned char *)r->rings + p.sq_off.tail);
    r->sq_mask = (unsigned *)((unsigned char *)r->rings + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)((unsigned char *)r->rings + p.sq_off.array);
    cq = (unsigned char *)r->rings;
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct fshm__cqe *)(cq + p.cq_off.cqes);
    *out = r;
    return 0;
}

int fshm_futex_ring_fd(const fshm_futex_ring *r)
{
    return r->fd;
}

/* Submit the entry made in *sqe: 0 or an errno value.  Every entry is
 * submitted before the next is made, so the queue holds at most this one. */
static int submit(fshm_futex_ring *r, const struct fshm__sqe *made)
{
    unsigned tail = *r->sq_tail; /* only this thread writes it */
    unsigned i = tail & *r->sq_mask;
    long rc;

    r->sqes[i] = *made;
    r->sq_array[i] = i;
    __atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
    do {
        rc = syscall(SYS_io_uring_enter, r->fd, 1, 0, 0, NULL, 0);
    } while (rc < 0 && errno == EINTR);
    if (rc == 1)
        return 0;
    /* Not consumed (EBUSY: completions to read first, ENOMEM, ...): take it
     * back, so the next entry goes in its place. */
    if (__atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE) == tail)
        __atomic_store_n(r->sq_tail, tail, __ATOMIC_RELEASE);
    return rc < 0 ? errno : EAGAIN;
}

int fshm_futex_ring_wait(fshm_futex_ring *r, uint32_t *word, uint32_t value, uint64_t tag)
{
    struct fshm__sqe sqe;

    memset(&sqe, 0, sizeof sqe);
    sqe.opcode = FSHM__OP_FUTEX_WAIT;
    sqe.fd = FSHM__FUTEX2_SIZE_U32;
    sqe.addr = (uint64_t)(uintptr_t)word;
    sqe.off = value; /* addr2: the expected value */
    sqe.addr3 = FSHM__FUTEX_BITSET_ANY;
    sqe.user_data = tag;
    return submit(r, &sqe);
}

int fshm_futex_ring_cancel(fshm_futex_ring *r, uint64_t tag)
{
    struct fshm__sqe sqe;

    memset(&sqe, 0, sizeof sqe);
    sqe.opcode = FSHM__OP_ASYNC_CANCEL;
    sqe.fd = -1;
    sqe.addr = tag;
    sqe.user_data = 0; /* its own completion: tag 0, never a wait's */
    return submit(r, &sqe);
}

int fshm_futex_ring_reap(fshm_futex_ring *r, uint64_t *tags, int32_t *results, int max)
{
    unsigned head = *r->cq_head; /* only this thread writes it */
    unsigned tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
    int n = 0;

    while (head != tail && n < max) {
        const struct fshm__cqe *cqe = &r->cqes[head & *r->cq_mask];
        tags[n] = cqe->user_data;
        results[n] = cqe->res;
        n++;
        head++;
    }
    __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
    return n;
}

void fshm_futex_ring_close(fshm_futex_ring *r)
{
    if (r == NULL)
        return;
    munmap(r->sqes, r->sqes_size);
    munmap(r->rings, r->rings_size);
    close(r->fd); /* cancels the waits still queued */
    free(r);
}

#else /* not Linux: no futex waits through an io_uring */

int fshm_futex_ring_open(fshm_futex_ring **out)
{
    *out = NULL;
    return ENOSYS;
}

int fshm_futex_ring_fd(const fshm_futex_ring *r)
{
    (void)r;
    return -1;
}

int fshm_futex_ring_wait(fshm_futex_ring *r, uint32_t *word, uint32_t value, uint64_t tag)
{
    (void)r;
    (void)word;
    (void)value;
    (void)tag;
    return ENOSYS;
}

int fshm_futex_ring_cancel(fshm_futex_ring *r, uint64_t tag)
{
    (void)r;
    (void)tag;
    return ENOSYS;
}

int fshm_futex_ring_reap(fshm_futex_ring *r, uint64_t *tags, int32_t *results, int max)
{
    (void)r;
    (void)tags;
    (void)results;
    (void)max;
    return 0;
}

void fshm_futex_ring_close(fshm_futex_ring *r)
{
    (void)r;
}

#endif
