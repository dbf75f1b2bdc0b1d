"""``bench snapshot``: incremental snapshots, reader stalls and restores at millions of levels."""

from __future__ import annotations

import gc
import itertools
import random
import statistics
import time
from pathlib import Path

from .common import Row, random_walk

__all__ = ["bench_snapshot"]


def bench_snapshot(
    levels: int = 10_000_000, shared_data: Path | None = None, ingest_rate: float = 100_000.0
) -> list[Row]:
    """Snapshot, incremental snapshots while trades are applied at ``ingest_rate`` (about the
    end-to-end maximum, see bench_ingest) with the reader stall they cause, and restore."""
    import tempfile
    import threading

    from ..snapshotter import Snapshotter
    from ..store import Store
    from ..symbols import SymbolStats

    rows: list[Row] = []
    info = (shared_data or Path()) / "exchangeInfo-2023-09-08.json"
    if shared_data is not None and info.exists():
        import json

        names = [s["symbol"] for s in json.loads(info.read_text())["symbols"]]
    else:
        names = [f"SYM{i}USDT" for i in range(2292)]
    # Zipf-like spread of levels over symbols: a few symbols hold most of them.
    weights = [1 / (i + 1) for i in range(len(names))]
    total_w = sum(weights)
    stats = [SymbolStats(n) for n in names]
    t0 = time.perf_counter()
    tid = 0
    for s, w in zip(stats, weights, strict=True):
        k = max(1, int(levels * w / total_w))
        add = s.median.add
        for p in range(1, k + 1):  # distinct levels, built straight into the median
            add(p * 100)
            add(p * 100)
        s.ids.baseline(0)
        s.ids.observe(1)
        s.last_trade_id, s.last_price = 1, 100
        s.dirty = True
        tid += 2 * k
    built = sum(s.median.levels for s in stats)
    rows.append(Row("levels stored (2 trades each)", built, "levels"))
    rows.append(Row("build time (not a target)", time.perf_counter() - t0, "s"))
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp))
        snap = Snapshotter(store, lambda: stats, 1.0)
        t0 = time.perf_counter()
        snap.snapshot()
        rows.append(Row("first (full) snapshot", time.perf_counter() - t0, "s"))
        size = store.info()["file_bytes"]
        rows.append(Row("store size per level", size / built, "B/level"))

        stop = threading.Event()
        applied = [0]

        walk = [p * 100 // 6183763 for p in random_walk(200_000, "61837.63", "0.01", seed=5)]

        def ingest() -> None:  # the 20 busiest symbols at ingest_rate, realistic prices
            r = random.Random(5)
            hot = stats[:20]
            next_id = [10**7] * len(hot)  # consecutive ids per symbol, as on Binance
            prices = itertools.cycle(walk)
            start = time.perf_counter()
            while not stop.is_set():
                for _ in range(1000):
                    k = r.randrange(20)
                    next_id[k] += 1
                    hot[k].apply(next_id[k], next(prices), next_id[k])
                applied[0] += 1000
                ahead = applied[0] / ingest_rate - (time.perf_counter() - start)
                if ahead > 0:
                    time.sleep(ahead)

        thread = threading.Thread(target=ingest, daemon=True)
        thread.start()
        durations, holds = [], []
        t_start = time.perf_counter()
        for _ in range(10):
            time.sleep(1.0)
            t0 = time.perf_counter()
            snap.snapshot()
            durations.append(time.perf_counter() - t0)
            holds.append(snap.stats.max_hold_ms)
        stop.set()
        thread.join()
        rate = applied[0] / (time.perf_counter() - t_start)
        rows.append(Row("trades applied meanwhile (1 thread)", rate, "trades/s"))
        rows.append(
            Row(
                "incremental snapshot, median of 10 (1 s of changes)",
                statistics.median(durations),
                "s",
            )
        )
        rows.append(Row("reader stall: longest lock hold, worst of 10", max(holds), "ms"))
        rows.append(
            Row("reader stall: longest lock hold, median of 10", statistics.median(holds), "ms")
        )
        store.close()
        stats = []
        gc.collect()
        store = Store.open(Path(tmp))
        t0 = time.perf_counter()
        restored = [SymbolStats.restore(s) for s in store.load()]
        rows.append(
            Row(
                f"restore {sum(s.median.levels for s in restored):,} levels",
                time.perf_counter() - t0,
                "s",
            )
        )
        store.close()
    return rows
