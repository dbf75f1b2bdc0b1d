"""History import: every trade since a symbol's listing, from Binance's archives, then REST.

Theory of operation
-------------------
A symbol's history is the trade ids before our live history began: the *front*
(:meth:`~medianserv.symbols.TradeIds.start_history`), found with one call,
``aggTrades?fromId=0&limit=1`` (the symbol's first trade). The front is filled from its bottom
up, in order:

1. monthly archives for complete months, daily ones for the days since (a monthly file not
   published yet is replaced by that month's daily files), fetched, checked and reduced to
   (price, count) pairs by a pool of processes (:func:`~medianserv.archive.fetch_and_reduce`),
   a few files ahead; each merged whole, in order, with
   :meth:`~medianserv.symbols.SymbolStats.apply_levels`;
2. REST aggregates for what no archive holds yet (today's trades, a file refused twice, a
   hole between files), continuing from the last row of the last file, fetched again and
   compared, exactly as the gap backfill does (:func:`~medianserv.backfill.check_page`).

Each file must start exactly where the front does: a file already applied (after a restart)
is skipped, one that overlaps is reduced again from the front's start, one that leaves a hole
waits for REST to fill it. Since what is applied and the front move together in one snapshot
transaction, a restart (or SIGKILL) resumes where the last snapshot left off and never counts
a file twice. A refused file (checksum, corrupt zip, bad price, ids out of order, another
symbol's CSV) is counted and logged and its ``trades`` twin tried instead; a download that
fails is retried with backoff.

The importer keeps to its own share of the REST weight (``history_weight_share``), below the
backfill's, so live gaps always come first. A symbol listed while the service runs gets the
same treatment, requested or not: its first trades (the busiest) are recent, so REST serves
them.

Thread ``history`` (owned by :class:`~medianserv.ingest.Ingest`) and the process pool.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import datetime as dt
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .archive import ArchiveFile, Reduced, Refused, daily_files, fetch_and_reduce, plan
from .backfill import Cursor, Hint, fetch_page
from .backfill import plan as plan_request
from .config import Config
from .errors import InputError
from .exchange import AggTrade, RateLimited, RestClient, RestError
from .logs import RateLimitedLog
from .pacing import backoff
from .symbols import SymbolStats, SymbolTable

__all__ = ["HistoryStats", "Importer"]

log = logging.getLogger(__name__)

#: Attempts at a file whose download fails before its stretch is left to REST.
NETWORK_ATTEMPTS = 4


@dataclass
class HistoryStats:
    """Import counters. ``lock`` guards them (the importer writes, /metrics reads)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    files: int = 0  # archive files applied
    zip_bytes: int = 0
    csv_bytes: int = 0
    rows: int = 0
    trades: int = 0  # trades imported (archives and REST)
    rest_pages: int = 0
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    complete: int = 0  # symbols whose history is complete
    failed: int = 0  # imports that failed and were put back in the queue
    started_at: float | None = None

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)


