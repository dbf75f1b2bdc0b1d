"""RunningMedian: the exact median of every value ever added, in memory O(distinct values).

Theory of operation
-------------------
The classic running median keeps every value in two heaps, so its memory grows with the
number of trades: about 40 bytes per trade, 40 GB after a billion trades. Trade prices, though,
repeat: they sit on a tick grid and a busy symbol trades the same few thousand price levels
millions of times. So each heap holds *distinct* price levels, and a dict beside it holds how
many of the values at that level belong to that side:

* ``low``  - a max-heap (stored negated, as :mod:`heapq` is a min-heap) of the lower half;
* ``high`` - a min-heap of the upper half;
* ``n_low`` / ``n_high`` - how many values (not levels) each side holds.

The sides hold ``n_low == n_high`` or ``n_low == n_high + 1`` values, and every level of the
low side is <= every level of the high side. One price level may be split across both sides
(then it is both ``max(low)`` and ``min(high)``), which is what lets us move a single value, not
a whole level, when rebalancing. The median is read from the two heap tops: O(1).

*Levels far from the median go cold.* A whole history of BTCUSDT is about 10 million
distinct prices, and a level in a heap and a dict costs about 118 bytes (two int objects, a
dict entry, a heap slot): 1.1 GB. But the heaps only ever need the levels near the median:
the median moves by at most one value per value added. So each heap keeps at most
``limit`` levels, ``hot_max`` or a 32nd of the cold levels, whichever is more; when it grows
past that, its far half moves to the side's *cold store* (:class:`_Cold`): sorted numpy
arrays, 16 bytes a level, and a dict of values added there since the last merge, merged into
the arrays once it holds ``delta_max`` levels and a 16th of the arrays'. A value added beyond
a heap's reach goes to the cold store (one comparison more on the per-trade path: ``floor``
and ``ceil`` bound the heaps); when a heap runs empty while its side still holds values, the
nearest ``refill`` levels, or a 64th of the cold ones, come back from the cold store.
Invariants (checked by :meth:`RunningMedian._check`): every cold low level is below
``floor``, which is at most every low heap level; every cold high level is above ``ceil``,
which is at least every high heap level; a side with values has a non-empty heap.

``add`` puts the value on its side (a dict increment when the level exists, a heap push when
it is new, a dict increment in the cold store beyond the heap) and then moves at most one
value across, so it is O(log h) for h levels in a heap. The O(d) steps, for d levels held
(a spill, a refill, a merge of a cold dict into its arrays), each come only after O(d) adds,
because the thresholds grow with d: so an add is O(log h) amortised, plus O(1) copies of 16
bytes; one add can take O(d). The hot levels and the cold dicts cost about 12 bytes a level
more, at most.
``add(value, times=k)`` adds k equal values in one step: they go to their side at once and
the rebalancing moves whole levels, O(log h) per level the median crosses.
``add_many(prices, counts)`` (a whole archive file, sorted pairs) merges the pairs beyond the
heaps into the cold arrays in one vectorized step, O(d + p) for d levels held and p pairs,
and moves the median across many levels at once with one cumulative sum. Memory is O(d) and
does not depend on the number of values n: 16 to 30 bytes a level beyond the heaps.

The median of an even count is the mean of the two middle values; it is kept as *twice* the
median (``twice_median``), an exact integer. Values are non-negative integers below 2**64
(prices in 1e-8 units: up to 10**19 - 1).

>>> m = RunningMedian()
>>> for v in (5, 1, 5, 3):
...     m.add(v)
>>> m.count, m.twice_median   # median of 1 3 5 5 is 4
(4, 8)
>>> m.add(9, times=3)          # 1 3 5 5 9 9 9: median 5
>>> m.count, m.twice_median
(7, 10)

Pure: no I/O, no threads, no clock, no logging. Not thread-safe: its owner serialises access.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from heapq import heapify, heappop, heappush
from typing import Any

import numpy as np

__all__ = ["DELTA_MAX", "HOT_MAX", "REFILL", "RunningMedian"]

#: Levels a heap keeps, at least, before its far half moves to the cold store.
HOT_MAX = 65_536
#: Levels brought back from the cold store, at least, when a heap runs empty.
REFILL = 4_096
#: Levels added to a cold store one at a time, kept in a dict, at least, before they are
#: merged into its arrays (a merge costs a copy of the arrays: amortised over this many).
DELTA_MAX = 65_536
#: ``ceil`` when nothing is cold on the high side: above every value.
NO_CEIL = 1 << 64

_Prices = np.ndarray[Any, np.dtype[np.uint64]]
_Counts = np.ndarray[Any, np.dtype[np.int64]]


def _prices(values: Any) -> _Prices:
    return np.asarray(values, dtype=np.uint64)


def _counts(values: Any) -> _Counts:
    return np.asarray(values, dtype=np.int64)


_NO_PRICES: _Prices = _prices([])
_NO_COUNTS: _Counts = _counts([])


def _merge(p1: _Prices, c1: _Counts, p2: _Prices, c2: _Counts) -> tuple[_Prices, _Counts]:
    """The union of two sorted distinct level sets, counts added where prices meet. O(n + m)."""
    if not len(p2):
        return p1, c1
    if not len(p1):
        return p2, c2
    pos = np.searchsorted(p1, p2)
    hit = pos < len(p1)
    hit[hit] = p1[pos[hit]] == p2[hit]
    if hit.any():
        c1 = c1.copy()
        c1[pos[hit]] += c2[hit]  # positions are distinct: p2 is
    new = ~hit
    if not new.any():
        return p1, c1
    return np.insert(p1, pos[new], p2[new]), np.insert(c1, pos[new], c2[new])


class _Cold:
    """One side's levels beyond its heap, 16 bytes each: prices (ascending, distinct) and
    counts (positive) in numpy arrays, and values added one at a time since the last merge in
    ``delta``. ``total`` counts the values held. Not thread-safe."""

    __slots__ = ("counts", "delta", "delta_max", "prices", "total")

    def __init__(self, delta_max: int) -> None:
        self.prices = _NO_PRICES
        self.counts = _NO_COUNTS
        self.delta: dict[int, int] = {}
        self.delta_max = delta_max
        self.total = 0

    def add(self, price: int, k: int) -> None:
        """``k`` values at ``price``. O(1); a merge every ``delta_max`` new levels."""
        delta = self.delta
        delta[price] = delta.get(price, 0) + k
        self.total += k
        if len(delta) > self.delta_max and len(delta) > len(self.prices) >> 4:
            self.flush()  # after at least d/16 new levels: O(1) copies a level, amortised

    def flush(self) -> None:
        """Merge ``delta`` into the arrays. O(d + delta)."""
        delta = self.delta
        if delta:
            self.delta = {}
            prices = np.fromiter(delta.keys(), np.uint64, len(delta))
            counts = np.fromiter(delta.values(), np.int64, len(delta))
            order = np.argsort(prices)
            self.prices, self.counts = _merge(self.prices, self.counts, prices[order],
                                              counts[order])  # fmt: skip

    def merge(self, prices: _Prices, counts: _Counts) -> None:
        """Add sorted distinct pairs. O(d + p)."""
        if len(prices):
            self.flush()
            self.prices, self.counts = _merge(self.prices, self.counts, prices, counts)
            self.total += int(counts.sum())

    def put_top(self, prices: _Prices, counts: _Counts) -> None:
        """Add sorted distinct pairs, each at or above every price held (the far half of the
        low heap). O(d + p)."""
        self.flush()
        if not len(self.prices):
            self.prices, self.counts = prices, counts  # no copy: the caller hands them over
        elif len(prices):
            if self.prices[-1] == prices[0]:
                self.counts = self.counts.copy()
                self.counts[-1] += counts[0]
                prices, counts = prices[1:], counts[1:]
            self.prices = np.concatenate((self.prices, prices))
            self.counts = np.concatenate((self.counts, counts))
        self.total = int(self.counts.sum())

    def put_bottom(self, prices: _Prices, counts: _Counts) -> None:
        """Add sorted distinct pairs, each at or below every price held. O(d + p)."""
        self.flush()
        if not len(self.prices):
            self.prices, self.counts = prices, counts
        elif len(prices):
            if self.prices[0] == prices[-1]:
                self.counts = self.counts.copy()
                self.counts[0] += counts[-1]
                prices, counts = prices[:-1], counts[:-1]
            self.prices = np.concatenate((prices, self.prices))
            self.counts = np.concatenate((counts, self.counts))
        self.total = int(self.counts.sum())

    def take_top(self, levels: int) -> tuple[list[int], list[int]]:
        """Remove and return the highest ``levels`` levels, ascending. O(d) (a merge first)."""
        self.flush()
        cut = max(0, len(self.prices) - levels)
        prices, counts = self.prices[cut:].tolist(), self.counts[cut:].tolist()
        self.prices, self.counts = self.prices[:cut], self.counts[:cut]
        self.total -= sum(counts)
        return prices, counts

    def take_bottom(self, levels: int) -> tuple[list[int], list[int]]:
        """Remove and return the lowest ``levels`` levels, ascending. O(d) (a merge first)."""
        self.flush()
        prices, counts = self.prices[:levels].tolist(), self.counts[:levels].tolist()
        self.prices, self.counts = self.prices[levels:], self.counts[levels:]
        self.total -= sum(counts)
        return prices, counts

    def take_top_values(self, k: int) -> tuple[_Prices, _Counts]:
        """Remove the ``k`` highest values (whole levels, the lowest of them maybe in part) and
        return their levels, ascending. Needs ``k <= total``. O(d)."""
        self.flush()
        from_top = np.cumsum(self.counts[::-1])
        j = int(np.searchsorted(from_top, k))  # levels j + 1 from the top are touched
        start = len(self.prices) - j - 1
        prices = self.prices[start:].copy()
        counts = self.counts[start:].copy()
        spare = int(from_top[j]) - k  # what the lowest touched level keeps
        self.prices, self.counts = self.prices[: start + 1].copy(), self.counts[: start + 1].copy()
        if spare:
            counts[0] -= spare
            self.counts[-1] = spare
        else:
            self.prices, self.counts = self.prices[:-1], self.counts[:-1]
        self.total -= k
        return prices, counts

    def take_bottom_values(self, k: int) -> tuple[_Prices, _Counts]:
        """Remove the ``k`` lowest values and return their levels, ascending. O(d)."""
        self.flush()
        from_bottom = np.cumsum(self.counts)
        j = int(np.searchsorted(from_bottom, k))
        prices = self.prices[: j + 1].copy()
        counts = self.counts[: j + 1].copy()
        spare = int(from_bottom[j]) - k
        self.prices, self.counts = self.prices[j:].copy(), self.counts[j:].copy()
        if spare:
            counts[-1] -= spare
            self.counts[0] = spare
        else:
            self.prices, self.counts = self.prices[1:], self.counts[1:]
        self.total -= k
        return prices, counts

    def count_of(self, price: int) -> int:
        """Values at ``price``. O(log d)."""
        n = self.delta.get(price, 0)
        i = int(np.searchsorted(self.prices, price))
        if i < len(self.prices) and int(self.prices[i]) == price:
            n += int(self.counts[i])
        return n

    @property
    def levels(self) -> int:
        self.flush()
        return len(self.prices)

    def _check(self, below: int | None = None, above: int | None = None) -> None:
        p, c = self.prices, self.counts
        assert p.dtype == np.uint64 and c.dtype == np.int64 and len(p) == len(c)
        assert bool(np.all(p[1:] > p[:-1])), "cold prices not strictly ascending"
        assert bool(np.all(c > 0)) and all(v > 0 for v in self.delta.values()), "empty level"
        assert self.total == int(c.sum()) + sum(self.delta.values()), "cold total"
        prices = [*p.tolist(), *self.delta]
        if below is not None:
            assert all(x < below for x in prices), "cold level not below the heap"
        if above is not None:
            assert all(x > above for x in prices), "cold level not above the heap"


class RunningMedian:
    """Exact running median over non-negative integers with repeated values.

    Runtime complexity: :meth:`add` O(log h) amortised, for h levels in a heap (a batch:
    plus O(log h) per level the median crosses); one add may take O(d) (a spill, a refill or a
    merge, each after O(d) adds); :meth:`add_many` O(d + p); :attr:`twice_median` and
    :attr:`count` O(1); :meth:`to_arrays` O(d); :meth:`from_arrays` O(d); memory O(d), 16 to
    30 bytes a level beyond the heaps, where d is the number of distinct values added.
    """

    __slots__ = (
        "_ceil", "_cold_high", "_cold_low", "_floor", "_high", "_high_counts", "_hot_max", "_limit",
        "_low", "_low_counts", "_n_high", "_n_low", "_refill",
    )  # fmt: skip

    def __init__(
        self, *, hot_max: int = HOT_MAX, refill: int = REFILL, delta_max: int = DELTA_MAX
    ) -> None:
        if hot_max < 2 or not 1 <= refill <= hot_max or delta_max < 1:
            raise ValueError("hot_max >= 2, 1 <= refill <= hot_max, delta_max >= 1")
        self._low: list[int] = []  # negated levels of the lower half near the median (max-heap)
        self._low_counts: dict[int, int] = {}  # negated level -> values on the low side
        self._high: list[int] = []  # levels of the upper half near the median (min-heap)
        self._high_counts: dict[int, int] = {}  # level -> values on the high side
        self._n_low = 0  # values on the low side, cold ones included
        self._n_high = 0
        self._cold_low = _Cold(delta_max)  # low levels beyond the heap: all below _floor
        self._cold_high = _Cold(delta_max)  # high levels beyond the heap: all above _ceil
        self._floor = -1  # no cold low level is at or above it; every low heap level is
        self._ceil = NO_CEIL  # no cold high level is at or below it; every high heap level is
        self._hot_max = hot_max
        self._refill = refill
        self._limit = hot_max  # levels a heap may hold now: grows with the cold stores

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
        O(1), or O(d) to merge a cold dict first."""
        low, high = self._low, self._high
        split = 1 if low and high and -low[0] == high[0] else 0
        return (len(low) + len(high) - split + self._cold_low.levels
                + self._cold_high.levels)  # fmt: skip

    # -- adding ----------------------------------------------------------------------------------

    def add(self, value: int, times: int = 1) -> None:
        """Add ``value`` ``times`` times (``times >= 1``): one call for a whole batch of trades at
        one price, such as an aggregate trade or a (price, count) pair of an archive.

        Cost: O(log h) heap work, O(1) when the level already exists on its side or lies
        beyond the heap, plus O(log h) for each distinct level the median crosses while the
        sides are rebalanced. A batch of ``times`` values moves the median by at most
        ``times / 2`` values, so it never costs more than ``times`` single adds, and costs one
        when the median stays within its level (the common case).
        """
        low = self._low
        if times == 1:  # the per-trade path: at most one value moves across
            if not low or value <= -low[0]:
                if value < self._floor:
                    self._cold_low.add(value, 1)
                else:
                    key = -value
                    counts = self._low_counts
                    c = counts.get(key)
                    if c is None:
                        heappush(low, key)
                        counts[key] = 1
                        if len(low) > self._limit:
                            self._spill_low()
                    else:
                        counts[key] = c + 1
                self._n_low += 1
                if self._n_low > self._n_high + 1:
                    self._move_low_to_high(1)
            else:
                if value > self._ceil:
                    self._cold_high.add(value, 1)
                else:
                    counts = self._high_counts
                    c = counts.get(value)
                    if c is None:
                        heappush(self._high, value)
                        counts[value] = 1
                        if len(self._high) > self._limit:
                            self._spill_high()
                    else:
                        counts[value] = c + 1
                self._n_high += 1
                if self._n_high > self._n_low:
                    self._move_high_to_low(1)
        elif times > 1:
            if not low or value <= -low[0]:
                self._add_low(value, times)
            else:
                self._add_high(value, times)
            self._rebalance()
        else:
            raise ValueError(f"times must be positive, not {times}")

    def _add_low(self, value: int, times: int) -> None:
        """``times`` values on the low side, no rebalancing."""
        if value < self._floor:
            self._cold_low.add(value, times)
        else:
            key = -value
            c = self._low_counts.get(key)
            if c is None:
                heappush(self._low, key)
                self._low_counts[key] = times
                if len(self._low) > self._limit:
                    self._spill_low()
            else:
                self._low_counts[key] = c + times
        self._n_low += times

    def _add_high(self, value: int, times: int) -> None:
        """``times`` values on the high side, no rebalancing."""
        if value > self._ceil:
            self._cold_high.add(value, times)
        else:
            c = self._high_counts.get(value)
            if c is None:
                heappush(self._high, value)
                self._high_counts[value] = times
                if len(self._high) > self._limit:
                    self._spill_high()
            else:
                self._high_counts[value] = c + times
        self._n_high += times

    def add_many(self, prices: Sequence[int] | _Prices, counts: Sequence[int] | _Counts) -> None:
        """Add the distinct ascending ``prices``, each ``counts`` times (a whole archive file
        reduced to pairs): the pairs beyond the heaps merge into the cold arrays in one
        vectorized step, the few within them go to the heaps, and the median moves across as
        many levels as it must at once. O(d + p) for d levels held and p pairs. The pairs must
        be distinct, ascending, non-negative, with positive counts (the caller checks)."""
        p, c = _prices(prices), _counts(counts)
        if not len(p):
            return
        if not self.count:
            built = RunningMedian.from_arrays(p, c, hot_max=self._hot_max, refill=self._refill,
                                              delta_max=self._cold_low.delta_max)  # fmt: skip
            for name in self.__slots__:
                setattr(self, name, getattr(built, name))
            return
        below = int(np.searchsorted(p, self._floor, "left")) if self._floor > 0 else 0
        above = int(np.searchsorted(p, self._ceil, "right")) if self._ceil < NO_CEIL else len(p)
        if below:
            self._cold_low.merge(p[:below], c[:below])
            self._n_low += int(c[:below].sum())
        if above < len(p):
            self._cold_high.merge(p[above:], c[above:])
            self._n_high += int(c[above:].sum())
        top = -self._low[0]  # the low side's top: a value up to it belongs to the low side
        for value, times in zip(p[below:above].tolist(), c[below:above].tolist(), strict=True):
            if value <= top:
                self._add_low(value, times)
            else:
                self._add_high(value, times)
        self._rebalance()
        self._tune()

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
        time. O(log h) per level touched; more values than the low heap holds are moved in
        bulk through the cold stores, O(d)."""
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
        if len(high) > self._limit:
            self._spill_high()

    def _move_high_to_low(self, k: int) -> None:
        """Move the ``k`` smallest values from the high side to the low side, a whole level at
        a time. O(log h) per level touched; in bulk beyond the high heap, O(d)."""
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
        if len(low) > self._limit:
            self._spill_low()

    def _shift(self, k: int, *, up: bool) -> None:
        """Move ``k`` values across in bulk: both heaps go cold, the ``k`` values nearest the
        median move from one cold store to the other with one cumulative sum, and both heaps
        are refilled around the new median. O(d)."""
        self._freeze()
        if up:
            prices, counts = self._cold_low.take_top_values(k)
            self._cold_high.put_bottom(prices, counts)
            self._n_low, self._n_high = self._n_low - k, self._n_high + k
        else:
            prices, counts = self._cold_high.take_bottom_values(k)
            self._cold_low.put_top(prices, counts)
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
        """Both heaps into their cold stores (their levels are beyond every cold one)."""
        low = sorted(-key for key in self._low)
        self._cold_low.put_top(_prices(low), _counts([self._low_counts[-p] for p in low]))
        high = sorted(self._high)
        self._cold_high.put_bottom(_prices(high), _counts([self._high_counts[p] for p in high]))
        self._low.clear()
        self._low_counts.clear()
        self._high.clear()
        self._high_counts.clear()

    def _cold_levels(self) -> int:
        """Levels in the cold arrays (not counting those still in their dicts). O(1)."""
        return len(self._cold_low.prices) + len(self._cold_high.prices)

    def _tune(self) -> None:
        """Size the heaps with the cold stores: a heap may hold d/32 levels (at least
        ``hot_max``) and a refill brings back d/64 (at least ``refill``), so that a spill or
        a refill, each O(d), happens only after O(d) adds: O(1) copies an add, amortised, at
        a cost of about 12 bytes a level held hot. O(1)."""
        self._limit = max(self._hot_max, self._cold_levels() >> 5, len(self._low),
                          len(self._high))  # fmt: skip

    def _refill_low(self) -> None:
        """The low heap ran empty: bring back the highest cold low levels."""
        prices, counts = self._cold_low.take_top(max(self._refill, self._cold_levels() >> 6))
        low_counts = self._low_counts
        for p, c in zip(prices, counts, strict=True):
            low_counts[-p] = low_counts.get(-p, 0) + c
        self._low[:] = list(low_counts)
        heapify(self._low)
        self._floor = prices[0] if self._cold_low.total else -1
        self._tune()

    def _refill_high(self) -> None:
        """The high heap ran empty: bring back the lowest cold high levels."""
        prices, counts = self._cold_high.take_bottom(max(self._refill, self._cold_levels() >> 6))
        high_counts = self._high_counts
        for p, c in zip(prices, counts, strict=True):
            high_counts[p] = high_counts.get(p, 0) + c
        self._high[:] = list(high_counts)
        heapify(self._high)
        self._ceil = prices[-1] if self._cold_high.total else NO_CEIL
        self._tune()

    def _spill_low(self) -> None:
        """The low heap holds more than ``limit`` levels: its lower half goes cold."""
        prices = sorted(-key for key in self._low)
        half = len(prices) // 2
        out = prices[:half]
        self._cold_low.put_top(_prices(out), _counts([self._low_counts.pop(-p) for p in out]))
        keep = prices[half:]
        self._low[:] = [-p for p in keep]
        heapify(self._low)
        self._floor = keep[0]
        self._tune()

    def _spill_high(self) -> None:
        """The high heap holds more than ``limit`` levels: its upper half goes cold."""
        prices = sorted(self._high)
        half = (len(prices) + 1) // 2
        out = prices[half:]
        self._cold_high.put_bottom(_prices(out), _counts([self._high_counts.pop(p) for p in out]))
        keep = prices[:half]
        self._high[:] = keep
        heapify(self._high)
        self._ceil = keep[-1]
        self._tune()

    # -- reading -------------------------------------------------------------------------------

    def multiplicity(self, value: int) -> int:
        """How many times ``value`` was added. O(1) within the heaps, O(log d) beyond."""
        n = self._low_counts.get(-value, 0) + self._high_counts.get(value, 0)
        if value < self._floor:
            n += self._cold_low.count_of(value)
        if value > self._ceil:
            n += self._cold_high.count_of(value)
        return n

    def multiplicities(self, values: Iterable[int]) -> list[int]:
        """:meth:`multiplicity` of each of ``values`` (a snapshot's few levels: dict lookups,
        a search only for those beyond the heaps). O(v) within the heaps, O(log d) beyond."""
        return [self.multiplicity(v) for v in values]

    def counts_of(self, values: _Prices) -> _Counts:
        """:meth:`multiplicity` of each of ``values`` (a uint64 array), vectorized: one
        search of each cold store for them all, a dict lookup each for those within the
        heaps' bounds. O(v log d)."""
        out = np.zeros(len(values), np.int64)
        if not len(values):
            return out
        hot = np.ones(len(values), bool)
        for cold, low_side in ((self._cold_low, True), (self._cold_high, False)):
            if not cold.total:
                continue
            cold.flush()
            mask = values < self._floor if low_side else values > self._ceil
            hot &= ~mask
            if not mask.any():
                continue
            wanted = values[mask]
            pos = np.searchsorted(cold.prices, wanted)
            ok = pos < len(cold.prices)
            ok[ok] = cold.prices[pos[ok]] == wanted[ok]
            found = np.zeros(len(wanted), np.int64)
            found[ok] = cold.counts[pos[ok]]
            out[mask] = found
        idx = np.flatnonzero(hot)
        if len(idx):
            low, high = self._low_counts, self._high_counts
            out[idx] = [low.get(-v, 0) + high.get(v, 0) for v in values[idx].tolist()]
        return out

    def to_arrays(self) -> tuple[_Prices, _Counts]:
        """Every distinct value with its multiplicity, ascending, as numpy arrays (uint64,
        int64). O(d + h log h)."""
        self._cold_low.flush()
        self._cold_high.flush()
        hot = {-key: c for key, c in self._low_counts.items()}
        for value, c in self._high_counts.items():
            hot[value] = hot.get(value, 0) + c
        items = sorted(hot.items())
        hot_p, hot_c = _prices([p for p, _ in items]), _counts([c for _, c in items])
        prices, counts = _merge(self._cold_low.prices, self._cold_low.counts, hot_p, hot_c)
        return _merge(prices, counts, self._cold_high.prices, self._cold_high.counts)

    def to_state(self) -> list[tuple[int, int]]:
        """Every distinct value with its multiplicity, ascending. O(d + h log h).

        The state is all a restore needs: :meth:`from_state` rebuilds an equal structure.
        """
        prices, counts = self.to_arrays()
        return list(zip(prices.tolist(), counts.tolist(), strict=True))

    @classmethod
    def from_state(cls, levels: Iterable[tuple[int, int]], **options: int) -> RunningMedian:
        """Rebuild from ``(value, multiplicity)`` pairs, such as :meth:`to_state` returns.

        O(d) for input sorted by value (as stored), O(d log d) otherwise. Values must be
        distinct and multiplicities positive, else ``ValueError``.
        """
        items = list(levels)
        return cls.from_arrays([v for v, _ in items], [c for _, c in items], **options)

    @classmethod
    def from_arrays(cls, prices: Any, counts: Any, **options: int) -> RunningMedian:
        """Rebuild from arrays of distinct values and their positive multiplicities (sorted
        as stored: O(d); unsorted: O(d log d)); the levels beyond the heaps go straight to the
        cold stores. ``ValueError`` for duplicates, negative values or counts not positive."""
        try:
            p, c = _prices(prices), _counts(counts)
        except OverflowError as exc:  # a negative value
            raise ValueError("median state needs non-negative values") from exc
        if len(c) and bool(np.any(c <= 0)):
            raise ValueError("median state needs positive counts")
        if len(p) > 1 and not bool(np.all(p[1:] > p[:-1])):
            order = np.argsort(p, kind="stable")
            p, c = p[order], c[order]
            if bool(np.any(p[1:] == p[:-1])):
                raise ValueError("duplicate value in median state")
        m = cls(**options)
        if not len(p):
            return m
        n = int(c.sum())
        want_low = n - n // 2  # the low side holds the extra value of an odd count
        through = np.cumsum(c)
        i = int(np.searchsorted(through, want_low))  # the level where the low side ends
        spare = int(through[i]) - want_low  # values of level i that belong to the high side
        del through
        low_p, low_c = p[: i + 1], c[: i + 1].copy()  # prices are shared views, never written
        low_c[-1] -= spare
        high_p, high_c = p[i:], c[i:]
        if spare:
            high_c = high_c.copy()
            high_c[0] = spare
        else:
            high_p, high_c = high_p[1:], high_c[1:]
        m._cold_low.put_top(low_p, low_c)
        m._cold_high.put_bottom(high_p, high_c)
        m._n_low, m._n_high = want_low, n - want_low
        m._refill_low()
        if m._n_high:
            m._refill_high()
        return m

    def _check(self) -> None:
        """Assert every invariant. O(d log d); for tests."""
        low, high = self._low, self._high
        assert sorted(low) == sorted(self._low_counts), "low heap and counts disagree"
        assert sorted(high) == sorted(self._high_counts), "high heap and counts disagree"
        assert all(low[(i - 1) // 2] <= low[i] for i in range(1, len(low))), "low heap order"
        assert all(high[(i - 1) // 2] <= high[i] for i in range(1, len(high))), "high heap order"
        assert all(c > 0 for c in self._low_counts.values()), "empty level on low side"
        assert all(c > 0 for c in self._high_counts.values()), "empty level on high side"
        assert len(low) <= self._limit and len(high) <= self._limit, "heap over its limit"
        assert self._limit >= self._hot_max, "limit under hot_max"
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
            assert self._floor == -1 and not len(cold_low.prices)
        if cold_high.total:
            assert all(v <= self._ceil for v in high), "high heap level above the ceiling"
            cold_high._check(above=self._ceil)
        else:
            assert self._ceil == NO_CEIL and not len(cold_high.prices)
        if low and high:
            assert -low[0] <= high[0], "max(low) > min(high)"
