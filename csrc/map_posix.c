/*
 * The mapping layer on POSIX: shm_open / ftruncate / fstat / mmap, and the
 * process and futex primitives slot.c builds on.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE
#endif
#include "fastshm.h"
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

#ifndef NAME_MAX
#define NAME_MAX 255
#endif

size_t fshm_name_max(void)
{
#ifdef __APPLE__
    return 30; /* PSHMNAMLEN is 31, and the leading '/' counts */
#else
    return NAME_MAX;
#endif
}

/* Commit the object's memory now (Linux), so a full /dev/shm is an ENOSPC
 * here rather than a SIGBUS at the first write. */
static int reserve_fd(int fd, size_t size)
{
#ifdef __linux__
    return posix_fallocate(fd, 0, (off_t)size);
#else
    (void)fd;
    (void)size;
    return 0;
#endif
}

#ifdef __linux__
/* The mode bit a new object carries while a fastshm process makes it: set
 * by the open that creates the name, so it is there from the first instant,
 * and cleared when the header is published.  Linux keeps it on a shared-
 * memory object and gives it no meaning there (BSDs refuse it on files). */
#define MAKING_MODE S_ISVTX
#else
#define MAKING_MODE 0
#endif

#ifdef __linux__
/* An existing name is opened without blocking: a FIFO made under it would
 * otherwise wait for a writer (glibc and musl pass the flag to open; a
 * shared-memory object ignores it). */
#define ATTACH_FLAGS O_NONBLOCK
#else
#define ATTACH_FLAGS 0
#endif

/* What an open of "/name" that failed with `err` means: FSHM_ENOTREG when
 * the name holds something other than shared memory, which glibc reports
 * as EINVAL (a directory) and O_NOFOLLOW as ELOOP (a symbolic link). */
static int open_error(const char *path, int err)
{
#ifdef __linux__
    char full[NAME_MAX + 16];
    struct stat st;
    if ((err == EINVAL || err == ELOOP || err == EISDIR) &&
        snprintf(full, sizeof full, "/dev/shm%s", path) < (int)sizeof full &&
        lstat(full, &st) == 0 && !S_ISREG(st.st_mode))
        return FSHM_ENOTREG;
#else
    (void)path;
#endif
    return err;
}

/* "/name" into buf; EINVAL / ENAMETOOLONG for names POSIX cannot hold. */
static int posix_name(char *buf, size_t bufsize, const char *name)
{
    size_t len;
    if (name == NULL || name[0] == '\0' || strchr(name, '/') != NULL)
        return EINVAL;
    len = strlen(name);
    if (len > fshm_name_max() || len + 2 > bufsize)
        return ENAMETOOLONG;
    buf[0] = '/';
    memcpy(buf + 1, name, len + 1);
    return 0;
}

/* The init lock of an object this process has just created, taken before
 * it has a size.  An opener that found the name unfinished and no one
 * holding the lock may have taken the object over in the instant between
 * the creation and this lock: then it has a size, and FSHM_EAGAIN says to
 * open it as it stands. */
static int lock_new(int fd)
{
    struct stat st;
    while (flock(fd, LOCK_EX) != 0) {
        if (errno != EINTR)
            return 0; /* no flock here: the lock word alone marks the making */
    }
    if (fstat(fd, &st) != 0)
        return errno;
    if (st.st_size != 0) {
        flock(fd, LOCK_UN);
        return FSHM_EAGAIN;
    }
    return 0;
}

