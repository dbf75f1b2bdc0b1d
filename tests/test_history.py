"""History import end to end: the real command line against the simulator with a past served
as archives; every trade since listing counted exactly once, across SIGKILL and SIGINT."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from medianserv.archive import native_reader
from medianserv.sim import SimConfig, Simulator

from .support import wait_for
from .test_service import Running, expected_candles, http_get_text, publish


@pytest.fixture
def past_sim() -> Iterator[Simulator]:
    """Symbols with two years of trades before now: more than 24 monthly files each, crossing
    1 January 2025 (archive times in ms before, µs after), and daily files this month."""
    config = SimConfig(symbols=16, paused=True, trades_per_second=500, seed=23, past_days=730,
                       past_trades_per_day=12, weight_window=3.0)  # fmt: skip
    with Simulator(config) as sim:
        yield sim


def start(sim: Simulator, data: Path, *extra: str) -> Running:
    return Running(sim, data, "--history", "all", "--archive-url", sim.archive_url,
                   "--history-workers", "1", *extra)  # fmt: skip


def served(run: Running, symbols: list[str]) -> dict[str, tuple[Any, ...]]:
    out = {}
    for s in symbols:
        status, body = run.get("/" + quote(s))
        assert status == 200, body
        out[s] = (body["count"], body["median"], body["last_price"], body["first_trade_id"],
                  body["history"])  # fmt: skip
    return out


def expected(sim: Simulator) -> dict[str, tuple[Any, ...]]:
    truth = sim.truth()
    out = {}
    for s in sim.listed():
        t = truth.get(s)
        out[s] = (
            (t["count"], t["median"], t["last_price"], t["first_id"], "complete")
            if t else (0, None, None, None, "complete")
        )  # fmt: skip
    return out


def settle(sim: Simulator, run: Running, timeout: float = 120) -> None:
    sim.pause()
    try:
        wait_for(lambda: served(run, sim.listed()) == expected(sim), timeout=timeout, interval=0.5)
    except AssertionError:
        mine, want = served(run, sim.listed()), expected(sim)
        diff = {s: (mine[s], want[s]) for s in want if mine[s] != want[s]}
        raise AssertionError(f"{len(diff)} differ, e.g. {list(diff.items())[:3]}") from None


def assert_days_since_listing(sim: Simulator, run: Running) -> None:
    """Every symbol's daily candles reach back to its first trade and equal the simulator's
    trades, archived (days whole in a file, or split between files and REST) and live; each
    is final but the open one."""
    for symbol in sim.truth():
        status, body = run.get(f"/{quote(symbol)}/candles?interval=1d&limit=1000")
        assert status == 200, body
        rows = body["rows"]
        assert [r[:7] for r in rows] == expected_candles(sim, symbol, 86_400_000), symbol
        assert [r[7] for r in rows] == [True] * (len(rows) - 1) + [False] * bool(rows), symbol


def metric(run: Running, name: str) -> dict[str, float]:
    text = http_get_text(run.base + "/metrics")[2]
    pattern = rf"^medianserv_{name}(\{{[^}}]*\}})? (\S+)$"
    return {m.group(1) or "": float(m.group(2)) for m in re.finditer(pattern, text, re.M)}


def files_applied(run: Running) -> int:
    """Archive files this process applied (per-file log lines are DEBUG)."""
    return int(metric(run, "history_files_total").get("", 0))


def test_every_trade_since_listing_across_kills_and_stops(
    past_sim: Simulator, tmp_path: Path
) -> None:
    """Import, SIGKILL in the middle, restart, SIGINT in the middle, restart: the statistics
    equal the truth over every trade, past and live, each counted once; first_trade_id is
    each symbol's first trade; history is complete everywhere."""
    sim = past_sim
    run = start(sim, tmp_path)
    sim.resume()  # live trades meanwhile
    wait_for(lambda: files_applied(run) >= 30, timeout=120)
    run.stop(signal.SIGKILL)
    run = start(sim, tmp_path)
    first_run_done = files_applied(run)
    wait_for(lambda: files_applied(run) >= first_run_done + 30, timeout=120)
    assert run.stop() == 0  # SIGINT: a clean stop in the middle of the import
    run = start(sim, tmp_path)
    wait_for(lambda: run.get("/-/status")[1]["history"]["pending"] == 0
             and run.get("/-/status")[1]["history"]["importing"] == 0, timeout=180)  # fmt: skip
    publish(sim, 300)
    settle(sim, run)
    assert_days_since_listing(sim, run)
    status = run.get("/-/status")[1]["history"]
    assert status["symbols"] == len(sim.listed()) and status["failed"] == 0
    assert metric(run, "history_failures_total") == {'{reason="none"}': 0.0}
    assert not any("Traceback" in line for line in run.lines)
    assert run.stop() == 0


