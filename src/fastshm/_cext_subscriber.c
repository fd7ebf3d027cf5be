/*
 * SubscriberCore of fastshm._cext, over csrc/channel_receive.c: receive,
 * the next message as a SampleCore in place; receive_into, a copy of it in
 * the caller's buffer.
 */
#include "_cext_channel.h"

#include <errno.h>
#include <string.h>

static PyObject *subscriber_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    SubscriberObject *self;
    fshm_channel c;
    fshm_map m;
    fshm_sub sub;
    PyObject *name, *mapping, *st;
    int rc;

    if (channel_open(args, kwds, "SubscriberCore", &c, &m, &name) != 0)
        return NULL;
    if ((mapping = mapping_new(&m)) == NULL)
        return NULL;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        rc = fshm_channel_subscribe(&c, &sub, CHANNEL_SLICE_NS);
        Py_END_ALLOW_THREADS
        if (rc != EINTR && rc != FSHM_EBUSY)
            break;
        if (PyErr_CheckSignals() != 0) {
            Py_DECREF(mapping);
            return NULL;
        }
    }
    if (rc == FSHM_ESUBFULL) {
        raise_from("channel_full_error", "(OOOKI)", name, Py_None, Py_False, 0ULL,
                   (unsigned int)c.max_subscribers);
        Py_DECREF(mapping);
        return NULL;
    }
    if (rc != 0) {
        channel_error(rc, name, &c);
        Py_DECREF(mapping);
        return NULL;
    }
    if ((self = (SubscriberObject *)type->tp_alloc(type, 0)) == NULL) {
        fshm_channel_unsubscribe(&c, &sub);
        Py_DECREF(mapping);
        return NULL;
    }
    self->c = c;
    self->sub = sub;
    self->mapping = mapping;
    self->created = m.created;
    Py_INCREF(name);
    self->name = name;
    /* What receive() makes: the class's _sample_type, else SampleCore. */
    st = PyObject_GetAttrString((PyObject *)type, "_sample_type");
    if (st != NULL && PyType_Check(st) && PyType_IsSubtype((PyTypeObject *)st, &SampleType)) {
        self->sample_type = (PyTypeObject *)st;
    } else {
        PyErr_Clear();
        Py_XDECREF(st);
        Py_INCREF(&SampleType);
        self->sample_type = &SampleType;
    }
    return (PyObject *)self;
}

static PyObject *subscriber_close(SubscriberObject *self, PyObject *unused)
{
    (void)unused;
    if (self->mapping != NULL) {
        /* Gives up the entry and every pin: its samples' bytes are gone. */
        fshm_channel_unsubscribe(&self->c, &self->sub);
        Py_CLEAR(self->mapping);
    }
    Py_RETURN_NONE;
}

static void subscriber_dealloc(SubscriberObject *self)
{
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    if (self->mapping != NULL)
        fshm_channel_unsubscribe(&self->c, &self->sub);
    Py_CLEAR(self->mapping);
    Py_CLEAR(self->name);
    Py_CLEAR(self->sample_type);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Where a receive_into copies to: the caller's buffer, pinned by its
 * Py_buffer while the GIL is released. */
typedef struct {
    void *dst;
    size_t cap;
} copy_to;

/* A receive that found nothing with the GIL: without it, in slices.  With
 * `into`, a receive_into. */
static int receive_waiting(SubscriberObject *self, const fshm_channel *c, const copy_to *into,
                           fshm_sample *smp, uint64_t *missed, int64_t deadline)
{
    int64_t slice = channel_slice_until(deadline);
    fshm_sub sub = self->sub;
    int rc;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        rc = into == NULL
                 ? fshm_channel_receive(c, &sub, smp, missed, slice)
                 : fshm_channel_receive_into(c, &sub, into->dst, into->cap, smp, missed, slice);
        Py_END_ALLOW_THREADS
        if (rc != EINTR && !(rc == FSHM_ETIMEOUT && slice > 0))
            return rc;
        for (;;) {
            int woke;
            if ((rc = channel_between_slices(self->mapping, self->name)) != 0)
                return rc;
            if ((slice = channel_slice_until(deadline)) == 0)
                break;
            Py_BEGIN_ALLOW_THREADS
            woke = fshm_channel_wait(c, &sub, slice);
            Py_END_ALLOW_THREADS
            if (woke == 0) {
                slice = channel_slice_until(deadline);
                break;
            }
            if (woke != FSHM_ETIMEOUT && woke != EINTR)
                return woke;
        }
    }
}

