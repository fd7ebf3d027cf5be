/*
 * fastshm._cext.SegmentCore, over csrc/slot.c: the hot methods of
 * fastshm.Segment (store, load, load_into, view, wait, seq, len) as
 * METH_FASTCALL C methods; fastshm.segment makes the Segment class that
 * subclasses it.
 */
#include "_cext.h"

#include <errno.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    fshm_seg seg;          /* seg.base is NULL once closed */
    PyObject *mapping;     /* the Mapping that owns seg.base; NULL once closed */
    PyObject *slot_view[2];/* read-only memoryviews of the two payload areas,
                              made by the first view() */
    PyObject *name;        /* str */
    uint64_t last_seq;     /* newest message this object stored, loaded or awaited */
    int64_t spin_ns;       /* adaptive wait spin (fshm_spin_next) */
    int created;
    PyObject *weakreflist;
} SegmentObject;

static PyTypeObject SegmentType;

static void segment_clear(SegmentObject *self)
{
    self->seg.base = NULL;
    Py_CLEAR(self->slot_view[0]);
    Py_CLEAR(self->slot_view[1]);
    Py_CLEAR(self->mapping);
}

static void segment_dealloc(SegmentObject *self)
{
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    segment_clear(self);
    Py_CLEAR(self->name);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A read-only memoryview of bytes [start, start + len) of the mapping. */
static PyObject *readonly_view(PyObject *mapping, Py_ssize_t start, Py_ssize_t len)
{
    PyObject *whole, *part, *ro;
    if ((whole = PyMemoryView_FromObject(mapping)) == NULL)
        return NULL;
    part = PySequence_GetSlice(whole, start, start + len);
    Py_DECREF(whole);
    if (part == NULL)
        return NULL;
    ro = PyObject_CallMethod(part, "toreadonly", NULL);
    Py_DECREF(part);
    return ro;
}

static int open_segment(void *core, fshm_map *m, const char *name, int how,
                        uint64_t capacity, unsigned mode)
{
    return fshm_seg_open((fshm_seg *)core, m, name, how, capacity, mode);
}

/* SegmentCore.__new__(cls, name, how, capacity, mode): open (or create) the
 * segment; `how` may carry FSHM_ANY_OWNER. */
static PyObject *segment_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *name;
    fshm_seg seg;
    fshm_map m;
    SegmentObject *self;

    if (open_by_name("SegmentCore", "Queue", args, kwds, open_segment, &seg, &m, &name) != 0)
        return NULL;
    self = (SegmentObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        fshm_unmap(m.base, m.size);
        return NULL;
    }
    self->seg = seg;
    self->mapping = mapping_new(&m);
    if (self->mapping == NULL) {
        self->seg.base = NULL;
        Py_DECREF(self);
        return NULL;
    }
    Py_INCREF(name);
    self->name = name;
    self->created = m.created;
    self->last_seq = 0;
    self->spin_ns = FSHM_SPIN_MIN_NS;
    return (PyObject *)self;
}

static int closed_error(SegmentObject *self)
{
    PyErr_Format(PyExc_ValueError, "segment %R is closed", self->name);
    return -1;
}

/* The segment of an open object, and a new reference to its mapping that
 * keeps it mapped until the caller lets go of it: another thread may close
 * the object whenever the GIL is released, and converting an argument may
 * run Python code that closes it.  NULL (ValueError) when closed. */
static PyObject *hold(SegmentObject *self, fshm_seg *s)
{
    if (self->seg.base == NULL) {
        closed_error(self);
        return NULL;
    }
    *s = self->seg;
    Py_INCREF(self->mapping);
    return self->mapping;
}

/* -- store -- */

/* A store without the GIL, waiting for another writer's lock in slices of
 * WAIT_SLICE_NS: between them (and after EINTR, a signal that came while it
 * slept) Python's signal handlers run, and the store goes on unless one
 * raised.  A signal that lands while the core spins rather than sleeps is
 * seen at the slice's end, so a writer stopped with the lock cannot make
 * Ctrl-C wait. */