@pytest.mark.parametrize("kind", ["truncated", "bad_price", "backwards", "wrong_symbol"])
def test_bad_archives_are_refused_and_counted(
    past_sim: Simulator, tmp_path: Path, kind: str
) -> None:
    """A file that fails a check is refused (nothing of it applied), counted by reason and
    logged; the same trades come from the other dataset, and the result is exact."""
    sim = past_sim
    sim.archives.spoil(kind, count=2)
    run = start(sim, tmp_path)
    wait_for(lambda: run.get("/-/status")[1]["history"]["complete"] == len(sim.listed()),
             timeout=180)  # fmt: skip
    settle(sim, run)
    assert_days_since_listing(sim, run)
    reason = {"truncated": "corrupt", "backwards": "order", "wrong_symbol": "wrong_file"}.get(
        kind, kind
    )
    assert metric(run, "history_failures_total") == {f'{{reason="{reason}"}}': 2.0}
    assert sum(" refused (" in line for line in run.lines) == 2, run.lines
    assert run.stop() == 0


def quirks(run: Running) -> dict[str, float]:
    return {k.split('"')[1]: v for k, v in metric(run, "history_quirks_total").items()}


@pytest.mark.parametrize(
    ("faults", "said"),
    [
        ([("checksum", 2)], {"checksum_retried": 2}),  # republished between two requests
        ([("header", 2)], {"header": 2}),
        ([("audit", 2)], {"invalid_rows": 4}),
        ([("members", 1)], {"members": 1}),
        ([("members", 1), ("short_day", 1)], {"members": 1, "hole": 1}),
        ([("members", 1), ("agg_reused", 1)], {"members": 1, "agg_id_reused": 1}),
        ([("late", 2)], {}),
        ([("rest_audit", 3)], {"rest_invalid_rows": 6}),
    ],
    ids=["republished", "header", "audit", "members", "short_day", "agg_reused", "late",
         "rest_audit"],
)  # fmt: skip
def test_quirks_of_real_archives_end_exact_and_are_said(
    past_sim: Simulator, tmp_path: Path, faults: list[tuple[str, int]], said: dict[str, int]
) -> None:
    """Each known quirk of Binance's archives and REST (BINANCE.md): the import ends exact,
    counts what it met by kind (no failure: they are Binance's, not ours to alert on) and
    says it in one log line each. ``short_day`` and ``agg_reused`` happen to daily files:
    a monthly file with two members first has its month taken from its days."""
    sim = past_sim
    for kind, count in faults:
        if kind == "rest_audit":
            sim.spoil_aggregates("audit", count)
        else:
            sim.archives.spoil(kind, count)
    run = start(sim, tmp_path)
    wait_for(lambda: run.get("/-/status")[1]["history"]["complete"] == len(sim.listed()),
             timeout=180)  # fmt: skip
    settle(sim, run)
    assert_days_since_listing(sim, run)
    met = quirks(run)
    for kind, n in said.items():
        assert met.get(kind, 0) >= n, (kind, met, [x for x in run.lines if "history of" in x])
    assert metric(run, "history_failures_total") == {'{reason="none"}': 0.0}
    listed = {k: v for k, v in met.items() if k not in ("none", "rest_invalid_rows")}
    assert run.get("/-/status")[1]["history"]["quirks"] == listed
    for kind in said:
        if kind != "rest_invalid_rows":
            assert any(f": {kind} (" in line for line in run.lines), (kind, run.lines[-20:])
    assert sim.archives.pending_faults() == 0  # every fault was served
    assert run.stop() == 0


