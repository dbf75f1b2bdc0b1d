"""History import: every trade since a symbol's listing, from Binance's archives, then REST.

Theory of operation
-------------------
A symbol's history is the trade ids before our live range began: the *front*
(:meth:`~medianserv.tradeids.TradeIds.start_history`), found with one call,
``aggTrades?fromId=0&limit=1`` (the symbol's first trade). The front is filled from its
bottom up, in order:

1. monthly archives for complete months, daily ones for the days since (a monthly file not
   published yet is replaced by that month's daily files), fetched, checked and reduced to
   (price, count) pairs by a pool of processes (:func:`~medianserv.archive.fetch_and_reduce`),
   a few files ahead, each counting only the front's ids; each merged whole, in order, with
   :meth:`~medianserv.symbols.SymbolStats.apply_levels`;
2. REST aggregates for what no archive holds yet (today's trades, a file refused twice, a
   hole between files), continuing from the last row of the last file, fetched again and
   compared, exactly as the gap backfill does (:func:`~medianserv.paging.check_page`).

*Decide purely, act thinly.* What to do with a reduced file is :func:`decide_file`, a pure
function of the front and the ids the file covers: skip it (imported already), apply it
(it starts exactly at the front's bottom and ends within it), reduce it again counting only
the front's ids (it reaches below the front, after a restart, or past its top, the day the
live range began), or have REST fill the hole before it first. What to do with a file that
could not be used is :func:`decide_refused`: try again later (the network), take other files
for the same trades (a month not out yet: its days; a file failing a check: its ``trades``
twin), or leave the stretch to REST. Since what is applied and the front move together in one
snapshot transaction, a restart (or SIGKILL) resumes where the last snapshot left off and
never counts a file twice.

*Nothing left unserved.* Symbols wait in a queue ordered by when they are due. A symbol
whose live range has not started (no ticker baseline: the tickers failed when it was listed)
is given one from REST rather than waiting for a trade that may never come. Any failure of a
symbol's import, an unexpected exception or a dead pool process included, is logged, counted,
shows as ``failed`` and puts the symbol back with a growing delay; a dead pool is replaced.
Pool processes watch the service's process and exit within a second of it going away, however
it went (:func:`~medianserv.archive.pool_process_init`).

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
import heapq
import itertools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .archive import (
    ArchiveFile,
    Reduced,
    Refused,
    archive_exists,
    daily_files,
    fetch_and_reduce,
    monthly_file,
    plan,
    pool_process_init,
)
from .config import Config
from .errors import InputError
from .exchange import AggTrade, RateLimited, RestClient, RestError
from .logs import RateLimitedLog, ThreadErrors
from .paging import Cursor, Hint, fetch_page
from .paging import plan as plan_request
from .symbols import SymbolStats, SymbolTable, candles_kept
from .tradeids import Front

__all__ = [
    "Apply",
    "FillFirst",
    "HistoryStats",
    "Importer",
    "LeaveToRest",
    "Recut",
    "Replace",
    "Retry",
    "Skip",
    "decide_file",
    "decide_refused",
    "retry_delay",
]

log = logging.getLogger(__name__)

#: Attempts at a file whose download fails before its stretch is left to REST.
NETWORK_ATTEMPTS = 4
#: REST pages of history refused in a row before the symbol's import is retried later.
REFUSED_PAGES = 3
#: Longest wait before a symbol whose import keeps failing is tried again.
MAX_RETRY_DELAY = 300.0
#: Seconds between two progress lines at INFO (per-file lines are DEBUG).
PROGRESS_EVERY = 30.0
#: Seconds over which the recent import rate (and so the ETA) is measured.
RATE_WINDOW = 60.0


# -- decisions (pure) ---------------------------------------------------------------------------


class Skip(NamedTuple):
    """Nothing to do with the file: its ids are imported already (or the front is done)."""

    reason: str


class Apply(NamedTuple):
    """Merge the file: it starts exactly at the front's bottom and ends within it."""


class Recut(NamedTuple):
    """Reduce the file again counting only ids ``lo..hi`` (the front): it reaches below the
    front (``below_front``: imported in part already) or past its top (``past_top``: the
    live range began inside it)."""

    lo: int
    hi: int
    reason: str


