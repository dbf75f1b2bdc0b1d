"""``bench core``: the median, prices and the perfect hash, beside naive baselines, same run."""

from __future__ import annotations

import gc
import random
import statistics
import string
import threading
import time
from collections.abc import Sequence
from decimal import Decimal
from operator import attrgetter
from pathlib import Path
from typing import Any

from ..median import CRunningMedian, PyRunningMedian, RunningMedian
from ..perfect_hash import PerfectHash
from ..prices import SCALE, parse_price
from .common import Row, loop_ns, median_bytes, random_walk, two_heaps, two_heaps_bytes

__all__ = ["bench_core"]


def _two_heaps_median(values: Sequence[int]) -> int:
    """Twice the median by the two-heaps baseline."""
    low, high = two_heaps(values)
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
    twins = [("C", CRunningMedian)] if CRunningMedian is not None else []
    for twin, make in [*twins, ("py", PyRunningMedian)]:
        _bench_twin(rows, make(), prices, f"{label}, {twin}")


def _bench_twin(rows: list[Row], m: Any, prices: Sequence[int], label: str) -> None:
    """One twin's add (a call a trade, as the per-trade path makes it) and read."""
    n = len(prices)
    gc.collect()
    add = m.add
    t0 = time.perf_counter_ns()
    for p in prices:
        add(p)
    elapsed = time.perf_counter_ns() - t0
    rows.append(Row(f"median add, {label}, n={n:.0e}", elapsed / n, "ns/add"))
    read = attrgetter("twice_median")  # C-level getter: little overhead around the property
    rows.append(Row(f"median read, {label}, n={n:.0e}", loop_ns(read, [m] * 10**5), "ns/read"))
    rows.append(Row(f"distinct levels, {label}, n={n:.0e}", m.levels, "levels"))
    rows.append(Row(f"memory per level, {label}, n={n:.0e}", median_bytes(m) / m.levels, "B/level"))


def _decimal_units(text: str) -> int:
    return int(Decimal(text) * SCALE)


def bench_core(sizes: Sequence[int] = (10**6, 10**7), shared_data: Path | None = None,
               candle_trades: int = 3_000_000, candle_rate: int = 25_000) -> list[Row]:  # fmt: skip
    """Median add/read, memory per level, price parsing, perfect hash build and lookup, the
    per-trade path, and what candles cost it (``candle_trades`` of a market of
    ``candle_rate`` trades a second: two minutes by default; ``bench core --minutes 20
    --tps 16000`` shows whether the snapshots' cost grows with the candles stored)."""
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
    rows.append(Row("parse_price", loop_ns(parse_price, texts), "ns/parse"))
    rows.append(Row("int(Decimal(s) * 10**8)", loop_ns(_decimal_units, texts), "ns/parse"))

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
        rows.append(Row(f"slot(), {label}", loop_ns(ph.slot, probes), "ns/lookup"))
        rows.append(Row(f"dict.get, {label}", loop_ns(d.get, probes), "ns/lookup"))
    _bench_trade_path(rows)
    _bench_candle_cost(rows, candle_trades, rate=candle_rate)
    return rows


def _trade_frames(n: int, symbols: list[str]) -> tuple[bytes, list[bytes]]:
    """``n`` trade frames of a combined stream as a server sends them (unmasked text frames,
    ids in sequence per symbol, a walk of 0.01 ticks), and their payloads."""
    rnd = random.Random(3)
    next_id = dict.fromkeys(symbols, 1000)
    cents = dict.fromkeys(symbols, 1_000_000)
    frames, payloads = [], []
    for k in range(n):
        symbol = rnd.choice(symbols)
        cents[symbol] += rnd.choice((-1, 0, 0, 1))
        c, ms = cents[symbol], 1_700_000_000_000 + k
        payload = (
            f'{{"stream":"{symbol.lower()}@trade","data":{{"e":"trade","E":{ms},"s":"{symbol}",'
            f'"t":{next_id[symbol]},"p":"{c // 100}.{c % 100:02d}000000","q":"0.01000000",'
            f'"T":{ms},"m":true,"M":true}}}}'
        ).encode()
        next_id[symbol] += 1
        size = len(payload)
        head = bytes([0x81, size]) if size < 126 else bytes([0x81, 126]) + size.to_bytes(2, "big")
        frames.append(head + payload)
        payloads.append(payload)
    return b"".join(frames), payloads


