"""TradeIds, the exactly-once bookkeeping, against set-of-ids oracles: every operation keeps
the invariants and the identity counted + missing + lost + to import = width."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medianserv import tradeids
from medianserv.tradeids import Outcome, TradeIds


def _time(t: int) -> int:  # a trade's time: non-decreasing in its id, as on Binance
    return t * 10 // 3


def _price(t: int) -> int:
    return (t * 7919) % 13 + 1


ops = st.lists(
    st.one_of(
        st.tuples(st.just("trade"), st.integers(0, 120)),
        st.tuples(st.just("range"), st.integers(0, 120), st.integers(0, 30)),
        st.tuples(st.just("give_up"), st.integers(0, 120), st.integers(0, 30)),
    ),
    max_size=80,
)

fronts = st.lists(
    st.one_of(
        st.tuples(st.just("file"), st.integers(0, 20), st.integers(0, 30)),
        st.tuples(st.just("rows"), st.integers(0, 20), st.integers(0, 30)),
        st.tuples(st.just("trade"), st.integers(100, 130)),
    ),
    max_size=40,
)


@given(st.lists(st.integers(min_value=0, max_value=200), max_size=300), st.booleans())
def test_observe_common_is_observe_or_nothing(ids: list[int], quiet: bool) -> None:
    """The per-trade path's bookkeeping: observe_common gives observe's outcome and effects,
    or None and changes nothing (observe then decides alone)."""

    def state(ids: TradeIds) -> dict[str, Any]:
        return {k: copy.deepcopy(getattr(ids, k)) for k in TradeIds.__slots__}

    common, reference = TradeIds(quiet=quiet), TradeIds(quiet=quiet)
    for t in ids:
        before = state(common)
        outcome = common.observe_common(t, _time(t), _price(t))
        expected = reference.observe(t, _time(t), _price(t))
        if outcome is None:
            assert state(common) == before
            assert before["highest"] is None or t != before["highest"] + 1  # the next: common
            common.observe(t, _time(t), _price(t))
        else:
            assert outcome is expected
        assert state(common) == state(reference)


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
        got = {i for g in tracker.gaps for i in range(g.lo, g.hi + 1)}
        assert got == expected_gaps
        assert tracker.missing == len(expected_gaps)
        assert tracker.highest == max(applied)
        tracker._check(counted=len(applied))


def test_gap_cap_keeps_memory_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tradeids, "MAX_OPEN_GAPS", 3)
    tracker = TradeIds()
    for t in range(0, 20, 2):  # gaps at 1, 3, 5, ...
        tracker.observe(t)
    assert len(tracker.gaps) == 3
    assert [(g.lo, g.hi) for g in tracker.gaps] == [(13, 13), (15, 15), (17, 17)]
    assert tracker.lost == 6
    assert tracker.observe(1) is Outcome.DUPLICATE  # given up: never applied late
    tracker._check(counted=10)


def test_give_up_counts_lost_ids() -> None:
    tracker = TradeIds()
    for t in (1, 10, 20):
        tracker.observe(t)
    assert [(g.lo, g.hi) for g in tracker.gaps] == [(2, 9), (11, 19)]
    assert tracker.give_up(5, 12) == 7
    assert [(g.lo, g.hi) for g in tracker.gaps] == [(2, 4), (13, 19)]
    assert (tracker.lost, tracker.missing) == (7, 10)
    tracker._check(counted=3)


@given(st.integers(0, 40), ops)
def test_ranges_and_trades_against_an_oracle(base: int, script: list[tuple[Any, ...]]) -> None:
    """Single trades, ranges (overlapping, repeated, straddling gap edges) and give-ups against
    a set oracle; every gap's time bounds and edge prices stay true."""
    ids = TradeIds()
    ids.baseline(base, _time(base))  # a ticker read exactly when trade `base` happened
    applied: set[int] = set()
    lost: set[int] = set()
    top = base
    for op in script:
        if op[0] == "trade":
            t = op[1]
            outcome = ids.observe(t, _time(t), _price(t))
            fresh = t > base and t not in applied and t not in lost
            assert (outcome is not Outcome.DUPLICATE) == fresh
            if fresh:
                applied.add(t)
                top = max(top, t)
        elif op[0] == "range":
            lo, hi = op[1], op[1] + op[2]
            missing = {i for i in range(lo, hi + 1) if base < i <= top} - applied - lost
            assert ids.fill(lo, hi, _time(lo), _price(lo)) == len(missing)
            applied |= missing
            # a row is one price and time: edges learnt from it are the row's own values
            for i in missing:
                assert _time(lo) <= _time(i)
        else:
            lo, hi = op[1], op[1] + op[2]
            gone = {i for i in range(lo, hi + 1) if base < i <= top} - applied - lost
            assert ids.give_up(lo, hi) == len(gone)
            lost |= gone
        ids._check(counted=len(applied))
        expected = set(range(base + 1, top + 1)) - applied - lost
        assert {i for g in ids.gaps for i in range(g.lo, g.hi + 1)} == expected
        assert ids.missing == len(expected) and ids.lost == len(lost)
        for g in ids.gaps:
            assert g.after_ms is None or g.after_ms <= _time(g.lo)
            assert g.before_ms is None or g.before_ms >= _time(g.hi)


