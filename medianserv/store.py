"""The LMDB snapshot store: versioned encoding (pure) and save/load (I/O).

Layout (format version 7), six named databases in one LMDB environment:

* ``meta``: ``format`` -> ``b"7"``; ``saved_at`` -> ms since the epoch of the last snapshot;
  ``snapshots`` -> how many were written; ``listing`` -> the symbols last listed.
* ``symbols``: symbol (UTF-8) -> msgpack record: count, last trade id, price and time,
  trade-id history (first, last, gaps with their time bounds and edge prices, lost, quiet,
  the front of trade history still to import, the symbol's first trade id).
* ``batches``: ``len(symbol) | symbol | snapshot number | levels (8 bytes each,
  big-endian)`` -> levels compact (:func:`~medianserv.candles.compact_levels`), ascending: a
  symbol's levels are the sum of its batches, oldest first, a later count over an earlier
  one (:meth:`Store._put_levels` writes and merges them: a few items a symbol a snapshot).
* ``levels`` (formats 1-6): ``len(symbol) | symbol | price (8 bytes, big-endian)`` -> count
  (8 bytes, big-endian), a key a level. Read beneath the batches, never written: the first
  open for writing moves each symbol's into a batch numbered 0, below every snapshot's
  (:meth:`Store._fold_levels`), and empties it.
* ``candles``: ``len(symbol) | symbol |
  interval (1 byte: 1 minute, 2 hour, 3 day) | open time (8 bytes, big-endian)`` -> msgpack
  ``[0, open, high, low, close, count, twice the median, open id, close id]`` for a settled
  period; ``[1, open id, open price, close id, close price, high, low, count, levels]``
  for an open minute of a few levels, whole (its levels compact, as below; format 3 kept
  ``prices, counts`` there, 8 big-endian bytes a level, still read); ``[2,
  the same seven fields, deltas]`` for any other open period, whose levels are the sum of
  its deltas, each under the period's key and a 4-byte number -> its levels compact, as
  a msgpack bin (:func:`~medianserv.candles.compact_levels`: each price less the one before
  and its count, as varints, 2-4 bytes a level; what it gained between two snapshots: an
  hour's or a day's minutes retired, a large minute's new trades, so a snapshot writes
  what is new, not a large period whole again). A symbol's periods of one interval are one
  ascending cursor range.
* ``current``: what a snapshot rewrites for every symbol that traded, kept apart from the
  history in ``candles`` so that it fills a few dense pages and not two of ``candles``'
  pages a symbol: ``len(symbol) | symbol | 0`` -> msgpack ``[first_ms, latest_ms,
  front_top_ms, current minute, *counts, *sealed, unfolded hour]``
  (:class:`~medianserv.candles.Candles`' bounds and what its invariant adds up; the unfolded
  hour's levels are in its own deltas and not yet in its day's); ``len(symbol)
  | symbol | 1`` -> the current minute's open time and the latest trade time (8 bytes,
  big-endian, each; formats 3 and 4 had the open time alone) and its record as ``candles``
  stores a minute whole, while it is stored whole (a whole copy in ``candles`` at the same
  time is older; its deltas there are newer: a minute never turns back). A minute stored
  as deltas is in ``candles`` alone: its key here goes when it turns. Most snapshots of a
  symbol change nothing but its current minute and the latest trade time: they write this
  one value (:meth:`~medianserv.candles.Candles.harvest`), and the bounds' latest trade time
  is the later of the two.

A snapshot is one write transaction: after a crash the store holds the previous snapshot or
the new one, never a mix. Snapshots are incremental: only symbols and levels changed since the
previous one are written, and a level carries its full count, so a rewrite is idempotent.
The map grows (doubling) when full. Every symbol ever seen stays stored, listed or not.

Format 1 (gaps without times), format 2 (no ``current``: the candle bounds and every open
minute in ``candles``, itself added within format 2, so that a store without it reads as
one with no candles) and format 3 (the levels of a delta and of a whole minute as prices
and counts, 8 big-endian bytes each, which later formats still read) format 4 (no
latest trade time with the current minute) and format 5 (no unfolded hour: every retired
minute was folded straight into its day, which a book restored from it goes on doing until
its next hour) and format 6 (levels a key each, in ``levels``) are read, and upgraded to
format 7 in one transaction when the store is opened for writing, their levels folded into
batches in it: a store's levels then take 2-4 bytes each rather than a key each, and its
later restores read batches alone (``bench scale``'s 10^7 levels, written a key each:
folded in 6.9 s, then restored in 0.44 s against 4.7-5.3 s unfolded).
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import numpy as np

from .candles import (
    DELTAS,
    HOUR,
    INTERVALS,
    MINUTE,
    QUIET_HEAD,
    CandleRow,
    CandleState,
    Delta,
    compact_levels,
    expand_levels,
    minute_value,
    period_start,
    quiet,
    quiet_parts,
    record_period,
    restore_packed,
)
from .errors import MedianservError
from .symbols import Front, Gap, LevelArrays, LevelLog, SymbolState, TradeIds, compiled

_compiled_batch: Any
_compiled_expand: Any
_compiled_merge: Any
try:
    from . import _native as _compiled  # type: ignore[attr-defined]

    _compiled_batch = _compiled.candle_batch
    _compiled_expand = _compiled.expand_levels
    _compiled_merge = _compiled.merge_levels
except ImportError:  # built without a C compiler: the Python twin alone
    _compiled_batch = _compiled_expand = _compiled_merge = None

__all__ = [
    "FORMAT_VERSION",
    "Store",
    "StoreError",
    "candle_items",
    "decode_record",
    "encode_record",
    "level_key",
]

FORMAT_VERSION = 7
READABLE_FORMATS = (1, 2, 3, 4, 5, 6, 7)
INITIAL_MAP_SIZE = 64 << 20
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")


class StoreError(MedianservError):
    """The store cannot be used: unknown or newer format, or corrupt. Never reset silently."""


_Opt = int | None


class _RecordV1(msgspec.Struct, array_like=True):
    """The ``symbols`` value of format 1 (read, then upgraded)."""

    count: int
    last_trade_id: int
    last_price: int | None
    last_trade_time: int | None
    first: int | None
    last: int | None
    gaps: list[tuple[int, int]]
    lost: int
    quiet: bool


class _Record(msgspec.Struct, array_like=True):
    """The ``symbols`` value of formats 2 and 3. Kept apart from SymbolState on purpose:
    changing the in-memory class must not silently change what is on disk."""

    count: int
    last_trade_id: int
    last_price: int | None
    last_trade_time: int | None
    first: int | None  # TradeIds.lowest
    last: int | None  # TradeIds.highest
    gaps: list[tuple[int, int, _Opt, _Opt, _Opt, _Opt]]  # lo, hi, after/before ms, edge prices
    lost: int
    quiet: bool
    last_ms: int | None  # TradeIds.after_highest_ms
    last_id_price: int | None  # TradeIds.highest_price
    quiet_since_ms: int | None  # a quiet symbol: no trade of ours happened before this time
    front: tuple[int, int, _Opt, _Opt, _Opt, _Opt] | None  # TradeIds.front (a Front)
    origin: int | None  # the symbol's first trade id, once known
    first_ms: int | None  # TradeIds.lowest_after_ms


_encoder = msgspec.msgpack.Encoder()
_decoders: dict[int, msgspec.msgpack.Decoder[_RecordV1 | _Record]] = {
    1: msgspec.msgpack.Decoder(_RecordV1),
    2: msgspec.msgpack.Decoder(_Record),
    3: msgspec.msgpack.Decoder(_Record),  # format 3 moved candle bounds, not records
    4: msgspec.msgpack.Decoder(_Record),  # format 4 made deltas compact, not records
    5: msgspec.msgpack.Decoder(_Record),  # format 5 added the latest time to the minute
    6: msgspec.msgpack.Decoder(_Record),  # format 6 added the unfolded hour to the bounds
    7: msgspec.msgpack.Decoder(_Record),  # format 7 moved the levels to batches
}


def encode_record(state: SymbolState) -> bytes:
    """The ``symbols`` value of a state (levels are stored apart). Pure."""
    ids = state.ids
    return _encoder.encode(
        _Record(state.count, state.last_trade_id, state.last_price, state.last_trade_time,
                ids.lowest, ids.highest, list(ids.gaps), ids.lost, ids.quiet,
                ids.after_highest_ms, ids.highest_price, ids.quiet_since_ms, ids.front,
                ids.origin, ids.lowest_after_ms)
    )  # fmt: skip


def decode_record(symbol: str, data: bytes, version: int = FORMAT_VERSION) -> SymbolState:
    """A state without levels from a ``symbols`` value of format ``version``. Pure;
    StoreError if malformed."""
    try:
        r = _decoders[version].decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise StoreError(f"corrupt record for {symbol!r}: {exc}") from exc
    ids = TradeIds(r.first, r.last, [Gap(*g) for g in r.gaps], r.lost, r.quiet)
    if isinstance(r, _Record):
        ids.after_highest_ms, ids.highest_price = r.last_ms, r.last_id_price
        ids.quiet_since_ms = r.quiet_since_ms
        ids.front = None if r.front is None else Front(*r.front)
        ids.origin, ids.lowest_after_ms = r.origin, r.first_ms
    return SymbolState(symbol, r.count, r.last_trade_id, r.last_price, r.last_trade_time, ids, [])


@functools.lru_cache(maxsize=16_384)
def symbol_prefix(symbol: str) -> bytes:
    """The key prefix of ``symbol`` in every database: its length, then its name. Cached
    (a snapshot asks it of every symbol written, once per database). Pure."""
    raw = symbol.encode()
    if not 0 < len(raw) < 256:
        raise StoreError(f"symbol name too long to store: {symbol[:40]!r}")
    return bytes((len(raw),)) + raw


def _native(buf: bytearray, dtype: Any) -> np.ndarray[Any, Any]:
    """The big-endian 8-byte integers in ``buf`` as a native array over the same memory,
    turned in place where the machine is little-endian: no second copy of ten million
    levels. O(n)."""
    values = np.frombuffer(buf, dtype)
    if sys.byteorder == "little":
        values.byteswap(inplace=True)
    return values


def candle_head(symbol: str, k: int) -> bytes:
    """What every ``candles`` key of ``symbol``'s interval ``k`` begins with. Pure."""
    return symbol_prefix(symbol) + bytes((k + 1,))


