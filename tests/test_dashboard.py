"""The dashboard: its sample buffer, its endpoints, and the page in a real headless Chromium."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medianserv.samples import Ring, SampleBook
from medianserv.sim import SimConfig, Simulator

from .browser import Browser, find_chromium
from .support import http_get, wait_for
from .test_service import Running, publish


@given(st.integers(1, 20), st.lists(st.integers(0, 10**12), max_size=60))
def test_ring_is_bounded_and_ordered(capacity: int, values: list[int]) -> None:
    ring = Ring(capacity)
    for i, v in enumerate(values):
        ring.append(i, v, None if v % 3 == 0 else v, v)
    got = ring.samples()
    assert len(ring) == len(got) == min(capacity, len(values))
    assert [s[0] for s in got] == list(range(len(values)))[-capacity:] if values else got == []
    assert all(s[2] is None or s[2] == s[1] for s in got)


def test_rate_over_the_last_minute() -> None:
    book = SampleBook(100)
    for second in range(0, 121, 10):
        book.sample([("A", second * 5, 2, 1, second * 5), ("QUIET", 0, None, None, 0)],
                    second * 1000)  # fmt: skip
    assert book.rates(120_000) == {"A": pytest.approx(5.0)}  # never-traded symbols keep no ring
    assert book.samples("QUIET") == []


def test_rate_counts_live_trades_only() -> None:
    """A history import adds thousands of trades a second to the count, none to the rate."""
    book = SampleBook(100)
    for second in range(0, 121, 10):
        imported = second * 3000
        book.sample([("A", second * 5 + imported, 2, 1, second * 5)], second * 1000)
    assert book.rates(120_000) == {"A": pytest.approx(5.0)}
    assert book.samples("A")[-1][1] == 120 * 5 + 120 * 3000  # the count itself is all of it


def test_dashboard_in_a_real_browser(tmp_path: Path) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium (Debian package 'chromium'; .ci/run installs it when it can)")
    config = SimConfig(symbols=300, paused=True, trades_per_second=3000, seed=3)
    with Simulator(config) as sim:
        run = Running(sim, tmp_path / "data", "--sample-interval", "0.3")
        wait_for(lambda: run.get("/-/ready")[0] == 200, timeout=60)
        publish(sim, 3000)
        sim.pause()
        truth = {s: t["count"] for s, t in sim.truth().items()}
        wait_for(
            lambda: {r["symbol"]: r["count"] for r in run.get("/-/all")[1] if r["count"]} == truth
        )
        time.sleep(1.0)  # a few samples for the chart
        api = {r["symbol"]: r for r in http_get(run.base + "/-/all")[2]}
        browser = Browser(chromium)
        try:
            browser.goto(run.base + "/")
            rows_js = (
                "[...document.querySelectorAll('#tbl tbody tr')]"
                ".map(r => [...r.cells].map(c => c.textContent))"
            )
            wait_for(lambda: len(browser.evaluate(rows_js) or []) == len(api), timeout=30)

            shown = browser.evaluate(rows_js)
            counts = [api[cells[0]]["count"] for cells in shown]
            assert counts == sorted(counts, reverse=True)  # sorted by trades by default
            for cells in shown[:40]:  # the numbers on the page are the API's, exactly
                r = api[cells[0]]
                assert cells[1] == f"{r['count']:,}"
                assert cells[2] == (r["median"] or "") and cells[3] == (r["last_price"] or "")
                since = r["first_trade_time"]  # how far back the median reaches: its first day
                day = time.strftime("%Y-%m-%d", time.gmtime(since / 1000)) if since else ""
                assert cells[6] == day

            browser.evaluate("document.querySelector('th[data-key=symbol]').click()")
            names = [cells[0] for cells in browser.evaluate(rows_js)]
            assert names == sorted(names)

            browser.evaluate("{ const s = document.getElementById('search'); s.value = 'usdt';"
                             "s.dispatchEvent(new Event('input')); }")  # fmt: skip
            found = [cells[0] for cells in browser.evaluate(rows_js)]
            assert found == sorted(s for s in api if "USDT" in s) and found

            busiest = max(api, key=lambda s: api[s]["count"])
            browser.evaluate("{ const s = document.getElementById('search'); s.value = '';"
                             "s.dispatchEvent(new Event('input')); }")  # fmt: skip
            browser.evaluate(f"document.querySelector('tr[data-symbol=\"{busiest}\"]').click()")
            wait_for(lambda: (browser.evaluate("window.__chartPoints") or 0) >= 2, timeout=20)
            assert (
                browser.evaluate("document.getElementById('d-median').textContent")
                == api[busiest]["median"]
            )
            q = http_get(f"{run.base}/{busiest}?q=0.01,0.25,0.75,0.99")[2]["quantiles"]
            wait_for(lambda: browser.evaluate("document.getElementById('d-quantiles').textContent")
                     == " / ".join(q[k] for k in ("0.01", "0.25", "0.75", "0.99")))  # fmt: skip
            assert browser.evaluate("document.getElementById('state').textContent") == "live"
            # its median candles: daily by default, then minutes, as many as the API has
            span = "document.getElementById('c-span').textContent"
            for interval in ("1d", "1m"):
                want = len(http_get(f"{run.base}/{busiest}/candles?interval={interval}")[2]["rows"])
                browser.evaluate(f"document.querySelector('button[data-interval=\"{interval}\"]')"
                                 ".click()")  # fmt: skip
                wait_for(lambda want=want, interval=interval: f" {interval} " in
                         (browser.evaluate(span) or "")
                         and browser.evaluate("window.__candleRows") == want > 0)  # fmt: skip

            shot = browser.screenshot()
            assert shot.startswith(b"\x89PNG")
            (tmp_path / "dashboard.png").write_bytes(shot)  # the test artifact
            if os.environ.get("MEDIANSERV_SCREENSHOT"):
                Path(os.environ["MEDIANSERV_SCREENSHOT"]).write_bytes(shot)

            port = run.port
            run.stop()  # the page must say it is not live any more
            wait_for(
                lambda: browser.evaluate("document.body.classList.contains('stale')"), timeout=15
            )
            assert (
                browser.evaluate("document.getElementById('state').textContent") == "reconnecting"
            )
            publish(sim, 1000)  # the market goes on while the service is down
            sim.pause()
            run = Running(sim, tmp_path / "data", "--sample-interval", "0.3", "--port", str(port))
            truth = {s: t["count"] for s, t in sim.truth().items()}
            wait_for(lambda: {r["symbol"]: r["count"] for r in run.get("/-/all")[1]
                              if r["count"]} == truth, timeout=60)  # fmt: skip
            api = {r["symbol"]: r for r in http_get(run.base + "/-/all")[2]}
            counts_js = (
                "Object.fromEntries([...document.querySelectorAll('#tbl tbody tr')]"
                ".map(r => [r.cells[0].textContent, r.cells[1].textContent]))"
            )
            want = {s: f"{r['count']:,}" for s, r in api.items()}
            # back live, caught up: every row is the service's, none left from before
            wait_for(lambda: browser.evaluate(counts_js) == want, timeout=30)
            assert not browser.evaluate("document.body.classList.contains('stale')")
        finally:
            browser.close()
