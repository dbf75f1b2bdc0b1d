/* The compiled twin of medianserv/median.py's PyRunningMedian: the same algorithm, step for
 * step (two heaps of distinct levels near the median, each with a map of counts, and two cold
 * stores of ascending levels in chunks with their sums), so the same operations leave both
 * twins in the same state (the tests compare them state for state). See median.py for the
 * theory of operation; comments here say only what is particular to C.
 *
 * Every step is bounded by the constants (hot_max, refill, chunk), never by the number of
 * levels held: a reader waiting on a symbol's lock never waits for a step over all of them.
 * Memory runs out only in an allocation, checked everywhere: the median then refuses every
 * further use (`broken`) rather than serve a structure left half way.
 *
 * Pure: no I/O, no clock, no logging, no Python object held. Not thread-safe: its owner
 * serialises access (the GIL is held throughout; SymbolStats holds its lock). */
#include "_native.h"

#include <stdlib.h>
#include <string.h>
#ifndef _WIN32
#include <sys/mman.h>
#endif

#define HOT_MAX 2048
#define REFILL 512
#define CHUNK 1024

#define FAIL_MEM(m) do { (m)->broken = 1; PyErr_NoMemory(); return -1; } while (0)

/* -- the maps of counts beside the heaps ---------------------------------------------------- */

static int map_grow(Map *m) {
    size_t cap = m->cap ? m->cap * 2 : 8;
    int shift = m->cap ? m->shift - 1 : 64 - 3;
    u64 *keys = malloc(cap * sizeof *keys);
    i64 *vals = calloc(cap, sizeof *vals);
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return -1;
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->vals[i]) continue;
        size_t j = (size_t)((m->keys[i] * 0x9E3779B97F4A7C15ULL) >> shift);
        while (vals[j]) j = (j + 1) & (cap - 1);
        keys[j] = m->keys[i];
        vals[j] = m->vals[i];
    }
    free(m->keys);
    free(m->vals);
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    m->shift = shift;
    return 0;
}

/* the slot holding key, or SIZE_MAX */
static inline size_t map_find(const Map *m, u64 key) {
    if (!m->cap) return SIZE_MAX;
    size_t mask = m->cap - 1, j = map_home(m, key);
    while (m->vals[j]) {
        if (m->keys[j] == key) return j;
        j = (j + 1) & mask;
    }
    return SIZE_MAX;
}

static inline i64 map_get(const Map *m, u64 key) {
    size_t j = map_find(m, key);
    return j == SIZE_MAX ? 0 : m->vals[j];
}

/* key's count grows by k (a new key is inserted): the count after, -1 when memory ran out */
static i64 map_add(Map *m, u64 key, i64 k, int *inserted) {
    if (2 * (m->used + 1) > m->cap && map_grow(m) < 0) return -1;
    size_t mask = m->cap - 1, j = map_home(m, key);
    while (m->vals[j]) {
        if (m->keys[j] == key) {
            *inserted = 0;
            return m->vals[j] += k;
        }
        j = (j + 1) & mask;
    }
    m->keys[j] = key;
    m->vals[j] = k;
    m->used++;
    *inserted = 1;
    return k;
}

static void map_clear(Map *m) {
    if (m->cap) memset(m->vals, 0, m->cap * sizeof *m->vals);
    m->used = 0;
}

static void map_free(Map *m) {
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

/* -- the record of levels touched: tables never rehashed ------------------------------------ */

#define MAPPED (1u << 16)       /* bytes from which a record's table is mapped, not allocated */

/* zeroed memory that costs nothing until touched: above MAPPED bytes the kernel's pages,
 * each zeroed when first written (a page at a time over the puts that follow, never
 * megabytes at once, as calloc can when the heap serves it); NULL when none */
static void *zeroed(size_t bytes) {
#ifndef _WIN32
    if (bytes >= MAPPED) {
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        return p == MAP_FAILED ? NULL : p;
    }
#endif
    return calloc(1, bytes);
}

static void unzeroed(void *p, size_t bytes) {
#ifndef _WIN32
    if (bytes >= MAPPED) {
        if (p) munmap(p, bytes);
        return;
    }
#endif
    free(p);
}

static void table_free(Map *m) {
    unzeroed(m->keys, m->cap * sizeof(u64));
    unzeroed(m->vals, m->cap * sizeof(i64));
    memset(m, 0, sizeof *m);
}

/* key -> v in a map known to have room (no growth): insert or overwrite */
static void map_set_in_room(Map *m, u64 key, i64 v, int only_if_absent) {
    size_t mask = m->cap - 1, j = map_home(m, key);
    while (m->vals[j]) {
        if (m->keys[j] == key) {
            if (!only_if_absent) m->vals[j] = v;
            return;
        }
        j = (j + 1) & mask;
    }
    m->keys[j] = key;
    m->vals[j] = v;
    m->used++;
}

static int table_new(Map *m, size_t cap, int shift) {
    Map fresh = {zeroed(cap * sizeof(u64)), zeroed(cap * sizeof(i64)), cap, 0, shift};
    if (!fresh.keys || !fresh.vals) {
        unzeroed(fresh.keys, cap * sizeof(u64));
        unzeroed(fresh.vals, cap * sizeof(i64));
        return -1;
    }
    *m = fresh;
    return 0;
}

/* the entries a record's log holds. O(1) */
static size_t record_logged(const Record *r) {
    return r->nblocks ? (r->nblocks - 1) * LOG_CHUNK + (LOG_CHUNK - r->room) : 0;
}

/* a new block for the log: 0, or -1 (memory) */
static int record_block(Record *r) {
    if (r->nblocks == r->capblocks) {
        size_t cap = r->capblocks ? 2 * r->capblocks : 4;
        Touch **blocks = realloc(r->blocks, cap * sizeof *blocks);
        if (!blocks) return -1;
        r->blocks = blocks;
        r->capblocks = cap;
    }
    Touch *b = malloc(LOG_CHUNK * sizeof *b);
    if (!b) return -1;
    r->blocks[r->nblocks++] = b;
    r->next = b;
    r->room = LOG_CHUNK;
    return 0;
}

/* the levels a median holds, for its record (a level split across the cold stores counted
   twice). O(1) */
static size_t record_levels(const Median *m) {
    return m->low_counts.used + m->high_counts.used + (size_t)m->cold_levels;
}

/* key's count becomes v in m's record: O(1) amortised. An entry appended to the log while
 * it is open (a full block is followed by another only while the log holds at most twice the
 * levels gained since the record's first put); then one slot of one table written (a full
 * table is kept as it is and one twice its size takes the puts: no entry is ever moved). -1
 * (memory). A new table of MAPPED bytes or more is mapped: no put zeroes megabytes */
static int record_put(Median *m, u64 key, i64 v) {
    Record *r = &m->touched;
    if (!r->room && !r->closed) { /* the levels read here alone (cold_levels: a line of its own) */
        size_t levels = record_levels(m);
        if (!r->nblocks) r->base = levels; /* (the first block then always taken) */
        if (record_logged(r) > 2 * (levels > r->base ? levels - r->base : 0)) r->closed = 1;
        else if (record_block(r) < 0) return -1;
    }
    if (r->room) {
        *r->next++ = (Touch){key, v};
        r->room--;
        return 0;
    }
    if (2 * (r->cur.used + 1) > r->cur.cap) {
        Map fresh;
        if (table_new(&fresh, r->cur.cap ? r->cur.cap * 2 : 8, r->cur.cap ? r->cur.shift - 1 : 64 - 3) < 0)
            return -1;
        if (r->cur.cap) {
            Map *full = realloc(r->full, (r->nfull + 1) * sizeof *r->full);
            if (!full) {
                table_free(&fresh);
                return -1;
            }
            r->full = full;
            r->full[r->nfull++] = r->cur;
        }
        r->cur = fresh;
    }
    map_set_in_room(&r->cur, key, v, 0);
    return 0;
}

static void record_free(Record *r) {
    for (size_t i = 0; i < r->nblocks; i++) free(r->blocks[i]);
    free(r->blocks);
    table_free(&r->cur);
    for (size_t i = 0; i < r->nfull; i++) table_free(&r->full[i]);
    free(r->full);
    memset(r, 0, sizeof *r);
}

/* removes the key in slot j (backward-shift deletion: no tombstones) */
static void map_del_slot(Map *m, size_t j) {
    size_t mask = m->cap - 1, i = j;
    m->vals[j] = 0;
    m->used--;
    for (;;) {
        i = (i + 1) & mask;
        if (!m->vals[i]) return;
        size_t k = map_home(m, m->keys[i]);
        if (j <= i ? (j < k && k <= i) : (j < k || k <= i)) continue; /* stays */
        m->keys[j] = m->keys[i];
        m->vals[j] = m->vals[i];
        m->vals[i] = 0;
        j = i;
    }
}

/* -- heaps of prices (low: max-heap, high: min-heap) ---------------------------------------- */

static int heap_reserve(u64 **h, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 8;
    while (c < need) c *= 2;
    u64 *p = realloc(*h, c * sizeof *p);
    if (!p) return -1;
    *h = p;
    *cap = c;
    return 0;
}

#define BEFORE(maxheap, a, b) ((maxheap) ? (a) > (b) : (a) < (b))

static void heap_push(u64 *h, size_t n, u64 v, int maxheap) { /* h has room for n + 1 */
    size_t i = n;
    while (i) {
        size_t parent = (i - 1) / 2;
        if (!BEFORE(maxheap, v, h[parent])) break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = v;
}

static u64 heap_pop(u64 *h, size_t n, int maxheap) { /* n >= 1; returns the top */
    u64 top = h[0], v = h[n - 1];
    size_t i = 0, len = n - 1;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= len) break;
        if (c + 1 < len && BEFORE(maxheap, h[c + 1], h[c])) c++;
        if (!BEFORE(maxheap, h[c], v)) break;
        h[i] = h[c];
        i = c;
    }
    if (len) h[i] = v;
    return top;
}

static int cmp_u64(const void *a, const void *b) {
    u64 x = *(const u64 *)a, y = *(const u64 *)b;
    return x < y ? -1 : x > y;
}

/* -- cold stores ------------------------------------------------------------------------------ */

