"""The simulated market (pure): listed symbols, trade generation and the ground truth.

Nothing here does I/O, reads a clock or starts a thread: the server layer passes ``now_ms`` in
and decides when trades happen. Same seed, same calls -> same trades, byte for byte.
"""

from __future__ import annotations

import json
import random
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..median import RunningMedian
from ..prices import SCALE, format_median, format_price, parse_price

__all__ = ["Listing", "Market", "SymbolTruth", "Trade", "generate_listings", "load_listings"]

#: Tick sizes of generated symbols, as Binance writes them.
TICKS = ("0.00000001", "0.00000010", "0.00000100", "0.00001000", "0.00010000", "0.00100000",
         "0.01000000", "0.10000000", "1.00000000")  # fmt: skip
QUOTES = ("USDT", "BTC", "ETH", "BNB", "FDUSD", "TRY", "EUR", "BRL", "TUSD", "USDC", "JPY")


@dataclass
class Listing:
    """One symbol as exchangeInfo lists it (the fields medianserv and the simulator need)."""

    symbol: str
    status: str
    base: str
    quote: str
    tick: str  # PRICE_FILTER tickSize, as a string
    raw: dict[str, Any] | None = None  # the original exchangeInfo entry, when loaded from a file

    def to_json(self) -> dict[str, Any]:
        """The exchangeInfo entry (the original when loaded from a file)."""
        if self.raw is not None:
            return self.raw
        return {
            "symbol": self.symbol,
            "status": self.status,
            "baseAsset": self.base,
            "quoteAsset": self.quote,
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": self.tick,
                    "maxPrice": "1000000.00000000",
                    "tickSize": self.tick,
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": "0.00001000",
                    "maxQty": "9000.00000000",
                    "stepSize": "0.00001000",
                },
            ],
            "permissions": [],
            "permissionSets": [["SPOT"]],
        }


def load_listings(path: Path) -> tuple[list[Listing], dict[str, Any]]:
    """Listings from a saved exchangeInfo response, and its top-level fields."""
    info = json.loads(path.read_text())
    listings = []
    for s in info["symbols"]:
        tick = next(
            (f["tickSize"] for f in s.get("filters", []) if f.get("filterType") == "PRICE_FILTER"),
            "0.00000001",
        )
        listings.append(Listing(s["symbol"], s["status"], s["baseAsset"], s["quoteAsset"], tick, s))
    top = {k: v for k, v in info.items() if k != "symbols"}
    return listings, top


def generate_listings(n: int, seed: int) -> list[Listing]:
    """``n`` realistic symbols: made-up base assets over real quote assets, 60% TRADING."""
    rnd = random.Random(seed)
    consonants, vowels = "BCDFGHJKLMNPRSTVWXZ", "AEIOU"
    out: list[Listing] = []
    seen: set[str] = set()
    while len(out) < n:
        base = "".join(
            rnd.choice(consonants) + rnd.choice(vowels) for _ in range(rnd.randint(1, 3))
        )
        if rnd.random() < 0.1:
            base = rnd.choice(("1000", "1M")) + base
        quote = rnd.choice(QUOTES)
        symbol = base + quote
        if symbol in seen or base == quote:
            continue
        seen.add(symbol)
        status = "TRADING" if rnd.random() < 0.6 else "BREAK"
        out.append(Listing(symbol, status, base, quote, rnd.choice(TICKS)))
    return out


def _qty(trade_id: int) -> int:
    """A deterministic quantity for a trade id (1e-8 units): history and live agree."""
    return (trade_id * 2654435761 % 99_991 + 1) * 1000


def _buyer_maker(trade_id: int) -> bool:
    return bool(trade_id * 2654435761 >> 7 & 1)


