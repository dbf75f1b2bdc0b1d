"""Archives: planning (pure) and reducing a file, against brute-force oracles; the front of
trade history in TradeIds; a file applied whole or not at all."""

from __future__ import annotations

import datetime as dt
import io
import os
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medianserv.archive import (
    MICROS_FROM_MS,
    ArchiveFile,
    _lines,
    _Member,
    daily_files,
    monthly_file,
    native_reader,
    parse_checksum,
    plan,
    reduce_csv,
)
from medianserv.candles import DayCandle
from medianserv.median import RunningMedian
from medianserv.prices import format_price
from medianserv.symbols import Front, Row, SymbolStats

from .support import run_under_sanitizers

DAY = dt.date(2024, 8, 9)
DAY_MS = 1_723_161_600_000  # 2024-08-09T00:00:00Z

#: Both readers of an archive CSV: the C one (built at install where a compiler is) and polars.
ENGINES = [
    pytest.param("C", marks=pytest.mark.skipif(
        native_reader() is None, reason="the C reader was not built at install (no C compiler)")),
    "polars",
]  # fmt: skip


def test_plan_monthly_then_daily_up_to_yesterday() -> None:
    ms = lambda d: int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp() * 1000)  # noqa: E731
    files = plan("X", ms(dt.date(2024, 12, 30)), ms(dt.date(2025, 2, 10)), dt.date(2025, 2, 4))
    assert [f.name for f in files] == [
        "X-aggTrades-2024-12", "X-aggTrades-2025-01", "X-aggTrades-2025-02-01",
        "X-aggTrades-2025-02-02", "X-aggTrades-2025-02-03",
    ]  # fmt: skip
    assert files[0].path == "data/spot/monthly/aggTrades/X/X-aggTrades-2024-12.zip"
    assert files[-1].path == "data/spot/daily/aggTrades/X/X-aggTrades-2025-02-03.zip"
    assert files[0].end_ms == files[1].start_ms and sorted(files) == files
    assert plan("X", ms(dt.date(2025, 2, 4)), ms(dt.date(2025, 2, 4)), dt.date(2025, 2, 4)) == []
    assert plan("X", 10, 5, dt.date(2025, 2, 4)) == []
    assert monthly_file("X", 2024, 2).last_day == dt.date(2024, 2, 29)
    assert monthly_file("X", 2024, 2).other_kind().name == "X-trades-2024-02"
    assert [f.name for f in daily_files("X", DAY, DAY)] == ["X-aggTrades-2024-08-09"]


def test_checksum_file() -> None:
    digest = "ab" * 32
    assert parse_checksum(f"{digest}  X.zip\n".encode(), "X.zip") == digest
    for bad in (f"{digest}  Y.zip", "zz" * 32 + "  X.zip", f"{digest[:-2]}  X.zip", ""):
        with pytest.raises(ValueError, match="checksum"):
            parse_checksum(bad.encode(), "X.zip")


def agg_csv(rows: list[tuple[int, int, int, int, int]], header: bool = False) -> bytes:
    """aggTrades CSV lines from (agg id, price units, first, last, time ms) rows."""
    lines = [b"agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,"
             b"is_buyer_maker,is_best_match\n"] if header else []  # fmt: skip
    for a, p, f, last, t in rows:
        stamp = t * 1000 if t >= MICROS_FROM_MS else t
        lines.append(b"%d,%d.%08d,0.01000000,%d,%d,%d,True,True\n" % (a, p // 10**8, p % 10**8,
                                                                       f, last, stamp))  # fmt: skip
    return b"".join(lines)


def day_key(day: DayCandle) -> tuple[Any, ...]:
    """A reduction's day as plain values: its fields, and its levels as lists (or None)."""
    levels = None if day.prices is None else (day.prices.tolist(), day.counts.tolist())
    return (*day[:11], levels)


rows_strategy = st.lists(
    st.tuples(st.integers(1, 10**12), st.integers(1, 5), st.integers(0, 5_000)),
    min_size=1,
    max_size=200,
)


