/*
 * PublisherCore of fastshm._cext, over csrc/channel_lend.c: publish, and the
 * halves of a loan (_loan, _commit, _discard) that fastshm.Publisher.loan
 * puts together.
 */
#include "_cext_channel.h"

#include <errno.h>
#include <string.h>

static PyObject *publisher_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PublisherObject *self;
    fshm_channel c;
    fshm_map m;
    PyObject *name, *mapping;

    if (channel_open(args, kwds, "PublisherCore", &c, &m, &name) != 0)
        return NULL;
    if ((mapping = mapping_new(&m)) == NULL)
        return NULL;
    if ((self = (PublisherObject *)type->tp_alloc(type, 0)) == NULL) {
        Py_DECREF(mapping);
        return NULL;
    }
    self->c = c;
    self->mapping = mapping;
    self->created = m.created;
    Py_INCREF(name);
    self->name = name;
    return (PyObject *)self;
}

static void publisher_dealloc(PublisherObject *self)
{
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    Py_CLEAR(self->view);
    Py_CLEAR(self->mapping);
    Py_CLEAR(self->name);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The channel of an open publisher and a new reference to its mapping,
 * which keeps it mapped while the GIL is released; NULL when closed. */
static PyObject *publisher_hold(PublisherObject *self, fshm_channel *c)
{
    if (self->mapping == NULL)
        return channel_closed(self->name);
    *c = self->c;
    Py_INCREF(self->mapping);
    return self->mapping;
}

/* After a publish or loan that found no slot (or the lock held) in its
 * slice: signal handlers run, then it sleeps in slices, without the spin
 * that call made, until a slot may be free.  0 with *slice the timeout of
 * the next try (0 once out of time: it is the last), or the code to stop
 * with. */
static int sleep_for_room(PublisherObject *self, const fshm_channel *c, int64_t deadline,
                          int64_t *slice)
{
    for (;;) {
        int rc = channel_between_slices(self->mapping, self->name);
        if (rc != 0)
            return rc;
        if ((*slice = channel_slice_until(deadline)) == 0)
            return 0;
        Py_BEGIN_ALLOW_THREADS
        rc = fshm_channel_wait_room(c, *slice);
        Py_END_ALLOW_THREADS
        if (rc == 0) {
            *slice = channel_slice_until(deadline);
            return 0;
        }
        if (rc != FSHM_ETIMEOUT && rc != EINTR)
            return rc;
    }
}

/* Whether a publish's or loan's code means "nothing done yet: try again in
 * the next slice": EINTR (a signal came while it slept), EFULL (no slot),
 * EBUSY (the lock held through the slice). */
static int try_again(int rc, int64_t slice)
{
    return rc == EINTR || ((rc == FSHM_EFULL || rc == FSHM_EBUSY) && slice > 0);
}

/* A publish that could not be made with the GIL: without it, in slices. */
static int publish_waiting(PublisherObject *self, const fshm_channel *c, const char *src,
                           size_t n, int64_t deadline, uint64_t *seq)
{
    int64_t slice = channel_slice_until(deadline);
    int rc;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        rc = fshm_channel_publish(c, src, n, slice, seq);
        Py_END_ALLOW_THREADS
        if (!try_again(rc, slice))
            return rc;
        if ((rc = sleep_for_room(self, c, deadline, &slice)) != 0)
            return rc;
    }
}

/* The same for a loan. */
static int loan_waiting(PublisherObject *self, const fshm_channel *c, size_t size,
                        fshm_loan *loan, int64_t deadline)
{
    int64_t slice = channel_slice_until(deadline);
    int rc;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        rc = fshm_channel_loan(c, size, loan, slice);
        Py_END_ALLOW_THREADS
        if (!try_again(rc, slice))
            return rc;
        if ((rc = sleep_for_room(self, c, deadline, &slice)) != 0)
            return rc;
    }
}

static PyObject *full_error(PublisherObject *self, const fshm_channel *c, int rc,
                            PyObject *timeout)
{
    return raise_from("channel_full_error", "(OOOK)", self->name, timeout,
                      rc == FSHM_EBUSY ? Py_True : Py_False,
                      (unsigned long long)fshm_channel_lock_owner(c));
}

