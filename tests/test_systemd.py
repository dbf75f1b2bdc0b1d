"""The systemd unit: hardening score, the readiness notification it relies on, and the service
working under the unit's own restrictions."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest

from medianserv.sim import SimConfig, Simulator

from .support import wait_for
from .test_service import Running, publish

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


def _unit_environment() -> dict[str, str]:
    """The variables the unit's ``Environment=`` lines set."""
    env: dict[str, str] = {}
    for m in re.finditer(r"^Environment=(.*)$", UNIT.read_text(), re.M):
        for pair in m.group(1).split():
            key, _, value = pair.partition("=")
            env[key] = value
    return env


_PR_SET_MDWE, _PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def _deny_write_execute() -> None:
    """In the child before exec: what ``MemoryDenyWriteExecute=yes`` imposes (Linux >= 6.3),
    inherited by the service's pool processes."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_MDWE, _PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        os._exit(97)


@pytest.mark.parametrize("reader", ["auto", "polars"])
def test_history_imports_under_the_units_memory_restrictions(tmp_path: Path, reader: str) -> None:
    """The unit forbids memory that is writable and then executable. Everything the service
    runs must live with that, its archive pool too, with either archive reader (polars, used
    where no C compiler was at install, probes the CPU with a bit of generated code unless
    told not to: the unit tells it). Run the service as the unit would (its environment, W^X
    memory), with a past to import: it must end exact."""
    text = UNIT.read_text()
    if not re.search(r"^MemoryDenyWriteExecute=yes$", text, re.M):
        pytest.skip("the unit does not deny write-execute memory")
    probe = subprocess.run(["true"], preexec_fn=_deny_write_execute, check=False)
    if probe.returncode == 97:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    config = SimConfig(symbols=4, paused=True, trades_per_second=200, seed=37, past_days=70,
                       past_trades_per_day=30, weight_window=3.0)  # fmt: skip
    with Simulator(config) as sim:
        env = {**os.environ, **_unit_environment()}
        run = Running(sim, tmp_path / "data", "--history", "all", "--archive-url",
                      sim.archive_url, "--history-workers", "1", "--archive-reader", reader,
                      env=env,
                      preexec_fn=_deny_write_execute)  # fmt: skip
        wait_for(lambda: run.get("/-/status")[1]["history"]["complete"] == len(sim.listed()),
                 timeout=180)  # fmt: skip
        if reader == "polars":  # what the pool was told to read with
            assert run.get("/-/status")[1]["history"]["reader"] == "polars"
        sim.resume()
        publish(sim, 200)
        sim.pause()
        truth = sim.truth()

        def exact() -> bool:
            for s in sim.listed():
                body, t = run.get("/" + quote(s))[1], truth.get(s)
                want = (t["count"], t["median"]) if t else (0, None)
                if (body["count"], body["median"]) != want:
                    return False
            return True

        wait_for(exact, timeout=60, interval=0.5)
        assert run.stop() == 0, "\n".join(run.lines[-20:])
