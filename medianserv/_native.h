/* medianserv._native: the compiled twins of medianserv's pure modules, one extension module.
 *
 *   _median.c   the twin of median.py (PyRunningMedian): type Median
 *   _hotpath.c  the twin of hotpath.py (the per-trade path): types Lock, Index, TradePath
 *   _candles.c  the twin of candles.py's PyPeriod: type Period
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

/* -- the median (_median.c) ---------------------------------------------------------------- */

/* price -> count, open addressing, linear probing, backward-shift deletion; a slot is free
 * when its count is 0 (every price 0 .. 2^64 - 1 is a valid key) */
typedef struct {
    u64 *keys;
    i64 *vals;
    size_t cap, used;   /* cap a power of two (or 0), used <= cap / 2 */
    int shift;          /* 64 - log2(cap) */
} Map;

/* a Map that grows without a stall: when `cur` is full it becomes `old`, a table twice the
 * size takes its place, and every put moves a few of `old`'s entries over (Redis's
 * incremental rehash); a key is only ever looked up in `cur`, so an entry of `old` whose key
 * `cur` holds already is older and dropped. A large table's successor is mapped before it
 * is needed and its pages touched a few at a time, and a large old one, once moved, is kept
 * until the record is handed over and freed then by whoever took it, off the lock: no put
 * pays for zeroing or unmapping megabytes. */
typedef struct {
    Map cur, old;
    size_t cursor;      /* old's slots below it are moved */
    Map next;           /* a large cur's successor, mapped early and touched a page at a time */
    size_t ready;       /* bytes of next's two arrays touched so far */
    Map *dead;          /* large olds, moved: unmapped with the record, off the lock */
    size_t ndead;
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

/* -- median candles (_candles.c) ------------------------------------------------------------ */

/* price -> trades of one period, each price beside its count (a LevelCount, _select.h: one
 * cache line holds four, so a level put misses once, not once for the key and once for the
 * count); open addressing, linear probing, a slot free when its count is 0 */
typedef struct {
    LevelCount *slots;
    size_t cap, used;   /* cap a power of two (or 0), used <= cap / 2 */
    int shift;          /* 64 - log2(cap) */
} PairMap;

/* an ascending array of distinct levels */
typedef struct {
    LevelCount *v;
    size_t n;
} Run;

/* live trades a period holds back before it applies them: a live trade of the current minute
 * appends its price and id to this short list (one of the period's own lines) and touches
 * nothing else of the period but its first line; the list is applied all at once (its edges,
 * its map, each slot fetched ahead, its fields) when it is full or the period is read */
#define PERIOD_PENDING 16

/* a live trade waiting in a period's pending list */
typedef struct {
    u64 price;
    long long id;
} PendTrade;

/* levels appended in the order they came, room for cap; how many is kept beside it. An edge:
 * each level beyond every one before (a new high, or a new low), its length and last price
 * among the period's fields (Period.up_n, .up_last ...); or a minute's gains */
typedef struct {
    LevelCount *v;
    size_t cap;
} LevelList;

/* one period's trades (medianserv.candles.PyPeriod). What a live trade reads and writes comes
 * first, in one cache line (the object is 64-byte aligned: see period_alloc), then the pending
 * list, then what applying it, folds, copies and readers touch. Its trades are those applied
 * (count, the fields, the levels of the edges, the map and the runs; a price may be in
 * several) and the pending ones; every reader applies the pending ones first (count adds them
 * up instead), and every reader of the levels then compacts them into one run */
typedef struct {
    PyObject_HEAD                     /* line one */
    long long start, length;
    long long lo_ms, last_ms;         /* add_in takes times lo_ms .. start + length - 1; last_ms:
                                         the latest time taken */
    uint32_t pending;                 /* pend[0 .. pending) wait to be applied */
    _Alignas(64) PendTrade pend[PERIOD_PENDING];
    long long count, open_id, close_id;  /* of the trades applied */
    u64 open_price, close_price, high, low;
    u64 up_last, down_last;           /* each edge's last price */
    uint32_t up_n, down_n;            /* each edge's levels */
    LevelList up, down;               /* trades above high / below low: appended, no lookup */
    PairMap levels;
    Run *runs;                        /* what folds and packed levels add: ascending runs, */
    size_t nruns, capruns;            /* each at most half the one before (see _candles.c) */
    /* the gains: the levels taken one trade at a time since take_gains, in the order they
       came (a run at one price: one entry), kept once keep_gains is called (a minute stored
       as deltas); a copy keeps none */
    LevelList gains;
    size_t ngains;
    int keeps_gains;
} Period;

#define PERIOD_HOT offsetof(Period, pend)

extern PyTypeObject PeriodType;

/* PyPeriod.add: times trades at price, ids lo..hi, applied now (the pending ones first); 0, or
 * -1 with MemoryError set */
int period_add(Period *p, long long lo, long long hi, u64 price, long long times);

/* makes sure period_note cannot fail: a full pending list is applied now; 0, or -1 with
 * MemoryError set and nothing changed. O(PERIOD_PENDING) when it applies, else O(1) */
int period_prepare(Period *p);

/* a live trade (id, price) into the pending list, which has room (period_prepare). O(1): it
 * writes one entry and the count of them, the period's only lines it touches */
static inline void period_note(Period *p, long long id, u64 price) {
    p->pend[p->pending++] = (PendTrade){price, id};
}

/* -- the per-trade path (_hotpath.c) --------------------------------------------------------- */

extern PyTypeObject LockType, IndexType, TradePathType;
int hotpath_ready(PyObject *module);

/* zlib's crc32 and adler32, bit for bit (perfect_hash.py hashes with zlib's) */
uint32_t ms_crc32(uint32_t crc, const unsigned char *s, size_t n);
uint32_t ms_adler32(const unsigned char *s, size_t n);

#endif
