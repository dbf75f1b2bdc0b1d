/* The compiled twin of medianserv.candles.PyPeriod: one period's open, close, extremes, count
 * and levels (price -> trades). Method for method the same; the per-trade path (_hotpath.c)
 * notes a trade of the current minute.
 *
 * A live trade is only noted: its price goes into a pending list of PERIOD_PENDING (its id
 * follows the list's first one's: the per-trade path takes only the next id, and the book
 * settles the list before it counts a next id elsewhere, PyPeriod.settle), and it touches
 * nothing of the period but the list's entries: the minute's bounds, its latest time, the
 * count of pending trades and the latest of them are kept, while the minute is current, in
 * the line of the symbol's Lock that gates it (_native.h), which the trade takes anyway, and
 * two trades' prices are written to the list at once (period_gather_pending writes a price
 * the gate still holds before the list is read). The list is applied
 * all at once when it is full or the period is read (period_settle; count adds the pending
 * ones up instead), in the order the trades came, as each would have been applied alone: so
 * the fields and levels of a cold symbol's minute are read and written once in PERIOD_PENDING
 * (63) trades, not once a trade. A list whose every price lies within the minute's extremes
 * (no new high or low: the usual list of a minute that has traded a while) is summed by
 * price first, and the map probed once a distinct price rather than twice a trade
 * (settle_inside): a walk over 21 levels probes it 21 times a list, not 126.
 *
 * Levels come two ways, each kept as suits it. One trade at a time (the pending list applied,
 * a late trade): a trade above every price the period holds (a new high) is appended to an
 * ascending edge, one below them all (a new low) to a descending one, with no lookup, as they
 * are distinct by construction (a trending market's minute, whose every level is new, costs a
 * sequential append a level); any other into a hash map (PairMap), every slot of a list's
 * trades fetched before the first is written. Many at once, already in order
 * (a retired minute folded into its hour and day, a stored period restored): as an ascending
 * run, merged with the run before it while that one is at most twice as long, so a period
 * holds O(log L) runs and each level is merged O(log L) times, every merge a sequential pass
 * (a day takes 1,440 minutes without a hash map's miss per level, at 16 bytes a level).
 * A fold of SHARE_MIN levels or more copies none: the period takes the other's runs as they
 * are, shared (counted; a shared array is never written, and the last run to let it go frees
 * it), so a flood's minute, its hour and its day hold one array, and its roll costs no copy
 * and no new page. A run that lies wholly above the newest (a trend's minute folded into its
 * hour and day) is left beside it where either is shared (a *chain*: an hour of a trend's
 * minutes is a chain of theirs, read in order without being compacted, and a day takes the
 * chain as it is), else appended to it, copied once, its room grown by half again when
 * short: a slow trend's hour is one run, each level copied about twice in all. A reader of
 * the levels compacts all of them into one run first, a chain merged in one pass (a period
 * whose every trade was a new high: its edge becomes the run as it is).
 *
 * A minute stored as deltas (too many levels to write whole at every snapshot) also keeps its
 * gains once told to (keep_gains): each trade applied appends its price to a list (a run at
 * one price: one entry), which take_gains sums, sorts and empties for the snapshot; but a new
 * high is a gain its edge holds already (from gains_up on), so a trending minute writes each
 * level once, and its gains are a slice of its edge, in order. */
#include "_native.h"
#include "structmember.h"

/* -- the levels: PairMap ---------------------------------------------------------------------- */

static inline size_t pm_home(const PairMap *m, u64 price) {
    return (size_t)((price * 0x9E3779B97F4A7C15ULL) >> m->shift);
}

/* the slot that holds price, or the free one where it would go (the map has one free) */
static inline size_t pm_slot(const PairMap *m, u64 price) {
    size_t mask = m->cap - 1, j = pm_home(m, price);
    while (m->slots[j].count && m->slots[j].price != price) j = (j + 1) & mask;
    return j;
}