static int store_without_gil(SegmentObject *self, const fshm_seg *s, const void *src,
                             size_t n, uint64_t *seq)
{
    int rc;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        rc = fshm_store_timed(s, src, n, WAIT_SLICE_NS, seq);
        Py_END_ALLOW_THREADS
        if (rc != EINTR && rc != FSHM_EBUSY)
            return rc;
        if (PyErr_CheckSignals() != 0)
            return PY_ERROR_SET;
        if (self->seg.base == NULL) { /* closed by another thread meanwhile */
            closed_error(self);
            return PY_ERROR_SET;
        }
    }
}

static PyObject *store_error(SegmentObject *self, const fshm_seg *s, int rc, Py_ssize_t n)
{
    if (rc == PY_ERROR_SET) /* a signal handler raised */
        return NULL;
    if (rc == FSHM_ETOOBIG)
        return raise_from("too_big", "(nOK)", n, self->name,
                          (unsigned long long)s->capacity);
    if (rc == EACCES && s->readonly)
        return raise_from("read_only_error", "(O)", self->name);
    return raise_code(rc, self->name, rc == FSHM_EFORMAT ? "seq" : "");
}

static PyObject *segment_store(SegmentObject *self, PyObject *data)
{
    fshm_seg s;
    const char *src;
    Py_ssize_t n;
    Py_buffer view;
    int rc, have_view = 0;
    uint64_t seq = 0;
    PyObject *keep = hold(self, &s), *result = NULL;

    if (keep == NULL)
        return NULL;
    if (message_bytes(data, "store", &view, &have_view, &src, &n) != 0)
        goto done;
    if ((uint64_t)n > s.capacity) {
        rc = FSHM_ETOOBIG;
    } else if (n < GIL_RELEASE_BYTES) {
        /* Short work keeps the GIL; only a writer that has to sleep for
         * another writer's lock lets it go. */
        rc = fshm_try_store(&s, src, (size_t)n, &seq);
        if (rc == FSHM_EBUSY)
            rc = store_without_gil(self, &s, src, (size_t)n, &seq);
    } else {
        rc = store_without_gil(self, &s, src, (size_t)n, &seq);
    }
    if (rc != 0) {
        store_error(self, &s, rc, n);
        goto done;
    }
    self->last_seq = seq;
    result = PyLong_FromUnsignedLongLong(seq);
done:
    if (have_view)
        PyBuffer_Release(&view);
    Py_DECREF(keep);
    return result;
}

/* -- load -- */

static PyObject *read_error(SegmentObject *self, int rc)
{
    if (rc == PY_ERROR_SET)
        return NULL;
    return raise_code(rc, self->name, "slot");
}

/* The writer lock and the GIL are never held while waiting for the other:
 * the lock is waited for, held and released without the GIL (another thread
 * of this process may hold the GIL and wait for the lock; writers in other
 * processes wait for it too). */

/* A copy of the current message made under the writer lock, into memory
 * from PyMem_RawMalloc: *buf (free it with PyMem_RawFree). */
static int load_locked(const fshm_seg *s, char **buf, fshm_read *r)
{
    int rc;
    *buf = NULL;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        rc = fshm_read_lock(s, r);
        if (rc == 0) {
            *buf = (char *)PyMem_RawMalloc(r->length ? r->length : 1);
            if (*buf != NULL)
                memcpy(*buf, s->base + r->offset, r->length);
            /* A python-backend writer claims the lock word without a
             * compare-and-swap and may not have seen us. */
            rc = fshm_read_end(s, r);
            fshm_read_unlock(s);
        }
        Py_END_ALLOW_THREADS
        if (rc == 0 && *buf == NULL) {
            PyErr_NoMemory();
            return PY_ERROR_SET;
        }
        if (rc != EINTR)
            return rc; /* FSHM_EAGAIN (with *buf to free) or an error */
        if (PyErr_CheckSignals() != 0)
            return PY_ERROR_SET;
    }
}

