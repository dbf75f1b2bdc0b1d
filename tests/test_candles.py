"""Median candles against brute-force oracles: both period twins, the book through the real
SymbolStats (live trades, jumps, backfills, restarts, retention), LMDB round trips and the
window selection of GET /{symbol}/candles."""

from __future__ import annotations

import datetime as dt
import io
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon.testing
import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from medianserv import candles, symbols
from medianserv.api import create_app
from medianserv.archive import ArchiveFile, native_reader, reduce_csv
from medianserv.candles import (
    DAY,
    HOUR,
    INTERVALS,
    CandleRow,
    Candles,
    CandleState,
    DayCandle,
    Delta,
    PyPeriod,
    final_flags,
    from_record,
    landings,
    period_key,
    period_row,
    quiet,
    quiet_parts,
    restore_packed,
    select_rows,
    state_key,
    then_candles,
)
from medianserv.candles import compact_levels as py_compact
from medianserv.candles import expand_levels as py_expand
from medianserv.median import CRunningMedian
from medianserv.prices import format_median, format_price
from medianserv.store import FORMAT_VERSION, Store, StoreError, symbol_prefix
from medianserv.symbols import Row, SymbolStats

from .test_api import State
from .test_archive import agg_csv

try:
    from medianserv._native import Period as CPeriod  # type: ignore[attr-defined]
    from medianserv._native import compact_levels as c_compact  # type: ignore[attr-defined]
    from medianserv._native import expand_levels as c_expand  # type: ignore[attr-defined]
except ImportError:
    CPeriod = c_compact = c_expand = None

TWINS = [False] + ([True] if CRunningMedian is not None else [])
PERIODS = [PyPeriod] + ([CPeriod] if CPeriod is not None else [])
LENGTHS = [length for _, length in INTERVALS]


@pytest.fixture(autouse=True)
def _defaults() -> Iterator[None]:
    yield
    symbols.use_compiled(CRunningMedian is not None)
    symbols.keep_candles(True, [7 * 86_400_000, 90 * 86_400_000, None], ())
    symbols.expect_history(None)


# -- the period twins -------------------------------------------------------------------------

period_ops = st.lists(
    st.tuples(st.integers(0, 10**6), st.integers(0, 3),
              st.integers(0, 2**64 - 1) | st.integers(1, 9), st.integers(1, 5)),
    max_size=60,
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(period_ops, period_ops, st.integers(0, 10**6))
def test_period_twins_equal_each_other_and_the_oracle(
    ops: list[tuple[int, int, int, int]], other: list[tuple[int, int, int, int]], at: int
) -> None:
    """add, fold, copy, add_in and the row of both twins: the same fields and levels, and a
    row equal to one computed from the trades themselves."""
    keys = []
    for kind in PERIODS:
        p, q = kind(60_000, 3_600_000), kind(60_000, 3_600_000)
        trades: list[tuple[int, int, int, int]] = []
        for lo, extra, price, times in ops:
            p.add(lo, lo + extra, price, times)
            trades.append((lo, lo + extra, price, times))
        for lo, extra, price, times in other:
            q.add(lo, lo + extra, price, times)
            trades.append((lo, lo + extra, price, times))
        before = period_key(p)
        twin = p.copy()
        p.fold(q)
        assert period_key(twin) == before  # a copy is detached
        p.lo_ms = 120_000
        took = p.add_in(at, 7, 5 * at)
        assert took == (120_000 <= 5 * at < 3_660_000)
        assert p.last_ms == (5 * at if took else -1)
        if took:
            trades.append((at, at, 7, 1))
        for period in (p, q, twin):  # each one's layout too (the compiled map, edges, runs)
            period._check()
        prices, counts = p.items()
        assert p.packed() == (b"".join(x.to_bytes(8, "big") for x in prices),
                              b"".join(x.to_bytes(8, "big") for x in counts))  # fmt: skip
        keys.append((period_key(p), p.lo_ms, p.last_ms))
        if trades:
            assert period_row(p) == oracle_row(60_000, trades)
    assert all(k == keys[0] for k in keys)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "add", "add", "levels", "packed", "median",
                                           "copy", "fold", "folded", "add_packed",
                                           "gains", "record"]),
                          st.integers(1, 6) | st.integers(0, 2**64 - 1), st.integers(1, 3)),
                max_size=120))  # fmt: skip
def test_every_read_of_a_period_sees_every_trade_added(ops: list[tuple[str, int, int]]) -> None:
    """Reads interleaved with adds and folds at any point (the compiled twin holds a few
    trades back before they go into its map, a run at one price as one, and keeps what folds
    and add_packed bring as ascending runs it merges as they come): both twins hold the same
    levels at the end, and every read, a copy, a record (the same bytes, or levels),
    a fold (either way) and add_packed see all of them. The minute's gains (kept from the
    start), taken at any point, are exactly the trades added one at a time since the last
    take (not what folds and add_packed bring); a copy, and a period not told to keep them,
    keep none."""
    kinds = [kind(0, 60_000) for kind in PERIODS]
    for p in kinds:
        p.keep_gains()
    trades: list[int] = []
    gained: Counter[int] = Counter()
    for i, (op, price, times) in enumerate(ops):
        records, values = set(), set()
        for p in kinds:
            if op == "add":
                p.add(i, i, price, times)
            elif op == "levels":
                assert p.levels == len(set(trades))
            elif op == "packed":
                held = sorted(Counter(trades).items())
                assert p.packed() == (
                    _packed(*[x for x, _ in held]),
                    _packed(*[n for _, n in held]),
                )
            elif op == "median" and trades:
                s = sorted(trades)
                assert p.twice_median() == s[(len(s) - 1) // 2] + s[len(s) // 2]
            elif op == "copy":
                twin = p.copy()
                twin.add(i, i, price, times)  # detached: the original unchanged
                held = sorted((Counter(trades) + Counter({price: times})).items())
                assert period_key(twin)[-2:] == (tuple(x for x, _ in held),
                                                 tuple(n for _, n in held))  # fmt: skip
            elif op == "record":  # what a snapshot stores of it whole, or its levels past limit
                limit = (0, 3, 10**9)[times - 1]
                record = p.record(limit)
                records.add(record)
                if len(trades) > limit and len(set(trades)) > limit:
                    assert record == p.copy().packed()
                else:
                    assert type(record) is bytes
                    if trades:  # (an empty period is never stored)
                        restored = from_record(0, 60_000, record)
                        assert period_key(restored) == period_key(p.copy())
                # a quiet harvest's value: None while it keeps gains, else its open time, the
                # latest time and that record, the same bytes from both twins
                assert p.current_value(i, limit) is None
                value = p.copy().current_value(i, limit)
                values.add(value)
                if type(record) is bytes:
                    assert value == (0).to_bytes(8, "big") + i.to_bytes(8, "big") + record
                else:
                    assert value is None
            elif op == "fold":  # another period's levels (a run, some held back) into this one
                other = type(p)(0, 60_000)
                for j in range(times**3):
                    other.add(i, i, (price + 3 * j) % 2**64, 1)
                p.fold(other)
            elif op == "folded":  # this one's into an empty one, which it becomes
                other = type(p)(0, 60_000)
                other.fold(p)
                assert (other.count, other.levels) == (p.count, len(set(trades)))
            elif op == "add_packed":
                p.add_packed(_packed(price), _packed(times))
            elif op == "gains":
                held = sorted(gained.items())
                assert p.take_gains() == py_compact(_packed(*[x for x, _ in held]),
                                                    _packed(*[n for _, n in held]))  # fmt: skip
                assert p.copy().take_gains() == b""
                for length in LENGTHS:
                    other = type(p)(0, length)
                    other.add(i, i, price, times)
                    assert other.take_gains() == b""
        assert len(records) <= 1 and len(values) <= 1  # both twins' bytes, byte for byte
        if not any(o == "add_packed" for o, _, _ in ops[: i + 1]):  # (it leaves the extremes
            for p in kinds:  # to be set after it, as a restore does)
                p._check()
        if op == "add":
            gained[price] += times
        elif op == "gains":
            gained.clear()
        if op in ("add", "add_packed"):
            trades += [price] * times
        elif op == "fold":
            trades += [(price + 3 * j) % 2**64 for j in range(times**3)]
    keys = {period_key(p)[-2:] for p in kinds}  # read last: what was held back stays so until
    assert len(keys) == 1
    prices, counts = next(iter(keys))
    assert dict(zip(prices, counts, strict=True)) == Counter(trades)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["minute", "minute", "late", "read", "copy", "drop",
                                           "day", "compact"]),
                          st.integers(0, 3), st.sampled_from([1, 2, 700, 1100, 2500])),
                max_size=40))  # fmt: skip
def test_periods_sharing_the_runs_they_took_each_keep_their_own_levels(
    ops: list[tuple[str, int, int]],
) -> None:
    """Minutes of many levels folded into an hour and a day (the compiled twin shares a large
    run rather than copying it: the minute, its hour and its day then hold one array), with
    late trades into any of them, reads that compact them, copies, periods dropped (the last
    one holding an array frees it) and the hour folded into its day at any point: each period
    still holds exactly its own trades, by both twins, and its layout checks."""
    for kind in PERIODS:
        hour, day = kind(0, 3_600_000), kind(0, 86_400_000)
        live: dict[str, tuple[Any, Counter[int]]] = {"hour": (hour, Counter()),
                                                     "day": (day, Counter())}  # fmt: skip
        top = 10**9
        for i, (op, which, n) in enumerate(ops):
            names = sorted(live)
            name = names[which % len(names)]
            period, held = live[name]
            if op == "minute":  # a trend's (above all before) or one over the levels before
                base = top if which % 2 else 10**9 + 3 * i
                minute = kind(60_000 * i, 60_000)
                for j in range(n):
                    minute.add(i, i, base + 2 * j, 1 + j % 3)
                top = max(top, base + 2 * n)
                levels = Counter({base + 2 * j: 1 + j % 3 for j in range(n)})
                minute.compact_after(0)  # (retired: its levels one run, as the book leaves them)
                for into in ("hour", "day"):
                    if into in live:
                        live[into][0].fold(minute)
                        live[into][1].update(levels)
                live[f"m{i}"] = (minute, levels)
            elif op == "late":
                period.add(i, i, 10**9 + 5 * i, 2)
                held[10**9 + 5 * i] += 2
            elif op == "read":
                prices, counts = period.items()
                assert dict(zip(prices, counts, strict=True)) == held
            elif op == "copy":
                live[f"c{i}"] = (period.copy(), held.copy())
            elif op == "drop" and name not in ("hour", "day"):
                del live[name]
                del period
            elif op == "day" and "hour" in live:  # the hour over: its day takes it
                day.fold(hour)
                live["day"][1].update(live["hour"][1])
                del live["hour"]
                hour = None
            elif op == "compact":
                period.compact_after(7)
            for p, _ in live.values():
                p._check()
        for p, levels in live.values():
            prices, counts = p.items()
            assert dict(zip(prices, counts, strict=True)) == levels
            assert p.count == sum(levels.values())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=130, max_size=700),
       st.integers(0, 2**64 - 1), st.integers(0, 4))  # fmt: skip
