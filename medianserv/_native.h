/* medianserv._native: the compiled twins of medianserv's pure modules, one extension module.
 *
 *   _median.c   the twin of median.py (PyRunningMedian): type Median
 *   _hotpath.c  the twin of hotpath.py (the per-trade path): types Lock, Index, TradePath
 *   _candles.c  the twin of candles.py's PyPeriod: type Period; of its compact_levels and
 *               expand_levels (a delta's levels as stored); and of store.py's
 *               py_candle_items (a snapshot's candle records): candle_batch, and merge_levels
 *               (a symbol's batches of levels)
 *   _native.c   the module: its types and functions put together
 *
 * Each C file mirrors its Python module function for function; the tests run both twins
 * against the same oracles and against each other. The CPython API only: no numpy headers,
 * no other library, so any C compiler builds it at install (and where none is, the pure
 * Python twins run). */
#ifndef MEDIANSERV_NATIVE_H
#define MEDIANSERV_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "_select.h"

typedef uint64_t u64;
typedef int64_t i64;

/* tp_alloc of a type whose objects start on a cache line (64-byte aligned, zeroed, freed with
 * free: tp_free = free); not for types the garbage collector tracks (_native.c) */
PyObject *line_alloc(PyTypeObject *type, Py_ssize_t nitems);

/* in a _check method: an AssertionError saying msg, returned, unless cond holds */
#define CHECK(cond, msg) do { if (!(cond)) { PyErr_SetString(PyExc_AssertionError, msg); return NULL; } } while (0)

/* -- the median (_median.c) ---------------------------------------------------------------- */

/* price -> count, open addressing, linear probing, backward-shift deletion; a slot is free
 * when its count is 0 (every price 0 .. 2^64 - 1 is a valid key) */
typedef struct {
    u64 *keys;
    i64 *vals;
    size_t cap, used;   /* cap a power of two (or 0), used <= cap / 2 */
    int shift;          /* 64 - log2(cap) */
} Map;

/* one level put in a record's log: its price and its count after the put */
typedef struct {
    u64 p;
    i64 c;
} Touch;

#define LOG_CHUNK 128       /* entries of a record's log a block holds (2 KiB) */

/* the levels added to since a median last handed them over, each with its count after:
 *
 * - first a log, each put appended to a block of LOG_CHUNK (4 entries a cache line,
 *   written in order: where every trade is a new level, a put writes no random line). A
 *   level's count only grows, so its largest logged count is its latest. The log is
 *   closed where a block fills with more entries logged than twice the levels the median
 *   gained since the record began (record_put): it grows with new levels, never
 *   with trades alone, and a market trading again at levels it had (where a table's few
 *   slots stay in the cache, and a log would stream through new lines) leaves it after one
 *   block.
 * - then, once the log is closed (a market trading many times at few levels), hash tables
 *   that grow without a stall and without moving an entry: when `cur` is half full it is
 *   kept as it is, among `full`, and a table twice its size takes the puts; a key is only
 *   ever put in `cur`, so a level put again after its table filled is in two, and the
 *   newest table's count is the one read (record_pairs). The tables together have fewer
 *   than twice the slots of the last; a large one is mapped, its pages zeroed as they are
 *   first written, and all are freed by whoever takes the record, off the lock. */
typedef struct {
    Touch *next;        /* where the log's next entry goes */
    size_t room;        /* entries left in the log's last block (0: a new block, or the tables) */
    Map cur;
    int closed;         /* the log took its last entry: puts go to the tables */
    size_t base;        /* the median's levels at the record's first put */
    Touch **blocks;     /* the log's blocks, in order; all full but the last */
    size_t nblocks, capblocks;
    Map *full;          /* the tables filled before cur, oldest first: never written again */
    size_t nfull;
} Record;

/* one cold chunk: n levels, prices ascending, in one block with room for cap of each */
typedef struct {
    int n, cap;
    u64 *p;
    i64 *c;
} Chunk;

