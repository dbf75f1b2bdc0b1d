"""``bench recovery``: faults, kills and a long outage against the simulator, each checked against
its truth.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import Row, ServiceProcess, SimProcess

__all__ = ["bench_recovery"]


def _compare(svc: ServiceProcess, sim: SimProcess) -> tuple[int, int]:
    """(symbols whose count, median or last price differ from the truth, of which counted
    more trades than were published). The simulator should be paused."""
    truth = sim.control("truth")
    differ = over = 0
    for item in svc.get("/-/all"):
        t = truth.get(item["symbol"])
        mine = (item["count"], item["median"], item["last_price"])
        want = (t["count"], t["median"], t["last_price"]) if t else (0, None, None)
        if mine != want:
            differ += 1
            over += item["count"] > want[0]
    return differ, over


def _until_complete(
    svc: ServiceProcess, since: float, timeout: float, stable: float = 10.0
) -> float | None:
    """Seconds from ``since`` until the service became complete (ready, no trade known
    missing, no reconnect check pending) and stayed so for ``stable`` seconds; None on
    timeout. Polled every 0.25 s: a fault takes a moment to be noticed, so being complete
    right after it proves nothing until it lasts."""
    deadline = time.monotonic() + timeout
    complete_since: float | None = None
    while time.monotonic() < deadline:
        status = svc.get("/-/status")
        now = time.monotonic()
        complete = (
            status.get("ready")
            and status.get("missing_trades") == 0
            and status.get("sweep_pending_symbols") == 0
        )
        if not complete:
            complete_since = None
        elif complete_since is None:
            complete_since = now
        elif now - complete_since >= stable:
            return complete_since - since
        time.sleep(0.25)
    return None


def _until_exact(
    svc: ServiceProcess, sim: SimProcess, since: float, timeout: float
) -> float | None:
    """Seconds from ``since`` until every symbol equals the truth (the simulator paused);
    None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _compare(svc, sim) == (0, 0):
                return time.monotonic() - since
        except OSError:
            pass  # the API is not up yet
        time.sleep(0.5)
    return None


def _rest_spent(svc: ServiceProcess) -> dict[str, tuple[float, float]]:
    calls = svc.metric("rest_requests_total")
    weight = svc.metric("rest_weight_total")
    return {k.split('"')[1]: (calls[k], weight[k]) for k in calls}


def _spent_rows(label: str, before: dict[str, Any], after: dict[str, Any]) -> list[Row]:
    rows = []
    for endpoint in ("aggTrades", "historicalTrades", "ticker/24hr"):
        calls = after[endpoint][0] - before[endpoint][0]
        weight = after[endpoint][1] - before[endpoint][1]
        rows.append(
            Row(f"{label}: {endpoint} calls / weight", calls, f"calls, {weight:,.0f} weight")
        )
    return rows


def _check_rows(label: str, svc: ServiceProcess, sim: SimProcess) -> list[Row]:
    """Pause trading, let the last frames land, compare everything with the truth."""
    sim.control("pause")
    _until_complete(svc, time.monotonic(), 120, stable=2.0)
    differ, over = _compare(svc, sim)
    stats = sim.control("stats")
    return [
        Row(f"{label}: symbols not exact at the end", differ, "symbols"),
        Row(f"{label}: symbols with trades counted twice", over, "symbols"),
        Row(f"{label}: Binance limit violations", sum(stats["violations"].values()), "violations"),
        Row(
            f"{label}: most weight in one minute (limit 6,000)",
            stats["max_window_weight"],
            "weight",
        ),
    ]


