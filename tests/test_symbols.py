"""TradeIds against a set-of-applied-ids oracle; SymbolStats and SymbolTable behaviour."""

from __future__ import annotations

import statistics
import threading
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medianserv import symbols as symbols_module
from medianserv.symbols import Outcome, SymbolStats, SymbolTable, TradeIds


@given(st.lists(st.integers(min_value=0, max_value=200), max_size=300))
def test_trade_ids_match_an_applied_set(ids: list[int]) -> None:
    tracker = TradeIds()
    applied: set[int] = set()
    for t in ids:
        outcome = tracker.observe(t)
        if t in applied:
            assert outcome is Outcome.DUPLICATE
        elif applied and t < min(applied):  # before our history began: ignored
            assert outcome is Outcome.DUPLICATE
            continue
        elif applied and t < max(applied):
            assert outcome is Outcome.FILLED
        elif applied and t > max(applied) + 1:
            assert outcome is Outcome.GAP
        else:
            assert outcome is Outcome.APPLIED
        applied.add(t)
        lo = min(applied)
        expected_gaps = set(range(lo, max(applied) + 1)) - applied
        got = {i for a, b in tracker.gaps for i in range(a, b + 1)}
        assert got == expected_gaps
        assert tracker.missing == len(expected_gaps)
        assert tracker.last == max(applied)
        assert all(a <= b for a, b in tracker.gaps)
        assert all(x[1] + 1 < y[0] for x, y in zip(tracker.gaps, tracker.gaps[1:], strict=False))


def test_gap_cap_keeps_memory_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(symbols_module, "MAX_OPEN_GAPS", 3)
    tracker = TradeIds()
    for t in range(0, 20, 2):  # gaps at 1, 3, 5, ...
        tracker.observe(t)
    assert len(tracker.gaps) == 3
    assert tracker.gaps == [(13, 13), (15, 15), (17, 17)]
    assert tracker.lost == 6
    assert tracker.observe(1) is Outcome.DUPLICATE  # given up: never applied late


def test_give_up_counts_lost_ids() -> None:
    tracker = TradeIds()
    for t in (1, 10, 20):
        tracker.observe(t)
    assert tracker.gaps == [(2, 9), (11, 19)]
    assert tracker.give_up(5, 12) == 7
    assert tracker.gaps == [(2, 4), (13, 19)]
    assert (tracker.lost, tracker.missing) == (7, 10)


def test_stats_apply_exactly_once_and_last_price_by_highest_id() -> None:
    stats = SymbolStats("BTCUSDT")
    assert stats.view().twice_median is None
    trades = [(100, 5, 1), (103, 9, 4), (101, 7, 2), (103, 9, 4), (102, 1, 3), (100, 5, 1)]
    outcomes = [stats.apply(t, p, ms) for t, p, ms in trades]
    assert outcomes == [
        Outcome.APPLIED,
        Outcome.GAP,
        Outcome.FILLED,
        Outcome.DUPLICATE,
        Outcome.FILLED,
        Outcome.DUPLICATE,
    ]
    view = stats.view()
    assert (view.count, view.last_price, view.last_trade_id, view.last_trade_time) == (4, 9, 103, 4)
    assert view.twice_median == 2 * statistics.median([Fraction(p) for p in (5, 9, 7, 1)])
    assert (view.missing, view.lost) == (0, 0)


def test_concurrent_writers_apply_each_trade_once() -> None:
    stats = SymbolStats("ETHUSDT")
    ids = list(range(20_000))
    workers = [
        threading.Thread(target=lambda: [stats.apply(t, t % 97, t) for t in ids]) for _ in range(4)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stats.median._check()
    assert stats.view().count == len(ids)
    assert stats.view().last_trade_id == ids[-1]


def test_table_lookup_and_rejection(real_symbols: list[str]) -> None:
    table = SymbolTable.build(real_symbols)
    table._check()
    assert table.symbols == tuple(real_symbols)
    for s in real_symbols:
        stats = table.get(s)
        assert stats is not None and stats.symbol == s
    for unknown in ("btcusdt", "BTCUSDTX", "", "BTC", "NOTLISTED"):
        assert table.get(unknown) is None
        assert unknown not in table


def test_rebuild_carries_stats_over_and_leaves_old_table_intact() -> None:
    old = SymbolTable.build(["BTCUSDT", "ETHUSDT", "GONEUSDT"])
    btc = old.get("BTCUSDT")
    assert btc is not None
    btc.apply(1, 100, 1)
    new = SymbolTable.rebuild(["ETHUSDT", "BTCUSDT", "NEWUSDT"], dict(old.items()))
    new._check()
    assert new.get("BTCUSDT") is btc  # the same object: writers on either table agree
    assert new.get("GONEUSDT") is None
    fresh = new.get("NEWUSDT")
    assert fresh is not None and fresh.view().count == 0
    assert old.get("GONEUSDT") is not None  # readers of the old table are not disturbed
    assert [s for s, _ in new.items()] == ["ETHUSDT", "BTCUSDT", "NEWUSDT"]
