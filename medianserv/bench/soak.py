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


def bench_soak(minutes: float = 60.0, tps: float = 16_000.0, symbols: int = 2000,
               late_pong: float = 1.0, walk_levels: int = 0) -> list[Row]:  # fmt: skip
    """The service for ``minutes`` minutes at ``tps`` trades a second over ``symbols``
    symbols, each price walking freely or, with ``walk_levels``, within that many ticks; a
    line a minute on stdout, then the figures of the whole run (see the module)."""
    extra = ["--set", f"late_pong={late_pong}", "--set", f"walk_levels={walk_levels}"]
    sim = SimProcess(tps, None, extra, symbols=symbols)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="medianserv-soak-") as tmp:
        svc = ServiceProcess(sim, Path(tmp))
        try:
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
            prev: dict[str, Any] = {"applied": applied0, "cpu": cpu0, "pongs": 0, "late": 0,
                                    "closed": {}, "reconnects": 0.0, "rotations": 0.0}  # fmt: skip
            rss: list[tuple[float, float]] = []
            held: list[tuple[float, float]] = []  # price levels the medians hold
            lags: list[float] = []
            minute = 0
            while minute < minutes:
                lag = 0.0
                end = t0 + 60 * (minute + 1)
                while time.monotonic() < end:
                    time.sleep(min(5.0, max(0.0, end - time.monotonic())))
                    lag = max(lag, svc.get("/-/status")["lag_s"])
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
                rss.append((minute, memory))
                held.append((minute, levels))
                lags.append(lag)
                print(f"minute {minute:3d}: RSS {memory:7.1f} MiB ({levels:,.0f} levels), CPU "
                      f"{cpu - prev['cpu']:5.2f} s"
                      f" ({(cpu - prev['cpu']) / max(1.0, trades) * 1e6:5.2f} us/trade, "
                      f"{trades / 60:,.0f} trades/s), worst lag {lag:.3f} s, pongs "
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
            stats = sim.control("stats")
            total = prev["applied"] - applied0
            steady = [p for p in rss if p[0] >= 5] or rss
            since = held[len(rss) - len(steady)][1]
            grown = held[-1][1] - since
            rows += [
                Row("soak: minutes", minute, "min"),
                Row("soak: trades applied", total, "trades"),
                Row("soak: trades a second", total / (60 * minute), "trades/s"),
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
            ]
        finally:
            svc.stop()
            sim.stop()
    return rows
