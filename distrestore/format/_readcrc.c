/* Optional C kernel for local reads: copy a file range into caller buffers and CRC32C them in
 * the same pass (distrestore.storage uses it; distrestore.format.crc uses its CRC and combine).
 *
 * read(fd, offset, buffers) -> [crc32c of each buffer]
 *   fills the writable buffers, consecutive in the file from `offset`, and returns the (unmasked)
 *   CRC32C of each, without the GIL. Ranges of MAP_MIN bytes or more are mapped, faulted in with
 *   MADV_POPULATE_READ and copied by a loop that folds the CRC of every 32 bytes it moves: on a
 *   warm page cache this took 0.2-0.25 CPU-s per GB where preadv alone took 0.5 (the kernel's
 *   per-page copy path is the expensive part, not the memory traffic), and the checksum rides
 *   on loads the copy needs anyway. Smaller ranges, files that cannot be mapped, kernels older
 *   than 5.14 (no MADV_POPULATE_READ) and ranges past the end of the file go through preadv,
 *   with the semantics of Storage._preadv: partial reads continue, end of file raises
 *   EOFError("end of file at byte N"), errors raise OSError.
 *   The mapping is populated first, so a missing page or an I/O error shows up as an error
 *   (and the preadv path then reports it). A file truncated by someone else between populating
 *   and copying makes the copy touch pages that no longer exist: SIGBUS. See "SIGBUS" below.
 * crc32c(data, crc=0) -> int    CRC32C of any buffer, continuing from crc (like crc32c.crc32c)
 * combine(crc1, crc2, len2) -> int    CRC32C of a + b from those of a and b and len(b)
 * KERNEL: the CRC kernel this CPU runs; use_kernel(name) picks another one (tests compare them).
 *
 * CRC kernels (bit-reflected CRC-32C, polynomial P = 0x82F63B78 reflected), picked at import:
 *  - "avx2-vpclmulqdq": 4 ymm accumulators (8 lanes of 128 bits) folded 128 bytes at a time;
 *  - "sse4.2-pclmul": 4 xmm accumulators folded 64 bytes at a time;
 * both after Intel's "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ"; both end
 * with the SSE4.2 crc32 instruction. A CPU without SSE4.2/PCLMULQDQ, or a build for another
 * architecture, has no module: distrestore then reads with os.preadv and the crc32c package.
 * The folding constants are computed at import (init_constants), from their definition.
 *
 * SIGBUS. The first mapped read installs a SIGBUS handler with sigaction(SA_SIGINFO |
 * SA_ONSTACK), keeping the disposition it replaces; each mapped read first checks, under a
 * mutex (one sigaction call), that ours is still the disposition: where SIG_DFL has replaced it
 * (faulthandler.disable() puts back what it found) it installs it again; where someone else's
 * handler has replaced it, the read goes through preadv instead (see faulthandler below).
 * The copy out of a mapping runs guarded: the thread points a thread-local (initial-exec, so
 * the handler's read of it allocates nothing) at a guard on its stack (the mapping's bounds and
 * a sigjmp_buf), with SIGBUS unblocked in that thread (a blocked synchronous SIGBUS kills the
 * process whatever the handler). When the handler sees a fault of the guarded thread
 * (si_code > 0) at an address inside that mapping, it siglongjmps back; the copy then puts back
 * the thread's signal mask (the jump saves none, and the handler left SIGBUS blocked),
 * read_mapped unmaps and fstats, and the read fails with
 *   EOFError("file truncated while reading, at byte N (the file now has S bytes)")
 * N being the first byte the copy could not load; Storage reports it like any end of file: a
 * permanent StorageError naming file and range. Where the file still covers the range (a page
 * that could not be read back) it is OSError(EIO, "I/O error (SIGBUS) reading the mapped file
 * at byte N"), which Storage retries. The copy loop holds no lock and allocates nothing, so
 * jumping out of it skips no cleanup; the GIL stays released until read_mapped has returned.
 * Any other SIGBUS goes to the disposition ours replaced, as the kernel would have delivered it:
 * an SA_SIGINFO handler gets (sig, info, context), a plain one (sig), each with its sa_mask
 * added, SIGBUS unblocked for SA_NODEFER ones and SA_RESETHAND honoured; for SIG_DFL the
 * default is restored and the signal raised again, so the process dies of SIGBUS as before;
 * SIG_IGN ignores a SIGBUS sent by kill() and dies of a fault, as the kernel does (it forces an
 * ignored synchronous SIGBUS to SIG_DFL).
 * faulthandler: enabled before our install (pytest, -X faulthandler, PYTHONFAULTHANDLER), it is
 * the disposition we chain to: guarded faults never reach it, others get its traceback and then
 * kill the process. Enabled after our install, it sits in front of ours (its fault handling
 * would print "Fatal Python error: Bus error", put ours back and raise() again), so mapped
 * reads stop and everything goes through preadv (correct, about twice the CPU per byte) until
 * faulthandler.disable() puts ours back: enable faulthandler before the first read to keep them.
 * Should faulthandler get in front between the check and the copy, its re-raise (SI_TKILL from
 * our own process, in a guarded thread) still ends the read with the error above, after its
 * traceback. Handlers installed later that chain to ours with the original siginfo (as crash
 * reporters do) would work, but are treated like faulthandler: preadv.
 * _test_truncate_next(fd, size): test-only; the next mapped read ftruncates fd to size between
 * populating and copying (tests/test_readcrc.py makes the race deterministic with it).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#if !defined(__x86_64__) || !(defined(__GNUC__) || defined(__clang__))
#error "x86-64 with GCC or clang only (the build is optional; distrestore falls back to Python)"
#endif
#include <immintrin.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* Linux 5.14; older kernels answer EINVAL and we use preadv */
#endif

