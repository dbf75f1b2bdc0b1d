"""``bench history --market``: a whole market's history imported while the live market runs.

Hundreds of symbols with a realistic skew (one BTCUSDT-like symbol, ``BIGUSDT``, with tens of
millions of
archive rows, the rest in a power law, listed at different months: thousands of monthly
files in all) are imported the way the service imports them: a pool of processes (the
service's default size) downloads, checks and reduces each file over local HTTP
(:func:`~medianserv.archive.fetch_and_reduce`, a few files ahead), and this process merges
each into its symbol's median (:meth:`~medianserv.symbols.SymbolStats.apply_levels`), in
order, while live ingest of the 2,292 real symbols runs here too and the snapshotter writes
everything to LMDB every 2 s. Afterwards the store is restored in a fresh process, as a
restart does. The importer's own steps around this (asking REST for a symbol's first trade,
REST for the days no archive holds) are left out: the files are the work.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import resource
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

from .common import LiveIngest, Row, SimProcess, StaticServer, cpu_seconds, peak_rss_mib

__all__ = ["bench_market"]

#: The BTCUSDT-like symbol's share of all trades.
TOP_SHARE = 0.5


def _spec(symbols: int, trades: int, seed: int = 7) -> list[tuple[str, int, int, int, float]]:
    """(symbol, trades, monthly files, first month, first price) of each symbol: one with
    TOP_SHARE of the trades over 24 months, the others a power law (the i-th about
    i^-1.1 of the rest), listed at a random month of the 24, each at least 200 trades a
    file."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = [("BIGUSDT", int(trades * TOP_SHARE), 24, 0, 20_000.0)]  # BTCUSDT-like
    weights = np.arange(1, symbols, dtype=float) ** -1.1
    rest = trades * (1 - TOP_SHARE) * weights / weights.sum()
    for i, n in enumerate(rest.tolist(), 1):
        first = int(rng.integers(0, 23))
        files = 24 - first
        price = float(np.round(10 ** rng.uniform(-2, 3), 2)) + 1.0
        out.append((f"S{i:03d}USDT", max(int(n), 200 * files), files, first, price))
    return out


def _make(directory: Path, spec: tuple[str, int, int, int, float]) -> tuple[str, list[Any], int]:
    """Write (or find) one symbol's archives: (symbol, its files, its trades)."""
    from .history import synthetic_archives

    symbol, trades, files, first, price = spec
    seed = zlib.crc32(symbol.encode())  # the same files, run after run
    made = synthetic_archives(directory, symbol, trades, files, seed=seed, first_month=first,
                              price=price)  # fmt: skip
    return symbol, [f for f, _, _ in made], int(sum(int(c.sum()) for _, _, c in made))


