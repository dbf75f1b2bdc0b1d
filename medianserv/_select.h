/* Shared by medianserv's extension modules (_reduce.c, and _native's _candles.c): a price
 * level with its number of trades, their order by price, and the price at a weighted rank of
 * a set of them. */
#ifndef MEDIANSERV_SELECT_H
#define MEDIANSERV_SELECT_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t price;
    int64_t count;
} LevelCount;

/* qsort's comparison of two levels by price */
static inline int level_cmp(const void *a, const void *b) {
    uint64_t x = ((const LevelCount *)a)->price, y = ((const LevelCount *)b)->price;
    return (x > y) - (x < y);
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
