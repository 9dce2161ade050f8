/* distrestore._native._checksum: CRC32C (Castagnoli), the package's one C implementation.
 * Python facade: distrestore.format.crc (same results from the crc32c package and Python where
 * this module is not built).
 *
 * crc32c(data, crc=0) -> int                       CRC32C of any buffer, continuing from crc
 * combine(crc1, crc2, len2) -> int                 CRC32C of a + b from those of a and b and len(b)
 * copy_crc(src, buffers, crc=0) -> list[int]
 *     fill the writable buffers, in order, from consecutive bytes of src (exactly as many as they
 *     hold) and return each one's CRC32C, taken in the same pass as the copy, without the GIL:
 *     a response that arrived as one bytes object lands in its destinations in one read of it.
 *     The first buffer's CRC32C continues from crc (a buffer filled from several chunks of a
 *     streamed response).
 * first_mismatch(buf, offsets, sizes, masked) -> int
 *     index of the first piece buf[offsets[i]:offsets[i] + sizes[i]] whose CRC32C is not
 *     unmask(masked[i]) (or which lies outside buf), or -1; offsets/sizes: int64, masked: uint32.
 *     The check of thousands of packed small tensors in one call, without the GIL.
 * KERNEL: the kernel this CPU runs; use_kernel(name) picks another one (tests compare them).
 * _C_API: a capsule with the copy-and-checksum kernel for the mapped read (checksum_api.h).
 *
 * Kernels (bit-reflected CRC-32C, polynomial P = 0x82F63B78 reflected), picked at import:
 *  - "avx2-vpclmulqdq": 4 ymm accumulators (8 lanes of 128 bits) folded 128 bytes at a time;
 *  - "sse4.2-pclmul": 4 xmm accumulators folded 64 bytes at a time;
 * both after Intel's "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ"; both end
 * with the SSE4.2 crc32 instruction. first_mismatch runs three pieces at once through the crc32
 * instruction (see crc_hw3). A CPU without SSE4.2/PCLMULQDQ, or a build for another
 * architecture, has no module: the facade falls back to the crc32c package and Python.
 * The folding constants are computed at import (init_constants), from their definition.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "checksum_api.h"

#if !defined(__x86_64__) || !(defined(__GNUC__) || defined(__clang__))
#error "x86-64 with GCC or clang only (the build is optional; distrestore falls back to Python)"
#endif
#include <immintrin.h>

#define POLY 0x82F63B78u

/* ---- GF(2)[x] modulo P, bit-reflected: bit 31 is the coefficient of x^0, bit 0 of x^31 ----- */

static uint32_t multmodp(uint32_t a, uint32_t b) {
    uint32_t m = 1u << 31, p = 0;
    for (;;) {
        if (a & m) {
            p ^= b;
            if ((a & (m - 1)) == 0) break;
        }
        m >>= 1;
        b = b & 1 ? (b >> 1) ^ POLY : b >> 1;
    }
    return p;
}

static uint32_t x2n_table[67]; /* x^(2^k) mod P: enough for x^(8 * len) with 64-bit lengths */

static uint32_t x2nmodp(uint64_t n, unsigned k) { /* x^(n * 2^k) mod P */
    uint32_t p = 1u << 31;
    while (n) {
        if (n & 1) p = multmodp(x2n_table[k], p);
        n >>= 1;
        k++;
    }
    return p;
}

/* Folding. Data bytes map to polynomial coefficients highest degree first, each byte's bit 0
 * first, so 16 bytes loaded little-endian form a 128-bit A = H*x^64 + L, H in the low qword.
 * Moving A forward by D bits (onto the chunk D bits later) replaces it by A*x^D mod P =
 * H*(x^(64+D) mod P) + L*(x^D mod P) (degree < 128, so no reduction). PCLMULQDQ of reflected
 * operands yields the product times x^-1 in reflected 128-bit form, and a 32-bit reflected
 * constant c in the low dword of a qword stands for c*x^32 there; hence the constants
 *   K1[m] = x^(D+31) mod P for the low qword H, K2[m] = x^(D-33) mod P for the high qword L,
 * for D = 128*m bits. A 128-bit remainder A is turned into the CRC register A*x^32 mod P by two
 * crc32 instructions from zero (the instruction computes (crc*x^64 + data*x^32) mod P). */