class FillFirst(NamedTuple):
    """A hole below the file: REST fills the front up to ``stop`` first, then decide again."""

    stop: int


FileDecision = Skip | Apply | Recut | FillFirst


def decide_file(front: Front | None, first_id: int, last_id: int) -> FileDecision:
    """What to do with a reduced file counting the ids ``first_id..last_id``. Pure, O(1).

    >>> f = Front(100, 199)
    >>> decide_file(f, 100, 150), decide_file(f, 20, 99), decide_file(f, 120, 150)
    (Apply(), Skip(reason='applied'), FillFirst(stop=119))
    >>> decide_file(f, 50, 150), decide_file(f, 100, 250)
    (Recut(lo=100, hi=199, reason='below_front'), Recut(lo=100, hi=199, reason='past_top'))
    """
    if front is None:
        return Skip("done")
    if last_id < front.lo:
        return Skip("applied")
    if first_id > front.lo:
        return FillFirst(min(first_id - 1, front.hi))
    if first_id < front.lo:
        return Recut(front.lo, front.hi, "below_front")
    if last_id > front.hi:
        return Recut(front.lo, front.hi, "past_top")
    return Apply()


class Retry(NamedTuple):
    """Fetch the same file again after ``delay`` seconds."""

    delay: float


class Replace(NamedTuple):
    """Take these files instead, for the same trades."""

    files: tuple[ArchiveFile, ...]


class LeaveToRest(NamedTuple):
    """No archive serves this stretch: REST fills it (or nothing traded then)."""


RefusedDecision = Retry | Replace | LeaveToRest


def decide_refused(
    file: ArchiveFile, reason: str, attempts: int, today: dt.date
) -> RefusedDecision:
    """What to do when ``file`` could not be used for ``reason`` (see
    :class:`~medianserv.archive.Refused`), after ``attempts`` tries. Pure, O(days).

    A monthly file not published yet, or holding two CSVs of the same name, is replaced by
    its days up to yesterday; a download that failed is retried, with a growing delay,
    :data:`NETWORK_ATTEMPTS` times; a checksum that does not match is fetched again once
    (Binance republishes files: the file and its CHECKSUM may come from either side of it);
    an aggTrades file that failed a check is replaced by its ``trades`` twin; anything else
    is left to REST.

    >>> from medianserv.archive import monthly_file
    >>> m = monthly_file("X", 2024, 8)
    >>> decide_refused(m, "checksum", 1, dt.date(2025, 1, 1))
    Retry(delay=1.0)
    >>> decide_refused(m, "checksum", 2, dt.date(2025, 1, 1)).files[0].name
    'X-trades-2024-08'
    >>> decide_refused(m, "members", 1, dt.date(2025, 1, 1)).files[0].name
    'X-aggTrades-2024-08-01'
    >>> decide_refused(m, "network", 1, dt.date(2025, 1, 1))
    Retry(delay=2.0)
    >>> len(decide_refused(m, "missing", 1, dt.date(2024, 8, 10)).files)
    9
    """
    if reason in ("missing", "members"):
        if file.monthly:  # not published yet, or two CSVs in one zip: its days, those out
            last = min(file.last_day, today - dt.timedelta(1))
            return Replace(tuple(daily_files(file.symbol, file.first_day, last, file.kind)))
        if reason == "missing":
            return LeaveToRest()  # not out yet (or nothing traded): REST serves the day
    if reason == "checksum" and attempts < 2:
        return Retry(1.0)  # republished between the two requests: both anew
    if reason == "empty":
        return LeaveToRest()  # nothing traded then
    if reason == "network":
        return Retry(min(60.0, 2.0**attempts)) if attempts < NETWORK_ATTEMPTS else LeaveToRest()
    if file.kind == "aggTrades":
        return Replace((file.other_kind(),))
    return LeaveToRest()


def retry_delay(failures: int) -> float:
    """Seconds before a symbol whose import failed ``failures`` times in a row is tried
    again: 5, 10, 20, ... up to 5 minutes. Pure.

    >>> [retry_delay(n) for n in (1, 2, 3, 10)]
    [5.0, 10.0, 20.0, 300.0]
    """
    return min(MAX_RETRY_DELAY, 5.0 * 2.0 ** (failures - 1))


class Done(NamedTuple):
    """The symbol's history is complete (or there is none)."""


