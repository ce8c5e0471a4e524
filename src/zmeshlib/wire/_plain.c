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
 *   Limits, the Python fallbacks, the format's constants) and the last Limits
 *   object seen with its max_envelope_bytes (Limits is frozen).
 * - Never reads past the frame: every length is checked before it is used.
 * - encode_request takes its arguments by position or by keyword, as the
 *   Python function does; a keyword it does not know, or one given twice, goes
 *   to the Python function, which raises the usual TypeError.
 *
 * Theory of operation. A request is built in one buffer of its final size:
 * the fixed part, then each present part in flag order (method, deadline,
 * attempt, the timeout extension). decode_plain walks the same parts in the
 * same order, each behind its flag bit and a bounds check, and answers None
 * for anything else: an extension area that is not exactly one timeout
 * extension is decode()'s to judge.
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
#define TIMEOUT_SIZE 8 /* the timeout extension: type (u16), length (u16) = 4, time left (u32) */
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
static PyObject *request_names[5];  /* encode_request's parameter names, in order */
static PyObject *last_limits;       /* the Limits last read, and its max_envelope_bytes */
static Py_ssize_t last_max;
static unsigned char version;
static uint16_t f_method, f_deadline, f_attempt, f_extensions; /* flag bits of the parts */
static uint16_t ext_timeout;                                    /* the timeout extension's type */

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

static unsigned long get_u32(const unsigned char *p) {
    return ((unsigned long)p[0] << 24) | ((unsigned long)p[1] << 16) | ((unsigned long)p[2] << 8) | p[3];
}

static void put_u16(unsigned char *p, unsigned long v) {
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)(v & 0xff);
}

static void put_u32(unsigned char *p, unsigned long long v) {
    put_u16(p, (unsigned long)(v >> 16));
    put_u16(p + 2, (unsigned long)(v & 0xffff));
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

static PyObject *fallback_kw(PyObject *fn, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    if (fn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "zmeshlib.wire._plain: setup() was not called");
        return NULL;
    }
    return PyObject_Vectorcall(fn, args, nargs, kwnames);
}

static PyObject *fallback(PyObject *fn, PyObject *const *args, Py_ssize_t nargs) {
    return fallback_kw(fn, args, nargs, NULL);
}

static void fill_fixed(unsigned char *p, unsigned char kind, uint16_t flags, unsigned long long id) {
    p[0] = version;
    p[1] = kind;
    p[2] = (unsigned char)(flags >> 8);
    p[3] = (unsigned char)(flags & 0xff);
    put_u64(p + 4, id);
}

/* setup(kinds: tuple of the 4 Kind members in byte order, default_limits, decode_plain,
 *       encode_minimal, encode_publish, encode_request, protocol_version,
 *       (F_METHOD, F_DEADLINE, F_ATTEMPT, F_EXTENSIONS, EXT_TIMEOUT)) */
