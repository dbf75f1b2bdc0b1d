"""Binance REST: exchangeInfo and historicalTrades (I/O), with pure parsing beside it.

Requests go through :class:`RestClient`, which remembers the weight Binance reports in
``X-MBX-USED-WEIGHT-1M`` and turns 429/418 into :class:`RateLimited` carrying ``Retry-After``.
Only the standard library is used: a handful of requests a minute needs no HTTP client package.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .errors import InputError, MedianservError
from .prices import parse_price

__all__ = [
    "HistoricalTrade",
    "RateLimited",
    "RestClient",
    "RestError",
    "parse_exchange_info",
    "parse_historical_trades",
    "parse_trade_id_ranges",
]


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


def parse_trade_id_ranges(body: Any) -> dict[str, tuple[int, int]]:
    """Symbol -> (firstId, lastId) of its trades in the last 24 hours, from the 24-hour
    tickers; (-1, -1) for a symbol without trades. Pure. O(n)."""
    if not isinstance(body, list):
        raise InputError("ticker/24hr did not return a list")
    out = {}
    for t in body:
        if not isinstance(t, dict) or not isinstance(t.get("symbol"), str):
            continue
        first, last = t.get("firstId"), t.get("lastId")
        if type(first) is int and type(last) is int and first <= last:
            out[t["symbol"]] = (first, last)
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
    """Binance REST calls. Thread-safe; ``used_weight`` is the last reported 1-minute weight."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.clock = clock
        self._lock = threading.Lock()  # guards used_weight and weight_minute
        self.used_weight = 0
        self.weight_minute = 0  # the clock minute used_weight belongs to

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(
            self.base_url + path, headers={"Accept": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                self._note_weight(resp.headers.get("X-MBX-USED-WEIGHT-1M"))
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            self._note_weight(err.headers.get("X-MBX-USED-WEIGHT-1M"))
            if err.code in (418, 429):
                try:
                    retry = float(err.headers.get("Retry-After", "60"))
                except ValueError:
                    retry = 60.0
                raise RateLimited(err.code, max(1.0, retry)) from err
            detail = err.read(300).decode(errors="replace")
            raise RestError(f"HTTP {err.code} for {path.split('?')[0]}: {detail}") from err
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets, bad JSON
            raise RestError(f"{path.split('?')[0]}: {exc}") from exc

    def _note_weight(self, header: str | None) -> None:
        if header is None:
            return
        try:
            used = int(header)
        except ValueError:
            return
        with self._lock:
            self.used_weight = used
            self.weight_minute = int(self.clock() // 60)

    def weight_now(self) -> int:
        """Weight used in the current minute, as last reported (0 once the minute is over)."""
        with self._lock:
            return self.used_weight if self.weight_minute == int(self.clock() // 60) else 0

    def exchange_symbols(self) -> list[str]:
        """Every listed symbol (``showPermissionSets=false`` keeps the response small)."""
        return parse_exchange_info(self._get("/api/v3/exchangeInfo?showPermissionSets=false"))

    def trade_id_ranges(self) -> dict[str, tuple[int, int]]:
        """First and last trade ids of the last 24 hours, every symbol (one call, weight 80)."""
        return parse_trade_id_ranges(self._get("/api/v3/ticker/24hr"))

    def historical_trades(
        self, symbol: str, from_id: int, limit: int = 1000
    ) -> list[HistoricalTrade]:
        """Up to ``limit`` trades of ``symbol`` from ``from_id`` upwards (weight 25)."""
        path = f"/api/v3/historicalTrades?symbol={quote(symbol)}&fromId={from_id}&limit={limit}"
        return parse_historical_trades(self._get(path))
