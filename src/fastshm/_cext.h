/*
 * What the files of the C-API binding share (not part of any public API):
 * the limits of its blocking calls and the helpers each type's file uses.
 * _cext.c holds the module and those helpers; each type has its file:
 * _cext_mapping.c, _cext_segment.c, _cext_queue.c, and the channel's three
 * _cext_publisher.c, _cext_subscriber.c and _cext_sample.c (sharing
 * _cext_channel.c and _cext_channel.h).
 */
#ifndef FASTSHM_CEXT_H
#define FASTSHM_CEXT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "fastshm.h"

/* Copies at least this long are made with the GIL released, so that threads
 * waiting in I/O or in C code run meanwhile.  Below it the copy keeps the
 * GIL: benchmarks/gil.py finds no size where releasing it gives a
 * CPU-bound Python thread beside the copy more work done in all, since
 * taking the GIL back from such a thread can wait a whole switch interval
 * (5 ms), a hundred times a 1 MiB copy; under 1 MiB a copy holds the GIL
 * for less than about 0.1 ms. */
#define GIL_RELEASE_BYTES (1024 * 1024)
/* A blocking wait comes back for Python's signal handlers this often: a
 * segment's (whose waiters on Windows see python-backend stores only at a
 * slice's end), and a queue's (whose every store wakes its sleepers: the
 * slice's end is for a close() from another thread, a signal that went to
 * another thread, and a waker killed before its wake-up; each costs an idle
 * waiter a context switch). */
#define WAIT_SLICE_NS 50000000LL
#define QUEUE_SLICE_NS 100000000LL
/* A timeout longer than this many seconds is no timeout (31 years). */
#define TIMEOUT_FOREVER_S 1e9
/* A status code of this file, apart from the core's: a Python exception is
 * set. */
#define PY_ERROR_SET (-1000)

/* fastshm._errors, where every message comes from. */
extern PyObject *errors_module;
/* Call fastshm._errors.<fn>(args...) and raise what it returns (or
 * raises).  Always returns NULL. */
PyObject *raise_from(const char *fn, const char *fmt, ...);
PyObject *raise_code(int rc, PyObject *name, const char *detail);
/* raise_for(rc, name, detail, kind): kind "segment", "queue", "channel". */
PyObject *raise_kind(int rc, PyObject *name, const char *detail, const char *kind);
/* A timeout argument (None, or seconds >= 0) as a deadline in
 * fshm_monotonic_ns() time (INT64_MAX: none).  -1 with an exception. */
int parse_timeout(PyObject *obj, int64_t *deadline);
/* SegmentCore.__new__'s and QueueCore.__new__'s opening by name, with
 * `open` the core's opening call for the kind and `core` its fshm_seg or
 * fshm_queue.  0 with *name (borrowed from args) and *m filled, or -1 with
 * an exception. */
typedef int (*open_fn)(void *core, fshm_map *m, const char *name, int how,
                       uint64_t capacity, unsigned mode);
int open_by_name(const char *type_name, const char *other, PyObject *args, PyObject *kwds,
                 open_fn open, void *core, fshm_map *m, PyObject **name);
/* The bytes of a message to `verb` ("store", "publish"): bytes, str as
 * UTF-8, or any C-contiguous buffer.  0 with *src and *n set (and, when a
 * buffer was taken, *view filled and *have_view 1: release it after the
 * copy), or -1 with an exception.  Inline: it is on the hot path. */
static inline int message_bytes(PyObject *data, const char *verb, Py_buffer *view,
                                int *have_view, const char **src, Py_ssize_t *n)
{
    if (PyBytes_CheckExact(data)) {
        *src = PyBytes_AS_STRING(data);
        *n = PyBytes_GET_SIZE(data);
        return 0;
    }
    if (PyUnicode_Check(data))
        return (*src = PyUnicode_AsUTF8AndSize(data, n)) == NULL ? -1 : 0;
    if (PyObject_GetBuffer(data, view, PyBUF_STRIDED_RO) != 0) {
        PyErr_Format(PyExc_TypeError, "can only %s bytes-like objects or str, not %.200s",
                     verb, Py_TYPE(data)->tp_name);
        return -1;
    }
    *have_view = 1;
    if (!PyBuffer_IsContiguous(view, 'C')) {
        PyErr_Format(PyExc_ValueError, "can only %s a C-contiguous buffer; copy it first",
                     verb);
        return -1;
    }
    *src = (const char *)view->buf;
    *n = view->len;
    return 0;
}

/* A fastshm._cext.Mapping owning *m, or NULL (and *m unmapped). */
PyObject *mapping_new(const fshm_map *m);

/* Each type's file: ready its types and add them to the module. */
int mapping_types_add(PyObject *module);  /* _cext_mapping.c */
int segment_types_add(PyObject *module);  /* _cext_segment.c */
int queue_types_add(PyObject *module);    /* _cext_queue.c */
int channel_types_add(PyObject *module);  /* _cext_channel.c */

#endif
