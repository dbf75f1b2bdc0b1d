/* The compiled twin of medianserv/hotpath.py's PyTradePath: a chunk's trade frames applied
 * straight from the bytes, as far as each is the common case (see hotpath.py).
 *
 *   Lock       threading.Lock's semantics, which the path takes without the interpreter;
 *              in its line, the gate of the symbol's current minute (see _native.h)
 *   Index      the perfect hash of a SymbolTable (perfect_hash.py's lookup, bit for bit: zlib's
 *              crc32 and adler32 reimplemented here) over its array of SymbolStats
 *   TradePath  consume(data, pos): WebSocket header, the frame's JSON, the symbol, the price,
 *              and SymbolStats.apply_common's update, in C
 *
 * The JSON is read strictly: only what the general path's decoder (msgspec) reads the same way
 * is taken (plain ASCII strings without escapes, integers without sign, fraction or exponent
 * for the fields used, strings, integers, true, false or null beside them); anything else goes
 * to the general path, whole and in order. SymbolStats and TradeIds are Python classes with
 * __slots__: their slots are read and written through the member descriptors' offsets,
 * checked once when a TradePath is made, and every object is checked to be of exactly those
 * classes before it is touched.
 *
 * No I/O, no clock, no logging; the interpreter's lock is held throughout (each symbol's lock
 * is taken without waiting: a busy one sends the frame to the general path, which waits). */
#include "_native.h"

#include <string.h>
#include <structmember.h>
#include <time.h>

/* -- zlib's checksums ------------------------------------------------------------------------- */

static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

uint32_t ms_crc32(uint32_t crc, const unsigned char *s, size_t n) {
    crc ^= 0xFFFFFFFFu;
    while (n--) crc = crc_table[(crc ^ *s++) & 0xFF] ^ (crc >> 8);
    return crc ^ 0xFFFFFFFFu;
}

uint32_t ms_adler32(const unsigned char *s, size_t n) {
    uint32_t a = 1, b = 0;
    while (n--) {
        a = (a + *s++) % 65521u;
        b = (b + a) % 65521u;
    }
    return b << 16 | a;
}

