/* distrestore._native._index_decode: an index's entry blocks into columns, in one C loop.
 * Python facade: distrestore.format.entry_table (decode_table; py_decode_columns is the pure-Python
 * twin, with the same verdict on every input: the same columns or the same error class).
 *
 * decode_columns(blocks, limits, head_ids, head_id, fallback)
 *   -> (names, header, hidden, shard, offset, size, crc, head, increasing)
 * walks the decoded index blocks: prefix-compressed keys, the header under key "" (its raw
 * value returned; the first one wins, as TF's Seek finds it), slice-entry keys (leading NUL)
 * into the dict `hidden` (first one wins), and one row per tensor entry. Rows go into growing C
 * arrays, returned as bytes (int64 shard/offset/size, uint32 masked crc, int32 head id), with the
 * names as a list of str: no Python object per entry but its name. `increasing` is False when
 * some key is not greater than the one before it (then the caller drops repeated names, keeping
 * the first). An entry of TF's usual layout (dtype, shape, then shard/offset/size/crc) is parsed
 * here, its leading dtype+shape bytes mapped to a head id through `head_ids` (bytes -> int;
 * `head_id(head, name)` on a miss); any other layout goes to `fallback(row, name, value)`, which
 * returns (head, shard, offset, size, crc). Opening a checkpoint with 10^5 tensors is this loop
 * and little else, which is why it is in C.
 *
 * Hostile input: a varint is at most 10 bytes and fits 64 bits (the 10th byte holds only bit
 * 63); a key shares at most the previous key's length; every entry stays inside its block; the
 * keys of a block together are at most KEY_EXPANSION times the block's size (prefix sharing
 * cannot turn a small block into gigabytes of names). Violations are ValueError (the facade
 * makes them CorruptCheckpointError).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* TF writes a full key every 16 entries (its restart interval), so its blocks' keys add up to
 * less than 16 x the block: 32 leaves room and still bounds what a block can expand to */
#define KEY_EXPANSION 32

/* a LEB128 varint of at most 10 bytes whose value fits 64 bits; -1 when truncated or longer */
static int read_varint(const unsigned char *p, Py_ssize_t end, Py_ssize_t *pos, uint64_t *out) {
    uint64_t result = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*pos >= end) return -1;
        unsigned char b = p[(*pos)++];
        if (shift == 63 && b > 1) return -1;
        result |= (uint64_t)(b & 0x7F) << shift;
        if (b < 0x80) {
            *out = result;
            return 0;
        }
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

static PyObject *decode_columns(PyObject *Py_UNUSED(self), PyObject *args) {
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
    Py_ssize_t prev_len = -1; /* length of the previous key (in `key`), -1 before the first */
    int increasing = 1;
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
        /* the block's key bytes may add up to this much */
        Py_ssize_t key_budget = view.len > PY_SSIZE_T_MAX / KEY_EXPANSION ? PY_SSIZE_T_MAX : view.len * KEY_EXPANSION;
        int failed = 0;
        if (limit == -1 && PyErr_Occurred()) failed = 1;
        else if (limit < 0 || limit > view.len) { corrupt("bad block limit"); failed = 1; }
        key_len = 0;  /* every block starts with a full key */
        while (!failed && pos < limit) {
            uint64_t shared, non_shared, vlen;
            if (read_varint(b, limit, &pos, &shared) || read_varint(b, limit, &pos, &non_shared) ||
                read_varint(b, limit, &pos, &vlen)) { corrupt("truncated block entry"); failed = 1; break; }
            if (shared > (uint64_t)key_len) {
                corrupt("a block entry shares more of the previous key than it has"); failed = 1; break;
            }
            if (non_shared > (uint64_t)(limit - pos) || vlen > (uint64_t)(limit - pos - (Py_ssize_t)non_shared)) {
                corrupt("block entry runs past the block end"); failed = 1; break;
            }
            Py_ssize_t new_len = (Py_ssize_t)(shared + non_shared);
            if (new_len > key_budget) {
                corrupt("the keys of a block add up to more than 32 times its size"); failed = 1; break;
            }
            key_budget -= new_len;
            if (prev_len >= 0) {  /* is the new key greater than the previous one? */
                Py_ssize_t rest = prev_len - (Py_ssize_t)shared, n = rest < (Py_ssize_t)non_shared ? rest : (Py_ssize_t)non_shared;
                int c = n > 0 ? memcmp(b + pos, key + shared, n) : 0;
                if (c < 0 || (c == 0 && (Py_ssize_t)non_shared <= rest)) increasing = 0;
            }
            if (new_len > key_cap) {
                Py_ssize_t cap = new_len * 2 + 64;
                if (cap < prev_len) cap = prev_len;
                char *k = (char *)PyMem_Realloc(key, cap);
                if (!k) { PyErr_NoMemory(); failed = 1; break; }
                key = k;
                key_cap = cap;
            }
            memcpy(key + shared, b + pos, non_shared);
            key_len = prev_len = new_len;
            Py_ssize_t kend = pos + (Py_ssize_t)non_shared, vend = kend + (Py_ssize_t)vlen;
            pos = vend;

            if (key_len == 0 || key[0] == 0) {  /* the header, or a hidden slice entry */
                PyObject *v = PyBytes_FromStringAndSize((const char *)b + kend, (Py_ssize_t)vlen);
                if (!v) { failed = 1; break; }
                if (key_len == 0) {
                    if (header) Py_DECREF(v);
                    else header = v;
                    continue;
                }
                PyObject *k = PyBytes_FromStringAndSize(key, key_len);
                PyObject *got = k ? PyDict_SetDefault(hidden, k, v) : NULL;  /* borrowed */
                Py_XDECREF(k); Py_DECREF(v);
                if (!got) { failed = 1; break; }
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
    result = Py_BuildValue("(OOONNNNNO)", names, header ? header : Py_None, hidden,
                           column_bytes(&shard), column_bytes(&offset), column_bytes(&size),
                           column_bytes(&crc), column_bytes(&head), increasing ? Py_True : Py_False);
done:
    Py_XDECREF(names); Py_XDECREF(hidden); Py_XDECREF(header);
    PyMem_Free(key);
    PyMem_Free(shard.data); PyMem_Free(offset.data); PyMem_Free(size.data);
    PyMem_Free(crc.data); PyMem_Free(head.data);
    return result;
}


static PyMethodDef methods[] = {
    {"decode_columns", decode_columns, METH_VARARGS,
     "Decode every entry of an index's blocks into columns (see the module comment)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_index_decode", "Index blocks into columns (see index_decode.c).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__index_decode(void) { return PyModule_Create(&module); }
