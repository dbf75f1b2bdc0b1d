"""``bench long``: 10^8 trades over fixed levels: the median's memory stays flat."""

from __future__ import annotations

import os
import random
import time

from ..median import RunningMedian
from .common import Row, median_bytes, random_walk, rss_mib

__all__ = ["bench_long"]


def bench_long(trades: int = 10**8, levels: int = 100_000) -> list[Row]:
    """RSS while 10^8 trades over a fixed set of levels go through one RunningMedian."""

    walk = random_walk(1_000_000, "61837.63", "0.01")
    distinct = sorted(set(walk))[:levels]
    cycle = [distinct[i % len(distinct)] for i in range(1_000_000)]
    random.Random(2).shuffle(cycle)
    m = RunningMedian()
    rows: list[Row] = []
    done = 0
    checkpoint = 10**6
    t0 = time.perf_counter()
    add = m.add
    while done < trades:
        for p in cycle:
            add(p)
        done += len(cycle)
        if done >= checkpoint:
            rows.append(
                Row(
                    f"process RSS after {done:.0e} trades ({m.levels:,} levels)",
                    rss_mib(os.getpid()),
                    "MiB",
                )
            )
            rows.append(
                Row(f"structure size after {done:.0e} trades", median_bytes(m) / 2**20, "MiB")
            )
            checkpoint *= 10
    rows.append(
        Row("add, averaged over the run", (time.perf_counter() - t0) / done * 1e9, "ns/add")
    )
    return rows
