/*
 * fastshm._cext.QueueCore, over csrc/queue.c: the hot methods of
 * fastshm.Queue (put, get, get_into, get_many, put_many, qsize, ...);
 * fastshm.queue subclasses it.
 */
#include "_cext.h"

#include <errno.h>
#include <string.h>

/* The GIL policy of a queue, as of a segment: a put or a take is tried
 * with the GIL held and never sleeps there (fshm_queue_try_*: not even for
 * the lock); only a call that must wait, for the lock or for room or a
 * message, lets the GIL go, and then the lock is waited for, held and
 * released without it.  Under the lock with the GIL held, nothing waits for
 * anything: the callback of a take only allocates.  A wait comes back for
 * the GIL every QUEUE_SLICE_NS, so signal handlers run and a close() from
 * another thread ends it (ValueError, nothing put or taken). */

typedef struct {
    PyObject_HEAD
    fshm_queue q;          /* q.base is NULL once closed */
    PyObject *mapping;     /* the Mapping that owns q.base; NULL once closed */
    PyObject *name;        /* str */
    int created;
    PyObject *weakreflist;
} QueueObject;

static PyTypeObject QueueType;

static uint64_t record_bytes(uint64_t n)
{
    return FSHM_QUEUE_RECORD_HEADER + ((n + 7) & ~(uint64_t)7);
}

static void queue_dealloc(QueueObject *self)
{
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    self->q.base = NULL;
    Py_CLEAR(self->mapping);
    Py_CLEAR(self->name);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int open_queue(void *core, fshm_map *m, const char *name, int how,
                      uint64_t capacity, unsigned mode)
{
    how &= FSHM_HOW_MASK | FSHM_ANY_OWNER | FSHM_RESERVE;
    return fshm_queue_open((fshm_queue *)core, m, name, how, capacity, 0, mode);
}

/* QueueCore.__new__(cls, name, how, capacity, mode): open (or create) the
 * queue; `how` may carry FSHM_ANY_OWNER. */
static PyObject *queue_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *name;
    fshm_queue q;
    fshm_map m;
    QueueObject *self;

    if (open_by_name("QueueCore", "Segment", args, kwds, open_queue, &q, &m, &name) != 0)
        return NULL;
    if (q.flags & FSHM_QUEUE_PYLOCK) {
        /* Its lock is the python backend's flock: a compare-and-swap does
         * not exclude that one, so native code keeps out of it. */
        fshm_unmap(m.base, m.size);
        return raise_from("protocol_error", "(Os)", name, "python");
    }
    self = (QueueObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        fshm_unmap(m.base, m.size);
        return NULL;
    }
    self->q = q;
    self->mapping = mapping_new(&m);
    if (self->mapping == NULL) {
        self->q.base = NULL;
        Py_DECREF(self);
        return NULL;
    }
    Py_INCREF(name);
    self->name = name;
    self->created = m.created;
    return (PyObject *)self;
}

static PyObject *queue_closed_error(QueueObject *self)
{
    PyErr_Format(PyExc_ValueError, "queue %R is closed", self->name);
    return NULL;
}

/* As hold() for a segment: the queue of an open object, and a new reference
 * to its mapping that keeps it mapped until the caller lets go of it.  NULL
 * (ValueError) when closed. */
static PyObject *queue_hold(QueueObject *self, fshm_queue *q)
{
    if (self->q.base == NULL)
        return queue_closed_error(self);
    *q = self->q;
    Py_INCREF(self->mapping);
    return self->mapping;
}

/* -- arguments -- */

/* The arguments of a METH_FASTCALL | METH_KEYWORDS method with parameters
 * kw[0..n), the first `required` of them without a default: out[i] keeps
 * its default (NULL for a required one) when the parameter is not given. */
static int method_args(const char *fn, PyObject *const *args, Py_ssize_t nargs,
                       PyObject *kwnames, const char *const *kw, Py_ssize_t n,
                       Py_ssize_t required, PyObject **out)
{
    Py_ssize_t i, j, nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs > n) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %zd positional argument%s (%zd given)",
                     fn, n, n == 1 ? "" : "s", nargs);
        return -1;
    }
    for (i = 0; i < nargs; i++)
        out[i] = args[i];
    for (i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        for (j = 0; j < n; j++)
            if (PyUnicode_CompareWithASCIIString(key, kw[j]) == 0)
                break;
        if (j == n) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R", fn, key);
            return -1;
        }
        if (j < nargs) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fn,
                         kw[j]);
            return -1;
        }
        out[j] = args[nargs + i];
    }
    for (j = 0; j < required; j++) {
        if (out[j] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fn, kw[j]);
            return -1;
        }
    }
    return 0;
}

/* block and timeout as the stdlib's queue takes them: *wait 0 for "do not
 * wait" (the timeout is then ignored), else *deadline as parse_timeout
 * makes it (INT64_MAX: forever). */
