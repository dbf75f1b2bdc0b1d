"""Binance REST: exchangeInfo, tickers, aggTrades and historicalTrades (I/O), with pure parsing.

Requests go through :class:`RestClient`: one keep-alive HTTP connection per calling thread (a
backfill of a thousand pages should not pay a TCP and TLS handshake each), weight accounting
by endpoint, the IP's weight as Binance reports it in ``X-MBX-USED-WEIGHT-1M`` kept in a
shared :class:`~medianserv.pacing.WeightBudget`, and 429/418 turned into :class:`RateLimited`
carrying ``Retry-After`` (which also blocks the budget). Only the standard library is used.
"""

from __future__ import annotations

import gzip
import http.client
import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple
from urllib.parse import quote, urlsplit

import msgspec

from .errors import InputError, MedianservError
from .pacing import WeightBudget
from .prices import parse_price

__all__ = [
    "WEIGHTS",
    "AggRows",
    "AggTrade",
    "HistoricalTrade",
    "RateLimited",
    "RestClient",
    "RestError",
    "TickerRange",
    "parse_agg_trades",
    "parse_exchange_info",
    "parse_historical_trades",
    "parse_trade_id_ranges",
]

#: Request weight of each endpoint we call (Binance's documented weights).
WEIGHTS = {"exchangeInfo": 20, "ticker/24hr": 80, "historicalTrades": 25, "aggTrades": 4}


class RestError(MedianservError):
    """A REST call failed (network, HTTP error or a body we cannot read): retry later."""


class RateLimited(RestError):
    """429 (slow down) or 418 (banned): wait ``retry_after`` seconds before the next call."""

    def __init__(self, status: int, retry_after: float) -> None:
        super().__init__(f"HTTP {status}: retry after {retry_after:.0f} s")
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class HistoricalTrade:
    trade_id: int
    price: int  # 1e-8 units
    time_ms: int


class AggTrade(NamedTuple):
    """One aggregate trade: trades ``first_id..last_id`` at one price and time."""

    agg_id: int
    first_id: int
    last_id: int
    price: int  # 1e-8 units
    time_ms: int


@dataclass(frozen=True, slots=True)
class TickerRange:
    """A symbol's 24-hour ticker: its trades ``first_id..last_id`` (-1 when none) in the window
    ``open_ms..close_ms`` (Binance time)."""

    first_id: int
    last_id: int
    open_ms: int | None = None
    close_ms: int | None = None

    def as_tuple(self) -> tuple[int, int, int | None, int | None]:
        return self.first_id, self.last_id, self.open_ms, self.close_ms


NonNegative = msgspec.Meta(ge=0)


class _AggRow(msgspec.Struct):
    a: Annotated[int, NonNegative]
    p: str
    f: Annotated[int, msgspec.Meta(ge=-1)]  # -1: a row the 2022-04 audit marked invalid
    l: Annotated[int, msgspec.Meta(ge=-1)]  # noqa: E741 (Binance's name)
    T: Annotated[int, NonNegative]


_agg_decoder = msgspec.json.Decoder(list[_AggRow])


class AggRows(list[AggTrade]):
    """The valid rows of an aggTrades answer, and how many rows Binance's 2022-04 data audit
    had marked invalid in place (``invalid``: dropped)."""

    invalid: int = 0


def parse_agg_trades(body: bytes) -> AggRows:
    """The valid rows of an aggTrades response, in Binance's order. Pure. O(n).

    Rows the 2022-04 data audit marked invalid in place (``f`` and ``l`` -1, price 0: they
    cover no trade) are dropped and counted in ``AggRows.invalid``. Raises
    :class:`InputError` for anything but a list of well-formed rows: a missing or mistyped
    field, a negative id (other than the audit's), ``first > last`` or a price that is not an
    exact decimal.
    """
    try:
        raw = _agg_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InputError(f"bad aggTrades answer: {exc}") from exc
    out = AggRows()
    for r in raw:
        if r.f < 0 or r.l < 0:
            if r.f != -1 or r.l != -1 or parse_price(r.p) != 0:
                raise InputError(f"aggregate {r.a} has a negative trade id")
            out.invalid += 1
            continue
        if r.f > r.l:
            raise InputError(f"aggregate {r.a} has first id {r.f} > last id {r.l}")
        out.append(AggTrade(r.a, r.f, r.l, parse_price(r.p), r.T))
    return out


