"""Pure parts of ingestion: connection plan, SUBSCRIBE batching, pacing, trade-id sweeps."""

from __future__ import annotations

import json
import math
import random

from hypothesis import given
from hypothesis import strategies as st

from medianserv.errors import InputError
from medianserv.exchange import (
    AggTrade,
    HistoricalTrade,
    TickerRange,
    parse_agg_trades,
    parse_exchange_info,
    parse_historical_trades,
    parse_trade_id_ranges,
)
from medianserv.pacing import SlidingWindow, backoff
from medianserv.paging import (
    Cursor,
    Locate,
    Request,
    check_page,
    check_trades,
    next_hint,
    plan,
)
from medianserv.streams import plan_connections, stream_batches
from medianserv.symbols import Gap

names = st.lists(st.text("abcdefgh", min_size=1, max_size=4), unique=True, max_size=60)


@given(names, names, st.integers(min_value=1, max_value=7))
def test_plan_is_minimal_complete_and_stable(before: list[str], after: list[str], cap: int) -> None:
    old = plan_connections(before, cap)
    new = plan_connections(after, cap, old)
    for groups, streams in ((old, before), (new, after)):
        flat = [s for group in groups for s in group]
        assert sorted(flat) == sorted(streams)  # each stream exactly once
        assert all(0 < len(g) <= cap for g in groups)
        assert len(groups) == math.ceil(len(streams) / cap)  # the fewest connections
    kept = set(before) & set(after)
    survivors = [g & kept for g in old if g & kept]
    if len(survivors) <= len(new):  # no drain needed: kept streams stay together
        for g in survivors:
            assert any(g <= h for h in new)


@given(st.lists(st.text(min_size=1, max_size=30), unique=True, max_size=300),
       st.integers(min_value=100, max_value=5000))  # fmt: skip
def test_batches_fit_the_frame_limit(streams: list[str], max_bytes: int) -> None:
    batches = stream_batches(streams, max_bytes)
    assert sorted(s for b in batches for s in b) == sorted(streams)
    for b in batches:
        frame = json.dumps({"method": "UNSUBSCRIBE", "params": b, "id": 1000000000})
        assert len(frame.replace(" ", "").encode()) <= max_bytes or len(b) == 1


def test_backoff_is_capped_jittered_and_endless() -> None:
    delays = backoff(0.5, 30.0, rnd=random.Random(1))
    values = [next(delays) for _ in range(1000)]
    assert all(0.25 <= v <= 30.0 for v in values)
    assert max(values[-100:]) > 20 and len(set(values)) > 900


@given(st.lists(st.floats(min_value=0, max_value=0.5), max_size=200), st.integers(1, 5))
def test_sliding_window_never_exceeds_its_limit(gaps: list[float], limit: int) -> None:
    window, now, taken = SlidingWindow(limit, 1.1), 0.0, []
    for g in gaps:
        now += g
        if window.try_add(now):
            taken.append(now)
    for i, t in enumerate(taken):  # in ANY 1.1 s window, not just on average
        assert sum(1 for u in taken[i:] if u - t < 1.1) <= limit


def test_sliding_window_limit() -> None:
    w = SlidingWindow(limit=300, window=300.0)
    accepted = [t for t in range(1000) if w.try_add(float(t) * 0.1)]
    assert len(accepted) == 300


def test_exchange_parsers() -> None:
    assert parse_exchange_info(
        {"symbols": [{"symbol": "A"}, {"symbol": "B", "status": "BREAK"}]}
    ) == ["A", "B"]
    for bad in ({}, {"symbols": [{}]}, {"symbols": [{"symbol": "A"}, {"symbol": "A"}]}, []):
        try:
            parse_exchange_info(bad)
        except ValueError:
            continue
        raise AssertionError(bad)
    trades = parse_historical_trades(
        [{"id": 2, "price": "1.5", "time": 3}, {"id": 1, "price": "2", "time": 1}]
    )
    assert [(t.trade_id, t.price) for t in trades] == [(1, 200_000_000), (2, 150_000_000)]
    ranges = parse_trade_id_ranges(
        [
            {"symbol": "A", "firstId": 1, "lastId": 9, "openTime": 5, "closeTime": 86_400_005},
            {"symbol": "B", "firstId": -1, "lastId": -1},
            {"x": 1},
        ]
    )
    assert ranges == {"A": TickerRange(1, 9, 5, 86_400_005), "B": TickerRange(-1, -1)}


def test_agg_trades_parser_refuses_what_is_not_exact() -> None:
    good = b'[{"a":7,"p":"1.50000000","q":"2","f":10,"l":12,"T":99,"m":true,"M":true,"x":1}]'
    assert parse_agg_trades(good) == [AggTrade(7, 10, 12, 150_000_000, 99)]
    bad = [
        b"{}",  # not a list
        b'[{"a":7,"p":"1.5","f":12,"l":10,"T":99}]',  # first > last
        b'[{"a":7,"p":"1.5","f":-1,"l":10,"T":99}]',  # negative id
        b'[{"a":7,"p":"1.5","f":-1,"l":-1,"T":99}]',  # the audit's ids with a price
        b'[{"a":7,"p":"0","f":-2,"l":-2,"T":99}]',  # not the audit's mark
        b'[{"a":7,"p":1.5,"f":1,"l":1,"T":99}]',  # a float price
        b'[{"a":7,"f":1,"l":1,"T":99}]',  # no price
        b'[{"a":7,"p":"1e5","f":1,"l":1,"T":99}]',  # not a plain decimal
        b"[{",
    ]
    for body in bad:
        try:
            parse_agg_trades(body)
        except InputError:
            continue
        raise AssertionError(body)


