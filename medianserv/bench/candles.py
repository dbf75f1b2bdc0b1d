"""``bench candles``: what median candles cost a BTCUSDT-like symbol: bytes stored per day at
each interval, levels held by its open periods, a snapshot's candle writes, and a query.

Three days of trades (``trades_per_day``, prices a realistic random walk of 0.01 ticks, times
spread over the day) go through the real SymbolStats (compiled where built) into a real LMDB
store, a snapshot each minute of market time (an hour or a day is written once a minute
however often snapshots come: only a retired minute changes it). The second day has settled
by the end, with trades counted on either side of it; its rows are what a day costs.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from .. import symbols as symbols_module
from ..candles import INTERVALS, select_rows
from ..store import Store, candle_items, symbol_prefix
from ..symbols import SymbolState, SymbolStats
from .common import Row, random_walk

__all__ = ["bench_candles"]

DAY_MS = 86_400_000


def bench_candles(trades_per_day: int = 1_500_000, days: int = 3) -> list[Row]:
    """See the module docstring. Rows: bytes per symbol-day by interval (keys and values
    written, and LMDB's pages), the most levels the open periods held, the largest
    snapshot's candle bytes, and the p50/p99 of a 500-row query of each interval."""
    rows: list[Row] = []
    symbols_module.keep_candles(True, [None, None, None])
    symbols_module.expect_history(set())  # as the service runs without --history
    n = trades_per_day * days
    prices = random_walk(n, "61837.63", "0.01", seed=7)
    t0 = 1_700_006_400_000 - 1_700_006_400_000 % DAY_MS  # a UTC midnight
    step = DAY_MS / trades_per_day
    stats = SymbolStats("BTCUSDT")
    most_levels = 0
    largest = 0
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp))
        try:
            next_snapshot = t0 + 60_000
            for i, price in enumerate(prices):
                ms = t0 + int(i * step)
                stats.apply(i + 1, price, ms)
                if ms >= next_snapshot:
                    next_snapshot += 60_000
                    state = stats.harvest()
                    if state is not None:
                        largest = max(largest, _candle_bytes(state))
                        store.save([state])
                    candles = stats.candles
                    assert candles is not None
                    held = sum(p.levels for book in candles.open for p in book.values())
                    most_levels = max(most_levels, held)
            state = stats.harvest()
            if state is not None:
                store.save([state])
            stats._check()
            # the second day: settled, with a counted trade on either side of it
            second_day = _stored_bytes(store, t0 + DAY_MS, t0 + 2 * DAY_MS)
            for k, (name, _) in enumerate(INTERVALS):
                count, payload = second_day[k]
                rows.append(Row(f"{name} rows of a settled day", count, "rows"))
                rows.append(Row(f"{name} bytes stored per symbol-day (keys + values)", payload,
                                "bytes"))  # fmt: skip
            with store.env.begin() as txn:
                st = txn.stat(store._candles)
            pages = (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]) * st["psize"]
            rows.append(Row(f"LMDB pages of the candles db after {days} days, per day",
                            pages / days, "bytes"))  # fmt: skip
            rows.append(Row("levels held by the open periods at most (a day's, an hour's, "
                            "minutes')", most_levels, "levels"))  # fmt: skip
            rows.append(Row("largest snapshot's candle writes", largest, "bytes"))
            rows.append(Row(f"trades per day (BTCUSDT-like), {days} days", trades_per_day,
                            "trades"))  # fmt: skip
            for k, (name, _) in enumerate(INTERVALS):
                times = []
                for _ in range(50):
                    q0 = time.perf_counter()
                    memory, origin = stats.candle_rows(k, 0, 2**62)
                    stored = store.candles("BTCUSDT", k, 0, 2**53, 500, False)
                    select_rows(stored, memory, origin, None, None, 500)
                    times.append(time.perf_counter() - q0)
                times.sort()
                rows.append(Row(f"query, latest 500 {name} rows: p50", statistics.median(times)
                                * 1e3, "ms"))  # fmt: skip
                rows.append(Row(f"query, latest 500 {name} rows: p99",
                                times[int(len(times) * 0.99)] * 1e3, "ms"))  # fmt: skip
        finally:
            store.close()
            symbols_module.keep_candles(True)
            symbols_module.expect_history(None)
    return rows


def _candle_bytes(state: SymbolState) -> int:
    """The bytes of the keys and values a harvest's candles put (the store's own items, in
    ``current`` and in ``candles``)."""
    current, _, items = candle_items([state])
    return sum(len(key) + len(value) for key, value in current + items)


def _stored_bytes(store: Store, start: int, end: int) -> list[tuple[int, int]]:
    """Per interval, the stored records of periods opening in ``start..end`` and their
    keys' and values' bytes."""
    out = []
    prefix = symbol_prefix("BTCUSDT")
    with store.env.begin(db=store._candles) as txn:
        for k in range(len(INTERVALS)):
            head = prefix + bytes((k + 1,))
            lo, hi = head + start.to_bytes(8, "big"), head + end.to_bytes(8, "big")
            count = size = 0
            cursor = txn.cursor()
            if cursor.set_range(lo):
                for key, value in cursor:
                    if key >= hi:
                        break
                    count += len(key) == len(head) + 8
                    size += len(key) + len(value)
            out.append((count, size))
    return out