def build(spec: list[tuple[int, int, int]], start_ms: int) -> list[tuple[int, int, int, int, int]]:
    """Tiling rows from (price, trades, time step) specs."""
    rows, tid, t = [], 1000, start_ms
    for i, (price, n, step) in enumerate(spec):
        t += step
        rows.append((7 + i, price, tid, tid + n - 1, t))
        tid += n
    return rows


@pytest.mark.parametrize("engine", ENGINES)
@settings(max_examples=60, deadline=None)
@given(
    rows_strategy,
    st.booleans(),
    st.booleans(),
    st.integers(0, 400),
    st.lists(st.integers(0, 199), max_size=4),
    st.lists(st.integers(1, 300), min_size=1, max_size=4),
)
def test_reduce_equals_a_brute_force_count(
    engine: str,
    spec: list[tuple[int, int, int]],
    header: bool,
    micros: bool,
    cut_at: int,
    audit: list[int],
    pieces: list[int],
) -> None:
    """Pairs equal a Counter over every trade (from the cut on); µs times read as ms; a
    header row and rows the 2022-04 audit marked invalid (a duplicate of a row, price 0,
    trade ids -1) are skipped and counted; the stream read in pieces of any size (lines cut
    anywhere) and by either engine."""
    day, start = (dt.date(2025, 3, 1), 1_740_787_200_000) if micros else (DAY, DAY_MS)
    valid_rows = build(spec, start)
    rows = list(valid_rows)
    for at in sorted({i % len(valid_rows) for i in audit}, reverse=True):
        a, _, _, _, t = rows[at]
        rows.insert(at + 1, (a, 0, -1, -1, t))
    file = ArchiveFile(day, day, "X")
    if rows[-1][4] >= start + 86_400_000:
        return  # the rows spill into the next day: another test's case
    cut = rows[0][2] + cut_at
    counter: Counter[int] = Counter()
    for _, p, f, last, _ in valid_rows:
        for _tid in range(max(f, cut), last + 1):
            counter[p] += 1
    data = agg_csv(rows, header)
    if not counter:
        with pytest.raises(ValueError, match="empty"):
            reduce_csv(_Pieces(data, pieces), file, cut, block_size=256, engine=engine)
        return
    r = reduce_csv(_Pieces(data, pieces), file, cut, block_size=256, engine=engine)
    assert list(zip(r.levels.tolist(), r.counts.tolist(), strict=True)) == sorted(counter.items())
    last = valid_rows[-1]
    assert (r.first_id, r.last_id) == (max(cut, rows[0][2]), last[3])
    assert r.last_row == (last[0], last[2], last[3], last[1], last[4])
    assert r.rows == len(rows)
    invalid = len(rows) - len(valid_rows)
    assert r.quirks == {**({"header": 1} if header else {}),
                        **({"invalid_rows": invalid} if invalid else {})}  # fmt: skip