def test_a_period_of_many_levels_packs_them_in_order(
    spread: list[int], high: int, repeats: int
) -> None:
    """More levels than the compiled twin sorts by comparison (it sorts by the bytes in which
    they differ then): prices over the whole range, then the same under one high part (few
    bytes differ, or only some bits of them), some of them again: packed in order, each with
    its trades, and so are the gains of a minute that keeps them (summed in a hash table
    first where they are not in order)."""
    for mask in (2**64 - 1, 0xFFFFFF, 0xF0F0F0):
        prices = [high & ~mask | x & mask for x in spread]
        trades = prices + prices[: repeats * 40]
        held = sorted(Counter(trades).items())
        for kind in PERIODS:
            p = kind(0, 60_000)
            p.keep_gains()
            for i, price in enumerate(trades):
                p.add(i, i, price, 1)
            want = (_packed(*[x for x, _ in held]), _packed(*[n for _, n in held]))
            assert p.packed() == want
            assert p.take_gains() == py_compact(*want)
            p.add(0, 0, prices[0], 2)  # gains again after a large list was taken (and freed)
            p.add(1, 1, prices[-1], 1)
            counts = Counter({prices[0]: 2}) + Counter({prices[-1]: 1})
            again = sorted(counts)
            assert p.take_gains() == py_compact(
                _packed(*again), _packed(*[counts[x] for x in again])
            )


def test_a_trending_minutes_gains_are_its_new_highs_wherever_its_levels_went() -> None:
    """A minute that keeps its gains and trades up (its new highs held once, the compiled
    twin's gains a slice of its ascending edge): each take is exactly the trades since the
    last, through a compaction (a read of its levels) between two takes, trades below its
    high among them, and the same from both twins."""
    for kind in PERIODS:
        p = kind(0, 60_000)
        p.add(0, 0, 100, 1)  # before keep_gains: not a gain
        p.keep_gains()
        p.add(1, 1, 101, 1)
        p.add(2, 2, 102, 2)
        assert p.take_gains() == py_compact(_packed(101, 102), _packed(1, 2))
        assert p.take_gains() == b""
        p.add(3, 3, 103, 1)
        assert p.packed() == (_packed(100, 101, 102, 103), _packed(1, 1, 2, 1))  # compacted
        p.add(4, 4, 104, 1)
        p.add(5, 5, 101, 3)  # below the high: not an edge's
        p.add(6, 6, 105, 1)
        assert p.take_gains() == py_compact(_packed(101, 103, 104, 105), _packed(3, 1, 1, 1))
        p.add(7, 7, 106, 1)
        assert p.packed()[0][-8:] == _packed(106)
        assert p.packed() == (_packed(100, 101, 102, 103, 104, 105, 106),
                              _packed(1, 4, 2, 1, 1, 1, 1))  # fmt: skip
        assert p.take_gains() == py_compact(_packed(106), _packed(1))
        assert p.count == 11


def test_the_median_of_a_period_held_in_many_levels_either_way() -> None:
    """A period whose levels came one at a time (more than the compiled twin compacts before
    it takes a median: it selects over a copy instead), new highs and new lows among them
    (which the compiled twin appends to its edges), and as folded runs overlapping them: the
    same median from both twins and from the sorted trades, before and after a read that
    compacts it."""
    rng = random.Random(7)
    trades = [rng.randrange(10**6, 10**9) for _ in range(9_000)]
    trades[:2_000] = sorted(trades[:1_000]) + sorted(trades[1_000:2_000], reverse=True)
    trades += [rng.choice(trades) if i % 2 else rng.randrange(10**6, 10**9) for i in range(3_000)]
    s = sorted(trades)
    assert s[5_999] != s[6_000]  # the two middle ranks: a wrong one shows
    for kind in PERIODS:
        p = kind(0, 86_400_000)
        for i, price in enumerate(trades[:9_000]):
            p.add(i, i, price, 1)
        for j in range(9_000, 12_000, 1_000):  # three minutes' runs
            minute = kind(0, 60_000)
            for i in range(j, j + 1_000):
                minute.add(i, i, trades[i], 1)
            minute.packed()
            p.fold(minute)
        assert p.twice_median() == s[(len(s) - 1) // 2] + s[len(s) // 2]
        p.packed()
        assert p.twice_median() == s[(len(s) - 1) // 2] + s[len(s) // 2]
        assert p.levels == len(set(trades))


def oracle_row(start: int, trades: list[tuple[int, int, int, int]]) -> CandleRow:
    """The candle of (lo, hi, price, times) trades, from its definition."""
    prices = sorted(p for _, _, p, n in trades for _ in range(n))
    n = len(prices)
    lo = min(trades, key=lambda t: t[0])
    hi = max(trades, key=lambda t: t[1])
    # open/close: the price of the lowest/highest id; ties of an id are a twin's choice
    # only where two trades share an id, which no caller does
    return CandleRow(start, lo[2], prices[-1], prices[0], hi[2], n,
                     prices[(n - 1) // 2] + prices[n // 2], lo[0], hi[1])  # fmt: skip


def _packed(*values: int) -> bytes:
    return b"".join(v.to_bytes(8, "big") for v in values)


def test_period_restore_refuses_what_contradicts_itself() -> None:
    for kind in PERIODS:
        with pytest.raises(ValueError):
            kind(0, 60_000).twice_median()  # no trade, no median
        candles.use_period(kind)
        p = restore_packed(0, 60_000, (1, 5, 3, 6, 6, 5, 3), _packed(5, 6), _packed(1, 2))
        assert period_row(p) == CandleRow(0, 5, 6, 5, 6, 3, 12, 1, 3)
        for fields, prices, counts in [
            ((1, 5, 3, 6, 6, 5, 4), [5, 6], [1, 2]),  # count off
            ((3, 5, 1, 6, 6, 5, 3), [5, 6], [1, 2]),  # ids reversed
            ((1, 5, 3, 6, 6, 5, 3), [5, 6], [1, 0]),  # an empty level
        ]:
            with pytest.raises(ValueError):
                restore_packed(0, 60_000, fields, _packed(*prices), _packed(*counts))
    candles.use_period(CPeriod or PyPeriod)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1) | st.integers(1, 9), st.integers(1, 2**40)),
                max_size=40),
       st.sampled_from(["ok", "zero", "short", "huge"]))  # fmt: skip
def test_levels_packed_are_added_in_one_call_or_not_at_all(
    levels: list[tuple[int, int]], spoil: str
) -> None:
    """add_packed of both twins adds what adding level by level does to the levels and the
    count, and touches no other field; so do the levels of restore_packed; a zero count,
    lengths that differ or a count past 2^63 add nothing."""
    prices = b"".join(p.to_bytes(8, "big") for p, _ in levels)
    counts = [n for _, n in levels]
    if spoil == "zero" and levels:
        counts[-1] = 0
    elif spoil == "huge" and levels:
        counts[0] = 2**63
    packed = b"".join(n.to_bytes(8, "big") for n in counts)
    if spoil == "short":
        packed = packed[:-1]
    bad = spoil != "ok" and bool(levels)
    for kind in PERIODS:
        p, q = kind(0, 60_000), kind(0, 60_000)
        p.add(1, 1, 5, 1)
        q.add(1, 1, 5, 1)
        before = period_key(p)
        if bad:
            with pytest.raises(ValueError):
                p.add_packed(prices, packed)
            assert period_key(p) == before
            continue
        p.add_packed(prices, packed)
        for i, (price, n) in enumerate(levels):
            q.add(2 + i, 2 + i, price, n)
        assert period_key(p)[-2:] == period_key(q)[-2:] and p.count == q.count
        assert period_key(p)[:8] == before[:8]  # open, close, extremes untouched
        if levels:
            candles.use_period(kind)
            fields = (1, 5, 1, 5, max(p for p, _ in levels), min(p for p, _ in levels),
                      sum(counts))  # fmt: skip
            a = restore_packed(0, 60_000, fields, prices, packed)
            summed = Counter[int]()
            for price, n in levels:
                summed[price] += n
            want = (tuple(sorted(summed)), tuple(summed[x] for x in sorted(summed)))
            assert period_key(a)[-2:] == want and a.count == sum(counts)
    candles.use_period(CPeriod or PyPeriod)


# -- the book through SymbolStats, against the trades themselves ------------------------------


class Market:
    """One symbol's true trades (ids 1.., times rising) and what reached the service."""

    def __init__(self, rnd: random.Random, n: int, steps: list[int]) -> None:
        self.trades: list[tuple[int, int, int]] = []  # id, price, time
        t = 1_700_000_000_000
        for i in range(1, n + 1):
            t += rnd.choice(steps)
            self.trades.append((i, rnd.randrange(95, 106), t))

    def candles(self, counted: set[int], k: int) -> dict[int, CandleRow]:
        length = LENGTHS[k]
        groups: dict[int, list[tuple[int, int, int, int]]] = {}
        for tid, price, t in self.trades:
            if tid in counted:
                groups.setdefault(t - t % length, []).append((tid, tid, price, 1))
        return {s: oracle_row(s, g) for s, g in groups.items()}

    def truly_final(self, counted: set[int], k: int, start: int) -> bool:
        """Every trade of the period counted, and a counted trade after it."""
        end = start + LENGTHS[k]
        inside = [tid for tid, _, t in self.trades if start <= t < end]
        after = [tid for tid, _, t in self.trades if t >= end and tid in counted]
        return all(tid in counted for tid in inside) and bool(after)


