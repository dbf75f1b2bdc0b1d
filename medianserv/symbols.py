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

import itertools
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from .median import RunningMedian
from .perfect_hash import PerfectHash

__all__ = [
    "Gap",
    "Outcome",
    "Row",
    "StatsView",
    "SymbolState",
    "SymbolStats",
    "SymbolTable",
    "TradeIds",
]

#: Open gap ranges kept per symbol; past it the oldest is given up (counted as lost).
MAX_OPEN_GAPS = 256

#: Binance's 24-hour ticker may trail its trades a little: a time bound taken from a ticker's
#: ``closeTime`` for the *next* trade is moved back by this much.
TICKER_SLACK_MS = 1000


class Outcome(IntEnum):
    """What :meth:`SymbolStats.apply` did with a trade."""

    APPLIED = 0  # the next trade
    GAP = 1  # a new trade after a jump in ids: the ids in between are a new gap
    FILLED = 2  # a trade inside a known gap (a backfill or a late arrival)
    DUPLICATE = 3  # an id already applied, or older than our history: ignored


# The outcomes as plain module globals: the per-trade path compares them by identity.
APPLIED, GAP, FILLED, DUPLICATE = Outcome.APPLIED, Outcome.GAP, Outcome.FILLED, Outcome.DUPLICATE


class Gap(NamedTuple):
    """Trade ids ``lo..hi`` (inclusive) that are ours but not applied, with what we know of
    when they happened (Binance time, ms) and of the trades on either side.

    ``after_ms``: trade ``lo`` happened at or after this time (the time of trade ``lo - 1``, or
    a ticker's ``closeTime`` less :data:`TICKER_SLACK_MS`); ``before_ms``: trade ``hi`` happened
    at or before this time (the time of trade ``hi + 1``, or a ticker's ``closeTime``). Either
    is None when unknown. ``price_before`` / ``price_after``: the prices of trades ``lo - 1``
    and ``hi + 1`` when we applied them, so fetched data that contradicts them is refused.
    """

    lo: int
    hi: int
    after_ms: int | None = None
    before_ms: int | None = None
    price_before: int | None = None
    price_after: int | None = None

    @property
    def size(self) -> int:
        return self.hi - self.lo + 1


class Row(NamedTuple):
    """Consecutive trades ``first_id..last_id`` of one symbol at one price and time: one
    aggregate trade, or a single trade (``first_id == last_id``). The unit of every batch."""

    first_id: int
    last_id: int
    price: int  # 1e-8 units
    time_ms: int


