/* Optional C accelerator for the index hot loop (distrestore.format.messages).
 *
 * decode_block_entries(block, limit, out, hidden, head_cache, make_entry, head_fallback,
 *                      entry_fallback)
 * walks one decoded index block exactly like the pure-Python function of the same name:
 * prefix-compressed keys, the header under key "", slice-entry keys (leading NUL) into `hidden`,
 * and for every tensor entry of TF's usual layout (dtype, shape, then shard/offset/size/crc) a
 * TensorEntry made with `make_entry`, the (dtype, shape) pair looked up by the bytes of the
 * leading fields in `head_cache` (filled by `head_fallback(head, name)` on a miss). Entries of any
 * other layout go to `entry_fallback(name, value)`. Opening a checkpoint with 10^5 tensors is
 * this loop and nothing else, which is why it is in C.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static int read_varint(const unsigned char *p, Py_ssize_t end, Py_ssize_t *pos, uint64_t *out) {
    uint64_t result = 0;
    int shift = 0;
    while (*pos < end) {
        unsigned char b = p[(*pos)++];
        result |= (uint64_t)(b & 0x7F) << shift;
        if (b < 0x80) { *out = result; return 0; }
        shift += 7;
        if (shift > 63) return -1;
    }
    return -1;
}

static PyObject *corrupt(const char *what) {
    PyErr_SetString(PyExc_ValueError, what);
    return NULL;
}

static PyObject *decode_block_entries(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t limit;
    PyObject *out, *hidden, *head_cache, *make_entry, *head_fallback, *entry_fallback;
    if (!PyArg_ParseTuple(args, "y*nO!O!O!OOO", &view, &limit, &PyDict_Type, &out, &PyDict_Type,
                          &hidden, &PyDict_Type, &head_cache, &make_entry, &head_fallback,
                          &entry_fallback))
        return NULL;
    const unsigned char *b = (const unsigned char *)view.buf;
    if (limit < 0 || limit > view.len) { PyBuffer_Release(&view); return corrupt("bad block limit"); }
    Py_ssize_t key_len = 0, key_cap = 256, pos = 0;
    char *key = (char *)PyMem_Malloc(key_cap);
    PyObject *empty_slices = PyTuple_New(0);
    PyObject *result = NULL;
    if (!empty_slices || !key) goto done;
    /* a tuple subclass without extra fields (a NamedTuple) is allocated directly */
    PyTypeObject *fast_type = NULL;
    if (PyType_Check(make_entry) && PyType_IsSubtype((PyTypeObject *)make_entry, &PyTuple_Type) &&
        ((PyTypeObject *)make_entry)->tp_basicsize == PyTuple_Type.tp_basicsize)
        fast_type = (PyTypeObject *)make_entry;

    while (pos < limit) {
        uint64_t shared, non_shared, vlen;
        if (read_varint(b, limit, &pos, &shared) || read_varint(b, limit, &pos, &non_shared) ||
            read_varint(b, limit, &pos, &vlen)) { corrupt("truncated block entry"); goto done; }
        if (shared > (uint64_t)key_len || non_shared > (uint64_t)(limit - pos) ||
            vlen > (uint64_t)(limit - pos - (Py_ssize_t)non_shared)) {
            corrupt("block entry runs past the block end"); goto done;
        }
        Py_ssize_t new_len = (Py_ssize_t)(shared + non_shared);
        if (new_len > key_cap) {
            key_cap = new_len * 2 + 64;
            char *k = (char *)PyMem_Realloc(key, key_cap);
            if (!k) { PyErr_NoMemory(); goto done; }
            key = k;
        }
        memcpy(key + shared, b + pos, non_shared);
        key_len = new_len;
        Py_ssize_t kend = pos + (Py_ssize_t)non_shared;
        Py_ssize_t vend = kend + (Py_ssize_t)vlen;
        pos = vend;

        if (key_len == 0 || key[0] == 0) {
            PyObject *v = PyBytes_FromStringAndSize((const char *)b + kend, (Py_ssize_t)vlen);
            PyObject *k = key_len ? PyBytes_FromStringAndSize(key, key_len) : PyUnicode_FromString("");
            int rc = (v && k) ? PyDict_SetItem(key_len ? hidden : out, k, v) : -1;
            Py_XDECREF(v); Py_XDECREF(k);
            if (rc) goto done;
            continue;
        }
        PyObject *name = PyUnicode_DecodeUTF8(key, key_len, "surrogateescape");
        if (!name) goto done;
        PyObject *entry = NULL;
        /* fast path: 08 <dtype> 12 <len> <shape> then fields 3-6 only */
        if (vlen > 4 && b[kend] == 0x08 && b[kend + 1] < 0x80 && b[kend + 2] == 0x12 &&
            b[kend + 3] < 0x80 && kend + 4 + b[kend + 3] <= vend) {
            Py_ssize_t p = kend + 4 + b[kend + 3];
            uint64_t shard = 0, offset = 0, size = 0, crc = 0;
            int ok = 1;
            while (p < vend) {
                unsigned char tag = b[p++];
                if (tag == 0x35) {
                    if (p + 4 > vend) { ok = 0; break; }
                    crc = (uint64_t)b[p] | ((uint64_t)b[p + 1] << 8) | ((uint64_t)b[p + 2] << 16) |
                          ((uint64_t)b[p + 3] << 24);
                    p += 4;
                } else if (tag == 0x18 || tag == 0x20 || tag == 0x28) {
                    uint64_t v;
                    if (read_varint(b, vend, &p, &v)) { ok = 0; break; }
                    if (tag == 0x18) shard = v; else if (tag == 0x20) offset = v; else size = v;
                } else { ok = 0; break; }
            }
            if (ok && p == vend) {
                PyObject *head = PyBytes_FromStringAndSize((const char *)b + kend, 4 + b[kend + 3]);
                if (!head) { Py_DECREF(name); goto done; }
                PyObject *hit = PyDict_GetItemWithError(head_cache, head); /* borrowed */
                if (hit) Py_INCREF(hit);
                else if (!PyErr_Occurred()) hit = PyObject_CallFunctionObjArgs(head_fallback, head, name, NULL);
                Py_DECREF(head);
                if (!hit) { Py_DECREF(name); goto done; }
                if (!PyTuple_Check(hit) || PyTuple_GET_SIZE(hit) != 2) {
                    Py_DECREF(hit); Py_DECREF(name); corrupt("bad head cache entry"); goto done;
                }
                PyObject *vals[8];
                vals[0] = name;
                vals[1] = PyTuple_GET_ITEM(hit, 0);
                vals[2] = PyTuple_GET_ITEM(hit, 1);
                vals[3] = PyLong_FromUnsignedLongLong(shard);
                vals[4] = PyLong_FromUnsignedLongLong(offset);
                vals[5] = PyLong_FromUnsignedLongLong(size);
                vals[6] = PyLong_FromUnsignedLongLong(crc);
                vals[7] = empty_slices;
                if (vals[3] && vals[4] && vals[5] && vals[6]) {
                    if (fast_type) {
                        /* what CPython's tuple_subtype_new does, without going through the
                           namedtuple's Python-level __new__ */
                        entry = fast_type->tp_alloc(fast_type, 8);
                        if (entry) {
                            for (int i = 0; i < 8; i++) {
                                if (i < 3 || i == 7) Py_INCREF(vals[i]);
                                PyTuple_SET_ITEM(entry, i, vals[i]);
                            }
                            vals[3] = vals[4] = vals[5] = vals[6] = NULL; /* now owned by entry */
                        }
                    } else {
                        entry = PyObject_Vectorcall(make_entry, vals, 8, NULL);
                    }
                }
                for (int i = 3; i < 7; i++) Py_XDECREF(vals[i]);
                Py_DECREF(hit);
                if (!entry) { Py_DECREF(name); goto done; }
            }
        }
        if (!entry) {
            PyObject *value = PyBytes_FromStringAndSize((const char *)b + kend, (Py_ssize_t)vlen);
            if (!value) { Py_DECREF(name); goto done; }
            entry = PyObject_CallFunctionObjArgs(entry_fallback, name, value, NULL);
            Py_DECREF(value);
            if (!entry) { Py_DECREF(name); goto done; }
        }
        int rc = PyDict_SetItem(out, name, entry);
        Py_DECREF(name);
        Py_DECREF(entry);
        if (rc) goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    Py_XDECREF(empty_slices);
    PyMem_Free(key);
    PyBuffer_Release(&view);
    return result;
}

