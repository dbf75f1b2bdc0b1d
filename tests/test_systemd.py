"""The systemd unit: hardening score, and the readiness notification it relies on."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from medianserv.sim import SimConfig, Simulator

from .test_service import Running

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "medianserv.service"


def test_unit_is_hardened() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(UNIT)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    assert float(m.group(1)) <= 2.0


def test_unit_runs_the_console_script_with_its_state_directory() -> None:
    text = UNIT.read_text()
    assert re.search(r"^ExecStart=\S+/medianserv --data-dir %S/medianserv$", text, re.M)
    assert re.search(r"^StateDirectory=medianserv$", text, re.M)
    for line in ("Type=notify", "DynamicUser=yes", "StateDirectory=medianserv",
                 "Restart=on-failure", "KillSignal=SIGTERM"):  # fmt: skip
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line


def test_ready_is_notified_to_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(60)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        with Simulator(SimConfig(symbols=10, trades_per_second=50)) as sim:
            run = Running(sim, tmp_path / "data")
            assert sock.recv(100) == b"READY=1"
            assert run.get("/-/ready")[0] == 200
            assert run.stop() == 0
            assert sock.recv(100) == b"STOPPING=1"