def candle_key(symbol: str, k: int, start: int) -> bytes:
    """The ``candles`` key of interval ``k``'s period at ``start`` (ms). Pure."""
    return candle_head(symbol, k) + _U64.pack(max(0, start))


_Items = list[tuple[bytes, bytes]]

#: Symbols the compiled encoder takes in one call (:func:`candle_items`). One call keeps the
#: interpreter throughout: after a flood's minute rolled, a snapshot encodes every symbol's
#: hour delta (15 M levels for 2,292 symbols at 250,000 trades/s; at an hour's end, its
#: day's too), a large part of a second in which no reader would answer a ping. Between
#: two calls, a thread waiting for the interpreter gets it: 16 symbols of that snapshot
#: take about 2 ms, twice the service's switch interval, and a quiet snapshot's 16 symbols a
#: few microseconds.
BATCH_SLICE = 16


def candle_items(batch: list[SymbolState]) -> tuple[_Items, list[bytes], _Items]:
    """The writes of ``batch``'s candles: (the ``current`` database's puts, its deletes, the
    ``candles`` database's puts), each in order (a later put of a period supersedes an
    earlier one): each symbol's by :func:`state_items`. Where the compiled twins run, the
    compiled ``candle_batch`` encodes the whole batch into the three lists at once (no
    lists, tuple and call a symbol), :data:`BATCH_SLICE` symbols a call, and hands a state
    it does not take to :func:`symbol_items`. O(periods + their levels)."""
    if compiled() and _compiled_batch is not None:
        current: _Items = []
        gone: list[bytes] = []
        items: _Items = []
        for i in range(0, len(batch), BATCH_SLICE):  # the interpreter may switch threads here
            part = _compiled_batch(batch[i : i + BATCH_SLICE], symbol_items)
            current += part[0]
            gone += part[1]
            items += part[2]
        return current, gone, items
    return py_candle_items(batch)


def _delta_value(delta: Delta) -> bytes:
    """A delta's levels as stored: its chunks joined and made compact, or its one chunk as
    it is where that is compact already (a minute's gains). O(levels)."""
    chunks: Any = delta.chunks
    if len(chunks) == 1 and type(chunks[0]) is bytes:
        return chunks[0]
    return compact_levels(b"".join(p for p, _ in chunks), b"".join(c for _, c in chunks))


def py_candle_items(batch: list[SymbolState]) -> tuple[_Items, list[bytes], _Items]:
    """:func:`candle_items` in Python: the pure twin of the compiled ``candle_batch``."""
    current: _Items = []
    gone: list[bytes] = []
    items: _Items = []
    for state in batch:
        if state.candles is not None:
            three = symbol_items(state)
            current += three[0]
            gone += three[1]
            items += three[2]
    return current, gone, items


def symbol_items(state: SymbolState) -> tuple[_Items, list[bytes], _Items]:
    """The candle writes of one symbol's harvest (it has candles): :func:`state_items` under
    its :func:`symbol_prefix` (``StoreError`` for a name that cannot be stored)."""
    assert state.candles is not None
    return state_items(symbol_prefix(state.symbol), state.candles)


def state_items(prefix: bytes, c: CandleState | bytes) -> tuple[_Items, list[bytes], _Items]:
    """The writes of one symbol's harvest ``c`` (``prefix``: its :func:`symbol_prefix`):
    (the ``current`` database's puts: the book's bounds, and its current minute while it is
    stored whole; its deletes: that minute's key, in the harvest where it turns to deltas
    (its first delta); the ``candles`` database's puts: every other period, in order). A
    minute stored whole comes as its record (:meth:`candles.PyPeriod.record`); any other
    entry is a :class:`StoreError`. A quiet harvest's value (:func:`candles.quiet_parts`) is
    the current minute's put alone. Pure; the compiled ``_native.candle_batch`` makes the
    same bytes within a batch (and hands what it does not take, a value out of range, to
    this twin). O(periods + levels)."""
    if isinstance(c, bytes):
        if len(c) <= QUIET_HEAD.size:
            raise StoreError("not a current minute's value")
        return [(prefix + b"\x01", c)], [], []
    encode = _encoder.encode
    current = [(prefix + b"\0", encode([c.first_ms, c.latest_ms, c.front_top_ms, c.current,
                                        *c.counts, *c.sealed, c.unfolded]))]  # fmt: skip
    gone: list[bytes] = []
    items: _Items = []
    for k, entries in enumerate(c.periods):
        head = prefix + bytes((k + 1,))
        for start, row, period in entries:
            key = head + _U64.pack(start)
            now = k == MINUTE and row is None and start == c.current
            if row is not None:
                items.append((key, encode([0, *row[1:]])))
            elif isinstance(period, Delta):
                items.append((key, encode([2, *period.fields, period.seq + 1])))
                items.append((key + _U32.pack(period.seq), encode(_delta_value(period))))
                if now and not period.seq:  # turned to deltas: no longer whole in current
                    gone.append(prefix + b"\x01")
            elif type(period) is bytes:  # an open minute of a few levels: its record
                value = period
                if now:
                    current.append((prefix + b"\x01", minute_value(start, c.latest_ms, value)))
                else:
                    items.append((key, value))
            else:
                raise StoreError(f"not a candle entry: {type(period).__name__}")
    return current, gone, items


