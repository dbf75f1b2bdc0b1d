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

import logging
import os
import socket
import sys
import threading
import time
from typing import Any

from .api import HttpServer, create_app
from .config import Config
from .exchange import RestClient
from .ingest import Ingest
from .samples import SampleBook
from .snapshotter import Snapshotter
from .store import Store, StoreError
from .symbols import SymbolStats, SymbolTable

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
        self._next_sample = 0.0

    # -- the ServiceState the API reads --------------------------------------------------------

    def table(self) -> SymbolTable:
        return self.ingest.table if self.ingest is not None else SymbolTable.build([])

    def ready(self) -> tuple[bool, str]:
        if not self.restored or self.ingest is None:
            return False, "restoring the snapshot store"
        return self.ingest.ready()

    def metrics(self) -> str:
        return render_metrics(self)

    def samples(self, symbol: str) -> list[tuple[int, int, int | None, int | None]]:
        return self.book.samples(symbol)

    def history_status(self, symbol: str, complete: bool) -> str:
        if self.ingest is None:
            return "complete" if complete else "none"
        return self.ingest.importer.status(symbol, complete)

    def rates(self) -> dict[str, float]:
        return self.book.rates(int(time.time() * 1000))

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
        }

    def _history_status(self) -> dict[str, Any]:
        """The history import at a glance: symbols requested by state, trades imported."""
        if self.ingest is None:
            return {"symbols": 0, "complete": 0, "pending": 0, "importing": 0, "failed": 0,
                    "trades": 0}  # fmt: skip
        by_state = self.ingest.importer.counts()
        h = self.ingest.importer.stats
        return {
            "symbols": sum(by_state.values()),
            "complete": by_state.get("complete", 0),
            "pending": by_state.get("pending", 0),
            "importing": by_state.get("importing", 0),
            "failed": by_state.get("failed", 0),
            "trades": h.trades,
        }

    def sample(self) -> None:
        """Record every traded symbol's numbers in the dashboard's samples. O(symbols)."""
        views = [(v.symbol, v.count, v.twice_median, v.last_price, v.live_count)
                 for v in (s.view() for _, s in self.table().items())]  # fmt: skip
        self.book.sample(views, int(time.time() * 1000))

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> int:
        cfg = self.config
        sys.setswitchinterval(cfg.switch_interval)
        try:
            store = Store.open(cfg.data_dir, reset=cfg.reset)
        except StoreError as exc:
            log.error("%s", exc)
            return 2
        try:
            return self._run(store, stop)
        finally:
            store.close()

    def _run(self, store: Store, stop: threading.Event) -> int:
        cfg = self.config
        t0 = time.perf_counter()
        try:
            states = store.load(
                progress=lambda s, n: log.info("restoring: %d symbols, %d levels so far", s, n)
            )
            known = [SymbolStats.restore(s) for s in states]
            listing = store.load_listing()
        except (StoreError, ValueError) as exc:
            log.error("the snapshot store is corrupt: %s (start with --reset to discard it)", exc)
            return 2
        trades = sum(s.count for s in states)
        levels = sum(len(s.levels) for s in states)
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

        self.http = HttpServer(create_app(self), cfg.host, cfg.port, cfg.http_threads)
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


