from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import GatewayProcess, SimProcess, create_key, run_gateway, run_sim

# A test that starts a process must be marked e2e (tests/e2e_guard.py says how that is checked).
pytest_plugins = ("e2e_guard",)


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    with run_sim(tmp_path_factory.mktemp("sim")) as process:
        yield process


@pytest.fixture(scope="session")
def gateway(sim: SimProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    # Forced faults in these tests would trip the breakers; the chaos suite tests those on its own gateway.
    relaxed = "routing: {breaker: {consecutive_failures: 1000000, min_calls: 1000000}}\n"
    with run_gateway(tmp_path_factory.mktemp("gateway"), sim, relaxed) as process:
        yield process


@pytest.fixture(scope="session")
def api_key(gateway: GatewayProcess) -> str:
    return create_key(gateway.store_path, "e2e")
