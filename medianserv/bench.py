"""``medianserv bench``: reproducible measurements of the core (never timed assertions in tests).

Each benchmark returns rows ``(name, value, unit)``; the CLI prints them as a table and can
write them as JSON. Figures vary with the machine: quote medians of several runs, or ratios
measured within one run (``slot()`` next to ``dict.get``, our parser next to ``Decimal``).
"""

from __future__ import annotations

import gc
import itertools
import math
import os
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
    low, high = _two_heaps(values)
    size = sys.getsizeof(low) + sys.getsizeof(high)
    seen: set[int] = set()
    for x in (*low, *high):
        if id(x) not in seen:  # equal prices from one list may share an int object
            seen.add(id(x))
            size += sys.getsizeof(x)
    return size


def _two_heaps(values: Sequence[int]) -> tuple[list[int], list[int]]:
    """The naive baseline: every value in two heaps (low negated, high)."""
    low: list[int] = []
    high: list[int] = []
    for v in values:
        if len(low) == len(high):
            heappush(low, -heappushpop(high, v))
        else:
            heappush(high, -heappushpop(low, -v))
    return low, high


def _two_heaps_median(values: Sequence[int]) -> int:
    """Twice the median by the two-heaps baseline."""
    low, high = _two_heaps(values)
    return -2 * low[0] if len(low) > len(high) else high[0] - low[0]


def _sorted_list_median(values: Sequence[int]) -> int:
    """The other naive baseline: a sorted list kept with insort (O(n) per insert)."""
    from bisect import insort

    out: list[int] = []
    for v in values:
        insort(out, v)
    n = len(out)
    return 2 * out[n // 2] if n % 2 else out[n // 2 - 1] + out[n // 2]


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
    per_trade = two_heaps_bytes(walk) / n_mem
    rows.append(Row(f"memory, two heaps of every price, n={n_mem:.0e}", per_trade, "B/trade"))
    rows.append(Row(f"memory, RunningMedian, n={n_mem:.0e}", median_bytes(m) / n_mem, "B/trade"))
    for n in (10**5, 10**6, 10**7):
        if n > max(sizes):
            break
        prices = random_walk(n, "61837.63", "0.01")
        for label, naive in (("two heaps of every price", _two_heaps_median),
                             ("sorted list with insort", _sorted_list_median)):  # fmt: skip
            if naive is _sorted_list_median and n > 10**5:
                continue  # O(n) per insert: 10^6 trades would take many minutes
            start = time.perf_counter_ns()
            naive(prices)
            ns = (time.perf_counter_ns() - start) / n
            rows.append(Row(f"add, {label}, n={n:.0e}", ns, "ns/add"))

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


# -- end-to-end benchmarks: the simulator in a second process, over loopback ---------------------


class _SimProcess:
    """``medianserv simulate`` in a subprocess (its own GIL and core), paused at start."""

    def __init__(self, tps: float, shared_data: Path | None, extra: Sequence[str] = ()) -> None:
        import subprocess

        info = (shared_data or Path()) / "exchangeInfo-2023-09-08.json"
        cmd = [sys.executable, "-m", "medianserv", "simulate", "--port", "0", "--tps", str(tps),
               "--set", "paused=true", "--set", "history_limit=20000", *extra]  # fmt: skip
        if shared_data is not None and info.exists():
            cmd += ["--exchange-info", str(info)]
        else:
            cmd += ["--symbols", "2292"]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.rest_url = line.split("REST ")[1].split()[0]
        self.ws_url = line.split("WebSocket ")[1].split()[0]
        self.archive_url = line.split("archives ")[1].split()[0]

    def control(self, action: str) -> Any:
        import json
        import urllib.request

        with urllib.request.urlopen(f"{self.rest_url}/_sim/{action}", timeout=30) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(20)


class _ServiceProcess:
    """``medianserv`` (the real command line) in a subprocess against a simulator, logging to
    a file (a full pipe would stall it)."""

    def __init__(self, sim: _SimProcess, data_dir: Path, extra: Sequence[str] = ()) -> None:
        import subprocess

        self.log_path = data_dir / f"service-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "medianserv", "--host", "127.0.0.1", "--port", "0",
             "--data-dir", str(data_dir), "--rest-url", sim.rest_url, "--ws-url", sim.ws_url,
             *extra],
            stderr=self._log,
        )  # fmt: skip
        self.started = time.monotonic()
        self.base = f"http://127.0.0.1:{self._port()}"

    def _port(self, timeout: float = 60.0) -> int:
        import re

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"API listening on http://[^:]+:(\d+)", self.log_path.read_text())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the service did not start: {self.log_path.read_text()[-2000:]}")

    def get(self, path: str) -> Any:
        import json
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.base + path, timeout=30) as resp:
                body = resp.read()
        except urllib.error.HTTPError as err:
            body = err.read()
        return body.decode() if path == "/metrics" else json.loads(body)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.get("/-/ready").get("ready"):
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not get ready")
            time.sleep(0.1)

    def metric(self, name: str) -> dict[str, float]:
        """Every sample of metric ``medianserv_<name>``, by label set ('' when none)."""
        import re

        out = {}
        for m in re.finditer(rf"^medianserv_{name}(\{{[^}}]*\}})? (\S+)$", self.get("/metrics"),
                             re.M):  # fmt: skip
            out[m.group(1) or ""] = float(m.group(2))
        return out

    def stop(self, sig: int = 2) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)
        self._log.close()


