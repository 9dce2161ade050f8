/* Optional C accelerator for the index hot loop (distrestore.format.columns).
 *
 * decode_columns(blocks, limits, head_ids, head_id, fallback)
 *   -> (names, header, hidden, shard, offset, size, crc, head)
 * walks the decoded index blocks exactly like the pure-Python decoder in columns.py:
 * prefix-compressed keys, the header under key "" (its raw value returned), slice-entry keys
 * (leading NUL) into the dict `hidden`, and one row per tensor entry. Rows go into growing C
 * arrays, returned as bytes (int64 shard/offset/size, uint32 masked crc, int32 head id), with the
 * names as a list of str: no Python object per entry but its name. An entry of TF's usual layout
 * (dtype, shape, then shard/offset/size/crc) is parsed here, its leading dtype+shape bytes mapped
 * to a head id through `head_ids` (bytes -> int; `head_id(head, name)` on a miss); any other
 * layout goes to `fallback(row, name, value)`, which returns (head, shard, offset, size, crc).
 * Opening a checkpoint with 10^5 tensors is this loop and little else, which is why it is in C.
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

/* a growing array of fixed-size items */
typedef struct { char *data; Py_ssize_t len, cap, item; } column;

static int column_push(column *c, const void *value) {
    if (c->len == c->cap) {
        Py_ssize_t cap = c->cap ? c->cap * 2 : 4096;
        char *d = (char *)PyMem_Realloc(c->data, cap * c->item);
        if (!d) { PyErr_NoMemory(); return -1; }
        c->data = d;
        c->cap = cap;
    }
    memcpy(c->data + c->len * c->item, value, c->item);
    c->len++;
    return 0;
}

static PyObject *column_bytes(column *c) {
    return PyBytes_FromStringAndSize(c->data ? c->data : "", c->len * c->item);
}

/* one row's location fields, after the head */
typedef struct { int64_t shard, offset, size; uint32_t crc; int32_t head; } row_t;

/* Parse fields 3-6 of an entry of the usual layout; 0 if anything else is there. */
static int parse_location(const unsigned char *b, Py_ssize_t p, Py_ssize_t vend, row_t *r) {
    uint64_t shard = 0, offset = 0, size = 0;
    uint32_t crc = 0;
    while (p < vend) {
        unsigned char tag = b[p++];
        if (tag == 0x35) {
            if (p + 4 > vend) return 0;
            crc = (uint32_t)b[p] | ((uint32_t)b[p + 1] << 8) | ((uint32_t)b[p + 2] << 16) |
                  ((uint32_t)b[p + 3] << 24);
            p += 4;
        } else if (tag == 0x18 || tag == 0x20 || tag == 0x28) {
            uint64_t v;
            if (read_varint(b, vend, &p, &v)) return 0;
            if (tag == 0x18) shard = v; else if (tag == 0x20) offset = v; else size = v;
        } else {
            return 0;
        }
    }
    if (p != vend) return 0;
    /* past 2^63: the fallback decodes it and the index is refused as out of range */
    if (shard > (uint64_t)INT64_MAX || offset > (uint64_t)INT64_MAX || size > (uint64_t)INT64_MAX) return 0;
    r->shard = (int64_t)shard; r->offset = (int64_t)offset; r->size = (int64_t)size; r->crc = crc;
    return 1;
}

static int row_from_tuple(PyObject *t, row_t *r) {
    long long v[5];
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 5) {
        PyErr_SetString(PyExc_TypeError, "fallback must return (head, shard, offset, size, crc)");
        return -1;
    }
    for (int i = 0; i < 5; i++) {
        v[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(t, i));
        if (v[i] == -1 && PyErr_Occurred()) return -1;
    }
    r->head = (int32_t)v[0]; r->shard = v[1]; r->offset = v[2]; r->size = v[3];
    r->crc = (uint32_t)v[4];
    return 0;
}

