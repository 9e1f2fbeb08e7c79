/* psi._native: the Python face of the C core. Each call takes a whole chunk (a buffer of
 * 32-byte points, or a list of messages), releases the GIL for the computation and
 * writes into a buffer the caller allocated, so no Python object is made per point.
 * psi/backend.py decides which path runs; this module only refuses a path the CPU
 * lacks. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "native.h"

static int have_avx2;

static int want_avx2(int avx2)
{
    if (avx2 && !have_avx2) {
        PyErr_SetString(PyExc_ValueError, "this CPU has no AVX2");
        return -1;
    }
    return 0;
}

static int points_buffers(Py_buffer *points, Py_buffer *out, Py_ssize_t out_width)
{
    if (points->len % 32) {
        PyErr_Format(PyExc_ValueError, "points must be a multiple of 32 bytes, got %zd",
                     points->len);
        return -1;
    }
    if (out->len != points->len / 32 * out_width) {
        PyErr_Format(PyExc_ValueError, "output buffer holds %zd bytes, %zd needed", out->len,
                     points->len / 32 * out_width);
        return -1;
    }
    return 0;
}

static PyObject *x25519(PyObject *self, PyObject *args)
{
    Py_buffer scalar, points, out;
    int check, avx2, rc;
    psi_counts counts;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*w*pp", &scalar, &points, &out, &check, &avx2))
        return NULL;
    PyObject *result = NULL;
    if (scalar.len != 32) {
        PyErr_SetString(PyExc_ValueError, "a scalar is exactly 32 bytes");
        goto done;
    }
    if (points_buffers(&points, &out, 32) || want_avx2(avx2))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    rc = psi_x25519_batch(scalar.buf, points.buf, out.buf, (size_t)points.len / 32, check,
                          avx2, &counts);
    Py_END_ALLOW_THREADS
    if (rc) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_BuildValue("nnn", (Py_ssize_t)counts.malformed, (Py_ssize_t)counts.off_curve,
                           (Py_ssize_t)counts.low_order);
done:
    PyBuffer_Release(&scalar);
    PyBuffer_Release(&points);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *classify(PyObject *self, PyObject *args)
{
    Py_buffer points, status;
    int avx2;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*p", &points, &status, &avx2))
        return NULL;
    PyObject *result = NULL;
    if (points_buffers(&points, &status, 1) || want_avx2(avx2))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    psi_classify(points.buf, status.buf, (size_t)points.len / 32, avx2);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&points);
    PyBuffer_Release(&status);
    return result;
}

static int dst_and_count(Py_buffer *dst_prime, int count)
{
    if (dst_prime->len < 2 || dst_prime->len > 256) {
        PyErr_SetString(PyExc_ValueError, "DST' is 2 to 256 bytes");
        return -1;
    }
    if (count != 1 && count != 2) {
        PyErr_SetString(PyExc_ValueError, "count is 1 or 2");
        return -1;
    }
    return 0;
}

/* Copies messages [start, start + m) of items into one buffer, with their offsets. */
static int join_messages(PyObject *items, Py_ssize_t start, Py_ssize_t m, uint8_t **joined,
                         size_t *capacity, size_t *offsets)
{
    offsets[0] = 0;
    for (Py_ssize_t i = 0; i < m; i++) {
        Py_buffer view;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(items, start + i), &view, PyBUF_SIMPLE))
            return -1;
        const size_t end = offsets[i] + (size_t)view.len;
        if (end > *capacity) {
            const size_t grown = end > 2 * *capacity ? end : 2 * *capacity;
            uint8_t *larger = PyMem_Realloc(*joined, grown);
            if (larger == NULL) {
                PyBuffer_Release(&view);
                PyErr_NoMemory();
                return -1;
            }
            *joined = larger;
            *capacity = grown;
        }
        memcpy(*joined + offsets[i], view.buf, (size_t)view.len);
        offsets[i + 1] = end;
        PyBuffer_Release(&view);
    }
    return 0;
}

