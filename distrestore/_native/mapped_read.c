/* distrestore._native._mapped_read: copy a local file range into caller buffers and CRC32C them
 * in the same pass. Python facade: distrestore._native.mapped_read (docs/native.md has the why).
 *
 * read(fd, offset, buffers) -> [crc32c of each buffer]
 *   fills the writable buffers, consecutive in the file from `offset`, and returns the (unmasked)
 *   CRC32C of each, without the GIL. Ranges of MAP_MIN bytes or more are mapped, faulted in with
 *   MADV_POPULATE_READ and copied by a loop that folds the CRC of every 32 bytes it moves (the
 *   kernel of distrestore._native._checksum, through its capsule): no more CPU than preadv
 *   without a checksum (docs/native.md has the figures), since the checksum rides on loads the
 *   copy needs anyway. Smaller ranges, files that cannot be mapped, kernels older than 5.14 (no
 *   MADV_POPULATE_READ) and ranges past the end of the file go through preadv: partial reads
 *   continue, end of file raises EOFError("end of file at byte N"), errors raise OSError.
 *   The mapping is populated first, so a missing page or an I/O error shows up as an error of
 *   madvise (and the preadv path then reports it). A file truncated by someone else between
 *   populating and copying makes the copy touch pages that no longer exist: SIGBUS.
 * _test_truncate_next(fd, size): test-only; the next mapped read ftruncates fd to size between
 *   populating and copying (tests make the race deterministic with it).
 *
 * SIGBUS. Populating does not protect the copy: truncation removes the pages past the new end
 * of file from the page cache and from every mapping of them (truncate_pagecache), so a load
 * from such a page faults with SIGBUS however recently it was populated. So the copy runs
 * guarded, and the guard exists only while a copy does:
 *  - guard_enter (under a mutex, counting the copies in progress): the first copy saves the
 *    process's SIGBUS disposition and installs ours (sigaction, SA_SIGINFO | SA_ONSTACK);
 *    guard_leave: the last one puts the saved disposition back. No handler of ours stays
 *    installed once no read is in progress. Two sigaction calls per mapped read of 1 MiB or
 *    more: ~1 us against ~100 us of copying.
 *  - During the copy the thread points a thread-local (initial-exec, so the handler's read of it
 *    allocates nothing) at a guard on its stack (the mapping's bounds and a sigjmp_buf), with
 *    SIGBUS unblocked in that thread (a blocked synchronous SIGBUS kills the process whatever
 *    the handler). When the handler sees a fault of the guarded thread (si_code > 0) at an
 *    address inside that mapping, it siglongjmps back; the copy then puts back the thread's
 *    signal mask (the jump saves none, and the handler left SIGBUS blocked), read_mapped unmaps
 *    and fstats, and the read fails with
 *      EOFError("file truncated while reading, at byte N (the file now has S bytes)")
 *    N being the first byte the copy could not load (Storage reports it like any end of file: a
 *    permanent StorageError naming file and range). Where the file still covers the range (a
 *    page that could not be read back) it is OSError(EIO, "I/O error (SIGBUS) reading the
 *    mapped file at byte N"), which Storage retries. The copy loop holds no lock and allocates
 *    nothing, so jumping out of it skips no cleanup; the GIL stays released throughout.
 *  - Any other SIGBUS that arrives while ours is installed (another thread's fault) goes to the
 *    disposition ours replaced, as the kernel would have delivered it: an SA_SIGINFO handler
 *    gets (sig, info, context), a plain one (sig), each with its sa_mask added, SIGBUS
 *    unblocked for SA_NODEFER ones and SA_RESETHAND honoured; for SIG_DFL the default is
 *    restored and the signal raised again, so the process dies of SIGBUS as before; SIG_IGN
 *    ignores a SIGBUS sent by kill() and dies of a fault, as the kernel does (it forces an
 *    ignored synchronous SIGBUS to SIG_DFL).
 *  - Someone else's handler installed while ours is (faulthandler.enable() in another thread
 *    during a read): guard_leave leaves it in place (it may chain to ours, and ours to what it
 *    replaced, so nothing is lost), and from then on reads go through preadv rather than stack
 *    ours on a handler that may chain back to ours, until ours is in front again (put back by
 *    that handler's uninstall; the next read's guard_leave then takes it out) or the
 *    disposition is SIG_DFL. Should such a handler re-raise a guarded fault (faulthandler does:
 *    SI_TKILL from our own process, in a guarded thread), the read still ends with the error
 *    above. A handler installed while no read is in progress is simply what ours replaces and
 *    chains to during the next copies.
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

#include "checksum_api.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* Linux 5.14; older kernels answer EINVAL and we use preadv */
#endif

#define MAP_MIN (1 << 20) /* below this a mapping's setup and teardown cost more than preadv */
#define MAX_IOV 1024      /* IOV_MAX */

static const distrestore_checksum_api *crc_api; /* from distrestore._native._checksum */

