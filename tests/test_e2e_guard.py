"""The e2e guard (tests/e2e_guard.py) catches a unit test that starts a process or a server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # runs pytest as a process

TESTS = Path(__file__).resolve().parent


def run_pytest(folder: Path, source: str) -> subprocess.CompletedProcess[str]:
    (folder / "test_sample.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "e2e_guard", "-p", "no:cacheprovider", "test_sample.py"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_unit_test_that_starts_a_process_fails(tmp_path: Path) -> None:
    result = run_pytest(
        tmp_path,
        "import subprocess, pytest\n"
        "def test_unit():\n    subprocess.run(['true'], check=True)\n"
        "@pytest.mark.e2e\ndef test_marked():\n    subprocess.run(['true'], check=True)\n",
    )
    assert result.returncode == 1, result.stdout
    assert "1 failed, 1 passed" in result.stdout
    assert "test_sample.py::test_unit starts a process (true): mark the test e2e" in result.stdout


def test_a_unit_test_using_a_server_fixture_stops_the_run(tmp_path: Path) -> None:
    result = run_pytest(
        tmp_path,
        "import pytest\n"
        "@pytest.fixture\ndef redis_server():\n    return None\n"
        "def test_unit(redis_server):\n    pass\n",
    )
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert "not marked e2e" in result.stderr and "test_sample.py::test_unit" in result.stderr