/* What a receive that did not get a message raises. */
static PyObject *receive_error(SubscriberObject *self, const fshm_channel *c, int rc,
                               PyObject *timeout)
{
    if (rc == FSHM_ETIMEOUT) {
        PyErr_Format(PyExc_TimeoutError, "no new message on channel %R within %S s",
                     self->name, timeout);
        return NULL;
    }
    /* Closed by another thread while this one waited without the GIL: the
     * entry given up is why it was lost. */
    if (rc == FSHM_ELOST && self->mapping == NULL)
        return channel_closed(self->name);
    return channel_error(rc, self->name, c);
}

static PyObject *subscriber_receive(SubscriberObject *self, PyObject *const *args,
                                    Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *timeout = Py_None, *unused = NULL, *keep;
    SampleObject *out;
    fshm_channel c;
    fshm_sample smp;
    uint64_t missed = 0;
    int64_t deadline;
    int rc;

    if (nargs == 1 && kwnames == NULL)
        timeout = args[0];
    else if (nargs != 0 || kwnames != NULL) {
        if (nargs > 1 || channel_parse_size_timeout("receive", args, 0, kwnames, &unused, 0,
                                                    &timeout, NULL) != 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "receive() takes at most 1 argument");
            return NULL;
        }
        if (nargs == 1)
            timeout = args[0];
    }
    if (parse_timeout(timeout, &deadline) != 0)
        return NULL;
    if (self->mapping == NULL)
        return channel_closed(self->name);
    c = self->c;
    keep = self->mapping;
    Py_INCREF(keep);
    rc = fshm_channel_try_receive(&c, &self->sub, &smp, &missed);
    if (rc == FSHM_ETIMEOUT && channel_slice_until(deadline) > 0)
        rc = receive_waiting(self, &c, NULL, &smp, &missed, deadline);
    if (rc != 0) {
        receive_error(self, &c, rc, timeout);
        Py_DECREF(keep);
        return NULL;
    }
    out = (SampleObject *)self->sample_type->tp_alloc(self->sample_type, 0);
    if (out == NULL) {
        fshm_channel_release(&c, &self->sub, smp.slot);
        Py_DECREF(keep);
        return NULL;
    }
    Py_INCREF(self);
    out->owner = (PyObject *)self;
    out->mapping = keep; /* the reference taken above */
    out->buf = (const char *)c.base + smp.offset;
    out->len = (Py_ssize_t)smp.length;
    out->seq = smp.seq;
    out->slot = smp.slot;
    self->received++;
    /* Saturating: a pending count another process wrote near 2^64 must not
     * wrap the total below what was already reported. */
    self->missed = missed > UINT64_MAX - self->missed ? UINT64_MAX : self->missed + missed;
    self->last_seq = smp.seq;
    return (PyObject *)out;
}

/* receive_into(buffer, timeout=None) -> the message's length: the next
 * message copied into a writable C-contiguous buffer, its slot released
 * before returning.  A buffer too small is a ValueError, and nothing is
 * received.  The copy keeps the GIL unless it may reach GIL_RELEASE_BYTES;
 * a wait never does. */