/* ---- buffers ------------------------------------------------------------------------------ */

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
            g->addr = NULL;                                        /* installed after ours */
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
static int guarded_copies; /* copies in progress, under guard_lock */
static int displaced;      /* a handler installed over ours during a copy may chain to ours */

static int is_ours(const struct sigaction *a) { return (a->sa_flags & SA_SIGINFO) && a->sa_sigaction == on_sigbus; }

static int is_default(const struct sigaction *a) { return !(a->sa_flags & SA_SIGINFO) && a->sa_handler == SIG_DFL; }

/* 1 when our handler is SIGBUS's disposition for the copy to come (installed by the first copy
 * in progress), 0 when the copy must not run mapped. Each 1 is matched by one guard_leave.
 * A handler that replaced ours while a copy ran may keep ours as the disposition it chains to;
 * stacking ours on top of it again would make the two chain to each other forever. So after
 * that (displaced), reads go through preadv until ours is back in front (that handler's
 * uninstall puts it back) or the disposition is SIG_DFL again. */
static int guard_enter(void) {
    int ok = 0;
    struct sigaction cur;
    pthread_mutex_lock(&guard_lock);
    if (sigaction(SIGBUS, NULL, &cur) == 0) {
        if (is_ours(&cur)) { /* installed by a copy in progress, or put back (prev_bus is still right) */
            ok = 1;
            displaced = 0;
        } else if (guarded_copies == 0 && (!displaced || is_default(&cur))) {
            struct sigaction act;
            memset(&act, 0, sizeof act);
            act.sa_sigaction = on_sigbus;
            act.sa_flags = SA_SIGINFO | SA_ONSTACK;
            sigemptyset(&act.sa_mask);
            prev_bus = cur; /* before the install: the handler may run as soon as it is in */
            if (sigaction(SIGBUS, &act, &cur) == 0) {
                prev_bus = cur; /* the same unless someone changed it in between */
                ok = 1;
                displaced = 0;
            }
        }
    }
    if (ok) guarded_copies++;
    pthread_mutex_unlock(&guard_lock);
    return ok;
}

/* the last copy out puts back what ours replaced, unless someone replaced ours meanwhile */
static void guard_leave(void) {
    struct sigaction cur;
    pthread_mutex_lock(&guard_lock);
    if (--guarded_copies == 0 && sigaction(SIGBUS, NULL, &cur) == 0) {
        if (is_ours(&cur)) sigaction(SIGBUS, &prev_bus, NULL);
        else displaced = 1;
    }
    pthread_mutex_unlock(&guard_lock);
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
        size_t at = 0;
        for (Py_ssize_t i = 0; i < b->n; i++) {
            size_t n = (size_t)b->bufs[i].len;
            crcs[i] = ~crc_api->copy_crc(0xFFFFFFFFu, p + at, b->bufs[i].buf, n);
            at += n;
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
static int read_mapped(int fd, off_t offset, buffers_t *b, size_t total, uint32_t *crcs, off_t *fault, off_t *size) {
    int tfd = -1; /* test-only hook: the truncation race, made deterministic */
    if (__atomic_load_n(&test_trunc_fd, __ATOMIC_RELAXED) >= 0)
        tfd = __atomic_exchange_n(&test_trunc_fd, -1, __ATOMIC_ACQ_REL);
    struct stat st;
    if (fstat(fd, &st) < 0 || offset + (off_t)total > st.st_size) return -1;
    off_t base = offset - offset % (off_t)sysconf(_SC_PAGESIZE);
    size_t len = total + (size_t)(offset - base);
    uint8_t *m = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, base);
    if (m == MAP_FAILED) return -1;
    if (madvise(m, len, MADV_POPULATE_READ) < 0 || !guard_enter()) {
        munmap(m, len);
        return -1;
    }
    if (tfd >= 0 && ftruncate(tfd, test_trunc_size) < 0) { /* the test then sees no error */
    }
    guard_t g;
    g.lo = m;
    g.hi = m + len;
    g.addr = NULL;
    int rc = copy_guarded(&g, m + (offset - base), b, crcs);
    guard_leave();
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
    for (Py_ssize_t i = 0; i < b->n; i++)
        crcs[i] = ~crc_api->copy_crc(0xFFFFFFFFu, b->bufs[i].buf, NULL, (size_t)b->bufs[i].len);
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

/* test-only: the next mapped read truncates fd to size after populating its mapping and before
 * copying, as another process might */
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
    {"_test_truncate_next", py_test_truncate_next, METH_VARARGS,
     "_test_truncate_next(fd, size): test-only; the next mapped read truncates fd between populating and copying"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_mapped_read", "Mapped read with CRC32C (see mapped_read.c).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__mapped_read(void) {
    crc_api = (const distrestore_checksum_api *)PyCapsule_Import(DISTRESTORE_CHECKSUM_CAPSULE, 0);
    if (!crc_api) return NULL; /* _checksum not built or not usable on this CPU: an ImportError */
    return PyModule_Create(&module);
}