#define POLY 0x82F63B78u
#define MAP_MIN (1 << 20) /* below this a mapping's setup and teardown cost more than preadv */
#define MAX_IOV 1024      /* IOV_MAX */

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
static const struct { const char *name; kernel_fn fn; } kernels[] = {
    {"avx2-vpclmulqdq", crc_avx2},
    {"sse4.2-pclmul", crc_sse},
};
static kernel_fn kernel;

/* ---- reading ------------------------------------------------------------------------------ */

typedef struct {
    Py_buffer *bufs;
    Py_ssize_t n;
} buffers_t;

static void buffers_release(buffers_t *b) {
    for (Py_ssize_t i = 0; i < b->n; i++) PyBuffer_Release(&b->bufs[i]);
    PyMem_Free(b->bufs);
}

static int buffers_get(PyObject *seq_in, buffers_t *b) {
    b->n = 0;
    b->bufs = NULL;
    PyObject *seq = PySequence_Fast(seq_in, "buffers must be a sequence");
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    b->bufs = PyMem_Calloc(n ? n : 1, sizeof(Py_buffer));
    int rc = b->bufs ? 0 : (PyErr_NoMemory(), -1);
    for (Py_ssize_t i = 0; rc == 0 && i < n; i++) {
        rc = PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &b->bufs[i], PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS);
        if (rc == 0) b->n = i + 1;
    }
    Py_DECREF(seq);
    return rc;
}

/* ---- SIGBUS guard (see the header comment) ---- */

typedef struct {
    const uint8_t *lo, *hi; /* the mapping */
    const uint8_t *addr;    /* where the fault was, NULL when unknown (a re-raised signal) */
    sigjmp_buf env;
} guard_t;

/* initial-exec: reading it in the handler must not allocate (as a lazy dynamic TLS block can) */
static __thread guard_t *volatile cur_guard __attribute__((tls_model("initial-exec")));
static struct sigaction prev_bus; /* the disposition ours replaced */

