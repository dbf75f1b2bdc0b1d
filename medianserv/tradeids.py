"""Exactly-once bookkeeping of one symbol's trade ids (pure).

Theory of operation
-------------------
Binance numbers each symbol's trades consecutively. :class:`TradeIds` accounts for a range of
them, ``lowest..highest``, and says what became of every id in it. Each id is in exactly one
of four states:

* **counted**: its price is in the median;
* **missing**: in a :class:`Gap`, a trade we know we missed (the stream skipped it, or a
  ticker says it happened while we were away), to be backfilled over REST;
* **lost**: given up for good (Binance no longer has it, or too many gaps were open), counted
  in :attr:`TradeIds.lost`;
* **to import**: in the :class:`Front`, history before the live stream began, filled from its
  bottom up by the history import.

The identity that ties the counters together, checked by :meth:`TradeIds._check` after every
operation in the tests::

    counted + missing + lost + to import == highest - lowest + 1

together with: gaps sorted, disjoint, not touching, inside ``lowest..highest`` and at most
:data:`MAX_OPEN_GAPS`; the front, if any, below every gap and inside the range. Ids outside
the range are not ours: a trade older than ``lowest`` or already counted is a duplicate (but
see quiet symbols, below).

Where the range starts: at a *baseline* read from Binance's 24-hour ticker just before we
subscribe (:meth:`TradeIds.baseline`: every later trade is ours, even one missed while a
connection was down), or at the first trade seen. A symbol with no trade in those 24 hours is
*quiet*: every trade a later ticker reports for it is ours too, so :meth:`TradeIds.sweep` may
move ``lowest`` back, and so is every trade a stream delivers, even one below ``lowest`` (a
rotating connection's late frames). :meth:`TradeIds.start_history` moves ``lowest`` back to
the symbol's very first trade and makes what lies before the live range the front.

Every gap and the front carry bounds on when their trades happened and the prices of the
trades on either side, so that a backfill can ask Binance for exactly that stretch of time and
refuse an answer that contradicts what we already have.

Pure: no I/O, no threads, no clock. Not thread-safe: :class:`~medianserv.symbols.SymbolStats`
serialises access with its lock.
"""

from __future__ import annotations

import itertools
from bisect import bisect_right
from collections.abc import Iterable
from enum import IntEnum
from typing import NamedTuple

__all__ = [
    "APPLIED",
    "DUPLICATE",
    "FILLED",
    "GAP",
    "MAX_OPEN_GAPS",
    "TICKER_SLACK_MS",
    "Front",
    "Gap",
    "Outcome",
    "Row",
    "TradeIds",
]

#: Open gap ranges kept per symbol; past it the oldest is given up (counted as lost).
MAX_OPEN_GAPS = 256

#: Binance's 24-hour ticker may trail its trades a little: a time bound taken from a ticker's
#: ``closeTime`` for the *next* trade is moved back by this much.
TICKER_SLACK_MS = 1000


class Outcome(IntEnum):
    """What :meth:`TradeIds.observe` made of a trade."""

    APPLIED = 0  # the next trade
    GAP = 1  # a new trade after a jump in ids: the ids in between are a new gap
    FILLED = 2  # a trade inside a known gap (a backfill or a late arrival)
    DUPLICATE = 3  # an id already counted, or not ours: ignored


# The outcomes as plain module globals: the per-trade path compares them by identity.
APPLIED, GAP, FILLED, DUPLICATE = Outcome.APPLIED, Outcome.GAP, Outcome.FILLED, Outcome.DUPLICATE


