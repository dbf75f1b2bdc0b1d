"""The snapshot thread: every ``snapshot_interval`` seconds, what changed goes to LMDB.

Per symbol it holds the symbol's lock only to take the log of levels changed since the
previous snapshot (:meth:`SymbolStats.harvest`: the log changes hands whole, each level with
its count, O(1)) and copy its bookkeeping; encoding and the LMDB write happen outside every
lock, so readers wait at most one harvest (``max_hold_ms``). If a write fails (a full disk, an I/O
error) the harvested changes stay in memory and go out with the next attempt; the service
keeps serving meanwhile and says so loudly in the log and in /metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import lmdb

from .candles import then_candles
from .logs import ThreadErrors
from .store import Store
from .symbols import LevelLog, SymbolState, SymbolStats

__all__ = ["SnapshotStats", "Snapshotter"]

log = logging.getLogger(__name__)

#: Symbols harvested between two yields of the interpreter. A long loop over every symbol is
#: preempted only every switch interval, and threads that wait on sockets (HTTP, readers) get
#: the interpreter back only at those moments: a snapshot of 2,292 symbols made requests wait
#: tens of milliseconds. Yielding every few dozen symbols lets them through.
YIELD_EVERY = 64


class SnapshotStats:
    """Written by the snapshotting thread; read without a lock by /metrics."""

    def __init__(self) -> None:
        self.snapshots = 0
        self.failures = 0
        self.last_ok_at: float | None = None  # wall-clock time of the last good snapshot
        self.last_duration_s = 0.0
        self.last_symbols = 0
        self.last_levels = 0
        self.max_hold_ms = 0.0  # longest a symbol's lock was held by the last snapshot
        self.pending_symbols = 0  # harvested but not yet written (after a failure)


class Snapshotter:
    """Owns the ``snapshotter`` thread; :meth:`snapshot` may also be called directly."""

    def __init__(
        self,
        store: Store,
        source: Callable[[], list[SymbolStats]],
        interval: float,
        listing: Callable[[], tuple[str, ...]] = tuple,
        errors: ThreadErrors | None = None,
    ) -> None:
        self.store = store
        self.errors = errors or ThreadErrors(log)
        self.source = source  # every stats object, listed or not
        self.listing = listing  # the symbols served now; stored when it changes
        self._saved_listing: tuple[str, ...] | None = None
        self.interval = interval
        self.stats = SnapshotStats()
        self.stopping = threading.Event()  # set by stop(): the thread exits
        self.thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one snapshot at a time (thread and final snapshot)
        self._pending: dict[str, SymbolState] = {}

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="snapshotter", daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.snapshot()
            except Exception as exc:  # a harvest failed: what it took stays pending
                self.stats.failures += 1
                self.errors.record("snapshotter", exc, "taking a snapshot")

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout)

    def _failed(self, exc: Exception, pending: int) -> bool:
        self.stats.failures += 1
        self.stats.pending_symbols = pending
        log.error("SNAPSHOT FAILED (%s: %s): %d symbols kept in memory, retrying in %.0f s",
                  type(exc).__name__, exc, pending, self.interval)  # fmt: skip
        return False

    def snapshot(self) -> bool:
        """Harvest every changed symbol and write them in one transaction. True if written.
        Any failure (LMDB's, or one nobody foresaw) is logged and counted, and what was
        harvested stays in memory for the next attempt: the thread never dies of it."""
        with self._lock:
            t0 = time.perf_counter()
            max_hold = 0.0
            pending = self._pending
            for i, stats in enumerate(self.source()):
                if i % YIELD_EVERY == YIELD_EVERY - 1:
                    time.sleep(0)  # let request and reader threads in (see YIELD_EVERY)
                h0 = time.perf_counter()
                state = stats.harvest()
                max_hold = max(max_hold, time.perf_counter() - h0)
                if state is None:
                    continue
                before = pending.get(state.symbol)
                if before is not None:  # an earlier write failed: its log first, this one after
                    assert isinstance(before.levels, LevelLog)
                    assert isinstance(state.levels, LevelLog)
                    state.levels = before.levels.then(state.levels)
                    state.candles = then_candles(before.candles, state.candles)
                pending[state.symbol] = state
            listing = self.listing()
            new_listing = listing if listing and listing != self._saved_listing else None
            try:
                symbols, levels = self.store.save(pending.values(), listing=new_listing)
            except lmdb.Error as exc:  # a full disk, an I/O error
                return self._failed(exc, len(pending))
            except Exception as exc:  # not foreseen: counted as a thread error too
                self.errors.record("snapshotter", exc, "writing a snapshot")
                return self._failed(exc, len(pending))
            pending.clear()
            if new_listing is not None:
                self._saved_listing = new_listing
            s = self.stats
            s.snapshots += 1
            s.last_ok_at = time.time()
            s.last_duration_s = time.perf_counter() - t0
            s.last_symbols, s.last_levels = symbols, levels
            s.max_hold_ms = max_hold * 1000
            s.pending_symbols = 0
            return True