static PyObject *setup(PyObject *self, PyObject *args) {
    PyObject *members, *limits, *decode, *minimal, *publish, *request;
    int ver, method_bit, deadline_bit, attempt_bit, extensions_bit, timeout_type;
    if (!PyArg_ParseTuple(args, "O!OOOOOi(iiiii)", &PyTuple_Type, &members, &limits, &decode, &minimal,
                          &publish, &request, &ver, &method_bit, &deadline_bit, &attempt_bit,
                          &extensions_bit, &timeout_type)) {
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
    f_method = (uint16_t)method_bit;
    f_deadline = (uint16_t)deadline_bit;
    f_attempt = (uint16_t)attempt_bit;
    f_extensions = (uint16_t)extensions_bit;
    ext_timeout = (uint16_t)timeout_type;
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

/* decode_plain(data, limits=DEFAULT_LIMITS) -> (kind, message_id, "", 0)
 *   | (REQUEST, message_id, method, deadline_ms, timeout_ms, attempt) | None */
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
    if (p[1] != KIND_REQUEST) {
        if (flags || size != FIXED_SIZE) {
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
    if (flags & ~(f_method | f_deadline | f_attempt | f_extensions)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t pos = FIXED_SIZE, method_at = 0, method_len = 0;
    unsigned long long deadline = 0;
    unsigned long timeout = 0, attempt = 0;
    if (flags & f_method) {
        if (pos == size) {
            Py_RETURN_NONE;
        }
        method_len = p[pos];
        method_at = pos + 1;
        pos = method_at + method_len;
        if (pos > size) {
            Py_RETURN_NONE;
        }
    }
    if (flags & f_deadline) {
        if (size - pos < 8) {
            Py_RETURN_NONE;
        }
        deadline = get_u64(p + pos);
        pos += 8;
    }
    if (flags & f_attempt) {
        if (size - pos < 2) {
            Py_RETURN_NONE;
        }
        attempt = ((unsigned long)p[pos] << 8) | p[pos + 1];
        pos += 2;
    }
    if (pos != size) { /* then the extension area, which must be one timeout extension */
        if (!(flags & f_extensions) || size - pos != TIMEOUT_SIZE || p[pos] != (ext_timeout >> 8) ||
            p[pos + 1] != (ext_timeout & 0xff) || p[pos + 2] != 0 || p[pos + 3] != 4) {
            Py_RETURN_NONE;
        }
        timeout = get_u32(p + pos + 4);
    }
    PyObject *method = empty_str;
    Py_INCREF(method);
    if (method_len) {
        Py_SETREF(method, PyUnicode_DecodeUTF8((const char *)p + method_at, method_len, NULL));
        if (method == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                return NULL;
            }
            PyErr_Clear();
            Py_RETURN_NONE;
        }
    }
    PyObject *out = PyTuple_New(6);
    if (out == NULL) {
        Py_DECREF(method);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, Py_NewRef(kind));
    PyTuple_SET_ITEM(out, 2, method);
    PyObject *mid = PyLong_FromUnsignedLongLong(id);
    PyObject *deadline_ms = PyLong_FromUnsignedLongLong(deadline);
    PyObject *timeout_ms = PyLong_FromUnsignedLong(timeout);
    PyObject *attempt_no = PyLong_FromUnsignedLong(attempt);
    /* a tuple item may be NULL until it is filled; Py_DECREF(out) then skips it */
    PyTuple_SET_ITEM(out, 1, mid);
    PyTuple_SET_ITEM(out, 3, deadline_ms);
    PyTuple_SET_ITEM(out, 4, timeout_ms);
    PyTuple_SET_ITEM(out, 5, attempt_no);
    if (mid == NULL || deadline_ms == NULL || timeout_ms == NULL || attempt_no == NULL) {
        Py_DECREF(out);
        return NULL;
    }
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

/* The value of each encode_request parameter (NULL where not given) from a vectorcall;
 * -1 when the call has a keyword that is not a parameter, or a parameter twice. */
static int request_arguments(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **values) {
    for (int i = 0; i < 5; i++) {
        values[i] = i < nargs ? args[i] : NULL;
    }
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int at = -1;
        for (int i = 0; i < 5 && at < 0; i++) { /* interned names: usually the same object */
            if (name == request_names[i]) {
                at = i;
            }
        }
        for (int i = 0; i < 5 && at < 0; i++) {
            if (PyUnicode_Compare(name, request_names[i]) == 0) {
                at = i;
            }
        }
        if (at < 0 || values[at] != NULL) {
            return -1;
        }
        values[at] = args[nargs + k];
    }
    return 0;
}

/* An exact int in 0..top, or -1 (no error set) when it is anything else. */
static int as_bounded(PyObject *value, unsigned long long top, unsigned long long *out) {
    return as_u64(value, out) == 0 && *out <= top ? 0 : -1;
}

/* encode_request(message_id, method, deadline_ms, timeout_ms=0, attempt=0) -> a request with
 * a method and whichever of a deadline, an attempt and the timeout extension are not 0 */
static PyObject *encode_request(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *v[5];
    unsigned long long id, deadline, timeout = 0, attempt = 0;
    if (nargs <= 5 && py_encode_request != NULL && request_arguments(args, nargs, kwnames, v) == 0 &&
        v[0] != NULL && v[1] != NULL && v[2] != NULL && PyUnicode_CheckExact(v[1]) &&
        as_u64(v[0], &id) == 0 && as_u64(v[2], &deadline) == 0 &&
        (v[3] == NULL || as_bounded(v[3], 0xffffffffULL, &timeout) == 0) &&
        (v[4] == NULL || as_bounded(v[4], 0xffffULL, &attempt) == 0)) {
        Py_ssize_t n;
        const char *method = PyUnicode_AsUTF8AndSize(v[1], &n);
        if (method == NULL) {
            PyErr_Clear(); /* not encodable (a lone surrogate): the Python function says so */
        } else if (n > 0 && n <= 255) {
            uint16_t flags = f_method;
            Py_ssize_t size = FIXED_SIZE + 1 + n;
            if (deadline) {
                flags |= f_deadline;
                size += 8;
            }
            if (attempt) {
                flags |= f_attempt;
                size += 2;
            }
            if (timeout) {
                flags |= f_extensions;
                size += TIMEOUT_SIZE;
            }
            PyObject *out = PyBytes_FromStringAndSize(NULL, size);
            if (out != NULL) {
                unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
                fill_fixed(p, KIND_REQUEST, flags, id);
                p += FIXED_SIZE;
                *p++ = (unsigned char)n;
                memcpy(p, method, (size_t)n);
                p += n;
                if (deadline) {
                    put_u64(p, deadline);
                    p += 8;
                }
                if (attempt) {
                    put_u16(p, (unsigned long)attempt);
                    p += 2;
                }
                if (timeout) {
                    put_u16(p, ext_timeout);
                    put_u16(p + 2, 4);
                    put_u32(p + 4, timeout);
                }
            }
            return out;
        }
    }
    return fallback_kw(py_encode_request, args, nargs, kwnames);
}

static PyMethodDef methods[] = {
    {"setup", setup, METH_VARARGS, "Take the Kind members, the defaults and the Python fallbacks."},
    {"decode_plain", (PyCFunction)(void (*)(void))decode_plain, METH_FASTCALL,
     "envelope.decode_plain, compiled."},
    {"encode_minimal", (PyCFunction)(void (*)(void))encode_minimal, METH_FASTCALL,
     "envelope.encode_minimal, compiled."},
    {"encode_publish", (PyCFunction)(void (*)(void))encode_publish, METH_FASTCALL,
     "envelope.encode_publish, compiled."},
    {"encode_request", (PyCFunction)(void (*)(void))encode_request, METH_FASTCALL | METH_KEYWORDS,
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
    const char *names[5] = {"message_id", "method", "deadline_ms", "timeout_ms", "attempt"};
    for (int i = 0; i < 5; i++) {
        request_names[i] = PyUnicode_InternFromString(names[i]);
        if (request_names[i] == NULL) {
            return NULL;
        }
    }
    return PyModule_Create(&module);
}
