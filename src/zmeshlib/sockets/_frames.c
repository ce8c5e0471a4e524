/* Whole multipart messages in one call: the hot path's frame mover.
 *
 * pyzmq makes one Python call per frame, and on a loaded two-core machine
 * each costs 3-8 us on the real path; a ROUTER that reads three frames and
 * writes three makes six where a REP makes two. This module reads or writes
 * a whole message in one call, with libzmq's own functions on the socket
 * handle pyzmq exposes (Socket.underlying, read at every call: 0 once closed). Nothing else: no policy, no
 * envelope, no state but the function table.
 *
 * It links against nothing. frames.py finds the libzmq that pyzmq loaded
 * and hands bind() the addresses of the functions below, so the sockets and
 * this code share one libzmq. Errors are raised as the zmq.ZMQError class
 * bind() is given, with libzmq's errno, as pyzmq would.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <string.h>

/* libzmq's zmq_msg_t: 64 opaque bytes, pointer-aligned (zmq.h). */
typedef struct {
    unsigned char _[64];
} __attribute__((aligned(sizeof(void *)))) zmq_msg_t;

#define ZMQ_DONTWAIT 1
#define ZMQ_SNDMORE 2

static int (*z_msg_init)(zmq_msg_t *);
static int (*z_msg_recv)(zmq_msg_t *, void *, int);
static void *(*z_msg_data)(zmq_msg_t *);
static size_t (*z_msg_size)(const zmq_msg_t *);
static int (*z_msg_more)(const zmq_msg_t *);
static const char *(*z_msg_gets)(const zmq_msg_t *, const char *);
static int (*z_msg_close)(zmq_msg_t *);
static int (*z_send)(void *, const void *, size_t, int);
static int (*z_errno)(void);
static PyObject *zmq_error; /* zmq.ZMQError */
static PyObject *zmq_again; /* zmq.Again */
static PyObject *underlying_name; /* "underlying": a pyzmq Socket's libzmq handle */

static PyObject *raise_zmq(int err) {
    PyObject *cls = err == EAGAIN ? zmq_again : zmq_error;
    PyObject *exc = PyObject_CallFunction(cls, "i", err);
    if (exc != NULL) {
        PyErr_SetObject(cls, exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* The libzmq handle of a pyzmq Socket, NULL (an exception set) if it has none. */
static void *handle_of(PyObject *socket) {
    PyObject *address = PyObject_GetAttr(socket, underlying_name);
    if (address == NULL) {
        return NULL;
    }
    void *sock = PyLong_AsVoidPtr(address);
    Py_DECREF(address);
    if (sock == NULL && !PyErr_Occurred()) {
        raise_zmq(ENOTSOCK); /* pyzmq gives 0 for a closed socket */
    }
    return sock;
}

/* bind(addresses: tuple of 9 ints, ZMQError, Again) */
static PyObject *bind(PyObject *self, PyObject *args) {
    PyObject *addrs, *error, *again;
    if (!PyArg_ParseTuple(args, "O!OO", &PyTuple_Type, &addrs, &error, &again)) {
        return NULL;
    }
    if (PyTuple_GET_SIZE(addrs) != 9) {
        PyErr_SetString(PyExc_ValueError, "bind() takes the addresses of 9 libzmq functions");
        return NULL;
    }
    void *p[9];
    for (Py_ssize_t i = 0; i < 9; i++) {
        p[i] = PyLong_AsVoidPtr(PyTuple_GET_ITEM(addrs, i));
        if (p[i] == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError, "a libzmq function address is 0");
            }
            return NULL;
        }
    }
    z_msg_init = p[0];
    z_msg_recv = p[1];
    z_msg_data = p[2];
    z_msg_size = p[3];
    z_msg_more = p[4];
    z_msg_gets = p[5];
    z_msg_close = p[6];
    z_send = p[7];
    z_errno = p[8];
    Py_XSETREF(zmq_error, Py_NewRef(error));
    Py_XSETREF(zmq_again, Py_NewRef(again));
    Py_RETURN_NONE;
}

/* The User-Id as a str. Messages mostly come from a peer seen a moment ago, so the last
 * value is kept and handed out again while the bytes are the same: no decode, and the
 * same str object (its hash cached) for the caller's lookups. */
static char last_user_id[256];
static PyObject *last_user_id_str;

static PyObject *user_id_str(const char *value) {
    size_t n = strlen(value);
    if (last_user_id_str != NULL && n < sizeof last_user_id && memcmp(value, last_user_id, n + 1) == 0) {
        return Py_NewRef(last_user_id_str);
    }
    PyObject *text = PyUnicode_DecodeUTF8(value, (Py_ssize_t)n, "replace");
    if (text != NULL && n < sizeof last_user_id) {
        memcpy(last_user_id, value, n + 1);
        Py_XSETREF(last_user_id_str, Py_NewRef(text));
    }
    return text;
}

#define FEW 8 /* frames a message usually has at most: held on the stack until the tuple */

/* recv(socket, flags=0, user_id=False) -> (frames: tuple[bytes, ...], user_id: str | None),
 * or None when flags has DONTWAIT (or RCVTIMEO ran out) and no message is there. */
static PyObject *recv(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "recv(socket, flags=0, user_id=False)");
        return NULL;
    }
    void *sock = handle_of(args[0]);
    int flags = nargs > 1 ? (int)PyLong_AsLong(args[1]) : 0;
    int want_user_id = nargs > 2 ? PyObject_IsTrue(args[2]) : 0;
    if (sock == NULL || PyErr_Occurred()) {
        return NULL;
    }
    zmq_msg_t msg;
    int rc, err = 0;
    for (;;) { /* the first frame may wait: without the GIL */
        z_msg_init(&msg);
        Py_BEGIN_ALLOW_THREADS
        rc = z_msg_recv(&msg, sock, flags);
        if (rc < 0) {
            err = z_errno();
        }
        Py_END_ALLOW_THREADS
        if (rc >= 0) {
            break;
        }
        z_msg_close(&msg);
        if (err == EAGAIN) {
            Py_RETURN_NONE;
        }
        if (err != EINTR) {
            return raise_zmq(err);
        }
        if (PyErr_CheckSignals() < 0) {
            return NULL;
        }
    }
    PyObject *user_id = Py_NewRef(Py_None);
    PyObject *few[FEW]; /* the frames of a usual message, before their tuple is made */
    Py_ssize_t n = 0;
    PyObject *many = NULL; /* a list, once a message has more than FEW frames */
    PyObject *frames = NULL;
    if (want_user_id) {
        const char *value = z_msg_gets(&msg, "User-Id");
        if (value != NULL) {
            Py_SETREF(user_id, user_id_str(value));
            if (user_id == NULL) {
                goto fail;
            }
        }
    }
    for (;;) {
        PyObject *frame = PyBytes_FromStringAndSize(z_msg_data(&msg), z_msg_size(&msg));
        if (frame == NULL) {
            goto fail;
        }
        if (many == NULL && n < FEW) {
            few[n++] = frame;
        } else {
            if (many == NULL) {
                many = PyList_New(0);
                for (Py_ssize_t i = 0; many != NULL && i < n; i++) {
                    if (PyList_Append(many, few[i]) < 0) {
                        Py_CLEAR(many);
                    }
                }
                if (many == NULL) {
                    Py_DECREF(frame);
                    goto fail;
                }
                for (Py_ssize_t i = 0; i < n; i++) {
                    Py_DECREF(few[i]);
                }
                n = 0;
            }
            int rc = PyList_Append(many, frame);
            Py_DECREF(frame);
            if (rc < 0) {
                goto fail;
            }
        }
        int more = z_msg_more(&msg);
        z_msg_close(&msg);
        if (!more) {
            break;
        }
        z_msg_init(&msg); /* libzmq delivers a message whole: the rest never waits */
        while (z_msg_recv(&msg, sock, 0) < 0) {
            err = z_errno();
            if (err != EINTR) {
                raise_zmq(err);
                goto fail;
            }
        }
    }
    z_msg_init(&msg); /* every frame is read and closed: what fail closes is empty */
    if (many != NULL) {
        frames = PyList_AsTuple(many);
        Py_CLEAR(many);
    } else {
        frames = PyTuple_New(n);
        if (frames != NULL) {
            for (Py_ssize_t i = 0; i < n; i++) {
                PyTuple_SET_ITEM(frames, i, few[i]); /* the tuple takes the reference */
            }
            n = 0;
        }
    }
    if (frames == NULL) {
        goto fail;
    }
    PyObject *out = PyTuple_Pack(2, frames, user_id);
    Py_DECREF(frames);
    Py_DECREF(user_id);
    return out;