def bench_recovery(
    shared_data: Path | None = None,
    *,
    tps: float = 300.0,
    down_seconds: float = 600.0,
    down_tps: float = 3000.0,
    kills: int = 3,
    endpoints: Sequence[str] = ("historicalTrades", "aggTrades"),
    timeout: float = 1800.0,
) -> list[Row]:
    """How fast the statistics are exact again after faults, crashes and an outage.

    For each backfill endpoint (``historicalTrades``: the previous release's path, with its
    weight share of 0.5 and one worker; ``aggTrades``: the defaults): the service and the
    simulator (the real symbol set) run in their own processes at ``tps`` trades/s, then

    1. the fault sequence: a drop, a 3 s refusal with a drop, a 3 s stall, a serverShutdown
       and a lifetime expiry, 10 s apart; seconds from the last fault until no trade is
       known missing, REST calls and weight by endpoint;
    2. ``kills`` times SIGKILL at a random moment, 2-4 s down while the market trades, a
       restart (the market then paused): seconds from each restart until every symbol is
       exact against the truth;
    3. (``down_seconds`` > 0) a clean stop, ``down_seconds`` of trading at ``down_tps``, a
       restart: seconds until exact, against the floor the weight budget sets (the weight of
       the calls made, over the weight per minute the share allows).

    Each part ends paused and compared with the simulator's ground truth.
    """
    import tempfile

    rows: list[Row] = []
    for endpoint in endpoints:
        old = endpoint == "historicalTrades"
        share = 0.5 if old else 0.8
        flags = ["--backfill-endpoint", endpoint, "--backfill-weight-share", str(share),
                 "--backfill-workers", "1" if old else "4"]  # fmt: skip
        tag = "before (historicalTrades)" if old else "after (aggTrades)"
        sim = SimProcess(tps, shared_data, ["--set", "history_limit=4000000"])
        try:
            with tempfile.TemporaryDirectory() as tmp:
                svc = ServiceProcess(sim, Path(tmp), flags)
                svc.wait_ready()
                sim.control("resume")
                time.sleep(20.0)  # every symbol with a history before the faults
                spent = _rest_spent(svc)
                last_fault = 0.0
                for i, faults in enumerate((["drop"], ["refuse?seconds=3", "drop"],
                                            ["stall?seconds=3"], ["shutdown?delay=1"],
                                            ["expire"])):  # fmt: skip
                    if i:
                        time.sleep(10.0)
                    for action in faults:
                        sim.control(action)
                    last_fault = time.monotonic()
                took = _until_complete(svc, last_fault, timeout)
                rows.append(Row(f"{tag} faults: seconds from the last fault to complete",
                                -1 if took is None else took, "s"))  # fmt: skip
                rows += _spent_rows(f"{tag} faults", spent, _rest_spent(svc))
                rows += _check_rows(f"{tag} faults", svc, sim)
                sim.control("resume")

                rnd = random.Random(7)
                for k in range(kills):
                    time.sleep(rnd.uniform(5.0, 15.0))  # a random moment
                    svc.stop(9)
                    down = rnd.uniform(2.0, 4.0)
                    time.sleep(down)  # down while the market trades
                    sim.control("pause")  # so that "exact" has one meaning
                    svc = ServiceProcess(sim, Path(tmp), flags)
                    took = _until_exact(svc, sim, svc.started, timeout)
                    rows.append(Row(f"{tag} kill {k + 1} ({down:.1f} s down): seconds from "
                                    "restart to every symbol exact", -1 if took is None else took,
                                    "s"))  # fmt: skip
                    sim.control("resume")
                rows += _check_rows(f"{tag} kills", svc, sim)

                if down_seconds > 0:
                    svc.stop()
                    sim.control(f"rate?tps={down_tps}")
                    sim.control("resume")
                    time.sleep(down_seconds)
                    published = sim.control("stats")["trades_published"]
                    svc = ServiceProcess(sim, Path(tmp), flags)
                    took = _until_complete(svc, svc.started, timeout)
                    after = _rest_spent(svc)  # a new process: everything it spent
                    spent = {e: (0.0, 0.0) for e in after}
                    weight = sum(w for _, w in after.values())
                    floor = weight / (6000 * share) * 60
                    label = f"{tag} {down_seconds / 60:g} min down at {down_tps:,.0f}/s"
                    rows.append(Row(f"{label}: seconds from restart to complete",
                                    -1 if took is None else took, "s"))  # fmt: skip
                    rows.append(Row(f"{label}: floor set by the weight budget", floor, "s"))
                    rows += _spent_rows(label, spent, after)
                    rows.append(Row(f"{label}: trades published in all", published, "trades"))
                    rows += _check_rows(label, svc, sim)
                svc.stop()
        finally:
            sim.stop()
    return rows
