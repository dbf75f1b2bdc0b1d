"""Ingest: the symbol table, the readers that feed it, listing refreshes and the backfill.

Threads owned here (each with a stop event, all stopped and joined by :meth:`Ingest.stop`):
``reader-N`` (one per connection, :class:`~medianserv.streams.Reader`), ``listings``
(re-reads exchangeInfo every ``exchange_info_interval``, and then has a ticker read for the
quiet symbols that began trading: :meth:`Ingest.sweep_quiet`), ``backfill-N`` (the
``backfill_workers`` workers of :class:`~medianserv.backfill.Backfill`) and ``history``
(:class:`~medianserv.importer.Importer`, with its pool of processes).

The history of the symbols named by ``--history`` is imported once they are listed; a symbol
listed while the service runs is followed from its first trade (its history is imported, and
one ticker check finds what it traded before its stream was subscribed).

``table`` is replaced whole when the listing changes (an atomic attribute swap); readers read
it for every frame, so a new symbol is served as soon as its stream delivers. Every stats
object ever created or restored stays in ``known``, so a symbol listed again, even after a
delisting, finds its history.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from .backfill import Backfill
from .config import Config
from .errors import InputError
from .exchange import RestClient, RestError, TickerRange
from .importer import Importer
from .logs import ThreadErrors
from .pacing import backoff
from .streams import AttemptGate, Reader, ReaderStats, plan_connections, stream_of
from .symbols import SymbolStats, SymbolTable

__all__ = ["Ingest"]

log = logging.getLogger(__name__)


_COUNTED = ("applied", "duplicates", "waited", "gaps", "filled_live", "reconnects", "rotations")


def _totals(s: ReaderStats) -> dict[str, int]:
    """A reader's counters under the names /metrics uses; rejections as ``rejected:<kind>``."""
    out = {
        "applied": s.applied,
        "duplicates": s.duplicates,
        "waited": s.waited,
        "gaps": s.gaps,
        "filled_live": s.filled,
        "reconnects": s.reconnects,
        "rotations": s.rotations,
    }
    out.update({f"rejected:{k}": v for k, v in s.rejected.items()})
    return out


def _baseline(table: SymbolTable, ranges: dict[str, TickerRange] | None) -> None:
    """Start the range of every symbol of ``table`` that has none yet from the tickers'
    ``ranges`` (a symbol they do not list had no trade in 24 hours: quiet). O(symbols)."""
    if ranges is None:
        return
    for symbol, stats in table.items():
        if stats.needs_baseline():
            r = ranges.get(symbol, TickerRange(-1, -1))
            stats.baseline(r.last_id, r.close_ms)