static PyObject *hash_to_curve(PyObject *self, PyObject *args)
{
    PyObject *msgs;
    Py_buffer dst_prime, out;
    int count, avx2, rc = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "Oy*iw*p", &msgs, &dst_prime, &count, &out, &avx2))
        return NULL;
    PyObject *result = NULL, *items = NULL;
    uint8_t *joined = NULL;
    size_t capacity = 0, offsets[PSI_BLOCK + 1];
    if (dst_and_count(&dst_prime, count) || want_avx2(avx2))
        goto done;
    /* a tuple: the caller's list cannot change length while the GIL is released */
    items = PySequence_Tuple(msgs);
    if (items == NULL)
        goto done;
    const Py_ssize_t n = PyTuple_GET_SIZE(items);
    if (out.len != 32 * n) {
        PyErr_Format(PyExc_ValueError, "output buffer holds %zd bytes, %zd needed", out.len,
                     32 * n);
        goto done;
    }
    /* Each block of messages is copied while the GIL is held and hashed without it, so
     * that memory stays bounded and no Python object is touched while hashing. */
    for (Py_ssize_t start = 0; start < n && rc == 0; start += PSI_BLOCK) {
        const Py_ssize_t m = n - start < PSI_BLOCK ? n - start : PSI_BLOCK;
        if (join_messages(items, start, m, &joined, &capacity, offsets))
            goto done;
        Py_BEGIN_ALLOW_THREADS
        rc = psi_hash_to_curve(joined, offsets, (size_t)m, dst_prime.buf,
                               (size_t)dst_prime.len, count, avx2,
                               (uint8_t *)out.buf + 32 * start);
        Py_END_ALLOW_THREADS
    }
    if (rc) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    if (joined != NULL) {
        psi_wipe(joined, capacity);
        PyMem_Free(joined);
    }
    Py_XDECREF(items);
    PyBuffer_Release(&dst_prime);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *hash_uniform_to_curve(PyObject *self, PyObject *args)
{
    Py_buffer uniform, out;
    int count, avx2, rc;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*iw*p", &uniform, &count, &out, &avx2))
        return NULL;
    PyObject *result = NULL;
    if (count != 1 && count != 2) {
        PyErr_SetString(PyExc_ValueError, "count is 1 or 2");
        goto done;
    }
    if (want_avx2(avx2))
        goto done;
    const Py_ssize_t width = (Py_ssize_t)count * PSI_H2C_L;
    if (uniform.len % width || out.len != uniform.len / width * 32) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = psi_hash_uniform_to_curve(uniform.buf, (size_t)(uniform.len / width), count, avx2,
                                   out.buf);
    Py_END_ALLOW_THREADS
    if (rc) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&uniform);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *expand_message_xmd(PyObject *self, PyObject *args)
{
    Py_buffer msg, dst_prime;
    Py_ssize_t len;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*n", &msg, &dst_prime, &len))
        return NULL;
    PyObject *result = NULL;
    if (dst_and_count(&dst_prime, 1))
        goto done;
    if (len < 1 || len > 255 * 64) {
        PyErr_SetString(PyExc_ValueError, "len_in_bytes must be 1..16320");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, len);
    if (result != NULL)
        psi_expand_message_xmd(msg.buf, (size_t)msg.len, dst_prime.buf, (size_t)dst_prime.len,
                               (uint8_t *)PyBytes_AS_STRING(result), (size_t)len);
done:
    PyBuffer_Release(&msg);
    PyBuffer_Release(&dst_prime);
    return result;
}

static PyObject *sha512(PyObject *self, PyObject *args)
{
    Py_buffer data;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*", &data))
        return NULL;
    uint8_t digest[64];
    psi_sha512 c;
    Py_BEGIN_ALLOW_THREADS
    psi_sha512_init(&c);
    psi_sha512_update(&c, data.buf, (size_t)data.len);
    psi_sha512_final(&c, digest);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    return PyBytes_FromStringAndSize((const char *)digest, 64);
}

static PyObject *avx2_supported(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyBool_FromLong(have_avx2);
}

static PyMethodDef methods[] = {
    {"x25519", x25519, METH_VARARGS,
     "x25519(scalar, points, out, check, avx2) -> (malformed, off_curve, low_order)\n\n"
     "X25519 of one 32-byte scalar with every 32-byte point, written to out. With check,\n"
     "nothing is computed unless every point is canonical and on the curve."},
    {"classify", classify, METH_VARARGS,
     "classify(points, status, avx2)\n\n"
     "One status byte per point: NONCANONICAL and TWIST bits."},
    {"hash_to_curve", hash_to_curve, METH_VARARGS,
     "hash_to_curve(messages, dst_prime, count, out, avx2)\n\n"
     "RFC 9380 curve25519_XMD:SHA-512_ELL2 (count 2: _RO_, count 1: _NU_), u only;\n"
     "with avx2, four maps' exponentiations at a time."},
    {"hash_uniform_to_curve", hash_uniform_to_curve, METH_VARARGS,
     "hash_uniform_to_curve(uniform, count, out, avx2)\n\n"
     "The second half of hash_to_curve: 48 count bytes of expand_message_xmd output\n"
     "per message to a u-coordinate."},
    {"expand_message_xmd", expand_message_xmd, METH_VARARGS,
     "expand_message_xmd(msg, dst_prime, len_in_bytes) -> bytes"},
    {"sha512", sha512, METH_VARARGS, "sha512(data) -> 64-byte digest"},
    {"avx2_supported", avx2_supported, METH_NOARGS, "Whether this CPU runs the AVX2 path."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "psi._native",
    .m_doc = "Batched X25519 (AVX2 and portable) and RFC 9380 hash to curve25519, in C.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    have_avx2 = psi_cpu_has_avx2();
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    /* the bits of classify's status bytes */
    if (PyModule_AddIntConstant(m, "NONCANONICAL", PSI_NONCANONICAL) ||
        PyModule_AddIntConstant(m, "TWIST", PSI_TWIST)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