static void on_sigbus(int sig, siginfo_t *si, void *ctx) {
    guard_t *g = cur_guard;
    if (g && si) {
        const uint8_t *a = si->si_addr;
        if (si->si_code > 0 && a >= g->lo && a < g->hi) { /* a fault of this copy's loads */
            g->addr = a;
            siglongjmp(g->env, 1);
        }
        if (si->si_code == SI_TKILL && si->si_pid == getpid()) { /* re-raised by a handler */
            g->addr = NULL;                                        /* installed after us */
            siglongjmp(g->env, 1);
        }
    }
    int saved = errno;
    struct sigaction prev = prev_bus;
    if (prev.sa_flags & SA_SIGINFO || (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN)) {
        if (prev.sa_flags & SA_RESETHAND) {
            struct sigaction dfl;
            memset(&dfl, 0, sizeof dfl);
            dfl.sa_handler = SIG_DFL;
            sigaction(sig, &dfl, NULL);
        }
        sigset_t mask, old;
        pthread_sigmask(SIG_BLOCK, NULL, &mask);
        for (int s = 1; s < NSIG; s++)
            if (sigismember(&prev.sa_mask, s) == 1) sigaddset(&mask, s);
        if (prev.sa_flags & SA_NODEFER) sigdelset(&mask, sig);
        else sigaddset(&mask, sig);
        pthread_sigmask(SIG_SETMASK, &mask, &old);
        errno = saved;
        if (prev.sa_flags & SA_SIGINFO) prev.sa_sigaction(sig, si, ctx);
        else prev.sa_handler(sig);
        saved = errno;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    } else if (prev.sa_handler == SIG_IGN && si && si->si_code <= 0) {
        /* ignored, as a sent SIGBUS would have been */
    } else { /* SIG_DFL, or SIG_IGN for a fault (which the kernel turns into SIG_DFL): die */
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        sigaction(sig, &dfl, NULL);
        raise(sig); /* pending while we run (SIGBUS is blocked here), delivered on return */
    }
    errno = saved;
}

static pthread_mutex_t guard_lock = PTHREAD_MUTEX_INITIALIZER;
static int installed;

/* 1 when our handler is SIGBUS's disposition now, installing it on the first call (over any
 * disposition) or where SIG_DFL has replaced it since (faulthandler.disable() puts back what it
 * found: SIG_DFL after pytest, say). A disposition someone else installed over ours is left
 * alone, 0: mapping a file without our handler in front would risk a SIGBUS, and stacking ours
 * on top again could chain to a handler later disabled (faulthandler's then returns, and the
 * fault repeats forever). */