static PyObject *segment_load(SegmentObject *self, PyObject *unused)
{
    fshm_seg s;
    fshm_read r;
    unsigned tries = 0;
    int64_t since = 0;
    PyObject *keep = hold(self, &s), *out = NULL;
    (void)unused;

    if (keep == NULL)
        return NULL;
    for (;;) {
        int rc, locked = 0;
        /* fshm_load's policy (FSHM_LOAD_TRIES, FSHM_LOAD_LOCKFREE_NS). */
        if (++tries > FSHM_LOAD_TRIES) {
            int64_t now = fshm_monotonic_ns();
            if (since == 0)
                since = now;
            if (now - since < FSHM_LOAD_LOCKFREE_NS)
                tries = FSHM_LOAD_TRIES;
            else
                locked = !s.readonly;
        }
        if (locked) {
            char *buf;
            rc = load_locked(&s, &buf, &r);
            if (rc == 0)
                out = PyBytes_FromStringAndSize(buf, (Py_ssize_t)r.length);
            PyMem_RawFree(buf);
            if (rc == FSHM_EAGAIN)
                continue;
            if (rc == FSHM_EBUSY) {
                /* A writer held the lock 50 ms: stopped, it spoils no copy,
                 * so copies without the lock hold again. */
                tries = 0;
                since = 0;
                if (PyErr_CheckSignals() != 0)
                    break;
                continue;
            }
            if (rc != 0)
                read_error(self, rc);
            else if (out != NULL)
                self->last_seq = r.seq;
            break;
        }
        if (tries > FSHM_LOAD_TRIES) {
            /* Read-only: no lock to fall back on.  Let other threads and
             * signal handlers in between attempts. */
            Py_BEGIN_ALLOW_THREADS
            fshm_sleep_ns(0);
            Py_END_ALLOW_THREADS
            if (PyErr_CheckSignals() != 0)
                break;
        }
        if ((rc = fshm_read_begin(&s, &r)) != 0) {
            read_error(self, rc);
            break;
        }
        if (r.length < GIL_RELEASE_BYTES) {
            out = PyBytes_FromStringAndSize((const char *)s.base + r.offset,
                                            (Py_ssize_t)r.length);
            rc = fshm_read_end(&s, &r);
        } else {
            out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)r.length);
            if (out != NULL) {
                char *dst = PyBytes_AS_STRING(out);
                Py_BEGIN_ALLOW_THREADS
                memcpy(dst, s.base + r.offset, r.length);
                rc = fshm_read_end(&s, &r);
                Py_END_ALLOW_THREADS
            }
        }
        if (out == NULL)
            break;
        if (rc == 0) {
            self->last_seq = r.seq;
            break;
        }
        Py_CLEAR(out); /* writers got there first: again */
    }
    Py_DECREF(keep);
    return out;
}

static PyObject *segment_load_into(SegmentObject *self, PyObject *buffer)
{
    fshm_seg s;
    fshm_read r;
    Py_buffer view;
    Py_ssize_t cap;
    size_t n = 0;
    uint64_t seq = 0;
    int rc;
    PyObject *keep = hold(self, &s), *result = NULL;

    if (keep == NULL)
        return NULL;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_STRIDED_RO) != 0) {
        PyErr_Format(PyExc_TypeError, "load_into needs a writable bytes-like object, not %.200s",
                     Py_TYPE(buffer)->tp_name);
        Py_DECREF(keep);
        return NULL;
    }
    if (view.readonly) {
        PyErr_SetString(PyExc_TypeError,
                        "load_into needs a writable buffer; this one is read-only");
        goto done;
    }
    if (!PyBuffer_IsContiguous(&view, 'C')) {
        PyErr_SetString(PyExc_ValueError, "load_into needs a C-contiguous buffer");
        goto done;
    }
    cap = view.len;
    /* A look at the length decides whether the copy is worth the GIL; with
     * the GIL, only lock-free attempts (fshm_try_load). */
    rc = fshm_read_begin(&s, &r);
    if (rc == 0)
        rc = r.length < GIL_RELEASE_BYTES
                 ? fshm_try_load(&s, view.buf, (size_t)cap, &n, &seq)
                 : FSHM_EAGAIN;
    while (rc == FSHM_EAGAIN || rc == EINTR) {
        if (rc == EINTR && PyErr_CheckSignals() != 0) {
            rc = PY_ERROR_SET;
            break;
        }
        Py_BEGIN_ALLOW_THREADS
        rc = fshm_load(&s, view.buf, (size_t)cap, &n, &seq);
        Py_END_ALLOW_THREADS
    }
    if (rc == FSHM_ESMALL) {
        raise_from("too_small", "(nn)", cap, (Py_ssize_t)n);
    } else if (rc != 0) {
        read_error(self, rc);
    } else {
        self->last_seq = seq;
        result = PyLong_FromSize_t(n);
    }