class Ingest:
    """Everything between Binance and the statistics."""

    def __init__(
        self,
        config: Config,
        rest: RestClient,
        known: Iterable[SymbolStats] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.rest = rest
        self.clock = clock
        self.table = SymbolTable.build([])  # swapped whole under _lock; read without it
        self._lock = threading.Lock()  # guards known, readers and table swaps
        self.known: dict[str, SymbolStats] = {s.symbol: s for s in known}
        self.readers: list[Reader] = []
        self._next_slot = 0  # label of the next reader (its thread is reader-<slot>)
        self._retired: Counter[str] = Counter()  # counters of readers no longer running
        self.gate = AttemptGate(config.max_connection_attempts, config.connection_window)
        self.errors = ThreadErrors(log)  # unexpected exceptions caught in our threads, by role
        self.backfill = Backfill(config, rest, lambda: self.table, errors=self.errors)
        self.importer = Importer(config, rest, lambda: self.table, errors=self.errors)
        self._listed_once = False  # a listing after the first brings new listings
        self.stopping = threading.Event()  # set by stop(): the listings thread exits
        self.listed_at: float | None = None  # when exchangeInfo was last read
        self.listing_failures = 0
        self._threads: list[threading.Thread] = []

    # -- the Ingestor interface the readers use ------------------------------------------------

    def gap_found(self, symbol: str) -> None:
        self.backfill.notify(symbol)

    def resubscribed(self, streams: frozenset[str]) -> None:
        """A connection came (back) up: look for trades missed meanwhile. O(symbols)."""
        self.backfill.sweep(s for s in self.table.symbols if stream_of(s) in streams)

    # -- listings -------------------------------------------------------------------------------

    def apply_listing(
        self, symbols: list[str], ranges: dict[str, TickerRange] | None = None
    ) -> bool:
        """Make ``symbols`` the served set: new table, new plan, readers told. True if changed.

        ``ranges`` (the 24-hour tickers' trade ids) baseline the history of new symbols before
        their streams are subscribed, so trades missed later can be recognised as ours.
        """
        with self._lock:
            if tuple(symbols) == self.table.symbols and self.readers:
                return False
            old = set(self.table.symbols)
            table = SymbolTable.rebuild(symbols, self.known)
            for symbol, stats in table.items():
                self.known.setdefault(symbol, stats)
            _baseline(table, ranges)
            self.table = table
            plan = plan_connections(
                [stream_of(s) for s in symbols],
                self.config.max_streams_per_connection,
                [r.wanted for r in self.readers],
            )
            self._assign(plan)
        added, removed = len(set(symbols) - old), len(old - set(symbols))
        log.info(
            "listing: %d symbols (+%d, -%d) over %d connections",
            len(symbols), added, removed, len(plan),
        )  # fmt: skip
        return True

    def preload(self, symbols: list[str]) -> None:
        """Serve ``symbols`` (the listing stored by the last run) before exchangeInfo answers;
        no stream is subscribed until the first real listing."""
        with self._lock:
            table = SymbolTable.rebuild(symbols, self.known)
            for symbol, stats in table.items():
                self.known.setdefault(symbol, stats)
            self.table = table

    def all_stats(self) -> list[SymbolStats]:
        """Every stats object, listed or not (what snapshots cover). O(n)."""
        with self._lock:
            return list(self.known.values())

    def _assign(self, plan: list[set[str]]) -> None:
        """Give each planned group to the reader already holding most of it; start readers for
        extra groups, stop readers left without one. Caller holds _lock. O(groups * readers)."""
        free = list(self.readers)
        assigned: list[Reader] = []
        for streams in plan:
            best = max(free, key=lambda r: len(r.wanted & streams), default=None)
            if best is None:
                best = Reader(self._next_slot, self, self.config, self.gate, errors=self.errors)
                self._next_slot += 1
                if not self.stopping.is_set():
                    best.start()
            else:
                free.remove(best)
            best.set_streams(streams)
            assigned.append(best)
        for reader in free:
            reader.set_streams(())
            reader.stop()
            self._retire(reader)
        self.readers = assigned

    def _retire(self, reader: Reader) -> None:
        """Keep a departing reader's counters, so totals never go down. Caller holds _lock."""
        self._retired.update(_totals(reader.stats))

    def refresh_listing(self, *, need_baseline: bool = False) -> bool:
        """Read exchangeInfo (and, for new symbols, the tickers) and apply it.

        Raises RestError or InputError when exchangeInfo fails, or when the tickers fail and
        ``need_baseline`` is set; otherwise new symbols start their history at their first trade.
        """
        symbols = self.rest.exchange_symbols()
        new = [s for s in symbols if s not in self.known] if self._listed_once else []
        ranges = None
        if any(self.known.get(s) is None or self.known[s].needs_baseline() for s in symbols):
            try:
                ranges = self.rest.trade_id_ranges()
            except (RestError, InputError) as exc:
                if need_baseline:
                    raise
                log.warning("tickers unavailable (%s): new symbols start at their first trade", exc)
        changed = self.apply_listing(symbols, ranges)
        if not changed:
            _baseline(self.table, ranges)  # symbols the last tickers could not baseline
        self.listed_at = time.time()  # after the table and readers exist: ready() reads it
        if not self._listed_once:
            self._listed_once = True
            self.importer.request(self.config.history_symbols(symbols))
        elif new:  # listed while we run: from their very first trade
            log.info("new listings followed from their first trade: %s", ", ".join(new[:20]))
            self.backfill.sweep(new)
            self.importer.request(new)
        return changed

    def first_listing(self) -> bool:
        """Read exchangeInfo, retrying with backoff until it works; False if stopped first."""
        delays = backoff(self.config.backoff_initial, self.config.backoff_max)
        while not self.stopping.is_set():
            try:
                self.refresh_listing(need_baseline=True)
                return True
            except (RestError, InputError) as exc:
                self.listing_failures += 1
                delay = next(delays)
                log.warning("exchangeInfo unavailable (%s); retrying in %.1f s", exc, delay)
                self.stopping.wait(delay)
            except Exception as exc:
                self.listing_failures += 1
                self.errors.record("listings", exc, "reading the first listing")
                self.stopping.wait(next(delays))
        return False

    def _run_listings(self) -> None:
        while not self.stopping.wait(self.config.exchange_info_interval):
            try:
                self.refresh_listing()
            except (RestError, InputError) as exc:
                self.listing_failures += 1
                log.warning("exchangeInfo re-read failed (%s); keeping the current listing", exc)
            except Exception as exc:
                self.listing_failures += 1
                self.errors.record("listings", exc, "re-reading the listing")
            self.sweep_quiet()

    def sweep_quiet(self) -> int:
        """Have a ticker read for the quiet symbols that have begun trading
        (:meth:`SymbolStats.began_quiet`): it finds the trades below their range a stream
        missed, or finds none and they are quiet no more, so their first candles settle
        rather than wait for the next reconnect's ticker. One ticker call for them all (the
        backfill's sweep), and none while there are no such symbols. Returns how many were
        queued. O(symbols)."""
        with self._lock:
            known = list(self.known.items())
        quiet = [symbol for symbol, stats in known if stats.began_quiet()]
        if quiet:
            self.backfill.sweep(quiet)
        return len(quiet)

    # -- lifecycle ------------------------------------------------------------------------------

    def _target(self, name: str) -> Callable[[], None]:
        if name == "history":
            return self.importer.run
        return self._run_listings if name == "listings" else self.backfill.run

    def requeue_restored(self) -> None:
        """What was restored gets served: every symbol with gaps is queued for the backfill
        at once, every symbol with history still to import for the importer. O(symbols)."""
        for symbol, stats in list(self.known.items()):
            if stats.missing():
                self.backfill.notify(symbol, 0.0)
            if stats.front() is not None:
                self.importer.request([symbol])

    def start(self) -> None:
        """Queue what was restored (:meth:`requeue_restored`) and start the listings, history
        and backfill threads (readers start with the first listing)."""
        self.requeue_restored()
        names = ["listings", "history"]
        names += [f"backfill-{i}" for i in range(self.config.backfill_workers)]
        self._threads = [
            threading.Thread(target=self._target(name), name=name, daemon=True) for name in names
        ]
        for t in self._threads:
            t.start()

    def supervise(self) -> list[str]:
        """Restart any dead thread (a bug killed it); returns what was restarted. O(readers)."""
        restarted = []
        with self._lock:
            for slot, reader in enumerate(self.readers):
                if (
                    reader.thread is not None
                    and not reader.thread.is_alive()
                    and not reader.stopping.is_set()
                ):
                    fresh = Reader(slot, self, self.config, self.gate, errors=self.errors)
                    fresh.set_streams(reader.wanted)
                    self.readers[slot] = fresh
                    fresh.start()
                    restarted.append(f"reader-{slot}")
        for i, t in enumerate(self._threads):
            if not t.is_alive() and not self.stopping.is_set():
                self._threads[i] = threading.Thread(
                    target=self._target(t.name), name=t.name, daemon=True
                )
                self._threads[i].start()
                restarted.append(t.name)
        return restarted

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every thread and wait for them (readers close their connections)."""
        self.stopping.set()
        self.backfill.stop()
        self.importer.stop()
        with self._lock:
            readers = list(self.readers)
        for r in readers:
            r.stop()
        for r in readers:
            r.join(timeout)
        for t in self._threads:
            t.join(timeout)

    # -- state for the API ------------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        """Whether every connection is up with all its streams confirmed, and if not why."""
        if self.listed_at is None:
            return False, "exchangeInfo not read yet"
        readers = list(self.readers)
        if not readers and len(self.table):
            return False, "connections not planned yet"
        waiting = [r.slot for r in readers if not r.stats.ready]
        if waiting:
            return False, f"connections {waiting} not subscribed yet"
        return True, f"{len(self.table)} symbols over {len(readers)} connections"

    def completeness(self) -> tuple[int, int]:
        """(symbols with trades known missing, trades known missing), over the listed symbols.
        O(symbols), one short lock each."""
        incomplete = missing = 0
        for _, stats in self.table.items():
            m = stats.missing()
            if m:
                incomplete += 1
                missing += m
        return incomplete, missing

    def counters(self) -> dict[str, Any]:
        """Totals over every reader, past and present, and the backfill (for /metrics)."""
        with self._lock:
            readers = list(self.readers)
            totals = Counter(self._retired)
        for r in readers:
            totals.update(_totals(r.stats))
        rejected = {k.split(":", 1)[1]: v for k, v in totals.items() if k.startswith("rejected:")}
        return {
            **{k: totals[k] for k in _COUNTED},
            "rejected": rejected,
            "connections_open": sum(r.stats.connected for r in readers),
            "connections": len(readers),
            "lag_ms": {r.slot: r.stats.lag_ms for r in readers},
            "streams": {r.slot: r.stats.subscribed for r in readers},
            "backfill": {
                **self.backfill.stats.snapshot(),
                "pending": self.backfill.pending(),
                "sweep_pending": self.backfill.sweep_pending(),
                "next_in": self.backfill.next_attempt_in(),
            },
            "rest": self.rest.spent(),
            "rest_weight_now": self.rest.weight_now(),
            "listing_failures": self.listing_failures,
            "thread_errors": self.errors.snapshot(),
            "connection_attempt_waits": self.gate.waits,
        }