static int parse_block(PyObject *block, PyObject *timeout, int *wait, int64_t *deadline)
{
    int b = block == Py_True ? 1 : block == Py_False ? 0 : PyObject_IsTrue(block);
    if (b < 0)
        return -1;
    *wait = b;
    *deadline = 0;
    return b ? parse_timeout(timeout, deadline) : 0;
}

/* The bytes of one message: bytes, str as UTF-8, or any C-contiguous
 * buffer (then *has_view is set and *view must be released, even when this
 * fails). */
static int message_data(PyObject *data, fshm_msg *msg, Py_buffer *view, int *has_view)
{
    *has_view = 0;
    if (PyBytes_CheckExact(data)) {
        msg->data = PyBytes_AS_STRING(data);
        msg->len = (size_t)PyBytes_GET_SIZE(data);
        return 0;
    }
    if (PyUnicode_Check(data)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(data, &n);
        if (s == NULL)
            return -1;
        msg->data = s;
        msg->len = (size_t)n;
        return 0;
    }
    if (PyObject_GetBuffer(data, view, PyBUF_STRIDED_RO) != 0) {
        PyErr_Format(PyExc_TypeError, "can only store bytes-like objects or str, not %.200s",
                     Py_TYPE(data)->tp_name);
        return -1;
    }
    *has_view = 1;
    if (!PyBuffer_IsContiguous(view, 'C')) {
        PyErr_SetString(PyExc_ValueError, "can only store a C-contiguous buffer; copy it first");
        return -1;
    }
    msg->data = view->buf;
    msg->len = (size_t)view->len;
    return 0;
}

/* How long the next blocking call may sleep: a slice of at most
 * QUEUE_SLICE_NS, so Python's signal handlers run between slices; 0 once the
 * deadline has passed. */
static int64_t slice_for(int wait, int64_t deadline)
{
    int64_t left;
    if (!wait)
        return 0;
    if (deadline == INT64_MAX)
        return QUEUE_SLICE_NS;
    left = deadline - fshm_monotonic_ns();
    return left <= 0 ? 0 : left < QUEUE_SLICE_NS ? left : QUEUE_SLICE_NS;
}

/* Whether a call that found no room or no message should wait for it. */
static int may_wait(int wait, int64_t deadline)
{
    return wait && (deadline == INT64_MAX || fshm_monotonic_ns() < deadline);
}

/* Between two slices of a wait that has changed nothing yet, with the
 * GIL: Python's signal handlers run (Ctrl-C ends the wait), and a close()
 * from another thread ends it too.  0 to go on, else PY_ERROR_SET. */
static int between_slices(QueueObject *self)
{
    if (PyErr_CheckSignals() != 0)
        return PY_ERROR_SET;
    if (self->q.base == NULL) {
        queue_closed_error(self);
        return PY_ERROR_SET;
    }
    return 0;
}

/* After a blocking put or take came back with nothing done (no room or no
 * message in its slice, or a signal): run the signal handlers, then sleep in
 * slices, without the spin that call made, until the queue has room for
 * `room` bytes of records (0: a message).  0 with *slice the timeout of the
 * next try (0 once out of time: it is the last), or the code to stop with. */
static int sleep_until_ready(QueueObject *self, const fshm_queue *q, uint64_t room,
                             int wait, int64_t deadline, int64_t *slice)
{
    for (;;) {
        int rc = between_slices(self);
        if (rc != 0)
            return rc;
        if ((*slice = slice_for(wait, deadline)) == 0)
            return 0;
        Py_BEGIN_ALLOW_THREADS
        rc = fshm_queue_wait(q, room, *slice);
        Py_END_ALLOW_THREADS
        if (rc == 0) {
            *slice = slice_for(wait, deadline);
            return 0;
        }
        if (rc != FSHM_ETIMEOUT && rc != EINTR)
            return rc;
    }
}

/* -- put -- */

/* A put that could not be made with the GIL: without it, in slices, until
 * done, the deadline, or a signal handler that raised. */
static int put_without_gil(QueueObject *self, const fshm_queue *q, const fshm_msg *msgs,
                           size_t count, uint64_t need, int wait, int64_t deadline)
{
    int64_t slice = slice_for(wait, deadline);
    int rc;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        rc = fshm_queue_put_many(q, msgs, count, slice);
        Py_END_ALLOW_THREADS
        /* EINTR: a signal came while it slept; EBUSY: another process held
         * the lock through the slice.  Either way nothing was put. */
        if (rc != EINTR && !((rc == FSHM_EFULL || rc == FSHM_EBUSY) && slice > 0))
            return rc;
        if ((rc = sleep_until_ready(self, q, need, wait, deadline, &slice)) != 0)
            return rc;
    }
}

