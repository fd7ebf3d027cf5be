/*
 * The mapping layer on Windows: a page-file backed section made with
 * CreateFileMappingW and mapped with MapViewOfFile, and the process and
 * wait primitives slot.c builds on.
 *
 * Lifetime differs from POSIX: a named section lives exactly as long as some
 * process holds a handle or a view of it, and nothing can remove the name
 * early.  fshm_unlink is therefore a successful no-op; the name disappears
 * when the last process unmaps it (or exits).
 *
 * Each view keeps its section handle open until it is unmapped.  Windows
 * would keep the name alive through the view alone, but Wine drops a name
 * with the last handle even while views remain, and the tests run there.
 */
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>

#include "fastshm.h"
#include "atomics.h"
#include "internal.h"
#include "poll_wait.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Kernel object names are counted UTF-16 strings of at most 32767 units;
 * a UTF-8 name of this many bytes never needs more units than that. */
#define WIN_NAME_MAX 32767

size_t fshm_name_max(void)
{
    return WIN_NAME_MAX;
}

/* Windows error codes as the errno values map_posix.c returns for the same
 * situation, so Python raises the same exception on every platform. */
static int win_errno(DWORD err)
{
    switch (err) {
    case ERROR_FILE_NOT_FOUND:
    case ERROR_PATH_NOT_FOUND:
        return ENOENT;
    case ERROR_ALREADY_EXISTS:
    case ERROR_FILE_EXISTS:
        return EEXIST;
    case ERROR_ACCESS_DENIED:
    case ERROR_PRIVILEGE_NOT_HELD:
        return EACCES;
    case ERROR_INVALID_NAME:
    case ERROR_INVALID_PARAMETER:
    case ERROR_BAD_PATHNAME:
        return EINVAL;
    case ERROR_FILENAME_EXCED_RANGE:
        return ENAMETOOLONG;
    case ERROR_NOT_ENOUGH_MEMORY:
    case ERROR_OUTOFMEMORY:
    case ERROR_COMMITMENT_LIMIT:
        return ENOMEM;
    default:
        return EIO;
    }
}

/* The UTF-16 form of a UTF-8 name, in *out (free() it), or an errno value.
 * A backslash is allowed only as the separator of a Local\ or Global\
 * prefix, as for POSIX names and '/': anything else would name a kernel
 * namespace directory. */
static int wide_name(const char *name, wchar_t **out)
{
    const char *rest = name;
    size_t len;
    int units;
    wchar_t *w;

    *out = NULL;
    if (name == NULL || name[0] == '\0')
        return EINVAL;
    len = strlen(name);
    if (len > WIN_NAME_MAX)
        return ENAMETOOLONG;
    if (strncmp(name, "Local\\", 6) == 0)
        rest = name + 6;
    else if (strncmp(name, "Global\\", 7) == 0)
        rest = name + 7;
    if (rest[0] == '\0' || strchr(rest, '\\') != NULL)
        return EINVAL;
    units = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, name, -1, NULL, 0);
    if (units <= 0)
        return EINVAL; /* not valid UTF-8 */
    w = (wchar_t *)malloc((size_t)units * sizeof(wchar_t));
    if (w == NULL)
        return ENOMEM;
    if (MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, name, -1, w, units) != units) {
        free(w);
        return EINVAL;
    }
    *out = w;
    return 0;
}

/* The section handle of every view this process has mapped, closed by
 * fshm_unmap, and the named semaphores its waiters sleep on, made on first
 * use.  A list: a process maps a handful of segments, not thousands. */
typedef struct view_handle {
    void *base;
    HANDLE handle;
    wchar_t *wname;  /* the section's name, for its semaphores' names */
    HANDLE sem[3];   /* message waiters, writers waiting for the lock, and a
                        channel's publishers waiting for a slot */
    struct view_handle *next;
} view_handle;

static SRWLOCK views_lock = SRWLOCK_INIT;
static view_handle *views;

