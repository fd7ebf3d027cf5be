/*
 * fastshm._cext.Mapping: owns a mapping and exports it as a buffer; it is
 * unmapped when the last memoryview over it is gone, so a view that
 * outlives close() never touches unmapped memory.  SegmentCore, QueueCore,
 * PublisherCore and SubscriberCore keep their memory in one (mapping_new),
 * and map_open() returns one.
 */
#include "_cext.h"

typedef struct {
    PyObject_HEAD
    void *base;
    Py_ssize_t size;
    int readonly;
} MappingObject;

static void mapping_dealloc(MappingObject *self)
{
    fshm_unmap(self->base, (size_t)self->size);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int mapping_getbuffer(MappingObject *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)self, self->base, self->size,
                             self->readonly, flags);
}

static PyBufferProcs mapping_as_buffer = {
    (getbufferproc)mapping_getbuffer,
    NULL,
};

static PyObject *mapping_get_size(MappingObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->size);
}

static PyObject *mapping_get_readonly(MappingObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->readonly);
}

static PyGetSetDef mapping_getset[] = {
    {"size", (getter)mapping_get_size, NULL, "bytes mapped", NULL},
    {"readonly", (getter)mapping_get_readonly, NULL, "mapped for reading only", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject MappingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fastshm._cext.Mapping",
    .tp_basicsize = sizeof(MappingObject),
    .tp_dealloc = (destructor)mapping_dealloc,
    .tp_as_buffer = &mapping_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A shared-memory mapping, unmapped when the last view of it is gone.",
    .tp_getset = mapping_getset,
};

/* A Mapping owning *m, or NULL (and *m unmapped). */
PyObject *mapping_new(const fshm_map *m)
{
    MappingObject *self = PyObject_New(MappingObject, &MappingType);
    if (self == NULL) {
        fshm_unmap(m->base, m->size);
        return NULL;
    }
    self->base = m->base;
    self->size = (Py_ssize_t)m->size;
    self->readonly = m->readonly;
    return (PyObject *)self;
}

/* ------------------------------------------------------------------ */

int mapping_types_add(PyObject *module)
{
    if (PyType_Ready(&MappingType) < 0)
        return -1;
    Py_INCREF(&MappingType);
    if (PyModule_AddObject(module, "Mapping", (PyObject *)&MappingType) < 0)
        return -1;
    return 0;
}
