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

__all__ = ["Outcome", "StatsView", "SymbolState", "SymbolStats", "SymbolTable", "TradeIds"]

#: Open gap ranges kept per symbol; past it the oldest is given up (counted as lost).
MAX_OPEN_GAPS = 256


class Outcome(IntEnum):
    """What :meth:`SymbolStats.apply` did with a trade."""

    APPLIED = 0  # the next trade
    GAP = 1  # a new trade after a jump in ids: the ids in between are a new gap
    FILLED = 2  # a trade inside a known gap (a backfill or a late arrival)
    DUPLICATE = 3  # an id already applied, or older than our history: ignored


def _first(gap: tuple[int, int]) -> int:
    return gap[0]


class TradeIds:
    """Which trade ids of one symbol are ours, and which of those are still missing.

    Our history of a symbol is the ids ``first..last``; every id in it was applied except the
    ``gaps``: sorted, disjoint, inclusive ``(lo, hi)`` ranges. Binance trade ids are consecutive
    per symbol, so a jump is a gap of missed trades. Ids below ``first`` happened before we
    followed the symbol and are ignored like duplicates.

    Where history starts: at the first trade applied, or, better, at a *baseline* read from
    Binance's 24-hour ticker just before we subscribe (:meth:`baseline`): every later trade is
    ours, even one missed while a connection was down. A symbol with no trade in the 24 hours
    before we subscribed is *quiet*: every trade the ticker later reports for it is ours too,
    so :meth:`sweep` may move ``first`` back to the ticker's ``firstId``.

    At most :data:`MAX_OPEN_GAPS` ranges stay open; older ones are given up and counted in
    ``lost``, so memory stays bounded whatever the feed does.

    Runtime complexity: :meth:`observe` O(1) for the next id or a duplicate above every gap,
    O(log g + g) when it opens or fills one of g gaps; :attr:`missing` O(g).

    >>> ids = TradeIds()
    >>> [ids.observe(t).name for t in (10, 11, 14, 12, 11, 9)]
    ['APPLIED', 'APPLIED', 'GAP', 'FILLED', 'DUPLICATE', 'DUPLICATE']
    >>> ids.gaps, ids.missing
    ([(13, 13)], 1)
    """

    __slots__ = ("first", "gaps", "last", "lost", "quiet")

    def __init__(
        self,
        first: int | None = None,
        last: int | None = None,
        gaps: Iterable[tuple[int, int]] = (),
        lost: int = 0,
        quiet: bool = False,
    ) -> None:
        self.first = first  # lowest id of our history; None before it starts
        self.last = last  # highest id of our history (applied, missing or the baseline)
        self.gaps: list[tuple[int, int]] = sorted(gaps)  # missing ranges within first..last
        self.lost = lost  # ids given up for good (gap cap or backfill cap)
        self.quiet = quiet  # no trade in the 24 h before we followed it: see sweep()

    @property
    def missing(self) -> int:
        """Ids of our history not applied and still hoped for. O(g)."""
        return sum(hi - lo + 1 for lo, hi in self.gaps)

    def _add_gap(self, lo: int, hi: int, at_start: bool = False) -> int:
        if at_start:
            self.gaps.insert(0, (lo, hi))
        else:
            self.gaps.append((lo, hi))
        if len(self.gaps) > MAX_OPEN_GAPS:
            a, b = self.gaps.pop(0)
            self.lost += b - a + 1
        return hi - lo + 1

    def observe(self, trade_id: int) -> Outcome:
        """Record ``trade_id`` and say whether to apply it (APPLIED, GAP, FILLED) or not."""
        last = self.last
        if last is None:
            self.first = self.last = trade_id
            return Outcome.APPLIED
        if trade_id == last + 1:
            self.last = trade_id
            return Outcome.APPLIED
        if trade_id > last:
            self._add_gap(last + 1, trade_id - 1)
            self.last = trade_id
            return Outcome.GAP
        gaps = self.gaps
        if not gaps or trade_id > gaps[-1][1]:
            return Outcome.DUPLICATE
        i = bisect_right(gaps, trade_id, key=_first) - 1  # last gap starting <= trade_id
        if i < 0 or gaps[i][1] < trade_id:
            return Outcome.DUPLICATE
        lo, hi = gaps[i]
        gaps[i : i + 1] = [(a, b) for a, b in ((lo, trade_id - 1), (trade_id + 1, hi)) if a <= b]
        return Outcome.FILLED

    def baseline(self, last_id: int) -> None:
        """Start history after ``last_id`` (the latest trade before we subscribe), or, when
        Binance reports no trade in 24 hours (``last_id < 0``), mark the symbol quiet.
        Does nothing once history has started. O(1)."""
        if self.last is not None:
            return
        if last_id < 0:
            self.quiet = True
        else:
            self.first, self.last = last_id + 1, last_id

    def sweep(self, first_id: int, last_id: int) -> int:
        """Binance's ticker says the symbol's trades in the last 24 hours are
        ``first_id..last_id``: ids of ours above :attr:`last` become a gap, and for a quiet
        symbol so do ids below :attr:`first`. Returns how many ids became missing. O(g)."""
        if last_id < 0:
            return 0
        if self.last is None:
            if not self.quiet:
                return 0
            self.first, self.last = first_id, last_id
            return self._add_gap(first_id, last_id)
        added = 0
        assert self.first is not None
        if self.quiet:
            if first_id < self.first:
                added += self._add_gap(first_id, self.first - 1, at_start=True)
                self.first = first_id
            else:
                self.quiet = False  # the ticker's window no longer reaches before our history
        if last_id > self.last:
            added += self._add_gap(self.last + 1, last_id)
            self.last = last_id
        return added

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