static int remember_view(void *base, HANDLE handle, wchar_t *wname)
{
    view_handle *v = (view_handle *)malloc(sizeof *v);
    if (v == NULL)
        return ENOMEM;
    v->base = base;
    v->handle = handle;
    v->wname = wname;
    v->sem[0] = v->sem[1] = v->sem[2] = NULL;
    AcquireSRWLockExclusive(&views_lock);
    v->next = views;
    views = v;
    ReleaseSRWLockExclusive(&views_lock);
    return 0;
}

static HANDLE forget_view(void *base)
{
    view_handle **p, *v;
    HANDLE handle = NULL;
    int i;
    AcquireSRWLockExclusive(&views_lock);
    for (p = &views; (v = *p) != NULL; p = &v->next) {
        if (v->base == base) {
            *p = v->next;
            handle = v->handle;
            for (i = 0; i < 3; i++)
                if (v->sem[i] != NULL)
                    CloseHandle(v->sem[i]);
            free(v->wname);
            free(v);
            break;
        }
    }
    ReleaseSRWLockExclusive(&views_lock);
    return handle;
}

int fshm_map_open(fshm_map *m, const char *name, int how, size_t size,
                  unsigned mode)
{
    wchar_t *wname;
    HANDLE h;
    void *base;
    int rc, created = 0, readonly = 0;
    DWORD access = FILE_MAP_ALL_ACCESS;
    unsigned long long size64 = (unsigned long long)size;
    MEMORY_BASIC_INFORMATION mbi;

    (void)mode; /* the default security descriptor: this session's user */
    m->base = NULL;
    m->size = 0;
    m->created = 0;
    m->readonly = 0;
    m->owner = -1; /* sections have an ACL, not an owner uid: no owner check */
    m->fd = -1;
    /* FSHM_RESERVE needs nothing here: a page-file backed section without
     * SEC_RESERVE is committed when it is created, so a full page file is
     * an ENOMEM from CreateFileMappingW, never a fault at the first write. */
    how &= FSHM_HOW_MASK;
    if (how != FSHM_ATTACH && how != FSHM_CREATE && how != FSHM_OPEN_OR_CREATE)
        return EINVAL;
    if (how != FSHM_ATTACH && size == 0)
        return EINVAL;
    if ((rc = wide_name(name, &wname)) != 0)
        return rc;

    if (how == FSHM_OPEN_OR_CREATE) {
        /* An existing section we may only read: open it read-only below,
         * as POSIX does, rather than fail in CreateFileMappingW. */
        h = OpenFileMappingW(FILE_MAP_ALL_ACCESS, FALSE, wname);
        if (h != NULL)
            CloseHandle(h);
        else if (GetLastError() == ERROR_ACCESS_DENIED)
            how = FSHM_ATTACH;
    }
    if (how == FSHM_ATTACH) {
        h = OpenFileMappingW(FILE_MAP_ALL_ACCESS, FALSE, wname);
        if (h == NULL && GetLastError() == ERROR_ACCESS_DENIED) {
            /* Readable but not writable for us: readers can still load. */
            h = OpenFileMappingW(FILE_MAP_READ, FALSE, wname);
            readonly = h != NULL;
            access = FILE_MAP_READ;
        }
        if (h == NULL) {
            DWORD err = GetLastError();
            free(wname);
            /* The name belongs to an object of another kind (an event, a
             * mutex): there is no mapping of that name. */
            return err == ERROR_INVALID_HANDLE ? ENOENT : win_errno(err);
        }
    } else {
        /* One call creates or opens, atomically: no window in which the
         * name can vanish between a failed create and an open. */
        h = CreateFileMappingW(INVALID_HANDLE_VALUE, NULL, PAGE_READWRITE,
                               (DWORD)(size64 >> 32), (DWORD)(size64 & 0xFFFFFFFFu),
                               wname);
        if (h == NULL) {
            DWORD err = GetLastError();
            free(wname);
            /* The name is taken by an object of another kind. */
            return err == ERROR_INVALID_HANDLE ? EEXIST : win_errno(err);
        }
        if (GetLastError() == ERROR_ALREADY_EXISTS) {
            if (how == FSHM_CREATE) {
                CloseHandle(h);
                free(wname);
                return EEXIST;
            }
        } else {
            created = 1;
        }
    }

    /* An existing section keeps the size it was made with, whatever size
     * this call asked for: map all of it and ask how long the view is. */
    base = MapViewOfFile(h, access, 0, 0, created ? size : 0);
    if (base == NULL) {
        rc = win_errno(GetLastError());
        CloseHandle(h);
        free(wname);
        return rc;
    }
    if (!created) {
        if (VirtualQuery(base, &mbi, sizeof mbi) == 0) {
            rc = win_errno(GetLastError());
            UnmapViewOfFile(base);
            CloseHandle(h);
            free(wname);
            return rc;
        }
        /* Page-rounded; the exact capacity comes from the segment header. */
        size = (size_t)mbi.RegionSize;
    }
    if ((rc = remember_view(base, h, wname)) != 0) {
        UnmapViewOfFile(base);
        CloseHandle(h);
        free(wname);
        return rc;
    }
    m->base = base;
    m->size = size;
    m->created = created;
    m->readonly = readonly;
    return 0;
}