static int put_messages(QueueObject *self, const fshm_queue *q, const fshm_msg *msgs,
                        size_t count, uint64_t need, int wait, int64_t deadline)
{
    int rc;
    if (need >= GIL_RELEASE_BYTES)
        return put_without_gil(self, q, msgs, count, need, wait, deadline);
    rc = fshm_queue_try_put_many(q, msgs, count);
    if (rc == FSHM_EBUSY || (rc == FSHM_EFULL && may_wait(wait, deadline)))
        rc = put_without_gil(self, q, msgs, count, need, wait, deadline);
    return rc;
}

static PyObject *queue_op_error(QueueObject *self, const fshm_queue *q, int rc)
{
    if (rc == PY_ERROR_SET)
        return NULL;
    if (rc == EACCES && q->readonly)
        return raise_from("read_only_error", "(Os)", self->name, "queue");
    if (rc == FSHM_EPROTOCOL)
        return raise_from("protocol_error", "(Os)", self->name, "python");
    return raise_kind(rc, self->name, rc == FSHM_EFORMAT ? "ring" : "", "queue");
}

static PyObject *put_error(QueueObject *self, const fshm_queue *q, int rc, uint64_t need)
{
    if (rc == FSHM_EBUSY)
        return raise_from("lock_held_error", "(OKO)", self->name,
                          (unsigned long long)fshm_queue_lock_owner(q), Py_True);
    if (rc == FSHM_EFULL)
        return raise_from("full_error", "(OKKK)", self->name, (unsigned long long)need,
                          (unsigned long long)q->capacity,
                          (unsigned long long)fshm_queue_used(q));
    return queue_op_error(self, q, rc);
}

