/*
 * What the channel's types of fastshm._cext share: their objects, the
 * helpers of _cext_channel.c, and the getters both ends have.  One file per
 * type:
 *
 *   _cext_publisher.c   PublisherCore   publish, and the halves of a loan
 *                                       (_loan, _commit, _discard) that
 *                                       fastshm.Publisher.loan puts together.
 *   _cext_subscriber.c  SubscriberCore  receive: the next message as a
 *                                       SampleCore, in place; receive_into:
 *                                       a copy of it in the caller's buffer.
 *   _cext_sample.c      SampleCore      a received message, in place.
 *
 * fastshm.channel subclasses the three.  A call that may block tries
 * first with the GIL and without sleeping; then it waits without the GIL in
 * slices of CHANNEL_SLICE_NS, running signal handlers between them, and a
 * close() from another thread ends it.
 */
#ifndef FASTSHM_CEXT_CHANNEL_H
#define FASTSHM_CEXT_CHANNEL_H

#include "_cext.h"

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

extern PyTypeObject PublisherType, SubscriberType, SampleType;

/* Shared by the three (_cext_channel.c). */
/* The next slice of a wait until `deadline`: 0 once it has passed. */
int64_t channel_slice_until(int64_t deadline);
/* ValueError: the channel is closed; NULL. */
PyObject *channel_closed(PyObject *name);
/* Between two slices, with the GIL: Python's signal handlers run, and a
 * close() from another thread ends the call.  0 to go on. */
int channel_between_slices(PyObject *mapping_now, PyObject *name);
/* The Python error for a core's rc; NULL. */
PyObject *channel_error(int rc, PyObject *name, const fshm_channel *c);
/* Open as `args` say: (name, how, slot_size, slots, history,
 * max_subscribers, flags, mode).  0 with *name borrowed from args, or -1. */
int channel_open(PyObject *args, PyObject *kwds, const char *type_name,
                 fshm_channel *c, fshm_map *m, PyObject **name);
/* (first, timeout=None), `first` positional only unless first_kw names it. */
int channel_parse_size_timeout(const char *fn, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames, PyObject **first, int first_required,
                               PyObject **timeout, const char *first_kw);

/* The getters both ends share, over the fshm_channel at the same place. */
#define CHANNEL_GETTERS(prefix, Type)                                                  \
    static PyObject *prefix##_get_slot_size(Type *self, void *closure)                 \
    {                                                                                  \
        (void)closure;                                                                 \
        if (self->mapping == NULL)                                                     \
            return channel_closed(self->name);                                         \
        return PyLong_FromUnsignedLongLong(self->c.slot_size);                         \
    }                                                                                  \
    static PyObject *prefix##_get_slots(Type *self, void *closure)                     \
    {                                                                                  \
        (void)closure;                                                                 \
        if (self->mapping == NULL)                                                     \
            return channel_closed(self->name);                                         \
        return PyLong_FromUnsignedLong(self->c.slots);                                 \
    }                                                                                  \
    static PyObject *prefix##_get_history(Type *self, void *closure)                   \
    {                                                                                  \
        (void)closure;                                                                 \
        if (self->mapping == NULL)                                                     \
            return channel_closed(self->name);                                         \
        return PyLong_FromUnsignedLong(self->c.history);                               \
    }                                                                                  \
    static PyObject *prefix##_get_max_subscribers(Type *self, void *closure)           \
    {                                                                                  \
        (void)closure;                                                                 \
        if (self->mapping == NULL)                                                     \
            return channel_closed(self->name);                                         \
        return PyLong_FromUnsignedLong(self->c.max_subscribers);                       \
    }                                                                                  \
    static PyObject *prefix##_get_flags(Type *self, void *closure)                     \
    {                                                                                  \
        (void)closure;                                                                 \
        if (self->mapping == NULL)                                                     \
            return channel_closed(self->name);                                         \
        return PyLong_FromUnsignedLong(self->c.flags);                                 \
    }                                                                                  \
    static PyObject *prefix##_get_created(Type *self, void *closure)                   \
    {                                                                                  \
        (void)closure;                                                                 \
        if (self->mapping == NULL)                                                     \
            return channel_closed(self->name);                                         \
        return PyBool_FromLong(self->created);                                         \
    }                                                                                  \
    static PyObject *prefix##_get_readonly(Type *self, void *closure)                  \
    {                                                                                  \
        (void)closure;                                                                 \
        if (self->mapping == NULL)                                                     \
            return channel_closed(self->name);                                         \
        return PyBool_FromLong(self->c.readonly);                                      \
    }                                                                                  \
    static PyObject *prefix##_get_subscribers(Type *self, void *closure)               \
    {                                                                                  \
        (void)closure;                                                                 \
        if (self->mapping == NULL)                                                     \
            return channel_closed(self->name);                                         \
        return PyLong_FromUnsignedLong(fshm_channel_subscribers(&self->c));            \
    }                                                                                  \
    static PyObject *prefix##_get_mapped_size(Type *self, void *closure)               \
    {                                                                                  \
        (void)closure;                                                                 \
        if (self->mapping == NULL)                                                     \
            return channel_closed(self->name);                                         \
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
            return channel_closed(self->name);                                         \
        return PyLong_FromUnsignedLongLong(fshm_channel_lock_owner(&self->c));         \
    }                                                                                  \
    static PyObject *prefix##_break_lock(Type *self, PyObject *owner)                  \
    {                                                                                  \
        unsigned long long v;                                                          \
        if (self->mapping == NULL)                                                     \
            return channel_closed(self->name);                                         \
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

#endif
