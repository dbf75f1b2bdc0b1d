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

Parsing is vectorised (pyarrow's CSV reader, in C++, in blocks, so memory stays bounded by
the block size whatever the file) and exact: prices are read as 8-decimal fixed-point
numbers, whose 128-bit unscaled integer *is* the price in 1e-8 units; no float is involved.
Before anything is returned the rows are checked: aggregate ids consecutive, trade ids tiling
(each row starts where the previous one ended), times not going back and within the file's
period, prices plain and in range, the CSV inside named for the symbol and period asked for.
A file failing any check is refused whole (:class:`Refused`, with the reason); nothing of it
is applied. Timestamps are milliseconds before 2025-01-01 and microseconds from then on;
:func:`reduce_csv` reads both and returns milliseconds.
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import io
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from .prices import MAX_UNITS

if TYPE_CHECKING:  # numpy and pyarrow are imported where files are reduced, not at start-up
    import numpy as np

__all__ = [
    "ArchiveFile",
    "Reduced",
    "Refused",
    "daily_files",
    "fetch_and_reduce",
    "monthly_file",
    "parse_checksum",
    "plan",
    "pool_process_init",
    "reduce_csv",
]

DAY_MS = 86_400_000
#: From this instant on, archive timestamps are in microseconds (before it, milliseconds).
MICROS_FROM_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
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
        """Path of the zip under the archive's base URL."""
        period = "monthly" if self.monthly else "daily"
        return f"data/spot/{period}/{self.kind}/{self.symbol}/{self.name}.zip"

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
    parts = text.decode("ascii", errors="replace").split()
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
) -> Reduced:
    """Parse one archive CSV (aggTrades or trades) and reduce it to (price, count) pairs,
    checking every row (see the module's docstring), counting only trade ids from ``cut`` to
    ``top`` (the rest was applied already, or is not history). Raises ValueError with a
    reason prefix (``format:``, ``empty:``, ``bad_price:``, ``order:``, ``period:``) when the
    file cannot be used, or has no trade within the cut. O(rows); memory O(block size +
    distinct prices)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    head = stream.read(1)
    skip = 0
    if head and not head.isdigit():  # a header row: tolerated, skipped
        skip = 1
    columns = _AGG if file.kind == "aggTrades" else _TRADES
    types = {"p": pa.string(), "f": pa.int64(), "T": pa.int64()}
    wanted = ["p", "f", "T"]
    if file.kind == "aggTrades":
        types.update(a=pa.int64(), l=pa.int64())
        wanted += ["a", "l"]
    reader = pcsv.open_csv(
        io.BufferedReader(_Prefixed(head, stream)),
        read_options=pcsv.ReadOptions(
            column_names=list(columns), skip_rows=skip, use_threads=False, block_size=block_size
        ),
        parse_options=pcsv.ParseOptions(quote_char=False, double_quote=False),
        convert_options=pcsv.ConvertOptions(column_types=types, include_columns=wanted),
    )
    top_id = (1 << 63) - 1 if top is None else top
    level_parts: list[Any] = []
    count_parts: list[Any] = []
    prev: tuple[int, int, int] | None = None  # (agg id, last id, time) of the previous row
    file_first: int | None = None  # first trade id of the file
    first: tuple[int, int | None] | None = None  # first trade id and aggregate counted
    last_counted: int | None = None
    rows = 0
    last_row = (0, 0, 0, 0, 0)
    start, end = file.start_ms, file.end_ms
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except pa.ArrowInvalid as exc:
            reason = "bad_price" if "ecimal" in str(exc) else "format"
            raise ValueError(f"{reason}: {str(exc)[:200]}") from exc
        n = batch.num_rows
        if not n:
            continue
        text = batch.column("p")
        # a plain decimal with at most 8 decimals, as parse_price() accepts: no sign, no
        # exponent, no space (a decimal parser alone would take "1e5")
        if text.null_count or not pc.all(pc.match_substring_regex(text, _PRICE)).as_py():
            raise ValueError("bad_price: a price that is not a plain decimal")
        prices = pc.cast(text, pa.decimal128(20, 8))
        # a decimal128 is its unscaled integer (here: 1e-8 units), low 64 bits first; the
        # regex keeps it non-negative and under 10^19, so the low word alone holds it
        words = np.frombuffer(prices.buffers()[1], dtype=np.uint64)[2 * prices.offset :]
        units, high = words[0 : 2 * n : 2], words[1 : 2 * n : 2]
        if np.any(high != 0) or np.any(units > MAX_UNITS):
            raise ValueError("bad_price: a price too large")
        f = batch.column("f").to_numpy()
        t = batch.column("T").to_numpy()
        if file.kind == "aggTrades":
            a = batch.column("a").to_numpy()
            last = batch.column("l").to_numpy()
        else:
            a, last = f, f
        if batch.column("f").null_count or batch.column("T").null_count:
            raise ValueError("format: an empty field")
        t = np.where(t >= MICROS_FROM_MS * 100, t // 1000, t)  # microseconds from 2025 on
        if np.any(last < f) or np.any(f[1:] != last[:-1] + 1) or np.any(a[1:] != a[:-1] + 1):
            raise ValueError("order: trade ids do not tile (an overlap, a hole, or going back)")
        if np.any(t[1:] < t[:-1]):
            raise ValueError("order: times go back")
        if prev is not None and (f[0] != prev[1] + 1 or a[0] != prev[0] + 1 or t[0] < prev[2]):
            raise ValueError("order: trade ids do not tile across blocks")
        if t[0] < start or t[-1] >= end:
            raise ValueError(f"period: times outside {file.first_day}..{file.last_day}")
        if file_first is None:
            file_first = int(f[0])
        prev = (int(a[-1]), int(last[-1]), int(t[-1]))
        rows += n
        clip = cut > f[0] or last[-1] > top_id  # count only ids within cut..top
        if clip:
            keep = (last >= cut) & (f <= top_id)
            units, f, last, a, t = units[keep], f[keep], last[keep], a[keep], t[keep]
            if not len(units):
                continue
        last_row = (int(a[-1]), int(f[-1]), int(last[-1]), int(units[-1]), int(t[-1]))
        if clip:
            f, last = np.maximum(f, cut), np.minimum(last, top_id)
        if first is None:
            first = (int(f[0]), int(a[0]) if file.kind == "aggTrades" else None)
        last_counted = int(last[-1])
        counts = pa.array(last - f + 1)
        grouped = (
            pa.table({"p": pa.array(units), "c": counts}).group_by("p").aggregate([("c", "sum")])
        )
        level_parts.append(grouped.column("p"))
        count_parts.append(grouped.column("c_sum"))
    if prev is None or file_first is None:
        raise ValueError("empty: no rows")
    if first is None or last_counted is None:
        raise ValueError("empty: no trade within the ids asked for")
    table = pa.table({"p": pa.chunked_array(level_parts), "c": pa.chunked_array(count_parts)})
    merged = table.group_by("p").aggregate([("c", "sum")])
    order = pc.sort_indices(merged, sort_keys=[("p", "ascending")])
    levels = merged.column("p").take(order).to_numpy().astype(np.uint64)
    totals = merged.column("c_sum").take(order).to_numpy().astype(np.int64)
    if int(totals.sum()) != last_counted - first[0] + 1:
        raise ValueError("order: counts do not add up to the ids")
    return Reduced(file, levels, totals, first[0], last_counted, first[1], last_row, rows, 0, 0,
                   file_first, prev[1])  # fmt: skip


class _Prefixed(io.RawIOBase):
    """A stream with ``head`` (already read) put back in front."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            n = len(self._head)
            buffer[:n] = self._head
            self._head = b""
            self.consumed += n
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        self.consumed += len(data)
        return len(data)