static Chunk *chunk_new(int cap) {
    if (cap < 1) cap = 1;
    Chunk *k = malloc(sizeof(Chunk) + (size_t)cap * (sizeof(u64) + sizeof(i64)));
    if (!k) return NULL;
    k->n = 0;
    k->cap = cap;
    k->p = (u64 *)(k + 1);
    k->c = (i64 *)(k->p + cap);
    return k;
}

static Chunk *chunk_of(const u64 *p, const i64 *c, int n) {
    Chunk *k = chunk_new(n);
    if (!k) return NULL;
    memcpy(k->p, p, (size_t)n * sizeof *p);
    memcpy(k->c, c, (size_t)n * sizeof *c);
    k->n = n;
    return k;
}

/* room for `need` levels in chunk i of s (a new block if it must grow): 0 or -1 */
static int chunk_reserve(Cold *s, size_t i, int need) {
    Chunk *k = s->chunks[i];
    if (need <= k->cap) return 0;
    int cap = k->cap * 2;
    if (cap < need) cap = need;
    if (cap > s->chunk + 1) cap = s->chunk + 1 > need ? s->chunk + 1 : need;
    Chunk *g = chunk_new(cap);
    if (!g) return -1;
    memcpy(g->p, k->p, (size_t)k->n * sizeof(u64));
    memcpy(g->c, k->c, (size_t)k->n * sizeof(i64));
    g->n = k->n;
    free(k);
    s->chunks[i] = g;
    return 0;
}

static i64 chunk_sum(const Chunk *k) {
    i64 s = 0;
    for (int i = 0; i < k->n; i++) s += k->c[i];
    return s;
}

static int cold_reserve(Cold *s, size_t need) {
    if (need <= s->cap) return 0;
    size_t cap = s->cap ? s->cap : 4;
    while (cap < need) cap *= 2;
    Chunk **chunks = realloc(s->chunks, cap * sizeof *chunks);
    if (!chunks) return -1;
    s->chunks = chunks;
    u64 *firsts = realloc(s->firsts, cap * sizeof *firsts);
    if (!firsts) return -1;
    s->firsts = firsts;
    i64 *sums = realloc(s->sums, cap * sizeof *sums);
    if (!sums) return -1;
    s->sums = sums;
    s->cap = cap;
    return 0;
}

/* puts new chunks (non-empty, in order, of bounded size) at index i: their firsts, sums and
 * levels counted here, total not (callers) */
static int cold_insert_chunks(Cold *s, size_t i, Chunk **ks, size_t n) {
    if (!n) return 0;
    if (cold_reserve(s, s->n + n) < 0) return -1;
    memmove(s->chunks + i + n, s->chunks + i, (s->n - i) * sizeof *s->chunks);
    memmove(s->firsts + i + n, s->firsts + i, (s->n - i) * sizeof *s->firsts);
    memmove(s->sums + i + n, s->sums + i, (s->n - i) * sizeof *s->sums);
    for (size_t j = 0; j < n; j++) {
        s->chunks[i + j] = ks[j];
        s->firsts[i + j] = ks[j]->p[0];
        s->sums[i + j] = chunk_sum(ks[j]);
        *s->levels += ks[j]->n;
    }
    s->n += n;
    return 0;
}

/* puts chunks moved from the other side at index i, with their firsts and sums: no chunk is
 * read (at ten million levels thousands of them, each a cache miss) and no level counted
 * again; total not counted (callers) */
static int cold_insert_moved(Cold *s, size_t i, Chunk **ks, const u64 *firsts, const i64 *sums,
                             size_t n) {
    if (!n) return 0;
    if (cold_reserve(s, s->n + n) < 0) return -1;
    memmove(s->chunks + i + n, s->chunks + i, (s->n - i) * sizeof *s->chunks);
    memmove(s->firsts + i + n, s->firsts + i, (s->n - i) * sizeof *s->firsts);
    memmove(s->sums + i + n, s->sums + i, (s->n - i) * sizeof *s->sums);
    memcpy(s->chunks + i, ks, n * sizeof *ks);
    memcpy(s->firsts + i, firsts, n * sizeof *firsts);
    memcpy(s->sums + i, sums, n * sizeof *sums);
    s->n += n;
    return 0;
}

/* removes chunks [i, j), to move to the other side, into out with their firsts and sums (all
 * with room); total counted, levels not (they stay held) */
static void cold_remove_chunks(Cold *s, size_t i, size_t j, Chunk **out, u64 *firsts,
                               i64 *sums) {
    if (i == j) return;
    memcpy(out, s->chunks + i, (j - i) * sizeof *out);
    memcpy(firsts, s->firsts + i, (j - i) * sizeof *firsts);
    memcpy(sums, s->sums + i, (j - i) * sizeof *sums);
    for (size_t k = i; k < j; k++) s->total -= s->sums[k];
    memmove(s->chunks + i, s->chunks + j, (s->n - j) * sizeof *s->chunks);
    memmove(s->firsts + i, s->firsts + j, (s->n - j) * sizeof *s->firsts);
    memmove(s->sums + i, s->sums + j, (s->n - j) * sizeof *s->sums);
    s->n -= j - i;
}

static void cold_free(Cold *s) {
    for (size_t i = 0; i < s->n; i++) free(s->chunks[i]);
    free(s->chunks);
    free(s->firsts);
    free(s->sums);
    int chunk = s->chunk;
    i64 *levels = s->levels;
    memset(s, 0, sizeof *s);
    s->chunk = chunk;
    s->levels = levels;
}

/* the last chunk whose first is <= price (the first chunk for a price below all); needs a chunk */
static size_t cold_find(Cold *s, u64 price) {
    size_t i = s->at;
    if (i < s->n && s->firsts[i] <= price && (i + 1 == s->n || price < s->firsts[i + 1])) return i;
    size_t lo = 0, hi = s->n; /* the first index whose first is > price */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->firsts[mid] <= price) lo = mid + 1;
        else hi = mid;
    }
    i = lo ? lo - 1 : 0;
    s->at = i;
    return i;
}

