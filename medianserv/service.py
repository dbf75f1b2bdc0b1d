"""The service: wires store, ingest, snapshotter and API; start and stop order; supervision.

Start: open the store (refuse an unknown format), restore every symbol, serve the listing of
the last run at once, start the HTTP API, read exchangeInfo and the tickers, subscribe, and
snapshot every ``snapshot_interval``. Ready (``/-/ready``, systemd ``READY=1``) once every
connection has confirmed its streams.

Stop (SIGINT or SIGTERM set the stop event; nothing else runs in a signal handler): readers
first, so nothing changes any more; then the final snapshot; then the HTTP server; then LMDB.

While running, a supervisor loop restarts any thread a bug killed, and logs it.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import sys
import threading
import time
from typing import Any

from .api import HttpServer, create_wsgi
from .candles import CandleRow
from .config import Config
from .exchange import RestClient
from .ingest import Ingest
from .metrics import create_registry
from .metrics import render as render_metrics
from .samples import SampleBook
from .snapshotter import YIELD_EVERY, Snapshotter
from .store import Store, StoreError
from .symbols import SymbolStats, SymbolTable, expect_history, keep_candles, use_compiled

__all__ = ["Service", "sd_notify"]

log = logging.getLogger(__name__)


def sd_notify(message: str) -> bool:
    """Tell systemd about our state (``READY=1``, ``STOPPING=1``) when it asked us to
    (``Type=notify`` sets ``NOTIFY_SOCKET``). A datagram on a Unix socket; no dependency."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        log.warning("could not notify systemd: %s", exc)
        return False


def freeze_heap() -> None:
    """Collect once, then move every object that exists into the garbage collector's permanent
    generation (``gc.freeze``): the medians, the tables, the heaps of millions of levels live
    as long as the process, and a full collection that walked them all would hold the
    interpreter for tens of milliseconds (measured: 24-98 ms at 10,000 trades/s), stalling
    every reader and request meanwhile. Objects made later are collected as usual."""
    gc.collect()
    gc.freeze()


