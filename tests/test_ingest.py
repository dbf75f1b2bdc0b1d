"""Ingestion against the simulator over real sockets: every trade exactly once, every fault."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from medianserv.config import Config
from medianserv.exchange import RestClient
from medianserv.ingest import Ingest
from medianserv.prices import format_median, format_price
from medianserv.sim import SimConfig, Simulator

from .conftest import EXCHANGE_INFO, need
from .support import wait_for


def fast_config(sim: Simulator, **overrides: Any) -> Config:
    """Small parameters make rare paths common (STYLE 5)."""
    base = Config(
        rest_url=sim.rest_url,
        ws_url=sim.ws_url,
        control_messages_per_second=4.0,
        backoff_initial=0.05,
        backoff_max=0.5,
        backfill_delay=0.2,
        silence_timeout=1.0,
        probe_timeout=1.0,
        exchange_info_interval=3600.0,
        rest_weight_window=sim.config.weight_window,
    )
    return dataclasses.replace(base, **overrides).validate()


@contextmanager
def running(sim: Simulator, **overrides: Any) -> Iterator[Ingest]:
    config = fast_config(sim, **overrides)
    ingest = Ingest(config, RestClient(config.rest_url, weight_window=config.rest_weight_window))
    ingest.start()
    try:
        assert ingest.first_listing()
        wait_for(lambda: ingest.ready()[0], timeout=60)
        yield ingest
    finally:
        ingest.stop()


def ours(ingest: Ingest) -> dict[str, dict[str, Any]]:
    out = {}
    for symbol, stats in ingest.table.items():
        v = stats.view()
        if v.count:
            out[symbol] = {
                "count": v.count,
                "median": None if v.twice_median is None else format_median(v.twice_median),
                "last_price": None if v.last_price is None else format_price(v.last_price),
            }
    return out


def truth_of(sim: Simulator) -> dict[str, dict[str, Any]]:
    listed = set(sim.listed())
    return {
        s: {k: t[k] for k in ("count", "median", "last_price")}
        for s, t in sim.truth().items()
        if s in listed
    }


def settle(sim: Simulator, ingest: Ingest, timeout: float = 30) -> None:
    """Pause trading and wait until our statistics equal the ground truth exactly."""
    sim.pause()
    try:
        wait_for(lambda: ours(ingest) == truth_of(sim), timeout=timeout)
    except AssertionError:
        mine, truth = ours(ingest), truth_of(sim)
        diff = {s: (mine.get(s), t) for s, t in truth.items() if mine.get(s) != t}
        raise AssertionError(f"{len(diff)} symbols differ, e.g. {list(diff.items())[:3]}") from None


def trade_for(sim: Simulator, seconds_or_count: int) -> None:
    start = sim.stats()["trades_published"]
    sim.resume()
    wait_for(lambda: sim.stats()["trades_published"] >= start + seconds_or_count, timeout=60)


def test_all_real_symbols_over_three_connections_match_truth() -> None:
    need(EXCHANGE_INFO)
    with (
        Simulator(
            SimConfig(exchange_info=EXCHANGE_INFO, paused=True, trades_per_second=5000)
        ) as sim,
        running(sim, control_messages_per_second=3.0) as ingest,
    ):
        assert len(ingest.table) == 2292
        assert len(ingest.readers) == 3
        assert sorted(len(x) for x in sim.subscriptions()) == [244, 1024, 1024]
        trade_for(sim, 10_000)
        settle(sim, ingest)
        stats = sim.stats()
        assert stats["violations"] == {}
        assert stats["connections_opened"] == 3
        c = ingest.counters()
        assert c["applied"] == stats["trades_published"]
        assert c["duplicates"] == 0 and c["rejected"] == {}


@pytest.fixture
def small_sim() -> Iterator[Simulator]:
    config = SimConfig(symbols=60, paused=True, trades_per_second=3000, seed=5, weight_window=3.0)
    with Simulator(config) as sim:
        yield sim


def test_small_stream_cap_uses_many_connections(small_sim: Simulator) -> None:
    with running(small_sim, max_streams_per_connection=5) as ingest:
        assert len(ingest.readers) == 12
        assert small_sim.stats()["max_streams_per_connection"] == 5
        trade_for(small_sim, 3000)
        settle(small_sim, ingest)
        assert small_sim.stats()["violations"] == {}


def test_drops_and_refusals_lose_nothing(small_sim: Simulator) -> None:
    with running(small_sim, max_streams_per_connection=20) as ingest:
        for _ in range(3):
            trade_for(small_sim, 500)
            small_sim.refuse_connections(0.5)
            small_sim.drop_all()
            trade_for(small_sim, 500)
        settle(small_sim, ingest)
        c = ingest.counters()
        assert c["reconnects"] >= 9
        assert c["backfill"]["sweeps"] > 0 and c["backfill"]["filled"] > 0  # outages backfilled
        assert c["backfill"]["lost"] == 0 and c["backfill"]["rejected"] == {}
        # every gap had a time bound: aggregates served them all
        assert c["backfill"]["requests_by_endpoint"] == {"aggTrades": c["rest"]["aggTrades"][0]}
        assert c["rest"]["historicalTrades"] == (0, 0)
        assert small_sim.stats()["violations"] == {}


@pytest.mark.parametrize("kind", ["overlap", "skip", "contradict", "bad_price"])
def test_spoiled_aggregates_are_refused_and_the_gaps_still_fill(
    small_sim: Simulator, kind: str
) -> None:
    """Bad pages are counted and nothing of them applied; historicalTrades takes over. One
    symbol trades, before and after the outage, so the prices around its gap are known."""
    hot = small_sim.market.trading[0]
    for symbol in list(small_sim.market.trading):
        small_sim.market.set_weight(symbol, 1.0 if symbol == hot else 0.0)
    with running(small_sim, max_streams_per_connection=20) as ingest:
        trade_for(small_sim, 300)
        small_sim.pause()
        small_sim.spoil_aggregates(kind)
        small_sim.drop_all()
        trade_for(small_sim, 1500)
        settle(small_sim, ingest)
        c = ingest.counters()["backfill"]
        assert c["rejected"] == {kind: 1}
        assert c["requests_by_endpoint"]["historicalTrades"] >= 1
        assert c["lost"] == 0


def test_historical_trades_alone_still_recover(small_sim: Simulator) -> None:
    """backfill_endpoint=historicalTrades: the path of the previous release, for comparison."""
    with running(small_sim, backfill_endpoint="historicalTrades") as ingest:
        trade_for(small_sim, 300)
        small_sim.drop_all()
        trade_for(small_sim, 1000)
        settle(small_sim, ingest)
        c = ingest.counters()
        assert c["backfill"]["filled"] > 0 and c["rest"]["aggTrades"] == (0, 0)


def test_stalled_connections_are_replaced(small_sim: Simulator) -> None:
    with running(small_sim) as ingest:
        trade_for(small_sim, 300)
        small_sim.stall(30)  # only a probe timeout can notice: pings keep flowing
        trade_for(small_sim, 1500)
        settle(small_sim, ingest)
        assert ingest.counters()["reconnects"] >= 1
        assert ingest.readers[0].stats.probes >= 1


def test_server_shutdown_rotates_make_before_break(small_sim: Simulator) -> None:
    with running(small_sim) as ingest:
        small_sim.resume()
        small_sim.announce_shutdown(delay=3.0)
        wait_for(lambda: ingest.counters()["rotations"] == 1)
        trade_for(small_sim, 1000)
        settle(small_sim, ingest)
        c = ingest.counters()
        assert c["reconnects"] == 0  # rotated before the server closed
        assert c["backfill"]["requests"] == 0, c["backfill"]  # nothing was missed


def test_short_connection_lifetime_rotation(small_sim: Simulator) -> None:
    with running(small_sim, rotate_after=1.5, rotate_jitter=0.5) as ingest:
        small_sim.resume()
        wait_for(lambda: ingest.counters()["rotations"] >= 3, timeout=30)
        trade_for(small_sim, 500)
        settle(small_sim, ingest)
        c = ingest.counters()
        assert c["reconnects"] == 0 and c["backfill"]["requests"] == 0


def test_garbage_is_counted_never_applied(small_sim: Simulator) -> None:
    with running(small_sim) as ingest:
        trade_for(small_sim, 200)
        for kind in ("not_json", "missing_fields", "unknown_symbol", "bad_price"):
            small_sim.send_garbage(kind)
        trade_for(small_sim, 200)
        settle(small_sim, ingest)
        rejected = ingest.counters()["rejected"]
        assert rejected == {
            "malformed": 1,
            "invalid_fields": 1,
            "unknown_symbol": 1,
            "bad_price": 1,
        }


def test_listing_and_delisting_at_runtime(small_sim: Simulator) -> None:
    with running(small_sim) as ingest:
        trade_for(small_sim, 200)
        small_sim.pause()  # the truth counts from the listing, we count from our subscription
        small_sim.list_symbol("NEWCOINUSDT", weight=1e6)
        gone = next(s for s in small_sim.market.trading)
        small_sim.delist(gone)
        assert ingest.refresh_listing()
        assert "NEWCOINUSDT" in ingest.table and gone not in ingest.table
        wait_for(lambda: ingest.ready()[0])
        wait_for(lambda: "newcoinusdt@trade" in set().union(*small_sim.subscriptions()))
        assert all(gone.lower() + "@trade" not in s for s in small_sim.subscriptions())
        trade_for(small_sim, 500)
        settle(small_sim, ingest)
        assert ours(ingest)["NEWCOINUSDT"]["count"] > 0


def test_backfill_recovers_from_429(small_sim: Simulator) -> None:
    with running(small_sim, backfill_weight_share=1.0) as ingest:
        trade_for(small_sim, 300)
        small_sim.set_weight_limit(0)  # every REST call now gets 429
        small_sim.drop_all()
        trade_for(small_sim, 1000)
        wait_for(lambda: ingest.counters()["backfill"]["rate_limited"] >= 1)
        small_sim.set_weight_limit(6000)
        settle(small_sim, ingest)
        assert small_sim.stats()["violations"]["rest_weight_exceeded"] >= 1


def test_counters_never_go_down_when_readers_leave(small_sim: Simulator) -> None:
    with running(small_sim, max_streams_per_connection=20) as ingest:
        trade_for(small_sim, 1000)
        settle(small_sim, ingest)
        before = ingest.counters()["applied"]
        assert len(ingest.readers) == 3
        keep = list(ingest.table.symbols)[:20]  # a delisting wave empties two connections
        ingest.apply_listing(keep)
        assert len(ingest.readers) == 1
        assert ingest.counters()["applied"] == before


def test_subscribing_at_full_pace_never_breaks_the_message_limit() -> None:
    """Many small SUBSCRIBE frames at Binance's own 5 per second: never a 1008."""
    config = SimConfig(symbols=600, paused=True, trades_per_second=500)
    with Simulator(config) as sim, running(sim, control_messages_per_second=5.0,
                                            subscribe_batch_bytes=400) as ingest:  # fmt: skip
        assert sum(len(x) for x in sim.subscriptions()) == 600
        assert sim.stats()["violations"] == {}
        assert ingest.counters()["reconnects"] == 0