int fshm_map_open(fshm_map *m, const char *name, int how, size_t size,
                  unsigned mode)
{
    char path[NAME_MAX + 2];
    struct stat st;
    int fd = -1, rc, created = 0, readonly = 0, tries;
    int reserve = how & FSHM_RESERVE, defer = how & FSHM_DEFER_RESERVE;
    int any_owner = how & FSHM_ANY_OWNER;
    unsigned making = defer && (how & FSHM__INIT_LOCK) ? MAKING_MODE : 0;
    int init_lock = defer && (how & FSHM__INIT_LOCK);
    void *base;

    m->base = NULL;
    m->size = 0;
    m->created = 0;
    m->readonly = 0;
    m->owner = -1;
    m->fd = -1;
    if ((rc = posix_name(path, sizeof path, name)) != 0)
        return rc;
    how &= FSHM_HOW_MASK;
    if (how != FSHM_ATTACH && how != FSHM_CREATE && how != FSHM_OPEN_OR_CREATE)
        return EINVAL;
    if (how != FSHM_ATTACH && (size == 0 || (off_t)size < 0))
        return EINVAL;

    /* Open-or-create: the name can vanish between a failed O_EXCL and the
     * attach (another process deleted it), so go round a few times. */
    for (tries = 0; fd < 0; tries++) {
        if (how != FSHM_ATTACH) {
            fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL, (mode_t)(mode | making));
            if (fd >= 0) {
                created = 1;
                break;
            }
            if (errno != EEXIST || how == FSHM_CREATE)
                return errno;
        }
        fd = shm_open(path, O_RDWR | ATTACH_FLAGS, 0);
        if (fd < 0 && errno == EACCES) {
            /* Readable but not writable for us (a 0644 segment of another
             * user, our own 0400 one): readers can still load and wait. */
            fd = shm_open(path, O_RDONLY | ATTACH_FLAGS, 0);
            readonly = fd >= 0;
        }
        if (fd < 0 && (errno != ENOENT || how == FSHM_ATTACH || tries >= 100))
            return open_error(path, errno);
    }

    if (created) {
        if (init_lock && (rc = lock_new(fd)) != 0) {
            /* Not ours to remove: another opener made it anew. */
            close(fd);
            return rc == FSHM_EAGAIN && how == FSHM_CREATE ? EEXIST : rc;
        }
        /* shm_open's mode passes through the umask; the caller asked for
         * exactly `mode`. */
        if (fchmod(fd, (mode_t)(mode | making)) != 0 || ftruncate(fd, (off_t)size) != 0)
            goto fail;
        m->owner = (int64_t)geteuid();
        if (reserve && !defer && (rc = reserve_fd(fd, size)) != 0) {
            errno = rc;
            goto fail;
        }
    } else {
        if (fstat(fd, &st) != 0)
            goto fail;
        if (!S_ISREG(st.st_mode)) {
            close(fd);
            return FSHM_ENOTREG;
        }
        m->owner = (int64_t)st.st_uid;
        /* Trust only our own objects and root's: anyone else could have made
         * the name first to read our messages. */
        if (!any_owner && st.st_uid != geteuid() && st.st_uid != 0) {
            close(fd);
            return FSHM_EOWNER;
        }
        if (st.st_size == 0) {
            close(fd);
            return FSHM_EEMPTY;
        }
        if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX) {
            close(fd);
            return EFBIG;
        }
        size = (size_t)st.st_size;
    }
    base = mmap(NULL, size, readonly ? PROT_READ : PROT_READ | PROT_WRITE, MAP_SHARED,
                fd, 0);
    if (base == MAP_FAILED)
        goto fail;
    m->base = base;
    m->size = size;
    m->created = created;
    m->readonly = readonly;
    if (created && reserve && defer) {
        m->fd = fd; /* for fshm_map_reserve */
    } else {
        /* The mapping keeps the object alive; the descriptor is not needed. */
        close(fd);
    }
    return 0;

fail:
    rc = errno;
    if (created)
        shm_unlink(path);
    close(fd);
    return rc;
}

int fshm_map_reserve(fshm_map *m)
{
    int rc = fshm__map_reserve(m);
    if (m->fd >= 0) {
        close(m->fd);
        m->fd = -1;
    }
    return rc;
}

/* ---- the init lock (internal.h) ---- */