/* price's count grows by k > 0 (inserted if new); the map has room (pm_reserve) */
static inline void pm_put(PairMap *m, u64 price, i64 k) {
    LevelCount *s = &m->slots[pm_slot(m, price)];
    if (!s->count) {
        s->price = price;
        m->used++;
    }
    s->count += k;
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
    LevelCount *slots = calloc(cap, sizeof *slots);
    if (!slots) return -1;
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

/* whether price is a level of the map. O(1) expected */
static inline int pm_has(const PairMap *m, u64 price) {
    return m->cap && m->slots[pm_slot(m, price)].count;
}

/* n levels added, every slot fetched before the first is written, so their misses overlap;
   the map has room for them */
static void pm_put_batch(PairMap *m, const LevelCount *v, size_t n) {
    for (size_t i = 0; i < n; i++) __builtin_prefetch(&m->slots[pm_home(m, v[i].price)], 1);
    for (size_t i = 0; i < n; i++) pm_put(m, v[i].price, v[i].count);
}

/* -- the levels: edges ------------------------------------------------------------------------ */

enum { TO_MAP, TO_UP, TO_DOWN };

/* the most levels an edge holds (its count is 32 bits); a trade beyond a full edge goes into
   the map, which takes any level */
#define EDGE_MAX UINT32_MAX

/* what routes a trade: the fields it reads, apart from the period (a dry run counts the room
   a list of trades needs without changing the period) */
typedef struct {
    long long count;
    u64 high, low, up_last, down_last;
    uint32_t up_n, down_n;
} Route;

/* where a trade at price goes: an edge if it is beyond every price held and the edge's own
   last level (so the edge stays strictly monotonic whatever the fields say), else the map (a
   trade at the edge's last price again too); r updated as applying it updates the period */
static inline int route_step(Route *r, u64 price, long long times) {
    int to = TO_MAP;
    if ((!r->count || price > r->high) && (!r->up_n || price > r->up_last) && r->up_n < EDGE_MAX) {
        to = TO_UP;
        r->up_n++;
        r->up_last = price;
    } else if (price < r->low && (!r->down_n || price < r->down_last) && r->down_n < EDGE_MAX) {
        to = TO_DOWN;
        r->down_n++;
        r->down_last = price;
    }
    if (!r->count) r->high = r->low = price;
    else if (price > r->high) r->high = price;
    else if (price < r->low) r->low = price;
    r->count += times;
    return to;
}

static inline Route route_of(const Period *p) {
    return (Route){p->count, p->high, p->low, p->up_last, p->down_last, p->up_n, p->down_n};
}

static inline void route_store(Period *p, const Route *r) {
    p->count = r->count;
    p->high = r->high;
    p->low = r->low;
    p->up_last = r->up_last;
    p->down_last = r->down_last;
    p->up_n = r->up_n;
    p->down_n = r->down_n;
}

/* room for `more` levels beyond list e's n: 0, or -1 with MemoryError set and nothing
   changed */
static int list_reserve(LevelList *e, size_t n, size_t more) {
    if (n + more <= e->cap) return 0;
    size_t cap = e->cap ? e->cap : 16;
    while (cap < n + more) cap *= 2;
    LevelCount *v = realloc(e->v, cap * sizeof *v);
    if (!v) {
        PyErr_NoMemory();
        return -1;
    }
    e->v = v;
    e->cap = cap;
    return 0;
}

/* the new levels period_reserve counts, in a PairMap of their own on the stack: twice a
   pending list, a power of two, so it stays at most half full as a PairMap does */
#define NEW_SET_BITS 7
#define NEW_SET (1 << NEW_SET_BITS)
_Static_assert(NEW_SET >= 2 * PERIOD_PENDING, "a set of new levels half free at most");

/* room for trades at the prices of v (n <= PERIOD_PENDING of them, in order): a dry run of
   their routes; 0, or -1 with MemoryError set (nothing changed but room) */
static int period_reserve(Period *p, const u64 *v, size_t n, long long times) {
    Route r = route_of(p);
    /* the map grows by the levels it takes, not by its trades (a minute of 20 levels and 63
       trades a list keeps 64 slots, not 256): the distinct prices routed to it that it lacks
       (each slot fetched ahead, for the apply too), gathered in `fresh`, emptied when the
       first comes */
    PairMap *m = &p->levels;
    if (m->cap)
        for (size_t i = 0; i < n; i++) __builtin_prefetch(&m->slots[pm_home(m, v[i])], 1);
    LevelCount room[NEW_SET];
    PairMap fresh = {room, NEW_SET, 0, 64 - NEW_SET_BITS};
    for (size_t i = 0; i < n; i++) {
        if (route_step(&r, v[i], times) != TO_MAP || pm_has(m, v[i])) continue;
        if (!fresh.used) memset(room, 0, sizeof room);
        pm_put(&fresh, v[i], 1);
    }
    size_t to_map = fresh.used;
    size_t ups = r.up_n - p->up_n; /* new highs: gains their edge holds */
    if ((p->keeps_gains && list_reserve(&p->gains, p->ngains, n - ups) < 0) ||
        list_reserve(&p->up, p->up_n, ups) < 0 ||
        list_reserve(&p->down, p->down_n, r.down_n - p->down_n) < 0)
        return -1;
    if (to_map && pm_reserve(&p->levels, to_map) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* the open and close of trades at price, ids lo..hi, taken in (first: the period held none) */
static inline void period_fields(Period *p, int first, long long lo, long long hi, u64 price) {
    if (first) {
        p->open_id = lo;
        p->close_id = hi;
        p->open_price = p->close_price = price;
        return;
    }
    if (lo < p->open_id) {
        p->open_id = lo;
        p->open_price = price;
    }
    if (hi > p->close_id) {
        p->close_id = hi;
        p->close_price = price;
    }
}

/* trades at the prices of v applied (n <= PERIOD_PENDING, in order; times trades each, the
   i-th of ids id + i .. id + i + span, so span is 0 where n > 1): edges, map, fields; the room
   reserved (period_reserve) */
static void period_apply(Period *p, const u64 *v, long long id, size_t n, long long times,
                         long long span) {
    LevelCount batch[PERIOD_PENDING];
    size_t nb = 0;
    Route r = route_of(p); /* the routing fields, stored back once at the end */
    for (size_t i = 0; i < n; i++) {
        u64 price = v[i];
        long long lo = id + (long long)i;
        period_fields(p, !r.count, lo, lo + span, price);
        switch (route_step(&r, price, times)) {
        case TO_UP: /* (a gain too, where gains are kept: up.v[gains_up ..]) */
            p->up.v[r.up_n - 1] = (LevelCount){price, times};
            continue;
        case TO_DOWN:
            p->down.v[r.down_n - 1] = (LevelCount){price, times};
            break;
        default: /* the map's, in a batch (a run at one price: one level of it) */
            if (nb && batch[nb - 1].price == price) batch[nb - 1].count += times;
            else batch[nb++] = (LevelCount){price, times};
        }
        if (p->keeps_gains) { /* the room reserved */
            LevelCount *last = p->ngains ? &p->gains.v[p->ngains - 1] : NULL;
            if (last && last->price == price) last->count += times;
            else p->gains.v[p->ngains++] = (LevelCount){price, times};
        }
    }
    route_store(p, &r);
    pm_put_batch(&p->levels, batch, nb);
}

/* the gains in the ascending edge moved to the gains list, before the edge is emptied: 0, or
   -1 with MemoryError set and nothing changed */
static int gains_off_edge(Period *p) {
    if (!p->keeps_gains || p->up_n <= p->gains_up) return 0;
    size_t n = p->up_n - p->gains_up;
    if (list_reserve(&p->gains, p->ngains, n) < 0) return -1;
    memcpy(p->gains.v + p->ngains, p->up.v + p->gains_up, n * sizeof *p->gains.v);
    p->ngains += n;
    p->gains_up = p->up_n;
    return 0;
}

/* the usual pending list of a minute that has traded a while (a market walking over its
   levels, or scattered within them): every price within the period's extremes, so no trade
   is a new high or low and each goes into the map. The list is summed by price first, in a
   PairMap of its own on the stack (NEW_SET slots: at most half full), then the period's map
   is probed once a distinct price, for its room and for the put, where applying the trades
   one by one probes it twice a trade; the fields are left as that leaves them (the ids run
   on from pend_id, so the first may be the open and the last the close). 1 when applied; 0
   when the list is not such a one (a price outside the extremes, an empty period, or a
   minute keeping its gains, whose order counts), nothing changed; -1 with MemoryError set,
   nothing changed but room. O(n) */
static int settle_inside(Period *p, uint32_t n) {
    const u64 *v = p->pend;
    u64 low = p->low, high = p->high;
    if (!p->count || p->keeps_gains || v[0] < low || v[0] > high) return 0; /* (a trend) */
    LevelCount room[NEW_SET], sums[PERIOD_PENDING];
    unsigned char at[PERIOD_PENDING]; /* the slots of sum taken, in order */
    memset(room, 0, sizeof room);
    PairMap sum = {room, NEW_SET, 0, 64 - NEW_SET_BITS};
    size_t nd = 0;
    for (uint32_t i = 0; i < n; i++) {
        u64 price = v[i];
        if (price < low || price > high) return 0;
        size_t j = pm_slot(&sum, price);
        if (!room[j].count) {
            room[j].price = price;
            at[nd++] = (unsigned char)j;
        }
        room[j].count++;
    }
    PairMap *m = &p->levels;
    for (size_t k = 0; k < nd; k++) {
        sums[k] = room[at[k]];
        if (m->cap) __builtin_prefetch(&m->slots[pm_home(m, sums[k].price)], 1);
    }
    size_t more = 0;
    for (size_t k = 0; k < nd; k++) more += !pm_has(m, sums[k].price);
    if (more && pm_reserve(m, more) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    long long first = p->pend_id, last = first + (long long)n - 1;
    period_fields(p, 0, first, first, v[0]); /* the first may be the open, */
    period_fields(p, 0, last, last, v[n - 1]); /* the last the close */
    p->count += n;
    pm_put_batch(m, sums, nd); /* (fetched again: a map grown moved them) */
    return 1;
}

int period_settle(Period *p) {
    period_gather_pending(p);
    uint32_t n = period_pending(p);
    if (!n) return 0;
    int inside = settle_inside(p, n);
    if (inside < 0) return -1;
    if (!inside) {
        if (period_reserve(p, p->pend, n, 1) < 0) return -1;
        period_apply(p, p->pend, p->pend_id, n, 1, 0);
    }
    if (p->hot) p->hot->noted = 0; /* counted where the gate counts them */
    else p->pending = 0;
    return 0;
}

int period_add(Period *p, long long lo, long long hi, u64 price, long long times) {
    if (period_settle(p) < 0 || period_reserve(p, &price, 1, times) < 0) return -1;
    period_apply(p, &price, lo, 1, times, hi - lo);
    return 0;
}

/* -- the levels: runs ----------------------------------------------------------------------- */

/* v sorted by price and equal prices summed, in place; the distinct prices left */
static size_t sort_levels(LevelCount *v, size_t n) {
    int sorted = 1;
    for (size_t i = 1; i < n && sorted; i++) sorted = v[i - 1].price < v[i].price;
    if (sorted) return n;
    sort_by_price(v, n);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (k && v[k - 1].price == v[i].price) v[k - 1].count += v[i].count;
        else v[k++] = v[i];
    }
    return k;
}

/* the union of run a and the chain of nr runs (each wholly above the one before), equal prices
   summed, into out (room for all): its length. One pass, however many runs the chain holds */
static size_t merge_chain(const LevelCount *a, size_t na, const Run *runs, size_t nr,
                          LevelCount *out) {
    size_t i = 0, k = 0;
    for (size_t r = 0; r < nr; r++) {
        const LevelCount *b = runs[r].v;
        size_t j = 0, nb = runs[r].n;
        while (i < na && j < nb) {
            if (a[i].price < b[j].price) out[k++] = a[i++];
            else if (b[j].price < a[i].price) out[k++] = b[j++];
            else {
                out[k] = a[i++];
                out[k++].count += b[j++].count;
            }
        }
        if (j < nb) memcpy(out + k, b + j, (nb - j) * sizeof *out);
        k += nb - j;
    }
    if (i < na) memcpy(out + k, a + i, (na - i) * sizeof *out);
    return k + na - i;
}

/* the union of runs a and b, equal prices summed, into out (room for na + nb): its length */
static size_t merge_runs(const LevelCount *a, size_t na, const LevelCount *b, size_t nb,
                         LevelCount *out) {
    const Run one = {(LevelCount *)b, nb, nb, NULL};
    return merge_chain(a, na, &one, 1, out);
}

/* run r's array let go: freed unless other runs share it still; r emptied */
static void run_release(Run *r) {
    if (r->refs) {
        if (__atomic_sub_fetch(r->refs, 1, __ATOMIC_ACQ_REL)) {
            *r = (Run){0};
            return;
        }
        free(r->refs);
    }
    free(r->v);
    *r = (Run){0};
}

/* whether run b lies wholly above run a (the pair is a chain) */
static inline int runs_chain(const Run *a, const Run *b) {
    return a->v[a->n - 1].price < b->v[0].price;
}

/* room for `more` runs beyond p's: 0, or -1 (memory) with nothing changed */
static int runs_room(Period *p, size_t more) {
    if (p->nruns + more <= p->capruns) return 0;
    size_t room = p->capruns ? 2 * p->capruns : 4;
    while (room < p->nruns + more) room *= 2;
    Run *runs = realloc(p->runs, room * sizeof *runs);
    if (!runs) return -1;
    p->runs = runs;
    p->capruns = room;
    return 0;
}

/* the n ascending levels at src appended to run a (its own), whose every level lies below
   them; room grown by half again when short. 0, or -1 (memory) with a unchanged. O(n)
   amortised */
static int run_extend(Run *a, const LevelCount *src, size_t n) {
    if (a->cap - a->n < n) {
        size_t cap = a->cap + a->cap / 2;
        if (cap < a->n + n) cap = a->n + n;
        LevelCount *v = realloc(a->v, cap * sizeof *v);
        if (!v) return -1;
        a->v = v;
        a->cap = cap;
    }
    memcpy(a->v + a->n, src, n * sizeof *src);
    a->n += n;
    return 0;
}

/* the last two runs merged while the one before the last is at most twice the last (the last
   appended to it where it lies wholly above); a chain of which either run is shared is left
   as it is (a shared array is never copied to be extended). O(their levels) */
static void runs_settle(Period *p) {
    while (p->nruns >= 2 && p->runs[p->nruns - 2].n <= 2 * p->runs[p->nruns - 1].n) {
        Run *a = &p->runs[p->nruns - 2], *b = a + 1;
        if (runs_chain(a, b)) { /* b above a (a trend's): a grows by b */
            if (a->refs || b->refs) break;
            if (run_extend(a, b->v, b->n) < 0) break; /* left unmerged: the same levels */
            free(b->v);
            p->nruns--;
            continue;
        }
        LevelCount *out = malloc((a->n + b->n) * sizeof *out);
        if (!out) break;
        size_t k = merge_runs(a->v, a->n, b->v, b->n, out);
        run_release(a);
        run_release(b);
        LevelCount *fit = k < a->n + b->n ? realloc(out, k * sizeof *out) : NULL;
        *a = (Run){fit ? fit : out, k, k, NULL};
        p->nruns--;
    }
}

/* the newest run is the period's own and lies wholly below the n levels at src (ascending,
   distinct): the place to append them, copied once and merged with nothing */
static inline int runs_below(const Period *p, const LevelCount *src, size_t n) {
    const Run *top = p->nruns ? &p->runs[p->nruns - 1] : NULL;
    return n && top && !top->refs && top->v[top->n - 1].price < src[0].price;
}

/* the n levels at src appended to the newest run, which lies wholly below them (runs_below),
   and the runs settled. 0, or -1 (memory) with nothing changed */
static int runs_extend_top(Period *p, const LevelCount *src, size_t n) {
    if (run_extend(&p->runs[p->nruns - 1], src, n) < 0) return -1;
    runs_settle(p);
    return 0;
}

/* the period takes run v (ascending, distinct, its own allocation, room for cap) as its
   newest: appended to the newest where it lies wholly above it (v freed), else a run of its
   own; then the last two merged while the one before the last is at most twice the last
   (runs_settle). 0, or -1 (memory) with v not taken. O(n) amortised, each level merged
   O(log L) times */
static int runs_push(Period *p, LevelCount *v, size_t n, size_t cap) {
    if (!n) {
        free(v);
        return 0;
    }
    if (runs_below(p, v, n)) {
        if (runs_extend_top(p, v, n) < 0) return -1;
        free(v);
        return 0;
    }
    if (runs_room(p, 1) < 0) return -1;
    p->runs[p->nruns++] = (Run){v, n, cap, NULL};
    runs_settle(p);
    return 0;
}

/* the period takes a copy of the n levels at src (ascending, distinct): appended straight to
   its newest run where they lie wholly above it (no copy in between: a trend's minute folded
   into its hour and day), else copied to a run of their own (runs_push). 0, or -1 (memory)
   with nothing changed */
static int runs_copy(Period *p, const LevelCount *src, size_t n) {
    if (!n) return 0;
    if (runs_below(p, src, n)) return runs_extend_top(p, src, n);
    LevelCount *v = malloc(n * sizeof *v);
    if (!v) return -1;
    memcpy(v, src, n * sizeof *v);
    if (runs_push(p, v, n, n) < 0) {
        free(v);
        return -1;
    }
    return 0;
}

/* whether p's every level is in its runs and they form a chain (each wholly above the one
   before): what a reader can take in order without compacting them (its pending trades
   applied first) */
static int period_chain(const Period *p) {
    if (p->levels.used || p->up_n || p->down_n || !p->nruns) return 0;
    for (size_t r = 1; r < p->nruns; r++)
        if (!runs_chain(&p->runs[r - 1], &p->runs[r])) return 0;
    return 1;
}

/* the fewest levels a fold shares rather than copies: below it a copy costs less than the
   run a share leaves (a slow trend's minutes extend their hour's run in place) */
#define SHARE_MIN 1024

/* p takes every run of o (a chain: period_chain), shared, not copied, each settled in turn as
   a run pushed is (a trend's: kept as a chain; else merged by the usual rule). 0, or -1
   (memory) with nothing changed. O(runs), plus the merges */
static int runs_share_all(Period *p, Period *o) {
    if (runs_room(p, o->nruns) < 0) return -1;
    for (size_t r = 0; r < o->nruns; r++) { /* counts made first: nothing fails after them */
        if (o->runs[r].refs) continue;
        if (!(o->runs[r].refs = malloc(sizeof *o->runs[r].refs))) return -1; /* (1: o's alone) */
        *o->runs[r].refs = 1;
    }
    for (size_t r = 0; r < o->nruns; r++) {
        Run *src = &o->runs[r];
        __atomic_add_fetch(src->refs, 1, __ATOMIC_RELAXED);
        p->runs[p->nruns++] = (Run){src->v, src->n, src->n, src->refs};
        runs_settle(p);
    }
    return 0;
}

/* the levels of the map copied to out, which has room for levels.used of them; how many */
static size_t loose_levels(const Period *p, LevelCount *out) {
    size_t n = 0;
    for (size_t i = 0; i < p->levels.cap; i++)
        if (p->levels.slots[i].count) out[n++] = p->levels.slots[i];
    return n;
}

/* the union of ascending a and descending b (read from its end), equal prices summed, into
   out (room for na + nb): its length */
static size_t merge_runs_down(const LevelCount *a, size_t na, const LevelCount *b, size_t nb,
                              LevelCount *out) {
    size_t i = 0, j = nb, k = 0;
    while (i < na && j) {
        if (a[i].price < b[j - 1].price) out[k++] = a[i++];
        else if (b[j - 1].price < a[i].price) out[k++] = b[--j];
        else {
            out[k] = a[i++];
            out[k++].count += b[--j].count;
        }
    }
    while (i < na) out[k++] = a[i++];
    while (j) out[k++] = b[--j];
    return k;
}

/* every level of p gathered into one ascending run of its own allocation (*n levels; NULL
   when none), p's map, edges and runs left as they are; p's pending trades applied first.
   One allocation, twice the levels' room: each piece is merged from one half into the
   other. NULL with MemoryError set when memory ran out. O(m log m + L) */
static LevelCount *period_gather(Period *p, size_t *n) {
    *n = 0;
    if (period_settle(p) < 0) return NULL;
    size_t m = p->levels.used, total = m + p->up_n + p->down_n;
    for (size_t r = 0; r < p->nruns; r++) total += p->runs[r].n;
    if (!total) return NULL;
    LevelCount *buf = malloc(2 * total * sizeof *buf);
    if (!buf) {
        PyErr_NoMemory();
        return NULL;
    }
    LevelCount *acc = buf, *spare = buf + total, *t;
    size_t k = m ? sort_levels(acc, loose_levels(p, acc)) : 0;
    if (p->up_n) {
        k = merge_runs(acc, k, p->up.v, p->up_n, spare);
        t = acc, acc = spare, spare = t;
    }
    if (p->down_n) {
        k = merge_runs_down(acc, k, p->down.v, p->down_n, spare);
        t = acc, acc = spare, spare = t;
    }
    for (size_t r = p->nruns; r > 0;) { /* newest first, a chain in one pass */
        size_t s = r - 1;
        while (s && runs_chain(&p->runs[s - 1], &p->runs[s])) s--;
        k = merge_chain(acc, k, p->runs + s, r - s, spare);
        t = acc, acc = spare, spare = t;
        r = s;
    }
    if (acc != buf) memcpy(buf, acc, k * sizeof *buf);
    *n = k;
    return buf;
}

/* the ascending edge, holding every level of p (no map, no run, no descending edge: a
   period whose every trade was a new high, as a trending minute's), becomes its run as it is:
   no copy, no sort. 0, or -1 with MemoryError set and nothing changed. (A descending edge
   never holds every level: a period's first trade goes up, and a compaction leaves a run.) */
static int up_to_run(Period *p) {
    if (gains_off_edge(p) < 0) return -1;
    size_t n = p->up_n, cap = p->up.cap;
    LevelCount *v = p->up.v, *fit = n < cap ? realloc(v, n * sizeof *v) : NULL;
    if (fit) v = fit, cap = n; /* the spare room back */
    p->up = (LevelList){0};
    p->up_n = p->gains_up = 0;
    if (runs_push(p, v, n, cap) < 0) { /* (runs had no room for one) */
        p->up = (LevelList){v, cap};
        p->up_n = p->gains_up = (uint32_t)n;
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* every level (the pending trades applied, then edges, map, runs) into one run, the map and
   edges emptied: 0, or -1 with MemoryError set and nothing changed but the pending trades
   applied. O(m log m + L) for m the levels of the map, L all of them */
static int period_compact(Period *p) {
    if (period_settle(p) < 0) return -1;
    if (!p->levels.used && !p->up_n && !p->down_n && p->nruns <= 1) return 0;
    if (!p->levels.used && !p->nruns && !p->down_n) return up_to_run(p); /* (up_n > 0) */
    if (gains_off_edge(p) < 0) return -1;
    size_t n;
    LevelCount *acc = period_gather(p, &n);
    if (!acc) return -1; /* (levels held: none is gathered only when memory ran out) */
    LevelCount *fit = realloc(acc, n * sizeof *acc); /* the spare half back */
    if (fit) acc = fit;
    for (size_t r = 0; r < p->nruns; r++) run_release(&p->runs[r]);
    p->nruns = 0;
    free(p->levels.slots);
    p->levels = (PairMap){0};
    free(p->up.v);
    free(p->down.v);
    p->up = p->down = (LevelList){0};
    p->up_n = p->down_n = p->gains_up = 0;
    if (runs_push(p, acc, n, n) < 0) { /* runs had room for one: not reached */
        free(acc);
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* the period's levels, compacted: one ascending run (NULL, 0 when it holds none); NULL with
   MemoryError set when memory ran out */
static const LevelCount *period_run(Period *p, size_t *n) {
    *n = 0;
    if (period_compact(p) < 0) return NULL;
    if (!p->nruns) return NULL;
    *n = p->runs[0].n;
    return p->runs[0].v;
}

/* a live trade of a gated minute touches one entry of the pending list, on lines of its own */
_Static_assert(offsetof(Period, pend) == 64 && offsetof(Period, pend_id) == 64 + sizeof(u64) * PERIOD_PENDING,
               "the pending list: lines of its own");

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
    free(p->up.v);
    free(p->down.v);
    for (size_t r = 0; r < p->nruns; r++) run_release(&p->runs[r]);
    free(p->runs);
    free(p->gains.v);
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
    long long *last = period_last_at(p);
    if (when > *last) *last = when;
    Py_RETURN_TRUE;
}

/* 8 big-endian bytes at b: one load and a byte swap where the machine is little-endian (the
   loop of bytes is what the compiler otherwise keeps, a shift and an add a byte) */
static inline u64 be64(const unsigned char *b) {
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    u64 v;
    memcpy(&v, b, 8);
    return __builtin_bswap64(v);
#else
    u64 v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | b[i];
    return v;
#endif
}

/* v as `bytes` big-endian bytes at b (be64's inverse for 8) */
static void store_be(unsigned char *b, u64 v, int bytes) {
    for (int i = 0; i < bytes; i++) b[i] = (unsigned char)(v >> (8 * (bytes - 1 - i)));
}

static PyObject *Period_add_packed(Period *p, PyObject *args) {
    Py_buffer pv, cv;
    if (!PyArg_ParseTuple(args, "y*y*:add_packed", &pv, &cv)) return NULL;
    PyObject *res = NULL;
    const unsigned char *a = pv.buf, *b = cv.buf;
    Py_ssize_t n = pv.len / 8;
    if (period_settle(p) < 0) goto done;
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
    LevelCount *v = n ? malloc((size_t)n * sizeof *v) : NULL;
    if (n && !v) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) v[i] = (LevelCount){be64(a + 8 * i), (i64)be64(b + 8 * i)};
    if (runs_push(p, v, sort_levels(v, (size_t)n), (size_t)n) < 0) { /* a stored period */
        free(v);
        PyErr_NoMemory();
        goto done;
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
    if (o == p) {
        PyErr_SetString(PyExc_ValueError, "fold: a period cannot fold itself");
        return NULL;
    }
    if (period_settle(o) < 0 || period_settle(p) < 0) return NULL;
    if (!o->count) Py_RETURN_NONE;
    /* o's levels as a chain of runs (a retired minute: one, as compact_after left it; an hour
       of a trend's minutes: theirs), shared where large, not copied: a flood's minute costs
       its hour and day no copy, and no page of memory */
    if (!period_chain(o) && period_compact(o) < 0) return NULL;
    size_t n = 0;
    for (size_t r = 0; r < o->nruns; r++) n += o->runs[r].n;
    if (n >= SHARE_MIN) {
        if (runs_share_all(p, o) < 0) return PyErr_NoMemory(); /* nothing changed */
    } else {
        const LevelCount *run = period_run(o, &n); /* small: one run, copied */
        if (!run && PyErr_Occurred()) return NULL;
        if (runs_copy(p, run, n) < 0) return PyErr_NoMemory(); /* nothing changed */
    }
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

/* e (empty) a copy of edge f's n levels: 0, or -1 (memory) */
static int list_copy(LevelList *e, const LevelList *f, size_t n) {
    if (!n) return 0;
    if (!(e->v = malloc(n * sizeof *e->v))) return -1;
    memcpy(e->v, f->v, n * sizeof *e->v);
    e->cap = n;
    return 0;
}

static PyObject *Period_copy(Period *p, PyObject *Py_UNUSED(ignored)) {
    Period *c = (Period *)Py_TYPE(p)->tp_alloc(Py_TYPE(p), 0);
    if (!c) return NULL;
    period_gather_pending(p);
    /* every field after the object header (the pending trades too: the copy applies them when
       it is read, off the symbol's lock), then edges, a map and runs of its own */
    memcpy((char *)c + sizeof(PyObject), (char *)p + sizeof(PyObject), sizeof(Period) - sizeof(PyObject));
    c->levels.slots = NULL;
    c->levels.cap = c->levels.used = 0;
    c->runs = NULL;
    c->nruns = c->capruns = 0;
    c->up = c->down = c->gains = (LevelList){0}; /* up_n, down_n, the last prices copied */
    c->pending = period_pending(p); /* the gate's, if p is gated: the copy is not */
    c->last_ms = *period_last_at(p);
    c->hot = NULL;
    c->ngains = 0; /* a reader's copy keeps no gains */
    c->keeps_gains = 0;
    c->gains_up = 0;
    if (list_copy(&c->up, &p->up, p->up_n) < 0 || list_copy(&c->down, &p->down, p->down_n) < 0)
        goto nomem;
    if (p->levels.cap) {
        LevelCount *slots = malloc(p->levels.cap * sizeof *slots);
        if (!slots) goto nomem;
        memcpy(slots, p->levels.slots, p->levels.cap * sizeof *slots);
        c->levels = p->levels;
        c->levels.slots = slots;
    }
    if (p->nruns) {
        c->runs = calloc(p->nruns, sizeof *c->runs);
        if (!c->runs) goto nomem;
        c->capruns = p->nruns;
        for (size_t r = 0; r < p->nruns; r++) {
            LevelCount *v = malloc(p->runs[r].n * sizeof *v);
            if (!v) goto nomem;
            memcpy(v, p->runs[r].v, p->runs[r].n * sizeof *v);
            c->runs[c->nruns++] = (Run){v, p->runs[r].n, p->runs[r].n, NULL};
        }
    }
    return (PyObject *)c;
nomem:
    Py_DECREF(c);
    return PyErr_NoMemory();
}

static PyObject *Period_items(Period *p, PyObject *Py_UNUSED(ignored)) {
    size_t n;
    const LevelCount *run = period_run(p, &n);
    if (!run && PyErr_Occurred()) return NULL;
    PyObject *prices = PyList_New((Py_ssize_t)n), *counts = PyList_New((Py_ssize_t)n);
    if (!prices || !counts) goto fail;
    for (size_t i = 0; i < n; i++) {
        PyObject *a = PyLong_FromUnsignedLongLong(run[i].price);
        if (!a) goto fail;
        PyList_SET_ITEM(prices, (Py_ssize_t)i, a);
        PyObject *b = PyLong_FromLongLong(run[i].count);
        if (!b) goto fail;
        PyList_SET_ITEM(counts, (Py_ssize_t)i, b);
    }
    return Py_BuildValue("(NN)", prices, counts);
fail:
    Py_XDECREF(prices);
    Py_XDECREF(counts);
    return NULL;
}

/* (prices, counts) of run (n levels) as 8-byte big-endian bytes */
static PyObject *packed_run(const LevelCount *run, size_t n) {
    PyObject *prices = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(8 * n));
    PyObject *counts = prices ? PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(8 * n)) : NULL;
    if (!prices || !counts) {
        Py_XDECREF(prices);
        return NULL;
    }
    unsigned char *a = (unsigned char *)PyBytes_AS_STRING(prices);
    unsigned char *b = (unsigned char *)PyBytes_AS_STRING(counts);
    for (size_t i = 0; i < n; i++) {
        store_be(a + 8 * i, run[i].price, 8);
        store_be(b + 8 * i, (u64)run[i].count, 8);
    }
    return Py_BuildValue("(NN)", prices, counts);
}

static PyObject *Period_packed(Period *p, PyObject *Py_UNUSED(ignored)) {
    size_t n;
    const LevelCount *run = period_run(p, &n);
    if (!run && PyErr_Occurred()) return NULL;
    return packed_run(run, n);
}

static size_t run_size(const LevelCount *run, size_t n, u64 prev);
static unsigned char *run_put(unsigned char *b, const LevelCount *run, size_t n, u64 prev);

/* p.compact_after(prev): (its levels compact, the first less prev; the last price written,
   prev if none), see PyPeriod.compact_after: made straight from its run, with no 16 bytes a
   level packed between */
static PyObject *Period_compact_after(Period *p, PyObject *arg) {
    u64 prev;
    if (price_arg(arg, &prev) < 0 || period_settle(p) < 0) return NULL;
    if (!period_chain(p) && period_compact(p) < 0) return NULL; /* (a chain: read in order) */
    size_t size = 0;
    u64 last = prev;
    for (size_t r = 0; r < p->nruns; r++) {
        size += run_size(p->runs[r].v, p->runs[r].n, last);
        last = p->runs[r].v[p->runs[r].n - 1].price;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (!out) return NULL;
    unsigned char *b = (unsigned char *)PyBytes_AS_STRING(out);
    last = prev;
    for (size_t r = 0; r < p->nruns; r++) {
        b = run_put(b, p->runs[r].v, p->runs[r].n, last);
        last = p->runs[r].v[p->runs[r].n - 1].price;
    }
    return Py_BuildValue("(NK)", out, last);
}

/* v (n gains) sorted by price, equal prices summed, in place; the distinct prices left.
   Ascending already (a trending minute's): one pass. Else equal prices are summed first in a
   small PairMap (on the stack up to 256 slots), then the distinct ones sorted, so a minute
   that trades back and forth over a few levels sorts those few, not every trade:
   O(n + d log d) for d distinct */
static size_t gains_sorted(LevelCount *v, size_t n) {
    int sorted = 1;
    for (size_t i = 1; i < n && sorted; i++) sorted = v[i - 1].price < v[i].price;
    if (sorted) return n;
    PairMap m = {NULL, 16, 0, 64 - 4}; /* the map a period keeps its levels in: pm_put */
    while (m.cap < 2 * n) {
        m.cap *= 2;
        m.shift--;
    }
    LevelCount small[256];
    m.slots = m.cap <= 256 ? small : calloc(m.cap, sizeof *m.slots);
    if (!m.slots) return sort_levels(v, n);
    if (m.slots == small) memset(small, 0, m.cap * sizeof *small);
    for (size_t i = 0; i < n; i++) pm_put(&m, v[i].price, v[i].count);
    size_t d = m.used;
    for (size_t j = 0, k = 0; k < d; j++)
        if (m.slots[j].count) v[k++] = m.slots[j];
    if (m.slots != small) free(m.slots);
    sort_by_price(v, d);
    return d;
}

static PyObject *compact_run(const LevelCount *run, size_t n);

/* the gains compact (sorted, a price once: the levels of a delta as stored) and forgotten; a
   large buffer is freed, so a flood's minute does not hold its peak. O(g + d log d) for g
   gains at d prices */
static PyObject *Period_take_gains(Period *p, PyObject *Py_UNUSED(ignored)) {
    if (period_settle(p) < 0) return NULL;
    if (!p->ngains && p->keeps_gains) { /* new highs alone (a trend's): the edge's, in order */
        size_t n = p->up_n - p->gains_up;
        PyObject *out = compact_run(n ? p->up.v + p->gains_up : NULL, n);
        if (out) p->gains_up = p->up_n;
        return out;
    }
    if (gains_off_edge(p) < 0) return NULL;
    size_t n = gains_sorted(p->gains.v, p->ngains);
    PyObject *out = compact_run(p->gains.v, n);
    if (!out) {
        p->ngains = n; /* the same gains, summed */
        return NULL;
    }
    p->ngains = 0;
    if (p->gains.cap > 256) {
        free(p->gains.v);
        p->gains = (LevelList){0};
    }
    return out;
}

/* twice the median: the prices at ranks (count - 1) / 2 and count / 2. Where its map holds
   few of its levels (a retired minute, compacted already; an hour or day, runs mostly; a
   minute of a trending market, edges mostly), the period is compacted and the ranks found
   in one pass over its run, O(L) sequential; where the map holds many (a minute read while
   open), compacting would sort them all, so a weighted quickselect over a private copy of
   every piece, O(L) expected, the interpreter released */
static PyObject *Period_twice_median(Period *p, PyObject *Py_UNUSED(ignored)) {
    if (period_settle(p) < 0) return NULL;
    if (!p->count) {
        PyErr_SetString(PyExc_ValueError, "twice_median: the period holds no trade");
        return NULL;
    }
    long long lo_rank = (p->count - 1) / 2, hi_rank = p->count / 2, seen = 0;
    u64 lo = 0, hi = 0;
    int found = 0;
    size_t loose = p->levels.used, in_runs = (size_t)p->up_n + p->down_n; /* in order */
    for (size_t r = 0; r < p->nruns; r++) in_runs += p->runs[r].n;
    if (loose <= 4096 || loose <= in_runs / 4) { /* little to sort: compacted, for good */
        if (period_compact(p) < 0) return NULL;
        const LevelCount *run = p->nruns ? p->runs[0].v : NULL;
        size_t n = p->nruns ? p->runs[0].n : 0, i = 0;
        for (; i < n && seen + run[i].count <= lo_rank; i++) seen += run[i].count;
        if (i < n) lo = run[i].price;
        for (; i < n && seen + run[i].count <= hi_rank; i++) seen += run[i].count;
        if (i < n) {
            hi = run[i].price;
            found = 1;
        }
    } else {
        size_t n = loose + in_runs;
        LevelCount *v = malloc(n * sizeof *v);
        if (!v) return PyErr_NoMemory();
        size_t k = loose_levels(p, v);
        memcpy(v + k, p->up.v, p->up_n * sizeof *v);
        k += p->up_n;
        memcpy(v + k, p->down.v, p->down_n * sizeof *v);
        k += p->down_n;
        for (size_t r = 0; r < p->nruns; r++) {
            memcpy(v + k, p->runs[r].v, p->runs[r].n * sizeof *v);
            k += p->runs[r].n;
        }
        for (size_t i = 0; i < n; i++) seen += v[i].count;
        found = seen > hi_rank; /* the ranks are there (they are, but for a bug) */
        Py_BEGIN_ALLOW_THREADS /* the selection reads only this private array */
        if (found) {
            lo = price_at(v, n, lo_rank);
            hi = hi_rank == lo_rank ? lo : price_at(v, n, hi_rank);
        }
        Py_END_ALLOW_THREADS
        free(v);
    }
    if (!found) {
        PyErr_SetString(PyExc_ValueError, "levels short of the count");
        return NULL;
    }
    PyObject *a = PyLong_FromUnsignedLongLong(lo), *b = PyLong_FromUnsignedLongLong(hi);
    PyObject *out = a && b ? PyNumber_Add(a, b) : NULL; /* the sum of two u64 prices, exact */
    Py_XDECREF(a);
    Py_XDECREF(b);
    return out;
}

/* the pending trades are applied first: taken before, they are not gains */
static PyObject *Period_keep_gains(Period *p, PyObject *Py_UNUSED(ignored)) {
    if (period_settle(p) < 0) return NULL;
    if (!p->keeps_gains) p->gains_up = p->up_n;
    p->keeps_gains = 1;
    Py_RETURN_NONE;
}

static PyObject *Period_settle(Period *p, PyObject *Py_UNUSED(ignored)) {
    if (period_settle(p) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Period_get_levels(Period *p, void *Py_UNUSED(closure)) {
    size_t n;
    if (!period_run(p, &n) && PyErr_Occurred()) return NULL;
    return PyLong_FromSize_t(n);
}

static PyObject *Period_record(Period *p, PyObject *arg);
static PyObject *Period_current_value(Period *p, PyObject *const *args, Py_ssize_t nargs);

/* whether the n levels of v each hold trades and their prices strictly ascend (descend where
   `descending`); their counts added to *sum and their extremes taken into *high and *low */
static int levels_in_order(const LevelCount *v, size_t n, int descending, long long *sum, u64 *high,
                           u64 *low) {
    for (size_t i = 0; i < n; i++) {
        if (v[i].count <= 0 || (i && (descending ? v[i - 1].price <= v[i].price
                                                 : v[i - 1].price >= v[i].price)))
            return 0;
        *sum += v[i].count;
        *high = v[i].price > *high ? v[i].price : *high;
        *low = v[i].price < *low ? v[i].price : *low;
    }
    return 1;
}

/* every invariant of the period, its pending trades applied first (as any read applies them):
   the map's count of its levels, its load (at most half full) and every level where its
   probe finds it; the edges strictly monotonic and ending at their last prices; the runs
   ascending, distinct and each more than twice the next (so O(log L) of them); every count
   positive, and all of them the period's count; its extremes those of its levels; the gains
   within what the period holds. O(L); for tests */
static PyObject *Period_check(Period *p, PyObject *Py_UNUSED(ignored)) {
    if (period_settle(p) < 0) return NULL;
    CHECK(period_pending(p) == 0, "pending trades left after a settle");
    const PairMap *m = &p->levels;
    long long sum = 0;
    size_t used = 0;
    u64 high = 0, low = UINT64_MAX;
    CHECK(!m->cap || (m->shift > 0 && m->shift < 64 && m->cap == (size_t)1 << (64 - m->shift)),
          "the map's room is not the power of two its shift says");
    for (size_t i = 0; i < m->cap; i++) {
        const LevelCount *s = &m->slots[i];
        if (!s->count) continue;
        CHECK(pm_slot(m, s->price) == i, "a level of the map its probe does not find");
        CHECK(levels_in_order(s, 1, 0, &sum, &high, &low), "a level of the map with a negative count");
        used++;
    }
    CHECK(used == m->used, "the map's count of its levels is wrong");
    CHECK(2 * m->used <= m->cap, "the map is more than half full");
    CHECK(p->up_n <= p->up.cap && p->down_n <= p->down.cap, "an edge beyond its room");
    CHECK(levels_in_order(p->up.v, p->up_n, 0, &sum, &high, &low),
          "the ascending edge: a level without trades, or not ascending");
    CHECK(levels_in_order(p->down.v, p->down_n, 1, &sum, &high, &low),
          "the descending edge: a level without trades, or not descending");
    CHECK(!p->up_n || p->up_last == p->up.v[p->up_n - 1].price, "the ascending edge's last price is wrong");
    CHECK(!p->down_n || p->down_last == p->down.v[p->down_n - 1].price,
          "the descending edge's last price is wrong");
    CHECK(p->nruns <= p->capruns, "more runs than room");
    for (size_t r = 0; r < p->nruns; r++) {
        const Run *run = &p->runs[r];
        CHECK(run->n && run->n <= run->cap, "an empty run, or one beyond its room");
        CHECK(!run->refs || *run->refs >= 1, "a shared run no run holds");
        CHECK(!r || p->runs[r - 1].n > 2 * run->n || runs_chain(&p->runs[r - 1], run),
              "a run neither more than twice the next nor wholly below it");
        CHECK(levels_in_order(run->v, run->n, 0, &sum, &high, &low),
              "a run: a level without trades, or not ascending");
    }
    CHECK(sum == p->count, "the levels do not add up to the count");
    if (p->count) {
        CHECK(p->high == high && p->low == low, "the extremes are not those of the levels");
        CHECK(p->open_id <= p->close_id, "the open after the close");
        CHECK(low <= p->open_price && p->open_price <= high && low <= p->close_price &&
                  p->close_price <= high,
              "the open or the close beyond the extremes");
    }
    CHECK(p->keeps_gains || !p->ngains, "gains kept by a period that keeps none");
    CHECK(p->ngains <= p->gains.cap && p->gains_up <= p->up_n, "the gains beyond their list");
    long long gained = 0;
    for (size_t i = 0; i < p->ngains; i++) { /* (a gain's price may recur: no order) */
        CHECK(p->gains.v[i].count > 0, "a gain without trades");
        gained += p->gains.v[i].count;
    }
    for (uint32_t i = p->gains_up; i < p->up_n; i++) gained += p->up.v[i].count;
    CHECK(gained <= p->count, "more gains than trades");
    Py_RETURN_NONE;
}

static PyMethodDef Period_methods[] = {
    {"add", (PyCFunction)Period_add, METH_VARARGS, "See PyPeriod.add."},
    {"add_in", (PyCFunction)Period_add_in, METH_VARARGS, "See PyPeriod.add_in."},
    {"add_packed", (PyCFunction)Period_add_packed, METH_VARARGS, "See PyPeriod.add_packed."},
    {"fold", (PyCFunction)Period_fold, METH_O, "See PyPeriod.fold."},
    {"copy", (PyCFunction)Period_copy, METH_NOARGS, "See PyPeriod.copy."},
    {"record", (PyCFunction)Period_record, METH_O, "See PyPeriod.record."},
    {"current_value", (PyCFunction)(void (*)(void))Period_current_value, METH_FASTCALL,
     "See PyPeriod.current_value."},
    {"items", (PyCFunction)Period_items, METH_NOARGS, "See PyPeriod.items."},
    {"packed", (PyCFunction)Period_packed, METH_NOARGS, "See PyPeriod.packed."},
    {"compact_after", (PyCFunction)Period_compact_after, METH_O, "See PyPeriod.compact_after."},
    {"keep_gains", (PyCFunction)Period_keep_gains, METH_NOARGS, "See PyPeriod.keep_gains."},
    {"settle", (PyCFunction)Period_settle, METH_NOARGS, "See PyPeriod.settle."},
    {"take_gains", (PyCFunction)Period_take_gains, METH_NOARGS, "See PyPeriod.take_gains."},
    {"twice_median", (PyCFunction)Period_twice_median, METH_NOARGS,
     "See PyPeriod.twice_median."},
    {"_check", (PyCFunction)Period_check, METH_NOARGS, "See PyPeriod._check."},
    {NULL},
};

/* what a live trade reads and writes: read and written as they are */
static PyMemberDef Period_members[] = {
    {"start", T_LONGLONG, offsetof(Period, start), READONLY, NULL},
    {"length", T_LONGLONG, offsetof(Period, length), READONLY, NULL},
    {NULL},
};

/* lo_ms, kept in the gate too while a lock gates the period. O(1) */
static PyObject *Period_get_lo_ms(Period *p, void *Py_UNUSED(closure)) {
    return PyLong_FromLongLong(p->lo_ms);
}

/* a time written to a period: 0, or -1 with an exception set */
static int ms_arg(PyObject *v, long long *out) {
    if (!v) {
        PyErr_SetString(PyExc_TypeError, "a period's fields cannot be deleted");
        return -1;
    }
    *out = PyLong_AsLongLong(v);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

static int Period_set_lo_ms(Period *p, PyObject *v, void *Py_UNUSED(closure)) {
    long long ms;
    if (ms_arg(v, &ms) < 0) return -1;
    p->lo_ms = ms;
    if (p->hot) { /* (the gate's end is the period's) */
        p->hot->gate_lo = ms;
        p->hot->gate_span = gate_span(p);
    }
    return 0;
}

/* last_ms, the gate's while a lock gates the period. O(1) */
static PyObject *Period_get_last_ms(Period *p, void *Py_UNUSED(closure)) {
    return PyLong_FromLongLong(*period_last_at(p));
}

static int Period_set_last_ms(Period *p, PyObject *v, void *Py_UNUSED(closure)) {
    long long ms;
    if (ms_arg(v, &ms) < 0) return -1;
    *period_last_at(p) = ms;
    return 0;
}

/* the trades held, the pending ones added up: O(1), nothing applied */
static PyObject *Period_get_count(Period *p, void *Py_UNUSED(closure)) {
    return PyLong_FromLongLong(p->count + (long long)period_pending(p));
}

/* a field the pending trades change (closure: a Field), read and written once they are
   applied */
typedef struct {
    size_t offset;
    int price;                        /* u64 (a price), else long long (a trade id) */
} Field;

static PyObject *Period_get_field(Period *p, void *closure) {
    const Field *f = closure;
    if (period_settle(p) < 0) return NULL;
    char *at = (char *)p + f->offset;
    if (f->price) return PyLong_FromUnsignedLongLong(*(u64 *)at);
    return PyLong_FromLongLong(*(long long *)at);
}

static int Period_set_field(Period *p, PyObject *v, void *closure) {
    const Field *f = closure;
    if (!v) {
        PyErr_SetString(PyExc_TypeError, "a period's fields cannot be deleted");
        return -1;
    }
    u64 price = 0;
    long long id = 0;
    if (f->price) {
        if (price_arg(v, &price) < 0) return -1;
    } else if ((id = PyLong_AsLongLong(v)) == -1 && PyErr_Occurred())
        return -1;
    if (period_settle(p) < 0) return -1;
    char *at = (char *)p + f->offset;
    if (f->price) *(u64 *)at = price;
    else *(long long *)at = id;
    return 0;
}

static const Field open_id_f = {offsetof(Period, open_id), 0},
                   close_id_f = {offsetof(Period, close_id), 0},
                   open_price_f = {offsetof(Period, open_price), 1},
                   close_price_f = {offsetof(Period, close_price), 1},
                   high_f = {offsetof(Period, high), 1}, low_f = {offsetof(Period, low), 1};

#define FIELD(name) \
    {#name, (getter)Period_get_field, (setter)Period_set_field, NULL, (void *)&name##_f}

static PyGetSetDef Period_getset[] = {
    {"levels", (getter)Period_get_levels, NULL, "Distinct prices held.", NULL},
    {"count", (getter)Period_get_count, NULL, "Trades held.", NULL},
    {"lo_ms", (getter)Period_get_lo_ms, (setter)Period_set_lo_ms,
     "The earliest time add_in takes.", NULL},
    {"last_ms", (getter)Period_get_last_ms, (setter)Period_set_last_ms,
     "The latest time taken.", NULL},
    FIELD(open_id),
    FIELD(close_id),
    FIELD(open_price),
    FIELD(close_price),
    FIELD(high),
    FIELD(low),
    {NULL},
};

PyTypeObject PeriodType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "medianserv._native.Period",
    .tp_doc = "One period's trades: the compiled twin of medianserv.candles.PyPeriod.",
    .tp_basicsize = sizeof(Period),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_alloc = line_alloc,
    .tp_free = free,
    .tp_new = Period_new,
    .tp_dealloc = (destructor)Period_dealloc,
    .tp_methods = Period_methods,
    .tp_members = Period_members,
    .tp_getset = Period_getset,
};

/* -- the store's candle records (the twin of medianserv.store.state_items) -------------------- */

/* a growing buffer a value is encoded into as MessagePack, in the smallest form of each item,
   as msgspec writes it */
typedef struct {
    unsigned char *b; /* room, or heap: the heap once the room is outgrown */
    size_t n, cap;
    unsigned char *heap;
    unsigned char room[1024];
} Buf;

#define BUF_INIT(w) ((w).b = (w).room, (w).n = 0, (w).cap = sizeof (w).room, (w).heap = NULL)

static int buf_need(Buf *w, size_t more) {
    if (w->n + more <= w->cap) return 0;
    size_t cap = w->cap;
    while (cap < w->n + more) cap *= 2;
    unsigned char *b = realloc(w->heap, cap);
    if (!b) {
        PyErr_NoMemory();
        return -1;
    }
    if (!w->heap) memcpy(b, w->room, w->n);
    w->b = w->heap = b;
    w->cap = cap;
    return 0;
}

static int put_be(Buf *w, unsigned char tag, u64 v, int bytes) {
    if (buf_need(w, 1 + (size_t)bytes) < 0) return -1;
    w->b[w->n++] = tag;
    store_be(w->b + w->n, v, bytes);
    w->n += (size_t)bytes;
    return 0;
}

static int mp_u64(Buf *w, u64 v) {
    if (v < 128) {
        if (buf_need(w, 1) < 0) return -1;
        w->b[w->n++] = (unsigned char)v;
        return 0;
    }
    if (v <= 0xff) return put_be(w, 0xcc, v, 1);
    if (v <= 0xffff) return put_be(w, 0xcd, v, 2);
    if (v <= 0xffffffffu) return put_be(w, 0xce, v, 4);
    return put_be(w, 0xcf, v, 8);
}

static int mp_i64(Buf *w, long long v) {
    if (v >= 0) return mp_u64(w, (u64)v);
    if (v >= -32) {
        if (buf_need(w, 1) < 0) return -1;
        w->b[w->n++] = (unsigned char)(0xe0 | (v + 32));
        return 0;
    }
    if (v >= INT8_MIN) return put_be(w, 0xd0, (u64)v, 1);
    if (v >= INT16_MIN) return put_be(w, 0xd1, (u64)v, 2);
    if (v >= INT32_MIN) return put_be(w, 0xd2, (u64)v, 4);
    return put_be(w, 0xd3, (u64)v, 8);
}

static int mp_array(Buf *w, size_t n) {
    if (n < 16) {
        if (buf_need(w, 1) < 0) return -1;
        w->b[w->n++] = (unsigned char)(0x90 | n);
        return 0;
    }
    return n <= 0xffff ? put_be(w, 0xdc, n, 2) : put_be(w, 0xdd, n, 4);
}

static int mp_bin_head(Buf *w, size_t n) {
    if (n <= 0xff) return put_be(w, 0xc4, n, 1);
    if (n <= 0xffff) return put_be(w, 0xc5, n, 2);
    return put_be(w, 0xc6, n, 4);
}

#define NOT_OURS 1 /* a value the Python twin handles (and raises on, as msgspec would) */

/* an int (exactly) that fits 64 unsigned bits; else *bad set, no error left */
static u64 key_u(PyObject *o, int *bad) {
    u64 u = 0;
    if (!PyLong_CheckExact(o) || price_arg(o, &u) < 0) {
        PyErr_Clear();
        *bad = 1;
    }
    return u;
}

/* an int (not a subclass: msgspec writes a bool as one) or None */
static int mp_obj(Buf *w, PyObject *o) {
    if (o == Py_None) {
        if (buf_need(w, 1) < 0) return -1;
        w->b[w->n++] = 0xc0;
        return 0;
    }
    if (!PyLong_CheckExact(o)) return NOT_OURS;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (!overflow) return mp_i64(w, v);
    int bad = overflow < 0; /* below -2^63: beyond MessagePack */
    u64 u = bad ? 0 : key_u(o, &bad);
    return bad ? NOT_OURS : mp_u64(w, u);
}

/* the items of a tuple or list, each with mp_obj */
static int mp_objs(Buf *w, PyObject *seq, Py_ssize_t from) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = from; i < n; i++) {
        int r = mp_obj(w, items[i]);
        if (r) return r;
    }
    return 0;
}

/* append (key, the buffer's value) to out; the buffer is emptied */
static int emit(PyObject *out, const unsigned char *key, size_t nkey, Buf *w) {
    PyObject *k = PyBytes_FromStringAndSize((const char *)key, (Py_ssize_t)nkey);
    PyObject *v = k ? PyBytes_FromStringAndSize((const char *)w->b, (Py_ssize_t)w->n) : NULL;
    PyObject *pair = v ? PyTuple_Pack(2, k, v) : NULL;
    Py_XDECREF(k);
    Py_XDECREF(v);
    w->n = 0;
    if (!pair) return -1;
    int r = PyList_Append(out, pair);
    Py_DECREF(pair);
    return r;
}

/* -- compact levels (candles.compact_levels) ----------------------------------------------- */

/* v as a LEB128 varint at b (at most 10 bytes): how many bytes */
static inline size_t put_uvarint(unsigned char *b, u64 v) {
    size_t n = 0;
    while (v >= 0x80) {
        b[n++] = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    b[n++] = (unsigned char)v;
    return n;
}

/* how many bytes put_uvarint writes of v */
static inline size_t uvarint_size(u64 v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* one level compact at b (its price less *prev, then its count; *prev becomes its price):
   past it */
static inline unsigned char *put_level(unsigned char *b, u64 *prev, u64 price, u64 count) {
    b += put_uvarint(b, price - *prev);
    b += put_uvarint(b, count);
    *prev = price;
    return b;
}

/* how many bytes run_put makes of the n levels of run (ascending), the first less prev */
static size_t run_size(const LevelCount *run, size_t n, u64 prev) {
    size_t size = 0;
    for (size_t i = 0; i < n; i++) {
        size += uvarint_size(run[i].price - prev) + uvarint_size((u64)run[i].count);
        prev = run[i].price;
    }
    return size;
}

/* the n levels of run (ascending) compact at b, as compact_levels makes them, the first less
   prev: past them */
static unsigned char *run_put(unsigned char *b, const LevelCount *run, size_t n, u64 prev) {
    for (size_t i = 0; i < n; i++) b = put_level(b, &prev, run[i].price, (u64)run[i].count);
    return b;
}

/* [1, the seven fields, compact levels] of a period stored whole, its n levels those of run
   (its pending trades applied; ascending): the levels as compact_levels makes them */
static int whole_levels(Buf *w, const Period *p, const LevelCount *run, size_t n) {
    if (mp_array(w, 9) < 0 || mp_u64(w, 1) < 0 || mp_i64(w, p->open_id) < 0 ||
        mp_u64(w, p->open_price) < 0 || mp_i64(w, p->close_id) < 0 ||
        mp_u64(w, p->close_price) < 0 || mp_u64(w, p->high) < 0 || mp_u64(w, p->low) < 0 ||
        mp_i64(w, p->count) < 0)
        return -1;
    size_t size = run_size(run, n, 0);
    if (mp_bin_head(w, size) < 0 || buf_need(w, size) < 0) return -1;
    run_put(w->b + w->n, run, n, 0);
    w->n += size;
    return 0;
}

/* the n levels of run (ascending) compact, as compact_levels makes them, in a bytes of their
   own: straight from the levels, with no packed copy between. O(n) */
static PyObject *compact_run(const LevelCount *run, size_t n) {
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)run_size(run, n, 0));
    if (out) run_put((unsigned char *)PyBytes_AS_STRING(out), run, n, 0);
    return out;
}

/* p's record (see PyPeriod.record) after the nhead bytes of head (at most 16), its levels
   gathered without compacting p (a live minute's next high stays an append); when p holds
   more than limit trades and more than limit levels, those levels packed (prices, counts)
   instead where `packed`, else None. O(m log m + L) */
static PyObject *record_after(Period *p, long long limit, const unsigned char *head,
                              size_t nhead, int packed) {
    size_t n;
    LevelCount *run = period_gather(p, &n);
    if (!run && PyErr_Occurred()) return NULL;
    PyObject *out = NULL;
    if (p->count > limit && n > (size_t)(limit < 0 ? 0 : limit)) {
        out = packed ? packed_run(run, n) : Py_NewRef(Py_None);
    } else {
        Buf w;
        BUF_INIT(w);
        if (nhead) memcpy(w.b, head, nhead); /* (the buffer's room holds 1,024) */
        w.n = nhead;
        if (whole_levels(&w, p, run, n) == 0)
            out = PyBytes_FromStringAndSize((const char *)w.b, (Py_ssize_t)w.n);
        free(w.heap);
    }
    free(run);
    return out;
}

/* p.record(limit): the value the store keeps of p whole, or its levels packed past limit
   (record_after) */
static PyObject *Period_record(Period *p, PyObject *arg) {
    long long limit = PyLong_AsLongLong(arg);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    return record_after(p, limit, NULL, 0, 1);
}

/* p.current_value(latest, limit): what a quiet harvest stores of p, the current minute (see
   PyPeriod.current_value): its open time and latest (8-byte big-endian each), then its
   record; None if p keeps gains (it is stored as deltas) or is too large to store whole (the
   same test as record). O(m log m + L) */
static PyObject *Period_current_value(Period *p, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "current_value(latest, limit)");
        return NULL;
    }
    long long latest = PyLong_AsLongLong(args[0]), limit = PyLong_AsLongLong(args[1]);
    if ((latest == -1 || limit == -1) && PyErr_Occurred()) return NULL;
    if (latest < 0 || p->start < 0) {
        PyErr_SetString(PyExc_ValueError, "current_value: a negative time");
        return NULL;
    }
    if (p->keeps_gains) Py_RETURN_NONE;
    unsigned char head[16];
    store_be(head, (u64)p->start, 8);
    store_be(head + 8, (u64)latest, 8);
    return record_after(p, limit, head, 16, 0);
}

/* how many bytes compact_into makes of n levels (8-byte big-endian prices and counts), *prev
   the price before them (it becomes their last) */
static size_t compact_size(const unsigned char *prices, const unsigned char *counts, size_t n,
                           u64 *prev) {
    size_t size = 0;
    for (size_t i = 0; i < n; i++) {
        u64 price = be64(prices + 8 * i);
        size += uvarint_size(price - *prev) + uvarint_size(be64(counts + 8 * i));
        *prev = price;
    }
    return size;
}

/* n levels (8-byte big-endian prices and counts) appended compact into room the caller made
   (compact_size, or 20 bytes a level): each price less the one before it (*prev; modulo 2^64,
   so an unordered list costs bytes, never exactness), then its count, both as varints */
static void compact_into(Buf *w, const unsigned char *prices, const unsigned char *counts,
                         size_t n, u64 *prev) {
    unsigned char *b = w->b + w->n;
    for (size_t i = 0; i < n; i++)
        b = put_level(b, prev, be64(prices + 8 * i), be64(counts + 8 * i));
    w->n = (size_t)(b - w->b);
}

/* a chunk's prices and counts, and how many levels they hold */
#define CHUNK(chunks, i) \
    (const unsigned char *)PyBytes_AS_STRING(PyTuple_GET_ITEM(PyList_GET_ITEM(chunks, i), 0)), \
    (const unsigned char *)PyBytes_AS_STRING(PyTuple_GET_ITEM(PyList_GET_ITEM(chunks, i), 1)), \
    (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(PyList_GET_ITEM(chunks, i), 0)) / 8

/* the chunks' (prices, counts) joined, compact, as a bin: a delta's value, sized first and
   written in place; a minute's delta holds one chunk compact already (take_gains), copied */
static int chunks_value(Buf *w, PyObject *chunks) {
    if (!PyList_CheckExact(chunks)) return NOT_OURS;
    Py_ssize_t n = PyList_GET_SIZE(chunks);
    if (n == 1 && PyBytes_CheckExact(PyList_GET_ITEM(chunks, 0))) { /* compact already */
        PyObject *c = PyList_GET_ITEM(chunks, 0);
        size_t size = (size_t)PyBytes_GET_SIZE(c);
        if (mp_bin_head(w, size) < 0 || buf_need(w, size) < 0) return -1;
        memcpy(w->b + w->n, PyBytes_AS_STRING(c), size);
        w->n += size;
        return 0;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *c = PyList_GET_ITEM(chunks, i);
        if (!PyTuple_Check(c) || PyTuple_GET_SIZE(c) != 2) return NOT_OURS;
        PyObject *a = PyTuple_GET_ITEM(c, 0), *b = PyTuple_GET_ITEM(c, 1);
        if (!PyBytes_CheckExact(a) || !PyBytes_CheckExact(b) ||
            PyBytes_GET_SIZE(a) != PyBytes_GET_SIZE(b) || PyBytes_GET_SIZE(a) % 8)
            return NOT_OURS; /* the Python twin raises */
    }
    size_t size = 0;
    u64 prev = 0;
    for (Py_ssize_t i = 0; i < n; i++) size += compact_size(CHUNK(chunks, i), &prev);
    if (mp_bin_head(w, size) < 0 || buf_need(w, size) < 0) return -1;
    prev = 0;
    for (Py_ssize_t i = 0; i < n; i++) compact_into(w, CHUNK(chunks, i), &prev);
    return 0;
}

/* compact_levels(prices, counts, prev=0): candles.compact_levels' twin (ValueError for lists
   of other lengths than one level in 8 bytes each) */
PyObject *compact_levels(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 2 || nargs > 3 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "compact_levels(prices: bytes, counts: bytes, prev=0)");
        return NULL;
    }
    u64 prev = 0;
    if (nargs == 3 && price_arg(args[2], &prev) < 0) return NULL;
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    if (n != PyBytes_GET_SIZE(args[1]) || n % 8) {
        PyErr_SetString(PyExc_ValueError, "compact_levels: prices and counts of 8 bytes each");
        return NULL;
    }
    Buf w;
    BUF_INIT(w);
    PyObject *out = NULL;
    if (buf_need(&w, 20 * ((size_t)n / 8)) == 0) {
        compact_into(&w, (const unsigned char *)PyBytes_AS_STRING(args[0]),
                     (const unsigned char *)PyBytes_AS_STRING(args[1]), (size_t)n / 8, &prev);
        out = PyBytes_FromStringAndSize((const char *)w.b, (Py_ssize_t)w.n);
    }
    free(w.heap);
    return out;
}

/* a varint at *at (of the end at end) into *v: 0, or -1 if cut short or beyond 64 bits */
static inline int get_uvarint(const unsigned char **at, const unsigned char *end, u64 *v) {
    u64 x = 0;
    for (int shift = 0; *at < end && shift < 64; shift += 7) {
        unsigned char b = *(*at)++;
        if ((shift == 63 && b > 1) || (shift && !b)) return -1; /* beyond 64 bits; overlong */
        x |= (u64)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

/* expand_levels(data): candles.expand_levels' twin, (prices, counts) 8-byte big-endian
   (ValueError for bytes compact_levels never makes: cut short, a varint beyond 64 bits or
   longer than it needs) */
PyObject *expand_levels(PyObject *Py_UNUSED(module), PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *at = view.buf, *end = at + view.len;
    size_t n = 0;
    for (const unsigned char *q = at; q < end; q++) n += !(*q & 0x80); /* varints: 2 a level */
    PyObject *out = NULL;
    PyObject *prices = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(4 * (n & ~(size_t)1)));
    PyObject *counts = prices ? PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(4 * (n & ~(size_t)1))) : NULL;
    if (prices && counts) {
        unsigned char *p = (unsigned char *)PyBytes_AS_STRING(prices);
        unsigned char *c = (unsigned char *)PyBytes_AS_STRING(counts);
        u64 price = 0, d, k;
        int bad = n % 2 != 0;
        for (size_t i = 0; !bad && at < end; i++) {
            bad = get_uvarint(&at, end, &d) < 0 || get_uvarint(&at, end, &k) < 0;
            if (!bad) {
                price += d;
                store_be(p + 8 * i, price, 8);
                store_be(c + 8 * i, k, 8);
            }
        }
        if (bad) PyErr_SetString(PyExc_ValueError, "expand_levels: not compact levels");
        else out = PyTuple_Pack(2, prices, counts);
    }
    Py_XDECREF(prices);
    Py_XDECREF(counts);
    PyBuffer_Release(&view);
    return out;
}

/* -- store.merge_levels' twin: a symbol's batches of levels ------------------------------------ */

/* levels ascending, read one at a time: compact ones (compact_levels) or native arrays */
typedef struct {
    const unsigned char *at, *end; /* compact */
    const u64 *p;                  /* native, else NULL */
    const i64 *c;
    size_t i, n;
    u64 price;
    int started;
} LevelSource;

/* the next level into *price, *count: 1, 0 at the end, -1 if the levels are not compact,
   not strictly ascending or a count is not a positive int64 */
static int source_next(LevelSource *s, u64 *price, u64 *count) {
    u64 p, k;
    if (s->p) {
        if (s->i == s->n) return 0;
        p = s->p[s->i];
        if (s->c[s->i] <= 0) return -1;
        k = (u64)s->c[s->i++];
    } else {
        u64 d;
        if (s->at == s->end) return 0;
        if (get_uvarint(&s->at, s->end, &d) < 0 || get_uvarint(&s->at, s->end, &k) < 0 || !k ||
            k > (u64)INT64_MAX)
            return -1;
        p = s->price + d; /* (modulo 2^64: a wrap is not above the one before either) */
    }
    if (s->started && p <= s->price) return -1; /* not above the one before */
    s->price = p;
    s->started = 1;
    *price = p;
    *count = k;
    return 1;
}

/* bytes of input from which merge_levels lets other threads run while it merges (a
   millisecond or so): it reads only its arguments, bytes that cannot change, and writes its
   own buffer; a smaller merge (most: a symbol's levels of a snapshot or two) holds the
   interpreter, as each hand-back waits on busy readers */
#define MERGE_ALONE (1u << 20)

/* merge_levels(older, newer) or merge_levels(older, prices, counts): store.merge_levels'
   twin. older and newer compact, prices and counts native uint64 and int64, each ascending:
   (their levels as one, compact, a price in both at newer's count; how many). O(n + m) */
PyObject *merge_levels(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 2 || nargs > 3 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1]) ||
        (nargs == 3 && !PyBytes_Check(args[2]))) {
        PyErr_SetString(PyExc_TypeError, "merge_levels(older, newer) or "
                                         "merge_levels(older, prices, counts): bytes");
        return NULL;
    }
    LevelSource a = {0}, b = {0};
    a.at = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    a.end = a.at + PyBytes_GET_SIZE(args[0]);
    size_t room = (size_t)PyBytes_GET_SIZE(args[0]);
    if (nargs == 2) {
        b.at = (const unsigned char *)PyBytes_AS_STRING(args[1]);
        b.end = b.at + PyBytes_GET_SIZE(args[1]);
        room += (size_t)PyBytes_GET_SIZE(args[1]);
    } else {
        Py_ssize_t np = PyBytes_GET_SIZE(args[1]);
        if (np != PyBytes_GET_SIZE(args[2]) || np % 8) {
            PyErr_SetString(PyExc_ValueError, "merge_levels: prices and counts of 8 bytes each");
            return NULL;
        }
        b.p = (const u64 *)PyBytes_AS_STRING(args[1]);
        b.c = (const i64 *)PyBytes_AS_STRING(args[2]);
        b.n = (size_t)np / 8;
        room += 20 * b.n; /* two varints of 10 bytes at most */
    }
    /* a level's delta from the merged level before it is at most its own: no larger */
    Buf w;
    BUF_INIT(w);
    PyObject *out = NULL;
    if (buf_need(&w, room) < 0) goto done;
    unsigned char *o = w.b;
    u64 prev = 0, pa = 0, ka = 0, pb = 0, kb = 0;
    size_t n = 0;
    int ra, rb;
    PyThreadState *alone = room >= MERGE_ALONE ? PyEval_SaveThread() : NULL;
    ra = source_next(&a, &pa, &ka);
    rb = source_next(&b, &pb, &kb);
    while (ra > 0 || rb > 0) {
        if (rb <= 0 || (ra > 0 && pa < pb)) {
            o = put_level(o, &prev, pa, ka);
            ra = source_next(&a, &pa, &ka);
        } else {
            o = put_level(o, &prev, pb, kb);
            if (ra > 0 && pa == pb) ra = source_next(&a, &pa, &ka); /* newer's count */
            rb = source_next(&b, &pb, &kb);
        }
        n++;
        if (ra < 0 || rb < 0) break;
    }
    if (alone) PyEval_RestoreThread(alone);
    if (ra < 0 || rb < 0)
        PyErr_SetString(PyExc_ValueError, "merge_levels: not compact levels, ascending");
    else
        out = Py_BuildValue("(y#n)", (const char *)w.b, (Py_ssize_t)(o - w.b), (Py_ssize_t)n);
done:
    free(w.heap);
    return out;
}