def _bench_trade_path(rows: list[Row], n: int = 200_000) -> None:
    """The per-trade path alone, CPU per trade: both twins over the same frames of 300
    symbols (each trade the next of its symbol: the common case, a symbol's first of a
    minute included; its first trade goes through the general path, as in the service),
    then a harvest of every symbol (where the minutes the path rolled are retired), with
    median candles kept and without, alternated (A B B A) in the same run; and msgspec
    merely decoding each payload, the floor of any path that makes a Python object per
    frame."""
    from .. import symbols as symbols_module
    from ..hotpath import CTradePath, PyTradePath, _decode
    from ..prices import PriceCache
    from ..symbols import SymbolTable

    was = symbols_module.compiled()
    names = [f"S{i:03d}USDT" for i in range(300)]
    data, payloads = _trade_frames(n, names)
    starts, at = {}, 0
    for i, payload in enumerate(payloads):
        starts[at] = i
        at += len(payload) + (2 if len(payload) < 126 else 4)
    units = PriceCache().units
    twins: list[tuple[str, Any]] = [("C", CTradePath)] if CTradePath is not None else []
    for twin, make in [*twins, ("py", PyTradePath)]:
        symbols_module.use_compiled(twin == "C")
        times: dict[bool, list[float]] = {True: [], False: []}
        for candles in (True, False, False, True):
            symbols_module.keep_candles(candles)
            table = SymbolTable.build(names)
            for _, stats in table.items():
                stats.baseline(999, 0)
            path = make()
            path.index = table.index if twin == "C" else table.get
            t0, pos = time.process_time(), 0
            while pos < len(data):
                after = path.consume(data, pos)
                if after <= pos:  # the general path's frame, as the reader hands it over
                    i = starts[pos]
                    event = _decode(payloads[i]).data
                    found = table.get(event.s)
                    assert found is not None
                    found.apply(event.t, units(event.p), event.T)
                    after = pos + len(payloads[i]) + (2 if len(payloads[i]) < 126 else 4)
                pos = after
            for _, stats in table.items():  # a snapshot's harvest: minutes rolled retire here
                stats.harvest()
            times[candles].append((time.process_time() - t0) / n * 1e9)
            if twin == "C":
                for _, stats in table.items():
                    stats._check()
        for candles, label in ((True, "with candles"), (False, "without candles")):
            rows.append(Row(f"trade path, frame to median, {twin}, {label}",
                            statistics.mean(times[candles]), "ns/trade"))  # fmt: skip
    symbols_module.use_compiled(was)
    symbols_module.keep_candles(True)
    t0 = time.process_time()
    for payload in payloads:
        _decode(payload)
    ns = (time.process_time() - t0) / n * 1e9
    rows.append(Row("msgspec decode of a trade frame alone", ns, "ns/frame"))


CANDLE_MARKETS = ("walk", "fresh", "scatter")


