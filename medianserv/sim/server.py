"""Our local Binance: REST and WebSocket on one loopback port, with Binance's limits and faults.

Threads (all owned by :class:`Simulator`, all stopped by :meth:`Simulator.stop`):

* ``sim-server``: websockets' accept loop; websockets then runs one thread per connection
  (our :meth:`Simulator._serve_session`: answers control messages and sends queued frames);
* ``sim-market``: generates trades at the configured rate (or replays recordings) and queues
  each one on every connection subscribed to its stream at that instant.

``hub_lock`` guards the subscriptions, the session list and the market, so a trade reaches
exactly the connections subscribed when it is published, and is in the ground truth at once.

REST (``GET /api/v3/...``) is answered from websockets' ``process_request`` hook, so one base
URL serves both, like ``api.binance.com`` and ``stream.binance.com`` rolled into one. Control
endpoints for tests and demos live under ``/_sim/`` and answer loopback clients only.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import re
import socket
import threading
import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import BINARY, PING, PONG, TEXT, Frame
from websockets.http11 import Request, Response
from websockets.protocol import OPEN, Event
from websockets.sync.server import Server, ServerConnection, serve

from ..prices import format_price, parse_price
from ..recordings import read_trade_frames
from .archives import ArchiveServer
from .market import DAY_MS, Listing, Market, Trade, generate_listings, load_listings, make_past

__all__ = ["SimConfig", "Simulator"]

log = logging.getLogger(__name__)

COUNTED_OPCODES = (TEXT, BINARY, PING, PONG)  # what Binance's 5-per-second limit counts
GARBAGE_KINDS = ("not_json", "missing_fields", "unknown_symbol", "bad_price")
AGG_FAULTS = ("overlap", "skip", "contradict", "bad_price", "audit")  # aggTrades answers
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class SimConfig:
    """Every knob of the simulator; defaults are Binance's documented and observed limits."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: an ephemeral port (see Simulator.port)
    exchange_info: Path | None = None  # a saved exchangeInfo; None: generate `symbols` symbols
    symbols: int = 2000
    seed: int = 1
    trades_per_second: float = 1000.0
    paused: bool = False  # start with trading paused (tests subscribe first, then resume)
    replay: tuple[Path, ...] = ()  # recordings to replay instead of generating trades
    replay_speed: float = 1.0  # 0: as fast as possible
    max_streams_per_connection: int = 1024
    max_incoming_per_second: int = 5
    max_url_length: int = 8004
    max_subscribe_bytes: int = 4096
    ping_interval: float = 20.0
    pong_timeout: float = 60.0
    close_timeout: float = 1.0  # wait for the client's close frame at most this long
    connection_lifetime: float = 24 * 3600.0
    max_connection_attempts: int = 300
    connection_window: float = 300.0
    weight_per_minute: int = 6000
    weight_window: float = 60.0  # seconds of a weight window (Binance: one minute)
    weight_exchange_info: int = 20
    weight_historical_trades: int = 25
    weight_agg_trades: int = 4
    weight_ticker_all: int = 80  # GET /api/v3/ticker/24hr without a symbol
    requests_after_429_before_ban: int = 10
    ban_seconds: float = 120.0
    max_outbox: int = 500_000  # frames queued for one slow client before it is disconnected
    history_limit: int = 200_000  # trades kept per symbol for historicalTrades
    tick_seconds: float = 0.005  # granularity of the trade generator
    walk_levels: int = 0  # > 0: each price stays within that many ticks (see Market)
    # Throughput benchmarks: every connection gets fresh trades of its streams as fast as it
    # reads them (TCP back-pressure paces each one alone), unless paused. Flood trades are not
    # in the truth; tickers then report no trades, so clients start every symbol at its first.
    flood: bool = False
    # what the flood trades (settable while running: /_sim/flood?market=...&agent=...):
    # walk: a few price levels, one trade of every stream a round; fresh: a new price level
    # every round; hot: one symbol only (the first trading one), every frame of a round its
    # trade; real: the recordings given as `replay`, looped with their ids renumbered
    flood_market: str = "walk"
    flood_agent: str = ""  # only connections whose User-Agent holds this are flooded
    late_pong: float = 1.0  # a pong later than this (seconds) is counted late
    # A past: `past_days` days of trades (about `past_trades_per_day` a day per trading
    # symbol) before the simulator starts, in the truth and in REST, and as archives in
    # Binance's layout on `archive_port` (0: an ephemeral port; see Simulator.archive_url).
    past_days: int = 0
    past_trades_per_day: float = 20.0
    # REST's aggTrades reach back only this many days (0: to the first trade); an older
    # fromId is answered from the oldest kept (binance-public-data issue 376)
    rest_reach_days: float = 0.0
    # more TRADING symbols listed beside the generated ones (names such as 币安人生USDT)
    extra_symbols: tuple[str, ...] = ()
    archive_port: int = 0


@dataclass(eq=False)  # hashed by identity: sessions live in subscriber sets
class Session:
    """One WebSocket client connection and what it is subscribed to."""

    id: int
    conn: SimConnection
    combined: bool  # /stream: events wrapped as {"stream":..,"data":..}
    opened: float
    deadline: float  # end of the connection's lifetime
    streams: set[str] = field(default_factory=set)  # guarded by the simulator's hub_lock
    outbox: deque[bytes] = field(default_factory=deque)  # frames to send, in order
    wake: threading.Event = field(default_factory=threading.Event)  # outbox or inbox has work
    incoming: deque[float] = field(default_factory=deque)  # times of recent counted frames
    violation: str | None = None  # set by the frame counter; the session thread closes
    stalled_until: float = 0.0
    shutdown_at: float | None = None  # serverShutdown announced: close at this time
    flood_round: int = 0  # flood mode: rounds sent (the trade id of the next one)
    flood_template: tuple[tuple[str, ...], list[bytes]] | None = None  # streams, frames
    flood_key: tuple[tuple[str, ...], str] | None = None  # hot, real: what flood_block is for
    flood_block: bytes = b""  # hot, real: a round's frames, its id prefix and time to fill
    latency_seen: float = 0.0  # the connection's last ping latency already counted
    agent: str = ""  # the client's User-Agent


