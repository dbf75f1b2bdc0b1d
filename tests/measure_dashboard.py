"""Measure the dashboard with every real symbol: ``python -m tests.measure_dashboard``.

Starts the simulator (the real 2,292-symbol exchangeInfo from ../shared/data when present),
the service as a subprocess and headless Chromium; prints the page weight, the JSON moved per
refresh and the time from request to painted table over 10 refreshes. A measurement, not a test.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from medianserv.sim import SimConfig, Simulator

from .browser import Browser, find_chromium
from .conftest import EXCHANGE_INFO
from .support import wait_for
from .test_service import Running


def main(screenshot: Path | None = None) -> None:
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
        status = urllib.request.urlopen(run.base + "/-/status").read()
        sizes = f"/-/all {len(all_):,} B + /-/status {len(status):,} B"
        print(f"page {len(page):,} B; per refresh {sizes}")
        browser = Browser(chromium)
        try:
            browser.goto(run.base + "/")
            wait_for(lambda: (browser.evaluate("window.__refreshes") or 0) >= 1, timeout=30)
            busiest = max(json.loads(all_), key=lambda r: r["count"])["symbol"]
            browser.evaluate(f"document.querySelector('tr[data-symbol=\"{busiest}\"]').click()")
            refresh, render = [], []
            for _ in range(10):
                seen = browser.evaluate("window.__refreshes")
                wait_for(lambda n=seen: browser.evaluate("window.__refreshes") > n, timeout=10)
                refresh.append(browser.evaluate("window.__refreshMs"))
                render.append(browser.evaluate("window.__renderMs"))
            rows = browser.evaluate("document.querySelectorAll('#tbl tbody tr').length")
            med_refresh, med_render = statistics.median(refresh), statistics.median(render)
            print(f"{rows} rows; request to painted table: median {med_refresh:.0f} ms, "
                  f"max {max(refresh):.0f} ms; rendering: median {med_render:.0f} ms, "
                  f"max {max(render):.0f} ms")  # fmt: skip
            if screenshot is not None:
                screenshot.write_bytes(browser.screenshot())
        finally:
            browser.close()
            run.stop()


if __name__ == "__main__":
    import sys

    main(Path(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[1] == "--screenshot" else None)