class FakeStore:
    """The candles db as a dict: what harvests put, as LMDB would hold it (an hour or a day
    as its header and deltas)."""

    def __init__(self) -> None:
        self.items: dict[tuple[int, int], Any] = {}
        self.deltas: dict[tuple[int, int], dict[int, list[Any]]] = {}
        self.meta: tuple[int, int, int | None, int | None] | None = None
        self.counts: tuple[int, ...] = ()

    def put(self, state: CandleState | bytes | None) -> None:
        if state is None:
            return
        if isinstance(state, bytes):  # a quiet harvest: its current minute, the latest time
            start, latest, record = quiet_parts(state)
            assert self.meta is not None and self.meta[3] == start
            self.meta = (self.meta[0], max(self.meta[1], latest), *self.meta[2:])
            self.items[(0, start)] = period_key(from_record(start, LENGTHS[0], record))
            return
        self.meta = (state.first_ms, state.latest_ms, state.front_top_ms, state.current)
        self.sealed = state.sealed
        self.unfolded = state.unfolded
        self.counts = state.counts
        for k, entries in enumerate(state.periods):
            for start, row, period in entries:
                if row is not None:
                    self.items[(k, start)] = row
                    self.deltas.pop((k, start), None)
                elif isinstance(period, Delta):
                    self.items[(k, start)] = ("delta", period.fields, period.seq + 1)
                    self.deltas.setdefault((k, start), {})[period.seq] = period.chunks
                else:  # a minute whole: its record
                    self.items[(k, start)] = period_key(from_record(start, LENGTHS[k], period))
        for k, expired in enumerate(state.expired):  # after the puts, as Store deletes
            if expired is not None:
                for key in [key for key in self.items if key[0] == k and key[1] < expired]:
                    del self.items[key]
                    self.deltas.pop(key, None)

    def load(self) -> CandleState | None:
        if self.meta is None:
            return None
        periods: tuple[list[Any], ...] = ([], [], [])
        seqs = []
        for (k, start), value in sorted(self.items.items(), key=lambda kv: kv[0]):
            if isinstance(value, CandleRow):
                continue
            if value[0] == "delta":
                chunks = [
                    py_expand(c) if isinstance(c, bytes) else c
                    for _, cs in sorted(self.deltas[(k, start)].items())
                    for c in cs
                ]
                prices, counts = b"".join(c[0] for c in chunks), b"".join(c[1] for c in chunks)
                period = restore_packed(start, LENGTHS[k], value[1], prices, counts)
                seqs.append((k, start, value[2]))
            else:
                period = restore_packed(start, LENGTHS[k], value[2:9], _packed(*value[9]),
                                        _packed(*value[10]))  # fmt: skip
            periods[k].append((start, None, period))
        return CandleState(*self.meta, periods, (None, None, None), self.counts, tuple(seqs),
                           self.sealed, self.unfolded)  # fmt: skip

    def rows(self, k: int) -> list[CandleRow]:
        return [v for (kk, _), v in sorted(self.items.items(), key=lambda kv: kv[0])
                if kk == k and isinstance(v, CandleRow)]  # fmt: skip


def snapshot(stats: SymbolStats, store: FakeStore) -> None:
    state = stats.harvest()
    if state is not None:
        store.put(state.candles)


def restart(stats: SymbolStats, store: FakeStore) -> SymbolStats:
    snapshot(stats, store)
    full = stats.full_state()
    full.candles = store.load()
    return SymbolStats.restore(full)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from(TWINS), st.sampled_from(["live", "late", "rest"]),
       st.sampled_from([[0, 1, 5_000], [1_000, 30_000, 400_000],
                        [0, 600_000, 7_200_000]]), st.booleans())  # fmt: skip
def test_candles_equal_the_trades_counted(seed: int, compiled: bool, style: str,
                                          steps: list[int], seal: bool) -> None:  # fmt: skip
    """Random markets (a minute's worth of trades to a few a day), delivered live with jumps
    (gaps), backfilled by REST rows and single late trades in any order, with restarts and
    snapshots anywhere: every interval's rows (stored, and in memory) equal the candles of
    exactly the trades counted; a row said final is truly final (every trade of its period
    counted, one after it too); and once every trade is counted, every row but the last is
    final. The counts of a symbol's minute candles add up to its count. With no history to
    come (``seal``), the periods where counting began settle too: once every trade is
    counted, only periods holding the latest trade keep their levels."""
    symbols.use_compiled(compiled)
    symbols.keep_candles(True, [None, None, None])
    symbols.expect_history(set() if seal else None)
    rnd = random.Random(seed)
    market = Market(rnd, rnd.randrange(1, 400), steps)
    stats = SymbolStats("X")
    store = FakeStore()
    counted: set[int] = set()
    skipped: list[int] = []
    by_id = {tid: (price, t) for tid, price, t in market.trades}
    for tid, price, t in market.trades:
        if counted and rnd.random() < 0.1:
            skipped.append(tid)  # missed by the stream: a gap when the next one comes
        else:
            if stats.apply_common(tid, price, t) is None:
                stats.apply(tid, price, t)
            counted.add(tid)
        roll = rnd.random()
        if roll < 0.05:
            snapshot(stats, store)
        elif roll < 0.07:
            stats = restart(stats, store)
        if skipped and rnd.random() < 0.1:
            fill = skipped.pop(rnd.randrange(len(skipped)))
            fill_one(stats, style, fill, by_id, counted)
    rnd.shuffle(skipped)
    for i, fill in enumerate(skipped):
        fill_one(stats, style, fill, by_id, counted)
        if i % 3 == 0:
            snapshot(stats, store)
    snapshot(stats, store)
    stats._check()
    check_candles(stats, store, market, counted, complete=not stats.ids.gaps)
    if seal and not stats.ids.gaps and stats.candles is not None:
        latest = stats.candles.latest
        for k, opened in enumerate(stats.candles.open):
            assert all(s <= latest < s + LENGTHS[k] for s in opened), INTERVALS[k][0]
    stats = restart(stats, store)
    check_candles(stats, store, market, counted, complete=not stats.ids.gaps)


def fill_one(stats: SymbolStats, style: str, tid: int, by_id: dict[int, tuple[int, int]],
             counted: set[int]) -> None:  # fmt: skip
    price, t = by_id[tid]
    highest = stats.ids.highest
    if style == "rest" and highest is not None and tid < highest:  # REST fills gaps only
        stats.apply_rows([Row(tid, tid, price, t)])
    else:
        stats.apply(tid, price, t)
    counted.add(tid)  # inside a gap: every skipped id comes after a counted one


def check_candles(stats: SymbolStats, store: FakeStore, market: Market, counted: set[int],
                  complete: bool) -> None:  # fmt: skip
    assert stats.view().count == len(counted)
    for k in range(len(INTERVALS)):
        memory, origin = stats.candle_rows(k, 0, 2**62)
        rows = select_rows(store.rows(k), memory, origin, None, None, 10**6)
        expected = market.candles(counted, k)
        assert {r.open_time: r for r, _ in rows} == expected, INTERVALS[k][0]
        for row, final in rows:
            if final:
                assert market.truly_final(counted, k, row.open_time), (INTERVALS[k][0], row)
        if complete and rows:
            # the first period is where counting began: final only from the symbol's origin
            assert all(final for _, final in rows[1:-1]), INTERVALS[k][0]
    minutes = select_rows(store.rows(0), stats.candle_rows(0, 0, 2**62)[0], None, None, None,
                          10**6)  # fmt: skip
    assert sum(r.trades for r, _ in minutes) == stats.view().count


def test_a_trade_on_a_period_boundary_opens_the_next_period() -> None:
    stats = SymbolStats("X")
    stats.apply(1, 10, 59_999)
    stats.apply(2, 20, 60_000)
    stats.apply(3, 30, 3_600_000)
    rows = stats.candle_rows(0, 0, 2**62)[0]
    assert [(r.open_time, r.trades, r.open) for r in rows] == [(0, 1, 10), (60_000, 1, 20),
                                                              (3_600_000, 1, 30)]  # fmt: skip
    hours = stats.candle_rows(1, 0, 2**62)[0]
    got = [(r.open_time, r.trades, r.twice_median) for r in hours]
    assert got == [(0, 2, 30), (3_600_000, 1, 60)]


@pytest.mark.parametrize("compiled", TWINS)
def test_a_day_takes_each_hour_once_when_the_stream_leaves_it(compiled: bool) -> None:
    """A retired minute is stored in its hour alone; the day gets the hour whole (its
    distinct levels, not each minute's), once, in the harvest after the stream's first trade
    of the next hour, and an hour's late trade reaches the day with it. A reader of the open
    day sees every trade counted all along, and the invariant holds at every harvest."""
    symbols.use_compiled(compiled)
    symbols.keep_candles(True, [None, None, None])
    symbols.expect_history(set())
    stats = SymbolStats("X")
    hour = 5 * 86_400_000 + 3_600_000  # the hour after the first of a day
    times = [hour - 200_000 + 20_000 * i for i in range(20)]  # into the next hour at i = 10
    days: list[tuple[int, list[int]]] = []  # (the trade's time, the day delta's counts)
    for i, t in enumerate(times):
        if i == 3:
            continue  # missed: a gap
        if stats.apply_common(1000 + i, 100 + i % 3, t) is None:
            stats.apply(1000 + i, 100 + i % 3, t)
        if i == 7:  # late, into the hour being traded: the day takes it with the hour
            stats.apply(1003, 200, times[3])
        state = stats.harvest()
        assert state is not None and state.candles is not None
        candles = state.candles
        for _, _, delta in [] if isinstance(candles, bytes) else candles.periods[2]:
            assert isinstance(delta, Delta)
            counts = b"".join(py_expand(c)[1] for c in delta.chunks)
            days.append((t, [int.from_bytes(counts[j : j + 8]) for j in range(0, len(counts), 8)]))
        (day,) = stats.candle_rows(2, 0, 2**62)[0]
        assert day.trades == i + 1 - (i > 3) + (i >= 7)
        stats._check()
    assert days == [(hour, [3, 3, 3, 1])]  # the hour before: 10 trades at 4 prices
    assert stats.candles is not None and stats.candles.unfolded == hour


@pytest.mark.parametrize("compiled", TWINS)
def test_the_unfolded_hour_outlives_its_retention_until_its_day_takes_it(compiled: bool) -> None:
    """An archive's day far past the current minute moves the latest trade beyond the
    unfolded hour and its retention: the hour stays (its day has not taken it yet), so the
    day still counts its trades, and goes to the day when the stream leaves it."""
    symbols.use_compiled(compiled)
    symbols.keep_candles(True, [None, None, None])
    symbols.expect_history(set())
    stats = SymbolStats("X")
    hour = 3_600_000
    for i in range(3):  # two minutes retired into the hour, the third current
        stats.apply(1000 + i, 10 + i, hour + 60_000 * i)
    book = stats.candles
    assert book is not None
    day = 10 * 86_400_000
    whole = DayCandle(day, day + 5, day + 9, 5000, 7, 5002, 8, 9, 6, 3, 14)
    with stats.lock:
        book.add_days(landings([whole]))
        assert book.harvest(stats.ids, [None, 1, None], True) is not None
        assert book.unfolded == hour and hour in book.open[HOUR]
        book._check()  # (the archive's day is in no count of the symbol's: added here alone)
    stats.apply(1003, 13, 2 * hour)  # the stream leaves the hour: its day takes it
    stats.harvest()
    with stats.lock:
        book._check()
        assert book.unfolded == 2 * hour and book.open[DAY][0].count == 3