#define MAX_LANES 8
static uint64_t K1[MAX_LANES + 1], K2[MAX_LANES + 1];

static void init_constants(void) {
    uint32_t p = 1u << 30; /* x^1 */
    for (int k = 0; k < 67; k++) {
        x2n_table[k] = p;
        p = multmodp(p, p);
    }
    for (int m = 1; m <= MAX_LANES; m++) {
        K1[m] = x2nmodp(128 * (uint64_t)m + 31, 0);
        K2[m] = x2nmodp(128 * (uint64_t)m - 33, 0);
    }
}

/* ---- kernels: crc register in and out (no pre/post inversion); copy to dst when not NULL ----- */

#define SSE_T __attribute__((target("sse4.2,pclmul")))
#define AVX_T __attribute__((target("sse4.2,pclmul,avx2,vpclmulqdq")))

SSE_T static uint32_t crc_bytes(uint32_t s, const uint8_t *p, size_t n) {
    uint64_t c = s;
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
    }
    while (n--) c = _mm_crc32_u8((uint32_t)c, *p++);
    return (uint32_t)c;
}

SSE_T static inline __m128i fold16(__m128i a, int m) {
    __m128i k = _mm_set_epi64x((long long)K2[m], (long long)K1[m]);
    return _mm_xor_si128(_mm_clmulepi64_si128(a, k, 0x00), _mm_clmulepi64_si128(a, k, 0x11));
}

/* the CRC register after the 128 pending bits in x and then p[0..n) */
SSE_T static uint32_t finish128(__m128i x, const uint8_t *p, size_t n) {
    for (; n >= 16; p += 16, n -= 16) x = _mm_xor_si128(fold16(x, 1), _mm_loadu_si128((const __m128i *)p));
    uint64_t c = _mm_crc32_u64(0, (uint64_t)_mm_cvtsi128_si64(x));
    c = _mm_crc32_u64(c, (uint64_t)_mm_extract_epi64(x, 1));
    return crc_bytes((uint32_t)c, p, n);
}

SSE_T static uint32_t crc_sse(uint32_t s, const uint8_t *p, uint8_t *dst, size_t n) {
    if (n < 128) {
        if (dst) memcpy(dst, p, n);
        return crc_bytes(s, p, n);
    }
    __m128i x[4];
    for (int i = 0; i < 4; i++) {
        x[i] = _mm_loadu_si128((const __m128i *)p + i);
        if (dst) _mm_storeu_si128((__m128i *)dst + i, x[i]);
    }
    x[0] = _mm_xor_si128(x[0], _mm_cvtsi32_si128((int)s));
    p += 64, n -= 64;
    if (dst) dst += 64;
    for (; n >= 64; p += 64, n -= 64) {
        for (int i = 0; i < 4; i++) {
            __m128i v = _mm_loadu_si128((const __m128i *)p + i);
            if (dst) _mm_storeu_si128((__m128i *)dst + i, v);
            x[i] = _mm_xor_si128(fold16(x[i], 4), v);
        }
        if (dst) dst += 64;
    }
    if (dst) memcpy(dst, p, n);
    __m128i a = _mm_xor_si128(_mm_xor_si128(fold16(x[0], 3), fold16(x[1], 2)), _mm_xor_si128(fold16(x[2], 1), x[3]));
    return finish128(a, p, n);
}

AVX_T static inline __m256i fold32(__m256i a, __m256i k) {
    return _mm256_xor_si256(_mm256_clmulepi64_epi128(a, k, 0x00), _mm256_clmulepi64_epi128(a, k, 0x11));
}

/* Four ymm accumulators cover 128 bytes; each of their eight 128-bit lanes folds by 1024 bits
 * per step. Fewer accumulators leave VPCLMULQDQ latency exposed; more measured no faster. */