@dataclass(slots=True)
class SymbolState:
    """One symbol as a snapshot stores it: counters, trade-id history and price levels.

    From :meth:`SymbolStats.harvest`, ``levels`` holds only the levels changed since the last
    snapshot; from the store, every level, ascending by price.
    """

    symbol: str
    count: int
    last_trade_id: int
    last_price: int | None
    last_trade_time: int | None
    first: int | None
    last: int | None
    gaps: list[tuple[int, int]]
    lost: int
    quiet: bool
    levels: list[tuple[int, int]]


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

    For incremental snapshots it remembers what changed since the last :meth:`harvest`: the
    price levels touched (``dirty_levels``) and whether anything at all changed (``dirty``).

    Runtime complexity: :meth:`apply` O(log d) (the median add), :meth:`view` O(g), in practice
    O(1) as gaps are few; :meth:`harvest` O(levels touched since the last one).
    """

    __slots__ = (
        "dirty", "dirty_levels", "ids", "last_price", "last_trade_id", "last_trade_time", "lock",
        "median", "symbol",
    )  # fmt: skip

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.lock = threading.Lock()  # guards every attribute below
        self.median = RunningMedian()
        self.ids = TradeIds()
        self.last_trade_id = -1  # highest trade id applied
        self.last_price: int | None = None  # its price
        self.last_trade_time: int | None = None  # its time
        self.dirty = False  # changed since the last harvest
        self.dirty_levels: set[int] = set()  # price levels added to since the last harvest

    def apply(self, trade_id: int, price: int, trade_time: int) -> Outcome:
        """Apply one trade exactly once. O(log d); one lock taken."""
        with self.lock:
            outcome = self.ids.observe(trade_id)
            if outcome is Outcome.DUPLICATE:
                return outcome
            self.median.add(price)
            self.dirty_levels.add(price)
            self.dirty = True
            if trade_id > self.last_trade_id:
                self.last_trade_id = trade_id
                self.last_price = price
                self.last_trade_time = trade_time
            return outcome

    def needs_baseline(self) -> bool:
        """True until history starts or the symbol is known quiet. O(1)."""
        with self.lock:
            return self.ids.last is None and not self.ids.quiet

    def baseline(self, last_id: int) -> None:
        """See :meth:`TradeIds.baseline`; under the lock."""
        with self.lock:
            self.ids.baseline(last_id)
            self.dirty = True

    def sweep(self, first_id: int, last_id: int) -> int:
        """See :meth:`TradeIds.sweep`; under the lock."""
        with self.lock:
            self.dirty = True
            return self.ids.sweep(first_id, last_id)

    def give_up(self, first: int, last: int) -> int:
        """Stop waiting for trade ids ``first..last``; they count as lost. O(g)."""
        with self.lock:
            self.dirty = True
            return self.ids.give_up(first, last)

    def oldest_gap(self) -> tuple[int, int] | None:
        """The lowest missing id range, or None. O(1)."""
        with self.lock:
            return self.ids.gaps[0] if self.ids.gaps else None

    def harvest(self) -> SymbolState | None:
        """What changed since the last harvest, copied under the lock (None if nothing did).

        Levels carry their full multiplicity, so writing them over the stored ones is
        idempotent. O(levels touched); this is all a snapshot holds the lock for.
        """
        with self.lock:
            if not self.dirty:
                return None
            low, high = self.median._low_counts, self.median._high_counts  # C-level lookups
            levels = [(p, low.get(-p, 0) + high.get(p, 0)) for p in self.dirty_levels]
            self.dirty_levels = set()
            self.dirty = False
            return self._state(levels)

    def full_state(self) -> SymbolState:
        """Everything, levels included (for exports and tests). O(d log d) under the lock."""
        with self.lock:
            return self._state(self.median.to_state())

    def _state(self, levels: list[tuple[int, int]]) -> SymbolState:
        ids = self.ids
        return SymbolState(
            symbol=self.symbol,
            count=self.median.count,
            last_trade_id=self.last_trade_id,
            last_price=self.last_price,
            last_trade_time=self.last_trade_time,
            first=ids.first,
            last=ids.last,
            gaps=list(ids.gaps),
            lost=ids.lost,
            quiet=ids.quiet,
            levels=levels,
        )

    @classmethod
    def restore(cls, state: SymbolState) -> SymbolStats:
        """Rebuild from a complete state (every level). O(d) for levels sorted by price.

        Raises ``ValueError`` when the state contradicts itself (count != sum of levels).
        """
        stats = cls(state.symbol)
        stats.median = RunningMedian.from_state(state.levels)
        if stats.median.count != state.count:
            raise ValueError(
                f"{state.symbol}: count {state.count} but levels sum to {stats.median.count}"
            )
        stats.ids = TradeIds(state.first, state.last, state.gaps, state.lost, state.quiet)
        stats.last_trade_id = state.last_trade_id
        stats.last_price = state.last_price
        stats.last_trade_time = state.last_trade_time
        return stats

    def view(self) -> StatsView:
        """The statistics at one instant, copied under the lock."""
        with self.lock:
            ids = self.ids
            return StatsView(
                self.symbol,
                self.median.count,
                self.median.twice_median,
                self.last_price,
                None if self.last_trade_id < 0 else self.last_trade_id,
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
