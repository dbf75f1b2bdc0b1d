"""``bench scale``: one symbol's median at BTCUSDT's scale, 10 million distinct prices.

A whole history of BTCUSDT on its 0.01 tick is about 10 million distinct prices. This suite
imports that many into one symbol as the history import does (whole files reduced to pairs
through :meth:`SymbolStats.apply_levels`, each file a band of the price range, the bands in
an order that jumps over the whole range, so the median crosses it again and again), with
live trades in between and a snapshot to LMDB every few files, in a process of its own;
then restores the store in another fresh process, as a restart does. Each process reports
its peak RSS: the figure the service process would show.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path
from typing import Any

from .common import Row, rss_mib

__all__ = ["bench_scale"]

SYMBOL = "BTCUSDT"


def _rss_mib(kind: str = "VmRSS") -> float:
    """This process's resident memory (``VmRSS``), or its part not backed by files
    (``RssAnon``: the LMDB map is file-backed, page cache the kernel can drop). MiB."""
    return rss_mib(os.getpid(), kind)


class _Peaks:
    """Samples this process's RSS and RssAnon every 10 ms in a thread of its own, keeping
    the highest of each (``ru_maxrss`` alone would count the LMDB map's file pages)."""

    def __init__(self) -> None:
        import threading

        self.rss = self.anon = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peaks", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.sample()

    def sample(self) -> None:
        self.rss = max(self.rss, _rss_mib())
        self.anon = max(self.anon, _rss_mib("RssAnon"))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def _build(store_dir: str, prices: int, files: int) -> dict[str, Any]:
    """Child: import ``prices`` distinct prices in ``files`` files, snapshotting as it goes."""
    import numpy as np

    from ..store import Store
    from ..symbols import SymbolStats

    start_mib = _rss_mib()
    # files are bands of the range (a month trades within a band) arriving in an order
    # that jumps over the whole range, so the median crosses it again and again; each is
    # made when it is applied, so the process holds what the service would, no more
    edges = np.linspace(0, prices, files + 1).astype(np.int64).tolist()

    def band(b: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        index = np.arange(edges[b], edges[b + 1], dtype=np.int64)
        return (index * 100 + 1_000_000).astype(np.uint64), index % 5 + 1  # times 1..5

    total = sum(int(band(b)[1].sum()) for b in range(files))
    order = np.random.default_rng(1).permutation(files)
    peaks = _Peaks()
    stats = SymbolStats(SYMBOL)
    stats.baseline(total - 1, 2_000_000_000_000)
    stats.start_history(0, 1_500_000_000_000)
    store = Store.open(Path(store_dir))
    lo, live_id, snapshots = 0, total, 0
    t0, c0 = time.perf_counter(), time.process_time()
    snap_s = 0.0
    for k, b in enumerate(order.tolist()):
        p, c = band(b)
        hi = lo + int(c.sum()) - 1
        assert stats.apply_levels(lo, hi, p, c, 1_500_000_000_000 + k, last_price=int(p[-1])) > 0
        lo = hi + 1
        for i in range(100):  # live trades meanwhile
            stats.apply(live_id, 1_000_000 + 100 * ((k * 7919 + i * 104729) % prices), 0)
            live_id += 1
        if k % 10 == 9 or k == files - 1:
            s0 = time.perf_counter()
            state = stats.harvest()
            if state is not None:
                store.save([state])
                snapshots += 1
            snap_s += time.perf_counter() - s0
    build_s, build_cpu = time.perf_counter() - t0, time.process_time() - c0
    view = stats.view()
    store.close()
    peaks.stop()
    anon_mib = _rss_mib("RssAnon")
    size = sum(f.stat().st_size for f in Path(store_dir).rglob("*") if f.is_file())
    return {
        "start_mib": start_mib, "peak_mib": peaks.rss, "peak_anon": peaks.anon,
        "end_mib": _rss_mib(), "anon_mib": anon_mib, "levels": stats.median.levels,
        "count": view.count, "twice": view.twice_median,
        "build_s": build_s, "build_cpu": build_cpu, "snapshot_s": snap_s,
        "snapshots": snapshots, "store_bytes": size,
    }  # fmt: skip


def _restore(store_dir: str) -> dict[str, Any]:
    """Child: what a restart does: load the store and rebuild every symbol."""
    from ..store import Store
    from ..symbols import SymbolStats

    start_mib = _rss_mib()
    peaks = _Peaks()
    t0 = time.perf_counter()
    store = Store.open(Path(store_dir), readonly=True)
    states = store.load()
    loaded_s = time.perf_counter() - t0
    known = []
    for state in states:
        known.append(SymbolStats.restore(state))
        state.levels = []
    restore_s = time.perf_counter() - t0
    store.close()
    peaks.stop()
    view = known[0].view()  # the one symbol of ``bench scale``
    return {
        "symbols": len(known), "count_all": sum(k.view().count for k in known),
        "start_mib": start_mib, "peak_mib": peaks.rss, "peak_anon": peaks.anon,
        "end_mib": _rss_mib(), "anon_mib": _rss_mib("RssAnon"), "load_s": loaded_s,
        "restore_s": restore_s, "count": view.count, "twice": view.twice_median,
    }  # fmt: skip


def _as_format_6(store_dir: str) -> dict[str, Any]:
    """Child: the store's levels rewritten as formats 1-6 kept them (a key each in
    ``levels``, no batch) and its format set to 6: what a start of this release folds."""
    import lmdb

    from .. import store as store_module
    from ..symbols import LevelArrays

    store = store_module.Store.open(Path(store_dir), readonly=True)
    states = store.load()
    store.close()
    path = Path(store_dir) / "medianserv.lmdb"
    size = (path / "data.mdb").stat().st_size
    env = lmdb.open(str(path), max_dbs=6, map_size=8 * size + (1 << 30))
    levels, batches, meta = (env.open_db(name) for name in (b"levels", b"batches", b"meta"))
    n = 0
    with env.begin(write=True) as txn:
        txn.drop(batches, delete=False)
        for state in states:
            prefix = store_module.symbol_prefix(state.symbol)
            assert isinstance(state.levels, LevelArrays)  # as a load makes them
            prices, counts = state.levels.prices.tolist(), state.levels.counts.tolist()
            txn.cursor(db=levels).putmulti(
                (prefix + p.to_bytes(8, "big"), c.to_bytes(8, "big"))
                for p, c in zip(prices, counts, strict=True)
            )
            n += len(prices)
        txn.put(b"format", b"6", db=meta)
    env.close()
    return {"levels": n, "store_bytes": (path / "data.mdb").stat().st_size}


def _start(store_dir: str) -> dict[str, Any]:
    """Child: what the service's start does with its store: open it for writing (a store of
    an earlier format upgraded, its levels folded), load it and rebuild every symbol."""
    from ..store import Store
    from ..symbols import SymbolStats

    t0 = time.perf_counter()
    store = Store.open(Path(store_dir))
    opened_s = time.perf_counter() - t0
    known = [SymbolStats.restore(state) for state in store.load()]
    start_s = time.perf_counter() - t0
    store.close()
    view = known[0].view()
    return {
        "open_s": opened_s, "start_s": start_s, "folded": store.folded,
        "peak_mib": _rss_mib("VmHWM"), "count": view.count, "twice": view.twice_median,
        "store_bytes": (Path(store_dir) / "medianserv.lmdb" / "data.mdb").stat().st_size,
    }  # fmt: skip


class _Collections:
    """The garbage collector's pauses (any thread stops for them, lock or no lock): the
    longest of each generation, and how many ran."""

    def __init__(self) -> None:
        self.worst_ns = [0, 0, 0]
        self.n = self._t = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t = time.perf_counter_ns()
        else:
            self.n += 1
            g = info["generation"]
            self.worst_ns[g] = max(self.worst_ns[g], time.perf_counter_ns() - self._t)


class _TimedLock:
    """A symbol's lock that records how long each hold lasted: wall time (what a thread
    waiting for it feels, preemptions included), this thread's CPU time (the work done
    under it) and whether a garbage collection ran inside it. Kept in an untracked array:
    a list of tuples would grow the collector's work under the very holds it times."""

    def __init__(self, lock: Any, collections: _Collections) -> None:
        self.lock, self.collections = lock, collections
        self.holds = array("q")  # wall ns, CPU ns, collections, wall ns, ...
        self._t = self._c = self._n = 0

    def __enter__(self) -> None:
        self.lock.acquire()
        self._n = self.collections.n
        self._t, self._c = time.perf_counter_ns(), time.thread_time_ns()

    def __exit__(self, *exc: object) -> None:
        wall, cpu = time.perf_counter_ns() - self._t, time.thread_time_ns() - self._c
        self.lock.release()
        self.holds.extend((wall, cpu, self.collections.n - self._n))

    def take(self) -> array[int]:
        out, self.holds = self.holds, array("q")
        return out


def _locks(levels: int, compiled: bool, share: float = 1.0) -> dict[str, Any]:
    """Child: every operation on one symbol holding ``levels`` distinct prices, and how long
    each held the symbol's lock: single trades (near the median and far beyond the heaps),
    aggregates of 2 to 1,000 trades and batches of 1,000 of them (a backfilled page), a
    batch so large it moves the median across half the levels, files of 300,000 pairs (a
    month of BTCUSDT) and the snapshot's harvest after each. ``share`` of each operation's
    repetitions and of a file's pairs (1: all; a smoke test takes a tenth)."""

    def part(n: int) -> int:
        return max(1, int(n * share))

    import numpy as np

    from ..median import CRunningMedian, PyRunningMedian
    from ..quantiles import parse_quantiles
    from ..symbols import Row as Trade
    from ..symbols import SymbolStats, use_compiled

    use_compiled(compiled)
    median = CRunningMedian if compiled else PyRunningMedian
    rng = np.random.default_rng(7)
    step = 100
    prices = (np.arange(levels, dtype=np.uint64) * step + 10**9).astype(np.uint64)
    counts = rng.integers(1, 6, levels).astype(np.int64)
    stats = SymbolStats(SYMBOL)
    stats.median = median.from_arrays(prices, counts)
    top = 10**12
    stats.baseline(top, 2_000_000_000_000)
    stats.start_history(0, 1_500_000_000_000)  # ids 0..top: the front, for files
    collections = _Collections()
    timed = _TimedLock(stats.lock, collections)
    stats.lock = timed
    out: dict[str, Any] = {}
    span = levels * step
    tid = top + 1
    mid = 10**9 + span // 2
    singles = part(100_000)
    near = (mid + rng.integers(-3000, 3000, singles) * step // 3).tolist()
    far = (10**9 + rng.integers(0, span, singles) // step * step + rng.integers(0, 2, singles)
           ).tolist()  # fmt: skip
    mixed = [x for pair in zip(near, far, strict=True) for x in pair]
    import gc

    gc.collect()
    gc.freeze()  # as the service does after start-up: no collection walks what lives on
    gc.callbacks.append(collections)

    def record(name: str, holds: array[int] | None = None) -> None:
        holds = timed.take() if holds is None else holds
        wall = sorted(holds[0::3])
        calm = [w for w, n in zip(holds[0::3], holds[2::3], strict=True) if not n]
        out[name] = {"n": len(wall), "worst_ms": wall[-1] / 1e6,
                     "p9999_ms": wall[min(len(wall) - 1, int(len(wall) * 0.9999))] / 1e6,
                     "worst_cpu_ms": max(holds[1::3]) / 1e6,
                     "worst_calm_ms": max(calm, default=0) / 1e6}  # fmt: skip

    for p in mixed:
        stats.apply(tid, int(p), 0)
        tid += 1
    record("add")

    def gap(k: int) -> int:
        """The stream jumps ``k`` ids: they are missing, for rows to fill. The first id."""
        nonlocal tid
        stats.apply(tid + k, int(near[tid % len(near)]), 0)
        first, tid = tid, tid + k + 1
        return first

    holds = array("q")
    for _ in range(part(20_000)):
        k = int(rng.integers(2, 1001))
        first = gap(k)
        timed.take()
        stats.apply_rows([Trade(first, first + k - 1, int(far[first % len(far)]), 0)])
        holds += timed.take()
    record("add with times", holds)
    holds = array("q")
    for _ in range(part(100)):
        sizes = rng.integers(1, 4, 1000).tolist()
        first = gap(sum(sizes))
        timed.take()
        rows = []
        for k in sizes:
            rows.append(Trade(first, first + k - 1, int(far[first % len(far)]), 0))
            first += k
        stats.apply_rows(rows)
        holds += timed.take()
    record("batch of 1,000 aggregates", holds)
    holds = array("q")
    for edge in (0, 10**9 + span + step, 0, 10**9 + span + step):
        k = stats.median.count  # the median crosses about half the levels
        first = gap(k)
        timed.take()
        assert stats.apply_rows([Trade(first, first + k - 1, edge, 0)]) == k
        holds += timed.take()
    record("one aggregate moving the median across half the levels", holds)
    lo = 0
    for _ in range(5):
        pairs = np.unique(10**9 + rng.integers(0, span, part(300_000)) // 10 * 10).astype(np.uint64)
        c = rng.integers(1, 30, len(pairs)).astype(np.int64)
        hi = lo + int(c.sum()) - 1
        assert stats.apply_levels(lo, hi, pairs, c, 1_600_000_000_000, last_price=int(pairs[-1]))
        lo = hi + 1
        out.setdefault("_files", array("q")).extend(timed.take())
        for _ in range(1000):
            stats.apply(tid, int(near[tid % len(near)]), 0)
            tid += 1
        timed.take()
        assert stats.harvest() is not None
        out.setdefault("_harvests", array("q")).extend(timed.take())
    record(f"file merge ({part(300_000):,} pairs)", out.pop("_files"))
    record("snapshot harvest", out.pop("_harvests"))
    # quantile queries (15 q's) while live trades of the same symbol go on in another thread
    qs = parse_quantiles("0,0.001,0.01,0.05,0.1,0.25,0.333,0.5,0.667,0.75,0.9,0.95,0.99,0.999,1")
    sys.setswitchinterval(0.001)  # as the service sets it
    done = threading.Event()

    def ingest() -> None:
        nonlocal tid
        while not done.is_set():
            stats.apply(tid, int(near[tid % len(near)]), 0)
            tid += 1

    feeder = threading.Thread(target=ingest, daemon=True)
    feeder.start()
    times = []
    for _ in range(part(2000)):
        t = time.perf_counter_ns()
        stats.quantiles(qs)
        times.append(time.perf_counter_ns() - t)
        time.sleep(0.0005)
    done.set()
    feeder.join()
    timed.take()
    times.sort()
    out["quantiles"] = {"n": len(times), "p99_ms": times[int(len(times) * 0.99)] / 1e6,
                        "worst_ms": times[-1] / 1e6}  # fmt: skip
    gc.callbacks.remove(collections)
    out["collections"] = {
        "n": collections.n,
        "worst_ms": max(collections.worst_ns) / 1e6,
        "by_generation_ms": [w / 1e6 for w in collections.worst_ns],
    }
    stats.median._check()
    out["levels"] = stats.median.levels
    return out


def _child(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "medianserv.bench.scale", *args],
        check=True, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def bench_scale(prices: int = 10**7, files: int = 100, share: float = 1.0) -> list[Row]:
    """How long each operation holds a symbol's lock at a tenth of ``prices`` and at
    ``prices`` distinct prices (worst, 99.99th percentile, CPU under it), with the compiled
    median and the pure one; peak RSS of one process holding a median of ``prices`` distinct
    prices imported in ``files`` files and snapshotted, the store's size, and the time and
    peak RSS of a restore in a fresh process. ``share``: of the lock holds' repetitions (see
    :func:`_locks`)."""
    from ..median import CRunningMedian

    rows: list[Row] = []
    for compiled in [True, False] if CRunningMedian is not None else [False]:
        twin = "C" if compiled else "py"
        for size in sorted({max(1000, prices // 10), prices}):
            held = _child("locks", str(size), str(int(compiled)), str(share))
            n = f"{held['levels']:.2g} levels, {twin}"
            q = held.pop("quantiles")
            gc = held.pop("collections")
            rows.append(Row(f"garbage collection (stops every thread), {n}: worst",
                            gc["worst_ms"], f"ms ({gc['n']:,} collections)"))  # fmt: skip
            rows.append(Row(f"quantile query (15 q's), {n}: 99%", q["p99_ms"], "ms"))
            rows.append(Row(f"quantile query (15 q's), {n}: worst", q["worst_ms"],
                            f"ms ({q['n']:,} queries)"))  # fmt: skip
            for op, h in held.items():
                if isinstance(h, dict):
                    rows.append(Row(f"lock held, {op}, {n}: worst", h["worst_ms"], "ms"))
                    rows.append(Row(f"lock held, {op}, {n}: 99.99%", h["p9999_ms"], "ms"))
                    rows.append(Row(f"lock held, {op}, {n}: worst with no collection in it",
                                    h["worst_calm_ms"], "ms"))  # fmt: skip
                    rows.append(Row(f"lock held, {op}, {n}: worst CPU", h["worst_cpu_ms"],
                                    f"ms ({h['n']:,} holds)"))  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="medianserv-scale-") as tmp:
        built = _child("build", tmp, str(prices), str(files))
        restored = _child("restore", tmp)
        old = _child("format6", tmp)
        unfolded = _child("restore", tmp)  # read-only: the keys read as they are
        first, then = _child("start", tmp), _child("start", tmp)
    for got in (restored, unfolded, first, then):
        if (got["count"], got["twice"]) != (built["count"], built["twice"]):
            raise AssertionError(f"restore differs: {got} vs {built}")
    if first["folded"] != old["levels"] or then["folded"]:
        raise AssertionError(f"folded {first['folded']} and {then['folded']} of {old['levels']}")
    n = f"{built['levels']:.2g} prices"
    return [
        *rows,
        Row(f"scale: distinct prices held, {n}", built["levels"], "levels"),
        Row(f"scale: trades held, {n}", built["count"], "trades"),
        Row(f"scale: import {files} files, wall, {n}", built["build_s"], "s"),
        Row(f"scale: import, of which snapshots, {n}", built["snapshot_s"], "s"),
        Row(f"scale: process RSS at start (interpreter, numpy), {n}", built["start_mib"], "MiB"),
        Row(f"scale: process peak RSS while importing, {n}", built["peak_mib"], "MiB"),
        Row(f"scale: peak not file-backed (RssAnon), {n}", built["peak_anon"], "MiB"),
        Row(f"scale: process RSS after importing, {n}", built["end_mib"], "MiB"),
        Row(f"scale: of which not file-backed (RssAnon), {n}", built["anon_mib"], "MiB"),
        Row(
            f"scale: RSS per price level above start, {n}",
            (built["end_mib"] - built["start_mib"]) * 2**20 / built["levels"],
            "B/level",
        ),
        Row(f"scale: LMDB store size, {n}", built["store_bytes"] / 2**20, "MiB"),
        Row(f"scale: restore (load + rebuild) in a fresh process, {n}", restored["restore_s"], "s"),
        Row(f"scale: of which reading LMDB, {n}", restored["load_s"], "s"),
        Row(f"scale: restoring process peak RSS, {n}", restored["peak_mib"], "MiB"),
        Row(f"scale: peak not file-backed (RssAnon), restoring, {n}", restored["peak_anon"], "MiB"),
        Row(f"scale: restoring process RSS after, {n}", restored["end_mib"], "MiB"),
        Row(f"scale: of which not file-backed (RssAnon), {n}", restored["anon_mib"], "MiB"),
        Row(
            f"scale: the store as formats 1-6 kept it (a key a level), size, {n}",
            old["store_bytes"] / 2**20,
            "MiB",
        ),
        Row(
            f"scale: its restore, read-only (as the build before read it at every start), {n}",
            unfolded["restore_s"],
            "s",
        ),
        Row(f"scale: its first start (upgrade, fold, load, rebuild), {n}", first["start_s"], "s"),
        Row(f"scale: of which the upgrade and fold, {n}", first["open_s"], "s"),
        Row(f"scale: the first start's peak RSS, {n}", first["peak_mib"], "MiB"),
        Row(f"scale: the next start, {n}", then["start_s"], "s"),
        Row(f"scale: the store's size after the fold, {n}", then["store_bytes"] / 2**20, "MiB"),
    ]


if __name__ == "__main__":
    if sys.argv[1] == "build":
        print(json.dumps(_build(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    elif sys.argv[1] == "format6":
        print(json.dumps(_as_format_6(sys.argv[2])))
    elif sys.argv[1] == "start":
        print(json.dumps(_start(sys.argv[2])))
    elif sys.argv[1] == "locks":
        print(json.dumps(_locks(int(sys.argv[2]), sys.argv[3] == "1", float(sys.argv[4]))))
    else:
        print(json.dumps(_restore(sys.argv[2])))
