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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import Row

__all__ = ["bench_scale"]

SYMBOL = "BTCUSDT"


def _rss_mib(kind: str = "VmRSS") -> float:
    """This process's resident memory (``VmRSS``), or its part not backed by files
    (``RssAnon``: the LMDB map is file-backed, page cache the kernel can drop). MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(kind + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {kind} in /proc/self/status")


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


def _child(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "medianserv.bench.scale", *args],
        check=True, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def bench_scale(prices: int = 10**7, files: int = 100) -> list[Row]:
    """Peak RSS of one process holding a median of ``prices`` distinct prices imported in
    ``files`` files and snapshotted, the store's size, and the time and peak RSS of a
    restore in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="medianserv-scale-") as tmp:
        built = _child("build", tmp, str(prices), str(files))
        restored = _child("restore", tmp)
    if (restored["count"], restored["twice"]) != (built["count"], built["twice"]):
        raise AssertionError(f"restore differs: {restored} vs {built}")
    n = f"{built['levels']:.2g} prices"
    return [
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
    ]


if __name__ == "__main__":
    if sys.argv[1] == "build":
        print(json.dumps(_build(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    else:
        print(json.dumps(_restore(sys.argv[2])))
