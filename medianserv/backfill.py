"""Gap backfill: trades the streams missed, fetched over REST in bulk and applied exactly once.

Theory of operation
-------------------
A reader that sees a jump in trade ids calls :meth:`Backfill.notify`; after a reconnect the
owner calls :meth:`Backfill.sweep`, and one 24-hour ticker call (weight 80) tells, for every
symbol, the trades published while we were away, even for symbols that do not trade again.
A gap waits ``backfill_delay`` (late frames of a rotating connection often fill it by
themselves), then a worker fetches it.

*Where the trades come from.* ``GET /api/v3/aggTrades`` (weight 4, up to 1,000 rows): each row
is one price for the consecutive trade ids ``f..l``, so the prices of any range of ids are
known exactly from the rows that cover it, for a sixth of the weight of ``historicalTrades``
per call and about 1.8 trades a row on the real market. The first page of a gap is asked by
time: every gap knows when it happened (:class:`~medianserv.tradeids.Gap`), and the window
``after_ms .. before_ms`` starts with the trade just before it (Binance has put no limit on
that span since 2022-12-05). Each later page starts from the last aggregate of the page
before, fetched again and compared: a page that does not begin with the row we already have
is refused, so every page is checked against the one before it (:func:`next_hint`; the
cursor follows the gap even when a whole page of aggregates in the same millisecond lies
below it). ``historicalTrades`` (weight 25) is kept for what aggregates cannot serve: a gap
with no lower time bound, a window that began after the gap (the trades are older than
Binance keeps, or a ticker trailed) or was empty, and a gap whose aggregates were refused.
``backfill_endpoint = historicalTrades`` uses it for everything.

*What is checked before anything is applied* (:func:`check_page`, pure): rows tile the ids
(consecutive aggregate ids, each row starting where the previous one ended), times do not go
back, prices are exact decimals, and rows covering the trades on either side of the gap carry
the prices the stream delivered for them. A page failing a check is refused whole, counted by
kind and logged (rate-limited); the gap stays open and its next attempt, after a growing
delay (:func:`retry_delay`), uses ``historicalTrades``. Applying goes through
:meth:`SymbolStats.apply_rows`, which takes only ids still missing: nothing is ever applied
twice.

*Order and budget.* Workers (``backfill_workers``, each with its own keep-alive connection)
take the symbol with the fewest missing trades first, so the number of incomplete symbols
falls as fast as the budget allows. They share the client's weight budget under the ceiling
``rest_weight_limit * backfill_weight_share`` of the IP's weight per minute, as Binance reports
it, and stop for ``Retry-After`` on 429/418. Gaps over ``backfill_max_trades``, and ids Binance
no longer has, are given up and counted as lost, visible in the API.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable

from .config import Config
from .errors import InputError, PriceError
from .exchange import RateLimited, RestClient, RestError
from .logs import RateLimitedLog, ThreadErrors
from .paging import Hint, Locate, Page, fetch_page, plan
from .symbols import SymbolTable
from .tradeids import Gap

__all__ = ["Backfill", "BackfillStats", "retry_delay"]

log = logging.getLogger(__name__)

#: Longest wait before a symbol whose pages keep being refused (or failing) is tried again.
MAX_RETRY_DELAY = 60.0
#: Seconds between two audits of the table for gaps nobody queued (see Backfill.audit).
AUDIT_INTERVAL = 5.0


def retry_delay(failures: int) -> float:
    """Seconds before a symbol whose last ``failures`` attempts in a row failed (a refused
    page, an error) is tried again: 1, 2, 4, ... up to a minute. Pure.

    >>> [retry_delay(n) for n in (1, 2, 3, 10)]
    [1.0, 2.0, 4.0, 60.0]
    """
    return min(MAX_RETRY_DELAY, 2.0 ** (failures - 1))


# -- the worker ------------------------------------------------------------------------------------


class BackfillStats:
    """Backfill counters. ``lock`` guards them: several workers write them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()  # by endpoint
        self.filled = 0  # trades applied from REST
        self.lost = 0  # trade ids given up
        self.rate_limited = 0  # 429/418 answers
        self.errors = 0
        self.rejected: Counter[str] = Counter()  # pages refused, by kind
        self.sweeps = 0  # latest-trade-id checks after reconnects
        self.unqueued = 0  # symbols with gaps the audit found nobody had queued
        self.last_filled_at: float | None = None  # wall clock of the last trade recovered

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def snapshot(self) -> dict[str, object]:
        with self.lock:
            return {
                "requests": sum(self.requests.values()),
                "requests_by_endpoint": dict(self.requests),
                "filled": self.filled,
                "lost": self.lost,
                "rate_limited": self.rate_limited,
                "errors": self.errors,
                "rejected": dict(self.rejected),
                "sweeps": self.sweeps,
                "unqueued": self.unqueued,
                "last_filled_at": self.last_filled_at,
            }


