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
per call and about 1.8 trades a row on the real market. The first page of a gap is found by
time: every gap knows when it happened (:class:`~medianserv.symbols.Gap`), and the window
``after_ms .. after_ms + 1 h`` starts with the trade just before it. Each later page starts
from the last aggregate applied, fetched again and compared: a page that does not begin with
the row we already have is refused, so every page is checked against the one before it.
``historicalTrades`` (weight 25) is kept for what aggregates cannot serve: a gap with no time
bound, or spanning more than :data:`MAX_WINDOWS` hours, a window that began after the gap
(the trades are older than Binance keeps, or a ticker trailed), and a gap whose aggregates
were refused. ``backfill_endpoint = historicalTrades`` uses it for everything.

*What is checked before anything is applied* (:func:`check_page`, pure): rows tile the ids
(consecutive aggregate ids, each row starting where the previous one ended), times do not go
back, prices are exact decimals, and rows covering the trades on either side of the gap carry
the prices the stream delivered for them. A page failing a check is refused whole, counted by
kind and logged (rate-limited); the gap stays open and its next attempt uses
``historicalTrades``. Applying goes through :meth:`SymbolStats.apply_rows`, which takes only
ids still missing: nothing is ever applied twice.

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
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from .config import Config
from .errors import InputError, PriceError
from .exchange import AggTrade, HistoricalTrade, RateLimited, RestClient, RestError
from .logs import RateLimitedLog
from .pacing import backoff
from .symbols import Gap, Row, SymbolTable

__all__ = [
    "Backfill", "BackfillStats", "Cursor", "Page", "Request", "Window", "check_page",
    "fetch_page", "plan",
]  # fmt: skip

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000
#: A gap spanning more hours than this is located with one historicalTrades call (weight 25)
#: rather than stepped through hour-long windows (weight 4 each).
MAX_WINDOWS = 6


# -- planning and checking (pure) -------------------------------------------------------------


class Cursor(NamedTuple):
    """Continue a gap starting at ``lo`` from ``row``, the last aggregate applied before it."""

    lo: int
    row: AggTrade


class Window(NamedTuple):
    """Look for the gap starting at ``lo`` from ``start_ms`` on (an earlier window was empty)."""

    lo: int
    start_ms: int


class Locate(NamedTuple):
    """Fetch the gap starting at ``lo`` with historicalTrades (aggregates cannot serve it)."""

    lo: int


Hint = Cursor | Window | Locate


class Request(NamedTuple):
    """One REST call to make for a gap."""

    endpoint: str  # "aggTrades" or "historicalTrades"
    from_id: int | None = None  # aggregate id (aggTrades) or trade id (historicalTrades)
    start_ms: int | None = None
    end_ms: int | None = None
    limit: int = 1000


def plan(gap: Gap, hint: Hint | None, endpoint: str = "aggTrades") -> Request:
    """The next call for ``gap``. Pure, O(1).

    >>> plan(Gap(10, 20, after_ms=5_000, before_ms=9_000), None)
    Request(endpoint='aggTrades', from_id=None, start_ms=5000, end_ms=9000, limit=1000)
    >>> plan(Gap(10, 20), None).endpoint
    'historicalTrades'
    """
    if hint is not None and hint.lo != gap.lo:
        hint = None  # the gap moved (a live trade filled its start): the hint is stale
    historical = Request("historicalTrades", gap.lo, limit=min(1000, gap.hi - gap.lo + 1))
    if endpoint == "historicalTrades" or isinstance(hint, Locate):
        return historical
    if isinstance(hint, Cursor):
        return Request("aggTrades", from_id=hint.row.agg_id)
    start = hint.start_ms if isinstance(hint, Window) else gap.after_ms
    if start is None:
        return historical
    end = start + HOUR_MS - 1
    if gap.before_ms is not None:
        if gap.before_ms - start > MAX_WINDOWS * HOUR_MS:
            return historical
        end = min(end, max(start, gap.before_ms))
    return Request("aggTrades", start_ms=start, end_ms=end)


