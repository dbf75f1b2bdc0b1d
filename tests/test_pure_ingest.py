"""Pure parts of ingestion: connection plan, SUBSCRIBE batching, pacing, trade-id sweeps."""

from __future__ import annotations

import json
import math
import random

from hypothesis import given
from hypothesis import strategies as st

from medianserv.exchange import parse_exchange_info, parse_historical_trades, parse_trade_id_ranges
from medianserv.pacing import SlidingWindow, backoff
from medianserv.streams import plan_connections, stream_batches
from medianserv.symbols import Outcome, TradeIds

names = st.lists(st.text("abcdefgh", min_size=1, max_size=4), unique=True, max_size=60)


@given(names, names, st.integers(min_value=1, max_value=7))
def test_plan_is_minimal_complete_and_stable(before: list[str], after: list[str], cap: int) -> None:
    old = plan_connections(before, cap)
    new = plan_connections(after, cap, old)
    for plan, streams in ((old, before), (new, after)):
        flat = [s for group in plan for s in group]
        assert sorted(flat) == sorted(streams)  # each stream exactly once
        assert all(0 < len(g) <= cap for g in plan)
        assert len(plan) == math.ceil(len(streams) / cap)  # the fewest connections
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


@given(st.integers(0, 50), st.integers(0, 50), st.lists(st.integers(0, 120), max_size=40),
       st.integers(-1, 150))  # fmt: skip
def test_baseline_and_sweep_against_an_oracle(
    base: int, extra: int, live: list[int], last: int
) -> None:
    """Trades after the baseline are ours; a sweep turns every unseen one into a gap."""
    ids = TradeIds()
    ids.baseline(base)
    applied: set[int] = set()
    for t in live:
        out = ids.observe(t)
        assert (out is not Outcome.DUPLICATE) == (t > base and t not in applied)
        if t > base:
            applied.add(t)
    top = max([base, *applied])
    ids.sweep(0, last)
    top = max(top, last)
    assert ids.last == top and ids.first == base + 1
    assert {i for g in ids.gaps for i in range(g.lo, g.hi + 1)} == set(
        range(base + 1, top + 1)
    ) - applied


def test_quiet_symbol_claims_every_ticker_trade() -> None:
    ids = TradeIds()
    ids.baseline(-1)  # no trade in the 24 h before we subscribed
    assert ids.quiet and ids.last is None
    assert ids.observe(105) is Outcome.APPLIED
    assert ids.sweep(100, 107) == 7  # 100..104 and 106..107 happened after we subscribed
    assert [(g.lo, g.hi) for g in ids.gaps] == [(100, 104), (106, 107)] and ids.first == 100
    assert ids.observe(101) is Outcome.FILLED
    assert ids.sweep(103, 107) == 0 and not ids.quiet  # the window moved past our start


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
            {"symbol": "A", "firstId": 1, "lastId": 9},
            {"symbol": "B", "firstId": -1, "lastId": -1},
            {"x": 1},
        ]
    )
    assert ranges == {"A": (1, 9), "B": (-1, -1)}
