/* medianserv._reduce: one pass over a Binance trade-archive CSV (aggTrades or trades), checking
 * every row and summing the trades of each price into a hash table, and each UTC day's into
 * its own, for the day's median candle (see end_day). The native twin of
 * medianserv.archive's polars reduction, with the same checks and reasons (stricter about
 * the layout: exactly the layout's field count, no stray byte in a number); see
 * archive.reduce_csv, which drives it, for the rules and why each exists.
 *
 * Why native code: the layout is fixed (8 or 7 comma-separated fields, no quotes), so one
 * pass can parse only the five fields it needs straight into integers, check them as it goes,
 * and count each row into a table keyed by its exact price in 1e-8 units. A general CSV engine
 * instead tokenises every field into columns, builds a string column of prices, and groups it
 * by text in a second and third pass (see `medianserv bench history` for the measured gap).
 *
 * Exact and strict: prices are plain decimals (ASCII digits, at most 11 before an optional
 * point and 1..8 after it) read with integer arithmetic only; ids and times are optionally
 * signed integers of at most 18 digits. No float, no locale, no rounding.
 *
 * Pure: no I/O, no clock, no logging; the GIL is released while a chunk is parsed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "_select.h"

#define EMPTY UINT64_MAX          /* no price is this large (10^19 - 1 at most) */
#define MAX_LINE (1 << 20)        /* a longer line is not a trade row */

/* Trades per price: open addressing, linear probing, load at most 1/2. */
typedef struct {
    uint64_t *keys;
    int64_t *counts;
    size_t cap, used;
    int shift;                    /* 64 - log2(cap): a slot is the hash's top bits */
    size_t run_slot;              /* slot of the previous price added */
    uint64_t run_price;
} Table;

/* A UTC day's counted trades, summed as its rows come (they come in time order). */
typedef struct {
    int64_t start, end;           /* [start, end) in ms; end 0 before the first row */
    int64_t first_ms, last_ms, open_id, close_id;
    int64_t count;                /* 1 once a trade is counted; its trades when it ends */
    uint64_t open_price, close_price;
    int partial;                  /* a row of it was (partly) outside cut..top, or it is the
                                   * file's first or last (others may hold some of its trades) */
} Day;

/* A finished day: its candle, with its median (whole) or its levels (partial). */
typedef struct {
    Day day;
    uint64_t high, low;
    uint64_t median_lo, median_hi; /* whole days only: the prices at the middle ranks */
    size_t at, n;                 /* partial days: its levels in the reducer's spill */
} DayOut;

typedef struct {
    PyObject_HEAD
    /* what was asked */
    int agg;                      /* aggTrades layout (a,p,q,f,l,T,m,M) or trades (f,p,q,qq,T,m,M) */
    int64_t cut, top, start_ms, end_ms;
    int64_t micros_at;            /* a time at least this large is in µs, not ms */
    int by_day;                   /* sum each UTC day apart too (day candles) */
    /* what was seen */
    int busy;                     /* a feed is running (the GIL is released meanwhile) */
    int started;                  /* a line was seen (the first may be a header) */
    int header;
    int64_t rows, invalid;
    int have_prev;
    int64_t prev_a, prev_l, prev_t;
    int64_t file_first;
    int have_first;
    int64_t first_id, first_agg, last_counted;
    int64_t last_row[4];          /* agg id, first id, last id, time ms */
    uint64_t last_price;          /* its price: up to 10^19 - 1 units, past INT64_MAX */
    /* trades per price of the file, made by merging each day's at its end */
    Table all, today;
    Day day;
    int64_t first_day;            /* the start of the file's first row's day */
    DayOut *days;                 /* the days finished */
    size_t ndays, days_cap;
    LevelCount *spill;            /* the levels of the partial days, ascending per day */
    size_t nspill, spill_cap;
    /* the unfinished last line of the previous chunk */
    char *carry;
    size_t carry_len, carry_cap;
    char error[160];
} Reducer;

#define DAY_MS 86400000LL

