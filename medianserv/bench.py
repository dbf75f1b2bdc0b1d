"""``medianserv bench``: reproducible measurements of the core (never timed assertions in tests).

Each benchmark returns rows ``(name, value, unit)``; the CLI prints them as a table and can
write them as JSON. Figures vary with the machine: quote medians of several runs, or ratios
measured within one run (``slot()`` next to ``dict.get``, our parser next to ``Decimal``).
"""

from __future__ import annotations

import gc
import math
import random
import statistics
import string
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from heapq import heappush, heappushpop
from operator import attrgetter
from pathlib import Path
from typing import Any

from .median import RunningMedian
from .perfect_hash import PerfectHash
from .prices import SCALE, parse_price

__all__ = ["Row", "bench_core", "random_walk"]


@dataclass(frozen=True)
class Row:
    """One measured figure."""

    name: str
    value: float
    unit: str


def random_walk(n: int, start: str, tick: str, *, seed: int = 1) -> list[int]:
    """``n`` realistic trade prices in 1e-8 units: a geometric random walk on a tick grid.

    Like the real BTCUSDT and ETHUSDT recordings: 60% of trades repeat the previous price, the
    others move by a log-return of standard deviation 1e-5, rounded to the tick. (Floats only
    generate test data here; the statistics path never sees one.)
    """
    rnd = random.Random(seed)
    tick_units = parse_price(tick)
    ticks = parse_price(start) / tick_units
    out: list[int] = []
    append = out.append
    price = round(ticks) * tick_units
    for _ in range(n):
        if rnd.random() >= 0.6:
            ticks *= math.exp(rnd.gauss(0.0, 1e-5))
            price = max(1, round(ticks)) * tick_units
        append(price)
    return out


def _loop_ns(fn: Callable[[Any], object], inputs: Sequence[Any], repeat: int = 5) -> float:
    """ns per ``fn(x)`` over ``inputs``: best of ``repeat`` loops, less the empty loop's cost."""
    best = empty = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for x in inputs:
            fn(x)
        t1 = time.perf_counter_ns()
        for _x in inputs:
            pass
        t2 = time.perf_counter_ns()
        best, empty = min(best, t1 - t0), min(empty, t2 - t1)
    return (best - empty) / len(inputs)


def median_bytes(m: RunningMedian) -> int:
    """Deep size of a RunningMedian: its lists, dicts and the int objects they own."""
    size = sys.getsizeof(m)
    for part in (m._low, m._high, m._low_counts, m._high_counts):
        size += sys.getsizeof(part)
    for counts in (m._low_counts, m._high_counts):
        for key, c in counts.items():
            size += sys.getsizeof(key)
            if not -5 <= c <= 256:  # CPython shares small ints
                size += sys.getsizeof(c)
    return size


def two_heaps_bytes(values: Sequence[int]) -> int:
    """Memory of the naive running median that keeps every value in two heaps."""
    low: list[int] = []
    high: list[int] = []
    for v in values:
        if len(low) == len(high):
            heappush(low, -heappushpop(high, v))
        else:
            heappush(high, -heappushpop(low, -v))
    size = sys.getsizeof(low) + sys.getsizeof(high)
    seen: set[int] = set()
    for x in (*low, *high):
        if id(x) not in seen:  # equal prices from one list may share an int object
            seen.add(id(x))
            size += sys.getsizeof(x)
    return size


def _bench_median(rows: list[Row], n: int, start: str, tick: str, label: str) -> None:
    prices = random_walk(n, start, tick)
    gc.collect()
    m = RunningMedian()
    add = m.add
    t0 = time.perf_counter_ns()
    for p in prices:
        add(p)
    elapsed = time.perf_counter_ns() - t0
    rows.append(Row(f"median add, {label}, n={n:.0e}", elapsed / n, "ns/add"))
    read = attrgetter("twice_median")  # C-level getter: little overhead around the property
    rows.append(Row(f"median read, {label}, n={n:.0e}", _loop_ns(read, [m] * 10**5), "ns/read"))
    rows.append(Row(f"distinct levels, {label}, n={n:.0e}", m.levels, "levels"))
    rows.append(Row(f"memory per level, {label}, n={n:.0e}", median_bytes(m) / m.levels, "B/level"))


def _decimal_units(text: str) -> int:
    return int(Decimal(text) * SCALE)


def bench_core(sizes: Sequence[int] = (10**6, 10**7), shared_data: Path | None = None) -> list[Row]:
    """Median add/read, memory per level, price parsing, perfect hash build and lookup."""
    rows: list[Row] = []
    for n in sizes:
        _bench_median(rows, n, "61837.63", "0.01", "tick 0.01")
        _bench_median(rows, n, "0.06512345", "0.00000001", "tick 1e-8")

    n_mem = min(sizes[0], 10**6)
    walk = random_walk(n_mem, "61837.63", "0.01")
    m = RunningMedian()
    for p in walk:
        m.add(p)
    rows.append(
        Row(f"two heaps of every price, n={n_mem:.0e}", two_heaps_bytes(walk) / n_mem, "B/trade")
    )
    rows.append(Row(f"RunningMedian, n={n_mem:.0e}", median_bytes(m) / n_mem, "B/trade"))

    texts = [f"{p // SCALE}.{p % SCALE:08d}" for p in walk[:100_000]]  # Binance's 8-decimal form
    rows.append(Row("parse_price", _loop_ns(parse_price, texts), "ns/parse"))
    rows.append(Row("int(Decimal(s) * 10**8)", _loop_ns(_decimal_units, texts), "ns/parse"))

    key_sets: list[tuple[str, list[str]]] = []
    info = (shared_data or Path()) / "exchangeInfo-2023-09-08.json"
    if shared_data is not None and info.exists():
        import json

        key_sets.append(
            ("real 2,292 symbols", [s["symbol"] for s in json.loads(info.read_text())["symbols"]])
        )
    rnd = random.Random(7)
    alphabet = string.ascii_uppercase + string.digits
    generated = dict.fromkeys(
        "".join(rnd.choices(alphabet, k=rnd.randint(5, 12))) for _ in range(100_000)
    )
    key_sets.append((f"{len(generated):,} generated keys", list(generated)))
    for label, keys in key_sets:
        builds = []
        for _ in range(3):
            t0 = time.perf_counter()
            ph = PerfectHash.build(keys)
            builds.append(time.perf_counter() - t0)
        rows.append(Row(f"perfect hash build, {label}", statistics.median(builds) * 1e3, "ms"))
        rows.append(Row(f"load factor, {label}", len(ph) / ph.size, "keys/slot"))
        # fresh str objects, as a decoder produces them (no cached hash)
        probes = [k.encode().decode() for k in (keys * (100_000 // len(keys) + 1))[:100_000]]
        d = {k: i for i, k in enumerate(keys)}
        rows.append(Row(f"slot(), {label}", _loop_ns(ph.slot, probes), "ns/lookup"))
        rows.append(Row(f"dict.get, {label}", _loop_ns(d.get, probes), "ns/lookup"))
    return rows
