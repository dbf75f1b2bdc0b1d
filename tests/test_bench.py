"""Smoke runs of every benchmark at tiny sizes, so they cannot rot (no timing is asserted)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from medianserv.bench import Row, bench_core, bench_long, bench_snapshot, random_walk
from medianserv.bench.candles import bench_candles
from medianserv.bench.common import ServiceProcess, median_bytes
from medianserv.bench.ingest import Comparison, _market_rows
from medianserv.median import RunningMedian


def check(rows: list[Row]) -> None:
    assert rows and all(isinstance(r.value, int | float) and r.value >= 0 for r in rows)


def test_baselines_agree_with_running_median() -> None:
    from medianserv.bench.core import _sorted_list_median, _two_heaps_median
    from medianserv.median import RunningMedian

    for n in (1, 2, 3, 1000, 1001):
        prices = random_walk(n, "100.00", "0.01", seed=n)
        m = RunningMedian()
        for p in prices:
            m.add(p)
        assert _two_heaps_median(prices) == _sorted_list_median(prices) == m.twice_median


def test_core_snapshot_long_smoke() -> None:
    rows = bench_core([2000], candle_trades=48_000, candle_rate=400)  # 2 market minutes
    check(rows)
    ratios = [r for r in rows if r.name.startswith("with candles / without")]
    assert [r.name.split(",")[1].strip() for r in ratios] == ["walk", "fresh", "scatter"]
    writes = [r for r in rows if r.name.startswith("of which the LMDB write, with candles")]
    assert len(writes) == 3 and all(r.value > 0 for r in writes)  # each snapshot was written
    ends = [r.name.split(",")[2] for r in rows if r.name.startswith("snapshots with candles")]
    assert ends == [" the first market minute (1)", " the last market minute (2)"] * 3
    check(bench_snapshot(5000, ingest_rate=2000))
    rows = bench_long(2_000_000, levels=1000)
    check(rows)
    sizes = [r.value for r in rows if r.name.startswith("structure size")]
    assert len(sizes) == 1 or sizes[0] == sizes[-1]  # fixed levels: the structure stays the same
    assert any("(1,000 levels)" in r.name for r in rows)  # the level count asked for is honoured
    m = RunningMedian()
    for p in sorted(set(random_walk(1_000_000, "61837.63", "0.01")))[:1000]:
        m.add(p)
    assert sizes[0] * 2**20 >= median_bytes(m)  # the figure covers at least the levels held


def test_candles_smoke() -> None:
    """bench candles on a small market: every row, and the largest snapshot's candle writes
    at least a whole minute's (its bounds, and a minute of 40 trades on as many levels)."""
    rows = {r.name: r.value for r in bench_candles(trades_per_day=57_600, days=3)}
    check([Row(k, v, "") for k, v in rows.items()])
    assert rows["largest snapshot's candle writes"] >= 40 * 16
    assert rows["1d rows of a settled day"] == 1 and rows["1m rows of a settled day"] == 1_440


def test_ingest_reads_the_candles_cost_from_paired_windows() -> None:
    """The "together" ratio pairs each T window's two figures: here the two sides' medians
    come from different windows (their ratio 2.4), while the windows' own ratios are 1.1, 1.2
    and 3.0 (median 1.2; the lowest and highest reported beside it). Pairing other windows
    changes it; a window one side lacks fails."""
    per_trade = {"medianserv": [2.0, 4.0, 3.0], "no candles": [2.0, 2.0, 2.0],
                 "medianserv, together": [1.1, 2.4, 3.0], "no candles, together": [1.0, 2.0, 1.0],
                 "client": [1.0, 1.0]}  # fmt: skip
    rates = {"medianserv": [10.0, 30.0, 20.0], "client": [5.0, 30.0, 7.0]}
    rows, mine = _market_rows("walk", per_trade, rates, {"medianserv": 3.3, "no candles": 3.0}, 1)
    got = {r.name.removeprefix("walk: "): r.value for r in rows}
    assert mine == 3.0 and got["medianserv trades/s"] == 20.0
    assert got["the same, each flooded alone in turn"] == 1.5
    together = "CPU per trade with candles / without, flooded together, the median of the T "
    assert abs(got[together + "windows' (goal <= 1.1)"] - 1.2) < 1e-12
    assert abs(got["the same, the lowest T window's"] - 1.1) < 1e-12
    assert got["the same, the highest T window's"] == 3.0
    assert got["medianserv CPU per trade, the two flooded together"] == 2.4
    assert got["medianserv --no-candles CPU per trade, the same"] == 1.0
    assert abs(got["the same, with candles / without (goal <= 1.1)"] - 1.1) < 1e-12
    assert got["client CPU / medianserv CPU per trade (goal 1)"] == 1.0 / 3.0
    assert got["decode-only client CPU per trade"] == 1.0
    assert got["decode-only client trades/s"] == 7.0  # the median, not the mean
    assert got["medianserv --no-candles CPU per trade"] == 2.0
    assert [v for k, v in got.items() if k.startswith("UTC hours that ended in the span")] == [1]
    per_trade["no candles, together"] = [1.0, 1.0, 2.0]  # windows 2 and 3 swapped: 1.5 now
    rows, _ = _market_rows("walk", per_trade, rates, {"medianserv": 3.3, "no candles": 3.0}, 0)
    got = {r.name.removeprefix("walk: "): r.value for r in rows}
    assert got[together + "windows' (goal <= 1.1)"] == 1.5
    del per_trade["no candles, together"][0]  # a window of one side alone: refused
    with pytest.raises(ValueError):
        _market_rows("walk", per_trade, rates, {"medianserv": 3.3, "no candles": 3.0}, 0)
    per_trade["no candles, together"].insert(0, 1.0)
    rows, _ = _market_rows("walk", per_trade, rates, {"medianserv": 3.3, "no candles": 3.0}, 0,
                           Comparison(huge_pages=True))  # fmt: skip
    got = {r.name.removeprefix("walk: "): r.value for r in rows}
    huge = "CPU per trade with huge pages / without, flooded together, the median of the T "
    assert got[huge + "windows'"] == 1.5  # the same windows, named for what they compare
    assert got["medianserv without huge pages CPU per trade"] == 2.0
    assert abs(got["the same, with huge pages / without"] - 1.1) < 1e-12
    assert not any("candles" in name or "goal <= 1.1" in name for name in got)