static PyObject *queue_do_put(QueueObject *self, PyObject *data, int wait, int64_t deadline)
{
    fshm_queue q;
    fshm_msg msg;
    Py_buffer view;
    uint64_t need;
    int rc, has_view = 0;
    PyObject *keep = queue_hold(self, &q), *result = NULL;

    if (keep == NULL)
        return NULL;
    if (message_data(data, &msg, &view, &has_view) != 0)
        goto done;
    if ((uint64_t)msg.len > fshm_queue_max_message(q.capacity)) {
        raise_from("message_too_big", "(nOK)", (Py_ssize_t)msg.len, self->name,
                   (unsigned long long)fshm_queue_max_message(q.capacity));
        goto done;
    }
    need = record_bytes(msg.len);
    rc = put_messages(self, &q, &msg, 1, need, wait, deadline);
    if (rc != 0) {
        put_error(self, &q, rc, need);
        goto done;
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    if (has_view)
        PyBuffer_Release(&view);
    Py_DECREF(keep);
    return result;
}

static PyObject *queue_put(QueueObject *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    static const char *const kw[] = {"data", "block", "timeout"};
    PyObject *a[3] = {NULL, Py_True, Py_None};
    int wait;
    int64_t deadline;
    if (nargs == 1 && kwnames == NULL)
        return queue_do_put(self, args[0], 1, INT64_MAX);
    if (method_args("put", args, nargs, kwnames, kw, 3, 1, a) != 0 ||
        parse_block(a[1], a[2], &wait, &deadline) != 0)
        return NULL;
    return queue_do_put(self, a[0], wait, deadline);
}

static PyObject *queue_put_nowait(QueueObject *self, PyObject *data)
{
    return queue_do_put(self, data, 0, 0);
}

#define INLINE_MSGS 16

static PyObject *queue_put_many(QueueObject *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    static const char *const kw[] = {"messages", "block", "timeout"};
    PyObject *a[3] = {NULL, Py_True, Py_None};
    PyObject *keep, *items = NULL, *result = NULL;
    fshm_msg inline_msgs[INLINE_MSGS], *msgs = inline_msgs;
    Py_buffer inline_views[INLINE_MSGS], *views = inline_views;
    Py_ssize_t count = 0, nviews = 0, i;
    uint64_t need = 0, max_message;
    int64_t deadline;
    int wait, rc;
    fshm_queue q;

    if (method_args("put_many", args, nargs, kwnames, kw, 3, 1, a) != 0 ||
        parse_block(a[1], a[2], &wait, &deadline) != 0)
        return NULL;
    if ((keep = queue_hold(self, &q)) == NULL)
        return NULL;
    /* A tuple: its items stay put (and alive) while their bytes are used,
     * whatever Python code converting them does to the caller's list. */
    if ((items = PySequence_Tuple(a[0])) == NULL)
        goto done;
    count = PyTuple_GET_SIZE(items);
    if (count == 0) {
        Py_INCREF(Py_None);
        result = Py_None;
        goto done;
    }
    if (count > INLINE_MSGS) {
        msgs = PyMem_New(fshm_msg, (size_t)count);
        views = PyMem_New(Py_buffer, (size_t)count);
        if (msgs == NULL || views == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    max_message = fshm_queue_max_message(q.capacity);
    for (i = 0; i < count; i++) {
        int has_view, bad = message_data(PyTuple_GET_ITEM(items, i), &msgs[i], &views[nviews],
                                         &has_view);
        nviews += has_view;
        if (bad)
            goto done;
        if ((uint64_t)msgs[i].len > max_message) {
            raise_from("message_too_big", "(nOK)", (Py_ssize_t)msgs[i].len, self->name,
                       (unsigned long long)max_message);
            goto done;
        }
        need += record_bytes(msgs[i].len);
    }
    if (need > q.capacity) {
        raise_from("batch_too_big", "(KOK)", (unsigned long long)need, self->name,
                   (unsigned long long)q.capacity);
        goto done;
    }
    rc = put_messages(self, &q, msgs, (size_t)count, need, wait, deadline);
    if (rc != 0) {
        put_error(self, &q, rc, need);
        goto done;
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    for (i = 0; i < nviews; i++)
        PyBuffer_Release(&views[i]);
    if (msgs != inline_msgs)
        PyMem_Free(msgs);
    if (views != inline_views)
        PyMem_Free(views);
    Py_XDECREF(items);
    Py_DECREF(keep);
    return result;
}

/* -- take -- */

/* The messages of a take, as bytes objects. */
typedef struct {
    PyObject **items;
    size_t n, cap;
    PyObject *inline_items[INLINE_MSGS];
    int error;  /* a Python exception is set: take no more */
    int big;    /* the first message is one to copy without the GIL... */
    size_t big_len; /* ...of this many bytes */
} took;

static void took_init(took *t)
{
    t->items = t->inline_items;
    t->n = 0;
    t->cap = INLINE_MSGS;
    t->error = 0;
    t->big = 0;
    t->big_len = 0;
}

static inline void took_clear(took *t)
{
    size_t i;
    for (i = 0; i < t->n; i++)
        Py_DECREF(t->items[i]);
    if (t->items != t->inline_items)
        PyMem_Free(t->items);
    t->items = t->inline_items;
    t->n = 0;
}

/* Room for one more item; -1 (MemoryError) when there is none.  With the
 * GIL. */
static int took_reserve(took *t)
{
    PyObject **items;
    size_t cap;
    if (t->n < t->cap)
        return 0;
    cap = t->cap * 2;
    if (cap > PY_SSIZE_T_MAX / sizeof(PyObject *)) {
        PyErr_NoMemory();
        return -1;
    }
    if (t->items == t->inline_items) {
        items = PyMem_New(PyObject *, cap);
        if (items != NULL)
            memcpy(items, t->inline_items, t->n * sizeof(PyObject *));
    } else {
        /* (Not PyMem_Resize: it overwrites t->items with NULL on failure.) */
        items = (PyObject **)PyMem_Realloc(t->items, cap * sizeof(PyObject *));
    }
    if (items == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    t->items = items;
    t->cap = cap;
    return 0;
}

/* fshm_take_fn of a take made with the GIL, under the queue's lock: a new
 * bytes object of the message's length, whose buffer the message is copied
 * into.  Allocating waits for nothing.  A message too big to copy with the
 * GIL, or memory that runs out, stops the take: that message stays queued. */
static void *take_with_gil(void *ctx, size_t len)
{
    took *t = (took *)ctx;
    PyObject *b;
    if (t->n == 0 && len >= GIL_RELEASE_BYTES) {
        t->big = 1;
        t->big_len = len;
        return NULL;
    }
    if (took_reserve(t) != 0 || (b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len)) == NULL) {
        t->error = 1;
        return NULL;
    }
    t->items[t->n++] = b;
    return PyBytes_AS_STRING(b);
}

/* The messages of a take made without the GIL, in PyMem_RawMalloc memory:
 * chunks of at least RAW_CHUNK bytes, each message after the one before. */
#define RAW_CHUNK (64 * 1024)

typedef struct raw_chunk {
    struct raw_chunk *next;
    size_t size, used;
} raw_chunk; /* the bytes follow */

typedef struct {
    char *buf;
    size_t len;
} raw_msg;

typedef struct {
    raw_msg *msgs;
    size_t n, cap;
    raw_msg inline_msgs[INLINE_MSGS];
    raw_chunk *chunks;  /* newest first */
    char *spare;        /* the buffer of a new bytes object for the first
                           message, when its length is spare_len */
    size_t spare_len;
    int spare_used;
} raw_took;

static char *raw_alloc(raw_took *t, size_t len)
{
    raw_chunk *c = t->chunks;
    char *p;
    if (len == 0)
        return (char *)t; /* somewhere that is not NULL */
    if (c == NULL || c->size - c->used < len) {
        size_t size = len > RAW_CHUNK ? len : RAW_CHUNK;
        if (size > SIZE_MAX - sizeof(raw_chunk))
            return NULL;
        if ((c = (raw_chunk *)PyMem_RawMalloc(sizeof(raw_chunk) + size)) == NULL)
            return NULL;
        c->next = t->chunks;
        c->size = size;
        c->used = 0;
        t->chunks = c;
    }
    p = (char *)(c + 1) + c->used;
    c->used += len;
    return p;
}

/* fshm_take_fn without the GIL: raw memory only.  When it runs out the take
 * stops, and that message stays queued. */
static void *take_raw(void *ctx, size_t len)
{
    raw_took *t = (raw_took *)ctx;
    char *buf;
    if (t->n == 0 && t->spare != NULL && len == t->spare_len) {
        /* No other reference to that bytes object exists yet: it may be
         * written without the GIL, and the message is copied once. */
        t->spare_used = 1;
        buf = t->spare;
    } else {
        if (t->n == t->cap) {
            raw_msg *msgs;
            size_t cap = t->cap * 2;
            if (cap > PY_SSIZE_T_MAX / sizeof(raw_msg))
                return NULL;
            if (t->msgs == t->inline_msgs) {
                msgs = (raw_msg *)PyMem_RawMalloc(cap * sizeof(raw_msg));
                if (msgs != NULL)
                    memcpy(msgs, t->inline_msgs, t->n * sizeof(raw_msg));
            } else {
                msgs = (raw_msg *)PyMem_RawRealloc(t->msgs, cap * sizeof(raw_msg));
            }
            if (msgs == NULL)
                return NULL;
            t->msgs = msgs;
            t->cap = cap;
        }
        if ((buf = raw_alloc(t, len)) == NULL)
            return NULL;
    }
    t->msgs[t->n].buf = buf;
    t->msgs[t->n].len = len;
    t->n++;
    return buf;
}

/* A take that could not be made with the GIL: without it, in slices, into
 * raw memory; then, with the GIL, the bytes objects (into *out).  `spare`
 * (or NULL) is a new bytes object the first message lands in directly when
 * it has that length. */
static int take_without_gil(QueueObject *self, const fshm_queue *q, size_t max, int wait,
                            int64_t deadline, took *out, PyObject *spare)
{
    raw_took t;
    size_t taken = 0, i;
    int64_t slice = slice_for(wait, deadline);
    int rc;

    t.msgs = t.inline_msgs;
    t.n = 0;
    t.cap = INLINE_MSGS;
    t.chunks = NULL;
    t.spare = spare != NULL ? PyBytes_AS_STRING(spare) : NULL;
    t.spare_len = spare != NULL ? (size_t)PyBytes_GET_SIZE(spare) : 0;
    t.spare_used = 0;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        rc = fshm_queue_take(q, take_raw, &t, max, &taken, slice);
        Py_END_ALLOW_THREADS
        /* EINTR, "none yet" and a lock held through the slice took
         * nothing: a signal handler may run. */
        if (rc != EINTR && !((rc == FSHM_ENOMSG || rc == FSHM_EBUSY) && slice > 0))
            break;
        if ((rc = sleep_until_ready(self, q, 0, wait, deadline, &slice)) != 0)
            break;
    }
    if (rc == 0 && t.n == 0) { /* the first message found no memory */
        PyErr_NoMemory();
        rc = PY_ERROR_SET;
    }
    for (i = 0; i < t.n && rc == 0; i++) {
        PyObject *b;
        if (took_reserve(out) != 0) {
            rc = PY_ERROR_SET; /* taken, but lost: memory ran out */
            break;
        }
        if (i == 0 && t.spare_used) {
            Py_INCREF(spare);
            b = spare;
        } else if ((b = PyBytes_FromStringAndSize(t.msgs[i].buf,
                                                  (Py_ssize_t)t.msgs[i].len)) == NULL) {
            rc = PY_ERROR_SET;
            break;
        }
        out->items[out->n++] = b;
    }
    while (t.chunks != NULL) {
        raw_chunk *next = t.chunks->next;
        PyMem_RawFree(t.chunks);
        t.chunks = next;
    }
    if (t.msgs != t.inline_msgs)
        PyMem_RawFree(t.msgs);
    return rc;
}

/* Up to `max` messages into *out, waiting as wait and deadline say: 0, or
 * FSHM_ENOMSG, PY_ERROR_SET or another code.  Tried with the GIL, unless
 * more than GIL_RELEASE_BYTES may be taken at once (a get_many): then, as
 * a copy that long, without it.  Every message queued goes in one lock
 * round (max_messages None), so the GIL cannot bound a get_many's copy by
 * stopping it early. */
static int take_messages(QueueObject *self, const fshm_queue *q, size_t max, int wait,
                         int64_t deadline, took *out)
{
    size_t taken = 0;
    int rc;
    PyObject *spare = NULL;
    if (max == 1 || fshm_queue_used(q) < GIL_RELEASE_BYTES) {
        rc = fshm_queue_try_take(q, take_with_gil, out, max, &taken);
        if (out->n > 0) {
            /* Memory that ran out after the first stopped the take: the
             * rest stays queued, and these are returned. */
            if (out->error)
                PyErr_Clear();
            return 0;
        }
        if (out->error)
            return PY_ERROR_SET;
        if (!(rc == FSHM_EBUSY || (rc == 0 && out->big) ||
              (rc == FSHM_ENOMSG && may_wait(wait, deadline))))
            return rc;
        /* A big front message: its bytes object now, with the GIL, so that
         * it is copied once, and without the GIL (unless another consumer
         * takes it first).  Without the memory, the raw copy tries. */
        if (out->big &&
            (spare = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)out->big_len)) == NULL)
            PyErr_Clear();
    }
    rc = take_without_gil(self, q, max, wait, deadline, out, spare);
    Py_XDECREF(spare);
    return rc;
}

static PyObject *take_error(QueueObject *self, const fshm_queue *q, int rc)
{
    if (rc == FSHM_ENOMSG)
        return raise_from("empty_error", "(O)", self->name);
    if (rc == FSHM_EBUSY)
        return raise_from("lock_held_error", "(OKO)", self->name,
                          (unsigned long long)fshm_queue_lock_owner(q), Py_False);
    return queue_op_error(self, q, rc);
}

static PyObject *queue_do_get(QueueObject *self, int wait, int64_t deadline)
{
    fshm_queue q;
    took t;
    int rc;
    PyObject *keep = queue_hold(self, &q), *result = NULL;

    if (keep == NULL)
        return NULL;
    took_init(&t);
    rc = take_messages(self, &q, 1, wait, deadline, &t);
    if (rc != 0) {
        take_error(self, &q, rc);
    } else {
        result = t.items[0];
        t.n = 0;
    }
    took_clear(&t);
    Py_DECREF(keep);
    return result;
}

static PyObject *queue_get(QueueObject *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    static const char *const kw[] = {"block", "timeout"};
    PyObject *a[2] = {Py_True, Py_None};
    int wait;
    int64_t deadline;
    if (nargs == 0 && kwnames == NULL)
        return queue_do_get(self, 1, INT64_MAX);
    if (method_args("get", args, nargs, kwnames, kw, 2, 0, a) != 0 ||
        parse_block(a[0], a[1], &wait, &deadline) != 0)
        return NULL;
    return queue_do_get(self, wait, deadline);
}

static PyObject *queue_get_nowait(QueueObject *self, PyObject *unused)
{
    (void)unused;
    return queue_do_get(self, 0, 0);
}

/* max_messages: None (every message queued) or an int >= 1. */
static int parse_max_messages(PyObject *obj, size_t *max)
{
    PyObject *index;
    long long v;
    int overflow = 0;
    if (obj == Py_None) {
        *max = SIZE_MAX;
        return 0;
    }
    /* The wording of fastshm.queue's _max_messages_arg. */
    if (PyBool_Check(obj) || !PyIndex_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "max_messages must be an int, not %.200s",
                     PyBool_Check(obj) ? "bool" : Py_TYPE(obj)->tp_name);
        return -1;
    }
    if ((index = PyNumber_Index(obj)) == NULL)
        return -1;
    v = PyLong_AsLongLongAndOverflow(index, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        Py_DECREF(index);
        return -1;
    }
    if (overflow < 0 || (overflow == 0 && v < 1)) {
        PyErr_Format(PyExc_ValueError,
                     "max_messages must be at least 1 (or None for all), not %S", index);
        Py_DECREF(index);
        return -1;
    }
    Py_DECREF(index);
    *max = overflow > 0 || (unsigned long long)v > SIZE_MAX ? SIZE_MAX : (size_t)v;
    return 0;
}

