/* Message._received, compiled: a received Message built in one call.
 *
 * Rules this module keeps:
 *
 * - _models.Message._received is the specification: the same fields, the
 *   same values, the same class, an instance equal to the Python one's
 *   (tests/test_models.py builds both and compares them).
 * - It makes the instance as object.__new__ does and stores each field as
 *   object.__setattr__ would (past the frozen class's __setattr__), in the
 *   order attrs' __init__ does; it adds nothing else. That is only right
 *   while Message's fields have no validator or converter, which the same
 *   test checks.
 * - No state but what setup() is given: the Message class and StatusCode.OK.
 *
 * Why it exists: every request a server takes and every reply a client gets
 * is a Message, and building one in Python costs about 7,000 instructions
 * (a ten-argument call, a dict literal, object.__setattr__ of __dict__);
 * this costs a fraction of that, and the instance keeps CPython's compact
 * attribute storage (docs/performance.md).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define FIELDS 13
#define OPTIONAL 6

static PyObject *message_cls; /* zmeshlib.Message */
static PyObject *status_ok;   /* StatusCode.OK */
static PyObject *empty_args;  /* () for object.__new__ */
static PyObject *empty_str;
static PyObject *zero;
static PyObject *names[FIELDS];
static PyObject *empty_bytes;
static PyObject *keywords[OPTIONAL]; /* their argument names */
static const char *const keyword_names[OPTIONAL] = {"method", "deadline", "attempt", "replier",
                                                     "route",  "receiver"};
static const char *const field_names[FIELDS] = {
    "frames", "peer",  "topic",    "headers", "message_id", "method",
    "status", "trace", "deadline", "attempt", "_replier", "_route", "_receiver",
};

/* setup(Message, StatusCode.OK) */
static PyObject *setup(PyObject *self, PyObject *args) {
    PyObject *cls, *ok;
    if (!PyArg_ParseTuple(args, "O!O", &PyType_Type, &cls, &ok)) {
        return NULL;
    }
    Py_XSETREF(message_cls, Py_NewRef(cls));
    Py_XSETREF(status_ok, Py_NewRef(ok));
    Py_RETURN_NONE;
}

/* received(frames, peer, topic, headers, message_id, trace, method="", deadline=None,
 *          attempt=0, replier=None, route=b"", receiver=None) -> Message; the last six also
 *          by keyword */
static PyObject *received(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames) {
    if (message_cls == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "zmeshlib._message: setup() was not called");
        return NULL;
    }
    /* the optional arguments, in signature order: method, deadline, attempt, replier, route,
     * receiver */
    PyObject *optional[OPTIONAL] = {empty_str, Py_None, zero, Py_None, empty_bytes, Py_None};
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs < 6 || nargs > 6 + OPTIONAL) {
        goto usage;
    }
    for (Py_ssize_t i = 6; i < nargs; i++) {
        optional[i - 6] = args[i];
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        int slot = -1;
        for (int j = 0; j < OPTIONAL; j++) {
            if (PyUnicode_Compare(name, keywords[j]) == 0) {
                slot = j;
                break;
            }
        }
        if (slot < 0 || slot + 6 < nargs) { /* unknown, or given twice */
            goto usage;
        }
        optional[slot] = args[nargs + i];
    }
    PyObject *values[FIELDS] = {
        args[0],     /* frames */
        args[1],     /* peer */
        args[2],     /* topic */
        args[3],     /* headers */
        args[4],     /* message_id */
        optional[0], /* method */
        status_ok,   /* status */
        args[5],     /* trace */
        optional[1], /* deadline */
        optional[2], /* attempt */
        optional[3], /* _replier */
        optional[4], /* _route */
        optional[5], /* _receiver */
    };
    PyObject *msg = PyBaseObject_Type.tp_new((PyTypeObject *)message_cls, empty_args, NULL);
    if (msg == NULL) {
        return NULL;
    }
    for (int i = 0; i < FIELDS; i++) {
        /* object.__setattr__ without the Python call: past the frozen class's __setattr__,
         * into the instance's own attribute storage, as its attrs __init__ would store it */
        if (PyObject_GenericSetAttr(msg, names[i], values[i]) < 0) {
            Py_DECREF(msg);
            return NULL;
        }
    }
    return msg;
usage:
    PyErr_SetString(PyExc_TypeError,
                    "received(frames, peer, topic, headers, message_id, trace, method='', "
                    "deadline=None, attempt=0, replier=None, route=b'', receiver=None)");
    return NULL;
}

static PyMethodDef methods[] = {
    {"setup", setup, METH_VARARGS, "Take the Message class and StatusCode.OK."},
    {"received", (PyCFunction)(void (*)(void))received, METH_FASTCALL | METH_KEYWORDS,
     "Message._received, compiled."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "zmeshlib._message", "Message._received, compiled.", -1, methods,
};

PyMODINIT_FUNC PyInit__message(void) {
    empty_args = PyTuple_New(0);
    empty_str = PyUnicode_InternFromString("");
    zero = PyLong_FromLong(0);
    empty_bytes = PyBytes_FromStringAndSize(NULL, 0);
    if (empty_args == NULL || empty_str == NULL || zero == NULL || empty_bytes == NULL) {
        return NULL;
    }
    for (int i = 0; i < FIELDS; i++) {
        names[i] = PyUnicode_InternFromString(field_names[i]);
        if (names[i] == NULL) {
            return NULL;
        }
    }
    for (int i = 0; i < OPTIONAL; i++) {
        keywords[i] = PyUnicode_InternFromString(keyword_names[i]);
        if (keywords[i] == NULL) {
            return NULL;
        }
    }
    return PyModule_Create(&module);
}