class TradeIds:
    """Which trade ids of one symbol are ours, and which of those are still missing.

    Our history of a symbol is the ids ``first..last``; every id in it was applied except the
    ``gaps``: sorted, disjoint :class:`Gap` ranges. Binance trade ids are consecutive per
    symbol, so a jump is a gap of missed trades. Ids outside ``first..last`` are not ours (they
    happened before we followed the symbol, or the stream has not delivered them yet) and are
    ignored like duplicates.

    Where history starts: at the first trade applied, or, better, at a *baseline* read from
    Binance's 24-hour ticker just before we subscribe (:meth:`baseline`): every later trade is
    ours, even one missed while a connection was down. A symbol with no trade in the 24 hours
    before we subscribed is *quiet*: every trade the ticker later reports for it is ours too,
    so :meth:`sweep` may move ``first`` back to the ticker's ``firstId``.

    Each gap carries bounds on when it happened (see :class:`Gap`), so a backfill can ask for
    exactly that stretch of time. ``last_ms`` is such a bound for the trade after ``last``.

    At most :data:`MAX_OPEN_GAPS` ranges stay open; older ones are given up and counted in
    ``lost``, so memory stays bounded whatever the feed does.

    *Trade history.* :meth:`start_history` moves ``first`` back to the symbol's very first
    trade (``origin``) and makes the ids before the live history one more range, the
    ``front``, which is filled from its bottom up, a whole archive file at a time
    (:meth:`fill_front`) or a row at a time (:meth:`fill`). The front is history still to
    import, not trades missed: :attr:`missing` leaves it out, and gaps are never given up
    into it.

    Runtime complexity: :meth:`observe` O(1) for the next id or a duplicate above every gap,
    O(log g + g) when it opens or fills one of g gaps; :meth:`fill` of a range O(log g + g);
    :attr:`missing` O(g).

    >>> ids = TradeIds()
    >>> [ids.observe(t).name for t in (10, 11, 14, 12, 11, 9)]
    ['APPLIED', 'APPLIED', 'GAP', 'FILLED', 'DUPLICATE', 'DUPLICATE']
    >>> [(g.lo, g.hi) for g in ids.gaps], ids.missing
    ([(13, 13)], 1)
    >>> ids.observe(20), ids.fill(12, 18), [(g.lo, g.hi) for g in ids.gaps]
    (<Outcome.GAP: 1>, 5, [(19, 19)])
    """

    __slots__ = (
        "first",
        "first_ms",
        "front",
        "gaps",
        "last",
        "last_ms",
        "last_price",
        "lost",
        "origin",
        "quiet",
        "quiet_since_ms",
    )

    def __init__(
        self,
        first: int | None = None,
        last: int | None = None,
        gaps: Iterable[Gap] = (),
        lost: int = 0,
        quiet: bool = False,
        last_ms: int | None = None,
        last_price: int | None = None,
        quiet_since_ms: int | None = None,
        front: Gap | None = None,
        origin: int | None = None,
        first_ms: int | None = None,
    ) -> None:
        self.first = first  # lowest id of our history; None before it starts
        self.last = last  # highest id of our history (applied, missing or the baseline)
        self.gaps: list[Gap] = sorted(Gap(*g) for g in gaps)  # missing ranges in first..last
        self.lost = lost  # ids given up for good (gap cap or backfill cap)
        self.quiet = quiet  # no trade in the 24 h before we followed it: see sweep()
        self.last_ms = last_ms  # the trade after `last` happened at or after this time
        self.last_price = last_price  # price of trade `last` if we applied it
        self.quiet_since_ms = quiet_since_ms  # quiet: no trade of ours happened before this
        self.front = None if front is None else Gap(*front)  # trade history still to import
        self.origin = origin  # the symbol's very first trade id, once known
        self.first_ms = first_ms  # trade `first` happened at or after this time

    @property
    def missing(self) -> int:
        """Ids of our history not applied and still hoped for (the front aside). O(g)."""
        return sum(g.hi - g.lo + 1 for g in self.gaps)

    @property
    def first_counted(self) -> int | None:
        """The lowest id applied (None before any, or while nothing below the front is). O(1)."""
        front = self.front
        if front is None or front.lo > (self.first or 0):
            return self.first
        return front.hi + 1 if self.last is not None and front.hi < self.last else None

    @property
    def first_counted_ms(self) -> int | None:
        """When the lowest trade counted happened (a lower bound), for "how far back". O(1)."""
        front = self.front
        if front is None or front.lo > (self.first or 0):
            return self.first_ms
        return front.before_ms

    @property
    def history_complete(self) -> bool:
        """True when every trade since the symbol's first is ours. O(1)."""
        return self.origin is not None and self.front is None and self.first == self.origin

    def start_history(self, origin_id: int, origin_ms: int | None) -> bool:
        """The symbol's first trade ever is ``origin_id`` (at ``origin_ms``): every id before
        our history becomes the front, to import. Needs history started; True if a front was
        made. O(1)."""
        if self.first is None or self.last is None:
            return False
        self.origin = origin_id
        if self.front is not None or origin_id >= self.first:
            return False
        self.front = Gap(origin_id, self.first - 1, origin_ms, self.first_ms)
        self.first, self.first_ms = origin_id, origin_ms
        return True

    def adopt(self, last_id: int, close_ms: int | None) -> None:
        """History starts after ``last_id``, whatever the ticker said (a quiet symbol whose
        past is imported: everything up to its latest trade is history). O(1)."""
        if self.last is None:
            self.quiet = False
            self.quiet_since_ms = None
            self.baseline(last_id, close_ms)

    def fill_front(self, lo: int, hi: int, last_ms: int | None) -> int:
        """Ids ``lo..hi`` (a whole archive file, the last at ``last_ms``) fill the bottom of
        the front. They must start exactly at its bottom and end within it, else nothing is
        filled (the caller refetches): a file is never counted twice. Returns how many. O(1)."""
        front = self.front
        if front is None or lo != front.lo or hi > front.hi or hi < lo:
            return 0
        self.front = None if hi == front.hi else front._replace(lo=hi + 1, after_ms=last_ms)
        return hi - lo + 1

    def _insert(self, i: int, new: list[Gap]) -> int:
        """Put ``new`` gaps at index ``i``, then give up the oldest past the cap. Returns the
        ids given up."""
        self.gaps[i:i] = new
        dropped = 0
        while len(self.gaps) > MAX_OPEN_GAPS:
            g = self.gaps.pop(0)
            dropped += g.hi - g.lo + 1
        self.lost += dropped
        return dropped

    def observe(self, trade_id: int, time_ms: int = 0, price: int | None = None) -> Outcome:
        """Record one trade and say whether to apply it (APPLIED, GAP, FILLED) or not."""
        last = self.last
        if last is None:
            self.first = self.last = trade_id
            self.first_ms = self.last_ms = time_ms
            self.last_price = price
            return APPLIED
        if trade_id == last + 1:
            self.last, self.last_ms, self.last_price = trade_id, time_ms, price
            return APPLIED
        if trade_id > last:
            gap = Gap(last + 1, trade_id - 1, self.last_ms, time_ms, self.last_price, price)
            self._insert(len(self.gaps), [gap])
            self.last, self.last_ms, self.last_price = trade_id, time_ms, price
            return GAP
        gaps = self.gaps
        if not gaps or trade_id > gaps[-1].hi:
            return DUPLICATE
        i = bisect_right(gaps, trade_id, key=_lo) - 1  # last gap starting <= trade_id
        if i < 0 or gaps[i].hi < trade_id:
            return DUPLICATE
        self._split(i, trade_id, trade_id, time_ms, price)
        return FILLED

    def _split(self, i: int, a: int, b: int, time_ms: int, price: int | None) -> None:
        """Ids ``a..b`` (all at ``time_ms`` and ``price``) of gap ``i`` were applied."""
        g = self.gaps.pop(i)
        pieces = []
        if g.lo < a:
            pieces.append(Gap(g.lo, a - 1, g.after_ms, time_ms, g.price_before, price))
        if b < g.hi:
            pieces.append(Gap(b + 1, g.hi, time_ms, g.before_ms, price, g.price_after))
        self._insert(i, pieces)

    def fill(self, lo: int, hi: int, time_ms: int = 0, price: int | None = None) -> int:
        """Ids ``lo..hi`` at one price and time (an aggregate trade) arrived: close what of
        them is missing, ignore the rest. Returns how many ids were missing and are now
        applied (the caller adds exactly that many trades). O(log g + gaps touched)."""
        filled = 0
        front = self.front
        if front is not None and lo <= front.lo <= hi:  # the front fills from its bottom only
            top = min(hi, front.hi)
            filled = top - front.lo + 1
            self.front = (
                None
                if top == front.hi
                else front._replace(lo=top + 1, after_ms=time_ms, price_before=price)
            )
        gaps = self.gaps
        if lo > hi or not gaps or lo > gaps[-1].hi:
            return filled
        i = max(0, bisect_right(gaps, lo, key=_lo) - 1)
        while i < len(gaps) and gaps[i].lo <= hi:
            g = gaps[i]
            a, b = max(lo, g.lo), min(hi, g.hi)
            if a > b:
                i += 1
                continue
            filled += b - a + 1
            n = len(gaps)
            self._split(i, a, b, time_ms, price)
            i += len(gaps) - n + 1  # past the pieces kept of this gap
        return filled

    def baseline(self, last_id: int, close_ms: int | None = None) -> None:
        """Start history after ``last_id`` (the latest trade before we subscribe, from a ticker
        computed at ``close_ms``), or, when Binance reports no trade in 24 hours
        (``last_id < 0``), mark the symbol quiet. Does nothing once history has started. O(1)."""
        if self.last is not None:
            return
        if last_id < 0:
            self.quiet = True
            self.quiet_since_ms = None if close_ms is None else close_ms - TICKER_SLACK_MS
        else:
            self.first, self.last = last_id + 1, last_id
            self.last_ms = None if close_ms is None else close_ms - TICKER_SLACK_MS
            self.first_ms = self.last_ms
            self.last_price = None

    def sweep(
        self,
        first_id: int,
        last_id: int,
        open_ms: int | None = None,
        close_ms: int | None = None,
    ) -> int:
        """Binance's ticker (window ``open_ms..close_ms``) says the symbol's trades in the last
        24 hours are ``first_id..last_id``: ids of ours above :attr:`last` become a gap, and for
        a quiet symbol so do ids below :attr:`first`. Returns how many ids became missing. O(g)."""
        if last_id < 0:
            return 0
        next_ms = None if close_ms is None else close_ms - TICKER_SLACK_MS
        # a quiet symbol's first trades happened after we found it quiet, and in the window
        since = max((t for t in (open_ms, self.quiet_since_ms) if t is not None), default=None)
        if self.last is None:
            if not self.quiet:
                return 0
            self.first, self.last = first_id, last_id
            self.last_ms, self.last_price, self.first_ms = next_ms, None, since
            self._insert(0, [Gap(first_id, last_id, since, close_ms)])
            return last_id - first_id + 1
        added = 0
        assert self.first is not None
        if self.quiet:
            if first_id < self.first:
                self._insert(0, [Gap(first_id, self.first - 1, since, close_ms)])
                added += self.first - first_id
                self.first, self.first_ms = first_id, since
            else:
                self.quiet = False  # the ticker's window no longer reaches before our history
        if last_id > self.last:
            gap = Gap(self.last + 1, last_id, self.last_ms, close_ms, self.last_price, None)
            self._insert(len(self.gaps), [gap])
            added += gap.size
            self.last, self.last_ms, self.last_price = last_id, next_ms, None
        return added

    def give_up(self, first: int, last: int) -> int:
        """Stop waiting for ids in ``[first, last]``: count them as lost. O(g). Returns how many."""
        kept: list[Gap] = []
        dropped = 0
        for g in self.gaps:
            a, b = max(g.lo, first), min(g.hi, last)
            if a > b:
                kept.append(g)
                continue
            dropped += b - a + 1
            if g.lo < a:
                kept.append(g._replace(hi=a - 1, price_after=None))
            if b < g.hi:
                kept.append(g._replace(lo=b + 1, price_before=None))
        self.gaps = kept
        self.lost += dropped
        return dropped

    def _check(self) -> None:
        """Assert the gaps are sorted, disjoint, within our history and under the cap. O(g)."""
        gaps = self.gaps
        assert len(gaps) <= MAX_OPEN_GAPS
        assert all(g.lo <= g.hi for g in gaps), "empty gap"
        assert all(x.hi + 1 < y.lo for x, y in itertools.pairwise(gaps)), "gaps touch"
        if gaps:
            assert self.first is not None and self.last is not None
            assert self.first <= gaps[0].lo and gaps[-1].hi <= self.last, "gap outside history"