static PyObject *decode_columns(PyObject *self, PyObject *args) {
    PyObject *blocks, *limits, *head_ids, *head_id, *fallback;
    if (!PyArg_ParseTuple(args, "O!O!O!OO", &PyList_Type, &blocks, &PyList_Type, &limits,
                          &PyDict_Type, &head_ids, &head_id, &fallback))
        return NULL;
    if (PyList_GET_SIZE(blocks) != PyList_GET_SIZE(limits))
        return corrupt("blocks and limits differ in length");
    column shard = {NULL, 0, 0, 8}, offset = {NULL, 0, 0, 8}, size = {NULL, 0, 0, 8},
           crc = {NULL, 0, 0, 4}, head = {NULL, 0, 0, 4};
    PyObject *names = PyList_New(0), *hidden = PyDict_New(), *header = NULL, *result = NULL;
    Py_ssize_t key_len = 0, key_cap = 256;
    char *key = (char *)PyMem_Malloc(key_cap);
    /* the previous entry's head: consecutive entries usually share dtype and shape */
    const unsigned char *last_head = NULL;
    Py_ssize_t last_head_len = -1;
    int32_t last_head_id = 0;
    if (!names || !hidden || !key) { PyErr_NoMemory(); goto done; }

    for (Py_ssize_t bi = 0; bi < PyList_GET_SIZE(blocks); bi++) {
        Py_buffer view;
        if (PyObject_GetBuffer(PyList_GET_ITEM(blocks, bi), &view, PyBUF_SIMPLE)) goto done;
        const unsigned char *b = (const unsigned char *)view.buf;
        Py_ssize_t limit = PyLong_AsSsize_t(PyList_GET_ITEM(limits, bi)), pos = 0;
        int failed = 0;
        if (limit == -1 && PyErr_Occurred()) failed = 1;
        else if (limit < 0 || limit > view.len) { corrupt("bad block limit"); failed = 1; }
        key_len = 0;  /* every block starts with a full key */
        while (!failed && pos < limit) {
            uint64_t shared, non_shared, vlen;
            if (read_varint(b, limit, &pos, &shared) || read_varint(b, limit, &pos, &non_shared) ||
                read_varint(b, limit, &pos, &vlen)) { corrupt("truncated block entry"); failed = 1; break; }
            if (shared > (uint64_t)key_len || non_shared > (uint64_t)(limit - pos) ||
                vlen > (uint64_t)(limit - pos - (Py_ssize_t)non_shared)) {
                corrupt("block entry runs past the block end"); failed = 1; break;
            }
            Py_ssize_t new_len = (Py_ssize_t)(shared + non_shared);
            if (new_len > key_cap) {
                key_cap = new_len * 2 + 64;
                char *k = (char *)PyMem_Realloc(key, key_cap);
                if (!k) { PyErr_NoMemory(); failed = 1; break; }
                key = k;
            }
            memcpy(key + shared, b + pos, non_shared);
            key_len = new_len;
            Py_ssize_t kend = pos + (Py_ssize_t)non_shared, vend = kend + (Py_ssize_t)vlen;
            pos = vend;

            if (key_len == 0 || key[0] == 0) {  /* the header, or a hidden slice entry */
                PyObject *v = PyBytes_FromStringAndSize((const char *)b + kend, (Py_ssize_t)vlen);
                if (!v) { failed = 1; break; }
                if (key_len == 0) { Py_XSETREF(header, v); continue; }
                PyObject *k = PyBytes_FromStringAndSize(key, key_len);
                int rc = k ? PyDict_SetItem(hidden, k, v) : -1;
                Py_XDECREF(k); Py_DECREF(v);
                if (rc) { failed = 1; break; }
                continue;
            }
            PyObject *name = PyUnicode_DecodeUTF8(key, key_len, "surrogateescape");
            if (!name) { failed = 1; break; }
            row_t r;
            int fast = 0;
            /* the usual layout: 08 <dtype> 12 <len> <shape> then fields 3-6 only */
            if (vlen > 4 && b[kend] == 0x08 && b[kend + 1] < 0x80 && b[kend + 2] == 0x12 &&
                b[kend + 3] < 0x80 && kend + 4 + b[kend + 3] <= vend &&
                parse_location(b, kend + 4 + b[kend + 3], vend, &r)) {
                Py_ssize_t hlen = 4 + b[kend + 3];
                fast = 1;
                if (hlen == last_head_len && memcmp(b + kend, last_head, hlen) == 0) {
                    r.head = last_head_id;
                } else {
                    PyObject *hb = PyBytes_FromStringAndSize((const char *)b + kend, hlen);
                    PyObject *hit = hb ? PyDict_GetItemWithError(head_ids, hb) : NULL; /* borrowed */
                    if (hit) Py_INCREF(hit);
                    else if (hb && !PyErr_Occurred()) hit = PyObject_CallFunctionObjArgs(head_id, hb, name, NULL);
                    Py_XDECREF(hb);
                    long long id = hit ? PyLong_AsLongLong(hit) : -1;
                    Py_XDECREF(hit);
                    if (id == -1 && PyErr_Occurred()) { Py_DECREF(name); failed = 1; break; }
                    r.head = last_head_id = (int32_t)id;
                    last_head = b + kend;
                    last_head_len = hlen;
                }
            }
            if (!fast) {
                PyObject *value = PyBytes_FromStringAndSize((const char *)b + kend, (Py_ssize_t)vlen);
                PyObject *row = PyLong_FromSsize_t(PyList_GET_SIZE(names));
                PyObject *t = (value && row) ? PyObject_CallFunctionObjArgs(fallback, row, name, value, NULL) : NULL;
                Py_XDECREF(value); Py_XDECREF(row);
                int rc = t ? row_from_tuple(t, &r) : -1;
                Py_XDECREF(t);
                if (rc) { Py_DECREF(name); failed = 1; break; }
            }
            int rc = PyList_Append(names, name);
            Py_DECREF(name);
            if (rc || column_push(&shard, &r.shard) || column_push(&offset, &r.offset) ||
                column_push(&size, &r.size) || column_push(&crc, &r.crc) || column_push(&head, &r.head)) {
                failed = 1; break;
            }
        }
        /* last_head points into this block: forget it before the buffer is released */
        last_head = NULL;
        last_head_len = -1;
        PyBuffer_Release(&view);
        if (failed) goto done;
    }
    result = Py_BuildValue("(OOONNNNN)", names, header ? header : Py_None, hidden,
                           column_bytes(&shard), column_bytes(&offset), column_bytes(&size),
                           column_bytes(&crc), column_bytes(&head));
done:
    Py_XDECREF(names); Py_XDECREF(hidden); Py_XDECREF(header);
    PyMem_Free(key);
    PyMem_Free(shard.data); PyMem_Free(offset.data); PyMem_Free(size.data);
    PyMem_Free(crc.data); PyMem_Free(head.data);
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
__attribute__((target("sse4.2"))) static uint64_t crc_hw_run(uint64_t c, const unsigned char *p, Py_ssize_t n) {
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
        p += 8;
        n -= 8;
    }
    while (n--) c = _mm_crc32_u8((uint32_t)c, *p++);
    return c;
}
__attribute__((target("sse4.2"))) static uint32_t crc_hw(const unsigned char *p, Py_ssize_t n) {
    return (uint32_t)crc_hw_run(0xFFFFFFFFu, p, n) ^ 0xFFFFFFFFu;
}
/* Three pieces at once. The crc32 instruction has a latency of about three cycles but can start
   one per cycle, so one piece at a time leaves two thirds of it idle: interleaving three
   independent pieces (small tensors are usually of equal size) triples the throughput without
   the shift-and-combine step that splitting one buffer would need. */
