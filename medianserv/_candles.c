/* The compiled twin of medianserv.candles.PyPeriod: one period's open, close, extremes, count
 * and levels (price -> trades, a PairMap). Method for method the same; the per-trade
 * path (_hotpath.c) calls period_add for a trade of the current minute. */
#include "_native.h"
#include "structmember.h"

/* -- the levels: PairMap ---------------------------------------------------------------------- */

static inline size_t pm_home(const PairMap *m, u64 price) {
    return (size_t)((price * 0x9E3779B97F4A7C15ULL) >> m->shift);
}

/* price's count grows by k > 0 (inserted if new); the map has room (pm_reserve) */
static inline void pm_put(PairMap *m, u64 price, i64 k) {
    size_t mask = m->cap - 1, j = pm_home(m, price);
    while (m->slots[j].count) {
        if (m->slots[j].price == price) {
            m->slots[j].count += k;
            return;
        }
        j = (j + 1) & mask;
    }
    m->slots[j] = (LevelCount){price, k};
    m->used++;
}

/* room for `more` levels beyond those held (used <= cap / 2 after them): 0, or -1 when
   memory ran out, the map unchanged. O(used) when it grows, amortised O(1) a level */
static int pm_reserve(PairMap *m, size_t more) {
    if (2 * (m->used + more) <= m->cap) return 0;
    size_t cap = m->cap ? m->cap : 8;
    int shift = m->cap ? m->shift : 64 - 3;
    while (2 * (m->used + more) > cap) {
        cap *= 2;
        shift--;
    }
    /* malloc and memset, not calloc: a fresh page is written once, not read as the zero
       page by the probe and then copied on the first write */
    LevelCount *slots = malloc(cap * sizeof *slots);
    if (!slots) return -1;
    memset(slots, 0, cap * sizeof *slots);
    PairMap old = *m;
    m->slots = slots;
    m->cap = cap;
    m->shift = shift;
    m->used = 0;
    for (size_t i = 0; i < old.cap; i++)
        if (old.slots[i].count) pm_put(m, old.slots[i].price, old.slots[i].count);
    free(old.slots);
    return 0;
}

/* n <= PERIOD_PENDING levels added, every slot fetched before the first is written, so their
   misses overlap; the map has room for them */
static void pm_put_batch(PairMap *m, const LevelCount *v, size_t n) {
    for (size_t i = 0; i < n; i++) __builtin_prefetch(&m->slots[pm_home(m, v[i].price)], 1);
    for (size_t i = 0; i < n; i++) pm_put(m, v[i].price, v[i].count);
}

/* the pending trades into the map; 0, or -1 with MemoryError set and nothing changed */
static int period_flush(Period *p) {
    if (!p->pending) return 0;
    if (pm_reserve(&p->levels, p->pending) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    pm_put_batch(&p->levels, p->pend, p->pending);
    p->pending = 0;
    return 0;
}

int period_prepare(Period *p, u64 price) {
    if (p->pending == PERIOD_PENDING && p->pend[PERIOD_PENDING - 1].price != price)
        return period_flush(p);
    return 0;
}

int period_add(Period *p, long long lo, long long hi, u64 price, long long times) {
    size_t k = p->pending;
    if (k && p->pend[k - 1].price == price) /* a run at one price: one pending level */
        p->pend[k - 1].count += times;
    else {
        if (k == PERIOD_PENDING) {
            if (period_flush(p) < 0) return -1;
            k = 0;
        }
        p->pend[k] = (LevelCount){price, times};
        p->pending = k + 1;
    }
    if (!p->count) {
        p->open_id = lo;
        p->close_id = hi;
        p->open_price = p->close_price = p->high = p->low = price;
    } else {
        if (lo < p->open_id) {
            p->open_id = lo;
            p->open_price = price;
        }
        if (hi > p->close_id) {
            p->close_id = hi;
            p->close_price = price;
        }
        if (price > p->high)
            p->high = price;
        else if (price < p->low)
            p->low = price;
    }
    p->count += times;
    return 0;
}

static PyObject *Period_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *names[] = {"start", "length", NULL};
    long long start, length;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "LL:Period", names, &start, &length)) return NULL;
    if (length <= 0) {
        PyErr_SetString(PyExc_ValueError, "a period's length must be positive");
        return NULL;
    }
    Period *p = (Period *)type->tp_alloc(type, 0);
    if (!p) return NULL;
    p->start = p->lo_ms = start;
    p->length = length;
    p->last_ms = -1;
    p->open_id = p->close_id = -1;
    return (PyObject *)p;
}