AVX_T static uint32_t crc_avx2(uint32_t s, const uint8_t *p, uint8_t *dst, size_t n) {
    if (n < 256) return crc_sse(s, p, dst, n);
    __m256i y[4];
    for (int i = 0; i < 4; i++) {
        y[i] = _mm256_loadu_si256((const __m256i *)p + i);
        if (dst) _mm256_storeu_si256((__m256i *)dst + i, y[i]);
    }
    y[0] = _mm256_xor_si256(y[0], _mm256_zextsi128_si256(_mm_cvtsi32_si128((int)s)));
    p += 128, n -= 128;
    if (dst) dst += 128;
    const __m256i k = _mm256_set_epi64x((long long)K2[8], (long long)K1[8], (long long)K2[8], (long long)K1[8]);
    for (; n >= 128; p += 128, n -= 128) {
        for (int i = 0; i < 4; i++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)p + i);
            if (dst) _mm256_storeu_si256((__m256i *)dst + i, v);
            y[i] = _mm256_xor_si256(fold32(y[i], k), v);
        }
        if (dst) dst += 128;
    }
    if (dst) memcpy(dst, p, n);
    /* lanes in data order: low then high half of y[0], ..., y[3]; fold each onto the last */
    __m128i x = _mm256_extracti128_si256(y[3], 1);
    for (int i = 0; i < 4; i++) {
        x = _mm_xor_si128(x, fold16(_mm256_castsi256_si128(y[i]), 7 - 2 * i));
        if (i < 3) x = _mm_xor_si128(x, fold16(_mm256_extracti128_si256(y[i], 1), 6 - 2 * i));
    }
    return finish128(x, p, n);
}

typedef uint32_t (*kernel_fn)(uint32_t, const uint8_t *, uint8_t *, size_t);
static const struct {
    const char *name;
    kernel_fn fn;
} kernels[] = {
    {"avx2-vpclmulqdq", crc_avx2},
    {"sse4.2-pclmul", crc_sse},
};
static kernel_fn kernel;

/* what the capsule hands out: the kernel of the moment, so use_kernel() switches every caller */
static uint32_t copy_crc(uint32_t reg, const uint8_t *src, uint8_t *dst, size_t n) { return kernel(reg, src, dst, n); }

static const distrestore_checksum_api c_api = {copy_crc};

/* ---- many small pieces --------------------------------------------------------------------- */

/* Three pieces at once. The crc32 instruction has a latency of about three cycles but can start
   one per cycle, so one piece at a time leaves two thirds of it idle: interleaving three
   independent pieces (small tensors are usually of equal size) triples the throughput without
   the shift-and-combine step that splitting one buffer would need. */
SSE_T static void crc_hw3(const uint8_t *const p[3], const size_t n[3], uint32_t out[3]) {
    uint64_t c0 = 0xFFFFFFFFu, c1 = 0xFFFFFFFFu, c2 = 0xFFFFFFFFu;
    size_t common = n[0] < n[1] ? n[0] : n[1];
    if (n[2] < common) common = n[2];
    common &= ~(size_t)7;
    for (size_t i = 0; i < common; i += 8) {
        uint64_t w0, w1, w2;
        memcpy(&w0, p[0] + i, 8);
        memcpy(&w1, p[1] + i, 8);
        memcpy(&w2, p[2] + i, 8);
        c0 = _mm_crc32_u64(c0, w0);
        c1 = _mm_crc32_u64(c1, w1);
        c2 = _mm_crc32_u64(c2, w2);
    }
    out[0] = ~crc_bytes((uint32_t)c0, p[0] + common, n[0] - common);
    out[1] = ~crc_bytes((uint32_t)c1, p[1] + common, n[1] - common);
    out[2] = ~crc_bytes((uint32_t)c2, p[2] + common, n[2] - common);
}

static uint32_t unmask(uint32_t m) {
    uint32_t rot = m - 0xA282EAD8u;
    return (rot >> 17) | (rot << 15);
}

/* Pieces at least this long go through the folding kernel one by one: from about 512 bytes,
   folding beats three interleaved crc32 streams (benchmarks/native_checksum.py; docs/native.md) */
#define FOLD_MIN 512
/* From about this size the pieces of the next three are prefetched while three are summed: the
   hardware prefetcher alone left 256-byte pieces out of cache a third slower in one build than in
   another (the same machine code, placed elsewhere); prefetching makes it steady. */
#define PREFETCH_MIN 192