static int grow(Table *t) {
    size_t cap = t->cap ? t->cap * 2 : 1 << 12;
    int shift = t->cap ? t->shift - 1 : 64 - 12;
    uint64_t *keys = malloc(cap * sizeof *keys);
    int64_t *counts = malloc(cap * sizeof *counts);
    if (!keys || !counts) {
        free(keys);
        free(counts);
        return -1;
    }
    memset(keys, 0xff, cap * sizeof *keys);
    for (size_t i = 0; i < t->cap; i++) {
        if (t->keys[i] == EMPTY) continue;
        size_t j = (size_t)((t->keys[i] * 0x9E3779B97F4A7C15ULL) >> shift);
        while (keys[j] != EMPTY) j = (j + 1) & (cap - 1);
        keys[j] = t->keys[i];
        counts[j] = t->counts[i];
    }
    free(t->keys);
    free(t->counts);
    t->keys = keys;
    t->counts = counts;
    t->cap = cap;
    t->shift = shift;
    t->run_price = EMPTY;
    return 0;
}

/* Adds n trades at price; -1 when memory runs out. O(1) expected. */
static inline int add(Table *t, uint64_t price, int64_t n) {
    if (price == t->run_price) { /* the same price as the row before: no hashing */
        t->counts[t->run_slot] += n;
        return 0;
    }
    if (2 * (t->used + 1) > t->cap && grow(t) < 0) return -1;
    size_t mask = t->cap - 1;
    size_t j = (size_t)((price * 0x9E3779B97F4A7C15ULL) >> t->shift);
    while (t->keys[j] != price) {
        if (t->keys[j] == EMPTY) {
            t->keys[j] = price;
            t->counts[j] = 0;
            t->used++;
            break;
        }
        j = (j + 1) & mask;
    }
    t->counts[j] += n;
    t->run_slot = j;
    t->run_price = price;
    return 0;
}

static void table_free(Table *t) {
    free(t->keys);
    free(t->counts);
}

/* The day being summed is over: its levels go into the file's table, and its candle (with
 * its median where every trade of it was counted here, else its levels) into the days
 * finished. The day's table is emptied for the next. O(L) expected for its L levels (a
 * partial day's are sorted: O(L log L), at most two a file). */
static int end_day(Reducer *r) {
    Table *t = &r->today;
    if (!r->day.count) return 0;
    if (r->day.start == r->first_day) r->day.partial = 1;
    if (r->ndays == r->days_cap) {
        size_t cap = r->days_cap ? r->days_cap * 2 : 32;
        DayOut *days = realloc(r->days, cap * sizeof *days);
        if (!days) return -1;
        r->days = days;
        r->days_cap = cap;
    }
    LevelCount *pairs = malloc((t->used ? t->used : 1) * sizeof *pairs);
    if (!pairs) return -1;
    size_t n = 0;
    uint64_t low = EMPTY, high = 0;
    int64_t total = 0;
    for (size_t i = 0; i < t->cap; i++) {
        if (t->keys[i] == EMPTY) continue;
        pairs[n].price = t->keys[i];
        pairs[n++].count = t->counts[i];
        total += t->counts[i];
        if (t->keys[i] < low) low = t->keys[i];
        if (t->keys[i] > high) high = t->keys[i];
        if (add(&r->all, t->keys[i], t->counts[i]) < 0) {
            free(pairs);
            return -1;
        }
    }
    /* the last trade counted is the day's last: no later day has begun counting */
    r->day.count = total;
    r->day.close_id = r->last_counted;
    r->day.close_price = r->last_price;
    r->day.last_ms = r->last_row[3];
    DayOut *out = &r->days[r->ndays];
    out->day = r->day;
    out->low = low;
    out->high = high;
    out->median_lo = out->median_hi = 0;
    out->at = out->n = 0;
    if (r->day.partial) {
        sort_by_price(pairs, n);
        if (r->nspill + n > r->spill_cap) {
            size_t cap = (r->nspill + n) * 2;
            LevelCount *spill = realloc(r->spill, cap * sizeof *spill);
            if (!spill) {
                free(pairs);
                return -1;
            }
            r->spill = spill;
            r->spill_cap = cap;
        }
        memcpy(r->spill + r->nspill, pairs, n * sizeof *pairs);
        out->at = r->nspill;
        out->n = n;
        r->nspill += n;
    } else { /* the prices at ranks (count - 1) / 2 and count / 2 */
        int64_t lo_rank = (r->day.count - 1) / 2, hi_rank = r->day.count / 2;
        out->median_lo = price_at(pairs, n, lo_rank);
        out->median_hi = hi_rank == lo_rank ? out->median_lo : price_at(pairs, n, hi_rank);
    }
    free(pairs);
    r->ndays++;
    memset(t->keys, 0xff, t->cap * sizeof *t->keys);
    t->used = 0;
    t->run_price = EMPTY;
    r->day.count = 0;
    return 0;
}