/* one side's levels beyond its heap (medianserv.median._Cold) */
typedef struct {
    Chunk **chunks;     /* ascending */
    u64 *firsts;        /* each chunk's first price */
    i64 *sums;          /* each chunk's values */
    size_t n, cap;      /* chunks held, directory room */
    i64 total;
    i64 *levels;        /* levels held, counted with the other side's: a whole chunk moving
                         * across is neither read nor counted again */
    size_t at;          /* the chunk the last search found */
    int chunk;          /* levels a chunk holds at most */
} Cold;

typedef struct {
    PyObject_HEAD
    u64 *low;           /* max-heap of the low side's levels near the median */
    size_t nlow, caplow;
    u64 *high;          /* min-heap of the high side's levels near the median */
    size_t nhigh, caphigh;
    Map low_counts, high_counts;
    Record touched;     /* level -> its count, for the levels added to since take_touched */
    i64 n_low, n_high;  /* values on each side, cold ones included */
    Cold cold_low, cold_high;
    i64 cold_levels;    /* levels the two cold stores hold (a level split across both, twice) */
    u64 floor_;         /* has_floor: no cold low level is at or above it (else -1) */
    u64 ceil_;          /* has_ceil: no cold high level is at or below it (else 2^64) */
    int has_floor, has_ceil;
    int hot_max, refill, chunk;
    int broken;         /* memory ran out half way through a step: refuse every use */
} Median;

extern PyTypeObject MedianType, LevelsType;

/* Adds `times` values at `value`; the level's count after, or -1 with an exception set. */
i64 median_add(Median *m, u64 value, i64 times);

/* where a map looks for key first (Fibonacci hashing) */
static inline size_t map_home(const Map *m, u64 key) {
    return (size_t)((key * 0x9E3779B97F4A7C15ULL) >> m->shift);
}

/* the lines median_add(m, value, 1) reads first fetched, so that their misses overlap other
 * work: each heap's top, and value's home slot in the counts of either side (which side is
 * not known until the top is read), and where the record of levels touched puts it (the
 * log's next entry, or its home slot in the table). Reads only m's own first lines; changes
 * nothing. O(1) */
static inline void median_warm(const Median *m, u64 value) {
    if (m->nlow) __builtin_prefetch(m->low, 0);
    if (m->nhigh) __builtin_prefetch(m->high, 0);
    const Map *maps[3] = {&m->low_counts, &m->high_counts, &m->touched.cur};
    if (m->touched.room) __builtin_prefetch(m->touched.next, 1);
    for (int i = 0; i < 3; i++) {
        if (!maps[i]->cap) continue;
        size_t j = map_home(maps[i], value);
        __builtin_prefetch(&maps[i]->keys[j], 1);
        __builtin_prefetch(&maps[i]->vals[j], 1);
    }
}

/* -- median candles (_candles.c) ------------------------------------------------------------ */

/* price -> trades of one period, each price beside its count (a LevelCount, _select.h: one
 * cache line holds four, so a level put misses once, not once for the key and once for the
 * count); open addressing, linear probing, a slot free when its count is 0 */
typedef struct {
    LevelCount *slots;
    size_t cap, used;   /* cap a power of two (or 0), used <= cap / 2 */
    int shift;          /* 64 - log2(cap) */
} PairMap;

/* an ascending array of distinct levels, with room for cap. Its own (refs NULL), or shared
   with other periods' runs (refs counts them: a retired minute's run that its hour and day
   took as it is, a reader's copy): a shared array is never written, and freed by the last
   run to let it go (run_release) */
typedef struct {
    LevelCount *v;
    size_t n, cap;
    size_t *refs;
} Run;

/* live trades a period holds back before it applies them: a live trade of the current minute
 * appends its price to this list (lines of the period's own; their ids run on from the first
 * one's, kept beside them, as the per-trade path only takes the next id) and touches nothing
 * else of the period; the list is applied all at once (its edges, its map, each slot fetched
 * ahead, its fields) when it is full or the period is read. 63 (the first one's id and 63
 * prices: eight lines): a cold minute's fields and map lines are fetched once in 63 trades
 * (see the README's Median candles: at 16 they cost a round-robin flood over 2,292 symbols
 * 25-100 ns a trade more) */
