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

from medianserv.prices import format_median, format_price
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


def expected_candles(sim: Simulator, symbol: str, length: int) -> list[list[Any]]:
    """The candles of every trade the simulator published for ``symbol`` (all counted once the
    service has settled), as the API writes them, final flags aside."""
    with sim.hub_lock:
        t = sim.market.truth[symbol]
        assert t.history_first == t.first_id, "the truth no longer holds every trade"
        trades = list(zip(t.prices, t.times, strict=True))
    groups: dict[int, list[int]] = {}
    for price, ms in trades:  # in trade id order
        groups.setdefault(ms - ms % length, []).append(price)
    rows = []
    for start in sorted(groups):
        prices = groups[start]
        ranked, n = sorted(prices), len(prices)
        rows.append([start, format_price(prices[0]), format_price(ranked[-1]),
                     format_price(ranked[0]), format_price(prices[-1]), n,
                     format_median(ranked[(n - 1) // 2] + ranked[n // 2])])  # fmt: skip
    return rows


def assert_candles_exact(sim: Simulator, run: Running) -> None:
    """Every symbol's candles of every interval equal the simulator's trades: no trade lost or
    counted twice in any candle; every row final but the first (where counting began) and
    the last (still open)."""
    for symbol in sim.truth():
        for interval, length in (("1m", 60_000), ("1h", 3_600_000), ("1d", 86_400_000)):
            status, body = run.get(f"/{symbol}/candles?interval={interval}&limit=1000")
            assert status == 200, body
            rows = body["rows"]
            assert [r[:7] for r in rows] == expected_candles(sim, symbol, length), (
                symbol,
                interval,
            )
            assert [r[7] for r in rows[1:-1]] == [True] * len(rows[1:-1]), (symbol, interval)
            assert not rows or (rows[0][7] is False and rows[-1][7] is False)


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
    names = ("frames_rejected_total", "trades_backfilled_total", "trades_waited_total",
             "snapshot_age_seconds",
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
    assert_candles_exact(sim, run)  # the trades missed while down landed in their own periods
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
    assert_candles_exact(sim, run)  # after SIGKILLs: no trade lost or doubled in any candle
    assert run.stop() == 0


def test_candles_stay_exact_over_days_restarts_and_kills(tmp_path: Path) -> None:
    """The simulator's clock runs 600 times faster, from two hours before a UTC midnight:
    trades cross many minutes, hours and a day while the service is stopped, SIGKILLed and
    restarted; after catch-up every symbol's 1m, 1h and 1d candles equal its trades."""
    real0 = time.time()
    midnight = (real0 // 86_400 + 1) * 86_400
    sim_clock = lambda: midnight - 7_200 + (time.time() - real0) * 600  # noqa: E731
    config = SimConfig(symbols=30, paused=True, trades_per_second=1000, seed=5, weight_window=3.0)
    with Simulator(config, clock=sim_clock) as sim:
        run = Running(sim, tmp_path)
        wait_for(lambda: run.get("/-/ready")[0] == 200, timeout=60)
        wait_for(lambda: snapshots_written(run) >= 1)
        publish(sim, 4000)
        run.proc.send_signal(signal.SIGKILL)
        run.proc.wait(10)
        publish(sim, 3000)  # while we are down: backfilled into their own periods
        run = Running(sim, tmp_path)
        publish(sim, 3000)
        run.proc.send_signal(signal.SIGKILL)
        run.proc.wait(10)
        run = Running(sim, tmp_path)
        publish(sim, 4000)
        wait_for(lambda: sim_clock() > midnight + 60, timeout=60)
        publish(sim, 1000)
        settle(sim, run, timeout=90)
        assert_candles_exact(sim, run)
        some = next(iter(sim.truth()))
        days = run.get(f"/{some}/candles?interval=1d")[1]["rows"]
        minutes = run.get(f"/{some}/candles?interval=1m&limit=1000")[1]["rows"]
        assert len(days) == 2 and len(minutes) > 60  # the test spans what it claims
        assert run.stop() == 0


def test_a_store_of_format_6_is_folded_at_its_first_start(sim: Simulator, tmp_path: Path) -> None:
    """A store written by a release of format 6 (a key a price level) starts the service
    with every statistic as stored; that first start moves its levels into batches (said in
    the log, with how many) and the service goes on exact from there."""
    from medianserv.bench.scale import _as_format_6 as as_format_6
    from medianserv.store import Store

    run = Running(sim, tmp_path)
    wait_for(lambda: run.get("/-/ready")[0] == 200, timeout=60)
    publish(sim, 2000)
    settle(sim, run)
    assert run.stop() == 0
    levels = as_format_6(str(tmp_path))["levels"]  # a key a level, as format 6 kept them
    before = truth(sim)
    run = Running(sim, tmp_path)
    assert served(run, sim.listed()) == before  # served at once, as stored
    assert f"store upgraded: {levels} price levels kept a key each" in "\n".join(run.lines)
    publish(sim, 1000)
    settle(sim, run)
    assert run.stop() == 0
    store = Store.open(tmp_path, readonly=True)
    assert store.version == 7 and store.info()["levels"] >= levels
    with store.env.begin() as txn:
        assert txn.stat(store._levels)["entries"] == 0
    store.close()


def test_a_second_service_on_the_same_store_is_refused(sim: Simulator, tmp_path: Path) -> None:
    """A second medianserv on a data directory a running one writes exits with code 2 and
    says why, before it changes anything (``--reset`` too); the first goes on serving, and
    its statistics stay exact."""
    run = Running(sim, tmp_path)
    wait_for(lambda: run.get("/-/ready")[0] == 200, timeout=60)
    publish(sim, 1000)
    for extra in ([], ["--reset"]):
        second = subprocess.run(
            [sys.executable, "-m", "medianserv", "--data-dir", str(tmp_path), "--port", "0",
             "--rest-url", sim.rest_url, "--ws-url", sim.ws_url, *extra],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"in use by another medianserv (pid {run.proc.pid})" in second.stderr
    settle(sim, run)
    assert run.stop() == 0
    export = subprocess.run(
        [sys.executable, "-m", "medianserv", "snapshot", "export", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    stored = {d["symbol"]: {k: d[k] for k in ("count", "median", "last_price")}
              for d in map(json.loads, export.stdout.splitlines()) if d["count"]}  # fmt: skip
    assert stored == truth(sim)


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