def _decode_candle(symbol: str, k: int, start: int, value: bytes) -> CandleRow | Any:
    """A stored period: a CandleRow (settled) or an open period. StoreError if corrupt."""
    try:
        record = msgspec.msgpack.decode(value)
        if record[0] == 0 and len(record) == 9:
            return CandleRow(start, *(int(x) for x in record[1:]))
        if record[0] == 1:  # an open minute whole (its levels compact, or as format 3's)
            return record_period(start, INTERVALS[k][1], record, _expanded)
    except (msgspec.DecodeError, ValueError, TypeError, IndexError) as exc:
        raise StoreError(f"{symbol}: corrupt candle at {start}: {exc}") from exc
    raise StoreError(f"{symbol}: corrupt candle at {start}")


def _delta_levels(value: bytes) -> tuple[bytes, bytes]:
    """A stored delta's levels, (prices, counts) 8-byte big-endian: its compact levels
    (format 4, :func:`~medianserv.candles.compact_levels`), or the two lists as they were
    (formats 2 and 3). ``msgspec`` errors or ``ValueError`` if corrupt. O(n)."""
    levels = msgspec.msgpack.decode(value, type=bytes | tuple[bytes, bytes])
    return levels if isinstance(levels, tuple) else _expanded(levels)


def _expanded(data: bytes) -> tuple[bytes, bytes]:
    """:func:`~medianserv.candles.expand_levels`, compiled where the twins are. O(n)."""
    if compiled() and _compiled_expand is not None:
        return _compiled_expand(data)  # type: ignore[no-any-return]
    return expand_levels(data)


def _delete_range(cursor: Any, first: bytes, until: bytes) -> None:
    """Delete the keys from ``first`` up to ``until`` (excluded). O(deleted + log n)."""
    if cursor.set_range(first):
        while bytes(cursor.key()) < until:
            if not cursor.delete():
                break


def level_key(symbol: str, price: int) -> bytes:
    """The ``levels`` key of one price level (formats 1-6). Pure."""
    return symbol_prefix(symbol) + _U64.pack(price)


_Arrays = tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]


def latest_levels(parts: Sequence[_Arrays]) -> _Arrays:
    """The levels of ``parts`` (each ``(prices, counts)``, uint64 and int64 arrays, a price
    at most once a part), older first, as one part ascending by price, each price at its
    count in the latest part that holds it: what writing them in order over one another
    leaves. O(n log n) for n levels in all (O(n) for one part already ascending). Pure."""
    parts = [part for part in parts if len(part[0])]
    if not parts:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    if len(parts) == 1:
        prices, counts = parts[0]
        if len(prices) < 2 or bool(np.all(prices[1:] > prices[:-1])):
            return prices.astype(np.uint64, copy=False), counts.astype(np.int64, copy=False)
    prices = np.concatenate([p.astype(np.uint64, copy=False) for p, _ in parts])
    counts = np.concatenate([c.astype(np.int64, copy=False) for _, c in parts])
    order = np.argsort(prices, kind="stable")  # a price's entries stay oldest first
    prices, counts = prices[order], counts[order]
    last = np.ones(len(prices), dtype=bool)
    last[:-1] = prices[1:] != prices[:-1]
    return prices[last], counts[last]


def _levels_in(value: bytes) -> int:
    """How many levels a ``batches`` value holds as it says (two varints a level: the bytes
    that end one, their high bit clear, halved); a value that is not compact levels at all
    is refused where it is read. O(n), in numpy."""
    ends = len(value) - int(np.count_nonzero(np.frombuffer(value, np.uint8) & 0x80))
    return ends // 2 if ends % 2 == 0 else -1


def batch_key(symbol: str, seq: int, levels: int) -> bytes:
    """The ``batches`` key of a symbol's batch of levels: its prefix, the number of the
    snapshot that wrote it, and how many levels it holds (8 bytes each, big-endian), so that
    a symbol's batches are one cursor range, oldest first, and their sizes are read from
    the keys alone. Pure."""
    return symbol_prefix(symbol) + _U64.pack(seq) + _U64.pack(levels)


def _big_endian_pair(
    prices: np.ndarray[Any, Any], counts: np.ndarray[Any, Any]
) -> tuple[bytes, bytes]:
    return prices.astype(">u8").tobytes(), counts.astype(">u8").tobytes()


def _native_pair(prices: bytes | bytearray, counts: bytes | bytearray) -> _Arrays:
    """8-byte big-endian prices and counts as native uint64 and int64 arrays. O(n)."""
    return (np.frombuffer(prices, ">u8").astype(np.uint64),
            np.frombuffer(counts, ">u8").astype(np.int64))  # fmt: skip


def encode_batch(prices: np.ndarray[Any, Any], counts: np.ndarray[Any, Any]) -> bytes:
    """Levels ascending by price as a ``batches`` value: compact
    (:func:`~medianserv.candles.compact_levels`, 2-4 bytes a level). O(n). Pure."""
    return compact_levels(*_big_endian_pair(prices, counts))


def decode_batch(value: bytes) -> _Arrays:
    """A ``batches`` value's levels as native arrays, checked (:func:`_ascending_part`);
    ``ValueError`` if corrupt. O(n). Pure."""
    return _ascending_part(*_native_pair(*_expanded(value)))


def state_levels(levels: Any) -> Iterator[tuple[bytes, bytes]]:
    """A state's levels as native uint64 prices and int64 counts (bytes), each list
    ascending, older first: a harvest's log (each record sorted), whole arrays, or a full
    state's pairs. O(n log n)."""
    if isinstance(levels, LevelLog):
        for entry in levels.entries:
            yield entry.sorted_bytes()
    elif isinstance(levels, LevelArrays):
        yield levels.prices.astype(np.uint64).tobytes(), levels.counts.astype(np.int64).tobytes()
    else:
        pairs = sorted(levels)
        yield (np.array([p for p, _ in pairs], np.uint64).tobytes(),
               np.array([c for _, c in pairs], np.int64).tobytes())  # fmt: skip


def _ascending_part(prices: np.ndarray[Any, Any], counts: np.ndarray[Any, Any]) -> _Arrays:
    """The part as it is if its prices strictly ascend and its counts are positive (what a
    batch holds), else ``ValueError``. O(n)."""
    if (len(prices) > 1 and not bool(np.all(prices[1:] > prices[:-1]))) or bool(
        np.any(counts <= 0)
    ):
        raise ValueError("levels not strictly ascending, or a count not positive")
    return prices, counts