static inline int lower_bound(const u64 *p, int n, u64 v) {
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (p[mid] < v) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* k values at price: the level's count after, or -1 (memory) */
static i64 cold_add(Cold *s, u64 price, i64 k) {
    if (!s->n) {
        Chunk *c = chunk_of(&price, &k, 1);
        if (!c || cold_insert_chunks(s, 0, &c, 1) < 0) {
            free(c);
            return -1;
        }
        s->total += k;
        return k;
    }
    size_t i = cold_find(s, price);
    Chunk *c = s->chunks[i];
    int j = lower_bound(c->p, c->n, price);
    if (j < c->n && c->p[j] == price) {
        s->sums[i] += k;
        s->total += k;
        return c->c[j] += k;
    }
    if (chunk_reserve(s, i, c->n + 1) < 0) return -1;
    c = s->chunks[i];
    if (c->n + 1 > s->chunk && cold_reserve(s, s->n + 1) < 0) return -1; /* room for a split */
    memmove(c->p + j + 1, c->p + j, (size_t)(c->n - j) * sizeof(u64));
    memmove(c->c + j + 1, c->c + j, (size_t)(c->n - j) * sizeof(i64));
    c->p[j] = price;
    c->c[j] = k;
    c->n++;
    s->sums[i] += k;
    s->total += k;
    (*s->levels)++;
    if (j == 0) s->firsts[i] = price;
    if (c->n > s->chunk) { /* split: the upper half moves to a chunk of its own */
        int half = c->n / 2;
        Chunk *up = chunk_of(c->p + half, c->c + half, c->n - half);
        if (!up) return -1;
        c->n = half;
        *s->levels -= up->n; /* counted again by the insert */
        cold_insert_chunks(s, i + 1, &up, 1); /* room reserved above */
        s->sums[i] -= s->sums[i + 1];
    }
    return k;
}

static i64 cold_count_of(Cold *s, u64 price) {
    if (!s->n) return 0;
    size_t i = cold_find(s, price);
    Chunk *c = s->chunks[i];
    int j = lower_bound(c->p, c->n, price);
    return j < c->n && c->p[j] == price ? c->c[j] : 0;
}

/* removes the highest `levels` levels into (op, oc), ascending; returns how many */
static size_t cold_take_top(Cold *s, size_t levels, u64 *op, i64 *oc) {
    size_t i = s->n, want = levels, out = 0;
    while (want && i && (size_t)s->chunks[i - 1]->n <= want) { /* whole chunks from index i */
        want -= (size_t)s->chunks[i - 1]->n;
        i--;
    }
    if (want && i) { /* and the top `want` levels of chunk i - 1, the lowest taken: first */
        Chunk *c = s->chunks[i - 1];
        int cut = c->n - (int)want;
        memcpy(op, c->p + cut, want * sizeof(u64));
        memcpy(oc, c->c + cut, want * sizeof(i64));
        i64 sum = 0;
        for (size_t k = 0; k < want; k++) sum += oc[k];
        c->n = cut;
        s->sums[i - 1] -= sum;
        s->total -= sum;
        *s->levels -= (i64)want;
        out = want;
    }
    for (size_t k = i; k < s->n; k++) {
        Chunk *c = s->chunks[k];
        memcpy(op + out, c->p, (size_t)c->n * sizeof(u64));
        memcpy(oc + out, c->c, (size_t)c->n * sizeof(i64));
        out += (size_t)c->n;
        s->total -= s->sums[k];
        *s->levels -= c->n;
        free(c);
    }
    s->n = i;
    return out;
}

/* removes the lowest `levels` levels into (op, oc), ascending; returns how many */
static size_t cold_take_bottom(Cold *s, size_t levels, u64 *op, i64 *oc) {
    size_t i = 0, out = 0;
    while (levels && i < s->n && (size_t)s->chunks[i]->n <= levels) {
        Chunk *c = s->chunks[i];
        memcpy(op + out, c->p, (size_t)c->n * sizeof(u64));
        memcpy(oc + out, c->c, (size_t)c->n * sizeof(i64));
        out += (size_t)c->n;
        levels -= (size_t)c->n;
        s->total -= s->sums[i];
        *s->levels -= c->n;
        free(c);
        i++;
    }
    memmove(s->chunks, s->chunks + i, (s->n - i) * sizeof *s->chunks);
    memmove(s->firsts, s->firsts + i, (s->n - i) * sizeof *s->firsts);
    memmove(s->sums, s->sums + i, (s->n - i) * sizeof *s->sums);
    s->n -= i;
    if (levels && s->n) {
        Chunk *c = s->chunks[0];
        int part = (int)levels;
        memcpy(op + out, c->p, (size_t)part * sizeof(u64));
        memcpy(oc + out, c->c, (size_t)part * sizeof(i64));
        i64 sum = 0;
        for (int k = 0; k < part; k++) sum += c->c[k];
        memmove(c->p, c->p + part, (size_t)(c->n - part) * sizeof(u64));
        memmove(c->c, c->c + part, (size_t)(c->n - part) * sizeof(i64));
        c->n -= part;
        s->sums[0] -= sum;
        s->firsts[0] = c->p[0];
        s->total -= sum;
        *s->levels -= part;
        out += (size_t)part;
    }
    return out;
}

/* ascending distinct levels, each at or above every level held (the first may equal the
 * highest held): appended, the last chunk filled up to `chunk` first */
static int cold_put_top(Cold *s, const u64 *p, const i64 *c, size_t n) {
    size_t start = 0;
    if (n && s->n) {
        Chunk *last = s->chunks[s->n - 1];
        if (last->p[last->n - 1] == p[0]) {
            last->c[last->n - 1] += c[0];
            s->sums[s->n - 1] += c[0];
            s->total += c[0];
            start = 1;
        }
    }
    if (start < n && s->n && s->chunks[s->n - 1]->n < s->chunk) {
        size_t i = s->n - 1;
        size_t room = (size_t)(s->chunk - s->chunks[i]->n);
        if (room > n - start) room = n - start;
        if (chunk_reserve(s, i, s->chunks[i]->n + (int)room) < 0) return -1;
        Chunk *last = s->chunks[i];
        memcpy(last->p + last->n, p + start, room * sizeof(u64));
        memcpy(last->c + last->n, c + start, room * sizeof(i64));
        last->n += (int)room;
        i64 sum = 0;
        for (size_t k = start; k < start + room; k++) sum += c[k];
        s->sums[i] += sum;
        s->total += sum;
        *s->levels += (i64)room;
        start += room;
    }
    while (start < n) {
        int take = (int)(n - start < (size_t)s->chunk ? n - start : (size_t)s->chunk);
        Chunk *k = chunk_of(p + start, c + start, take);
        if (!k || cold_insert_chunks(s, s->n, &k, 1) < 0) {
            free(k);
            return -1;
        }
        s->total += s->sums[s->n - 1];
        start += (size_t)take;
    }
    return 0;
}

/* ascending distinct levels, each at or below every level held (the last may equal the
 * lowest held): prepended, the first chunk filled up to `chunk` first */
static int cold_put_bottom(Cold *s, const u64 *p, const i64 *c, size_t n) {
    size_t end = n;
    if (n && s->n && s->chunks[0]->p[0] == p[n - 1]) {
        s->chunks[0]->c[0] += c[n - 1];
        s->sums[0] += c[n - 1];
        s->total += c[n - 1];
        end--;
    }
    if (end && s->n && s->chunks[0]->n < s->chunk) {
        size_t room = (size_t)(s->chunk - s->chunks[0]->n);
        if (room > end) room = end;
        if (chunk_reserve(s, 0, s->chunks[0]->n + (int)room) < 0) return -1;
        Chunk *first = s->chunks[0];
        memmove(first->p + room, first->p, (size_t)first->n * sizeof(u64));
        memmove(first->c + room, first->c, (size_t)first->n * sizeof(i64));
        memcpy(first->p, p + end - room, room * sizeof(u64));
        memcpy(first->c, c + end - room, room * sizeof(i64));
        first->n += (int)room;
        i64 sum = 0;
        for (size_t k = end - room; k < end; k++) sum += c[k];
        s->sums[0] += sum;
        s->firsts[0] = first->p[0];
        s->total += sum;
        *s->levels += (i64)room;
        end -= room;
    }
    while (end) { /* chunks of `chunk` from the top down, each put at the bottom */
        int take = (int)(end < (size_t)s->chunk ? end : (size_t)s->chunk);
        Chunk *k = chunk_of(p + end - take, c + end - take, take);
        if (!k || cold_insert_chunks(s, 0, &k, 1) < 0) {
            free(k);
            return -1;
        }
        s->total += s->sums[0];
        end -= (size_t)take;
    }
    return 0;
}

/* A list of chunks taken out of a store to move to the other one (owned until put there),
 * with their first prices and sums: moving a chunk never reads it. */
typedef struct {
    Chunk **ks;
    u64 *firsts;
    i64 *sums;
    size_t n;
} Chunks;

static void chunks_free(Chunks *t) {
    for (size_t i = 0; i < t->n; i++) free(t->ks[i]);
    free(t->ks);
    free(t->firsts);
    free(t->sums);
    t->ks = NULL;
    t->firsts = NULL;
    t->sums = NULL;
    t->n = 0;
}

static int chunks_alloc(Chunks *t, size_t n) {
    if (!n) n = 1;
    t->ks = malloc(n * sizeof *t->ks);
    t->firsts = malloc(n * sizeof *t->firsts);
    t->sums = malloc(n * sizeof *t->sums);
    t->n = 0;
    if (t->ks && t->firsts && t->sums) return 0;
    chunks_free(t);
    return -1;
}

/* removes the k highest values (k <= total) as chunks, ascending: whole chunks by reference,
 * the chunk below them cut (a level split by the cut is then held by both sides) */
static int cold_take_top_values(Cold *s, i64 k, Chunks *out) {
    size_t i = s->n;
    i64 rest = k;
    while (i && s->sums[i - 1] <= rest) {
        i--;
        rest -= s->sums[i];
    }
    size_t whole = s->n - i;
    if (chunks_alloc(out, whole + 1) < 0) return -1;
    if (rest) { /* chunk i - 1, from its top: whole levels, then one in part */
        Chunk *c = s->chunks[i - 1];
        int j = c->n;
        i64 left = rest;
        while (c->c[j - 1] <= left) {
            j--;
            left -= c->c[j];
        }
        int n = c->n - j + (left ? 1 : 0);
        Chunk *part = chunk_new(n);
        if (!part) {
            chunks_free(out);
            return -1;
        }
        if (left) {
            part->p[0] = c->p[j - 1];
            part->c[0] = left;
            (*s->levels)++; /* the split level, on both sides now */
        }
        memcpy(part->p + (left ? 1 : 0), c->p + j, (size_t)(c->n - j) * sizeof(u64));
        memcpy(part->c + (left ? 1 : 0), c->c + j, (size_t)(c->n - j) * sizeof(i64));
        part->n = n;
        c->n = j;
        if (left) c->c[j - 1] -= left;
        s->sums[i - 1] -= rest;
        s->total -= rest;
        out->ks[0] = part;
        out->firsts[0] = part->p[0];
        out->sums[0] = rest;
        out->n = 1;
    }
    cold_remove_chunks(s, i, s->n, out->ks + out->n, out->firsts + out->n, out->sums + out->n);
    out->n += whole;
    return 0;
}

/* removes the k lowest values (k <= total) as chunks, ascending */
static int cold_take_bottom_values(Cold *s, i64 k, Chunks *out) {
    size_t i = 0;
    i64 rest = k;
    while (i < s->n && s->sums[i] <= rest) {
        rest -= s->sums[i];
        i++;
    }
    if (chunks_alloc(out, i + 1) < 0) return -1;
    Chunk *part = NULL;
    if (rest) { /* chunk i, from its bottom */
        Chunk *c = s->chunks[i];
        int j = 0;
        i64 left = rest;
        while (c->c[j] <= left) {
            left -= c->c[j];
            j++;
        }
        int n = j + (left ? 1 : 0);
        part = chunk_new(n);
        if (!part) {
            chunks_free(out);
            return -1;
        }
        memcpy(part->p, c->p, (size_t)j * sizeof(u64));
        memcpy(part->c, c->c, (size_t)j * sizeof(i64));
        if (left) {
            part->p[j] = c->p[j];
            part->c[j] = left;
            c->c[j] -= left;
            (*s->levels)++; /* the split level, on both sides now */
        }
        part->n = n;
        memmove(c->p, c->p + j, (size_t)(c->n - j) * sizeof(u64));
        memmove(c->c, c->c + j, (size_t)(c->n - j) * sizeof(i64));
        c->n -= j;
        s->firsts[i] = c->p[0];
        s->sums[i] -= rest;
        s->total -= rest;
    }
    cold_remove_chunks(s, 0, i, out->ks, out->firsts, out->sums);
    out->n = i;
    if (part) {
        out->ks[out->n] = part;
        out->firsts[out->n] = part->p[0];
        out->sums[out->n++] = rest;
    }
    return 0;
}

static int cold_put_chunks_at(Cold *s, size_t at, Chunks *t) {
    if (cold_insert_moved(s, at, t->ks, t->firsts, t->sums, t->n) < 0) {
        chunks_free(t);
        return -1;
    }
    for (size_t i = 0; i < t->n; i++) s->total += t->sums[i];
    t->n = 0;
    chunks_free(t);
    return 0;
}

/* chunks (ascending, at or below every level held; the very last level may equal the lowest
 * held) put at the bottom; takes them over (freed on failure too) */
static int cold_put_bottom_chunks(Cold *s, Chunks *t) {
    size_t n = t->n;
    if (n && s->n) {
        Chunk *last = t->ks[n - 1];
        if (last->p[last->n - 1] == s->firsts[0]) { /* one level again */
            i64 c = last->c[last->n - 1];
            s->chunks[0]->c[0] += c;
            s->sums[0] += c;
            s->total += c;
            t->sums[n - 1] -= c;
            (*s->levels)--;
            if (!--last->n) {
                free(last);
                t->n = --n;
            }
        }
    }
    return cold_put_chunks_at(s, 0, t);
}

/* chunks (ascending, at or above every level held; the very first level may equal the
 * highest held) put at the top */
static int cold_put_top_chunks(Cold *s, Chunks *t) {
    size_t n = t->n;
    if (n && s->n) {
        Chunk *first = t->ks[0], *top = s->chunks[s->n - 1];
        if (first->p[0] == top->p[top->n - 1]) { /* one level again */
            i64 c = first->c[0];
            top->c[top->n - 1] += c;
            s->sums[s->n - 1] += c;
            s->total += c;
            t->sums[0] -= c;
            (*s->levels)--;
            memmove(first->p, first->p + 1, (size_t)(first->n - 1) * sizeof(u64));
            memmove(first->c, first->c + 1, (size_t)(first->n - 1) * sizeof(i64));
            if (!--first->n) {
                free(first);
                memmove(t->ks, t->ks + 1, (n - 1) * sizeof *t->ks);
                memmove(t->firsts, t->firsts + 1, (n - 1) * sizeof *t->firsts);
                memmove(t->sums, t->sums + 1, (n - 1) * sizeof *t->sums);
                t->n = --n;
            } else t->firsts[0] = first->p[0];
        }
    }
    return cold_put_chunks_at(s, s->n, t);
}

static u64 cold_value_at(const Cold *s, i64 rank) {
    size_t i = 0;
    while (i < s->n && rank >= s->sums[i]) rank -= s->sums[i++];
    const Chunk *c = s->chunks[i];
    for (int j = 0; j < c->n; j++) {
        if (rank < c->c[j]) return c->p[j];
        rank -= c->c[j];
    }
    return 0; /* not reached: rank < total */
}

/* a store of ascending distinct levels, chunks half full (room for inserts) */
static int cold_build(Cold *s, const u64 *p, const i64 *c, size_t n) {
    int step = s->chunk / 2 > 0 ? s->chunk / 2 : 1;
    for (size_t i = 0; i < n; i += (size_t)step) {
        int take = (int)(n - i < (size_t)step ? n - i : (size_t)step);
        Chunk *k = chunk_of(p + i, c + i, take);
        if (!k || cold_insert_chunks(s, s->n, &k, 1) < 0) {
            free(k);
            return -1;
        }
        s->total += s->sums[s->n - 1];
    }
    return 0;
}

/* -- the median ------------------------------------------------------------------------------- */

/* scratch room for n levels (a spill, a refill, a freeze) */
typedef struct {
    u64 *p;
    i64 *c;
} Scratch;

static int scratch_get(Scratch *t, size_t n) {
    t->p = malloc((n ? n : 1) * sizeof(u64));
    t->c = malloc((n ? n : 1) * sizeof(i64));
    if (!t->p || !t->c) {
        free(t->p);
        free(t->c);
        return -1;
    }
    return 0;
}

static void scratch_free(Scratch *t) {
    free(t->p);
    free(t->c);
}

static int refill_low(Median *m) {
    Scratch t;
    if (scratch_get(&t, (size_t)m->refill) < 0) FAIL_MEM(m);
    size_t n = cold_take_top(&m->cold_low, (size_t)m->refill, t.p, t.c);
    if (heap_reserve(&m->low, &m->caplow, m->nlow + n) < 0) {
        scratch_free(&t);
        FAIL_MEM(m);
    }
    for (size_t i = n; i-- > 0;) { /* descending: a valid max-heap when it was empty */
        int inserted;
        if (map_add(&m->low_counts, t.p[i], t.c[i], &inserted) < 0) {
            scratch_free(&t);
            FAIL_MEM(m);
        }
        if (inserted) heap_push(m->low, m->nlow++, t.p[i], 1);
    }
    m->has_floor = m->cold_low.total > 0;
    m->floor_ = m->has_floor ? t.p[0] : 0;
    scratch_free(&t);
    return 0;
}

static int refill_high(Median *m) {
    Scratch t;
    if (scratch_get(&t, (size_t)m->refill) < 0) FAIL_MEM(m);
    size_t n = cold_take_bottom(&m->cold_high, (size_t)m->refill, t.p, t.c);
    if (heap_reserve(&m->high, &m->caphigh, m->nhigh + n) < 0) {
        scratch_free(&t);
        FAIL_MEM(m);
    }
    for (size_t i = 0; i < n; i++) { /* ascending: a valid min-heap */
        int inserted;
        if (map_add(&m->high_counts, t.p[i], t.c[i], &inserted) < 0) {
            scratch_free(&t);
            FAIL_MEM(m);
        }
        if (inserted) heap_push(m->high, m->nhigh++, t.p[i], 0);
    }
    m->has_ceil = m->cold_high.total > 0;
    m->ceil_ = m->has_ceil ? t.p[n - 1] : 0;
    scratch_free(&t);
    return 0;
}

/* a heap's levels, ascending, with their counts (taken out of the map when `take`) */
static int sorted_levels(const u64 *heap, size_t n, Map *counts, int take, Scratch *t) {
    if (scratch_get(t, n) < 0) return -1;
    if (!n) return 0; /* an empty heap may have no array yet */
    memcpy(t->p, heap, n * sizeof(u64));
    qsort(t->p, n, sizeof(u64), cmp_u64);
    for (size_t i = 0; i < n; i++) {
        size_t j = map_find(counts, t->p[i]);
        t->c[i] = counts->vals[j];
        if (take) map_del_slot(counts, j);
    }
    return 0;
}

static int spill_low(Median *m) {
    Scratch t;
    size_t n = m->nlow, half = n / 2;
    if (sorted_levels(m->low, n, &m->low_counts, 0, &t) < 0) FAIL_MEM(m);
    if (cold_put_top(&m->cold_low, t.p, t.c, half) < 0) {
        scratch_free(&t);
        FAIL_MEM(m);
    }
    for (size_t i = 0; i < half; i++) map_del_slot(&m->low_counts, map_find(&m->low_counts, t.p[i]));
    for (size_t i = 0; i < n - half; i++) m->low[i] = t.p[n - 1 - i]; /* descending */
    m->nlow = n - half;
    m->floor_ = t.p[half];
    m->has_floor = 1;
    scratch_free(&t);
    return 0;
}

static int spill_high(Median *m) {
    Scratch t;
    size_t n = m->nhigh, half = (n + 1) / 2;
    if (sorted_levels(m->high, n, &m->high_counts, 0, &t) < 0) FAIL_MEM(m);
    if (cold_put_bottom(&m->cold_high, t.p + half, t.c + half, n - half) < 0) {
        scratch_free(&t);
        FAIL_MEM(m);
    }
    for (size_t i = half; i < n; i++) map_del_slot(&m->high_counts, map_find(&m->high_counts, t.p[i]));
    memcpy(m->high, t.p, half * sizeof(u64)); /* ascending */
    m->nhigh = half;
    m->ceil_ = t.p[half - 1];
    m->has_ceil = 1;
    scratch_free(&t);
    return 0;
}

static int freeze(Median *m) {
    Scratch t;
    if (sorted_levels(m->low, m->nlow, &m->low_counts, 0, &t) < 0) FAIL_MEM(m);
    int rc = cold_put_top(&m->cold_low, t.p, t.c, m->nlow);
    scratch_free(&t);
    if (rc < 0) FAIL_MEM(m);
    if (sorted_levels(m->high, m->nhigh, &m->high_counts, 0, &t) < 0) FAIL_MEM(m);
    rc = cold_put_bottom(&m->cold_high, t.p, t.c, m->nhigh);
    scratch_free(&t);
    if (rc < 0) FAIL_MEM(m);
    m->nlow = m->nhigh = 0;
    map_clear(&m->low_counts);
    map_clear(&m->high_counts);
    return 0;
}

static int shift(Median *m, i64 k, int up) {
    Chunks t = {NULL, NULL, NULL, 0};
    if (freeze(m) < 0) return -1;
    if (up) {
        if (cold_take_top_values(&m->cold_low, k, &t) < 0) FAIL_MEM(m);
        if (cold_put_bottom_chunks(&m->cold_high, &t) < 0) FAIL_MEM(m);
        m->n_low -= k;
        m->n_high += k;
    } else {
        if (cold_take_bottom_values(&m->cold_high, k, &t) < 0) FAIL_MEM(m);
        if (cold_put_top_chunks(&m->cold_low, &t) < 0) FAIL_MEM(m);
        m->n_low += k;
        m->n_high -= k;
    }
    m->has_floor = m->has_ceil = 0;
    if (m->n_low && refill_low(m) < 0) return -1;
    if (m->n_high && refill_high(m) < 0) return -1;
    return 0;
}

static int move_low_to_high(Median *m, i64 k) {
    if (k > m->n_low - m->cold_low.total) return shift(m, k, 1);
    m->n_low -= k;
    m->n_high += k;
    while (k) {
        u64 key = m->low[0];
        size_t j = map_find(&m->low_counts, key);
        i64 c = m->low_counts.vals[j], take;
        if (c <= k) {
            heap_pop(m->low, m->nlow--, 1);
            map_del_slot(&m->low_counts, j);
            take = c;
        } else {
            m->low_counts.vals[j] = c - k;
            take = k;
        }
        k -= take;
        int inserted;
        if (heap_reserve(&m->high, &m->caphigh, m->nhigh + 1) < 0) FAIL_MEM(m);
        if (map_add(&m->high_counts, key, take, &inserted) < 0) FAIL_MEM(m);
        if (inserted) heap_push(m->high, m->nhigh++, key, 0);
    }
    if (!m->nlow && m->n_low && refill_low(m) < 0) return -1;
    if (m->nhigh > (size_t)m->hot_max && spill_high(m) < 0) return -1;
    return 0;
}

static int move_high_to_low(Median *m, i64 k) {
    if (k > m->n_high - m->cold_high.total) return shift(m, k, 0);
    m->n_high -= k;
    m->n_low += k;
    while (k) {
        u64 value = m->high[0];
        size_t j = map_find(&m->high_counts, value);
        i64 c = m->high_counts.vals[j], take;
        if (c <= k) {
            heap_pop(m->high, m->nhigh--, 0);
            map_del_slot(&m->high_counts, j);
            take = c;
        } else {
            m->high_counts.vals[j] = c - k;
            take = k;
        }
        k -= take;
        int inserted;
        if (heap_reserve(&m->low, &m->caplow, m->nlow + 1) < 0) FAIL_MEM(m);
        if (map_add(&m->low_counts, value, take, &inserted) < 0) FAIL_MEM(m);
        if (inserted) heap_push(m->low, m->nlow++, value, 1);
    }
    if (!m->nhigh && m->n_high && refill_high(m) < 0) return -1;
    if (m->nlow > (size_t)m->hot_max && spill_low(m) < 0) return -1;
    return 0;
}

static int rebalance(Median *m) {
    i64 excess = m->n_low - m->n_high - 1;
    if (excess > 0) return move_low_to_high(m, (excess + 1) / 2);
    excess = m->n_high - m->n_low;
    if (excess > 0) return move_high_to_low(m, (excess + 1) / 2);
    return 0;
}

/* times values on the low side, no rebalancing: the level's count after, or -1. A level's
 * count does not change as it moves between heaps and cold stores, so it is known here. */
static i64 add_low(Median *m, u64 value, i64 times) {
    i64 count;
    if (m->has_floor && value < m->floor_) {
        if ((count = cold_add(&m->cold_low, value, times)) < 0) FAIL_MEM(m);
    } else {
        int inserted;
        if (heap_reserve(&m->low, &m->caplow, m->nlow + 1) < 0) FAIL_MEM(m);
        if ((count = map_add(&m->low_counts, value, times, &inserted)) < 0) FAIL_MEM(m);
        if (inserted) {
            heap_push(m->low, m->nlow++, value, 1);
            if (m->nlow > (size_t)m->hot_max && spill_low(m) < 0) return -1;
        }
        if (m->nhigh && m->high[0] == value) count += map_get(&m->high_counts, value); /* split */
    }
    m->n_low += times;
    return count;
}

static i64 add_high(Median *m, u64 value, i64 times) {
    i64 count;
    if (m->has_ceil && value > m->ceil_) {
        if ((count = cold_add(&m->cold_high, value, times)) < 0) FAIL_MEM(m);
    } else {
        int inserted;
        if (heap_reserve(&m->high, &m->caphigh, m->nhigh + 1) < 0) FAIL_MEM(m);
        if ((count = map_add(&m->high_counts, value, times, &inserted)) < 0) FAIL_MEM(m);
        if (inserted) {
            heap_push(m->high, m->nhigh++, value, 0);
            if (m->nhigh > (size_t)m->hot_max && spill_high(m) < 0) return -1;
        }
        if (m->nlow && m->low[0] == value) count += map_get(&m->low_counts, value);
    }
    m->n_high += times;
    return count;
}

static i64 multiplicity(Median *m, u64 value) {
    if (m->has_floor && value < m->floor_) return cold_count_of(&m->cold_low, value);
    if (m->has_ceil && value > m->ceil_) return cold_count_of(&m->cold_high, value);
    return map_get(&m->low_counts, value) + map_get(&m->high_counts, value);
}

static int usable(Median *m) {
    if (!m->broken) return 1;
    PyErr_SetString(PyExc_RuntimeError, "median left unusable by an earlier out-of-memory");
    return 0;
}

i64 median_add(Median *m, u64 value, i64 times) {
    if (!usable(m)) return -1;
    if (times > INT64_MAX - (m->n_low + m->n_high)) {
        PyErr_SetString(PyExc_ValueError, "the count would pass 2**63 - 1");
        return -1;
    }
    i64 count;
    if (times == 1) { /* the per-trade path: at most one value moves across */
        if (!m->nlow || value <= m->low[0]) {
            if ((count = add_low(m, value, 1)) < 0) return -1;
            if (m->n_low > m->n_high + 1 && move_low_to_high(m, 1) < 0) return -1;
        } else {
            if ((count = add_high(m, value, 1)) < 0) return -1;
            if (m->n_high > m->n_low && move_high_to_low(m, 1) < 0) return -1;
        }
    } else if (times > 1) {
        count = (!m->nlow || value <= m->low[0]) ? add_low(m, value, times) : add_high(m, value, times);
        if (count < 0 || rebalance(m) < 0) return -1;
    } else {
        PyErr_Format(PyExc_ValueError, "times must be positive, not %lld", (long long)times);
        return -1;
    }
    if (record_put(m, value, count) < 0) FAIL_MEM(m);
    return count;
}

/* -- Python's view ------------------------------------------------------------------------------ */

static const char *VALUE_RANGE = "a value must lie in 0 .. 2**64 - 1";

/* a Python int in 0 .. 2^64 - 1, or -1 with ValueError (TypeError for what is no int) */
static int as_value(PyObject *o, u64 *out) {
    if (PyLong_CheckExact(o)) {
        *out = PyLong_AsUnsignedLongLong(o);
    } else {
        PyObject *i = PyNumber_Index(o); /* numpy's integers too */
        if (!i) return -1;
        *out = PyLong_AsUnsignedLongLong(i);
        Py_DECREF(i);
    }
    if (*out == (u64)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s, not %R", VALUE_RANGE, o);
        return -1;
    }
    return 0;
}

static PyObject *Median_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *names[] = {"hot_max", "refill", "chunk", NULL};
    int hot_max = HOT_MAX, refill = REFILL, chunk = CHUNK;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$iii", names, &hot_max, &refill, &chunk))
        return NULL;
    if (hot_max < 2 || refill < 1 || refill > hot_max || chunk < 2) {
        PyErr_SetString(PyExc_ValueError, "hot_max >= 2, 1 <= refill <= hot_max, chunk >= 2");
        return NULL;
    }
    Median *m = (Median *)type->tp_alloc(type, 0);
    if (!m) return NULL;
    m->hot_max = hot_max;
    m->refill = refill;
    m->chunk = chunk;
    m->cold_low.chunk = m->cold_high.chunk = chunk;
    m->cold_low.levels = m->cold_high.levels = &m->cold_levels;
    return (PyObject *)m;
}

