"""Median candles: per UTC period of a minute, an hour and a day, the open, high, low, close,
count and exact median of the prices of the trades counted in it (pure).

Theory of operation
-------------------
A trade belongs to the period of its trade time. A :class:`PyPeriod` holds one period's
open (the price of its lowest trade id), close (of its highest), high, low, count and its
levels (price -> trades), from which its median is exact.

Each symbol has one :class:`Candles` book. Its *current minute* (:attr:`Candles.minute`) takes
every trade of the live stream, which nearly always falls in it: the per-trade path adds to
it alone, one level map update, and the compiled path does so without the interpreter. When
a later minute begins, the current one is *retired*: folded into its hour (its levels
merged into the hour's, once) and kept with its own levels among the open minutes. The
per-trade path only queues it (:meth:`Candles.roll`); the book's next use retires it, so
that work is done by the snapshot's harvest, not by a reader. The current minute's hour is
the book's *unfolded* hour: when the current minute leaves it, it is folded into its day,
whole (:meth:`Candles._enter`), so a day takes an hour's distinct levels 24 times a day, not
each minute's 1,440 times. A late trade (a backfill after a reconnect or a restart, REST rows
of the history) goes into the minute, hour and day of its own time directly (not the day if
its hour is the unfolded one). So an hour is the fold of its retired minutes and its late
trades, a day of its hours but the unfolded one and its late trades, and the current minute
(and the unfolded hour, to a day) is added only when shown.

A period stays *open* (its levels kept) while a trade may still land in it: until it has
ended (a trade at or after its end is counted), no gap of missing trade ids and no front of
history still to import may hold a trade of its time, and, while the history is not
complete, it does not reach back to the first trade counted (the range may still be extended
below it). Then :meth:`Candles.harvest` *settles* it: it leaves the book, read-only, and its
median is taken once, after the symbol's lock is released (:func:`finish`); its row goes to
the snapshot with the open periods changed since the last harvest, each as a :class:`Delta`
of what it gained (an hour or a day, the minutes retired into it; a minute of many levels,
its trades since), so a snapshot writes what is new, not a large period whole again (a
minute of a few levels is written whole: that costs less). So memory holds the levels of the
few open periods, never of the history, and a restart restores the open periods from the
same transaction that holds the trades they count.

A row is *final* when every trade of its period is counted. Trade times rise with trade ids,
so the trades of a period are consecutive ids, and a row is final when its count is
``close_id - open_id + 1`` (none missing inside), the row before it ends at ``open_id - 1``
(or ``open_id`` is the symbol's first trade) and the row after it starts at
``close_id + 1`` (:func:`final_flags`).

Pure: no I/O, no threads, no clock. Not thread-safe: :class:`~medianserv.symbols.SymbolStats`
serialises access with its lock.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, NamedTuple

import msgspec

from .tradeids import TradeIds

__all__ = [
    "DAY",
    "DELTAS",
    "HOUR",
    "INTERVALS",
    "MINUTE",
    "QUIET_HEAD",
    "CandleRow",
    "CandleState",
    "Candles",
    "DayCandle",
    "Delta",
    "Landing",
    "PyPeriod",
    "Settled",
    "final_flags",
    "finish",
    "from_record",
    "landings",
    "merge_rows",
    "minute_value",
    "period_key",
    "period_row",
    "period_start",
    "quiet_parts",
    "restore_packed",
    "row_of",
    "select_rows",
    "state_key",
    "then_candles",
]

#: The intervals: (name, length in ms), indexed by MINUTE, HOUR, DAY.
INTERVALS: tuple[tuple[str, int], ...] = (("1m", 60_000), ("1h", 3_600_000), ("1d", 86_400_000))
MINUTE, HOUR, DAY = 0, 1, 2
#: Trade ids and times (ms) at or above it are left out of candles: 10^18, what the compiled
#: per-trade path reads (18 digits), far beyond any real one.
LIMIT = 10**18
_LENGTHS = tuple(length for _, length in INTERVALS)


def period_start(ms: int, k: int) -> int:
    """The open time of the period of interval ``k`` (MINUTE, HOUR, DAY) that holds the time
    ``ms``: periods are UTC-aligned. O(1)."""
    return ms - ms % _LENGTHS[k]


#: The bounds a harvest of the current minute alone hands over (no retention bound: see
#: :meth:`Candles._quiet`), made at run time so that no literal ``(None, None, None)`` is
#: the same object: :func:`quiet` tells such a harvest by identity.
_NO_EXPIRY: tuple[int | None, ...] = tuple([None, None, None])
#: The bounds a full harvest hands over when none has moved past a period (see
#: :meth:`Candles.harvest`): no retention bound, but not a quiet harvest.
_NONE_EXPIRED: tuple[int | None, ...] = tuple([None, None, None])
#: A settled row's mark in a harvest (see :func:`finish`): the period had deltas stored.
DELTAS = "deltas"
#: An open minute of at most this many levels is stored whole at each snapshot; a larger one
#: as deltas of what it gained (see :meth:`Candles._delta`).
MINUTE_WHOLE = 256
#: The head of what a quiet harvest hands over (:func:`minute_value`): the current minute's
#: open time and the latest trade time, 8-byte big-endian each.
QUIET_HEAD = struct.Struct(">QQ")
_record_encoder = msgspec.msgpack.Encoder()


class CandleRow(NamedTuple):
    """One period's candle. ``twice_median`` is twice the median (an exact integer in units
    of 1e-8, as the API's medians are kept); prices in units of 1e-8."""

    open_time: int
    open: int
    high: int
    low: int
    close: int
    trades: int  # the API's "count" (a NamedTuple's field cannot be named count)
    twice_median: int
    open_id: int
    close_id: int


class DayCandle(NamedTuple):
    """One UTC day of an archive file's trades (what the reduction emits per day): its
    bounds and candle fields; its median (``twice_median``) where the file held every trade
    of the day that was counted from it, else its levels (``prices`` ascending, ``counts``),
    to be merged with the day's trades counted elsewhere (live, REST). Prices in 1e-8
    units."""

    start: int
    first_ms: int
    last_ms: int
    open_id: int
    open_price: int
    close_id: int
    close_price: int
    high: int
    low: int
    trades: int  # its count (a NamedTuple's field cannot be named count)
    twice_median: int | None
    prices: Any = None  # uint64 array (partial days)
    counts: Any = None  # int64 array

    def row(self) -> CandleRow:
        """The day's candle (a whole day only). O(1)."""
        assert self.twice_median is not None, "a partial day has no median of its own"
        return CandleRow(self.start, self.open_price, self.high, self.low, self.close_price,
                         self.trades, self.twice_median, self.open_id, self.close_id)  # fmt: skip


class Landing(NamedTuple):
    """A :class:`DayCandle` made ready to enter a book (:meth:`Candles.add_days`): a partial
    day's levels as a period of the type in use; None for a whole day."""

    day: DayCandle
    period: Any


def landings(days: Iterable[DayCandle]) -> list[Landing]:
    """``days`` made ready for :meth:`Candles.add_days`, the work done here, outside the
    symbol's lock. O(levels of the partial days)."""
    out = []
    for day in days:
        if day.twice_median is not None:
            out.append(Landing(day, None))
            continue
        fields = (day.open_id, day.open_price, day.close_id, day.close_price, day.high,
                  day.low, day.trades)  # fmt: skip
        out.append(Landing(day, restore_packed(day.start, _LENGTHS[DAY], fields,
                                               _big_endian(day.prices),
                                               _big_endian(day.counts))))  # fmt: skip
    return out


def _big_endian(values: Any) -> bytes:
    """Integers (a numpy array, as the reduction gives, or a sequence) as 8-byte big-endian
    bytes, what :meth:`PyPeriod.packed` makes. O(n)."""
    if hasattr(values, "astype"):
        return bytes(values.astype(">u8").tobytes())
    return b"".join(int(v).to_bytes(8, "big") for v in values)