@given(ops)
def test_edge_prices_are_those_of_the_neighbouring_trades(script: list[tuple[Any, ...]]) -> None:
    """Live trades only (exact prices): each gap names the prices of the trades around it."""
    ids = TradeIds()
    for op in script:
        t = op[1]
        ids.observe(t, _time(t), _price(t))
        for g in ids.gaps:
            assert g.price_before in (None, _price(g.lo - 1))
            assert g.price_after in (None, _price(g.hi + 1))
            assert g.price_before is not None and g.price_after is not None


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
    assert ids.highest == top and ids.lowest == base + 1
    assert {i for g in ids.gaps for i in range(g.lo, g.hi + 1)} == set(
        range(base + 1, top + 1)
    ) - applied
    ids._check(counted=len(applied))


def test_quiet_symbol_claims_every_ticker_trade() -> None:
    ids = TradeIds()
    ids.baseline(-1)  # no trade in the 24 h before we subscribed
    assert ids.quiet and ids.highest is None
    assert ids.observe(105) is Outcome.APPLIED
    assert ids.sweep(100, 107) == 7  # 100..104 and 106..107 happened after we subscribed
    assert [(g.lo, g.hi) for g in ids.gaps] == [(100, 104), (106, 107)] and ids.lowest == 100
    assert ids.observe(101) is Outcome.FILLED
    assert ids.sweep(103, 107) == 0 and not ids.quiet  # the window moved past our start
    ids._check(counted=2)


@given(st.lists(st.integers(10, 120), max_size=60), st.none() | st.integers(0, 10))
def test_every_streamed_trade_of_a_quiet_symbol_is_ours(
    live: list[int], origin: int | None
) -> None:
    """A quiet symbol had no trade in the 24 hours before we followed it: every trade a stream
    delivers is ours, in any order (a rotating connection's late frames come after the new
    connection's), below the range too, the ids between them missing with true bounds; but
    once its history is to be imported (from ``origin``), what lies below the live range is
    the importer's."""
    ids = TradeIds()
    ids.baseline(-1)
    applied: set[int] = set()
    for t in live:
        if origin is not None and ids.lowest is not None and ids.origin is None:
            ids.start_history(origin, _time(origin))
        out = ids.observe(t, _time(t), _price(t))
        fresh = t not in applied and (ids.front is None or t > ids.front.hi)
        assert (out is not Outcome.DUPLICATE) == fresh, (t, out)
        if fresh:
            was = set(range(min(applied, default=t), max(applied, default=t) + 1)) - applied
            applied.add(t)
            now = set(range(min(applied), max(applied) + 1)) - applied
            assert (out is Outcome.GAP) == bool(now - was)
        missing = {i for g in ids.gaps for i in range(g.lo, g.hi + 1)}
        if ids.front is None:
            assert missing == set(range(min(applied), max(applied) + 1)) - applied
            assert ids.lowest == min(applied)
        ids._check(counted=len(applied))
        for g in ids.gaps:
            assert g.after_ms is None or g.after_ms <= _time(g.lo)
            assert g.before_ms is None or g.before_ms >= _time(g.hi)
            assert g.price_before in (None, _price(g.lo - 1))
            assert g.price_after in (None, _price(g.hi + 1))


