/* The compiled twin of medianserv.candles.PyPeriod: one period's open, close, extremes, count
 * and levels (price -> trades, a PairMap). Method for method the same; the per-trade
 * path (_hotpath.c) calls period_add for a trade of the current minute. */
#include "_native.h"
#include "structmember.h"

/* -- the levels: PairMap ---------------------------------------------------------------------- */

static int pm_grow(PairMap *m) {
    size_t cap = m->cap ? m->cap * 2 : 8;
    int shift = m->cap ? m->shift - 1 : 64 - 3;
    LevelCount *slots = calloc(cap, sizeof *slots);
    if (!slots) return -1;
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->slots[i].count) continue;
        size_t j = (size_t)((m->slots[i].price * 0x9E3779B97F4A7C15ULL) >> shift);
        while (slots[j].count) j = (j + 1) & (cap - 1);
        slots[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
    m->shift = shift;
    return 0;
}

/* price's count grows by k > 0 (inserted if new); -1 when memory ran out */
static int pm_add(PairMap *m, u64 price, i64 k) {
    if (2 * (m->used + 1) > m->cap && pm_grow(m) < 0) return -1;
    size_t mask = m->cap - 1, j = (size_t)((price * 0x9E3779B97F4A7C15ULL) >> m->shift);
    while (m->slots[j].count) {
        if (m->slots[j].price == price) {
            m->slots[j].count += k;
            return 0;
        }
        j = (j + 1) & mask;
    }
    m->slots[j] = (LevelCount){price, k};
    m->used++;
    return 0;
}

int period_prepare(Period *p, u64 price) {
    PairMap *m = &p->levels;
    if (2 * (m->used + 1) > m->cap && pm_grow(m) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    __builtin_prefetch(&m->slots[(size_t)((price * 0x9E3779B97F4A7C15ULL) >> m->shift)], 1);
    return 0;
}

int period_add(Period *p, long long lo, long long hi, u64 price, long long times) {
    if (pm_add(&p->levels, price, times) < 0) {
        PyErr_NoMemory();
        return -1;
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
    for (Py_ssize_t i = 0; i < n; i++) {
        if (pm_add(&p->levels, be64(a + 8 * i), (i64)be64(b + 8 * i)) < 0) {
            PyErr_NoMemory();
            goto done;
        }
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
    for (size_t i = 0; i < o->levels.cap; i++)
        if (o->levels.slots[i].count &&
            pm_add(&p->levels, o->levels.slots[i].price, o->levels.slots[i].count) < 0)
            return PyErr_NoMemory(); /* only memory exhaustion; the caller's symbol is damaged */
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