@dataclass(frozen=True, slots=True)
class Trade:
    """One published trade."""

    symbol: str
    trade_id: int
    price: int  # 1e-8 units
    qty: int  # 1e-8 units
    time_ms: int
    buyer_maker: bool

    def event_json(self, event_ms: int) -> bytes:
        """The raw trade event, exactly as Binance writes it."""
        p, q = self.price, self.qty
        return (
            b'{"e":"trade","E":%d,"s":"%s","t":%d,"p":"%d.%08d","q":"%d.%08d","T":%d,"m":%s,"M":true}'
            % (event_ms, self.symbol.encode(), self.trade_id, p // SCALE, p % SCALE,
               q // SCALE, q % SCALE, self.time_ms, b"true" if self.buyer_maker else b"false")
        )  # fmt: skip

    def rest_json(self) -> dict[str, Any]:
        """The trade as ``GET /api/v3/historicalTrades`` returns it."""
        return {
            "id": self.trade_id,
            "price": f"{self.price // SCALE}.{self.price % SCALE:08d}",
            "qty": f"{self.qty // SCALE}.{self.qty % SCALE:08d}",
            "quoteQty": format_price(self.price * self.qty // SCALE),
            "time": self.time_ms,
            "isBuyerMaker": self.buyer_maker,
            "isBestMatch": True,
        }


@dataclass
class SymbolTruth:
    """Everything published for one symbol: the ground truth tests compare against.

    The median is our own :class:`RunningMedian`, itself tested against ``statistics.median``.
    ``history`` keeps the last ``history_limit`` trades (prices and times) for
    ``historicalTrades``: 16 bytes a trade.
    """

    first_id: int
    next_id: int
    median: RunningMedian = field(default_factory=RunningMedian)
    last_price: int | None = None
    prices: array[int] = field(default_factory=lambda: array("Q"))
    times: array[int] = field(default_factory=lambda: array("q"))
    history_first: int = 0  # trade id of prices[0]

    @property
    def count(self) -> int:
        return self.median.count

    def summary(self) -> dict[str, Any]:
        twice = self.median.twice_median
        return {
            "count": self.count,
            "median": None if twice is None else format_median(twice),
            "last_price": None if self.last_price is None else format_price(self.last_price),
            "first_id": self.first_id if self.count else None,
            "last_id": self.next_id - 1 if self.count else None,
        }


class Market:
    """Listed symbols, their price walks and the ground truth of every published trade.

    Trade rates are skewed like a real exchange: TRADING symbols get Zipf weights (a few hot,
    many cold) and a tenth of them stay silent; BREAK symbols never trade.

    Runtime complexity: :meth:`next_trades` O(k log d) for k trades; memory O(symbols + history).
    """

    def __init__(self, listings: Iterable[Listing], *, seed: int = 1, history_limit: int = 200_000):
        self.rnd = random.Random(seed)
        self.history_limit = history_limit
        self.listings: dict[str, Listing] = {}
        self.truth: dict[str, SymbolTruth] = {}  # every symbol ever listed
        self._ticks: dict[str, int] = {}  # current price, in ticks
        self._tick_units: dict[str, int] = {}
        self._weights: dict[str, float] = {}
        self._population: list[str] = []
        self._cum: list[float] = []
        for listing in listings:
            self.list_symbol(listing)

    # -- listings ---------------------------------------------------------------------------

    def list_symbol(self, listing: Listing, weight: float | None = None) -> None:
        """Add (or re-add) a symbol; TRADING symbols trade with ``weight`` (Zipf by default)."""
        rnd = self.rnd
        self.listings[listing.symbol] = listing
        tick = max(1, parse_price(listing.tick))
        self._tick_units[listing.symbol] = tick
        self._ticks.setdefault(listing.symbol, rnd.randint(1_000, 2_000_000))
        if listing.symbol not in self.truth:
            base = rnd.randint(10**6, 10**9)
            self.truth[listing.symbol] = SymbolTruth(base, base, history_first=base)
        if weight is None:
            rank = len(self._weights) + 1
            silent = listing.status != "TRADING" or rnd.random() < 0.1
            weight = 0.0 if silent else 1.0 / rank**1.1
        self._weights[listing.symbol] = weight
        self._reweigh()

    def delist(self, symbol: str) -> None:
        """Remove a symbol from exchangeInfo; it stops trading (its truth is kept)."""
        self.listings.pop(symbol, None)
        self._weights.pop(symbol, None)
        self._reweigh()

    def set_weight(self, symbol: str, weight: float) -> None:
        self._weights[symbol] = weight
        self._reweigh()

    def _reweigh(self) -> None:
        self._population = [s for s, w in self._weights.items() if w > 0]
        total = 0.0
        self._cum = []
        for s in self._population:
            total += self._weights[s]
            self._cum.append(total)

    @property
    def trading(self) -> Sequence[str]:
        """Symbols that trade (weight > 0)."""
        return self._population

    # -- trades -----------------------------------------------------------------------------

    def next_trades(self, k: int, now_ms: int) -> list[Trade]:
        """Generate and record ``k`` trades across the trading symbols, by weight."""
        if not self._population or k <= 0:
            return []
        return [
            self.trade(s, now_ms)
            for s in self.rnd.choices(self._population, cum_weights=self._cum, k=k)
        ]

    def trade(self, symbol: str, now_ms: int) -> Trade:
        """Generate one trade of ``symbol`` and record it in the ground truth."""
        rnd = self.rnd
        ticks = self._ticks[symbol]
        if rnd.random() >= 0.6:  # 60% of trades repeat the last price, like real ones
            step = round(rnd.gauss(0.0, max(1.0, ticks * 1e-4)))
            ticks = max(1, ticks + (step or rnd.choice((-1, 1))))
            self._ticks[symbol] = ticks
        truth = self.truth[symbol]
        tid = truth.next_id
        t = Trade(
            symbol, tid, ticks * self._tick_units[symbol], _qty(tid), now_ms, _buyer_maker(tid)
        )
        self.record(t)
        return t

    def record(self, t: Trade) -> None:
        """Add a published trade to the ground truth (also used by replays)."""
        truth = self.truth.get(t.symbol)
        if truth is None:
            truth = self.truth[t.symbol] = SymbolTruth(
                t.trade_id, t.trade_id, history_first=t.trade_id
            )
        elif truth.count == 0:
            truth.first_id = truth.next_id = truth.history_first = t.trade_id
        truth.median.add(t.price)
        truth.last_price = t.price
        truth.next_id = t.trade_id + 1
        truth.prices.append(t.price)
        truth.times.append(t.time_ms)
        if len(truth.prices) > self.history_limit + self.history_limit // 4:
            drop = len(truth.prices) - self.history_limit  # amortised O(1) trimming
            del truth.prices[:drop]
            del truth.times[:drop]
            truth.history_first += drop

    def history(self, symbol: str, from_id: int | None, limit: int) -> list[Trade] | None:
        """Up to ``limit`` stored trades from ``from_id`` (latest if None); None if unknown."""
        truth = self.truth.get(symbol)
        if truth is None:
            return None
        end = truth.history_first + len(truth.prices)
        start = end - limit if from_id is None else from_id
        start = max(start, truth.history_first)
        out = []
        for tid in range(start, min(end, start + limit)):
            i = tid - truth.history_first
            out.append(
                Trade(symbol, tid, truth.prices[i], _qty(tid), truth.times[i], _buyer_maker(tid))
            )
        return out
