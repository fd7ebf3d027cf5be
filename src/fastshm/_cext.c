/*
 * fastshm._cext: the C-API binding of fastshm's C core, for CPython.
 *
 * Glue only: argument parsing, buffers, the GIL and errors.  The format and
 * the system calls are csrc/ (slot.c, map_*.c), the same core the cffi
 * binding (fastshm._fastshm) compiles; PyPy uses that one, where the C API
 * is slow.
 *
 * One file per type, as the core has one per kind of object; they share
 * declarations through _cext.h:
 *   _cext.c          the module: its functions (map_open, unlink, self_id,
 *                    owner_dead), what every type's file uses (errors,
 *                    timeouts, opening by name), and the types'
 *                    registration.
 *   _cext_mapping.c  Mapping: owns a mapping and exports it as a buffer; it
 *                    is unmapped when the last memoryview over it is gone,
 *                    so a view that outlives close() never touches
 *                    unmapped memory.
 *   _cext_segment.c  SegmentCore: the hot methods of fastshm.Segment (store,
 *                    load, load_into, view, wait, seq, len) as METH_FASTCALL
 *                    C methods; fastshm.segment makes the Segment class
 *                    that subclasses it.
 *   _cext_queue.c    QueueCore: the same for fastshm.Queue (put, get,
 *                    get_into, get_many, put_many, qsize, ...), over
 *                    csrc/queue.c; fastshm.queue subclasses it.
 *   _cext_publisher.c, _cext_subscriber.c, _cext_sample.c
 *                    PublisherCore, SubscriberCore, SampleCore: the
 *                    channel's, over csrc/channel.c, with what they share
 *                    in _cext_channel.c and _cext_channel.h.
 *
 * Error messages come from fastshm._errors, the one place both bindings and
 * the python backend take them from.
 *
 * The module needs the GIL (it declares nothing else): a free-threaded
 * CPython re-enables the GIL when it imports it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <string.h>

#include "fastshm.h"
#include "_cext.h"


/* ------------------------------------------------------------------ */
/* what the types' files share                                        */

/* fastshm._errors: raise_for, too_big, too_small, owner_error, read_only_error,
 * and the queue's message_too_big, batch_too_big, next_too_small, full_error,
 * empty_error, protocol_error. */
PyObject *errors_module;

/* Call fastshm._errors.<fn>(args...) and raise what it returns (or
 * raises).  Always returns NULL. */