def py_merge_levels(older: bytes, newer: bytes, counts: bytes | None = None) -> tuple[bytes, int]:
    """Two lists of levels as one, compact (:func:`encode_batch`), and how many: ``older``
    compact, ``newer`` compact too or (with ``counts``) native uint64 prices and ``counts``
    native int64, each strictly ascending with positive counts (``ValueError`` otherwise); a
    price in both at the newer count. What a symbol's batches are merged with (the pure twin
    of ``_native.merge_levels``, which reads and writes each level once, the interpreter
    held throughout). O(n log n) here, O(n) compiled."""
    parts = [_ascending_part(*_native_pair(*expand_levels(data)))
             for data in ((older,) if counts is not None else (older, newer))]  # fmt: skip
    if counts is not None:
        if len(newer) != len(counts) or len(newer) % 8:
            raise ValueError("merge_levels: prices and counts of 8 bytes each")
        parts.append(
            _ascending_part(np.frombuffer(newer, np.uint64), np.frombuffer(counts, np.int64))
        )
    prices, merged = latest_levels(parts)
    return encode_batch(prices, merged), len(prices)


def merge_levels(older: bytes, newer: bytes, counts: bytes | None = None) -> tuple[bytes, int]:
    """:func:`py_merge_levels`, compiled where the twins are."""
    if compiled() and _compiled_merge is not None:
        if counts is None:
            return _compiled_merge(older, newer)  # type: ignore[no-any-return]
        return _compiled_merge(older, newer, counts)  # type: ignore[no-any-return]
    return py_merge_levels(older, newer, counts)


_LMDB_MAGIC = 0xBEEFC0DE
_META = struct.Struct("<QHHI II Q Q I 44x 48x Q Q")  # page header, meta head, free db, main db


def check_lmdb_file(data_file: Path) -> None:
    """Refuse a data file shorter than LMDB's own meta pages say it is: mapping one would
    crash the process (SIGBUS) on the first read past its end. Reads the two meta pages of
    LMDB's file format (page header, magic, version, map size, free db with the page size in
    its first field, main db, last page, transaction id). O(1)."""
    if not data_file.exists():
        return
    size = data_file.stat().st_size
    with data_file.open("rb") as f:
        head = f.read(_META.size)
        if len(head) < _META.size:
            raise StoreError(f"{data_file} is truncated ({size} bytes)")
        fields = _META.unpack(head)
        magic, psize = fields[4], fields[8]
        if magic != _LMDB_MAGIC or psize < 512 or psize & (psize - 1):
            raise StoreError(f"{data_file} is not an LMDB data file")
        metas = [fields]
        f.seek(psize)
        second = f.read(_META.size)
        if len(second) == _META.size:
            metas.append(_META.unpack(second))
    newest = max(metas, key=lambda m: m[10] if m[4] == _LMDB_MAGIC else -1)
    if size < (newest[9] + 1) * psize:
        raise StoreError(
            f"{data_file} is truncated: {size} bytes, its last page ends at "
            f"{(newest[9] + 1) * psize}"
        )


def _compact_copy(path: Path) -> Path:
    """Where :meth:`Store.compact` writes the compacted copy of the store at ``path``."""
    return path.with_name(path.name + ".compact")


def _fsync(path: Path) -> None:
    """A file's data, or a directory's entries, flushed to disk. O(its dirty pages)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _swap_guard(path: Path, exclusive: bool) -> Iterator[None]:
    """A ``flock`` on the store's directory ``path``: exclusive while :meth:`Store.compact`
    puts its copy in place of the data file and removes the old lock file, shared while a
    reader opens the store. LMDB's lock file carries the last transaction's number, which
    picks the data file's current meta page; a reader that opened the new data file and
    the old lock file in that instant would read the new file by the old file's number (an
    empty store, or a torn one), and sit in a lock table no later writer sees. Once open,
    a reader holds LMDB's own lock, which the compaction refuses to run beside; so the
    guard is held for the open alone. O(1)"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StoreError(f"cannot open the store's directory {path}: {exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError as exc:  # (a file system without flock)
            raise StoreError(f"cannot lock the store's directory {path}: {exc}") from exc
        yield
    finally:
        os.close(fd)  # (the lock with it)


