/* The envelope's hot-path shapes, compiled: decode_plain, encode_minimal,
 * encode_publish and encode_request of envelope.py, with the same results.
 *
 * Rules this module keeps:
 *
 * - envelope.py is the specification and the fallback. Each function here
 *   handles the clean case (exact bytes, str and int arguments, values in
 *   range) and hands anything else to the Python function it stands for, so
 *   every error and every unusual input gets exactly the Python answer.
 *   tests/wire/ hold both implementations to one answer on any input.
 * - No state but what setup() is given (the Kind members, the default
 *   Limits, the Python fallbacks, two format constants) and the last Limits
 *   object seen with its max_envelope_bytes (Limits is frozen).
 * - Never reads past the frame: every length is checked before it is used.
 *
 * Why it exists: in a request/reply round trip the process has just woken
 * from a blocking read, and the interpreter runs its Python cold; each of
 * these functions costs 2-5 us there in Python and a fraction of that here
 * (docs/performance.md).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define FIXED_SIZE 12 /* version, kind, flags (u16), message id (u64) */
#define KIND_PUBLISH 1
#define KIND_REQUEST 2

static PyObject *kinds[5];          /* Kind members by their byte, 1-4 */
static PyObject *default_limits;    /* DEFAULT_LIMITS */
static PyObject *py_decode_plain; /* the Python functions, for whatever is not plain */
static PyObject *py_encode_minimal;
static PyObject *py_encode_publish;
static PyObject *py_encode_request;
static PyObject *empty_str;
static PyObject *zero;
static PyObject *max_envelope_name; /* "max_envelope_bytes" */
static PyObject *last_limits;       /* the Limits last read, and its max_envelope_bytes */
static Py_ssize_t last_max;
static unsigned char version;
static uint16_t plain_request_flags;