#define PERIOD_PENDING 63

/* levels appended in the order they came, room for cap; how many is kept beside it. An edge:
 * each level beyond every one before (a new high, or a new low), its length and last price
 * among the period's fields (Period.up_n, .up_last ...); or a minute's gains */
typedef struct {
    LevelCount *v;
    size_t cap;
} LevelList;

struct Lock;

/* one period's trades (medianserv.candles.PyPeriod). Its first line holds what applying the
 * pending list reads first (the object is 64-byte aligned: see line_alloc), then the pending
 * list, then what applying it, folds, copies and readers touch. Its trades are those applied
 * (count, the fields, the levels of the edges, the map and the runs; a price may be in
 * several) and the pending ones; every reader applies the pending ones first (count adds them
 * up instead), and every reader of the levels then compacts them into one run.
 *
 * While a symbol's Lock gates it (`hot`, see Lock), the per-trade path does not read this
 * object's first line at all: the lock's own line holds its bounds, the latest time and the
 * count of pending trades (pending is then 0 here and last_ms stale), and every reader here
 * takes them from the lock (period_pending, period_last_at). */
typedef struct Period {
    PyObject_HEAD                     /* line one */
    long long start, length;
    long long lo_ms, last_ms;         /* add_in takes times lo_ms .. start + length - 1; last_ms:
                                         the latest time taken */
    uint32_t pending;                 /* pend[0 .. pending) wait to be applied */
    struct Lock *hot;                 /* the Lock that gates it, or NULL (the lock holds it:
                                         a gated period is never freed) */
    _Alignas(64) u64 pend[PERIOD_PENDING]; /* the pending trades' prices (a gate writes them
                                         two at a time, pend[2k] and pend[2k + 1]: in one line) */
    long long pend_id;                /* the id of pend[0]; pend[i]'s is pend_id + i */
    long long count, open_id, close_id;  /* of the trades applied */
    u64 open_price, close_price, high, low;
    u64 up_last, down_last;           /* each edge's last price */
    uint32_t up_n, down_n;            /* each edge's levels */
    LevelList up, down;               /* trades above high / below low: appended, no lookup */
    PairMap levels;
    Run *runs;                        /* what folds and packed levels add: ascending runs, */
    size_t nruns, capruns;            /* each at most half the one before, or a chain (see
                                         _candles.c) */
    /* the gains: the levels taken one trade at a time since take_gains, in the order they
       came (a run at one price: one entry), kept once keep_gains is called (a minute stored
       as deltas); a copy keeps none */
    LevelList gains;
    size_t ngains;
    int keeps_gains;
    uint32_t gains_up;                /* and up.v[gains_up .. up_n): a new high is a gain
                                         already in its edge, not written twice */
} Period;

extern PyTypeObject PeriodType;

/* PyPeriod.add: times trades at price, ids lo..hi, applied now (the pending ones first); 0, or
 * -1 with MemoryError set */
int period_add(Period *p, long long lo, long long hi, u64 price, long long times);

/* the pending trades applied: 0, or -1 with MemoryError set and nothing changed.
 * O(PERIOD_PENDING) */
int period_settle(Period *p);

/* -- the per-trade path (_hotpath.c) --------------------------------------------------------- */

/* threading.Lock's semantics for a symbol's stats, and the gate of the symbol's current
 * minute: the one line a live trade reads and writes for the minute (its time bounds, its
 * latest time, the count of its pending trades and the latest of them), so that a trade
 * touches of the minute only the pending entries it writes, and those every second trade:
 * a trade's price is held in `held` until the next one, and the two are written to the
 * minute's pending list together (each line of the list is then fetched for two trades'
 * entries, not one: a line a trade is what the candles cost a busy market most). The lock
 * holds the Period it gates; the per-trade path gates stats.minute whenever it finds another
 * there (lock_gate), and ungates the one before, whose own fields then take the count, the
 * held price and the latest time back. 64-byte aligned, one line.
 *
 * Whoever takes or gives the lock holds the interpreter (the GIL), so `locked` alone says
 * who owns it, and the uncontended take and give of a trade read and write this line only:
 * no atomic instruction, so the trade's stores (its pending entry) drain in the background
 * rather than at the lock. Only a thread that finds it taken sleeps: it joins `queue`, on a
 * wake-up of its own, counted in `waiters`. A release that finds the queue not empty hands
 * the lock to its oldest thread (it stays locked; that thread's wake-up is posted), so a
 * thread that gives the lock and takes it again at once, holding the interpreter, cannot
 * starve one asleep (a free-threaded build keeps `lock`, the lock itself, instead). */