static void Period_dealloc(Period *p) {
    free(p->levels.slots);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

/* a Python int in 0 .. 2^64 - 1 */
static int price_arg(PyObject *o, u64 *out) {
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *out = v;
    return 0;
}

static PyObject *Period_add(Period *p, PyObject *args) {
    long long lo, hi, times;
    PyObject *price_o;
    u64 price;
    if (!PyArg_ParseTuple(args, "LLOL:add", &lo, &hi, &price_o, &times)) return NULL;
    if (price_arg(price_o, &price) < 0) return NULL;
    if (times <= 0 || hi < lo) {
        PyErr_SetString(PyExc_ValueError, "add: times must be positive and lo <= hi");
        return NULL;
    }
    if (period_add(p, lo, hi, price, times) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Period_add_in(Period *p, PyObject *args) {
    long long tid, when;
    PyObject *price_o;
    u64 price;
    if (!PyArg_ParseTuple(args, "LOL:add_in", &tid, &price_o, &when)) return NULL;
    if (price_arg(price_o, &price) < 0) return NULL;
    if (when < p->lo_ms || when - p->start >= p->length) Py_RETURN_FALSE;
    if (period_add(p, tid, tid, price, 1) < 0) return NULL;
    if (when > p->last_ms) p->last_ms = when;
    Py_RETURN_TRUE;
}

static u64 be64(const unsigned char *b) {
    u64 v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | b[i];
    return v;
}

static PyObject *Period_add_packed(Period *p, PyObject *args) {
    Py_buffer pv, cv;
    if (!PyArg_ParseTuple(args, "y*y*:add_packed", &pv, &cv)) return NULL;
    PyObject *res = NULL;
    const unsigned char *a = pv.buf, *b = cv.buf;
    Py_ssize_t n = pv.len / 8;
    u64 sum = (u64)p->count;
    if (pv.len != cv.len || pv.len % 8) {
        PyErr_SetString(PyExc_ValueError, "add_packed: as many prices as counts, 8 bytes each");
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) { /* checked whole first: nothing added on an error */
        u64 c = be64(b + 8 * i);
        if (c == 0 || c > (u64)INT64_MAX - sum) {
            PyErr_SetString(PyExc_ValueError, "add_packed: counts must be positive (and fit)");
            goto done;
        }
        sum += c;
    }
    if (pm_reserve(&p->levels, (size_t)n) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i += PERIOD_PENDING) {
        LevelCount batch[PERIOD_PENDING];
        size_t k = 0;
        for (Py_ssize_t j = i; j < n && k < PERIOD_PENDING; j++, k++)
            batch[k] = (LevelCount){be64(a + 8 * j), (i64)be64(b + 8 * j)};
        pm_put_batch(&p->levels, batch, k);
    }
    p->count = (i64)sum;
    res = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&pv);
    PyBuffer_Release(&cv);
    return res;
}

static PyObject *Period_fold(Period *p, PyObject *arg) {
    if (!PyObject_TypeCheck(arg, &PeriodType)) {
        PyErr_SetString(PyExc_TypeError, "fold: a Period is needed");
        return NULL;
    }
    Period *o = (Period *)arg;
    if (!o->count) Py_RETURN_NONE;
    if (o == p) {
        PyErr_SetString(PyExc_ValueError, "fold: a period cannot fold itself");
        return NULL;
    }
    if (pm_reserve(&p->levels, o->levels.used + o->pending) < 0)
        return PyErr_NoMemory(); /* only memory exhaustion; nothing changed */
    LevelCount batch[PERIOD_PENDING];
    size_t k = 0;
    for (size_t i = 0; i < o->levels.cap; i++) {
        if (!o->levels.slots[i].count) continue;
        batch[k++] = o->levels.slots[i];
        if (k == PERIOD_PENDING) {
            pm_put_batch(&p->levels, batch, k);
            k = 0;
        }
    }
    pm_put_batch(&p->levels, batch, k);
    pm_put_batch(&p->levels, o->pend, o->pending);
    if (!p->count) {
        p->open_id = o->open_id;
        p->open_price = o->open_price;
        p->close_id = o->close_id;
        p->close_price = o->close_price;
        p->high = o->high;
        p->low = o->low;
    } else {
        if (o->open_id < p->open_id) {
            p->open_id = o->open_id;
            p->open_price = o->open_price;
        }
        if (o->close_id > p->close_id) {
            p->close_id = o->close_id;
            p->close_price = o->close_price;
        }
        if (o->high > p->high) p->high = o->high;
        if (o->low < p->low) p->low = o->low;
    }
    p->count += o->count;
    Py_RETURN_NONE;
}

static PyObject *Period_copy(Period *p, PyObject *Py_UNUSED(ignored)) {
    Period *c = (Period *)Py_TYPE(p)->tp_alloc(Py_TYPE(p), 0);
    if (!c) return NULL;
    /* every field after the object header, then a map of its own */
    memcpy((char *)c + sizeof(PyObject), (char *)p + sizeof(PyObject), sizeof(Period) - sizeof(PyObject));
    c->levels.slots = NULL;
    if (p->levels.cap) {
        c->levels.slots = malloc(p->levels.cap * sizeof *c->levels.slots);
        if (!c->levels.slots) {
            c->levels.cap = 0;
            Py_DECREF(c);
            return PyErr_NoMemory();
        }
        memcpy(c->levels.slots, p->levels.slots, p->levels.cap * sizeof *c->levels.slots);
    }
    return (PyObject *)c;
}

static int pair_cmp(const void *a, const void *b) {
    u64 x = ((const LevelCount *)a)->price, y = ((const LevelCount *)b)->price;
    return (x > y) - (x < y);
}

/* a new array of the period's levels (levels.used of them), ascending by price if `sorted`:
   NULL with MemoryError set when memory ran out, or when the period holds none */
static LevelCount *levels_of(const Period *p, int sorted) {
    size_t n = p->levels.used, k = 0;
    LevelCount *pairs = n ? malloc(n * sizeof *pairs) : NULL;
    if (n && !pairs) {
        PyErr_NoMemory();
        return NULL;
    }
    for (size_t i = 0; i < p->levels.cap; i++)
        if (p->levels.slots[i].count) pairs[k++] = p->levels.slots[i];
    if (sorted && n) qsort(pairs, n, sizeof *pairs, pair_cmp);
    return pairs;
}

static PyObject *Period_items(Period *p, PyObject *Py_UNUSED(ignored)) {
    if (period_flush(p) < 0) return NULL;
    size_t n = p->levels.used;
    LevelCount *pairs = levels_of(p, 1);
    if (n && !pairs) return NULL;
    PyObject *prices = PyList_New((Py_ssize_t)n), *counts = PyList_New((Py_ssize_t)n);
    if (!prices || !counts) goto fail;
    for (size_t i = 0; i < n; i++) {
        PyObject *a = PyLong_FromUnsignedLongLong(pairs[i].price);
        if (!a) goto fail;
        PyList_SET_ITEM(prices, (Py_ssize_t)i, a);
        PyObject *b = PyLong_FromLongLong(pairs[i].count);
        if (!b) goto fail;
        PyList_SET_ITEM(counts, (Py_ssize_t)i, b);
    }
    free(pairs);
    return Py_BuildValue("(NN)", prices, counts);
fail:
    free(pairs);
    Py_XDECREF(prices);
    Py_XDECREF(counts);
    return NULL;
}

static PyObject *Period_packed(Period *p, PyObject *Py_UNUSED(ignored)) {
    if (period_flush(p) < 0) return NULL;
    size_t n = p->levels.used;
    LevelCount *pairs = levels_of(p, 1);
    if (n && !pairs) return NULL;
    PyObject *prices = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(8 * n));
    PyObject *counts = prices ? PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(8 * n)) : NULL;
    if (!prices || !counts) {
        free(pairs);
        Py_XDECREF(prices);
        return NULL;
    }
    unsigned char *a = (unsigned char *)PyBytes_AS_STRING(prices);
    unsigned char *b = (unsigned char *)PyBytes_AS_STRING(counts);
    for (size_t i = 0; i < n; i++)
        for (int j = 0; j < 8; j++) {
            a[8 * i + j] = (unsigned char)(pairs[i].price >> (56 - 8 * j));
            b[8 * i + j] = (unsigned char)((u64)pairs[i].count >> (56 - 8 * j));
        }
    free(pairs);
    return Py_BuildValue("(NN)", prices, counts);
}