/* where a harvest's items go: the `current` database's puts, its deletes (keys), and the
   `candles` database's puts (store.state_items' three lists) */
typedef struct {
    PyObject *now, *gone, *out;
} Items;

/* one entry (start, row, period) of interval k (the key's byte before head): its items into
   out, or for the state's `current` minute into now (the key prefix | 1; its value with the
   state's latest trade time) */
static int entry_items(const Items *to, Buf *w, unsigned char *key, size_t head, PyObject *e,
                       PyObject *current, PyObject *latest) {
    if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) != 3) return NOT_OURS;
    PyObject *start = PyTuple_GET_ITEM(e, 0), *row = PyTuple_GET_ITEM(e, 1),
             *period = PyTuple_GET_ITEM(e, 2);
    int bad = 0, r;
    u64 at = key_u(start, &bad);
    if (bad) return NOT_OURS;
    store_be(key + head, at, 8);
    if (row != Py_None) { /* a settled row: [0, *row[1:]] */
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) < 1) return NOT_OURS;
        if (mp_array(w, (size_t)PyTuple_GET_SIZE(row)) < 0 || mp_u64(w, 0) < 0) return -1;
        if ((r = mp_objs(w, row, 1))) return r;
        return emit(to->out, key, head + 8, w);
    }
    int is_now = 0;
    if (current != Py_None && key[head - 1] == 1) { /* a minute: the current one? */
        if (!PyLong_CheckExact(current)) return NOT_OURS;
        if ((is_now = PyObject_RichCompareBool(start, current, Py_EQ)) < 0) return -1;
    }
    if (PyBytes_CheckExact(period)) { /* a minute stored whole: its record (Period.record) */
        size_t n = (size_t)PyBytes_GET_SIZE(period);
        if (buf_need(w, 16 + n) < 0) return -1;
        if (is_now) { /* its open time, the latest trade time, then its record */
            u64 last = key_u(latest, &bad);
            if (bad) return NOT_OURS;
            memcpy(w->b, key + head, 8);
            store_be(w->b + 8, last, 8);
            w->n = 16;
        }
        memcpy(w->b + w->n, PyBytes_AS_STRING(period), n);
        w->n += n;
        return is_now ? emit(to->now, key, head, w) : emit(to->out, key, head + 8, w);
    }
    /* a Delta (fields, seq, chunks): its header, then the delta under its number */
    if (!PyTuple_Check(period) || PyTuple_GET_SIZE(period) != 3) return NOT_OURS;
    PyObject *fields = PyTuple_GET_ITEM(period, 0), *seq = PyTuple_GET_ITEM(period, 1);
    if (!PyTuple_Check(fields) || PyTuple_GET_SIZE(fields) != 7) return NOT_OURS;
    u64 n = key_u(seq, &bad);
    if (bad || n > 0xffffffffu) return NOT_OURS;
    if (mp_array(w, 9) < 0 || mp_u64(w, 2) < 0) return -1;
    if ((r = mp_objs(w, fields, 0))) return r;
    if (mp_u64(w, n + 1) < 0) return -1;
    Buf delta;
    BUF_INIT(delta);
    r = chunks_value(&delta, PyTuple_GET_ITEM(period, 2));
    if (!r) r = emit(to->out, key, head + 8, w);
    if (!r) {
        store_be(key + head + 8, n, 4);
        r = emit(to->out, key, head + 12, &delta);
    }
    if (!r && is_now && !n) { /* turned to deltas: no longer whole in current */
        PyObject *k = PyBytes_FromStringAndSize((const char *)key, (Py_ssize_t)head);
        r = k ? PyList_Append(to->gone, k) : -1;
        Py_XDECREF(k);
    }
    free(delta.heap);
    return r;
}

