"""The simulator is itself tested: a reference client must reproduce its ground truth exactly,
and every Binance limit, when broken, is enforced the way Binance does."""

from __future__ import annotations

import base64
import heapq
import itertools
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from medianserv.prices import parse_price
from medianserv.recordings import read_trade_frames
from medianserv.sim import SimConfig, Simulator
from medianserv.sim.market import Market, generate_listings

from .conftest import EXCHANGE_INFO, need
from .support import RefClient, http_get, trade_streams, wait_for

HOUR = 3_600_000


@contextmanager
def simulator(**settings: Any) -> Iterator[Simulator]:
    settings.setdefault("symbols", 40)
    settings.setdefault("trades_per_second", 2000.0)
    with Simulator(SimConfig(**settings)) as sim:
        yield sim


@contextmanager
def client(sim: Simulator, path: str = "/stream") -> Iterator[RefClient]:
    c = RefClient(sim.ws_url, path)
    try:
        yield c
    finally:
        c.close()


def trading_symbols(sim: Simulator) -> list[str]:
    return list(sim.market.trading)


def assert_matches_truth(sim: Simulator, c: RefClient) -> None:
    truth = sim.truth()
    assert truth, "nothing traded"
    for symbol, t in truth.items():
        mine = c.summary(symbol)
        assert mine == {k: t[k] for k in ("count", "median", "last_price")}, symbol
    assert set(c.prices) <= set(truth)


def test_reference_client_reproduces_truth_for_all_real_symbols() -> None:
    need(EXCHANGE_INFO)
    with simulator(exchange_info=EXCHANGE_INFO, paused=True, trades_per_second=4000) as sim:
        status, headers, info = http_get(
            sim.rest_url + "/api/v3/exchangeInfo?showPermissionSets=false"
        )
        assert status == 200 and headers["X-MBX-USED-WEIGHT-1M"] == "20"
        symbols = [s["symbol"] for s in info["symbols"]]
        assert len(symbols) == 2292 and all("permissionSets" not in s for s in info["symbols"])
        clients = [RefClient(sim.ws_url) for _ in range(3)]
        try:
            for i, c in enumerate(clients):
                c.subscribe_all(trade_streams(symbols[i * 1024 : (i + 1) * 1024]))
                listed = c.until_reply(c.request("LIST_SUBSCRIPTIONS"))["result"]
                assert len(listed) == len(symbols[i * 1024 : (i + 1) * 1024])
            sim.resume()
            wait_for(lambda: sim.stats()["trades_published"] >= 8000)
            sim.pause()
            for c in clients:
                c.pump(0.5)
            merged = RefClient.__new__(RefClient)
            merged.prices = {s: p for c in clients for s, p in c.prices.items()}
            assert_matches_truth(sim, merged)
            stats = sim.stats()
            assert stats["violations"] == {}
            assert stats["connections_open"] == 3 and stats["max_streams_per_connection"] == 1024
            assert sum(len(p) for p in merged.prices.values()) == stats["trades_published"]
        finally:
            for c in clients:
                c.close()