@pytest.mark.parametrize("engine", ENGINES)
@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 30), st.integers(1, 4), st.integers(0, 30_000_000)),
             min_size=1, max_size=120),
    st.booleans(),
    st.integers(0, 500),
    st.integers(0, 500),
    st.lists(st.integers(1, 500), min_size=1, max_size=3),
)  # fmt: skip
def test_each_day_of_a_file_is_its_candle_or_its_levels(
    engine: str,
    spec: list[tuple[int, int, int]],
    micros: bool,
    cut_at: int,
    top_back: int,
    pieces: list[int],
) -> None:
    """A file spanning days (a month's): each UTC day with a trade counted is one DayCandle
    equal to its trades' candle: its median where the file counted every trade of it here
    (a day inside the file, none of its rows cut), its levels where others may hold some
    (the file's first and last days, days with rows outside cut..top), by either engine;
    asked for no days, the same pairs and none."""
    month = (
        (dt.date(2025, 3, 1), dt.date(2025, 3, 31))
        if micros
        else (dt.date(2024, 8, 1), dt.date(2024, 8, 31))
    )
    file = ArchiveFile(*month, "X")
    rows = build([(p * 10**7, n, step) for p, n, step in spec], file.start_ms)
    if rows[-1][4] >= file.end_ms:
        return
    cut = rows[0][2] + cut_at
    top = rows[-1][3] - top_back
    counted: dict[int, list[tuple[int, int]]] = {}  # day -> (id, price) counted
    partial = {rows[0][4] - rows[0][4] % 86_400_000, rows[-1][4] - rows[-1][4] % 86_400_000}
    for _, p, f, last, t in rows:
        day = t - t % 86_400_000
        ids = range(max(f, cut), min(last, top) + 1)
        if len(ids) != last - f + 1:
            partial.add(day)
        counted.setdefault(day, []).extend((i, p) for i in ids)
    expected = []
    for day, trades in sorted(counted.items()):
        if not trades:
            continue
        prices = sorted(p for _, p in trades)
        n = len(prices)
        times = [t for _, _, f, last, t in rows if t - t % 86_400_000 == day
                 and max(f, cut) <= min(last, top)]  # fmt: skip
        levels = sorted(Counter(prices).items())
        fields = (day, times[0], times[-1], trades[0][0], trades[0][1], trades[-1][0],
                  trades[-1][1], prices[-1], prices[0], n)  # fmt: skip
        if day in partial:
            expected.append((*fields, None, ([p for p, _ in levels], [c for _, c in levels])))
        else:
            expected.append((*fields, prices[(n - 1) // 2] + prices[n // 2], None))
    data = agg_csv(rows)
    if not expected:
        with pytest.raises(ValueError, match="empty"):
            reduce_csv(_Pieces(data, pieces), file, cut, top, block_size=300, engine=engine)
        return
    r = reduce_csv(_Pieces(data, pieces), file, cut, top, block_size=300, engine=engine)
    assert [day_key(d) for d in r.days] == expected
    assert sum(d.trades for d in r.days) == r.trades
    plain = reduce_csv(_Pieces(data, pieces), file, cut, top, 300, engine, days=False)
    assert plain.days == [] and plain.levels.tolist() == r.levels.tolist()
    assert plain.counts.tolist() == r.counts.tolist()


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda rows: [rows[1], rows[0], *rows[2:]], "order"),  # ids backwards
        (
            lambda rows: [
                rows[0],
                (rows[1][0], rows[1][1], rows[1][2] + 1, rows[1][3], rows[1][4]),
                *rows[2:],
            ],
            "order",
        ),
        (
            lambda rows: [
                rows[0],
                (rows[1][0], rows[1][1], rows[1][2] - 1, rows[1][3], rows[1][4]),
                *rows[2:],
            ],
            "order",
        ),
        (lambda rows: [rows[0], (rows[1][0] + 1, *rows[1][1:]), *rows[2:]], "order"),  # agg ids
        (lambda rows: [*rows[:-1], (*rows[-1][:4], DAY_MS - 1)], "order"),  # time goes back
        (lambda rows: [(*r[:4], r[4] + 86_400_000) for r in rows], "period"),  # another day
    ],
)
@pytest.mark.parametrize("engine", ENGINES)
def test_files_that_do_not_tile_are_refused(mutate: Any, reason: str, engine: str) -> None:
    rows = build([(5, 2, 10), (6, 1, 10), (5, 3, 10)], DAY_MS)
    with pytest.raises(ValueError, match=f"^{reason}"):
        reduce_csv(io.BytesIO(agg_csv(mutate(rows))), ArchiveFile(DAY, DAY, "X"), engine=engine)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_row_of_no_trades_is_refused(engine: str) -> None:
    """A row whose last trade id is below its first (``l = f - 1``) would tile with its
    neighbours and count nothing: it is refused all the same."""
    rows = build([(5, 2, 10), (6, 0, 10), (5, 3, 10)], DAY_MS)
    with pytest.raises(ValueError, match=r"^order"):
        reduce_csv(io.BytesIO(agg_csv(rows)), ArchiveFile(DAY, DAY, "X"), engine=engine)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("start", [b"\xef\xbb\xbf", b"\n", b" ", b"#"])