static PyObject *publisher_publish(PublisherObject *self, PyObject *const *args,
                                   Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *data = NULL, *timeout = Py_None, *keep, *result = NULL;
    const char *src;
    Py_ssize_t n;
    Py_buffer view;
    int have_view = 0, rc;
    int64_t deadline;
    uint64_t seq = 0;
    fshm_channel c;

    if (nargs == 1 && kwnames == NULL)
        data = args[0];
    else if (channel_parse_size_timeout("publish", args, nargs, kwnames, &data, 1, &timeout,
                                        NULL) != 0)
        return NULL;
    if (parse_timeout(timeout, &deadline) != 0)
        return NULL;
    if ((keep = publisher_hold(self, &c)) == NULL)
        return NULL;
    if (message_bytes(data, "publish", &view, &have_view, &src, &n) != 0)
        goto done;
    if ((uint64_t)n > c.slot_size) {
        raise_from("too_big", "(nOK)", n, self->name, (unsigned long long)c.slot_size);
        goto done;
    }
    if (n < GIL_RELEASE_BYTES) {
        /* Short copies keep the GIL; only a publish that has to wait lets
         * it go. */
        rc = fshm_channel_try_publish(&c, src, (size_t)n, &seq);
        if (rc == FSHM_EFULL || rc == FSHM_EBUSY)
            rc = publish_waiting(self, &c, src, (size_t)n, deadline, &seq);
    } else {
        rc = publish_waiting(self, &c, src, (size_t)n, deadline, &seq);
    }
    if (rc == FSHM_EFULL || rc == FSHM_EBUSY)
        full_error(self, &c, rc, timeout);
    else if (rc == FSHM_ETOOBIG)
        raise_from("too_big", "(nOK)", n, self->name, (unsigned long long)c.slot_size);
    else if (rc != 0)
        channel_error(rc, self->name, &c);
    else if ((result = PyLong_FromUnsignedLongLong(seq)) != NULL)
        self->last_seq = seq;
done:
    if (have_view)
        PyBuffer_Release(&view);
    Py_DECREF(keep);
    return result;
}

/* _loan(size, timeout) -> (slot, offset, capacity, view): a slot lent for
 * `size` bytes and a writable memoryview of them. */
static PyObject *publisher_loan(PublisherObject *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    PyObject *size_obj = NULL, *timeout = Py_None, *keep, *result = NULL, *sl = NULL;
    Py_ssize_t size;
    int64_t deadline;
    fshm_channel c;
    fshm_loan loan;
    int rc;

    if (channel_parse_size_timeout("_loan", args, nargs, kwnames, &size_obj, 1, &timeout,
                                   NULL) != 0)
        return NULL;
    if ((size = PyNumber_AsSsize_t(size_obj, PyExc_OverflowError)) == -1 && PyErr_Occurred())
        return NULL;
    if (parse_timeout(timeout, &deadline) != 0)
        return NULL;
    if ((keep = publisher_hold(self, &c)) == NULL)
        return NULL;
    if (size < 0 || (uint64_t)size > c.slot_size) {
        raise_from("too_big", "(nOK)", size, self->name, (unsigned long long)c.slot_size);
        goto done;
    }
    if (self->view == NULL && (self->view = PyMemoryView_FromObject(self->mapping)) == NULL)
        goto done;
    rc = fshm_channel_try_loan(&c, (size_t)size, &loan);
    if (rc == FSHM_EFULL || rc == FSHM_EBUSY)
        rc = loan_waiting(self, &c, (size_t)size, &loan, deadline);
    if (rc == FSHM_EFULL || rc == FSHM_EBUSY) {
        full_error(self, &c, rc, timeout);
        goto done;
    }
    if (rc != 0) {
        channel_error(rc, self->name, &c);
        goto done;
    }
    /* Another thread may have closed the publisher (dropping its view)
     * while this one waited for room without the GIL: the slot goes back,
     * and the caller hears the publisher is closed. */
    if (self->view == NULL) {
        fshm_channel_discard(&c, &loan);
        channel_closed(self->name);
        goto done;
    }
    sl = PySequence_GetSlice(self->view, (Py_ssize_t)loan.offset,
                             (Py_ssize_t)loan.offset + size);
    if (sl == NULL) {
        fshm_channel_discard(&c, &loan);
        goto done;
    }
    result = Py_BuildValue("(IKKN)", (unsigned int)loan.slot, (unsigned long long)loan.offset,
                           (unsigned long long)loan.capacity, sl);
    if (result == NULL)
        fshm_channel_discard(&c, &loan);
done:
    Py_DECREF(keep);
    return result;
}