def bench_market(
    symbols: int = 300,
    trades: int = 6 * 10**7,
    archive_dir: Path | None = None,
    shared_data: Path | None = None,
    workers: int | None = None,
) -> list[Row]:
    """The whole-market rehearsal (see the module's docstring)."""
    from ..archive import Reduced, fetch_and_reduce, pool_process_init
    from ..snapshotter import Snapshotter
    from ..store import Store
    from ..symbols import SymbolStats
    from .scale import _child

    workers = workers or max(1, (os.cpu_count() or 2) - 1)  # the service's default
    keep = archive_dir is not None
    directory = archive_dir or Path(tempfile.mkdtemp(prefix="medianserv-market-"))
    directory.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    t0 = time.perf_counter()
    spec = _spec(symbols, trades)
    with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as maker:
        made = list(maker.map(_make, [directory] * len(spec), spec))
    n_files = sum(len(files) for _, files, _ in made)
    total_trades = sum(n for _, _, n in made)
    zip_bytes = sum((directory / f.path).stat().st_size for _, files, _ in made for f in files)
    rows += [
        Row(f"market: archives made or found ({len(made)} symbols)", time.perf_counter() - t0,
            "s"),
        Row("market: symbols / monthly files", len(made), "symbols"),
        Row("market: monthly files", n_files, "files"),
        Row("market: trades in the archives", total_trades, "trades"),
        Row("market: the largest symbol's share of the trades", TOP_SHARE * 100, "%"),
        Row("market: archive size (zip)", zip_bytes / 2**20, "MiB"),
    ]  # fmt: skip

    server = StaticServer(directory)
    sim = SimProcess(300, shared_data)
    store_dir = Path(tempfile.mkdtemp(prefix="medianserv-market-store-"))
    spawn = multiprocessing.get_context("spawn")
    pool = cf.ProcessPoolExecutor(workers, mp_context=spawn, initializer=pool_process_init,
                                  initargs=(os.getpid(),))  # fmt: skip
    live: LiveIngest | None = None
    snapshotter = None
    try:
        list(pool.map(abs, range(workers)))  # every pool process up before any clock
        pids = list(pool._processes)
        live = LiveIngest(sim)
        history: dict[str, SymbolStats] = {}
        for symbol, _, n in made:
            stats = history[symbol] = SymbolStats(symbol)
            stats.baseline(n - 1, None)
            stats.start_history(0, None)
        ingest = live.ingest
        store = Store.open(store_dir)
        snapshotter = Snapshotter(store, lambda: [*history.values(), *ingest.all_stats()], 2.0)
        snapshotter.start()
        live.watch()
        ahead = 2 * workers
        t, main_cpu, pool_cpu = time.perf_counter(), time.process_time(), 0.0
        pool_cpu = sum(cpu_seconds(p) for p in pids)
        merge_cpu = 0.0
        applied_files = applied_rows = applied_trades = 0
        for symbol, files, _ in made:  # one symbol at a time, a few files ahead, as the service
            stats = history[symbol]
            futures = [pool.submit(fetch_and_reduce, server.url, f) for f in files[:ahead]]
            for i, file in enumerate(files):
                r = futures[i].result()
                if i + ahead < len(files):
                    futures.append(pool.submit(fetch_and_reduce, server.url, files[i + ahead]))
                if not isinstance(r, Reduced):
                    raise RuntimeError(f"{file.name} refused: {r}")
                c0 = time.thread_time()
                n = stats.apply_levels(r.first_id, r.last_id, r.levels, r.counts, r.last_row[4],
                                       last_price=r.last_row[3])  # fmt: skip
                merge_cpu += time.thread_time() - c0
                if n != r.trades:
                    raise RuntimeError(f"{file.name} not applied")
                applied_files += 1
                applied_rows += r.rows
                applied_trades += n
        elapsed = time.perf_counter() - t
        main_cpu = time.process_time() - main_cpu
        pool_cpu = sum(cpu_seconds(p) for p in pids) - pool_cpu
        pool_peak = max(peak_rss_mib(p) for p in pids)
        snapshotter.stop()
        c0 = time.perf_counter()
        snapshotter.snapshot()  # the final one, as at a stop
        final_snapshot = time.perf_counter() - c0
        applied_live = live.stop()
        store.close()
        main_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        bad = [s for s, _, n in made if history[s].view().count != n
               or history[s].view().history_complete is not True]  # fmt: skip
        if bad or applied_trades != total_trades:
            raise RuntimeError(f"not imported exactly: {bad[:5]}")
        store_mib = sum(f.stat().st_size for f in store_dir.rglob("*") if f.is_file()) / 2**20
        restored = _child("restore", str(store_dir))
        if restored["count_all"] < total_trades or restored["symbols"] < len(made):
            raise RuntimeError(f"the restore holds {restored['count']} trades, not all")
        rows += [
            Row(f"market: import with {workers} pool process(es), wall", elapsed, "s"),
            Row("market: files per second", applied_files / elapsed, "files/s"),
            Row("market: archive rows per second", applied_rows / elapsed, "rows/s"),
            Row("market: trades per second", applied_trades / elapsed, "trades/s"),
            Row("market: CPU of the pool processes", pool_cpu, "cpu-s"),
            Row("market: CPU of the service process (merge, live ingest, snapshots)",
                main_cpu, "cpu-s"),
            Row("market: of which merging files into medians", merge_cpu, "cpu-s"),
            Row("market: the pool's busy share of its cores (1.0: the pool is the bound)",
                pool_cpu / (workers * elapsed), "x"),
            Row("market: the merge's share of one core (1.0: the merge is the bound)",
                merge_cpu / elapsed, "x"),
            Row("market: live ingest meanwhile: trades applied", applied_live, "trades"),
            Row("market: live ingest meanwhile: worst reader lag", live.worst_lag_s, "s"),
            Row("market: peak RSS, service process (live ingest, every median, snapshots)",
                main_peak, "MiB"),
            Row("market: peak RSS, a pool process", pool_peak, "MiB"),
            Row("market: final snapshot", final_snapshot, "s"),
            Row("market: LMDB store size", store_mib, "MiB"),
            Row("market: restart: restore of every symbol in a fresh process",
                restored["restore_s"], "s"),
            Row("market: restart: peak RSS of the restoring process", restored["peak_mib"],
                "MiB"),
            Row("market: restart: of which not file-backed (RssAnon)", restored["peak_anon"],
                "MiB"),
        ]  # fmt: skip
    finally:
        if live is not None:
            live.stop()
        if snapshotter is not None:
            snapshotter.stop()
        pool.shutdown(cancel_futures=True)
        sim.stop()
        server.stop()
        import shutil

        shutil.rmtree(store_dir, ignore_errors=True)
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
    return rows