def render_metrics(service: Service) -> str:
    """Prometheus text format (0.0.4) of the service's counters. O(connections + kinds)."""
    ingest, snap = service.ingest, service.snapshotter
    c: dict[str, Any] = ingest.counters() if ingest is not None else {}
    back = c.get("backfill", {})
    incomplete, missing = ingest.completeness() if ingest is not None else (0, 0)
    recovered = back.get("last_filled_at")
    # (name, type, help, value): one unlabelled sample each
    single: list[tuple[str, str, str, Any]] = [
        ("up", "gauge", "1 while the process runs.", 1),
        ("ready", "gauge", "1 once restored and subscribed.", int(service.ready()[0])),
        (
            "uptime_seconds",
            "gauge",
            "Seconds since start.",
            round(time.time() - service.started_at, 3),
        ),
        ("symbols", "gauge", "Symbols listed and served.", len(service.table())),
        (
            "trades_applied_total",
            "counter",
            "Trades applied from the streams.",
            c.get("applied", 0),
        ),
        (
            "trades_duplicate_total",
            "counter",
            "Trades received again and ignored.",
            c.get("duplicates", 0),
        ),
        ("gaps_total", "counter", "Jumps in trade ids seen on the streams.", c.get("gaps", 0)),
        (
            "trades_backfilled_total",
            "counter",
            "Missed trades fetched over REST and applied.",
            back.get("filled", 0),
        ),
        (
            "trades_lost_total",
            "counter",
            "Missed trades given up (over the cap or gone).",
            back.get("lost", 0),
        ),
        (
            "backfill_requests_total",
            "counter",
            "REST requests made by the backfill (aggTrades and historicalTrades).",
            back.get("requests", 0),
        ),
        (
            "symbols_incomplete",
            "gauge",
            "Listed symbols with trades known missing (being backfilled).",
            incomplete,
        ),
        ("trades_missing", "gauge", "Trades known missing, being backfilled.", missing),
        (
            "backfill_sweep_pending_symbols",
            "gauge",
            "Symbols reconnected whose missed trades are not yet known (ticker check due).",
            back.get("sweep_pending", 0),
        ),
        (
            "backfill_last_recovered_age_seconds",
            "gauge",
            "Seconds since a missed trade was last recovered over REST (-1: never).",
            -1 if recovered is None else round(time.time() - recovered, 3),
        ),
        (
            "rest_weight_used",
            "gauge",
            "The IP's REST weight in the current window, as Binance last reported it plus "
            "requests in flight.",
            c.get("rest_weight_now", 0),
        ),
        (
            "rest_rate_limited_total",
            "counter",
            "429/418 answers to the backfill.",
            back.get("rate_limited", 0),
        ),
        (
            "backfill_pending_symbols",
            "gauge",
            "Symbols with gaps waiting for the backfill.",
            back.get("pending", 0),
        ),
        (
            "backfill_unqueued_total",
            "counter",
            "Symbols with gaps that no path had queued, found and queued by the backfill's "
            "audit (should stay 0).",
            back.get("unqueued", 0),
        ),
        (
            "backfill_next_attempt_seconds",
            "gauge",
            "Seconds until the backfill's next request (-1: nothing to do; over 0 while it "
            "waits for REST weight or a retry).",
            -1 if back.get("next_in") is None else round(back["next_in"], 3),
        ),
        (
            "listing_failures_total",
            "counter",
            "exchangeInfo reads that failed.",
            c.get("listing_failures", 0),
        ),
        (
            "connection_attempt_waits_total",
            "counter",
            "Reconnects delayed by the attempt limit.",
            c.get("connection_attempt_waits", 0),
        ),
        (
            "reconnects_total",
            "counter",
            "Connections that failed and were reopened.",
            c.get("reconnects", 0),
        ),
        (
            "rotations_total",
            "counter",
            "Make-before-break connection rotations.",
            c.get("rotations", 0),
        ),
        ("connections_open", "gauge", "WebSocket connections up.", c.get("connections_open", 0)),
        (
            "thread_restarts_total",
            "counter",
            "Threads restarted by the supervisor.",
            service.restarts,
        ),
    ]
    if snap is not None:
        s = snap.stats
        age = time.time() - s.last_ok_at if s.last_ok_at else -1
        single += [
            ("snapshots_total", "counter", "Snapshots written.", s.snapshots),
            (
                "snapshot_failures_total",
                "counter",
                "Snapshots that failed (kept in memory).",
                s.failures,
            ),
            (
                "snapshot_duration_seconds",
                "gauge",
                "Duration of the last snapshot.",
                round(s.last_duration_s, 6),
            ),
            (
                "snapshot_age_seconds",
                "gauge",
                "Seconds since the last good snapshot (-1: none).",
                round(age, 3),
            ),
            (
                "snapshot_max_lock_hold_seconds",
                "gauge",
                "Longest a symbol waited on the last snapshot.",
                round(s.max_hold_ms / 1000, 6),
            ),
        ]
    rejected = sorted(c.get("rejected", {}).items())
    rest = sorted(c.get("rest", {}).items())
    if ingest is not None:
        h = ingest.importer.stats
        elapsed = time.time() - h.started_at if h.started_at else 0.0
        single += [
            ("history_trades_total", "counter", "Trades imported from the history.", h.trades),
            ("history_rows_total", "counter", "Archive rows read and applied.", h.rows),
            ("history_files_total", "counter", "Archive files applied.", h.files),
            ("history_bytes_total", "counter", "Archive bytes downloaded (zip).", h.zip_bytes),
            ("history_rest_pages_total", "counter", "REST pages of history.", h.rest_pages),
            (
                "history_trades_per_second",
                "gauge",
                "Trades imported per second since the import began.",
                round(h.trades / elapsed, 1) if elapsed > 0 else 0,
            ),
        ]
        history_states = sorted(ingest.importer.counts().items())
        history_refused = sorted(h.refused.items())
        history_recut = sorted(h.recut.items())
    else:
        history_states, history_refused, history_recut = [], [], []
    labelled: list[tuple[str, str, str, list[tuple[str, Any]]]] = [
        (
            "frames_rejected_total",
            "counter",
            "Frames rejected, by kind.",
            [(f'{{kind="{k}"}}', v) for k, v in rejected] or [('{kind="none"}', 0)],
        ),
        (
            "rest_requests_total",
            "counter",
            "REST requests to Binance, by endpoint.",
            [(f'{{endpoint="{e}"}}', n) for e, (n, _) in rest],
        ),
        (
            "rest_weight_total",
            "counter",
            "REST weight spent, by endpoint.",
            [(f'{{endpoint="{e}"}}', w) for e, (_, w) in rest],
        ),
        (
            "backfill_pages_rejected_total",
            "counter",
            "REST pages refused by the backfill's checks (nothing of them applied), by kind.",
            [(f'{{kind="{k}"}}', v) for k, v in sorted(back.get("rejected", {}).items())]
            or [('{kind="none"}', 0)],
        ),
        (
            "history_symbols",
            "gauge",
            "Symbols whose history was asked for, by state.",
            [(f'{{state="{k}"}}', v) for k, v in history_states] or [('{state="none"}', 0)],
        ),
        (
            "history_failures_total",
            "counter",
            "Archive files (or REST pages) of history refused, by reason.",
            [(f'{{reason="{k}"}}', v) for k, v in history_refused] or [('{reason="none"}', 0)],
        ),
        (
            "history_files_recut_total",
            "counter",
            "Archive files reduced to part of themselves: below_front (imported in part "
            "already) or past_top (the live range began inside them), by reason.",
            [(f'{{reason="{k}"}}', v) for k, v in history_recut] or [('{reason="none"}', 0)],
        ),
        (
            "thread_errors_total",
            "counter",
            "Unexpected exceptions caught in worker threads (logged with their traceback; the "
            "work is retried with backoff), by thread.",
            [(f'{{thread="{k}"}}', v) for k, v in sorted(c.get("thread_errors", {}).items())]
            or [('{thread="none"}', 0)],
        ),
        (
            "connection_streams",
            "gauge",
            "Streams confirmed per connection.",
            [(f'{{connection="{k}"}}', v) for k, v in sorted(c.get("streams", {}).items())],
        ),
        (
            "connection_lag_seconds",
            "gauge",
            "Now minus Binance's event time of the last trade.",
            [(f'{{connection="{k}"}}', v / 1000) for k, v in sorted(c.get("lag_ms", {}).items())],
        ),
    ]
    lines: list[str] = []
    for name, kind, help_text, samples in [
        (n, k, h, [("", v)]) for n, k, h, v in single
    ] + labelled:
        lines.append(f"# HELP medianserv_{name} {help_text}")
        lines.append(f"# TYPE medianserv_{name} {kind}")
        lines.extend(f"medianserv_{name}{labels} {value}" for labels, value in samples)
    return "\n".join(lines) + "\n"