def test_only_a_line_of_words_is_a_header(engine: str, start: bytes) -> None:
    """A header row starts with a letter; a first row led by anything else (a byte-order
    mark, an empty line, a space, a comment sign) is never skipped as a header, which would
    drop a row of trades unseen: the file is refused, or read whole (polars drops a
    byte-order mark and spaces before a number)."""
    data = start + agg_csv(build([(5, 1, 10), (6, 1, 10)], DAY_MS))
    try:
        r = reduce_csv(io.BytesIO(data), ArchiveFile(DAY, DAY, "X"), engine=engine)
    except ValueError as exc:
        assert str(exc).startswith(("format", "bad_price"))
        return
    assert (r.levels.tolist(), r.counts.tolist(), r.rows, r.quirks) == ([5, 6], [1, 1], 2, {})
    assert engine == "polars" and start in (b"\xef\xbb\xbf", b" ")


@pytest.mark.skipif(native_reader() is None, reason="the C reader was not built at install")
def test_the_c_reader_refuses_misuse() -> None:
    """Not initialised, initialised twice, fed after a refusal: an exception, never a crash
    or a result."""
    reducer_type = native_reader().Reducer
    with pytest.raises(RuntimeError):
        reducer_type.__new__(reducer_type).feed(b"1,1.0,1,1,1,1,True,True\n")
    reducer = reducer_type(True, 0, 10**9, DAY_MS, DAY_MS + 86_400_000, MICROS_FROM_MS * 100)
    with pytest.raises(RuntimeError):
        reducer.__init__(True, 0, 10**9, DAY_MS, DAY_MS + 86_400_000, MICROS_FROM_MS * 100)
    with pytest.raises(ValueError, match=r"^bad_price"):
        reducer.feed(b"7,1e5,1,1,1,%d,True,True\n" % (DAY_MS + 1))
    with pytest.raises(ValueError, match=r"^bad_price"):  # spent: the same refusal again
        reducer.feed(agg_csv(build([(5, 1, 10)], DAY_MS)))
    with pytest.raises(ValueError, match=r"^bad_price"):
        reducer.finish()


@pytest.mark.parametrize("price", [b"1e5", b"-1.00000000", b" 1.0", b"1.123456789", b"", b"NaN",
                                   b"123456789012.0", b"1.", b".5", b"+1", b"1.5.5",
                                   b"\xef\xbc\x91"])  # fmt: skip
@pytest.mark.parametrize("engine", ENGINES)
def test_prices_that_are_not_plain_decimals_are_refused(price: bytes, engine: str) -> None:
    good = agg_csv(build([(5, 1, 10), (6, 1, 10)], DAY_MS)).split(b"\n")
    fields = good[0].split(b",")
    fields[1] = price
    data = b"\n".join([b",".join(fields), *good[1:]])
    with pytest.raises(ValueError, match=r"^bad_price|^format"):
        reduce_csv(io.BytesIO(data), ArchiveFile(DAY, DAY, "X"), engine=engine)