def check_page(rows: Sequence[AggTrade], gap: Gap, hint: Hint | None = None) -> str | None:
    """Why a page of aggregates cannot be applied to ``gap``, or None when it can. Pure, O(n).

    ``overlap`` / ``skip``: rows that do not tile the trade ids (or aggregate ids that are not
    consecutive); ``disorder``: times going back; ``contradict``: a row that disagrees with a
    trade we have (the trade on either side of the gap, or the row a cursor continues from);
    ``late``: the page starts after the gap (not bad data: the gap needs historicalTrades);
    ``empty``: no rows.
    """
    if not rows:
        return "empty"
    for a, b in itertools.pairwise(rows):
        if b.first_id <= a.last_id:
            return "overlap"
        if b.first_id != a.last_id + 1 or b.agg_id != a.agg_id + 1:
            return "skip"
        if b.time_ms < a.time_ms:
            return "disorder"
    if isinstance(hint, Cursor) and hint.lo == gap.lo and rows[0] != hint.row:
        return "contradict"
    for edge, price in ((gap.lo - 1, gap.price_before), (gap.hi + 1, gap.price_after)):
        if price is None:
            continue
        for r in rows:
            if r.first_id <= edge <= r.last_id and r.price != price:
                return "contradict"
    if rows[0].first_id > gap.lo:
        return "late"
    return None


class Page(NamedTuple):
    """A fetched page for a gap: the rows to apply (none when refused), why it was refused
    (a :func:`check_page` or :func:`check_trades` verdict, or None), and how to continue."""

    rows: list[Row]
    verdict: str | None
    hint: Hint | None


def fetch_page(
    rest: RestClient, symbol: str, gap: Gap, hint: Hint | None, request: Request
) -> Page:
    """Make ``request`` (from :func:`plan`; its weight already acquired) and check what comes
    back against ``gap``. The one fetch of both the backfill and the history import, so both
    apply only pages that pass the same checks. A page of aggTrades that is empty or starts
    after the gap is no error: the next hint steps to the next window, or locates the gap
    with historicalTrades; a refused page also hands the gap to historicalTrades."""
    if request.endpoint == "historicalTrades":
        trades = rest.historical_trades(symbol, gap.lo, request.limit)
        verdict = check_trades(trades, gap)
        rows = [] if verdict else trades_to_rows(trades)
        return Page(rows, verdict, Locate(gap.lo) if verdict else None)
    page = rest.agg_trades(
        symbol, from_id=request.from_id, start_ms=request.start_ms, end_ms=request.end_ms
    )
    verdict = check_page(page, gap, hint)
    if verdict in ("empty", "late"):
        end = request.end_ms
        more = verdict == "empty" and end is not None and (gap.before_ms is None
                                                         or end < gap.before_ms)  # fmt: skip
        return Page([], verdict, Window(gap.lo, end + 1) if more and end is not None
                    else Locate(gap.lo))  # fmt: skip
    if verdict is not None:
        return Page([], verdict, Locate(gap.lo))
    last = page[-1]
    rows = [Row(r.first_id, r.last_id, r.price, r.time_ms) for r in page]
    return Page(rows, None, Cursor(last.last_id + 1, last) if last.last_id < gap.hi else None)


def trades_to_rows(trades: Iterable[HistoricalTrade]) -> list[Row]:
    """historicalTrades as rows of one trade each: the same bulk path. O(n)."""
    return [Row(t.trade_id, t.trade_id, t.price, t.time_ms) for t in trades]


def check_trades(trades: Sequence[HistoricalTrade], gap: Gap) -> str | None:
    """Why a historicalTrades page cannot be applied to ``gap``, or None. Pure, O(n)."""
    for a, b in itertools.pairwise(trades):
        if b.trade_id != a.trade_id + 1:
            return "overlap" if b.trade_id <= a.trade_id else "skip"
        if b.time_ms < a.time_ms:
            return "disorder"
    for t in trades:
        if t.trade_id == gap.hi + 1 and gap.price_after not in (None, t.price):
            return "contradict"
    return None


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
                "last_filled_at": self.last_filled_at,
            }