static int guard_ready(void) {
    struct sigaction cur;
    int ok = 0;
    pthread_mutex_lock(&guard_lock);
    if (sigaction(SIGBUS, NULL, &cur) == 0) {
        if (cur.sa_flags & SA_SIGINFO && cur.sa_sigaction == on_sigbus) {
            ok = 1;
        } else if (!installed || (!(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == SIG_DFL)) {
            struct sigaction act;
            memset(&act, 0, sizeof act);
            act.sa_sigaction = on_sigbus;
            act.sa_flags = SA_SIGINFO | SA_ONSTACK;
            sigemptyset(&act.sa_mask);
            prev_bus = cur; /* before the install: the handler may run as soon as it is in */
            if (sigaction(SIGBUS, &act, &cur) == 0) {
                prev_bus = cur; /* the same unless someone changed it in between */
                installed = ok = 1;
            }
        }
    }
    pthread_mutex_unlock(&guard_lock);
    return ok;
}

static int test_trunc_fd = -1; /* _test_truncate_next */
static off_t test_trunc_size;

/* the copy, guarded: 0, or 1 after a SIGBUS in the mapping (g->addr says where, if known) */
static __attribute__((noinline)) int copy_guarded(guard_t *g, const uint8_t *p, buffers_t *b, uint32_t *crcs) {
    sigset_t bus, old;
    sigemptyset(&bus);
    sigaddset(&bus, SIGBUS);
    pthread_sigmask(SIG_UNBLOCK, &bus, &old);
    int rc = 0;
    if (sigsetjmp(g->env, 0) == 0) { /* no mask saved: we put back `old` ourselves below */
        cur_guard = g;
        for (Py_ssize_t i = 0; i < b->n; i++) {
            size_t n = (size_t)b->bufs[i].len;
            crcs[i] = ~kernel(0xFFFFFFFFu, p, b->bufs[i].buf, n);
            p += n;
        }
    } else {
        rc = 1; /* back from the handler: SIGBUS (and its sa_mask) still blocked, reset below */
    }
    cur_guard = NULL;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

/* Copy and checksum through a populated mapping; 0 when done, -1 when preadv must do it,
 * -2 after a SIGBUS: *fault = file offset of the fault (-1 unknown), *size = size now (-1). */
static int read_mapped(int fd, off_t offset, buffers_t *b, size_t total, uint32_t *crcs,
                       off_t *fault, off_t *size) {
    int tfd = -1; /* test-only hook: the truncation race, made deterministic */
    if (__atomic_load_n(&test_trunc_fd, __ATOMIC_RELAXED) >= 0) tfd = __atomic_exchange_n(&test_trunc_fd, -1, __ATOMIC_ACQ_REL);
    struct stat st;
    if (!guard_ready() || fstat(fd, &st) < 0 || offset + (off_t)total > st.st_size) return -1;
    off_t base = offset - offset % (off_t)sysconf(_SC_PAGESIZE);
    size_t len = total + (size_t)(offset - base);
    uint8_t *m = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, base);
    if (m == MAP_FAILED) return -1;
    if (madvise(m, len, MADV_POPULATE_READ) < 0) {
        munmap(m, len);
        return -1;
    }
    if (tfd >= 0 && ftruncate(tfd, test_trunc_size) < 0) { /* the test then sees no error */ }
    guard_t g;
    g.lo = m;
    g.hi = m + len;
    g.addr = NULL;
    int rc = copy_guarded(&g, m + (offset - base), b, crcs);
    munmap(m, len);
    if (rc == 0) return 0;
    *fault = g.addr ? base + (off_t)(g.addr - m) : -1;
    *size = fstat(fd, &st) == 0 ? st.st_size : -1;
    return -2;
}

/* preadv everything, then checksum; 0, or an errno value, or -1 at end of file (at *pos) */
static int read_pread(int fd, off_t *pos, buffers_t *b, uint32_t *crcs) {
    struct iovec iov[MAX_IOV];
    Py_ssize_t seg = 0;
    size_t done = 0; /* bytes of bufs[seg] already filled */
    while (seg < b->n) {
        int cnt = 0;
        size_t want = 0;
        for (Py_ssize_t s = seg; s < b->n && cnt < MAX_IOV; s++) {
            size_t skip = s == seg ? done : 0;
            iov[cnt].iov_base = (char *)b->bufs[s].buf + skip;
            iov[cnt].iov_len = (size_t)b->bufs[s].len - skip;
            want += iov[cnt++].iov_len;
        }
        if (want == 0 && seg + cnt == b->n) break; /* only empty buffers left */
        ssize_t got = want ? preadv(fd, iov, cnt, *pos) : 0;
        if (got < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (got == 0 && want) return -1;
        *pos += got;
        size_t left = (size_t)got;
        while (seg < b->n && left >= (size_t)b->bufs[seg].len - done) {
            left -= (size_t)b->bufs[seg].len - done;
            seg++;
            done = 0;
        }
        done += left;
    }
    for (Py_ssize_t i = 0; i < b->n; i++) crcs[i] = ~kernel(0xFFFFFFFFu, b->bufs[i].buf, NULL, (size_t)b->bufs[i].len);
    return 0;
}

static PyObject *py_read(PyObject *Py_UNUSED(self), PyObject *args) {
    int fd;
    long long offset;
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "iLO:read", &fd, &offset, &seq)) return NULL;
    buffers_t b;
    if (buffers_get(seq, &b) < 0) {
        buffers_release(&b);
        return NULL;
    }
    uint32_t *crcs = PyMem_Calloc(b.n ? b.n : 1, sizeof(uint32_t));
    if (!crcs) {
        buffers_release(&b);
        return PyErr_NoMemory();
    }
    size_t total = 0;
    for (Py_ssize_t i = 0; i < b.n; i++) total += (size_t)b.bufs[i].len;
    off_t pos = (off_t)offset, fault = -1, size = -1;
    int rc = 0, mapped = -1;
    Py_BEGIN_ALLOW_THREADS
    if (total >= MAP_MIN) mapped = read_mapped(fd, pos, &b, total, crcs, &fault, &size);
    if (mapped == -1) rc = read_pread(fd, &pos, &b, crcs);
    Py_END_ALLOW_THREADS
    PyObject *out = NULL;
    if (mapped == -2) {
        if (size >= 0 && size < pos + (off_t)total)
            PyErr_Format(PyExc_EOFError, "file truncated while reading, at byte %lld (the file now has %lld bytes)",
                         (long long)(fault >= 0 ? fault : size > pos ? size : pos), (long long)size);
        else { /* the file still covers the range: a page that could not be read back */
            PyObject *msg = fault >= 0 ? PyUnicode_FromFormat("I/O error (SIGBUS) reading the mapped file at byte %lld",
                                                              (long long)fault)
                                       : PyUnicode_FromString("I/O error (SIGBUS) reading the mapped file");
            PyObject *exc = msg ? PyObject_CallFunction(PyExc_OSError, "iO", EIO, msg) : NULL;
            if (exc) PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_XDECREF(exc);
            Py_XDECREF(msg);
        }
    } else if (rc > 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
    } else if (rc < 0) {
        PyErr_Format(PyExc_EOFError, "end of file at byte %lld", (long long)pos);
    } else if ((out = PyList_New(b.n))) {
        for (Py_ssize_t i = 0; i < b.n; i++) {
            PyObject *v = PyLong_FromUnsignedLong(crcs[i]);
            if (!v) {
                Py_CLEAR(out);
                break;
            }
            PyList_SET_ITEM(out, i, v);
        }
    }
    PyMem_Free(crcs);
    buffers_release(&b);
    return out;
}