def test_symbols_listed_at_run_time_count_from_their_first_trade(small_sim: Simulator) -> None:
    """New listings trade at once, before we read exchangeInfo again and subscribe: every one
    of their trades counts all the same, from the very first (REST fills what came before)."""
    with running(small_sim) as ingest:
        trade_for(small_sim, 200)
        new = [f"NEW{i}COINUSDT" for i in range(4)]
        for symbol in new:
            small_sim.list_symbol(symbol, weight=1e5)
        trade_for(small_sim, 1500)  # they trade before we know they exist
        assert ingest.refresh_listing()
        wait_for(lambda: ingest.ready()[0])
        trade_for(small_sim, 1000)
        settle(small_sim, ingest)  # every listed symbol equals the truth: all its trades
        truth = small_sim.truth()
        for symbol in new:
            v = ingest.table.get(symbol).view()  # type: ignore[union-attr]
            assert v.first_trade_id == truth[symbol]["first_id"] and v.history_complete


def test_quiet_symbols_that_began_trading_are_swept_once(small_sim: Simulator) -> None:
    """The simulator's symbols have no trade before we follow them: all quiet. Once they
    trade, one ticker read (the listings thread's, here called at once) finds nothing below
    their ranges, so none is quiet any more and their first candles can settle; with no quiet
    symbol left, another call reads no ticker."""
    with running(small_sim) as ingest:
        assert all(stats.ids.quiet for _, stats in ingest.table.items())
        wait_for(lambda: ingest.counters()["backfill"]["sweeps"] >= 1)  # the connection's
        wait_for(lambda: ingest.backfill.sweep_pending() == 0)  # ticker, read before trading
        trade_for(small_sim, 600)
        settle(small_sim, ingest)
        began = [s for s, stats in ingest.table.items() if stats.began_quiet()]
        assert began and ingest.sweep_quiet() == len(began)
        wait_for(lambda: not any(st.began_quiet() for _, st in ingest.table.items()), timeout=60)
        sweeps = ingest.counters()["backfill"]["sweeps"]
        assert ingest.sweep_quiet() == 0
        assert ingest.counters()["backfill"]["sweeps"] == sweeps
        assert ours(ingest) == truth_of(small_sim)  # nothing counted twice
