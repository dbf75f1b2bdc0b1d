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

Invariants (checked by :meth:`RunningMedian._check`): ``n_low == n_high`` or
``n_low == n_high + 1``; every level in ``low`` is <= every level in ``high``; each side's counts
sum to its ``n``; the heap arrays and the dicts hold the same levels. One price level may be
split across both sides (then it is both ``max(low)`` and ``min(high)``), which is what lets us
move a single value, not a whole level, when rebalancing.

``add`` puts the value on its side (a dict increment when the level exists, else a heap push)
and then moves at most one value across, so it is O(log d) for d distinct levels.
``add(value, times=k)`` adds k equal values in one step (an aggregate trade, a price level of an
archive): they go to their side at once and the rebalancing moves whole levels, so the cost is
O(log d) plus O(log d) per level the median crosses, never more than k single adds. The median
is read from the two heap tops, so reading it is O(1) and adding does no work for readers. Memory
is O(d) and does not depend on the number of values n: a billion trades over 100,000 price
levels use the memory of 100,000 levels.

The median of an even count is the mean of the two middle values; it is kept as *twice* the
median (``twice_median``), an exact integer.

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

from collections.abc import Iterable
from heapq import heapify, heappop, heappush

__all__ = ["RunningMedian"]


class RunningMedian:
    """Exact running median over non-negative integers with repeated values.

    Runtime complexity: :meth:`add` O(log d) (a batch: plus O(log d) per level the median
    crosses), :attr:`twice_median` and :attr:`count` O(1),
    :meth:`to_state` O(d log d), :meth:`from_state` O(d) for sorted input; memory O(d) where d
    is the number of distinct values added.
    """

    __slots__ = ("_high", "_high_counts", "_low", "_low_counts", "_n_high", "_n_low")

    def __init__(self) -> None:
        self._low: list[int] = []  # negated levels of the lower half (max-heap)
        self._low_counts: dict[int, int] = {}  # negated level -> values on the low side
        self._high: list[int] = []  # levels of the upper half (min-heap)
        self._high_counts: dict[int, int] = {}  # level -> values on the high side
        self._n_low = 0
        self._n_high = 0

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
        """Number of distinct values held (a level split across both sides counts once). O(1)."""
        split = 1 if self._low and self._high and -self._low[0] == self._high[0] else 0
        return len(self._low) + len(self._high) - split

    def add(self, value: int, times: int = 1) -> None:
        """Add ``value`` ``times`` times (``times >= 1``): one call for a whole batch of trades at
        one price, such as an aggregate trade or a (price, count) pair of an archive.

        Cost: O(log d) heap work, O(1) when the level already exists on its side, plus O(log d)
        for each distinct level the median crosses while the sides are rebalanced. A batch of
        ``times`` values moves the median by at most ``times / 2`` values, so it never costs
        more than ``times`` single adds, and costs one when the median stays within its level
        (the common case: trades repeat the prices around the median).
        """
        low = self._low
        if times == 1:  # the per-trade path: at most one value moves across
            if not low or value <= -low[0]:
                key = -value
                counts = self._low_counts
                c = counts.get(key)
                if c is None:
                    heappush(low, key)
                    counts[key] = 1
                else:
                    counts[key] = c + 1
                self._n_low += 1
                if self._n_low > self._n_high + 1:
                    self._move_low_to_high(1)
            else:
                counts = self._high_counts
                c = counts.get(value)
                if c is None:
                    heappush(self._high, value)
                    counts[value] = 1
                else:
                    counts[value] = c + 1
                self._n_high += 1
                if self._n_high > self._n_low:
                    self._move_high_to_low(1)
        elif times > 1:
            if not low or value <= -low[0]:
                key = -value
                c = self._low_counts.get(key)
                if c is None:
                    heappush(low, key)
                    self._low_counts[key] = times
                else:
                    self._low_counts[key] = c + times
                self._n_low += times
                excess = self._n_low - self._n_high - 1
                if excess > 0:
                    self._move_low_to_high((excess + 1) // 2)
            else:
                c = self._high_counts.get(value)
                if c is None:
                    heappush(self._high, value)
                    self._high_counts[value] = times
                else:
                    self._high_counts[value] = c + times
                self._n_high += times
                excess = self._n_high - self._n_low
                if excess > 0:
                    self._move_high_to_low((excess + 1) // 2)
        else:
            raise ValueError(f"times must be positive, not {times}")

    def _move_low_to_high(self, k: int) -> None:
        """Move the ``k`` largest values from the low side to the high side, a whole level at a
        time. O(log d) per level touched."""
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

    def _move_high_to_low(self, k: int) -> None:
        """Move the ``k`` smallest values from the high side to the low side, a whole level at
        a time. O(log d) per level touched."""
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

    def multiplicity(self, value: int) -> int:
        """How many times ``value`` was added. O(1)."""
        return self._low_counts.get(-value, 0) + self._high_counts.get(value, 0)

    def to_state(self) -> list[tuple[int, int]]:
        """Every distinct value with its multiplicity, ascending. O(d log d).

        The state is all a restore needs: :meth:`from_state` rebuilds an equal structure.
        """
        merged = {-key: c for key, c in self._low_counts.items()}
        for value, c in self._high_counts.items():
            merged[value] = merged.get(value, 0) + c
        return sorted(merged.items())

    @classmethod
    def from_state(cls, levels: Iterable[tuple[int, int]]) -> RunningMedian:
        """Rebuild from ``(value, multiplicity)`` pairs, such as :meth:`to_state` returns.

        O(d) for input sorted by value (as stored), O(d log d) otherwise. Values must be
        distinct and multiplicities positive, else ``ValueError``.
        """
        items = list(levels)
        if any(items[i][0] >= items[i + 1][0] for i in range(len(items) - 1)):
            items.sort()
            if any(items[i][0] == items[i + 1][0] for i in range(len(items) - 1)):
                raise ValueError("duplicate value in median state")
        if any(c <= 0 or v < 0 for v, c in items):
            raise ValueError("median state needs non-negative values with positive counts")
        m = cls()
        n = sum(c for _, c in items)
        want_low = n - n // 2  # the low side holds the extra value of an odd count
        taken = 0
        for value, c in items:
            if taken < want_low:
                on_low = min(c, want_low - taken)
                m._low_counts[-value] = on_low
                taken += on_low
                c -= on_low
            if c:
                m._high_counts[value] = c
        m._low = list(m._low_counts)
        m._high = list(m._high_counts)
        heapify(m._low)
        heapify(m._high)
        m._n_low = want_low
        m._n_high = n - want_low
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
        assert sum(self._low_counts.values()) == self._n_low, "low count"
        assert sum(self._high_counts.values()) == self._n_high, "high count"
        assert self._n_high <= self._n_low <= self._n_high + 1, "sides unbalanced"
        if low and high:
            assert -low[0] <= high[0], "max(low) > min(high)"
        assert (self._n_low == 0) == (not low) == (self.twice_median is None)