static PyObject *py_crc32(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer view;
    unsigned long start = 0;
    if (!PyArg_ParseTuple(args, "y*|k:crc32", &view, &start)) return NULL;
    uint32_t c = ms_crc32((uint32_t)start, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(c);
}

static PyObject *py_adler32(PyObject *Py_UNUSED(module), PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    uint32_t a = ms_adler32(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(a);
}

static PyMethodDef hotpath_functions[] = {
    {"crc32", py_crc32, METH_VARARGS, "crc32(data, start=0): zlib.crc32, bit for bit (for tests)."},
    {"adler32", py_adler32, METH_O, "adler32(data): zlib.adler32, bit for bit (for tests)."},
    {NULL, NULL, 0, NULL},
};

/* -- Lock ------------------------------------------------------------------------------------- */

void lock_ungate(Lock *l) {
    Period *p = l->gate;
    if (!p) return;
    period_gather_pending(p);
    p->pending = l->noted;
    p->last_ms = l->gate_last;
    p->hot = NULL;
    l->gate = NULL;
    l->noted = 0;
    Py_DECREF(p);
}

void lock_gate(Lock *l, Period *p) {
    if (l->gate == p) return;
    lock_ungate(l);
    if (p->hot) lock_ungate(p->hot);
    l->gate = (Period *)Py_NewRef(p);
    l->noted = (uint8_t)p->pending; /* (at most PERIOD_PENDING; holds is 0: ungated) */
    l->gate_lo = p->lo_ms;
    l->gate_span = gate_span(p);
    l->gate_last = p->last_ms;
    p->pending = 0;
    p->hot = l;
}

static PyObject *Lock_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (PyTuple_GET_SIZE(args) || (kwds && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "Lock() takes no arguments");
        return NULL;
    }
    Lock *l = (Lock *)type->tp_alloc(type, 0);
    if (!l) return NULL;
#ifdef Py_GIL_DISABLED
    l->lock = PyThread_allocate_lock();
    if (!l->lock) {
        Py_DECREF(l);
        return PyErr_NoMemory();
    }
#endif
    return (PyObject *)l;
}

static void Lock_dealloc(Lock *l) {
    lock_ungate(l);
#ifdef Py_GIL_DISABLED
    if (l->lock) {
        if (l->locked) PyThread_release_lock(l->lock);
        PyThread_free_lock(l->lock); /* unlocked, as CPython frees its own locks */
    }
#endif
    Py_TYPE(l)->tp_free((PyObject *)l);
}

#ifdef Py_GIL_DISABLED
/* takes the lock, waiting (the interpreter released meanwhile) up to timeout_us (-1: forever) */
static int lock_take(Lock *l, long long timeout_us) {
    PyLockStatus r = PyThread_acquire_lock_timed(l->lock, 0, 0);
    if (r != PY_LOCK_ACQUIRED && timeout_us != 0) {
        Py_BEGIN_ALLOW_THREADS
        r = PyThread_acquire_lock_timed(l->lock, timeout_us, 0);
        Py_END_ALLOW_THREADS
    }
    if (r != PY_LOCK_ACQUIRED) return 0;
    l->locked = 1;
    return 1;
}

static void lock_give(Lock *l) {
    l->locked = 0;
    PyThread_release_lock(l->lock);
}
#else
/* a thread asleep waiting for a Lock: in its queue, on its own stack */
typedef struct LockWaiter {
    struct LockWaiter *next;
    PyThread_type_lock wake;          /* held by the waiter; released by the release that
                                         hands it the lock */
    char granted;                     /* the lock is its own */
} LockWaiter;

/* microseconds on a clock that never goes back */
static long long monotonic_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* the lock taken by polling every millisecond (the interpreter released meanwhile) up to the
   deadline (-1: none): what a waiter does that could not make a wake-up of its own */
static int lock_poll(Lock *l, long long deadline) {
    while (l->locked) {
        if (deadline >= 0 && deadline <= monotonic_us()) return 0;
        Py_BEGIN_ALLOW_THREADS
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
        Py_END_ALLOW_THREADS
    }
    l->locked = 1;
    return 1;
}

/* takes the lock (the caller holds the interpreter), waiting up to timeout_us (-1: forever)
   with the interpreter released: at the end of the queue, asleep on a wake-up of its own
   until a release hands it the lock (lock_give) or the time is up. O(waiters) to queue */
static int lock_take(Lock *l, long long timeout_us) {
    if (!l->locked) {
        l->locked = 1;
        return 1;
    }
    if (timeout_us == 0) return 0;
    long long deadline = timeout_us < 0 ? -1 : monotonic_us() + timeout_us;
    LockWaiter w = {NULL, PyThread_allocate_lock(), 0};
    if (!w.wake) return lock_poll(l, deadline);
    PyThread_acquire_lock(w.wake, NOWAIT_LOCK); /* new, so free: now held */
    LockWaiter **at = &l->queue;
    while (*at) at = &(*at)->next;
    *at = &w;
    int counted = l->waiters < UINT8_MAX;
    l->waiters += counted;
    PyLockStatus r = PY_LOCK_FAILURE;
    do {
        long long wait = deadline < 0 ? -1 : deadline - monotonic_us();
        Py_BEGIN_ALLOW_THREADS
        r = PyThread_acquire_lock_timed(w.wake, wait < 0 && deadline >= 0 ? 0 : wait, 0);
        Py_END_ALLOW_THREADS
    } while (!w.granted && deadline < 0); /* (forever: only a hand-over ends it) */
    l->waiters -= counted;
    if (!w.granted) { /* the time is up: out of the queue */
        for (at = &l->queue; *at != &w; at = &(*at)->next) {
        }
        *at = w.next;
    }
    if (r == PY_LOCK_ACQUIRED || !w.granted) PyThread_release_lock(w.wake); /* held: free it */
    PyThread_free_lock(w.wake);
    return w.granted; /* (the lock stayed locked, handed over) */
}

/* gives the lock back (the caller holds the interpreter): to the oldest thread asleep
   waiting for it if any (it stays locked), else free. O(1) */
static void lock_give(Lock *l) {
    LockWaiter *w = l->queue;
    if (!w) {
        l->locked = 0;
        return;
    }
    l->queue = w->next;
    w->granted = 1;
    PyThread_release_lock(w->wake); /* it wakes once this thread lets the interpreter go */
}
#endif

static PyObject *Lock_acquire(Lock *l, PyObject *args, PyObject *kwds) {
    static char *names[] = {"blocking", "timeout", NULL};
    int blocking = 1;
    double timeout = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|pd:acquire", names, &blocking, &timeout)) return NULL;
    if (!blocking && timeout != -1) {
        PyErr_SetString(PyExc_ValueError, "can't specify a timeout for a non-blocking call");
        return NULL;
    }
    if (timeout < 0 && timeout != -1) {
        PyErr_SetString(PyExc_ValueError, "timeout value must be a non-negative number");
        return NULL;
    }
    long long us = !blocking ? 0 : timeout < 0 ? -1 : (long long)(timeout * 1e6);
    return PyBool_FromLong(lock_take(l, us));
}

static PyObject *Lock_release(Lock *l, PyObject *Py_UNUSED(ignored)) {
    if (!l->locked) {
        PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
        return NULL;
    }
    lock_give(l);
    Py_RETURN_NONE;
}

static PyObject *Lock_enter(Lock *l, PyObject *Py_UNUSED(ignored)) {
    lock_take(l, -1);
    Py_RETURN_TRUE;
}

static PyObject *Lock_exit(Lock *l, PyObject *Py_UNUSED(args)) {
    return Lock_release(l, NULL);
}

static PyObject *Lock_locked(Lock *l, PyObject *Py_UNUSED(ignored)) {
    return PyBool_FromLong(l->locked);
}

static PyMethodDef Lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))Lock_acquire, METH_VARARGS | METH_KEYWORDS,
     "acquire(blocking=True, timeout=-1) -> bool"},
    {"release", (PyCFunction)Lock_release, METH_NOARGS, "release()"},
    {"locked", (PyCFunction)Lock_locked, METH_NOARGS, "locked() -> bool"},
    {"__enter__", (PyCFunction)Lock_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Lock_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Lock_members[] = {
    {"waiters", T_UBYTE, offsetof(Lock, waiters), READONLY,
     "threads asleep waiting for it (0 in a free-threaded build, whose waiters the lock "
     "itself counts)"},
    {NULL, 0, 0, 0, NULL},
};

PyTypeObject LockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "medianserv._native.Lock",
    .tp_basicsize = sizeof(Lock),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Lock(): threading.Lock's semantics (acquire, release, locked, with; a release "
              "hands it to the thread waiting longest), which the compiled per-trade path "
              "takes without the interpreter.",
    .tp_alloc = line_alloc, /* a line of its own (see Lock, _native.h) */
    .tp_free = free,
    .tp_new = Lock_new,
    .tp_dealloc = (destructor)Lock_dealloc,
    .tp_methods = Lock_methods,
    .tp_members = Lock_members,
};