@pytest.mark.parametrize("compiled", TWINS)
def test_a_period_waiting_on_a_gap_settles_once_the_gap_is_given_up(compiled: bool) -> None:
    """A minute over but with a gap in it waits, harvest after harvest, however quiet the book
    is otherwise; giving the gap up (no trade, only the bookkeeping changes) lets the next
    harvest settle it."""
    symbols.use_compiled(compiled)
    symbols.expect_history(set())  # where counting began settles too: only the gap waits
    stats = SymbolStats("X")
    stats.baseline(999, 0)
    for tid, t in ((1000, 1_000), (1001, 61_000), (1003, 62_000), (1004, 180_000)):
        if stats.apply_common(tid, 10 + tid % 3, t) is None:
            stats.apply(tid, 10 + tid % 3, t)
    assert stats.ids.gaps  # 1002, in the minute from 60,000
    for tid in range(1005, 1010):  # quiet harvests: only the current minute changes
        stats.harvest()
        assert stats.candles is not None and 60_000 in stats.candles.open[0]
        if stats.apply_common(tid, 11, 180_000 + tid) is None:
            stats.apply(tid, 11, 180_000 + tid)
    assert [(g.lo, g.hi) for g in stats.ids.gaps] == [(1002, 1002)]
    stats.give_up(1002, 1002)
    state = stats.harvest()
    assert 60_000 not in stats.candles.open[0]
    assert state is not None and state.candles is not None
    settled = [(s, row.trades) for s, row, _ in state.candles.periods[0] if row is not None]
    assert settled == [(60_000, 2)]  # its row, to be stored (not final: 1002 is lost)


@pytest.mark.parametrize("compiled", TWINS)
@pytest.mark.parametrize("below", ["ticker", "stream"])
def test_a_quiet_symbols_first_periods_wait_for_its_earlier_trades(
    compiled: bool, below: str
) -> None:
    """A quiet symbol (no trade in the 24 hours before we followed it) starts counting at the
    first trade it sees, but its earlier trades are its own all the same: a ticker (after a
    restart's reconnect) or a stream (two connections in a rotation) may report them later.
    So with no history to come, its first periods wait, over and harvested, instead of
    settling; the earlier trades land in them, and once a ticker finds nothing below the
    range they settle, every trade in its own candle and none counted outside."""
    symbols.use_compiled(compiled)
    symbols.keep_candles(True, [None, None, None])
    symbols.expect_history(set())  # where counting began would settle at once but for quiet
    m0 = 20 * 86_400_000  # a UTC midnight: minute, hour and day begin there
    stats = SymbolStats("X")
    store = FakeStore()
    stats.baseline(-1, m0 - 5_000)  # quiet
    stats.apply(6, 100, m0 + 59_000)  # the first trade seen: trades 1..5 happened before it
    snapshot(stats, store)
    stats.apply(7, 107, m0 + 61_000)  # the first minute is over
    snapshot(stats, store)
    assert stats.candles is not None and m0 in stats.candles.open[0]  # waiting
    stats.apply(8, 108, m0 + 62_000)
    state = stats.harvest()  # and not looked at again: the harvest is a quiet one
    assert state is not None and isinstance(state.candles, bytes)
    store.put(state.candles)
    earlier = [(i, 90 + i, m0 + 10 * i) for i in range(1, 6)]
    if below == "ticker":
        assert stats.sweep(1, 8, m0 - 86_400_000 + 63_000, m0 + 63_000) == 5
        snapshot(stats, store)
        stats.apply_rows([Row(i, i, price, t) for i, price, t in earlier])  # backfilled
    else:
        for i, price, t in reversed(earlier):  # the old connection's frames, read late
            stats.apply(i, price, t)
            snapshot(stats, store)
    assert not stats.ids.gaps and stats.view().count == 8
    snapshot(stats, store)
    assert m0 in stats.candles.open[0]  # still quiet: a stream's trade below may yet come
    assert stats.sweep(1, 8, m0 - 86_400_000 + 64_000, m0 + 64_000) == 0  # nothing below now
    assert not stats.ids.quiet
    snapshot(stats, store)
    assert m0 not in stats.candles.open[0]  # settled
    stats.apply(9, 109, m0 + 3_600_000)  # the first hour is over too
    snapshot(stats, store)
    assert m0 not in stats.candles.open[1] and stats.candles.outside == 0
    prices = [p for _, p, _ in earlier] + [100]
    hour = m0 + 3_600_000
    for k, want in ((0, [(m0, 91, 100, 6), (m0 + 60_000, 107, 108, 2), (hour, 109, 109, 1)]),
                    (1, [(m0, 91, 108, 8), (hour, 109, 109, 1)]),
                    (2, [(m0, 91, 109, 9)])):  # fmt: skip
        memory, origin = stats.candle_rows(k, 0, 2**62)
        rows = [r for r, _ in select_rows(store.rows(k), memory, origin, None, None, 100)]
        assert [(r.open_time, r.open, r.close, r.trades) for r in rows] == want, INTERVALS[k][0]
    first = next(r for r in store.rows(0) if r.open_time == m0)
    assert first.twice_median == sorted(prices)[2] + sorted(prices)[3]
    stats = restart(stats, store)
    stats._check()


@pytest.mark.parametrize("compiled", TWINS)
def test_a_quiet_book_hands_over_what_it_took_besides_its_minute(compiled: bool) -> None:
    """A harvest that finds only the current minute changed hands over that alone, and drops
    the rows the harvest before settled (written by now); anything else the book takes in
    between makes the next harvest a full one: a late trade (its own minute, reopened), a day
    landed from an archive, trades counted outside any candle (one of the sealed minute, or
    of a store written without candles)."""
    symbols.use_compiled(compiled)
    symbols.expect_history(set())
    day = 86_400_000
    stats = SymbolStats("X")
    stats.baseline(999, 0)
    for tid, t in ((1000, 1_000), (1001, 61_000), (1002, 125_000)):
        stats.apply(tid, 10 + tid % 3, 10 * day + t)
    settling = stats.harvest()  # minutes 0 and 1 settle
    assert settling is not None and settling.candles is not None
    assert not quiet(settling.candles)  # the store deletes what settled: never skipped
    book, keep = stats.candles, [None, None, None]
    assert book is not None and sorted(book.recent[0]) == [10 * day, 10 * day + 60_000]
    stats.apply(1003, 11, 10 * day + 126_000)
    state = stats.harvest()
    assert state is not None and state.candles is not None
    assert isinstance(state.candles, bytes)  # the minute alone, with the latest time
    start, latest, record = quiet_parts(state.candles)
    assert (start, latest) == (10 * day + 120_000, 10 * day + 126_000)
    assert from_record(start, 60_000, record).count == 2
    assert quiet(state.candles)  # nothing for finish or the store's deletes to do
    assert not quiet(settling.candles._replace(expired=(None, None, None)))  # told by identity
    assert not any(book.recent)  # the rows settled before are in the store by now
    for take in ("late", "landed", "sealed", "outside"):
        with stats.lock:
            if take == "late":
                book.add(900, 900, 12, 10 * day + 70_000)
            elif take == "sealed":  # of the minute where counting began: in no candle
                book.add(901, 901, 12, 10 * day + 30_000)
            elif take == "landed":
                whole = DayCandle(2 * day, 2 * day + 5, 2 * day + 9, 1, 7, 3, 8, 9, 6, 3, 14)
                book.add_days(landings([whole]))
            else:
                book.add_outside(5)
            taken = book.harvest(stats.ids, keep, True)
            assert taken is not None and taken.counts == book.counts(), take
            assert not quiet(taken), take
            assert book.harvest(stats.ids, keep, True) is None  # then nothing
        if take == "late":
            assert 10 * day + 60_000 in [p[0] for p in taken.periods[0]]
        elif take == "landed":
            assert [(s, r.trades) for s, r, _ in taken.periods[2] if r] == [(2 * day, 3)]


def ten_minutes_stored(keep_minutes_ms: int) -> tuple[SymbolStats, FakeStore]:
    """A symbol keeping minutes ``keep_minutes_ms``, a trade a minute from 60,000 to 600,000,
    each followed by a snapshot into a store."""
    symbols.keep_candles(True, [keep_minutes_ms, None, None])
    stats = SymbolStats("X")
    store = FakeStore()
    for i in range(1, 11):
        stats.apply(i, 100 + i, i * 60_000)
        snapshot(stats, store)
    return stats, store


def test_retention_drops_old_minutes_and_keeps_days() -> None:
    stats, store = ten_minutes_stored(120_000)
    minutes = store.rows(0) + stats.candle_rows(0, 0, 2**62)[0]
    assert min(r.open_time for r in minutes) >= 10 * 60_000 - 120_000 - 60_000
    days = select_rows(store.rows(2), stats.candle_rows(2, 0, 2**62)[0], None, None, None, 10)
    assert [r.trades for r, _ in days] == [10]


def test_retention_moves_with_the_latest_trade_inside_a_minute() -> None:
    """A retention that is no whole number of minutes passes a stored minute while the
    current minute goes on: the harvest then (nothing but the current minute changed) drops
    it from the store all the same."""
    stats, store = ten_minutes_stored(90_000)
    stats.apply(11, 111, 610_000)
    snapshot(stats, store)  # the minute settled before is written: nothing left to settle
    assert 480_000 in {r.open_time for r in store.rows(0)}  # 610,000 - 90,000 - 60,000 + 1
    stats.apply(12, 112, 640_000)
    snapshot(stats, store)
    assert min(r.open_time for r in store.rows(0)) == 540_000  # 640,000 - 149,999 > 480,000


@settings(max_examples=50, deadline=None)
@given(st.one_of(st.integers(60_000, 400_000), st.integers(60, 400).map(lambda s: s * 1_000 + 1)),
       st.one_of(st.integers(3_600_000, 9_000_000),
                 st.integers(3_600, 9_000).map(lambda s: s * 1_000 + 1)),
       st.lists(st.tuples(st.sampled_from([1_000, 20_000, 70_000, 1_500_000]), st.booleans()),
                min_size=1, max_size=80), st.booleans())  # fmt: skip
# the minute of 60,000 settled, then a trade inside a later minute at the very time the bound
# passes 60,000 (210,000 + 1 - 90,000 - 60,000 > 60,000)
@example(keep_minutes=90_000, keep_hours=3_600_000,
         steps=[(60_000, False), (125_000, False), (25_000, False)], seal=True)  # fmt: skip