struct LockWaiter;
typedef struct Lock {
    PyObject_HEAD
#ifdef Py_GIL_DISABLED
    PyThread_type_lock lock;          /* held while locked */
#else
    struct LockWaiter *queue;         /* the threads asleep waiting for it, oldest first */
#endif
    Period *gate;                     /* the minute gated (a reference), or NULL */
    long long gate_lo;                /* it takes times gate_lo .. gate_lo + gate_span - 1 */
    long long gate_last;              /* its latest time taken */
    uint32_t gate_span;
    char locked;
    uint8_t waiters;                  /* threads asleep waiting for it (saturating) */
    uint8_t noted;                    /* the gate's pending trades: gate->pend[0 .. noted), */
    uint8_t holds;                    /* then `held` where this is 1 (never while ungated:
                                         lock_ungate writes it to the list) */
    u64 held;
} Lock;

_Static_assert(sizeof(PyObject) != 16 || sizeof(Lock) == 64, "a lock and its gate: one line");
_Static_assert(PERIOD_PENDING <= UINT8_MAX, "a gate's pending count: a byte");

/* the pending trades of p, wherever they are counted. O(1) */
static inline uint32_t period_pending(const Period *p) {
    return p->hot ? (uint32_t)p->hot->noted + p->hot->holds : p->pending;
}

/* p's pending trades all in its own list (the price its gate holds written to it), before
   the list is read. O(1) */
static inline void period_gather_pending(Period *p) {
    struct Lock *l = p->hot;
    if (l && l->holds) {
        p->pend[l->noted++] = l->held;
        l->holds = 0;
    }
}

/* where the latest time p took is kept: the gate's while a lock gates it. O(1) */
static inline long long *period_last_at(Period *p) {
    return p->hot ? &p->hot->gate_last : &p->last_ms;
}

/* the span of times a gate of p takes, from p's lo_ms to its end (at most UINT32_MAX: a
   longer period's trades beyond it take the general path). O(1) */
static inline uint32_t gate_span(const Period *p) {
    long long end = p->start > LLONG_MAX - p->length ? LLONG_MAX : p->start + p->length;
    if (end <= p->lo_ms) return 0;
    unsigned long long span = (unsigned long long)end - (unsigned long long)p->lo_ms;
    return span > UINT32_MAX ? UINT32_MAX : (uint32_t)span;
}

/* p gated by l (ungating what l gated before, and taking p from any lock that gated it):
 * p's pending count and latest time move to l, which takes a reference to it. O(1) */
void lock_gate(struct Lock *l, Period *p);

/* what l gates given back: its pending count and latest time, and l's reference. O(1) */
void lock_ungate(struct Lock *l);

extern PyTypeObject LockType, IndexType, TradePathType;
int hotpath_ready(PyObject *module);

/* a delta's levels as stored, and back (_candles.c; candles.compact_levels' twins) */
PyObject *compact_levels(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *expand_levels(PyObject *module, PyObject *arg);
/* two lists of levels as one, the later's counts over the earlier's (_candles.c; a symbol's
   batches in the store: store.merge_levels' twin) */
PyObject *merge_levels(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
/* the store's candle records of a snapshot's batch (_candles.c; store.py_candle_items' twin) */
PyObject *candle_batch(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

/* zlib's crc32 and adler32, bit for bit (perfect_hash.py hashes with zlib's) */
uint32_t ms_crc32(uint32_t crc, const unsigned char *s, size_t n);
uint32_t ms_adler32(const unsigned char *s, size_t n);

#endif