int fshm__map_claim(fshm_map *m, const char *name, int how_flags, int *state)
{
    char path[NAME_MAX + 2];
    struct stat st;
    int fd, rc, readonly = 0, locked = 1;
    void *base = NULL;

    m->base = NULL;
    m->size = 0;
    m->created = 0;
    m->readonly = 0;
    m->owner = -1;
    m->fd = -1;
    *state = 0;
    if ((rc = posix_name(path, sizeof path, name)) != 0)
        return rc;
    fd = shm_open(path, O_RDWR | ATTACH_FLAGS, 0);
    if (fd < 0 && errno == EACCES) {
        /* flock needs no write access: a reader can still tell. */
        fd = shm_open(path, O_RDONLY | ATTACH_FLAGS, 0);
        readonly = 1;
    }
    if (fd < 0)
        return open_error(path, errno);
    if (fstat(fd, &st) != 0)
        goto fail;
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return FSHM_ENOTREG;
    }
    m->owner = (int64_t)st.st_uid;
    if (!(how_flags & FSHM_ANY_OWNER) && st.st_uid != geteuid() && st.st_uid != 0) {
        close(fd);
        return FSHM_EOWNER;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        rc = errno;
        if (rc == EWOULDBLOCK || rc == EAGAIN) {
            close(fd);
            return FSHM_EBUSY; /* its maker is at work, and alive */
        }
        locked = 0; /* no flock here: judge by the lock word alone */
    }
    /* Again under the lock: the size may have changed before it. */
    if (fstat(fd, &st) != 0)
        goto fail;
    if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX) {
        errno = EFBIG;
        goto fail;
    }
    if (st.st_size > 0) {
        base = mmap(NULL, (size_t)st.st_size, readonly ? PROT_READ : PROT_READ | PROT_WRITE,
                    MAP_SHARED, fd, 0);
        if (base == MAP_FAILED)
            goto fail;
    }
    m->base = base;
    m->size = (size_t)st.st_size;
    m->readonly = readonly;
    m->fd = fd;
    *state = (locked ? FSHM__LOCKED : 0) |
             (MAKING_MODE != 0 && (st.st_mode & MAKING_MODE) ? FSHM__MAKING : 0);
    return 0;

fail:
    rc = errno;
    close(fd);
    return rc;
}

int fshm__map_adopt(fshm_map *m, size_t need)
{
    struct stat st;
    void *base;
    if (m->fd < 0 || m->readonly)
        return EACCES;
    if (fstat(m->fd, &st) != 0)
        return errno;
    /* Marked first: should this process die too, the next opener knows. */
    if (MAKING_MODE != 0 && fchmod(m->fd, (st.st_mode & 07777) | MAKING_MODE) != 0)
        return errno;
    if (m->size < need) {
        if (ftruncate(m->fd, (off_t)need) != 0)
            return errno;
        base = mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
        if (base == MAP_FAILED)
            return errno;
        fshm_unmap(m->base, m->size);
        m->base = base;
        m->size = need;
    }
    m->created = 1;
    return 0;
}

int fshm__map_reserve(fshm_map *m)
{
    if (m->fd < 0)
        return 0;
    return reserve_fd(m->fd, m->size);
}

void fshm__map_done(fshm_map *m, unsigned mode)
{
    if (m->fd < 0)
        return;
    /* The making mark goes with the lock; a failure leaves a bit that
     * nobody reads on a finished object. */
    if (MAKING_MODE != 0)
        (void)fchmod(m->fd, (mode_t)mode);
    flock(m->fd, LOCK_UN);
    close(m->fd);
    m->fd = -1;
}

void fshm__map_release(fshm_map *m)
{
    if (m->fd >= 0) {
        /* Unlocked explicitly: the mapping keeps the open file, and with it
         * the lock, alive after the descriptor closes. */
        flock(m->fd, LOCK_UN);
        close(m->fd);
        m->fd = -1;
    }
    fshm_unmap(m->base, m->size);
    m->base = NULL;
}

int fshm_unmap(void *base, size_t size)
{
    if (base == NULL)
        return 0;
    return munmap(base, size) == 0 ? 0 : errno;
}

int fshm_unlink(const char *name)
{
    char path[NAME_MAX + 2];
    int rc = posix_name(path, sizeof path, name);
    if (rc != 0)
        return rc;
    return shm_unlink(path) == 0 ? 0 : open_error(path, errno);
}

/* ---- processes ---- */

/* The lock word holds the owner's pid in its low half and a tag of its pid
 * namespace in the high half (Linux; 0 elsewhere), so a writer never judges
 * the liveness of a pid that belongs to another namespace. */
static uint64_t cached_id;