# the minute where counting began, held open for history, is past retention 1 ms after
# its bound reaches its open time (210,000 + 1 - 90,000 - 60,000 = 60,001 > 60,000)
@example(keep_minutes=90_000, keep_hours=3_600_000,
         steps=[(60_000, False), (150_000, False)], seal=False)  # fmt: skip
def test_the_store_holds_every_period_within_retention_and_none_past_it(
    keep_minutes: int, keep_hours: int, steps: list[tuple[int, bool]], seal: bool
) -> None:
    """Trades at random steps (many a minute, or minutes and hours apart), a snapshot after
    each, some of them failed and retried with the next: after every write, the stored
    minutes and hours are exactly those counted whose open time is at or after the
    retention bound of the latest trade. A harvest inside a minute hands the store a bound
    only when it passed a period's open time; this holds it to deleting all it must (the
    retentions of whole seconds + 1 ms put the bound on open times themselves; the example,
    a trade on the very time the bound passes one)."""
    symbols.keep_candles(True, [keep_minutes, keep_hours, None])
    symbols.expect_history(set() if seal else None)  # sealed: where counting began settles too
    stats = SymbolStats("X")
    store = FakeStore()
    t, held, minutes = 0, None, []
    for i, (step, fails) in enumerate(steps, 1):
        t += step
        stats.apply(i, 100 + i % 7, t)
        minutes.append(t - t % 60_000)
        state = stats.harvest()
        for k, keep in ((0, keep_minutes), (1, keep_hours)):  # nor does the book keep any
            bound = t + 1 - keep - INTERVALS[k][1]
            opened = stats.candles.open[k]  # type: ignore[union-attr]
            assert all(start >= bound for start in opened), (k, t, bound)
        held = then_candles(held, None if state is None else state.candles)
        if fails:  # the write failed: the snapshotter retries it with the next harvest
            continue
        store.put(held)
        held = None
        retired = [m for m in minutes if m != minutes[-1]]  # the current minute: in no hour
        for k, starts in ((0, minutes), (1, [m - m % 3_600_000 for m in retired])):
            length = INTERVALS[k][1]
            bound = t + 1 - (keep_minutes, keep_hours)[k] - length
            stored = {start for kk, start in store.items if kk == k}
            assert stored == {s for s in starts if s >= bound}, (k, t, bound)


def test_a_book_younger_than_its_retention_hands_the_store_no_bound() -> None:
    """No period opens before the one of the first trade counted, so until a retention bound
    passes that one a harvest hands the store nothing to delete (a snapshot at each minute's
    roll would search every symbol's minutes and hours for none); then it does, and the
    store drops the first minute."""
    symbols.keep_candles(True, [300_000, 7_200_000, None])
    symbols.expect_history(set())
    stats = SymbolStats("X")
    store = FakeStore()
    handed = []
    for i in range(1, 8):  # a trade a minute from 60,000: bound 420,001 - 360,000 passes it
        stats.apply(i, 100 + i, i * 60_000)
        state = stats.harvest()
        assert state is not None and state.candles is not None
        c = state.candles
        handed.append(None if isinstance(c, bytes) else c.expired)
        store.put(c)
    assert all(e is None or e == (None, None, None) for e in handed[:6]), handed
    assert handed[6] is not None and handed[6][0] == 60_001  # 420,000 + 1 - 300,000 - 60,000
    assert min(start for k, start in store.items if k == 0) == 120_000


def test_named_symbols_keep_every_candle() -> None:
    """--candle-forever: the symbols named keep every minute, the others as configured."""
    from medianserv.config import Config

    config = Config(candle_minutes_days=1, candle_forever="ethusdt, BTCUSDT")
    assert config.candles_kept_forever() == {"ETHUSDT", "BTCUSDT"}
    assert config.candle_keep_ms() == [86_400_000, 90 * 86_400_000, None]
    assert Config(candle_forever="all").candle_keep_ms() == [None, None, None]
    symbols.keep_candles(True, [120_000, None, None], config.candles_kept_forever())
    kept = {}
    for name in ("BTCUSDT", "XRPUSDT"):
        stats = SymbolStats(name)
        store = FakeStore()
        for i in range(1, 11):
            stats.apply(i, 100 + i, i * 60_000)
            snapshot(stats, store)
        kept[name] = len(select_rows(store.rows(0), stats.candle_rows(0, 0, 2**62)[0], None,
                                     None, None, 100))  # fmt: skip
    assert kept == {"BTCUSDT": 10, "XRPUSDT": 3}


def test_candles_off_keeps_none_and_the_trade_path_still_takes_trades() -> None:
    symbols.keep_candles(False)
    stats = SymbolStats("X")
    assert stats.candles is None
    stats.apply(1, 10, 0)
    assert stats.apply_common(2, 11, 1) is not None
    assert stats.candle_rows(0, 0, 2**62) == ([], None)
    state = stats.harvest()
    assert state is not None and state.candles is None


# -- the window of GET /{symbol}/candles ------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 40), unique=True, max_size=30), st.integers(0, 45) | st.none(),
       st.integers(0, 45) | st.none(), st.integers(1, 8), st.data())  # fmt: skip
def test_select_rows_is_the_window_asked_for(
    starts: list[int], start: int | None, end: int | None, limit: int, data: st.DataObject
) -> None:
    rows = [CandleRow(s, 1, 1, 1, 1, 1, 2, s * 10, s * 10 + data.draw(st.sampled_from([0, 9])))
            for s in sorted(starts)]  # fmt: skip
    split = data.draw(st.integers(0, len(rows)))
    got = select_rows(rows[:split], rows[split:], None, start, end, limit)
    inside = [r for r in rows if (start is None or r.open_time >= start)
              and (end is None or r.open_time < end)]  # fmt: skip
    want = inside[:limit] if start is not None else inside[-limit:]
    assert [r for r, _ in got] == want
    flags = dict(zip(rows, final_flags(rows, None), strict=True))
    for r, final in got:
        i = rows.index(r)
        assert final == flags[r] == (
            r.close_id - r.open_id + 1 == r.trades and 0 < i < len(rows) - 1
            and rows[i - 1].close_id == r.open_id - 1 and rows[i + 1].open_id == r.close_id + 1
        )  # fmt: skip


# -- LMDB ---------------------------------------------------------------------------------------


def test_the_store_keeps_candles_across_a_restart(tmp_path: Path) -> None:
    """Snapshots through the real store: a restored symbol's open periods and the store's
    settled rows give the same candles as before; the store's windowed reads bring the row
    beyond each end; retention deletes stored rows."""
    symbols.keep_candles(True, [None, None, None])
    rnd = random.Random(7)
    market = Market(rnd, 500, [1_000, 20_000, 90_000])
    store = Store.open(tmp_path)
    stats = SymbolStats("BTCUSDT")
    for i, (tid, price, t) in enumerate(market.trades):
        stats.apply(tid, price, t)
        if i % 37 == 0:
            store.save([s for s in [stats.harvest()] if s is not None])
    store.save([s for s in [stats.harvest()] if s is not None])
    before = [stats.candle_rows(k, 0, 2**62)[0] for k in range(3)]
    expected = [market.candles({t[0] for t in market.trades}, k) for k in range(3)]
    (state,) = store.load()
    restored = SymbolStats.restore(state)
    for k in range(3):
        memory = restored.candle_rows(k, 0, 2**62)[0]
        stored = store.candles("BTCUSDT", k, 0, 2**62, 10**6, True)
        rows = select_rows(stored, memory, None, None, None, 10**6)
        assert {r.open_time: r for r, _ in rows} == expected[k]
        assert memory == [r for r in before[k] if r.open_time not in {s.open_time for s in stored}]
        all_rows = sorted(stored)
        windows = [(0, 2**62, 3)] if all_rows else []
        if len(all_rows) > 6:
            windows += [(all_rows[2].open_time, all_rows[-3].open_time, 2),
                        (all_rows[2].open_time, all_rows[4].open_time, 5)]  # fmt: skip
        for lo, hi, limit in windows:
            up = store.candles("BTCUSDT", k, lo, hi, limit, True)
            down = store.candles("BTCUSDT", k, lo, hi, limit, False)
            inside = [r for r in all_rows if lo <= r.open_time < hi]
            i, j = all_rows.index(inside[0]), all_rows.index(inside[-1])
            # the row beyond each end of the window, limit rows inside
            assert up == all_rows[max(0, i - 1) : min(i + limit + 1, j + 2)]
            assert down == all_rows[max(0, j - limit, i - 1) : j + 2]
    # retention: minutes older than an hour before the latest trade go
    symbols.keep_candles(True, [3_600_000, None, None])
    old = store.candles("BTCUSDT", 0, 0, market.trades[-1][2] - 3_700_000, 10**6, True)
    assert len(old) > 10
    restored.apply(501, 100, market.trades[-1][2] + 1)
    store.save([s for s in [restored.harvest()] if s is not None])
    latest = market.trades[-1][2] + 1
    assert all(r.open_time + 60_000 > latest - 3_600_000
               for r in store.candles("BTCUSDT", 0, 0, 2**62, 10**6, True))  # fmt: skip
    days = select_rows(store.candles("BTCUSDT", 2, 0, 2**62, 10**6, True),
                       restored.candle_rows(2, 0, 2**62)[0], None, None, None, 10**6)  # fmt: skip
    assert sum(r.trades for r, _ in days) == 501  # days are kept forever
    store.close()


