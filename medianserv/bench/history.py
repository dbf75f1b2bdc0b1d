"""``bench history``: the history import over local HTTP, beside decompressing the same files."""

from __future__ import annotations

import time
from pathlib import Path
from statistics import median
from typing import Any

from .common import LiveIngest, Row, SimProcess, StaticServer, cpu_seconds, peak_rss_mib

__all__ = ["bench_history", "engine_cpu", "synthetic_archives"]


def synthetic_archives(
    directory: Path,
    symbol: str,
    trades: int,
    files: int,
    seed: int = 1,
    first_month: int = 0,
    price: float = 20_000.0,
) -> list[tuple[Any, Any, Any]]:
    """Write ``files`` monthly aggTrades archives of ``symbol`` in Binance's layout (zip and
    CHECKSUM) holding ``trades`` trades, from 2024-06 on (``first_month`` months later; so
    2025-01-01, where times turn to microseconds, is crossed from the 8th file), from
    ``price`` on: a geometric price walk on a 0.01 tick
    (60% of orders repeat the price), 1.8 fills per order, like BTCUSDT. Kept across runs
    (same arguments, same bytes). Returns, per file, (ArchiveFile, distinct prices, counts):
    the oracle the import must equal."""
    import hashlib
    import zipfile

    import numpy as np
    import polars as pl

    from ..archive import MICROS_FROM_MS, monthly_file

    rng = np.random.default_rng(seed)
    out = []
    rows_total = int(trades / 1.8)
    price_ticks = price * 100  # in ticks of 0.01
    next_id, next_agg = 0, 0
    for k in range(files):
        year, month = 2024 + (5 + first_month + k) // 12, (5 + first_month + k) % 12 + 1
        file = monthly_file(symbol, year, month)
        n = max(1, rows_total // files)
        moves = rng.random(n) >= 0.6
        steps = np.where(moves, rng.normal(0.0, 5e-5, n), 0.0)
        walk = price_ticks * np.exp(np.cumsum(steps))
        price_ticks = float(walk[-1])
        prices = np.maximum(1, np.round(walk)).astype(np.int64) * 1_000_000  # ticks of 0.01
        fills = rng.geometric(1 / 1.8, n).astype(np.int64)
        last = np.cumsum(fills) + next_id - 1
        first = last - fills + 1
        start, span = file.start_ms, file.end_ms - file.start_ms
        times = start + np.sort(rng.integers(0, span, n))
        stamps = times * 1000 if start >= MICROS_FROM_MS else times
        agg = np.arange(next_agg, next_agg + n, dtype=np.int64)
        next_id, next_agg = int(last[-1]) + 1, next_agg + n
        levels, inverse = np.unique(prices, return_inverse=True)
        counts = np.bincount(inverse, weights=fills).astype(np.int64)
        out.append((file, levels, counts))
        path = directory / file.path
        if path.exists() and Path(str(path) + ".CHECKSUM").exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        units = pl.Series(prices)
        text = (
            (units // 100_000_000).cast(pl.String)
            + "."
            + (units % 100_000_000).cast(pl.String).str.zfill(8)
        )  # exact: integer arithmetic
        table = pl.DataFrame({
            "a": agg, "p": text, "q": pl.repeat("0.01000000", n, eager=True), "f": first,
            "l": last, "T": stamps, "m": pl.repeat("True", n, eager=True),
            "M": pl.repeat("True", n, eager=True),
        })  # fmt: skip
        csv_path = directory / (file.name + ".csv")
        table.write_csv(csv_path, include_header=False, quote_style="never")
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            info = zipfile.ZipInfo(file.name + ".csv", date_time=(year, month, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with csv_path.open("rb") as src, z.open(info, "w") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
        csv_path.unlink()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        Path(str(path) + ".CHECKSUM").write_text(f"{digest}  {file.name}.zip\n")
    return out


def engine_cpu(engine: str, zip_path: str) -> tuple[float, float, int] | None:
    """In a process of its own (one thread for the engine): unzip ``zip_path`` to a file as
    ``unzip`` would, then reduce it with ``engine`` (``duckdb`` or ``polars``) to the trades
    per price, as a user would (``SELECT price, sum(last - first + 1) ... GROUP BY price``,
    prices as exact decimals). Returns (CPU seconds to unzip, CPU seconds of the engine,
    distinct prices), or None when the engine is not installed (``pip install
    '.[bench]'``)."""
    import os
    import tempfile
    import zipfile

    os.environ["POLARS_MAX_THREADS"] = "1"  # before polars is imported
    try:
        if engine == "duckdb":
            import duckdb
        else:
            import polars as pl
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        c0 = time.process_time()
        with zipfile.ZipFile(zip_path) as z:
            csv = z.extract(z.namelist()[0], tmp)
        unzip = time.process_time() - c0
        c0 = time.process_time()
        if engine == "duckdb":
            con = duckdb.connect(config={"threads": 1})
            cols = ("{'a':'BIGINT','p':'DECIMAL(20,8)','q':'VARCHAR','f':'BIGINT','l':'BIGINT',"
                    "'t':'BIGINT','m':'VARCHAR','best':'VARCHAR'}")  # fmt: skip
            query = (f"SELECT p, sum(l - f + 1) FROM read_csv('{csv}', header=false, "
                     f"columns={cols}) GROUP BY p")  # fmt: skip
            levels = len(con.execute(query).fetchall())
            con.close()
        else:
            schema: dict[str, Any] = {
                "a": pl.Int64, "p": pl.Decimal(20, 8), "q": pl.String, "f": pl.Int64,
                "l": pl.Int64, "t": pl.Int64, "m": pl.String, "best": pl.String,
            }  # fmt: skip
            frame = pl.scan_csv(csv, has_header=False, schema=schema)  # only p, f, l are read
            levels = frame.group_by("p").agg((pl.col("l") - pl.col("f") + 1).sum()).collect().height
        return unzip, time.process_time() - c0, levels


def _day_candle_bytes(stats: Any) -> tuple[int, int, int]:
    """After an import: (day candles settled, the bytes their records take in the store's
    ``candles`` database, keys and values as :func:`~medianserv.store.candle_items` makes
    them; day candles still open). The invariant is checked first."""
    from ..candles import DAY
    from ..store import candle_items

    stats._check()
    state = stats.harvest()
    candles = state.candles if state is not None else None
    if candles is None:
        raise RuntimeError("the import made no day candle")
    rows = sum(1 for _, row, _ in candles.periods[DAY] if row is not None)
    size = 0
    for key, value in candle_items([state])[2]:
        if key[-9:-8] == bytes((DAY + 1,)) and value[:2] == b"\x99\x00":  # a settled day
            size += len(key) + len(value)
    return rows, size, len(stats.candles.open[DAY]) if stats.candles is not None else 0


def _decompress_rows(path: Path) -> tuple[int, float]:
    """(CSV lines, seconds) to merely decompress one archive, reading it as the import does."""
    import zipfile

    t0 = time.perf_counter()
    lines = 0
    with zipfile.ZipFile(path) as z, z.open(z.namelist()[0]) as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
    return lines, time.perf_counter() - t0


def bench_history(
    trades: int = 10**8,
    files: int = 10,
    archive_dir: Path | None = None,
    shared_data: Path | None = None,
    rounds: int = 3,
) -> list[Row]:
    """History import: (1) the rate on one core, end to end over local HTTP (download,
    CHECKSUM, unzip, parse, check, reduce in a pool process; merge in this one) beside merely
    decompressing the same files and beside unzip + DuckDB and polars, in ``rounds`` rounds
    of all of them (ratios within a round, then their median); (2) an import of ``trades``
    trades while live ingest runs at 3,000 trades/s in this same process: the readers' worst
    lag, peak memory, and what a whole BTCUSDT history (about 5e9 trades) would take at that
    rate. The imported statistics are checked against the generator's own count."""
    import concurrent.futures as cf
    import multiprocessing
    import resource
    import tempfile

    import numpy as np

    from ..archive import Reduced, fetch_and_reduce, native_reader, warm_up
    from ..symbols import SymbolStats, keep_candles

    rows: list[Row] = []
    native = native_reader() is not None  # the C reader was built at install
    keep = archive_dir is not None
    directory = archive_dir or Path(tempfile.mkdtemp(prefix="medianserv-archives-"))
    directory.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as maker:
        # in a process of its own: making the files takes memory the import does not
        made = maker.submit(synthetic_archives, directory, "BTCUSDT", trades, files).result()
    rows.append(Row(f"archives made or found ({files} monthly files)", time.perf_counter() - t0,
                    "s"))  # fmt: skip
    zip_bytes = sum((directory / f.path).stat().st_size for f, _, _ in made)
    rows.append(Row("archive size (zip)", zip_bytes / 2**20, "MiB"))
    server = StaticServer(directory)
    # one pool process per reader (the service's own, and polars' where the C one was built),
    # each up and warmed before any clock; its process, for its CPU time and peak memory
    pools: dict[str | None, Any] = {}
    workers: dict[str | None, int] = {}
    try:
        for engine in (None, "polars") if native else (None,):
            pools[engine] = cf.ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn")
            )
            pools[engine].submit(warm_up, engine).result()  # its reader loaded and used once
            workers[engine] = next(iter(pools[engine]._processes))

        split: dict[str, float] = {}

        def import_files(
            stats: SymbolStats, chosen: list[Any], engine: str | None = None, days: bool = True
        ) -> tuple[int, int, float, float]:
            """Import ``chosen`` in order, one file ahead, with the reader ``engine`` (the
            service's own by default), building each day's candle (``days``) as the service
            does when it keeps candles: (rows, trades, seconds, CPU seconds of both
            processes; ``split`` says how much was whose)."""
            pool, worker = pools[engine], workers[engine]
            t, mine, theirs = time.perf_counter(), time.process_time(), cpu_seconds(worker)
            cpu = mine + theirs
            n_rows = n_trades = 0
            ahead = [pool.submit(fetch_and_reduce, server.url, f, engine=engine, days=days)
                     for f, _, _ in chosen[:2]]  # fmt: skip
            done: list[tuple[Any, Reduced]] = []
            for i, (file, _, _) in enumerate(chosen):
                r = ahead[i].result()
                if i + 2 < len(chosen):
                    ahead.append(pool.submit(fetch_and_reduce, server.url, chosen[i + 2][0],
                                             engine=engine, days=days))  # fmt: skip
                if not isinstance(r, Reduced):
                    raise RuntimeError(f"{file.name} refused: {r}")
                applied = stats.apply_levels(r.first_id, r.last_id, r.levels, r.counts,
                                             r.last_row[4], days=r.days)  # fmt: skip
                if applied != r.trades:
                    raise RuntimeError(f"{file.name} not applied")
                n_rows += r.rows
                n_trades += r.trades
                done.append((chosen[i], r))
            split.update(service=time.process_time() - mine, pool=cpu_seconds(worker) - theirs)
            cpu = time.process_time() + cpu_seconds(worker) - cpu
            elapsed = time.perf_counter() - t
            for (file, levels, counts), r in done:  # checked after the clocks stop
                if not (np.array_equal(r.levels, levels) and np.array_equal(r.counts, counts)):
                    raise RuntimeError(f"{file.name}: reduced wrong")
            return n_rows, n_trades, elapsed, cpu

        def fresh(total: int, candles: bool = True) -> SymbolStats:
            keep_candles(candles)
            try:
                stats = SymbolStats("BTCUSDT")
            finally:
                keep_candles(True)
            stats.baseline(total - 1, None)
            stats.start_history(0, None)
            return stats

        total = int(sum(c.sum() for _, _, c in made))
        sample = made[:2]
        # Rounds, each: decompressing, the engines, the import, over the same files; the
        # ratios are taken within a round (minutes apart at most), then their median: the
        # machine's drift moves both sides of a ratio alike.
        per_round: list[dict[str, float]] = []  # per round: rows per CPU second of each side
        shares: list[tuple[float, float, float]] = []  # per round: trades/s, pool %, service %
        with cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as other:
            for _ in range(rounds):
                dec_rows = dec_cpu = 0.0
                for f, _, _ in sample:  # decompressing only
                    c0 = time.process_time()
                    n, _ = _decompress_rows(directory / f.path)
                    dec_rows += n
                    dec_cpu += time.process_time() - c0
                rates = {"decompress": dec_rows / dec_cpu}
                for engine in ("duckdb", "polars"):  # what a user would reach for
                    unzip = work = 0.0
                    for f, levels, _ in sample:
                        out = other.submit(engine_cpu, engine, str(directory / f.path)).result()
                        if out is None:
                            break
                        if out[2] != len(levels):
                            raise RuntimeError(f"{engine} found {out[2]} prices, not {len(levels)}")
                        unzip, work = unzip + out[0], work + out[1]
                    else:
                        rates[f"{engine} alone"] = dec_rows / work
                        rates[engine] = dec_rows / (unzip + work)
                if native:  # the same import with the reader used where there is no compiler
                    imp_rows, _, _, imp_cpu = import_files(fresh(total), sample, "polars")
                    rates["import, polars reader"] = imp_rows / imp_cpu
                # with day candles and without, A B B A: neither side always first (the
                # later one meets a warmer cache and a settled pool)
                sides: dict[bool, list[float]] = {True: [0, 0, 0, 0, 0], False: [0, 0, 0, 0, 0]}
                for candles in (True, False, False, True):
                    done_ = import_files(fresh(total, candles), sample, days=candles)
                    side = sides[candles]
                    for i, x in enumerate((*done_[:2], done_[3], split["pool"],
                                           split["service"])):  # fmt: skip
                        side[i] += x
                with_, imp_cpu = sides[True], sides[True][2]
                split.update(pool=with_[3], service=with_[4])
                rates["import"] = with_[0] / imp_cpu
                rates["import, no candles"] = sides[False][0] / sides[False][2]
                per_round.append(rates)
                shares.append((with_[1] / imp_cpu, split["pool"] / imp_cpu * 100,
                               split["service"] / imp_cpu * 100))  # fmt: skip
        engines = [e for e in ("duckdb", "polars") if e in per_round[0]]

        def row(name: str, what: str) -> Row:
            return Row(name, median([r[what] for r in per_round]), "rows/s")

        rows.append(row("decompress only (zipfile, as unzip would): rows per CPU second",
                        "decompress"))  # fmt: skip
        for engine in engines:
            rows += [
                row(f"{engine} alone on the unzipped CSV, one thread: rows per CPU second",
                    f"{engine} alone"),
                row(f"unzip + {engine}: rows per CPU second", engine),
            ]  # fmt: skip
        trades_rate, pool_share, service_share = (median(x) for x in zip(*shares, strict=True))
        if native:
            rows.append(
                row(
                    "import end to end with the polars reader (no C compiler at "
                    "install): rows per CPU second",
                    "import, polars reader",
                )
            )
        rows += [
            row("import end to end over local HTTP: rows per CPU second (both processes), "
                f"{'C' if native else 'polars'} reader", "import"),
            Row("import end to end: trades per CPU second", trades_rate, "trades/s"),
            Row("of its CPU, the pool process (download, checksum, inflate, parse, reduce)",
                pool_share, "%"),
            Row("of its CPU, the service process (merge into the median)", service_share, "%"),
        ]  # fmt: skip
        polars_reader = ["import, polars reader"] if native else []
        labels = {"decompress": "decompress", "import, polars reader": "(import, polars reader)",
                  "import, no candles": "(import without day candles)"}  # fmt: skip
        for other_side in ("decompress", *engines, *polars_reader, "import, no candles"):
            ratios = [r["import"] / r[other_side] for r in per_round]
            label = labels.get(other_side, f"(unzip + {other_side})")
            rows += [
                Row(f"import / {label}, per core, same files: median of {rounds} rounds",
                    median(ratios), "x"),
                Row(f"import / {label}: lowest round", min(ratios), "x"),
                Row(f"import / {label}: highest round", max(ratios), "x"),
            ]  # fmt: skip
        if not engines:
            rows.append(Row("DuckDB and polars not installed: pip install '.[bench]'", 0, ""))

        # the whole set while live ingest runs at 3,000 trades/s in this process
        sim = SimProcess(3000, shared_data)
        try:
            live = LiveIngest(sim)
            try:
                time.sleep(3.0)
                live.watch()
                stats = fresh(total)
                all_rows, all_trades, all_time, _ = import_files(stats, made)
            finally:
                applied = live.stop()
        finally:
            sim.stop()
        day_rows, day_bytes, days_open = _day_candle_bytes(stats)
        state = stats.median.to_state()
        expected: dict[int, int] = {}
        for _, levels, counts in made:
            for p, c in zip(levels.tolist(), counts.tolist(), strict=True):
                expected[p] = expected.get(p, 0) + c
        if state != sorted(expected.items()) or stats.view().count != total:
            raise RuntimeError("the imported statistics differ from the archives' own count")
        main_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        child_mib = peak_rss_mib(workers[None])
        polars_mib = [Row("peak memory, a pool process with the polars reader (rounds above)",
                          peak_rss_mib(workers["polars"]), "MiB")] if native else []  # fmt: skip
        rate = all_trades / all_time
        rows += [
            Row(f"import of {all_trades:,} trades ({all_rows:,} rows)", all_time, "s"),
            Row("import rate, with live ingest in the same process", rate, "trades/s"),
            Row("distinct prices after the import", len(state), "levels"),
            Row("day candles settled by the import", day_rows, "days"),
            Row(
                "stored per settled day candle (LMDB key + value)",
                day_bytes / max(1, day_rows),
                "B",
            ),
            Row("day candles still open (the last day: not over)", days_open, "days"),
            Row("live ingest meanwhile: trades applied", applied, "trades"),
            Row("live ingest meanwhile: worst reader lag", live.worst_lag_s, "s"),
            Row(
                "peak memory, this process (live ingest of 2,292 symbols and the merge)",
                main_mib,
                "MiB",
            ),
            Row("peak memory, a pool process", child_mib, "MiB"),
            *polars_mib,
            Row(
                "a whole BTCUSDT history (5e9 trades) at this rate, 1 pool process",
                5e9 / rate / 3600,
                "h",
            ),
        ]
    finally:
        for pool in pools.values():
            pool.shutdown()
        server.stop()
        if not keep:
            import shutil

            shutil.rmtree(directory, ignore_errors=True)
    return rows