PyObject *raise_from(const char *fn, const char *fmt, ...)
{
    PyObject *f, *args, *exc;
    va_list va;
    f = PyObject_GetAttrString(errors_module, fn);
    if (f == NULL)
        return NULL;
    va_start(va, fmt);
    args = Py_VaBuildValue(fmt, va);
    va_end(va);
    if (args == NULL) {
        Py_DECREF(f);
        return NULL;
    }
    exc = PyObject_CallObject(f, args);
    Py_DECREF(f);
    Py_DECREF(args);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* raise_for(rc, name, detail, kind): `kind` "segment", "queue" or
 * "channel"; for FSHM_EFORMAT on an object in use, `detail` says what is
 * wrong by _errors' key ("slot", "seq", "ring"). */
PyObject *raise_kind(int rc, PyObject *name, const char *detail, const char *kind)
{
    return raise_from("raise_for", "(iOss)", rc, name, detail, kind);
}

PyObject *raise_code(int rc, PyObject *name, const char *detail)
{
    return raise_kind(rc, name, detail, "segment");
}

/* Seconds (None: wait forever) as a deadline in fshm_monotonic_ns time;
 * INT64_MAX for none.  Any real number or integer-like object but bool;
 * inf, and anything beyond 31 years, is no timeout. */
int parse_timeout(PyObject *obj, int64_t *deadline)
{
    double secs;
    if (obj == Py_None) {
        *deadline = INT64_MAX;
        return 0;
    }
    if (PyBool_Check(obj) || !(PyFloat_Check(obj) || PyLong_Check(obj) || PyIndex_Check(obj))) {
        PyErr_Format(PyExc_TypeError, "timeout must be a number of seconds or None, not %R",
                     obj);
        return -1;
    }
    if (PyFloat_Check(obj)) {
        secs = PyFloat_AS_DOUBLE(obj);
    } else {
        int overflow = 0;
        long long v;
        PyObject *index = PyNumber_Index(obj);
        if (index == NULL)
            return -1;
        v = PyLong_AsLongLongAndOverflow(index, &overflow);
        Py_DECREF(index);
        if (v == -1 && PyErr_Occurred())
            return -1;
        /* Beyond 64 bits: forever, or negative. */
        secs = overflow > 0 ? Py_HUGE_VAL : overflow < 0 ? -1.0 : (double)v;
    }
    if (!(secs >= 0)) { /* negative, or NaN */
        PyErr_Format(PyExc_ValueError, "timeout must be >= 0 seconds, not %R", obj);
        return -1;
    }
    if (secs > TIMEOUT_FOREVER_S)
        *deadline = INT64_MAX;
    else
        *deadline = fshm_monotonic_ns() + (int64_t)(secs * 1e9);
    return 0;
}

/* What SegmentCore.__new__ and QueueCore.__new__ share: their arguments
 * (name, how, capacity, mode), opening by name (again after a signal whose
 * handler returned: a signal can come while the open waits for another
 * process to finish creating the object; Ctrl-C ends the wait), and the
 * errors.  `open` is the core's opening call for the kind, `core` its
 * fshm_seg or fshm_queue, `other` the other kind ("Queue", "Segment"): what
 * the error says the name holds when it is that.  0 with *name (borrowed
 * from args) and *m filled, or -1 with an exception. */
int open_by_name(const char *type_name, const char *other, PyObject *args,
                 PyObject *kwds, open_fn open, void *core, fshm_map *m,
                 PyObject **name)
{
    const char *cname;
    int how, rc;
    unsigned long long capacity;
    unsigned int mode;

    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_Format(PyExc_TypeError, "%s takes positional arguments only", type_name);
        return -1;
    }
    if (!PyArg_ParseTuple(args, "UiKI", name, &how, &capacity, &mode))
        return -1;
    if ((cname = PyUnicode_AsUTF8(*name)) == NULL)
        return -1;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        rc = open(core, m, cname, how, (uint64_t)capacity, mode);
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
        /* `other` is the kind of the two this binding has types for; a
         * channel is the third. */
        int kind = 0;
        char detail[32];
        const char *wanted = strcmp(other, "Queue") == 0 ? "Segment" : "Queue";
        if (fshm_kind_of(cname, how, &kind) == 0 && kind == FSHM_KIND_CHANNEL)
            other = "Channel";
        PyOS_snprintf(detail, sizeof detail, "%s:%s", other, wanted);
        raise_kind(rc, *name, detail, strcmp(wanted, "Queue") == 0 ? "queue" : "segment");
        return -1;
    }
    if (rc != 0) {
        raise_kind(rc, *name, "", strcmp(other, "Segment") == 0 ? "queue" : "segment");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* the module                                                         */

/* map_open(name, how, size, mode) -> (Mapping, created) */
static PyObject *cext_map_open(PyObject *module, PyObject *args)
{
    PyObject *name, *mapping;
    const char *cname;
    int how, rc;
    Py_ssize_t size;
    unsigned int mode;
    fshm_map m;
    (void)module;
    if (!PyArg_ParseTuple(args, "UinI", &name, &how, &size, &mode))
        return NULL;
    if ((cname = PyUnicode_AsUTF8(name)) == NULL)
        return NULL;
    how &= FSHM_HOW_MASK | FSHM_ANY_OWNER;
    Py_BEGIN_ALLOW_THREADS
    rc = fshm_map_open(&m, cname, how, (size_t)size, mode);
    Py_END_ALLOW_THREADS
    if (rc == FSHM_EOWNER)
        return raise_from("owner_error", "(OL)", name, (long long)m.owner);
    if (rc != 0)
        return raise_code(rc, name, "");
    if ((mapping = mapping_new(&m)) == NULL)
        return NULL;
    return Py_BuildValue("(NO)", mapping, m.created ? Py_True : Py_False);
}

static PyObject *cext_unlink(PyObject *module, PyObject *name)
{
    const char *cname;
    int rc;
    (void)module;
    if (!PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "name must be a str");
        return NULL;
    }
    if ((cname = PyUnicode_AsUTF8(name)) == NULL)
        return NULL;
    rc = fshm_unlink(cname);
    if (rc != 0)
        return raise_code(rc, name, "");
    Py_RETURN_NONE;
}

static PyObject *cext_self_id(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyLong_FromUnsignedLongLong(fshm_self_id());
}

static PyObject *cext_owner_dead(PyObject *module, PyObject *owner)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(owner);
    (void)module;
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(fshm_owner_dead((uint64_t)v));
}

/* ------------------------------------------------------------------ */

static PyMethodDef module_methods[] = {
    {"map_open", cext_map_open, METH_VARARGS,
     "map_open(name, how, size, mode) -> (Mapping, created)"},
    {"unlink", cext_unlink, METH_O, "unlink(name): remove the name"},
    {"self_id", cext_self_id, METH_NOARGS, "this process's id for the writer lock"},
    {"owner_dead", cext_owner_dead, METH_O,
     "owner_dead(owner) -> 1 gone, 0 alive, -1 cannot tell"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef cext_module = {
    PyModuleDef_HEAD_INIT, "fastshm._cext",
    "The C-API binding of fastshm's C core (CPython).", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__cext(void)
{
    PyObject *m;
    if ((errors_module = PyImport_ImportModule("fastshm._errors")) == NULL)
        return NULL;
    if ((m = PyModule_Create(&cext_module)) == NULL)
        return NULL;
    if (mapping_types_add(m) < 0 || segment_types_add(m) < 0 || queue_types_add(m) < 0 ||
        channel_types_add(m) < 0 ||
        PyModule_AddIntConstant(m, "ANY_OWNER", FSHM_ANY_OWNER) < 0 ||
        PyModule_AddIntConstant(m, "NAME_MAX", (long)fshm_name_max()) < 0 ||
        PyModule_AddIntConstant(m, "GIL_RELEASE_BYTES", GIL_RELEASE_BYTES) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
