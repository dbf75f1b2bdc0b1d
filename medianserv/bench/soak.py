"""``bench soak``: the service for hours at a steady rate, as it runs for days.

The simulator trades ``tps`` trades a second over ``symbols`` symbols (a Zipf spread: a few
hot, many cold, as on Binance) and pings every connection every 20 s with Binance's deadline
for the pong (a minute). The service, the real command line in a process of its own, follows
them. Every minute the suite prints the service's resident memory, its CPU over the minute
(and per trade), the worst reader lag seen (polled every 5 s), the pings it answered, late
(past ``late_pong`` seconds) or missed (the simulator closed the connection for it), and the
connections it lost or replaced, by why. At the end trading pauses and the service must equal
the simulator's truth, every symbol (count, median and last price), within two minutes.

The service's memory grows with the distinct price levels its medians hold, never with the
trades: on the simulator's free walk (moves of about 1e-4 of the price) new levels keep
coming, so the suite prints the levels beside RSS and the RSS grown per level added;
``walk_levels`` keeps every price within a band of ticks, so the levels stop growing and RSS
must then stay flat: anything else there is a leak.

``compare_candles`` runs a second service beside the first, with ``--no-candles``, following
the same trades at the same time: what median candles cost a trade at a steady rate (where
a snapshot's work for each symbol that traded is spread over few trades), against the same
market in the same minutes. It too must be exact at the end. Each is read for what it is:
the first's hourly candles must hold every trade of each symbol, the second serves none.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import Row, ServiceProcess, SimProcess, cpu_seconds, rss_mib

__all__ = ["bench_soak"]


def _slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minute, MiB) points, in MiB an hour (0 for fewer than 2)."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def _mismatches(svc: ServiceProcess, sim: SimProcess) -> int:
    """Symbols whose count, median or last price differ from the simulator's truth."""
    served = {row["symbol"]: row for row in svc.get("/-/all")}
    truth = sim.control("truth")
    keys = ("count", "median", "last_price")
    return sum(1 for s, t in truth.items()
               if s not in served or any(served[s][k] != t[k] for k in keys))  # fmt: skip


def _candle_mismatches(svc: ServiceProcess, sim: SimProcess) -> tuple[int, int]:
    """(symbols whose hourly candles' trades do not add up to the simulator's count, candle
    rows served in all): a service keeping candles counts every trade of a soak in one
    (it imports no history), one with ``--no-candles`` serves none."""
    wrong = rows = 0
    for symbol, truth in sim.control("truth").items():
        got = svc.get(f"/{symbol}/candles?interval=1h&limit=1000").get("rows", [])
        rows += len(got)
        wrong += sum(r[5] for r in got) != truth["count"]
    return wrong, rows


