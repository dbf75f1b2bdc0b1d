"""The symbol -> statistics hashmap: a :class:`PerfectHash` plus an array of per-symbol stats.

A :class:`SymbolTable` is immutable once built: the perfect hash gives each listed symbol its
own slot and ``stats[slot]`` holds that symbol's :class:`SymbolStats`. When Binance lists or
delists a symbol, :meth:`SymbolTable.rebuild` makes a *new* table that carries the existing
stats objects over by symbol; threads still holding the old table keep working on the same
stats objects, so no trade is lost while the new table is swapped in.

:class:`TradeIds` is the exactly-once bookkeeping (pure); :class:`SymbolStats` wraps it, the
:class:`~medianserv.median.RunningMedian` and the last price behind one lock per symbol.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum

from .median import RunningMedian
from .perfect_hash import PerfectHash

__all__ = ["Outcome", "StatsView", "SymbolStats", "SymbolTable", "TradeIds"]

#: Open gap ranges kept per symbol; past it the oldest is given up (counted as lost).
MAX_OPEN_GAPS = 256


class Outcome(IntEnum):
    """What :meth:`SymbolStats.apply` did with a trade."""

    APPLIED = 0  # a new trade, at or above the next expected id
    FILLED = 1  # a trade inside a known gap (a backfill or a late arrival)
    DUPLICATE = 2  # an id already applied: ignored


def _first(gap: tuple[int, int]) -> int:
    return gap[0]


class TradeIds:
    """Which trade ids of one symbol were applied: everything up to :attr:`last` but the gaps.

    Binance trade ids are consecutive per symbol, so a jump is a gap of missed trades. Gaps are
    kept as sorted, disjoint, inclusive ``(first, last)`` ranges below :attr:`last`; ids below
    the first one ever applied are history from before we started and are ignored like
    duplicates. At most :data:`MAX_OPEN_GAPS` ranges stay open; older ones are given up and
    counted in :attr:`lost`, so memory stays bounded whatever the feed does.

    Runtime complexity: :meth:`observe` O(1) for the next id or a duplicate above every gap,
    O(log g + g) when it opens or fills one of g gaps; :attr:`missing` O(g).

    >>> ids = TradeIds()
    >>> [ids.observe(t) for t in (10, 11, 14, 12, 11)]
    [<Outcome.APPLIED: 0>, <Outcome.APPLIED: 0>, <Outcome.APPLIED: 0>, <Outcome.FILLED: 1>, \
<Outcome.DUPLICATE: 2>]
    >>> ids.gaps, ids.missing
    ([(13, 13)], 1)
    """

    __slots__ = ("gaps", "last", "lost")

    def __init__(
        self, last: int | None = None, gaps: Iterable[tuple[int, int]] = (), lost: int = 0
    ) -> None:
        self.last = last  # highest id applied; None before the first trade
        self.gaps: list[tuple[int, int]] = sorted(gaps)  # missing ranges below last
        self.lost = lost  # ids given up for good (gap cap or backfill cap)

    @property
    def missing(self) -> int:
        """Trade ids below :attr:`last` not applied and still hoped for. O(g)."""
        return sum(hi - lo + 1 for lo, hi in self.gaps)

    def observe(self, trade_id: int) -> Outcome:
        """Record ``trade_id`` and say whether to apply it (APPLIED, FILLED) or not."""
        last = self.last
        if last is None or trade_id > last:
            if last is not None and trade_id > last + 1:
                self.gaps.append((last + 1, trade_id - 1))
                if len(self.gaps) > MAX_OPEN_GAPS:
                    lo, hi = self.gaps.pop(0)
                    self.lost += hi - lo + 1
            self.last = trade_id
            return Outcome.APPLIED
        gaps = self.gaps
        if not gaps or trade_id > gaps[-1][1]:
            return Outcome.DUPLICATE
        i = bisect_right(gaps, trade_id, key=_first) - 1  # last gap starting <= trade_id
        if i < 0 or gaps[i][1] < trade_id:
            return Outcome.DUPLICATE
        lo, hi = gaps[i]
        gaps[i : i + 1] = [(a, b) for a, b in ((lo, trade_id - 1), (trade_id + 1, hi)) if a <= b]
        return Outcome.FILLED

    def give_up(self, first: int, last: int) -> int:
        """Stop waiting for ids in ``[first, last]``: count them as lost. O(g). Returns how many."""
        kept: list[tuple[int, int]] = []
        dropped = 0
        for lo, hi in self.gaps:
            a, b = max(lo, first), min(hi, last)
            if a > b:
                kept.append((lo, hi))
                continue
            dropped += b - a + 1
            kept.extend(p for p in ((lo, a - 1), (b + 1, hi)) if p[0] <= p[1])
        self.gaps = kept
        self.lost += dropped
        return dropped


@dataclass(frozen=True, slots=True)
class StatsView:
    """One symbol's statistics at one instant (what the API serves)."""

    symbol: str
    count: int
    twice_median: int | None
    last_price: int | None
    last_trade_id: int | None
    last_trade_time: int | None  # Binance trade time, ms since the epoch
    missing: int  # trade ids seen to be missing and not (yet) backfilled
    lost: int  # trade ids given up for good