def parse_exchange_info(body: Any) -> list[str]:
    """Every listed symbol, in Binance's order, whatever its status. Pure. O(n).

    Raises :class:`InputError` when the body is not an exchangeInfo response, or lists a
    symbol twice: the service then keeps its current symbol set.
    """
    if not isinstance(body, dict) or not isinstance(body.get("symbols"), list):
        raise InputError("exchangeInfo without a symbols list")
    symbols = []
    for entry in body["symbols"]:
        name = entry.get("symbol") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise InputError(f"exchangeInfo entry without a symbol: {str(entry)[:80]}")
        symbols.append(name)
    if len(set(symbols)) != len(symbols):
        raise InputError("exchangeInfo lists a symbol twice")
    return symbols


def parse_trade_id_ranges(body: Any) -> dict[str, TickerRange]:
    """Symbol -> its trade ids of the last 24 hours and the ticker's window, from the 24-hour
    tickers; ids (-1, -1) for a symbol without trades. Pure. O(n)."""
    if not isinstance(body, list):
        raise InputError("ticker/24hr did not return a list")
    out = {}
    for t in body:
        if not isinstance(t, dict) or not isinstance(t.get("symbol"), str):
            continue
        first, last = t.get("firstId"), t.get("lastId")
        if type(first) is int and type(last) is int and first <= last:
            opened, closed = t.get("openTime"), t.get("closeTime")
            out[t["symbol"]] = TickerRange(
                first, last,
                opened if type(opened) is int else None,
                closed if type(closed) is int else None,
            )  # fmt: skip
    return out


def parse_historical_trades(body: Any) -> list[HistoricalTrade]:
    """Trades of a historicalTrades response, ascending by id. Pure. O(n)."""
    if not isinstance(body, list):
        raise InputError("historicalTrades did not return a list")
    out = []
    try:
        for t in body:
            out.append(HistoricalTrade(int(t["id"]), parse_price(t["price"]), int(t["time"])))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"bad historicalTrades entry: {exc}") from exc
    out.sort(key=lambda t: t.trade_id)
    return out