/* ---- CRC of a buffer, combine, kernel choice ---------------------------------------------- */

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

/* test-only (tests/test_readcrc.py): the next mapped read truncates fd to size after populating
 * its mapping and before copying, as another process might */
static PyObject *py_test_truncate_next(PyObject *Py_UNUSED(self), PyObject *args) {
    int fd;
    long long size;
    if (!PyArg_ParseTuple(args, "iL:_test_truncate_next", &fd, &size)) return NULL;
    test_trunc_size = (off_t)size;
    __atomic_store_n(&test_trunc_fd, fd, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"read", py_read, METH_VARARGS, "read(fd, offset, buffers) -> CRC32C of each buffer, filled from the file"},
    {"crc32c", py_crc32c, METH_VARARGS, "crc32c(data, crc=0) -> CRC32C of data, continuing from crc"},
    {"combine", py_combine, METH_VARARGS, "combine(crc1, crc2, len2) -> CRC32C of a + b"},
    {"use_kernel", py_use_kernel, METH_O, "use_kernel(name): checksum with that kernel from now on"},
    {"_test_truncate_next", py_test_truncate_next, METH_VARARGS,
     "_test_truncate_next(fd, size): test-only; the next mapped read truncates fd between populating and copying"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_readcrc", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__readcrc(void) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("sse4.2") || !__builtin_cpu_supports("pclmul")) {
        PyErr_SetString(PyExc_ImportError, "this CPU lacks SSE4.2 or PCLMULQDQ");
        return NULL;
    }
    init_constants();
    int best = cpu_has("avx2-vpclmulqdq") ? 0 : 1;
    kernel = kernels[best].fn;
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddStringConstant(m, "KERNEL", kernels[best].name) < 0) Py_CLEAR(m);
    return m;
}