class Service:
    """One medianserv process. :meth:`run` blocks until ``stop`` is set; returns the exit code."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.started_at = time.time()
        self.restored = False
        self.ingest: Ingest | None = None
        self.snapshotter: Snapshotter | None = None
        self.http: HttpServer | None = None
        self.restored_symbols = 0
        self.restarts = 0  # threads the supervisor restarted
        self.book = SampleBook(config.sample_count)  # samples for the dashboard
        self.registry = create_registry(self)  # what /metrics exposes
        self._rates: dict[str, float] = {}  # replaced whole after each sample
        self.levels = 0  # distinct price levels held by the listed symbols, at the last sample
        self._next_sample = 0.0
        self.store: Store | None = None  # open while running: stored candles are read from it

    # -- the ServiceState the API reads --------------------------------------------------------

    def table(self) -> SymbolTable:
        return self.ingest.table if self.ingest is not None else SymbolTable.build([])

    def ready(self) -> tuple[bool, str]:
        if not self.restored or self.ingest is None:
            return False, "restoring the snapshot store"
        return self.ingest.ready()

    def metrics(self) -> bytes:
        return render_metrics(self.registry)

    def samples(self, symbol: str) -> list[tuple[int, int, int | None, int | None]]:
        return self.book.samples(symbol)

    def history_status(self, symbol: str, complete: bool) -> str:
        if self.ingest is None:
            return "complete" if complete else "none"
        return self.ingest.importer.status(symbol, complete)

    def stored_candles(
        self, symbol: str, k: int, start: int, end: int, limit: int, from_start: bool
    ) -> list[CandleRow]:
        store = self.store
        return [] if store is None else store.candles(symbol, k, start, end, limit, from_start)

    def rates(self) -> dict[str, float]:
        """Live trades per second of every symbol over the last minute, as of the last
        sample (computed once per sample, not per request)."""
        return self._rates

    def status(self) -> dict[str, Any]:
        """Health at a glance (the dashboard's header), with what is wrong spelled out."""
        ready, reason = self.ready()
        c: dict[str, Any] = self.ingest.counters() if self.ingest is not None else {}
        snap = self.snapshotter.stats if self.snapshotter is not None else None
        age = time.time() - snap.last_ok_at if snap and snap.last_ok_at else None
        problems = [] if ready else [reason]
        down = c.get("connections", 0) - c.get("connections_open", 0)
        if down > 0:
            problems.append(f"{down} connection(s) down")
        if age is not None and age > 3 * self.config.snapshot_interval + 5:
            problems.append(f"last snapshot {age:.0f} s ago")
        if snap is not None and snap.failures and snap.pending_symbols:
            problems.append("snapshots failing")
        wait = c.get("backfill", {}).get("next_in")
        if wait is not None and wait > 10:
            problems.append(f"backfill waits {wait:.0f} s (REST weight or retries)")
        errors = sum(c.get("thread_errors", {}).values())
        if errors:
            problems.append(f"{errors} unexpected thread error(s): see the log")
        lag = c.get("lag_ms", {})
        incomplete, missing = self.ingest.completeness() if self.ingest is not None else (0, 0)
        back = c.get("backfill", {})
        recovered = back.get("last_filled_at")
        return {
            "ready": ready,
            "problems": problems,
            "uptime_s": round(time.time() - self.started_at, 1),
            "symbols": len(self.table()),
            "connections": [
                {"id": k, "streams": c.get("streams", {}).get(k, 0), "lag_s": v / 1000}
                for k, v in sorted(lag.items())
            ],
            "connections_open": c.get("connections_open", 0),
            "lag_s": max(lag.values(), default=0) / 1000,
            "trades_applied": c.get("applied", 0),
            "reconnects": c.get("reconnects", 0),
            "gaps": c.get("gaps", 0),
            "backfilled": back.get("filled", 0),
            "lost": back.get("lost", 0),
            "incomplete_symbols": incomplete,
            "missing_trades": missing,
            "sweep_pending_symbols": back.get("sweep_pending", 0),
            "backfill_next_attempt_s": (
                None if back.get("next_in") is None else round(back["next_in"], 1)
            ),
            "last_recovered_s": None if recovered is None else round(time.time() - recovered, 1),
            "rest_weight": {e: w for e, (_, w) in c.get("rest", {}).items()},
            "rest_weight_now": c.get("rest_weight_now", 0),
            "rejected": sum(c.get("rejected", {}).values()),
            "snapshot_age_s": None if age is None else round(age, 1),
            "history": self._history_status(),
            "snapshot_interval_s": self.config.snapshot_interval,
            "trade_path": "C" if self.config.compiled_trades() else "python",
        }

    def _history_status(self) -> dict[str, Any]:
        """The history import at a glance: symbols requested by state, trades imported."""
        if self.ingest is None:
            return {"symbols": 0, "complete": 0, "pending": 0, "importing": 0, "failed": 0,
                    "trades": 0, "files_applied": 0, "files_to_go": 0, "bytes": 0, "rows": 0,
                    "trades_to_import": 0, "trades_per_second": 0.0, "eta_s": 0.0,
                    "quirks": {}}  # fmt: skip
        by_state = self.ingest.importer.counts()
        h = self.ingest.importer.stats
        return {
            "symbols": sum(by_state.values()),
            "complete": by_state.get("complete", 0),
            "pending": by_state.get("pending", 0),
            "importing": by_state.get("importing", 0),
            "failed": by_state.get("failed", 0),
            "trades": h.trades,
            "quirks": dict(h.quirks),
            **self.ingest.importer.progress(),
        }

    def sample(self) -> None:
        """Record every traded symbol's numbers in the dashboard's samples. O(symbols)."""
        views = []
        levels = 0
        for i, (_, stats) in enumerate(self.table().items()):
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                time.sleep(0)  # let request and reader threads in (see snapshotter)
            v = stats.view()
            views.append((v.symbol, v.count, v.twice_median, v.last_price, v.live_count))
            levels += v.levels
        self.levels = levels
        now = int(time.time() * 1000)
        self.book.sample(views, now)
        self._rates = self.book.rates(now)

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> int:
        cfg = self.config
        sys.setswitchinterval(cfg.switch_interval)
        use_compiled(cfg.compiled_trades())  # before anything is restored or built
        keep_candles(not cfg.no_candles, cfg.candle_keep_ms(), cfg.candles_kept_forever())
        expect_history(cfg.history_names())
        log.info("trade path: %s", "C (compiled at install)" if cfg.compiled_trades()
                 else "python (the pure twins)")  # fmt: skip
        t0 = time.perf_counter()
        try:
            store = Store.open(cfg.data_dir, reset=cfg.reset)
        except StoreError as exc:
            log.error("%s", exc)
            return 2
        if store.folded:
            log.info("store upgraded: %d price levels kept a key each moved into compact "
                     "batches in %.2f s", store.folded, time.perf_counter() - t0)  # fmt: skip
        self.store = store
        try:
            return self._run(store, stop)
        finally:
            self.store = None
            store.close()

    def _run(self, store: Store, stop: threading.Event) -> int:
        cfg = self.config
        t0 = time.perf_counter()
        try:
            states = store.load(
                progress=lambda s, n: log.info("restoring: %d symbols, %d levels so far", s, n)
            )
            trades = sum(s.count for s in states)
            levels = sum(len(s.levels) for s in states)
            known = []
            for state in states:
                known.append(SymbolStats.restore(state))
                state.levels = []  # the median holds them now: free the loaded copy
            listing = store.load_listing()
        except (StoreError, ValueError) as exc:
            log.error("the snapshot store is corrupt: %s (start with --reset to discard it)", exc)
            return 2
        del states
        off = [s.symbol for s in known if not s.consistent()]
        if off:
            log.warning(
                "%d restored symbol(s) count a different number of trades than their trade ids "
                "say (a fault of an earlier release), e.g. %s: their medians are served as "
                "stored; --reset rebuilds them", len(off), ", ".join(off[:5]),
            )  # fmt: skip
        log.info(
            "restored %d symbols, %d trades, %d price levels from %s in %.2f s",
            len(known), trades, levels, store.path, time.perf_counter() - t0,
        )  # fmt: skip
        self.restored_symbols = len(known)
        ingest = self.ingest = Ingest(
            cfg, RestClient(cfg.rest_url, weight_window=cfg.rest_weight_window), known
        )
        ingest.preload(listing)
        self.restored = True
        freeze_heap()

        app = create_wsgi(self, cache_max_age=cfg.cache_max_age)
        self.http = HttpServer(app, cfg.host, cfg.port, cfg.http_threads)
        self.http.start()
        log.info("API listening on http://%s:%d", cfg.host, self.http.port)

        snapshotter = self.snapshotter = Snapshotter(
            store, ingest.all_stats, cfg.snapshot_interval, lambda: ingest.table.symbols,
            errors=ingest.errors,
        )  # fmt: skip
        snapshotter.start()
        ingest.start()
        listed = threading.Thread(target=ingest.first_listing, name="first-listing", daemon=True)
        listed.start()
        notified = False
        try:
            while not stop.wait(0.5):
                if not notified and ingest.ready()[0]:
                    notified = True
                    freeze_heap()  # the table of the first listing too
                    sd_notify("READY=1")
                    log.info("ready: %s", ingest.ready()[1])
                self._supervise()
                if time.monotonic() >= self._next_sample:
                    self._next_sample = time.monotonic() + cfg.sample_interval
                    self.sample()
        finally:
            sd_notify("STOPPING=1")
            log.info("stopping: readers, final snapshot, HTTP server, store")
            ingest.stop()
            listed.join(1.0)
            snapshotter.stop()
            if snapshotter.snapshot():
                log.info(
                    "final snapshot: %d symbols, %d levels written",
                    snapshotter.stats.last_symbols, snapshotter.stats.last_levels,
                )  # fmt: skip
            else:
                log.error("final snapshot failed: changes since the previous one are lost")
            self.http.stop()
        log.info("stopped")
        return 0

    def _supervise(self) -> None:
        """Restart whatever a bug killed (the bug itself was logged by the thread)."""
        assert self.ingest is not None and self.snapshotter is not None and self.http is not None
        restarted = self.ingest.supervise()
        snap = self.snapshotter
        if snap.thread is not None and not snap.thread.is_alive() and not snap.stopping.is_set():
            snap.start()
            restarted.append("snapshotter")
        for name in restarted:
            self.restarts += 1
            log.error("thread %s died; restarted", name)