static PyObject *queue_get_many(QueueObject *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    static const char *const kw[] = {"max_messages", "block", "timeout"};
    PyObject *a[3] = {Py_None, Py_True, Py_None};
    PyObject *keep, *list = NULL;
    fshm_queue q;
    size_t max, i;
    int64_t deadline;
    int wait, rc;
    took t;

    if (method_args("get_many", args, nargs, kwnames, kw, 3, 0, a) != 0 ||
        parse_max_messages(a[0], &max) != 0 || parse_block(a[1], a[2], &wait, &deadline) != 0)
        return NULL;
    if ((keep = queue_hold(self, &q)) == NULL)
        return NULL;
    took_init(&t);
    rc = take_messages(self, &q, max, wait, deadline, &t);
    if (rc != 0) {
        take_error(self, &q, rc);
    } else if ((list = PyList_New((Py_ssize_t)t.n)) != NULL) {
        for (i = 0; i < t.n; i++)
            PyList_SET_ITEM(list, (Py_ssize_t)i, t.items[i]);
        t.n = 0;
    }
    took_clear(&t);
    Py_DECREF(keep);
    return list;
}

/* get_into's copy, straight into the caller's buffer. */
typedef struct {
    char *dst;
    size_t cap;
    size_t len;   /* of the front message */
    int gil;      /* called with the GIL held */
    int big;      /* a message to copy without the GIL */
} into;