@pytest.mark.parametrize("compiled", TWINS)
def test_a_large_open_minute_is_stored_as_what_it_gained(tmp_path: Path, compiled: bool) -> None:
    """A snapshot writes the current minute whole while it holds at most MINUTE_WHOLE
    levels; past that, once more whole as its first delta, then, at each snapshot, the
    trades it took since the one before as one more delta. A restart at every step restores
    it exactly, and one restored from its deltas goes on adding them. Once it settles, its
    row replaces it and its deltas go."""
    symbols.use_compiled(compiled)
    symbols.keep_candles(True, [None, None, None])
    store = Store.open(tmp_path)
    stats = SymbolStats("X")
    taken: list[tuple[int, int, int]] = []
    few = [(1000 + i, 10**8 + i % 5, 3_600_000 + i) for i in range(400)]  # 5 levels
    many = [(1400 + i, 2 * 10**8 + 7 * i, 3_600_000 + 1_000 + i) for i in range(300)]
    again = [(1700, 10**8, 3_600_000 + 40_000), (1701, 5, 3_600_000 + 41_000)]
    seen = []
    for batch in (few, many, again, [(1702, 9, 3_600_000 + 42_000)]):
        for tid, price, t in batch:
            stats.apply(tid, price, t)
        taken += batch
        state = stats.harvest()
        assert state is not None and state.candles is not None
        ((start, row, stored),) = state.candles.periods[0]
        assert (start, row) == (3_600_000, None)
        kept = state_key(state.candles).periods[0][0][2]
        seen.append(kept[1] if isinstance(stored, Delta) else "whole")
        if isinstance(stored, Delta) and stored.seq:  # what it took since the last
            assert kept[2] == tuple(sorted(Counter(p for _, p, _ in batch).items()))
        store.save([state])
        current, candles = _stored_keys(store, "X")
        minute = b"\x01" + (3_600_000).to_bytes(8, "big")
        key = symbol_prefix("X") + b"\x01"
        if seen[-1] == "whole":  # in current, the dense database a snapshot rewrites
            assert current == {b"\0", b"\x01"} and minute not in candles
            with store.env.begin() as txn:
                stale = txn.get(key, db=store._current)
        else:  # its key in current deleted once it is stored as deltas
            assert current == {b"\0"} and minute in candles
        (loaded,) = store.load()
        if seen[-1] != "whole":  # a whole copy in current is older than deltas in candles
            with store.env.begin(write=True) as txn:
                txn.put(key, stale, db=store._current)
            assert state_key(store.load()[0].candles) == state_key(loaded.candles)
            with store.env.begin(write=True) as txn:
                txn.delete(key, db=store._current)
        stats = SymbolStats.restore(loaded)
        assert stats.candles is not None and stats.candles.minute is not None
        assert period_key(stats.candles.minute) == period_key(_period_of(taken))
        stats._check()
    assert seen == ["whole", 0, 1, 2]  # whole, then deltas: the first whole, then the gains
    symbols.expect_history(set())  # no history to wait for: the minute settles once over
    stats.apply(1703, 9, 3_660_000)
    store.save([s for s in [stats.harvest()] if s is not None])
    rows = store.candles("X", 0, 0, 2**62, 10, True)
    assert [(r.open_time, r.trades) for r in rows] == [(3_600_000, len(taken))]
    (loaded,) = store.load()  # its deltas went with its header (a delta alone is refused)
    assert loaded.candles is not None and loaded.candles.current == 3_660_000
    store.close()


@pytest.mark.parametrize("compiled", TWINS)
def test_a_quiet_snapshot_writes_the_current_minute_alone_and_loses_no_time(
    tmp_path: Path, compiled: bool
) -> None:
    """A snapshot that finds only the current minute changed writes one value of the symbol's
    candles, the minute with the latest trade time: the bounds stay as the snapshot before
    wrote them, and a restart from it restores the book exactly, latest time included. A
    minute not yet named by the stored bounds (the first of a book, one after a roll) is
    written with them."""
    symbols.use_compiled(compiled)
    symbols.keep_candles(True, [None, None, None])
    symbols.expect_history(set())
    store = Store.open(tmp_path)
    stats = SymbolStats("X")
    stats.baseline(999, 0)
    prefix = symbol_prefix("X")

    def stored() -> tuple[bytes, bytes]:
        with store.env.begin() as txn:
            return (bytes(txn.get(prefix + b"\0", db=store._current)),
                    bytes(txn.get(prefix + b"\x01", db=store._current)))  # fmt: skip

    tid = 999
    for minute in (3_600_000, 3_660_000):  # the first minute, then one after a roll
        kinds = []
        for t in (minute + 1_000, minute + 2_000, minute + 30_000):
            tid += 1
            stats.apply(tid, 10**8 + tid % 3, t)
            state = stats.harvest()
            assert state is not None and state.candles is not None
            kinds.append("quiet" if isinstance(state.candles, bytes) else "full")
            before = stored() if kinds[-1] == "quiet" else None
            store.save([state])
            bounds, whole = stored()
            assert int.from_bytes(whole[:16], "big") == minute << 64 | t  # open time, latest
            if before is not None:
                assert bounds == before[0]  # not rewritten
            (loaded,) = store.load()
            assert loaded.candles is not None and not isinstance(loaded.candles, bytes)
            assert (loaded.candles.current, loaded.candles.latest_ms) == (minute, t)
            again = SymbolStats.restore(loaded)
            assert again.candles is not None and stats.candles is not None
            live, back = stats.candles.canonical(), again.candles.canonical()
            assert live[:2] + live[3:] == back[:2] + back[3:]  # but the rows being written
            again._check()
        assert kinds == ["full", "quiet", "quiet"]
    store.close()


def _stored(
    tmp_path: Path, compiled: bool, trades: list[tuple[int, int, int]], every: int
) -> tuple[Store, SymbolStats, Any]:
    """A store in ``tmp_path`` of symbol X trading ``trades`` (id, price, time), a snapshot
    every ``every`` trades: the store, the live stats and what its candles load as
    (:func:`state_key`)."""
    symbols.use_compiled(compiled)
    symbols.keep_candles(True, [None, None, None])
    symbols.expect_history(set())
    store = Store.open(tmp_path)
    stats = SymbolStats("X")
    for i, (tid, price, t) in enumerate(trades):
        stats.apply(tid, price, t)
        if i % every == every - 1:
            store.save([s for s in [stats.harvest()] if s is not None])
    return store, stats, state_key(store.load()[0].candles)


def _reopened(tmp_path: Path, store: Store, version: int, expected: Any) -> Store:
    """``store``, rewritten as format ``version`` wrote it, closed, then read read-only and
    opened for writing (upgraded): each must load ``expected``. The store opened."""
    with store.env.begin(write=True) as txn:
        txn.put(b"format", str(version).encode(), db=store._meta)
    store.close()
    readonly = Store.open(tmp_path, readonly=True)
    assert readonly.version == version and state_key(readonly.load()[0].candles) == expected
    readonly.close()
    store = Store.open(tmp_path)
    assert store.version == FORMAT_VERSION == 7
    assert state_key(store.load()[0].candles) == expected
    return store


def _go_on(store: Store, stats: SymbolStats, trades: list[tuple[int, int, int]],
           every: int) -> SymbolStats:  # fmt: skip
    """The symbol restored from ``store`` and ``stats`` both trading ``trades``, the restored
    one's harvests saved every ``every`` trades: the restored stats."""
    restored = SymbolStats.restore(store.load()[0])
    for i, (tid, price, t) in enumerate(trades):
        for s in (stats, restored):
            s.apply(tid, price, t)
        if i % every == every - 1:
            store.save([s for s in [restored.harvest()] if s is not None])
            stats.harvest()
    return restored


def _same_book(store: Store, stats: SymbolStats) -> None:
    """The book restored from ``store`` is ``stats``' own, and sound; the store closed."""
    again = SymbolStats.restore(store.load()[0])
    assert again.candles is not None and stats.candles is not None
    assert again.candles.canonical() == stats.candles.canonical()
    again._check()
    store.close()


@pytest.mark.parametrize("compiled", TWINS)
def test_a_store_of_format_4_is_read_and_upgraded(tmp_path: Path, compiled: bool) -> None:
    """Format 4 kept the latest trade time in the bounds alone and the current minute as its
    open time and record. Such a store reads the same candles read-only; opened for writing,
    the minute gets the latest time beside its open time (format 5), and the book restored
    goes on as the one that never stopped."""
    trades = [(1000 + i, 10**8 + (i * 7) % 11, 3_600_000 + 300 * i) for i in range(300)]
    store, stats, expected = _stored(tmp_path, compiled, trades[:150], 10)
    with store.env.begin(write=True) as txn:  # as format 4 wrote it
        assert _as_format_4(txn, store, "X") is not None
    store = _reopened(tmp_path, store, 4, expected)
    _go_on(store, stats, trades[150:], 10)
    _same_book(store, stats)


