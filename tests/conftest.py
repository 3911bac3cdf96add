from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import GatewayProcess, SimProcess, create_key, run_gateway, run_sim  # noqa: E402


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    with run_sim(tmp_path_factory.mktemp("sim")) as process:
        yield process


@pytest.fixture(scope="session")
def gateway(sim: SimProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with run_gateway(tmp_path_factory.mktemp("gateway"), sim) as process:
        yield process


@pytest.fixture(scope="session")
def api_key(gateway: GatewayProcess) -> str:
    return create_key(gateway.store_path, "e2e")