class RestClient:
    """Binance REST calls. Thread-safe: each calling thread keeps its own keep-alive
    connection; ``budget`` and the counters are shared under ``_lock``."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        weight_window: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        url = urlsplit(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port
        self._prefix = url.path
        self.timeout = timeout
        self.clock = clock
        self._local = threading.local()  # per thread: its connection and its reservation
        self._lock = threading.Lock()  # guards budget and the counters below
        self.budget = WeightBudget(weight_window)
        self.invalid_agg_rows = 0  # aggTrades rows the 2022-04 audit marked invalid, dropped
        self.requests: Counter[str] = Counter()  # by endpoint
        self.weight: Counter[str] = Counter()  # weight spent, by endpoint

    # -- the weight budget ----------------------------------------------------------------------

    def acquire(self, endpoint: str, ceiling: float, stop: threading.Event) -> bool:
        """Block until a call to ``endpoint`` keeps the IP's weight within ``ceiling``, then
        reserve it for this thread's next call. False if ``stop`` was set first."""
        weight = WEIGHTS[endpoint]
        while not stop.is_set():
            with self._lock:
                now = self.clock()
                if self.budget.try_acquire(weight, ceiling, now):
                    self._local.reserved = weight
                    return True
                delay = self.budget.wait_time(now)
            stop.wait(min(delay, 1.0))
        return False

    def room(self, endpoint: str, ceiling: float) -> float:
        """Seconds until a call to ``endpoint`` fits under ``ceiling`` (0: now), as far as we
        know now; nothing is reserved. O(1)."""
        with self._lock:
            now = self.clock()
            budget = self.budget
            if now >= budget.blocked_until and budget.used(now) + WEIGHTS[endpoint] <= ceiling:
                return 0.0
            return budget.wait_time(now)

    def spent(self) -> dict[str, tuple[int, int]]:
        """(requests, weight) by endpoint since start, every endpoint we call listed."""
        with self._lock:
            return {e: (self.requests[e], self.weight[e]) for e in WEIGHTS}

    def weight_now(self) -> int:
        """The IP's weight in the current window, as far as we know."""
        with self._lock:
            return self.budget.used(self.clock())

    # -- HTTP -------------------------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self.timeout,
                    context=ssl.create_default_context(),
                )  # fmt: skip
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _get(self, endpoint: str, query: str = "") -> bytes:
        """One GET of ``/api/v3/<endpoint>?<query>``: the body, or RestError / RateLimited."""
        weight = WEIGHTS[endpoint]
        reserved, self._local.reserved = getattr(self._local, "reserved", 0), 0
        path = f"{self._prefix}/api/v3/{endpoint}" + (f"?{query}" if query else "")
        headers = {"Accept": "application/json", "Accept-Encoding": "gzip",
                   "User-Agent": "medianserv"}  # fmt: skip
        with self._lock:
            self.requests[endpoint] += 1
            self.weight[endpoint] += weight
        reported: int | None = None
        try:
            for attempt in (1, 2):
                conn = self._connection()
                reused = conn.sock is not None
                try:
                    conn.request("GET", path, headers=headers)
                    resp = conn.getresponse()
                    body = resp.read()
                except (ConnectionError, http.client.RemoteDisconnected) as exc:
                    conn.close()
                    if reused and attempt == 1:
                        continue  # the server closed an idle keep-alive connection: once more
                    raise RestError(f"{endpoint}: {exc}") from exc
                except (OSError, http.client.HTTPException) as exc:  # timeouts, bad answers
                    conn.close()
                    raise RestError(f"{endpoint}: {type(exc).__name__}: {exc}") from exc
                break
            if resp.will_close:
                conn.close()
            reported = _int_or_none(resp.getheader("X-MBX-USED-WEIGHT-1M"))
            if resp.getheader("Content-Encoding") == "gzip":
                try:
                    body = gzip.decompress(body)
                except (OSError, EOFError) as exc:
                    raise RestError(f"{endpoint}: bad gzip body: {exc}") from exc
            if resp.status in (418, 429):
                retry = float(_int_or_none(resp.getheader("Retry-After")) or 60)
                with self._lock:
                    self.budget.block(self.clock() + max(1.0, retry))
                raise RateLimited(resp.status, max(1.0, retry))
            if resp.status != 200:
                detail = body[:300].decode(errors="replace")
                raise RestError(f"HTTP {resp.status} for {endpoint}: {detail}")
            return body
        finally:
            with self._lock:
                now = self.clock()
                self.budget.release(reserved, reported, now)

    def _get_json(self, endpoint: str, query: str = "") -> Any:
        body = self._get(endpoint, query)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise RestError(f"{endpoint}: not JSON: {exc}") from exc

    # -- endpoints --------------------------------------------------------------------------------

    def exchange_symbols(self) -> list[str]:
        """Every listed symbol (``showPermissionSets=false`` keeps the response small)."""
        return parse_exchange_info(self._get_json("exchangeInfo", "showPermissionSets=false"))

    def trade_id_ranges(self) -> dict[str, TickerRange]:
        """Trade ids of the last 24 hours, every symbol (one call, weight 80)."""
        return parse_trade_id_ranges(self._get_json("ticker/24hr"))

    def historical_trades(
        self, symbol: str, from_id: int, limit: int = 1000
    ) -> list[HistoricalTrade]:
        """Up to ``limit`` trades of ``symbol`` from ``from_id`` upwards (weight 25)."""
        query = f"symbol={quote(symbol)}&fromId={from_id}&limit={limit}"
        return parse_historical_trades(self._get_json("historicalTrades", query))

    def agg_trades(
        self,
        symbol: str,
        *,
        from_id: int | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = 1000,
    ) -> list[AggTrade]:
        """Up to ``limit`` aggregate trades of ``symbol`` from aggregate id ``from_id``, or in
        the window ``start_ms..end_ms`` (weight 4). InputError when the answer is malformed."""
        query = f"symbol={quote(symbol)}&limit={limit}"
        if from_id is not None:
            query += f"&fromId={from_id}"
        if start_ms is not None:
            query += f"&startTime={start_ms}"
        if end_ms is not None:
            query += f"&endTime={end_ms}"
        rows = parse_agg_trades(self._get("aggTrades", query))
        if rows.invalid:
            with self._lock:
                self.invalid_agg_rows += rows.invalid
        return rows

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
