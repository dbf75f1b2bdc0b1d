"""``bench history --market``: a whole market's history imported while the live market runs.

Hundreds of symbols with a realistic skew (one BTCUSDT-like symbol, ``BIGUSDT``, with tens of
millions of archive rows, the rest in a power law, listed at different months: thousands of
monthly files in all) are imported by the service's own :class:`~medianserv.importer.Importer`
in its thread, with its pool of processes (the service's default size) downloading,
checking and reducing each file over local HTTP, a few files ahead and the next symbol's
first files while one finishes, and merging each into its symbol's median, while live ingest
of the 2,292 real symbols runs here too and the snapshotter writes everything to LMDB every
2 s. Each symbol starts with its live baseline and first trade given, as the tickers and
REST give them, and its archives cover the rest, so no REST call is needed: the files are
the work. Afterwards the store is restored in a fresh process, as a restart does.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import resource
import tempfile
import threading
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
    latency_ms: float = 0.0,
) -> list[Row]:
    """The whole-market rehearsal (see the module's docstring), with ``workers`` pool
    processes (the service's default if None) and every archive answer held back
    ``latency_ms`` (a round trip to a CDN; 0: loopback as it is)."""
    from ..config import Config
    from ..exchange import RestClient
    from ..importer import Importer
    from ..snapshotter import Snapshotter
    from ..store import Store
    from ..symbols import SymbolTable
    from .scale import _child

    workers = workers or Config().pool_size()  # the service's default
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

    server = StaticServer(directory, latency_ms)
    sim = SimProcess(300, shared_data)
    store_dir = Path(tempfile.mkdtemp(prefix="medianserv-market-store-"))
    history = SymbolTable.build([symbol for symbol, _, _ in made])
    for symbol, files, n in made:  # the baseline and first trade, as tickers and REST say
        stats = history.get(symbol)
        assert stats is not None
        stats.baseline(n - 1, None)
        stats.start_history(0, files[0].start_ms)
    config = Config(rest_url=sim.rest_url, archive_url=server.url, history_workers=workers)
    importer = Importer(config, RestClient(sim.rest_url), lambda: history)
    thread = threading.Thread(target=importer.run, name="history")
    live: LiveIngest | None = None
    snapshotter = None
    try:
        pool = importer._pool_for()
        list(pool.map(abs, range(workers)))  # every pool process up before any clock
        pids = list(pool._processes)
        live = LiveIngest(sim)
        ingest = live.ingest
        store = Store.open(store_dir)
        snapshotter = Snapshotter(
            store, lambda: [*(st for _, st in history.items()), *ingest.all_stats()], 2.0
        )
        snapshotter.start()
        live.watch()
        t, main_cpu = time.perf_counter(), time.process_time()
        pool_cpu = sum(cpu_seconds(p) for p in pids)
        importer.request([symbol for symbol, _, _ in made])
        thread.start()
        clock = time.pthread_getcpuclockid(thread.ident or 0)
        while importer.counts().get("complete", 0) < len(made):
            if not thread.is_alive() or importer.stats.failed:
                raise RuntimeError(f"the import failed: {importer.counts()}")
            time.sleep(0.05)
        elapsed = time.perf_counter() - t
        merge_cpu = time.clock_gettime(clock)  # the importer thread: merges, orchestration
        main_cpu = time.process_time() - main_cpu
        pool_cpu = sum(cpu_seconds(p) for p in pids) - pool_cpu
        pool_peak = max(peak_rss_mib(p) for p in pids)
        importer.stop()
        thread.join(60)
        snapshotter.stop()
        c0 = time.perf_counter()
        snapshotter.snapshot()  # the final one, as at a stop
        final_snapshot = time.perf_counter() - c0
        applied_live = live.stop()
        store.close()
        main_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        views = {s: history.get(s).view() for s, _, _ in made}  # type: ignore[union-attr]
        bad = [
            s for s, _, n in made if views[s].count != n or views[s].history_complete is not True
        ]
        s = importer.stats
        if bad or s.trades != total_trades:
            raise RuntimeError(f"not imported exactly: {bad[:5]}")
        applied_files, applied_rows, applied_trades = s.files, s.rows, s.trades
        store_mib = sum(f.stat().st_size for f in store_dir.rglob("*") if f.is_file()) / 2**20
        restored = _child("restore", str(store_dir))
        if restored["count_all"] < total_trades or restored["symbols"] < len(made):
            raise RuntimeError(f"the restore holds {restored['count']} trades, not all")
        rows += [
            Row(f"market: import with {workers} pool process(es), {latency_ms:g} ms a request, "
                "wall", elapsed, "s"),
            Row("market: files per second", applied_files / elapsed, "files/s"),
            Row("market: archive rows per second", applied_rows / elapsed, "rows/s"),
            Row("market: trades per second", applied_trades / elapsed, "trades/s"),
            Row("market: CPU of the pool processes", pool_cpu, "cpu-s"),
            Row("market: CPU of the service process (merge, live ingest, snapshots)",
                main_cpu, "cpu-s"),
            Row("market: of which the importer thread (merging files into medians)", merge_cpu,
                "cpu-s"),
            Row("market: files reduced ahead of their symbol's turn", s.files_early, "files"),
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
        importer.stop()
        if thread.is_alive():
            thread.join(60)
        importer.close_pool()
        if live is not None:
            live.stop()
        if snapshotter is not None:
            snapshotter.stop()
        sim.stop()
        server.stop()
        import shutil

        shutil.rmtree(store_dir, ignore_errors=True)
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
    return rows
