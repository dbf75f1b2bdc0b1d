"""Binance's public trade archives: which files hold a stretch of history (pure), and one file
fetched, verified and reduced to (price, count) pairs (the work of a pool process).

Theory of operation
-------------------
Binance publishes every spot trade since listing as zip files of one CSV each, monthly for
complete months and daily from the day after, with a ``.CHECKSUM`` beside each zip::

    <archive>/data/spot/monthly/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2024-08.zip
    <archive>/data/spot/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2024-08-09.zip

An aggTrades row is one price for the consecutive trade ids ``first..last``, so a file gives
the exact multiset of prices of its ids. :func:`plan` lists the files that cover a stretch of
time; :func:`fetch_and_reduce` downloads one (to a temporary file, hashing as it goes), checks
it against its CHECKSUM, and :func:`reduce_csv` parses the CSV and reduces it to the distinct
prices with their trade counts: a month of BTCUSDT (tens of millions of rows) becomes a few
hundred thousand pairs, which the service then merges into the median in bulk.

Parsing is one pass in C (:mod:`medianserv._reduce`, built at install): the inflater's
chunks are fed to it as they come, each row's needed fields are parsed straight into
integers (the price into exact 1e-8 units, digit by digit), checked, and its trades added to
a hash table keyed by price; memory stays bounded by the chunk and the distinct prices
whatever the file. Where no C compiler was at hand at install, polars' CSV reader does the
same in blocks of whole lines, at several times the CPU; both read exactly, with no float.
Before anything is returned the rows are checked: aggregate ids consecutive, trade ids tiling
(each row starts where the previous one ended), times not going back and within the file's
period, prices plain and in range, the CSV inside named for the symbol and period asked for.
A file failing any check is refused whole (:class:`Refused`, with the reason); nothing of it
is applied. Timestamps are milliseconds before 2025-01-01 and microseconds from then on;
:func:`reduce_csv` reads both and returns milliseconds.
"""

from __future__ import annotations

import calendar
import concurrent.futures as cf
import contextlib
import datetime as dt
import hashlib
import http.client
import io
import struct
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

from .candles import DayCandle
from .prices import MAX_UNITS, parse_price

if TYPE_CHECKING:  # numpy and polars are imported where files are reduced, not at start-up
    import numpy as np

__all__ = [
    "ArchiveFile",
    "Reduced",
    "Refused",
    "daily_files",
    "fetch_and_reduce",
    "monthly_file",
    "native_reader",
    "parse_checksum",
    "plan",
    "pool_process_init",
    "reduce_csv",
]

DAY_MS = 86_400_000
#: From this instant on, archive timestamps are in microseconds (before it, milliseconds).
MICROS_FROM_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
#: How much lower a pool process's CPU priority is than the service's (``nice``).
POOL_NICENESS = 10
#: Bytes read from a download at a time, and the most one file may take.
CHUNK = 1 << 20
MAX_FILE_BYTES = 1 << 34


def _ms(day: dt.date) -> int:
    return calendar.timegm(day.timetuple()) * 1000


