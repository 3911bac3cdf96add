"""The verifications table and the calibration state on a real PostgreSQL (tests/servers.py): the
same contract as SQLite's, and two instances sharing one route through compare-and-set."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from faregate.learning.online.settings import QualitySettings, VerificationSettings
from faregate.quality.live import RouteCalibration
from faregate.quality.service import QualityService
from faregate.store.postgres.analytics import PostgresAnalytics
from faregate.store.postgres.store import PostgresStore
from faregate.store.postgres.verifications import PostgresVerifications
from faregate.store.verifications import VerificationRow, VerificationStore
from harness import MASTER_KEY, GatewayProcess, run_sim, wait_until
from servers import (  # noqa: F401
    PostgresServer,
    RedisServer,
    SharedUrls,
    launch_gateway,
    postgres_server,
    redis_server,
    shared_urls,
)
from test_quality_live import row_written_once_when_retried, state_read_only_once_moved
from test_quality_spend import (
    admissions_leave_the_state,
    admit_concurrently,
    drop_lapsed,
    raised_cap_after_a_pause,
)
from test_quality_verification import unfinished_verifications_are_recorded

pytestmark = pytest.mark.e2e


@pytest.fixture
async def table(postgres_server: PostgresServer) -> AsyncIterator[PostgresVerifications]:  # noqa: F811
    url = postgres_server.new_database()
    store = await PostgresStore.open(url)  # migrates
    reads = await PostgresAnalytics.open(url)
    yield PostgresVerifications(reads.pool)
    await reads.close()
    await store.close()


@pytest.fixture
async def two_tables(postgres_server: PostgresServer) -> AsyncIterator[list[VerificationStore]]:  # noqa: F811
    """One database, two pools: as two instances sharing it have."""
    url = postgres_server.new_database()
    store = await PostgresStore.open(url)  # migrates
    one, two = await PostgresAnalytics.open(url), await PostgresAnalytics.open(url)
    yield [PostgresVerifications(one.pool), PostgresVerifications(two.pool)]
    await one.close()
    await two.close()
    await store.close()


async def test_two_instances_never_overrun_the_verification_cap_together(
    two_tables: list[VerificationStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    await admit_concurrently(two_tables, monkeypatch)


async def test_a_lapsed_instances_hold_is_dropped_a_live_ones_is_not(
    two_tables: list[VerificationStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    await drop_lapsed(two_tables, monkeypatch)


async def test_an_admission_does_not_rewrite_the_calibration_state(
    two_tables: list[VerificationStore],
) -> None:
    await admissions_leave_the_state(two_tables)


async def test_a_cap_raised_after_a_pause_leaves_the_raised_cap_less_the_real_spend(
    table: PostgresVerifications,
) -> None:
    await raised_cap_after_a_pause(table)


async def test_a_verification_row_whose_insert_answer_was_lost_is_written_once(
    table: PostgresVerifications,
) -> None:
    await row_written_once_when_retried(table)


async def test_the_refresh_reads_the_state_only_once_another_instance_moved_it(
    two_tables: list[VerificationStore],
) -> None:
    await state_read_only_once_moved(*two_tables)


async def test_unfinished_verifications_are_recorded_with_their_cost(table: PostgresVerifications) -> None:
    await unfinished_verifications_are_recorded(table)


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
    assert await table.cost_nano("r") == 1234 and await table.cost_nano("r", cache=True) == 0
    assert await table.load_state("r") is None
    assert await table.save_state("r", 0, "{}", time.time())
    assert not await table.save_state("r", 0, "{}", time.time())  # someone else's row now
    assert await table.save_state("r", 1, '{"a": 1}', time.time())
    assert not await table.save_state("r", 1, "{}", time.time())
    assert await table.load_state("r") == (2, '{"a": 1}')
    assert await table.load_state("r", newer_than=1) == (2, '{"a": 1}')
    assert await table.load_state("r", newer_than=2) is None  # not moved: not sent


async def test_two_instances_share_one_route(table: PostgresVerifications) -> None:
    a, b = route(), route()
    one, two = QualityService([a], table), QualityService([b], table)
    verify(a, 40, 0)
    verify(b, 40, 1000)
    await one.save("route:r")
    await two.save("route:r")  # conflicts, adopts a's state, replays its own, writes
    await one.refresh()
    assert a.state.decisions == b.state.decisions == 80
    assert a.state.calibration.to_json() == b.state.calibration.to_json()
    fresh = route()
    await QualityService([fresh], table).load()
    assert fresh.state.totals.to_json() == b.state.totals.to_json()


SIM = """
seed: 1
defaults: {ttft_ms: 2, tokens_per_s: 0, faults: {}}
models:
  strong-m: {answer: {fixed: "The answer is 42."}}
  weak-m: {answer: {fixed: "So the answer is 42."}}
"""

ROUTER = Path(__file__).resolve().parents[1] / "routers" / "router-gsm8k.json"
UNIFORM = "{share: 1.0, frontier: 0, rest_ratio: 1, comparator: final_answer}"
ROUTED = f"""
baseline_model: strong-m
models:
  strong-m: {{input: 10, output: 30}}
  weak-m: {{input: 0.6, output: 0.6}}
routes:
  calibrated:
    router: {{file: {ROUTER}, strong: strong-m, weak: weak-m}}
    quality: {{target: 0.9, confidence: 0.8, verification: {UNIFORM}}}
"""


def test_two_gateways_on_postgresql_share_one_calibration(
    tmp_path: Path,
    shared_urls: SharedUrls,  # noqa: F811
) -> None:
    """Two gateway processes on one PostgreSQL: each verifies its own requests, both end with the
    one calibration, and the verifications of both are rows of the shared table."""
    with run_sim(tmp_path, SIM) as sim:
        with (
            launch_gateway(tmp_path / "a", sim, store=shared_urls.store(), extra=ROUTED) as a,
            launch_gateway(tmp_path / "b", sim, store=shared_urls.store(), extra=ROUTED) as b,
        ):
            key = admin(a, "POST", "/admin/keys", {"name": "q"})["api_key"]
            for i, gateway in enumerate([a, b] * 15):
                client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
                client.chat.completions.create(
                    model="calibrated", messages=[{"role": "user", "content": f"What is {i} times 3?"}]
                )
            for gateway in (a, b):
                wait_until(lambda g=gateway: admin(g, "GET", "/admin/quality")["pending"] == 0, "verified")

            def same() -> bool:
                one, two = (admin(g, "GET", "/admin/quality")["routes"][0] for g in (a, b))
                # Every decision counted once; labelled with p = 0.98 (the pace aims under the budget).
                return one["decisions"] == two["decisions"] == 30 and (
                    one["verifications"] == two["verifications"] >= 25
                    and one["strong_share"] == two["strong_share"]
                )

            # Each instance adopts the other's writes within a refresh (2 s).
            wait_until(same, "both instances hold the shared calibration", 15)
            verified = admin(a, "GET", "/admin/quality")["routes"][0]["verifications"]
            recent = admin(a, "GET", "/admin/quality?limit=100")["recent"]
            assert len(recent) == verified and all(r["route"] == "calibrated" for r in recent)


def admin(gateway: GatewayProcess, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = httpx.request(
        method,
        f"http://127.0.0.1:{gateway.port}{path}",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        json=body,
        timeout=30,
    )
    assert response.status_code in (200, 201), response.text
    return response.json()
