"""The symbol -> statistics hashmap: a :class:`PerfectHash` plus an array of per-symbol stats.

A :class:`SymbolTable` is immutable once built: the perfect hash gives each listed symbol its
own slot and ``stats[slot]`` holds that symbol's :class:`SymbolStats`. When Binance lists or
delists a symbol, :meth:`SymbolTable.rebuild` makes a *new* table that carries the existing
stats objects over by symbol; threads still holding the old table keep working on the same
stats objects, so no trade is lost while the new table is swapped in.

:class:`SymbolStats` holds one symbol's :class:`~medianserv.median.RunningMedian`, its
exactly-once bookkeeping (:class:`~medianserv.tradeids.TradeIds`) and its last trade behind
one lock. Every way a trade can arrive (the stream, a backfilled page, an archive file, a REST
page of history) goes through one of its methods, and :meth:`SymbolStats._check` states what
ties them together: the trades the median holds are exactly the ids the bookkeeping counts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np

from . import candles as _candles_module
from .candles import (
    INTERVALS,
    CandleRow,
    Candles,
    CandleState,
    DayCandle,
    PyPeriod,
    finish,
    landings,
    row_of,
)
from .median import CRunningMedian, PyRunningMedian, touched_arrays
from .perfect_hash import PerfectHash
from .quantiles import Quantile, ranks
from .tradeids import (
    APPLIED,
    DUPLICATE,
    FILLED,
    GAP,
    Front,
    Gap,
    Outcome,
    Row,
    TradeIds,
)

#: Rows of a batch (a backfilled page) applied under one hold of a symbol's lock: a new
#: level far from the median costs 5 us on average and up to 20 us (99%) at ten million
#: levels with the compiled median (cache misses), the row's ids 4 us more; 32 rows stay
#: well under a millisecond (``bench scale``).
ROWS_PIECE = 32

#: The longest a batch or a file goes on being applied between two yields of the interpreter,
#: in ns (see SymbolStats._maybe_yield).
YIELD_NS = 500_000

#: :meth:`SymbolStats.apply_common`'s answer when another thread (a snapshot, an import) holds
#: the symbol's lock: nothing done, so the reader's per-trade path stops at the frame and the
#: general path waits for the lock (counted: ``trades_waited_total``).
BUSY: Final = "busy"

__all__ = [
    "APPLIED",
    "BUSY",
    "DUPLICATE",
    "FILLED",
    "GAP",
    "Front",
    "Gap",
    "LevelArrays",
    "LevelLog",
    "Outcome",
    "Row",
    "StatsView",
    "SymbolState",
    "SymbolStats",
    "SymbolTable",
    "TradeIds",
    "compiled",
    "use_compiled",
]

#: The median class every new SymbolStats holds: the compiled twin where it was built at
#: install, unless :func:`use_compiled` said otherwise (``--trade-path python``).
_Median: Any = CRunningMedian or PyRunningMedian
_CPeriod: Any
try:
    from . import _native  # type: ignore[attr-defined]

    _CPeriod = _native.Period
except ImportError:
    _CPeriod = None
_candles_module.use_period(_CPeriod or PyPeriod)

#: Whether new SymbolStats keep median candles (:func:`keep_candles`).
_candles_kept = True
#: How long open candles of each interval are kept before the latest trade, in ms (None:
#: forever); set from the configuration (:func:`keep_candles`).
candle_keep_ms: list[int | None] = [7 * 86_400_000, 90 * 86_400_000, None]
_candles_forever: frozenset[str] = frozenset()  # symbols whose every candle is kept
_history_for: frozenset[str] | None = None  # symbols whose history is imported (None: all)
_FOREVER: list[int | None] = [None, None, None]


def keep_candles(
    enabled: bool,
    keep_ms: Sequence[int | None] | None = None,
    forever: Iterable[str] | None = None,
) -> None:
    """Whether SymbolStats made from now on keep median candles, for how long each
    interval's are kept (ms before the latest trade; None: forever), and the symbols whose
    every candle is kept (upper case). Called once at start, before anything is restored;
    benchmarks turn them off to measure what they cost."""
    global _candles_kept, _candles_forever
    _candles_kept = enabled
    if keep_ms is not None:
        candle_keep_ms[:] = list(keep_ms)
    if forever is not None:
        _candles_forever = frozenset(forever)


def expect_history(symbols: Iterable[str] | None) -> None:
    """The symbols (upper case) whose history the service imports (None: every symbol's).
    Where counting began, their candles wait for that history; the others' settle like any
    (see :meth:`Candles.harvest`'s ``seal``): their earlier trades will never come, and
    memory should not keep the levels of their first day for good. Called once at start."""
    global _history_for
    _history_for = None if symbols is None else frozenset(symbols)


def candles_kept() -> bool:
    """Whether SymbolStats keep median candles (:func:`keep_candles`): the history import
    then asks the reduction for each day's candle."""
    return _candles_kept


#: Its lock: with the compiled median, the compiled per-trade path's lock (the same semantics
#: as ``threading.Lock``, which that path takes without the interpreter); else threading's.
_Lock: Any = threading.Lock


def _native_lock() -> Any:
    from . import _native  # type: ignore[attr-defined]

    return _native.Lock


if CRunningMedian is not None:
    _Lock = _native_lock()


def use_compiled(enabled: bool) -> None:
    """Choose the median of every SymbolStats made from now on: the compiled twin (True;
    ``RuntimeError`` where it was not built) or the pure Python one. Called once at start,
    before anything is restored (the per-trade path in C needs the compiled median)."""
    global _Median, _Lock
    if enabled and CRunningMedian is None:
        raise RuntimeError("the compiled median was not built at install (no C compiler)")
    _Median = CRunningMedian if enabled else PyRunningMedian
    _Lock = _native_lock() if enabled else threading.Lock
    _candles_module.use_period(_CPeriod if enabled else PyPeriod)


def compiled() -> bool:
    """Whether new SymbolStats hold the compiled median. O(1)."""
    return _Median is not PyRunningMedian


@dataclass(slots=True)
class SymbolState:
    """One symbol as a snapshot stores it: its last trade, a copy of its trade-id bookkeeping
    and its price levels. ``count`` is the number of trades the levels hold.

    From :meth:`SymbolStats.harvest`, ``levels`` is a :class:`LevelLog` of only the levels
    changed since the last snapshot, each with its count (a later entry of one level supersedes
    an earlier one); from the store, every level, ascending by price.
    """

    symbol: str
    count: int
    last_trade_id: int
    last_price: int | None
    last_trade_time: int | None
    ids: TradeIds
    levels: list[tuple[int, int]] | LevelArrays | LevelLog
    # the candles' open periods and settled rows changed (a harvest's; a quiet one's value,
    # see Candles.harvest), or all open periods and bounds (a load's)
    candles: CandleState | bytes | None = None


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
    # this process's own: not part of the statistics (a restored symbol starts them afresh)
    live_count: int = field(default=0, compare=False)  # counted here, history import aside
    version: int = field(default=0, compare=False)  # SymbolStats.version at this instant
    levels: int = field(default=0, compare=False)  # distinct prices the median holds


class SymbolStats:
    """Count, last price and exact median of one symbol, behind one lock.

    :attr:`lock` serialises writers (a symbol may briefly arrive on two connections during a
    rotation, a backfill worker and the history import may write at once) and lets readers
    and the snapshotter copy a consistent instant. No method holds it for more than a bounded
    step: a batch of rows and an archive file are applied in pieces (:data:`ROWS_PIECE` rows,
    :attr:`levels_piece` pairs), the lock released between them.

    For incremental snapshots the median records every level added to since the last
    :meth:`harvest`, with its count then (:meth:`RunningMedian.take_touched`): a harvest takes
    that record over whole, O(1), and looks no level up again.

    Runtime complexity: :meth:`apply` O(log d) (the median add), :meth:`view` O(g), in practice
    O(1) as gaps are few; :meth:`harvest` O(g).
    """

    __slots__ = (
        "candles", "damaged", "dirty", "ids", "imported", "last_price", "last_trade_id",
        "last_trade_time", "lock", "median", "merged", "minute", "symbol", "version",
        "yielded_ns",
    )  # fmt: skip

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.lock: Any = _Lock()  # guards every attribute below
        self.median: PyRunningMedian = _Median()  # or its compiled twin: the same interface
        self.ids = TradeIds()
        # median candles (None: not kept); every trade counted by id goes into them too
        self.candles: Candles | None = Candles() if _candles_kept else None
        # candles.minute, beside the slots the per-trade path reads anyway (one cache line
        # fewer a trade than through the book); set wherever the book changes it
        self.minute: Any = None
        self.last_trade_id = -1  # highest trade id counted
        self.last_price: int | None = None  # its price
        self.last_trade_time: int | None = None  # its time
        self.dirty = False  # changed since the last harvest
        self.merged = 0  # trades of the claimed file merged so far (see apply_levels)
        self.imported = 0  # trades of history imported by this process (in memory only)
        self.damaged = False  # a merge broke off half way: never stored again (see apply_levels)
        # bumped by every change of what is served: caches of the API key on it (it may be
        # read without the lock: an int read is atomic, and a stale one only delays a rebuild)
        self.version = 0
        self.yielded_ns = 0  # when a merge last yielded the interpreter (_between_pieces)

    @property
    def levels_piece(self) -> int:
        """Pairs of a file merged under one hold of the lock: under a millisecond's work at
        ten million levels with the compiled median (measured by ``bench scale``: a new level
        at a random place costs 5 to 10 us there, its cache lines missed). The pure median
        cannot keep that bound at that size."""
        return 64

    # -- applying trades --------------------------------------------------------------------------

    def apply(self, trade_id: int, price: int, trade_time: int) -> Outcome:
        """Apply one trade exactly once. O(log d); one lock taken. The per-trade path (the
        compiled one, :mod:`medianserv.hotpath`, does the same for the common outcomes)."""
        with self.lock:
            outcome = self.ids.observe(trade_id, trade_time, price)
            if outcome is not DUPLICATE:
                self._count(trade_id, price, trade_time)
            return outcome

    def _count(self, trade_id: int, price: int, trade_time: int, roll: bool = False) -> None:
        """One trade the bookkeeping accepted, into the median, the candles (``roll``: a
        later minute's, as the per-trade path takes it: :meth:`Candles.roll`) and the last
        trade. Caller holds the lock. O(log d)."""
        self.median.add(price)
        if self.candles is not None:
            if roll:
                self.candles.roll(trade_id, price, trade_time)
            else:
                self.candles.add(trade_id, trade_id, price, trade_time)
            self.minute = self.candles.minute
        self.dirty = True
        self.version += 1
        if trade_id > self.last_trade_id:
            self.last_trade_id = trade_id
            self.last_price = price
            self.last_trade_time = trade_time

    def apply_common(
        self, trade_id: int, price: int, trade_time: int
    ) -> Outcome | Literal["busy"] | None:
        """:meth:`apply` for its common outcomes only: the next trade of the range (APPLIED)
        or one already counted above every gap (DUPLICATE), the same effects as
        :meth:`apply`. None, and nothing done, for anything else (a first trade, a jump in
        ids, a trade inside a gap), which :meth:`apply` handles; :data:`BUSY`, and nothing
        done, when another thread holds the lock (it never waits for it: :meth:`apply`
        does). What the per-trade path (:mod:`medianserv.hotpath`) applies, step for step in
        its compiled twin. O(log d)."""
        lock = self.lock
        if not lock.acquire(False):
            return BUSY
        try:
            candles, highest = self.candles, self.ids.highest
            how = 1
            if candles is not None and highest is not None and trade_id == highest + 1:
                how = candles.takes(trade_id, trade_time)
                if not how:
                    return None  # a late trade, or no current minute: Candles.add's general case
            outcome = self.ids.observe_common(trade_id, trade_time, price)
            if outcome is APPLIED:
                self._count(trade_id, price, trade_time, roll=how == 2)
            return outcome
        finally:
            lock.release()

    def apply_rows(self, rows: Iterable[Row]) -> int:
        """Apply a batch of trades exactly once: of each row, the ids still missing (or at the
        bottom of the front) are added to the median in one step (``add(price, times=k)``),
        the rest ignored. The lock is held for :data:`ROWS_PIECE` rows at a time, each row
        whole. O(r (log g + log d)) for r rows, plus the median's level crossings. Returns
        how many trades were applied."""
        applied = 0
        rows = list(rows)
        for start in range(0, len(rows), ROWS_PIECE):
            if start:
                self._maybe_yield()  # let readers waiting for the interpreter in
            with self.lock:
                ids, median, candles = self.ids, self.median, self.candles
                before = ids.to_import
                piece = 0
                for first_id, last_id, price, time_ms in rows[start : start + ROWS_PIECE]:
                    k = ids.fill(first_id, last_id, time_ms, price)
                    if not k:
                        continue
                    piece += k
                    median.add(price, k)
                    if candles is not None:  # the row's ids, as far as they are ours
                        lo = max(first_id, ids.lowest if ids.lowest is not None else first_id)
                        hi = min(last_id, ids.highest if ids.highest is not None else last_id)
                        candles.add(lo, hi, price, time_ms, k)
                        self.minute = candles.minute
                    if last_id > self.last_trade_id:
                        # the highest id of the row is ours only if it was missing: trades
                        # above our range stay for the stream to deliver
                        top = min(last_id, ids.highest if ids.highest is not None else last_id)
                        if top > self.last_trade_id:
                            self.last_trade_id, self.last_price, self.last_trade_time = (
                                top, price, time_ms,
                            )  # fmt: skip
                if piece:
                    applied += piece
                    self.dirty = True
                    self.version += 1
                    self.imported += before - ids.to_import
        return applied

    def apply_levels(
        self,
        lo: int,
        hi: int,
        levels: Sequence[int] | np.ndarray[Any, Any],
        counts: Sequence[int] | np.ndarray[Any, Any],
        last_ms: int | None,
        *,
        last_price: int | None = None,
        piece: int | None = None,
        days: Sequence[DayCandle] = (),
    ) -> int:
        """Apply a whole archive file, reduced to (price, count) pairs, covering exactly the
        trade ids ``lo..hi`` at the bottom of the front; anything else is refused (returns 0)
        and nothing is applied. ``last_price`` is the price of trade ``hi`` (at ``last_ms``).

        The pairs are checked first (distinct ascending prices, positive counts adding up to
        ``hi - lo + 1``; ``ValueError`` otherwise, before anything is applied). Then the ids
        are claimed (:meth:`TradeIds.claim_front`: nothing else can count them meanwhile) and
        the pairs go into the median with :meth:`RunningMedian.add_many`, ``piece`` pairs at a
        time (:attr:`levels_piece` by default) under the lock, released between pieces so
        that no reader waits for a whole file. Until the last piece the snapshotter leaves the
        symbol alone: what is stored is the file's pairs and the moved front together, or
        neither, so a crash never counts a file twice.

        ``days`` are the file's UTC days (:class:`~medianserv.candles.DayCandle`, made by
        the reduction): they enter the candles with the last piece
        (:meth:`Candles.add_days`), their partial days' periods built before the lock;
        without them the file's trades are counted outside any candle.

        If the merge breaks off half way (only a bug or memory exhaustion can do that: the
        input was checked), the median holds part of a file that its ids do not count. The
        symbol is then *damaged*: never stored again, so its last snapshot stays right and a
        restart restores it; the error propagates.

        O(p (log d + chunk)) for p pairs and d levels held, in pieces of bounded work.
        Returns the trades applied."""
        try:
            prices = np.asarray(levels, dtype=np.uint64).reshape(-1)
            times = np.asarray(counts, dtype=np.int64).reshape(-1)
        except (OverflowError, TypeError) as exc:
            raise ValueError(f"{self.symbol}: a price or count out of range") from exc
        _check_pairs(prices, times, hi - lo + 1, self.symbol)
        ready = landings(days) if self.candles is not None else []
        if ready and sum(d.trades for d in days) != hi - lo + 1:
            raise ValueError(f"{self.symbol}: the days do not add up to the file's trades")
        with self.lock:
            if self.damaged or not self.ids.claim_front(lo, hi):
                return 0
            self.merged = 0
        add_many = self.median.add_many
        step = piece or self.levels_piece
        try:
            for start in range(0, len(prices), step):
                if start:
                    self._between_pieces()
                part_p = prices[start : start + step]
                part_c = times[start : start + step]
                with self.lock:
                    add_many(part_p, part_c)
                    self.merged += int(part_c.sum())
                    self.version += 1
        except BaseException:
            with self.lock:
                self.damaged = True
            raise
        with self.lock:
            filled = self.ids.fill_front(lo, hi, last_ms, last_price)
            assert filled == hi - lo + 1, "the claim was lost"
            self.merged = 0
            self.imported += filled
            if self.candles is not None:
                if ready:
                    self.candles.add_days(ready)
                else:  # no day candles came with the pairs
                    self.candles.add_outside(filled)
            self.dirty = True
            self.version += 1
            if hi > self.last_trade_id and last_price is not None:
                self.last_trade_id, self.last_price = hi, last_price
                self.last_trade_time = last_ms
        return filled

    def _between_pieces(self) -> None:
        """Called by :meth:`apply_levels` between two pieces, the lock released: where other
        threads apply trades, snapshot or read meanwhile. Yields the interpreter to them (a
        file's merge is many pieces); tests override it to put any other event at exactly
        this point."""
        self._maybe_yield()

    def _maybe_yield(self) -> None:
        """Between two pieces of a batch or a file, the lock released: yields the interpreter
        (``time.sleep(0)``) if :data:`YIELD_NS` have passed since the last yield. A yield
        costs 26 us of CPU and 120 us of wall time on a virtual machine, as much as a piece's
        work where few levels are held; made at most every :data:`YIELD_NS`, a thread
        waiting for the lock or the interpreter waits no longer than that plus one piece."""
        if time.perf_counter_ns() - self.yielded_ns >= YIELD_NS:
            time.sleep(0)
            self.yielded_ns = time.perf_counter_ns()

    # -- bookkeeping, under the lock --------------------------------------------------------------

    def start_history(self, origin_id: int, origin_ms: int | None) -> bool:
        """See :meth:`TradeIds.start_history`; under the lock."""
        with self.lock:
            self.dirty = True
            self.version += 1
            started = self.ids.start_history(origin_id, origin_ms)
            if started and self.candles is not None:
                self.candles.start_history()
            return started

    def adopt(self, last_id: int, close_ms: int | None) -> None:
        """See :meth:`TradeIds.adopt`; under the lock."""
        with self.lock:
            self.dirty = True
            self.version += 1
            self.ids.adopt(last_id, close_ms)

    def front(self) -> Front | None:
        """The trade history still to import, or None. O(1)."""
        with self.lock:
            return self.ids.front

    def lower_origin(self, origin_id: int, origin_ms: int | None) -> int:
        """See :meth:`TradeIds.lower_origin`; under the lock."""
        with self.lock:
            grew = self.ids.lower_origin(origin_id, origin_ms)
            if grew:
                self.dirty = True
                self.version += 1
            return grew

    def history_info(self) -> tuple[bool, int | None, bool]:
        """(range started, the symbol's first trade id if known, history complete), at one
        instant. O(1)."""
        with self.lock:
            ids = self.ids
            return ids.highest is not None, ids.origin, ids.history_complete

    def began_quiet(self) -> bool:
        """True if the symbol is quiet (:attr:`TradeIds.quiet`) and has begun trading: a
        ticker would tell whether trades lie below its range, and until one does, its first
        candles wait (:meth:`Candles.harvest`). O(1)."""
        with self.lock:
            return self.ids.quiet and self.ids.highest is not None

    def needs_baseline(self) -> bool:
        """True until the range starts or the symbol is known quiet. O(1)."""
        with self.lock:
            return self.ids.highest is None and not self.ids.quiet

    def baseline(self, last_id: int, close_ms: int | None = None) -> None:
        """See :meth:`TradeIds.baseline`; under the lock."""
        with self.lock:
            self.ids.baseline(last_id, close_ms)
            self.dirty = True
            self.version += 1

    def sweep(
        self, first_id: int, last_id: int, open_ms: int | None = None, close_ms: int | None = None
    ) -> int:
        """See :meth:`TradeIds.sweep`; under the lock. The candles' first periods may settle
        now (:meth:`Candles.wake`)."""
        with self.lock:
            self.dirty = True
            self.version += 1
            if self.candles is not None:
                self.candles.wake()
            return self.ids.sweep(first_id, last_id, open_ms, close_ms)

    def give_up(self, first: int, last: int) -> int:
        """Stop waiting for trade ids ``first..last``; they count as lost. O(g)."""
        with self.lock:
            self.dirty = True
            self.version += 1
            return self.ids.give_up(first, last)

    def oldest_gap(self) -> Gap | None:
        """The lowest missing id range, or None. O(1)."""
        with self.lock:
            return self.ids.gaps[0] if self.ids.gaps else None

    def missing(self) -> int:
        """Trade ids known missing. O(g)."""
        with self.lock:
            return self.ids.missing

    # -- snapshots and views ----------------------------------------------------------------------

    def harvest(self) -> SymbolState | None:
        """What changed since the last harvest, handed over under the lock (None if nothing
        did): the levels added to, each with its count (the median's record, taken over
        whole), and a copy of the bookkeeping.

        Levels carry their full multiplicity, so writing them over the stored ones is
        idempotent. O(g): the log changes hands whole; this is all a snapshot holds the lock
        for.
        """
        with self.lock:
            # a file half merged is never stored, nor a merge that broke off
            if not self.dirty or self.ids.claimed is not None or self.damaged:
                if self.candles is not None and self.candles.retiring:
                    self.candles.drain()  # the minutes rolled retire all the same
                return None
            self.dirty = False
            state = self._state(LevelLog([self.median.take_touched()]))
            if self.candles is not None:
                keep, seal = candle_keep_ms, _history_for is not None
                if _candles_forever or _history_for:  # named symbols: is this one?
                    name = self.symbol.upper()
                    keep = _FOREVER if name in _candles_forever else keep
                    seal = seal and name not in _history_for  # type: ignore[operator]
                state.candles = self.candles.harvest(self.ids, keep, seal)
        if state.candles is not None:  # the medians of periods settled, off the lock
            state.candles = finish(state.candles)
        return state

    def full_state(self) -> SymbolState:
        """Everything, levels included (for exports and tests). O(d log d) under the lock."""
        with self.lock:
            return self._state(self.median.to_state())

    def _state(self, levels: list[tuple[int, int]] | LevelArrays | LevelLog) -> SymbolState:
        return SymbolState(self.symbol, self.median.count, self.last_trade_id, self.last_price,
                           self.last_trade_time, self.ids.copy(), levels)  # fmt: skip

    @classmethod
    def restore(cls, state: SymbolState) -> SymbolStats:
        """Rebuild from a complete state (every level). O(d) for levels sorted by price.

        Raises ``ValueError`` when the state contradicts itself (count != sum of levels).
        """
        stats = cls(state.symbol)
        levels = state.levels
        if isinstance(levels, LevelArrays):
            stats.median = _Median.from_arrays(levels.prices, levels.counts)
        else:
            stats.median = _Median.from_state(levels)
        if stats.median.count != state.count:
            raise ValueError(
                f"{state.symbol}: count {state.count} but levels sum to {stats.median.count}"
            )
        stats.ids = state.ids.copy()
        if stats.candles is not None:
            if state.candles is not None:
                if isinstance(state.candles, bytes):
                    raise ValueError(f"{state.symbol}: a harvest's candles, not a whole state")
                stats.candles = Candles.restore(state.candles)
                stats.minute = stats.candles.minute
            else:  # a store written without candles: its trades are in none
                stats.candles.add_outside(state.count)
        stats.last_trade_id = state.last_trade_id
        stats.last_price = state.last_price
        stats.last_trade_time = state.last_trade_time
        return stats

    def consistent(self) -> bool:
        """Whether the median holds exactly the trades the bookkeeping counts (the identity of
        :mod:`medianserv.tradeids`). O(g). A store written by a release with a counting fault
        can fail it; the service says so at start."""
        with self.lock:
            return self.median.count - self.merged == self.ids.counted

    def view(self) -> StatsView:
        """The statistics at one instant, copied under the lock."""
        with self.lock:
            return self.view_locked()

    def view_locked(self) -> StatsView:
        """:meth:`view`, the caller holding the lock. O(g)."""
        ids = self.ids
        count = self.median.count
        return StatsView(
            self.symbol,
            count,
            self.median.twice_median,
            self.last_price,
            None if self.last_trade_id < 0 else self.last_trade_id,
            self.last_trade_time,
            ids.missing,
            ids.lost,
            ids.first_counted if count else None,
            ids.first_counted_ms if count else None,
            ids.history_complete,
            ids.to_import,
            count - self.imported,
            self.version,
            self.median.levels,
        )

    def quantiles(self, qs: Sequence[Quantile]) -> tuple[StatsView, list[int | None]]:
        """The statistics and, for each q, twice the q-quantile of the prices counted (an
        exact integer; None before the first trade), at one instant: one hold of the lock,
        every order statistic read at once (:meth:`RunningMedian.values_at`).
        O(d / 1,024 + h log h) for d levels, h in a heap."""
        with self.lock:
            view = self.view_locked()
            n = self.median.count
            if not n:
                return view, [None] * len(qs)
            wanted = [ranks(q, n) for q in qs]
            values = self.median.values_at([r for pair in wanted for r in pair])
        return view, [values[2 * i] + values[2 * i + 1] for i in range(len(qs))]

    def candle_rows(self, k: int, start: int, end: int) -> tuple[list[CandleRow], int | None]:
        """The rows of interval ``k`` (an index of :data:`INTERVALS`) held in memory with an
        open time in ``start..end`` (end excluded): those settled and being written, and the
        open periods (the current minute folded in), their medians exact; and the symbol's
        first trade id if known (what makes a first row final). Copies are taken under the
        lock in O(p + L); the medians are computed after it, O(L log L)."""
        assert 0 <= k < len(INTERVALS)
        with self.lock:
            origin = self.ids.origin
            if self.candles is None:
                return [], origin
            periods = self.candles.snapshot(k, start, end)
        return [row_of(p) for p in periods], origin

    def _check(self, periods: bool = True) -> None:
        """Assert every invariant: the median's, the bookkeeping's, and the identity that ties
        them (trades in the median, less a merge in flight, are the ids counted); the
        candles' (``periods``: their open periods' own too, see :meth:`Candles._check`).
        O(d log d); for tests."""
        with self.lock:
            self.median._check()
            if self.damaged:
                return
            self.ids._check(self.median.count - self.merged)
            assert self.ids.claimed is not None or self.merged == 0, "merged without a claim"
            ids = self.ids
            if ids.highest is not None:
                assert self.last_trade_id <= ids.highest, "last trade above the range"
            if ids.highest_price is not None:
                assert (self.last_trade_id, self.last_price) == (ids.highest, ids.highest_price)
            if self.candles is not None:
                self.candles._check(self.median.count - self.merged, periods)
            assert self.minute is (self.candles.minute if self.candles is not None else None)


def _check_pairs(
    levels: np.ndarray[Any, Any], counts: np.ndarray[Any, Any], trades: int, symbol: str
) -> None:
    """Refuse (ValueError) pairs that are not distinct ascending prices with positive counts
    adding up to ``trades``. O(p), vectorized."""
    if len(levels) != len(counts):
        raise ValueError(f"{symbol}: {len(levels)} prices but {len(counts)} counts")
    total = int(counts.sum()) if len(counts) else 0
    if (len(counts) and bool(np.any(counts <= 0))) or total != trades:
        raise ValueError(f"{symbol}: pairs count {total} trades for {trades} ids, "
                         "or a count that is not positive")  # fmt: skip
    if len(levels) > 1 and not bool(np.all(levels[1:] > levels[:-1])):
        raise ValueError(f"{symbol}: prices not distinct and ascending")


class LevelArrays(Sequence[tuple[int, int]]):
    """A symbol's price levels as two numpy arrays, ascending: what the store loads, 16 bytes
    a level (a list of tuples would cost about 120). Reads as a sequence of
    ``(price, count)`` pairs. O(1) length and index."""

    __slots__ = ("counts", "prices")

    def __init__(self, prices: np.ndarray[Any, Any], counts: np.ndarray[Any, Any]) -> None:
        self.prices = prices  # uint64, ascending, distinct
        self.counts = counts  # int64, positive

    def __len__(self) -> int:
        return len(self.prices)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return list(zip(self.prices[i].tolist(), self.counts[i].tolist(), strict=True))
        return int(self.prices[i]), int(self.counts[i])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self.prices.tolist(), self.counts.tolist(), strict=True)

    def total(self) -> int:
        """Trades the levels hold. O(d)."""
        return int(self.counts.sum()) if len(self.counts) else 0


class LevelLog:
    """The levels a symbol changed since its last stored snapshot, each with its count then:
    one record per harvest (:meth:`RunningMedian.take_touched`), older first; a harvest kept
    after a failed write is followed by the next one's, whose counts are later. Iterates as
    ``(price, count)`` pairs in that order (so writing them in order leaves every level at
    its latest count); ``len`` counts them. O(1) to build."""

    __slots__ = ("entries",)

    def __init__(self, entries: list[Any]) -> None:
        self.entries = entries

    def __len__(self) -> int:
        return sum(len(e) for e in self.entries)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for e in self.entries:
            yield from e.to_dict().items()

    def arrays(self) -> Iterator[LevelArrays]:
        """Each record as arrays ascending by price, in order. O(t log t), off any lock."""
        for e in self.entries:
            yield LevelArrays(*touched_arrays(e))

    def then(self, later: LevelLog) -> LevelLog:
        """This log followed by a later one (a harvest kept after a failed write). O(1)."""
        return LevelLog(self.entries + later.entries)

    def final(self) -> dict[int, int]:
        """Each level's last count: what the log leaves stored. O(entries); for tests."""
        return dict(iter(self))


class SymbolTable:
    """The hashmap: listed symbol -> :class:`SymbolStats`, via a minimal perfect hash.

    Runtime complexity: :meth:`get` O(1) (one perfect-hash lookup and a list index);
    :meth:`build` and :meth:`rebuild` expected O(n). Immutable: safe to share between threads.
    The array has one entry per perfect-hash slot; the few slots no symbol owns hold None and
    are never returned, because :meth:`PerfectHash.slot` verifies the key.
    """

    __slots__ = ("_hash", "_stats", "get", "index", "symbols")

    get: Callable[[str], SymbolStats | None]
    """``get(symbol)``: the stats of ``symbol``, or None when it is not listed. O(1): one
    perfect-hash lookup straight into the array, one call."""
    index: Any
    """The same map for the compiled per-trade path (``medianserv._native.Index``: the same
    perfect hash in C over the same array), or None where the pure twins run."""

    def __init__(
        self, phash: PerfectHash, stats: list[SymbolStats | None], symbols: tuple[str, ...]
    ) -> None:
        """Use :meth:`build` or :meth:`rebuild`."""
        self._hash = phash
        self._stats = stats  # stats[slot] belongs to phash.keys[slot]; None in unused slots
        self.symbols = symbols  # listing order, as the exchange lists them
        self.get = phash.lookup_in(stats)
        self.index = phash.compiled_lookup_in(stats) if compiled() else None

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