static PyObject *py_first_mismatch(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer buf, offs, sizes, masked;
    if (!PyArg_ParseTuple(args, "y*y*y*y*:first_mismatch", &buf, &offs, &sizes, &masked)) return NULL;
    Py_ssize_t n = offs.len / 8, bad = -1;
    if (offs.len % 8 || sizes.len != offs.len || masked.len != 4 * n) {
        PyErr_SetString(PyExc_ValueError, "offsets (int64), sizes (int64) and crcs (uint32) differ in length");
    } else {
        const int64_t *o = (const int64_t *)offs.buf, *s = (const int64_t *)sizes.buf;
        const uint32_t *m = (const uint32_t *)masked.buf;
        const uint8_t *b = (const uint8_t *)buf.buf;
        const int64_t len = buf.len;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n && bad < 0;) {
            if (i + 3 <= n) {
                const uint8_t *p[3];
                size_t l[3];
                uint32_t c[3];
                int ok = 1;
                for (int k = 0; k < 3; k++) {
                    int64_t ok_, sk = s[i + k];
                    ok_ = o[i + k];
                    /* in bounds (without overflow), and short enough for interleaving to pay */
                    if (ok_ < 0 || sk < 0 || sk >= FOLD_MIN || ok_ > len - sk) {
                        ok = 0;
                        break;
                    }
                    p[k] = b + ok_;
                    l[k] = (size_t)sk;
                }
                if (ok) {
                    if (__builtin_expect(l[0] >= PREFETCH_MIN, 0) && i + 6 <= n) /* the next three, while these are summed */
                        for (int k = 3; k < 6; k++)
                            if (o[i + k] >= 0 && s[i + k] >= 0 && o[i + k] <= len - s[i + k])
                                for (int64_t at = 0; at < s[i + k] && at < FOLD_MIN; at += 64)
                                    __builtin_prefetch(b + o[i + k] + at);
                    crc_hw3(p, l, c);
                    for (int k = 0; k < 3; k++)
                        if (c[k] != unmask(m[i + k])) {
                            bad = i + k;
                            break;
                        }
                    i += 3;
                    continue;
                }
            }
            if (o[i] < 0 || s[i] < 0 || o[i] > len - s[i] || ~kernel(0xFFFFFFFFu, b + o[i], NULL, (size_t)s[i]) != unmask(m[i]))
                bad = i;
            i++;
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&buf);
    PyBuffer_Release(&offs);
    PyBuffer_Release(&sizes);
    PyBuffer_Release(&masked);
    if (PyErr_Occurred()) return NULL;
    return PyLong_FromSsize_t(bad);
}

/* ---- one buffer, combine, kernel choice --------------------------------------------------- */

#define NOGIL_MIN (1 << 16) /* releasing the GIL costs more than checksumming less than this */

static PyObject *py_crc32c(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer b;
    unsigned long crc = 0;
    if (!PyArg_ParseTuple(args, "y*|k:crc32c", &b, &crc)) return NULL;
    uint32_t s = ~(uint32_t)crc;
    if (b.len >= NOGIL_MIN) {
        Py_BEGIN_ALLOW_THREADS
        s = kernel(s, b.buf, NULL, (size_t)b.len);
        Py_END_ALLOW_THREADS
    } else {
        s = kernel(s, b.buf, NULL, (size_t)b.len);
    }
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(~s);
}

