"""The verifications table and the calibration state on a real PostgreSQL (tests/servers.py): the
same contract as SQLite's, and two instances sharing one route through compare-and-set."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from faregate.learning.online.settings import QualitySettings, VerificationSettings
from faregate.quality.live import RouteCalibration
from faregate.quality.service import QualityService
from faregate.store.postgres.analytics import PostgresAnalytics
from faregate.store.postgres.store import PostgresStore
from faregate.store.postgres.verifications import PostgresVerifications
from faregate.store.verifications import VerificationRow
from servers import PostgresServer, postgres_server  # noqa: F401

pytestmark = pytest.mark.e2e


@pytest.fixture
async def table(postgres_server: PostgresServer) -> AsyncIterator[PostgresVerifications]:  # noqa: F811
    url = postgres_server.new_database()
    store = await PostgresStore.open(url)  # migrates
    reads = await PostgresAnalytics.open(url)
    yield PostgresVerifications(reads.pool)
    await reads.close()
    await store.close()


def route() -> RouteCalibration:
    settings = QualitySettings(
        target=0.9,
        confidence=0.8,
        verification=VerificationSettings(share=1.0, rest_ratio=1.0, daily_usd_cap=Decimal(5)),
    )
    return RouteCalibration("r", "router", settings)


def verify(calibration: RouteCalibration, n: int, start: int) -> None:
    for i in range(start, start + n):
        decision = calibration.decide(f"q{i}", (i * 0.37) % 1.0, float(i % 40))
        if decision.labelled:
            calibration.observe(decision, loss=False)


async def test_rows_and_compare_and_set(table: PostgresVerifications) -> None:
    row = VerificationRow(
        "req1", "r", "router", "paid", "cheap", 0.25, 0.5, "exact", "loss", "m", 1234, time.time()
    )
    await table.insert(row)
    assert (await table.recent("r"))[0] == row
    assert await table.load_state("r") is None
    assert await table.save_state("r", 0, "{}", time.time())
    assert not await table.save_state("r", 0, "{}", time.time())  # someone else's row now
    assert await table.save_state("r", 1, '{"a": 1}', time.time())
    assert not await table.save_state("r", 1, "{}", time.time())
    assert await table.load_state("r") == (2, '{"a": 1}')


async def test_two_instances_share_one_route(table: PostgresVerifications) -> None:
    a, b = route(), route()
    one, two = QualityService([a], table), QualityService([b], table)
    verify(a, 40, 0)
    verify(b, 40, 1000)
    await one.save("r")
    await two.save("r")  # conflicts, adopts a's state, replays its own, writes
    await one.refresh()
    assert a.state.decisions == b.state.decisions == 80
    assert a.state.calibration.to_json() == b.state.calibration.to_json()
    fresh = route()
    await QualityService([fresh], table).load()
    assert fresh.state.totals.to_json() == b.state.totals.to_json()