static PyObject *Period_twice_median(Period *p, PyObject *Py_UNUSED(ignored)) {
    if (period_flush(p) < 0) return NULL;
    size_t n = p->levels.used;
    if (!n) {
        PyErr_SetString(PyExc_ValueError, "twice_median: the period holds no trade");
        return NULL;
    }
    LevelCount *pairs = levels_of(p, 0);  /* selected from below, the interpreter released */
    if (!pairs) return NULL;
    long long lo_rank = (p->count - 1) / 2, hi_rank = p->count / 2, total = 0;
    u64 lo = 0, hi = 0;
    for (size_t i = 0; i < n; i++) total += pairs[i].count;
    int found = total > hi_rank;  /* the ranks are there (they are, but for a bug) */
    /* the selection reads only this private array: other threads run meanwhile */
    Py_BEGIN_ALLOW_THREADS
    if (found) {
        lo = price_at(pairs, n, lo_rank);
        hi = hi_rank == lo_rank ? lo : price_at(pairs, n, hi_rank);
    }
    Py_END_ALLOW_THREADS
    free(pairs);
    PyObject *out = NULL;
    if (found) {  /* the sum of two u64 prices, exact */
        PyObject *a = PyLong_FromUnsignedLongLong(lo), *b = PyLong_FromUnsignedLongLong(hi);
        if (a && b) out = PyNumber_Add(a, b);
        Py_XDECREF(a);
        Py_XDECREF(b);
    }
    if (!out && !PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "levels short of the count");
    return out;
}