static void put_u64(unsigned char *p, unsigned long long v) {
    for (int i = 7; i >= 0; i--) {
        p[i] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

static unsigned long long get_u64(const unsigned char *p) {
    unsigned long long v = 0;
    for (int i = 0; i < 8; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

/* An exact int in 0..2^64-1, or -1 (no error set) when it is anything else. */
static int as_u64(PyObject *value, unsigned long long *out) {
    if (!PyLong_CheckExact(value)) {
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(value);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear(); /* negative or too big: the Python function says why */
        return -1;
    }
    *out = v;
    return 0;
}

static PyObject *fallback(PyObject *fn, PyObject *const *args, Py_ssize_t nargs) {
    if (fn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "zmeshlib.wire._plain: setup() was not called");
        return NULL;
    }
    return PyObject_Vectorcall(fn, args, nargs, NULL);
}

static void fill_fixed(unsigned char *p, unsigned char kind, uint16_t flags, unsigned long long id) {
    p[0] = version;
    p[1] = kind;
    p[2] = (unsigned char)(flags >> 8);
    p[3] = (unsigned char)(flags & 0xff);
    put_u64(p + 4, id);
}

/* setup(kinds: tuple of the 4 Kind members in byte order, default_limits, decode_plain,
 *       encode_minimal, encode_publish, encode_request, protocol_version, plain_request_flags) */
static PyObject *setup(PyObject *self, PyObject *args) {
    PyObject *members, *limits, *decode, *minimal, *publish, *request;
    int ver, flags;
    if (!PyArg_ParseTuple(args, "O!OOOOOii", &PyTuple_Type, &members, &limits, &decode, &minimal,
                          &publish, &request, &ver, &flags)) {
        return NULL;
    }
    if (PyTuple_GET_SIZE(members) != 4) {
        PyErr_SetString(PyExc_ValueError, "setup() takes the 4 Kind members");
        return NULL;
    }
    for (int i = 0; i < 4; i++) {
        Py_XSETREF(kinds[i + 1], Py_NewRef(PyTuple_GET_ITEM(members, i)));
    }
    Py_XSETREF(default_limits, Py_NewRef(limits));
    Py_XSETREF(py_decode_plain, Py_NewRef(decode));
    Py_XSETREF(py_encode_minimal, Py_NewRef(minimal));
    Py_XSETREF(py_encode_publish, Py_NewRef(publish));
    Py_XSETREF(py_encode_request, Py_NewRef(request));
    Py_CLEAR(last_limits);
    version = (unsigned char)ver;
    plain_request_flags = (uint16_t)flags;
    Py_RETURN_NONE;
}

#define NOT_PLAIN (-2) /* max_envelope_bytes is not an int in 0..PY_SSIZE_T_MAX: ask Python */

/* max_envelope_bytes of a Limits, read once per Limits object; -1 with an error set, or
 * NOT_PLAIN when the Python function must compare it (a float, a huge or negative int). */
static Py_ssize_t max_envelope(PyObject *limits) {
    if (limits == last_limits) {
        return last_max;
    }
    PyObject *value = PyObject_GetAttr(limits, max_envelope_name);
    if (value == NULL) {
        return -1;
    }
    Py_ssize_t max = NOT_PLAIN;
    if (PyLong_CheckExact(value)) {
        max = PyLong_AsSsize_t(value);
        if (max < 0) {
            PyErr_Clear(); /* too big for a size, or negative */
            max = NOT_PLAIN;
        }
    }
    Py_DECREF(value);
    if (max != NOT_PLAIN) {
        Py_XSETREF(last_limits, Py_NewRef(limits));
        last_max = max;
    }
    return max;
}

/* decode_plain(data, limits=DEFAULT_LIMITS) -> (kind, message_id, method, deadline_ms) | None */
static PyObject *decode_plain(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "decode_plain(data, limits=DEFAULT_LIMITS)");
        return NULL;
    }
    PyObject *data = args[0];
    if (default_limits == NULL) {
        return fallback(NULL, args, nargs);
    }
    if (!PyBytes_CheckExact(data)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t max = max_envelope(nargs > 1 ? args[1] : default_limits);
    if (max == NOT_PLAIN) {
        return fallback(py_decode_plain, args, nargs);
    }
    if (max < 0) {
        return NULL;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    if (size < FIXED_SIZE || size > max || p[0] != version || p[1] < 1 || p[1] > 4) {
        Py_RETURN_NONE;
    }
    PyObject *kind = kinds[p[1]];
    uint16_t flags = (uint16_t)((p[2] << 8) | p[3]);
    unsigned long long id = get_u64(p + 4);
    if (!flags) {
        if (size != FIXED_SIZE) {
            Py_RETURN_NONE;
        }
        PyObject *mid = PyLong_FromUnsignedLongLong(id);
        if (mid == NULL) {
            return NULL;
        }
        PyObject *out = PyTuple_Pack(4, kind, mid, empty_str, zero);
        Py_DECREF(mid);
        return out;
    }
    if (flags != plain_request_flags || size < FIXED_SIZE + 9) {
        Py_RETURN_NONE;
    }
    Py_ssize_t end = FIXED_SIZE + 1 + p[FIXED_SIZE];
    if (size != end + 8) {
        Py_RETURN_NONE;
    }
    PyObject *method = PyUnicode_DecodeUTF8((const char *)p + FIXED_SIZE + 1, end - FIXED_SIZE - 1, NULL);
    if (method == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            return NULL;
        }
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *mid = PyLong_FromUnsignedLongLong(id);
    PyObject *deadline = PyLong_FromUnsignedLongLong(get_u64(p + end));
    PyObject *out = NULL;
    if (mid != NULL && deadline != NULL) {
        out = PyTuple_Pack(4, kind, mid, method, deadline);
    }
    Py_XDECREF(mid);
    Py_XDECREF(deadline);
    Py_DECREF(method);
    return out;
}

/* encode_minimal(kind, message_id) -> the 12 fixed bytes */
static PyObject *encode_minimal(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    unsigned long long id;
    if (nargs == 2 && kinds[1] != NULL && as_u64(args[1], &id) == 0) {
        for (unsigned char k = 1; k <= 4; k++) {
            if (args[0] == kinds[k]) {
                PyObject *out = PyBytes_FromStringAndSize(NULL, FIXED_SIZE);
                if (out != NULL) {
                    fill_fixed((unsigned char *)PyBytes_AS_STRING(out), k, 0, id);
                }
                return out;
            }
        }
    }
    return fallback(py_encode_minimal, args, nargs);
}

/* encode_publish(message_id) -> the 12 fixed bytes of a publication */
static PyObject *encode_publish(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    unsigned long long id;
    if (nargs == 1 && py_encode_publish != NULL && as_u64(args[0], &id) == 0) {
        PyObject *out = PyBytes_FromStringAndSize(NULL, FIXED_SIZE);
        if (out != NULL) {
            fill_fixed((unsigned char *)PyBytes_AS_STRING(out), KIND_PUBLISH, 0, id);
        }
        return out;
    }
    return fallback(py_encode_publish, args, nargs);
}

/* encode_request(message_id, method, deadline_ms) -> a request with a method and a deadline */
static PyObject *encode_request(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    unsigned long long id, deadline;
    if (nargs == 3 && py_encode_request != NULL && PyUnicode_CheckExact(args[1]) && as_u64(args[0], &id) == 0 &&
        as_u64(args[2], &deadline) == 0 && deadline > 0) {
        Py_ssize_t n;
        const char *method = PyUnicode_AsUTF8AndSize(args[1], &n);
        if (method == NULL) {
            PyErr_Clear(); /* not encodable (a lone surrogate): the Python function says so */
        } else if (n > 0 && n <= 255) {
            PyObject *out = PyBytes_FromStringAndSize(NULL, FIXED_SIZE + 1 + n + 8);
            if (out != NULL) {
                unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
                fill_fixed(p, KIND_REQUEST, plain_request_flags, id);
                p[FIXED_SIZE] = (unsigned char)n;
                memcpy(p + FIXED_SIZE + 1, method, (size_t)n);
                put_u64(p + FIXED_SIZE + 1 + n, deadline);
            }
            return out;
        }
    }
    return fallback(py_encode_request, args, nargs);
}

static PyMethodDef methods[] = {
    {"setup", setup, METH_VARARGS, "Take the Kind members, the defaults and the Python fallbacks."},
    {"decode_plain", (PyCFunction)(void (*)(void))decode_plain, METH_FASTCALL,
     "envelope.decode_plain, compiled."},
    {"encode_minimal", (PyCFunction)(void (*)(void))encode_minimal, METH_FASTCALL,
     "envelope.encode_minimal, compiled."},
    {"encode_publish", (PyCFunction)(void (*)(void))encode_publish, METH_FASTCALL,
     "envelope.encode_publish, compiled."},
    {"encode_request", (PyCFunction)(void (*)(void))encode_request, METH_FASTCALL,
     "envelope.encode_request, compiled."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "zmeshlib.wire._plain", "The envelope's hot-path shapes, compiled.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__plain(void) {
    empty_str = PyUnicode_InternFromString("");
    zero = PyLong_FromLong(0);
    max_envelope_name = PyUnicode_InternFromString("max_envelope_bytes");
    if (empty_str == NULL || zero == NULL || max_envelope_name == NULL) {
        return NULL;
    }
    return PyModule_Create(&module);
}
