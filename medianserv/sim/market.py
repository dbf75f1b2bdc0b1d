"""The simulated market (pure): listed symbols, trade generation and the ground truth.

Nothing here does I/O, reads a clock or starts a thread: the server layer passes ``now_ms`` in
and decides when trades happen. Same seed, same calls -> same trades, byte for byte.
"""

from __future__ import annotations

import json
import random
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..median import PyRunningMedian
from ..prices import SCALE, format_median, format_price, parse_price

__all__ = [
    "Listing",
    "Market",
    "SymbolTruth",
    "Trade",
    "archive_csv",
    "generate_listings",
    "load_listings",
    "make_past",
]

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


#: A taker order fills this many resting orders on average, each fill one trade at the same
#: price, side and millisecond: one aggregate trade of 1.8 trades, as in the real BTCUSDT and
#: ETHUSDT recordings (1.7-2.0).
FILLS_PER_ORDER = 1.8
_MORE_FILLS = 1 - 1 / FILLS_PER_ORDER  # geometric: the chance an order fills one more


def _fmt8(units: int) -> str:
    return f"{units // SCALE}.{units % SCALE:08d}"


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
            "price": _fmt8(self.price),
            "qty": _fmt8(self.qty),
            "quoteQty": format_price(self.price * self.qty // SCALE),
            "time": self.time_ms,
            "isBuyerMaker": self.buyer_maker,
            "isBestMatch": True,
        }


@dataclass
class SymbolTruth:
    """Everything published for one symbol: the ground truth tests compare against.

    The median is our own pure :class:`PyRunningMedian` (never the compiled twin the service
    runs: the truth stays independent of it), itself tested against ``statistics.median``.
    The last ``history_limit`` trades (price, time, side: 17 bytes a trade) are kept for
    ``historicalTrades``, and the aggregate trades covering them for ``aggTrades``: a new
    aggregate starts wherever a trade differs from the previous one in price, side or
    millisecond, as Binance aggregates the fills of one taker order.
    """

    first_id: int
    next_id: int
    median: PyRunningMedian = field(default_factory=PyRunningMedian)
    last_price: int | None = None
    prices: array[int] = field(default_factory=lambda: array("Q"))
    times: array[int] = field(default_factory=lambda: array("q"))
    sides: array[int] = field(default_factory=lambda: array("b"))  # buyer was the maker
    history_first: int = 0  # trade id of prices[0]
    agg_first: array[int] = field(default_factory=lambda: array("q"))  # first trade id of each
    agg_base: int = 0  # aggregate id of agg_first[0]

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

    def trade_at(self, symbol: str, trade_id: int) -> Trade:
        """A stored trade (``history_first <= trade_id < next_id``)."""
        i = trade_id - self.history_first
        return Trade(symbol, trade_id, self.prices[i], _qty(trade_id), self.times[i],
                     bool(self.sides[i]))  # fmt: skip

    def aggregate_json(self, i: int) -> dict[str, Any]:
        """Aggregate ``i`` (an index into ``agg_first``) as ``GET /api/v3/aggTrades`` has it."""
        first = self.agg_first[i]
        last = self.agg_first[i + 1] - 1 if i + 1 < len(self.agg_first) else self.next_id - 1
        k = max(first, self.history_first) - self.history_first
        return {
            "a": self.agg_base + i,
            "p": _fmt8(self.prices[k]),
            "q": _fmt8(sum(_qty(t) for t in range(first, last + 1))),
            "f": first,
            "l": last,
            "T": self.times[k],
            "m": bool(self.sides[k]),
            "M": True,
        }