def run_bare_client(ws_url: str, rest_url: str, seconds: float) -> None:
    """The baseline, in a process of its own: websockets' sync client on the same streams over
    the same number of connections as medianserv, each thread doing ``recv()`` and
    ``json.loads`` only. Prints ``ready`` once subscribed, then ``<monotonic> <frames>`` every
    0.2 s on stdout, for ``seconds``."""
    import json
    import threading
    import urllib.request

    from websockets.sync.client import connect

    from .streams import plan_connections, stream_of

    with urllib.request.urlopen(rest_url + "/api/v3/exchangeInfo", timeout=30) as resp:
        symbols = [x["symbol"] for x in json.loads(resp.read())["symbols"]]
    groups = [sorted(g) for g in plan_connections([stream_of(s) for s in symbols], 1024)]
    counts = [0] * len(groups)
    subscribed = threading.Barrier(len(groups) + 1)
    stop = threading.Event()

    def run(i: int, group: list[str]) -> None:
        with connect(
            ws_url + "/stream", max_size=2**20, ping_interval=None, max_queue=(4096, 1024)
        ) as ws:
            for j in range(0, len(group), 150):  # 2 a second: well under Binance's 5
                ws.send(json.dumps({"method": "SUBSCRIBE", "params": group[j : j + 150], "id": j}))
                time.sleep(0.5)
            subscribed.wait()
            while not stop.is_set():
                try:
                    json.loads(ws.recv(timeout=0.2))
                    counts[i] += 1
                except TimeoutError:
                    continue

    threads = [threading.Thread(target=run, args=(i, g), daemon=True) for i, g in enumerate(groups)]
    for t in threads:
        t.start()
    subscribed.wait()
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.2)
        print(time.monotonic(), sum(counts), flush=True)
    stop.set()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_ingest(seconds: float = 10.0, shared_data: Path | None = None) -> list[Row]:
    """medianserv and the bare sync client side by side, at the same time, each in its own
    process with its own connections to one simulator that floods every connection as fast as
    it reads (the real symbol set), once both are subscribed: trades/s of each, their ratio,
    CPU per trade, and the worst pong latency the simulator measured for each (it pings every
    5 s). A run in which either client lost a connection is refused."""
    import subprocess
    import tempfile
    import threading

    rows: list[Row] = []
    sim = _SimProcess(0, shared_data, ["--set", "flood=true", "--set", "ping_interval=5"])
    bare: subprocess.Popen[str] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        svc = _ServiceProcess(sim, Path(tmp))
        try:
            bare = subprocess.Popen(
                [sys.executable, "-m", "medianserv", "bench", "bare", "--url", sim.ws_url,
                 "--rest-url", sim.rest_url, "--seconds", str(seconds + 120)],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert bare.stdout is not None
            samples: list[tuple[float, int]] = []
            if bare.stdout.readline().strip() != "ready":
                raise RuntimeError("the bare client did not subscribe")

            def collect() -> None:
                assert bare is not None and bare.stdout is not None
                for line in bare.stdout:
                    t, n = line.split()
                    samples.append((float(t), int(n)))

            threading.Thread(target=collect, daemon=True).start()
            svc.wait_ready()
            symbols = svc.get("/-/status")["symbols"]
            rows.append(Row("symbols / connections, each client", symbols, "/ 3"))
            sim.control("resume")  # both subscribed: the flood starts for both at once
            time.sleep(2.0)  # warm up

            def applied() -> float:
                return svc.metric("trades_applied_total")[""]

            def bare_count(at: float) -> tuple[float, int]:
                while not samples or samples[-1][0] < at:
                    time.sleep(0.05)
                return min(samples, key=lambda s: abs(s[0] - at))

            t0, a0 = time.monotonic(), applied()
            c0 = (_cpu_seconds(svc.proc.pid), _cpu_seconds(bare.pid))
            sent0 = sim.control("stats")["frames_sent"]
            time.sleep(seconds)
            t1, a1 = time.monotonic(), applied()
            c1 = (_cpu_seconds(svc.proc.pid), _cpu_seconds(bare.pid))
            sent1 = sim.control("stats")["frames_sent"]
            (bt0, b0), (bt1, b1) = bare_count(t0), bare_count(t1)
            ours, base = (a1 - a0) / (t1 - t0), (b1 - b0) / (bt1 - bt0)
            stats = sim.control("stats")
            if stats["violations"] or stats["connections_open"] != 2 * 3:
                raise RuntimeError(f"a client lost a connection; the run does not count: {stats}")
            latency = stats["pong_latency_by_agent"]
            rows += [
                Row("simulator: frames sent, both clients", (sent1 - sent0) / (t1 - t0),
                    "frames/s"),
                Row("medianserv ingest, end to end", ours, "trades/s"),
                Row("bare sync client (recv + json.loads), same time", base, "trades/s"),
                Row("medianserv / bare client, same run", ours / base if base else 0.0, "x"),
                Row("medianserv CPU per trade (whole process)",
                    (c1[0] - c0[0]) / max(1.0, a1 - a0) * 1e6, "us/trade"),
                Row("bare client CPU per trade", (c1[1] - c0[1]) / max(1.0, b1 - b0) * 1e6,
                    "us/trade"),
                Row("medianserv: worst pong latency under the flood",
                    1000 * latency.get("medianserv", -0.001), "ms"),
                Row("bare client: worst pong latency under the flood",
                    1000 * max((v for k, v in latency.items() if k != "medianserv"), default=0),
                    "ms"),
                Row("Binance limit violations", sum(stats["violations"].values()), "violations"),
            ]  # fmt: skip
        finally:
            if bare is not None:
                bare.kill()
                bare.wait(10)
            svc.stop()
            sim.stop()
    return rows


def bench_snapshot(
    levels: int = 10_000_000, shared_data: Path | None = None, ingest_rate: float = 100_000.0
) -> list[Row]:
    """Snapshot, incremental snapshots while trades are applied at ``ingest_rate`` (about the
    end-to-end maximum, see bench_ingest) with the reader stall they cause, and restore."""
    import tempfile
    import threading

    from .snapshotter import Snapshotter
    from .store import Store
    from .symbols import SymbolStats

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
        s.dirty_levels = set(range(100, (k + 1) * 100, 100))
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


def bench_long(trades: int = 10**8, levels: int = 100_000) -> list[Row]:
    """RSS while 10^8 trades over a fixed set of levels go through one RunningMedian."""

    def rss_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

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
                Row(f"process RSS after {done:.0e} trades ({m.levels:,} levels)", rss_mib(), "MiB")
            )
            rows.append(
                Row(f"structure size after {done:.0e} trades", median_bytes(m) / 2**20, "MiB")
            )
            checkpoint *= 10
    rows.append(
        Row("add, averaged over the run", (time.perf_counter() - t0) / done * 1e9, "ns/add")
    )
    return rows