done:
    PyBuffer_Release(&view);
    Py_DECREF(keep);
    return result;
}

/* The read-only views of the two payload areas, made by the first view()
 * (not at open: attaching stays close to its system calls).  Borrowed. */
static PyObject *slot_view(SegmentObject *self, PyObject *mapping, const fshm_seg *s,
                           uint64_t seq)
{
    if (self->slot_view[0] == NULL) {
        PyObject *views[2];
        int i;
        for (i = 0; i < 2; i++) {
            Py_ssize_t start = FSHM_HEADER_SIZE + FSHM_SLOT_HEADER_SIZE +
                               (Py_ssize_t)((uint64_t)i * s->stride);
            views[i] = readonly_view(mapping, start, (Py_ssize_t)s->capacity);
            if (views[i] == NULL) {
                if (i == 1)
                    Py_DECREF(views[0]);
                return NULL;
            }
        }
        /* Allocating may have run a finalizer that closed this object:
         * keep the views only if it is still open. */
        if (self->seg.base == NULL || self->slot_view[0] != NULL) {
            Py_DECREF(views[0]);
            Py_DECREF(views[1]);
            if (self->seg.base == NULL)
                return closed_error(self), NULL;
        } else {
            self->slot_view[0] = views[0];
            self->slot_view[1] = views[1];
        }
    }
    return self->slot_view[seq & 1];
}

static PyObject *segment_view(SegmentObject *self, PyObject *unused)
{
    fshm_seg s;
    fshm_read r;
    PyObject *keep, *slot, *part = NULL;
    (void)unused;

    if ((keep = hold(self, &s)) == NULL)
        return NULL;
    for (;;) {
        int rc = fshm_read_begin(&s, &r);
        if (rc != 0) {
            read_error(self, rc);
            goto done;
        }
        /* The length and slot read by begin belong together only if the
         * slot word did not move meanwhile. */
        if (fshm_read_end(&s, &r) == 0)
            break;
    }
    if ((slot = slot_view(self, keep, &s, r.seq)) == NULL)
        goto done;
    /* A view of the message is a slice of its slot's view, which keeps the
     * mapping alive as long as it lives. */
    Py_INCREF(slot);
    part = PySequence_GetSlice(slot, 0, (Py_ssize_t)r.length);
    Py_DECREF(slot);
    if (part != NULL)
        self->last_seq = r.seq;
done:
    Py_DECREF(keep);
    return part;
}

static Py_ssize_t segment_length(SegmentObject *self)
{
    fshm_read r;
    if (self->seg.base == NULL)
        return closed_error(self);
    for (;;) {
        int rc = fshm_read_begin(&self->seg, &r);
        if (rc != 0) {
            read_error(self, rc);
            return -1;
        }
        if (fshm_read_end(&self->seg, &r) == 0)
            return (Py_ssize_t)r.length;
    }
}

/* -- message numbers and timeouts -- */

