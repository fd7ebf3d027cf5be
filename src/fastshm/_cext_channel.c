/*
 * The channel's types of fastshm._cext, over csrc/channel.c:
 *
 *   PublisherCore   publish, and the halves of a loan (_loan, _commit,
 *                   _discard) that fastshm.Publisher.loan puts together.
 *   SubscriberCore  receive: the next message as a SampleCore, in place;
 *                   receive_into: a copy of it in the caller's buffer.
 *   SampleCore      a received message: read-only bytes in the channel's
 *                   memory, pinned until release().  It counts the buffers
 *                   it hands out (memoryview, numpy.frombuffer, bytes), and
 *                   release() refuses with BufferError while one is alive,
 *                   as mmap.close() does: a slot is never lent to a
 *                   publisher while an array still reads it.  Any use after
 *                   the release, or after its subscriber closed, is a
 *                   ValueError.  The cffi route makes SampleCores too (with
 *                   _pin), so fastshm.Sample is one class on CPython.
 *
 * fastshm.channel subclasses the three.  A call that may block tries
 * first with the GIL and without sleeping; then it waits without the GIL in
 * slices of CHANNEL_SLICE_NS, running signal handlers between them, and a
 * close() from another thread ends it.
 */
#include "_cext.h"

#include <errno.h>
#include <string.h>

/* A slice of a blocked publish or receive: every commit wakes the
 * sleepers, so a slice's end serves signals, a close() from another thread
 * and a waker killed before its wake-up (the queue's reasoning). */
#define CHANNEL_SLICE_NS 100000000LL

typedef struct {
    PyObject_HEAD
    fshm_channel c;
    PyObject *mapping;   /* a Mapping; NULL once closed */
    PyObject *view;      /* memoryview of the mapping, for loans; made on first use */
    PyObject *name;
    int created;
    uint64_t last_seq;
    PyObject *weakreflist;
} PublisherObject;

typedef struct {
    PyObject_HEAD
    fshm_channel c;
    fshm_sub sub;
    PyObject *mapping;   /* NULL once closed (and unsubscribed) */
    PyObject *name;
    PyTypeObject *sample_type; /* what receive() makes: the class's _sample_type */
    int created;
    uint64_t last_seq, received, missed;
    PyObject *weakreflist;
} SubscriberObject;

typedef struct {
    PyObject_HEAD
    PyObject *owner;     /* its SubscriberCore, or (cffi route) an object with
                            `closed` and _release(slot); NULL once released */
    PyObject *mapping;   /* keeps the bytes mapped while pinned */
    const char *buf;     /* NULL once released */
    Py_ssize_t len;
    Py_ssize_t exports;  /* buffers handed out and not released */
    uint64_t seq;
    uint32_t slot;
} SampleObject;

static PyTypeObject PublisherType, SubscriberType, SampleType;

/* ------------------------------------------------------------------ */
/* shared                                                             */

/* The next slice of a wait until `deadline`: 0 once it has passed. */
static int64_t slice_until(int64_t deadline)
{
    int64_t left;
    if (deadline == INT64_MAX)
        return CHANNEL_SLICE_NS;
    left = deadline - fshm_monotonic_ns();
    return left <= 0 ? 0 : left < CHANNEL_SLICE_NS ? left : CHANNEL_SLICE_NS;
}

static PyObject *closed_channel(PyObject *name)
{
    PyErr_Format(PyExc_ValueError, "channel %R is closed", name);
    return NULL;
}

/* Between two slices, with the GIL: Python's signal handlers run, and a
 * close() from another thread ends the call.  0 to go on. */
static int between_slices(PyObject *mapping_now, PyObject *name)
{
    if (PyErr_CheckSignals() != 0)
        return PY_ERROR_SET;
    if (mapping_now == NULL) {
        closed_channel(name);
        return PY_ERROR_SET;
    }
    return 0;
}

static PyObject *channel_error(int rc, PyObject *name, const fshm_channel *c)
{
    if (rc == PY_ERROR_SET)
        return NULL;
    if (rc == EACCES && c->readonly)
        return raise_from("read_only_error", "(Os)", name, "channel");
    if (rc == FSHM_ELOST)
        return raise_from("lost_error", "(O)", name);
    return raise_kind(rc, name, rc == FSHM_EFORMAT ? "tables" : "", "channel");
}

