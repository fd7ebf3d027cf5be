/*
 * The channel's types of fastshm._cext (see _cext_channel.h): what they
 * share, and how the module adds them.
 */
#include "_cext_channel.h"

#include <errno.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* shared                                                             */

/* The next slice of a wait until `deadline`: 0 once it has passed. */
int64_t channel_slice_until(int64_t deadline)
{
    int64_t left;
    if (deadline == INT64_MAX)
        return CHANNEL_SLICE_NS;
    left = deadline - fshm_monotonic_ns();
    return left <= 0 ? 0 : left < CHANNEL_SLICE_NS ? left : CHANNEL_SLICE_NS;
}

PyObject *channel_closed(PyObject *name)
{
    PyErr_Format(PyExc_ValueError, "channel %R is closed", name);
    return NULL;
}

/* Between two slices, with the GIL: Python's signal handlers run, and a
 * close() from another thread ends the call.  0 to go on. */
int channel_between_slices(PyObject *mapping_now, PyObject *name)
{
    if (PyErr_CheckSignals() != 0)
        return PY_ERROR_SET;
    if (mapping_now == NULL) {
        channel_closed(name);
        return PY_ERROR_SET;
    }
    return 0;
}

PyObject *channel_error(int rc, PyObject *name, const fshm_channel *c)
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
int channel_open(PyObject *args, PyObject *kwds, const char *type_name,
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


/* (first, timeout=None), `first` positional only unless first_kw names it. */
int channel_parse_size_timeout(const char *fn, PyObject *const *args, Py_ssize_t nargs,
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