__attribute__((target("sse4.2"))) static void crc_hw3(const unsigned char *const p[3],
                                                      const Py_ssize_t n[3], uint32_t out[3]) {
    uint64_t c0 = 0xFFFFFFFFu, c1 = 0xFFFFFFFFu, c2 = 0xFFFFFFFFu;
    Py_ssize_t common = n[0] < n[1] ? n[0] : n[1];
    if (n[2] < common) common = n[2];
    common &= ~(Py_ssize_t)7;
    for (Py_ssize_t i = 0; i < common; i += 8) {
        uint64_t w0, w1, w2;
        memcpy(&w0, p[0] + i, 8);
        memcpy(&w1, p[1] + i, 8);
        memcpy(&w2, p[2] + i, 8);
        c0 = _mm_crc32_u64(c0, w0);
        c1 = _mm_crc32_u64(c1, w1);
        c2 = _mm_crc32_u64(c2, w2);
    }
    out[0] = (uint32_t)crc_hw_run(c0, p[0] + common, n[0] - common) ^ 0xFFFFFFFFu;
    out[1] = (uint32_t)crc_hw_run(c1, p[1] + common, n[1] - common) ^ 0xFFFFFFFFu;
    out[2] = (uint32_t)crc_hw_run(c2, p[2] + common, n[2] - common) ^ 0xFFFFFFFFu;
}
static int have_hw(void) { return __builtin_cpu_supports("sse4.2"); }
#else
static uint32_t crc_hw(const unsigned char *p, Py_ssize_t n) { return crc_sw(p, n); }
static void crc_hw3(const unsigned char *const p[3], const Py_ssize_t n[3], uint32_t out[3]) {
    for (int k = 0; k < 3; k++) out[k] = crc_sw(p[k], n[k]);
}
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
        for (Py_ssize_t i = 0; i < n && bad < 0;) {
            if (hw && i + 3 <= n) {
                const unsigned char *p[3];
                Py_ssize_t len[3];
                uint32_t c[3];
                int ok = 1;
                for (int k = 0; k < 3; k++) {
                    if (o[i + k] < 0 || s[i + k] < 0 || o[i + k] + s[i + k] > buf.len) { ok = 0; break; }
                    p[k] = b + o[i + k];
                    len[k] = s[i + k];
                }
                if (ok) {
                    crc_hw3(p, len, c);
                    for (int k = 0; k < 3; k++)
                        if (c[k] != unmask(m[i + k])) { bad = i + k; break; }
                    i += 3;
                    continue;
                }
            }
            if (o[i] < 0 || s[i] < 0 || o[i] + s[i] > buf.len) { bad = i; break; }
            uint32_t c = hw ? crc_hw(b + o[i], s[i]) : crc_sw(b + o[i], s[i]);
            if (c != unmask(m[i])) { bad = i; break; }
            i++;
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
    {"decode_columns", decode_columns, METH_VARARGS,
     "Decode every entry of an index's blocks into columns (see the module comment)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_speedups",
                                    "C accelerator for index parsing.", -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