def _get(url: str, timeout: float, sink: IO[bytes] | None = None) -> tuple[bytes, int]:
    """GET ``url``: (body, 0) into memory, or ('', bytes written) into ``sink``, hashing
    nothing. HTTPError 404 and others propagate."""
    request = urllib.request.Request(url, headers={"User-Agent": "medianserv"})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        if sink is None:
            return resp.read(1 << 16), 0
        total = 0
        while chunk := resp.read(CHUNK):
            total += len(chunk)
            if total > MAX_FILE_BYTES:
                raise ValueError("corrupt: the file is larger than any archive")
            sink.write(chunk)
        return b"", total


def fetch_and_reduce(
    base_url: str, file: ArchiveFile, cut: int = 0, top: int | None = None, timeout: float = 60.0
) -> Reduced | Refused:
    """Download ``file`` and its CHECKSUM from ``base_url``, verify, reduce (counting only
    trade ids ``cut..top``). Never raises for anything the network or the file can do: the
    answer is then a :class:`Refused`. Runs in a pool process (all arguments and results
    pickle)."""
    url = f"{base_url.rstrip('/')}/{file.path}"
    try:
        checksum, _ = _get(url + ".CHECKSUM", timeout)
        expected = parse_checksum(checksum, file.name + ".zip")
        with tempfile.TemporaryFile(prefix="medianserv-") as tmp:
            _, size = _get(url, timeout, tmp)
            tmp.seek(0)
            digest = hashlib.sha256()
            while chunk := tmp.read(CHUNK):
                digest.update(chunk)
            if digest.hexdigest() != expected:
                return Refused(file, "checksum", f"sha256 {digest.hexdigest()} != {expected}")
            tmp.seek(0)
            with zipfile.ZipFile(tmp) as archive:
                names = archive.namelist()
                if names != [file.name + ".csv"]:
                    return Refused(file, "wrong_file", f"the zip holds {names[:3]}")
                with archive.open(names[0]) as csv:
                    counter = _Counting(csv)
                    reduced = reduce_csv(counter, file, cut, top)  # type: ignore[arg-type]
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


class _Counting:
    """A read-through stream that counts the bytes it hands out."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self.count += len(data)
        return data


def warm_up() -> None:
    """Load what reducing needs (a pool process calls it once, before any file)."""
    import pyarrow.compute
    import pyarrow.csv  # noqa: F401


def pool_process_init(parent_pid: int) -> None:
    """Run once in each pool process: load what reducing needs, and exit as soon as the
    service's process (``parent_pid``) is gone, however it went (a SIGKILL of it alone does
    not reach its pool). A thread polls the parent every 0.2 s, so a pool outlives its
    service by well under a second."""
    import os
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.2)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    warm_up()