class SymbolStats:
    """Count, last price and exact median of one symbol, behind one lock.

    :attr:`lock` serialises writers (a symbol may briefly arrive on two connections during a
    rotation) and lets readers and the snapshotter copy a consistent instant.

    Runtime complexity: :meth:`apply` O(log d) (the median add), :meth:`view` O(g), in practice
    O(1) as gaps are few.
    """

    __slots__ = ("ids", "last_price", "last_trade_time", "lock", "median", "symbol")

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.lock = threading.Lock()  # guards every attribute below
        self.median = RunningMedian()
        self.ids = TradeIds()
        self.last_price: int | None = None  # price of the highest trade id applied
        self.last_trade_time: int | None = None

    def apply(self, trade_id: int, price: int, trade_time: int) -> Outcome:
        """Apply one trade exactly once. O(log d); one lock taken."""
        with self.lock:
            outcome = self.ids.observe(trade_id)
            if outcome is Outcome.DUPLICATE:
                return outcome
            self.median.add(price)
            if outcome is Outcome.APPLIED:
                self.last_price = price
                self.last_trade_time = trade_time
            return outcome

    def view(self) -> StatsView:
        """The statistics at one instant, copied under the lock."""
        with self.lock:
            ids = self.ids
            return StatsView(
                self.symbol,
                self.median.count,
                self.median.twice_median,
                self.last_price,
                ids.last,
                self.last_trade_time,
                ids.missing,
                ids.lost,
            )


class SymbolTable:
    """The hashmap: listed symbol -> :class:`SymbolStats`, via a minimal perfect hash.

    Runtime complexity: :meth:`get` O(1) (one perfect-hash lookup and a list index);
    :meth:`build` and :meth:`rebuild` expected O(n). Immutable: safe to share between threads.
    The array has one entry per perfect-hash slot; the few slots no symbol owns hold None and
    are never returned, because :meth:`PerfectHash.slot` verifies the key.
    """

    __slots__ = ("_hash", "_stats", "symbols")

    def __init__(
        self, phash: PerfectHash, stats: list[SymbolStats | None], symbols: tuple[str, ...]
    ) -> None:
        """Use :meth:`build` or :meth:`rebuild`."""
        self._hash = phash
        self._stats = stats  # stats[slot] belongs to phash.keys[slot]; None in unused slots
        self.symbols = symbols  # listing order, as the exchange lists them

    @classmethod
    def build(cls, symbols: Iterable[str]) -> SymbolTable:
        """A table of fresh stats for ``symbols`` (distinct, in listing order)."""
        return cls.rebuild(symbols, {})

    @classmethod
    def rebuild(cls, symbols: Iterable[str], existing: dict[str, SymbolStats]) -> SymbolTable:
        """A table for ``symbols`` reusing the stats objects in ``existing`` by symbol.

        Pass ``dict(old_table.items())`` to carry a table's stats over a listing change.
        """
        listed = tuple(symbols)
        phash = PerfectHash.build(listed)
        stats = [None if k is None else existing.get(k) or SymbolStats(k) for k in phash.keys]
        return cls(phash, stats, listed)

    def get(self, symbol: str) -> SymbolStats | None:
        """The stats of ``symbol``, or None when it is not listed. O(1)."""
        i = self._hash.slot(symbol)
        return None if i is None else self._stats[i]

    def items(self) -> Iterator[tuple[str, SymbolStats]]:
        """(symbol, stats) in listing order. O(n)."""
        get = self.get
        for symbol in self.symbols:
            stats = get(symbol)
            assert stats is not None
            yield symbol, stats

    def __len__(self) -> int:
        return len(self.symbols)

    def __contains__(self, symbol: object) -> bool:
        return isinstance(symbol, str) and self._hash.slot(symbol) is not None

    def _check(self) -> None:
        """Assert one stats object per slot, named after its key. O(n); for tests."""
        self._hash._check()
        assert len(self._stats) == self._hash.size and len(self._hash) == len(self.symbols)
        for key, stats in zip(self._hash.keys, self._stats, strict=True):
            assert (stats is None) if key is None else (stats is not None and stats.symbol == key)
        present = [id(s) for s in self._stats if s is not None]
        assert len(set(present)) == len(present) == len(self.symbols), "stats object shared"