def _date(ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(ms // 1000, dt.UTC).date()


@dataclass(frozen=True, order=True)
class ArchiveFile:
    """One archive: ``kind`` (aggTrades or trades) of ``symbol`` for the days
    ``first_day..last_day``, monthly or daily. Ordered by time."""

    first_day: dt.date
    last_day: dt.date
    symbol: str = field(compare=False)
    kind: str = field(compare=False, default="aggTrades")

    @property
    def monthly(self) -> bool:
        return self.first_day != self.last_day

    @property
    def name(self) -> str:
        """``BTCUSDT-aggTrades-2024-08`` (monthly) or ``BTCUSDT-aggTrades-2024-08-09``."""
        d = self.first_day
        stamp = f"{d:%Y-%m}" if self.monthly else f"{d:%Y-%m-%d}"
        return f"{self.symbol}-{self.kind}-{stamp}"

    @property
    def path(self) -> str:
        """Path of the zip under the archive's base URL: a symbol's name (any UTF-8 since
        2025-12, ``币安人生USDT``) percent-encoded, as Binance's archive serves it."""
        period = "monthly" if self.monthly else "daily"
        symbol, name = quote(self.symbol, safe=""), quote(self.name, safe="-")
        return f"data/spot/{period}/{self.kind}/{symbol}/{name}.zip"

    @property
    def start_ms(self) -> int:
        return _ms(self.first_day)

    @property
    def end_ms(self) -> int:
        """End of the period (exclusive)."""
        return _ms(self.last_day) + DAY_MS

    def other_kind(self) -> ArchiveFile:
        """The same period in the other dataset (trades for aggTrades and back)."""
        kind = "trades" if self.kind == "aggTrades" else "aggTrades"
        return ArchiveFile(self.first_day, self.last_day, self.symbol, kind)


def monthly_file(symbol: str, year: int, month: int, kind: str = "aggTrades") -> ArchiveFile:
    last = calendar.monthrange(year, month)[1]
    return ArchiveFile(dt.date(year, month, 1), dt.date(year, month, last), symbol, kind)


def daily_files(
    symbol: str, first: dt.date, last: dt.date, kind: str = "aggTrades"
) -> list[ArchiveFile]:
    """One file a day, ``first..last``."""
    days = (last - first).days + 1
    return [
        ArchiveFile(first + dt.timedelta(d), first + dt.timedelta(d), symbol, kind)
        for d in range(max(0, days))
    ]


def plan(symbol: str, first_ms: int, until_ms: int, today: dt.date) -> list[ArchiveFile]:
    """The aggTrades files covering ``first_ms..until_ms``, oldest first: monthly files for
    months complete before ``today``'s month, daily files for the days of this month before
    ``today`` (Binance publishes a day's file the day after). What is later (today's trades)
    is not archived yet: it comes over REST. Pure, O(months + days).

    >>> files = plan("X", _ms(dt.date(2024, 11, 20)), _ms(dt.date(2025, 1, 3)), dt.date(2025, 1, 3))
    >>> [f.name.removeprefix("X-aggTrades-") for f in files]
    ['2024-11', '2024-12', '2025-01-01', '2025-01-02']
    """
    if until_ms < first_ms:
        return []
    start, end = _date(first_ms), min(_date(until_ms), today - dt.timedelta(1))
    this_month = today.replace(day=1)
    files: list[ArchiveFile] = []
    y, m = start.year, start.month
    while dt.date(y, m, 1) <= end:
        if dt.date(y, m, 1) < this_month:
            files.append(monthly_file(symbol, y, m))
        else:
            files += daily_files(symbol, max(start, dt.date(y, m, 1)), end)
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return files


def parse_checksum(text: bytes, name: str) -> str:
    """The SHA-256 hex digest a ``.CHECKSUM`` file gives for ``name``; ValueError otherwise."""
    parts = text.decode("utf-8", errors="replace").split()
    if (
        len(parts) != 2
        or parts[1].lstrip("*") != name
        or len(parts[0]) != 64
        or any(c not in "0123456789abcdefABCDEF" for c in parts[0])
    ):
        raise ValueError(f"checksum: not a CHECKSUM for {name}: {text[:120]!r}")
    return parts[0].lower()


@dataclass
class Reduced:
    """A file reduced to its distinct prices and trade counts, with its bounds: the ids it
    counts, ``first_id..last_id``, are those of the file within the cut it was asked for."""

    file: ArchiveFile
    levels: np.ndarray[Any, Any]  # uint64 prices (1e-8 units), ascending, distinct
    counts: np.ndarray[Any, Any]  # int64 trades at each price
    first_id: int  # first trade id counted
    last_id: int  # last trade id counted
    first_agg: int | None  # first aggregate id counted (aggTrades files)
    last_row: tuple[int, int, int, int, int]  # last row counted: (agg id, first id, last id,
    #                                           price, time ms), whole as the file has it
    rows: int
    zip_bytes: int
    csv_bytes: int
    file_first_id: int = 0  # first trade id of the whole file
    file_last_id: int = 0  # last trade id of the whole file
    quirks: dict[str, int] = field(default_factory=dict)  # what it met: header, invalid rows
    days: list[DayCandle] = field(default_factory=list)  # the UTC days counted, in order

    @property
    def trades(self) -> int:
        return self.last_id - self.first_id + 1


@dataclass
class Refused:
    """A file that could not be used: ``reason`` is ``missing`` (404), ``checksum``,
    ``corrupt`` (the zip), ``format``, ``bad_price``, ``order`` (ids not tiling), ``period``
    (times outside the file's period), ``wrong_file`` (the CSV inside is another's) or
    ``network`` (retry later)."""

    file: ArchiveFile
    reason: str
    detail: str = ""


_AGG = ("a", "p", "q", "f", "l", "T", "m", "M")
_PRICE = r"^[0-9]{1,11}(\.[0-9]{1,8})?$"
_TRADES = ("f", "p", "q", "qq", "T", "m", "M")


def reduce_csv(
    stream: IO[bytes],
    file: ArchiveFile,
    cut: int = 0,
    top: int | None = None,
    block_size: int = 1 << 24,
    engine: str | None = None,
    days: bool = True,
) -> Reduced:
    """Parse one archive CSV (aggTrades or trades) and reduce it to (price, count) pairs,
    checking every row (see the module's docstring), counting only trade ids from ``cut`` to
    ``top`` (the rest was applied already, or is not history), and with ``days`` each UTC
    day's candle (:attr:`Reduced.days`: its median where the file holds every trade of the
    day counted from it, else its levels; a day inside a file whose rows were all counted
    is whole, the file's first and last days never are, as other files or REST may hold
    some of their trades). Raises ValueError with a
    reason prefix (``format:``, ``empty:``, ``bad_price:``, ``order:``, ``period:``) when the
    file cannot be used, or has no trade within the cut. O(rows); memory O(``block_size`` +
    distinct prices).

    Rows the 2022-04 data audit marked invalid (price 0, first and last trade id -1) cover
    no trade: skipped and counted in ``Reduced.quirks``; so is a header row (a first line
    that starts with a letter: a first row led by anything else is never skipped unseen).

    Two engines, with the same checks and results: ``C`` (the default where it was
    built at install, :mod:`medianserv._reduce`) reads the stream in chunks of
    ``block_size`` in one pass in C: each row's five needed fields parsed straight into
    integers, checked, and its trades added to a hash table keyed by the exact price in
    1e-8 units. ``polars`` (where no C compiler was at hand) cuts the stream into blocks of
    whole lines for polars' CSV reader; see :func:`_reduce_polars`."""
    native = native_reader()
    if engine is None:
        engine = "C" if native is not None else "polars"
    if engine == "polars":
        return _reduce_polars(stream, file, cut, top, block_size, days)
    if engine != "C":
        raise RuntimeError(f"no archive reader {engine!r} (C or polars)")
    if native is None:
        raise RuntimeError("the C reader was not built at install (no C compiler?)")
    return _reduce_native(native, stream, file, cut, top, block_size, days)


def native_reader() -> Any:
    """The C reader's module (:mod:`medianserv._reduce`), or None where it was not built at
    install (no C compiler)."""
    try:
        from . import _reduce  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _reduce


def _reduce_native(
    native: Any,
    stream: IO[bytes],
    file: ArchiveFile,
    cut: int,
    top: int | None,
    chunk: int,
    days: bool,
) -> Reduced:
    """:func:`reduce_csv` with the C reader: the stream fed to it as it comes (an inflater's
    chunks go in as they are, cut anywhere; no block of lines is assembled). O(rows); memory
    O(``chunk`` + distinct prices)."""
    import numpy as np

    top_id = (1 << 63) - 1 if top is None else top
    reducer = native.Reducer(file.kind == "aggTrades", cut, top_id, file.start_ms, file.end_ms,
                             MICROS_FROM_MS * 100, days)  # fmt: skip
    try:
        while data := stream.read(chunk):
            reducer.feed(data)
        (levels_raw, counts_raw, first_id, last_id, first_agg, file_first, file_last, last_row,
         rows, invalid, header, days_raw) = reducer.finish()  # fmt: skip
    except ValueError as exc:
        if str(exc).startswith("period"):
            raise ValueError(f"period: times outside {file.first_day}..{file.last_day} "
                             f"({str(exc).partition(': ')[2]})") from None  # fmt: skip
        raise
    every = np.frombuffer(levels_raw, dtype=np.uint64)
    order = np.argsort(every)
    levels, totals = every[order], np.frombuffer(counts_raw, dtype=np.int64)[order]
    if int(totals.sum()) != last_id - first_id + 1:
        raise ValueError("order: counts do not add up to the ids")
    quirks = {"header": 1} if header else {}
    if invalid:
        quirks["invalid_rows"] = invalid
    candles = []
    for *fields, lo, hi, prices, counts in days_raw:
        if prices is None:
            candles.append(DayCandle._make((*fields, lo + hi, None, None)))
        else:
            candles.append(DayCandle._make((*fields, None, np.frombuffer(prices, dtype=np.uint64),
                                         np.frombuffer(counts, dtype=np.int64))))  # fmt: skip
    return Reduced(file, levels, totals, first_id, last_id, first_agg, last_row, rows, 0, 0,
                   file_first, file_last, quirks, candles)  # fmt: skip


def _reduce_polars(
    stream: IO[bytes], file: ArchiveFile, cut: int, top: int | None, block_size: int, days: bool
) -> Reduced:
    """:func:`reduce_csv` with polars, per block of whole lines (polars' CSV reader, in Rust,
    one thread): the ids and times come as integer columns, checked with numpy; the price
    column stays text, and the trades of each row within the cut are summed per price text
    (a hash aggregation); only the distinct texts of the block are then checked to be plain
    decimals and turned into exact 1e-8 units (integer part and zero-padded fraction, as
    integers). O(rows); memory O(``block_size`` + distinct prices)."""
    import numpy as np
    import polars as pl

    quirks: dict[str, int] = {}
    agg = file.kind == "aggTrades"
    names = _AGG if agg else _TRADES
    schema: dict[str, Any] = {name: pl.String for name in names}
    schema.update(f=pl.Int64, T=pl.Int64)
    wanted = ["p", "f", "T"]
    if agg:
        schema.update(a=pl.Int64, l=pl.Int64)
        wanted += ["a", "l"]
    top_id = (1 << 63) - 1 if top is None else top
    parts: list[Any] = []  # per block: trades per (day, distinct price text)
    held = 0
    last_text = ""
    prev: tuple[int, int, int] | None = None  # (agg id, last trade id, time) of the last row
    file_first: int | None = None  # first trade id of the file
    first: tuple[int, int | None] | None = None  # first trade id and aggregate counted
    last_counted: int | None = None
    last_row = (0, 0, 0, 0, 0)
    rows = invalid = 0
    by_day: dict[int, list[Any]] = {}  # per UTC day counted: see _day_bounds
    partial: set[int] = set()  # days with a row outside cut..top, and the first and last
    first_day = 0
    start, end = file.start_ms, file.end_ms
    for number, block in enumerate(_lines(stream, block_size)):
        if number == 0 and block[:1].isalpha():  # a header row (futures files, tools)
            block = block[block.find(b"\n") + 1 :]
            quirks["header"] = 1
        if not block:
            continue
        try:
            frame = (
                pl.scan_csv(block, has_header=False, schema=schema, quote_char=None)
                .select(wanted)
                .collect()
            )
        except pl.exceptions.PolarsError as exc:
            raise ValueError(f"format: {str(exc).splitlines()[0][:200]}") from exc
        n = frame.height
        if any(frame[c].null_count() for c in wanted):
            raise ValueError("format: an empty field")
        f = frame["f"].to_numpy()
        t = frame["T"].to_numpy()
        if agg:
            a = frame["a"].to_numpy()
            last = frame["l"].to_numpy()
        else:
            a, last = f, f
        t = np.where(t >= MICROS_FROM_MS * 100, t // 1000, t)  # microseconds from 2025 on
        valid = f >= 0
        rows += n
        if not valid.all():  # the audit's invalid rows: f = l = -1, nothing else negative
            bad = ~valid
            if np.any(last[bad] != -1) or np.any(f[bad] != -1) or not agg:
                raise ValueError("format: a negative trade id")
            invalid += int(bad.sum())
            frame = frame.filter(pl.Series(valid))
            f, last, t, a = f[valid], last[valid], t[valid], a[valid]
        if not len(f):
            continue
        if np.any(a[1:] != a[:-1] + 1) or (prev is not None and a[0] != prev[0] + 1):
            raise ValueError("order: aggregate ids not consecutive")
        if np.any(t[1:] < t[:-1]) or (prev is not None and t[0] < prev[2]):
            raise ValueError("order: times go back")
        if t[0] < start or t[-1] >= end:
            raise ValueError(f"period: times outside {file.first_day}..{file.last_day}")
        if np.any(last < f) or np.any(f[1:] != last[:-1] + 1):
            raise ValueError("order: trade ids do not tile (an overlap, a hole, or going back)")
        if prev is not None and f[0] != prev[1] + 1:
            raise ValueError("order: trade ids do not tile across blocks")
        prev = (int(a[-1]), int(last[-1]), int(t[-1]))
        if file_first is None:
            file_first = int(f[0])
            first_day = int(t[0] - t[0] % DAY_MS)
        reps = np.maximum(np.minimum(last, top_id) - np.maximum(f, cut) + 1, 0)
        d = t - t % DAY_MS
        if days:
            partial.update(np.unique(d[reps != last - f + 1]).tolist())
        inside = np.flatnonzero(reps)
        if not len(inside):
            continue
        i0, i1 = int(inside[0]), int(inside[-1])
        if first is None:
            first = (int(max(f[i0], cut)), int(a[i0]) if agg else None)
        last_counted = int(min(last[i1], top_id))
        if days:
            _day_bounds(by_day, d, inside, f, last, t, reps, frame["p"], cut, top_id)
        parts.append(
            frame.lazy()
            .select(pl.Series("d", d), pl.col("p"), pl.Series("n", reps))
            .group_by("d", "p")
            .agg(pl.col("n").sum())
            .filter(pl.col("n") > 0)
            .collect()
        )
        held += parts[-1].height
        if held > _COMPACT:  # distinct texts of many blocks: merge them, memory stays bounded
            parts = [_per_price(parts)]
            held = parts[0].height
        last_row = (int(a[i1]), int(f[i1]), int(last[i1]), 0, int(t[i1]))
        last_text = frame["p"][i1]
    if prev is None or file_first is None:
        raise ValueError("empty: no rows")
    if first is None or last_counted is None:
        raise ValueError("empty: no trade within the ids asked for")
    if invalid:
        quirks["invalid_rows"] = invalid
    per_price = _per_price(parts)
    every = _units(per_price["p"])  # once per distinct text of each day of the file
    day_of, trades = per_price["d"].to_numpy(), per_price["n"].to_numpy().astype(np.int64)
    levels, totals = _summed(every, trades)
    last_row = (*last_row[:3], parse_price(last_text), last_row[4])
    if int(totals.sum()) != last_counted - first[0] + 1:
        raise ValueError("order: counts do not add up to the ids")
    partial.update((first_day, prev[2] - prev[2] % DAY_MS))  # others may hold some of theirs
    candles = []
    for start, (first_ms, last_ms, open_id, open_text, close_id, close_text, n) in by_day.items():
        mine = day_of == start
        prices, counts = _summed(every[mine], trades[mine])
        fields = (start, first_ms, last_ms, open_id, parse_price(open_text), close_id,
                  parse_price(close_text), int(prices[-1]), int(prices[0]), n)  # fmt: skip
        if start in partial:
            candles.append(DayCandle(*fields, None, prices, counts))
        else:
            candles.append(DayCandle(*fields, _twice_median(prices, counts, n)))
    return Reduced(file, levels, totals, first[0], last_counted, first[1], last_row, rows, 0, 0,
                   file_first, prev[1], quirks, candles)  # fmt: skip


def _summed(prices: Any, counts: Any) -> tuple[Any, Any]:
    """Prices (uint64, any order, maybe repeated: "1.5" and "1.50") with their counts, as
    distinct ascending prices with the counts summed. O(n log n)."""
    import numpy as np

    order = np.argsort(prices, kind="stable")
    prices, counts = prices[order], counts[order]
    if len(prices) > 1 and not bool(np.all(prices[1:] > prices[:-1])):
        heads = np.flatnonzero(np.r_[True, prices[1:] != prices[:-1]])
        prices, counts = prices[heads], np.add.reduceat(counts, heads)
    return prices, counts


def _twice_median(prices: Any, counts: Any, n: int) -> int:
    """Twice the median of ``n`` trades at distinct ascending ``prices``: the sum of the
    prices at ranks (n - 1) // 2 and n // 2. O(L)."""
    import numpy as np

    seen = np.cumsum(counts)
    lo = int(np.searchsorted(seen, (n - 1) // 2, side="right"))
    hi = int(np.searchsorted(seen, n // 2, side="right"))
    return int(prices[lo]) + int(prices[hi])


def _day_bounds(
    days: dict[int, list[Any]],
    d: Any,
    inside: Any,
    f: Any,
    last: Any,
    t: Any,
    reps: Any,
    texts: Any,
    cut: int,
    top: int,
) -> None:
    """Fold a block's counted rows (``inside``, in time order) into ``days``: per day start,
    [first_ms, last_ms, open id, open price text, close id, close price text, trades].
    O(rows of the block)."""
    import numpy as np

    day = d[inside]
    heads = np.flatnonzero(np.r_[True, day[1:] != day[:-1]])
    tails = np.r_[heads[1:] - 1, len(day) - 1]
    sums = np.add.reduceat(reps[inside], heads)
    for h, e, n in zip(heads.tolist(), tails.tolist(), sums.tolist(), strict=True):
        i, j = int(inside[h]), int(inside[e])
        close = [int(t[j]), int(min(last[j], top)), texts[j]]
        entry = days.get(int(day[h]))
        if entry is None:
            days[int(day[h])] = [int(t[i]), close[0], int(max(f[i], cut)), texts[i], close[1],
                                 close[2], int(n)]  # fmt: skip
        else:
            entry[1], entry[4], entry[5] = close
            entry[6] += int(n)


#: Distinct price texts held across blocks before they are merged into one table.
_COMPACT = 1 << 21


def _per_price(parts: list[Any]) -> Any:
    """The per-block tables of trades per (day, price text), merged into one. O(rows)."""
    import polars as pl

    if len(parts) == 1:
        return parts[0]
    return pl.concat(parts).group_by("d", "p").agg(pl.col("n").sum())


def _units(texts: Any) -> Any:
    """Plain decimal texts (a polars Series) -> their exact values in 1e-8 units (uint64), as
    :func:`~medianserv.prices.parse_price` reads them: digits, at most one point, at most 8
    decimals, below 10^11; ValueError ``bad_price`` otherwise (a decimal parser alone would
    take ``1e5``, a sign, a space, or round a ninth decimal). Integer arithmetic only."""
    import polars as pl

    if not texts.str.contains(_PRICE).all():
        raise ValueError("bad_price: a price that is not a plain decimal")
    parts = texts.str.split_exact(".", 1).struct.unnest()
    whole = parts[:, 0].cast(pl.UInt64)
    fraction = parts[:, 1].fill_null("").str.pad_end(8, "0").cast(pl.UInt64)
    units = (whole * 100_000_000 + fraction).to_numpy()
    if len(units) and int(units.max()) > MAX_UNITS:
        raise ValueError("bad_price: a price too large")
    return units


def _lines(stream: IO[bytes], block_size: int) -> Iterator[bytes]:
    """The stream in blocks of whole lines, about ``block_size`` bytes each (the last line
    completed with a newline if the file lacks one). A block is one copy at most: the
    pieces read (usually one) joined through a view that ends at the last newline; a read
    that ends on a newline is handed on as it is."""
    parts: list[Any] = []  # the pieces of the block being gathered
    size = 0
    while True:
        data = stream.read(block_size)
        if data:
            parts.append(data)
            size += len(data)
            if size < block_size:
                continue
            cut = data.rfind(b"\n") + 1
            if not cut:
                continue  # no line ends in this piece: read on
            if len(parts) == 1 and cut == len(data):
                yield data
                parts, size = [], 0
                continue
            parts[-1] = memoryview(data)[:cut]
            yield b"".join(parts)
            tail = data[cut:]
            parts, size = ([tail], len(tail)) if tail else ([], 0)
            continue
        if parts:
            buf = b"".join(parts)
            yield buf if buf.endswith(b"\n") else buf + b"\n"
        return


class _Member(io.RawIOBase):
    """The one member of a zip archive, inflated as it is read: ISA-L's inflate, twice as fast
    as zlib's here, fed the member's compressed bytes straight from the archive. The archive
    was checked against its SHA-256 first, which covers what zip's CRC-32 would."""

    def __init__(self, archive: IO[bytes], info: zipfile.ZipInfo) -> None:
        archive.seek(info.header_offset)
        local = archive.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile("no local header where the directory says")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        archive.seek(info.header_offset + 30 + name_len + extra_len)
        if info.compress_type == zipfile.ZIP_DEFLATED:
            from isal import isal_zlib

            self._inflate: Any = isal_zlib.decompressobj(-15)
        elif info.compress_type == zipfile.ZIP_STORED:
            self._inflate = None
        else:
            raise ValueError(f"format: compression {info.compress_type} is not deflate")
        self._archive = archive
        self._left = info.compress_size
        self._pending = b""
        self._at = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` inflated bytes (all that is left for ``n < 0``); b"" at the end. A
        whole inflated chunk is handed over as it is when it fits."""
        if n < 0:
            return b"".join(iter(lambda: self.read(1 << 24), b""))
        while self._at >= len(self._pending):
            if not self._left:
                if self._inflate is not None and self._inflate.unconsumed_tail:
                    self._pending, self._at = self._inflate.decompress(b""), 0
                    continue
                if self._inflate is not None and not self._inflate.eof:
                    raise EOFError("the member's deflate stream is cut short")
                return b""
            raw = self._archive.read(min(self._left, CHUNK))
            if not raw:
                raise EOFError("the archive ends inside its member")
            self._left -= len(raw)
            self._pending = self._inflate.decompress(raw) if self._inflate else raw
            if not self._left and self._inflate is not None:
                self._pending += self._inflate.flush()
            self._at = 0
        at, pending = self._at, self._pending
        if at == 0 and len(pending) <= n:
            self._at = len(pending)
            return pending
        self._at = min(len(pending), at + n)
        return pending[at : self._at]

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _get(
    url: str, timeout: float, sink: IO[bytes] | None = None, digest: Any = None
) -> tuple[bytes, int]:
    """GET ``url``: (body, 0) into memory (a small one: at most 64 KiB are kept), or ('',
    bytes written) into ``sink``, each chunk also fed to ``digest`` (hashing as it downloads).
    HTTPError 404 and others propagate, as urllib raises them.

    Over one kept-alive connection per host and thread (:class:`_Connections`): a pool
    process fetches a file's CHECKSUM and zip, file after file, without a TCP and TLS
    handshake each (two to three round trips a request, against a CDN far away). Through
    urllib instead when a proxy is configured or the server redirects."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or urllib.request.getproxies():
        return _get_urllib(url, timeout, sink, digest)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    for attempt in (1, 2):
        conn = _CONNECTIONS.get(parts.scheme, parts.netloc, timeout)
        try:
            conn.request("GET", target, headers={"User-Agent": "medianserv"})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            _CONNECTIONS.drop(parts.scheme, parts.netloc)
            if attempt == 1 and isinstance(exc, _IDLE_CLOSED):
                continue  # the server closed the kept connection while idle: a new one
            raise urllib.error.URLError(exc) from exc  # as urllib says it: the network
        try:
            if resp.status in (301, 302, 303, 307, 308):
                resp.read()
                return _get_urllib(url, timeout, sink, digest)
            if resp.status != 200:  # a 404 ("not yet") keeps the connection: body read
                body = resp.read(1 << 16)
                if not resp.isclosed():
                    _CONNECTIONS.drop(parts.scheme, parts.netloc)
                raise urllib.error.HTTPError(url, resp.status, resp.reason, resp.headers,
                                             io.BytesIO(body))  # fmt: skip
            out = _read_body(resp, sink, digest)
        except urllib.error.HTTPError:
            raise
        except ValueError:
            _CONNECTIONS.drop(parts.scheme, parts.netloc)
            raise
        except (OSError, http.client.HTTPException) as exc:
            _CONNECTIONS.drop(parts.scheme, parts.netloc)
            raise urllib.error.URLError(exc) from exc
        if not resp.isclosed():  # more than a small body kept: the rest is not read
            _CONNECTIONS.drop(parts.scheme, parts.netloc)
        return out
    raise AssertionError("unreachable")


def _get_urllib(url: str, timeout: float, sink: IO[bytes] | None, digest: Any) -> tuple[bytes, int]:
    request = urllib.request.Request(url, headers={"User-Agent": "medianserv"})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return _read_body(resp, sink, digest)


def _read_body(resp: Any, sink: IO[bytes] | None, digest: Any) -> tuple[bytes, int]:
    if sink is None:
        return resp.read(1 << 16), 0
    total = 0
    while chunk := resp.read(CHUNK):
        total += len(chunk)
        if total > MAX_FILE_BYTES:
            raise ValueError("corrupt: the file is larger than any archive")
        sink.write(chunk)
        if digest is not None:
            digest.update(chunk)
    return b"", total


_IDLE_CLOSED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                http.client.BadStatusLine)  # fmt: skip


class _Connections(threading.local):
    """Kept-alive HTTP(S) connections, one per (scheme, host) and thread."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, str], http.client.HTTPConnection] = {}

    def get(self, scheme: str, netloc: str, timeout: float) -> http.client.HTTPConnection:
        conn = self.open.get((scheme, netloc))
        if conn is None:
            if scheme == "https":
                import ssl

                context = ssl.create_default_context()
                conn = http.client.HTTPSConnection(netloc, timeout=timeout, context=context)
            else:
                conn = http.client.HTTPConnection(netloc, timeout=timeout)
            self.open[(scheme, netloc)] = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def drop(self, scheme: str, netloc: str) -> None:
        conn = self.open.pop((scheme, netloc), None)
        if conn is not None:
            conn.close()


_CONNECTIONS = _Connections()


def archive_exists(base_url: str, file: ArchiveFile, timeout: float = 10.0) -> bool | None:
    """Whether ``file`` is published (its ``.CHECKSUM`` answers): True, False on a 404, None
    when the question could not be asked (the network, another status)."""
    try:
        _get(f"{base_url.rstrip('/')}/{file.path}.CHECKSUM", timeout)
        return True
    except urllib.error.HTTPError as exc:
        return False if exc.code == 404 else None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError):
        return None


def fetch_and_reduce(
    base_url: str,
    file: ArchiveFile,
    cut: int = 0,
    top: int | None = None,
    timeout: float = 60.0,
    engine: str | None = None,
    days: bool = True,
) -> Reduced | Refused:
    """Download ``file`` and its CHECKSUM from ``base_url`` (both now: a file republished with
    a new checksum is checked against the one of its own time), verify, reduce (counting
    only trade ids ``cut..top``, with :func:`reduce_csv`'s ``engine`` and ``days``). Never
    raises for anything the network or the file can do: the answer is then a
    :class:`Refused`. Runs in a pool process (all arguments and results pickle)."""
    url = f"{base_url.rstrip('/')}/{file.path}"
    # the CHECKSUM on this process's helper thread while the zip downloads here: one round
    # trip a file instead of two, where the network's latency is what bounds the import
    checksum = _beside(_get, url + ".CHECKSUM", timeout)
    try:
        with tempfile.TemporaryFile(prefix="medianserv-") as tmp:
            digest = hashlib.sha256()
            _, size = _get(url, timeout, tmp, digest)
            expected = parse_checksum(checksum.result()[0], file.name + ".zip")
            if digest.hexdigest() != expected:
                return Refused(file, "checksum", f"sha256 {digest.hexdigest()} != {expected}")
            tmp.seek(0)
            with zipfile.ZipFile(tmp) as archive:
                infos = archive.infolist()
            names = [i.filename for i in infos]
            if len(names) > 1 and set(names) == {file.name + ".csv"}:
                return Refused(file, "members", f"{len(names)} members named {names[0]}")
            if names != [file.name + ".csv"]:
                return Refused(file, "wrong_file", f"the zip holds {names[:3]}")
            member = _Member(tmp, infos[0])
            counter = _Counting(member)
            stream: Any = counter
            reduced = reduce_csv(stream, file, cut, top, engine=engine, days=days)
            reduced.zip_bytes, reduced.csv_bytes = size, counter.count
            return reduced
    except urllib.error.HTTPError as exc:
        return Refused(file, "missing" if exc.code == 404 else "network", f"HTTP {exc.code}")
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        return Refused(file, "network", str(exc)[:200])
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        return Refused(file, "corrupt", str(exc)[:200])
    except ValueError as exc:
        reason, _, detail = str(exc).partition(": ")
        known = reason in ("format", "empty", "bad_price", "order", "period", "corrupt",
                           "checksum")  # fmt: skip
        return Refused(file, reason if known else "format", detail if known else str(exc))


_helper: cf.ThreadPoolExecutor | None = None  # this process's helper thread, made on first use
_helper_lock = threading.Lock()  # guards _helper's creation


def _beside(fn: Any, *args: Any) -> cf.Future[Any]:
    """``fn(*args)`` on this process's one helper thread: a file's CHECKSUM is fetched there
    (over that thread's own kept-alive connection) while its zip downloads. The thread
    lives as long as the process, idle between files; the interpreter joins it at exit."""
    global _helper
    with _helper_lock:
        if _helper is None:
            _helper = cf.ThreadPoolExecutor(1, thread_name_prefix="archive-checksum")
        return _helper.submit(fn, *args)


class _Counting:
    """A read-through stream that counts the bytes it hands out."""

    closed = False

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._stream.read(n)
        self.count += len(data)
        return data


def warm_up(engine: str | None = None) -> None:
    """Load what reducing with ``engine`` needs (see :func:`reduce_csv`; a pool process
    calls it once, before any file) and reduce a row with it: its first-use costs are paid
    before any clock or file. Where polars reduces, it does so on one thread (the pool's
    processes are the parallelism, and a thread pool per process would only add switching)
    and with its allocator keeping freed pages for reuse (both set before polars is first
    imported)."""
    import os

    os.environ.setdefault("POLARS_MAX_THREADS", "1")
    # Freed memory is kept for the next file's blocks instead of being handed back and
    # faulted in again (48,000 page faults a 390 MiB month): polars' allocator (jemalloc)
    # hands pages back after 0.5-1 s unless told 10 s; glibc's, which holds the inflated
    # blocks, trims its heap top and maps large blocks afresh unless told not to.
    os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:10000,muzzy_decay_ms:10000")
    _keep_freed_memory()
    day = dt.date(2024, 1, 1)
    row = b"1,1.00000000,1.00000000,1,1,%d,True,True\n" % (_ms(day) + 1)
    reduce_csv(io.BytesIO(row), ArchiveFile(day, day, "X"), engine=engine)  # first-use costs


def _keep_freed_memory() -> None:
    """glibc's malloc: blocks up to 32 MiB from the heap (not a fresh mapping each), and the
    heap's top kept up to 256 MiB free. Nothing where the C library is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 256 << 20)


def pool_process_init(parent_pid: int, engine: str | None = None) -> None:
    """Run once in each pool process: load what reducing with ``engine`` needs, and exit as
    soon as the service's process (``parent_pid``) is gone, however it went (a SIGKILL of it
    alone does not reach its pool). A thread polls the parent every 0.2 s, so a pool outlives its
    service by well under a second. The process runs ``POOL_NICENESS`` below the service,
    so that live ingest comes first even with more pool processes than cores (more hide
    the network's latency where each file waits on round trips to a distant server)."""
    import os
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.2)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    with contextlib.suppress(OSError):  # below live ingest, which takes the CPU first
        os.nice(POOL_NICENESS)
    warm_up(engine)