class Gone(NamedTuple):
    """The symbol was delisted meanwhile: nothing to import."""


class Later(NamedTuple):
    """Try the symbol again after ``delay`` seconds; ``failed`` when that is because of a
    failure (shown as ``failed`` until the next attempt)."""

    delay: float
    failed: bool


SymbolOutcome = Done | Gone | Later


class _Plan(collections.deque[ArchiveFile]):
    """A symbol's files still to take, counting in ``stats`` every file put in and taken out
    (the files still to go of all plans are the difference)."""

    def __init__(self, files: Iterable[ArchiveFile], stats: HistoryStats) -> None:
        super().__init__(files)
        self.stats = stats
        with stats.lock:
            stats.files_planned += len(self)

    def appendleft(self, file: ArchiveFile) -> None:
        super().appendleft(file)
        with self.stats.lock:
            self.stats.files_planned += 1

    def extendleft(self, files: Iterable[ArchiveFile]) -> None:
        files = list(files)
        super().extendleft(files)
        with self.stats.lock:
            self.stats.files_planned += len(files)

    def popleft(self) -> ArchiveFile:
        file = super().popleft()
        with self.stats.lock:
            self.stats.files_settled += 1
        return file

    def drop(self) -> None:
        """The plan is abandoned (stopping, or the front is done): nothing of it is to go."""
        with self.stats.lock:
            self.stats.files_settled += len(self)
        self.clear()


_Key = tuple[ArchiveFile, int, int]  # a file and the trade ids it is reduced for


@dataclass
class _Early:
    """The first files of the symbol due next, asked for as the current one starts and
    reduced while it goes on (the pool takes files in order: these come after the current
    symbol's first few), so the pool does not wait between symbols: at a symbol's turn its
    first files are ready, while the importer did the one before's last merges, its REST
    tail, and this one's plan. Only a reduction asked for exactly as the symbol's own turn
    asks (the same file, the same ids) is used; each is still decided against the front of
    its time, like any other."""

    symbol: str
    front: Front  # the front the plan was made on: any change and nothing here is used
    start_ms: int  # where the plan starts (the earliest archive, for a fresh symbol)
    futures: dict[_Key, cf.Future[Reduced | Refused]]