class PyPeriod:
    """One period's trades: open, close, extremes, count and levels (price -> trades).

    The pure twin of the compiled ``Period`` (``medianserv/_candles.c``), with the same
    interface. Once told to (:meth:`keep_gains`: a minute too large to store whole at every
    snapshot), a period also keeps its *gains*: the levels it took one trade at a time
    (:meth:`add`) since the last :meth:`take_gains`, what a snapshot stores of it, so that
    such a minute is written as what it gained, not whole again. Runtime complexity:
    :meth:`add` O(1) expected; :meth:`fold` O(levels of the other); :meth:`items` O(L log L)
    for L levels; :meth:`copy` O(L); :meth:`take_gains` O(g log g) for g gains.
    """

    __slots__ = ("_gains", "_levels", "close_id", "close_price", "count", "high", "last_ms",
                 "length", "lo_ms", "low", "open_id", "open_price", "start")  # fmt: skip

    def __init__(self, start: int, length: int) -> None:
        self.start = start
        self.length = length
        self.lo_ms = start  # add_in takes times from here (a current minute's first trade on)
        self.last_ms = -1  # the latest time add_in took
        self.open_id = self.close_id = -1
        self.open_price = self.close_price = self.high = self.low = 0
        self.count = 0
        self._levels: dict[int, int] = {}
        self._gains: dict[int, int] | None = None  # kept from keep_gains() on

    @property
    def levels(self) -> int:
        """Distinct prices held. O(1)."""
        return len(self._levels)

    def add(self, lo: int, hi: int, price: int, times: int) -> None:
        """Count ``times`` trades at ``price`` with ids ``lo..hi`` (one trade: ``lo == hi``;
        an aggregate row: all its ids at one price). O(1) expected."""
        if not self.count:
            self.open_id, self.open_price, self.close_id, self.close_price = lo, price, hi, price
            self.high = self.low = price
        else:
            if lo < self.open_id:
                self.open_id, self.open_price = lo, price
            if hi > self.close_id:
                self.close_id, self.close_price = hi, price
            if price > self.high:
                self.high = price
            elif price < self.low:
                self.low = price
        self.count += times
        levels = self._levels
        levels[price] = levels.get(price, 0) + times
        gains = self._gains
        if gains is not None:
            gains[price] = gains.get(price, 0) + times

    def add_in(self, trade_id: int, price: int, time_ms: int) -> bool:
        """:meth:`add` one trade if ``time_ms`` falls in this period; False, and nothing done,
        if not. O(1) expected. What the per-trade path does for each trade."""
        if time_ms < self.lo_ms or time_ms - self.start >= self.length:
            return False
        self.add(trade_id, trade_id, price, 1)
        if time_ms > self.last_ms:
            self.last_ms = time_ms
        return True

    def fold(self, other: PyPeriod) -> None:
        """Add every trade of ``other`` (a period inside this one). O(levels of other)."""
        if not other.count:
            return
        if not self.count:
            self.open_id, self.open_price = other.open_id, other.open_price
            self.close_id, self.close_price = other.close_id, other.close_price
            self.high, self.low = other.high, other.low
        else:
            if other.open_id < self.open_id:
                self.open_id, self.open_price = other.open_id, other.open_price
            if other.close_id > self.close_id:
                self.close_id, self.close_price = other.close_id, other.close_price
            self.high = max(self.high, other.high)
            self.low = min(self.low, other.low)
        self.count += other.count
        levels = self._levels
        for price, n in other._levels.items():
            levels[price] = levels.get(price, 0) + n

    def copy(self) -> PyPeriod:
        """A detached copy. O(L)."""
        twin = PyPeriod(self.start, self.length)
        twin.open_id, twin.open_price = self.open_id, self.open_price
        twin.close_id, twin.close_price = self.close_id, self.close_price
        twin.high, twin.low, twin.count = self.high, self.low, self.count
        twin.lo_ms, twin.last_ms = self.lo_ms, self.last_ms
        twin._levels = dict(self._levels)
        twin._gains = None  # a reader's copy: no gains
        return twin

    def record(self, limit: int) -> bytes | tuple[bytes, bytes]:
        """What the store keeps of the period stored whole (MessagePack: ``[1, *fields,
        levels]``, :func:`period_fields` and its levels as :func:`compact_levels` makes them
        of :meth:`packed`), made under the symbol's
        lock while its levels are at hand, so that a snapshot hands over bytes and not a copy;
        when it holds more than ``limit`` trades and more than ``limit`` levels, its levels
        packed instead (:meth:`packed`: the first delta of a minute that turns to deltas, see
        :meth:`Candles._delta`). The compiled twin gathers its levels without compacting it
        (a live minute's next high stays an append). O(L log L) here; O(m log m + L) there."""
        if self.count > limit and len(self._levels) > limit:
            return self.packed()
        return _record_encoder.encode([1, *period_fields(self), compact_levels(*self.packed())])

    def current_value(self, latest: int, limit: int) -> bytes | None:
        """What a quiet harvest stores of the period, the current minute, in the store's
        ``current`` database (:meth:`Candles.harvest`): its open time and ``latest`` (the
        latest trade time counted; 8-byte big-endian each), then its :meth:`record`. None
        if it keeps gains (it is stored as deltas) or is too large to store whole (then
        :meth:`record` packs its levels instead). ``ValueError`` for a negative time. O(L log
        L) here, O(m log m + L) in the compiled twin."""
        if latest < 0 or self.start < 0:
            raise ValueError("current_value: a negative time")
        if self._gains is not None or (self.count > limit and len(self._levels) > limit):
            return None
        record = self.record(limit)
        assert isinstance(record, bytes)
        return minute_value(self.start, latest, record)

    def twice_median(self) -> int:
        """Twice the median of the period's trades (the sum of the prices at ranks
        (n - 1) // 2 and n // 2), exact. O(L log L); the compiled twin O(L): one pass over its
        levels compacted into one ascending run, or, where many came one at a time, a
        weighted quickselect over a copy. ``ValueError`` if it holds none."""
        if not self.count:
            raise ValueError("twice_median: the period holds no trade")
        prices, counts = self.items()
        return _twice_median(prices, counts, self.count)

    def packed(self) -> tuple[bytes, bytes]:
        """(prices, counts) as 8-byte big-endian integers, ascending by price: what is
        stored, made without a Python object per level in the compiled twin. O(L log L)."""
        prices = sorted(self._levels)
        levels = self._levels
        return (b"".join(p.to_bytes(8, "big") for p in prices),
                b"".join(levels[p].to_bytes(8, "big") for p in prices))  # fmt: skip

    def compact_after(self, prev: int) -> tuple[bytes, int]:
        """(its levels as :func:`compact_levels` makes them, the first price less ``prev``,
        the last price written: ``prev`` if none): what :class:`Gathered` appends after
        levels whose last price was ``prev``. The compiled twin makes them straight from its
        levels, with no 16 bytes a level packed between. O(L log L)."""
        prices, counts = self.packed()
        last = int.from_bytes(prices[-8:], "big") if prices else prev
        return compact_levels(prices, counts, prev), last

    def settle(self) -> None:
        """Apply the trades held back now. The compiled twin holds live trades back in a
        pending list whose ids run on one from the next (the per-trade path takes only the
        next id), so the book settles its current minute before it counts a trade anywhere
        else (a late one, one outside the candles): the list's next trade might not follow.
        The pure twin holds none back: nothing to do. O(1) here."""

    def keep_gains(self) -> None:
        """Keep the gains from now on (see the class docstring): the trades taken before are
        not gains (the compiled twin applies those it holds back first). O(1)."""
        if self._gains is None:
            self._gains = {}

    def take_gains(self) -> bytes:
        """The gains (see the class docstring) as a stored delta holds levels
        (:func:`compact_levels` of them, ascending), and forgotten; b"" for a period that
        keeps none. The compiled twin makes them straight from its levels, with no 16 bytes
        a level packed between. O(g log g) for g gains."""
        gains = self._gains
        if not gains:
            return b""
        prices = sorted(gains)
        compact = compact_levels(b"".join(p.to_bytes(8, "big") for p in prices),
                                 b"".join(gains[p].to_bytes(8, "big") for p in prices))  # fmt: skip
        gains.clear()
        return compact

    def items(self) -> tuple[list[int], list[int]]:
        """(prices, counts), ascending by price. O(L log L)."""
        prices = sorted(self._levels)
        levels = self._levels
        return prices, [levels[p] for p in prices]

    def add_packed(self, prices: bytes, counts: bytes) -> None:
        """Count the trades of every level of ``prices`` and ``counts`` packed as
        :meth:`packed` makes them (8-byte big-endian; any order) in the levels and the count
        alone (a stored period restored: its other fields are set after); ``ValueError``,
        and nothing added, for lengths that differ or a count that is not positive. O(L)."""
        if len(prices) != len(counts) or len(prices) % 8:
            raise ValueError("add_packed: as many prices as counts, 8 bytes each")
        values, times = unpack(prices), unpack(counts)
        if not all(0 < n < 2**63 for n in times) or self.count + sum(times) >= 2**63:
            raise ValueError("add_packed: counts must be positive (and fit)")
        levels = self._levels
        for price, n in zip(values, times, strict=True):
            levels[price] = levels.get(price, 0) + n
        self.count += sum(times)

    def _check(self) -> None:
        """Assert the period's invariants: every level's count positive, all of them its
        count, its extremes those of its levels, its open and close within them, and its
        gains within its levels. The compiled twin checks its own layout too: its map's load
        and probes, its edges and runs. O(L); for tests."""
        levels = self._levels
        assert all(n > 0 for n in levels.values()), "a level without trades"
        assert sum(levels.values()) == self.count, "the levels do not add up to the count"
        if self.count:
            assert (self.high, self.low) == (max(levels), min(levels)), (
                "the extremes are not those of the levels"
            )
            assert self.open_id <= self.close_id, "the open after the close"
            assert self.low <= min(self.open_price, self.close_price), "the open or the close"
            assert max(self.open_price, self.close_price) <= self.high, "the open or the close"
        for price, n in (self._gains or {}).items():
            assert 0 < n <= levels.get(price, 0), "a gain beyond the period's levels"