/* ---- CRC32C over many pieces of one buffer ------------------------------------------------ */

static uint32_t crc_table[8][256];
static int crc_table_ready = 0;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
    crc_table_ready = 1;
}

static uint32_t crc_sw(const unsigned char *p, Py_ssize_t n) {
    uint32_t c = 0xFFFFFFFFu;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= c;
        c = crc_table[7][w & 0xFF] ^ crc_table[6][(w >> 8) & 0xFF] ^ crc_table[5][(w >> 16) & 0xFF] ^
            crc_table[4][(w >> 24) & 0xFF] ^ crc_table[3][(w >> 32) & 0xFF] ^
            crc_table[2][(w >> 40) & 0xFF] ^ crc_table[1][(w >> 48) & 0xFF] ^ crc_table[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xFF];
    return c ^ 0xFFFFFFFFu;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
__attribute__((target("sse4.2"))) static uint32_t crc_hw(const unsigned char *p, Py_ssize_t n) {
    uint64_t c = 0xFFFFFFFFu;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = _mm_crc32_u8(c32, *p++);
    return c32 ^ 0xFFFFFFFFu;
}
static int have_hw(void) { return __builtin_cpu_supports("sse4.2"); }
#else
static uint32_t crc_hw(const unsigned char *p, Py_ssize_t n) { return crc_sw(p, n); }
static int have_hw(void) { return 0; }
#endif

static uint32_t unmask(uint32_t m) {
    uint32_t rot = m - 0xA282EAD8u;
    return (rot >> 17) | (rot << 15);
}

/* first_crc_mismatch(buf, offsets, sizes, masked) -> index of the first piece whose CRC32C does
   not match its masked stored value, or -1. offsets/sizes: int64 buffers, masked: uint32. */
static PyObject *first_crc_mismatch(PyObject *self, PyObject *args) {
    Py_buffer buf, offs, sizes, masked;
    if (!PyArg_ParseTuple(args, "y*y*y*y*", &buf, &offs, &sizes, &masked)) return NULL;
    Py_ssize_t n = offs.len / 8, bad = -1;
    if (sizes.len / 8 != n || masked.len / 4 != n) {
        PyErr_SetString(PyExc_ValueError, "offsets, sizes and crcs differ in length");
    } else {
        const int64_t *o = (const int64_t *)offs.buf, *s = (const int64_t *)sizes.buf;
        const uint32_t *m = (const uint32_t *)masked.buf;
        const unsigned char *b = (const unsigned char *)buf.buf;
        int hw = have_hw();
        if (!crc_table_ready) crc_init();
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            if (o[i] < 0 || s[i] < 0 || o[i] + s[i] > buf.len) { bad = i; break; }
            uint32_t c = hw ? crc_hw(b + o[i], s[i]) : crc_sw(b + o[i], s[i]);
            if (c != unmask(m[i])) { bad = i; break; }
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&buf); PyBuffer_Release(&offs); PyBuffer_Release(&sizes); PyBuffer_Release(&masked);
    if (PyErr_Occurred()) return NULL;
    return PyLong_FromSsize_t(bad);
}

static PyMethodDef methods[] = {
    {"first_crc_mismatch", first_crc_mismatch, METH_VARARGS,
     "Index of the first piece of a buffer whose CRC32C differs from its masked stored value, or -1."},
    {"decode_block_entries", decode_block_entries, METH_VARARGS,
     "Decode every entry of one index block into dicts (see the module comment)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_speedups",
                                    "C accelerator for index parsing.", -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