static PyObject *subscriber_receive_into(SubscriberObject *self, PyObject *const *args,
                                         Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *buffer = NULL, *timeout = Py_None, *keep, *result = NULL;
    Py_buffer view;
    fshm_channel c;
    fshm_sample smp;
    copy_to into;
    uint64_t missed = 0;
    int64_t deadline;
    int rc;

    if (nargs == 1 && kwnames == NULL)
        buffer = args[0];
    else if (channel_parse_size_timeout("receive_into", args, nargs, kwnames, &buffer, 1,
                                        &timeout, "buffer") != 0)
        return NULL;
    if (parse_timeout(timeout, &deadline) != 0)
        return NULL;
    if (self->mapping == NULL)
        return channel_closed(self->name);
    if (PyObject_GetBuffer(buffer, &view, PyBUF_STRIDED_RO) != 0) {
        PyErr_Format(PyExc_TypeError,
                     "receive_into needs a writable bytes-like object, not %.200s",
                     Py_TYPE(buffer)->tp_name);
        return NULL;
    }
    if (view.readonly) {
        PyErr_SetString(PyExc_TypeError,
                        "receive_into needs a writable buffer; this one is read-only");
        PyBuffer_Release(&view);
        return NULL;
    }
    if (!PyBuffer_IsContiguous(&view, 'C')) {
        PyErr_SetString(PyExc_ValueError, "receive_into needs a C-contiguous buffer");
        PyBuffer_Release(&view);
        return NULL;
    }
    c = self->c;
    keep = self->mapping;
    Py_INCREF(keep);
    into.dst = view.buf;
    into.cap = (size_t)view.len;
    if ((into.cap < c.slot_size ? into.cap : c.slot_size) < GIL_RELEASE_BYTES) {
        rc = fshm_channel_try_receive_into(&c, &self->sub, into.dst, into.cap, &smp, &missed);
        if (rc == FSHM_ETIMEOUT && channel_slice_until(deadline) > 0)
            rc = receive_waiting(self, &c, &into, &smp, &missed, deadline);
    } else {
        /* A copy that may be long: even the first try lets the GIL go (its
         * slice is 0 for a zero timeout, a try without waiting). */
        rc = receive_waiting(self, &c, &into, &smp, &missed, deadline);
    }
    if (rc == 0 && self->mapping == NULL) {
        /* Closed by another thread while this one copied without the GIL:
         * unsubscribing cleared the pin, and the copy may be torn. */
        channel_closed(self->name);
    } else if (rc == 0) {
        if ((result = PyLong_FromSize_t(smp.length)) != NULL) {
            self->received++;
            self->missed += missed;
            self->last_seq = smp.seq;
        }
    } else if (rc == FSHM_ESMALL) {
        raise_from("receive_too_small", "(nn)", view.len, (Py_ssize_t)smp.length);
    } else {
        receive_error(self, &c, rc, timeout);
    }
    PyBuffer_Release(&view);
    Py_DECREF(keep);
    return result;
}

/* _pending() -> bool: whether a message this subscriber has not reached is
 * published (True also when it is closed, or its entry is no longer its
 * own: the next receive says so).  Never waits: for fastshm.wait_any. */
static PyObject *subscriber_pending(SubscriberObject *self, PyObject *unused)
{
    (void)unused;
    if (self->mapping == NULL)
        Py_RETURN_TRUE;
    return PyBool_FromLong(fshm_channel_wait(&self->c, &self->sub, 0) != FSHM_ETIMEOUT);
}

static PyObject *subscriber_get_received(SubscriberObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->received);
}

static PyObject *subscriber_get_missed(SubscriberObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->missed);
}

CHANNEL_GETTERS(subscriber, SubscriberObject)

static PyGetSetDef subscriber_getset[] = {
    CHANNEL_GETSET(subscriber),
    {"received", (getter)subscriber_get_received, NULL, "Messages received so far.", NULL},
    {"missed", (getter)subscriber_get_missed, NULL,
     "Messages lost to overwriting so far.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef subscriber_methods[] = {
    {"receive", (PyCFunction)(void (*)(void))subscriber_receive,
     METH_FASTCALL | METH_KEYWORDS, "receive(timeout=None) -> Sample"},
    {"receive_into", (PyCFunction)(void (*)(void))subscriber_receive_into,
     METH_FASTCALL | METH_KEYWORDS, "receive_into(buffer, timeout=None) -> length"},
    {"close", (PyCFunction)subscriber_close, METH_NOARGS,
     "Leave the channel, giving up every sample still held."},
    {"_lock_owner", (PyCFunction)subscriber_lock_owner, METH_NOARGS, NULL},
    {"_break_lock", (PyCFunction)subscriber_break_lock, METH_O, NULL},
    {"_pending", (PyCFunction)subscriber_pending, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

PyTypeObject SubscriberType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fastshm._cext.SubscriberCore",
    .tp_basicsize = sizeof(SubscriberObject),
    .tp_dealloc = (destructor)subscriber_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The C half of fastshm.Subscriber (open with fastshm.Subscriber).",
    .tp_weaklistoffset = offsetof(SubscriberObject, weakreflist),
    .tp_methods = subscriber_methods,
    .tp_getset = subscriber_getset,
    .tp_new = subscriber_new,
};

/* ------------------------------------------------------------------ */