/* A row at time t: the day it falls in begins, ending the one before. */
static inline int to_day(Reducer *r, int64_t t) {
    if (t < r->day.end) return 0;
    if (end_day(r) < 0) return -1;
    memset(&r->day, 0, sizeof r->day);
    r->day.start = t - t % DAY_MS;
    r->day.end = r->day.start + DAY_MS;
    return 0;
}

#define FAIL(...) do { snprintf(r->error, sizeof r->error, __VA_ARGS__); return -1; } while (0)

/* An integer field, ending at its ','; *p moves past it. */
static inline int read_int(Reducer *r, const char **p, int64_t *out, const char *name) {
    const char *s = *p;
    int neg = 0;
    if (*s == '-') {
        neg = 1;
        s++;
    }
    const char *digits = s;
    uint64_t v = 0; /* wraps harmlessly on a too long field, refused below */
    while ((unsigned)(*s - '0') < 10u) v = v * 10 + (uint64_t)(*s++ - '0');
    if (s == digits) {
        if (*s == ',' && !neg) FAIL("format: row %lld: an empty field (%s)", (long long)r->rows + 1, name);
        FAIL("format: row %lld: %s is not an integer", (long long)r->rows + 1, name);
    }
    if (s - digits > 18) FAIL("format: row %lld: %s has too many digits", (long long)r->rows + 1, name);
    if (*s != ',') FAIL("format: row %lld: %s is not an integer", (long long)r->rows + 1, name);
    *p = s + 1;
    *out = neg ? -(int64_t)v : (int64_t)v;
    return 0;
}

/* The price field, as prices.parse_price reads it: D{1,11}(.D{1,8})?, in 1e-8 units. */
static inline int read_price(Reducer *r, const char **p, uint64_t *out) {
    static const uint64_t scale[9] = {100000000ULL, 10000000ULL, 1000000ULL, 100000ULL, 10000ULL,
                                      1000ULL, 100ULL, 10ULL, 1ULL};
    const char *s = *p, *digits = s;
    uint64_t whole = 0, fraction = 0;
    while ((unsigned)(*s - '0') < 10u) whole = whole * 10 + (uint64_t)(*s++ - '0');
    size_t n = (size_t)(s - digits);
    if (n == 0 && *s == ',') FAIL("format: row %lld: an empty field (price)", (long long)r->rows + 1);
    if (n == 0 || n > 11) FAIL("bad_price: row %lld: a price that is not a plain decimal", (long long)r->rows + 1);
    if (*s == '.') {
        const char *f = ++s;
        while ((unsigned)(*s - '0') < 10u) fraction = fraction * 10 + (uint64_t)(*s++ - '0');
        size_t k = (size_t)(s - f);
        if (k == 0 || k > 8) FAIL("bad_price: row %lld: a price that is not a plain decimal", (long long)r->rows + 1);
        fraction *= scale[k];
    }
    if (*s != ',') FAIL("bad_price: row %lld: a price that is not a plain decimal", (long long)r->rows + 1);
    *p = s + 1;
    *out = whole * 100000000ULL + fraction; /* at most 10^19 - 1: no overflow */
    return 0;
}

/* Whether [s, end) is UTF-8 (RFC 3629: no overlong form, no surrogate, at most U+10FFFF). */
static int utf8(const unsigned char *s, const unsigned char *end) {
    while (s < end) {
        unsigned c = *s++;
        if (c < 0x80) continue;
        unsigned lo = 0x80, hi = 0xBF; /* the range of the first continuation byte */
        int more;
        if (c >= 0xC2 && c <= 0xDF) more = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            more = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            more = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else return 0;
        if (end - s < more || *s < lo || *s > hi) return 0;
        for (s++, more--; more; more--, s++)
            if (*s < 0x80 || *s > 0xBF) return 0;
    }
    return 1;
}

/* A field read over (not needed); *p moves past its ',' or, for the last one, to its '\n'.
 * Its bytes must be UTF-8, as polars, which reads every field as text, requires. */
