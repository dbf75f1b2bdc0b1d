"""Gap backfill: trades missed by the streams, fetched from historicalTrades and applied once.

A reader that sees a jump in trade ids calls :meth:`Backfill.notify`. After ``backfill_delay``
(late frames from a rotating connection often fill the gap by themselves) the backfill thread
asks ``GET /api/v3/historicalTrades?symbol=X&fromId=<gap start>&limit=1000`` and applies the
trades through :meth:`SymbolStats.apply`, which ignores any already applied. It stays within
``backfill_weight_share`` of the REST weight budget (reading ``X-MBX-USED-WEIGHT-1M``), waits
out 429/418 for ``Retry-After``, and gives up gaps larger than ``backfill_max_trades`` or ids
Binance no longer has: those stay counted as lost, visible in the API.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from .config import Config
from .exchange import RateLimited, RestClient, RestError
from .logs import RateLimitedLog
from .pacing import backoff
from .symbols import Outcome, SymbolTable

__all__ = ["Backfill", "BackfillStats"]

log = logging.getLogger(__name__)

HISTORICAL_TRADES_WEIGHT = 25
TICKER_ALL_WEIGHT = 80


class BackfillStats:
    """Written by the backfill thread alone; read without a lock by /metrics."""

    def __init__(self) -> None:
        self.requests = 0
        self.filled = 0  # trades applied from REST
        self.lost = 0  # trade ids given up
        self.rate_limited = 0  # 429/418 answers
        self.errors = 0
        self.budget_waits = 0  # pauses to stay within the weight share
        self.sweeps = 0  # latest-trade-id checks after reconnects


class Backfill:
    """The backfill worker. ``notify`` from any thread; ``run`` in the owner's thread."""

    def __init__(
        self,
        config: Config,
        rest: RestClient,
        table: Callable[[], SymbolTable],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.rest = rest
        self.table = table  # the current table: delisted symbols are not backfilled
        self.clock = clock
        self.stats = BackfillStats()
        self.stopping = threading.Event()  # set by stop(): run() returns
        self._lock = threading.Lock()  # guards _due
        self._due: dict[str, float] = {}  # symbol -> earliest time to fetch
        self._sweep: set[str] = set()  # symbols whose latest trade id must be checked
        self._sweep_due = 0.0
        self._wake = threading.Event()  # a new gap was reported
        self._rlog = RateLimitedLog(log)

    def notify(self, symbol: str) -> None:
        """A gap was found in ``symbol``: fetch it after the configured delay. O(1)."""
        with self._lock:
            self._due.setdefault(symbol, self.clock() + self.config.backfill_delay)
        self._wake.set()

    def sweep(self, symbols: Iterable[str]) -> None:
        """After a reconnect: ask Binance for the latest trade ids of ``symbols`` (one ticker
        call for all) and open gaps for trades missed while disconnected, even for symbols
        that do not trade again soon. O(len(symbols))."""
        with self._lock:
            if not self._sweep:
                self._sweep_due = self.clock() + self.config.backfill_delay
            self._sweep.update(symbols)
        self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._due)

    def stop(self) -> None:
        self.stopping.set()
        self._wake.set()

    def run(self) -> None:
        """Fill gaps until :meth:`stop`."""
        errors = backoff(1.0, 60.0)
        while not self.stopping.is_set():
            try:
                self._maybe_sweep()
            except RateLimited as exc:
                self.stats.rate_limited += 1
                log.warning("backfill: Binance says %s; pausing", exc)
                self.stopping.wait(exc.retry_after)
                continue
            except RestError as exc:
                self.stats.errors += 1
                self._rlog.warning("sweep", "latest trade ids unavailable (%s); retrying", exc)
                with self._lock:
                    self._sweep_due = self.clock() + next(errors)
            symbol, wait = self._next_due()
            if symbol is None:
                self._wake.wait(wait)
                self._wake.clear()
                continue
            try:
                more = self._fill_one(symbol)
            except RateLimited as exc:
                self.stats.rate_limited += 1
                log.warning("backfill: Binance says %s; pausing", exc)
                self._requeue(symbol, exc.retry_after)
                self.stopping.wait(exc.retry_after)
                continue
            except RestError as exc:
                self.stats.errors += 1
                delay = next(errors)
                self._rlog.warning("rest", "backfill of %s failed (%s); retrying", symbol, exc)
                self._requeue(symbol, delay)
                continue
            errors = backoff(1.0, 60.0)
            if more:
                self._requeue(symbol, 0.0)

    def _maybe_sweep(self) -> None:
        with self._lock:
            if not self._sweep or self._sweep_due > self.clock():
                return
        if not self._wait_for_budget(TICKER_ALL_WEIGHT):
            return
        self.stats.sweeps += 1
        ranges = self.rest.trade_id_ranges()
        with self._lock:
            symbols, self._sweep = self._sweep, set()
        table = self.table()
        for symbol in symbols:
            stats = table.get(symbol)
            ids = ranges.get(symbol)
            if stats is not None and ids is not None and stats.sweep(*ids):
                self.notify(symbol)

    def _next_due(self) -> tuple[str | None, float]:
        now = self.clock()
        with self._lock:
            if not self._due:
                return None, 0.25 if self._sweep else 1.0
            symbol = min(self._due, key=self._due.__getitem__)
            due = self._due[symbol]
            if due > now:
                return None, min(1.0, due - now)
            del self._due[symbol]
            return symbol, 0.0

    def _requeue(self, symbol: str, delay: float) -> None:
        with self._lock:
            self._due[symbol] = min(self._due.get(symbol, float("inf")), self.clock() + delay)

    def _wait_for_budget(self, weight: int = HISTORICAL_TRADES_WEIGHT) -> bool:
        """Stay inside our share of the weight; False if stopping."""
        cfg = self.config
        budget = cfg.rest_weight_limit * cfg.backfill_weight_share
        while self.rest.weight_now() + weight > budget:
            self.stats.budget_waits += 1
            if self.stopping.wait(1.0):
                return False
        return True

    def _fill_one(self, symbol: str) -> bool:
        """One request for the oldest gap of ``symbol``. True if gaps remain."""
        stats = self.table().get(symbol)
        if stats is None:
            return False
        gap = stats.oldest_gap()
        if gap is None:
            return False
        lo, hi = gap
        if hi - lo + 1 > self.config.backfill_max_trades:
            self.stats.lost += stats.give_up(lo, hi)
            log.warning("backfill: gap of %d trades in %s is over the cap; counted lost",
                        hi - lo + 1, symbol)  # fmt: skip
            return stats.oldest_gap() is not None
        if not self._wait_for_budget():
            return True
        self.stats.requests += 1
        trades = self.rest.historical_trades(symbol, lo, min(1000, hi - lo + 1))
        first = trades[0].trade_id if trades else hi + 1
        if first > lo:  # Binance no longer has these ids
            self.stats.lost += stats.give_up(lo, min(hi, first - 1))
        for t in trades:
            if t.trade_id > hi:
                break
            if t.trade_id >= lo and stats.apply(t.trade_id, t.price, t.time_ms) is Outcome.FILLED:
                self.stats.filled += 1
        return stats.oldest_gap() is not None