def _writer_lock(data_dir: Path) -> int:
    """The data directory's writer lock: an exclusive ``flock`` on ``medianserv.lock`` in
    it, held by the process whose store is open for writing and given back when it closes
    the store or ends (the kernel drops it even on SIGKILL, so a crash never leaves it
    held). LMDB itself would let two processes write one store, and two services' snapshots
    would interleave: each writes only what changed since its own last one, so a symbol's
    record and its levels could come from different services and the store no longer add
    up. The holder's pid is kept in the file for the message. The descriptor, not
    inherited by a spawned process; StoreError when another process holds the lock."""
    lock = data_dir / "medianserv.lock"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:  # (a directory this user cannot write)
        raise StoreError(f"cannot open the store's writer lock {lock}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 24, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StoreError(
            f"the store in {data_dir} is in use by another medianserv (pid {holder}): one "
            "writer at a time (`medianserv snapshot info|export` read it beside a writer)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class _MapGate:
    """The reads of a store and the growth of its map, which LMDB allows only while no
    transaction of the process is open (``mdb_env_set_mapsize``; the binding invalidates
    those open, so a read under way fails, or on older releases reads a map no longer
    there): any number of reads at once; a growth waits for those under way and holds new
    ones back until the map is replaced. O(1) a read, but for the wait."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._growing = False

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Held for the whole of a read transaction."""
        with self._cond:
            while self._growing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    def grow(self, env: lmdb.Environment, size: int) -> None:
        """Set ``env``'s map to ``size`` bytes once no read is under way (the caller's
        write transaction is over)."""
        with self._cond:
            self._growing = True
            try:
                while self._readers:
                    self._cond.wait()
                env.set_mapsize(size)
            finally:
                self._growing = False
                self._cond.notify_all()


class Store:
    """One LMDB environment in ``data_dir``. Open with :meth:`open`; one writer at a time,
    any number of readers in other threads (:class:`_MapGate`)."""

    def __init__(self, env: lmdb.Environment, path: Path) -> None:
        self.env = env
        self.path = path
        self._gate = _MapGate()
        self._page_size = int(env.stat()["psize"])
        self._meta = env.open_db(b"meta")
        self._symbols = env.open_db(b"symbols")
        self._levels = env.open_db(b"levels")
        try:
            self._batches: Any = env.open_db(b"batches")
        except lmdb.Error:  # read-only, of a store of format 6 or older: levels one by one
            self._batches = None
        # each symbol prefix's batches as stored (key, levels), oldest first: read from the
        # store the first time a symbol is written (or loaded), kept as snapshots commit
        self._held: dict[bytes, list[tuple[bytes, int]]] = {}
        try:
            self._candles: Any = env.open_db(b"candles")
        except lmdb.Error:  # read-only, of a store written before candles: none
            self._candles = None
        try:
            self._current: Any = env.open_db(b"current")
        except lmdb.Error:  # read-only, of a store of format 2 or older: its bounds in candles
            self._current = None
        self.version = FORMAT_VERSION  # of the records on disk; set by _check_format
        self.folded = 0  # levels of formats 1-6 that opening it moved into batches
        self._writer: int | None = None  # the data directory's writer lock (_writer_lock)

    @classmethod
    def open(cls, data_dir: Path, *, reset: bool = False, readonly: bool = False) -> Store:
        """Open (or create) the store. ``reset`` deletes it first, deliberately.

        Opened for writing, it holds the data directory's writer lock until closed: a second
        writer (another medianserv on the same directory) is refused with StoreError before
        it changes anything, ``reset`` included; readers need no lock but LMDB's, and open
        outside a compaction's swap of files (:func:`_swap_guard`).

        Raises StoreError for a store of another format version or one LMDB cannot read.
        """
        path = Path(data_dir) / "medianserv.lmdb"
        writer = None if readonly else _writer_lock(Path(data_dir))
        try:
            if reset and path.exists():
                shutil.rmtree(path)
            if writer is not None:  # a compaction's copy a crash left (none runs: the lock)
                shutil.rmtree(_compact_copy(path), ignore_errors=True)
            if readonly and not path.exists():
                raise StoreError(f"no store at {path}")
            path.mkdir(parents=True, exist_ok=True)
            check_lmdb_file(path / "data.mdb")
            try:
                # read-only too with LMDB's lock: a reader registers in the lock table, so a
                # writer (the service, snapshotting meanwhile) never reuses the pages it reads;
                # it opens outside a compaction's swap of files (a writer excludes compactions)
                with _swap_guard(path, exclusive=False) if readonly else nullcontext():
                    env = lmdb.open(str(path), max_dbs=6, map_size=INITIAL_MAP_SIZE,
                                    readonly=readonly, lock=True, metasync=True,
                                    sync=True)  # fmt: skip
                store = cls(env, path)
            except lmdb.Error as exc:
                hint = ""
                if readonly and ("ermission" in str(exc) or isinstance(exc, lmdb.ReadonlyError)):
                    hint = " (a reader needs write access to lock.mdb: run as the service's user)"
                raise StoreError(f"cannot open the store at {path}: {exc}{hint}") from exc
            try:
                store._check_format(readonly)
            except BaseException:
                env.close()
                raise
        except BaseException:
            if writer is not None:
                os.close(writer)
            raise
        store._writer = writer
        return store

    def _check_format(self, readonly: bool) -> None:
        """Read the format version; refuse one we cannot read; upgrade an older one in one
        transaction when writable (a read-only open reads it as it is), the map grown and
        the transaction tried again where it fills the map (a fold writes its levels'
        batches before the pages of their keys are freed)."""
        while True:
            try:
                self._check_format_once(readonly)
                return
            except lmdb.MapFullError:
                self._gate.grow(self.env, self.env.info()["map_size"] * 2)
            except lmdb.Error as exc:
                raise StoreError(f"store at {self.path} is unreadable: {exc}") from exc

    def _check_format_once(self, readonly: bool) -> None:
        """:meth:`_check_format` in one transaction (all or nothing)."""
        with self.env.begin(write=not readonly) as txn:
            found = txn.get(b"format", db=self._meta)
            if found is None:
                if txn.stat(self._symbols)["entries"] or txn.stat(self._levels)["entries"]:
                    raise StoreError(f"store at {self.path} has data but no format version")
                if not readonly:
                    txn.put(b"format", str(FORMAT_VERSION).encode(), db=self._meta)
                self.version = FORMAT_VERSION
                return
            version = int(found) if found.isdigit() and len(found) < 4 else None
            if version not in READABLE_FORMATS:
                raise StoreError(
                    f"store at {self.path} has format {found[:20]!r}; this medianserv reads "
                    f"formats {', '.join(map(str, READABLE_FORMATS))} (use a matching "
                    "version, or --reset to start afresh)"
                )
            assert version is not None
            self.version = version
            if version < FORMAT_VERSION and not readonly:
                self._upgrade(txn, version)
            if not readonly:  # (a store upgraded to 7 before levels were folded too)
                self.folded = self._fold_levels(txn)

    def _upgrade(self, txn: lmdb.Transaction, version: int) -> None:
        """From format 1 or 2: rewrite every symbol record in the current format (levels are
        unchanged), and move each symbol's candle bounds from ``candles`` to ``current``
        (format 3; its current minute stays where it is until the next snapshot writes it).
        From format 3 or 4: each current minute in ``current`` gets its bounds' latest
        trade time after its open time (format 5); format 3's deltas are read as they are,
        and new ones are written compact (format 4). From format 5: nothing to rewrite (bounds
        without an unfolded hour read as None). From format 6: nothing either (its levels,
        one by one in ``levels``, as those of every format before, are then folded into
        batches: :meth:`_fold_levels`). O(symbols)."""
        if version >= 3:
            if self._current is not None and version < 5:
                self._add_latest(txn)
            txn.put(b"format", str(FORMAT_VERSION).encode(), db=self._meta)
            self.version = FORMAT_VERSION
            return
        records = [
            (bytes(k), encode_record(decode_record(bytes(k).decode(), bytes(v), version)))
            for k, v in txn.cursor(db=self._symbols)
        ]
        txn.cursor(db=self._symbols).putmulti(records)
        for name, _ in records:
            key = symbol_prefix(name.decode()) + b"\0"
            bounds = txn.get(key, db=self._candles)
            if bounds is not None:
                txn.put(key, bounds, db=self._current)
                txn.delete(key, db=self._candles)
        txn.put(b"format", str(FORMAT_VERSION).encode(), db=self._meta)
        self.version = FORMAT_VERSION

    def _fold_levels(self, txn: lmdb.Transaction) -> int:
        """Formats 1-6 kept a key a level in ``levels``, read beneath the batches: each
        symbol's become one batch numbered 0 (every snapshot's is 1 or more, so it stays the
        oldest, and later batches' counts stay over its), and ``levels`` is emptied, in
        ``txn`` (the one that opens the store for writing: all or nothing). So a store
        upgraded from them restores at format 7's speed and keeps its levels compact. How
        many levels moved. O(levels), one symbol's levels in memory at a time."""
        if self._batches is None or not txn.stat(self._levels)["entries"]:
            return 0
        moved = 0
        cursor = txn.cursor(db=self._levels)
        more = cursor.first()
        while more:  # a symbol's levels at a time: its keys are one ascending range
            first = bytes(cursor.key())
            n = first[0] + 1
            prefix = first[:n]
            prices, counts = bytearray(), bytearray()  # 8 bytes a level, big-endian
            more = False
            for key, value in cursor:  # (from the one it is on)
                if key[:n] != prefix:
                    more = True
                    break
                if len(key) != n + 8 or len(value) != 8:
                    raise StoreError(f"store at {self.path}: a malformed level {key[:40]!r}")
                prices += key[n:]
                counts += value
            try:
                value, levels = merge_levels(
                    b"", *(a.tobytes() for a in _native_pair(prices, counts))
                )
            except ValueError as exc:
                raise StoreError(f"store at {self.path}: {prefix[1:]!r}'s levels: {exc}") from exc
            txn.put(prefix + _U64.pack(0) + _U64.pack(levels), value, db=self._batches)
            moved += len(prices) // 8
        txn.drop(self._levels, delete=False)
        return moved

    def _add_latest(self, txn: lmdb.Transaction) -> None:
        """Formats 3 and 4 to 5: each ``len | symbol | 1`` value of ``current`` (the minute's
        open time, then its record) as :func:`~medianserv.candles.minute_value` makes it, with
        a latest trade time of 0: the bounds beside it hold the latest (those formats wrote
        them with every snapshot), and a load takes the later of the two. O(symbols)."""
        items = [(bytes(key), minute_value(_U64.unpack(value[:8])[0], 0, bytes(value[8:])))
                 for key, value in txn.cursor(db=self._current)
                 if key[-1:] == b"\x01" and len(value) > 8]  # fmt: skip
        txn.cursor(db=self._current).putmulti(items)

    @classmethod
    def compact(cls, data_dir: Path) -> tuple[int, int]:
        """Rewrite the store's file with no free page (LMDB's compacting copy), as ``(bytes
        before, bytes after)``. LMDB never shrinks a file: the pages a fold or a reset symbol
        freed stay in it, reused by later snapshots only. Opened for writing first (so
        upgraded and folded, and refused with StoreError while a service writes it or any
        other process has it open); the copy is written beside the store and then put in
        place of its data file with one atomic rename, so a crash leaves the old file or
        the new one, never neither; no reader opens between that rename and the old lock
        file's removal (:func:`_swap_guard`). O(pages in use)."""
        store = cls.open(data_dir)  # (a copy an interrupted compaction left: removed)
        path = store.path
        copy = _compact_copy(path)
        try:
            copy.mkdir()
            before = (path / "data.mdb").stat().st_size
            store.env.copy(str(copy), compact=True)
            store.env.close()  # (the writer lock still held)
            _fsync(copy / "data.mdb")  # on disk before it is renamed (LMDB's copy does not sync)
            # no other process may have it open: LMDB's lock file carries the last
            # transaction's number, which the copy starts again; a process that opens the
            # environment alone makes a new one, so the old one goes with the old file
            lock_fd = os.open(path / "lock.mdb", os.O_RDWR | os.O_CLOEXEC)
            try:
                with _swap_guard(path, exclusive=True):  # no reader opens till the old lock goes
                    try:
                        fcntl.lockf(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
                    except OSError:
                        raise StoreError(
                            f"cannot compact the store at {path}: another process has it open "
                            "(a `medianserv snapshot` reader?); try again when it is done"
                        ) from None
                    os.replace(copy / "data.mdb", path / "data.mdb")
                    # (a crash here leaves the old lock file: harmless, as the first opener of an
                    # environment no process has open rebuilds it from the data file)
                    os.unlink(path / "lock.mdb")
                    _fsync(path)
            finally:
                os.close(lock_fd)
            return before, (path / "data.mdb").stat().st_size
        except (OSError, lmdb.Error) as exc:
            raise StoreError(f"cannot compact the store at {path}: {exc}") from exc
        finally:
            shutil.rmtree(copy, ignore_errors=True)
            store.close()

    def close(self) -> None:
        """Close the environment and give the writer lock back. O(1)."""
        self.env.close()
        if self._writer is not None:
            os.close(self._writer)
            self._writer = None

    # -- writing --------------------------------------------------------------------------------

    def save(
        self,
        states: Iterable[SymbolState],
        saved_at_ms: int | None = None,
        listing: tuple[str, ...] | None = None,
    ) -> tuple[int, int]:
        """Write changed symbols and levels in one transaction; grow the map when full.

        The map doubles before the write once the pages in use pass half of it, so a store
        that grows snapshot by snapshot does not fill it in the middle of one (a full map
        aborts the transaction, which is then written again, whole, after the growth); a
        snapshot larger than the room left still fills it and is written again.

        ``listing``, when given, is stored too: the next start serves it before exchangeInfo
        answers. Returns (symbols, levels) written. Raises lmdb.Error for anything but a full
        map (a full disk, an I/O error): the caller keeps the data and retries.
        """
        batch = list(states)
        saved_at = int(time.time() * 1000) if saved_at_ms is None else saved_at_ms
        info = self.env.info()
        if (info["last_pgno"] + 1) * self._page_size * 2 > info["map_size"]:
            self._gate.grow(self.env, info["map_size"] * 2)
        while True:
            try:
                return self._write(batch, saved_at, listing)
            except lmdb.MapFullError:
                self._gate.grow(self.env, self.env.info()["map_size"] * 2)

    def _write(
        self, batch: list[SymbolState], saved_at: int, listing: tuple[str, ...] | None
    ) -> tuple[int, int]:
        records = [(state.symbol.encode(), encode_record(state)) for state in batch]
        with self.env.begin(write=True) as txn:
            snapshots = int(txn.get(b"snapshots", b"0", db=self._meta)) + 1
            # putmulti: one C call for many items (but the lmdb binding hands the GIL back
            # and forth with busy reader threads once per item all the same: see
            # _put_levels)
            txn.cursor(db=self._symbols).putmulti(records)
            held, levels = self._put_levels(txn, batch, snapshots)
            if self._candles is not None:
                current, gone, items = candle_items(batch)
                txn.cursor(db=self._candles).putmulti(items)
                txn.cursor(db=self._current).putmulti(current)
                for key in gone:
                    txn.delete(key, db=self._current)
                self._delete_candles(txn, batch)
            put = txn.put
            put(b"saved_at", str(saved_at).encode(), db=self._meta)
            if listing is not None:
                put(b"listing", _encoder.encode(list(listing)), db=self._meta)
            put(b"snapshots", str(snapshots).encode(), db=self._meta)
        self._held.update(held)  # committed
        return len(records), levels

    def _stored_batches(self, txn: lmdb.Transaction, prefix: bytes) -> list[tuple[bytes, int]]:
        """A symbol's batches (key, levels), oldest first, as ``txn`` sees them. O(batches)."""
        held = self._held.get(prefix)
        if held is not None:
            return held
        held = []
        cursor = txn.cursor(db=self._batches)
        if cursor.set_range(prefix):
            for key in cursor.iternext(values=False):
                key = bytes(key)
                if key[: len(prefix)] != prefix or len(key) != len(prefix) + 16:
                    break
                held.append((key, _U64.unpack_from(key, len(prefix) + 8)[0]))
        return held

    def _put_levels(
        self, txn: lmdb.Transaction, batch: list[SymbolState], seq: int
    ) -> tuple[dict[bytes, list[tuple[bytes, int]]], int]:
        """Each symbol's changed levels as one ``batches`` item of snapshot ``seq``, merged
        with the symbol's newest batches while the newest is at most twice as large (each
        merged one read and deleted): a symbol holds O(log d) batches and each level is
        rewritten O(log d) times, and a snapshot writes a few items a symbol however many
        levels changed. (A put a level, as formats 1-6 wrote them, hands the GIL back to
        busy reader threads and waits to get it back once a level: under a flood of new
        prices that stretched a snapshot of a few seconds' levels to half a minute.)
        Returns each symbol's batches after the write, applied once it commits, and the
        levels changed (each symbol's once, however many harvests its log joins: counted as
        they are merged, not by sizing each harvest's record apart, which sorts it again).
        O(L log L) for the L levels written and merged."""
        out: dict[bytes, list[tuple[bytes, int]]] = {}
        written = 0
        for state in batch:
            value, n = b"", 0
            for prices, counts in state_levels(state.levels):
                value, n = merge_levels(value, prices, counts)
            if not n:
                continue
            written += n
            prefix = symbol_prefix(state.symbol)
            held = list(self._stored_batches(txn, prefix))
            while held and held[-1][1] <= 2 * n:
                key, _ = held.pop()
                older = txn.get(key, db=self._batches)
                if older is None:
                    raise StoreError(f"{state.symbol}: a batch of levels went missing")
                try:
                    value, n = merge_levels(bytes(older), value)
                except ValueError as exc:
                    raise StoreError(f"{state.symbol}: corrupt batch of levels: {exc}") from exc
                txn.delete(key, db=self._batches)
            key = batch_key(state.symbol, seq, n)
            txn.put(key, value, db=self._batches)
            held.append((key, n))
            out[prefix] = held
        return out, written

    def _delete_candles(self, txn: lmdb.Transaction, batch: list[SymbolState]) -> None:
        """After ``batch``'s candles are put: delete the stored periods past retention, and
        the deltas of every period settled that was stored as deltas (its row replaced its
        header; :func:`~medianserv.candles.finish` marks it). After the puts, so that periods
        of an earlier harvest written again (a failed write retried) go too. O(deleted +
        log n) per symbol and interval."""
        cursor = txn.cursor(db=self._candles)
        for state in batch:
            c = state.candles
            if c is None or quiet(c):  # nothing settled, no bound handed over
                continue
            assert not isinstance(c, bytes)  # (quiet)
            for k, (expired, entries) in enumerate(zip(c.expired, c.periods, strict=True)):
                if expired is not None and expired > 0:
                    head = candle_head(state.symbol, k)
                    _delete_range(cursor, head, head + _U64.pack(expired))
                for start, row, deltas in entries:
                    if row is not None and deltas is DELTAS:
                        key = candle_key(state.symbol, k, start)
                        _delete_range(cursor, key + b"\0", key + b"\xff" * 5)  # its deltas

    # -- reading --------------------------------------------------------------------------------

    def candles(
        self, symbol: str, k: int, start: int, end: int, limit: int, from_start: bool
    ) -> list[CandleRow]:
        """Settled rows of ``symbol``'s interval ``k`` with open time in ``start..end`` (end
        excluded): the first ``limit`` from ``start`` (``from_start``) or the last ``limit``
        before ``end``, with the settled row just outside on the other side of each end
        (what a row's finality is judged by), ascending. O(limit + log n), one read
        transaction."""
        if self._candles is None:
            return []
        head = candle_head(symbol, k)
        lo, hi = head + _U64.pack(max(0, start)), head + _U64.pack(max(0, min(end, 2**63)))
        n = len(head)
        out: list[CandleRow] = []

        def settled(key: bytes, value: bytes) -> CandleRow | None:
            if (
                len(key) != n + 8
                or not bytes(key).startswith(head)
                or bytes(value[:2]) != b"\x99\0"
            ):
                return None  # another symbol's, the bounds, an open period (in memory), a delta
            row = _decode_candle(symbol, k, _U64.unpack(bytes(key[n:]))[0], bytes(value))
            return row if isinstance(row, CandleRow) else None

        def take(items: Any, most: int, beyond: Callable[[bytes], bool]) -> list[CandleRow]:
            """Settled rows of ``items`` (a cursor's walk either way) until ``most`` are
            taken or the first one ``beyond`` the window is."""
            found: list[CandleRow] = []
            for key, value in items:
                if not bytes(key).startswith(head):
                    break
                row = settled(key, value)
                if row is None:
                    continue
                found.append(row)
                if len(found) >= most or beyond(bytes(key)):
                    break
            return found

        def nowhere(key: bytes) -> bool:
            return False

        def forward(cursor: Any, most: int, stop: bytes | None = None) -> list[CandleRow]:
            return take(cursor.iternext(), most, nowhere if stop is None else stop.__le__)

        def backward(cursor: Any, most: int, stop: bytes | None = None) -> list[CandleRow]:
            return take(cursor.iterprev(), most, nowhere if stop is None else stop.__gt__)

        try:
            with self._gate.reading(), self.env.begin(db=self._candles) as txn:
                cursor = txn.cursor()
                if from_start:
                    # the row before start, then up to limit from start and the one after
                    if cursor.set_range(lo):
                        if cursor.prev():
                            out += backward(cursor, 1)
                    elif cursor.last():
                        out += backward(cursor, 1)
                    if cursor.set_range(lo):
                        out += forward(cursor, limit + 1, hi)
                else:
                    # the row at or after end, then up to limit before end and the one before
                    if cursor.set_range(hi):
                        out += forward(cursor, 1)
                        cursor.set_range(hi)
                        if cursor.prev():
                            out += backward(cursor, limit + 1, lo)
                    elif cursor.last():
                        out += backward(cursor, limit + 1, lo)
                return sorted(set(out))
        except lmdb.Error as exc:
            raise StoreError(f"store at {self.path} is unreadable: {exc}") from exc

    def _load_candles(self, txn: lmdb.Transaction, symbol: str) -> CandleState | None:
        """The stored bounds and open periods of ``symbol``'s candles (None if none). O(open
        periods' levels + settled rows)."""
        if self._candles is None:
            return None
        prefix = symbol_prefix(symbol)
        meta = None if self._current is None else txn.get(prefix + b"\0", db=self._current)
        if meta is None:  # a store of format 2 opened read-only: the bounds are in candles
            meta = txn.get(prefix + b"\0", db=self._candles)
        if meta is None:
            return None
        try:
            bounds = msgspec.msgpack.decode(bytes(meta), type=list[int | None])
            first_ms, latest_ms, front_top_ms, current = bounds[:4]
            if len(bounds) == 12:  # written before the archives' day candles and the seal
                bounds = [*bounds, 0, -1, -1]
            if len(bounds) == 15:  # formats up to 5: every retired minute in its day
                bounds = [*bounds, None]
            if len(bounds) != 16 or first_ms is None or latest_ms is None:
                raise ValueError("incomplete")
            counts = tuple(int(n or 0) for n in bounds[4:13])
            sealed = (int(bounds[13] or 0), int(bounds[14] or 0))
            unfolded = bounds[15]
            if unfolded is not None and (
                current is None or unfolded != period_start(current, HOUR)
            ):
                raise ValueError("an unfolded hour not the current minute's")
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError) as exc:
            raise StoreError(f"{symbol}: corrupt candle bounds: {exc}") from exc
        periods: tuple[list[tuple[int, CandleRow | None, Any]], ...] = ([], [], [])
        seqs: list[tuple[int, int, int]] = []
        cursor = txn.cursor(db=self._candles)
        for k in range(len(INTERVALS)):
            head = candle_head(symbol, k)
            n = len(head)
            if not cursor.set_range(head):
                continue
            header: tuple[int, list[Any], list[bytes], list[bytes]] | None = None
            for key, value in cursor:
                key = bytes(key)
                if not key.startswith(head):
                    break
                if len(key) == n + 12:  # a delta of the header before it
                    if header is None or key[n : n + 8] != _U64.pack(header[0]):
                        raise StoreError(f"{symbol}: a candle delta without its period")
                    try:
                        more = _delta_levels(bytes(value))
                    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                        raise StoreError(f"{symbol}: corrupt candle delta: {exc}") from exc
                    header[2].append(more[0])
                    header[3].append(more[1])
                    continue
                if header is not None:
                    periods[k].append(self._delta_period(symbol, k, header))
                    seqs.append((k, header[0], int(header[1][8])))
                    header = None
                start = _U64.unpack(key[n:])[0]
                kind = bytes(value[:2])
                if kind in (b"\x99\x01", b"\x9a\x01"):  # an open minute, whole (formats 4, 3)
                    periods[k].append((start, None, _decode_candle(symbol, k, start, bytes(value))))
                elif kind == b"\x99\x02":  # an open hour or day: its deltas follow
                    header = (start, msgspec.msgpack.decode(bytes(value)), [], [])
            if header is not None:
                periods[k].append(self._delta_period(symbol, k, header))
                seqs.append((k, header[0], int(header[1][8])))
        whole = None if self._current is None else txn.get(prefix + b"\x01", db=self._current)
        if (whole is not None and current is not None and bytes(whole[:8]) == _U64.pack(current)
                and (MINUTE, current) not in [q[:2] for q in seqs]):  # fmt: skip
            # the current minute, stored whole: newer than a whole copy in candles (a
            # format 2 store's), older than its deltas there (a minute never turns back);
            # from format 5 with the latest trade time, which a quiet snapshot writes alone
            if self.version >= 5:
                try:
                    _, latest, record = quiet_parts(bytes(whole))
                except ValueError as exc:
                    raise StoreError(f"{symbol}: {exc}") from exc
                latest_ms = max(latest_ms, latest)
            else:
                record = bytes(whole[8:])
            minute = _decode_candle(symbol, MINUTE, current, record)
            if isinstance(minute, CandleRow):
                raise StoreError(f"{symbol}: a settled row as the current minute")
            periods[MINUTE][:] = [e for e in periods[MINUTE] if e[0] != current]
            periods[MINUTE].append((current, None, minute))
        return CandleState(first_ms, latest_ms, front_top_ms, current, periods,
                           (None, None, None), counts, tuple(seqs), sealed,
                           unfolded)  # fmt: skip

    @staticmethod
    def _delta_period(
        symbol: str, k: int, header: tuple[int, list[Any], list[bytes], list[bytes]]
    ) -> tuple[int, None, Any]:
        """An open hour or day from its header and the sum of its deltas. O(L)."""
        start, record, prices, counts = header
        try:
            period = restore_packed(start, INTERVALS[k][1], record[1:8], b"".join(prices),
                                    b"".join(counts))  # fmt: skip
        except (ValueError, TypeError, IndexError) as exc:
            raise StoreError(f"{symbol}: corrupt candle at {start}: {exc}") from exc
        return start, None, period

    def load(self, progress: Callable[[int, int], None] | None = None) -> list[SymbolState]:
        """Every stored symbol with all its levels, ascending. O(total levels).

        ``progress(symbols_done, levels_done)`` is called every 100,000 levels. Raises
        StoreError when a record is corrupt or its levels do not add up to its count.
        """
        out: list[SymbolState] = []
        total = 0
        try:
            with self._gate.reading(), self.env.begin(buffers=True) as txn:
                levels_cursor = txn.cursor(db=self._levels)
                batches = None if self._batches is None else txn.cursor(db=self._batches)
                for key, value in txn.cursor(db=self._symbols):
                    symbol = bytes(key).decode()
                    state = decode_record(symbol, bytes(value), self.version)
                    prefix = symbol_prefix(symbol)
                    n = len(prefix)
                    prices, counts = bytearray(), bytearray()  # 8 bytes a level, big-endian
                    if levels_cursor.set_range(prefix):
                        for lkey, lvalue in levels_cursor:
                            if lkey[:n] != prefix or len(lkey) != n + 8:
                                break
                            prices += lkey[n:]
                            counts += lvalue
                            total += 1
                            if progress is not None and total % 100_000 == 0:
                                progress(len(out), total)
                    if len(counts) != len(prices):
                        raise StoreError(f"{symbol}: a level's count is not 8 bytes")
                    levels = LevelArrays(_native(prices, np.uint64), _native(counts, np.int64))
                    part, held = self._load_batches(batches, symbol, prefix)
                    if part is not None:
                        total += len(part[0])
                        if len(levels.prices):  # keys of formats 1-6 beneath (read-only)
                            part = latest_levels([(levels.prices, levels.counts), part])
                        levels = LevelArrays(*part)
                    self._held[prefix] = held
                    if levels.total() != state.count or bool(np.any(levels.counts <= 0)):
                        raise StoreError(
                            f"{symbol}: levels do not add up to its count {state.count}"
                        )
                    state.levels = levels
                    state.candles = self._load_candles(txn, symbol)
                    out.append(state)
        except lmdb.Error as exc:
            raise StoreError(f"store at {self.path} is unreadable: {exc}") from exc
        return out

    @staticmethod
    def _load_batches(
        cursor: Any, symbol: str, prefix: bytes
    ) -> tuple[_Arrays | None, list[tuple[bytes, int]]]:
        """A symbol's batches of levels as one part, checked (None if it has none), and
        their keys and sizes, oldest first. The batches are merged as they are stored (compact, each
        ascending: :func:`merge_levels`, a later count over an earlier) and the result
        decoded once, not each decoded and the whole sorted again: a symbol of 10^7 levels
        in two batches is read in about a quarter of the time. StoreError if one is corrupt
        or holds another number of levels than its key says. O(levels in them)."""
        raws: list[bytes] = []
        held: list[tuple[bytes, int]] = []
        n = len(prefix)
        if cursor is None or not cursor.set_range(prefix):
            return None, held
        for key, value in cursor:
            if key[:n] != prefix or len(key) != n + 16:
                break
            size = _U64.unpack_from(key, n + 8)[0]
            raw = bytes(value)
            if _levels_in(raw) != size:
                raise StoreError(f"{symbol}: corrupt batch of levels: {size} levels in its key")
            raws.append(raw)
            held.append((bytes(key), size))
        if not raws:
            return None, held
        try:
            value = raws[0]
            for raw in raws[1:]:
                value, _ = merge_levels(value, raw)
            return decode_batch(value), held
        except ValueError as exc:
            raise StoreError(f"{symbol}: corrupt batch of levels: {exc}") from exc

    def load_listing(self) -> list[str]:
        """The symbols listed at the last snapshot (empty for a new store)."""
        with self._gate.reading(), self.env.begin() as txn:
            data = txn.get(b"listing", db=self._meta)
        if data is None:
            return []
        try:
            return msgspec.msgpack.decode(data, type=list[str])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise StoreError(f"corrupt listing in {self.path}: {exc}") from exc

    def info(self) -> dict[str, Any]:
        """Counts and sizes for ``medianserv snapshot info``. O(symbols)."""
        with self._gate.reading(), self.env.begin() as txn:
            saved_at = txn.get(b"saved_at", db=self._meta)
            decoder = _decoders[self.version]
            trades = sum(decoder.decode(v).count for _, v in txn.cursor(db=self._symbols))
            batch_sizes = [] if self._batches is None else [
                _U64.unpack_from(k, len(k) - 8)[0]
                for k in txn.cursor(db=self._batches).iternext(values=False)
            ]  # fmt: skip
            batch_levels = sum(batch_sizes)
            return {
                "path": str(self.path),
                "format_version": self.version,
                "symbols": txn.stat(self._symbols)["entries"],
                "levels": txn.stat(self._levels)["entries"] + batch_levels,
                "level_batches": len(batch_sizes),
                "trades": trades,
                "snapshots": int(txn.get(b"snapshots", b"0", db=self._meta)),
                "saved_at_ms": int(saved_at) if saved_at else None,
                "file_bytes": sum(f.stat().st_size for f in self.path.iterdir()),
                "map_bytes": self.env.info()["map_size"],
            }