/* The loan a (slot, offset, capacity) triple names. */
static int loan_args(PublisherObject *self, PyObject *const *args, Py_ssize_t nargs,
                     Py_ssize_t want, fshm_loan *loan, size_t *length)
{
    unsigned long long slot, offset, capacity, len = 0;
    if (nargs != want) {
        PyErr_SetString(PyExc_TypeError, "a loan is (slot, offset, capacity)");
        return -1;
    }
    slot = PyLong_AsUnsignedLongLong(args[0]);
    offset = PyLong_AsUnsignedLongLong(args[1]);
    capacity = PyLong_AsUnsignedLongLong(args[2]);
    if (want == 4)
        len = PyLong_AsUnsignedLongLong(args[3]);
    if (PyErr_Occurred())
        return -1;
    if (offset > self->c.size || capacity > self->c.size - offset) {
        PyErr_SetString(PyExc_ValueError, "not a loan of this channel");
        return -1;
    }
    loan->slot = (uint32_t)slot;
    loan->offset = (size_t)offset;
    loan->capacity = (size_t)capacity;
    loan->data = self->c.base + offset;
    if (length != NULL)
        *length = (size_t)len;
    return 0;
}

/* _commit(slot, offset, capacity, length) -> seq.  It waits for the lock
 * as long as that takes (the slot is lent: no room to wait for); a signal
 * handler that raises meanwhile leaves the loan held, for _discard. */
static PyObject *publisher_commit(PublisherObject *self, PyObject *const *args,
                                  Py_ssize_t nargs)
{
    fshm_loan loan;
    fshm_channel c;
    size_t length;
    uint64_t seq = 0;
    PyObject *keep, *result = NULL;
    int rc;

    if ((keep = publisher_hold(self, &c)) == NULL)
        return NULL;
    if (loan_args(self, args, nargs, 4, &loan, &length) != 0)
        goto done;
    rc = fshm_channel_try_commit(&c, &loan, length, &seq);
    while (rc == FSHM_EBUSY || rc == EINTR) {
        if ((rc = channel_between_slices(self->mapping, self->name)) != 0)
            break;
        Py_BEGIN_ALLOW_THREADS
        rc = fshm_channel_commit(&c, &loan, length, CHANNEL_SLICE_NS, &seq);
        Py_END_ALLOW_THREADS
    }
    if (rc != 0)
        channel_error(rc, self->name, &c);
    else if ((result = PyLong_FromUnsignedLongLong(seq)) != NULL)
        self->last_seq = seq;
done:
    Py_DECREF(keep);
    return result;
}

static PyObject *publisher_discard(PublisherObject *self, PyObject *const *args,
                                   Py_ssize_t nargs)
{
    fshm_loan loan;
    if (self->mapping == NULL)
        Py_RETURN_NONE; /* closed: the loan is reclaimed as this process's */
    if (loan_args(self, args, nargs, 3, &loan, NULL) != 0)
        return NULL;
    fshm_channel_discard(&self->c, &loan);
    Py_RETURN_NONE;
}

static PyObject *publisher_close(PublisherObject *self, PyObject *unused)
{
    (void)unused;
    Py_CLEAR(self->view);
    Py_CLEAR(self->mapping);
    Py_RETURN_NONE;
}

CHANNEL_GETTERS(publisher, PublisherObject)

static PyGetSetDef publisher_getset[] = {
    CHANNEL_GETSET(publisher),
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef publisher_methods[] = {
    {"publish", (PyCFunction)(void (*)(void))publisher_publish, METH_FASTCALL | METH_KEYWORDS,
     "publish(data, timeout=None) -> the message's number"},
    {"_loan", (PyCFunction)(void (*)(void))publisher_loan, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"_commit", (PyCFunction)(void (*)(void))publisher_commit, METH_FASTCALL, NULL},
    {"_discard", (PyCFunction)(void (*)(void))publisher_discard, METH_FASTCALL, NULL},
    {"close", (PyCFunction)publisher_close, METH_NOARGS, "Close; harmless when closed."},
    {"_lock_owner", (PyCFunction)publisher_lock_owner, METH_NOARGS, NULL},
    {"_break_lock", (PyCFunction)publisher_break_lock, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

PyTypeObject PublisherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fastshm._cext.PublisherCore",
    .tp_basicsize = sizeof(PublisherObject),
    .tp_dealloc = (destructor)publisher_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The C half of fastshm.Publisher (open with fastshm.Publisher).",
    .tp_weaklistoffset = offsetof(PublisherObject, weakreflist),
    .tp_methods = publisher_methods,
    .tp_getset = publisher_getset,
    .tp_new = publisher_new,
};
