/* Shared by medianserv's extension modules (_reduce.c, and _native's _candles.c): a price
 * level with its number of trades, their order by price, and the price at a weighted rank of
 * a set of them. */
#ifndef MEDIANSERV_SELECT_H
#define MEDIANSERV_SELECT_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t price;
    int64_t count;
} LevelCount;

/* qsort's comparison of two levels by price */
static inline int level_cmp(const void *a, const void *b) {
    uint64_t x = ((const LevelCount *)a)->price, y = ((const LevelCount *)b)->price;
    return (x > y) - (x < y);
}

/* v[0..n) in ascending order of price (stable). A least-significant-digit radix sort over
 * only the bytes in which the prices differ (a minute's prices share their high bytes: three
 * or four passes), for n large enough to repay its passes; an insertion sort below that (no
 * call per comparison: a few dozen levels sort in a fraction of qsort's time), qsort when the
 * scratch array cannot be had. O(n) per byte that varies; qsort's O(n log n) with an indirect
 * call per comparison was most of a busy minute's retirement. */
static inline void sort_by_price(LevelCount *v, size_t n) {
    if (n < 128) {
        for (size_t i = 1; i < n; i++) {
            LevelCount x = v[i];
            size_t j = i;
            for (; j && v[j - 1].price > x.price; j--) v[j] = v[j - 1];
            v[j] = x;
        }
        return;
    }
    LevelCount *tmp = (LevelCount *)malloc(n * sizeof *tmp);
    if (!tmp) {
        qsort(v, n, sizeof *v, level_cmp);
        return;
    }
    uint64_t any = 0, every = ~(uint64_t)0;
    for (size_t i = 0; i < n; i++) {
        any |= v[i].price;
        every &= v[i].price;
    }
    uint64_t vary = any ^ every; /* the bits in which some two prices differ */
    LevelCount *src = v, *dst = tmp;
    for (int shift = 0; shift < 64; shift += 8) {
        if (!((vary >> shift) & 0xFF)) continue;
        size_t at[256] = {0};
        for (size_t i = 0; i < n; i++) at[(src[i].price >> shift) & 0xFF]++;
        for (size_t b = 0, sum = 0; b < 256; b++) {
            size_t c = at[b];
            at[b] = sum;
            sum += c;
        }
        for (size_t i = 0; i < n; i++) dst[at[(src[i].price >> shift) & 0xFF]++] = src[i];
        LevelCount *t = src;
        src = dst;
        dst = t;
    }
    if (src != v) memcpy(v, src, n * sizeof *v);
    free(tmp);
}

/* The price at weighted rank k (0-based: the trades of each level counted) of p[0..n),
 * prices in any order (a price in several entries counts as one level), k below their total
 * count; p is reordered. Quickselect with a three-way partition: O(n) expected, where a sort
 * is O(n log n) (an archive file's days, a period's median). */
static inline uint64_t price_at(LevelCount *p, size_t n, int64_t k) {
    size_t lo = 0, hi = n;
    uint64_t seed = 0x9E3779B97F4A7C15ULL;
    for (;;) {
        if (hi - lo == 1) return p[lo].price;
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        uint64_t pivot = p[lo + (size_t)((seed >> 33) % (hi - lo))].price;
        size_t a = lo, i = lo, c = hi; /* [lo, a) below, [a, i) equal, [c, hi) above */
        int64_t below = 0, equal = 0;
        while (i < c) {
            if (p[i].price < pivot) {
                LevelCount x = p[a];
                p[a] = p[i];
                p[i] = x;
                below += p[a++].count;
                i++;
            } else if (p[i].price > pivot) {
                LevelCount x = p[--c];
                p[c] = p[i];
                p[i] = x;
            } else {
                equal += p[i++].count;
            }
        }
        if (k < below) hi = a;
        else if (k < below + equal) return pivot;
        else {
            k -= below + equal;
            lo = c;
        }
    }
}

#endif
