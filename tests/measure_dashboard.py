"""Measure the dashboard with every real symbol: ``python -m tests.measure_dashboard``.

Starts the simulator (the real 2,292-symbol exchangeInfo from ../shared/data when present) at
3,000 trades/s, the service as a subprocess and headless Chromium. Prints the page weight, the
bytes per second the open page moves (the browser's own count of bytes on the wire, headers
included, over ``--seconds``), beside what polling the full ``/-/all`` every 2 s costs over
the same seconds (measured alongside, plain and gzip), and the time from request to painted
table. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from medianserv.sim import SimConfig, Simulator

from .browser import Browser, find_chromium
from .conftest import EXCHANGE_INFO
from .support import wait_for
from .test_service import Running


def full_poll(base: str, encoding: str, stop: threading.Event, out: list[int]) -> None:
    """GET /-/all every 2 s as the previous dashboard did; bytes received (headers too)."""
    while not stop.wait(2.0):
        req = urllib.request.Request(base + "/-/all", headers={"Accept-Encoding": encoding})
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = resp.read()
            out.append(len(body) + sum(len(k) + len(v) + 4 for k, v in resp.headers.items()))


def main(seconds: float, screenshot: Path | None = None) -> None:
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("needs Chromium (Debian package 'chromium')")
    info = EXCHANGE_INFO if EXCHANGE_INFO.exists() else None
    with Simulator(
        SimConfig(exchange_info=info, symbols=2292, paused=True, trades_per_second=3000)
    ) as sim:
        run = Running(sim, Path(tempfile.mkdtemp()), "--sample-interval", "1")
        wait_for(lambda: run.get("/-/ready")[0] == 200, timeout=60)
        sim.resume()
        time.sleep(20)
        page = urllib.request.urlopen(run.base + "/").read()
        all_ = urllib.request.urlopen(run.base + "/-/all").read()
        print(f"page {len(page):,} B; full /-/all {len(all_):,} B "
              f"({len(gzip.compress(all_, 5)):,} B gzipped)")  # fmt: skip
        browser = Browser(chromium)
        try:
            browser.goto(run.base + "/")
            wait_for(lambda: (browser.evaluate("window.__refreshes") or 0) >= 1, timeout=30)
            traded = [r for r in json.loads(all_) if r["count"]]
            busiest = max(traded, key=lambda r: r["count"])["symbol"]
            browser.evaluate(f"document.querySelector('tr[data-symbol=\"{busiest}\"]').click()")
            browser.evaluate("performance.setResourceTimingBufferSize(100000); "
                             "performance.clearResourceTimings(); 0")  # fmt: skip
            stop = threading.Event()
            polls: dict[str, list[int]] = {"identity": [], "gzip": []}
            pollers = [threading.Thread(target=full_poll, args=(run.base, e, stop, polls[e]))
                       for e in polls]  # fmt: skip
            for t in pollers:
                t.start()
            refresh, render, rows = [], [], []
            t0 = time.monotonic()
            while time.monotonic() - t0 < seconds:
                seen = browser.evaluate("window.__refreshes")
                wait_for(lambda n=seen: browser.evaluate("window.__refreshes") > n, timeout=10)
                refresh.append(browser.evaluate("window.__refreshMs"))
                render.append(browser.evaluate("window.__renderMs"))
                rows.append(browser.evaluate("window.__feedRows"))
            elapsed = time.monotonic() - t0
            moved = browser.evaluate(
                "performance.getEntriesByType('resource').reduce((s, e) => s + e.transferSize, 0)"
            )
            stop.set()
            for t in pollers:
                t.join()
            shown = browser.evaluate("document.querySelectorAll('#tbl tbody tr').length")
            page_rate = moved / elapsed
            plain = sum(polls["identity"]) / (2.0 * len(polls["identity"]))
            zipped = sum(polls["gzip"]) / (2.0 * len(polls["gzip"]))
            print(f"{shown} rows; {len(refresh)} refreshes in {elapsed:.0f} s, "
                  f"{statistics.median(rows):.0f} changed rows a refresh (median)")  # fmt: skip
            print(f"open page: {page_rate / 1000:,.1f} KB/s (everything it fetched)")
            print(f"full poll every 2 s, same seconds: {plain / 1000:,.1f} KB/s plain, "
                  f"{zipped / 1000:,.1f} KB/s gzip")  # fmt: skip
            print(f"page / full poll: {page_rate / plain:.3f} (plain), "
                  f"{page_rate / zipped:.3f} (gzip)")  # fmt: skip
            print(f"request to painted table: median {statistics.median(refresh):.0f} ms, "
                  f"max {max(refresh):.0f} ms; rendering: median "
                  f"{statistics.median(render):.0f} ms, max {max(render):.0f} ms")  # fmt: skip
            if screenshot is not None:
                screenshot.write_bytes(browser.screenshot())
        finally:
            browser.close()
            run.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    main(args.seconds, args.screenshot)