/* Open as `args` say: (name, how, slot_size, slots, history,
 * max_subscribers, flags, mode).  0 with *name borrowed from args, or -1. */
static int open_channel(PyObject *args, PyObject *kwds, const char *type_name,
                        fshm_channel *c, fshm_map *m, PyObject **name)
{
    const char *cname;
    int how, rc;
    unsigned long long slot_size;
    unsigned int slots, history, max_subs, flags, mode;

    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_Format(PyExc_TypeError, "%s takes positional arguments only", type_name);
        return -1;
    }
    if (!PyArg_ParseTuple(args, "UiKIIIII", name, &how, &slot_size, &slots, &history,
                          &max_subs, &flags, &mode))
        return -1;
    if ((cname = PyUnicode_AsUTF8(*name)) == NULL)
        return -1;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        rc = fshm_channel_open(c, m, cname, how, (uint64_t)slot_size, slots, history, max_subs,
                               flags, mode);
        Py_END_ALLOW_THREADS
        if (rc != EINTR)
            break;
        if (PyErr_CheckSignals() != 0)
            return -1;
    }
    if (rc == FSHM_EOWNER) {
        raise_from("owner_error", "(OL)", *name, (long long)m->owner);
        return -1;
    }
    if (rc == FSHM_EKIND) {
        int kind = 0;
        const char *found = "object";
        if (fshm_kind_of(cname, how, &kind) == 0)
            found = kind == FSHM_KIND_SEGMENT ? "Segment" : kind == FSHM_KIND_QUEUE ? "Queue"
                                                                                  : "object";
        raise_kind(rc, *name, strcmp(found, "Segment") == 0 ? "Segment:Channel"
                              : strcmp(found, "Queue") == 0 ? "Queue:Channel" : "object:Channel",
                   "channel");
        return -1;
    }
    if (rc != 0) {
        raise_kind(rc, *name, "", "channel");
        return -1;
    }
    return 0;
}