static inline int skip(Reducer *r, const char **p, int last) {
    const char *s = *p;
    unsigned char high = 0;
    while (*s != ',' && *s != '\n') high |= (unsigned char)*s++;
    if (last ? *s != '\n' : *s != ',') FAIL("format: row %lld: %s fields", (long long)r->rows + 1, last ? "too many" : "too few");
    if (high & 0x80 && !utf8((const unsigned char *)*p, (const unsigned char *)s))
        FAIL("format: row %lld: a field that is not UTF-8", (long long)r->rows + 1);
    *p = last ? s : s + 1;
    return 0;
}

/* Lines [p, end), end just past a '\n'. 0, or -1 with r->error set. */
static int lines(Reducer *r, const char *p, const char *end) {
    while (p < end) {
        if (*p == '\n') FAIL("format: row %lld: an empty line", (long long)r->rows + 1);
        if (!r->started) {
            r->started = 1;
            if ((unsigned)((*p | 0x20) - 'a') < 26u) { /* a header row (futures files, tools) */
                r->header = 1;
                p = memchr(p, '\n', (size_t)(end - p));
                p++;
                continue;
            }
        }
        int64_t a, f, l, t;
        uint64_t price;
        if (r->agg) {
            if (read_int(r, &p, &a, "agg id") || read_price(r, &p, &price) || skip(r, &p, 0)
                || read_int(r, &p, &f, "first id") || read_int(r, &p, &l, "last id")
                || read_int(r, &p, &t, "time") || skip(r, &p, 0) || skip(r, &p, 1))
                return -1;
        } else {
            if (read_int(r, &p, &f, "id") || read_price(r, &p, &price) || skip(r, &p, 0)
                || skip(r, &p, 0) || read_int(r, &p, &t, "time") || skip(r, &p, 0)
                || skip(r, &p, 1))
                return -1;
            a = l = f;
        }
        p++; /* the '\n' */
        r->rows++;
        if (f < 0) { /* the 2022-04 audit's invalid rows: f = l = -1 */
            if (!r->agg || f != -1 || l != -1) FAIL("format: row %lld: a negative trade id", (long long)r->rows);
            r->invalid++;
            continue;
        }
        if (t >= r->micros_at) t /= 1000;
        if (r->have_prev) {
            if (a != r->prev_a + 1) FAIL("order: aggregate ids not consecutive (row %lld)", (long long)r->rows);
            if (t < r->prev_t) FAIL("order: times go back (row %lld)", (long long)r->rows);
        }
        if (t < r->start_ms || t >= r->end_ms) FAIL("period: row %lld", (long long)r->rows);
        if (l < f || (r->have_prev && f != r->prev_l + 1))
            FAIL("order: trade ids do not tile (an overlap, a hole, or going back; row %lld)", (long long)r->rows);
        if (r->by_day && to_day(r, t) < 0) FAIL("memory: out of memory");
        if (!r->have_prev) {
            r->file_first = f;
            r->first_day = r->day.start;
        }
        r->have_prev = 1;
        r->prev_a = a;
        r->prev_l = l;
        r->prev_t = t;
        int64_t lo = f > r->cut ? f : r->cut, hi = l < r->top ? l : r->top;
        if (lo > f || hi < l) r->day.partial = 1;
        if (hi < lo) continue;
        if (!r->have_first) {
            r->have_first = 1;
            r->first_id = lo;
            r->first_agg = a;
        }
        r->last_counted = hi;
        if (add(r->by_day ? &r->today : &r->all, price, hi - lo + 1) < 0) FAIL("memory: out of memory");
        if (!r->day.count) { /* the day's first trade counted; the rest is taken at its end */
            r->day.count = 1;
            r->day.first_ms = t;
            r->day.open_id = lo;
            r->day.open_price = price;
        }
        r->last_row[0] = a;
        r->last_row[1] = f;
        r->last_row[2] = l;
        r->last_row[3] = t;
        r->last_price = price;
    }
    return 0;
}

static int keep(Reducer *r, const char *data, size_t n) {
    if (!n) return 0;
    if (r->carry_len + n > MAX_LINE) FAIL("format: a line longer than %d bytes", MAX_LINE);
    if (r->carry_len + n > r->carry_cap) {
        size_t cap = (r->carry_len + n) * 2;
        char *carry = realloc(r->carry, cap);
        if (!carry) FAIL("memory: out of memory");
        r->carry = carry;
        r->carry_cap = cap;
    }
    memcpy(r->carry + r->carry_len, data, n);
    r->carry_len += n;
    return 0;
}