/* -- Index: a SymbolTable's perfect hash over its stats -------------------------------------- */

typedef struct {
    PyObject_HEAD
    Py_ssize_t m;
    uint32_t seed;
    int wide;
    long long *disp;
    const char **kp;    /* each slot's key, UTF-8, or NULL: into `kbuf`, side by side */
    Py_ssize_t *kn;
    char *kbuf;
    PyObject *keys;     /* tuple of str | None */
    PyObject *values;   /* list: each slot's SymbolStats or None */
} Index;

static int Index_clear(Index *x) {
    Py_CLEAR(x->keys);
    Py_CLEAR(x->values);
    return 0;
}

static void Index_dealloc(Index *x) {
    PyObject_GC_UnTrack(x);
    PyMem_Free(x->disp);
    PyMem_Free(x->kp);
    PyMem_Free(x->kn);
    PyMem_Free(x->kbuf);
    Index_clear(x);
    Py_TYPE(x)->tp_free((PyObject *)x);
}

static int Index_traverse(Index *x, visitproc visit, void *arg) {
    Py_VISIT(x->keys);
    Py_VISIT(x->values);
    return 0;
}

static PyObject *Index_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *names[] = {"keys", "disp", "seed", "wide", "values", NULL};
    PyObject *keys, *disp, *values;
    unsigned long seed;
    int wide;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!kpO!:Index", names, &PyTuple_Type, &keys,
                                     &PyList_Type, &disp, &seed, &wide, &PyList_Type, &values))
        return NULL;
    Py_ssize_t m = PyTuple_GET_SIZE(keys);
    if (PyList_GET_SIZE(disp) != m || PyList_GET_SIZE(values) != m) {
        PyErr_SetString(PyExc_ValueError, "one displacement and one value per slot");
        return NULL;
    }
    Index *x = (Index *)type->tp_alloc(type, 0);
    if (!x) return NULL;
    x->m = m;
    x->seed = (uint32_t)seed;
    x->wide = wide;
    x->disp = PyMem_Calloc((size_t)(m ? m : 1), sizeof *x->disp);
    x->kp = PyMem_Calloc((size_t)(m ? m : 1), sizeof *x->kp);
    x->kn = PyMem_Calloc((size_t)(m ? m : 1), sizeof *x->kn);
    if (!x->disp || !x->kp || !x->kn) {
        Py_DECREF(x);
        return PyErr_NoMemory();
    }
    x->keys = Py_NewRef(keys);
    x->values = Py_NewRef(values);
    size_t total = 0;
    for (Py_ssize_t i = 0; i < m; i++) {
        PyObject *d = PyList_GET_ITEM(disp, i), *k = PyTuple_GET_ITEM(keys, i);
        x->disp[i] = PyLong_AsLongLong(d);
        if (x->disp[i] == -1 && PyErr_Occurred()) goto fail;
        if (x->disp[i] < -m || x->disp[i] >= (1LL << 32)) {
            PyErr_SetString(PyExc_ValueError, "a displacement out of range");
            goto fail;
        }
        if (k == Py_None) continue;
        if (!PyUnicode_Check(k)) {
            PyErr_SetString(PyExc_TypeError, "keys must be str or None");
            goto fail;
        }
        if (!PyUnicode_AsUTF8AndSize(k, &x->kn[i])) goto fail;
        total += (size_t)x->kn[i];
    }
    /* the keys side by side in one block: the comparison of a lookup stays in a few lines */
    x->kbuf = PyMem_Malloc(total ? total : 1);
    if (!x->kbuf) {
        PyErr_NoMemory();
        goto fail;
    }
    total = 0;
    for (Py_ssize_t i = 0; i < m; i++) {
        PyObject *k = PyTuple_GET_ITEM(keys, i);
        if (k == Py_None) continue;
        memcpy(x->kbuf + total, PyUnicode_AsUTF8(k), (size_t)x->kn[i]);
        x->kp[i] = x->kbuf + total;
        total += (size_t)x->kn[i];
    }
    return (PyObject *)x; /* tracked by the garbage collector since tp_alloc */
fail:
    Py_DECREF(x);
    return NULL;
}

/* the slot of a key (UTF-8), or -1 when it is not in the set */
static Py_ssize_t index_slot(const Index *x, const unsigned char *s, size_t n) {
    if (!x->m) return -1;
    uint32_t a = x->wide ? ms_adler32(s, n) : 0;
    long long d = x->disp[(ms_crc32(x->seed, s, n) ^ a) % (uint32_t)x->m];
    Py_ssize_t i = d < 0 ? (Py_ssize_t)(-d - 1) : (Py_ssize_t)((ms_crc32((uint32_t)d, s, n) ^ a) % (uint32_t)x->m);
    if (x->kp[i] && (size_t)x->kn[i] == n && memcmp(x->kp[i], s, n) == 0) return i;
    return -1;
}

static PyObject *Index_get(Index *x, PyObject *key) {
    Py_ssize_t n;
    const char *s;
    if (!PyUnicode_Check(key)) {
        PyErr_SetString(PyExc_TypeError, "a symbol is a str");
        return NULL;
    }
    s = PyUnicode_AsUTF8AndSize(key, &n);
    if (!s) {
        PyErr_Clear(); /* not UTF-8 (a lone surrogate): not in the set */
        Py_RETURN_NONE;
    }
    Py_ssize_t i = index_slot(x, (const unsigned char *)s, (size_t)n);
    return Py_NewRef(i < 0 ? Py_None : PyList_GET_ITEM(x->values, i));
}