fail:
    z_msg_close(&msg);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_DECREF(few[i]);
    }
    Py_XDECREF(many);
    Py_XDECREF(user_id);
    return NULL;
}

/* send(socket, frames: list[bytes], flags=0) -> True, or False when the first frame would
 * block (DONTWAIT and the queue is full): then nothing was sent. */
static PyObject *send(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 2 || nargs > 3 || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "send(socket, frames: list[bytes], flags=0)");
        return NULL;
    }
    void *sock = handle_of(args[0]);
    PyObject *frames = args[1];
    int flags = nargs > 2 ? (int)PyLong_AsLong(args[2]) : 0;
    if (sock == NULL || PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(frames);
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "a message has at least one frame");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyBytes_Check(PyList_GET_ITEM(frames, i))) {
            PyErr_SetString(PyExc_TypeError, "every frame must be bytes");
            return NULL;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *frame = PyList_GET_ITEM(frames, i);
        int part = flags | (i < n - 1 ? ZMQ_SNDMORE : 0);
        int rc, err = 0;
        for (;;) {
            if (flags & ZMQ_DONTWAIT) {
                rc = z_send(sock, PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame), part);
                if (rc < 0) {
                    err = z_errno();
                }
            } else { /* may wait at the high-water mark: without the GIL */
                Py_BEGIN_ALLOW_THREADS
                rc = z_send(sock, PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame), part);
                if (rc < 0) {
                    err = z_errno();
                }
                Py_END_ALLOW_THREADS
            }
            if (rc >= 0) {
                break;
            }
            if (err == EAGAIN && i == 0) {
                Py_RETURN_FALSE;
            }
            if (err != EINTR) {
                return raise_zmq(err);
            }
            if (PyErr_CheckSignals() < 0) {
                return NULL;
            }
        }
    }
    Py_RETURN_TRUE;
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_VARARGS, "Bind the libzmq functions pyzmq loaded, and zmq's errors."},
    {"recv", (PyCFunction)(void (*)(void))recv, METH_FASTCALL, "Receive one whole message."},
    {"send", (PyCFunction)(void (*)(void))send, METH_FASTCALL, "Send one whole message."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "zmeshlib.sockets._frames", "Whole multipart messages in one call.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__frames(void) {
    underlying_name = PyUnicode_InternFromString("underlying");
    if (underlying_name == NULL) {
        return NULL;
    }
    return PyModule_Create(&module);
}