static int state_items(const Items *to, Buf *w, unsigned char *key, size_t nprefix,
                       PyObject *c) {
    if (PyBytes_CheckExact(c)) { /* a quiet harvest's value: the current minute's put alone */
        if (PyBytes_GET_SIZE(c) <= 16) return NOT_OURS;
        key[nprefix] = 1;
        PyObject *k = PyBytes_FromStringAndSize((const char *)key, (Py_ssize_t)nprefix + 1);
        PyObject *pair = k ? PyTuple_Pack(2, k, c) : NULL; /* the value itself, not a copy */
        Py_XDECREF(k);
        int r = pair ? PyList_Append(to->now, pair) : -1;
        Py_XDECREF(pair);
        return r;
    }
    /* CandleState: first_ms, latest_ms, front_top_ms, current, periods, expired, counts,
       seqs, sealed, unfolded */
    if (!PyTuple_Check(c) || PyTuple_GET_SIZE(c) != 10) return NOT_OURS;
    PyObject *periods = PyTuple_GET_ITEM(c, 4), *counts = PyTuple_GET_ITEM(c, 6),
             *sealed = PyTuple_GET_ITEM(c, 8);
    if (!PyTuple_CheckExact(counts) || !PyTuple_CheckExact(sealed) || !PyTuple_Check(periods))
        return NOT_OURS;
    int r;
    if (mp_array(w, (size_t)(5 + PyTuple_GET_SIZE(counts) + PyTuple_GET_SIZE(sealed))) < 0)
        return -1;
    for (int i = 0; i < 4; i++)
        if ((r = mp_obj(w, PyTuple_GET_ITEM(c, i)))) return r;
    if ((r = mp_objs(w, counts, 0)) || (r = mp_objs(w, sealed, 0)) ||
        (r = mp_obj(w, PyTuple_GET_ITEM(c, 9))))
        return r;
    key[nprefix] = 0;
    if (emit(to->now, key, nprefix + 1, w) < 0) return -1;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(periods); k++) {
        PyObject *entries = PyTuple_GET_ITEM(periods, k);
        if (!PyList_Check(entries)) return NOT_OURS;
        key[nprefix] = (unsigned char)(k + 1);
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(entries); i++)
            if ((r = entry_items(to, w, key, nprefix + 1, PyList_GET_ITEM(entries, i),
                                 PyTuple_GET_ITEM(c, 3), PyTuple_GET_ITEM(c, 1))))
                return r;
    }
    return 0;
}

