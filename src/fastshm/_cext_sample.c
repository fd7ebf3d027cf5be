/*
 * SampleCore of fastshm._cext: a received message, read-only bytes in the
 * channel's memory, pinned until release().  It counts the buffers it hands
 * out (memoryview, numpy.frombuffer, bytes), and release() refuses with
 * BufferError while one is alive, as mmap.close() does: a slot is never lent
 * to a publisher while an array still reads it.  Any use after the release,
 * or after its subscriber closed, is a ValueError.  The cffi route makes
 * SampleCores too (with _pin), so fastshm.Sample is one class on CPython.
 */
#include "_cext_channel.h"

#include <errno.h>
#include <string.h>

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

PyTypeObject SampleType = {
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