/* A message number from any integer-like object (not bool), 0 <= v < 2**63. */
static int parse_seq(PyObject *obj, const char *what, uint64_t *out)
{
    PyObject *index;
    long long v;
    int overflow = 0;
    if (PyBool_Check(obj) || !PyIndex_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int message number, not %R", what, obj);
        return -1;
    }
    if ((index = PyNumber_Index(obj)) == NULL)
        return -1;
    v = PyLong_AsLongLongAndOverflow(index, &overflow);
    Py_DECREF(index);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow > 0) {
        PyErr_Format(PyExc_ValueError, "%s must be a message number below 2**63, not %R",
                     what, obj);
        return -1;
    }
    if (overflow < 0 || v < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be a message number >= 0, not %R", what, obj);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

static PyObject *segment_wait(SegmentObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    PyObject *timeout = Py_None, *after_obj = Py_None, *keep, *result = NULL;
    fshm_seg s;
    uint64_t after = 0, seq;
    int64_t deadline, start, spin;
    Py_ssize_t i, nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    int rc;

    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "wait() takes at most 1 positional argument (%zd given)",
                     nargs);
        return NULL;
    }
    if (nargs == 1)
        timeout = args[0];
    for (i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(key, "after") == 0) {
            after_obj = args[nargs + i];
        } else if (PyUnicode_CompareWithASCIIString(key, "timeout") == 0) {
            if (nargs == 1) {
                PyErr_SetString(PyExc_TypeError, "wait() got multiple values for argument 'timeout'");
                return NULL;
            }
            timeout = args[nargs + i];
        } else {
            PyErr_Format(PyExc_TypeError, "wait() got an unexpected keyword argument %R", key);
            return NULL;
        }
    }
    /* The arguments first: converting them may run Python code. */
    if (after_obj != Py_None && parse_seq(after_obj, "after", &after) != 0)
        return NULL;
    if (parse_timeout(timeout, &deadline) != 0)
        return NULL;
    if ((keep = hold(self, &s)) == NULL)
        return NULL;
    if (after_obj == Py_None)
        after = self->last_seq;

    seq = fshm_seq(&s);
    if (seq > after) /* already there: no setup at all */
        goto got;
    start = fshm_monotonic_ns();
    spin = self->spin_ns;
    for (;;) {
        int64_t now = fshm_monotonic_ns(), slice;
        slice = deadline - now < WAIT_SLICE_NS ? deadline - now : WAIT_SLICE_NS;
        if (slice < 0)
            slice = 0;
        Py_BEGIN_ALLOW_THREADS
        rc = fshm_wait_spin(&s, after, slice, spin, &seq);
        Py_END_ALLOW_THREADS
        spin = 0; /* later slices of one wait: the spin is spent */
        if (rc == 0) {
            self->spin_ns = fshm_spin_next(self->spin_ns, fshm_monotonic_ns() - start);
            goto got;
        }
        if (rc == FSHM_ETIMEOUT && fshm_monotonic_ns() >= deadline) {
            self->spin_ns = fshm_spin_next(self->spin_ns, -1);
            PyErr_Format(PyExc_TimeoutError, "no message newer than #%llu in %R within %S s",
                         (unsigned long long)after, self->name, timeout);
            goto done;
        }
        if (rc != FSHM_ETIMEOUT && rc != EINTR) {
            raise_code(rc, self->name, "");
            goto done;
        }
        if (PyErr_CheckSignals() != 0) /* Ctrl-C, or another handler raised */
            goto done;
        if (self->seg.base == NULL) { /* closed by another thread */
            closed_error(self);
            goto done;
        }
    }
got:
    if ((result = PyLong_FromUnsignedLongLong(seq)) != NULL)
        self->last_seq = seq;
done:
    Py_DECREF(keep);
    return result;
}

static PyObject *segment_intact(SegmentObject *self, PyObject *seq_obj)
{
    fshm_seg s;
    uint64_t seq;
    PyObject *keep, *result;
    /* The argument first: converting it may run Python code. */
    if (parse_seq(seq_obj, "seq", &seq) != 0)
        return NULL;
    if ((keep = hold(self, &s)) == NULL)
        return NULL;
    result = PyBool_FromLong(fshm_intact(&s, seq));
    Py_DECREF(keep);
    return result;
}

static PyObject *segment_close(SegmentObject *self, PyObject *unused)
{
    (void)unused;
    segment_clear(self);
    Py_RETURN_NONE;
}

static PyObject *segment_lock_owner(SegmentObject *self, PyObject *unused)
{
    (void)unused;
    if (self->seg.base == NULL)
        return closed_error(self), NULL;
    return PyLong_FromUnsignedLongLong(fshm_lock_owner(&self->seg));
}

static PyObject *segment_break_lock(SegmentObject *self, PyObject *owner)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(owner);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (self->seg.base == NULL)
        return closed_error(self), NULL;
    if (self->seg.readonly)
        return raise_from("read_only_error", "(O)", self->name);
    return PyBool_FromLong(fshm_break_lock(&self->seg, (uint64_t)v) == 0);
}

/* -- attributes -- */