static PyObject *py_copy_crc(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer src;
    PyObject *seq_in;
    unsigned int first = 0;
    if (!PyArg_ParseTuple(args, "y*O|I:copy_crc", &src, &seq_in, &first)) return NULL;
    PyObject *seq = PySequence_Fast(seq_in, "buffers must be a sequence");
    Py_ssize_t n = seq ? PySequence_Fast_GET_SIZE(seq) : 0, got = 0, total = 0;
    Py_buffer *bufs = seq ? PyMem_Calloc(n ? n : 1, sizeof(Py_buffer)) : NULL;
    uint32_t *crcs = bufs ? PyMem_Malloc((n ? n : 1) * sizeof(uint32_t)) : NULL;
    PyObject *out = NULL;
    if (seq && !crcs) PyErr_NoMemory();
    for (; crcs && got < n; got++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, got), &bufs[got], PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) break;
        total += bufs[got].len;
    }
    if (crcs && got == n && total != src.len)
        PyErr_Format(PyExc_ValueError, "copy_crc: the buffers hold %zd bytes, the source has %zd", total, src.len);
    if (crcs && got == n && total == src.len) {
        const uint8_t *p = (const uint8_t *)src.buf;
        if (total >= NOGIL_MIN) {
            Py_BEGIN_ALLOW_THREADS
            for (Py_ssize_t i = 0; i < n; p += bufs[i].len, i++) crcs[i] = ~kernel(i ? 0xFFFFFFFFu : ~first, p, bufs[i].buf, (size_t)bufs[i].len);
            Py_END_ALLOW_THREADS
        } else {
            for (Py_ssize_t i = 0; i < n; p += bufs[i].len, i++) crcs[i] = ~kernel(i ? 0xFFFFFFFFu : ~first, p, bufs[i].buf, (size_t)bufs[i].len);
        }
        out = PyList_New(n);
        for (Py_ssize_t i = 0; out && i < n; i++) {
            PyObject *v = PyLong_FromUnsignedLong(crcs[i]);
            if (!v) Py_CLEAR(out);
            else PyList_SET_ITEM(out, i, v);
        }
    }
    for (Py_ssize_t i = 0; i < got; i++) PyBuffer_Release(&bufs[i]);
    PyMem_Free(crcs);
    PyMem_Free(bufs);
    Py_XDECREF(seq);
    PyBuffer_Release(&src);
    return out;
}

/* crc(a + b) = crc(a) * x^(8 len(b)) + crc(b): the pre/post inversions cancel out (as in zlib) */
static PyObject *py_combine(PyObject *Py_UNUSED(self), PyObject *args) {
    unsigned long c1, c2;
    unsigned long long len2;
    if (!PyArg_ParseTuple(args, "kkK:combine", &c1, &c2, &len2)) return NULL;
    return PyLong_FromUnsignedLong(multmodp(x2nmodp(len2, 3), (uint32_t)c1) ^ (uint32_t)c2);
}

static int cpu_has(const char *name) {
    if (!strcmp(name, "avx2-vpclmulqdq"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("vpclmulqdq");
    return 1; /* sse4.2-pclmul: checked at import */
}

static PyObject *py_use_kernel(PyObject *module, PyObject *arg) {
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    for (size_t i = 0; i < sizeof kernels / sizeof kernels[0]; i++) {
        if (!strcmp(name, kernels[i].name) && cpu_has(name)) {
            kernel = kernels[i].fn;
            return PyObject_SetAttrString(module, "KERNEL", arg) < 0 ? NULL : Py_NewRef(Py_None);
        }
    }
    return PyErr_Format(PyExc_ValueError, "no CRC kernel %R on this CPU", arg);
}

static PyMethodDef methods[] = {
    {"crc32c", py_crc32c, METH_VARARGS, "crc32c(data, crc=0) -> CRC32C of data, continuing from crc"},
    {"combine", py_combine, METH_VARARGS, "combine(crc1, crc2, len2) -> CRC32C of a + b"},
    {"copy_crc", py_copy_crc, METH_VARARGS, "copy_crc(src, buffers, crc=0) -> CRC32C of each buffer, filled from src in order (the first continuing from crc)"},
    {"first_mismatch", py_first_mismatch, METH_VARARGS,
     "first_mismatch(buf, offsets, sizes, masked) -> index of the first piece whose CRC32C differs, or -1"},
    {"use_kernel", py_use_kernel, METH_O, "use_kernel(name): checksum with that kernel from now on"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_checksum", "CRC32C kernels (see checksum.c).", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__checksum(void) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("sse4.2") || !__builtin_cpu_supports("pclmul")) {
        PyErr_SetString(PyExc_ImportError, "this CPU lacks SSE4.2 or PCLMULQDQ");
        return NULL;
    }
    init_constants();
    int best = cpu_has("avx2-vpclmulqdq") ? 0 : 1;
    kernel = kernels[best].fn;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    PyObject *capsule = PyCapsule_New((void *)&c_api, DISTRESTORE_CHECKSUM_CAPSULE, NULL);
    if (PyModule_AddStringConstant(m, "KERNEL", kernels[best].name) < 0 || PyModule_AddObject(m, "_C_API", capsule) < 0) {
        Py_XDECREF(capsule);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