/* the lists' lengths before a state's items, to take back what it appended */
static void items_truncate(const Items *to, const Py_ssize_t at[3]) {
    PyObject *lists[3] = {to->now, to->gone, to->out};
    for (int i = 0; i < 3; i++)
        if (PyList_GET_SIZE(lists[i]) > at[i])
            (void)PyList_SetSlice(lists[i], at[i], PY_SSIZE_T_MAX, NULL); /* (cannot fail) */
}

/* the three lists fallback(state) returns appended to the batch's */
static int items_extend(const Items *to, PyObject *fallback, PyObject *state) {
    PyObject *three = PyObject_CallOneArg(fallback, state);
    if (!three) return -1;
    int r = -1;
    if (PyTuple_Check(three) && PyTuple_GET_SIZE(three) == 3) {
        PyObject *lists[3] = {to->now, to->gone, to->out};
        r = 0;
        for (int i = 0; i < 3 && !r; i++)
            r = PyList_SetSlice(lists[i], PY_SSIZE_T_MAX, PY_SSIZE_T_MAX,
                                PyTuple_GET_ITEM(three, i));
    } else {
        PyErr_SetString(PyExc_TypeError, "candle_batch: the fallback returns three lists");
    }
    Py_DECREF(three);
    return r;
}

/* candle_batch(batch, fallback): the candle writes of a snapshot's batch of SymbolStates, as
   store.candle_items makes them (byte for byte): each state's candles encoded into three
   lists for the whole batch (no lists, tuple and call of its own), a state without candles
   skipped, and fallback(state) (store's Python twin, which raises what it must) called for
   a state it does not take (a name not of 1 to 255 bytes, a value it leaves to the Python
   twin), none of its half-made items left. O(periods + their levels) */
