"""Issue #12, item 10: the simulator a gateway launches dies with it, even on kill -9, and a
gateway never serves through a simulator it did not start."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import clean_env, free_port, stop, wait_healthy

pytestmark = pytest.mark.e2e


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def start_gateway(tmp_path: Path, sim_port: int) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    config = tmp_path / "faregate.yaml"
    config.write_text(
        f"server: {{port: {port}}}\nstore: {{path: {str(tmp_path / 'store')!r}}}\n"
        f"sim: {{mode: 'on', launch: true, port: {sim_port}}}\n"
    )
    log = tmp_path / "gateway.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "faregate.cli.main", "serve", "-c", str(config)],
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return process, port, log


def test_the_simulator_dies_with_a_killed_gateway(tmp_path: Path) -> None:
    sim_port = free_port()
    gateway, port, _ = start_gateway(tmp_path, sim_port)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", gateway)
        assert port_open(sim_port)
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(10)
        deadline = time.monotonic() + 10
        while port_open(sim_port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not port_open(sim_port), "the simulator outlived its gateway and keeps its port"
    finally:
        stop(gateway)


def test_a_gateway_refuses_to_use_a_simulator_port_someone_else_holds(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        sim_port = squatter.getsockname()[1]
        gateway, _, log = start_gateway(tmp_path, sim_port)
        try:
            assert gateway.wait(30) != 0
        finally:
            stop(gateway)
    assert f"127.0.0.1:{sim_port} is already in use" in " ".join(log.read_text().split())