def test_agg_trades_parser_drops_and_counts_the_audits_invalid_rows() -> None:
    """Rows the 2022-04 data audit marked invalid in place (a duplicate of a row: its
    aggregate id, price and quantity 0, trade ids -1) cover no trade: dropped, counted."""
    body = (b'[{"a":7,"p":"1.5","q":"2","f":10,"l":12,"T":99},'
            b'{"a":7,"p":"0.00000000","q":"0","f":-1,"l":-1,"T":99},'
            b'{"a":8,"p":"1.6","q":"2","f":13,"l":13,"T":100}]')  # fmt: skip
    rows = parse_agg_trades(body)
    assert rows == [AggTrade(7, 10, 12, 150_000_000, 99), AggTrade(8, 13, 13, 160_000_000, 100)]
    assert rows.invalid == 1


def agg(a: int, f: int, last: int, price: int = 5, t: int = 100) -> AggTrade:
    return AggTrade(a, f, last, price, t)


def test_plan_finds_a_gap_by_time_then_follows_the_cursor() -> None:
    gap = Gap(100, 200, after_ms=1_000, before_ms=5_000, price_before=5, price_after=6)
    assert plan(gap, None) == Request("aggTrades", start_ms=1_000, end_ms=5_000)
    days = gap._replace(before_ms=1_000 + 3 * 86_400_000)  # no limit on the span since 2022-12
    assert plan(days, None) == Request("aggTrades", start_ms=1_000, end_ms=days.before_ms)
    assert plan(gap._replace(before_ms=None), None) == Request("aggTrades", start_ms=1_000)
    row = agg(40, 90, 99)
    assert plan(gap, Cursor(100, row)) == Request("aggTrades", from_id=40)
    assert plan(gap, Cursor(101, row)).start_ms == 1_000  # a stale cursor is ignored
    # aggregates cannot serve: no lower time bound, or a hint to locate
    historical = Request("historicalTrades", 100, limit=101)
    assert plan(gap._replace(after_ms=None), None) == historical
    assert plan(gap, Locate(100)) == historical
    assert plan(gap, None, endpoint="historicalTrades") == historical


def test_the_cursor_follows_the_gap_not_the_page() -> None:
    """A page that ends below the gap (more aggregates in the millisecond before it than a
    page holds) is continued from its last row; one that reaches into the gap, from where the
    gap starts after it; one that covers the gap ends the chase."""
    gap = Gap(100, 200, after_ms=1_000)
    below = [agg(1, 10, 19), agg(2, 20, 29)]
    assert next_hint(below, gap) == Cursor(100, below[1])
    assert plan(gap, next_hint(below, gap)) == Request("aggTrades", from_id=2)
    into = [agg(3, 90, 99), agg(4, 100, 120)]
    assert next_hint(into, gap) == Cursor(121, into[1])
    assert next_hint([agg(5, 100, 200)], gap) is None


def test_check_page_refuses_pages_that_do_not_fit() -> None:
    gap = Gap(100, 200, 1_000, 5_000, price_before=5, price_after=6)
    page = [agg(10, 98, 99), agg(11, 100, 150), agg(12, 151, 201, price=6)]
    assert check_page(page, gap) is None
    assert check_page([], gap) == "empty"
    assert check_page([agg(10, 101, 120)], gap) == "late"  # starts after the gap
    assert check_page([page[0], agg(11, 99, 150)], gap) == "overlap"
    assert check_page([page[0], agg(11, 101, 150)], gap) == "skip"  # id 100 in no row
    assert check_page([page[0], agg(12, 100, 150)], gap) == "skip"  # aggregate 11 missing
    assert check_page([page[0], agg(11, 100, 150, t=99)], gap) == "disorder"
    assert check_page([agg(10, 98, 99, price=4), *page[1:]], gap) == "contradict"  # id 99 is 5
    assert check_page([*page[:2], agg(12, 151, 201, price=7)], gap) == "contradict"  # id 201
    # a continued page must start with the row applied last, exactly
    cursor = Cursor(100, agg(10, 98, 99))
    assert check_page(page, gap, cursor) is None
    assert check_page([agg(10, 98, 99, t=99), *page[1:]], gap, cursor) == "contradict"
    # historicalTrades pages
    trades = [HistoricalTrade(i, 5 if i < 201 else 6, 100) for i in range(150, 203)]
    assert check_trades(trades, gap) is None
    assert check_trades(trades[:3] + trades[4:], gap) == "skip"
    assert check_trades([*trades[:51], HistoricalTrade(201, 7, 100)], gap) == "contradict"


def test_backfill_takes_the_smallest_gaps_first() -> None:
    """The queue hands out the symbol with the fewest missing trades: the number of incomplete
    symbols falls fastest. A symbol is handed to one worker at a time; a gap found meanwhile
    brings it back."""
    from medianserv.backfill import Backfill
    from medianserv.config import Config
    from medianserv.exchange import RestClient
    from medianserv.symbols import SymbolTable

    sizes = {"A": 500, "B": 3, "C": 40, "D": 1, "E": 7000}
    table = SymbolTable.build(sizes)
    for symbol, size in sizes.items():
        stats = table.get(symbol)
        assert stats is not None
        stats.apply(1, 5, 1)
        stats.apply(2 + size, 5, 2)  # a gap of `size` trades
    config = Config(backfill_delay=0.0)
    backfill = Backfill(config, RestClient("http://127.0.0.1:9"), lambda: table)
    for symbol in sizes:
        backfill.notify(symbol)
    order = [backfill._take() for _ in sizes]
    assert order == sorted(sizes, key=sizes.__getitem__)
    assert backfill._take() is None  # every symbol is out with a worker
    backfill.notify("D")  # a new gap while D is being filled
    backfill._release("D", more=False)
    assert backfill._take() == "D"