static void Median_dealloc(Median *m) {
    free(m->low);
    free(m->high);
    map_free(&m->low_counts);
    map_free(&m->high_counts);
    record_free(&m->touched);
    cold_free(&m->cold_low);
    cold_free(&m->cold_high);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static PyObject *Median_add(Median *m, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    static const char *const names[] = {"value", "times"};
    PyObject *value = NULL, *times = NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs < 1 || nargs > 2) goto usage;
    value = args[0];
    if (nargs == 2) times = args[1];
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        if (!times && PyUnicode_Check(k) && PyUnicode_CompareWithASCIIString(k, names[1]) == 0)
            times = args[nargs + i];
        else goto usage;
    }
    u64 v;
    if (as_value(value, &v) < 0) return NULL;
    long long t = 1;
    if (times) {
        if (!PyLong_Check(times)) {
            PyErr_SetString(PyExc_TypeError, "times must be an int");
            return NULL;
        }
        int overflow;
        t = PyLong_AsLongLongAndOverflow(times, &overflow);
        if (overflow || (t == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "times out of range: %R", times);
            return NULL;
        }
    }
    i64 c = median_add(m, v, t);
    return c < 0 ? NULL : PyLong_FromLongLong(c);
usage:
    PyErr_SetString(PyExc_TypeError, "add(value, times=1)");
    return NULL;
}