int fshm_map_reserve(fshm_map *m)
{
    (void)m; /* committed at creation (above) */
    return 0;
}

/* ---- the init lock (internal.h): Windows has none, and no making mode
 * bit; a section is committed, sized and zero-filled as it is created, and
 * an opener judges an unfinished one by its lock word alone. ---- */

int fshm__map_claim(fshm_map *m, const char *name, int how_flags, int *state)
{
    *state = 0;
    return fshm_map_open(m, name, FSHM_ATTACH | (how_flags & FSHM_ANY_OWNER), 0, 0);
}

int fshm__map_adopt(fshm_map *m, size_t need)
{
    /* A section keeps the size it was made with. */
    if (m->readonly)
        return EACCES;
    if (m->size < need)
        return FSHM_ENOTREADY;
    m->created = 1;
    return 0;
}

int fshm__map_reserve(fshm_map *m)
{
    (void)m;
    return 0;
}

void fshm__map_done(fshm_map *m, unsigned mode)
{
    (void)m;
    (void)mode;
}

void fshm__map_release(fshm_map *m)
{
    fshm_unmap(m->base, m->size);
    m->base = NULL;
}

int fshm_unmap(void *base, size_t size)
{
    HANDLE h;
    (void)size;
    if (base == NULL)
        return 0;
    if (!UnmapViewOfFile(base))
        return win_errno(GetLastError());
    h = forget_view(base);
    if (h != NULL)
        CloseHandle(h);
    return 0;
}

int fshm_unlink(const char *name)
{
    /* Nothing removes a section's name while a handle or view is open, and
     * the name goes with the last of them.  Validate it all the same, so a
     * bad name is the same error on every platform. */
    wchar_t *wname;
    int rc = wide_name(name, &wname);
    free(wname);
    return rc;
}

/* ---- processes ---- */

uint64_t fshm_self_id(void)
{
    /* One pid space on Windows: the namespace tag (high half) is 0. */
    return (uint64_t)GetCurrentProcessId();
}

int fshm_owner_dead(uint64_t owner)
{
    DWORD pid = (DWORD)(uint32_t)owner, code = 0, err, waited;
    HANDLE h;
    int dead = -1;

    if (pid == 0 || (owner >> 32) != 0)
        return -1;
    h = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION | SYNCHRONIZE, FALSE, pid);
    if (h == NULL) {
        err = GetLastError();
        /* No process has that id any more. */
        if (err == ERROR_INVALID_PARAMETER)
            return 1;
        /* It exists but belongs to someone we may not inspect. */
        if (err == ERROR_ACCESS_DENIED)
            return 0;
        return -1;
    }
    /* A process object outlives the process while handles to it are open;
     * it is signalled once the process has exited.  The exit code alone is
     * not enough: a process may exit with the value of STILL_ACTIVE. */
    waited = WaitForSingleObject(h, 0);
    if (waited == WAIT_OBJECT_0)
        dead = 1;
    else if (waited == WAIT_TIMEOUT)
        dead = 0;
    else if (GetExitCodeProcess(h, &code))
        dead = code == STILL_ACTIVE ? 0 : 1;
    CloseHandle(h);
    return dead;
}