def load_generate(
    base_url: str, paths: Sequence[str], rps: float, seconds: float, workers: int = 16
) -> dict[str, Any]:
    """Open-loop HTTP load: ``rps`` GETs a second spread over ``workers`` keep-alive
    connections for ``seconds``; latency is measured from each request's scheduled time, so a
    slow server cannot hide its queueing (no coordinated omission)."""
    import http.client
    import threading
    from urllib.parse import urlsplit

    target = urlsplit(base_url)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = time.perf_counter() + 0.2
    per_worker = rps / workers

    def worker(w: int) -> None:
        conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=10)
        rnd = random.Random(w)
        mine: list[float] = []
        n = 0
        while True:
            due = start + n / per_worker + w / rps
            if due - start > seconds:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            try:
                conn.request("GET", rnd.choice(paths))
                resp = conn.getresponse()
                resp.read()
                if resp.status >= 400:
                    errors[0] += 1
            except (OSError, http.client.HTTPException):
                errors[0] += 1
                conn.close()
                conn = http.client.HTTPConnection(
                    target.hostname or "127.0.0.1", target.port, timeout=10
                )
            mine.append(time.perf_counter() - due)
            n += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()

    def q(f: float) -> float:
        return latencies[min(len(latencies) - 1, int(f * len(latencies)))] * 1000

    return {"requests": len(latencies), "errors": errors[0], "seconds": seconds,
            "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": latencies[-1] * 1000}  # fmt: skip