@given(st.integers(0, 50), fronts)
def test_front_fills_from_the_bottom_only(origin: int, script: list[tuple[Any, ...]]) -> None:
    """History before the live start: a whole file only at the front's bottom, rows from it
    on; ids are never counted twice; the live part is untouched."""
    ids = TradeIds()
    ids.baseline(99, 5_000)  # live history starts at 100
    assert ids.start_history(origin, 1_000) == (origin < 100)
    assert ids.lowest == min(origin, 100)
    applied: set[int] = set()
    for op in script:
        if op[0] == "trade":
            t = op[1]
            if ids.observe(t, 6_000, 1).name != "DUPLICATE":
                applied.add(t)
            continue
        front = ids.front
        lo = (front.lo if front else origin) + op[1] - 10
        hi = lo + op[2]
        if op[0] == "file":
            ok = front is not None and lo == front.lo and lo <= hi <= front.hi
            assert ids.claim_front(lo, hi) == ok
            if ok:
                assert ids.fill(lo, hi, 2_000, 1) == 0  # claimed: rows leave the front alone
                assert ids.fill_front(lo, hi, 2_000, 7) == hi - lo + 1
                assert ids.front is None or ids.front.price_below == 7  # the file's last price
                applied |= set(range(lo, hi + 1))
            assert ids.fill_front(lo, hi, 2_000, 7) == 0  # never without a claim, never twice
        else:
            new = {i for i in range(lo, hi + 1) if front and front.lo <= i <= front.hi}
            bottom = front is not None and lo <= front.lo <= hi
            live = {i for i in range(max(lo, 100), hi + 1) if i <= (ids.highest or 0)} - applied
            assert ids.fill(lo, hi, 2_000, 1) == (len(new) if bottom else 0) + len(live)
            applied |= live | (new if bottom else set())
        ids._check(counted=len(applied))
        if ids.front is not None:
            assert not applied & set(range(ids.front.lo, ids.front.hi + 1))
            assert all(i < ids.front.lo for i in applied if i < 100)
    assert ids.history_complete == (ids.front is None and ids.origin == ids.lowest)


@given(st.integers(0, 30), st.lists(st.tuples(st.integers(0, 60), st.booleans()), max_size=30))
def test_gaps_never_touch(base: int, script: list[tuple[int, bool]]) -> None:
    """Sweeps and jumps in the stream, in any order, grow the last gap rather than open one
    beside it: each reconnect must not cost a range of the cap (finding: they touched)."""
    ids = TradeIds()
    ids.baseline(base, 0)
    top, applied = base, set()
    for step, sweep in script:
        top += step
        if sweep:
            ids.sweep(0, top, None, 10)
        elif ids.observe(top, 5, 1) is not Outcome.DUPLICATE:
            applied.add(top)
        ids._check(counted=len(applied))
    expected = set(range(base + 1, top + 1)) - applied
    assert {i for g in ids.gaps for i in range(g.lo, g.hi + 1)} == expected


@given(st.integers(10, 60), st.integers(0, 70), st.booleans(), st.booleans())
def test_origin_lowers_only_before_anything_of_the_front_is_counted(
    origin: int, lower: int, imported: bool, claimed: bool
) -> None:
    """REST gave a late origin; an archive shows older trades. The front reaches down to them
    while nothing of it is counted and nothing claimed; never otherwise, never upwards."""
    ids = TradeIds()
    ids.baseline(99, 5_000)
    ids.start_history(origin, 1_000)
    counted = 0
    if imported:
        assert ids.claim_front(origin, origin)
        counted = ids.fill_front(origin, origin, 1_100, 3)
    elif claimed:
        assert ids.claim_front(origin, origin + 1)
    grew = ids.lower_origin(lower, 500)
    ok = not imported and not claimed and lower < origin
    assert grew == (origin - lower if ok else 0)
    if ok:
        assert (ids.origin, ids.lowest) == (lower, lower)
        assert ids.front is not None and (ids.front.lo, ids.front.after_ms) == (lower, 500)
    if claimed:
        ids.release_front()
    ids._check(counted=counted)
    assert not ids.history_complete
