"""A stop (SIGTERM) that reaches a gateway process once it listens is a clean stop: the requests
in flight drain and their records are flushed (server/runner.py). The process runs apart: a stop
that killed it would kill pytest here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness import clean_env, free_port

pytestmark = pytest.mark.e2e

# serve_gateway with an announce (the quickstart text `serve --new-key` prints once it listens, a
# store write away) that receives SIGTERM, as a supervisor stopping or a `docker stop` does then.
STOPPED_WHILE_ANNOUNCING = """
import asyncio, os, signal, sys
from faregate.config import load_settings
from faregate.server.runner import serve_gateway

settings = load_settings(
    overrides={
        "store": {"path": sys.argv[1]}, "catalog": {"broad": False}, "server": {"port": int(sys.argv[2])}
    }
)

async def announce(gateway, base_url):
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.sleep(0)

asyncio.run(serve_gateway(settings, announce))
print("stopped cleanly")
"""


def test_a_stop_as_the_gateway_announces_itself_is_a_clean_stop(tmp_path: Path) -> None:
    """The stop handlers came after the announce: a SIGTERM in between (the process already listens
    and serves) killed it at once, its requests in flight unrecorded and their holds left to lapse."""
    done = subprocess.run(
        [sys.executable, "-c", STOPPED_WHILE_ANNOUNCING, str(tmp_path / "store"), str(free_port())],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stopped cleanly" in done.stdout