static void *take_into_buffer(void *ctx, size_t len)
{
    into *t = (into *)ctx;
    t->len = len;
    if (len > t->cap)
        return NULL; /* it stays queued */
    if (t->gil && len >= GIL_RELEASE_BYTES) {
        t->big = 1;
        return NULL;
    }
    return t->dst != NULL ? (void *)t->dst : (void *)t; /* (not NULL for 0 bytes) */
}

static PyObject *queue_get_into(QueueObject *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    static const char *const kw[] = {"buffer", "block", "timeout"};
    PyObject *a[3] = {NULL, Py_True, Py_None};
    PyObject *keep, *result = NULL;
    Py_buffer view;
    fshm_queue q;
    size_t taken = 0;
    int64_t deadline = INT64_MAX;
    int wait = 1, rc;
    into t;

    if (nargs == 1 && kwnames == NULL) {
        a[0] = args[0];
    } else if (method_args("get_into", args, nargs, kwnames, kw, 3, 1, a) != 0 ||
               parse_block(a[1], a[2], &wait, &deadline) != 0) {
        return NULL;
    }
    if ((keep = queue_hold(self, &q)) == NULL)
        return NULL;
    if (PyObject_GetBuffer(a[0], &view, PyBUF_STRIDED_RO) != 0) {
        PyErr_Format(PyExc_TypeError, "get_into needs a writable bytes-like object, not %.200s",
                     Py_TYPE(a[0])->tp_name);
        Py_DECREF(keep);
        return NULL;
    }
    if (view.readonly) {
        PyErr_SetString(PyExc_TypeError, "get_into needs a writable buffer; this one is read-only");
        goto done;
    }
    if (!PyBuffer_IsContiguous(&view, 'C')) {
        PyErr_SetString(PyExc_ValueError, "get_into needs a C-contiguous buffer");
        goto done;
    }
    t.dst = (char *)view.buf;
    t.cap = (size_t)view.len;
    t.len = 0;
    t.gil = 1;
    t.big = 0;
    rc = fshm_queue_try_take(&q, take_into_buffer, &t, 1, &taken);
    if (rc == FSHM_EBUSY || (rc == 0 && t.big) ||
        (rc == FSHM_ENOMSG && may_wait(wait, deadline))) {
        /* The buffer stays pinned by the view: the copy goes straight into
         * it without the GIL. */
        int64_t slice = slice_for(wait, deadline);
        t.gil = 0;
        for (;;) {
            Py_BEGIN_ALLOW_THREADS
            rc = fshm_queue_take(&q, take_into_buffer, &t, 1, &taken, slice);
            Py_END_ALLOW_THREADS
            if (rc != EINTR && !((rc == FSHM_ENOMSG || rc == FSHM_EBUSY) && slice > 0))
                break;
            if ((rc = sleep_until_ready(self, &q, 0, wait, deadline, &slice)) != 0)
                break;
        }
    }
    if (rc != 0)
        take_error(self, &q, rc);
    else if (taken == 0)
        raise_from("next_too_small", "(nn)", view.len, (Py_ssize_t)t.len);
    else
        result = PyLong_FromSize_t(t.len);
done:
    PyBuffer_Release(&view);
    Py_DECREF(keep);
    return result;
}