/* The getters both ends share, over the fshm_channel at the same place. */
#define CHANNEL_GETTERS(prefix, Type)                                                  \
    static PyObject *prefix##_get_slot_size(Type *self, void *closure)                 \
    {                                                                                  \
        (void)closure;                                                                 \
        if (self->mapping == NULL)                                                     \
            return closed_channel(self->name);                                         \
        return PyLong_FromUnsignedLongLong(self->c.slot_size);                         \
    }                                                                                  \
    static PyObject *prefix##_get_slots(Type *self, void *closure)                     \
    {                                                                                  \
        (void)closure;                                                                 \
        if (self->mapping == NULL)                                                     \
            return closed_channel(self->name);                                         \
        return PyLong_FromUnsignedLong(self->c.slots);                                 \
    }                                                                                  \
    static PyObject *prefix##_get_history(Type *self, void *closure)                   \
    {                                                                                  \
        (void)closure;                                                                 \
        if (self->mapping == NULL)                                                     \
            return closed_channel(self->name);                                         \
        return PyLong_FromUnsignedLong(self->c.history);                               \
    }                                                                                  \
    static PyObject *prefix##_get_max_subscribers(Type *self, void *closure)           \
    {                                                                                  \
        (void)closure;                                                                 \
        if (self->mapping == NULL)                                                     \
            return closed_channel(self->name);                                         \
        return PyLong_FromUnsignedLong(self->c.max_subscribers);                       \
    }                                                                                  \
    static PyObject *prefix##_get_flags(Type *self, void *closure)                     \
    {                                                                                  \
        (void)closure;                                                                 \
        if (self->mapping == NULL)                                                     \
            return closed_channel(self->name);                                         \
        return PyLong_FromUnsignedLong(self->c.flags);                                 \
    }                                                                                  \
    static PyObject *prefix##_get_created(Type *self, void *closure)                   \
    {                                                                                  \
        (void)closure;                                                                 \
        if (self->mapping == NULL)                                                     \
            return closed_channel(self->name);                                         \
        return PyBool_FromLong(self->created);                                         \
    }                                                                                  \
    static PyObject *prefix##_get_readonly(Type *self, void *closure)                  \
    {                                                                                  \
        (void)closure;                                                                 \
        if (self->mapping == NULL)                                                     \
            return closed_channel(self->name);                                         \
        return PyBool_FromLong(self->c.readonly);                                      \
    }                                                                                  \
    static PyObject *prefix##_get_subscribers(Type *self, void *closure)               \
    {                                                                                  \
        (void)closure;                                                                 \
        if (self->mapping == NULL)                                                     \
            return closed_channel(self->name);                                         \
        return PyLong_FromUnsignedLong(fshm_channel_subscribers(&self->c));            \
    }                                                                                  \
    static PyObject *prefix##_get_mapped_size(Type *self, void *closure)               \
    {                                                                                  \
        (void)closure;                                                                 \
        if (self->mapping == NULL)                                                     \
            return closed_channel(self->name);                                         \
        return PyLong_FromSize_t(self->c.size);                                        \
    }                                                                                  \
    static PyObject *prefix##_get_closed(Type *self, void *closure)                    \
    {                                                                                  \
        (void)closure;                                                                 \
        return PyBool_FromLong(self->mapping == NULL);                                 \
    }                                                                                  \
    static PyObject *prefix##_get_name(Type *self, void *closure)                      \
    {                                                                                  \
        (void)closure;                                                                 \
        return Py_INCREF(self->name), self->name;                                      \
    }                                                                                  \
    static PyObject *prefix##_get_backend(Type *self, void *closure)                   \
    {                                                                                  \
        (void)closure;                                                                 \
        (void)self;                                                                    \
        return PyUnicode_FromString("native");                                         \
    }                                                                                  \
    static PyObject *prefix##_get_last_seq(Type *self, void *closure)                  \
    {                                                                                  \
        (void)closure;                                                                 \
        return PyLong_FromUnsignedLongLong(self->last_seq);                            \
    }                                                                                  \
    static PyObject *prefix##_lock_owner(Type *self, PyObject *unused)                 \
    {                                                                                  \
        (void)unused;                                                                  \
        if (self->mapping == NULL)                                                     \
            return closed_channel(self->name);                                         \
        return PyLong_FromUnsignedLongLong(fshm_channel_lock_owner(&self->c));         \
    }                                                                                  \
    static PyObject *prefix##_break_lock(Type *self, PyObject *owner)                  \
    {                                                                                  \
        unsigned long long v;                                                          \
        if (self->mapping == NULL)                                                     \
            return closed_channel(self->name);                                         \
        v = PyLong_AsUnsignedLongLong(owner);                                          \
        if (v == (unsigned long long)-1 && PyErr_Occurred())                           \
            return NULL;                                                               \
        return PyBool_FromLong(fshm_channel_break_lock(&self->c, (uint64_t)v) == 0);   \
    }

