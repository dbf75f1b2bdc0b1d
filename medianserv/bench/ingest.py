"""``bench ingest``: medianserv and a bare websockets client, each in its own process, flooded at
the same time.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .common import Row, ServiceProcess, SimProcess, cpu_seconds

__all__ = ["bench_ingest", "run_bare_client"]


def run_bare_client(ws_url: str, rest_url: str, seconds: float) -> None:
    """The baseline, in a process of its own: websockets' sync client on the same streams over
    the same number of connections as medianserv, each thread doing ``recv()`` and
    ``json.loads`` only. Prints ``ready`` once subscribed, then ``<monotonic> <frames>`` every
    0.2 s on stdout, for ``seconds``."""
    import json
    import threading
    import urllib.request

    from websockets.sync.client import connect

    from ..streams import plan_connections, stream_of

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
    sim = SimProcess(0, shared_data, ["--set", "flood=true", "--set", "ping_interval=5"])
    bare: subprocess.Popen[str] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        svc = ServiceProcess(sim, Path(tmp))
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
            c0 = (cpu_seconds(svc.proc.pid), cpu_seconds(bare.pid))
            sent0 = sim.control("stats")["frames_sent"]
            time.sleep(seconds)
            t1, a1 = time.monotonic(), applied()
            c1 = (cpu_seconds(svc.proc.pid), cpu_seconds(bare.pid))
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