/* -- the rest -- */

static PyObject *queue_qsize(QueueObject *self, PyObject *unused)
{
    (void)unused;
    if (self->q.base == NULL)
        return queue_closed_error(self);
    return PyLong_FromUnsignedLongLong(fshm_queue_count(&self->q));
}

static PyObject *queue_close(QueueObject *self, PyObject *unused)
{
    (void)unused;
    self->q.base = NULL;
    Py_CLEAR(self->mapping);
    Py_RETURN_NONE;
}

static PyObject *queue_lock_owner(QueueObject *self, PyObject *unused)
{
    (void)unused;
    if (self->q.base == NULL)
        return queue_closed_error(self);
    return PyLong_FromUnsignedLongLong(fshm_queue_lock_owner(&self->q));
}

static PyObject *queue_break_lock(QueueObject *self, PyObject *owner)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(owner);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (self->q.base == NULL)
        return queue_closed_error(self);
    if (self->q.readonly)
        return raise_from("read_only_error", "(Os)", self->name, "queue");
    return PyBool_FromLong(fshm_queue_break_lock(&self->q, (uint64_t)v) == 0);
}

static PyObject *queue_get_name(QueueObject *self, void *closure)
{
    (void)closure;
    Py_INCREF(self->name);
    return self->name;
}