/* the items of obj (a buffer of 8-byte integers, or a sequence of ints) into a new array */
static int read_ints(PyObject *obj, int is_unsigned, void **out, Py_ssize_t *n) {
    Py_buffer view;
    if (PyObject_CheckBuffer(obj) && PyObject_GetBuffer(obj, &view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) == 0) {
        const char *f = view.format ? view.format : "B";
        if (*f == '=' || *f == '@' || (PY_LITTLE_ENDIAN && *f == '<')) f++;
        int ok = view.itemsize == 8 && f[0] && !f[1] && strchr("QLql", f[0]);
        int sign_ok = !(is_unsigned && (f[0] == 'q' || f[0] == 'l'));
        if (ok) {
            *n = view.len / 8;
            *out = malloc((size_t)(*n ? *n : 1) * 8);
            if (!*out) {
                PyBuffer_Release(&view);
                PyErr_NoMemory();
                return -1;
            }
            memcpy(*out, view.buf, (size_t)*n * 8);
            PyBuffer_Release(&view);
            if (!sign_ok) {
                for (Py_ssize_t i = 0; i < *n; i++)
                    if (((i64 *)*out)[i] < 0) {
                        free(*out);
                        PyErr_Format(PyExc_ValueError, "%s", VALUE_RANGE);
                        return -1;
                    }
            }
            if (!is_unsigned && strchr("QL", f[0])) {
                for (Py_ssize_t i = 0; i < *n; i++)
                    if (((u64 *)*out)[i] > (u64)INT64_MAX) {
                        free(*out);
                        PyErr_SetString(PyExc_ValueError, "a count out of range");
                        return -1;
                    }
            }
            return 0;
        }
        PyBuffer_Release(&view);
    }
    PyErr_Clear();
    PyObject *seq = PySequence_Fast(obj, "a sequence of ints");
    if (!seq) return -1;
    *n = PySequence_Fast_GET_SIZE(seq);
    *out = malloc((size_t)(*n ? *n : 1) * 8);
    if (!*out) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < *n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (is_unsigned) {
            if (as_value(item, &((u64 *)*out)[i]) < 0) goto fail;
        } else {
            if (!PyLong_Check(item)) {
                PyErr_SetString(PyExc_TypeError, "counts must be ints");
                goto fail;
            }
            int overflow;
            long long v = PyLong_AsLongLongAndOverflow(item, &overflow);
            if (overflow || (v == -1 && PyErr_Occurred())) {
                PyErr_Clear();
                PyErr_SetString(PyExc_ValueError, "a count out of range");
                goto fail;
            }
            ((i64 *)*out)[i] = v;
        }
    }
    Py_DECREF(seq);
    return 0;
fail:
    Py_DECREF(seq);
    free(*out);
    return -1;
}