def test_generated_market_is_skewed_and_deterministic() -> None:
    listings = generate_listings(500, seed=3)
    assert len({x.symbol for x in listings}) == 500
    assert {x.status for x in listings} == {"TRADING", "BREAK"}
    assert len({x.tick for x in listings}) > 5
    a, b = Market(listings, seed=9), Market(listings, seed=9)
    ta, tb = a.next_trades(5000, 1), b.next_trades(5000, 1)
    assert ta == tb
    per_symbol: dict[str, int] = {}
    for t in ta:
        per_symbol[t.symbol] = per_symbol.get(t.symbol, 0) + 1
    counts = sorted(per_symbol.values(), reverse=True)
    assert counts[0] > 20 * counts[len(counts) // 2]  # a few hot, many cold
    trading = [x.symbol for x in listings if x.status == "TRADING"]
    assert len(per_symbol) < len(trading)  # some silent
    assert all(x.status == "TRADING" for x in listings if x.symbol in per_symbol)
    ids = [t.trade_id for t in ta if t.symbol == ta[0].symbol]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # consecutive per symbol


def test_a_bounded_walk_keeps_each_price_within_its_band_of_ticks() -> None:
    """With walk_levels, every symbol's prices are at most that many distinct ticks (the
    band is reached, not merely respected); without it the hot symbols walk past it."""
    listings = generate_listings(50, seed=4)
    bounded, free = Market(listings, seed=2, walk_levels=8), Market(listings, seed=2)
    for market, most in ((bounded, 8), (free, None)):
        levels: dict[str, set[int]] = {}
        for t in market.next_trades(40_000, 1):
            levels.setdefault(t.symbol, set()).add(t.price)
        widest = max(len(v) for v in levels.values())
        if most is None:
            assert widest > 8
        else:
            assert widest == most


def test_raw_stream_url_and_duplicates_on_two_connections() -> None:
    with simulator(paused=True) as sim:
        symbol = trading_symbols(sim)[0]
        stream = trade_streams([symbol])[0]
        with client(sim, f"/ws/{stream}") as raw, client(sim, f"/stream?streams={stream}") as comb:
            sim.market.set_weight(symbol, 1e9)  # make it trade
            sim.resume()
            wait_for(lambda: sim.truth().get(symbol, {}).get("count", 0) >= 50)
            sim.pause()
            raw.pump(0.3)
            comb.pump(0.3)
            assert raw.summary(symbol) == comb.summary(symbol)  # same trades on both
            assert raw.summary(symbol)["count"] == sim.truth()[symbol]["count"]
            first_raw = json.loads(raw.raw[0])
            assert first_raw["e"] == "trade" and "stream" not in first_raw
            assert json.loads(comb.raw[0])["stream"] == stream


def test_too_many_streams_is_refused() -> None:
    with simulator(max_streams_per_connection=5) as sim:
        with client(sim) as c:
            reply = c.until_reply(c.request("SUBSCRIBE", [f"s{i}usdt@trade" for i in range(6)]))
            assert reply["error"]["code"] == 4
            assert c.until_reply(c.request("SUBSCRIBE", ["a@trade", "b@trade"]))["result"] is None
        with pytest.raises(InvalidStatus) as err:
            RefClient(sim.ws_url, "/stream?streams=" + "/".join(f"s{i}@trade" for i in range(6)))
        assert err.value.response.status_code == 400
        assert sim.stats()["violations"]["too_many_streams"] == 2


def test_more_than_five_messages_a_second_closes_with_1008() -> None:
    with simulator() as sim, client(sim) as c:
        with pytest.raises(ConnectionClosed) as err:  # maybe while a reply is awaited
            for _ in range(7):
                c.request("LIST_SUBSCRIPTIONS")
            for _ in range(100):
                c.ws.recv(timeout=5)
        assert err.value.rcvd is not None and err.value.rcvd.code == 1008
        wait_for(lambda: sim.stats()["violations"].get("too_many_messages") == 1)


def test_pongs_count_towards_the_message_limit() -> None:
    with simulator() as sim, client(sim) as c:
        with pytest.raises(ConnectionClosed):  # maybe before the 7th pong is even sent
            for _ in range(7):
                c.ws.pong(b"x")  # unsolicited pongs are frames too
            for _ in range(100):
                c.ws.recv(timeout=5)
        wait_for(lambda: sim.stats()["violations"].get("too_many_messages") == 1)


def test_url_too_long_is_refused() -> None:
    with simulator(max_url_length=200) as sim:
        with pytest.raises(InvalidStatus) as err:
            RefClient(sim.ws_url, "/stream?streams=" + "/".join(["btcusdt@trade"] * 20))
        assert err.value.response.status_code == 414
        assert sim.stats()["violations"]["url_too_long"] == 1
        assert sim.stats()["largest_url"] > 200


def test_oversized_subscribe_is_silently_ignored() -> None:
    with simulator(max_subscribe_bytes=300) as sim, client(sim) as c:
        c.request("SUBSCRIBE", trade_streams(f"SYM{i}USDT" for i in range(40)))
        c.pump(0.3)
        assert not any(isinstance(o, dict) and o.get("id") == 1 for o in c.other)  # no reply
        assert c.until_reply(c.request("LIST_SUBSCRIPTIONS"))["result"] == []
        assert sim.stats()["violations"]["oversized_control_frame"] == 1


def test_bad_control_messages_get_binance_errors() -> None:
    with simulator() as sim, client(sim) as c:
        c.ws.send("not json")
        c.ws.send(json.dumps({"method": "FROB", "id": 7}))
        c.ws.send(json.dumps({"method": "SUBSCRIBE", "params": "btcusdt@trade", "id": 8}))
        assert c.until_reply(7)["error"]["code"] == 2
        assert c.until_reply(8)["error"]["code"] == 2
        assert any(isinstance(o, dict) and o.get("error", {}).get("code") == 3 for o in c.other)


def test_unanswered_pings_close_the_connection() -> None:
    """A raw socket that completes the handshake and then never reads nor answers pings."""
    with simulator(ping_interval=0.2, pong_timeout=0.3) as sim:
        sock = socket.create_connection(("127.0.0.1", sim.port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET /stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")
        wait_for(lambda: sim.stats()["violations"].get("pong_timeout") == 1, timeout=10)
        wait_for(lambda: sim.stats()["connections_open"] == 0)
        sock.close()


def test_connection_lifetime_is_enforced() -> None:
    with simulator(connection_lifetime=0.5) as sim, client(sim) as c:
        t0 = time.monotonic()
        with pytest.raises(ConnectionClosed) as err:
            for _ in range(1000):
                c.ws.recv(timeout=5)
        assert err.value.rcvd is not None and err.value.rcvd.code == 1000
        assert 0.4 < time.monotonic() - t0 < 5
    with simulator() as sim, client(sim) as c:  # the lifetime ends on demand too
        assert sim.expire() == 1
        with pytest.raises(ConnectionClosed) as err:
            c.ws.recv(timeout=10)
        assert err.value.rcvd is not None and err.value.rcvd.code == 1000


def test_connection_attempts_are_limited() -> None:
    with simulator(max_connection_attempts=3) as sim:
        clients = [RefClient(sim.ws_url) for _ in range(3)]
        with pytest.raises(InvalidStatus) as err:
            RefClient(sim.ws_url)
        assert err.value.response.status_code == 429
        for c in clients:
            c.close()
        assert sim.stats()["violations"]["too_many_connection_attempts"] == 1


def test_rest_weight_budget_429_then_418() -> None:
    with simulator(weight_per_minute=50, requests_after_429_before_ban=2) as sim:
        url = sim.rest_url + "/api/v3/exchangeInfo"
        statuses = [http_get(url)[:2] for _ in range(2)]
        assert [s for s, _ in statuses] == [200, 200]
        assert statuses[1][1]["X-MBX-USED-WEIGHT-1M"] == "40"
        status, headers, body = http_get(url)
        assert status == 429 and body["code"] == -1003 and 0 < int(headers["Retry-After"]) <= 61
        http_get(url)
        status, headers, _ = http_get(url)
        assert status == 418 and int(headers["Retry-After"]) > 60
        assert http_get(sim.rest_url + "/api/v3/ping")[0] == 418
        v = sim.stats()["violations"]
        assert v["rest_weight_exceeded"] == 2 and v["rest_ip_banned"] >= 1


def test_weight_window_resets_each_minute() -> None:
    now = [1_000_000.0]  # an injected clock: no waiting a minute
    with Simulator(SimConfig(symbols=5, weight_per_minute=25), clock=lambda: now[0]) as sim:
        assert http_get(sim.rest_url + "/api/v3/exchangeInfo")[0] == 200
        assert http_get(sim.rest_url + "/api/v3/exchangeInfo")[0] == 429
        now[0] += 60
        assert http_get(sim.rest_url + "/api/v3/exchangeInfo")[0] == 200


def test_exchange_info_filters_and_errors() -> None:
    with simulator(symbols=50) as sim:
        _, _, full = http_get(sim.rest_url + "/api/v3/exchangeInfo")
        assert all("permissionSets" in s for s in full["symbols"])
        _, _, trading = http_get(sim.rest_url + "/api/v3/exchangeInfo?symbolStatus=TRADING")
        assert {s["status"] for s in trading["symbols"]} == {"TRADING"}
        assert len(trading["symbols"]) < len(full["symbols"]) == 50
        one = full["symbols"][0]["symbol"]
        _, _, single = http_get(sim.rest_url + f"/api/v3/exchangeInfo?symbol={one}")
        assert [s["symbol"] for s in single["symbols"]] == [one]
        status, _, err = http_get(sim.rest_url + "/api/v3/exchangeInfo?symbol=NOPE")
        assert (status, err["code"]) == (400, -1121)
        assert http_get(sim.rest_url + "/api/v3/nothing")[0] == 404
        assert "serverTime" in http_get(sim.rest_url + "/api/v3/time")[2]


def test_historical_trades_match_the_stream() -> None:
    with simulator(paused=True) as sim:
        symbol = trading_symbols(sim)[0]
        with client(sim) as c:
            c.subscribe_all(trade_streams([symbol]))
            sim.market.set_weight(symbol, 1e9)
            sim.resume()
            wait_for(lambda: sim.truth().get(symbol, {}).get("count", 0) >= 1500)
            sim.pause()
            c.pump(0.3)
        streamed = c.prices[symbol]
        first = sim.truth()[symbol]["first_id"]
        got: list[int] = []
        from_id = first
        while len(got) < len(streamed):
            status, _, page = http_get(
                sim.rest_url
                + f"/api/v3/historicalTrades?symbol={symbol}&fromId={from_id}&limit=1000"
            )
            assert status == 200 and page
            assert [t["id"] for t in page] == list(range(from_id, from_id + len(page)))
            got += [int(t["price"].replace(".", "")) for t in page]
            from_id += len(page)
        assert got == streamed
        status, _, err = http_get(sim.rest_url + "/api/v3/historicalTrades?symbol=NOPE")
        assert (status, err["code"]) == (400, -1121)
        status, _, err = http_get(sim.rest_url + "/api/v3/historicalTrades")
        assert (status, err["code"]) == (400, -1102)
        assert (
            http_get(sim.rest_url + f"/api/v3/historicalTrades?symbol={symbol}&limit=5000")[0]
            == 400
        )


def test_aggregate_trades_tile_the_trades_exactly() -> None:
    """aggTrades: every trade id in exactly one row, at the trade's own price; consecutive
    aggregate ids; fromId paging, time windows and Binance's errors."""
    with simulator(paused=True) as sim:
        symbol = trading_symbols(sim)[0]
        sim.market.set_weight(symbol, 1e9)
        sim.resume()
        wait_for(lambda: sim.truth().get(symbol, {}).get("count", 0) >= 3000)
        sim.pause()
        truth = sim.market.truth[symbol]
        url = sim.rest_url + f"/api/v3/aggTrades?symbol={symbol}"
        rows: list[dict[str, Any]] = []
        from_id = 0
        while True:
            status, headers, page = http_get(url + f"&fromId={from_id}&limit=1000")
            assert status == 200
            if not page:
                break
            rows += page
            from_id = page[-1]["a"] + 1
        assert [r["a"] for r in rows] == list(range(rows[0]["a"], rows[0]["a"] + len(rows)))
        assert rows[0]["f"] == truth.first_id and rows[-1]["l"] == truth.next_id - 1
        assert all(a["l"] + 1 == b["f"] for a, b in itertools.pairwise(rows))
        for r in rows:
            for tid in range(r["f"], r["l"] + 1):
                t = truth.trade_at(symbol, tid)
                assert (parse_price(r["p"]), r["T"], r["m"]) == (t.price, t.time_ms, t.buyer_maker)
        assert len(rows) < 0.75 * (truth.next_id - truth.first_id)  # orders of several fills
        # a time window returns the rows of that window, ascending, at most `limit`
        mid = rows[len(rows) // 2]
        status, _, window = http_get(url + f"&startTime={mid['T']}&endTime={mid['T'] + 50}")
        assert status == 200 and window and all(mid["T"] <= r["T"] <= mid["T"] + 50 for r in window)
        assert window[0] == next(r for r in rows if r["T"] >= mid["T"])
        # no limit on a window's span since 2022-12-05: from its start, ascending
        status, _, wide = http_get(url + f"&startTime=0&endTime={rows[-1]['T'] + 10 * HOUR}")
        assert status == 200 and wide == rows[:500]
        assert http_get(url + f"&startTime={mid['T']}")[2][0] == window[0]
        # Binance's errors
        for query, code in ((f"&fromId=1&startTime={mid['T']}", -1128),
                            ("&limit=1001", -1100)):  # fmt: skip
            status, _, err = http_get(url + query)
            assert (status, err["code"]) == (400, code), query
        assert http_get(sim.rest_url + "/api/v3/aggTrades?symbol=NOPE")[2]["code"] == -1121
        assert http_get(sim.rest_url + "/api/v3/aggTrades")[2]["code"] == -1102
        assert headers["X-MBX-USED-WEIGHT-1M"] != "0"
        before = sim.stats()["weight_used_total"]
        http_get(url + "&limit=5")
        assert sim.stats()["weight_used_total"] - before == 4
        # spoiled answers, for the client's checks
        for kind in ("overlap", "skip", "contradict", "bad_price"):
            sim.spoil_aggregates(kind)
            bad = http_get(url + f"&fromId={rows[0]['a']}&limit=10")[2]
            assert bad != rows[:10], kind


def test_ticker_says_when_it_was_computed() -> None:
    with simulator() as sim:
        status, _, tickers = http_get(sim.rest_url + "/api/v3/ticker/24hr")
        assert status == 200 and tickers
        t = tickers[0]
        assert t["closeTime"] - t["openTime"] == 24 * HOUR
        assert abs(t["closeTime"] - time.time() * 1000) < 60_000


def test_faults_drop_refuse_shutdown_stall() -> None:
    with simulator(paused=True) as sim:
        symbols = trading_symbols(sim)
        with client(sim) as c:
            c.subscribe_all(trade_streams(symbols))
            assert sim.drop_all() == 1
            with pytest.raises(ConnectionClosed) as err:
                for _ in range(100):
                    c.ws.recv(timeout=5)
            assert err.value.rcvd is None  # abrupt: no close frame
        sim.refuse_connections(0.5)
        with pytest.raises(InvalidStatus) as refused:
            RefClient(sim.ws_url)
        assert refused.value.response.status_code == 503
        wait_for(lambda: _connects(sim), timeout=5)
        with client(sim) as c:
            c.subscribe_all(trade_streams(symbols))
            sim.stall(0.6)
            sim.resume()
            wait_for(lambda: sim.stats()["trades_published"] >= 300)
            assert c.pump(0.2) == 0  # stalled: nothing arrives, the connection stays open
            sim.pause()
            wait_for(lambda: c.pump(0.2) > 0, timeout=5)
            c.pump(0.3)
            assert_matches_truth(sim, c)  # delayed, not lost
            assert sim.announce_shutdown(0.3) == 1
            with pytest.raises(ConnectionClosed):
                for _ in range(100):
                    c.pump(5)
            assert any(
                isinstance(o, dict) and o.get("stream") == "!serverShutdown" for o in c.other
            )


def _connects(sim: Simulator) -> bool:
    try:
        RefClient(sim.ws_url).close()
        return True
    except InvalidStatus:
        return False


def test_garbage_frames_are_not_in_the_truth() -> None:
    with simulator(paused=True) as sim:
        symbols = trading_symbols(sim)
        with client(sim) as c:
            c.subscribe_all(trade_streams(symbols))
            sim.resume()
            wait_for(lambda: sim.stats()["trades_published"] >= 200)
            for kind in ("not_json", "missing_fields", "unknown_symbol", "bad_price"):
                assert sim.send_garbage(kind) == 1
            wait_for(lambda: sim.stats()["trades_published"] >= 400)
            sim.pause()
            c.pump(0.3)
            assert "NOTLISTED" not in sim.truth()
            c.prices.pop("NOTLISTED")  # the reference client takes whatever parses
            assert_matches_truth(sim, c)
            assert len(c.other) >= 3  # not_json, missing_fields, bad_price
        with pytest.raises(ValueError):
            sim.send_garbage("nonsense")


def test_listing_and_delisting_at_runtime() -> None:
    with simulator(symbols=10) as sim:
        sim.list_symbol("NEWCOINUSDT")
        _, _, info = http_get(sim.rest_url + "/api/v3/exchangeInfo")
        assert "NEWCOINUSDT" in [s["symbol"] for s in info["symbols"]]
        wait_for(lambda: sim.truth().get("NEWCOINUSDT", {}).get("count", 0) > 0)
        sim.delist("NEWCOINUSDT")
        _, _, info = http_get(sim.rest_url + "/api/v3/exchangeInfo")
        assert "NEWCOINUSDT" not in [s["symbol"] for s in info["symbols"]]
        count = sim.truth()["NEWCOINUSDT"]["count"]
        time.sleep(0.2)  # a delisted symbol no longer trades
        assert sim.truth()["NEWCOINUSDT"]["count"] == count


def test_control_endpoint() -> None:
    with simulator(paused=True) as sim:
        assert http_get(sim.rest_url + "/_sim/resume")[0] == 200
        wait_for(lambda: sim.stats()["trades_published"] > 0)
        assert http_get(sim.rest_url + "/_sim/pause")[0] == 200
        status, _, truth = http_get(sim.rest_url + "/_sim/truth")
        assert status == 200 and truth == sim.truth()
        assert http_get(sim.rest_url + "/_sim/stats")[2]["trades_published"] > 0
        assert http_get(sim.rest_url + "/_sim/garbage?kind=bad")[0] == 400
        assert http_get(sim.rest_url + "/_sim/what")[0] == 404
        assert http_get(sim.rest_url + "/_sim/list?symbol=ZZZUSDT")[0] == 200
        assert "ZZZUSDT" in sim.listed()


def test_replay_of_real_recordings_yields_exactly_the_files(recordings: list[Path]) -> None:
    need(EXCHANGE_INFO)
    files = [p for p in recordings if "2024" in p.name]
    with simulator(
        exchange_info=EXCHANGE_INFO, replay=tuple(files), replay_speed=0, paused=True
    ) as sim:
        with client(sim) as c:
            c.subscribe_all(["btcusdt@trade", "ethusdt@trade"])
            sim.resume()
            assert sim.wait_replayed(60)
            wait_for(lambda: c.pump(0.3) == 0)
        expected = [f for _, f in heapq.merge(*(read_trade_frames(p) for p in files))]
        frames = [m.encode() if isinstance(m, str) else m for m in c.raw]
        received = [f for f in frames if b'"e":"trade"' in f]
        assert received == expected
        assert sum(t["count"] for t in sim.truth().values()) == len(expected)
        assert_matches_truth(sim, c)


def test_settings_from_the_command_line_are_typed() -> None:
    from medianserv.sim.server import iter_config_overrides

    got = dict(iter_config_overrides(["rest_reach_days=300", "extra_symbols=币安人生USDT,XYZUSDT",
                                      "paused=true", "max_streams_per_connection=5"]))  # fmt: skip
    assert got == {"rest_reach_days": 300.0, "extra_symbols": ("币安人生USDT", "XYZUSDT"),
                   "paused": True, "max_streams_per_connection": 5}  # fmt: skip
    with pytest.raises(ValueError):
        dict(iter_config_overrides(["no_such_setting=1"]))