/* ---- time and waiting ---- */

int64_t fshm_monotonic_ns(void)
{
    static LONGLONG freq; /* constant after boot; racing first calls agree */
    LARGE_INTEGER now, f;
    if (freq == 0) {
        QueryPerformanceFrequency(&f);
        freq = f.QuadPart;
    }
    QueryPerformanceCounter(&now);
    /* Split so that counter * 1e9 cannot overflow. */
    return (int64_t)((now.QuadPart / freq) * 1000000000LL +
                     (now.QuadPart % freq) * 1000000000LL / freq);
}

int fshm_sleep_ns(int64_t ns)
{
    /* Sleep() counts whole milliseconds and often rounds up to a timer tick
     * (up to 15.6 ms); below half a millisecond yielding the processor
     * keeps the short back-off steps short. */
    if (ns < 500000) {
        SwitchToThread();
        return 0;
    }
    Sleep((DWORD)((ns + 999999) / 1000000));
    return 0;
}

/* Windows has no futex that works across processes (WaitOnAddress is
 * per-process).  Each segment gets two named semaphores instead, made on
 * first use: NAME.fastshm-wake for waiters of the next message (the notify
 * word, header offset 24) and NAME.fastshm-lock for writers waiting for the
 * lock (offset 72); a channel gets a third, NAME.fastshm-room, for
 * publishers waiting for a slot (its room word, offset 48: in a segment or
 * a queue that offset is no wait word, so the magic decides).  In the
 * header, the word after each of these counts its sleepers (docs/FORMAT.md),
 * and a waker releases the semaphore once per sleeper.  A sleeper registers before it reads the word it sleeps on, so a
 * release it has not waited for yet stays in the count and its wait returns
 * at once: no wake-up is lost.  A sleeper that timed out leaves a count
 * behind, which only makes a later wait return early to re-check. */
#define NOTIFY_OFFSET 24
#define ROOM_OFFSET 48
#define LOCK_WAKE_OFFSET 72

/* Under views_lock: the semaphore of the wake-up word at addr, made on
 * first use; NULL when addr is no such word (or the name is taken by
 * another kind of object: waiting then falls back to polling). */
static HANDLE wake_semaphore_locked(uint32_t *addr)
{
    static const wchar_t *suffix[3] = {L".fastshm-wake", L".fastshm-lock", L".fastshm-room"};
    view_handle *v;

    for (v = views; v != NULL; v = v->next) {
        uintptr_t off = (uintptr_t)addr - (uintptr_t)v->base;
        int which;
        if ((uintptr_t)addr < (uintptr_t)v->base)
            continue;
        if (off == NOTIFY_OFFSET)
            which = 0;
        else if (off == LOCK_WAKE_OFFSET)
            which = 1;
        else if (off == ROOM_OFFSET &&
                 fshm_load32((uint32_t *)v->base, FSHM_ACQUIRE) == FSHM_CHANNEL_MAGIC)
            which = 2;
        else
            continue;
        if (v->sem[which] == NULL) {
            size_t len = wcslen(v->wname);
            wchar_t *n = (wchar_t *)malloc((len + 16) * sizeof(wchar_t));
            if (n != NULL) {
                memcpy(n, v->wname, len * sizeof(wchar_t));
                memcpy(n + len, suffix[which], (wcslen(suffix[which]) + 1) * sizeof(wchar_t));
                /* Opens the semaphore when another process made it first. */
                v->sem[which] = CreateSemaphoreW(NULL, 0, LONG_MAX, n);
                free(n);
            }
        }
        return v->sem[which];
    }
    return NULL;
}

static HANDLE wake_semaphore(uint32_t *addr)
{
    HANDLE sem;
    AcquireSRWLockExclusive(&views_lock);
    sem = wake_semaphore_locked(addr);
    ReleaseSRWLockExclusive(&views_lock);
    return sem;
}