def period_row(period: Any) -> CandleRow:
    """A period's candle, its median exact. O(L log L). The period must hold a trade."""
    return CandleRow(period.start, period.open_price, period.high, period.low,
                     period.close_price, period.count, period.twice_median(),
                     period.open_id, period.close_id)  # fmt: skip


def period_key(period: Any) -> tuple[Any, ...]:
    """A period as plain values, equal for equal periods of either twin. O(L log L)."""
    prices, counts = period.items()
    return (period.start, period.length, *period_fields(period), tuple(prices), tuple(counts))


def state_key(state: CandleState | bytes | None) -> Any:
    """A harvest's candles as plain values (periods, and minutes handed over as their record,
    as :func:`period_key`; a quiet harvest's value as its open time, latest trade time and
    minute). O(L log L)."""
    if state is None:
        return None
    if isinstance(state, bytes):
        start, latest, record = quiet_parts(state)
        return (start, latest, period_key(from_record(start, INTERVALS[MINUTE][1], record)))
    periods = tuple(
        [(s, r, p if p is None or p is DELTAS else _delta_key(p) if isinstance(p, Delta)
          else period_key(from_record(s, INTERVALS[k][1], p) if isinstance(p, bytes) else p))
         for s, r, p in entries]
        for k, entries in enumerate(state.periods)
    )  # fmt: skip
    return state._replace(periods=periods)


def from_record(start: int, length: int, record: bytes) -> Any:
    """The period a record of :meth:`PyPeriod.record` stores, its levels compact, or as
    (prices, counts) as store format 3 kept them (``ValueError`` if it is not one). O(L)."""
    try:
        fields = msgspec.msgpack.decode(record)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a period's record: {exc}") from exc
    return record_period(start, length, fields)


def record_period(
    start: int,
    length: int,
    fields: Any,
    expand: Callable[[bytes], tuple[bytes, bytes]] | None = None,
) -> Any:
    """The period a decoded record holds: ``[1, *fields, levels]`` (its levels compact,
    undone by ``expand``, :func:`expand_levels` by default) or ``[1, *fields, prices,
    counts]`` (store format 3). ``ValueError`` if it is neither. O(L)."""
    if not (isinstance(fields, list) and len(fields) in (9, 10) and fields[0] == 1):
        raise ValueError("not a period's record")
    if len(fields) == 10:
        return restore_packed(start, length, fields[1:8], fields[8], fields[9])
    if not isinstance(fields[8], bytes):
        raise ValueError("not a period's record")
    return restore_packed(start, length, fields[1:8], *(expand or expand_levels)(fields[8]))


def _delta_key(delta: Delta) -> tuple[Any, ...]:
    levels: dict[int, int] = {}
    for chunk in delta.chunks:
        prices, counts = expand_levels(chunk) if isinstance(chunk, bytes) else chunk
        for price, n in zip(unpack(prices), unpack(counts), strict=True):
            levels[price] = levels.get(price, 0) + n
    return (delta.fields, delta.seq, tuple(sorted(levels.items())))


def unpack(data: bytes) -> list[int]:
    """8-byte big-endian integers (what :meth:`PyPeriod.packed` makes) as ints. O(n)."""
    return [int.from_bytes(data[i : i + 8], "big") for i in range(0, len(data), 8)]


def compact_levels(prices: bytes, counts: bytes, prev: int = 0) -> bytes:
    """Levels as :meth:`PyPeriod.packed` makes them (8-byte big-endian prices and counts)
    made compact, as a stored delta holds them: each price less the one before it (the
    first less ``prev``, 0 by default; modulo 2**64, so a list that does not ascend costs
    bytes, never exactness), then its count, each a LEB128 varint. A delta's levels ascend
    within each chunk, by a tick or a few, and most counts are small: a level takes 2-4
    bytes, not 16, which is what a flood's deltas cost the store (the pages it writes).
    With ``prev`` the last price of a list made before, the two joined are the compact
    form of both: so levels are gathered compact as they come (:class:`Gathered`).
    ``ValueError`` for lists of other lengths, ``OverflowError`` for ``prev`` outside
    0..2**64-1. O(n); the compiled twin ``_native.compact_levels``."""
    if len(prices) != len(counts) or len(prices) % 8:
        raise ValueError("compact_levels: prices and counts of 8 bytes each")
    if not 0 <= prev < 2**64:
        raise OverflowError("compact_levels: prev outside 0..2**64-1")
    out = bytearray()
    for price, count in zip(unpack(prices), unpack(counts), strict=True):
        _put_uvarint(out, (price - prev) % 2**64)
        _put_uvarint(out, count)
        prev = price
    return bytes(out)


def _put_uvarint(out: bytearray, v: int) -> None:
    """``v`` (0..2**64-1) appended to ``out`` as a LEB128 varint. O(1)."""
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)


def expand_levels(data: bytes) -> tuple[bytes, bytes]:
    """The levels :func:`compact_levels` made ``data`` of, as (prices, counts) 8-byte
    big-endian. ``ValueError`` for bytes it never makes: cut short, a varint beyond 64 bits
    or longer than it needs. O(n); the compiled twin ``_native.expand_levels``."""
    values: list[int] = []
    v = shift = 0
    for b in data:
        if (shift == 63 and b > 1) or (shift and not b):
            raise ValueError("expand_levels: not compact levels")
        v |= (b & 0x7F) << shift
        if b & 0x80:
            shift += 7
        else:
            values.append(v)
            v = shift = 0
    if shift or len(values) % 2:
        raise ValueError("expand_levels: not compact levels")
    prices, counts = bytearray(), bytearray()
    price = 0
    for i in range(0, len(values), 2):
        price = (price + values[i]) % 2**64
        prices += price.to_bytes(8, "big")
        counts += values[i + 1].to_bytes(8, "big")
    return bytes(prices), bytes(counts)


def period_fields(period: Any) -> tuple[int, int, int, int, int, int, int]:
    """(open_id, open_price, close_id, close_price, high, low, count): what is stored beside
    its levels. O(1)."""
    return (period.open_id, period.open_price, period.close_id, period.close_price,
            period.high, period.low, period.count)  # fmt: skip


def restore_packed(start: int, length: int, fields: Sequence[int], prices: bytes,
                   counts: bytes) -> Any:  # fmt: skip
    """The period (of the type in use) that :func:`period_fields` and its levels describe,
    the levels packed as :meth:`PyPeriod.packed` makes them (as stored) and added in one
    call. ``ValueError`` if the levels do not add up to its count or the fields contradict
    them. O(L)."""
    period = _Period(start, length)
    period.add_packed(prices, counts)
    return _with_fields(period, fields)