class Market:
    """Listed symbols, their price walks and the ground truth of every published trade.

    Trade rates are skewed like a real exchange: TRADING symbols get Zipf weights (a few hot,
    many cold) and a tenth of them stay silent; BREAK symbols never trade.

    Runtime complexity: :meth:`next_trades` O(k log d) for k trades; memory O(symbols + history).
    """

    def __init__(
        self,
        listings: Iterable[Listing],
        *,
        seed: int = 1,
        history_limit: int = 200_000,
        walk_levels: int = 0,
    ):
        """``walk_levels`` > 0 keeps each symbol's price within that many ticks around where
        it started, a tick a move (a market whose set of levels stops growing); 0 lets it
        walk freely, moves of about 1e-4 of the price."""
        self.rnd = random.Random(seed)
        self.history_limit = history_limit
        self.walk_levels = walk_levels
        self._home: dict[str, int] = {}  # the price a bounded walk stays around, in ticks
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
        """Generate and record at least ``k`` trades across the trading symbols, by weight:
        taker orders of :data:`FILLS_PER_ORDER` fills on average, each fill one trade. The
        last order is not cut short, so a few more than ``k`` may come back."""
        if not self._population or k <= 0:
            return []
        out: list[Trade] = []
        rnd = self.rnd
        for symbol in rnd.choices(self._population, cum_weights=self._cum, k=k):
            fills = 1
            while rnd.random() < _MORE_FILLS:
                fills += 1
            out.extend(self.order(symbol, now_ms, fills))
            if len(out) >= k:
                break
        return out

    def trade(self, symbol: str, now_ms: int) -> Trade:
        """Generate one trade of ``symbol`` and record it in the ground truth."""
        return self.order(symbol, now_ms, 1)[0]

    def order(self, symbol: str, now_ms: int, fills: int) -> list[Trade]:
        """One taker order of ``symbol`` filled in ``fills`` trades (same price, side and time),
        recorded in the ground truth."""
        rnd = self.rnd
        ticks = self._ticks[symbol]
        if rnd.random() >= 0.6:  # 60% of orders trade at the last price, like real ones
            if self.walk_levels:
                home = self._home.setdefault(symbol, ticks)
                low = home - self.walk_levels // 2
                step = rnd.choice((-1, 1))  # reflected at the band's edges
                if not low <= ticks + step < low + self.walk_levels:
                    step = -step
                ticks = max(1, ticks + step)
            else:
                step = round(rnd.gauss(0.0, max(1.0, ticks * 1e-4)))
                ticks = max(1, ticks + (step or rnd.choice((-1, 1))))
            self._ticks[symbol] = ticks
        price = ticks * self._tick_units[symbol]
        buyer_maker = rnd.random() < 0.5
        truth = self.truth[symbol]
        out = []
        for _ in range(fills):
            tid = truth.next_id
            t = Trade(symbol, tid, price, _qty(tid), now_ms, buyer_maker)
            self.record(t)
            out.append(t)
        return out

    def record(self, t: Trade) -> None:
        """Add a published trade to the ground truth (also used by replays)."""
        truth = self.truth.get(t.symbol)
        if truth is None:
            truth = self.truth[t.symbol] = SymbolTruth(
                t.trade_id, t.trade_id, history_first=t.trade_id
            )
        elif truth.count == 0:
            truth.first_id = truth.next_id = truth.history_first = t.trade_id
        prices, times, sides = truth.prices, truth.times, truth.sides
        if not (
            prices
            and t.trade_id == truth.next_id
            and prices[-1] == t.price
            and times[-1] == t.time_ms
            and sides[-1] == t.buyer_maker
        ):
            truth.agg_first.append(t.trade_id)  # a new aggregate trade
        truth.median.add(t.price)
        truth.last_price = t.price
        truth.next_id = t.trade_id + 1
        prices.append(t.price)
        times.append(t.time_ms)
        sides.append(t.buyer_maker)
        if len(prices) > self.history_limit + self.history_limit // 4:
            drop = len(prices) - self.history_limit  # amortised O(1) trimming
            del prices[:drop]
            del times[:drop]
            del sides[:drop]
            truth.history_first += drop
            # aggregates wholly before the kept trades go too
            gone = bisect_right(truth.agg_first, truth.history_first) - 1
            if gone > 0:
                del truth.agg_first[:gone]
                truth.agg_base += gone

    def history(self, symbol: str, from_id: int | None, limit: int) -> list[Trade] | None:
        """Up to ``limit`` stored trades from ``from_id`` (latest if None); None if unknown."""
        truth = self.truth.get(symbol)
        if truth is None:
            return None
        end = truth.history_first + len(truth.prices)
        start = end - limit if from_id is None else from_id
        start = max(start, truth.history_first)
        return [truth.trade_at(symbol, tid) for tid in range(start, min(end, start + limit))]

    def aggregates(
        self,
        symbol: str,
        from_id: int | None,
        start_ms: int | None,
        end_ms: int | None,
        limit: int,
    ) -> list[dict[str, Any]] | None:
        """Up to ``limit`` stored aggregate trades, ascending: from aggregate id ``from_id``, or
        with times in ``start_ms..end_ms`` (inclusive), or the latest. None if unknown."""
        truth = self.truth.get(symbol)
        if truth is None:
            return None
        n = len(truth.agg_first)
        if from_id is not None:
            lo = max(0, from_id - truth.agg_base)
        elif start_ms is None and end_ms is None:
            lo = max(0, n - limit)
        else:
            lo = 0 if start_ms is None else self._first_agg_at(truth, start_ms)
        rows = []
        for i in range(lo, min(n, lo + limit)):
            row = truth.aggregate_json(i)
            if end_ms is not None and from_id is None and row["T"] > end_ms:
                break
            rows.append(row)
        return rows

    @staticmethod
    def _first_agg_at(truth: SymbolTruth, ms: int) -> int:
        """Index of the first aggregate with time >= ``ms`` (binary search: times ascend)."""
        lo, hi = 0, len(truth.agg_first)
        while lo < hi:
            mid = (lo + hi) // 2
            first = max(truth.agg_first[mid], truth.history_first)
            if truth.times[first - truth.history_first] < ms:
                lo = mid + 1
            else:
                hi = mid
        return lo