static PyObject *segment_get_seq(SegmentObject *self, void *closure)
{
    (void)closure;
    if (self->seg.base == NULL)
        return closed_error(self), NULL;
    return PyLong_FromUnsignedLongLong(fshm_seq(&self->seg));
}

static PyObject *segment_get_last_seq(SegmentObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->last_seq);
}

static PyObject *segment_get_capacity(SegmentObject *self, void *closure)
{
    (void)closure;
    if (self->seg.base == NULL)
        return closed_error(self), NULL;
    return PyLong_FromUnsignedLongLong(self->seg.capacity);
}

static PyObject *segment_get_created(SegmentObject *self, void *closure)
{
    (void)closure;
    if (self->seg.base == NULL)
        return closed_error(self), NULL;
    return PyBool_FromLong(self->created);
}

static PyObject *segment_get_readonly(SegmentObject *self, void *closure)
{
    (void)closure;
    if (self->seg.base == NULL)
        return closed_error(self), NULL;
    return PyBool_FromLong(self->seg.readonly);
}

static PyObject *segment_get_closed(SegmentObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->seg.base == NULL);
}

static PyObject *segment_get_name(SegmentObject *self, void *closure)
{
    (void)closure;
    Py_INCREF(self->name);
    return self->name;
}

static PyObject *segment_get_backend(SegmentObject *self, void *closure)
{
    (void)self;
    (void)closure;
    return PyUnicode_FromString("native");
}

static PyObject *segment_get_mapped(SegmentObject *self, void *closure)
{
    (void)closure;
    if (self->seg.base == NULL)
        return closed_error(self), NULL;
    return PyLong_FromSize_t(self->seg.size);
}

static PyGetSetDef segment_getset[] = {
    {"seq", (getter)segment_get_seq, NULL, NULL, NULL},
    {"last_seq", (getter)segment_get_last_seq, NULL, NULL, NULL},
    {"capacity", (getter)segment_get_capacity, NULL, NULL, NULL},
    {"created", (getter)segment_get_created, NULL, NULL, NULL},
    {"readonly", (getter)segment_get_readonly, NULL, NULL, NULL},
    {"closed", (getter)segment_get_closed, NULL, NULL, NULL},
    {"name", (getter)segment_get_name, NULL, NULL, NULL},
    {"backend", (getter)segment_get_backend, NULL, NULL, NULL},
    {"_mapped_size", (getter)segment_get_mapped, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* The docstrings live on fastshm.Segment, whose methods these override. */
static PyMethodDef segment_methods[] = {
    {"store", (PyCFunction)segment_store, METH_O, NULL},
    {"load", (PyCFunction)segment_load, METH_NOARGS, NULL},
    {"load_into", (PyCFunction)segment_load_into, METH_O, NULL},
    {"view", (PyCFunction)segment_view, METH_NOARGS, NULL},
    {"wait", (PyCFunction)(void (*)(void))segment_wait, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"intact", (PyCFunction)segment_intact, METH_O, NULL},
    {"close", (PyCFunction)segment_close, METH_NOARGS, NULL},
    {"_lock_owner", (PyCFunction)segment_lock_owner, METH_NOARGS, NULL},
    {"_break_lock", (PyCFunction)segment_break_lock, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods segment_as_sequence = {
    .sq_length = (lenfunc)segment_length,
};

static PyTypeObject SegmentType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fastshm._cext.SegmentCore",
    .tp_basicsize = sizeof(SegmentObject),
    .tp_dealloc = (destructor)segment_dealloc,
    .tp_as_sequence = &segment_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The C half of fastshm.Segment (open with fastshm.Segment).",
    .tp_weaklistoffset = offsetof(SegmentObject, weakreflist),
    .tp_methods = segment_methods,
    .tp_getset = segment_getset,
    .tp_new = segment_new,
};

/* ------------------------------------------------------------------ */

int segment_types_add(PyObject *module)
{
    if (PyType_Ready(&SegmentType) < 0)
        return -1;
    Py_INCREF(&SegmentType);
    if (PyModule_AddObject(module, "SegmentCore", (PyObject *)&SegmentType) < 0)
        return -1;
    return 0;
}