@pytest.mark.parametrize("compiled", TWINS)
def test_a_store_of_format_5_folds_its_current_hour_into_its_day_as_it_did(
    tmp_path: Path, compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Format 5 folded every retired minute straight into its day, and its bounds name no
    unfolded hour. A book restored from such a store goes on so for the hour it is in (its
    day holds that hour's earlier minutes already), and keeps the later hours apart until
    each is over: every row, stored and in memory, is the market's, none counted twice
    across the hour and the day the restart falls in, and the invariant holds."""
    start = 86_400_000 - 5_000_000  # in the day's next-to-last hour
    trades = [(1000 + i, 10**8 + (i * 7919) % 13, start + 16_000 * i) for i in range(600)]
    with monkeypatch.context() as patch:  # format 5's book: no hour is ever kept apart
        patch.setattr(Candles, "_enter", lambda self, start: None)
        store, stats, _ = _stored(tmp_path, compiled, trades[:300], 10)
        expected = state_key(store.load()[0].candles)
        assert stats.candles is not None and stats.candles.unfolded is None
    with store.env.begin(write=True) as txn:  # the bounds as format 5 wrote them
        key = symbol_prefix("X") + b"\0"
        bounds = msgspec.msgpack.decode(txn.get(key, db=store._current))
        assert len(bounds) == 16 and bounds[15] is None
        txn.put(key, msgspec.msgpack.encode(bounds[:15]), db=store._current)
    store = _reopened(tmp_path, store, 5, expected)
    restored = SymbolStats.restore(store.load()[0])
    for i, (tid, price, t) in enumerate(trades[300:]):
        restored.apply(tid, price, t)
        if i % 10 == 9:
            store.save([s for s in [restored.harvest()] if s is not None])
            restored._check()
    assert (
        restored.candles is not None
        and restored.candles.unfolded == trades[-1][2] // 3_600_000 * 3_600_000
    )
    store.save([s for s in [restored.harvest()] if s is not None])
    market = Market(random.Random(0), 0, [1])
    market.trades = trades
    for k in range(3):
        memory = restored.candle_rows(k, 0, 2**62)[0]
        stored = store.candles("X", k, 0, 2**62, 10**6, True)
        rows = select_rows(stored, memory, None, None, None, 10**6)
        assert {r.open_time: r for r, _ in rows} == market.candles({t[0] for t in trades}, k)
    again = SymbolStats.restore(store.load()[0])
    assert again.candles is not None and again.candles.unfolded == restored.candles.unfolded
    mine, its = restored.candles.canonical(), again.candles.canonical()
    assert mine[:2] + mine[3:] == its[:2] + its[3:]  # (2: the rows just settled, stored)
    again._check()
    store.close()


@pytest.mark.parametrize("bounds", ["short", "long", "past hour", "no minute"])
def test_candle_bounds_that_contradict_themselves_are_refused(tmp_path: Path, bounds: str) -> None:
    """Bounds of a length no format wrote, or naming an unfolded hour that is not the current
    minute's, are a corrupt store (StoreError), never a book that would count an hour twice
    or never."""
    trades = [(1000 + i, 10**8 + i % 5, 3_500_000 + 5_000 * i) for i in range(60)]
    store, _, _ = _stored(tmp_path, False, trades, 10)
    key = symbol_prefix("X") + b"\0"
    with store.env.begin(write=True) as txn:
        value = msgspec.msgpack.decode(txn.get(key, db=store._current))
        assert value[15] == 3_600_000 and value[3] // 3_600_000 == 1  # the current hour
        value = {"short": value[:14], "long": [*value, None], "past hour": [*value[:15], 0],
                 "no minute": [*value[:3], None, *value[4:]]}[bounds]  # fmt: skip
        txn.put(key, msgspec.msgpack.encode(value), db=store._current)
    with pytest.raises(StoreError, match="corrupt candle bounds"):
        store.load()
    store.close()


def _stored_keys(store: Store, symbol: str) -> tuple[set[bytes], set[bytes]]:
    """The keys of ``symbol`` in the store's ``current`` and ``candles`` databases, each
    without the symbol's prefix."""
    prefix = symbol_prefix(symbol)
    with store.env.begin() as txn:
        return tuple(  # type: ignore[return-value]
            {bytes(k)[len(prefix) :] for k, _ in txn.cursor(db=db) if bytes(k).startswith(prefix)}
            for db in (store._current, store._candles)
        )


def _as_format_4(txn: Any, store: Store, symbol: str) -> bytes | None:
    """Rewrite ``symbol``'s ``current`` values as format 4 held them: the latest trade time
    in the bounds alone (each snapshot wrote them), the current minute its open time and
    record. Returns that minute's value (None if none is stored whole)."""
    prefix = symbol_prefix(symbol)
    bounds = msgspec.msgpack.decode(bytes(txn.get(prefix + b"\0", db=store._current)))
    whole = txn.get(prefix + b"\x01", db=store._current)
    if whole is None:
        return None
    start, latest, record = quiet_parts(bytes(whole))
    bounds[1] = max(bounds[1], latest)
    txn.put(prefix + b"\0", msgspec.msgpack.encode(bounds), db=store._current)
    old = start.to_bytes(8, "big") + record
    txn.put(prefix + b"\x01", old, db=store._current)
    return old


_U64_EDGES = [0, 1, 127, 128, 2**14 - 1, 2**14, 2**63 - 1, 2**63, 2**64 - 1]
_levels = st.lists(st.tuples(st.sampled_from(_U64_EDGES) | st.integers(0, 2**64 - 1),
                             st.sampled_from(_U64_EDGES) | st.integers(1, 50)),
                   max_size=40)  # fmt: skip


def _be(values: list[int]) -> bytes:
    return b"".join(v.to_bytes(8, "big") for v in values)


@settings(max_examples=300, deadline=None)
@given(_levels, st.booleans())
def test_compact_levels_give_back_every_level_exactly(
    levels: list[tuple[int, int]], ascending: bool
) -> None:
    """Any list of levels (8-byte prices and counts, at the edges of 64 bits, ascending as a
    delta's chunk is or in any order): both twins make the same bytes, and both give back
    the very lists."""
    if ascending:
        levels = sorted(levels)
    prices, counts = _be([p for p, _ in levels]), _be([c for _, c in levels])
    data = py_compact(prices, counts)
    assert py_expand(data) == (prices, counts)
    if c_compact is not None:
        assert c_compact(prices, counts) == data
        assert c_expand(data) == (prices, counts)


@settings(max_examples=200, deadline=None)
@given(st.lists(_levels, max_size=4), st.integers(0, 2**64 - 1))
def test_compact_levels_made_after_a_price_join_into_the_compact_form_of_all(
    lists: list[list[tuple[int, int]]], start: int
) -> None:
    """Lists made compact each after the last price of the one before (``prev``), joined:
    the bytes compact_levels makes of all of them at once, by both twins; and what a
    Gathered gathers of periods and single trades in turn is those bytes too (what an
    hour's delta stores)."""
    twins = [py_compact] + ([c_compact] if c_compact is not None else [])
    for compact in twins:
        joined, prev = b"", 0
        for levels in lists:
            joined += compact(_be([p for p, _ in levels]), _be([c for _, c in levels]), prev)
            prev = levels[-1][0] if levels else prev
        every = [level for levels in lists for level in levels]
        assert joined == py_compact(_be([p for p, _ in every]), _be([c for _, c in every]))
        with pytest.raises(OverflowError):
            compact(b"", b"", 2**64)
    for kind in PERIODS:
        gathered, every = candles.Gathered(), []
        gathered.level(start, 3)
        every.append((start, 3))
        for i, levels in enumerate(lists):
            if i % 2:  # late trades, a level each, in any order
                for price, count in levels:
                    gathered.level(price, count)
                every += levels
                continue
            levels = [(price, count % 1000 + 1) for price, count in levels]  # (a trade's)
            period = kind(0, 60_000)
            for price, count in levels:
                period.add(i, i, price, count)
            data, last = period.compact_after(gathered.last)
            assert last == (max(period.items()[0], default=gathered.last))
            assert data == py_compact(*period.packed(), gathered.last)
            gathered.period(period)
            held = Counter[int]()
            for price, count in levels:
                held[price] += count
            every += sorted(held.items())
        assert bytes(gathered.data) == py_compact(_be([p for p, _ in every]),
                                                  _be([c for _, c in every]))  # fmt: skip


@pytest.mark.parametrize("n", [0, 1, 40, 1000])
def test_compact_levels_take_two_bytes_a_level_a_few_ticks_apart(n: int) -> None:
    """Ascending prices a few ticks apart with small counts (a delta's): two bytes a level
    (the first price's varint aside), by both twins."""
    ticks = [10**9 + 7 * i for i in range(n)]
    for compact in [py_compact] + ([c_compact] if c_compact is not None else []):
        assert len(compact(_be(ticks), _be([1] * n))) <= 2 * n + 5


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=60) | st.lists(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0x81, 0xFF]),
                                         max_size=24).map(bytes))  # fmt: skip
def test_compact_levels_refuse_what_they_never_make(data: bytes) -> None:
    """Any bytes: both twins give back the same lists or both refuse them (ValueError: cut
    short, an odd number of varints, a varint beyond 64 bits or longer than it needs); what
    they give back compacts to the very bytes, so no two stored deltas read alike."""
    outcomes = []
    for expand in [py_expand] + ([c_expand] if c_expand is not None else []):
        try:
            outcomes.append(expand(data))
        except ValueError:
            outcomes.append(None)
    assert all(o == outcomes[0] for o in outcomes)
    if outcomes[0] is not None:
        assert py_compact(*outcomes[0]) == data
    for bad in ((b"\0" * 8, b""), (b"\0" * 7, b"\0" * 7)):
        for compact in [py_compact] + ([c_compact] if c_compact is not None else []):
            with pytest.raises(ValueError):
                compact(*bad)


@pytest.mark.parametrize("compiled", TWINS)
def test_a_store_of_format_3_reads_its_deltas_and_writes_new_ones_compact(
    tmp_path: Path, compiled: bool
) -> None:
    """Format 3 stored the levels of a delta and of a whole minute as prices and counts, 8
    bytes each. Such a store reads the same candles, read-only and once upgraded (format 6:
    its deltas not rewritten), and the snapshots after write compact levels beside the old
    ones: the book restored from both is the book that never stopped."""
    trades = [(1000 + i, 10**8 + (i * 7919) % 997, 3_570_000 + 60 * i) for i in range(1000)]
    trades += [(1000 + i, 10**8 + i % 5, 3_660_000 + 150 * (i - 1000)) for i in range(1000, 1600)]
    store, stats, expected = _stored(tmp_path, compiled, trades[:1200], 100)
    old = whole = 0
    with store.env.begin(write=True) as txn:  # as format 3 wrote them
        cursor = txn.cursor(db=store._candles)
        for key, value in list(cursor):
            if len(key) == len(symbol_prefix("X")) + 13:  # a delta
                levels = py_expand(msgspec.msgpack.decode(bytes(value)))
                txn.put(bytes(key), msgspec.msgpack.encode(list(levels)), db=store._candles)
                old += 1
        now = symbol_prefix("X") + b"\x01"
        value = _as_format_4(txn, store, "X")
        assert value is not None
        record = msgspec.msgpack.decode(value[8:])
        if len(record) == 9:  # the current minute whole: its levels as two lists
            lists = msgspec.msgpack.encode([*record[:8], *py_expand(record[8])])
            txn.put(now, value[:8] + lists, db=store._current)
            whole += 1
    assert old >= 2 and whole == 1  # an hour's and a day's deltas; the current minute whole
    store = _reopened(tmp_path, store, 3, expected)
    _go_on(store, stats, trades[1200:], 100)
    with store.env.begin() as txn:
        kinds = Counter(type(msgspec.msgpack.decode(bytes(v))).__name__
                        for k, v in txn.cursor(db=store._candles)
                        if len(k) == len(symbol_prefix("X")) + 13)  # fmt: skip
    assert kinds["bytes"] >= 1  # written compact
    _same_book(store, stats)


@pytest.mark.parametrize("compiled", TWINS)
def test_a_store_of_format_2_is_read_and_upgraded_with_its_candles(
    tmp_path: Path, compiled: bool
) -> None:
    """Format 2 kept a symbol's candle bounds and its current minute in ``candles``. Such a
    store reads the same candles read-only; opened for writing, its bounds move to
    ``current``, and the next snapshot's current minute there wins over the older copy left
    in ``candles``."""
    trades = [(1000 + i, 10**8 + (i * 7) % 11, 3_600_000 + 300 * i) for i in range(500)]
    store, _, expected = _stored(tmp_path, compiled, trades, 50)
    prefix = symbol_prefix("X")
    with store.env.begin(write=True) as txn:  # as format 2 wrote it
        _as_format_4(txn, store, "X")
        bounds = txn.pop(prefix + b"\0", db=store._current)
        whole = txn.pop(prefix + b"\x01", db=store._current)
        txn.put(prefix + b"\0", bounds, db=store._candles)
        txn.put(prefix + b"\x01" + whole[:8], whole[8:], db=store._candles)
    store = _reopened(tmp_path, store, 2, expected)
    assert _stored_keys(store, "X")[0] == {b"\0"}
    restored = SymbolStats.restore(store.load()[0])
    restored.apply(1500, 10**8 + 3, trades[-1][2] + 1)  # the same minute, one trade more
    store.save([s for s in [restored.harvest()] if s is not None])
    assert _stored_keys(store, "X")[0] == {b"\0", b"\x01"}
    (loaded,) = store.load()
    assert loaded.candles is not None
    starts = [start for start, _, _ in loaded.candles.periods[0]]
    assert starts.count(loaded.candles.current) == 1  # the older copy is not handed over
    again = SymbolStats.restore(loaded)
    assert again.candles is not None and again.candles.minute is not None
    assert again.candles.minute.count == restored.candles.minute.count  # not the older copy
    assert again.candles.canonical() == restored.candles.canonical()
    again._check()
    store.close()


