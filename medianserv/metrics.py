"""/metrics: the service's own series through ``prometheus_client``, beside its standard ones.

:class:`ServiceCollector` is a custom collector: at each scrape it reads the service's
counters (the readers', the backfill's, the importer's, the snapshotter's, ...) and yields
them as metric families, under the same names and types as ever, so scrapes and alerts keep
working. :func:`create_registry` puts it in a registry of its own beside
``prometheus_client``'s process, platform and garbage-collector collectors
(``process_resident_memory_bytes``, ``process_cpu_seconds_total``, ``process_open_fds``,
``python_gc_*``, ``python_info``, ...). A scrape is O(connections + kinds + symbols): the
completeness gauges walk the listed symbols, one short lock each.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .snapshotter import SnapshotStats

if TYPE_CHECKING:
    from .service import Service

__all__ = ["CONTENT_TYPE", "ServiceCollector", "create_registry", "render"]

#: The text format's content type, as Prometheus expects it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServiceCollector(Collector):
    """The ``medianserv_*`` series, read from ``service`` at each scrape."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service = self.service
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
                "price_levels",
                "gauge",
                "Distinct price levels the listed symbols' medians hold (as of the last "
                "sample, every --sample-interval): what memory grows with.",
                service.levels,
            ),
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
            (
                "trades_waited_total",
                "counter",
                "Trades whose symbol's lock another thread held (a snapshot, an import) when the "
                "per-trade path came to them: each waited for it on the general path.",
                c.get("waited", 0),
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
            (
                "connections_open",
                "gauge",
                "WebSocket connections up.",
                c.get("connections_open", 0),
            ),
            (
                "thread_restarts_total",
                "counter",
                "Threads restarted by the supervisor.",
                service.restarts,
            ),
        ]
        s = snap.stats if snap is not None else SnapshotStats()  # from the first scrape on
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
        progress = (
            ingest.importer.progress() if ingest is not None
            else {"files_to_go": 0, "trades_to_import": 0, "trades_per_second": 0, "eta_s": 0}
        )  # fmt: skip
        single += [
            (
                "history_files_to_go",
                "gauge",
                "Archive files still to take in the symbols' current plans.",
                progress["files_to_go"],
            ),
            (
                "history_trades_to_import",
                "gauge",
                "Trades of the requested symbols' history not imported yet.",
                progress["trades_to_import"],
            ),
            (
                "history_recent_trades_per_second",
                "gauge",
                "Trades imported per second over the last minute.",
                progress["trades_per_second"],
            ),
            (
                "history_eta_seconds",
                "gauge",
                "Seconds until the import is done at the last minute's rate (-1: unknown).",
                -1 if progress["eta_s"] is None else progress["eta_s"],
            ),
        ]
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
            history_quirks = sorted(h.quirks.items())
            invalid = ingest.rest.invalid_agg_rows
            if invalid:
                history_quirks.append(("rest_invalid_rows", invalid))
        else:
            history_states, history_refused, history_recut, history_quirks = [], [], [], []
        labelled: list[tuple[str, str, str, str, list[tuple[Any, Any]]]] = [
            (
                "frames_rejected_total",
                "counter",
                "Frames rejected, by kind.",
                "kind",
                [(k, v) for k, v in rejected] or [("none", 0)],
            ),
            (
                "rest_requests_total",
                "counter",
                "REST requests to Binance, by endpoint.",
                "endpoint",
                [(e, n) for e, (n, _) in rest],
            ),
            (
                "rest_weight_total",
                "counter",
                "REST weight spent, by endpoint.",
                "endpoint",
                [(e, w) for e, (_, w) in rest],
            ),
            (
                "backfill_pages_rejected_total",
                "counter",
                "REST pages refused by the backfill's checks (nothing of them applied), by kind.",
                "kind",
                [(k, v) for k, v in sorted(back.get("rejected", {}).items())] or [("none", 0)],
            ),
            (
                "history_symbols",
                "gauge",
                "Symbols whose history was asked for, by state.",
                "state",
                [(k, v) for k, v in history_states] or [("none", 0)],
            ),
            (
                "history_failures_total",
                "counter",
                "Archive files (or REST pages) of history refused, by reason.",
                "reason",
                [(k, v) for k, v in history_refused] or [("none", 0)],
            ),
            (
                "history_files_recut_total",
                "counter",
                "Archive files reduced to part of themselves: below_front (imported in part "
                "already) or past_top (the live range began inside them), by reason.",
                "reason",
                [(k, v) for k, v in history_recut] or [("none", 0)],
            ),
            (
                "history_quirks_total",
                "counter",
                "Known quirks of Binance's archives and REST met and handled, by kind: header, "
                "invalid_rows (the 2022-04 audit's), rest_invalid_rows, members (a zip with two "
                "CSVs), hole (trades no file holds), agg_id_reused, checksum_retried, "
                "month_not_published (its days used).",
                "kind",
                [(k, v) for k, v in history_quirks] or [("none", 0)],
            ),
            (
                "thread_errors_total",
                "counter",
                "Unexpected exceptions caught in worker threads (logged with their traceback; the "
                "work is retried with backoff), by thread.",
                "thread",
                [(k, v) for k, v in sorted(c.get("thread_errors", {}).items())] or [("none", 0)],
            ),
            (
                "connection_streams",
                "gauge",
                "Streams confirmed per connection.",
                "connection",
                [(k, v) for k, v in sorted(c.get("streams", {}).items())],
            ),
            (
                "connection_lag_seconds",
                "gauge",
                "Now minus Binance's event time of the last trade.",
                "connection",
                [(k, v / 1000) for k, v in sorted(c.get("lag_ms", {}).items())],
            ),
        ]

        for name, kind, help_text, value in single:
            yield _family(kind, name, help_text, value=value)
        for name, kind, help_text, label, samples in labelled:
            family = _family(kind, name, help_text, labels=[label])
            for label_value, value in samples:
                family.add_metric([str(label_value)], value)
            yield family


def _family(
    kind: str, name: str, help_text: str, *, value: Any = None, labels: list[str] | None = None
) -> CounterMetricFamily | GaugeMetricFamily:
    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    return cls(f"medianserv_{name}", help_text, value=value, labels=labels)


def create_registry(service: Service) -> CollectorRegistry:
    """A registry with the service's series and the standard process, platform and GC ones."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(service))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition (format 0.0.4) of everything in ``registry``."""
    return generate_latest(registry)