def _with_fields(period: Any, fields: Sequence[int]) -> Any:
    """``period`` (its levels added) with :func:`period_fields` set, checked against them."""
    open_id, open_price, close_id, close_price, high, low, count = (int(f) for f in fields)
    if count != period.count or count <= 0 or open_id > close_id or low > high:
        raise ValueError("a stored candle contradicts its levels")
    period.open_id, period.open_price, period.close_id = open_id, open_price, close_id
    period.close_price, period.high, period.low = close_price, high, low
    return period


def _twice_median(prices: Sequence[int], counts: Sequence[int], n: int) -> int:
    """Twice the median of ``n`` trades at ascending ``prices`` (``counts`` each): the sum of
    the prices at ranks (n - 1) // 2 and n // 2. O(L)."""
    lo_rank, hi_rank = (n - 1) // 2, n // 2
    seen = 0
    lo_price = None
    for price, k in zip(prices, counts, strict=True):
        seen += k
        if lo_price is None and seen > lo_rank:
            lo_price = price
        if seen > hi_rank:
            assert lo_price is not None
            return lo_price + price
    raise ValueError("the levels hold fewer trades than counted")


_Period: Any = PyPeriod


def use_period(kind: Any) -> None:
    """Choose the period type of every Candles made from now on: the compiled ``Period`` or
    :class:`PyPeriod` (see :func:`medianserv.symbols.use_compiled`)."""
    global _Period
    _Period = kind


class Settled(NamedTuple):
    """A period that has settled, handed over by :meth:`Candles.harvest` with its median not
    yet taken: :func:`finish` takes it after the symbol's lock is released (a day's levels
    sort in milliseconds, and no reader should wait for that). ``deltas``: whether it was
    stored as deltas, which its row's put leaves behind to be deleted."""

    period: Any
    deltas: bool


class Gathered:
    """The levels an open hour or day gained since the last harvest (retired minutes, late
    trades, an archive's partial day; a price may recur), gathered compact as they come:
    each list's first price is written less the last price gathered before it
    (:func:`compact_levels`' ``prev``), so the bytes are the compact form of all of them in
    the order they came, byte for byte what compacting them joined makes, and its delta's
    value as it is. A flood's retired minute costs its hour 2-3 bytes a level here, made
    straight from its run (:meth:`PyPeriod.compact_after`), not 16 packed and compacted
    later. O(1) a level."""

    __slots__ = ("data", "last")

    def __init__(self) -> None:
        self.data = bytearray()
        self.last = 0  # the last price gathered (0: none yet)

    def period(self, period: Any) -> None:
        """Every level of ``period`` (its run, ascending). O(L), or O(L log L) to compact
        the period first."""
        data, self.last = period.compact_after(self.last)
        self.data += data

    def level(self, price: int, times: int) -> None:
        """``times`` trades at ``price``. O(1)."""
        _put_uvarint(self.data, (price - self.last) % 2**64)
        _put_uvarint(self.data, times)
        self.last = price


class Delta(NamedTuple):
    """What an open period gained since the last harvest: its fields now and the levels
    added (``chunks``: one compact bytes, an hour's or a day's :class:`Gathered`, or a
    minute's :meth:`PyPeriod.take_gains`; or (prices, counts) as :meth:`PyPeriod.packed`
    makes them, a price may recur), stored as the
    period's ``seq``-th delta: a stored period is its header and the sum of its deltas, so a
    harvest writes what changed (an hour's or a day's minutes retired, a large minute's new
    trades), not a period's every level again."""

    fields: tuple[int, ...]
    seq: int
    chunks: list[tuple[bytes, bytes]] | list[bytes]


class CandleState(NamedTuple):
    """What a harvest hands to the snapshot, or a restore takes: the book's bounds, and per
    interval the periods to store, each ``(start, row, period)``: a settled row (period
    None, or :data:`DELTAS` where its deltas are to be deleted), or an open period (row
    None): a :class:`Delta`, or a small minute whole (from a harvest its record, see
    :meth:`PyPeriod.record`; from the store the period restored whole, with ``seqs`` the
    next delta's number of each stored as deltas)."""

    first_ms: int
    latest_ms: int
    front_top_ms: int | None
    current: int | None  # the start of the current minute, if any
    periods: tuple[list[tuple[int, CandleRow | None, Any]], ...]
    # per interval, the open time before which stored periods are past retention (None: none)
    expired: tuple[int | None, ...] = (None, None, None)
    counts: tuple[int, ...] = (0,) * 9  # Candles.counts()
    seqs: tuple[tuple[int, int, int], ...] = ()  # (interval, start, next delta) of the store
    sealed: tuple[int, int] = (-1, -1)  # Candles.sealed
    unfolded: int | None = None  # Candles.unfolded


# a CandleState, or a Delta, from its fields in order, without NamedTuple's keyword-taking
# constructor
_new_state: Callable[[tuple[Any, ...]], CandleState] = partial(tuple.__new__, CandleState)
_new_delta: Callable[[tuple[Any, ...]], Delta] = partial(tuple.__new__, Delta)


def quiet(state: CandleState | bytes) -> bool:
    """Whether ``state`` is a harvest of the current minute alone that hands over no
    retention bound (:meth:`Candles._quiet`, most harvests; its value alone where the minute
    is stored whole, :func:`quiet_parts`): it settles nothing and deletes nothing, so
    :func:`finish` and the store's deletes skip it. O(1)."""
    return type(state) is bytes or state.expired is _NO_EXPIRY  # type: ignore[union-attr]


def minute_value(start: int, latest: int, record: bytes) -> bytes:
    """The current minute's value in the store's ``current`` database: its open time and the
    latest trade time (:data:`QUIET_HEAD`), then its record (:meth:`PyPeriod.record`); what a
    quiet harvest hands over alone (:meth:`PyPeriod.current_value`). O(len(record))."""
    return QUIET_HEAD.pack(start, latest) + record


def quiet_parts(value: bytes) -> tuple[int, int, bytes]:
    """(the minute's open time, the latest trade time, its record) of a :func:`minute_value`.
    ``ValueError`` if it is too short. O(len(value))."""
    if len(value) <= QUIET_HEAD.size:
        raise ValueError("not a current minute's value")
    start, latest = QUIET_HEAD.unpack_from(value)
    return start, latest, value[QUIET_HEAD.size :]


def finish(state: CandleState | bytes | None) -> CandleState | bytes | None:
    """``state`` with the rows of its settled periods made (their medians taken): what
    :meth:`Candles.harvest` leaves to be done outside the symbol's lock. Each settled entry is
    replaced in its list, which the harvest made for this state alone, by ``(start, row,
    DELTAS)`` if the period was stored as deltas (the store deletes them), else ``(start,
    row, None)``. O(L log L)."""
    if state is None or quiet(state):
        return state
    assert not isinstance(state, bytes)
    for entries in state.periods:
        for i, (start, _, p) in enumerate(entries):
            if type(p) is Settled:
                entries[i] = (start, period_row(p.period), DELTAS if p.deltas else None)
    return state