class Backfill:
    """The backfill: a queue of symbols with gaps, and workers that fill them.

    ``notify`` and ``sweep`` from any thread; ``run`` is the body of each worker thread (the
    owner starts ``backfill_workers`` of them), one :meth:`run_once` after another; ``stop``
    ends them all.

    *Nothing left unserved.* A symbol with gaps is queued when a reader sees the jump, when a
    ticker sweep finds trades missed, when the service starts with gaps restored from the
    store (the owner notifies them), and again by its worker while gaps remain. As a last line,
    an idle worker audits the table every :data:`AUDIT_INTERVAL` seconds and queues any symbol
    with gaps that nothing queued (counted in ``unqueued``: a path that forgot to notify).
    A refused page or a failed call puts the symbol back with a growing delay
    (:func:`retry_delay`), never at once; an unexpected exception is logged, counted in
    ``errors`` (:class:`~medianserv.logs.ThreadErrors`) and treated the same way.
    """

    def __init__(
        self,
        config: Config,
        rest: RestClient,
        table: Callable[[], SymbolTable],
        *,
        clock: Callable[[], float] = time.monotonic,
        errors: ThreadErrors | None = None,
    ) -> None:
        self.config = config
        self.rest = rest
        self.table = table  # the current table: delisted symbols are not backfilled
        self.clock = clock
        self.errors = errors or ThreadErrors(log)
        self.stats = BackfillStats()
        self.stopping = threading.Event()  # set by stop(): every worker returns
        self.ceiling = config.rest_weight_limit * config.backfill_weight_share
        self._lock = threading.Condition()  # guards everything below; wakes idle workers
        self._waiting: list[tuple[float, int, str]] = []  # heap: (due time, seq, symbol)
        self._ready: list[tuple[int, int, str]] = []  # heap: (missing trades, seq, symbol)
        self._state: dict[str, str] = {}  # symbol -> "waiting", "ready", "busy" or "again"
        # symbol -> how to continue its lowest gap, and its failures in a row; touched only by
        # the worker holding the symbol ("busy" is exclusive)
        self._hints: dict[str, Hint] = {}
        self._failures: dict[str, int] = {}
        self._seq = itertools.count()
        self._sweep: set[str] = set()  # symbols whose latest trade id must be checked
        self._sweep_due = 0.0
        self._sweeping = False
        self._sweep_failures = 0
        self._audit_due = 0.0
        self._weight_wait_until = 0.0  # a worker waits for REST weight until then
        self._rlog = RateLimitedLog(log)

    # -- the queue (any thread) -----------------------------------------------------------------

    def notify(self, symbol: str, delay: float | None = None) -> None:
        """``symbol`` has a gap: fetch it after ``delay`` (default ``backfill_delay``). O(log n)."""
        due = self.clock() + (self.config.backfill_delay if delay is None else delay)
        with self._lock:
            state = self._state.get(symbol)
            if state in ("busy", "again"):
                self._state[symbol] = "again"  # its worker requeues it when done
                return
            if state is not None:
                return  # queued already
            self._state[symbol] = "waiting"
            heapq.heappush(self._waiting, (due, next(self._seq), symbol))
            self._lock.notify()

    def sweep(self, symbols: Iterable[str]) -> None:
        """After a reconnect: ask Binance for the latest trade ids of ``symbols`` (one ticker
        call for all) and open gaps for trades missed while disconnected, even for symbols
        that do not trade again soon. O(len(symbols))."""
        with self._lock:
            if not self._sweep:
                self._sweep_due = self.clock() + self.config.backfill_delay
            self._sweep.update(symbols)
            self._lock.notify()

    def queued(self, symbol: str) -> bool:
        """Whether ``symbol`` is queued, being filled, or waits for a ticker check. O(1)."""
        with self._lock:
            return symbol in self._state or symbol in self._sweep

    def pending(self) -> int:
        """Symbols queued or being filled. O(1)."""
        with self._lock:
            return len(self._state)

    def sweep_pending(self) -> int:
        """Symbols whose latest trade id is still to be checked: until then, trades missed
        while a connection was down are not yet known missing. O(1)."""
        with self._lock:
            return len(self._sweep) or int(self._sweeping)

    def next_attempt_in(self) -> float | None:
        """Seconds until the backfill next sends a request (None with nothing to do): 0 while
        it works, the REST weight's wait when it has none left, else the earliest due time.
        O(1)."""
        now = self.clock()
        with self._lock:
            if not self._state:
                return None
            if self._weight_wait_until > now:
                return self._weight_wait_until - now
            if self._ready or any(s in ("busy", "again") for s in self._state.values()):
                return 0.0
            return max(0.0, self._waiting[0][0] - now) if self._waiting else 0.0

    def stop(self) -> None:
        self.stopping.set()
        with self._lock:
            self._lock.notify_all()

    def _take(self, block: bool = True) -> str | None:
        """The ready symbol with the fewest missing trades (with ``block``, waiting up to a
        second for one); None if there is none, or a sweep is due. Marks it busy."""
        with self._lock:
            now = self.clock()
            while self._waiting and self._waiting[0][0] <= now:
                _, _, symbol = heapq.heappop(self._waiting)
                heapq.heappush(self._ready, (self._missing(symbol), next(self._seq), symbol))
                self._state[symbol] = "ready"
            if self._ready:
                _, _, symbol = heapq.heappop(self._ready)
                self._state[symbol] = "busy"
                return symbol
            wait = 1.0
            if self._waiting:
                wait = min(wait, self._waiting[0][0] - now)
            if self._sweep and not self._sweeping:
                wait = min(wait, self._sweep_due - now)
            if block and wait > 0:
                self._lock.wait(wait)
            return None

    def _missing(self, symbol: str) -> int:
        stats = self.table().get(symbol)
        return stats.missing() if stats is not None else 0

    def _release(self, symbol: str, more: bool, delay: float = 0.0) -> None:
        """A worker is done with ``symbol`` for now; queue it again if it has gaps left."""
        with self._lock:
            again = self._state.pop(symbol, None) == "again"
        if more or again:
            self.notify(symbol, delay)

    def audit(self, force: bool = False) -> int:
        """Queue every listed symbol with gaps that is not queued (at most once every
        :data:`AUDIT_INTERVAL` seconds unless ``force``). Returns how many it queued: 0 unless
        some path forgot to notify, which is counted and logged. O(symbols)."""
        now = self.clock()
        with self._lock:
            if not force and now < self._audit_due:
                return 0
            self._audit_due = now + AUDIT_INTERVAL
        found = 0
        for i, (symbol, stats) in enumerate(self.table().items()):
            if i % 64 == 63:
                time.sleep(0)  # let request and reader threads in
            if stats.missing() and not self.queued(symbol):
                found += 1
                self.notify(symbol, 0.0)
        if found:
            self.stats.add(unqueued=found)
            self._rlog.warning("unqueued", "backfill: %d symbol(s) had gaps nobody had queued; "
                               "queued now", found)  # fmt: skip
        return found

    # -- the worker loop --------------------------------------------------------------------------

    def run(self) -> None:
        """One worker: :meth:`run_once` until :meth:`stop`."""
        try:
            while not self.stopping.is_set():
                self.run_once()
        finally:
            self.rest.close()

    def run_once(self, block: bool = True) -> str | None:
        """One turn of a worker: the ticker check when due, then one request for the symbol
        with the fewest missing trades, or, with nothing ready, an audit. Whatever happens,
        the symbol goes back to the queue (with a delay after a failure) while it has gaps.
        Returns the symbol worked on. ``block``: wait up to a second for work (threads do;
        tests drive it step by step)."""
        self._sweep_if_due()
        symbol = self._take(block)
        if symbol is None:
            self.audit()
            return None
        more, delay = True, 0.0
        try:
            more, delay = self._step(symbol)
        except RateLimited as exc:
            delay = exc.retry_after
            self._rate_limited(exc)
        except RestError as exc:
            self.stats.add(errors=1)
            delay = self._failed(symbol)
            self._rlog.warning("rest", "backfill of %s failed (%s); retrying in %.0f s", symbol,
                               exc, delay)  # fmt: skip
        except Exception as exc:
            self.stats.add(errors=1)
            delay = self._failed(symbol)
            self.errors.record("backfill", exc, f"filling {symbol}")
        finally:
            self._release(symbol, more, delay)
        return symbol

    def _failed(self, symbol: str) -> float:
        """One more failure in a row for ``symbol``: the delay before its next attempt."""
        n = self._failures[symbol] = self._failures.get(symbol, 0) + 1
        return retry_delay(n)

    def _rate_limited(self, exc: RateLimited) -> None:
        self.stats.add(rate_limited=1)
        self._rlog.warning("429", "backfill: Binance says %s; pausing", exc)
        with self._lock:  # what next_attempt_in says meanwhile
            self._weight_wait_until = max(self._weight_wait_until,
                                          self.clock() + exc.retry_after)  # fmt: skip
        self.stopping.wait(exc.retry_after)

    def _sweep_if_due(self) -> None:
        try:
            self._maybe_sweep()
            self._sweep_failures = 0
        except RateLimited as exc:
            self._rate_limited(exc)
            self._sweep_later()
        except RestError as exc:
            self.stats.add(errors=1)
            delay = self._sweep_later()
            self._rlog.warning("sweep", "latest trade ids unavailable (%s); retrying in %.0f s",
                               exc, delay)  # fmt: skip
        except Exception as exc:
            self.stats.add(errors=1)
            self._sweep_later()
            self.errors.record("backfill", exc, "checking the latest trade ids")

    def _sweep_later(self) -> float:
        self._sweep_failures += 1
        delay = retry_delay(self._sweep_failures)
        with self._lock:
            self._sweep_due = self.clock() + delay
        return delay

    def _maybe_sweep(self) -> None:
        with self._lock:
            if self._sweeping or not self._sweep or self._sweep_due > self.clock():
                return
            self._sweeping = True
        try:
            if not self._acquire("ticker/24hr"):  # says meanwhile how long it waits
                return
            self.stats.add(sweeps=1)
            ranges = self.rest.trade_id_ranges()
            with self._lock:
                symbols, self._sweep = self._sweep, set()
            table = self.table()
            for symbol in symbols:
                stats = table.get(symbol)
                r = ranges.get(symbol)
                found = stats is not None and r is not None and stats.sweep(*r.as_tuple())
                if found:
                    self.notify(symbol)  # after the delay: the stream may still bring them
        finally:
            with self._lock:
                self._sweeping = False

    def _step(self, symbol: str) -> tuple[bool, float]:
        """One request for the lowest gap of ``symbol``: (gaps remain, delay before the next
        attempt)."""
        stats = self.table().get(symbol)
        if stats is None:
            return False, 0.0
        gap = stats.oldest_gap()
        if gap is None:
            return False, 0.0
        if gap.hi - gap.lo + 1 > self.config.backfill_max_trades:
            self.stats.add(lost=stats.give_up(gap.lo, gap.hi))
            log.warning("backfill: gap of %d trades in %s is over the cap; counted lost",
                        gap.hi - gap.lo + 1, symbol)  # fmt: skip
            return stats.oldest_gap() is not None, 0.0
        request = plan(gap, self._hints.get(symbol), self.config.backfill_endpoint)
        if not self._acquire(request.endpoint):
            return True, 0.0
        with self.stats.lock:
            self.stats.requests[request.endpoint] += 1
        try:
            page = fetch_page(self.rest, symbol, gap, self._hints.pop(symbol, None), request)
        except PriceError as exc:
            page = Page([], "bad_price", Locate(gap.lo))
            detail = str(exc)
        except InputError as exc:
            page = Page([], "malformed", Locate(gap.lo))
            detail = str(exc)
        else:
            detail = f"{request.endpoint} for {gap.lo}..{gap.hi}"
        if page.hint is not None:
            self._hints[symbol] = page.hint
        if page.verdict not in (None, "empty", "late"):
            self._refuse(symbol, gap, page.verdict, detail)
            return True, self._failed(symbol)
        self._failures.pop(symbol, None)
        if page.rows:
            first = page.rows[0].first_id
            if request.endpoint == "historicalTrades" and first > gap.lo:
                # Binance no longer has these ids
                self.stats.add(lost=stats.give_up(gap.lo, min(gap.hi, first - 1)))
            # from the gap up only: below it every id is counted, or history to import
            rows = [r._replace(first_id=max(r.first_id, gap.lo)) for r in page.rows
                    if r.last_id >= gap.lo]  # fmt: skip
            self._applied(stats.apply_rows(rows))
        elif request.endpoint == "historicalTrades":  # no trade at all from the gap on
            self.stats.add(lost=stats.give_up(gap.lo, gap.hi))
        return stats.oldest_gap() is not None, 0.0

    def _acquire(self, endpoint: str) -> bool:
        """Wait for REST weight for one call to ``endpoint``, saying meanwhile until when."""
        wait = self.rest.room(endpoint, self.ceiling)
        if wait > 0:
            with self._lock:
                self._weight_wait_until = max(self._weight_wait_until, self.clock() + wait)
        ok = self.rest.acquire(endpoint, self.ceiling, self.stopping)
        if wait > 0:
            with self._lock:
                self._weight_wait_until = 0.0
        return ok

    def _applied(self, n: int) -> None:
        if n:
            with self.stats.lock:
                self.stats.filled += n
                self.stats.last_filled_at = time.time()

    def _refuse(self, symbol: str, gap: Gap, kind: str, detail: str) -> None:
        """Nothing of the page is applied; the gap's next attempt uses historicalTrades."""
        with self.stats.lock:
            self.stats.rejected[kind] += 1
        self._rlog.warning(
            f"refused:{kind}", "backfill: refused a page for %s (%s: %s); the gap %d..%d stays "
            "open", symbol, kind, detail, gap.lo, gap.hi,
        )  # fmt: skip