PyObject *candle_batch(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "candle_batch(batch: list, fallback)");
        return NULL;
    }
    static PyObject *s_candles, *s_symbol;
    if (!s_candles && !(s_candles = PyUnicode_InternFromString("candles"))) return NULL;
    if (!s_symbol && !(s_symbol = PyUnicode_InternFromString("symbol"))) return NULL;
    PyObject *batch = args[0], *fallback = args[1];
    Items to = {PyList_New(0), PyList_New(0), PyList_New(0)};
    int r = to.now && to.gone && to.out ? 0 : -1;
    unsigned char key[255 + 1 + 12];
    Buf w;
    BUF_INIT(w);
    for (Py_ssize_t i = 0; !r && i < PyList_GET_SIZE(batch); i++) {
        PyObject *state = PyList_GET_ITEM(batch, i);
        PyObject *c = PyObject_GetAttr(state, s_candles), *sym = NULL;
        if (!c) {
            r = -1;
            break;
        }
        if (c != Py_None) {
            Py_ssize_t n = 0;
            const char *name = NULL;
            sym = PyObject_GetAttr(state, s_symbol);
            if (sym && PyUnicode_CheckExact(sym) && !(name = PyUnicode_AsUTF8AndSize(sym, &n)))
                PyErr_Clear(); /* not UTF-8: the Python twin raises */
            if (!sym) {
                r = -1;
            } else if (!name || n < 1 || n > 255) {
                r = NOT_OURS;
            } else {
                Py_ssize_t at[3] = {PyList_GET_SIZE(to.now), PyList_GET_SIZE(to.gone),
                                    PyList_GET_SIZE(to.out)};
                key[0] = (unsigned char)n;
                memcpy(key + 1, name, (size_t)n);
                w.n = 0;
                r = state_items(&to, &w, key, (size_t)n + 1, c);
                if (r == NOT_OURS) items_truncate(&to, at);
            }
            if (r == NOT_OURS) r = items_extend(&to, fallback, state);
        }
        Py_XDECREF(sym);
        Py_DECREF(c);
    }
    free(w.heap);
    if (!r) return Py_BuildValue("(NNN)", to.now, to.gone, to.out);
    Py_XDECREF(to.now);
    Py_XDECREF(to.gone);
    Py_XDECREF(to.out);
    return NULL;
}