static void forget_id(void)
{
    cached_id = 0;
}

static uint64_t namespace_tag(void)
{
#ifdef __linux__
    struct stat st;
    if (stat("/proc/self/ns/pid", &st) == 0)
        return (uint64_t)(uint32_t)st.st_ino;
#endif
    return 0;
}

static pthread_once_t fork_hook_once = PTHREAD_ONCE_INIT;

static void install_fork_hook(void)
{
    /* A forked child has a pid of its own. */
    (void)pthread_atfork(NULL, NULL, forget_id);
}

uint64_t fshm_self_id(void)
{
    uint64_t id = __atomic_load_n(&cached_id, __ATOMIC_RELAXED);
    if (id == 0) {
        (void)pthread_once(&fork_hook_once, install_fork_hook);
        id = (namespace_tag() << 32) | (uint32_t)getpid();
        __atomic_store_n(&cached_id, id, __ATOMIC_RELAXED);
    }
    return id;
}

#ifdef __linux__
/* A process killed but not yet reaped by its parent still answers kill(0):
 * it is a zombie, state Z (or X) in /proc/PID/stat.  Its threads are gone
 * too unless only the main thread exited, which /proc/PID/task tells. */
static int is_zombie(pid_t pid)
{
    char path[64], buf[512], *p;
    FILE *f;
    size_t n;
    int threads = 0;
    DIR *d;
    struct dirent *e;

    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    if ((f = fopen(path, "r")) == NULL)
        return 0;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name may hold spaces and parentheses: the state follows
     * the last ')'. */
    if ((p = strrchr(buf, ')')) == NULL || p[1] != ' ' || (p[2] != 'Z' && p[2] != 'X'))
        return 0;
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    if ((d = opendir(path)) == NULL)
        return 1;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            threads++;
    closedir(d);
    return threads <= 1;
}
#endif

int fshm_owner_dead(uint64_t owner)
{
    pid_t pid = (pid_t)(uint32_t)owner;
    if (pid <= 0)
        return -1;
    if ((owner >> 32) != (fshm_self_id() >> 32))
        return -1;
    if (kill(pid, 0) == 0 || errno == EPERM) {
#ifdef __linux__
        if (is_zombie(pid))
            return 1;
#endif
        return 0;
    }
    return errno == ESRCH ? 1 : -1;
}

/* ---- time and futex ---- */

int64_t fshm_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int fshm_sleep_ns(int64_t ns)
{
    struct timespec ts;
    if (ns <= 0) {
        sched_yield();
        return 0;
    }
    ts.tv_sec = (time_t)(ns / 1000000000LL);
    ts.tv_nsec = (long)(ns % 1000000000LL);
    /* nanosleep is never restarted after a signal handler: EINTR. */
    return nanosleep(&ts, NULL) == 0 ? 0 : errno;
}

#ifdef __linux__
int fshm_futex_wait(uint32_t *addr, uint32_t expected, int64_t timeout_ns)
{
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000LL);
        ts.tv_nsec = (long)(timeout_ns % 1000000000LL);
        tsp = &ts;
    }
    /* A shared futex (no FUTEX_PRIVATE_FLAG): the word lives in a mapping
     * other processes share, and the kernel keys it by the page. */
    if (syscall(SYS_futex, addr, FUTEX_WAIT, expected, tsp, NULL, 0) == 0)
        return 0;
    if (errno == EINTR)
        return EINTR;
    if (errno != EAGAIN && errno != ETIMEDOUT)
        fshm_sleep_ns(1000000); /* no usable futex: never spin on the error */
    return 0;
}

void fshm_futex_wake(uint32_t *addr, int all)
{
    syscall(SYS_futex, addr, FUTEX_WAKE, all ? INT32_MAX : 1, NULL, NULL, 0);
}
#else
#include "poll_wait.h"

/* No shared futex: poll the word. */
int fshm_futex_wait(uint32_t *addr, uint32_t expected, int64_t timeout_ns)
{
    return fshm_poll_wait(addr, expected, timeout_ns);
}

void fshm_futex_wake(uint32_t *addr, int all)
{
    (void)addr;
    (void)all;
}
#endif