def test_ingest_refuses_a_market_it_does_not_have(capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt market is refused before any process starts, by the CLI and the function."""
    from medianserv.bench import bench_ingest
    from medianserv.cli import main

    with pytest.raises(SystemExit) as refused:  # argparse's refusal of an argument
        main(["bench", "ingest", "--markets", "walk,flat"])
    assert refused.value.code == 2
    assert "no market flat" in capsys.readouterr().err
    for markets in (("walk", "flat"), ()):
        with pytest.raises(ValueError):
            bench_ingest(1.0, None, 1, markets)


def test_ingest_and_api_smoke_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # ingest's second service differs by huge pages rather than by --no-candles: the same
    # windows and rows (the bench refuses a run whose first service lacks the variable); the
    # rows of the usual comparison are test_ingest_reads_the_candles_cost_from_paired_windows's
    runs = (("ingest", ["--markets", "fresh", "--huge-pages"]), ("api", ["--rates", "40"]))
    for suite, extra in runs:
        proc = subprocess.run(
            [sys.executable, "-m", "medianserv", "bench", suite, "--seconds", "1",
             "--json", str(out), *extra],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rows = json.loads(out.read_text())
        assert rows and all({"name", "value", "unit"} <= set(r) for r in rows)
        errors = [r for r in rows if r["name"].endswith("errors")]
        assert all(r["value"] == 0 for r in errors)
        if suite == "ingest":  # each service's memory, the ratio named for what it compares
            names = [r["name"] for r in rows]
            assert sum("resident memory" in n for n in names) == 2, names
            assert sum(n.endswith("in huge pages") for n in names) == 2, names
            assert any("with huge pages / without" in n for n in names), names
            assert not any("candles" in n for n in names), names


def test_history_scale_and_market_smoke_through_the_cli(tmp_path: Path) -> None:
    """The history suites at tiny sizes: each checks its own result (the import against the
    generator's count, the restore against the import) and fails loudly otherwise."""
    out = tmp_path / "bench.json"
    runs = (
        ("scale", ["--prices", "20000", "--files", "4", "--share", "0.05"]),
        ("history", ["--trades", "200000", "--files", "2"]),
        ("history", ["--market", "--symbols", "6", "--trades", "200000"]),
    )
    for suite, extra in runs:
        proc = subprocess.run(
            [sys.executable, "-m", "medianserv", "bench", suite, "--json", str(out), *extra],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        rows = json.loads(out.read_text())
        assert rows and all(r["value"] >= 0 for r in rows), rows
        if suite == "scale":  # and a store of format 6 folded (checked by the bench itself)
            assert any(r["name"].startswith("scale: the next start") for r in rows), rows


def test_soak_smoke_with_a_no_candles_service_beside_it() -> None:
    """Two services (candles kept, not) follow the same simulator at a steady rate; both must
    be exact at the end, and the comparison rows come out. Each is read for what it is: the
    one keeping candles holds every trade in its hourly candles, the other serves none."""
    from medianserv.bench import bench_soak

    rows = bench_soak(minutes=0.1, tps=400, symbols=20, compare_candles=True, line_s=3.0)
    check(rows)
    values = {r.name: r.value for r in rows}
    assert values["soak: trades applied"] > 0
    assert values["soak: symbols not exact at the end"] == 0
    assert values["soak: --no-candles: symbols not exact at the end"] == 0
    assert values["soak: symbols whose hourly candles do not add up to their count"] == 0
    assert values["soak: --no-candles: candle rows served"] == 0
    assert values["soak: CPU per trade with candles / without (goal <= 1.1)"] > 0


def test_a_service_that_does_not_exit_on_its_signal_is_killed(tmp_path: Path) -> None:
    """ServiceProcess.stop kills a process that outlives its wait, so the processes a bench
    stops after it are still stopped (a raise there would leave them behind)."""
    deaf = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                             "signal.signal(signal.SIGINT, signal.SIG_IGN); print('ready', "
                             "flush=True); time.sleep(600)"], stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert deaf.stdout is not None and deaf.stdout.readline().strip() == b"ready"
        svc = object.__new__(ServiceProcess)
        svc.proc, svc._log = deaf, (tmp_path / "log").open("w")
        svc.stop(timeout=0.5)
        assert deaf.returncode == -signal.SIGKILL and svc._log.closed
    finally:
        if deaf.poll() is None:
            deaf.kill()
            deaf.wait()
        assert deaf.stdout is not None
        deaf.stdout.close()
