"""SymbolStats and SymbolTable behaviour (trade ids against an oracle: test_tradeids)."""

from __future__ import annotations

import statistics
import threading
from fractions import Fraction
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from medianserv.symbols import Outcome, Row, SymbolStats, SymbolTable

from .test_tradeids import _price, _time, ops


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


@given(st.integers(0, 30), ops)
def test_apply_rows_is_exactly_once_and_exact(base: int, script: list[tuple[Any, ...]]) -> None:
    """SymbolStats.apply_rows against a brute-force median of every trade applied once."""
    stats = SymbolStats("X")
    stats.baseline(base, _time(base))
    prices: dict[int, int] = {}
    top = base
    for op in script:
        if op[0] == "give_up":
            continue
        lo = op[1]
        hi = lo if op[0] == "trade" else lo + op[2]
        if op[0] == "trade":
            if stats.apply(lo, _price(lo), _time(lo)) is not Outcome.DUPLICATE:
                prices[lo] = _price(lo)
                top = max(top, lo)
        else:  # one aggregate: every id at the price of its first
            new = [i for i in range(lo, hi + 1) if base < i <= top and i not in prices]
            assert stats.apply_rows([Row(lo, hi, _price(lo), _time(lo))]) == len(new)
            prices.update(dict.fromkeys(new, _price(lo)))
        stats._check()
        view = stats.view()
        assert view.count == len(prices)
        if prices:
            expected = 2 * statistics.median([Fraction(p) for p in prices.values()])
            assert view.twice_median == expected
            assert view.last_trade_id == max(prices)
            assert view.last_price == prices[max(prices)]