# -- the thread -----------------------------------------------------------------------------------


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
    recut: collections.Counter[str] = field(default_factory=collections.Counter)
    quirks: collections.Counter[str] = field(default_factory=collections.Counter)  # by kind
    files_planned: int = 0  # files put in a symbol's plan (again when put back)
    files_settled: int = 0  # files taken out of a plan (applied, skipped, refused, left)
    files_early: int = 0  # files reduced while the symbol before them finished, then used
    recent: collections.deque[tuple[float, int]] = field(
        default_factory=lambda: collections.deque(maxlen=4096)
    )  # (time, trades) samples of the last minute or so: the recent rate
    complete: int = 0  # symbols whose history is complete
    failed: int = 0  # imports that failed and were put back in the queue
    started_at: float | None = None

    def rate(self, now: float) -> float:
        """Trades imported per second over the last minute (0 before two samples). O(1)
        amortised."""
        with self.lock:
            recent = self.recent
            recent.append((now, self.trades))
            while len(recent) > 2 and now - recent[1][0] > RATE_WINDOW:
                recent.popleft()
            t0, n0 = recent[0]
            return (self.trades - n0) / (now - t0) if now > t0 else 0.0

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
        errors: ThreadErrors | None = None,
    ) -> None:
        self.config = config
        self.rest = rest
        self.table = table
        self.clock = clock
        self.errors = errors or ThreadErrors(log)
        self.stats = HistoryStats()
        self.ceiling = config.rest_weight_limit * config.history_weight_share
        self.stopping = threading.Event()  # set by stop(): run() returns between steps
        self._lock = threading.Condition()  # guards the queue and the states; wakes run()
        self._last_progress = 0.0  # when the last progress line was logged (importer thread)
        self._queue: list[tuple[float, int, str]] = []  # heap: (due time, seq, symbol)
        self._seq = itertools.count()
        self._state: dict[str, str] = {}  # symbol -> pending, importing, complete or failed
        self._failures: dict[str, int] = {}  # symbol -> failed attempts in a row (run() only)
        self._pool: cf.ProcessPoolExecutor | None = None
        self._engine = config.reader()  # the archive reader the pool processes use
        self._workers = config.pool_size()  # pool processes
        self._early: _Early | None = None  # importer thread only, like the next one
        self._tried: set[str] = set()  # symbols a head start was tried for, until their turn
        self._rlog = RateLimitedLog(log)

    # -- from any thread ------------------------------------------------------------------------

    def request(self, symbols: Iterable[str]) -> None:
        """Import the history of ``symbols`` (those not done or queued already). O(n log n)."""
        now = self.clock()
        with self._lock:
            for symbol in symbols:
                if symbol not in self._state:
                    self._state[symbol] = "pending"
                    heapq.heappush(self._queue, (now, next(self._seq), symbol))
            self._lock.notify()

    def status(self, symbol: str, complete: bool) -> str:
        """``none``, ``pending``, ``importing``, ``complete`` or ``failed``. O(1), without the
        lock: the API asks for every request, and one dict read is atomic."""
        if complete:
            return "complete"
        return self._state.get(symbol, "none")  # complete here: nothing traded before us

    def progress(self) -> dict[str, Any]:
        """Where the import stands, for ``/-/status``, ``/metrics`` and the progress line:
        files applied and still to go in the current plans, bytes and rows read, trades
        imported and still to import (every requested symbol's front), the rate over the
        last minute and the ETA at that rate (None while unknown), and the files reduced
        ahead of their symbol's turn (``files_early``); the archive reader and the pool's
        size. O(symbols requested)."""
        now = self.clock()
        rate = self.stats.rate(now)
        with self._lock:
            requested = list(self._state)
        table = self.table()
        left = 0
        for symbol in requested:
            stats = table.get(symbol)
            front = stats.front() if stats is not None else None
            if front is not None:
                left += front.hi - front.lo + 1
        s = self.stats
        with s.lock:
            out: dict[str, Any] = {
                "files_applied": s.files, "files_to_go": s.files_planned - s.files_settled,
                "bytes": s.zip_bytes, "rows": s.rows, "trades": s.trades,
                "trades_to_import": left, "trades_per_second": round(rate, 1),
                "files_early": s.files_early, "reader": self._engine,
                "pool_processes": self._workers,
            }  # fmt: skip
        out["eta_s"] = 0.0 if not left else (round(left / rate, 1) if rate > 0 else None)
        return out

    def _tick(self) -> None:
        """After each file and page: a progress line at INFO every PROGRESS_EVERY seconds."""
        now = self.clock()
        if now - self._last_progress < PROGRESS_EVERY:
            return
        self._last_progress = now
        p = self.progress()
        counts = self.counts()
        eta = "unknown" if p["eta_s"] is None else f"{p['eta_s'] / 60:.1f} min"
        log.info(
            "history: %d of %d symbols complete, %d files applied, %d to go in the current "
            "plans, %.2f GB read, %.2f M trades/s, %d trades to import, ETA %s",
            counts.get("complete", 0), sum(counts.values()), p["files_applied"],
            p["files_to_go"], p["bytes"] / 1e9, p["trades_per_second"] / 1e6,
            p["trades_to_import"], eta,
        )  # fmt: skip

    def queued(self, symbol: str) -> bool:
        """Whether ``symbol``'s import is queued or under way (not complete). O(1)."""
        with self._lock:
            return self._state.get(symbol) in ("pending", "importing", "failed")

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
        """Import until :meth:`stop`: :meth:`run_once` again and again."""
        try:
            while not self.stopping.is_set():
                self.run_once()
        finally:
            self.close_pool()

    def run_once(self, block: bool = True) -> str | None:
        """Import the symbol that is due (with ``block``, waiting up to a second for one) as
        far as it goes, and queue it again if it is not done. Returns the symbol, or None."""
        with self._lock:
            now = self.clock()
            if not self._queue or self._queue[0][0] > now:
                if block:
                    wait = self._queue[0][0] - now if self._queue else 1.0
                    self._lock.wait(min(1.0, max(0.0, wait)))
                return None
            _, _, symbol = heapq.heappop(self._queue)
            self._state[symbol] = "importing"
        if self.stats.started_at is None:
            self.stats.started_at = self.clock()
        outcome = self._attempt(symbol)
        self._settle(symbol, outcome)
        self._tick()
        return symbol

    def _attempt(self, symbol: str) -> SymbolOutcome:
        """One symbol's import, every failure turned into a :class:`Later`."""
        try:
            outcome = self._import(symbol)
        except RateLimited as exc:
            self._rlog.warning("429", "history: Binance says %s; pausing", exc)
            return Later(exc.retry_after, False)
        except (RestError, InputError) as exc:
            delay = self._failed(symbol)
            self._rlog.warning("rest", "history of %s: %s; retrying in %.0f s", symbol, exc,
                               delay)  # fmt: skip
            return Later(delay, True)
        except BrokenProcessPool as exc:  # a pool process died (out of memory, killed)
            self.close_pool()
            self.errors.record("history", exc, f"importing {symbol} (the pool is replaced)")
            return Later(self._failed(symbol), True)
        except Exception as exc:
            self.errors.record("history", exc, f"importing {symbol}")
            return Later(self._failed(symbol), True)
        if not isinstance(outcome, Later):
            self._failures.pop(symbol, None)
        return outcome

    def _failed(self, symbol: str) -> float:
        self.stats.add(failed=1)
        n = self._failures[symbol] = self._failures.get(symbol, 0) + 1
        return retry_delay(n)

    def _settle(self, symbol: str, outcome: SymbolOutcome) -> None:
        with self._lock:
            if isinstance(outcome, Later):  # again later: "failed" until then if it failed
                self._state[symbol] = "failed" if outcome.failed else "pending"
                due = self.clock() + outcome.delay
                heapq.heappush(self._queue, (due, next(self._seq), symbol))
            elif isinstance(outcome, Done):
                self._state[symbol] = "complete"
            else:  # delisted meanwhile: nothing to import for it
                self._state.pop(symbol, None)
        if isinstance(outcome, Done):
            self.stats.add(complete=1)

    def close_pool(self) -> None:
        """Stop the pool at once: a file half downloaded is fetched again after a restart."""
        self._drop_early()
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
                max_workers=self._workers,
                mp_context=multiprocessing.get_context("spawn"),  # no fork of a threaded process
                initializer=pool_process_init,
                initargs=(os.getpid(), self._engine),
            )
        return self._pool

    def _today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC).date()

    def _import(self, symbol: str) -> SymbolOutcome:
        """Import one symbol's history as far as it goes."""
        self._tried.discard(symbol)  # its turn: a head start may be tried again next time
        try:
            return self._import_turn(symbol)
        finally:
            if self._early is not None and self._early.symbol == symbol:
                self._drop_early()  # its turn ended before its files were asked for

    def _import_turn(self, symbol: str) -> SymbolOutcome:
        stats = self.table().get(symbol)
        if stats is None:
            return Gone()
        if stats.damaged:
            raise RuntimeError(f"{symbol}: an earlier merge broke off; a restart restores it")
        outcome = self._ready(symbol, stats)
        if outcome is not None:
            return outcome
        front = stats.front()
        if front is None:
            return Done()
        log.debug("history of %s: trades %d..%d to import", symbol, front.lo, front.hi)
        ok, row = self._archives(symbol, stats)
        if not ok:
            return Later(0.0, False)  # stopping
        front = stats.front()
        if front is not None:
            self._prefetch(symbol)  # the next symbol's files while REST serves this one's
            if not self._rest_until(symbol, stats, row, front.hi):
                return Later(0.0, False)
        if stats.front() is not None:
            return Later(retry_delay(1), False)
        log.debug("history of %s: complete from its first trade", symbol)
        return Done()

    def _ready(self, symbol: str, stats: SymbolStats) -> SymbolOutcome | None:
        """Give ``symbol`` what its import starts from (a live baseline and its first trade,
        from REST when it has none): None when it has them, else what to do instead."""
        started, origin, complete = stats.history_info()
        if complete:
            return Done()
        if not started:  # no baseline (quiet, or the tickers failed): start it from REST
            if not self._acquire():
                return Later(0.0, False)
            latest = self.rest.agg_trades(symbol, limit=1)
            if not latest:
                return Done()  # no trade ever: nothing to import
            stats.adopt(latest[-1].last_id, latest[-1].time_ms)
        if origin is None:
            if not self._acquire():
                return Later(0.0, False)
            first = self.rest.agg_trades(symbol, from_id=0, limit=1)
            if not first:
                return Done()
            stats.start_history(first[0].first_id, first[0].time_ms)
        return None

    def _prefetch(self, current: str) -> None:
        """Give the symbol due after ``current`` a head start (see :class:`_Early`): the
        first of the next few due that has files to reduce, each tried once a turn. One
        head start at a time. Whatever goes wrong here only means no head start: that
        symbol's own turn meets it again and handles it."""
        if self._early is not None or self.stopping.is_set():
            return
        with self._lock:
            heads = heapq.nsmallest(4, self._queue)
        now = self.clock()
        for due, _, symbol in heads:
            if due > now:
                return
            if symbol == current or symbol in self._tried:
                continue
            self._tried.add(symbol)
            if self._head_start(symbol):
                return

    def _head_start(self, symbol: str) -> bool:
        """Submit the first files of ``symbol``'s plan, as its turn would; False when it has
        none to reduce (complete, no trade, gone, REST refused)."""
        stats = self.table().get(symbol)
        if stats is None or stats.damaged:
            return False
        try:
            if self._ready(symbol, stats) is not None:
                return False
        except (RateLimited, RestError, InputError) as exc:
            log.debug("history of %s: no head start (%s)", symbol, exc)
            return False
        front = stats.front()
        if front is None:
            return False
        start = self._plan_start(symbol, stats, front)
        cut = 0 if self._fresh(stats) else front.lo
        files = plan(symbol, start, int(self.clock() * 1000), self._today())
        pool, base, engine = self._pool_for(), self.config.archive_url, self._engine
        futures = {
            (f, cut, front.hi): pool.submit(
                fetch_and_reduce, base, f, cut, front.hi, engine=engine, days=candles_kept()
            )
            for f in files[: self._ahead()]
        }
        if not futures:
            return False
        self._early = _Early(symbol, front, start, futures)
        return True

    def _drop_early(self) -> None:
        early, self._early = self._early, None
        if early is not None:
            self._drop(early)

    @staticmethod
    def _drop(early: _Early) -> None:
        """Cancel what was not used (a reduction under way runs out, unread)."""
        for fut in early.futures.values():
            fut.cancel()

    def _plan_start(self, symbol: str, stats: SymbolStats, front: Front) -> int:
        """Where a symbol's plan of files starts: the front's bottom, or for a symbol whose
        origin came from REST, its earliest archive (older archives may exist)."""
        start = front.after_ms if front.after_ms is not None else 0
        return self._earliest_archive(symbol, start) if self._fresh(stats) else start

    def _ahead(self) -> int:
        """Files kept in the pool's hands at once."""
        return max(2, 2 * self._workers)

    def _acquire(self) -> bool:
        return self.rest.acquire("aggTrades", self.ceiling, self.stopping)

    # -- archives ---------------------------------------------------------------------------------

    def _archives(self, symbol: str, stats: SymbolStats) -> tuple[bool, AggTrade | None]:
        """Apply every archive file of the front, in order: (False when stopping, the last
        aggregate applied, for REST to continue from)."""
        front = stats.front()
        assert front is not None
        early = self._early
        if early is not None and early.symbol == symbol:
            self._early = None  # taken: used here, the rest cancelled at the end
            if early.front != front:
                self._drop(early)  # made on another front: nothing of it fits
                early = None
        else:
            early = None  # none, or the next symbol's: left for it
        start = early.start_ms if early is not None else self._plan_start(symbol, stats, front)
        files = _Plan(plan(symbol, start, int(self.clock() * 1000), self._today()), self.stats)
        futures: dict[ArchiveFile, cf.Future[Reduced | Refused]] = {}
        attempts: collections.Counter[ArchiveFile] = collections.Counter()
        row: AggTrade | None = None
        base = self.config.archive_url
        ahead = self._ahead()

        def submit(file: ArchiveFile, lo: int, hi: int) -> None:
            ready = early.futures.pop((file, lo, hi), None) if early is not None else None
            if ready is not None and not ready.cancelled():
                futures[file] = ready
                self.stats.add(files_early=1)
                return
            futures[file] = self._pool_for().submit(fetch_and_reduce, base, file, lo, hi,
                                                    engine=self._engine,
                                                    days=candles_kept())  # fmt: skip

        def keep(file: ArchiveFile, result: Reduced) -> None:  # decide again, no new download
            done: cf.Future[Reduced | Refused] = cf.Future()
            done.set_result(result)
            futures[file] = done
            files.appendleft(file)

        try:
            while files:
                if self.stopping.is_set():
                    return False, row
                front = stats.front()
                if front is None:
                    break
                # nothing imported yet: count each file from its first trade, so one that
                # starts below the origin REST gave can lower it (see lower_origin)
                cut = 0 if self._fresh(stats) else front.lo
                for f in list(files)[:ahead]:  # keep the pool busy a few files ahead
                    if f not in futures:
                        submit(f, cut, front.hi)
                self._prefetch(symbol)  # and the next symbol's first files, once
                file = files[0]
                try:
                    result = futures[file].result(timeout=1.0)
                except cf.TimeoutError:
                    continue
                del futures[file]
                files.popleft()
                if isinstance(result, Refused):
                    attempts[file] += 1
                    self._refused(symbol, result, files, attempts[file])
                    continue
                if result.first_id < front.lo and self._fresh(stats):
                    grew = stats.lower_origin(result.first_id, result.file.start_ms)
                    if grew:
                        self._quirk(symbol, file, "origin_from_archive", grew,
                                    "trades before the first one REST serves")  # fmt: skip
                self._count_cut(result)
                front = stats.front()
                decision = decide_file(front, result.first_id, result.last_id)
                if isinstance(decision, Skip):
                    continue
                if isinstance(decision, FillFirst):
                    assert front is not None  # a decision to fill needs a front
                    self._quirk(symbol, file, "hole", decision.stop - front.lo + 1,
                                "trades no file holds before it, filled over REST")  # fmt: skip
                    if not self._rest_until(symbol, stats, row, decision.stop):
                        return False, row
                    keep(file, result)
                    continue
                if isinstance(decision, Recut):
                    log.debug("history of %s: %s reduced again for %d..%d (%s)", symbol,
                              file.name, decision.lo, decision.hi, decision.reason)  # fmt: skip
                    files.appendleft(file)
                    submit(file, decision.lo, decision.hi)
                    continue
                reused = (row is not None and result.first_agg is not None
                          and result.first_agg <= row.agg_id)  # fmt: skip
                if not self._apply(symbol, stats, result, files):
                    keep(file, result)  # the front moved meanwhile: decide again
                    continue
                row = AggTrade(*result.last_row) if file.kind == "aggTrades" else None
                if reused:  # its aggregate ids are not REST's: continue by trade id
                    what = "its aggregate ids repeat the file before's; trades tile"
                    self._quirk(symbol, file, "agg_id_reused", 1, what)
                    row = None
        finally:
            for fut in futures.values():
                fut.cancel()
            if early is not None:
                self._drop(early)
            files.drop()
        return True, row

    @staticmethod
    def _fresh(stats: SymbolStats) -> bool:
        """Nothing of the symbol's front is imported yet: its bottom is still the origin."""
        front = stats.front()
        return front is not None and stats.history_info()[1] == front.lo

    def _earliest_archive(self, symbol: str, start_ms: int) -> int:
        """The start of the earliest month before ``start_ms``'s with an archive, asking month
        by month back until one is not published (Binance's archives begin with a symbol's
        listing; REST may not reach back that far); ``start_ms`` when there is none."""
        day = dt.datetime.fromtimestamp(start_ms / 1000, dt.UTC).date().replace(day=1)
        earliest = start_ms
        for _ in range(240):  # 20 years back at most
            day = (day - dt.timedelta(days=1)).replace(day=1)
            found = archive_exists(self.config.archive_url, monthly_file(symbol, day.year,
                                                                         day.month))  # fmt: skip
            if not found or self.stopping.is_set():
                break
            earliest = monthly_file(symbol, day.year, day.month).start_ms
        return earliest

    def _count_cut(self, r: Reduced) -> None:
        """Count a file that was reduced to part of itself, and why."""
        reasons = []
        if r.first_id > r.file_first_id:
            reasons.append("below_front")
        if r.last_id < r.file_last_id:
            reasons.append("past_top")
        if reasons:
            with self.stats.lock:
                self.stats.recut.update(reasons)

    def _refused(
        self,
        symbol: str,
        result: Refused,
        files: _Plan,
        attempts: int,
    ) -> None:
        file = result.file
        decision = decide_refused(file, result.reason, attempts, self._today())
        if result.reason == "checksum" and isinstance(decision, Retry):
            self._quirk(symbol, file, "checksum_retried", 1, "fetched again with its CHECKSUM")
        if isinstance(decision, Retry):
            self.stopping.wait(decision.delay)
            files.appendleft(file)
            return
        if result.reason == "members":  # a known defect of Binance's, not a failure
            self._quirk(symbol, file, "members", 1, f"{result.detail}; its days used instead")
        elif result.reason == "missing" and isinstance(decision, Replace):
            self._quirk(symbol, file, "month_not_published", 1, "not out (yet): its days used")
        elif result.reason not in ("missing", "empty"):
            with self.stats.lock:
                self.stats.refused[result.reason] += 1
            log.warning("history of %s: %s refused (%s: %s)", symbol, file.name, result.reason,
                        result.detail[:200])  # fmt: skip
        if isinstance(decision, Replace):
            files.extendleft(reversed(decision.files))

    def _quirk(self, symbol: str, file: ArchiveFile, kind: str, n: int, what: str) -> None:
        """Count and log (one line) a quirk of Binance's archives met and handled."""
        with self.stats.lock:
            self.stats.quirks[kind] += n
        log.info("history of %s: %s: %s (%d): %s", symbol, file.name, kind, n, what)

    def _apply(self, symbol: str, stats: SymbolStats, r: Reduced, files: _Plan) -> bool:
        """Merge a file; False when it could not claim the front (it moved meanwhile)."""
        try:
            applied = stats.apply_levels(
                r.first_id, r.last_id, r.levels, r.counts, r.last_row[4],
                last_price=r.last_row[3], days=r.days,
            )  # fmt: skip
        except ValueError as exc:  # pairs that do not add up: refuse the file
            self._refused(symbol, Refused(r.file, "format", str(exc)), files, 1)
            return True
        if not applied:
            if stats.damaged:
                raise RuntimeError(f"{symbol}: a merge broke off; a restart restores it")
            return False
        s = self.stats
        with s.lock:
            s.files += 1
            s.zip_bytes += r.zip_bytes
            s.csv_bytes += r.csv_bytes
            s.rows += r.rows
            s.trades += applied
        self._tick()
        log.debug("history of %s: %s applied, %d trades at %d prices %d..%d", symbol, r.file.name,
                  applied, len(r.levels), r.first_id, r.last_id)  # fmt: skip
        for kind, n in r.quirks.items():
            what = "skipped" if kind == "header" else "skipped: they cover no trade"
            self._quirk(symbol, r.file, kind, n, what)
        return True

    # -- REST -------------------------------------------------------------------------------------

    def _rest_until(self, symbol: str, stats: SymbolStats, row: AggTrade | None, stop: int) -> bool:
        """Fill the front over REST up to trade id ``stop``, page by page, each checked as the
        backfill checks its own (:func:`~medianserv.paging.fetch_page`; a page continuing
        from ``row`` must start with it). False when stopping; RestError after
        :data:`REFUSED_PAGES` refused pages in a row."""
        hint: Hint | None = None
        refused = 0
        while True:
            front = stats.front()
            if front is None or front.lo > stop:
                return True
            gap = front.up_to(stop)
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
                refused += 1
                if refused >= REFUSED_PAGES:
                    raise RestError(f"{symbol}: {refused} pages of history refused in a row")
                continue  # historicalTrades next (the page's hint)
            if not page.rows and request.endpoint == "aggTrades":
                continue  # an empty window, or one after the stretch: historicalTrades next
            if not page.rows or page.rows[0].first_id > front.lo:
                raise RestError(f"{request.endpoint} of {symbol} has no trade {front.lo}")
            refused = 0
            if isinstance(hint, Cursor):
                row = hint.row
            rows = [r._replace(last_id=min(r.last_id, stop)) for r in page.rows
                    if r.first_id <= stop]  # fmt: skip
            self.stats.add(trades=stats.apply_rows(rows))
            self._tick()
