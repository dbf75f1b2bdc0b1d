"""``bench ingest``: medianserv's readers against a client that only decodes, on several
markets; and medianserv with candles against medianserv without, flooded at the same time.

The simulator floods every connection of whichever clients it is told to as fast as each reads
(``/_sim/flood?agent=...``, a part of the User-Agent), the others idle meanwhile. Each market
(walk, fresh, hot, real; see :class:`~medianserv.sim.SimConfig`) is measured in windows
A B C C B A T T T T: A medianserv, B medianserv with ``--no-candles``, C the client, each
alone, then T both services together (their User-Agents share a part). A side's CPU per item is
its process's CPU (``/proc``) over the items it took in its window. The cost of candles is read
from the T windows, where both services run in the same seconds on the same machine, so its
drift falls on both alike (in windows one after the other, a quieter second flatters whichever
side had it): each T window's ratio of the two, and their median, so that a second's hiccup of
one side falls in one window's ratio and the median leaves it out. The client and the per-trade
costs come from the others, where each side has the machine to itself. Work a process leaves
for later (a snapshot, a candle settling) falls outside its window: so each market also reports
the two services' CPU over the items they took in their span together, from the T windows'
start (every process idle first) until every process is idle again, and the next market begins
only then. A symbol's current minute retires only when a trade of a later minute comes, so that
span (with windows of 5 s or more) ends with a short flood of both services in the first
seconds of the next UTC minute and two snapshots after it: the last minute's retiring, folding
and settling falls in it. The same roll comes before the span begins: the minutes the windows
alone left open (their trades outside the span) retire before it, not in it. So the span holds
the deferred work of the trades it counts, but for a second's flood at each end (the roll's
before it, whose minute retires in it; the roll's in it, whose minute retires after), which
balance. An hour's end does not: it folds the hour's levels into its day (the trades of the
markets before included) in whichever span holds it, so each market reports the UTC hours
that ended in its span.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import Row, ServiceProcess, SimProcess, cpu_seconds, huge_pages_mib, rss_mib

__all__ = ["CLIENT_AGENT", "bench_ingest", "run_decode_client"]

#: The decode-only client's User-Agent (the simulator floods by it).
CLIENT_AGENT = "picows-decode-bench"
#: The part of the two services' User-Agents they share (a flood of both at once), and theirs.
BOTH_AGENT = "medianserv-"
SERVICE_AGENTS = (BOTH_AGENT + "candles", BOTH_AGENT + "nocandles")
MARKETS = ("walk", "fresh", "hot", "real")
#: What tells glibc's malloc to ask the kernel for transparent huge pages for its heaps
#: (measured by ``--huge-pages``; neither the systemd unit nor the command line sets it).
HUGE_PAGES = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


@dataclass(frozen=True)
class Comparison:
    """What the second service differs in, as the rows name it: ``--no-candles`` (the cost of
    candles, goal <= 1.1) or, with ``huge_pages``, candles kept by both and the first given
    :data:`HUGE_PAGES` (their gain; no goal)."""

    huge_pages: bool = False

    @property
    def second(self) -> str:
        """The second service, as a row names it."""
        return "without huge pages" if self.huge_pages else "--no-candles"

    @property
    def ratio(self) -> str:
        """The first service's CPU per trade over the second's, as a row names it."""
        return "with huge pages / without" if self.huge_pages else "with candles / without"

    @property
    def goal(self) -> str:
        """The goal a ratio row names, if any."""
        return "" if self.huge_pages else " (goal <= 1.1)"


def run_decode_client(ws_url: str, rest_url: str, seconds: float) -> None:
    """The yardstick, in a process of its own: picows (uvloop where it installs) on the same
    streams over the same number of connections as medianserv, each frame decoded with msgspec
    into the same typed struct medianserv's general path uses, and nothing else. Prints
    ``ready`` once subscribed, then ``<monotonic> <trades decoded>`` every 0.2 s on stdout,
    for ``seconds``."""
    import asyncio
    import json
    import urllib.request

    import msgspec
    from picows import WSListener, WSMsgType, ws_connect

    from ..messages import _TradeFrame
    from ..streams import plan_connections, stream_of

    with urllib.request.urlopen(rest_url + "/api/v3/exchangeInfo", timeout=30) as resp:
        symbols = [x["symbol"] for x in json.loads(resp.read())["symbols"]]
    groups = [sorted(g) for g in plan_connections([stream_of(s) for s in symbols], 1024)]
    decode = msgspec.json.Decoder(_TradeFrame).decode
    errors = (msgspec.DecodeError, msgspec.ValidationError)
    count = [0]

    class Listener(WSListener):
        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type == WSMsgType.TEXT:
                try:
                    decode(frame.get_payload_as_memoryview())
                    count[0] += 1
                except errors:  # a reply to SUBSCRIBE
                    pass

    async def main() -> None:
        transports = []
        for group in groups:
            transport, _ = await ws_connect(
                Listener, ws_url + "/stream", extra_headers={"User-Agent": CLIENT_AGENT}
            )
            transports.append(transport)
            for j in range(0, len(group), 150):  # 2 a second: well under Binance's 5
                body = {"method": "SUBSCRIBE", "params": group[j : j + 150], "id": j + 1}
                transport.send(WSMsgType.TEXT, json.dumps(body).encode())
                await asyncio.sleep(0.5)
        print("ready", flush=True)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(0.2)
            print(time.monotonic(), count[0], flush=True)
        for transport in transports:
            transport.disconnect()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


class _Client:
    """The decode-only client's process and its counts as it prints them."""

    def __init__(self, sim: SimProcess, seconds: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "medianserv", "bench", "decode-client", "--url", sim.ws_url,
             "--rest-url", sim.rest_url, "--seconds", str(seconds)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the decode-only client did not subscribe")
        self.samples: list[tuple[float, int]] = []
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            t, n = line.split()
            self.samples.append((float(t), int(n)))

    def count(self) -> int:
        """Trades decoded so far (its latest report, at most 0.2 s old)."""
        deadline = time.monotonic() + 5
        while not self.samples and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.samples[-1][1] if self.samples else 0

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def _settle(pids: list[int], idle: float = 0.05, limit: float = 60.0) -> None:
    """Wait until every process in ``pids`` is idle (under ``idle`` of a core over a second),
    at most ``limit`` seconds: work a flood left for later (snapshots, candles settling)
    is done before the next market begins."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = [cpu_seconds(pid) for pid in pids]
        time.sleep(1.0)
        if all(cpu_seconds(pid) - c < idle for pid, c in zip(pids, before, strict=True)):
            return


def _flowing(count: Any, limit: float = 60.0) -> None:
    """Wait until ``count`` (a side's trades) rose over the last second, at most ``limit``
    seconds: the flood has reached the side and its pace (a market's first flood can take
    seconds to start: the simulator reads the recordings of `real` then)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = count()
        time.sleep(1.0)
        if count() > before:
            return


def _roll_minutes(sim: SimProcess, services: list[ServiceProcess], seconds: float = 1.0) -> None:
    """Both services flooded for ``seconds`` (the market in force) once the next UTC minute
    has begun, then two snapshots of each: every minute the market left open is retired,
    folded and settled before its span ends."""
    time.sleep(60.5 - time.time() % 60)  # the simulator stamps the flood with the wall clock
    sim.control(f"flood?agent={BOTH_AGENT}")
    time.sleep(seconds)
    sim.control("flood?agent=nobody")
    for svc in services:
        done = svc.metric("snapshots_total")[""] + 2
        deadline = time.monotonic() + 120
        while svc.metric("snapshots_total")[""] < done and time.monotonic() < deadline:
            time.sleep(0.5)


def _given(pid: int, env: dict[str, str]) -> bool:
    """Whether a running process's environment (Linux /proc) holds every variable of env."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        held = set(f.read().split(b"\0"))
    return all(f"{k}={v}".encode() in held for k, v in env.items())


def _picows_available() -> bool:
    try:
        import picows  # noqa: F401
    except ImportError:
        return False
    return True


def _market_rows(market: str, per_trade: dict[str, list[float]], rates: dict[str, list[float]],
                 spans: dict[str, float], hours: int,
                 comparison: Comparison = Comparison()) -> tuple[list[Row], float]:  # fmt: skip
    """One market's rows of :func:`bench_ingest` from its windows' figures (``per_trade`` and
    ``rates`` per side, a value a window; ``spans`` per service; ``hours``, the UTC hours that
    ended in the span) and medianserv's CPU per trade alone. The candles' cost (or what
    ``comparison`` names) is the median of the T windows' ratios, each window's two figures
    paired (the i-th of each service's list is the same window's), beside the lowest and the
    highest of them (how far a window's noise reaches). O(windows)."""
    second, ratio, goal = comparison.second, comparison.ratio, comparison.goal
    rows: list[Row] = []
    mine = statistics.median(per_trade["medianserv"])
    rows.append(Row(f"{market}: medianserv CPU per trade (whole process)", mine, "us/trade"))
    rows.append(Row(f"{market}: medianserv trades/s", statistics.median(rates["medianserv"]),
                    "trades/s"))  # fmt: skip
    without = statistics.median(per_trade["no candles"])
    rows.append(Row(f"{market}: medianserv {second} CPU per trade", without, "us/trade"))
    together = [statistics.median(per_trade[f"{side}, together"])
                for side in ("medianserv", "no candles")]  # fmt: skip
    rows.append(Row(f"{market}: medianserv CPU per trade, the two flooded together",
                    together[0], "us/trade"))  # fmt: skip
    rows.append(Row(f"{market}: medianserv {second} CPU per trade, the same", together[1],
                    "us/trade"))  # fmt: skip
    paired = [a / b for a, b in zip(per_trade["medianserv, together"],
                                    per_trade["no candles, together"], strict=True)]  # fmt: skip
    rows.append(Row(f"{market}: CPU per trade {ratio}, flooded together, the median of the "
                    f"T windows'{goal}", statistics.median(paired), "x"))  # fmt: skip
    rows.append(Row(f"{market}: the same, the lowest T window's", min(paired), "x"))
    rows.append(Row(f"{market}: the same, the highest T window's", max(paired), "x"))
    rows.append(Row(f"{market}: the same, each flooded alone in turn", mine / without, "x"))
    span, span_without = spans["medianserv"], spans["no candles"]
    rows.append(Row(f"{market}: medianserv CPU per trade, the two flooded together, work left "
                    "for later included", span, "us/trade"))  # fmt: skip
    rows.append(Row(f"{market}: the same, {second}", span_without, "us/trade"))
    rows.append(Row(f"{market}: the same, {ratio}{goal}", span / span_without,
                    "x"))  # fmt: skip
    rows.append(Row(f"{market}: UTC hours that ended in the span (each folds its hour's levels "
                    "into its day, the trades of the markets before included)", hours,
                    "hours"))  # fmt: skip
    if "client" in per_trade:
        theirs = statistics.median(per_trade["client"])
        rows.append(Row(f"{market}: decode-only client CPU per trade", theirs, "us/trade"))
        rows.append(Row(f"{market}: decode-only client trades/s",
                        statistics.median(rates["client"]), "trades/s"))  # fmt: skip
        rows.append(Row(f"{market}: client CPU / medianserv CPU per trade (goal 1)",
                        theirs / mine, "x"))  # fmt: skip
    return rows, mine


def check_markets(markets: Sequence[str]) -> None:
    """ValueError unless ``markets`` names at least one market and only those of
    :data:`MARKETS`. O(markets)."""
    unknown = sorted(set(markets) - set(MARKETS))
    if unknown or not markets:
        raise ValueError(f"no market {', '.join(unknown) or 'given'}; there are "
                         f"{', '.join(MARKETS)}")  # fmt: skip


def bench_ingest(seconds: float = 8.0, shared_data: Path | None = None, rounds: int = 1,
                 markets: tuple[str, ...] = MARKETS,
                 huge_pages: bool = False) -> list[Row]:  # fmt: skip
    """medianserv and the decode-only client (picows + msgspec, in the ``bench`` extra)
    flooded alone in turn on each market, with a second medianserv that keeps no candles,
    and the two services flooded together, windows A B C C B A T T T T of ``seconds``: CPU
    per trade of each, their ratios (the client's over medianserv's, of the windows alone;
    medianserv's with candles over without, the median of the windows together's, and of
    those alone for comparison), rates, each service's resident memory at the end of each
    market, and for medianserv the slowest market against the fastest. ``huge_pages``: the
    second keeps candles too, and the first is given :data:`HUGE_PAGES` (its ratios are
    then those of huge pages, :class:`Comparison`). Without picows, medianserv alone. A run
    in which a client lost a connection, or took (almost) no trade in a window of its flood,
    is refused."""
    import tempfile

    check_markets(markets)
    recordings = sorted((shared_data / "trades").glob("*_2024080*.gz")) if shared_data else []
    markets = tuple(m for m in markets if m != "real" or recordings)
    extra = ["--set", "flood=true", "--set", "ping_interval=5", "--set", "flood_agent=nobody"]
    if recordings:
        extra += ["--replay", *map(str, recordings)]
    rows: list[Row] = []
    sim = SimProcess(0, shared_data, extra)
    client: _Client | None = None
    comparison = Comparison(huge_pages)
    with tempfile.TemporaryDirectory() as tmp:
        svc = ServiceProcess(sim, Path(tmp) / "a", ["--user-agent", SERVICE_AGENTS[0]],
                             env=HUGE_PAGES if huge_pages else None)  # fmt: skip
        bare: ServiceProcess | None = None
        agents = {"medianserv": SERVICE_AGENTS[0], "no candles": SERVICE_AGENTS[1],
                  "client": CLIENT_AGENT, "together": BOTH_AGENT}  # fmt: skip
        try:
            extra = ["--user-agent", agents["no candles"]] + ([] if huge_pages else
                                                              ["--no-candles"])  # fmt: skip
            bare = ServiceProcess(sim, Path(tmp) / "b", extra)
            if _picows_available():
                client = _Client(sim, 3600)
            svc.wait_ready()
            bare.wait_ready()
            if huge_pages and not _given(svc.proc.pid, HUGE_PAGES):
                raise RuntimeError("the first service lacks the huge pages' variable")
            status = svc.get("/-/status")
            connections = len(status["connections"])
            rows.append(Row(f"symbols, over {connections} connections each client",
                            status["symbols"], "symbols"))  # fmt: skip
            rows.append(Row(f"medianserv's trade path is {status['trade_path']}",
                            1 if status["trade_path"] == "C" else 0, "(1: compiled)"))  # fmt: skip
            sim.control("resume")
            assert bare is not None
            sides: dict[str, tuple[Any, Any]] = {
                "medianserv": (svc.proc.pid, lambda: int(svc.metric("trades_applied_total")[""])),
                "no candles": (bare.proc.pid, lambda: int(bare.metric("trades_applied_total")[""])),
            }
            if client is not None:
                sides["client"] = (client.proc.pid, client.count)
            # the windows alone first (A B C C B A, symmetric), then those together, one after
            # the other: the span of both services together starts once all are idle
            order = ["medianserv", "no candles", "client", "client", "no candles",
                     "medianserv"] * rounds + ["together"] * (4 * rounds)  # fmt: skip
            # who takes the trades of each window: a window of both measures both
            measured = {side: [side] for side in sides}
            measured["together"] = ["medianserv", "no candles"]
            per_trade: dict[str, dict[str, list[float]]] = {m: {} for m in markets}
            rates: dict[str, dict[str, list[float]]] = {m: {} for m in markets}
            spans: dict[str, dict[str, float]] = {m: {} for m in markets}
            hours: dict[str, int] = {}  # UTC hours that ended in a market's span
            resident: dict[str, list[Row]] = {}
            for market in markets:
                sim.control(f"flood?market={market}&agent=nobody")
                _settle([pid for pid, _ in sides.values()])  # the market before: its work done
                begun: dict[str, tuple[float, int]] = {}
                for window in [w for w in order if w in measured]:
                    if window == "together" and not begun:  # the span together begins
                        if seconds >= 5:  # with the minutes of the windows alone retired
                            _roll_minutes(sim, [svc, bare])
                        _settle([pid for pid, _ in sides.values()])
                        begun = {side: (cpu_seconds(sides[side][0]), sides[side][1]())
                                 for side in measured["together"]}  # fmt: skip
                        hours[market] = int(time.time() // 3600)
                    taking = [(side, *sides[side]) for side in measured[window]]
                    sim.control(f"flood?agent={agents[window]}")
                    for _, _, count in taking:
                        _flowing(count)
                    before = [(cpu_seconds(pid), count()) for _, pid, count in taking]
                    t0 = time.monotonic()
                    time.sleep(seconds)
                    after = [(cpu_seconds(pid), count()) for _, pid, count in taking]
                    t1 = time.monotonic()
                    sim.control("flood?agent=nobody")
                    time.sleep(0.5)  # what is in flight drains before the next window
                    for (side, _, _), (c0, n0), (c1, n1) in zip(taking, before, after,
                                                                strict=True):  # fmt: skip
                        if n1 - n0 < 100:  # idle while its flood flowed: its connections down
                            raise RuntimeError(f"{side} took {n1 - n0} trades in a window of "
                                               f"{market}; the run does not count")  # fmt: skip
                        key = side if window != "together" else f"{side}, together"
                        per_trade[market].setdefault(key, []).append((c1 - c0) / (n1 - n0) * 1e6)
                        rates[market].setdefault(key, []).append((n1 - n0) / (t1 - t0))
                if seconds >= 5:  # the minutes left open retire in this market's span
                    _roll_minutes(sim, [svc, bare])
                _settle([pid for pid, _ in sides.values()])  # work left for later, done
                for side, (c0, n0) in begun.items():
                    pid, count = sides[side]
                    spans[market][side] = (cpu_seconds(pid) - c0) / max(1, count() - n0) * 1e6
                hours[market] = int(time.time() // 3600) - hours[market]
                resident[market] = [
                    row
                    for name, pid in (("", svc.proc.pid), (f" {comparison.second}", bare.proc.pid))
                    for row in (
                        Row(f"{market}: medianserv{name} resident memory at the market's end",
                            rss_mib(pid), "MiB"),
                        Row(f"{market}: the same, in huge pages", huge_pages_mib(pid), "MiB"),
                    )
                ]  # fmt: skip
            stats = sim.control("stats")
            expected = connections * (3 if client else 2)
            if stats["violations"] or stats["connections_open"] != expected:
                raise RuntimeError(f"a client lost a connection; the run does not count: {stats}")
            ours = {}
            for market in markets:
                market_rows, ours[market] = _market_rows(market, per_trade[market],
                                                         rates[market], spans[market],
                                                         hours[market], comparison)  # fmt: skip
                rows += market_rows + resident[market]
            rows.append(Row("medianserv CPU per trade, slowest market / fastest",
                            max(ours.values()) / min(ours.values()), "x"))  # fmt: skip
            latency = stats["pong_latency_by_agent"]
            rows.append(Row("medianserv: worst pong latency (pings every 5 s)",
                            1000 * latency.get(agents["medianserv"], 0.0), "ms"))  # fmt: skip
            rows.append(Row(f"medianserv {comparison.second}: worst pong latency",
                            1000 * latency.get(agents["no candles"], 0.0), "ms"))  # fmt: skip
            if client is not None:
                rows.append(Row("decode-only client: worst pong latency",
                                1000 * latency.get(CLIENT_AGENT, 0.0), "ms"))  # fmt: skip
            rows.append(Row("Binance limit violations", sum(stats["violations"].values()),
                            "violations"))  # fmt: skip
        finally:
            if client is not None:
                client.stop()
            svc.stop()
            if bare is not None:
                bare.stop()
            sim.stop()
    return rows
