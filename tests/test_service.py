"""End to end: the real command line as a subprocess against the simulator, over HTTP."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medianserv.sim import SimConfig, Simulator

from .conftest import STARTED
from .support import http_get, wait_for

FAST = ["--control-messages-per-second", "4", "--backoff-initial", "0.05", "--backoff-max", "0.5",
        "--backfill-delay", "0.2", "--silence-timeout", "2", "--probe-timeout", "2",
        "--rest-weight-window", "3"]  # fmt: skip


class Running:
    """``medianserv`` in a subprocess; its stderr is collected line by line."""

    def __init__(self, sim: Simulator, data_dir: Path, *extra: str, **popen: Any) -> None:
        cmd = [sys.executable, "-m", "medianserv", "--host", "127.0.0.1", "--port", "0",
               "--data-dir", str(data_dir), "--rest-url", sim.rest_url, "--ws-url", sim.ws_url,
               "--snapshot-interval", "0.3", *FAST, *extra]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, **popen)
        STARTED.append(self.proc)
        self.lines: list[str] = []
        self.port: int | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_for(lambda: self.port is not None or self.proc.poll() is not None, timeout=30)
        assert self.port is not None, "\n".join(self.lines)
        self.base = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            m = re.search(r"API listening on http://[^:]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))

    def get(self, path: str) -> tuple[int, Any]:
        status, _, body = http_get(self.base + path)
        return status, body

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code


def served(run: Running, symbols: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for s in symbols:
        status, body = run.get("/" + s)
        assert status == 200, (s, body)
        if body["count"]:
            out[s] = {k: body[k] for k in ("count", "median", "last_price")}
    return out


def truth(sim: Simulator) -> dict[str, dict[str, Any]]:
    return {s: {k: t[k] for k in ("count", "median", "last_price")} for s, t in sim.truth().items()}


def settle(sim: Simulator, run: Running, timeout: float = 60) -> None:
    sim.pause()
    symbols = sim.listed()
    wait_for(lambda: served(run, symbols) == truth(sim), timeout=timeout, interval=0.3)


def publish(sim: Simulator, n: int) -> None:
    start = sim.stats()["trades_published"]
    sim.resume()
    wait_for(lambda: sim.stats()["trades_published"] >= start + n, timeout=60)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    config = SimConfig(symbols=80, paused=True, trades_per_second=2000, seed=11, weight_window=3.0)
    with Simulator(config) as s:
        yield s


def test_run_stop_restart_restore(sim: Simulator, tmp_path: Path) -> None:
    run = Running(sim, tmp_path)
    assert run.get("/-/ready")[0] in (200, 503)  # answers at once, ready or not
    wait_for(lambda: run.get("/-/ready")[0] == 200, timeout=60)
    assert run.get("/symbols") == (200, sim.listed())
    publish(sim, 3000)
    settle(sim, run)
    from prometheus_client.parser import text_string_to_metric_families

    metrics = http_get_text(run.base + "/metrics")[2]
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(metrics) for s in f.samples}  # fmt: skip

    def counter(name: str) -> int:
        return int(samples[(f"medianserv_{name}", ())])

    # every trade once: from the stream, or over REST when it was missed or slow to arrive
    applied, backfilled = counter("trades_applied_total"), counter("trades_backfilled_total")
    assert applied + backfilled == sim.stats()["trades_published"]
    assert (counter("ready"), counter("connections_open"), counter("reconnects_total"),
            counter("thread_restarts_total")) == (1, 1, 0, 0)  # fmt: skip
    names = ("frames_rejected_total", "trades_backfilled_total", "snapshot_age_seconds",
             "connection_lag_seconds", "backfill_pending_symbols",
             "thread_errors_total")  # fmt: skip
    for name in names:
        assert f"medianserv_{name}" in metrics, name
    assert "process_resident_memory_bytes" in metrics  # the standard series too
    assert run.stop() == 0
    log = "\n".join(run.lines)
    assert "final snapshot" in log and "stopped" in log
    assert not any("Traceback" in line for line in run.lines), log

    export = subprocess.run(
        [sys.executable, "-m", "medianserv", "snapshot", "export", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    exported = {
        d["symbol"]: {k: d[k] for k in ("count", "median", "last_price")}
        for d in map(json.loads, export.stdout.splitlines())
        if d["count"]
    }
    assert exported == truth(sim)

    publish(sim, 1000)  # trades while we are down: found and backfilled after the restart
    sim.pause()
    before = truth(sim)
    run = Running(sim, tmp_path)
    restored = served(run, sim.listed())  # served at once, before the feed is back
    assert restored == exported
    wait_for(lambda: run.get("/-/ready")[0] == 200, timeout=60)
    settle(sim, run)
    assert served(run, sim.listed()) == before
    assert run.stop(signal.SIGTERM) == 0


def test_kill_at_random_moments_never_corrupts(sim: Simulator, tmp_path: Path) -> None:
    crash_cycles(sim, tmp_path, kills=3, seed=1)


@pytest.mark.slow
def test_kill_at_random_moments_never_corrupts_long(sim: Simulator, tmp_path: Path) -> None:
    crash_cycles(sim, tmp_path, kills=25, seed=2)


def snapshots_written(run: Running) -> int:
    status, _, text = http_get_text(run.base + "/metrics")
    m = re.search(r"^medianserv_snapshots_total (\d+)", text, re.M)
    return int(m.group(1)) if status == 200 and m else 0


def http_get_text(url: str) -> tuple[int, dict[str, str], str]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, dict(resp.headers), resp.read().decode()


def crash_cycles(sim: Simulator, data_dir: Path, kills: int, seed: int) -> None:
    """SIGKILL the service at random moments (restoring, subscribing, ingesting, snapshotting)
    while trades keep flowing; the store must open and, after catch-up, match the truth."""
    rnd = random.Random(seed)
    run = Running(sim, data_dir)
    wait_for(lambda: run.get("/-/ready")[0] == 200, timeout=60)
    wait_for(lambda: snapshots_written(run) >= 1)  # our history starts with a stored baseline
    sim.resume()
    for _ in range(kills):
        time.sleep(rnd.uniform(0.1, 3.0))  # the moment of the crash is the point: random
        run.proc.send_signal(signal.SIGKILL)
        run.proc.wait(10)
        info = subprocess.run(
            [sys.executable, "-m", "medianserv", "snapshot", "info", "--data-dir", str(data_dir)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert info.returncode == 0, info.stderr  # the store opens and is consistent
        run = Running(sim, data_dir)
    wait_for(lambda: run.get("/-/ready")[0] == 200, timeout=60)
    publish(sim, 500)
    settle(sim, run, timeout=90)
    assert run.stop() == 0


def test_refuses_a_store_of_another_version(sim: Simulator, tmp_path: Path) -> None:
    from medianserv.store import Store

    store = Store.open(tmp_path)
    with store.env.begin(write=True) as txn:
        txn.put(b"format", b"99", db=store._meta)
    store.close()
    proc = subprocess.run(
        [sys.executable, "-m", "medianserv", "--data-dir", str(tmp_path), "--port", "0",
         "--rest-url", sim.rest_url, "--ws-url", sim.ws_url],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2 and "format" in proc.stderr and "--reset" in proc.stderr


def test_environment_variables_configure_the_service() -> None:
    env = {**os.environ, "MEDIANSERV_PORT": "9999", "MEDIANSERV_SNAPSHOT_INTERVAL": "7"}
    out = subprocess.run([sys.executable, "-m", "medianserv", "--help"], env=env,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "MEDIANSERV_PORT" in out and "9999" in out and "(default: 7.0)" in out
