"""What the suites share: figures (Row), the simulator and the service in processes of their own,
CPU and memory readings, a static file server.
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from heapq import heappush, heappushpop
from pathlib import Path
from typing import Any

from ..prices import parse_price

__all__ = [
    "LiveIngest",
    "Row",
    "ServiceProcess",
    "SimProcess",
    "StaticServer",
    "cpu_seconds",
    "loop_ns",
    "median_bytes",
    "peak_rss_mib",
    "random_walk",
    "rss_mib",
    "two_heaps",
    "two_heaps_bytes",
]


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


def loop_ns(fn: Callable[[Any], object], inputs: Sequence[Any], repeat: int = 5) -> float:
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


def median_bytes(m: Any) -> int:
    """Memory a median holds (its own count: the heaps, their counts, the cold chunks)."""
    return int(m.nbytes())


def two_heaps_bytes(values: Sequence[int]) -> int:
    """Memory of the naive running median that keeps every value in two heaps."""
    low, high = two_heaps(values)
    size = sys.getsizeof(low) + sys.getsizeof(high)
    seen: set[int] = set()
    for x in (*low, *high):
        if id(x) not in seen:  # equal prices from one list may share an int object
            seen.add(id(x))
            size += sys.getsizeof(x)
    return size


def two_heaps(values: Sequence[int]) -> tuple[list[int], list[int]]:
    """The naive baseline: every value in two heaps (low negated, high)."""
    low: list[int] = []
    high: list[int] = []
    for v in values:
        if len(low) == len(high):
            heappush(low, -heappushpop(high, v))
        else:
            heappush(high, -heappushpop(low, -v))
    return low, high


def _stop(proc: Any, sig: int, timeout: float) -> None:
    """``sig`` to ``proc`` (if it still runs), then a kill once ``timeout`` s pass without
    its exit: a caller stopping several processes in turn never raises past the rest."""
    import subprocess

    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class SimProcess:
    """``medianserv simulate`` in a subprocess (its own GIL and core), paused at start."""

    def __init__(
        self, tps: float, shared_data: Path | None, extra: Sequence[str] = (), symbols: int = 2292
    ) -> None:
        """The real symbol list where ``shared_data`` has it, else ``symbols`` generated."""
        import subprocess

        info = (shared_data or Path()) / "exchangeInfo-2023-09-08.json"
        cmd = [sys.executable, "-m", "medianserv", "simulate", "--port", "0", "--tps", str(tps),
               "--set", "paused=true", "--set", "history_limit=20000", *extra]  # fmt: skip
        if shared_data is not None and info.exists():
            cmd += ["--exchange-info", str(info)]
        else:
            cmd += ["--symbols", str(symbols)]
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
        """SIGINT, then a kill if it has not exited within 20 s."""
        _stop(self.proc, signal.SIGINT, 20.0)


class ServiceProcess:
    """``medianserv`` (the real command line) in a subprocess against a simulator, logging to
    a file (a full pipe would stall it)."""

    def __init__(self, sim: SimProcess, data_dir: Path, extra: Sequence[str] = (),
                 env: Mapping[str, str] | None = None) -> None:  # fmt: skip
        """``env``: variables set for it beside this process's own."""
        import subprocess

        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir / f"service-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "medianserv", "--host", "127.0.0.1", "--port", "0",
             "--data-dir", str(data_dir), "--rest-url", sim.rest_url, "--ws-url", sim.ws_url,
             *extra],
            stderr=self._log, env=None if env is None else {**os.environ, **env},
        )  # fmt: skip
        self.started = time.monotonic()
        try:
            self.base = f"http://127.0.0.1:{self._port()}"
        except BaseException:  # never started as far as the caller knows: none left behind
            self.proc.kill()
            self.proc.wait(60)
            self._log.close()
            raise

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

    def stop(self, sig: int = signal.SIGINT, timeout: float = 300.0) -> None:
        """Sends ``sig`` and waits up to ``timeout`` s for the service to exit (its final
        snapshot of a large state takes a while), then kills it: a bench that stops its
        processes one after another never leaves the rest behind for one slow to exit."""
        _stop(self.proc, sig, timeout)
        self._log.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_mib(path: str, field: str) -> float:
    """A ``field:  N kB`` line of a /proc file, in MiB; 0 once the process is gone or where
    the file has no such line."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def rss_mib(pid: int, kind: str = "VmRSS") -> float:
    """A running process's resident memory (Linux /proc): now (``VmRSS``) or its peak
    (``VmHWM``); MiB, 0 once the process is gone."""
    return _proc_mib(f"/proc/{pid}/status", kind)


def huge_pages_mib(pid: int) -> float:
    """How much of a running process's memory is in transparent huge pages (Linux /proc:
    ``AnonHugePages``), MiB; 0 once the process is gone or where the kernel reports none."""
    return _proc_mib(f"/proc/{pid}/smaps_rollup", "AnonHugePages")


def peak_rss_mib(pid: int) -> float:
    """The peak resident memory of a running process (Linux /proc), MiB."""
    return rss_mib(pid, "VmHWM")


_STATIC_SERVER = """
import functools, http.server, sys, time
DELAY = float(sys.argv[3]) / 1000
class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # connections kept alive, as a CDN keeps them
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall
    def send_head(self):
        if DELAY:
            time.sleep(DELAY)  # a round trip to a CDN's edge, before the first byte
        return super().send_head()
    def log_message(self, *args):
        pass
handler = functools.partial(Handler, directory=sys.argv[2])
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), handler).serve_forever()
"""


class StaticServer:
    """A directory served over local HTTP/1.1 (the standard library's file server, keeping
    connections alive as a CDN does), in its own process; each answer is held back
    ``latency_ms`` before its first byte, as a round trip to a distant server would."""

    def __init__(self, directory: Path, latency_ms: float = 0.0) -> None:
        import socket
        import subprocess

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _STATIC_SERVER, str(port), str(directory), str(latency_ms)],
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


class LiveIngest:
    """Live ingest of every symbol of ``sim`` (a :class:`SimProcess`) in this process, as
    the service runs it, trading resumed once it is ready; ``watch()`` samples its readers'
    worst lag every 0.1 s into ``lags`` until ``stop()``, which stops it all."""

    def __init__(self, sim: SimProcess) -> None:
        import dataclasses
        import threading

        from ..config import Config
        from ..exchange import RestClient
        from ..ingest import Ingest

        config = dataclasses.replace(Config(), rest_url=sim.rest_url, ws_url=sim.ws_url)
        self.ingest = Ingest(config.validate(), RestClient(config.rest_url))
        self.lags: list[int] = []
        self._applied = 0  # trades applied, read at stop()
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="lag-watch", daemon=True)
        self.ingest.start()
        self.ingest.first_listing()
        deadline = time.monotonic() + 120
        while not self.ingest.ready()[0] and time.monotonic() < deadline:
            time.sleep(0.1)
        sim.control("resume")

    def _watch(self) -> None:
        while not self._done.wait(0.1):
            self.lags.append(max(r.stats.lag_ms for r in self.ingest.readers))

    def watch(self) -> None:
        self._watcher.start()

    @property
    def worst_lag_s(self) -> float:
        return max(self.lags, default=0) / 1000

    def stop(self) -> int:
        """Stop watching and ingesting; returns the trades applied. Idempotent."""
        if not self._done.is_set():
            self._done.set()
            if self._watcher.is_alive():
                self._watcher.join()
            self._applied = int(self.ingest.counters()["applied"])
            self.ingest.stop()
        return self._applied