class Importer:
    """The history importer: ``request(symbols)`` from any thread; ``run`` in its thread."""

    def __init__(
        self,
        config: Config,
        rest: RestClient,
        table: Callable[[], SymbolTable],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.rest = rest
        self.table = table
        self.clock = clock
        self.stats = HistoryStats()
        self.ceiling = config.rest_weight_limit * config.history_weight_share
        self.stopping = threading.Event()  # set by stop(): run() returns between steps
        self._lock = threading.Condition()  # guards the queue and the states; wakes run()
        self._queue: collections.deque[str] = collections.deque()
        self._state: dict[str, str] = {}  # symbol -> pending, importing, complete or failed
        self._pool: cf.ProcessPoolExecutor | None = None
        self._rlog = RateLimitedLog(log)

    # -- from any thread ------------------------------------------------------------------------

    def request(self, symbols: Iterable[str]) -> None:
        """Import the history of ``symbols`` (those not done or queued already). O(n)."""
        with self._lock:
            for symbol in symbols:
                if symbol not in self._state:
                    self._state[symbol] = "pending"
                    self._queue.append(symbol)
            self._lock.notify()

    def status(self, symbol: str, complete: bool) -> str:
        """``none``, ``pending``, ``importing``, ``complete`` or ``failed``. O(1)."""
        if complete:
            return "complete"
        with self._lock:
            return self._state.get(symbol, "none")  # complete here: nothing traded before us

    def counts(self) -> dict[str, int]:
        """Symbols by state (for /-/status). O(symbols requested)."""
        with self._lock:
            return dict(collections.Counter(self._state.values()))

    def stop(self) -> None:
        self.stopping.set()
        with self._lock:
            self._lock.notify_all()

    # -- the thread -------------------------------------------------------------------------------

    def run(self) -> None:
        """Import until :meth:`stop`; one symbol at a time, files of several in flight."""
        errors = backoff(5.0, 300.0)
        try:
            while not self.stopping.is_set():
                with self._lock:
                    if not self._queue:
                        self._lock.wait(1.0)
                        continue
                    symbol = self._queue.popleft()
                    self._state[symbol] = "importing"
                if self.stats.started_at is None:
                    self.stats.started_at = self.clock()
                failed = False
                try:
                    done = self._import(symbol)
                    errors = backoff(5.0, 300.0)
                except RateLimited as exc:
                    self._rlog.warning("429", "history: Binance says %s; pausing", exc)
                    done = None
                    self.stopping.wait(exc.retry_after)
                except (RestError, InputError) as exc:
                    self._rlog.warning("rest", "history of %s: %s; retrying later", symbol, exc)
                    done, failed = None, True
                    self.stats.add(failed=1)
                    self.stopping.wait(next(errors))
                with self._lock:
                    if done is None:  # again later, after the others: "failed" until then
                        self._state[symbol] = "failed" if failed else "pending"
                        self._queue.append(symbol)
                    elif done:
                        self._state[symbol] = "complete"
                    else:  # delisted meanwhile: nothing to import for it
                        self._state.pop(symbol, None)
                if done:
                    self.stats.add(complete=1)
        finally:
            self._close_pool()

    def _close_pool(self) -> None:
        """Stop the pool at once: a file half downloaded is fetched again after a restart."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list(getattr(pool, "_processes", {}).values())  # not public: best effort
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()

    def _pool_for(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(
                max_workers=self.config.history_workers,
                mp_context=multiprocessing.get_context("spawn"),  # no fork of a threaded process
            )
        return self._pool

    def _today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC).date()

    def _import(self, symbol: str) -> bool | None:
        """Import one symbol's history: True when complete, False when delisted, None when it
        must wait (stopping, or its live history not started yet)."""
        stats = self.table().get(symbol)
        if stats is None:
            return False  # delisted meanwhile
        if stats.needs_baseline():
            return None  # the listing baselines it first
        started, origin, complete = stats.history_info()
        if complete:
            return True
        if not started:  # a quiet symbol: everything up to its latest trade is history
            if not self._acquire():
                return None
            latest = self.rest.agg_trades(symbol, limit=1)
            if not latest:
                return True  # no trade ever: nothing to import
            stats.adopt(latest[-1].last_id, latest[-1].time_ms)
        if origin is None:
            if not self._acquire():
                return None
            first = self.rest.agg_trades(symbol, from_id=0, limit=1)
            if not first:
                return True
            stats.start_history(first[0].first_id, first[0].time_ms)
        front = stats.front()
        if front is None:
            return True
        log.info("history of %s: trades %d..%d to import", symbol, front.lo, front.hi)
        ok, row = self._archives(symbol, stats)
        if not ok:
            return None  # stopping
        front = stats.front()
        if front is not None and not self._rest_until(symbol, stats, row, front.hi):
            return None
        if stats.front() is not None:
            return None
        log.info("history of %s: complete from its first trade", symbol)
        return True

    def _acquire(self) -> bool:
        return self.rest.acquire("aggTrades", self.ceiling, self.stopping)

    # -- archives ---------------------------------------------------------------------------------

    def _archives(self, symbol: str, stats: SymbolStats) -> tuple[bool, AggTrade | None]:
        """Apply every archive file of the front, in order: (False when stopping, the last
        aggregate applied, for REST to continue from)."""
        front = stats.front()
        assert front is not None
        start = front.after_ms if front.after_ms is not None else 0
        files = collections.deque(plan(symbol, start, int(self.clock() * 1000), self._today()))
        futures: dict[ArchiveFile, cf.Future[Reduced | Refused]] = {}
        attempts: collections.Counter[ArchiveFile] = collections.Counter()
        row: AggTrade | None = None
        base = self.config.archive_url
        ahead = max(2, 2 * self.config.history_workers)

        def submit(file: ArchiveFile, cut: int) -> None:
            futures[file] = self._pool_for().submit(fetch_and_reduce, base, file, cut)

        try:
            while files:
                if self.stopping.is_set():
                    return False, row
                front = stats.front()
                if front is None:
                    break
                for f in list(files)[:ahead]:  # keep the pool busy a few files ahead
                    if f not in futures:
                        submit(f, front.lo)
                file = files[0]
                try:
                    result = futures[file].result(timeout=1.0)
                except cf.TimeoutError:
                    continue
                del futures[file]
                files.popleft()
                if isinstance(result, Refused):
                    self._refused(symbol, result, files, attempts)
                    continue
                if result.last_id < front.lo:
                    continue  # applied before (a restart): never twice
                if result.first_id < front.lo:  # overlaps what is applied: again, from the front
                    files.appendleft(file)
                    submit(file, front.lo)
                    continue
                if result.first_id > front.lo:  # a hole before it: REST fills it first
                    if not self._rest_until(symbol, stats, row, result.first_id - 1):
                        return False, row
                    front = stats.front()
                    if front is None or front.lo != result.first_id:
                        files.appendleft(file)  # reduced again against the new front
                        continue
                self._apply(symbol, stats, result)
                row = AggTrade(*result.last_row) if file.kind == "aggTrades" else None
        finally:
            for fut in futures.values():
                fut.cancel()
        return True, row

    def _refused(
        self,
        symbol: str,
        result: Refused,
        files: collections.deque[ArchiveFile],
        attempts: collections.Counter[ArchiveFile],
    ) -> None:
        file = result.file
        if result.reason in ("missing", "empty"):
            if file.monthly and result.reason == "missing":  # not published yet: its days
                today = self._today()
                days = daily_files(
                    symbol, file.first_day, min(file.last_day, today - dt.timedelta(1))
                )
                files.extendleft(reversed(days))
            return  # nothing traded then, or REST will fill the stretch
        if result.reason == "network":
            attempts[file] += 1
            if attempts[file] < NETWORK_ATTEMPTS:
                self.stopping.wait(min(60.0, 2.0 ** attempts[file]))
                files.appendleft(file)
                return
        with self.stats.lock:
            self.stats.refused[result.reason] += 1
        log.warning("history of %s: %s refused (%s: %s)", symbol, file.name, result.reason,
                    result.detail[:200])  # fmt: skip
        if file.kind == "aggTrades" and result.reason != "network":
            files.appendleft(file.other_kind())  # the same trades, in the other dataset

    def _apply(self, symbol: str, stats: SymbolStats, r: Reduced) -> None:
        applied = stats.apply_levels(
            r.first_id, r.last_id, r.levels.tolist(), r.counts.tolist(), r.last_row[4],
            last_price=r.last_row[3],
        )  # fmt: skip
        if not applied:
            return
        s = self.stats
        with s.lock:
            s.files += 1
            s.zip_bytes += r.zip_bytes
            s.csv_bytes += r.csv_bytes
            s.rows += r.rows
            s.trades += applied
        log.info("history of %s: %s applied, %d trades at %d prices", symbol, r.file.name,
                 applied, len(r.levels))  # fmt: skip

    # -- REST -------------------------------------------------------------------------------------

    def _rest_until(self, symbol: str, stats: SymbolStats, row: AggTrade | None, stop: int) -> bool:
        """Fill the front over REST up to trade id ``stop``, page by page, each checked as the
        backfill checks its own (:func:`~medianserv.backfill.fetch_page`; a page continuing
        from ``row`` must start with it). False when stopping."""
        hint: Hint | None = None
        while True:
            front = stats.front()
            if front is None or front.lo > stop:
                return True
            gap = front._replace(hi=stop)
            if row is not None and row.last_id + 1 == front.lo:
                hint = Cursor(front.lo, row)
            request = plan_request(gap, hint)
            if not self.rest.acquire(request.endpoint, self.ceiling, self.stopping):
                return False
            self.stats.add(rest_pages=1)
            page = fetch_page(self.rest, symbol, gap, hint, request)
            hint, row = page.hint, None
            if page.verdict not in (None, "empty", "late"):
                with self.stats.lock:
                    self.stats.refused[f"rest_{page.verdict}"] += 1
                continue  # historicalTrades next (the page's hint)
            if not page.rows and request.endpoint == "aggTrades":
                continue  # an empty window, or one after the stretch: the hint moves on
            if not page.rows or page.rows[0].first_id > front.lo:
                raise RestError(f"{request.endpoint} of {symbol} has no trade {front.lo}")
            if isinstance(hint, Cursor):
                row = hint.row
            rows = [r._replace(last_id=min(r.last_id, stop)) for r in page.rows
                    if r.first_id <= stop]  # fmt: skip
            self.stats.add(trades=stats.apply_rows(rows))