@pytest.mark.skipif(native_reader() is None, reason="the C reader was not built at install")
@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 10**9), st.integers(1, 3), st.integers(0, 100)),
             min_size=1, max_size=8),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 2),
                       st.sampled_from(b"0123456789.,-\n\r eT+\x80\xc3\xff")), max_size=3),
)  # fmt: skip
def test_the_c_reader_is_never_more_lenient_than_polars(
    spec: list[tuple[int, int, int]], edits: list[tuple[int, int, int]]
) -> None:
    """A file with bytes changed, inserted or deleted anywhere: what the C reader accepts,
    polars accepts too, with the same result (the C reader is stricter where polars lets a
    row with an extra field or a stray carriage return pass)."""
    data = bytearray(agg_csv(build(spec, DAY_MS)))
    for at, op, byte in edits:
        k = at % len(data)
        if op == 0:
            data[k] = byte
        elif op == 1:
            data.insert(k, byte)
        else:
            del data[k]

    def run(engine: str) -> Any:
        r = reduce_csv(io.BytesIO(bytes(data)), ArchiveFile(DAY, DAY, "X"), engine=engine)
        return (r.levels.tolist(), r.counts.tolist(), r.first_id, r.last_id, r.first_agg,
                r.last_row, r.rows, r.quirks, r.file_first_id, r.file_last_id,
                [day_key(d) for d in r.days])  # fmt: skip

    try:
        native = run("C")
    except ValueError as exc:
        assert str(exc).split(":")[0] in ("format", "bad_price", "order", "period", "empty")
        return
    assert run("polars") == native


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("field", [2, 6, 7])  # quantity, is_buyer_maker, is_best_match
@pytest.mark.parametrize("bad", [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf"])
def test_invalid_utf8_in_a_field_not_read_refuses_the_file(
    engine: str, field: int, bad: bytes
) -> None:
    """A byte sequence that is not UTF-8 (a stray byte, a cut sequence, a surrogate, an
    overlong form), even in a field neither reader needs, refuses the file in both readers
    (polars reads every field as text; the C reader checks the fields it skips); valid
    UTF-8 there is no reason to refuse."""
    rows = build([(10**9, 2, 0), (10**9 + 1, 1, 5)], DAY_MS)
    fields = agg_csv(rows).split(b"\n")[1].split(b",")
    fields[field] = fields[field][:1] + bad + fields[field][1:]
    data = agg_csv(rows[:1]) + b",".join(fields) + b"\n"
    with pytest.raises(ValueError, match=r"^format"):
        reduce_csv(io.BytesIO(data), ArchiveFile(DAY, DAY, "X"), engine=engine)
    fields[field] = fields[field].replace(bad, "é".encode())
    data = agg_csv(rows[:1]) + b",".join(fields) + b"\n"
    assert reduce_csv(io.BytesIO(data), ArchiveFile(DAY, DAY, "X"), engine=engine).rows == 2


@pytest.mark.parametrize("engine", ENGINES)
def test_a_last_price_of_2_to_the_63_units_and_more_stays_positive(engine: str) -> None:
    """Prices go up to 10^19 - 1 units (11 integer digits), past a signed 64-bit integer's
    2^63 - 1: the last row's price (the front's price below, a symbol's last price) comes
    back exact and positive, whatever the reader."""
    top = 10**19 - 1
    prices = [2**63 - 1, 2**63, 2**63 + 1, top]
    rows = build([(p, 1, 1) for p in prices], DAY_MS)
    reduced = reduce_csv(io.BytesIO(agg_csv(rows)), ArchiveFile(DAY, DAY, "X"), engine=engine)
    assert reduced.last_row[3] == top
    assert sorted(reduced.levels.tolist()) == prices
    for cut in range(4):
        rows_cut = rows[: cut + 1]
        r = reduce_csv(io.BytesIO(agg_csv(rows_cut)), ArchiveFile(DAY, DAY, "X"), engine=engine)
        assert r.last_row[3] == prices[cut] > 0


_UNDER_SANITIZERS = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("medianserv._reduce", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.modules["medianserv._reduce"] = module  # what archive.native_reader() imports
import pytest
only = "not sanitizers and not connection and not pool"  # the readers' tests, in this process
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-k", only, __file__]))
"""


@pytest.mark.skipif(native_reader() is None, reason="the C reader was not built at install")
def test_the_c_reader_under_address_and_undefined_behaviour_sanitizers(tmp_path: Path) -> None:
    """The C reader built with AddressSanitizer and UndefinedBehaviorSanitizer runs this
    file's tests of it (the property tests included): any out-of-bounds access, use after
    free or undefined operation stops the run. Skipped without gcc and its sanitizer
    runtimes."""
    source = Path(__file__).parents[1] / "medianserv" / "_reduce.c"
    script = _UNDER_SANITIZERS.replace("__file__", repr(__file__))
    done = run_under_sanitizers([source], tmp_path / "_reduce_sanitized.so", script, [],
                                timeout=600)  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert " passed" in done.stdout and "error" not in done.stderr.lower(), done.stderr[-3000:]


@pytest.mark.parametrize("engine", ENGINES)
def test_trades_files_count_one_trade_a_row(engine: str) -> None:
    lines = [b"%d,%s,1.0,2.0,%d,True,True\n" % (100 + i, format_price(p).encode(), DAY_MS + i)
             for i, p in enumerate([5, 7, 5, 9])]  # fmt: skip
    r = reduce_csv(io.BytesIO(b"".join(lines)), ArchiveFile(DAY, DAY, "X", "trades"),
                   engine=engine)  # fmt: skip
    assert list(zip(r.levels.tolist(), r.counts.tolist(), strict=True)) == [(5, 2), (7, 1), (9, 1)]
    assert (r.first_id, r.last_id, r.first_agg) == (100, 103, None)


# -- the front of trade history ---------------------------------------------------------------


def test_first_trade_id_follows_the_import() -> None:
    stats = SymbolStats("X")
    stats.baseline(99, 5_000)
    stats.apply(100, 7, 6_000)
    assert stats.view().first_trade_id == 100 and stats.view().first_trade_time == 4_000
    stats.start_history(10, 1_000)
    v = stats.view()
    assert (v.first_trade_id, v.history_complete, v.history_missing) == (100, False, 90)
    assert stats.apply_levels(10, 49, [5, 6], [30, 10], 1_500) == 40
    v = stats.view()
    assert (v.first_trade_id, v.first_trade_time, v.count) == (10, 1_000, 41)
    assert stats.apply_levels(10, 49, [5], [40], 1_500) == 0  # never twice
    assert stats.apply_rows([Row(50, 99, 8, 1_600)]) == 50
    v = stats.view()
    assert v.history_complete and v.history_missing == 0 and v.count == 91
    m = RunningMedian()
    for p, n in ((5, 30), (6, 10), (8, 50), (7, 1)):
        m.add(p, n)
    assert v.twice_median == m.twice_median


def test_a_file_is_stored_whole_or_not_at_all() -> None:
    """Between two slices of a file's pairs a snapshot skips the symbol; after the last, it
    stores the levels and the moved front together."""
    seen: list[object] = []

    class Probed(SymbolStats):
        def _between_pieces(self) -> None:  # the lock is released here
            if len(seen) < 2 and self.merged == 14:
                seen.append(self.harvest())
                seen.append(self.view().count)

    stats = Probed("X")
    stats.baseline(999, 5_000)
    stats.start_history(0, 1_000)
    assert stats.harvest() is not None
    assert stats.apply_levels(0, 99, list(range(1, 101)), [1] * 100, 2_000, piece=7) == 100
    assert seen == [None, 14]  # two slices merged, nothing stored
    state = stats.harvest()
    assert state is not None and state.count == 100 and len(state.levels) == 100
    assert state.ids.front == Front(100, 999, 2_000, 4_000, None)
    stats._check()


def test_bad_pairs_are_refused_before_anything_is_applied() -> None:
    """Pairs that do not add up, are not ascending or have a count that is not positive are
    refused whole (ValueError); the front and the median are untouched."""
    stats = SymbolStats("X")
    stats.baseline(99, 5_000)
    stats.start_history(0, 1_000)
    for levels, counts in (([1, 2], [50, 49]), ([2, 1], [50, 50]), ([1, 2], [101, -1]),
                           ([1, 1], [50, 50]), ([1], [100, 0])):  # fmt: skip
        with pytest.raises(ValueError):
            stats.apply_levels(0, 99, levels, counts, 2_000)
        assert stats.view().count == 0 and stats.ids.front == Front(0, 99, 1_000, 4_000)
        stats._check()


def test_a_merge_that_breaks_off_is_never_stored() -> None:
    """Finding 3b: an error half way through a merge left the front moved and part of a file
    counted. Now the front stays, the claim is never stored, and the symbol is marked damaged:
    its last snapshot (what a restart restores) stays right."""

    class Breaking(SymbolStats):
        def _between_pieces(self) -> None:
            raise MemoryError("out of memory half way")

    stats = Breaking("X")
    stats.baseline(99, 5_000)
    stats.start_history(0, 1_000)
    assert stats.harvest() is not None
    with pytest.raises(MemoryError):
        stats.apply_levels(0, 49, [5, 6], [30, 20], 1_500, piece=1)
    assert stats.damaged and stats.ids.front == Front(0, 99, 1_000, 4_000)
    assert stats.harvest() is None  # never stored again
    assert stats.apply_levels(0, 49, [5, 6], [30, 20], 1_500) == 0  # nor merged into


def test_rows_during_a_merge_do_not_count_the_front_twice() -> None:
    """Finding 3a: rows covering the front's bottom applied while a file was being merged
    were counted, then the file too. The file's ids are claimed: the rows leave them alone."""

    class Interleaved(SymbolStats):
        def _between_pieces(self) -> None:
            assert self.apply_rows([Row(0, 3, 5, 1_100)]) == 0  # the claimed bottom

    stats = Interleaved("X")
    stats.baseline(99, 5_000)
    stats.start_history(0, 1_000)
    assert stats.apply_levels(0, 49, [5, 6], [30, 20], 1_500, last_price=6, piece=1) == 50
    v = stats.view()
    assert v.count == 50 and stats.ids.front == Front(50, 99, 1_500, 4_000, 6)
    stats._check()


@pytest.mark.parametrize("engine", ENGINES)
def test_one_price_written_two_ways_is_one_level(engine: str) -> None:
    """``1.5`` and ``1.50000000`` are the same price: one level, their trades added."""
    rows = [(7, 150_000_000, 10, 11, DAY_MS + 1), (8, 150_000_000, 12, 12, DAY_MS + 2)]
    text = agg_csv(rows).replace(b"1.50000000", b"1.5", 1)
    r = reduce_csv(io.BytesIO(text), ArchiveFile(DAY, DAY, "X"), engine=engine)
    assert (r.levels.tolist(), r.counts.tolist()) == ([150_000_000], [3])


class _Pieces(io.RawIOBase):
    """A stream that hands out its bytes in pieces of the sizes given (cycled), fewer than
    asked for: how an inflater's reads arrive."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._data, self._sizes, self._at, self._k = data, sizes, 0, 0

    def read(self, n: int = -1) -> bytes:
        size = min(n, self._sizes[self._k % len(self._sizes)])
        self._k += 1
        out = self._data[self._at : self._at + size]
        self._at += len(out)
        return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    st.booleans(),
    st.lists(st.integers(1, 40), min_size=1, max_size=5),
    st.integers(1, 64),
)
def test_blocks_are_whole_lines_and_lose_nothing(
    lines: list[bytes], final_newline: bool, sizes: list[int], block: int
) -> None:
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    blocks = list(_lines(_Pieces(data, sizes), block))
    assert all(b.endswith(b"\n") for b in blocks)
    whole = b"".join(blocks)
    assert whole == (data if not data or data.endswith(b"\n") else data + b"\n")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=5000), st.sampled_from([zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED]),
       st.integers(1, 700))  # fmt: skip
def test_a_member_inflates_to_its_content_whatever_the_read_size(
    content: bytes, method: int, n: int
) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        z.writestr("x.csv", content * 3)
    with zipfile.ZipFile(buf) as z:
        info = z.infolist()[0]
    member, out = _Member(buf, info), []
    while piece := member.read(n):
        assert len(piece) <= n
        out.append(piece)
    assert b"".join(out) == content * 3


def test_a_member_cut_short_is_an_eof_error() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.csv", bytes(range(256)) * 4000)
    with zipfile.ZipFile(buf) as z:
        info = z.infolist()[0]
    info.compress_size //= 2  # the directory says less than the stream needs
    with pytest.raises(EOFError):
        _Member(buf, info).read(-1)


def test_files_are_fetched_over_kept_connections() -> None:
    """A pool process fetches file after file (a zip and, on its helper thread at the same
    time, its CHECKSUM; and the 404s of files not out yet) over two kept-alive connections,
    one per thread, not a TCP (and TLS) handshake per request; and what it reduces is the
    same as over fresh connections."""
    import time as _time

    from medianserv.archive import _CONNECTIONS, Reduced, _beside, fetch_and_reduce, plan
    from medianserv.sim import SimConfig, Simulator

    config = SimConfig(symbols=3, paused=True, seed=41, past_days=70, past_trades_per_day=30)
    with Simulator(config) as sim:
        host = sim.archive_url.split("//")[1]

        def drop() -> None:  # both threads' connections
            _CONNECTIONS.drop("http", host)
            _beside(_CONNECTIONS.drop, "http", host).result()

        symbol = next(iter(sim.truth()))
        now_ms = int(_time.time() * 1000)
        files = plan(symbol, now_ms - 75 * 86_400_000, now_ms, dt.datetime.now(dt.UTC).date())
        drop()
        before, requests = sim.archives.connections, sim.archives.requests
        kept = [fetch_and_reduce(sim.archive_url, f) for f in files]
        assert sim.archives.requests - requests == 2 * len(files)
        assert sim.archives.connections - before == 2
        fresh = []
        for f in files:  # each over connections of its own
            drop()
            fresh.append(fetch_and_reduce(sim.archive_url, f))
        assert sim.archives.connections - before == 2 + 2 * len(files)
    reduced = [r for r in kept if isinstance(r, Reduced)]
    assert reduced and len(reduced) == sum(isinstance(r, Reduced) for r in fresh)
    for a, b in zip(kept, fresh, strict=True):
        if isinstance(a, Reduced):
            assert isinstance(b, Reduced)
            assert (a.levels.tolist(), a.counts.tolist(), a.first_id, a.last_id) == (
                b.levels.tolist(), b.counts.tolist(), b.first_id, b.last_id)  # fmt: skip
        else:
            assert (a.reason, a.file) == (b.reason, b.file)  # type: ignore[union-attr]


def test_pool_processes_run_below_the_service() -> None:
    """A pool process lowers its CPU priority (``nice``), so live ingest in the service's
    process comes first even with more pool processes than cores."""
    import concurrent.futures as cf
    import multiprocessing

    from medianserv.archive import POOL_NICENESS, pool_process_init

    with cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                initializer=pool_process_init,
                                initargs=(os.getpid(),)) as pool:  # fmt: skip
        theirs = pool.submit(os.nice, 0).result(timeout=120)
    assert theirs == min(19, os.nice(0) + POOL_NICENESS)


def test_pool_size_by_reader_and_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--history-workers`` wins; by default (0) twice the cores, between 2 and 8, with the
    C reader (small processes, below live ingest: more than the cores hide round trips),
    one core left for live ingest with polars'; ``--archive-reader`` must be one of three."""
    import dataclasses

    import medianserv.archive as archive_module
    from medianserv.config import Config
    from medianserv.errors import ConfigError

    for cores, c_reader, polars_reader in ((1, 2, 1), (2, 4, 1), (3, 6, 2), (16, 8, 15)):
        monkeypatch.setattr(os, "cpu_count", lambda n=cores: n)
        assert Config(archive_reader="polars").pool_size() == polars_reader
        if native_reader() is not None:
            assert Config().pool_size() == Config(archive_reader="C").pool_size() == c_reader
    assert Config(history_workers=3, archive_reader="polars").pool_size() == 3
    with pytest.raises(ConfigError):
        dataclasses.replace(Config(), archive_reader="rust").validate()
    # where the C reader was not built: auto means polars', and asking for C stops the start
    monkeypatch.setattr(archive_module, "native_reader", lambda: None)
    assert (Config().reader(), Config().pool_size()) == ("polars", 15)
    Config(archive_reader="polars").validate()
    with pytest.raises(ConfigError, match="not built"):
        Config(archive_reader="C").validate()