def bench_api(
    seconds: float = 10.0,
    rates: Sequence[float] = (500, 1000, 2000, 3000, 4000),
    shared_data: Path | None = None,
) -> list[Row]:
    """Latency of GET /{symbol} at each offered rate (so the knee shows), then GET /symbols,
    while ingest runs at 10,000 trades/s in the same process: the service and the simulator in
    their own processes, the load in a third (open loop: latency counts from each request's
    scheduled time, so queueing is not hidden)."""
    import json
    import subprocess
    import tempfile

    rows: list[Row] = []
    sim = _SimProcess(10_000, shared_data)
    with tempfile.TemporaryDirectory() as tmp:
        svc = _ServiceProcess(sim, Path(tmp))
        try:
            svc.wait_ready(120)
            symbols = svc.get("/symbols")
            sim.control("resume")
            time.sleep(2.0)

            def applied() -> float:
                return svc.metric("trades_applied_total")[""]

            a0, t0 = applied(), time.monotonic()
            runs = [("GET /{symbol}", ["/" + s for s in symbols], rate) for rate in rates]
            runs.append(("GET /symbols", ["/symbols"], 500.0))
            for label, paths, rate in runs:
                out = subprocess.run(
                    [sys.executable, "-m", "medianserv", "bench", "load", "--url", svc.base,
                     "--rps", str(rate), "--seconds", str(seconds), "--paths", json.dumps(paths)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                r = json.loads(out.stdout)
                name = f"{label} at {rate:,.0f} req/s"
                rows += [
                    Row(f"{name}: achieved", r["requests"] / seconds, "req/s"),
                    Row(f"{name}: p50 / p99 / max latency", r["p99_ms"],
                        f"ms p99 (p50 {r['p50_ms']:.2f}, max {r['max_ms']:.0f})"),
                    Row(f"{name}: errors", r["errors"], "requests"),
                ]  # fmt: skip
            rate_in = (applied() - a0) / (time.monotonic() - t0)
            rows.append(Row("trades ingested meanwhile (offered 10,000/s)", rate_in, "trades/s"))
        finally:
            svc.stop()
            sim.stop()
    return rows


# -- recovery: faults, kills and a long outage, against the simulator --------------------------


def _compare(svc: _ServiceProcess, sim: _SimProcess) -> tuple[int, int]:
    """(symbols whose count, median or last price differ from the truth, of which counted
    more trades than were published). The simulator should be paused."""
    truth = sim.control("truth")
    differ = over = 0
    for item in svc.get("/-/all"):
        t = truth.get(item["symbol"])
        mine = (item["count"], item["median"], item["last_price"])
        want = (t["count"], t["median"], t["last_price"]) if t else (0, None, None)
        if mine != want:
            differ += 1
            over += item["count"] > want[0]
    return differ, over


def _until_complete(
    svc: _ServiceProcess, since: float, timeout: float, stable: float = 10.0
) -> float | None:
    """Seconds from ``since`` until the service became complete (ready, no trade known
    missing, no reconnect check pending) and stayed so for ``stable`` seconds; None on
    timeout. Polled every 0.25 s: a fault takes a moment to be noticed, so being complete
    right after it proves nothing until it lasts."""
    deadline = time.monotonic() + timeout
    complete_since: float | None = None
    while time.monotonic() < deadline:
        status = svc.get("/-/status")
        now = time.monotonic()
        complete = (
            status.get("ready")
            and status.get("missing_trades") == 0
            and status.get("sweep_pending_symbols") == 0
        )
        if not complete:
            complete_since = None
        elif complete_since is None:
            complete_since = now
        elif now - complete_since >= stable:
            return complete_since - since
        time.sleep(0.25)
    return None


def _until_exact(
    svc: _ServiceProcess, sim: _SimProcess, since: float, timeout: float
) -> float | None:
    """Seconds from ``since`` until every symbol equals the truth (the simulator paused);
    None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _compare(svc, sim) == (0, 0):
                return time.monotonic() - since
        except OSError:
            pass  # the API is not up yet
        time.sleep(0.5)
    return None


def _rest_spent(svc: _ServiceProcess) -> dict[str, tuple[float, float]]:
    calls = svc.metric("rest_requests_total")
    weight = svc.metric("rest_weight_total")
    return {k.split('"')[1]: (calls[k], weight[k]) for k in calls}


def _spent_rows(label: str, before: dict[str, Any], after: dict[str, Any]) -> list[Row]:
    rows = []
    for endpoint in ("aggTrades", "historicalTrades", "ticker/24hr"):
        calls = after[endpoint][0] - before[endpoint][0]
        weight = after[endpoint][1] - before[endpoint][1]
        rows.append(
            Row(f"{label}: {endpoint} calls / weight", calls, f"calls, {weight:,.0f} weight")
        )
    return rows


def _check_rows(label: str, svc: _ServiceProcess, sim: _SimProcess) -> list[Row]:
    """Pause trading, let the last frames land, compare everything with the truth."""
    sim.control("pause")
    _until_complete(svc, time.monotonic(), 120, stable=2.0)
    differ, over = _compare(svc, sim)
    stats = sim.control("stats")
    return [
        Row(f"{label}: symbols not exact at the end", differ, "symbols"),
        Row(f"{label}: symbols with trades counted twice", over, "symbols"),
        Row(f"{label}: Binance limit violations", sum(stats["violations"].values()), "violations"),
        Row(
            f"{label}: most weight in one minute (limit 6,000)",
            stats["max_window_weight"],
            "weight",
        ),
    ]


def bench_recovery(
    shared_data: Path | None = None,
    *,
    tps: float = 300.0,
    down_seconds: float = 600.0,
    down_tps: float = 3000.0,
    kills: int = 3,
    endpoints: Sequence[str] = ("historicalTrades", "aggTrades"),
    timeout: float = 1800.0,
) -> list[Row]:
    """How fast the statistics are exact again after faults, crashes and an outage.

    For each backfill endpoint (``historicalTrades``: the previous release's path, with its
    weight share of 0.5 and one worker; ``aggTrades``: the defaults): the service and the
    simulator (the real symbol set) run in their own processes at ``tps`` trades/s, then

    1. the fault sequence: a drop, a 3 s refusal with a drop, a 3 s stall, a serverShutdown
       and a lifetime expiry, 10 s apart; seconds from the last fault until no trade is
       known missing, REST calls and weight by endpoint;
    2. ``kills`` times SIGKILL at a random moment, 2-4 s down while the market trades, a
       restart (the market then paused): seconds from each restart until every symbol is
       exact against the truth;
    3. (``down_seconds`` > 0) a clean stop, ``down_seconds`` of trading at ``down_tps``, a
       restart: seconds until exact, against the floor the weight budget sets (the weight of
       the calls made, over the weight per minute the share allows).

    Each part ends paused and compared with the simulator's ground truth.
    """
    import tempfile

    rows: list[Row] = []
    for endpoint in endpoints:
        old = endpoint == "historicalTrades"
        share = 0.5 if old else 0.8
        flags = ["--backfill-endpoint", endpoint, "--backfill-weight-share", str(share),
                 "--backfill-workers", "1" if old else "4"]  # fmt: skip
        tag = "before (historicalTrades)" if old else "after (aggTrades)"
        sim = _SimProcess(tps, shared_data, ["--set", "history_limit=4000000"])
        try:
            with tempfile.TemporaryDirectory() as tmp:
                svc = _ServiceProcess(sim, Path(tmp), flags)
                svc.wait_ready()
                sim.control("resume")
                time.sleep(20.0)  # every symbol with a history before the faults
                spent = _rest_spent(svc)
                last_fault = 0.0
                for i, faults in enumerate((["drop"], ["refuse?seconds=3", "drop"],
                                            ["stall?seconds=3"], ["shutdown?delay=1"],
                                            ["expire"])):  # fmt: skip
                    if i:
                        time.sleep(10.0)
                    for action in faults:
                        sim.control(action)
                    last_fault = time.monotonic()
                took = _until_complete(svc, last_fault, timeout)
                rows.append(Row(f"{tag} faults: seconds from the last fault to complete",
                                -1 if took is None else took, "s"))  # fmt: skip
                rows += _spent_rows(f"{tag} faults", spent, _rest_spent(svc))
                rows += _check_rows(f"{tag} faults", svc, sim)
                sim.control("resume")

                rnd = random.Random(7)
                for k in range(kills):
                    time.sleep(rnd.uniform(5.0, 15.0))  # a random moment
                    svc.stop(9)
                    down = rnd.uniform(2.0, 4.0)
                    time.sleep(down)  # down while the market trades
                    sim.control("pause")  # so that "exact" has one meaning
                    svc = _ServiceProcess(sim, Path(tmp), flags)
                    took = _until_exact(svc, sim, svc.started, timeout)
                    rows.append(Row(f"{tag} kill {k + 1} ({down:.1f} s down): seconds from "
                                    "restart to every symbol exact", -1 if took is None else took,
                                    "s"))  # fmt: skip
                    sim.control("resume")
                rows += _check_rows(f"{tag} kills", svc, sim)

                if down_seconds > 0:
                    svc.stop()
                    sim.control(f"rate?tps={down_tps}")
                    sim.control("resume")
                    time.sleep(down_seconds)
                    published = sim.control("stats")["trades_published"]
                    svc = _ServiceProcess(sim, Path(tmp), flags)
                    took = _until_complete(svc, svc.started, timeout)
                    after = _rest_spent(svc)  # a new process: everything it spent
                    spent = {e: (0.0, 0.0) for e in after}
                    weight = sum(w for _, w in after.values())
                    floor = weight / (6000 * share) * 60
                    label = f"{tag} {down_seconds / 60:g} min down at {down_tps:,.0f}/s"
                    rows.append(Row(f"{label}: seconds from restart to complete",
                                    -1 if took is None else took, "s"))  # fmt: skip
                    rows.append(Row(f"{label}: floor set by the weight budget", floor, "s"))
                    rows += _spent_rows(label, spent, after)
                    rows.append(Row(f"{label}: trades published in all", published, "trades"))
                    rows += _check_rows(label, svc, sim)
                svc.stop()
        finally:
            sim.stop()
    return rows


# -- history import: archives over local HTTP ---------------------------------------------------


def synthetic_archives(
    directory: Path, symbol: str, trades: int, files: int, seed: int = 1
) -> list[tuple[Any, Any, Any]]:
    """Write ``files`` monthly aggTrades archives of ``symbol`` in Binance's layout (zip and
    CHECKSUM) holding ``trades`` trades, from 2024-06 on (so 2025-01-01, where times turn to
    microseconds, is crossed from the 8th file): a geometric price walk on a 0.01 tick
    (60% of orders repeat the price), 1.8 fills per order, like BTCUSDT. Kept across runs
    (same arguments, same bytes). Returns, per file, (ArchiveFile, distinct prices, counts):
    the oracle the import must equal."""
    import hashlib
    import zipfile

    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv

    from .archive import MICROS_FROM_MS, monthly_file

    rng = np.random.default_rng(seed)
    out = []
    rows_total = int(trades / 1.8)
    price_ticks = 2_000_000.0  # 20,000.00
    next_id, next_agg = 0, 0
    for k in range(files):
        year, month = 2024 + (5 + k) // 12, (5 + k) % 12 + 1
        file = monthly_file(symbol, year, month)
        n = rows_total // files
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
        words = np.zeros(2 * n, np.int64)
        words[0::2] = prices
        zeros = pa.array(np.zeros(n, np.int32))
        table = pa.table({
            "a": agg,
            "p": pa.Array.from_buffers(pa.decimal128(20, 8), n, [None, pa.py_buffer(words)]),
            "q": pa.array(["0.01000000"]).take(zeros), "f": first, "l": last, "T": stamps,
            "m": pa.array(["True"]).take(zeros), "M": pa.array(["True"]).take(zeros),
        })  # fmt: skip
        csv_path = directory / (file.name + ".csv")
        options = pcsv.WriteOptions(include_header=False, quoting_style="none")
        pcsv.write_csv(table, str(csv_path), write_options=options)
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


def _decompress_rows(path: Path) -> tuple[int, float]:
    """(CSV lines, seconds) to merely decompress one archive, reading it as the import does."""
    import zipfile

    t0 = time.perf_counter()
    lines = 0
    with zipfile.ZipFile(path) as z, z.open(z.namelist()[0]) as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
    return lines, time.perf_counter() - t0


def _peak_rss_mib(pid: int) -> float:
    """The peak resident memory of a running process (Linux /proc), MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _StaticServer:
    """``python -m http.server`` over a directory, in its own process (local HTTP)."""

    def __init__(self, directory: Path) -> None:
        import socket
        import subprocess

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
             "--directory", str(directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        import urllib.request

        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def bench_history(
    trades: int = 10**8,
    files: int = 10,
    archive_dir: Path | None = None,
    shared_data: Path | None = None,
) -> list[Row]:
    """History import: (1) the rate on one core, end to end over local HTTP (download,
    CHECKSUM, unzip, parse, check, reduce in a pool process; merge in this one) beside merely
    decompressing the same files, in the same run; (2) an import of ``trades`` trades while
    live ingest runs at 3,000 trades/s in this same process: the readers' worst lag, peak
    memory, and what a whole BTCUSDT history (about 5e9 trades) would take at that rate.
    The imported statistics are checked against the generator's own count."""
    import concurrent.futures as cf
    import dataclasses
    import multiprocessing
    import resource
    import tempfile
    import threading

    from .archive import Reduced, fetch_and_reduce, warm_up
    from .config import Config
    from .exchange import RestClient
    from .ingest import Ingest
    from .symbols import SymbolStats

    rows: list[Row] = []
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
    server = _StaticServer(directory)
    pool = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        pool.submit(warm_up).result()  # the worker is up, pyarrow loaded, before any clock

        worker = next(iter(pool._processes))  # the pool's one process, for its CPU time

        def import_files(stats: SymbolStats, chosen: list[Any]) -> tuple[int, int, float, float]:
            """Import ``chosen`` in order, one file ahead: (rows, trades, seconds, CPU seconds
            of both processes)."""
            t, cpu = time.perf_counter(), time.process_time() + _cpu_seconds(worker)
            n_rows = n_trades = 0
            ahead = [pool.submit(fetch_and_reduce, server.url, f) for f, _, _ in chosen[:2]]
            for i, (file, levels, counts) in enumerate(chosen):
                r = ahead[i].result()
                if i + 2 < len(chosen):
                    ahead.append(pool.submit(fetch_and_reduce, server.url, chosen[i + 2][0]))
                if not isinstance(r, Reduced):
                    raise RuntimeError(f"{file.name} refused: {r}")
                if r.levels.tolist() != levels.tolist() or r.counts.tolist() != counts.tolist():
                    raise RuntimeError(f"{file.name}: reduced wrong")
                applied = stats.apply_levels(r.first_id, r.last_id, r.levels.tolist(),
                                             r.counts.tolist(), r.last_row[4])  # fmt: skip
                if applied != r.trades:
                    raise RuntimeError(f"{file.name} not applied")
                n_rows += r.rows
                n_trades += r.trades
            cpu = time.process_time() + _cpu_seconds(worker) - cpu
            return n_rows, n_trades, time.perf_counter() - t, cpu

        def fresh(total: int) -> SymbolStats:
            stats = SymbolStats("BTCUSDT")
            stats.baseline(total - 1, None)
            stats.start_history(0, None)
            return stats

        total = int(sum(c.sum() for _, _, c in made))
        sample = made[:2]
        dec_rows = dec_cpu = 0.0
        for f, _, _ in sample:  # decompressing only, the same files, this run
            c0 = time.process_time()
            n, _ = _decompress_rows(directory / f.path)
            dec_rows += n
            dec_cpu += time.process_time() - c0
        imp_rows, imp_trades, imp_time, imp_cpu = import_files(fresh(total), sample)
        rows += [
            Row("decompress only: rows per CPU second", dec_rows / dec_cpu, "rows/s"),
            Row("import end to end over local HTTP: rows per CPU second (both processes)",
                imp_rows / imp_cpu, "rows/s"),
            Row("import end to end: trades per CPU second", imp_trades / imp_cpu, "trades/s"),
            Row("import / decompress, per core, same files, same run",
                (imp_rows / imp_cpu) / (dec_rows / dec_cpu), "x"),
            Row("import end to end: wall rate, 1 pool process + this one", imp_rows / imp_time,
                "rows/s"),
        ]  # fmt: skip

        # the whole set while live ingest runs at 3,000 trades/s in this process
        sim = _SimProcess(3000, shared_data)
        try:
            config = dataclasses.replace(Config(), rest_url=sim.rest_url, ws_url=sim.ws_url)
            ingest = Ingest(config.validate(), RestClient(config.rest_url))
            ingest.start()
            ingest.first_listing()
            deadline = time.monotonic() + 120
            while not ingest.ready()[0] and time.monotonic() < deadline:
                time.sleep(0.1)
            sim.control("resume")
            time.sleep(3.0)
            lags: list[int] = []
            done = threading.Event()

            def watch() -> None:
                while not done.wait(0.1):
                    lags.append(max(r.stats.lag_ms for r in ingest.readers))

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            stats = fresh(total)
            all_rows, all_trades, all_time, _ = import_files(stats, made)
            done.set()
            watcher.join()
            applied = ingest.counters()["applied"]
            ingest.stop()
        finally:
            sim.stop()
        state = stats.median.to_state()
        expected: dict[int, int] = {}
        for _, levels, counts in made:
            for p, c in zip(levels.tolist(), counts.tolist(), strict=True):
                expected[p] = expected.get(p, 0) + c
        if state != sorted(expected.items()) or stats.view().count != total:
            raise RuntimeError("the imported statistics differ from the archives' own count")
        main_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        child_mib = _peak_rss_mib(worker)
        rate = all_trades / all_time
        rows += [
            Row(f"import of {all_trades:,} trades ({all_rows:,} rows)", all_time, "s"),
            Row("import rate, with live ingest in the same process", rate, "trades/s"),
            Row("distinct prices after the import", len(state), "levels"),
            Row("live ingest meanwhile: trades applied", applied, "trades"),
            Row("live ingest meanwhile: worst reader lag", max(lags, default=0) / 1000, "s"),
            Row(
                "peak memory, this process (live ingest of 2,292 symbols and the merge)",
                main_mib,
                "MiB",
            ),
            Row("peak memory, a pool process", child_mib, "MiB"),
            Row(
                "a whole BTCUSDT history (5e9 trades) at this rate, 1 pool process",
                5e9 / rate / 3600,
                "h",
            ),
        ]
    finally:
        pool.shutdown()
        server.stop()
        if not keep:
            import shutil

            shutil.rmtree(directory, ignore_errors=True)
    return rows