/* A chunk of the CSV, cut anywhere: the unfinished line before it first, then its whole
 * lines, then its unfinished end kept for the next. */
static int chunk(Reducer *r, const char *data, size_t n) {
    const char *end = data + n;
    if (r->carry_len) {
        const char *nl = memchr(data, '\n', n);
        if (!nl) return keep(r, data, n);
        size_t head = (size_t)(nl - data) + 1;
        if (keep(r, data, head) || lines(r, r->carry, r->carry + r->carry_len)) return -1;
        r->carry_len = 0;
        data += head;
    }
    const char *last = end;
    while (last > data && last[-1] != '\n') last--;
    if (lines(r, data, last)) return -1;
    return keep(r, last, (size_t)(end - last));
}

static int Reducer_init(Reducer *r, PyObject *args, PyObject *kwds) {
    static char *names[] = {"agg", "cut", "top", "start_ms", "end_ms", "micros_at", "days", NULL};
    int agg, by_day = 1;
    long long cut, top, start, end, micros_at;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "pLLLLL|p", names, &agg, &cut, &top, &start, &end,
                                     &micros_at, &by_day))
        return -1;
    if (r->all.cap) {
        PyErr_SetString(PyExc_RuntimeError, "a Reducer is used once");
        return -1;
    }
    r->agg = agg;
    r->cut = cut;
    r->top = top;
    r->start_ms = start;
    r->end_ms = end;
    r->micros_at = micros_at;
    r->by_day = by_day;
    if (grow(&r->all) < 0 || (by_day && grow(&r->today) < 0)) { /* today: by_day only */
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void Reducer_dealloc(Reducer *r) {
    table_free(&r->all);
    table_free(&r->today);
    free(r->days);
    free(r->spill);
    free(r->carry);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyObject *fail(Reducer *r) {
    if (!strncmp(r->error, "memory", 6)) return PyErr_NoMemory();
    PyErr_SetString(PyExc_ValueError, r->error);
    return NULL;
}

static int ready(Reducer *r) {
    if (!r->all.cap) PyErr_SetString(PyExc_RuntimeError, "the Reducer was not initialised");
    else if (r->busy) PyErr_SetString(PyExc_RuntimeError, "the Reducer is busy in another thread");
    else return 1;
    return 0;
}

static PyObject *Reducer_feed(Reducer *r, PyObject *arg) {
    Py_buffer view;
    if (!ready(r)) return NULL;
    if (r->error[0]) return fail(r);
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    int rc;
    r->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    rc = chunk(r, view.buf, (size_t)view.len);
    Py_END_ALLOW_THREADS
    r->busy = 0;
    PyBuffer_Release(&view);
    if (rc < 0) return fail(r);
    Py_RETURN_NONE;
}

/* The days finished, as tuples (start, first_ms, last_ms, open_id, open_price, close_id,
 * close_price, high, low, count, median_lo, median_hi, prices, counts): a whole day's
 * median prices with None levels, a partial day's levels (native 8-byte bytes, ascending)
 * with None medians. */
static PyObject *days_list(Reducer *r) {
    PyObject *out = PyList_New((Py_ssize_t)r->ndays);
    if (!out) return NULL;
    for (size_t i = 0; i < r->ndays; i++) {
        DayOut *o = &r->days[i];
        PyObject *lo, *hi, *prices, *counts;
        if (o->day.partial) {
            lo = Py_NewRef(Py_None);
            hi = Py_NewRef(Py_None);
            prices = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(o->n * 8));
            counts = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(o->n * 8));
            if (prices && counts) {
                uint64_t *pv = (uint64_t *)PyBytes_AS_STRING(prices);
                int64_t *cv = (int64_t *)PyBytes_AS_STRING(counts);
                for (size_t j = 0; j < o->n; j++) {
                    pv[j] = r->spill[o->at + j].price;
                    cv[j] = r->spill[o->at + j].count;
                }
            }
        } else {
            lo = PyLong_FromUnsignedLongLong(o->median_lo);
            hi = PyLong_FromUnsignedLongLong(o->median_hi);
            prices = Py_NewRef(Py_None);
            counts = Py_NewRef(Py_None);
        }
        PyObject *item = NULL;
        if (lo && hi && prices && counts)
            item = Py_BuildValue("LLLLKLKKKLOOOO", (long long)o->day.start, (long long)o->day.first_ms,
                                 (long long)o->day.last_ms, (long long)o->day.open_id,
                                 (unsigned long long)o->day.open_price, (long long)o->day.close_id,
                                 (unsigned long long)o->day.close_price, (unsigned long long)o->high,
                                 (unsigned long long)o->low, (long long)o->day.count, lo, hi,
                                 prices, counts);
        Py_XDECREF(lo);
        Py_XDECREF(hi);
        Py_XDECREF(prices);
        Py_XDECREF(counts);
        if (!item) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, (Py_ssize_t)i, item);
    }
    return out;
}