/* The events of this process's own wake-up words: words in its private
 * memory, which no other process can change, such as the word by which one
 * thread interrupts another's fshm_wait_words (fshm_word_bump).  Made on
 * first use and kept (a process has a few); auto-reset, so a set nobody
 * waited for ends one later wait early, for a look. */
typedef struct local_event {
    uint32_t *word;
    HANDLE event;
    struct local_event *next;
} local_event;

static local_event *local_events; /* under views_lock */

/* Heap, stack or a module's own data (MEM_PRIVATE, MEM_IMAGE): not a view
 * of a section (MEM_MAPPED), which other processes may share. */
static int private_memory(const void *addr)
{
    MEMORY_BASIC_INFORMATION mbi;
    return VirtualQuery(addr, &mbi, sizeof mbi) != 0 && mbi.State == MEM_COMMIT &&
           mbi.Type != MEM_MAPPED;
}

static HANDLE local_event_locked(uint32_t *word)
{
    local_event *e;
    for (e = local_events; e != NULL; e = e->next)
        if (e->word == word)
            return e->event;
    e = (local_event *)malloc(sizeof *e);
    if (e == NULL)
        return NULL;
    e->event = CreateEventW(NULL, FALSE, FALSE, NULL);
    if (e->event == NULL) {
        free(e);
        return NULL;
    }
    e->word = word;
    e->next = local_events;
    local_events = e;
    return e->event;
}

int fshm__wait_handles(uint32_t *const *words, size_t n, void **out)
{
    HANDLE self = GetCurrentProcess();
    size_t i, made = 0;
    int rc = 0;

    AcquireSRWLockExclusive(&views_lock);
    for (i = 0; i < n && rc == 0; i++) {
        HANDLE h = wake_semaphore_locked(words[i]);
        if (h == NULL && private_memory(words[i]))
            h = local_event_locked(words[i]);
        /* A copy: fshm_unmap closes a view's semaphores, maybe while
         * another thread still sleeps here on them. */
        if (h == NULL || !DuplicateHandle(self, h, self, (HANDLE *)&out[i], SYNCHRONIZE,
                                          FALSE, 0))
            rc = ENOENT;
        else
            made++;
    }
    ReleaseSRWLockExclusive(&views_lock);
    if (rc != 0)
        fshm__close_wait_handles(out, made);
    return rc;
}

void fshm__close_wait_handles(void **handles, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        CloseHandle((HANDLE)handles[i]);
}

void fshm__local_wake(uint32_t *word)
{
    HANDLE h = NULL;
    if (!private_memory(word))
        return;
    AcquireSRWLockExclusive(&views_lock);
    h = local_event_locked(word);
    if (h != NULL)
        SetEvent(h);
    ReleaseSRWLockExclusive(&views_lock);
}

int fshm_futex_wait(uint32_t *addr, uint32_t expected, int64_t timeout_ns)
{
    HANDLE sem = wake_semaphore(addr);
    DWORD ms;

    if (sem == NULL)
        return fshm_poll_wait(addr, expected, timeout_ns); /* no semaphore */
    if (fshm_load32(addr, FSHM_ACQUIRE) != expected)
        return 0;
    if (timeout_ns < 0 || timeout_ns / 1000000 >= (int64_t)INFINITE)
        ms = INFINITE;
    else
        ms = (DWORD)((timeout_ns + 999999) / 1000000);
    /* Alertable waits are not used, so there is no EINTR here: the caller's
     * own timeout slices bound how long a signal waits. */
    WaitForSingleObject(sem, ms);
    return 0;
}

void fshm_futex_wake(uint32_t *addr, int all)
{
    HANDLE sem = wake_semaphore(addr);
    LONG sleepers;

    if (sem == NULL)
        return; /* pollers see the changed word on their own */
    sleepers = (LONG)fshm_load32(addr + 1, FSHM_SEQ_CST);
    if (sleepers > 0)
        ReleaseSemaphore(sem, all ? sleepers : 1, NULL);
}