def test_origin_from_the_earliest_archive_when_rest_does_not_reach_it(tmp_path: Path) -> None:
    """REST serves only the last 300 days of aggregates (``fromId=0`` answered from a much
    later id): each symbol's first trade comes from its earliest archive, nothing before
    REST's oldest is lost, first_trade_id is the true first, and the import says so."""
    config = SimConfig(symbols=8, paused=True, trades_per_second=500, seed=29, past_days=500,
                       past_trades_per_day=12, weight_window=3.0, rest_reach_days=300)  # fmt: skip
    with Simulator(config) as sim:
        run = start(sim, tmp_path)
        wait_for(lambda: run.get("/-/status")[1]["history"]["complete"] == len(sim.listed()),
                 timeout=180)  # fmt: skip
        settle(sim, run)  # first_trade_id and count included
        assert_days_since_listing(sim, run)
        traded = [s for s, t in sim.truth().items() if t["count"]]
        assert quirks(run).get("origin_from_archive", 0) >= len(traded) > 0
        assert sum(": origin_from_archive (" in line for line in run.lines) == len(traded)
        assert metric(run, "history_failures_total") == {'{reason="none"}': 0.0}
        assert run.stop() == 0


def test_a_symbol_with_a_non_ascii_name(tmp_path: Path) -> None:
    """币安人生USDT: its archive paths are percent-encoded UTF-8, its streams and REST calls
    carry the name as is; its history and live trades end exact like any other's."""
    config = SimConfig(symbols=4, paused=True, trades_per_second=200, seed=31, past_days=70,
                       past_trades_per_day=30, weight_window=3.0,
                       extra_symbols=("币安人生USDT",))  # fmt: skip
    with Simulator(config) as sim:
        assert "币安人生USDT" in sim.listed()
        run = start(sim, tmp_path)
        wait_for(lambda: run.get("/-/status")[1]["history"]["complete"] == len(sim.listed()),
                 timeout=180)  # fmt: skip
        sim.resume()
        publish(sim, 200)
        settle(sim, run)
        assert_days_since_listing(sim, run)
        status, body = run.get("/" + quote("币安人生USDT"))
        assert status == 200 and body["history"] == "complete" and body["count"] > 0
        assert any("/币安人生USDT/" in path for path in sim.archives.served)
        assert run.stop() == 0


def test_history_status_while_importing(past_sim: Simulator, tmp_path: Path) -> None:
    """The API says what is going on, and the median reaches back as far as it is imported."""
    sim = past_sim
    run = start(sim, tmp_path)
    wait_for(lambda: run.get("/-/status")[1]["history"]["complete"] == len(sim.listed()),
             timeout=180)  # fmt: skip
    symbol = max(sim.truth(), key=lambda s: sim.truth()[s]["count"])
    body = run.get("/" + symbol)[1]
    assert body["history"] == "complete"
    assert body["first_trade_time"] < time.time() * 1000 - 700 * 86_400_000
    rate = metric(run, "history_trades_per_second")[""]
    assert rate > 0 and metric(run, "history_files_total")[""] >= 24
    # progress people can read: files, bytes, what is left (nothing now) and the ETA
    history = run.get("/-/status")[1]["history"]
    assert history["files_applied"] >= 24 and history["bytes"] > 0 and history["rows"] > 0
    assert (history["files_to_go"], history["trades_to_import"], history["eta_s"]) == (0, 0, 0)
    # symbols one after the other: each with a past, but the first, had files reduced while
    # the one before finished, and used them
    assert history["files_early"] >= len(sim.truth()) - 1, history  # truth: those with a past
    assert history["reader"] == ("C" if native_reader() is not None else "polars")
    assert metric(run, "history_files_to_go")[""] == 0
    assert metric(run, "history_trades_to_import")[""] == 0
    assert metric(run, "history_eta_seconds")[""] == 0
    progress = [line for line in run.lines if "INFO history medianserv.importer: history: " in line]
    assert progress and "files applied" in progress[0], run.lines[-30:]
    assert not any(
        "INFO" in line and "history of" in line and " applied, " in line for line in run.lines
    )  # per-file lines are DEBUG
    assert run.stop() == 0