static PyObject *queue_get_backend(QueueObject *self, void *closure)
{
    (void)self;
    (void)closure;
    return PyUnicode_FromString("native");
}

static PyObject *queue_get_closed(QueueObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->q.base == NULL);
}

static PyObject *queue_get_capacity(QueueObject *self, void *closure)
{
    (void)closure;
    if (self->q.base == NULL)
        return queue_closed_error(self);
    return PyLong_FromUnsignedLongLong(self->q.capacity);
}

static PyObject *queue_get_max_message(QueueObject *self, void *closure)
{
    (void)closure;
    if (self->q.base == NULL)
        return queue_closed_error(self);
    return PyLong_FromUnsignedLongLong(fshm_queue_max_message(self->q.capacity));
}

static PyObject *queue_get_created(QueueObject *self, void *closure)
{
    (void)closure;
    if (self->q.base == NULL)
        return queue_closed_error(self);
    return PyBool_FromLong(self->created);
}

static PyObject *queue_get_readonly(QueueObject *self, void *closure)
{
    (void)closure;
    if (self->q.base == NULL)
        return queue_closed_error(self);
    return PyBool_FromLong(self->q.readonly);
}

static PyObject *queue_get_bytes_used(QueueObject *self, void *closure)
{
    (void)closure;
    if (self->q.base == NULL)
        return queue_closed_error(self);
    return PyLong_FromUnsignedLongLong(fshm_queue_used(&self->q));
}

static PyObject *queue_get_mapped(QueueObject *self, void *closure)
{
    (void)closure;
    if (self->q.base == NULL)
        return queue_closed_error(self);
    return PyLong_FromSize_t(self->q.size);
}

static PyGetSetDef queue_getset[] = {
    {"name", (getter)queue_get_name, NULL, NULL, NULL},
    {"backend", (getter)queue_get_backend, NULL, NULL, NULL},
    {"capacity", (getter)queue_get_capacity, NULL, NULL, NULL},
    {"max_message", (getter)queue_get_max_message, NULL, NULL, NULL},
    {"created", (getter)queue_get_created, NULL, NULL, NULL},
    {"readonly", (getter)queue_get_readonly, NULL, NULL, NULL},
    {"closed", (getter)queue_get_closed, NULL, NULL, NULL},
    {"bytes_used", (getter)queue_get_bytes_used, NULL, NULL, NULL},
    {"_mapped_size", (getter)queue_get_mapped, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* The docstrings live on fastshm.Queue, whose methods these override. */
static PyMethodDef queue_methods[] = {
    {"put", (PyCFunction)(void (*)(void))queue_put, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"put_nowait", (PyCFunction)queue_put_nowait, METH_O, NULL},
    {"put_many", (PyCFunction)(void (*)(void))queue_put_many, METH_FASTCALL | METH_KEYWORDS,
     NULL},
    {"get", (PyCFunction)(void (*)(void))queue_get, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"get_nowait", (PyCFunction)queue_get_nowait, METH_NOARGS, NULL},
    {"get_into", (PyCFunction)(void (*)(void))queue_get_into, METH_FASTCALL | METH_KEYWORDS,
     NULL},
    {"get_many", (PyCFunction)(void (*)(void))queue_get_many, METH_FASTCALL | METH_KEYWORDS,
     NULL},
    {"qsize", (PyCFunction)queue_qsize, METH_NOARGS, NULL},
    {"close", (PyCFunction)queue_close, METH_NOARGS, NULL},
    {"_lock_owner", (PyCFunction)queue_lock_owner, METH_NOARGS, NULL},
    {"_break_lock", (PyCFunction)queue_break_lock, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject QueueType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fastshm._cext.QueueCore",
    .tp_basicsize = sizeof(QueueObject),
    .tp_dealloc = (destructor)queue_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The C half of fastshm.Queue (open with fastshm.Queue).",
    .tp_weaklistoffset = offsetof(QueueObject, weakreflist),
    .tp_methods = queue_methods,
    .tp_getset = queue_getset,
    .tp_new = queue_new,
};

/* ------------------------------------------------------------------ */

int queue_types_add(PyObject *module)
{
    if (PyType_Ready(&QueueType) < 0)
        return -1;
    Py_INCREF(&QueueType);
    if (PyModule_AddObject(module, "QueueCore", (PyObject *)&QueueType) < 0)
        return -1;
    return 0;
}