static PyMethodDef Index_methods[] = {
    {"get", (PyCFunction)Index_get, METH_O,
     "get(symbol): the value of its slot, or None when it is not in the set (PerfectHash's "
     "lookup_in, bit for bit). O(len(symbol))."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject IndexType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "medianserv._native.Index",
    .tp_basicsize = sizeof(Index),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Index(keys, disp, seed, wide, values): a PerfectHash over one value per slot.",
    .tp_new = Index_new,
    .tp_dealloc = (destructor)Index_dealloc,
    .tp_traverse = (traverseproc)Index_traverse,
    .tp_clear = (inquiry)Index_clear,
    .tp_methods = Index_methods,
};

/* -- the JSON of a trade frame, read strictly ------------------------------------------------- */

typedef const unsigned char *Pos;

typedef struct {
    Pos e, s, p;        /* the strings' bytes */
    size_t en, sn, pn;
    long long E, t, T;
    unsigned have;      /* bits: e E s t p T */
} Fields;

static inline Pos ws(Pos p, Pos end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* a string: printable ASCII, no escape (else NULL: the general path reads it) */
static inline Pos str(Pos p, Pos end, Pos *s, size_t *n) {
    if (p >= end || *p != '"') return NULL;
    Pos start = ++p;
    while (p < end && *p != '"') {
        if (*p < 0x20 || *p > 0x7e || *p == '\\') return NULL;
        p++;
    }
    if (p >= end) return NULL;
    *s = start;
    *n = (size_t)(p - start);
    return p + 1;
}

/* a JSON integer (0, or no leading zero) of at most 18 digits, no sign */
static inline Pos uint18(Pos p, Pos end, long long *out) {
    Pos start = p;
    unsigned long long v = 0; /* wraps harmlessly on a longer number, refused below */
    while (p < end && (unsigned)(*p - '0') < 10u) v = v * 10 + (unsigned)(*p++ - '0');
    size_t n = (size_t)(p - start);
    if (!n || n > 18 || (n > 1 && *start == '0')) return NULL;
    if (p < end && (*p == '.' || *p == 'e' || *p == 'E')) return NULL;
    *out = (long long)v;
    return p;
}

/* a value beside the fields used: a string, an integer, true, false or null */
static inline Pos skip_value(Pos p, Pos end) {
    if (p >= end) return NULL;
    if (*p == '"') {
        Pos s;
        size_t n;
        return str(p, end, &s, &n);
    }
    if (*p == '-' || (unsigned)(*p - '0') < 10u) {
        long long v;
        if (*p == '-') p++;
        return uint18(p, end, &v);
    }
    if (end - p >= 4 && (!memcmp(p, "true", 4) || !memcmp(p, "null", 4))) return p + 4;
    if (end - p >= 5 && !memcmp(p, "false", 5)) return p + 5;
    return NULL;
}

/* the "data" object: the six fields once each, others skipped */
static Pos data_object(Pos p, Pos end, Fields *f) {
    if (p >= end || *p != '{') return NULL;
    p = ws(p + 1, end);
    for (;;) {
        Pos k;
        size_t kn;
        if (!(p = str(p, end, &k, &kn))) return NULL;
        p = ws(p, end);
        if (p >= end || *p != ':') return NULL;
        p = ws(p + 1, end);
        unsigned bit = 0;
        if (kn == 1) {
            switch (*k) {
                case 'e': bit = 1; break;
                case 'E': bit = 2; break;
                case 's': bit = 4; break;
                case 't': bit = 8; break;
                case 'p': bit = 16; break;
                case 'T': bit = 32; break;
            }
        }
        if (bit & f->have) return NULL; /* a field twice: the general path decides */
        f->have |= bit;
        switch (bit) {
            case 1: p = str(p, end, &f->e, &f->en); break;
            case 2: p = uint18(p, end, &f->E); break;
            case 4: p = str(p, end, &f->s, &f->sn); break;
            case 8: p = uint18(p, end, &f->t); break;
            case 16: p = str(p, end, &f->p, &f->pn); break;
            case 32: p = uint18(p, end, &f->T); break;
            default: p = skip_value(p, end);
        }
        if (!p) return NULL;
        p = ws(p, end);
        if (p < end && *p == ',') {
            p = ws(p + 1, end);
            continue;
        }
        if (p < end && *p == '}') return p + 1;
        return NULL;
    }
}

/* a combined-stream frame {"stream":..., "data":{...}}: its trade's fields, or 0 */
static int trade_fields(Pos p, Pos end, Fields *f) {
    int data = 0;
    f->have = 0;
    p = ws(p, end);
    if (p >= end || *p != '{') return 0;
    p = ws(p + 1, end);
    for (;;) {
        Pos k;
        size_t kn;
        if (!(p = str(p, end, &k, &kn))) return 0;
        p = ws(p, end);
        if (p >= end || *p != ':') return 0;
        p = ws(p + 1, end);
        if (kn == 4 && !memcmp(k, "data", 4)) {
            if (data++) return 0;
            p = data_object(p, end, f);
        } else p = skip_value(p, end);
        if (!p) return 0;
        p = ws(p, end);
        if (p < end && *p == ',') {
            p = ws(p + 1, end);
            continue;
        }
        if (p < end && *p == '}') break;
        return 0;
    }
    return ws(p + 1, end) == end && f->have == 63 && f->en == 5 && !memcmp(f->e, "trade", 5);
}

/* prices.parse_price: D{1,11}(.D{1,8})?, in 1e-8 units; 0 when it is not one */
static int price_units(Pos s, size_t n, u64 *out) {
    static const u64 scale[9] = {100000000ULL, 10000000ULL, 1000000ULL, 100000ULL, 10000ULL,
                                 1000ULL, 100ULL, 10ULL, 1ULL};
    Pos end = s + n, p = s;
    u64 whole = 0, frac = 0;
    while (p < end && (unsigned)(*p - '0') < 10u) whole = whole * 10 + (u64)(*p++ - '0');
    size_t w = (size_t)(p - s);
    if (!w || w > 11) return 0;
    if (p < end) {
        if (*p != '.') return 0;
        Pos f = ++p;
        while (p < end && (unsigned)(*p - '0') < 10u) frac = frac * 10 + (u64)(*p++ - '0');
        size_t k = (size_t)(p - f);
        if (!k || k > 8 || p != end) return 0;
        frac *= scale[k];
    }
    *out = whole * 100000000ULL + frac;
    return 1;
}

/* -- TradePath -------------------------------------------------------------------------------- */

enum { S_LOCK, S_MEDIAN, S_IDS, S_DIRTY, S_VERSION, S_LAST_ID, S_LAST_PRICE, S_LAST_TIME,
       S_CANDLES, S_MINUTE, I_HIGHEST, I_AFTER_MS, I_HIGHEST_PRICE, I_GAPS, I_LOWEST, N_SLOTS };

static const char *slot_names[N_SLOTS] = {
    "lock", "median", "ids", "dirty", "version", "last_trade_id", "last_price",
    "last_trade_time", "candles", "minute", "highest", "after_highest_ms", "highest_price",
    "gaps", "lowest",
};

typedef struct {
    PyObject_HEAD
    PyTypeObject *stats_type, *ids_type;
    Py_ssize_t off[N_SLOTS];
    long long max_size;
    PyObject *index;    /* Index or None */
    long long frames, applied, duplicates, busy, last_event_ms;
} TradePath;

#define SLOT(obj, k) (*(PyObject **)((char *)(obj) + tp->off[k]))

static void set_slot(PyObject **slot, PyObject *value) {
    PyObject *old = *slot;
    *slot = Py_NewRef(value);
    Py_XDECREF(old);
}

/* the offset of an object slot of a class with __slots__ */
static int slot_offset(PyTypeObject *type, const char *name, Py_ssize_t *off) {
    PyObject *d = PyObject_GetAttrString((PyObject *)type, name);
    if (!d) return -1;
    int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) &&
             ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX &&
             !(((PyMemberDescrObject *)d)->d_member->flags & READONLY);
    if (ok) *off = ((PyMemberDescrObject *)d)->d_member->offset;
    Py_DECREF(d);
    if (!ok) PyErr_Format(PyExc_TypeError, "%s.%s is not a writable slot", type->tp_name, name);
    return ok ? 0 : -1;
}

static PyObject *TradePath_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *names[] = {"stats_type", "ids_type", "max_size", NULL};
    PyTypeObject *stats_type, *ids_type;
    long long max_size = 1 << 20;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!|L:TradePath", names, &PyType_Type,
                                     &stats_type, &PyType_Type, &ids_type, &max_size))
        return NULL;
    TradePath *tp = (TradePath *)type->tp_alloc(type, 0);
    if (!tp) return NULL;
    tp->stats_type = (PyTypeObject *)Py_NewRef(stats_type);
    tp->ids_type = (PyTypeObject *)Py_NewRef(ids_type);
    tp->index = Py_NewRef(Py_None);
    tp->max_size = max_size;
    tp->last_event_ms = -1;
    for (int k = 0; k < N_SLOTS; k++)
        if (slot_offset(k < I_HIGHEST ? stats_type : ids_type, slot_names[k], &tp->off[k]) < 0) {
            Py_DECREF(tp);
            return NULL;
        }
    return (PyObject *)tp;
}