def _market_chunk(market: str, first: int, n: int, names: list[str], rate: int) -> bytes:
    """Trades ``first .. first + n - 1`` of a market of ``names`` in turn (as the simulator's
    flood sends them), ``rate`` trades a second of market time, as one block of server
    frames. Each symbol's own trades: ``walk`` cycles over 7 levels, ``fresh`` rises (every
    trade a new high), ``scatter`` lands anywhere in a wide range (almost every trade a new
    level, in no order)."""
    out = []
    rnd = random.Random(first)
    for k in range(first, first + n):
        name = names[k % len(names)]
        t = k // len(names)
        if market == "walk":
            price = b"%d.%08d" % (10 + t % 7, t % 3)
        elif market == "fresh":
            price = b"%d.%08d" % (10 + t // 10**8, t % 10**8)
        else:
            price = b"10.%08d" % rnd.randrange(10**8)
        ms = 1_700_000_000_000 + k * 1000 // rate
        payload = (
            b'{"stream":"%s@trade","data":{"e":"trade","E":%d,"s":"%s","t":%d,"p":"%s",'
            b'"q":"1.00000000","T":%d,"m":true,"M":true}}'
            % (name.lower().encode(), ms, name.encode(), 1000 + t, price, ms)
        )
        size = len(payload)
        out.append(bytes((0x81, size)) if size < 126 else b"\x81\x7e" + size.to_bytes(2, "big"))
        out.append(payload)
    return b"".join(out)


def _timed(save: Any, seconds: list[float], side: int) -> Any:
    """``save``, its CPU time added to ``seconds[side]`` at each call."""

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.process_time()
        try:
            return save(*args, **kwargs)
        finally:
            seconds[side] += time.process_time() - t0

    return timed


class _Waits:
    """A thread that sleeps 1 ms at a time and notes how much longer each sleep took than
    asked, the worst per side while that side's snapshot runs (:meth:`during`): how long a
    reader would have waited for the interpreter (a sleep's end needs it back). Stopped by
    :meth:`stop`."""

    def __init__(self) -> None:
        self.side: int | None = None  # whose snapshot runs now
        self.worst = [0.0, 0.0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-waits", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            side = self.side
            time.sleep(0.001)
            now = time.perf_counter()
            if side is not None and side == self.side:  # the whole sleep within one snapshot
                self.worst[side] = max(self.worst[side], now - last - 0.001)
            last = now

    def during(self, side: int, call: Any) -> None:
        self.side = side
        try:
            call()
        finally:
            self.side = None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _bench_candle_cost(rows: list[Row], n: int = 3_000_000, chunk: int = 20_000,
                       rate: int = 25_000) -> None:  # fmt: skip
    """What keeping candles costs the compiled per-trade path, by market shape, in one
    process: two tables of 2,292 symbols (candles kept, not kept) take the same frames
    alternately, ``chunk`` trades at a time in the order A B B A, so that the machine's
    drift falls on both alike; each takes a snapshot every 5 s of market time (``rate``
    trades a second): every symbol harvested and written to an LMDB store of its own in a
    temporary directory, as the service's snapshotter does, included in its CPU. Rows: CPU
    per trade of each and their ratio, the snapshots' share and the LMDB write's within it,
    per market; and the snapshots' extra with candles in the first market minute and in the
    last, which tells whether it grows with the candles stored; and the longest another
    thread (a reader) waited for the interpreter during a snapshot of each (:class:`_Waits`;
    its own CPU, a wakeup a millisecond, is counted in whichever side runs, so in both
    alike)."""
    import shutil
    import tempfile

    from .. import symbols as symbols_module
    from ..hotpath import CTradePath, _decode
    from ..prices import PriceCache
    from ..snapshotter import Snapshotter
    from ..store import Store
    from ..symbols import SymbolTable

    if CTradePath is None:
        return
    was = symbols_module.compiled()
    symbols_module.use_compiled(True)
    symbols_module.expect_history(set())  # as the service runs without --history
    names = [f"S{i:04d}USDT" for i in range(2_292)]
    units = PriceCache().units
    chunk = max(1, min(chunk, n // 10))
    every = max(1, 5 * rate // chunk)  # chunks between snapshots
    tmp = Path(tempfile.mkdtemp(prefix="medianserv-bench-"))
    stores: list[Store] = []
    waits = _Waits()
    try:
        for market in CANDLE_MARKETS:
            sides, writes = [], [0.0, 0.0]
            for side, candles in enumerate((True, False)):
                symbols_module.keep_candles(candles)
                table = SymbolTable.build(names)
                for _, stats in table.items():
                    stats.baseline(999, 0)
                path = CTradePath()
                path.index = table.index
                store = Store.open(tmp / f"{market}-{side}")
                stores.append(store)
                store.save = _timed(store.save, writes, side)  # type: ignore[method-assign]
                every_symbol = [stats for _, stats in table.items()]
                snapshots = Snapshotter(store, every_symbol.copy, 5.0)
                sides.append((table, path, snapshots))
            gc.collect()
            gc.freeze()  # as the service does once started: no collection walks the tables
            cpu, snaps = [0.0, 0.0], [0.0, 0.0]  # CPU: all; of it, snapshots
            waits.worst = [0.0, 0.0]
            minutes: dict[int, list[float]] = {}  # market minute: each side's snapshots
            for k in range(n // chunk):
                data = _market_chunk(market, k * chunk, chunk, names, rate)
                for side in (0, 1) if k % 2 == 0 else (1, 0):
                    table, path, snapshots = sides[side]
                    t0, pos = time.process_time(), 0
                    while pos < len(data):
                        after = path.consume(data, pos)
                        if after <= pos:  # the general path's frame (a symbol's first)
                            size = data[pos + 1]
                            head = 2 if size < 126 else 4
                            size = size if size < 126 else int.from_bytes(data[pos + 2 : pos + 4])
                            event = _decode(data[pos + head : pos + head + size]).data
                            found = table.get(event.s)
                            assert found is not None
                            found.apply(event.t, units(event.p), event.T)
                            after = pos + head + size
                        pos = after
                    t1 = time.process_time()
                    if (k + 1) % every == 0:
                        waits.during(side, snapshots.snapshot)
                    t2 = time.process_time()
                    cpu[side] += t2 - t0
                    snaps[side] += t2 - t1
                    minutes.setdefault(k * chunk // (60 * rate), [0.0, 0.0])[side] += t2 - t1
            done = n // chunk * chunk
            label = f"{market}, 2,292 symbols, {rate:,} trades/s, a snapshot every 5 s, C"
            rows.append(Row(f"trade path with candles, {label}", cpu[0] / done * 1e9,
                            "ns/trade"))  # fmt: skip
            rows.append(Row(f"trade path without candles, {label}", cpu[1] / done * 1e9,
                            "ns/trade"))  # fmt: skip
            rows.append(Row(f"with candles / without, {label} (goal <= 1.1)", cpu[0] / cpu[1],
                            "x"))  # fmt: skip
            for side, kept in ((0, "with"), (1, "without")):
                rows.append(Row(f"of which snapshots (harvest, LMDB write), {kept} candles, "
                                f"{label}", snaps[side] / done * 1e9, "ns/trade"))  # fmt: skip
                rows.append(Row(f"of which the LMDB write, {kept} candles, {label}",
                                writes[side] / done * 1e9, "ns/trade"))  # fmt: skip
            rows.append(Row(f"longest wait of another thread for the interpreter during a "
                            f"snapshot, with candles, {label}", waits.worst[0] * 1e3,
                            "ms"))  # fmt: skip
            rows.append(Row(f"the same, without candles, {label}", waits.worst[1] * 1e3, "ms"))
            per_minute = 60 * rate
            if done >= 2 * per_minute:  # whole minutes: the first and the last
                for m, which in ((0, "first"), (done // per_minute - 1, "last")):
                    extra = minutes[m][0] - minutes[m][1]
                    rows.append(Row(f"snapshots with candles, more than without, the {which} "
                                    f"market minute ({m + 1}), {label}",
                                    extra / per_minute * 1e9, "ns/trade"))  # fmt: skip
            for table, _, _ in sides:
                for _, stats in table.items():
                    stats._check()
            del sides
            gc.unfreeze()
            while stores:
                stores.pop().close()
    finally:
        waits.stop()
        gc.unfreeze()
        for store in stores:
            store.close()
        shutil.rmtree(tmp, ignore_errors=True)
        symbols_module.use_compiled(was)
        symbols_module.keep_candles(True)
        symbols_module.expect_history(None)