def _expiry(
    latest: int, keep_ms: Sequence[int | None], first_ms: int
) -> tuple[tuple[int | None, ...], int]:
    """Per interval, the open time before which stored periods are past retention once the
    latest trade is at ``latest`` (None: kept forever, or no period is stored below it: none
    opens before the period of ``first_ms``, the earliest trade time counted, which only ever
    moves earlier); and the earliest latest trade time at which one of those bounds passes
    the open time of another stored period (:data:`LIMIT` if none can; -1 while no trade is
    counted): until then nothing more lies below them. So a book younger than its retention
    hands the store no bound, and a snapshot deletes nothing where nothing can be. O(1)."""
    if first_ms < 0:
        return (None, None, None), -1
    bounds: list[int | None] = []
    at = LIMIT
    for keep, length in zip(keep_ms, _LENGTHS, strict=True):
        if keep is None:
            bounds.append(None)
            continue
        bound = latest + 1 - keep - length
        first = first_ms - first_ms % length  # no period of this interval opens before it
        if bound <= first:
            bounds.append(None)  # nothing below it: nothing to delete till it passes first
            at = min(at, first + keep + length)
            continue
        bounds.append(bound)
        # periods open at multiples of length: the first not below the bound yet goes below
        # it once latest + 1 - keep - length exceeds it
        at = min(at, -(-bound // length) * length + keep + length)
    return tuple(bounds), at


def then_candles(
    before: CandleState | bytes | None, after: CandleState | bytes | None
) -> CandleState | bytes | None:
    """Two harvests as one (a write failed, the earlier is retried with the later): the later
    bounds (a retention bound the later hands over none of: the earlier's), the earlier
    periods then the later (written in order, the later put of a period stays).

    A quiet harvest's value (:func:`quiet_parts`) counts as its minute's entry with the
    latest trade time; two in a row are of one minute (a roll makes the next harvest a full
    one), so the later stands for both. O(periods)."""
    if before is None or after is None:
        return after or before
    if type(after) is bytes:
        if type(before) is bytes:
            return after
        assert not isinstance(before, bytes)
        start, latest, record = quiet_parts(after)
        minutes = [*before.periods[MINUTE], (start, None, record)]
        return before._replace(latest_ms=max(before.latest_ms, latest), current=start,
                               periods=(minutes, *before.periods[1:]))  # fmt: skip
    assert not isinstance(after, bytes)
    if type(before) is bytes:
        start, _, record = quiet_parts(before)
        minutes = [(start, None, record), *after.periods[MINUTE]]
        return after._replace(periods=(minutes, *after.periods[1:]))
    assert not isinstance(before, bytes)
    periods = tuple(a + b for a, b in zip(before.periods, after.periods, strict=True))
    expired = tuple(b if b is not None else a
                    for a, b in zip(before.expired, after.expired, strict=True))  # fmt: skip
    return after._replace(periods=periods, expired=expired)


class Candles:
    """One symbol's candles of every interval (see the module docstring).

    Runtime complexity: :meth:`add` O(1) expected (O(levels of a minute log) when it retires
    the current minute); :meth:`harvest` O(p + L) for p open periods and L levels they
    gained since the last (the medians of those settled: :func:`finish`, O(L log L), off the
    lock);
    :meth:`snapshot` O(p + L) for L the levels of the open periods it copies.
    """

    __slots__ = ("dirty", "expired", "expiry_at", "first_ms", "front_top_ms",
                 "harvested_counts", "history", "landed", "latest_ms", "minute", "open",
                 "outside", "over_at", "pending", "quiet_until", "recent", "recent_held",
                 "retiring", "sealed", "seq", "settled", "taken", "taken_count",
                 "total", "unfolded")  # fmt: skip

    def __init__(self) -> None:
        self.minute: Any = None  # the current minute (a Period), not yet in its hour or day
        # minutes the per-trade path replaced (roll), to be retired before the book is used
        self.retiring: list[Any] = []
        # the current minute's hour, whose retired minutes and late trades are in it alone,
        # not yet in its day (see _enter); None: every open hour's are (a book restored
        # from a store that folded minutes straight into their days)
        self.unfolded: int | None = None
        self.open: tuple[dict[int, Any], ...] = ({}, {}, {})  # start -> retired open period
        self.recent: tuple[dict[int, Any], ...] = ({}, {}, {})  # settled periods, being written
        self.recent_held = False  # whether any of recent is (the next harvest drops them)
        self.landed: dict[int, CandleRow] = {}  # imported whole days, for the next harvest
        self.dirty: tuple[set[int], ...] = (set(), set(), set())  # open starts changed
        self.first_ms = -1  # the earliest trade time counted (-1: none yet)
        self.latest_ms = -1  # the latest
        self.front_top_ms: int | None = None  # history to import lies at or before this
        # the periods where counting began, settled with no history to come (see harvest),
        # span these times (ms, end excluded): a trade of them is counted outside any candle
        self.sealed = (-1, -1)
        # the current minute when last handed over (the one the stored bounds name), and its
        # count then: told by identity, a roll replaces it
        self.taken: Any = None
        self.taken_count = 0
        # what the invariant adds up (:meth:`_check`), stored with the bounds
        self.total = 0  # trades in the candles but the current minute's (which C adds to)
        self.outside = 0  # trades the symbol counts that no candle holds (see add_outside)
        self.history = 0  # trades in day candles alone: archive files' (see add_days)
        self.settled = [0, 0, 0]  # per interval, trades in the rows settled
        self.expired = [0, 0, 0]  # per interval, trades in periods dropped past retention
        self.harvested_counts: tuple[int, ...] = ()  # counts() at the last harvest
        # of the open hours and days: levels added since the last harvest; of those and of the
        # minutes stored as deltas, the number of the next delta each will be stored as
        self.pending: tuple[dict[int, Gathered], ...] = ({}, {}, {})
        self.seq: dict[tuple[int, int], int] = {}
        # the earliest end of an open period at the last full harvest, or -1 (take a full one
        # next): until the latest trade reaches it, a harvest has only the current minute to
        # hand over, as every other change (to open, landed, recent or counts()) sets it to -1
        # (a quiet symbol's first periods, open till a ticker, count for none: see wake)
        self.over_at = -1
        # the latest trade time from which a retention bound passes a period's open time
        # it had not when last handed over (-1: none handed over yet): see _quiet
        self.expiry_at = -1
        # min(over_at, expiry_at): below it, a harvest of the minute last handed over is its
        # value alone (harvest's first lines read this one number, not the two)
        self.quiet_until = -1

    # -- counting -------------------------------------------------------------------------------

    def add(self, lo: int, hi: int, price: int, time_ms: int, times: int = 1) -> None:
        """Count ``times`` trades at ``price``, ids ``lo..hi``, at ``time_ms``. O(1) expected.
        A trade whose id or time is beyond :data:`LIMIT` (no real one is) is left out of the
        candles and counted in :attr:`outside`, never raised about: the caller has counted
        it already."""
        if self.retiring:
            self.drain()
        if not (0 <= lo <= hi < LIMIT and 0 <= time_ms < LIMIT and 0 <= price < 2**64) or (
            self.sealed[0] <= time_ms < self.sealed[1]
        ):
            if self.minute is not None:  # its pending ids run on: this one is not among them
                self.minute.settle()
            self.outside += times
            self.over_at = self.quiet_until = -1
            return
        if time_ms > self.latest_ms:
            self.latest_ms = time_ms
        if time_ms < self.first_ms or self.first_ms < 0:
            self.first_ms = time_ms
        start = time_ms - time_ms % 60_000  # period_start(time_ms, MINUTE), inline: per trade
        minute = self.minute
        if minute is not None and minute.start == start:
            minute.add(lo, hi, price, times)
            return
        if minute is None or start > minute.start:
            if minute is not None:
                self._retire(minute)
            minute = self.minute = _Period(start, 60_000)
            self._enter(start)
            minute.lo_ms = max(start, self.first_ms)  # an earlier time moves first_ms
            minute.add(lo, hi, price, times)
            return
        minute.settle()  # its pending ids run on: this one is not among them
        self.total += times
        for k in (MINUTE, HOUR, DAY):  # a late trade: into its own periods
            start = period_start(time_ms, k)
            if k == DAY and self.unfolded == period_start(time_ms, HOUR):
                break  # its hour takes it to the day later
            self._period(k, start).add(lo, hi, price, times)
            if k != MINUTE:
                self._gathered(k, start).level(price, times)

    def add_outside(self, trades: int) -> None:
        """``trades`` the symbol counted without their times (a store written before
        candles): in no candle, but accounted for. O(1)."""
        self.outside += trades
        self.over_at = self.quiet_until = -1

    def add_days(self, days: Iterable[Landing]) -> None:
        """The UTC days of an archive file the symbol has just counted (merged whole, as
        (price, count) pairs: no trade's time is known, only each day's), made ready by
        :func:`landings` before the lock. A day whose every trade came from the file is a
        settled row at once, handed to the next harvest; a partial one (its other trades
        counted live or over REST) is folded, levels and all, into the open day. Their
        trades are in day candles alone (:attr:`history`): minutes and hours begin where
        trades were counted one by one. A whole day the book holds trades of already (never,
        while each id is counted once), and a day that meets the :attr:`sealed` periods
        (which of its trades fall in them is not known), are counted :attr:`outside`.
        O(days + levels of the partial ones)."""
        self.drain()
        self.over_at = self.quiet_until = -1
        for day, period in days:
            placed = 0 <= day.open_id <= day.close_id < LIMIT and not (
                day.start < self.sealed[1] and self.sealed[0] < day.start + _LENGTHS[DAY]
            )  # a day meeting the sealed periods: which of its trades fall in them is unknown
            if not (placed and 0 <= day.first_ms <= day.last_ms < LIMIT):
                self.outside += day.trades
                continue
            start = day.start
            if period is None:
                minute = self.minute
                today = None if minute is None else period_start(minute.start, DAY)
                if (
                    start in self.open[DAY]
                    or start in self.landed
                    or start in self.recent[DAY]
                    or (start == today)
                ):
                    self.outside += day.trades
                    continue
                self.landed[start] = day.row()
                self.settled[DAY] += day.trades
            else:
                self._gathered(DAY, start).period(period)
                self._period(DAY, start).fold(period)
            self.history += day.trades
            if day.first_ms < self.first_ms or self.first_ms < 0:
                self.first_ms = day.first_ms
            if day.last_ms > self.latest_ms:
                self.latest_ms = day.last_ms

    def roll(self, trade_id: int, price: int, time_ms: int) -> None:
        """A trade of a later minute than the current one, as the per-trade path applies it
        (see :meth:`takes`): a new current minute takes it, and the one before is queued in
        :attr:`retiring`, retired (folded into its hour) by the next other use of
        the book, off the per-trade path. The same book as :meth:`add` once drained. O(1)."""
        minute = _Period(period_start(time_ms, MINUTE), _LENGTHS[MINUTE])
        minute.add(trade_id, trade_id, price, 1)
        minute.last_ms = time_ms
        self.retiring.append(self.minute)
        self.minute = minute

    def drain(self) -> None:
        """Retire the minutes :meth:`roll` queued, in order: what every other use of the
        book does first (a harvest that stores nothing calls it too). O(their levels)."""
        retiring = self.retiring
        if not retiring:
            return
        for minute in retiring:
            self._retire(minute)
            if minute.last_ms > self.latest_ms:
                self.latest_ms = minute.last_ms
        retiring.clear()
        self._enter(self.minute.start)

    def _retire(self, minute: Any) -> None:
        """The current minute is over: fold it into its hour (and into its day too where
        the hour is not :attr:`unfolded`), keep it open. O(L)."""
        self._enter(minute.start)
        self.open[MINUTE][minute.start] = minute
        self.total += minute.count
        self.dirty[MINUTE].add(minute.start)  # (over_at: _period below sets it)
        hour = period_start(minute.start, HOUR)
        self._gathered(HOUR, hour).period(minute)  # (compacts the minute: its fold takes one run)
        self._period(HOUR, hour).fold(minute)
        if hour != self.unfolded:
            day = period_start(minute.start, DAY)
            self._gathered(DAY, day).period(minute)
            self._period(DAY, day).fold(minute)

    def _enter(self, start: int) -> None:
        """The current minute is (or a minute retiring was) the one at ``start``: if its hour
        is not the :attr:`unfolded` one, that hour is over for the live stream and is folded
        into its day now, whole, and the new hour becomes the unfolded one. So a day takes
        each hour's levels once (24 merges a day, not 1,440, and at most as many levels as
        the hour's minutes together: fewer where prices recur), and a minute's roll stores
        its levels in its hour alone. O(1), or O(L) for the L levels of the hour folded."""
        hour = period_start(start, HOUR)
        unfolded = self.unfolded
        if unfolded == hour:
            return
        if unfolded is not None:
            period = self.open[HOUR].get(unfolded)
            if period is not None and period.count:
                day = period_start(unfolded, DAY)
                self._gathered(DAY, day).period(period)
                self._period(DAY, day).fold(period)
        # an hour the book holds already has had its minutes folded straight into its day
        self.unfolded = None if hour in self.open[HOUR] else hour

    def _gathered(self, k: int, start: int) -> Gathered:
        """The levels the open hour or day (``k``) at ``start`` gained since the last
        harvest (made if none yet). O(1)."""
        gathered = self.pending[k].get(start)
        if gathered is None:
            gathered = self.pending[k][start] = Gathered()
        return gathered

    def _period(self, k: int, start: int) -> Any:
        """The open period of interval ``k`` at ``start`` (made if new), marked changed."""
        periods = self.open[k]
        period = periods.get(start)
        if period is None:
            period = periods[start] = _Period(start, _LENGTHS[k])
        self.dirty[k].add(start)
        self.over_at = self.quiet_until = -1
        return period

    def wake(self) -> None:
        """A ticker was read for the symbol (:meth:`TradeIds.sweep`): it may have found it no
        longer quiet, so the periods where counting began, which a harvest leaves open
        without looking at them again while it is (:meth:`harvest`), may settle. The next
        harvest is a full one. O(1)."""
        self.over_at = self.quiet_until = -1

    def takes(self, trade_id: int, time_ms: int) -> int:
        """What the per-trade path does with a trade at ``time_ms`` (its compiled twin checks
        the same): 1 if it goes into the current minute, 2 if it opens a later one
        (:meth:`roll`), 0 if it goes through :meth:`add`'s general case (no current minute,
        a late trade, ids or times beyond :data:`LIMIT`). O(1)."""
        minute = self.minute
        if minute is None or time_ms < minute.lo_ms:
            return 0
        if time_ms - minute.start < 60_000:
            return 1
        return 2 if 0 <= trade_id < LIMIT and time_ms < LIMIT else 0

    @property
    def latest(self) -> int:
        """The latest trade time counted (-1: none): the per-trade path keeps the current
        minute's. O(1)."""
        minute = self.minute
        if minute is None or minute.last_ms <= self.latest_ms:
            return self.latest_ms
        return int(minute.last_ms)

    # -- settling and snapshots -----------------------------------------------------------------

    def start_history(self) -> None:
        """History before every trade counted is about to be imported: it lies at or before
        the earliest trade time counted. O(1)."""
        self.front_top_ms = self.first_ms if self.first_ms >= 0 else None

    def _began(self, ids: TradeIds, start: int) -> bool:
        """Whether the period from ``start`` is where counting began, with the history
        below it not complete (it may still be extended below). O(1)."""
        return not ids.history_complete and ids.front is None and start <= self.first_ms

    def _can_land(self, ids: TradeIds, start: int, end: int, seal: bool = False) -> bool:
        """Whether a trade of ``start..end`` (ms, end excluded) may still be counted; with
        ``seal``, history below where counting began is not waited for. O(g)."""
        if self.latest < end:
            return True  # not over
        minute = self.minute
        if minute is not None and start <= minute.start < end:
            return True  # the current minute is in it, not folded in yet (older than the
            # latest trade: an archive's days went past it)
        if not seal and self._began(ids, start):
            return True  # counting began in it: the range may still reach below (so may a
            # quiet symbol's: harvest keeps those periods open before it asks here)
        front = ids.front
        if front is not None and _overlaps(front.after_ms, self.front_top_ms, start, end):
            return True
        return any(_overlaps(g.after_ms, g.before_ms, start, end) for g in ids.gaps)

    def harvest(
        self, ids: TradeIds, keep_ms: Sequence[int | None], seal: bool = False
    ) -> CandleState | bytes | None:
        """Settle every open period no trade can land in any more, drop those older than
        ``keep_ms[k]`` before the latest trade (None: keep forever), and hand over what
        changed since the last harvest: the periods settled (:class:`Settled`, their rows
        made by :func:`finish`) and what is stored of the open periods changed, the current
        minute included (:meth:`_delta`). None if nothing did.

        Most harvests find nothing but the current minute changed, and no retention bound to
        hand over: then, while the minute is stored whole, they hand over its value alone
        (:meth:`PyPeriod.current_value`, with the latest trade time), the one put a snapshot
        makes of the symbol's candles, and read nothing else of the book but the few
        numbers that tell it so.

        ``seal``: no history of the symbol is to be imported, so the periods where counting
        began settle like any other (their rows stay not final: their earlier trades were
        never counted) rather than keep their levels for good; should history come after
        all, its trades of those (:attr:`sealed`: they are nested, all holding the first
        trade counted) are counted outside any candle, and the rest land as usual. A quiet
        symbol's (:attr:`TradeIds.quiet`) are the exception: a ticker or a stream may still
        report its earlier trades, which are its own and counted, so they wait, like those
        of a symbol whose history is to come, until a ticker finds none below its range.

        The retention bounds go to the store (which deletes below them) only when one has
        passed a period's open time since they last did (:attr:`expiry_at`), the book drops
        a period below them or imported days are handed over; else none (a minute's roll
        costs the store no search).

        O(p + L) for L the levels of the minutes stored whole (at most
        :data:`MINUTE_WHOLE` each) and gained by the others."""
        minute = self.minute
        if minute is not None and minute is self.taken:  # no roll since (nothing retiring)
            latest = minute.last_ms  # self.latest, inlined (every symbol that traded comes here)
            if self.latest_ms > latest:
                latest = self.latest_ms
            if latest < self.quiet_until:  # nothing else changed, no bound to hand over
                if self.recent_held:
                    self._drop_recent()
                count = minute.count
                if count == self.taken_count:
                    return None
                value = minute.current_value(latest, MINUTE_WHOLE)
                if value is not None:  # (None: the minute is stored as deltas)
                    self.taken_count = count
                    return value  # type: ignore[no-any-return]
        if self.retiring:
            self.drain()
        minute = self.minute
        latest = self.latest
        if latest < self.over_at:  # the usual harvest: nothing to settle, expire or store but
            if self.recent_held:  # the current minute
                self._drop_recent()
            state = self._quiet(latest, keep_ms)
            self.quiet_until = min(self.over_at, self.expiry_at)
            return state
        periods: tuple[list[tuple[int, CandleRow | None, Any]], ...] = ([], [], [])
        expired, at = _expiry(latest, keep_ms, self.first_ms)
        # handed over when a bound has passed a period's open time since they last were,
        # or the book drops a period below them, or rows of imported days may lie below
        handed = latest >= self.expiry_at or bool(self.landed)
        over_at = LIMIT  # the earliest end of a period left open
        for k, (_, length) in enumerate(INTERVALS):
            self.recent[k].clear()  # written by the snapshot that took them
            bound = expired[k]  # the store's: the book drops what the store deletes
            out, opened, dirty = periods[k], self.open[k], self.dirty[k]
            if k == DAY and self.landed:  # imported whole days: rows already
                for start in sorted(self.landed):
                    out.append((start, self.landed[start], None))
                self.recent[DAY].update(self.landed)
                self.landed.clear()
            unfolded = self.unfolded if k == HOUR else None
            for start in sorted(opened):
                end = start + length
                if end > latest or start == unfolded:  # not over (or its day still to take
                    over_at = min(over_at, end)  # it): neither past retention nor settled
                    continue
                if bound is not None and start < bound:
                    self.expired[k] += opened.pop(start).count  # its stored record goes too
                    self._forget(k, start)
                    handed = True
                    continue
                if seal and ids.quiet and self._began(ids, start):
                    continue  # a quiet symbol's first: open till a ticker, which wakes the book
                if self._can_land(ids, start, end, seal):
                    over_at = min(over_at, end)  # over, still open: the next harvest looks again
                    continue
                if seal and self._began(ids, start):
                    low = start if self.sealed[0] < 0 else min(self.sealed[0], start)
                    self.sealed = (low, max(self.sealed[1], start + length))
                period = opened.pop(start)  # no trade can land in it: read-only from now on
                self.settled[k] += period.count
                self.recent[k][start] = period
                out.append((start, None, Settled(period, (k, start) in self.seq)))
                self._forget(k, start)
            for start in sorted(dirty):
                out.append((start, None, self._delta(k, opened[start])))
            dirty.clear()
        self.over_at = over_at
        self.recent_held = any(self.recent)
        if handed:
            self.expiry_at = at
        self.quiet_until = min(over_at, self.expiry_at)
        return self._hand_over(periods, expired if handed else _NONE_EXPIRED)

    def _drop_recent(self) -> None:
        """Forget the periods the last harvest settled: its snapshot has written them."""
        for settled in self.recent:
            settled.clear()
        self.recent_held = False

    def _quiet(self, latest: int, keep_ms: Sequence[int | None]) -> CandleState | None:
        """:meth:`harvest` when nothing but the current minute can have changed (counts()
        included: see :attr:`over_at`): what is stored of it if it did, else None. It
        reads no other part of the book, for one of a cold symbol costs a miss.

        Retention moves with the latest trade all the same, but the store is handed the
        bounds only once one has passed a period's open time since they were last handed
        over (:attr:`expiry_at`, :func:`_expiry`): below them there is nothing more to
        delete till then, so a snapshot inside a minute costs the store no search."""
        taken = self._take_minute()
        if taken is None:
            return None
        if latest < self.expiry_at:
            expired = _NO_EXPIRY
        else:
            expired, self.expiry_at = _expiry(latest, keep_ms, self.first_ms)
            if expired == _NO_EXPIRY:  # none passed a stored period: quiet all the same
                expired = _NO_EXPIRY
        periods: tuple[list[tuple[int, CandleRow | None, Any]], ...] = ([taken], [], [])
        return _new_state((self.first_ms, latest, self.front_top_ms, taken[0], periods,
                           expired, self.harvested_counts, (), self.sealed,
                           self.unfolded))  # fmt: skip

    def _take_minute(self) -> tuple[int, None, Any] | None:
        """The current minute's entry (start, None, what :meth:`_delta` stores of it) if it
        changed since the last harvest, noted as handed over; else None."""
        minute = self.minute
        if minute is None:
            return None
        count = minute.count
        if minute is self.taken and count == self.taken_count:
            return None
        self.taken, self.taken_count = minute, count
        return (minute.start, None, self._delta(MINUTE, minute))

    def _delta(self, k: int, period: Any) -> Any:
        """What to store of the open ``period`` of interval ``k``, changed since the last
        harvest: its next :class:`Delta`, or a minute whole (its record,
        :meth:`PyPeriod.record`, made here while its levels are at hand).

        An hour or a day: the levels of the minutes retired into it and of its late trades
        (:attr:`pending`). A minute is stored whole while it holds at most
        :data:`MINUTE_WHOLE` levels (a put of a few levels costs less than a header and a
        delta); past that, its first delta holds it whole and it keeps its gains, each later
        delta the levels its trades added since (``take_gains``), so a flood's minute is not
        written whole at every snapshot. O(L) for a minute stored whole or turning to deltas,
        else O(g + d log d) for g gains at d prices."""
        start = period.start
        seq = self.seq.get((k, start))
        if k != MINUTE:
            gathered = self.pending[k].pop(start, None)
            chunks = [] if gathered is None else [bytes(gathered.data)]
        elif seq is not None:
            chunks = [period.take_gains()]
        else:
            record = period.record(MINUTE_WHOLE)
            if type(record) is bytes:
                return record
            period.keep_gains()  # its gains from here on: its later deltas
            chunks = [record]  # its levels, gathered without compacting the live minute
        seq = seq or 0
        self.seq[(k, start)] = seq + 1
        return _new_delta((period_fields(period), seq, chunks))

    def _hand_over(
        self,
        periods: tuple[list[tuple[int, CandleRow | None, Any]], ...],
        expired: tuple[int | None, ...],
    ) -> CandleState | None:
        """:meth:`harvest`'s end: the current minute if it changed, then the state to store,
        or None if nothing changed."""
        taken = self._take_minute()
        if taken is not None:
            periods[MINUTE].append(taken)
        counts = self.counts()
        if not any(periods) and counts == self.harvested_counts:
            return None
        self.harvested_counts = counts
        minute = self.minute
        current = None if minute is None else minute.start
        return _new_state((self.first_ms, self.latest, self.front_top_ms, current, periods,
                           expired, counts, (), self.sealed, self.unfolded))  # fmt: skip

    def _forget(self, k: int, start: int) -> None:
        """An open period of interval ``k`` is gone (settled, or past retention)."""
        self.dirty[k].discard(start)
        self.pending[k].pop(start, None)
        self.seq.pop((k, start), None)

    def counts(self) -> tuple[int, ...]:
        """(total, outside, settled per interval, expired per interval, history): stored
        with the bounds. O(1), once the minutes rolled are retired."""
        self.drain()
        return (self.total, self.outside, *self.settled, *self.expired, self.history)

    @classmethod
    def restore(cls, state: CandleState) -> Candles:
        """The book a stored state describes (open periods only; settled rows stay in the
        store). O(L)."""
        book = cls()
        book.first_ms, book.latest_ms, book.front_top_ms = (
            state.first_ms, state.latest_ms, state.front_top_ms,
        )  # fmt: skip
        book.total, book.outside = state.counts[0], state.counts[1]
        book.settled, book.expired = list(state.counts[2:5]), list(state.counts[5:8])
        book.history = state.counts[8]
        book.harvested_counts = tuple(state.counts)
        book.sealed = state.sealed
        book.unfolded = state.unfolded
        book.seq = {(k, start): seq for k, start, seq in state.seqs}
        for k, entries in enumerate(state.periods):
            for start, row, period in entries:
                if row is not None or period is None:
                    continue
                if k == MINUTE and (k, start) in book.seq:  # stored as deltas: it goes on so
                    period.keep_gains()
                if k == MINUTE and start == state.current:
                    book.minute = period
                    period.lo_ms = max(start, book.first_ms)
                    book.taken, book.taken_count = period, period.count
                else:
                    book.open[k][start] = period
        return book

    # -- reading --------------------------------------------------------------------------------

    def snapshot(self, k: int, start: int, end: int) -> list[Any]:
        """Of interval ``k``, the periods settled and not yet in the store (read-only, so
        shared) and copies of the open ones (the current minute folded in, and into a day
        the :attr:`unfolded` hour) starting in
        ``start..end`` (end excluded), by start: what a reader takes under the lock, to
        compute their medians after it. O(p + L)."""
        self.drain()
        settled = {s: p for s, p in self.recent[k].items() if start <= s < end}
        if k == DAY:
            settled.update((s, r) for s, r in self.landed.items() if start <= s < end)
        opened = {s: p for s, p in self.open[k].items() if start <= s < end}
        copies = {s: p.copy() for s, p in opened.items()}
        unfolded = self.unfolded
        hour = self.open[HOUR].get(unfolded) if k == DAY and unfolded is not None else None
        for period in (hour, self.minute):  # in no period of interval k yet
            if period is None or not period.count:
                continue
            s = period_start(period.start, k)
            if start <= s < end:
                if s in copies:
                    copies[s].fold(period)
                else:
                    copies[s] = period.copy() if k == MINUTE else _folded(period, k)
        copies.update(settled)
        return [copies[s] for s in sorted(copies)]

    def canonical(self) -> tuple[Any, ...]:
        """Everything the book holds as plain values (periods as :func:`period_key`): what
        tests compare, whichever twin holds the periods. O(L log L)."""
        self.drain()
        minute = None if self.minute is None else period_key(self.minute)
        opened = tuple(tuple(period_key(p) for _, p in sorted(o.items())) for o in self.open)
        recent = tuple(tuple(_row_key(p) for _, p in sorted(r.items())) for r in self.recent)
        landed = tuple(sorted(self.landed.items()))
        return (minute, opened, recent, landed, self.first_ms, self.latest, self.front_top_ms,
                self.counts(), self.sealed, self.unfolded)  # fmt: skip

    def _check(self, counted: int | None = None, periods: bool = True) -> None:
        """Assert the book's invariants: of every interval, the trades of its settled rows,
        its periods dropped past retention and its open periods (for days, the
        :attr:`unfolded` hour too) add up to :attr:`total` (the trades in candles but the
        current minute's), plus :attr:`history` for days; no hour but the current minute's
        is left unfolded; with
        ``counted`` (the symbol's count), those, the current minute's, the archives' and the
        trades outside any candle add up to it; and, with ``periods``, every open period's own
        invariants (:meth:`PyPeriod._check`, the current minute's too; a test that wrote a
        period's fields out of step with its levels leaves them out). O(p + L) for L their
        levels; for tests."""
        self.drain()
        if periods:
            for period in [*(p for opened in self.open for p in opened.values()), self.minute]:
                if period is not None:
                    period._check()
        current = self.minute.count if self.minute is not None else 0
        unfolded = self.open[HOUR].get(self.unfolded) if self.unfolded is not None else None
        for k in range(len(INTERVALS)):
            held = sum(p.count for p in self.open[k].values())
            if k == DAY and unfolded is not None:
                held += unfolded.count  # in no day yet
            want = self.total + (self.history if k == DAY else 0)
            assert self.settled[k] + self.expired[k] + held == want, (
                f"{INTERVALS[k][0]}: candles hold {self.settled[k]} + {self.expired[k]} + "
                f"{held} trades, not {want}"
            )
        if counted is not None:
            assert self.total + current + self.outside + self.history == counted, (
                "candles and count differ"
            )
        if self.minute is not None:
            assert self.minute.start not in self.open[MINUTE], "the current minute retired twice"
            hour = period_start(self.minute.start, HOUR)
            assert self.unfolded in (None, hour), "a past hour not folded into its day"
        gate = min(self.over_at, self.expiry_at)
        assert self.quiet_until == gate, "a quiet harvest's gate out of date"


def _row_key(entry: Any) -> Any:
    """A settled entry as plain values: a row as it is, a period as :func:`period_key`."""
    return entry if isinstance(entry, CandleRow) else period_key(entry)


def row_of(entry: Any) -> CandleRow:
    """A settled or open entry's row (what :meth:`Candles.snapshot` gives: a row of an
    imported day, or a period whose median is then taken, O(L log L))."""
    return entry if isinstance(entry, CandleRow) else period_row(entry)


def _folded(part: Any, k: int) -> Any:
    """A new period of interval ``k`` holding ``part`` (a minute, or an hour of a day)."""
    period = _Period(period_start(part.start, k), _LENGTHS[k])
    period.fold(part)
    return period


def _overlaps(after_ms: int | None, before_ms: int | None, start: int, end: int) -> bool:
    """Whether times in ``after_ms..before_ms`` (None: unbounded) meet ``start..end - 1``."""
    return (after_ms is None or after_ms < end) and (before_ms is None or before_ms >= start)


def final_flags(rows: Sequence[CandleRow], origin: int | None) -> list[bool]:
    """For consecutive stored rows of one interval, ascending by time, whether each is final
    (see the module docstring): its count spans its ids, the row before ends just below it
    (or it opens at ``origin``, the symbol's first trade id) and the row after starts just
    above it (so the period has ended). O(rows)."""
    out = []
    for i, row in enumerate(rows):
        inside = row.trades == row.close_id - row.open_id + 1
        below = row.open_id == origin or (i > 0 and rows[i - 1].close_id == row.open_id - 1)
        above = i + 1 < len(rows) and rows[i + 1].open_id == row.close_id + 1
        out.append(inside and below and above)
    return out


def select_rows(
    stored: Iterable[CandleRow],
    memory: Iterable[CandleRow],
    origin: int | None,
    start: int | None,
    end: int | None,
    limit: int,
) -> list[tuple[CandleRow, bool]]:
    """What ``GET /{symbol}/candles`` answers, from the stored rows (with a neighbour beyond
    each end of the window) and memory's: rows with open time in ``start..end`` (end
    excluded; None: unbounded), the first ``limit`` from ``start`` when it is given, else
    the last ``limit`` before ``end``; each with whether it is final. O(r log r)."""
    rows = merge_rows(stored, memory)
    finals = final_flags(rows, origin)
    lo = start if start is not None else -1
    inside = [
        i for i, r in enumerate(rows) if lo <= r.open_time and (end is None or r.open_time < end)
    ]
    chosen = inside[:limit] if start is not None else inside[-limit:] if limit else []
    return [(rows[i], finals[i]) for i in chosen]


def merge_rows(stored: Iterable[CandleRow], memory: Iterable[CandleRow]) -> list[CandleRow]:
    """Rows of the store and of memory by open time, memory's taking precedence (it is the
    newer). O(r log r)."""
    by_start = {row.open_time: row for row in stored}
    by_start.update((row.open_time, row) for row in memory)
    return [by_start[s] for s in sorted(by_start)]