def bench_soak(minutes: float = 60.0, tps: float = 16_000.0, symbols: int = 2000,
               late_pong: float = 1.0, walk_levels: int = 0, compare_candles: bool = False,
               line_s: float = 60.0) -> list[Row]:  # fmt: skip
    """The service for ``minutes`` minutes at ``tps`` trades a second over ``symbols``
    symbols, each price walking freely or, with ``walk_levels``, within that many ticks; a
    line a minute on stdout, then the figures of the whole run (see the module); with
    ``compare_candles``, a second service with ``--no-candles`` beside it. ``line_s``: the
    seconds a line covers (a minute; less only for a smoke run)."""
    extra = ["--set", f"late_pong={late_pong}", "--set", f"walk_levels={walk_levels}"]
    sim = SimProcess(tps, None, extra, symbols=symbols)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="medianserv-soak-") as tmp:
        svc = ServiceProcess(sim, Path(tmp) / "service")
        bare: ServiceProcess | None = None
        try:
            if compare_candles:
                bare = ServiceProcess(sim, Path(tmp) / "no-candles",
                                      ["--no-candles", "--user-agent", BARE_AGENT])  # fmt: skip
                bare.wait_ready()
            svc.wait_ready()
            status = svc.get("/-/status")
            print(f"soak: {status['symbols']} symbols over {len(status['connections'])} "
                  f"connections, trade path {status['trade_path']}, {tps:,.0f} trades/s for "
                  f"{minutes:g} min", flush=True)  # fmt: skip
            sim.control("resume")
            pid = svc.proc.pid
            t0 = time.monotonic()
            applied0 = svc.metric("trades_applied_total")[""]
            cpu0 = cpu_seconds(pid)
            bare0 = _progress(bare)
            bare_last = bare0
            prev: dict[str, Any] = {"applied": applied0, "cpu": cpu0, "pongs": 0, "late": 0,
                                    "closed": {}, "reconnects": 0.0, "rotations": 0.0}  # fmt: skip
            rss: list[tuple[float, float]] = []
            held: list[tuple[float, float]] = []  # price levels the medians hold
            lags: list[float] = []
            bare_lag = 0.0  # the --no-candles service's worst reader lag
            bare_reconnects = 0.0
            minute = 0
            while minute * line_s < minutes * 60:
                lag = 0.0
                end = t0 + line_s * (minute + 1)
                while time.monotonic() < end:
                    time.sleep(min(5.0, line_s / 4, max(0.0, end - time.monotonic())))
                    lag = max(lag, svc.get("/-/status")["lag_s"])
                    if bare is not None:  # the same requests of both: the same CPU for them
                        bare_lag = max(bare_lag, bare.get("/-/status")["lag_s"])
                minute += 1
                stats = sim.control("stats")
                applied = svc.metric("trades_applied_total")[""]
                cpu = cpu_seconds(pid)
                reconnects = sum(svc.metric("reconnects_total").values())
                rotations = sum(svc.metric("rotations_total").values())
                pongs = stats["pongs_by_agent"].get("medianserv", 0)
                late = stats["late_pongs_by_agent"].get("medianserv", 0)
                closed = {k: v - prev["closed"].get(k, 0) for k, v in stats["closed"].items()
                          if v - prev["closed"].get(k, 0)}  # fmt: skip
                trades = applied - prev["applied"]
                memory = rss_mib(pid)
                levels = svc.metric("price_levels")[""]
                if bare is not None:  # the same requests of both, as above
                    bare.metric("price_levels")
                    bare_reconnects = sum(bare.metric("reconnects_total").values())
                    bare.metric("rotations_total")
                rss.append((minute * line_s / 60, memory))
                held.append((minute * line_s / 60, levels))
                lags.append(lag)
                if bare is not None:
                    now = _progress(bare)
                    assert now is not None and bare_last is not None
                    cpu_bare, trades_bare = now[1] - bare_last[1], now[0] - bare_last[0]
                    print(f"minute {minute:3d}, --no-candles: CPU {cpu_bare:5.2f} s "
                          f"({cpu_bare / max(1.0, trades_bare) * 1e6:5.2f} us/trade)",
                          flush=True)  # fmt: skip
                    bare_last = now
                print(f"minute {minute:3d}: RSS {memory:7.1f} MiB ({levels:,.0f} levels), CPU "
                      f"{cpu - prev['cpu']:5.2f} s"
                      f" ({(cpu - prev['cpu']) / max(1.0, trades) * 1e6:5.2f} us/trade, "
                      f"{trades / line_s:,.0f} trades/s), worst lag {lag:.3f} s, pongs "
                      f"{pongs - prev['pongs']} ({late - prev['late']} late, "
                      f"{stats['violations'].get('pong_timeout', 0)} missed in all), "
                      f"reconnects {reconnects - prev['reconnects']:.0f}, rotations "
                      f"{rotations - prev['rotations']:.0f}, connections closed by the "
                      f"exchange {closed or 0}", flush=True)  # fmt: skip
                prev = {"applied": applied, "cpu": cpu, "pongs": pongs, "late": late,
                        "closed": dict(stats["closed"]), "reconnects": reconnects,
                        "rotations": rotations}  # fmt: skip
            sim.control("pause")
            paused = time.monotonic()
            wrong = _mismatches(svc, sim)
            while wrong and time.monotonic() - paused < 120:
                time.sleep(1.0)
                wrong = _mismatches(svc, sim)
            exact_after = time.monotonic() - paused
            candles_wrong, _ = _candle_mismatches(svc, sim)
            stats = sim.control("stats")
            total = prev["applied"] - applied0
            steady = [p for p in rss if p[0] >= 5] or rss
            since = held[len(rss) - len(steady)][1]
            grown = held[-1][1] - since
            rows += [
                Row("soak: minutes", minute * line_s / 60, "min"),
                Row("soak: trades applied", total, "trades"),
                Row("soak: trades a second", total / (line_s * minute), "trades/s"),
                Row(
                    "soak: CPU per trade, whole process",
                    (prev["cpu"] - cpu0) / max(1, total) * 1e6,
                    "us/trade",
                ),
                Row("soak: worst reader lag (polled every 5 s)", max(lags), "s"),
                Row("soak: pings answered", prev["pongs"], "pongs"),
                Row(f"soak: pings answered late (> {late_pong:g} s)", prev["late"], "pongs"),
                Row(
                    "soak: pings missed (connection closed for it)",
                    stats["violations"].get("pong_timeout", 0),
                    "pings",
                ),
                Row(
                    "soak: worst pong latency",
                    1000 * stats["pong_latency_by_agent"].get("medianserv", 0.0),
                    "ms",
                ),
                Row("soak: reconnects (connection failures)", prev["reconnects"], "reconnects"),
                Row(
                    "soak: connections closed by the exchange, any reason",
                    sum(stats["closed"].values()),
                    "closes",
                ),
                Row("soak: RSS at minute 5", steady[0][1], "MiB"),
                Row("soak: RSS at the end", rss[-1][1], "MiB"),
                Row("soak: RSS slope from minute 5", _slope_per_hour(steady), "MiB/hour"),
                Row("soak: price levels held at minute 5", since, "levels"),
                Row("soak: price levels held at the end", held[-1][1], "levels"),
                Row(
                    "soak: RSS grown from minute 5 per price level added",
                    (rss[-1][1] - steady[0][1]) * 2**20 / grown if grown > 0 else 0.0,
                    "B/level",
                ),
                Row("soak: symbols not exact at the end", wrong, "symbols"),
                Row("soak: seconds from the pause until exact", exact_after, "s"),
                Row(
                    "soak: symbols whose hourly candles do not add up to their count",
                    candles_wrong,
                    "symbols",
                ),
            ]
            if bare is not None:
                assert bare0 is not None and bare_last is not None
                wrong_bare = _mismatches(bare, sim)
                while wrong_bare and time.monotonic() - paused < 120:
                    time.sleep(1.0)
                    wrong_bare = _mismatches(bare, sim)
                _, bare_rows = _candle_mismatches(bare, sim)
                ours = (prev["cpu"] - cpu0) / max(1, total)
                theirs = (bare_last[1] - bare0[1]) / max(1, bare_last[0] - bare0[0])
                rows += [
                    Row(
                        "soak: --no-candles, same trades, same minutes: CPU per trade, whole "
                        "process",
                        theirs * 1e6,
                        "us/trade",
                    ),
                    Row(
                        "soak: CPU per trade with candles / without (goal <= 1.1)",
                        ours / theirs if theirs else 0.0,
                        "x",
                    ),
                    Row("soak: --no-candles: worst reader lag", bare_lag, "s"),
                    Row("soak: --no-candles: reconnects", bare_reconnects, "reconnects"),
                    Row(
                        "soak: --no-candles: pings answered late",
                        stats["late_pongs_by_agent"].get(BARE_AGENT, 0),
                        "pongs",
                    ),
                    Row(
                        "soak: --no-candles: symbols not exact at the end",
                        wrong_bare,
                        "symbols",
                    ),
                    Row("soak: --no-candles: candle rows served", bare_rows, "rows"),
                ]
        finally:
            svc.stop()
            if bare is not None:
                bare.stop()
            sim.stop()
    return rows


#: The User-Agent of the ``--no-candles`` service of ``compare_candles`` (the simulator
#: counts pongs by it).
BARE_AGENT = "medianserv-nocandles"


def _progress(svc: ServiceProcess | None) -> tuple[float, float] | None:
    """(trades applied, CPU seconds) of ``svc``'s process so far; None without one."""
    if svc is None:
        return None
    return svc.metric("trades_applied_total")[""], cpu_seconds(svc.proc.pid)