# -- the past: trades before the simulator started, and Binance's archives of them ------------

DAY_MS = 86_400_000
MICROS_FROM_MS = 1_735_689_600_000  # 2025-01-01: archive timestamps are in µs from then on


def make_past(market: Market, now_ms: int, days: int, per_day: float) -> None:
    """Give every trading symbol ``days`` days of trades before ``now_ms`` (about ``per_day``
    a day, in taker orders of several fills, like live ones), its ids and aggregate ids ending
    where its live trades begin. Deterministic for the market's seed. O(trades)."""
    rnd = market.rnd
    start = now_ms - days * DAY_MS
    for symbol in sorted(market.trading):
        truth = market.truth[symbol]
        orders = max(1, round(days * per_day / FILLS_PER_ORDER))
        times = sorted(rnd.randrange(start, now_ms) for _ in range(orders))
        fills = []
        for _ in range(orders):
            n = 1
            while rnd.random() < _MORE_FILLS:
                n += 1
            fills.append(n)
        first = truth.next_id - sum(fills)
        truth.first_id = truth.next_id = truth.history_first = first
        for t, n in zip(times, fills, strict=True):
            market.order(symbol, t, n)


def archive_csv(truth: SymbolTruth, kind: str, start_ms: int, end_ms: int) -> bytes:
    """The archive CSV of ``kind`` (aggTrades or trades) for the trades in ``start_ms..end_ms``
    (end exclusive), in Binance's format: no header; times in ms before 2025, µs after."""
    from bisect import bisect_left

    times = truth.times
    i0, i1 = bisect_left(times, start_ms), bisect_left(times, end_ms)
    if i0 >= i1:
        return b""
    base = truth.history_first
    scale = 1000 if start_ms >= MICROS_FROM_MS else 1
    lines = []
    if kind == "trades":
        for i in range(i0, i1):
            tid, price = base + i, truth.prices[i]
            qty = _qty(tid)
            lines.append(
                b"%d,%s,%s,%s,%d,%s,True\n"
                % (tid, _fmt8(price).encode(), _fmt8(qty).encode(),
                   format_price(price * qty // SCALE).encode(), times[i] * scale,
                   b"True" if truth.sides[i] else b"False")
            )  # fmt: skip
        return b"".join(lines)
    first_agg = bisect_left(truth.agg_first, base + i0)
    for k in range(first_agg, len(truth.agg_first)):
        row = truth.aggregate_json(k)
        if row["f"] >= base + i1:
            break
        lines.append(
            b"%d,%s,%s,%d,%d,%d,%s,True\n"
            % (row["a"], row["p"].encode(), row["q"].encode(), row["f"], row["l"],
               row["T"] * scale, b"True" if row["m"] else b"False")
        )  # fmt: skip
    return b"".join(lines)