static int TradePath_clear(TradePath *tp) {
    Py_CLEAR(tp->stats_type);
    Py_CLEAR(tp->ids_type);
    Py_CLEAR(tp->index);
    return 0;
}

static void TradePath_dealloc(TradePath *tp) {
    PyObject_GC_UnTrack(tp);
    TradePath_clear(tp);
    Py_TYPE(tp)->tp_free((PyObject *)tp);
}

static int TradePath_traverse(TradePath *tp, visitproc visit, void *arg) {
    Py_VISIT(tp->stats_type);
    Py_VISIT(tp->ids_type);
    Py_VISIT(tp->index);
    return 0;
}

/* an int slot's value as a C integer; 0 when it is no int or out of range */
static inline int int_slot(PyObject *v, long long *out) {
    if (!v || !PyLong_CheckExact(v)) return 0;
    int overflow;
    *out = PyLong_AsLongLongAndOverflow(v, &overflow);
    return !overflow && !(*out == -1 && PyErr_Occurred());
}

/* BUSY: another thread held the symbol's lock (nothing done; the general path waits) */
enum { NOT_COMMON = 0, APPLIED = 1, DUPLICATE = 2, BUSY = 3, ERROR = -1 };

/* Candles.roll's bookkeeping: candles.minute becomes fresh and the minute before is queued
   in candles.retiring; 0, or -1 with an exception set and nothing changed */
static int roll_minute(PyObject *candles, PyObject *old, PyObject *fresh) {
    PyObject *queue = PyObject_GetAttrString(candles, "retiring");
    if (!queue) return -1;
    int rc = -1;
    if (!PyList_CheckExact(queue)) PyErr_SetString(PyExc_TypeError, "candles.retiring: a list");
    else if (PyList_Append(queue, old) == 0) {
        if (PyObject_SetAttrString(candles, "minute", fresh) == 0) rc = 0;
        else { /* the queue as it was, the error kept */
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            Py_ssize_t n = PyList_GET_SIZE(queue);
            if (PyList_SetSlice(queue, n - 1, n, NULL) < 0) PyErr_Clear();
            PyErr_Restore(type, value, tb);
        }
    }
    Py_DECREF(queue);
    return rc;
}