class Backfill:
    """The backfill: a queue of symbols with gaps, and workers that fill them.

    ``notify`` and ``sweep`` from any thread; ``run`` is the body of each worker thread (the
    owner starts ``backfill_workers`` of them); ``stop`` ends them all.
    """

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
        self.stopping = threading.Event()  # set by stop(): every worker returns
        self.ceiling = config.rest_weight_limit * config.backfill_weight_share
        self._lock = threading.Condition()  # guards everything below; wakes idle workers
        self._waiting: list[tuple[float, int, str]] = []  # heap: (due time, seq, symbol)
        self._ready: list[tuple[int, int, str]] = []  # heap: (missing trades, seq, symbol)
        self._state: dict[str, str] = {}  # symbol -> "waiting", "ready", "busy" or "again"
        # symbol -> how to continue its lowest gap; touched only by the worker holding the symbol
        self._hints: dict[str, Hint] = {}
        self._seq = itertools.count()
        self._sweep: set[str] = set()  # symbols whose latest trade id must be checked
        self._sweep_due = 0.0
        self._sweeping = False
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

    def pending(self) -> int:
        """Symbols queued or being filled. O(1)."""
        with self._lock:
            return len(self._state)

    def sweep_pending(self) -> int:
        """Symbols whose latest trade id is still to be checked: until then, trades missed
        while a connection was down are not yet known missing. O(1)."""
        with self._lock:
            return len(self._sweep) or int(self._sweeping)

    def stop(self) -> None:
        self.stopping.set()
        with self._lock:
            self._lock.notify_all()

    def _take(self) -> str | None:
        """The ready symbol with the fewest missing trades (waiting up to a second for one);
        None if there is none, or a sweep is due. Marks it busy."""
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
            if wait > 0:
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

    # -- the worker loop --------------------------------------------------------------------------

    def run(self) -> None:
        """One worker: sweep when due, fill gaps until :meth:`stop`."""
        errors = backoff(1.0, 60.0)
        try:
            while not self.stopping.is_set():
                try:
                    self._maybe_sweep()
                except RateLimited as exc:
                    self._rate_limited(exc)
                    continue
                except RestError as exc:
                    self.stats.add(errors=1)
                    self._rlog.warning("sweep", "latest trade ids unavailable (%s); retrying", exc)
                    with self._lock:
                        self._sweep_due = self.clock() + next(errors)
                symbol = self._take()
                if symbol is None:
                    continue
                more, delay = True, 0.0
                try:
                    more = self._step(symbol)
                    errors = backoff(1.0, 60.0)
                except RateLimited as exc:
                    delay = exc.retry_after
                    self._rate_limited(exc)
                except RestError as exc:
                    self.stats.add(errors=1)
                    delay = next(errors)
                    self._rlog.warning("rest", "backfill of %s failed (%s); retrying", symbol, exc)
                finally:
                    self._release(symbol, more, delay)
        finally:
            self.rest.close()

    def _rate_limited(self, exc: RateLimited) -> None:
        self.stats.add(rate_limited=1)
        self._rlog.warning("429", "backfill: Binance says %s; pausing", exc)
        self.stopping.wait(exc.retry_after)

    def _maybe_sweep(self) -> None:
        with self._lock:
            if self._sweeping or not self._sweep or self._sweep_due > self.clock():
                return
            self._sweeping = True
        try:
            if not self.rest.acquire("ticker/24hr", self.ceiling, self.stopping):
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

    def _step(self, symbol: str) -> bool:
        """One request for the lowest gap of ``symbol``. True if gaps remain."""
        stats = self.table().get(symbol)
        if stats is None:
            return False
        gap = stats.oldest_gap()
        if gap is None:
            return False
        if gap.hi - gap.lo + 1 > self.config.backfill_max_trades:
            self.stats.add(lost=stats.give_up(gap.lo, gap.hi))
            log.warning("backfill: gap of %d trades in %s is over the cap; counted lost",
                        gap.hi - gap.lo + 1, symbol)  # fmt: skip
            return stats.oldest_gap() is not None
        request = plan(gap, self._hints.get(symbol), self.config.backfill_endpoint)
        if not self.rest.acquire(request.endpoint, self.ceiling, self.stopping):
            return True
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
        elif page.rows:
            first = page.rows[0].first_id
            if request.endpoint == "historicalTrades" and first > gap.lo:
                # Binance no longer has these ids
                self.stats.add(lost=stats.give_up(gap.lo, min(gap.hi, first - 1)))
            self._applied(stats.apply_rows(page.rows))
        elif request.endpoint == "historicalTrades":  # no trade at all from the gap on
            self.stats.add(lost=stats.give_up(gap.lo, gap.hi))
        return stats.oldest_gap() is not None

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