class Gap(NamedTuple):
    """Trade ids ``lo..hi`` (inclusive) that are ours and missing, with what we know of them.

    ``after_ms``: trade ``lo`` happened at or after this time (the time of trade ``lo - 1``,
    or a ticker's ``closeTime`` less :data:`TICKER_SLACK_MS`); ``before_ms``: trade ``hi``
    happened at or before this time (the time of trade ``hi + 1``, or a ticker's
    ``closeTime``). ``price_before`` / ``price_after``: the prices of trades ``lo - 1`` and
    ``hi + 1`` as we counted them, so fetched data that contradicts them is refused. Any of
    them is None when unknown.
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


class Front(NamedTuple):
    """Trade history still to import: ids ``lo..hi``, just below the live range, filled from
    ``lo`` up (a whole archive file, or REST rows from ``lo`` on).

    ``after_ms``: trade ``lo`` happened at or after this time (the origin's time, then the
    time of the last trade imported); ``above_after_ms``: trade ``hi + 1``, the first one of
    the live range, happened at or after this time (how far back the median reaches while the
    front is still at the bottom); ``price_below``: the price of trade ``lo - 1`` as imported
    (None at the origin); ``price_above``: the price of trade ``hi + 1`` if known.
    """

    lo: int
    hi: int
    after_ms: int | None = None
    above_after_ms: int | None = None
    price_below: int | None = None
    price_above: int | None = None

    @property
    def size(self) -> int:
        return self.hi - self.lo + 1

    def up_to(self, stop: int) -> Gap:
        """The front's ids ``lo..min(stop, hi)`` as a gap to fetch over REST: its bounds and
        edge prices, the upper ones only if that gap ends where the front does. O(1)."""
        hi = min(stop, self.hi)
        above = self.price_above if hi == self.hi else None
        return Gap(self.lo, hi, self.after_ms, None, self.price_below, above)


class Row(NamedTuple):
    """Consecutive trades ``first_id..last_id`` of one symbol at one price and time: one
    aggregate trade, or a single trade (``first_id == last_id``). The unit of every batch."""

    first_id: int
    last_id: int
    price: int  # 1e-8 units
    time_ms: int


def _lo(gap: Gap) -> int:
    return gap.lo


class TradeIds:
    """Which trade ids of one symbol are ours, and what became of each (see the module).

    Runtime complexity: :meth:`observe` O(1) for the next id or a duplicate above every gap,
    O(log g + g) when it opens or fills one of g gaps; :meth:`fill` of a range O(log g + gaps
    touched); :attr:`missing` O(g); everything else O(1) or O(g).

    >>> ids = TradeIds()
    >>> [ids.observe(t).name for t in (10, 11, 14, 12, 11, 9)]
    ['APPLIED', 'APPLIED', 'GAP', 'FILLED', 'DUPLICATE', 'DUPLICATE']
    >>> [(g.lo, g.hi) for g in ids.gaps], ids.missing, ids.counted
    ([(13, 13)], 1, 4)
    >>> ids.observe(20), ids.fill(12, 18), [(g.lo, g.hi) for g in ids.gaps]
    (<Outcome.GAP: 1>, 5, [(19, 19)])
    """

    __slots__ = (
        "after_highest_ms",
        "claimed",
        "front",
        "gaps",
        "highest",
        "highest_price",
        "lost",
        "lowest",
        "lowest_after_ms",
        "origin",
        "quiet",
        "quiet_since_ms",
    )

    def __init__(
        self,
        lowest: int | None = None,
        highest: int | None = None,
        gaps: Iterable[Gap] = (),
        lost: int = 0,
        quiet: bool = False,
        after_highest_ms: int | None = None,
        highest_price: int | None = None,
        quiet_since_ms: int | None = None,
        front: Front | None = None,
        origin: int | None = None,
        lowest_after_ms: int | None = None,
    ) -> None:
        self.lowest = lowest  # lowest id accounted for; None before the range starts
        self.highest = highest  # highest id accounted for (counted, missing, or the baseline)
        self.gaps: list[Gap] = sorted((Gap(*g) for g in gaps), key=_lo)  # missing, in range
        self.lost = lost  # ids of the range given up for good
        self.quiet = quiet  # no trade in the 24 h before we followed it: see sweep()
        self.after_highest_ms = after_highest_ms  # trade highest + 1 happened at or after this
        self.highest_price = highest_price  # price of trade `highest` if counted, else None
        self.quiet_since_ms = quiet_since_ms  # quiet: no trade of ours happened before this
        self.front = None if front is None else Front(*front)  # history still to import
        self.origin = origin  # the symbol's very first trade id, once known
        self.lowest_after_ms = lowest_after_ms  # trade `lowest` happened at or after this
        self.claimed: tuple[int, int] | None = None  # front ids being merged (claim_front)

    def _fields(self) -> tuple[object, ...]:
        return (self.lowest, self.highest, self.gaps, self.lost, self.quiet,
                self.after_highest_ms, self.highest_price, self.quiet_since_ms, self.front,
                self.origin, self.lowest_after_ms)  # fmt: skip

    def __eq__(self, other: object) -> bool:
        """Equal bookkeeping (what a snapshot stores; a claim in flight is not part of it)."""
        return isinstance(other, TradeIds) and self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"TradeIds({self.lowest}..{self.highest}, gaps={self.gaps}, lost={self.lost}, "
                f"front={self.front}, origin={self.origin}, quiet={self.quiet})")  # fmt: skip

    def copy(self) -> TradeIds:
        """An independent copy (what a snapshot stores). O(g)."""
        other = TradeIds(self.lowest, self.highest, (), self.lost, self.quiet,
                         self.after_highest_ms, self.highest_price, self.quiet_since_ms,
                         self.front, self.origin, self.lowest_after_ms)  # fmt: skip
        other.gaps = list(self.gaps)
        return other

    # -- what the counters say ----------------------------------------------------------------

    @property
    def width(self) -> int:
        """How many ids the range holds: ``highest - lowest + 1``, 0 before it starts. O(1)."""
        if self.lowest is None or self.highest is None:
            return 0
        return self.highest - self.lowest + 1

    @property
    def missing(self) -> int:
        """Ids known missed and still hoped for (the front aside). O(g)."""
        return sum(g.hi - g.lo + 1 for g in self.gaps)

    @property
    def to_import(self) -> int:
        """Ids of the front not yet imported. O(1)."""
        return 0 if self.front is None else self.front.hi - self.front.lo + 1

    @property
    def counted(self) -> int:
        """Ids whose trades are counted, by the identity (see the module). O(g)."""
        return self.width - self.missing - self.lost - self.to_import

    @property
    def first_counted(self) -> int | None:
        """The bottom of what is counted: ``lowest``, or just above the front while the front
        sits at the bottom (None while nothing above it is ours yet). O(1)."""
        front = self.front
        if front is None or front.lo > (self.lowest or 0):
            return self.lowest
        return front.hi + 1 if self.highest is not None and front.hi < self.highest else None

    @property
    def first_counted_ms(self) -> int | None:
        """When :attr:`first_counted` happened (a lower bound): how far back the median
        reaches. O(1)."""
        front = self.front
        if front is None or front.lo > (self.lowest or 0):
            return self.lowest_after_ms
        return front.above_after_ms

    @property
    def history_complete(self) -> bool:
        """True when every trade since the symbol's first is ours. O(1)."""
        return self.origin is not None and self.front is None and self.lowest == self.origin

    # -- the stream -------------------------------------------------------------------------------

    def observe(self, trade_id: int, time_ms: int = 0, price: int | None = None) -> Outcome:
        """Account for one trade and say whether to count it (APPLIED, GAP, FILLED) or not
        (DUPLICATE)."""
        common = self.observe_common(trade_id, time_ms, price)
        if common is not None:
            return common
        highest = self.highest
        if highest is None:
            self.lowest = self.highest = trade_id
            self.lowest_after_ms = self.after_highest_ms = time_ms
            self.highest_price = price
            return APPLIED
        if trade_id > highest:
            self._extend(trade_id - 1, time_ms, price)
            self.highest, self.after_highest_ms, self.highest_price = trade_id, time_ms, price
            return GAP
        if trade_id < self.lowest:  # type: ignore[operator]  # set whenever highest is
            return self._below(trade_id, time_ms, price)
        gaps = self.gaps  # trade_id lies at or below the last gap's top
        i = bisect_right(gaps, trade_id, key=_lo) - 1  # last gap starting <= trade_id
        if i < 0 or gaps[i].hi < trade_id:
            return DUPLICATE
        self._split(i, trade_id, trade_id, time_ms, price)
        return FILLED

    def observe_common(self, trade_id: int, time_ms: int, price: int | None) -> Outcome | None:
        """:meth:`observe` for its common outcomes only, in O(1): the next id of the range
        (APPLIED) or one already counted above every gap (DUPLICATE). None, and nothing
        done, for anything else (a first trade, a jump in ids, an id at or below a gap's top
        or below the range), which :meth:`observe` goes on to handle. The per-trade path's
        bookkeeping (its compiled twin in ``_hotpath.c`` does the same on the same slots)."""
        highest = self.highest
        if highest is None:
            return None
        if trade_id == highest + 1:
            self.highest, self.after_highest_ms, self.highest_price = trade_id, time_ms, price
            return APPLIED
        if self.lowest <= trade_id <= highest:  # type: ignore[operator]  # set with highest
            gaps = self.gaps
            if not gaps or trade_id > gaps[-1].hi:
                return DUPLICATE
        return None

    def _below(self, trade_id: int, time_ms: int, price: int | None) -> Outcome:
        """A live trade below the range. Ours only for a quiet symbol whose history is not
        being imported: no trade happened in the 24 hours before we followed it, so every
        trade a stream delivers is ours, even one that arrives after a later one (two
        connections during a rotation: the new one may deliver the symbol's first trades
        before the old one's are read). The range then reaches down to it, the ids between
        missing (GAP); otherwise it is not ours (DUPLICATE). O(1) but for the gap cap."""
        lowest = self.lowest
        assert lowest is not None
        origin = self.origin
        if not self.quiet or self.front is not None or (origin is not None and trade_id < origin):
            return DUPLICATE
        gaps = self.gaps
        outcome = FILLED  # a late arrival, nothing missing in between
        if gaps and gaps[0].lo == lowest:  # grow it down: gaps never touch
            lo = trade_id + 1
            gaps[0] = gaps[0]._replace(lo=lo, after_ms=time_ms, price_before=price)
            outcome = GAP if lo < lowest else FILLED
        elif trade_id + 1 < lowest:  # the time of trade `lowest` is not kept: no upper bound
            self._insert(0, [Gap(trade_id + 1, lowest - 1, time_ms, None, price, None)])
            outcome = GAP
        self.lowest, self.lowest_after_ms = trade_id, time_ms
        return outcome

    def _extend(self, top: int, before_ms: int | None, price_after: int | None) -> int:
        """Ids ``highest + 1 .. top`` are missing: a new gap, or the last one grown when it
        ends at ``highest`` (gaps never touch). Returns how many ids became missing."""
        assert self.highest is not None
        lo = self.highest + 1
        gaps = self.gaps
        if gaps and gaps[-1].hi == self.highest:
            gaps[-1] = gaps[-1]._replace(hi=top, before_ms=before_ms, price_after=price_after)
        else:
            self._insert(len(gaps), [Gap(lo, top, self.after_highest_ms, before_ms,
                                         self.highest_price, price_after)])  # fmt: skip
        return top - lo + 1

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

    def _split(self, i: int, a: int, b: int, time_ms: int, price: int | None) -> None:
        """Ids ``a..b`` (all at ``time_ms`` and ``price``) of gap ``i`` were counted."""
        g = self.gaps.pop(i)
        pieces = []
        if g.lo < a:
            pieces.append(Gap(g.lo, a - 1, g.after_ms, time_ms, g.price_before, price))
        if b < g.hi:
            pieces.append(Gap(b + 1, g.hi, time_ms, g.before_ms, price, g.price_after))
        self._insert(i, pieces)

    # -- batches ----------------------------------------------------------------------------------

    def fill(self, lo: int, hi: int, time_ms: int = 0, price: int | None = None) -> int:
        """Ids ``lo..hi`` at one price and time (an aggregate trade) arrived: count what of
        them is missing, or at the bottom of the front, and ignore the rest. Returns how many
        ids are newly counted (the caller adds exactly that many trades). While a file is
        being merged into the front (:meth:`claim_front`) the front is left alone.
        O(log g + gaps touched)."""
        filled = 0
        front = self.front
        if front is not None and self.claimed is None and lo <= front.lo <= hi:
            top = min(hi, front.hi)  # the front fills from its bottom only
            filled = top - front.lo + 1
            self.front = (
                None
                if top == front.hi
                else front._replace(lo=top + 1, after_ms=time_ms, price_below=price)
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

    # -- where the range starts and what the tickers say --------------------------------------

    def baseline(self, last_id: int, close_ms: int | None = None) -> None:
        """Start the range after ``last_id`` (the latest trade before we subscribe, from a
        ticker computed at ``close_ms``), or, when Binance reports no trade in 24 hours
        (``last_id < 0``), mark the symbol quiet. Does nothing once the range has started.
        O(1)."""
        if self.highest is not None:
            return
        if last_id < 0:
            self.quiet = True
            self.quiet_since_ms = None if close_ms is None else close_ms - TICKER_SLACK_MS
        else:
            self.lowest, self.highest = last_id + 1, last_id
            self.after_highest_ms = None if close_ms is None else close_ms - TICKER_SLACK_MS
            self.lowest_after_ms = self.after_highest_ms
            self.highest_price = None

    def adopt(self, last_id: int, close_ms: int | None) -> None:
        """Start the range after ``last_id`` whatever any ticker said: everything up to the
        symbol's latest trade (from REST) is history to import. Safe at any moment: a trade
        the stream delivers later either follows (ours) or is at most ``last_id`` (history).
        O(1)."""
        if self.highest is None:
            self.quiet = False
            self.quiet_since_ms = None
            self.baseline(last_id, close_ms)

    def sweep(
        self,
        first_id: int,
        last_id: int,
        open_ms: int | None = None,
        close_ms: int | None = None,
    ) -> int:
        """Binance's ticker (window ``open_ms..close_ms``) says the symbol's trades in the last
        24 hours are ``first_id..last_id``: ids of ours above :attr:`highest` become missing,
        and for a quiet symbol so do ids below :attr:`lowest`. Returns how many ids became
        missing. O(g)."""
        if last_id < 0:
            return 0
        next_ms = None if close_ms is None else close_ms - TICKER_SLACK_MS
        # a quiet symbol's first trades happened after we found it quiet, and in the window
        since = max((t for t in (open_ms, self.quiet_since_ms) if t is not None), default=None)
        if self.highest is None:
            if not self.quiet:
                return 0
            self.lowest, self.highest = first_id, last_id
            self.after_highest_ms, self.highest_price, self.lowest_after_ms = next_ms, None, since
            self._insert(0, [Gap(first_id, last_id, since, close_ms)])
            return last_id - first_id + 1
        added = 0
        assert self.lowest is not None
        if self.quiet:
            if first_id < self.lowest and self.front is None:
                if self.gaps and self.gaps[0].lo == self.lowest:  # grow it: gaps never touch
                    self.gaps[0] = self.gaps[0]._replace(lo=first_id, after_ms=since,
                                                         price_before=None)  # fmt: skip
                else:
                    self._insert(0, [Gap(first_id, self.lowest - 1, since, close_ms)])
                added += self.lowest - first_id
                self.lowest, self.lowest_after_ms = first_id, since
            else:
                self.quiet = False  # the ticker's window no longer reaches before our range
        if last_id > self.highest:
            added += self._extend(last_id, close_ms, None)
            self.highest, self.after_highest_ms, self.highest_price = last_id, next_ms, None
        return added

    # -- history ----------------------------------------------------------------------------------

    def start_history(self, origin_id: int, origin_ms: int | None) -> bool:
        """The symbol's first trade ever is ``origin_id`` (at ``origin_ms``): every id before
        our range becomes the front, to import. Needs the range started; True if a front was
        made. O(1)."""
        if self.lowest is None or self.highest is None:
            return False
        self.origin = origin_id
        if self.front is not None or origin_id >= self.lowest:
            return False
        self.front = Front(origin_id, self.lowest - 1, origin_ms, self.lowest_after_ms)
        self.lowest, self.lowest_after_ms = origin_id, origin_ms
        self.quiet = False  # every id below is history now, never a quiet symbol's gap
        return True

    def lower_origin(self, origin_id: int, origin_ms: int | None) -> int:
        """The symbol's first trade is ``origin_id``, before the origin REST gave (REST may
        not serve a symbol's oldest trades; its earliest archive does). Allowed only while
        nothing of the front is imported (its bottom is still the origin) and nothing is
        claimed: the front then reaches down to ``origin_id``. Returns how many ids the
        front grew by (0: nothing changed). O(1)."""
        front = self.front
        if (front is None or self.claimed is not None or self.origin != front.lo
                or origin_id >= front.lo or origin_id < 0):  # fmt: skip
            return 0
        grew = front.lo - origin_id
        self.front = front._replace(lo=origin_id, after_ms=origin_ms)
        self.origin = self.lowest = origin_id
        self.lowest_after_ms = origin_ms
        return grew

    def claim_front(self, lo: int, hi: int) -> bool:
        """Reserve the front's ids ``lo..hi`` for a file about to be merged: they must start
        exactly at its bottom and end within it, and no other claim may be open. Until
        :meth:`fill_front` (or :meth:`release_front`), :meth:`fill` leaves the front alone, so
        nothing else counts those ids meanwhile. True if claimed. O(1)."""
        front = self.front
        if self.claimed is not None or front is None or lo != front.lo or not lo <= hi <= front.hi:
            return False
        self.claimed = (lo, hi)
        return True

    def release_front(self) -> None:
        """Drop the claim without filling (the merge did not happen). O(1)."""
        self.claimed = None

    def fill_front(self, lo: int, hi: int, last_ms: int | None, last_price: int | None) -> int:
        """The claimed ids ``lo..hi`` (a whole archive file, its last trade at ``last_ms`` and
        ``last_price``) are counted now: the front moves above them and the claim ends.
        Returns how many ids (0, and nothing changes, unless ``lo..hi`` is the claim). O(1)."""
        front = self.front
        if self.claimed != (lo, hi) or front is None:
            return 0
        self.claimed = None
        self.front = (
            None
            if hi == front.hi
            else front._replace(lo=hi + 1, after_ms=last_ms, price_below=last_price)
        )
        return hi - lo + 1

    # -- the invariant ----------------------------------------------------------------------------

    def _check(self, counted: int | None = None) -> None:
        """Assert the invariants of the module docstring; with ``counted`` (the trades the
        median holds), the identity too. O(g); for tests."""
        gaps = self.gaps
        assert len(gaps) <= MAX_OPEN_GAPS, "over the gap cap"
        assert all(g.lo <= g.hi for g in gaps), "empty gap"
        assert all(x.hi + 1 < y.lo for x, y in itertools.pairwise(gaps)), "gaps touch"
        assert self.lost >= 0
        if self.lowest is None or self.highest is None:
            assert self.lowest is None and self.highest is None, "half a range"
            assert not gaps and self.front is None and self.claimed is None, "state before a range"
            assert counted in (None, 0), "trades counted before the range started"
            return
        assert self.lowest <= self.highest + 1, "range upside down"
        if gaps:
            assert self.lowest <= gaps[0].lo and gaps[-1].hi <= self.highest, "gap outside range"
        front = self.front
        if front is not None:
            assert self.lowest <= front.lo <= front.hi <= self.highest, "front outside range"
            assert not gaps or front.hi < gaps[0].lo, "front above a gap"
            assert self.origin is not None and self.origin == self.lowest, "front without origin"
        if self.claimed is not None:
            assert front is not None and self.claimed[0] == front.lo <= self.claimed[1] <= front.hi
        if counted is not None:
            assert counted == self.counted, (
                f"counted {counted} + missing {self.missing} + lost {self.lost} + to import "
                f"{self.to_import} != {self.width} ids in {self.lowest}..{self.highest}"
            )