/* SymbolStats.apply_common (TradeIds.observe_common, then the count), in C: the same checks,
   the same effects, in the same order */
static int apply_common(TradePath *tp, PyObject *stats, long long t, u64 price, long long T) {
    if (Py_TYPE(stats) != tp->stats_type) return NOT_COMMON;
    PyObject *lock = SLOT(stats, S_LOCK);
    if (!lock || !Py_IS_TYPE(lock, &LockType)) return NOT_COMMON;
    Lock *gate = (Lock *)lock;
    if (!lock_take(gate, 0)) return BUSY; /* the general path waits for it */
    PyObject *m = SLOT(stats, S_MINUTE);
    int rc = NOT_COMMON;
    PyObject *tid = NULL, *when = NULL, *units = NULL, *version = NULL;
    PyObject *ids = SLOT(stats, S_IDS);
    long long highest, last_id, v;
    if (!ids || Py_TYPE(ids) != tp->ids_type || !int_slot(SLOT(ids, I_HIGHEST), &highest) ||
        highest == LLONG_MAX)
        goto done;
    if (t == highest + 1) {
        PyObject *median = SLOT(stats, S_MEDIAN);
        if (!median || !PyObject_TypeCheck(median, &MedianType) ||
            !int_slot(SLOT(stats, S_VERSION), &v) || !int_slot(SLOT(stats, S_LAST_ID), &last_id) ||
            v == LLONG_MAX)
            goto done;
        /* Candles.add for a trade of the current minute (stats.minute is candles.minute), or
           of a later minute (Candles.roll: the current one queued for the book to retire);
           any other, or a book with no current minute, goes the general way */
        PyObject *candles = SLOT(stats, S_CANDLES);
        Period *minute = NULL;
        int roll = 0;
        if (candles && candles != Py_None) {
            if ((PyObject *)gate->gate != m) { /* another minute than the one gated: gate it */
                if (!m || !Py_IS_TYPE(m, &PeriodType)) goto done;
                lock_gate(gate, (Period *)m);
            }
            minute = gate->gate; /* its bounds read from the lock's line, not its own */
            if (T < gate->gate_lo) goto done;
            if ((unsigned long long)T - (unsigned long long)gate->gate_lo >= gate->gate_span) {
                if (minute->length != 60000 || t < 0 || T < 0) goto done;
                roll = 1; /* t and T have at most 18 digits: below candles.LIMIT */
            }
        }
        rc = ERROR;
        if (!(tid = PyLong_FromLongLong(t)) || !(when = PyLong_FromLongLong(T)) ||
            !(units = PyLong_FromUnsignedLongLong(price)) || !(version = PyLong_FromLongLong(v + 1)))
            goto done;
        if (roll) {
            PyObject *fresh = PyObject_CallFunction((PyObject *)&PeriodType, "LL", T - T % 60000, 60000LL);
            if (!fresh) goto done;
            if (period_add((Period *)fresh, t, t, price, 1) < 0 || roll_minute(candles, m, fresh) < 0) {
                Py_DECREF(fresh);
                goto done;
            }
            set_slot(&SLOT(stats, S_MINUTE), fresh);
            lock_gate(gate, (Period *)fresh); /* the minute before ungated */
            Py_DECREF(fresh);
            minute = (Period *)fresh; /* held by the slot and the lock */
        } else if (minute && gate->noted + gate->holds == PERIOD_PENDING && period_settle(minute) < 0)
            goto done; /* room for the trade */
        if (median_add((Median *)median, price, 1) < 0) goto done;
        if (minute && !roll) { /* (room) */
            if (!gate->holds) {
                if (!gate->noted) minute->pend_id = t; /* the next ones' ids follow it */
                gate->held = price; /* written with the next */
                gate->holds = 1;
            } else {
                minute->pend[gate->noted] = gate->held;
                minute->pend[gate->noted + 1] = price;
                gate->noted += 2;
                gate->holds = 0;
            }
        }
        if (minute && T > gate->gate_last) gate->gate_last = T;
        set_slot(&SLOT(ids, I_HIGHEST), tid);
        set_slot(&SLOT(ids, I_AFTER_MS), when);
        set_slot(&SLOT(ids, I_HIGHEST_PRICE), units);
        set_slot(&SLOT(stats, S_DIRTY), Py_True);
        set_slot(&SLOT(stats, S_VERSION), version);
        if (t > last_id) {
            set_slot(&SLOT(stats, S_LAST_ID), tid);
            set_slot(&SLOT(stats, S_LAST_PRICE), units);
            set_slot(&SLOT(stats, S_LAST_TIME), when);
        }
        rc = APPLIED;
    } else if (t <= highest) {
        long long lowest;
        if (!int_slot(SLOT(ids, I_LOWEST), &lowest) || t < lowest) goto done; /* below the range */
        PyObject *gaps = SLOT(ids, I_GAPS);
        if (!gaps || !PyList_CheckExact(gaps)) goto done;
        Py_ssize_t n = PyList_GET_SIZE(gaps);
        if (n) {
            PyObject *last = PyList_GET_ITEM(gaps, n - 1);
            long long hi;
            if (!PyTuple_Check(last) || PyTuple_GET_SIZE(last) < 2 || !int_slot(PyTuple_GET_ITEM(last, 1), &hi) ||
                t <= hi)
                goto done;
        }
        rc = DUPLICATE;
    }
done:
    Py_XDECREF(tid);
    Py_XDECREF(when);
    Py_XDECREF(units);
    Py_XDECREF(version);
    lock_give(gate);
    return rc;
}

