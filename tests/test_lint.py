"""Static checks as tests, so the README's one test command runs them too."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_tool(*args: str) -> None:
    if shutil.which(args[0]) is None and not (Path(sys.executable).parent / args[0]).exists():
        pytest.skip(f"{args[0]} is not installed (pip install -e '.[test]')")
    exe = Path(sys.executable).parent / args[0]
    cmd = [str(exe) if exe.exists() else args[0], *args[1:]]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_check() -> None:
    run_tool("ruff", "check", "medianserv", "tests")


def test_ruff_format() -> None:
    run_tool("ruff", "format", "--check", "medianserv", "tests")


def test_mypy_strict() -> None:
    run_tool("mypy", "medianserv")