static PyObject *Median_add_many(Median *m, PyObject *args) {
    PyObject *prices_obj, *counts_obj, *out = NULL;
    u64 *p = NULL;
    i64 *c = NULL, *got = NULL;
    Py_ssize_t n, nc;
    if (!PyArg_ParseTuple(args, "OO:add_many", &prices_obj, &counts_obj)) return NULL;
    if (!usable(m)) return NULL;
    if (read_ints(prices_obj, 1, (void **)&p, &n) < 0) return NULL;
    if (read_ints(counts_obj, 0, (void **)&c, &nc) < 0) goto done;
    if (n != nc) {
        PyErr_Format(PyExc_ValueError, "%zd prices but %zd counts", n, nc);
        goto done;
    }
    for (Py_ssize_t i = 1; i < n; i++)
        if (p[i] <= p[i - 1]) {
            PyErr_SetString(PyExc_ValueError, "prices not distinct and ascending");
            goto done;
        }
    i64 room = INT64_MAX - (m->n_low + m->n_high);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (c[i] <= 0) {
            PyErr_SetString(PyExc_ValueError, "a count that is not positive");
            goto done;
        }
        if (c[i] > room) {
            PyErr_SetString(PyExc_ValueError, "the count would pass 2**63 - 1");
            goto done;
        }
        room -= c[i];
    }
    got = malloc((size_t)(n ? n : 1) * sizeof *got); /* each pair's count after */
    if (!got) {
        PyErr_NoMemory();
        goto done;
    }
    if (n) {
        int has_top = m->nlow > 0;
        u64 top = has_top ? m->low[0] : 0;
        Py_ssize_t below = m->has_floor ? lower_bound(p, (int)n, m->floor_) : 0;
        Py_ssize_t above = n;
        if (m->has_ceil) { /* the first index above the ceiling */
            Py_ssize_t lo = 0, hi = n;
            while (lo < hi) {
                Py_ssize_t mid = (lo + hi) / 2;
                if (p[mid] <= m->ceil_) lo = mid + 1;
                else hi = mid;
            }
            above = lo;
        }
        for (Py_ssize_t i = 0; i < below; i++) {
            if ((got[i] = cold_add(&m->cold_low, p[i], c[i])) < 0) {
                m->broken = 1;
                PyErr_NoMemory();
                goto done;
            }
            m->n_low += c[i];
        }
        for (Py_ssize_t i = above; i < n; i++) {
            if ((got[i] = cold_add(&m->cold_high, p[i], c[i])) < 0) {
                m->broken = 1;
                PyErr_NoMemory();
                goto done;
            }
            m->n_high += c[i];
        }
        for (Py_ssize_t i = below; i < above; i++) {
            got[i] = (!has_top || p[i] <= top) ? add_low(m, p[i], c[i]) : add_high(m, p[i], c[i]);
            if (got[i] < 0) goto done;
        }
        if (rebalance(m) < 0) goto done;
        for (Py_ssize_t i = 0; i < n; i++)
            if (record_put(m, p[i], got[i]) < 0) {
                m->broken = 1;
                PyErr_NoMemory();
                goto done;
            }
    }
    out = PyList_New(n);
    if (!out) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *x = PyLong_FromLongLong(got[i]);
        if (!x) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, x);
    }
done:
    free(got);
    free(p);
    free(c);
    return out;
}

/* -- Levels: what take_touched hands over ---------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Record record;      /* as the median left it: its tables are made one when read */
} Levels;

/* whether freeing the record takes long enough to be done off the lock: any of its tables
   mapped (MAPPED bytes or more: the largest is cur), or a log of many blocks */
static int record_large(const Record *r) {
    return r->cur.cap * sizeof(u64) >= MAPPED || r->nblocks * LOG_CHUNK * sizeof(Touch) >= MAPPED;
}

static void Levels_dealloc(Levels *l) {
    if (record_large(&l->record)) {
        Py_BEGIN_ALLOW_THREADS /* megabytes unmapped or freed: not with the interpreter held */
        record_free(&l->record);
        Py_END_ALLOW_THREADS
    } else /* a small one: handing the interpreter over and back would cost more (a snapshot
              frees one a symbol, and under a flood each hand-back waits on busy readers) */
        record_free(&l->record);
    Py_TYPE(l)->tp_free((PyObject *)l);
}

typedef Touch Pair;

static int cmp_pair(const void *a, const void *b) {
    const Pair *x = a, *y = b;
    return x->p != y->p ? (x->p < y->p ? -1 : 1) : (x->c > y->c) - (x->c < y->c);
}

/* the entries of a record's log and of all its tables (a level in several counted in each).
   O(tables) */
static size_t record_entries(const Record *r) {
    size_t n = record_logged(r) + r->cur.used;
    for (size_t i = 0; i < r->nfull; i++) n += r->full[i].used;
    return n;
}

/* a table's levels and counts, ascending, into out: how many */
static size_t table_pairs(const Map *t, Pair *out) {
    size_t k = 0;
    for (size_t i = 0; i < t->cap; i++)
        if (t->vals[i]) out[k++] = (Pair){t->keys[i], t->vals[i]};
    qsort(out, k, sizeof *out, cmp_pair);
    return k;
}

/* the log's levels once each, with the largest count logged (its latest: a level's count
   only grows), ascending, into out: how many. O(l log l); O(l) for a log in order */
static size_t log_pairs(const Record *r, Pair *out) {
    size_t k = 0;
    for (size_t i = 0; i < r->nblocks; i++) {
        size_t n = i + 1 < r->nblocks ? LOG_CHUNK : LOG_CHUNK - r->room;
        memcpy(out + k, r->blocks[i], n * sizeof *out);
        k += n;
    }
    int sorted = 1; /* (a market trending within a snapshot logs its levels in order) */
    for (size_t i = 1; i < k && sorted; i++) sorted = out[i - 1].p < out[i].p;
    if (sorted) return k;
    qsort(out, k, sizeof *out, cmp_pair); /* a level's entries by count: its latest last */
    size_t u = 0;
    for (size_t i = 0; i < k; i++) {
        if (u && out[u - 1].p == out[i].p) out[u - 1] = out[i];
        else out[u++] = out[i];
    }
    return u;
}

/* the levels of a and of b (newer: its count wins where both hold a level), ascending, into
   out: how many. O(na + nb) */
static size_t merge_newer(const Pair *a, size_t na, const Pair *b, size_t nb, Pair *out) {
    size_t i = 0, j = 0, k = 0;
    while (i < na && j < nb) {
        if (a[i].p < b[j].p) out[k++] = a[i++];
        else {
            i += a[i].p == b[j].p; /* the older count dropped */
            out[k++] = b[j++];
        }
    }
    while (i < na) out[k++] = a[i++];
    while (j < nb) out[k++] = b[j++];
    return k;
}

/* every level of a record once, with its latest count, ascending: a new array. The log is
   sorted (the oldest), then each table alone, merged into what came before it, oldest
   first: O(t log t) for the t entries of the log and of all the tables (twice as large each
   as the one before, so the merges copy each about twice) */
static Pair *record_pairs(const Record *r, size_t *n) {
    size_t total = record_entries(r), most = r->cur.used; /* the largest table's entries */
    for (size_t i = 0; i < r->nfull; i++)
        if (r->full[i].used > most) most = r->full[i].used;
    Pair *acc = malloc((total + 1) * sizeof *acc);
    if (!acc) return NULL;
    size_t k = log_pairs(r, acc);
    if (!r->cur.used && !r->nfull) {
        *n = k;
        return acc;
    }
    Pair *part = malloc((most + 1) * sizeof *part), *other = malloc((total + 1) * sizeof *other);
    if (!part || !other) {
        free(acc);
        free(part);
        free(other);
        return NULL;
    }
    for (size_t t = 0; t <= r->nfull; t++) {
        size_t np = table_pairs(t == r->nfull ? &r->cur : &r->full[t], part);
        k = merge_newer(acc, k, part, np, other);
        Pair *was = acc;
        acc = other;
        other = was;
    }
    free(part);
    free(other);
    *n = k;
    return acc;
}

static Py_ssize_t Levels_len(Levels *l) {
    size_t n;
    Pair *pairs = record_pairs(&l->record, &n);
    if (!pairs) {
        PyErr_NoMemory();
        return -1;
    }
    free(pairs);
    return (Py_ssize_t)n;
}

/* entries from which sorted_bytes sorts without the interpreter held (a millisecond or so);
   fewer are sorted holding it: a snapshot sorts one record a symbol, and under a flood each
   hand-back waits on busy readers */
#define SORT_ALONE 16384

/* the levels ascending and their counts, as native bytes; a large record sorted without the
 * interpreter held (no other thread holds this object: its median handed it over) */
static PyObject *Levels_sorted_bytes(Levels *l, PyObject *Py_UNUSED(ignored)) {
    size_t n;
    Pair *pairs;
    if (record_entries(&l->record) >= SORT_ALONE) {
        Py_BEGIN_ALLOW_THREADS
        pairs = record_pairs(&l->record, &n);
        Py_END_ALLOW_THREADS
    } else
        pairs = record_pairs(&l->record, &n);
    if (!pairs) return PyErr_NoMemory();
    PyObject *pb = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * 8));
    PyObject *cb = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * 8));
    if (pb && cb) {
        u64 *p = (u64 *)PyBytes_AS_STRING(pb);
        i64 *c = (i64 *)PyBytes_AS_STRING(cb);
        for (size_t i = 0; i < n; i++) {
            p[i] = pairs[i].p;
            c[i] = pairs[i].c;
        }
    }
    free(pairs);
    if (!pb || !cb) {
        Py_XDECREF(pb);
        Py_XDECREF(cb);
        return NULL;
    }
    return Py_BuildValue("NN", pb, cb);
}

static PyObject *Levels_to_dict(Levels *l, PyObject *Py_UNUSED(ignored)) {
    size_t n;
    Pair *pairs = record_pairs(&l->record, &n);
    if (!pairs) return PyErr_NoMemory();
    PyObject *d = PyDict_New();
    for (size_t i = 0; d && i < n; i++) {
        PyObject *k = PyLong_FromUnsignedLongLong(pairs[i].p), *v = PyLong_FromLongLong(pairs[i].c);
        if (!k || !v || PyDict_SetItem(d, k, v) < 0) Py_CLEAR(d);
        Py_XDECREF(k);
        Py_XDECREF(v);
    }
    free(pairs);
    return d;
}