/* a frame of the kind consume takes, read ahead of its turn: where it ends, its fields, its
   price and its symbol's stats */
typedef struct {
    Py_ssize_t stop;
    Fields f;
    u64 price;
    PyObject *stats;
} Frame;

/* reads the frame at pos into fr: 1 if it is one consume takes (an unmasked final text frame
   of a trade of a symbol of the index), else 0. Changes nothing, so a frame read ahead and
   then not taken (the loop stopped before it) costs only the reading */
static int frame_at(const TradePath *tp, const Index *x, const unsigned char *d, Py_ssize_t pos,
                    Py_ssize_t end, Frame *fr) {
    if (end - pos < 2) return 0;
    unsigned size = d[pos + 1];
    if (d[pos] != 0x81 || size > 127) return 0; /* FIN text, unmasked; else the general path */
    Py_ssize_t start = pos + 2;
    unsigned long long n = size;
    if (size == 126) {
        if (end - pos < 4) return 0;
        n = (unsigned long long)d[pos + 2] << 8 | d[pos + 3];
        start = pos + 4;
    } else if (size == 127) {
        if (end - pos < 10) return 0;
        n = 0;
        for (int k = 2; k < 10; k++) n = n << 8 | d[pos + k];
        start = pos + 10;
    }
    if (n > (unsigned long long)tp->max_size || n > (unsigned long long)(end - start)) return 0;
    fr->stop = start + (Py_ssize_t)n;
    fr->f = (Fields){NULL, NULL, NULL, 0, 0, 0, 0, 0, 0, 0};
    if (!trade_fields(d + start, d + fr->stop, &fr->f) || !price_units(fr->f.p, fr->f.pn, &fr->price))
        return 0;
    Py_ssize_t slot = index_slot(x, fr->f.s, fr->f.sn);
    if (slot < 0 || slot >= PyList_GET_SIZE(x->values)) return 0;
    fr->stats = PyList_GET_ITEM(x->values, slot);
    return 1;
}

/* the first lines of a symbol's stats, two frames before its turn */
static inline void warm_stats(PyObject *stats) {
    __builtin_prefetch(stats, 0);
    __builtin_prefetch((char *)stats + 64, 0);
    __builtin_prefetch((char *)stats + 128, 0);
}

/* two frames before its turn, the objects its trade touches, read from its stats (fetched a
   frame earlier): the lock (and the current minute's gate in its line), the bookkeeping and
   the median. A symbol's objects are scattered over the heap and a busy market's symbols
   take turns, so each is a miss; fetched here, they overlap the trades before */
static inline void warm_objects(const TradePath *tp, PyObject *stats) {
    if (Py_TYPE(stats) != tp->stats_type) return;
    PyObject *lock = SLOT(stats, S_LOCK), *ids = SLOT(stats, S_IDS);
    PyObject *median = SLOT(stats, S_MEDIAN);
    if (lock) __builtin_prefetch(lock, 1);
    if (ids) {
        __builtin_prefetch(ids, 1);
        __builtin_prefetch((char *)ids + 64, 1);
    }
    if (median) {
        __builtin_prefetch(median, 1);
        __builtin_prefetch((char *)median + 64, 1);
        __builtin_prefetch((char *)median + 128, 1);
    }
}

/* one frame before its turn, what the objects (fetched a frame earlier) point to that its
   trade reads first: the median's heap tops and the price's slots (median_warm), and the
   current minute's pending entry it would take. Only read, under the GIL like the trade:
   a field changed before the trade's turn (another frame of the symbol) costs a wasted
   fetch, never a wrong result */
static inline void warm_levels(const TradePath *tp, const Frame *fr) {
    if (Py_TYPE(fr->stats) != tp->stats_type) return;
    PyObject *median = SLOT(fr->stats, S_MEDIAN), *lock = SLOT(fr->stats, S_LOCK);
    if (median && Py_IS_TYPE(median, &MedianType)) median_warm((const Median *)median, fr->price);
    if (lock && Py_IS_TYPE(lock, &LockType)) {
        const Lock *l = (const Lock *)lock;
        const Period *p = l->gate;
        if (!p) return;
        if (l->noted + l->holds < PERIOD_PENDING) {
            if (l->holds) __builtin_prefetch(&p->pend[l->noted], 1); /* (else: held, */
            else if (!l->noted) __builtin_prefetch(&p->pend_id, 1); /* the list's id noted) */
            return;
        }
        /* the list is full: the trade applies it first, reading every entry and the fields
           after it (their misses overlap here, not one after another there) */
        for (size_t at = 0; at < sizeof p->pend + sizeof p->pend_id; at += 64)
            __builtin_prefetch((const char *)p->pend + at, 0);
        __builtin_prefetch(&p->count, 1);
        __builtin_prefetch((const char *)&p->count + 64, 1);
        __builtin_prefetch(&p->keeps_gains, 0);
    }
}

