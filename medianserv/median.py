"""RunningMedian: the exact median of every value ever added, in memory O(distinct values),
and no step that does more than a bounded amount of work.

Theory of operation
-------------------
The classic running median keeps every value in two heaps, so its memory grows with the
number of trades: about 40 bytes per trade, 40 GB after a billion trades. Trade prices, though,
repeat: they sit on a tick grid and a busy symbol trades the same few thousand price levels
millions of times. So each heap holds *distinct* price levels, and a count beside each level
says how many of the values at that level belong to that side:

* ``low``  - a max-heap of the lower half's levels near the median;
* ``high`` - a min-heap of the upper half's levels near the median;
* ``n_low`` / ``n_high`` - how many values (not levels) each side holds.

The sides hold ``n_low == n_high`` or ``n_low == n_high + 1`` values, and every level of the
low side is <= every level of the high side. One price level may be split across both sides
(then it is both ``max(low)`` and ``min(high)``), which is what lets us move a single value, not
a whole level, when rebalancing. The median is read from the two heap tops: O(1).

*Levels far from the median go cold.* A whole history of BTCUSDT is about 10 million
distinct prices; the heaps only ever need the levels near the median, which moves by at most
one value per value added. So each heap keeps at most ``hot_max`` levels; past that, its far
half moves to its side's *cold store* (:class:`_Cold`): the side's other levels in ascending
order, in chunks of at most ``chunk`` levels (16 bytes a level), each chunk with the sum of
its counts. ``floor`` and ``ceil`` bound the heaps: a value below ``floor`` (above ``ceil``)
is counted in the cold store, one comparison more on the per-trade path. When a heap runs
empty while its side still holds values, the ``refill`` nearest levels come back from the
cold store.

*No step does unbounded work.* Every step is bounded by the constants, never by the number
of levels d (so a reader that waits on a symbol's lock never waits for a step over all of
its levels):

* a value beyond a heap: a search of the cold store's chunk firsts, a search and an insert
  within one chunk (a split when it outgrows ``chunk``): O(log d + chunk);
* a spill (a heap over ``hot_max``): sort the heap, move its far half to the near end of the
  cold store: O(hot_max log hot_max), after at least ``hot_max / 2`` new levels;
* a refill: ``refill`` levels from the near end of the cold store: O(refill + chunk);
* moving ``k`` values across when more than a heap holds (a batch far from the median): both
  heaps go cold, whole chunks move from one cold store to the other by reference (each
  chunk's sum says how many values it holds), one chunk is cut, both heaps are refilled:
  O(hot_max log hot_max + chunks crossed + chunk), with chunks crossed at most d / chunk;
* :meth:`RunningMedian.add_many` (part of an archive file): O(p (log d + chunk)) for p pairs;
  its caller bounds p (:meth:`~medianserv.symbols.SymbolStats.apply_levels` applies a file
  in pieces, the symbol's lock released between them).

Every add returns the count its level holds afterwards, so a snapshot stores what changed
without looking a single level up again (see :mod:`medianserv.symbols`).

The median of an even count is the mean of the two middle values; it is kept as *twice* the
median (``twice_median``), an exact integer. Values are integers in ``0 .. 2**64 - 1``
(prices in 1e-8 units: up to 10**19 - 1).

>>> m = PyRunningMedian()
>>> [m.add(v) for v in (5, 1, 5, 3)]   # each add returns its level's count
[1, 1, 2, 1]
>>> m.count, m.twice_median            # median of 1 3 5 5 is 4
(4, 8)
>>> m.add(9, times=3)                   # 1 3 5 5 9 9 9: median 5
3
>>> m.count, m.twice_median, m.values_at([0, 6])
(7, 10, [1, 9])

Two twins, one behaviour: :class:`PyRunningMedian` here, and the same algorithm in C
(``medianserv/_median.c``, built at install where a C compiler is), whose class
:data:`CRunningMedian` is None where it was not built. :data:`RunningMedian` is the compiled
one where it exists. The tests run both and hold them to the same oracle and to each other,
state for state.

Pure: no I/O, no threads, no clock, no logging. Not thread-safe: its owner serialises access.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from heapq import heapify, heappop, heappush
from itertools import pairwise
from typing import Any

import numpy as np

__all__ = [
    "CHUNK", "HOT_MAX", "REFILL", "CRunningMedian", "PyRunningMedian", "RunningMedian", "Touched",
    "touched_arrays",
]  # fmt: skip

#: Levels a heap holds at most; past it, its far half goes to the cold store.
HOT_MAX = 2_048
#: Levels a heap takes back from its cold store when it runs empty.
REFILL = 512
#: Levels a cold chunk holds at most; past it, the chunk splits in two.
CHUNK = 1_024
#: ``ceil`` when nothing is cold on the high side: above every value.
NO_CEIL = 1 << 64
#: Values a median holds at most (a signed 64-bit count, as the compiled twin keeps it).
MAX_COUNT = (1 << 63) - 1

_Prices = np.ndarray[Any, np.dtype[np.uint64]]
_Counts = np.ndarray[Any, np.dtype[np.int64]]
_Chunk = tuple["array[int]", "array[int]", int]  # prices, counts, and the sum of the counts


def _check_value(value: int) -> None:
    if not 0 <= value < NO_CEIL:
        raise ValueError(f"a value must lie in 0 .. 2**64 - 1, not {value}")


class _Cold:
    """One side's levels beyond its heap: ascending, distinct, counts positive, in chunks of
    at most ``chunk`` levels (``array('Q')`` prices and ``array('q')`` counts, 16 bytes a
    level), with each chunk's first price (searched) and the sum of its counts. ``total``
    counts the values held, ``levels`` the levels. Not thread-safe.

    Runtime complexity: :meth:`add` and :meth:`count_of` O(log d + chunk); :meth:`take_top`,
    :meth:`take_bottom`, :meth:`put_top`, :meth:`put_bottom` O(levels moved + chunk);
    :meth:`take_top_values` / :meth:`take_bottom_values` / ``put_*_chunks`` O(chunks moved +
    chunk), the chunks moved by reference; :meth:`value_at` O(d / chunk + chunk)."""

    __slots__ = ("_at", "chunk", "counts", "firsts", "levels", "prices", "sums", "total")

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk
        self.prices: list[array[int]] = []  # each chunk's prices, ascending
        self.counts: list[array[int]] = []  # each chunk's counts
        self.firsts: list[int] = []  # each chunk's first price (what a search looks at)
        self.sums: list[int] = []  # each chunk's values
        self.total = 0
        self.levels = 0
        self._at = 0  # the chunk the last search found: trades cluster, the next is likely there

    # -- one level ---------------------------------------------------------------------------

    def _find(self, price: int) -> int:
        """The chunk where ``price`` is or belongs (the last whose first is <= price; the
        first chunk for a price below every one). Needs a chunk. O(log d)."""
        firsts = self.firsts
        i, n = self._at, len(firsts)
        if i < n and firsts[i] <= price and (i + 1 == n or price < firsts[i + 1]):
            return i
        i = max(0, bisect_right(firsts, price) - 1)
        self._at = i
        return i

    def add(self, price: int, k: int) -> int:
        """``k`` values at ``price``; returns the level's count now. O(log d + chunk)."""
        self.total += k
        if not self.firsts:
            self._insert_chunks(0, [(array("Q", [price]), array("q", [k]), k)])
            return k
        i = self._find(price)
        prices, counts = self.prices[i], self.counts[i]
        j = bisect_left(prices, price)
        self.sums[i] += k
        if j < len(prices) and prices[j] == price:
            c = counts[j] + k
            counts[j] = c
            return c
        prices.insert(j, price)
        counts.insert(j, k)
        self.levels += 1
        if j == 0:
            self.firsts[i] = price
        if len(prices) > self.chunk:
            half = len(prices) // 2
            upper = counts[half:]
            self._insert_chunks(i + 1, [(prices[half:], upper, sum(upper))], count=False)
            del prices[half:], counts[half:]
            self.sums[i] -= self.sums[i + 1]
        return k

    def count_of(self, price: int) -> int:
        """Values at ``price``. O(log d)."""
        if not self.firsts:
            return 0
        i = self._find(price)
        prices = self.prices[i]
        j = bisect_left(prices, price)
        return self.counts[i][j] if j < len(prices) and prices[j] == price else 0

    # -- the chunk directory -----------------------------------------------------------------

    def _insert_chunks(self, i: int, chunks: Sequence[_Chunk], *, count: bool = True) -> None:
        """Put whole chunks (non-empty, in order, with their sums) at index ``i``; ``total``
        is the caller's. O(d / chunk + chunks)."""
        self.prices[i:i] = [p for p, _, _ in chunks]
        self.counts[i:i] = [c for _, c, _ in chunks]
        self.firsts[i:i] = [p[0] for p, _, _ in chunks]
        self.sums[i:i] = [s for _, _, s in chunks]
        if count:
            self.levels += sum(len(p) for p, _, _ in chunks)

    def _remove_chunks(self, i: int, j: int) -> list[_Chunk]:
        """Remove chunks ``i .. j - 1`` and return them. O(d / chunk)."""
        out = list(zip(self.prices[i:j], self.counts[i:j], self.sums[i:j], strict=True))
        self.total -= sum(self.sums[i:j])
        self.levels -= sum(len(p) for p, _, _ in out)
        del self.prices[i:j], self.counts[i:j], self.firsts[i:j], self.sums[i:j]
        return out

    def _new_chunks(self, prices: Sequence[int], counts: Sequence[int], step: int) -> list[_Chunk]:
        """Chunks of at most ``step`` levels over ascending levels. O(levels)."""
        out = []
        for i in range(0, len(prices), step):
            part = array("q", counts[i : i + step])
            out.append((array("Q", prices[i : i + step]), part, sum(part)))
        return out

    # -- the near ends -----------------------------------------------------------------------

    def take_top(self, levels: int) -> tuple[list[int], list[int]]:
        """Remove and return the highest ``levels`` levels, ascending. O(levels + chunk)."""
        parts: list[_Chunk] = []
        while levels > 0 and self.prices:
            prices, counts = self.prices[-1], self.counts[-1]
            if len(prices) <= levels:
                levels -= len(prices)
                parts += self._remove_chunks(len(self.prices) - 1, len(self.prices))
            else:
                cut = len(prices) - levels
                taken = sum(counts[cut:])
                part = (prices[cut:], counts[cut:], taken)
                del prices[cut:], counts[cut:]
                self.sums[-1] -= taken
                self.total -= taken
                self.levels -= levels
                parts.append(part)
                levels = 0
        parts.reverse()
        return [p for part in parts for p in part[0]], [c for part in parts for c in part[1]]

    def take_bottom(self, levels: int) -> tuple[list[int], list[int]]:
        """Remove and return the lowest ``levels`` levels, ascending. O(levels + chunk)."""
        parts: list[_Chunk] = []
        while levels > 0 and self.prices:
            prices, counts = self.prices[0], self.counts[0]
            if len(prices) <= levels:
                levels -= len(prices)
                parts += self._remove_chunks(0, 1)
            else:
                taken = sum(counts[:levels])
                part = (prices[:levels], counts[:levels], taken)
                del prices[:levels], counts[:levels]
                self.sums[0] -= taken
                self.firsts[0] = prices[0]
                self.total -= taken
                self.levels -= levels
                parts.append(part)
                levels = 0
        return [p for part in parts for p in part[0]], [c for part in parts for c in part[1]]

    def put_top(self, prices: Sequence[int], counts: Sequence[int]) -> None:
        """Add ascending distinct levels, each at or above every level held (the far half of
        the low heap). O(levels + chunk)."""
        start = 0
        if prices and self.prices and self.prices[-1][-1] == prices[0]:
            self.counts[-1][-1] += counts[0]
            self.sums[-1] += counts[0]
            self.total += counts[0]
            start = 1
        if start < len(prices) and self.prices and len(self.prices[-1]) < self.chunk:
            room = min(self.chunk - len(self.prices[-1]), len(prices) - start)
            self.prices[-1].extend(prices[start : start + room])
            self.counts[-1].extend(counts[start : start + room])
            added = sum(counts[start : start + room])
            self.sums[-1] += added
            self.total += added
            self.levels += room
            start += room
        chunks = self._new_chunks(prices[start:], counts[start:], self.chunk)
        self.total += sum(s for _, _, s in chunks)
        self._insert_chunks(len(self.prices), chunks)

    def put_bottom(self, prices: Sequence[int], counts: Sequence[int]) -> None:
        """Add ascending distinct levels, each at or below every level held (the far half of
        the high heap). O(levels + chunk)."""
        end = len(prices)
        if prices and self.prices and self.prices[0][0] == prices[-1]:
            self.counts[0][0] += counts[-1]
            self.sums[0] += counts[-1]
            self.total += counts[-1]
            end -= 1
        if end > 0 and self.prices and len(self.prices[0]) < self.chunk:
            room = min(self.chunk - len(self.prices[0]), end)
            self.prices[0][0:0] = array("Q", prices[end - room : end])
            self.counts[0][0:0] = array("q", counts[end - room : end])
            added = sum(counts[end - room : end])
            self.sums[0] += added
            self.firsts[0] = self.prices[0][0]
            self.total += added
            self.levels += room
            end -= room
        # chunks of `chunk` from the top down: the lowest may be short
        first = end % self.chunk or (self.chunk if end else 0)
        chunks = self._new_chunks(prices[:first], counts[:first], self.chunk)
        chunks += self._new_chunks(prices[first:end], counts[first:end], self.chunk)
        self.total += sum(s for _, _, s in chunks)
        self._insert_chunks(0, chunks)

    def take_top_values(self, k: int) -> list[_Chunk]:
        """Remove the ``k`` highest values (whole levels, the lowest of them maybe in part)
        and return them as chunks, ascending. Needs ``k <= total``. O(chunks moved +
        chunk): whole chunks go by reference."""
        i = len(self.sums)
        rest = k
        while i and self.sums[i - 1] <= rest:
            i -= 1
            rest -= self.sums[i]
        out = self._remove_chunks(i, len(self.prices))
        if rest:
            prices, counts = self.prices[-1], self.counts[-1]
            j, left = len(counts), rest
            while counts[j - 1] <= left:
                j -= 1
                left -= counts[j]
            part = (prices[j:], counts[j:], rest)  # whole levels
            del prices[j:], counts[j:]
            self.levels -= len(part[0])
            if left:  # the level below them, in part
                part[0].insert(0, prices[-1])
                part[1].insert(0, left)
                counts[-1] -= left
            self.sums[-1] -= rest
            self.total -= rest
            out.insert(0, part)
        return out

    def take_bottom_values(self, k: int) -> list[_Chunk]:
        """Remove the ``k`` lowest values and return them as chunks, ascending. Needs
        ``k <= total``. O(chunks moved + chunk)."""
        i, rest = 0, k
        while i < len(self.sums) and self.sums[i] <= rest:
            rest -= self.sums[i]
            i += 1
        out = self._remove_chunks(0, i)
        if rest:
            prices, counts = self.prices[0], self.counts[0]
            j, left = 0, rest
            while counts[j] <= left:
                left -= counts[j]
                j += 1
            part = (prices[:j], counts[:j], rest)
            del prices[:j], counts[:j]
            self.levels -= j
            if left:
                part[0].append(prices[0])
                part[1].append(left)
                counts[0] -= left
            self.firsts[0] = prices[0]
            self.sums[0] -= rest
            self.total -= rest
            out.append(part)
        return out

    def put_bottom_chunks(self, chunks: list[_Chunk]) -> None:
        """Add chunks (ascending, each level at or below every level held; the last may be
        the lowest held, whose count then grows) at the bottom. O(chunks + d / chunk)."""
        chunks = [c for c in chunks if len(c[0])]
        if chunks and self.prices and chunks[-1][0][-1] == self.prices[0][0]:
            prices, counts, total = chunks[-1]
            self.counts[0][0] += counts[-1]
            self.sums[0] += counts[-1]
            self.total += counts[-1]
            chunks[-1] = (prices, counts, total - counts[-1])
            del prices[-1], counts[-1]
            if not prices:
                chunks.pop()
        self.total += sum(s for _, _, s in chunks)
        self._insert_chunks(0, chunks)

    def put_top_chunks(self, chunks: list[_Chunk]) -> None:
        """Add chunks (ascending, each level at or above every level held; the first may be
        the highest held) at the top. O(chunks + d / chunk)."""
        chunks = [c for c in chunks if len(c[0])]
        if chunks and self.prices and chunks[0][0][0] == self.prices[-1][-1]:
            prices, counts, total = chunks[0]
            self.counts[-1][-1] += counts[0]
            self.sums[-1] += counts[0]
            self.total += counts[0]
            chunks[0] = (prices, counts, total - counts[0])
            del prices[0], counts[0]
            if not prices:
                chunks.pop(0)
        self.total += sum(s for _, _, s in chunks)
        self._insert_chunks(len(self.prices), chunks)

    # -- reading -------------------------------------------------------------------------------

    def value_at(self, rank: int) -> int:
        """The value at 0-based ``rank`` among the values held, ascending. Needs ``0 <= rank
        < total``. O(d / chunk + chunk)."""
        i = 0
        for s in self.sums:
            if rank < s:
                break
            rank -= s
            i += 1
        for price, c in zip(self.prices[i], self.counts[i], strict=True):
            if rank < c:
                return price
            rank -= c
        raise AssertionError("rank beyond the cold store")

    def pairs(self) -> tuple[list[int], list[int]]:
        """Every level held and its count, ascending. O(d)."""
        return ([p for chunk in self.prices for p in chunk],
                [c for chunk in self.counts for c in chunk])  # fmt: skip

    @classmethod
    def build(cls, chunk: int, prices: Sequence[int], counts: Sequence[int]) -> _Cold:
        """A store of ascending distinct levels, chunks half full (room for inserts). O(d)."""
        cold = cls(chunk)
        chunks = cold._new_chunks(prices, counts, max(1, chunk // 2))
        cold.total = sum(s for _, _, s in chunks)
        cold._insert_chunks(0, chunks)
        return cold

    def _check(self, below: int | None = None, above: int | None = None) -> None:
        """Assert its invariants; every level below ``below`` / above ``above``. O(d)."""
        n = len(self.prices)
        assert n == len(self.counts) == len(self.firsts) == len(self.sums), "directory"
        levels = total = 0
        last = -1
        for prices, counts, first, s in zip(self.prices, self.counts, self.firsts, self.sums,
                                            strict=True):  # fmt: skip
            assert 0 < len(prices) == len(counts) <= self.chunk, "chunk size"
            assert prices[0] == first and sum(counts) == s, "chunk first or sum"
            assert all(c > 0 for c in counts), "empty level"
            assert last < prices[0] and all(a < b for a, b in pairwise(prices)), "order"
            last = prices[-1]
            levels += len(prices)
            total += s
        assert (levels, total) == (self.levels, self.total), "cold levels or total"
        if n and below is not None:
            assert last < below, "cold level not below the heap"
        if n and above is not None:
            assert self.prices[0][0] > above, "cold level not above the heap"


class Touched(dict[int, int]):
    """The pure twin's levels changed since they were last taken: level -> count now."""

    def sorted_bytes(self) -> tuple[bytes, bytes]:
        """The levels ascending and their counts, as native uint64 / int64 bytes. O(t log t);
        off any lock (its median no longer holds it)."""
        prices = np.fromiter(self.keys(), np.uint64, len(self))
        counts = np.fromiter(self.values(), np.int64, len(self))
        order = np.argsort(prices, kind="stable")
        return prices[order].tobytes(), counts[order].tobytes()

    def to_dict(self) -> dict[int, int]:
        """A plain dict of it (for tests). O(t)."""
        return dict(self)


def touched_arrays(touched: Any) -> tuple[_Prices, _Counts]:
    """What :meth:`~PyRunningMedian.take_touched` handed over (either twin's), as numpy
    arrays ascending by level. O(t log t)."""
    prices, counts = touched.sorted_bytes()
    return np.frombuffer(prices, np.uint64), np.frombuffer(counts, np.int64)


class _Bulk:
    """What both twins build on their primitives (``_dump``, ``_load``, ``values_at``): whole
    states in and out, as numpy arrays or pairs, checked here once for both."""

    __slots__ = ()

    count: int
    _dump: Any
    _load: Any

    def to_arrays(self) -> tuple[_Prices, _Counts]:
        """Every distinct value with its multiplicity, ascending, as numpy arrays (uint64,
        int64). O(d + hot_max log hot_max)."""
        prices, counts = self._dump()
        return np.frombuffer(prices, np.uint64).copy(), np.frombuffer(counts, np.int64).copy()

    def to_state(self) -> list[tuple[int, int]]:
        """Every distinct value with its multiplicity, ascending. O(d).

        The state is all a restore needs: :meth:`from_state` rebuilds an equal structure.
        """
        prices, counts = self.to_arrays()
        return list(zip(prices.tolist(), counts.tolist(), strict=True))

    @classmethod
    def from_state(cls, levels: Iterable[tuple[int, int]], **options: int) -> Any:
        """Rebuild from ``(value, multiplicity)`` pairs, such as :meth:`to_state` returns.

        O(d) for input sorted by value (as stored), O(d log d) otherwise. Values must be
        distinct and multiplicities positive, else ``ValueError``.
        """
        items = list(levels)
        return cls.from_arrays([v for v, _ in items], [c for _, c in items], **options)

    @classmethod
    def from_arrays(cls, prices: Any, counts: Any, **options: int) -> Any:
        """Rebuild from arrays of distinct values and their positive multiplicities (sorted
        as stored: O(d); unsorted: O(d log d)); the levels beyond the heaps go straight to the
        cold stores. ``ValueError`` for duplicates, values outside 0 .. 2**64 - 1 or counts
        not positive."""
        try:
            p = np.ascontiguousarray(prices, dtype=np.uint64)
            c = np.ascontiguousarray(counts, dtype=np.int64)
        except (OverflowError, TypeError) as exc:  # a negative value, or too large
            raise ValueError("median state needs values in 0 .. 2**64 - 1") from exc
        if p.shape != c.shape or p.ndim != 1:
            raise ValueError("median state needs as many counts as values")
        if len(c) and bool(np.any(c <= 0)):
            raise ValueError("median state needs positive counts")
        if len(p) > 1 and not bool(np.all(p[1:] > p[:-1])):
            order = np.argsort(p, kind="stable")
            p, c = p[order], c[order]
            if bool(np.any(p[1:] == p[:-1])):
                raise ValueError("duplicate value in median state")
        m = cls(**options)
        if len(p):
            m._load(p, c)
        return m


class _PyCore:
    """The pure-Python algorithm (see the module docstring); :class:`PyRunningMedian`."""

    __slots__ = (
        "_ceil", "_chunk", "_cold_high", "_cold_low", "_floor", "_high", "_high_counts",
        "_hot_max", "_low", "_low_counts", "_n_high", "_n_low", "_refill", "_touched",
    )  # fmt: skip

    def __init__(self, *, hot_max: int = HOT_MAX, refill: int = REFILL, chunk: int = CHUNK):
        if hot_max < 2 or not 1 <= refill <= hot_max or chunk < 2:
            raise ValueError("hot_max >= 2, 1 <= refill <= hot_max, chunk >= 2")
        self._low: list[int] = []  # negated levels of the lower half near the median (max-heap)
        self._low_counts: dict[int, int] = {}  # negated level -> values on the low side
        self._high: list[int] = []  # levels of the upper half near the median (min-heap)
        self._high_counts: dict[int, int] = {}  # level -> values on the high side
        self._n_low = 0  # values on the low side, cold ones included
        self._n_high = 0
        self._cold_low = _Cold(chunk)  # low levels beyond the heap: all below _floor
        self._cold_high = _Cold(chunk)  # high levels beyond the heap: all above _ceil
        self._floor = -1  # no cold low level is at or above it; every low heap level is
        self._ceil = NO_CEIL  # no cold high level is at or below it; every high heap level is
        self._hot_max = hot_max
        self._refill = refill
        self._chunk = chunk
        self._touched = Touched()  # level -> its count, for the levels added to since taken

    @property
    def count(self) -> int:
        """Number of values added. O(1)."""
        return self._n_low + self._n_high

    @property
    def twice_median(self) -> int | None:
        """Twice the median (an exact integer), or None before the first value. O(1): the
        middle values are the tops of the two heaps."""
        low = self._low
        if not low:
            return None
        top = -low[0]
        return top + top if self._n_low > self._n_high else top + self._high[0]

    @property
    def levels(self) -> int:
        """Number of distinct values held (a level split across both sides counts once).
        O(1)."""
        low, high = self._low, self._high
        split = 1 if low and high and -low[0] == high[0] else 0
        return len(low) + len(high) - split + self._cold_low.levels + self._cold_high.levels

    # -- adding ----------------------------------------------------------------------------------

    def add(self, value: int, times: int = 1) -> int:
        """Add ``value`` ``times`` times (``times >= 1``): one call for a whole batch of trades
        at one price, such as an aggregate trade. Returns how many values the level holds now.

        Cost: O(log h) heap work for h levels in a heap, O(1) when the level already exists
        on its side, O(log d + chunk) beyond the heaps, plus O(log h) for each distinct level
        the median crosses while the sides are rebalanced (a batch moves the median by at most
        ``times / 2`` values), or, when more values must cross than a heap holds, the bounded
        bulk move of the module docstring. A spill or a refill (bounded) at most.
        """
        if not 0 <= value < NO_CEIL:
            _check_value(value)
        if times > MAX_COUNT - self._n_low - self._n_high:
            raise ValueError("the count would pass 2**63 - 1")
        low = self._low
        # a level's count does not change as it moves between heaps and cold stores: what it
        # holds after the add is known where the value lands
        if times == 1:  # the per-trade path: at most one value moves across
            if not low or value <= -low[0]:
                if value < self._floor:
                    count = self._cold_low.add(value, 1)
                else:
                    key = -value
                    counts = self._low_counts
                    c = counts.get(key)
                    if c is None:
                        heappush(low, key)
                        counts[key] = count = 1
                        if len(low) > self._hot_max:
                            self._spill_low()
                    else:
                        counts[key] = count = c + 1
                    high = self._high
                    if high and high[0] == value:  # the level is split across both sides
                        count += self._high_counts[value]
                self._n_low += 1
                if self._n_low > self._n_high + 1:
                    self._move_low_to_high(1)
            else:
                if value > self._ceil:
                    count = self._cold_high.add(value, 1)
                else:
                    counts = self._high_counts
                    c = counts.get(value)
                    if c is None:
                        heappush(self._high, value)
                        counts[value] = count = 1
                        if len(self._high) > self._hot_max:
                            self._spill_high()
                    else:
                        counts[value] = count = c + 1
                    if low[0] == -value:
                        count += self._low_counts[-value]
                self._n_high += 1
                if self._n_high > self._n_low:
                    self._move_high_to_low(1)
        elif times > 1:
            if not low or value <= -low[0]:
                count = self._add_low(value, times)
            else:
                count = self._add_high(value, times)
            self._rebalance()
        else:
            raise ValueError(f"times must be positive, not {times}")
        self._touched[value] = count
        return count

    def _add_low(self, value: int, times: int) -> int:
        """``times`` values on the low side, no rebalancing; the level's count after."""
        self._n_low += times
        if value < self._floor:
            return self._cold_low.add(value, times)
        key = -value
        c = self._low_counts.get(key)
        if c is None:
            heappush(self._low, key)
            self._low_counts[key] = count = times
            if len(self._low) > self._hot_max:
                self._spill_low()
        else:
            self._low_counts[key] = count = c + times
        high = self._high
        return count + self._high_counts[value] if high and high[0] == value else count

    def _add_high(self, value: int, times: int) -> int:
        """``times`` values on the high side, no rebalancing; the level's count after."""
        self._n_high += times
        if value > self._ceil:
            return self._cold_high.add(value, times)
        c = self._high_counts.get(value)
        if c is None:
            heappush(self._high, value)
            self._high_counts[value] = count = times
            if len(self._high) > self._hot_max:
                self._spill_high()
        else:
            self._high_counts[value] = count = c + times
        low = self._low
        return count + self._low_counts[-value] if low and low[0] == -value else count

    def add_many(
        self, prices: Sequence[int] | _Prices, counts: Sequence[int] | _Counts
    ) -> list[int]:
        """Add the distinct ascending ``prices``, each ``counts`` times (part of an archive
        file reduced to pairs): those beyond the heaps go to the cold stores, those within
        them to the heaps, and the median moves once, across as many levels as it must.
        Returns each price's count after. O(p (log d + chunk)) for p pairs; the caller bounds
        p. ``ValueError`` (nothing added) unless the prices are distinct, ascending, in
        range and the counts positive."""
        p = prices.tolist() if isinstance(prices, np.ndarray) else [int(x) for x in prices]
        c = counts.tolist() if isinstance(counts, np.ndarray) else [int(x) for x in counts]
        _check_pairs(p, c)
        if sum(c) > MAX_COUNT - self._n_low - self._n_high:
            raise ValueError("the count would pass 2**63 - 1")
        if not p:
            return []
        top = -self._low[0] if self._low else NO_CEIL  # a value up to it belongs to the low side
        below = bisect_left(p, self._floor)  # pairs below the floor: cold, low side
        above = bisect_right(p, self._ceil)  # pairs from here on: above the ceiling
        out = [0] * len(p)
        add = self._cold_low.add
        for i in range(below):
            out[i] = add(p[i], c[i])
        self._n_low += sum(c[:below])
        add = self._cold_high.add
        for i in range(above, len(p)):
            out[i] = add(p[i], c[i])
        self._n_high += sum(c[above:])
        for i in range(below, above):
            out[i] = self._add_low(p[i], c[i]) if p[i] <= top else self._add_high(p[i], c[i])
        self._rebalance()
        self._touched.update(zip(p, out, strict=True))
        return out

    # -- moving values across ------------------------------------------------------------------

    def _rebalance(self) -> None:
        """Restore ``n_low == n_high`` or ``n_low == n_high + 1``."""
        excess = self._n_low - self._n_high - 1
        if excess > 0:
            self._move_low_to_high((excess + 1) // 2)
        else:
            excess = self._n_high - self._n_low
            if excess > 0:
                self._move_high_to_low((excess + 1) // 2)

    def _move_low_to_high(self, k: int) -> None:
        """Move the ``k`` largest values from the low side to the high side, a whole level at a
        time. O(log h) per level touched (at most the heap's); more values than the low heap
        holds move in bulk through the cold stores (see :meth:`_shift`)."""
        if k > self._n_low - self._cold_low.total:
            self._shift(k, up=True)
            return
        low, low_counts = self._low, self._low_counts
        high, high_counts = self._high, self._high_counts
        self._n_low -= k
        self._n_high += k
        while k:
            key = low[0]
            c = low_counts[key]
            if c <= k:
                heappop(low)
                del low_counts[key]
                take = c
            else:
                low_counts[key] = c - k
                take = k
            k -= take
            value = -key
            there = high_counts.get(value)
            if there is None:
                heappush(high, value)
                high_counts[value] = take
            else:
                high_counts[value] = there + take
        if not low and self._n_low:
            self._refill_low()
        if len(high) > self._hot_max:
            self._spill_high()

    def _move_high_to_low(self, k: int) -> None:
        """Move the ``k`` smallest values from the high side to the low side (see
        :meth:`_move_low_to_high`)."""
        if k > self._n_high - self._cold_high.total:
            self._shift(k, up=False)
            return
        low, low_counts = self._low, self._low_counts
        high, high_counts = self._high, self._high_counts
        self._n_high -= k
        self._n_low += k
        while k:
            value = high[0]
            c = high_counts[value]
            if c <= k:
                heappop(high)
                del high_counts[value]
                take = c
            else:
                high_counts[value] = c - k
                take = k
            k -= take
            key = -value
            there = low_counts.get(key)
            if there is None:
                heappush(low, key)
                low_counts[key] = take
            else:
                low_counts[key] = there + take
        if not high and self._n_high:
            self._refill_high()
        if len(low) > self._hot_max:
            self._spill_low()

    def _shift(self, k: int, *, up: bool) -> None:
        """Move ``k`` values across in bulk: both heaps go cold, the ``k`` values nearest the
        median move from one cold store to the other a whole chunk at a time (one chunk cut),
        and both heaps are refilled around the new median. O(hot_max log hot_max + chunks
        crossed + chunk + refill)."""
        self._freeze()
        if up:
            self._cold_high.put_bottom_chunks(self._cold_low.take_top_values(k))
            self._n_low, self._n_high = self._n_low - k, self._n_high + k
        else:
            self._cold_low.put_top_chunks(self._cold_high.take_bottom_values(k))
            self._n_low, self._n_high = self._n_low + k, self._n_high - k
        self._floor, self._ceil = NO_CEIL, -1  # both heaps empty: everything is cold
        if self._n_low:
            self._refill_low()
        else:
            self._floor = -1
        if self._n_high:
            self._refill_high()
        else:
            self._ceil = NO_CEIL

    def _freeze(self) -> None:
        """Both heaps into their cold stores (their levels are beyond every cold one).
        O(hot_max log hot_max)."""
        low = sorted(-key for key in self._low)
        self._cold_low.put_top(low, [self._low_counts[-p] for p in low])
        high = sorted(self._high)
        self._cold_high.put_bottom(high, [self._high_counts[p] for p in high])
        self._low.clear()
        self._low_counts.clear()
        self._high.clear()
        self._high_counts.clear()

    def _refill_low(self) -> None:
        """The low heap ran empty: bring back the highest ``refill`` cold low levels."""
        prices, counts = self._cold_low.take_top(self._refill)
        low_counts = self._low_counts
        for p, c in zip(prices, counts, strict=True):
            low_counts[-p] = low_counts.get(-p, 0) + c
        self._low[:] = list(low_counts)
        heapify(self._low)
        self._floor = prices[0] if self._cold_low.total else -1

    def _refill_high(self) -> None:
        """The high heap ran empty: bring back the lowest ``refill`` cold high levels."""
        prices, counts = self._cold_high.take_bottom(self._refill)
        high_counts = self._high_counts
        for p, c in zip(prices, counts, strict=True):
            high_counts[p] = high_counts.get(p, 0) + c
        self._high[:] = list(high_counts)
        heapify(self._high)
        self._ceil = prices[-1] if self._cold_high.total else NO_CEIL

    def _spill_low(self) -> None:
        """The low heap holds more than ``hot_max`` levels: its lower half goes cold."""
        prices = sorted(-key for key in self._low)
        half = len(prices) // 2
        out = prices[:half]
        self._cold_low.put_top(out, [self._low_counts.pop(-p) for p in out])
        keep = prices[half:]
        self._low[:] = [-p for p in keep]
        heapify(self._low)
        self._floor = keep[0]

    def _spill_high(self) -> None:
        """The high heap holds more than ``hot_max`` levels: its upper half goes cold."""
        prices = sorted(self._high)
        half = (len(prices) + 1) // 2
        out = prices[half:]
        self._cold_high.put_bottom(out, [self._high_counts.pop(p) for p in out])
        keep = prices[:half]
        self._high[:] = keep
        heapify(self._high)
        self._ceil = keep[-1]

    # -- reading -------------------------------------------------------------------------------

    def multiplicity(self, value: int) -> int:
        """How many times ``value`` was added. O(1) within the heaps, O(log d) beyond."""
        if value < self._floor:
            return self._cold_low.count_of(value)
        if value > self._ceil:
            return self._cold_high.count_of(value)
        return self._low_counts.get(-value, 0) + self._high_counts.get(value, 0)

    def take_touched(self) -> Touched:
        """The levels added to since the last call, each with its count now, handed over
        whole (what a snapshot stores: every change of a level's count comes through add or
        add_many). O(1)."""
        touched, self._touched = self._touched, Touched()
        return touched

    def multiplicities(self, values: Iterable[int]) -> list[int]:
        """:meth:`multiplicity` of each of ``values``. O(v log d)."""
        return [self.multiplicity(v) for v in values]

    def values_at(self, ranks: Iterable[int]) -> list[int]:
        """The values at these 0-based ranks among every value counted, ascending: the order
        statistics quantiles are read from. ``IndexError`` for a rank outside ``0 .. count -
        1``. O(d / chunk + chunk + hot_max log hot_max) for any number of ranks near the
        median or far from it (the heaps are sorted once, a cold store is scanned by its
        chunks' sums)."""
        ranks = list(ranks)
        n = self.count
        if any(not 0 <= r < n for r in ranks):
            raise IndexError("rank outside the values counted")
        cold_low, cold_high = self._cold_low.total, self._cold_high.total
        hot: list[tuple[int, int]] | None = None
        out = []
        for r in ranks:
            if r < cold_low:
                out.append(self._cold_low.value_at(r))
            elif r >= n - cold_high:
                out.append(self._cold_high.value_at(r - (n - cold_high)))
            else:
                if hot is None:  # the heaps' levels in order, a split level's halves apart
                    hot = sorted((-k, c) for k, c in self._low_counts.items())
                    hot += sorted(self._high_counts.items())
                r -= cold_low
                for value, c in hot:
                    if r < c:
                        out.append(value)
                        break
                    r -= c
        return out

    def _dump(self) -> tuple[bytes, bytes]:
        """Every level and its count, ascending, as native uint64 / int64 bytes. O(d)."""
        low_p, low_c = self._cold_low.pairs()
        for key in sorted(self._low_counts, reverse=True):
            low_p.append(-key)
            low_c.append(self._low_counts[key])
        high_p: list[int] = []
        high_c: list[int] = []
        for value in sorted(self._high_counts):
            high_p.append(value)
            high_c.append(self._high_counts[value])
        cold_p, cold_c = self._cold_high.pairs()
        if low_p and high_p and low_p[-1] == high_p[0]:  # a level split across both sides
            high_c[0] += low_c.pop()
            low_p.pop()
        prices = array("Q", low_p + high_p + cold_p)
        counts = array("q", low_c + high_c + cold_c)
        return prices.tobytes(), counts.tobytes()

    def _load(self, prices: _Prices, counts: _Counts) -> None:
        """Become the median of checked ascending distinct ``prices`` with positive
        ``counts`` (an empty median only). O(d)."""
        n = int(counts.sum())
        want_low = n - n // 2  # the low side holds the extra value of an odd count
        through = np.cumsum(counts)
        i = int(np.searchsorted(through, np.int64(want_low)))  # where the low side ends
        spare = int(through[i]) - want_low  # values of level i that belong to the high side
        del through
        p, c = prices.tolist(), counts.tolist()
        low_p, low_c = p[: i + 1], c[: i + 1]
        low_c[-1] -= spare
        high_p, high_c = p[i:], c[i:]
        if spare:
            high_c[0] = spare
        else:
            high_p, high_c = high_p[1:], high_c[1:]
        self._cold_low = _Cold.build(self._chunk, low_p, low_c)
        self._cold_high = _Cold.build(self._chunk, high_p, high_c)
        self._n_low, self._n_high = want_low, n - want_low
        self._refill_low()
        if self._n_high:
            self._refill_high()

    def nbytes(self) -> int:
        """Memory held, in bytes: the heaps, their counts and the int objects they own, the
        cold stores' arrays and directories. O(h + d / chunk)."""
        import sys

        size = sys.getsizeof(self)
        for part in (self._low, self._high, self._low_counts, self._high_counts):
            size += sys.getsizeof(part)
        for hot in (self._low_counts, self._high_counts, self._touched):
            size += sys.getsizeof(hot) if hot is self._touched else 0
            for key, c in hot.items():
                size += sys.getsizeof(key) + (0 if -5 <= c <= 256 else sys.getsizeof(c))
        for cold in (self._cold_low, self._cold_high):
            size += sum(map(sys.getsizeof, (cold.prices, cold.counts, cold.firsts, cold.sums)))
            size += sum(sys.getsizeof(a) for a in cold.prices)
            size += sum(sys.getsizeof(a) for a in cold.counts)
            size += sum(sys.getsizeof(x) for x in cold.firsts)
            size += sum(sys.getsizeof(x) for x in cold.sums)
        return size

    def _state(self) -> tuple[Any, ...]:
        """Everything that decides what comes next, layout aside (heaps as sorted levels,
        cold stores as flat levels): equal in both twins after the same operations. O(d)."""
        return (self._n_low, self._n_high, self._floor, self._ceil,
                sorted((-k, c) for k, c in self._low_counts.items()),
                sorted(self._high_counts.items()),
                self._cold_low.pairs(), self._cold_high.pairs(),
                sorted(self._touched.items()))  # fmt: skip

    def _check(self) -> None:
        """Assert every invariant. O(d + h log h); for tests."""
        low, high = self._low, self._high
        assert sorted(low) == sorted(self._low_counts), "low heap and counts disagree"
        assert sorted(high) == sorted(self._high_counts), "high heap and counts disagree"
        assert all(low[(i - 1) // 2] <= low[i] for i in range(1, len(low))), "low heap order"
        assert all(high[(i - 1) // 2] <= high[i] for i in range(1, len(high))), "high heap order"
        assert all(c > 0 for c in self._low_counts.values()), "empty level on low side"
        assert all(c > 0 for c in self._high_counts.values()), "empty level on high side"
        assert len(low) <= self._hot_max and len(high) <= self._hot_max, "heap over hot_max"
        cold_low, cold_high = self._cold_low, self._cold_high
        assert sum(self._low_counts.values()) + cold_low.total == self._n_low, "low count"
        assert sum(self._high_counts.values()) + cold_high.total == self._n_high, "high count"
        assert self._n_high <= self._n_low <= self._n_high + 1, "sides unbalanced"
        assert (self._n_low == 0) == (not low) == (self.twice_median is None)
        assert bool(high) == bool(self._n_high), "a side with values and no heap"
        if cold_low.total:
            assert all(-key >= self._floor for key in low), "low heap level below the floor"
            cold_low._check(below=self._floor)
        else:
            assert self._floor == -1 and not cold_low.prices, "floor without cold levels"
        if cold_high.total:
            assert all(v <= self._ceil for v in high), "high heap level above the ceiling"
            cold_high._check(above=self._ceil)
        else:
            assert self._ceil == NO_CEIL and not cold_high.prices, "ceiling without cold levels"
        if low and high:
            assert -low[0] <= high[0], "max(low) > min(high)"


def _check_pairs(prices: list[int], counts: list[int]) -> None:
    """ValueError unless ``prices`` are ascending, distinct and in range and ``counts``
    positive, one each. O(p)."""
    if len(prices) != len(counts):
        raise ValueError(f"{len(prices)} prices but {len(counts)} counts")
    if prices and not (prices[0] >= 0 and prices[-1] < NO_CEIL):
        raise ValueError("a value outside 0 .. 2**64 - 1")
    if any(b <= a for a, b in pairwise(prices)):
        raise ValueError("prices not distinct and ascending")
    if any(c <= 0 for c in counts):
        raise ValueError("a count that is not positive")


class PyRunningMedian(_Bulk, _PyCore):
    """Exact running median over integers in ``0 .. 2**64 - 1`` with repeated values, in pure
    Python (the reference twin; see the module docstring).

    Runtime complexity: :meth:`add` O(log h) amortised for h levels in a heap, O(log d +
    chunk) beyond the heaps, never more than a bounded step (a spill O(hot_max log hot_max),
    a refill O(refill + chunk)) plus the median's crossing (O(log h) a level, or in bulk
    O(d / chunk)); :meth:`add_many` O(p (log d + chunk)); :attr:`twice_median` and
    :attr:`count` O(1); :meth:`values_at` O(d / chunk + hot_max log hot_max);
    :meth:`to_arrays` and :meth:`from_arrays` O(d); memory O(d): 16 bytes a cold level (in
    chunks at least half full once built), about 100 a hot one.
    """

    __slots__ = ()


def _compiled() -> type | None:
    """The compiled twin's class, or None where it was not built at install (no compiler)."""
    try:
        from . import _native  # type: ignore[attr-defined]
    except ImportError:
        return None

    class CRunningMedian(_Bulk, _native.Median):  # type: ignore[misc]
        """:class:`PyRunningMedian` in C (``medianserv/_median.c``): the same algorithm, the
        same results, the same state after the same operations."""

        __slots__ = ()

    return CRunningMedian


#: The compiled twin (None where no C compiler was at install).
CRunningMedian: Any = _compiled()
#: The median the service uses: the compiled twin where it was built, else the pure one.
RunningMedian: Any = CRunningMedian or PyRunningMedian
