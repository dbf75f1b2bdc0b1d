"""The README's nginx configuration, run in front of the real service: a burst of identical
requests is answered by the cache, what the service marks no-store never is, and an expired
answer is refreshed with If-None-Match. Skipped when nginx is not installed (``.ci/run``
installs Debian's package when it can)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from medianserv.sim import SimConfig, Simulator

from .support import wait_for
from .test_service import Running, publish

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_nginx_config() -> str:
    """The nginx block of the README, as a newcomer would copy it."""
    m = re.search(r"```nginx\n(.*?)```", README.read_text(), re.S)
    assert m, "the README shows no nginx configuration"
    return m.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            resp.read()
            return resp.status, resp.headers
    except urllib.error.HTTPError as err:
        return err.code, err.headers


def test_the_readme_nginx_configuration_caches_bursts(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if nginx is None:
        pytest.skip("no nginx (Debian package 'nginx'; .ci/run installs it when it can)")
    config = SimConfig(symbols=20, paused=True, trades_per_second=500, seed=4)
    with Simulator(config) as sim:
        run = Running(sim, tmp_path / "data", "--cache-max-age", "1")
        wait_for(lambda: run.get("/-/ready")[0] == 200, timeout=60)
        publish(sim, 300)
        port = free_port()
        server = (
            readme_nginx_config()
            .replace("/var/cache/nginx/medianserv", str(tmp_path / "cache"))
            .replace("listen 80;", f"listen 127.0.0.1:{port};")
            .replace("http://127.0.0.1:8080", f"http://127.0.0.1:{run.port}")
        )
        conf = tmp_path / "nginx.conf"
        # as root, nginx's workers would run as nobody, who cannot enter the test's directory
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf.write_text(
            f"{user}pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
            "events {}\nhttp {\n"
            f"access_log off;\nclient_body_temp_path {tmp_path}/body;\n"
            f"proxy_temp_path {tmp_path}/proxy;\nfastcgi_temp_path {tmp_path}/fastcgi;\n"
            f"uwsgi_temp_path {tmp_path}/uwsgi;\nscgi_temp_path {tmp_path}/scgi;\n"
            f"{server}\n}}\n"
        )
        proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(conf), "-g",
                                 "daemon off;"], stderr=subprocess.PIPE)  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: _up(base), timeout=20)
            symbol = max(sim.truth(), key=lambda s: sim.truth()[s]["count"])
            wait_for(lambda: fetch(base + "/" + symbol)[0] == 200, timeout=20)

            statuses: Counter[str] = Counter()
            t0 = time.monotonic()
            for _ in range(200):  # a burst, well inside max-age=1
                status, headers = fetch(base + "/" + symbol)
                assert status == 200
                statuses[headers["X-Cache-Status"]] += 1
            burst = time.monotonic() - t0
            # one answer from upstream per max-age (1 s) at most, the rest from the cache
            assert statuses["HIT"] >= 200 - 2 * (burst + 1), (statuses, burst)

            for _ in range(3):  # no-store: never from the cache
                status, headers = fetch(base + "/-/status")
                assert headers["Cache-Control"] == "no-store"
                assert headers["X-Cache-Status"] in ("MISS", "BYPASS", None)

            sim.pause()  # nothing trades: an expired answer is refreshed by a 304 upstream
            time.sleep(2.5)  # the last trades land; the cached answer expires (nginx counts
            fetch(base + "/" + symbol)  # whole seconds); the answer after them is stored
            time.sleep(2.5)
            status, headers = fetch(base + "/" + symbol)
            assert (status, headers["X-Cache-Status"]) == (200, "REVALIDATED")
        finally:
            proc.terminate()
            proc.wait(10)
            run.stop()


def _up(base: str) -> bool:
    try:
        fetch(base + "/-/healthy")
        return True
    except OSError:
        return False