static PyObject *TradePath_consume(TradePath *tp, PyObject *args) {
    Py_buffer view;
    Py_ssize_t pos;
    if (!PyArg_ParseTuple(args, "y*n:consume", &view, &pos)) return NULL;
    if (pos < 0 || pos > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "pos outside the data");
        return NULL;
    }
    if (!Py_IS_TYPE(tp->index, &IndexType)) {
        PyBuffer_Release(&view);
        return PyLong_FromSsize_t(pos);
    }
    Index *x = (Index *)tp->index;
    const unsigned char *d = view.buf;
    Py_ssize_t end = view.len;
    long long frames = 0, applied = 0, duplicates = 0, busy = 0, event_ms = -1;
    int failed = 0;
    /* a pipeline of four frames: while one is applied, the next one's levels, the one
       after's objects and the one after that's stats are fetched, each from what the stage
       before fetched (ring[k % 4]: k the frame applied, then k + 1, k + 2, k + 3) */
    Frame ring[4];
    int have[4];
    have[0] = frame_at(tp, x, d, pos, end, &ring[0]);
    for (int i = 1; i < 3; i++) have[i] = have[i - 1] && frame_at(tp, x, d, ring[i - 1].stop, end, &ring[i]);
    if (have[0]) warm_objects(tp, ring[0].stats);
    if (have[1]) warm_objects(tp, ring[1].stats);
    if (have[2]) warm_stats(ring[2].stats);
    if (have[0]) warm_levels(tp, &ring[0]);
    for (unsigned k = 0; have[k % 4]; k++) {
        Frame *cur = &ring[k % 4], *next = &ring[(k + 1) % 4], *then = &ring[(k + 2) % 4];
        Frame *last = &ring[(k + 3) % 4];
        have[(k + 3) % 4] = have[(k + 2) % 4] && frame_at(tp, x, d, then->stop, end, last);
        if (have[(k + 3) % 4]) warm_stats(last->stats);
        if (have[(k + 2) % 4]) warm_objects(tp, then->stats);
        if (have[(k + 1) % 4]) warm_levels(tp, next);
        int rc = apply_common(tp, cur->stats, cur->f.t, cur->price, cur->f.T);
        if (rc == ERROR) {
            failed = 1;
            break;
        }
        if (rc == NOT_COMMON || rc == BUSY) {
            busy = rc == BUSY;
            break;
        }
        frames++;
        if (rc == APPLIED) {
            applied++;
            event_ms = cur->f.E;
        } else duplicates++;
        pos = cur->stop;
    }
    PyBuffer_Release(&view);
    tp->frames += frames;
    tp->applied += applied;
    tp->duplicates += duplicates;
    tp->busy += busy;
    if (event_ms >= 0) tp->last_event_ms = event_ms;
    return failed ? NULL : PyLong_FromSsize_t(pos);
}

static PyObject *TradePath_take_counts(TradePath *tp, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = Py_BuildValue("(LLLLL)", tp->frames, tp->applied, tp->duplicates, tp->busy,
                                  tp->last_event_ms);
    tp->frames = tp->applied = tp->duplicates = tp->busy = 0;
    tp->last_event_ms = -1;
    return out;
}

static PyObject *TradePath_get_index(TradePath *tp, void *Py_UNUSED(closure)) {
    return Py_NewRef(tp->index);
}

static int TradePath_set_index(TradePath *tp, PyObject *value, void *Py_UNUSED(closure)) {
    if (!value || (value != Py_None && !Py_IS_TYPE(value, &IndexType))) {
        PyErr_SetString(PyExc_TypeError, "index is an Index or None");
        return -1;
    }
    Py_SETREF(tp->index, Py_NewRef(value));
    return 0;
}

static PyMethodDef TradePath_methods[] = {
    {"consume", (PyCFunction)TradePath_consume, METH_VARARGS,
     "consume(data, pos) -> int: see PyTradePath.consume."},
    {"take_counts", (PyCFunction)TradePath_take_counts, METH_NOARGS,
     "take_counts() -> (frames, applied, duplicates, busy, last_event_ms), reset."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef TradePath_members[] = {
    {"max_size", T_LONGLONG, offsetof(TradePath, max_size), READONLY, NULL},
    {"frames", T_LONGLONG, offsetof(TradePath, frames), READONLY, NULL},
    {"applied", T_LONGLONG, offsetof(TradePath, applied), READONLY, NULL},
    {"duplicates", T_LONGLONG, offsetof(TradePath, duplicates), READONLY, NULL},
    {"busy", T_LONGLONG, offsetof(TradePath, busy), READONLY, NULL},
    {"last_event_ms", T_LONGLONG, offsetof(TradePath, last_event_ms), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef TradePath_getset[] = {
    {"index", (getter)TradePath_get_index, (setter)TradePath_set_index,
     "The current table's Index (SymbolTable.index), set before each chunk.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject TradePathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "medianserv._native.TradePath",
    .tp_basicsize = sizeof(TradePath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "TradePath(stats_type, ids_type, max_size=2**20): the compiled twin of "
              "medianserv.hotpath.PyTradePath (see there).",
    .tp_new = TradePath_new,
    .tp_dealloc = (destructor)TradePath_dealloc,
    .tp_traverse = (traverseproc)TradePath_traverse,
    .tp_clear = (inquiry)TradePath_clear,
    .tp_methods = TradePath_methods,
    .tp_members = TradePath_members,
    .tp_getset = TradePath_getset,
};

int hotpath_ready(PyObject *module) {
    crc_init();
    if (PyType_Ready(&LockType) < 0 || PyType_Ready(&IndexType) < 0 || PyType_Ready(&TradePathType) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "Lock", (PyObject *)&LockType) < 0 ||
        PyModule_AddObjectRef(module, "Index", (PyObject *)&IndexType) < 0 ||
        PyModule_AddObjectRef(module, "TradePath", (PyObject *)&TradePathType) < 0)
        return -1;
    return PyModule_AddFunctions(module, hotpath_functions);
}