static PyObject *Period_get_levels(Period *p, void *Py_UNUSED(closure)) {
    if (period_flush(p) < 0) return NULL;
    return PyLong_FromSize_t(p->levels.used);
}

static PyMethodDef Period_methods[] = {
    {"add", (PyCFunction)Period_add, METH_VARARGS, "See PyPeriod.add."},
    {"add_in", (PyCFunction)Period_add_in, METH_VARARGS, "See PyPeriod.add_in."},
    {"add_packed", (PyCFunction)Period_add_packed, METH_VARARGS, "See PyPeriod.add_packed."},
    {"fold", (PyCFunction)Period_fold, METH_O, "See PyPeriod.fold."},
    {"copy", (PyCFunction)Period_copy, METH_NOARGS, "See PyPeriod.copy."},
    {"items", (PyCFunction)Period_items, METH_NOARGS, "See PyPeriod.items."},
    {"packed", (PyCFunction)Period_packed, METH_NOARGS, "See PyPeriod.packed."},
    {"twice_median", (PyCFunction)Period_twice_median, METH_NOARGS,
     "See PyPeriod.twice_median."},
    {NULL},
};

static PyMemberDef Period_members[] = {
    {"start", T_LONGLONG, offsetof(Period, start), READONLY, NULL},
    {"length", T_LONGLONG, offsetof(Period, length), READONLY, NULL},
    {"lo_ms", T_LONGLONG, offsetof(Period, lo_ms), 0, NULL},
    {"last_ms", T_LONGLONG, offsetof(Period, last_ms), 0, NULL},
    {"count", T_LONGLONG, offsetof(Period, count), READONLY, NULL},
    {"open_id", T_LONGLONG, offsetof(Period, open_id), 0, NULL},
    {"close_id", T_LONGLONG, offsetof(Period, close_id), 0, NULL},
    {"open_price", T_ULONGLONG, offsetof(Period, open_price), 0, NULL},
    {"close_price", T_ULONGLONG, offsetof(Period, close_price), 0, NULL},
    {"high", T_ULONGLONG, offsetof(Period, high), 0, NULL},
    {"low", T_ULONGLONG, offsetof(Period, low), 0, NULL},
    {NULL},
};

static PyGetSetDef Period_getset[] = {
    {"levels", (getter)Period_get_levels, NULL, "Distinct prices held.", NULL},
    {NULL},
};

PyTypeObject PeriodType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "medianserv._native.Period",
    .tp_doc = "One period's trades: the compiled twin of medianserv.candles.PyPeriod.",
    .tp_basicsize = sizeof(Period),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Period_new,
    .tp_dealloc = (destructor)Period_dealloc,
    .tp_methods = Period_methods,
    .tp_members = Period_members,
    .tp_getset = Period_getset,
};