def _lo(gap: Gap) -> int:
    return gap.lo


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
    gaps: list[Gap]
    lost: int
    quiet: bool
    levels: list[tuple[int, int]]
    last_ms: int | None = None  # TradeIds.last_ms
    last_id_price: int | None = None  # TradeIds.last_price
    quiet_since_ms: int | None = None  # TradeIds.quiet_since_ms
    front: Gap | None = None  # TradeIds.front: trade history still to import
    origin: int | None = None  # TradeIds.origin: the symbol's first trade id
    first_ms: int | None = None  # TradeIds.first_ms


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
    first_trade_id: int | None = None  # the lowest trade id counted
    first_trade_time: int | None = None  # when it happened (a lower bound), ms
    history_complete: bool = False  # every trade since the symbol's first is counted
    history_missing: int = 0  # trades of its history still to import


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
        "median", "merging", "symbol",
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
        self.merging = False  # an archive file is being merged: not harvested until it is done

    def apply(self, trade_id: int, price: int, trade_time: int) -> Outcome:
        """Apply one trade exactly once. O(log d); one lock taken. The per-trade path."""
        with self.lock:
            outcome = self.ids.observe(trade_id, trade_time, price)
            if outcome is DUPLICATE:
                return outcome
            self.median.add(price)
            self.dirty_levels.add(price)
            self.dirty = True
            if trade_id > self.last_trade_id:
                self.last_trade_id = trade_id
                self.last_price = price
                self.last_trade_time = trade_time
            return outcome

    def apply_rows(self, rows: Iterable[Row]) -> int:
        """Apply a batch of trades exactly once: of each row, the ids still missing are added
        to the median in one step (``add(price, times=k)``), the rest ignored. One lock for the
        whole batch. O(r (log g + log d)) for r rows, plus the median's level crossings.
        Returns how many trades were applied."""
        applied = 0
        with self.lock:
            ids, median, dirty_levels = self.ids, self.median, self.dirty_levels
            for first_id, last_id, price, time_ms in rows:
                k = ids.fill(first_id, last_id, time_ms, price)
                if not k:
                    continue
                applied += k
                median.add(price, k)
                dirty_levels.add(price)
                if last_id > self.last_trade_id:
                    # the highest id of the row is ours only if it was missing: trades above
                    # our history stay for the stream to deliver
                    top = min(last_id, ids.last if ids.last is not None else last_id)
                    if top > self.last_trade_id:
                        self.last_trade_id, self.last_price, self.last_trade_time = (
                            top, price, time_ms,
                        )  # fmt: skip
            if applied:
                self.dirty = True
        return applied

    def apply_levels(
        self,
        lo: int,
        hi: int,
        levels: Sequence[int],
        counts: Sequence[int],
        last_ms: int | None,
        *,
        last_price: int | None = None,
        slice_size: int = 4096,
    ) -> int:
        """Apply a whole archive file, reduced to (price, count) pairs, covering exactly the
        trade ids ``lo..hi`` at the bottom of the front (see :meth:`TradeIds.fill_front`);
        anything else is refused (returns 0) and nothing is applied.

        The pairs go into the median ``slice_size`` at a time, each slice under the lock, so a
        reader waits one slice at most (a few milliseconds), not the whole file. Until the last
        one, the snapshotter leaves the symbol alone: what is stored is the file's pairs and its
        ids together, or neither, so a crash never counts a file twice. O(p (log d +
        crossings)) for p pairs. ``last_price`` is the price of trade ``hi`` (at ``last_ms``):
        the last price while no later trade is counted. Returns the trades applied."""
        with self.lock:
            front = self.ids.front
            if self.merging or front is None or lo != front.lo or hi > front.hi or hi < lo:
                return 0
            if sum(counts) != hi - lo + 1:
                raise ValueError(f"{self.symbol}: pairs count {sum(counts)} trades, ids "
                                 f"{lo}..{hi} are {hi - lo + 1}")  # fmt: skip
            self.merging = True
        add = self.median.add
        try:
            for start in range(0, len(levels), slice_size):
                prices = levels[start : start + slice_size]
                times = counts[start : start + slice_size]
                with self.lock:
                    for price, count in zip(prices, times, strict=True):
                        add(price, count)
                    self.dirty_levels.update(prices)
        finally:
            with self.lock:
                self.ids.fill_front(lo, hi, last_ms)
                self.merging = False
                self.dirty = True
                if hi > self.last_trade_id and last_price is not None:
                    self.last_trade_id, self.last_price = hi, last_price
                    self.last_trade_time = last_ms
        return hi - lo + 1

    def start_history(self, origin_id: int, origin_ms: int | None) -> bool:
        """See :meth:`TradeIds.start_history`; under the lock."""
        with self.lock:
            self.dirty = True
            return self.ids.start_history(origin_id, origin_ms)

    def adopt(self, last_id: int, close_ms: int | None) -> None:
        """See :meth:`TradeIds.adopt`; under the lock."""
        with self.lock:
            self.dirty = True
            self.ids.adopt(last_id, close_ms)

    def front(self) -> Gap | None:
        """The trade history still to import, or None. O(1)."""
        with self.lock:
            return self.ids.front

    def history_info(self) -> tuple[bool, int | None, bool]:
        """(live history started, the symbol's first trade id if known, history complete),
        at one instant. O(1)."""
        with self.lock:
            ids = self.ids
            return ids.last is not None, ids.origin, ids.history_complete

    def needs_baseline(self) -> bool:
        """True until history starts or the symbol is known quiet. O(1)."""
        with self.lock:
            return self.ids.last is None and not self.ids.quiet

    def baseline(self, last_id: int, close_ms: int | None = None) -> None:
        """See :meth:`TradeIds.baseline`; under the lock."""
        with self.lock:
            self.ids.baseline(last_id, close_ms)
            self.dirty = True

    def sweep(
        self, first_id: int, last_id: int, open_ms: int | None = None, close_ms: int | None = None
    ) -> int:
        """See :meth:`TradeIds.sweep`; under the lock."""
        with self.lock:
            self.dirty = True
            return self.ids.sweep(first_id, last_id, open_ms, close_ms)

    def give_up(self, first: int, last: int) -> int:
        """Stop waiting for trade ids ``first..last``; they count as lost. O(g)."""
        with self.lock:
            self.dirty = True
            return self.ids.give_up(first, last)

    def oldest_gap(self) -> Gap | None:
        """The lowest missing id range, or None. O(1)."""
        with self.lock:
            return self.ids.gaps[0] if self.ids.gaps else None

    def missing(self) -> int:
        """Trade ids known missing. O(g)."""
        with self.lock:
            return self.ids.missing

    def harvest(self) -> SymbolState | None:
        """What changed since the last harvest, copied under the lock (None if nothing did).

        Levels carry their full multiplicity, so writing them over the stored ones is
        idempotent. O(levels touched); this is all a snapshot holds the lock for.
        """
        with self.lock:
            if not self.dirty or self.merging:  # a file half merged is never stored
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
            last_ms=ids.last_ms,
            last_id_price=ids.last_price,
            quiet_since_ms=ids.quiet_since_ms,
            front=ids.front,
            origin=ids.origin,
            first_ms=ids.first_ms,
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
        stats.ids = TradeIds(state.first, state.last, state.gaps, state.lost, state.quiet,
                             state.last_ms, state.last_id_price, state.quiet_since_ms,
                             state.front, state.origin, state.first_ms)  # fmt: skip
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
                ids.first_counted if self.median.count else None,
                ids.first_counted_ms if self.median.count else None,
                ids.history_complete,
                0 if ids.front is None else ids.front.hi - ids.front.lo + 1,
            )


class SymbolTable:
    """The hashmap: listed symbol -> :class:`SymbolStats`, via a minimal perfect hash.

    Runtime complexity: :meth:`get` O(1) (one perfect-hash lookup and a list index);
    :meth:`build` and :meth:`rebuild` expected O(n). Immutable: safe to share between threads.
    The array has one entry per perfect-hash slot; the few slots no symbol owns hold None and
    are never returned, because :meth:`PerfectHash.slot` verifies the key.
    """

    __slots__ = ("_hash", "_stats", "get", "symbols")

    get: Callable[[str], SymbolStats | None]
    """``get(symbol)``: the stats of ``symbol``, or None when it is not listed. O(1): one
    perfect-hash lookup straight into the array, one call."""

    def __init__(
        self, phash: PerfectHash, stats: list[SymbolStats | None], symbols: tuple[str, ...]
    ) -> None:
        """Use :meth:`build` or :meth:`rebuild`."""
        self._hash = phash
        self._stats = stats  # stats[slot] belongs to phash.keys[slot]; None in unused slots
        self.symbols = symbols  # listing order, as the exchange lists them
        self.get = phash.lookup_in(stats)

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