class SimConnection(ServerConnection):
    """A server connection that counts incoming frames the way Binance's limit does."""

    session: Session | None = None
    clock: Callable[[], float] = staticmethod(time.monotonic)
    limit: int = 5

    def process_event(self, event: Event) -> None:
        super().process_event(event)
        session = self.session
        if session is None or not isinstance(event, Frame) or event.opcode not in COUNTED_OPCODES:
            return
        now = self.clock()
        window = session.incoming
        window.append(now)
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) > self.limit and session.violation is None:
            session.violation = "too_many_messages"
        session.wake.set()  # a control message to answer, or a violation to act on


class Counters:
    """What tests assert on. ``lock`` guards every field."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connections_opened = 0
        self.connections_open = 0
        self.max_streams_per_connection = 0
        self.largest_url = 0
        self.weight_used_total = 0
        self.max_window_weight = 0  # the most weight any one window saw
        self.max_pong_latency = 0.0  # seconds from a ping sent to its pong, the worst seen
        self.pong_latency_by_agent: dict[str, float] = {}  # the same, by User-Agent
        self.pongs_by_agent: Counter[str] = Counter()  # pongs received, by User-Agent
        self.late_pongs_by_agent: Counter[str] = Counter()  # of which later than late_pong
        self.closed: Counter[str] = Counter()  # connections ended, by why
        self.trades_published = 0
        self.frames_sent = 0
        self.violations: Counter[str] = Counter()

    def violation(self, kind: str) -> None:
        with self.lock:
            self.violations[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "connections_opened": self.connections_opened,
                "connections_open": self.connections_open,
                "max_streams_per_connection": self.max_streams_per_connection,
                "largest_url": self.largest_url,
                "weight_used_total": self.weight_used_total,
                "max_window_weight": self.max_window_weight,
                "max_pong_latency": self.max_pong_latency,
                "pong_latency_by_agent": dict(self.pong_latency_by_agent),
                "pongs_by_agent": dict(self.pongs_by_agent),
                "late_pongs_by_agent": dict(self.late_pongs_by_agent),
                "closed": dict(self.closed),
                "trades_published": self.trades_published,
                "frames_sent": self.frames_sent,
                "violations": dict(self.violations),
            }


def _json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    data = json.dumps(body, separators=(",", ":")).encode()
    h = Headers({"Content-Type": "application/json;charset=UTF-8", **(headers or {})})
    h["Content-Length"] = str(len(data))
    return Response(status, HTTPStatus(status).phrase, h, data)


def stream_name(symbol: str) -> str:
    return symbol.lower() + "@trade"


def _ws_frame(payload: bytes) -> bytes:
    """An unmasked, final text frame around ``payload`` (a server's, as Binance sends them)."""
    n = len(payload)
    head = bytes((0x81, n)) if n < 126 else b"\x81\x7e" + n.to_bytes(2, "big")
    return head + payload


class Simulator:
    """A local Binance spot exchange on loopback. Use as a context manager, or start()/stop().

    >>> with Simulator(SimConfig(symbols=20, trades_per_second=0)) as sim:
    ...     sim.rest_url == sim.ws_url.replace("ws://", "http://")
    True
    """

    def __init__(self, config: SimConfig | None = None, *, clock: Callable[[], float] = time.time):
        self.config = cfg = config or SimConfig()
        self.clock = clock  # wall clock (ms timestamps, weight windows); injected for tests
        if cfg.exchange_info is not None:
            listings, self._info_top = load_listings(cfg.exchange_info)
        else:
            listings, self._info_top = generate_listings(cfg.symbols, cfg.seed), {}
        for name in cfg.extra_symbols:
            listings.append(Listing(name, "TRADING", name.removesuffix("USDT"), "USDT",
                                    "0.01000000"))  # fmt: skip
        self.market = Market(listings, seed=cfg.seed, history_limit=cfg.history_limit,
                             walk_levels=cfg.walk_levels)  # fmt: skip
        if cfg.past_days > 0:
            make_past(self.market, self._ms(), cfg.past_days, cfg.past_trades_per_day)
        if cfg.replay:
            for symbol in list(self.market.trading):
                self.market.set_weight(symbol, 0.0)  # replays publish only recorded trades
        self.counters = Counters()
        self.hub_lock = threading.RLock()  # guards sessions, subscriptions and the market
        self._sessions: dict[int, Session] = {}
        self._subscribers: dict[str, set[Session]] = {}
        self._next_session = 0
        self._rate = cfg.trades_per_second
        self._flood_market = cfg.flood_market
        self._flood_agent = cfg.flood_agent
        self._recorded: list[tuple[str, bytes]] | None = None  # real flood: (stream, frame)
        self._paused = threading.Event()  # set while trading is paused
        if cfg.paused:
            self._paused.set()
        self._replay_done = threading.Event()
        self._limits_lock = threading.Lock()  # guards the REST and connection-attempt limits
        self._weight_window = -1
        self._weight_used = 0
        self._weight_limit = cfg.weight_per_minute
        self._after_429 = 0
        self._banned_until = 0.0
        self._attempts: deque[float] = deque()
        self._refuse_until = 0.0
        self._agg_faults: deque[str] = deque()  # guarded by _limits_lock: next answers to spoil
        self._stop = threading.Event()  # set by stop(): every simulator thread exits
        self._server: Server | None = None
        self.archives = ArchiveServer(self.market, self.hub_lock, clock, cfg.host,
                                      cfg.archive_port)  # fmt: skip
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Simulator:
        cfg = self.config
        self._server = serve(
            self._serve_session,
            cfg.host,
            cfg.port,
            process_request=self._process_request,
            create_connection=SimConnection,
            compression=None,
            ping_interval=cfg.ping_interval,
            ping_timeout=cfg.pong_timeout,
            close_timeout=cfg.close_timeout,
            max_size=2**16,
        )
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="sim-server", daemon=True),
            threading.Thread(target=self._run_market, name="sim-market", daemon=True),
        ]
        for t in self._threads:
            t.start()
        self.archives.start()
        log.info("simulator listening on %s (%d symbols)", self.rest_url, len(self.market.listings))
        return self

    def stop(self) -> None:
        self._stop.set()
        with self.hub_lock:
            sessions = list(self._sessions.values())
        for s in sessions:
            s.wake.set()
        if self._server is not None:
            self._server.shutdown()
        for t in self._threads:
            t.join(timeout=10)
        self.archives.stop()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        port: int = self._server.socket.getsockname()[1]
        return port

    @property
    def rest_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.host}:{self.port}"

    @property
    def archive_url(self) -> str:
        """Base URL of the archives (what data.binance.vision is to Binance)."""
        return self.archives.url

    # -- control (in-process; the /_sim/ endpoints call these too) ---------------------------

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def set_rate(self, trades_per_second: float) -> None:
        self._rate = trades_per_second

    def wait_replayed(self, timeout: float | None = None) -> bool:
        """Block until every recording was replayed."""
        return self._replay_done.wait(timeout)

    def truth(self) -> dict[str, dict[str, Any]]:
        """Ground truth of every symbol that ever traded: count, median, last price, ids."""
        with self.hub_lock:
            return {s: t.summary() for s, t in self.market.truth.items() if t.count}

    def listed(self) -> list[str]:
        with self.hub_lock:
            return list(self.market.listings)

    def stats(self) -> dict[str, Any]:
        return self.counters.snapshot()

    def subscriptions(self) -> list[list[str]]:
        """The streams of every open connection."""
        with self.hub_lock:
            return [sorted(s.streams) for s in self._sessions.values()]

    def list_symbol(self, symbol: str, tick: str = "0.01000000", weight: float = 1.0) -> None:
        """List a new TRADING symbol at runtime; it starts trading at once."""
        with self.hub_lock:
            base = symbol[:-4] if len(symbol) > 4 else symbol
            listing = Listing(symbol, "TRADING", base, symbol[len(base) :] or "USDT", tick)
            self.market.list_symbol(listing, weight)

    def delist(self, symbol: str) -> None:
        """Remove a symbol from exchangeInfo at runtime; it stops trading."""
        with self.hub_lock:
            self.market.delist(symbol)

    def drop_all(self) -> int:
        """Cut every WebSocket connection abruptly (no close frame). Returns how many."""
        with self.hub_lock:
            sessions = list(self._sessions.values())
        for s in sessions:
            with contextlib.suppress(OSError):
                s.conn.socket.shutdown(socket.SHUT_RDWR)
        return len(sessions)

    def announce_shutdown(self, delay: float = 1.0) -> int:
        """Send serverShutdown on combined connections, then close them after ``delay``."""
        msg = b'{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":%d}}' % self._ms()
        at = time.monotonic() + delay
        with self.hub_lock:
            sessions = [s for s in self._sessions.values() if s.combined]
            for s in sessions:
                s.outbox.append(msg)
                s.shutdown_at = at
                s.wake.set()
        return len(sessions)

    def set_weight_limit(self, weight: int) -> None:
        """Change the REST weight budget per window at runtime (0: every call gets 429)."""
        with self._limits_lock:
            self._weight_limit = weight

    def refuse_connections(self, seconds: float) -> None:
        """Answer every new WebSocket handshake with 503 for ``seconds``."""
        with self._limits_lock:
            self._refuse_until = time.monotonic() + seconds

    def expire(self) -> int:
        """End every connection's lifetime now, as Binance does after 24 hours."""
        now = time.monotonic()
        with self.hub_lock:
            for s in self._sessions.values():
                s.deadline = now
                s.wake.set()
            return len(self._sessions)

    def spoil_aggregates(self, kind: str, count: int = 1) -> None:
        """Corrupt the next ``count`` non-empty aggTrades answers: rows that ``overlap``, that
        ``skip`` ids, that ``contradict`` the published prices, or a ``bad_price``; or, as
        Binance's 2022-04 data audit left them, with a row marked invalid in place (``audit``:
        a duplicate of a row, same aggregate id, price and quantity 0, trade ids -1)."""
        if kind not in AGG_FAULTS:
            raise ValueError(f"unknown aggregate fault {kind!r}; one of {AGG_FAULTS}")
        with self._limits_lock:
            self._agg_faults.extend([kind] * count)

    def stall(self, seconds: float) -> int:
        """Stop sending anything but pings on every open connection for ``seconds``."""
        until = time.monotonic() + seconds
        with self.hub_lock:
            for s in self._sessions.values():
                s.stalled_until = until
            return len(self._sessions)

    def send_garbage(self, kind: str) -> int:
        """Queue one malformed frame of ``kind`` on every connection (never in the truth)."""
        if kind not in GARBAGE_KINDS:
            raise ValueError(f"unknown garbage kind {kind!r}; one of {GARBAGE_KINDS}")
        with self.hub_lock:
            sessions = list(self._sessions.values())
            for s in sessions:
                symbol = next((x for x in s.streams), "btcusdt@trade").split("@")[0].upper()
                s.outbox.append(self._garbage(kind, symbol, s.combined))
                s.wake.set()
        return len(sessions)

    def _garbage(self, kind: str, symbol: str, combined: bool) -> bytes:
        truth = self.market.truth.get(symbol)
        tid = truth.next_id if truth else 1
        ms = self._ms()
        if kind == "not_json":
            data = b'{"e":"trade","E":%d,"s":"%s","t":' % (ms, symbol.encode())
        elif kind == "missing_fields":
            data = b'{"e":"trade","E":%d,"s":"%s","q":"1.00000000"}' % (ms, symbol.encode())
        elif kind == "unknown_symbol":
            symbol = "NOTLISTED"
            data = b'{"e":"trade","E":%d,"s":"NOTLISTED","t":1,"p":"1.00000000","q":"1.00000000",' \
                   b'"T":%d,"m":true,"M":true}' % (ms, ms)  # fmt: skip
        else:  # bad_price
            data = b'{"e":"trade","E":%d,"s":"%s","t":%d,"p":"abc","q":"1.00000000",' \
                   b'"T":%d,"m":true,"M":true}' % (ms, symbol.encode(), tid, ms)  # fmt: skip
        if not combined:
            return data
        return b'{"stream":"%s","data":%s}' % (stream_name(symbol).encode(), data)

    # -- trades ------------------------------------------------------------------------------

    def _ms(self) -> int:
        return int(self.clock() * 1000)

    def _run_market(self) -> None:
        try:
            if self.config.replay and not self.config.flood:  # flooding: the real flood's source
                self._replay()
            else:
                self._generate()
        except Exception:
            log.exception("simulator market thread failed")
            raise

    def _generate(self) -> None:
        tick = self.config.tick_seconds
        last = time.monotonic()
        carry = 0.0
        while not self._stop.wait(tick):
            now = time.monotonic()
            elapsed, last = now - last, now
            if self._paused.is_set():
                carry = 0.0
                continue
            due = self._rate * min(elapsed, 1.0) + carry
            k = int(due)
            carry = due
            if k > 0:
                with self.hub_lock:
                    trades = self.market.next_trades(k, self._ms())
                    self._publish(trades)
                carry -= len(trades)  # an order is never cut short: the next tick makes up

    def _replay(self) -> None:
        speed = self.config.replay_speed
        frames = heapq.merge(*(read_trade_frames(p) for p in self.config.replay))
        t0_rec: int | None = None
        t0 = time.monotonic()
        batch: list[tuple[Trade, bytes]] = []
        for stamp, frame in frames:
            if self._stop.is_set():
                return
            while self._paused.is_set() and not self._stop.wait(0.01):
                t0 = time.monotonic()
                t0_rec = None
            if t0_rec is None:
                t0_rec = stamp
            if speed > 0:
                scale = 1e9 if stamp > 10**17 else 1e6  # ns (2024 files) or µs (2023 file)
                wait = (stamp - t0_rec) / scale / speed - (time.monotonic() - t0)
                if wait > 0.002:
                    with self.hub_lock:
                        self._publish_raw(batch)
                    batch = []
                    self._stop.wait(wait)
            event = json.loads(frame)["data"]
            trade = Trade(event["s"], event["t"], parse_price(event["p"]),
                          parse_price(event["q"]), event["T"], event["m"])  # fmt: skip
            batch.append((trade, frame))
            if len(batch) >= 512:
                with self.hub_lock:
                    self._publish_raw(batch)
                batch = []
        with self.hub_lock:
            self._publish_raw(batch)
        self._replay_done.set()

    def _publish(self, trades: list[Trade]) -> None:
        """Queue each trade on its subscribers. Caller holds hub_lock."""
        ms = self._ms()
        for t in trades:
            name = stream_name(t.symbol)
            subs = self._subscribers.get(name)
            if subs:
                data = t.event_json(ms)
                combined = b'{"stream":"%s","data":%s}' % (name.encode(), data)
                for s in subs:
                    s.outbox.append(combined if s.combined else data)
                    s.wake.set()
        with self.counters.lock:
            self.counters.trades_published += len(trades)

    def _publish_raw(self, batch: list[tuple[Trade, bytes]]) -> None:
        """Replay: record and queue recorded frames byte for byte. Caller holds hub_lock."""
        for trade, frame in batch:
            self.market.record(trade)
            name = stream_name(trade.symbol)
            for s in self._subscribers.get(name, ()):
                if s.combined:
                    s.outbox.append(frame)
                else:
                    start = frame.index(b'"data":') + len(b'"data":')
                    s.outbox.append(frame[start:-1])
                s.wake.set()
        with self.counters.lock:
            self.counters.trades_published += len(batch)

    # -- WebSocket sessions -----------------------------------------------------------------

    def _serve_session(self, conn: ServerConnection) -> None:
        """One connection's thread: answer control messages, send queued frames, enforce limits."""
        assert isinstance(conn, SimConnection) and conn.session is not None
        session = conn.session
        reason = "client closed"
        try:
            while True:
                session.wake.wait(0.25)
                session.wake.clear()
                now = time.monotonic()
                if self._stop.is_set():
                    conn.close(1001, "server stopping")
                    reason = "server stopping"
                    return
                if session.violation is not None:
                    self.counters.violation(session.violation)
                    conn.close(1008, "Too many requests")
                    reason = session.violation
                    return
                if now >= session.deadline:
                    conn.close(1000, "connection lifetime reached")
                    reason = "lifetime"
                    return
                while True:
                    try:
                        message = conn.recv(timeout=0)
                    except TimeoutError:
                        break
                    self._on_control(session, message)
                if len(session.outbox) > self.config.max_outbox:
                    self.counters.violation("slow_consumer")
                    conn.close(1008, "slow consumer")
                    reason = "slow consumer"
                    return
                if conn.latency != session.latency_seen:  # a pong came since the last look
                    session.latency_seen = latency = conn.latency
                    with self.counters.lock:
                        c = self.counters
                        c.max_pong_latency = max(c.max_pong_latency, latency)
                        worst = c.pong_latency_by_agent.get(session.agent, 0.0)
                        c.pong_latency_by_agent[session.agent] = max(worst, latency)
                        c.pongs_by_agent[session.agent] += 1
                        if latency > self.config.late_pong:
                            c.late_pongs_by_agent[session.agent] += 1
                if now >= session.stalled_until:
                    try:
                        self._flush(session)
                        if (self.config.flood and session.streams and not self._paused.is_set()
                                and self._flood_agent in session.agent):  # fmt: skip
                            self._flood(session)
                            session.wake.set()  # at once again: as fast as the client reads
                    except OSError:  # the client is gone; websockets reports how
                        continue
                if session.shutdown_at is not None:
                    if now >= session.shutdown_at:
                        conn.close(1001, "server shutdown")
                        reason = "serverShutdown"
                        return
                    session.wake.set()  # keep waking until the announced close
        except ConnectionClosed as exc:
            if exc.rcvd is None and exc.sent is not None and exc.sent.code == 1011:
                self.counters.violation("pong_timeout")
                reason = "pong timeout"
        finally:
            with self.hub_lock:
                self._sessions.pop(session.id, None)
                for name in session.streams:
                    self._subscribers.get(name, set()).discard(session)
            with self.counters.lock:
                self.counters.connections_open -= 1
                self.counters.closed[reason] += 1
            log.debug("connection %d closed: %s", session.id, reason)

    def _flush(self, session: Session) -> None:
        """Send everything queued, many frames per lock and syscall (as websockets' broadcast)."""
        conn = session.conn
        outbox = session.outbox
        while outbox:
            n = 0
            with conn.protocol_mutex:
                if conn.protocol.state is not OPEN:
                    return
                while outbox and n < 256:
                    conn.protocol.send_text(outbox.popleft())
                    n += 1
                conn.send_data()
            with self.counters.lock:
                self.counters.frames_sent += n

    def set_flood(self, market: str | None = None, agent: str | None = None) -> dict[str, str]:
        """What the flood trades from now on, and to whom (see SimConfig.flood_market)."""
        if market is not None:
            if market not in ("walk", "fresh", "hot", "real"):
                raise ValueError(f"unknown flood market {market!r}")
            if market == "real" and not self.config.replay:
                raise ValueError("the real flood needs recordings (replay)")
            self._flood_market = market
        if agent is not None:
            self._flood_agent = agent
        return {"market": self._flood_market, "agent": self._flood_agent}

    def _flood(self, session: Session) -> None:
        """Flood mode: fresh trades of the session's streams, written straight to the socket
        as ready-made frames, as fast as the client reads them. ``walk`` and ``fresh``: one
        trade of every subscribed stream a round, all with the same id, time and price (a
        template with three fixed-width fields replaced: a few C-level passes over the bytes,
        cheap enough that the simulator is never what limits a client); ``hot``: as many
        frames a round of the first trading symbol, if the session carries it; ``real``: the
        recorded frames of its streams, ids renumbered. Sent in pieces cut at frame
        boundaries, so a ping of websockets' keepalive can go out between them."""
        market = self._flood_market
        if market in ("hot", "real"):
            data = self._flood_frames(session, market)
            if data is not None:  # in pieces of about 64 KiB, at frame boundaries
                pieces, start = [], 0
                while start < len(data):
                    end = data.find(b"\x81\x7e", start + 65_536)
                    end = len(data) if end < 0 else end
                    pieces.append(data[start:end])
                    start = end
                self._flood_send(session, pieces, data.count(b'"e":"trade"'))
            return
        with self.hub_lock:
            streams = tuple(sorted(session.streams))
        if session.flood_template is None or session.flood_template[0] != streams:
            pieces = []
            for k in range(0, len(streams), 256):
                frames = []
                for name in streams[k : k + 256]:
                    payload = (
                        b'{"stream":"%s","data":{"e":"trade","E":@EEEEEEEEEEEE,"s":"%s",'
                        b'"t":@TTTTTTTTTTTT,"p":"@P.PPPPPPPP","q":"1.00000000","T":@EEEEEEEEEEEE,'
                        b'"m":true,"M":true}}'
                        % (name.encode(), name.split("@")[0].upper().encode())
                    )  # fmt: skip
                    frames.append(_ws_frame(payload))
                pieces.append(b"".join(frames))
            session.flood_template = (streams, pieces)
        tid = session.flood_round = session.flood_round + 1
        ms = b"%013d" % self._ms()
        if market == "fresh":  # a price level no round had before
            price = b"%02d.%08d" % (10 + (tid // 10**8) % 90, tid % 10**8)
        else:
            price = b"%02d.%08d" % (10 + tid % 7, tid % 3)
        trade_id = b"%013d" % (10**12 + tid)
        pieces = [
            p.replace(b"@EEEEEEEEEEEE", ms).replace(b"@TTTTTTTTTTTT", trade_id).replace(
                b"@P.PPPPPPPP", price)
            for p in session.flood_template[1]
        ]  # fmt: skip
        self._flood_send(session, pieces, len(streams))

    def _flood_frames(self, session: Session, market: str) -> bytes | None:
        """One round of the ``hot`` or ``real`` flood for ``session`` (None: nothing of it):
        a block of frames whose ids are ``<round><k>``, with ``k`` (3 digits) baked in per
        frame and the round's 10-digit prefix and the time filled by one ``replace`` each:
        C-level passes over the bytes, as fast as the walk flood. ``hot``: 1,000 trades of
        the first trading symbol; ``real``: 1,000 recorded trades of each recorded stream
        the session carries, in their recorded order."""
        with self.hub_lock:
            streams = tuple(sorted(session.streams))
        if session.flood_key != (streams, market):
            session.flood_key = (streams, market)
            session.flood_round = 0
            frames: list[bytes] = []
            if market == "hot":
                hot = stream_name(next(s for s, x in self.market.listings.items()
                                       if x.status == "TRADING"))  # fmt: skip
                if hot in streams:
                    head = b'{"stream":"%s","data":{"e":"trade","E":@EEEEEEEEEEEE,"s":"%s",' % (
                        hot.encode(),
                        hot.split("@")[0].upper().encode(),
                    )
                    frames = [_ws_frame(head + b'"t":@PPPPPPPPP%03d,"p":"%02d.%08d","q":"1.0",'
                                        b'"T":@EEEEEEEEEEEE,"m":true,"M":true}}'
                                        % (k, 10 + k % 7, k % 3)) for k in range(1000)]  # fmt: skip
            else:
                wanted, seen = set(streams), Counter[str]()
                for name, payload in self._recordings():
                    if name in wanted and seen[name] < 1000:
                        frames.append(_ws_frame(payload.replace(b"@K", b"%03d" % seen[name])))
                        seen[name] += 1
            session.flood_block = b"".join(frames)
        if not session.flood_block:
            return None
        session.flood_round += 1
        block = session.flood_block
        prefix = b"%010d" % (10**9 + session.flood_round)
        return block.replace(b"@PPPPPPPPP", prefix).replace(b"@EEEEEEEEEEEE", b"%013d" % self._ms())

    def _recordings(self) -> list[tuple[str, bytes]]:
        """The recorded trade frames (``replay``) in time order, each payload with its ``t``
        ``@PPPPPPPPP@K`` (a round's 10-digit prefix and the frame's number in it, filled
        later) and its ``T`` the round's time (as Binance's, trade times rise with ids);
        loaded once."""
        if self._recorded is None:
            recorded = []
            for _, frame in heapq.merge(*(read_trade_frames(p) for p in self.config.replay)):
                payload = re.sub(rb'"t":\d+', b'"t":@PPPPPPPPP@K', frame, count=1)
                # the round's time too: the ids rise round after round, so must the times
                payload = re.sub(rb'"T":\d+', b'"T":@EEEEEEEEEEEE', payload, count=1)
                recorded.append((json.loads(frame)["stream"], payload))
            self._recorded = recorded
        return self._recorded

    def _flood_send(self, session: Session, pieces: list[bytes], trades: int) -> None:
        conn = session.conn
        for piece in pieces:
            with conn.protocol_mutex:
                if conn.protocol.state is not OPEN:
                    return
                conn.socket.sendall(piece)
        with self.counters.lock:
            self.counters.trades_published += trades
            self.counters.frames_sent += trades

    def _reply(self, session: Session, body: dict[str, Any]) -> None:
        session.outbox.append(json.dumps(body, separators=(",", ":")).encode())

    def _on_control(self, session: Session, message: str | bytes) -> None:
        """SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS, with Binance's replies and errors."""
        if len(message) > self.config.max_subscribe_bytes:
            self.counters.violation("oversized_control_frame")  # Binance ignores it silently
            return
        try:
            request = json.loads(message)
        except ValueError:
            self._reply(session, {"error": {"code": 3, "msg": "Invalid JSON"}, "id": None})
            return
        if not isinstance(request, dict) or "method" not in request:
            self._reply(session, {"error": {"code": 2, "msg": "Invalid request"}, "id": None})
            return
        rid = request.get("id")
        method = request["method"]
        params = request.get("params", [])
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                msg = "Invalid request: params must be an array of stream names"
                self._reply(session, {"error": {"code": 2, "msg": msg}, "id": rid})
                return
            with self.hub_lock:
                if method == "SUBSCRIBE":
                    new = set(params) - session.streams
                    if len(session.streams) + len(new) > self.config.max_streams_per_connection:
                        self.counters.violation("too_many_streams")
                        err = {"code": 4, "msg": "Too many subscriptions"}
                        self._reply(session, {"error": err, "id": rid})
                        return
                    self._subscribe(session, new)
                else:
                    for name in params:
                        if name in session.streams:
                            session.streams.discard(name)
                            self._subscribers.get(name, set()).discard(session)
                self._reply(session, {"result": None, "id": rid})
        elif method == "LIST_SUBSCRIPTIONS":
            with self.hub_lock:
                self._reply(session, {"result": sorted(session.streams), "id": rid})
        else:
            msg = f"Invalid request: unknown method {str(method)[:40]!r}"
            self._reply(session, {"error": {"code": 2, "msg": msg}, "id": rid})

    def _subscribe(self, session: Session, names: set[str]) -> None:
        """Caller holds hub_lock."""
        for name in names:
            session.streams.add(name)
            self._subscribers.setdefault(name, set()).add(session)
        with self.counters.lock:
            self.counters.max_streams_per_connection = max(
                self.counters.max_streams_per_connection, len(session.streams)
            )

    # -- HTTP: handshakes, REST and control ---------------------------------------------------

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        assert isinstance(conn, SimConnection)
        cfg = self.config
        with self.counters.lock:
            self.counters.largest_url = max(self.counters.largest_url, len(request.path))
        if len(request.path) > cfg.max_url_length:
            self.counters.violation("url_too_long")
            return _json_response(414, {"code": -1101, "msg": "URL too long."})
        path, _, query = request.path.partition("?")
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return self._handshake(conn, request, path, params)
        if path.startswith("/_sim/"):
            host = conn.remote_address[0] if conn.remote_address else ""
            if not (host.startswith("127.") or host == "::1"):
                return _json_response(403, {"code": -1, "msg": "control is loopback-only"})
            return self._control(path[len("/_sim/") :], params)
        return self._rest(path, params)

    def _handshake(
        self, conn: SimConnection, request: Request, path: str, params: dict[str, str]
    ) -> Response | None:
        cfg = self.config
        now = time.monotonic()
        with self._limits_lock:
            if now < self._refuse_until:
                return _json_response(503, {"code": -1, "msg": "Service unavailable."})
            while self._attempts and self._attempts[0] <= now - cfg.connection_window:
                self._attempts.popleft()
            self._attempts.append(now)
            if len(self._attempts) > cfg.max_connection_attempts:
                self.counters.violation("too_many_connection_attempts")
                return _json_response(429, {"code": -1003, "msg": "Too many connection attempts."})
        if path == "/stream":
            combined = True
            streams = [s for s in params.get("streams", "").split("/") if s]
        elif path == "/ws" or path.startswith("/ws/"):
            combined = False
            streams = [s for s in unquote(path[4:]).split("/") if s]
        else:
            return _json_response(404, {"code": -1, "msg": "Not found."})
        if len(set(streams)) > cfg.max_streams_per_connection:
            self.counters.violation("too_many_streams")
            return _json_response(400, {"code": 4, "msg": "Too many subscriptions"})
        with self.hub_lock:
            self._next_session += 1
            session = Session(
                self._next_session, conn, combined, now, now + cfg.connection_lifetime
            )
            conn.limit = cfg.max_incoming_per_second
            conn.session = session
            session.agent = request.headers.get("User-Agent", "")[:80]
            self._sessions[session.id] = session
            self._subscribe(session, set(streams))
        with self.counters.lock:
            self.counters.connections_opened += 1
            self.counters.connections_open += 1
        return None

    def _charge(self, weight: int) -> Response | None:
        """Charge REST weight; a 429 or 418 response when over budget, else None."""
        cfg = self.config
        now = self.clock()
        with self._limits_lock:
            if now < self._banned_until:
                retry = str(int(self._banned_until - now) + 1)
                body = {"code": -1003, "msg": "Way too much request weight used; IP banned."}
                return _json_response(418, body, {"Retry-After": retry})
            span = cfg.weight_window
            window = int(now // span)
            if window != self._weight_window:
                self._weight_window, self._weight_used, self._after_429 = window, 0, 0
            if self._weight_used + weight > self._weight_limit:
                self._after_429 += 1
                if self._after_429 > cfg.requests_after_429_before_ban:
                    self._banned_until = now + cfg.ban_seconds
                    self.counters.violation("rest_ip_banned")
                    body = {"code": -1003, "msg": "Way too much request weight used; IP banned."}
                    return _json_response(418, body, {"Retry-After": str(int(cfg.ban_seconds))})
                self.counters.violation("rest_weight_exceeded")
                retry = str(int((window + 1) * span - now) + 1)
                headers = {"Retry-After": retry, "X-MBX-USED-WEIGHT-1M": str(self._weight_used)}
                body = {"code": -1003, "msg": "Too much request weight used; please use "
                        "WebSocket streams for live updates to avoid polling the API."}  # fmt: skip
                return _json_response(429, body, headers)
            self._weight_used += weight
            used = self._weight_used
        with self.counters.lock:
            self.counters.weight_used_total += weight
            self.counters.max_window_weight = max(self.counters.max_window_weight, used)
        return None

    def _weight_header(self) -> dict[str, str]:
        with self._limits_lock:
            return {"X-MBX-USED-WEIGHT-1M": str(self._weight_used)}

    def _rest(self, path: str, params: dict[str, str]) -> Response:
        cfg = self.config
        routes: dict[str, tuple[int, Callable[[dict[str, str]], tuple[int, Any]]]] = {
            "/api/v3/ping": (1, lambda p: (200, {})),
            "/api/v3/time": (1, lambda p: (200, {"serverTime": self._ms()})),
            "/api/v3/exchangeInfo": (cfg.weight_exchange_info, self._exchange_info),
            "/api/v3/historicalTrades": (cfg.weight_historical_trades, self._historical_trades),
            "/api/v3/aggTrades": (cfg.weight_agg_trades, self._agg_trades),
            "/api/v3/ticker/24hr": (
                2 if "symbol" in params else cfg.weight_ticker_all,
                self._ticker,
            ),
        }
        route = routes.get(path)
        if route is None:
            return _json_response(404, {"code": -1, "msg": "Not found."})
        weight, handler = route
        refused = self._charge(weight)
        if refused is not None:
            return refused
        status, body = handler(params)
        return _json_response(status, body, self._weight_header())

    def _exchange_info(self, params: dict[str, str]) -> tuple[int, Any]:
        with self.hub_lock:
            listings = list(self.market.listings.values())
        wanted: set[str] | None = None
        if "symbol" in params:
            wanted = {params["symbol"]}
        elif "symbols" in params:
            try:
                wanted = set(json.loads(params["symbols"]))
            except ValueError:
                return 400, {
                    "code": -1100,
                    "msg": "Illegal characters found in parameter 'symbols'.",
                }
        if wanted is not None:
            listings = [x for x in listings if x.symbol in wanted]
            if not listings:
                return 400, {"code": -1121, "msg": "Invalid symbol."}
        status = params.get("symbolStatus")
        if status:
            listings = [x for x in listings if x.status == status]
        show_sets = params.get("showPermissionSets", "true").lower() != "false"
        symbols = []
        for x in listings:
            entry = x.to_json()
            if not show_sets and "permissionSets" in entry:
                entry = {k: v for k, v in entry.items() if k != "permissionSets"}
            symbols.append(entry)
        top = {"timezone": "UTC", "serverTime": self._ms(), "rateLimits": [],
               "exchangeFilters": [], **self._info_top}  # fmt: skip
        top["serverTime"] = self._ms()
        return 200, {**top, "symbols": symbols}

    def _ticker(self, params: dict[str, str]) -> tuple[int, Any]:
        """24-hour tickers; medianserv reads ``lastId`` (-1 for a symbol without trades, and
        for every symbol in flood mode, whose trades are not in the truth)."""
        flood = self.config.flood
        with self.hub_lock:
            wanted = [params["symbol"]] if "symbol" in params else list(self.market.listings)
            out = []
            for symbol in wanted:
                if symbol not in self.market.listings:
                    return 400, {"code": -1121, "msg": "Invalid symbol."}
                t = self.market.truth[symbol]
                now = self._ms()
                # the trades of the last 24 hours (those still kept: the history limit)
                first = bisect_left(t.times, now - 24 * HOUR_MS) + t.history_first
                traded = t.count > 0 and not flood and first < t.next_id
                out.append({
                    "symbol": symbol,
                    "lastPrice": format_price(t.last_price) if t.last_price is not None else "0",
                    "openTime": now - 24 * HOUR_MS,
                    "closeTime": now,
                    "firstId": first if traded else -1,
                    "lastId": t.next_id - 1 if traded else -1,
                    "count": t.next_id - first if traded else 0,
                })  # fmt: skip
        return 200, out[0] if "symbol" in params else out

    def _historical_trades(self, params: dict[str, str]) -> tuple[int, Any]:
        symbol = params.get("symbol")
        if not symbol:
            return 400, {"code": -1102, "msg": "Mandatory parameter 'symbol' was not sent."}
        try:
            limit = int(params.get("limit", "500"))
            from_id = int(params["fromId"]) if "fromId" in params else None
        except ValueError:
            return 400, {"code": -1100, "msg": "Illegal characters found in a parameter."}
        if not 1 <= limit <= 1000:
            return 400, {"code": -1100, "msg": "Illegal value for parameter 'limit'."}
        with self.hub_lock:
            trades = self.market.history(symbol, from_id, limit)
        if trades is None:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        return 200, [t.rest_json() for t in trades]

    def _agg_trades(self, params: dict[str, str]) -> tuple[int, Any]:
        """Aggregate trades with Binance's parameters and errors: ``fromId``, or ``startTime``
        and/or ``endTime`` (inclusive; no limit on their span since 2022-12-05), never both
        kinds (-1128)."""
        symbol = params.get("symbol")
        if not symbol:
            return 400, {"code": -1102, "msg": "Mandatory parameter 'symbol' was not sent."}
        try:
            limit = int(params.get("limit", "500"))
            from_id, start, end = (
                int(params[k]) if params.get(k) else None
                for k in ("fromId", "startTime", "endTime")
            )
        except ValueError:
            return 400, {"code": -1100, "msg": "Illegal characters found in a parameter."}
        if not 1 <= limit <= 1000:
            return 400, {"code": -1100, "msg": "Illegal value for parameter 'limit'."}
        if from_id is not None and (start is not None or end is not None):
            return 400, {"code": -1128, "msg": "Combination of optional parameters invalid."}
        if start is not None and end is not None and end < start:
            return 200, []  # an empty window
        if end is not None and start is None:
            start = 0
        with self.hub_lock:
            oldest = self._oldest_agg(symbol)
            if oldest is not None:
                if from_id is not None:
                    from_id = max(from_id, oldest)
                elif start is not None:
                    start = max(start, self._ms() - int(self.config.rest_reach_days * DAY_MS))
            rows = self.market.aggregates(symbol, from_id, start, end, limit)
        if rows is None:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        if rows:
            with self._limits_lock:
                fault = self._agg_faults.popleft() if self._agg_faults else None
            if fault is not None:
                self._spoil(rows, fault)
        return 200, rows

    def _oldest_agg(self, symbol: str) -> int | None:
        """The oldest aggregate id REST serves (``rest_reach_days``), or None for all."""
        if self.config.rest_reach_days <= 0:
            return None
        truth = self.market.truth.get(symbol)
        if truth is None or not truth.agg_first:
            return None
        cutoff = self._ms() - int(self.config.rest_reach_days * DAY_MS)
        i = self.market._first_agg_at(truth, cutoff)
        return truth.agg_base + min(i, len(truth.agg_first) - 1)

    @staticmethod
    def _spoil(rows: list[dict[str, Any]], kind: str) -> None:
        last = rows[-1]
        if kind == "overlap":  # a row reaching back into the one before it
            rows.append({**last, "a": last["a"] + 1, "f": last["l"], "l": last["l"] + 1})
        elif kind == "skip":  # one trade id in no row
            rows.append({**last, "a": last["a"] + 1, "f": last["l"] + 2, "l": last["l"] + 2})
        elif kind == "contradict":
            for r in rows:
                r["p"] = format_price(parse_price(r["p"]) + 1)
        elif kind == "audit":  # after the first row, and at the end
            for at, row in ((1, rows[0]), (len(rows) + 1, last)):
                rows.insert(at, {**row, "p": "0.00000000", "q": "0.00000000", "f": -1, "l": -1})
        else:
            rows[0]["p"] = "1e5"

    def _control(self, action: str, params: dict[str, str]) -> Response:
        """GET /_sim/<action>: ground truth, counters and fault injection for tests and demos."""
        actions: dict[str, Callable[[], Any]] = {
            "truth": self.truth,
            "stats": self.stats,
            "subscriptions": self.subscriptions,
            "pause": self.pause,
            "resume": self.resume,
            "rate": lambda: self.set_rate(float(params["tps"])),
            "weight": lambda: self.set_weight_limit(int(params["limit"])),
            "drop": self.drop_all,
            "shutdown": lambda: self.announce_shutdown(float(params.get("delay", "1"))),
            "refuse": lambda: self.refuse_connections(float(params.get("seconds", "5"))),
            "stall": lambda: self.stall(float(params.get("seconds", "5"))),
            "expire": self.expire,
            "aggfault": lambda: self.spoil_aggregates(
                params.get("kind", "contradict"), int(params.get("count", "1"))
            ),
            "archivefault": lambda: self.archives.spoil(
                params.get("kind", "checksum"), int(params.get("count", "1"))
            ),
            "garbage": lambda: self.send_garbage(params.get("kind", "not_json")),
            "flood": lambda: self.set_flood(params.get("market"), params.get("agent")),
            "list": lambda: self.list_symbol(params["symbol"], params.get("tick", "0.01000000")),
            "delist": lambda: self.delist(params["symbol"]),
        }
        fn = actions.get(action)
        if fn is None:
            return _json_response(404, {"error": f"unknown action; one of {sorted(actions)}"})
        try:
            result = fn()
        except (KeyError, ValueError) as exc:
            return _json_response(400, {"error": f"bad parameters: {exc}"})
        return _json_response(200, {"ok": True} if result is None else result)


def iter_config_overrides(pairs: list[str]) -> Iterator[tuple[str, Any]]:
    """``name=value`` strings -> typed SimConfig overrides (for the command line)."""
    fields = SimConfig.__dataclass_fields__
    for pair in pairs:
        name, _, raw = pair.partition("=")
        name = name.replace("-", "_")
        if name not in fields:
            raise ValueError(f"unknown simulator setting {name!r}")
        default = getattr(SimConfig(), name)
        value: Any = raw
        if isinstance(default, bool):
            value = raw.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            value = int(raw)
        elif isinstance(default, float):
            value = float(raw)
        elif isinstance(default, tuple):  # comma-separated, e.g. extra_symbols=币安人生USDT,X
            value = tuple(part for part in raw.split(",") if part)
        yield name, value