#define CHANNEL_GETSET(prefix)                                                         \
    {"name", (getter)prefix##_get_name, NULL, "The channel's name.", NULL},            \
    {"backend", (getter)prefix##_get_backend, NULL, "\"native\".", NULL},              \
    {"closed", (getter)prefix##_get_closed, NULL, "Whether close() was called.", NULL},\
    {"slot_size", (getter)prefix##_get_slot_size, NULL, "The largest message.", NULL}, \
    {"slots", (getter)prefix##_get_slots, NULL, "Messages the ring holds.", NULL},     \
    {"history", (getter)prefix##_get_history, NULL, "Earlier messages a new "          \
     "subscriber gets first.", NULL},                                                  \
    {"max_subscribers", (getter)prefix##_get_max_subscribers, NULL, NULL, NULL},       \
    {"flags", (getter)prefix##_get_flags, NULL, NULL, NULL},                           \
    {"created", (getter)prefix##_get_created, NULL, NULL, NULL},                       \
    {"readonly", (getter)prefix##_get_readonly, NULL, NULL, NULL},                     \
    {"subscribers", (getter)prefix##_get_subscribers, NULL,                            \
     "How many subscribers are joined now (a snapshot).", NULL},                       \
    {"last_seq", (getter)prefix##_get_last_seq, NULL, NULL, NULL},                     \
    {"_mapped_size", (getter)prefix##_get_mapped_size, NULL, NULL, NULL}

/* ------------------------------------------------------------------ */
/* SampleCore                                                         */

/* Whether the bytes are gone: released, or its subscriber closed (which
 * gave its pins up). */
static int sample_gone(SampleObject *self)
{
    PyObject *owner = self->owner;
    if (self->buf == NULL)
        return 1;
    if (owner == NULL)
        return 0;
    if (PyObject_TypeCheck(owner, &SubscriberType))
        return ((SubscriberObject *)owner)->mapping == NULL;
    {
        /* The cffi route's subscriber. */
        PyObject *closed = PyObject_GetAttrString(owner, "closed");
        int gone;
        if (closed == NULL) {
            PyErr_Clear();
            return 0;
        }
        gone = PyObject_IsTrue(closed) == 1;
        Py_DECREF(closed);
        return gone;
    }
}

static int sample_gone_error(SampleObject *self)
{
    if (!sample_gone(self))
        return 0;
    PyErr_SetString(PyExc_ValueError,
                    self->buf == NULL ? "the sample was released: its bytes are gone"
                                      : "the sample's subscriber was closed, which released "
                                        "it: its bytes are gone");
    return -1;
}

/* Give the pin back (no view may be alive).  0, or -1 with an exception
 * (the cffi route's _release raised). */
static int sample_unpin(SampleObject *self)
{
    PyObject *owner = self->owner, *mapping = self->mapping;
    int rc = 0;
    if (self->buf == NULL)
        return 0;
    self->buf = NULL;
    self->owner = NULL;
    self->mapping = NULL;
    if (owner != NULL) {
        if (PyObject_TypeCheck(owner, &SubscriberType)) {
            SubscriberObject *sub = (SubscriberObject *)owner;
            if (sub->mapping != NULL) /* closed: unsubscribing gave the pins up */
                fshm_channel_release(&sub->c, &sub->sub, self->slot);
        } else {
            PyObject *r = PyObject_CallMethod(owner, "_release", "I", (unsigned int)self->slot);
            if (r == NULL)
                rc = -1;
            Py_XDECREF(r);
        }
    }
    Py_XDECREF(owner);
    Py_XDECREF(mapping);
    return rc;
}

static PyObject *sample_release(SampleObject *self, PyObject *unused)
{
    (void)unused;
    if (self->buf != NULL && self->exports > 0) {
        PyErr_Format(PyExc_BufferError,
                     "cannot release a sample while %zd view%s of it %s alive (a memoryview, "
                     "a numpy array, ...): delete them or call memoryview.release() "
                     "first; the sample stays pinned",
                     self->exports, self->exports == 1 ? "" : "s",
                     self->exports == 1 ? "is" : "are");
        return NULL;
    }
    if (sample_unpin(self) != 0)
        return NULL;
    Py_RETURN_NONE;
}

/* _pin(owner, mapping, address, length, seq, slot): the cffi route's
 * sample, `length` bytes at `address`, which `mapping` keeps mapped. */
static PyObject *sample_pin(SampleObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned long long address, seq;
    unsigned long slot;
    Py_ssize_t len;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "_pin(owner, mapping, address, length, seq, slot)");
        return NULL;
    }
    if (self->buf != NULL) {
        PyErr_SetString(PyExc_ValueError, "already pinned");
        return NULL;
    }
    address = PyLong_AsUnsignedLongLong(args[2]);
    len = PyLong_AsSsize_t(args[3]);
    seq = PyLong_AsUnsignedLongLong(args[4]);
    slot = PyLong_AsUnsignedLong(args[5]);
    if (PyErr_Occurred())
        return NULL;
    if (address == 0 || len < 0) {
        PyErr_SetString(PyExc_ValueError, "_pin needs an address and a length >= 0");
        return NULL;
    }
    Py_INCREF(args[0]);
    Py_INCREF(args[1]);
    self->owner = args[0];
    self->mapping = args[1];
    self->buf = (const char *)(uintptr_t)address;
    self->len = len;
    self->seq = seq;
    self->slot = (uint32_t)slot;
    Py_RETURN_NONE;
}

static PyObject *sample_enter(SampleObject *self, PyObject *unused)
{
    (void)unused;
    if (sample_gone_error(self) != 0)
        return NULL;
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *sample_exit(SampleObject *self, PyObject *args)
{
    (void)args;
    return sample_release(self, NULL);
}

static int sample_getbuffer(SampleObject *self, Py_buffer *view, int flags)
{
    if (sample_gone_error(self) != 0) {
        view->obj = NULL;
        return -1;
    }
    /* Read-only: a request for a writable buffer is a BufferError. */
    if (PyBuffer_FillInfo(view, (PyObject *)self, (void *)self->buf, self->len, 1, flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void sample_releasebuffer(SampleObject *self, Py_buffer *view)
{
    (void)view;
    self->exports--;
}

static Py_ssize_t sample_length(SampleObject *self)
{
    if (sample_gone_error(self) != 0)
        return -1;
    return self->len;
}

static PyObject *sample_get_seq(SampleObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->seq);
}

static PyObject *sample_get_pinned(SampleObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(!sample_gone(self));
}

static PyObject *sample_get_exports(SampleObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->exports);
}

/* A sample dropped without release() gives its pin back here.  (Its views
 * hold it alive, so none is left by now.) */
static void sample_finalize(SampleObject *self)
{
    PyObject *type, *value, *tb;
    if (self->buf == NULL)
        return;
    PyErr_Fetch(&type, &value, &tb);
    if (sample_unpin(self) != 0)
        PyErr_WriteUnraisable((PyObject *)self);
    PyErr_Restore(type, value, tb);
}

static void sample_dealloc(SampleObject *self)
{
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0)
        return; /* resurrected */
    Py_CLEAR(self->owner);
    Py_CLEAR(self->mapping);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyBufferProcs sample_as_buffer = {
    (getbufferproc)sample_getbuffer,
    (releasebufferproc)sample_releasebuffer,
};

static PySequenceMethods sample_as_sequence = {
    .sq_length = (lenfunc)sample_length,
};

static PyMethodDef sample_methods[] = {
    {"release", (PyCFunction)sample_release, METH_NOARGS,
     "Give the slot back to the publishers.  Harmless when released; BufferError "
     "(still pinned) while a view of it is alive."},
    {"__enter__", (PyCFunction)sample_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)sample_exit, METH_VARARGS, NULL},
    {"_pin", (PyCFunction)(void (*)(void))sample_pin, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef sample_getset[] = {
    {"seq", (getter)sample_get_seq, NULL, "The message's number.", NULL},
    {"_pinned", (getter)sample_get_pinned, NULL, NULL, NULL},
    {"_exports", (getter)sample_get_exports, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SampleType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fastshm._cext.SampleCore",
    .tp_basicsize = sizeof(SampleObject),
    .tp_dealloc = (destructor)sample_dealloc,
    .tp_finalize = (destructor)sample_finalize,
    .tp_as_sequence = &sample_as_sequence,
    .tp_as_buffer = &sample_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The C half of fastshm.Sample: a received message, in place.",
    .tp_methods = sample_methods,
    .tp_getset = sample_getset,
    .tp_new = PyType_GenericNew,
};

/* ------------------------------------------------------------------ */
/* PublisherCore                                                      */

static PyObject *publisher_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PublisherObject *self;
    fshm_channel c;
    fshm_map m;
    PyObject *name, *mapping;

    if (open_channel(args, kwds, "PublisherCore", &c, &m, &name) != 0)
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
        return closed_channel(self->name);
    *c = self->c;
    Py_INCREF(self->mapping);
    return self->mapping;
}

/* (first, timeout=None), `first` positional only unless first_kw names it. */
static int parse_size_timeout(const char *fn, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames, PyObject **first, int first_required,
                              PyObject **timeout, const char *first_kw)
{
    Py_ssize_t i, nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most 2 arguments (%zd given)", fn, nargs);
        return -1;
    }
    if (nargs >= 1)
        *first = args[0];
    if (nargs == 2)
        *timeout = args[1];
    for (i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(key, "timeout") == 0 && nargs < 2) {
            *timeout = args[nargs + i];
        } else if (first_kw != NULL && nargs < 1 &&
                   PyUnicode_CompareWithASCIIString(key, first_kw) == 0) {
            *first = args[nargs + i];
        } else {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R", fn,
                         key);
            return -1;
        }
    }
    if (first_required && *first == NULL) {
        PyErr_Format(PyExc_TypeError, "%s() missing its first argument", fn);
        return -1;
    }
    return 0;
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
        int rc = between_slices(self->mapping, self->name);
        if (rc != 0)
            return rc;
        if ((*slice = slice_until(deadline)) == 0)
            return 0;
        Py_BEGIN_ALLOW_THREADS
        rc = fshm_channel_wait_room(c, *slice);
        Py_END_ALLOW_THREADS
        if (rc == 0) {
            *slice = slice_until(deadline);
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
    int64_t slice = slice_until(deadline);
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
    int64_t slice = slice_until(deadline);
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
    else if (parse_size_timeout("publish", args, nargs, kwnames, &data, 1, &timeout, NULL) != 0)
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

    if (parse_size_timeout("_loan", args, nargs, kwnames, &size_obj, 1, &timeout, NULL) != 0)
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
        closed_channel(self->name);
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
        if ((rc = between_slices(self->mapping, self->name)) != 0)
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

static PyTypeObject PublisherType = {
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

/* ------------------------------------------------------------------ */
/* SubscriberCore                                                     */

static PyObject *subscriber_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    SubscriberObject *self;
    fshm_channel c;
    fshm_map m;
    fshm_sub sub;
    PyObject *name, *mapping, *st;
    int rc;

    if (open_channel(args, kwds, "SubscriberCore", &c, &m, &name) != 0)
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
    int64_t slice = slice_until(deadline);
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
            if ((rc = between_slices(self->mapping, self->name)) != 0)
                return rc;
            if ((slice = slice_until(deadline)) == 0)
                break;
            Py_BEGIN_ALLOW_THREADS
            woke = fshm_channel_wait(c, &sub, slice);
            Py_END_ALLOW_THREADS
            if (woke == 0) {
                slice = slice_until(deadline);
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
        return closed_channel(self->name);
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
        if (nargs > 1 || parse_size_timeout("receive", args, 0, kwnames, &unused, 0,
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
        return closed_channel(self->name);
    c = self->c;
    keep = self->mapping;
    Py_INCREF(keep);
    rc = fshm_channel_try_receive(&c, &self->sub, &smp, &missed);
    if (rc == FSHM_ETIMEOUT && slice_until(deadline) > 0)
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
    else if (parse_size_timeout("receive_into", args, nargs, kwnames, &buffer, 1, &timeout,
                                "buffer") != 0)
        return NULL;
    if (parse_timeout(timeout, &deadline) != 0)
        return NULL;
    if (self->mapping == NULL)
        return closed_channel(self->name);
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
        if (rc == FSHM_ETIMEOUT && slice_until(deadline) > 0)
            rc = receive_waiting(self, &c, &into, &smp, &missed, deadline);
    } else {
        /* A copy that may be long: even the first try lets the GIL go (its
         * slice is 0 for a zero timeout, a try without waiting). */
        rc = receive_waiting(self, &c, &into, &smp, &missed, deadline);
    }
    if (rc == 0 && self->mapping == NULL) {
        /* Closed by another thread while this one copied without the GIL:
         * unsubscribing cleared the pin, and the copy may be torn. */
        closed_channel(self->name);
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

static PyTypeObject SubscriberType = {
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

int channel_types_add(PyObject *module)
{
    if (PyType_Ready(&SampleType) < 0 || PyType_Ready(&PublisherType) < 0 ||
        PyType_Ready(&SubscriberType) < 0)
        return -1;
    Py_INCREF(&SampleType);
    Py_INCREF(&PublisherType);
    Py_INCREF(&SubscriberType);
    if (PyModule_AddObject(module, "SampleCore", (PyObject *)&SampleType) < 0 ||
        PyModule_AddObject(module, "PublisherCore", (PyObject *)&PublisherType) < 0 ||
        PyModule_AddObject(module, "SubscriberCore", (PyObject *)&SubscriberType) < 0)
        return -1;
    return 0;
}