static PyMethodDef Levels_methods[] = {
    {"sorted_bytes", (PyCFunction)Levels_sorted_bytes, METH_NOARGS,
     "sorted_bytes() -> (prices, counts): native uint64 / int64 bytes, ascending. O(t log t)."},
    {"to_dict", (PyCFunction)Levels_to_dict, METH_NOARGS, "to_dict() -> dict (for tests)."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Levels_as_sequence = {.sq_length = (lenfunc)Levels_len};

PyTypeObject LevelsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "medianserv._native.Levels",
    .tp_basicsize = sizeof(Levels),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Levels changed since a median last handed them over, each with its count.",
    .tp_dealloc = (destructor)Levels_dealloc,
    .tp_as_sequence = &Levels_as_sequence,
    .tp_methods = Levels_methods,
};

static PyObject *Median_take_touched(Median *m, PyObject *Py_UNUSED(ignored)) {
    Levels *l = PyObject_New(Levels, &LevelsType);
    if (!l) return NULL;
    l->record = m->touched; /* the record changes hands whole, as it is: O(1) */
    memset(&m->touched, 0, sizeof m->touched);
    return (PyObject *)l;
}

static PyObject *Median_multiplicity(Median *m, PyObject *value) {
    u64 v;
    if (as_value(value, &v) < 0) return NULL;
    return PyLong_FromLongLong(multiplicity(m, v));
}

static PyObject *Median_multiplicities(Median *m, PyObject *values) {
    PyObject *seq = PySequence_Fast(values, "values must be iterable");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = PyList_New(n);
    for (Py_ssize_t i = 0; out && i < n; i++) {
        u64 v;
        PyObject *x = NULL;
        if (as_value(PySequence_Fast_GET_ITEM(seq, i), &v) == 0) x = PyLong_FromLongLong(multiplicity(m, v));
        if (!x) Py_CLEAR(out);
        else PyList_SET_ITEM(out, i, x);
    }
    Py_DECREF(seq);
    return out;
}

static PyObject *sum_u64(u64 a, u64 b) { /* a + b as a Python int, past 2^64 too */
    if (a <= UINT64_MAX - b) return PyLong_FromUnsignedLongLong(a + b);
    PyObject *x = PyLong_FromUnsignedLongLong(a), *y = PyLong_FromUnsignedLongLong(b), *z = NULL;
    if (x && y) z = PyNumber_Add(x, y);
    Py_XDECREF(x);
    Py_XDECREF(y);
    return z;
}

static PyObject *Median_get_count(Median *m, void *Py_UNUSED(closure)) {
    return PyLong_FromLongLong(m->n_low + m->n_high);
}

static PyObject *Median_get_twice_median(Median *m, void *Py_UNUSED(closure)) {
    if (!m->nlow) Py_RETURN_NONE;
    u64 top = m->low[0];
    return sum_u64(top, m->n_low > m->n_high ? top : m->high[0]);
}

static PyObject *Median_get_levels(Median *m, void *Py_UNUSED(closure)) {
    int split = m->nlow && m->nhigh && m->low[0] == m->high[0];
    return PyLong_FromLongLong((i64)(m->nlow + m->nhigh) - split + m->cold_levels);
}

/* a heap's levels ascending with their counts, as a sorted copy (nothing taken out) */
static int heap_sorted(const u64 *heap, size_t n, Map *counts, Scratch *t) {
    return sorted_levels(heap, n, counts, 0, t);
}

static PyObject *Median_values_at(Median *m, PyObject *ranks) {
    PyObject *seq = PySequence_Fast(ranks, "ranks must be iterable");
    if (!seq) return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq);
    i64 n = m->n_low + m->n_high, cl = m->cold_low.total, ch = m->cold_high.total;
    i64 *want = malloc((size_t)(k ? k : 1) * sizeof *want);
    PyObject *out = NULL;
    Scratch lo = {NULL, NULL}, hi = {NULL, NULL};
    int sorted = 0;
    if (!want) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *r = PySequence_Fast_GET_ITEM(seq, i);
        int overflow;
        long long v = PyLong_Check(r) ? PyLong_AsLongLongAndOverflow(r, &overflow) : -1;
        if (!PyLong_Check(r)) {
            PyErr_SetString(PyExc_TypeError, "ranks must be ints");
            goto done;
        }
        if (overflow || v < 0 || v >= n) {
            PyErr_Clear();
            PyErr_SetString(PyExc_IndexError, "rank outside the values counted");
            goto done;
        }
        want[i] = v;
    }
    out = PyList_New(k);
    for (Py_ssize_t i = 0; out && i < k; i++) {
        i64 r = want[i];
        u64 v = 0;
        if (r < cl) v = cold_value_at(&m->cold_low, r);
        else if (r >= n - ch) v = cold_value_at(&m->cold_high, r - (n - ch));
        else {
            if (!sorted) {
                if (heap_sorted(m->low, m->nlow, &m->low_counts, &lo) < 0 ||
                    heap_sorted(m->high, m->nhigh, &m->high_counts, &hi) < 0) {
                    Py_CLEAR(out);
                    PyErr_NoMemory();
                    break;
                }
                sorted = 1;
            }
            r -= cl;
            int found = 0;
            for (size_t j = 0; !found && j < m->nlow; j++) {
                if (r < lo.c[j]) { v = lo.p[j]; found = 1; }
                else r -= lo.c[j];
            }
            for (size_t j = 0; !found && j < m->nhigh; j++) {
                if (r < hi.c[j]) { v = hi.p[j]; found = 1; }
                else r -= hi.c[j];
            }
        }
        PyObject *x = PyLong_FromUnsignedLongLong(v);
        if (!x) Py_CLEAR(out);
        else PyList_SET_ITEM(out, i, x);
    }
done:
    if (sorted) {
        scratch_free(&lo);
        scratch_free(&hi);
    }
    free(want);
    Py_DECREF(seq);
    return out;
}

/* every level and its count, ascending, as native bytes (uint64, int64) */
static PyObject *Median_dump(Median *m, PyObject *Py_UNUSED(ignored)) {
    size_t d = (size_t)m->cold_levels + m->nlow + m->nhigh;
    PyObject *pb = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(d * 8));
    PyObject *cb = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(d * 8));
    Scratch lo = {NULL, NULL}, hi = {NULL, NULL};
    if (!pb || !cb || heap_sorted(m->low, m->nlow, &m->low_counts, &lo) < 0) goto fail;
    if (heap_sorted(m->high, m->nhigh, &m->high_counts, &hi) < 0) {
        scratch_free(&lo);
        goto fail;
    }
    u64 *p = (u64 *)PyBytes_AS_STRING(pb);
    i64 *c = (i64 *)PyBytes_AS_STRING(cb);
    size_t k = 0;
    for (size_t i = 0; i < m->cold_low.n; i++) {
        Chunk *ch = m->cold_low.chunks[i];
        memcpy(p + k, ch->p, (size_t)ch->n * 8);
        memcpy(c + k, ch->c, (size_t)ch->n * 8);
        k += (size_t)ch->n;
    }
    for (size_t i = 0; i < m->nlow; i++, k++) {
        p[k] = lo.p[i];
        c[k] = lo.c[i];
    }
    for (size_t i = 0; i < m->nhigh; i++) {
        if (i == 0 && k && m->nlow && p[k - 1] == hi.p[0]) c[k - 1] += hi.c[0]; /* split level */
        else {
            p[k] = hi.p[i];
            c[k++] = hi.c[i];
        }
    }
    for (size_t i = 0; i < m->cold_high.n; i++) {
        Chunk *ch = m->cold_high.chunks[i];
        memcpy(p + k, ch->p, (size_t)ch->n * 8);
        memcpy(c + k, ch->c, (size_t)ch->n * 8);
        k += (size_t)ch->n;
    }
    scratch_free(&lo);
    scratch_free(&hi);
    if (k != d && (_PyBytes_Resize(&pb, (Py_ssize_t)(k * 8)) < 0 || _PyBytes_Resize(&cb, (Py_ssize_t)(k * 8)) < 0)) {
        Py_XDECREF(pb);
        Py_XDECREF(cb);
        return NULL;
    }
    return Py_BuildValue("NN", pb, cb);
fail:
    Py_XDECREF(pb);
    Py_XDECREF(cb);
    return PyErr_Occurred() ? NULL : PyErr_NoMemory();
}

/* becomes the median of checked ascending distinct prices with positive counts (empty only) */
static PyObject *Median_load(Median *m, PyObject *args) {
    PyObject *po, *co;
    u64 *p = NULL;
    i64 *c = NULL;
    Py_ssize_t n, nc;
    if (!PyArg_ParseTuple(args, "OO:_load", &po, &co)) return NULL;
    if (m->n_low + m->n_high || m->broken) {
        PyErr_SetString(PyExc_RuntimeError, "_load needs an empty median");
        return NULL;
    }
    if (read_ints(po, 1, (void **)&p, &n) < 0) return NULL;
    if (read_ints(co, 0, (void **)&c, &nc) < 0 || n != nc || !n) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "_load: one count per price, at least one");
        free(p);
        free(c);
        return NULL;
    }
    i64 total = 0;
    for (Py_ssize_t i = 0; i < n; i++) total += c[i];
    i64 want_low = total - total / 2, through = 0;
    Py_ssize_t i = 0;
    while (through + c[i] < want_low) through += c[i++];
    i64 spare = through + c[i] - want_low; /* values of level i on the high side */
    i64 keep = c[i];
    c[i] = keep - spare;
    int rc = cold_build(&m->cold_low, p, c, (size_t)i + 1);
    c[i] = keep;
    if (rc == 0) {
        if (spare) {
            c[i] = spare;
            rc = cold_build(&m->cold_high, p + i, c + i, (size_t)(n - i));
        } else rc = cold_build(&m->cold_high, p + i + 1, c + i + 1, (size_t)(n - i - 1));
    }
    free(p);
    free(c);
    if (rc < 0) {
        m->broken = 1;
        return PyErr_NoMemory();
    }
    m->n_low = want_low;
    m->n_high = total - want_low;
    if (refill_low(m) < 0 || (m->n_high && refill_high(m) < 0)) return NULL;
    Py_RETURN_NONE;
}

static PyObject *pairs_list(const Cold *s) {
    Py_ssize_t levels = 0;
    for (size_t i = 0; i < s->n; i++) levels += s->chunks[i]->n;
    PyObject *ps = PyList_New(levels), *cs = PyList_New(levels);
    if (!ps || !cs) goto fail;
    Py_ssize_t k = 0;
    for (size_t i = 0; i < s->n; i++) {
        const Chunk *ch = s->chunks[i];
        for (int j = 0; j < ch->n; j++, k++) {
            PyObject *x = PyLong_FromUnsignedLongLong(ch->p[j]), *y = PyLong_FromLongLong(ch->c[j]);
            if (!x || !y) {
                Py_XDECREF(x);
                Py_XDECREF(y);
                goto fail;
            }
            PyList_SET_ITEM(ps, k, x);
            PyList_SET_ITEM(cs, k, y);
        }
    }
    return Py_BuildValue("NN", ps, cs);
fail:
    Py_XDECREF(ps);
    Py_XDECREF(cs);
    return NULL;
}