def _period_of(trades: list[tuple[int, int, int]]) -> PyPeriod:
    """A minute (at 3,600,000) holding (id, price, time) trades, from the pure twin."""
    p = PyPeriod(3_600_000, 60_000)
    for tid, price, _ in trades:
        p.add(tid, tid, price, 1)
    return p


# -- the API ------------------------------------------------------------------------------------


def test_candles_endpoint_answers_the_rows_and_refuses_bad_requests(tmp_path: Path) -> None:
    """GET /{symbol}/candles through Falcon with rows in LMDB and in memory: the fields, exact
    decimal strings, the window and limit asked for, final flags; 400 JSON for a bad
    interval, start, end, range or limit; 404 JSON for an unknown symbol."""
    symbols.keep_candles(True, [None, None, None])
    state = State()
    state.stored = Store.open(tmp_path)
    stats = state.table().get("ETHBTC")
    assert stats is not None
    market = Market(random.Random(3), 300, [5_000, 30_000])
    for i, (tid, price, t) in enumerate(market.trades):
        stats.apply(tid, price * 10**6, t)
        if i % 50 == 0:
            state.stored.save([s for s in [stats.harvest()] if s is not None])
    state.stored.save([s for s in [stats.harvest()] if s is not None])
    client = falcon.testing.TestClient(create_app(state))
    expected = sorted(market.candles({t[0] for t in market.trades}, 0).values())
    r = client.simulate_get("/ethbtc/candles", params={"interval": "1m", "limit": "1000"})
    assert r.status_code == 200, r.text
    body = r.json
    assert body["symbol"] == "ETHBTC" and body["interval"] == "1m"
    assert body["fields"] == ["open_time", "open", "high", "low", "close", "count", "median",
                              "final"]  # fmt: skip
    assert [row[:7] for row in body["rows"]] == [
        [e.open_time, format_price(e.open * 10**6), format_price(e.high * 10**6),
         format_price(e.low * 10**6), format_price(e.close * 10**6), e.trades,
         format_median(e.twice_median * 10**6)] for e in expected
    ]  # fmt: skip
    finals = [row[7] for row in body["rows"]]
    assert finals == [False] + [True] * (len(expected) - 2) + [False]  # began; still open
    # windows: the first limit from start, else the latest limit before end
    mid = expected[len(expected) // 2].open_time
    r = client.simulate_get("/ETHBTC/candles", params={"interval": "1m", "start": str(mid),
                                                       "limit": "3"})  # fmt: skip
    assert [row[0] for row in r.json["rows"]] == [
        e.open_time for e in expected if e.open_time >= mid
    ][:3]
    r = client.simulate_get("/ETHBTC/candles", params={"interval": "1m", "end": str(mid),
                                                       "limit": "3"})  # fmt: skip
    assert [row[0] for row in r.json["rows"]] == [
        e.open_time for e in expected if e.open_time < mid
    ][-3:]
    r = client.simulate_get("/ETHBTC/candles", params={"interval": "1d"})
    assert [row[5] for row in r.json["rows"]] == [300] and r.json["rows"][0][7] is False
    for params in [{}, {"interval": "5m"}, {"interval": "1m", "limit": "0"},
                   {"interval": "1m", "limit": "1001"}, {"interval": "1m", "limit": "x"},
                   {"interval": "1m", "start": "-1"}, {"interval": "1m", "end": "1.5"},
                   {"interval": "1m", "start": "10", "end": "10"},
                   {"interval": "1m", "start": str(2**60)}]:  # fmt: skip
        r = client.simulate_get("/ETHBTC/candles", params=params)
        assert r.status_code == 400 and r.json["title"].startswith("Bad"), params
    r = client.simulate_get("/NOPE/candles", params={"interval": "1m"})
    assert r.status_code == 404 and "title" in r.json
    r = client.simulate_get("/QUIETUSDT/candles", params={"interval": "1h"})
    assert r.status_code == 200 and r.json["rows"] == []
    state.stored.close()


# -- daily candles from the archives ----------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from(TWINS), st.sampled_from(["C", "polars"]),
       st.booleans())  # fmt: skip
def test_archive_files_fill_the_days_since_listing(seed: int, compiled: bool, engine: str,
                                                   sealed_first: bool) -> None:  # fmt: skip
    """A symbol counted live from some trade on, then its history imported as the service
    does: archive files of one to a few UTC days (reduced by the real reduction, either
    engine), some replaced by REST rows (a file refused), some missing their first trades
    (filled over REST, the file then cut below), with snapshots and restarts between files.
    Its daily candles equal those of every trade since listing, each final but the last;
    minutes and hours those of the trades counted one by one; the invariant holds.
    ``sealed_first``: the symbol was first run with no history to come, so the periods where
    counting began settled (sealed); the history imported later lands around them, its
    trades of their times counted outside any candle."""
    pytest.importorskip("polars") if engine == "polars" else None
    if engine == "C" and native_reader() is None:
        pytest.skip("the C reader was not built")
    symbols.use_compiled(compiled)
    symbols.keep_candles(True, [None, None, None])
    rnd = random.Random(seed)
    market = Market(rnd, rnd.randrange(2, 300), [0, 600_000, 3_600_000, 14_400_000])
    market.trades = trades = [(i, p * 10**6, t) for i, p, t in market.trades]  # cents
    live_from = rnd.randrange(2, len(trades) + 1)  # trade ids live_from.. are counted live
    if rnd.random() < 0.3:
        live_from = len(trades) + 1  # none
    stats = SymbolStats("X")
    store = FakeStore()
    one_by_one: set[int] = set()
    symbols.expect_history(set() if sealed_first else None)
    for tid, price, t in trades[live_from - 1 :]:
        stats.apply(tid, price, t)
        one_by_one.add(tid)
        if sealed_first and rnd.random() < 0.1:
            snapshot(stats, store)
    snapshot(stats, store)
    sealed = stats.candles.sealed if stats.candles is not None else (-1, -1)
    stats = restart(stats, store)
    symbols.expect_history(None)  # run again with --history
    if live_from > len(trades):  # none live: the history reaches up to the latest trade
        stats.baseline(len(trades), trades[-1][2])
    assert stats.start_history(1, trades[0][2])
    day = 86_400_000
    days = sorted({t - t % day for _, _, t in trades[: live_from - 1]})
    while days:  # files of 1..3 whole UTC days, oldest first
        span = days[: rnd.randint(1, 3)]
        days = days[len(span) :]
        first, last = span[0], span[-1]
        inside = [tr for tr in trades[: live_from - 1] if first <= tr[2] < last + day]
        front = stats.front()
        assert front is not None and front.lo == inside[0][0]
        roll = rnd.random()
        if roll < 0.2:  # refused: its trades come over REST
            stats.apply_rows([Row(tid, tid, price, t) for tid, price, t in inside])
            one_by_one.update(tid for tid, _, _ in inside)
        else:
            if roll < 0.4 and len(inside) > 1:  # a hole at its start, filled over REST
                hole = inside[: rnd.randrange(1, len(inside))]
                stats.apply_rows([Row(tid, tid, price, t) for tid, price, t in hole])
                one_by_one.update(tid for tid, _, _ in hole)
            short = []
            if 0.4 <= roll < 0.55 and len(inside) > 1:  # its last trades missing: over REST
                cut = rnd.randrange(1, len(inside))
                inside, short = inside[:cut], inside[cut:]
            front = stats.front()
            assert front is not None
            file = ArchiveFile(_date(first), _date(last), "X")
            data = agg_csv([(7 + i, price, tid, tid, t)
                            for i, (tid, price, t) in enumerate(inside)])  # fmt: skip
            r = reduce_csv(io.BytesIO(data), file, front.lo, front.hi, engine=engine)
            assert stats.apply_levels(r.first_id, r.last_id, r.levels, r.counts, r.last_row[4],
                                      last_price=r.last_row[3], days=r.days)  # fmt: skip
            if short:
                snapshot(stats, store)  # its days may settle, but for the trades to come
                stats.apply_rows([Row(tid, tid, price, t) for tid, price, t in short])
                one_by_one.update(tid for tid, _, _ in short)
        if rnd.random() < 0.3:
            snapshot(stats, store)
        if rnd.random() < 0.2:
            stats = restart(stats, store)
    assert stats.front() is None
    snapshot(stats, store)
    stats._check()
    for state in (stats, restart(stats, store)):
        rows = select_rows(store.rows(2), state.candle_rows(2, 0, 2**62)[0], state.ids.origin,
                           None, None, 10**6)  # fmt: skip
        # the history of the sealed periods' times is outside any candle, and so is a file's
        # whole day that meets them
        kept = {tid for tid, _, t in trades if tid >= live_from or (
            not sealed[0] <= t < sealed[1] if tid in one_by_one
            else not (t - t % day < sealed[1] and sealed[0] < t - t % day + day))}  # fmt: skip
        assert {r.open_time: r for r, _ in rows} == market.candles(kept, 2)
        if sealed[0] < 0:
            assert [f for _, f in rows] == [True] * (len(rows) - 1) + [False]
        for k in (0, 1):
            memory = state.candle_rows(k, 0, 2**62)[0]
            got = {r.open_time: r for r, _ in select_rows(store.rows(k), memory, None, None,
                                                          None, 10**6)}  # fmt: skip
            assert got == market.candles(one_by_one & kept, k), INTERVALS[k][0]


def _date(ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).date()


def test_minutes_rolled_by_the_trade_path_retire_even_when_nothing_is_stored() -> None:
    """A later minute's trade taken by the per-trade path queues the minute before; a harvest
    retires it even when it stores nothing (a file's merge under way, a damaged symbol),
    so the queue never outgrows a snapshot interval."""
    for compiled in TWINS:
        symbols.use_compiled(compiled)
        stats = SymbolStats("X")
        stats.apply(1, 10, 0)  # the first minute, through the general path
        assert stats.apply_common(2, 20, 60_000) is not None  # rolled
        candles_ = stats.candles
        assert candles_ is not None and len(candles_.retiring) == 1
        stats.damaged = True
        assert stats.harvest() is None
        assert not candles_.retiring and candles_.open[0][0].count == 1
        stats.damaged = False
        stats._check()