static PyObject *Reducer_finish(Reducer *r, PyObject *Py_UNUSED(ignored)) {
    if (!ready(r)) return NULL;
    if (r->error[0]) return fail(r);
    if (r->carry_len) { /* the file lacks its last newline */
        if (keep(r, "\n", 1) || lines(r, r->carry, r->carry + r->carry_len)) return fail(r);
        r->carry_len = 0;
    }
    if (!r->have_prev) {
        PyErr_SetString(PyExc_ValueError, "empty: no rows");
        return NULL;
    }
    if (!r->have_first) {
        PyErr_SetString(PyExc_ValueError, "empty: no trade within the ids asked for");
        return NULL;
    }
    r->day.partial = 1; /* the file's last day */
    if (r->by_day && end_day(r) < 0) return PyErr_NoMemory();
    Table *t = &r->all;
    PyObject *levels = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(t->used * 8));
    PyObject *counts = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(t->used * 8));
    PyObject *days = days_list(r);
    if (!levels || !counts || !days) {
        Py_XDECREF(levels);
        Py_XDECREF(counts);
        Py_XDECREF(days);
        return NULL;
    }
    uint64_t *lv = (uint64_t *)PyBytes_AS_STRING(levels);
    int64_t *cn = (int64_t *)PyBytes_AS_STRING(counts);
    size_t k = 0;
    for (size_t i = 0; i < t->cap; i++) {
        if (t->keys[i] == EMPTY) continue;
        lv[k] = t->keys[i];
        cn[k++] = t->counts[i];
    }
    PyObject *first_agg = r->agg ? PyLong_FromLongLong(r->first_agg) : Py_NewRef(Py_None);
    return Py_BuildValue("NNLLNLL(LLLKL)LLiN", levels, counts, (long long)r->first_id,
                         (long long)r->last_counted, first_agg, (long long)r->file_first,
                         (long long)r->prev_l, (long long)r->last_row[0], (long long)r->last_row[1],
                         (long long)r->last_row[2], (unsigned long long)r->last_price,
                         (long long)r->last_row[3], (long long)r->rows, (long long)r->invalid,
                         r->header, days);
}

static PyMethodDef Reducer_methods[] = {
    {"feed", (PyCFunction)Reducer_feed, METH_O,
     "feed(chunk): the next bytes of the CSV, cut anywhere. Raises ValueError('<reason>: ...') "
     "for a row that fails a check; the Reducer is then spent. O(len(chunk))."},
    {"finish", (PyCFunction)Reducer_finish, METH_NOARGS,
     "finish() -> (levels, counts, first_id, last_id, first_agg, file_first_id, file_last_id, "
     "last_row, rows, invalid_rows, header, days): levels and counts as native uint64 / int64 "
     "bytes, in no order; days the UTC days of the trades counted, each (start, first_ms, "
     "last_ms, open_id, open_price, close_id, close_price, high, low, count, median_lo, "
     "median_hi, prices, counts): median prices where every trade of the day in the file was "
     "counted, else its levels (native bytes, ascending). O(distinct prices)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReducerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "medianserv._reduce.Reducer",
    .tp_basicsize = sizeof(Reducer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Reducer(agg, cut, top, start_ms, end_ms, micros_at, days=True): one archive CSV, fed in "
              "chunks, reduced to trades per price (1e-8 units) with every row checked, and "
              "(days) to each UTC day's candle; trade ids outside cut..top are checked but not "
              "counted; times from micros_at on are read as µs. Memory O(distinct prices + "
              "longest line).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reducer_init,
    .tp_dealloc = (destructor)Reducer_dealloc,
    .tp_methods = Reducer_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "medianserv._reduce",
    .m_doc = "One pass over a Binance trade-archive CSV: rows checked, trades summed per price.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__reduce(void) {
    if (PyType_Ready(&ReducerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Reducer", (PyObject *)&ReducerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
