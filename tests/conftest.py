"""Shared fixtures: where the real Binance data lives, and how to skip without it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

#: ../shared/data beside the checkout; absent on a fresh clone, so tests that need it skip.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EXCHANGE_INFO = SHARED_DATA / "exchangeInfo-2023-09-08.json"
TRADES = SHARED_DATA / "trades"


def need(path: Path) -> Path:
    """Skip the calling test when ``path`` is absent (a fresh clone without ../shared)."""
    if not path.exists():
        pytest.skip(f"{path} is absent (real Binance data lives in ../shared/data)")
    return path


@pytest.fixture(scope="session")
def real_symbols() -> list[str]:
    """The 2,292 symbols of the real 2023-09-08 exchangeInfo, in listing order."""
    import json

    info = json.loads(need(EXCHANGE_INFO).read_text())
    return [s["symbol"] for s in info["symbols"]]


@pytest.fixture(scope="session")
def recordings() -> list[Path]:
    """The real trade recordings (gzip), sorted by name."""
    files = sorted(need(TRADES).glob("*.gz"))
    if not files:
        pytest.skip("no trade recordings in ../shared/data/trades")
    return files


#: Every service process a test started (``tests.test_service.Running`` registers them).
STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_orphans() -> Iterator[None]:
    """A failing test, in any module, must not leave a service (or its pool) running: each
    one still alive is killed, its pool processes end with it (they watch their parent)."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