static PyObject *hot_list(const u64 *heap, size_t n, Map *counts) {
    Scratch t;
    if (sorted_levels(heap, n, counts, 0, &t) < 0) return PyErr_NoMemory();
    PyObject *out = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; out && i < n; i++) {
        PyObject *pair = Py_BuildValue("(KL)", (unsigned long long)t.p[i], (long long)t.c[i]);
        if (!pair) Py_CLEAR(out);
        else PyList_SET_ITEM(out, (Py_ssize_t)i, pair);
    }
    scratch_free(&t);
    return out;
}

static PyObject *touched_list(const Record *t) {
    size_t n;
    Pair *pairs = record_pairs(t, &n);
    if (!pairs) return PyErr_NoMemory();
    PyObject *out = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; out && i < n; i++) {
        PyObject *pair = Py_BuildValue("(KL)", (unsigned long long)pairs[i].p, (long long)pairs[i].c);
        if (!pair) Py_CLEAR(out);
        else PyList_SET_ITEM(out, (Py_ssize_t)i, pair);
    }
    free(pairs);
    return out;
}

static PyObject *Median_state(Median *m, PyObject *Py_UNUSED(ignored)) {
    PyObject *floor_ = m->has_floor ? PyLong_FromUnsignedLongLong(m->floor_) : PyLong_FromLong(-1);
    PyObject *ceil_ = m->has_ceil ? PyLong_FromUnsignedLongLong(m->ceil_) : sum_u64(UINT64_MAX, 1);
    return Py_BuildValue("(LLNNNNNNN)", (long long)m->n_low, (long long)m->n_high, floor_, ceil_,
                         hot_list(m->low, m->nlow, &m->low_counts),
                         hot_list(m->high, m->nhigh, &m->high_counts), pairs_list(&m->cold_low),
                         pairs_list(&m->cold_high), touched_list(&m->touched));
}

static size_t cold_nbytes(const Cold *s) {
    size_t n = s->cap * (sizeof(Chunk *) + sizeof(u64) + sizeof(i64));
    for (size_t i = 0; i < s->n; i++) n += sizeof(Chunk) + (size_t)s->chunks[i]->cap * 16;
    return n;
}

static PyObject *Median_nbytes(Median *m, PyObject *Py_UNUSED(ignored)) {
    size_t n = sizeof(Median) + (m->caplow + m->caphigh) * sizeof(u64);
    n += (m->low_counts.cap + m->high_counts.cap) * 16;
    n += m->touched.nblocks * LOG_CHUNK * sizeof(Touch) + m->touched.capblocks * sizeof(Touch *);
    n += m->touched.cur.cap * 16 + m->touched.nfull * sizeof(Map);
    for (size_t i = 0; i < m->touched.nfull; i++) n += m->touched.full[i].cap * 16;
    n += cold_nbytes(&m->cold_low) + cold_nbytes(&m->cold_high);
    return PyLong_FromSize_t(n);
}

/* a store's order, chunks, sums and total; the levels it holds added to *levels */
static const char *cold_check(const Cold *s, int has_below, u64 below, int has_above, u64 above,
                              i64 *held) {
    i64 levels = 0, total = 0;
    for (size_t i = 0; i < s->n; i++) {
        const Chunk *c = s->chunks[i];
        if (c->n < 1 || c->n > s->chunk || c->n > c->cap) return "chunk size";
        if (c->p[0] != s->firsts[i] || chunk_sum(c) != s->sums[i]) return "chunk first or sum";
        if (i && s->chunks[i - 1]->p[s->chunks[i - 1]->n - 1] >= c->p[0]) return "order";
        for (int j = 0; j < c->n; j++) {
            if (c->c[j] <= 0) return "empty level";
            if (j && c->p[j - 1] >= c->p[j]) return "order";
        }
        levels += c->n;
        total += s->sums[i];
    }
    if (total != s->total) return "cold total";
    *held += levels;
    if (s->n && has_below) {
        const Chunk *c = s->chunks[s->n - 1];
        if (c->p[c->n - 1] >= below) return "cold level not below the heap";
    }
    if (s->n && has_above && s->chunks[0]->p[0] <= above) return "cold level not above the heap";
    return NULL;
}

static PyObject *Median_check(Median *m, PyObject *Py_UNUSED(ignored)) {
    CHECK(!m->broken, "broken");
    for (size_t i = 1; i < m->nlow; i++) CHECK(m->low[(i - 1) / 2] >= m->low[i], "low heap order");
    for (size_t i = 1; i < m->nhigh; i++) CHECK(m->high[(i - 1) / 2] <= m->high[i], "high heap order");
    CHECK(m->nlow == m->low_counts.used, "low heap and counts disagree");
    i64 low_sum = 0, high_sum = 0;
    for (size_t i = 0; i < m->nlow; i++) {
        i64 c = map_get(&m->low_counts, m->low[i]);
        CHECK(c > 0, "low heap and counts disagree");
        low_sum += c;
    }
    for (size_t i = 0; i < m->nhigh; i++) {
        i64 c = map_get(&m->high_counts, m->high[i]);
        CHECK(c > 0, "high heap and counts disagree");
        high_sum += c;
    }
    {
        Scratch t;
        if (sorted_levels(m->low, m->nlow, &m->low_counts, 0, &t) < 0) return PyErr_NoMemory();
        int dup = 0;
        for (size_t i = 1; i < m->nlow; i++) dup |= t.p[i - 1] == t.p[i];
        scratch_free(&t);
        CHECK(!dup, "low heap and counts disagree");
        if (sorted_levels(m->high, m->nhigh, &m->high_counts, 0, &t) < 0) return PyErr_NoMemory();
        for (size_t i = 1; i < m->nhigh; i++) dup |= t.p[i - 1] == t.p[i];
        scratch_free(&t);
        CHECK(!dup, "high heap and counts disagree");
    }
    CHECK(m->nhigh == m->high_counts.used, "high heap and counts disagree");
    CHECK(m->nlow <= (size_t)m->hot_max && m->nhigh <= (size_t)m->hot_max, "heap over hot_max");
    CHECK(low_sum + m->cold_low.total == m->n_low, "low count");
    CHECK(high_sum + m->cold_high.total == m->n_high, "high count");
    CHECK(m->n_high <= m->n_low && m->n_low <= m->n_high + 1, "sides unbalanced");
    CHECK((m->n_low == 0) == (m->nlow == 0), "a side with values and no heap");
    CHECK((m->n_high == 0) == (m->nhigh == 0), "a side with values and no heap");
    if (m->cold_low.total) {
        CHECK(m->has_floor, "cold levels without a floor");
        for (size_t i = 0; i < m->nlow; i++) CHECK(m->low[i] >= m->floor_, "low heap level below the floor");
    } else CHECK(!m->has_floor && !m->cold_low.n, "floor without cold levels");
    if (m->cold_high.total) {
        CHECK(m->has_ceil, "cold levels without a ceiling");
        for (size_t i = 0; i < m->nhigh; i++) CHECK(m->high[i] <= m->ceil_, "high heap level above the ceiling");
    } else CHECK(!m->has_ceil && !m->cold_high.n, "ceiling without cold levels");
    i64 held = 0;
    const char *why = cold_check(&m->cold_low, m->has_floor, m->floor_, 0, 0, &held);
    if (!why) why = cold_check(&m->cold_high, 0, 0, m->has_ceil, m->ceil_, &held);
    CHECK(!why, why ? why : "");
    CHECK(held == m->cold_levels, "cold levels");
    if (m->nlow && m->nhigh) CHECK(m->low[0] <= m->high[0], "max(low) > min(high)");
    Py_RETURN_NONE;
}

static PyMethodDef Median_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Median_add, METH_FASTCALL | METH_KEYWORDS,
     "add(value, times=1) -> int: see PyRunningMedian.add."},
    {"add_many", (PyCFunction)Median_add_many, METH_VARARGS,
     "add_many(prices, counts) -> list[int]: see PyRunningMedian.add_many."},
    {"multiplicity", (PyCFunction)Median_multiplicity, METH_O, "multiplicity(value) -> int."},
    {"take_touched", (PyCFunction)Median_take_touched, METH_NOARGS,
     "take_touched() -> Levels: see PyRunningMedian.take_touched. O(1)."},
    {"multiplicities", (PyCFunction)Median_multiplicities, METH_O, "multiplicities(values) -> list."},
    {"values_at", (PyCFunction)Median_values_at, METH_O, "values_at(ranks) -> list[int]."},
    {"_dump", (PyCFunction)Median_dump, METH_NOARGS, "(prices bytes, counts bytes), ascending."},
    {"_load", (PyCFunction)Median_load, METH_VARARGS, "_load(prices, counts): an empty median becomes theirs."},
    {"_state", (PyCFunction)Median_state, METH_NOARGS, "The state, layout aside (see median.py)."},
    {"_check", (PyCFunction)Median_check, METH_NOARGS, "Assert every invariant."},
    {"nbytes", (PyCFunction)Median_nbytes, METH_NOARGS, "Memory held, in bytes."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Median_getset[] = {
    {"count", (getter)Median_get_count, NULL, "Number of values added. O(1).", NULL},
    {"twice_median", (getter)Median_get_twice_median, NULL, "Twice the median, or None. O(1).", NULL},
    {"levels", (getter)Median_get_levels, NULL, "Distinct values held. O(1).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject MedianType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "medianserv._native.Median",
    .tp_basicsize = sizeof(Median),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Median(*, hot_max=2048, refill=512, chunk=1024): the compiled twin of "
              "medianserv.median.PyRunningMedian (see there).",
    .tp_new = Median_new,
    .tp_dealloc = (destructor)Median_dealloc,
    .tp_methods = Median_methods,
    .tp_getset = Median_getset,
};
