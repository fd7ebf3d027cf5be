/*
 * fastshm._cext.Pinned: bytes in shared memory lent to Python in place,
 * read-only, and given back only when nothing looks at them any more.
 *
 * fastshm.Sample subclasses it on CPython: a channel's sample is its slot's
 * payload, pinned for the subscriber.  Every buffer handed out (memoryview,
 * numpy.frombuffer, bytes) is counted, and _unpin() refuses with BufferError
 * while one is alive, as mmap.close() does: the slot is then never lent to
 * a publisher while an array still reads it.  After _unpin() every new
 * buffer request is a ValueError.  (Python 3.12 can do this in Python with
 * __buffer__ and __release_buffer__; 3.9 to 3.11 need the C type.)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

typedef struct {
    PyObject_HEAD
    PyObject *owner;      /* keeps the memory mapped while pinned */
    const char *buf;      /* NULL when not pinned: before _pin, after _unpin */
    Py_ssize_t len;
    Py_ssize_t exports;   /* buffers handed out and not released yet */
} PinnedObject;

static void pinned_dealloc(PinnedObject *self)
{
    Py_CLEAR(self->owner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int pinned_getbuffer(PinnedObject *self, Py_buffer *view, int flags)
{
    if (self->buf == NULL) {
        PyErr_SetString(PyExc_ValueError, "the sample was released: its bytes are gone");
        view->obj = NULL;
        return -1;
    }
    /* Read-only: a request for a writable buffer is a BufferError. */
    if (PyBuffer_FillInfo(view, (PyObject *)self, (void *)self->buf, self->len, 1, flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void pinned_releasebuffer(PinnedObject *self, Py_buffer *view)
{
    (void)view;
    self->exports--;
}

static PyBufferProcs pinned_as_buffer = {
    (getbufferproc)pinned_getbuffer,
    (releasebufferproc)pinned_releasebuffer,
};

/* _pin(owner, address, length): lend `length` bytes at `address`, which
 * `owner` keeps mapped. */
static PyObject *pinned_pin(PinnedObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned long long address;
    Py_ssize_t len;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_pin(owner, address, length)");
        return NULL;
    }
    if (self->buf != NULL) {
        PyErr_SetString(PyExc_ValueError, "already pinned");
        return NULL;
    }
    address = PyLong_AsUnsignedLongLong(args[1]);
    if (address == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    len = PyLong_AsSsize_t(args[2]);
    if (len == -1 && PyErr_Occurred())
        return NULL;
    if (address == 0 || len < 0) {
        PyErr_SetString(PyExc_ValueError, "_pin needs an address and a length >= 0");
        return NULL;
    }
    Py_INCREF(args[0]);
    Py_XSETREF(self->owner, args[0]);
    self->buf = (const char *)(uintptr_t)address;
    self->len = len;
    Py_RETURN_NONE;
}

/* _unpin(): True once not pinned (False when it was not); BufferError, still
 * pinned, while a buffer of it is alive. */
static PyObject *pinned_unpin(PinnedObject *self, PyObject *unused)
{
    (void)unused;
    if (self->buf == NULL)
        Py_RETURN_FALSE;
    if (self->exports > 0) {
        PyErr_Format(PyExc_BufferError,
                     "cannot release a sample while %zd view%s of it %s alive (a memoryview, "
                     "a numpy array, ...): delete them or call memoryview.release() "
                     "first; the sample stays pinned",
                     self->exports, self->exports == 1 ? "" : "s",
                     self->exports == 1 ? "is" : "are");
        return NULL;
    }
    self->buf = NULL;
    Py_CLEAR(self->owner);
    Py_RETURN_TRUE;
}

static PyObject *pinned_get_pinned(PinnedObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->buf != NULL);
}

static PyObject *pinned_get_exports(PinnedObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->exports);
}

static Py_ssize_t pinned_length(PinnedObject *self)
{
    if (self->buf == NULL) {
        PyErr_SetString(PyExc_ValueError, "the sample was released: its bytes are gone");
        return -1;
    }
    return self->len;
}

static PySequenceMethods pinned_as_sequence = {
    .sq_length = (lenfunc)pinned_length,
};

static PyMethodDef pinned_methods[] = {
    {"_pin", (PyCFunction)(void (*)(void))pinned_pin, METH_FASTCALL, NULL},
    {"_unpin", (PyCFunction)pinned_unpin, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef pinned_getset[] = {
    {"_pinned", (getter)pinned_get_pinned, NULL, NULL, NULL},
    {"_exports", (getter)pinned_get_exports, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject PinnedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fastshm._cext.Pinned",
    .tp_basicsize = sizeof(PinnedObject),
    .tp_dealloc = (destructor)pinned_dealloc,
    .tp_as_sequence = &pinned_as_sequence,
    .tp_as_buffer = &pinned_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Read-only bytes lent in place (the base of fastshm.Sample on CPython).",
    .tp_methods = pinned_methods,
    .tp_getset = pinned_getset,
    .tp_new = PyType_GenericNew,
};
