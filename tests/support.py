"""Test helpers: a small reference Binance client and polling without sleeps-as-assertions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from fractions import Fraction
from pathlib import Path
from statistics import median
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from medianserv.prices import format_median, format_price, parse_price


def wait_for(
    predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.02
) -> None:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def http_get(url: str) -> tuple[int, dict[str, str], Any]:
    """GET ``url``: (status, headers, decoded JSON body), without raising on 4xx/5xx."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"null")


class RefClient:
    """A plain, slow, obviously-correct Binance client: the oracle side of simulator tests.

    It keeps every price it receives per symbol and computes medians with
    ``statistics.median`` over Fractions.
    """

    def __init__(self, ws_url: str, path: str = "/stream") -> None:
        self._stack = ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(
            connect(ws_url + path, max_size=2**22, ping_interval=None)
        )
        self.prices: dict[str, list[int]] = {}
        self.last_id: dict[str, int] = {}
        self.other: list[Any] = []  # replies, errors, serverShutdown, garbage
        self.raw: list[str | bytes] = []
        self._id = 0

    def request(self, method: str, params: list[str] | None = None) -> int:
        self._id += 1
        body: dict[str, Any] = {"method": method, "id": self._id}
        if params is not None:
            body["params"] = params
        self.ws.send(json.dumps(body))
        return self._id

    def subscribe_all(self, streams: list[str], batch: int = 150, pace: float = 0.25) -> None:
        """Batched SUBSCRIBEs, under 5 messages per second and 4,096 bytes per frame."""
        for i in range(0, len(streams), batch):
            rid = self.request("SUBSCRIBE", streams[i : i + batch])
            self.until_reply(rid)
            time.sleep(pace)

    def until_reply(self, rid: int, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in self.other:
                if isinstance(item, dict) and item.get("id") == rid:
                    return item
            self.pump(0.1)
        raise AssertionError(f"no reply to request {rid}")

    def pump(self, timeout: float) -> int:
        """Receive until ``timeout`` passes with nothing new. Returns frames received."""
        n = 0
        while True:
            try:
                message = self.ws.recv(timeout=timeout)
            except TimeoutError:
                return n
            n += 1
            self.raw.append(message)
            try:
                frame = json.loads(message)
            except ValueError:
                self.other.append(message)
                continue
            data = frame.get("data", frame) if isinstance(frame, dict) else None
            if isinstance(data, dict) and data.get("e") == "trade" and "p" in data and "t" in data:
                try:
                    price = parse_price(data["p"])
                except ValueError:
                    self.other.append(frame)
                    continue
                self.prices.setdefault(data["s"], []).append(price)
                self.last_id[data["s"]] = data["t"]
            else:
                self.other.append(frame)

    def summary(self, symbol: str) -> dict[str, Any]:
        prices = self.prices.get(symbol, [])
        med = median([Fraction(p) for p in prices]) if prices else None
        return {
            "count": len(prices),
            "median": None if med is None else format_median(int(2 * med)),
            "last_price": format_price(prices[-1]) if prices else None,
        }

    def close(self) -> None:
        self._stack.close()


def trade_streams(symbols: Iterable[str]) -> list[str]:
    return [s.lower() + "@trade" for s in symbols]


def run_under_sanitizers(
    sources: list[Path], built: Path, script: str, args: list[str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Build ``sources`` into the extension ``built`` with AddressSanitizer and
    UndefinedBehaviorSanitizer (any undefined operation fatal) and run the Python ``script``
    with their runtimes preloaded, from the repository's top, with ``built`` and ``args``
    after it; the finished process. Skips the calling test without gcc and those runtimes."""
    gcc = shutil.which("gcc")
    runtimes = [subprocess.run([gcc, f"-print-file-name={lib}"], capture_output=True,
                               text=True, check=False).stdout.strip()
                for lib in ("libasan.so", "libubsan.so")] if gcc else []  # fmt: skip
    if not gcc or not all(Path(r).is_absolute() and Path(r).exists() for r in runtimes):
        pytest.skip("no gcc with AddressSanitizer and UndefinedBehaviorSanitizer here")
    subprocess.run([gcc, "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                    f"-I{sysconfig.get_paths()['include']}", *map(str, sources), "-o",
                    str(built)], check=True)  # fmt: skip
    runner = built.with_suffix(".py")
    runner.write_text(script)
    env = {**os.environ, "LD_PRELOAD": " ".join(runtimes), "ASAN_OPTIONS": "detect_leaks=0"}
    return subprocess.run([sys.executable, str(runner), str(built), *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=Path(__file__).parents[1])  # fmt: skip
